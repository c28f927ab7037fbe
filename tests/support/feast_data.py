"""Planted snapshots of the three tables Feast serves, for the Feast tests (integration
and e2e): snapshot k of user i carries the value 100*k + i in every count, in the
embedding and the profile vector, so any leak from a later snapshot is visible. Dates
are relative to today, so incremental materialization behaves as in production."""

from __future__ import annotations

import datetime as dt

from spark_jobs.delta_io import replace_where
from spark_jobs.schemas import USER_BEHAVIOUR, USER_EMBEDDINGS, USER_PROFILES

TODAY = dt.datetime.now(dt.timezone.utc).date()
# snapshot index -> as_of_date. D0 is older than the 30-day ttl relative to D3.
DAYS = {0: TODAY - dt.timedelta(days=45), 1: TODAY - dt.timedelta(days=10),
        2: TODAY - dt.timedelta(days=6), 3: TODAY - dt.timedelta(days=1)}
# user -> the snapshots it appears in
USERS = {"u1": [1, 2, 3], "u2": [1, 2, 3], "u3": [2, 3], "u4": [1], "u5": [0]}
UIDX = {u: i + 1 for i, u in enumerate(USERS)}


def end_of(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, 23, 59, 59, 999999, tzinfo=dt.timezone.utc)


def planted(k: int, user: str) -> int:
    return 100 * k + UIDX[user]


def write_snapshot(spark, settings, k: int, users: list[str]) -> None:
    """One as_of_date partition of all three tables, values planted from (k, user)."""
    day = DAYS[k]
    ev = end_of(day)  # aware UTC: PySpark converts it exactly
    base = dict(as_of_date=day, event_timestamp=ev, created_timestamp=ev + dt.timedelta(hours=3))
    beh, emb, prof = [], [], []
    for u in users:
        v = planted(k, u)
        row = dict(base, user_id=u, days_since_last_event=v, days_since_last_purchase=None if u == "u2" else v,
                   top_categories_30d=[f"c{v}", f"c{v + 1}"])
        for f in USER_BEHAVIOUR.fields:
            if f.name not in row:
                row[f.name] = v if f.dataType.typeName() == "long" else v + 0.25
        beh.append(row)
        emb.append(dict(base, user_id=u, user_emb=[float(v), float(k), 0.5], encoder_version=f"enc-{k}"))
        prof.append(dict(base, user_id=u, profile_vec=[float(v), -1.5], segment_id=v,
                         fusion_version=f"fuse-{k}", encoder_version=f"enc-{k}"))
    for name, rows, schema in (("silver.user_behaviour", beh, USER_BEHAVIOUR),
                               ("gold.user_embeddings", emb, USER_EMBEDDINGS),
                               ("gold.user_profiles", prof, USER_PROFILES)):
        df = spark.createDataFrame([tuple(r[f.name] for f in schema.fields) for r in rows], schema)
        replace_where(df, settings.table(name), schema, "as_of_date", day, day)
