"""The broker side of a :class:`~shoal_client.Client`: two AMQP connections
driven by pika's asynchronous ``SelectConnection`` on one thread of their
own, so heartbeats are answered and results are filed whatever the caller's
threads are doing.

- The *publishing* connection declares the topology, puts its channel in
  confirm mode and publishes jobs ``mandatory``, tracking delivery tags
  itself: a batch is written out at once and its confirms are awaited
  together (pipelined), which pika's ``BlockingChannel.confirm_delivery``
  cannot do (it waits for each confirm in turn). A job the broker returns
  (unroutable) fails with :class:`Unroutable`, one it nacks or whose
  connection drops before the confirm with :class:`BrokerUnavailable`.
- The *reply* connection declares the client's reply queue (durable, named
  by the client, ``x-expires`` so it outlives a dropped connection but not
  an abandoned client) and consumes it with acks. When the connection drops
  it reconnects with backoff, declares the same queue again (a no-op when
  it survived; a new, empty queue when it was lost) and consumes it again;
  every reconnection is reported to the client (an *epoch*), which then
  looks in the results store for results that may have been lost with the
  old queue or a broker restart.

Both connections reconnect on their own after the first successful start.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from typing import Any
from collections.abc import Callable

import pika
import pika.exceptions
import pika.spec
from pika.adapters.select_connection import IOLoop, SelectConnection

from .errors import BrokerUnavailable, ShoalError, Unroutable
from .topology import Topology

log = logging.getLogger("shoal_client")

#: Unacked replies the broker may hand the client at once.
REPLY_PREFETCH = 256
#: Reconnection backoff: first delay, cap (seconds).
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0


class Message:
    """One job to publish."""

    __slots__ = ("job_id", "body", "properties", "future")

    def __init__(self, job_id: str, body: bytes, properties: pika.BasicProperties) -> None:
        self.job_id = job_id
        self.body = body
        self.properties = properties
        self.future: concurrent.futures.Future[None] = concurrent.futures.Future()


class Link:
    def __init__(
        self,
        url: str,
        *,
        topology: Topology,
        declare: str,
        reply_queue: str,
        reply_keep_ms: int,
        connection_name: str,
        on_reply: Callable[[str | None, bytes], None],
        on_link: Callable[[bool], None],
    ) -> None:
        self._url = url
        self._topology = topology
        self._declare = declare
        self.reply_queue = reply_queue
        self._reply_keep_ms = max(1, min(int(reply_keep_ms), 2**31 - 1))
        self._connection_name = connection_name
        self._on_reply_cb = on_reply
        self._on_link_cb = on_link

        self._loop = IOLoop()
        self._thread = threading.Thread(target=self._run, name="shoal-client-amqp", daemon=True)
        self._closing = False
        self._closed = threading.Event()
        self._started = False
        self._first: concurrent.futures.Future[None] = concurrent.futures.Future()

        # Publishing (IO thread only).
        self._pub_conn: SelectConnection | None = None
        self._pub_ch: Any = None
        self._pub_ready = False
        self._pub_delay = BACKOFF_FIRST
        self._outbox: collections.deque[list[Message]] = collections.deque()
        self._unconfirmed: dict[int, Message] = {}
        self._returned: dict[str, str] = {}
        self._tag = 0

        # Replies (IO thread only).
        self._reply_conn: SelectConnection | None = None
        self._reply_ch: Any = None
        self._reply_ready = False
        self._reply_delay = BACKOFF_FIRST

    # ------------------------------------------------------------ from callers

    def start(self, timeout: float) -> None:
        """Connects both connections, declares the topology and starts
        consuming the reply queue; raises what went wrong the first time."""
        self._thread.start()
        self._loop.add_callback_threadsafe(self._open_pub)
        self._loop.add_callback_threadsafe(self._open_reply)
        try:
            self._first.result(timeout)
        except concurrent.futures.TimeoutError:
            raise BrokerUnavailable(
                f"could not connect to the broker at {_redact(self._url)} within {timeout:g} s"
            ) from None

    def publish(self, messages: list[Message]) -> None:
        """Hands messages to the IO thread; each one's ``future`` resolves
        when the broker confirmed it (or fails)."""
        if self._closing:
            raise ShoalError("the client is closed")
        self._loop.add_callback_threadsafe(lambda: self._enqueue(messages))

    def close(self, delete_reply_queue: bool = True, timeout: float = 5.0) -> None:
        """Deletes the reply queue (when connected), closes both
        connections and stops the IO thread."""
        if not self._thread.is_alive():
            return
        try:
            self._loop.add_callback_threadsafe(lambda: self._shutdown(delete_reply_queue))
        except Exception:  # the loop is gone already
            return
        self._closed.wait(timeout)
        try:
            self._loop.add_callback_threadsafe(self._loop.stop)
        except Exception:
            pass
        self._thread.join(timeout)
        if not self._thread.is_alive():
            try:
                self._loop.close()
            except Exception:
                pass

    # ------------------------------------------------------------- IO thread

    def _run(self) -> None:
        while True:
            try:
                self._loop.start()
                return
            except Exception:  # a callback raised: log it, keep serving
                log.exception("shoal client: error in the AMQP thread")
                if self._closing and self._closed.is_set():
                    return

    def _params(self) -> pika.URLParameters:
        params = pika.URLParameters(self._url)
        params.client_properties = {"connection_name": self._connection_name, "product": "shoal-client (Python)"}
        params.connection_attempts = 1
        return params

    def _fail_first(self, error: BaseException) -> bool:
        """Reports a failure of the first start; True when it was one."""
        if self._started:
            return False
        if not self._first.done():
            self._first.set_exception(error)
        return True

    def _check_started(self) -> None:
        if not self._started and self._pub_ready and self._reply_ready:
            self._started = True
            if not self._first.done():
                self._first.set_result(None)

    # --- publishing connection

    def _connect(
        self,
        what: str,
        on_open: Callable[[SelectConnection], None],
        on_close: Callable[[SelectConnection, BaseException], None],
        reopen: Callable[[], None],
        delay_attr: str,
    ) -> SelectConnection:
        """One of the client's two connections (``what``: "publishing" or
        "reply"); a refused one is tried again after its backoff."""

        def refused(_conn: SelectConnection, error: BaseException) -> None:
            if self._closing:
                return
            if self._fail_first(BrokerUnavailable(f"broker at {_redact(self._url)}: {_reason(error)}")):
                return
            log.warning("shoal client: %s connection refused (%s); retrying", what, _reason(error))
            self._schedule(reopen, delay_attr)

        return SelectConnection(
            self._params(),
            on_open_callback=on_open,
            on_open_error_callback=refused,
            on_close_callback=on_close,
            custom_ioloop=self._loop,
        )

    def _lost(self, what: str, reason: BaseException, reopen: Callable[[], None], delay_attr: str) -> None:
        """A connection closed: done when closing, the first connect's
        failure before the client started, else reconnect after its backoff."""
        if self._closing:
            self._maybe_closed()
            return
        if not self._started:
            self._fail_first(BrokerUnavailable(f"broker at {_redact(self._url)}: {_reason(reason)}"))
            return
        log.warning("shoal client: %s connection lost (%s); reconnecting", what, _reason(reason))
        self._schedule(reopen, delay_attr)

    def _open_pub(self) -> None:
        if self._closing:
            return
        self._pub_conn = self._connect("publishing", self._pub_opened, self._pub_closed, self._open_pub, "_pub_delay")

    def _pub_opened(self, conn: SelectConnection) -> None:
        conn.channel(on_open_callback=self._pub_channel_opened)

    def _pub_channel_opened(self, ch: Any) -> None:
        self._pub_ch = ch
        self._tag = 0
        ch.add_on_close_callback(self._pub_channel_closed)
        ch.add_on_return_callback(self._on_return)
        steps = [] if self._declare == "none" else self._topology.declarations(passive=self._declare == "passive")
        self._run_steps(ch, steps, lambda: ch.confirm_delivery(self._on_confirm, callback=lambda _f: self._pub_is_ready(ch)))

    def _run_steps(self, ch: Any, steps: list[tuple[str, dict[str, Any]]], done: Callable[[], None]) -> None:
        if not steps:
            done()
            return
        method, kwargs = steps[0]
        getattr(ch, method)(callback=lambda _frame: self._run_steps(ch, steps[1:], done), **kwargs)

    def _pub_is_ready(self, ch: Any) -> None:
        if ch is not self._pub_ch:
            return
        self._pub_ready = True
        self._pub_delay = BACKOFF_FIRST
        self._check_started()
        self._flush()

    def _pub_channel_closed(self, ch: Any, reason: BaseException) -> None:
        if ch is not self._pub_ch:
            return
        was_ready = self._pub_ready
        self._pub_ready = False
        self._pub_ch = None
        self._fail_unconfirmed(reason)
        if self._closing:
            return
        if not was_ready:
            # Declaring failed: a topology that exists with other arguments
            # (406) or, declaring passively, does not exist (404).
            hint = ""
            code = getattr(reason, "reply_code", None)
            if code == 404:
                hint = (
                    " (declare='passive' only checks that the fleet's exchanges and queues exist:"
                    " start a worker first, check the names, or declare='full')"
                )
            elif code == 406:
                hint = " (it exists with other flags or arguments: see docs/PROTOCOL.md, section 2)"
            error = ShoalError(f"declaring the topology on {_redact(self._url)}: {_reason(reason)}{hint}")
            if self._fail_first(error):
                return
            log.error("shoal client: %s; retrying", error)
        else:
            log.warning("shoal client: publishing channel closed (%s); reconnecting", _reason(reason))
        # Start over on a fresh connection: closing it schedules the
        # reconnection (after the backoff), in _pub_closed.
        conn = self._pub_conn
        if conn is not None and conn.is_open:
            conn.close()

    def _pub_closed(self, conn: SelectConnection, reason: BaseException) -> None:
        self._pub_ready = False
        self._pub_ch = None
        self._fail_unconfirmed(reason)
        self._lost("publishing", reason, self._open_pub, "_pub_delay")

    def _schedule(self, what: Callable[[], None], delay_attr: str) -> None:
        delay = getattr(self, delay_attr)
        setattr(self, delay_attr, min(delay * 2, BACKOFF_MAX))
        self._loop.call_later(delay, what)

    def _fail_unconfirmed(self, reason: BaseException) -> None:
        pending, self._unconfirmed = self._unconfirmed, {}
        self._returned.clear()
        for message in pending.values():
            if not message.future.done():
                message.future.set_exception(
                    BrokerUnavailable(
                        f"the connection to the broker dropped before it confirmed job {message.job_id} "
                        f"({_reason(reason)}); it may or may not be queued"
                    )
                )

    def _enqueue(self, messages: list[Message]) -> None:
        self._outbox.append(messages)
        self._flush()

    def _flush(self) -> None:
        ch = self._pub_ch
        if not self._pub_ready or ch is None:
            return
        queue = self._topology.job_queue
        while self._outbox:
            batch = self._outbox.popleft()
            for i, message in enumerate(batch):
                if not message.future.set_running_or_notify_cancel():
                    continue  # the caller gave up waiting before it went out
                self._tag += 1
                self._unconfirmed[self._tag] = message
                try:
                    ch.basic_publish(
                        exchange="",
                        routing_key=queue,
                        body=message.body,
                        properties=message.properties,
                        mandatory=True,
                    )
                except Exception as e:
                    # The channel broke under us: this one failed; the rest
                    # wait for the next channel.
                    del self._unconfirmed[self._tag]
                    message.future.set_exception(BrokerUnavailable(f"publishing job {message.job_id}: {e}"))
                    rest = batch[i + 1 :]
                    if rest:
                        self._outbox.appendleft(rest)
                    return

    def _on_return(self, ch: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        job_id = properties.message_id or ""
        self._returned[job_id] = f"{method.reply_code} {method.reply_text}"

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tag = method.delivery_tag
        if method.multiple:
            tags = []
            for t in self._unconfirmed:  # insertion order is tag order
                if t > tag:
                    break
                tags.append(t)
        else:
            tags = [tag]
        for t in tags:
            message = self._unconfirmed.pop(t, None)
            if message is None or message.future.done():
                continue
            returned = self._returned.pop(message.job_id, None)
            if returned is not None:
                message.future.set_exception(
                    Unroutable(
                        f"job {message.job_id}: the broker could not route it to queue "
                        f"{self._topology.job_queue!r} ({returned}); does the queue exist?"
                    )
                )
            elif acked:
                message.future.set_result(None)
            else:
                message.future.set_exception(BrokerUnavailable(f"the broker refused job {message.job_id} (nack)"))

    # --- reply connection

    def _open_reply(self) -> None:
        if self._closing:
            return
        self._reply_conn = self._connect("reply", self._reply_opened, self._reply_closed, self._open_reply, "_reply_delay")

    def _reply_opened(self, conn: SelectConnection) -> None:
        conn.channel(on_open_callback=self._reply_channel_opened)

    def _reply_channel_opened(self, ch: Any) -> None:
        self._reply_ch = ch
        ch.add_on_close_callback(self._reply_channel_closed)
        ch.add_on_cancel_callback(self._reply_cancelled)
        arguments = {"x-expires": self._reply_keep_ms}

        def consume(_frame: Any) -> None:
            ch.basic_consume(
                self.reply_queue,
                self._on_reply,
                auto_ack=False,
                callback=lambda _f: self._reply_is_ready(ch),
            )

        ch.queue_declare(
            self.reply_queue,
            durable=True,
            exclusive=False,
            auto_delete=False,
            arguments=arguments,
            callback=lambda _f: ch.basic_qos(prefetch_count=REPLY_PREFETCH, callback=consume),
        )

    def _reply_is_ready(self, ch: Any) -> None:
        if ch is not self._reply_ch:
            return
        self._reply_ready = True
        self._reply_delay = BACKOFF_FIRST
        self._check_started()
        self._notify_link(True)

    def _on_reply(self, ch: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        try:
            self._on_reply_cb(properties.type, body)
        except Exception:
            log.exception("shoal client: filing a reply")
        try:
            ch.basic_ack(delivery_tag=method.delivery_tag)
        except Exception as e:  # closing; the reply comes again
            log.debug("shoal client: ack failed: %s", e)

    def _reply_cancelled(self, frame: Any) -> None:
        # The broker cancelled the consumer (the queue was deleted): start
        # over, which declares it again.
        if self._closing:
            return
        log.warning("shoal client: the broker cancelled the reply consumer (queue %s deleted?)", self.reply_queue)
        conn = self._reply_conn
        if conn is not None and conn.is_open:
            conn.close(reply_text="reply consumer cancelled")

    def _reply_channel_closed(self, ch: Any, reason: BaseException) -> None:
        if ch is not self._reply_ch:
            return
        self._reply_ch = None
        was_ready = self._reply_ready
        self._reply_ready = False
        if was_ready:
            self._notify_link(False)
        if self._closing:
            return
        if not self._started and self._fail_first(
            ShoalError(f"declaring reply queue {self.reply_queue}: {_reason(reason)}")
        ):
            return
        conn = self._reply_conn
        if conn is not None and conn.is_open:
            conn.close()

    def _reply_closed(self, conn: SelectConnection, reason: BaseException) -> None:
        was_ready = self._reply_ready
        self._reply_ready = False
        self._reply_ch = None
        if was_ready:
            self._notify_link(False)
        self._lost("reply", reason, self._open_reply, "_reply_delay")

    def _notify_link(self, up: bool) -> None:
        try:
            self._on_link_cb(up)
        except Exception:
            log.exception("shoal client: link callback")

    # --- shutdown

    def _shutdown(self, delete_reply_queue: bool) -> None:
        self._closing = True
        for message in [m for batch in self._outbox for m in batch]:
            if message.future.set_running_or_notify_cancel():
                message.future.set_exception(ShoalError("the client was closed before this job was published"))
        self._outbox.clear()
        self._fail_unconfirmed(ShoalError("the client was closed"))
        # Give up after a while even if the broker does not answer.
        self._loop.call_later(3.0, self._force_closed)

        def close_connections(_frame: Any = None) -> None:
            for conn in (self._pub_conn, self._reply_conn):
                if conn is not None and not (conn.is_closed or conn.is_closing):
                    try:
                        conn.close(reply_text="client closed")
                    except Exception:
                        pass
            self._maybe_closed()

        ch = self._reply_ch
        if delete_reply_queue and ch is not None and ch.is_open:
            try:
                ch.queue_delete(self.reply_queue, callback=close_connections)
                return
            except Exception:
                pass
        close_connections()

    def _maybe_closed(self) -> None:
        if all(c is None or c.is_closed for c in (self._pub_conn, self._reply_conn)):
            self._closed.set()

    def _force_closed(self) -> None:
        self._closed.set()


def _reason(error: BaseException | None) -> str:
    if error is None:
        return "closed"
    if isinstance(error, (pika.exceptions.ConnectionClosed, pika.exceptions.ChannelClosed)):
        return f"{error.reply_code} {error.reply_text}"
    text = str(error) or type(error).__name__
    return text


def _redact(url: str) -> str:
    """The broker URL with its password replaced."""
    scheme = url.find("://")
    at = url.rfind("@")
    if scheme >= 0 and at > scheme:
        user = url[scheme + 3 : at].split(":", 1)[0]
        return f"{url[: scheme + 3]}{user}:***{url[at:]}"
    return url
