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
-- * A routed oq_enqueue_batch and a routed oq_ack_many (given queue_name)
--   ran on the node holding the queue but did not stay there: each read a
--   CTE twice (the ids drawn, the rows deleted), which Citus plans as an
--   intermediate result copied to every other node, and the call then
--   committed with two-phase commit across the cluster (seen with
--   citus.log_remote_commands on the worker nodes; the coordinator's log
--   showed one delegated call). The routed calls now set openqueue.route to
--   'routed' (still not 'on'), and the two functions take, under that
--   setting only, a form Citus runs on the one local shard: the batch's ids
--   drawn into an array first, then one INSERT ... SELECT over the arrays;
--   the acks as one DELETE feeding one INSERT (oq_ack's shape), the ids put
--   back in input order after. On one PostgreSQL nothing changes.
-- * oq_purge and oq_purge_batch on Citus compared finished_at with now() -
--   older_than inside a query over every shard, where now() is each worker
--   node's own transaction time (later than the caller's by the hop): a job
--   finished exactly older_than before the caller's now() was deleted. The
--   cutoff is now computed once, on the node running the call.

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
    -- Routing off ('routed' is not 'on'): the public function below runs
    -- its body here, in the form that stays on this node (see it). Restored
    -- when this returns: on the coordinator, inside a transaction block (not
    -- delegated), the rest of the transaction keeps routing.
    perform set_config('openqueue.route', 'routed', true);
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
    -- Routing off ('routed' is not 'on'): the public function below runs
    -- its body here, in the form that stays on this node (see it). Restored
    -- when this returns: on the coordinator, inside a transaction block (not
    -- delegated), the rest of the transaction keeps routing.
    perform set_config('openqueue.route', 'routed', true);
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

-- ---------------------------------------------------------------------------
-- oq_enqueue_batch and oq_ack_many, routed: one node, one commit (see the top).
-- ---------------------------------------------------------------------------

create or replace function openqueue.oq_enqueue_batch(
    queue_name text,
    payloads jsonb,
    priority integer default 0,
    run_at timestamptz default now(),
    max_attempts integer default null  -- null: the queue's setting
)
returns setof bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_run_at timestamptz := coalesce(oq_enqueue_batch.run_at, now());
    v_due boolean := coalesce(oq_enqueue_batch.run_at, now()) <= now();
    v_max_attempts integer;
    v_notify_mode text;
    v_count bigint;
    v_max_payload integer;
    v_index bigint;
    v_size bigint;
    v_ids bigint[];
