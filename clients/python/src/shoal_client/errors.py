"""What can go wrong talking to a Shoal fleet."""

from __future__ import annotations


class ShoalError(Exception):
    """Base class of every error this package raises."""


class JobRejected(ShoalError):
    """The job message fails ``job.schema.json``; nothing was published.

    A job the worker refuses for reasons the schema cannot express (an
    output mount over ``/inputs``, a limit above the worker's ceiling) is
    not this: it is published and comes back as a :class:`Result` whose
    ``status`` is ``"rejected"``. (A job that was cancelled is not an error
    either: its :class:`Result` has ``status`` ``"cancelled"``.)
    """

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        #: Each schema violation, as ``"<JSON pointer>: <what is wrong>"``.
        self.errors: list[str] = list(errors or [])


class Unroutable(ShoalError):
    """The broker could not route the job to a queue (it was published
    ``mandatory`` and came back): the job queue does not exist, e.g. no
    worker declared it yet and the client declares passively."""


class Timeout(ShoalError):
    """No result arrived within the timeout; the job may still finish later
    (its result then lands in the results store)."""


class BrokerUnavailable(ShoalError):
    """The broker could not be reached, or did not confirm a publish in
    time. A job whose publish was not confirmed may or may not be queued:
    give jobs your own ids (``job_id=``) when a retry must not run them twice
    (results are keyed by id, so a duplicate only costs the work)."""
