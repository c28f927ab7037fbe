"""`persona demo` end to end, twice: the whole pipeline on embedded defaults, then a
re-run that changes no table content (every stage is idempotent)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

PERSONA = str(Path(sys.executable).with_name("persona"))
TABLES = ["bronze.events", "silver.user_behaviour", "silver.user_sequences", "gold.user_embeddings", "gold.user_profiles"]
VOLATILE = {"created_timestamp", "ingested_at"}


def _demo(home: Path):
    env = {**os.environ, "PERSONA__SPARK__MASTER": "local[2]", "PERSONA__ENCODER__EPOCHS": "2"}
    return subprocess.run(
        [PERSONA, "--home", str(home), "demo", "--users", "120", "--days", "14", "--backfill-days", "3"],
        capture_output=True, text=True, timeout=1500, env=env,
    )


def _content(spark, path: str) -> str:
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(path)
    cols = sorted(c for c in df.columns if c not in VOLATILE)
    row_hash = F.sha2(F.to_json(F.struct(*cols)), 256)
    hashes = sorted(r[0] for r in df.select(row_hash).collect())
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def test_demo_runs_end_to_end_and_reruns_change_nothing(spark, tmp_path):
    home = tmp_path / "home"
    first = _demo(home)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    tail = f"stdout:\n{out[-3000:]}\nstderr:\n{first.stderr[-3000:]}"
    # One user's online profile (JSON), a training set and an analyst SQL result.
    assert "online profile of user" in out and "training set" in out and "segment_summary" in out, tail
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "{")
    stop = next(i for i in range(start, len(lines)) if lines[i].strip() == "}")
    profile = json.loads("\n".join(lines[start: stop + 1]))
    assert profile["user_id"] and isinstance(profile["profile_vec"], list) and len(profile["profile_vec"]) >= 1
    assert profile["segment_id"] is not None and profile["views_7d"] is not None
    assert "demo finished in" in first.stderr, tail
    warehouse = home / "warehouse"
    before = {t: _content(spark, str(warehouse / t.replace(".", "/"))) for t in TABLES}

    second = _demo(home)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.search(r"new 0,\s+duplicates\s+skipped\s+[1-9]", second.stderr), second.stderr[-3000:]
    assert "reusing encoder" in second.stderr, second.stderr[-3000:]
    after = {t: _content(spark, str(warehouse / t.replace(".", "/"))) for t in TABLES}
    assert after == before
