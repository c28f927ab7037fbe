"""The sequence encoder without Spark: data helpers, model invariants, training, metrics.

Tiny models (8-d embedding, 16 GRU units) on a tiny generated log; the planted-preference
comparison with the baselines runs in tests/integration/test_embed.py on Spark-built
sequences.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads (below)

import tensorflow as tf  # noqa: E402

from core.settings import EncoderSettings  # noqa: E402
from encoders import data, evaluate, predict  # noqa: E402
from encoders.model import EncoderParams, build  # noqa: E402
from encoders.train import fit_vocab, next_targets, split_users, to_indices, train  # noqa: E402
from persona.demo.generator import generate  # noqa: E402

TINY = EncoderParams(embedding_dim=8, hidden_dim=16, epochs=2, batch_size=16, learning_rate=0.01,
                     item_min_count=1, validation_share=0.25, seed=3)
L = 12


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return generate(80, 3, seed=5).events


@pytest.fixture(scope="module")
def seqs(events) -> data.Sequences:
    return data.from_frame(data.sequences_from_events(events, None, L))


@pytest.fixture(scope="module")
def trained(seqs, tmp_path_factory):
    root = tmp_path_factory.mktemp("models") / "encoder"
    first = train(seqs, TINY, root, data_range={"as_of": "2024-01-03"})
    second = train(seqs, TINY, root, data_range={"as_of": "2024-01-03"})
    return root, first, second


# ---- data --------------------------------------------------------------------------------
def test_sequences_from_events_layout():
    ts = pd.to_datetime(["2024-01-01 10:00:00", "2024-01-01 10:00:30", "2024-01-01 10:02:00",
                         "2024-01-02 09:00:00", "2024-01-03 00:00:00"], utc=True)
    ev = pd.DataFrame({
        "event_id": ["e1", "e2", "e3", "e4", "e5"],
        "user_id": ["a", "a", "b", "a", "a"],
        "item_id": ["i1", "i2", "i3", None, "i5"],
        "category_id": ["c1", "c2", "c3", "c1", "c9"],
        "event_type": ["view", "cart", "view", "search", "view"],
        "event_ts": ts,
    })
    out = data.sequences_from_events(ev, dt.date(2024, 1, 2), length=3).set_index("user_id")
    # a: the last 3 events up to the end of Jan 2 (the Jan 3 one is excluded), oldest first.
    assert list(out.loc["a", "item_ids"]) == ["i1", "i2", ""]
    assert list(out.loc["a", "event_types"]) == ["view", "cart", "search"]
    assert list(out.loc["a", "gap_seconds"]) == [0.0, 30.0, 23 * 3600 - 30]
    assert out.loc["a", "seq_len"] == 3
    # b: one event, right-padded.
    assert list(out.loc["b", "category_ids"]) == ["c3", "", ""]
    assert list(out.loc["b", "gap_seconds"]) == [0.0, 0.0, 0.0]
    assert out.loc["b", "seq_len"] == 1


def test_from_arrow_equals_from_frame(seqs):
    pdf = pd.DataFrame({"user_id": seqs.user_ids, **{c: list(getattr(seqs, c)) for c in data.ARRAY_COLUMNS}})
    table = pa.Table.from_pandas(pdf, preserve_index=False)
    a, b = data.from_frame(pdf), data.from_arrow(table.to_batches()[0])
    for col in ("user_ids", *data.ARRAY_COLUMNS):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))


def test_drop_last_and_last_category(seqs):
    pre = seqs.drop_last()
    n = seqs.seq_len
    np.testing.assert_array_equal(pre.seq_len, np.maximum(n - 1, 0))
    rows = np.nonzero(n > 0)[0]
    np.testing.assert_array_equal(seqs.last_category()[rows], seqs.category_ids[rows, n[rows] - 1])


# ---- model invariants ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(seqs, tmp_path_factory):
    items, cats = fit_vocab(seqs, TINY)
    enc = build(items, cats, TINY)
    path = tmp_path_factory.mktemp("model") / "v" / predict.MODEL_FILE
    path.parent.mkdir(parents=True)
    enc.model.save(str(path))
    return enc, path


def _direct(enc, s: data.Sequences) -> np.ndarray:
    return enc.model({k: tf.constant(v) for k, v in s.inputs().items()}, training=False).numpy()


def test_shape_and_unit_norm(saved, seqs):
    _, path = saved
    out = predict.embed(path, seqs)
    assert out.shape == (len(seqs), TINY.embedding_dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(out).all()


def _repad(s: data.Sequences, length: int, junk: bool = False) -> data.Sequences:
    """The same events, padded (or cut) to ``length``; ``junk`` fills padded item ids and
    gaps with garbage (the mask is the event type)."""
    n = max(int(s.seq_len.max()), 1)
    assert length >= n
    def grow(a, fill):
        out = np.full((len(s), length), fill, dtype=a.dtype)
        out[:, :n] = a[:, :n]
        return out
    out = data.Sequences(s.user_ids, grow(s.item_ids, ""), grow(s.category_ids, ""),
                         grow(s.event_types, ""), grow(s.gap_seconds, 0.0))
    if junk:
        pad = out.event_types == ""
        out.item_ids[pad] = "junk-item"
        out.gap_seconds[pad] = 12345.0
    return out


def test_padding_does_not_change_embedding(saved, seqs):
    _, path = saved
    enc = predict.load(path)
    base = predict.embed(enc, seqs)
    tight = _repad(seqs, int(seqs.seq_len.max()))
    np.testing.assert_allclose(predict.embed(enc, tight), base, atol=1e-6)
    np.testing.assert_allclose(predict.embed(enc, _repad(seqs, 40)), base, atol=1e-6)
    np.testing.assert_allclose(predict.embed(enc, _repad(seqs, 40, junk=True)), base, atol=1e-6)
    # ... while a real event does change it.
    changed = seqs.drop_last()
    diff = np.abs(predict.embed(enc, changed) - base).max(axis=1)
    assert (diff[seqs.seq_len > 1] > 1e-4).all()


def test_save_load_identical(saved, seqs):
    enc, path = saved
    np.testing.assert_array_equal(predict.embed(path, seqs), predict.embed(path, seqs))
    np.testing.assert_allclose(predict.embed(path, seqs), _direct(enc, seqs), atol=1e-6)


def test_chunking_does_not_matter(saved, seqs):
    _, path = saved
    np.testing.assert_allclose(predict.embed(path, seqs, chunk=7), predict.embed(path, seqs), atol=1e-6)


def test_unknown_ids_map_to_oov(saved, seqs):
    _, path = saved
    s = seqs.take(slice(0, 3))
    s = data.Sequences(s.user_ids, np.where(s.event_types != "", "never-seen", ""), s.category_ids.copy(),
                       s.event_types.copy(), s.gap_seconds.copy())
    assert np.isfinite(predict.embed(path, s)).all()


def test_model_cached_per_path(saved):
    _, path = saved
    assert predict.load(path) is predict.load(path.parent)


# ---- training -----------------------------------------------------------------------------
def test_params_take_names_and_defaults_from_settings():
    """One source of encoder defaults: every EncoderParams knob is a settings.encoder key
    (from_mapping would silently drop one that is not) with the same default."""
    settings = EncoderSettings().model_dump()
    params = asdict(EncoderParams())
    assert set(params) <= set(settings), set(params) - set(settings)
    assert params == {k: settings[k] for k in params}
    assert EncoderParams.from_mapping(EncoderSettings(item_vocab_size=7)).item_vocab_size == 7


def test_targets_are_next_category():
    cat = np.array([[2, 3, 4, 0], [5, 1, 0, 0]])
    typ = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    y, w = next_targets(cat, typ)
    np.testing.assert_array_equal(y[0, :2], [3, 4])
    np.testing.assert_array_equal(w, [[1, 1, 0, 0], [0, 0, 0, 0]])  # OOV target (1) unweighted


def test_split_is_stable_and_order_free():
    users = np.array([f"u{i}" for i in range(2000)], dtype=object)
    a = split_users(users, 0.2, 1)
    b = split_users(users[::-1], 0.2, 1)[::-1]
    np.testing.assert_array_equal(a, b)
    assert 0.15 < a.mean() < 0.25


def test_few_steps_reduce_loss(trained):
    _, first, _ = trained
    tr = first.metrics["training"]
    assert tr["history"]["loss"][-1] < tr["initial_loss"]


def test_training_is_deterministic(trained, seqs):
    _, first, second = trained
    assert first.version != second.version
    np.testing.assert_array_equal(predict.embed(first.path, seqs), predict.embed(second.path, seqs))
    assert first.metrics["evaluation"] == second.metrics["evaluation"]


def test_version_dir_contents(trained):
    root, first, second = trained
    assert (first.path / predict.MODEL_FILE).is_file()
    assert any((first.path / "logs").rglob("events.out.tfevents.*")), "TensorBoard logs missing"
    m = json.loads((first.path / "metrics.json").read_text())
    for key in ("hr@10", "ndcg@10", "hr@10_popularity", "ndcg@10_popularity", "hr@10_user_top",
                "ndcg@10_user_top"):
        assert 0.0 <= m["evaluation"][key] <= 1.0, key
    assert m["data"]["as_of"] == "2024-01-03" and m["data"]["users"] > 0
    assert m["vocab"]["categories"] > 2 and m["params"]["embedding_dim"] == TINY.embedding_dim
    assert m["n_params"] > 0


def test_latest_resolution(trained, tmp_path):
    root, first, second = trained
    assert predict.encoder_registry(root).versions() == sorted([first.version, second.version])
    assert predict.encoder_registry(root).resolve() == second.path  # trained later, sorts later
    assert predict.encoder_registry(root).resolve(first.version) == first.path
    # A half-written version (no metrics) is never "latest".
    (root / "99991231T000000000Z-0000000").mkdir()
    assert predict.encoder_registry(root).resolve("latest") == second.path
    with pytest.raises(FileNotFoundError):
        predict.encoder_registry(tmp_path / "nothing").resolve()
    with pytest.raises(FileNotFoundError):
        predict.encoder_registry(root).resolve("no-such-version")


def test_training_needs_events(seqs, tmp_path):
    empty = seqs.take(slice(0, 2))
    empty = data.Sequences(empty.user_ids, np.full_like(empty.item_ids, ""), np.full_like(empty.item_ids, ""),
                           np.full_like(empty.item_ids, ""), np.zeros_like(empty.gap_seconds))
    with pytest.raises(ValueError, match="no user has any event"):
        train(empty, TINY, tmp_path)


def test_indices_use_the_model_lookups(seqs):
    items, cats = fit_vocab(seqs, TINY)
    enc = build(items, cats, TINY)
    idx = to_indices(enc, seqs)
    assert idx[0][seqs.item_ids == ""].max() == 0  # padding -> 0
    real = seqs.category_ids != ""
    assert idx[1][real].min() >= 2  # every training category is in the vocabulary
    assert enc.categories[idx[1][0, 0] - 2] == seqs.category_ids[0, 0]


# ---- metrics ------------------------------------------------------------------------------
def test_rank_metrics():
    ranked = np.array([["a", "b", "c"], ["b", "c", "a"], ["c", "b", "d"]], dtype=object)
    hr, ndcg = evaluate.rank_metrics(ranked, np.array(["a", "a", "a"], dtype=object), k=3)
    assert hr == pytest.approx(2 / 3)
    assert ndcg == pytest.approx((1.0 + 1 / np.log2(4)) / 3)


def test_user_top_ranking_frequency_then_recency_then_popular():
    prefix = np.array([["x", "y", "y", "x", "z", ""]], dtype=object)
    out = evaluate.user_top_ranking(prefix, ["p", "x", "q"], k=5)
    assert out[0].tolist() == ["x", "y", "z", "p", "q"]


def test_logits_ranking_skips_padding_and_oov():
    logits = np.array([[9.0, 8.0, 0.1, 0.5, 0.3]])
    assert evaluate.logits_ranking(logits, ["c0", "c1", "c2"], k=2)[0].tolist() == ["c1", "c2"]


def test_evaluate_keys():
    m = evaluate.evaluate(np.array([["a"]], dtype=object), np.array([["a", ""]], dtype=object),
                          np.array(["a"], dtype=object), ["b"], k=10)
    assert set(m) == {"hr@10", "ndcg@10", "hr@10_popularity", "ndcg@10_popularity", "hr@10_user_top",
                      "ndcg@10_user_top", "users"}
    assert m["hr@10"] == 1.0 and m["hr@10_popularity"] == 0.0 and m["hr@10_user_top"] == 1.0
