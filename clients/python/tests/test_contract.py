"""The wire contract, without the services: the shipped schema copies, the
topology the client declares, the AMQP properties of a job, the tar format,
client-side validation."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pika.data
import pika.spec
import pytest

from shoal_client import Client, JobRejected, Topology, job_properties, pack_dir
from shoal_client import contract

from conftest import REPO, SUBMIT_BIN


@pytest.mark.parametrize("name", contract.SCHEMA_FILES)
def test_shipped_schema_copies_are_byte_identical_to_the_repository(name: str) -> None:
    original = (REPO / "schemas" / name).read_bytes()
    assert contract.schema_bytes(name) == original, (
        f"clients/python/src/shoal_client/schemas/{name} differs from schemas/{name}: copy it again"
    )


def _declared_as_json(topology: Topology) -> dict:
    """What the client hands pika, in topology.json's shape, each argument's
    type read back from pika's own encoding of it."""
    types = {b"S": "longstr", b"I": "signed-32", b"l": "signed-64"}

    def typed(arguments: dict) -> dict:
        out = {}
        for key, value in arguments.items():
            pieces: list[bytes] = []
            pika.data.encode_value(pieces, value)
            encoded = b"".join(pieces)
            out[key] = {"type": types[encoded[:1]], "value": value if isinstance(value, str) else int(value)}
        return out

    exchanges, queues = [], []
    roles = {
        topology.dead_letter: "dead_letter",
        topology.results_exchange: "results",
        topology.control_exchange: "control",
        topology.job_queue: "jobs",
    }
    for method, kw in topology.declarations():
        if method == "exchange_declare":
            exchanges.append(
                {
                    "role": roles[kw["exchange"]],
                    "name": kw["exchange"],
                    "type": kw["exchange_type"],
                    "durable": kw["durable"],
                    "auto_delete": kw["auto_delete"],
                    "arguments": typed(kw["arguments"]),
                }
            )
        elif method == "queue_declare":
            queues.append(
                {
                    "role": roles[kw["queue"]],
                    "name": kw["queue"],
                    "durable": kw["durable"],
                    "exclusive": kw["exclusive"],
                    "auto_delete": kw["auto_delete"],
                    "arguments": typed(kw["arguments"]),
                    "bindings": [],
                }
            )
        elif method == "queue_bind":
            queue = next(q for q in queues if q["name"] == kw["queue"])
            queue["bindings"].append({"exchange": kw["exchange"], "routing_key": kw["routing_key"]})
        else:
            raise AssertionError(method)
    return {"protocol": 1, "exchanges": exchanges, "queues": queues}


def test_the_declared_topology_is_exactly_topology_json() -> None:
    spec = json.loads((REPO / "schemas/topology.json").read_text())
    spec.pop("$comment")
    assert Topology().as_json() == spec
    # And what actually goes to pika, with pika's field types, is the same.
    assert _declared_as_json(Topology()) == spec


def test_a_renamed_topology_changes_names_only() -> None:
    spec = json.loads((REPO / "schemas/topology.json").read_text())
    renamed = Topology(job_queue="j", results_exchange="r", dead_letter="d", control_exchange="c")
    declared = _declared_as_json(renamed)
    assert [e["name"] for e in declared["exchanges"]] == ["d", "r", "c"]
    assert [e["type"] for e in declared["exchanges"]] == [e["type"] for e in spec["exchanges"]]
    assert [q["name"] for q in declared["queues"]] == ["d", "j"]
    jobs = declared["queues"][1]["arguments"]
    assert jobs["x-dead-letter-exchange"] == {"type": "longstr", "value": "d"}
    assert declared["queues"][0]["bindings"] == [{"exchange": "d", "routing_key": ""}]
    # Types and flags as in topology.json.
    for got, want in zip(declared["queues"], spec["queues"], strict=True):
        assert {k: v["type"] for k, v in got["arguments"].items()} == {
            k: v["type"] for k, v in want["arguments"].items()
        }
        assert (got["durable"], got["exclusive"], got["auto_delete"]) == (
            want["durable"],
            want["exclusive"],
            want["auto_delete"],
        )


def test_passive_declarations_only_check_existence() -> None:
    steps = Topology().declarations(passive=True)
    assert all(kw.get("passive") is True for _, kw in steps)
    assert [m for m, _ in steps] == ["exchange_declare", "queue_declare", "exchange_declare", "queue_declare"]
    assert all("arguments" not in kw for _, kw in steps)
    # Not the control exchange: workers from before cancel lack it, and
    # submitting needs nothing of it. Cancelling checks it on its own.
    assert "shoal.control" not in [kw.get("exchange") for _, kw in steps]
    assert Topology().control_declaration(passive=True) == (
        "exchange_declare",
        {"exchange": "shoal.control", "passive": True},
    )
    assert Topology(control_exchange="c").control_declaration() == (
        "exchange_declare",
        {"exchange": "c", "exchange_type": "fanout", "durable": True, "auto_delete": False, "arguments": {}},
    )


