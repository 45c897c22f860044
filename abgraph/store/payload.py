"""Payload serialization: dill for the object graph, each tensor a blob of its own.

Splitting tensors out is what makes the store small: a tensor no recipe changed
has the same digest as in the parent and is stored once for the experiment.
Tensors are stored on the CPU so a payload restores on any machine.
"""
from __future__ import annotations

import io
import pickle
from types import FunctionType

import dill
import numpy
import torch

from .. import serialization
from .objects import BlobError, ObjectStore, PayloadError, blob_digest


class Snapshot:
    """The tensors of a saved or loaded payload, with their digests.

    A child forked from that payload compares its tensors against these (cheap)
    instead of re-hashing them (costly) when it is saved.
    """

    def __init__(self, by_id: dict | None = None):
        self.by_id: dict[int, tuple[object, str]] = by_id if by_id is not None else {}
        self.versions = {key: _version(obj) for key, (obj, _) in self.by_id.items()}

    def add(self, tensor, digest: str) -> None:
        self.by_id[id(tensor)] = (tensor, digest)
        self.versions[id(tensor)] = _version(tensor)

    def untouched(self) -> bool:
        """No torch tensor of the payload was changed in place since it was saved or
        loaded (torch counts in-place writes in `_version`; free to read). A state
        kept in memory for its children can be written through an alias a recipe
        kept (a global, a closure): such a state must be read again from its blobs."""
        return all(_version(obj) == self.versions[key] for key, (obj, _) in self.by_id.items())


def _version(tensor):
    return getattr(tensor, "_version", None)  # numpy arrays keep no count


def _raw(tensor):
    """Bytes of a CPU-contiguous copy (numpy arrays are wrapped without a copy)."""
    if isinstance(tensor, numpy.ndarray):
        return numpy.ascontiguousarray(tensor).reshape(-1).view(numpy.uint8)
    data = tensor.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    data = data.contiguous().reshape(-1)
    return data.view(torch.uint8).numpy() if data.numel() else numpy.empty(0, numpy.uint8)


_SPLIT_TYPES = frozenset({torch.Tensor, torch.nn.Parameter, numpy.ndarray})


def _splittable(obj) -> bool:
    """Plain tensors, parameters and numeric arrays become blobs; tensor subclasses,
    sparse, quantized and meta tensors are left to pickle. Called on every object
    pickled, so the common answer (no) is one set lookup."""
    kind = type(obj)
    if kind not in _SPLIT_TYPES:
        return False
    if kind is numpy.ndarray:
        return obj.dtype != object
    return obj.layout == torch.strided and not obj.is_quantized and not obj.is_meta


def _bits(tensor):
    """A tensor's bytes where they live: a uint8 array on the CPU, a uint8 tensor on
    an accelerator (a reference copy stays there: no transfer per node)."""
    if isinstance(tensor, numpy.ndarray) or tensor.device.type == "cpu":
        return _raw(tensor)
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _same_bits(bits, reference) -> bool:
    """Bit-for-bit equality, what decides whether a blob's digest still holds (so
    -0.0 differs from 0.0 and a NaN equals itself); on the CPU compared eight bytes
    at a time, several times faster than `torch.equal`."""
    if type(bits) is not type(reference) or bits.shape != reference.shape:
        return False
    if isinstance(bits, torch.Tensor):
        return bits.device == reference.device and torch.equal(bits, reference)
    if bits.size % 8 == 0:
        bits, reference = bits.view(numpy.int64), reference.view(numpy.int64)
    return numpy.array_equal(bits, reference)


class _NeedsDill(Exception):
    """The fast pickler met something only dill pickles faithfully."""


