"""The state file of a local stack (`<run dir>/state.json`): its ports, the
processes it runs (command, environment, log, PID, restarts) and its
supervisor. Written whole and atomically (rename), readable by owner only:
the recorded environment may hold credentials (AWS_*, directory token)."""

from __future__ import annotations

import json
import os
from pathlib import Path


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None

    def write(self, state: dict) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(state, out, indent=2)
        os.replace(temporary, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
