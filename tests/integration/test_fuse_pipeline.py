"""The fusion job on synthetic inputs with planted structure (see tests/support/fusion_data.py):
real Spark ML, real Delta, the saved model reloaded from disk, the CLI in-process."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from core.errors import InputError, NotBuiltError
from persona.cli.app import app
from persona.profiles.explain import explain_user, render_explanation, render_segments, segment_stats
from persona.profiles.export import export_profiles
from spark_jobs.gold import fuse, fusion_model, fusion_store
from spark_jobs.schemas import USER_BEHAVIOUR, USER_EMBEDDINGS, USER_PROFILES
from tests.support.fusion_data import (
    DAY1,
    DAY2,
    EMB_DIM,
    ENCODER,
    GROUPS,
    PLANTED_DRIVER,
    PLANTED_USER,
    PLANTED_VALUE,
    day_rows,
    fused_home,
    make_settings,
    make_users,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    return fused_home(spark, tmp_path_factory)


def _profiles(spark, settings, day):
    return (fuse.read_profiles(spark, settings).where(F.col("as_of_date") == F.lit(day))
            .orderBy("user_id").toPandas())


def _metrics(settings, version="v1"):
    return json.loads((settings.model_dir("fusion", version) / "metrics.json").read_text())


def test_profiles_table_has_one_row_per_user_per_day(spark, built):
    s, n = built["settings"], len(built["users"]["user_id"])
    table = fuse.read_profiles(spark, s)
    # Names and types (Spark tracks nullability loosely, see schemas.conform).
    assert [(f.name, f.dataType.simpleString()) for f in table.schema.fields] == [
        (f.name, f.dataType.simpleString()) for f in USER_PROFILES.fields]
    counts = {r[0]: r[1] for r in table.groupBy("as_of_date").count().collect()}
    assert counts == {DAY1: n, DAY2: n}
    assert table.select("user_id", "as_of_date").distinct().count() == 2 * n
    k = built["day1"]["k"]
    row = table.select(F.size("profile_vec").alias("k"), "fusion_version", "encoder_version").distinct().collect()
    assert [(r.k, r.fusion_version, r.encoder_version) for r in row] == [(k, "v1", ENCODER)]
    assert built["day1"]["fitted"] is True and built["day2"]["fitted"] is False  # day 2 applied v1
    assert built["day1"]["fit_reason"] == "no fusion model yet" and built["day2"]["fit_reason"] is None
    assert built["day2"]["as_of"] == DAY2.isoformat()  # default as-of: the latest
    assert fusion_store.list_versions(s) == ["v1"]


def test_metrics_json_records_the_fit(built):
    m = _metrics(built["settings"])
    for key in ("k", "explained_variance", "silhouette", "n_segments", "input_columns", "fitted_as_of",
                "encoder_version", "imputed_values", "fills"):
        assert key in m, key
    assert m["fitted_as_of"] == DAY1.isoformat() and m["encoder_version"] == ENCODER
    assert len(m["explained_variance"]) == m["k"]
    assert m["input_columns"] == fusion_model.behaviour_features() + ["user_emb"]
    assert len(m["feature_names"]) == len(fusion_model.behaviour_features()) + EMB_DIM
    # k: the smallest reaching the threshold (and no more).
    cum = np.cumsum(m["explained_variance_all"])
    assert cum[m["k"] - 1] >= m["variance_threshold"] and (m["k"] == 1 or cum[m["k"] - 2] < m["variance_threshold"])
    # The segment count is the silhouette argmax over the range tried.
    by_n = {int(n): v for n, v in m["silhouette_by_n"].items()}
    assert sorted(by_n) == list(range(2, 6))
    assert m["n_segments"] == max(by_n, key=by_n.get) and m["silhouette"] == by_n[m["n_segments"]]
    assert m["fills"]["days_since_last_purchase"] == 365.0
    # Imputed values are medians of the fitting day's (log1p) values: cart_rate exists
    # for every user with views, so its median is a plain rate.
    assert 0.0 < m["imputed_values"]["cart_rate_30d"] < 1.0


def test_pca_explained_variance_matches_numpy_svd(spark, built):
    s = built["settings"]
    model, m = fusion_store.load_fusion(s, "v1")
    raw = fusion_model.preprocess_model(model).transform(fuse.day_input(spark, s, DAY1)).orderBy("user_id")
    rows = raw.select(fusion_model.RAW_VEC).collect()
    X = np.array([r[0].toArray() for r in rows])
    sd = X.std(axis=0, ddof=1)  # Spark's StandardScaler: unbiased sd, constant columns -> 0
    Z = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    # The embedding block's weight (recorded in metrics) is part of the matrix PCA sees.
    nb = len(m["behaviour_features"])
    assert m["block_weights"]["embedding"] == pytest.approx((m["embedding_weight"] * nb / EMB_DIM) ** 0.5)
    Z[:, nb:] *= m["block_weights"]["embedding"]
    _, sv, vt = np.linalg.svd(Z, full_matrices=False)
    ratio = sv**2 / np.sum(sv**2)
    np.testing.assert_allclose(m["explained_variance_all"], ratio, atol=1e-6, rtol=0)
    np.testing.assert_allclose(fusion_model.pca_stage(model).explainedVariance.toArray(), ratio[: m["k"]], atol=1e-6, rtol=0)
    # Component variances (explain's sd units) are the squared singular values / (n - 1).
    np.testing.assert_allclose(m["component_variance"], (sv**2 / (len(X) - 1))[: m["k"]], rtol=1e-6)
    # The stored profile vectors are that standardised matrix on the same axes (up to sign).
    P = fusion_model.pca_stage(model).pc.toArray()
    assert np.allclose(np.abs(np.sum(P * vt[: m["k"]].T, axis=0)), 1.0, atol=1e-6)
    stored = np.vstack(_profiles(spark, s, DAY1)["profile_vec"].to_numpy())
    np.testing.assert_allclose(stored, Z @ P, atol=1e-4)


def test_reloaded_pipeline_gives_identical_vectors(spark, built):
    s = built["settings"]
    fresh = PipelineModel.load(str(s.model_dir("fusion", "v1") / "pipeline"))  # not the process cache
    out = (fresh.transform(fuse.day_input(spark, s, DAY2))
           .select("user_id", vector_to_array(fusion_model.PCA_VEC, "float32").alias("v"), F.col(fusion_model.SEGMENT).cast("int").alias("seg"))
           .orderBy("user_id").toPandas())
    stored = _profiles(spark, s, DAY2)
    assert list(out["user_id"]) == list(stored["user_id"])
    assert np.array_equal(np.vstack(out["v"].to_numpy()), np.vstack(stored["profile_vec"].to_numpy()))
    assert list(out["seg"]) == list(stored["segment_id"])


def test_segments_recover_planted_groups(spark, built):
    """Adjusted Rand index between segments and the planted groups.

    Floor: above both the ARI of merging two planted groups and of splitting one in
    half (computed below on the truth itself, about 0.74 and 0.82 here), and at least
    0.9. Clearing it means four segments that each match one group up to a handful of
    users; a wrong number of segments or a misplaced split cannot.
    """
    users = built["users"]
    truth = pd.Series(users["group"], index=users["user_id"])
    for day in (DAY1, DAY2):
        prof = _profiles(spark, built["settings"], day).set_index("user_id")
        seg = prof.loc[truth.index, "segment_id"].to_numpy()
        ari = adjusted_rand_score(truth.to_numpy(), seg)
        merged = np.where(truth.to_numpy() == 3, 2, truth.to_numpy())
        split = truth.to_numpy().copy()
        zeros = np.flatnonzero(split == 0)
        split[zeros[: zeros.size // 2]] = GROUPS
        ari_merge = adjusted_rand_score(truth.to_numpy(), merged)
        ari_split = adjusted_rand_score(truth.to_numpy(), split)
        print(f"{day}: ARI segments vs planted groups = {ari:.4f} "
              f"(merge-two {ari_merge:.3f}, split-one {ari_split:.3f})")
        assert ari >= max(0.9, ari_merge + 0.05, ari_split + 0.05)
        assert len(set(seg)) == GROUPS


def test_refit_writes_a_new_version_with_the_same_segments_for_the_seed(spark, built, tmp_path):
    """--refit on a copy of the home: v2 is saved and applied; same data + seed -> same
    profile axes and the very same segment ids."""
    src = built["settings"]
    # Same segment count as v1 chose, so the refit skips the silhouette search (time).
    s2 = make_settings(tmp_path / "home")
    s2.fusion.min_segments = s2.fusion.max_segments = _metrics(src)["n_segments"]
    shutil.copytree(src.home, s2.home)
    summary = fuse.run_fuse(spark, s2, as_of=DAY1, refit=True)
    assert summary["fitted"] is True and summary["fusion_version"] == "v2"
    assert summary["fit_reason"] == "refit requested"
    assert fusion_store.list_versions(s2) == ["v1", "v2"] and fusion_store.latest_version(s2) == "v2"
    a, b = _profiles(spark, src, DAY1), _profiles(spark, s2, DAY1)
    assert set(b["fusion_version"]) == {"v2"}
    assert list(a["segment_id"]) == list(b["segment_id"])
    np.testing.assert_allclose(np.vstack(a["profile_vec"].to_numpy()), np.vstack(b["profile_vec"].to_numpy()), atol=1e-5)
    m1, m2 = _metrics(src, "v1"), _metrics(s2, "v2")
    assert (m1["k"], m1["n_segments"]) == (m2["k"], m2["n_segments"])
    assert m2["silhouette"] == pytest.approx(m1["silhouette"], abs=1e-9)
    # Other days keep the version they were written with until re-run.
    assert set(_profiles(spark, s2, DAY2)["fusion_version"]) == {"v1"}


def test_explain_names_the_planted_driver(spark, built):
    e = explain_user(spark, built["settings"], PLANTED_USER, DAY1)
    print(render_explanation(e))
    # The planted user is a browser with one absurd value (20,000 searches in a week): a
    # lone value off the shared structure, so it is named as the first unusual value;
    # the drivers say what places the user among the segments (the segment space).
    assert e["outliers"][0]["feature"] == PLANTED_DRIVER
    assert e["outliers"][0]["value"] == PLANTED_VALUE and e["outliers"][0]["standardised"] > 3
    assert sum(d["share"] for d in e["drivers"]) <= 1.0 + 1e-9
    # Components are ranked by how unusual the user is on them; the driver is among the
    # leading loading x value terms of at least one of them.
    sds = [abs(c["sd"]) for c in e["components"]]
    assert sds == sorted(sds, reverse=True)
    assert any(PLANTED_DRIVER in [f["feature"] for f in c["features"][:3]] for c in e["components"])
    for c in e["components"]:
        for f in c["features"]:
            assert f["contribution"] == pytest.approx(f["loading"] * f["pca_input"])
            if not f["feature"].startswith("user_emb["):
                assert f["pca_input"] == pytest.approx(f["standardised"])
    text = render_explanation(e)
    unusual = text.split("Unusual single values")[1].splitlines()[1]
    assert unusual.strip().startswith(f"{PLANTED_DRIVER} = {PLANTED_VALUE:,}")
    assert f"segment {e['segment']['segment_id']}" in text

    with pytest.raises(InputError, match="no profile"):
        explain_user(spark, built["settings"], "nobody", DAY1)


def test_segments_are_described_by_their_planted_drivers(spark, built):
    stats = segment_stats(spark, built["settings"], DAY1)
    print(render_segments(stats))
    users = built["users"]
    assert sum(s["size"] for s in stats["segments"]) == len(users["user_id"])
    assert sum(s["share"] for s in stats["segments"]) == pytest.approx(1.0)
    prof = _profiles(spark, built["settings"], DAY1).set_index("user_id")
    group = pd.Series(users["group"], index=users["user_id"])
    # Browsers are planted by volume (views x4-6, the same items per view as everyone):
    # views_30d is the one input that measures volume (spark_jobs/gold/fusion_model.py RELATIVE_TO).
    expected = {1: "distinct_queries_30d", 3: "night_share_30d", 0: "views_30d"}
    for g, feature in expected.items():
        seg_id = int(prof.loc[group[group == g].index, "segment_id"].mode()[0])
        seg = next(s for s in stats["segments"] if s["segment_id"] == seg_id)
        top = [f["feature"] for f in seg["distinctive"]]
        assert feature in top, (g, top)
        assert next(f for f in seg["distinctive"] if f["feature"] == feature)["z"] > 1.0


def test_export_formats(spark, built, tmp_path):
    s = built["settings"]
    n, k = len(built["users"]["user_id"]), built["day1"]["k"]
    for fmt, name in (("csv", "p.csv"), ("json", "p.jsonl"), ("parquet", "p.parquet")):
        summary = export_profiles(spark, s, fmt, tmp_path / name)  # default: the latest day
        assert summary["rows"] == n and summary["as_of"] == DAY2.isoformat()
    csv = pd.read_csv(tmp_path / "p.csv")
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    js = pd.DataFrame([json.loads(x) for x in lines])
    pq = pd.read_parquet(tmp_path / "p.parquet")
    for frame in (csv, js, pq):
        assert len(frame) == n and frame["user_id"].is_unique
        assert {"segment_id", "profile_vec", *fusion_model.behaviour_features()} <= set(frame.columns)
    assert len(json.loads(csv["profile_vec"][0])) == k and len(js["profile_vec"][0]) == k and len(pq["profile_vec"][0]) == k
    # The three agree with each other and with the table.
    stored = _profiles(spark, s, DAY2)
    assert list(pq["segment_id"]) == list(stored["segment_id"]) == list(csv["segment_id"]) == list(js["segment_id"])
    np.testing.assert_allclose(np.vstack(pq["profile_vec"]), np.vstack(stored["profile_vec"].to_numpy()))
    assert list(pq["searches_7d"]) == list(csv["searches_7d"])
    # An explicit day.
    assert export_profiles(spark, s, "parquet", tmp_path / "d1.parquet", DAY1)["as_of"] == DAY1.isoformat()
    with pytest.raises(InputError, match="unknown export format"):
        export_profiles(spark, s, "xlsx", tmp_path / "p.xlsx")


def test_cli_in_process(spark, built, tmp_path):
    """The commands as registered on the app (the active session is reused); re-running
    a day through `persona fuse` changes nothing but created_timestamp."""
    s = built["settings"]
    home = ["--home", str(s.home)]
    runner = CliRunner()
    before = _profiles(spark, s, DAY2)
    res = runner.invoke(app, home + ["fuse", "--as-of", DAY2.isoformat()])
    assert res.exit_code == 0, res.output
    after = _profiles(spark, s, DAY2)
    assert list(after["user_id"]) == list(before["user_id"]) and list(after["segment_id"]) == list(before["segment_id"])
    assert np.array_equal(np.vstack(after["profile_vec"].to_numpy()), np.vstack(before["profile_vec"].to_numpy()))
    assert fusion_store.list_versions(s) == ["v1"]  # applied, not refitted

    res = runner.invoke(app, home + ["explain", PLANTED_USER, "--as-of", DAY1.isoformat()])
    assert res.exit_code == 0 and PLANTED_DRIVER in res.output
    res = runner.invoke(app, home + ["segments", "--json"])
    assert res.exit_code == 0
    assert len(json.loads(res.output)["segments"]) == GROUPS
    res = runner.invoke(app, home + ["export", "--format", "xml", "--out", str(tmp_path / "x.xml")])
    assert isinstance(res.exception, InputError)


def test_clear_errors_for_missing_inputs_and_days(spark, built, settings):
    with pytest.raises(NotBuiltError, match="persona build"):
        fuse.run_fuse(spark, settings)
    with pytest.raises(InputError, match="available: 2024-03-10 .. 2024-03-11"):
        fuse.run_fuse(spark, built["settings"], as_of="2024-05-01")


def test_synthetic_rows_match_the_schemas():
    """The generator itself: tuples line up with the schemas (a broken generator would
    make every fusion test meaningless)."""
    users = make_users(3)
    b, e = day_rows(users, DAY1, seed=0)
    assert len(b) == len(e) == 3 * GROUPS
    assert all(len(r) == len(USER_BEHAVIOUR.fields) for r in b)
    assert all(len(r) == len(USER_EMBEDDINGS.fields) for r in e)
    names = [f.name for f in USER_BEHAVIOUR.fields]
    planted = b[0]
    assert planted[0] == PLANTED_USER and planted[names.index(PLANTED_DRIVER)] == PLANTED_VALUE
