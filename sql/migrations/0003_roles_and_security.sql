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
