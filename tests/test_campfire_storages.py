"""Once Campfire storages open in place and go back: storages built here with Rails'
own DDL (tests/rails_schema.py, written out from Campfire's db/migrate and
db/schema.rb) and the rows a running Rails app writes, brought forward migration by
migration, used, and compared with the schema Rails expects; bcrypt passwords,
mentions and session cookies checked against a Ruby peer that follows Rails' source
(tests/test_rails.py)."""

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

from tests import rails_schema
from tests.browser import CampfireProcess
from tests.helpers import Client, campfire, make_app
from tests.test_rails import ruby

CAMPFIRE_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "campfire.py")
SECRET_KEY_BASE = hashlib.sha512(b"a team moving from Once Campfire").hexdigest()  # SecureRandom.hex(64)'s shape
ALL_VERSIONS = [version for version, _, _ in rails_schema.MIGRATIONS]
OUR_ADDITIONS = sorted([
    "campfire_py_memberships_unread_candidates", "campfire_py_message_deletions",
    "campfire_py_messages_by_client_message_id", "campfire_py_messages_by_room_and_created_at",
    "campfire_py_messages_by_room_and_updated_at", "campfire_py_migrations",
    # Threads, the mentions inbox and saved messages
    "campfire_py_bookmarks", "campfire_py_bookmarks_by_message_id", "campfire_py_mentions",
    "campfire_py_mentions_by_message_id", "campfire_py_mentions_unread", "campfire_py_threads",
    "campfire_py_threads_by_parent_message_id", "campfire_py_threads_by_parent_room_id",
    # What import-slack created, by the export's own names
    "campfire_py_imported",
    # Email digests
    "campfire_py_email_digests", "campfire_py_mentions_unread_by_created_at"])

# Ruby, following Rails: user.attachable_sgid (globalid's Verifier: URL-safe base64 with
# padding, key "signed_global_ids") and cookies.signed.permanent[:session_token] (the
# legacy envelope around the JSON token, purpose "cookie.session_token", 20 years,
# then Rack's escaping). RUBY_PRELUDE (tests/test_rails.py) has rails_key and rails_sign.
RUBY_SIGN_SGID = '''
  skb, id = ARGV
  data = Base64.urlsafe_encode64(JSON.generate({"_rails" => {"data" => "gid://campfire/User/#{id}", "pur" => "attachable"}}))
  puts rails_sign(rails_key(skb, "signed_global_ids"), data)
'''
RUBY_VERIFY_SGID = '''
  skb, sgid = ARGV
  envelope = JSON.parse(Base64.urlsafe_decode64(rails_unsign(rails_key(skb, "signed_global_ids"), sgid)))
  puts envelope["_rails"]["data"], envelope["_rails"]["pur"]
'''
RUBY_SESSION_COOKIE = '''
  skb, token = ARGV
  inner = Base64.strict_encode64(JSON.generate(token))
  expires = (Time.now.utc + 20 * 365 * 86400).iso8601(3)
  payload = Base64.strict_encode64(JSON.generate({"_rails" => {"message" => inner, "exp" => expires,
                                                                "pur" => "cookie.session_token"}}))
  puts URI.encode_www_form_component(rails_sign(rails_key(skb, "signed cookie"), payload))
'''


def rails_schema_rb():
    """schema_of a storage Rails 8.2 made from db/schema.rb (the expected shape)."""
    db = sqlite3.connect(":memory:")
    rails_schema.load_schema_rb(db)
    return rails_schema.schema_of(db)


def message_ids(html, container=None):
    if container:
        html = html[html.index('id="%s"' % container):]
    return [int(found) for found in re.findall(r'class="message[^"]*" id="message_(\d+)"', html)]


