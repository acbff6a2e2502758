"""OpenQueue: a PostgreSQL-native job queue.

All queue logic lives in PL/pgSQL (schema ``openqueue``); this package is a
thin layer over it: :class:`Client`, :class:`AsyncClient`, the worker runtime
and the ``openqueue`` command line.
"""

from .client import Client
from .client_async import AsyncClient
from .errors import (
    ConnectionFailed,
    InvalidArgument,
    LeaseGone,
    NotInstalled,
    OpenQueueError,
    SchemaTooNew,
    WorkerError,
)
from .migrate import install
from .models import HealthCheck, Job, JobRecord, JobState, Leased, QueueStats
from .worker import AsyncWorker, Fail, Retry, Worker

__all__ = [
    "AsyncClient",
    "AsyncWorker",
    "Client",
    "ConnectionFailed",
    "Fail",
    "HealthCheck",
    "InvalidArgument",
    "Job",
    "JobRecord",
    "JobState",
    "LeaseGone",
    "Leased",
    "NotInstalled",
    "OpenQueueError",
    "QueueStats",
    "Retry",
    "SchemaTooNew",
    "Worker",
    "WorkerError",
    "install",
]
