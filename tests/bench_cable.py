#!/usr/bin/env python3
"""The real-time half of `make bench`: campfire.py's /cable under 10,000 WebSockets.

`make bench` runs it after tests/bench.py: `python3 tests/bench_cable.py`. Standard
library only. It prints each figure beside its target (the README's performance targets) with
"ok" or "MISS", and exits 0 whatever the figures are, except: 1 when campfire.py
cannot be seeded, started or signed in to, 2 when a check failed (a connection
that could not be opened or subscribed, a subscriber the server dropped, a post
not answered 201, a client process that died; the report then ends with a
"FAILED checks" line), 130 on Ctrl-C. Everything runs on 127.0.0.0/8, every step
is bounded in time, and every process it starts is killed at the end, even on
Ctrl-C or an error (and by the kernel if this script itself is killed).

Setup
  `campfire.py seed --messages 1000 --users 20 --rooms 3` into a temporary storage
  directory, then `campfire.py serve --host 127.0.0.1` with LOG_LEVEL=WARNING in a
  process of its own. Room 1 is open and everyone is in it. person1 signs in
  to post; person2..person5 sign in to listen, and the subscribers take their
  four session cookies in turn (four people with many tabs each).
  The subscribers live in --workers client processes (default 2; asyncio
  BufferedProtocols reading into one shared buffer, precomputed masked frames). Each client connects from one of
  127.0.0.2, 127.0.0.3, ... (one source address per 1,000 connections; the
  kernel picks the port at connect time), so 10,000+ connections never run
  out of ephemeral ports, and opens /cable as a browser does: Origin, the
  session cookie, `Sec-WebSocket-Protocol: actioncable-v1-json,
  actioncable-unsupported` and `Sec-WebSocket-Extensions: permessage-deflate;
  client_max_window_bits`. It waits for the welcome, subscribes to
  RoomMessagesChannel and PresenceChannel for room 1, and is counted once both
  are confirmed. It answers WebSocket pings with pongs (the server pings a
  peer silent for 15 s and drops one silent for 45 s) and otherwise only looks
  for this run's marker in what it receives (deflated frames are inflated;
  identical frame bytes, which is what a fan-out sends, are inflated once).

What it measures
  1. Memory   VmRSS of the server (/proc/<pid>/status, split into RssAnon
              "heap" and RssFile "files") 1 s after start, after the 5
              sign-ins, then with 1,000, 5,000 and 10,000 idle subscribed
              connections (all confirmed, then 3 s of quiet). Target: 10,000
              under 120 MB (and idle at most 30 MB). Also the KB each
              connection adds over the signed-in figure.
  2. Fan-out  With 1,000 and with 10,000 subscribers: one POST
              /rooms/1/messages whose client_message_id is a unique marker;
              the time from just before the request is written to the moment the
              LAST subscriber has read the append broadcast carrying the
              marker (receive times are time.monotonic(), CLOCK_MONOTONIC, the
              same clock in every process). 5 posts, 0.5 s apart: median and
              max. Target for 10,000: median within 100 ms, max within 150
              ms. Also the first subscriber's time, the poster's 201 (written
              after the fan-out) and the CPU one post costs the server and the
              client processes (/proc/<pid>/stat), since they share the
              machine's cores.
              Then, at 10,000: STEADY_RATE (10) posts a second for
              STEADY_SECONDS (5) from one poster: the deliveries a second
              (frames read by subscribers, from the first post to the last
              frame), each post's time from its request to its last subscriber
              (p50, p99), and the server's CPU meanwhile; every subscriber must
              get every post.
  3. Delivery 1,000 subscribers and 4 posters (keep-alive connections of
              person1) posting back to back for --duration seconds (15), each
              post with its own marker; a post counts when answered 201 with
              its marker. Then up to 10 s for the last frames to arrive, and
              for every client the number of distinct acknowledged markers it
              received. Target: every client received every acknowledged post.
  4. The open-file limit  A second server is started with its soft
              RLIMIT_NOFILE lowered to --nofile-limit (2,000): campfire.py keeps
              FILE_DESCRIPTOR_RESERVE (64) descriptors back, so it serves
              limit - 64 connections and answers any connection past that with
              503 and closes it. One keep-alive poster connects first, then the
              clients try limit + 100 WebSockets, 50 at a time per client
              process (more than any server with that limit can hold).
              Reported: how many were served, how many were refused and how
              (a 503 read, a reset, a timeout) and the slowest refusal, the
              server's open descriptors, that a post then reaches every
              connected client, that after 20 clients leave new connections
              are served again, and whether the server kept running and what
              it logged (each record counted). On this machine the real limit is
              20,000 per process, so the same rule caps the server at 19,936.

Flags: --max-connections N (10,000), --quick (1,000 connections only, a 5 s
delivery run), --duration S, --workers N, --nofile-limit N, --keep (keep the
temporary directory with the server's log), --parts 1234 (a subset),
--campfire PATH (another copy of campfire.py, e.g. one with a fix to try).
"""

import argparse
import asyncio
import base64
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
CAMPFIRE = os.path.join(os.path.dirname(HERE), "campfire.py")
HOST = "127.0.0.1"
ROOM_ID = 1
PASSWORD = "password"
POSTER_EMAIL = "person1@example.com"
LISTENER_EMAILS = ["person%d@example.com" % n for n in (2, 3, 4, 5)]

TARGET_RSS_MB = 120.0          # 10,000 connections under 120 MB
TARGET_IDLE_RSS_MB = 30.0      # idle RSS ≤ 30 MB
TARGET_FANOUT_MS = 150.0       # one post reaches all 10,000 within 150 ms at its p99 (the max of part 2's
TARGET_FANOUT_MEDIAN_MS = 100.0  # five), and within 100 ms at the median
FILE_DESCRIPTOR_RESERVE = 64   # campfire.py's constant of that name (read from the file when it can be)

CONNECTIONS_PER_SOURCE = 1000  # one loopback source address per this many connections
OPEN_CONCURRENCY = 100         # handshakes in flight per client process
OPEN_TIMEOUT_S = 30.0          # connect + 101 + welcome + both confirmations
QUIET_S = 3.0                  # before each RSS reading
FANOUT_REPEATS = 5
FANOUT_GAP_S = 0.5
FANOUT_TIMEOUT_S = 10.0
STEADY_RATE = 10               # posts a second to the most connections, after their fan-out
STEADY_SECONDS = 5.0
POSTERS = 4
DRAIN_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 15.0
START_TIMEOUT_S = 20.0
SEED_TIMEOUT_S = 180.0
WATCHDOG_S = 900.0             # the whole run, whatever happens
LIMIT_EXTRA = 100              # connections tried past the cap in part 4

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
DEFLATE_TAIL = b"\x00\x00\xff\xff"
MASK = b"\x37\xfa\x21\x3d"


