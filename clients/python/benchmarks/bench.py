#!/usr/bin/env python3
"""Shoal versus Celery + wasmtime-py: N trivial WASI jobs through one worker.

One process run: for each of --rounds rounds it measures both sides (the order
alternates between rounds, so slow drift of the machine hits both alike) and
prints per-round numbers, medians, the throughput ratio and CPU per job; a
JSON summary goes to stdout (or --json FILE). See README.md.

Each measurement starts its worker afresh, warms it up (module compiled and
cached, connections open), then times, from the client:

* Shoal: ``Client.submit_many(N jobs)`` + ``Client.wait(id)`` for every id;
* Celery: N x ``run_wasm.apply_async`` + ``ResultSet.join_native()``;

and checks that every job succeeded with the expected exit code and stdout.
CPU seconds come from /proc/<pid>/stat (utime + stime) of the worker's
process tree, of the broker (every ``beam.smp``) and of this client process,
before and after the timed part. Workers are stopped and the benchmark's
queues and exchanges deleted on exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BOUND = re.compile(r"endpoint listening.*?bound\W+[0-9.]+:(\d+)")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# CPU accounting from /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may hold spaces or parentheses: the fields start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _all_stats() -> dict[int, list[str]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                stats[int(entry)] = fields
    return stats


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of ``root`` and every live descendant, plus the reaped
    children's cutime+cstime (so a child that exits mid-run still counts)."""
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        fields = stats.get(pid)
        if fields is None:
            continue
        # fields[k] is /proc/<pid>/stat field k+3: utime 14, stime 15, cutime 16, cstime 17
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        todo.extend(children.get(pid, []))
    return total / CLK_TCK


def broker_pids() -> list[int]:
    """The RabbitMQ server's Erlang VM: every ``beam.smp`` started with
    ``-s rabbit boot`` (rabbitmqctl runs short-lived ``beam.smp`` VMs too,
    which must not count)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() != "beam.smp":
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if any(a == b"rabbit" for a in argv) and b"boot" in argv:
                pids.append(int(entry))
    return pids


def broker_cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def broker_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the broker used in between, over the VMs alive at both ends (a
    broker restart in between would make this meaningless: flagged by the
    caller through the pid sets differing)."""
    return sum(after[pid] - before[pid] for pid in before if pid in after)


def machine_busy_seconds() -> tuple[float, float]:
    """CPU seconds all cores spent busy (user, nice, system, irq, softirq)
    and stolen by the hypervisor, from /proc/stat."""
    with open("/proc/stat") as f:
        cpu = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in cpu[1:9])
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------
# Broker housekeeping (py-amqp, which Celery already depends on)


def _amqp_connect(amqp_url: str):
    import amqp
    from kombu.utils.url import url_to_parts

    parts = url_to_parts(amqp_url)
    conn = amqp.Connection(
        host=f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}",
        userid=parts.username or "guest",
        password=parts.password or "guest",
        virtual_host=parts.path or "/",
        connect_timeout=5,
    )
    conn.connect()
    return conn


def existing_exchanges(amqp_url: str, names: list[str]) -> set[str]:
    """Which of these exchanges exist now (passive declares)."""
    import amqp

    found = set()
    conn = _amqp_connect(amqp_url)
    try:
        for name in names:
            ch = conn.channel()
            try:
                ch.exchange_declare(name, "direct", passive=True)
                found.add(name)
            except amqp.exceptions.NotFound:
                continue  # the broker closed this channel
            with contextlib.suppress(Exception):
                ch.close()
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return found


def delete_broker_objects(amqp_url: str, queues: list[str], exchanges: list[str]) -> None:
    """Delete queues and exchanges by name; missing ones are fine."""
    try:
        conn = _amqp_connect(amqp_url)
    except Exception as err:  # noqa: BLE001 - best effort on the way out
        log(f"cleanup: cannot reach the broker ({err}); left {queues + exchanges}")
        return
    try:
        for name in queues:
            ch = conn.channel()
            try:
                ch.queue_delete(name)
            except Exception as err:  # noqa: BLE001
                log(f"cleanup: queue {name}: {err}")
            with contextlib.suppress(Exception):
                ch.close()
        for name in exchanges:
            ch = conn.channel()
            try:
                ch.exchange_delete(name)
            except Exception as err:  # noqa: BLE001
                log(f"cleanup: exchange {name}: {err}")
            with contextlib.suppress(Exception):
                ch.close()
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# --------------------------------------------------------------------------
# Results


