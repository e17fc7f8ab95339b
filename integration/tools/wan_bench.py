#!/usr/bin/env python3
"""WAN benchmark of partybus (issue 16): throughput, round trips, time to the
first event, small events behind bulk ones and time to notice a dead neighbour,
across an emulated path with chosen delay, loss and rate, with TCP cubic and
TCP BBR (iperf3) on the same path in the same run as anchors.

Lab (root only; everything lives in three namespaces it makes and removes):

    h1 (203.0.113.2) --veth-- r --TAP, linkemu.py: RTT/2 each way-- h2 (198.51.100.2)

r forwards between them and drops random packets with nftables
(`numgen random`): LOSS % on each of two uplinks, i.e. 1-(1-LOSS)^2 per
direction, as in issue 16's lab (two NATed hosts, each uplink lossy). A rate
limit is a tbf on both of r's egress interfaces. Delay comes from a
user-space emulator between two TAPs (this kernel has no netem):
linkemu_fast.c (compiled here with gcc; the default) or linkemu.py
(`--emulator py`, which tops out near 30 MB/s on the 2-core lab machines).
The `ceiling` path (no delay, no loss) measures the emulator itself: read
the other figures against it.

    sudo integration/tools/wan_bench.py --bin new=target/release/partybus \\
        --bin main=/work/bin/partybus-main-wan --congestion bbr,cubic,newreno \\
        --json wan.jsonl

A --bin given as LABEL=PATH@legacy is run without --congestion (a build that
predates the option; it runs its built-in controller once per path);
LABEL=PATH@bbr+cubic runs that build with those controllers only.
Each partybus run is bounded (--timeout), every process is started by this
script and stopped by its pid, and the namespaces go at exit.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
H1, H2, R = "203.0.113.2", "198.51.100.2", None
PORT = 4816

# name: (rtt ms, loss % on each uplink, rate Mbit/s or None)
PATHS = {
    "ceiling": (0, 0.0, None),
    "80ms": (80, 0.0, None),
    "80ms-1%": (80, 1.0, None),
    "200ms-2%": (200, 2.0, None),
    "10mbit-80ms": (80, 0.0, 10),
}

procs = []  # every process we started, stopped by pid at the end


def sh(cmd, check=True, **kw):
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True, **kw)


def spawn(ns, argv, **kw):
    p = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.PIPE, text=True, **kw)
    procs.append(p)
    return p


def stop(p, grace=5):
    if p.poll() is None:
        try:
            p.stdin.close()
        except Exception:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Lines:
    """Reads a process's stdout in a thread; each line with its arrival time."""

    def __init__(self, p):
        self.lines, self.cv = [], threading.Condition()
        threading.Thread(target=self._run, args=(p,), daemon=True).start()

    def _run(self, p):
        for line in p.stdout:
            with self.cv:
                self.lines.append((time.monotonic(), line.strip()))
                self.cv.notify_all()
        with self.cv:
            self.lines.append((time.monotonic(), None))
            self.cv.notify_all()

    def wait(self, pred, timeout):
        """First (time, line) after the lines already seen matching pred, or None."""
        end = time.monotonic() + timeout
        i = 0
        with self.cv:
            while True:
                while i < len(self.lines):
                    t, l = self.lines[i]
                    i += 1
                    if l is None:
                        return None
                    if pred(l):
                        return t, l
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)


