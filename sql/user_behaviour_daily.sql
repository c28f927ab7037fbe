-- grain: one row per user per as_of_date
-- The windowed behaviour features of silver.user_behaviour next to what the user did on
-- that very day (from bronze.events). Users with no event that day have zero day counts.
with behaviour as (
    select
        user_id,
        as_of_date,
        views_7d,
        carts_7d,
        purchases_7d,
        views_30d,
        purchases_30d,
        spend_30d,
        active_days_30d,
        sessions_30d,
        days_since_last_event,
        purchase_rate_30d
    from silver.user_behaviour
),

day_events as (
    select
        user_id,
        event_date,
        count(*) as events_1d,
        sum(case when event_type = 'view' then 1 else 0 end) as views_1d,
        sum(case when event_type = 'cart' then 1 else 0 end) as carts_1d,
        sum(case when event_type = 'purchase' then 1 else 0 end) as purchases_1d,
        sum(
            case when event_type = 'purchase' then coalesce(price, 0.0) * coalesce(quantity, 1) else 0.0 end
        ) as revenue_1d,
        count(distinct session_id) as sessions_1d
    from bronze.events
    group by user_id, event_date
)

select
    b.user_id,
    b.as_of_date,
    coalesce(d.events_1d, 0) > 0 as is_active_1d,
    coalesce(d.events_1d, 0) as events_1d,
    coalesce(d.views_1d, 0) as views_1d,
    coalesce(d.carts_1d, 0) as carts_1d,
    coalesce(d.purchases_1d, 0) as purchases_1d,
    coalesce(d.revenue_1d, 0.0) as revenue_1d,
    coalesce(d.sessions_1d, 0) as sessions_1d,
    b.views_7d,
    b.carts_7d,
    b.purchases_7d,
    b.views_30d,
    b.purchases_30d,
    b.spend_30d,
    b.active_days_30d,
    b.sessions_30d,
    b.days_since_last_event,
    b.purchase_rate_30d
from behaviour as b
left join day_events as d
    on d.user_id = b.user_id and d.event_date = b.as_of_date
