"""Where snapshots go: a local folder or S3, behind one small interface.

Publication (publish.py) only needs: upload a file, put small bytes, read with a version token,
write only if the version is unchanged (so latest.json never moves backwards), list and delete.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from exports_pipeline.core.errors import PublicationError


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: datetime


class Destination(ABC):
    @abstractmethod
    def location(self, key: str) -> str:
        """Where a reader finds the key (a path or an s3:// URL); never a secret."""

    @abstractmethod
    def upload_file(self, key: str, path: Path, content_type: str) -> int:
        """Store a local file under key; returns the stored object's size."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """The object's bytes and a version token, or (None, None) when absent."""

    @abstractmethod
    def write_if_version(self, key: str, data: bytes, version: str | None, content_type: str) -> bool:
        """Write only if the object still has this version (None: only if absent). False if it changed."""

    @abstractmethod
    def list(self, prefix: str) -> list[StoredObject]: ...

    @abstractmethod
    def delete(self, keys: list[str]) -> None: ...


class LocalDestination(Destination):
    """A folder on disk: each object is written to a temporary name and renamed into place."""

    def __init__(self, base: str | os.PathLike):
        self.base = Path(base).expanduser().resolve()

    def _path(self, key: str) -> Path:
        path = (self.base / key).resolve()
        if self.base not in path.parents:
            raise PublicationError(f"key {key!r} escapes the destination folder")
        return path

    def location(self, key: str) -> str:
        return str(self._path(key))

    def _replace_into(self, key: str, write) -> Path:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    write(handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise PublicationError(f"cannot write {target}: {exc.strerror or exc}") from None
        return target

    def upload_file(self, key: str, path: Path, content_type: str) -> int:
        with open(path, "rb") as source:
            return self._replace_into(key, lambda handle: shutil.copyfileobj(source, handle, 1 << 20)).stat().st_size

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._replace_into(key, lambda handle: handle.write(data))

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, None
        return data, str(path.stat().st_mtime_ns) + ":" + str(len(data))

    def write_if_version(self, key: str, data: bytes, version: str | None, content_type: str) -> bool:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # The lock makes compare-and-swap atomic between processes on this machine.
        with open(target.parent / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.read_versioned(key)[1] != version:
                return False
            self.put_bytes(key, data, content_type)
            return True

    def list(self, prefix: str) -> list[StoredObject]:
        root = self._path(prefix) if prefix else self.base
        if not root.exists():
            return []
        found = []
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.name != ".lock":
                stat = path.stat()
                found.append(StoredObject(path.relative_to(self.base).as_posix(), stat.st_size,
                                          datetime.fromtimestamp(stat.st_mtime, timezone.utc)))
        return found

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)


def open_destination(url: str) -> Destination:
    """s3://bucket/prefix or a local folder."""
    if url.startswith("s3://"):
        raise PublicationError("s3:// destinations are not supported yet")
    return LocalDestination(url)
