-- OpenQueue schema version 4: recurring schedules and flow control
-- (CONTRACT sections 7 and 8).
--
-- (helpers: the header lists what this migration adds, one bullet each)

-- ===========================================================================
-- Section 7: recurring schedules (oq_schedule, oq_unschedule, oq_cron_next,
-- oq_tick, openqueue.schedules)
-- ===========================================================================

-- (schedules: your SQL goes here)

-- ===========================================================================
-- Section 8: flow control (oq_pause_queue, oq_resume_queue,
-- oq_set_queue_limits, oq_lease with limits, oq_stats.paused)
-- ===========================================================================

-- (flow control: your SQL goes here)

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