def test_statuses_and_error_kinds_are_the_result_schemas() -> None:
    schema = json.loads((REPO / "schemas/result.schema.json").read_text())
    assert list(contract.STATUSES) == schema["properties"]["status"]["enum"]
    kinds = schema["properties"]["error"]["properties"]["kind"]["enum"]
    assert list(contract.ERROR_KINDS) == kinds
    assert "cancelled" in contract.STATUSES and "cancelled" in contract.ERROR_KINDS
    # A cancelled result: no exit code, error kind cancelled.
    cancelled = {
        "schema": "shoal.result/v1",
        "job_id": "j1",
        "status": "cancelled",
        "error": {"kind": "cancelled", "message": "cancelled by an operator before it ran (submit cancel)"},
        "worker": "w",
        "attempt": 1,
    }
    assert contract.result_errors(cancelled) == []


def test_job_properties_are_the_rust_clients() -> None:
    props = job_properties("job-1", "shoal.reply.x", now=1_764_600_000.123)
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.message_id == props.correlation_id == "job-1"
    assert props.reply_to == "shoal.reply.x"
    assert props.type == "shoal.job/v1"
    assert props.timestamp == 1_764_600_000
    # The header travels as an AMQP signed 64-bit integer ('l'), the type
    # worker/src/consume.rs reads (LongLongInt); pika would pick 'I' for a
    # small int, and a signed 32-bit header is ignored by the worker.
    encoded = b"".join(props.encode())
    needle = b"\x14x-shoal-published-ms" + b"l" + (1_764_600_000_123).to_bytes(8, "big", signed=True)
    assert needle in encoded
    needle = b"\x14x-shoal-published-us" + b"l" + (1_764_600_000_123_000).to_bytes(8, "big", signed=True)
    assert needle in encoded
    decoded = pika.spec.BasicProperties()
    decoded.decode(encoded)
    assert decoded.headers == {
        "x-shoal-published-ms": 1_764_600_000_123,
        "x-shoal-published-us": 1_764_600_000_123_000,
    }


def _tree(root: Path) -> None:
    (root / "a/b").mkdir(parents=True)
    (root / "a/b/c.txt").write_text("hello\n")
    (root / "a.txt").write_text("x")
    (root / "empty").mkdir()
    (root / ("L" * 120)).write_text("long name")
    deep = root / ("d" * 90) / ("e" * 80)
    deep.mkdir(parents=True)
    (deep / "f").write_text("deep")
    (root / "ünï.txt").write_text("utf-8 name")
    os.symlink("a.txt", root / "link")  # left out, as the Rust packer does


def test_folders_pack_byte_for_byte_as_submit_packs_them(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    archive = pack_dir(src)
    assert pack_dir(src) == archive  # deterministic
    names = tarfile.open(fileobj=__import__("io").BytesIO(archive)).getnames()
    assert "link" not in names and "a/b/c.txt" in names and "L" * 120 in names
    if not SUBMIT_BIN.is_file():
        pytest.skip(f"{SUBMIT_BIN} not built")
    cache = tmp_path / "cache"
    out = subprocess.run(
        [str(SUBMIT_BIN), "upload", "--json", str(src)],
        env={"PATH": os.environ.get("PATH", ""), "SHOAL_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    (listed,) = json.loads(out.stdout)
    assert listed["sha256"] == "sha256:" + hashlib.sha256(archive).hexdigest()
    assert listed["source"]["unpack"] == "tar"
    assert (cache / "cache/sha256" / listed["source"]["sha256"]).read_bytes() == archive


def test_schema_violations_raise_job_rejected_naming_the_field() -> None:
    good = {"schema": "shoal.job/v1", "id": "ok-1", "module": {"sha256": "ab" * 32}}
    Client.validate(good)
    bad = dict(good, limits={"fuel": 0}, env={"A=B": "x"})
    with pytest.raises(JobRejected) as caught:
        Client.validate(bad)
    assert any(e.startswith("/limits/fuel") for e in caught.value.errors), caught.value.errors
    assert any(e.startswith("/env") for e in caught.value.errors), caught.value.errors
    with pytest.raises(JobRejected):
        Client.validate({"schema": "shoal.job/v1", "module": {"sha256": "AB" * 32}})
