"""The frontend's upload validation, without a network."""

from __future__ import annotations

import base64
import hashlib

import pytest

from services.common.errors import InvalidArgument
from services.frontend.upload_check import UploadCheck, decode_data_hash

VECTOR = b"chunk_1chunk_2"
VECTOR_HASH = "jY0g3VkUK62ILPr2JuaW5g7uQi0EcJVZJu8IYp3yfhI="


def test_spec_test_vector():
    check = UploadCheck(14, decode_data_hash(VECTOR_HASH))
    assert check.add(b"chunk_1") and check.add(b"chunk_2")
    assert check.finish()
    assert check.data_hash == VECTOR_HASH
    assert check.error is None


def test_hash_is_optional():
    check = UploadCheck(len(VECTOR), None)
    assert check.add(VECTOR) and check.finish()
    assert check.data_hash == base64.b64encode(hashlib.sha256(VECTOR).digest()).decode()


def test_more_bytes_than_announced_stops_at_once():
    check = UploadCheck(10, None)
    assert check.add(b"12345")
    assert not check.add(b"678901")
    assert isinstance(check.error, InvalidArgument)
    assert "10 bytes" in check.error.message


def test_fewer_bytes_than_announced():
    check = UploadCheck(10, None)
    check.add(b"123")
    assert not check.finish()
    assert "received 3 bytes" in check.error.message


def test_hash_mismatch_names_both_hashes():
    wrong = base64.b64encode(b"\x01" * 32).decode()
    check = UploadCheck(14, decode_data_hash(wrong))
    check.add(VECTOR)
    assert not check.finish()
    assert VECTOR_HASH in check.error.message and wrong in check.error.message


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode(), "AAAA"])
def test_malformed_data_hash(value):
    with pytest.raises(InvalidArgument, match="SHA-256"):
        decode_data_hash(value)
