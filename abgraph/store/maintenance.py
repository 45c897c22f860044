"""Checking, healing and cleaning an experiment folder: `abgraph verify [--repair]`,
`abgraph gc [--dry-run]`, and the check a run makes of the stored nodes it builds on."""
from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from .index import _ROWS, INDEX_NAME, DamagedIndex, Index, NotAnExperiment, decode_row
from .objects import check_digest


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
    """node id -> every blob a stored node needs (payload and tensors; a failed node's
    are garbage); a digest that is not one raises (a damaged or crafted index
    proves nothing unreferenced)."""
    needs = {}
    for node_id, payload, blobs in index._query(
            "SELECT id, payload, digests FROM nodes LEFT JOIN node_blobs ON node_blobs.node = nodes.id "
            "WHERE status IN ('done', 'damaged')"):
        try:
            digests = set(json.loads(blobs)) | ({payload} if payload else set())
            needs[node_id] = {check_digest(d) for d in digests}
        except (TypeError, ValueError, RuntimeError) as error:
            raise DamagedIndex(f"{index.path}: node {str(node_id)[:12]} lists blobs abgraph never "
                               f"writes ({error}); `abgraph verify --repair` keeps the intact nodes") from None
    return needs


def verify(index, objects) -> VerifyReport:
    """Re-hash every blob (streamed), check every record's blobs are present, list
    orphans. Only names of the blob format are read, never through a link."""
    unmarked = objects.unmarked()
    if unmarked:
        raise RuntimeError(f"verify refused: {unmarked}")
    report = VerifyReport()
    present = set()
    for digest in objects.digests():
        present.add(digest)
        report.blobs += 1
        if not objects.intact(digest):
            report.corrupted.append(digest)
    needs = {n: d for n, d in referenced(index).items()}
    done = {n for n, (status, _) in index.statuses().items() if status == "done"}
    used = set().union(*needs.values()) if needs else set()
    for node_id, digests in needs.items():
        lacking = sorted(digests - present)
        if lacking and node_id in done:
            report.missing[node_id] = lacking
    report.orphans = sorted(present - used)
    return report


def damaged_nodes(index, objects, planned) -> dict:
    """Stored `done` nodes of `planned` (id -> node with `.parents`) that a run must
    recompute, id -> why, and mark them `damaged` in the index.

    Every stored node's blobs must exist; those a task will load (the stored
    parents of nodes to compute, stored nodes with a new probe) are also
    re-hashed, so no recipe or probe starts from a payload that fails its check.
    Cheap next to a run: one stat per blob, one read of the payloads built upon.
    A corrupted blob is deleted, so the recomputed node writes it again (its
    name is a promise its bytes no longer keep).
    """
    stored = {n: d for n, d in referenced(index).items() if n in planned}
    done = {n for n, (status, _) in index.statuses().items() if status == "done" and n in stored}
    results = index.result_versions()
    probed = {n for n in done if any(results.get(n, {}).get(name) != probe.version
                                     for name, probe in planned[n].probes.items())}
    damaged, intact = {}, {}
    absent = objects.missing(set().union(*(stored[n] for n in done)) if done else set())
    for node_id in done:
        lacking = sorted(stored[node_id] & absent)
        if lacking:
            damaged[node_id] = f"damaged: {len(lacking)} blob(s) missing ({lacking[0][:12]}…)"
    while True:  # a parent re-hashed as damaged has parents of its own to check
        loaded = {p for n, node in planned.items() if n not in done or n in damaged
                  for p in node.parents if p in done and p not in damaged} | (probed - set(damaged))
        found = {}
        for node_id in loaded:
            bad = [d for d in sorted(stored[node_id]) if not intact.setdefault(d, objects.intact(d))]
            if bad:
                found[node_id] = f"damaged: {len(bad)} blob(s) fail their hash ({bad[0][:12]}…)"
        if not found:
            break
        damaged.update(found)
    for digest, ok in intact.items():
        if not ok and objects.exists(digest):
            objects.delete(digest)
    if damaged:
        index.mark_damaged(damaged)
    return damaged


@contextlib.contextmanager
def _exclusive(directory: Path, lock_name: str):
    """Hold the run lock of an experiment: no run adds blobs there meanwhile. A folder
    that cannot be written (an archive) runs nothing: nothing to hold."""
    try:
        handle = open(directory / lock_name, "a")
    except OSError:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"a run is using {directory}; run gc when it has finished") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def collect_garbage(directory, index, objects, lock_name, dry_run: bool = False):
    """Delete blobs that no experiment keeping blobs in this location references;
    with `dry_run` only list them. Returns (digests deleted or to delete, bytes).

    Refuses unless the location is one abgraph created, lists this experiment
    among its users, and every user's index can be read; deletes only names of
    the blob format in the blob layout, never through a symbolic link.
    """
    directory = Path(directory).resolve()
    refusal = objects.refusal()
    if refusal:
        raise RuntimeError(f"gc refused: {refusal}")
    users = [Path(u) for u in objects.users()]
    if index.meta("objects") is None and directory not in users:
        users.append(directory)  # its own objects/ folder (a copy of an experiment lists the original)
    if directory not in users:
        raise RuntimeError(f"gc refused: {objects.location} does not list {directory} among the "
                           "experiments keeping blobs there (created by an older abgraph, or not its "
                           "own); open it once with abgraph.Experiment(folder) if it is")
    with contextlib.ExitStack() as held:
        used = set()
        for user in users:
            other = index if user == directory else _user_index(user, directory, objects, held)
            if other is None:
                continue
            held.enter_context(_exclusive(user, lock_name))
            for digests in referenced(other).values():
                used |= digests
        garbage = [d for d in objects.digests() if d not in used]
        freed = 0
        for digest in garbage:
            freed += objects.size(digest) if dry_run else objects.delete(digest)
        if not dry_run:
            objects.remove_temporary()  # left by a killed writer
    return garbage, freed


