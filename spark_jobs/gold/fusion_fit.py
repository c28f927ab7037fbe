"""Fitting one fusion model version on one day's fusion input.

Input:  one day's ``fusion_input`` rows (one row per user: behaviour columns, ``user_emb``,
        ``encoder_version``) and the ``fusion`` settings.
Output: ``(PipelineModel, metrics)``: the fitted pipeline (stages in docs/fusion.md) and
        what ``metrics.json`` records about the fit.
Grain:  one model per call; the rows are one per user of the fitting day.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.errors import InputError
from spark_jobs.gold.fusion_model import (
    ANCHOR,
    ANCHOR_COL,
    CLUSTER_VEC,
    PCA_VEC,
    RAW_VEC,
    SEGMENT,
    STD_VEC,
    WEIGHTED_VEC,
    WHITE_VEC,
    _e,
    _f,
    _x,
    behaviour_features,
    block_weights,
    choose_k,
    cluster_components,
    embedding_feature_names,
    log1p_features,
    preprocess_statement,
    relative_features,
)


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

        # Clustering space (why: docs/fusion.md): the components that carry more
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
                # docs/fusion.md); keep the restart with the lowest within-segment cost.
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
