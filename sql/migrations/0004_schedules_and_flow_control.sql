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
