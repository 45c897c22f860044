"""Which tensors a payload holds, read from its pickle without unpickling it.

A payload pickle names each tensor blob in a persistent id, `(kind, ref, digest,
dtype, shape, ...)` (see payload.py). Walking the pickle's opcodes with
`pickletools` and keeping the containers it builds, but never importing or calling
anything, gives every tensor's digest, dtype, shape and the attribute path that
leads to it (`model.0.weight`): safe on an experiment received from a stranger,
and it works for every payload ever stored, so no new field is written.
"""
from __future__ import annotations

import pickletools
from dataclasses import dataclass

# module internals that a path to a tensor passes through but a user never types
_HIDDEN = {"_parameters", "_buffers", "_modules", "__dict__"}
_NUMPY_DTYPES = {"float64": "<f8", "float32": "<f4", "float16": "<f2", "int64": "<i8", "int32": "<i4",
                 "int16": "<i2", "int8": "i1", "uint8": "u1", "uint16": "<u2", "uint32": "<u4",
                 "uint64": "<u8", "bool": "?", "complex64": "<c8", "complex128": "<c16"}


class ManifestError(ValueError):
    """The payload's pickle holds an opcode this reader does not follow."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor blob of a payload."""

    name: str
    digest: str
    dtype: str          # torch's name (`float32`) or numpy's (`<f4`)
    shape: tuple

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def numpy_dtype(self) -> str | None:
        """The numpy dtype to read the blob's bytes as (None: numpy has none, e.g. bfloat16)."""
        if self.dtype in _NUMPY_DTYPES:
            return _NUMPY_DTYPES[self.dtype]
        return None if self.dtype.isalpha() or self.dtype.isalnum() else self.dtype

    @property
    def itemsize(self) -> int:
        """Bytes per element, also for dtypes numpy lacks (bfloat16, float8 kinds)."""
        import numpy
        known = self.numpy_dtype
        if known is not None:
            return numpy.dtype(known).itemsize
        digits = "".join(c for c in self.dtype.split("_")[0] if c.isdigit())
        return max(1, int(digits or 8) // 8)


class _Ref:
    """A persistent id: a tensor stored as a blob."""

    def __init__(self, pid):
        self.pid = pid


class _Opaque:
    """Anything the pickle would build by calling code: kept as a container of the
    arguments, state and items it would receive, so paths can run through it."""

    def __init__(self, name="?", args=()):
        self.name, self.args, self.state = name, args, None
        self.items: list = []   # (key, value) from SETITEMS, (None, value) from APPENDS


_MARK = object()


def read(data) -> list[TensorEntry]:
    """The tensors of a payload pickle (bytes), in the order they first appear."""
    stack, memo, marks = [], {}, []
    root = None

    def pop_mark():
        start = marks.pop()
        items = stack[start + 1:]
        del stack[start:]
        return items

    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("PROTO", "FRAME", "READONLY_BUFFER"):
            continue
        if name == "STOP":
            root = stack.pop()
            break
        if name == "MARK":
            marks.append(len(stack))
            stack.append(_MARK)
        elif name in ("EMPTY_DICT",):
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name in ("EMPTY_TUPLE",):
            stack.append(())
        elif name == "EMPTY_SET":
            stack.append(_Opaque("set"))
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name in ("NEXT_BUFFER", "EXT1", "EXT2", "EXT4"):
            stack.append(_Opaque(name))
        elif opcode.arg is not None and not opcode.stack_before and opcode.stack_after \
                and name not in ("GET", "BINGET", "LONG_BINGET", "GLOBAL", "PERSID", "INST"):
            stack.append(arg)  # a literal: int, float, str, bytes
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name == "POP":
            if stack.pop() is _MARK:
                marks.pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            count = int(name[-1])
            items = tuple(stack[-count:])
            del stack[-count:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name == "LIST":
            stack.append(list(pop_mark()))
        elif name == "DICT":
            items = pop_mark()
            stack.append(_pairs_to_dict(items))
        elif name == "FROZENSET":
            stack.append(_Opaque("frozenset", tuple(pop_mark())))
        elif name == "APPEND":
            value = stack.pop()
            _append(stack[-1], [value])
        elif name == "APPENDS":
            values = pop_mark()
            _append(stack[-1], values)
        elif name == "ADDITEMS":
            values = pop_mark()
            _append(stack[-1], values)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            _setitems(stack[-1], [key, value])
        elif name == "SETITEMS":
            items = pop_mark()
            _setitems(stack[-1], items)
        elif name == "GLOBAL":
            stack.append(_Opaque(arg.replace(" ", ".")))
        elif name == "STACK_GLOBAL":
            attribute, module = stack.pop(), stack.pop()
            stack.append(_Opaque(f"{module}.{attribute}"))
        elif name in ("REDUCE", "NEWOBJ"):
            args, callable_ = stack.pop(), stack.pop()
            stack.append(_Opaque(getattr(callable_, "name", "?"), args))
        elif name == "NEWOBJ_EX":
            kwargs, args, cls = stack.pop(), stack.pop(), stack.pop()
            stack.append(_Opaque(getattr(cls, "name", "?"), (args, kwargs)))
        elif name == "OBJ":
            items = pop_mark()
            stack.append(_Opaque(getattr(items[0], "name", "?") if items else "?", tuple(items[1:])))
        elif name == "INST":
            stack.append(_Opaque(arg.replace(" ", "."), tuple(pop_mark())))
        elif name == "BUILD":
            state = stack.pop()
            target = stack[-1]
            if isinstance(target, _Opaque):
                target.state = state
        elif name == "BINPERSID":
            stack.append(_Ref(stack.pop()))
        elif name == "PERSID":
            stack.append(_Ref(arg))
        else:
            raise ManifestError(f"pickle opcode {name} is not followed by the manifest reader")
    return _entries(root)


def _pairs_to_dict(items):
    result = {}
    _setitems(result, items)
    return result


def _setitems(target, items):
    pairs = list(zip(items[0::2], items[1::2]))
    if isinstance(target, dict):
        for key, value in pairs:
            try:
                target[key] = value
            except TypeError:  # an unhashable key (only a real unpickle could hash it)
                target[f"#{len(target)}"] = value
    elif isinstance(target, _Opaque):
        target.items.extend(pairs)


def _append(target, values):
    if isinstance(target, list):
        target.extend(values)
    elif isinstance(target, _Opaque):
        target.items.extend((None, value) for value in values)


def _entries(root) -> list[TensorEntry]:
    """Walk what the pickle built, depth first, naming each tensor by its path."""
    entries, names, seen = [], {}, set()
    stack = [((), root)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _Ref):
            pid = value.pid
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[1] not in names:
                names[pid[1]] = ".".join(path) or "(payload)"
                entries.append(TensorEntry(names[pid[1]], pid[2], str(pid[3]), tuple(pid[4])))
            continue
        if not isinstance(value, (dict, list, tuple, _Opaque)) or id(value) in seen:
            continue
        seen.add(id(value))
        children = []
        if isinstance(value, dict):
            children = [(_segment(key, i, names), inner) for i, (key, inner) in enumerate(value.items())]
        elif isinstance(value, (list, tuple)):
            children = [(str(i), inner) for i, inner in enumerate(value)]
        else:
            children.append(("", value.state))
            children += [(_segment(key, i, names), inner) for i, (key, inner) in enumerate(value.items)]
            children.append(("", value.args))
        for segment, inner in reversed(children):
            hidden = segment in _HIDDEN or segment == "" or (segment.isdigit() and isinstance(value, tuple)
                                                                and isinstance(inner, dict))
            stack.append((path if hidden else path + (segment,), inner))
    return entries


def _segment(key, position, names) -> str:
    """A dict key as a path segment; a tensor key (an optimizer's state is keyed by
    parameters) by the name that tensor already has."""
    if isinstance(key, (str, int, float)):
        return str(key)
    if isinstance(key, _Ref) and isinstance(key.pid, tuple) and len(key.pid) > 1:
        return f"[{names.get(key.pid[1], 'tensor')}]"
    return f"[{position}]"
