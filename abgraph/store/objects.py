"""Content-addressed, immutable blobs: one file per digest under `objects/`."""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path


class BlobError(RuntimeError):
    """A blob is missing or does not match its digest."""


class PayloadError(RuntimeError):
    """A payload cannot be written or read back (here, so that browsing an
    index never imports torch through the payload module)."""


class BlobLocationError(ValueError):
    """A remote location for blobs cannot be reached, read or written."""


# fsspec protocols whose writes are whole-object PUTs
OBJECT_STORE_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}


FANOUT = 1  # hex digits naming a blob's folder: 16 folders


def blob_digest(data) -> str:
    return hashlib.sha256(data).hexdigest()


def _fanout(names) -> int:
    """A store written before index schema 2 keeps its 256 two-digit folders; a new
    one gets 16, which a small experiment creates in a few milliseconds instead of
    the 256 directory creations (each a journal write) of the old layout."""
    return 2 if any(len(name) == 2 and not name.startswith(".") for name in names) else FANOUT


class ObjectStore:
    """Blobs keyed by the sha256 of their bytes, in a local (or shared) folder.

    The policy (immutability, one write per blob, checks on read) lives here; a
    medium overrides the primitives `_write`, `_read`, `exists`, `digests`,
    `delete` and `size`, all keyed by digest (see `FsspecObjectStore`).
    """

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fanout = _fanout(os.listdir(self.root))
        self._present: set[str] = set()
        self._folders: set[str] = set()

    @property
    def location(self) -> str:
        """What another process (a worker) passes to `open_store` to reach these blobs."""
        return str(self.root)

    def put(self, data, digest: str | None = None) -> str:
        """Store `data` once; a blob that exists is never rewritten."""
        digest = digest or blob_digest(data)
        if digest not in self._present:
            if not self.exists(digest):
                self._write(digest, data)
            self._present.add(digest)
        return digest

    def forget(self) -> None:
        """Check again before skipping a write: a store kept open across runs may
        have lost blobs to `abgraph gc` in between."""
        self._present.clear()

    def get(self, digest: str, size: int | None = None, verify: bool = False) -> bytearray:
        try:
            data = self._read(digest)
        except FileNotFoundError:
            raise BlobError(f"blob {digest} is missing from {self.location}; "
                            "run `abgraph verify` on the experiment") from None
        if (size is not None and len(data) != size) or (verify and blob_digest(data) != digest):
            raise BlobError(f"blob {digest} in {self.location} is corrupted "
                            f"({len(data)} bytes); run `abgraph verify` on the experiment")
        return data

    def _folder(self, digest: str) -> str:
        return digest[:self.fanout]

    # -- the primitives of a medium ----------------------------------------------
    def path(self, digest: str) -> Path:
        return self.root / self._folder(digest) / digest[self.fanout:]

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()

    def digests(self):
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir() and len(sub.name) == self.fanout:
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

    def remove_temporary(self) -> None:
        """Delete what a killed writer left half-written (never a blob)."""
        for temporary in self.root.glob("*/.tmp-*"):
            temporary.unlink(missing_ok=True)

    def _write(self, digest: str, data) -> None:
        """Write to a temporary name in the same folder, then rename: readers see
        the whole blob or none of it, whatever kills the writer."""
        path = self.path(digest)
        if self._folder(digest) not in self._folders:
            path.parent.mkdir(exist_ok=True)
            self._folders.add(self._folder(digest))
        temporary = path.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def _read(self, digest: str) -> bytearray:
        with open(self.path(digest), "rb") as handle:
            data = bytearray(os.fstat(handle.fileno()).st_size)
            handle.readinto(data)
        return data


