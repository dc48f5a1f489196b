#!/usr/bin/env python3
"""ossvend benchmarks (issue 9). Run through ``bench/run``, which installs and builds first.

Everything listens on 127.0.0.1. On a machine with two or more cores the server under
test runs on core ``BENCH_SERVER_CPU`` (default 0) and the load generator (wrk, this
script's own asyncio client) and the fake STS on core ``BENCH_LOAD_CPU`` (default 1).

Environment:
  BENCH_DURATION        seconds per throughput measurement (default 10)
  BENCH_STS_LATENCY_MS  latency of the fake STS, set with its /_fake/mode (default 20)
  BENCH_CONNECTIONS     wrk connections (default 64)
  BENCH_STS_BUDGET      ossvend's sts.max_calls_per_second in the storms (default 50, the default)
  BENCH_STORM           concurrent requests in the storms (default 1000)
  BENCH_MEMORY_SUBJECTS distinct cached credentials for the memory figure (default 10000)
  BENCH_WAIT_QUIET      minutes to wait for a quiet machine (no rustc for two checks 60 s
                        apart) before measuring (default 0: don't wait)
  BENCH_RESULTS         where to write the results (default bench/results/<date>.md;
                        "-" = don't write)
  BENCH_SKIP            comma-separated parts to skip: hello,ossvend,reference,storm,memory,sign,fleet,
                        companion
Stdlib only (Python 3.11+, like the fake STS).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

DURATION = max(1, int(float(os.environ.get("BENCH_DURATION", "10"))))  # wrk takes whole seconds
STS_LATENCY_MS = int(os.environ.get("BENCH_STS_LATENCY_MS", "20"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
STS_BUDGET = int(os.environ.get("BENCH_STS_BUDGET", "50"))
STORM = int(os.environ.get("BENCH_STORM", "1000"))
MEMORY_SUBJECTS = int(os.environ.get("BENCH_MEMORY_SUBJECTS", "10000"))
WAIT_QUIET_MIN = float(os.environ.get("BENCH_WAIT_QUIET", "0"))
SKIP = {s.strip() for s in os.environ.get("BENCH_SKIP", "").split(",") if s.strip()}
WARMUP = 1 if DURATION < 10 else 2

# Obviously fake keys: the fake STS's default caller key, and a ticket HMAC key.
CALLER_AK = "LTAIfakeTestKeyId0001"
CALLER_SECRET = "fakeTestSecretDoNotUse0001"
TICKET_SECRET = "fakeBenchTicketSecretDoNotUse-0123456789"
API_KEY = "fakeBenchApiKeyDoNotUse"
# Fleet mode's encryption key (raw value, >= 32 bytes).
SHARED_KEY = "fakeBenchSharedKeyDoNotUse-0123456789abcdef"
ROLE_ARN = "acs:ram::1234567890123456:role/oss-upload"

NCPU = len(os.sched_getaffinity(0))
PIN = NCPU >= 2
SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "0")
LOAD_CPU = os.environ.get("BENCH_LOAD_CPU", "1")

WORK = Path(tempfile.mkdtemp(prefix="ossvend-bench-"))
CHILDREN: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------

def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if PIN else argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, logfile: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}); log:\n{logfile.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}; log:\n{logfile.read_text()[-3000:]}")


def spawn(name: str, argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[subprocess.Popen, Path]:
    logfile = WORK / f"{name}.log"
    f = open(logfile, "ab")
    p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    CHILDREN.append(p)
    return p, logfile


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in CHILDREN:
        CHILDREN.remove(p)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    env.update(extra)
    return env


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class FakeSts:
    def __init__(self) -> None:
        argv = pinned(LOAD_CPU, [sys.executable, str(ROOT / "tests/fakes/fake_sts.py"), "--port", "0"])
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, env=base_env())
        CHILDREN.append(self.proc)
        first = self.proc.stdout.readline().decode().strip()  # "listening on 127.0.0.1:<port>"
        if not first.startswith("listening on "):
            raise SystemExit(f"fake STS did not start: {first!r}")
        self.endpoint = "http://" + first.removeprefix("listening on ")
        # The fake logs a line per call; drain its pipe so it never blocks.
        import threading
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.mode({"delay_ms": STS_LATENCY_MS})

    def _req(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.endpoint + path, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    def mode(self, behaviour: dict) -> None:
        self._req("/_fake/mode", behaviour)

    def reset(self) -> None:
        self._req("/_fake/reset", {})
        self.mode({"delay_ms": STS_LATENCY_MS})

    def calls(self) -> int:
        return int(self._req("/_fake/state")["calls"])

    def call_times(self) -> list[float]:
        """When each AssumeRole call arrived (the fake's clock)."""
        return sorted(float(c["time"]) for c in self._req("/_fake/calls")["calls"])


OSSVEND_CONFIG = """
[server]
listen = "127.0.0.1:{port}"
# The per-user storm queues behind the STS budget for longer than the default 15 s.
request_timeout = "300s"

[identity]
source = "env"

[sts]
endpoint = "{sts}"
role_arn = "{role}"
max_calls_per_second = {budget}

# Tickets are minted by callers authenticated otherwise: a backend API key (unused
# here: the bench mints tickets itself with the same key, src/auth/ticket.rs).
[[auth.api_keys]]
id = "bench-backend"
sha256 = "{api_key_sha256}"

[auth.tickets]
secret_env = "BENCH_TICKET_SECRET"

[[grants]]
name = "browser-upload"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "uploads/"
actions = ["oss:PutObject"]
content_types = ["image/png", "image/jpeg"]

[[grants]]
name = "per-user"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "users/{{subject}}/"
session_name = "u-{{subject}}"
actions = ["oss:PutObject"]
auth = ["api_key", "ticket"]
"""


class Ossvend:
    def __init__(self, sts: FakeSts, name: str, budget: int = STS_BUDGET, rust_log: str | None = None,
                 shared: str = "") -> None:
        self.port = free_port()
        cfg = WORK / f"{name}.toml"
        cfg.write_text(OSSVEND_CONFIG.format(port=self.port, sts=sts.endpoint, role=ROLE_ARN, budget=budget,
                                             api_key_sha256=hashlib.sha256(API_KEY.encode()).hexdigest())
                       + shared)
        env = base_env(ALIBABA_CLOUD_ACCESS_KEY_ID=CALLER_AK, ALIBABA_CLOUD_ACCESS_KEY_SECRET=CALLER_SECRET,
                       BENCH_TICKET_SECRET=TICKET_SECRET, BENCH_SHARED_KEY=SHARED_KEY)
        if rust_log:
            env["RUST_LOG"] = rust_log
        binary = ROOT / "target/release/ossvend"
        self.proc, self.log = spawn(name, pinned(SERVER_CPU, [str(binary), "serve", "--config", str(cfg)]), env)
        wait_port(self.port, self.proc, "ossvend", self.log)
        self.base = f"http://127.0.0.1:{self.port}"


def ticket(subject: str, grant: str, ttl: int = 3000) -> str:
    """A ticket as ossvend mints it (src/auth/ticket.rs), made here with the bench's key."""
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    body = b64(json.dumps({"v": 1, "sub": subject, "grant": grant, "exp": int(time.time()) + ttl,
                           "claims": {}}, separators=(",", ":")).encode())
    tag = hmac.new(TICKET_SECRET.encode(), b"ossvend-ticket-v1." + body.encode(), hashlib.sha256).digest()
    return f"{body}.{b64(tag)}"


# ---------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def wrk(url: str, server_pid: int, duration: int = DURATION, sts_pid: int | None = None,
        after_warmup=None) -> dict:
    """Warm-up, then one measured wrk run; also the server's CPU time during it."""
    def run(d: int) -> str:
        argv = pinned(LOAD_CPU, ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{d}s", "--latency", "--timeout", "10s", url])
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    run(WARMUP)
    if after_warmup:
        after_warmup()
    cpu0 = cpu_seconds(server_pid)
    sts0 = cpu_seconds(sts_pid) if sts_pid else 0.0
    wall0 = time.monotonic()
    out = run(duration)
    wall = time.monotonic() - wall0  # wrk's own start-up and connects included, like the CPU time
    cpu = cpu_seconds(server_pid) - cpu0
    sts_cpu = (cpu_seconds(sts_pid) - sts0) / wall if sts_pid else None
    r = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50": ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        "p99": ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        "cpu": cpu,
    }
    r["cpu_us_per_req"] = cpu / r["requests"] * 1e6 if r["requests"] else float("nan")
    r["cpu_util"] = cpu / wall
    r["sts_cpu_util"] = sts_cpu
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    r["non2xx"] = int(bad.group(1)) if bad else 0
    r["errors"] = errs.group(1) if errs else ""
    if r["non2xx"] or r["errors"]:
        log(f"WARNING {url}: non-2xx {r['non2xx']}, socket errors: {r['errors'] or 'none'}")
    log(f"{url}: {r['rps']:.0f} req/s, p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, "
        f"server CPU {r['cpu_util'] * 100:.0f}%")
    return r


