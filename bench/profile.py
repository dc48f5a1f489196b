#!/usr/bin/env python3
"""Where ossvend's CPU goes on one route.

    python3 bench/profile.py [--tool callgrind|perf] [--requests 3000] [--rust-log warn] ROUTE

ROUTE is credentials, presign or post-policy (grant browser-upload of bench/bench.py's
config, warm cache, fake STS on the load core).

callgrind (default): runs target/release/ossvend under ``valgrind --tool=callgrind``
with instrumentation off, serves a warm-up, then collects exactly while REQUESTS
keep-alive requests are served and prints the hottest functions, self and inclusive.
Counts are instructions, exact and repeatable; but valgrind hides the CPU's SHA
extensions, so sha2 runs its portable code there and SHA-256 is over-weighted (use
the criterion figures or perf for its real cost). Raw profile:
target/callgrind.<route>.out (callgrind_annotate, kcachegrind).

perf: ``perf record -e cpu-clock`` (a software clock, which works in VMs without
hardware counters) on the normal release binary during a 5-second wrk run at 64
connections; prints the split user/libc/kernel and the hottest symbols. Rust frames
have no frame pointers here, so only self time is meaningful.

Needs valgrind or perf (Debian ``valgrind``, ``linux-perf``) and target/release/ossvend
(bench/run builds it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

ROUTES = {
    "credentials": "/v1/grants/browser-upload/credentials",
    "presign": "/v1/grants/browser-upload/presign?filename=a.png&content_type=image/png",
    "post-policy": "/v1/grants/browser-upload/post-policy?filename=a.png&content_type=image/png",
}


def server_argv(port: int, sts: bench.FakeSts) -> tuple[list[str], dict[str, str]]:
    cfg = bench.WORK / "profile.toml"
    cfg.write_text(bench.OSSVEND_CONFIG.format(
        port=port, sts=sts.endpoint, role=bench.ROLE_ARN, budget=50,
        api_key_sha256=hashlib.sha256(bench.API_KEY.encode()).hexdigest()))
    env = bench.base_env(ALIBABA_CLOUD_ACCESS_KEY_ID=bench.CALLER_AK,
                         ALIBABA_CLOUD_ACCESS_KEY_SECRET=bench.CALLER_SECRET,
                         BENCH_TICKET_SECRET=bench.TICKET_SECRET)
    return [str(bench.ROOT / "target/release/ossvend"), "serve", "--config", str(cfg)], env


def callgrind(route: str, n: int, rust_log: str | None) -> None:
    path = ROUTES[route]
    out = bench.ROOT / f"target/callgrind.{route}{'.' + rust_log if rust_log else ''}.out"
    sts = bench.FakeSts()
    port = bench.free_port()
    argv, env = server_argv(port, sts)
    if rust_log:
        env["RUST_LOG"] = rust_log
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *argv]
    proc, logf = bench.spawn("profile", argv, env)
    try:
        bench.wait_port(port, proc, "ossvend under callgrind", logf, timeout=120)
        asyncio.run(bench.fill(port, [path] * 200, workers=8))  # warm: cache filled, code paged in
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        t = time.monotonic()
        r = asyncio.run(bench.fill(port, [path] * n, workers=8))
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
        bench.log(f"{r['ok']}/{r['n']} OK in {time.monotonic() - t:.1f} s under callgrind")
    finally:
        for p in list(bench.CHILDREN):
            bench.stop(p)
    for inclusive in ("no", "yes"):
        ann = subprocess.run(["callgrind_annotate", f"--inclusive={inclusive}", "--threshold=99", str(out)],
                             capture_output=True, text=True).stdout
        lines = ann.splitlines()
        total = next((x for x in lines if "PROGRAM TOTALS" in x), "")
        print(f"===== {route}: {'inclusive' if inclusive == 'yes' else 'self'}; {total.strip()} "
              f"for {n} requests =====")
        start = next((i for i, x in enumerate(lines) if "file:function" in x), 0) + 2
        print("\n".join(x[:200] for x in lines[start:start + 45]))
    print(f"raw profile: {out}")


def perf(route: str, rust_log: str | None, call_graph: bool = False) -> None:
    sts = bench.FakeSts()
    port = bench.free_port()
    argv, env = server_argv(port, sts)
    if rust_log:
        env["RUST_LOG"] = rust_log
    proc, logf = bench.spawn("profile", bench.pinned(bench.SERVER_CPU, argv), env)
    data = bench.ROOT / f"target/perf.{route}.data"
    try:
        bench.wait_port(port, proc, "ossvend", logf)
        url = f"http://127.0.0.1:{port}{ROUTES[route]}"
        bench.get(url)
        rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-p", str(proc.pid),
                                *(["-g"] if call_graph else []), "-o", str(data), "--", "sleep", "6"])
        time.sleep(0.3)
        subprocess.run(bench.pinned(bench.LOAD_CPU, ["wrk", "-t1", "-c64", "-d5s", url]), capture_output=True)
        rec.wait()
    finally:
        for p in list(bench.CHILDREN):
            bench.stop(p)
    for sort, n in (("dso", 6), ("symbol", 40)):
        rep = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio",
                              "-g", "none"], capture_output=True, text=True).stdout
        print(f"===== {route}: CPU by {sort} =====")
        rows = [x.rstrip()[:160] for x in rep.splitlines() if "%" in x and not x.startswith("#")]
        print("\n".join(rows[:n]))
    print(f"raw profile: {data}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("route", choices=sorted(ROUTES))
    ap.add_argument("--tool", choices=["callgrind", "perf"], default="callgrind")
    ap.add_argument("--call-graph", action="store_true",
                    help="perf: record call chains (kernel ones are complete; see `perf report -G`)")
    ap.add_argument("--requests", type=int, default=3000, help="requests collected under callgrind")
    ap.add_argument("--rust-log", help="RUST_LOG for ossvend (default: its default, info)")
    a = ap.parse_args()
    if bench.PIN:
        os.sched_setaffinity(0, {int(bench.LOAD_CPU)})
    try:
        if a.tool == "callgrind":
            callgrind(a.route, a.requests, a.rust_log)
        else:
            perf(a.route, a.rust_log, a.call_graph)
    finally:
        import shutil
        shutil.rmtree(bench.WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
