"""The wire contract, as shipped with this package: copies of the
repository's ``schemas/*.json`` (a test checks they are byte-identical to
the originals), loaded once, and the job validator built from them."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema

JOB_SCHEMA = "shoal.job/v1"
RESULT_SCHEMA = "shoal.result/v1"
STATE_SCHEMA = "shoal.state/v1"
#: Control messages to every worker (``schemas/src/control.rs``): the
#: message's ``schema`` and its AMQP ``type``.
CONTROL_SCHEMA = "shoal.control/v1"
#: Entries of the store's job index (``jobs/``).
INDEX_SCHEMA = "shoal.index/v1"

#: Every ``status`` of ``result.schema.json``: ``cancelled`` is an
#: operator's cancel (:meth:`shoal_client.Client.cancel`), never retried.
STATUSES = ("succeeded", "failed", "error", "rejected", "cancelled")
#: Every ``error.kind`` (docs/ERRORS.md); a cancelled job's is ``cancelled``.
ERROR_KINDS = (
    "nonzero_exit",
    "trap",
    "out_of_fuel",
    "memory_limit",
    "timeout",
    "invalid_module",
    "missing_export",
    "invalid_job",
    "input_unavailable",
    "input_too_large",
    "input_refused",
    "integrity",
    "output_limit",
    "internal",
    "cancelled",
)

#: Files shipped in ``shoal_client/schemas/``.
SCHEMA_FILES = ("job.schema.json", "result.schema.json", "state.schema.json", "topology.json")


def schema_bytes(name: str) -> bytes:
    """The shipped copy of ``schemas/<name>``, byte for byte."""
    if name not in SCHEMA_FILES:
        raise KeyError(name)
    return resources.files("shoal_client.schemas").joinpath(name).read_bytes()


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The shipped ``schemas/<name>``, parsed."""
    loaded: dict[str, Any] = json.loads(schema_bytes(name))
    return loaded


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = load(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def _pointer(path: Any) -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    return "/" + "/".join(parts) if parts else "/"


def job_errors(message: Any) -> list[str]:
    """Every way ``message`` fails ``job.schema.json``, each as
    ``"<JSON pointer>: <what is wrong>"``; empty when it is valid."""
    errors = sorted(_validator("job.schema.json").iter_errors(message), key=lambda e: list(e.path))
    return [f"{_pointer(e.absolute_path)}: {e.message}" for e in errors]


def result_errors(message: Any) -> list[str]:
    """Every way ``message`` fails ``result.schema.json``."""
    errors = _validator("result.schema.json").iter_errors(message)
    return [f"{_pointer(e.absolute_path)}: {e.message}" for e in errors]
