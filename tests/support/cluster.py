"""A real Spark standalone cluster on loopback for the scale-out tests.

Starts one master and N workers (``--cores 1 --memory 2g`` each) from the pyspark
installation (``$SPARK_HOME/bin/spark-class``), on free ports, with their local and work
directories under a temporary folder; ``stop()`` kills every process it started (each
daemon runs in its own process group, so its executors and Python workers go with it).

Also builds the environment for a *separate* driver process to use the cluster
(``driver_env``): one Spark session per process, and the test process already owns its
local one. ``blind_executors=True`` makes the executors' Python unable to import the
project from the source tree (the editable install's finder is removed by a
``sitecustomize`` on the executors' ``PYTHONPATH``), so a passing run proves the code
reached the executors the way it must on a real cluster: shipped by the driver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

from tests.support.servers import free_port

SPARK_HOME = Path(pyspark.__file__).resolve().parent
PYTHON = sys.executable

_BLIND_SITECUSTOMIZE = '''\
# Executors of the cluster tests: forget the editable install of the project, so the
# only way to import persona / spark_jobs / encoders is the archive the driver ships.
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if p != {repo!r}]
'''


def children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen
    log: Path
    ui_port: int

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> list[int]:
        """kill -9 the daemon JVM and everything it started (executors, Python workers)."""
        victims = [self.proc.pid, *children(self.proc.pid)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=30)
        return victims


@dataclass
class StandaloneCluster:
    root: Path
    workers: int = 2
    worker_memory: str = "2g"
    master_port: int = 0
    master: Daemon | None = None
    worker_daemons: list[Daemon] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    def _env(self, name: str) -> dict:
        local = self.root / name / "local"
        local.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            SPARK_HOME=str(SPARK_HOME),
            SPARK_LOCAL_IP="127.0.0.1",
            SPARK_LOCAL_DIRS=str(local),
            SPARK_DAEMON_MEMORY="384m",
            PYSPARK_PYTHON=PYTHON,
            SPARK_NO_DAEMONIZE="1",
        )
        # The worker passes its environment on to executors: keep the driver's
        # persona overrides out of them.
        for k in list(env):
            if k.startswith(("PERSONA", "PYSPARK_DRIVER")):
                env.pop(k)
        return env

    def _spawn(self, name: str, args: list[str], ui_port: int) -> Daemon:
        log = self.root / f"{name}.log"
        fh = open(log, "wb")
        proc = subprocess.Popen(
            [str(SPARK_HOME / "bin" / "spark-class"), *args],
            stdout=fh, stderr=subprocess.STDOUT, env=self._env(name),
            cwd=str(self.root), start_new_session=True,
        )
        fh.close()
        return Daemon(name, proc, log, ui_port)

    def state(self) -> dict:
        """The master's JSON status page (workers, apps)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.master.ui_port}/json/", timeout=5) as r:
            return json.loads(r.read())

    def alive_workers(self) -> int:
        try:
            return sum(1 for w in self.state().get("workers", []) if w.get("state") == "ALIVE")
        except OSError:
            return 0

    def start(self, timeout: float = 120.0) -> "StandaloneCluster":
        self.root.mkdir(parents=True, exist_ok=True)
        self.master_port = free_port()
        ui = free_port()
        self.master = self._spawn("master", [
            "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
            "--port", str(self.master_port), "--webui-port", str(ui),
        ], ui)
        for i in range(self.workers):
            work = self.root / f"worker{i}" / "work"
            work.mkdir(parents=True, exist_ok=True)
            wui = free_port()
            self.worker_daemons.append(self._spawn(f"worker{i}", [
                "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                "--cores", "1", "--memory", self.worker_memory, "--webui-port", str(wui),
                "--work-dir", str(work),
            ], wui))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in [self.master, *self.worker_daemons]:
                if not d.alive():
                    raise RuntimeError(f"{d.name} exited: {d.log.read_text()[-2000:]}")
            if self.alive_workers() == self.workers:
                return self
            time.sleep(0.5)
        raise RuntimeError(f"cluster did not come up in {timeout}s: "
                           f"{self.master.log.read_text()[-2000:] if self.master else ''}")

    def executors(self, worker: int) -> list[int]:
        """Executor JVM pids running under one worker."""
        d = self.worker_daemons[worker]
        return [p for p in children(d.proc.pid) if "CoarseGrainedExecutorBackend" in cmdline(p)]

    def stop(self) -> None:
        for d in [*self.worker_daemons, self.master]:
            if d is not None and d.alive():
                d.kill()

    # ---- a driver process for this cluster -------------------------------------------
    def driver_env(self, extra_conf: dict | None = None, blind_executors: bool = True, **persona) -> dict:
        """Environment for a driver subprocess using this cluster (persona settings as
        ``PERSONA__...`` overrides; ``persona`` kwargs like ``feast__online_store='redis'``)."""
        conf = {
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.executor.cores": "1",
            "spark.cores.max": str(self.workers),
            "spark.local.dir": str(self.root / "driver-local"),
            # A lost executor's shuffle output is recomputed: fail fast on a dead peer
            # instead of retrying the fetch for minutes.
            "spark.shuffle.io.maxRetries": "1",
            "spark.shuffle.io.retryWait": "1s",
        }
        if blind_executors:
            blind = self.root / "executor-site"
            blind.mkdir(exist_ok=True)
            (blind / "sitecustomize.py").write_text(
                _BLIND_SITECUSTOMIZE.format(repo=str(Path(__file__).resolve().parents[2]))
            )
            conf["spark.executorEnv.PYTHONPATH"] = str(blind)
        conf.update(extra_conf or {})
        (self.root / "driver-local").mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA")}
        env.update(
            PERSONA__SPARK__MASTER=self.url,
            PERSONA__SPARK__CONF=json.dumps(conf),
            PERSONA__SPARK__DRIVER_MEMORY="1g",
            PERSONA__SPARK__EXECUTOR_MEMORY="1g",
            PERSONA__SPARK__SHUFFLE_PARTITIONS="4",
            SPARK_LOCAL_IP="127.0.0.1",
            PYSPARK_PYTHON=PYTHON,
            PYSPARK_DRIVER_PYTHON=PYTHON,
        )
        for key, value in persona.items():
            env["PERSONA__" + key.upper()] = str(value)
        return env
