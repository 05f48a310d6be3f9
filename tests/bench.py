#!/usr/bin/env python3
"""Benchmark campfire.py and print each figure beside a ceiling measured in the same run.

`make bench` runs `python3 tests/bench.py`. This is not a test: it prints figures
and exits 0 whatever they are (1 only when campfire.py cannot be started, 130 on
Ctrl-C). Everything runs on 127.0.0.1, every step is bounded in time, and every
process it starts is stopped at the end, even on Ctrl-C or an error.

What it measures (PRODUCT.md section 6)
  Throughput  Each workload (one request plus a check of every response) is driven
              by 16 keep-alive connections, one request in flight on each, for 5 s
              after a 1 s warm-up: requests/s, p50 and p99 latency in ms, failed
              checks, non-2xx responses and socket errors.
  Start       From exec of `python3 campfire.py serve` to the first 200 from /up,
              polled by connecting back to back (sub-millisecond pauses); the
              median of 5 runs on a fresh storage directory and 5 on one that is
              already initialised.
  Idle RSS    VmRSS of the server process (/proc/<pid>/status) after start and
              after the load, in MB (kB / 1024).

The ceiling
  A bare asyncio.Protocol server that answers every request with "hello" (the
  fastest a stdlib Python server can be on this machine). It is measured with the
  same load generator, connection count and duration as the workloads; its start
  time and RSS are the ceilings for campfire's.

How to read the output
  "% ceil" is the figure as a percentage of the ceiling's: for req/s higher is
  better (100% would be as fast as "hello"); for latency, start time and RSS lower
  is better (200% means twice the ceiling's). "target" compares with PRODUCT.md
  section 6. "gen" names the load generator: wrk (when on PATH) or "py", the
  stdlib generator below. The client shares the 2 cores with the server, so
  figures from the two generators are not comparable with each other; each row is
  compared with the ceiling measured by its own generator. With --repeat N every
  figure is the median of N runs and the counts are totals.

Flags
  --duration S, --connections N, --repeat N, --only NAME[,NAME], --no-wrk,
  --campfire PATH, --seed MESSAGES, --ceiling-server PORT (see --help).

Adding a workload: call workload() inside campfire_workloads(); see its docstring.

Sections
  Constants
  Workloads and checks
  Processes (every child tracked and stopped)
  HTTP helpers (one request, the /up poll, RSS)
  Ceiling server
  Campfire server (start, start time, seeding, sign-in)
  Load generator: wrk
  Load generator: stdlib (processes x selectors)
  Statistics
  The report
  main()
"""

import argparse
import atexit
import http.client
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

###############################################################################
# Constants ###################################################################
###############################################################################

HOST = "127.0.0.1"  # everything stays on the loopback interface
CAMPFIRE_PATH = Path(__file__).resolve().parent.parent / "campfire.py"

DEFAULT_DURATION_S = 5.0
WARMUP_S = 1.0
DEFAULT_CONNECTIONS = 16  # PRODUCT.md section 6: 16 keep-alive clients
CLIENT_PROCESSES = 2  # one per core; the client shares the cores with the server
WRK_THREADS = 2  # the same split for wrk
WRK_TIMEOUT_GRACE_S = 30.0  # beyond the run's duration before wrk is killed

START_RUNS = 5  # start time is the median of this many runs
START_TIMEOUT_S = 15.0  # a server not up by then counts as failed to start
START_POLL_PAUSE_S = 0.0002  # between connection attempts while polling /up
POLL_REQUEST_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 5.0  # SIGTERM, then SIGKILL after this
IDLE_SETTLE_S = 1.0  # pause before reading an "idle" RSS
SEED_TIMEOUT_S = 900.0  # seeding 100,000 messages must finish within this

CLIENT_START_DELAY_S = 0.3  # lets every client process fork before the clock starts
CLIENT_RESULT_GRACE_S = 15.0  # for a client process to report after the run ends
CONNECT_TIMEOUT_S = 2.0
RECONNECT_PAUSE_S = 0.01  # after a refused connection, so errors do not spin
SELECT_TIMEOUT_S = 0.05  # upper bound of one select(), so the run ends on time
RECV_BYTES = 256 * 1024  # one recv() takes a whole page of messages

UP_MARKER = b"background-color: green"  # /up's body when the server is ready

# PRODUCT.md section 6
TARGET_START_MS = 150.0
TARGET_IDLE_RSS_MB = 30.0
TARGET_READ_RPS = 20_000.0  # room page, messages page, sidebar, search
TARGET_READ_P99_MS = 5.0
TARGET_POST_RPS = 5_000.0

# Until `campfire.py seed` exists these are placeholders: they must match the
# administrator that the seed command creates (used by --seed only).
SEED_EMAIL_ADDRESS = "admin@example.com"
SEED_PASSWORD = "secret123456"

###############################################################################
# Workloads and checks ########################################################
###############################################################################


