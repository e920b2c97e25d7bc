"""Where a store lives: a local folder, or any fsspec URL (s3://, gs://, file://, memory://).

A local folder keeps the rename protocol: files are finished under DIR/.tmp and renamed into place. Object
storage has no rename, but one PUT is atomic: a finished file is uploaded once, whole, under its final name, and
only the done marker written after it (with its size and sha256) makes it count, so an object of a killed run is
never trusted and a rerun overwrites it. In-flight files of a remote store are built in a local temporary folder.

Credentials and endpoints come only from the standard places: the environment (AWS_ACCESS_KEY_ID,
AWS_ENDPOINT_URL, ...), the provider's config files (~/.aws), and fsspec's own configuration (FSSPEC_S3_* variables
or ~/.config/fsspec/*.json). A URL carrying credentials is refused, and error messages never repeat a secret.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
import weakref
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from .. import errors
from ..errors import CMTError
from ..files import disk_usage, replace_file

TMP = ".tmp"
SCRATCH = "cmt-upload-"  # + pid: a remote store's in-flight files, in the system's temporary folder
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "FSSPEC_S3_SECRET",
                    "FSSPEC_S3_KEY", "FSSPEC_S3_TOKEN")
PACKAGES = {"s3": "s3fs (pip install 'cmt-pipeline[s3]')", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs",
            "az": "adlfs", "abfs": "adlfs"}


def redact(text: str) -> str:
    """`text` with the values of the credential variables in the environment blanked out."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def clean_stale_scratch() -> None:
    """Remove the upload folders of processes that are gone: a killed generator (SIGKILL) never ran
    clean_scratch, and its folder, named after its pid, would stay forever. A reused pid keeps a folder a little
    longer, never loses a live one's."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH}*-*"):
        pid = folder.name.removeprefix(SCRATCH).split("-", 1)[0]
        if pid.isdigit() and not process_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def first_line(e: BaseException) -> str:
    """errors.first_line, with credentials blanked out (an object store's errors can quote them)."""
    return redact(errors.first_line(e, limit=10_000))


class Location:
    """A store's root; every path given to its methods is a '/'-separated key relative to it."""

    def __init__(self, url):
        self.url = str(url)
        scheme = urlsplit(self.url).scheme if "://" in self.url else ""
        self.local = scheme in ("", "file", "local")
        if self.local:
            self.path = Path(self.url.split("://", 1)[1] if scheme else self.url)
            return
        if "@" in urlsplit(self.url).netloc:
            raise CMTError(f"the {scheme}:// URL holds credentials; remove them from the URL and set them where the "
                           "provider looks (environment variables or its config files)")
        import fsspec

        try:
            # Listings are never cached: other workers change the store while this one runs.
            # A fresh instance: the endpoint and credentials are read from the environment now, not reused.
            self.fs, self.base = fsspec.core.url_to_fs(self.url, use_listings_cache=False, skip_instance_cache=True)
        except ImportError:
            raise CMTError(f"{scheme}:// URLs need the fsspec package {PACKAGES.get(scheme, 'for ' + scheme)}; "
                           "install it, or use a local folder") from None
        except (ValueError, TypeError) as e:
            raise CMTError(f"cannot open {self.url}: {first_line(e)}; use a local folder or a URL fsspec knows "
                           "(s3://, gs://, file://)") from None
        self.base = self.base.rstrip("/")
        self.scratch = None
        if scheme in ("s3", "s3a") and not self.fs.asynchronous:  # connect now, to close it when collected
            with self.errors("connect to"):
                self.fs.connect()
            weakref.finalize(self.fs, close_sync_session, self.fs.loop, self.fs._s3creator)

    @classmethod
    def of(cls, root) -> "Location":
        return root if isinstance(root, Location) else cls(root)

    def __str__(self) -> str:
        return str(self.path) if self.local else self.url

    def name(self, rel: str) -> str:
        """What a user is shown for `rel`: a local path, or the full URL."""
        return str(self.path / rel) if self.local else f"{self.url.rstrip('/')}/{rel}"

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    @contextmanager
    def errors(self, doing: str, rel: str = ""):
        """Storage failures (unreachable endpoint, missing bucket, denied access) as one line, no secrets."""
        try:
            yield
        except (CMTError, FileExistsError):
            raise
        except Exception as e:
            if self.local:
                raise
            raise CMTError(f"cannot {doing} {self.name(rel)}: {first_line(e)}; check the URL, that the bucket exists, "
                           "the endpoint (AWS_ENDPOINT_URL or FSSPEC_S3_ENDPOINT_URL) and the credentials "
                           "(environment or provider config)") from None

    # reading

    def exists(self, rel: str) -> bool:
        if self.local:
            return (self.path / rel).exists()
        with self.errors("read", rel):
            return self.fs.exists(self._path(rel))

    def size(self, rel: str) -> int | None:
        """The size of file `rel`, None when there is none."""
        if self.local:
            p = self.path / rel
            return p.stat().st_size if p.is_file() else None
        with self.errors("read", rel):
            try:
                info = self.fs.info(self._path(rel))
            except FileNotFoundError:
                return None
        return info["size"] if info.get("type") == "file" else None

    def read_bytes(self, rel: str) -> bytes:
        if self.local:
            return (self.path / rel).read_bytes()
        with self.errors("read", rel):
            return self.fs.cat_file(self._path(rel))

    def open(self, rel: str):
        """A binary stream of file `rel` (read lazily from object storage)."""
        if self.local:
            return open(self.path / rel, "rb")
        with self.errors("read", rel):
            return self.fs.open(self._path(rel), "rb")

    def sha256(self, rel: str, chunk: int = 1 << 20) -> str:
        h = hashlib.sha256()
        with self.open(rel) as f, self.errors("read", rel):
            while block := f.read(chunk):
                h.update(block)
        return h.hexdigest()

    def list(self, rel: str) -> list[str]:
        """Names of the entries directly in folder `rel` ([] when there is none)."""
        if self.local:
            d = self.path / rel
            return sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        with self.errors("list", rel):
            try:
                return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._path(rel), detail=False))
            except FileNotFoundError:
                return []

    # writing

    def tmp(self, tag: str) -> Path:
        """A fresh local path for one in-flight write: under DIR/.tmp for a local store (same file system, so
        the rename is atomic), under a private temporary folder of this process for a remote one."""
        if self.local:
            d = self.path / TMP
            for attempt in range(3):
                try:
                    d.mkdir(parents=True, exist_ok=True)
                    break
                except FileExistsError:  # a concurrent clean_temp removed it between mkdir's two checks
                    if attempt == 2:
                        raise
        else:
            if self.scratch is None or not self.scratch.exists():
                clean_stale_scratch()
                self.scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH}{os.getpid()}-"))
            d = self.scratch
        return d / f"{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def put(self, tmp: Path, rel: str) -> None:
        """Publish the finished local file `tmp` as `rel` in one step (rename, or one upload), consuming `tmp`."""
        if self.local:
            (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
            replace_file(tmp, self.path / rel)
            return
        with self.errors("write", rel):
            self.fs.put_file(str(tmp), self._path(rel))
        tmp.unlink()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Replace file `rel` with `data`, all or nothing."""
        tmp = self.tmp(Path(rel).name)
        try:
            tmp.write_bytes(data)
            self.put(tmp, rel)
        finally:
            tmp.unlink(missing_ok=True)

    def create(self, rel: str, data: bytes) -> bool:
        """Write `rel` only if it does not exist, atomically against concurrent creators: True if this call made
        it. Locally a hard link of a finished temporary file (link fails on an existing name); on object storage
        a conditional PUT (If-None-Match: *)."""
        if not self.local:
            with self.errors("write", rel):
                try:
                    self.fs.pipe_file(self._path(rel), data, mode="create")
                    return True
                except FileExistsError:
                    return False
        tmp = self.tmp(Path(rel).name)
        try:
            tmp.write_bytes(data)
            (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(tmp, self.path / rel)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self, rel: str) -> None:
        if self.local:
            (self.path / rel).unlink(missing_ok=True)
            return
        with self.errors("delete", rel):
            try:
                self.fs.rm_file(self._path(rel))
            except FileNotFoundError:
                pass

    def usage(self) -> int:
        """Bytes stored under the root."""
        if self.local:
            return disk_usage(self.path)
        with self.errors("list", ""):
            return int(self.fs.du(self.base))

    def clean_scratch(self) -> None:
        if not self.local and self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def zarr_store(self, rel: str, read_only: bool = True):
        """A zarr v3 store over folder `rel`."""
        import zarr

        if self.local:
            return zarr.storage.LocalStore(self.path / rel, read_only=read_only)
        with self.errors("open", rel):
            store = zarr.storage.FsspecStore.from_url(self.name(rel), read_only=read_only, storage_options={
                "use_listings_cache": False, "skip_instance_cache": True})
        weakref.finalize(store, close_session, store.fs)
        return store


def close_sync_session(loop, creator) -> None:
    """Close a synchronous s3fs file system's client (`creator`, its `_s3creator`) when the file system is collected.
    s3fs's own finalizer waits 0.1 s for the close on fsspec's loop and, on a busy machine, gives up, and aiohttp
    then warns "Unclosed client session" mid-output; this one waits for it. Either may run first: closing twice is
    harmless."""
    from fsspec.asyn import sync

    if not loop.is_running():
        return  # the loop is gone at interpreter exit
    try:
        sync(loop, creator.__aexit__, None, None, None, timeout=60)
    except Exception:  # collected on the loop's own thread (s3fs's finalizer schedules the close there), or exiting
        pass


def close_session(fs) -> None:
    """Close the connections of an asynchronous file system that zarr made for a store (s3fs's way for async use:
    close the client `set_session` returns). Nothing else would: aiohttp then warns "Unclosed client session"
    on stderr when the store is collected, in the middle of a command's output."""
    if not hasattr(fs, "set_session"):
        return

    async def close():
        await (await fs.set_session()).close()

    from zarr.core.sync import sync

    closing = close()
    try:
        sync(closing)
    except Exception:  # the loop is gone at interpreter exit: nothing is left to warn
        closing.close()  # and Python would warn that the coroutine was never awaited
