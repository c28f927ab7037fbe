"""Shared fixtures: one Spark session per test run, a fresh persona home per test module,
and real servers (Redis) started on loopback when a test asks for them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.servers import RedisServer, redis_executable

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def spark_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spark-home")


@pytest.fixture(scope="session")
def spark(spark_home):
    """The one SparkSession of the run (Delta-enabled, UTC, Arrow, local[2])."""
    from core.settings import load_settings
    from spark_jobs.session import get_spark

    settings = load_settings(home=spark_home, environ={
        "PERSONA__SPARK__MASTER": "local[2]",
        "PERSONA__SPARK__SHUFFLE_PARTITIONS": "4",
        "PERSONA__SPARK__DRIVER_MEMORY": "4g",
    })
    session = get_spark(settings)
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path):
    """Settings with a fresh home for one test (embedded defaults otherwise)."""
    from core.settings import load_settings

    return load_settings(home=tmp_path / "home", environ={
        "PERSONA__SPARK__MASTER": "local[2]",
        "PERSONA__SPARK__SHUFFLE_PARTITIONS": "4",
    })


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory):
    """Settings with a home shared by the tests of one module (build once, assert many)."""
    from core.settings import load_settings

    return load_settings(home=tmp_path_factory.mktemp("home"), environ={
        "PERSONA__SPARK__MASTER": "local[2]",
        "PERSONA__SPARK__SHUFFLE_PARTITIONS": "4",
    })


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real samples in ../shared/data; tests skip with a reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real samples not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port, stopped after the run.

    Yields ``host:port``. Skips when redis-server is not installed, unless
    PERSONA_REQUIRE_REDIS=1 (CI), where that is a failure.
    """
    if redis_executable() is None:
        if os.environ.get("PERSONA_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server not installed (apt-get install redis-server)")
        pytest.skip("redis-server not installed")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.address