# ---------------------------------------------------------------------------
# asyncio client for the storms and the memory fill (not wrk: one request per
# connection, all connected first, then fired at once)
# ---------------------------------------------------------------------------

def request_bytes(path: str, keep_alive: bool) -> bytes:
    conn = "keep-alive" if keep_alive else "close"
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {conn}\r\n\r\n".encode()


async def read_response(r: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    body = await (r.readexactly(length) if length is not None else r.read())
    return status, body


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))] if s else float("nan")


async def storm(port: int | list[int], paths: list[str]) -> dict:
    """Request i goes to port i (mod the number of ports: replicas in turn)."""
    ports = port if isinstance(port, list) else [port]
    conns = []
    for i in range(0, len(paths), 200):  # connect in batches: the listen backlog is finite
        conns += await asyncio.gather(*[asyncio.open_connection("127.0.0.1", ports[j % len(ports)])
                                        for j in range(i, min(i + 200, len(paths)))])
    go = asyncio.Event()

    async def one(rw, path):
        r, w = rw
        await go.wait()
        t0 = time.perf_counter()
        w.write(request_bytes(path, keep_alive=False))
        status, _ = await read_response(r)
        t1 = time.perf_counter()
        w.close()
        return status, (t1 - t0) * 1e3, t1

    tasks = [asyncio.create_task(one(c, p)) for c, p in zip(conns, paths)]
    await asyncio.sleep(0.3)
    start = time.perf_counter()
    go.set()
    res = await asyncio.gather(*tasks)
    lat = [x[1] for x in res]
    return {
        "n": len(res),
        "ok": sum(1 for x in res if x[0] == 200),
        "statuses": sorted({x[0] for x in res}),
        "p50": pct(lat, 50),
        "p99": pct(lat, 99),
        "max": max(lat),
        "drain_s": max(x[2] for x in res) - start,
    }


