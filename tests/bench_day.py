#!/usr/bin/env python3
"""A day of Campfire: many people, pages, posts, searches and live sockets at once.

`make bench` runs it after the other benchmarks. Standard library only.

Setup: `campfire.py seed` (PEOPLE people, ROOMS rooms, MESSAGES messages) into a
temporary storage, one session per person made through campfire.py's own Store
before the server starts (signing a thousand people in would measure scrypt),
then `campfire.py serve --host 127.0.0.1` with LOG_LEVEL=WARNING.

BENCH_DAY_ROOMS and BENCH_DAY_MESSAGES change the seed's rooms and messages (the
growth runs: 200 rooms, with 100,000 and with 1,000,000 messages).

The load, for SECONDS (BENCH_DAY_SECONDS overrides it), from three processes
beside the server (the machine's cores are shared with them):
  sockets   every person holds a /cable WebSocket subscribed to
            RoomMessagesChannel of one room they are in (people spread over the
            rooms in turn), answering pings, and notes when each post's
            message arrives;
  pages     LOADERS people, each on a keep-alive connection of their own with
            their own session (so the server's caches are per person), load a
            page, think, and load the next: their room (60%), an older page of
            its messages (25%) or the sidebar (15%). They ask for gzip, as
            browsers do. A person's pause is random, THINK_SECONDS on average
            (exponential): with one fixed pause for all, people answered together
            after any hold-up ask together from then on, and two hundred of
            them soon move in one wave no team makes;
  posts     POSTERS people post to their rooms at POSTS_PER_SECOND combined, on
            a fixed schedule (a slow answer does not slow the offered load);
  search    SEARCHERS people search for a common word, pausing the same way.
It prints page p50/p99 (and each kind of page's alone), search p50/p99, post p50/p99 (the 201), delivery p50/p99
(from just before a post is written to the moment the LAST socket subscribed to
its room has read it; CLOCK_MONOTONIC in every process), errors (any answer not
200/201, a socket the server dropped, a post some subscriber never got: must be
0), and the server's CPU (share of one core) and RSS. Targets: page p99 ≤ 25 ms,
delivery p99 ≤ 100 ms, RSS ≤ 100 MB.

Everything runs on 127.0.0.1, every step is bounded in time, and the server and
the load processes are stopped at the end. Exit status 2 when there were errors."""

import asyncio
import base64
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PEOPLE = 1000
ROOMS = int(os.environ.get("BENCH_DAY_ROOMS", 20))           # the growth runs: 200 rooms,
MESSAGES = int(os.environ.get("BENCH_DAY_MESSAGES", 100_000))  # and 100,000 or 1,000,000 messages
LOADERS, POSTERS, SEARCHERS = 200, 20, 10
SOCKET_PROCESSES = 2         # the sockets' reading is split between them
POSTS_PER_SECOND = 200
THINK_SECONDS = 1.0
SECONDS = float(os.environ.get("BENCH_DAY_SECONDS", 60))
SETTLE_SECONDS = 10          # after the last post, for its deliveries to arrive
CONNECT_TIMEOUT_SECONDS = 120
REQUEST_TIMEOUT_SECONDS = 30
START_TIMEOUT_SECONDS = 60
OLDER_IDS = 200             # message ids per room that "older page" requests start from
SEARCH_WORD = "deploy"       # one of the seed's words: in about 10% of messages
PAGE_KINDS = ("room", "older", "sidebar")  # the pages a loader asks for (60%, 25%, 15%), each also reported alone
MARKER = re.compile(rb"dayq(\d+)q")
TARGETS = {"page p99": 25.0, "delivery p99": 100.0, "rss": 100.0}


def percentile(values, fraction):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# HTTP/1.1 on a keep-alive connection ------------------------------------------

