"""The behaviour oracle: silver.user_behaviour's columns computed in DuckDB straight from
the definitions in docs/features.md, one 30-day window of raw events per as-of day (no
daily partials, no run/segment tricks: a different algorithm from the Spark job's).

Frozen here, apart from bench.behaviour's comparator: a benchmark may make its SQL
faster, a test oracle must not change. Grain: one row per user per as-of day with an
event in the window.
"""

from __future__ import annotations


def behaviour_sql(source: str, days: str, settings) -> str:
    """DuckDB SQL computing silver.user_behaviour's columns for every as-of day in the
    relation ``days`` (column ``as_of``) from the events relation ``source``, straight
    from the definitions in docs/features.md (no partial aggregates, no tricks)."""
    b = settings.behaviour
    weights = " ".join(f"WHEN '{t}' THEN {float(w)}" for t, w in b.category_weights.items())
    gap_us = b.session_gap_minutes * 60 * 1_000_000
    return f"""
    WITH e AS (
      SELECT *, CAST(event_ts AS DATE) AS d, epoch_us(event_ts) AS us,
             CASE event_type {weights} ELSE 0.0 END AS w
      FROM {source}),
    -- sessions over the whole log: source id, else a new session after an idle gap
    g AS (
      SELECT *, lag(us) OVER (PARTITION BY user_id ORDER BY us, event_id) AS prev_us
      FROM e WHERE session_id IS NULL),
    gs AS (
      SELECT event_id, 'g' || CAST(sum(CASE WHEN prev_us IS NULL OR us - prev_us > {gap_us} THEN 1 ELSE 0 END)
             OVER (PARTITION BY user_id ORDER BY us, event_id) AS VARCHAR) AS gkey
      FROM g),
    es AS (
      SELECT e.*, coalesce('s' || e.session_id, gs.gkey) AS skey FROM e LEFT JOIN gs USING (event_id)),
    w AS (
      SELECT CAST(days.as_of AS DATE) AS as_of, es.* FROM {days} AS days
      JOIN es ON es.d BETWEEN CAST(days.as_of AS DATE) - 29 AND CAST(days.as_of AS DATE)),
    base AS (
      SELECT user_id, as_of,
        max(ingested_at) AS created_timestamp,
        count(*) FILTER (event_type = 'view' AND d = as_of) AS views_1d,
        count(*) FILTER (event_type = 'view' AND d > as_of - 7) AS views_7d,
        count(*) FILTER (event_type = 'view') AS views_30d,
        count(*) FILTER (event_type = 'click' AND d > as_of - 7) AS clicks_7d,
        count(*) FILTER (event_type = 'search' AND d > as_of - 7) AS searches_7d,
        count(*) FILTER (event_type = 'cart' AND d > as_of - 7) AS carts_7d,
        count(*) FILTER (event_type = 'cart') AS carts_30d,
        count(*) FILTER (event_type = 'fav' AND d > as_of - 7) AS favs_7d,
        count(*) FILTER (event_type = 'fav') AS favs_30d,
        count(*) FILTER (event_type = 'purchase' AND d > as_of - 7) AS purchases_7d,
        count(*) FILTER (event_type = 'purchase') AS purchases_30d,
        count(DISTINCT item_id) AS distinct_items_30d,
        count(DISTINCT category_id) AS distinct_categories_30d,
        count(DISTINCT query) AS distinct_queries_30d,
        coalesce(sum(price * coalesce(quantity, 1)) FILTER (event_type = 'purchase'), 0.0) AS spend_30d,
        avg(price) FILTER (event_type = 'purchase') AS avg_purchase_price_30d,
        CAST(as_of - max(d) AS INTEGER) AS days_since_last_event,
        CAST(as_of - max(d) FILTER (event_type = 'purchase') AS INTEGER) AS days_since_last_purchase,
        count(DISTINCT d) AS active_days_30d,
        count(DISTINCT skey) AS sessions_30d,
        count(*) AS n,
        count(*) FILTER (hour(event_ts) >= {b.night_start_hour} AND hour(event_ts) < {b.night_end_hour}) AS night
      FROM w GROUP BY user_id, as_of),
    cs AS (SELECT user_id, as_of, category_id, sum(w) AS score FROM w
           WHERE category_id IS NOT NULL GROUP BY ALL),
    ct AS (SELECT user_id, as_of,
             list(category_id ORDER BY score DESC, category_id) FILTER (score > 0) AS cats,
             sum(score) AS total, max(score) AS top FROM cs GROUP BY ALL),
    bs AS (SELECT user_id, as_of, brand, sum(w) AS score FROM w WHERE brand IS NOT NULL GROUP BY ALL),
    bt AS (SELECT user_id, as_of, sum(score) AS total, max(score) AS top FROM bs GROUP BY ALL)
    SELECT base.*,
      CASE WHEN views_30d > 0 THEN carts_30d / views_30d END AS cart_rate_30d,
      CASE WHEN views_30d > 0 THEN purchases_30d / views_30d END AS purchase_rate_30d,
      CASE WHEN carts_30d > 0 THEN purchases_30d / carts_30d END AS cart_to_purchase_30d,
      n / sessions_30d AS avg_session_events_30d,
      night / n AS night_share_30d,
      coalesce(ct.cats[1:3], []) AS top_categories_30d,
      CASE WHEN ct.total > 0 THEN ct.top / ct.total END AS top_category_share_30d,
      CASE WHEN bt.total > 0 THEN bt.top / bt.total END AS top_brand_share_30d,
      CAST(base.as_of AS TIMESTAMP) + INTERVAL 1 DAY - INTERVAL 1 MICROSECOND AS event_timestamp
    FROM base LEFT JOIN ct USING (user_id, as_of) LEFT JOIN bt USING (user_id, as_of)
    """
