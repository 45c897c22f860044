"""dill, with imported modules pickled by reference.

dill pickles a module that is not in site-packages (an editable install, the
user's own `mylib.py` beside the script) with its whole namespace, which fails on
locks and context variables and bloats every message. An imported module is
importable where the payload is read (workers get the driver's `sys.path`), so a
reference is enough; only `__main__` travels by value.
"""
from __future__ import annotations

import importlib
import io
import pickle
import os
from types import CodeType, ModuleType

import dill
import dill.detect
from dill._dill import MetaCatchingDict, save_code, save_module


def _sorted_globalvars(find):
    """dill collects a function's globals through a set, so their order (and the
    pickle's bytes) would change with PYTHONHASHSEED; sorting makes a payload's
    digest reproducible across processes."""
    def globalvars(func, recurse=True, builtin=False):
        return dict(sorted(find(func, recurse, builtin).items()))
    globalvars.abgraph_sorted = True
    return globalvars


if not getattr(dill.detect.globalvars, "abgraph_sorted", False):
    dill.detect.globalvars = _sorted_globalvars(dill.detect.globalvars)


def _save_module(pickler, module):
    if module.__name__ == "__main__" or getattr(module, "__spec__", None) is None:
        return save_module(pickler, module)
    pickler.save_reduce(importlib.import_module, (module.__name__,), obj=module)


def _save_code(pickler, code):
    """Code pickled by value (the user's script) keeps only its file's name, so the
    payload digest does not depend on where the checkout lives."""
    if os.path.isabs(code.co_filename):
        code = code.replace(co_filename=os.path.basename(code.co_filename))
    return save_code(pickler, code)


class Pickler(dill.Pickler):
    dispatch = MetaCatchingDict(dill.Pickler.dispatch.copy())
    dispatch[ModuleType] = _save_module
    dispatch[CodeType] = _save_code

    def __init__(self, file, **settings):
        settings.setdefault("recurse", True)
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL, **settings)


def dumps(obj) -> bytes:
    buffer = io.BytesIO()
    Pickler(buffer).dump(obj)
    return buffer.getvalue()


loads = dill.loads
