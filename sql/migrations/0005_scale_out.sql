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
