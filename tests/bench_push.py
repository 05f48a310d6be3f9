#!/usr/bin/env python3
"""Web Push under load: what a push costs, and whether pushing stalls chat.

`make bench` runs this after the other benchmarks. It prints:
  pushes/s/core  push_request_parts (Campfire's payload, RFC 8291 encryption with a
                 fresh ephemeral key, the VAPID header from its cache) in a loop on
                 one core for PUSH_RATE_SECONDS, CPU time
  chat latency   `campfire.py serve` on 127.0.0.1 with SUBSCRIBERS people who get
                 every message of room 1, each subscribed at an HTTPS push service
                 in this process (its CA passed through SSL_CERT_FILE). GET /up and
                 a message POSTed to room 2 (no subscribers), one after the other
                 on one keep-alive connection: SAMPLES of each while idle, then as
                 many as fit while one message to room 1 is pushed to every
                 subscriber; p50, p99 and the worst, in ms, and the worst as a
                 multiple of the idle p99.
Every step is bounded in time and the server is stopped at the end. Exit status 2
when a push went missing or a request failed."""

import http.client
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
SAMPLES = 200               # requests of each kind measured while idle
PUSH_RATE_SECONDS = 2.0
PUSH_DEADLINE_SECONDS = 180  # for every push of the loaded run to arrive
START_TIMEOUT_SECONDS = 20
PASSWORD = "bench-password"


def pushes_per_second_per_core():
    key = campfire.VapidKey.generate()
    # What the worker's initializer sets up, without its lower priority (this process
    # also runs the push service and the chat client below).
    campfire._push_signer = campfire.VapidSigner(key, campfire.VAPID_SUBJECT)
    browser = Browser("https://push.example.com/bench")
    arguments = ("Room 01", "Person 2: the build is green", "/rooms/1", 3, browser.endpoint, browser.p256dh,
                 b64url(browser.auth))
    campfire.push_request_parts(*arguments)  # the fixed-base table and the token, once
    count, started = 0, time.process_time()
    while time.process_time() - started < PUSH_RATE_SECONDS:
        campfire.push_request_parts(*arguments)
        count += 1
    return count / (time.process_time() - started)


def prepare_storage(storage, service):
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
            browser = Browser(service.endpoint("p%d" % number))
            app.store.subscribe_push(user_id, browser.endpoint, browser.p256dh, b64url(browser.auth), "bench")
    app.close()
    return quiet


class Chat:
    """One keep-alive connection, signed in as the administrator."""

    def __init__(self, port):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = urllib.parse.urlencode({"email_address": "ada@example.com", "password": PASSWORD})
        status, headers, _ = self.request("POST", "/session", body, {"Content-Type": "application/x-www-form-urlencoded"})
        cookie = [value.split(";")[0] for name, value in headers if name.lower() == "set-cookie"]
        assert status == 303 and cookie, "signing in failed (%d)" % status
        self.cookie = "; ".join(cookie)
        self.posted = 0

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


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def describe(name, values, idle_p99=None):
    line = "  %-22s n=%4d  p50 %7.2f ms  p99 %7.2f ms  worst %7.2f ms" % (
        name, len(values), percentile(values, 0.5), percentile(values, 0.99), max(values))
    if idle_p99:
        line += "  (worst = %.1f x idle p99)" % (max(values) / idle_p99)
    return line


def main():
    print("Web Push")
    rate = pushes_per_second_per_core()
    print("  pushes encrypted and signed: %.0f per second per core (%.2f ms each)" % (rate, 1000 / rate))
    scratch = tempfile.mkdtemp(prefix="campfire-bench-push-")
    service = process = None
    try:
        certificates = make_test_ca(scratch)
        service = PushService(certificates)
        storage = os.path.join(scratch, "storage")
        quiet = prepare_storage(storage, service)
        port = free_port()
        log = open(os.path.join(scratch, "server.log"), "ab")
        env = dict(os.environ, CAMPFIRE_STORAGE_PATH=storage, SSL_CERT_FILE=certificates["ca.pem"])
        process = subprocess.Popen([sys.executable, os.path.join(ROOT, "campfire.py"), "serve", "--host", "127.0.0.1",
                                    "--port", str(port)], env=env, stdout=log, stderr=log)
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
        idle_up = [chat.up() for _ in range(SAMPLES)]
        idle_post = [chat.post(quiet) for _ in range(SAMPLES)]
        # Start the push worker process before measuring: its start is once per server.
        chat.post(1, "warming the push worker")
        deadline = time.monotonic() + PUSH_DEADLINE_SECONDS
        while len(service.requests) < SUBSCRIBERS and time.monotonic() < deadline:
            time.sleep(0.05)
        service.requests.clear()
        busy_up, busy_post = [], []
        started = time.monotonic()
        chat.post(1, "everyone: the office is closed tomorrow")
        deadline = started + PUSH_DEADLINE_SECONDS
        while len(service.requests) < SUBSCRIBERS and time.monotonic() < deadline:
            busy_up.append(chat.up())
            busy_post.append(chat.post(quiet))
        pushed, elapsed = len(service.requests), time.monotonic() - started
        print("  %d subscribers: %d pushes delivered in %.1f s" % (SUBSCRIBERS, pushed, elapsed))
        idle_p99_up, idle_p99_post = percentile(idle_up, 0.99), percentile(idle_post, 0.99)
        print(describe("GET /up, idle", idle_up))
        print(describe("GET /up, pushing", busy_up, idle_p99_up))
        print(describe("POST message, idle", idle_post))
        print(describe("POST message, pushing", busy_post, idle_p99_post))
        return 0 if pushed == SUBSCRIBERS else 2
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
