"""The one parser for the dates and times users type (``--as-of``, ``--start``, ...).

Every command and job that accepts a day takes a ``datetime.date``, an ISO string
(``2024-01-31``) or None, and turns it into a date here, so the rule and the error line
are the same everywhere.
"""

from __future__ import annotations

import datetime as dt

from core.errors import InputError


def parse_date(value: object, what: str = "the date") -> dt.date | None:
    """``None`` -> None; a date (or datetime: its day) as is; ``YYYY-MM-DD`` text -> date;
    anything else is an InputError naming ``what`` (e.g. ``"--as-of"``)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"{what} must be a date like 2024-01-31, got {value!r}") from None


def utc(value: dt.datetime | dt.date) -> dt.datetime:
    """An aware UTC datetime: a naive datetime is taken as UTC, a date as its midnight."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)


def parse_when(text: str | None, end_of_day: bool = False) -> dt.datetime | None:
    """``2024-05-01`` or an ISO timestamp -> aware UTC datetime (a bare date at end_of_day
    means the end of that day, matching the tables' ``event_timestamp``)."""
    if text is None:
        return None
    try:
        if len(text) == 10:
            base = utc(dt.date.fromisoformat(text))
            return base + dt.timedelta(days=1, microseconds=-1) if end_of_day else base
        return utc(dt.datetime.fromisoformat(text))
    except ValueError as exc:
        raise InputError(f"not a date or ISO timestamp: {text!r}") from exc
