"""The Celery side of the Shoal-versus-Celery benchmark (see README.md).

A Celery 5 app on RabbitMQ that runs one WASI preview1 module with
wasmtime-py. What the issue asks for, and how:

* prefork pool with 2 processes: given on the worker's command line by
  bench.py (``--pool prefork --concurrency 2``);
* ``task_acks_late = True``: a task is acked after it ran, as Shoal acks a
  job after its result is published;
* publisher confirms: ``broker_transport_options = {"confirm_publish": True}``;
* results back over AMQP: the ``rpc://`` result backend (a reply queue per
  client, as Shoal's submitter has);
* ``worker_prefetch_multiplier`` is left at Celery's default (4, so the
  worker prefetches 4 x 2 = 8 messages);
* the Engine, the compiled Module, the Linker (with WASI defined) and an
  InstancePre are made ONCE per worker process, on ``worker_process_init``
  (never in the parent before the fork, nor in the benchmark's client
  process, which imports this file only to publish);
* per task: a fresh Store and a fresh WasiConfig (argv, stdout and stderr
  captured in memory, no environment, no preopened folders), the same fuel
  and linear-memory limits as Shoal's defaults, then ``_start``.

Settings come from environment variables so that bench.py's client process
and the ``celery worker`` subprocess it starts agree:

``SHOAL_BENCH_AMQP_URL``    broker (default amqp://guest:guest@127.0.0.1:5672//)
``SHOAL_BENCH_CELERY_QUEUE`` task queue and exchange name (bench.py makes a unique one)
``SHOAL_BENCH_CELERY_QUEUE_TYPE`` ``classic`` (Celery's default) or ``quorum``
``SHOAL_BENCH_WASM``        the module to run (default tests/fixtures/probe.wasm)
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_process_init

REPO = Path(__file__).resolve().parents[3]

AMQP_URL = os.environ.get("SHOAL_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = os.environ.get("SHOAL_BENCH_CELERY_QUEUE", "shoal-bench-celery")
QUEUE_TYPE = os.environ.get("SHOAL_BENCH_CELERY_QUEUE_TYPE", "classic")
WASM = Path(os.environ.get("SHOAL_BENCH_WASM", str(REPO / "tests" / "fixtures" / "probe.wasm")))

# Shoal's defaults (docs/CONFIG.md: limits.default.fuel, limits.default.memory_bytes),
# so the guest runs under the same metering and ceiling on both sides.
FUEL = 10_000_000_000
MEMORY_BYTES = 256 * 1024 * 1024

app = Celery("shoal_bench", broker=AMQP_URL, backend="rpc://")
app.conf.update(
    task_acks_late=True,
    broker_transport_options={"confirm_publish": True},
    # worker_prefetch_multiplier: Celery's default (4), deliberately not set.
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_default_queue_type=QUEUE_TYPE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

# Per worker process: made by init_wasm(), never shared across a fork.
_engine = None
_instance_pre = None
_argv0 = WASM.name


def init_wasm() -> None:
    """Compile the module and link WASI: once per process."""
    global _engine, _instance_pre
    import wasmtime

    config = wasmtime.Config()
    config.consume_fuel = True  # Shoal meters fuel by default
    engine = wasmtime.Engine(config)
    module = wasmtime.Module.from_file(engine, str(WASM))
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    _instance_pre = linker.instantiate_pre(module)
    _engine = engine


@worker_process_init.connect
def _on_worker_process_init(**_kwargs) -> None:
    init_wasm()


@app.task(name="shoal_bench.run_wasm")
def run_wasm(args):
    """Run the module's ``_start`` with ``args``; return its exit code and output."""
    import wasmtime

    if _instance_pre is None:  # a pool without worker_process_init (solo, threads)
        init_wasm()
    stdout = bytearray()
    stderr = bytearray()
    wasi = wasmtime.WasiConfig()
    wasi.argv = [_argv0, *args]
    wasi.stdout_custom = stdout.extend
    wasi.stderr_custom = stderr.extend
    store = wasmtime.Store(_engine)
    store.set_fuel(FUEL)
    store.set_limits(memory_size=MEMORY_BYTES)
    store.set_wasi(wasi)
    try:
        instance = _instance_pre.instantiate(store)
        instance.exports(store)["_start"](store)
        exit_code = 0
    except wasmtime.ExitTrap as exit_trap:
        exit_code = exit_trap.code
    return {
        "exit_code": exit_code,
        "stdout": stdout.decode("utf-8", "replace"),
        "stderr": stderr.decode("utf-8", "replace"),
    }