class BenchError(Exception):
    """Something that stops the run (the server would not start, a client process died)."""


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def die_with_parent():
    """preexec_fn: the kernel kills the child if this script dies (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def masked_frame(opcode, payload):
    """A client frame (RFC 6455 §5.3: masked), precomputed once."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = (MASK * (length // 4 + 1))[:length]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big") if length else b""
    return header + MASK + body


def marker(run, number):
    return "cfb-%s-%d" % (run, number)


# ---------------------------------------------------------------------------------------------
# The client process: holds thousands of /cable connections, answers the coordinator on stdin.
# ---------------------------------------------------------------------------------------------

CONNECTING, WELCOMING, CONFIRMING, READY, GONE = range(5)


class Link(asyncio.BufferedProtocol):
    """One /cable connection of a client process.

    A BufferedProtocol: every connection reads into its process's one 64 KiB buffer.
    (asyncio.Protocol would read each time into a fresh 256 KiB bytes object, which
    glibc serves with mmap/mremap/munmap: ~20-60 µs a read on this machine, more than
    all the rest of reading a frame.)"""

    __slots__ = ("w", "cookie", "transport", "buf", "state", "confirms", "deflate", "seen", "done", "head",
                 "dropped")

    def __init__(self, w, cookie):
        self.w, self.cookie = w, cookie
        self.transport = None
        self.buf = b""
        self.state = CONNECTING
        self.confirms = 0
        self.deflate = False
        self.seen = bytearray()     # seen[n] == 1: marker n arrived on this connection
        self.done = w.loop.create_future()
        self.head = b""
        self.dropped = None         # why the server closed it after it was ready

    def finish(self, outcome):
        if not self.done.done():
            self.done.set_result(outcome)

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.w.requests[self.cookie])

    def connection_lost(self, exc):
        previous, self.state = self.state, GONE
        if previous == READY:
            self.w.lost(self, "closed by the server" if exc is None else type(exc).__name__)
        elif previous == CONNECTING:
            if self.head.startswith(b"HTTP/1.1 "):
                self.finish("http %s" % self.head[9:12].decode("latin-1"))
            elif isinstance(exc, ConnectionResetError):
                self.finish("reset before any answer")
            else:
                self.finish("closed before any answer" if exc is None else "%s before any answer"
                            % type(exc).__name__)
        else:
            self.finish("closed during the subscription" if exc is None else type(exc).__name__)

    def close(self):
        if self.state != GONE:
            self.state = GONE
            self.finish("closed by the client")
            if self.transport is not None:
                self.transport.close()

    def get_buffer(self, sizehint):
        return self.w.read_buffer

    def buffer_updated(self, nbytes):
        self.data_received(self.w.read_view[:nbytes].tobytes())

    def data_received(self, data):
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.state == CONNECTING:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.head = data[:64]
                self.buf = data if len(data) < 65536 else b""
                return
            head, data = data[:end], data[end + 4:]
            self.head = head[:64]
            if head[9:12] != b"101":
                self.finish("http %s" % head[9:12].decode("latin-1"))
                self.state = GONE
                self.transport.close()
                return
            self.deflate = b"permessage-deflate" in head
            if b"actioncable-v1-json" not in head:
                self.finish("no actioncable-v1-json subprotocol")
                self.state = GONE
                self.transport.close()
                return
            self.state = WELCOMING
        pos, end = 0, len(data)
        w = self.w
        while end - pos >= 2:
            first = data[pos]
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                start = pos + 10
            stop = start + length
            if stop > end:
                break
            opcode = first & 0x0F
            payload = data[start:stop]
            pos = stop
            if opcode == 1:
                w.text(self, payload, first & 0x40)
                if self.state == GONE:
                    return
            elif opcode == 9:
                self.transport.write(w.pong if not payload else masked_frame(0xA, payload))
            elif opcode == 8:
                if self.state == READY:
                    w.lost(self, "close frame %s" % int.from_bytes(payload[:2], "big") if len(payload) >= 2
                           else "close frame")
                else:
                    self.finish("close frame before ready")
                self.state = GONE
                self.transport.close()
                return
        if pos < end:
            self.buf = data[pos:]


