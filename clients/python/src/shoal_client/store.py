"""The store the fleet shares: content cache (``cache/sha256/<hex>``),
results (``results/<job id>/…``), the job index (``jobs/…``) and cancel
requests (``cancel/<job id>.json``), in an S3 bucket or a local folder. The
key layout is the same in both (worker/src/store/keys.rs); in a folder a
key is a file path below it (as the worker's ``object_store`` local backend
lays it out)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, BinaryIO


def sha256_key(hex_digest: str) -> str:
    """The cache key of content with this SHA-256."""
    return f"cache/sha256/{hex_digest}"


def result_key(job_id: str) -> str:
    """The key of a job's result message."""
    return f"results/{job_id}/result.json"


#: The job index's keys count down, so that a plain ascending listing (all
#: S3 offers) gives the newest first: 6 digits of days since the epoch, 4
#: of the minute in the day and 16 of microseconds since the epoch,
#: subtracted from these (keys.rs).
_DAYS_TOP = 999_999
_MINUTES_TOP = 1439
_MICROS_TOP = 9_999_999_999_999_999
_MICROS_PER_MINUTE = 60_000_000


def jobs_minute(submitted_us: int) -> str:
    """The index folder of the minute holding ``submitted_us``
    (microseconds since the epoch): ``jobs/by-time/<day>/<minute>``, a
    folder a day and one a minute in it, both counting down."""
    us = max(0, submitted_us)
    day = us // (1440 * _MICROS_PER_MINUTE)
    minute = (us // _MICROS_PER_MINUTE) % 1440
    return f"jobs/by-time/{_DAYS_TOP - min(day, _DAYS_TOP):06d}/{_MINUTES_TOP - minute:04d}"


def job_entry_key(submitted_us: int, job_id: str, status: str | None = None) -> str:
    """A job's entry in the by-time index, as the worker names it: without
    a status as submitted (the client's), with ``@<status>`` once it ended
    (the worker's). ``submitted_us`` must be the job's
    ``x-shoal-published-us`` header, so the two entries sort side by side."""
    us = _MICROS_TOP - min(max(0, submitted_us), _MICROS_TOP)
    ended = f"@{status}" if status else ""
    return f"{jobs_minute(submitted_us)}/{us:016d}-{job_id}{ended}.json"


def job_by_id_key(job_id: str) -> str:
    """The job's submitted entry, found by id."""
    return f"jobs/by-id/{job_id}.json"


def cancel_key(job_id: str) -> str:
    """An operator's request to cancel the job, which workers load when
    they connect and skip the job for."""
    return f"cancel/{job_id}.json"


def rfc3339_micros(us: int) -> str:
    """``us`` microseconds since the epoch as the worker writes times in
    the index (``humantime``'s RFC 3339 with microseconds, UTC):
    ``2025-12-01T14:40:00.000000Z``. Integer arithmetic, no float rounding."""
    at = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def index_entry(job_id: str, submitted_us: int) -> bytes:
    """A submitted job's index entry (``shoal.index/v1``, no status), the
    body of both its by-time and by-id objects."""
    from .contract import INDEX_SCHEMA

    entry = {"schema": INDEX_SCHEMA, "job_id": job_id, "submitted_at": rfc3339_micros(submitted_us)}
    return json.dumps(entry, separators=(",", ":")).encode("utf-8")


def cancel_request(job_id: str, requested_us: int) -> bytes:
    """The body of ``cancel/<id>.json``."""
    request = {"job_id": job_id, "requested_at": rfc3339_micros(requested_us)}
    return json.dumps(request, separators=(",", ":")).encode("utf-8")


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise ValueError(f"not a store key: {key!r}")
    return key


class Store(ABC):
    """What the client needs of the store."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size, or None when there is none."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The whole object, or None when there is none."""

    @abstractmethod
    def put_stream(self, key: str, source: BinaryIO) -> None:
        """Writes the object from a stream read to its end; readers see it
        only once complete."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Removes the object if it is there."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for messages."""

    def put_bytes(self, key: str, data: bytes) -> None:
        import io

        self.put_stream(key, io.BytesIO(data))


class LocalStore(Store):
    """A folder every worker and client on the machine shares
    (``SHOAL_CACHE_DIR``). Created on first write."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def size(self, key: str) -> int | None:
        try:
            st = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if not os.path.isdir(self.path(key)) else None

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def put_stream(self, key: str, source: BinaryIO) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A dot-file beside the target, then a rename: atomic on one file system.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass

    def describe(self) -> str:
        return f"folder {self.root}"


class S3Store(Store):
    """An S3 bucket (AWS, SeaweedFS, MinIO), as the worker opens it:
    path-style requests unless ``virtual_hosted``, unsigned requests when
    no access key is given."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        virtual_hosted: bool = False,
    ) -> None:
        import boto3
        import botocore
        from botocore.config import Config

        self.bucket = bucket
        self.endpoint = endpoint or None
        options: dict[str, Any] = {
            "region_name": region or "us-east-1",
            "s3": {"addressing_style": "virtual" if virtual_hosted else "path"},
            "retries": {"max_attempts": 5, "mode": "standard"},
        }
        if not access_key_id:
            options["signature_version"] = botocore.UNSIGNED
        session = boto3.session.Session()
        self._s3 = session.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(**options),
        )

    @staticmethod
    def _missing(e: Exception) -> bool:
        response = getattr(e, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("404", "NoSuchKey", "NotFound") or status == 404

    def size(self, key: str) -> int | None:
        try:
            head = self._s3.head_object(Bucket=self.bucket, Key=_check_key(key))
        except Exception as e:
            if self._missing(e):
                return None
            raise
        return int(head["ContentLength"])

    def get(self, key: str) -> bytes | None:
        try:
            got = self._s3.get_object(Bucket=self.bucket, Key=_check_key(key))
        except Exception as e:
            if self._missing(e):
                return None
            raise
        data: bytes = got["Body"].read()
        return data

    def put_stream(self, key: str, source: BinaryIO) -> None:
        # Managed transfer: one PUT when small, multipart when large; the
        # stream is read in order, once.
        self._s3.upload_fileobj(source, self.bucket, _check_key(key))

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=_check_key(key))

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}{where}"


class HashingReader:
    """Reads a stream through, hashing what passes (for uploads that must
    not read a file twice)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> tuple[str, int]:
    """A file's lowercase hex SHA-256 and size."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
