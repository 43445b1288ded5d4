"""sd_notify over real AF_UNIX datagram sockets (path and abstract), watchdog rate limiting."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from edge.runtime.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield str(path), sock
    sock.close()


def test_ready_status_and_stopping_reach_the_socket(listener):
    path, sock = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("running model x")
    assert sock.recv(4096) == b"READY=1\nSTATUS=running model x"
    assert n.status("degraded")
    assert sock.recv(4096) == b"STATUS=degraded"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    n.close()


def test_abstract_socket_address():
    name = f"emotion-edge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_watchdog_pings_at_most_twice_per_interval(listener):
    path, sock = listener
    now = [100.0]
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())},
                 clock=lambda: now[0])
    assert n.watchdog_interval_s == 2.0
    sent = []
    for _ in range(40):  # 40 frames at 0.1 s = 4 s = 2 intervals -> pings every 1 s
        sent.append(n.watchdog())
        now[0] += 0.1
    assert sum(sent) == 4
    assert all(sock.recv(64) == b"WATCHDOG=1" for _ in range(4))


def test_no_socket_means_silent_no_ops():
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog(force=True) is False


def test_watchdog_for_another_pid_is_ignored(listener):
    path, _ = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval_s is None and n.watchdog() is False


def test_vanished_socket_does_not_raise(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False
