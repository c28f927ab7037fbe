"""Profile fusion: behaviour aggregates + sequence embedding -> profile vector + segment.

Input:  ``silver.user_behaviour`` and ``gold.user_embeddings`` joined on
        ``(user_id, as_of_date)``; one row per user per as_of_date (inner join: a user
        without an embedding that day has no profile that day, counted in the summary).
Output: ``gold.user_profiles``, one row per user per as_of_date, partitioned by
        ``as_of_date``; a run owns exactly one day and replaces it (``replaceWhere``).
Model:  one Spark ML ``PipelineModel`` per fusion version, saved at
        ``<home>/models/fusion/<version>/pipeline`` with ``metrics.json`` beside it:

          SQLTransformer  volume-free inputs (below): log rates of counts, log1p of money
                          and durations, semantic fills, L2-normalised embedding -> columns
          Imputer         median of the fitting day for remaining nulls (values in the model
                          and in metrics.json)
          VectorAssembler behaviour features then embedding dimensions
          StandardScaler  withMean, withStd
          ElementwiseProduct  block weight of the embedding dimensions (below)
          PCA(k)          k = smallest reaching ``fusion.variance_threshold``, capped by max_k;
                          its scores are ``profile_vec``
          VectorSlicer + ElementwiseProduct: the clustering space (below)
          SQLTransformer + VectorAssembler: plus a constant coordinate (why: ANCHOR)
          BisectingKMeans n segments chosen by silhouette over [min_segments, max_segments],
                          best of ``fusion.restarts`` seeds per n (lowest cost)

Why the inputs are volume-free. A profile should say *how* a user behaves; how much is one
fact among many. Raw (even log1p) counts all move with activity, so activity owned the
leading components and the segments split users by volume: on ``persona generate`` data
(400 users, 30 days, 4 planted groups that differ in rates, not volume) segments vs
groups had ARI 0.009. Now exactly one input measures volume (``views_30d``, log1p; views
are ~90 % of events) plus ``active_days_30d`` (visit regularity); every other count enters
as a log rate per the views of its own window, ``log1p(c) - log1p(views)`` (RELATIVE_TO:
carts per view, searches per view, spend per view, distinct categories per view...),
7-day and 1-day views as the recent share of the longer window (trend), sessions per
active day. Rates and shares already in the table stay as they are.

The embedding block is L2-normalised (its direction: a sequence encoder's norm can follow
sequence length, i.e. volume) and weighted so that its total variance is
``fusion.embedding_weight`` x the behaviour block's (each dimension x
sqrt(w * n_behaviour / dim)): the balance between "what the user does" and "what the
encoder saw" is a setting, not an accident of the encoder's dimension. Default 0.25: the
encoder's embedding encodes which categories and items a user moves through, which is
near-orthogonal to behaviour style (on the generator data each dimension explains <= 3 %
of the planted-group variance), and at w >= 0.5 its dimensions outweigh the behaviour
directions that separate users (measured below).

Why segments are found on a whitened subspace of the profile. Even volume-free, the
planted groups differ along several independent directions (buying rates; night share;
search and category breadth), while one correlated block (the buying rates) is loud:
unwhitened, 2-means splits that block and silhouette prefers 2 segments (ARI ~0.27).
The clustering space is therefore the leading components whose variance exceeds an
average input's (Kaiser's rule: shared structure, not one feature's noise), each divided
by its sd (Mahalanobis distance there, the same metric ``persona explain`` decomposes).
``profile_vec`` stays the unwhitened PCA scores (stable, variance-ordered axes).

Why restarts. Spark's BisectingKMeans starts each split from the centre +- 1e-4 x |centre|
x a uniform[0,1) vector, i.e. always from about the same hyperplane (across the
diagonal), and 2-means from one start lands in a poor local optimum often (single seeds on
the generator data: ARI 0.24 .. 0.97). Keeping, per segment count, the lowest-cost of
``fusion.restarts`` seeds is k-means' usual n_init and makes the result stable.

Measured, whole pipeline on ``persona generate`` data (generate -> ingest -> build ->
train-encoder -> embed -> fuse, tiny encoder, max 6 segments), ARI of segments vs the
planted groups:  400 users x 30 days: 0.009 before -> 0.84 now;  300 users x 30 days:
-0.0001 -> 0.95 (4 segments chosen by silhouette both times). A numpy replica of Spark's
bisecting on the same inputs: embedding_weight 0 / 0.25 / 0.5 / 1.0 -> 0.97 / 0.96 /
0.72 / 0.49 (400 users); unwhitened scores ~0.57 at 4 segments, silhouette picking 2.
With 60 users x 10 days (15 per group, ~80 events each) the rates are too noisy for any
of these (~0.4): the planted groups need weeks of activity to show.

Later days apply the latest saved version fitted on the same encoder version, so profile
axes and segment ids stay comparable from day to day; ``refit=True`` fits and saves a
new version. A day whose embeddings come from an encoder no fusion model was fitted on
gets a new version, said so in the summary (``fit_reason``): there is nothing older
that could be applied to a new embedding space.

Feature list: spark_jobs/feature_dictionary.py (owned by the behaviour helper) did not
exist when this was written, so the numeric behaviour features are derived here from the
USER_BEHAVIOUR schema (every numeric column except keys; arrays excluded). One source of
truth either way: the schema module.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, FloatType, IntegerType, LongType

from core.dates import parse_date
from core.errors import InputError, NotBuiltError
from core.fs import writable_file
from core.registry import ModelRegistry, write_metrics
from spark_jobs import delta_io
from spark_jobs.schemas import USER_BEHAVIOUR, USER_PROFILES

BEHAVIOUR_TABLE = "silver.user_behaviour"
EMBEDDINGS_TABLE = "gold.user_embeddings"
PROFILES_TABLE = "gold.user_profiles"
MODEL_KIND = "fusion"

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

# Volume-free inputs (why: the module docstring). Every count except the one volume
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
EXPORT_FORMATS = ("csv", "json", "parquet")


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


def _x(c: str) -> str:  # imputed column, what the assembler reads
    return f"x__{c}"


def _e(i: int) -> str:
    return f"emb__{i}"


# ---------------------------------------------------------------- pure transforms
def fusion_input(behaviour: DataFrame, embeddings: DataFrame) -> DataFrame:
    """Behaviour rows with that day's ``user_emb`` and ``encoder_version`` attached.

    Grain: one row per (user_id, as_of_date) present in both tables. The behaviour row's
    ``event_timestamp`` is the one the profile carries.
    """
    emb = embeddings.select("user_id", "as_of_date", "user_emb", "encoder_version")
    return behaviour.join(emb, ["user_id", "as_of_date"], "inner")


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


def profiles_from_scored(scored: DataFrame, fusion_version: str) -> DataFrame:
    """Pipeline output -> gold.user_profiles rows (one per user per as_of_date)."""
    from pyspark.ml.functions import vector_to_array

    return scored.select(
        "user_id",
        "as_of_date",
        "event_timestamp",
        F.current_timestamp().alias("created_timestamp"),
        vector_to_array(F.col(PCA_VEC), dtype="float32").alias("profile_vec"),
        F.col(SEGMENT).cast("int").alias("segment_id"),
        F.lit(fusion_version).alias("fusion_version"),
        "encoder_version",
    )


def choose_k(explained_all: list[float], threshold: float, max_k: int) -> int:
    """Smallest k whose cumulative explained variance reaches ``threshold``, capped."""
    total = 0.0
    for i, v in enumerate(explained_all, start=1):
        total += v
        if total >= threshold - 1e-12:
            return max(1, min(i, max_k))
    return max(1, min(len(explained_all), max_k))


# ---------------------------------------------------------------- model store
def fusion_registry(settings) -> ModelRegistry:
    """Fusion versions ``v1``, ``v2``, ... under ``<home>/models/fusion``, each a saved
    Spark ``PipelineModel`` (``pipeline/``) and its ``metrics.json``, written last."""
    return ModelRegistry(settings.models_root(MODEL_KIND), "counter")


def list_versions(settings) -> list[str]:
    """Saved fusion versions with a complete model, oldest first."""
    return fusion_registry(settings).versions()


def latest_version(settings, encoder_version: str | None = None) -> str | None:
    """The newest saved version, or the newest fitted on ``encoder_version``'s embeddings."""
    registry = fusion_registry(settings)
    for version in reversed(registry.versions()):
        if encoder_version is None or registry.read_metrics(version).get("encoder_version") == encoder_version:
            return version
    return None


