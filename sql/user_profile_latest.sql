-- grain: one row per user
-- The user's most recent profile (segment, model versions, profile vector) next to the
-- key behaviour features of the same as_of_date. Users without behaviour that day keep
-- their profile with null features.
with profiles as (
    select
        user_id,
        as_of_date,
        segment_id,
        fusion_version,
        encoder_version,
        profile_vec,
        row_number() over (partition by user_id order by as_of_date desc) as recency
    from gold.user_profiles
),

latest as (
    select user_id, as_of_date, segment_id, fusion_version, encoder_version, profile_vec
    from profiles
    where recency = 1
),

behaviour as (
    select
        user_id,
        as_of_date,
        views_30d,
        carts_30d,
        purchases_30d,
        spend_30d,
        purchase_rate_30d,
        active_days_30d,
        sessions_30d,
        days_since_last_event,
        days_since_last_purchase,
        top_categories_30d
    from silver.user_behaviour
)

select
    l.user_id,
    l.as_of_date,
    l.segment_id,
    l.fusion_version,
    l.encoder_version,
    b.views_30d,
    b.carts_30d,
    b.purchases_30d,
    b.spend_30d,
    b.purchase_rate_30d,
    b.active_days_30d,
    b.sessions_30d,
    b.days_since_last_event,
    b.days_since_last_purchase,
    try_element_at(b.top_categories_30d, 1) as top_category_30d,
    b.top_categories_30d,
    l.profile_vec
from latest as l
left join behaviour as b
    on b.user_id = l.user_id and b.as_of_date = l.as_of_date
