"""The Spark Thrift server (``persona sql-server``): started once for this module on a
free loopback port, queried through SQLAlchemy + PyHive, compared with the embedded
engine view by view, refusing writes, then stopped. It is a second JVM: keep it lean."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from tests.support.sql_data import assert_same_rows, sql_home

from persona.sql.catalogue import catalogue
from persona.sql.embedded import embedded_engine
from persona.sql.query import engine_for, first_error_line, run_query, run_view
from persona.sql.thrift import free_port, start_thrift_server
from core.settings import load_settings
from core.errors import InputError, ServiceError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings_(spark, tmp_path_factory):
    home = sql_home(spark, tmp_path_factory)
    # The server JVM is small: local[2], a modest heap.
    return load_settings(home=home, environ={"PERSONA__SPARK__MASTER": "local[2]",
                                             "PERSONA__SPARK__DRIVER_MEMORY": "1g",
                                             "PERSONA__SPARK__SHUFFLE_PARTITIONS": "4"})


@pytest.fixture(scope="module")
def server(settings_, tmp_path_factory):
    srv = start_thrift_server(settings_, port=free_port(),
                              workdir=tmp_path_factory.mktemp("thrift"))
    yield srv
    srv.stop()
    assert not srv.running()


@pytest.fixture(scope="module")
def hive(server):
    engine = engine_for(None, server.url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def embedded(settings_):
    engine = embedded_engine(settings_)
    yield engine
    engine.dispose()


def test_server_binds_to_loopback_and_registers_everything(server, hive):
    assert server.host == "127.0.0.1" and server.skipped_views == {}
    tables = set(run_query(hive, "show tables").rows)
    assert {("default", name, False) for name in catalogue()} <= tables
    assert ("silver", "user_behaviour", False) in set(run_query(hive, "show tables in silver").rows)


def test_every_view_matches_the_embedded_engine(hive, embedded):
    for name in sorted(catalogue()):
        remote = run_view(hive, name)
        local = run_view(embedded, name)
        assert remote.columns == local.columns, name
        assert local.rows, name
        assert_same_rows(remote.rows, local.rows, name)


def test_bound_parameters_and_filters_on_the_server(hive):
    sql = "select user_id, segment_id from user_profile_latest where user_id = :u"
    assert [r[0] for r in run_query(hive, sql, {"u": "u0000003"}).rows] == ["u0000003"]
    assert run_query(hive, sql, {"u": "u0000003' or '1'='1"}).rows == []
    assert len(run_view(hive, "funnel_daily", {"event_date": "2024-03-05"}).rows) == 1


def test_writes_are_refused_by_the_server_itself(hive, settings_):
    """Past the client-side check (raw connection): the server's guard refuses, and the
    Delta log does not move."""
    from deltalake import DeltaTable

    path = settings_.table("silver.user_behaviour")
    version = DeltaTable(path).version()
    attempts = [
        f"delete from delta.`{path}` where true",
        "insert into silver.user_behaviour select * from silver.user_behaviour",
        "create table default.x (a int)",
        "drop view funnel_daily",
        f"update delta.`{path}` set views_30d = 0",
        "select reflect('java.lang.System', 'getProperty', 'user.home')",
    ]
    with hive.connect() as conn:
        for sql in attempts:
            with pytest.raises(sa.exc.DBAPIError) as info:
                conn.execution_options(no_parameters=True).exec_driver_sql(sql)
            message = first_error_line(str(info.value))
            assert "read-only" in message or "expects a table" in message.lower() or "EXPECT_TABLE" in message, (sql, message)
    assert DeltaTable(path).version() == version
    # and through persona's own query path the client check answers first
    with pytest.raises(InputError, match="read-only access: DELETE"):
        run_query(hive, "delete from silver.user_behaviour")


def test_second_server_on_a_taken_port_fails_clearly(server, settings_):
    with pytest.raises(ServiceError, match="already in use"):
        start_thrift_server(settings_, port=server.port)
