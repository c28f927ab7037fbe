-- grain: one row per event_date
-- The view -> cart -> purchase funnel of the day: event counts, users at each step, and
-- step conversion rates among users (a user counts once per step per day).
with user_steps as (
    select
        event_date,
        user_id,
        max(case when event_type = 'view' then 1 else 0 end) as viewed,
        max(case when event_type = 'cart' then 1 else 0 end) as carted,
        max(case when event_type = 'purchase' then 1 else 0 end) as purchased,
        sum(case when event_type = 'view' then 1 else 0 end) as views,
        sum(case when event_type = 'cart' then 1 else 0 end) as carts,
        sum(case when event_type = 'purchase' then 1 else 0 end) as purchases
    from bronze.events
    group by event_date, user_id
),

steps as (
    select
        event_date,
        count(*) as active_users,
        sum(views) as views,
        sum(carts) as carts,
        sum(purchases) as purchases,
        sum(viewed) as viewers,
        sum(carted) as carters,
        sum(purchased) as purchasers,
        sum(viewed * carted) as viewers_who_carted,
        sum(carted * purchased) as carters_who_purchased,
        sum(viewed * purchased) as viewers_who_purchased
    from user_steps
    group by event_date
)

select
    event_date,
    active_users,
    views,
    carts,
    purchases,
    viewers,
    carters,
    purchasers,
    cast(viewers_who_carted as double) / nullif(viewers, 0) as view_to_cart_rate,
    cast(carters_who_purchased as double) / nullif(carters, 0) as cart_to_purchase_rate,
    cast(viewers_who_purchased as double) / nullif(viewers, 0) as view_to_purchase_rate
from steps
