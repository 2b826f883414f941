"""The ports the launcher and the tests pick for processes that bind later."""

from __future__ import annotations

import socket

from services.launcher import ports


def test_picked_ports_differ_are_bindable_and_lie_outside_the_ephemeral_range():
    low, high = ports.ephemeral_range()
    picked = ports.free_ports(40)
    assert len(set(picked)) == 40
    assert all(not low <= p <= high for p in picked), (picked, (low, high))
    for port in picked:
        with socket.socket() as s:
            s.bind((ports.LOOPBACK, port))


def test_a_port_something_holds_is_never_picked(monkeypatch):
    with socket.socket() as held:
        held.bind((ports.LOOPBACK, 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setattr(ports, "_candidates", lambda: [taken, taken])
        # Every candidate taken: the kernel's choice, which is free too.
        (port,) = ports.free_ports(1)
        assert port != taken


def test_the_ephemeral_range_has_a_default_where_the_kernel_does_not_say(monkeypatch, tmp_path):
    monkeypatch.setattr(ports, "_EPHEMERAL_RANGE_FILE", tmp_path / "absent")
    assert ports.ephemeral_range() == (32_768, 60_999)
    (tmp_path / "range").write_text("20000\t40000\n")
    monkeypatch.setattr(ports, "_EPHEMERAL_RANGE_FILE", tmp_path / "range")
    assert ports.ephemeral_range() == (20_000, 40_000)
    assert all(not 20_000 <= p <= 40_000 for p in ports._candidates())
