"""`persona ingest` as a user runs it: real sample, JSON summary, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

PERSONA = str(Path(sys.executable).with_name("persona"))


def _run(home, *args):
    return subprocess.run([PERSONA, "--home", str(home), *args], capture_output=True, text=True, timeout=600)


def test_rees46_sample_via_cli(tmp_path, shared_data):
    res = _run(tmp_path / "home", "ingest", str(shared_data / "rees46_2019-10_sample.csv"), "--format", "rees46", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["accepted"] == 17_434
    assert summary["by_event_type"] == {"view": 17_055, "cart": 165, "purchase": 214}
    assert (tmp_path / "home" / "warehouse" / "bronze" / "events" / "_delta_log").is_dir()


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "/no/such/file.csv", "--format", "taobao"], "input path does not exist"),
        (["ingest", "{sample}", "--format", "parquet"], "unknown format 'parquet'"),
        (["ingest", "{sample}", "--format", "rees46"], "does not look like rees46"),
        (["ingest", "{empty}", "--format", "generic"], "is empty"),
        (["ingest", "{binary}", "--format", "taobao"], "is binary"),
    ],
)
def test_user_errors_are_one_line_and_non_zero(tmp_path, shared_data, args, message):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 64)
    subst = {"{sample}": str(shared_data / "taobao_userbehavior_slice.csv"),
             "{empty}": str(tmp_path / "empty.csv"), "{binary}": str(tmp_path / "binary.csv")}
    res = _run(tmp_path / "home", *[subst.get(a, a) for a in args])
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in res.stderr and "Exception" not in res.stderr
    # Nothing was written for a refused input.
    assert not (tmp_path / "home" / "warehouse").exists()
