"""Content-addressed, immutable blobs: one file per digest under `objects/`."""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path


class BlobError(RuntimeError):
    """A blob is missing or does not match its digest."""


def blob_digest(data) -> str:
    return hashlib.sha256(data).hexdigest()


class ObjectStore:
    """Blobs keyed by the sha256 of their bytes.

    Subclass and override `_write`, `_read`, `exists`, `digests` and `delete` for
    another medium; the policy (immutability, atomic writes, checks) lives here.
    """

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._present: set[str] = set()
        self._folders: set[str] = set()

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:]

    def put(self, data, digest: str | None = None) -> str:
        """Store `data` once; a blob that exists is never rewritten."""
        digest = digest or blob_digest(data)
        if digest not in self._present:
            if not self.exists(digest):
                if digest[:2] not in self._folders:
                    self.path(digest).parent.mkdir(exist_ok=True)
                    self._folders.add(digest[:2])
                self._write(self.path(digest), data)
            self._present.add(digest)
        return digest

    def get(self, digest: str, size: int | None = None, verify: bool = False) -> bytearray:
        try:
            data = self._read(self.path(digest))
        except FileNotFoundError:
            raise BlobError(f"blob {digest} is missing from {self.root}; "
                            "run `abgraph verify` on the experiment") from None
        if (size is not None and len(data) != size) or (verify and blob_digest(data) != digest):
            raise BlobError(f"blob {digest} in {self.root} is corrupted "
                            f"({len(data)} bytes); run `abgraph verify` on the experiment")
        return data

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()

    def digests(self):
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir() and len(sub.name) == 2:
                for blob in sorted(sub.iterdir()):
                    if not blob.name.startswith(".tmp"):
                        yield sub.name + blob.name

    def delete(self, digest: str) -> int:
        path = self.path(digest)
        size = path.stat().st_size
        path.unlink()
        self._present.discard(digest)
        return size

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    @staticmethod
    def _write(path: Path, data) -> None:
        """Write to a temporary name in the same folder, then rename: readers see
        the whole blob or none of it, whatever kills the writer."""
        temporary = path.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    @staticmethod
    def _read(path: Path) -> bytearray:
        with open(path, "rb") as handle:
            data = bytearray(os.fstat(handle.fileno()).st_size)
            handle.readinto(data)
        return data
