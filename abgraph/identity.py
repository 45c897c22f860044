"""Node identity: a Merkle hash over a canonical encoding.

Pure functions. The encoding is deterministic across processes, machines and
Python hash seeds, and it refuses what it cannot encode instead of falling back
to a pickle (pickles change with library versions and would silently split or
merge the cache).
"""
from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import hashlib
import inspect
import json
import math
import pathlib
import textwrap
import weakref

ID_LENGTH = 32  # hex characters: 128 bits, as long as Dagger's ids


class UnsupportedValue(TypeError):
    """A property value that has no canonical encoding."""


def canonical(value, where="value", _path=frozenset()):
    """Return a JSON-able structure that encodes `value` deterministically.

    `where` names the property in errors, e.g. "TrainRecipe.lr"; `_path` holds the
    containers being encoded, so one that contains itself is refused, not recursed.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        if id(value) in _path:
            raise UnsupportedValue(f"{where} contains itself (a recursive {type(value).__name__}), "
                                   "which has no finite encoding")
        _path = _path | {id(value)}
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == () and value.dtype.kind in "biuf":
        return canonical(value.item(), where)  # np.float32(0.5) is the property 0.5
    if isinstance(value, enum.Enum):
        return {"enum": _qualified_name(type(value)), "name": value.name}
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return {"float": repr(value)} if not math.isfinite(value) else value
    if isinstance(value, (list, tuple)):
        items = [canonical(v, f"{where}[{i}]", _path) for i, v in enumerate(value)]
        return items if isinstance(value, list) else {"tuple": items}
    if isinstance(value, (set, frozenset)):
        items = [canonical(v, f"{where}{{}}", _path) for v in value]
        return {"set": sorted(items, key=_sort_key)}
    if isinstance(value, dict):
        keys = list(value)
        if not all(isinstance(k, str) for k in keys):
            keys = sorted(keys, key=lambda k: _sort_key(canonical(k, where)))
            return {"dict": [[canonical(k, where), canonical(value[k], f"{where}[{k!r}]", _path)] for k in keys]}
        return {"map": {k: canonical(value[k], f"{where}.{k}", _path) for k in sorted(keys)}}
    if isinstance(value, pathlib.PurePath):
        return {"path": value.as_posix()}
    if isinstance(value, functools.partial):
        return {"partial": canonical(value.func, where), "args": canonical(value.args, where),
                "kwargs": canonical(value.keywords, where)}
    if inspect.isfunction(value) or inspect.isbuiltin(value) or inspect.isclass(value):
        if value.__name__ == "<lambda>":
            raise UnsupportedValue(f"{where}: a lambda has no stable name; use a named function")
        return {"callable": _qualified_name(value)}
    if dataclasses.is_dataclass(value):
        fields = {f.name: canonical(getattr(value, f.name), f"{where}.{f.name}")
                  for f in dataclasses.fields(value)}
        return {"dataclass": _qualified_name(type(value)), "fields": fields}
    digest = _array_digest(value)
    if digest is not None:
        return {"array": digest}
    raise UnsupportedValue(
        f"{where} = {value!r:.60} has type {type(value).__name__}, which has no canonical encoding; "
        "use None, bool, int, float, str, list, tuple, set, dict, enum, pathlib.Path, "
        "a named function or functools.partial, a dataclass, a tensor or a numpy array")


def declared_names(cls, attribute: str) -> list:
    """`cls.PROPERTIES` (or another list of attribute names), checked: a string
    there would be read letter by letter."""
    names = getattr(cls, attribute)
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(
            isinstance(name, str) and name.isidentifier() for name in names):
        hint = f"; write {attribute} = [{names!r}]" if isinstance(names, str) else ""
        raise TypeError(f"{cls.__name__}.{attribute} must be a list of attribute names, "
                        f"not {names!r:.60}{hint}")
    return list(names)


def printable(text) -> str:
    """Text from an index, safe for a terminal or a graphviz label: control
    characters (terminal escapes, form feeds) and lone surrogates shown as escapes."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def readable(value):
    """An encoded value back as plain Python, for tables and labels (not for identity)."""
    if isinstance(value, dict) and len(value) == 1:
        (kind, inner), = value.items()
        if kind in ("tuple", "set"):
            return tuple(readable(v) for v in inner)
        if kind == "map":
            return {k: readable(v) for k, v in inner.items()}
        if kind in ("float", "path", "callable"):
            return float(inner) if kind == "float" else inner
        if kind == "dict":  # keys that are not strings, e.g. ("conv1", "weight")
            try:
                return {readable(k): readable(v) for k, v in inner}
            except TypeError:
                return value
    if isinstance(value, dict) and value.keys() == {"partial", "args", "kwargs"}:
        arguments = [repr(a) for a in readable(value["args"])]
        arguments += [f"{k}={v!r}" for k, v in readable(value["kwargs"]).items()]
        return f"partial({', '.join([readable(value['partial'])] + arguments)})"
    if isinstance(value, dict) and set(value) == {"dataclass", "fields"}:   # as it would print
        fields = ", ".join(f"{k}={readable(v)!r}" for k, v in value["fields"].items())
        return f"{value['dataclass'].rsplit('.', 1)[-1]}({fields})"
    if isinstance(value, list):
        return [readable(v) for v in value]
    return value


