"""Faults a device meets, against a real Mosquitto and the real daemon (``python -m edge run``, demo source, shipped
model, a subprocess): a broker outage, broker flaps, a full state folder during an outage, and a command flood.

For each case it prints what a subscriber with a persistent QoS 1 session received: messages delivered (unique
seqs), lost (seqs missing between the first and the last one received), the messages the device itself counted
as dropped (``status.outbox.dropped``: faces, by design, when the disk is full), duplicated (the same seq again),
the time from the broker's return to the first message not received before the broker went ("recover": the
daemon publishes again) and to the first *fresh* ``faces`` message (one made after the return), the longest delay
of a ``faces`` message (arrival minus its ``ts``), the daemon's peak RSS (``VmHWM``), and its log (lines,
tracebacks)::

    PYTHONPATH=. nice -n 10 python3 benchmarks/fault_suite.py [--edge-root ../main] [--outage 20] [--flaps 10] \\
        [--disk-outage 45] [--flood 100000] [--only outage,flaps,disk,flood]

``disk`` puts the state folder on a 2 MB tmpfs filled up to ``--free-kb`` (root only: ``mount -t tmpfs``; the case
is skipped where mounting is not allowed). ``--edge-root`` runs another checkout's daemon for a before/after.
:func:`run_case` is what the short version in ``tests/project/test_fault_suite.py`` calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.broker import Broker, mosquitto_available
from tests.support.hostile import DaemonProcess
from tests.support.mqtt import Collector

ROOT = Path(__file__).resolve().parent.parent


KINDS = ("faces", "summary", "status", "events")


class TimedCollector(Collector):
    """A :class:`Collector` of the device's payloads that also notes when each message arrived (wall clock)."""

    def __init__(self, broker: Broker, client_id: str) -> None:
        super().__init__(broker, topic="emotion/dev1/+", client_id=client_id)
        self.arrivals: list[tuple[float, dict[str, Any]]] = []

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        # The payload topics only: not the command topic, which a flood fills.
        if not reason_code.is_failure:
            client.subscribe([(f"emotion/dev1/{kind}", 1) for kind in KINDS])

    def _on_message(self, client, userdata, msg) -> None:
        now = time.time()
        super()._on_message(client, userdata, msg)
        kind = msg.topic.rsplit("/", 1)[-1]
        if kind in KINDS:
            try:
                env = json.loads(msg.payload)
            except ValueError:
                return
            with self._lock:
                self.arrivals.append((now, env))

    def snapshot(self) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return list(self.arrivals)

    def first_after(self, t: float, fresh_faces: bool = False, above_seq: int = 0) -> float | None:
        """Arrival time of the first message after ``t`` with a seq above ``above_seq`` (with ``fresh_faces``: of
        a faces message made after ``t``)."""
        for arrived, env in self.snapshot():
            if arrived >= t and env["seq"] > above_seq and (
                    not fresh_faces or (env["kind"] == "faces" and env["ts"] >= t)):
                return arrived
        return None

    def last_seq(self) -> int:
        """The highest seq received so far."""
        return max((env["seq"] for _, env in self.snapshot()), default=0)


@dataclass
class Result:
    """The figures of one case."""

    name: str
    delivered: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    duplicated: int = 0
    recover_s: list[float] = field(default_factory=list)
    fresh_faces_s: list[float] = field(default_factory=list)
    max_faces_delay_s: float = 0.0
    peak_rss_mb: float = 0.0
    log_lines: int = 0
    tracebacks: int = 0
    alive: bool = True
    exit_code: int | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        lost = ", ".join(f"{k} {v}" for k, v in self.lost.items() if v) or "0"
        rec = (f"{max(self.recover_s):.1f} s (mean {sum(self.recover_s) / len(self.recover_s):.1f})"
               if self.recover_s else "-")
        fresh = f"{max(self.fresh_faces_s):.1f} s" if self.fresh_faces_s else "-"
        return (f"{self.name:<22} delivered {self.delivered:6d}  lost {lost:<14} dup {self.duplicated:4d}  "
                f"recover {rec:<18} fresh faces {fresh:<7} max faces delay {self.max_faces_delay_s:5.1f} s  "
                f"peak RSS {self.peak_rss_mb:6.1f} MB  log {self.log_lines} lines, {self.tracebacks} tracebacks  "
                f"exit {self.exit_code}" + (f"  ({'; '.join(self.notes)})" if self.notes else ""))


