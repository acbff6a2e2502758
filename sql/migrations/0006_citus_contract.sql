-- OpenQueue schema version 6: the contract suite on Citus (issue 10).
--
-- * oq_queue_settings() read each queue's settings through
--   openqueue._queue_settings() and openqueue._max_payload_bytes(), called
--   once per row. On Citus the query over the distributed tables runs on the
--   shards, where those calls are distributed queries of their own, which
--   Citus refuses ("cannot execute a distributed query from a query on a
--   shard"): the function, and `openqueue limits`/`openqueue stats` that use
--   it, failed on every cluster. It now reads the same tables with joins and
--   fills in the same built-in defaults; the result is unchanged.

create or replace function openqueue.oq_queue_settings()
returns table (
    queue_name text,
    max_attempts integer,
    lease_seconds integer,
    backoff_base interval,
    backoff_max interval,
    notify_mode text,
    max_payload_bytes integer,
    paused boolean,
    max_running integer,
    rate_limit integer,
    rate_period interval
)
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    with names as (
        select q.queue_name from openqueue.queues as q
        union
        select ql.queue_name from openqueue.queue_limits as ql
    )

    select
        n.queue_name,
        coalesce(q.max_attempts, 5),
        coalesce(q.lease_seconds, 30),
        coalesce(q.backoff_base, interval '1 second'),
        coalesce(q.backoff_max, interval '1 hour'),
        coalesce(q.notify_mode, 'always'),
        coalesce(ql.max_payload_bytes, 1048576),
        coalesce(q.paused, false),
        q.max_running,
        q.rate_limit,
        coalesce(q.rate_period, interval '1 second')
    from names as n
    left join openqueue.queues as q on n.queue_name = q.queue_name
    left join openqueue.queue_limits as ql on n.queue_name = ql.queue_name
    order by n.queue_name
$$;

comment on function openqueue.oq_queue_settings() is
'One row per queue with settings of its own (oq_configure_queue, '
'oq_set_queue_notify, oq_set_queue_max_payload, oq_pause_queue, '
'oq_set_queue_limits): (queue_name, max_attempts, lease_seconds, '
'backoff_base, backoff_max, notify_mode, max_payload_bytes, paused, '
'max_running, rate_limit, rate_period), built-in defaults filled in '
'(max_attempts 5, lease_seconds 30, backoff 1 second to 1 hour, notify_mode '
'always, max_payload_bytes 1048576). max_running and rate_limit NULL: no '
'limit. A queue not listed has every default and no limit.';

-- ---------------------------------------------------------------------------
-- * TRUNCATE openqueue.finished_jobs empties openqueue.finished_counts (its
--   AFTER TRUNCATE trigger). On Citus the TRUNCATE is applied to every shard
--   of finished_jobs too, and Citus copies the trigger to the shards, where
--   its DELETE of the distributed finished_counts was refused ("cannot
--   execute a distributed query from a query on a shard"): the TRUNCATE
--   failed. The trigger now acts only for the table itself (on the
--   coordinator, or on a single PostgreSQL); a shard's firing does nothing.
-- ---------------------------------------------------------------------------

create or replace function openqueue._finished_counts_truncated()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_table_name operator(pg_catalog.<>) 'finished_jobs' then
        return null;  -- a Citus shard (finished_jobs_<shard id>): the coordinator's firing counts
    end if;
    delete from openqueue.finished_counts;
    return null;
end;
$$;

comment on function openqueue._finished_counts_truncated() is
'Internal: AFTER TRUNCATE on finished_jobs: no finished jobs, no counts '
'(on Citus: for the distributed table, not for each of its shards).';
