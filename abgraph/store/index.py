"""The index: one SQLite file (WAL) with a slim record per node.

Only the process that called `run()` writes it; workers hand records back. A
record already `done` is never replaced (by a failure, or by the other outcome of
a nondeterministic recipe in a second run racing on the directory): a stored
child always derives from its stored parent. Only a node found `damaged` is
recomputed and replaced.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import operator
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..bulk import collector_paused
from .objects import DiskFull

# 3: a node's parents and tags in its row; what made it (its kind) and its blob digests
#    in tables of their own: browsing scans narrow rows and decodes each kind once;
# 2: blobs in 16 folders (objects/a/bcdef...); 1: in 256 (objects/ab/cdef...), still read.
# An index of 1 or 2 is read through views (`_view_old_layout`) and upgraded by the first write.
SCHEMA_VERSION = 3
INDEX_NAME = "abgraph.sqlite"


class NotAnExperiment(RuntimeError):
    """The folder is not an experiment, or one this version cannot read."""


@dataclass(slots=True)
class NodeRecord:
    """What the index knows of a node: everything but the payload itself (slots:
    100,000 of them read back would otherwise hold 100 MB of instance dicts)."""

    id: str
    parents: list = field(default_factory=list)
    recipe: str = "root"
    recipe_properties: dict = field(default_factory=dict)
    recipe_version: str = ""
    properties: dict = field(default_factory=dict)
    state_class: str = ""
    tags: list = field(default_factory=list)
    status: str = "done"
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    duration: float | None = None
    payload: str | None = None
    attributes: list = field(default_factory=list)
    blobs: list | None = field(default_factory=list)  # None: read without them (browsing)
    metrics: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    result_versions: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    seq: int = 0
    derived_from: list = field(default_factory=list)  # parents' payloads it was computed from (not stored)

    def fields(self) -> dict:
        """Every field by name, values as they are (`asdict()` deep-copies: slow)."""
        return {name: getattr(self, name) for name in self.__slots__}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kinds (
    id INTEGER PRIMARY KEY, recipe TEXT NOT NULL, recipe_properties TEXT NOT NULL,
    recipe_version TEXT NOT NULL, properties TEXT NOT NULL, state_class TEXT NOT NULL,
    attributes TEXT NOT NULL, environment TEXT NOT NULL,
    UNIQUE (recipe, recipe_properties, recipe_version, properties, state_class, attributes, environment));
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, kind INTEGER NOT NULL, status TEXT NOT NULL,
    error TEXT, started REAL, finished REAL, duration REAL, payload TEXT,
    parents TEXT NOT NULL, tags TEXT NOT NULL, metrics TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS nodes_seq ON nodes (seq);
CREATE TABLE IF NOT EXISTS node_blobs (node TEXT PRIMARY KEY, digests TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    node TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (node, name));
"""
# A kind: what made a node besides its parents, and where. A sweep's nodes share a
# few hundred kinds: a row holds the kind's number, read once per kind.
_KIND_COLUMNS = ("recipe", "recipe_properties", "recipe_version", "properties", "state_class",
                 "attributes", "environment")
# parents: ids in order, separated by spaces (ids are hex): split at C speed, always strings.
# tags: a JSON list, in the order they were added.
_NODE_COLUMNS = ("id", "seq", "status", "error", "started", "finished", "duration", "payload",
                 "parents", "tags", "metrics")
_JSON_COLUMNS = ("recipe_properties", "properties", "attributes", "tags", "metrics", "environment")
_DICT_COLUMNS = ("recipe_properties", "properties", "metrics", "environment")
# a record: its row, its kind and its blob digests (NULL: read without them)
_RECORD_COLUMNS = _NODE_COLUMNS + _KIND_COLUMNS + ("blobs",)


def _select_rows(columns, read_blobs: bool) -> str:
    blobs = ("node_blobs.digests FROM nodes LEFT JOIN node_blobs ON node_blobs.node = nodes.id"
             if read_blobs else "NULL FROM nodes")
    return f"SELECT {','.join(columns)}, {blobs}"


_NAMED = [f"nodes.{c}" for c in _NODE_COLUMNS] + [f"kinds.{c}" for c in _KIND_COLUMNS]
# every column of each record (a kind that is missing reads NULL); for reads that check each row
_ROWS = {read_blobs: _select_rows(_NAMED, read_blobs) + " LEFT JOIN kinds ON kinds.id = nodes.kind"
         for read_blobs in (True, False)}
