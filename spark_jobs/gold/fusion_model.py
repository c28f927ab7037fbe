"""The fusion model's pure parts: which inputs, how they are transformed, weighted and
reduced, the pipeline stages that do it, and how they are found again in a fitted model.

Input:  column names and numbers (the USER_BEHAVIOUR schema, an embedding size, the
        fitting day's explained variances); no DataFrame is read here.
Output: feature lists, the preprocessing SQL statement, block weights, the k rule, the
        clustering-space size, unfitted and fitted Spark ML stages, and views of a fitted
        fusion ``PipelineModel``.
Grain:  one fusion model version (fitted on one day: one row per user).

Why the inputs and stages are what they are: docs/fusion.md.
"""

from __future__ import annotations

from typing import Iterable

from pyspark.ml import PipelineModel, Transformer
from pyspark.ml.clustering import BisectingKMeans
from pyspark.ml.feature import (
    ElementwiseProduct,
    Imputer,
    ImputerModel,
    PCAModel,
    SQLTransformer,
    StandardScaler,
    VectorAssembler,
    VectorSlicer,
)
from pyspark.ml.linalg import Vectors
from pyspark.sql.types import DoubleType, FloatType, IntegerType, LongType

from spark_jobs.schemas import USER_BEHAVIOUR

KEY_COLUMNS = ("user_id", "as_of_date", "event_timestamp", "created_timestamp")
_NUMERIC = (LongType, IntegerType, DoubleType, FloatType)

# Non-negative and heavy-tailed besides the integer counts: money, per-session sizes and
# day counts. log1p keeps one whale from owning a principal component.
_LOG1P_EXTRA = (
    "spend_30d",
    "avg_purchase_price_30d",
    "avg_session_events_30d",
    "days_since_last_event",
    "days_since_last_purchase",
)

# Volume-free inputs (why: docs/fusion.md). Every count except the one volume
# measure, views_30d, enters as a log rate per the views of its own window:
# log1p(count) - log1p(base), i.e. log((count + 1) / (base + 1)). Views are ~90 % of
# events, so "per view" is "per unit of activity" and reads plainly ("carts per view").
# views_7d / views_1d become the share of the month's (week's) views that were recent
# (trend); sessions_30d becomes sessions per active day (a habit, not a volume).
RELATIVE_TO = {
    "views_7d": "views_30d",
    "views_1d": "views_7d",
    **{c: "views_7d" for c in ("clicks_7d", "searches_7d", "carts_7d", "favs_7d", "purchases_7d")},
    **{c: "views_30d" for c in ("carts_30d", "favs_30d", "purchases_30d", "distinct_items_30d",
                                "distinct_categories_30d", "distinct_queries_30d", "spend_30d")},
    "sessions_30d": "active_days_30d",
}

# Columns produced inside the pipeline.
RAW_VEC = "features_raw"
STD_VEC = "features_std"
WEIGHTED_VEC = "features_weighted"
PCA_VEC = "pca"
SEGMENT = "segment_id"
# Spark's BisectingKMeans splits a cluster by nudging its centre by 1e-4 x its norm: the
# centre of centred PCA scores has norm ~1e-15, so the first split never happens and
# every k yields one cluster. A constant extra coordinate gives the centre a norm
# without changing any distance between users.
ANCHOR_COL = "cluster_anchor"
ANCHOR = 1.0
CLUSTER_VEC = "cluster_features"
WHITE_VEC = "cluster_scores"


def behaviour_features() -> list[str]:
    """Numeric behaviour columns that feed the fusion, in schema order."""
    return [
        f.name
        for f in USER_BEHAVIOUR.fields
        if f.name not in KEY_COLUMNS and isinstance(f.dataType, _NUMERIC)
    ]


def log1p_features() -> list[str]:
    """Counts (every integer-valued LongType column) plus money and durations."""
    longs = {f.name for f in USER_BEHAVIOUR.fields if isinstance(f.dataType, LongType)}
    return [c for c in behaviour_features() if c in longs or c in _LOG1P_EXTRA]


