"""Encoder versions on disk: ``<home>/models/encoder/<version>/{model.keras, metrics.json, logs/}``.

A version string is ``YYYYmmddTHHMMSSfffZ-<7 hex>`` (UTC time of training, then a hash
of parameters and data range), so lexical order is training order and ``latest`` is the
greatest complete version. A version is written under a temporary name and renamed
into place when complete, so a crashed training never becomes ``latest``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path

from encoders.predict import METRICS_FILE, MODEL_FILE

VERSION_RE = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{7}$")
LATEST = "latest"


def new_version(fingerprint: dict, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    stamp = now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    digest = hashlib.sha1(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:7]
    return f"{stamp}-{digest}"


def versions(root: str | os.PathLike) -> list[str]:
    """Complete versions under ``root``, oldest first."""
    r = Path(root)
    if not r.is_dir():
        return []
    return sorted(
        p.name for p in r.iterdir()
        if VERSION_RE.match(p.name) and (p / MODEL_FILE).is_file() and (p / METRICS_FILE).is_file()
    )


def resolve(root: str | os.PathLike, version: str | None = LATEST) -> Path:
    """The directory of ``version`` (``latest`` or None: the newest) under ``root``."""
    if not version or version == LATEST:
        found = versions(root)
        if not found:
            raise FileNotFoundError(f"no trained encoder under {root}")
        return Path(root) / found[-1]
    p = Path(root) / version
    if not ((p / MODEL_FILE).is_file() and (p / METRICS_FILE).is_file()):
        raise FileNotFoundError(f"no encoder version {version!r} under {root}")
    return p


def read_metrics(version_dir: str | os.PathLike) -> dict:
    return json.loads((Path(version_dir) / METRICS_FILE).read_text())
