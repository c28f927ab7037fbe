"""A self-contained HTML report on one as-of day of ``gold.user_profiles``.

Input:  gold.user_profiles (one day, default the latest), the fusion model's
        metrics.json, silver.user_behaviour for that day and the previous as-of.
Output: one HTML file; every picture is a matplotlib PNG embedded as a base64 data URI,
        no scripts, fonts or stylesheets from anywhere else (it opens offline, mails as
        one attachment, and renders the same in headless Chromium).

Sections: summary; explained-variance curve (with the threshold and the chosen k);
segment sizes and the users on the first two components; what each segment is;
distributions of the key features (the ones that separate segments most) against the
previous as-of; drift: population stability index per behaviour feature (and per
profile component when the previous day used the same fusion version), flagged above
``fusion.psi_threshold``. Distributions and drift use a seeded sample of at most
``fusion.report_sample_rows`` users per day.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io

import numpy as np
from pyspark.sql import functions as F

from core.errors import InputError
from core.fs import writable_file
from persona.profiles import explain
from spark_jobs import delta_io
from spark_jobs.gold import fuse
from spark_jobs.gold.fusion_store import load_fusion

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
FLAG = "#d62728"
OK = "#1f77b4"


# ---------------------------------------------------------------- numbers
def psi(expected, actual, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of ``actual`` against ``expected``.

    Bins are the expected sample's quantiles (deduplicated, so a count that is mostly 0
    gets fewer, honest bins); missing values are a bin of their own, since a rise in
    nulls is drift too. ``sum((a - e) * ln(a / e))`` over bins, shares floored at eps.
    """
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.size == 0 or a.size == 0:
        return float("nan")
    e_ok, a_ok = e[~np.isnan(e)], a[~np.isnan(a)]
    if e_ok.size:
        edges = np.unique(np.quantile(e_ok, np.linspace(0, 1, bins + 1)[1:-1]))
    else:
        edges = np.array([])
    nb = edges.size + 1

    def shares(x, ok):
        idx = np.searchsorted(edges, ok, side="right")
        counts = np.bincount(idx, minlength=nb).astype(float)
        counts = np.append(counts, float(x.size - ok.size))  # the missing bin
        return np.maximum(counts / x.size, eps)

    pe, pa = shares(e, e_ok), shares(a, a_ok)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def previous_date(dates, day: dt.date) -> dt.date | None:
    before = [d for d in dates if d < day]
    return max(before) if before else None


def key_features(stats: dict, n: int = 6) -> list[str]:
    """The behaviour features whose segment means differ most from the population."""
    best: dict[str, float] = {}
    for seg in stats["segments"]:
        for f in seg["features"]:
            best[f["feature"]] = max(best.get(f["feature"], 0.0), abs(f["z"]))
    return [f for f, _ in sorted(best.items(), key=lambda kv: -kv[1])[:n]]


# ---------------------------------------------------------------- data
def _sample(df, n_rows: int, limit: int, seed: int):
    if n_rows > limit:
        df = df.sample(fraction=min(1.0, limit / n_rows), seed=seed)
    return df.toPandas()


def gather(spark, settings, as_of=None) -> dict:
    """Everything the report shows, as plain Python/pandas objects."""
    fusion = settings.fusion
    day, profiles, version = explain._day_profiles(spark, settings, as_of)
    _, metrics = load_fusion(settings, version)
    stats = explain.segment_stats(spark, settings, day)
    features = metrics["behaviour_features"]
    n_users = stats["users"]

    prof = _sample(profiles.select("segment_id", "profile_vec"), n_users, fusion.report_sample_rows, fusion.seed)
    behaviour = delta_io.read(spark, settings.table(fuse.BEHAVIOUR_TABLE), fuse.BEHAVIOUR_TABLE)
    b_dates = delta_io.partition_values(spark, settings.table(fuse.BEHAVIOUR_TABLE), "as_of_date")
    prev = previous_date(b_dates, day)

    def day_features(d):
        frame = behaviour.where(F.col("as_of_date") == F.lit(d)).select(*[F.col(c).cast("double") for c in features])
        return _sample(frame, n_users, fusion.report_sample_rows, fusion.seed)

    cur = day_features(day)
    old = day_features(prev) if prev else None
    prev_prof = None
    if prev is not None and prev in fuse.profile_dates(spark, settings):
        p = fuse.read_profiles(spark, settings).where(F.col("as_of_date") == F.lit(prev))
        if {r[0] for r in p.select("fusion_version").distinct().collect()} == {version}:
            prev_prof = _sample(p.select("profile_vec"), n_users, fusion.report_sample_rows, fusion.seed)

    drift = []
    if old is not None:
        for c in features:
            drift.append({"feature": c, "psi": psi(old[c].to_numpy(), cur[c].to_numpy(), fusion.psi_bins)})
        if prev_prof is not None:
            a = np.vstack(prof["profile_vec"].to_numpy())
            e = np.vstack(prev_prof["profile_vec"].to_numpy())
            for j in range(a.shape[1]):
                drift.append({"feature": f"PC{j + 1}", "psi": psi(e[:, j], a[:, j], fusion.psi_bins)})
        for d in drift:
            d["flagged"] = bool(d["psi"] > fusion.psi_threshold)
    return {
        "as_of": day, "previous": prev, "fusion_version": version, "metrics": metrics, "stats": stats,
        "profiles": prof, "current": cur, "previous_features": old, "drift": drift,
        "key_features": key_features(stats), "log1p": set(metrics["log1p_columns"]),
        "threshold": fusion.psi_threshold,
    }


