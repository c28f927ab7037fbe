"""Fitting one fusion model version on one day's fusion input, in named steps.

Input:  one day's fusion input (one row per user: the behaviour columns, ``user_emb``,
        ``encoder_version``) and the ``fusion`` settings.
Output: ``(PipelineModel, metrics)``: the fitted pipeline (its stages: docs/fusion.md)
        and what ``metrics.json`` records about the fit.
Grain:  one model per call, fitted on one row per user of the fitting day.

The steps, in order: describe the input (embedding size, encoder version, constants for
all-null columns) -> fit the preprocessing (SQL, imputer, scaler, block weights) ->
choose k and fit PCA -> the clustering space (whitened leading components) -> choose
the segment count by silhouette, best of several restarts each -> the model and its
metrics. Why each step is what it is: docs/fusion.md.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import BisectingKMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import PCA, ImputerModel, PCAModel, StandardScalerModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.errors import InputError
from spark_jobs.gold.fusion_model import (
    CLUSTER_VEC,
    PCA_VEC,
    SEGMENT,
    WEIGHTED_VEC,
    _f,
    behaviour_features,
    block_weights,
    choose_k,
    cluster_components,
    clustering_stages,
    embedding_feature_names,
    find_stage,
    log1p_features,
    preprocess_stages,
    relative_features,
    segmenter,
)


@dataclass(frozen=True)
class FitInput:
    """What the fit knows about the day before fitting anything."""

    features: list[str]
    log1p_cols: list[str]
    relative: dict[str, str]
    fills: dict[str, float]
    emb_dim: int
    encoder_version: str
    rows: int


@dataclass(frozen=True)
class Reduction:
    """The fitted PCA and the variances the later steps and the metrics need."""

    pca: PCAModel
    k: int
    explained_all: list[float]
    # Variance of each kept score: its explained ratio times the total variance.
    comp_var: list[float]
    total_var: float
    # Inputs that are not constant on the fitting day.
    n_inputs: int


@dataclass(frozen=True)
class Segmentation:
    model: BisectingKMeansModel
    n: int
    seed: int
    silhouette_by_n: dict[int, float]


def describe_input(df: DataFrame, fusion, as_of: dt.date) -> FitInput:
    """One embedding size and one encoder version, enough users, and the fills."""
    features = behaviour_features()
    kinds = df.select(F.size("user_emb").alias("d"), "encoder_version").distinct().collect()
    dims = sorted({r["d"] for r in kinds})
    if len(dims) != 1 or dims[0] <= 0:
        raise InputError(f"embeddings on {as_of} have inconsistent sizes {dims}; re-run `persona embed`")
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
    return FitInput(features, log1p_features(), relative_features(), fills, int(dims[0]), encoders[0], n_rows)


def fit_preprocess(df: DataFrame, inp: FitInput, weights: list[float]) -> PipelineModel:
    """Raw fusion input -> ``WEIGHTED_VEC`` (standardised, embedding block weighted)."""
    stages = preprocess_stages(inp.features, inp.log1p_cols, inp.fills, inp.emb_dim, inp.relative, weights)
    return Pipeline(stages=stages).fit(df)


def fit_reduction(std: DataFrame, pre: PipelineModel, weights: list[float], fusion) -> Reduction:
    """PCA on the weighted inputs with k the smallest reaching the variance threshold."""
    d = len(weights)
    # All components once, for the variance curve and the choice of k.
    full = PCA(k=d, inputCol=WEIGHTED_VEC, outputCol=PCA_VEC).fit(std)
    explained_all = [float(v) for v in full.explainedVariance.toArray()]
    k = choose_k(explained_all, fusion.variance_threshold, min(fusion.max_k, d))
    pca = PCA(k=k, inputCol=WEIGHTED_VEC, outputCol=PCA_VEC).fit(std)
    scaler_std = find_stage(pre, StandardScalerModel).std.toArray()
    # Trace of the weighted standardised covariance: sum of squared weights of the
    # non-constant inputs; each score's variance is its ratio times that.
    total_var = float(sum(w * w for w, sd in zip(weights, scaler_std) if sd > 0))
    comp_var = [float(v) * total_var for v in pca.explainedVariance.toArray()]
    n_inputs = sum(1 for sd in scaler_std if sd > 0)
    return Reduction(pca, k, explained_all, comp_var, total_var, n_inputs)


def clustering_space(red: Reduction) -> tuple[list, int]:
    """The stages from ``WEIGHTED_VEC`` to the space segments are found in, and how many
    components it keeps.

    The components that carry more variance than an average input (shared structure,
    Kaiser's rule), each divided by its sd, so a direction that separates users counts as
    much as the loud one (why: docs/fusion.md).
    """
    n_cluster = cluster_components(red.comp_var, red.total_var / max(red.n_inputs, 1))
    return clustering_stages(red.pca, red.comp_var, n_cluster), n_cluster


def _best_of_restarts(n: int, data: DataFrame, fusion) -> tuple[BisectingKMeansModel, int] | None:
    """The ``n``-segment model with the lowest within-segment cost over ``fusion.restarts``
    seeds, with its seed; None when no seed formed two or more segments.

    Restarts: Spark starts every split from the same kind of nudge, and 2-means from one
    start lands in a poor local optimum often (measured: docs/fusion.md).
    """
    best = None
    for r in range(max(1, fusion.restarts)):
        seed = fusion.seed + r
        cand = segmenter(n, seed, fusion.max_iter).fit(data)
        if len(cand.clusterCenters()) < 2:
            continue
        cost = float(cand.summary.trainingCost)
        if best is None or cost < best[0] - 1e-9 * abs(best[0]):
            best = (cost, cand, seed)
    return None if best is None else (best[1], best[2])


def choose_segments(scored: DataFrame, n_rows: int, fusion, as_of: dt.date) -> Segmentation:
    """The segment count with the highest silhouette over [min_segments, max_segments],
    chosen on a sample of at most ``fusion.selection_sample_rows`` rows of ``scored``
    (``CLUSTER_VEC``) and then refitted on all of them."""
    sample = scored
    if n_rows > fusion.selection_sample_rows:
        sample = scored.sample(fraction=fusion.selection_sample_rows / n_rows, seed=fusion.seed).cache()
    try:
        n_sample = sample.count()
        evaluator = ClusteringEvaluator(
            featuresCol=CLUSTER_VEC, predictionCol=SEGMENT, metricName="silhouette", distanceMeasure="squaredEuclidean"
        )
        by_n: dict[int, float] = {}
        fitted: dict[int, tuple[BisectingKMeansModel, int]] = {}
        for n in range(max(2, fusion.min_segments), max(2, fusion.max_segments) + 1):
            if n >= n_sample:
                break
            best = _best_of_restarts(n, sample, fusion)
            if best is None:
                continue
            by_n[n] = float(evaluator.evaluate(best[0].transform(sample)))
            fitted[n] = best
        if not by_n:
            raise InputError(f"cannot form 2 or more segments from {n_rows} users on {as_of}")
        # Highest silhouette; ties go to fewer segments (simpler to read).
        best_n = max(by_n, key=lambda n: (round(by_n[n], 12), -n))
        model, seed = fitted[best_n]
        if sample is not scored:
            model = segmenter(best_n, seed, fusion.max_iter).fit(scored)
    finally:
        if sample is not scored:
            sample.unpersist()
    return Segmentation(model, best_n, seed, by_n)


def fusion_metrics(
    spark: SparkSession, inp: FitInput, pre: PipelineModel, red: Reduction, n_cluster: int,
    seg: Segmentation, weights: list[float], fusion, as_of: dt.date,
) -> dict:
    """What metrics.json records about the fit (the keys explain and report read too)."""
    surrogate = find_stage(pre, ImputerModel).surrogateDF.first().asDict()
    features, emb_dim, by_n = inp.features, inp.emb_dim, seg.silhouette_by_n
    return {
        "k": red.k,
        "explained_variance": [float(v) for v in red.pca.explainedVariance.toArray()],
        "explained_variance_all": red.explained_all,
        "cumulative_explained_variance": float(sum(red.pca.explainedVariance.toArray())),
        "component_variance": red.comp_var,
        "embedding_weight": fusion.embedding_weight,
        "block_weights": {"behaviour": 1.0, "embedding": weights[-1] if emb_dim else 0.0},
        "variance_threshold": fusion.variance_threshold,
        "max_k": fusion.max_k,
        "cluster_components": n_cluster,
        "cluster_seed": seg.seed,
        "restarts": fusion.restarts,
        "relative_to": inp.relative,
        "silhouette": by_n[seg.n],
        "silhouette_by_n": {str(n): s for n, s in sorted(by_n.items())},
        "n_segments": len(seg.model.clusterCenters()),
        "input_columns": features + ["user_emb"],
        "feature_names": features + embedding_feature_names(emb_dim),
        "behaviour_features": features,
        "log1p_columns": inp.log1p_cols,
        "fills": inp.fills,
        "imputed_values": {c: float(surrogate[_f(c)]) for c in features if surrogate.get(_f(c)) is not None},
        "embedding_dim": emb_dim,
        "fitted_as_of": as_of.isoformat(),
        "fitted_rows": inp.rows,
        "encoder_version": inp.encoder_version,
        "seed": fusion.seed,
        "max_iter": fusion.max_iter,
        "spark_version": spark.version,
    }


def fit_fusion(spark: SparkSession, df: DataFrame, fusion, as_of: dt.date) -> tuple[PipelineModel, dict]:
    """Fit the whole pipeline on ``df`` (one day's fusion input). Returns (model, metrics).

    k and the segment count are chosen here from the data; the returned metrics are what
    metrics.json records.
    """
    inp = describe_input(df, fusion, as_of)
    weights = block_weights(len(inp.features), inp.emb_dim, fusion.embedding_weight)
    pre = fit_preprocess(df, inp, weights)
    std = pre.transform(df).select(WEIGHTED_VEC).cache()
    try:
        red = fit_reduction(std, pre, weights, fusion)
        space, n_cluster = clustering_space(red)
        scored = PipelineModel(stages=space).transform(std).select(CLUSTER_VEC).cache()
        try:
            seg = choose_segments(scored, inp.rows, fusion, as_of)
        finally:
            scored.unpersist()
    finally:
        std.unpersist()
    model = PipelineModel(stages=list(pre.stages) + space + [seg.model])
    return model, fusion_metrics(spark, inp, pre, red, n_cluster, seg, weights, fusion, as_of)
