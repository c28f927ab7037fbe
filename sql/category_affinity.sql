-- grain: one row per category_id per day
-- How many users have the category among their top 3 (and as their top 1) as of that
-- day (silver.user_behaviour), next to that day's purchases in it (bronze.events).
-- A category appears when it has either; the other side's counts are then zero.
with top3 as (
    select
        as_of_date,
        user_id,
        try_element_at(top_categories_30d, 1) as top_1,
        explode(slice(top_categories_30d, 1, 3)) as category_id
    from silver.user_behaviour
),

user_categories as (
    select distinct as_of_date, user_id, category_id, top_1 = category_id as is_top_1
    from top3
),

affinity as (
    select
        as_of_date,
        category_id,
        count(*) as users_top3,
        sum(case when is_top_1 then 1 else 0 end) as users_top1
    from user_categories
    group by as_of_date, category_id
),

purchases as (
    select
        event_date,
        category_id,
        count(*) as purchases,
        count(distinct user_id) as purchasers,
        sum(coalesce(price, 0.0) * coalesce(quantity, 1)) as revenue
    from bronze.events
    where event_type = 'purchase' and category_id is not null
    group by event_date, category_id
)

select
    coalesce(a.category_id, p.category_id) as category_id,
    coalesce(a.as_of_date, p.event_date) as day,
    coalesce(a.users_top3, 0) as users_top3,
    coalesce(a.users_top1, 0) as users_top1,
    coalesce(p.purchases, 0) as purchases,
    coalesce(p.purchasers, 0) as purchasers,
    coalesce(p.revenue, 0.0) as revenue
from affinity as a
full outer join purchases as p
    on p.category_id = a.category_id and p.event_date = a.as_of_date
