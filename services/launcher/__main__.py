"""`python -m services.launcher {run,up,down,status,restart,supervise}` (what `make run/up/down` call)."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from services.launcher import supervisor
from services.launcher.stack import LaunchSettings, LocalStack, StackError


def _banner(stack: LocalStack, state: dict) -> str:
    s = stack.settings
    transport = {"tls": ", TLS", "mtls": ", mTLS: client certificates required"}.get(state.get("public_tls", "off"), "")
    return (
        f"model registry ready on port {s.public_port}{transport} "
        f"(archive {s.archive_dir}, logs in {s.run_dir}, Envoy admin on 127.0.0.1:{state['admin_port']})\n"
        f"Prometheus scrape targets (file_sd): {stack.targets_path}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.launcher")
    parser.add_argument("command", choices=["run", "up", "down", "status", "restart", "supervise"])
    parser.add_argument(
        "targets", nargs="*", help="restart: process names (metadata-0) or kinds (metadata); supervise: the state file"
    )
    args = parser.parse_args(argv)
    try:
        settings = LaunchSettings.from_env()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "supervise":
        (state_path,) = args.targets
        return supervisor.main(state_path, settings.restart_policy, settings.shutdown_grace_seconds)
    stack = LocalStack(settings)

    if args.command == "status":
        running = stack.running_processes()
        for proc in running:
            print(f"{proc['name']:<12} pid {proc['pid']}")
        if stack.supervisor_running():
            print("supervised")
        if not running:
            print(f"no stack running for port {stack.settings.public_port}")
        return 0 if running else 1

    if args.command == "down":
        stopped = stack.stop()
        print(f"stopped {', '.join(stopped)}" if stopped else f"no stack running for port {stack.settings.public_port}")
        return 0

    if args.command == "restart":
        try:
            restarted = stack.restart(args.targets)
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"restarted {', '.join(restarted)}")
        return 0

    try:
        state = stack.start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(_banner(stack, state), flush=True)
    if args.command == "up":
        return 0

    # run: stay in the foreground until Ctrl-C / SIGTERM; the supervisor
    # (started by `start`) restarts what exits and logs to supervisor.log.
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    # The supervisor's lines (restarts) are echoed to this terminal.
    with open(stack.supervisor_log, errors="replace") as log:
        log.seek(0, 2)
        while not stopping and stack.supervisor_running():
            sys.stderr.write(log.read())
            time.sleep(0.5)
        sys.stderr.write(log.read())
    print("stopping…", flush=True)
    stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
