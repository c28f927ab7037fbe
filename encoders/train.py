"""Self-supervised training of the sequence encoder, with evaluation and versioned saving.

Input: :class:`encoders.data.Sequences` (one row per user: the user's latest sequence up
to the as-of day) and :class:`encoders.model.EncoderParams`.
Output: ``<models_root>/<version>/`` with ``model.keras`` (strings -> embedding),
``metrics.json`` (data range, vocabulary sizes, parameters, training curve, evaluation)
and ``logs/`` (TensorBoard: ``tensorboard --logdir <home>/models/encoder``).

Objective: at every step of a sequence, predict the category of the next event (full
softmax over the category vocabulary). Users are split into train/validation by a
seeded hash of ``user_id`` (stable whatever the row order). Validation loss is computed
on the validation users' prefixes (their last event removed), which drives early
stopping; their last event is then the evaluation target (see :mod:`encoders.evaluate`),
so nothing a validation user did last is ever fitted or used for model selection.
Deterministic for a seed: seeded initialisers and shuffles, TF deterministic ops.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from core.registry import write_metrics
from core.tables import EVENT_TYPES
from encoders import evaluate as ev
from encoders.data import PAD, Sequences
from encoders.model import OOV_TOKEN, RESERVED, Encoder, EncoderParams, build
from encoders.predict import MODEL_FILE, encoder_registry

K = 10


@dataclass
class TrainResult:
    version: str
    path: Path
    metrics: dict


def split_users(user_ids: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean mask of validation users: a seeded hash of the id, independent of order."""
    h = np.fromiter((zlib.crc32(f"{seed}:{u}".encode()) for u in user_ids), dtype=np.uint64, count=len(user_ids))
    return (h % 10_000) < int(round(share * 10_000))


def fit_vocab(seqs: Sequences, params: EncoderParams) -> tuple[list[str], list[str]]:
    """Items seen ``item_min_count`` times and all categories, most frequent first, capped
    at the vocabulary sizes (minus the padding and OOV slots). Ties by id: deterministic."""
    def top(values: np.ndarray, cap: int, min_count: int) -> list[str]:
        counts = Counter(values[values != PAD].tolist())
        counts.pop(OOV_TOKEN, None)  # an id spelled like the OOV token simply stays OOV
        ranked = sorted(((c, n) for c, n in counts.items() if n >= min_count), key=lambda kv: (-kv[1], kv[0]))
        return [c for c, _ in ranked[: max(cap - RESERVED, 0)]]

    return (top(seqs.item_ids, params.item_vocab_size, params.item_min_count),
            top(seqs.category_ids, params.category_vocab_size, 1))


def to_indices(encoder: Encoder, seqs: Sequences) -> list[np.ndarray]:
    """The lookup layers of the model applied once to the data (the trainer's inputs)."""
    out = []
    for col in ("item_ids", "category_ids", "event_types"):
        values = getattr(seqs, col)
        if values.size == 0:
            out.append(np.zeros(values.shape, dtype=np.int64))
            continue
        out.append(encoder.lookups[col](tf.constant(values)).numpy().astype(np.int64))
    out.append(seqs.gap_seconds.astype(np.float32))
    return out