@dataclass
class Round:
    side: str
    round: int
    jobs: int
    wall_s: float
    submit_s: float  # until the last job was handed to the broker (confirmed)
    jobs_per_s: float
    worker_cpu_s: float
    broker_cpu_s: float
    client_cpu_s: float
    other_cpu_s: float  # busy CPU of everything else on the machine meanwhile
    steal_s: float
    loadavg_before: float
    other_cpu_pct: float = 0.0  # of all cores over the batch's wall time
    machine_busy_pct: float = 0.0  # all processes, of all cores over the wall time
    worker_cpu_us_per_job: float = 0.0
    broker_cpu_us_per_job: float = 0.0
    client_cpu_us_per_job: float = 0.0

    def __post_init__(self) -> None:
        self.worker_cpu_us_per_job = self.worker_cpu_s / self.jobs * 1e6
        self.broker_cpu_us_per_job = self.broker_cpu_s / self.jobs * 1e6
        self.client_cpu_us_per_job = self.client_cpu_s / self.jobs * 1e6
        capacity = self.wall_s * (os.cpu_count() or 1)
        self.other_cpu_pct = 100 * self.other_cpu_s / capacity
        self.machine_busy_pct = (
            100 * (self.worker_cpu_s + self.broker_cpu_s + self.client_cpu_s + self.other_cpu_s) / capacity
        )


@dataclass
class Measure:
    """Timing and CPU snapshots around one timed batch."""

    worker_pid: int
    broker: list[int]
    t0: float = 0.0
    w0: float = 0.0
    b0: dict = field(default_factory=dict)
    c0: float = 0.0
    m0: tuple = (0.0, 0.0)
    load: float = 0.0
    submitted_at: float = 0.0
    extra: dict = field(default_factory=dict)

    def start(self) -> None:
        self.load = os.getloadavg()[0]
        self.w0 = tree_cpu_seconds(self.worker_pid)
        self.b0 = broker_cpu_seconds(self.broker)
        self.c0 = self_cpu_seconds()
        self.m0 = machine_busy_seconds()
        self.t0 = time.perf_counter()

    def submitted(self) -> None:
        self.submitted_at = time.perf_counter()

    def stop(self, side: str, round_no: int, jobs: int) -> Round:
        t1 = time.perf_counter()
        m1 = machine_busy_seconds()
        c1 = self_cpu_seconds()
        w1 = tree_cpu_seconds(self.worker_pid)
        b1 = broker_cpu_seconds(self.broker)
        wall = t1 - self.t0
        if not self.broker or set(b1) != set(self.b0):
            log(f"WARNING: broker process(es) {sorted(self.b0)} before, {sorted(b1)} after: broker CPU unreliable")
        worker, broker, client = w1 - self.w0, broker_cpu_delta(self.b0, b1), c1 - self.c0
        return Round(
            side=side,
            round=round_no,
            jobs=jobs,
            wall_s=wall,
            submit_s=self.submitted_at - self.t0,
            jobs_per_s=jobs / wall,
            worker_cpu_s=worker,
            broker_cpu_s=broker,
            client_cpu_s=client,
            other_cpu_s=max(0.0, (m1[0] - self.m0[0]) - worker - broker - client),
            steal_s=m1[1] - self.m0[1],
            loadavg_before=self.load,
        )


class BenchError(RuntimeError):
    pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen, name: str, grace: float = 15.0) -> None:
    """SIGTERM the process (it drains), then SIGKILL its own process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop within {grace:.0f} s: killing it")
    # The process was started in a session of its own: its group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


# --------------------------------------------------------------------------
# Shoal


def _shoal_client(amqp_url: str, cache_dir: Path, names: dict[str, str]):
    """A shoal_client.Client for this run's queue names and local store."""
    from shoal_client import Client

    return Client(amqp_url, cache_dir=str(cache_dir), **names)


