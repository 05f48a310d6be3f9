"""Durability: what the server acknowledged survives SIGKILL.

Several clients post over real sockets to a server process on 127.0.0.1; the
server is killed with SIGKILL at random moments and started again, round after
round. A client that loses its answer retries the same post (the same
client_message_id) on the next server, as Campfire's composer does. At the end
every acknowledged post is in the database exactly once, and no post is there
twice. The second test does the same while `backup` runs beside the server,
and checks each archive holds every post acknowledged before it began."""

import collections
import http.client
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import first_run_cookie, campfire  # noqa: E402

ROUNDS = 20                  # SIGKILLs per test
CLIENTS = 4                  # connections posting at once
KILL_AFTER = (0.01, 0.15)    # seconds of posting before a kill, drawn at random each round
TEST_DEADLINE = 150.0        # seconds: a test that takes longer fails instead of hanging the suite
STEP_TIMEOUT = 20.0          # seconds for one start, one post or one backup
CAMPFIRE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# As the script starts itself (python -S, the module from its cached bytecode), in one process.
BOOT = "import sys; sys.path.insert(0, %r); import campfire; sys.exit(campfire.main())" % CAMPFIRE_DIR


def command(storage, *argv):
    env = dict(os.environ, CAMPFIRE_STORAGE_PATH=storage, BACKUP_INTERVAL="0", CAMPFIRE_AS_MODULE="1")
    return [sys.executable, "-S", "-c", BOOT, *argv], env


class Server:
    """One server process; start() returns once it listens, on a port of its own."""

    def __init__(self, storage):
        argv, env = command(storage, "serve", "--host", "127.0.0.1", "--port", "0")
        self.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        self.port = None
        found = threading.Event()
        self.log = []

        def read_log():  # the log is read to its end, so the server never blocks on a full pipe
            for line in self.process.stderr:
                self.log.append(line)
                if self.port is None and " listening on http://127.0.0.1:" in line:
                    self.port = int(line.rsplit(":", 1)[1])
                    found.set()
            found.set()
        self.reader = threading.Thread(target=read_log, daemon=True)
        self.reader.start()
        if not found.wait(STEP_TIMEOUT) or self.port is None:
            self.kill()
            raise AssertionError("the server did not start:\n" + "".join(self.log))

    def kill(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(STEP_TIMEOUT)
        self.reader.join(STEP_TIMEOUT)
        self.process.stderr.close()


class Poster(threading.Thread):
    """Posts "<name>-<n>" one after another; an answer lost to a kill means the same
    post again, on whichever server is up next."""

    def __init__(self, name, cookie, endpoint, acknowledged, lock):
        super().__init__(daemon=True)
        self.name, self.cookie, self.endpoint = name, cookie, endpoint
        self.acknowledged, self.lock = acknowledged, lock
        self.stopping = threading.Event()
        self.lost_answers = 0
        self.acknowledgements = 0
        self.failure = None

    def run(self):
        number, connection, port, retrying = 0, None, None, False
        while not self.stopping.is_set():
            current = self.endpoint["port"]
            if current is None:
                time.sleep(0.005)
                continue
            if connection is None or port != current:
                if connection is not None:
                    connection.close()
                connection, port = http.client.HTTPConnection("127.0.0.1", current, timeout=STEP_TIMEOUT), current
            post_id = "%s-%d" % (self.name, number)
            body = urllib.parse.urlencode({"message[body]": "post " + post_id, "message[client_message_id]": post_id})
            try:
                connection.request("POST", "/rooms/1/messages", body, {
                    "Cookie": "session_token=" + self.cookie, "Sec-Fetch-Site": "same-origin",
                    "Content-Type": "application/x-www-form-urlencoded"})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):  # refused, reset, cut by the kill: the same post again
                self.lost_answers += 1
                connection.close()
                connection, retrying = None, True
                continue
            # A retry of a post that was stored gets it back with 200, as Campfire answers.
            if response.status != 201 and not (retrying and response.status == 200):
                self.failure = "post %s answered %d" % (post_id, response.status)
                return
            with self.lock:
                self.acknowledged.append(post_id)
            number, retrying = number + 1, False
            self.acknowledgements += 1
        if connection is not None:
            connection.close()


def posts_in(database):
    connection = sqlite3.connect(database)
    try:
        ok = connection.execute("PRAGMA integrity_check").fetchone()[0]
        rows = connection.execute(
            "SELECT messages.client_message_id, action_text_rich_texts.body FROM messages "
            "JOIN action_text_rich_texts ON action_text_rich_texts.record_type = 'Message' "
            "AND action_text_rich_texts.record_id = messages.id").fetchall()
    finally:
        connection.close()
    return ok, rows