class Http:
    def __init__(self, port, cookie):
        self.port, self.cookie = port, cookie
        self.reader = self.writer = None

    async def request(self, method, path, body=b"", content_type=None):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1:%d" % self.port, "Cookie: " + self.cookie]
        if method == "GET":
            head.append("Accept-Encoding: gzip, deflate, br")
        else:
            head += ["Origin: http://127.0.0.1:%d" % self.port, "Sec-Fetch-Site: same-origin",
                     "Content-Type: " + content_type, "Content-Length: %d" % len(body)]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        response_head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(response_head[9:12])
        lowered = response_head.lower()
        match = re.search(rb"\r\ncontent-length: *(\d+)", lowered)
        if match:
            await self.reader.readexactly(int(match.group(1)))
        elif b"transfer-encoding: chunked" in lowered:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        if b"connection: close" in lowered:
            self.writer.close()
            self.writer = None
        return status


# The sockets ------------------------------------------------------------------

def masked(opcode, payload):
    mask = os.urandom(4)
    length = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | length]) if length < 126 else
                                     bytes([0x80 | 126]) + length.to_bytes(2, "big"))
    return head + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


async def cable(port, cookie, room_id, received, state):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(("GET /cable HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:%d\r\n"
                  "Sec-WebSocket-Protocol: actioncable-v1-json, actioncable-unsupported\r\nCookie: %s\r\n\r\n"
                  % (port, key, port, cookie)).encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"101":
        raise RuntimeError("/cable answered %s" % head[9:12].decode())
    identifier = json.dumps({"channel": "RoomMessagesChannel", "room_id": room_id})
    writer.write(masked(1, json.dumps({"command": "subscribe", "identifier": identifier}).encode()))
    while True:
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(length)
        now = time.monotonic()
        opcode = first & 0x0F
        if opcode == 9:
            writer.write(masked(10, payload))
        elif opcode == 8:
            state["dropped"] += 1
            return
        elif opcode == 1:
            if b"confirm_subscription" in payload:
                state["ready"] += 1
            for number in MARKER.findall(payload):
                entry = received.setdefault(int(number), [0, 0.0])
                entry[0] += 1
                entry[1] = max(entry[1], now)


def sockets_process(port, people, pipe):
    """people: [(cookie, room id)]. Reports ready, then on "stop" what arrived."""
    async def run():
        received, state = {}, {"ready": 0, "dropped": 0}
        tasks = []
        for cookie, room_id in people:
            tasks.append(asyncio.ensure_future(cable(port, cookie, room_id, received, state)))
            await asyncio.sleep(0)
        deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS
        while state["ready"] < len(people) and time.monotonic() < deadline:
            failed = [task for task in tasks if task.done()]
            if failed:
                break
            await asyncio.sleep(0.05)
        pipe.send(("ready", state["ready"]))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, pipe.recv)
        errors = sum(1 for task in tasks if task.done() and not task.cancelled() and task.exception())
        for task in tasks:
            task.cancel()
        pipe.send(("done", {str(k): v for k, v in received.items()}, state["dropped"] + errors))
    asyncio.run(run())


# Pages, posts and searches ------------------------------------------------------

