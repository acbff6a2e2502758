"""A complete worker: enqueue a few jobs, process them, stop.

    python examples/worker_example.py                 # a throw-away embedded PostgreSQL
    OPENQUEUE_DSN=postgresql://... python examples/worker_example.py

Shows the three ways a handler ends: returning (the value is stored as the
result), raising Retry (run again later) and raising Fail (dead at once).
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import ExitStack

from openqueue_py import Client, Fail, Job, Retry, Worker, install
from openqueue_py.worker import LogFormatter


def send_email(job: Job) -> dict:
    """Pretend to send an email; the return value becomes the job's result."""
    address = job.payload["to"]
    if "@" not in address:
        raise Fail(f"not an email address: {address!r}")  # no point retrying
    if job.payload.get("flaky") and job.attempts == 1:
        raise Retry(in_=0.5, message="mail server busy")  # try again in half a second
    return {"sent_to": address, "attempt": job.attempts}


def main() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    with ExitStack() as stack:
        dsn = os.environ.get("OPENQUEUE_DSN")
        if not dsn:
            from openqueue_py.embedded import EmbeddedPostgres

            dsn = stack.enter_context(EmbeddedPostgres()).dsn()
        install(dsn)
        client = stack.enter_context(Client(dsn))

        ids = [
            client.enqueue("send_email", {"to": "ada@example.com"}),
            client.enqueue("send_email", {"to": "grace@example.com", "flaky": True}),
            client.enqueue("send_email", {"to": "nobody"}),
        ]

        worker = Worker(dsn, {"send_email": send_email}, concurrency=2, poll_interval=1.0)

        # Stop the worker once every job has reached a final state.
        def stop_when_done() -> None:
            while any(not client.get_job(job_id).status.terminal for job_id in ids):
                threading.Event().wait(0.1)
            worker.stop()

        threading.Thread(target=stop_when_done, daemon=True).start()
        worker.run()  # blocks until stop() (or SIGTERM / Ctrl-C)

        for job_id in ids:
            job = client.get_job(job_id)
            print(f"job {job.id}: {job.status}, attempts={job.attempts}, result={job.result}")
            for error in job.errors:
                print(f"    attempt {error['attempt']} failed: {error['error']}")


if __name__ == "__main__":
    main()