class SigkillTests(unittest.TestCase):
    def setUp(self):
        self.storage = tempfile.mkdtemp(prefix="campfire-durability-")
        self.addCleanup(shutil.rmtree, self.storage, True)
        self.database = os.path.join(self.storage, "db", "production.sqlite3")
        self.seed = random.randrange(2 ** 32)
        self.random = random.Random(self.seed)
        self.started = time.monotonic()

    def check_time(self):
        self.assertLess(time.monotonic() - self.started, TEST_DEADLINE, "seed %d" % self.seed)

    def run_rounds(self, backup=False):
        """ROUNDS kills under CLIENTS posters. Returns the acknowledged ids and, with backup,
        each round's (backup process, ids acknowledged before it began, whether it ran at the kill)."""
        server = Server(self.storage)
        cookie = first_run_cookie(server.port)
        endpoint, acknowledged, lock = {"port": server.port}, [], threading.Lock()
        posters = [Poster("c%d" % number, cookie, endpoint, acknowledged, lock) for number in range(CLIENTS)]
        for poster in posters:
            poster.start()
        backups = []

        def begin_backup():  # what was acknowledged before it began, and the backup
            with lock:
                return list(acknowledged), self.start_backup()
        pending = begin_backup() if backup else None
        try:
            for number in range(ROUNDS):
                self.check_time()
                if backup:
                    before, process = pending
                    self.wait_for_copying(process)
                time.sleep(self.random.uniform(*KILL_AFTER))
                endpoint["port"] = None
                if backup:
                    backups.append((process, before, process.poll() is None))
                server.kill()
                # The next backup starts beside the next server (each reads the database the kill left).
                if backup and number + 1 < ROUNDS:
                    pending = begin_backup()
                server = Server(self.storage)
                endpoint["port"] = server.port
            # The last server stays up until every poster's post in doubt is settled.
            counts = [poster.acknowledgements for poster in posters]
            while any(poster.acknowledgements <= count and poster.failure is None
                      for poster, count in zip(posters, counts)):
                self.check_time()
                time.sleep(0.01)
        finally:
            for poster in posters:
                poster.stopping.set()
            for poster in posters:
                poster.join(STEP_TIMEOUT)
            server.kill()
            for process in [process for process, _, _ in backups] + ([pending[1]] if pending else []):
                if process.poll() is None:
                    process.wait(STEP_TIMEOUT)
        for poster in posters:
            self.assertIsNone(poster.failure, "seed %d" % self.seed)
        self.assertGreater(sum(poster.lost_answers for poster in posters), 0)  # kills did land mid-post
        return acknowledged, backups

    def start_backup(self):
        argv, env = command(self.storage, "backup")
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def wait_for_copying(self, process):
        """Until `backup` has begun copying the database (its work folder exists), or has ended."""
        folder = os.path.join(self.storage, "backups")
        deadline = time.monotonic() + STEP_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline and not (
                os.path.isdir(folder) and any(name.startswith(campfire.BACKUP_WORK_PREFIX)
                                              for name in os.listdir(folder))):
            time.sleep(0.002)

    def assert_each_acknowledged_post_once(self, acknowledged, rows, what):
        ids = collections.Counter(post_id for post_id, _ in rows)
        repeated = sorted(post_id for post_id, count in ids.items() if count > 1)
        self.assertEqual(repeated, [], "%s: posts stored twice (seed %d)" % (what, self.seed))
        missing = sorted(set(acknowledged) - set(ids))
        self.assertEqual(missing, [], "%s: acknowledged posts lost (seed %d)" % (what, self.seed))
        bodies = dict(rows)
        for post_id in acknowledged:
            self.assertIn("post " + post_id, bodies[post_id])

    def test_every_acknowledged_post_survives_sigkill_exactly_once(self):
        acknowledged, _ = self.run_rounds()
        self.assertGreater(len(acknowledged), ROUNDS)
        ok, rows = posts_in(self.database)
        self.assertEqual(ok, "ok")
        self.assertEqual(len(set(acknowledged)), len(acknowledged))
        self.assert_each_acknowledged_post_once(acknowledged, rows, "the database")

    def test_every_acknowledged_post_survives_sigkill_during_a_backup(self):
        acknowledged, backups = self.run_rounds(backup=True)
        self.assertGreater(len(acknowledged), ROUNDS)
        ok, rows = posts_in(self.database)
        self.assertEqual(ok, "ok")
        self.assert_each_acknowledged_post_once(acknowledged, rows, "the database")
        for process, before, _ in backups:
            out, err = process.communicate(timeout=STEP_TIMEOUT)
            self.assertEqual(process.returncode, 0, err)
            archive = out.split("Backed up to ", 1)[1].split(" (", 1)[0]
            with tarfile.open(archive) as tar, tempfile.TemporaryDirectory() as work:
                tar.extract(campfire.BACKUP_DATABASE_MEMBER, work)
                ok, rows = posts_in(os.path.join(work, campfire.BACKUP_DATABASE_MEMBER))
            self.assertEqual(ok, "ok", archive)
            self.assert_each_acknowledged_post_once(before, rows, archive)
        self.assertGreater(sum(running for _, _, running in backups), 0, "no kill came while a backup ran")


if __name__ == "__main__":
    unittest.main()
