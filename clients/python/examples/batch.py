#!/usr/bin/env python3
"""A service in miniature: hand a Shoal fleet N jobs and collect every result.

Start a worker, then (broker and store from the same SHOAL_* variables as
the worker and `submit`, see docs/CONFIG.md):

    export SHOAL_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f
    export SHOAL_CACHE_DIR=/srv/shoal-cache          # or SHOAL_CACHE_S3_BUCKET + SHOAL_CACHE_S3_ENDPOINT
    python3 clients/python/examples/batch.py                       # 1,000 jobs of examples/hello/hello.wasm
    python3 clients/python/examples/batch.py tests/fixtures/probe.wasm 200

Job i runs the module with the arguments `args job-<i>` (hello.wasm prints
its arguments, and so does the probe fixture's `args` command), so every
result can be checked against the job it answers: status succeeded, exit 0,
and its own argument in stdout. Prints one summary line; exits 1 on any
mismatch.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from shoal_client import Client, ShoalError

REPO = Path(__file__).resolve().parents[3]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", nargs="?", default=str(REPO / "examples/hello/hello.wasm"), help="a .wasm file")
    parser.add_argument("jobs", nargs="?", type=int, default=1000, help="how many jobs (default 1000)")
    parser.add_argument("--batch", type=int, default=250, help="jobs per submit_many call (default 250)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for all results")
    options = parser.parse_args()

    run_id = uuid.uuid4().hex[:12]
    with Client.from_env() as client:
        # The module goes into the store once, by hash; every job names it.
        module = client.upload(options.module)
        started = time.monotonic()
        ids: list[str] = []
        for first in range(0, options.jobs, options.batch):
            ids += client.submit_many(
                {
                    "module": module,
                    "args": ["args", f"job-{i}"],
                    # Our own ids: a retried batch does not run different jobs twice.
                    "job_id": f"batch-{run_id}-{i}",
                }
                for i in range(first, min(first + options.batch, options.jobs))
            )
        published = time.monotonic() - started
        deadline = started + options.timeout
        mismatched: list[str] = []
        statuses: dict[str, int] = {}
        for i, job_id in enumerate(ids):
            result = client.wait(job_id, timeout=max(0.0, deadline - time.monotonic()))
            statuses[result.status] = statuses.get(result.status, 0) + 1
            if result.status != "succeeded" or result.exit_code != 0 or f"job-{i}\n" not in result.stdout:
                mismatched.append(f"{job_id}: {result.status} exit {result.exit_code} {result.error_message or ''}")
        elapsed = time.monotonic() - started

    for line in mismatched[:10]:
        print(f"mismatch: {line}", file=sys.stderr)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    print(
        f"batch: {len(ids)} jobs, {counts}, {len(mismatched)} mismatched; "
        f"published in {published:.2f} s ({len(ids) / max(published, 1e-9):.0f}/s), "
        f"all results in {elapsed:.2f} s ({len(ids) / max(elapsed, 1e-9):.0f} jobs/s)"
    )
    return 1 if mismatched or len(ids) != options.jobs else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ShoalError as e:
        print(f"batch: {e}", file=sys.stderr)
        sys.exit(1)
