#!/usr/bin/env python3
"""Web Push under load: what a push costs, and whether pushing stalls chat.

`make bench` runs this after the other benchmarks. It prints:
  pushes/s/core  push_request_parts (Campfire's payload, RFC 8291 encryption with a
                 fresh ephemeral key, the VAPID header from its cache) in a loop on
                 one core for PUSH_RATE_SECONDS, CPU time
  chat latency   `campfire.py serve` on 127.0.0.1 with SUBSCRIBERS people who get
                 every message of room 1, each subscribed at an HTTPS push service
                 (its CA passed through SSL_CERT_FILE). GET /up and a message
                 POSTed to room 2 (no subscribers), one after the other on one
                 keep-alive connection: SAMPLES pairs while idle, then as many pairs
                 as fit while one message to room 1 is pushed to every subscriber;
                 p50, p99 and the worst, in ms; the pushing p99 beside the idle
                 one, and both the p99 and the worst as a multiple of the idle p99.
                 Idle and pushing ask in the same order: an /up that follows a
                 post (its commit and fsync just done) is slower than one that
                 follows an /up, so the pairs compare the pushing alone.
                 Then every push is decrypted (http_ece, and cryptography) for its
                 subscriber.

The push service runs in a process of its own, as SCHED_IDLE on Linux (else at
nice SERVICE_NICENESS). A real one is on another machine: its TLS handshakes and
VAPID checks cost this box nothing. In this process they would hold the interpreter
lock while the client here times a request (a request would wait out the 5 ms
switch interval), and at the same priority they would take the CPU from the server
on a small machine: either way the figures would show the bench, not Campfire.
SCHED_IDLE gives it only the CPU that the server, its push worker (SCHED_IDLE
too) and the client leave.
BENCH_PUSH_PROFILE=FILE runs the server under cProfile (its event loop's thread), the
profile written to FILE when it stops.
Every step is bounded in time and the server and the service are stopped at the
end. Exit status 2 when a push went missing, didn't decrypt, or a request failed."""

import contextlib
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.browser import free_port  # noqa: E402
from tests.helpers import Client, make_app, campfire  # noqa: E402
from tests.test_push import Browser, PushService, b64url, make_test_ca  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSCRIBERS = 500
SAMPLES = 800               # pairs (/up, then a post) measured while idle: about as many as a push takes
PUSH_RATE_SECONDS = 2.0
PUSH_DEADLINE_SECONDS = 180  # for every push of the loaded run to arrive
START_TIMEOUT_SECONDS = 20
PASSWORD = "bench-password"
SERVICE_NICENESS = 5        # the push service's nice(2) steps where SCHED_IDLE is missing: on a real deployment
                            # it isn't on this box
SERVICE_REPLY_SECONDS = 60  # for the push service's process to answer the bench


def serve_pushes(certificates, pipe):
    """The push service's process: PushService (TLS, VAPID checked for every push)
    until told to stop, answering the bench's questions over pipe: "count" (pushes
    received so far), "requests" (and forget them: [(name, body)]), "connections"
    (TLS connections accepted so far), "stop"."""
    with contextlib.suppress(OSError):
        os.nice(SERVICE_NICENESS)
    with contextlib.suppress(AttributeError, OSError):  # Linux's
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    service = PushService(certificates)
    pipe.send(service.port)
    try:
        while True:
            question = pipe.recv()
            if question == "count":
                pipe.send(len(service.requests))
            elif question == "connections":
                pipe.send(service.connections)
            elif question == "requests":
                with service.lock:
                    requests, service.requests[:] = list(service.requests), []
                pipe.send([(name, body) for name, _, body in requests])
            else:
                return
    finally:
        service.close()