# the rows with their kind's number, without metrics: the fast read takes those in one JSON text
_FAST_COLUMNS = [f"nodes.{c}" for c in _NODE_COLUMNS if c != "metrics"] + ["nodes.kind"]
_FAST_ROWS = {read_blobs: _select_rows(_FAST_COLUMNS, read_blobs) for read_blobs in (True, False)}
_KINDS = f"SELECT id, {','.join(_KIND_COLUMNS)} FROM kinds"


def _old_layout_nodes(table: str, kind: str) -> str:
    """The rows of an index of schema 1 or 2 (parents and tags in tables of their own,
    a node's kind and blob digests in its row) in the columns of schema 3 (`kind`:
    the expression giving each row's kind)."""
    return f"""SELECT old.rowid AS rowid, id, seq, {kind} AS kind, status, error, started, finished,
 duration, payload,
 coalesce((SELECT group_concat(parent, ' ') FROM
           (SELECT parent FROM main.edges WHERE child = old.id ORDER BY position)), '') AS parents,
 (SELECT json_group_array(tag) FROM (SELECT tag FROM main.tags WHERE node = old.id ORDER BY rowid)) AS tags,
 metrics FROM {table} AS old"""


def _has_old_layout(db) -> bool:
    return db.execute("SELECT 1 FROM main.sqlite_master WHERE type='table' AND name='edges'").fetchone() is not None


def _view_old_layout(db) -> None:
    """Read an index of schema 1 or 2 as schema 3 through views named like the
    new tables (temporary ones, which shadow the old in this connection only):
    browsing an old experiment changes nothing in its folder."""
    db.execute(f"CREATE TEMP VIEW IF NOT EXISTS nodes AS {_old_layout_nodes('main.nodes', 'old.rowid')}")
    db.execute(f"CREATE TEMP VIEW IF NOT EXISTS kinds AS SELECT rowid AS id, {','.join(_KIND_COLUMNS)} FROM main.nodes")
    db.execute("CREATE TEMP VIEW IF NOT EXISTS node_blobs AS SELECT id AS node, blobs AS digests FROM main.nodes")


def _unview_old_layout(db) -> None:
    for view in ("nodes", "kinds", "node_blobs"):
        db.execute(f"DROP VIEW IF EXISTS temp.{view}")


def _dumps(value) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


class DamagedIndex(NotAnExperiment):
    """The index can be opened but holds rows abgraph never writes."""


STATUSES = ("done", "failed", "blocked", "damaged", "stopped")

_NUMBER_OR_NULL = "('null', 'real', 'integer')"
_NOT_DIGEST = "(typeof({0}) != 'text' OR length({0}) != 64 OR {0} GLOB '*[^0-9a-f]*')"
_ODD_BLOBS = f"""
UNION ALL SELECT 1 FROM nodes LEFT JOIN node_blobs ON node_blobs.node = nodes.id
 WHERE typeof(digests) != 'text' OR json_type(digests) != 'array'
 OR EXISTS (SELECT 1 FROM json_each(digests) WHERE {_NOT_DIGEST.format("value")})"""
# a row abgraph never writes (instr: a node among its own parents); json_each raises
# on text that is not JSON. The blobs' check is most of the work on real rows: only
# a read that returns them does it. The kinds and JSON columns are checked as they are
# decoded, the payloads' characters all at once (`_hex_only`: GLOB takes 10 times as long)
_ODD_ROW = {read_blobs: f"""
SELECT 1 FROM nodes WHERE typeof(id) != 'text' OR id = '' OR typeof(kind) != 'integer'
 OR status NOT IN ({", ".join(map(repr, STATUSES))})
 OR typeof(started) NOT IN {_NUMBER_OR_NULL} OR typeof(finished) NOT IN {_NUMBER_OR_NULL}
 OR typeof(duration) NOT IN {_NUMBER_OR_NULL}
 OR typeof(parents) != 'text' OR instr(parents, id) OR typeof(tags) != 'text'
 OR (payload IS NOT NULL AND (typeof(payload) != 'text' OR length(payload) != 64)){_ODD_BLOBS if read_blobs else ""}
LIMIT 1""" for read_blobs in (True, False)}


