-- grain: one row per feature per as_of_date
-- Population stability index (PSI) of each behaviour feature against the previous
-- as_of_date present in silver.user_behaviour: sum over bins of
-- (actual - expected) * ln(actual / expected), bin shares floored at 1e-4. Counts and
-- money use fixed power-of-two bins, rates ten bins of width 0.1, null is its own bin;
-- fixed bins keep the result identical on every engine (no approximate quantiles).
-- The first day has no previous day: psi and drift are null there.
-- Rule of thumb: psi < 0.1 stable, < 0.25 moderate, else major.
with dates as (
    select distinct as_of_date
    from silver.user_behaviour
),

days as (
    select as_of_date, lag(as_of_date) over (order by as_of_date) as previous_date
    from dates
),

features as (
    select feature, kind
    from values
        ('views_30d', 'count'),
        ('carts_30d', 'count'),
        ('purchases_30d', 'count'),
        ('spend_30d', 'count'),
        ('active_days_30d', 'count'),
        ('sessions_30d', 'count'),
        ('days_since_last_event', 'count'),
        ('cart_rate_30d', 'rate'),
        ('purchase_rate_30d', 'rate'),
        ('night_share_30d', 'rate'),
        ('top_category_share_30d', 'rate')
    as f (feature, kind)
),

feature_values as (
    -- one scan of the table, one row per user per day per feature
    select
        b.as_of_date,
        f.feature,
        f.kind,
        case f.feature
            when 'views_30d' then cast(b.views_30d as double)
            when 'carts_30d' then cast(b.carts_30d as double)
            when 'purchases_30d' then cast(b.purchases_30d as double)
            when 'spend_30d' then cast(b.spend_30d as double)
            when 'active_days_30d' then cast(b.active_days_30d as double)
            when 'sessions_30d' then cast(b.sessions_30d as double)
            when 'days_since_last_event' then cast(b.days_since_last_event as double)
            when 'cart_rate_30d' then cast(b.cart_rate_30d as double)
            when 'purchase_rate_30d' then cast(b.purchase_rate_30d as double)
            when 'night_share_30d' then cast(b.night_share_30d as double)
            when 'top_category_share_30d' then cast(b.top_category_share_30d as double)
        end as value
    from silver.user_behaviour as b
    cross join features as f
),

binned as (
    select
        as_of_date,
        feature,
        case
            when value is null then -1
            when kind = 'rate' then least(cast(floor(value * 10) as int), 9)
            -- counts and money
            when value <= 0 then 0
            when value < 2 then 1
            when value < 4 then 2
            when value < 8 then 3
            when value < 16 then 4
            when value < 32 then 5
            when value < 64 then 6
            when value < 128 then 7
            when value < 256 then 8
            when value < 512 then 9
            else 10
        end as bin
    from feature_values
),

bin_counts as (
    select as_of_date, feature, bin, count(*) as n
    from binned
    group by as_of_date, feature, bin
),

totals as (
    select as_of_date, feature, sum(n) as users
    from bin_counts
    group by as_of_date, feature
),

shares as (
    select c.as_of_date, c.feature, c.bin, cast(c.n as double) / t.users as share
    from bin_counts as c
    inner join totals as t
        on t.as_of_date = c.as_of_date and t.feature = c.feature
),

current_shares as (
    select d.as_of_date, s.feature, s.bin, s.share
    from shares as s
    inner join days as d
        on d.as_of_date = s.as_of_date
    where d.previous_date is not null
),

previous_shares as (
    select d.as_of_date, s.feature, s.bin, s.share
    from shares as s
    inner join days as d
        on d.previous_date = s.as_of_date
),

pairs as (
    select
        coalesce(c.as_of_date, p.as_of_date) as as_of_date,
        coalesce(c.feature, p.feature) as feature,
        greatest(coalesce(c.share, 0.0), 0.0001) as actual,
        greatest(coalesce(p.share, 0.0), 0.0001) as expected
    from current_shares as c
    full outer join previous_shares as p
        on p.as_of_date = c.as_of_date and p.feature = c.feature and p.bin = c.bin
),

psi as (
    select as_of_date, feature, sum((actual - expected) * ln(actual / expected)) as psi
    from pairs
    group by as_of_date, feature
)

select
    t.feature,
    t.as_of_date,
    d.previous_date,
    t.users,
    pt.users as previous_users,
    x.psi,
    case
        when x.psi is null then null
        when x.psi < 0.1 then 'stable'
        when x.psi < 0.25 then 'moderate'
        else 'major'
    end as drift
from totals as t
inner join days as d
    on d.as_of_date = t.as_of_date
left join totals as pt
    on pt.as_of_date = d.previous_date and pt.feature = t.feature
left join psi as x
    on x.as_of_date = t.as_of_date and x.feature = t.feature