def relative_features() -> dict[str, str]:
    """``{feature: base}`` of the inputs expressed per their base (both in the schema)."""
    feats = set(behaviour_features())
    return {c: b for c, b in RELATIVE_TO.items() if c in feats and b in feats}


def embedding_feature_names(dim: int) -> list[str]:
    return [f"user_emb[{i}]" for i in range(dim)]


def _f(c: str) -> str:  # transformed (log1p/filled) column
    return f"f__{c}"


def input_column(c: str) -> str:
    """The column of behaviour feature ``c`` after log1p, fills and imputation: what the
    assembler reads (and what ``persona segments`` describes)."""
    return f"x__{c}"


def _e(i: int) -> str:
    return f"emb__{i}"


def preprocess_statement(
    features: list[str],
    log1p_cols: Iterable[str],
    fills: dict[str, float],
    emb_dim: int,
    relative: dict[str, str] | None = None,
) -> str:
    """The SQLTransformer statement: every model input as a double column.

    ``relative`` maps a count to the count it is expressed per (``log1p(c) -
    log1p(base)``: a log rate, see RELATIVE_TO); the embedding is L2-normalised.
    Kept as SQL so it is saved inside the PipelineModel: a reloaded model applies exactly
    the transforms it was fitted with.
    """
    logs = set(log1p_cols)
    relative = relative or {}

    def value(c: str) -> str:
        expr = f"CAST(`{c}` AS DOUBLE)"
        if c in fills:
            expr = f"coalesce({expr}, CAST({float(fills[c])!r} AS DOUBLE))"
        if c in logs or c in relative:
            expr = f"log1p({expr})"
        return expr

    parts = []
    for c in features:
        expr = value(c)
        if c in relative:
            expr = f"({expr} - {value(relative[c])})"
        parts.append(f"{expr} AS `{_f(c)}`")
    if emb_dim:
        # Direction only: a sequence encoder's norm can follow sequence length (volume).
        norm = "greatest(sqrt(aggregate(user_emb, CAST(0 AS DOUBLE), (a, x) -> a + CAST(x AS DOUBLE) * CAST(x AS DOUBLE))), 1e-12)"
        for i in range(emb_dim):
            parts.append(f"CAST(user_emb[{i}] AS DOUBLE) / {norm} AS `{_e(i)}`")
    return "SELECT *, " + ", ".join(parts) + " FROM __THIS__"


def choose_k(explained_all: list[float], threshold: float, max_k: int) -> int:
    """Smallest k whose cumulative explained variance reaches ``threshold``, capped."""
    total = 0.0
    for i, v in enumerate(explained_all, start=1):
        total += v
        if total >= threshold - 1e-12:
            return max(1, min(i, max_k))
    return max(1, min(len(explained_all), max_k))


def block_weights(n_behaviour: int, emb_dim: int, embedding_weight: float) -> list[float]:
    """Per-input weights: 1 for behaviour features, sqrt(w * n_behaviour / dim) for each
    embedding dimension, so the embedding block's variance is w x the behaviour block's."""
    per_dim = (embedding_weight * n_behaviour / emb_dim) ** 0.5 if emb_dim else 0.0
    return [1.0] * n_behaviour + [per_dim] * emb_dim


def cluster_components(comp_var: list[float], mean_input_var: float) -> int:
    """How many leading components the segments are found on: those whose variance
    exceeds an average input's (Kaiser's rule), at least min(2, k)."""
    above = sum(1 for v in comp_var if v > mean_input_var * (1 + 1e-9))
    return max(min(2, len(comp_var)), above)


