"""The planted behaviour model behind the synthetic log, drawn step by step with numpy.

Input: sizes, the catalogue (``persona.demo.catalogue``) and independent random
streams (one per step, so tuning one part never reshuffles the others). Output: plain
arrays, one per attribute: the users (one entry per user), their active days (one per
user-day), sessions (one per session) and events (one per event), times in integer
microseconds from the start of the window. ``persona.demo.generator`` calls the steps
in order and turns the arrays into frames; its docstring describes what the log looks
like and the structure planted here (groups, drifting preferences, category sequences).

The parameters below are per group, in the order of ``GROUP_NAMES``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.tables import EVENT_TYPES

GROUP_NAMES = ("browsers", "buyers", "night_owls", "explorers")

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

# Times are integer microseconds from the start of the window.
US = 1_000_000
_DAY_US = 86_400 * US


@dataclass
class Users:
    """Who the users are: one entry (or row) per user."""

    group: np.ndarray        # index into GROUP_NAMES
    activity: np.ndarray     # lognormal multiplier on sessions per active day
    p_active: np.ndarray     # chance of being active on a given day
    pref_start: np.ndarray   # (users, _K_MAX) ranked preferred categories at the window start (A)
    pref_end: np.ndarray     # ... at its end (B); fresh picks drift from A to B
    rank_cdf: np.ndarray     # per group, the CDF over preference ranks

    @property
    def n_pref(self) -> np.ndarray:
        """Per user, how many of the ranked preferred categories the group really uses."""
        return _N_PREF[self.group]


@dataclass
class Sessions:
    """When users shop: one entry per session, sorted by user then start; plus the
    session and the offset of each of their events (before the window cut)."""

    user: np.ndarray
    grp: np.ndarray
    start: np.ndarray           # microseconds from the window start
    tfrac: np.ndarray           # start as a fraction of the window (preference drift)
    first_of_user: np.ndarray   # True on each user's first session
    event_session: np.ndarray   # per event: its session
    event_offset: np.ndarray    # per event: microseconds after its session's start


@dataclass
class Events:
    """What users do: one entry per event inside the window, by user then time."""

    session: np.ndarray
    user: np.ndarray
    grp: np.ndarray
    ts: np.ndarray        # microseconds from the window start
    category: np.ndarray
    type: np.ndarray      # index into EVENT_TYPES
    item: np.ndarray


def draw_users(rng: np.random.Generator, U: int, G: int, pop: np.ndarray) -> Users:
    """Groups split evenly, heavy-tailed activity, and two preference sets per user."""
    group = rng.permutation(np.arange(U) % G)
    activity = np.exp(rng.normal(0.0, 0.75, U))
    p_active = rng.beta(2.0, 1.6, U)
    A, B = _pref_sets(rng, U, pop)
    return Users(group, activity, p_active, A, B, _rank_cdf(G))


def active_days(rng: np.random.Generator, p_active: np.ndarray, D: int) -> tuple[np.ndarray, np.ndarray]:
    """(user, day) of every active user-day, sorted by user then day: each day with the
    user's probability, minus a 2..7 day break for 30 % of users, at least one day each."""
    U = len(p_active)
    active = rng.random((U, D)) < p_active[:, None]
    away = rng.random(U) < 0.3
    a_start = rng.integers(0, D, U)
    a_len = rng.integers(2, 8, U)
    day_idx = np.arange(D)[None, :]
    active &= ~(away[:, None] & (day_idx >= a_start[:, None]) & (day_idx < (a_start + a_len)[:, None]))
    active[np.arange(U), rng.integers(0, D, U)] = True  # everyone shows up at least once
    au, ad = np.nonzero(active)
    return au, ad


def draw_sessions(r_sess: np.random.Generator, r_time: np.random.Generator, people: Users,
                  au: np.ndarray, ad: np.ndarray, D: int) -> Sessions:
    """Sessions per active day, their wished start hours, their events' spacing, and
    the actual starts (pushed back so a user's sessions never overlap)."""
    s_user, s_grp, s_wish = _wished_starts(r_sess, r_time, people, au, ad)
    S = len(s_user)
    n_ev = np.minimum(r_sess.geometric(1.0 / _EVENTS_PER_SESSION[s_grp]), 200)
    e_sess = np.repeat(np.arange(S), n_ev)
    E = len(e_sess)
    s_first_ev = np.concatenate([[0], np.cumsum(n_ev)[:-1]])
    gap = np.clip(np.exp(r_time.normal(np.log(25.0), 1.0, E)), 2.0, 1200.0)
    gap = (gap * US).astype(np.int64) + r_time.integers(0, US, E)
    gap[s_first_ev] = 0
    csum = np.cumsum(gap)
    within = csum - csum[s_first_ev][e_sess]  # offset of each event from its session start
    duration = within[s_first_ev + n_ev - 1]
    s_start, u_first = _non_overlapping_starts(r_time, s_user, s_wish, duration)
    tfrac = np.clip(s_start / (D * _DAY_US), 0.0, 1.0)
    return Sessions(s_user, s_grp, s_start, tfrac, u_first, e_sess, within)


def _wished_starts(r_sess, r_time, people: Users, au: np.ndarray, ad: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, group, wished start) of every session, sorted by user then wished start:
    1 + Poisson sessions per active day, start hours from the group's day profile."""
    group, activity = people.group, people.activity
    n_sess = 1 + r_sess.poisson(_SESSIONS_PER_DAY[group[au]] * activity[au])
    s_user = np.repeat(au, n_sess)
    s_day = np.repeat(ad, n_sess)
    s_grp = group[s_user]
    hour_p = np.stack([_HOURS_DAY / _HOURS_DAY.sum(), _HOURS_NIGHT / _HOURS_NIGHT.sum()])
    hour_cdf = np.cumsum(hour_p, axis=1)
    night = (s_grp == 2).astype(np.int64)
    hour = np.minimum((r_time.random(len(s_user))[:, None] > hour_cdf[night]).sum(axis=1), 23)
    s_wish = s_day * _DAY_US + hour * 3600 * US + r_time.integers(0, 3600 * US, len(s_user))
    order = np.lexsort((s_wish, s_user))
    return s_user[order], s_grp[order], s_wish[order]