@dataclass(frozen=True)
class Expect:
    """A response check: `Expect(200, contains=(b'id="message_42"',))(status, body)`.

    It is also rendered as Lua (`lua()`), so wrk checks every response with it.
    A workload may use any `check(status, body) -> bool` instead; one without a
    `lua()` method is run by the stdlib generator even when wrk is available.
    """

    status: int = 200
    contains: tuple = ()  # byte strings that must all be in the body
    min_bytes: int = 0  # the body is at least this long

    def __call__(self, status: int, body: bytes) -> bool:
        if status != self.status or len(body) < self.min_bytes:
            return False
        return all(needle in body for needle in self.contains)

    def lua(self) -> str:
        """A Lua expression over `status` and `body` that is true when the check passes."""
        terms = [f"status == {self.status}"]
        if self.min_bytes:
            terms.append(f"#body >= {self.min_bytes}")
        terms += [f"string.find(body, {_lua_string(n)}, 1, true) ~= nil" for n in self.contains]
        return " and ".join(terms)


@dataclass(frozen=True)
class Workload:
    """One request, repeated on every connection, and the check of every response."""

    name: str
    method: str
    path: str
    headers: tuple = ()  # (name, value) pairs
    body: bytes = b""
    check: Callable[[int, bytes], bool] = Expect()
    target_rps: Optional[float] = None
    target_p99_ms: Optional[float] = None

    def headers_for(self, port: int) -> list:
        """The headers, with what a browser adds to an unsafe request (PRODUCT.md section 5)."""
        headers = list(self.headers)
        names = {name.lower() for name, _ in headers}
        if self.method not in ("GET", "HEAD"):
            if "origin" not in names:
                headers.append(("Origin", f"http://{HOST}:{port}"))
            if "sec-fetch-site" not in names:
                headers.append(("Sec-Fetch-Site", "same-origin"))
        return headers

    def request_bytes(self, port: int) -> bytes:
        """The request, encoded once; the stdlib generator sends these bytes as they are."""
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {HOST}:{port}"]
        lines += [f"{name}: {value}" for name, value in self.headers_for(port)]
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body

    @property
    def wrk_can_check(self) -> bool:
        return callable(getattr(self.check, "lua", None))


def workload(name, path, *, method="GET", cookie=None, headers=None, body=None,
             check=None, target_rps=None, target_p99_ms=None) -> Workload:
    """Build a workload. `cookie` is a "session_token=..." string (see sign_in());
    `body` is bytes, or a dict sent as a form; a POST, PUT, PATCH or DELETE also
    carries the Origin and Sec-Fetch-Site headers a browser would send."""
    all_headers = dict(headers or {})
    if cookie:
        all_headers["Cookie"] = cookie
    if isinstance(body, dict):
        body = urllib.parse.urlencode(body).encode()
        all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return Workload(name, method, path, tuple(all_headers.items()), body or b"",
                    check or Expect(), target_rps, target_p99_ms)


CEILING_WORKLOAD = workload("ceiling", "/", check=Expect(200, contains=(b"hello",)))


def campfire_workloads(cookie: Optional[str]) -> list:
    """The workloads run against campfire.py, in order.

    `cookie` is None unless --seed was given (then it signs in as the seeded
    administrator). Signed-in workloads belong here, e.g.:

        if cookie:
            loads.append(workload(
                "room", "/rooms/1", cookie=cookie,
                check=Expect(200, contains=(b'id="message_100000"',)),
                target_rps=TARGET_READ_RPS, target_p99_ms=TARGET_READ_P99_MS))
            loads.append(workload(
                "post", "/rooms/1/messages", method="POST", cookie=cookie,
                body={"message[body]": "hello"}, check=Expect(201),
                target_rps=TARGET_POST_RPS))
    """
    loads = [
        workload("up", "/up", check=Expect(200, contains=(UP_MARKER,))),
        workload("static", "/static/campfire.css", check=Expect(200, min_bytes=1)),
    ]
    return loads


def _lua_string(value) -> str:
    """A Lua string literal for bytes or str; decimal escapes for anything unusual."""
    data = value.encode() if isinstance(value, str) else value
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}"
                         for b in data) + '"'


###############################################################################
# Processes (every child tracked and stopped) #################################
###############################################################################