async def fill(port: int, paths: list[str], workers: int = 64) -> dict:
    """Sends every path once over `workers` keep-alive connections."""
    todo = list(reversed(paths))
    ok = 0
    statuses: set[int] = set()

    async def worker():
        nonlocal ok
        r, w = await asyncio.open_connection("127.0.0.1", port)
        while todo:
            w.write(request_bytes(todo.pop(), keep_alive=True))
            status, _ = await read_response(r)
            statuses.add(status)
            ok += status == 200
        w.close()

    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(workers)])
    return {"n": len(paths), "ok": ok, "statuses": sorted(statuses), "seconds": time.perf_counter() - start}


def get(url: str) -> int:
    return fetch(url)[0]


def fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, r.read()


# ---------------------------------------------------------------------------
# the parts
# ---------------------------------------------------------------------------

R: dict[str, dict] = {}


def part_hello(body_bytes: int | None) -> None:
    port = free_port()
    binary = ROOT / "target/release/bench-hello"
    p, logf = spawn("hello", pinned(SERVER_CPU, [str(binary), f"127.0.0.1:{port}"]), base_env())
    wait_port(port, p, "bench-hello", logf)
    R["hello"] = wrk(f"http://127.0.0.1:{port}/hello", p.pid)
    if body_bytes:
        # The same server answering a body as large as ossvend's credentials body.
        R["hello_sized"] = wrk(f"http://127.0.0.1:{port}/bytes/{body_bytes}", p.pid)
        R["hello_sized"]["bytes"] = body_bytes
    stop(p)
    # The same server writing one line shaped like ossvend's audit line per request,
    # through ossvend's own logging: what that line alone costs.
    port = free_port()
    p, logf = spawn("hello-logged", pinned(SERVER_CPU, [str(binary), f"127.0.0.1:{port}", "--log"]), base_env())
    wait_port(port, p, "bench-hello", logf)
    R["hello_logged"] = wrk(f"http://127.0.0.1:{port}/logged", p.pid)
    stop(p)


def part_ossvend(sts: FakeSts) -> None:
    srv = Ossvend(sts, "ossvend")
    time.sleep(0.5)
    R["rss_idle_kib"] = {"v": rss_kib(srv.proc.pid)}

    if "storm" not in SKIP:
        # 1. cold storm: STORM concurrent FIRST requests for one grant.
        sts.reset()
        path = "/v1/grants/browser-upload/credentials"
        s = asyncio.run(storm(srv.port, [path] * STORM))
        s["sts_calls"] = sts.calls()
        R["storm_grant"] = s
        log(f"cold storm, one grant: {s}")

    g = "/v1/grants/browser-upload"
    R["cred_body_bytes"] = {"v": len(fetch(f"{srv.base}{g}/credentials")[1])}
    R["cred"] = wrk(f"{srv.base}{g}/credentials", srv.proc.pid)
    R["presign"] = wrk(f"{srv.base}{g}/presign?filename=a.png&content_type=image/png", srv.proc.pid)
    R["post"] = wrk(f"{srv.base}{g}/post-policy?filename=a.png&content_type=image/png", srv.proc.pid)

    if "storm" not in SKIP:
        # 2. STORM distinct users on the per-user grant, under the STS budget.
        sts.reset()
        paths = [f"/v1/grants/per-user/credentials?ticket={ticket(f'storm{i:05d}', 'per-user')}"
                 for i in range(STORM)]
        s = asyncio.run(storm(srv.port, paths))
        s["sts_calls"] = sts.calls()
        R["storm_users"] = s
        log(f"per-user storm: {s}")
    stop(srv.proc)

    # The same cached route without the per-request access and audit log lines.
    srv = Ossvend(sts, "ossvend-warn", rust_log="warn")
    get(f"{srv.base}{g}/credentials")
    R["cred_nolog"] = wrk(f"{srv.base}{g}/credentials", srv.proc.pid)
    stop(srv.proc)