def _non_overlapping_starts(r_time, s_user: np.ndarray, s_wish: np.ndarray, duration: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Session starts at or after the wished ones with > 30 min between a user's
    sessions, and the mask of each user's first session."""
    # Sessions must not overlap and must be > 30 min apart: start_k = max(wish_k,
    # end_{k-1} + idle_{k-1}). With D_k = sum_{j<k} (duration_j + idle_j) this is
    # start_k = D_k + cummax_{j<=k}(wish_j - D_j) per user: vectorised, no Python loop.
    S = len(s_user)
    idle = ((31 * 60 + r_time.exponential(25 * 60, S)) * US).astype(np.int64)
    step = duration + idle
    cs = np.cumsum(step) - step
    u_first = _group_starts(s_user)
    first_pos = np.maximum.accumulate(np.where(u_first, np.arange(S), 0))
    Dk = cs - cs[first_pos]
    s_start = Dk + pd.Series(s_wish - Dk).groupby(s_user, sort=False).cummax().to_numpy()
    return s_start, u_first


def session_categories(rng: np.random.Generator, sess: Sessions, people: Users, cat: dict, G: int) -> np.ndarray:
    """Each session's main category: the previous session's, its successor, or a fresh
    pick (the planted sequence; a user's first session is always fresh)."""
    S = len(sess.user)
    C = len(cat["pop"])
    mode = (rng.random(S)[:, None] > np.cumsum(_SESSION_MODE[:G], axis=1)[sess.grp]).sum(axis=1)
    mode = np.minimum(mode, 2)
    mode[sess.first_of_user] = 2
    fresh = mode == 2
    fresh_cat = np.zeros(S, dtype=np.int64)
    fresh_cat[fresh] = _fresh_categories(rng, sess.user[fresh], sess.grp[fresh], sess.tfrac[fresh],
                                         people, cat["pop_cdf"])
    last_fresh = np.maximum.accumulate(np.where(fresh, np.arange(S), 0))
    succ_steps = np.cumsum(mode == 1)
    j = (succ_steps - succ_steps[last_fresh]) % C
    succ_pow = np.empty((C, C), dtype=np.int64)  # succ_pow[j, c] = succ^j(c)
    succ_pow[0] = np.arange(C)
    for i in range(1, C):
        succ_pow[i] = cat["succ"][succ_pow[i - 1]]
    return succ_pow[j, fresh_cat[last_fresh]]


def draw_events(r_ecat: np.random.Generator, r_type: np.random.Generator, r_item: np.random.Generator,
                sess: Sessions, s_cat: np.ndarray, people: Users, cat: dict, G: int, D: int) -> Events:
    """The events of every session that fall inside the window: category, type, item."""
    e_sess = sess.event_session
    e_user = sess.user[e_sess]
    e_grp = sess.grp[e_sess]
    e_ts = sess.start[e_sess] + sess.event_offset
    keep = e_ts < D * _DAY_US  # the window is [start, start + days): drop the spill-over
    e_sess, e_user, e_grp, e_ts = e_sess[keep], e_user[keep], e_grp[keep], e_ts[keep]

    E = len(e_sess)
    emode = (r_ecat.random(E)[:, None] > np.cumsum(_EVENT_MODE[:G], axis=1)[e_grp]).sum(axis=1)
    e_cat = s_cat[e_sess].copy()
    m1 = emode == 1
    e_cat[m1] = cat["succ"][e_cat[m1]]
    m2 = emode >= 2
    e_cat[m2] = _fresh_categories(r_ecat, e_user[m2], e_grp[m2], sess.tfrac[e_sess][m2],
                                  people, cat["pop_cdf"])

    type_cdf = _calibrated_type_cdf(np.bincount(e_grp, minlength=G).astype(float))
    e_type = np.minimum((r_type.random(E)[:, None] > type_cdf[e_grp]).sum(axis=1), 5)
    return Events(e_sess, e_user, e_grp, e_ts, e_cat, e_type, _items(r_item, e_cat, cat))


def _items(rng: np.random.Generator, e_cat: np.ndarray, cat: dict) -> np.ndarray:
    """An item of each event's category: Zipf (s=1.1) rank inside the category by
    continuous inverse CDF."""
    s_z = 1.1
    n_c = cat["n_items"][e_cat].astype(float)
    u = rng.random(len(e_cat))
    rank = np.floor(((n_c ** (1 - s_z) - 1) * u + 1) ** (1 / (1 - s_z))).astype(np.int64) - 1
    rank = np.clip(rank, 0, cat["n_items"][e_cat] - 1)
    return cat["offsets"][e_cat] + rank


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Boolean mask: True where a run of equal (sorted) keys begins."""
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return first


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


def _fresh_categories(rng, user, grp, tfrac, people: "Users", pop_cdf: np.ndarray) -> np.ndarray:
    """A category picked from the user's drifting preferences (or global popularity)."""
    n = len(user)
    rank = (rng.random(n)[:, None] > people.rank_cdf[grp]).sum(axis=1)
    rank = np.minimum(rank, _K_MAX - 1)
    use_b = rng.random(n) < tfrac
    cat = np.where(use_b, people.pref_end[user, rank], people.pref_start[user, rank])
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
