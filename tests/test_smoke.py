from openqueue_py import Client


def test_seed_example_round_trip(dsn):
    client = Client(dsn)
    job_id = client.enqueue(queue_name="send_email", payload={"to": "user@example.com"})
    leased = client.lease(queue_name="send_email", worker_id="worker-1")
    assert leased is not None and leased.job.id == job_id
    assert leased.job.payload == {"to": "user@example.com"}
    assert client.ack(leased.job.id, leased.lease_token) is True
    assert client.get_job(job_id).status == "completed"
    client.close()