class Processes:
    """Every server the benchmark starts, so that all of them are stopped at the end.

    Each child leads its own session (its own process group), so Ctrl-C in the
    terminal reaches only the benchmark, which then stops the group of each.
    """

    def __init__(self):
        self._running = {}  # pid -> (Popen, log file or None)

    def start(self, argv, *, env=None, log_path=None) -> subprocess.Popen:
        log = open(log_path, "wb") if log_path else None
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self._running[proc.pid] = (proc, log)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not gone after STOP_TIMEOUT_S."""
        _, log = self._running.pop(proc.pid, (proc, None))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                proc.poll()  # already gone: reap it
                break
            try:
                proc.wait(STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                continue
        if log:
            log.close()

    def stop_all(self) -> None:
        for proc, _ in list(self._running.values()):
            self.stop(proc)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the finally blocks


###############################################################################
# HTTP helpers (one request, the /up poll, RSS) ###############################
###############################################################################


def fetch(port, method, path, *, headers=None, body=None, timeout=POLL_REQUEST_TIMEOUT_S):
    """One request on a new connection: (status, headers, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def wait_until_up(port, proc, check, timeout_s=START_TIMEOUT_S) -> Optional[float]:
    """Poll GET /up until a response passes `check`; the perf_counter() of that moment,
    or None when the server exits or is not up within timeout_s."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            return None
        try:
            status, _, body = fetch(port, "GET", "/up")
            if check(status, body):
                return time.perf_counter()
        except (OSError, http.client.HTTPException):
            pass  # not listening yet, or closed on us while starting
        time.sleep(START_POLL_PAUSE_S)
    return None


def rss_mb(pid) -> Optional[float]:
    """VmRSS of a process in MB, or None when it has gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


###############################################################################
# Ceiling server ##############################################################
###############################################################################

# Run as `python3 -c CEILING_SERVER_SOURCE HOST PORT`, so its start time and RSS
# are Python's and asyncio's and nothing else. It answers GETs only (no bodies).
CEILING_SERVER_SOURCE = r'''
import asyncio, sys

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"

class Hello(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        buffer = self.buffer + data
        requests = buffer.count(b"\r\n\r\n")
        if requests:
            self.transport.write(RESPONSE * requests)
            buffer = buffer[buffer.rfind(b"\r\n\r\n") + 4:]
        self.buffer = buffer

async def main(host, port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Hello, host, port, backlog=1024)
    await server.serve_forever()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
'''


def ceiling_argv(port) -> list:
    return [sys.executable, "-c", CEILING_SERVER_SOURCE, HOST, str(port)]


def serve_ceiling_in_foreground(port) -> int:
    """`bench.py --ceiling-server PORT`: the ceiling server, for trying other generators."""
    sys.argv = ["ceiling-server", HOST, str(port)]
    try:
        exec(compile(CEILING_SERVER_SOURCE, "<ceiling-server>", "exec"), {"__name__": "__main__"})
    except KeyboardInterrupt:
        pass
    return 0


###############################################################################
# Campfire server (start, start time, seeding, sign-in) #######################
###############################################################################


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log_path: Optional[Path]


def campfire_argv(campfire: Path, port) -> list:
    return [sys.executable, str(campfire), "serve", "--host", HOST, "--port", str(port)]


def campfire_env(storage: Path) -> dict:
    return dict(os.environ, CAMPFIRE_STORAGE_PATH=str(storage))


def start_server(processes, name, argv_for_port, check, *, env=None, log_path=None):
    """Start a server on a free port and wait for /up: (Server or None, ms from exec to up)."""
    port = free_port()
    argv = argv_for_port(port)
    started = time.perf_counter()
    proc = processes.start(argv, env=env, log_path=log_path)
    up_at = wait_until_up(port, proc, check)
    if up_at is None:
        processes.stop(proc)
        return None, None
    return Server(name, proc, port, log_path), (up_at - started) * 1000


def start_times_ms(processes, name, argv_for_port, check, env_for_run, log_path) -> list:
    """START_RUNS starts, each stopped once up; the list of times (ms), empty on failure."""
    times = []
    for run in range(START_RUNS):
        server, ms = start_server(processes, name, argv_for_port, check,
                                  env=env_for_run(run), log_path=log_path)
        if server is None:
            return []
        processes.stop(server.proc)
        times.append(ms)
    return times


def seed_storage(campfire: Path, storage: Path, messages: int, log_path: Path) -> bool:
    """`campfire.py seed --messages N` into a storage directory; True on success."""
    with open(log_path, "ab") as log:
        try:
            done = subprocess.run([sys.executable, str(campfire), "seed", "--messages", str(messages)],
                                  env=campfire_env(storage), stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, timeout=SEED_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


def sign_in(port, email_address, password) -> Optional[str]:
    """POST /session as a browser would; the "session_token=..." cookie, or None."""
    body = urllib.parse.urlencode({"email_address": email_address, "password": password})
    status, headers, _ = fetch(port, "POST", "/session", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "Origin": f"http://{HOST}:{port}", "Sec-Fetch-Site": "same-origin"})
    for name, value in headers:
        if name.lower() == "set-cookie" and value.startswith("session_token="):
            return value.split(";", 1)[0]
    print(f"sign-in as {email_address} failed: HTTP {status}", file=sys.stderr)
    return None


def log_tail(log_path, lines=15) -> str:
    try:
        return "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


###############################################################################
# Load generator: wrk #########################################################
###############################################################################


@dataclass
class RunResult:
    """One measured run of one workload (or the medians of several, see median_run)."""

    rps: float
    p50_ms: float
    p99_ms: float
    failed: int  # responses whose check returned False
    non2xx: int
    errors: int  # connect, read, write errors and timeouts


WRK_SCRIPT = """\
wrk.method = {method}
{body}{headers}
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  failed = 0
  non2xx = 0
end

local function check(status, body)
  return {check}
end

function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
  if not check(status, body or "") then failed = failed + 1 end
end

function done(summary, latency, requests)
  local failed_total, non2xx_total = 0, 0
  for _, thread in ipairs(threads) do
    failed_total = failed_total + thread:get("failed")
    non2xx_total = non2xx_total + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%.1f p99_us=%.1f failed=%d non2xx=%d errors=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    failed_total, non2xx_total, e.connect + e.read + e.write + e.timeout))
end
"""

WRK_RESULT = re.compile(r"BENCH requests=(\d+) duration_us=(\d+) p50_us=([\d.]+) p99_us=([\d.]+) "
                        r"failed=(\d+) non2xx=(\d+) errors=(\d+)")


def wrk_script(load: Workload, port) -> str:
    headers = "".join(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}\n"
                      for name, value in load.headers_for(port))
    body = f"wrk.body = {_lua_string(load.body)}\n" if load.body else ""  # else no Content-Length
    return WRK_SCRIPT.format(method=_lua_string(load.method), body=body, headers=headers,
                             check=load.check.lua())