class Lab:
    def __init__(self, prefix, emulator):
        self.p = prefix
        self.emulator = emulator  # argv prefix; the script appends the ends and the delay
        self.ns = {n: f"{prefix}-{n}" for n in ("h1", "r", "h2")}
        self.emu = None

    def build(self, rtt, loss, rate):
        self.down()
        h1, r, h2 = self.ns["h1"], self.ns["r"], self.ns["h2"]
        for n in (h1, r, h2):
            sh(f"ip netns add {n}; ip -n {n} link set lo up")
        sh(f"ip link add veth-{self.p} type veth peer name eth0 netns {h1}; ip link set veth-{self.p} netns {r}; "
           f"ip -n {r} link set veth-{self.p} name lan1; "
           f"ip -n {r} addr add 203.0.113.1/24 dev lan1; ip -n {r} link set lan1 up; "
           f"ip -n {h1} addr add {H1}/24 dev eth0; ip -n {h1} link set eth0 up; ip -n {h1} route add default via 203.0.113.1")
        sh(f"ip -n {r} tuntap add dev lan2 mode tap; ip -n {h2} tuntap add dev eth0 mode tap; "
           f"ip -n {r} addr add 198.51.100.1/24 dev lan2; ip -n {r} link set lan2 up; "
           f"ip -n {h2} addr add {H2}/24 dev eth0; ip -n {h2} link set eth0 up; ip -n {h2} route add default via 198.51.100.1")
        sh(f"ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1")
        for n in (h1, h2):
            # Room for a 200 ms path's window (TCP and our UDP buffers alike).
            sh(f"ip netns exec {n} sysctl -qw net.ipv4.tcp_rmem='4096 131072 33554432' net.ipv4.tcp_wmem='4096 16384 33554432'")
        per_dir = 1 - (1 - loss / 100) ** 2
        rule = f"numgen random mod 1000000 < {int(per_dir * 1e6)} drop" if loss > 0 else ""
        sh(f"ip netns exec {r} nft -f -", input=f"""
table inet lab {{
  chain pass {{ type filter hook forward priority filter; policy accept;
    {rule}
  }}
}}
""")
        if rate:
            for dev in ("lan1", "lan2"):
                sh(f"tc -n {r} qdisc add dev {dev} root tbf rate {rate}mbit burst 32kbit latency 50ms")
        if self.emulator[0].endswith("linkemu.py"):
            argv = self.emulator + ["--a", f"{r}:lan2", "--b", f"{h2}:eth0", "--delay-ms", str(rtt / 2), "--limit", "20000"]
        else:
            argv = self.emulator + [r, "lan2", h2, "eth0", str(int(rtt * 500))]
        self.emu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(self.emu)
        for _ in range(50):
            if sh(f"ip netns exec {h2} ping -c1 -W1 {H1}", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("the lab path does not carry pings")

    def cut(self, on):
        """Drop every packet between h1 and h2 (a dead neighbour), or stop dropping."""
        r = self.ns["r"]
        if on:
            sh(f"ip netns exec {r} nft insert rule inet lab pass drop")
        else:
            h = sh(f"ip netns exec {r} nft -a list chain inet lab pass").stdout
            for l in h.splitlines():
                if l.strip().startswith("drop # handle"):
                    sh(f"ip netns exec {r} nft delete rule inet lab pass handle {l.split()[-1]}")

    def down(self):
        if self.emu and self.emu.poll() is None:
            self.emu.terminate()
            self.emu.wait()
        for n in self.ns.values():
            sh(f"ip netns del {n}", check=False)


def iperf(lab, cc, secs):
    srv = spawn(lab.ns["h1"], ["iperf3", "-s", "-1", "-B", H1])
    time.sleep(0.5)
    c = sh(f"ip netns exec {lab.ns['h2']} timeout {secs + 20} iperf3 -c {H1} -t {secs} -C {cc} -J", check=False)
    stop(srv)
    try:
        j = json.loads(c.stdout)
        bps = j["end"]["sum_received"]["bits_per_second"]
        retr = j["end"]["sum_sent"].get("retransmits")
        return {"variant": f"TCP {cc}", "mb_per_s_1k": round(bps / 8e6, 2), "tcp_retransmits": retr}
    except Exception as e:  # noqa: BLE001
        return {"variant": f"TCP {cc}", "error": f"iperf3: {e}: {c.stderr[-300:]}"}


def node_args(who, extra):
    a = ["--ca", "lab.crt", "--cert", f"lab.{who}.crt", "--key", f"lab.{who}.key", "--port", str(PORT),
         "--allow-non-global", "--no-mdns", "--no-dht-serve", "--no-relay"]
    if who == "h2":
        a += ["--connect", f"{H1}:{PORT}"]
    return a + extra


def results(lines):
    out = []
    for _, l in lines.lines:
        if l and l.startswith('{"result"'):
            out.append(json.loads(l)["result"])
    return out


def bench_pair(lab, binary, scenario, rrole, erole, extra, erole_args, timeout):
    rp = spawn(lab.ns["h1"], [binary, "bench", scenario, "--role", rrole, "--json", "--timeout", f"{timeout}s",
                              "--exit-on-stdin-eof"] + node_args("h1", extra), env=dict(os.environ, RUST_LOG="warn"))
    rl = Lines(rp)
    if not rl.wait(lambda l: l.startswith('{"ready"'), 10):
        stop(rp)
        return [{"error": f"{rrole} not ready: {rp.stderr.read()[-300:] if rp.poll() is not None else ''}"}]
    ep = spawn(lab.ns["h2"], [binary, "bench", scenario, "--role", erole, "--json", "--timeout", f"{timeout}s"]
               + erole_args + node_args("h2", extra), env=dict(os.environ, RUST_LOG="warn"))
    el = Lines(ep)
    try:
        ep.wait(timeout * 4 + 60)
    except subprocess.TimeoutExpired:
        pass
    stop(ep, 1)
    stop(rp)
    el.wait(lambda l: False, 1)
    res = results(el)
    if not res:
        res = [{"error": f"{erole}: no result; stderr: {ep.stderr.read()[-400:]}"}]
    return res


def first_event(lab, binary, extra):
    """Seconds from starting an emitter node (join) to the listener printing its event."""
    lp = spawn(lab.ns["h1"], [binary, "listen", "wan.first"] + node_args("h1", extra))
    ll = Lines(lp)
    time.sleep(1.0)
    t0 = time.monotonic()
    ep = spawn(lab.ns["h2"], [binary, "emit", "wan.first", '{"n":1}', "--wait-listeners", "1", "--timeout", "30s"]
               + node_args("h2", extra))
    got = ll.wait(lambda l: '"wan.first"' in l, 35)
    try:
        ep.wait(10)
    except subprocess.TimeoutExpired:
        pass
    stop(ep, 1)
    stop(lp, 0.2)
    return round(got[0] - t0, 3) if got else None


def dead_neighbour(lab, binary, extra, soak):
    """Both nodes up; `soak` s on the path (a healthy lossy path must not be
    dropped); then every packet dropped: seconds until h1 reports h2 lost."""
    a = spawn(lab.ns["h1"], [binary, "node"] + node_args("h1", extra))
    al = Lines(a)
    b = spawn(lab.ns["h2"], [binary, "node"] + node_args("h2", extra))
    found = al.wait(lambda l: '"found"' in l, 30)
    r = {"soak_s": soak}
    if not found:
        r["error"] = "no neighbour found in 30 s"
    else:
        spurious = al.wait(lambda l: '"lost"' in l, soak)
        r["lost_while_healthy"] = spurious is not None
        if spurious:
            r["lost_line"] = spurious[1]
        else:
            t0 = time.monotonic()
            lab.cut(True)
            lost = al.wait(lambda l: '"lost"' in l, 90)
            r["dead_notice_s"] = round(lost[0] - t0, 2) if lost else None
            if lost:
                r["lost_reason"] = json.loads(lost[1]).get("reason")
            lab.cut(False)
    stop(b, 0.2)
    stop(a, 0.2)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", required=True, help="LABEL=PATH, LABEL=PATH@legacy or LABEL=PATH@bbr+cubic")
    ap.add_argument("--congestion", default="bbr,cubic,newreno", help="controllers to run the non-legacy builds with")
    ap.add_argument("--paths", default=",".join(PATHS), help="of: " + ", ".join(PATHS))
    ap.add_argument("--duration", type=float, default=6, help="seconds of emitting per payload size")
    ap.add_argument("--iperf-seconds", type=int, default=8)
    ap.add_argument("--round-trips", type=int, default=40)
    ap.add_argument("--timeout", type=int, default=40, help="bound on each wait of a bench end")
    ap.add_argument("--soak", type=float, default=20, help="seconds a connected pair idles before the cut")
    ap.add_argument("--no-liveness", action="store_true", help="skip the dead-neighbour runs")
    ap.add_argument("--liveness", default="", help="extra node flags for the liveness runs, e.g. '--idle-timeout 10s'")
    ap.add_argument("--emulator", choices=("fast", "py"), default="fast", help="delay emulator: linkemu_fast.c or linkemu.py")
    ap.add_argument("--json", help="also append the JSON lines to this file")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("wan_bench.py needs root (network namespaces)")
    for tool in ("iperf3", "nft", "tc"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (apt-get install iperf3 nftables iproute2)")
    bins = []
    for spec in a.bin:
        label, _, path = spec.partition("=")
        path, _, only = path.partition("@")
        path = os.path.realpath(path)
        if not os.access(path, os.X_OK):
            sys.exit(f"--bin {spec}: {path} is not an executable")
        bins.append((label, path, only))
    ccs = [c for c in a.congestion.split(",") if c]
    work = tempfile.mkdtemp(prefix="wan-bench-")
    if a.emulator == "py":
        emulator = [sys.executable, os.path.join(HERE, "linkemu.py")]
    else:
        if not shutil.which("gcc"):
            sys.exit("gcc is missing: apt-get install gcc, or use --emulator py")
        emulator = [os.path.join(work, "linkemu-fast")]
        sh(f"gcc -O2 -o {emulator[0]} {os.path.join(HERE, 'linkemu_fast.c')}")
    lab = Lab(f"wb{os.getpid()}", emulator)
    os.chdir(work)
    out_json = open(a.json, "a") if a.json else None
    rows = []

    def emit(row):
        row["load_avg_1m"] = os.getloadavg()[0]
        print(json.dumps(row), flush=True)
        if out_json:
            out_json.write(json.dumps(row) + "\n")
            out_json.flush()
        rows.append(row)

    def cleanup(*_):
        for p in procs:
            if p.poll() is None:
                p.kill()
        lab.down()
        shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        b0 = bins[0][1]
        sh(f"{b0} hood create lab && {b0} peer create lab h1 && {b0} peer create lab h2")
        for pname in a.paths.split(","):
            rtt, loss, rate = PATHS[pname]
            lab.build(rtt, loss, rate)
            base = {"path": pname, "rtt_ms": rtt, "loss_pct_each_uplink": loss, "rate_mbit": rate, "emulator": a.emulator}
            for cc in ("cubic", "bbr"):
                emit({**base, **iperf(lab, cc, a.iperf_seconds)})
            if pname == "ceiling":
                continue
            for label, path, only in bins:
                legacy = only == "legacy"
                for cc in ([None] if legacy else only.split("+") if only else ccs):
                    extra = [] if cc is None else ["--congestion", cc]
                    row = {**base, "variant": f"partybus {label}" + (f" {cc}" if cc else ""), "binary": path}
                    # One pair of processes per size: a count that comes back late
                    # must not be read as the next size's.
                    tp = [r for size in (1024, 65536) for r in bench_pair(
                        lab, path, "throughput", "receiver", "emitter", extra,
                        ["--payload", str(size), "--duration", f"{a.duration}s"], a.timeout)]
                    for r in tp:
                        if "error" in r:
                            row["error"] = r["error"]
                            continue
                        k = "1k" if r["payload_bytes"] == 1024 else "64k"
                        if r.get("answers", 1) == 0:
                            # The receiver's count did not come back within --timeout:
                            # the queues were still draining; nothing to count.
                            row[f"drain_timeout_{k}"] = True
                            continue
                        row[f"mb_per_s_{k}"] = r["mb_per_s"]
                        row[f"lost_{k}"] = r["lost"]
                        row[f"packets_lost_{k}"] = r["packets_lost"]
                        row[f"packets_sent_{k}"] = r["packets_sent"]
                        # The emitter's peak RSS: its queues and quinn's send
                        # buffer must stay within the README's bounds.
                        row[f"emitter_rss_kib_{k}"] = r.get("emitter_rss_kib")
                    lat = bench_pair(lab, path, "latency", "ponger", "pinger", extra,
                                     ["--payload", "16", "--round-trips", str(a.round_trips), "--warmup", "5"], a.timeout)
                    for r in lat:
                        if "error" in r:
                            row["error_latency"] = r["error"]
                        else:
                            row.update({"rtt_p50_ms": r["p50_us"] / 1e3, "rtt_p99_ms": r["p99_us"] / 1e3,
                                        "rtt_max_ms": r["max_us"] / 1e3, "pings_lost": r["lost"]})
                    if rate:
                        bulk = bench_pair(lab, path, "latency", "ponger", "pinger", extra,
                                          ["--payload", "16", "--round-trips", "20", "--warmup", "2", "--bulk", "65536"],
                                          a.timeout)
                        for r in bulk:
                            if "error" in r:
                                row["error_bulk"] = r["error"]
                            else:
                                row.update({"small_behind_bulk_p50_ms": r["p50_us"] / 1e3,
                                            "small_behind_bulk_p99_ms": r["p99_us"] / 1e3,
                                            "small_behind_bulk_max_ms": r["max_us"] / 1e3,
                                            "small_behind_bulk_n": r["events"],
                                            "bulk_mb_per_s": r.get("bulk_mb_per_s")})
                    row["first_event_s"] = first_event(lab, path, extra)
                    if cc in (None, ccs[0]) and not a.no_liveness and (legacy or not only):
                        live = a.liveness.split() if a.liveness and not legacy else []
                        row.update(dead_neighbour(lab, path, extra + live, a.soak))
                    emit(row)
        print()
        print(table(rows))
    finally:
        cleanup()


def table(rows):
    def f(v, d=2):
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.{d}f}"
        return str(v)

    head = ("| path | variant | 1 KiB MB/s | 64 KiB MB/s | events lost | packets lost | RTT p50 / p99 / max ms "
            "| first event s | dead neighbour noticed s | 16 B behind 64 KiB p50 / p99 ms | emitter peak RSS MiB |")
    out = [head, "|" + "---|" * 11]
    for r in rows:
        lost = None
        if "lost_1k" in r or "lost_64k" in r:
            lost = (r.get("lost_1k") or 0) + (r.get("lost_64k") or 0)
        rtt = "-" if "rtt_p50_ms" not in r else f"{r['rtt_p50_ms']:.1f} / {r['rtt_p99_ms']:.1f} / {r['rtt_max_ms']:.1f}"
        bulk = "-" if "small_behind_bulk_p99_ms" not in r else \
            f"{r['small_behind_bulk_p50_ms']:.0f} / {r['small_behind_bulk_p99_ms']:.0f}"
        dead = f(r.get("dead_notice_s"))
        if r.get("lost_while_healthy"):
            dead = "dropped while healthy"
        err = " (" + "; ".join(str(r[k])[:80] for k in r if k.startswith("error")) + ")" if any(
            k.startswith("error") for k in r) else ""
        tp = {k: f(r.get(f"mb_per_s_{k}")) if not r.get(f"drain_timeout_{k}") else "no answer in time" for k in ("1k", "64k")}
        sent = sum(r.get(f"packets_sent_{k}") or 0 for k in ("1k", "64k"))
        plost = sum(r.get(f"packets_lost_{k}") or 0 for k in ("1k", "64k"))
        packets = f"{100 * plost / sent:.1f} %" if sent else "-"
        rss = [r.get(f"emitter_rss_kib_{k}") for k in ("1k", "64k")]
        rss = "-" if not any(rss) else f"{max(x or 0 for x in rss) / 1024:.0f}"
        out.append(f"| {r['path']} | {r['variant']}{err} | {tp['1k']} | {tp['64k']} | "
                   f"{f(lost)} | {packets} | {rtt} | {f(r.get('first_event_s'))} | {dead} | {bulk} | {rss} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
