"""Channel ablation: which colour channel of an image carries the class?

A generated RGB image set (3 x 8 x 8): the class is a stripe pattern in the GREEN
channel alone (horizontal stripes: class 0, vertical: class 1), under noise;
red and blue are pure noise. A small CNN is trained with each channel removed
in turn (`ChannelDataset` drops the channel; the study rebuilds the first
convolution for 2 input channels), 3 seeds each, on the default executor. The
study must find that removing green hurts most: the script checks it and exits
with status 1 if not.

    python examples/channel_ablation.py [FOLDER]    (default: runs/channel_ablation)

ABGRAPH_QUICK=1 runs 2 seeds instead of 3, on 400 images instead of 600. Writes ablation.csv and ablation.pdf
into FOLDER.
"""
import os
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from abgraph.ablation import AblationStudy, ChannelDataset

QUICK = os.environ.get("ABGRAPH_QUICK") == "1"
SEEDS = [0, 1] if QUICK else [0, 1, 2]
N_IMAGES = 400 if QUICK else 600
CHANNELS = ["red", "green", "blue"]
SIGNAL = "green"


def make_images(n=N_IMAGES, seed=0):
    """`n` noisy 3x8x8 images and their 0/1 labels; the stripes are in green only."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    stripes = torch.zeros(2, 8, 8)
    stripes[0, ::2, :] = 1.0          # class 0: horizontal stripes
    stripes[1, :, ::2] = 1.0          # class 1: vertical stripes
    stripes -= 0.5
    images = torch.randn(n, 3, 8, 8, generator=generator)     # noise in every channel
    images[:, CHANNELS.index(SIGNAL)] += stripes[labels]
    return images, labels


def base_model_generator():
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(3, 8, kernel_size=3, padding=1)), ("act", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
        ("out", nn.Linear(8 * 4 * 4, 2)),
    ]))


def training_fn(dataset_function, model_function):
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, random_split
    epochs = 10
    batch_size = 32
    dataset = dataset_function()
    train, validation = random_split(dataset, [0.75, 0.25], generator=torch.Generator().manual_seed(42))
    model = model_function()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(epochs):
        for inputs, labels in DataLoader(train, batch_size=batch_size, shuffle=True):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
    inputs, labels = next(iter(DataLoader(validation, batch_size=len(validation))))
    with torch.no_grad():
        return float((model(inputs).argmax(1) == labels).float().mean())


def main(folder):
    folder = Path(folder)
    images, labels = make_images()
    dataset = ChannelDataset(images, labels, dim=1, names=CHANNELS)
    study = AblationStudy(folder, dataset=dataset)
    study.features.include(CHANNELS)
    study.model.set_base_model_generator(base_model_generator)
    result = study.run(train_fn=training_fn, ablator="loco", direction="max", seeds=SEEDS)
    print(result)
    result.to_dataframe().to_csv(folder / "ablation.csv", index=False)
    result.plot(folder / "ablation.pdf", title="Which channel matters? Validation accuracy without it")

    table = result.to_dataframe()
    channels = table[table.kind == "feature"].sort_values("diff")
    print("\nDrop in validation accuracy when a channel is removed (largest first):")
    for row in channels.itertuples():
        spread = ("no spread over the seeds" if row.diff_ci_low != row.diff_ci_low
                  else f"95% CI [{row.diff_ci_low:+.3f}, {row.diff_ci_high:+.3f}]")
        print(f"  {row.trial:<16} {row.diff:+.3f}  {spread}")
    found = channels.iloc[0].trial
    if not result.ok or found != f"feature {SIGNAL}":
        print(f"\nFAIL: the largest drop is {found!r}, not the signal channel {SIGNAL!r}")
        return 1
    print(f"\nOK: the largest drop is the signal channel: {SIGNAL}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/channel_ablation"))
