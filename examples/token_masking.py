"""Token masking: which words does a sentiment classifier need?

Generated review sentences from a template and a small vocabulary: subject,
verb, modifier, adjective, e.g. "the film was really great ." (positive) or
"this show seemed not fun ." (negative: the modifier "not" flips the sentiment
of the adjective, in 30% of the sentences). A tiny model (a mean `EmbeddingBag`,
one hidden layer) is trained with groups of words masked in turn
(`TokenDataset` replaces them by `<mask>`; the input keeps its shape, so the
model needs no repair), 3 seeds each, on the default executor:

  sentiment words   the 10 adjectives, positive and negative
  not               the negation alone
  modifiers         the whole modifier slot: not, very, really, quite, so
  subjects          movie, film, show, plot, acting
  verbs             was, is, seemed, felt

Masking the sentiment words must hurt most (down to chance): the script checks
it and exits with status 1 if not. Masking the modifiers hurts the negated
sentences. Masking "not" alone hurts nothing, and that is worth knowing: the
`<mask>` left where "not" was still says that the sentence was negated, so
mask a word together with the words that can take its place.

The study uses the Maggy API (`features.include_groups`) and a five-line
ablator, `NamedGroups`, that runs LOCO over the groups with a short name for
each trial.

    python examples/token_masking.py [FOLDER]    (default: runs/token_masking)

ABGRAPH_QUICK=1 runs 2 seeds instead of 3, on 400 sentences instead of 800.
Writes ablation.csv and ablation.pdf into FOLDER.
"""
import os
import random
import sys
from collections import OrderedDict
from pathlib import Path

from torch import nn

from abgraph.ablation import Ablator, AblationStudy, TokenDataset, Trial

QUICK = os.environ.get("ABGRAPH_QUICK") == "1"
SEEDS = [0, 1] if QUICK else [0, 1, 2]
N_SENTENCES = 400 if QUICK else 800

SUBJECTS = ["the movie", "the film", "this show", "the plot", "the acting"]
VERBS = ["was", "is", "seemed", "felt"]
INTENSIFIERS = ["very", "really", "quite", "so"]
POSITIVE = ["good", "great", "excellent", "wonderful", "fun"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull"]
SENTIMENT = POSITIVE + NEGATIVE
WORDS = sorted({w for phrase in SUBJECTS + VERBS + INTENSIFIERS + SENTIMENT for w in phrase.split()}
               | {"not", "."})
VOCAB = list(TokenDataset.SPECIALS) + WORDS      # <pad> is id 0
GROUPS = {"sentiment words": SENTIMENT, "not": ["not"], "modifiers": ["not"] + INTENSIFIERS,
          "subjects": ["movie", "film", "show", "plot", "acting"], "verbs": VERBS}


def make_sentences(n=N_SENTENCES, seed=0):
    """`n` templated sentences and their labels ("positive" / "negative")."""
    rng = random.Random(seed)
    sentences, labels = [], []
    for _ in range(n):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.3
        adjective = rng.choice(POSITIVE if positive != negated else NEGATIVE)
        modifier = "not" if negated else rng.choice(INTENSIFIERS)
        sentences.append(" ".join([rng.choice(SUBJECTS), rng.choice(VERBS), modifier, adjective, "."]))
        labels.append("positive" if positive else "negative")
    return sentences, labels


class NamedGroups(Ablator):
    """LOCO over the included feature groups, each trial named after its group."""

    label = "LOCO"

    def trials(self, study):
        names = {tuple(words): name for name, words in GROUPS.items()}
        return [Trial.base()] + [Trial(f"masked: {names.get(group, list(group))}", "feature", (group,))
                                 for group in study.features.included]


def base_model_generator():
    return nn.Sequential(OrderedDict([
        ("embedding", nn.EmbeddingBag(len(VOCAB), 16, mode="mean", padding_idx=0)),
        ("hidden", nn.Linear(16, 16)), ("act", nn.ReLU()),
        ("out", nn.Linear(16, 2)),
    ]))


def training_fn(dataset_function, model_function):
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, random_split
    epochs = 15
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
    sentences, labels = make_sentences()
    dataset = TokenDataset(sentences, labels, vocab=VOCAB)
    print(f"{dataset}, e.g.:")
    for sentence, label in list(zip(sentences, labels))[:4]:
        print(f"  {sentence:<40} {label}")
    study = AblationStudy(folder, dataset=dataset)
    study.features.include_groups(*GROUPS.values())
    study.features.list_all()
    study.model.set_base_model_generator(base_model_generator)
    result = study.run(train_fn=training_fn, ablator=NamedGroups(), direction="max", seeds=SEEDS)
    print()
    print(result)
    result.to_dataframe().to_csv(folder / "ablation.csv", index=False)
    result.plot(folder / "ablation.pdf", title="Which words matter? Validation accuracy with them masked")

    table = result.to_dataframe()
    masked = table[table.kind == "feature"].sort_values("diff")
    print("\nDrop in validation accuracy when words are masked (largest first):")
    for row in masked.itertuples():
        spread = ("no spread over the seeds" if row.diff_ci_low != row.diff_ci_low
                  else f"95% CI [{row.diff_ci_low:+.3f}, {row.diff_ci_high:+.3f}]")
        print(f"  {row.trial:<24} {row.diff:+.3f}  {spread}")
    sentiment = "masked: sentiment words"
    found = masked.iloc[0].trial
    if not result.ok or found != sentiment:
        print(f"\nFAIL: masking {found!r} hurts most, not the sentiment words")
        return 1
    print("\nOK: masking the sentiment words hurts most")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/token_masking"))
