"""Where nodes live: the SQLite index (slim records) and the object store (payload blobs)."""
from .index import INDEX_NAME, SCHEMA_VERSION, DamagedIndex, Index, NodeRecord, NotAnExperiment
from .objects import (FANOUT, BlobError, BlobLocationError, DiskFull, FsspecObjectStore, ObjectStore,
                      PayloadError, open_store)

OBJECTS_NAME = "objects"

__all__ = ["FANOUT", "DamagedIndex", "INDEX_NAME", "OBJECTS_NAME", "SCHEMA_VERSION", "BlobError",
           "BlobLocationError", "DiskFull", "Index", "NodeRecord", "FsspecObjectStore", "NotAnExperiment",
           "ObjectStore", "PayloadError", "open_store"]
