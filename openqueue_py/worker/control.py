"""Handler control flow: :class:`Retry` and :class:`Fail`, and what a nack records."""

from __future__ import annotations

import traceback
from datetime import timedelta


class Retry(Exception):
    """Raise from a handler to retry the job later.

    ``in_`` is the delay (a ``timedelta`` or seconds); ``None`` lets the
    queue's exponential backoff decide. The attempt counts: with no attempts
    left the job goes dead, as SQL decides. Not an :class:`OpenQueueError`.
    """

    def __init__(self, in_: timedelta | float | None = None, message: str | None = None) -> None:
        if in_ is not None and not isinstance(in_, timedelta):
            in_ = timedelta(seconds=in_)
        self.in_: timedelta | None = in_
        self.message = message or "retry requested"
        super().__init__(self.message)


class Fail(Exception):
    """Raise from a handler to fail the job for good: it goes straight to dead.

    ``message`` is recorded in the job's errors. Not an :class:`OpenQueueError`.
    """

    def __init__(self, message: str = "failed by handler") -> None:
        self.message = message
        super().__init__(message)


def error_text(exc: BaseException) -> str:
    """What oq_nack records for an exception: type, message, then the traceback."""
    trace = "".join(traceback.format_exception(exc)).rstrip()
    return f"{type(exc).__name__}: {exc}\n\n{trace}"