_ALL_METRICS = "SELECT json_group_array(json(metrics)) FROM (SELECT metrics FROM nodes ORDER BY rowid)"
_GENERATION = "SELECT value FROM meta WHERE key = 'generation'"


def _hex_only(texts) -> bool:
    """Whether the texts hold lowercase hex digits only: one pass in C over all of them."""
    return not "".join(texts).encode("ascii", "replace").translate(None, b"0123456789abcdef")


class _SharedJSON(dict):
    """JSON text -> value, decoded once per text (a sweep's nodes repeat their
    properties and environment) and checked once: a `kind` (dict, or list of
    strings). `odd` says a text was neither; its value reads empty."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.odd = kind, False

    def __missing__(self, text):
        try:
            value = json.loads(text)
        except (TypeError, ValueError):
            value = None
        if not (type(value) is self.kind and (self.kind is dict or all(type(v) is str for v in value))):
            self.odd, value = True, self.kind()
        self[text] = value
        return value


class Index:
    """Opened read-only where the folder cannot be written (an archive, a read-only
    mount): WAL mode would need to create its `-shm` file there."""

    def __init__(self, directory, create: bool = False):
        self.path = Path(directory) / INDEX_NAME
        if not create and not self.path.exists():
            raise NotAnExperiment(f"{directory} is not an abgraph experiment (no {INDEX_NAME} in it)")
        self._lock = threading.Lock()
        self.readonly = not create and not (os.access(self.path, os.W_OK)
                                            and os.access(self.path.parent, os.W_OK))
        try:
            self.db = self._connect()
        except sqlite3.OperationalError as error:
            if create or self.readonly or not ("readonly" in str(error) or "unable to open" in str(error)):
                raise NotAnExperiment(f"{self.path} cannot be opened: {error}") from None
            self.readonly = True  # e.g. root on a read-only mount
            self.db = self._connect()
        self._check_schema(create)

    def _connect(self):
        if self.readonly:
            wal = self.path.with_name(self.path.name + "-wal")
            # writes not yet merged into the file need the WAL (and its -shm); without
            # them the file is complete and immutable on this medium
            mode = "mode=ro" if wal.exists() and wal.stat().st_size else "immutable=1"
            db = sqlite3.connect(f"{self.path.absolute().as_uri()}?{mode}", uri=True,
                                 isolation_level=None, check_same_thread=False)
        else:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            if not self.readonly:
                db.execute("PRAGMA busy_timeout=60000")
                _set_wal(db)
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError as error:
            db.close()
            if self.readonly and "unable to open" in str(error):
                raise NotAnExperiment(
                    f"{self.path} cannot be read on this read-only medium: its last writes are "
                    "still in abgraph.sqlite-wal, which needs abgraph.sqlite-shm beside it; "
                    "copy the folder somewhere writable") from None
            raise
        except sqlite3.DatabaseError as error:
            db.close()
            raise NotAnExperiment(f"{self.path} is not an abgraph index: {error}; "
                                  "`abgraph verify --repair` rebuilds what it can") from None
        return db

    def _check_schema(self, create: bool) -> None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as error:
            if not create or "no such table" not in str(error):
                raise NotAnExperiment(f"{self.path} is not an abgraph index: {error}") from None
            row = None
        if row is None:
            if not create:
                raise NotAnExperiment(f"{self.path} is not an abgraph index (no schema version)")
            with self._lock, self._transaction():
                self._create_tables()
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                (str(SCHEMA_VERSION),))
            self.schema_version = SCHEMA_VERSION
            return
        self.schema_version = int(row[0])
        if self.schema_version > SCHEMA_VERSION:
            from .. import __version__
            raise NotAnExperiment(
                f"{self.path} was written with index schema {row[0]}; abgraph {__version__} "
                f"reads schema {SCHEMA_VERSION} and older: upgrade abgraph to read it")
        if _has_old_layout(self.db):
            if create:
                self._upgrade()
            else:
                _view_old_layout(self.db)
                self._viewed = True

    _viewed = False  # an index of schema 1 or 2, read through `_view_old_layout`

    def _create_tables(self) -> None:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self.db.execute(statement)

    def _upgrade(self) -> None:
        """Rewrite an index of schema 1 or 2 as schema 3, in one transaction (readers
        keep their snapshot meanwhile). The first write does it, never a browse."""
        with self._lock:
            _unview_old_layout(self.db)
            self._viewed = False
            with self._transaction():
                if _has_old_layout(self.db):  # unless another process just did it
                    self.db.execute("DROP INDEX IF EXISTS nodes_seq")
                    self.db.execute("ALTER TABLE nodes RENAME TO nodes_before_3")
                    self._create_tables()
                    kinds = ",".join(_KIND_COLUMNS)
                    self.db.execute(f"INSERT OR IGNORE INTO kinds ({kinds}) SELECT {kinds} FROM nodes_before_3 "
                                    "ORDER BY rowid")
                    kind = " AND ".join(f"kinds.{c} = old.{c}" for c in _KIND_COLUMNS)
                    columns = ",".join(_NODE_COLUMNS + ("kind",))
                    self.db.execute(f"INSERT INTO nodes ({columns}) SELECT {columns} FROM "
                                    f"({_old_layout_nodes('nodes_before_3', f'(SELECT id FROM kinds WHERE {kind})')})"
                                    " ORDER BY rowid")
                    self.db.execute("INSERT INTO node_blobs SELECT id, blobs FROM nodes_before_3")
                    for table in ("nodes_before_3", "edges", "tags"):
                        self.db.execute(f"DROP TABLE {table}")
                    self.db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        self.schema_version = SCHEMA_VERSION

    def _writable(self) -> None:
        """An old index being browsed is upgraded before its first write."""
        if self._viewed:
            self._upgrade()

    def _follow_upgrade(self) -> None:
        """Another process may have upgraded the old index this one browses."""
        if self._viewed and not _has_old_layout(self.db):
            _unview_old_layout(self.db)
            self._viewed = False

    @contextlib.contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE .. COMMIT, rolled back on any error; a full disk is said as such.
        Each counts one more generation of the index (see `_checks_beside`)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("INSERT INTO meta VALUES ('generation', '1') "
                            "ON CONFLICT(key) DO UPDATE SET value = value + 1")
            self.db.execute("COMMIT")
        except BaseException as error:
            if self.db.in_transaction:  # SQLite rolls back by itself when the disk is full
                self.db.execute("ROLLBACK")
            if isinstance(error, sqlite3.OperationalError) and "full" in str(error):
                raise DiskFull(f"disk full: {self._stored()} nodes stored in {self.path.parent}; "
                               "rerun when space is freed (stored nodes are kept)") from None
            if type(error) is sqlite3.DatabaseError:  # e.g. "database disk image is malformed"
                raise DamagedIndex(f"{self.path} is damaged ({error}); "
                                   "`abgraph verify --repair` keeps what is intact") from None
            raise

    def close(self) -> None:
        self.db.close()

    # -- writing ---------------------------------------------------------------
    def write(self, records, results_only=()) -> None:
        """Store finished nodes in one transaction; never downgrade a done node.
        Records whose id is in `results_only` are stored nodes gaining probe results."""
        self._writable()
        columns = _NODE_COLUMNS + ("kind",)
        updates = ",".join(f"{c}=excluded.{c}" for c in columns if c not in ("id", "seq", "tags"))
        upsert = (f"INSERT INTO nodes ({','.join(columns)}) VALUES ({','.join('?' * len(columns))}) "
                  f"ON CONFLICT(id) DO UPDATE SET {updates} "
                  "WHERE nodes.status != 'done'")
        with self._lock, self._transaction():
            seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM nodes").fetchone()[0]
            tags: dict = {}
            kinds: dict = {}
            for record in records:
                tags.setdefault(record.id, []).extend(record.tags)
                if record.id not in results_only:
                    if record.blobs is None:
                        raise ValueError(f"node {record.id[:12]} was read without its blobs (a browsing "
                                         "read): read it with Index.records(blobs=True) to write it")
                    record = self._from_stored_parents(record)
                    seq += 1
                    if not self.db.execute(upsert, _row(record, seq, self._kind(record, kinds))).rowcount:
                        continue  # done already: its results belong to the stored payload
                    self.db.execute("INSERT OR REPLACE INTO node_blobs VALUES (?, ?)",
                                    (record.id, _dumps(record.blobs)))
                self.db.executemany(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
                    [(record.id, name, record.result_versions.get(name, ""), _dumps(value))
                     for name, value in record.results.items()])
            self._merge_tags(tags)

    def _kind(self, record: NodeRecord, known: dict) -> int:
        """The number of the record's kind, added if new (`known`: this write's, by their columns)."""
        values = tuple(_dumps(getattr(record, c)) if c in _JSON_COLUMNS else getattr(record, c)
                       for c in _KIND_COLUMNS)
        kind = known.get(values)
        if kind is None:
            self.db.execute(f"INSERT OR IGNORE INTO kinds ({','.join(_KIND_COLUMNS)}) "
                            f"VALUES ({','.join('?' * len(values))})", values)
            kind = known[values] = self.db.execute(
                f"SELECT id FROM kinds WHERE {' AND '.join(f'{c} = ?' for c in _KIND_COLUMNS)}", values).fetchone()[0]
        return kind

    def _from_stored_parents(self, record: NodeRecord) -> NodeRecord:
        """A child computed from a parent payload that is not the stored one (two runs
        of a nondeterministic recipe at once, the other stored first) is not stored
        as done: the stored graph must show where each payload came from."""
        if record.status != "done":
            return record
        for parent, used in zip(record.parents, record.derived_from):
            row = self.db.execute("SELECT payload FROM nodes WHERE id=? AND status='done'", (parent,)).fetchone()
            if used is not None and (row is None or row[0] != used):
                return replace(record, status="failed", payload=None, blobs=[], results={}, error=(
                    f"computed from payload {str(used)[:12]} of parent {parent}, but another run stored "
                    "that parent first with another payload (a nondeterministic recipe run twice at "
                    "once); rerun to compute it from the stored parent"))
        return record

    def _stored(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM nodes WHERE status='done'").fetchone()[0]

    def add_tags(self, pairs) -> None:
        """Tags are labels, not identity: a stored node gains the tags of a new run
        (a node not stored yet gets them with its record)."""
        wanted: dict = {}
        for node_id, tag in pairs:
            wanted.setdefault(node_id, []).append(tag)
        self._writable()
        with self._lock, self._transaction():
            self._merge_tags(wanted)

    def _merge_tags(self, wanted: dict) -> None:
        """Append each stored node's new tags (id -> tags), in order, once each."""
        changed = []
        for node_id, text in self.db.execute("SELECT id, tags FROM nodes WHERE id IN (SELECT value FROM json_each(?))",
                                             (json.dumps(list(wanted)),)):
            tags = _loads(text, node_id, "tags", self.path)
            new = [tag for tag in dict.fromkeys(wanted[node_id]) if tag not in tags]
            if new:
                changed.append((json.dumps(tags + new), node_id))
        self.db.executemany("UPDATE nodes SET tags=? WHERE id=?", changed)

    # -- reading ---------------------------------------------------------------
    def statuses(self) -> dict[str, tuple[str, str | None]]:
        """id -> (status, payload digest), for planning."""
        return {row[0]: (row[1], row[2]) for row in
                self._query("SELECT id, status, payload FROM nodes")}

    def mark_damaged(self, reasons: dict) -> None:
        """Done nodes whose blobs are missing or corrupted (id -> why): the next
        run recomputes them and may replace their record."""
        self._writable()
        with self._lock, self._transaction():
            self.db.executemany("UPDATE nodes SET status='damaged', error=? WHERE id=? AND status='done'",
                                [(why, node_id) for node_id, why in reasons.items()])

    def _query(self, sql, parameters=()):
        """Rows of `sql`; a table a crafted or damaged index lacks is said as such."""
        self._follow_upgrade()
        try:
            return self.db.execute(sql, parameters).fetchall()
        except sqlite3.DatabaseError as error:
            raise DamagedIndex(f"{self.path} is damaged ({error}); "
                               "`abgraph verify --repair` keeps what is intact") from None

    def result_versions(self) -> dict[str, dict[str, str]]:
        versions: dict[str, dict[str, str]] = {}
        for node, name, version in self._query("SELECT node, name, version FROM results"):
            versions.setdefault(node, {})[name] = version
        return versions

    def records(self, ids=None, blobs: bool = True) -> list[NodeRecord]:
        """All records (or those in `ids`), in the order they were written. Equal
        JSON values (a sweep's repeated properties) are decoded once and shared:
        records read back are for reading. `blobs=False` leaves every `blobs`
        None: browsing never needs the digests. A row abgraph never writes (a
        crafted or damaged index) raises `DamagedIndex`."""
        with collector_paused(), self._lock:
            # one read transaction: nodes and results from one snapshot
            self.db.execute("BEGIN")
            try:
                self._follow_upgrade()
                return self._read_records(ids, blobs)
            finally:
                self.db.execute("COMMIT")

    def _read_records(self, ids, blobs=True) -> list[NodeRecord]:
        wanted = set(ids) if ids is not None else None
        results: dict[str, dict] = {}
        versions: dict[str, dict] = {}
        for node, name, version, value in self._query("SELECT node, name, version, value FROM results"):
            results.setdefault(node, {})[name] = _loads(value, node, f"result {name!r}", self.path)
            versions.setdefault(node, {})[name] = version
        return (self._read_fast(wanted, results, versions, blobs)
                or self._read_checked(wanted, results, versions, blobs))

    def _read_fast(self, wanted, results, versions, blobs=True) -> list[NodeRecord] | None:
        """Every row at C speed: SQLite checks the shapes of all rows in one query
        and gives every row's metrics in one JSON text, in a thread while the rows
        are read; equal JSON texts (a sweep's properties and tags) are decoded
        once. None when a row is not as abgraph writes it: `_read_checked` then
        names it."""
        try:
            with ThreadPoolExecutor(1) as pool:
                beside = None if self._viewed else pool.submit(self._checks_beside, blobs)
                generation = self.db.execute(_GENERATION).fetchone()
                kinds = self.db.execute(_KINDS).fetchall()
                # table order (no sort): a run writes with rising seq, checked below
                rows = self.db.execute(f"{_FAST_ROWS[blobs]} ORDER BY nodes.rowid").fetchall()
            seen, metrics = beside.result() if beside else (None, None)
            if beside is None or seen != generation:  # a write committed between the two reads
                metrics = self._checks(self.db, blobs)
            if metrics is None:
                return None
            metrics = json.loads(metrics)
        except (sqlite3.DatabaseError, ValueError):
            return None
        if set(map(type, metrics)) - {dict}:
            return None
        if wanted is not None:
            keep = [row[0] in wanted for row in rows]
            rows, metrics = list(itertools.compress(rows, keep)), list(itertools.compress(metrics, keep))
        maps, lists = _SharedJSON(dict), _SharedJSON(list)  # one per type: '{}' is not '[]'
        kinds = {number: (recipe, maps[recipe_properties], recipe_version, maps[properties], state_class,
                          lists[attributes], maps[environment])
                 for number, recipe, recipe_properties, recipe_version, properties, state_class, attributes,
                 environment in kinds if type(recipe) is type(recipe_version) is type(state_class) is str}
        records = []
        try:
            for row, measured in zip(rows, metrics):
                node, seq, status, error, started, finished, duration, payload, parents, tags, kind, digests = row
                recipe, recipe_properties, recipe_version, properties, state_class, attributes, environment = \
                    kinds[kind]
                records.append(NodeRecord(
                    node, parents.split(), recipe, recipe_properties, recipe_version, properties,
                    state_class, lists[tags], status, error, started, finished, duration, payload, attributes,
                    None if digests is None else json.loads(digests) if digests != "[]" else [],
                    measured, results.get(node, {}), versions.get(node, {}), environment, seq, ()))
        except KeyError:  # a kind that is missing or not as abgraph writes it
            return None
        if maps.odd or lists.odd or not _hex_only([r.payload for r in records if r.payload is not None]):
            return None
        seqs = [record.seq for record in records]
        if not all(map(operator.lt, seqs, seqs[1:])):  # rows written out of order (a repaired index)
            records.sort(key=lambda record: (record.seq, record.id))
        return records

    @staticmethod
    def _checks(db, blobs: bool) -> str | None:
        """Every row's metrics as one JSON text, or None if a row is not as abgraph writes it."""
        if db.execute(_ODD_ROW[blobs]).fetchone() is not None:
            return None
        return db.execute(_ALL_METRICS).fetchone()[0]

    def _checks_beside(self, blobs: bool) -> tuple:
        """`_checks` on a connection of its own (meant for a thread: SQLite releases
        the GIL while it scans, as the rows are read), with the index's generation
        it read at: the same as the reader's, or no write came in between."""
        db = self._connect()
        try:
            db.execute("BEGIN")
            return db.execute(_GENERATION).fetchone(), self._checks(db, blobs)
        finally:
            db.close()

    def _read_checked(self, wanted, results, versions, blobs=True) -> list[NodeRecord]:
        """Row by row, each column checked in Python: slow, and says which row is odd."""
        rows = self._query(f"{_ROWS[blobs]} ORDER BY nodes.seq, nodes.id")
        records = []
        decoded: dict = {}  # JSON text -> value: a sweep repeats its properties and environment
        for row in rows:
            if wanted is not None and row[0] not in wanted:
                continue
            values = decode_row(row, self.path, decoded)
            node = values["id"]
            records.append(NodeRecord(**values, results=results.get(node, {}),
                                      result_versions=versions.get(node, {})))
        return records

    def blobs_of(self, node_id) -> list[str]:
        """A node's blob digests, its row checked (browsing reads records without them)."""
        rows = self._query(f"{_ROWS[True]} WHERE nodes.id=?", (node_id,))
        if not rows:
            raise KeyError(f"no node {node_id} in {self.path}")
        return decode_row(rows[0], self.path)["blobs"]

    def meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))