class ClientProcess:
    """The coordinator's commands, one JSON line each way."""

    def __init__(self, loop):
        self.loop = loop
        self.read_buffer = bytearray(65536)
        self.read_view = memoryview(self.read_buffer)
        self.requests = {}
        self.links = []              # ready and still open, in the order they became ready
        self.dropped = []            # ready once, then closed by the server
        self.counts = []             # counts[n]: connections that have received marker n
        self.first = []
        self.last = []
        self.waiters = {}            # marker → (target, future)
        self.cache = ({}, {})        # frame payload → marker (-1: none), plain and deflated
        self.pattern = None
        self.pong = masked_frame(0xA, b"")
        self.subscribe_frames = b""
        self.sources = ["127.0.0.1"]
        self.port = 0

    # The hot path ---------------------------------------------------------------------------
    def text(self, link, payload, deflated):
        state = link.state
        if state == READY:
            cache = self.cache[1 if deflated else 0]
            number = cache.get(payload)
            if number is None:
                text = zlib.decompressobj(-15).decompress(payload + DEFLATE_TAIL) if deflated else payload
                found = self.pattern.search(text)
                number = int(found.group(1)) if found else -1
                if len(cache) > 512:
                    cache.clear()
                cache[payload] = number
            if number >= 0:
                self.mark(link, number)
            return
        text = zlib.decompressobj(-15).decompress(payload + DEFLATE_TAIL) if deflated else payload
        if state == WELCOMING and b'"welcome"' in text:
            link.transport.write(self.subscribe_frames)
            link.state = CONFIRMING
        elif state == CONFIRMING and b'"confirm_subscription"' in text:
            link.confirms += 1
            if link.confirms == 2:
                link.state = READY
                link.finish("ready")
        elif b'"reject_subscription"' in text or b'"disconnect"' in text:
            link.finish("refused: %s" % text[:80].decode("utf-8", "replace"))
            link.state = GONE
            link.transport.close()

    def mark(self, link, number):
        seen = link.seen
        if number >= len(seen):
            seen.extend(bytes(number + 64 - len(seen)))
        if seen[number]:
            return
        seen[number] = 1
        counts = self.counts
        if number >= len(counts):
            grow = number + 256 - len(counts)
            counts.extend([0] * grow)
            self.first.extend([0.0] * grow)
            self.last.extend([0.0] * grow)
        now = time.monotonic()
        count = counts[number] = counts[number] + 1
        self.last[number] = now
        if count == 1:
            self.first[number] = now
        waiter = self.waiters.get(number)
        if waiter is not None and count >= waiter[0] and not waiter[1].done():
            waiter[1].set_result(None)

    def lost(self, link, why):
        link.dropped = why
        self.dropped.append(link)

    # Commands -------------------------------------------------------------------------------
    async def handle(self, message):
        command = message["cmd"]
        return await getattr(self, "cmd_" + command)(message)

    async def cmd_init(self, message):
        self.port = message["port"]
        self.sources = message["sources"]
        self.pattern = re.compile(rb"cfb-" + message["run"].encode() + rb"-(\d+)")
        key = base64.b64encode(os.urandom(16)).decode()
        for cookie in message["cookies"]:
            lines = ["GET /cable HTTP/1.1", "Host: %s:%d" % (HOST, self.port), "Upgrade: websocket",
                     "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13",
                     "Sec-WebSocket-Protocol: actioncable-v1-json, actioncable-unsupported",
                     "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
                     "Origin: http://%s:%d" % (HOST, self.port), "User-Agent: bench_cable",
                     "Cookie: session_token=" + cookie]
            self.requests[cookie] = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        frames = []
        for channel in ("RoomMessagesChannel", "PresenceChannel"):
            identifier = json.dumps({"channel": channel, "room_id": ROOM_ID})
            frames.append(masked_frame(0x1, json.dumps({"command": "subscribe", "identifier": identifier}).encode()))
        self.subscribe_frames = b"".join(frames)
        return {"nofile": list(raise_nofile())}

    async def open_one(self, index, cookie, gate):
        async with gate:
            started = time.monotonic()
            link, outcome = await self._open_one(index, cookie)
            return link, outcome, time.monotonic() - started

    async def _open_one(self, index, cookie):
        """Connect from a source address, then the handshake and both subscriptions."""
        source = self.sources[index % len(self.sources)]
        link = Link(self, cookie)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            except OSError:
                pass
            sock.bind((source, 0))
            await asyncio.wait_for(self.loop.sock_connect(sock, (HOST, self.port)), OPEN_TIMEOUT_S)
            await self.loop.create_connection(lambda: link, sock=sock)
        except (OSError, asyncio.TimeoutError) as error:
            sock.close()
            if isinstance(error, asyncio.TimeoutError):
                return link, "connect timed out"
            return link, "connect: %s" % (os.strerror(error.errno) if error.errno else type(error).__name__)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(link.done), OPEN_TIMEOUT_S)
        except asyncio.TimeoutError:
            outcome = {CONNECTING: "no answer to the handshake", WELCOMING: "no welcome",
                       CONFIRMING: "no confirmation"}.get(link.state, "timed out")
            link.close()
        return link, outcome

    async def cmd_open(self, message):
        """Open `count` more connections; report how each ended up."""
        started = time.monotonic()
        gate = asyncio.Semaphore(message.get("concurrency", OPEN_CONCURRENCY))
        cookies = message["cookies"]
        base = message["first_index"]
        results = await asyncio.gather(*[self.open_one(base + i, cookies[(base + i) % len(cookies)], gate)
                                         for i in range(message["count"])])
        outcomes, slowest = {}, {}
        deflate = 0
        for link, outcome, seconds in results:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            slowest[outcome] = max(slowest.get(outcome, 0.0), seconds)
            if outcome == "ready" and link.state == READY:
                self.links.append(link)
                deflate += link.deflate
            elif link.state != GONE:
                link.close()
        return {"outcomes": outcomes, "slowest": slowest, "deflate": deflate, "live": self.live(),
                "seconds": time.monotonic() - started}

    def live(self):
        return sum(1 for link in self.links if link.state == READY)

    async def cmd_status(self, message):
        return {"live": self.live(), "dropped": len(self.dropped),
                "dropped_why": self._why(self.dropped), "rss_kb": rss_kb(os.getpid())}

    @staticmethod
    def _why(links):
        reasons = {}
        for link in links:
            reasons[link.dropped] = reasons.get(link.dropped, 0) + 1
        return reasons

    async def cmd_keep(self, message):
        """Close every connection past the first `count` still open."""
        keep = [link for link in self.links if link.state == READY]
        for link in keep[message["count"]:]:
            link.close()
        self.links = keep[:message["count"]]
        return {"live": self.live()}

    async def cmd_reset(self, message):
        for link in self.links:
            link.close()
        self.links, self.dropped = [], []
        self.counts, self.first, self.last = [], [], []
        self.waiters.clear()
        self.cache = ({}, {})
        if "port" in message:
            self.port = message["port"]
            await self.cmd_init(message)
        return {"live": 0}

    async def cmd_wait(self, message):
        """Wait until every open connection has marker n (or the timeout); report arrival times."""
        number = message["marker"]
        target = self.live()
        have = self.counts[number] if number < len(self.counts) else 0
        if have < target:
            future = self.loop.create_future()
            self.waiters[number] = (target, future)
            try:
                await asyncio.wait_for(future, message["timeout"])
            except asyncio.TimeoutError:
                pass
            finally:
                self.waiters.pop(number, None)
        have = self.counts[number] if number < len(self.counts) else 0
        return {"target": target, "count": have,
                "first": self.first[number] if have else None, "last": self.last[number] if have else None}

    async def cmd_missing(self, message):
        """How many of these markers some open connection has not received yet."""
        target = self.live()
        counts = self.counts
        missing = sum(1 for n in message["markers"] if (counts[n] if n < len(counts) else 0) < target)
        return {"missing": missing, "live": target}

    async def cmd_delivered(self, message):
        """For every connection (the dropped ones too): how many of these markers it received."""
        markers = message["markers"]
        size = (max(markers) + 1) if markers else 1
        wanted = bytearray(size)
        for n in markers:
            wanted[n] = 1
        wanted_int = int.from_bytes(wanted, "little")

        def received(link):
            seen = bytes(link.seen[:size])
            return (int.from_bytes(seen, "little") & wanted_int).bit_count()
        return {"live": [received(link) for link in self.links if link.state == READY],
                "dropped": [received(link) for link in self.dropped],
                "dropped_why": self._why(self.dropped)}

    async def cmd_quit(self, message):
        for link in self.links:
            link.close()
        return {}