def _account(res: Result, col: TimedCollector, d: DaemonProcess) -> None:
    """Fill in delivery, loss, duplicates, delays and the log from what arrived and what the daemon said."""
    arrivals = col.snapshot()
    seen: dict[int, str] = {}
    dup = 0
    for _, env in arrivals:
        if env["seq"] in seen:
            dup += 1
        seen[env["seq"]] = env["kind"]
    res.delivered, res.duplicated = len(seen), dup
    if seen:
        missing = set(range(min(seen), max(seen) + 1)) - set(seen)
        res.lost = {"any": len(missing)}
        statuses = [e for _, e in arrivals if e["kind"] == "status" and isinstance(e.get("outbox"), dict)]
        if statuses:
            res.notes.append(f"device counted {statuses[-1]['outbox'].get('dropped', 0)} dropped")
    res.max_faces_delay_s = max((a - e["ts"] for a, e in arrivals if e["kind"] == "faces"), default=0.0)
    log = d.log_text()
    res.log_lines = len(log.splitlines())
    res.tracebacks = log.count("Traceback")
    full = sum("disk is full" in line or "No space left" in line for line in log.splitlines())
    if full:
        res.notes.append(f"{full} log line(s) about the full disk")


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def _recovery(res: Result, col: TimedCollector, back: float, before: int, timeout: float) -> None:
    """Note how long after ``back`` (the broker's return) the first message the subscriber had not had before
    the broker went (``before``: the highest seq then) and the first fresh faces arrived."""
    _wait(lambda: col.first_after(back, fresh_faces=True) is not None, timeout)
    for t, into in ((col.first_after(back, above_seq=before), res.recover_s),
                    (col.first_after(back, fresh_faces=True), res.fresh_faces_s)):
        into.append(t - back if t is not None else float("inf"))


