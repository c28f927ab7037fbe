"""The sequence encoder: Keras 3 (TensorFlow backend), preprocessing inside the model.

Input (one row per user): the string arrays ``item_ids``, ``category_ids``,
``event_types`` and the float array ``gap_seconds``, each ``(N, L)``, right-padded with
"" / 0.0 (any L; padding is masked, so it never changes the result).
Output: ``(N, embedding_dim)`` float32, L2-normalised: one user embedding per row.

Architecture: StringLookup layers (vocabularies fitted on the training users, saved in
the ``.keras`` file, so Spark inference and training map ids identically) -> item,
category and event-type embeddings + log1p(gap) -> GRU over the real events (mask =
event_type != ""), its final state concatenated with the mean category embedding of
the real events -> Dense -> unit norm. The training head is a full softmax over the
category vocabulary on top of the normalised vector at every step, plus a learnt
"repeat" score from the user's own category counts (see :class:`RepeatScores`), so the
embedding is trained to predict the user's next category beyond simple repetition.

Index layout of every lookup: 0 = padding (""), 1 = out of vocabulary, 2.. = vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import keras
from keras import layers, ops

from core.settings import EncoderSettings
from core.tables import EVENT_TYPES
from encoders.data import ARRAY_COLUMNS, PAD

RESERVED = 2  # padding + OOV indices in front of each vocabulary
NEVER = "<persona:empty-vocabulary>"  # placeholder entry when a vocabulary would be empty
OOV_TOKEN = "[UNK]"  # StringLookup's own token: may not appear inside a vocabulary


# The one source of the defaults: the settings section every job and command reads.
_DEFAULTS = EncoderSettings()


@dataclass(frozen=True)
class EncoderParams:
    """The model and training knobs: the names and defaults of ``settings.encoder`` (the
    Spark-inference knobs there, threads and batch sizes, are not the model's)."""

    embedding_dim: int = _DEFAULTS.embedding_dim
    item_vocab_size: int = _DEFAULTS.item_vocab_size
    category_vocab_size: int = _DEFAULTS.category_vocab_size
    item_min_count: int = _DEFAULTS.item_min_count
    hidden_dim: int = _DEFAULTS.hidden_dim
    dropout: float = _DEFAULTS.dropout
    recent_decay: float = _DEFAULTS.recent_decay
    repeat_scores: bool = _DEFAULTS.repeat_scores
    epochs: int = _DEFAULTS.epochs
    batch_size: int = _DEFAULTS.batch_size
    learning_rate: float = _DEFAULTS.learning_rate
    validation_share: float = _DEFAULTS.validation_share
    patience: int = _DEFAULTS.patience
    seed: int = _DEFAULTS.seed

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | Any) -> "EncoderParams":
        """From ``settings.encoder`` (or any mapping); unknown keys are ignored."""
        if not isinstance(values, Mapping):
            values = values.model_dump() if hasattr(values, "model_dump") else vars(values)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def replace(self, **changes) -> "EncoderParams":
        return dataclasses.replace(self, **changes)


@keras.saving.register_keras_serializable(package="persona")
class LogGap(layers.Layer):
    """Seconds since the previous event -> log1p, as one feature per step."""

    def call(self, gaps):
        gaps = ops.maximum(ops.cast(gaps, "float32"), 0.0)
        return ops.expand_dims(ops.log1p(gaps), -1)


@keras.saving.register_keras_serializable(package="persona")
class NotPadding(layers.Layer):
    """Mask of real events: event-type index != 0 (the "" padding index)."""

    def call(self, type_idx):
        return ops.not_equal(type_idx, 0)


