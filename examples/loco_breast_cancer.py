"""Maggy's LOCO ablation study, on scikit-learn's breast-cancer data, as one abgraph graph.

The code is what a Maggy user writes (see Maggy's Titanic notebook): an
`AblationStudy` on a DataFrame, features and layers included by name, a layer
group by prefix, a custom model, and a `training_fn(dataset_function,
model_function)` that returns the validation accuracy. Only the imports and the
model (PyTorch instead of Keras) differ. Every trial x seed is a stored node:
running the script again trains nothing, and `AblationStudy.restore(FOLDER)`
gives the result back later.

Trials: the base, 4 features, 3 single layers, the layers prefixed "my_dense"
(removed together) and a linear model instead of the MLP; 3 seeds each. Runs on
the default executor (one worker process per core).

    python examples/loco_breast_cancer.py [FOLDER]   (default: runs/loco_breast_cancer)

Writes into FOLDER: graph.pdf (the experiment graph), ablation.csv (the table),
ablation.pdf (difference to the base per trial, with 95% CIs).
"""
import sys
from collections import OrderedDict
from pathlib import Path

from sklearn.datasets import load_breast_cancer
from torch import nn

from abgraph.ablation import AblationStudy

SEEDS = [0, 1, 2]
FEATURES = ["mean radius", "mean texture", "worst area", "worst concave points"]


def breast_cancer():
    """The 569 x 30 DataFrame, features standardized, and its 0/1 "target" column."""
    df = load_breast_cancer(as_frame=True).frame
    features = [c for c in df.columns if c != "target"]
    df[features] = (df[features] - df[features].mean()) / df[features].std()
    return df


def base_model_generator():
    """The base MLP; the names are what `layers.include` refers to (Keras' `name=`)."""
    return nn.Sequential(OrderedDict([
        ("dense_in", nn.Linear(30, 32)), ("act_in", nn.ReLU()),
        ("my_dense_two", nn.Linear(32, 32)), ("act_two", nn.ReLU()),
        ("my_dense_three", nn.Linear(32, 16)), ("act_three", nn.ReLU()),
        ("my_dense_four", nn.Linear(16, 16)), ("act_four", nn.ReLU()),
        ("out", nn.Linear(16, 2)),
    ]))


def my_custom_model():
    """No hidden layer at all: logistic regression."""
    return nn.Sequential(nn.Linear(30, 2))


def training_fn(dataset_function, model_function):
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, random_split
    epochs = 20
    batch_size = 32
    dataset = dataset_function()
    # the same 80/20 split in every trial and seed
    train, validation = random_split(dataset, [0.8, 0.2], generator=torch.Generator().manual_seed(42))
    model = model_function()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        model.train()
        for inputs, labels in DataLoader(train, batch_size=batch_size, shuffle=True):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
    model.eval()
    inputs, labels = next(iter(DataLoader(validation, batch_size=len(validation))))
    with torch.no_grad():
        return float((model(inputs).argmax(1) == labels).float().mean())


def make_study(folder, df):
    """The study as a Maggy user sets it up."""
    ablation_study = AblationStudy(folder, dataset=df, label_name="target")
    ablation_study.features.include(FEATURES[0], FEATURES[1])
    ablation_study.features.include(FEATURES[2:])
    ablation_study.model.set_base_model_generator(base_model_generator)
    ablation_study.model.layers.include("my_dense_two", "my_dense_three", "my_dense_four")
    ablation_study.model.layers.include_groups(prefix="my_dense")
    ablation_study.model.add_custom_model_generator(my_custom_model, "a linear model")
    return ablation_study


def main(folder):
    folder = Path(folder)
    ablation_study = make_study(folder, breast_cancer())
    ablation_study.features.list_all()
    ablation_study.model.layers.list_all()
    result = ablation_study.run(train_fn=training_fn, ablator="loco", direction="max", seeds=SEEDS)
    print()
    print(result)

    result.to_dataframe().to_csv(folder / "ablation.csv", index=False)
    result.plot(folder / "ablation.pdf", title="Breast cancer MLP: LOCO ablation, validation accuracy")
    result.graph.draw(folder / "graph", format="pdf", metrics=["metric"])
    print(f"\nwrote {folder / 'graph.pdf'}, {folder / 'ablation.csv'}, {folder / 'ablation.pdf'}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/loco_breast_cancer"))