_MODEL_CACHE: dict[str, tuple] = {}


def load_fusion(settings, version: str):
    """``(PipelineModel, metrics)`` of a saved version; cached per process."""
    from pyspark.ml import PipelineModel

    vdir = settings.model_dir(MODEL_KIND, version)
    metrics_path = vdir / "metrics.json"
    if not metrics_path.is_file():
        raise NotBuiltError(f"fusion model {version} not found under {vdir.parent} (run `persona fuse`)")
    key = str(vdir)
    stamp = metrics_path.stat().st_mtime_ns
    hit = _MODEL_CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1], hit[2]
    metrics = json.loads(metrics_path.read_text())
    model = PipelineModel.load(str(vdir / "pipeline"))
    _MODEL_CACHE[key] = (stamp, model, metrics)
    return model, metrics


def preprocess_model(model):
    """The stages up to the block weights: raw input -> features_raw / _std / _weighted."""
    from pyspark.ml import PipelineModel

    return PipelineModel(stages=model.stages[:5])


def pca_stage(model):
    """The fitted PCAModel inside a fusion PipelineModel."""
    from pyspark.ml.feature import PCAModel

    return next(st for st in model.stages if isinstance(st, PCAModel))


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


# ---------------------------------------------------------------- fitting
def fit_fusion(spark: SparkSession, df: DataFrame, fusion, as_of: dt.date) -> tuple:
    """Fit the whole pipeline on ``df`` (one day's fusion input). Returns (model, metrics).

    k and the segment count are chosen here from the data; the returned metrics are what
    metrics.json records.
    """
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.clustering import BisectingKMeans
    from pyspark.ml.evaluation import ClusteringEvaluator
    from pyspark.ml.feature import (
        PCA,
        ElementwiseProduct,
        Imputer,
        SQLTransformer,
        StandardScaler,
        VectorAssembler,
        VectorSlicer,
    )
    from pyspark.ml.linalg import Vectors

    features = behaviour_features()
    logs = log1p_features()
    kinds = df.select(F.size("user_emb").alias("d"), "encoder_version").distinct().collect()
    dims = sorted({r["d"] for r in kinds})
    if len(dims) != 1 or dims[0] <= 0:
        raise InputError(f"embeddings on {as_of} have inconsistent sizes {dims}; re-run `persona embed`")
    emb_dim = int(dims[0])
    encoders = sorted({r["encoder_version"] for r in kinds})
    if len(encoders) != 1:
        raise InputError(f"embeddings on {as_of} come from several encoder versions {encoders}; re-run `persona embed`")

    fills: dict[str, float] = {"days_since_last_purchase": float(fusion.never_days)}
    # The Imputer cannot compute a median of nothing: a column that is null for every user
    # that day (e.g. no purchases at all) gets a recorded constant instead.
    null_counts = df.select(
        [F.count(F.when(F.col(c).isNull() | F.isnan(F.col(c).cast("double")), 1)).alias(c) for c in features]
        + [F.count(F.lit(1)).alias("__n")]
    ).first().asDict()
    n_rows = int(null_counts.pop("__n"))
    if n_rows < 3:
        raise InputError(f"only {n_rows} users on {as_of}: too few to fit the fusion model")
    for c, nulls in null_counts.items():
        if nulls == n_rows and c not in fills:
            fills[c] = 0.0

    relative = relative_features()
    sqlt = SQLTransformer(statement=preprocess_statement(features, logs, fills, emb_dim, relative))
    imputer = Imputer(strategy="median", inputCols=[_f(c) for c in features], outputCols=[_x(c) for c in features])
    assembler = VectorAssembler(
        inputCols=[_x(c) for c in features] + [_e(i) for i in range(emb_dim)], outputCol=RAW_VEC, handleInvalid="error"
    )
    scaler = StandardScaler(withMean=True, withStd=True, inputCol=RAW_VEC, outputCol=STD_VEC)
    weights = block_weights(len(features), emb_dim, fusion.embedding_weight)
    weighter = ElementwiseProduct(scalingVec=Vectors.dense(weights), inputCol=STD_VEC, outputCol=WEIGHTED_VEC)
    pre = Pipeline(stages=[sqlt, imputer, assembler, scaler, weighter]).fit(df)
    std = pre.transform(df).select(WEIGHTED_VEC).cache()
    try:
        d = len(features) + emb_dim
        # All components once, for the variance curve and the choice of k.
        full = PCA(k=d, inputCol=WEIGHTED_VEC, outputCol=PCA_VEC).fit(std)
        explained_all = [float(v) for v in full.explainedVariance.toArray()]
        k = choose_k(explained_all, fusion.variance_threshold, min(fusion.max_k, d))
        pca = PCA(k=k, inputCol=WEIGHTED_VEC, outputCol=PCA_VEC).fit(std)
        scaler_std = pre.stages[3].std.toArray()
        # Trace of the weighted standardised covariance: sum of squared weights of the
        # non-constant inputs; each score's variance is its ratio times that.
        total_var = float(sum(w * w for w, sd in zip(weights, scaler_std) if sd > 0))
        comp_var = [float(v) * total_var for v in pca.explainedVariance.toArray()]

        # Clustering space (why: module docstring): the components that carry more
        # variance than an average input (shared structure, Kaiser's rule), each divided
        # by its sd, so a direction that separates users counts as much as the loud one.
        n_inputs = sum(1 for sd in scaler_std if sd > 0)
        n_cluster = cluster_components(comp_var, total_var / max(n_inputs, 1))
        slicer = VectorSlicer(inputCol=PCA_VEC, outputCol=WHITE_VEC + "_raw", indices=list(range(n_cluster)))
        whitener = ElementwiseProduct(
            scalingVec=Vectors.dense([1.0 / max(v, 1e-12) ** 0.5 for v in comp_var[:n_cluster]]),
            inputCol=WHITE_VEC + "_raw", outputCol=WHITE_VEC,
        )
        anchor = SQLTransformer(statement=f"SELECT *, CAST({ANCHOR!r} AS DOUBLE) AS `{ANCHOR_COL}` FROM __THIS__")
        to_cluster = VectorAssembler(inputCols=[WHITE_VEC, ANCHOR_COL], outputCol=CLUSTER_VEC)
        space = [pca, slicer, whitener, anchor, to_cluster]
        scored = PipelineModel(stages=space).transform(std).select(CLUSTER_VEC).cache()
        try:
            sample = scored
            if n_rows > fusion.selection_sample_rows:
                sample = scored.sample(fraction=fusion.selection_sample_rows / n_rows, seed=fusion.seed).cache()
            n_sample = sample.count()
            evaluator = ClusteringEvaluator(
                featuresCol=CLUSTER_VEC, predictionCol=SEGMENT, metricName="silhouette", distanceMeasure="squaredEuclidean"
            )

            def fit_bkm(n: int, seed: int, data):
                return BisectingKMeans(
                    k=n, seed=seed, maxIter=fusion.max_iter, featuresCol=CLUSTER_VEC, predictionCol=SEGMENT
                ).fit(data)

            by_n: dict[int, float] = {}
            fitted: dict[int, object] = {}
            seed_of: dict[int, int] = {}
            for n in range(max(2, fusion.min_segments), max(2, fusion.max_segments) + 1):
                if n >= n_sample:
                    break
                # Restarts: Spark starts every split from the same kind of nudge, and
                # 2-means from one start lands in a poor local optimum often (measured:
                # module docstring); keep the restart with the lowest within-segment cost.
                best = None
                for r in range(max(1, fusion.restarts)):
                    cand = fit_bkm(n, fusion.seed + r, sample)
                    if len(cand.clusterCenters()) < 2:
                        continue
                    cost = float(cand.summary.trainingCost)
                    if best is None or cost < best[0] - 1e-9 * abs(best[0]):
                        best = (cost, cand, fusion.seed + r)
                if best is None:
                    continue
                by_n[n] = float(evaluator.evaluate(best[1].transform(sample)))
                fitted[n], seed_of[n] = best[1], best[2]
            if not by_n:
                raise InputError(f"cannot form 2 or more segments from {n_rows} users on {as_of}")
            # Highest silhouette; ties go to fewer segments (simpler to read).
            best_n = max(by_n, key=lambda n: (round(by_n[n], 12), -n))
            bkm = fitted[best_n]
            if sample is not scored:
                bkm = fit_bkm(best_n, seed_of[best_n], scored)
                sample.unpersist()
        finally:
            scored.unpersist()
    finally:
        std.unpersist()

    model = PipelineModel(stages=list(pre.stages) + space + [bkm])
    surrogate = pre.stages[1].surrogateDF.first().asDict()
    metrics = {
        "k": k,
        "explained_variance": [float(v) for v in pca.explainedVariance.toArray()],
        "explained_variance_all": explained_all,
        "cumulative_explained_variance": float(sum(pca.explainedVariance.toArray())),
        "component_variance": comp_var,
        "embedding_weight": fusion.embedding_weight,
        "block_weights": {"behaviour": 1.0, "embedding": weights[-1] if emb_dim else 0.0},
        "variance_threshold": fusion.variance_threshold,
        "max_k": fusion.max_k,
        "cluster_components": n_cluster,
        "cluster_seed": seed_of[best_n],
        "restarts": fusion.restarts,
        "relative_to": relative,
        "silhouette": by_n[best_n],
        "silhouette_by_n": {str(n): s for n, s in sorted(by_n.items())},
        "n_segments": len(bkm.clusterCenters()),
        "input_columns": features + ["user_emb"],
        "feature_names": features + embedding_feature_names(emb_dim),
        "behaviour_features": features,
        "log1p_columns": logs,
        "fills": fills,
        "imputed_values": {c: float(surrogate[_f(c)]) for c in features if surrogate.get(_f(c)) is not None},
        "embedding_dim": emb_dim,
        "fitted_as_of": as_of.isoformat(),
        "fitted_rows": n_rows,
        "encoder_version": encoders[0],
        "seed": fusion.seed,
        "max_iter": fusion.max_iter,
        "spark_version": spark.version,
    }
    return model, metrics