async def client_main():
    loop = asyncio.get_running_loop()
    process = ClientProcess(loop)
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        message = json.loads(line)
        try:
            reply = await process.handle(message)
        except Exception as error:  # reported to the coordinator, which fails the run
            import traceback
            traceback.print_exc()
            reply = {"error": "%s: %s" % (type(error).__name__, error)}
        reply["cpu"] = time.process_time()
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if message["cmd"] == "quit":
            break


# ---------------------------------------------------------------------------------------------
# The coordinator.
# ---------------------------------------------------------------------------------------------

def rss_kb(pid, field="VmRSS"):
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid):
    """User + system CPU time of a process, from /proc/<pid>/stat (clock ticks)."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def open_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def soft_nofile_of(pid):
    try:
        with open("/proc/%d/limits" % pid) as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reserve_from_campfire():
    try:
        with open(CAMPFIRE) as source:
            found = re.search(r"^FILE_DESCRIPTOR_RESERVE\s*=\s*(\d+)", source.read(), re.M)
        return int(found.group(1)) if found else FILE_DESCRIPTOR_RESERVE
    except OSError:
        return FILE_DESCRIPTOR_RESERVE


def free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def usable_sources(count):
    """127.0.0.2, 127.0.0.3, ...: the ones this machine lets us bind (127.0.0.1 if none)."""
    sources = []
    for n in range(2, 2 + count):
        address = "127.0.0.%d" % n
        try:
            with socket.socket() as sock:
                sock.bind((address, 0))
            sources.append(address)
        except OSError:
            break
    return sources or [HOST]


def load_average():
    try:
        with open("/proc/loadavg") as loadavg:
            return " ".join(loadavg.read().split()[:3])
    except OSError:
        return "?"


def log(text):
    print("  · " + text, flush=True)


class Processes:
    """Every process this script starts, killed at the end whatever happens."""

    def __init__(self):
        self.procs = []

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def kill_all(self):
        for proc in self.procs:
            pid = getattr(proc, "pid", None)
            if pid is None:
                continue
            try:
                if proc.returncode is None:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.procs:
            if isinstance(proc, subprocess.Popen):
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass


class Server:
    def __init__(self, processes, storage, port, log_path, nofile=None):
        self.port = port
        self.log_path = log_path
        env = dict(os.environ, LOG_LEVEL="WARNING")
        env.pop("PORT", None)

        def preexec():
            die_with_parent()
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        self.log_file = open(log_path, "ab")
        self.proc = processes.add(subprocess.Popen(
            [sys.executable, CAMPFIRE, "serve", "--host", HOST, "--port", str(port), "--storage", storage],
            env=env, stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=preexec))
        self.pid = self.proc.pid

    def wait_up(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError("campfire.py exited with %s:\n%s" % (self.proc.returncode, self.log_tail()))
            try:
                status, _, _ = http_request(self.port, "GET", "/up", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchError("campfire.py did not answer /up within %d s:\n%s" % (START_TIMEOUT_S, self.log_tail()))

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()

    def log_text(self):
        try:
            with open(self.log_path, "rb") as file:
                return file.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines=15):
        return "\n".join(self.log_text().splitlines()[-lines:])


def http_request(port, method, path, *, headers=None, body=b"", timeout=HTTP_TIMEOUT_S, source=None):
    """One request on a fresh connection (setup only): status, headers, body."""
    import http.client
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout,
                                            source_address=(source, 0) if source else None)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def sign_in(port, email, password=PASSWORD):
    body = urllib.parse.urlencode({"email_address": email, "password": password}).encode()
    status, headers, _ = http_request(port, "POST", "/session", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-origin",
        "Origin": "http://%s:%d" % (HOST, port), "Host": "%s:%d" % (HOST, port)})
    for name, value in headers:
        if name.lower() == "set-cookie" and value.startswith("session_token="):
            return value.split("=", 1)[1].split(";", 1)[0]
    raise BenchError("signing in as %s answered %d without a session cookie" % (email, status))


class Poster:
    """A keep-alive HTTP/1.1 connection of person1 posting to room 1."""

    def __init__(self, port, cookie, run):
        self.port, self.cookie, self.run = port, cookie, run
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), HTTP_TIMEOUT_S)

    def close(self):
        if self.writer is not None:
            self.writer.close()

    def request_bytes(self, number):
        tag = marker(self.run, number)
        body = urllib.parse.urlencode({"message[body]": "bench post %s" % tag,
                                       "message[client_message_id]": tag}).encode()
        head = ("POST /rooms/%d/messages HTTP/1.1\r\nHost: %s:%d\r\nCookie: session_token=%s\r\n"
                "Sec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: cors\r\nOrigin: http://%s:%d\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n"
                % (ROOM_ID, HOST, self.port, self.cookie, HOST, self.port, len(body)))
        return head.encode("latin-1") + body

    async def request(self, data):
        self.writer.write(data)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), HTTP_TIMEOUT_S)
        status = int(head[9:12])
        found = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
        body = await asyncio.wait_for(self.reader.readexactly(int(found.group(1))), HTTP_TIMEOUT_S) if found else b""
        if re.search(rb"\r\nconnection:\s*close", head, re.I):
            self.close()
            self.reader = self.writer = None
        return status, body

    async def post(self, number):
        """(ok, status): ok when answered 201 with the message carrying this marker."""
        if self.writer is None:
            await self.open()
        status, body = await self.request(self.request_bytes(number))
        return status == 201 and marker(self.run, number).encode() in body, status

    async def get(self, path):
        if self.writer is None:
            await self.open()
        status, _ = await self.request(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nCookie: session_token=%s\r\n\r\n"
                                        % (path, HOST, self.port, self.cookie)).encode("latin-1"))
        return status


class Client:
    """A client process, driven over its stdin/stdout."""

    def __init__(self, index, proc, log_path):
        self.index, self.proc, self.log_path = index, proc, log_path

    @classmethod
    async def start(cls, processes, index, log_dir):
        log_path = os.path.join(log_dir, "client%d.log" % index)
        with open(log_path, "wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, os.path.abspath(__file__), "--client", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log_file, limit=1 << 26, start_new_session=True,
                preexec_fn=die_with_parent)
        processes.add(proc)
        return cls(index, proc, log_path)

    async def call(self, message, timeout=60.0):
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            try:
                with open(self.log_path, "rb") as file:
                    tail = file.read().decode("utf-8", "replace")[-2000:]
            except OSError:
                tail = ""
            raise BenchError("client process %d exited:\n%s" % (self.index, tail))
        reply = json.loads(line)
        if "error" in reply:
            raise BenchError("client process %d: %s" % (self.index, reply["error"]))
        return reply


class Bench:
    def __init__(self, args, processes, scratch):
        self.args = args
        self.processes = processes
        self.scratch = scratch
        self.run = os.urandom(4).hex()
        self.rows = []            # (section, label, figure, target, verdict)
        self.notes = []
        self.failed = []
        self.next_marker = 1
        self.clients = []
        self.server = None
        self.listener_cookies = []
        self.poster_cookie = None
        self.opened = 0           # connections handed out so far (for source addresses and cookies)
        self.sources = []

    # Helpers ------------------------------------------------------------------------------------
    def row(self, section, label, figure, target="", verdict=""):
        """A line of the report; section "" continues the last one named."""
        self.section = section = section or getattr(self, "section", "")
        self.rows.append((section, label, figure, target, verdict))

    def fail(self, text):
        self.failed.append(text)
        log("FAILED: " + text)

    def take_marker(self):
        number = self.next_marker
        self.next_marker += 1
        return number

    async def all_clients(self, message, timeout=60.0):
        return await asyncio.gather(*[client.call(dict(message), timeout) for client in self.clients])

    async def live(self):
        replies = await self.all_clients({"cmd": "status"})
        return sum(r["live"] for r in replies), sum(r["dropped"] for r in replies), replies

    async def open_to(self, total, concurrency=OPEN_CONCURRENCY, timeout=None, strict=True):
        """Open connections until `total` are open; the outcomes of the new ones."""
        live, _, _ = await self.live()
        need = total - live
        if need <= 0:
            return {}
        started = time.monotonic()
        shares = [need // len(self.clients) + (1 if i < need % len(self.clients) else 0)
                  for i in range(len(self.clients))]
        calls = []
        for client, share in zip(self.clients, shares):
            calls.append(client.call({"cmd": "open", "count": share, "first_index": self.opened,
                                      "cookies": self.listener_cookies, "concurrency": concurrency},
                                     timeout or (OPEN_TIMEOUT_S * 2 + share / 20)))
            self.opened += share
        replies = await asyncio.gather(*calls)
        outcomes = {}
        deflate = 0
        self.slowest = {}
        for reply in replies:
            deflate += reply["deflate"]
            for name, count in reply["outcomes"].items():
                outcomes[name] = outcomes.get(name, 0) + count
            for name, seconds in reply["slowest"].items():
                self.slowest[name] = max(self.slowest.get(name, 0.0), seconds)
        ready = outcomes.get("ready", 0)
        seconds = time.monotonic() - started
        others = ", ".join("%d %s" % (count, name) for name, count in sorted(outcomes.items()) if name != "ready")
        log("opened %s /cable connections in %.1f s (%d/s)%s; %s have permessage-deflate"
            % (f"{ready:,}", seconds, ready / seconds if seconds else 0, "; not ready: " + others if others else "",
               f"{deflate:,}"))
        if strict and ready < need:
            self.fail("%d of %d /cable connections could not be opened and subscribed (%s)"
                      % (need - ready, need, others))
        if deflate < ready:
            self.fail("permessage-deflate was not negotiated on %d connections" % (ready - deflate))
        return outcomes

    async def keep(self, total):
        """Close connections until `total` are open, taking from the clients that have the most."""
        _, _, replies = await self.live()
        order = sorted(range(len(self.clients)), key=lambda i: replies[i]["live"])
        shares, remaining = {}, total
        for position, i in enumerate(order):
            shares[i] = min(replies[i]["live"], remaining // (len(order) - position))
            remaining -= shares[i]
        await asyncio.gather(*[self.clients[i].call({"cmd": "keep", "count": shares[i]}) for i in shares])

    async def check_dropped(self, when):
        live, dropped, replies = await self.live()
        if dropped:
            why = {}
            for reply in replies:
                for name, count in reply["dropped_why"].items():
                    why[name] = why.get(name, 0) + count
            self.fail("%d subscribed connections were dropped by the server %s (%s)" % (dropped, when, why))
        return live

    def rss_split(self):
        anon, file = rss_kb(self.server.pid, "RssAnon"), rss_kb(self.server.pid, "RssFile")
        return "heap %.1f + files %.1f" % (anon / 1024, file / 1024) if anon is not None and file is not None else "?"

    def server_rss_mb(self):
        kb = rss_kb(self.server.pid)
        return None if kb is None else kb / 1024

    # Parts ---------------------------------------------------------------------------------------
    async def setup(self):
        args = self.args
        storage = os.path.join(self.scratch, "storage")
        seed_log = os.path.join(self.scratch, "seed.log")
        started = time.monotonic()
        with open(seed_log, "wb") as out:
            try:
                result = subprocess.run(
                    [sys.executable, CAMPFIRE, "seed", "--messages", "1000", "--users", "20", "--rooms", "3",
                     "--storage", storage], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    timeout=SEED_TIMEOUT_S, env=dict(os.environ, LOG_LEVEL="WARNING"), preexec_fn=die_with_parent)
            except subprocess.TimeoutExpired:
                raise BenchError("seeding took more than %d s" % SEED_TIMEOUT_S) from None
        if result.returncode != 0:
            with open(seed_log, "rb") as file:
                raise BenchError("campfire.py seed failed:\n" + file.read().decode("utf-8", "replace")[-2000:])
        log("seeded 20 people, 3 rooms, 1,000 messages in %.1f s" % (time.monotonic() - started))
        self.storage = storage
        port = free_port()
        self.server = Server(self.processes, storage, port, os.path.join(self.scratch, "server.log"))
        self.server.wait_up()
        await asyncio.sleep(1.0)
        self.start_mb = self.server_rss_mb()
        self.row("1. memory", "server RSS after start (no sign-in, no connection)", "%.1f MB (%s)"
                 % (self.start_mb, self.rss_split()), "≤ %d MB" % TARGET_IDLE_RSS_MB,
                 "ok" if self.start_mb <= TARGET_IDLE_RSS_MB else "MISS")
        with open(seed_log, "rb") as file:   # seed makes up the administrator's (person1's) password
            found = re.search(rb"\(an administrator\) with the password '([A-Za-z0-9]+)'", file.read())
        if not found:
            raise BenchError("campfire.py seed did not say the administrator's password")
        self.poster_cookie = sign_in(port, POSTER_EMAIL, found.group(1).decode())
        self.listener_cookies = [sign_in(port, email) for email in LISTENER_EMAILS]
        soft = soft_nofile_of(self.server.pid)
        self.reserve = reserve_from_campfire()
        log("server pid %d on %s:%d, open-file limit %s, so at most %s connections (limit - %d)"
            % (self.server.pid, HOST, port, soft, f"{soft - self.reserve:,}" if soft else "?", self.reserve))
        total = max(args.max_connections, args.nofile_limit) + LIMIT_EXTRA + 64
        self.sources = usable_sources(max(2, -(-total // CONNECTIONS_PER_SOURCE)))
        log("clients connect from %s … %s (%d source addresses); signed in: person1 posts, "
            "person2..person5 listen (their cookies taken in turn)" % (self.sources[0], self.sources[-1],
                                                                       len(self.sources)))
        self.clients = list(await asyncio.gather(*[Client.start(self.processes, i, self.scratch)
                                                   for i in range(args.workers)]))
        replies = await self.all_clients({"cmd": "init", "port": port, "run": self.run,
                                          "cookies": self.listener_cookies, "sources": self.sources})
        log("%d client processes, open-file limit %s each" % (len(self.clients), replies[0]["nofile"][0]))

    async def memory_step(self, total):
        await self.open_to(total)
        await asyncio.sleep(QUIET_S)
        live = await self.check_dropped("while idle")
        mb = self.server_rss_mb()
        per = (mb - self.idle_mb) * 1024 / live if live and mb is not None and self.idle_mb is not None else None
        target, verdict = "", ""
        if total == 10_000:
            target = "< %d MB" % TARGET_RSS_MB
            verdict = "ok" if mb is not None and mb < TARGET_RSS_MB else "MISS"
        self.row("1. memory", "server RSS, %s subscribed connections" % f"{live:,}",
                 "%.1f MB (%s; +%.1f KB/conn.)" % (mb, self.rss_split(), per) if per is not None else "%.1f MB" % mb,
                 target, verdict)
        log("server RSS with %s idle subscribed connections: %.1f MB" % (f"{live:,}", mb))
        return live

    async def fanout(self, expected):
        poster = Poster(self.server.port, self.poster_cookie, self.run)
        await poster.open()
        totals, acks, firsts, client_cpu, server_cpu = [], [], [], [], []
        try:
            for _ in range(FANOUT_REPEATS):
                await asyncio.sleep(FANOUT_GAP_S)
                number = self.take_marker()
                data = poster.request_bytes(number)
                before = await self.all_clients({"cmd": "status"})
                server_before = cpu_seconds(self.server.pid)
                t0 = time.monotonic()
                status, body = await poster.request(data)
                t_ack = time.monotonic()
                if status != 201:
                    self.fail("a fan-out post was answered %d" % status)
                    continue
                replies = await self.all_clients({"cmd": "wait", "marker": number, "timeout": FANOUT_TIMEOUT_S},
                                                 FANOUT_TIMEOUT_S + 10)
                got = sum(r["count"] for r in replies)
                target = sum(r["target"] for r in replies)
                if got < target or target < expected:
                    self.fail("a post reached %d of %d subscribers within %d s (%d expected)"
                              % (got, target, FANOUT_TIMEOUT_S, expected))
                    continue
                server_cpu.append(cpu_seconds(self.server.pid) - server_before)
                client_cpu.append(sum(r["cpu"] - b["cpu"] for r, b in zip(replies, before)))
                last = max(r["last"] for r in replies if r["last"] is not None)
                first = min(r["first"] for r in replies if r["first"] is not None)
                totals.append((last - t0) * 1000)
                acks.append((t_ack - t0) * 1000)
                firsts.append((first - t0) * 1000)
        finally:
            poster.close()
        if not totals:
            self.row("2. fan-out", "one post → all %s subscribers" % f"{expected:,}", "no complete fan-out",
                     "max ≤ %d ms" % TARGET_FANOUT_MS, "MISS")
            return
        judged = expected >= 10_000
        verdict = ("ok" if max(totals) <= TARGET_FANOUT_MS and statistics.median(totals) <= TARGET_FANOUT_MEDIAN_MS
                   else "MISS") if judged else ""
        self.row("2. fan-out", "one post → all %s subscribers (%d posts)" % (f"{expected:,}", len(totals)),
                 "median %.0f ms, max %.0f ms" % (statistics.median(totals), max(totals)),
                 "median ≤ %d, max ≤ %d ms" % (TARGET_FANOUT_MEDIAN_MS, TARGET_FANOUT_MS) if judged else "", verdict)
        self.row("", "  first subscriber / the poster's 201", "median %.1f ms / %.1f ms"
                 % (statistics.median(firsts), statistics.median(acks)))
        self.row("", "  CPU per post: server / all client processes", "%.0f ms / %.0f ms (%.1f µs per frame read)"
                 % (sum(server_cpu) / len(server_cpu) * 1000, sum(client_cpu) / len(client_cpu) * 1000,
                    sum(client_cpu) / len(client_cpu) * 1e6 / expected))
        log("fan-out to %s, per post, first/last subscriber and 201, ms: %s" % (
            f"{expected:,}", ", ".join("%.0f/%.0f/%.0f" % times for times in zip(firsts, totals, acks))))

    async def steady(self, expected):
        """STEADY_RATE posts a second for STEADY_SECONDS, each to every subscriber: the
        deliveries a second, and each post's time from its request to its last subscriber."""
        poster = Poster(self.server.port, self.poster_cookie, self.run)
        await poster.open()
        sent, acked, refused = {}, [], {}
        server_before = cpu_seconds(self.server.pid)
        started = time.monotonic()
        try:
            for index in range(int(STEADY_RATE * STEADY_SECONDS)):
                delay = started + index / STEADY_RATE - time.monotonic()
                if delay > 0:  # a post slower than the gap is followed at once
                    await asyncio.sleep(delay)
                number = self.take_marker()
                sent[number] = time.monotonic()
                ok, status = await poster.post(number)
                if ok:
                    acked.append(number)
                else:
                    refused[status] = refused.get(status, 0) + 1
        finally:
            poster.close()
        posting = time.monotonic() - started
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            replies = await self.all_clients({"cmd": "missing", "markers": acked})
            if sum(r["missing"] for r in replies) == 0:
                break
            await asyncio.sleep(0.05)
        server_cpu = cpu_seconds(self.server.pid) - server_before
        latencies, deliveries, incomplete, last_arrival = [], 0, 0, started
        for number in acked:
            replies = await self.all_clients({"cmd": "wait", "marker": number, "timeout": 0.1})
            got, target = sum(r["count"] for r in replies), sum(r["target"] for r in replies)
            deliveries += got
            if got < target or target < expected:
                incomplete += 1
                continue
            last = max(r["last"] for r in replies if r["last"] is not None)
            last_arrival = max(last_arrival, last)
            latencies.append((last - sent[number]) * 1000)
        if refused or incomplete or not latencies:
            self.fail("steady posting: %d posts refused %s, %d of %d not received by every subscriber"
                      % (sum(refused.values()), refused, incomplete, len(acked)))
        if not latencies:
            return
        latencies.sort()
        spread = last_arrival - started
        self.row("2. fan-out", "%d posts a second for %.0f s to %s subscribers" % (
            STEADY_RATE, STEADY_SECONDS, f"{expected:,}"), "%s deliveries a second (%s in %.2f s)" % (
            f"{deliveries / spread:,.0f}", f"{deliveries:,}", spread))
        p50, p99 = latencies[len(latencies) // 2], latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        self.row("", "  each post to its last subscriber: p50 / p99", "%.0f ms / %.0f ms (%d posts, %.0f/s sent)" % (
            p50, p99, len(latencies), len(acked) / posting), "≤ %d / %d ms" % (TARGET_FANOUT_MEDIAN_MS,
                                                                              TARGET_FANOUT_MS),
                 "ok" if p50 <= TARGET_FANOUT_MEDIAN_MS and p99 <= TARGET_FANOUT_MS else "MISS")
        self.row("", "  server CPU meanwhile", "%.0f%% of a core" % (100 * server_cpu / spread))
        log("steady: %d posts at %d/s to %s subscribers, last subscriber per post (ms): %s" % (
            len(acked), STEADY_RATE, f"{expected:,}", " ".join("%.0f" % value for value in latencies)))

    async def delivery(self, clients_count, duration):
        await self.keep(clients_count)
        await asyncio.sleep(1.0)
        live = await self.check_dropped("before the delivery run")
        posters = [Poster(self.server.port, self.poster_cookie, self.run) for _ in range(POSTERS)]
        await asyncio.gather(*[poster.open() for poster in posters])
        acked, refused, errors = [], {}, []
        stop_at = time.monotonic() + duration

        async def loop(poster):
            while time.monotonic() < stop_at:
                number = self.take_marker()
                try:
                    ok, status = await poster.post(number)
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
                    errors.append(type(error).__name__)
                    poster.close()
                    poster.reader = poster.writer = None
                    continue
                if ok:
                    acked.append(number)
                else:
                    refused[status] = refused.get(status, 0) + 1
        started = time.monotonic()
        await asyncio.gather(*[loop(poster) for poster in posters])
        posting = time.monotonic() - started
        for poster in posters:
            poster.close()
        log("%d posters: %s posts acknowledged in %.1f s (%.0f/s)%s"
            % (POSTERS, f"{len(acked):,}", posting, len(acked) / posting,
               "; refused %s, errors %s" % (refused, errors) if refused or errors else ""))
        if refused or errors:
            self.fail("posts answered %s, socket errors %s" % (refused, errors))
        drain_started = time.monotonic()
        while time.monotonic() - drain_started < DRAIN_TIMEOUT_S:
            replies = await self.all_clients({"cmd": "missing", "markers": acked})
            if sum(r["missing"] for r in replies) == 0:
                break
            await asyncio.sleep(0.25)
        drained = time.monotonic() - drain_started
        replies = await self.all_clients({"cmd": "delivered", "markers": acked})
        per_client = sorted([n for r in replies for n in r["live"]] + [n for r in replies for n in r["dropped"]])
        dropped = sum(len(r["dropped"]) for r in replies)
        complete = sum(1 for n in per_client if n == len(acked))
        why = {}
        for reply in replies:
            for name, count in reply["dropped_why"].items():
                why[name] = why.get(name, 0) + count
        self.row("3. delivery", "%d posters for %.0f s, %s clients" % (POSTERS, duration, f"{len(per_client):,}"),
                 "%s posts acknowledged (%.0f/s)" % (f"{len(acked):,}", len(acked) / posting))
        self.row("", "  posts received per client: min / median",
                 "%s / %s (last frames within %.1f s)" % (f"{per_client[0]:,}" if per_client else "-",
                                                          f"{int(statistics.median(per_client)):,}"
                                                          if per_client else "-", drained))
        self.row("", "  clients that received every acknowledged post",
                 "%s of %s%s" % (f"{complete:,}", f"{len(per_client):,}",
                                 ", %d dropped by the server (%s)" % (dropped, why) if dropped else ""),
                 "all", "ok" if per_client and complete == len(per_client) == live and acked else "MISS")
        log("delivery: %d/%d clients got all %d posts; %d dropped %s"
            % (complete, len(per_client), len(acked), dropped, why or ""))

    async def limit(self):
        """Part 4: a server whose open-file limit is reached."""
        nofile = self.args.nofile_limit
        await self.all_clients({"cmd": "reset"})
        self.server.stop()
        port = free_port()
        server = self.server = Server(self.processes, self.storage, port, os.path.join(self.scratch, "limit.log"),
                                      nofile=nofile)
        server.wait_up()
        soft = soft_nofile_of(server.pid)
        cap = soft - self.reserve
        await self.all_clients({"cmd": "reset", "port": port, "run": self.run, "cookies": self.listener_cookies,
                                "sources": self.sources})
        log("second server pid %d with its soft open-file limit lowered to %s: by FILE_DESCRIPTOR_RESERVE it "
            "should serve %s connections" % (server.pid, soft, f"{cap:,}"))
        poster = Poster(port, self.poster_cookie, self.run)
        await poster.open()
        if await poster.get("/up") != 200:
            self.fail("/up on the poster's connection was not 200")
        tried = soft + LIMIT_EXTRA   # more than any server with this limit can hold
        outcomes = await self.open_to(tried, concurrency=50, strict=False)
        served = outcomes.get("ready", 0)
        refused = outcomes.get("http 503", 0)
        other = {name: count for name, count in outcomes.items() if name not in ("ready", "http 503")}
        fds = open_fds(server.pid)
        self.row("4. file limit", "server with soft RLIMIT_NOFILE %s (limit - %d = %s)"
                 % (f"{soft:,}", self.reserve, f"{cap:,}"),
                 "served 1 poster + %s WebSockets, %s fds open" % (f"{served:,}", f"{fds:,}" if fds else "?"))
        self.row("", "  %s more WebSockets tried, 50 at a time per client" % f"{tried - served:,}",
                 "%s answered 503 and closed (slowest %.1f s)%s" % (f"{refused:,}", self.slowest.get("http 503", 0),
                                                                    "; " + ", ".join("%d %s" % (c, n) for n, c in
                                                                                     sorted(other.items()))
                                                                    if other else ""),
                 "all 503", "ok" if served and not other else "MISS")
        # Still serving those it has: one post reaches every connected client.
        number = self.take_marker()
        t0 = time.monotonic()
        try:
            ok, status = await poster.post(number)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
            ok, status = False, type(error).__name__
        replies = await self.all_clients({"cmd": "wait", "marker": number, "timeout": FANOUT_TIMEOUT_S},
                                         FANOUT_TIMEOUT_S + 10)
        got, target = sum(r["count"] for r in replies), sum(r["target"] for r in replies)
        lasts = [r["last"] for r in replies if r["last"] is not None]
        reached = "%s of %s in %.0f ms" % (f"{got:,}", f"{target:,}", (max(lasts) - t0) * 1000) if lasts else \
            "%d of %d" % (got, target)
        self.row("", "  a post at the cap (poster's answer %s)" % status, "reached %s" % reached, "all",
                 "ok" if ok and got == target == served else "MISS")
        await self.check_dropped("at the cap")
        # Room again once some leave.
        await self.keep(max(0, served - 20))
        await asyncio.sleep(0.5)
        fresh_ok = 0
        try:
            status, _, _ = await asyncio.get_running_loop().run_in_executor(
                None, lambda: http_request(port, "GET", "/up", timeout=5))
            fresh_ok = status == 200
        except OSError:
            pass
        outcomes = await self.open_to(served - 20 + 10, concurrency=10, strict=False)
        again = outcomes.get("ready", 0)
        alive = server.alive()
        log_text = server.log_text()
        records = {}   # (level, message) → count, for the log's timestamped records
        for line in log_text.splitlines():
            found = re.match(r"\d{4}-\d\d-\d\d [\d:,]+ (ERROR|CRITICAL|WARNING) (.*)", line)
            if found:
                key = (found.group(1), found.group(2)[:70])
                records[key] = records.get(key, 0) + 1
        errors = sum(count for (level, _), count in records.items() if level != "WARNING")
        self.row("", "  after 20 clients leave", "/up %s, %d of 10 new WebSockets served"
                 % ("200" if fresh_ok else "refused", again), "served", "ok" if fresh_ok and again == 10 else "MISS")
        self.row("", "  server still running; errors it logged", "%s; %s error records (%s lines)"
                 % ("yes" if alive else "NO", f"{errors:,}", f"{len(log_text.splitlines()):,}"), "yes; 0",
                 "ok" if alive and not errors else "MISS")
        if records:
            self.notes.append("the part 4 server's log, by record:\n" + "\n".join(
                "    %6d × %s %s" % (count, level, message)
                for (level, message), count in sorted(records.items(), key=lambda item: -item[1])[:8]))
        poster.close()
        await self.all_clients({"cmd": "reset"})

    async def main(self):
        args = self.args
        started = time.monotonic()
        print("campfire.py /cable benchmark: %s, Python %s, %d CPUs, load average %s"
              % (CAMPFIRE, sys.version.split()[0], os.cpu_count() or 0, load_average()), flush=True)
        await self.setup()
        await asyncio.sleep(1.0)
        self.idle_mb = self.server_rss_mb()
        self.row("", "  after 5 sign-ins (each an scrypt of 16 MiB)", "%.1f MB (%s)"
                 % (self.idle_mb, self.rss_split()))
        steps = [n for n in (1_000, 5_000, 10_000) if n <= args.max_connections]
        if args.max_connections not in steps:
            steps.append(args.max_connections)
        if args.quick:
            steps = [min(1_000, args.max_connections)]
        if "1" in args.parts or "2" in args.parts:
            for total in steps:
                live = await self.memory_step(total)
                if "2" in args.parts and (total == steps[0] or total == steps[-1]):
                    await self.fanout(live)
                if "2" in args.parts and total == steps[-1] and not args.quick:
                    await self.steady(live)
            peak = rss_kb(self.server.pid, "VmHWM")
            if peak:
                self.row("1. memory", "  server's peak RSS so far (VmHWM)", "%.1f MB" % (peak / 1024))
        if "3" in args.parts:
            await self.open_to(min(1_000, steps[0]))
            await self.delivery(min(1_000, steps[0]), args.duration)
        await self.check_dropped("during the run")
        if "4" in args.parts:
            await self.limit()
        self.elapsed = time.monotonic() - started

    def report(self):
        print()
        print("%-14s %-50s %-50s %-14s %s" % ("", "", "measured", "target", ""))
        section = None
        for part, label, figure, target, verdict in sorted(self.rows, key=lambda row: row[0]):
            print("%-14s %-50s %-50s %-14s %s" % (part if part != section else "", label, figure, target, verdict))
            section = part
        for note in self.notes:
            print("note: " + note)
        print("load average at the end: %s; %.0f s in all" % (load_average(), getattr(self, "elapsed", 0)))
        if self.failed:
            print("FAILED checks: " + "; ".join(self.failed))


