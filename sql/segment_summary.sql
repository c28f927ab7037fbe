-- grain: one row per segment_id per as_of_date
-- Segment size and share of that day's profiled users, means of key behaviour features,
-- and the three most common top categories among the segment's users (ties broken by
-- category id, so the ranking is the same on every engine).
with profiles as (
    select user_id, as_of_date, segment_id
    from gold.user_profiles
),

behaviour as (
    select
        user_id,
        as_of_date,
        views_30d,
        purchases_30d,
        spend_30d,
        purchase_rate_30d,
        active_days_30d,
        days_since_last_event,
        try_element_at(top_categories_30d, 1) as top_category_30d
    from silver.user_behaviour
),

members as (
    select
        p.segment_id,
        p.as_of_date,
        p.user_id,
        b.views_30d,
        b.purchases_30d,
        b.spend_30d,
        b.purchase_rate_30d,
        b.active_days_30d,
        b.days_since_last_event,
        b.top_category_30d
    from profiles as p
    left join behaviour as b
        on b.user_id = p.user_id and b.as_of_date = p.as_of_date
),

sizes as (
    select
        segment_id,
        as_of_date,
        count(*) as users,
        avg(views_30d) as avg_views_30d,
        avg(purchases_30d) as avg_purchases_30d,
        avg(spend_30d) as avg_spend_30d,
        avg(purchase_rate_30d) as avg_purchase_rate_30d,
        avg(active_days_30d) as avg_active_days_30d,
        avg(days_since_last_event) as avg_days_since_last_event,
        sum(case when days_since_last_event < 7 then 1 else 0 end) as active_7d_users
    from members
    group by segment_id, as_of_date
),

category_counts as (
    select segment_id, as_of_date, top_category_30d as category_id, count(*) as users
    from members
    where top_category_30d is not null
    group by segment_id, as_of_date, top_category_30d
),

category_ranks as (
    select
        segment_id,
        as_of_date,
        category_id,
        row_number() over (
            partition by segment_id, as_of_date order by users desc, category_id asc
        ) as category_rank
    from category_counts
),

top_categories as (
    select
        segment_id,
        as_of_date,
        max(case when category_rank = 1 then category_id end) as top_category_1,
        max(case when category_rank = 2 then category_id end) as top_category_2,
        max(case when category_rank = 3 then category_id end) as top_category_3
    from category_ranks
    where category_rank <= 3
    group by segment_id, as_of_date
)

select
    s.segment_id,
    s.as_of_date,
    s.users,
    cast(s.users as double) / sum(s.users) over (partition by s.as_of_date) as user_share,
    s.avg_views_30d,
    s.avg_purchases_30d,
    s.avg_spend_30d,
    s.avg_purchase_rate_30d,
    s.avg_active_days_30d,
    s.avg_days_since_last_event,
    cast(s.active_7d_users as double) / s.users as active_7d_share,
    t.top_category_1,
    t.top_category_2,
    t.top_category_3
from sizes as s
left join top_categories as t
    on t.segment_id = s.segment_id and t.as_of_date = s.as_of_date