class ShoalSide:
    name = "shoal"

    def __init__(self, opts: argparse.Namespace, tmp_root: Path) -> None:
        self.opts = opts
        self.tmp_root = tmp_root
        run = uuid.uuid4().hex[:12]
        self.names = {
            "job_queue": f"shoal-bench.{run}.jobs",
            "results_exchange": f"shoal-bench.{run}.results",
            "dead_letter": f"shoal-bench.{run}.dead",
            "control_exchange": f"shoal-bench.{run}.control",
        }
        self.proc: subprocess.Popen | None = None
        self.client = None
        self.store: Path | None = None

    def env(self) -> dict[str, str]:
        return {
            "SHOAL_AMQP_URL": self.opts.amqp_url,
            "SHOAL_AMQP_JOB_QUEUE": self.names["job_queue"],
            "SHOAL_AMQP_RESULTS_EXCHANGE": self.names["results_exchange"],
            "SHOAL_AMQP_DEAD_LETTER": self.names["dead_letter"],
            "SHOAL_AMQP_CONTROL_EXCHANGE": self.names["control_exchange"],
        }

    def start(self, round_no: int) -> None:
        self.store = Path(tempfile.mkdtemp(prefix=f"shoal-store-{round_no}-", dir=self.tmp_root))
        scratch = Path(tempfile.mkdtemp(prefix=f"shoal-scratch-{round_no}-", dir=self.tmp_root))
        self.log_path = self.tmp_root / f"shoal-worker-{round_no}.log"
        # No SHOAL_* variable of the caller's leaks in (a stray bucket would
        # move the store); --worker-env adds settings on purpose.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        env.update(self.env())
        env.update(
            {
                "SHOAL_CACHE_DIR": str(self.store),
                "SHOAL_WORKER_SCRATCH_DIR": str(scratch),
                "SHOAL_WORKER_CONCURRENCY": str(self.opts.concurrency),
                "SHOAL_METRICS_LISTEN": "127.0.0.1:0",
                "SHOAL_WORKER_NAME": f"bench-{round_no}",
            }
        )
        env.update(self.opts.worker_env)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [self.opts.worker_bin, "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()
        self.client = _shoal_client(self.opts.amqp_url, self.store, self.names)
        self.module_ref = self.client.upload(str(self.opts.module))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.opts.start_timeout
        port = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"shoal-worker exited ({self.proc.returncode}):\n{_tail(self.log_path)}")
            if port is None:
                port = self._bound_port()
            if port is not None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                        if resp.status == 200:
                            return
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.1)
        raise BenchError(f"shoal-worker not ready within {self.opts.start_timeout} s:\n{_tail(self.log_path)}")

    def _bound_port(self) -> int | None:
        """The port of the metrics endpoint, from the worker's log line
        "metrics and health endpoint listening bound=127.0.0.1:PORT" (text or
        JSON format, with or without colours)."""
        try:
            text = ANSI.sub("", self.log_path.read_text(errors="replace"))
        except OSError:
            return None
        found = BOUND.search(text)
        return int(found.group(1)) if found else None

    def _job(self) -> dict:
        job = {"module": self.module_ref, "args": list(self.opts.args)}
        if self.opts.shoal_outputs == "none":
            job["outputs"] = []
        return job

    def batch(self, n: int, timeout: float, measure: Measure | None) -> list:
        deadline = time.monotonic() + timeout
        jobs = [self._job() for _ in range(n)]
        if measure:
            measure.start()
        ids = self.client.submit_many(jobs)
        if measure:
            measure.submitted()
        results = []
        for job_id in ids:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"shoal: {len(results)} of {n} results within {timeout:.0f} s")
            results.append(self.client.wait(job_id, timeout=remaining))
        return results

    def check(self, results: list) -> tuple[int, str]:
        # A guest's non-zero exit is status "failed" (nonzero_exit) with its exit code.
        status = "succeeded" if self.opts.exit_code == 0 else "failed"
        bad = [r for r in results if getattr(r, "status", None) != status or r.exit_code != self.opts.exit_code]
        if bad:
            r = bad[0]
            raise BenchError(
                f"shoal: {len(bad)} of {len(results)} jobs did not succeed with exit code "
                f"{self.opts.exit_code}; first: status={getattr(r, 'status', None)} "
                f"exit_code={getattr(r, 'exit_code', None)} error={getattr(r, 'error_kind', None)}: "
                f"{getattr(r, 'error_message', None)}"
            )
        outs = {_text(r.stdout) for r in results}
        if len(outs) != 1:
            raise BenchError(f"shoal: jobs printed {len(outs)} different stdouts")
        return len(results), outs.pop()

    def stop(self) -> None:
        if self.client is not None:
            close = getattr(self.client, "close", None)
            if close:
                with contextlib.suppress(Exception):
                    close()
            self.client = None
        if self.proc is not None:
            stop_process(self.proc, "shoal-worker")
            self.proc = None
        if self.store is not None:
            shutil.rmtree(self.store, ignore_errors=True)
            for scratch in self.tmp_root.glob("shoal-scratch-*"):
                shutil.rmtree(scratch, ignore_errors=True)
            self.store = None

    def cleanup_broker(self) -> None:
        n = self.names
        delete_broker_objects(
            self.opts.amqp_url,
            queues=[n["job_queue"], n["dead_letter"]],
            exchanges=[n["results_exchange"], n["dead_letter"], n["control_exchange"]],
        )


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return str(value)


