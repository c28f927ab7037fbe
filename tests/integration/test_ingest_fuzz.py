"""Property-based fuzzing of every adapter: random malformed rows mixed with valid ones.

Valid rows are built so that their canonical values are known; bad rows come from
mutations that certainly break a rule (missing fields, garbage or huge timestamps,
unknown types, negative or non-numeric prices, extra or missing delimiters, unbalanced
quotes, invalid UTF-8). Properties: parsing never crashes, every valid row is accepted
with its values intact, every bad row carries a reason; and a full ingest of such a
file lands exactly the valid rows and quarantines exactly the bad ones.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from core.settings import load_settings
from spark_jobs.bronze import ingest

pytestmark = pytest.mark.integration

BASE_TS = 1_700_000_000  # 2023-11-14
ids = st.text(alphabet="0123456789", min_size=1, max_size=25)  # huge ids are valid strings
safe_text = st.text(alphabet="abcdefghij ,\"'xyz", min_size=1, max_size=12).map(str.strip).filter(bool)


@st.composite
def taobao_valid(draw):
    u, i, c = draw(ids), draw(ids), draw(ids)
    t = draw(st.sampled_from(["pv", "buy", "cart", "fav"]))
    ts = BASE_TS + draw(st.integers(0, 86_400 * 30))
    return f"{u},{i},{c},{t},{ts}", (u, i, t, ts)


TAOBAO_BREAKERS = [
    lambda f: ["", *f[1:]],  # missing user
    lambda f: [f[0], "", *f[2:]],  # missing item
    lambda f: [*f[:4], "12ab"],  # garbage timestamp
    lambda f: [*f[:4], "9" * 30],  # huge timestamp
    lambda f: [*f[:3], "teleport", f[4]],  # unknown type
    lambda f: f[:4],  # missing field
    lambda f: [*f, "extra"],  # injected delimiter
    lambda f: [f[0], '"' + f[1], *f[2:]],  # unbalanced quote
]


@st.composite
def taobao_bad(draw):
    line, _ = draw(taobao_valid())
    k = draw(st.integers(0, len(TAOBAO_BREAKERS) - 1))
    return ",".join(TAOBAO_BREAKERS[k](line.split(",")))


def _csv_quote(v: str) -> str:
    return '"' + v.replace('"', '""') + '"' if any(ch in v for ch in ',"') else v


@st.composite
def rees46_valid(draw):
    ts = dt.datetime(2019, 10, 1) + dt.timedelta(seconds=draw(st.integers(0, 86_400 * 20)))
    t = draw(st.sampled_from(["view", "cart", "purchase"]))
    item, cat, user = draw(ids), draw(st.text("0123456789", min_size=19, max_size=19)), draw(ids)
    brand = draw(st.one_of(st.just(""), safe_text))
    price = draw(st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False))
    line = ",".join([f"{ts:%Y-%m-%d %H:%M:%S} UTC", t, item, cat, "", _csv_quote(brand), str(price), user, "s1"])
    return line, (user, item, t, cat, brand or None)


REES46_BREAKERS = [
    lambda f: [f[0], f[1], "", *f[3:]],  # missing item
    lambda f: [*f[:7], "", f[8]],  # missing user
    lambda f: ["2019-13-45 99:00:00 UTC", *f[1:]],  # impossible time
    lambda f: [f[0], "remove_all", *f[2:]],  # unknown type
    lambda f: [*f[:6], "-1" + f[6], *f[7:]],  # negative price
    lambda f: [*f[:6], "12,5", *f[7:]],  # delimiter injected into the price
    lambda f: f[:8],  # missing field
]


@st.composite
def rees46_bad(draw):
    line, _ = draw(rees46_valid())
    import csv

    fields = next(csv.reader([line]))
    fields = [_csv_quote(x) for x in fields]
    k = draw(st.integers(0, len(REES46_BREAKERS) - 1))
    return ",".join(REES46_BREAKERS[k](fields))


@st.composite
def generic_valid(draw):
    ts = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=draw(st.integers(0, 86_400 * 20)))
    t = draw(st.sampled_from(["view", "click", "search", "cart", "fav", "purchase"]))
    u, i = draw(ids), draw(ids)
    query = draw(safe_text) if t == "search" else ""
    return ",".join([u, i, "c1", t, ts.isoformat().replace("+00:00", "Z"), "", _csv_quote(query)]), (u, i, t, query or None)


GENERIC_BREAKERS = [
    lambda f: ["", *f[1:]],
    lambda f: [f[0], "", *f[2:]],
    lambda f: [*f[:3], "teleport", *f[4:]],
    lambda f: [*f[:4], "not-a-time", *f[5:]],
    lambda f: [*f[:4], "2999-01-01T00:00:00Z", *f[5:]],
    lambda f: [*f[:5], "-5", f[6]],
    lambda f: [*f[:5], "1e999", f[6]],
    lambda f: f[:5],
    lambda f: [*f, "x", "y"],
]


@st.composite
def generic_bad(draw):
    line, _ = draw(generic_valid())
    import csv

    fields = [_csv_quote(x) for x in next(csv.reader([line]))]
    k = draw(st.integers(0, len(GENERIC_BREAKERS) - 1))
    return ",".join(GENERIC_BREAKERS[k](fields))


HEADERS = {
    "taobao": "",
    "rees46": "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n",
    "generic": "user_id,item_id,category_id,event_type,event_ts,price,query\n",
}
STRATEGIES = {
    "taobao": (taobao_valid(), taobao_bad()),
    "rees46": (rees46_valid(), rees46_bad()),
    "generic": (generic_valid(), generic_bad()),
}
BAD_BYTES = b"\xff\xfe\xfd"


def _mixed_file(data, fmt: str, tmp_path, n_max: int = 25):
    valid_s, bad_s = STRATEGIES[fmt]
    valid = data.draw(st.lists(valid_s, min_size=1, max_size=n_max), label="valid")
    bad = data.draw(st.lists(bad_s, min_size=0, max_size=n_max), label="bad")
    n_binary = data.draw(st.integers(0, 2), label="invalid utf-8 rows")
    # Keep the first line valid (a file that opens with garbage is refused as a whole).
    rows = [(line.encode(), True, key) for line, key in valid[:1]]
    rest = [(line.encode(), True, key) for line, key in valid[1:]] + [(b.encode(), False, None) for b in bad]
    rest += [(valid[0][0].encode()[:2] + BAD_BYTES + valid[0][0].encode()[2:], False, None) for _ in range(n_binary)]
    order = data.draw(st.permutations(range(len(rest))), label="order")
    rows += [rest[i] for i in order]
    path = tmp_path / f"fuzz-{fmt}.csv"
    path.write_bytes(HEADERS[fmt].encode() + b"\n".join(r[0] for r in rows) + b"\n")
    return path, rows


@pytest.mark.parametrize("fmt", ["taobao", "rees46", "generic"])
def test_fuzz_parse_accepts_exactly_the_valid_rows(spark, tmp_path_factory, fmt):
    settings = load_settings(home=tmp_path_factory.mktemp("h"), environ={})

    @hsettings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(data=st.data())
    def prop(data):
        tmp = tmp_path_factory.mktemp("fuzz")
        path, rows = _mixed_file(data, fmt, tmp)
        parsed = ingest.with_event_ids(ingest.parse(spark, [str(path)], fmt, settings))
        got = parsed.select("user_id", "item_id", "event_type", "category_id", "brand", "query", "reason", "event_ts").collect()
        assert len(got) == len(rows)
        accepted = [r for r in got if r["reason"] is None]
        assert len(accepted) == sum(1 for r in rows if r[1]), [r for r in got]
        # Valid rows keep their values exactly (quotes and delimiters inside fields included).
        want = sorted(str(r[2][:3]) for r in rows if r[1])
        have = sorted(str((r["user_id"], r["item_id"], _src_type(fmt, r["event_type"]))) for r in accepted)
        assert have == want
        if fmt == "rees46":
            assert sorted((r["category_id"], r["brand"]) for r in accepted) == sorted((r[2][3], r[2][4]) for r in rows if r[1])
        if fmt == "generic":
            assert sorted(str(r["query"]) for r in accepted) == sorted(str(r[2][3]) for r in rows if r[1])

    prop()


def _src_type(fmt: str, canonical: str) -> str:
    if fmt == "taobao":
        return {"view": "pv", "purchase": "buy"}.get(canonical, canonical)
    return canonical


@pytest.mark.parametrize("fmt", ["taobao", "rees46", "generic"])
def test_fuzzed_file_full_ingest_lands_valid_and_quarantines_bad(spark, tmp_path, fmt):
    @hsettings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(data=st.data())
    def one(data):
        path, rows = _mixed_file(data, fmt, tmp_path, n_max=60)
        settings = load_settings(home=tmp_path / "home", environ={})
        summary = ingest.run_ingest(spark, settings, str(path), fmt)
        n_valid = sum(1 for r in rows if r[1])
        assert summary["read"] == len(rows)
        assert summary["accepted"] + summary["duplicates_skipped"] == n_valid
        assert summary["quarantined"] == len(rows) - n_valid
        q = spark.read.format("delta").load(settings.table("bronze.events_quarantine"))
        assert q.count() == len(rows) - n_valid
        assert q.where("reason is null or raw_record is null").count() == 0

    one()