def save_fusion(settings, model, metrics: dict) -> str:
    """Save under a new version (staged, then renamed into place with metrics.json last)."""
    registry = fusion_registry(settings)
    version = registry.new_version()
    metrics = dict(metrics, version=version, created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    with registry.staging(version) as tmp:
        model.write().overwrite().save(str(tmp / "pipeline"))
        write_metrics(tmp, metrics)
    # The fitted object is what was saved (the reload test checks that): applying it
    # directly spares reading eight stages back from disk.
    final = settings.model_dir(MODEL_KIND, version)
    _MODEL_CACHE[str(final)] = ((final / "metrics.json").stat().st_mtime_ns, model, metrics)
    return version


# ---------------------------------------------------------------- reading inputs
def resolve_as_of(requested, available: list[dt.date], what: str) -> dt.date:
    """The requested day if present, else the latest; a clear error when there is none."""
    if not available:
        raise NotBuiltError(f"{what} is empty")
    day = parse_date(requested, "the as-of day")
    if day is None:
        return available[-1]
    if day not in available:
        raise InputError(
            f"no {what} rows for as-of {day} (available: {available[0]} .. {available[-1]}, {len(available)} days)"
        )
    return day


def read_inputs(spark: SparkSession, settings) -> tuple[DataFrame, DataFrame]:
    behaviour = delta_io.read(spark, settings.table(BEHAVIOUR_TABLE), f"{BEHAVIOUR_TABLE}: run `persona behaviour`")
    embeddings = delta_io.read(spark, settings.table(EMBEDDINGS_TABLE), f"{EMBEDDINGS_TABLE}: run `persona embed`")
    return behaviour, embeddings


def input_dates(spark: SparkSession, settings) -> list[dt.date]:
    """Days present in both behaviour and embeddings."""
    read_inputs(spark, settings)  # the NotBuiltError naming the missing step
    b = set(delta_io.partition_values(spark, settings.table(BEHAVIOUR_TABLE), "as_of_date"))
    e = set(delta_io.partition_values(spark, settings.table(EMBEDDINGS_TABLE), "as_of_date"))
    return sorted(b & e)


def read_profiles(spark: SparkSession, settings) -> DataFrame:
    return delta_io.read(spark, settings.table(PROFILES_TABLE), f"{PROFILES_TABLE}: run `persona fuse`")


def profile_dates(spark: SparkSession, settings) -> list[dt.date]:
    read_profiles(spark, settings)
    return delta_io.partition_values(spark, settings.table(PROFILES_TABLE), "as_of_date")


def day_input(spark: SparkSession, settings, as_of: dt.date) -> DataFrame:
    behaviour, embeddings = read_inputs(spark, settings)
    day = F.lit(as_of)
    return fusion_input(behaviour.where(F.col("as_of_date") == day), embeddings.where(F.col("as_of_date") == day))


def check_compatible(df: DataFrame, metrics: dict, as_of: dt.date) -> None:
    """Refuse to project embeddings the saved model was not fitted on."""
    rows = df.select(F.size("user_emb").alias("d"), "encoder_version").distinct().collect()
    dims = sorted({r["d"] for r in rows})
    encoders = sorted({r["encoder_version"] for r in rows})
    version = metrics.get("version", "?")
    if dims != [metrics["embedding_dim"]]:
        raise InputError(
            f"embeddings on {as_of} have size {dims} but fusion model {version} expects "
            f"{metrics['embedding_dim']}; run `persona fuse --refit`"
        )
    if encoders != [metrics["encoder_version"]]:
        raise InputError(
            f"embeddings on {as_of} come from encoder {', '.join(encoders)} but fusion model {version} was "
            f"fitted on {metrics['encoder_version']}; run `persona fuse --refit`"
        )


# ---------------------------------------------------------------- the job
def run_fuse(spark: SparkSession, settings, as_of=None, refit: bool = False) -> dict:
    """Fuse one day (default: the latest with behaviour and embeddings) into gold.user_profiles.

    Applies the latest saved fusion version fitted on the same encoder version as the
    day's embeddings. It fits (and saves) a new version first when ``refit`` is set or
    when there is none for that encoder: a new encoder means a new embedding space, so
    a fusion model fitted on another one cannot be applied; the summary's
    ``fit_reason`` says which. Re-running a day replaces that day only.
    """
    t0 = time.perf_counter()
    day = resolve_as_of(as_of, input_dates(spark, settings), "behaviour+embeddings")
    behaviour, _ = read_inputs(spark, settings)
    df = day_input(spark, settings, day).cache()
    try:
        users = df.count()
        if users == 0:
            raise InputError(f"no user has both behaviour and an embedding on {day}; run `persona embed --as-of {day}`")
        behaviour_users = behaviour.where(F.col("as_of_date") == F.lit(day)).count()
        encoders = sorted(r[0] for r in df.select("encoder_version").distinct().collect())
        if len(encoders) != 1:
            raise InputError(
                f"embeddings on {day} come from several encoder versions {encoders}; re-run `persona embed --as-of {day}`"
            )
        version = None if refit else latest_version(settings, encoders[0])
        fitted = version is None
        fit_reason = None
        if refit:
            fit_reason = "refit requested"
        elif fitted:
            fit_reason = ("no fusion model yet" if latest_version(settings) is None
                          else f"no fusion model for encoder {encoders[0]} yet")
        fit_seconds = 0.0
        if fitted:
            t_fit = time.perf_counter()
            model, metrics = fit_fusion(spark, df, settings.fusion, day)
            version = save_fusion(settings, model, metrics)
            fit_seconds = time.perf_counter() - t_fit
        model, metrics = load_fusion(settings, version)
        check_compatible(df, metrics, day)
        out = profiles_from_scored(model.transform(df), version).cache()
        try:
            path = settings.table(PROFILES_TABLE)
            delta_io.replace_where(out, path, USER_PROFILES, "as_of_date", day, day)
            sizes = {int(r[0]): int(r[1]) for r in out.groupBy("segment_id").count().collect()}
        finally:
            out.unpersist()
    finally:
        df.unpersist()
    return {
        "as_of": day.isoformat(),
        "users": users,
        "users_without_embedding": max(0, behaviour_users - users),
        "fusion_version": version,
        "fitted": fitted,
        "fit_reason": fit_reason,
        "fit_seconds": round(fit_seconds, 2),
        "k": metrics["k"],
        "explained_variance": round(metrics["cumulative_explained_variance"], 4),
        "n_segments": metrics["n_segments"],
        "silhouette": round(metrics["silhouette"], 4),
        "segment_sizes": dict(sorted(sizes.items())),
        "table": settings.table(PROFILES_TABLE),
        "model_dir": str(settings.model_dir(MODEL_KIND, version)),
        "seconds": round(time.perf_counter() - t0, 2),
    }


run = run_fuse


# ---------------------------------------------------------------- export
def check_export_target(fmt: str, out) -> tuple[str, Path]:
    """Validate format and path before any Spark work: one clear line on failure."""
    fmt = (fmt or "").lower()
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    return fmt, writable_file(out)


def export_frame(profiles: DataFrame, behaviour: DataFrame) -> DataFrame:
    """One row per profile: keys, segment, profile_vec, versions, then behaviour columns."""
    extra = [f.name for f in USER_BEHAVIOUR.fields if f.name not in KEY_COLUMNS]
    b = behaviour.select("user_id", "as_of_date", *extra)
    p = profiles.select("user_id", "as_of_date", "segment_id", "profile_vec", "fusion_version", "encoder_version")
    return p.join(b, ["user_id", "as_of_date"], "left").orderBy("user_id")


def export_profiles(spark: SparkSession, settings, fmt: str, out, as_of=None) -> dict:
    """Write one day's profiles to a single local file (csv, JSON lines or parquet)."""
    fmt, path = check_export_target(fmt, out)
    day = resolve_as_of(as_of, profile_dates(spark, settings), PROFILES_TABLE)
    profiles = read_profiles(spark, settings).where(F.col("as_of_date") == F.lit(day))
    behaviour = delta_io.read(spark, settings.table(BEHAVIOUR_TABLE), BEHAVIOUR_TABLE)
    frame = export_frame(profiles, behaviour.where(F.col("as_of_date") == F.lit(day)))
    if fmt == "csv":
        # CSV has no arrays: they travel as JSON text ("[0.12,-1.5]").
        arrays = [f.name for f in frame.schema.fields if f.dataType.typeName() == "array"]
        frame = frame.select(*[F.to_json(c).alias(c) if c in arrays else F.col(c) for c in frame.columns])
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        # One file, written by one task: fine for a per-day profile export, and it keeps
        # the driver's memory out of it (no toPandas).
        writer = frame.coalesce(1).write.mode("overwrite")
        if fmt == "csv":
            # RFC 4180 quoting (doubled quotes), which pandas, DuckDB and spreadsheets read.
            writer.option("header", "true").option("escape", '"').csv(str(tmp))
        elif fmt == "json":
            writer.option("ignoreNullFields", "false").json(str(tmp))
        else:
            writer.parquet(str(tmp))
        parts = sorted(p for p in tmp.iterdir() if p.name.startswith("part-"))
        if len(parts) != 1:
            raise InputError(f"export produced {len(parts)} files instead of one")
        os.replace(parts[0], path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = profiles.count()
    return {"as_of": day.isoformat(), "format": fmt, "path": str(path), "rows": rows, "bytes": path.stat().st_size}