class _Splitter:
    """Tensors out as blobs; shared by the fast and the dill pickler."""

    def _setup(self, store: ObjectStore, known: dict, digests: dict):
        self.store, self.known, self.digests = store, known, digests
        self.blobs: list[str] = []
        self._refs: dict[int, int] = {}

    def persistent_id(self, obj):
        if not _splittable(obj):
            return self._not_split(obj)
        ref = self._refs.setdefault(id(obj), len(self._refs))
        entry = self.digests.get(id(obj))
        if entry is not None and entry[0] is obj:
            digest = entry[1]
        else:
            carried = self.known.get(id(obj))
            bits = _bits(obj)  # on the CPU, the very bytes a changed tensor is stored as
            if carried is not None and carried[0] is obj and _same_bits(bits, carried[1]):
                digest = carried[2]
            else:
                raw = bits if isinstance(bits, numpy.ndarray) else _raw(obj)
                digest = self.store.put(raw, blob_digest(raw))
            self.digests[id(obj)] = (obj, digest)
        self.blobs.append(digest)
        if isinstance(obj, numpy.ndarray):
            return ("ndarray", ref, digest, obj.dtype.str, obj.shape)
        kind = "parameter" if isinstance(obj, torch.nn.Parameter) else "tensor"
        return (kind, ref, digest, str(obj.dtype).removeprefix("torch."), tuple(obj.shape),
                obj.requires_grad and obj.is_leaf)

    def _not_split(self, obj):
        return None


class _FastPickler(_Splitter, pickle.Pickler):
    """C pickle: several times faster than dill, but it would store a class or
    function of the user's script by reference, which a notebook could not load."""

    def __init__(self, file, store, known, digests):
        pickle.Pickler.__init__(self, file, protocol=pickle.HIGHEST_PROTOCOL)
        self._setup(store, known, digests)

    def _not_split(self, obj):
        if (type(obj) is FunctionType or isinstance(obj, type)) and obj.__module__ == "__main__":
            raise _NeedsDill
        return None


class _DillPickler(_Splitter, serialization.Pickler):
    def __init__(self, file, store, known, digests):
        serialization.Pickler.__init__(self, file)
        self._setup(store, known, digests)


class _Unpickler(dill.Unpickler):
    def __init__(self, file, store: ObjectStore, verify: bool, snapshot: Snapshot):
        super().__init__(file)
        self.store, self.verify, self.snapshot = store, verify, snapshot
        self._refs: dict[int, object] = {}

    def persistent_load(self, pid):
        kind, ref = pid[0], pid[1]
        if ref in self._refs:
            return self._refs[ref]
        digest, dtype, shape = pid[2], pid[3], pid[4]
        if kind == "ndarray":
            dtype = numpy.dtype(dtype)
            raw = self.store.get(digest, int(numpy.prod(shape)) * dtype.itemsize, self.verify)
            obj = numpy.frombuffer(raw, dtype=dtype).reshape(shape)
        else:
            torch_dtype = getattr(torch, dtype)
            itemsize = torch.empty((), dtype=torch_dtype).element_size()
            numel = int(numpy.prod(shape)) if shape else 1
            raw = self.store.get(digest, numel * itemsize, self.verify)
            flat = torch.frombuffer(raw, dtype=torch_dtype) if numel else torch.empty(0, dtype=torch_dtype)
            obj = flat.reshape(shape)
            if kind == "parameter":
                obj = torch.nn.Parameter(obj, requires_grad=pid[5])
            elif pid[5]:
                obj.requires_grad_(True)
        self._refs[ref] = obj
        self.snapshot.add(obj, digest)
        return obj


class _CopyPickler(pickle.Pickler):
    """Fast in-memory pickling where tensors are handed over, not serialized."""

    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: list = []
        self._refs: dict[int, int] = {}

    def persistent_id(self, obj):
        if not _splittable(obj):
            return None
        ref = self._refs.get(id(obj))
        if ref is None:
            ref = self._refs[id(obj)] = len(self.tensors)
            self.tensors.append(obj)
        return ref


class _DillCopyPickler(serialization.Pickler):
    persistent_id = _CopyPickler.persistent_id

    def __init__(self, file):
        super().__init__(file)
        self.tensors, self._refs = [], {}


