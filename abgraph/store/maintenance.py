"""Checking and cleaning an experiment folder: `abgraph verify` and `abgraph gc`."""
from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass, field
from pathlib import Path

from .objects import blob_digest


@dataclass
class VerifyReport:
    blobs: int = 0
    corrupted: list = field(default_factory=list)   # digests whose bytes do not match
    missing: dict = field(default_factory=dict)     # node id -> digests it needs and lacks
    orphans: list = field(default_factory=list)     # blobs no record references

    @property
    def clean(self) -> bool:
        return not (self.corrupted or self.missing)


def referenced(index) -> dict[str, set]:
    """node id -> every blob its record needs (payload and tensors)."""
    needs = {}
    for node_id, payload, blobs in index.db.execute("SELECT id, payload, blobs FROM nodes WHERE status='done'"):
        needs[node_id] = set(json.loads(blobs)) | ({payload} if payload else set())
    return needs


def verify(index, objects) -> VerifyReport:
    """Re-hash every blob, check every record's blobs are present, list orphans."""
    report = VerifyReport()
    present = set()
    for digest in objects.digests():
        present.add(digest)
        report.blobs += 1
        if blob_digest(objects._read(digest)) != digest:
            report.corrupted.append(digest)
    needs = referenced(index)
    used = set().union(*needs.values()) if needs else set()
    for node_id, digests in needs.items():
        lacking = sorted(digests - present)
        if lacking:
            report.missing[node_id] = lacking
    report.orphans = sorted(present - used)
    return report


def collect_garbage(directory, index, objects, lock_name) -> tuple[int, int]:
    """Delete blobs no record references; refuses while a run holds the folder.
    Returns (blobs deleted, bytes freed)."""
    with open(Path(directory) / lock_name, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"a run is using {directory}; run gc when it has finished") from None
        try:
            needs = referenced(index)
            used = set().union(*needs.values()) if needs else set()
            deleted = freed = 0
            for digest in list(objects.digests()):
                if digest not in used:
                    freed += objects.delete(digest)
                    deleted += 1
            objects.remove_temporary()  # left by a killed writer
            return deleted, freed
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
