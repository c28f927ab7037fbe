"""``persona sql-server``: Spark's Thrift JDBC/ODBC server (HiveServer2) over the tables.

Input: the Delta tables under ``settings.warehouse_root`` and the curated views of the
catalogue. Output: a running server process (its own process group) on ``host:port``
with each present base table registered as a view over its Delta path and each curated
view whose tables exist, refusing every statement that would write (the guard compiled
from ``sql/thrift/ReadOnlyThriftServer.java``). Clients use ``hive://`` (PyHive),
beeline, or any HiveServer2 driver.

The server comes from the pyspark wheel (``bin/spark-submit``) with the same Spark
settings the jobs use; it needs Java 17, and a JDK once to compile the guard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyspark
import sqlalchemy as sa

from core.delta_log import is_local_path
from core.errors import ServiceError
from persona.sql.catalogue import BASE_TABLES, SQL_DIR, View, catalogue
from persona.sql.query import first_error_line
from spark_jobs.jars import default_jars_dir
from spark_jobs.session import spark_conf

if TYPE_CHECKING:
    from core.settings import Settings

GUARD_SOURCE = SQL_DIR / "thrift" / "ReadOnlyThriftServer.java"
GUARD_CLASS = "persona.sql.ReadOnlyThriftServer"

_LOG4J = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex{2}
logger.thrift.name = org.apache.spark.sql.hive.thriftserver.HiveThriftServer2
logger.thrift.level = info
"""


def server_setup_statements(settings: "Settings", views: dict[str, View] | None = None
                            ) -> tuple[list[str], dict[str, list[str]]]:
    """Spark SQL registering the base tables (views over their Delta paths) and the
    curated views; curated views whose tables are missing are skipped and returned."""
    views = catalogue() if views is None else views
    present = {}
    for name in BASE_TABLES:
        path = settings.table(name)
        if not is_local_path(path) or Path(path, "_delta_log").is_dir():
            present[name] = path
    statements = []
    for layer in sorted({n.split(".")[0] for n in present}):
        statements.append(f"CREATE DATABASE IF NOT EXISTS {layer}")
    for name, path in present.items():
        # A view over the path, not a catalog table: registering a table on an existing
        # Delta location could write to its log; a view only ever reads it.
        quoted = "`" + path.replace("`", "``") + "`"
        statements.append(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM delta.{quoted}")
    skipped = {}
    for view in views.values():
        needs = [t for t in view.tables if t not in present]
        if needs:
            skipped[view.name] = needs
            continue
        comment = view.grain.replace("'", "")
        statements.append(f"CREATE OR REPLACE VIEW default.{view.name} COMMENT '{comment}' AS\n{view.sql}")
    return statements, skipped


def _spark_home() -> Path:
    return Path(pyspark.__file__).resolve().parent


def guard_jar() -> Path:
    """The compiled read-only guard, built once per source and Spark version with javac."""
    source = GUARD_SOURCE.read_bytes()
    key = hashlib.sha256(source + pyspark.__version__.encode()).hexdigest()[:12]
    # Not in the Delta jars directory: every Spark session puts all of those on its
    # classpath, and this jar is for the SQL server only.
    out_dir = default_jars_dir().parent / "sql-server"
    jar = out_dir / f"persona-sql-guard-{key}.jar"
    if jar.is_file():
        return jar
    javac, jar_tool = shutil.which("javac"), shutil.which("jar")
    if javac is None or jar_tool is None:
        raise ServiceError("building the SQL server's read-only guard needs a JDK (javac, jar) once; install openjdk-17-jdk")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="persona-guard-") as build:
        classpath = str(_spark_home() / "jars" / "*")
        proc = subprocess.run([javac, "--release", "17", "-nowarn", "-cp", classpath, "-d", build, str(GUARD_SOURCE)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ServiceError(f"could not compile {GUARD_SOURCE.name}: {proc.stderr.strip().splitlines()[0]}")
        tmp_jar = out_dir / f".{jar.name}.{os.getpid()}"
        subprocess.run([jar_tool, "cf", str(tmp_jar), "-C", build, "persona"], check=True)
        os.replace(tmp_jar, jar)
    return jar


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class ThriftServer:
    """A running Spark Thrift server process (its own process group)."""

    host: str
    port: int
    process: subprocess.Popen
    workdir: Path
    log_path: Path
    skipped_views: dict[str, list[str]]

    @property
    def url(self) -> str:
        return f"hive://{self.host}:{self.port}/default"

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the server's process group (Spark's shutdown hooks stop the service),
        then SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> "ThriftServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def thrift_command(settings: "Settings", host: str, port: int, setup_file: Path, workdir: Path
                   ) -> list[str]:
    """The spark-submit command line of the server (exposed for tests and docs)."""
    conf = spark_conf(settings)
    jars = [j for j in conf.pop("spark.jars").split(",") if j] + [str(guard_jar())]
    log4j = workdir / "log4j2.properties"
    log4j.write_text(_LOG4J)
    for key in ("spark.master", "spark.app.name", "spark.driver.memory",
                "spark.pyspark.python", "spark.pyspark.driver.python"):
        conf.pop(key, None)
    conf.update({
        "spark.app.name": "persona-sql-server",
        "spark.sql.extensions": f"io.delta.sql.DeltaSparkSessionExtension,{GUARD_CLASS}$Extension",
        # The registered views live in this process only; no Derby metastore on disk.
        "spark.sql.catalogImplementation": "in-memory",
        "spark.sql.warehouse.dir": str(workdir / "spark-warehouse"),
        "spark.hadoop.hive.server2.thrift.port": str(port),
        "spark.hadoop.hive.server2.thrift.bind.host": host,
        "spark.hadoop.hive.server2.transport.mode": "binary",
        "spark.ui.enabled": "false",
        # Delta and the guard must be on the driver's system classpath: the Thrift
        # handler threads do not see jars added with --jars (NoClassDefFoundError on
        # Delta classes after the first queries).
        "spark.driver.extraClassPath": ":".join(jars),
        "spark.driver.extraJavaOptions": (
            conf.get("spark.driver.extraJavaOptions", "") + f" -Dlog4j2.configurationFile=file:{log4j}"
        ).strip(),
        "spark.jars": ",".join(jars),
    })
    cmd = [str(_spark_home() / "bin" / "spark-submit"), "--master", settings.spark.master,
           "--driver-memory", settings.spark.driver_memory, "--class", GUARD_CLASS]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    cmd += [str(guard_jar()), str(setup_file)]
    return cmd


