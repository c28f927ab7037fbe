"""Understanding profiles: why a user sits where they do, and what each segment is.

Input:  gold.user_profiles for one as_of_date, that day's fusion input (behaviour +
        embedding) and the fusion model version named on the profile rows.
Output: plain dicts (for ``--json``, the report and tests) and their plain-words text.

Two numbers carry the explanations:
- a user's drivers: with x the user's standardised (and block-weighted) inputs, P the k
  kept loadings, s = P^T x the profile vector and L the components' variances, the
  user's distance from the centre in sd units is ||s||^2_L = sum_j s_j^2 / L_j =
  sum_i x_i (P L^-1 s)_i, over the components the segments are found on (metrics
  ``cluster_components``: those above an average input's variance). Each feature's term
  is its exact share of that distance (the shares sum to 1): sd units, so a feature that
  makes the user unusual on a quieter component counts as much as one on the loudest;
  per component j the terms are loading x standardised value, P_ij x_i, which sum to s_j.
- a segment's distinctive features: z-scores of the segment mean against the whole day
  ((segment mean - population mean) / population sd), on the model's inputs (after
  log1p and imputation), shown next to the raw means.
Segment descriptions use behaviour features only: embedding dimensions have no meaning
a reader can act on; they still count in the drivers, labelled as embedding.
"""

from __future__ import annotations

import math

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core.errors import InputError
from spark_jobs.gold import fuse, fusion_model
from spark_jobs.gold.fusion_store import load_fusion

OUTLIER_Z = 3.0


def _word(z: float) -> str:
    if z >= 1.0:
        return "much higher"
    if z >= 0.25:
        return "higher"
    if z <= -1.0:
        return "much lower"
    if z <= -0.25:
        return "lower"
    return "about average"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    v = float(v)
    if abs(v) >= 100 or v == int(v):
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _label(name: str) -> str:
    return f"{name} (embedding)" if name.startswith("user_emb[") else name


def _day_profiles(spark: SparkSession, settings, as_of):
    day = fuse.resolve_as_of(as_of, fuse.profile_dates(spark, settings), fuse.PROFILES_TABLE)
    profiles = fuse.read_profiles(spark, settings).where(F.col("as_of_date") == F.lit(day))
    versions = [r[0] for r in profiles.select("fusion_version").distinct().collect()]
    if len(versions) != 1:
        raise InputError(f"profiles on {day} carry {len(versions)} fusion versions {versions}; re-run `persona fuse --as-of {day}`")
    return day, profiles, versions[0]


# ---------------------------------------------------------------- segments
def segment_stats(spark: SparkSession, settings, as_of=None, top: int = 4) -> dict:
    """Size and distinctive behaviour features of every segment on one day.

    Returns ``{"as_of", "fusion_version", "users", "population": {feature: {mean, sd,
    raw_mean}}, "segments": [{segment_id, size, share, features: [...sorted by |z|],
    distinctive: [top features]}]}``.
    """
    day, profiles, version = _day_profiles(spark, settings, as_of)
    model, metrics = load_fusion(settings, version)
    features = metrics["behaviour_features"]
    # The inputs the scaler saw (log1p, fills, imputation).
    inp = fusion_model.model_inputs(model).transform(fuse.day_input(spark, settings, day))
    seg = profiles.select("user_id", "segment_id")
    joined = inp.join(seg, "user_id", "inner").select(
        "segment_id", *[F.col(fusion_model.input_column(c)).alias(f"x_{i}") for i, c in enumerate(features)],
        *[F.col(c).cast("double").alias(f"r_{i}") for i, c in enumerate(features)],
    ).cache()
    try:
        xs = [f"x_{i}" for i in range(len(features))]
        rs = [f"r_{i}" for i in range(len(features))]
        pop = joined.agg(
            F.count(F.lit(1)).alias("n"),
            *[F.avg(c).alias(f"m_{c}") for c in xs],
            *[F.stddev_samp(c).alias(f"s_{c}") for c in xs],
            *[F.avg(c).alias(f"m_{c}") for c in rs],
        ).first().asDict()
        per = joined.groupBy("segment_id").agg(
            F.count(F.lit(1)).alias("n"),
            *[F.avg(c).alias(f"m_{c}") for c in xs],
            *[F.avg(c).alias(f"m_{c}") for c in rs],
        ).orderBy("segment_id").collect()
    finally:
        joined.unpersist()
    n = int(pop["n"])
    population = {
        c: {"mean": pop[f"m_x_{i}"], "sd": pop[f"s_x_{i}"], "raw_mean": pop[f"m_r_{i}"]}
        for i, c in enumerate(features)
    }
    segments = []
    for row in per:
        r = row.asDict()
        feats = []
        for i, c in enumerate(features):
            sd = pop[f"s_x_{i}"] or 0.0
            m = r[f"m_x_{i}"]
            z = 0.0 if not sd or m is None else (m - pop[f"m_x_{i}"]) / sd
            feats.append({
                "feature": c, "z": float(z), "raw_mean": r[f"m_r_{i}"],
                "population_raw_mean": pop[f"m_r_{i}"], "direction": _word(z),
            })
        feats.sort(key=lambda f: -abs(f["z"]))
        segments.append({
            "segment_id": int(r["segment_id"]),
            "size": int(r["n"]),
            "share": r["n"] / n if n else 0.0,
            "features": feats,
            "distinctive": feats[:top],
        })
    out = {"as_of": day.isoformat(), "fusion_version": version, "users": n,
           "population": population, "segments": segments}
    return out