# --------------------------------------------------------------------------
# Celery


class CelerySide:
    name = "celery"

    def __init__(self, opts: argparse.Namespace, tmp_root: Path) -> None:
        self.opts = opts
        self.tmp_root = tmp_root
        self.queue = f"shoal-bench.{uuid.uuid4().hex[:12]}.celery"
        self.node = f"bench-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        # celery_app reads these at import, in this process and in the worker's.
        os.environ["SHOAL_BENCH_AMQP_URL"] = opts.amqp_url
        os.environ["SHOAL_BENCH_CELERY_QUEUE"] = self.queue
        os.environ["SHOAL_BENCH_CELERY_QUEUE_TYPE"] = opts.celery_queue_type
        os.environ["SHOAL_BENCH_WASM"] = str(opts.module)
        sys.path.insert(0, str(HERE))
        import celery_app

        self.celery_app = celery_app
        self.proc: subprocess.Popen | None = None
        # Celery's own exchanges (and, with quorum queues, its native delayed
        # delivery queues and exchanges) have fixed names shared by every
        # Celery app on the vhost: delete at the end only those this run made.
        self.shared_queues = []
        self.shared_exchanges = ["celery.pidbox", "reply.celery.pidbox", "celeryev"]
        if opts.celery_queue_type == "quorum":
            levels = [f"celery_delayed_{level}" for level in range(28)]
            self.shared_queues += levels
            self.shared_exchanges += levels + ["celery_delayed_delivery"]
        try:
            self.preexisting = existing_exchanges(opts.amqp_url, self.shared_exchanges)
        except Exception as err:
            raise BenchError(f"cannot reach the broker at {opts.amqp_url}: {err}") from err

    def start(self, round_no: int) -> None:
        self.log_path = self.tmp_root / f"celery-worker-{round_no}.log"
        cmd = [
            sys.executable, "-m", "celery", "-A", "celery_app", "worker",
            "--pool", "prefork", "--concurrency", str(self.opts.concurrency),
            "--loglevel", "WARNING",  # Celery's default; INFO logs two lines per task
            "--hostname", self.node,
            "--queues", self.queue,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=HERE,
                env=dict(os.environ),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.opts.start_timeout
        app = self.celery_app.app
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"celery worker exited ({self.proc.returncode}):\n{_tail(self.log_path)}")
            replies = app.control.ping(destination=[self.node], timeout=1.0)
            if replies:
                return
        raise BenchError(f"celery worker not ready within {self.opts.start_timeout} s:\n{_tail(self.log_path)}")

    def batch(self, n: int, timeout: float, measure: Measure | None) -> list:
        from celery.result import ResultSet

        task = self.celery_app.run_wasm
        args = list(self.opts.args)
        if measure:
            measure.start()
        pending = [task.apply_async((args,)) for _ in range(n)]
        if measure:
            measure.submitted()
        return ResultSet(pending).join_native(timeout=timeout, propagate=True)

    def check(self, results: list) -> tuple[int, str]:
        bad = [r for r in results if not isinstance(r, dict) or r.get("exit_code") != self.opts.exit_code]
        if bad:
            raise BenchError(
                f"celery: {len(bad)} of {len(results)} tasks did not exit with {self.opts.exit_code}; first: {bad[0]!r}"
            )
        outs = {r["stdout"] for r in results}
        if len(outs) != 1:
            raise BenchError(f"celery: tasks printed {len(outs)} different stdouts")
        return len(results), outs.pop()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, "celery worker")
            self.proc = None

    def cleanup_broker(self) -> None:
        with contextlib.suppress(Exception):
            self.celery_app.app.close()
        # The rpc:// reply queue and the worker's pidbox queue are auto-delete.
        queues = [self.queue]
        exchanges = [self.queue]
        if "celery_delayed_delivery" not in self.preexisting:
            queues += self.shared_queues
        exchanges += [e for e in self.shared_exchanges if e not in self.preexisting]
        delete_broker_objects(self.opts.amqp_url, queues=queues, exchanges=exchanges)


