"""Ports for the local environment's children: outside the range the kernel hands to connections."""

from __future__ import annotations

import socket

import pytest

from mlsec.local import procs


def test_free_ports_lie_below_the_ephemeral_range_are_bindable_and_never_repeat() -> None:
    low = procs._ephemeral_low()
    ports = [procs.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports), (low, min(ports), max(ports))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[-1]))
        s.listen()


def test_a_port_someone_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", procs.free_port()))
        held.listen()
        taken, other = held.getsockname()[1], procs.free_port()
        procs._handed_out.discard(other)
        # The random picks are the held port five times, then another: the held one is skipped.
        picks = iter([taken] * 5 + [other])
        monkeypatch.setattr(procs.random, "randint", lambda a, b: next(picks))
        assert procs.free_port() == other
