"""Test harness: real RabbitMQ (127.0.0.1:5672), real SeaweedFS S3
(127.0.0.1:8333) and real ``shoal-worker`` processes, as
``worker/tests/process.rs`` starts them: ``serve`` with only the
environment given here, its own uniquely suffixed queue and exchanges, its
own store and scratch folder, metrics on a free port, ready once
``/readyz`` answers 200. ``scripts/services`` starts the services.

Environment (all optional):
  SHOAL_TEST_AMQP_URL      broker (default amqp://guest:guest@127.0.0.1:5672/%2f)
  SHOAL_TEST_S3_ENDPOINT   S3 endpoint (default http://127.0.0.1:8333)
  SHOAL_WORKER_BIN         worker binary (default <repo>/target/debug/shoal-worker)
  SHOAL_SUBMIT_BIN         submit binary (default <repo>/target/debug/submit)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import pika
import pytest

from shoal_client import Client

REPO = Path(__file__).resolve().parents[3]
AMQP_URL = os.environ.get("SHOAL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
S3_ENDPOINT = os.environ.get("SHOAL_TEST_S3_ENDPOINT", "http://127.0.0.1:8333")
WORKER_BIN = Path(os.environ.get("SHOAL_WORKER_BIN", REPO / "target/debug/shoal-worker"))
SUBMIT_BIN = Path(os.environ.get("SHOAL_SUBMIT_BIN", REPO / "target/debug/submit"))
PROBE = REPO / "tests/fixtures/probe.wasm"
HELLO = REPO / "examples/hello/hello.wasm"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def broker_channel() -> tuple[pika.BlockingConnection, Any]:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    return conn, conn.channel()


def queue_depth(name: str) -> int | None:
    """Messages in a queue, or None when it does not exist."""
    conn, ch = broker_channel()
    try:
        return int(ch.queue_declare(name, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:
            return None
        raise
    finally:
        if conn.is_open:
            conn.close()


def delete_topology(names: dict[str, str]) -> None:
    conn, ch = broker_channel()
    try:
        for queue in (names["job_queue"], names["dead_letter"]):
            ch.queue_delete(queue)
        for exchange in (names["results_exchange"], names["dead_letter"], names.get("control_exchange")):
            if exchange:
                ch.exchange_delete(exchange)
    finally:
        if conn.is_open:
            conn.close()


def topology_names(prefix: str = "pytest") -> dict[str, Any]:
    suffix = uuid.uuid4().hex
    return {
        "job_queue": f"{prefix}.jobs.{suffix}",
        "results_exchange": f"{prefix}.results.{suffix}",
        "dead_letter": f"{prefix}.dead.{suffix}",
        "control_exchange": f"{prefix}.control.{suffix}",
    }


def close_connections(name: str) -> int:
    """Closes, from the broker's side, every connection whose client
    properties carry ``name`` (as submitter/tests/client.rs does)."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if name in line]
    # At once: each rabbitmqctl call takes a couple of seconds.
    closing = [
        subprocess.Popen(
            ["rabbitmqctl", "-q", "close_connection", pid, "closed by the Python client test"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    for process in closing:
        assert process.wait(60) == 0, "rabbitmqctl close_connection failed"
    return len(pids)


class Fleet:
    """One ``shoal-worker serve`` process with its own topology (``names``,
    else fresh ones) and store."""

    def __init__(
        self,
        label: str,
        workdir: Path,
        store_env: dict[str, str],
        client_store: dict[str, Any],
        names: dict[str, Any] | None = None,
    ) -> None:
        self.label = label
        self.names = names if names is not None else topology_names()
        self.store_env = store_env
        self.client_store = client_store
        self.log_path = workdir / f"worker-{label}.log"
        scratch = workdir / "scratch"
        scratch.mkdir(exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SHOAL_AMQP_URL": AMQP_URL,
            "SHOAL_AMQP_JOB_QUEUE": self.names["job_queue"],
            "SHOAL_AMQP_RESULTS_EXCHANGE": self.names["results_exchange"],
            "SHOAL_AMQP_DEAD_LETTER": self.names["dead_letter"],
            "SHOAL_AMQP_CONTROL_EXCHANGE": self.names["control_exchange"],
            "SHOAL_AMQP_RECONNECT_MAX_MS": "1000",
            "SHOAL_WORKER_NAME": unique(f"pytest-{label}"),
            "SHOAL_WORKER_CONCURRENCY": "2",
            "SHOAL_WORKER_SCRATCH_DIR": str(scratch),
            "SHOAL_METRICS_LISTEN": "127.0.0.1:0",
            "SHOAL_LOG_FORMAT": "json",
            "SHOAL_LOG_FILTER": "info",
            **store_env,
        }
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(WORKER_BIN), "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        bound = None
        while bound is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"shoal-worker exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"shoal-worker never said where its metrics listen:\n{self.log()}")
            for line in self.log().splitlines():
                try:
                    fields = json.loads(line).get("fields", {})
                except ValueError:
                    continue
                if "bound" in fields:
                    bound = fields["bound"]
            time.sleep(0.05)
        self.metrics = f"http://{bound}"
        while True:
            try:
                with urllib.request.urlopen(f"{self.metrics}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"shoal-worker never became ready:\n{self.log()}")
            time.sleep(0.1)

    def client(self, **overrides: Any) -> Client:
        options: dict[str, Any] = {
            **self.names,
            **self.client_store,
            "connection_name": unique("pytest-client"),
        }
        options.update(overrides)
        url = options.pop("amqp_url", AMQP_URL)
        return Client(url, **options)

    def env(self) -> dict[str, str]:
        """What ``submit`` (or ``Client.from_env``) needs to reach this fleet."""
        return {
            "SHOAL_AMQP_URL": AMQP_URL,
            "SHOAL_AMQP_JOB_QUEUE": self.names["job_queue"],
            "SHOAL_AMQP_RESULTS_EXCHANGE": self.names["results_exchange"],
            "SHOAL_AMQP_DEAD_LETTER": self.names["dead_letter"],
            "SHOAL_AMQP_CONTROL_EXCHANGE": self.names["control_exchange"],
            **self.store_env,
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        try:
            delete_topology(self.names)
        except Exception:
            pass


def _require_services() -> None:
    if not WORKER_BIN.is_file():
        pytest.fail(f"{WORKER_BIN} is missing: build it (cargo build --bin shoal-worker) or set SHOAL_WORKER_BIN")
    try:
        conn, _ = broker_channel()
        conn.close()
    except Exception as e:
        pytest.fail(f"RabbitMQ at {AMQP_URL} is not reachable ({e}): run scripts/services")


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="shoal-pytest-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def local_fleet(workdir: Path) -> Iterator[Fleet]:
    """A worker whose store is a local folder (SHOAL_CACHE_DIR)."""
    _require_services()
    cache = workdir / "local-cache"
    cache.mkdir()
    fleet = Fleet("local", workdir, {"SHOAL_CACHE_DIR": str(cache)}, {"cache_dir": str(cache)})
    fleet.cache_dir = cache  # type: ignore[attr-defined]
    yield fleet
    fleet.stop()


@pytest.fixture(scope="session")
def s3_bucket() -> Iterator[str]:
    """A bucket of its own on SeaweedFS, emptied and removed at the end (the
    worker's S3 store has no key prefix, so a bucket is the unit of isolation)."""
    import boto3
    import botocore
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=S3_ENDPOINT,
        region_name="us-east-1",
        config=Config(signature_version=botocore.UNSIGNED, s3={"addressing_style": "path"}),
    )
    bucket = f"pytest-shoal-{uuid.uuid4().hex[:16]}"
    try:
        s3.create_bucket(Bucket=bucket)
    except Exception as e:
        pytest.fail(f"SeaweedFS S3 at {S3_ENDPOINT} would not create a bucket ({e}): run scripts/services")
    yield bucket
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)
    except Exception:
        pass


@pytest.fixture(scope="session")
def s3_fleet(workdir: Path, s3_bucket: str) -> Iterator[Fleet]:
    """A worker whose store is the S3 bucket (SHOAL_CACHE_S3_BUCKET)."""
    _require_services()
    fleet = Fleet(
        "s3",
        workdir,
        {
            "SHOAL_CACHE_S3_BUCKET": s3_bucket,
            "SHOAL_CACHE_S3_ENDPOINT": S3_ENDPOINT,
            "SHOAL_CACHE_S3_RETRY_TIMEOUT_SECS": "5",
        },
        {"s3_bucket": s3_bucket, "s3_endpoint": S3_ENDPOINT},
    )
    yield fleet
    fleet.stop()


class Proxy:
    """A TCP forwarder to the broker that can be switched off (open
    connections cut, new ones refused) and on again: the broker unreachable
    for one client only, without touching the one the other tests share."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = True
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                inbound, _ = self._listener.accept()
            except OSError:
                return
            if not self.up:
                inbound.close()
                continue
            try:
                outbound = socket.create_connection(self.target, timeout=5)
                outbound.settimeout(None)
            except OSError:
                inbound.close()
                continue
            with self._lock:
                self._open += [inbound, outbound]
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def down(self) -> None:
        self.up = False
        with self._lock:
            sockets, self._open = self._open, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._stopped = True
        self.down()
        self._listener.close()
