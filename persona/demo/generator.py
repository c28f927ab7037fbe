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
previous output in the same place (``persona.demo.log_files``).

Where the parts live: ``persona.demo.catalogue`` draws the catalogue,
``persona.demo.simulate`` the users, days, sessions and events (the planted model and
its parameters); :func:`generate` calls them in order and names what they drew.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import InputError
from core.tables import EVENT_TYPES
from persona.demo.catalogue import catalogue, queries
from persona.demo.log_files import write_log
from persona.demo.simulate import (
    GROUP_NAMES,
    US,
    Events,
    Users,
    active_days,
    draw_events,
    draw_sessions,
    draw_users,
    session_categories,
)

EVENT_COLUMNS = (
    "event_id", "user_id", "item_id", "category_id", "event_type", "event_ts",
    "price", "quantity", "session_id", "query", "brand",
)


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
        return write_log(self.events, self.users, self.categories, out_dir, fmt, rows_per_part)


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

    cat = catalogue(r_cat, C)
    people = draw_users(r_user, U, G, cat["pop"])
    au, ad = active_days(r_days, people.p_active, D)
    sessions = draw_sessions(r_sess, r_time, people, au, ad, D)
    s_cat = session_categories(r_scat, sessions, people, cat, G)
    ev = draw_events(r_ecat, r_type, r_item, sessions, s_cat, people, cat, G, D)

    tag = _run_tag(U, D, int(seed), start, C, G)
    ids = _Ids.of(U, len(cat["item_price"]), C)
    events = _events_frame(ev, cat, ids, tag, r_query, start)
    users_df = _users_frame(people, ids, au, ev)
    categories_df = pd.DataFrame({
        "category_id": ids.category,
        "successor_id": ids.category[cat["succ"]],
        "name": cat["names"],
        "popularity": cat["pop"],
        "price_level": cat["price_level"],
        "n_items": cat["n_items"],
    })
    params = dict(users=U, days=D, seed=int(seed), start=start, n_categories=C,
                  n_groups=G, tag=tag)
    return GeneratedLog(events=events, users=users_df, categories=categories_df, params=params)


@dataclass
class _Ids:
    """The string ids of users, items and categories, by index."""

    user: np.ndarray
    item: np.ndarray
    category: np.ndarray

    @classmethod
    def of(cls, n_users: int, n_items: int, n_categories: int) -> "_Ids":
        uw = max(7, len(str(n_users)))
        iw = max(7, len(str(n_items)))
        cw = max(3, len(str(n_categories)))
        return cls(
            user=np.array([f"u{i:0{uw}d}" for i in range(n_users)], dtype=object),
            item=np.array([f"i{i:0{iw}d}" for i in range(n_items)], dtype=object),
            category=np.array([f"c{i:0{cw}d}" for i in range(n_categories)], dtype=object),
        )


def _events_frame(ev: Events, cat: dict, ids: _Ids, tag: str, r_query: np.random.Generator,
                  start: date) -> pd.DataFrame:
    """One row per event in the ``generic`` columns (EVENT_COLUMNS), by user then time."""
    E = len(ev.session)
    used_sess, sess_code = np.unique(ev.session, return_inverse=True)
    sess_ids = np.array([f"{tag}-s{i:08x}" for i in range(len(used_sess))], dtype=object)
    event_ids = np.array([f"{tag}-{i:010x}" for i in range(E)], dtype=object)

    type_names = np.array(EVENT_TYPES, dtype=object)
    is_search = ev.type == 2
    price = cat["item_price"][ev.item].astype(float)
    price[is_search] = np.nan
    is_basket = (ev.type == 3) | (ev.type == 5)  # cart, purchase
    quantity = pd.array(np.where(is_basket, 1, 0), dtype="Int32")
    quantity[~is_basket] = pd.NA
    query = np.full(E, None, dtype=object)
    brand = cat["item_brand"][ev.item]
    query[is_search] = queries(r_query, ev.category[is_search], brand[is_search], cat["names"])

    epoch_us = int(datetime(start.year, start.month, start.day, tzinfo=timezone.utc).timestamp()) * US
    ts = pd.Series((epoch_us + ev.ts).astype("datetime64[us]")).dt.tz_localize("UTC")

    return pd.DataFrame({
        "event_id": event_ids,
        "user_id": ids.user[ev.user],
        "item_id": ids.item[ev.item],
        "category_id": ids.category[ev.category],
        "event_type": type_names[ev.type],
        "event_ts": ts,
        "price": price,
        "quantity": quantity,
        "session_id": sess_ids[sess_code],
        "query": query,
        "brand": brand,
    })


def _users_frame(people: Users, ids: _Ids, au: np.ndarray, ev: Events) -> pd.DataFrame:
    """The ground truth, one row per user: group, preferred categories, activity, counts."""
    U = len(people.group)
    n_pref = people.n_pref
    cat_ids = ids.category
    return pd.DataFrame({
        "user_id": ids.user,
        "group": people.group.astype(np.int32),
        "group_name": np.array(GROUP_NAMES, dtype=object)[people.group],
        "preferred_categories": [list(cat_ids[people.pref_end[i, : n_pref[i]]]) for i in range(U)],
        "preferred_categories_start": [list(cat_ids[people.pref_start[i, : n_pref[i]]]) for i in range(U)],
        "activity": people.activity,
        "p_active": people.p_active,
        "active_days": np.bincount(au, minlength=U).astype(np.int32),
        "n_events": np.bincount(ev.user, minlength=U).astype(np.int64),
    })
