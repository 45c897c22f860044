"""Building many small objects at once (a record, a node and a table row per node).

Python's cycle collector runs every few hundred allocations and, as the heap grows,
walks all of it: building 100,000 nodes' dicts would spend most of its time there,
finding nothing (records and rows hold no cycles). It is paused for such a build,
and what was built goes straight to the oldest generation afterwards.
"""
from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def collector_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            # what was built lives as long as the graph: move it to the oldest
            # generation at once (a splice of lists), or the next young-generation
            # collections would each walk all of it first
            gc.freeze()
            gc.unfreeze()
            gc.enable()
