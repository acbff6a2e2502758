-- OpenQueue installer and upgrader.
-- GENERATED from sql/migrations/ by `make sql`: do not edit by hand.
--
--   psql "$DSN" -v ON_ERROR_STOP=1 -f sql/openqueue.sql
--
-- Installs the current schema into an empty database or upgrades an
-- earlier version in place: every missing migration runs, in order, in
-- one transaction, under an advisory lock so that concurrent installers
-- queue up instead of colliding. Running it again changes nothing.
begin;

-- Nothing the installing session has planted in its search_path is seen
-- by the migrations (every reference in them is schema-qualified).
set local search_path = pg_catalog, pg_temp;

do $oq_lock$
begin
    perform pg_advisory_xact_lock(hashtextextended('openqueue.install', 0));
end
$oq_lock$;

do $oq_install$
declare
    v_current integer := 0;
begin
    if to_regclass('openqueue.schema_migrations') is not null then
        select coalesce(max(version), 0) into v_current
        from openqueue.schema_migrations;
    end if;
    if v_current > 8 then
        raise exception using
            errcode = 'OQ001',
            message = format('openqueue schema version %s is newer than this installer (version 8)', v_current),
            hint = 'install a newer OpenQueue release';
    end if;
    if v_current < 1 then
        execute $oq_0001$
-- OpenQueue schema version 1.
--
-- Forward-only migration: applied once, inside the installer's transaction,
-- by sql/openqueue.sql (generated from this folder). Never edit a released
-- migration; add the next numbered file instead.
--
-- Storage layout, chosen for churn:
--   openqueue.live_jobs      waiting and running jobs only (pending, failed,
--                            processing). Small, hot, and the only table the
--                            lease and reap paths read.
--   openqueue.finished_jobs  completed, dead and cancelled jobs. Append-mostly;
--                            purge deletes from it by finished_at.
--   openqueue.jobs           the documented view: one row per job, both tables.
-- A job lives in exactly one of the two tables; ack, nack-to-dead, reap-to-dead
-- and cancel move it out of live_jobs in the same statement, replay moves it
-- back. However many finished rows pile up, leasing never reads them.

create schema if not exists openqueue;

comment on schema openqueue is
'OpenQueue: a PostgreSQL-native job queue. Call the oq_* functions.';

create table openqueue.schema_migrations (
    version integer primary key,  -- noqa: RF04
    name text not null,  -- noqa: RF04
    applied_at timestamptz not null default now()
);

comment on table openqueue.schema_migrations is
'One row per applied OpenQueue migration (sql/migrations/NNNN_name.sql).';

-- Job ids come from one sequence shared by both tables, so an id never
-- changes when a job moves between them.
create sequence openqueue.job_id_seq as bigint;

-- Per-queue settings. A NULL column means "the built-in default"
-- (see openqueue._queue_settings); a queue needs no row to be used.
create table openqueue.queues (
    queue_name text primary key,
    max_attempts integer,
    lease_seconds integer,
    backoff_base interval,
    backoff_max interval,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint max_attempts_at_least_one check (max_attempts >= 1),
    constraint lease_seconds_in_range check (lease_seconds between 1 and 86400),
    constraint backoff_base_not_negative check (backoff_base >= interval '0'),
    constraint backoff_max_not_negative check (backoff_max >= interval '0')
);

comment on table openqueue.queues is
'Per-queue defaults set by oq_configure_queue; NULL means the built-in default.';

-- The hot table. Every job is inserted, updated at least twice and deleted
-- here, so it is all churn: fillfactor leaves room on each page for the new
-- row versions, and autovacuum is told to visit after 1 % of the rows changed
-- (not the default 20 %) so that dead versions never pile up in front of the
-- lease index scan.
create table openqueue.live_jobs (
    id bigint primary key default nextval('openqueue.job_id_seq'),
    queue_name text not null,
    status text not null default 'pending',
    priority integer not null default 0,
    run_at timestamptz not null default now(),
    attempts integer not null default 0,
    max_attempts integer not null,
    lease_token uuid,
    leased_by text,
    lease_expires_at timestamptz,
    payload jsonb not null,
    errors jsonb not null default '[]',
    idempotency_key text,
    created_at timestamptz not null default now(),
    constraint status_is_live check (status in ('pending', 'failed', 'processing')),
    constraint lease_held_when_processing check (
        (status = 'processing') = (lease_token is not null and lease_expires_at is not null)
    ),
    constraint attempts_not_negative check (attempts >= 0),
    constraint max_attempts_at_least_one check (max_attempts >= 1)
) with (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);

alter sequence openqueue.job_id_seq owned by openqueue.live_jobs.id;

comment on table openqueue.live_jobs is
'Jobs waiting (pending, failed) or running (processing). Read openqueue.jobs instead.';

-- oq_lease: one queue, due jobs only, in lease order. Partial, so running
-- jobs are not in it; ordered like the lease so that the first batch_size
-- entries with run_at <= now() are the answer.
create index live_jobs_lease_order
on openqueue.live_jobs (queue_name, priority desc, run_at, id)
where status in ('pending', 'failed');

-- oq_reap: expired leases, running jobs only.
create index live_jobs_lease_expiry
on openqueue.live_jobs (lease_expires_at)
where status = 'processing';

create table openqueue.finished_jobs (
    id bigint primary key,
    queue_name text not null,
    status text not null,
    priority integer not null,
    run_at timestamptz not null,
    attempts integer not null,
    max_attempts integer not null,
    leased_by text,
    payload jsonb not null,
    result jsonb,
    errors jsonb not null default '[]',
    idempotency_key text,
    created_at timestamptz not null,
    finished_at timestamptz not null default now(),
    constraint status_is_finished check (status in ('completed', 'dead', 'cancelled'))
);

comment on table openqueue.finished_jobs is
'Jobs in a terminal state (completed, dead, cancelled). Read openqueue.jobs instead.';

-- oq_purge deletes by age; rows arrive in finished_at order, so this index
-- only ever grows at its right edge.
create index finished_jobs_finished_at
on openqueue.finished_jobs (finished_at);

-- Idempotency keys live apart from the jobs so that a key is unique across
-- both tables, race-free (the primary key decides), and freed exactly when
-- its job is purged.
create table openqueue.idempotency_keys (
    queue_name text not null,
    idempotency_key text not null,
    job_id bigint not null,
    created_at timestamptz not null default now(),
    constraint idempotency_keys_pkey primary key (queue_name, idempotency_key)
);

create index idempotency_keys_job_id on openqueue.idempotency_keys (job_id);

comment on table openqueue.idempotency_keys is
'Idempotency keys of stored jobs; a key is freed when its job is purged.';

create view openqueue.jobs as
select
    lj.id,
    lj.queue_name,
    lj.payload,
    lj.status,
    lj.priority,
    lj.run_at,
    lj.attempts,
    lj.max_attempts,
    lj.leased_by,
    lj.lease_token,
    lj.lease_expires_at,
    null::jsonb as result,
    lj.errors,
    lj.idempotency_key,
    lj.created_at,
    null::timestamptz as finished_at
from openqueue.live_jobs as lj
union all
select
    fj.id,
    fj.queue_name,
    fj.payload,
    fj.status,
    fj.priority,
    fj.run_at,
    fj.attempts,
    fj.max_attempts,
    fj.leased_by,
    null::uuid as lease_token,
    null::timestamptz as lease_expires_at,
    fj.result,
    fj.errors,
    fj.idempotency_key,
    fj.created_at,
    fj.finished_at
from openqueue.finished_jobs as fj;

comment on view openqueue.jobs is
'One row per job, whatever its state. UPDATE and DELETE are routed to the '
'table that holds the job; state changes go through the oq_* functions.';

-- ---------------------------------------------------------------------------
-- Internal helpers (not granted to anyone).
-- ---------------------------------------------------------------------------

create function openqueue._raise_null(argument_name text)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception using
        errcode = 'null_value_not_allowed',
        message = format('%s must not be NULL', _raise_null.argument_name),
        hint = format('pass a value for argument %s', _raise_null.argument_name);
end;
$$;

comment on function openqueue._raise_null(text) is
'Internal: raise SQLSTATE 22004 naming the argument that was NULL.';

create function openqueue._raise_invalid(argument_name text, problem text)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception using
        errcode = 'invalid_parameter_value',
        message = format('%s %s', _raise_invalid.argument_name, _raise_invalid.problem);
end;
$$;

comment on function openqueue._raise_invalid(text, text) is
'Internal: raise SQLSTATE 22023 naming the argument and what is wrong with it.';

create function openqueue._check_queue_name(queue_name text, argument_name text default 'queue_name')
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
    if _check_queue_name.queue_name is null then
        perform openqueue._raise_null(_check_queue_name.argument_name);
    elsif _check_queue_name.queue_name = '' then
        perform openqueue._raise_invalid(_check_queue_name.argument_name, 'must not be empty');
    elsif length(_check_queue_name.queue_name) > 128 then
        perform openqueue._raise_invalid(
            _check_queue_name.argument_name, 'must be at most 128 characters long'
        );
    elsif _check_queue_name.queue_name !~ '^[A-Za-z0-9_.:-]+$' then
        perform openqueue._raise_invalid(
            _check_queue_name.argument_name,
            format('%L may only contain A-Z a-z 0-9 _ . : -', _check_queue_name.queue_name)
        );
    end if;
end;
$$;

comment on function openqueue._check_queue_name(text, text) is
'Internal: reject a NULL, empty, too long (> 128) or ill-formed queue name.';

create function openqueue._check_range(
    argument_name text, argument_value bigint, lower_bound bigint, upper_bound bigint
)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
    if _check_range.argument_value is null then
        return;
    end if;
    if _check_range.argument_value < _check_range.lower_bound
       or _check_range.argument_value > _check_range.upper_bound then
        perform openqueue._raise_invalid(
            _check_range.argument_name,
            format(
                'must be between %s and %s, got %s',
                _check_range.lower_bound, _check_range.upper_bound, _check_range.argument_value
            )
        );
    end if;
end;
$$;

comment on function openqueue._check_range(text, bigint, bigint, bigint) is
'Internal: reject a value outside [lower_bound, upper_bound] (inclusive); NULL passes.';

-- The built-in defaults live here and nowhere else.
create function openqueue._queue_settings(
    queue_name text,
    out max_attempts integer,
    out lease_seconds integer,
    out backoff_base interval,
    out backoff_max interval
)
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select
        coalesce(q.max_attempts, 5),
        coalesce(q.lease_seconds, 30),
        coalesce(q.backoff_base, interval '1 second'),
        coalesce(q.backoff_max, interval '1 hour')
    from (select 1) as one
    left join openqueue.queues as q on q.queue_name = _queue_settings.queue_name
$$;

comment on function openqueue._queue_settings(text) is
'Internal: a queue''s effective settings, built-in defaults filled in '
'(max_attempts 5, lease_seconds 30, backoff_base 1 second, backoff_max 1 hour).';

-- Delay before the retry that follows the attempt-th failure:
-- least(backoff_max, backoff_base * 2^(attempt-1)), plus up to 10 % jitter,
-- never below the un-jittered delay. Computed in seconds so that a large
-- attempt count cannot overflow an interval.
create function openqueue._backoff(attempt integer, backoff_base interval, backoff_max interval)
returns interval
language sql
volatile
set search_path = pg_catalog, pg_temp
as $$
    select make_interval(
        secs => least(
            extract(epoch from _backoff.backoff_max)::double precision,
            extract(epoch from _backoff.backoff_base)::double precision
            * power(2::double precision, least(greatest(_backoff.attempt, 1) - 1, 1000))
        ) * (1 + random() * 0.1)
    )
$$;

comment on function openqueue._backoff(integer, interval, interval) is
'Internal: retry delay after the attempt-th failure, with up to 10 % jitter.';

create function openqueue._error_entry(attempt integer, error text)
returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select jsonb_build_object(
        'attempt', _error_entry.attempt,
        'error', _error_entry.error,
        'at', now()
    )
$$;

comment on function openqueue._error_entry(integer, text) is
'Internal: one entry of a job''s errors array.';

-- ---------------------------------------------------------------------------
-- Public API.
-- ---------------------------------------------------------------------------