def run_wrk(load: Workload, port, connections, duration_s, warmup_s, scratch: Path) -> RunResult:
    """wrk -t2 -c16 -d5s --latency with a Lua script that checks every response."""
    script = scratch / f"{load.name}.lua"
    script.write_text(wrk_script(load, port))
    url = f"http://{HOST}:{port}{load.path}"
    threads = str(min(WRK_THREADS, connections))

    def wrk(seconds):
        argv = ["wrk", "-t", threads, "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                "--latency", "-s", str(script), url]
        return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=seconds + WRK_TIMEOUT_GRACE_S)

    if warmup_s > 0:
        wrk(warmup_s)
    done = wrk(duration_s)
    found = WRK_RESULT.search(done.stdout)
    if not found:
        raise RuntimeError(f"could not read wrk's output:\n{done.stdout}{done.stderr}")
    requests, duration_us, p50_us, p99_us, failed, non2xx, errors = found.groups()
    return RunResult(int(requests) / (int(duration_us) / 1e6), float(p50_us) / 1000,
                     float(p99_us) / 1000, int(failed), int(non2xx), int(errors))


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    found = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return found.group(1) if found else "?"


###############################################################################
# Load generator: stdlib (processes x selectors) ##############################
###############################################################################

_CHUNKED = -1  # body_length markers
_UNTIL_CLOSE = -2


class _Connection:
    """One keep-alive client connection and the response being read on it."""

    __slots__ = ("sock", "inbox", "outbox", "sent_at", "head_end", "status", "body_length", "close")

    def __init__(self):
        self.sock = None
        self.inbox = bytearray()
        self.outbox = None  # the unsent rest of a request (memoryview), if any
        self.sent_at = 0.0
        self.head_end = -1  # index of the response head's \r\n\r\n, -1 until seen
        self.status = 0
        self.body_length = 0
        self.close = False


class _ConnectionLost(Exception):
    pass


def _parse_head(head: bytes, is_head_request: bool):
    """(status, body length or _CHUNKED/_UNTIL_CLOSE, close after?) from a response head."""
    head = head.lower()
    status = int(head[9:12])
    close = b"\r\nconnection: close" in head
    at = head.find(b"\r\ncontent-length:")
    if is_head_request or status in (204, 304) or 100 <= status < 200:
        return status, 0, close
    if at >= 0:
        end = head.find(b"\r\n", at + 17)
        return status, int(head[at + 17:end if end >= 0 else len(head)]), close
    if b"\r\ntransfer-encoding:" in head and b"chunked" in head:
        return status, _CHUNKED, close
    return status, _UNTIL_CLOSE, True


def _parse_chunked(buf: bytearray, start: int):
    """(body, end) of a complete chunked body starting at `start`, or None (RFC 9112 7.1)."""
    parts = []
    at = start
    while True:
        line_end = buf.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buf[at:line_end]).split(b";", 1)[0], 16)
        if size == 0:
            if buf[line_end + 2:line_end + 4] == b"\r\n":
                return b"".join(parts), line_end + 4
            trailers_end = buf.find(b"\r\n\r\n", line_end)
            return None if trailers_end < 0 else (b"".join(parts), trailers_end + 4)
        data_end = line_end + 2 + size
        if len(buf) < data_end + 2:
            return None
        parts.append(bytes(buf[line_end + 2:data_end]))
        at = data_end + 2


