"""The feature dictionary of ``silver.user_behaviour``: one entry per column.

Analysts, the Feast feature views and the tests read the same definitions from here;
``python -m spark_jobs.silver.feature_dictionary > docs/features.md`` renders them. Windows:
the ``Nd`` window of as-of day D covers ``event_date`` in [D-(N-1), D] (UTC dates);
nothing dated after D ever reaches D's row.
"""

from __future__ import annotations

from dataclasses import dataclass

from spark_jobs.schemas import USER_BEHAVIOUR, USER_SEQUENCES


@dataclass(frozen=True)
class Feature:
    name: str
    type: str
    window: str
    definition: str
    null_meaning: str = "never null"


_NN = "never null"
_W = "window"


def _count(name: str, etype: str, n: int) -> Feature:
    return Feature(name, "bigint", f"{n}d", f"Number of `{etype}` events in the {n}-day window (events, not quantities).")


FEATURES: list[Feature] = [
    Feature("user_id", "string", "-", "The user (join key; pseudonymised when ingest pseudonymisation is on)."),
    Feature("as_of_date", "date", "-", "The day D the row describes, as of its end. One row per user per D for "
            "every user with at least one event in [D-29, D]. Partition column."),
    Feature("event_timestamp", "timestamp", "-", "End of the as-of day, UTC: D 23:59:59.999999 "
            "(as_of_date + 1 day - 1 microsecond). What Feast joins on (point in time)."),
    Feature("created_timestamp", "timestamp", "30d", "Newest `ingested_at` among the user's events in the 30-day "
            "window: when the row's inputs last changed. Deterministic, so a rebuild leaves identical rows; it "
            "moves forward when late data changes the row (Feast keeps the newest)."),
    _count("views_1d", "view", 1),
    _count("views_7d", "view", 7),
    _count("views_30d", "view", 30),
    _count("clicks_7d", "click", 7),
    _count("searches_7d", "search", 7),
    _count("carts_7d", "cart", 7),
    _count("carts_30d", "cart", 30),
    _count("favs_7d", "fav", 7),
    _count("favs_30d", "fav", 30),
    _count("purchases_7d", "purchase", 7),
    _count("purchases_30d", "purchase", 30),
    Feature("distinct_items_30d", "bigint", "30d", "Distinct non-null `item_id` over all events in the window (exact)."),
    Feature("distinct_categories_30d", "bigint", "30d", "Distinct non-null `category_id` over all events in the "
            "window (exact)."),
    Feature("distinct_queries_30d", "bigint", "30d", "Distinct non-null `query` strings (as stored, case-sensitive) "
            "in the window (exact)."),
    Feature("spend_30d", "double", "30d", "Sum of `price * coalesce(quantity, 1)` over purchase events with a price. "
            "0.0 when there is none."),
    Feature("avg_purchase_price_30d", "double", "30d", "Mean `price` of purchase events with a price.",
            "no priced purchase in the window"),
    Feature("cart_rate_30d", "double", "30d", "carts_30d / views_30d.", "views_30d = 0"),
    Feature("purchase_rate_30d", "double", "30d", "purchases_30d / views_30d.", "views_30d = 0"),
    Feature("cart_to_purchase_30d", "double", "30d", "purchases_30d / carts_30d (may exceed 1: purchases "
            "without a logged cart).", "carts_30d = 0"),
    Feature("days_since_last_event", "int", "30d", "D minus the date of the user's latest event on or before D "
            "(0..29, since the row exists only with an event in the window)."),
    Feature("days_since_last_purchase", "int", "30d", "D minus the date of the latest purchase in the 30-day "
            "window (the look-back stops at the window so a daily refresh reads 30 partitions).",
            "no purchase in the 30-day window"),
    Feature("active_days_30d", "bigint", "30d", "Distinct event dates in the window (1..30)."),
    Feature("sessions_30d", "bigint", "30d", "Sessions with at least one event in the window. A session is the "
            "source `session_id` when present; events without one are split by the idle-gap rule: a new "
            "session starts after more than `behaviour.session_gap_minutes` (30) minutes without an event of "
            "the user (the gap may cross midnight). A session straddling the window start counts once."),
    Feature("avg_session_events_30d", "double", "30d", "Events in the window / sessions_30d.",
            "sessions_30d = 0 (does not happen for an existing row)"),
    Feature("night_share_30d", "double", "30d", "Share of the window's events with a UTC hour in "
            "[`night_start_hour`, `night_end_hour`) = [0, 6).", "no event (does not happen for an existing row)"),
    Feature("top_categories_30d", "array<string>", "30d", "Up to 3 category ids by weighted interest: the sum of "
            "`behaviour.category_weights[event_type]` (purchase 8 > cart 4 > fav 2 > click 1 = view 1; search 0) "
            "over the window's events of that category. Highest first; ties broken by category id ascending; "
            "only positive interest. Empty array when none."),
    Feature("top_category_share_30d", "double", "30d", "Weighted interest of the first of top_categories_30d / "
            "weighted interest over all categories.", "no positive weighted interest in any category"),
    Feature("top_brand_share_30d", "double", "30d", "Same as top_category_share_30d over `brand`: the top brand's "
            "weighted interest / all brands' weighted interest.", "no positive weighted interest in any brand"),
]

