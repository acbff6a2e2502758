-- OpenQueue schema version 4: recurring schedules and flow control
-- (CONTRACT sections 7 and 8).
--
-- (helpers: the header lists what this migration adds, one bullet each)
-- * oq_pause_queue / oq_resume_queue (section 8): a paused queue leases
--   nothing; resuming notifies when the queue has due jobs.
-- * oq_set_queue_limits (section 8): max_running and rate_limit per
--   rate_period, enforced inside oq_lease under a per-queue row lock
--   (openqueue.queue_flow, with the token bucket); a queue with no limits
--   and not paused leases exactly as before (openqueue._flow_control_used).
-- * oq_stats gains its last column, paused.

-- ===========================================================================
-- Section 7: recurring schedules (oq_schedule, oq_unschedule, oq_cron_next,
-- oq_tick, openqueue.schedules)
-- ===========================================================================

-- (schedules: your SQL goes here)

-- ===========================================================================
-- Section 8: flow control (oq_pause_queue, oq_resume_queue,
-- oq_set_queue_limits, oq_lease with limits, oq_stats.paused)
-- ===========================================================================

-- A queue's flow-control settings live in its openqueue.queues row, next to
-- lease_seconds: the lookup oq_lease already makes for lease_seconds NULL
-- (every lease of the worker runtime) reads them at no extra cost. Adding
-- columns with constant defaults rewrites nothing.
alter table openqueue.queues
add column paused boolean not null default false,
add column max_running integer,
add column rate_limit integer,
add column rate_period interval not null default interval '1 second',
add constraint max_running_at_least_one check (max_running >= 1),
add constraint rate_limit_at_least_one check (rate_limit >= 1),
add constraint rate_period_positive check (rate_period > interval '0');

comment on column openqueue.queues.paused is
'oq_lease returns no rows while true. Set by oq_pause_queue and oq_resume_queue.';

comment on column openqueue.queues.max_running is
'At most this many jobs of the queue processing at once (NULL: no limit). Set by oq_set_queue_limits.';

comment on column openqueue.queues.rate_limit is
'At most rate_limit leases per rate_period, with bursts of up to rate_limit '
'(NULL: no limit). Set by oq_set_queue_limits.';

-- The state of a limited queue, one row per queue that ever had a limit. Its
-- row lock serialises the leases of that queue (and only of that queue), and
-- holds the token bucket of rate_limit. Apart from openqueue.queues so that
-- the bucket's updates (one per lease of a limited queue) never churn the
-- rows every enqueue and lease reads; fillfactor leaves room for HOT updates.
create table openqueue.queue_flow (
    queue_name text not null,
    -- Token bucket in integer units: one token is as many units as
    -- rate_period has microseconds, and the bucket gains rate_limit units
    -- per microsecond up to rate_limit tokens. NULL: full (or no rate_limit).
    tokens numeric,
    checked_at timestamptz not null default clock_timestamp(),
    constraint queue_flow_pkey primary key (queue_name)
) with (fillfactor = 50);

comment on table openqueue.queue_flow is
'Internal: the lease lock and the token bucket of each queue with limits '
'(oq_set_queue_limits); read and written by oq_lease.';

-- Whether any queue has ever been paused or limited. oq_lease with an
-- explicit lease_seconds made no settings lookup before version 4; while
-- this says false it still makes none, so that flow control costs such
-- leases nothing until somebody uses it. It is a function whose body the
-- first oq_pause_queue or oq_set_queue_limits replaces (once, under an
-- advisory lock): a call reads no table, and replacing it reaches every
-- session through the catalog invalidation that comes with the commit. It
-- is never set back: from then on such leases read the queue's row, as
-- leases with lease_seconds NULL always do.
create function openqueue._flow_control_used()
returns boolean
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    return false;
end;
$$;

comment on function openqueue._flow_control_used() is
'Internal: false until a queue is first paused or limited; replaced by '
'openqueue._flow_control_enable(). Lets oq_lease skip the settings lookup '
'while nobody uses flow control.';

