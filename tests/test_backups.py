"""Backups and operations: the backup, backups, restore, check, create-admin,
reset-password and recipe commands end to end on real storages (ours and one
Rails wrote); automatic backups while serving, their retention and their
failures; archives that are damaged, hostile or from a newer Campfire."""

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
from unittest import mock

from tests.helpers import AppTestCase, Client, LiveServer, _session_cookie, campfire, first_run_cookie, make_app
from tests.test_storage import rails_database

CAMPFIRE_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "campfire.py")
HOUR = 3600


def run_cli(*args, storage=None, stdin="", env=None, timeout=120):
    """campfire.py in a child process, as a person runs it: (exit status, stdout, stderr)."""
    environment = dict(os.environ)
    environment.pop("BACKUP_URL", None)
    environment.update(env or {})
    if storage is not None:
        environment["CAMPFIRE_STORAGE_PATH"] = storage
    done = subprocess.run([sys.executable, CAMPFIRE_PY, *args], input=stdin, capture_output=True, text=True,
                          env=environment, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def post(client, room_id, body, client_id=None):
    response = client.post("/rooms/%d/messages" % room_id, {"message[body]": body,
                                                            "message[client_message_id]": client_id or body})
    assert response.status == 201, (response.status, response.text[:300])
    return response


def message_rows(database):
    connection = sqlite3.connect(database)
    try:
        return connection.execute(
            "SELECT messages.id, messages.client_message_id, action_text_rich_texts.body FROM messages "
            "JOIN action_text_rich_texts ON record_type = 'Message' AND record_id = messages.id "
            "ORDER BY messages.id").fetchall()
    finally:
        connection.close()


def rewrite_archive(source, target, change):
    """A copy of a backup archive with its members passed through change(name, bytes) → (name, bytes) or None."""
    with tarfile.open(source) as old, tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as new:
        for info in old:
            data = old.extractfile(info).read()
            changed = change(info.name, data)
            if changed is None:
                continue
            name, data = changed
            member = tarfile.TarInfo(name)
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))


class StorageCase(AppTestCase):
    """A storage with an account, two people, messages, a mention and an uploaded file."""

    def setUp(self):
        super().setUp()
        self.first_run()
        self.room_id = 1  # All Talk
        for number in range(30):
            post(self.client, self.room_id, "message number %d about coffee" % number)
        post(self.client, self.room_id, "hello @Ada Admin", "mention")
        self.upload = os.path.join(self.storage, "files", "ab", "cd", "abcdkey1")
        os.makedirs(os.path.dirname(self.upload))
        with open(self.upload, "wb") as file:
            file.write(os.urandom(70_000))
        self.app.close()
        self.app = None
        self.work = tempfile.mkdtemp(prefix="campfire-backup-test-")

    def tearDown(self):
        if self.app is not None:
            self.app.close()
        shutil.rmtree(self.storage, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)

    @property
    def database(self):
        return os.path.join(self.storage, "db", "production.sqlite3")

    def archives(self, folder=None):
        folder = folder or os.path.join(self.storage, "backups")
        return sorted(name for name in os.listdir(folder) if campfire.backup_time(name) is not None)


