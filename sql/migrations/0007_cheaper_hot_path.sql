-- OpenQueue schema version 7: a cheaper hot path (issue 6).
--
-- Profiled with pgbench on PostgreSQL 15 (synchronous_commit off, so that
-- the figures are the server's CPU and not the disk), in a database holding
-- 7,500,000 jobs: oq_enqueue cost 0.157 ms per call against 0.106 ms for
-- the bare INSERT into live_jobs, and oq_lease's function body cost about
-- 0.15 ms more than its one UPDATE.
-- Two things here, with the same results and the same errors:
--
-- * oq_enqueue and oq_lease checked their arguments with one PERFORM per
--   check (openqueue._check_queue_name, _check_range, _route), each a query
--   of its own calling a function with its own search_path. They now test
--   the usual case, every argument fine and no Citus routing, in one
--   expression that PL/pgSQL evaluates without a query, and run the same
--   checks, in the same order, only when it does not hold. oq_enqueue:
--   0.136 -> 0.129 ms, the medians of six runs alternated between two fresh
--   databases (0.157 -> 0.138 ms in the one holding 7,500,000 jobs).
-- * oq_lease ran openqueue._promote_due, an UPDATE, on every call, to move
--   jobs whose run_at has come into the lease index. It now looks first
--   for the queue's earliest such job (one descent of live_jobs_scheduled
--   in run_at order) and runs the UPDATE only when there is one.
--
-- Measured but not done: a generic plan for the claim (plan_cache_mode =
-- force_generic_plan) would save about 0.07 ms more per lease, since the
-- claim's plan is custom (LIMIT batch_size is a parameter, which a generic
-- plan estimates as 10 % of the table). But a generic plan is made once per
-- session from the statistics of that moment: made on an empty or small
-- table it is a sequential scan and a sort, and it stays one while the
-- queue grows to millions of jobs, until the next relcache invalidation.
-- Pinning its shape with enable_seqscan and enable_sort off does not save
-- it either: the 10 % estimate on a large table, or one disabled node,
-- lifts the plan's cost over jit_above_cost, and every lease then compiles
-- JIT code (115 ms a call, measured). A custom plan is made from the
-- table's current size at every call and never costs that much.

