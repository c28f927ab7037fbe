"""The HTML report: self-contained, the planted drift flagged, and the charts really on
screen when headless Chromium renders it (compared with the same page without its
pictures)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from persona.profiles.report import write_report
from tests.support.fusion_data import DAY1, DAY2, DRIFTED_FEATURE, fused_home

pytestmark = pytest.mark.integration

IMG = re.compile(r"<img alt='([^']*)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>")
# matplotlib's default cycle: every chart uses some of these; page text and tables don't.
CHART_COLOURS = {"blue": (31, 119, 180), "orange": (255, 127, 14), "green": (44, 160, 44), "red": (214, 39, 40)}


@pytest.fixture(scope="module")
def report(spark, tmp_path_factory):
    built = fused_home(spark, tmp_path_factory)
    out = tmp_path_factory.mktemp("report") / "report.html"
    summary = write_report(spark, built["settings"], out)  # default: the latest day
    return summary, out


def test_report_is_self_contained_with_four_pictures(report):
    summary, path = report
    page = path.read_text()
    assert summary["as_of"] == DAY2.isoformat() and summary["previous"] == DAY1.isoformat()
    assert not re.search(r"(src|href)\s*=\s*['\"](?!data:)", page), "external reference in the report"
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page
    images = IMG.findall(page)
    assert [alt for alt, _ in images] == ["explained variance", "segment sizes", "feature distributions", "drift"]
    for _, b64 in images:
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert img.format == "PNG" and img.width >= 400 and img.height >= 150


def test_report_flags_the_planted_drift_only(report):
    summary, path = report
    flagged = [f for f in summary["drift_flagged"] if not f.startswith("PC")]
    assert flagged == [DRIFTED_FEATURE]
    page = path.read_text()
    row = re.search(rf"<tr><td>{DRIFTED_FEATURE}</td><td class='num'>([0-9.]+)</td><td><span class='flag'>drift", page)
    assert row and float(row.group(1)) > 0.2
    assert re.search(r"<tr><td>views_30d</td><td class='num'>([0-9.]+)</td><td></td></tr>", page)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("PERSONA_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium not installed (apt-get install -y chromium)")
        pytest.skip("chromium not installed")
    return exe


def _screenshot(exe: str, html_path, png_path, profile_dir) -> np.ndarray:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile_dir}", f"--screenshot={png_path}", "--window-size=1200,3000",
           f"file://{html_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and png_path.is_file(), proc.stderr[-2000:]
    return np.asarray(Image.open(png_path).convert("RGB")).astype(int)


def _chart_mask(px: np.ndarray, colour) -> np.ndarray:
    return np.abs(px - np.array(colour)).sum(axis=2) < 60


def test_report_renders_with_charts_in_headless_chromium(report, tmp_path):
    exe = _chromium()
    _, path = report
    shot = _screenshot(exe, path, tmp_path / "report.png", tmp_path / "profile-a")
    # The same page with every picture removed: what "charts missing" looks like.
    blank_html = tmp_path / "blank.html"
    blank_html.write_text(IMG.sub(lambda m: f"<img alt='{m.group(1)}' src=''>", path.read_text()))
    blank = _screenshot(exe, blank_html, tmp_path / "blank.png", tmp_path / "profile-b")
    print(f"screenshots: {tmp_path / 'report.png'} {tmp_path / 'blank.png'}")
    assert shot.shape == blank.shape == (3000, 1200, 3)

    # Every chart colour is on screen with the pictures and (almost) nowhere without.
    for name, colour in CHART_COLOURS.items():
        with_px, without_px = int(_chart_mask(shot, colour).sum()), int(_chart_mask(blank, colour).sum())
        print(f"{name}: {with_px} px with charts, {without_px} without")
        assert with_px > 2000 and without_px < 200, name
    # The charts occupy tall bands down the page (variance, segments, distributions,
    # drift), not a stray strip: rows holding chart colours, and the bands they form.
    any_chart = np.zeros(shot.shape[:2], dtype=bool)
    for colour in CHART_COLOURS.values():
        any_chart |= _chart_mask(shot, colour)
    rows = any_chart.sum(axis=1) > 3
    starts = np.flatnonzero(rows[1:] & ~rows[:-1])
    print(f"rows with chart colours: {rows.sum()}, bands: {starts.size}")
    assert rows.sum() > 900
    # Ink: the pictures put several times more non-white area on the page than the text.
    ink, blank_ink = (shot.sum(axis=2) < 720).mean(), (blank.sum(axis=2) < 720).mean()
    print(f"non-white area: {ink:.1%} with charts, {blank_ink:.1%} without")
    assert ink > 3 * blank_ink and ink > 0.05