def part_reference(sts: FakeSts) -> None:
    port = free_port()
    env = base_env(PORT=str(port), STS_ENDPOINT=sts.endpoint + "/", ALIBABA_CLOUD_ACCESS_KEY_ID=CALLER_AK,
                   ALIBABA_CLOUD_ACCESS_KEY_SECRET=CALLER_SECRET, ROLE_ARN=ROLE_ARN, NODE_ENV="production")
    p, logf = spawn("reference", pinned(SERVER_CPU, ["node", "server.js"]), env, cwd=BENCH / "reference")
    wait_port(port, p, "reference server", logf)
    url = f"http://127.0.0.1:{port}/v1/grants/browser-upload/credentials"
    if get(url) != 200:
        raise SystemExit("reference server: first request failed")
    r = wrk(url, p.pid, sts_pid=sts.proc.pid, after_warmup=sts.reset)
    r["sts_calls"] = sts.calls()
    R["reference"] = r
    stop(p)


def part_memory(sts: FakeSts) -> None:
    # A fresh server with the highest STS budget ossvend accepts (100 calls/s, STS's
    # own per-account limit): the fill takes MEMORY_SUBJECTS / 100 seconds.
    srv = Ossvend(sts, "ossvend-memory", budget=100, rust_log="warn")
    time.sleep(0.5)
    idle = rss_kib(srv.proc.pid)
    sts.reset()
    paths = [f"/v1/grants/per-user/credentials?ticket={ticket(f'user{i:05d}', 'per-user')}"
             for i in range(MEMORY_SUBJECTS)]
    f = asyncio.run(fill(srv.port, paths))
    time.sleep(1)
    f["sts_calls"] = sts.calls()
    f["idle_kib"] = idle
    f["rss_kib"] = rss_kib(srv.proc.pid)
    R["memory"] = f
    log(f"memory: {f}")
    stop(srv.proc)


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def part_companion() -> None:
    """Issue 17: Uppy Companion's S3 signing routes against ossvend's, same run, same core.

    ossvend runs as `ossvend local` (its ready config's `large-files` grant, multipart on):
    opening an upload session calls InitiateMultipartUpload, which the embedded OSS sink in
    the same process answers; it is idle while the routes measured here only sign. Companion
    signs with fake S3 keys and calls nothing: its sign-part route takes any uploadId.
    """
    port, oss_port = free_port(), free_port()
    argv = [str(ROOT / "target/release/ossvend"), "local", "--listen", f"127.0.0.1:{port}",
            "--oss-listen", f"127.0.0.1:{oss_port}", "--data-dir", str(WORK / "local"), "--no-callbacks"]
    srv, logf = spawn("ossvend-local", pinned(SERVER_CPU, argv), base_env())
    wait_port(port, srv, "ossvend local", logf)
    g = f"http://127.0.0.1:{port}/v1/grants/large-files"
    native = post_json(f"{g}/uploads", {"filename": "big.bin", "content_type": "application/octet-stream",
                                        "size": 100 * 2**20, "part_size": 5 * 2**20})
    compat = post_json(f"{g}/companion/s3/multipart", {"filename": "big.bin", "type": "application/octet-stream"})
    key = urllib.parse.quote(compat["key"], safe="")
    routes = {
        "ov_part_native": f"{g}/uploads/{native['upload']}/parts?numbers=3",
        "ov_part_companion": f"{g}/companion/s3/multipart/{compat['uploadId']}/3?key={key}",
        "ov_params": f"{g}/companion/s3/params?filename=a.png&type=image/png",
    }
    for name, url in routes.items():
        if get(url) != 200:
            raise SystemExit(f"ossvend local: {url} did not answer 200")
        R[name] = wrk(url, srv.pid)
    stop(srv)

    port = free_port()
    env = base_env(PORT=str(port), NODE_ENV="production")
    p, logf = spawn("companion", pinned(SERVER_CPU, ["node", "server.js"]), env, cwd=BENCH / "companion")
    wait_port(port, p, "companion", logf)
    c = f"http://127.0.0.1:{port}/s3"
    routes = {
        # A made-up uploadId: Companion signs it without asking S3 (nothing to ask here).
        "cp_part": f"{c}/multipart/made-up-upload-id/3?key=uploads%2Fbig.bin",
        "cp_params": f"{c}/params?filename=a.png&type=image/png",
    }
    for name, url in routes.items():
        if get(url) != 200:
            raise SystemExit(f"companion: {url} did not answer 200")
        R[name] = wrk(url, p.pid)
    stop(p)