def _user_index(user: Path, directory: Path, objects, held):
    """The index of another experiment keeping blobs in `objects`, or None where it
    has moved its blobs elsewhere since; refuses where it cannot be read."""
    try:
        other = Index(user)
    except NotAnExperiment as error:
        raise RuntimeError(
            f"gc refused: {user} keeps blobs in {objects.location} but cannot be read ({error}); "
            f"if it is gone for good: abgraph gc {directory} --forget {user}") from None
    held.callback(other.close)
    recorded = other.meta("objects")
    return other if recorded is not None and _same_location(recorded, objects.location) else None


def _same_location(recorded: str, location: str) -> bool:
    if "://" in recorded or "://" in location:
        return recorded == location
    return Path(recorded).resolve() == Path(location).resolve()


@dataclass
class RepairReport:
    kept: int = 0
    lost: dict = field(default_factory=dict)    # node id (or table) -> why it was dropped
    damaged: dict = field(default_factory=dict)  # node id -> blobs missing or corrupted
    backup: Path | None = None


def repair(directory) -> RepairReport:
    """Rebuild the index from its readable, well-formed rows; the old file is kept
    beside it (`abgraph.sqlite.damaged-<time>`). Nodes whose blobs are missing or
    corrupted are kept as `damaged`: the next run recomputes them."""
    from . import OBJECTS_NAME, open_store
    directory = Path(directory)
    report = RepairReport()
    path = directory / INDEX_NAME
    if not path.is_file():
        raise NotAnExperiment(f"{directory} is not an abgraph experiment (no {INDEX_NAME} in it)")
    rows, meta = _salvage(path, report)
    try:
        objects = open_store(json.loads(meta["objects"]), create=False)
    except (KeyError, ValueError, TypeError):
        objects = open_store(directory / OBJECTS_NAME, create=False)
    report.backup = path.with_name(f"{INDEX_NAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(report.backup)
    for suffix in ("-wal", "-shm"):
        path.with_name(INDEX_NAME + suffix).unlink(missing_ok=True)
    index = Index(directory, create=True)
    try:
        for key, value in meta.items():
            if key != "schema_version":  # the rebuilt index has this version's schema
                index.set_meta(key, json.loads(value))
        index.write(rows)
        intact = {}
        for record in rows:
            bad = [d for d in record.blobs + ([record.payload] if record.payload else [])
                   if not intact.setdefault(d, objects.intact(d))]
            if bad and record.status == "done":
                report.damaged[record.id] = bad
        for digest, ok in intact.items():
            if not ok and objects.exists(digest):
                objects.delete(digest)  # the recomputed node writes it again
        index.mark_damaged({n: f"damaged: {len(b)} blob(s) missing or corrupted"
                            for n, b in report.damaged.items()})
    finally:
        index.close()
    report.kept = len(rows)
    return report


def _salvage(path: Path, report: RepairReport):
    """Readable, well-formed node records and meta of a damaged index (of any schema)."""
    from .index import NodeRecord, _has_old_layout, _view_old_layout
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        report.lost["index"] = str(error)
        return [], {}

    def read(sql, what):
        try:
            return db.execute(sql).fetchall()
        except sqlite3.Error as error:
            report.lost[what] = f"unreadable: {error}"
            return []
    meta = dict(read("SELECT key, value FROM meta", "meta table"))
    try:
        if _has_old_layout(db):
            _view_old_layout(db)
    except sqlite3.Error as error:
        report.lost["schema"] = f"unreadable: {error}"
    results = {}
    for node, name, version, value in read("SELECT node, name, version, value FROM results", "results table"):
        results.setdefault(node, []).append((name, version, value))
    rows = read(f"{_ROWS[True]} ORDER BY nodes.seq", "nodes table")
    if not rows and "nodes table" in report.lost:
        rows = _row_by_row(db, report)
    db.close()
    records = []
    for row in rows:
        try:
            record = NodeRecord(**decode_row(row, path))
            for name, version, value in results.get(record.id, []):
                record.results[name], record.result_versions[name] = json.loads(value), version
        except (DamagedIndex, ValueError, TypeError) as error:
            report.lost[str(row[0])] = str(error)
            continue
        records.append(record)
    while True:  # a child of a lost node cannot be placed in the graph
        ids = {r.id for r in records}
        orphaned = [r for r in records if any(p not in ids for p in r.parents)]
        if not orphaned:
            return records, meta
        for record in orphaned:
            report.lost[record.id] = "its parent was lost"
        records = [r for r in records if r.id not in report.lost]


def _row_by_row(db, report):
    """Rows of a `nodes` table whose full scan fails: each rowid on its own."""
    try:
        last = db.execute("SELECT MAX(rowid) FROM nodes").fetchone()[0] or 0
    except sqlite3.Error:
        return []
    rows = []
    for rowid in range(1, last + 1):
        try:
            row = db.execute(f"{_ROWS[True]} WHERE nodes.rowid=?", (rowid,)).fetchone()
        except sqlite3.Error as error:
            report.lost[f"row {rowid}"] = f"unreadable: {error}"
            continue
        if row:
            rows.append(row)
    return rows
