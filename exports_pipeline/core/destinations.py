"""Where snapshots go: a local folder or S3, behind one small interface.

Publication (publish.py) only needs: upload a file, put small bytes, read with a version token,
write only if the version is unchanged (so latest.json never moves backwards), list and delete.
Links (links.py) and retention (retention.py) use the same interface.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from exports_pipeline.core.errors import (
    ConfigurationError,
    DestinationError,
    DestinationUnavailableError,
    PublicationError,
)

MiB = 1 << 20
MAX_PARTS = 10_000  # S3's limit of parts per multipart upload
SSE_MODES = (None, "AES256", "aws:kms")
# The AWS SDK's variables for an S3-compatible endpoint, in its order of precedence.
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# Answers to a conditional write whose condition no longer holds (412), that raced another
# conditional write (409), or whose If-Match object was deleted meanwhile (404).
CONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"}
# S3's answers that a retry can mend (with botocore's own retries already spent), besides any 5xx.
TRANSIENT_S3_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestLimitExceeded",
    "InternalError",
    "ServiceUnavailable",
}


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection, a timeout, a 5xx or throttling; boto3's failed upload wraps its cause."""
    if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
        return is_transient(exc.__context__)
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or exc.response.get("Error", {}).get("Code") in TRANSIENT_S3_CODES
    return False


LOCK_NAME = ".lock"  # beside latest.json in a local destination: its compare-and-swap lock, not an object


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
    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Objects whose key starts with prefix, in key order (retention groups them as they come)."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None: ...

    def empty_folders(self) -> Iterator[StoredObject]:
        """Folders that hold nothing (size 0, modified when their content last changed), in key order: what a
        local write killed between creating its folder and its first file leaves. An object store has none."""
        return iter(())

    def remove_empty_folder(self, key: str) -> None:  # noqa: B027 (a no-op by default, on purpose)
        """Remove the folder unless something was written to it meanwhile (an object store has no folders)."""

    def link(self, key: str, filename: str, expires_in: int) -> str:
        """Where a user downloads the key; a local file is its own link (S3 presigns a URL)."""
        return self.location(key)


