"""The AMQP topology this client declares: what ``schemas/topology.json``
says, written out here (not read from it) so that a test can hold the two
against each other. Workers declare the same (``schemas/src/topology.rs``);
RabbitMQ refuses a second declaration with other arguments, so they must
agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pika.compat

#: The workers' default ``amqp.max_attempts``.
DEFAULT_MAX_ATTEMPTS = 5


def delivery_limit(max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> int:
    """The job queue's ``x-delivery-limit``: the broker's own bound on
    deliveries of one job message (a backstop for messages that crash every
    worker), twice the workers' ``amqp.max_attempts`` and at least 2, as
    ``AmqpSection::topology`` in worker/src/config.rs declares it;
    topology.json shows the default, 10."""
    return max(2, 2 * int(max_attempts))


#: The default ``x-delivery-limit``, as in topology.json.
DELIVERY_LIMIT = delivery_limit()

#: Header with the publish time in milliseconds since the epoch, an AMQP
#: signed 64-bit integer (field type ``l``), which workers turn into the
#: result's ``queue_secs``.
PUBLISHED_MS_HEADER = "x-shoal-published-ms"
#: The publish time in microseconds (signed 64-bit integer), which workers
#: prefer: a fast fleet's queue time is well under a millisecond.
PUBLISHED_US_HEADER = "x-shoal-published-us"

ArgType = Literal["longstr", "signed-32", "signed-64"]


@dataclass(frozen=True)
class Argument:
    """A queue argument with its AMQP field type."""

    type: ArgType
    value: str | int

    def for_pika(self) -> Any:
        """The value as pika encodes it with this field type: a ``str`` is
        a long string (``S``), an ``int`` that fits is a signed 32-bit
        integer (``I``), and ``pika.compat.long`` a signed 64-bit one (``l``)."""
        if self.type == "longstr":
            return str(self.value)
        if self.type == "signed-32":
            n = int(self.value)
            if not -(2**31) <= n < 2**31:
                raise ValueError(f"{n} does not fit a signed 32-bit argument")
            return n
        return pika.compat.long(int(self.value))


@dataclass(frozen=True)
class Exchange:
    role: str
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    arguments: dict[str, Argument] = field(default_factory=dict)


@dataclass(frozen=True)
class Queue:
    role: str
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, Argument] = field(default_factory=dict)
    #: (exchange, routing key) pairs.
    bindings: tuple[tuple[str, str], ...] = ()


def _exchange_step(e: Exchange, passive: bool) -> tuple[str, dict[str, Any]]:
    """The ``exchange_declare`` call for ``e``: exactly as declared, or a
    passive check that it exists."""
    if passive:
        return ("exchange_declare", {"exchange": e.name, "passive": True})
    return (
        "exchange_declare",
        {
            "exchange": e.name,
            "exchange_type": e.type,
            "durable": e.durable,
            "auto_delete": e.auto_delete,
            "arguments": {k: a.for_pika() for k, a in e.arguments.items()},
        },
    )


@dataclass(frozen=True)
class Topology:
    """Queue and exchange names; a fleet may rename them (``amqp.*`` in
    docs/CONFIG.md), never change their types or arguments."""

    job_queue: str = "shoal.jobs"
    results_exchange: str = "shoal.results"
    dead_letter: str = "shoal.dead"
    #: Fanout exchange of control messages (cancel, inspect, follow): every
    #: worker binds a queue of its own to it, so one message reaches the
    #: whole fleet.
    control_exchange: str = "shoal.control"
    #: ``x-delivery-limit``: twice the fleet's ``amqp.max_attempts``.
    delivery_limit: int = DELIVERY_LIMIT

    def exchanges(self) -> list[Exchange]:
        return [
            Exchange(role="dead_letter", name=self.dead_letter, type="fanout"),
            Exchange(role="results", name=self.results_exchange, type="topic"),
            Exchange(role="control", name=self.control_exchange, type="fanout"),
        ]

    def queues(self) -> list[Queue]:
        return [
            Queue(
                role="dead_letter",
                name=self.dead_letter,
                # Replicated like the job queue: a classic queue lives on
                # one node, and dead letters routed there while it is down
                # are dropped.
                arguments={"x-queue-type": Argument("longstr", "quorum")},
                bindings=((self.dead_letter, ""),),
            ),
            Queue(
                role="jobs",
                name=self.job_queue,
                arguments={
                    "x-queue-type": Argument("longstr", "quorum"),
                    "x-dead-letter-exchange": Argument("longstr", self.dead_letter),
                    "x-delivery-limit": Argument("signed-32", self.delivery_limit),
                },
            ),
        ]

    def declarations(self, passive: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """The channel calls that declare everything, in the order the Rust
        side uses (dead-letter exchange, its queue and binding, results
        exchange, control exchange, job queue): ``(pika channel method,
        keyword arguments)``. Passively, only existence is checked (no
        binding is made), and not of the control exchange: workers from
        before cancel do not declare it, and submitting to them needs
        nothing of it (:meth:`control_declaration` is for cancelling)."""
        dead, results, control = self.exchanges()
        dead_queue, jobs = self.queues()

        def exchange(e: Exchange) -> tuple[str, dict[str, Any]]:
            return _exchange_step(e, passive)

        def queue(q: Queue) -> tuple[str, dict[str, Any]]:
            if passive:
                return ("queue_declare", {"queue": q.name, "passive": True})
            return (
                "queue_declare",
                {
                    "queue": q.name,
                    "durable": q.durable,
                    "exclusive": q.exclusive,
                    "auto_delete": q.auto_delete,
                    "arguments": {k: a.for_pika() for k, a in q.arguments.items()},
                },
            )

        steps = [exchange(dead), queue(dead_queue)]
        if not passive:
            for ex, key in dead_queue.bindings:
                steps.append(("queue_bind", {"queue": dead_queue.name, "exchange": ex, "routing_key": key}))
        steps.append(exchange(results))
        if not passive:
            steps.append(exchange(control))
        steps.append(queue(jobs))
        return steps

    def control_declaration(self, passive: bool = False) -> tuple[str, dict[str, Any]]:
        """The channel call that declares the control exchange alone (as
        :meth:`declarations` does), or checks that it exists."""
        (control,) = [e for e in self.exchanges() if e.role == "control"]
        return _exchange_step(control, passive)

    def as_json(self) -> dict[str, Any]:
        """This topology in the shape of ``schemas/topology.json`` (without
        its ``$comment``)."""

        def args(arguments: dict[str, Argument]) -> dict[str, Any]:
            return {k: {"type": a.type, "value": a.value} for k, a in arguments.items()}

        return {
            "protocol": 1,
            "exchanges": [
                {
                    "role": e.role,
                    "name": e.name,
                    "type": e.type,
                    "durable": e.durable,
                    "auto_delete": e.auto_delete,
                    "arguments": args(e.arguments),
                }
                for e in self.exchanges()
            ],
            "queues": [
                {
                    "role": q.role,
                    "name": q.name,
                    "durable": q.durable,
                    "exclusive": q.exclusive,
                    "auto_delete": q.auto_delete,
                    "arguments": args(q.arguments),
                    "bindings": [{"exchange": ex, "routing_key": key} for ex, key in q.bindings],
                }
                for q in self.queues()
            ],
        }