SEQUENCE_FEATURES: list[Feature] = [
    Feature("user_id", "string", "-", "The user; same rows (users, as-of days) as silver.user_behaviour."),
    Feature("as_of_date", "date", "-", "The as-of day D. Partition column."),
    Feature("event_timestamp", "timestamp", "-", "D 23:59:59.999999 UTC, as in silver.user_behaviour."),
    Feature("created_timestamp", "timestamp", "30d", "Newest `ingested_at` among the events of the sequence."),
    Feature("item_ids", "array<string>", "30d", "Item ids of the user's last `behaviour.sequence_length` (50) "
            "events dated in [D-29, D], oldest first (ties in time by event_id); right-padded with \"\"; a "
            "missing id is \"\"."),
    Feature("category_ids", "array<string>", "30d", "Category ids of the same events, padded with \"\"."),
    Feature("event_types", "array<string>", "30d", "Event types of the same events, padded with \"\"."),
    Feature("gap_seconds", "array<float>", "30d", "Seconds since the previous event of the sequence; element 0 is "
            "0.0; padded with 0.0."),
    Feature("seq_len", "int", "30d", "Number of real (unpadded) events, 1..50."),
]


def by_name() -> dict[str, Feature]:
    return {f.name: f for f in FEATURES}


def _spark_type(field) -> str:
    return field.dataType.simpleString()


def check() -> list[str]:
    """Mismatches between the dictionary and the table schemas (empty when in sync)."""
    problems = []
    for entries, schema, table in ((FEATURES, USER_BEHAVIOUR, "silver.user_behaviour"),
                                   (SEQUENCE_FEATURES, USER_SEQUENCES, "silver.user_sequences")):
        names = [f.name for f in entries]
        if names != schema.fieldNames():
            problems.append(f"{table}: dictionary columns {names} != schema {schema.fieldNames()}")
            continue
        for f, field in zip(entries, schema.fields):
            if f.type != _spark_type(field):
                problems.append(f"{table}.{f.name}: dictionary type {f.type} != schema {_spark_type(field)}")
            if field.nullable != (f.null_meaning != _NN) and f.name not in ("created_timestamp",):
                problems.append(f"{table}.{f.name}: nullable={field.nullable} but null meaning {f.null_meaning!r}")
    return problems


def _table(entries: list[Feature]) -> list[str]:
    lines = ["| column | type | window | definition | null means |", "|---|---|---|---|---|"]
    for f in entries:
        definition = f.definition.replace("|", "\\|")
        lines.append(f"| `{f.name}` | {f.type} | {f.window} | {definition} | {f.null_meaning} |")
    return lines


def markdown() -> str:
    out = [
        "# Feature dictionary",
        "",
        "Generated by `python -m spark_jobs.silver.feature_dictionary` from `spark_jobs/silver/feature_dictionary.py`;",
        "do not edit by hand.",
        "",
        "Windows: the `Nd` window of as-of day D covers `event_date` in [D-(N-1), D], UTC dates. Only events",
        "dated on or before D count; nothing from a later day leaks into D's row. Counts are exact; distinct",
        "counts are exact (not sketches).",
        "",
        "## silver.user_behaviour",
        "",
        "One row per user per `as_of_date`, for every user with an event in the 30-day window.",
        "",
        *_table(FEATURES),
        "",
        "## silver.user_sequences",
        "",
        "One row per user per `as_of_date` (the same keys as silver.user_behaviour): the encoder's input.",
        "",
        *_table(SEQUENCE_FEATURES),
        "",
        "## silver.user_daily (internal: the daily partial aggregates)",
        "",
        "One row per (user_id, kind, key, event_date), partitioned by `event_date`: what one day of a user's",
        "events contributes. kind 0 (key \"\") carries the day's counts per event type, events, night events,",
        "spend, purchase prices, category/brand interest totals, idle-gap session starts within the day, the",
        "first and last idle-gap event times (microseconds) and, as `created_timestamp`, the latest",
        "`ingested_at` of the day's events; kinds 1-5 (item, category, query, source session, brand) carry the",
        "key's summed interest weight in `score`. `persona build` computes the as-of day's partial from its one",
        "bronze partition and rolls the 30 partials of the window up into silver.user_behaviour; a partial is",
        "recomputed when its bronze partition has newer `ingested_at` (late data), so a backfill over an old",
        "range updates exactly the affected days. Idle-gap sessions crossing midnight are joined at roll-up",
        "time, which is why `behaviour.session_gap_minutes` must be shorter than a day.",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