class RemotePushService:
    """The bench's side of serve_pushes: a spawned process (a fork would copy this
    process's threads mid-use)."""

    def __init__(self, certificates):
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=serve_pushes, args=(certificates, child), daemon=True)
        self.process.start()
        child.close()
        self.port = self.ask(None)

    def ask(self, question):
        if question is not None:
            self.pipe.send(question)
        if not self.pipe.poll(SERVICE_REPLY_SECONDS):
            raise RuntimeError("the push service's process did not answer")
        return self.pipe.recv()

    def endpoint(self, name):
        return "https://127.0.0.1:%d/push/%s" % (self.port, name)

    def count(self):
        return self.ask("count")

    def close(self):
        with contextlib.suppress(OSError):
            self.pipe.send("stop")
        self.process.join(SERVICE_REPLY_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def pushes_per_second_per_core():
    key = campfire.VapidKey.generate()
    # What the worker process sets up, without its lower priority (this process
    # also runs the push service and the chat client below).
    signer = campfire.VapidSigner(key, campfire.VAPID_SUBJECT)
    browser = Browser("https://push.example.com/bench")
    arguments = ("Room 01", "Person 2: the build is green", "/rooms/1", 3, browser.endpoint, browser.p256dh,
                 b64url(browser.auth))
    campfire.push_request_parts(signer, *arguments)  # the fixed-base table and the token, once
    count, started = 0, time.process_time()
    while time.process_time() - started < PUSH_RATE_SECONDS:
        campfire.push_request_parts(signer, *arguments)
        count += 1
    return count / (time.process_time() - started)


def prepare_storage(storage, service, browsers):
    """An administrator with a password, room 1 with SUBSCRIBERS people involved in
    everything and subscribed, room 2 with the administrator alone."""
    app = make_app(storage)
    client = Client(app)
    client.post("/first_run", {"user[name]": "Ada", "user[email_address]": "ada@example.com",
                               "user[password]": PASSWORD})
    admin = app.store.user_by_email("ada@example.com")
    stamp = campfire.utc_now_text()
    quiet = app.store.create_room("Quiet", campfire.ROOM_CLOSED, admin.id, [admin.id]).id
    with app.db.atomic():
        for number in range(SUBSCRIBERS):
            user_id = app.db.execute("INSERT INTO users (name, email_address, role, status, created_at, updated_at) "
                                     "VALUES (?, ?, 0, 0, ?, ?)",
                                     ("Person %d" % number, "p%d@example.com" % number, stamp, stamp)).lastrowid
            app.db.execute("INSERT INTO memberships (room_id, user_id, involvement, created_at, updated_at) "
                           "VALUES (1, ?, 'everything', ?, ?)", (user_id, stamp, stamp))
            browser = browsers["p%d" % number] = Browser(service.endpoint("p%d" % number))
            app.store.subscribe_push(user_id, browser.endpoint, browser.p256dh, b64url(browser.auth), "bench")
    app.close()
    return quiet


class Chat:
    """One keep-alive connection, signed in as the administrator."""

    def __init__(self, port):
        self.port = port
        self.reconnect()
        body = urllib.parse.urlencode({"email_address": "ada@example.com", "password": PASSWORD})
        status, headers, _ = self.request("POST", "/session", body, {"Content-Type": "application/x-www-form-urlencoded"})
        cookie = [value.split(";")[0] for name, value in headers if name.lower() == "set-cookie"]
        assert status == 303 and cookie, "signing in failed (%d)" % status
        self.cookie = "; ".join(cookie)
        self.posted = 0

    def reconnect(self):
        """A new connection (the server closes one left idle)."""
        if getattr(self, "connection", None) is not None:
            self.connection.close()
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def request(self, method, path, body=None, headers=None):
        self.connection.request(method, path, body, headers or {})
        response = self.connection.getresponse()
        return response.status, response.getheaders(), response.read()

    def timed(self, method, path, body=None, headers=None, expect=200):
        started = time.perf_counter()
        status, _, _ = self.request(method, path, body, headers)
        elapsed = (time.perf_counter() - started) * 1000
        assert status == expect, "%s %s answered %d" % (method, path, status)
        return elapsed

    def up(self):
        return self.timed("GET", "/up")

    def post(self, room_id, text=None):
        self.posted += 1
        body = urllib.parse.urlencode({"message[body]": text or "bench message %d" % self.posted,
                                       "message[client_message_id]": "bench-%d-%d" % (os.getpid(), self.posted)})
        return self.timed("POST", "/rooms/%d/messages" % room_id, body, {
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": self.cookie,
            "Sec-Fetch-Site": "same-origin"}, expect=201)


def cpu_seconds(pid):
    """CPU time (user + system) of a process's threads so far: (the main thread, all of them)."""
    tick = os.sysconf("SC_CLK_TCK")

    def of(path):
        with open(path) as file:
            fields = file.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick
    return of("/proc/%d/task/%d/stat" % (pid, pid)), of("/proc/%d/stat" % pid)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def describe(name, values, idle_p99=None):
    line = "  %-22s n=%4d  p50 %7.2f ms  p99 %7.2f ms  worst %7.2f ms" % (
        name, len(values), percentile(values, 0.5), percentile(values, 0.99), max(values))
    if idle_p99:
        line += "  (p99 %.1f x idle p99, worst %.1f x)" % (percentile(values, 0.99) / idle_p99,
                                                         max(values) / idle_p99)
    return line


def compare(name, idle, busy):
    idle_p99, busy_p99 = percentile(idle, 0.99), percentile(busy, 0.99)
    return "  %-14s p99 idle %7.2f ms  pushing %7.2f ms  = %.1f x" % (name, idle_p99, busy_p99, busy_p99 / idle_p99)


def undecryptable(received, browsers):
    """The names of pushes that are missing, repeated, or don't decrypt to the message."""
    bad = set(browsers) - {name for name, _ in received}
    seen = set()
    for name, body in received:
        try:
            payload = json.loads(browsers[name].decrypt(body))
            if name in seen or payload["options"]["body"] != "Ada: everyone: the office is closed tomorrow":
                bad.add(name)
        except Exception:
            bad.add(name)
        seen.add(name)
    return sorted(bad)


def main():
    print("Web Push")
    rate = pushes_per_second_per_core()
    print("  pushes encrypted and signed: %.0f per second per core (%.2f ms each)" % (rate, 1000 / rate))
    scratch = tempfile.mkdtemp(prefix="campfire-bench-push-")
    service = process = None
    try:
        certificates = make_test_ca(scratch)
        service = RemotePushService(certificates)
        storage = os.path.join(scratch, "storage")
        browsers = {}
        quiet = prepare_storage(storage, service, browsers)
        port = free_port()
        log = open(os.path.join(scratch, "server.log"), "ab")
        env = dict(os.environ, CAMPFIRE_STORAGE_PATH=storage, SSL_CERT_FILE=certificates["ca.pem"])
        command = [sys.executable, os.path.join(ROOT, "campfire.py")]
        if os.environ.get("BENCH_PUSH_PROFILE"):  # the module under cProfile (its worker processes import it too)
            command = [sys.executable, "-c", "import cProfile, sys; sys.path.insert(0, %r); import campfire; "
                       "cProfile.run('campfire.main()', %r)" % (ROOT, os.path.abspath(os.environ["BENCH_PUSH_PROFILE"]))]
        process = subprocess.Popen([*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
                                   env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                chat = Chat(port)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("campfire.py did not start")
                time.sleep(0.05)
        for _ in range(20):  # warm-up
            chat.up()
            chat.post(quiet)
        cpu_started = cpu_seconds(process.pid)
        idle_up, idle_post = [], []
        for _ in range(SAMPLES):
            idle_up.append(chat.up())
            idle_post.append(chat.post(quiet))
        cpu_idle = [after - before for before, after in zip(cpu_started, cpu_seconds(process.pid))]
        # Start the push worker process before measuring: its start is once per server.
        chat.post(1, "warming the push worker")
        deadline = time.monotonic() + PUSH_DEADLINE_SECONDS
        while service.count() < SUBSCRIBERS and time.monotonic() < deadline:
            time.sleep(0.05)
        service.ask("requests")
        chat.reconnect()
        chat.up()
        connections_before = service.ask("connections")
        busy_up, busy_post = [], []
        started, cpu_started = time.monotonic(), cpu_seconds(process.pid)
        chat.post(1, "everyone: the office is closed tomorrow")
        deadline = started + PUSH_DEADLINE_SECONDS
        pushed = 0
        while pushed < SUBSCRIBERS and time.monotonic() < deadline:
            busy_up.append(chat.up())
            busy_post.append(chat.post(quiet))
            pushed = service.count()
        elapsed = time.monotonic() - started
        cpu_busy = [after - before for before, after in zip(cpu_started, cpu_seconds(process.pid))]
        connections = service.ask("connections") - connections_before
        received = service.ask("requests")
        print("  %d subscribers: %d pushes delivered in %.1f s over %d new TLS connections "
              "(and those the warm-up push left open, reused)" % (SUBSCRIBERS, len(received), elapsed, connections))
        idle_p99_up, idle_p99_post = percentile(idle_up, 0.99), percentile(idle_post, 0.99)
        print(describe("GET /up, idle", idle_up))
        print(describe("GET /up, pushing", busy_up, idle_p99_up))
        print(describe("POST message, idle", idle_post))
        print(describe("POST message, pushing", busy_post, idle_p99_post))
        print(compare("GET /up", idle_up, busy_up))
        print(compare("POST message", idle_post, busy_post))
        # The server's own CPU for the pushes (its worker process's curve math aside): what
        # it spent while pushing less what the chat requests of that time cost while idle.
        pairs = len(busy_up) / SAMPLES
        loop, threads = ((busy - pairs * idle) * 1000 / SUBSCRIBERS for busy, idle in zip(cpu_busy, cpu_idle))
        print("  server CPU per push: %.2f ms in the event loop's thread, %.2f ms in all its threads" % (
            loop, threads))
        bad = undecryptable(received, browsers)
        if bad:
            print("  %d pushes missing or wrong, e.g. %s" % (len(bad), ", ".join(bad[:5])))
        return 2 if bad else 0
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if service is not None:
            service.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
