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