async def coordinator(args):
    processes = Processes()
    scratch = tempfile.mkdtemp(prefix="campfire-bench-cable-")
    bench = Bench(args, processes, scratch)
    code = 0
    try:
        await asyncio.wait_for(bench.main(), WATCHDOG_S)
    except BenchError as error:
        print("bench_cable: %s" % error, file=sys.stderr, flush=True)
        code = 1 if bench.server is None or not bench.clients else 2
        bench.failed.append(str(error).splitlines()[0])
    except asyncio.TimeoutError:
        bench.failed.append("the run took more than %d s" % WATCHDOG_S)
        code = 2
    finally:
        for client in bench.clients:
            try:
                client.proc.stdin.close()
            except Exception:
                pass
        if bench.server is not None:
            try:
                bench.server.stop()
            except Exception:
                pass
        processes.kill_all()
        if args.keep:
            print("kept %s" % scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    bench.report()
    return code or (2 if bench.failed else 0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-connections", type=int, default=10_000, help="subscribers at the top (10,000)")
    parser.add_argument("--quick", action="store_true", help="1,000 connections only, a 5 s delivery run")
    parser.add_argument("--duration", type=float, default=None, help="seconds of posting in part 3 (15)")
    parser.add_argument("--workers", type=int, default=2, help="client processes (2)")
    parser.add_argument("--nofile-limit", type=int, default=2_000,
                        help="the soft open-file limit of part 4's server (2,000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and logs")
    parser.add_argument("--parts", default="1234", help="which parts to run (1234)")
    parser.add_argument("--campfire", default=None, help="the campfire.py to run (this checkout's)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        raise_nofile()
        try:
            asyncio.run(client_main())
        except KeyboardInterrupt:
            pass
        return 0
    if args.campfire:
        global CAMPFIRE
        CAMPFIRE = os.path.abspath(args.campfire)
    if args.duration is None:
        args.duration = 5.0 if args.quick else 15.0
    raise_nofile()

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return asyncio.run(coordinator(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
