"""A job's result message (``shoal.result/v1``), with its streams at hand."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from .errors import ShoalError
from .store import Store


class Result:
    """How one job ended. ``raw`` is the message as received (a dict in the
    shape of ``result.schema.json``); the properties read it.

    ``stdout`` and ``stderr`` are text (UTF-8, undecodable bytes replaced);
    a stream too large to travel inline is fetched from the results store
    on first use. ``stdout_bytes`` / ``stderr_bytes`` give the exact bytes.
    """

    def __init__(self, raw: dict[str, Any], store: Store | None = None) -> None:
        self.raw: dict[str, Any] = raw
        self._store = store
        self._streams: dict[str, bytes] = {}

    @property
    def job_id(self) -> str:
        return str(self.raw["job_id"])

    @property
    def status(self) -> str:
        """``succeeded``, ``failed``, ``error``, ``rejected`` or
        ``cancelled`` (docs/ERRORS.md)."""
        return str(self.raw["status"])

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def cancelled(self) -> bool:
        """An operator cancelled the job (:meth:`Client.cancel`, ``submit
        cancel``) before or while it ran: ``error_kind`` is ``cancelled``
        too, and there is no exit code and no output."""
        return self.status == "cancelled"

    @property
    def exit_code(self) -> int | None:
        """The guest's exit status; None when it did not exit (a trap, a
        limit, a rejected or cancelled job)."""
        code = self.raw.get("exit_code")
        return int(code) if code is not None else None

    @property
    def error_kind(self) -> str | None:
        """One of the closed set in docs/ERRORS.md, or None on success."""
        error = self.raw.get("error")
        return str(error["kind"]) if error else None

    @property
    def error_message(self) -> str | None:
        error = self.raw.get("error")
        return str(error["message"]) if error else None

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """Each output mount: name, path, location, files (path, size,
        sha256), bytes, partial, skipped."""
        outputs: list[dict[str, Any]] = self.raw.get("outputs") or []
        return outputs

    @property
    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = self.raw.get("usage") or {}
        return usage

    @property
    def worker(self) -> str:
        return str(self.raw.get("worker", ""))

    @property
    def attempt(self) -> int:
        return int(self.raw.get("attempt", 1))

    @property
    def submitted_at(self) -> datetime | None:
        """When the job was published (the submitter's clock), UTC; None
        when the message gave no publish time."""
        return _instant(self.raw.get("submitted_at"))

    @property
    def started_at(self) -> datetime | None:
        """When the worker took this attempt (the worker's clock), UTC."""
        return _instant(self.raw.get("started_at"))

    @property
    def finished_at(self) -> datetime | None:
        """When the worker finished the result, UTC."""
        return _instant(self.raw.get("finished_at"))

    def stream_bytes(self, name: str) -> bytes:
        """``stdout`` or ``stderr``, exactly as kept."""
        if name not in ("stdout", "stderr"):
            raise ValueError(name)
        if name in self._streams:
            return self._streams[name]
        stream = self.raw.get(name)
        data: bytes
        if not stream:
            data = b""
        elif stream.get("text") is not None:
            data = str(stream["text"]).encode("utf-8")
        elif stream.get("base64") is not None:
            data = base64.b64decode(stream["base64"])
        elif stream.get("location"):
            if self._store is None:
                raise ShoalError(
                    f"job {self.job_id}: {name} is in the results store ({stream['location']}), "
                    "and this client has none configured"
                )
            got = self._store.get(str(stream["location"]))
            if got is None:
                raise ShoalError(f"job {self.job_id}: {name} is missing from {self._store.describe()}")
            data = got
        else:
            data = b""
        self._streams[name] = data
        return data

    @property
    def stdout_bytes(self) -> bytes:
        return self.stream_bytes("stdout")

    @property
    def stderr_bytes(self) -> bytes:
        return self.stream_bytes("stderr")

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        extra = f" exit {self.exit_code}" if self.exit_code is not None else ""
        kind = f" {self.error_kind}" if self.error_kind else ""
        return f"<Result {self.job_id}: {self.status}{extra}{kind}>"


def _instant(text: Any) -> datetime | None:
    """An RFC 3339 time as workers write it (``2026-12-01T22:30:47.123456Z``)."""
    if not text:
        return None
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