begin
    perform openqueue._check_queue_name(oq_enqueue_batch.queue_name);
    if openqueue._route() then
        return query
        select r.id
        from openqueue._routed_enqueue_batch(
            oq_enqueue_batch.queue_name, oq_enqueue_batch.payloads, oq_enqueue_batch.priority,
            oq_enqueue_batch.run_at, oq_enqueue_batch.max_attempts
        ) as r (id);
        return;
    end if;
    if oq_enqueue_batch.payloads is null then
        perform openqueue._raise_null('payloads');
    elsif jsonb_typeof(oq_enqueue_batch.payloads) <> 'array' then
        perform openqueue._raise_invalid(
            'payloads',
            format('must be a JSON array, got a JSON %s', jsonb_typeof(oq_enqueue_batch.payloads))
        );
    end if;
    perform openqueue._check_range('max_attempts', oq_enqueue_batch.max_attempts, 1, 2147483647);

    -- One lookup for the settings this needs (defaults: see
    -- openqueue._queue_settings and openqueue._max_payload_bytes).
    select
        coalesce(oq_enqueue_batch.max_attempts, q.max_attempts, 5),
        coalesce(q.notify_mode, 'always'),
        coalesce(ql.max_payload_bytes, 1048576)
    into v_max_attempts, v_notify_mode, v_max_payload
    from (select 1) as one
    left join openqueue.queues as q on q.queue_name = oq_enqueue_batch.queue_name
    left join openqueue.queue_limits as ql on ql.queue_name = oq_enqueue_batch.queue_name;

    -- No element is longer than the whole array: one serialisation settles
    -- the usual batch; only a batch longer than the limit is looked into
    -- element by element (to name the first one too large).
    if octet_length(oq_enqueue_batch.payloads::text) > v_max_payload then
        select e.ordinality - 1, octet_length(e.value::text) into v_index, v_size
        from jsonb_array_elements(oq_enqueue_batch.payloads) with ordinality as e
        where octet_length(e.value::text) > v_max_payload
        order by e.ordinality
        limit 1;
    end if;
    if v_index is not null then
        perform openqueue._raise_invalid(
            'payloads',
            format(
                'element %s (counting from 0) is %s bytes, more than the %s bytes queue %s accepts',
                v_index, v_size, v_max_payload, oq_enqueue_batch.queue_name
            )
        );
    end if;

    if coalesce(current_setting('openqueue.route', true), '') = 'routed' then
        -- On the Citus node holding the queue (_routed_enqueue_batch): the
        -- statement below reads its CTE twice, which Citus plans as an
        -- intermediate result sent to every node, and the call then commits
        -- with two-phase commit across the cluster. Here the ids are drawn
        -- first and one INSERT ... SELECT over the arrays goes to the one
        -- local shard (Citus copies it locally): one node, one commit.
        v_ids := array(
            select nextval('openqueue.job_id_seq')
            from generate_series(1, jsonb_array_length(oq_enqueue_batch.payloads))
        );
        insert into openqueue.live_jobs (id, queue_name, priority, run_at, max_attempts, payload, due)
        select
            u.job_id,
            oq_enqueue_batch.queue_name,
            coalesce(oq_enqueue_batch.priority, 0),
            v_run_at,
            v_max_attempts,
            u.payload,
            v_due
        from unnest(
            v_ids,
            array(
                select e.value
                from jsonb_array_elements(oq_enqueue_batch.payloads) with ordinality as e
                order by e.ordinality
            )
        ) as u (job_id, payload);
        return query
        select u.job_id
        from unnest(v_ids) with ordinality as u (job_id, position)
        order by u.position;
        v_count := cardinality(v_ids);
    else
        -- Ids are drawn in array order before the insert, so the result order
        -- does not depend on the order INSERT ... RETURNING happens to use.
        return query
        with numbered as (
            select
                nextval('openqueue.job_id_seq') as job_id,
                elem.value as payload,
                elem.ordinality
            from jsonb_array_elements(oq_enqueue_batch.payloads) with ordinality as elem
        ),

        inserted as (  -- noqa: ST03
            insert into openqueue.live_jobs (id, queue_name, priority, run_at, max_attempts, payload, due)
            select
                n.job_id,
                oq_enqueue_batch.queue_name,
                coalesce(oq_enqueue_batch.priority, 0),
                v_run_at,
                v_max_attempts,
                n.payload,
                v_due
            from numbered as n
        )

        -- A data-modifying CTE runs whether or not the outer query reads it.
        select n.job_id
        from numbered as n
        order by n.ordinality;

        get diagnostics v_count = row_count;
    end if;
    if v_count = 0
       or (v_notify_mode = 'when_waiting' and not openqueue._waiter_present(oq_enqueue_batch.queue_name)) then
        return;
    end if;
    if v_due then
        perform pg_notify('openqueue', oq_enqueue_batch.queue_name);
    else
        perform pg_notify('openqueue_scheduled', oq_enqueue_batch.queue_name);
    end if;
end;
$$;

comment on function openqueue.oq_enqueue_batch(text, jsonb, integer, timestamptz, integer) is
'Add one job per element of the JSON array payloads to queue_name; returns '
'the ids in array order. Other arguments as for oq_enqueue. One NOTIFY per '
'call when the jobs are due now; an empty array writes nothing. Errors '
'22004/22023 for a bad queue_name, payloads NULL or not an array, an element '
'larger than the queue''s maximum payload size, max_attempts < 1. On Citus '
'(after oq_distribute) the call runs on the node holding the queue.';

