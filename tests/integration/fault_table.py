"""The fault table (README "Faults"): each fault-injection test records its
row with `record_fault(...)`; `python tests/integration/fault_table.py`
prints every recorded row as markdown (`make faults` does, at the end).

Rows go to `FAULT_TABLE_FILE` (default `.run/faults.json` in the
repository), keyed by shape and fault, so a rerun replaces a row instead of
adding one. Any test may record a row: `from fault_table import record_fault`
(tests/integration is on pytest's path)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("fault", "shape", "what the client saw", "acked versions lost", "wrong bytes served", "seconds until it serves again")


def table_file() -> Path:
    return Path(os.environ.get("FAULT_TABLE_FILE", REPO_ROOT / ".run" / "faults.json"))


def record_fault(
    fault: str,
    client_saw: str,
    *,
    lost_acked_versions: int,
    wrong_bytes: int,
    seconds_to_serve: float | None,
    shape: str | None = None,
) -> None:
    """Records one row. `lost_acked_versions`: versions whose CreateVersion
    returned OK that no longer read back with their bytes (by SHA-256);
    `wrong_bytes`: reads that returned bytes other than those stored;
    `seconds_to_serve`: from the fault until the stack served again
    (None: it never stopped serving)."""
    shape = shape or os.environ.get("REGISTRY_TEST_SHAPE", "single")
    path = table_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = _read(path)
    rows[f"{shape}/{fault}"] = {
        "fault": fault,
        "shape": shape,
        "client_saw": client_saw,
        "lost_acked_versions": lost_acked_versions,
        "wrong_bytes": wrong_bytes,
        "seconds_to_serve": None if seconds_to_serve is None else round(seconds_to_serve, 1),
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(rows, indent=2))
    temporary.replace(path)


def _read(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def markdown(rows: dict[str, dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    # One fault's rows together (single shape first), faults in the order first recorded.
    order = list(dict.fromkeys(row["fault"] for row in rows.values()))
    for row in sorted(rows.values(), key=lambda r: (order.index(r["fault"]), not r["shape"].startswith("single"), r["shape"])):
        seconds = "serves throughout" if row["seconds_to_serve"] is None else f"{row['seconds_to_serve']:.1f}"
        lines.append(
            f"| {row['fault']} | {row['shape']} | {row['client_saw']} | {row['lost_acked_versions']} "
            f"| {row['wrong_bytes']} | {seconds} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else table_file()
    rows = _read(path)
    if not rows:
        print(f"no fault rows recorded in {path}", file=sys.stderr)
        return 1
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
