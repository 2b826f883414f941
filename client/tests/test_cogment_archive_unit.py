"""Reading the original registry's archive (no server): timestamps to the
nanosecond, and files that cannot be read reported, not guessed at."""

from __future__ import annotations

import pytest

from model_registry_client.cogment_archive import ArchiveError, parse_timestamp, read_archive


@pytest.mark.parametrize(
    "text, nanoseconds",
    [
        ("2026-12-01T09:39:55.621187979Z", 1796117995621187979),
        ("2026-12-01T09:39:55Z", 1796117995000000000),
        ("2026-12-01T09:39:55.5Z", 1796117995500000000),  # Go trims trailing zeros
        ("2026-12-01T11:39:55.621187979+02:00", 1796117995621187979),
        ("2026-12-01T04:39:55.621187979-05:00", 1796117995621187979),
        ("1796117995621187979", 1796117995621187979),
    ],
)
def test_timestamps_keep_every_nanosecond(text, nanoseconds):
    assert parse_timestamp(text) == nanoseconds


@pytest.mark.parametrize("text", ["2026-13-01T00:00:00Z", "yesterday", "2026-12-01T09:39:55", ""])
def test_a_timestamp_that_is_not_rfc_3339_is_refused(text):
    with pytest.raises(ArchiveError, match="creation_timestamp"):
        parse_timestamp(text)


def test_unreadable_files_are_reported_with_their_reason(tmp_path):
    (tmp_path / "no-yaml").mkdir()
    model = tmp_path / "m"
    model.mkdir()
    (model / "m.yaml").write_text("model_id: m\nuser_data:\n  step: 10\n")
    (model / "m-v000001.yaml").write_text("model_id: m\nversion_number: 1\ndata_hash: x\ndata_size: 3\n")
    (model / "m-v000002.yaml").write_text("model_id: m\nversion_number: 7\ncreation_timestamp: 5\ndata_hash: x\ndata_size: 3\n")
    (model / "m-v000003.yaml").write_text(": : not yaml [")
    models, skipped = read_archive(tmp_path)
    assert [(m.model.model_id, m.model.user_data) for m in models] == [("m", {"step": "10"})]  # strings, as written
    assert models[0].versions == []
    reasons = {item.what: item.reason for item in skipped}
    assert "no no-yaml.yaml" in reasons["model 'no-yaml'"]
    assert "creation_timestamp" in reasons["version 1 of model 'm'"]
    assert "version_number 7 is not 2" in reasons["version 2 of model 'm'"]
    assert "cannot be read" in reasons["version 3 of model 'm'"]
