"""Pseudonymisation of user ids: the key and the one function that derives a pseudonym.

Ingest stores ``pseudonym(key, raw_id)`` instead of the raw id when
``ingest.pseudonymise`` is on, and ``persona forget`` derives the same value to find the
rows: both call :func:`pseudonym`, so they cannot drift apart. The key comes from an
environment variable or a secret file and is never written to a table, a log or the
settings dump.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from core.errors import InputError

PSEUDONYM_HEX_CHARS = 32


def hmac_key(settings) -> bytes:
    """The HMAC key for user-id pseudonymisation, or a clear error saying where to put it."""
    cfg = settings.ingest
    value = os.environ.get(cfg.hmac_key_env, "")
    if not value and cfg.hmac_key_file:
        p = Path(cfg.hmac_key_file)
        if not p.is_file():
            raise InputError(f"pseudonymisation key file not found: {p}")
        value = p.read_text().strip()
    if len(value) < 16:
        raise InputError(
            f"pseudonymisation is on but no key of at least 16 characters is set "
            f"(env {cfg.hmac_key_env} or ingest.hmac_key_file)"
        )
    return value.encode()


def pseudonym(key: bytes, user_id: str) -> str:
    """The stored id of ``user_id``: keyed HMAC-SHA256, first 32 hex characters."""
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_CHARS]