create function openqueue._flow_control_enable()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform pg_advisory_xact_lock(openqueue._flow_lock_key());
    -- A fresh snapshot after the lock: the body as the last enabler committed it.
    if exists (
        select
        from pg_catalog.pg_proc as p
        where p.oid = 'openqueue._flow_control_used()'::regprocedure
          and p.prosrc like '%return false;%'
    ) then
        execute $ddl$
            create or replace function openqueue._flow_control_used()
            returns boolean
            language plpgsql
            stable
            set search_path = pg_catalog, pg_temp
            as $body$
            begin
                return true;
            end;
            $body$
        $ddl$;
    end if;
end;
$$;

comment on function openqueue._flow_control_enable() is
'Internal: make openqueue._flow_control_used() return true, once and for all '
'(called by oq_pause_queue and oq_set_queue_limits).';

create function openqueue._flow_lock_key()
returns bigint
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select 478892509123815813::bigint  -- next to _fold_lock_key(), fixed
$$;

comment on function openqueue._flow_lock_key() is
'Internal: the advisory lock key that serialises openqueue._flow_control_enable().';

create function openqueue.oq_pause_queue(queue_name text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count integer;
begin
    perform openqueue._check_queue_name(oq_pause_queue.queue_name);
    perform openqueue._flow_control_enable();
    insert into openqueue.queues as q (queue_name)
    values (oq_pause_queue.queue_name)
    on conflict on constraint queues_pkey do nothing;
    -- Of two concurrent pauses, the second re-reads the row the first
    -- updated and finds it paused: exactly one returns true.
    update openqueue.queues as q
    set
        paused = true,
        updated_at = now()
    where q.queue_name = oq_pause_queue.queue_name
      and not q.paused;
    get diagnostics v_count = row_count;
    return v_count = 1;
end;
$$;

comment on function openqueue.oq_pause_queue(text) is
'Pause queue_name: oq_lease returns no rows for it until oq_resume_queue. '
'Everything else (enqueue, heartbeat, ack, nack, reap, cancel, replay) works '
'as usual and running jobs keep their leases. The queue need not have jobs. '
'Returns true when it was not paused. Errors 22004/22023 for a bad queue_name.';

create function openqueue.oq_resume_queue(queue_name text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count integer;
begin
    perform openqueue._check_queue_name(oq_resume_queue.queue_name);
    update openqueue.queues as q
    set
        paused = false,
        updated_at = now()
    where q.queue_name = oq_resume_queue.queue_name
      and q.paused;
    get diagnostics v_count = row_count;
    if v_count = 0 then
        return false;
    end if;
    -- Wake the workers that found the queue paused, whatever the queue's
    -- notify_mode: that setting narrows the notifications of enqueues; a
    -- resume is rare and every worker of the queue is waiting for it.
    if exists (
        select
        from openqueue.live_jobs as lj
        where lj.queue_name = oq_resume_queue.queue_name
          and lj.status in ('pending', 'failed')
          and lj.run_at <= now()
    ) then
        perform pg_notify('openqueue', oq_resume_queue.queue_name);
    end if;
    return true;
end;
$$;

comment on function openqueue.oq_resume_queue(text) is
'Resume a queue paused by oq_pause_queue: leasing resumes, and NOTIFY '
'openqueue, queue_name is sent (on commit) when the queue has due jobs. '
'Returns true when it was paused. Errors 22004/22023 for a bad queue_name.';

create function openqueue.oq_set_queue_limits(
    queue_name text,
    max_running integer default null,  -- null: no limit
    rate_limit integer default null,  -- null: no limit
    rate_period interval default '1 second'  -- null: 1 second
)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_period interval := coalesce(oq_set_queue_limits.rate_period, interval '1 second');
    v_period_us numeric;
    v_old_rate integer;
    v_old_period_us numeric;
begin
    perform openqueue._check_queue_name(oq_set_queue_limits.queue_name);
    perform openqueue._check_range('max_running', oq_set_queue_limits.max_running, 1, 2147483647);
    perform openqueue._check_range('rate_limit', oq_set_queue_limits.rate_limit, 1, 2147483647);
    if v_period <= interval '0' or not isfinite(v_period) then
        perform openqueue._raise_invalid('rate_period', format('must be positive and finite, got %s', v_period));
    end if;
    v_period_us := floor(extract(epoch from v_period) * 1000000);

    if oq_set_queue_limits.max_running is not null or oq_set_queue_limits.rate_limit is not null then
        perform openqueue._flow_control_enable();
    end if;

    -- Serialise with the queue's leases (see _flow_admit), then read the
    -- old rate.
    insert into openqueue.queue_flow as f (queue_name)
    values (oq_set_queue_limits.queue_name)
    on conflict on constraint queue_flow_pkey do nothing;
    perform
    from openqueue.queue_flow as f
    where f.queue_name = oq_set_queue_limits.queue_name
    for update;
    select q.rate_limit, floor(extract(epoch from q.rate_period) * 1000000)
    into v_old_rate, v_old_period_us
    from openqueue.queues as q
    where q.queue_name = oq_set_queue_limits.queue_name;

    insert into openqueue.queues as q (queue_name, max_running, rate_limit, rate_period)
    values (
        oq_set_queue_limits.queue_name, oq_set_queue_limits.max_running,
        oq_set_queue_limits.rate_limit, v_period
    )
    on conflict on constraint queues_pkey do update
    set
        max_running = excluded.max_running,
        rate_limit = excluded.rate_limit,
        rate_period = excluded.rate_period,
        updated_at = now();

    -- The bucket keeps the whole tokens it held, up to the new capacity, so
    -- that setting limits again never grants a burst the old ones would not
    -- have; a queue that had no rate_limit starts full.
    update openqueue.queue_flow as f
    set tokens = case
        when oq_set_queue_limits.rate_limit is null or v_old_rate is null or f.tokens is null then null
        else least(
            oq_set_queue_limits.rate_limit * v_period_us,
            div(f.tokens, v_old_period_us) * v_period_us
        )
    end
    where f.queue_name = oq_set_queue_limits.queue_name;
end;
$$;

comment on function openqueue.oq_set_queue_limits(text, integer, integer, interval) is
'Set both flow limits of queue_name exactly (NULL: no limit). max_running: at '
'no moment are more than this many of its jobs processing, whatever the '
'number of workers, connections and batch sizes (a lease returns fewer rows, '
'or none). rate_limit per rate_period (default 1 second): over any stretch '
'of time of length T, at most rate_limit * (T / rate_period + 1) jobs are '
'leased (a token bucket holding up to rate_limit leases). Limits are enforced '
'for every caller of oq_lease. Errors 22004/22023 for a bad queue_name, '
'max_running or rate_limit < 1, rate_period not positive.';

-- The admission of a lease of a limited queue. Locks the queue's
-- queue_flow row until the caller's transaction ends, so that leases of the
-- queue run one after another, and says how many jobs this lease may take.
--
-- max_running: the row lock is taken before the count, and the count runs
-- in a new statement, so (READ COMMITTED) its snapshot sees every lease of
-- the queue that held the lock before: the jobs they made processing are
-- counted. Nothing but oq_lease makes a job processing, so leasing at most
-- max_running - count keeps the count <= max_running at every instant; acks
-- committed meanwhile only make the count too high, never too low. Every
-- limited lease also updates the row (oq_lease), so under REPEATABLE READ or
-- SERIALIZABLE, where the snapshot is older, a lease that committed after
-- it makes this lock fail with 40001 instead of counting short.
--
-- rate_limit R per period P: a token bucket of capacity R, refilled
-- continuously at R per P, read with clock_timestamp() after the lock (so
-- the times of successive leases of the queue never go back: a clock that
-- steps back refills nothing). A lease takes at most the whole tokens in
-- the bucket, one per job. Proof of the bound: let b(t) be the tokens in the
-- bucket. Over any window [a, a + T], the leases in it take no more than
-- b(a) (at most R) plus what flowed in during the window (at most R * T / P,
-- less whatever the cap at R cut off), and b never goes negative; so they
-- take at most R * (T / P + 1) jobs, for every window, wherever it falls.
-- The arithmetic is in exact integers (numeric): one token is period_us
-- units and the bucket gains R units per microsecond, so no rounding can
-- create a token.
create function openqueue._flow_admit(
    queue_name text,
    batch_size integer,
    out allowed integer,
    out tokens numeric,
    out period_us numeric,
    out checked_at timestamptz
)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_max_running integer;
    v_rate_limit integer;
    v_last timestamptz;
    v_running bigint;
begin
    perform
    from openqueue.queue_flow as f
    where f.queue_name = _flow_admit.queue_name
    for update;
    if not found then
        insert into openqueue.queue_flow as f (queue_name)
        values (_flow_admit.queue_name)
        on conflict on constraint queue_flow_pkey do nothing;
        perform
        from openqueue.queue_flow as f
        where f.queue_name = _flow_admit.queue_name
        for update;
    end if;

    -- New statements from here on: fresh snapshots that see the leases and
    -- limit changes committed before the lock was granted.
    select
        q.max_running, q.rate_limit, f.tokens, f.checked_at,
        floor(extract(epoch from q.rate_period) * 1000000)
    into v_max_running, v_rate_limit, _flow_admit.tokens, v_last, _flow_admit.period_us
    from openqueue.queue_flow as f
    left join openqueue.queues as q on f.queue_name = q.queue_name
    where f.queue_name = _flow_admit.queue_name;

    _flow_admit.allowed := _flow_admit.batch_size;
    _flow_admit.checked_at := greatest(clock_timestamp(), v_last);

    if v_max_running is not null then
        -- The running jobs, through live_jobs_in_flight.
        select count(*) into v_running
        from openqueue.live_jobs as lj
        where lj.status = 'processing'
          and lj.queue_name = _flow_admit.queue_name;
        _flow_admit.allowed := greatest(0, least(_flow_admit.allowed, v_max_running - v_running));
    end if;

    if v_rate_limit is not null then
        _flow_admit.tokens := least(
            v_rate_limit * _flow_admit.period_us,
            coalesce(_flow_admit.tokens, v_rate_limit * _flow_admit.period_us)
            + v_rate_limit * floor(extract(epoch from _flow_admit.checked_at - v_last) * 1000000)
        );
        _flow_admit.allowed := least(_flow_admit.allowed, div(_flow_admit.tokens, _flow_admit.period_us));
    else
        _flow_admit.tokens := null;
    end if;
end;
$$;

comment on function openqueue._flow_admit(text, integer) is
'Internal: for oq_lease of a queue with limits: lock its queue_flow row until '
'the transaction ends and return how many jobs (at most batch_size) the lease '
'may take under max_running and rate_limit, with the refilled bucket and the '
'time it was read (oq_lease writes them back, less what it leased).';

-- oq_lease with flow control. A queue with no limits and not paused leases
-- exactly as in version 2: the same validation, the same settings lookup
-- when lease_seconds is NULL (now also reading paused and the limits, from
-- the same row), none when it is given (while no queue ever used flow
-- control: see openqueue._flow_control_used), and the same claim query.
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
begin
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
    -- take, so that the claim below is the very query of version 2.
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
        -- spread over leases as jobs fall due (one index descent when none has).
        loop
            exit when openqueue._promote_due(oq_lease.queue_name, 10000) < 10000;
        end loop;

        -- SKIP LOCKED lets any number of workers lease from one queue without
        -- waiting on each other; live_jobs_lease_order holds due jobs only, so
        -- this index scan stops after batch_size rows.
        return query
        with leased as (
            update openqueue.live_jobs as lj
            set
                status = 'processing',
                attempts = lj.attempts + 1,
                lease_token = gen_random_uuid(),
                leased_by = oq_lease.worker_id,
                lease_expires_at = now() + v_lease
            -- = any(array(...)) keeps the update a primary-key lookup per
            -- claimed row, whatever the planner thinks of the table size.
            where lj.id = any(array(
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

comment on function openqueue.oq_lease(text, text, integer, integer) is
'Claim up to batch_size (default 1, at most 10000) due jobs of queue_name for '
'worker_id, highest priority first, then oldest run_at, then lowest id; each '
'becomes processing with attempts + 1, a fresh lease_token and '
'lease_expires_at = now() + lease_seconds (NULL: the queue''s setting). Rows '
'come back in lease order; none when nothing is due or the queue is paused '
'(oq_pause_queue). A queue with limits (oq_set_queue_limits) leases fewer, '
'or none, so that neither max_running nor rate_limit is exceeded; its leases '
'run one at a time. Errors 22004/22023 for a bad queue_name, NULL worker_id, '
'lease_seconds or batch_size out of range.';

-- oq_stats gains its last column, paused (a new return type: dropped and
-- created again; _apply_security grants it again on this very install).
drop function openqueue.oq_stats();

create function openqueue.oq_stats()
returns table (
    queue_name text,
    pending bigint,
    processing bigint,
    failed bigint,
    completed bigint,
    dead bigint,
    cancelled bigint,
    oldest_due_at timestamptz,
    paused boolean
)
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    with live as (
        select
            lj.queue_name,
            count(*) filter (where lj.status = 'pending') as pending,
            count(*) filter (where lj.status = 'processing') as processing,
            count(*) filter (where lj.status = 'failed') as failed,
            min(lj.run_at) filter (
                where lj.status in ('pending', 'failed') and lj.run_at <= now()
            ) as oldest_due_at
        from openqueue.live_jobs as lj
        group by lj.queue_name
    ),

    finished as (
        select
            fc.queue_name,
            coalesce(sum(fc.jobs) filter (where fc.status = 'completed'), 0)::bigint as completed,
            coalesce(sum(fc.jobs) filter (where fc.status = 'dead'), 0)::bigint as dead,
            coalesce(sum(fc.jobs) filter (where fc.status = 'cancelled'), 0)::bigint as cancelled
        from openqueue.finished_counts as fc
        group by fc.queue_name
        having sum(fc.jobs) <> 0
    ),

    names as (
        select l.queue_name from live as l
        union
        select f.queue_name from finished as f
        union
        select q.queue_name from openqueue.queues as q
    )

    select
        n.queue_name,
        coalesce(l.pending, 0),
        coalesce(l.processing, 0),
        coalesce(l.failed, 0),
        coalesce(f.completed, 0),
        coalesce(f.dead, 0),
        coalesce(f.cancelled, 0),
        l.oldest_due_at,
        coalesce(q.paused, false)
    from names as n
    left join live as l on n.queue_name = l.queue_name
    left join finished as f on n.queue_name = f.queue_name
    left join openqueue.queues as q on n.queue_name = q.queue_name
    order by n.queue_name
$$;

comment on function openqueue.oq_stats() is
'One row per queue that has jobs or settings: (queue_name, pending, '
'processing, failed, completed, dead, cancelled, oldest_due_at, paused). '
'oldest_due_at is the earliest run_at among waiting jobs already due (NULL '
'when none is due); paused is true between oq_pause_queue and '
'oq_resume_queue. Finished states are read from counters, not by scanning.';

revoke all on function openqueue.oq_stats() from public;
revoke all on function openqueue.oq_pause_queue(text) from public;
revoke all on function openqueue.oq_resume_queue(text) from public;
revoke all on function openqueue.oq_set_queue_limits(text, integer, integer, interval) from public;
revoke all on function openqueue._flow_control_used() from public;
revoke all on function openqueue._flow_control_enable() from public;
revoke all on function openqueue._flow_lock_key() from public;
revoke all on function openqueue._flow_admit(text, integer) from public;

-- ===========================================================================
-- Security: the role lists of contract sections 6-8. Replaces the version 3
-- function; the installer runs it after the last migration on every run.
-- ===========================================================================

create or replace function openqueue._apply_security()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_owner regrole;
    v_may_create boolean;
    v_role text;
    v_roles constant text[] := array['openqueue_producer', 'openqueue_worker', 'openqueue_admin'];
    -- What each role may execute. openqueue_admin: every oq_* function.
    v_producer constant text[] := array['oq_enqueue', 'oq_enqueue_batch', 'oq_stats'];
    v_worker constant text[] := array[
        'oq_lease', 'oq_heartbeat', 'oq_ack', 'oq_ack_many', 'oq_nack', 'oq_reap', 'oq_stats',
        -- what the worker runtime (openqueue_py/worker/) also calls:
        'oq_next_run_at', 'oq_wait', 'oq_schema_version', 'oq_settled',
        -- contract section 7: workers fire schedules
        'oq_tick', 'oq_cron_next'
    ];
    v_present text[];
    v_object record;
    v_grantee oid;
    v_columns text;
begin
    select n.nspowner::regrole into v_owner
    from pg_catalog.pg_namespace as n
    where n.nspname = 'openqueue';

    -- 1. The roles: created where allowed, reused where they exist. Roles are
    -- cluster-wide, so a concurrent installer in another database may create
    -- one between the check and the CREATE: that is not an error.
    select r.rolsuper or r.rolcreaterole into v_may_create
    from pg_catalog.pg_roles as r
    where r.rolname = current_user;
    foreach v_role in array v_roles loop
        continue when exists (select from pg_catalog.pg_roles as r where r.rolname = v_role);
        if v_may_create then
            begin
                execute format('create role %I nologin', v_role);
                execute format(
                    'comment on role %I is %L', v_role,
                    'OpenQueue: grant to login roles; see the README, "Security and permissions".'
                );
                raise notice 'openqueue: created role %', v_role;
            exception when duplicate_object or unique_violation then
                null;  -- created concurrently by another installer
            end;
        else
            raise notice 'openqueue: role % skipped: % may not create roles (needs CREATEROLE)',
            v_role, current_user
            using hint = 'grant EXECUTE on the oq_* functions to your own roles yourself; '
            'see the README, "Security and permissions"';
        end if;
    end loop;
    select coalesce(array_agg(r.rolname::text order by r.rolname), '{}') into v_present
    from pg_catalog.pg_roles as r
    where r.rolname = any(v_roles);

    -- 2. Everything belongs to the schema owner (the SECURITY DEFINER
    -- functions run as it). Sequences owned by a table follow the table.
    for v_object in
        select c.oid::regclass as name, c.relkind
        from pg_catalog.pg_class as c
        where c.relnamespace = 'openqueue'::regnamespace
          and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
          and c.relowner <> v_owner
        order by c.relkind = 'S', c.oid
    loop
        if v_object.relkind = 'S' then
            continue when (select s.relowner = v_owner from pg_catalog.pg_class as s where s.oid = v_object.name);
            execute format('alter sequence %s owner to %s', v_object.name, v_owner);
        elsif v_object.relkind = 'v' then
            execute format('alter view %s owner to %s', v_object.name, v_owner);
        else
            execute format('alter table %s owner to %s', v_object.name, v_owner);
        end if;
    end loop;
    for v_object in
        select p.oid::regprocedure as name
        from pg_catalog.pg_proc as p
        where p.pronamespace = 'openqueue'::regnamespace
          and p.proowner <> v_owner
    loop
        execute format('alter routine %s owner to %s', v_object.name, v_owner);
    end loop;

    -- 3. Tables, views, sequences: nobody but the owner, then admin reads
    -- openqueue.jobs without lease_token (the proof of a lease).
    for v_object in
        select c.oid::regclass as name, c.relkind, c.oid
        from pg_catalog.pg_class as c
        where c.relnamespace = 'openqueue'::regnamespace
          and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
        order by c.oid
    loop
        execute format(
            'revoke all on %s %s from public',
            case when v_object.relkind = 'S' then 'sequence' else 'table' end, v_object.name
        );
        for v_grantee in
            select distinct a.grantee
            from pg_catalog.pg_class as c
            cross join lateral pg_catalog.aclexplode(c.relacl) as a
            where c.oid = v_object.oid and a.grantee not in (0, v_owner)
            union
            select distinct a.grantee
            from pg_catalog.pg_attribute as att
            cross join lateral pg_catalog.aclexplode(att.attacl) as a
            where att.attrelid = v_object.oid and a.grantee not in (0, v_owner)
        loop
            execute format(
                'revoke all on %s %s from %s',
                case when v_object.relkind = 'S' then 'sequence' else 'table' end,
                v_object.name, v_grantee::regrole
            );
        end loop;
    end loop;
    if 'openqueue_admin' = any(v_present) then
        select string_agg(quote_ident(a.attname), ', ' order by a.attnum) into v_columns
        from pg_catalog.pg_attribute as a
        where a.attrelid = 'openqueue.jobs'::regclass
          and a.attnum > 0
          and not a.attisdropped
          and a.attname <> 'lease_token';
        execute format('grant select (%s) on openqueue.jobs to openqueue_admin', v_columns);
        -- contract section 7: openqueue_admin reads openqueue.schedules.
        if pg_catalog.to_regclass('openqueue.schedules') is not null then
            execute 'grant select on openqueue.schedules to openqueue_admin';
        end if;
    end if;

    -- 4. Functions: SECURITY DEFINER for the API, never PUBLIC; internal
    -- helpers for nobody but the owner; each role its list.
    for v_object in
        select p.oid::regprocedure as name, p.proname::text as proname, p.prosecdef, p.oid
        from pg_catalog.pg_proc as p
        where p.pronamespace = 'openqueue'::regnamespace
        order by p.oid
    loop
        execute format('revoke all on function %s from public', v_object.name);
        if v_object.proname like 'oq\_%' then
            if not v_object.prosecdef then
                execute format('alter function %s security definer', v_object.name);
            end if;
            foreach v_role in array v_present loop
                execute format('revoke all on function %s from %I', v_object.name, v_role);
            end loop;
            if 'openqueue_producer' = any(v_present) and v_object.proname = any(v_producer) then
                execute format('grant execute on function %s to openqueue_producer', v_object.name);
            end if;
            if 'openqueue_worker' = any(v_present) and v_object.proname = any(v_worker) then
                execute format('grant execute on function %s to openqueue_worker', v_object.name);
            end if;
            if 'openqueue_admin' = any(v_present) then
                execute format('grant execute on function %s to openqueue_admin', v_object.name);
            end if;
        else
            for v_grantee in
                select distinct a.grantee
                from pg_catalog.pg_proc as p
                cross join lateral pg_catalog.aclexplode(p.proacl) as a
                where p.oid = v_object.oid and a.grantee not in (0, v_owner)
            loop
                execute format('revoke all on function %s from %s', v_object.name, v_grantee::regrole);
            end loop;
        end if;
    end loop;

    -- 5. The schema: USAGE for the three roles, nothing for PUBLIC.
    execute 'revoke all on schema openqueue from public';
    foreach v_role in array v_present loop
        execute format('grant usage on schema openqueue to %I', v_role);
    end loop;
end;
$$;

comment on function openqueue._apply_security() is
'Internal: create the roles openqueue_producer, openqueue_worker and '
'openqueue_admin where allowed (NOTICE otherwise), give every object to the '
'schema owner, make the oq_* functions SECURITY DEFINER, revoke every '
'privilege but the owner''s on tables, sequences and internal helpers, and '
'grant each role its list. The installer runs it after the last migration '
'on every run; idempotent.';