# ---------------------------------------------------------------- pictures
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    """pyplot on the Agg backend (files only, no display)."""
    # deferred: matplotlib takes over a second to import and only the pictures need it;
    # pyplot must come after use("Agg") so that no GUI backend is ever picked.
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def variance_chart(metrics: dict) -> str:
    plt = _plt()
    ev = np.array(metrics["explained_variance_all"])
    shown = ev[: max(metrics["k"] + 5, min(len(ev), 30))]
    x = np.arange(1, shown.size + 1)
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.bar(x, shown, color=[OK if i <= metrics["k"] else "#aec7e8" for i in x], label="per component")
    ax2 = ax.twinx()
    ax2.plot(x, np.cumsum(ev)[: shown.size], color="#ff7f0e", marker="o", ms=3, label="cumulative")
    ax2.axhline(metrics["variance_threshold"], color="#7f7f7f", ls="--", lw=1)
    ax2.axvline(metrics["k"] + 0.5, color="#2ca02c", lw=1.5)
    ax2.set_ylim(0, 1.02)
    ax2.text(metrics["k"] + 0.7, 0.05, f"k = {metrics['k']}", color="#2ca02c")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance")
    ax2.set_ylabel("cumulative")
    ax.set_title("Explained variance (bars) and cumulative (line); dashed: threshold")
    return _png(fig)


def segments_chart(stats: dict, profiles) -> str:
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1.3]})
    segs = stats["segments"]
    ids = [s["segment_id"] for s in segs]
    ax.barh([f"segment {i}" for i in ids], [s["size"] for s in segs],
            color=[PALETTE[i % len(PALETTE)] for i in ids])
    ax.invert_yaxis()
    for y, s in enumerate(segs):
        ax.text(s["size"], y, f" {s['share']:.0%}", va="center")
    ax.set_xlabel("users")
    ax.set_title("Segment sizes")
    vec = np.vstack(profiles["profile_vec"].to_numpy()) if len(profiles) else np.zeros((0, 2))
    seg = profiles["segment_id"].to_numpy()
    if vec.shape[1] >= 2:
        keep = np.arange(vec.shape[0])[:5000]
        for i in ids:
            m = seg[keep] == i
            ax2.scatter(vec[keep][m, 0], vec[keep][m, 1], s=6, alpha=0.6, color=PALETTE[i % len(PALETTE)],
                        label=f"segment {i}")
        ax2.set_xlabel("PC1")
        ax2.set_ylabel("PC2")
        ax2.legend(fontsize=7, markerscale=2)
    ax2.set_title("Users on the first two components")
    fig.tight_layout()
    return _png(fig)