create function openqueue.oq_enqueue(
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
begin
    perform openqueue._check_queue_name(oq_enqueue.queue_name);
    if oq_enqueue.payload is null then
        perform openqueue._raise_null('payload');
    end if;
    perform openqueue._check_range('max_attempts', oq_enqueue.max_attempts, 1, 2147483647);

    v_id := nextval('openqueue.job_id_seq');

    if oq_enqueue.idempotency_key is not null then
        -- The primary key makes concurrent enqueues with one key race-free:
        -- the loser waits for the winner's commit, then sees its row.
        insert into openqueue.idempotency_keys as ik (queue_name, idempotency_key, job_id)
        values (oq_enqueue.queue_name, oq_enqueue.idempotency_key, v_id)
        on conflict on constraint idempotency_keys_pkey do nothing;
        if not found then
            select ik.job_id into v_existing
            from openqueue.idempotency_keys as ik
            where ik.queue_name = oq_enqueue.queue_name
              and ik.idempotency_key = oq_enqueue.idempotency_key;
            return v_existing;
        end if;
    end if;

    insert into openqueue.live_jobs as lj (
        id, queue_name, priority, run_at, max_attempts, payload, idempotency_key
    )
    values (
        v_id,
        oq_enqueue.queue_name,
        coalesce(oq_enqueue.priority, 0),
        v_run_at,
        coalesce(
            oq_enqueue.max_attempts,
            (openqueue._queue_settings(oq_enqueue.queue_name)).max_attempts
        ),
        oq_enqueue.payload,
        oq_enqueue.idempotency_key
    );

    -- Due now: wake a worker. Due later: tell sleeping workers on a second
    -- channel, so that they shorten their sleep to the new run_at.
    if v_run_at <= now() then
        perform pg_notify('openqueue', oq_enqueue.queue_name);
    else
        perform pg_notify('openqueue_scheduled', oq_enqueue.queue_name);
    end if;
    return v_id;
end;
$$;

comment on function openqueue.oq_enqueue(text, jsonb, integer, timestamptz, integer, text) is
'Add one job to queue_name and return its id. priority (default 0): higher '
'leases first. run_at (default now()): not leased before then. max_attempts '
'(NULL: the queue''s setting, 5 unless configured). idempotency_key: if the '
'queue already stores a job with this key, its id is returned and nothing is '
'inserted. Sends NOTIFY openqueue, queue_name when the job is due now, or '
'NOTIFY openqueue_scheduled, queue_name when it is due later (on commit). Errors 22004/22023 for a NULL or bad queue_name, NULL payload, '
'max_attempts < 1.';

create function openqueue.oq_enqueue_batch(
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
    v_max_attempts integer;
    v_count bigint;
begin
    perform openqueue._check_queue_name(oq_enqueue_batch.queue_name);
    if oq_enqueue_batch.payloads is null then
        perform openqueue._raise_null('payloads');
    elsif jsonb_typeof(oq_enqueue_batch.payloads) <> 'array' then
        perform openqueue._raise_invalid(
            'payloads',
            format('must be a JSON array, got a JSON %s', jsonb_typeof(oq_enqueue_batch.payloads))
        );
    end if;
    perform openqueue._check_range('max_attempts', oq_enqueue_batch.max_attempts, 1, 2147483647);

    v_max_attempts := coalesce(
        oq_enqueue_batch.max_attempts,
        (openqueue._queue_settings(oq_enqueue_batch.queue_name)).max_attempts
    );

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
        insert into openqueue.live_jobs (id, queue_name, priority, run_at, max_attempts, payload)
        select
            n.job_id,
            oq_enqueue_batch.queue_name,
            coalesce(oq_enqueue_batch.priority, 0),
            v_run_at,
            v_max_attempts,
            n.payload
        from numbered as n
    )

    -- A data-modifying CTE runs whether or not the outer query reads it.
    select n.job_id
    from numbered as n
    order by n.ordinality;

    get diagnostics v_count = row_count;
    if v_count > 0 and v_run_at <= now() then
        perform pg_notify('openqueue', oq_enqueue_batch.queue_name);
    elsif v_count > 0 then
        perform pg_notify('openqueue_scheduled', oq_enqueue_batch.queue_name);
    end if;
end;
$$;

comment on function openqueue.oq_enqueue_batch(text, jsonb, integer, timestamptz, integer) is
'Add one job per element of the JSON array payloads to queue_name; returns '
'the ids in array order. Other arguments as for oq_enqueue. One NOTIFY per '
'call when the jobs are due now; an empty array writes nothing. Errors '
'22004/22023 for a bad queue_name, payloads NULL or not an array, max_attempts < 1.';

create function openqueue.oq_lease(
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

    v_lease := make_interval(secs => coalesce(
        oq_lease.lease_seconds,
        (openqueue._queue_settings(oq_lease.queue_name)).lease_seconds
    ));

    -- SKIP LOCKED lets any number of workers lease from one queue without
    -- waiting on each other; live_jobs_lease_order makes this an index scan
    -- that stops after batch_size due rows.
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
end;
$$;

comment on function openqueue.oq_lease(text, text, integer, integer) is
'Claim up to batch_size (default 1, at most 10000) due jobs of queue_name '
'(pending, or failed with run_at <= now()): highest priority first, then '
'oldest run_at, then lowest id, skipping rows other workers hold. Each becomes '
'processing with attempts + 1, a fresh lease_token and lease_expires_at = '
'now() + lease_seconds (NULL: the queue''s setting, 30 unless configured; '
'at most 86400). Returns the leased rows in lease order; none when nothing '
'is due. Errors 22004/22023 for a bad queue_name, NULL worker_id, '
'lease_seconds or batch_size out of range.';

create function openqueue.oq_heartbeat(
    job_id bigint,
    lease_token uuid,
    lease_seconds integer default null  -- null: the queue's setting
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

    update openqueue.live_jobs as lj
    set lease_expires_at = now() + make_interval(secs => coalesce(
        oq_heartbeat.lease_seconds,
        (openqueue._queue_settings(lj.queue_name)).lease_seconds
    ))
    where lj.id = oq_heartbeat.job_id
      and lj.status = 'processing'
      and lj.lease_token = oq_heartbeat.lease_token
    returning lj.lease_expires_at into v_expires;

    return v_expires;
end;
$$;

comment on function openqueue.oq_heartbeat(bigint, uuid, integer) is
'Extend the lease that lease_token holds on job_id to now() + lease_seconds '
'(NULL: the queue''s setting). Returns the new expiry, or NULL when that '
'lease is no longer held (acked, nacked, cancelled, reclaimed, wrong token, '
'unknown job). An expired lease that oq_reap has not reclaimed yet is still '
'held. Errors 22004/22023 for NULL job_id or lease_token, lease_seconds out of range.';

create function openqueue.oq_ack(
    job_id bigint,
    lease_token uuid,
    result jsonb default null
)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if oq_ack.job_id is null then
        perform openqueue._raise_null('job_id');
    end if;
    if oq_ack.lease_token is null then
        perform openqueue._raise_null('lease_token');
    end if;

    with done as (
        delete from openqueue.live_jobs as lj
        where lj.id = oq_ack.job_id
          and lj.status = 'processing'
          and lj.lease_token = oq_ack.lease_token
        returning lj.*
    )

    insert into openqueue.finished_jobs (
        id, queue_name, status, priority, run_at, attempts, max_attempts,
        leased_by, payload, result, errors, idempotency_key, created_at, finished_at
    )
    select
        d.id, d.queue_name, 'completed', d.priority, d.run_at, d.attempts, d.max_attempts,
        d.leased_by, d.payload, oq_ack.result, d.errors, d.idempotency_key, d.created_at, now()
    from done as d;

    return found;
end;
$$;

comment on function openqueue.oq_ack(bigint, uuid, jsonb) is
'Mark job_id completed, storing result, if lease_token holds its current '
'lease; returns true. Otherwise returns false and changes nothing.';

create function openqueue.oq_nack(
    job_id bigint,
    lease_token uuid,
    error text default null,
    retry_in interval default null,  -- null: exponential backoff
    retry boolean default true
)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_job openqueue.live_jobs%rowtype;
    v_settings record;
    v_errors jsonb;
begin
    if oq_nack.job_id is null then
        perform openqueue._raise_null('job_id');
    end if;
    if oq_nack.lease_token is null then
        perform openqueue._raise_null('lease_token');
    end if;
    if oq_nack.retry_in < interval '0' then
        perform openqueue._raise_invalid('retry_in', 'must not be negative');
    end if;

    select lj.* into v_job
    from openqueue.live_jobs as lj
    where lj.id = oq_nack.job_id
      and lj.status = 'processing'
      and lj.lease_token = oq_nack.lease_token
    for update;
    if not found then
        return null;
    end if;

    v_errors := v_job.errors || openqueue._error_entry(v_job.attempts, oq_nack.error);

    if coalesce(oq_nack.retry, true) and v_job.attempts < v_job.max_attempts then
        v_settings := openqueue._queue_settings(v_job.queue_name);
        update openqueue.live_jobs as lj
        set
            status = 'failed',
            run_at = now() + coalesce(
                oq_nack.retry_in,
                openqueue._backoff(v_job.attempts, v_settings.backoff_base, v_settings.backoff_max)
            ),
            lease_token = null,
            lease_expires_at = null,
            errors = v_errors
        where lj.id = v_job.id;
        perform pg_notify('openqueue_scheduled', v_job.queue_name);
        return 'failed';
    end if;

    delete from openqueue.live_jobs as lj where lj.id = v_job.id;
    insert into openqueue.finished_jobs (
        id, queue_name, status, priority, run_at, attempts, max_attempts,
        leased_by, payload, errors, idempotency_key, created_at, finished_at
    )
    values (
        v_job.id, v_job.queue_name, 'dead', v_job.priority, v_job.run_at, v_job.attempts,
        v_job.max_attempts, v_job.leased_by, v_job.payload, v_errors, v_job.idempotency_key,
        v_job.created_at, now()
    );
    return 'dead';
end;
$$;

comment on function openqueue.oq_nack(bigint, uuid, text, interval, boolean) is
'Report that the attempt holding lease_token on job_id failed with error '
'(appended to the job''s errors). With attempts left and retry (default '
'true) the job becomes failed and leasable again at now() + retry_in, or '
'after exponential backoff when retry_in is NULL; otherwise it becomes dead. '
'Returns ''failed'', ''dead'', or NULL when the lease is not held.';

create function openqueue.oq_reap()
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_dead integer;
    v_queues text[];
begin
    -- SKIP LOCKED everywhere: a job being acked or heartbeated right now is
    -- skipped rather than waited for; a later reap sees it if still expired.

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

    -- Attempts left: pending again, leasable at once.
    with reclaimed as (
        update openqueue.live_jobs as lj
        set
            status = 'pending',
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

    perform pg_notify('openqueue', q.queue_name)
    from (select distinct u.queue_name from unnest(v_queues) as u (queue_name)) as q;

    return v_dead + coalesce(cardinality(v_queues), 0);
end;
$$;

comment on function openqueue.oq_reap() is
'Reclaim every processing job whose lease has expired: it becomes pending '
'again (error ''lease expired'' recorded), or dead if its attempts are used '
'up. Returns how many jobs were reclaimed; notifies the refilled queues. '
'Safe to run concurrently and often.';

create function openqueue.oq_cancel(job_id bigint)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if oq_cancel.job_id is null then
        perform openqueue._raise_null('job_id');
    end if;

    with gone as (
        delete from openqueue.live_jobs as lj
        where lj.id = oq_cancel.job_id
        returning lj.*
    )

    insert into openqueue.finished_jobs (
        id, queue_name, status, priority, run_at, attempts, max_attempts,
        leased_by, payload, errors, idempotency_key, created_at, finished_at
    )
    select
        g.id, g.queue_name, 'cancelled', g.priority, g.run_at, g.attempts, g.max_attempts,
        g.leased_by, g.payload, g.errors, g.idempotency_key, g.created_at, now()
    from gone as g;

    return found;
end;
$$;

comment on function openqueue.oq_cancel(bigint) is
'Cancel job_id if it is pending, failed or processing (a held lease is '
'revoked: its ack and heartbeat then fail). Returns false for a job in any '
'other state or an unknown id.';

create function openqueue.oq_replay(job_id bigint)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_queue text;
begin
    if oq_replay.job_id is null then
        perform openqueue._raise_null('job_id');
    end if;

    with revived as (
        delete from openqueue.finished_jobs as fj
        where fj.id = oq_replay.job_id
          and fj.status in ('dead', 'cancelled')
        returning fj.*
    )

    insert into openqueue.live_jobs (
        id, queue_name, status, priority, run_at, attempts, max_attempts,
        payload, errors, idempotency_key, created_at
    )
    select
        r.id, r.queue_name, 'pending', r.priority, now(), 0, r.max_attempts,
        r.payload, r.errors, r.idempotency_key, r.created_at
    from revived as r
    returning queue_name into v_queue;

    if v_queue is null then
        return false;
    end if;
    perform pg_notify('openqueue', v_queue);
    return true;
end;
$$;

comment on function openqueue.oq_replay(bigint) is
'Put a dead or cancelled job back to pending, due now, attempts reset to 0, '
'error history kept; notifies its queue. False for any other state or an unknown id.';

create function openqueue.oq_configure_queue(
    queue_name text,
    max_attempts integer default null,
    lease_seconds integer default null,
    backoff_base interval default null,
    backoff_max interval default null
)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform openqueue._check_queue_name(oq_configure_queue.queue_name);
    perform openqueue._check_range('max_attempts', oq_configure_queue.max_attempts, 1, 2147483647);
    perform openqueue._check_range('lease_seconds', oq_configure_queue.lease_seconds, 1, 86400);
    if oq_configure_queue.backoff_base < interval '0' then
        perform openqueue._raise_invalid('backoff_base', 'must not be negative');
    end if;
    if oq_configure_queue.backoff_max < interval '0' then
        perform openqueue._raise_invalid('backoff_max', 'must not be negative');
    end if;

    insert into openqueue.queues as q (
        queue_name, max_attempts, lease_seconds, backoff_base, backoff_max
    )
    values (
        oq_configure_queue.queue_name,
        oq_configure_queue.max_attempts,
        oq_configure_queue.lease_seconds,
        oq_configure_queue.backoff_base,
        oq_configure_queue.backoff_max
    )
    on conflict on constraint queues_pkey do update
    set
        max_attempts = coalesce(excluded.max_attempts, q.max_attempts),
        lease_seconds = coalesce(excluded.lease_seconds, q.lease_seconds),
        backoff_base = coalesce(excluded.backoff_base, q.backoff_base),
        backoff_max = coalesce(excluded.backoff_max, q.backoff_max),
        updated_at = now();
end;
$$;

comment on function openqueue.oq_configure_queue(text, integer, integer, interval, interval) is
'Set per-queue defaults: max_attempts for new jobs, lease_seconds for leases '
'and heartbeats (1 to 86400), backoff_base and backoff_max for retries. A NULL '
'argument leaves that setting unchanged. Built-in defaults: 5 attempts, 30 '
'seconds, 1 second, 1 hour.';

create function openqueue.oq_stats()
returns table (
    queue_name text,
    pending bigint,
    processing bigint,
    failed bigint,
    completed bigint,
    dead bigint,
    cancelled bigint,
    oldest_due_at timestamptz
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
            fj.queue_name,
            count(*) filter (where fj.status = 'completed') as completed,
            count(*) filter (where fj.status = 'dead') as dead,
            count(*) filter (where fj.status = 'cancelled') as cancelled
        from openqueue.finished_jobs as fj
        group by fj.queue_name
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
        l.oldest_due_at
    from names as n
    left join live as l on n.queue_name = l.queue_name
    left join finished as f on n.queue_name = f.queue_name
    order by n.queue_name
$$;

comment on function openqueue.oq_stats() is
'One row per queue that has jobs or settings: job counts by state, and '
'oldest_due_at, the earliest run_at among waiting jobs already due (NULL when none is).';

create function openqueue.oq_purge(older_than interval, include_dead boolean default false)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count bigint;
begin
    if oq_purge.older_than is null then
        perform openqueue._raise_null('older_than');
    elsif oq_purge.older_than < interval '0' then
        perform openqueue._raise_invalid('older_than', 'must not be negative');
    end if;

    with purged as (
        delete from openqueue.finished_jobs as fj
        where fj.finished_at < now() - oq_purge.older_than
          and (
              fj.status in ('completed', 'cancelled')
              or (fj.status = 'dead' and coalesce(oq_purge.include_dead, false))
          )
        returning fj.id, fj.queue_name, fj.idempotency_key
    ),

    freed as (
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

comment on function openqueue.oq_purge(interval, boolean) is
'Delete completed and cancelled jobs (and dead ones with include_dead) that '
'finished before now() - older_than; frees their idempotency keys. Returns '
'the number of jobs deleted. Errors 22004/22023 for a NULL or negative older_than.';

create function openqueue.oq_next_run_at(queue_names text[])
returns timestamptz
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_queue text;
    v_priority integer;
    v_run_at timestamptz;
    v_next timestamptz;
begin
    if oq_next_run_at.queue_names is null then
        perform openqueue._raise_null('queue_names');
    end if;
    -- A skip scan over live_jobs_lease_order: for each queue, visit each
    -- distinct priority once and take the first future run_at within it.
    -- Every step is one index descent, so the cost grows with the number of
    -- priorities in use, not with the number of scheduled jobs.
    foreach v_queue in array oq_next_run_at.queue_names loop
        select lj.priority into v_priority
        from openqueue.live_jobs as lj
        where lj.queue_name = v_queue
          and lj.status in ('pending', 'failed')
        order by lj.priority desc
        limit 1;
        while v_priority is not null loop
            select lj.run_at into v_run_at
            from openqueue.live_jobs as lj
            where lj.queue_name = v_queue
              and lj.status in ('pending', 'failed')
              and lj.priority = v_priority
              and lj.run_at > now()
            order by lj.run_at
            limit 1;
            if v_run_at is not null and (v_next is null or v_run_at < v_next) then
                v_next := v_run_at;
            end if;
            v_run_at := null;
            select lj.priority into v_priority
            from openqueue.live_jobs as lj
            where lj.queue_name = v_queue
              and lj.status in ('pending', 'failed')
              and lj.priority < v_priority
            order by lj.priority desc
            limit 1;
            if not found then
                v_priority := null;
            end if;
        end loop;
    end loop;
    return v_next;
end;
$$;

comment on function openqueue.oq_next_run_at(text[]) is
'The earliest future run_at among waiting jobs of queue_names, or NULL. '
'Workers sleep until then instead of a whole poll interval.';

-- ---------------------------------------------------------------------------
-- openqueue.jobs is a view over two tables; these triggers route UPDATE and
-- DELETE to whichever table holds the job, so that operators (and tests) can
-- reschedule, edit or remove a job with plain SQL. A state change across the
-- two tables is refused: that is what oq_cancel / oq_replay / oq_ack are for.
-- ---------------------------------------------------------------------------

create function openqueue._jobs_view_update()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if new.id is distinct from old.id then
        raise exception using
            errcode = 'feature_not_supported',
            message = 'openqueue.jobs: id cannot be changed';
    end if;
    if old.finished_at is null then
        if new.status not in ('pending', 'failed', 'processing') then
            raise exception using
                errcode = 'feature_not_supported',
                message = format('openqueue.jobs: cannot move job %s from %s to %s by UPDATE',
                                 old.id, old.status, new.status),
                hint = 'use oq_ack, oq_nack or oq_cancel';
        end if;
        update openqueue.live_jobs as lj
        set
            queue_name = new.queue_name,
            payload = new.payload,
            status = new.status,
            priority = new.priority,
            run_at = new.run_at,
            attempts = new.attempts,
            max_attempts = new.max_attempts,
            leased_by = new.leased_by,
            lease_token = new.lease_token,
            lease_expires_at = new.lease_expires_at,
            errors = new.errors,
            idempotency_key = new.idempotency_key,
            created_at = new.created_at
        where lj.id = old.id;
    else
        if new.status not in ('completed', 'dead', 'cancelled') then
            raise exception using
                errcode = 'feature_not_supported',
                message = format('openqueue.jobs: cannot move job %s from %s to %s by UPDATE',
                                 old.id, old.status, new.status),
                hint = 'use oq_replay';
        end if;
        update openqueue.finished_jobs as fj
        set
            queue_name = new.queue_name,
            payload = new.payload,
            status = new.status,
            priority = new.priority,
            run_at = new.run_at,
            attempts = new.attempts,
            max_attempts = new.max_attempts,
            leased_by = new.leased_by,
            result = new.result,
            errors = new.errors,
            idempotency_key = new.idempotency_key,
            created_at = new.created_at,
            finished_at = new.finished_at
        where fj.id = old.id;
    end if;
    return new;
end;
$$;

comment on function openqueue._jobs_view_update() is
'Internal: INSTEAD OF UPDATE on openqueue.jobs, routed to the table holding the job.';

create function openqueue._jobs_view_delete()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    delete from openqueue.live_jobs as lj where lj.id = old.id;
    delete from openqueue.finished_jobs as fj where fj.id = old.id;
    delete from openqueue.idempotency_keys as ik where ik.job_id = old.id;
    return old;
end;
$$;

comment on function openqueue._jobs_view_delete() is
'Internal: INSTEAD OF DELETE on openqueue.jobs; also frees the job''s idempotency key.';

create trigger jobs_view_update
instead of update on openqueue.jobs
for each row execute function openqueue._jobs_view_update();

create trigger jobs_view_delete
instead of delete on openqueue.jobs
for each row execute function openqueue._jobs_view_delete();

-- Least privilege: nobody but the owner (and superusers) may call anything
-- until granted. See README "Permissions" for the grants an application needs.
revoke all on all functions in schema openqueue from public;
$oq_0001$;
        insert into openqueue.schema_migrations (version, name)
        values (1, '0001_init');
        raise notice 'openqueue: applied migration 0001_init';
    end if;
    if v_current < 2 then
        execute $oq_0002$
-- OpenQueue schema version 2: batching and a layout for churn (issue 6).
--
-- Forward-only: applied once on top of version 1, inside the installer's
-- transaction. Every job, lease token, error history and idempotency key of a
-- version 1 database is kept; leases held during the upgrade stay valid.

-- ---------------------------------------------------------------------------
-- oq_ack_many (contract v2): a whole batch of acks in one statement.
-- ---------------------------------------------------------------------------

create function openqueue.oq_ack_many(
    job_ids bigint[],
    lease_tokens uuid[],
    results jsonb[] default null  -- null: no results stored
)
returns setof bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
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

comment on function openqueue.oq_ack_many(bigint[], uuid[], jsonb[]) is
'Ack a batch in one statement: element i is acked exactly as '
'oq_ack(job_ids[i], lease_tokens[i], results[i]) would be (results NULL: no '
'results stored). Returns the ids it completed, in input order; an id whose '
'token does not hold the current lease is absent. A pair given twice is acked '
'once. Errors 22004 for a NULL array or element, 22023 for arrays of different lengths.';

revoke all on function openqueue.oq_ack_many(bigint[], uuid[], jsonb[]) from public;

-- ---------------------------------------------------------------------------
-- live_jobs for churn.
--
-- 1. Heartbeats are HOT updates. A HOT update (new row version on the same
--    page, no index entry) is possible only when no indexed column changes;
--    columns in a partial index's predicate count as indexed. Version 1
--    indexed lease_expires_at for oq_reap, so every heartbeat wrote a new
--    entry into every index of the hottest table. The in-flight rows are now
--    found through a partial index on id alone: oq_reap reads all processing
--    rows (as many as jobs are running, bounded by the workers' slots) and
--    checks their expiry itself. A heartbeat changes lease_expires_at only,
--    which is in no index and no predicate, so it is HOT whenever the page
--    has room (fillfactor 80 keeps room).
--
-- 2. Scheduled and backing-off jobs stay out of the lease index. The lease
--    order is (priority desc, run_at, id), so in version 1 a million jobs
--    scheduled for tomorrow at a higher priority sat in front of every due
--    job, and each lease walked past all of them (PostgreSQL 15 has no skip
--    scan). Now a waiting job is either "due" (in live_jobs_lease_order,
--    partial on due) or not yet (in live_jobs_scheduled, a small index on
--    (queue_name, run_at)). oq_lease first promotes the queue's not-yet-due
--    jobs whose run_at has come (one index descent when there are none),
--    then reads the lease index, which only holds due jobs: O(batch) entries.
--    The flag is internal: openqueue.jobs shows the contract's statuses.
--    Its default is false, so a row inserted by hand is at worst promoted
--    one lease later, never leased early (oq_lease also checks run_at).
-- ---------------------------------------------------------------------------

alter table openqueue.live_jobs add column due boolean not null default false;

comment on column openqueue.live_jobs.due is
'Internal: the waiting job is in the lease index (run_at has come). Set by '
'the functions and by a trigger when run_at changes; oq_lease promotes the rest.';

update openqueue.live_jobs as lj
set due = true
where lj.status = 'processing' or lj.run_at <= now();

drop index openqueue.live_jobs_lease_order;

drop index openqueue.live_jobs_lease_expiry;

-- oq_lease: due jobs only, in lease order; the first batch_size entries are
-- the answer.
create index live_jobs_lease_order
on openqueue.live_jobs (queue_name, priority desc, run_at, id)
where status in ('pending', 'failed') and due;

-- Jobs waiting for their run_at (scheduled, or failed and backing off), by
-- run_at: oq_lease promotes from its left edge, oq_next_run_at reads its
-- first entry per queue.
create index live_jobs_scheduled
on openqueue.live_jobs (queue_name, run_at)
where status in ('pending', 'failed') and not due;

-- oq_reap: the running jobs. On id, not lease_expires_at, so that heartbeats
-- stay HOT (see above).
create index live_jobs_in_flight
on openqueue.live_jobs (id)
where status = 'processing';

-- Whoever moves run_at (operators and tests, through openqueue.jobs or the
-- table) moves the job between the two indexes. Fires only for statements
-- that set run_at: never on lease, heartbeat or ack.
create function openqueue._live_jobs_run_at_moved()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    new.due := new.run_at <= now();
    return new;
end;
$$;

comment on function openqueue._live_jobs_run_at_moved() is
'Internal: BEFORE UPDATE OF run_at on live_jobs; a job is due exactly when its new run_at has come.';

create trigger live_jobs_run_at_moved
before update of run_at on openqueue.live_jobs
for each row
when (old.run_at is distinct from new.run_at)
execute function openqueue._live_jobs_run_at_moved();

-- Promote a queue's waiting jobs whose run_at has come into the lease index,
-- oldest run_at first, at most max_rows per statement (oq_lease calls it
-- until none is left, so that the lease order stays exact however many fell
-- due since the last lease). SKIP LOCKED: a row another leaser is promoting
-- is its business.
create function openqueue._promote_due(queue_name text, max_rows integer)
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count integer;
begin
    update openqueue.live_jobs as lj
    set due = true
    where lj.id = any(array(
        select s.id
        from openqueue.live_jobs as s
        where s.queue_name = _promote_due.queue_name
          and s.status in ('pending', 'failed')
          and not s.due
          and s.run_at <= now()
        order by s.run_at
        limit _promote_due.max_rows
        for update skip locked
    ));
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

comment on function openqueue._promote_due(text, integer) is
'Internal: move up to max_rows waiting jobs of queue_name whose run_at has come '
'into the lease index (live_jobs_lease_order); returns how many.';

-- ---------------------------------------------------------------------------
-- Counters of finished jobs, for oq_stats. Counting 10 million finished rows
-- takes seconds; summing a few counter rows takes microseconds. Maintained by
-- statement-level triggers with transition tables on finished_jobs, so that
-- every path that moves jobs in or out (ack, oq_ack_many, nack and reap to
-- dead, cancel, replay, purge, DELETE or UPDATE through openqueue.jobs, even
-- a hand-written INSERT) keeps them exact, with one upsert per statement and
-- (queue, status) rather than per row. One shard per backend (shard = its
-- pid): no two running sessions ever write the same counter row, so finishing
-- jobs never makes one transaction wait for another's commit, nor deadlock
-- with it (two transactions finishing jobs of queues a and b in opposite
-- orders would, on a shared row), exactly as in version 1. The rows of
-- backends that have exited are folded into shard 0 by
-- openqueue._fold_finished_counts (called by oq_reap and the purges), so the
-- table holds about (running sessions + 1) x queues x 3 rows.
-- ---------------------------------------------------------------------------

create table openqueue.finished_counts (
    queue_name text not null,
    status text not null,
    shard integer not null,
    jobs bigint not null,
    constraint finished_counts_pkey primary key (queue_name, status, shard)
) with (fillfactor = 50);

comment on table openqueue.finished_counts is
'Internal: finished jobs per queue and status, in shards to sum (shard: the '
'pid of the backend that wrote it; 0: folded rows of exited backends); kept '
'by triggers on finished_jobs. Read oq_stats() instead.';

create function openqueue._finished_counts_inserted()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    insert into openqueue.finished_counts as fc (queue_name, status, shard, jobs)
    select n.queue_name, n.status, pg_backend_pid(), count(*)
    from new_rows as n
    group by n.queue_name, n.status
    order by n.queue_name, n.status
    on conflict on constraint finished_counts_pkey do update
    set jobs = fc.jobs + excluded.jobs;
    return null;
end;
$$;

comment on function openqueue._finished_counts_inserted() is
'Internal: AFTER INSERT (per statement) on finished_jobs: count the new rows.';

create function openqueue._finished_counts_deleted()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    insert into openqueue.finished_counts as fc (queue_name, status, shard, jobs)
    select o.queue_name, o.status, pg_backend_pid(), -count(*)
    from old_rows as o
    group by o.queue_name, o.status
    order by o.queue_name, o.status
    on conflict on constraint finished_counts_pkey do update
    set jobs = fc.jobs + excluded.jobs;
    return null;
end;
$$;

comment on function openqueue._finished_counts_deleted() is
'Internal: AFTER DELETE (per statement) on finished_jobs: uncount the deleted rows.';

create function openqueue._finished_counts_updated()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    insert into openqueue.finished_counts as fc (queue_name, status, shard, jobs)
    select c.queue_name, c.status, pg_backend_pid(), sum(c.jobs)
    from (
        select n.queue_name, n.status, 1 as jobs from new_rows as n
        union all
        select o.queue_name, o.status, -1 as jobs from old_rows as o
    ) as c
    group by c.queue_name, c.status
    having sum(c.jobs) <> 0
    order by c.queue_name, c.status
    on conflict on constraint finished_counts_pkey do update
    set jobs = fc.jobs + excluded.jobs;
    return null;
end;
$$;

comment on function openqueue._finished_counts_updated() is
'Internal: AFTER UPDATE (per statement) on finished_jobs: move counts when a '
'row''s queue_name or status changed.';

create function openqueue._finished_counts_truncated()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    delete from openqueue.finished_counts;
    return null;
end;
$$;

comment on function openqueue._finished_counts_truncated() is
'Internal: AFTER TRUNCATE on finished_jobs: no finished jobs, no counts.';

-- CREATE TRIGGER locks finished_jobs against writes until the installer
-- commits, so the initial counts below cannot miss a concurrent ack.
create trigger finished_counts_inserted
after insert on openqueue.finished_jobs
referencing new table as new_rows
for each statement execute function openqueue._finished_counts_inserted();

create trigger finished_counts_deleted
after delete on openqueue.finished_jobs
referencing old table as old_rows
for each statement execute function openqueue._finished_counts_deleted();

create trigger finished_counts_updated
after update on openqueue.finished_jobs
referencing old table as old_rows new table as new_rows
for each statement execute function openqueue._finished_counts_updated();

create trigger finished_counts_truncated
after truncate on openqueue.finished_jobs
for each statement execute function openqueue._finished_counts_truncated();

insert into openqueue.finished_counts (queue_name, status, shard, jobs)
select
    fj.queue_name,
    fj.status,
    0 as shard,
    count(*) as jobs
from openqueue.finished_jobs as fj
group by fj.queue_name, fj.status;

-- Folds the counter rows of backends that have exited into shard 0. One
-- folder at a time (the others skip, they would only wait for it); rows a
-- running session writes are never touched, and rows locked by anyone (a
-- prepared transaction, a session whose pid was just reused) are skipped, so
-- this never waits on a counter row and never deadlocks with the triggers.
create function openqueue._fold_finished_counts()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if not pg_try_advisory_xact_lock(openqueue._fold_lock_key()) then
        return;
    end if;
    with gone as (
        delete from openqueue.finished_counts as fc
        where (fc.queue_name, fc.status, fc.shard) in (
            select c.queue_name, c.status, c.shard
            from openqueue.finished_counts as c
            where c.shard <> 0
              and not exists (select from pg_catalog.pg_stat_activity as a where a.pid = c.shard)
            for update skip locked
        )
        returning fc.queue_name, fc.status, fc.jobs
    )

    insert into openqueue.finished_counts as fc (queue_name, status, shard, jobs)
    select g.queue_name, g.status, 0, sum(g.jobs)
    from gone as g
    group by g.queue_name, g.status
    order by g.queue_name, g.status
    on conflict on constraint finished_counts_pkey do update
    set jobs = fc.jobs + excluded.jobs;

    delete from openqueue.finished_counts as fc
    where fc.shard = 0 and fc.jobs = 0;
end;
$$;

comment on function openqueue._fold_finished_counts() is
'Internal: fold the finished_counts rows of backends that have exited into '
'shard 0 (and drop zero rows there); skips when another session is folding.';

create function openqueue._fold_lock_key()
returns bigint
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select 478892509123815812::bigint  -- next to _waiters_lock_key(), fixed
$$;

comment on function openqueue._fold_lock_key() is
'Internal: the advisory lock key that lets one session at a time run _fold_finished_counts.';

-- ---------------------------------------------------------------------------
-- NOTIFY economy.
--
-- PostgreSQL folds identical notifications (same channel, same payload)
-- raised in one transaction into one, so a transaction that enqueues many
-- jobs into a queue sends one NOTIFY for that queue, whatever the number.
--
-- A queue may also opt in to notify only when a worker waits for it
-- (notify_mode 'when_waiting'; the default 'always' is the contract's
-- behaviour). A worker that found its queues empty registers in
-- queue_waiters with oq_wait() before it sleeps; a producer notifies only when
-- it finds an unexpired registration. No wake-up is lost, thanks to an
-- advisory lock (key openqueue._waiters_lock_key()):
--   * oq_wait takes it EXCLUSIVE, upserts the registration and commits;
--   * a producer on a 'when_waiting' queue takes it SHARED after inserting its
--     job, then, in a new statement (a fresh snapshot), looks for a
--     registration, and notifies (on commit) if there is one.
-- If the waiter got the lock first, the producer's shared lock waited for the
-- waiter's commit, so the producer's fresh snapshot sees the registration and
-- it notifies. If the producer got it first, the waiter's exclusive lock
-- waited for the producer's commit, so the job is committed before oq_wait
-- returns and the worker's next lease (which the protocol requires, after
-- oq_wait and before sleeping) sees it. A producer running at REPEATABLE
-- READ or SERIALIZABLE has no fresh snapshot, so it always notifies.
-- One key for all queues rather than one per queue: a waiter registers for
-- several queues and a producer may enqueue into several in one transaction;
-- with one exclusive lock per queue the two could wait for each other in
-- opposite orders (a deadlock that would abort the producer). With a single
-- key a producer only ever waits behind a waiter in the lock queue, which
-- PostgreSQL's deadlock detector resolves by reordering, never by aborting.
-- ---------------------------------------------------------------------------

alter table openqueue.queues add column notify_mode text not null default 'always';

alter table openqueue.queues add constraint notify_mode_known check (
    notify_mode in ('always', 'when_waiting')
);

comment on column openqueue.queues.notify_mode is
'always (default): every enqueue of a due job notifies. when_waiting: only '
'while a worker is registered by oq_wait(). Set with oq_set_queue_notify().';

create table openqueue.queue_waiters (
    queue_name text not null,
    worker_id text not null,
    wait_until timestamptz not null,
    constraint queue_waiters_pkey primary key (queue_name, worker_id)
);

comment on table openqueue.queue_waiters is
'Internal: workers waiting for jobs (oq_wait), until wait_until; read by '
'enqueues on when_waiting queues. Expired rows are removed by oq_wait and oq_reap.';

create function openqueue._waiters_lock_key()
returns bigint
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select 478892509123815811::bigint  -- hashtextextended('openqueue.waiters', 0), fixed
$$;

comment on function openqueue._waiters_lock_key() is
'Internal: the advisory lock key that orders oq_wait registrations against '
'enqueues on when_waiting queues.';

-- Called by the enqueue functions for a when_waiting queue, after the insert.
create function openqueue._waiter_present(queue_name text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if current_setting('transaction_isolation') <> 'read committed' then
        return true;  -- no fresh snapshot below: notify, as with 'always'
    end if;
    perform pg_advisory_xact_lock_shared(openqueue._waiters_lock_key());
    -- A new statement: its snapshot sees every registration committed
    -- before the lock above was granted.
    return exists (
        select
        from openqueue.queue_waiters as w
        where w.queue_name = _waiter_present.queue_name
          and w.wait_until > now()
    );
end;
$$;

comment on function openqueue._waiter_present(text) is
'Internal: for a when_waiting queue, after the job is inserted: is a worker '
'registered as waiting (see the protocol at openqueue.queue_waiters)?';

create function openqueue.oq_set_queue_notify(queue_name text, mode text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform openqueue._check_queue_name(oq_set_queue_notify.queue_name);
    if oq_set_queue_notify.mode is null then
        perform openqueue._raise_null('mode');
    elsif oq_set_queue_notify.mode not in ('always', 'when_waiting') then
        perform openqueue._raise_invalid(
            'mode', format('must be ''always'' or ''when_waiting'', got %L', oq_set_queue_notify.mode)
        );
    end if;
    insert into openqueue.queues as q (queue_name, notify_mode)
    values (oq_set_queue_notify.queue_name, oq_set_queue_notify.mode)
    on conflict on constraint queues_pkey do update
    set
        notify_mode = excluded.notify_mode,
        updated_at = now();
end;
$$;

comment on function openqueue.oq_set_queue_notify(text, text) is
'Set when enqueues into queue_name send NOTIFY openqueue: mode ''always'' '
'(the default: every enqueue of a due job, and openqueue_scheduled for a '
'future one) or ''when_waiting'' (only while a worker is registered by '
'oq_wait; saves the cost of notifications nobody waits for). Errors '
'22004/22023 for a bad queue_name or mode.';

create function openqueue.oq_wait(queue_names text[], worker_id text, seconds integer default 60)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_queue text;
begin
    if oq_wait.queue_names is null then
        perform openqueue._raise_null('queue_names');
    end if;
    foreach v_queue in array oq_wait.queue_names loop
        perform openqueue._check_queue_name(v_queue, 'queue_names');
    end loop;
    if oq_wait.worker_id is null then
        perform openqueue._raise_null('worker_id');
    elsif oq_wait.worker_id = '' then
        perform openqueue._raise_invalid('worker_id', 'must not be empty');
    end if;
    if oq_wait.seconds is null then
        perform openqueue._raise_null('seconds');
    end if;
    perform openqueue._check_range('seconds', oq_wait.seconds, 1, 86400);

    -- Waits for every producer of a when_waiting queue that is between its
    -- insert and its commit (see openqueue.queue_waiters).
    perform pg_advisory_xact_lock(openqueue._waiters_lock_key());

    delete from openqueue.queue_waiters as w where w.wait_until <= now();

    insert into openqueue.queue_waiters as w (queue_name, worker_id, wait_until)
    select distinct u.queue_name, oq_wait.worker_id, now() + make_interval(secs => oq_wait.seconds)
    from unnest(oq_wait.queue_names) as u (queue_name)
    order by u.queue_name
    on conflict on constraint queue_waiters_pkey do update
    set wait_until = excluded.wait_until;
end;
$$;

comment on function openqueue.oq_wait(text[], text, integer) is
'Register worker_id as waiting for jobs of queue_names for the next seconds '
'(default 60, 1 to 86400), so that enqueues into when_waiting queues notify '
'it. Protocol, for a worker that found its queues empty: LISTEN openqueue; '
'call oq_wait in its own transaction (autocommit); lease once more; only if '
'that finds nothing, sleep until a notification or the timeout. No wake-up '
'is lost: oq_wait waits for producers that are between their insert and '
'their commit. Errors 22004/22023 for bad queue_names, worker_id or seconds.';

-- ---------------------------------------------------------------------------
-- _queue_settings in PL/pgSQL: a SQL-language function with a SET clause is
-- never inlined and re-plans its query on every call (about 80 us, more than
-- the rest of a lease); PL/pgSQL keeps the plan for the session. Same
-- result, same built-in defaults.
-- ---------------------------------------------------------------------------

create or replace function openqueue._queue_settings(
    queue_name text,
    out max_attempts integer,
    out lease_seconds integer,
    out backoff_base interval,
    out backoff_max interval
)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    select
        coalesce(q.max_attempts, 5),
        coalesce(q.lease_seconds, 30),
        coalesce(q.backoff_base, interval '1 second'),
        coalesce(q.backoff_max, interval '1 hour')
    into
        _queue_settings.max_attempts,
        _queue_settings.lease_seconds,
        _queue_settings.backoff_base,
        _queue_settings.backoff_max
    from (select 1) as one
    left join openqueue.queues as q on q.queue_name = _queue_settings.queue_name;
end;
$$;

-- ---------------------------------------------------------------------------
-- Functions that place waiting jobs: the same behaviour as version 1, plus
-- the due flag.
-- ---------------------------------------------------------------------------

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
begin
    perform openqueue._check_queue_name(oq_enqueue.queue_name);
    if oq_enqueue.payload is null then
        perform openqueue._raise_null('payload');
    end if;
    perform openqueue._check_range('max_attempts', oq_enqueue.max_attempts, 1, 2147483647);

    -- One lookup for both settings this needs. The built-in default of
    -- max_attempts (5) is openqueue._queue_settings's.
    select coalesce(oq_enqueue.max_attempts, q.max_attempts, 5), coalesce(q.notify_mode, 'always')
    into v_max_attempts, v_notify_mode
    from (select 1) as one
    left join openqueue.queues as q on q.queue_name = oq_enqueue.queue_name;

    v_id := nextval('openqueue.job_id_seq');

    if oq_enqueue.idempotency_key is not null then
        -- The primary key makes concurrent enqueues with one key race-free:
        -- the loser waits for the winner's commit, then sees its row.
        insert into openqueue.idempotency_keys as ik (queue_name, idempotency_key, job_id)
        values (oq_enqueue.queue_name, oq_enqueue.idempotency_key, v_id)
        on conflict on constraint idempotency_keys_pkey do nothing;
        if not found then
            select ik.job_id into v_existing
            from openqueue.idempotency_keys as ik
            where ik.queue_name = oq_enqueue.queue_name
              and ik.idempotency_key = oq_enqueue.idempotency_key;
            return v_existing;
        end if;
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
begin
    perform openqueue._check_queue_name(oq_enqueue_batch.queue_name);
    if oq_enqueue_batch.payloads is null then
        perform openqueue._raise_null('payloads');
    elsif jsonb_typeof(oq_enqueue_batch.payloads) <> 'array' then
        perform openqueue._raise_invalid(
            'payloads',
            format('must be a JSON array, got a JSON %s', jsonb_typeof(oq_enqueue_batch.payloads))
        );
    end if;
    perform openqueue._check_range('max_attempts', oq_enqueue_batch.max_attempts, 1, 2147483647);

    -- One lookup for both settings this needs (default max_attempts: see
    -- openqueue._queue_settings).
    select coalesce(oq_enqueue_batch.max_attempts, q.max_attempts, 5), coalesce(q.notify_mode, 'always')
    into v_max_attempts, v_notify_mode
    from (select 1) as one
    left join openqueue.queues as q on q.queue_name = oq_enqueue_batch.queue_name;

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

    if oq_lease.lease_seconds is null then
        v_lease := make_interval(secs => (openqueue._queue_settings(oq_lease.queue_name)).lease_seconds);
    else
        v_lease := make_interval(secs => oq_lease.lease_seconds);
    end if;

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
end;
$$;

create or replace function openqueue.oq_nack(
    job_id bigint,
    lease_token uuid,
    error text default null,
    retry_in interval default null,  -- null: exponential backoff
    retry boolean default true
)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_job openqueue.live_jobs%rowtype;
    v_settings record;
    v_errors jsonb;
    v_run_at timestamptz;
begin
    if oq_nack.job_id is null then
        perform openqueue._raise_null('job_id');
    end if;
    if oq_nack.lease_token is null then
        perform openqueue._raise_null('lease_token');
    end if;
    if oq_nack.retry_in < interval '0' then
        perform openqueue._raise_invalid('retry_in', 'must not be negative');
    end if;

    select lj.* into v_job
    from openqueue.live_jobs as lj
    where lj.id = oq_nack.job_id
      and lj.status = 'processing'
      and lj.lease_token = oq_nack.lease_token
    for update;
    if not found then
        return null;
    end if;

    v_errors := v_job.errors || openqueue._error_entry(v_job.attempts, oq_nack.error);

    if coalesce(oq_nack.retry, true) and v_job.attempts < v_job.max_attempts then
        if oq_nack.retry_in is null then
            v_settings := openqueue._queue_settings(v_job.queue_name);
            v_run_at := now() + openqueue._backoff(
                v_job.attempts, v_settings.backoff_base, v_settings.backoff_max
            );
        else
            v_run_at := now() + oq_nack.retry_in;
        end if;
        -- Backing off: out of the lease index until run_at comes.
        update openqueue.live_jobs as lj
        set
            status = 'failed',
            run_at = v_run_at,
            due = v_run_at <= now(),
            lease_token = null,
            lease_expires_at = null,
            errors = v_errors
        where lj.id = v_job.id;
        perform pg_notify('openqueue_scheduled', v_job.queue_name);
        return 'failed';
    end if;

    delete from openqueue.live_jobs as lj where lj.id = v_job.id;
    insert into openqueue.finished_jobs (
        id, queue_name, status, priority, run_at, attempts, max_attempts,
        leased_by, payload, errors, idempotency_key, created_at, finished_at
    )
    values (
        v_job.id, v_job.queue_name, 'dead', v_job.priority, v_job.run_at, v_job.attempts,
        v_job.max_attempts, v_job.leased_by, v_job.payload, v_errors, v_job.idempotency_key,
        v_job.created_at, now()
    );
    return 'dead';
end;
$$;

create or replace function openqueue.oq_reap()
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_dead integer;
    v_queues text[];
begin
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

create or replace function openqueue.oq_replay(job_id bigint)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_queue text;
begin
    if oq_replay.job_id is null then
        perform openqueue._raise_null('job_id');
    end if;

    with revived as (
        delete from openqueue.finished_jobs as fj
        where fj.id = oq_replay.job_id
          and fj.status in ('dead', 'cancelled')
        returning fj.*
    )

    insert into openqueue.live_jobs (
        id, queue_name, status, priority, run_at, attempts, max_attempts,
        payload, errors, idempotency_key, created_at, due
    )
    select
        r.id, r.queue_name, 'pending', r.priority, now(), 0, r.max_attempts,
        r.payload, r.errors, r.idempotency_key, r.created_at, true
    from revived as r
    returning queue_name into v_queue;

    if v_queue is null then
        return false;
    end if;
    perform pg_notify('openqueue', v_queue);
    return true;
end;
$$;

create or replace function openqueue.oq_next_run_at(queue_names text[])
returns timestamptz
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_next timestamptz;
begin
    if oq_next_run_at.queue_names is null then
        perform openqueue._raise_null('queue_names');
    end if;
    -- Jobs waiting for a future run_at are exactly the not-yet-due ones, in
    -- live_jobs_scheduled by (queue_name, run_at): one index descent per
    -- queue, whatever the number of scheduled jobs or priorities.
    select min(n.run_at) into v_next
    from unnest(oq_next_run_at.queue_names) as q (queue_name)
    cross join lateral (
        select lj.run_at
        from openqueue.live_jobs as lj
        where lj.queue_name = q.queue_name
          and lj.status in ('pending', 'failed')
          and not lj.due
          and lj.run_at > now()
        order by lj.run_at
        limit 1
    ) as n;
    return v_next;
end;
$$;

-- What changed for callers of the functions replaced above.

comment on function openqueue.oq_enqueue(text, jsonb, integer, timestamptz, integer, text) is
'Add one job to queue_name and return its id. priority (default 0): higher '
'leases first. run_at (default now()): not leased before then. max_attempts '
'(NULL: the queue''s setting, 5 unless configured). idempotency_key: if the '
'queue already stores a job with this key, its id is returned and nothing is '
'inserted. Sends NOTIFY openqueue, queue_name when the job is due now, or '
'NOTIFY openqueue_scheduled, queue_name when it is due later (on commit; one '
'per queue and transaction); for a queue set to when_waiting by '
'oq_set_queue_notify, only while a worker waits (oq_wait). Errors 22004/22023 '
'for a NULL or bad queue_name, NULL payload, max_attempts < 1.';

comment on function openqueue.oq_enqueue_batch(text, jsonb, integer, timestamptz, integer) is
'Add one job per element of the JSON array payloads to queue_name; returns '
'the ids in array order. Other arguments as for oq_enqueue. One NOTIFY per '
'call (for a when_waiting queue, only while a worker waits); an empty array '
'writes nothing. Errors 22004/22023 for a bad queue_name, payloads NULL or '
'not an array, max_attempts < 1.';

comment on function openqueue.oq_reap() is
'Reclaim every processing job whose lease has expired: it becomes pending '
'again (error ''lease expired'' recorded), or dead if its attempts are used '
'up. Returns how many jobs were reclaimed; notifies the refilled queues. '
'Also drops expired oq_wait registrations and folds the finished-job counters '
'of exited sessions. Safe to run concurrently and often.';

-- ---------------------------------------------------------------------------
-- oq_stats reads the counters for the finished states; the live states are
-- counted from live_jobs, which holds only waiting and running jobs.
-- ---------------------------------------------------------------------------

create or replace function openqueue.oq_stats()
returns table (
    queue_name text,
    pending bigint,
    processing bigint,
    failed bigint,
    completed bigint,
    dead bigint,
    cancelled bigint,
    oldest_due_at timestamptz
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
        l.oldest_due_at
    from names as n
    left join live as l on n.queue_name = l.queue_name
    left join finished as f on n.queue_name = f.queue_name
    order by n.queue_name
$$;

-- ---------------------------------------------------------------------------
-- Purge in bounded batches. Each batch deletes the oldest matching rows
-- through finished_jobs_finished_at, so it touches max_rows rows and their
-- index entries, not the table; oq_purge_batch lets a client or the CLI call
-- it repeatedly, each call its own short transaction, and oq_purge keeps its
-- contract (all matching rows, one call) as a loop of such batches.
-- ---------------------------------------------------------------------------

create function openqueue._purge_chunk(older_than interval, include_dead boolean, max_rows integer)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count bigint;
begin
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

comment on function openqueue._purge_chunk(interval, boolean, integer) is
'Internal: delete at most max_rows of the oldest purgeable finished jobs; frees their idempotency keys.';

create or replace function openqueue.oq_purge(older_than interval, include_dead boolean default false)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_total bigint := 0;
    v_count bigint;
begin
    if oq_purge.older_than is null then
        perform openqueue._raise_null('older_than');
    elsif oq_purge.older_than < interval '0' then
        perform openqueue._raise_invalid('older_than', 'must not be negative');
    end if;

    loop
        v_count := openqueue._purge_chunk(oq_purge.older_than, oq_purge.include_dead, 10000);
        v_total := v_total + v_count;
        exit when v_count = 0;
    end loop;
    perform openqueue._fold_finished_counts();
    return v_total;
end;
$$;

comment on function openqueue.oq_purge(interval, boolean) is
'Delete completed and cancelled jobs (and dead ones with include_dead) that '
'finished before now() - older_than; frees their idempotency keys. Returns '
'the number of jobs deleted. Works in batches of 10000 through the finished_at '
'index, in the caller''s transaction; to keep transactions short on a large '
'table, call oq_purge_batch repeatedly instead. Errors 22004/22023 for a NULL '
'or negative older_than.';

create function openqueue.oq_purge_batch(
    older_than interval,
    include_dead boolean default false,
    max_rows integer default 10000
)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if oq_purge_batch.older_than is null then
        perform openqueue._raise_null('older_than');
    elsif oq_purge_batch.older_than < interval '0' then
        perform openqueue._raise_invalid('older_than', 'must not be negative');
    end if;
    if oq_purge_batch.max_rows is null then
        perform openqueue._raise_null('max_rows');
    end if;
    perform openqueue._check_range('max_rows', oq_purge_batch.max_rows, 1, 1000000);

    perform openqueue._fold_finished_counts();
    return openqueue._purge_chunk(
        oq_purge_batch.older_than, oq_purge_batch.include_dead, oq_purge_batch.max_rows
    );
end;
$$;

comment on function openqueue.oq_purge_batch(interval, boolean, integer) is
'Like oq_purge, but deletes at most max_rows (default 10000, at most 1000000) '
'of the oldest matching jobs and returns how many it deleted: call it until it '
'returns less than max_rows (0 when nothing is left), each call in its own '
'transaction, to purge a large table without long locks. Rows another session '
'has locked are skipped. Errors 22004/22023 for a NULL or negative '
'older_than, max_rows NULL or out of range.';

revoke all on function openqueue.oq_purge_batch(interval, boolean, integer) from public;
revoke all on function openqueue.oq_set_queue_notify(text, text) from public;
revoke all on function openqueue.oq_wait(text[], text, integer) from public;
revoke all on function openqueue._waiter_present(text) from public;
revoke all on function openqueue._waiters_lock_key() from public;
revoke all on function openqueue._purge_chunk(interval, boolean, integer) from public;
revoke all on function openqueue._promote_due(text, integer) from public;
revoke all on function openqueue._live_jobs_run_at_moved() from public;
revoke all on function openqueue._finished_counts_inserted() from public;
revoke all on function openqueue._finished_counts_deleted() from public;
revoke all on function openqueue._finished_counts_updated() from public;
revoke all on function openqueue._finished_counts_truncated() from public;
revoke all on function openqueue._fold_finished_counts() from public;
revoke all on function openqueue._fold_lock_key() from public;

-- ---------------------------------------------------------------------------
-- oq_health: what an operator of a busy queue needs to see at a glance.
-- ---------------------------------------------------------------------------

create function openqueue.oq_health()
returns table (
    check_name text,
    subject text,
    value bigint,
    observed_at timestamptz,
    detail text
)
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    -- The hot tables: live and dead row versions and the last vacuum.
    select
        c.check_name,
        s.relname::text,
        case c.check_name
            when 'live_tuples' then s.n_live_tup
            when 'dead_tuples' then s.n_dead_tup
        end,
        case c.check_name
            when 'last_vacuum' then greatest(s.last_vacuum, s.last_autovacuum)
        end,
        case c.check_name
            when 'dead_tuples' then format(
                '%s%% of %s rows', round(100.0 * s.n_dead_tup / greatest(s.n_live_tup + s.n_dead_tup, 1), 1),
                s.n_live_tup + s.n_dead_tup
            )
            when 'last_vacuum' then format(
                'vacuum %s, autovacuum %s, %s autovacuums',
                coalesce(s.last_vacuum::text, 'never'), coalesce(s.last_autovacuum::text, 'never'),
                s.autovacuum_count
            )
        end
    from pg_stat_user_tables as s
    cross join (values (1, 'live_tuples'), (2, 'dead_tuples'), (3, 'last_vacuum')) as c (n, check_name)
    where s.schemaname = 'openqueue' and s.relname in ('live_jobs', 'finished_jobs')

    union all

    -- The oldest snapshot holding back vacuum of this database's tables,
    -- whichever kind holds it: a session of this database (an open
    -- transaction), a prepared transaction or a replication slot. Sessions
    -- of other databases do not hold back vacuum here. value is its age in
    -- transactions.
    (
        select
            'oldest_xmin',
            h.holder,
            age(h.xmin)::bigint,
            h.since,
            h.detail
        from (
            select
                format('backend %s', a.pid) as holder,
                a.backend_xmin as xmin,
                a.xact_start as since,
                format(
                    'user %s, application %L, state %s', a.usename, a.application_name, a.state
                ) as detail
            from pg_stat_activity as a
            where a.backend_xmin is not null
              and a.pid <> pg_backend_pid()
              and a.datname = current_database()
            union all
            select
                format('prepared transaction %L', p.gid),
                p.transaction,
                p.prepared,
                format('owner %s, database %s', p.owner, p.database)
            from pg_prepared_xacts as p
            where p.database = current_database()
            union all
            select
                format('replication slot %L', r.slot_name),
                coalesce(r.xmin, r.catalog_xmin),
                null,
                format('%s slot, active %s', r.slot_type, r.active)
            from pg_replication_slots as r
            where coalesce(r.xmin, r.catalog_xmin) is not null
              and (r.database is null or r.database = current_database())
        ) as h
        order by age(h.xmin) desc
        limit 1
    )

    union all

    -- Per queue, the due job that has waited longest; value in seconds.
    select
        'oldest_due_job',
        d.queue_name,
        floor(extract(epoch from now() - d.run_at))::bigint,
        d.run_at,
        format('job %s', d.id)
    from (
        select distinct on (lj.queue_name) lj.queue_name, lj.run_at, lj.id
        from openqueue.live_jobs as lj
        where lj.status in ('pending', 'failed') and lj.run_at <= now()
        order by lj.queue_name, lj.run_at, lj.id
    ) as d
$$;

comment on function openqueue.oq_health() is
'Health checks, one row each: (check_name, subject, value, observed_at, detail). '
'live_tuples / dead_tuples / last_vacuum for the tables live_jobs and '
'finished_jobs (value: row versions; observed_at: the last manual or auto '
'vacuum, NULL if never). oldest_xmin: the session, prepared transaction or '
'replication slot of this database with the oldest snapshot, which holds back '
'vacuum of the tables (value: its age in transactions; observed_at: when its transaction '
'started; no row when none; other users'' sessions need pg_read_all_stats). '
'oldest_due_job, one row per queue with due jobs: subject the queue, value '
'seconds since the oldest due job''s run_at, observed_at that run_at.';

revoke all on function openqueue.oq_health() from public;

-- ---------------------------------------------------------------------------
-- Vacuum for churn. Every job leaves dead row versions in live_jobs (lease,
-- ack) and, once purged, in finished_jobs. Autovacuum already visits
-- live_jobs after 1 % of its rows changed (version 1), but its default cost
-- delay throttles each run, so at a few thousand jobs a second a run could
-- take longer than the churn it was cleaning up and the heap and the lease
-- index kept growing (bench.soak showed it). Unthrottled, a run over these
-- tables takes milliseconds to a few seconds and the freed space is reused,
-- so their size levels off at about one autovacuum interval's worth of churn.
-- finished_jobs is visited after 5 % of its rows were purged (default 20 %),
-- so that retention reuses space instead of extending the table.
-- ---------------------------------------------------------------------------

alter table openqueue.live_jobs set (autovacuum_vacuum_cost_delay = 0);

alter table openqueue.finished_jobs set (
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_vacuum_scale_factor = 0.05
);
$oq_0002$;
        insert into openqueue.schema_migrations (version, name)
        values (2, '0002_churn_and_batching');
        raise notice 'openqueue: applied migration 0002_churn_and_batching';
    end if;
    if v_current < 3 then
        execute $oq_0003$
-- OpenQueue schema version 3: roles and security (CONTRACT section 6), and a
-- per-queue maximum payload size.
--
-- * openqueue._apply_security() creates the roles openqueue_producer,
--   openqueue_worker and openqueue_admin where the installing role may
--   (superuser or CREATEROLE), makes every oq_* function SECURITY DEFINER,
--   strips every privilege but the owner's from tables, sequences and
--   internal helpers, and grants each role its list. The installer
--   (sql/openqueue.sql) calls it after the last migration on EVERY run, so
--   grants stay right after any later migration and after roles are created
--   by hand; it is idempotent (a second run leaves identical ACLs).
-- * openqueue.jobs hides lease_token: openqueue_admin may SELECT every
--   column but that one.
-- * UPDATE through openqueue.jobs may change only run_at, priority,
--   attempts, lease_expires_at and finished_at (22023 for anything else).
-- * queue_limits.max_payload_bytes (default 1 MiB) bounds the size of a payload,
--   checked by oq_enqueue and by oq_enqueue_batch for every element.
-- * oq_settled(job_id, worker_id, attempt): what became of a job after an
--   ack or nack whose reply was lost (granted to openqueue_worker).

-- ---------------------------------------------------------------------------
-- Per-queue maximum payload size.
-- ---------------------------------------------------------------------------

-- Apart from openqueue.queues, so that the rows of that table keep their
-- shape across the upgrade; a queue with a limit also has a queues row, so
-- oq_stats lists it like any configured queue.
create table openqueue.queue_limits (
    queue_name text primary key,
    max_payload_bytes integer not null,
    updated_at timestamptz not null default now(),
    constraint max_payload_bytes_in_range check (max_payload_bytes between 1 and 1073741823)
);

comment on table openqueue.queue_limits is
'Per-queue limits set by oq_set_queue_max_payload; no row means the built-in default (1 MiB).';

-- The built-in default lives here and nowhere else.
create function openqueue._max_payload_bytes(queue_name text)
returns integer
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(
        (
            select ql.max_payload_bytes
            from openqueue.queue_limits as ql
            where ql.queue_name = _max_payload_bytes.queue_name
        ),
        1048576
    )
$$;

comment on function openqueue._max_payload_bytes(text) is
'Internal: the largest payload (bytes of its JSON text) queue_name accepts; '
'1048576 (1 MiB) unless set by oq_set_queue_max_payload.';

create function openqueue.oq_set_queue_max_payload(
    queue_name text,
    max_bytes integer default null  -- null: the built-in default
)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform openqueue._check_queue_name(oq_set_queue_max_payload.queue_name);
    perform openqueue._check_range('max_bytes', oq_set_queue_max_payload.max_bytes, 1, 1073741823);

    insert into openqueue.queues as q (queue_name)
    values (oq_set_queue_max_payload.queue_name)
    on conflict on constraint queues_pkey do update
    set updated_at = now();

    if oq_set_queue_max_payload.max_bytes is null then
        delete from openqueue.queue_limits as ql
        where ql.queue_name = oq_set_queue_max_payload.queue_name;
    else
        insert into openqueue.queue_limits as ql (queue_name, max_payload_bytes)
        values (oq_set_queue_max_payload.queue_name, oq_set_queue_max_payload.max_bytes)
        on conflict on constraint queue_limits_pkey do update
        set
            max_payload_bytes = excluded.max_payload_bytes,
            updated_at = now();
    end if;
end;
$$;

comment on function openqueue.oq_set_queue_max_payload(text, integer) is
'Set the largest payload queue_name accepts, in bytes of the payload''s JSON '
'text (1 to 1073741823); NULL restores the built-in default of 1048576 (1 MiB). '
'oq_enqueue and oq_enqueue_batch refuse a larger payload with 22023. Errors '
'22004/22023 for a bad queue_name or max_bytes out of range.';

-- ---------------------------------------------------------------------------
-- oq_enqueue / oq_enqueue_batch: the payload size check. Also: a key freed
-- by a concurrent oq_purge between the insert and the lookup is retried
-- instead of returning NULL.
-- ---------------------------------------------------------------------------

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
    perform openqueue._check_queue_name(oq_enqueue.queue_name);
    if oq_enqueue.payload is null then
        perform openqueue._raise_null('payload');
    end if;
    perform openqueue._check_range('max_attempts', oq_enqueue.max_attempts, 1, 2147483647);
    -- A key is an index entry: bounded, so that no key can exceed the index's row size.
    if length(oq_enqueue.idempotency_key) > 255 then
        perform openqueue._raise_invalid('idempotency_key', 'must be at most 255 characters long');
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

comment on function openqueue.oq_enqueue(text, jsonb, integer, timestamptz, integer, text) is
'Add one job to queue_name and return its id. priority (default 0): higher '
'leases first. run_at (default now()): not leased before then. max_attempts '
'(NULL: the queue''s setting, 5 unless configured). idempotency_key: if the '
'queue already stores a job with this key, its id is returned and nothing is '
'inserted. Sends NOTIFY openqueue, queue_name when the job is due now, or '
'NOTIFY openqueue_scheduled, queue_name when it is due later (on commit). '
'Errors 22004/22023 for a NULL or bad queue_name, NULL payload, a payload '
'larger than the queue''s maximum (1 MiB unless set by '
'oq_set_queue_max_payload), max_attempts < 1, an idempotency_key longer '
'than 255 characters.';

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
begin
    perform openqueue._check_queue_name(oq_enqueue_batch.queue_name);
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
'larger than the queue''s maximum payload size, max_attempts < 1.';

-- ---------------------------------------------------------------------------
-- oq_wait (version 2) stores worker_id in the primary key of queue_waiters:
-- a very long worker_id exceeded the index row size (SQLSTATE 54000, found
-- by tests/sql/test_fuzz.py). Bounded here by a trigger rather than by a copy
-- of oq_wait, so that the function stays version 2's.
-- ---------------------------------------------------------------------------

create function openqueue._queue_waiters_check()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if length(new.worker_id) > 255 then
        perform openqueue._raise_invalid('worker_id', 'must be at most 255 characters long');
    end if;
    return new;
end;
$$;

comment on function openqueue._queue_waiters_check() is
'Internal: BEFORE INSERT OR UPDATE on queue_waiters; 22023 for a worker_id '
'longer than 255 characters (it is an index key).';

create trigger queue_waiters_check
before insert or update on openqueue.queue_waiters
for each row execute function openqueue._queue_waiters_check();

-- ---------------------------------------------------------------------------
-- The schema version, for clients and workers that may not read
-- openqueue.schema_migrations (nobody but the owner may).
-- ---------------------------------------------------------------------------

create function openqueue.oq_schema_version()
returns integer
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(max(sm.version), 0) from openqueue.schema_migrations as sm
$$;

comment on function openqueue.oq_schema_version() is
'The installed OpenQueue schema version (the highest applied migration). '
'Granted to openqueue_worker and openqueue_admin, so that a worker can check '
'the schema at startup without reading the internal tables.';

-- ---------------------------------------------------------------------------
-- What became of a job after a settle call whose reply was lost: an ack or
-- nack retried after a dropped connection answers "not held" when the first
-- call committed. The worker asks this to log what really happened.
-- ---------------------------------------------------------------------------

create function openqueue.oq_settled(job_id bigint, worker_id text, attempt integer)
returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_status text;
begin
    if oq_settled.job_id is null then
        perform openqueue._raise_null('job_id');
    end if;
    if oq_settled.worker_id is null then
        perform openqueue._raise_null('worker_id');
    end if;
    if oq_settled.attempt is null then
        perform openqueue._raise_null('attempt');
    end if;

    select lj.status into v_status
    from openqueue.live_jobs as lj
    where lj.id = oq_settled.job_id
      and lj.leased_by = oq_settled.worker_id
      and lj.attempts = oq_settled.attempt;
    if not found then
        select fj.status into v_status
        from openqueue.finished_jobs as fj
        where fj.id = oq_settled.job_id
          and fj.leased_by = oq_settled.worker_id
          and fj.attempts = oq_settled.attempt;
    end if;
    return v_status;
end;
$$;

comment on function openqueue.oq_settled(bigint, text, integer) is
'The current status of job_id (completed, failed, dead, cancelled, pending, '
'processing) if nobody has leased it since attempt number attempt of '
'worker_id (its leased_by and attempts are still those), else NULL (also for '
'an unknown job). For a worker whose ack or nack lost its reply: a retried '
'oq_ack answers false once the first one committed, and this tells the two '
'apart. Reads only. Errors 22004 for a NULL argument.';

-- ---------------------------------------------------------------------------
-- UPDATE through openqueue.jobs: only the time and priority columns.
-- ---------------------------------------------------------------------------

create or replace function openqueue._jobs_view_update()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_old jsonb := to_jsonb(old);
    v_column text;
begin
    -- Compared as JSON, so that a column added to the view later is covered.
    select k.key into v_column
    from jsonb_each(to_jsonb(new)) as k
    where k.key not in ('run_at', 'priority', 'attempts', 'lease_expires_at', 'finished_at')
      and k.value is distinct from v_old -> k.key
    order by k.key
    limit 1;
    if found then
        raise exception using
            errcode = 'invalid_parameter_value',
            message = format('openqueue.jobs: column %s cannot be changed by UPDATE', v_column),
            hint = 'only run_at, priority, attempts, lease_expires_at and finished_at may be '
            'updated; state changes go through the oq_* functions';
    end if;

    if new.run_at is null then
        perform openqueue._raise_null('run_at');
    elsif new.priority is null then
        perform openqueue._raise_null('priority');
    elsif new.attempts is null then
        perform openqueue._raise_null('attempts');
    elsif new.attempts < 0 then
        perform openqueue._raise_invalid('attempts', 'must not be negative');
    end if;

    -- lease_expires_at exists for live jobs only and finished_at for finished
    -- ones; a value set on the other kind is ignored, as before version 3.
    if old.finished_at is null then
        if old.status = 'processing' and new.lease_expires_at is null then
            perform openqueue._raise_null('lease_expires_at');
        end if;
        update openqueue.live_jobs as lj
        set
            priority = new.priority,
            run_at = new.run_at,
            attempts = new.attempts,
            lease_expires_at = new.lease_expires_at
        where lj.id = old.id;
    else
        if new.finished_at is null then
            perform openqueue._raise_null('finished_at');
        end if;
        update openqueue.finished_jobs as fj
        set
            priority = new.priority,
            run_at = new.run_at,
            attempts = new.attempts,
            finished_at = new.finished_at
        where fj.id = old.id;
    end if;
    return new;
end;
$$;

comment on function openqueue._jobs_view_update() is
'Internal: INSTEAD OF UPDATE on openqueue.jobs, routed to the table holding '
'the job. Only run_at, priority, attempts, lease_expires_at (kept by live '
'jobs only) and finished_at (kept by finished jobs only) may change; any '
'other column raises 22023 naming it, and nothing changes.';

-- INSERT through openqueue.jobs is refused for everyone. With this trigger
-- the view counts as insertable, so that a caller without the privilege gets
-- 42501 like for any other statement, not "cannot insert into view".
create function openqueue._jobs_view_insert()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception using
        errcode = 'feature_not_supported',
        message = 'openqueue.jobs: INSERT is not supported',
        hint = 'add jobs with oq_enqueue or oq_enqueue_batch';
end;
$$;

comment on function openqueue._jobs_view_insert() is
'Internal: INSTEAD OF INSERT on openqueue.jobs; always refuses (use oq_enqueue).';

create trigger jobs_view_insert
instead of insert on openqueue.jobs
for each row execute function openqueue._jobs_view_insert();

-- ---------------------------------------------------------------------------
-- Roles and privileges.
-- ---------------------------------------------------------------------------

create function openqueue._apply_security()
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
        -- what the worker runtime (openqueue_py/worker.py) also calls:
        'oq_next_run_at', 'oq_wait', 'oq_schema_version', 'oq_settled'
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
$oq_0003$;
        insert into openqueue.schema_migrations (version, name)
        values (3, '0003_roles_and_security');
        raise notice 'openqueue: applied migration 0003_roles_and_security';
    end if;
    if v_current < 4 then
        execute $oq_0004$
-- OpenQueue schema version 4: recurring schedules and flow control
-- (CONTRACT sections 7 and 8).
--
-- (helpers: the header lists what this migration adds, one bullet each)
--
-- * Section 7: openqueue.cron_schedules (internal; the cron expression stored
--   parsed, an index on next_run_at) and the view openqueue.schedules.
-- * Section 7: oq_cron_next(cron, after, timezone): cron parsed and walked in
--   PL/pgSQL (months, then days, hours, minutes), DST rules of the contract.
-- * Section 7: oq_schedule, oq_unschedule, and oq_tick(as_of): one job per
--   due schedule for its latest slot, exactly once under concurrent tickers.
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

-- One row per recurring schedule. Internal (owner only): readers use the
-- view openqueue.schedules. The cron expression is parsed once, when the
-- schedule is written, into the cron_* arrays that openqueue._cron_next
-- walks, so oq_tick never parses text.
create table openqueue.cron_schedules (
    schedule_name text primary key,
    cron text not null,
    queue_name text not null,
    payload jsonb not null default '{}',
    priority integer not null default 0,
    max_attempts integer,
    timezone text not null default 'UTC',
    next_run_at timestamptz not null,
    last_run_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    cron_minutes integer[] not null,
    cron_hours integer[] not null,
    cron_days integer[],
    cron_months integer[] not null,
    cron_weekdays integer[],
    constraint max_attempts_positive check (max_attempts >= 1),
    constraint next_run_after_last_run check (next_run_at > last_run_at)
);

comment on table openqueue.cron_schedules is
'Recurring schedules written by oq_schedule and fired by oq_tick; read them '
'through the view openqueue.schedules. cron_days is NULL when the day-of-month '
'field is *, cron_weekdays NULL when the day-of-week field is *.';

-- oq_tick reads only due schedules: next_run_at <= as_of, through this
-- index, so a thousand schedules cost one index probe between slots.
create index cron_schedules_next_run_at on openqueue.cron_schedules (next_run_at);

create view openqueue.schedules as
select
    cs.schedule_name,
    cs.cron,
    cs.queue_name,
    cs.payload,
    cs.priority,
    cs.max_attempts,
    cs.timezone,
    cs.next_run_at,
    cs.last_run_at,
    cs.created_at
from openqueue.cron_schedules as cs;

comment on view openqueue.schedules is
'One row per recurring schedule (oq_schedule): its definition, next_run_at '
'(the next slot oq_tick fires), last_run_at (the slot of the last job it '
'enqueued, NULL before the first) and created_at. Readable by openqueue_admin.';

-- A timezone is accepted when PostgreSQL knows it as a zone name. A name
-- with a slash (Area/Location, the common case) cannot be an abbreviation
-- or a POSIX rule string, so PostgreSQL accepting it is proof enough and
-- costs microseconds. A name without one (UTC, Japan, EST5EDT) must be in
-- pg_timezone_names: AT TIME ZONE alone would also take POSIX strings such
-- as 'XYZ5' or '+3', which are no IANA names. That lookup reads the zone
-- directory (about 0.1 s), so UTC and GMT, the usual ones, skip it.
create function openqueue._check_timezone(timezone text)
returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_known boolean;
begin
    if _check_timezone.timezone is null then
        perform openqueue._raise_null('timezone');
    end if;
    if _check_timezone.timezone in ('UTC', 'GMT') then
        return;
    end if;
    if _check_timezone.timezone !~ '^[A-Za-z][A-Za-z0-9_+/-]*$' or _check_timezone.timezone ~ '//|/$' then
        v_known := false;
    else
        begin
            perform now() at time zone _check_timezone.timezone;
            v_known := true;
        exception when invalid_parameter_value then
            v_known := false;
        end;
        if v_known and position('/' in _check_timezone.timezone) = 0 then
            v_known := exists (
                select from pg_catalog.pg_timezone_names as tz
                where lower(tz.name) = lower(_check_timezone.timezone)
            );
        end if;
    end if;
    if not v_known then
        perform openqueue._raise_invalid(
            'timezone',
            format(
                '%L is not a known IANA time zone name (see pg_timezone_names)',
                left(_check_timezone.timezone, 100)
            )
        );
    end if;
end;
$$;

comment on function openqueue._check_timezone(text) is
'Internal: 22004 for a NULL timezone, 22023 naming the argument for a name '
'that is not a time zone of pg_timezone_names (POSIX rule strings such as '
'''XYZ5'' and bare offsets are refused).';

-- One field of a cron expression: the sorted values it allows. Items are
-- *, n, a-b, */s or a-b/s, comma separated. Day of week: 7 is read as 0.
create function openqueue._cron_field(
    cron text, field text, field_name text, lower_bound integer, upper_bound integer
)
returns integer[]
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_item text;
    v_range text;
    v_step_text text;
    -- numeric: digits of any length compare without overflow
    v_from numeric;
    v_to numeric;
    v_step numeric;
    v_value integer;
    v_mask bigint := 0;
    v_lowest integer := 99;
    v_highest integer := -1;
    v_values integer[] := '{}';
begin
    -- The common field: every value.
    if _cron_field.field = '*' then
        return case _cron_field.field_name
            when 'minute' then '{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59}'::integer[]
            when 'hour' then '{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23}'::integer[]
            when 'day-of-month' then '{1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31}'::integer[]
            when 'month' then '{1,2,3,4,5,6,7,8,9,10,11,12}'::integer[]
            else '{0,1,2,3,4,5,6}'::integer[]
        end;
    end if;
    -- Plain loops and a bitmask: no SQL statement runs, so a parse costs
    -- tens of microseconds.
    foreach v_item in array string_to_array(_cron_field.field, ',') loop
        -- split_part and plain patterns: a regular expression with groups
        -- and bounded repeats costs some 70 us a call in PostgreSQL.
        v_range := split_part(v_item, '/', 1);
        v_step_text := case when position('/' in v_item) > 0 then substr(v_item, position('/' in v_item) + 1) end;
        v_from := null;
        if v_step_text is null or v_step_text ~ '^[0-9]+$' then
            if v_range = '*' then
                v_from := _cron_field.lower_bound;
                v_to := _cron_field.upper_bound;
            elsif v_range ~ '^[0-9]+$' and v_step_text is null then
                -- a bare number with a step (5/15) is no form of the contract's
                -- more than nine digits: out of range all the same (and no numeric overflow)
                v_from := (case when length(ltrim(v_range, '0')) > 9 then 999999999 else v_range::numeric end);
                v_to := v_from;
            elsif v_range ~ '^[0-9]+-[0-9]+$' then
                v_from := (case when length(ltrim(split_part(v_range, '-', 1), '0')) > 9 then 999999999 else split_part(v_range, '-', 1)::numeric end);
                v_to := (case when length(ltrim(split_part(v_range, '-', 2), '0')) > 9 then 999999999 else split_part(v_range, '-', 2)::numeric end);
            end if;
        end if;
        if v_from is null then
            perform openqueue._raise_invalid(
                'cron',
                format(
                    '%L is not a valid cron expression: %s field item %L is not *, n, a-b, */n or a-b/n',
                    left(_cron_field.cron, 100), _cron_field.field_name, left(v_item, 20)
                )
            );
        end if;
        v_step := coalesce((case when length(ltrim(v_step_text, '0')) > 9 then 999999999 else v_step_text::numeric end), 1);
        if v_from < _cron_field.lower_bound or v_to > _cron_field.upper_bound or v_from > v_to or v_step < 1 then
            perform openqueue._raise_invalid(
                'cron',
                format(
                    '%L is not a valid cron expression: %s field item %L is outside %s-%s, '
                    'a descending range or a zero step',
                    left(_cron_field.cron, 100), _cron_field.field_name, left(v_item, 20),
                    _cron_field.lower_bound, _cron_field.upper_bound
                )
            );
        end if;
        v_value := v_from;
        v_step := least(v_step, 100);  -- a larger step than the range yields its first value only
        v_lowest := least(v_lowest, v_from::integer);
        v_highest := greatest(v_highest, v_to::integer);
        while v_value <= v_to loop
            v_mask := v_mask | (1::bigint << v_value);
            v_value := v_value + v_step;
        end loop;
    end loop;
    -- Day of week 7 is Sunday, 0.
    if _cron_field.field_name = 'day-of-week' and v_mask & 128 <> 0 then
        v_mask := (v_mask | 1) & 127;
        v_lowest := 0;
        v_highest := least(v_highest, 6);
    end if;
    for v_value in v_lowest..v_highest loop
        if v_mask & (1::bigint << v_value) <> 0 then
            v_values := v_values || v_value;
        end if;
    end loop;
    return v_values;
end;
$$;

comment on function openqueue._cron_field(text, text, text, integer, integer) is
'Internal: the sorted values one cron field allows (items *, n, a-b, */n, '
'a-b/n, comma separated; day of week 7 is 0). 22023 naming cron otherwise.';

create function openqueue._cron_parse(
    cron text,
    out minutes integer[],
    out hours integer[],
    out days integer[],
    out months integer[],
    out weekdays integer[]
)
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_text text;
    v_fields text[];
    v_longest integer;
begin
    if _cron_parse.cron is null then
        perform openqueue._raise_null('cron');
    end if;
    v_text := btrim(_cron_parse.cron, E' \t\n\r');
    v_text := case lower(v_text)
        when '@yearly' then '0 0 1 1 *'
        when '@annually' then '0 0 1 1 *'
        when '@monthly' then '0 0 1 * *'
        when '@weekly' then '0 0 * * 0'
        when '@daily' then '0 0 * * *'
        when '@midnight' then '0 0 * * *'
        when '@hourly' then '0 * * * *'
        else v_text
    end;
    v_fields := regexp_split_to_array(v_text, '[ \t]+');
    if v_text = '' or cardinality(v_fields) <> 5 then
        perform openqueue._raise_invalid(
            'cron',
            format(
                '%L is not a valid cron expression: it needs five fields '
                '(minute hour day-of-month month day-of-week) or a macro '
                '(@hourly, @daily, @weekly, @monthly, @yearly)',
                left(_cron_parse.cron, 100)
            )
        );
    end if;
    minutes := openqueue._cron_field(_cron_parse.cron, v_fields[1], 'minute', 0, 59);
    hours := openqueue._cron_field(_cron_parse.cron, v_fields[2], 'hour', 0, 23);
    months := openqueue._cron_field(_cron_parse.cron, v_fields[4], 'month', 1, 12);
    -- A day field that is exactly * places no restriction: NULL. When both
    -- are restricted a day matches when either matches (classic cron).
    if v_fields[3] <> '*' then
        days := openqueue._cron_field(_cron_parse.cron, v_fields[3], 'day-of-month', 1, 31);
    end if;
    if v_fields[5] <> '*' then
        weekdays := openqueue._cron_field(_cron_parse.cron, v_fields[5], 'day-of-week', 0, 7);
    end if;
    -- "0 0 30 2 *" is well formed but has no slot at all.
    if days is not null and weekdays is null then
        select max(case when m.m = 2 then 29 when m.m in (4, 6, 9, 11) then 30 else 31 end)
        into v_longest
        from unnest(months) as m (m);
        if days[1] > v_longest then
            perform openqueue._raise_invalid(
                'cron',
                format(
                    '%L is not a valid cron expression: no month it names has such a day',
                    left(_cron_parse.cron, 100)
                )
            );
        end if;
    end if;
end;
$$;

comment on function openqueue._cron_parse(text) is
'Internal: parse a cron expression (five fields or a macro) into the sorted '
'values of each field; days / weekdays are NULL when that field is *. 22004 '
'for NULL, 22023 naming cron for anything malformed or never matching.';

-- The first slot strictly after "after". Walks months, then the matching
-- days of a month, then the allowed hours and minutes of a day, in the
-- zone's wall-clock time; so a common expression costs a few candidates,
-- never a minute-by-minute scan. A wall time that does not exist (spring
-- forward) is skipped; one that occurs twice (fall back) stands for its
-- first occurrence only. The first-occurrence instant grows with the wall
-- time, so starting at the wall time of "after" misses nothing.
create function openqueue._cron_next(
    minutes integer[],
    hours integer[],
    days integer[],
    months integer[],
    weekdays integer[],
    after timestamptz,
    timezone text
)
returns timestamptz
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_start timestamp := date_trunc('minute', _cron_next.after at time zone _cron_next.timezone);
    v_year integer := extract(year from v_start)::integer;
    v_month integer := extract(month from v_start)::integer;
    v_day integer := extract(day from v_start)::integer;
    v_hour integer := extract(hour from v_start)::integer;
    v_minute integer := extract(minute from v_start)::integer;
    v_first date;
    v_month_days integer;
    v_first_dow integer;
    v_d integer;
    v_h integer;
    v_m integer;
    v_match boolean;
    v_wall timestamp;
    v_at timestamptz;
    v_before timestamptz;
    v_shift interval;
    v_months integer := 0;
begin
    loop
        v_months := v_months + 1;
        -- Ten years and more: a valid expression (leap days included,
        -- at most eight years apart) always has a slot before that.
        if v_months > 12 * 10 + 1 then
            perform openqueue._raise_invalid(
                'cron', format('has no slot in the ten years after %s', _cron_next.after)
            );
        end if;
        if v_month = any(_cron_next.months) then
            v_first := make_date(v_year, v_month, 1);
            v_month_days := extract(day from v_first + interval '1 month' - interval '1 day')::integer;
            v_first_dow := extract(dow from v_first)::integer;
            for v_d in v_day..v_month_days loop
                v_match := case
                    when _cron_next.days is null and _cron_next.weekdays is null then true
                    when _cron_next.days is null then (v_first_dow + v_d - 1) % 7 = any(_cron_next.weekdays)
                    when _cron_next.weekdays is null then v_d = any(_cron_next.days)
                    else v_d = any(_cron_next.days) or (v_first_dow + v_d - 1) % 7 = any(_cron_next.weekdays)
                end;
                if v_match then
                    foreach v_h in array _cron_next.hours loop
                        continue when v_h < v_hour;
                        foreach v_m in array _cron_next.minutes loop
                            continue when v_h = v_hour and v_m < v_minute;
                            v_wall := make_timestamp(v_year, v_month, v_d, v_h, v_m, 0);
                            v_at := v_wall at time zone _cron_next.timezone;
                            -- spring forward: this wall time does not exist
                            continue when (v_at at time zone _cron_next.timezone) <> v_wall;
                            -- fall back: PostgreSQL reads an ambiguous wall time as its
                            -- later occurrence; the offset three hours earlier gives the
                            -- earlier one, if there is one.
                            v_before := v_at - interval '3 hours';
                            v_shift := ((v_before at time zone _cron_next.timezone) - (v_before at time zone 'UTC'))
                                - ((v_at at time zone _cron_next.timezone) - (v_at at time zone 'UTC'));
                            if v_shift > interval '0'
                               and ((v_at - v_shift) at time zone _cron_next.timezone) = v_wall then
                                v_at := v_at - v_shift;
                            end if;
                            if v_at > _cron_next.after then
                                return v_at;
                            end if;
                        end loop;
                    end loop;
                end if;
                v_hour := 0;
                v_minute := 0;
            end loop;
        end if;
        v_day := 1;
        v_hour := 0;
        v_minute := 0;
        v_month := v_month + 1;
        if v_month > 12 then
            v_month := 1;
            v_year := v_year + 1;
        end if;
    end loop;
end;
$$;

comment on function openqueue._cron_next(integer[], integer[], integer[], integer[], integer[], timestamptz, text) is
'Internal: the first slot of a parsed cron expression (openqueue._cron_parse) '
'strictly after "after", read in timezone (already checked): a wall time that '
'does not exist is skipped, one that occurs twice fires at its first occurrence.';

create function openqueue.oq_cron_next(cron text, after timestamptz, timezone text default 'UTC')
returns timestamptz
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_spec record;
    v_timezone text := coalesce(oq_cron_next.timezone, 'UTC');
begin
    if oq_cron_next.cron is null then
        perform openqueue._raise_null('cron');
    end if;
    if oq_cron_next.after is null then
        perform openqueue._raise_null('after');
    end if;
    -- The answer may lie eight years after "after" (a leap day); within these
    -- bounds it is a year 1 to 9999 date, which every client's types can hold.
    if oq_cron_next.after < timestamptz '0001-01-01 00:00+00'
       or oq_cron_next.after >= timestamptz '9990-01-01 00:00+00' then
        perform openqueue._raise_invalid(
            'after', format('must be between 0001-01-01 and 9989-12-31 UTC, got %s', oq_cron_next.after)
        );
    end if;
    perform openqueue._check_timezone(v_timezone);
    v_spec := openqueue._cron_parse(oq_cron_next.cron);
    return openqueue._cron_next(
        v_spec.minutes, v_spec.hours, v_spec.days, v_spec.months, v_spec.weekdays,
        oq_cron_next.after, v_timezone
    );
end;
$$;

comment on function openqueue.oq_cron_next(text, timestamptz, text) is
'The first slot of cron strictly after "after", read in timezone (an IANA name, '
'default UTC; NULL means UTC). cron: five fields (minute 0-59, hour 0-23, '
'day of month 1-31, month 1-12, day of week 0-7 with 0 and 7 Sunday), each *, '
'n, a-b, */n, a-b/n or a comma list of these, or a macro @hourly, @daily, '
'@weekly (Sunday 00:00), @monthly, @yearly (also @annually, @midnight). When '
'both day fields are restricted (neither is exactly *), a day matches when '
'either matches. A wall time that does not exist (spring forward) is skipped; '
'one that occurs twice (fall back) fires at its first occurrence only. Errors: '
'22004 for a NULL cron or after; 22023 naming the argument for a malformed or '
'never-matching cron, an after outside the years 1 to 9989 (UTC), an unknown timezone.';

-- The schedule's slot due at as_of: the latest slot <= as_of, never one
-- before next_run_at. Sparse expressions after a long downtime would take
-- many steps slot by slot, so look back from as_of over a window that
-- doubles until it holds a slot, then step forward within it.
create function openqueue._cron_latest(schedule openqueue.cron_schedules, as_of timestamptz)
returns timestamptz
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    s openqueue.cron_schedules := _cron_latest.schedule;
    v_slot timestamptz;
    v_next timestamptz;
    v_window interval := interval '1 minute';
begin
    v_slot := s.next_run_at;
    v_next := openqueue._cron_next(
        s.cron_minutes, s.cron_hours, s.cron_days, s.cron_months, s.cron_weekdays, v_slot, s.timezone
    );
    if v_next > _cron_latest.as_of then
        return v_slot;  -- the common case: one slot due
    end if;
    loop
        exit when _cron_latest.as_of - v_window <= v_next;
        v_slot := openqueue._cron_next(
            s.cron_minutes, s.cron_hours, s.cron_days, s.cron_months, s.cron_weekdays,
            _cron_latest.as_of - v_window, s.timezone
        );
        exit when v_slot <= _cron_latest.as_of;
        v_window := v_window * 2;
    end loop;
    if v_slot < v_next then
        v_slot := v_next;
    end if;
    loop
        v_next := openqueue._cron_next(
            s.cron_minutes, s.cron_hours, s.cron_days, s.cron_months, s.cron_weekdays, v_slot, s.timezone
        );
        exit when v_next > _cron_latest.as_of;
        v_slot := v_next;
    end loop;
    return v_slot;
end;
$$;

comment on function openqueue._cron_latest(openqueue.cron_schedules, timestamptz) is
'Internal: the latest slot of a due schedule that is <= as_of (and >= its next_run_at).';

create function openqueue.oq_schedule(
    schedule_name text,
    cron text,
    queue_name text,
    payload jsonb default '{}',
    priority integer default 0,
    max_attempts integer default null,  -- null: the queue's setting when a job is enqueued
    timezone text default 'UTC'
)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_spec record;
    v_timezone text := coalesce(oq_schedule.timezone, 'UTC');
    v_payload jsonb := coalesce(oq_schedule.payload, '{}');
    v_max_payload integer;
    v_size bigint;
begin
    perform openqueue._check_queue_name(oq_schedule.schedule_name, 'schedule_name');
    if oq_schedule.cron is null then
        perform openqueue._raise_null('cron');
    end if;
    perform openqueue._check_queue_name(oq_schedule.queue_name);
    perform openqueue._check_range('max_attempts', oq_schedule.max_attempts, 1, 2147483647);
    perform openqueue._check_timezone(v_timezone);
    v_spec := openqueue._cron_parse(oq_schedule.cron);
    -- Refused now rather than at every slot by oq_enqueue.
    v_max_payload := openqueue._max_payload_bytes(oq_schedule.queue_name);
    v_size := octet_length(v_payload::text);
    if v_size > v_max_payload then
        perform openqueue._raise_invalid(
            'payload',
            format(
                'is %s bytes, more than the %s bytes queue %s accepts',
                v_size, v_max_payload, oq_schedule.queue_name
            )
        );
    end if;

    -- Replacing keeps last_run_at, and the next slot comes after it too:
    -- a slot that already fired never fires again. The conflict takes the
    -- row lock, which orders this with a concurrent oq_tick of the schedule.
    insert into openqueue.cron_schedules as cs (
        schedule_name, cron, queue_name, payload, priority, max_attempts, timezone,
        next_run_at, cron_minutes, cron_hours, cron_days, cron_months, cron_weekdays
    )
    values (
        oq_schedule.schedule_name,
        oq_schedule.cron,
        oq_schedule.queue_name,
        v_payload,
        coalesce(oq_schedule.priority, 0),
        oq_schedule.max_attempts,
        v_timezone,
        openqueue._cron_next(
            v_spec.minutes, v_spec.hours, v_spec.days, v_spec.months, v_spec.weekdays,
            now(), v_timezone
        ),
        v_spec.minutes, v_spec.hours, v_spec.days, v_spec.months, v_spec.weekdays
    )
    on conflict on constraint cron_schedules_pkey do update
    set
        cron = excluded.cron,
        queue_name = excluded.queue_name,
        payload = excluded.payload,
        priority = excluded.priority,
        max_attempts = excluded.max_attempts,
        timezone = excluded.timezone,
        next_run_at = openqueue._cron_next(
            excluded.cron_minutes, excluded.cron_hours, excluded.cron_days,
            excluded.cron_months, excluded.cron_weekdays,
            greatest(now(), cs.last_run_at), excluded.timezone
        ),
        cron_minutes = excluded.cron_minutes,
        cron_hours = excluded.cron_hours,
        cron_days = excluded.cron_days,
        cron_months = excluded.cron_months,
        cron_weekdays = excluded.cron_weekdays,
        updated_at = now();
end;
$$;

comment on function openqueue.oq_schedule(text, text, text, jsonb, integer, integer, text) is
'Create the recurring schedule schedule_name, or replace its definition. '
'Each slot of cron (see oq_cron_next), read in timezone (IANA name, default '
'UTC), enqueues one job into queue_name with payload (default {}), priority '
'(default 0) and max_attempts (NULL: the queue''s setting) when oq_tick runs. '
'The next slot is the first one strictly after now(); replacing keeps '
'last_run_at and never fires again a slot that already fired. NULL payload, '
'priority or timezone mean their defaults. Errors: 22004/22023 naming the '
'argument for a bad schedule_name (queue-name rules), cron, queue_name, '
'max_attempts < 1, unknown timezone, or a payload larger than the queue accepts.';

create function openqueue.oq_unschedule(schedule_name text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform openqueue._check_queue_name(oq_unschedule.schedule_name, 'schedule_name');
    delete from openqueue.cron_schedules as cs
    where cs.schedule_name = oq_unschedule.schedule_name;
    return found;
end;
$$;

comment on function openqueue.oq_unschedule(text) is
'Delete the schedule schedule_name; false when there is none. Jobs it already '
'enqueued stay. Errors 22004/22023 for a NULL or ill-formed schedule_name.';

-- enable_seqscan = off: until the table is analyzed the planner guesses a
-- third of the rows due and reads a thousand schedules with a sequential
-- scan; the index on next_run_at reads only the due ones, whatever the
-- statistics say. (Nested calls, oq_enqueue's, are key lookups anyway.)
create function openqueue.oq_tick(as_of timestamptz default now())
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
as $$
declare
    v_as_of timestamptz := coalesce(oq_tick.as_of, now());
    s openqueue.cron_schedules;
    v_slot timestamptz;
    v_key text;
    v_count integer := 0;
    v_batch integer;
    v_fired boolean;
begin
    if not isfinite(v_as_of) then
        perform openqueue._raise_invalid('as_of', 'must be a finite timestamp');
    end if;
    -- Batches in next_run_at order through the index; SKIP LOCKED leaves a
    -- schedule another ticker holds to that ticker, and a row it updated
    -- meanwhile is read again and no longer due. A processed row is due no
    -- more, so the loop ends when a batch comes back short.
    loop
        v_batch := 0;
        for s in
            select cs.*
            from openqueue.cron_schedules as cs
            where cs.next_run_at <= v_as_of
            order by cs.next_run_at
            limit 100
            for update skip locked
        loop
            v_batch := v_batch + 1;
            v_slot := openqueue._cron_latest(s, v_as_of);
            v_key := 'schedule:' || s.schedule_name || ':' || extract(epoch from v_slot)::bigint;
            -- The row lock makes this ticker the only one firing this
            -- schedule now; the idempotency key is the backstop (a schedule
            -- dropped and created again), and only a real insert counts.
            v_fired := true;
            if octet_length(s.payload::text) > openqueue._max_payload_bytes(s.queue_name) then
                -- A limit lowered after oq_schedule: skip this slot, do not
                -- fail the whole tick (and every other schedule with it).
                v_fired := false;
                raise warning 'openqueue: schedule % skipped its slot %: its payload is larger than queue % accepts',
                s.schedule_name, v_slot, s.queue_name;
            elsif not exists (
                select from openqueue.idempotency_keys as ik
                where ik.queue_name = s.queue_name and ik.idempotency_key = v_key
            ) then
                perform openqueue.oq_enqueue(
                    queue_name => s.queue_name,
                    payload => s.payload,
                    priority => s.priority,
                    run_at => v_slot,
                    max_attempts => s.max_attempts,
                    idempotency_key => v_key
                );
                v_count := v_count + 1;
            end if;
            update openqueue.cron_schedules as cs
            set
                last_run_at = case when v_fired then v_slot else cs.last_run_at end,
                next_run_at = openqueue._cron_next(
                    s.cron_minutes, s.cron_hours, s.cron_days, s.cron_months, s.cron_weekdays,
                    v_as_of, s.timezone
                )
            where cs.schedule_name = s.schedule_name;
        end loop;
        exit when v_batch < 100;
    end loop;
    return v_count;
end;
$$;

comment on function openqueue.oq_tick(timestamptz) is
'Fire due schedules: for every schedule whose next slot is <= as_of (default '
'and NULL: now()), enqueue ONE job for the latest such slot (earlier missed '
'slots are skipped) into its queue with its payload, priority and '
'max_attempts, run_at = the slot, idempotency_key = ''schedule:'' || '
'schedule_name || '':'' || extract(epoch from slot)::bigint; then move its '
'next slot to the first one after as_of. Returns the number of jobs enqueued. '
'Safe to call concurrently and often: each slot is enqueued at most once.';

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

-- Every setting of every configured queue in one read, for operators (the
-- CLI's stats, the dashboard): openqueue.queues and openqueue.queue_limits
-- are the owner's alone, so this is the admin's way to see them.
create function openqueue.oq_queue_settings()
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
        s.max_attempts,
        s.lease_seconds,
        s.backoff_base,
        s.backoff_max,
        coalesce(q.notify_mode, 'always'),
        openqueue._max_payload_bytes(n.queue_name),
        coalesce(q.paused, false),
        q.max_running,
        q.rate_limit,
        coalesce(q.rate_period, interval '1 second')
    from names as n
    left join openqueue.queues as q on n.queue_name = q.queue_name
    cross join lateral openqueue._queue_settings(n.queue_name) as s
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

revoke all on function openqueue.oq_queue_settings() from public;

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
$oq_0004$;
        insert into openqueue.schema_migrations (version, name)
        values (4, '0004_schedules_and_flow_control');
        raise notice 'openqueue: applied migration 0004_schedules_and_flow_control';
    end if;
    if v_current < 5 then
        execute $oq_0005$
-- OpenQueue schema version 5: scale-out on Citus (CONTRACT section 10).
--
-- * oq_heartbeat, oq_ack, oq_nack and oq_ack_many take one more optional
--   argument, last: queue_name text DEFAULT NULL. Given and not the job's
--   queue, the call acts as with a wrong token and changes nothing. On Citus
--   it is what lets the call be routed to the one node holding the job.
-- * oq_distribute() (admin): on a database with the citus extension,
--   distributes the job storage and the per-queue state by queue_name,
--   co-located, and makes each hot-path call run on the one node holding
--   its queue. 0A000 without Citus; idempotent.
-- * oq_nodes() (worker): the nodes of a Citus cluster, so that listeners
--   LISTEN on each (a routed call notifies on the node that ran it); no
--   rows on a single PostgreSQL.
-- * The bodies that run on a Citus node avoid what Citus refuses in a write
--   to a distributed table: no volatile function (a lease token is derived
--   from one random seed per call and the job id), no stable function
--   applied to a column, and the lease's outer UPDATE filters queue_name.
--
-- How a call is routed. The public oq_* functions validate their arguments
-- first (a NULL distribution argument crashes a Citus 14 coordinator), then,
-- only when the setting openqueue.route is on (oq_distribute sets it for the
-- database), call an internal _routed_* function that Citus knows as
-- distributed by its queue_name argument. Outside a transaction block Citus
-- sends that call to the node holding the queue, where it calls the public
-- function again with openqueue.route off, which runs the body there. Inside
-- a transaction block Citus does not delegate: the body runs on the
-- coordinator and its statements are routed one by one (and NOTIFY is raised
-- on the coordinator, so a transaction spanning queues on two nodes commits
-- with two-phase commit, which a node that notified could not do). On a
-- single PostgreSQL the setting is off and the cost is one current_setting().

-- ---------------------------------------------------------------------------
-- Routing helpers.
-- ---------------------------------------------------------------------------

-- True when a hot-path call should be routed: oq_distribute() ran on this
-- database (setting openqueue.route) and we are not already inside a routed
-- call. Also makes the call be delegated when outside a transaction block
-- (citus.function_opens_transaction_block would otherwise make every
-- statement inside a function look like one); inside a block the setting
-- makes no difference (Citus sees the block), and it ends with the transaction.
create function openqueue._route()
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if coalesce(current_setting('openqueue.route', true), '') <> 'on' then
        return false;
    end if;
    perform set_config('citus.function_opens_transaction_block', 'off', true);
    return true;
end;
$$;

comment on function openqueue._route() is
'Internal: true when hot-path calls go through the distributed _routed_* '
'functions (setting openqueue.route = on, set by oq_distribute for the '
'database; off inside a routed call).';

-- ---------------------------------------------------------------------------
-- oq_lease and _promote_due: Citus-safe bodies (same plan on one node).
-- ---------------------------------------------------------------------------

create or replace function openqueue._promote_due(queue_name text, max_rows integer)
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count integer;
begin
    -- The outer UPDATE filters queue_name too: on Citus it is then routed to
    -- the one shard holding the queue (else it touches every shard).
    update openqueue.live_jobs as lj
    set due = true
    where lj.queue_name = _promote_due.queue_name
      and lj.id = any(array(
          select s.id
          from openqueue.live_jobs as s
          where s.queue_name = _promote_due.queue_name
            and s.status in ('pending', 'failed')
            and not s.due
            and s.run_at <= now()
          order by s.run_at
          limit _promote_due.max_rows
          for update skip locked
      ));
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

comment on function openqueue._promote_due(text, integer) is
'Internal: mark up to max_rows jobs of queue_name whose run_at has come as due '
'(into the lease index live_jobs_lease_order); returns how many.';

-- Version 4's oq_lease (flow control: pause, max_running, rate_limit), with
-- the routing step after validation, a token the UPDATE computes without a
-- volatile function, and the outer UPDATE filtering queue_name.
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

    if openqueue._route() then
        return query
        select *
        from openqueue._routed_lease(
            oq_lease.queue_name, oq_lease.worker_id, oq_lease.lease_seconds, oq_lease.batch_size
        );
        return;
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
        -- spread over leases as jobs fall due (one index descent when none has).
        loop
            exit when openqueue._promote_due(oq_lease.queue_name, 10000) < 10000;
        end loop;

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

comment on function openqueue.oq_lease(text, text, integer, integer) is
'Claim up to batch_size (default 1, at most 10000) due jobs of queue_name for '
'worker_id, highest priority first, then oldest run_at, then lowest id; each '
'becomes processing with attempts + 1, a fresh lease_token and '
'lease_expires_at = now() + lease_seconds (NULL: the queue''s setting). Rows '
'come back in lease order; none when nothing is due or the queue is paused '
'(oq_pause_queue). A queue with limits (oq_set_queue_limits) leases fewer, '
'or none, so that neither max_running nor rate_limit is exceeded; its leases '
'run one at a time. Errors 22004/22023 for a bad queue_name, NULL worker_id, '
'lease_seconds or batch_size out of range. On Citus (after oq_distribute) '
'the call runs on the node holding the queue, where the limits are enforced.';

-- ---------------------------------------------------------------------------
-- finished_counts triggers: one upsert per (queue, status) with constant
-- values. On Citus the triggers fire on the shards of finished_jobs, where a
-- query joining the transition table with a distributed table cannot run;
-- reading the transition table alone is a local query.
-- ---------------------------------------------------------------------------

create or replace function openqueue._finished_counts_inserted()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_row record;
    v_shard integer := pg_backend_pid();
begin
    for v_row in
        select n.queue_name, n.status, count(*) as jobs
        from new_rows as n
        group by n.queue_name, n.status
        order by n.queue_name, n.status
    loop
        insert into openqueue.finished_counts as fc (queue_name, status, shard, jobs)
        values (v_row.queue_name, v_row.status, v_shard, v_row.jobs)
        on conflict on constraint finished_counts_pkey do update
        set jobs = fc.jobs + excluded.jobs;
    end loop;
    return null;
end;
$$;

comment on function openqueue._finished_counts_inserted() is
'Internal: AFTER INSERT (per statement) on finished_jobs: count the new rows.';

create or replace function openqueue._finished_counts_deleted()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_row record;
    v_shard integer := pg_backend_pid();
begin
    for v_row in
        select o.queue_name, o.status, -count(*) as jobs
        from old_rows as o
        group by o.queue_name, o.status
        order by o.queue_name, o.status
    loop
        insert into openqueue.finished_counts as fc (queue_name, status, shard, jobs)
        values (v_row.queue_name, v_row.status, v_shard, v_row.jobs)
        on conflict on constraint finished_counts_pkey do update
        set jobs = fc.jobs + excluded.jobs;
    end loop;
    return null;
end;
$$;

comment on function openqueue._finished_counts_deleted() is
'Internal: AFTER DELETE (per statement) on finished_jobs: uncount the deleted rows.';

create or replace function openqueue._finished_counts_updated()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_row record;
    v_shard integer := pg_backend_pid();
begin
    for v_row in
        select c.queue_name, c.status, sum(c.jobs) as jobs
        from (
            select n.queue_name, n.status, 1 as jobs from new_rows as n
            union all
            select o.queue_name, o.status, -1 as jobs from old_rows as o
        ) as c
        group by c.queue_name, c.status
        having sum(c.jobs) <> 0
        order by c.queue_name, c.status
    loop
        insert into openqueue.finished_counts as fc (queue_name, status, shard, jobs)
        values (v_row.queue_name, v_row.status, v_shard, v_row.jobs)
        on conflict on constraint finished_counts_pkey do update
        set jobs = fc.jobs + excluded.jobs;
    end loop;
    return null;
end;
$$;

comment on function openqueue._finished_counts_updated() is
'Internal: AFTER UPDATE (per statement) on finished_jobs: move counts when a '
'row''s queue_name or status changed.';

-- ---------------------------------------------------------------------------
-- oq_enqueue, oq_enqueue_batch: routed after validation.
-- ---------------------------------------------------------------------------

-- Version 3's bodies, with the routing step after the queue name check.

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

comment on function openqueue.oq_enqueue(text, jsonb, integer, timestamptz, integer, text) is
'Add one job to queue_name and return its id. priority (default 0): higher '
'leases first. run_at (default now()): not leased before then. max_attempts '
'(NULL: the queue''s setting, 5 unless configured). idempotency_key: if the '
'queue already stores a job with this key, its id is returned and nothing is '
'inserted. Sends NOTIFY openqueue, queue_name when the job is due now, or '
'NOTIFY openqueue_scheduled, queue_name when it is due later (on commit). '
'Errors 22004/22023 for a NULL or bad queue_name, NULL payload, a payload '
'larger than the queue''s maximum (1 MiB unless set by '
'oq_set_queue_max_payload), max_attempts < 1, an idempotency_key longer '
'than 255 characters. On Citus (after oq_distribute) the call runs on the '
'node holding the queue.';

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

-- ---------------------------------------------------------------------------
-- oq_heartbeat, oq_ack, oq_nack, oq_ack_many: the queue_name argument.
-- A new signature: drop and create (grants come back from _apply_security).
-- ---------------------------------------------------------------------------

drop function openqueue.oq_heartbeat(bigint, uuid, integer);
drop function openqueue.oq_ack(bigint, uuid, jsonb);
drop function openqueue.oq_nack(bigint, uuid, text, interval, boolean);
drop function openqueue.oq_ack_many(bigint[], uuid[], jsonb[]);

create function openqueue.oq_heartbeat(
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
      and (oq_heartbeat.queue_name is null or lj.queue_name = oq_heartbeat.queue_name)
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

create function openqueue.oq_ack(
    job_id bigint,
    lease_token uuid,
    result jsonb default null,
    queue_name text default null
)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_done boolean;
begin
    if oq_ack.job_id is null then
        perform openqueue._raise_null('job_id');
    end if;
    if oq_ack.lease_token is null then
        perform openqueue._raise_null('lease_token');
    end if;
    if oq_ack.queue_name is not null and openqueue._route() then
        select r.done into v_done
        from openqueue._routed_ack(
            oq_ack.queue_name, oq_ack.job_id, oq_ack.lease_token, oq_ack.result
        ) as r (done);
        return v_done;
    end if;

    with done as (
        delete from openqueue.live_jobs as lj
        where lj.id = oq_ack.job_id
          and lj.status = 'processing'
          and lj.lease_token = oq_ack.lease_token
          and (oq_ack.queue_name is null or lj.queue_name = oq_ack.queue_name)
        returning lj.*
    )

    insert into openqueue.finished_jobs (
        id, queue_name, status, priority, run_at, attempts, max_attempts,
        leased_by, payload, result, errors, idempotency_key, created_at, finished_at
    )
    select
        d.id, d.queue_name, 'completed', d.priority, d.run_at, d.attempts, d.max_attempts,
        d.leased_by, d.payload, oq_ack.result, d.errors, d.idempotency_key, d.created_at, now()
    from done as d;

    return found;
end;
$$;

comment on function openqueue.oq_ack(bigint, uuid, jsonb, text) is
'Mark job_id completed, storing result, if lease_token holds its current '
'lease (and, when queue_name is given, the job is of that queue); returns '
'true. Otherwise returns false and changes nothing. queue_name (optional) '
'lets Citus route the call to the node holding the job.';

create function openqueue.oq_nack(
    job_id bigint,
    lease_token uuid,
    error text default null,
    retry_in interval default null,  -- null: exponential backoff
    retry boolean default true,
    queue_name text default null
)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_job openqueue.live_jobs%rowtype;
    v_settings record;
    v_errors jsonb;
    v_run_at timestamptz;
    v_outcome text;
begin
    if oq_nack.job_id is null then
        perform openqueue._raise_null('job_id');
    end if;
    if oq_nack.lease_token is null then
        perform openqueue._raise_null('lease_token');
    end if;
    if oq_nack.retry_in < interval '0' then
        perform openqueue._raise_invalid('retry_in', 'must not be negative');
    end if;
    if oq_nack.queue_name is null and openqueue._route() then
        -- Citus locks rows (FOR UPDATE below) on one shard only: find the
        -- job's queue first (a read across the shards), then nack with it.
        select lj.queue_name into v_job.queue_name
        from openqueue.live_jobs as lj
        where lj.id = oq_nack.job_id
          and lj.status = 'processing'
          and lj.lease_token = oq_nack.lease_token;
        if v_job.queue_name is null then
            return null;
        end if;
        return openqueue.oq_nack(
            oq_nack.job_id, oq_nack.lease_token, oq_nack.error, oq_nack.retry_in, oq_nack.retry,
            v_job.queue_name
        );
    end if;
    if oq_nack.queue_name is not null and openqueue._route() then
        select r.outcome into v_outcome
        from openqueue._routed_nack(
            oq_nack.queue_name, oq_nack.job_id, oq_nack.lease_token,
            oq_nack.error, oq_nack.retry_in, oq_nack.retry
        ) as r (outcome);
        return v_outcome;
    end if;

    select lj.* into v_job
    from openqueue.live_jobs as lj
    where lj.id = oq_nack.job_id
      and lj.status = 'processing'
      and lj.lease_token = oq_nack.lease_token
      and (oq_nack.queue_name is null or lj.queue_name = oq_nack.queue_name)
    for update;
    if not found then
        return null;
    end if;

    v_errors := v_job.errors || openqueue._error_entry(v_job.attempts, oq_nack.error);

    if coalesce(oq_nack.retry, true) and v_job.attempts < v_job.max_attempts then
        if oq_nack.retry_in is null then
            v_settings := openqueue._queue_settings(v_job.queue_name);
            v_run_at := now() + openqueue._backoff(
                v_job.attempts, v_settings.backoff_base, v_settings.backoff_max
            );
        else
            v_run_at := now() + oq_nack.retry_in;
        end if;
        -- Backing off: out of the lease index until run_at comes. The
        -- queue_name filter keeps the write on one shard on Citus.
        update openqueue.live_jobs as lj
        set
            status = 'failed',
            run_at = v_run_at,
            due = v_run_at <= now(),
            lease_token = null,
            lease_expires_at = null,
            errors = v_errors
        where lj.queue_name = v_job.queue_name
          and lj.id = v_job.id;
        perform pg_notify('openqueue_scheduled', v_job.queue_name);
        return 'failed';
    end if;

    delete from openqueue.live_jobs as lj
    where lj.queue_name = v_job.queue_name
      and lj.id = v_job.id;
    insert into openqueue.finished_jobs (
        id, queue_name, status, priority, run_at, attempts, max_attempts,
        leased_by, payload, errors, idempotency_key, created_at, finished_at
    )
    values (
        v_job.id, v_job.queue_name, 'dead', v_job.priority, v_job.run_at, v_job.attempts,
        v_job.max_attempts, v_job.leased_by, v_job.payload, v_errors, v_job.idempotency_key,
        v_job.created_at, now()
    );
    return 'dead';
end;
$$;

comment on function openqueue.oq_nack(bigint, uuid, text, interval, boolean, text) is
'Report that the attempt holding lease_token on job_id failed with error '
'(appended to the job''s errors). With attempts left and retry (default '
'true) the job becomes failed and leasable again at now() + retry_in, or '
'after exponential backoff when retry_in is NULL; otherwise it becomes dead. '
'Returns ''failed'', ''dead'', or NULL when the lease is not held (or '
'queue_name is given and not the job''s queue). queue_name (optional) lets '
'Citus route the call to the node holding the job.';

create function openqueue.oq_ack_many(
    job_ids bigint[],
    lease_tokens uuid[],
    results jsonb[] default null,
    queue_name text default null
)
returns setof bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
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

-- ---------------------------------------------------------------------------
-- Settings writers that Citus could not run: a function in the DO UPDATE SET
-- of an INSERT into a distributed table must be immutable (updated_at takes
-- excluded.updated_at, the column default now(), the same moment), and a
-- SQL-language function with parameters cannot read a distributed table.
-- Otherwise version 3 and 4's bodies, unchanged.
-- ---------------------------------------------------------------------------


create or replace function openqueue._max_payload_bytes(queue_name text)
returns integer
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_bytes integer;
begin
    select ql.max_payload_bytes into v_bytes
    from openqueue.queue_limits as ql
    where ql.queue_name = _max_payload_bytes.queue_name;
    return coalesce(v_bytes, 1048576);
end;
$$;

comment on function openqueue._max_payload_bytes(text) is
'Internal: the largest payload (bytes of its JSON text) queue_name accepts; '
'1048576 (1 MiB) unless set by oq_set_queue_max_payload.';

create or replace function openqueue.oq_configure_queue(
    queue_name text,
    max_attempts integer default null,
    lease_seconds integer default null,
    backoff_base interval default null,
    backoff_max interval default null
)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform openqueue._check_queue_name(oq_configure_queue.queue_name);
    perform openqueue._check_range('max_attempts', oq_configure_queue.max_attempts, 1, 2147483647);
    perform openqueue._check_range('lease_seconds', oq_configure_queue.lease_seconds, 1, 86400);
    if oq_configure_queue.backoff_base < interval '0' then
        perform openqueue._raise_invalid('backoff_base', 'must not be negative');
    end if;
    if oq_configure_queue.backoff_max < interval '0' then
        perform openqueue._raise_invalid('backoff_max', 'must not be negative');
    end if;

    insert into openqueue.queues as q (
        queue_name, max_attempts, lease_seconds, backoff_base, backoff_max
    )
    values (
        oq_configure_queue.queue_name,
        oq_configure_queue.max_attempts,
        oq_configure_queue.lease_seconds,
        oq_configure_queue.backoff_base,
        oq_configure_queue.backoff_max
    )
    on conflict on constraint queues_pkey do update
    set
        max_attempts = coalesce(excluded.max_attempts, q.max_attempts),
        lease_seconds = coalesce(excluded.lease_seconds, q.lease_seconds),
        backoff_base = coalesce(excluded.backoff_base, q.backoff_base),
        backoff_max = coalesce(excluded.backoff_max, q.backoff_max),
        updated_at = excluded.updated_at;
end;
$$;

comment on function openqueue.oq_configure_queue(text, integer, integer, interval, interval) is
'Set per-queue defaults: max_attempts for new jobs, lease_seconds for leases '
'and heartbeats (1 to 86400), backoff_base and backoff_max for retries. A NULL '
'argument leaves that setting unchanged. Built-in defaults: 5 attempts, 30 '
'seconds, 1 second, 1 hour.';

create or replace function openqueue.oq_set_queue_notify(queue_name text, mode text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform openqueue._check_queue_name(oq_set_queue_notify.queue_name);
    if oq_set_queue_notify.mode is null then
        perform openqueue._raise_null('mode');
    elsif oq_set_queue_notify.mode not in ('always', 'when_waiting') then
        perform openqueue._raise_invalid(
            'mode', format('must be ''always'' or ''when_waiting'', got %L', oq_set_queue_notify.mode)
        );
    end if;
    insert into openqueue.queues as q (queue_name, notify_mode)
    values (oq_set_queue_notify.queue_name, oq_set_queue_notify.mode)
    on conflict on constraint queues_pkey do update
    set
        notify_mode = excluded.notify_mode,
        updated_at = excluded.updated_at;
end;
$$;

comment on function openqueue.oq_set_queue_notify(text, text) is
'Set when enqueues into queue_name send NOTIFY openqueue: mode ''always'' '
'(the default: every enqueue of a due job, and openqueue_scheduled for a '
'future one) or ''when_waiting'' (only while a worker is registered by '
'oq_wait; saves the cost of notifications nobody waits for). Errors '
'22004/22023 for a bad queue_name or mode.';

create or replace function openqueue.oq_set_queue_max_payload(
    queue_name text,
    max_bytes integer default null  -- null: the built-in default
)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform openqueue._check_queue_name(oq_set_queue_max_payload.queue_name);
    perform openqueue._check_range('max_bytes', oq_set_queue_max_payload.max_bytes, 1, 1073741823);

    insert into openqueue.queues as q (queue_name)
    values (oq_set_queue_max_payload.queue_name)
    on conflict on constraint queues_pkey do update
    set updated_at = excluded.updated_at;

    if oq_set_queue_max_payload.max_bytes is null then
        delete from openqueue.queue_limits as ql
        where ql.queue_name = oq_set_queue_max_payload.queue_name;
    else
        insert into openqueue.queue_limits as ql (queue_name, max_payload_bytes)
        values (oq_set_queue_max_payload.queue_name, oq_set_queue_max_payload.max_bytes)
        on conflict on constraint queue_limits_pkey do update
        set
            max_payload_bytes = excluded.max_payload_bytes,
            updated_at = excluded.updated_at;
    end if;
end;
$$;

comment on function openqueue.oq_set_queue_max_payload(text, integer) is
'Set the largest payload queue_name accepts, in bytes of the payload''s JSON '
'text (1 to 1073741823); NULL restores the built-in default of 1048576 (1 MiB). '
'oq_enqueue and oq_enqueue_batch refuse a larger payload with 22023. Errors '
'22004/22023 for a bad queue_name or max_bytes out of range.';

create or replace function openqueue.oq_set_queue_limits(
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
        updated_at = excluded.updated_at;

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

create or replace function openqueue.oq_schedule(
    schedule_name text,
    cron text,
    queue_name text,
    payload jsonb default '{}',
    priority integer default 0,
    max_attempts integer default null,  -- null: the queue's setting when a job is enqueued
    timezone text default 'UTC'
)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_spec record;
    v_timezone text := coalesce(oq_schedule.timezone, 'UTC');
    v_payload jsonb := coalesce(oq_schedule.payload, '{}');
    v_max_payload integer;
    v_size bigint;
    v_last_run_at timestamptz;
    v_next_run_at timestamptz;
begin
    perform openqueue._check_queue_name(oq_schedule.schedule_name, 'schedule_name');
    if oq_schedule.cron is null then
        perform openqueue._raise_null('cron');
    end if;
    perform openqueue._check_queue_name(oq_schedule.queue_name);
    perform openqueue._check_range('max_attempts', oq_schedule.max_attempts, 1, 2147483647);
    perform openqueue._check_timezone(v_timezone);
    v_spec := openqueue._cron_parse(oq_schedule.cron);
    -- Refused now rather than at every slot by oq_enqueue.
    v_max_payload := openqueue._max_payload_bytes(oq_schedule.queue_name);
    v_size := octet_length(v_payload::text);
    if v_size > v_max_payload then
        perform openqueue._raise_invalid(
            'payload',
            format(
                'is %s bytes, more than the %s bytes queue %s accepts',
                v_size, v_max_payload, oq_schedule.queue_name
            )
        );
    end if;

    -- Replacing keeps last_run_at, and the next slot comes after it too:
    -- a slot that already fired never fires again. The row lock orders this
    -- with a concurrent oq_tick of the schedule; the next slot is computed
    -- here, not in the DO UPDATE (Citus allows no stable function there).
    select cs.last_run_at into v_last_run_at
    from openqueue.cron_schedules as cs
    where cs.schedule_name = oq_schedule.schedule_name
    for update;
    v_next_run_at := openqueue._cron_next(
        v_spec.minutes, v_spec.hours, v_spec.days, v_spec.months, v_spec.weekdays,
        greatest(now(), v_last_run_at), v_timezone
    );
    insert into openqueue.cron_schedules as cs (
        schedule_name, cron, queue_name, payload, priority, max_attempts, timezone,
        next_run_at, cron_minutes, cron_hours, cron_days, cron_months, cron_weekdays
    )
    values (
        oq_schedule.schedule_name,
        oq_schedule.cron,
        oq_schedule.queue_name,
        v_payload,
        coalesce(oq_schedule.priority, 0),
        oq_schedule.max_attempts,
        v_timezone,
        v_next_run_at,
        v_spec.minutes, v_spec.hours, v_spec.days, v_spec.months, v_spec.weekdays
    )
    on conflict on constraint cron_schedules_pkey do update
    set
        cron = excluded.cron,
        queue_name = excluded.queue_name,
        payload = excluded.payload,
        priority = excluded.priority,
        max_attempts = excluded.max_attempts,
        timezone = excluded.timezone,
        next_run_at = excluded.next_run_at,
        cron_minutes = excluded.cron_minutes,
        cron_hours = excluded.cron_hours,
        cron_days = excluded.cron_days,
        cron_months = excluded.cron_months,
        cron_weekdays = excluded.cron_weekdays,
        updated_at = excluded.updated_at;
end;
$$;

comment on function openqueue.oq_schedule(text, text, text, jsonb, integer, integer, text) is
'Create the recurring schedule schedule_name, or replace its definition. '
'Each slot of cron (see oq_cron_next), read in timezone (IANA name, default '
'UTC), enqueues one job into queue_name with payload (default {}), priority '
'(default 0) and max_attempts (NULL: the queue''s setting) when oq_tick runs. '
'The next slot is the first one strictly after now(); replacing keeps '
'last_run_at and never fires again a slot that already fired. NULL payload, '
'priority or timezone mean their defaults. Errors: 22004/22023 naming the '
'argument for a bad schedule_name (queue-name rules), cron, queue_name, '
'max_attempts < 1, unknown timezone, or a payload larger than the queue accepts.';

-- oq_tick runs on the coordinator and enqueues into queues on any node: its
-- oq_enqueue calls run there too (routing off for the call, whatever the
-- database says), so that their NOTIFY is raised on the coordinator and a
-- tick firing schedules of queues on two nodes can commit (a worker node
-- that notified could not take part in the two-phase commit). Version 4's
-- body otherwise.
-- enable_seqscan = off: until the table is analyzed the planner guesses a
-- third of the rows due and reads a thousand schedules with a sequential
-- scan; the index on next_run_at reads only the due ones, whatever the
-- statistics say. (Nested calls, oq_enqueue's, are key lookups anyway.)
create or replace function openqueue.oq_tick(as_of timestamptz default now())
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
as $$
declare
    v_as_of timestamptz := coalesce(oq_tick.as_of, now());
    s openqueue.cron_schedules;
    v_slot timestamptz;
    v_key text;
    v_count integer := 0;
    v_batch integer;
    v_fired boolean;
    v_route text := current_setting('openqueue.route', true);
begin
    if not isfinite(v_as_of) then
        perform openqueue._raise_invalid('as_of', 'must be a finite timestamp');
    end if;
    -- Routing off for this call (put back below): see above.
    perform set_config('openqueue.route', 'off', true);
    -- Batches in next_run_at order through the index; SKIP LOCKED leaves a
    -- schedule another ticker holds to that ticker, and a row it updated
    -- meanwhile is read again and no longer due. A processed row is due no
    -- more, so the loop ends when a batch comes back short.
    loop
        v_batch := 0;
        for s in
            select cs.*
            from openqueue.cron_schedules as cs
            where cs.next_run_at <= v_as_of
            order by cs.next_run_at
            limit 100
            for update skip locked
        loop
            v_batch := v_batch + 1;
            v_slot := openqueue._cron_latest(s, v_as_of);
            v_key := 'schedule:' || s.schedule_name || ':' || extract(epoch from v_slot)::bigint;
            -- The row lock makes this ticker the only one firing this
            -- schedule now; the idempotency key is the backstop (a schedule
            -- dropped and created again), and only a real insert counts.
            v_fired := true;
            if octet_length(s.payload::text) > openqueue._max_payload_bytes(s.queue_name) then
                -- A limit lowered after oq_schedule: skip this slot, do not
                -- fail the whole tick (and every other schedule with it).
                v_fired := false;
                raise warning 'openqueue: schedule % skipped its slot %: its payload is larger than queue % accepts',
                s.schedule_name, v_slot, s.queue_name;
            elsif not exists (
                select from openqueue.idempotency_keys as ik
                where ik.queue_name = s.queue_name and ik.idempotency_key = v_key
            ) then
                perform openqueue.oq_enqueue(
                    queue_name => s.queue_name,
                    payload => s.payload,
                    priority => s.priority,
                    run_at => v_slot,
                    max_attempts => s.max_attempts,
                    idempotency_key => v_key
                );
                v_count := v_count + 1;
            end if;
            update openqueue.cron_schedules as cs
            set
                last_run_at = case when v_fired then v_slot else cs.last_run_at end,
                next_run_at = openqueue._cron_next(
                    s.cron_minutes, s.cron_hours, s.cron_days, s.cron_months, s.cron_weekdays,
                    v_as_of, s.timezone
                )
            where cs.schedule_name = s.schedule_name;
        end loop;
        exit when v_batch < 100;
    end loop;
    perform set_config('openqueue.route', coalesce(v_route, ''), true);
    return v_count;
end;
$$;

comment on function openqueue.oq_tick(timestamptz) is
'Fire due schedules: for every schedule whose next slot is <= as_of (default '
'and NULL: now()), enqueue ONE job for the latest such slot (earlier missed '
'slots are skipped) into its queue with its payload, priority and '
'max_attempts, run_at = the slot, idempotency_key = ''schedule:'' || '
'schedule_name || '':'' || extract(epoch from slot)::bigint; then move its '
'next slot to the first one after as_of. Returns the number of jobs enqueued. '
'Safe to call concurrently and often: each slot is enqueued at most once.';

-- ---------------------------------------------------------------------------
-- oq_reap: on Citus, one reap per queue with expired leases (Citus runs
-- FOR UPDATE only on one shard, found by an equality on queue_name). The
-- first read spans the shards, so the calls run from the coordinator in one
-- distributed transaction, each statement on one shard; notifications are
-- raised on the coordinator. On one PostgreSQL version 2's body, unchanged.
-- ---------------------------------------------------------------------------

create function openqueue._reap_queue(queue_name text)
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_dead integer;
    v_reclaimed integer;
    v_error jsonb;
begin
    -- The error entry as a constant of the statement, the attempt set in it
    -- by immutable functions (Citus refuses a stable one, such as
    -- jsonb_build_object, applied to a column in a distributed write).
    v_error := jsonb_build_object('error', 'lease expired', 'at', now());

    with dead as (
        delete from openqueue.live_jobs as lj
        where lj.queue_name = _reap_queue.queue_name
          and lj.id = any(array(
              select e.id
              from openqueue.live_jobs as e
              where e.queue_name = _reap_queue.queue_name
                and e.status = 'processing'
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
        d.errors || jsonb_set(v_error, '{attempt}', d.attempts::text::jsonb),
        d.idempotency_key, d.created_at, now()
    from dead as d;
    get diagnostics v_dead = row_count;

    update openqueue.live_jobs as lj
    set
        status = 'pending',
        due = lj.run_at <= now(),
        lease_token = null,
        lease_expires_at = null,
        errors = lj.errors || jsonb_set(v_error, '{attempt}', lj.attempts::text::jsonb)
    where lj.queue_name = _reap_queue.queue_name
      and lj.id = any(array(
          select e.id
          from openqueue.live_jobs as e
          where e.queue_name = _reap_queue.queue_name
            and e.status = 'processing'
            and e.lease_expires_at < now()
            and e.attempts < e.max_attempts
          for update skip locked
      ));
    get diagnostics v_reclaimed = row_count;

    perform openqueue._fold_queue_counts(_reap_queue.queue_name);

    if v_reclaimed > 0 then
        perform pg_notify('openqueue', _reap_queue.queue_name);
    end if;
    return v_dead + v_reclaimed;
end;
$$;

comment on function openqueue._reap_queue(text) is
'Internal: oq_reap for the jobs of one queue (on Citus, on the node holding it).';

create function openqueue._routed_reap(queue_name text)
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform set_config('openqueue.route', 'off', true);
    return openqueue._reap_queue(_routed_reap.queue_name);
end;
$$;

comment on function openqueue._routed_reap(text) is
'Internal: _reap_queue on the node holding queue_name (Citus delegates it by queue_name).';

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
        delete from openqueue.queue_waiters as w where w.wait_until <= now();
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
-- Purging and folding the finished counters on Citus: queue by queue (Citus
-- runs FOR UPDATE only on one shard). On one PostgreSQL the bodies of
-- versions 2 and 3, unchanged.
-- ---------------------------------------------------------------------------

create function openqueue._fold_queue_counts(queue_name text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_pids integer[];
begin
    -- The queue's finished-job counter rows of exited sessions, folded into
    -- its row of shard 0 (see openqueue._fold_finished_counts). On Citus the
    -- rows are written by sessions of the node holding the queue, and this
    -- may read another node's pg_stat_activity: a row of a session still
    -- alive is then folded too, harmlessly (the sum is kept, and the
    -- session's next upsert, waiting on the row lock, creates its row again).
    v_pids := array(select a.pid from pg_catalog.pg_stat_activity as a);
    with gone as (
        delete from openqueue.finished_counts as fc
        where fc.queue_name = _fold_queue_counts.queue_name
          and (fc.status, fc.shard) in (
              select c.status, c.shard
              from openqueue.finished_counts as c
              where c.queue_name = _fold_queue_counts.queue_name
                and c.shard <> 0
                and c.shard <> all(v_pids)
              for update skip locked
          )
        returning fc.status, fc.jobs
    )

    insert into openqueue.finished_counts as fc (queue_name, status, shard, jobs)
    select _fold_queue_counts.queue_name, g.status, 0, sum(g.jobs)
    from gone as g
    group by g.status
    order by g.status
    on conflict on constraint finished_counts_pkey do update
    set jobs = fc.jobs + excluded.jobs;
end;
$$;

comment on function openqueue._fold_queue_counts(text) is
'Internal (Citus): fold the finished-job counter rows of exited sessions of '
'one queue into its row of shard 0, with statements on the queue''s shard.';

create or replace function openqueue._fold_finished_counts()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_queue text;
begin
    if not pg_try_advisory_xact_lock(openqueue._fold_lock_key()) then
        return;
    end if;
    if openqueue._route() then
        -- Citus locks rows on one shard only: queue by queue.
        for v_queue in
            select distinct fc.queue_name from openqueue.finished_counts as fc where fc.shard <> 0
        loop
            perform openqueue._fold_queue_counts(v_queue);
        end loop;
        return;
    end if;
    with gone as (
        delete from openqueue.finished_counts as fc
        where (fc.queue_name, fc.status, fc.shard) in (
            select c.queue_name, c.status, c.shard
            from openqueue.finished_counts as c
            where c.shard <> 0
              and not exists (select from pg_catalog.pg_stat_activity as a where a.pid = c.shard)
            for update skip locked
        )
        returning fc.queue_name, fc.status, fc.jobs
    )

    insert into openqueue.finished_counts as fc (queue_name, status, shard, jobs)
    select g.queue_name, g.status, 0, sum(g.jobs)
    from gone as g
    group by g.queue_name, g.status
    order by g.queue_name, g.status
    on conflict on constraint finished_counts_pkey do update
    set jobs = fc.jobs + excluded.jobs;

    delete from openqueue.finished_counts as fc
    where fc.shard = 0 and fc.jobs = 0;
end;
$$;

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
begin
    if openqueue._route() then
        -- Citus locks rows on one shard only: the oldest candidates read
        -- across the shards without locks, then deleted queue by queue (a
        -- row a concurrent purge deleted first is simply not found).
        v_count := 0;
        for v_queue, v_ids in
            select c.queue_name, array_agg(c.id)
            from (
                select f.id, f.queue_name
                from openqueue.finished_jobs as f
                where f.finished_at < now() - _purge_chunk.older_than
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

-- oq_next_run_at (the worker's sleep): per queue on Citus.
create or replace function openqueue.oq_next_run_at(queue_names text[])
returns timestamptz
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_next timestamptz;
    v_queue text;
    v_one timestamptz;
begin
    if oq_next_run_at.queue_names is null then
        perform openqueue._raise_null('queue_names');
    end if;
    if openqueue._route() then
        -- Citus cannot push down the lateral LIMIT below: one single-shard
        -- query per queue (the same index descent each).
        foreach v_queue in array oq_next_run_at.queue_names loop
            select lj.run_at into v_one
            from openqueue.live_jobs as lj
            where lj.queue_name = v_queue
              and lj.status in ('pending', 'failed')
              and not lj.due
              and lj.run_at > now()
            order by lj.run_at
            limit 1;
            if v_one < v_next or v_next is null then
                v_next := v_one;
            end if;
        end loop;
        return v_next;
    end if;
    -- Jobs waiting for a future run_at are exactly the not-yet-due ones, in
    -- live_jobs_scheduled by (queue_name, run_at): one index descent per
    -- queue, whatever the number of scheduled jobs or priorities.
    select min(n.run_at) into v_next
    from unnest(oq_next_run_at.queue_names) as q (queue_name)
    cross join lateral (
        select lj.run_at
        from openqueue.live_jobs as lj
        where lj.queue_name = q.queue_name
          and lj.status in ('pending', 'failed')
          and not lj.due
          and lj.run_at > now()
        order by lj.run_at
        limit 1
    ) as n;
    return v_next;
end;
$$;


-- ---------------------------------------------------------------------------
-- The routed functions: Citus knows them as distributed by queue_name
-- (oq_distribute registers them); each turns routing off and calls the
-- public function, which then runs its body on this node. Never granted:
-- only the SECURITY DEFINER oq_* functions call them.
-- ---------------------------------------------------------------------------

create function openqueue._routed_enqueue(
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
begin
    -- Routing off: the public function below runs its body here. Local to
    -- the transaction, which outside a block is this call (inside one
    -- Citus delegates nothing anyway).
    perform set_config('openqueue.route', 'off', true);
    return openqueue.oq_enqueue(
        _routed_enqueue.queue_name, _routed_enqueue.payload, _routed_enqueue.priority,
        _routed_enqueue.run_at, _routed_enqueue.max_attempts, _routed_enqueue.idempotency_key
    );
end;
$$;

comment on function openqueue._routed_enqueue(text, jsonb, integer, timestamptz, integer, text) is
'Internal: oq_enqueue on the node holding queue_name (Citus delegates it by queue_name).';

create function openqueue._routed_enqueue_batch(
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
begin
    -- Routing off: the public function below runs its body here. Local to
    -- the transaction, which outside a block is this call (inside one
    -- Citus delegates nothing anyway).
    perform set_config('openqueue.route', 'off', true);
    return query
    select r.id
    from openqueue.oq_enqueue_batch(
        _routed_enqueue_batch.queue_name, _routed_enqueue_batch.payloads,
        _routed_enqueue_batch.priority, _routed_enqueue_batch.run_at,
        _routed_enqueue_batch.max_attempts
    ) as r (id);
end;
$$;

comment on function openqueue._routed_enqueue_batch(text, jsonb, integer, timestamptz, integer) is
'Internal: oq_enqueue_batch on the node holding queue_name (Citus delegates it by queue_name).';

create function openqueue._routed_lease(
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
begin
    -- Routing off: the public function below runs its body here. Local to
    -- the transaction, which outside a block is this call (inside one
    -- Citus delegates nothing anyway).
    perform set_config('openqueue.route', 'off', true);
    return query
    select *
    from openqueue.oq_lease(
        _routed_lease.queue_name, _routed_lease.worker_id,
        _routed_lease.lease_seconds, _routed_lease.batch_size
    );
end;
$$;

comment on function openqueue._routed_lease(text, text, integer, integer) is
'Internal: oq_lease on the node holding queue_name (Citus delegates it by queue_name).';

create function openqueue._routed_heartbeat(
    queue_name text,
    job_id bigint,
    lease_token uuid,
    lease_seconds integer
)
returns timestamptz
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    -- Routing off: the public function below runs its body here. Local to
    -- the transaction, which outside a block is this call (inside one
    -- Citus delegates nothing anyway).
    perform set_config('openqueue.route', 'off', true);
    return openqueue.oq_heartbeat(
        _routed_heartbeat.job_id, _routed_heartbeat.lease_token,
        _routed_heartbeat.lease_seconds, _routed_heartbeat.queue_name
    );
end;
$$;

comment on function openqueue._routed_heartbeat(text, bigint, uuid, integer) is
'Internal: oq_heartbeat on the node holding queue_name (Citus delegates it by queue_name).';

create function openqueue._routed_ack(
    queue_name text,
    job_id bigint,
    lease_token uuid,
    result jsonb
)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    -- Routing off: the public function below runs its body here. Local to
    -- the transaction, which outside a block is this call (inside one
    -- Citus delegates nothing anyway).
    perform set_config('openqueue.route', 'off', true);
    return openqueue.oq_ack(
        _routed_ack.job_id, _routed_ack.lease_token, _routed_ack.result, _routed_ack.queue_name
    );
end;
$$;

comment on function openqueue._routed_ack(text, bigint, uuid, jsonb) is
'Internal: oq_ack on the node holding queue_name (Citus delegates it by queue_name).';

create function openqueue._routed_nack(
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
begin
    -- Routing off: the public function below runs its body here. Local to
    -- the transaction, which outside a block is this call (inside one
    -- Citus delegates nothing anyway).
    perform set_config('openqueue.route', 'off', true);
    return openqueue.oq_nack(
        _routed_nack.job_id, _routed_nack.lease_token, _routed_nack.error,
        _routed_nack.retry_in, _routed_nack.retry, _routed_nack.queue_name
    );
end;
$$;

comment on function openqueue._routed_nack(text, bigint, uuid, text, interval, boolean) is
'Internal: oq_nack on the node holding queue_name (Citus delegates it by queue_name).';

create function openqueue._routed_ack_many(
    queue_name text,
    job_ids bigint[],
    lease_tokens uuid[],
    results jsonb[]
)
returns setof bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    -- Routing off: the public function below runs its body here. Local to
    -- the transaction, which outside a block is this call (inside one
    -- Citus delegates nothing anyway).
    perform set_config('openqueue.route', 'off', true);
    return query
    select r.id
    from openqueue.oq_ack_many(
        _routed_ack_many.job_ids, _routed_ack_many.lease_tokens,
        _routed_ack_many.results, _routed_ack_many.queue_name
    ) as r (id);
end;
$$;

comment on function openqueue._routed_ack_many(text, bigint[], uuid[], jsonb[]) is
'Internal: oq_ack_many on the node holding queue_name (Citus delegates it by queue_name).';

-- ---------------------------------------------------------------------------
-- oq_distribute, oq_nodes.
-- ---------------------------------------------------------------------------

-- What oq_distribute distributes. The distributed tables, by queue_name and
-- co-located with the first, so that every row a hot-path call touches is
-- on the node holding its queue; the reference tables, copied to every node
-- (cron_schedules: keyed by schedule_name, and oq_tick, which runs on the
-- coordinator, enqueues into queues on any node); the routed functions, by
-- their first argument, queue_name.
create function openqueue._distribution_plan(
    out tables text[],
    out reference_tables text[],
    out routed_functions text[]
)
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select
        array[
            'openqueue.live_jobs',  -- first: the co-location anchor
            'openqueue.finished_jobs',
            'openqueue.idempotency_keys',
            'openqueue.queues',
            'openqueue.queue_limits',
            'openqueue.queue_waiters',
            'openqueue.finished_counts',
            'openqueue.queue_flow'
        ],
        array[
            'openqueue.cron_schedules'
        ],
        array[
            'openqueue._routed_enqueue(text, jsonb, integer, timestamptz, integer, text)',
            'openqueue._routed_enqueue_batch(text, jsonb, integer, timestamptz, integer)',
            'openqueue._routed_lease(text, text, integer, integer)',
            'openqueue._routed_heartbeat(text, bigint, uuid, integer)',
            'openqueue._routed_ack(text, bigint, uuid, jsonb)',
            'openqueue._routed_nack(text, bigint, uuid, text, interval, boolean)',
            'openqueue._routed_ack_many(text, bigint[], uuid[], jsonb[])',
            'openqueue._routed_reap(text)'
        ]
$$;

comment on function openqueue._distribution_plan() is
'Internal: the tables oq_distribute distributes (by queue_name, co-located '
'with the first), the reference tables it copies to every node, and the '
'functions it routes by their first argument, queue_name.';

-- On Citus a view over distributed tables is read with the caller's rights on
-- the shards (openqueue_admin, which may read openqueue.jobs, has none), and
-- an UPDATE through a view with INSTEAD OF triggers cannot be planned (Citus
-- 14: "could not find valid entry for shard 0"). So on a cluster each such
-- view reads a SECURITY DEFINER function, _<view>_rows(), that returns the
-- view's rows: the old definition becomes the owner-only view _<view>_all,
-- the public view keeps its name, columns, grants and triggers. lease_token
-- is returned only to members of the schema owner's role (the view's column
-- grants already keep it from openqueue_admin). The price: a read of the
-- view reads every row of it (no condition reaches the function).
create function openqueue._distribute_view(view_name text)
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

create function openqueue.oq_distribute()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_plan record;
    v_table text;
    v_anchor text;
    v_function text;
    v_key text[];
    v_constraint text;
begin
    if not exists (select from pg_catalog.pg_extension as e where e.extname = 'citus') then
        raise exception using
            errcode = '0A000',
            message = 'oq_distribute() needs the citus extension, which this database does not have',
            hint = 'create extension citus (on every node), add the worker nodes, then call it again';
    end if;
    v_plan := openqueue._distribution_plan();
    v_anchor := v_plan.tables[1];
    -- Tables with triggers (live_jobs, finished_jobs) are distributed with
    -- their triggers, which then fire on the shards: every trigger of
    -- OpenQueue touches only rows of the same queue, so on the same node.
    perform set_config('citus.enable_unsafe_triggers', 'on', true);
    -- Tables and functions in one transaction: one connection per node.
    perform set_config('citus.multi_shard_modify_mode', 'sequential', true);
    foreach v_table in array v_plan.tables loop
        continue when exists (
            select from pg_catalog.pg_dist_partition as p where p.logicalrelid = v_table::regclass
        );
        -- Citus requires every unique key to contain the distribution column:
        -- a primary key without queue_name (live_jobs, finished_jobs: the job
        -- id) gets queue_name appended; ids stay unique (one sequence).
        select c.conname, array_agg(a.attname::text order by k.ordinality)
        into v_constraint, v_key
        from pg_catalog.pg_constraint as c
        cross join lateral unnest(c.conkey) with ordinality as k (attnum, ordinality)
        inner join pg_catalog.pg_attribute as a
            on a.attrelid = c.conrelid and a.attnum = k.attnum
        where c.conrelid = v_table::regclass and c.contype = 'p'
        group by c.conname;
        if v_constraint is not null and not 'queue_name' = any(v_key) then
            execute format(
                'alter table %s drop constraint %I, add constraint %I primary key (%s, queue_name)',
                v_table, v_constraint, v_constraint,
                (select string_agg(quote_ident(k), ', ') from unnest(v_key) as k)
            );
        end if;
        if v_table = v_anchor then
            perform create_distributed_table(v_table::regclass, 'queue_name');
        else
            perform create_distributed_table(v_table::regclass, 'queue_name', colocate_with => v_anchor);
        end if;
    end loop;

    foreach v_table in array v_plan.reference_tables loop
        continue when exists (
            select from pg_catalog.pg_dist_partition as p where p.logicalrelid = v_table::regclass
        );
        perform create_reference_table(v_table::regclass);
    end loop;

    -- oq_lease skips its settings lookup while no queue ever used flow
    -- control (openqueue._flow_control_used); the pause or limits that
    -- would switch it on run on the coordinator, so on a cluster it is on
    -- from the start, on every node (before the functions are copied there).
    perform openqueue._flow_control_enable();

    -- Every other function of the schema exists on every node (the routed
    -- calls run them there); the routed ones are delegated by queue_name.
    for v_function in
        select p.oid::regprocedure::text
        from pg_catalog.pg_proc as p
        where p.pronamespace = 'openqueue'::regnamespace
          and not exists (
              select from pg_catalog.pg_dist_object as o
              where o.classid = 'pg_catalog.pg_proc'::regclass and o.objid = p.oid
          )
          and p.oid::regprocedure::text <> all(v_plan.routed_functions)
          -- the coordinator's own (openqueue._distribute_view)
          and p.oid::regprocedure::text not in ('openqueue._jobs_rows()', 'openqueue._schedules_rows()')
    loop
        perform create_distributed_function(v_function::regprocedure);
    end loop;
    foreach v_function in array v_plan.routed_functions loop
        continue when exists (
            select from pg_catalog.pg_dist_object as o
            where o.classid = 'pg_catalog.pg_proc'::regclass
              and o.objid = v_function::regprocedure
              and o.distribution_argument_index = 0
        );
        perform create_distributed_function(
            v_function::regprocedure, distribution_arg_name => '$1', colocate_with => v_anchor
        );
    end loop;

    -- The views openqueue.jobs and openqueue.schedules read through a
    -- SECURITY DEFINER function: see openqueue._distribute_view.
    perform openqueue._distribute_view('jobs');
    perform openqueue._distribute_view('schedules');

    -- Route the hot path: new sessions of this database from now on, this
    -- session at once.
    execute format('alter database %I set openqueue.route = on', current_database());
    perform set_config('openqueue.route', 'on', false);
end;
$$;

comment on function openqueue.oq_distribute() is
'Citus: distribute the job storage and the per-queue state by queue_name, '
'co-located (openqueue._distribution_plan lists them), and route each '
'hot-path call (oq_enqueue, oq_enqueue_batch, oq_lease, and oq_heartbeat, '
'oq_ack, oq_ack_many, oq_nack given queue_name) to the node holding the '
'queue. Sessions opened before the call keep running the hot path through '
'the coordinator until they reconnect. Idempotent. 0A000 without the citus '
'extension.';

create function openqueue.oq_nodes()
returns table (node_name text, node_port integer, is_coordinator boolean)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if pg_catalog.to_regclass('pg_catalog.pg_dist_node') is null then
        return;
    end if;
    -- pg_dist_node exists only with Citus: dynamic SQL, so that this
    -- function compiles and runs on a plain PostgreSQL too.
    return query execute
    'select n.nodename::text, n.nodeport::integer, n.groupid = 0
     from pg_catalog.pg_dist_node as n
     where n.isactive and n.noderole = ''primary''
     order by n.groupid, n.nodeid';
end;
$$;

comment on function openqueue.oq_nodes() is
'The active primary nodes of a Citus cluster (host, port, and whether it is '
'the coordinator), for listeners: a routed call notifies on the node that '
'ran it. No rows on a single PostgreSQL.';

-- ---------------------------------------------------------------------------
-- Security: openqueue_worker may call oq_nodes (the worker runtime does).
-- Wraps the previous _apply_security so that its role lists stay where
-- they are; the installer runs this one after the last migration.
-- ---------------------------------------------------------------------------

alter function openqueue._apply_security() rename to _apply_security_v4;

comment on function openqueue._apply_security_v4() is
'Internal: the roles, ownership and grants of contract sections 6-8 '
'(called by openqueue._apply_security).';

create function openqueue._apply_security()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform openqueue._apply_security_v4();
    if exists (select from pg_catalog.pg_roles as r where r.rolname = 'openqueue_worker') then
        execute 'grant execute on function openqueue.oq_nodes() to openqueue_worker';
    end if;
    -- On Citus (openqueue._distribute_view) openqueue_admin reads the views
    -- openqueue.jobs and openqueue.schedules through these functions.
    if exists (select from pg_catalog.pg_roles as r where r.rolname = 'openqueue_admin') then
        if pg_catalog.to_regprocedure('openqueue._jobs_rows()') is not null then
            execute 'grant execute on function openqueue._jobs_rows() to openqueue_admin';
        end if;
        if pg_catalog.to_regprocedure('openqueue._schedules_rows()') is not null then
            execute 'grant execute on function openqueue._schedules_rows() to openqueue_admin';
        end if;
    end if;
end;
$$;

comment on function openqueue._apply_security() is
'Internal: openqueue._apply_security_v4 (roles, ownership, SECURITY DEFINER, '
'grants of contract sections 6-8), then openqueue_worker may execute '
'oq_nodes (and, on Citus, openqueue_admin the functions behind the views). The installer runs it after the last migration on every run; '
'idempotent.';
$oq_0005$;
        insert into openqueue.schema_migrations (version, name)
        values (5, '0005_scale_out');
        raise notice 'openqueue: applied migration 0005_scale_out';
    end if;
    if v_current < 6 then
        execute $oq_0006$
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
$oq_0006$;
        insert into openqueue.schema_migrations (version, name)
        values (6, '0006_citus_contract');
        raise notice 'openqueue: applied migration 0006_citus_contract';
    end if;
    if v_current < 7 then
        execute $oq_0007$
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
$oq_0007$;
        insert into openqueue.schema_migrations (version, name)
        values (7, '0007_cheaper_hot_path');
        raise notice 'openqueue: applied migration 0007_cheaper_hot_path';
    end if;
    if v_current < 8 then
        execute $oq_0008$
-- OpenQueue schema version 8: the worker asks which of its queues have
-- flow-control limits (issue 6).
--
-- A lease that returns fewer jobs than it asked for means one of two
-- things: the queue is drained, or max_running or rate_limit held it back.
-- No notification says when a limited queue may lease again (a job that
-- finishes on another worker, a token that refills), so the worker runtime
-- retries such a queue on a short ladder: 50 ms, doubling up to its poll
-- interval. Until now it could not tell the two cases apart and ran the
-- ladder after every short lease: an idle worker woken for one job sent
-- about seven more, empty, lease calls over the next seconds, and as many
-- oq_next_run_at calls. oq_limited_queues tells it which of its queues have
-- a limit; it asks once at start and again at every poll, and runs the
-- ladder for those queues only.

create function openqueue.oq_limited_queues(queue_names text[])
returns text[]
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_limited text[];
begin
    if oq_limited_queues.queue_names is null then
        perform openqueue._raise_null('queue_names');
    end if;
    select coalesce(array_agg(q.queue_name order by q.queue_name), '{}') into v_limited
    from openqueue.queues as q
    where q.queue_name = any(oq_limited_queues.queue_names)
      and (q.max_running is not null or q.rate_limit is not null);
    return v_limited;
end;
$$;

comment on function openqueue.oq_limited_queues(text[]) is
'The queues among queue_names that have a max_running or a rate_limit '
'(oq_set_queue_limits), sorted; an empty array when none has. The worker '
'runtime retries a short lease of these queues on a short ladder, since no '
'notification says when they may lease again. Error 22004 for a NULL queue_names.';

revoke all on function openqueue.oq_limited_queues(text[]) from public;

-- ---------------------------------------------------------------------------
-- Security: openqueue_worker may call oq_limited_queues (the worker runtime
-- does). Wraps the previous _apply_security, as version 5 did, so that the
-- role lists stay where they are; the installer runs this one after the
-- last migration.
-- ---------------------------------------------------------------------------

alter function openqueue._apply_security() rename to _apply_security_v7;

comment on function openqueue._apply_security_v7() is
'Internal: the roles, ownership and grants of contract sections 6-8 and 10 '
'(called by openqueue._apply_security).';

create function openqueue._apply_security()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform openqueue._apply_security_v7();
    if exists (select from pg_catalog.pg_roles as r where r.rolname = 'openqueue_worker') then
        execute 'grant execute on function openqueue.oq_limited_queues(text[]) to openqueue_worker';
    end if;
end;
$$;

comment on function openqueue._apply_security() is
'Internal: openqueue._apply_security_v7 (roles, ownership, SECURITY DEFINER, '
'grants of contract sections 6-8 and 10), then openqueue_worker may execute '
'oq_limited_queues. The installer runs it after the last migration on every '
'run; idempotent.';
$oq_0008$;
        insert into openqueue.schema_migrations (version, name)
        values (8, '0008_limited_queues');
        raise notice 'openqueue: applied migration 0008_limited_queues';
    end if;
    if to_regprocedure('openqueue._apply_security()') is not null then
        perform openqueue._apply_security();
    end if;
end
$oq_install$;

commit;
