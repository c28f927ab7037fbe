"""The layers contract in pyproject.toml ([tool.importlinter]) holds, and would catch a
break: persona -> spark_jobs -> encoders -> core, imports only point down, no cycles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "encoders", "spark_jobs", "persona")
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_layers_contract_is_kept():
    res = _lint(REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "broken" not in res.stdout.lower().replace("0 broken", "")


def test_an_upward_import_breaks_the_contract(tmp_path):
    """A copy of the tree where the base imports the application must fail the lint."""
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom persona.cli import app  # noqa: E402,F401  (planted)\n")
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert "core is not allowed to import persona" in res.stdout, res.stdout[-3000:]