def _take_response(c: _Connection, data: bytes, is_head_request: bool):
    """Add received bytes; the body once the response is complete, else None.
    Empty `data` means the server closed the connection."""
    inbox = c.inbox
    if not data:
        if c.head_end >= 0 and c.body_length == _UNTIL_CLOSE:
            return bytes(inbox[c.head_end + 4:])
        raise _ConnectionLost
    inbox += data
    if c.head_end < 0:
        end = inbox.find(b"\r\n\r\n")
        if end < 0:
            return None
        c.head_end = end
        c.status, c.body_length, c.close = _parse_head(bytes(inbox[:end]), is_head_request)
    start = c.head_end + 4
    length = c.body_length
    if length >= 0:
        stop = start + length
        if len(inbox) < stop:
            return None
        body = bytes(inbox[start:stop])
    elif length == _CHUNKED:
        parsed = _parse_chunked(inbox, start)
        if parsed is None:
            return None
        body, stop = parsed
    else:
        return None  # _UNTIL_CLOSE: complete when the server closes
    del inbox[:stop]
    c.head_end = -1
    return body


def _connect(port) -> Optional[socket.socket]:
    try:
        sock = socket.create_connection((HOST, port), timeout=CONNECT_TIMEOUT_S)
    except OSError:
        return None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class _Client:
    """The connections of one client process, driven by one selector until t_stop."""

    def __init__(self, port, request: bytes, connections: int, t_stop: float):
        self.port = port
        self.request = request
        self.t_stop = t_stop
        self.selector = selectors.DefaultSelector()
        self.connections = [_Connection() for _ in range(connections)]
        self.errors = 0

    def open(self, c: _Connection) -> bool:
        """(Re)connect and send the first request; False if the run ended first."""
        if c.sock is not None:
            self.selector.unregister(c.sock)
            c.sock.close()
            c.sock = None
        c.inbox.clear()
        c.head_end = -1
        while time.perf_counter() < self.t_stop:
            c.sock = _connect(self.port)
            if c.sock is not None:
                self.selector.register(c.sock, selectors.EVENT_READ, c)
                return self.send(c)
            self.errors += 1
            time.sleep(RECONNECT_PAUSE_S)
        return False

    def send(self, c: _Connection) -> bool:
        c.sent_at = time.perf_counter()
        try:
            sent = c.sock.send(self.request)
        except OSError:
            self.errors += 1
            return self.open(c)
        if sent < len(self.request):  # rare: the rest goes when the socket is writable
            c.outbox = memoryview(self.request)[sent:]
            self.selector.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        return True

    def send_rest(self, c: _Connection) -> None:
        try:
            sent = c.sock.send(c.outbox)
        except BlockingIOError:
            return
        except OSError:
            self.errors += 1
            self.open(c)
            return
        c.outbox = c.outbox[sent:] if sent < len(c.outbox) else None
        if c.outbox is None:
            self.selector.modify(c.sock, selectors.EVENT_READ, c)

    def close_all(self) -> None:
        for c in self.connections:
            if c.sock is not None:
                c.sock.close()
        self.selector.close()


def _drive(port, request, check, is_head_request, connections, t_start, t_measure, t_stop) -> dict:
    """The client process's loop: every response is checked; those completed between
    t_measure and t_stop are counted and their latency recorded."""
    perf = time.perf_counter
    latencies = array("d")
    record = latencies.append
    failed = non2xx = 0
    client = _Client(port, request, connections, t_stop)
    select = client.selector.select
    while perf() < t_start:
        time.sleep(0.001)
    for c in client.connections:
        client.open(c)
    try:
        while True:
            now = perf()
            if now >= t_stop:
                break
            for key, mask in select(min(SELECT_TIMEOUT_S, t_stop - now)):
                c = key.data
                if mask & selectors.EVENT_WRITE and c.outbox is not None:
                    client.send_rest(c)
                if not mask & selectors.EVENT_READ or c.sock is not key.fileobj:
                    continue
                try:
                    body = _take_response(c, c.sock.recv(RECV_BYTES), is_head_request)
                except BlockingIOError:
                    continue
                except (OSError, _ConnectionLost, ValueError):
                    client.errors += 1
                    client.open(c)
                    continue
                if body is None:
                    continue
                now = perf()
                if now >= t_measure:
                    record(now - c.sent_at)
                    status = c.status
                    if status < 200 or status > 299:
                        non2xx += 1
                    if not check(status, body):
                        failed += 1
                if c.close:
                    client.open(c)
                else:
                    client.send(c)
    finally:
        client.close_all()
    return {"latencies": latencies.tobytes(), "failed": failed, "non2xx": non2xx,
            "errors": client.errors}


def _client_process(pipe, *args) -> None:
    try:
        pipe.send(_drive(*args))
    except KeyboardInterrupt:
        pass
    finally:
        pipe.close()