def distributions_chart(data: dict) -> str:
    plt = _plt()
    feats = data["key_features"]
    cols = 3
    rows = max(1, (len(feats) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.8 * rows), squeeze=False)
    for ax, f in zip(axes.ravel(), feats):
        cur = data["current"][f].dropna().to_numpy()
        old = data["previous_features"][f].dropna().to_numpy() if data["previous_features"] is not None else None
        tx = np.log1p if f in data["log1p"] else (lambda v: v)
        both = np.concatenate([tx(cur), tx(old)]) if old is not None else tx(cur)
        edges = np.histogram_bin_edges(both, bins=30) if both.size else 10
        ax.hist(tx(cur), bins=edges, color=OK, alpha=0.75, label=str(data["as_of"]))
        if old is not None:
            ax.hist(tx(old), bins=edges, histtype="step", color="#ff7f0e", lw=1.5, label=str(data["previous"]))
        ax.set_title(f"log1p({f})" if f in data["log1p"] else f, fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(feats):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def drift_chart(data: dict) -> str:
    plt = _plt()
    # The 20 largest: the table below lists every feature.
    drift = sorted(data["drift"], key=lambda d: -d["psi"])[:20]
    fig, ax = plt.subplots(figsize=(10, 0.22 * len(drift) + 1.2))
    ax.barh([d["feature"] for d in drift], [d["psi"] for d in drift],
            color=[FLAG if d["flagged"] else OK for d in drift])
    ax.axvline(data["threshold"], color="#7f7f7f", ls="--", lw=1)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("population stability index")
    ax.set_title(f"Drift {data['previous']} -> {data['as_of']}: largest PSI (red: above {data['threshold']})")
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------- page
_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1120px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.summary{display:flex;gap:28px;flex-wrap:wrap;margin:10px 0}
.summary div{background:#f4f6f8;padding:8px 14px;border-radius:6px}
.summary b{display:block;font-size:18px}
img{max-width:100%} table{border-collapse:collapse;font-size:13px} td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums} .flag{color:#a00020;font-weight:bold}
.note{color:#666;font-size:12px}
"""


def render_html(data: dict) -> str:
    m, stats = data["metrics"], data["stats"]
    esc = html.escape
    flagged = [d for d in data["drift"] if d["flagged"]]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>persona profiles {data['as_of']}</title><style>{_CSS}</style></head><body>",
        f"<h1>persona profile report: as of {data['as_of']}</h1>",
        f"<div class='note'>fusion {esc(data['fusion_version'])} fitted on {esc(m['fitted_as_of'])} "
        f"({m['fitted_rows']:,} users), encoder {esc(m['encoder_version'])}; generated "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC</div>",
        "<div class='summary'>",
        f"<div>users<b>{stats['users']:,}</b></div>",
        f"<div>profile dims (k)<b>{m['k']}</b></div>",
        f"<div>variance kept<b>{m['cumulative_explained_variance']:.1%}</b></div>",
        f"<div>segments<b>{len(stats['segments'])}</b></div>",
        f"<div>silhouette<b>{m['silhouette']:.3f}</b></div>",
        f"<div>drift flags<b>{len(flagged)}</b></div>",
        "</div>",
        "<h2>Explained variance</h2>",
        f"<img alt='explained variance' src='{variance_chart(m)}'>",
        "<p class='note'>" + (
            f"k = {m['k']}: the fewest components reaching {m['variance_threshold']:.0%} of the variance of the "
            f"standardised inputs (cap {m['max_k']})."
            if m["cumulative_explained_variance"] >= m["variance_threshold"] - 1e-9 else
            f"k = {m['k']}: the cap (max_k); {m['cumulative_explained_variance']:.0%} of the variance kept, "
            f"short of the {m['variance_threshold']:.0%} threshold."
        ) + "</p>",
        "<h2>Segments</h2>",
        f"<img alt='segment sizes' src='{segments_chart(stats, data['profiles'])}'>",
        "<table><tr><th>segment</th><th>users</th><th>share</th><th>what distinguishes it (z of segment mean)</th></tr>",
    ]
    for s in stats["segments"]:
        words = "; ".join(
            f"{esc(f['direction'])} {esc(f['feature'])} ({explain._fmt(f['raw_mean'])} vs "
            f"{explain._fmt(f['population_raw_mean'])}, {f['z']:+.2f})"
            for f in s["distinctive"]
        )
        parts.append(f"<tr><td>{s['segment_id']}</td><td class='num'>{s['size']:,}</td>"
                     f"<td class='num'>{s['share']:.1%}</td><td>{words}</td></tr>")
    parts.append("</table>")
    parts += ["<h2>Key features</h2>",
              f"<img alt='feature distributions' src='{distributions_chart(data)}'>",
              "<p class='note'>The features whose segment means differ most from the population; "
              "bars: this day, line: the previous as-of.</p>",
              "<h2>Drift against the previous as-of</h2>"]
    if not data["drift"]:
        parts.append("<p>No previous as-of to compare with.</p>")
    else:
        parts.append(f"<img alt='drift' src='{drift_chart(data)}'>")
        parts.append("<table><tr><th>feature</th><th>PSI</th><th></th></tr>")
        for d in sorted(data["drift"], key=lambda d: -d["psi"]):
            flag = "<span class='flag'>drift</span>" if d["flagged"] else ""
            parts.append(f"<tr><td>{esc(d['feature'])}</td><td class='num'>{d['psi']:.3f}</td><td>{flag}</td></tr>")
        parts.append("</table>")
        parts.append(f"<p class='note'>Population stability index against {data['previous']}, "
                     f"flagged above {data['threshold']}.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(spark, settings, out, as_of=None) -> dict:
    """Build the report for ``as_of`` (default: latest profiles) and write it to ``out``."""
    path = writable_file(out)
    data = gather(spark, settings, as_of)
    page = render_html(data)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return {
        "as_of": data["as_of"].isoformat(),
        "previous": data["previous"].isoformat() if data["previous"] else None,
        "path": str(path),
        "bytes": len(page.encode("utf-8")),
        "users": data["stats"]["users"],
        "drift_flagged": [d["feature"] for d in data["drift"] if d["flagged"]],
    }
