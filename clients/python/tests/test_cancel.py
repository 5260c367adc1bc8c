"""Cancelling jobs and the store's job index: the key format against a
fixed example (no services), what ``cancel`` and ``submit`` write and send
(broker and S3, no worker), and a job cancelled while queued that a worker
started afterwards ends ``cancelled`` (the real worker, conftest.py)."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pika
import pytest

from shoal_client import Client, ShoalError
from shoal_client.store import (
    cancel_key,
    index_entry,
    job_by_id_key,
    job_entry_key,
    jobs_minute,
    rfc3339_micros,
)
from shoal_client.topology import PUBLISHED_US_HEADER

from conftest import AMQP_URL, PROBE, S3_ENDPOINT, Fleet, delete_topology, queue_depth, topology_names, unique

_RFC3339_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _expected_entry_key(us: int, job_id: str, status: str | None = None) -> str:
    """The by-time key as docs/PROTOCOL.md and keys.rs spell it, worked out
    here rather than with the client's own function."""
    days = "%06d" % (999999 - us // 86_400_000_000)
    minutes = "%04d" % (1439 - (us // 60_000_000) % 1440)
    micros = "%016d" % (9999999999999999 - us)
    return f"jobs/by-time/{days}/{minutes}/{micros}-{job_id}{'@' + status if status else ''}.json"


def _micros_of(text: str) -> int:
    """An RFC 3339 time (µs, ``Z``) back to µs since the epoch, exactly."""
    assert _RFC3339_MICROS.match(text), text
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    delta = at - epoch
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _recording_headers(client: Client) -> dict[str, int]:
    """Makes ``client`` note each job's ``x-shoal-published-us`` as it
    builds the job's properties: the value the index keys must use."""
    sent: dict[str, int] = {}
    build = client.properties

    def recording(job_id: str) -> pika.BasicProperties:
        props = build(job_id)
        sent[job_id] = int(props.headers[PUBLISHED_US_HEADER])
        return props

    client.properties = recording  # type: ignore[method-assign]
    return sent


def _check_index(store_get: Any, job_id: str, us: int) -> None:
    """Both index objects of a submitted job, under the exact keys, with
    the same body."""
    by_time = store_get(_expected_entry_key(us, job_id))
    assert by_time is not None, f"missing {_expected_entry_key(us, job_id)}"
    assert store_get(f"jobs/by-id/{job_id}.json") == by_time
    entry = json.loads(by_time)
    assert set(entry) == {"schema", "job_id", "submitted_at"}
    assert (entry["schema"], entry["job_id"]) == ("shoal.index/v1", job_id)
    assert _micros_of(entry["submitted_at"]) == us


# ----------------------------------------------------------------- no services


def test_index_keys_count_down_as_the_worker_writes_them() -> None:
    us = 1_764_600_000_000_000
    # 2025-12-01T14:40:00Z: day 20423, minute 880 of the day (keys.rs's test).
    assert jobs_minute(us) == "jobs/by-time/979576/0559"
    assert job_entry_key(us, "j1") == "jobs/by-time/979576/0559/8235399999999999-j1.json"
    assert job_entry_key(us, "j1", "cancelled") == "jobs/by-time/979576/0559/8235399999999999-j1@cancelled.json"
    assert job_entry_key(us, "a.b-c") == _expected_entry_key(us, "a.b-c")
    # Newest first in an ascending listing; a job's end sorts right after it.
    assert job_entry_key(us + 1, "j1") < job_entry_key(us, "j1") < job_entry_key(us, "j1", "succeeded")
    assert job_entry_key(us + 60_000_000, "z") < job_entry_key(us + 1, "j1")
    assert job_entry_key(us + 86_400_000_000, "z") < job_entry_key(us + 60_000_000, "z")
    assert job_by_id_key("j1") == "jobs/by-id/j1.json"
    assert cancel_key("j1") == "cancel/j1.json"
    # humantime's format_rfc3339_micros: always six digits, Z.
    assert rfc3339_micros(us) == "2025-12-01T14:40:00.000000Z"
    assert rfc3339_micros(us + 123_456) == "2025-12-01T14:40:00.123456Z"
    assert index_entry("j1", us + 7) == (
        b'{"schema":"shoal.index/v1","job_id":"j1","submitted_at":"2025-12-01T14:40:00.000007Z"}'
    )


# ----------------------------------------------------------------- broker and S3, no worker


def test_submit_indexes_and_cancel_records_then_tells_the_workers(s3_bucket: str) -> None:
    names = topology_names()
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        with Client(
            AMQP_URL,
            declare="full",
            s3_bucket=s3_bucket,
            s3_endpoint=S3_ENDPOINT,
            connection_name=unique("pytest-cancel"),
            **names,
        ) as client:
            assert client.store is not None
            sent = _recording_headers(client)
            ids = client.submit_many([{"module": "sha256:" + "ab" * 32, "job_id": unique("idx")} for _ in range(3)])
            for job_id in ids:
                _check_index(client.store.get, job_id, sent[job_id])

            # A queue of our own on the control exchange, as a worker binds one.
            ch = conn.channel()
            heard = ch.queue_declare("", exclusive=True).method.queue
            ch.queue_bind(heard, names["control_exchange"], routing_key="")

            job = ids[0]
            assert client.cancel(job) == "requested"
            record = json.loads(client.store.get(f"cancel/{job}.json") or b"null")
            assert set(record) == {"job_id", "requested_at"} and record["job_id"] == job
            assert abs(_micros_of(record["requested_at"]) / 1e6 - time.time()) < 60
            method, props, body = ch.basic_get(heard, auto_ack=True)
            assert method is not None, "no control message reached the control exchange"
            assert json.loads(body) == {"schema": "shoal.control/v1", "action": "cancel", "job_ids": [job]}
            assert (props.type, props.content_type) == ("shoal.control/v1", "application/json")

            # Again: the record stays as it was, the message goes again.
            assert client.cancel(job) == "already"
            assert json.loads(client.store.get(f"cancel/{job}.json") or b"null") == record
            assert ch.basic_get(heard, auto_ack=True)[0] is not None
            assert queue_depth(names["job_queue"]) == 3  # nothing was taken off the queue

            with pytest.raises(ShoalError, match="not a job id"):
                client.cancel("../results/x")

        # Passively, a broker no cancel-aware worker ever reached has no
        # control exchange: the record alone is written, nothing fails, and
        # the client's own publishing is untouched.
        ch.exchange_delete(names["control_exchange"])
        with Client(AMQP_URL, s3_bucket=s3_bucket, s3_endpoint=S3_ENDPOINT, **names) as passive:
            assert passive.cancel(ids[1]) == "requested"
            assert passive.store is not None and passive.store.get(f"cancel/{ids[1]}.json") is not None
            passive.submit("sha256:" + "ab" * 32)

        with Client(AMQP_URL, cache_dir=None, **names) as storeless:
            with pytest.raises(ShoalError, match="needs a store"):
                storeless.cancel(ids[2])
    finally:
        conn.close()
        delete_topology(names)


# ----------------------------------------------------------------- a real worker


def test_a_job_cancelled_while_queued_ends_cancelled_when_a_worker_takes_it(workdir: Path, tmp_path: Path) -> None:
    names = topology_names()
    store = tmp_path / "store"
    fleet: Fleet | None = None
    try:
        # No worker yet: the job waits in the queue.
        with Client(AMQP_URL, declare="full", cache_dir=store, connection_name=unique("pytest-cancel"), **names) as client:
            sent = _recording_headers(client)
            module = client.upload(PROBE)
            job = client.submit(module, ["exit", "0"], job_id=unique("cancel"))
            us = sent[job]

            def get(key: str) -> bytes | None:
                path = store / key
                return path.read_bytes() if path.is_file() else None

            _check_index(get, job, us)
            assert client.cancel(job) == "requested"
            assert (store / "cancel" / f"{job}.json").is_file()

            # The worker loads the cancel records when it connects, and
            # skips the job when it takes it.
            fleet = Fleet("cancel", workdir, {"SHOAL_CACHE_DIR": str(store)}, {"cache_dir": str(store)}, names=names)
            result = client.wait(job, timeout=30)
            assert (result.status, result.error_kind, result.exit_code) == ("cancelled", "cancelled", None), result.raw
            assert result.cancelled and not result.succeeded
            assert client.cancel(job) == "already"
            # The worker's entry for the end sits beside the client's: the
            # same microseconds, the status after an '@'.
            ended = store / _expected_entry_key(us, job, "cancelled")
            deadline = time.monotonic() + 5
            while not ended.is_file() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ended.is_file(), sorted(str(p.relative_to(store)) for p in (store / "jobs").rglob("*.json"))
            assert ended.parent == (store / _expected_entry_key(us, job)).parent

            # A job that ended otherwise is left as it is.
            done = client.run(module, ["exit", "0"], timeout=30)
            assert done.status == "succeeded", done.raw
            assert client.cancel(done.job_id) == "finished"
            assert not (store / "cancel" / f"{done.job_id}.json").exists()
    finally:
        if fleet is not None:
            fleet.stop()  # deletes the topology too
        else:
            delete_topology(names)