def run_stdlib(load: Workload, port, connections, duration_s, warmup_s) -> RunResult:
    """CLIENT_PROCESSES forked processes, each driving its share of the connections."""
    import multiprocessing  # here, so that the benchmark's own start stays light

    context = multiprocessing.get_context("fork")  # the check need not be picklable
    processes = min(CLIENT_PROCESSES, connections)
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    t_start = time.perf_counter() + CLIENT_START_DELAY_S  # CLOCK_MONOTONIC: shared by processes
    t_measure = t_start + warmup_s
    t_stop = t_measure + duration_s
    request = load.request_bytes(port)
    clients = []
    reports = []
    try:
        for share in shares:
            receiver, sender = context.Pipe(duplex=False)
            proc = context.Process(target=_client_process, daemon=True, args=(
                sender, port, request, load.check, load.method == "HEAD", share,
                t_start, t_measure, t_stop))
            proc.start()
            sender.close()
            clients.append((proc, receiver))
        for proc, receiver in clients:
            wait_s = max(0.0, t_stop - time.perf_counter()) + CLIENT_RESULT_GRACE_S
            if not receiver.poll(wait_s):
                raise RuntimeError("a client process did not report in time")
            reports.append(receiver.recv())
    finally:  # on an error or Ctrl-C the clients are killed at once
        finished = len(reports) == len(clients)
        for proc, receiver in clients:
            receiver.close()
            proc.join(1.0 if finished else 0)
            if proc.is_alive():
                proc.kill()
                proc.join()
    latencies = array("d")
    for report in reports:
        latencies.frombytes(report["latencies"])
    ordered = sorted(latencies)
    return RunResult(len(ordered) / duration_s, percentile(ordered, 50) * 1000,
                     percentile(ordered, 99) * 1000, sum(r["failed"] for r in reports),
                     sum(r["non2xx"] for r in reports), sum(r["errors"] for r in reports))


###############################################################################
# Statistics ##################################################################
###############################################################################


def percentile(ordered, p) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def median_run(runs: list) -> RunResult:
    """The median of each figure over repeated runs; the counts are totals."""
    return RunResult(rps=statistics.median(r.rps for r in runs),
                     p50_ms=statistics.median(r.p50_ms for r in runs),
                     p99_ms=statistics.median(r.p99_ms for r in runs),
                     failed=sum(r.failed for r in runs), non2xx=sum(r.non2xx for r in runs),
                     errors=sum(r.errors for r in runs))


###############################################################################
# The report ##################################################################
###############################################################################


@dataclass
class Report:
    header: list = field(default_factory=list)
    throughput: list = field(default_factory=list)  # (Workload, generator, RunResult)
    ceilings: dict = field(default_factory=dict)  # generator -> RunResult
    start_ms: dict = field(default_factory=dict)  # "ceiling"/"fresh"/"initialised" -> [ms]
    rss_mb: dict = field(default_factory=dict)  # ("after start"|"after load", server) -> MB
    notes: list = field(default_factory=list)


def _pct(value, ceiling) -> str:
    return f"{100 * value / ceiling:.0f}%" if value is not None and ceiling else "-"


def _num(value, fmt) -> str:
    return "n/a" if value is None else format(value, fmt)


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def _table(headers, rows) -> str:
    """Left-aligned first column, the rest right-aligned except the last (free text)."""
    widths = [max(len(str(row[i])) for row in [headers] + rows) for i in range(len(headers))]

    def line(cells):
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:-1], widths[1:-1])]
        out.append(str(cells[-1]))
        return "  ".join(out).rstrip()
    return "\n".join([line(headers)] + [line(row) for row in rows])


def _throughput_target(load: Workload, run: RunResult) -> str:
    parts, ok = [], True
    if load.target_rps:
        parts.append(f">={load.target_rps:,.0f}/s")
        ok = ok and run.rps >= load.target_rps
    if load.target_p99_ms:
        parts.append(f"p99<={load.target_p99_ms:g}ms")
        ok = ok and run.p99_ms <= load.target_p99_ms
    ok = ok and run.failed == 0 and run.non2xx == 0 and run.errors == 0
    return f"{' '.join(parts)} {_verdict(ok)}" if parts else "-"


def format_report(report: Report) -> str:
    out = list(report.header)
    if report.throughput:
        rows = []
        for load, gen, run in report.throughput:
            ceiling = report.ceilings.get(gen)
            is_ceiling = load is CEILING_WORKLOAD
            rows.append([
                f"{load.name} (hello)" if is_ceiling else load.name,
                f"{run.rps:,.0f}", _pct(run.rps, ceiling and ceiling.rps),
                f"{run.p50_ms:.3f}", _pct(run.p50_ms, ceiling and ceiling.p50_ms),
                f"{run.p99_ms:.3f}", _pct(run.p99_ms, ceiling and ceiling.p99_ms),
                run.failed, run.non2xx, run.errors, gen,
                "-" if is_ceiling else _throughput_target(load, run),
                f"{load.method} {load.path}"])
        out += ["", "Throughput", _table(
            ["workload", "req/s", "% ceil", "p50 ms", "% ceil", "p99 ms", "% ceil",
             "failed", "non-2xx", "errors", "gen", "target", "request"], rows)]
    if report.start_ms:
        ceiling = report.start_ms.get("ceiling")
        ceiling_ms = statistics.median(ceiling) if ceiling else None
        rows = []
        for key, label in (("ceiling", "ceiling server"), ("fresh", "fresh storage"),
                           ("initialised", "initialised storage")):
            if key not in report.start_ms:
                continue
            times = report.start_ms[key]
            ms = statistics.median(times) if times else None
            target = "-" if key == "ceiling" or ms is None else \
                f"<={TARGET_START_MS:g} {_verdict(ms <= TARGET_START_MS)}"
            rows.append([label, _num(ms, ".1f"), _num(ceiling_ms, ".1f"), _pct(ms, ceiling_ms),
                         target, " ".join(f"{t:.1f}" for t in times) or "did not start"])
        out += ["", f"Start: exec -> first 200 from /up (median of {START_RUNS})", _table(
            ["", "ms", "ceiling ms", "% ceil", "target", "runs (ms)"], rows)]
    if report.rss_mb:
        rows = []
        for when in ("after start", "after load"):
            mb = report.rss_mb.get((when, "campfire"))
            ceiling = report.rss_mb.get((when, "ceiling"))
            if mb is None and ceiling is None:
                continue
            target = "-" if mb is None else f"<={TARGET_IDLE_RSS_MB:g} {_verdict(mb <= TARGET_IDLE_RSS_MB)}"
            rows.append([when, _num(mb, ".1f"), _num(ceiling, ".1f"), _pct(mb, ceiling), target, ""])
        out += ["", "Idle RSS (VmRSS of the server process)", _table(
            ["", "MB", "ceiling MB", "% ceil", "target", ""], rows)]
    if report.notes:
        out += [""] + [f"note: {n}" for n in report.notes]
    return "\n".join(out)


