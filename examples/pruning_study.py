"""The Dagger talk's pruning study on scikit-learn's digits, as one abgraph graph.

Train an MLP, prune it at several fractions with L1 and random unstructured
pruning, fine-tune, evaluate, over 3 seeds; then print accuracy and per-class
accuracy with 95% confidence intervals, and write the graph, the table and the
plot into the experiment folder.

    python examples/pruning_study.py [FOLDER]      (default: runs/pruning_study)
"""
import sys
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

import abgraph as dg
from abgraph.recipes import Evaluate, Prune, Train

SEEDS = [0, 1, 2]
METHODS = ["l1_unstructured", "random_unstructured"]
AMOUNTS = [0.5, 0.8, 0.9, 0.95]


def digits_data():
    """Train/eval TensorDatasets: 8x8 digits scaled to [0, 1], a fixed 80/20 split."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    return (torch.utils.data.TensorDataset(x[train], y[train]),
            torch.utils.data.TensorDataset(x[test], y[test]))


def mlp():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def build(folder):
    exp = dg.Experiment(folder, state_class=dg.TorchState)
    for seed in SEEDS:
        with exp.tag(f"seed:{seed}"):
            root = exp.spawn_new_tree(model_fn=mlp, data_fn=digits_data, seed=seed)
            trained = Train(epochs=30, lr=0.05, optimizer="sgd", momentum=0.9, seed=seed)(root)
            with exp.tag("method:none", "amount:0"):
                Evaluate()(trained)
            for method in METHODS:
                for amount in AMOUNTS:
                    with exp.tag(f"method:{method}", f"amount:{amount}"):
                        pruned = Prune(method, amount, seed=seed)(trained)
                        Evaluate()(pruned)
                        with exp.tag("finetuned"):
                            tuned = Train(epochs=5, lr=0.01, optimizer="sgd", momentum=0.9, seed=seed)(pruned)
                            Evaluate()(tuned)
    return exp


def per_class_table(evaluations, label):
    """Per-class accuracy over seeds, one row per class, for one setting."""
    import pandas as pd
    from abgraph import stats
    rows = []
    matrix = [n.metrics["per_class_accuracy"] for n in evaluations]
    for digit in range(len(matrix[0])):
        summary = stats.describe([m[digit] for m in matrix], bounds=(0, 1))   # a proportion
        rows.append({"class": digit, "setting": label, "mean": summary.mean,
                     "ci_low": summary.ci_low, "ci_high": summary.ci_high})
    return pd.DataFrame(rows)


def main(folder):
    folder = Path(folder)
    exp = build(folder)
    report = exp.run()
    print(report)
    graph = exp.graph
    evaluations = graph.nodes.where(recipe="Evaluate", status="done")
    dense = evaluations.filter("method:none")
    tuned = evaluations.filter("finetuned")
    oneshot = evaluations.filter("!finetuned") - dense

    table = (tuned | dense).summarize("accuracy", by=["method", "amount"])
    table.insert(2, "stage", ["dense" if m == "none" else "fine-tuned" for m in table["method"]])
    oneshot_table = oneshot.summarize("accuracy", by=["method", "amount"])
    oneshot_table.insert(2, "stage", "pruned")
    import pandas as pd
    full = pd.concat([table, oneshot_table], ignore_index=True).sort_values(["method", "amount", "stage"])
    full.to_csv(folder / "accuracy.csv", index=False)
    with pd.option_context("display.width", 120, "display.precision", 4):
        print("\nAccuracy over seeds (95% CI):")
        print(full.to_string(index=False))

    per_class = pd.concat([per_class_table(dense, "dense"),
                           per_class_table(tuned.filter("method:l1_unstructured").filter("amount:0.95"),
                                           "l1 0.95 fine-tuned"),
                           per_class_table(oneshot.filter("method:l1_unstructured").filter("amount:0.95"),
                                           "l1 0.95 one-shot")])
    per_class.to_csv(folder / "per_class_accuracy.csv", index=False)
    per_class["accuracy (95% CI)"] = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
                                      zip(per_class["mean"], per_class["ci_low"], per_class["ci_high"])]
    print("\nPer-class accuracy over seeds, dense vs 95% L1-pruned (mean [95% t CI, clipped to [0, 1]]):")
    print(per_class.pivot(index="class", columns="setting", values="accuracy (95% CI)").to_string())

    tuned.plot("accuracy", by=["method", "amount"], filename=folder / "accuracy.pdf",
               title="Digits MLP: accuracy after pruning and fine-tuning")
    graph.draw(folder / "graph", format="pdf", metrics=["accuracy", "sparsity"])
    print(f"\nwrote {folder / 'graph.pdf'}, {folder / 'accuracy.csv'}, {folder / 'accuracy.pdf'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/pruning_study")
