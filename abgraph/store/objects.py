"""Content-addressed, immutable blobs: one file per digest under `objects/`."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import uuid
from pathlib import Path


class BlobError(RuntimeError):
    """A blob is missing, does not match its digest, or its name is not a digest."""


class DiskFull(OSError):
    """No space left where the experiment writes; what is stored is kept."""

    def __init__(self, message):
        super().__init__(errno.ENOSPC, message)

    def __str__(self):
        return self.args[1]


class PayloadError(RuntimeError):
    """A payload cannot be written or read back (here, so that browsing an
    index never imports torch through the payload module)."""


class BlobLocationError(ValueError):
    """A remote location for blobs cannot be reached, read or written."""


# fsspec protocols whose writes are whole-object PUTs
OBJECT_STORE_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}


FANOUT = 1  # hex digits naming a blob's folder: 16 folders
DIGEST = re.compile(r"[0-9a-f]{64}")
MARKER_NAME = ".abgraph-objects"      # written by abgraph in every location it created
USERS_NAME = ".abgraph-experiments"   # one file per experiment that keeps blobs here
_CHUNK = 1 << 20


def blob_digest(data) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest) -> str:
    """Nothing read from an index is trusted as a path: a digest is 64 hex digits."""
    if not (isinstance(digest, str) and DIGEST.fullmatch(digest)):
        raise BlobError(f"{str(digest)[:80]!r} is not a blob digest (64 hex digits): "
                        "the index is damaged or crafted; run `abgraph verify --repair`")
    return digest


def _fanout(names) -> int:
    """A store written before index schema 2 keeps its 256 two-digit folders; a new
    one gets 16, which a small experiment creates in a few milliseconds instead of
    the 256 directory creations (each a journal write) of the old layout."""
    return 2 if any(len(name) == 2 and not name.startswith(".") for name in names) else FANOUT


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and DIGEST.fullmatch(name + "0" * (64 - length)) is not None


def _user_key(experiment: str) -> str:
    return hashlib.sha256(experiment.encode()).hexdigest()[:16]


class ObjectStore:
    """Blobs keyed by the sha256 of their bytes, in a local (or shared) folder.

    The policy (immutability, one write per blob, checks on read, which files are
    blobs) lives here; a medium overrides the primitives `_write`, `_read`,
    `_listing`, `exists`, `delete`, `size`, `checksum` and the small named files
    (`_get_file`, `_put_file`, `_files`, `_remove_file`), all keyed by digest or name.

    Browsing opens a store with `create=False`: nothing is created, not even the folder.
    """

    def __init__(self, root, create: bool = True):
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.fanout = _fanout(os.listdir(self.root))
        except OSError:  # a store that does not exist (yet): browsing finds no blob in it
            self.fanout = FANOUT
        self._folders: set[str] = set()

    @property
    def location(self) -> str:
        """What another process (a worker) passes to `open_store` to reach these blobs."""
        return str(self.root)

    def put(self, data, digest: str | None = None) -> str:
        """Store `data` once; a blob that exists is never rewritten. Asks the medium
        each time (one stat): a memory of what exists would go stale after a `gc`."""
        digest = digest or blob_digest(data)
        if not self.exists(digest):
            self._write(digest, data)
        return digest

    def forget(self) -> None:
        """Check again before skipping a folder creation: a store kept open across
        runs may have lost folders in between (`put` asks for each blob anyway)."""
        self._folders.clear()

    def get(self, digest: str, size: int | None = None, verify: bool = False) -> bytearray:
        try:
            data = self._read(digest, size)
        except FileNotFoundError:
            raise BlobError(f"blob {digest} is missing from {self.location}; "
                            "run `abgraph verify` on the experiment") from None
        if (size is not None and len(data) != size) or (verify and blob_digest(data) != digest):
            raise self._corrupted(digest, len(data))
        return data

    def _corrupted(self, digest: str, length: int) -> BlobError:
        return BlobError(f"blob {digest} in {self.location} is corrupted ({length} bytes); "
                         "run `abgraph verify` on the experiment")

    def missing(self, digests) -> set:
        """Which of `digests` are not stored (one stat each here; a remote medium
        lists the store once instead of asking blob by blob)."""
        return {digest for digest in digests if not self.exists(digest)}

    def intact(self, digest: str) -> bool:
        """The blob is there and its bytes hash to its name (read in chunks)."""
        try:
            return self.checksum(digest) == digest
        except (OSError, BlobError):
            return False

    def digests(self):
        """Every blob: only names of the blob format in the blob layout."""
        for folder, names in self._listing():
            if _is_hex(folder, self.fanout):
                for name in names:
                    if _is_hex(name, 64 - self.fanout):
                        yield folder + name

    def _folder(self, digest: str) -> str:
        return check_digest(digest)[:self.fanout]

    # -- who may delete here --------------------------------------------------------
    def claim(self, experiment) -> None:
        """Record that `experiment` (a folder) keeps its blobs here; mark the
        location as abgraph's when abgraph created it (or it holds only blobs)."""
        if self._get_file(MARKER_NAME) is None:
            foreign = [name for name in self._top_names()  # hidden names (.DS_Store) gc never touches
                       if not (_is_hex(name, self.fanout) or name.startswith("."))]
            if foreign:
                raise ValueError(f"{self.location} holds files abgraph did not write "
                                 f"({', '.join(sorted(foreign)[:3])}); keep blobs in a new or empty folder")
            self._put_file(MARKER_NAME, b'{"abgraph": "objects"}\n')
        experiment = str(experiment)
        key = _user_key(experiment)
        if self._get_file(f"{USERS_NAME}/{key}") != experiment.encode():
            self._put_file(f"{USERS_NAME}/{key}", experiment.encode())

    def users(self) -> list[str]:
        """The experiments that keep their blobs here."""
        found = []
        for name in self._files(USERS_NAME):
            data = self._get_file(f"{USERS_NAME}/{name}")
            if data is not None:
                found.append(data.decode(errors="replace"))
        return sorted(found)

    def forget_user(self, experiment) -> bool:
        """Drop an experiment (deleted for good) from the users of this location."""
        return self._remove_file(f"{USERS_NAME}/{_user_key(str(experiment))}")

    def unmarked(self) -> str | None:
        """Why this location is not known as abgraph's, or None."""
        if self._get_file(MARKER_NAME) is None:
            return (f"{self.location} was not created by abgraph (no {MARKER_NAME} in it); "
                    "open the experiment once with abgraph.Experiment(folder) if it was")
        return None

    def refusal(self) -> str | None:
        """Why `gc` must not delete here, or None."""
        if self.root.is_symlink():
            return f"{self.location} is a symbolic link"
        return self.unmarked()

    # -- the primitives of a medium ----------------------------------------------
    def path(self, digest: str) -> Path:
        return self.root / self._folder(digest) / digest[self.fanout:]

    def exists(self, digest: str) -> bool:
        return os.path.lexists(self.path(digest))

    def _listing(self):
        """(folder name, [file names]) of real folders and regular files, never
        through a symbolic link."""
        for folder in _scan(self.root, directories=True):
            yield folder, _scan(self.root / folder, directories=False)

    def _top_names(self) -> list:
        try:
            return os.listdir(self.root)
        except FileNotFoundError:
            return []

    def delete(self, digest: str) -> int:
        path = self.path(digest)
        size = path.lstat().st_size
        path.unlink()
        return size

    def size(self, digest: str) -> int:
        return self.path(digest).lstat().st_size

    def checksum(self, digest: str) -> str:
        """sha256 of the blob, streamed: a huge file costs time, never memory."""
        with self._open(digest) as handle:
            hasher = hashlib.sha256()
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                hasher.update(chunk)
        return hasher.hexdigest()

    def remove_temporary(self) -> None:
        """Delete what a killed writer left half-written (never a blob)."""
        for folder, _ in self._listing():
            for name in _scan(self.root / folder, directories=False, prefix=".tmp-"):
                (self.root / folder / name).unlink(missing_ok=True)

    def _open(self, digest: str):
        """The blob's regular file, never through a symbolic link, never a FIFO."""
        fd = os.open(self.path(digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BlobError(f"blob {digest} in {self.location} is not a regular file")
        return os.fdopen(fd, "rb")

    def _write(self, digest: str, data) -> None:
        """Readers see the whole blob or none of it, whatever kills the writer."""
        path = self.path(digest)
        if self._folder(digest) not in self._folders:
            path.parent.mkdir(exist_ok=True)
            self._folders.add(self._folder(digest))
        try:
            write_atomically(path, data)
        except FileNotFoundError:  # the folder was removed since: make it again
            self._folders.discard(self._folder(digest))
            self._write(digest, data)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise DiskFull(f"disk full: cannot write a blob of {len(data)} bytes to {self.location} "
                               f"({error.strerror}); rerun when space is freed") from None
            raise

    def _read(self, digest: str, size: int | None = None) -> bytearray:
        """The blob's bytes; a wrong `size` is found before anything is read."""
        try:
            handle = self._open(digest)
        except OSError as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise BlobError(f"blob {digest} in {self.location} cannot be read: {error}") from None
        with handle:
            length = os.fstat(handle.fileno()).st_size
            if size is not None and length != size:
                raise self._corrupted(digest, length)
            data = bytearray(length)
            handle.readinto(data)
        return data

    # -- small named files: the marker and the users of the location ------------------
    def _get_file(self, name: str) -> bytes | None:
        path = self.root / name
        if not path.is_file() or path.is_symlink():
            return None
        return path.read_bytes()

    def _put_file(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)

    def _files(self, folder: str) -> list:
        if (self.root / folder).is_symlink():
            return []
        return [n for n in _scan(self.root / folder, directories=False) if not n.startswith(".tmp-")]

    def _remove_file(self, name: str) -> bool:
        try:
            (self.root / name).unlink()
            return True
        except FileNotFoundError:
            return False


def _scan(folder: Path, directories: bool, prefix: str | None = None) -> list:
    """Names of the real sub-folders (or regular files) of `folder`, sorted; never
    follows a symbolic link. Hidden names only when `prefix` asks for them."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries
                          if (e.name.startswith(prefix) if prefix else not e.name.startswith("."))
                          and (e.is_dir(follow_symlinks=False) if directories
                               else e.is_file(follow_symlinks=False)))
    except (FileNotFoundError, NotADirectoryError):
        return []


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

    def __init__(self, url: str, storage_options: dict | None = None, create: bool = True):
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
        # browsing (create=False) writes nothing, not even the probe
        names = self._check_reachable() if create else self._top_names()
        self.fanout = _fanout(names)
        self._folders = set()

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

    def refusal(self) -> str | None:
        return self.unmarked()

    def path(self, digest: str) -> str:
        return f"{self.root}/{self._folder(digest)}/{digest[self.fanout:]}"

    def exists(self, digest: str) -> bool:
        return self.fs.exists(self.path(digest))

    def missing(self, digests) -> set:
        return set(digests) - set(self.digests())

    def _listing(self):
        prefix = len(self.root) + 1
        folders: dict = {}
        for key in sorted(self.fs.find(self.root)):
            folder, _, name = key[prefix:].partition("/")
            if name and "/" not in name and not name.startswith("."):
                folders.setdefault(folder, []).append(name)
        return sorted(folders.items())

    def _top_names(self) -> list:
        try:
            return [key.rstrip("/").rsplit("/", 1)[-1] for key in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []

    def delete(self, digest: str) -> int:
        size = self.size(digest)
        self.fs.rm_file(self.path(digest))
        return size

    def size(self, digest: str) -> int:
        return self.fs.size(self.path(digest))

    def checksum(self, digest: str) -> str:
        hasher = hashlib.sha256()
        with self.fs.open(self.path(digest), "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                hasher.update(chunk)
        return hasher.hexdigest()

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

    def _read(self, digest: str, size: int | None = None) -> bytearray:
        if size is not None and self.size(digest) != size:
            raise self._corrupted(digest, self.size(digest))
        return bytearray(self.fs.cat_file(self.path(digest)))

    def _get_file(self, name: str) -> bytes | None:
        try:
            return self.fs.cat_file(f"{self.root}/{name}")
        except (FileNotFoundError, IsADirectoryError):
            return None

    def _put_file(self, name: str, data: bytes) -> None:
        self.fs.makedirs(f"{self.root}/{name}".rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(f"{self.root}/{name}", data)

    def _files(self, folder: str) -> list:
        try:
            keys = self.fs.ls(f"{self.root}/{folder}", detail=False)
        except FileNotFoundError:
            return []
        return sorted(key.rstrip("/").rsplit("/", 1)[-1] for key in keys)

    def _remove_file(self, name: str) -> bool:
        try:
            self.fs.rm_file(f"{self.root}/{name}")
            return True
        except FileNotFoundError:
            return False


def open_store(location, storage_options: dict | None = None, create: bool = True) -> ObjectStore:
    """An object store from a folder path or an fsspec URL (with fsspec's
    `storage_options`: endpoint, credentials…); `create=False` (browsing) creates
    nothing."""
    location = str(location)
    if "://" in location:
        return FsspecObjectStore(location, storage_options, create)
    if storage_options:
        raise ValueError(f"storage_options are for fsspec URLs, and {location} is a folder")
    return ObjectStore(location, create)


def write_atomically(path: Path, data: bytes) -> None:
    """`path` holds the whole of `data` or what it held before, whatever kills the
    writer: a temporary name in the same folder, then a rename over `path`."""
    temporary = path.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