###############################################################################
# main() ######################################################################
###############################################################################


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Benchmark campfire.py beside a bare asyncio 'hello' ceiling (PRODUCT.md section 6).")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, metavar="S",
                        help=f"seconds measured per workload, after a {WARMUP_S:g} s warm-up "
                             f"(default {DEFAULT_DURATION_S:g}; wrk rounds to whole seconds)")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS, metavar="N",
                        help=f"keep-alive connections, one request in flight on each "
                             f"(default {DEFAULT_CONNECTIONS})")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="measure every workload N times and print medians (default 1)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only these workloads (comma-separated or repeated); "
                             "'start' selects the start-time runs; the ceiling always runs")
    parser.add_argument("--no-wrk", action="store_true",
                        help="use the stdlib load generator even when wrk is on PATH")
    parser.add_argument("--campfire", type=Path, default=CAMPFIRE_PATH, metavar="PATH",
                        help=f"the server to measure (default {CAMPFIRE_PATH})")
    parser.add_argument("--seed", type=int, default=0, metavar="MESSAGES",
                        help="run `campfire.py seed --messages MESSAGES` first and sign in, "
                             "enabling the signed-in workloads")
    parser.add_argument("--ceiling-server", type=int, metavar="PORT",
                        help="only serve the ceiling 'hello' server on PORT, in the foreground")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.connections < 1 or args.repeat < 1:
        parser.error("--duration, --connections and --repeat must be positive")
    args.only = {name for value in args.only or () for name in value.split(",") if name}
    known = [w.name for w in campfire_workloads("session_token=any")] + ["ceiling", "start"]
    if args.only - set(known):
        parser.error(f"--only: no workload named {', '.join(sorted(args.only - set(known)))} "
                     f"(known: {', '.join(known)})")
    return args


def measure_start_times(args, processes, report, scratch: Path, wanted) -> None:
    """Start-time runs, first (nothing else is running): ceiling, fresh, initialised."""
    if not wanted("start"):
        return
    progress(f"start time: ceiling server x{START_RUNS}")
    report.start_ms["ceiling"] = start_times_ms(
        processes, "ceiling", ceiling_argv, Expect(200), lambda run: None, None)
    if not args.campfire.exists():
        return
    log = scratch / "campfire-start.log"
    fresh = [scratch / f"fresh-{run}" for run in range(START_RUNS)]
    for path in fresh:
        path.mkdir()
    progress(f"start time: campfire, fresh storage x{START_RUNS}")
    report.start_ms["fresh"] = start_times_ms(
        processes, "campfire", lambda port: campfire_argv(args.campfire, port),
        Expect(200, contains=(UP_MARKER,)), lambda run: campfire_env(fresh[run]), log)
    if report.start_ms["fresh"]:
        progress(f"start time: campfire, initialised storage x{START_RUNS}")
        report.start_ms["initialised"] = start_times_ms(
            processes, "campfire", lambda port: campfire_argv(args.campfire, port),
            Expect(200, contains=(UP_MARKER,)), lambda run: campfire_env(fresh[0]), log)
    else:
        report.notes.append(f"campfire.py did not serve /up; its log ends:\n{log_tail(log)}")


