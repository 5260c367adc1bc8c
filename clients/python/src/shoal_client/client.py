"""The client: upload content, submit jobs, wait for results, download them."""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import IO, Any, Literal, Union
from collections.abc import Iterable, Mapping, Sequence

import pika
import pika.compat

from . import contract
from ._amqp import Link, Message, _Brokers, _redact
from .errors import BrokerUnavailable, JobRejected, ShoalError, Timeout
from .result import Result
from .store import (
    HashingReader,
    LocalStore,
    S3Store,
    Store,
    cancel_key,
    cancel_request,
    file_sha256,
    index_entry,
    job_by_id_key,
    job_entry_key,
    result_key,
    sha256_key,
)
from .tarball import write_dir
from .topology import DEFAULT_MAX_ATTEMPTS, PUBLISHED_MS_HEADER, PUBLISHED_US_HEADER, Topology, delivery_limit

log = logging.getLogger("shoal_client")

#: What a module, input or import can be given as: a local path (uploaded
#: first), ``"sha256:<hex>"``, an http(s) URL, ``"s3://bucket/key"``, an IPFS
#: CID (bare or ``ipfs://``), or a source dict as in ``job.schema.json``.
SourceSpec = Union[str, "os.PathLike[str]", Mapping[str, Any]]
#: An input: ``(source, guest_path)`` (``guest_path`` None for the default
#: ``/inputs/<name>``), a bare source, or an input dict as in the schema.
InputSpec = Union[SourceSpec, Sequence[Any]]
#: What :meth:`Client.cancel` did: ``"requested"`` (recorded and sent now),
#: ``"already"`` (a cancel was requested before, or the job ended
#: cancelled), ``"finished"`` (it had ended otherwise; nothing changed).
CancelOutcome = Literal["requested", "already", "finished"]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
#: ``cache.dir``'s default (docs/CONFIG.md): relative to the working
#: directory, as the worker and ``submit`` (without ``--local``) use it.
DEFAULT_CACHE_DIR = "shoal-cache"
DEFAULT_REGION = "us-east-1"

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
#: job.schema.json's ``id`` pattern: what is safe in an object key.
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_URL = re.compile(r"^[Hh][Tt][Tt][Pp][Ss]?://")

#: Results kept after ``wait`` returned them, for ``download``.
_TAKEN_KEEP = 1024
#: How often ``wait`` looks in the store while the reply connection is down,
#: and for jobs this client did not submit (seconds).
_POLL_DOWN = 2.0
_POLL_UNKNOWN = 1.0
#: Index objects written at once after a batch is confirmed (as the Rust
#: client's ``buffer_unordered(16)``).
_INDEX_WRITERS = 16


def _is_cid(s: str) -> bool:
    """What ``submit`` takes for a CID: ``ipfs://…``, ``Qm`` + 44 more, or
    ``baf…`` longer than 50 characters (optionally ``/path/inside``)."""
    if s.startswith("ipfs://"):
        return True
    first = s.split("/", 1)[0]
    return (first.startswith("Qm") and len(first) == 46) or (first.startswith("baf") and len(first) > 50)