def describe_segment(seg: dict) -> str:
    parts = []
    for f in seg["distinctive"]:
        parts.append(
            f"{f['direction']} {f['feature']} (mean {_fmt(f['raw_mean'])} vs {_fmt(f['population_raw_mean'])} "
            f"overall, {f['z']:+.2f} sd)"
        )
    return (f"segment {seg['segment_id']}: {seg['size']:,} users ({seg['share']:.1%}); "
            + ("; ".join(parts) if parts else "no behaviour features"))


def render_segments(stats: dict) -> str:
    lines = [f"{len(stats['segments'])} segments on {stats['as_of']} ({stats['users']:,} users, "
             f"fusion {stats['fusion_version']})"]
    lines += [describe_segment(s) for s in stats["segments"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- one user
def decompose(
    z: np.ndarray, loadings: np.ndarray, variances: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores s = P^T z, contributions C = P * z[:, None], driver shares).

    ``shares[i] = z_i (P L^-1 s)_i / sum_j s_j^2 / L_j``: feature i's share of the
    user's squared distance from the centre measured in each component's sd (L the
    component variances; None: plain Euclidean). The shares sum to 1.
    """
    s = loadings.T @ z
    contrib = loadings * z[:, None]
    inv = np.ones_like(s) if variances is None else 1.0 / np.maximum(np.asarray(variances, dtype=float), 1e-12)
    norm2 = float(s @ (inv * s))
    shares = z * (loadings @ (inv * s)) / norm2 if norm2 > 0 else np.zeros_like(z)
    return s, contrib, shares


def _user_inputs(spark: SparkSession, settings, day, version: str, user_id: str):
    """``(model, metrics, row)``: the fusion model of the user's profile and the user's
    inputs through it (raw, standardised and weighted vectors, raw behaviour values)."""
    model, metrics = load_fusion(settings, version)
    inp = fuse.day_input(spark, settings, day).where(F.col("user_id") == F.lit(user_id))
    pre = (fusion_model.preprocess_model(model).transform(inp)
           .select(fusion_model.RAW_VEC, fusion_model.STD_VEC, fusion_model.WEIGHTED_VEC,
                   *metrics["behaviour_features"]).first())
    if pre is None:
        raise InputError(f"user {user_id!r} has a profile but no behaviour+embedding row on {day}")
    return model, metrics, pre


def _feature_entries(names: list[str], pre, population: dict):
    """``entry(i)``: input i of the user, as the explanation lists it."""
    z = pre[fusion_model.STD_VEC].toArray()
    x = pre[fusion_model.WEIGHTED_VEC].toArray()  # what PCA sees: z with the embedding block weighted
    raw = pre[fusion_model.RAW_VEC].toArray()

    def entry(i: int) -> dict:
        name = names[i]
        # standardised: z; pca_input: z times the block weight (1 for behaviour features).
        out = {"feature": name, "standardised": float(z[i]), "pca_input": float(x[i]), "model_input": float(raw[i])}
        if name in population:
            out["value"] = pre[name]
            out["population_mean"] = population[name]["raw_mean"]
        return out

    return entry


def _components(s, contrib, P, comp_sd, explained, entry, top_components: int, top_features: int) -> list[dict]:
    """The components the user is most unusual on (|score| in sd units), each with its
    leading loading x value terms."""
    comps = []
    for j in np.argsort(-np.abs(s) / comp_sd)[:top_components]:
        j = int(j)
        top = np.argsort(-np.abs(contrib[:, j]))[:top_features]
        comps.append({
            "component": j + 1,
            "score": float(s[j]),
            "sd": float(s[j] / comp_sd[j]),
            "explained_variance": float(explained[j]),
            "features": [dict(entry(int(i)), loading=float(P[i, j]), contribution=float(contrib[i, j]))
                         for i in top],
        })
    return comps


def _segment_summary(segment_id: int, stats: dict) -> dict:
    seg = next((x for x in stats["segments"] if x["segment_id"] == segment_id), None)
    return {
        "segment_id": int(segment_id),
        "size": seg["size"] if seg else None,
        "share": seg["share"] if seg else None,
        "distinctive": seg["distinctive"] if seg else [],
        "n_segments": len(stats["segments"]),
    }


def explain_user(
    spark: SparkSession, settings, user_id: str, as_of=None, top_components: int = 3, top_features: int = 5
) -> dict:
    """Why ``user_id`` has the profile it has on ``as_of`` (default: the latest day)."""
    day, profiles, version = _day_profiles(spark, settings, as_of)
    row = profiles.where(F.col("user_id") == F.lit(user_id)).select("profile_vec", "segment_id").first()
    if row is None:
        raise InputError(f"user {user_id!r} has no profile on {day}")
    model, metrics, pre = _user_inputs(spark, settings, day, version, user_id)
    x = pre[fusion_model.WEIGHTED_VEC].toArray()
    z = pre[fusion_model.STD_VEC].toArray()
    P = fusion_model.pca_stage(model).pc.toArray()
    comp_var = np.maximum(np.array(metrics["component_variance"]), 1e-12)
    comp_sd = np.sqrt(comp_var)
    # Drivers: shares of the distance in the space the segments were found in (the
    # leading components above an average input's variance, whitened: docs/fusion.md). The
    # quiet components beyond it are single features' noise; whitened, they would let
    # any feature with one odd value outrank what actually places the user.
    n_seg = int(metrics.get("cluster_components", len(comp_var)))
    _, _, shares = decompose(x, P[:, :n_seg], comp_var[:n_seg])
    s, contrib, _ = decompose(x, P, comp_var)
    stats = segment_stats(spark, settings, day)
    entry = _feature_entries(metrics["feature_names"], pre, stats["population"])

    drivers = []
    for i in np.argsort(-shares)[:top_features]:
        if shares[i] <= 0:
            break
        drivers.append(dict(entry(int(i)), share=float(shares[i])))
    # Single inputs far from the population (|z| >= OUTLIER_Z): a lone odd value can sit
    # on a quiet component outside the segment space, so the drivers need not show it.
    outliers = [entry(int(i)) for i in np.argsort(-np.abs(z)) if abs(z[i]) >= OUTLIER_Z]
    return {
        "user_id": user_id,
        "as_of": day.isoformat(),
        "fusion_version": version,
        "profile_vec": [float(v) for v in row["profile_vec"]],
        "distance_sd": float(np.sqrt(np.sum((s[:n_seg] / comp_sd[:n_seg]) ** 2))),
        "drivers": drivers,
        "outliers": outliers[:top_features],
        "components": _components(s, contrib, P, comp_sd, metrics["explained_variance"], entry,
                                  top_components, top_features),
        "segment": _segment_summary(row["segment_id"], stats),
    }


def _value_words(f: dict) -> str:
    if "value" in f:
        return f"{_fmt(f['value'])} (population mean {_fmt(f['population_mean'])}, {f['standardised']:+.2f} sd)"
    return f"{f['standardised']:+.2f} sd"


def render_explanation(e: dict) -> str:
    seg = e["segment"]
    lines = [
        f"user {e['user_id']} on {e['as_of']} (fusion {e['fusion_version']}): segment {seg['segment_id']} "
        f"of {seg['n_segments']}, {e['distance_sd']:.1f} sd from the centre of the population in segment space.",
        "",
        "What drives this profile (share of the distance from the centre, from loading x standardised value):",
    ]
    for n, f in enumerate(e["drivers"], start=1):
        lines.append(f"  {n}. {_label(f['feature'])} = {_value_words(f)}: {f['share']:.0%}")
    if e.get("outliers"):
        lines += ["", f"Unusual single values (|standardised| >= {OUTLIER_Z:g}):"]
        lines += [f"  {_label(f['feature'])} = {_value_words(f)}" for f in e["outliers"]]
    lines += ["", "Strongest components for this user:"]
    for c in e["components"]:
        terms = ", ".join(f"{_label(f['feature'])} {f['contribution']:+.2f}" for f in c["features"][:3])
        lines.append(
            f"  PC{c['component']} = {c['score']:+.2f} ({c['sd']:+.1f} sd; explains {c['explained_variance']:.0%} "
            f"of variance): {terms}"
        )
    if seg["size"] is not None:
        lines += ["", f"Segment {seg['segment_id']} ({seg['size']:,} users, {seg['share']:.1%}) vs everyone:"]
        for f in seg["distinctive"]:
            lines.append(
                f"  {f['direction']} {f['feature']}: mean {_fmt(f['raw_mean'])} vs {_fmt(f['population_raw_mean'])} "
                f"({f['z']:+.2f} sd)"
            )
    return "\n".join(lines)
