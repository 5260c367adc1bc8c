"""Python client for Shoal, a WebAssembly (WASI preview1) job queue.

>>> from shoal_client import Client
>>> with Client.from_env() as client:                      # doctest: +SKIP
...     result = client.run("hello.wasm", ["shoal"], env={"HELLO": "world"})
...     print(result.status, result.stdout)
"""

from .client import CancelOutcome, Client, job_properties
from .contract import CONTROL_SCHEMA, INDEX_SCHEMA, JOB_SCHEMA, RESULT_SCHEMA, STATE_SCHEMA
from .errors import BrokerUnavailable, JobRejected, ShoalError, Timeout, Unroutable
from .result import Result
from .store import LocalStore, S3Store, Store
from .tarball import pack_dir
from .topology import Topology

__version__ = "0.1.0"

__all__ = [
    "Client",
    "CancelOutcome",
    "job_properties",
    "Result",
    "ShoalError",
    "JobRejected",
    "Timeout",
    "BrokerUnavailable",
    "Unroutable",
    "Topology",
    "Store",
    "LocalStore",
    "S3Store",
    "pack_dir",
    "JOB_SCHEMA",
    "RESULT_SCHEMA",
    "STATE_SCHEMA",
    "CONTROL_SCHEMA",
    "INDEX_SCHEMA",
]
