"""The index: one SQLite file (WAL) with a slim record per node.

Only the process that called `run()` writes it; workers hand records back. A
record already `done` is never replaced by a later failure, so two runs racing on
one directory cannot lose finished work.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..bulk import collector_paused

# 2: blobs in 16 folders (objects/a/bcdef...); 1: in 256 (objects/ab/cdef...), still read.
SCHEMA_VERSION = 2
INDEX_NAME = "abgraph.sqlite"


class NotAnExperiment(RuntimeError):
    """The folder is not an experiment, or one this version cannot read."""


@dataclass
class NodeRecord:
    """What the index knows of a node: everything but the payload itself."""

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
    blobs: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    result_versions: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    seq: int = 0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, recipe TEXT NOT NULL,
    recipe_properties TEXT NOT NULL, recipe_version TEXT NOT NULL,
    properties TEXT NOT NULL, state_class TEXT NOT NULL, status TEXT NOT NULL,
    error TEXT, started REAL, finished REAL, duration REAL, payload TEXT,
    attributes TEXT NOT NULL, blobs TEXT NOT NULL, metrics TEXT NOT NULL,
    environment TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS nodes_seq ON nodes (seq);
CREATE TABLE IF NOT EXISTS edges (
    child TEXT NOT NULL, position INTEGER NOT NULL, parent TEXT NOT NULL,
    PRIMARY KEY (child, position));
CREATE TABLE IF NOT EXISTS tags (node TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (node, tag));
CREATE TABLE IF NOT EXISTS results (
    node TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (node, name));
"""

_JSON_COLUMNS = ("recipe_properties", "properties", "attributes", "blobs", "metrics", "environment")
_NODE_COLUMNS = ("id", "seq", "recipe", "recipe_properties", "recipe_version", "properties",
                 "state_class", "status", "error", "started", "finished", "duration", "payload",
                 "attributes", "blobs", "metrics", "environment")


def _dumps(value) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


class Index:
    def __init__(self, directory, create: bool = False):
        self.path = Path(directory) / INDEX_NAME
        if not create and not self.path.exists():
            raise NotAnExperiment(f"{directory} is not an abgraph experiment (no {INDEX_NAME} in it)")
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                  check_same_thread=False)
        try:
            self.db.execute("PRAGMA busy_timeout=60000")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as error:
            self.db.close()
            raise NotAnExperiment(f"{self.path} is not an abgraph index: {error}") from None
        self._check_schema(create)

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
            with self._lock:
                self.db.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                (str(SCHEMA_VERSION),))
                self.db.execute("COMMIT")
            self.schema_version = SCHEMA_VERSION
            return
        self.schema_version = int(row[0])
        if self.schema_version > SCHEMA_VERSION:
            from .. import __version__
            raise NotAnExperiment(
                f"{self.path} was written with index schema {row[0]}; abgraph {__version__} "
                f"reads schema {SCHEMA_VERSION} and older: upgrade abgraph to read it")

    def close(self) -> None:
        self.db.close()

    # -- writing ---------------------------------------------------------------
    def write(self, records, results_only=()) -> None:
        """Store finished nodes in one transaction; never downgrade a done node.
        Records whose id is in `results_only` are stored nodes gaining probe results."""
        placeholders = ",".join("?" * len(_NODE_COLUMNS))
        updates = ",".join(f"{c}=excluded.{c}" for c in _NODE_COLUMNS if c not in ("id", "seq"))
        upsert = (f"INSERT INTO nodes ({','.join(_NODE_COLUMNS)}) VALUES ({placeholders}) "
                  f"ON CONFLICT(id) DO UPDATE SET {updates} "
                  "WHERE nodes.status != 'done' OR excluded.status = 'done'")
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM nodes").fetchone()[0]
                for record in records:
                    if record.id not in results_only:
                        seq += 1
                        values = dict(vars(record), seq=seq)  # asdict() deep-copies: slow
                        row = [(_dumps(values[c]) if c in _JSON_COLUMNS else values[c]) for c in _NODE_COLUMNS]
                        if self.db.execute(upsert, row).rowcount:
                            self.db.executemany("INSERT OR REPLACE INTO edges VALUES (?, ?, ?)",
                                                [(record.id, i, p) for i, p in enumerate(record.parents)])
                    self.db.executemany("INSERT OR IGNORE INTO tags VALUES (?, ?)",
                                        [(record.id, t) for t in record.tags])
                    self.db.executemany(
                        "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
                        [(record.id, name, record.result_versions.get(name, ""), _dumps(value))
                         for name, value in record.results.items()])
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def add_tags(self, pairs) -> None:
        """Tags are labels, not identity: a cached node gains the tags of a new run."""
        with self._lock:
            self.db.executemany("INSERT OR IGNORE INTO tags VALUES (?, ?)", list(pairs))

    # -- reading ---------------------------------------------------------------
    def statuses(self) -> dict[str, tuple[str, str | None]]:
        """id -> (status, payload digest), for planning."""
        return {row[0]: (row[1], row[2]) for row in
                self.db.execute("SELECT id, status, payload FROM nodes")}

    def result_versions(self) -> dict[str, dict[str, str]]:
        versions: dict[str, dict[str, str]] = {}
        for node, name, version in self.db.execute("SELECT node, name, version FROM results"):
            versions.setdefault(node, {})[name] = version
        return versions

    def records(self, ids=None) -> list[NodeRecord]:
        """All records (or those in `ids`), in the order they were written. Equal
        JSON values (a sweep's repeated properties) are decoded once and shared:
        records read back are for reading."""
        with collector_paused():
            return self._read_records(ids)

    def _read_records(self, ids) -> list[NodeRecord]:
        query = f"SELECT {','.join(_NODE_COLUMNS)} FROM nodes"
        rows = self.db.execute(query + " ORDER BY seq").fetchall()
        wanted = set(ids) if ids is not None else None
        parents: dict[str, list] = {}
        for child, _, parent in self.db.execute("SELECT * FROM edges ORDER BY child, position"):
            parents.setdefault(child, []).append(parent)
        tags: dict[str, list] = {}
        for node, tag in self.db.execute("SELECT node, tag FROM tags ORDER BY rowid"):
            tags.setdefault(node, []).append(tag)
        results: dict[str, dict] = {}
        versions: dict[str, dict] = {}
        for node, name, version, value in self.db.execute("SELECT * FROM results"):
            results.setdefault(node, {})[name] = json.loads(value)
            versions.setdefault(node, {})[name] = version
        records = []
        decoded: dict = {}  # JSON text -> value: a sweep repeats its properties and environment
        json_positions = [i for i, column in enumerate(_NODE_COLUMNS) if column in _JSON_COLUMNS]
        for row in rows:
            if wanted is not None and row[0] not in wanted:
                continue
            row = list(row)
            for i in json_positions:
                text = row[i]
                value = decoded.get(text)
                if value is None:
                    value = decoded[text] = json.loads(text)
                row[i] = value
            node = row[0]
            record = NodeRecord(node, parents.get(node, []), tags=tags.get(node, []),
                                results=results.get(node, {}), result_versions=versions.get(node, {}))
            record.__dict__.update(zip(_NODE_COLUMNS, row))
            records.append(record)
        return records

    def meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