def requests_process(port, loaders, posters, searchers, seconds, older, pipe):
    """loaders/posters/searchers: [(cookie, room id)]; older: room id → message ids to
    page back from. Runs for `seconds`, then reports."""
    results = {"page": [], "post": [], "search": [], "errors": 0, "error_samples": [], "sent": {},
               "kinds": {kind: [] for kind in PAGE_KINDS}}

    def failed(what):
        results["errors"] += 1
        if len(results["error_samples"]) < 5:
            results["error_samples"].append(what)

    async def timed(http, method, path, kind, expected, body=b"", content_type=None):
        started = time.perf_counter()
        try:
            status = await asyncio.wait_for(http.request(method, path, body, content_type), REQUEST_TIMEOUT_SECONDS)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
            http.writer = None
            failed("%s %s: %s" % (method, path, type(error).__name__))
            return
        took = (time.perf_counter() - started) * 1000
        results[kind].append(took)
        if status not in expected:
            failed("%s %s: %d" % (method, path, status))
        return took

    async def loader(cookie, room_id, stop):
        http, rng = Http(port, cookie), random.Random(cookie)
        await asyncio.sleep(rng.random() * THINK_SECONDS)
        while time.monotonic() < stop:
            pick = rng.random()
            if pick < 0.60:
                kind, path = "room", "/rooms/%d" % room_id
            elif pick < 0.85:
                kind, path = "older", "/rooms/%d/messages?before=%d" % (room_id, rng.choice(older[room_id]))
            else:
                kind, path = "sidebar", "/users/me/sidebar"
            took = await timed(http, "GET", path, "page", (200, 204))  # 204: nothing older than the oldest
            if took is not None:
                results["kinds"][kind].append(took)
            await asyncio.sleep(rng.expovariate(1 / THINK_SECONDS))

    async def searcher(cookie, stop):
        http, rng = Http(port, cookie), random.Random(cookie)
        await asyncio.sleep(rng.random() * THINK_SECONDS)
        while time.monotonic() < stop:
            await timed(http, "GET", "/searches?q=" + SEARCH_WORD, "search", (200,))
            await asyncio.sleep(rng.expovariate(1 / THINK_SECONDS))

    async def poster(index, cookie, room_id, start, stop):
        http = Http(port, cookie)
        interval = len(posters) / POSTS_PER_SECOND
        due, number = start + index * interval / len(posters), 0
        while due < stop:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            marker = index * 1_000_000 + number
            body = urllib.parse.urlencode({"message[body]": "a day of campfire dayq%dq" % marker,
                                           "message[client_message_id]": "day-%d" % marker}).encode()
            results["sent"][str(marker)] = (time.monotonic(), room_id)
            await timed(http, "POST", "/rooms/%d/messages" % room_id, "post", (201,), body,
                        "application/x-www-form-urlencoded")
            number += 1
            due += interval

    async def run():
        start = time.monotonic() + 1
        stop = start + seconds
        await asyncio.gather(*(loader(cookie, room, stop) for cookie, room in loaders),
                             *(searcher(cookie, stop) for cookie, _ in searchers),
                             *(poster(index, cookie, room, start, stop) for index, (cookie, room) in enumerate(posters)))
    asyncio.run(run())
    pipe.send(results)


# The server -----------------------------------------------------------------------

def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def prepare(storage):
    """Seed, then one session per person: ([(cookie, room id the person listens in)],
    {room id: up to OLDER_IDS of its message ids})."""
    env = dict(os.environ, CAMPFIRE_STORAGE_PATH=storage, LOG_LEVEL="WARNING")
    subprocess.run([sys.executable, os.path.join(ROOT, "campfire.py"), "seed", "--users", str(PEOPLE), "--rooms",
                    str(ROOMS), "--messages", str(MESSAGES)], env=env, check=True, capture_output=True,
                   timeout=1800)
    import campfire
    app = campfire.App(campfire.Config(storage_path=storage))
    try:
        store = app.store
        rooms = [room_id for room_id in sorted(store.user_rooms(1)) if not store.room(room_id).direct]
        people = []
        for index, user_id in enumerate(store.active_user_ids()[:PEOPLE]):
            mine = [room_id for room_id in rooms if room_id in store.user_rooms(user_id)]
            token = store.create_session(user_id, "127.0.0.1", "bench_day")
            people.append(("%s=%s" % (campfire.SESSION_COOKIE, token), mine[index % len(mine)]))
        older = {room_id: [row[0] for row in app.db.all(
            "SELECT id FROM messages WHERE room_id = ? ORDER BY random() LIMIT ?", (room_id, OLDER_IDS))]
            for room_id in rooms}
    finally:
        app.close()
    return env, people, older


