"""`python -m services.launcher {run,up,down,status}` (what `make run/up/down` call)."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from services.launcher.stack import LaunchSettings, LocalStack, StackError, _pid_runs


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
    parser.add_argument("command", choices=["run", "up", "down", "status"])
    args = parser.parse_args(argv)
    try:
        stack = LocalStack(LaunchSettings.from_env())
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2

    if args.command == "status":
        running = stack.running_processes()
        for proc in running:
            print(f"{proc['name']:<12} pid {proc['pid']}")
        if not running:
            print(f"no stack running for port {stack.settings.public_port}")
        return 0 if running else 1

    if args.command == "down":
        stopped = stack.stop()
        print(f"stopped {', '.join(stopped)}" if stopped else f"no stack running for port {stack.settings.public_port}")
        return 0

    try:
        state = stack.start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(_banner(stack, state), flush=True)
    if args.command == "up":
        return 0

    # run: stay in the foreground until Ctrl-C / SIGTERM or a process dies.
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    while not stopping:
        dead = [p for p in state["processes"] if not _pid_runs(p["pid"], p["marker"])]
        if dead:
            names = ", ".join(p["name"] for p in dead)
            print(f"error: {names} exited; stopping the stack (see {stack.settings.run_dir})", file=sys.stderr)
            exit_code = 1
            break
        time.sleep(0.5)
    print("stopping…", flush=True)
    stack.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