def _set_wal(db, patience: float = 60.0) -> None:
    """WAL mode; two processes creating one index at once may find it locked
    (SQLite does not wait on a busy lock for a journal-mode change): retry."""
    deadline = time.monotonic() + patience
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _loads(text, node, column, path):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise DamagedIndex(f"{path}: node {str(node)[:12]} has {column} {str(text)[:40]!r}, "
                           "which is not JSON; `abgraph verify --repair` keeps what is intact") from None


def decode_row(row, path, decoded=None) -> dict:
    """A row of `_RECORD_COLUMNS` as NodeRecord fields, every column of the shape
    abgraph writes (blobs None: read without them); `decoded` (JSON text -> value)
    shares the values of equal texts."""
    from .objects import DIGEST
    values = dict(zip(_RECORD_COLUMNS, row))
    node = values["id"]
    decoded = {} if decoded is None else decoded

    def refuse(column, expected):
        return DamagedIndex(f"{path}: node {str(node)[:12]} has {column} = {str(values[column])[:60]!r}, "
                            f"not {expected}; the index is damaged or crafted: "
                            "`abgraph verify --repair` keeps the intact nodes")
    if not isinstance(node, str) or not node:
        raise refuse("id", "a node id")
    for column in _JSON_COLUMNS + (("blobs",) if values["blobs"] is not None else ()):
        text = values[column]
        value = decoded.get(text) if isinstance(text, str) else None
        if value is None:
            value = _loads(text, node, column, path)
            if isinstance(text, str):
                decoded[text] = value
        values[column] = value
    for column in _DICT_COLUMNS:
        if not isinstance(values[column], dict):
            raise refuse(column, "a JSON object")
    for column in ("attributes", "tags"):
        if not (isinstance(values[column], list) and all(isinstance(a, str) for a in values[column])):
            raise refuse(column, "a list of names")
    if not isinstance(values["parents"], str) or node in values["parents"].split():
        raise refuse("parents", "the ids of other nodes")
    values["parents"] = values["parents"].split()
    if values["blobs"] is not None and not (isinstance(values["blobs"], list) and all(
            isinstance(b, str) and DIGEST.fullmatch(b) for b in values["blobs"])):
        raise refuse("blobs", "a list of blob digests")
    if values["payload"] is not None and not (isinstance(values["payload"], str)
                                              and DIGEST.fullmatch(values["payload"])):
        raise refuse("payload", "a blob digest")
    if values["status"] not in STATUSES:
        raise refuse("status", f"one of {', '.join(STATUSES)}")
    for column in ("recipe", "recipe_version", "state_class"):
        if not isinstance(values[column], str):
            raise refuse(column, "a string")
    for column in ("started", "finished", "duration"):
        if values[column] is not None and not isinstance(values[column], (int, float)):
            raise refuse(column, "a number")
    return values


def _row(record: NodeRecord, seq: int, kind: int) -> list:
    """A record as a `nodes` row (its kind is in `kinds`, its blobs in `node_blobs`)."""
    values = dict(record.fields(), seq=seq, kind=kind, parents=" ".join(record.parents),
                  tags=list(dict.fromkeys(record.tags)))
    if values["parents"].split() != list(record.parents):
        raise ValueError(f"node {record.id[:12]} has a parent id that is empty or holds a space: "
                         f"{record.parents!r}")
    return [_dumps(values[c]) if c in _JSON_COLUMNS else values[c] for c in _NODE_COLUMNS + ("kind",)]