create or replace function openqueue.oq_ack_many(
    job_ids bigint[],
    lease_tokens uuid[],
    results jsonb[] default null,
    queue_name text default null
)
returns setof bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id bigint;
    v_done bigint[] := '{}';
begin
    if oq_ack_many.job_ids is null then
        perform openqueue._raise_null('job_ids');
    end if;
    if oq_ack_many.lease_tokens is null then
        perform openqueue._raise_null('lease_tokens');
    end if;
    if cardinality(oq_ack_many.lease_tokens) <> cardinality(oq_ack_many.job_ids) then
        perform openqueue._raise_invalid(
            'lease_tokens',
            format(
                'must have as many elements as job_ids (%s), got %s',
                cardinality(oq_ack_many.job_ids), cardinality(oq_ack_many.lease_tokens)
            )
        );
    end if;
    if cardinality(oq_ack_many.results) <> cardinality(oq_ack_many.job_ids) then
        perform openqueue._raise_invalid(
            'results',
            format(
                'must have as many elements as job_ids (%s), got %s',
                cardinality(oq_ack_many.job_ids), cardinality(oq_ack_many.results)
            )
        );
    end if;
    -- oq_ack(NULL, ...) raises, so a NULL element does too.
    if array_position(oq_ack_many.job_ids, null) is not null then
        perform openqueue._raise_null('job_ids element');
    end if;
    if array_position(oq_ack_many.lease_tokens, null) is not null then
        perform openqueue._raise_null('lease_tokens element');
    end if;
    if oq_ack_many.queue_name is not null and openqueue._route() then
        return query
        select r.id
        from openqueue._routed_ack_many(
            oq_ack_many.queue_name, oq_ack_many.job_ids, oq_ack_many.lease_tokens,
            oq_ack_many.results
        ) as r (id);
        return;
    end if;

    if oq_ack_many.queue_name is not null
       and coalesce(current_setting('openqueue.route', true), '') = 'routed' then
        -- On the Citus node holding the queue (_routed_ack_many): the
        -- statement below reads its DELETE's rows twice, which Citus plans
        -- as an intermediate result sent to every node, and the call then
        -- commits with two-phase commit across the cluster. Here the moved
        -- rows are the INSERT's own (the shape of oq_ack, which Citus copies
        -- into the one local shard), and the ids are put back in input order
        -- afterwards (by an id's first position in job_ids).
        for v_id in
            with input as (
                select distinct on (u.job_id, u.lease_token)
                    u.job_id, u.lease_token, u.result
                from unnest(
                    oq_ack_many.job_ids,
                    oq_ack_many.lease_tokens,
                    coalesce(oq_ack_many.results, array[]::jsonb[])
                ) with ordinality as u (job_id, lease_token, result, ordinality)
                order by u.job_id, u.lease_token, u.ordinality
            ),

            done as (
                delete from openqueue.live_jobs as lj
                using input as i
                where lj.queue_name = oq_ack_many.queue_name
                  and lj.id = i.job_id
                  and lj.status = 'processing'
                  and lj.lease_token = i.lease_token
                returning lj.*, i.result as ack_result
            )

            insert into openqueue.finished_jobs (
                id, queue_name, status, priority, run_at, attempts, max_attempts,
                leased_by, payload, result, errors, idempotency_key, created_at, finished_at
            )
            select
                d.id, d.queue_name, 'completed', d.priority, d.run_at, d.attempts, d.max_attempts,
                d.leased_by, d.payload, d.ack_result, d.errors, d.idempotency_key, d.created_at, now()
            from done as d
            returning id
        loop
            v_done := v_done || v_id;
        end loop;
        return query
        select u.job_id
        from unnest(oq_ack_many.job_ids) with ordinality as u (job_id, position)
        where u.job_id = any(v_done)
        group by u.job_id
        order by min(u.position);
        return;
    end if;

    -- One DELETE ... RETURNING for the whole batch, joined on the arrays
    -- unnested side by side. A (job, token) pair given twice is acked once,
    -- with the result of its first occurrence; a stale or wrong token matches
    -- no row and its id is simply absent. Ids come back in input order.
    return query
    with input as (
        select distinct on (u.job_id, u.lease_token)
            u.job_id, u.lease_token, u.result, u.ordinality
        from unnest(
            oq_ack_many.job_ids,
            oq_ack_many.lease_tokens,
            coalesce(oq_ack_many.results, array[]::jsonb[])
        ) with ordinality as u (job_id, lease_token, result, ordinality)
        order by u.job_id, u.lease_token, u.ordinality
    ),

    done as (
        delete from openqueue.live_jobs as lj
        using input as i
        where lj.id = i.job_id
          and lj.status = 'processing'
          and lj.lease_token = i.lease_token
          and (oq_ack_many.queue_name is null or lj.queue_name = oq_ack_many.queue_name)
        returning lj.*, i.result as ack_result, i.ordinality
    ),

    moved as (  -- noqa: ST03
        insert into openqueue.finished_jobs (
            id, queue_name, status, priority, run_at, attempts, max_attempts,
            leased_by, payload, result, errors, idempotency_key, created_at, finished_at
        )
        select
            d.id, d.queue_name, 'completed', d.priority, d.run_at, d.attempts, d.max_attempts,
            d.leased_by, d.payload, d.ack_result, d.errors, d.idempotency_key, d.created_at, now()
        from done as d
    )

    select d.id
    from done as d
    order by d.ordinality;
end;
$$;

comment on function openqueue.oq_ack_many(bigint[], uuid[], jsonb[], text) is
'Ack a batch in one statement: element i is acked exactly as '
'oq_ack(job_ids[i], lease_tokens[i], results[i], queue_name) would be '
'(results NULL: no results stored). Returns the ids it completed, in input '
'order; an id whose token does not hold the current lease (or whose job is '
'not of queue_name, when given) is absent. A pair given twice is acked once. '
'Errors 22004 for a NULL array or element, 22023 for arrays of different lengths.';

create or replace function openqueue.oq_heartbeat(
    job_id bigint,
    lease_token uuid,
    lease_seconds integer default null,
    queue_name text default null
)
returns timestamptz
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_expires timestamptz;
begin
    if oq_heartbeat.job_id is null then
        perform openqueue._raise_null('job_id');
    end if;
    if oq_heartbeat.lease_token is null then
        perform openqueue._raise_null('lease_token');
    end if;
    perform openqueue._check_range('lease_seconds', oq_heartbeat.lease_seconds, 1, 86400);
    if oq_heartbeat.queue_name is not null and openqueue._route() then
        select r.expires into v_expires
        from openqueue._routed_heartbeat(
            oq_heartbeat.queue_name, oq_heartbeat.job_id, oq_heartbeat.lease_token,
            oq_heartbeat.lease_seconds
        ) as r (expires);
        return v_expires;
    end if;

    if oq_heartbeat.queue_name is not null then
        -- The queue named, as a plain equality: Citus prunes the UPDATE to
        -- that queue's one shard only so (with "queue_name is null or ..." it
        -- updated every shard and committed with two-phase commit).
        update openqueue.live_jobs as lj
        set lease_expires_at = now() + make_interval(secs => coalesce(
            oq_heartbeat.lease_seconds,
            (select q.lease_seconds from openqueue.queues as q where q.queue_name = oq_heartbeat.queue_name),
            30
        ))
        where lj.queue_name = oq_heartbeat.queue_name
          and lj.id = oq_heartbeat.job_id
          and lj.status = 'processing'
          and lj.lease_token = oq_heartbeat.lease_token
        returning lj.lease_expires_at into v_expires;
        return v_expires;
    end if;

    -- The queue's lease setting by a correlated subquery (Citus refuses a
    -- stable function applied to a column in a distributed write).
    update openqueue.live_jobs as lj
    set lease_expires_at = now() + make_interval(secs => coalesce(
        oq_heartbeat.lease_seconds,
        (select q.lease_seconds from openqueue.queues as q where q.queue_name = lj.queue_name),
        30
    ))
    where lj.id = oq_heartbeat.job_id
      and lj.status = 'processing'
      and lj.lease_token = oq_heartbeat.lease_token
    returning lj.lease_expires_at into v_expires;

    return v_expires;
