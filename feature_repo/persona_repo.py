"""persona's Feast declarations, in order: entity -> data sources -> feature views ->
feature services. Declarations only: Feast imports every ``.py`` in this folder, so
nothing here imports the project (field lists are literal; a test checks them against
``spark_jobs/schemas.py``).

Input: the Delta tables the Spark jobs write (one row per user per ``as_of_date``,
``event_timestamp`` = end of the as-of day UTC, ``created_timestamp`` = compute time).
Output: feature views keyed by ``user_id``.

Where the tables are: ``$PERSONA__WAREHOUSE`` when set (object store URI or path),
else ``$PERSONA_HOME/warehouse`` (``PERSONA_HOME`` defaults to ``<repo>/.persona``,
what ``persona`` uses when run from the repo root). ``persona apply`` sets both from
its settings; the registry stores the resolved paths, so serving needs no env at all.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.table_format import DeltaFormat
from feast.types import Array, Float32, Float64, Int32, Int64, String
from feast.value_type import ValueType

_HOME = os.environ.get("PERSONA_HOME") or str(Path(__file__).resolve().parent.parent / ".persona")
WAREHOUSE = (os.environ.get("PERSONA__WAREHOUSE") or f"{Path(_HOME).resolve()}/warehouse").rstrip("/")
# The same knob as settings.feast.ttl_days (PERSONA__FEAST__TTL_DAYS overrides both).
TTL = timedelta(days=int(os.environ.get("PERSONA__FEAST__TTL_DAYS", "30")))
OWNER = "profiles-team@persona"

# ---- entity ----------------------------------------------------------------------
user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A shopper, keyed by the (optionally pseudonymised) user id of the events.",
    owner=OWNER,
)


# ---- data sources (Delta through Feast's Spark offline store) ----------------------
def _delta(name: str, layer_table: str, description: str) -> SparkSource:
    layer, table = layer_table.split(".")
    return SparkSource(
        name=name,
        path=f"{WAREHOUSE}/{layer}/{table}",
        table_format=DeltaFormat(),
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
        # Partition pruning: point-in-time joins and materialization only read the
        # as_of_date partitions inside their time range, not the whole table.
        date_partition_column="as_of_date",
        date_partition_column_format="%Y-%m-%d",
        description=description,
        owner=OWNER,
    )


user_behaviour_source = _delta(
    "user_behaviour_source", "silver.user_behaviour",
    "silver.user_behaviour: windowed behaviour aggregates, one row per user per as_of_date.",
)
user_embeddings_source = _delta(
    "user_embeddings_source", "gold.user_embeddings",
    "gold.user_embeddings: sequence-encoder embedding, one row per user per as_of_date.",
)
user_profiles_source = _delta(
    "user_profiles_source", "gold.user_profiles",
    "gold.user_profiles: fused profile vector and segment, one row per user per as_of_date.",
)

# ---- feature views -----------------------------------------------------------------
_COUNTS = ["views_1d", "views_7d", "views_30d", "clicks_7d", "searches_7d", "carts_7d",
           "carts_30d", "favs_7d", "favs_30d", "purchases_7d", "purchases_30d",
           "distinct_items_30d", "distinct_categories_30d", "distinct_queries_30d"]

user_behaviour = FeatureView(
    name="user_behaviour",
    entities=[user],
    ttl=TTL,
    schema=[
        *[Field(name=c, dtype=Int64) for c in _COUNTS],
        Field(name="spend_30d", dtype=Float64),
        Field(name="avg_purchase_price_30d", dtype=Float64),
        Field(name="cart_rate_30d", dtype=Float64),
        Field(name="purchase_rate_30d", dtype=Float64),
        Field(name="cart_to_purchase_30d", dtype=Float64),
        Field(name="days_since_last_event", dtype=Int32),
        Field(name="days_since_last_purchase", dtype=Int32),
        Field(name="active_days_30d", dtype=Int64),
        Field(name="sessions_30d", dtype=Int64),
        Field(name="avg_session_events_30d", dtype=Float64),
        Field(name="night_share_30d", dtype=Float64),
        Field(name="top_categories_30d", dtype=Array(String)),
        Field(name="top_category_share_30d", dtype=Float64),
        Field(name="top_brand_share_30d", dtype=Float64),
    ],
    source=user_behaviour_source,
    online=True,
    description="Behaviour aggregates over 1/7/30-day windows ending at the as-of day.",
    owner=OWNER,
    tags={"owner": OWNER, "layer": "silver", "grain": "user x as_of_date"},
)

user_embedding = FeatureView(
    name="user_embedding",
    entities=[user],
    ttl=TTL,
    schema=[
        Field(name="user_emb", dtype=Array(Float32)),
        Field(name="encoder_version", dtype=String),
    ],
    source=user_embeddings_source,
    online=True,
    description="Learned sequence embedding of the user's recent events.",
    owner=OWNER,
    tags={"owner": OWNER, "layer": "gold", "grain": "user x as_of_date"},
)

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=TTL,
    schema=[
        Field(name="profile_vec", dtype=Array(Float32)),
        Field(name="segment_id", dtype=Int32),
        Field(name="fusion_version", dtype=String),
    ],
    source=user_profiles_source,
    online=True,
    description="Fused low-dimensional profile (scaler + PCA) and its segment.",
    owner=OWNER,
    tags={"owner": OWNER, "layer": "gold", "grain": "user x as_of_date"},
)

# ---- feature services ----------------------------------------------------------------
recommender_v1 = FeatureService(
    name="recommender_v1",
    features=[user_behaviour, user_embedding, user_profile],
    description="Everything persona knows about a user: aggregates, embedding, profile.",
    owner=OWNER,
    tags={"owner": OWNER, "version": "1"},
)

ranking_light_v1 = FeatureService(
    name="ranking_light_v1",
    features=[
        user_profile[["profile_vec", "segment_id"]],
        user_behaviour[["views_7d", "carts_7d", "purchases_30d", "spend_30d",
                        "days_since_last_event"]],
    ],
    description="What a latency-sensitive ranker needs: profile vector, segment, a few counts.",
    owner=OWNER,
    tags={"owner": OWNER, "version": "1"},
)
