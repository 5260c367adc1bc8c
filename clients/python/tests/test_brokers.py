"""Several broker URLs (the nodes of a cluster): the client moves on to the
next one when a connection is refused or lost, and no password ever shows.
Needs RabbitMQ (conftest.py), not the worker."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from shoal_client import BrokerUnavailable, Client, ShoalError
from shoal_client._amqp import _Brokers, _redact

from conftest import AMQP_URL, Proxy, delete_topology, queue_depth, topology_names, unique


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def _broker_port() -> int:
    import pika

    return int(pika.URLParameters(AMQP_URL).port)


def _leaks(secret: str, caplog: pytest.LogCaptureFixture, *texts: str) -> list[str]:
    """Everything shown that contains ``secret``."""
    shown = list(texts) + [r.getMessage() for r in caplog.records] + [caplog.text]
    return [t for t in shown if secret in t]


def _until(predicate: Callable[[], bool], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ----------------------------------------------------------------- the helper


def test_brokers_split_redact_and_scrub_passwords_as_written_and_decoded() -> None:
    brokers = _Brokers(" amqp://me:pa%24%24word@h/%2f , ,amqp://me:other@h2:5672/v,")
    assert brokers.urls == ["amqp://me:pa%24%24word@h/%2f", "amqp://me:other@h2:5672/v"]
    assert brokers.redacted() == "amqp://me:***@h/%2f,amqp://me:***@h2:5672/v"
    assert brokers.redacted(1) == "amqp://me:***@h2:5672/v"
    said = "vhost 'x' for pa$$word and pa%24%24word and other not found"
    assert brokers.scrub(said) == "vhost 'x' for *** and *** and *** not found"
    assert "pa" not in repr(brokers) and "other" not in repr(brokers)
    # A list, each item possibly a comma-separated list itself.
    listed = _Brokers(["amqp://a:s%2Fx@h1/%2f,amqp://b@h2/%2f", "", "amqp://h3"])
    assert listed.urls == ["amqp://a:s%2Fx@h1/%2f", "amqp://b@h2/%2f", "amqp://h3"]
    assert listed.redacted() == "amqp://a:***@h1/%2f,amqp://b@h2/%2f,amqp://h3"
    assert listed.scrub("s/x or s%2Fx") == "*** or ***"
    # An unencoded '@' in the password: up to the last '@'.
    assert _redact("amqp://u:p@ss@h/%2f") == "amqp://u:***@h/%2f"
    assert _redact(("amqp://u:p1@h1/%2f", "amqp://u:p2@h2/%2f")) == "amqp://u:***@h1/%2f,amqp://u:***@h2/%2f"
    # Longest first: a password holding another one is replaced whole.
    assert _Brokers("amqp://u:ab@h1,amqp://u:abcd@h2").scrub("abcd ab") == "*** ***"


def test_a_malformed_url_is_named_without_its_password() -> None:
    secret = f"hunter2-{uuid.uuid4().hex[:8]}"
    for bad in (f"amqp://u:{secret}@127.0.0.1:notaport/%2f", f"amqp:u:{secret}@127.0.0.1", f"http://u:{secret}@h/"):
        with pytest.raises(ShoalError) as caught:
            Client(f"{AMQP_URL},{bad}", declare="none", connect_timeout=5)
        text = f"{caught.value} {caught.value!r}"
        assert "broker URL 2 is not an AMQP URL" in text, text
        assert secret not in text, text
    # A comma inside a password does not split the URL; malformed for
    # another reason, no piece of the password is shown.
    with pytest.raises(ShoalError) as caught:
        Client("amqp://u:hunter,secret@127.0.0.1:port/%2f", declare="none", connect_timeout=5)
    text = f"{caught.value} {caught.value!r}"
    assert "broker URL 1 is not an AMQP URL" in text, text
    assert "hunter" not in text and "secret" not in text, text
    brokers = _Brokers("amqp://u:hunter,secret@h/%2f, amqp://v:w@h2/%2f")
    assert brokers.redacted() == "amqp://u:***@h/%2f,amqp://v:***@h2/%2f"
    with pytest.raises(ShoalError, match="no broker URL"):
        Client(" , ", declare="none", connect_timeout=5)


def test_from_env_refuses_both_url_variables_without_showing_passwords() -> None:
    secret = f"hunter2-{uuid.uuid4().hex[:8]}"
    env = {"SHOAL_AMQP_URL": f"amqp://u:{secret}@h1/%2f", "SHOAL_AMQP_URLS": f"amqp://u:{secret}@h2/%2f"}
    with pytest.raises(ShoalError, match="set one of them") as caught:
        Client.from_env(env)
    assert secret not in str(caught.value)
    assert "amqp://u:***@h1/%2f" in str(caught.value)


# ----------------------------------------------------------------- the broker


@pytest.mark.parametrize("form", ["string", "list", "env"])
def test_a_refused_url_is_skipped_for_the_next(form: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    dead = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/%2f"
    names = topology_names()
    options: dict[str, Any] = dict(names, declare="full", cache_dir=None, connection_name=unique("pytest-brokers"))
    try:
        if form == "string":
            client = Client(f" {dead} , {AMQP_URL} ,", connect_timeout=15, **options)
        elif form == "list":
            client = Client([dead, AMQP_URL], connect_timeout=15, **options)
        else:
            client = Client.from_env({"SHOAL_AMQP_URL": f"{dead},{AMQP_URL}"}, connect_timeout=15, **options)
        with client:
            assert client.broker == _redact([dead, AMQP_URL])
            assert "***" in repr(client) and ":guest@" not in repr(client)
            # The topology was declared through the live broker, and jobs go there.
            job = client.submit("sha256:" + "ab" * 32)
            assert job
            assert queue_depth(names["job_queue"]) == 1
        warned = [r.getMessage() for r in caplog.records if r.name == "shoal_client" and "failed" in r.getMessage()]
        assert any(_redact(dead) in m for m in warned), warned
    finally:
        delete_topology(names)


def test_every_url_refused_fails_naming_each_without_its_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = f"hunter2-{uuid.uuid4().hex[:12]}"
    # As written in the second URL: percent-encoded ("!" is %21).
    urls = [
        f"amqp://shoal:{secret}@127.0.0.1:{_closed_port()}/%2f",
        f"amqp://shoal:{secret}%21@127.0.0.1:{_closed_port()}/fleet",
    ]
    with pytest.raises(BrokerUnavailable) as caught:
        Client(",".join(urls), declare="none", connect_timeout=15)
    error = caught.value
    text = str(error)
    for url in urls:
        assert _redact(url) in text, text
    assert "no broker answered" in text, text
    chained = [str(e) for e in (error.__cause__, error.__context__) if e is not None]
    assert not _leaks(secret, caplog, text, repr(error), *chained)


def test_a_lost_connection_moves_on_to_the_next_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shoal_client")
    proxy = Proxy(("127.0.0.1", _broker_port()))
    first = AMQP_URL.replace(f":{_broker_port()}/", f":{proxy.port}/")
    assert first != AMQP_URL
    names = topology_names()
    try:
        with Client([first, AMQP_URL], declare="full", **names) as client:
            client.submit("sha256:" + "ab" * 32)  # through the proxy
            proxy.down()  # that node is gone: both connections are lost, and refused there
            assert _until(lambda: client.stats()["reconnects"] >= 1), client.stats()
            # Published once the publishing connection is back, on the other URL.
            client.submit("sha256:" + "cd" * 32)
            assert queue_depth(names["job_queue"]) == 2
        lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
        assert any(f"reconnecting to {_redact(AMQP_URL)}" in m for m in lost), lost
        assert client.stats()["reconnects"] >= 1
    finally:
        proxy.close()
        delete_topology(names)
