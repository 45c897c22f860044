"""Datasets that can drop a feature: the `ablate_feature(name)` protocol.

The Maggy thesis (Listing 3.5) lets any dataset take part in feature ablation by
implementing one method. We keep that idea with one change: `ablate_feature`
returns a NEW dataset and leaves the original untouched, because one base dataset
feeds many trials (and, on a `SerialExecutor`, many trials share a process).
A Maggy-style method that edits `self` and returns None is still accepted by
`ablate`: it is called on a deep copy.

Optional extras a dataset may define, used where present:

- ``feature_names``: the names `ablate_feature` accepts, and ``check_feature(name)``
  (raises for an unknown one), so a study can reject an unknown name when it is
  included rather than when a trial runs;
- ``example_input(n)``: a batch of `n` model inputs, for the dry run that repairs
  the model's input layer (without it the first samples are collated and the
  first element of each sample is taken as the input);
- ``head(n)``: the first `n` samples as a dataset of the same kind, so a study can
  check every trial before anything trains without copying all the data;
- ``fingerprint()``: a value `abgraph.identity.canonical` encodes, standing for the
  content; without it the dataset's attributes are encoded.

Built in: `PandasDataset` (columns of a DataFrame), `ChannelDataset` (channels of
image-like tensors), `TokenDataset` (words of sentences, masked).
"""
from __future__ import annotations

import collections
import copy
import difflib
import numbers
import re
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset

from abgraph.ablation.errors import AblationError

__all__ = ["AblatableDataset", "ChannelDataset", "FeatureDataset", "PandasDataset", "TokenDataset",
           "ablate", "example_input", "fingerprint", "is_dataset"]


@runtime_checkable
class AblatableDataset(Protocol):
    """Anything with `ablate_feature(name)` returning the dataset without `name`."""

    def ablate_feature(self, name):
        ...


class FeatureDataset(Dataset):
    """Base class for a dataset that can drop features (Maggy's `MaggyDataset`).

    Implement `__getitem__`, `__len__` and `ablate_feature(name)`, which returns
    a new dataset without that feature. `feature_names`, `example_input`, `head`
    and `fingerprint` are optional (see the module docstring).
    """

    def ablate_feature(self, name):
        raise NotImplementedError(f"{type(self).__name__} must implement ablate_feature(name)")

    def check_feature(self, name) -> None:
        """Raise AblationError if `ablate_feature(name)` would not find `name` (cheap:
        nothing is copied). The default checks `feature_names` where defined."""
        names = getattr(self, "feature_names", None)
        if names is None:
            return
        for item in (list(name) if isinstance(name, (list, tuple)) else [name]):
            if item not in names:
                raise _unknown_feature("feature", item, names, type(self).__name__)


# --- helpers used by recipes and studies -----------------------------------------

def is_dataset(obj) -> bool:
    """Map-style data: indexable with a length (a torch Dataset or anything like it)."""
    return callable(getattr(obj, "__getitem__", None)) and callable(getattr(obj, "__len__", None)) \
        and not isinstance(obj, (str, bytes, dict))


def ablate(dataset, name):
    """`dataset` without feature `name`, the original untouched.

    A `FeatureDataset` (every built-in one) returns a new dataset from
    `ablate_feature`. Any other class is treated the Maggy way: its
    `ablate_feature` is called on a deep copy, and that copy is the result when
    the method edits it in place and returns None.
    """
    method = getattr(dataset, "ablate_feature", None)
    if not callable(method):
        raise AblationError(
            f"cannot ablate feature {name!r}: {type(dataset).__name__} has no ablate_feature(name) "
            "method; use PandasDataset, ChannelDataset or TokenDataset, or implement it "
            "(subclass abgraph.ablation.FeatureDataset)")
    if isinstance(dataset, FeatureDataset):
        result = dataset.ablate_feature(name)
        if result is None:
            raise AblationError(f"{type(dataset).__name__}.ablate_feature({name!r}) returned None; a "
                                "FeatureDataset returns a new dataset without the feature")
        return result
    target = copy.deepcopy(dataset)
    result = target.ablate_feature(name)
    return target if result is None else result


