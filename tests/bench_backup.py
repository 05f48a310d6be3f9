#!/usr/bin/env python3
"""Backups while serving: how long one takes, and what it does to chat latency.

`make bench` runs `python3 tests/bench_backup.py`. Standard library only. It exits 0
whatever the figures are, except: 1 when the database cannot be built or campfire.py
cannot be started or signed in to, 2 when a check failed (a request not answered as
expected, a backup that failed or did not end in time), 130 on Ctrl-C. Everything runs
on 127.0.0.1, every step is bounded in time, and every process it starts is stopped at
the end.

The database
  BENCH_BACKUP_MB MiB (default 1024): `campfire.py seed --users 5 --rooms 3 --messages
  1000`, then messages of about BODY_CHARS characters each inserted straight into it
  (a message row, its rich text and its search row, as the server writes them; the
  search row holds the body's first words, so the search index stays small) in
  transactions of BATCH_MESSAGES until the file has the size. It is built once per
  size and kept in BENCH_CACHE_DIR (default /var/tmp/campfire-bench-<uid>), named by
  its size; each run copies it to a temporary storage, which the server migrates and
  writes to.

What it measures
  Chat latency  GET /up and a message POSTed to room 1, one after the other on one
                keep-alive connection signed in as person1 (an administrator): SAMPLES
                of each while idle; then as many as fit while each backup runs. p50,
                p99 and the worst, in ms, and the p99 and the worst as multiples of
                the idle p99 (the ceiling: the same requests on the same server,
                measured in the same run).
  Automatic     The server's own backup (BackupSchedule, on its backup thread; the
                server runs with BACKUP_INTERVAL=24h, so the first one starts
                BACKUP_START_DELAY after the start): it counts as running while its
                work folder (backups/.backup-*) exists; its time is the one it
                records in backups/status.json.
  Command       `campfire.py backup` run beside the serving server (the path an
                administrator uses): from its start to its exit, exit status 0.
  Both are online backups of the live database (SQLite's backup API, stepped),
  checked (integrity_check, the search index, the manifest) before they are kept."""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import campfire  # noqa: E402  (the constants the server itself uses)

HOST = "127.0.0.1"  # everything stays on the loopback interface
DATABASE_MB = int(os.environ.get("BENCH_BACKUP_MB", "1024"))
CACHE_DIR = os.environ.get("BENCH_CACHE_DIR") or "/var/tmp/campfire-bench-%d" % os.getuid()
SEED_ARGS = ["--users", "5", "--rooms", "3", "--messages", "1000"]
SEED_EMAIL_ADDRESS = "person1@example.com"
SEEDED_ADMIN_PASSWORD = re.compile(rb"\(an administrator\) with the password '([A-Za-z0-9]+)'")
BODY_CHARS = 4000            # a long message, so the size comes from few rows
BODY_VARIANTS = 257          # distinct bodies, used in turn
SEARCH_WORDS = 12            # words of a body in its search row
BATCH_MESSAGES = 5000        # per transaction while building
SAMPLES = 200                # requests of each kind measured while idle
BUILD_TIMEOUT_SECONDS = 3600
START_TIMEOUT_SECONDS = 60   # a start migrates the copied storage
AUTOMATIC_START_GRACE_SECONDS = 30  # beyond BACKUP_START_DELAY for the automatic backup to begin
BACKUP_TIMEOUT_SECONDS = 3600
REQUEST_TIMEOUT_SECONDS = 60
KEEP_ALIVE_SECONDS = 5       # a request this often while waiting (the server closes idle connections)
STOP_TIMEOUT_SECONDS = 15
EXIT_NOT_STARTED, EXIT_CHECKS_FAILED = 1, 2
WORDS = ("coffee release meeting deploy review lunch design customer invoice launch budget roadmap standup "
         "server metrics question answer holiday weekend office printer").split()


class CheckFailed(Exception):
    pass


def database_path(storage):
    return os.path.join(storage, "db", "production.sqlite3")


