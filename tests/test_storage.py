"""Campfire's schema, migrations, a database Rails created, bad configuration."""

import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import unittest

from tests import rails_schema
from tests.helpers import AppTestCase, Client, campfire, make_app

CAMPFIRE_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "campfire.py")
CAMPFIRE_TABLES = {"accounts", "users", "sessions", "rooms", "memberships", "messages", "action_text_rich_texts",
                   "boosts", "searches", "webhooks", "push_subscriptions", "bans", "active_storage_blobs",
                   "active_storage_attachments", "active_storage_variant_records", "message_search_index"}


def rails_database(path):
    """A database shaped the way Rails' migrations leave it, with a row of each kind Rails writes."""
    connection = sqlite3.connect(path)
    rails_schema.load_schema_rb(connection)
    connection.execute("BEGIN")
    stamp = "2025-03-04 05:06:07.123456"
    connection.execute("INSERT INTO accounts (name, join_code, settings, created_at, updated_at) "
                       "VALUES ('Rails Co', 'AbCd-EfGh-IjKl', '{}', ?, ?)", (stamp, stamp))
    connection.execute("INSERT INTO users (name, email_address, password_digest, role, created_at, updated_at) "
                       "VALUES ('Rita Rails', 'rita@example.com', ?, 1, ?, ?)",
                       ("$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", stamp, stamp))
    connection.execute("INSERT INTO rooms (name, type, creator_id, created_at, updated_at) "
                       "VALUES ('Rails Room', 'Rooms::Open', 1, ?, ?)", (stamp, stamp))
    connection.execute("INSERT INTO memberships (room_id, user_id, involvement, created_at, updated_at) "
                       "VALUES (1, 1, 'mentions', ?, ?)", (stamp, stamp))
    connection.commit()
    connection.close()


