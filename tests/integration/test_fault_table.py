"""The fault table's recording helper (no stack needed)."""

from __future__ import annotations

import fault_table


def test_rows_are_replaced_per_shape_and_fault_and_printed_grouped(tmp_path, monkeypatch):
    monkeypatch.setenv("FAULT_TABLE_FILE", str(tmp_path / "rows.json"))
    fault_table.record_fault("disk full", "RESOURCE_EXHAUSTED", lost_acked_versions=0, wrong_bytes=0,
                             seconds_to_serve=None, shape="replicated")
    fault_table.record_fault("kill -9 metadata", "UNAVAILABLE", lost_acked_versions=1, wrong_bytes=0,
                             seconds_to_serve=9.0, shape="single")
    fault_table.record_fault("kill -9 metadata", "UNAVAILABLE then OK", lost_acked_versions=0, wrong_bytes=0,
                             seconds_to_serve=1.26, shape="single")
    fault_table.record_fault("disk full", "RESOURCE_EXHAUSTED", lost_acked_versions=0, wrong_bytes=0,
                             seconds_to_serve=0.0, shape="single")
    lines = fault_table.markdown(fault_table._read(fault_table.table_file())).splitlines()
    assert lines[2:] == [
        "| disk full | single | RESOURCE_EXHAUSTED | 0 | 0 | 0.0 |",
        "| disk full | replicated | RESOURCE_EXHAUSTED | 0 | 0 | serves throughout |",
        "| kill -9 metadata | single | UNAVAILABLE then OK | 0 | 0 | 1.3 |",
    ]