def example_input(data, n: int = 2):
    """A batch of `n` model inputs from `data`, for shape dry runs.

    `data` may define `example_input(n)`; may be a tensor, an `(inputs, targets)`
    pair of tensors, a DataLoader (its first batch), or a dataset whose first `n`
    samples are collated (a sample that is a tuple or list gives its first element).
    """
    method = getattr(data, "example_input", None)
    if callable(method):
        return method(n)
    if isinstance(data, torch.Tensor):
        return data[:n]
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data) \
            and len({len(t) for t in data}) == 1:
        return data[0][:n]
    if isinstance(data, torch.utils.data.DataLoader):
        return _inputs_of(next(iter(data)))
    if is_dataset(data):
        if len(data) == 0:
            raise AblationError(f"{type(data).__name__} is empty: no example input for the dry run")
        samples = [data[i] for i in range(min(n, len(data)))]
        return _inputs_of(torch.utils.data.default_collate(samples))
    raise AblationError(f"cannot take an example input from {type(data).__name__}: give a tensor, "
                        "an (inputs, targets) pair, a DataLoader or a dataset")


def _inputs_of(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def fingerprint(dataset):
    """A canonical value standing for the dataset's content (part of a study's identity)."""
    from abgraph import identity
    method = getattr(dataset, "fingerprint", None)
    name = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    if callable(method):
        value = method()
    else:
        value = {key: _plain_data(item) for key, item in vars(dataset).items()}
    try:
        return {"dataset": name, "content": identity.canonical(value, f"{type(dataset).__name__}")}
    except identity.UnsupportedValue as error:
        raise TypeError(
            f"cannot tell when {type(dataset).__name__} changes: {error}. Give the dataset a "
            "fingerprint() method returning tensors, arrays, strings or numbers that stand for "
            "its content") from None


def _plain_data(value):
    """DataFrames and Series as (columns, values) so `canonical` can encode them."""
    module = type(value).__module__
    if module.startswith("pandas"):
        import pandas
        if isinstance(value, pandas.DataFrame):
            return {"columns": [str(c) for c in value.columns],
                    "values": [value[c].to_numpy() for c in value.columns]}
        if isinstance(value, pandas.Series):
            return {"name": str(value.name), "values": value.to_numpy()}
    if isinstance(value, dict):
        return {str(k): _plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and len(value) < 10000:
        return type(value)(_plain_data(v) for v in value)
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [str(v) for v in value.ravel()]
    return value


def _closest_first(name, choices) -> list:
    """`choices` with the ones most like `name` first (every choice kept)."""
    text = [str(c) for c in choices]
    close = difflib.get_close_matches(str(name), text, n=len(text), cutoff=0.0)
    return close + [c for c in text if c not in close]


def _unknown_feature(kind, name, choices, dataset):
    listed = _closest_first(name, choices)
    shown = ", ".join(repr(c) for c in listed[:40])
    if len(listed) > 40:
        shown += f", … ({len(listed)} in all)"
    return AblationError(f"unknown {kind} {name!r} in {dataset}; valid {kind}s (closest first): {shown}")


# --- tabular -------------------------------------------------------------------

class PandasDataset(FeatureDataset):
    """The columns of a DataFrame as float tensors; a feature is a column.

    Samples are `(features, label)` (PyTorch's convention); `label_first=True`
    gives Maggy's `(label, features)` order of its Listing 3.6. Features are
    float32; the label is int64 when its column holds integers or booleans (ready
    for `cross_entropy`), float32 otherwise. Non-numeric feature columns are
    refused: encode them first (e.g. `pandas.get_dummies`).
    """

    def __init__(self, df, label, label_first: bool = False):
        import pandas
        if not isinstance(df, pandas.DataFrame):
            raise TypeError(f"PandasDataset needs a pandas DataFrame, not {type(df).__name__}")
        columns = [c for c in df.columns]
        if label not in columns:
            raise _unknown_feature("column", label, columns, "the DataFrame (label)")
        features = [c for c in columns if c != label]
        bad = [c for c in features if not (pandas.api.types.is_numeric_dtype(df[c])
                                           or pandas.api.types.is_bool_dtype(df[c]))]
        if bad:
            raise TypeError(f"PandasDataset: columns {bad} are not numeric; encode them first "
                            "(e.g. pandas.get_dummies(df, columns=[...]) or df[c].astype('category')"
                            ".cat.codes)")
        target = df[label]
        if not (pandas.api.types.is_numeric_dtype(target) or pandas.api.types.is_bool_dtype(target)):
            raise TypeError(f"PandasDataset: the label column {label!r} is not numeric; encode it "
                            "first (e.g. df[label].astype('category').cat.codes)")
        data = torch.tensor(df[features].to_numpy(dtype=np.float32, na_value=np.nan))
        integral = pandas.api.types.is_integer_dtype(target) or pandas.api.types.is_bool_dtype(target)
        labels = torch.tensor(target.to_numpy(dtype=np.int64 if integral else np.float32))
        self._set(features, label, data.reshape(len(df), len(features)), labels, label_first)

    def _set(self, columns, label, data, labels, label_first):
        self.columns, self.label, self.data, self.labels = list(columns), label, data, labels
        self.label_first = label_first
        return self

    def _like(self, columns, data, labels):
        return type(self).__new__(type(self))._set(columns, self.label, data, labels, self.label_first)

    def __getitem__(self, index):
        x, y = self.data[index], self.labels[index]
        return (y, x) if self.label_first else (x, y)

    def __len__(self):
        return self.data.shape[0]

    @property
    def feature_names(self) -> list:
        return list(self.columns)

    def _position(self, name):
        if name in self.columns:
            return self.columns.index(name)
        folded = [i for i, c in enumerate(self.columns) if str(c).lower() == str(name).lower()]
        if len(folded) == 1:       # Maggy matched column names case-insensitively
            return folded[0]
        raise _unknown_feature("column", name, self.columns, "PandasDataset")

    def check_feature(self, name) -> None:
        for item in (list(name) if isinstance(name, (list, tuple)) else [name]):
            self._position(item)

    def ablate_feature(self, name):
        """A new dataset without column `name` (or the columns of a list of names)."""
        names = list(name) if isinstance(name, (list, tuple)) else [name]
        drop = {self._position(n) for n in names}
        keep = [i for i in range(len(self.columns)) if i not in drop]
        return self._like([self.columns[i] for i in keep], self.data[:, keep].clone(), self.labels)

    def example_input(self, n: int = 2):
        return self.data[:n]

    def head(self, n: int):
        return self._like(self.columns, self.data[:n], self.labels[:n])

    def fingerprint(self):
        return {"columns": [str(c) for c in self.columns], "label": str(self.label),
                "data": self.data, "labels": self.labels, "label_first": self.label_first}

    def __repr__(self):
        return f"PandasDataset({len(self)} rows, {len(self.columns)} features, label={self.label!r})"


# --- channels ------------------------------------------------------------------

class ChannelDataset(FeatureDataset):
    """Image-like tensors whose channels are features (thesis Section 4.2.3).

    `tensor_x` holds every sample (N, ...); `dim` is the channel dimension of a
    batch (1 for N×C×H×W, 3 for N×H×W×C). `names` names the channels (e.g.
    ["red", "green", "blue"]); a feature is a name or a position.

    `ablate_feature` DROPS the channel (mode="drop", the default): the input gets
    one channel fewer and `AblateFeature`/`AblationStudy` rebuild the model's
    input layer (a Conv's `in_channels`) for it, as the thesis does. With
    mode="zero" the channel is set to zero instead and the input keeps its shape,
    for a model whose input layer must not change (e.g. pretrained weights).
    """

    MODES = ("drop", "zero")

    def __init__(self, tensor_x, y, dim: int = 1, names=None, mode: str = "drop"):
        x = torch.as_tensor(tensor_x)
        y = torch.as_tensor(y)
        if x.dim() < 2:
            raise ValueError(f"ChannelDataset needs samples with a channel dimension; tensor_x has "
                             f"shape {tuple(x.shape)}")
        if not isinstance(dim, int) or not 1 <= (dim if dim >= 0 else x.dim() + dim) < x.dim():
            raise ValueError(f"dim={dim!r} is not a channel dimension of a batch of shape "
                             f"{tuple(x.shape)} (dim 0 is the sample)")
        if len(y) != len(x):
            raise ValueError(f"ChannelDataset: {len(x)} samples but {len(y)} labels")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, not {mode!r}")
        dim = dim if dim >= 0 else x.dim() + dim
        names = [str(i) for i in range(x.shape[dim])] if names is None else [str(n) for n in names]
        if len(names) != x.shape[dim] or len(set(names)) != len(names):
            raise ValueError(f"names must name each of the {x.shape[dim]} channels once, got {names}")
        self._set(x, y, dim, names, mode)

    def _set(self, x, y, dim, names, mode):
        self.x, self.y, self.dim, self.names, self.mode = x, y, dim, list(names), mode
        return self

    def __getitem__(self, index):
        return self.x[index], self.y[index]

    def __len__(self):
        return len(self.x)

    @property
    def feature_names(self) -> list:
        return list(self.names)

    def _position(self, feature):
        if isinstance(feature, numbers.Integral) and not isinstance(feature, bool):
            if -len(self.names) <= feature < len(self.names):
                return int(feature) % len(self.names)
            raise AblationError(f"channel {feature} out of range: ChannelDataset has "
                                f"{len(self.names)} channels {self.names} (0..{len(self.names) - 1})")
        if str(feature) in self.names:
            return self.names.index(str(feature))
        raise _unknown_feature("channel", feature, self.names, "ChannelDataset")

    def check_feature(self, name) -> None:
        for item in (list(name) if isinstance(name, (list, tuple)) else [name]):
            self._position(item)

    def ablate_feature(self, name):
        """A new dataset without channel `name` (a channel name or position, or a list)."""
        features = list(name) if isinstance(name, (list, tuple)) else [name]
        drop = {self._position(f) for f in features}
        if self.mode == "zero":
            x = self.x.clone()
            index = [slice(None)] * x.dim()
            for position in drop:
                index[self.dim] = position
                x[tuple(index)] = 0
            return type(self).__new__(type(self))._set(x, self.y, self.dim, self.names, self.mode)
        keep = [i for i in range(len(self.names)) if i not in drop]
        if not keep:
            raise AblationError(f"removing {features} would leave ChannelDataset with no channel")
        x = self.x.index_select(self.dim, torch.tensor(keep))
        return type(self).__new__(type(self))._set(x, self.y, self.dim, [self.names[i] for i in keep],
                                                   self.mode)

    def example_input(self, n: int = 2):
        return self.x[:n]

    def head(self, n: int):
        return type(self).__new__(type(self))._set(self.x[:n], self.y[:n], self.dim, self.names, self.mode)

    def fingerprint(self):
        return {"x": self.x, "y": self.y, "dim": self.dim, "names": self.names, "mode": self.mode}

    def __repr__(self):
        return (f"ChannelDataset({len(self)} samples of {tuple(self.x.shape[1:])}, channels "
                f"{self.names} on dim {self.dim})")


# --- text ----------------------------------------------------------------------

_TOKEN = re.compile(r"\w+|[^\w\s]")


class TokenDataset(FeatureDataset):
    """Sentences as padded token ids; a feature is a word, ablated by masking.

    `sentences`: strings (split into words and punctuation, lower-cased unless
    `lowercase=False`) or lists of tokens. `labels`: ints, or strings mapped to
    ints in sorted order (`classes` keeps the names). `vocab`: a list of tokens or
    a {token: id} dict; by default built from the sentences (most frequent first).
    Ids 0, 1, 2 are `<pad>`, `<unk>` and `<mask>`; sentences are padded to the
    longest (or cut to `max_length`), so a sample is a LongTensor of fixed length.

    `ablate_feature(word)` replaces every occurrence of the word by `<mask>` (a
    phrase such as "bank a": each of its tokens, where they occur in sequence; a
    list: each of them), the thesis' word masking (Section 4.2.4). The input size
    and the vocabulary do not change, so the model needs no repair.
    """

    PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
    SPECIALS = (PAD, UNK, MASK)

    def __init__(self, sentences, labels, vocab=None, lowercase: bool = True, max_length=None):
        tokens = [self._tokenize(s, lowercase) for s in sentences]
        if len(tokens) != len(labels):
            raise ValueError(f"TokenDataset: {len(tokens)} sentences but {len(labels)} labels")
        labels = list(labels)
        if labels and all(isinstance(label, str) for label in labels):
            classes = sorted(set(labels))
            label_ids = [classes.index(label) for label in labels]
        else:
            classes, label_ids = None, labels
        vocab = self._vocabulary(tokens, vocab)
        length = max_length or max((len(t) for t in tokens), default=1) or 1
        self._set(tokens, torch.as_tensor(label_ids), vocab, classes, lowercase, length)

    @staticmethod
    def _tokenize(sentence, lowercase):
        if isinstance(sentence, str):
            return _TOKEN.findall(sentence.lower() if lowercase else sentence)
        return [str(t).lower() if lowercase else str(t) for t in sentence]

    def _vocabulary(self, tokens, vocab):
        if vocab is None:
            counts = collections.Counter(t for sentence in tokens for t in sentence)
            words = sorted(counts, key=lambda w: (-counts[w], w))
            vocab = list(self.SPECIALS) + [w for w in words if w not in self.SPECIALS]
        if isinstance(vocab, dict):
            vocab = dict(vocab)
        else:
            vocab = {word: i for i, word in enumerate(dict.fromkeys(vocab))}
        for special in self.SPECIALS:
            if special not in vocab:
                vocab[special] = max(vocab.values(), default=-1) + 1
        return vocab

    def _set(self, tokens, labels, vocab, classes, lowercase, length):
        self.tokens, self.labels, self.vocab, self.classes = tokens, labels, vocab, classes
        self.lowercase, self.max_length = lowercase, length
        self.ids = self._encode(tokens)
        return self

    def _encode(self, tokens):
        ids = torch.full((len(tokens), self.max_length), self.vocab[self.PAD], dtype=torch.long)
        unk = self.vocab[self.UNK]
        for row, sentence in enumerate(tokens):
            codes = [self.vocab.get(t, unk) for t in sentence[:self.max_length]]
            if codes:
                ids[row, :len(codes)] = torch.tensor(codes)
        return ids

    def __getitem__(self, index):
        return self.ids[index], self.labels[index]

    def __len__(self):
        return len(self.tokens)

    @property
    def sentences(self) -> list:
        return [" ".join(t) for t in self.tokens]

    @property
    def feature_names(self) -> list:
        """The words that occur in the sentences, most frequent first."""
        counts = collections.Counter(t for sentence in self.tokens for t in sentence)
        return [w for w in sorted(counts, key=lambda w: (-counts[w], w)) if w not in self.SPECIALS]

    def _mask(self, tokens, name) -> None:
        """Mask `name` in `tokens` (lists of tokens, edited in place); raise if absent."""
        for phrase in ([name] if isinstance(name, str) else list(name)):
            pattern = self._tokenize(phrase, self.lowercase)
            if not pattern:
                raise AblationError(f"TokenDataset: {phrase!r} has no word to mask")
            found = 0
            for sentence in tokens:
                for start in range(len(sentence) - len(pattern) + 1):
                    if sentence[start:start + len(pattern)] == pattern:
                        sentence[start:start + len(pattern)] = [self.MASK] * len(pattern)
                        found += 1
            if not found:
                raise _unknown_feature("word", phrase, self.feature_names, "TokenDataset")

    def check_feature(self, name) -> None:
        self._mask([list(sentence) for sentence in self.tokens], name)

    def ablate_feature(self, name):
        """A new dataset with every occurrence of `name` (a word, phrase or list) masked."""
        tokens = [list(sentence) for sentence in self.tokens]
        self._mask(tokens, name)
        new = type(self).__new__(type(self))
        return new._set(tokens, self.labels, self.vocab, self.classes, self.lowercase, self.max_length)

    def example_input(self, n: int = 2):
        return self.ids[:n]

    def head(self, n: int):
        new = type(self).__new__(type(self))
        return new._set(self.tokens[:n], self.labels[:n], self.vocab, self.classes, self.lowercase,
                        self.max_length)

    def fingerprint(self):
        return {"ids": self.ids, "labels": self.labels, "vocab": self.vocab,
                "classes": self.classes, "tokens": [" ".join(t) for t in self.tokens]}

    def __repr__(self):
        return (f"TokenDataset({len(self)} sentences of up to {self.max_length} tokens, "
                f"{len(self.vocab)} in the vocabulary)")
