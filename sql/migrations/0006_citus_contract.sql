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
--
-- * Security: oq_distribute() made the views openqueue.jobs and
--   openqueue.schedules read the SECURITY DEFINER functions
--   openqueue._jobs_rows() and openqueue._schedules_rows(), granted to
--   openqueue_admin, but left them executable by PUBLIC (a new function's
--   default): on a cluster openqueue_producer and openqueue_worker could read
--   every job through them. Revoked from PUBLIC, here for databases already
--   distributed and in _distribute_view for later oq_distribute() calls.
-- * On Citus a hot-path call inside a transaction block runs its
--   _routed_* function on the coordinator, which turned the setting
--   openqueue.route off with set_config(..., true): for the rest of the
--   transaction. Every later call in it then took the single-PostgreSQL
--   bodies, which Citus refuses where they lock rows across shards
--   (oq_reap: "could not run distributed query with FOR UPDATE/SHARE
--   commands"; likewise oq_purge_batch, oq_next_run_at, the counter fold).
--   Each _routed_* function now restores the setting when it returns.
-- * oq_reap() on Citus dropped expired oq_wait registrations with one
--   DELETE over every shard of queue_waiters, which Citus makes wait for any
--   open transaction holding a multi-shard modification of that table (two
--   reaps, one in an open transaction, waited for each other). It now
--   deletes them queue by queue, each on its one shard.

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

-- ---------------------------------------------------------------------------
-- The SECURITY DEFINER functions behind the views on Citus: not PUBLIC's.
-- ---------------------------------------------------------------------------

create or replace function openqueue._distribute_view(view_name text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_view regclass := format('openqueue.%I', _distribute_view.view_name)::regclass;
    v_all text := format('openqueue.%I', '_' || _distribute_view.view_name || '_all');
    v_rows text := format('openqueue.%I', '_' || _distribute_view.view_name || '_rows');
    v_columns text;
    v_propagate text;
begin
    if pg_catalog.to_regclass(v_all) is not null then
        return;  -- done before
    end if;
    -- Objects of the coordinator only: the views are read there.
    v_propagate := current_setting('citus.enable_ddl_propagation');
    perform set_config('citus.enable_ddl_propagation', 'off', true);
    execute format('create view %s as %s', v_all, pg_catalog.pg_get_viewdef(v_view));
    select string_agg(
        case
            when a.attname = 'lease_token' then format('case when v_owner then v.%I end', a.attname)
            else format('v.%I', a.attname)
        end,
        ', ' order by a.attnum
    )
    into v_columns
    from pg_catalog.pg_attribute as a
    where a.attrelid = v_view and a.attnum > 0 and not a.attisdropped;
    execute format(
        $ddl$
        create function %1$s()
        returns setof %2$s
        language plpgsql
        stable
        security definer
        set search_path = pg_catalog, pg_temp
        as $body$
        declare
            v_owner boolean := pg_catalog.pg_has_role(
                session_user,
                (select n.nspowner from pg_catalog.pg_namespace as n where n.nspname = 'openqueue'),
                'MEMBER'
            );
        begin
            return query select %3$s from %2$s as v;
        end;
        $body$
        $ddl$,
        v_rows, v_all, v_columns
    );
    execute format('comment on function %s() is %L', v_rows,
        format('Internal (Citus): the rows of the view %s, read as the schema owner.', v_view));
    execute format('create or replace view %s as select * from %s()', v_view, v_rows);
    -- A new function is executable by PUBLIC: this one reads every row as
    -- the owner, so only openqueue_admin (below) may call it.
    execute format('revoke all on function %s() from public', v_rows);
    if exists (select from pg_catalog.pg_roles as r where r.rolname = 'openqueue_admin') then
        execute format('grant execute on function %s() to openqueue_admin', v_rows);
    end if;
    perform set_config('citus.enable_ddl_propagation', v_propagate, true);
end;
$$;

comment on function openqueue._distribute_view(text) is
'Internal (oq_distribute): make the view openqueue.<view_name> read its rows '
'through the SECURITY DEFINER function openqueue._<view_name>_rows(), so '
'that it can be read by openqueue_admin and updated through its INSTEAD OF '
'triggers on Citus.';

do $$
begin
    if pg_catalog.to_regprocedure('openqueue._jobs_rows()') is not null then
        revoke all on function openqueue._jobs_rows() from public;
    end if;
    if pg_catalog.to_regprocedure('openqueue._schedules_rows()') is not null then
        revoke all on function openqueue._schedules_rows() from public;
    end if;
end;
$$;

-- ---------------------------------------------------------------------------
-- oq_reap: on Citus, expired waiter registrations dropped queue by queue.
-- Otherwise version 5's body, unchanged.
-- ---------------------------------------------------------------------------

create or replace function openqueue.oq_reap()
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_dead integer;
    v_queues text[];
    v_queue text;
    v_count integer := 0;
begin
    if openqueue._route() then
        -- Citus: the queues with expired leases or counters to fold, read
        -- across the shards without locks, then each reaped by statements
        -- on its one shard.
        for v_queue in
            select lj.queue_name
            from openqueue.live_jobs as lj
            where lj.status = 'processing'
              and lj.lease_expires_at < now()
            union
            select fc.queue_name
            from openqueue.finished_counts as fc
            where fc.shard <> 0
        loop
            v_count := v_count + openqueue._routed_reap(v_queue);
        end loop;
        -- Registrations of workers that stopped waiting, queue by queue:
        -- one multi-shard DELETE would wait for any open transaction that
        -- modified queue_waiters on several shards (Citus serialises
        -- multi-shard modifications of a table), where one PostgreSQL waits
        -- only for the rows.
        for v_queue in
            select distinct w.queue_name
            from openqueue.queue_waiters as w
            where w.wait_until <= now()
        loop
            delete from openqueue.queue_waiters as w
            where w.queue_name = v_queue and w.wait_until <= now();
        end loop;
        return v_count;
    end if;

    -- SKIP LOCKED everywhere: a job being acked or heartbeated right now is
    -- skipped rather than waited for; a later reap sees it if still expired.
    -- Both claims read the in-flight rows through live_jobs_in_flight and
    -- check their expiry row by row (lease_expires_at is not indexed, so
    -- that heartbeats are HOT).

    -- Attempts used up: straight on to dead, with the error recorded.
    with dead as (
        delete from openqueue.live_jobs as lj
        where lj.id = any(array(
            select e.id
            from openqueue.live_jobs as e
            where e.status = 'processing'
              and e.lease_expires_at < now()
              and e.attempts >= e.max_attempts
            for update skip locked
        ))
        returning lj.*
    )

    insert into openqueue.finished_jobs (
        id, queue_name, status, priority, run_at, attempts, max_attempts,
        leased_by, payload, errors, idempotency_key, created_at, finished_at
    )
    select
        d.id, d.queue_name, 'dead', d.priority, d.run_at, d.attempts, d.max_attempts,
        d.leased_by, d.payload,
        d.errors || openqueue._error_entry(d.attempts, 'lease expired'),
        d.idempotency_key, d.created_at, now()
    from dead as d;
    get diagnostics v_dead = row_count;

    -- Attempts left: pending again, leasable at once (its run_at has come).
    with reclaimed as (
        update openqueue.live_jobs as lj
        set
            status = 'pending',
            due = lj.run_at <= now(),
            lease_token = null,
            lease_expires_at = null,
            errors = lj.errors || openqueue._error_entry(lj.attempts, 'lease expired')
        where lj.id = any(array(
            select e.id
            from openqueue.live_jobs as e
            where e.status = 'processing'
              and e.lease_expires_at < now()
              and e.attempts < e.max_attempts
            for update skip locked
        ))
        returning lj.queue_name
    )

    select array_agg(r.queue_name) into v_queues from reclaimed as r;

    -- Registrations of workers that stopped waiting (see oq_wait).
    delete from openqueue.queue_waiters as w where w.wait_until <= now();

    -- Counter rows of exited backends (see openqueue.finished_counts).
    perform openqueue._fold_finished_counts();

    perform pg_notify('openqueue', q.queue_name)
    from (select distinct u.queue_name from unnest(v_queues) as u (queue_name)) as q;

    return v_dead + coalesce(cardinality(v_queues), 0);
end;
$$;

comment on function openqueue.oq_reap() is
'Reclaim every processing job whose lease has expired: it becomes pending '
'again (error ''lease expired'' recorded), or dead if its attempts are used '
'up. Returns how many jobs were reclaimed; notifies the refilled queues. '
'Also drops expired oq_wait registrations and folds the finished-job counters '
'of exited sessions. Safe to run concurrently and often. On Citus each queue '
'is reaped by statements on its one shard.';

-- ---------------------------------------------------------------------------
-- openqueue.route off during a _routed_* call only (restored on return).
-- Otherwise version 5's bodies, unchanged.
-- ---------------------------------------------------------------------------

create or replace function openqueue._routed_enqueue(
    queue_name text,
    payload jsonb,
    priority integer,
    run_at timestamptz,
    max_attempts integer,
    idempotency_key text
)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_route text := pg_catalog.current_setting('openqueue.route', true);
    v_result bigint;
begin
    -- Routing off: the public function below runs its body here. Restored
    -- when this returns: on the coordinator, inside a transaction block (not
    -- delegated), the rest of the transaction keeps routing.
    perform set_config('openqueue.route', 'off', true);
    v_result := openqueue.oq_enqueue(
        _routed_enqueue.queue_name, _routed_enqueue.payload, _routed_enqueue.priority,
        _routed_enqueue.run_at, _routed_enqueue.max_attempts, _routed_enqueue.idempotency_key
    );
    perform set_config('openqueue.route', coalesce(v_route, 'off'), true);
    return v_result;
end;
$$;

comment on function openqueue._routed_enqueue(text, jsonb, integer, timestamptz, integer, text) is
'Internal: oq_enqueue on the node holding queue_name (Citus delegates it by queue_name).';

create or replace function openqueue._routed_enqueue_batch(
    queue_name text,
    payloads jsonb,
    priority integer,
    run_at timestamptz,
    max_attempts integer
)
returns setof bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_route text := pg_catalog.current_setting('openqueue.route', true);
begin
    -- Routing off: the public function below runs its body here. Restored
    -- when this returns: on the coordinator, inside a transaction block (not
    -- delegated), the rest of the transaction keeps routing.
    perform set_config('openqueue.route', 'off', true);
    return query
    select r.id
    from openqueue.oq_enqueue_batch(
        _routed_enqueue_batch.queue_name, _routed_enqueue_batch.payloads,
        _routed_enqueue_batch.priority, _routed_enqueue_batch.run_at,
        _routed_enqueue_batch.max_attempts
    ) as r (id);
    perform set_config('openqueue.route', coalesce(v_route, 'off'), true);
    return;
end;
$$;


comment on function openqueue._routed_enqueue_batch(text, jsonb, integer, timestamptz, integer) is
'Internal: oq_enqueue_batch on the node holding queue_name (Citus delegates it by queue_name).';

create or replace function openqueue._routed_lease(
    queue_name text,
    worker_id text,
    lease_seconds integer,
    batch_size integer
)
returns table (
    id bigint,
    payload jsonb,
    priority integer,
    attempts integer,
    max_attempts integer,
    run_at timestamptz,
    created_at timestamptz,
    lease_token uuid,
    lease_expires_at timestamptz
)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_route text := pg_catalog.current_setting('openqueue.route', true);
begin
    -- Routing off: the public function below runs its body here. Restored
    -- when this returns: on the coordinator, inside a transaction block (not
    -- delegated), the rest of the transaction keeps routing.
    perform set_config('openqueue.route', 'off', true);
    return query
    select *
    from openqueue.oq_lease(
        _routed_lease.queue_name, _routed_lease.worker_id,
        _routed_lease.lease_seconds, _routed_lease.batch_size
    );
    perform set_config('openqueue.route', coalesce(v_route, 'off'), true);
    return;
end;
$$;


comment on function openqueue._routed_lease(text, text, integer, integer) is
'Internal: oq_lease on the node holding queue_name (Citus delegates it by queue_name).';

create or replace function openqueue._routed_heartbeat(
    queue_name text,
    job_id bigint,
    lease_token uuid,
    lease_seconds integer
)
returns timestamptz
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_route text := pg_catalog.current_setting('openqueue.route', true);
    v_result timestamptz;
begin
    -- Routing off: the public function below runs its body here. Restored
    -- when this returns: on the coordinator, inside a transaction block (not
    -- delegated), the rest of the transaction keeps routing.
    perform set_config('openqueue.route', 'off', true);
    v_result := openqueue.oq_heartbeat(
        _routed_heartbeat.job_id, _routed_heartbeat.lease_token,
        _routed_heartbeat.lease_seconds, _routed_heartbeat.queue_name
    );
    perform set_config('openqueue.route', coalesce(v_route, 'off'), true);
    return v_result;
end;
$$;

comment on function openqueue._routed_heartbeat(text, bigint, uuid, integer) is
'Internal: oq_heartbeat on the node holding queue_name (Citus delegates it by queue_name).';

create or replace function openqueue._routed_ack(
    queue_name text,
    job_id bigint,
    lease_token uuid,
    result jsonb
)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_route text := pg_catalog.current_setting('openqueue.route', true);
    v_result boolean;
begin
    -- Routing off: the public function below runs its body here. Restored
    -- when this returns: on the coordinator, inside a transaction block (not
    -- delegated), the rest of the transaction keeps routing.
    perform set_config('openqueue.route', 'off', true);
    v_result := openqueue.oq_ack(
        _routed_ack.job_id, _routed_ack.lease_token, _routed_ack.result, _routed_ack.queue_name
    );
    perform set_config('openqueue.route', coalesce(v_route, 'off'), true);
    return v_result;
end;
$$;

comment on function openqueue._routed_ack(text, bigint, uuid, jsonb) is
'Internal: oq_ack on the node holding queue_name (Citus delegates it by queue_name).';

create or replace function openqueue._routed_nack(
    queue_name text,
    job_id bigint,
    lease_token uuid,
    error text,
    retry_in interval,
    retry boolean
)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_route text := pg_catalog.current_setting('openqueue.route', true);
    v_result text;
begin
    -- Routing off: the public function below runs its body here. Restored
    -- when this returns: on the coordinator, inside a transaction block (not
    -- delegated), the rest of the transaction keeps routing.
    perform set_config('openqueue.route', 'off', true);
    v_result := openqueue.oq_nack(
        _routed_nack.job_id, _routed_nack.lease_token, _routed_nack.error,
        _routed_nack.retry_in, _routed_nack.retry, _routed_nack.queue_name
    );
    perform set_config('openqueue.route', coalesce(v_route, 'off'), true);
    return v_result;
end;
$$;

comment on function openqueue._routed_nack(text, bigint, uuid, text, interval, boolean) is
'Internal: oq_nack on the node holding queue_name (Citus delegates it by queue_name).';

create or replace function openqueue._routed_ack_many(
    queue_name text,
    job_ids bigint[],
    lease_tokens uuid[],
    results jsonb[]
)
returns setof bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_route text := pg_catalog.current_setting('openqueue.route', true);
begin
    -- Routing off: the public function below runs its body here. Restored
    -- when this returns: on the coordinator, inside a transaction block (not
    -- delegated), the rest of the transaction keeps routing.
    perform set_config('openqueue.route', 'off', true);
    return query
    select r.id
    from openqueue.oq_ack_many(
        _routed_ack_many.job_ids, _routed_ack_many.lease_tokens,
        _routed_ack_many.results, _routed_ack_many.queue_name
    ) as r (id);
    perform set_config('openqueue.route', coalesce(v_route, 'off'), true);
    return;
end;
$$;


comment on function openqueue._routed_ack_many(text, bigint[], uuid[], jsonb[]) is
'Internal: oq_ack_many on the node holding queue_name (Citus delegates it by queue_name).';

create or replace function openqueue._routed_reap(queue_name text)
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_route text := pg_catalog.current_setting('openqueue.route', true);
    v_result integer;
begin
    -- Routing off: the public function below runs its body here. Restored
    -- when this returns: on the coordinator, inside a transaction block (not
    -- delegated), the rest of the transaction keeps routing.
    perform set_config('openqueue.route', 'off', true);
    v_result := openqueue._reap_queue(_routed_reap.queue_name);
    perform set_config('openqueue.route', coalesce(v_route, 'off'), true);
    return v_result;
end;
$$;

comment on function openqueue._routed_reap(text) is
'Internal: _reap_queue on the node holding queue_name (Citus delegates it by queue_name).';
