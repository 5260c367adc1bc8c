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
The broker may be several URLs (the nodes of a cluster): each connection
tries them in turn, and one that is refused or lost moves on to the next
URL first (the one that failed is tried last); once every URL refused, it
backs off before the next round. The first start fails only when every URL
refused. No password reaches a log line or an exception (:class:`_Brokers`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import urllib.parse
from typing import Any
from collections.abc import Callable, Iterable

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


class _Dial:
    """Where one of the two connections stands in the list of brokers."""

    __slots__ = ("at", "delay", "failed")

    def __init__(self) -> None:
        #: Index of the URL being tried, or connected to.
        self.at = 0
        #: The next backoff (seconds).
        self.delay = BACKOFF_FIRST
        #: (index, why) of the URLs that failed in this round.
        self.failed: list[tuple[int, str]] = []


class Link:
    def __init__(
        self,
        url: str | Iterable[str],
        *,
        topology: Topology,
        declare: str,
        reply_queue: str,
        reply_keep_ms: int,
        connection_name: str,
        on_reply: Callable[[str | None, bytes], None],
        on_link: Callable[[bool], None],
    ) -> None:
        self._brokers = _Brokers(url)
        if not self._brokers.urls:
            raise ShoalError("no broker URL given")
        for i, one in enumerate(self._brokers.urls):
            try:
                if not one.lower().startswith(("amqp://", "amqps://")):
                    raise ValueError("not an amqp:// or amqps:// URL")
                pika.URLParameters(one)
            except Exception as e:  # pika's words may quote the URL
                # Neither the URL nor words quoting it are shown: a piece of
                # a password split at a comma is not a password scrub knows.
                why = self._brokers.scrub((str(e) or type(e).__name__).replace(one, "<the URL>"))
                raise ShoalError(
                    f"broker URL {i + 1} is not an AMQP URL ({why}); a comma, '@' or ':' inside a "
                    "user name or password must be written %2C, %40 or %3A"
                ) from None
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
        self._pub_dial = _Dial()
        self._outbox: collections.deque[list[Message]] = collections.deque()
        self._unconfirmed: dict[int, Message] = {}
        self._returned: dict[str, str] = {}
        self._tag = 0

        # Replies (IO thread only).
        self._reply_conn: SelectConnection | None = None
        self._reply_ch: Any = None
        self._reply_ready = False
        self._reply_dial = _Dial()

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
                f"could not connect to the broker at {self._brokers.redacted()} within {timeout:g} s"
            ) from None

    def publish(self, messages: list[Message]) -> None:
        """Hands messages to the IO thread; each one's ``future`` resolves
        when the broker confirmed it (or fails)."""
        if self._closing:
            raise ShoalError("the client is closed")
        self._loop.add_callback_threadsafe(lambda: self._enqueue(messages))

    def publish_control(self, body: bytes, properties: pika.BasicProperties, *, declare: str, timeout: float) -> bool:
        """Publishes a control message to the fleet's control exchange
        (routing key ``""``) and waits for the broker's confirm, blocking
        the caller's thread, on a short-lived connection of its own: control
        messages are rare, and a channel error on one (an exchange that does
        not exist) must not close the channel jobs are published on, failing
        their confirms. Tries the broker URLs in order.

        With ``declare="full"`` the exchange is declared first, as
        topology.json says. Otherwise it is only checked, and False returned
        when it does not exist: every worker that understands control
        messages declares it when it connects, so none ever connected to
        this broker and none is there to hear (what stops a job then is the
        cancel record in the store, which workers load when they connect)."""
        method, kwargs = self._topology.control_declaration(passive=declare != "full")
        exchange = self._topology.control_exchange
        failed: list[str] = []
        for i in range(len(self._brokers.urls)):
            params = self._params(i)
            params.socket_timeout = timeout
            params.stack_timeout = timeout
            params.blocked_connection_timeout = timeout
            try:
                conn = pika.BlockingConnection(params)
            except Exception as e:
                failed.append(f"{self._brokers.redacted(i)}: {self._why(e)}")
                continue
            try:
                ch = conn.channel()
                try:
                    getattr(ch, method)(**kwargs)
                except pika.exceptions.ChannelClosedByBroker as e:
                    if e.reply_code == 404 and declare != "full":
                        return False
                    raise
                ch.confirm_delivery()
                # Not mandatory: a fanout exchange no worker's queue is bound
                # to (none running) is not a failure; the store has the rest.
                ch.basic_publish(exchange=exchange, routing_key="", body=body, properties=properties)
                return True
            except Exception as e:
                raise BrokerUnavailable(
                    f"publishing a control message to exchange {exchange!r} on "
                    f"{self._brokers.redacted(i)}: {self._why(e)}"
                ) from None
            finally:
                try:
                    if conn.is_open:
                        conn.close()
                except Exception:
                    pass
        raise BrokerUnavailable("no broker answered: " + "; ".join(failed))

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

    def _params(self, i: int) -> pika.URLParameters:
        params = pika.URLParameters(self._brokers.urls[i])
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
        dial: _Dial,
    ) -> SelectConnection:
        """One of the client's two connections (``what``: "publishing" or
        "reply") to the broker URL ``dial`` stands at; a refused one moves
        on to the next URL (:meth:`_next_broker`)."""

        def refused(_conn: SelectConnection, error: BaseException) -> None:
            if self._closing:
                return
            self._next_broker(what, error, reopen, dial)

        return SelectConnection(
            self._params(dial.at),
            on_open_callback=on_open,
            on_open_error_callback=refused,
            on_close_callback=on_close,
            custom_ioloop=self._loop,
        )

    def _next_broker(self, what: str, error: BaseException, reopen: Callable[[], None], dial: _Dial) -> None:
        """The URL ``dial`` stands at refused (or, before the client started,
        dropped) the connection: the next URL is tried at once, until every
        one failed in this round; then the first start fails with every
        URL's reason, or, once started, a new round begins after the backoff."""
        brokers = self._brokers
        failed_at, why = dial.at, self._why(error)
        dial.failed.append((failed_at, why))
        dial.at = (failed_at + 1) % len(brokers.urls)
        if len(dial.failed) < len(brokers.urls):
            log.warning(
                "shoal client: %s connection to %s failed (%s); trying %s",
                what,
                brokers.redacted(failed_at),
                why,
                brokers.redacted(dial.at),
            )
            self._loop.call_later(0, reopen)
            return
        failed, dial.failed = dial.failed, []
        if len(failed) == 1:
            summary = f"broker at {brokers.redacted(failed_at)}: {why}"
        else:
            summary = "no broker answered: " + "; ".join(f"{brokers.redacted(i)}: {w}" for i, w in failed)
        if self._fail_first(BrokerUnavailable(summary)):
            return
        log.warning("shoal client: %s connection refused (%s); retrying in %g s", what, summary, dial.delay)
        self._schedule(reopen, dial)

    def _lost(self, what: str, reason: BaseException, reopen: Callable[[], None], dial: _Dial) -> None:
        """A connection closed: done when closing, counted as a refusal
        before the client started, else reconnect to the next broker URL
        after its backoff."""
        if self._closing:
            self._maybe_closed()
            return
        if not self._started:
            self._next_broker(what, reason, reopen, dial)
            return
        lost_at = dial.at
        dial.at = (lost_at + 1) % len(self._brokers.urls)
        dial.failed = []
        log.warning(
            "shoal client: %s connection to %s lost (%s); reconnecting to %s",
            what,
            self._brokers.redacted(lost_at),
            self._why(reason),
            self._brokers.redacted(dial.at),
        )
        self._schedule(reopen, dial)

    def _why(self, error: BaseException | None) -> str:
        """What went wrong, with every broker password replaced."""
        return self._brokers.scrub(_reason(error))

    def _open_pub(self) -> None:
        if self._closing:
            return
        self._pub_conn = self._connect("publishing", self._pub_opened, self._pub_closed, self._open_pub, self._pub_dial)

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
        self._pub_dial.delay = BACKOFF_FIRST
        self._pub_dial.failed = []
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
            where = self._brokers.redacted(self._pub_dial.at)
            error = ShoalError(f"declaring the topology on {where}: {self._why(reason)}{hint}")
            if self._fail_first(error):
                return
            log.error("shoal client: %s; retrying", error)
        else:
            log.warning("shoal client: publishing channel closed (%s); reconnecting", self._why(reason))
        # Start over on a fresh connection: closing it schedules the
        # reconnection (after the backoff), in _pub_closed.
        conn = self._pub_conn
        if conn is not None and conn.is_open:
            conn.close()

    def _pub_closed(self, conn: SelectConnection, reason: BaseException) -> None:
        self._pub_ready = False
        self._pub_ch = None
        self._fail_unconfirmed(reason)
        self._lost("publishing", reason, self._open_pub, self._pub_dial)

    def _schedule(self, what: Callable[[], None], dial: _Dial) -> None:
        delay = dial.delay
        dial.delay = min(delay * 2, BACKOFF_MAX)
        self._loop.call_later(delay, what)

    def _fail_unconfirmed(self, reason: BaseException) -> None:
        pending, self._unconfirmed = self._unconfirmed, {}
        self._returned.clear()
        for message in pending.values():
            if not message.future.done():
                message.future.set_exception(
                    BrokerUnavailable(
                        f"the connection to the broker dropped before it confirmed job {message.job_id} "
                        f"({self._why(reason)}); it may or may not be queued"
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
                    message.future.set_exception(BrokerUnavailable(f"publishing job {message.job_id}: {self._why(e)}"))
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
        self._reply_conn = self._connect("reply", self._reply_opened, self._reply_closed, self._open_reply, self._reply_dial)

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
        self._reply_dial.delay = BACKOFF_FIRST
        self._reply_dial.failed = []
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
            log.debug("shoal client: ack failed: %s", self._why(e))

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
            ShoalError(f"declaring reply queue {self.reply_queue}: {self._why(reason)}")
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
        self._lost("reply", reason, self._open_reply, self._reply_dial)

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


#: What stands for a password wherever one is shown.
_REDACTED = "***"


class _Brokers:
    """The broker URLs, in the order they are tried (the nodes of a
    cluster), and keeping their passwords out of every text shown: the URLs
    themselves through :meth:`redacted`, any words that may quote one
    (pika's exceptions, the broker's replies) through :meth:`scrub`.

    ``given`` is a URL, several comma-separated, or a list of such; blank
    items are skipped, whitespace trimmed."""

    def __init__(self, given: str | Iterable[str]) -> None:
        entries = [given] if isinstance(given, str) else list(given)
        #: The URLs, credentials included: for connecting only.
        self.urls = [url for entry in entries for url in _split_urls(str(entry))]
        secrets = set()
        # The passwords of the URLs, and of each entry whole: a comma
        # written inside a password (it must be %2C) splits it across two
        # "URLs", neither of which holds the whole password.
        for url in self.urls + [str(entry) for entry in entries]:
            span = _password_span(url)
            if span is not None:
                written = url[span[0] : span[1]]
                secrets.update((written, urllib.parse.unquote(written)))
        secrets.discard("")
        # Longest first: a password that holds another is replaced whole.
        self._secrets = sorted(secrets, key=len, reverse=True)

    def redacted(self, i: int | None = None) -> str:
        """URL ``i`` (else all of them, comma-separated) as it may be
        shown: the user kept, the password replaced."""
        if i is None:
            return ",".join(self.redacted(j) for j in range(len(self.urls)))
        url = self.urls[i]
        span = _password_span(url)
        if span is None:
            return self.scrub(url)
        return f"{url[: span[0]]}{_REDACTED}{url[span[1] :]}"

    def scrub(self, text: str) -> str:
        """``text`` with every password of these URLs, as written and
        percent-decoded, replaced."""
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def __repr__(self) -> str:
        return f"<_Brokers {self.redacted()}>"


def _split_urls(entry: str) -> list[str]:
    """The URLs of a comma-separated entry. A comma inside a user name or
    password (which should be ``%2C``) does not split: a piece that ends
    before its URL's ``@`` takes the next piece back, so no password is cut
    into pieces that could be shown whole."""
    urls: list[str] = []
    for piece in entry.split(","):
        if not piece.strip():
            continue
        if urls and _cut_in_userinfo(urls[-1]) and "@" in piece and "://" not in piece:
            urls[-1] += "," + piece
        else:
            urls.append(piece)
    return [url.strip() for url in urls]


def _cut_in_userinfo(url: str) -> bool:
    """``scheme://user...`` with no ``@`` yet: cut before its host."""
    scheme = url.find("://")
    return scheme >= 0 and "@" not in url[scheme + 3 :] and "/" not in url[scheme + 3 :]


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password is in ``url``: after the first ``:`` of the
    user-info, up to the last ``@`` (worked out on the text, so that a URL
    too broken to parse still has its password found)."""
    scheme = url.find("://")
    start = 0 if scheme < 0 else scheme + 3
    at = url.rfind("@", start)
    if at < 0:
        return None
    colon = url.find(":", start, at)
    if colon < 0:
        return None
    return colon + 1, at


def _redact(url: str | Iterable[str]) -> str:
    """The broker URL(s) with their passwords replaced, comma-separated."""
    return _Brokers(url).redacted()