def start_load_servers(args, processes, report, scratch: Path, with_campfire: bool):
    """The ceiling and campfire (on an initialised, optionally seeded storage) for the
    load: (ceiling, campfire or None, session cookie or None)."""
    ceiling, _ = start_server(processes, "ceiling", ceiling_argv, Expect(200))
    if ceiling is None:
        raise RuntimeError("the ceiling server did not start")
    if not with_campfire:
        return ceiling, None, None
    storage = scratch / "load-storage"
    storage.mkdir()
    log = scratch / "campfire-load.log"
    if args.seed:
        progress(f"seeding {args.seed:,} messages")
        if not seed_storage(args.campfire, storage, args.seed, log):
            report.notes.append(f"seeding failed; its log ends:\n{log_tail(log)}")
    campfire, _ = start_server(
        processes, "campfire", lambda port: campfire_argv(args.campfire, port),
        Expect(200, contains=(UP_MARKER,)), env=campfire_env(storage), log_path=log)
    if campfire is None:
        report.notes.append(f"campfire.py did not serve /up; its log ends:\n{log_tail(log)}")
        return ceiling, None, None
    cookie = sign_in(campfire.port, SEED_EMAIL_ADDRESS, SEED_PASSWORD) if args.seed else None
    return ceiling, campfire, cookie


def record_rss(report, when, servers) -> None:
    """VmRSS of each running server, after a pause so that it is idle."""
    time.sleep(IDLE_SETTLE_S)
    for server in servers:
        if server is not None:
            report.rss_mb[(when, server.name)] = rss_mb(server.proc.pid)


def measure_throughput(args, report, use_wrk, loads, ceiling, campfire, scratch: Path) -> None:
    """Every workload (ceiling first) --repeat times; the medians go into the report.

    The ceiling is measured by every generator that a workload uses, so each row is
    compared with a ceiling measured the same way."""
    def generator_for(load):
        return "wrk" if use_wrk and load.wrk_can_check else "py"

    generators = sorted({generator_for(w) for w in loads} or {generator_for(CEILING_WORKLOAD)})
    plan = [(CEILING_WORKLOAD, ceiling, gen, []) for gen in generators]
    plan += [(load, campfire, generator_for(load), []) for load in loads]
    for repeat in range(args.repeat):
        for load, server, gen, runs in plan:
            progress(f"run {repeat + 1}/{args.repeat}: {load.name} {load.method} {load.path} ({gen})")
            if gen == "wrk":
                run = run_wrk(load, server.port, args.connections, args.duration, WARMUP_S, scratch)
            else:
                run = run_stdlib(load, server.port, args.connections, args.duration, WARMUP_S)
            progress(f"  {run.rps:,.0f} req/s  p50 {run.p50_ms:.3f} ms  p99 {run.p99_ms:.3f} ms  "
                     f"failed {run.failed}  non-2xx {run.non2xx}  errors {run.errors}")
            runs.append(run)
    for load, _, gen, runs in plan:
        result = median_run(runs)
        if load is CEILING_WORKLOAD:
            report.ceilings[gen] = result
        report.throughput.append((load, gen, result))


def run_benchmark(args, processes: Processes) -> int:
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    report = Report(header=[
        f"Campfire benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"{args.connections} keep-alive connections, {args.duration:g} s per run after a "
        f"{WARMUP_S:g} s warm-up, median of {args.repeat} run(s)",
        "generator: " + (f"wrk {wrk_version()} (-t{min(WRK_THREADS, args.connections)})" if use_wrk
                         else f"stdlib, {min(CLIENT_PROCESSES, args.connections)} processes"),
        f"server: {args.campfire}" + ("" if args.campfire.exists() else " (missing)"),
        "load average before the run (other work on the machine skews figures): "
        + " ".join(f"{load:.2f}" for load in os.getloadavg()),
    ])

    def wanted(name):
        return not args.only or name in args.only

    campfire_ok = args.campfire.exists()
    if not campfire_ok:
        report.notes.append(f"{args.campfire} does not exist: only the ceiling was measured")
    with tempfile.TemporaryDirectory(prefix="campfire-bench-") as scratch_name:
        scratch = Path(scratch_name)
        measure_start_times(args, processes, report, scratch, wanted)
        if report.start_ms.get("fresh") == []:
            campfire_ok = False
        if not args.only or args.only - {"start"}:
            ceiling, campfire, cookie = start_load_servers(args, processes, report, scratch,
                                                           with_campfire=campfire_ok)
            campfire_ok = campfire is not None
            loads = [w for w in campfire_workloads(cookie) if wanted(w.name)] if campfire else []
            skipped = args.only - {w.name for w in loads} - {"start", "ceiling"}
            if skipped and campfire:
                report.notes.append(f"not run (signed-in workloads need --seed): "
                                    f"{', '.join(sorted(skipped))}")
            record_rss(report, "after start", (ceiling, campfire))
            measure_throughput(args, report, use_wrk, loads, ceiling, campfire, scratch)
            record_rss(report, "after load", (ceiling, campfire))
        processes.stop_all()
    print(format_report(report), flush=True)
    return 0 if campfire_ok else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ceiling_server is not None:
        return serve_ceiling_in_foreground(args.ceiling_server)
    processes = Processes()
    atexit.register(processes.stop_all)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return run_benchmark(args, processes)
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    finally:
        processes.stop_all()


if __name__ == "__main__":
    sys.exit(main())