def start_thrift_server(settings: "Settings", port: int | None = None, host: str | None = None,
                        timeout: float = 600, workdir: str | os.PathLike | None = None) -> ThriftServer:
    """Start the Thrift server on ``host:port`` and wait until it accepts connections.

    Raises ServiceError with the server's own one-line reason when it does not come up
    (port taken, a view that fails to register, no Java).
    """
    host = host or settings.sql.thrift_host
    port = settings.sql.thrift_port if port is None else port
    if not port_free(host, port):
        raise ServiceError(f"port {port} on {host} is already in use (pick another with --port)")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ServiceError("the SQL server needs Java 17 (java not found)")
    work = Path(workdir) if workdir else settings.home.resolve() / "sql-server"
    work.mkdir(parents=True, exist_ok=True)
    statements, skipped = server_setup_statements(settings)
    setup_file = work / "setup.sql"
    setup_file.write_text("".join(f"{s}\n;\n" for s in statements))
    cmd = thrift_command(settings, host, port, setup_file, work)
    log_path = work / "server.log"
    env = dict(os.environ, SPARK_HOME=str(_spark_home()), SPARK_LOCAL_IP="127.0.0.1")
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env,
                            start_new_session=True)
    log.close()
    server = ThriftServer(host, port, proc, work, log_path, skipped)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"SQL server exited ({proc.returncode}): {server_failure(log_path)}")
        if "persona-sql-server-ready" in log_path.read_text(errors="replace") and not port_free(host, port):
            return server
        time.sleep(0.5)
    server.stop()
    raise ServiceError(f"SQL server did not start within {timeout:.0f}s; see {log_path}")


def server_failure(log_path: Path) -> str:
    text = log_path.read_text(errors="replace")
    for pattern in (r"persona-setup-failed: (.*)", r"persona-server-failed: (.*)", r"ERROR [\w.$]+: (.*)",
                    r"Exception[^:\n]*: (.*)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else f"no output (see {log_path})"


def wait_for_connection(url: str, timeout: float = 120) -> None:
    """Block until a SQLAlchemy connection to ``url`` succeeds (servers open the port
    slightly before they answer)."""
    engine = sa.create_engine(url)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with engine.connect():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means: not yet
            last = exc
            time.sleep(1)
    raise ServiceError(f"cannot connect to {url}: {first_error_line(str(last))}")
