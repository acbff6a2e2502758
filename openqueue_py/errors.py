"""The OpenQueue exception hierarchy.

Arguments that Python can tell are wrong before any SQL runs raise
:class:`InvalidArgument` (a ``ValueError``). Errors raised by the SQL functions
reach the caller unchanged as psycopg exceptions (``psycopg.errors.
InvalidParameterValue`` for SQLSTATE 22023, ``NullValueNotAllowed`` for 22004):
the database is the one place that decides what is valid.

OpenQueue's own SQLSTATEs (class ``OQ``), raised by ``sql/``:

======  ==============================================================
OQ001   the database holds a newer schema version than this installer
======  ==============================================================
"""

from __future__ import annotations

import psycopg


class OpenQueueError(Exception):
    """Base class of every error OpenQueue raises itself."""


class InvalidArgument(OpenQueueError, ValueError):
    """An argument was refused before any SQL ran."""


class SchemaTooNew(OpenQueueError):
    """The database holds a newer OpenQueue schema than this package knows."""


class NotInstalled(OpenQueueError):
    """The database has no OpenQueue schema: run ``openqueue install``."""


NOT_INSTALLED_MESSAGE = "openqueue is not installed in this database: run `openqueue install`"


class ConnectionFailed(OpenQueueError, psycopg.OperationalError):
    """No connection could be opened: wrong host, port, role, password or database.

    The message is the server's (or the network's) reason on one line; the
    original ``psycopg.OperationalError`` is the ``__cause__``. Also a
    ``psycopg.OperationalError``, so code that retries on those still does.
    """


class LeaseGone(OpenQueueError):
    """``Job.ack_in`` found the lease no longer held: roll back; the job is someone else's now."""


class WorkerError(OpenQueueError):
    """A worker was configured wrongly (unknown queue, bad handler spec ...)."""


# SQLSTATEs that sql/ raises itself, mirrored here (a test keeps them in step).
SQLSTATE_ERRORS: dict[str, type[OpenQueueError]] = {
    "OQ001": SchemaTooNew,
}