# ---------------------------------------------------------------- pipeline stages
def preprocess_stages(
    features: list[str],
    log1p_cols: Iterable[str],
    fills: dict[str, float],
    emb_dim: int,
    relative: dict[str, str],
    weights: list[float],
) -> list:
    """Unfitted stages from a fusion-input row to ``WEIGHTED_VEC``: the preprocessing SQL,
    median imputation, the assembler (behaviour features then embedding dimensions),
    the scaler and the block weights."""
    return [
        SQLTransformer(statement=preprocess_statement(features, log1p_cols, fills, emb_dim, relative)),
        Imputer(strategy="median", inputCols=[_f(c) for c in features],
                outputCols=[input_column(c) for c in features]),
        VectorAssembler(inputCols=[input_column(c) for c in features] + [_e(i) for i in range(emb_dim)],
                        outputCol=RAW_VEC, handleInvalid="error"),
        StandardScaler(withMean=True, withStd=True, inputCol=RAW_VEC, outputCol=STD_VEC),
        ElementwiseProduct(scalingVec=Vectors.dense(weights), inputCol=STD_VEC, outputCol=WEIGHTED_VEC),
    ]


def clustering_stages(pca: PCAModel, comp_var: list[float], n_cluster: int) -> list[Transformer]:
    """From ``WEIGHTED_VEC`` to the clustering space ``CLUSTER_VEC``: the PCA scores, the
    leading ``n_cluster`` of them each divided by its sd (whitened), plus the constant
    ANCHOR coordinate."""
    slicer = VectorSlicer(inputCol=PCA_VEC, outputCol=WHITE_VEC + "_raw", indices=list(range(n_cluster)))
    whitener = ElementwiseProduct(
        scalingVec=Vectors.dense([1.0 / max(v, 1e-12) ** 0.5 for v in comp_var[:n_cluster]]),
        inputCol=WHITE_VEC + "_raw", outputCol=WHITE_VEC,
    )
    anchor = SQLTransformer(statement=f"SELECT *, CAST({ANCHOR!r} AS DOUBLE) AS `{ANCHOR_COL}` FROM __THIS__")
    to_cluster = VectorAssembler(inputCols=[WHITE_VEC, ANCHOR_COL], outputCol=CLUSTER_VEC)
    return [pca, slicer, whitener, anchor, to_cluster]


def segmenter(n: int, seed: int, max_iter: int) -> BisectingKMeans:
    """The unfitted segment stage: ``n`` segments on ``CLUSTER_VEC`` into ``SEGMENT``."""
    return BisectingKMeans(k=n, seed=seed, maxIter=max_iter, featuresCol=CLUSTER_VEC, predictionCol=SEGMENT)


# ---------------------------------------------------------------- a fitted model's parts
def find_stage(model: PipelineModel, kind: type):
    """The first stage of type ``kind`` (e.g. ``PCAModel``) in a fitted pipeline."""
    return next(st for st in model.stages if isinstance(st, kind))


def _writes(stage, column: str) -> bool:
    return stage.hasParam("outputCol") and stage.isDefined("outputCol") and stage.getOrDefault("outputCol") == column


def stages_through(model: PipelineModel, last) -> PipelineModel:
    """The leading stages of ``model`` up to and including the first one ``last(stage)``
    accepts: a part of the fitted pipeline that can be applied on its own."""
    for i, st in enumerate(model.stages):
        if last(st):
            return PipelineModel(stages=model.stages[: i + 1])
    raise ValueError("the fusion pipeline has no such stage")


def preprocess_model(model: PipelineModel) -> PipelineModel:
    """The stages up to the block weights: raw input -> features_raw / _std / _weighted."""
    return stages_through(model, lambda st: _writes(st, WEIGHTED_VEC))


def model_inputs(model: PipelineModel) -> PipelineModel:
    """The stages up to the imputation: raw input -> the ``input_column`` of every
    behaviour feature (log1p, fills, medians), what the scaler saw."""
    return stages_through(model, lambda st: isinstance(st, ImputerModel))


def pca_stage(model: PipelineModel) -> PCAModel:
    """The fitted PCAModel inside a fusion PipelineModel."""
    return find_stage(model, PCAModel)