class StorageCase(unittest.TestCase):
    def setUp(self):
        self.storage = tempfile.mkdtemp(prefix="campfire-rails-storage-")
        os.makedirs(os.path.join(self.storage, "db"))
        self.path = os.path.join(self.storage, "db", "production.sqlite3")
        self.addCleanup(shutil.rmtree, self.storage, True)

    def open(self):
        app = make_app(self.storage, secret_key_base=SECRET_KEY_BASE)
        self.addCleanup(app.close)
        return app

    def raw(self):
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        return db

    def assert_rails_schema_with_our_additions(self, db):
        differences, additions = rails_schema.schema_differences(db, rails_schema_rb())
        self.assertEqual(differences, [])
        self.assertEqual(additions, OUR_ADDITIONS)
        self.assertEqual([row[0] for row in db.execute("SELECT version FROM schema_migrations ORDER BY version")],
                         ALL_VERSIONS)
        self.assertEqual(db.execute("SELECT value FROM ar_internal_metadata WHERE key = 'environment'").fetchone()[0],
                         "production")


class MigrationStepTests(StorageCase):
    """Each storage Rails could have left (any prefix of db/migrate) is brought forward."""

    def test_every_prefix_of_the_migrations_is_brought_to_todays_schema(self):
        for count in range(1, len(ALL_VERSIONS) + 1):
            with self.subTest(upto=ALL_VERSIONS[count - 1]):
                path = os.path.join(self.storage, "step%d.sqlite3" % count)
                db = sqlite3.connect(path)
                rails_schema.migrate(db, upto=ALL_VERSIONS[count - 1])
                db.close()
                opened = campfire.Database(path)
                try:
                    self.assertEqual(opened.pending_rails_migrations(), [
                        (version, name) for version, name, _ in campfire.RAILS_MIGRATIONS[count:]])
                    opened.migrate()
                    self.assertEqual(opened.pending_rails_migrations(), [])
                    self.assert_rails_schema_with_our_additions(opened.connection)
                finally:
                    opened.close()

    def test_a_new_storage_is_the_schema_rails_loads_from_schema_rb(self):
        app = self.open()
        self.assert_rails_schema_with_our_additions(app.db.connection)
        self.assertEqual(app.db.value("SELECT sql FROM sqlite_master WHERE name = 'message_search_index'"),
                         "CREATE VIRTUAL TABLE message_search_index USING fts5 (body, tokenize=porter)")

    def test_the_migrations_data_changes_are_rails(self):
        def rows(db, version):
            if version == "20240115124901":  # as the first release could hold them
                db.executescript("""
                  INSERT INTO users (id, name, created_at, updated_at, role, email_address, password_digest, active)
                  VALUES (1, 'Owner', '2024-01-01 00:00:00.000000', '2024-01-01 00:00:00.000000', 2, 'o@x', NULL, 1),
                         (2, 'Gone', '2024-01-01 00:00:00.000000', '2024-01-01 00:00:00.000000', 0, 'g@x', 'd', 0),
                         (3, 'Odd', '2024-01-01 00:00:00.000000', '2024-01-01 00:00:00.000000', 0, 'n@x', 'd', NULL);
                  INSERT INTO sessions (user_id, token, last_active_at, created_at, updated_at)
                  VALUES (2, 'tok', '2024-01-01 00:00:00.000000', '2024-01-01 00:00:00.000000',
                          '2024-01-01 00:00:00.000000');
                  INSERT INTO accounts (name, join_code, created_at, updated_at)
                  VALUES ('Team', 'abc', '2024-01-01 00:00:00.000000', '2024-01-01 00:00:00.000000');
                """)
        db = sqlite3.connect(self.path)
        rails_schema.migrate(db, upto="20240115124901", before=rows)
        db.close()
        app = self.open()
        # The owner became an administrator (RemoveOwnerRole), a NULL digest '' (migration 7),
        # active = 0 became status 1, deactivated (ChangeActiveToStatusOnUsers); the session
        # (a foreign key to the rebuilt users table) is still there.
        self.assertEqual([tuple(row) for row in app.db.all(
            "SELECT id, role, status, password_digest FROM users ORDER BY id")],
            [(1, 1, 0, ""), (2, 0, 1, "d"), (3, 0, 0, "d")])
        self.assertEqual(app.db.value("SELECT count(*) FROM sessions WHERE user_id = 2"), 1)
        self.assertEqual(app.db.all("PRAGMA foreign_key_check"), [])
        self.assertEqual(tuple(app.db.one("SELECT singleton_guard, settings FROM accounts")), (0, None))
        with self.assertRaises(sqlite3.IntegrityError):  # the singleton guard's unique index
            app.db.execute("INSERT INTO accounts (name, join_code, created_at, updated_at) VALUES ('b', 'c', 'x', 'y')")

    def test_a_newer_schema_is_refused_with_no_change(self):
        rails_schema.build(self.path, era="current")
        db = sqlite3.connect(self.path)
        db.execute("INSERT INTO schema_migrations VALUES ('20260301120000')")
        db.execute("PRAGMA journal_mode = DELETE")  # so a change of mode would show in the file too
        db.commit()
        db.close()
        with open(self.path, "rb") as file:
            before = file.read()
        with self.assertRaises(campfire.ConfigError) as caught:
            make_app(self.storage, secret_key_base=SECRET_KEY_BASE)
        message = str(caught.exception)
        self.assertIn("newer Campfire", message)
        self.assertIn("20260301120000", message)
        self.assertIn("Nothing in it was changed", message)
        with open(self.path, "rb") as file:
            self.assertEqual(file.read(), before)

    def test_the_squashed_2023_versions_are_ignored(self):
        rails_schema.build(self.path, era="once")
        db = sqlite3.connect(self.path)
        db.execute("INSERT INTO schema_migrations VALUES ('20230425104133')")  # squashed into the first file
        db.commit()
        db.close()
        app = self.open()
        self.assertEqual(app.db.pending_rails_migrations(), [])

    def test_a_failing_migration_names_itself_and_leaves_its_change_undone(self):
        db = sqlite3.connect(self.path)
        rails_schema.migrate(db, upto="20251126130131")
        db.execute("INSERT INTO accounts (name, join_code, created_at, updated_at) VALUES ('a', 'b', 'x', 'y')")
        db.execute("INSERT INTO accounts (name, join_code, created_at, updated_at) VALUES ('c', 'd', 'x', 'y')")
        db.commit()
        db.close()
        with self.assertRaises(campfire.ConfigError) as caught:
            make_app(self.storage, secret_key_base=SECRET_KEY_BASE)
        self.assertIn("20251212154340_add_singleton_constraint_to_accounts.rb failed", str(caught.exception))
        db = self.raw()
        self.assertNotIn("singleton_guard", [row[1] for row in db.execute("PRAGMA table_info(accounts)")])
        self.assertIsNone(db.execute("SELECT 1 FROM schema_migrations WHERE version = '20251212154340'").fetchone())

    def test_tables_without_schema_migrations_are_refused(self):
        db = sqlite3.connect(self.path)
        db.executescript(rails_schema.SCHEMA_RB)
        db.close()
        with self.assertRaises(campfire.ConfigError) as caught:
            make_app(self.storage, secret_key_base=SECRET_KEY_BASE)
        self.assertIn("no schema_migrations", str(caught.exception))

    def test_a_storage_an_earlier_release_opened_is_set_right(self):
        # Earlier releases recorded only their own migrations, named their indexes like
        # Rails' own, and created `bans` in a ONCE-era storage with DDL of their own.
        db = sqlite3.connect(self.path)
        rails_schema.migrate(db, upto=rails_schema.ONCE_ERA_LAST)
        db.executescript("""
            CREATE TABLE "campfire_py_migrations" ("name" varchar PRIMARY KEY NOT NULL, "applied_at" datetime(6) NOT NULL);
            INSERT INTO campfire_py_migrations VALUES ('0001_campfire_schema', '2025-01-01 00:00:00.000000'),
                ('0002_message_paging_indexes', '2025-01-01 00:00:00.000000'),
                ('0003_message_client_id_index', '2025-01-01 00:00:00.000000'),
                ('0004_unread_candidates_index', '2025-01-01 00:00:00.000000');
            CREATE INDEX "index_messages_on_room_id_and_created_at" ON "messages" ("room_id", "created_at");
            CREATE INDEX "index_messages_on_client_message_id" ON "messages" ("client_message_id");
            CREATE TABLE IF NOT EXISTS "bans" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "ip_address" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_070022cd76" FOREIGN KEY ("user_id") REFERENCES "users" ("id"));
            CREATE INDEX IF NOT EXISTS "index_bans_on_user_id" ON "bans" ("user_id");
            CREATE INDEX IF NOT EXISTS "index_bans_on_ip_address" ON "bans" ("ip_address");
            INSERT INTO users (id, name, created_at, updated_at, role, email_address, password_digest, active)
            VALUES (7, 'Banned', '2024-01-01 00:00:00.000000', '2024-01-01 00:00:00.000000', 0, 'b@x', 'd', 1);
            INSERT INTO bans (user_id, ip_address, created_at, updated_at)
            VALUES (7, '203.0.113.9', '2025-01-01 00:00:00.000000', '2025-01-01 00:00:00.000000');
        """)
        db.close()
        app = self.open()
        self.assert_rails_schema_with_our_additions(app.db.connection)
        self.assertEqual(tuple(app.db.one("SELECT user_id, ip_address FROM bans")), (7, "203.0.113.9"))
        self.assertEqual(app.db.value("SELECT count(*) FROM sqlite_master WHERE name LIKE 'index_messages_on_%'"), 2)

    def test_a_new_storage_of_an_earlier_release_gets_its_versions(self):
        db = sqlite3.connect(self.path)
        db.executescript(rails_schema.SCHEMA_RB + """
            CREATE TABLE "campfire_py_migrations" ("name" varchar PRIMARY KEY NOT NULL, "applied_at" datetime(6) NOT NULL);
            INSERT INTO campfire_py_migrations VALUES ('0001_campfire_schema', '2025-01-01 00:00:00.000000');
        """)
        db.close()
        app = self.open()
        self.assert_rails_schema_with_our_additions(app.db.connection)


