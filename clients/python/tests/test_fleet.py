"""The client against a real broker, real stores and real shoal-worker
processes (conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from shoal_client import BrokerUnavailable, Client, JobRejected, LocalStore, ShoalError, Timeout, Unroutable

from conftest import (
    AMQP_URL,
    REPO,
    HELLO,
    PROBE,
    SUBMIT_BIN,
    Fleet,
    Proxy,
    close_connections,
    delete_topology,
    queue_depth,
    topology_names,
    unique,
)


# ----------------------------------------------------------------- uploads


def _folder(root: Path) -> Path:
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "x.txt").write_text("inside the folder\n")
    (data / "top.txt").write_text("top\n")
    return data


def test_upload_file_and_folder_then_run_with_a_local_folder_store(local_fleet: Fleet, tmp_path: Path) -> None:
    cache: Path = local_fleet.cache_dir  # type: ignore[attr-defined]
    note = tmp_path / "note.txt"
    note.write_text("a file input\n")
    with local_fleet.client() as client:
        sha = client.upload(note)
        entry = cache / "cache/sha256" / sha.removeprefix("sha256:")
        assert sha == "sha256:" + hashlib.sha256(note.read_bytes()).hexdigest()
        assert entry.read_bytes() == note.read_bytes()
        before = entry.stat().st_mtime_ns
        assert client.upload(note) == sha
        assert entry.stat().st_mtime_ns == before, "content already there is not sent again"

        folder = client.upload(_folder(tmp_path))
        ids = client.submit_many(
            [
                # A folder uploaded earlier, by hash: the client remembers to unpack it.
                {"module": PROBE, "args": ["ls", "/inputs/data"], "inputs": [(folder, "/inputs/data")]},
                {"module": PROBE, "args": ["cat", "/inputs/data/sub/x.txt"], "inputs": [(folder, "/inputs/data")]},
                # A local path uploaded on the way, at its default /inputs/<name>.
                {"module": PROBE, "args": ["cat", "/inputs/note.txt"], "inputs": [(note, None)]},
                # A folder path given directly.
                {"module": PROBE, "args": ["cat", "/inputs/data/top.txt"], "inputs": [tmp_path / "data"]},
            ]
        )
        results = [client.wait(i, timeout=60) for i in ids]
    assert [r.status for r in results] == ["succeeded"] * 4, [r.raw for r in results]
    assert sorted(results[0].stdout.split()) == ["sub", "top.txt"]
    assert results[1].stdout == "inside the folder\n"
    assert results[2].stdout == "a file input\n"
    assert results[3].stdout == "top\n"


def test_upload_and_run_with_the_s3_store(s3_fleet: Fleet, s3_bucket: str, tmp_path: Path) -> None:
    import boto3
    import botocore
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_fleet.client_store["s3_endpoint"],
        region_name="us-east-1",
        config=Config(signature_version=botocore.UNSIGNED, s3={"addressing_style": "path"}),
    )
    with s3_fleet.client() as client:
        module = client.upload(PROBE)
        head = s3.head_object(Bucket=s3_bucket, Key=f"cache/sha256/{module.removeprefix('sha256:')}")
        assert head["ContentLength"] == PROBE.stat().st_size
        folder = client.upload(_folder(tmp_path))
        cat = client.submit(module, ["cat", "/inputs/d/sub/x.txt"], inputs=[(folder, "/inputs/d")])
        # More stdout than travels inline (64 KiB): the result points into the store.
        flood = client.submit(module, ["flood", "70000"])
        hello = client.submit(HELLO, ["s3"], env={"HELLO": "bucket"})
        got = client.wait(cat, timeout=60)
        assert (got.status, got.stdout) == ("succeeded", "inside the folder\n"), got.raw
        big = client.wait(flood, timeout=60)
        assert big.status == "succeeded", big.raw
        assert "location" in big.raw["stdout"] and "text" not in big.raw["stdout"]
        assert big.stdout == "x" * 70000
        dl = client.download(flood, tmp_path / "flood")
        assert (dl / "stdout").read_bytes() == b"x" * 70000
        assert json.loads((dl / "result.json").read_text()) == big.raw
        greeting = client.wait(hello, timeout=60)
        assert "HELLO = bucket" in greeting.stdout
        stored = client.stored_result(hello)
        assert stored is not None and stored.raw == greeting.raw


# ----------------------------------------------------------------- statuses


def test_succeeded_with_stdout_text(local_fleet: Fleet) -> None:
    with local_fleet.client() as client:
        result = client.run(HELLO, ["shoal", "fleet"], env={"HELLO": "world"}, timeout=60)
    assert result.status == "succeeded" and result.succeeded
    assert result.exit_code == 0
    assert result.error_kind is None and result.error_message is None
    assert result.stdout == "hello from hello.wasm\narg[1] = shoal\narg[2] = fleet\nHELLO = world\n"
    assert result.stderr == ""
    # The publish-time headers reached the worker as numbers it reads: the
    # queue time is the gap between submitted_at and started_at, which,
    # with finished_at, are UTC datetimes in order (one machine, one clock).
    queued = result.usage["durations"]["queue_secs"]
    assert queued >= 0
    submitted, started, finished = result.submitted_at, result.started_at, result.finished_at
    assert submitted is not None and started is not None and finished is not None, result.raw
    assert submitted.utcoffset() == timedelta(0)
    assert submitted <= started <= finished
    assert abs((started - submitted).total_seconds() - queued) < 0.01


def test_failed_with_a_nonzero_exit(local_fleet: Fleet) -> None:
    with local_fleet.client() as client:
        result = client.run(PROBE, ["exit", "3"], timeout=60)
    assert (result.status, result.exit_code, result.error_kind) == ("failed", 3, "nonzero_exit")


def test_rejected_by_the_worker_for_what_the_schema_cannot_check(local_fleet: Fleet) -> None:
    with local_fleet.client() as client:
        # Valid to the schema; the worker refuses an output mount over /inputs.
        job = client.submit(PROBE, ["exit", "0"], outputs=[("out", "/inputs/out")])
        result = client.wait(job, timeout=60)
    assert result.status == "rejected", result.raw
    assert result.error_kind == "invalid_job"
    assert result.exit_code is None
    assert "/outputs" in (result.error_message or "") or "/inputs" in (result.error_message or "")


def test_a_job_failing_the_schema_raises_and_nothing_is_published() -> None:
    names = topology_names()
    try:
        with Client(AMQP_URL, declare="full", **names) as client:  # no worker: jobs stay queued
            with pytest.raises(JobRejected) as caught:
                client.submit("sha256:" + "ab" * 32, env={"BAD=NAME": "x"}, limits={"fuel": 0})
            assert any("/limits/fuel" in e for e in caught.value.errors)
            with pytest.raises(JobRejected):
                client.submit("sha256:" + "ab" * 32, job_id="not a valid id")
            with pytest.raises(JobRejected):  # one bad job fails the whole batch, before anything goes out
                client.submit_many(
                    [{"module": "sha256:" + "ab" * 32}, {"module": "sha256:" + "ab" * 32, "outputs": [("x", "rel")]}]
                )
            assert queue_depth(names["job_queue"]) == 0
            client.submit("sha256:" + "ab" * 32)
            assert queue_depth(names["job_queue"]) == 1  # the count does see a published job
    finally:
        delete_topology(names)


def test_timeout_then_the_result_still_arrives(local_fleet: Fleet) -> None:
    with local_fleet.client() as client:
        job = client.submit(PROBE, ["sleep", "2"])
        started = time.monotonic()
        with pytest.raises(Timeout):
            client.wait(job, timeout=0.3)
        assert 0.25 < time.monotonic() - started < 2
        assert client.wait(job, timeout=60).status == "succeeded"


def test_submit_many_pipelines_a_hundred_jobs(local_fleet: Fleet) -> None:
    with local_fleet.client() as client:
        started = time.monotonic()
        ids = client.submit_many([{"module": PROBE, "args": ["args", f"n{i}"]} for i in range(100)])
        published = time.monotonic() - started
        assert len(set(ids)) == 100
        results = {i: client.wait(i, timeout=60) for i in reversed(ids)}  # out of order: others are kept
    for n, job in enumerate(ids):
        assert results[job].status == "succeeded", results[job].raw
        assert results[job].stdout == f"probe.wasm\nargs\nn{n}\n"
    assert published < 10, f"publishing 100 jobs took {published:.1f} s"


# ----------------------------------------------------------------- downloads


def test_download_lays_out_the_result_as_submit_get_and_verifies_outputs(local_fleet: Fleet, tmp_path: Path) -> None:
    with local_fleet.client() as client:
        job = client.submit(
            PROBE,
            ["copytree", "/inputs/data", "/outputs"],
            inputs=[(_folder(tmp_path), None)],
            job_id=unique("dl"),
        )
        result = client.wait(job, timeout=60)
        assert result.status == "succeeded", result.raw
        (mount,) = result.outputs
        assert [f["path"] for f in mount["files"]] == ["sub/x.txt", "top.txt"]
        mine = client.download(job, tmp_path / "mine")

        # The same layout as the Rust CLI's, file for file.
        if SUBMIT_BIN.is_file():
            theirs = tmp_path / "theirs"
            out = subprocess.run(
                [str(SUBMIT_BIN), "get", job, "--download", str(theirs)],
                env={"PATH": os.environ.get("PATH", ""), **local_fleet.env()},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr

            def files(root: Path) -> dict[str, bytes]:
                return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

            mine_files, their_files = files(mine), files(theirs)
            assert sorted(mine_files) == sorted(their_files)
            for name in mine_files:
                if name == "result.json":
                    assert json.loads(mine_files[name]) == json.loads(their_files[name])
                else:
                    assert mine_files[name] == their_files[name], name
        assert (mine / "outputs/sub/x.txt").read_text() == "inside the folder\n"
        assert (mine / "exitCode").read_text() == "0"
        assert json.loads((mine / "result.json").read_text()) == result.raw

        # Downloading again replaces the earlier result; a foreign folder is refused.
        client.download(job, mine)
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        (foreign / "keep.txt").write_text("mine")
        with pytest.raises(ShoalError, match="not empty"):
            client.download(job, foreign)

        # A stored output that does not match the manifest is refused.
        stored = local_fleet.cache_dir / "results" / job / "outputs/top.txt"  # type: ignore[attr-defined]
        stored.write_text("tampered")
        with pytest.raises(ShoalError, match="manifest"):
            client.download(job, tmp_path / "tampered")


# ----------------------------------------------------------------- connections


def _until(predicate, within: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_wait_survives_the_broker_closing_the_clients_connections(local_fleet: Fleet) -> None:
    with local_fleet.client() as uploader:
        module = uploader.upload(PROBE)
    # No store: the result can only come through the reply queue.
    with local_fleet.client(cache_dir=None) as client:
        assert client.store is None
        job = client.submit(module, ["sleep", "3"])
        # Both the publishing and the reply connection go, from the broker's side.
        assert close_connections(client.connection_name) == 2
        result = client.wait(job, timeout=60)
        assert result.status == "succeeded", result.raw
        assert _until(lambda: client.stats()["reconnects"] >= 1), client.stats()
        assert client.stats()["results_from_queue"] == 1
        # The same reply queue, and publishing works again.
        assert queue_depth(client.reply_queue) is not None
        assert client.run(module, ["exit", "0"], timeout=60).status == "succeeded"


def test_a_result_published_while_the_client_is_cut_off_waits_in_its_reply_queue(local_fleet: Fleet) -> None:
    with local_fleet.client() as uploader:
        module = uploader.upload(PROBE)
    proxy = Proxy(("127.0.0.1", 5672))
    url = AMQP_URL.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    try:
        with local_fleet.client(amqp_url=url, cache_dir=None) as client:
            job = client.submit(module, ["exit", "7"])
            proxy.down()  # the client is away, and cannot come back yet
            # Meanwhile the worker runs the job and publishes its result to
            # the reply queue, which outlives the client's connection.
            assert _until(lambda: queue_depth(client.reply_queue) == 1), "the result never reached the reply queue"
            with pytest.raises(Timeout):
                client.wait(job, timeout=0.5)
            proxy.up = True
            result = client.wait(job, timeout=30)
            assert (result.status, result.exit_code) == ("failed", 7)
            assert client.stats()["reconnects"] >= 1
            assert client.run(module, ["exit", "0"], timeout=60).status == "succeeded"
    finally:
        proxy.close()


def test_wait_finds_the_result_in_the_store_while_the_broker_is_unreachable(local_fleet: Fleet) -> None:
    proxy = Proxy(("127.0.0.1", 5672))
    url = AMQP_URL.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    try:
        with local_fleet.client(amqp_url=url) as client:
            job = client.submit(PROBE, ["sleep", "1"])
            proxy.down()  # cut off, and no reconnection succeeds
            started = time.monotonic()
            result = client.wait(job, timeout=30)
            assert result.status == "succeeded", result.raw
            assert time.monotonic() - started < 10
            assert client.stats()["results_from_store"] == 1
            # Reachable again: the client reconnects by itself and publishes.
            proxy.up = True
            assert client.run(PROBE, ["exit", "0"], timeout=60).status == "succeeded"
    finally:
        proxy.close()


def test_a_job_for_a_queue_that_does_not_exist_comes_back_unroutable() -> None:
    names = topology_names()
    with Client(AMQP_URL, declare="none", **names) as client:
        with pytest.raises(Unroutable, match="route"):
            client.submit("sha256:" + "ab" * 32)
        with pytest.raises(Unroutable) as caught:
            client.submit_many([{"module": "sha256:" + "ab" * 32} for _ in range(3)])
        assert caught.value.confirmed == []  # type: ignore[attr-defined]
    assert queue_depth(names["job_queue"]) is None


def test_declaring_passively_needs_the_fleets_topology() -> None:
    with pytest.raises(ShoalError, match="404"):
        Client(AMQP_URL, **topology_names(), connect_timeout=10)


def test_the_broker_holds_exactly_what_topology_json_says_after_a_full_declare() -> None:
    import pika

    names = topology_names()
    spec = json.loads((Path(__file__).resolve().parents[3] / "schemas/topology.json").read_text())
    try:
        with Client(AMQP_URL, declare="full", **names):
            pass
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            (jobs,) = [q for q in spec["queues"] if q["role"] == "jobs"]
            arguments = {k: v["value"] for k, v in jobs["arguments"].items()}
            arguments["x-dead-letter-exchange"] = names["dead_letter"]
            # The broker accepts topology.json's declaration as equivalent…
            conn.channel().queue_declare(names["job_queue"], durable=True, arguments=arguments)
            # …and refuses any other (so the check above means something).
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                conn.channel().queue_declare(names["job_queue"], durable=True, arguments=dict(arguments, **{"x-delivery-limit": 6}))
            assert refused.value.reply_code == 406
            (results,) = [e for e in spec["exchanges"] if e["role"] == "results"]
            conn.channel().exchange_declare(names["results_exchange"], exchange_type=results["type"], durable=True)
            (control,) = [e for e in spec["exchanges"] if e["role"] == "control"]
            conn.channel().exchange_declare(names["control_exchange"], exchange_type=control["type"], durable=True)
        finally:
            conn.close()
        # And a worker's own declaration agrees: a client can connect passively.
        with Client(AMQP_URL, **names):
            pass
    finally:
        delete_topology(names)


# ----------------------------------------------------------------- the rest


def test_from_env_reads_the_workers_variables(local_fleet: Fleet) -> None:
    env = dict(local_fleet.env())
    with Client.from_env(env, connection_name=unique("pytest-env")) as client:
        assert client.topology.job_queue == local_fleet.names["job_queue"]
        assert client.topology.control_exchange == local_fleet.names["control_exchange"]
        assert client.run(PROBE, ["exit", "0"], timeout=60).status == "succeeded"
    defaults = Client.from_env({"SHOAL_AMQP_URL": AMQP_URL}, declare="none")
    try:
        topology = defaults.topology
        assert (topology.job_queue, topology.results_exchange, topology.dead_letter, topology.control_exchange) == (
            "shoal.jobs",
            "shoal.results",
            "shoal.dead",
            "shoal.control",
        )
        assert defaults.topology.delivery_limit == 10
        assert isinstance(defaults.store, LocalStore) and str(defaults.store.root) == "shoal-cache"
    finally:
        defaults.close()
    with pytest.raises(BrokerUnavailable):
        Client.from_env({"SHOAL_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2f"}, connect_timeout=5)


def test_closing_deletes_the_reply_queue(local_fleet: Fleet) -> None:
    client = local_fleet.client()
    with client:
        queue = client.reply_queue
        assert queue_depth(queue) == 0
    assert queue_depth(queue) is None
    with pytest.raises(ShoalError, match="closed"):
        client.submit(PROBE)
    with pytest.raises(ShoalError, match="closed"):
        client.cancel("anything")


def test_the_batch_example_checks_every_result(local_fleet: Fleet) -> None:
    example = Path(__file__).resolve().parents[1] / "examples/batch.py"
    out = subprocess.run(
        [sys.executable, str(example), str(PROBE), "40", "--batch", "16"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}, **local_fleet.env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("batch: 40 jobs, 40 succeeded, 0 mismatched;"), out.stdout


def test_sources_take_every_form_the_schema_knows(local_fleet: Fleet, tmp_path: Path) -> None:
    cid = "bafkreihgis2any7vkmiyoe74sieojlf4bzcld5fmo5bl6rwtib5eie62ji"
    v0 = "Qm" + "a" * 44
    with local_fleet.client() as client:
        assert client.source("https://example.com/data.csv") == {"url": "https://example.com/data.csv"}
        assert client.source("s3://bucket/key/") == {"s3": "s3://bucket/key/"}
        assert client.source(cid) == {"cid": cid}
        assert client.source(f"ipfs://{cid}/inside") == {"cid": f"{cid}/inside"}
        assert client.source(v0) == {"cid": v0}
        assert client.source("sha256:" + "AB" * 32) == {"sha256": "ab" * 32}
        assert client.source({"inline": "aGk=", "name": "hi.txt"}) == {"inline": "aGk=", "name": "hi.txt"}
        local = tmp_path / "x.bin"
        local.write_bytes(b"\0\1")
        assert client.source(local) == {"sha256": hashlib.sha256(b"\0\1").hexdigest(), "name": "x.bin"}
        with pytest.raises(ShoalError, match="no such file"):
            client.source(str(tmp_path / "missing.wasm"))
        with pytest.raises(ShoalError, match="64 hex"):
            client.source("sha256:abc")
        with pytest.raises(ShoalError, match="is a folder"):
            client.submit(tmp_path)
        # An inline input, and an import module by name, through a real worker.
        result = client.run(
            REPO / "tests/fixtures/uses_mathlib.wat",
            imports={"mathlib": REPO / "tests/fixtures/mathlib.wat"},
            timeout=60,
        )
        # It exits with mathlib's add(40, 2).
        assert (result.status, result.exit_code) == ("failed", 42), result.raw
        inline = client.run(
            PROBE, ["cat", "/inputs/hi.txt"], inputs=[({"inline": "aGkK", "name": "hi.txt"}, None)], timeout=60
        )
        assert inline.stdout == "hi\n", inline.raw
