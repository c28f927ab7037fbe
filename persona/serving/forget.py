"""``persona forget``: users leave the tables (``spark_jobs.ops.forget``) and Feast's
online stores (here).

Feast has no public call to delete single entities, so this uses the stores'
documented layouts: SQLite tables ``<project>_<view>`` keyed by the serialized entity
key (one row per feature), Redis one hash per entity at ``serialized key + project``
(every feature view of the user).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

import redis

from core.errors import ServiceError
from persona.serving.redis_codec import client_for, redis_target
from persona.serving.store import config_dict
from spark_jobs.ops.forget import Progress, given_ids, run_forget, target_ids

ENTITY = "user_id"
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _online_config(settings) -> dict:
    cfg = config_dict(settings)
    return {"project": cfg["project"], **cfg["online_store"]}


def _entity_keys(ids: Sequence[str]) -> list[bytes]:
    """Feast's serialized entity keys (v3) for string ``user_id`` values."""
    # deferred: Feast is heavy, and forgetting with --no-online never needs it
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return [serialize_entity_key(EntityKey(join_keys=[ENTITY], entity_values=[Value(string_val=i)]),
                                 entity_key_serialization_version=3) for i in ids]


def _redis_client(connection: str) -> redis.Redis:
    return client_for(redis_target(connection, connect_timeout=2.0))


def check_online_store(settings) -> None:
    """Fail (one line) before anything is deleted when the configured Redis is down."""
    cfg = _online_config(settings)
    if "redis" not in str(cfg.get("type", "")).lower():
        return
    try:
        client = _redis_client(cfg["connection_string"])
        try:
            client.ping()
        finally:
            client.close()
    except REDIS_DOWN as exc:
        raise ServiceError(f"Redis online store at {cfg['connection_string']} is unreachable "
                           f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); nothing was deleted") from exc


def _forget_sqlite(path, keys: list[bytes]) -> dict:
    con = sqlite3.connect(str(path))
    entries = rows = 0
    try:
        with con:
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for t in tables:
                quoted = '"' + t.replace('"', '""') + '"'
                cols = {r[1] for r in con.execute(f"PRAGMA table_info({quoted})")}
                if "entity_key" not in cols:
                    continue
                # SQLite caps bound parameters per statement: chunks of 500 keys.
                for i in range(0, len(keys), 500):
                    chunk = keys[i:i + 500]
                    marks = ",".join("?" * len(chunk))
                    entries += con.execute(
                        f"SELECT COUNT(DISTINCT entity_key) FROM {quoted} WHERE entity_key IN ({marks})", chunk
                    ).fetchone()[0]
                    rows += con.execute(f"DELETE FROM {quoted} WHERE entity_key IN ({marks})", chunk).rowcount
        # Deleted rows linger in free pages until the file is rebuilt.
        con.execute("VACUUM")
    finally:
        con.close()
    return {"entries_deleted": entries, "rows_deleted": rows}


def forget_online(settings, ids: Sequence[str]) -> list[dict]:
    """Delete the users' entries from Feast's online stores; one summary per store.

    Feast has no public call to delete single entities, so this uses the stores'
    documented layouts: SQLite tables ``<project>_<view>`` keyed by the serialized entity
    key (one row per feature), Redis one hash per entity at ``serialized key + project``
    (every feature view of the user). The SQLite file is cleaned whenever it exists,
    even when Redis is the configured store (an earlier embedded run may have filled it).
    """
    cfg = _online_config(settings)
    keys = _entity_keys(ids)
    out = []
    sqlite_path = settings.feast_dir / "online_store.db"
    if cfg.get("type") == "sqlite":
        sqlite_path = Path(cfg["path"])
    if sqlite_path.is_file():
        out.append({"store": "sqlite", "where": str(sqlite_path), **_forget_sqlite(sqlite_path, keys)})
    if "redis" in str(cfg.get("type", "")).lower():
        project = cfg["project"].encode()
        try:
            client = _redis_client(cfg["connection_string"])
            try:
                redis_keys = [k + project for k in keys]
                n = sum(client.delete(*redis_keys[i:i + 1000]) for i in range(0, len(redis_keys), 1000))
            finally:
                client.close()
        except REDIS_DOWN as exc:
            raise ServiceError(f"Redis online store at {cfg['connection_string']} is unreachable: "
                               "re-run forget once it is back to remove the online entries") from exc
        out.append({"store": "redis", "where": cfg["connection_string"], "entries_deleted": int(n),
                    "rows_deleted": int(n)})
    return out


def forget_users(spark, settings, users: Iterable[str], online: bool = True, progress: Progress = None) -> dict:
    """Everything ``persona forget`` does: check the online store answers (nothing is
    deleted when it does not), remove the users from every table and its history, then
    from the online stores. The summary: the tables' one plus ``online`` (one entry per
    store)."""
    users = given_ids(users)
    if online:
        check_online_store(settings)
    summary = run_forget(spark, settings, users, progress=progress)
    summary["online"] = forget_online(settings, target_ids(settings, users)) if online else []
    return summary
