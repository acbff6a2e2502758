#!/usr/bin/env bash
# OpenQueue with nothing but psql: enqueue, lease, ack, nack, dead letters, replay.
#
#   DSN=postgresql://user@host/db examples/psql/run.sh     (PSQL=/path/to/psql to pick the binary)
#
# Prints each step and exits non-zero as soon as a result is not the expected
# one. Uses the queue "psql_example" of the database it is given.
set -euo pipefail
: "${DSN:?set DSN to the database holding the openqueue schema}"
PSQL=${PSQL:-psql}

q() { "$PSQL" "$DSN" -X -q -v ON_ERROR_STOP=1 -At -c "$1"; }
expect() {  # expect WHAT GOT WANTED
    if [ "$2" != "$3" ]; then
        echo "FAIL: $1: expected '$3', got '$2'" >&2
        exit 1
    fi
    echo "ok   $1: $2"
}

# 1. Two jobs: a good address (priority 10, leased first) and a bad one (2 attempts).
good=$(q "select openqueue.oq_enqueue(queue_name => 'psql_example',
            payload => '{\"to\": \"ada@example.com\"}', priority => 10)")
bad=$(q "select openqueue.oq_enqueue(queue_name => 'psql_example',
           payload => '{\"to\": \"nobody\"}', max_attempts => 2)")
echo "enqueued jobs $good and $bad"

# 2. Lease: the token is new for every lease, so capture it.
IFS='|' read -r id token attempts < <(q "select id, lease_token, attempts
    from openqueue.oq_lease(queue_name => 'psql_example', worker_id => 'psql-worker')")
expect "leased first (highest priority)" "$id" "$good"
expect "its attempt" "$attempts" "1"
expect "ack with the lease's token" \
    "$(q "select openqueue.oq_ack(job_id => $id, lease_token => '$token', result => '{\"sent\": true}')")" "t"
expect "a second ack of the same lease" "$(q "select openqueue.oq_ack($id, '$token')")" "f"

# 3. The bad job fails: nack retries it (due at once here), the last attempt makes it dead.
IFS='|' read -r id token < <(q "select id, lease_token
    from openqueue.oq_lease(queue_name => 'psql_example', worker_id => 'psql-worker')")
expect "then the other job" "$id" "$bad"
expect "nack, attempts left" "$(q "select openqueue.oq_nack(job_id => $id, lease_token => '$token',
    error => 'no @ in address', retry_in => '0 seconds')")" "failed"
IFS='|' read -r id token attempts < <(q "select id, lease_token, attempts
    from openqueue.oq_lease(queue_name => 'psql_example', worker_id => 'psql-worker')")
expect "leased again, attempt" "$attempts" "2"
expect "nack, no attempts left" "$(q "select openqueue.oq_nack($id, '$token', 'no @ in address')")" "dead"
expect "its error history" "$(q "select string_agg(e->>'attempt' || ': ' || (e->>'error'), '; ')
    from openqueue.jobs, jsonb_array_elements(errors) e where id = $id")" "1: no @ in address; 2: no @ in address"

# 4. Replay the dead job and complete it, this time in one psql session with \gset.
out=$("$PSQL" "$DSN" -X -q -v ON_ERROR_STOP=1 -At <<SQL
select openqueue.oq_replay(job_id => $bad);
select id, lease_token from openqueue.oq_lease(queue_name => 'psql_example', worker_id => 'psql-worker') \gset
select openqueue.oq_ack(job_id => :id, lease_token => :'lease_token');
SQL
)
expect "replay, then lease and ack with \\gset" "$(echo "$out" | tr '\n' ' ')" "t t "

# 5. Nothing left to do.
expect "lease on an empty queue" "$(q "select count(*)
    from openqueue.oq_lease(queue_name => 'psql_example', worker_id => 'psql-worker')")" "0"
expect "stats (pending|processing|failed|completed|dead)" "$(q "select pending, processing, failed, completed, dead
    from openqueue.oq_stats() where queue_name = 'psql_example'")" "0|0|0|2|0"
echo "all good"
