#!/usr/bin/env python3
"""End-to-end benchmark of p2p-copy: `raw` (socat), `reference` (Python p2p-copy 0.1.2)
and `ours` (release build), each through its own relay on 127.0.0.1, run alternately
(A B C A B C ...) with medians reported. Also: a relay-under-load run (many pairs through
one of our relays), the machine's per-core ceilings (openssl, zstd) and the criterion
micro-benchmarks of the core.

Usage: python3 bench/run.py [--size-mib 1024] [--rounds 3] [--only MODE,...] [--help]
Standard library only. See docs/BENCHMARKS.md for what every figure means.
"""

import argparse
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
MIB = 1024 * 1024

ALL_MODES = ["random", "encrypt", "log", "small", "random64", "edge", "huge", "load", "ceiling", "micro"]
# `ours-v1` is ours with --v1-data-path on both sides: the v1 protocol's SHA-256 chain
# and cipher, which is what a Python peer gets; `ours` uses the fast data path.
ALL_CONTENDERS = ["raw", "reference", "ours-v1", "ours"]

# Targets of the performance issues, checked in the summary.
# vs_ref and vs_raw hold for both of ours (v1 and fast data path); fast_vs_raw and
# fast_cpu_vs_raw (at most that many times raw's CPU-seconds) for the fast data path.
TARGETS = {
    "random": {"vs_ref": 2.5, "vs_raw": 0.45, "fast_vs_raw": 0.6, "fast_cpu_vs_raw": 2.0},
    "encrypt": {"vs_ref": 2.2, "vs_raw": 0.35, "fast_vs_raw": 0.5},
    "log": {"vs_ref": 2.0},
    "small": {"wall_vs_ref": 0.2},
}
GIB = 1024 ** 3
CLIENT_RSS_MIB = 16.0
RELAY_BASE_MIB = 16.0
RELAY_PER_PAIR_MIB = 5.0
PIPELINE_SPEEDUP = 1.6

# Every process this script started and has not reaped yet, so that an interrupted run
# stops exactly those (by pid) and nothing else.
LIVE = {}
LIVE_LOCK = threading.Lock()


def say(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------- processes


TIME = "/usr/bin/time"


class Proc:
    """A child process run under GNU time (`-f %M`), reaped by os.wait4 on its own thread,
    which records the exit time and the CPU time.

    Peak RSS comes from GNU time, not from this script's own wait4: Linux carries the
    high-water RSS of the process that calls exec into the new program's ru_maxrss, so
    anything started straight from this (large) Python process would report at least
    this process's size. GNU time is a small program, and reports its child's peak,
    including a shell pipeline's reaped members.

    CPU time (user + system) comes from this script's wait4: the rusage of a reaped
    child includes the children it reaped in turn, so it counts the program (or every
    member of a shell pipeline) plus GNU time's own, which is about a millisecond."""

    def __init__(self, name, argv, log_path, env=None, shell=False):
        self.name = name
        self.log_path = log_path
        self.rss_path = Path(str(log_path) + ".rss")
        self.log = open(log_path, "wb")
        if shell:
            argv = ["sh", "-c", argv]
        argv = [TIME, "-f", "%M %U %S", "-o", str(self.rss_path)] + list(argv)
        self.start = time.monotonic()
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.end = None
        self.rc = None
        self.maxrss_kib = None
        self.cpu_s = None
        self.done = threading.Event()
        with LIVE_LOCK:
            LIVE[self.p.pid] = self
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self):
        _, status, usage = os.wait4(self.p.pid, 0)
        self.end = time.monotonic()
        self.rc = os.waitstatus_to_exitcode(status)
        self.p.returncode = self.rc
        self.cpu_s = usage.ru_utime + usage.ru_stime
        try:
            # "%M %U %S" is the last line; GNU time puts "Command exited with non-zero
            # status N" or "Command terminated by signal N" before it.
            rss = self.rss_path.read_text().strip().splitlines()[-1].split()[0]
            self.maxrss_kib = int(rss)
        except (OSError, ValueError, IndexError):
            self.maxrss_kib = None
        with LIVE_LOCK:
            LIVE.pop(self.p.pid, None)
        self.log.close()
        self.done.set()

    def wait(self, timeout):
        return self.done.wait(timeout)

    def children(self):
        try:
            text = Path(f"/proc/{self.p.pid}/task/{self.p.pid}/children").read_text()
            return [int(x) for x in text.split()]
        except OSError:
            return []

    def terminate(self):
        """SIGTERM to the program under GNU time (time itself would die without writing
        its figures)."""
        for pid in self.children():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill_group(self):
        if not self.done.is_set():
            try:
                # The child leads its own process group (start_new_session): this reaches
                # GNU time, the program and a shell pipeline's members, and only them.
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, grace=5.0):
        """SIGTERM to the program, SIGKILL to the group after `grace` seconds."""
        if self.done.is_set():
            return
        self.terminate()
        if not self.wait(grace):
            self.kill_group()
            self.wait(10)

    def rss_mib(self):
        return None if self.maxrss_kib is None else self.maxrss_kib / 1024.0

    def tail(self, n=15):
        try:
            lines = Path(self.log_path).read_bytes().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join("      | " + l[:200] for l in lines[-n:])


def stop_all_live():
    with LIVE_LOCK:
        procs = list(LIVE.values())
    for p in procs:
        p.stop(grace=2.0)


# ---------------------------------------------------------------- sockets


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_table():
    """(local port, remote port, state) of every TCP socket, from /proc/net/tcp[6]:
    lets the script see listeners and connections without making any itself."""
    rows = []
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    lport = int(parts[1].rsplit(":", 1)[1], 16)
                    rport = int(parts[2].rsplit(":", 1)[1], 16)
                    rows.append((lport, rport, parts[3]))
        except OSError:
            pass
    return rows