class CheckReportTests(StorageCase):
    """`campfire.py check`: what opening a storage will do, told before a move, changing nothing."""

    def report(self):
        return campfire.storage_report(campfire.Config(storage_path=self.storage))

    def test_a_once_era_storage_is_described_and_left_alone(self):
        rails_schema.build(self.path, era="once", index=("first",))
        with open(self.path, "rb") as file:
            before = file.read()
        lines = self.report()
        self.assertIn("Schema: version 20240209110503, the first ONCE releases (users.active, no bans, "
                      "no account settings).", lines)
        runs = lines.index("At start, these Rails migrations run, each recorded in schema_migrations:")
        self.assertEqual(lines[runs + 1:runs + 8], ["  %s_%s.rb" % (version, name) for version, name, _
                                                     in rails_schema.MIGRATIONS[8:]])
        self.assertIn("People: 4 active, 1 deactivated or banned, 1 bots", lines)
        self.assertIn("Rooms: 2 open, 2 closed, 2 direct", lines)
        self.assertIn("Messages: 7, with 1 boosts", lines)
        self.assertIn("Search index: 1 of 7 messages; the rest are indexed in the background at start.", lines)
        self.assertTrue(any(line.startswith("Sessions: 1 signed in on Rails") for line in lines))
        with open(self.path, "rb") as file:
            self.assertEqual(file.read(), before)
        self.assertEqual(sqlite3.connect(self.path).execute("SELECT count(*) FROM schema_migrations").fetchone(), (8,))

    def test_the_command_line_prints_the_report(self):
        rails_schema.build(self.path, era="once")
        result = subprocess.run([sys.executable, CAMPFIRE_PY, "check", "--storage", self.storage],
                                capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("At start, these Rails migrations run", result.stdout)
        self.assertIn("  20251126092013_create_bans.rb", result.stdout)
        self.assertEqual(sqlite3.connect(self.path).execute("SELECT count(*) FROM schema_migrations").fetchone(), (8,))

    def test_a_current_storage_has_nothing_pending_after_a_start_and_a_newer_one_is_refused(self):
        rails_schema.build(self.path, era="current")
        self.open().close()
        lines = self.report()
        self.assertIn("Schema: version 20251212154340, today's Once Campfire.", lines)
        self.assertIn("Nothing to migrate: Rails' db:prepare would find nothing pending.", lines)
        db = sqlite3.connect(self.path)
        db.execute("INSERT INTO schema_migrations VALUES ('20260301120000')")
        db.commit()
        db.close()
        self.assertIn("Schema: migrated by a newer Campfire (20260301120000); this server refuses it and changes "
                      "nothing.", self.report())


class OpenedStorageTests(StorageCase):
    """A ONCE-era storage and a current one, with Campfire's fixture team, used as a
    person would: nothing looks different, and Rails can take the data back."""

    def team(self, era, **options):
        self.uid, self.rid, self.mid = rails_schema.build(self.path, era=era, **options)
        self.app = self.open()
        return self.app

    def sign_in(self, email="jason@37signals.com", password=rails_schema.FIXTURE_PASSWORD):
        client = Client(self.app)
        response = client.post("/session", {"email_address": email, "password": password})
        return client, response

    def check_everything_shows(self, era):
        self.team(era)
        if not campfire.bcrypt_supported():
            self.skipTest("this system's crypt(3) has no bcrypt")
        client, response = self.sign_in()
        self.assertEqual(response.status, 303)
        self.assertEqual(self.app.db.value("SELECT password_digest FROM users WHERE id = ?", (self.uid["jason"],)),
                         rails_schema.FIXTURE_DIGEST)
        # Every room Jason is in, with its messages, and "(edited)" only where the body changed.
        by_room = {}
        for label, room, *_ in rails_schema.MESSAGES:
            by_room.setdefault(room, []).append(self.mid[label])
        for room in ("pets", "hq", "watercooler", "david_and_jason"):
            with self.subTest(room=room):
                page = client.get("/rooms/%d" % self.rid[room])
                self.assertEqual(page.status, 200)
                self.assertEqual(sorted(message_ids(page.text)), sorted(by_room.get(room, [])))
        watercooler = client.get("/rooms/%d" % self.rid["watercooler"]).text
        edited = re.findall(r'id="message_(\d+)"(?:(?!id="message_).)*\(edited\)', watercooler, re.S)
        self.assertEqual([int(found) for found in edited], [self.mid["edited"]])
        self.assertEqual(client.get("/rooms/%d" % self.rid["designers"]).status, 404)
        # Search: the whole history although only two messages had search rows, newest first.
        page = client.get("/searches?q=walnut")
        self.assertEqual(message_ids(page.text, "search-results"),
                         [self.mid[label] for label in ("later", "edited", "boosted", "first")])
        # No last_room cookie: the oldest room Jason is in, not the first by name.
        self.assertEqual(client.get("/").header("Location"), "/rooms/%d" % self.rid["watercooler"])
        # A deactivated person (users.active = 0 in the ONCE era) and a bot can't sign in.
        self.assertEqual(self.sign_in("gone@37signals.com")[1].status, 401)
        return client

    def test_a_once_era_storage_opens_and_shows_everything(self):
        self.check_everything_shows("once")
        self.assertEqual(self.app.db.value("SELECT status FROM users WHERE id = ?", (self.uid["gone"],)), 1)

    def test_a_current_storage_opens_and_shows_everything(self):
        self.check_everything_shows("current")

    def test_after_use_the_schema_is_what_rails_expects_and_passwords_stay_bcrypt(self):
        client = self.check_everything_shows("once")
        room = self.rid["watercooler"]
        self.assertEqual(client.post("/rooms/%d/messages" % room, {"message[body]": "hello @Kevin"}).status, 201)
        posted = self.app.db.value("SELECT max(id) FROM messages WHERE creator_id = ?", (self.uid["jason"],))
        self.assertIn(client.post("/messages/%d/boosts" % self.mid["first"], {"boost[content]": "👍"}).status,
                      (200, 201, 303))
        self.assertEqual(client.post("/users/me/profile", {"_method": "patch", "user[name]": "Jason",
                                                           "user[email_address]": "jason@37signals.com",
                                                           "user[password]": "a new password"}).status, 303)
        digest = self.app.db.value("SELECT password_digest FROM users WHERE id = ?", (self.uid["jason"],))
        self.assertRegex(digest, r"^\$2a\$04\$[./A-Za-z0-9]{53}$")
        self.assertTrue(campfire.check_password("a new password", digest))
        self.assertEqual(self.app.db.value("SELECT count(*) FROM message_search_index WHERE rowid = ?", (posted,)), 1)
        self.app.close()
        self.assert_rails_schema_with_our_additions(self.raw())
        self.assertEqual(self.raw().execute("PRAGMA foreign_key_check").fetchall(), [])

    def test_the_search_index_is_rebuilt_with_progress_in_the_log(self):
        with self.assertLogs("campfire", "INFO") as logs:
            self.team("current", index=())
        self.assertTrue(any("search index: incomplete; checking 7 messages" in line for line in logs.output))
        self.assertTrue(any("search index: rebuilt (7 messages checked, 7 indexed)" in line for line in logs.output))
        self.assertEqual(self.app.db.value("SELECT count(*) FROM message_search_index"), 7)
        self.app.close()
        with self.assertNoLogs("campfire", "INFO"):  # complete now: nothing to do at the next start
            self.app = self.open()


class ServedStorageTests(StorageCase):
    def test_the_server_answers_while_the_search_index_is_rebuilt(self):
        rails_schema.build(self.path, era="current", index=())
        server = CampfireProcess(storage=self.storage, env={"SECRET_KEY_BASE": SECRET_KEY_BASE}).start()
        self.addCleanup(server.stop)
        with urllib.request.urlopen(server.url + "/up", timeout=5) as response:
            self.assertEqual(response.status, 200)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(server.log_path, errors="replace") as log:
                text = log.read()
            if "search index: rebuilt" in text:
                break
            time.sleep(0.05)
        self.assertIn("search index: incomplete; checking 7 messages in the background", text)
        self.assertIn("search index: rebuilt (7 messages checked, 7 indexed)", text)
        self.assertLess(text.index("listening on"), text.index("search index: incomplete"))
        server.stop()
        db = self.raw()
        self.assertEqual(db.execute("SELECT count(*) FROM message_search_index").fetchone(), (7,))


class RailsSignedTests(StorageCase):
    """Mentions and session cookies signed by a Ruby peer following Rails' derivation."""

    def setUp(self):
        super().setUp()
        self.sgid = None

    def team(self, era="current", mention_sgid=None):
        self.uid, self.rid, self.mid = rails_schema.build(self.path, era=era, mention_sgid=mention_sgid)
        self.app = self.open()

    def test_a_rails_signed_mention_is_kept_and_ours_verify_in_ruby(self):
        kevin = rails_schema.identify("kevin")
        sgid = ruby(self, RUBY_SIGN_SGID, SECRET_KEY_BASE, str(kevin))
        self.team(mention_sgid=sgid)
        self.assertEqual(campfire.verify_sgid(sgid, SECRET_KEY_BASE), kevin)
        stored = self.app.db.value("SELECT body FROM action_text_rich_texts WHERE record_id = ?",
                                   (self.mid["mention"],))
        self.assertIn(sgid, stored)  # verified as it is: not rewritten
        session = Client(self.app)
        session.cookies["session_token"] = self.app.store.create_session(self.uid["david"], "127.0.0.1", "test")
        page = session.get("/rooms/%d" % self.rid["watercooler"]).text
        self.assertIn('class="mention" data-user-id="%d"' % kevin, page)
        ours = self.app.store.mention_sgid(kevin)
        self.assertEqual(ours, sgid)  # the same bytes as Rails
        self.assertEqual(ruby(self, RUBY_VERIFY_SGID, SECRET_KEY_BASE, ours).splitlines(),
                         ["gid://campfire/User/%d" % kevin, "attachable"])

    def test_mentions_an_earlier_release_signed_are_signed_again_as_rails_signs_them(self):
        kevin = rails_schema.identify("kevin")
        import base64
        import hmac
        data = base64.b64encode(('{"_rails":{"data":"gid://campfire/User/%d","pur":"attachable"}}' % kevin).encode()).decode()
        old_key = hashlib.sha256(b"campfire mentions\0" + SECRET_KEY_BASE.encode()).digest()
        old = data + "--" + hmac.new(old_key, data.encode(), hashlib.sha256).hexdigest()
        self.team(mention_sgid=old)
        stored = self.app.db.value("SELECT body FROM action_text_rich_texts WHERE record_id = ?",
                                   (self.mid["mention"],))
        self.assertNotIn(old, stored)
        sgid = re.search(r'sgid="([^"]+)"', stored)[1]
        self.assertEqual(ruby(self, RUBY_VERIFY_SGID, SECRET_KEY_BASE, sgid).splitlines(),
                         ["gid://campfire/User/%d" % kevin, "attachable"])

    def test_a_rails_session_cookie_keeps_the_person_signed_in(self):
        self.team()
        cookie = ruby(self, RUBY_SESSION_COOKIE, SECRET_KEY_BASE, rails_schema.SESSION_TOKEN)
        client = Client(self.app)
        client.cookies["session_token"] = cookie
        page = client.get("/rooms/%d" % self.rid["watercooler"])
        self.assertEqual(page.status, 200)
        self.assertIn("Kevin", page.text)
        # Replaced by ours on first use: a new cookie, and Rails' session row is gone.
        ours = client.cookies["session_token"]
        self.assertNotEqual(ours, cookie)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM sessions WHERE token = ?",
                                           (rails_schema.SESSION_TOKEN,)), 0)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM sessions WHERE user_id = ?",
                                           (self.uid["kevin"],)), 1)
        self.assertEqual(client.get("/rooms/%d" % self.rid["watercooler"]).status, 200)
        # The Rails cookie named a session that is ours now: it doesn't sign in again.
        again = Client(self.app)
        again.cookies["session_token"] = cookie
        self.assertEqual(again.get("/rooms/%d" % self.rid["watercooler"]).status, 302)

    def test_a_session_cookie_signed_with_another_key_or_tampered_with_is_refused(self):
        self.team()
        other = ruby(self, RUBY_SESSION_COOKIE, SECRET_KEY_BASE[::-1], rails_schema.SESSION_TOKEN)
        good = ruby(self, RUBY_SESSION_COOKIE, SECRET_KEY_BASE, rails_schema.SESSION_TOKEN)
        payload, _, digest = good.rpartition("--")
        tampered = payload + "--" + ("0" if digest[0] != "0" else "1") + digest[1:]
        for cookie in (other, tampered, payload, "--" + digest):
            with self.subTest(cookie=cookie[:20]):
                client = Client(self.app)
                client.cookies["session_token"] = cookie
                self.assertEqual(client.get("/rooms/%d" % self.rid["watercooler"]).status, 302)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM sessions WHERE token = ?",
                                           (rails_schema.SESSION_TOKEN,)), 1)


if __name__ == "__main__":
    unittest.main()
