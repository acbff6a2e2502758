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