class _CopyUnpickler(pickle.Unpickler):
    def __init__(self, file, copies: list):
        super().__init__(file)
        self.copies = copies

    def persistent_load(self, ref):
        return self.copies[ref]


def clone(payload: dict, snapshot: Snapshot | None):
    """A private deep copy of `payload`, and which copied tensors came from which
    saved ones (so saving the copy re-hashes only what changed).

    Unlike `copy.deepcopy` this copes with non-leaf tensors (a pruned weight is
    one); tensors are cloned, the rest goes through pickle (dill if needed).
    """
    buffer, pickler = _pickle(payload, (_CopyPickler, _DillCopyPickler))
    tensors = pickler.tensors
    copies = [_clone_tensor(t) for t in tensors]
    buffer.seek(0)
    copied = _CopyUnpickler(buffer, copies).load()
    known = {}
    if snapshot is not None:
        for source, copy in zip(tensors, copies):
            entry = snapshot.by_id.get(id(source))
            if entry is not None and entry[0] is source:
                known[id(copy)] = (copy, _bits(source), entry[1])
    return copied, known


def references(snapshot: Snapshot) -> dict:
    """For a state handed over without a copy: a private copy of each saved tensor's
    bytes to compare against once the recipe has run (in-place changes, `.data`
    and numpy views included, cannot reach it)."""
    return {key: (obj, _copy_bits(obj), digest) for key, (obj, digest) in snapshot.by_id.items()}


def _copy_bits(tensor):
    if isinstance(tensor, numpy.ndarray):
        return _raw(tensor).copy()
    return _bits(tensor.detach().clone(memory_format=torch.contiguous_format))


def _clone_tensor(tensor):
    if isinstance(tensor, numpy.ndarray):
        return tensor.copy()
    copy = tensor.detach().clone()
    if isinstance(tensor, torch.nn.Parameter):
        return torch.nn.Parameter(copy, requires_grad=tensor.requires_grad)
    return copy.requires_grad_(tensor.requires_grad and tensor.is_leaf)


def dump(payload: dict, store: ObjectStore, known: dict | None = None):
    """Store `payload` (attribute name -> object); return (digest, tensor blobs, snapshot)."""
    digests: dict = {}
    buffer, pickler = _pickle(payload, [lambda file, kind=kind: kind(file, store, known or {}, digests)
                                        for kind in (_FastPickler, _DillPickler)])
    digest = store.put(buffer.getbuffer())
    return digest, sorted(set(pickler.blobs)), Snapshot(digests)


def _pickle(payload: dict, picklers):
    """Pickle with the first of `picklers` (C pickle, then dill) that manages it."""
    for make in picklers:
        buffer = io.BytesIO()
        pickler = make(buffer)
        try:
            pickler.dump(payload)
            return buffer, pickler
        except OSError:
            raise  # the disk, not the payload: say so as it is
        except Exception as error:  # _NeedsDill, or what only dill pickles (closures, lambdas)
            failure = error
    raise PayloadError(_name_unpicklable(payload, failure)) from failure


def _name_unpicklable(payload: dict, error: Exception) -> str:
    """Find which attribute could not be pickled, for an error a user can act on."""
    for name, value in payload.items():
        try:
            serialization.dumps(value)
        except Exception as inner:
            return (f"attribute {name!r} ({type(value).__name__}) cannot be pickled: {inner}; "
                    "keep only picklable objects in NONHASHED_ATTRIBUTES")
    return f"the payload cannot be pickled: {error}"


def load(digest: str, store: ObjectStore, verify: bool = False):
    """Read a payload back; returns (payload dict, snapshot). Trusts the experiment's author."""
    data = store.get(digest, verify=True)  # small: always checked
    snapshot = Snapshot()
    try:
        payload = _Unpickler(io.BytesIO(data), store, verify, snapshot).load()
    except BlobError:
        raise
    except Exception as error:
        raise PayloadError(f"payload {digest} cannot be unpickled: {error}") from error
    return payload, snapshot