def wait_until(pred, timeout, what, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        for p in procs:
            if p.done.is_set():
                raise RuntimeError(f"{p.name} exited (code {p.rc}) while waiting for {what}\n{p.tail()}")
        time.sleep(0.005)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def listening(port):
    return any(l == port and st == "0A" for l, _, st in tcp_table())


def clients_connected(port):
    return sum(1 for _, r, st in tcp_table() if r == port and st == "01")


# ---------------------------------------------------------------- machine and tools


def machine_description():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    kernel = os.uname().release
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({cpu}), {mem} RAM, Linux {kernel}, load average {load}"


def ensure_socat():
    if shutil.which("socat"):
        return True
    if os.geteuid() != 0:
        say("  socat is missing and this is not root: the raw contender is skipped (apt-get install socat)")
        return False
    say("  installing socat (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "-q", "socat"], ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "socat"]):
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if shutil.which("socat"):
            return True
    say("  could not install socat: the raw contender is skipped")
    return False


def python_venv():
    r = subprocess.run(["bash", str(REPO / "scripts" / "python-venv.sh")], stdout=subprocess.PIPE, text=True)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        say("  scripts/python-venv.sh failed: the reference contender is skipped")
        return None
    venv = Path(lines[-1])
    exe = venv / "bin" / "p2p-copy"
    return exe if exe.exists() else None


def cargo_build(packages):
    """Build each package separately, so that one that does not build yet does not stop
    the others. Returns the set of packages that built."""
    built = set()
    for pkg in packages:
        say(f"  cargo build --release -p {pkg}")
        r = subprocess.run(["cargo", "build", "--release", "-p", pkg], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode == 0:
            built.add(pkg)
        else:
            say(f"  build of {pkg} failed (skipping what needs it):")
            say("\n".join("      | " + l for l in r.stdout.splitlines()[-12:]))
    return built


# ---------------------------------------------------------------- data sets


def log_lines(seed, size):
    """Log-like text: timestamps, levels, components, requests. About 5:1 with zstd -3
    on 1 MiB pieces (checked by the ceiling step, which prints the ratio)."""
    rng = random.Random(seed)
    levels = ["INFO"] * 12 + ["DEBUG"] * 6 + ["WARN"] * 2 + ["ERROR"]
    comps = ["http", "db", "cache", "auth", "scheduler", "storage", "mailer", "billing"]
    paths = ["/api/v1/items", "/api/v1/users", "/api/v2/orders", "/static/app.js", "/healthz",
             "/api/v1/search", "/login", "/api/v2/cart"]
    methods = ["GET"] * 6 + ["POST"] * 2 + ["PUT", "DELETE"]
    statuses = [200] * 20 + [201, 204, 301, 304, 400, 401, 403, 404, 404, 500, 503]
    msgs = ["cache miss for key", "slow query on table", "connection pool exhausted, waiting",
            "retrying request to upstream", "user session refreshed", "scheduled job finished",
            "payment authorised for order", "object stored in bucket"]
    out, n, t = [], 0, 1_700_000_000.0 + seed * 86400
    while n < size:
        t += rng.expovariate(400.0)
        sec = int(t)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        ms = int((t - sec) * 1000)
        lvl, c, w = rng.choice(levels), rng.choice(comps), rng.randrange(16)
        if c == "http":
            line = (f"{ts}.{ms:03d}Z {lvl:<5} [worker-{w}] http: {rng.choice(methods)} "
                    f"{rng.choice(paths)}/{rng.randrange(100000)} status={rng.choice(statuses)} "
                    f"bytes={rng.randrange(100, 60000)} dur_ms={rng.randrange(1, 2000) / 10} "
                    f"ip=10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)} "
                    f"req={rng.getrandbits(48):012x}\n")
        else:
            line = (f"{ts}.{ms:03d}Z {lvl:<5} [worker-{w}] {c}: {rng.choice(msgs)} "
                    f"id={rng.randrange(100000000)} user=u{rng.randrange(100000)} "
                    f"took {rng.randrange(1, 500)} ms\n")
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def write_atomically(path, fill):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        fill(f)
    os.replace(tmp, path)


def gen_random(path, size):
    if path.exists() and path.stat().st_size == size:
        return
    say(f"  generating {path.name}")

    def fill(f):
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n

    write_atomically(path, fill)


def gen_log(path, size):
    if path.exists() and path.stat().st_size == size:
        return
    say(f"  generating {path.name}")
    # Four different 4 MiB blocks, cycled: writing fresh text for every MiB would take
    # minutes in Python, and each 1 MiB piece is compressed on its own anyway.
    blocks = [log_lines(seed, 4 * MIB) for seed in range(4)]

    def fill(f):
        left, i = size, 0
        while left:
            b = blocks[i % len(blocks)][: min(left, 4 * MIB)]
            f.write(b)
            left -= len(b)
            i += 1

    write_atomically(path, fill)


def fresh_tree(root, tag, what):
    """The marker of a finished tree `root` made with parameters `tag`, or None when
    that tree exists already. Otherwise `root` is emptied, and the caller fills it and
    touches the marker. The marker sits next to the folder: everything inside is sent."""
    marker = root.parent / f"{root.name}.complete-{tag}"
    if marker.exists():
        return None
    say(f"  generating {what}")
    for old in root.parent.glob(f"{root.name}.complete-*"):
        old.unlink()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    return marker


def gen_small(root, files, dirs, size):
    marker = fresh_tree(root, f"{files}-{dirs}-{size}", f"{files} files of {size} bytes in {dirs} folders")
    if marker is None:
        return
    per_dir = -(-files // dirs)
    for i in range(files):
        d = root / f"d{i // per_dir:02d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:04d}.bin").write_bytes(os.urandom(size))
    marker.touch()


def gen_huge(root, files, dirs, max_size):
    """`files` files of 0 to `max_size` bytes (random sizes and contents) in `dirs`
    folders: a tree whose file list is far over the 2 MiB one v1 message holds."""
    marker = fresh_tree(root, f"{files}-{dirs}-{max_size}",
                        f"{files} files of 0-{max_size} bytes in {dirs} folders")
    if marker is None:
        return
    per_dir = -(-files // dirs)
    rng = random.Random(7)
    blob = os.urandom(max_size)
    for i in range(files):
        d = root / f"dir{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir()
        (d / f"file-{i:06d}.bin").write_bytes(blob[:rng.randint(0, max_size)])
    marker.touch()


def gen_edge(root):
    if (root / "empty.bin").exists() and (root / "one-mib-plus-one.bin").exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.bin").write_bytes(b"")
    write_atomically(root / "one-mib-plus-one.bin", lambda f: f.write(os.urandom(MIB + 1)))


# ---------------------------------------------------------------- one transfer


class RunResult:
    def __init__(self):
        self.ok = False
        self.identical = False
        self.wall = None
        self.rss = {}
        self.cpu = {}
        self.note = ""


def identical(src, out_dir):
    """The output directory holds exactly the source's name, byte for byte (no partial
    files or strays left behind)."""
    name = src.name
    try:
        entries = sorted(os.listdir(out_dir))
    except OSError:
        return False, "no output directory"
    if entries != [name]:
        return False, f"output holds {entries[:5]}"
    if src.is_dir():
        r = subprocess.run(["diff", "-r", "-q", str(src), str(out_dir / name)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return r.returncode == 0, r.stdout.strip()[:300]
    r = subprocess.run(["cmp", str(src), str(out_dir / name)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.returncode == 0, r.stdout.strip()[:300]


def run_transfer(ctx, contender, mode, src, round_no):
    """One transfer of `src` by `contender`: relay, receiver (waited for until connected),
    then sender; wall time from sender start to receiver exit."""
    res = RunResult()
    out = ctx.out_base / f"out-{mode['name']}-{contender}-r{round_no}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    logs = ctx.work / "logs"
    logs.mkdir(exist_ok=True)
    tag = f"{mode['name']}-{contender}-r{round_no}"
    timeout = ctx.timeout
    procs = []
    try:
        if contender == "raw":
            sender, receiver, relay = start_raw(ctx, src, out, logs, tag, procs)
        else:
            sender, receiver, relay = start_tool(ctx, contender, mode, src, out, logs, tag, procs)
        if not receiver.wait(timeout):
            res.note = f"receiver did not finish within {timeout:.0f} s"
            return res
        if not sender.wait(30):
            res.note = "sender still running 30 s after the receiver exited"
            return res
        res.wall = receiver.end - sender.start
        if relay is not None:
            relay.stop()
        for p in procs:
            p.stop()
        res.rss = {"sender": sender.rss_mib(), "receiver": receiver.rss_mib(),
                   "relay": relay.rss_mib() if relay is not None else None}
        res.cpu = {"sender": sender.cpu_s, "receiver": receiver.cpu_s,
                   "relay": relay.cpu_s if relay is not None else None}
        if sender.rc != 0 or receiver.rc != 0:
            res.note = f"exit codes: sender {sender.rc}, receiver {receiver.rc}"
            say(f"    {tag}: {res.note}\n    sender log:\n{sender.tail()}\n    receiver log:\n{receiver.tail()}")
            return res
        res.ok = True
        res.identical, why = identical(src, out)
        if not res.identical:
            res.note = f"output differs: {why}"
            say(f"    {tag}: {res.note}")
        return res
    except RuntimeError as e:
        res.note = str(e).splitlines()[0]
        say(f"    {tag}: {e}")
        return res
    finally:
        for p in procs:
            p.stop()
        if src.is_dir():
            # Many small files: keep them until the end of the benchmark. ext4 skips
            # inodes freed in the last minutes when it allocates new ones
            # (recently_deleted() in ialloc.c), so deleting 5,000 files here would make
            # the next contender's creates several times slower.
            ctx.trash.append(out)
        else:
            shutil.rmtree(out, ignore_errors=True)


def start_raw(ctx, src, out, logs, tag, procs):
    """socat relay (receiver side first, then sender side) and socat ends; directories
    travel as one tar stream."""
    a, b = free_port(), free_port()
    buf = "1048576"
    relay = Proc("raw relay", ["socat", "-b", buf,
                               f"TCP-LISTEN:{b},bind=127.0.0.1,reuseaddr",
                               f"TCP-LISTEN:{a},bind=127.0.0.1,reuseaddr"],
                 logs / f"{tag}-relay.log")
    procs.append(relay)
    wait_until(lambda: listening(b), 10, "the raw relay to listen", [relay])
    if src.is_dir():
        rcmd = (f"socat -b {buf} -u TCP:127.0.0.1:{b} STDOUT | tar -C '{out}' -xf -")
        scmd = (f"tar -C '{src.parent}' -cf - '{src.name}' | socat -b {buf} -u STDIN TCP:127.0.0.1:{a}")
        receiver = Proc("raw receiver", rcmd, logs / f"{tag}-recv.log", shell=True)
        procs.append(receiver)
        wait_until(lambda: clients_connected(b) >= 1 and listening(a), 10, "the raw receiver", [receiver, relay])
        sender = Proc("raw sender", scmd, logs / f"{tag}-send.log", shell=True)
    else:
        receiver = Proc("raw receiver", ["socat", "-b", buf, "-u", f"TCP:127.0.0.1:{b}",
                                         f"CREATE:{out / src.name}"], logs / f"{tag}-recv.log")
        procs.append(receiver)
        wait_until(lambda: clients_connected(b) >= 1 and listening(a), 10, "the raw receiver", [receiver, relay])
        sender = Proc("raw sender", ["socat", "-b", buf, "-u", f"OPEN:{src}", f"TCP:127.0.0.1:{a}"],
                      logs / f"{tag}-send.log")
    procs.append(sender)
    return sender, receiver, relay


def start_tool(ctx, contender, mode, src, out, logs, tag, procs):
    exe = str(ctx.reference if contender == "reference" else ctx.ours)
    port = free_port()
    relay = Proc(f"{contender} relay", [exe, "run-relay-server", "127.0.0.1", str(port), "--no-tls"],
                 logs / f"{tag}-relay.log")
    procs.append(relay)
    wait_until(lambda: listening(port), 20, f"the {contender} relay to listen", [relay])
    url = f"ws://127.0.0.1:{port}"
    # A mode may give a contender a parallel code (n=<N>=n…): the Python tool needs one
    # for a file list over the 2 MiB one of its messages holds.
    code = mode.get("code_prefix", {}).get(contender, "") + f"bench-{os.urandom(12).hex()}"
    # Both contenders through the relay: ours would otherwise go direct between two
    # addresses of this machine (the lab benchmark, bench/src/lab.rs, measures that).
    path = ["--relay-only"] if contender != "reference" else []
    if contender == "ours-v1":
        path.append("--v1-data-path")
    receiver = Proc(f"{contender} receiver", [exe, "receive", url, code, "--out", str(out)] + path + mode["recv_opts"],
                    logs / f"{tag}-recv.log")
    procs.append(receiver)
    # Start the clock only once the receiver is up (the Python one takes ~0.5 s to
    # import, and with --encrypt derives its key first).
    wait_until(lambda: clients_connected(port) >= 1, 30, f"the {contender} receiver to connect", [receiver, relay])
    sender = Proc(f"{contender} sender", [exe, "send", url, code, str(src)] + path + mode["send_opts"],
                  logs / f"{tag}-send.log")
    procs.append(sender)
    return sender, receiver, relay


# ---------------------------------------------------------------- reporting


def fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def summarise(runs):
    good = [r for r in runs if r.ok]
    walls = [r.wall for r in good]
    peak = {}
    for role in ("sender", "receiver", "relay"):
        vals = [r.rss.get(role) for r in runs if r.rss.get(role) is not None]
        peak[role] = max(vals) if vals else None
    cpu = {}
    for role in ("sender", "receiver", "relay"):
        vals = [r.cpu.get(role) for r in good if r.cpu.get(role) is not None]
        cpu[role] = statistics.median(vals) if vals else None
    # All three processes of a transfer together, median over the rounds.
    totals = [sum(v for v in r.cpu.values() if v is not None) for r in good if r.cpu]
    return {
        "cpu": cpu,
        "cpu_total": statistics.median(totals) if totals else None,
        "wall": statistics.median(walls) if walls else None,
        "walls": walls,
        "peak": peak,
        "identical": sum(1 for r in runs if r.identical),
        "runs": len(runs),
        "notes": sorted({r.note for r in runs if r.note}),
    }


def cpu_per_gib(stats, size_bytes):
    """CPU-seconds of sender, receiver and relay together per GiB of payload."""
    total = stats.get("cpu_total")
    return total / (size_bytes / GIB) if (total is not None and size_bytes) else None


def print_mode_table(mode, size_bytes, stats):
    ref = stats.get("reference", {}).get("wall")
    raw = stats.get("raw", {}).get("wall")
    say("")
    say(f"  {'contender':<10} {'wall s':>8} {'CPU s/GiB':>9} {'MB/s':>9} {'x ref':>7} {'x raw':>7} "
        f"{'sender':>9} {'receiver':>9} {'relay':>9}  identical  {'CPU s snd/rcv/rly':>17}  walls (s)")
    for name, s in stats.items():
        w = s["wall"]
        mbs = size_bytes / 1e6 / w if w else None
        xref = ref / w if (w and ref) else None
        xraw = raw / w if (w and raw) else None
        p = s["peak"]
        cpu = "/".join(fmt(s["cpu"][r], ".2f") for r in ("sender", "receiver", "relay"))
        say(f"  {name:<10} {fmt(w, '.3f'):>8} {fmt(cpu_per_gib(s, size_bytes)):>9} "
            f"{fmt(mbs, '.1f'):>9} {fmt(xref):>7} {fmt(xraw):>7} "
            f"{fmt(p['sender'], '.1f') + ' MiB' if p['sender'] else '-':>9} "
            f"{fmt(p['receiver'], '.1f') + ' MiB' if p['receiver'] else '-':>9} "
            f"{fmt(p['relay'], '.1f') + ' MiB' if p['relay'] else '-':>9}  "
            f"{s['identical']}/{s['runs']:<7}  {cpu:>17}  {' '.join(f'{x:.2f}' for x in s['walls'])}")
        for n in s["notes"]:
            say(f"  {'':<10} note: {n}")


# ---------------------------------------------------------------- ceilings


def openssl_speed(alg, elapsed=False, multi=1):
    """MB/s of `openssl speed` on 1 MiB blocks: per CPU second by default (the ceiling of
    one core), per wall second with `elapsed` (what a wall-clock benchmark like criterion
    can reach on the machine as loaded right now); with `multi`, that many processes at
    once (their sum)."""
    cmd = ["openssl", "speed"] + (["-elapsed"] if elapsed else []) + (
        ["-multi", str(multi)] if multi > 1 else []) + [
        "-evp", alg, "-bytes", "1048576", "-seconds", "2"]
    try:
        r = subprocess.run(cmd,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in r.stdout.splitlines()[::-1]:
        m = re.match(r"^\S+\s+([\d.]+)k\s*$", line.strip())
        if m:
            return float(m.group(1)) * 1000 / 1e6
    return None


def zstd_speed(sample):
    """zstd -b3 on 1 MiB blocks of `sample`: (ratio, compress MB/s, decompress MB/s)."""
    if not shutil.which("zstd"):
        return None
    try:
        r = subprocess.run(["zstd", "-b3", "-i3", "-B1048576", str(sample)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return None
    found = re.findall(r"\(x?([\d.]+)\),\s*([\d.]+) MB/s,\s*([\d.]+) MB/s", r.stdout)
    if not found:
        return None
    ratio, c, d = found[-1]
    return float(ratio), float(c), float(d)


def ceilings(ctx):
    say("\n== Per-core ceilings on this machine ==")
    c = {}
    for alg in ("sha256", "aes-256-gcm"):
        cpu, wall = openssl_speed(alg), openssl_speed(alg, elapsed=True)
        c[alg], c[alg + "-wall"] = cpu, wall
        say(f"  openssl speed -evp {alg:<11} -bytes 1048576: {fmt(cpu, '.0f')} MB/s per CPU second, "
            f"{fmt(wall, '.0f')} MB/s per wall second (-elapsed)")
    # What a second thread can gain right now: other work on the machine (other sessions
    # get their own share of the CPU under the kernel's autogroup scheduling) may leave
    # no second core free, and then no parallel speedup can show.
    two = openssl_speed("sha256", elapsed=True, multi=2)
    one = c.get("sha256-wall")
    c["parallel"] = two / one if (two and one) else None
    say(f"  openssl speed -elapsed -multi 2 -evp sha256: {fmt(two, '.0f')} MB/s for two processes together, "
        f"{fmt(c['parallel'])}x one process: the parallel headroom right now")
    sample = ctx.data / "log-sample-16MiB.txt"
    if not sample.exists():
        write_atomically(sample, lambda f: f.write(log_lines(0, 16 * MIB)))
    z = zstd_speed(sample)
    if z:
        c["zstd-3"] = z[1]
        c["unzstd"] = z[2]
        say(f"  zstd -b3 -B1048576 on the log text: ratio {z[0]:.2f}, compress {z[1]:.0f} MB/s, "
            f"decompress {z[2]:.0f} MB/s")
    rsample = ctx.data / "random-sample-4MiB.bin"
    if not rsample.exists():
        write_atomically(rsample, lambda f: f.write(os.urandom(4 * MIB)))
    z = zstd_speed(rsample)
    if z:
        c["zstd-3-random"] = z[1]
        say(f"  zstd -b3 -B1048576 on random data: ratio {z[0]:.2f}, compress {z[1]:.0f} MB/s, "
            f"decompress {z[2]:.0f} MB/s")
    return c


# ---------------------------------------------------------------- micro-benchmarks


UNITS = {"B/s": 1, "KiB/s": 1024, "MiB/s": MIB, "GiB/s": 1024 ** 3, "KB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9}


def parse_criterion(text):
    """name -> (median throughput MB/s or None, median time string)."""
    results, pending = {}, None
    for line in text.splitlines():
        m = re.match(r"^(\S.*?)\s+time:\s+\[(\S+ \S+) (\S+ \S+) (\S+ \S+)\]", line)
        if m:
            pending = m.group(1).strip()
            results[pending] = [None, m.group(3)]
            continue
        m = re.match(r"^\s+time:\s+\[(\S+ \S+) (\S+ \S+) (\S+ \S+)\]", line)
        if m and pending:
            results[pending] = [None, m.group(2)]
            continue
        m = re.match(r"^\s+thrpt:\s+\[\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*\]", line)
        if m and pending in results:
            results[pending][0] = float(m.group(3)) * UNITS.get(m.group(4), 1) / 1e6
            continue
        if re.match(r"^[A-Za-z0-9_]", line) and not re.match(
                r"^(Benchmarking|Found|Warning|Gnuplot|Running|Compiling|Finished|Analyzing|change|Performance|No change|Change)", line):
            pending = line.strip()
    return results


def micro(ctx, ceil):
    say("\n== Micro-benchmarks of the core (criterion, one thread unless said) ==")
    cmd = ["cargo", "bench", "-p", "p2p-copy-core", "--bench", "core", "--",
           "--warm-up-time", "1", "--measurement-time", str(ctx.args.micro_secs)]
    say("  " + " ".join(cmd))
    r = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (ctx.work / "logs").mkdir(exist_ok=True)
    (ctx.work / "logs" / "criterion.log").write_text(r.stdout)
    if r.returncode != 0:
        say("  cargo bench failed:\n" + "\n".join("      | " + l for l in r.stdout.splitlines()[-15:]))
        return None
    res = parse_criterion(r.stdout)
    # Criterion measures wall time, so its figures sit next to the wall-clock ceilings
    # (openssl -elapsed, zstd -b), taken minutes apart on the same machine.
    # Next to each figure: the per-core ceiling (openssl per CPU second) and the
    # wall-clock ceiling (openssl -elapsed, zstd -b), measured minutes apart on the same,
    # shared machine; criterion measures wall time.
    ceiling_of = [("chain", "sha256", "sha256-wall", "openssl sha256"),
                  ("seal", "aes-256-gcm", "aes-256-gcm-wall", "openssl aes-256-gcm"),
                  ("open", "aes-256-gcm", "aes-256-gcm-wall", "openssl aes-256-gcm"),
                  ("compress/log", None, "zstd-3", "zstd -b3"),
                  ("compress/random", None, "zstd-3-random", "zstd -b3"),
                  ("decompress/log", None, "unzstd", "zstd -b3 -d")]
    say(f"  {'benchmark':<34} {'median time':>12} {'MB/s':>9} {'per-core ceiling':>17} "
        f"{'wall ceiling':>14}  ceiling from")
    for name, (thr, t) in res.items():
        cpu_c, wall_c, what = None, None, ""
        for prefix, kc, kw, label in ceiling_of:
            if name.startswith(prefix):
                cpu_c, wall_c, what = ceil.get(kc), ceil.get(kw), label
                break

        def col(c):
            return f"{c:.0f} ({thr / c * 100:.0f} %)" if (thr and c) else "-"

        say(f"  {name:<34} {t:>12} {fmt(thr, '.0f'):>9} {col(cpu_c):>17} {col(wall_c):>14}  {what}")
    one = next((v[0] for k, v in res.items() if k.startswith("pipeline") and "1 worker" in k), None)
    two = next((v[0] for k, v in res.items() if k.startswith("pipeline") and "2 workers" in k), None)
    speedup = two / one if (one and two) else None
    say(f"  pipeline speedup, 2 workers over 1: {fmt(speedup)}x (target >= {PIPELINE_SPEEDUP}x; "
        f"openssl -multi 2 reached {fmt(ceil.get('parallel'))}x)")
    return speedup


# ---------------------------------------------------------------- relay under load


def relay_idle_rss(ctx):
    port = free_port()
    relay = Proc("idle relay", [str(ctx.ours), "run-relay-server", "127.0.0.1", str(port), "--no-tls"],
                 ctx.work / "logs" / "idle-relay.log")
    try:
        wait_until(lambda: listening(port), 20, "the relay to listen", [relay])
        time.sleep(0.5)
    finally:
        relay.stop()
    return relay.rss_mib()


def load(ctx):
    pairs, mib = ctx.args.pairs, ctx.args.pair_mib
    say(f"\n== Relay under load: {pairs} pairs at once through one of our relays, {mib} MiB each ==")
    (ctx.work / "logs").mkdir(exist_ok=True)
    idle = relay_idle_rss(ctx)
    port = free_port()
    relay = Proc("load relay", [str(ctx.ours), "run-relay-server", "127.0.0.1", str(port), "--no-tls",
                                "--max-connections", str(4 * pairs + 64),
                                "--max-per-address", str(4 * pairs + 64)],
                 ctx.work / "logs" / "load-relay.log")
    gen = None
    try:
        wait_until(lambda: listening(port), 20, "the relay to listen", [relay])
        env = dict(os.environ)
        env.setdefault("SMOL_THREADS", str(os.cpu_count() or 2))
        gen = Proc("load generator", [str(ctx.bench_bin), "load", "--server", f"ws://127.0.0.1:{port}",
                                      "--pairs", str(pairs), "--mib", str(mib),
                                      "--dir", str(ctx.work / "load")],
                   ctx.work / "logs" / "load-generator.log", env=env)
        if not gen.wait(ctx.timeout * 4):
            say("  the load generator did not finish in time")
            return None
    finally:
        if gen is not None:
            gen.stop()
        relay.stop()
        shutil.rmtree(ctx.work / "load", ignore_errors=True)
    text = Path(gen.log_path).read_text(errors="replace")
    m = re.search(r"^RESULT pairs=(\d+) ok=(\d+) identical=(\d+) bytes=(\d+) secs=([\d.]+)", text, re.M)
    if gen.rc != 0 or not m:
        say(f"  load generator failed (exit {gen.rc}):\n{gen.tail(25)}")
        if not m:
            return None
    n, ok, same, nbytes, secs = int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)), float(m.group(5))
    rss = relay.rss_mib()
    per_pair = (rss - idle) / n if (rss is not None and idle is not None and n) else None
    say(f"  pairs finished ok: {ok}/{n}, byte-identical: {same}/{n}")
    say(f"  aggregate: {nbytes / 1e6:.0f} MB in {secs:.2f} s = {nbytes / 1e6 / secs:.1f} MB/s")
    say(f"  relay peak RSS: {fmt(rss, '.1f')} MiB (idle {fmt(idle, '.1f')} MiB; "
        f"{fmt(per_pair, '.3f')} MiB per pair above idle); load generator peak RSS {fmt(gen.rss_mib(), '.0f')} MiB")
    return {"pairs": n, "ok": ok, "identical": same, "mbs": nbytes / 1e6 / secs, "relay_rss": rss,
            "idle": idle, "per_pair": per_pair}


# ---------------------------------------------------------------- targets


def print_summary(all_stats):
    """One line per data set: every contender's median wall time and CPU-seconds per GiB
    (sender + receiver + relay), and ours over each of the others."""
    if not all_stats:
        return
    say("\n== Summary: median wall s and CPU s/GiB (sender + receiver + relay) ==")
    for mode, s in all_stats.items():
        cols = []
        for c in ALL_CONTENDERS:
            if c in s:
                cols.append(f"{c} {fmt(s[c]['wall'], '.3f')} s {fmt(s[c].get('cpu_gib'))} CPU-s/GiB")
        o = s.get("ours", {})
        rel = []
        for c in ("raw", "reference"):
            w, ow = s.get(c, {}).get("wall"), o.get("wall")
            cg, ocg = s.get(c, {}).get("cpu_gib"), o.get("cpu_gib")
            if w and ow:
                rel.append(f"ours {w / ow:.2f}x {c}'s speed, {fmt(ocg / cg if (cg and ocg) else None)}x its CPU")
        say(f"  {mode:<9} " + "; ".join(cols) + (f"  ({'; '.join(rel)})" if rel else ""))


def check_targets(all_stats, load_res, speedup, parallel=None):
    print_summary(all_stats)
    say("\n== Targets ==")

    def verdict(ok):
        return "n/a " if ok is None else ("MET " if ok else "MISS")

    def ratio(mode, a, b):
        s = all_stats.get(mode, {})
        wa, wb = s.get(a, {}).get("wall"), s.get(b, {}).get("wall")
        return (wb / wa) if (wa and wb) else None

    def cpu(mode, c):
        return fmt(all_stats.get(mode, {}).get(c, {}).get("cpu_gib"))

    for mode, t in TARGETS.items():
        if mode not in all_stats:
            continue
        for o in ("ours-v1", "ours"):
            if o not in all_stats[mode]:
                continue
            if "vs_ref" in t:
                r = ratio(mode, o, "reference")
                ok = None if r is None else r >= t["vs_ref"]
                say(f"  {verdict(ok)} {mode}: {o} {fmt(r)}x reference (target >= {t['vs_ref']}x; "
                    f"CPU-s/GiB {o} {cpu(mode, o)}, reference {cpu(mode, 'reference')})")
            if "vs_raw" in t:
                r = ratio(mode, o, "raw")
                ok = None if r is None else r >= t["vs_raw"]
                say(f"  {verdict(ok)} {mode}: {o} {fmt(r)}x raw (target >= {t['vs_raw']}x; "
                    f"CPU-s/GiB {o} {cpu(mode, o)}, raw {cpu(mode, 'raw')})")
        if "fast_vs_raw" in t:
            r = ratio(mode, "ours", "raw")
            ok = None if r is None else r >= t["fast_vs_raw"]
            say(f"  {verdict(ok)} {mode}: fast data path (ours) {fmt(r)}x raw (target >= {t['fast_vs_raw']}x)")
        if "fast_cpu_vs_raw" in t:
            s = all_stats.get(mode, {})
            a, b = s.get("ours", {}).get("cpu_gib"), s.get("raw", {}).get("cpu_gib")
            r = (a / b) if (a and b) else None
            ok = None if r is None else r <= t["fast_cpu_vs_raw"]
            say(f"  {verdict(ok)} {mode}: fast data path (ours) {fmt(r)}x raw's CPU-seconds "
                f"(target <= {t['fast_cpu_vs_raw']}x)")
        if "wall_vs_ref" in t:
            r = ratio(mode, "ours", "reference")
            w = None if r is None else 1 / r
            ok = None if w is None else w <= t["wall_vs_ref"]
            say(f"  {verdict(ok)} {mode}: ours' wall {fmt(w)}x reference's (target <= {t['wall_vs_ref']}x)")
    for mode, s in all_stats.items():
        o = s.get("ours")
        if not o:
            continue
        if mode != "encrypt":
            worst = max([x for x in (o["peak"]["sender"], o["peak"]["receiver"]) if x is not None], default=None)
            ok = None if worst is None else worst <= CLIENT_RSS_MIB
            say(f"  {verdict(ok)} {mode}: client peak RSS {fmt(worst, '.2f')} MiB (target <= {CLIENT_RSS_MIB:.0f} MiB)")
        rr = o["peak"]["relay"]
        ok = None if rr is None else rr <= RELAY_BASE_MIB + RELAY_PER_PAIR_MIB
        say(f"  {verdict(ok)} {mode}: relay peak RSS {fmt(rr, '.1f')} MiB with one pair "
            f"(target <= {RELAY_BASE_MIB + RELAY_PER_PAIR_MIB:.0f} MiB)")
        ok = o["identical"] == o["runs"] and o["runs"] > 0
        say(f"  {verdict(ok)} {mode}: ours byte-identical {o['identical']}/{o['runs']}")
    if load_res:
        ok = load_res["identical"] == load_res["pairs"]
        say(f"  {verdict(ok)} load: {load_res['identical']}/{load_res['pairs']} pairs byte-identical")
        bound = RELAY_BASE_MIB + RELAY_PER_PAIR_MIB * load_res["pairs"]
        rr = load_res["relay_rss"]
        ok = None if rr is None else rr <= bound
        say(f"  {verdict(ok)} load: relay peak RSS {fmt(rr, '.1f')} MiB for {load_res['pairs']} pairs "
            f"(target <= {bound:.0f} MiB)")
    if speedup is not None:
        say(f"  {verdict(speedup >= PIPELINE_SPEEDUP)} pipeline: 2 workers {speedup:.2f}x 1 worker "
            f"(target >= {PIPELINE_SPEEDUP}x; two openssl processes got {fmt(parallel)}x one)")


# ---------------------------------------------------------------- main


class Ctx:
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the random and log files (default 1024)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of A B C alternation (default 3)")
    ap.add_argument("--only", default=",".join(ALL_MODES),
                    help=f"comma-separated subset of {','.join(ALL_MODES)} (default all)")
    ap.add_argument("--skip", default="", help="comma-separated modes to leave out")
    ap.add_argument("--contenders", default=",".join(ALL_CONTENDERS), help="subset of raw,reference,ours-v1,ours")
    ap.add_argument("--small-files", type=int, default=5000)
    ap.add_argument("--small-dirs", type=int, default=50)
    ap.add_argument("--small-kib", type=int, default=4)
    ap.add_argument("--huge-files", type=int, default=200000, help="files in the huge mode (default 200000)")
    ap.add_argument("--huge-dirs", type=int, default=200, help="folders in the huge mode (default 200)")
    ap.add_argument("--pairs", type=int, default=200, help="pairs in the load run (default 200)")
    ap.add_argument("--pair-mib", type=int, default=16, help="MiB per pair in the load run (default 16)")
    ap.add_argument("--micro-secs", type=int, default=3, help="criterion measurement time per benchmark")
    ap.add_argument("--data-dir", default=str(TARGET / "bench-data"))
    ap.add_argument("--out-dir", default=None,
                    help="where receivers write (default: under --data-dir; e.g. /dev/shm/p2p-bench to "
                         "take the disk out of the picture)")
    ap.add_argument("--no-build", action="store_true", help="use the existing release build")
    ap.add_argument("--delete-data", action="store_true", help="delete the generated data sets at the end")
    args = ap.parse_args()

    modes = [m for m in args.only.split(",") if m]
    skip = {m for m in args.skip.split(",") if m}
    bad = [m for m in modes + list(skip) if m not in ALL_MODES]
    if bad:
        ap.error(f"unknown mode(s) {bad}; choose from {ALL_MODES}")
    modes = [m for m in ALL_MODES if m in modes and m not in skip]
    contenders = [c for c in ALL_CONTENDERS if c in args.contenders.split(",")]

    ctx = Ctx()
    ctx.args = args
    ctx.data = Path(args.data_dir)
    ctx.work = ctx.data / "work"
    ctx.work.mkdir(parents=True, exist_ok=True)
    ctx.out_base = Path(args.out_dir) if args.out_dir else ctx.work
    ctx.out_base.mkdir(parents=True, exist_ok=True)
    ctx.trash = []
    ctx.timeout = 120 + args.size_mib * 0.5

    # Many sockets and files at once in the load run.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, 65536)), hard))

    say("== p2p-copy benchmark ==")
    say(f"  machine: {machine_description()}")
    say(f"  data: {ctx.data}; large files {args.size_mib} MiB; {args.rounds} rounds; modes: {','.join(modes)}")

    say("\n== Setup ==")
    e2e_modes = [m for m in modes if m in ("random", "encrypt", "log", "small", "random64", "edge", "huge")]
    if "raw" in contenders and e2e_modes and not ensure_socat():
        contenders.remove("raw")
    ctx.reference = None
    if "reference" in contenders and e2e_modes:
        ctx.reference = python_venv()
        if ctx.reference is None:
            contenders.remove("reference")
        else:
            say(f"  reference: {ctx.reference}")
    ctx.ours = TARGET / "release" / "p2p-copy"
    ctx.bench_bin = TARGET / "release" / "p2p-copy-bench"
    need = []
    if ({"ours", "ours-v1"} & set(contenders) and e2e_modes) or "load" in modes:
        need.append("p2p-copy")
    if "load" in modes:
        need.append("p2p-copy-bench")
    built = set(need) if args.no_build else cargo_build(need)
    if "p2p-copy" not in built or not ctx.ours.exists():
        for c in ("ours", "ours-v1"):
            if c in contenders:
                contenders.remove(c)
        if "load" in modes:
            modes.remove("load")
    if "load" in modes and ("p2p-copy-bench" not in built or not ctx.bench_bin.exists()):
        modes.remove("load")
    if e2e_modes:
        say(f"  contenders: {', '.join(contenders) or 'none'}")

    say("\n== Data sets ==")
    size = args.size_mib * MIB
    sets = {}
    if "random" in modes or "encrypt" in modes:
        sets["random"] = ctx.data / f"random-{args.size_mib}MiB.bin"
        gen_random(sets["random"], size)
    if "log" in modes:
        sets["log"] = ctx.data / f"log-{args.size_mib}MiB.txt"
        gen_log(sets["log"], size)
    if "random64" in modes:
        sets["random64"] = ctx.data / "random-64MiB.bin"
        gen_random(sets["random64"], 64 * MIB)
    if "small" in modes:
        sets["small"] = ctx.data / "small"
        gen_small(sets["small"], args.small_files, args.small_dirs, args.small_kib * 1024)
    if "edge" in modes:
        sets["edge"] = ctx.data / "edge"
        gen_edge(sets["edge"])
    if "huge" in modes:
        sets["huge"] = ctx.data / "huge"
        gen_huge(sets["huge"], args.huge_files, args.huge_dirs, 4096)
    say("  ready")

    ceil = ceilings(ctx) if "ceiling" in modes or "micro" in modes else {}

    mode_defs = {
        "random": dict(title=f"{args.size_mib} MiB random, plain (default --compress auto)", data="random",
                       send_opts=[], recv_opts=[], bytes=size),
        "encrypt": dict(title=f"{args.size_mib} MiB random, --encrypt", data="random",
                        send_opts=["--encrypt"], recv_opts=["--encrypt"], bytes=size),
        "log": dict(title=f"{args.size_mib} MiB log text, --compress on", data="log",
                    send_opts=["--compress", "on"], recv_opts=[], bytes=size),
        "small": dict(title=f"{args.small_files} files of {args.small_kib} KiB in {args.small_dirs} folders",
                      data="small", send_opts=[], recv_opts=[],
                      bytes=args.small_files * args.small_kib * 1024),
        "random64": dict(title="64 MiB random, plain (memory check)", data="random64",
                         send_opts=[], recv_opts=[], bytes=64 * MIB),
        "edge": dict(title="edge cases: an empty file and a file of 1 MiB + 1 byte", data="edge",
                     send_opts=[], recv_opts=[], bytes=MIB + 1),
        "huge": dict(title=f"huge tree: {args.huge_files} files of 0-4 KiB in {args.huge_dirs} folders",
                     data="huge", send_opts=[], recv_opts=[], bytes=args.huge_files * 2048,
                     code_prefix={"reference": "n=8=n"}),
    }
    all_stats = {}
    try:
        for mode in e2e_modes:
            if not contenders:
                break
            md = dict(mode_defs[mode], name=mode)
            src = sets[md["data"]]
            say(f"\n== {md['title']} ==")
            runs = {c: [] for c in contenders}
            for rnd in range(1, args.rounds + 1):
                for c in contenders:
                    r = run_transfer(ctx, c, md, src, rnd)
                    runs[c].append(r)
                    say(f"    round {rnd} {c:<9} {fmt(r.wall, '.3f')} s  "
                        f"rss s/r/relay {fmt(r.rss.get('sender'), '.1f')}/{fmt(r.rss.get('receiver'), '.1f')}/"
                        f"{fmt(r.rss.get('relay'), '.1f')} MiB  {'identical' if r.identical else 'NOT IDENTICAL'}")
            stats = {c: summarise(runs[c]) for c in contenders}
            for st in stats.values():
                st["cpu_gib"] = cpu_per_gib(st, md["bytes"])
            all_stats[mode] = stats
            print_mode_table(md, md["bytes"], stats)

        load_res = load(ctx) if "load" in modes else None
        speedup = micro(ctx, ceil) if "micro" in modes else None
        check_targets(all_stats, load_res, speedup, ceil.get("parallel"))
    finally:
        stop_all_live()
        for out in ctx.trash:
            shutil.rmtree(out, ignore_errors=True)
        if args.delete_data:
            shutil.rmtree(ctx.data, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all_live()
        sys.exit(130)
