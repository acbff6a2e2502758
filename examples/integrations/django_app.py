"""Enqueue a job inside a Django ``transaction.atomic()`` block.

Django's PostgreSQL backend runs on psycopg 3; ``connection.connection`` is
that psycopg connection, so the job joins the atomic block's transaction.
"""

from __future__ import annotations

from django.db import connection, transaction

from openqueue_py import Client


def place_order(client: Client, order_id: int) -> int:
    """Save the order and enqueue its receipt atomically; return the job id."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("insert into orders (id) values (%s)", [order_id])
        # Inside atomic() the connection is open and its transaction is the block's.
        return client.enqueue("send_receipt", {"order": order_id}, conn=connection.connection)
