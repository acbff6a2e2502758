"""A handler whose database writes and whose completion commit together.

``job.ack_in(conn)`` runs ``oq_ack`` with the job's lease token inside the
handler's own transaction. Either the receipt row and the job's completion
are both committed, or (an exception leaves the block) neither is: the
worker then nacks the job and it is retried. The worker sees that the
handler acked the job and does not ack it again. If the lease was lost in
the meantime (the job was cancelled, or its lease expired and another worker
took it), ``ack_in`` raises ``LeaseGone`` and the block rolls back.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from openqueue_py import Job


def receipt_handler(dsn: str) -> Callable[[Job], None]:
    def send_receipt(job: Job) -> None:
        with psycopg.connect(dsn) as conn, conn.transaction():
            conn.execute(
                "insert into receipts (order_id, attempt) values (%s, %s)",
                (job.payload["order"], job.attempts),
            )
            job.ack_in(conn, result={"receipt_for": job.payload["order"]})  # last, in the transaction

    return send_receipt