@keras.saving.register_keras_serializable(package="persona")
class MaskedMean(layers.Layer):
    """Weighted mean of step vectors over the real events, the event ``k`` steps before
    the last weighted ``decay**k`` (``decay=1``: plain mean, the user's overall mix;
    below 1: the recent mix). ``causal``: the value at every step over the events so
    far (training), else one value after the last event. Padded steps add exact zeros,
    so padding never changes a result."""

    def __init__(self, decay: float = 1.0, causal: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.decay = float(decay)
        self.causal = causal

    def call(self, x, mask):
        m = ops.cast(mask, x.dtype)
        pos = ops.cast(ops.cumsum(ops.cast(mask, "int32"), axis=1) - 1, x.dtype)  # index among real events
        log_a = math.log(self.decay)
        if self.causal:
            # decay**(t - j) = decay**t * decay**-j; the exponent is bounded by the
            # sequence length (50), far from float32 overflow for the decays used.
            w = ops.exp(-log_a * pos) * m
            total = ops.cumsum(x * ops.expand_dims(w, -1), axis=1)
            count = ops.cumsum(w, axis=1)
            return total / ops.expand_dims(ops.maximum(count, 1e-9), -1)
        last = ops.max(pos * m - (1.0 - m), axis=1, keepdims=True)
        w = ops.exp(log_a * (last - pos)) * m
        total = ops.sum(x * ops.expand_dims(w, -1), axis=1)
        count = ops.sum(w, axis=1, keepdims=True)
        return total / ops.maximum(count, 1e-9)

    def get_config(self):
        return {**super().get_config(), "decay": self.decay, "causal": self.causal}


class RepeatScores(layers.Layer):
    """Adds a learnt "repeat" score to next-category logits: ``w0*log1p(count_c) +
    w1*[c seen] + w2*[c is the last category]``, counts over the user's events so far.

    Why: a 32-d embedding cannot hold the full set of categories a user touched, and
    most next events repeat one of them; without this term the model ranks the top few
    categories far better than a per-user frequency count but loses to it further down
    the top 10. The embedding then carries what the counts cannot: order, successors and
    drift. Only in the training/scoring views (the saved model outputs the embedding).
    """

    def __init__(self, n_categories: int, **kwargs):
        super().__init__(**kwargs)
        self.n_categories = n_categories
        # The logits keep the step mask (as the Dense head does), so the loss sees it.
        self.supports_masking = True

    def build(self, *shapes):
        self.w = self.add_weight(shape=(3,), initializer="zeros", name="repeat_weights")

    def call(self, logits, cat_idx, mask, causal: bool = False):
        hot = ops.one_hot(cat_idx, self.n_categories) * ops.expand_dims(ops.cast(mask, "float32"), -1)
        if causal:
            counts, last = ops.cumsum(hot, axis=1), hot
        else:
            counts = ops.sum(hot, axis=1)
            n = ops.sum(ops.cast(mask, "int32"), axis=1, keepdims=True)
            last_idx = ops.take_along_axis(cat_idx, ops.maximum(n - 1, 0), axis=1)[:, 0]
            last = ops.one_hot(last_idx, self.n_categories) * ops.cast(n > 0, "float32")
        seen = ops.cast(counts > 0, "float32")
        return logits + self.w[0] * ops.log1p(counts) + self.w[1] * seen + self.w[2] * last


@dataclass
class Encoder:
    """The three views of one set of weights.

    ``model``: strings -> embedding (what is saved and applied in Spark).
    ``trainer``: indices -> per-step next-category logits (what is fitted).
    ``scorer``: indices -> next-category logits after the last real event (evaluation).
    ``lookups``: the StringLookup layers, applied once to the training data.
    """

    model: keras.Model
    trainer: keras.Model
    scorer: keras.Model
    lookups: dict[str, layers.StringLookup]
    items: list[str]
    categories: list[str]

    @property
    def n_categories(self) -> int:
        return len(self.categories) + RESERVED


def build(items: list[str], categories: list[str], params: EncoderParams) -> Encoder:
    """A fresh encoder over the given vocabularies (item and category ids, no padding)."""
    d, h = params.embedding_dim, params.hidden_dim
    # StringLookup refuses an empty vocabulary (e.g. no item seen twice in a tiny sample):
    # a token no id can equal keeps the layer valid; everything then maps to OOV.
    items, categories = list(items) or [NEVER], list(categories) or [NEVER]
    n_items, n_cats, n_types = len(items) + RESERVED, len(categories) + RESERVED, len(EVENT_TYPES) + RESERVED
    seed = params.seed

    lookups = {
        "item_ids": layers.StringLookup(vocabulary=items, mask_token=PAD, num_oov_indices=1,
                                        name="item_lookup"),
        "category_ids": layers.StringLookup(vocabulary=categories, mask_token=PAD,
                                            num_oov_indices=1, name="category_lookup"),
        "event_types": layers.StringLookup(vocabulary=list(EVENT_TYPES), mask_token=PAD,
                                           num_oov_indices=1, name="event_type_lookup"),
    }

    # --- core over indices --------------------------------------------------------
    item_idx = keras.Input((None,), dtype="int64", name="item_idx")
    cat_idx = keras.Input((None,), dtype="int64", name="category_idx")
    type_idx = keras.Input((None,), dtype="int64", name="event_type_idx")
    gaps = keras.Input((None,), dtype="float32", name="gap_seconds")
    init = lambda i: keras.initializers.RandomUniform(-0.05, 0.05, seed=seed + i)  # noqa: E731
    cat_embedding = layers.Embedding(n_cats, d, embeddings_initializer=init(2), name="category_embedding")
    cat_emb = cat_embedding(cat_idx)
    x = layers.Concatenate(name="step_features")([
        layers.Embedding(n_items, d, embeddings_initializer=init(1), name="item_embedding")(item_idx),
        cat_emb,
        layers.Embedding(n_types, 4, embeddings_initializer=init(3), name="event_type_embedding")(type_idx),
        LogGap(name="log_gap")(gaps),
    ])
    x = layers.Dropout(params.dropout, seed=seed + 4, name="step_dropout")(x)
    # Explicit mask: Keras' implicit mask propagation through Concatenate did not reach
    # the GRU here (padding changed the output), so the mask is passed by hand.
    mask = NotPadding(name="not_padding")(type_idx)
    gru = layers.GRU(
        h, return_sequences=True, return_state=True, name="gru",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 5),
        recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 6),
    )
    steps, last = gru(x, mask=mask)
    # The GRU state carries order (what follows what); a plain mean of the category
    # embeddings carries the user's overall mix, which a 64-unit state forgets fast.
    decays = (1.0, params.recent_decay)
    steps = layers.Concatenate(name="step_state")(
        [steps] + [MaskedMean(a, causal=True, name=f"mix_so_far_{i}")(cat_emb, mask) for i, a in enumerate(decays)])
    last = layers.Concatenate(name="final_state")(
        [last] + [MaskedMean(a, name=f"mix_{i}")(cat_emb, mask) for i, a in enumerate(decays)])
    project = layers.Dense(d, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 7),
                           name="project")
    unit = layers.UnitNormalization(name="l2_normalise")
    head = layers.Dense(n_cats, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 8),
                        name="next_category")
    core_inputs = [item_idx, cat_idx, type_idx, gaps]
    embedding = unit(project(last))
    core = keras.Model(core_inputs, embedding, name="encoder_core")
    step_logits, last_logits = head(unit(project(steps))), head(embedding)
    if params.repeat_scores:
        repeat = RepeatScores(n_cats, name="repeat_scores")
        step_logits = repeat(step_logits, cat_idx, mask, causal=True)
        last_logits = repeat(last_logits, cat_idx, mask, causal=False)
    trainer = keras.Model(core_inputs, step_logits, name="trainer")
    scorer = keras.Model(core_inputs, last_logits, name="scorer")

    # --- the saved model: raw strings in --------------------------------------------
    raw = {c: keras.Input((None,), dtype="string" if c != "gap_seconds" else "float32", name=c)
           for c in ARRAY_COLUMNS}
    out = core([lookups["item_ids"](raw["item_ids"]), lookups["category_ids"](raw["category_ids"]),
                lookups["event_types"](raw["event_types"]), raw["gap_seconds"]])
    model = keras.Model(raw, out, name="persona_sequence_encoder")
    return Encoder(model, trainer, scorer, lookups, items, categories)

