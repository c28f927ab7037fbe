"""Pure pieces of the fusion job, explain and report: feature list, k rule, the
preprocessing SQL, driver decomposition, PSI, input checks. Tiny frames only."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from pyspark.ml import Pipeline
from pyspark.ml.feature import PCA, ImputerModel, PCAModel, SQLTransformer
from pyspark.sql import functions as F

from core.errors import InputError, NotBuiltError
from core.settings import load_settings
from persona.profiles.explain import decompose
from persona.profiles.export import check_export_target
from persona.profiles.report import key_features, previous_date, psi
from spark_jobs.gold import fuse, fusion_model, fusion_store
from spark_jobs.schemas import USER_BEHAVIOUR, USER_EMBEDDINGS


def test_feature_list_is_numeric_behaviour_minus_keys_and_arrays():
    feats = fusion_model.behaviour_features()
    assert "user_id" not in feats and "as_of_date" not in feats and "event_timestamp" not in feats
    assert "top_categories_30d" not in feats  # an array
    assert {"views_30d", "spend_30d", "night_share_30d", "days_since_last_purchase"} <= set(feats)
    numeric = [f.name for f in USER_BEHAVIOUR.fields if f.dataType.typeName() in ("long", "integer", "double", "float")]
    assert feats == [c for c in numeric if c not in fusion_model.KEY_COLUMNS]


def test_log1p_covers_counts_and_money_not_rates():
    logs = set(fusion_model.log1p_features())
    assert {"views_1d", "purchases_30d", "sessions_30d", "spend_30d", "days_since_last_purchase"} <= logs
    assert not {"cart_rate_30d", "night_share_30d", "top_category_share_30d"} & logs


@pytest.mark.parametrize(
    "ev,threshold,max_k,expected",
    [
        ([0.5, 0.3, 0.15, 0.05], 0.9, 16, 3),
        ([0.5, 0.4, 0.1], 0.9, 16, 2),  # exactly at the threshold
        ([0.1] * 10, 0.9, 4, 4),  # capped
        ([0.2, 0.2], 0.99, 16, 2),  # never reached: all there is
    ],
)
def test_choose_k(ev, threshold, max_k, expected):
    assert fusion_model.choose_k(ev, threshold, max_k) == expected


def test_preprocess_statement_log1p_fill_and_embedding(spark):
    df = spark.createDataFrame(
        [("a", 0, None, [1.0, 2.0]), ("b", 9, 3, [0.5, -1.0])],
        "user_id string, views_30d long, days_since_last_purchase int, user_emb array<float>",
    )
    stmt = fusion_model.preprocess_statement(["views_30d", "days_since_last_purchase"], ["views_30d", "days_since_last_purchase"],
                                     {"days_since_last_purchase": 365.0}, 2)
    rows = {r["user_id"]: r for r in SQLTransformer(statement=stmt).transform(df).collect()}
    assert rows["a"]["f__views_30d"] == pytest.approx(0.0)
    assert rows["b"]["f__views_30d"] == pytest.approx(np.log1p(9))
    assert rows["a"]["f__days_since_last_purchase"] == pytest.approx(np.log1p(365))  # never -> a year
    assert rows["b"]["f__days_since_last_purchase"] == pytest.approx(np.log1p(3))
    # The embedding enters as its direction (L2-normalised).
    assert rows["b"]["emb__0"] == pytest.approx(0.5 / np.sqrt(1.25))
    assert rows["b"]["emb__1"] == pytest.approx(-1.0 / np.sqrt(1.25))


def test_preprocess_statement_relative_counts_are_log_rates(spark):
    """Counts per their base: volume cancels (10x the activity, same rate, same input)."""
    df = spark.createDataFrame(
        [("a", 99, 9, [1.0]), ("b", 999, 99, [2.0]), ("c", 0, 0, [1.0])],
        "user_id string, views_30d long, carts_30d long, user_emb array<float>",
    )
    stmt = fusion_model.preprocess_statement(["views_30d", "carts_30d"], ["views_30d", "carts_30d"], {}, 1,
                                     {"carts_30d": "views_30d"})
    rows = {r["user_id"]: r for r in SQLTransformer(statement=stmt).transform(df).collect()}
    assert rows["a"]["f__carts_30d"] == pytest.approx(np.log(10 / 100))
    assert rows["b"]["f__carts_30d"] == pytest.approx(np.log(100 / 1000))
    assert rows["c"]["f__carts_30d"] == pytest.approx(0.0)
    assert rows["b"]["f__views_30d"] == pytest.approx(np.log1p(999))  # the one volume input stays
    assert rows["b"]["emb__0"] == pytest.approx(1.0)


def test_every_count_but_views_30d_is_relative():
    rel = fusion_model.relative_features()
    feats = set(fusion_model.behaviour_features())
    longs = {f.name for f in USER_BEHAVIOUR.fields if f.dataType.typeName() == "long"}
    assert set(rel.values()) <= feats
    assert (longs & feats) - set(rel) == {"views_30d", "active_days_30d"}
    assert rel["carts_30d"] == "views_30d" and rel["searches_7d"] == "views_7d"


def test_cluster_components_kaiser_rule():
    assert fusion_model.cluster_components([5.0, 2.0, 1.2, 0.9, 0.5], 1.0) == 3
    assert fusion_model.cluster_components([5.0, 0.5], 1.0) == 2  # at least two
    assert fusion_model.cluster_components([0.5], 1.0) == 1


def test_fusion_input_inner_join_keeps_behaviour_timestamp(spark):
    d = dt.date(2024, 1, 2)
    ts = dt.datetime(2024, 1, 2, 23, 59, 59)
    beh = spark.createDataFrame([("a", d, ts), ("b", d, ts)], "user_id string, as_of_date date, event_timestamp timestamp")
    emb = spark.createDataFrame(
        [("a", d, dt.datetime(2024, 1, 9), [0.1], "e1"), ("c", d, ts, [0.2], "e1")],
        "user_id string, as_of_date date, event_timestamp timestamp, user_emb array<float>, encoder_version string",
    )
    out = fuse.fusion_input(beh, emb).orderBy("user_id").collect()
    assert [r.user_id for r in out] == ["a"]
    assert out[0].event_timestamp == ts and out[0].encoder_version == "e1"
    assert fuse.fusion_input(beh, emb).where(F.col("user_id") == "b").count() == 0


def test_check_compatible_refuses_other_encoder_or_size(spark):
    d = dt.date(2024, 1, 2)
    df = spark.createDataFrame([("a", [0.1, 0.2], "e2")], "user_id string, user_emb array<float>, encoder_version string")
    with pytest.raises(InputError, match="--refit"):
        fuse.check_compatible(df, {"embedding_dim": 2, "encoder_version": "e1", "version": "v1"}, d)
    with pytest.raises(InputError, match="size"):
        fuse.check_compatible(df, {"embedding_dim": 3, "encoder_version": "e2", "version": "v1"}, d)
    fuse.check_compatible(df, {"embedding_dim": 2, "encoder_version": "e2", "version": "v1"}, d)


def test_resolve_as_of():
    days = [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]
    assert fuse.resolve_as_of(None, days, "x") == dt.date(2024, 1, 2)
    assert fuse.resolve_as_of("2024-01-01", days, "x") == dt.date(2024, 1, 1)
    with pytest.raises(InputError, match="available: 2024-01-01 .. 2024-01-02"):
        fuse.resolve_as_of("2024-02-01", days, "x")
    with pytest.raises(InputError, match="must be a date"):
        fuse.resolve_as_of("yesterday", days, "x")
    with pytest.raises(NotBuiltError):
        fuse.resolve_as_of(None, [], "x")


def test_export_target_checks(tmp_path):
    with pytest.raises(InputError, match="unknown export format 'xml'"):
        check_export_target("xml", tmp_path / "a.xml")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="is not a directory"):
        check_export_target("csv", blocker / "a.csv")
    with pytest.raises(InputError, match="is a directory"):
        check_export_target("csv", tmp_path)
    fmt, path = check_export_target("JSON", tmp_path / "new" / "a.json")
    assert fmt == "json" and path.parent.is_dir()


def test_decompose_shares_sum_to_one_and_match_scores():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    P = q[:, :3]  # orthonormal loadings, as PCA gives
    z = rng.normal(size=6)
    s, contrib, shares = decompose(z, P)
    np.testing.assert_allclose(s, P.T @ z)
    np.testing.assert_allclose(contrib.sum(axis=0), s)  # loading x value sums to the score
    assert shares.sum() == pytest.approx(1.0)
    lam = np.array([4.0, 1.0, 0.25])
    _, _, wshares = decompose(z, P, lam)  # distance in sd units of each component
    assert wshares.sum() == pytest.approx(1.0)
    assert float(np.sum((P.T @ z) ** 2 / lam)) == pytest.approx(float(z @ (P @ ((P.T @ z) / lam))))
    # A user who differs from the centre only in feature 2 is driven by feature 2.
    z2 = np.zeros(6)
    z2[2] = 5.0
    _, _, sh2 = decompose(z2, P)
    assert int(np.argmax(sh2)) == 2 and sh2[2] == pytest.approx(1.0)


def test_psi_zero_for_same_large_for_shift_and_sees_nulls():
    rng = np.random.default_rng(1)
    a = rng.normal(size=5000)
    b = rng.normal(size=5000)
    assert psi(a, a) == pytest.approx(0.0, abs=1e-12)
    assert psi(a, b) < 0.02  # two samples of one distribution
    assert psi(a, b + 1.0) > 0.2  # one sd shift
    with_nulls = b.copy()
    with_nulls[:2000] = np.nan
    assert psi(a, with_nulls) > 0.2  # 40% of values gone missing is drift
    counts = rng.poisson(0.3, size=5000).astype(float)  # mostly zeros: few distinct edges
    assert psi(counts, rng.poisson(0.3, size=5000).astype(float)) < 0.02


def test_previous_date_and_key_features():
    days = [dt.date(2024, 1, d) for d in (1, 3, 5)]
    assert previous_date(days, dt.date(2024, 1, 5)) == dt.date(2024, 1, 3)
    assert previous_date(days, dt.date(2024, 1, 1)) is None
    stats = {"segments": [
        {"features": [{"feature": "a", "z": 0.1}, {"feature": "b", "z": -2.0}]},
        {"features": [{"feature": "a", "z": 1.5}, {"feature": "b", "z": 0.0}]},
    ]}
    assert key_features(stats, 2) == ["b", "a"]


def test_embedding_schema_is_what_fuse_reads():
    names = {f.name for f in USER_EMBEDDINGS.fields}
    assert {"user_id", "as_of_date", "user_emb", "encoder_version"} <= names


def test_latest_version_per_encoder(tmp_path):
    settings = load_settings(home=tmp_path, environ={})
    assert fusion_store.latest_version(settings) is None
    for version, encoder in (("v1", "e1"), ("v2", "e2"), ("v10", "e1")):
        d = settings.model_dir("fusion", version)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"encoder_version": encoder}))
    settings.model_dir("fusion", "v11").mkdir()  # no metrics.json: a half-written save
    assert fusion_store.list_versions(settings) == ["v1", "v2", "v10"]  # numeric order
    assert fusion_store.latest_version(settings) == "v10"
    assert fusion_store.latest_version(settings, "e1") == "v10"
    assert fusion_store.latest_version(settings, "e2") == "v2"
    assert fusion_store.latest_version(settings, "e3") is None


def test_block_weights_balance_the_embedding_block():
    w = fusion_model.block_weights(27, 32, 0.5)
    assert w[:27] == [1.0] * 27
    assert sum(x * x for x in w[27:]) == pytest.approx(0.5 * 27)  # block variance = 0.5 x behaviour's
    assert fusion_model.block_weights(3, 0, 0.5) == [1.0, 1.0, 1.0]


def test_fitted_parts_are_found_by_type_and_output_not_position(spark):
    """preprocess_model / model_inputs / pca_stage pick their stages by what they are."""
    df = spark.createDataFrame(
        [(float(i), float(i * i % 7) if i != 2 else None, [1.0, float(i)]) for i in range(1, 7)],
        "a double, b double, user_emb array<float>",
    )
    stages = fusion_model.preprocess_stages(["a", "b"], [], {}, 2, {}, fusion_model.block_weights(2, 2, 0.5))
    pca = PCA(k=2, inputCol=fusion_model.WEIGHTED_VEC, outputCol=fusion_model.PCA_VEC)
    model = Pipeline(stages=stages + [pca]).fit(df)
    pre = fusion_model.preprocess_model(model)
    assert pre.stages == model.stages[:5] and fusion_model.WEIGHTED_VEC in pre.transform(df).columns
    inputs = fusion_model.model_inputs(model)
    assert isinstance(inputs.stages[-1], ImputerModel) and len(inputs.stages) == 2
    assert fusion_model.input_column("b") in inputs.transform(df).columns
    assert isinstance(fusion_model.pca_stage(model), PCAModel)