SIGNERS = [
    ("oss_v1_header", "OSS V1 header"),
    ("oss_v1_presign", "OSS V1 presigned URL"),
    ("oss_v4_header", "OSS V4 header"),
    ("oss_v4_presign", "OSS V4 presigned URL"),
    ("post_v1", "PostObject V1"),
    ("post_v4", "PostObject V4"),
    ("s3_presign", "S3 SigV4 presigned URL"),
    ("sts_rpc", "STS RPC (AssumeRole request)"),
]


class Redis:
    """A redis-server of its own on the load core (fleet mode's shared state)."""

    def __init__(self) -> None:
        self.port = free_port()
        d = WORK / "redis"
        d.mkdir(exist_ok=True)
        argv = pinned(LOAD_CPU, ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(d)])
        self.proc, self.log = spawn("redis", argv, base_env())
        wait_port(self.port, self.proc, "redis-server", self.log)

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                              check=True).stdout

    def commands(self) -> int:
        return int(re.search(r"^total_commands_processed:(\d+)", self.cli("INFO", "stats"), re.M).group(1))

    def used_memory(self) -> int:
        return int(re.search(r"^used_memory:(\d+)", self.cli("INFO", "memory"), re.M).group(1))


def fleet_section(redis: Redis, replicas: int) -> str:
    return (f'\n[shared]\nurl = "redis://127.0.0.1:{redis.port}"\nencryption_key_env = "BENCH_SHARED_KEY"\n'
            f"replicas = {replicas}\n")


def max_per_second(times: list[float]) -> int:
    return max((sum(1 for x in times[i:] if x < t + 1.0) for i, t in enumerate(times)), default=0)


def part_fleet(sts: FakeSts) -> None:
    """Fleet mode (issue 16): the same cached route through a replica with [shared]
    (in-process hits never touch Redis), then three replicas sharing one Redis."""
    redis = Redis()
    g = "/v1/grants/browser-upload"
    srv = Ossvend(sts, "ossvend-fleet-1", shared=fleet_section(redis, 1))
    get(f"{srv.base}{g}/credentials")
    before = redis.commands()
    R["cred_fleet"] = wrk(f"{srv.base}{g}/credentials", srv.proc.pid)
    # Minus this INFO itself: what the replica sent Redis while serving hits.
    R["cred_fleet"]["redis_commands"] = redis.commands() - before - 1
    stop(srv.proc)
    redis.cli("FLUSHALL")

    reps = [Ossvend(sts, f"ossvend-fleet-r{i}", shared=fleet_section(redis, 3)) for i in range(3)]
    ports = [r.port for r in reps]
    sts.reset()
    s = asyncio.run(storm(ports, [f"{g}/credentials"] * STORM))
    s["sts_calls"] = sts.calls()
    R["fleet_storm_grant"] = s
    log(f"fleet cold storm, one grant, 3 replicas: {s}")

    before = redis.used_memory()
    sts.reset()
    paths = [f"/v1/grants/per-user/credentials?ticket={ticket(f'fleet{i:05d}', 'per-user')}" for i in range(STORM)]
    s = asyncio.run(storm(ports, paths))
    times = sts.call_times()
    s["sts_calls"] = len(times)
    s["peak_per_s"] = max_per_second(times)
    R["fleet_storm_users"] = s
    log(f"fleet per-user storm, 3 replicas: {s}")
    creds = [k for k in redis.cli("--scan", "--pattern", "ossvend:cred:*").split() if k]
    usage = int(redis.cli("MEMORY", "USAGE", creds[0]).strip()) if creds else 0
    R["fleet_redis"] = {"keys": len(creds), "per_cred": (redis.used_memory() - before) / max(1, len(creds)),
                        "usage": usage}
    for r in reps:
        stop(r.proc)
    stop(redis.proc)


