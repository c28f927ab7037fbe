"""The warehouse's tables, without pyspark: layer, name, partition column and grain.

The Spark schemas of these tables live in ``spark_jobs.schemas`` (one ``StructType``
each, keyed by the same names); this module is what code that never touches Spark
(the SQL catalogue, the tests, the Feast side) reads instead.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYERS = ("bronze", "silver", "gold")

# The canonical behaviour event types (what ingest accepts, what the encoder embeds).
EVENT_TYPES = ("view", "click", "search", "cart", "fav", "purchase")

# The longest behaviour window in days: an as-of day D reads event dates [D-29, D].
LONGEST_WINDOW = 30


@dataclass(frozen=True)
class Table:
    name: str  # layer.table
    partition_by: str
    grain: str

    @property
    def layer(self) -> str:
        return self.name.partition(".")[0]


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("bronze.events", "event_date", "one row per behaviour event"),
    Table("bronze.events_quarantine", "ingest_date", "one row per rejected input record, with why"),
    Table("silver.user_behaviour", "as_of_date", "one row per user per as-of day"),
    Table("silver.user_sequences", "as_of_date", "one row per user per as-of day"),
    Table("silver.user_daily", "event_date", "one row per (user, kind, key, event day): daily partials"),
    Table("gold.user_embeddings", "as_of_date", "one row per user per as-of day"),
    Table("gold.user_profiles", "as_of_date", "one row per user per as-of day"),
)}

# The per-(user, as-of day) snapshot tables Feast serves and retention applies to.
SNAPSHOT_TABLES = ("silver.user_behaviour", "silver.user_sequences", "gold.user_embeddings", "gold.user_profiles")