def _partial_path(target: Path) -> Path:
    """A fresh name beside target to write under before renaming into place (retention removes stale ones)."""
    return target.parent / f".partial-{uuid.uuid4().hex}"


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
        """Write through a new temporary file created with mode 0666 less the process umask (not mkstemp's 0600),
        so that manifest.json and latest.json are as readable as the data files."""
        target = self._path(key)
        tmp = _partial_path(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with os.fdopen(fd, "wb") as handle:
                    write(handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise PublicationError(f"cannot write {target}: {exc.strerror or exc}") from None
        return target

    def upload_file(self, key: str, path: Path, content_type: str) -> int:
        """The staged file is immutable: a hard link publishes it without copying its bytes when staging
        and the destination share a file system; otherwise it is copied."""
        target = self._path(key)
        link = _partial_path(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, link)
        except OSError:
            with open(path, "rb") as source:
                return (
                    self._replace_into(key, lambda handle: shutil.copyfileobj(source, handle, 1 << 20)).stat().st_size
                )
        try:
            with open(link, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(link, target)
        except OSError as exc:
            link.unlink(missing_ok=True)
            raise PublicationError(f"cannot write {target}: {exc.strerror or exc}") from None
        return target.stat().st_size

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
        with open(target.parent / LOCK_NAME, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.read_versioned(key)[1] != version:
                return False
            self.put_bytes(key, data, content_type)
            return True

    def list(self, prefix: str) -> Iterator[StoredObject]:
        root = self._path(prefix) if prefix else self.base
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.name != LOCK_NAME:
                stat = path.stat()
                yield StoredObject(
                    path.relative_to(self.base).as_posix(),
                    stat.st_size,
                    datetime.fromtimestamp(stat.st_mtime, UTC),
                )

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            if path.parent != self.base:
                with suppress(OSError):  # a snapshot folder emptied by retention goes too
                    path.parent.rmdir()

    def empty_folders(self) -> Iterator[StoredObject]:
        for path in sorted(self.base.rglob("*")):
            try:
                if path.is_dir() and not any(path.iterdir()):
                    yield StoredObject(
                        path.relative_to(self.base).as_posix(),
                        0,
                        datetime.fromtimestamp(path.stat().st_mtime, UTC),
                    )
            except FileNotFoundError:  # removed meanwhile
                continue

    def remove_empty_folder(self, key: str) -> None:
        try:
            self._path(key).rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):  # gone already, or written to meanwhile
                raise


def part_size(size: int, minimum: int) -> int:
    """The smallest whole-MiB part size, at least minimum, that uploads size bytes in MAX_PARTS parts."""
    needed = -(-size // MAX_PARTS)
    return max(minimum, -(-needed // MiB) * MiB)


class S3Destination(Destination):
    """s3://bucket/prefix through a boto3 client.

    Files are streamed from disk by boto3's managed transfer (multipart above the threshold; on a
    failure it aborts the multipart upload, so no part stays billed and no object appears), and the
    stored size is read back. latest.json is written with If-Match / If-None-Match so that a
    concurrent run cannot be overwritten unseen. Server-side encryption applies to every object.
    """

    def __init__(
        self,
        client,
        bucket: str,
        prefix: str = "",
        *,
        sse: str | None = None,
        kms_key_id: str | None = None,
        multipart_threshold: int = 8 * MiB,
        min_part_size: int = 8 * MiB,
    ):
        if sse not in SSE_MODES:
            raise ConfigurationError(f"server-side encryption {sse!r}: use AES256 or aws:kms (or none)")
        if kms_key_id and sse != "aws:kms":
            raise ConfigurationError("a KMS key id needs server-side encryption aws:kms")
        self.client, self.bucket = client, bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.encryption = ({"ServerSideEncryption": sse} if sse else {}) | (
            {"SSEKMSKeyId": kms_key_id} if kms_key_id else {}
        )
        self.multipart_threshold, self.min_part_size = multipart_threshold, min_part_size

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    @contextmanager
    def _errors(self, action: str, key: str, error: type[Exception] = PublicationError):
        """botocore's errors as ours, naming the object (their messages carry no credentials)."""
        try:
            yield
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            if is_transient(exc):
                error = DestinationUnavailableError
            raise error(f"S3 {action} {self.location(key)} failed: {exc}") from exc

    def upload_file(self, key: str, path: Path, content_type: str) -> int:
        size = path.stat().st_size
        transfer = TransferConfig(
            multipart_threshold=self.multipart_threshold, multipart_chunksize=part_size(size, self.min_part_size)
        )
        with self._errors("upload to", key):
            self.client.upload_file(
                str(path),
                self.bucket,
                self.prefix + key,
                Config=transfer,
                ExtraArgs={"ContentType": content_type, **self.encryption},
            )
            return self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)["ContentLength"]

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        with self._errors("put", key):
            self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentType=content_type, **self.encryption
            )

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        with self._errors("get", key, DestinationError):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "NoSuchKey":
                    return None, None
                raise
            with response["Body"] as body:
                return body.read(), response["ETag"]

    def write_if_version(self, key: str, data: bytes, version: str | None, content_type: str) -> bool:
        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        with self._errors("conditional put", key):
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.prefix + key,
                    Body=data,
                    ContentType=content_type,
                    **condition,
                    **self.encryption,
                )
            except ClientError as exc:
                if exc.response["Error"]["Code"] in CONDITION_FAILED:
                    return False
                raise
        return True

    def list(self, prefix: str) -> Iterator[StoredObject]:
        with self._errors("list", prefix, DestinationError):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"][len(self.prefix) :], item["Size"], item["LastModified"])

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = keys[start : start + 1000]
            with self._errors("delete", batch[0], DestinationError):
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": self.prefix + key} for key in batch], "Quiet": True}
                )
            if response.get("Errors"):
                first = response["Errors"][0]
                raise DestinationError(
                    f"S3 delete of {len(response['Errors'])} object(s) failed, first "
                    f"s3://{self.bucket}/{first['Key']}: {first['Code']}"
                )

    def link(self, key: str, filename: str, expires_in: int) -> str:
        """A presigned GET URL that downloads under filename (made locally: no request to S3)."""
        with self._errors("presign", key, DestinationError):
            return self.client.generate_presigned_url(
                "get_object",
                ExpiresIn=expires_in,
                Params={
                    "Bucket": self.bucket,
                    "Key": self.prefix + key,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                },
            )


def s3_client(
    session: boto3.session.Session | None = None,
    *,
    endpoint_url: str | None = None,
    max_attempts: int = 5,
    unsigned: bool = False,
    **client_options,
):
    """A boto3 S3 client for exports; credentials and region from the standard AWS chain unless given.

    Standard retry mode (throttling and 5xx answers retried with backoff); SigV4 always, which
    presigned links need for SSE-KMS objects (boto3 may presign with SigV2). For an S3-compatible
    endpoint (endpoint_url, which callers take from AWS_ENDPOINT_URL: MinIO...), checksums only where
    the API requires them (boto3's default integrity checksums are rejected by several such stores)
    and path-style addressing (no bucket DNS names).
    """
    compatible = (
        {
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "s3": {"addressing_style": "path"},
        }
        if endpoint_url
        else {}
    )
    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        signature_version=UNSIGNED if unsigned else "s3v4",
        **compatible,
    )
    return (session or boto3.session.Session()).client("s3", endpoint_url=endpoint_url, config=config, **client_options)


def endpoint_variable(environ: Mapping[str, str]) -> str | None:
    """The AWS variable that names an S3-compatible endpoint, the S3-specific one first (the AWS SDK's order)."""
    return next((name for name in ENDPOINT_VARIABLES if environ.get(name, "").strip()), None)


def open_destination(
    url: str, *, client=None, endpoint_url: str | None = None, sse: str | None = None, kms_key_id: str | None = None
) -> Destination:
    """s3://bucket/prefix (through the given boto3 client, else s3_client(endpoint_url=...)) or a local folder."""
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ConfigurationError(f"destination {url!r} names no bucket")
        return S3Destination(
            client or s3_client(endpoint_url=endpoint_url), bucket, prefix, sse=sse, kms_key_id=kms_key_id
        )
    return LocalDestination(url)
