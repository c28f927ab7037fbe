"""Synthetic e-commerce behaviour log with known (planted) structure.

Input: sizes and a seed. Output: a :class:`GeneratedLog` whose ``events`` frame has one row
per behaviour event in the canonical ``generic`` format (the columns of
``spark_jobs.schemas.EVENTS`` minus ``event_date``/``source``/``ingested_at``), sorted by
user then time, and whose ``users`` frame (one row per user) is the ground truth later
stages are checked against. ``categories`` (one row per category) holds the catalogue
truth. Everything is vectorised numpy; the same arguments give identical frames.

What the log looks like (realism)
- Event mix: among view/cart/fav/purchase it is Taobao's (about 89 / 5.5 / 3 / 2.3 %);
  on top of that about 3 % search and 4 % click rows. The per-group rates below are
  rescaled so that the mix holds for whatever groups the users happen to fall into.
- Catalogue: ``n_categories`` categories with Zipf-like popularity, a lognormal price
  level per category (items priced around it), 30..3000 items per category with Zipf
  popularity inside the category (continuous Zipf, s=1.1), brands per category
  (about 12 % of items have no brand).
- Time: each user is active on a day with a per-user probability (Beta, mean ~0.55), and
  30 % of users also take a 2..7 day break, so gaps of several days occur; every user
  is active on at least one day. An active day has 1 + Poisson(activity) sessions;
  session starts follow an hour-of-day profile (UTC, evening peak), sessions are at
  least 31 minutes apart (idle gap), events inside a session 2 s .. 20 min apart
  (lognormal, median ~25 s). User activity is lognormal (heavy-tailed).
- Search rows carry query text built from the category's noun (and sometimes brand or
  an adjective); their ``item_id`` is the clicked-through item (never null). ``price``
  is null on search rows; ``quantity`` is 1 on cart/purchase rows, null otherwise.

PLANTED structure (returned in ``users`` / ``categories`` and tested)
(a) Groups (``users.group`` int, ``users.group_name``), the first ``n_groups`` of:
    0 ``browsers``   long sessions, almost only views: low cart/fav/purchase rates;
    1 ``buyers``     short sessions, cart rate ~3x and purchase rate ~4x the mean
                     (so high spend);
    2 ``night_owls`` ordinary rates, but ~85 % of sessions start 00:00-06:00 UTC;
    3 ``explorers``  many searches (~3x), broad interests (12 preferred categories
                     with flat weights, 40 % of picks from the whole catalogue, fewer
                     events stay in the session's category) -> many distinct categories.
    Users are split evenly between groups. The groups are separable by per-user rates
    (cart, purchase, search), night share and category breadth.
(b) Preferences that drift: each user has a start set A and an end set B of preferred
    categories (``preferred_categories_start`` / ``preferred_categories``; ranked, the
    top 3 of B never overlap the top 3 of A). A "fresh" category pick at time fraction
    f of the window comes from B with probability f, else from A (explorers and a small
    share of everyone's picks come from global popularity instead).
(c) Sequential structure: a successor map over categories (``categories.successor_id``,
    one cycle, no fixed points: think phone -> phone case). The first session of a user
    is fresh; each later session's main category is the previous session's (p=0.3),
    its successor (p=0.35) or a fresh pick (p=0.35; explorers 0.2/0.2/0.6). Inside a
    session an event is in the session category (p=0.75, explorers 0.5), its successor
    (p=0.12) or a fresh pick. So the next event's category is predictable from the
    last categories far better than from global popularity or the user's all-time
    favourites; a first-order Markov model beats both (see tests/unit/test_generate.py).

``write(out_dir, fmt)`` lays out ``<out>/events/part-NNNNN.<parquet|csv|json>`` (1M rows
per part) and ``<out>/truth/users.parquet`` (+ ``truth/categories.parquet``), replacing a
previous output in the same place.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import InputError
from core.tables import EVENT_TYPES

GROUP_NAMES = ("browsers", "buyers", "night_owls", "explorers")
EVENT_COLUMNS = (
    "event_id", "user_id", "item_id", "category_id", "event_type", "event_ts",
    "price", "quantity", "session_id", "query", "brand",
)
FORMATS = ("parquet", "csv", "json")

# Taobao UserBehavior mix among pv/cart/fav/buy, renormalised, times 93 %; plus
# 3 % search and 4 % click that Taobao does not log.
_TAOBAO = np.array([0.89, 0.055, 0.03, 0.023])
_TAOBAO = _TAOBAO / _TAOBAO.sum()
TARGET_MIX = dict(zip(EVENT_TYPES, [
    0.93 * _TAOBAO[0], 0.04, 0.03, 0.93 * _TAOBAO[1], 0.93 * _TAOBAO[2], 0.93 * _TAOBAO[3],
]))

# Per-group multipliers on each event type's rate (order of EVENT_TYPES); a common
# per-type factor is then fitted so the overall mix hits TARGET_MIX.
_TYPE_MULT = np.array([
    [1.0, 0.8, 0.6, 0.30, 0.40, 0.12],  # browsers
    [1.0, 1.0, 0.8, 3.00, 1.60, 4.00],  # buyers
    [1.0, 1.0, 1.0, 1.00, 1.00, 1.00],  # night_owls
    [1.0, 1.6, 3.2, 0.80, 1.20, 0.70],  # explorers
])
_EVENTS_PER_SESSION = np.array([12.0, 5.0, 7.0, 8.0])      # mean, geometric
_SESSIONS_PER_DAY = np.array([0.9, 0.9, 0.9, 1.1])         # Poisson mean (x activity), +1
_P_GLOBAL = np.array([0.10, 0.10, 0.10, 0.40])             # fresh pick from global popularity
_N_PREF = np.array([4, 4, 4, 12])                          # effective preferred set size
_SESSION_MODE = np.array([                                  # stay, successor, fresh
    [0.30, 0.35, 0.35], [0.30, 0.35, 0.35], [0.30, 0.35, 0.35], [0.20, 0.20, 0.60],
])
_EVENT_MODE = np.array([                                    # session cat, successor, fresh
    [0.75, 0.12, 0.13], [0.75, 0.12, 0.13], [0.75, 0.12, 0.13], [0.50, 0.12, 0.38],
])
_K_MAX = 12

# Hour-of-day weights (UTC). Day users peak in the evening; night owls live 00-06.
_HOURS_DAY = np.array([1.5, 1.0, 0.6, 0.4, 0.4, 0.6, 1.2, 2.2, 3.2, 3.8, 4.0, 4.2,
                       4.6, 4.4, 4.2, 4.2, 4.4, 4.8, 5.4, 6.2, 6.6, 6.0, 4.4, 2.6])
_HOURS_NIGHT = np.array([6.0, 7.0, 8.0, 8.0, 7.0, 5.0] + [0.3] * 17 + [2.0])

_US = 1_000_000
_DAY_US = 86_400 * _US

_NOUNS = (
    "phone", "phone case", "laptop", "laptop bag", "headphones", "charger", "camera",
    "memory card", "tv", "tv stand", "sneakers", "socks", "dress", "belt", "jacket",
    "gloves", "coffee maker", "coffee beans", "tea", "mug", "lipstick", "mirror",
    "shampoo", "towel", "desk", "desk lamp", "chair", "cushion", "bike", "helmet",
    "tent", "sleeping bag", "watch", "watch strap", "backpack", "water bottle",
    "novel", "bookmark", "toy car", "batteries", "printer", "ink", "guitar", "strings",
    "yoga mat", "dumbbells", "cat food", "cat toy", "dog leash", "dog bed",
)
_SYLLABLES = ("ka", "vo", "lin", "tek", "zu", "mar", "ra", "no", "si", "pex", "lo", "do",
              "fi", "ber", "qu", "an", "mi", "tor", "ya", "gen")
_ADJECTIVES = ("cheap", "best", "new", "black", "white", "small", "large", "wireless",
               "organic", "kids", "pro", "mini", "leather", "red", "waterproof")


@dataclass
class GeneratedLog:
    """The generated events plus the ground truth they were drawn from."""

    events: pd.DataFrame
    users: pd.DataFrame
    categories: pd.DataFrame
    params: dict = field(default_factory=dict)

    def summary(self) -> dict:
        counts = self.events["event_type"].value_counts()
        n = len(self.events)
        return {
            "events": n,
            "users": len(self.users),
            "days": self.params.get("days"),
            "start": str(self.params.get("start")),
            "seed": self.params.get("seed"),
            "mix": {t: (float(counts.get(t, 0)) / n if n else 0.0) for t in EVENT_TYPES},
        }

    def write(self, out_dir, fmt: str = "parquet", rows_per_part: int = 1_000_000) -> list[Path]:
        """Write ``<out>/events/part-*.<ext>`` and ``<out>/truth/*.parquet``; replace old output."""
        if fmt not in FORMATS:
            raise InputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise InputError(f"output path {out} exists and is not a directory")
        ev_dir, truth_dir = out / "events", out / "truth"
        # Only the two folders we own are replaced: anything else in <out> stays.
        for d in (ev_dir, truth_dir):
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
        paths = []
        n = len(self.events)
        n_parts = max(1, -(-n // rows_per_part))
        ext = {"parquet": "parquet", "csv": "csv", "json": "json"}[fmt]
        for p in range(n_parts):
            part = self.events.iloc[p * rows_per_part:(p + 1) * rows_per_part]
            path = ev_dir / f"part-{p:05d}.{ext}"
            _write_part(part, path, fmt)
            paths.append(path)
        _write_parquet(self.users, truth_dir / "users.parquet")
        _write_parquet(self.categories, truth_dir / "categories.parquet")
        return paths


def _events_arrow_schema():
    import pyarrow as pa

    return pa.schema([
        ("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
        ("category_id", pa.string()), ("event_type", pa.string()),
        ("event_ts", pa.timestamp("us", tz="UTC")), ("price", pa.float64()),
        ("quantity", pa.int32()), ("session_id", pa.string()), ("query", pa.string()),
        ("brand", pa.string()),
    ])


def _write_parquet(df: pd.DataFrame, path: Path, schema=None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    # Spark 4 refuses nanosecond parquet timestamps (PITFALLS.md).
    pq.write_table(table, path, coerce_timestamps="us", allow_truncated_timestamps=True)


def _iso_utc(ts: pd.Series) -> np.ndarray:
    # numpy formats a million timestamps ~20x faster than strftime.
    raw = ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]")
    return np.char.add(np.datetime_as_string(raw, unit="us"), "Z")


def _write_part(part: pd.DataFrame, path: Path, fmt: str) -> None:
    import pyarrow as pa

    if fmt == "parquet":
        _write_parquet(part, path, _events_arrow_schema())
        return
    # Text formats carry ISO-8601 UTC timestamps ("2024-01-01T09:18:42.110898Z").
    text = part.copy()
    text["event_ts"] = _iso_utc(part["event_ts"])
    schema = _events_arrow_schema().set(5, pa.field("event_ts", pa.string()))
    table = pa.Table.from_pandas(text, schema=schema, preserve_index=False)
    if fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    else:
        # DuckDB writes JSON lines ~4x faster than pandas.to_json (3.5 s vs 15 s per 1M rows).
        import duckdb

        con = duckdb.connect()
        try:
            con.register("part", table)
            con.execute(f"COPY part TO '{_sql_quote(path)}' (FORMAT JSON)")
        finally:
            con.close()


def _sql_quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _run_tag(users, days, seed, start, n_categories, n_groups) -> str:
    key = f"{users}|{days}|{seed}|{start.isoformat()}|{n_categories}|{n_groups}"
    return hashlib.sha1(key.encode()).hexdigest()[:8]


def validate_args(users, days, seed, start, n_categories, n_groups) -> None:
    """Raise InputError (one line) for arguments a user got wrong."""
    if not isinstance(users, (int, np.integer)) or users <= 0:
        raise InputError(f"users must be a positive integer, got {users!r}")
    if not isinstance(days, (int, np.integer)) or days <= 0:
        raise InputError(f"days must be a positive integer, got {days!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(start, date) or isinstance(start, datetime):
        raise InputError(f"start must be a date (YYYY-MM-DD), got {start!r}")
    if not isinstance(n_categories, (int, np.integer)) or n_categories < 2:
        raise InputError(f"n_categories must be an integer >= 2, got {n_categories!r}")
    if not isinstance(n_groups, (int, np.integer)) or not 1 <= n_groups <= len(GROUP_NAMES):
        raise InputError(f"n_groups must be between 1 and {len(GROUP_NAMES)}, got {n_groups!r}")


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Boolean mask: True where a run of equal (sorted) keys begins."""
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return first


def _catalogue(rng: np.random.Generator, C: int) -> dict:
    rank = rng.permutation(C)
    pop = 1.0 / (rank + 1.0) ** 0.8
    pop /= pop.sum()
    price_level = np.exp(rng.normal(3.3, 0.9, C))
    n_items = np.clip(np.exp(rng.normal(np.log(300), 0.6, C)), 30, 3000).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_items)[:-1]])
    n_total = int(n_items.sum())
    item_cat = np.repeat(np.arange(C), n_items)
    item_price = np.round(price_level[item_cat] * np.exp(rng.normal(0, 0.35, n_total)), 2)
    item_price = np.maximum(item_price, 0.01)
    n_brands = rng.integers(3, 26, C)
    item_brand_idx = np.floor(n_brands[item_cat] * rng.random(n_total) ** 2).astype(np.int64)
    syl = np.array(_SYLLABLES, dtype=object)
    picks = rng.integers(0, len(syl), (C * 26, 2))
    brand_names = np.array([(syl[x] + syl[y]).capitalize() for x, y in picks],
                           dtype=object).reshape(C, 26)
    item_brand = brand_names[item_cat, item_brand_idx]
    item_brand[rng.random(n_total) < 0.12] = None
    # One cycle through all categories: a successor map without fixed points.
    cyc = rng.permutation(C)
    succ = np.empty(C, dtype=np.int64)
    succ[cyc] = np.roll(cyc, -1)
    noun_idx = rng.permutation(C) % len(_NOUNS)
    names = np.array([
        _NOUNS[noun_idx[c]] if c < len(_NOUNS) else f"{_ADJECTIVES[c % len(_ADJECTIVES)]} {_NOUNS[noun_idx[c]]}"
        for c in range(C)
    ], dtype=object)
    return dict(pop=pop, price_level=price_level, n_items=n_items, offsets=offsets,
                item_price=item_price, item_brand=item_brand, succ=succ, names=names)


def _pref_sets(rng: np.random.Generator, U: int, pop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two ranked sets of preferred categories per user (Gumbel top-k, without replacement)."""
    C = len(pop)
    k = min(_K_MAX, C)
    logp = np.log(pop).astype(np.float32)
    A = np.empty((U, k), dtype=np.int64)
    B = np.empty((U, k), dtype=np.int64)
    chunk = 50_000
    for lo in range(0, U, chunk):
        hi = min(U, lo + chunk)
        g = logp + rng.gumbel(size=(hi - lo, C)).astype(np.float32)
        a = np.argsort(-g, axis=1)[:, :k]
        g2 = logp + rng.gumbel(size=(hi - lo, C)).astype(np.float32)
        # Drift must change something: B's head never repeats A's top 3.
        rows = np.arange(hi - lo)[:, None]
        g2[rows, a[:, : min(3, C - 1)]] = -np.inf
        A[lo:hi] = a
        B[lo:hi] = np.argsort(-g2, axis=1)[:, :k]
    if k < _K_MAX:  # tiny catalogues: pad by repeating the head
        A = np.concatenate([A, np.repeat(A[:, :1], _K_MAX - k, axis=1)], axis=1)
        B = np.concatenate([B, np.repeat(B[:, :1], _K_MAX - k, axis=1)], axis=1)
    return A, B


def _rank_cdf(n_groups: int) -> np.ndarray:
    """Per group, the CDF over ranks 0.._K_MAX-1 of a preferred set."""
    cdf = np.zeros((n_groups, _K_MAX))
    for g in range(n_groups):
        k = _N_PREF[g]
        w = np.zeros(_K_MAX)
        w[:k] = 1.0 if g == 3 else 1.0 / (np.arange(k) + 1.0) ** 1.2
        cdf[g] = np.cumsum(w / w.sum())
    cdf[:, -1] = 1.0
    return cdf


def _fresh_categories(rng, user, grp, tfrac, A, B, pop_cdf, rank_cdf) -> np.ndarray:
    """A category picked from the user's drifting preferences (or global popularity)."""
    n = len(user)
    rank = (rng.random(n)[:, None] > rank_cdf[grp]).sum(axis=1)
    rank = np.minimum(rank, _K_MAX - 1)
    use_b = rng.random(n) < tfrac
    cat = np.where(use_b, B[user, rank], A[user, rank])
    glob = rng.random(n) < _P_GLOBAL[grp]
    if glob.any():
        cat[glob] = np.minimum(np.searchsorted(pop_cdf, rng.random(int(glob.sum()))), len(pop_cdf) - 1)
    return cat


def _calibrated_type_cdf(events_per_group: np.ndarray) -> np.ndarray:
    """Per-group CDFs over EVENT_TYPES whose event-weighted mix equals TARGET_MIX."""
    G = len(events_per_group)
    target = np.array([TARGET_MIX[t] for t in EVENT_TYPES])
    w = events_per_group / max(events_per_group.sum(), 1)
    mult = _TYPE_MULT[:G]
    k = target.copy()
    for _ in range(200):  # iterative proportional fitting: converges in a few dozen steps
        p = mult * k
        p /= p.sum(axis=1, keepdims=True)
        realised = w @ p
        k *= target / np.maximum(realised, 1e-12)
    p = mult * k
    p /= p.sum(axis=1, keepdims=True)
    cdf = np.cumsum(p, axis=1)
    cdf[:, -1] = 1.0
    return cdf


def _queries(rng, cats: np.ndarray, brands: np.ndarray, names: np.ndarray) -> np.ndarray:
    tpl = rng.integers(0, 4, len(cats))
    adj = rng.integers(0, len(_ADJECTIVES), len(cats))
    out = np.empty(len(cats), dtype=object)
    for i, (c, t, a, b) in enumerate(zip(cats, tpl, adj, brands)):
        noun = names[c]
        if t == 1:
            out[i] = f"{_ADJECTIVES[a]} {noun}"
        elif t == 2 and b is not None:
            out[i] = f"{b.lower()} {noun}"
        elif t == 3:
            out[i] = f"{noun} {_ADJECTIVES[a]}"
        else:
            out[i] = noun
    return out


def generate(
    users: int,
    days: int,
    seed: int = 0,
    start: date = date(2024, 1, 1),
    n_categories: int = 120,
    n_groups: int = 4,
) -> GeneratedLog:
    """Generate a behaviour log for ``users`` users over ``days`` days from ``start`` (UTC).

    Roughly 10 events per user per day (heavy-tailed). Deterministic for the arguments.
    """
    validate_args(users, days, seed, start, n_categories, n_groups)
    U, D, C, G = int(users), int(days), int(n_categories), int(n_groups)
    # Independent streams per component, so tuning one part never reshuffles the others.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(10)]
    r_cat, r_user, r_days, r_sess, r_time, r_scat, r_ecat, r_type, r_item, r_query = streams

    cat = _catalogue(r_cat, C)
    pop_cdf = np.cumsum(cat["pop"])
    rank_cdf = _rank_cdf(G)

    # --- users ---------------------------------------------------------------------
    group = r_user.permutation(np.arange(U) % G)
    activity = np.exp(r_user.normal(0.0, 0.75, U))
    p_active = r_user.beta(2.0, 1.6, U)
    A, B = _pref_sets(r_user, U, cat["pop"])

    # --- active user-days ------------------------------------------------------------
    active = r_days.random((U, D)) < p_active[:, None]
    away = r_days.random(U) < 0.3
    a_start = r_days.integers(0, D, U)
    a_len = r_days.integers(2, 8, U)
    day_idx = np.arange(D)[None, :]
    active &= ~(away[:, None] & (day_idx >= a_start[:, None]) & (day_idx < (a_start + a_len)[:, None]))
    active[np.arange(U), r_days.integers(0, D, U)] = True  # everyone shows up at least once
    au, ad = np.nonzero(active)  # sorted by user, then day

    # --- sessions ----------------------------------------------------------------------
    n_sess = 1 + r_sess.poisson(_SESSIONS_PER_DAY[group[au]] * activity[au])
    s_user = np.repeat(au, n_sess)
    s_day = np.repeat(ad, n_sess)
    s_grp = group[s_user]
    hour_p = np.stack([_HOURS_DAY / _HOURS_DAY.sum(), _HOURS_NIGHT / _HOURS_NIGHT.sum()])
    hour_cdf = np.cumsum(hour_p, axis=1)
    night = (s_grp == 2).astype(np.int64)
    hour = np.minimum((r_time.random(len(s_user))[:, None] > hour_cdf[night]).sum(axis=1), 23)
    s_wish = s_day * _DAY_US + hour * 3600 * _US + r_time.integers(0, 3600 * _US, len(s_user))
    order = np.lexsort((s_wish, s_user))
    s_user, s_grp, s_wish = s_user[order], s_grp[order], s_wish[order]
    S = len(s_user)

    n_ev = np.minimum(r_sess.geometric(1.0 / _EVENTS_PER_SESSION[s_grp]), 200)
    e_sess = np.repeat(np.arange(S), n_ev)
    E = len(e_sess)
    s_first_ev = np.concatenate([[0], np.cumsum(n_ev)[:-1]])
    gap = np.clip(np.exp(r_time.normal(np.log(25.0), 1.0, E)), 2.0, 1200.0)
    gap = (gap * _US).astype(np.int64) + r_time.integers(0, _US, E)
    gap[s_first_ev] = 0
    csum = np.cumsum(gap)
    within = csum - csum[s_first_ev][e_sess]  # offset of each event from its session start
    duration = within[s_first_ev + n_ev - 1]

    # Sessions must not overlap and must be > 30 min apart: start_k = max(wish_k,
    # end_{k-1} + idle_{k-1}). With D_k = sum_{j<k} (duration_j + idle_j) this is
    # start_k = D_k + cummax_{j<=k}(wish_j - D_j) per user: vectorised, no Python loop.
    idle = ((31 * 60 + r_time.exponential(25 * 60, S)) * _US).astype(np.int64)
    step = duration + idle
    cs = np.cumsum(step) - step
    u_first = _group_starts(s_user)
    first_pos = np.maximum.accumulate(np.where(u_first, np.arange(S), 0))
    Dk = cs - cs[first_pos]
    s_start = Dk + pd.Series(s_wish - Dk).groupby(s_user, sort=False).cummax().to_numpy()

    end_us = D * _DAY_US
    tfrac = np.clip(s_start / end_us, 0.0, 1.0)

    # --- session categories: stay / successor / fresh chain (planted sequence) ----------
    mode = (r_scat.random(S)[:, None] > np.cumsum(_SESSION_MODE[:G], axis=1)[s_grp]).sum(axis=1)
    mode = np.minimum(mode, 2)
    mode[u_first] = 2
    fresh = mode == 2
    fresh_cat = np.zeros(S, dtype=np.int64)
    fresh_cat[fresh] = _fresh_categories(r_scat, s_user[fresh], s_grp[fresh], tfrac[fresh],
                                         A, B, pop_cdf, rank_cdf)
    last_fresh = np.maximum.accumulate(np.where(fresh, np.arange(S), 0))
    succ_steps = np.cumsum(mode == 1)
    j = (succ_steps - succ_steps[last_fresh]) % C
    succ_pow = np.empty((C, C), dtype=np.int64)  # succ_pow[j, c] = succ^j(c)
    succ_pow[0] = np.arange(C)
    for i in range(1, C):
        succ_pow[i] = cat["succ"][succ_pow[i - 1]]
    s_cat = succ_pow[j, fresh_cat[last_fresh]]

    # --- events ----------------------------------------------------------------------------
    e_user = s_user[e_sess]
    e_grp = s_grp[e_sess]
    e_ts = s_start[e_sess] + within
    keep = e_ts < end_us  # the window is [start, start + days): drop the spill-over
    e_sess, e_user, e_grp, e_ts = e_sess[keep], e_user[keep], e_grp[keep], e_ts[keep]
    E = len(e_sess)

    emode = (r_ecat.random(E)[:, None] > np.cumsum(_EVENT_MODE[:G], axis=1)[e_grp]).sum(axis=1)
    e_cat = s_cat[e_sess].copy()
    m1 = emode == 1
    e_cat[m1] = cat["succ"][e_cat[m1]]
    m2 = emode >= 2
    e_cat[m2] = _fresh_categories(r_ecat, e_user[m2], e_grp[m2], tfrac[e_sess][m2],
                                  A, B, pop_cdf, rank_cdf)

    type_cdf = _calibrated_type_cdf(np.bincount(e_grp, minlength=G).astype(float))
    e_type = np.minimum((r_type.random(E)[:, None] > type_cdf[e_grp]).sum(axis=1), 5)

    # Zipf (s=1.1) rank inside the category by continuous inverse CDF.
    s_z = 1.1
    n_c = cat["n_items"][e_cat].astype(float)
    u = r_item.random(E)
    rank = np.floor(((n_c ** (1 - s_z) - 1) * u + 1) ** (1 / (1 - s_z))).astype(np.int64) - 1
    rank = np.clip(rank, 0, cat["n_items"][e_cat] - 1)
    item = cat["offsets"][e_cat] + rank

    # --- strings and the frame ---------------------------------------------------------------
    tag = _run_tag(U, D, int(seed), start, C, G)
    uw = max(7, len(str(U)))
    user_ids = np.array([f"u{i:0{uw}d}" for i in range(U)], dtype=object)
    iw = max(7, len(str(len(cat["item_price"]))))
    item_ids = np.array([f"i{i:0{iw}d}" for i in range(len(cat["item_price"]))], dtype=object)
    cw = max(3, len(str(C)))
    cat_ids = np.array([f"c{i:0{cw}d}" for i in range(C)], dtype=object)
    used_sess, sess_code = np.unique(e_sess, return_inverse=True)
    sess_ids = np.array([f"{tag}-s{i:08x}" for i in range(len(used_sess))], dtype=object)
    event_ids = np.array([f"{tag}-{i:010x}" for i in range(E)], dtype=object)

    type_names = np.array(EVENT_TYPES, dtype=object)
    is_search = e_type == 2
    price = cat["item_price"][item].astype(float)
    price[is_search] = np.nan
    quantity = pd.array(np.where((e_type == 3) | (e_type == 5), 1, 0), dtype="Int32")
    quantity[~((e_type == 3) | (e_type == 5))] = pd.NA
    query = np.full(E, None, dtype=object)
    brand = cat["item_brand"][item]
    query[is_search] = _queries(r_query, e_cat[is_search], brand[is_search], cat["names"])

    epoch_us = int(datetime(start.year, start.month, start.day, tzinfo=timezone.utc).timestamp()) * _US
    ts = pd.Series((epoch_us + e_ts).astype("datetime64[us]")).dt.tz_localize("UTC")

    events = pd.DataFrame({
        "event_id": event_ids,
        "user_id": user_ids[e_user],
        "item_id": item_ids[item],
        "category_id": cat_ids[e_cat],
        "event_type": type_names[e_type],
        "event_ts": ts,
        "price": price,
        "quantity": quantity,
        "session_id": sess_ids[sess_code],
        "query": query,
        "brand": brand,
    })

    # --- ground truth -----------------------------------------------------------------------------
    n_pref = _N_PREF[group]
    ev_per_user = np.bincount(e_user, minlength=U)
    users_df = pd.DataFrame({
        "user_id": user_ids,
        "group": group.astype(np.int32),
        "group_name": np.array(GROUP_NAMES, dtype=object)[group],
        "preferred_categories": [list(cat_ids[B[i, : n_pref[i]]]) for i in range(U)],
        "preferred_categories_start": [list(cat_ids[A[i, : n_pref[i]]]) for i in range(U)],
        "activity": activity,
        "p_active": p_active,
        "active_days": np.bincount(au, minlength=U).astype(np.int32),
        "n_events": ev_per_user.astype(np.int64),
    })
    categories_df = pd.DataFrame({
        "category_id": cat_ids,
        "successor_id": cat_ids[cat["succ"]],
        "name": cat["names"],
        "popularity": cat["pop"],
        "price_level": cat["price_level"],
        "n_items": cat["n_items"],
    })
    params = dict(users=U, days=D, seed=int(seed), start=start, n_categories=C,
                  n_groups=G, tag=tag)
    return GeneratedLog(events=events, users=users_df, categories=categories_df, params=params)