end;
$$;

comment on function openqueue.oq_heartbeat(bigint, uuid, integer, text) is
'Extend the lease that lease_token holds on job_id to now() + lease_seconds '
'(NULL: the queue''s setting). Returns the new expiry, or NULL when that '
'lease is no longer held (acked, nacked, cancelled, reclaimed, wrong token, '
'unknown job, or queue_name given and not the job''s queue). An expired lease '
'that oq_reap has not reclaimed yet is still held. queue_name (optional) lets '
'Citus route the call to the node holding the job. Errors 22004/22023 for NULL '
'job_id or lease_token, lease_seconds out of range.';

-- _purge_chunk on Citus: the cutoff computed once (see the top).
create or replace function openqueue._purge_chunk(older_than interval, include_dead boolean, max_rows integer)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count bigint;
    v_queue text;
    v_ids bigint[];
    v_one bigint;
    v_cutoff timestamptz;
begin
    if openqueue._route() then
        -- Citus locks rows on one shard only: the oldest candidates read
        -- across the shards without locks, then deleted queue by queue (a
        -- row a concurrent purge deleted first is simply not found). The
        -- cutoff is computed here, once: a now() in the query would be each
        -- worker node's own transaction time, later than the caller's.
        v_cutoff := now() - _purge_chunk.older_than;
        v_count := 0;
        for v_queue, v_ids in
            select c.queue_name, array_agg(c.id)
            from (
                select f.id, f.queue_name
                from openqueue.finished_jobs as f
                where f.finished_at < v_cutoff
                  and (
                      f.status in ('completed', 'cancelled')
                      or (f.status = 'dead' and coalesce(_purge_chunk.include_dead, false))
                  )
                order by f.finished_at
                limit _purge_chunk.max_rows
            ) as c
            group by c.queue_name
        loop
            with purged as (
                delete from openqueue.finished_jobs as fj
                where fj.queue_name = v_queue
                  and fj.id = any(v_ids)
                returning fj.id, fj.queue_name, fj.idempotency_key
            ),

            freed as (  -- noqa: ST03
                delete from openqueue.idempotency_keys as ik
                using purged as p
                where ik.queue_name = v_queue
                  and ik.queue_name = p.queue_name
                  and ik.idempotency_key = p.idempotency_key
                  and ik.job_id = p.id
            )

            select count(*) into v_one from purged;
            v_count := v_count + v_one;
        end loop;
        return v_count;
    end if;
    with purged as (
        delete from openqueue.finished_jobs as fj
        where fj.id = any(array(
            select f.id
            from openqueue.finished_jobs as f
            where f.finished_at < now() - _purge_chunk.older_than
              and (
                  f.status in ('completed', 'cancelled')
                  or (f.status = 'dead' and coalesce(_purge_chunk.include_dead, false))
              )
            order by f.finished_at
            limit _purge_chunk.max_rows
            for update skip locked
        ))
        returning fj.id, fj.queue_name, fj.idempotency_key
    ),

    freed as (  -- noqa: ST03
        delete from openqueue.idempotency_keys as ik
        using purged as p
        where ik.queue_name = p.queue_name
          and ik.idempotency_key = p.idempotency_key
          and ik.job_id = p.id
    )

    select count(*) into v_count from purged;
    return v_count;
end;
$$;