# --------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("celery", "kombu", "amqp", "billiard", "wasmtime", "pika", "shoal-client"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def worker_version(path: str) -> str:
    try:
        return subprocess.run(
            [path, "--version"], check=False, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"


def measure_round(side, round_no: int, opts: argparse.Namespace) -> Round:
    log(f"round {round_no}: {side.name}: starting the worker")
    side.start(round_no)
    try:
        log(f"round {round_no}: {side.name}: warm-up, {opts.warmup} jobs")
        warm = side.batch(opts.warmup, opts.round_timeout, None)
        _, stdout = side.check(warm)
        side.expected_stdout = stdout
        time.sleep(opts.settle)
        measure = Measure(worker_pid=side.proc.pid, broker=broker_pids())
        log(f"round {round_no}: {side.name}: timing {opts.jobs} jobs")
        results = side.batch(opts.jobs, opts.round_timeout, measure)
        result = measure.stop(side.name, round_no, opts.jobs)
        count, stdout = side.check(results)
        if count != opts.jobs:
            raise BenchError(f"{side.name}: {count} results for {opts.jobs} jobs")
        if stdout != side.expected_stdout:
            raise BenchError(f"{side.name}: stdout changed after the warm-up")
        side.stdout = stdout
    finally:
        side.stop()
    log(
        f"round {round_no}: {side.name}: {result.jobs_per_s:,.0f} jobs/s "
        f"({result.wall_s:.2f} s, submit {result.submit_s:.2f} s); CPU per job: "
        f"worker {result.worker_cpu_us_per_job:,.0f} us, broker {result.broker_cpu_us_per_job:,.0f} us, "
        f"client {result.client_cpu_us_per_job:,.0f} us; everything else {result.other_cpu_pct:.0f}% of the cores"
    )
    return result


def summarize(rounds: list[Round], side: str) -> dict:
    mine = [r for r in rounds if r.side == side]
    if not mine:
        return {}
    med = lambda key: statistics.median(getattr(r, key) for r in mine)
    return {
        "rounds": len(mine),
        "jobs_per_s": med("jobs_per_s"),
        "jobs_per_s_all": [round(r.jobs_per_s, 1) for r in mine],
        "wall_s": med("wall_s"),
        "submit_s": med("submit_s"),
        "worker_cpu_us_per_job": med("worker_cpu_us_per_job"),
        "broker_cpu_us_per_job": med("broker_cpu_us_per_job"),
        "client_cpu_us_per_job": med("client_cpu_us_per_job"),
        "other_cpu_pct": med("other_cpu_pct"),
        "machine_busy_pct": med("machine_busy_pct"),
    }


def print_table(rounds: list[Round], summary: dict, opts: argparse.Namespace) -> None:
    out = sys.stderr
    print(file=out)
    print(f"{'side':<7} {'round':>5} {'jobs/s':>9} {'wall s':>8} {'submit s':>9} "
          f"{'worker us/job':>14} {'broker us/job':>14} {'client us/job':>14} {'other %':>8}", file=out)  # fmt: skip
    for r in rounds:
        print(f"{r.side:<7} {r.round:>5} {r.jobs_per_s:>9,.0f} {r.wall_s:>8.2f} {r.submit_s:>9.2f} "
              f"{r.worker_cpu_us_per_job:>14,.0f} {r.broker_cpu_us_per_job:>14,.0f} "
              f"{r.client_cpu_us_per_job:>14,.0f} {r.other_cpu_pct:>8.1f}", file=out)  # fmt: skip
    for side in ("shoal", "celery"):
        s = summary["sides"].get(side)
        if s:
            print(f"{side:<7} {'med':>5} {s['jobs_per_s']:>9,.0f} {s['wall_s']:>8.2f} {s['submit_s']:>9.2f} "
                  f"{s['worker_cpu_us_per_job']:>14,.0f} {s['broker_cpu_us_per_job']:>14,.0f} "
                  f"{s['client_cpu_us_per_job']:>14,.0f} {s['other_cpu_pct']:>8.1f}", file=out)  # fmt: skip
    ratio = summary.get("throughput_ratio")
    if ratio is not None:
        print(f"\nthroughput ratio, Shoal / Celery (medians): {ratio:.2f}x "
              f"(goal >= 3x: {'met' if ratio >= 3 else 'NOT met'})", file=out)  # fmt: skip
    noisy = [r for r in rounds if r.other_cpu_pct > 5]
    if noisy:
        print(f"NOTE: in {len(noisy)} of {len(rounds)} batches other processes used more than 5% of the "
              "cores (column 'other %'): the machine was not quiet", file=out)  # fmt: skip
    if summary.get("trial"):
        print(f"NOTE: {summary['trial']}", file=out)
    print(file=out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=10_000, help="jobs per timed batch (default 10000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each side (default 3); medians are reported")
    p.add_argument("--warmup", type=int, default=200, help="untimed jobs per round before the timed batch")
    p.add_argument("--worker-bin", default=str(REPO / "target" / "release" / "shoal-worker"))
    p.add_argument("--amqp-url", default=os.environ.get("SHOAL_BENCH_AMQP_URL", DEFAULT_AMQP_URL))
    p.add_argument("--module", type=Path, default=REPO / "tests" / "fixtures" / "probe.wasm")
    p.add_argument("--args", nargs="*", default=["exit", "0"], help="the module's arguments (default: exit 0)")
    p.add_argument("--exit-code", type=int, default=0, help="exit code every job must end with")
    p.add_argument("--concurrency", type=int, default=os.cpu_count() or 2,
                   help="Shoal's worker.concurrency and Celery's --concurrency (default: cores)")  # fmt: skip
    p.add_argument("--celery-queue-type", choices=["classic", "quorum"], default="classic",
                   help="Celery's task queue type (default classic, Celery's default; Shoal's is quorum)")  # fmt: skip
    p.add_argument("--shoal-outputs", choices=["none", "default"], default="none",
                   help="'none' sends outputs=[] (no preopened folder, like the Celery task); "
                        "'default' leaves Shoal's default /outputs mount")  # fmt: skip
    p.add_argument("--worker-env", action="append", default=[], metavar="SHOAL_KEY=VALUE",
                   help="extra setting for shoal-worker (repeatable), e.g. SHOAL_EXECUTOR_POOLING=false")  # fmt: skip
    p.add_argument("--only", choices=["shoal", "celery"], help="measure one side only")
    p.add_argument("--tmp-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                   help="where Shoal's store and scratch folders go (default /dev/shm, a tmpfs)")  # fmt: skip
    p.add_argument("--round-timeout", type=float, help="seconds one batch may take (default 120 + jobs/20)")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds a worker may take to be ready")
    p.add_argument("--settle", type=float, default=1.0, help="seconds of rest between warm-up and timing")
    p.add_argument("--json", dest="json_file", help="write the JSON summary here instead of stdout")
    opts = p.parse_args(argv)
    worker_env = {}
    for item in opts.worker_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("SHOAL_"):
            p.error(f"--worker-env wants SHOAL_KEY=VALUE, not {item!r}")
        worker_env[key] = value
    opts.worker_env = worker_env
    if opts.round_timeout is None:
        opts.round_timeout = 120 + opts.jobs / 20
    opts.module = opts.module.resolve()
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if not opts.module.is_file():
        sys.exit(f"no module at {opts.module}")
    want_shoal = opts.only in (None, "shoal")
    want_celery = opts.only in (None, "celery")
    trial = None
    if want_shoal:
        if not os.access(opts.worker_bin, os.X_OK):
            sys.exit(f"no shoal-worker at {opts.worker_bin} (build it: cargo build --release -p shoal-worker)")
        if "/release/" not in str(Path(opts.worker_bin).resolve()):
            trial = f"shoal-worker is not a release build ({opts.worker_bin}): a trial, not a measurement"
            log("WARNING: " + trial)

    # SIGTERM behaves like Ctrl-C, so the finally below cleans up.
    def on_sigterm(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)

    tmp_root = Path(tempfile.mkdtemp(prefix="shoal-bench-", dir=opts.tmp_dir))
    sides = []
    rounds: list[Round] = []
    status = 0
    try:
        if want_shoal:
            sides.append(ShoalSide(opts, tmp_root))
        if want_celery:
            sides.append(CelerySide(opts, tmp_root))
        for round_no in range(1, opts.rounds + 1):
            # Alternate the order, so neither side always runs first.
            order = sides if round_no % 2 == 1 else list(reversed(sides))
            for side in order:
                rounds.append(measure_round(side, round_no, opts))
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    except BenchError as err:
        log(f"FAILED: {err}")
        status = 1
    finally:
        for side in sides:
            with contextlib.suppress(Exception):
                side.stop()
            with contextlib.suppress(Exception):
                side.cleanup_broker()
        shutil.rmtree(tmp_root, ignore_errors=True)

    summary = {
        "benchmark": "shoal-vs-celery",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": status == 0,
        "trial": trial,
        "config": {
            "jobs": opts.jobs,
            "rounds": opts.rounds,
            "warmup": opts.warmup,
            "module": str(opts.module),
            "args": opts.args,
            "concurrency": opts.concurrency,
            "celery_queue_type": opts.celery_queue_type,
            "celery_prefetch_multiplier": "default (4)",
            "shoal_outputs": opts.shoal_outputs,
            "worker_env": opts.worker_env,
            "tmp_dir": opts.tmp_dir,
            "worker_bin": opts.worker_bin,
            "worker_version": worker_version(opts.worker_bin) if want_shoal else None,
        },
        "machine": {"cores": os.cpu_count(), "kernel": platform.release(), "loadavg_end": os.getloadavg()},
        "versions": versions(),
        "sides": {side: summarize(rounds, side) for side in ("shoal", "celery")},
        "rounds": [asdict(r) for r in rounds],
    }
    s, c = summary["sides"]["shoal"], summary["sides"]["celery"]
    summary["throughput_ratio"] = s["jobs_per_s"] / c["jobs_per_s"] if s and c else None
    if rounds:
        print_table(rounds, summary, opts)
    text = json.dumps(summary, indent=2)
    if opts.json_file:
        Path(opts.json_file).write_text(text + "\n")
        log(f"JSON summary written to {opts.json_file}")
    else:
        print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
