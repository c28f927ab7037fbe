-- grain: one row per cohort_week per weeks_since
-- Users are grouped by the (Monday-starting) week of their first event; for each later
-- week, the share of the cohort with at least one event in it. weeks_since = 0 is the
-- first week itself (retention 1.0 by construction).
with active_days as (
    select distinct user_id, event_date
    from bronze.events
),

cohorts as (
    select user_id, cast(date_trunc('week', min(event_date)) as date) as cohort_week
    from active_days
    group by user_id
),

cohort_sizes as (
    select cohort_week, count(*) as cohort_users
    from cohorts
    group by cohort_week
),

activity as (
    select
        c.cohort_week,
        a.user_id,
        datediff(cast(date_trunc('week', a.event_date) as date), c.cohort_week) div 7 as weeks_since
    from active_days as a
    inner join cohorts as c
        on c.user_id = a.user_id
),

retained as (
    select cohort_week, weeks_since, count(distinct user_id) as active_users
    from activity
    group by cohort_week, weeks_since
)

select
    r.cohort_week,
    r.weeks_since,
    s.cohort_users,
    r.active_users,
    cast(r.active_users as double) / s.cohort_users as retention
from retained as r
inner join cohort_sizes as s
    on s.cohort_week = r.cohort_week