class BackupAndRestoreCommandTests(StorageCase):
    def test_backup_lists_and_restores_into_an_empty_storage(self):
        status, out, err = run_cli("backup", storage=self.storage)
        self.assertEqual(status, 0, err)
        self.assertIn("checked", out)
        [name] = self.archives()
        archive = os.path.join(self.storage, "backups", name)
        self.assertEqual(os.stat(archive).st_mode & 0o777, 0o600)  # it holds the secret and password digests
        manifest = campfire.read_manifest(archive)
        self.assertEqual(manifest["counts"]["messages"], 31)
        self.assertEqual(manifest["schema_version"], campfire.CURRENT_SCHEMA_VERSION)
        self.assertEqual(manifest["checks"], {"integrity_check": "ok", "search_index": "ok", "search_rows": "ok"})
        paths = {entry["path"] for entry in manifest["files"]}
        self.assertEqual(paths, {"files/ab/cd/abcdkey1", "secret_key_base"})

        status, out, err = run_cli("backups", storage=self.storage)
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"%s\s+\S+ \S+\s+just now\s+ok" % name)

        restored = os.path.join(self.work, "restored")
        status, out, err = run_cli("restore", archive, storage=restored)
        self.assertEqual(status, 0, err)
        self.assertIn("31 messages", out)
        self.assertEqual(message_rows(os.path.join(restored, "db", "production.sqlite3")), message_rows(self.database))
        with open(self.upload, "rb") as original, open(os.path.join(restored, "files/ab/cd/abcdkey1"), "rb") as copy:
            self.assertEqual(original.read(), copy.read())
        # The restored storage serves: search finds the messages, the mention still names Ada
        # (its signature needs the restored secret), and Ada signs in with her password.
        app = make_app(restored)
        try:
            client = Client(app)
            response = client.post("/session", {"email_address": "ada@example.com", "password": "secret-password"})
            self.assertEqual(response.status, 303)
            self.assertEqual(client.get("/searches?q=coffee").text.count('data-message-id='), 30)
            page = client.get("/rooms/%d" % self.room_id).text
            self.assertIn('<span class="mention" data-user-id="1">', page)
        finally:
            app.close()

    def test_backup_to_a_path_is_self_contained(self):
        status, out, err = run_cli("backup", self.work, storage=self.storage)
        self.assertEqual(status, 0, err)
        [name] = os.listdir(self.work)
        with tarfile.open(os.path.join(self.work, name)) as tar:
            names = tar.getnames()
        self.assertEqual(names[:2], ["manifest.json", "database.sqlite3"])
        self.assertEqual(len([n for n in names if n.startswith("content/")]), 2)
        restored = os.path.join(self.work, "elsewhere")
        status, _, err = run_cli("restore", os.path.join(self.work, name), storage=restored)
        self.assertEqual(status, 0, err)
        self.assertTrue(os.path.isfile(os.path.join(restored, "files/ab/cd/abcdkey1")))
        # An existing file is never replaced.
        status, _, err = run_cli("backup", os.path.join(self.work, name), storage=self.storage)
        self.assertEqual(status, 1)
        self.assertIn("never replaces", err)

    def test_two_backups_of_the_same_second_both_succeed_under_their_own_names(self):
        # The automatic backup and `campfire.py backup` started in the same second pick the
        # same name; the one that finishes second takes the next one, and neither fails.
        config = campfire.Config(storage_path=self.storage)
        second = []

        def progress(step, done, total):
            if (step, done) == ("verify", 1) and not second:   # the first is about to take its name
                second.append(campfire.write_backup(config, now=1_700_000_000))

        first = campfire.write_backup(config, now=1_700_000_000, progress=progress)
        folder = os.path.join(self.storage, "backups")
        self.assertEqual(os.path.basename(second[0].path), "campfire-20231114T221320Z.tar")
        self.assertEqual(os.path.basename(first.path), "campfire-20231114T221320Z-2.tar")
        self.assertEqual(sorted(name for name in os.listdir(folder) if name.endswith(".tar")),
                         ["campfire-20231114T221320Z-2.tar", "campfire-20231114T221320Z.tar"])
        self.assertEqual([name for name in os.listdir(folder) if name.endswith(".partial")], [])
        for result in (first, second[0]):
            campfire.verify_backup(result.path, content_dir=os.path.join(folder, "content"))

    def test_hourly_backups_store_a_file_once(self):
        config = campfire.Config(storage_path=self.storage)
        first = campfire.write_backup(config, now=1_700_000_000)
        second = campfire.write_backup(config, now=1_700_000_000 + HOUR)
        content = os.path.join(self.storage, "backups", "content")
        self.assertEqual(len(os.listdir(content)), 2)  # the upload and the secret, once for both backups
        self.assertLess(second.size, 70_000 + os.path.getsize(self.database))
        with mock.patch.object(campfire, "_store_content", side_effect=AssertionError("read again")):
            campfire.write_backup(config, now=1_700_000_000 + 2 * HOUR)  # unchanged: not copied, not even read
        self.assertEqual({e["sha256"] for e in first.manifest["files"]},
                         {e["sha256"] for e in second.manifest["files"]})

    def test_restore_refuses_data_without_force_and_sets_it_aside_with_force(self):
        self.assertEqual(run_cli("backup", storage=self.storage)[0], 0)
        archive = os.path.join(self.storage, "backups", self.archives()[0])
        before = message_rows(self.database)
        connection = sqlite3.connect(self.database)
        connection.execute("DELETE FROM boosts")
        connection.execute("UPDATE action_text_rich_texts SET body = 'changed after the backup'")
        connection.commit()
        connection.close()
        status, _, err = run_cli("restore", archive, storage=self.storage)
        self.assertEqual(status, 3, err)
        self.assertIn("--force", err)
        self.assertEqual(message_rows(self.database)[0][2], "changed after the backup")

        status, out, err = run_cli("restore", "--force", archive, storage=self.storage)
        self.assertEqual(status, 0, err)
        self.assertEqual(message_rows(self.database), before)
        [aside] = [name for name in os.listdir(self.storage) if name.startswith("replaced-")]
        self.assertIn(aside, out)
        kept = os.path.join(self.storage, aside, "db", "production.sqlite3")
        self.assertEqual(message_rows(kept)[0][2], "changed after the backup")
        self.assertTrue(os.path.isfile(os.path.join(self.storage, aside, "files/ab/cd/abcdkey1")))
        self.assertEqual(self.archives(), [os.path.basename(archive)])  # the backups stay where they were

    def test_restore_refuses_while_a_server_runs_on_the_storage(self):
        self.assertEqual(run_cli("backup", storage=self.storage)[0], 0)
        archive = os.path.join(self.storage, "backups", self.archives()[0])
        env = dict(os.environ, CAMPFIRE_STORAGE_PATH=self.storage, BACKUP_INTERVAL="0")
        server = subprocess.Popen([sys.executable, CAMPFIRE_PY, "serve", "--port", "0", "--host", "127.0.0.1"],
                                  env=env, stderr=subprocess.PIPE, text=True)
        try:
            line = ""
            while "listening" not in line and server.poll() is None:
                line = server.stderr.readline()  # the server's log; it ends when the server does
            self.assertIn("listening", line)
            status, _, err = run_cli("restore", "--force", archive, storage=self.storage)
            self.assertEqual(status, 3, err)
            self.assertIn("server is running", err)
            second = run_cli("serve", "--port", "0", "--host", "127.0.0.1", storage=self.storage, timeout=30)
            self.assertEqual(second[0], 1)
            self.assertIn("Another Campfire server is running", second[2])
        finally:
            server.terminate()
            server.wait(30)
            server.stderr.close()
        self.assertEqual(run_cli("restore", "--force", archive, storage=self.storage)[0], 0)

    def test_damaged_archives_are_refused_and_change_nothing(self):
        self.assertEqual(run_cli("backup", self.work, storage=self.storage)[0], 0)
        [name] = os.listdir(self.work)
        archive = os.path.join(self.work, name)
        target = os.path.join(self.work, "target")

        def flip_database_byte(member, data):
            if member == "database.sqlite3":
                data = data[:5000] + bytes([data[5000] ^ 1]) + data[5001:]
            return member, data

        def escape(member, data):
            if member == "manifest.json":
                manifest = json.loads(data)
                manifest["files"][0]["path"] = "../outside"
                data = json.dumps(manifest).encode()
            return member, data

        def newer_schema(member, data):
            if member == "manifest.json":
                manifest = json.loads(data)
                manifest["schema_version"] = campfire.CURRENT_SCHEMA_VERSION + 1
                manifest["migrations"].append("%04d_from_the_future" % (campfire.CURRENT_SCHEMA_VERSION + 1))
                data = json.dumps(manifest).encode()
            return member, data

        def drop_a_file(member, data):
            return None if member.startswith("content/") else (member, data)

        cases = [(flip_database_byte, 1, "does not match"), (escape, 1, "damaged"),
                 (newer_schema, 3, "newer Campfire"), (drop_a_file, 1, "neither in it")]
        for change, expected_status, message in cases:
            with self.subTest(change.__name__):
                bad = os.path.join(self.work, change.__name__ + ".tar")
                rewrite_archive(archive, bad, change)
                status, _, err = run_cli("restore", bad, storage=target)
                self.assertEqual(status, expected_status, err)
                self.assertIn(message, err)
                self.assertFalse(os.path.exists(os.path.join(target, "db")))
                self.assertFalse(os.path.exists(os.path.join(os.path.dirname(self.work), "outside")))
        with open(archive, "rb") as file:
            data = file.read()
        with open(os.path.join(self.work, "cut.tar"), "wb") as file:
            file.write(data[:len(data) // 2])
        status, _, err = run_cli("restore", os.path.join(self.work, "cut.tar"), storage=target)
        self.assertEqual(status, 1, err)
        self.assertEqual(sorted(os.listdir(target)), [".campfire.lock"])

    def test_backups_verify_finds_a_damaged_archive(self):
        self.assertEqual(run_cli("backup", storage=self.storage)[0], 0)
        [name] = self.archives()
        content = os.path.join(self.storage, "backups", "content")
        victim = os.path.join(content, os.listdir(content)[0])
        with open(victim, "ab") as file:
            file.write(b"rot")
        status, out, _ = run_cli("backups", storage=self.storage)
        self.assertEqual(status, 0)  # the manifest alone still reads
        status, out, _ = run_cli("backups", "--verify", storage=self.storage)
        self.assertEqual(status, 1)
        self.assertIn("damaged", out)

    def test_interrupted_backup_leaves_nothing_behind(self):
        class Interrupting:
            def __init__(self, *args):
                pass

            def __call__(self, label, done, total):
                if label == "archive" and done:
                    raise KeyboardInterrupt
        with mock.patch.object(campfire, "ProgressBar", Interrupting), \
                mock.patch.dict(os.environ, {"CAMPFIRE_STORAGE_PATH": self.storage}), \
                mock.patch("sys.stderr", io.StringIO()):
            status = campfire.main(["backup"])
        self.assertEqual(status, campfire.EXIT_INTERRUPTED)
        folder = os.path.join(self.storage, "backups")
        self.assertEqual([name for name in os.listdir(folder) if name.endswith(".partial") or
                          name.startswith((".backup-", "campfire-"))], [])

    def test_cancelled_backup_in_the_database_copy_leaves_nothing_behind(self):
        config = campfire.Config(storage_path=self.storage)
        steps = []

        def cancelled():
            steps.append(1)
            return len(steps) > 1
        with self.assertRaises(campfire.BackupCancelled):
            campfire.write_backup(config, cancelled=cancelled, step_pages=1)
        self.assertEqual(sorted(os.listdir(os.path.join(self.storage, "backups"))), ["content"])


class RailsStorageTests(unittest.TestCase):
    def test_a_storage_rails_wrote_is_backed_up_checked_and_restored(self):
        work = tempfile.mkdtemp(prefix="campfire-rails-backup-")
        self.addCleanup(shutil.rmtree, work, True)
        storage = os.path.join(work, "storage")
        os.makedirs(os.path.join(storage, "db"))
        database = os.path.join(storage, "db", "production.sqlite3")
        rails_database(database)
        connection = sqlite3.connect(database)
        stamp = "2025-03-04 05:06:07.123456"
        connection.execute("INSERT INTO messages (room_id, creator_id, client_message_id, created_at, updated_at) "
                           "VALUES (1, 1, 'c1', ?, ?)", (stamp, stamp))
        connection.execute("INSERT INTO action_text_rich_texts (name, body, record_type, record_id, created_at, "
                           "updated_at) VALUES ('body', '<div>From Rails</div>', 'Message', 1, ?, ?)", (stamp, stamp))
        connection.execute("INSERT INTO message_search_index (rowid, body) VALUES (1, 'From Rails')")
        connection.commit()
        connection.close()
        status, out, err = run_cli("check", storage=storage)
        self.assertEqual(status, 0, out + err)
        self.assertIn("Schema version 0", out)  # Rails' own: none of our migrations yet
        status, out, err = run_cli("backup", storage=storage)
        self.assertEqual(status, 0, err)
        archive = os.path.join(storage, "backups", [n for n in os.listdir(os.path.join(storage, "backups"))
                                                    if n.endswith(".tar")][0])
        restored = os.path.join(work, "restored")
        self.assertEqual(run_cli("restore", archive, storage=restored)[0], 0)
        copy = sqlite3.connect(os.path.join(restored, "db", "production.sqlite3"))
        self.assertEqual(copy.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall(),
                         sqlite3.connect(database).execute(
                             "SELECT version FROM schema_migrations ORDER BY version").fetchall())
        self.assertEqual(copy.execute("SELECT body FROM action_text_rich_texts").fetchall(),
                         [("<div>From Rails</div>",)])
        copy.close()


class CheckCommandTests(StorageCase):
    def test_a_healthy_storage_passes(self):
        connection = sqlite3.connect(self.database)
        connection.execute("INSERT INTO active_storage_blobs (key, filename, service_name, byte_size, created_at) "
                           "VALUES ('abcdkey1', 'a.bin', 'local', 70000, '2025-01-01 00:00:00')")
        connection.commit()
        connection.close()
        status, out, err = run_cli("check", storage=self.storage)
        self.assertEqual(status, 0, out + err)
        self.assertIn("No problems found", out)
        self.assertIn("Schema version %d" % campfire.CURRENT_SCHEMA_VERSION, out)

    def test_missing_search_rows_are_found_and_repaired(self):
        connection = sqlite3.connect(self.database)
        connection.execute("DELETE FROM message_search_index WHERE rowid IN (3, 4)")
        connection.execute("INSERT INTO message_search_index (rowid, body) VALUES (999, 'no such message')")
        connection.commit()
        connection.close()
        status, out, _ = run_cli("check", storage=self.storage)
        self.assertEqual(status, 1)
        self.assertIn("2 messages have no search row", out)
        self.assertIn("1 search rows belong to no message", out)
        status, out, err = run_cli("check", "--repair", storage=self.storage)
        self.assertIn("rebuilt the search index (31 messages)", out)
        status, out, err = run_cli("check", storage=self.storage)
        self.assertEqual(status, 1, out)  # the stray upload below is still a problem: repair leaves files alone
        self.assertNotIn("search", out.split("Schema")[0])
        self.assertIn("files without rows", out)

    def test_files_without_rows_and_rows_without_files(self):
        connection = sqlite3.connect(self.database)
        connection.execute("INSERT INTO active_storage_blobs (key, filename, service_name, byte_size, created_at) "
                           "VALUES ('zzyymissing', 'gone.png', 'local', 10, '2025-01-01 00:00:00')")
        connection.commit()
        connection.close()
        status, out, _ = run_cli("check", storage=self.storage)
        self.assertEqual(status, 1)
        self.assertIn("1 uploaded files are missing (rows without files), such as zzyymissing", out)
        self.assertIn("1 files in %s belong to no upload (files without rows), such as ab/cd/abcdkey1"
                      % os.path.join(self.storage, "files"), out)

    def test_a_damaged_database_fails(self):
        with open(self.database, "r+b") as file:
            file.seek(4096 * 3 + 100)
            file.write(b"\xff" * 2000)
        status, out, err = run_cli("check", storage=self.storage)
        self.assertEqual(status, 1, out + err)


class AdministratorCommandTests(unittest.TestCase):
    def setUp(self):
        self.storage = tempfile.mkdtemp(prefix="campfire-admin-cli-")
        self.addCleanup(shutil.rmtree, self.storage, True)

    def sign_in(self, email, password):
        app = make_app(self.storage)
        self.addCleanup(app.close)
        client = Client(app)
        return client.post("/session", {"email_address": email, "password": password}).status, app, client

    def test_create_admin_reads_stdin_and_sets_up_an_empty_storage(self):
        status, out, err = run_cli("create-admin", storage=self.storage,
                                   stdin="Grace Hopper\ngrace@example.com\ncobol-forever\n")
        self.assertEqual(status, 0, err)
        self.assertIn("Grace Hopper (grace@example.com) is an administrator", out)
        status, app, client = self.sign_in("grace@example.com", "cobol-forever")
        self.assertEqual(status, 303)
        self.assertTrue(app.store.user_by_email("grace@example.com").administrator)
        self.assertEqual(client.get("/account/edit").status, 200)
        app.close()
        status, _, err = run_cli("create-admin", "--name", "Linus", "--email", "linus@example.com",
                                 storage=self.storage, stdin="kernel-pass\n")
        self.assertEqual(status, 0, err)
        self.assertEqual(run_cli("create-admin", "--name", "G", "--email", "grace@example.com",
                                 storage=self.storage, stdin="again-pass\n")[0], 1)
        status, _, err = run_cli("create-admin", "--name", "X", "--email", "not an address",
                                 storage=self.storage, stdin="pass\n")
        self.assertEqual(status, 1)
        self.assertIn("valid email", err)

    def test_reset_password_prints_a_sign_in_link(self):
        run_cli("create-admin", "--name", "Ada", "--email", "ada@example.com", storage=self.storage, stdin="pw-1\n")
        status, out, err = run_cli("reset-password", "ada@example.com", "--url", "https://chat.example.com",
                                   storage=self.storage)
        self.assertEqual(status, 0, err)
        self.assertIn("within 4 hours", out)
        link = out.split()[-1]
        self.assertTrue(link.startswith("https://chat.example.com/session/transfers/"), link)
        _, app, client = self.sign_in("nobody@example.com", "x")
        path = link[len("https://chat.example.com"):]
        self.assertEqual(client.get(path).status, 200)
        response = client.post(path, {"_method": "put"})
        self.assertEqual(response.status, 303)
        self.assertEqual(client.get("/users/me/profile").status, 200)
        status, _, err = run_cli("reset-password", "nobody@example.com", storage=self.storage)
        self.assertEqual(status, 1)
        self.assertIn("No active person", err)


class CommandLineTests(unittest.TestCase):
    def test_every_command_has_help_with_exit_statuses(self):
        for command in ("backup", "backups", "restore", "check", "create-admin", "reset-password", "recipe"):
            with self.subTest(command):
                out = io.StringIO()
                with mock.patch("sys.stdout", out):
                    self.assertEqual(campfire.main([command, "--help"]), 0)
                self.assertIn("usage: campfire.py " + command, out.getvalue())
                self.assertIn("exit status", out.getvalue())

    def test_missing_and_extra_words_are_usage_errors(self):
        for argv in (["restore"], ["reset-password"], ["backup", "a", "b"], ["recipe"]):
            with self.subTest(argv), mock.patch("sys.stderr", io.StringIO()):
                self.assertEqual(campfire.main(argv), 2)

    def test_intervals_and_retention_settings(self):
        self.assertEqual(campfire.parse_interval("30m"), 1800)
        self.assertEqual(campfire.parse_interval("6h"), 6 * HOUR)
        self.assertEqual(campfire.parse_interval("1d"), 24 * HOUR)
        self.assertEqual(campfire.parse_interval("0"), 0)
        for bad in ("5", "1w", "-1h", "10s", "h", ""):
            with self.subTest(bad), self.assertRaises(campfire.ConfigError):
                campfire.parse_interval(bad)
        self.assertEqual(campfire.parse_backup_keep("48,14,4"), {"hourly": 48, "daily": 14, "weekly": 4})
        with self.assertRaises(campfire.ConfigError):
            campfire.parse_backup_keep("24,7")
        config = campfire.Config.from_environment({"BACKUP_INTERVAL": "6h", "BACKUP_KEEP": "1,2,3"})
        self.assertEqual((config.backup_interval, config.backup_keep), (6 * HOUR, {"hourly": 1, "daily": 2, "weekly": 3}))
        self.assertEqual(campfire.Config.from_environment({}).backup_interval, HOUR)


class RetentionTests(unittest.TestCase):
    def test_hourly_backups_for_ten_weeks_keep_24_hourly_7_daily_8_weekly(self):
        end = 1_767_225_600 + 9 * HOUR   # 2026-01-01 09:00 UTC, a Thursday
        stamps = {campfire.backup_file_name(end - hour * HOUR): end - hour * HOUR for hour in range(70 * 24)}
        kept = campfire.backups_to_keep(stamps)
        times = sorted((stamps[name] for name in kept), reverse=True)
        self.assertEqual(times[:24], [end - hour * HOUR for hour in range(24)])
        # Each of the latest 7 days keeps its last backup (today's is the newest of all).
        for day in range(1, 7):
            last_of_day = end - 10 * HOUR - (day - 1) * 24 * HOUR  # 23:00 of the days before
            self.assertIn(last_of_day, times)
        # Each of the latest 8 ISO weeks keeps its last backup: Sundays at 23:00 before this week.
        weeks = {time.strftime("%G-%V", time.gmtime(t)) for t in times}
        self.assertEqual(len(weeks), 8)
        # 24 hourly (today and last night), the dailies before them, and the weeklies not already kept.
        hourly = set(times[:24])
        daily = {t for t in times if t not in hourly and time.strftime("%H", time.gmtime(t)) == "23"}
        self.assertEqual(len(times), len(hourly | daily))
        # 24 hourly (back to yesterday 10:00); 5 more days' last (Dec 26-30, 23:00); 6 more weeks' last
        # (the Sundays Nov 16 - Dec 21, 23:00): Dec 28 is both a day's and a week's.
        self.assertEqual(len(kept), 24 + 5 + 6)

    def test_the_newest_backup_is_always_kept(self):
        self.assertEqual(campfire.backups_to_keep({"a": 10.0, "b": 5.0}, {"hourly": 0, "daily": 0, "weekly": 0}),
                         {"a"})

    def test_pruning_deletes_archives_and_contents_no_kept_backup_needs(self):
        storage = tempfile.mkdtemp(prefix="campfire-prune-")
        self.addCleanup(shutil.rmtree, storage, True)
        app = make_app(storage)
        app.close()
        config = campfire.Config(storage_path=storage)
        start = 1_767_225_600
        for hour in range(30):
            if hour == 3:
                with open(os.path.join(storage, "old-upload"), "wb") as file:
                    file.write(b"only in early backups")
            if hour == 5:
                os.unlink(os.path.join(storage, "old-upload"))
            campfire.write_backup(config, now=start + hour * HOUR)
        folder = os.path.join(storage, "backups")
        content = os.path.join(folder, "content")
        self.assertEqual(len(os.listdir(content)), 2)
        old = time.time() - campfire.BACKUP_CONTENT_GRACE - 60
        for name in os.listdir(content):
            os.utime(os.path.join(content, name), (old, old))
        deleted = campfire.prune_backups(folder, now=time.time())
        remaining = [name for name in os.listdir(folder) if name.endswith(".tar")]
        self.assertEqual(len(remaining), 24)  # the days' and the week's last are among the 24 hours
        self.assertEqual(len(deleted), 6)
        self.assertEqual(len(os.listdir(content)), 1)  # the secret; the deleted upload's content went with its backups


class AutomaticBackupTests(unittest.TestCase):
    """The real server: backups on their own thread while people post over sockets."""

    def setUp(self):
        self.server = LiveServer(backup_step_pages=4)
        self.addCleanup(self.server.stop)
        self.app = self.server.app
        self.cookie = first_run_cookie(self.server.port)
        self.backups = os.path.join(self.server.storage, "backups")

    def http(self, method, path, form=None, cookie=None):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        headers = {"Sec-Fetch-Site": "same-origin"}
        if cookie:
            headers["Cookie"] = "session_token=" + cookie
        request = urllib.request.Request("http://127.0.0.1:%d%s" % (self.server.port, path), data=data,
                                         method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def run_backup(self):
        future = self.server.call(self.app.backups.run_now)
        deadline = time.monotonic() + 60
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertTrue(future.done())
        return self.server.call(self.app.backups.summary)

    def timer_delay(self):
        return self.server.call(lambda: self.app.backups._timer.when() - self.server.loop.time())

    def detail(self):
        status, text = self.http("GET", "/up?detail=1")
        self.assertEqual(status, 200)
        return json.loads(text)

    def test_schedule_follows_the_newest_backup(self):
        self.assertAlmostEqual(self.timer_delay(), campfire.BACKUP_START_DELAY, delta=5)  # none yet: soon
        self.assertTrue(self.run_backup()["ok"])
        self.assertAlmostEqual(self.timer_delay(), HOUR, delta=5)

    def test_chat_keeps_answering_and_the_backup_holds_every_acknowledged_message(self):
        for number in range(300):
            self.assertEqual(self.http("POST", "/rooms/1/messages", {
                "message[body]": "seed %d %s" % (number, "words " * 400),
                "message[client_message_id]": "seed-%d" % number}, self.cookie)[0], 201)
        acknowledged, latencies, during = [], [], []
        stop = threading.Event()

        def poster():
            number = 0
            while not stop.is_set():
                number += 1
                started = time.monotonic()
                status, _ = self.http("POST", "/rooms/1/messages", {
                    "message[body]": "live %d" % number, "message[client_message_id]": "live-%d" % number},
                    self.cookie)
                if status == 201:
                    latencies.append(time.monotonic() - started)
                    acknowledged.append(("live-%d" % number, started))
                    if self.app.backups.running is not None:
                        during.append(number)
        thread = threading.Thread(target=poster)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while len(acknowledged) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            begun = time.monotonic()
            summary = self.run_backup()
        finally:
            stop.set()
            thread.join(30)
        self.assertTrue(summary["ok"], summary)
        self.assertGreater(len(during), 3)  # posts were answered while the backup was being written
        latencies.sort()
        self.assertLess(latencies[int(len(latencies) * 0.99)], 2.0)
        archive = os.path.join(self.backups, summary["last_backup"])
        restored = tempfile.mkdtemp(prefix="campfire-restored-")
        self.addCleanup(shutil.rmtree, restored, True)
        campfire.restore_backup(campfire.Config(storage_path=restored), archive)
        ids = {row[1] for row in message_rows(os.path.join(restored, "db", "production.sqlite3"))}
        live = {client_id for client_id in ids if client_id.startswith("live-")}
        self.assertLessEqual(live, {client_id for client_id, _ in acknowledged})  # nothing unacknowledged
        self.assertLessEqual({client_id for client_id, started in acknowledged if started < begun - 0.5}, live)
        self.assertEqual(len([i for i in ids if i.startswith("seed-")]), 300)
        self.assertEqual(campfire.check_database(os.path.join(restored, "db", "production.sqlite3")).problems, [])

    def test_a_failed_backup_is_loud_and_deletes_nothing(self):
        summary = self.run_backup()
        self.assertTrue(summary["ok"])
        good = summary["last_backup"]
        content = os.path.join(self.backups, "content")
        shutil.rmtree(content)
        with open(content, "w") as file:   # content/ can't be made now: the next backup fails
            file.write("in the way")
        with self.assertLogs("campfire", "ERROR") as logged:
            summary = self.run_backup()
        self.assertIn("BACKUP FAILED", logged.output[0])
        self.assertFalse(summary["ok"])
        self.assertTrue(summary["last_error"])
        self.assertIn(good, os.listdir(self.backups))
        self.assertEqual([name for name in os.listdir(self.backups)
                          if name.endswith(".partial") or name.startswith(".backup-")], [])
        detail = self.detail()
        self.assertEqual((detail["status"], detail["database"]), ("failing", "ok"))
        self.assertFalse(detail["backups"]["ok"])
        self.assertEqual(detail["backups"]["last_backup"], good)
        self.assertAlmostEqual(self.timer_delay(), campfire.BACKUP_RETRY_AFTER_FAILURE, delta=5)
        status, page = self.http("GET", "/account/edit", cookie=self.cookie)
        self.assertIn('id="backup_failure"', page)
        self.assertIn(good, page)
        code = self.server.call(lambda: self.app.store.account()["join_code"])
        member = _session_cookie(self.server.port, "/join/" + code, {
            "user[name]": "Bo", "user[email_address]": "bo@example.com", "user[password]": "bo-password"})
        status, page = self.http("GET", "/account/edit", cookie=member)
        self.assertEqual(status, 200)
        self.assertNotIn("backup", page.lower())
        os.unlink(content)
        self.assertTrue(self.run_backup()["ok"])
        self.assertEqual(self.detail()["status"], "ok")
        # Status survives a restart: the next server reads it from backups/status.json.
        self.assertEqual(campfire.read_backup_status(self.backups)["last_success"]["name"],
                         self.server.call(self.app.backups.summary)["last_backup"])

    def test_the_backup_command_works_beside_a_running_server(self):
        self.assertEqual(self.http("POST", "/rooms/1/messages", {"message[body]": "before the backup",
                                                                 "message[client_message_id]": "b1"},
                                   self.cookie)[0], 201)
        status, out, err = run_cli("backup", storage=self.server.storage)
        self.assertEqual(status, 0, err)
        [name] = [name for name in os.listdir(self.backups) if name.endswith(".tar")]
        self.assertEqual(campfire.read_manifest(os.path.join(self.backups, name))["counts"]["messages"], 1)
        self.assertEqual(self.http("POST", "/rooms/1/messages", {"message[body]": "after the backup",
                                                                 "message[client_message_id]": "b2"},
                                   self.cookie)[0], 201)

    def test_detail_is_for_loopback_and_administrators(self):
        far = Client(self.app, remote_addr="203.0.113.9")
        self.assertEqual(self.server.call(lambda: far.get("/up?detail=1").status), 404)
        self.assertEqual(self.server.call(lambda: far.get("/up").status), 200)
        admin = Client(self.app, remote_addr="203.0.113.10")
        admin.cookies["session_token"] = self.cookie
        response = self.server.call(lambda: admin.get("/up?detail=1"))
        self.assertEqual(response.status, 200)
        detail = json.loads(response.text)
        self.assertEqual(detail["version"], campfire.VERSION)
        self.assertGreater(detail["storage_free_bytes"], 0)
        self.assertIsNone(detail["backups"]["last_backup"])
        self.assertEqual(self.detail()["backups"]["interval_seconds"], HOUR)


if __name__ == "__main__":
    unittest.main()


class RecipeTests(unittest.TestCase):
    def recipe(self, name, storage="/var/lib/campfire", env=None):
        status, out, err = run_cli("recipe", name, "--storage", storage, env=env)
        self.assertEqual(status, 0, err)
        return out

    @unittest.skipUnless(shutil.which("systemd-analyze"), "systemd-analyze is not installed")
    def test_systemd_unit_passes_systemd_analyze_verify(self):
        directory = tempfile.mkdtemp(prefix="campfire-unit-")
        self.addCleanup(shutil.rmtree, directory, True)
        unit = os.path.join(directory, "campfire.service")
        text = self.recipe("systemd")
        for line in ("User=campfire", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                     "ReadWritePaths=/var/lib/campfire", "Environment=CAMPFIRE_STORAGE_PATH=/var/lib/campfire",
                     "ExecStart=/usr/bin/python3 " + os.path.realpath(CAMPFIRE_PY)):
            self.assertIn(line + "\n", text)
        for check_text, clean in ((text, True), (text.replace("ProtectSystem=strict", "ProtectSystem=bogus"), False)):
            with open(unit, "w") as file:
                file.write(check_text)
            done = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True, timeout=60)
            # verify exits 0 even for keys it ignores: what it says about the file is the verdict.
            complaints = [line for line in done.stderr.splitlines() if unit in line]
            self.assertEqual((done.returncode == 0 and not complaints), clean, done.stderr)

    def test_dockerfile_keeps_storage_in_a_volume_runs_unprivileged_and_checks_up(self):
        text = self.recipe("docker")
        instructions = [line.split(None, 1) for line in text.replace("\\\n", " ").splitlines()
                        if line.strip() and not line.startswith("#")]
        keywords = [words[0] for words in instructions]
        self.assertEqual(keywords[0], "FROM")
        self.assertLessEqual({"FROM", "RUN", "COPY", "ENV", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK", "CMD"},
                             set(keywords))
        self.assertTrue(set(keywords) <= {"FROM", "RUN", "COPY", "ENV", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK",
                                          "CMD", "STOPSIGNAL"}, keywords)
        arguments = dict((words[0], words[1]) for words in instructions)
        self.assertEqual(arguments["USER"], "campfire")
        self.assertEqual(json.loads(arguments["VOLUME"]), ["/storage"])
        self.assertIn("CAMPFIRE_STORAGE_PATH=/storage", arguments["ENV"])
        check = json.loads(arguments["HEALTHCHECK"].split("CMD", 1)[1])
        self.assertIn("/up", check[-1])
        compile(check[-1], "healthcheck", "exec")  # the health check's Python is valid
        self.assertEqual(json.loads(arguments["CMD"]), ["python3", "/app/campfire.py"])

    def braces_balance(self, text):
        depth = 0
        for character in text:
            depth += {"{": 1, "}": -1}.get(character, 0)
            self.assertGreaterEqual(depth, 0)
        self.assertEqual(depth, 0)

    def test_nginx_and_caddy_pass_websockets_to_the_port(self):
        nginx = self.recipe("nginx", env={"PORT": "4000"})
        self.braces_balance(nginx)
        for line in nginx.splitlines():
            line = line.split("#")[0].strip()
            if line and not line.endswith(("{", "}")):
                self.assertTrue(line.endswith(";"), line)  # every directive ends its statement
        self.assertIn("server 127.0.0.1:4000;", nginx)
        self.assertIn("proxy_set_header Upgrade $http_upgrade;", nginx)
        self.assertIn("proxy_set_header Connection $campfire_connection;", nginx)
        self.assertIn("proxy_set_header X-Forwarded-Proto $scheme;", nginx)
        self.assertIn("proxy_set_header X-Forwarded-For $remote_addr;", nginx)  # the edge: what it saw, alone
        self.assertIn("proxy_set_header X-Forwarded-Host $host;", nginx)
        caddy = self.recipe("caddy", env={"PORT": "4000"})
        self.braces_balance(caddy)
        self.assertIn("reverse_proxy 127.0.0.1:4000", caddy)
        for text in (nginx, caddy):  # without it the forwarded scheme is ignored and browsers' writes get 403
            self.assertIn("TRUSTED_PROXIES=127.0.0.1", text)

    def test_litestream_replicates_the_database_beside_backup_url(self):
        text = self.recipe("litestream", env={"BACKUP_URL": "s3://team-bucket/chat", "AWS_ACCESS_KEY_ID": "AKID",
                                               "AWS_SECRET_ACCESS_KEY": "secret"})
        self.assertIn("  - path: /var/lib/campfire/db/production.sqlite3\n", text)
        self.assertIn("      - url: s3://team-bucket/chat/litestream\n", text)
        self.assertNotIn("secret", text.split("# Credentials")[1].split("\n", 1)[1])

    def test_unknown_recipe(self):
        status, _, err = run_cli("recipe", "kubernetes")
        self.assertEqual(status, 1)
        self.assertIn("systemd, docker, caddy, nginx, litestream", err)


class LongLivedReaderTests(unittest.TestCase):
    """Litestream holds a read transaction on the database all the time: the
    server's writes and checkpoints must not wait for it."""

    def test_posts_and_shutdown_go_on_while_a_reader_holds_a_snapshot(self):
        server = LiveServer()
        stopped = False
        try:
            cookie = first_run_cookie(server.port)
            reader = sqlite3.connect(os.path.join(server.storage, "db", "production.sqlite3"), isolation_level=None)
            self.addCleanup(reader.close)
            reader.execute("BEGIN")
            before = reader.execute("SELECT count(*) FROM messages").fetchone()[0]
            for number in range(300):  # about 1,500 WAL pages: past SQLite's automatic checkpoint at 1,000
                request = urllib.request.Request(
                    "http://127.0.0.1:%d/rooms/1/messages" % server.port, headers={
                        "Cookie": "session_token=" + cookie, "Sec-Fetch-Site": "same-origin"},
                    data=urllib.parse.urlencode({"message[body]": "post %d %s" % (number, "x" * 3000),
                                                 "message[client_message_id]": "p%d" % number}).encode())
                with urllib.request.urlopen(request, timeout=10) as response:
                    self.assertEqual(response.status, 201)
            self.assertEqual(reader.execute("SELECT count(*) FROM messages").fetchone()[0], before)  # its snapshot
            started = time.monotonic()
            stopped = True
            server.stop()
            self.assertLess(time.monotonic() - started, campfire.SQLITE_BUSY_TIMEOUT_MS / 1000)
        finally:
            if not stopped:
                server.stop()


class ExportCommandTests(StorageCase):
    """`export FOLDER`: the account as JSON Lines with its files, read by a program."""

    def setUp(self):
        super().setUp()
        app = make_app(self.storage)
        try:
            bob = Client(app)
            code = app.store.account()["join_code"]
            bob.post("/join/" + code, {"user[name]": "Bob", "user[email_address]": "bob@example.com",
                                       "user[password]": "member-password"})
            self.assertEqual(bob.post("/messages/1/boosts", {"boost[content]": "🎉"}).status, 201)
            # An attachment as Rails' Active Storage records it, on the last message.
            db = app.db
            with db.atomic():
                blob = db.execute("INSERT INTO active_storage_blobs (key, filename, content_type, metadata, "
                                  "service_name, byte_size, checksum, created_at) VALUES ('abcdkey1', "
                                  "'../../etc/report.pdf', 'application/pdf', '{}', 'local', 70000, 'x', "
                                  "'2024-01-01 00:00:00')").lastrowid
                db.execute("INSERT INTO active_storage_attachments (name, record_type, record_id, blob_id, created_at) "
                           "VALUES ('attachment', 'Message', 2, ?, '2024-01-01 00:00:00')", (blob,))
            self.hashes = {row[0]: row[1] for row in db.all(
                "SELECT id, password_digest FROM users")}
        finally:
            app.close()

    def read_export(self, folder):
        with open(os.path.join(folder, "campfire.jsonl"), encoding="utf-8") as file:
            return [json.loads(line) for line in file]

    def test_export_holds_people_rooms_messages_boosts_and_files_without_secrets(self):
        folder = os.path.join(self.work, "export")
        status, out, err = run_cli("export", folder, storage=self.storage)
        self.assertEqual(status, 0, err)
        self.assertIn("2 users", out)
        lines = self.read_export(folder)
        kinds = [line["type"] for line in lines]
        order = ["account", "user", "room", "membership", "file", "message", "boost"]
        self.assertEqual(sorted(set(kinds), key=order.index), order)
        self.assertEqual(kinds, sorted(kinds, key=order.index))  # what a line names came before it
        users = {line["email_address"]: line for line in lines if line["type"] == "user"}
        self.assertEqual(users["ada@example.com"]["role"], "administrator")
        self.assertEqual(users["bob@example.com"]["role"], "member")
        text = open(os.path.join(folder, "campfire.jsonl"), encoding="utf-8").read()
        for digest in self.hashes.values():
            self.assertNotIn(digest, text)
        self.assertNotIn("password", text)
        self.assertNotIn("session", text)
        messages = {line["client_message_id"]: line for line in lines if line["type"] == "message"}
        self.assertEqual(len(messages), 31)
        mention = messages["mention"]
        self.assertIn("<action-text-attachment", mention["body_html"])
        self.assertEqual(mention["body_text"], "hello @Ada Admin")
        self.assertEqual(messages["message number 0 about coffee"]["body_text"], "message number 0 about coffee")
        [boost] = [line for line in lines if line["type"] == "boost"]
        self.assertEqual((boost["message_id"], boost["content"]), (1, "🎉"))
        self.assertEqual(users["bob@example.com"]["id"], boost["booster_id"])
        [room] = [line for line in lines if line["type"] == "room"]
        self.assertEqual((room["name"], room["kind"]), ("All Talk", "open"))
        self.assertEqual(len([line for line in lines if line["type"] == "membership"]), 2)
        [upload] = [line for line in lines if line["type"] == "file"]
        self.assertEqual(messages["message number 1 about coffee"]["file_ids"], [upload["id"]])
        self.assertEqual(upload["filename"], "../../etc/report.pdf")
        self.assertEqual(upload["path"], "files/%d-__.._etc_report.pdf" % upload["id"])  # stays in the folder
        with open(self.upload, "rb") as original, open(os.path.join(folder, upload["path"]), "rb") as copy:
            self.assertEqual(original.read(), copy.read())

    def test_export_never_replaces_a_folder_and_leaves_nothing_on_failure(self):
        folder = os.path.join(self.work, "export")
        os.makedirs(folder)
        status, _, err = run_cli("export", folder, storage=self.storage)
        self.assertEqual(status, 1)
        self.assertIn("already exists", err)
        self.assertEqual(os.listdir(folder), [])
        status, _, err = run_cli("export", os.path.join(self.work, "no", "such"), storage=self.storage)
        self.assertEqual(status, 1)
        self.assertIn("does not exist", err)
        status, _, err = run_cli("export", os.path.join(self.work, "x"), storage=os.path.join(self.work, "empty"))
        self.assertEqual(status, 1)
        self.assertIn("no database", err)
        self.assertEqual(sorted(os.listdir(self.work)), ["export"])  # no half-written folder left behind

    def test_export_beside_a_running_server(self):
        server = LiveServer(self.storage)
        try:
            folder = os.path.join(self.work, "live")
            status, _, err = run_cli("export", folder, storage=self.storage)
            self.assertEqual(status, 0, err)
            self.assertEqual(len([line for line in self.read_export(folder) if line["type"] == "message"]), 31)
        finally:
            server.stop()