-- Version 5's oq_lease, with the checks in one expression and the promotion
-- of jobs fallen due run only when there is one.
create or replace function openqueue.oq_lease(
    queue_name text,
    worker_id text,
    lease_seconds integer default null,  -- null: the queue's setting
    batch_size integer default 1
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
    v_lease interval;
    v_paused boolean := false;
    v_limited boolean := false;
    v_flow record;
    v_leased integer;
    v_seed text;
    v_due_since timestamptz;
begin
    -- The usual call passes every check at once: one expression, evaluated
    -- without a query. Any other call runs the checks one by one (they raise,
    -- naming the argument) and, on Citus, the routing step.
    if (
        oq_lease.queue_name ~ '^[A-Za-z0-9_.:-]{1,128}$'
        and oq_lease.worker_id <> ''
        and coalesce(oq_lease.lease_seconds, 1) between 1 and 86400
        and oq_lease.batch_size between 1 and 10000
        and coalesce(current_setting('openqueue.route', true), '') <> 'on'
    ) is not true then
        perform openqueue._check_queue_name(oq_lease.queue_name);
        if oq_lease.worker_id is null then
            perform openqueue._raise_null('worker_id');
        elsif oq_lease.worker_id = '' then
            perform openqueue._raise_invalid('worker_id', 'must not be empty');
        end if;
        perform openqueue._check_range('lease_seconds', oq_lease.lease_seconds, 1, 86400);
        if oq_lease.batch_size is null then
            perform openqueue._raise_null('batch_size');
        end if;
        perform openqueue._check_range('batch_size', oq_lease.batch_size, 1, 10000);

        if openqueue._route() then
            return query
            select *
            from openqueue._routed_lease(
                oq_lease.queue_name, oq_lease.worker_id, oq_lease.lease_seconds, oq_lease.batch_size
            );
            return;
        end if;
    end if;

    -- One lookup of the queue's row for everything this needs (the
    -- built-in lease_seconds default, 30, is openqueue._queue_settings's).
    if oq_lease.lease_seconds is null or openqueue._flow_control_used() then
        select
            make_interval(secs => coalesce(oq_lease.lease_seconds, q.lease_seconds, 30)),
            coalesce(q.paused, false),
            q.max_running is not null or q.rate_limit is not null
        into v_lease, v_paused, v_limited
        from (select 1) as one
        left join openqueue.queues as q on q.queue_name = oq_lease.queue_name;
        if v_paused then
            return;
        end if;
    else
        v_lease := make_interval(secs => oq_lease.lease_seconds);
    end if;

    -- Under limits, the lease may take fewer: batch_size becomes what it may
    -- take, so that the claim below is the very query of version 2. On
    -- Citus the queue's queue_flow row is on the node holding the queue, so
    -- the limits are enforced there.
    if v_limited then
        v_flow := openqueue._flow_admit(oq_lease.queue_name, oq_lease.batch_size);
        oq_lease.batch_size := v_flow.allowed;
    end if;

    if oq_lease.batch_size > 0 then
        -- Jobs whose run_at has come join the lease index first; since that
        -- index is ordered by run_at within a priority, they take their exact
        -- place among the jobs that were due already. All of them, in chunks: a
        -- job of higher priority may be the last to fall due, and the lease
        -- order is the contract's. Each job is promoted once, so the work is
        -- spread over leases as jobs fall due. Whether any has is one descent
        -- of live_jobs_scheduled, in run_at order: the UPDATE runs only then.
        -- (Not an EXISTS: with a million jobs scheduled for later the planner
        -- expects one to match soon and picks a sequential scan, which then
        -- reads the whole table, 1 s at 11,000,000 rows.)
        select s.run_at into v_due_since
        from openqueue.live_jobs as s
        where s.queue_name = oq_lease.queue_name
          and s.status in ('pending', 'failed')
          and not s.due
          and s.run_at <= now()
        order by s.run_at
        limit 1;
        if found then
            loop
                exit when openqueue._promote_due(oq_lease.queue_name, 10000) < 10000;
            end loop;
        end if;

        -- Each token is md5(seed || job id): the seed is 122 random bits drawn
        -- once per call, so tokens are unguessable and distinct, and the UPDATE
        -- calls no volatile function (Citus refuses one in a distributed write).
        v_seed := gen_random_uuid()::text;

        -- SKIP LOCKED lets any number of workers lease from one queue without
        -- waiting on each other; live_jobs_lease_order holds due jobs only, so
        -- this index scan stops after batch_size rows.
        return query
        with leased as (
            update openqueue.live_jobs as lj
            set
                status = 'processing',
                attempts = lj.attempts + 1,
                lease_token = md5(v_seed || lj.id::text)::uuid,
                leased_by = oq_lease.worker_id,
                lease_expires_at = now() + v_lease
            -- = any(array(...)) keeps the update a primary-key lookup per
            -- claimed row, whatever the planner thinks of the table size; the
            -- queue_name filter keeps it on one shard on Citus.
            where lj.queue_name = oq_lease.queue_name
              and lj.id = any(array(
                  select c.id
                  from openqueue.live_jobs as c
                  where c.queue_name = oq_lease.queue_name
                    and c.status in ('pending', 'failed')
                    and c.due
                    and c.run_at <= now()
                  order by c.priority desc, c.run_at asc, c.id asc
                  limit oq_lease.batch_size
                  for update skip locked
              ))
            returning
                lj.id, lj.payload, lj.priority, lj.attempts, lj.max_attempts,
                lj.run_at, lj.created_at, lj.lease_token, lj.lease_expires_at
        )

        select
            l.id, l.payload, l.priority, l.attempts, l.max_attempts,
            l.run_at, l.created_at, l.lease_token, l.lease_expires_at
        from leased as l
        order by l.priority desc, l.run_at asc, l.id asc;
    end if;

    if v_limited then
        -- Always written, even when nothing was leased: see _flow_admit on
        -- REPEATABLE READ.
        get diagnostics v_leased = row_count;
        if oq_lease.batch_size = 0 then
            v_leased := 0;
        end if;
        update openqueue.queue_flow as f
        set
            tokens = v_flow.tokens - v_leased * v_flow.period_us,
            checked_at = v_flow.checked_at
        where f.queue_name = oq_lease.queue_name;
    end if;
end;
$$;

-- Version 5's oq_enqueue, with the checks in one expression.
create or replace function openqueue.oq_enqueue(
    queue_name text,
    payload jsonb,
    priority integer default 0,
    run_at timestamptz default now(),
    max_attempts integer default null,  -- null: the queue's setting
    idempotency_key text default null
)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id bigint;
    v_existing bigint;
    v_run_at timestamptz := coalesce(oq_enqueue.run_at, now());
    v_due boolean := coalesce(oq_enqueue.run_at, now()) <= now();
    v_max_attempts integer;
    v_notify_mode text;
    v_max_payload integer;
    v_size bigint;
begin
    -- The usual call passes every check at once: one expression, evaluated
    -- without a query. Any other call runs the checks one by one (they raise,
    -- naming the argument) and, on Citus, the routing step.
    if (
        oq_enqueue.queue_name ~ '^[A-Za-z0-9_.:-]{1,128}$'
        and oq_enqueue.payload is not null
        and coalesce(oq_enqueue.max_attempts, 1) >= 1
        and coalesce(length(oq_enqueue.idempotency_key), 0) <= 255
        and coalesce(current_setting('openqueue.route', true), '') <> 'on'
    ) is not true then
        perform openqueue._check_queue_name(oq_enqueue.queue_name);
        if openqueue._route() then
            select r.id into v_id
            from openqueue._routed_enqueue(
                oq_enqueue.queue_name, oq_enqueue.payload, oq_enqueue.priority,
                oq_enqueue.run_at, oq_enqueue.max_attempts, oq_enqueue.idempotency_key
            ) as r (id);
            return v_id;
        end if;
        if oq_enqueue.payload is null then
            perform openqueue._raise_null('payload');
        end if;
        perform openqueue._check_range('max_attempts', oq_enqueue.max_attempts, 1, 2147483647);
        -- A key is an index entry: bounded, so that no key can exceed the index's row size.
        if length(oq_enqueue.idempotency_key) > 255 then
            perform openqueue._raise_invalid('idempotency_key', 'must be at most 255 characters long');
        end if;
    end if;

    -- One lookup for the settings this needs. The built-in defaults of
    -- max_attempts (5) and the payload limit (1 MiB) are those of
    -- openqueue._queue_settings and openqueue._max_payload_bytes.
    select
        coalesce(oq_enqueue.max_attempts, q.max_attempts, 5),
        coalesce(q.notify_mode, 'always'),
        coalesce(ql.max_payload_bytes, 1048576)
    into v_max_attempts, v_notify_mode, v_max_payload
    from (select 1) as one
    left join openqueue.queues as q on q.queue_name = oq_enqueue.queue_name
    left join openqueue.queue_limits as ql on ql.queue_name = oq_enqueue.queue_name;

    v_size := octet_length(oq_enqueue.payload::text);
    if v_size > v_max_payload then
        perform openqueue._raise_invalid(
            'payload',
            format(
                'is %s bytes, more than the %s bytes queue %s accepts',
                v_size, v_max_payload, oq_enqueue.queue_name
            )
        );
    end if;

    v_id := nextval('openqueue.job_id_seq');

    if oq_enqueue.idempotency_key is not null then
        -- The primary key makes concurrent enqueues with one key race-free:
        -- the loser waits for the winner's commit, then sees its row. If a
        -- concurrent purge frees the key in between, try again.
        loop
            insert into openqueue.idempotency_keys as ik (queue_name, idempotency_key, job_id)
            values (oq_enqueue.queue_name, oq_enqueue.idempotency_key, v_id)
            on conflict on constraint idempotency_keys_pkey do nothing;
            exit when found;
            select ik.job_id into v_existing
            from openqueue.idempotency_keys as ik
            where ik.queue_name = oq_enqueue.queue_name
              and ik.idempotency_key = oq_enqueue.idempotency_key;
            if found then
                return v_existing;
            end if;
        end loop;
    end if;

    insert into openqueue.live_jobs as lj (
        id, queue_name, priority, run_at, max_attempts, payload, idempotency_key, due
    )
    values (
        v_id,
        oq_enqueue.queue_name,
        coalesce(oq_enqueue.priority, 0),
        v_run_at,
        v_max_attempts,
        oq_enqueue.payload,
        oq_enqueue.idempotency_key,
        v_due
    );

    -- Due now: wake a worker. Due later: tell sleeping workers on a second
    -- channel, so that they shorten their sleep to the new run_at. A
    -- when_waiting queue does either only while a worker waits.
    if v_notify_mode = 'when_waiting' and not openqueue._waiter_present(oq_enqueue.queue_name) then
        return v_id;
    end if;
    if v_due then
        perform pg_notify('openqueue', oq_enqueue.queue_name);
    else
        perform pg_notify('openqueue_scheduled', oq_enqueue.queue_name);
    end if;
    return v_id;
end;
$$;