def _sort_key(encoded):
    return json.dumps(encoded, sort_keys=True)


def _qualified_name(obj):
    return f"{obj.__module__}.{obj.__qualname__}"


def _array_digest(value):
    """Content digest of a torch tensor or numpy array, or None for other types."""
    module = type(value).__module__
    if module.startswith("torch"):
        import torch
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous()
            raw = data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
            return [str(data.dtype), list(data.shape), hashlib.sha256(raw).hexdigest()]
    if module == "numpy":
        import numpy
        if isinstance(value, numpy.ndarray):
            data = numpy.ascontiguousarray(value)
            return [str(data.dtype), list(data.shape), hashlib.sha256(data.tobytes()).hexdigest()]
        if isinstance(value, numpy.generic):
            return [str(value.dtype), [], hashlib.sha256(value.tobytes()).hexdigest()]
    return None


def digest(encoded) -> str:
    """Hash of an already canonical structure."""
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


_code_versions: "weakref.WeakKeyDictionary[type, str]" = weakref.WeakKeyDictionary()


def code_version(cls, stop_at) -> str:
    """`cls.VERSION` if the class itself sets one, else a hash of the normalized
    source of `cls` and its bases up to `stop_at` (a base that sets `VERSION`
    stands for itself and its own bases): editing `run()` changes it, editing a
    comment does not, and a subclass never inherits its parent's `VERSION`."""
    own = cls.__dict__.get("VERSION")
    if own is not None:
        return f"v:{own}"
    cached = _code_versions.get(cls)
    if cached is None:
        parts = []
        for klass in cls.__mro__:
            if klass is object or klass in stop_at.__mro__:
                continue
            version = klass.__dict__.get("VERSION")
            parts.append(f"v:{version}" if version is not None else normalized_source(klass))
        cached = _code_versions[cls] = "src:" + digest(parts)
    return cached


def normalized_source(obj) -> str:
    """AST dump of the source (comments and formatting gone); bytecode where the
    source is not available (e.g. a class defined in an interactive session) and
    for a lambda (its source is the whole line, which two lambdas may share)."""
    if getattr(obj, "__name__", None) == "<lambda>":
        return _bytecode_fingerprint(obj)
    try:
        source = textwrap.dedent(inspect.getsource(obj))
        return ast.dump(ast.parse(source))
    except (OSError, TypeError, SyntaxError):
        return _bytecode_fingerprint(obj)


def _bytecode_fingerprint(obj) -> str:
    functions = obj.__dict__.values() if inspect.isclass(obj) else [obj]
    parts = []
    for member in functions:
        code = getattr(getattr(member, "__func__", member), "__code__", None)
        if code is not None:
            parts.append(_code_fingerprint(code))
    return "|".join(sorted(parts))


def _code_fingerprint(code) -> str:
    """Bytecode, names and constants, nested code objects included (their repr
    holds a memory address, so they are fingerprinted, not repr'd)."""
    consts = [_code_fingerprint(c) if inspect.iscode(c) else repr(c) for c in code.co_consts]
    return f"{code.co_name}:{code.co_code.hex()}:{code.co_names}:{consts}"


def root_id(state_class, properties: dict, version: str, arguments=None) -> str:
    """`arguments`: keywords of `spawn_new_tree` beyond the properties (absent
    from the hash when there are none, so existing roots keep their ids)."""
    encoded = {"root": _qualified_name(state_class), "version": version,
               "properties": canonical(properties, f"{state_class.__name__}")}
    if arguments:
        encoded["arguments"] = canonical(arguments, f"{state_class.__name__}.spawn_new_tree")
    return digest(encoded)


def node_id(parent_ids, recipe_type: str, properties_encoded, version: str) -> str:
    return digest({"parents": list(parent_ids), "recipe": recipe_type,
                   "properties": properties_encoded, "version": version})
