#!/usr/bin/env python3
# A copy of the shared lab tool lab-tools/linkemu.py, kept in the tree so that
# CI has it: integration/src/nat.rs runs it for delayed WAN links.
"""User-space link emulator: a stand-in for tc netem, which this kernel lacks.

Joins two TAP devices that live in two network namespaces and copies Ethernet
frames between them, adding a one-way delay (+ optional uniform jitter, order
preserved) and random loss in each direction. While it runs the two TAPs
behave like one cable; if it dies the link goes down (NO-CARRIER).

  linkemu.py --a NS1:TAP1 --b NS2:TAP2 --delay-ms 20 --jitter-ms 2 --loss 1
             [--limit 10000] [--pidfile F] [--seed N] [--hold-loss]

Set-up, as root (names are examples):
  ip netns add left; ip netns add right
  ip -n left  tuntap add dev tap0 mode tap
  ip -n right tuntap add dev tap0 mode tap
  ip -n left  addr add 198.18.9.1/30 dev tap0; ip -n left  link set tap0 up
  ip -n right addr add 198.18.9.2/30 dev tap0; ip -n right link set tap0 up
  python3 linkemu.py --a left:tap0 --b right:tap0 --delay-ms 40 --loss 1 &
  ip netns exec left ping -c3 198.18.9.2        # ~80 ms RTT
A TAP can also be enslaved to a bridge inside its namespace, so one emulated
link can sit between a router and the rest of a lab "internet".

Measured on these machines: through two such links in series (20 ms and 1 % loss
each, each direction: 80 ms RTT) TCP BBR carried 130 Mbit/s. It stops on
SIGTERM/SIGINT, printing its counters.
"""
import argparse
import collections
import ctypes
import fcntl
import os
import random
import select
import signal
import struct
import sys
import time



class netns:
    """Context manager: switch this thread into network namespace NAME (/run/netns/NAME), then back."""

    def __init__(self, name):
        self.path = name if name.startswith("/") else "/run/netns/" + name

    def __enter__(self):
        self._orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc):
        try:
            _setns(self._orig)
        finally:
            os.close(self._orig)
        return False


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns: " + os.strerror(err))

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(spec):
    ns, name = spec.split(":", 1)
    with netns(ns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="NS:TAP of one end")
    ap.add_argument("--b", required=True, help="NS:TAP of the other end")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    ap.add_argument("--jitter-ms", type=float, default=0.0, help="uniform +/- jitter (order kept)")
    ap.add_argument("--loss", type=float, default=0.0, help="loss percent, each direction")
    ap.add_argument("--limit", type=int, default=10000, help="max frames queued per direction")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--pidfile")
    ap.add_argument("--hold-loss", action="store_true",
                    help="drop nothing until SIGUSR1 arrives (lets the lab start its daemons first)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    fa, fb = open_tap(a.a), open_tap(a.b)
    if a.pidfile:
        with open(a.pidfile, "w") as f:
            f.write("%d\n" % os.getpid())

    def _stop(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    delay = a.delay_ms / 1000.0
    jitter = a.jitter_ms / 1000.0
    loss_armed = a.loss / 100.0
    loss = 0.0 if a.hold_loss else loss_armed

    def arm(*_):
        nonlocal loss
        loss = loss_armed
    signal.signal(signal.SIGUSR1, arm)
    out_of = {fa: fb, fb: fa}
    queues = {fa: collections.deque(), fb: collections.deque()}  # keyed by output fd
    last_due = {fa: 0.0, fb: 0.0}
    stats = {"fwd": 0, "lost": 0, "overflow": 0}
    mono = time.monotonic
    try:
        relay(fa, fb, out_of, queues, last_due, stats, delay, jitter, lambda: loss, a.limit, rng, mono)
    except KeyboardInterrupt:
        pass
    print("linkemu %s <-> %s stopped: %s" % (a.a, a.b, stats), flush=True)
    return 0


def relay(fa, fb, out_of, queues, last_due, stats, delay, jitter, get_loss, limit, rng, mono):
    while True:
        heads = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(heads) - mono()) if heads else 1.0
        try:
            rd, _, _ = select.select([fa, fb], [], [], timeout)
        except InterruptedError:
            continue
        now = mono()
        for fd in rd:
            dst = out_of[fd]
            q = queues[dst]
            for _ in range(256):
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    break
                loss = get_loss()
                if loss and rng.random() < loss:
                    stats["lost"] += 1
                    continue
                if len(q) >= limit:
                    stats["overflow"] += 1
                    continue
                due = now + delay
                if jitter:
                    due += rng.uniform(-jitter, jitter)
                if due < last_due[dst]:
                    due = last_due[dst]
                last_due[dst] = due
                q.append((due, frame))
        now = mono()
        for dst, q in queues.items():
            while q and q[0][0] <= now:
                _, frame = q.popleft()
                try:
                    os.write(dst, frame)
                    stats["fwd"] += 1
                except OSError:
                    pass


if __name__ == "__main__":
    sys.exit(main())
