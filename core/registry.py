"""Model versions on disk, for every kind of fitted model (the encoder, the fusion model).

Layout: ``<home>/models/<kind>/<version>/`` holding the model's files and a
``metrics.json`` (what it was fitted on, its parameters and how well it did). A version
is built in a hidden staging directory and renamed into place only when complete, with
``metrics.json`` written last, so a crashed fit never becomes a version and a reader
never sees half a model (:meth:`ModelRegistry.staging`).

Two naming schemes, kept as they were when each kind was first written so existing
homes stay readable:
- ``timestamp`` (the encoder): ``YYYYmmddTHHMMSSfffZ-<7 hex>``, the UTC time of the fit
  and a hash of its parameters and data, so lexical order is fitting order;
- ``counter`` (the fusion model): ``v1``, ``v2``, ...
``latest`` (or None) always means the newest complete version.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

METRICS_FILE = "metrics.json"
LATEST = "latest"
TIMESTAMP_RE = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{7}$")
COUNTER_RE = re.compile(r"^v\d+$")


@dataclass(frozen=True)
class ModelRegistry:
    """The versions of one kind of model under ``root``."""

    root: Path
    naming: Literal["timestamp", "counter"]
    # Files besides metrics.json that a complete version holds (e.g. model.keras).
    required: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """What the versions are of, for messages: the root's name (``encoder``, ``fusion``)."""
        return Path(self.root).name

    def _pattern(self) -> re.Pattern:
        return TIMESTAMP_RE if self.naming == "timestamp" else COUNTER_RE

    def _complete(self, p: Path) -> bool:
        return (p / METRICS_FILE).is_file() and all((p / f).exists() for f in self.required)

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        root = Path(self.root)
        if not root.is_dir():
            return []
        found = [p.name for p in root.iterdir() if self._pattern().match(p.name) and self._complete(p)]
        if self.naming == "counter":
            return sorted(found, key=lambda v: int(v[1:]))
        return sorted(found)

    def resolve(self, version: str | None = LATEST) -> Path:
        """The directory of ``version`` (``latest`` or None: the newest); FileNotFoundError
        when there is no such complete version."""
        if not version or version == LATEST:
            found = self.versions()
            if not found:
                raise FileNotFoundError(f"no trained {self.kind} under {self.root}")
            return Path(self.root) / found[-1]
        p = Path(self.root) / version
        if not self._complete(p):
            raise FileNotFoundError(f"no {self.kind} version {version!r} under {self.root}")
        return p

    def read_metrics(self, version: str) -> dict:
        return json.loads((Path(self.root) / version / METRICS_FILE).read_text())

    def new_version(self, fingerprint: dict | None = None, now: dt.datetime | None = None) -> str:
        """A fresh version name in this registry's scheme."""
        if self.naming == "counter":
            root = Path(self.root)
            used = [int(p.name[1:]) for p in root.iterdir() if COUNTER_RE.match(p.name)] if root.is_dir() else []
            return f"v{max(used, default=0) + 1}"
        now = now or dt.datetime.now(dt.timezone.utc)
        stamp = now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
        digest = hashlib.sha1(json.dumps(fingerprint or {}, sort_keys=True, default=str).encode()).hexdigest()[:7]
        return f"{stamp}-{digest}"

    @contextlib.contextmanager
    def staging(self, version: str) -> Iterator[Path]:
        """A hidden directory to write ``version`` into; renamed to ``<root>/<version>``
        when the block ends without error and ``metrics.json`` is there, deleted otherwise."""
        root = Path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
            if not self._complete(tmp):
                raise RuntimeError(f"model version {version} is incomplete (no {METRICS_FILE} or model files)")
            os.replace(tmp, root / version)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def write_metrics(directory: Path, metrics: dict) -> None:
    """``metrics.json`` of a staged version (write it last: it marks the version complete)."""
    (Path(directory) / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str) + "\n")