def build_database(storage, megabytes):
    """Seed a storage and fill its database to megabytes MiB; the administrator's password."""
    env = dict(os.environ, CAMPFIRE_STORAGE_PATH=storage, LOG_LEVEL="WARNING")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "campfire.py"), "seed", *SEED_ARGS], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=BUILD_TIMEOUT_SECONDS)
    found = SEEDED_ADMIN_PASSWORD.search(done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError("seeding failed: %s" % (done.stderr or done.stdout).decode(errors="replace")[-500:])
    target = megabytes * 1024 * 1024
    db = sqlite3.connect(database_path(storage), isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")  # a bench fixture: rebuilt if a crash cuts it short
        rooms = [row[0] for row in db.execute("SELECT id FROM rooms ORDER BY id")]
        users = [row[0] for row in db.execute("SELECT id FROM users ORDER BY id")]
        bodies = []
        for variant in range(BODY_VARIANTS):
            words, length = [], 0
            while length < BODY_CHARS:
                word = WORDS[(variant * 7 + len(words) * 13 + length) % len(WORDS)]
                words.append(word)
                length += len(word) + 1
            bodies.append((" ".join(words), "<div>%s</div>" % " ".join(words)))
        stamp = time.time() - 365 * 86400
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        number = db.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
        while db.execute("PRAGMA page_count").fetchone()[0] * page_size < target:
            db.execute("BEGIN")
            for _ in range(BATCH_MESSAGES):
                number += 1
                plain, html = bodies[number % BODY_VARIANTS]
                created = campfire.utc_now_text(stamp + number)
                message_id = db.execute(
                    "INSERT INTO messages (room_id, creator_id, client_message_id, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?)", (rooms[number % len(rooms)], users[number % len(users)],
                                               "bench-backup-%d" % number, created, created)).lastrowid
                db.execute("INSERT INTO action_text_rich_texts (name, body, record_type, record_id, created_at, "
                           "updated_at) VALUES ('body', ?, 'Message', ?, ?, ?)", (html, message_id, created, created))
                db.execute("INSERT INTO message_search_index (rowid, body) VALUES (?, ?)",
                           (message_id, " ".join(plain.split()[:SEARCH_WORDS])))
            db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return found.group(1).decode()


def cached_storage(megabytes):
    """(the cached storage of that size, the administrator's password, seconds it took, built?)."""
    folder = os.path.join(CACHE_DIR, "backup-%dmb" % megabytes)
    storage, password_file = os.path.join(folder, "storage"), os.path.join(folder, "password")
    started = time.monotonic()
    if os.path.exists(password_file):
        with open(password_file) as file:
            return storage, file.read().strip(), time.monotonic() - started, False
    shutil.rmtree(folder, ignore_errors=True)  # a build that was cut short
    os.makedirs(folder, mode=0o700)
    password = build_database(storage, megabytes)
    with open(password_file + ".new", "w") as file:
        file.write(password)
    os.replace(password_file + ".new", password_file)  # the mark that the build is whole
    return storage, password, time.monotonic() - started, True


def free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Chat:
    """One keep-alive connection, signed in as person1."""

    def __init__(self, port, password):
        self.connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_SECONDS)
        body = urllib.parse.urlencode({"email_address": SEED_EMAIL_ADDRESS, "password": password})
        status, headers = self.request("POST", "/session", body, {
            "Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-origin"})
        cookie = [value.split(";")[0] for name, value in headers if name.lower() == "set-cookie"]
        if status != 303 or not cookie:
            raise RuntimeError("signing in failed (%d)" % status)
        self.cookie = "; ".join(cookie)
        self.posted = 0

    def request(self, method, path, body=None, headers=None):
        self.connection.request(method, path, body, headers or {})
        response = self.connection.getresponse()
        response.read()
        return response.status, response.getheaders()

    def timed(self, method, path, body=None, headers=None, expect=200):
        started = time.perf_counter()
        status, _ = self.request(method, path, body, headers)
        elapsed = (time.perf_counter() - started) * 1000
        if status != expect:
            raise CheckFailed("%s %s answered %d" % (method, path, status))
        return elapsed

    def up(self):
        return self.timed("GET", "/up")

    def post(self):
        self.posted += 1
        body = urllib.parse.urlencode({"message[body]": "bench message %d" % self.posted,
                                       "message[client_message_id]": "bench-%d-%d" % (os.getpid(), self.posted)})
        return self.timed("POST", "/rooms/1/messages", body, {
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": self.cookie,
            "Sec-Fetch-Site": "same-origin"}, expect=201)

    def sample_while(self, running, deadline, what):
        ups, posts = [], []
        while running():
            if time.monotonic() > deadline:
                raise CheckFailed("%s did not end within %d s" % (what, BACKUP_TIMEOUT_SECONDS))
            ups.append(self.up())
            posts.append(self.post())
        return ups, posts


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def describe(name, values, idle_p99=None):
    if not values:
        return "  %-30s no requests fitted" % name
    line = "  %-30s n=%4d  p50 %7.2f ms  p99 %7.2f ms  worst %8.2f ms" % (
        name, len(values), percentile(values, 0.5), percentile(values, 0.99), max(values))
    if idle_p99:
        line += "  (p99 %.1f x, worst %.1f x idle p99)" % (percentile(values, 0.99) / idle_p99,
                                                          max(values) / idle_p99)
    return line


def stop(process):
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main():
    print("Backups (a %d MiB database)" % DATABASE_MB)
    try:
        cache, password, seconds, built = cached_storage(DATABASE_MB)
    except (RuntimeError, OSError, sqlite3.Error, subprocess.TimeoutExpired) as error:
        print("  the database could not be built: %s" % error)
        return EXIT_NOT_STARTED
    scratch = tempfile.mkdtemp(prefix="campfire-bench-backup-")
    server = command = None
    try:
        storage = os.path.join(scratch, "storage")
        shutil.copytree(cache, storage)
        size = os.path.getsize(database_path(storage))
        with sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(database_path(storage)), uri=True) as db:
            messages = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        db.close()
        print("  database: %.0f MiB, %d messages (%s in %.0f s; cached in %s)" % (
            size / 1048576, messages, "built" if built else "taken from the cache", seconds, cache))
        port = free_port()
        env = dict(os.environ, CAMPFIRE_STORAGE_PATH=storage, BACKUP_INTERVAL="24h", LOG_LEVEL="WARNING")
        env.pop("BACKUP_URL", None)
        log = open(os.path.join(scratch, "server.log"), "ab")
        started = time.monotonic()
        server = subprocess.Popen([sys.executable, os.path.join(ROOT, "campfire.py"), "serve", "--host", HOST,
                                   "--port", str(port)], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = started + START_TIMEOUT_SECONDS
        while True:
            try:
                chat = Chat(port, password)
                break
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline or server.poll() is not None:
                    print("  campfire.py did not start (see %s)" % log.name)
                    return EXIT_NOT_STARTED
                time.sleep(0.05)
        for _ in range(20):  # warm-up
            chat.up()
            chat.post()
        idle_up = [chat.up() for _ in range(SAMPLES)]
        idle_post = [chat.post() for _ in range(SAMPLES)]

        # The server's own backup, when its schedule starts it.
        backups = os.path.join(storage, campfire.BACKUP_DIR_NAME)

        def working():
            try:
                return any(name.startswith(campfire.BACKUP_WORK_PREFIX) for name in os.listdir(backups))
            except FileNotFoundError:
                return False

        def backup_status():
            try:
                with open(os.path.join(backups, campfire.BACKUP_STATUS_FILE)) as file:
                    return json.load(file)
            except (OSError, ValueError):  # not written yet, or being replaced
                return {}

        def recorded_since(status, moment):
            return any((status.get(outcome) or {}).get("time", 0) >= moment
                       for outcome in ("last_success", "last_failure"))

        def automatic_running():  # its work folder goes before its outcome is recorded
            return working() or not recorded_since(backup_status(), automatic_started)
        begin_by = started + campfire.BACKUP_START_DELAY + AUTOMATIC_START_GRACE_SECONDS
        kept_alive = time.monotonic()
        while not working():
            if time.monotonic() > begin_by:
                raise CheckFailed("the automatic backup did not start within %d s of the server's start"
                                  % (campfire.BACKUP_START_DELAY + AUTOMATIC_START_GRACE_SECONDS))
            if time.monotonic() - kept_alive > KEEP_ALIVE_SECONDS:  # not measured: the connection stays open
                chat.up()
                kept_alive = time.monotonic()
            time.sleep(0.02)
        automatic_started = time.time() - 1  # the status records wall-clock times; it began at most this early
        auto_up, auto_post = chat.sample_while(automatic_running, time.monotonic() + BACKUP_TIMEOUT_SECONDS,
                                               "the automatic backup")
        status = backup_status()
        success = status.get("last_success")
        if not success or (status.get("last_failure") or {}).get("time", 0) > success.get("time", 0):
            raise CheckFailed("the automatic backup failed: %s" % (status.get("last_failure") or {}).get("error"))
        print("  automatic backup (the server's backup thread): %.1f s, archive %.0f MiB" % (
            success["seconds"], success["size"] / 1048576))

        # An administrator's `campfire.py backup` beside the running server.
        command_started = time.monotonic()
        command = subprocess.Popen([sys.executable, os.path.join(ROOT, "campfire.py"), "backup"], env=env,
                                   stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        command_up, command_post = chat.sample_while(lambda: command.poll() is None,
                                                     command_started + BACKUP_TIMEOUT_SECONDS, "campfire.py backup")
        command_seconds = time.monotonic() - command_started
        if command.returncode != 0:
            raise CheckFailed("campfire.py backup exited with %d (see %s)" % (command.returncode, log.name))
        print("  `campfire.py backup` beside the server: %.1f s (start to exit)" % command_seconds)

        idle_p99_up, idle_p99_post = percentile(idle_up, 0.99), percentile(idle_post, 0.99)
        print(describe("GET /up, idle", idle_up))
        print(describe("GET /up, automatic backup", auto_up, idle_p99_up))
        print(describe("GET /up, backup command", command_up, idle_p99_up))
        print(describe("POST message, idle", idle_post))
        print(describe("POST message, automatic backup", auto_post, idle_p99_post))
        print(describe("POST message, backup command", command_post, idle_p99_post))
        return 0
    except CheckFailed as error:
        print("  FAILED checks: %s" % error)
        return EXIT_CHECKS_FAILED
    except KeyboardInterrupt:
        return 130
    finally:
        stop(command)
        stop(server)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