def _mount_tmpfs(path: Path, size: str = "2m") -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _fill(folder: Path, leave_kb: int) -> None:
    """Fill the file system of ``folder`` so that about ``leave_kb`` KB stay free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize - leave_kb * 1024
    if free > 0:
        with open(folder / "filler", "wb") as f:
            f.write(b"\0" * free)


def mqtt_packet(kind: int, body: bytes) -> bytes:
    """One MQTT packet: fixed header (type and flags, remaining length as a varint) and ``body``."""
    out, n = bytearray([kind]), len(body)
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def flood_commands(broker: Broker, n: int) -> float:
    """Write ``n`` QoS 0 ``{}`` commands to the device's command topic as fast as the socket takes them (packets
    encoded up front, one ``sendall``: a client in C could not be faster); return the seconds taken."""
    topic = b"emotion/dev1/command"
    client_id = b"fault-flooder"
    connect = mqtt_packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id)
    publish = mqtt_packet(0x30, len(topic).to_bytes(2, "big") + topic + b"{}")
    with socket.create_connection((broker.host, broker.port), timeout=120) as sock:
        sock.sendall(connect)
        if sock.recv(4)[:1] != b"\x20":
            raise RuntimeError("the broker did not accept the flood client")
        t0 = time.monotonic()
        sock.sendall(publish * n)
        sock.sendall(b"\xe0\x00")  # DISCONNECT
        return time.monotonic() - t0


def run_case(case: str, work: Path, root: Path = ROOT, *, outage_s: float = 20, flaps: int = 10,
             flap_down_s: float = 2.0, flap_up_s: float = 3.0, disk_outage_s: float = 45, free_kb: int = 256,
             flood: int = 100_000, settle_s: float = 10.0) -> Result:
    """Run one case (``outage``, ``flaps``, ``disk`` or ``flood``) in ``work`` and return its figures."""
    res = Result(case)
    broker = Broker(work / f"mosquitto-{case}").start()
    col = TimedCollector(broker, client_id=f"fault-{case}").start()
    state_mount = work / f"{case}-state-tmpfs"
    mounted = False
    d = DaemonProcess(work / case, broker, root=root, mqtt_toml="status_interval_s = 2.0")
    d.config.write_text(d.config.read_text().replace("max_fps = 5.0", "max_fps = 10.0")
                        .replace("reconnect_min_s = 0.2\nreconnect_max_s = 1.0\n", "")
                        .replace("status_interval_s = 1.0\n", ""))
    if case == "disk":
        mounted = _mount_tmpfs(state_mount)
        if not mounted:
            res.notes.append("skipped: cannot mount a tmpfs here (needs root)")
            col.stop()
            broker.stop()
            return res
        d.config.write_text(d.config.read_text().replace(f'state_dir = "{d.state}"', f'state_dir = "{state_mount}"'))
    peak = [0.0]
    stop_watch = threading.Event()

    def watch_rss() -> None:
        while not stop_watch.wait(0.5):
            if d.alive:
                with contextlib.suppress(OSError, KeyError):  # it just ended
                    peak[0] = max(peak[0], d.mb("VmHWM"))

    watcher = threading.Thread(target=watch_rss, daemon=True)
    try:
        d.start()
        watcher.start()
        d.wait_publishing(col, faces=10, timeout=120)
        if case == "outage" or case == "disk":
            if case == "disk":
                _fill(state_mount, free_kb)
            before = col.last_seq()
            broker.stop()
            time.sleep(outage_s if case == "outage" else disk_outage_s)
            broker.start()
            _recovery(res, col, time.time(), before, 120)
        elif case == "flaps":
            for _ in range(flaps):
                before = col.last_seq()
                broker.stop()
                time.sleep(flap_down_s)
                broker.start()
                back = time.time()
                _recovery(res, col, back, before, 60)
                time.sleep(max(0.0, flap_up_s - (time.time() - back)))
        elif case == "flood":
            took = flood_commands(broker, flood)
            res.notes.append(f"{flood:,} QoS 0 commands in {took:.1f} s")
        time.sleep(settle_s)
        res.alive = d.alive
    finally:
        res.exit_code = d.stop()
        stop_watch.set()
        time.sleep(1.0)  # the last messages of the close reach the collector
        col.stop()
        broker.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(state_mount)], check=False)
    res.peak_rss_mb = peak[0]
    _account(res, col, d)
    return res


def main(argv: list[str] | None = None) -> int:
    """Run the chosen cases and print one line each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edge-root", type=Path, default=ROOT, help="Checkout whose daemon runs (default: this one).")
    ap.add_argument("--outage", type=float, default=20, help="Seconds of the single broker outage.")
    ap.add_argument("--flaps", type=int, default=10, help="Broker flaps (2 s down, 3 s up).")
    ap.add_argument("--disk-outage", type=float, default=45, help="Seconds the broker is gone with the disk full.")
    ap.add_argument("--free-kb", type=int, default=256, help="Free space left on the 2 MB tmpfs before the outage.")
    ap.add_argument("--flood", type=int, default=100_000, help="QoS 0 commands in the flood.")
    ap.add_argument("--only", default="outage,flaps,disk,flood", help="Comma-separated cases to run.")
    args = ap.parse_args(argv)
    if not mosquitto_available():
        print("error: mosquitto is not installed (apt-get install -y mosquitto)", file=sys.stderr)
        return 2
    root = args.edge_root.resolve()
    print(f"edge from {root}; command: PYTHONPATH=. nice -n 10 python3 benchmarks/fault_suite.py --edge-root {args.edge_root} "
          f"--outage {args.outage:g} --flaps {args.flaps} --disk-outage {args.disk_outage:g} --free-kb "
          f"{args.free_kb} --flood {args.flood} --only {args.only}")
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        for case in args.only.split(","):
            res = run_case(case.strip(), Path(tmp), root, outage_s=args.outage, flaps=args.flaps,
                           disk_outage_s=args.disk_outage, free_kb=args.free_kb, flood=args.flood)
            print(res.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