class SchemaTests(AppTestCase):
    def tables(self):
        return {row[0] for row in self.app.db.all("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def test_fresh_database_has_every_campfire_table(self):
        self.assertLessEqual(CAMPFIRE_TABLES, self.tables())

    def test_database_lives_where_campfire_keeps_it(self):
        self.assertTrue(os.path.exists(os.path.join(self.storage, "db", "production.sqlite3")))

    def test_wal_mode_and_foreign_keys(self):
        self.assertEqual(self.app.db.value("PRAGMA journal_mode").lower(), "wal")
        self.assertEqual(self.app.db.value("PRAGMA foreign_keys"), 1)

    def test_each_migration_runs_once(self):
        names = [row[0] for row in self.app.db.all("SELECT name FROM campfire_py_migrations ORDER BY name")]
        self.assertEqual(names, sorted([name for name, _ in campfire.MIGRATIONS] + [campfire.Store.RESIGNED_MENTIONS]))
        self.app.db.migrate()
        self.app.close()
        self.app = make_app(self.storage)
        again = [row[0] for row in self.app.db.all("SELECT name FROM campfire_py_migrations ORDER BY name")]
        self.assertEqual(names, again)

    def test_failed_migration_leaves_nothing_behind(self):
        broken = campfire.MIGRATIONS + (("9999_broken", 'CREATE TABLE "half_done" (x);\nTHIS IS NOT SQL'),)
        with self.assertRaises(sqlite3.Error):
            self.app.db.migrate(broken)
        self.assertNotIn("half_done", self.tables())
        self.assertIsNone(self.app.db.value("SELECT name FROM campfire_py_migrations WHERE name = '9999_broken'"))

    def test_atomic_rolls_back_on_error_and_nests(self):
        self.first_run()
        with self.assertRaises(ZeroDivisionError):
            with self.app.db.atomic():
                self.app.db.execute("INSERT INTO searches (user_id, query, created_at, updated_at) VALUES (1, 'a', 'x', 'x')")
                1 / 0
        self.assertEqual(self.app.db.value("SELECT count(*) FROM searches"), 0)
        with self.app.db.atomic():
            self.app.db.execute("INSERT INTO searches (user_id, query, created_at, updated_at) VALUES (1, 'kept', 'x', 'x')")
            with self.assertRaises(ValueError):
                with self.app.db.atomic():
                    self.app.db.execute("INSERT INTO searches (user_id, query, created_at, updated_at) VALUES (1, 'gone', 'x', 'x')")
                    raise ValueError
        self.assertEqual([r[0] for r in self.app.db.all("SELECT query FROM searches")], ["kept"])

    def test_deferred_writes_run_at_commit_and_leave_with_their_savepoint(self):
        # Search rows are deferred to the commit; a request that fails takes
        # its deferred rows with it, and the group's others are kept.
        self.first_run()
        db = self.app.db
        db.group_commit = True
        db.on_batch_opened = lambda: None
        insert = "INSERT INTO message_search_index (rowid, body) VALUES (?, ?)"
        with db.atomic():
            db.defer(insert, (9001, "kept words"))
        with self.assertRaises(ValueError):
            with db.atomic():
                db.defer(insert, (9002, "undone words"))
                raise ValueError
        self.assertEqual(db.value("SELECT count(*) FROM message_search_index WHERE rowid > 9000"), 0)
        self.assertTrue(db.commit_batch())
        self.assertEqual([row[0] for row in db.all("SELECT rowid FROM message_search_index WHERE rowid > 9000")],
                         [9001])
        with self.assertRaises(RuntimeError):  # outside a transaction there is no commit to wait for
            db.defer(insert, (9003, "nowhere"))

    def test_an_edit_and_a_delete_in_the_same_commit_as_the_post_leave_the_right_search_rows(self):
        self.first_run()
        client = self.client
        db = self.app.db
        db.group_commit = True
        db.on_batch_opened = lambda: None
        room_id = db.value("SELECT id FROM rooms")
        for client_id, body in (("a", "alpha original"), ("b", "bravo original")):
            self.assertEqual(client.post("/rooms/%d/messages" % room_id, {
                "message[body]": body, "message[client_message_id]": client_id}).status, 201)
        first, second = [row[0] for row in db.all("SELECT id FROM messages ORDER BY id")]
        self.assertEqual(client.post("/rooms/%d/messages/%d" % (room_id, first), {
            "_method": "patch", "message[body]": "alpha edited"}).status, 200)
        self.assertIn(client.post("/rooms/%d/messages/%d" % (room_id, second), {"_method": "delete"}).status,
                      (200, 204))
        self.assertTrue(db.commit_batch())
        rows = db.all("SELECT rowid, body FROM message_search_index ORDER BY rowid")
        self.assertEqual([tuple(row) for row in rows], [(first, "alpha edited")])
        self.assertEqual(db.value("SELECT count(*) FROM message_search_index WHERE message_search_index MATCH 'original'"), 0)
        db.execute("INSERT INTO message_search_index (message_search_index) VALUES ('integrity-check')")

    def test_datetimes_are_written_the_rails_way(self):
        self.first_run()
        self.assertRegex(self.app.db.value("SELECT created_at FROM users"), r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


class RailsDatabaseTests(unittest.TestCase):
    def setUp(self):
        self.storage = tempfile.mkdtemp(prefix="campfire-rails-")
        os.makedirs(os.path.join(self.storage, "db"))
        self.path = os.path.join(self.storage, "db", "production.sqlite3")
        rails_database(self.path)

    def tearDown(self):
        shutil.rmtree(self.storage, ignore_errors=True)

    def test_rails_database_opens_in_place_and_keeps_rails_tables(self):
        app = make_app(self.storage)
        try:
            self.assertEqual(app.store.account_name(), "Rails Co")
            self.assertEqual(app.db.value("SELECT max(version) FROM schema_migrations"), "20251212154340")
            self.assertEqual(app.db.value("SELECT value FROM ar_internal_metadata"), "production")
            client = Client(app)
            response = client.post("/session", {"email_address": "rita@example.com", "password": "U*U"})
            if not campfire.bcrypt_supported():
                self.assertEqual(response.status, 401)
                return
            self.assertEqual(response.status, 303)
            room = client.get("/rooms/1")
            self.assertEqual(room.status, 200)
            self.assertIn("Rails Room", room.text)
        finally:
            app.close()


class ConfigurationTests(unittest.TestCase):
    def run_campfire(self, *args, env=None, timeout=20):
        environment = dict(os.environ, **(env or {}))
        return subprocess.run([sys.executable, CAMPFIRE_PY, *args], capture_output=True, text=True,
                              env=environment, timeout=timeout)

    def test_version_and_help(self):
        self.assertIn(campfire.VERSION, self.run_campfire("--version").stdout)
        help_text = self.run_campfire("-h").stdout
        self.assertIn("serve", help_text)
        self.assertIn("CAMPFIRE_STORAGE_PATH", help_text)

    def test_command_line_options_and_their_defaults(self):
        parse = campfire.parse_command_line
        self.assertEqual(parse([]), ("serve", {"host": None, "port": None, "storage": None, "no_cache": False}))
        self.assertEqual(parse(["--port", "8080", "--host=127.0.0.1", "--no-cache"]),
                         ("serve", {"host": "127.0.0.1", "port": 8080, "storage": None, "no_cache": True}))
        self.assertEqual(parse(["serve", "--port=0"])[1]["port"], 0)
        self.assertEqual(parse(["seed", "--messages", "50", "--storage", "/tmp/x"]),
                         ("seed", {"users": 100, "rooms": 20, "messages": 50, "storage": "/tmp/x", "force": False}))

    def test_seed_refuses_a_database_with_people_and_never_makes_a_known_admin_password(self):
        storage = tempfile.mkdtemp(prefix="campfire-test-")
        self.addCleanup(shutil.rmtree, storage, True)
        env = {"CAMPFIRE_STORAGE_PATH": storage}
        seed = ("seed", "--users", "2", "--rooms", "1", "--messages", "3")
        first = self.run_campfire(*seed, env=env, timeout=60)
        self.assertEqual(first.returncode, 0, first.stderr)
        printed = re.search(r"(person\d+@example\.com) \(an administrator\) with the password '(\w+)'", first.stdout)
        self.assertIsNotNone(printed, first.stdout)
        admin_email, admin_password = printed.groups()
        self.assertNotEqual(admin_password, campfire.SEED_PASSWORD)
        app = make_app(storage)
        self.addCleanup(app.close)
        client = Client(app)
        self.assertNotEqual(client.post("/session", {"email_address": admin_email, "password": "password"}).status, 303)
        self.assertEqual(Client(app).post("/session", {"email_address": admin_email,
                                                       "password": admin_password}).status, 303)
        self.assertEqual(Client(app).post("/session", {"email_address": "person2@example.com",
                                                       "password": "password"}).status, 303)
        people = app.db.value("SELECT count(*) FROM users")

        again = self.run_campfire(*seed, env=env, timeout=60)
        self.assertEqual(again.returncode, 1)
        self.assertIn("already has people", again.stderr)
        self.assertIn("--force", again.stderr)
        self.assertNotIn("Traceback", again.stderr)
        self.assertEqual(app.db.value("SELECT count(*) FROM users"), people)

        forced = self.run_campfire(*seed, "--force", env=env, timeout=60)
        self.assertEqual(forced.returncode, 0, forced.stderr)
        self.assertEqual(app.db.value("SELECT count(*) FROM users"), people + 2)
        second_password = re.search(r"with the password '(\w+)'", forced.stdout).group(1)
        self.assertNotIn(second_password, (admin_password, campfire.SEED_PASSWORD))
        known = campfire.check_password
        for digest, in app.db.all("SELECT password_digest FROM users WHERE role = ?", (campfire.ROLE_ADMINISTRATOR,)):
            self.assertFalse(known(campfire.SEED_PASSWORD, digest))

    def test_a_command_line_that_cannot_be_read_says_which_word(self):
        for argv, words in ((["--bogus"], "'--bogus'"), (["launch"], "'launch'"), (["--port"], "needs a value"),
                            (["--port", "http"], "'http'"), (["--port", "65536"], "0 (any free port) to 65535"),
                            (["--no-cache=yes"], "takes no value"), (["seed", "--port", "1"], "seed does not take"),
                            (["seed", "--users", "many"], "a whole number")):
            with self.subTest(argv=argv), self.assertRaises(campfire.UsageError) as caught:
                campfire.parse_command_line(argv)
            self.assertIn(words, str(caught.exception))
        result = self.run_campfire("serve", "--port", "99999")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--port needs a port number", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_port_in_use_is_a_clear_error(self):
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        storage = tempfile.mkdtemp()
        try:
            result = self.run_campfire("--host", "127.0.0.1", "--port", str(port), env={"CAMPFIRE_STORAGE_PATH": storage})
        finally:
            blocker.close()
            shutil.rmtree(storage, ignore_errors=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn("already in use", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_file_that_is_not_sqlite_is_a_clear_error(self):
        storage = tempfile.mkdtemp()
        try:
            bogus = os.path.join(storage, "bogus.sqlite3")
            with open(bogus, "wb") as file:
                file.write(b"this is not a database at all" * 100)
            result = self.run_campfire("--port", "0", env={"CAMPFIRE_STORAGE_PATH": storage, "DATABASE_PATH": bogus})
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn("not a usable SQLite database", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    @unittest.skipIf(os.geteuid() == 0, "root can write anywhere")
    def test_storage_not_writable_is_a_clear_error_as_non_root(self):
        storage = tempfile.mkdtemp()
        os.chmod(storage, stat.S_IRUSR | stat.S_IXUSR)
        try:
            result = self.run_campfire("--port", "0", env={"CAMPFIRE_STORAGE_PATH": storage})
        finally:
            os.chmod(storage, stat.S_IRWXU)
            shutil.rmtree(storage, ignore_errors=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn("not writable", result.stderr)

    def test_storage_that_cannot_be_created_is_a_clear_error(self):
        storage = tempfile.mkdtemp()
        blocker = os.path.join(storage, "file")
        open(blocker, "w").close()
        try:
            result = self.run_campfire("--port", "0", env={"CAMPFIRE_STORAGE_PATH": os.path.join(blocker, "storage")})
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn("cannot be created", result.stderr)

    def test_bad_port_variable_is_a_clear_error(self):
        result = self.run_campfire(env={"PORT": "eighty"})
        self.assertEqual(result.returncode, 1)
        self.assertIn("PORT must be a number", result.stderr)

    def test_bad_log_level_is_a_clear_error(self):
        result = self.run_campfire(env={"LOG_LEVEL": "verbose"})
        self.assertEqual(result.returncode, 1)
        self.assertIn("LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, not 'verbose'", result.stderr)
        self.assertEqual(campfire.Config.from_environment({"LOG_LEVEL": "warning"}).log_level, "WARNING")

    def test_sqlite_without_fts5_is_a_clear_error(self):
        storage = tempfile.mkdtemp()
        original = campfire.Database._check_fts5

        def no_fts5(db):
            raise campfire.ConfigError("This Python's SQLite (x) was built without FTS5, which search needs.")
        campfire.Database._check_fts5 = no_fts5
        try:
            with self.assertRaisesRegex(campfire.ConfigError, "FTS5"):
                make_app(storage)
        finally:
            campfire.Database._check_fts5 = original
            shutil.rmtree(storage, ignore_errors=True)


class StartAndStopTests(unittest.TestCase):
    def test_sigterm_stops_cleanly_and_checkpoints_the_wal(self):
        import signal
        import time
        import urllib.request
        storage = tempfile.mkdtemp()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        process = subprocess.Popen([sys.executable, CAMPFIRE_PY, "serve", "--host", "127.0.0.1", "--port", str(port)],
                                   env=dict(os.environ, CAMPFIRE_STORAGE_PATH=storage),
                                   stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 15
            while time.time() < deadline:
                try:
                    with urllib.request.urlopen("http://127.0.0.1:%d/up" % port, timeout=1) as response:
                        self.assertEqual(response.status, 200)
                        break
                except OSError:
                    time.sleep(0.05)
            else:
                self.fail("server did not come up")
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=15)
            self.assertEqual(process.returncode, 0, stderr)
            self.assertIn("shutting down", stderr)
            wal = os.path.join(storage, "db", "production.sqlite3-wal")
            self.assertTrue(not os.path.exists(wal) or os.path.getsize(wal) == 0)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()


class AtomicWritesTests(AppTestCase):
    """Every write goes through atomic(): make_app's guard (tests/helpers.py) watches every
    app the tests make; these check the guard itself and walk through every kind of write."""

    def test_the_guard_records_a_write_campfire_makes_outside_atomic(self):
        self.first_run()
        writes = self.app.db.unguarded_writes
        # Code compiled as campfire.py's own: what the guard blames, and what it doesn't.
        outside = compile("db.execute('UPDATE users SET bio = ? WHERE id = 1', ('x',))", campfire.__file__, "exec")
        inside = compile("with db.atomic():\n    db.execute('UPDATE users SET bio = ? WHERE id = 1', ('y',))",
                         campfire.__file__, "exec")
        exec(inside, {"db": self.app.db})
        self.assertEqual(writes, [])
        self.app.db.execute("UPDATE users SET bio = 'a test setting things up' WHERE id = 1")
        self.assertEqual(writes, [])  # a test's own writes are its business
        exec(outside, {"db": self.app.db})
        self.assertEqual([sql for sql, _ in writes], ["UPDATE users SET bio = 'x' WHERE id = 1"])
        writes.clear()

    def test_every_kind_of_request_writes_inside_atomic(self):
        ada = self.client
        self.first_run()
        bob = self.join("Bob", "bob@example.com")
        self.assertEqual(bob.post("/session", {"_method": "delete"}).status, 303)
        self.assertEqual(bob.post("/session", {"email_address": "bob@example.com",
                                               "password": "member-password"}).status, 303)
        # An hour later the session's last activity is written once.
        self.app.db.execute("UPDATE sessions SET last_active_at = '2000-01-01 00:00:00'")
        self.app.store._sessions.clear()
        requests = [
            (ada, "POST", "/rooms/closeds", {"room[name]": "Plans", "user_ids[]": ["2"]}),
            (ada, "POST", "/rooms/closeds/2", {"_method": "patch", "room[name]": "Plans B", "user_ids[]": []}),
            (ada, "POST", "/rooms/directs", {"user_ids[]": ["2"]}),
            (ada, "POST", "/rooms/1/messages", {"message[body]": "hello @Bob", "message[client_message_id]": "m1"}),
            (bob, "GET", "/rooms/1", None),
            (bob, "POST", "/rooms/1/messages", {"message[body]": "/play tada", "message[client_message_id]": "m2"}),
            (ada, "GET", "/rooms/1", None),
            (ada, "POST", "/rooms/1/messages/1", {"_method": "patch", "message[body]": "edited"}),
            (ada, "POST", "/messages/1/boosts", {"boost[content]": "👍"}),
            (ada, "POST", "/messages/1/boosts/1", {"_method": "delete"}),
            (ada, "POST", "/rooms/1/involvement", {"_method": "put", "involvement": "everything"}),
            (ada, "GET", "/searches?q=hello", None),
            (ada, "POST", "/searches/clear", {"_method": "delete"}),
            (ada, "POST", "/rooms/1/messages/2", {"_method": "delete"}),
            (ada, "POST", "/account", {"_method": "patch", "account[name]": "Acme",
                                       "account[settings][restrict_room_creation_to_administrators]": "1"}),
            (ada, "POST", "/account/join_code", {}),
            (ada, "POST", "/account/custom_styles", {"_method": "patch", "account[custom_styles]": "p { }"}),
            (ada, "POST", "/account/users/2", {"_method": "patch", "user[role]": "administrator"}),
            (ada, "POST", "/account/users/2", {"_method": "patch", "user[role]": "member"}),
            (ada, "POST", "/users/me/profile", {"_method": "patch", "user[name]": "Ada", "user[bio]": "Hi",
                                                "user[email_address]": "ada@example.com",
                                                "user[password]": "another-password"}),
            (ada, "POST", "/account/bots", {"user[name]": "Helper", "user[webhook_url]": "http://127.0.0.1:9/"}),
            (ada, "POST", "/account/bots/3", {"_method": "patch", "user[name]": "Helper 2", "user[webhook_url]": ""}),
            (ada, "POST", "/account/bots/3/key", {"_method": "put"}),
            (ada, "POST", "/users/2/ban", {}),
            (ada, "POST", "/users/2/ban", {"_method": "delete"}),
            (ada, "POST", "/account/users/2", {"_method": "delete"}),
            (ada, "POST", "/rooms/2", {"_method": "delete"}),
        ]
        for client, method, path, form in requests:
            with self.subTest(method=method, path=path):
                response = client.request(method, path, form=form)
                self.assertLess(response.status, 400, response.text[:300])
        bot = "/rooms/1/3-%s/messages" % self.app.db.value("SELECT bot_token FROM users WHERE id = 3")
        posted = Client(self.app).request("POST", bot, body=b"from the bot", content_type="text/plain")
        message = bot + "/" + posted.header("Location").rpartition("/")[2]
        boosted = Client(self.app).request("POST", message + "/boosts", body=b"!", content_type="text/plain")
        for method, path, body in [("PUT", message, b"edited by the bot"),
                                   ("DELETE", "%s/boosts/%d" % (message, campfire.json.loads(boosted.body)["id"]), b""),
                                   ("DELETE", message, b"")]:
            with self.subTest(method=method, path=path):
                response = Client(self.app).request(method, path, body=body, content_type="text/plain")
                self.assertLess(response.status, 400, response.text[:300])
        transfer = self.app.signer.sign(1, "transfer", expires_at=2 ** 40)
        self.assertEqual(Client(self.app).request("PUT", "/session/transfers/" + transfer).status, 303)
        # Presence from /cable, and the bot being deleted.
        self.app.store.presence_arrived(1, 1, new_connection=True)
        self.app.store.presence_refreshed(1, 1)
        self.app.store.presence_left(1, 1, connection_closed=False)
        self.assertEqual(ada.post("/account/bots/3", {"_method": "delete"}).status, 303)
        self.assertEqual(self.app.db.unguarded_writes, [])
        self.assertEqual(self.app.db.value("SELECT count(*) FROM sessions WHERE last_active_at < '2001-01-01'"), 0)