class FsspecObjectStore(ObjectStore):
    """Blobs behind an fsspec URL (``s3://bucket/exp/objects``, ``gs://…``,
    ``file:///shared/…``), for clusters whose nodes share no filesystem.
    Needs `fsspec` and the protocol's package (s3fs, gcsfs…).

    Endpoint and credentials come from `storage_options` (passed to fsspec) or
    from the usual configuration (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``…,
    fsspec's config). The location is checked here, by listing it and writing
    a probe, so a wrong endpoint, a missing bucket or bad credentials fail when
    the experiment is opened, not in the middle of a run.
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        try:
            import fsspec
        except ImportError as error:
            raise ImportError(f"{url}: remote object stores need fsspec (pip install fsspec)") from error
        self.url, self.storage_options = url, dict(storage_options or {})
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **self.storage_options)
        except ImportError as error:
            raise ImportError(f"{url}: {error} (for s3:// URLs: pip install 'abgraph[s3]')") from None
        self.root = root.rstrip("/")
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        # an object store's PUT is atomic (a reader sees the whole object or none), and its
        # "rename" is a copy: upload in place there; on filesystems, temporary name and rename
        self.atomic_put = bool(protocols & OBJECT_STORE_PROTOCOLS)
        names = self._check_reachable()
        self.fanout = _fanout(names)
        self._present, self._folders = set(), set()

    def _check_reachable(self) -> list:
        """List the location and write (then delete) a probe; return its names."""
        try:
            if self.atomic_put:
                bucket = self.root.split("/", 1)[0]
                try:
                    self.fs.info(bucket)
                except FileNotFoundError:
                    raise FileNotFoundError(f"bucket {bucket!r} does not exist (create it first)") from None
            else:
                self.fs.makedirs(self.root, exist_ok=True)
            try:
                names = [key.rstrip("/").rsplit("/", 1)[-1] for key in self.fs.ls(self.root, detail=False)]
            except FileNotFoundError:  # nothing stored yet (on S3, a prefix exists only while keys do)
                names = []
            probe = f"{self.root}/.tmp-probe-{uuid.uuid4().hex}"
            self.fs.pipe_file(probe, b"abgraph")
            self.fs.rm_file(probe)
            return names
        except Exception as error:
            self.fs.invalidate_cache()
            reason = f"{type(error).__name__}: {error}"
            if isinstance(error, PermissionError) or "Forbidden" in reason or "AccessDenied" in reason:
                reason += " (check the credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or storage_options)"
            elif not isinstance(error, FileNotFoundError):
                reason += " (check the endpoint: AWS_ENDPOINT_URL or storage_options={'endpoint_url': ...})"
            raise BlobLocationError(f"cannot keep blobs in {self.url}: {reason}") from error

    @property
    def location(self) -> str:
        return self.url

    def path(self, digest: str) -> str:
        return f"{self.root}/{self._folder(digest)}/{digest[self.fanout:]}"

    def exists(self, digest: str) -> bool:
        return self.fs.exists(self.path(digest))

    def digests(self):
        prefix = len(self.root) + 1
        for key in sorted(self.fs.find(self.root)):
            name = key[prefix:]
            cut = self.fanout
            if len(name) > cut + 1 and name[cut] == "/" and not name[cut + 1:].startswith(".tmp"):
                yield name[:cut] + name[cut + 1:]

    def delete(self, digest: str) -> int:
        size = self.size(digest)
        self.fs.rm_file(self.path(digest))
        self._present.discard(digest)
        return size

    def size(self, digest: str) -> int:
        return self.fs.size(self.path(digest))

    def remove_temporary(self) -> None:
        for key in self.fs.find(self.root):
            if "/.tmp-" in key:
                self.fs.rm_file(key)

    def _write(self, digest: str, data) -> None:
        """Readers see the whole blob or none of it: object stores publish a PUT
        only when it is complete; elsewhere, upload under a temporary key and move."""
        if self.atomic_put:
            self.fs.pipe_file(self.path(digest), bytes(data))
            return
        folder = f"{self.root}/{self._folder(digest)}"
        if self._folder(digest) not in self._folders:
            self.fs.makedirs(folder, exist_ok=True)
            self._folders.add(self._folder(digest))
        temporary = f"{folder}/.tmp-{os.getpid()}-{uuid.uuid4().hex}"
        self.fs.pipe_file(temporary, bytes(data))
        self.fs.mv(temporary, self.path(digest))

    def _read(self, digest: str) -> bytearray:
        return bytearray(self.fs.cat_file(self.path(digest)))


def open_store(location, storage_options: dict | None = None) -> ObjectStore:
    """An object store from a folder path or an fsspec URL (with fsspec's
    `storage_options`: endpoint, credentials…)."""
    location = str(location)
    if "://" in location:
        return FsspecObjectStore(location, storage_options)
    if storage_options:
        raise ValueError(f"storage_options are for fsspec URLs, and {location} is a folder")
    return ObjectStore(location)
