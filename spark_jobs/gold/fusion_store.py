"""Saved fusion model versions: ``v1``, ``v2``, ... under ``<home>/models/fusion``.

Input:  the settings (where the home is) and a fitted ``PipelineModel`` with its metrics.
Output: ``<home>/models/fusion/<version>/pipeline`` (the Spark ML model) and
        ``metrics.json`` beside it, written last (core.registry.ModelRegistry stages the
        version and renames it into place).
Grain:  one directory per fitted version.
"""

from __future__ import annotations

import datetime as dt
import json

from pyspark.ml import PipelineModel

from core.errors import NotBuiltError
from core.registry import ModelRegistry, write_metrics

MODEL_KIND = "fusion"


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


def save_fusion(settings, model, metrics: dict) -> str:
    """Save under a new version (staged, then renamed into place with metrics.json last)."""
    registry = fusion_registry(settings)
    version = registry.new_version()
    metrics = dict(metrics, version=version, created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    with registry.staging(version) as tmp:
        model.write().overwrite().save(str(tmp / "pipeline"))
        write_metrics(tmp, metrics)
    # The fitted object is what was saved (the reload test checks that): applying it
    # directly spares reading its eleven stages back from disk.
    final = settings.model_dir(MODEL_KIND, version)
    _MODEL_CACHE[str(final)] = ((final / "metrics.json").stat().st_mtime_ns, model, metrics)
    return version