def next_targets(cat_idx: np.ndarray, type_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step t: target = category index at t+1, weight 1 where both steps are real
    events and the target is in the vocabulary (predicting "unknown" teaches nothing)."""
    y = np.zeros_like(cat_idx)
    y[:, :-1] = cat_idx[:, 1:]
    w = np.zeros(cat_idx.shape, dtype=np.float32)
    real = type_idx != 0
    w[:, :-1] = (real[:, :-1] & real[:, 1:] & (y[:, :-1] >= RESERVED)).astype(np.float32)
    return y, w


def _set_determinism(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # older TF builds without the switch: seeds alone still apply
        pass


def _split(seqs: Sequences, params: EncoderParams) -> tuple[Sequences, Sequences]:
    """Users (each with an event) -> (train, validation): a seeded hash of the id, and
    validation users need a prefix and a target (two or more events)."""
    if len(seqs) == 0:
        raise ValueError("no user has any event in the sequences given")
    is_val = split_users(seqs.user_ids, params.validation_share, params.seed)
    is_val &= seqs.seq_len >= 2
    if not is_val.any() and len(seqs) > 1:
        is_val[np.argmax(seqs.seq_len)] = seqs.seq_len.max() >= 2
    train_set = seqs.take(np.nonzero(~is_val)[0])
    if len(train_set) == 0:
        raise ValueError("no training users left after the validation split")
    return train_set, seqs.take(np.nonzero(is_val)[0])


def _fit(encoder: Encoder, fit_set: Sequences, val_prefix: Sequences, params: EncoderParams,
         log_dir: Path, verbose: int) -> dict:
    """Compile and fit the training head with early stopping on the validation prefixes;
    returns the initial loss, the curve, the best epoch and the monitored metric."""
    x_train = to_indices(encoder, fit_set)
    y_train, w_train = next_targets(x_train[1], x_train[2])
    x_val = to_indices(encoder, val_prefix)
    y_val, w_val = next_targets(x_val[1], x_val[2])
    has_val = len(val_prefix) > 0 and w_val.sum() > 0
    encoder.trainer.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate),
        # Mean over the weighted (real) targets, so the loss reads as cross-entropy per event.
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
        weighted_metrics=[],
        jit_compile=False,  # XLA made the masked GRU slower here (and breaks determinism)
    )
    initial_loss = float(encoder.trainer.evaluate(x_train, y_train, sample_weight=w_train,
                                                  batch_size=params.batch_size, verbose=0))
    monitor = "val_loss" if has_val else "loss"
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=str(log_dir), histogram_freq=0, write_graph=False, update_freq="epoch"),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=params.patience, restore_best_weights=True),
    ]
    history = encoder.trainer.fit(
        x_train, y_train, sample_weight=w_train,
        validation_data=(x_val, y_val, w_val) if has_val else None,
        epochs=params.epochs, batch_size=params.batch_size, shuffle=True,
        callbacks=callbacks, verbose=verbose,
    )
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    best_epoch = int(np.argmin(hist[monitor])) + 1 if hist.get(monitor) else 0
    return {"initial_loss": initial_loss, "epochs_run": len(hist.get("loss", [])), "best_epoch": best_epoch,
            "monitor": monitor, "history": hist, "x_val": x_val}


def train(
    seqs: Sequences,
    params: EncoderParams,
    models_root: str | os.PathLike,
    data_range: dict | None = None,
    log: Callable[[str], None] | None = None,
    verbose: int = 0,
) -> TrainResult:
    """Fit, evaluate and save one encoder version; returns where and how well."""
    log = log or (lambda _msg: None)
    t0 = time.perf_counter()
    _set_determinism(params.seed)
    seqs = seqs.take(np.nonzero(seqs.seq_len > 0)[0])  # users with events
    train_set, val_set = _split(seqs, params)
    items, categories = fit_vocab(train_set, params)
    encoder = build(items, categories, params)
    log(f"vocabulary: {len(items)} items, {len(categories)} categories; "
        f"{len(train_set)} train / {len(val_set)} validation users")
    # A single event has no next event: such users shape the vocabulary and the
    # popularity baseline but add no training target (on Taobao most users are these).
    fit_set = train_set.take(np.nonzero(train_set.seq_len >= 2)[0])
    if len(fit_set) == 0:
        raise ValueError("no training user has two or more events")
    val_prefix = val_set.drop_last()

    registry = encoder_registry(models_root)
    version = registry.new_version({"params": asdict(params), "data": data_range or {}, "users": len(seqs),
                                    "items": len(items), "categories": len(categories)})
    with registry.staging(version) as tmp:
        fit = _fit(encoder, fit_set, val_prefix, params, tmp / "logs", verbose)
        hist = fit["history"]
        log(f"trained {fit['epochs_run']} epochs, loss {fit['initial_loss']:.3f} -> {hist['loss'][-1]:.3f}"
            + (f", val_loss best {min(hist['val_loss']):.3f}" if "val_loss" in hist else ""))
        evaluation = _evaluate(encoder, train_set, val_set, val_prefix, fit.pop("x_val"), params)
        log("evaluation: " + ", ".join(f"{k}={v:.3f}" for k, v in evaluation.items() if k != "users"))
        encoder.model.save(str(tmp / MODEL_FILE))
        metrics = {
            "version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "data": {**(data_range or {}), "users": int(len(seqs)), "train_users": int(len(train_set)),
                     "validation_users": int(len(val_set)),
                     "fitted_users": int(len(fit_set)), "events": int(seqs.seq_len.sum()),
                     "sequence_length": int(seqs.length)},
            "vocab": {"items": len(items) + RESERVED, "categories": len(categories) + RESERVED,
                      "event_types": len(EVENT_TYPES) + RESERVED,
                      "note": "sizes include index 0 (padding) and 1 (out of vocabulary)"},
            "params": asdict(params),
            "n_params": int(encoder.model.count_params()),
            "training": {**fit, "seconds": round(time.perf_counter() - t0, 2)},
            "evaluation": evaluation,
        }
        write_metrics(tmp, metrics)
    return TrainResult(version, Path(models_root) / version, metrics)


def _evaluate(encoder: Encoder, train_set: Sequences, val_set: Sequences, val_prefix: Sequences,
              x_val: list[np.ndarray], params: EncoderParams) -> dict:
    targets = val_set.last_category()
    popular = ev.popular_categories(train_set.category_ids, K)
    if len(val_set) == 0:
        return ev.evaluate(np.empty((0, K), dtype=object), val_prefix.category_ids, targets, popular, K)
    logits = encoder.scorer.predict(x_val, batch_size=max(params.batch_size, 1024), verbose=0)
    ranked = ev.logits_ranking(logits, encoder.categories, K)
    return ev.evaluate(ranked, val_prefix.category_ids, targets, popular, K)
