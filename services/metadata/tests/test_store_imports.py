"""What the stores depend on: the domain's records and errors, not the
service around them (settings, watches)."""

from __future__ import annotations

import subprocess
import sys


def test_the_stores_import_neither_the_settings_nor_the_watches():
    # In a fresh interpreter: this one has imported everything already.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, services.metadata.store.postgres, services.metadata.store.sqlite; "
            "print(' '.join(sorted(sys.modules)))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert "services.metadata.store.postgres" in loaded
    assert not {"services.metadata.config", "services.metadata.watch", "services.metadata.change_feed"} & set(loaded)