def part_sign() -> None:
    meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                                     capture_output=True, text=True, check=True).stdout)
    target = Path(meta["target_directory"])
    argv = pinned(SERVER_CPU, ["cargo", "bench", "--locked", "--bench", "sign", "--",
                               "--warm-up-time", "0.5", "--measurement-time", "1.5"])
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    (WORK / "criterion.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise SystemExit(f"cargo bench failed:\n{out.stderr[-3000:]}")
    for key, _ in SIGNERS:
        est = json.loads((target / "criterion/sign" / key / "new/estimates.json").read_text())
        R[f"sign_{key}"] = {"ns": est["median"]["point_estimate"],
                            "lo": est["median"]["confidence_interval"]["lower_bound"],
                            "hi": est["median"]["confidence_interval"]["upper_bound"]}


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def f_rps(r):
    return f"{r['rps']:,.0f}".replace(",", " ")


def f_ms(v):
    return f"{v:.2f}" if v < 100 else f"{v:,.0f}".replace(",", " ")


def ratio(a, b):
    return f"{a / b:.2f}×" if b else "—"


def table() -> str:
    rows = ["| measurement | req/s | p50 ms | p99 ms | server CPU | CPU µs/req | result | ratio |",
            "|---|---:|---:|---:|---:|---:|---|---|"]

    def tp(name, key, result="", rat=""):
        r = R.get(key)
        if not r:
            return
        note = result
        if r.get("non2xx") or r.get("errors"):
            note += f" ⚠ non-2xx {r['non2xx']}, errors {r['errors'] or 0}"
        rows.append(f"| {name} | {f_rps(r)} | {f_ms(r['p50'])} | {f_ms(r['p99'])} | {r['cpu_util'] * 100:.0f}% "
                    f"| {r['cpu_us_per_req']:.1f} | {note} | {rat} |")

    h = R.get("hello")
    hr = h["rps"] if h else 0
    tp("bare axum hello (`bench/hello`, the ceiling)", "hello", "body 5 bytes", "1.00×")
    if "hello_sized" in R:
        tp("bare axum, body as large as the credentials body", "hello_sized",
           f"body {R['hello_sized']['bytes']} bytes", f"{ratio(R['hello_sized']['rps'], hr)} hello")
    if "hello_logged" in R:
        tp("bare axum + one audit-shaped log line (ossvend's logging, `bench-hello --log`)", "hello_logged",
           "body 5 bytes", f"{ratio(R['hello_logged']['rps'], hr)} hello")
    if "cred" in R:
        c = R["cred"]
        rat = f"{ratio(c['rps'], hr)} hello"
        if "reference" in R:
            rat += f"; {ratio(c['rps'], R['reference']['rps'])} reference"
        if "hello_sized" in R:
            rat += f"; {ratio(c['rps'], R['hello_sized']['rps'])} same-size hello"
        tp("ossvend cached credentials (warm cache)", "cred", f"body {R['cred_body_bytes']['v']} bytes", rat)
    if "cred_nolog" in R:
        tp("ossvend cached credentials, audit log off (`RUST_LOG=warn`)", "cred_nolog", "",
           f"{ratio(R['cred_nolog']['rps'], hr)} hello")
    if "reference" in R:
        r = R["reference"]
        tp(f"reference: Express + ali-oss STS, AssumeRole per request (STS {STS_LATENCY_MS} ms)", "reference",
           f"{r['sts_calls']} STS calls for {r['requests']} completed requests (calls of requests in "
           f"flight at the end included); fake STS CPU "
           f"{r['sts_cpu_util'] * 100:.0f}%", f"{ratio(r['rps'], hr)} hello")
    for key, name in (("presign", "ossvend presigned PUT (`/presign`, OSS V4)"),
                      ("post", "ossvend PostObject form (`/post-policy`, V4)")):
        if key in R:
            tp(name, key, "", f"{ratio(R[key]['rps'], hr)} hello")
    def vs_companion(key, base):
        return f"{ratio(R[key]['rps'], R[base]['rps'])} Companion" if key in R and base in R else ""

    tp("Companion 6.2.2: one part URL (`GET /s3/multipart/{id}/{n}?key=`, S3 SigV4)", "cp_part", "",
       "1.00× Companion")
    tp("ossvend local, Companion route: one part URL (`/companion/s3/multipart/{id}/{n}`, OSS V4)",
       "ov_part_companion", "", vs_companion("ov_part_companion", "cp_part"))
    tp("ossvend local, native route: one part URL (`/uploads/{upload}/parts?numbers=n`, OSS V4)",
       "ov_part_native", "", vs_companion("ov_part_native", "cp_part"))
    tp("Companion 6.2.2: presigned POST form (`GET /s3/params`)", "cp_params", "no size limit in its policy",
       "1.00× Companion")
    tp("ossvend local: PostObject form (`/companion/s3/params`, V4)", "ov_params",
       "policy binds the key and `content-length-range`", vs_companion("ov_params", "cp_params"))
    if "storm_grant" in R:
        s = R["storm_grant"]
        rows.append(f"| cold storm: {s['n']} concurrent first requests, one grant | — | {f_ms(s['p50'])} "
                    f"| {f_ms(s['p99'])} | — | — | **{s['sts_calls']} STS call(s)**; {s['ok']}/{s['n']} OK; "
                    f"all answered in {s['drain_s'] * 1e3:.0f} ms | |")
    if "storm_users" in R:
        s = R["storm_users"]
        expect = max(0.0, (s["n"] - STS_BUDGET) / STS_BUDGET)
        rows.append(f"| cold storm: {s['n']} distinct users, per-user grant (tickets), budget {STS_BUDGET} calls/s "
                    f"| — | {f_ms(s['p50'])} | {f_ms(s['p99'])} | — | — | **{s['sts_calls']} STS calls**; "
                    f"{s['ok']}/{s['n']} OK; drained in **{s['drain_s']:.1f} s** (budget floor "
                    f"{expect:.1f} s) | |")
    if "cred_fleet" in R:
        rat = f"{ratio(R['cred_fleet']['rps'], R['cred']['rps'])} without [shared]" if "cred" in R else ""
        tp("fleet mode: the same cached route through a replica with `[shared]`", "cred_fleet",
           f"{R['cred_fleet']['redis_commands']} Redis commands during the run", rat)
    if "fleet_storm_grant" in R:
        s = R["fleet_storm_grant"]
        rows.append(f"| fleet mode: cold storm, {s['n']} concurrent first requests over 3 replicas, one grant "
                    f"| — | {f_ms(s['p50'])} | {f_ms(s['p99'])} | — | — | **{s['sts_calls']} STS call(s)**; "
                    f"{s['ok']}/{s['n']} OK; all answered in {s['drain_s'] * 1e3:.0f} ms | |")
    if "fleet_storm_users" in R:
        s = R["fleet_storm_users"]
        rows.append(f"| fleet mode: {s['n']} distinct users over 3 replicas, fleet budget {STS_BUDGET} calls/s "
                    f"| — | {f_ms(s['p50'])} | {f_ms(s['p99'])} | — | — | **{s['sts_calls']} STS calls**, at most "
                    f"**{s['peak_per_s']} in any second**; {s['ok']}/{s['n']} OK; drained in "
                    f"**{s['drain_s']:.1f} s** | |")
    if "fleet_redis" in R:
        m = R["fleet_redis"]
        rows.append(f"| fleet mode: Redis memory per cached credential | — | — | — | — | — "
                    f"| {m['per_cred']:,.0f} bytes (`used_memory` growth over {m['keys']} credentials; "
                    f"`MEMORY USAGE` of one: {m['usage']} bytes) | |".replace(",", " "))
    if "rss_idle_kib" in R:
        rows.append(f"| memory: RSS idle | — | — | — | — | — | {R['rss_idle_kib']['v'] / 1024:.1f} MiB | |")
    if "memory" in R:
        m = R["memory"]
        per = (m["rss_kib"] - m["idle_kib"]) * 1024 / max(1, m["ok"])
        rows.append(f"| memory: RSS after {m['ok']} distinct cached credentials | — | — | — | — | — "
                    f"| {m['rss_kib'] / 1024:.1f} MiB (idle {m['idle_kib'] / 1024:.1f} MiB; "
                    f"≈{per / 1024:.1f} KiB per credential; {m['sts_calls']} STS calls, filled in "
                    f"{m['seconds']:.1f} s) | |")
    for key, name in SIGNERS:
        s = R.get(f"sign_{key}")
        if s:
            rows.append(f"| signing: {name} (criterion median) | — | — | — | — | — "
                        f"| **{s['ns']:,.0f} ns**".replace(",", " ") +
                        f" [{s['lo']:.0f}–{s['hi']:.0f}] | |")
    return "\n".join(rows)


def sh(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return "?"


def machine() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    osr = ""
    if Path("/etc/os-release").exists():
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text(), re.M)
        osr = m.group(1) if m else ""
    commit = sh(["git", "rev-parse", "--short", "HEAD"])
    if sh(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += " + uncommitted changes"
    return {
        "CPU": f"{cpu}, {os.cpu_count()} cores ({sh(['lscpu']).count('Hypervisor') and 'virtual machine' or 'bare metal'})",
        "kernel": platform.release(),
        "OS": osr,
        "rustc": sh(["rustc", "-V"]),
        "wrk": sh(["wrk", "-v"]).splitlines()[0] if sh(["wrk", "-v"]) else "?",
        "node": sh(["node", "-v"]),
        "python": platform.python_version(),
        "ossvend": commit,
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB",
    }


def busy() -> list[str]:
    out = subprocess.run(["pgrep", "-x", "rustc"], capture_output=True, text=True).stdout.split()
    return out


def wait_quiet() -> str:
    if WAIT_QUIET_MIN <= 0:
        return f"not waited for; rustc processes at start: {len(busy())}"
    start = time.monotonic()
    quiet = 0
    while True:
        n = len(busy())
        quiet = quiet + 1 if n == 0 else 0
        waited = (time.monotonic() - start) / 60
        if quiet >= 2:
            return f"quiet (no rustc for 2 checks 60 s apart) after {waited:.0f} min"
        if waited >= WAIT_QUIET_MIN:
            return f"NOT quiet: {n} rustc processes still running after {waited:.0f} min; ran anyway"
        log(f"waiting for a quiet machine: {n} rustc processes running")
        time.sleep(60)


def main() -> int:
    if PIN:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    else:
        log("WARNING: fewer than 2 usable cores: nothing is pinned, load and server share a core")
    log(f"work directory (logs, configs): {WORK}")
    quiet = wait_quiet()
    log(f"machine: {quiet}")
    t0 = time.monotonic()
    load_before = os.getloadavg()
    sts = FakeSts()
    try:
        if "ossvend" not in SKIP:
            part_ossvend(sts)
        if "hello" not in SKIP:
            part_hello(R.get("cred_body_bytes", {}).get("v"))
        if "reference" not in SKIP:
            part_reference(sts)
        if "memory" not in SKIP:
            part_memory(sts)
        if "fleet" not in SKIP and shutil.which("redis-server"):
            part_fleet(sts)
        if "companion" not in SKIP:
            part_companion()
    finally:
        for p in list(CHILDREN):
            stop(p)
    if "sign" not in SKIP:
        part_sign()
    elapsed = time.monotonic() - t0
    busy_after = len(busy())

    tbl = table()
    print(tbl)
    info = machine()
    today = dt.date.today().isoformat()
    out = os.environ.get("BENCH_RESULTS", str(BENCH / "results" / f"{today}.md"))
    if out != "-":
        conditions = (f"{DURATION:g} s per throughput run after a {WARMUP:g} s warm-up; wrk -t1 "
                      f"-c{CONNECTIONS} --latency; fake STS latency {STS_LATENCY_MS} ms; "
                      f"storms of {STORM}; memory with {MEMORY_SUBJECTS} subjects")
        pinning = (f"server under test on core {SERVER_CPU}; wrk, the asyncio storm client and the fake STS "
                   f"on core {LOAD_CPU}" if PIN else "not pinned (fewer than 2 cores)")
        text = [f"# ossvend benchmarks — {today}", "",
                "Made by `bench/run` (see README \"Benchmarks\"). Loopback only.", "",
                *[f"- **{k}**: {v}" for k, v in info.items()],
                f"- **pinning**: {pinning}",
                f"- **conditions**: {conditions}",
                f"- **machine load**: {quiet}; load average at start {load_before[0]:.2f}; rustc processes at "
                f"the end: {busy_after}",
                f"- **measuring time**: {elapsed:.0f} s (builds excluded)", "",
                tbl, "",
                "- *server CPU*: the server process's CPU time during the measured run divided by its length "
                "(100% = the one core it is pinned to is saturated). *CPU µs/req*: that CPU time per request.",
                "- Ratios compare requests/s measured in this same run.",
                "- ossvend runs with its default logging (`info`, text: one audit line per issuance, to a file) "
                "unless the row says otherwise.",
                f"- The reference calls the fake STS ({STS_LATENCY_MS} ms latency, a threaded CPython server on the "
                "load core) once per request, so its figure is bounded by that fake; the real STS allows about "
                "100 AssumeRole calls/s per account, which would cap the reference design at ~100 req/s.",
                "- Storms: the asyncio client opens every connection first, then sends all requests at once "
                "(one request per connection); latencies are per request, from its send to its last byte. "
                f"The per-user storm mints one ticket per subject (grant prefix `users/{{subject}}/`); ossvend's "
                f"`sts.max_calls_per_second` is {STS_BUDGET} (the budget floor is (N − {STS_BUDGET} burst) / "
                f"{STS_BUDGET} s) and `server.request_timeout` is raised to 300 s so that no request times out "
                "while queued.",
                "- Memory: a fresh ossvend (`RUST_LOG=warn`, STS budget 100 calls/s, the most it accepts) filled "
                "through 64 keep-alive connections, one ticket per subject; RSS from /proc/PID/status.",
                "- Fleet mode (`[shared]`, a `redis-server` of its own on the load core): the cached route through "
                "one replica with `[shared]` compared with the same route without it in this run (hits are "
                "in-process and never touch Redis); then three replicas on the server core sharing that Redis, "
                "storms sent to the replicas in turn; the per-user storm under the fleet budget "
                f"(`sts.max_calls_per_second` = {STS_BUDGET} for the fleet, burst 1); \"in any second\" is the "
                "most calls the fake STS received in any one-second window.",
                "- Companion rows (issue 17): Uppy Companion 6.2.2 (`bench/companion/server.js`: its own "
                "`companion.app(options)`, defaults otherwise, obviously fake S3 keys, so it signs locally and "
                "calls nothing; its sign-part route takes a made-up uploadId) against `ossvend local` (its ready "
                "config's `large-files` grant; one upload session opened first, through the native API and "
                "through the Companion route, whose InitiateMultipartUpload the embedded OSS sink in the same "
                "process answers; the sink is idle while the signing routes are measured). Each signs one part "
                "(part 3) per request. Both servers on the server core, one after the other.",
                "- Signing: `cargo bench --bench sign` (benches/sign.rs), median of criterion's samples with its "
                "confidence interval, inputs like the routes' (1,100-character STS token).",
                ""]
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("\n".join(text))
        log(f"results written to {out}")
    shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for p in list(CHILDREN):
            try:
                stop(p)
            except Exception:
                pass
