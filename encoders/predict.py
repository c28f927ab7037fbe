"""Batch inference: numpy (or Arrow) sequences in, L2-normalised embeddings out.

Input: a saved encoder (``<models>/encoder/<version>/model.keras``) and sequences as
``(N, L)`` arrays (see :mod:`encoders.data`). Output: ``(N, embedding_dim)`` float32, one
row per input row, in order.

This is the one inference function: tests call it directly, the benchmark's in-process
figure calls it, and the Spark job calls it inside ``mapInArrow``/``mapInPandas`` on each
Arrow batch. Models are cached per process, keyed by path, so a reused Spark Python
worker loads a model once, not once per batch or task.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from core.registry import ModelRegistry

MODEL_FILE = "model.keras"
# Rows per TF call: big enough to amortise the call, small enough to stay in cache.
DEFAULT_CHUNK = 4096


def encoder_registry(root: str | os.PathLike) -> ModelRegistry:
    """The encoder versions under ``root`` (``<home>/models/encoder``): timestamped names,
    each with ``model.keras`` and ``metrics.json``."""
    return ModelRegistry(Path(root), "timestamp", required=(MODEL_FILE,))


_lock = threading.Lock()
_models: dict[str, "LoadedEncoder"] = {}
_threads: int | None = None


def configure_threads(n: int | None) -> None:
    """Limit TensorFlow to ``n`` intra-op and inter-op threads in this process.

    Must run before TF executes its first op; later calls are no-ops. In a Spark worker
    each task owns ``spark.task.cpus`` cores: letting every worker use every core makes
    them fight (measured 0.28 of in-process speed), so the job passes that number here.
    """
    global _threads
    if not n or _threads is not None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # deferred: importing this module (the driver) must not load TF

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(n))
        tf.config.threading.set_inter_op_parallelism_threads(int(n))
    except RuntimeError:
        # TF was already initialised in this process (e.g. a test ran a model before):
        # its thread pools cannot change any more; keep going with what it has.
        pass
    _threads = int(n)


class LoadedEncoder:
    """A loaded model plus a traced call over fixed input signatures (no retracing)."""

    def __init__(self, path: Path) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # deferred: TF/Keras load only where a model is loaded (a Spark worker, a test),
        # never on the driver that merely imports this module to find versions.
        import keras
        import tensorflow as tf

        import encoders.model  # noqa: F401  (registers the custom layers)

        self.path = path
        self.version = path.parent.name
        self.model = keras.saving.load_model(str(path), compile=False)
        self.embedding_dim = int(self.model.outputs[0].shape[-1])
        s = tf.TensorSpec((None, None), tf.string)
        f = tf.TensorSpec((None, None), tf.float32)
        model = self.model

        @tf.function(input_signature=[s, s, s, f], jit_compile=False)
        def call(item_ids, category_ids, event_types, gap_seconds):
            return model({"item_ids": item_ids, "category_ids": category_ids,
                          "event_types": event_types, "gap_seconds": gap_seconds}, training=False)

        self._call = call

    def __call__(self, item_ids, category_ids, event_types, gap_seconds,
                 chunk: int = DEFAULT_CHUNK) -> np.ndarray:
        n = len(item_ids)
        out = np.empty((n, self.embedding_dim), dtype=np.float32)
        if n == 0:
            return out
        gap_seconds = np.asarray(gap_seconds, dtype=np.float32)
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            out[sl] = self._call(item_ids[sl], category_ids[sl], event_types[sl], gap_seconds[sl]).numpy()
        return out


def model_path(path: str | os.PathLike) -> Path:
    """``<version dir>`` or ``<version dir>/model.keras`` -> the ``.keras`` file."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no encoder model at {p}")
    return p.resolve()


def load(path: str | os.PathLike) -> LoadedEncoder:
    """The encoder at ``path``, loaded once per process (cached by resolved path)."""
    p = model_path(path)
    key = str(p)
    with _lock:
        enc = _models.get(key)
        if enc is None:
            enc = LoadedEncoder(p)
            _models[key] = enc
        return enc


def embed(encoder: LoadedEncoder | str | os.PathLike, sequences, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Embeddings of :class:`encoders.data.Sequences` (or a dict of the four arrays)."""
    enc = encoder if isinstance(encoder, LoadedEncoder) else load(encoder)
    arrays = sequences.inputs() if hasattr(sequences, "inputs") else sequences
    return enc(arrays["item_ids"], arrays["category_ids"], arrays["event_types"],
               arrays["gap_seconds"], chunk=chunk)