def main():
    storage = tempfile.mkdtemp(prefix="campfire-day-")
    server = None
    workers = []
    try:
        started = time.monotonic()
        env, people, older = prepare(storage)
        print("day: %d people, %d rooms, %d messages seeded in %.0f s" % (len(people), ROOMS, MESSAGES,
                                                                      time.monotonic() - started))
        import socket
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen([sys.executable, os.path.join(ROOT, "campfire.py"), "serve", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(storage, "server.log"), "wb"))
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("campfire.py did not start")
                time.sleep(0.05)
        context = multiprocessing.get_context("fork")
        socket_ends = []
        for part in range(SOCKET_PROCESSES):
            socket_end, socket_pipe = context.Pipe()
            workers.append(context.Process(target=sockets_process, daemon=True,
                                           args=(port, people[part::SOCKET_PROCESSES], socket_pipe)))
            workers[-1].start()
            socket_ends.append(socket_end)
        ready = 0
        for socket_end in socket_ends:
            if not socket_end.poll(CONNECT_TIMEOUT_SECONDS + 10):
                raise RuntimeError("the sockets never reported")
            ready += socket_end.recv()[1]
        print("day: %d of %d sockets subscribed" % (ready, len(people)))
        if ready < len(people):
            raise RuntimeError("only %d sockets were subscribed" % ready)
        cpu_before, wall_before = cpu_seconds(server.pid), time.monotonic()
        request_end, request_pipe = context.Pipe()
        workers.append(context.Process(target=requests_process, daemon=True, args=(
            port, people[:LOADERS], people[LOADERS:LOADERS + POSTERS],
            people[LOADERS + POSTERS:LOADERS + POSTERS + SEARCHERS], SECONDS, older, request_pipe)))
        workers[-1].start()
        if not request_end.poll(SECONDS + REQUEST_TIMEOUT_SECONDS + 30):
            raise RuntimeError("the pages, posts and searches never reported")
        results = request_end.recv()
        cpu = (cpu_seconds(server.pid) - cpu_before) / (time.monotonic() - wall_before)
        rss, peak = rss_mb(server.pid), rss_mb(server.pid, "VmHWM")
        time.sleep(SETTLE_SECONDS)
        received, socket_errors = {}, 0
        for socket_end in socket_ends:
            socket_end.send("stop")
        for socket_end in socket_ends:
            if not socket_end.poll(60):
                raise RuntimeError("the sockets never reported what arrived")
            _, part, errors = socket_end.recv()
            socket_errors += errors
            for marker, (count, last) in part.items():
                entry = received.setdefault(marker, [0, 0.0])
                entry[0] += count
                entry[1] = max(entry[1], last)
        listeners = {}
        for _, room_id in people:
            listeners[room_id] = listeners.get(room_id, 0) + 1
        deliveries, missing = [], 0
        for marker, (sent_at, room_id) in results["sent"].items():
            count, last = received.get(marker, (0, 0.0))
            if count < listeners.get(room_id, 0):
                missing += 1
            else:
                deliveries.append((last - sent_at) * 1000)
        errors = results["errors"] + socket_errors + missing
        print("day: %.0f s; %d pages, %d posts, %d searches; %d deliveries to %d sockets"
              % (SECONDS, len(results["page"]), len(results["post"]), len(results["search"]),
                 sum(listeners[room] for _, room in results["sent"].values()), len(people)))
        for name, values in (("page", results["page"]), *((" " + kind, results["kinds"][kind]) for kind in PAGE_KINDS),
                             ("search", results["search"]), ("post", results["post"]), ("delivery", deliveries)):
            p99 = percentile(values, 0.99)
            target = TARGETS.get(name + " p99")
            print("  %-9s p50 %7.1f ms  p99 %7.1f ms%s" % (name, percentile(values, 0.5), p99,
                  "" if target is None else "   target ≤ %.0f ms: %s" % (target, "ok" if p99 <= target else "MISS")))
        print("  errors    %d (answers %d, sockets %d, undelivered posts %d)%s"
              % (errors, results["errors"], socket_errors, missing,
                 "" if not results["error_samples"] else ": " + "; ".join(results["error_samples"])))
        print("  server    CPU %.0f%% of one core; RSS %.1f MB (peak %.1f MB)   target ≤ %.0f MB: %s"
              % (cpu * 100, rss, peak, TARGETS["rss"], "ok" if peak <= TARGETS["rss"] else "MISS"))
        return 2 if errors else 0
    except (RuntimeError, subprocess.SubprocessError, OSError) as error:
        print("day: FAILED: %s" % error)
        return 2
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