class Client:
    """A connection to a Shoal fleet.

    ``amqp_url`` is the broker: one AMQP URL, or the nodes of a RabbitMQ
    cluster as several, comma-separated (or a list of URLs). Both of the
    client's connections try them in order, and one that is refused or
    lost moves on to the next URL (the one that failed is tried last),
    backing off once every URL was tried; connecting fails only when every
    URL refused. No password appears in a log line, an exception or the
    ``repr``. The store (for uploads, results that
    outlived their reply, ``download`` and large streams) is the S3 bucket
    ``s3_bucket`` if given, else the folder ``cache_dir``, else none.
    The queue and exchange names must be the fleet's (``amqp.*`` in
    docs/CONFIG.md).

    ``declare`` says what the client does with the topology on connecting
    (docs/PROTOCOL.md): ``"passive"`` (default) only checks that the
    exchanges and queues exist, creating nothing (the workers declare them;
    connecting fails with :class:`ShoalError` while none ever ran);
    ``"full"`` declares them exactly as ``schemas/topology.json`` says, as
    workers and the Rust client do, with ``x-delivery-limit`` twice
    ``max_attempts`` (the fleet's ``amqp.max_attempts``, default 5: any
    other value than the workers' makes the broker refuse the declaration);
    ``"none"`` touches nothing. Jobs are published ``mandatory``: one that
    no queue takes raises :class:`Unroutable`. The control exchange
    (``control_exchange``, for :meth:`cancel`) is declared with ``"full"``
    only; passively it is checked when cancelling, not when connecting,
    so that the client still submits to workers from before cancel.

    With a store and ``index`` (default), every job is recorded in the
    store's job index once the broker confirmed it (``jobs/by-time/…`` and
    ``jobs/by-id/<id>.json``, two small objects per job): ``submit list``
    then shows it while it is queued, and ``submit cancel`` knows it. Best
    effort: a failure is logged, and the job is queued all the same.

    Thread-safe: submit and wait from as many threads as you like. Use it
    as a context manager, or call :meth:`close`, so that the reply queue is
    deleted (otherwise it expires after ``reply_keep`` seconds).
    """

    def __init__(
        self,
        amqp_url: str | Sequence[str],
        *,
        s3_bucket: str | None = None,
        s3_endpoint: str | None = None,
        s3_access_key_id: str | None = None,
        s3_secret_access_key: str | None = None,
        s3_region: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        job_queue: str = "shoal.jobs",
        results_exchange: str = "shoal.results",
        dead_letter: str = "shoal.dead",
        control_exchange: str = "shoal.control",
        s3_virtual_hosted: bool = False,
        store: Store | None = None,
        declare: str = "passive",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        index: bool = True,
        reply_keep: float = 15 * 60.0,
        connection_name: str = "shoal-client",
        connect_timeout: float = 15.0,
        publish_timeout: float = 30.0,
    ) -> None:
        if declare not in ("full", "passive", "none"):
            raise ValueError(f"declare must be 'full', 'passive' or 'none', not {declare!r}")
        self.topology = Topology(
            job_queue=job_queue,
            results_exchange=results_exchange,
            dead_letter=dead_letter,
            control_exchange=control_exchange,
            delivery_limit=delivery_limit(max_attempts),
        )
        if store is not None:
            self.store: Store | None = store
        elif s3_bucket:
            self.store = S3Store(
                s3_bucket,
                endpoint=s3_endpoint,
                region=s3_region or DEFAULT_REGION,
                access_key_id=s3_access_key_id,
                secret_access_key=s3_secret_access_key,
                virtual_hosted=s3_virtual_hosted,
            )
        elif cache_dir:
            self.store = LocalStore(cache_dir)
        else:
            self.store = None
        urls = _Brokers(amqp_url).urls
        #: The broker URL(s), passwords replaced, comma-separated.
        self.broker = _redact(urls)
        self.connection_name = connection_name
        self.publish_timeout = publish_timeout
        self._declare = declare
        #: Whether confirmed jobs are recorded in the store's job index.
        self.index = index and self.store is not None
        self._index_pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: The queue results come back on (every job's ``reply_to``).
        self.reply_queue = f"shoal.reply.{uuid.uuid4()}"

        self._cond = threading.Condition()
        self._results: dict[str, dict[str, Any]] = {}
        self._states: dict[str, dict[str, Any]] = {}
        #: Job id -> reply epoch when it was submitted.
        self._submitted: dict[str, int] = {}
        #: Job id -> reply epoch when the store was last searched for it.
        self._checked: dict[str, int] = {}
        self._taken: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._epoch = 0
        self._link_up = False
        self._stats = {"reconnects": 0, "store_lookups": 0, "results_from_store": 0, "results_from_queue": 0}
        self._folders: set[str] = set()
        self._names: dict[str, str] = {}
        self._closed = False

        self._link = Link(
            urls,
            topology=self.topology,
            declare=declare,
            reply_queue=self.reply_queue,
            reply_keep_ms=int(reply_keep * 1000),
            connection_name=connection_name,
            on_reply=self._on_reply,
            on_link=self._on_link,
        )
        try:
            self._link.start(connect_timeout)
        except BaseException:
            self._link.close(delete_reply_queue=True, timeout=2.0)
            raise
        # A program that exits without close() still deletes its reply queue.
        self._finalizer = weakref.finalize(self, self._link.close, True, 2.0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Client:
        """A client configured from the same ``SHOAL_*`` variables as the
        worker and ``submit`` (docs/CONFIG.md): ``SHOAL_AMQP_URL`` (one
        URL, or several comma-separated: a cluster's nodes) or
        ``SHOAL_AMQP_URLS`` (the same; setting both is an error),
        ``SHOAL_AMQP_JOB_QUEUE``, ``SHOAL_AMQP_RESULTS_EXCHANGE``,
        ``SHOAL_AMQP_DEAD_LETTER``, ``SHOAL_AMQP_CONTROL_EXCHANGE``,
        ``SHOAL_CACHE_S3_BUCKET``,
        ``SHOAL_CACHE_S3_ENDPOINT``, ``SHOAL_CACHE_S3_REGION``,
        ``SHOAL_CACHE_S3_ACCESS_KEY_ID``, ``SHOAL_CACHE_S3_SECRET_ACCESS_KEY``,
        ``SHOAL_CACHE_S3_VIRTUAL_HOSTED``, ``SHOAL_CACHE_DIR`` and
        ``SHOAL_AMQP_MAX_ATTEMPTS`` (for ``declare="full"``), with the same
        defaults (an empty value counts as unset). As for the worker, a
        bucket wins over the folder, whose default is ``shoal-cache`` in the
        working directory. Keyword arguments override."""
        env = os.environ if environ is None else environ

        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(name, "")
            return value if value != "" else default

        virtual = (get("SHOAL_CACHE_S3_VIRTUAL_HOSTED", "false") or "false").strip().lower()
        if virtual not in ("true", "false"):
            raise ShoalError(f"SHOAL_CACHE_S3_VIRTUAL_HOSTED must be true or false, not {virtual!r}")
        options: dict[str, Any] = {
            "s3_bucket": get("SHOAL_CACHE_S3_BUCKET"),
            "s3_endpoint": get("SHOAL_CACHE_S3_ENDPOINT"),
            "s3_region": get("SHOAL_CACHE_S3_REGION", DEFAULT_REGION),
            "s3_access_key_id": get("SHOAL_CACHE_S3_ACCESS_KEY_ID"),
            "s3_secret_access_key": get("SHOAL_CACHE_S3_SECRET_ACCESS_KEY"),
            "s3_virtual_hosted": virtual == "true",
            "cache_dir": get("SHOAL_CACHE_DIR", DEFAULT_CACHE_DIR),
            "job_queue": get("SHOAL_AMQP_JOB_QUEUE", "shoal.jobs"),
            "results_exchange": get("SHOAL_AMQP_RESULTS_EXCHANGE", "shoal.results"),
            "dead_letter": get("SHOAL_AMQP_DEAD_LETTER", "shoal.dead"),
            "control_exchange": get("SHOAL_AMQP_CONTROL_EXCHANGE", "shoal.control"),
        }
        attempts = get("SHOAL_AMQP_MAX_ATTEMPTS")
        if attempts is not None:
            try:
                options["max_attempts"] = int(attempts)
            except ValueError:
                raise ShoalError(f"SHOAL_AMQP_MAX_ATTEMPTS must be an integer, not {attempts!r}") from None
        options.update(overrides)
        url = options.pop("amqp_url", None)
        if not url:
            one, many = get("SHOAL_AMQP_URL"), get("SHOAL_AMQP_URLS")
            if one is not None and many is not None:
                raise ShoalError(
                    f"both SHOAL_AMQP_URL and SHOAL_AMQP_URLS are set ({_redact([one, many])}); set one of them"
                )
            url = one or many or DEFAULT_AMQP_URL
        return cls(url if isinstance(url, (list, tuple)) else str(url), **options)

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Deletes the reply queue and closes the connections. Results of
        jobs not waited for are then only in the results store."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        with self._cond:
            self._cond.notify_all()
            pool, self._index_pool = self._index_pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ uploads

    def _need_store(self, what: str) -> Store:
        if self.store is None:
            raise ShoalError(f"{what} needs a store: give s3_bucket or cache_dir (SHOAL_CACHE_S3_BUCKET / SHOAL_CACHE_DIR)")
        return self.store

    def upload(self, path: str | os.PathLike[str]) -> str:
        """Puts a local file (as is) or folder (as a tar archive, packed as
        ``submit`` packs it, so the same folder has the same hash) into the
        store at ``cache/sha256/<hex>`` and returns ``"sha256:<hex>"``.
        Content already there with the right size is not sent again. The
        client remembers folders, so that a later ``submit`` with this
        ``sha256:`` source asks the worker to unpack it."""
        store = self._need_store("uploading")
        p = Path(path)
        if p.is_dir():
            hex_digest = self._upload_dir(store, p)
            self._folders.add(hex_digest)
        elif p.is_file():
            hex_digest = self._upload_file(store, p)
        else:
            raise ShoalError(f"{p}: no such file or folder")
        name = p.resolve().name
        if name and name not in (".", ".."):
            self._names[hex_digest] = name
        return f"sha256:{hex_digest}"

    def _upload_file(self, store: Store, path: Path) -> str:
        hex_digest, size = file_sha256(path)
        key = sha256_key(hex_digest)
        if store.size(key) == size:
            return hex_digest
        with open(path, "rb") as f:
            reader = HashingReader(f)
            store.put_stream(key, reader)  # type: ignore[arg-type]
        if reader.hexdigest() != hex_digest:
            store.delete(key)
            raise ShoalError(f"{path}: the file changed while it was being uploaded; try again")
        return hex_digest

    def _upload_dir(self, store: Store, path: Path) -> str:
        with tempfile.TemporaryFile() as spool:
            writer = _HashingWriter(spool)
            write_dir(path, writer)  # type: ignore[arg-type]
            hex_digest, size = writer.hexdigest(), writer.size
            key = sha256_key(hex_digest)
            if store.size(key) != size:
                spool.seek(0)
                store.put_stream(key, spool)
        return hex_digest

    # ------------------------------------------------------------ job messages

    def source(self, spec: SourceSpec, *, what: str = "input") -> dict[str, Any]:
        """The source dict (``job.schema.json``'s ``source``) for ``spec``,
        uploading local files and folders first."""
        if isinstance(spec, Mapping):
            return dict(spec)
        if isinstance(spec, os.PathLike):
            return self._local_source(Path(spec), what)
        if not isinstance(spec, str):
            raise TypeError(f"{what}: expected a path, a string or a source dict, not {type(spec).__name__}")
        s = spec
        if s and Path(s).exists():
            return self._local_source(Path(s), what)
        if s.startswith("sha256:"):
            hex_digest = s[len("sha256:") :]
            if not _HEX64.match(hex_digest):
                raise ShoalError(f"{what} {s}: write sha256: followed by 64 hex digits")
            hex_digest = hex_digest.lower()
            source: dict[str, Any] = {"sha256": hex_digest}
            if hex_digest in self._names:
                source["name"] = self._names[hex_digest]
            if hex_digest in self._folders:
                source["unpack"] = "tar"
            return source
        if _URL.match(s):
            return {"url": s}
        if s.startswith("s3://"):
            return {"s3": s}
        if _is_cid(s):
            return {"cid": s[len("ipfs://") :] if s.startswith("ipfs://") else s}
        raise ShoalError(
            f"{what} {s}: no such file; give a local file or folder, sha256:HEX, an http(s) URL, "
            "an s3:// URI or an IPFS CID"
        )

    def _local_source(self, path: Path, what: str) -> dict[str, Any]:
        if what == "module" and path.is_dir():
            raise ShoalError(f"module {path}: is a folder; give the .wasm file")
        sha = self.upload(path)
        return self.source(sha, what=what)

    def _input(self, spec: InputSpec) -> dict[str, Any]:
        if isinstance(spec, Mapping) and "source" in spec:
            given = dict(spec)
            given["source"] = self.source(given["source"])
            return given
        if isinstance(spec, (tuple, list)):
            if len(spec) != 2:
                raise TypeError(f"an input is (source, guest_path), not {spec!r}")
            source, guest_path = spec
            entry: dict[str, Any] = {"source": self.source(source)}
            if guest_path is not None:
                entry["path"] = str(guest_path)
            return entry
        return {"source": self.source(spec)}  # type: ignore[arg-type]

    def job_message(
        self,
        module: SourceSpec,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        inputs: Iterable[InputSpec] = (),
        outputs: Iterable[Any] | None = None,
        limits: Mapping[str, int] | None = None,
        job_id: str | None = None,
        entrypoint: str | None = None,
        imports: Mapping[str, SourceSpec] | None = None,
    ) -> dict[str, Any]:
        """The ``shoal.job/v1`` message :meth:`submit` would publish
        (uploading local content), validated against ``job.schema.json``;
        raises :class:`JobRejected` when it fails."""
        if isinstance(args, (str, bytes)):
            raise TypeError("args is a sequence of strings, not one string")
        job_id = job_id if job_id is not None else str(uuid.uuid4())
        message: dict[str, Any] = {"schema": contract.JOB_SCHEMA, "id": job_id}
        message["module"] = self.source(module, what="module")
        if entrypoint is not None:
            message["entrypoint"] = entrypoint
        if args:
            message["args"] = list(args)
        if env:
            message["env"] = dict(env)
        if inputs:
            message["inputs"] = [self._input(i) for i in inputs]
        if outputs is not None:
            mounts = []
            for o in outputs:
                if isinstance(o, Mapping):
                    mounts.append(dict(o))
                else:
                    name, path = o
                    mounts.append({"name": name, "path": path})
            message["outputs"] = mounts
        if imports:
            message["imports"] = [{"name": n, "module": self.source(s, what="import")} for n, s in imports.items()]
        if limits:
            message["limits"] = dict(limits)
        self.validate(message)
        return message

    @staticmethod
    def validate(message: Mapping[str, Any]) -> None:
        """Raises :class:`JobRejected` unless ``message`` satisfies
        ``job.schema.json``."""
        errors = contract.job_errors(message)
        if errors:
            raise JobRejected(f"job {message.get('id', '?')}: " + "; ".join(errors), errors)

    def properties(self, job_id: str) -> pika.BasicProperties:
        """The AMQP properties of this client's job messages (see
        :func:`job_properties`)."""
        return job_properties(job_id, self.reply_queue)

    # ------------------------------------------------------------ submitting

    def submit(
        self,
        module: SourceSpec,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        inputs: Iterable[InputSpec] = (),
        outputs: Iterable[Any] | None = None,
        limits: Mapping[str, int] | None = None,
        job_id: str | None = None,
        entrypoint: str | None = None,
        imports: Mapping[str, SourceSpec] | None = None,
    ) -> str:
        """Publishes one job and returns its id once the broker confirmed
        it (persistent, ``mandatory``: a job no queue takes raises
        :class:`Unroutable`).

        ``module`` and each input's source: a local path (uploaded first),
        ``"sha256:<hex>"``, an http(s) URL, ``"s3://bucket/key"``, a CID
        (bare or ``ipfs://``) or a source dict. ``inputs``: ``(source,
        guest_path)`` pairs (``guest_path`` None for ``/inputs/<name>``).
        ``outputs``: ``(name, guest_path)`` pairs; None keeps the worker's
        default (``outputs`` at ``/outputs``), ``[]`` mounts none. ``limits``:
        ``fuel``, ``memory_bytes``, ``timeout_ms``, ``max_stdout_bytes``,
        ``max_stderr_bytes``, ``max_output_bytes``, ``max_output_files``.
        ``imports``: import modules by name.

        The message is checked against ``job.schema.json`` first; one that
        fails raises :class:`JobRejected` and is not sent."""
        return self.submit_many(
            [
                {
                    "module": module,
                    "args": args,
                    "env": env,
                    "inputs": inputs,
                    "outputs": outputs,
                    "limits": limits,
                    "job_id": job_id,
                    "entrypoint": entrypoint,
                    "imports": imports,
                }
            ]
        )[0]

    def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[str]:
        """Publishes many jobs (each a dict of :meth:`submit`'s keyword
        arguments) without waiting for each confirm in turn: all are written
        out, then all confirms awaited. Every job is built and validated
        before anything is published, so an invalid one fails the batch with
        :class:`JobRejected` and nothing is sent. On a broker error some jobs
        may be queued: the exception's ``confirmed`` attribute lists their
        ids."""
        messages = [self.job_message(**dict(job)) for job in jobs]
        return self._publish(messages, validated=True)

    def publish_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[str]:
        """Publishes ready-made ``shoal.job/v1`` messages (validated here
        too; an ``id`` is added where missing) and returns their ids."""
        return self._publish(messages, validated=False)

    def _publish(self, messages: Sequence[Mapping[str, Any]], *, validated: bool) -> list[str]:
        # Messages built by job_message were validated there: checking them
        # again would cost a second schema walk per job, the largest CPU
        # cost of a batch on the client's side.
        if self._closed:
            raise ShoalError("the client is closed")
        prepared: list[Message] = []
        for given in messages:
            message = dict(given)
            message.setdefault("id", str(uuid.uuid4()))
            if not validated:
                self.validate(message)
            job_id = str(message["id"])
            body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            prepared.append(Message(job_id, body, self.properties(job_id)))
        ids = [m.job_id for m in prepared]
        with self._cond:
            for job_id in ids:
                self._submitted[job_id] = self._epoch
                self._checked.pop(job_id, None)
        self._link.publish(prepared)
        deadline = time.monotonic() + self.publish_timeout
        confirmed: list[str] = []
        failure: BaseException | None = None
        for sent in prepared:
            try:
                sent.future.result(max(0.0, deadline - time.monotonic()))
                confirmed.append(sent.job_id)
            except concurrent.futures.TimeoutError:
                failure = failure or BrokerUnavailable(
                    f"the broker at {self.broker} did not confirm job {sent.job_id} within "
                    f"{self.publish_timeout:g} s; it may or may not be queued"
                )
                sent.future.cancel()
            except concurrent.futures.CancelledError:
                pass
            except ShoalError as e:
                failure = failure or e
        if self.index and confirmed:
            done = set(confirmed)
            self._record_submitted([m for m in prepared if m.job_id in done])
        if failure is not None:
            with self._cond:
                for job_id in set(ids) - set(confirmed):
                    self._submitted.pop(job_id, None)
            failure.confirmed = confirmed  # type: ignore[attr-defined]
            raise failure
        return ids

    def _record_submitted(self, messages: Sequence[Message]) -> None:
        """Writes each confirmed job's two index objects, all at once on a
        few threads (a batch's cost is then about one store round trip, not
        two per job). The by-time key uses the very microseconds of the
        job's ``x-shoal-published-us`` header: the worker keys its entry for
        the job's end by the same value, and the two must sort side by side.
        Best effort: the jobs are queued whatever the store says."""
        store = self.store
        if store is None:
            return
        writes: list[tuple[str, bytes]] = []
        for m in messages:
            us = int(m.properties.headers[PUBLISHED_US_HEADER])
            body = index_entry(m.job_id, us)
            writes += [(job_entry_key(us, m.job_id), body), (job_by_id_key(m.job_id), body)]
        with self._cond:
            if self._index_pool is None and not self._closed:
                self._index_pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=_INDEX_WRITERS, thread_name_prefix="shoal-client-index"
                )
            pool = self._index_pool
        errors: list[BaseException] = []
        if pool is None:  # closed meanwhile: one at a time, here
            for key, body in writes:
                try:
                    store.put_bytes(key, body)
                except Exception as e:
                    errors.append(e)
        else:
            futures = [pool.submit(store.put_bytes, key, body) for key, body in writes]
            errors = [e for e in (f.exception() for f in futures) if e is not None]
        if errors:
            log.warning(
                "shoal client: could not record %d of %d submitted jobs' index objects in %s (%s); "
                "they appear in the index once they end",
                len(errors),
                len(writes),
                store.describe(),
                errors[0],
            )

    # ------------------------------------------------------------ results

    def _on_reply(self, kind: str | None, body: bytes) -> None:
        """Files a reply (IO thread): results and states of jobs this client
        waits for; others (a result delivered again after its waiter took
        it) are dropped."""
        try:
            message = json.loads(body)
        except ValueError:
            log.warning("shoal client: ignoring a reply that is not JSON")
            return
        if not isinstance(message, dict) or not isinstance(message.get("job_id"), str):
            log.warning("shoal client: ignoring a reply that is neither a result nor a state")
            return
        job_id = message["job_id"]
        with self._cond:
            if job_id not in self._submitted:
                return
            if kind == contract.STATE_SCHEMA or message.get("schema") == contract.STATE_SCHEMA:
                self._states[job_id] = message
            else:
                if job_id not in self._results:
                    self._stats["results_from_queue"] += 1
                self._results[job_id] = message
            self._cond.notify_all()

    def _on_link(self, up: bool) -> None:
        with self._cond:
            self._link_up = up
            if up:
                self._epoch += 1
                if self._epoch > 1:
                    self._stats["reconnects"] += 1
            self._cond.notify_all()

    def state(self, job_id: str) -> dict[str, Any] | None:
        """The latest progress message (``shoal.state/v1``: staging, running,
        publishing) of a job this client waits for, if any arrived. Workers
        send them only for jobs that take longer than ``amqp.state_delay_ms``."""
        with self._cond:
            return self._states.get(job_id)

    def stats(self) -> dict[str, int]:
        """Counters: reply-connection ``reconnects``, ``store_lookups`` made
        by ``wait``, and results that came ``from_queue`` or ``from_store``."""
        with self._cond:
            return dict(self._stats)

    def stored_result(self, job_id: str) -> Result | None:
        """The job's ``results/<id>/result.json`` from the store, if there."""
        store = self._need_store("reading a stored result")
        raw = store.get(result_key(job_id))
        if raw is None:
            return None
        return Result(json.loads(raw), store)

    def _look_in_store(self, job_id: str) -> dict[str, Any] | None:
        try:
            assert self.store is not None
            raw = self.store.get(result_key(job_id))
            if raw is None:
                return None
            parsed: dict[str, Any] = json.loads(raw)
            return parsed
        except Exception as e:  # the store is a fallback: keep waiting
            log.warning("shoal client: looking for job %s in %s: %s", job_id, self.store.describe() if self.store else "-", e)
            return None

    def wait(self, job_id: str, timeout: float | None = None) -> Result:
        """Waits for the result of a job, whatever its status (succeeded,
        failed, error, rejected, cancelled), and returns it; raises
        :class:`Timeout` when ``timeout`` seconds pass first (None: no limit).

        Results come on the client's reply queue; other jobs' results that
        arrive meanwhile are kept for their own ``wait``. When the broker
        connection drops, the client reconnects with backoff and consumes
        the same queue again; meanwhile, and once after every reconnection,
        it looks for ``results/<id>/result.json`` in the store, which also
        covers results lost with the queue (a broker restart drops the
        transient reply copies). A job not submitted by this client is
        looked for in the store only."""
        deadline = None if timeout is None else time.monotonic() + timeout
        next_poll = 0.0
        with self._cond:
            known = job_id in self._submitted or job_id in self._results
        if not known and self.store is None:
            raise ShoalError(
                f"job {job_id} was not submitted by this client (or its result was already taken), "
                "and there is no results store to look in"
            )
        while True:
            look = False
            with self._cond:
                raw = self._results.pop(job_id, None)
                if raw is not None:
                    return self._taken_result(job_id, raw)
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise Timeout(f"no result for job {job_id} within {timeout:g} s")
                if self._closed:
                    raise ShoalError("the client is closed")
                epoch = self._epoch
                wake = deadline
                next_due: float | None = None
                if self.store is not None:
                    if not known or job_id not in self._submitted:
                        look = now >= next_poll
                        next_due = next_poll if not look else now + _POLL_UNKNOWN
                    elif epoch > self._checked.get(job_id, self._submitted[job_id]):
                        look = True
                        next_due = now + _POLL_DOWN
                    elif not self._link_up:
                        look = now >= next_poll
                        next_due = next_poll if not look else now + _POLL_DOWN
                    if next_due is not None:
                        wake = next_due if wake is None else min(wake, next_due)
                if not look:
                    self._cond.wait(None if wake is None else max(0.0, wake - now))
                    continue
            raw = self._look_in_store(job_id)
            with self._cond:
                self._stats["store_lookups"] += 1
                if raw is not None:
                    if self._results.pop(job_id, None) is None:
                        self._stats["results_from_store"] += 1
                    return self._taken_result(job_id, raw)
                if job_id in self._submitted:
                    self._checked[job_id] = epoch
                next_poll = next_due if next_due is not None else 0.0

    def _taken_result(self, job_id: str, raw: dict[str, Any]) -> Result:
        """Called with the lock held: the job is settled here."""
        self._submitted.pop(job_id, None)
        self._checked.pop(job_id, None)
        self._states.pop(job_id, None)
        self._taken[job_id] = raw
        while len(self._taken) > _TAKEN_KEEP:
            self._taken.popitem(last=False)
        return Result(raw, self.store)

    def run(self, module: SourceSpec, *args: Any, timeout: float | None = None, **kwargs: Any) -> Result:
        """:meth:`submit`, then :meth:`wait` for the result."""
        job_id = self.submit(module, *args, **kwargs)
        return self.wait(job_id, timeout=timeout)

    def cancel(self, job_id: str) -> CancelOutcome:
        """Cancels a job across the fleet, as ``submit cancel`` does: it
        ends with a ``cancelled`` result (error kind ``cancelled``, no exit
        code), which :meth:`wait` returns as usual. A queued job never
        runs; a running one is stopped within about a second.

        Two steps, in this order. First the request is recorded in the
        store (``cancel/<id>.json``, unless one is there): that is what
        stops a job no worker holds yet, since every worker loads the
        records when it connects and skips those jobs, however the timing
        falls. Then a ``shoal.control/v1`` message goes to the control
        exchange, which every worker hears, to stop the job where it runs.
        Hence the store is needed (:class:`ShoalError` without one).

        Returns ``"finished"`` when the job had ended otherwise (its result
        is in the store; nothing is changed), ``"already"`` when it ended
        cancelled or a cancel was requested before (the message is sent
        again all the same: harmless, and it reaches a worker that took the
        job since), else ``"requested"``. Unlike ``submit cancel``, a job
        nothing knows of is not refused: the record is written anyway.
        Raises :class:`BrokerUnavailable` when the message could not be
        sent (the record is written by then: a retry says ``"already"``)."""
        if self._closed:
            raise ShoalError("the client is closed")
        store = self._need_store("cancelling")
        if not _JOB_ID.match(job_id):
            raise ShoalError(f"{job_id!r} is not a job id (letters, digits, '.', '_' and '-', at most 128)")
        try:
            raw = store.get(result_key(job_id))
            if raw is not None:
                return "already" if json.loads(raw).get("status") == "cancelled" else "finished"
            key = cancel_key(job_id)
            new = store.size(key) is None
            if new:
                store.put_bytes(key, cancel_request(job_id, time.time_ns() // 1000))
        except ShoalError:
            raise
        except Exception as e:
            raise ShoalError(f"cancelling job {job_id}: {store.describe()}: {e}") from e
        message = {"schema": contract.CONTROL_SCHEMA, "action": "cancel", "job_ids": [job_id]}
        heard = self._link.publish_control(
            json.dumps(message, separators=(",", ":")).encode("utf-8"),
            pika.BasicProperties(content_type="application/json", type=contract.CONTROL_SCHEMA),
            declare=self._declare,
            timeout=self.publish_timeout,
        )
        if not heard:
            log.info(
                "shoal client: no control exchange %r: no worker is there to stop job %s now; "
                "its cancel record stops it when a worker takes it",
                self.topology.control_exchange,
                job_id,
            )
        return "requested" if new else "already"

    # ------------------------------------------------------------ downloads

    def download(self, job_id: str, dest: str | os.PathLike[str], result: Result | None = None) -> Path:
        """Lays a job's result out in ``dest`` as ``submit get --download``
        does: ``stdout``, ``stderr``, ``exitCode`` (when the guest exited),
        one folder per output mount, and ``result.json`` last (a folder with
        one is complete). Each output file is checked against the sha256 of
        the result's manifest. ``dest`` must be empty, missing, or hold an
        earlier result (which is replaced). The result is the one ``wait``
        returned, else ``results/<id>/result.json`` from the store."""
        store = self._need_store("downloading")
        if result is not None:
            raw = result.raw
        else:
            with self._cond:
                raw = self._taken.get(job_id)  # type: ignore[assignment]
            if raw is None:
                got = store.get(result_key(job_id))
                if got is None:
                    raise ShoalError(
                        f"no result for job {job_id} in {store.describe()} (still queued or running?)"
                    )
                raw = json.loads(got)
        res = Result(raw, store)
        folder = Path(dest)
        _prepare(folder)
        (folder / "stdout").write_bytes(res.stdout_bytes)
        (folder / "stderr").write_bytes(res.stderr_bytes)
        if res.exit_code is not None:
            (folder / "exitCode").write_text(str(res.exit_code))
        for output in res.outputs:
            name = str(output["name"])
            mount = _inside(folder, name)
            mount.mkdir(parents=True, exist_ok=True)
            prefix = output.get("location") or f"results/{res.job_id}/{name}/"
            for entry in output.get("files", []):
                rel = str(entry["path"])
                data = store.get(f"{prefix}{rel}")
                if data is None:
                    raise ShoalError(f"output {name}/{rel} of job {res.job_id} is missing from {store.describe()}")
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise ShoalError(f"output {name}/{rel} does not match its manifest hash")
                target = _inside(mount, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        tmp = folder / ".result.json.tmp"
        tmp.write_text(json.dumps(raw, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, folder / "result.json")
        return folder

    def __repr__(self) -> str:
        where = self.store.describe() if self.store else "no store"
        return f"<shoal_client.Client {self.broker} queue={self.topology.job_queue} {where}>"


def job_properties(job_id: str, reply_to: str, now: float | None = None) -> pika.BasicProperties:
    """The AMQP properties of a job message, as the Rust client sets them:
    persistent, JSON, ``message_id`` = ``correlation_id`` = the job id,
    ``type`` ``shoal.job/v1``, ``reply_to`` the client's queue, the publish
    time in seconds (``timestamp``), in microseconds (header
    ``x-shoal-published-us``, which workers prefer) and in milliseconds
    (header ``x-shoal-published-ms``, for workers of earlier versions), both
    AMQP signed 64-bit integers, field type ``l``."""
    now = time.time() if now is None else now
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        message_id=job_id,
        correlation_id=job_id,
        reply_to=reply_to,
        type=contract.JOB_SCHEMA,
        timestamp=int(now),
        headers={
            PUBLISHED_MS_HEADER: pika.compat.long(int(now * 1000)),
            PUBLISHED_US_HEADER: pika.compat.long(round(now * 1_000_000)),
        },
    )


def _prepare(folder: Path) -> None:
    """As the worker's ``publish::local::prepare``: create the folder, or
    clear an earlier result; refuse a non-empty folder without one."""
    if folder.exists():
        if any(folder.iterdir()):
            if not (folder / "result.json").exists():
                raise ShoalError(f"{folder} is not empty and holds no earlier result; choose another folder")
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def _inside(folder: Path, rel: str) -> Path:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ShoalError(f"refusing an output path that leaves its folder: {rel!r}")
    return folder.joinpath(*parts)


class _HashingWriter:
    """Writes through to a file, hashing and counting."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._inner.write(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
