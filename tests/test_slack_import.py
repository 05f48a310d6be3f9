"""`campfire.py import-slack EXPORT.zip` end to end: a small Slack export written here
in Slack's documented format (the one test_slack_reader.py reads) is imported by the
command as a person runs it, twice; then the storage is served by the app and read as
each imported person, signed in with the link the import printed."""

import base64
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unittest

from PIL import Image

from tests.helpers import Client, campfire, make_app
from tests.test_backups import CAMPFIRE_PY, run_cli
from tests.test_slack_reader import TEAM, USERS, export_members, zip_bytes

BASE_URL = "https://chat.example.com"
TABLES = ("users", "rooms", "memberships", "messages", "action_text_rich_texts", "active_storage_blobs",
          "active_storage_attachments", "campfire_py_imported")


def png_bytes(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 200)).save(buffer, "PNG")   # Pillow writes it
    return buffer.getvalue()


DIAGRAM = png_bytes(30, 20)


def write_export(folder, **changes):
    path = os.path.join(folder, "slack-export.zip")
    with open(path, "wb") as file:
        file.write(zip_bytes(export_members(**{"__uploads/F01DIAGRAM/diagram.png": DIAGRAM, **changes})))
    return path


def new_storage(test, admin_email="root@example.com"):
    """A storage with an account and its administrator, as `create-admin` makes them."""
    storage = tempfile.mkdtemp(prefix="campfire-slack-")
    test.addCleanup(shutil.rmtree, storage, True)
    status, _, err = run_cli("create-admin", "--name", "Root Admin", "--email", admin_email, storage=storage,
                             stdin="root-password\n")
    assert status == 0, err
    return storage


def snapshot(storage):
    """Every row an import writes, the search index, and the files on disk."""
    connection = sqlite3.connect(os.path.join(storage, "db", "production.sqlite3"))
    try:
        rows = {table: connection.execute('SELECT * FROM "%s" ORDER BY 1' % table).fetchall() for table in TABLES}
        rows["search"] = connection.execute("SELECT rowid, body FROM message_search_index ORDER BY rowid").fetchall()
    finally:
        connection.close()
    files = []
    for folder, _, names in os.walk(os.path.join(storage, "files")):
        for name in names:
            with open(os.path.join(folder, name), "rb") as file:
                files.append((os.path.relpath(os.path.join(folder, name), storage), hashlib.sha256(file.read()).hexdigest()))
    rows["files"] = sorted(files)
    return rows


def imported(storage, kind):
    """{source key: record id} of what the import recorded."""
    connection = sqlite3.connect(os.path.join(storage, "db", "production.sqlite3"))
    try:
        return dict(connection.execute("SELECT source_key, record_id FROM campfire_py_imported WHERE kind = ?",
                                       (kind,)))
    finally:
        connection.close()


def key(*parts):
    return ":".join(("slack", TEAM) + parts)


def sign_in_links(out):
    """{name: link} from the import's report."""
    return {match[1]: match[2] for match in re.finditer(r"^  (.+?)(?: <[^>]*>)?: (%s/\S+)$" % re.escape(BASE_URL),
                                                         out, re.M)}


def body_of(response):
    if response.file is None:
        return response.body
    try:
        return response.file.read_all()
    finally:
        response.file.file.close()


class ImportedStorageTests(unittest.TestCase):
    """One export imported twice into one storage, then read through the app."""

    @classmethod
    def setUpClass(cls):
        cls.storage = tempfile.mkdtemp(prefix="campfire-slack-")
        cls.work = tempfile.mkdtemp(prefix="campfire-slack-export-")
        status, _, err = run_cli("create-admin", "--name", "Root Admin", "--email", "root@example.com",
                                 storage=cls.storage, stdin="root-password\n")
        assert status == 0, err
        users = [dict(user, profile=dict(user["profile"], email="carol@example.com"))
                 if user["id"] == "U03CAROL" else user for user in USERS]
        cls.export = write_export(cls.work, **{"users.json": users})
        cls.first = run_cli("import-slack", cls.export, "--url", BASE_URL, storage=cls.storage)
        cls.after_first = snapshot(cls.storage)
        cls.second = run_cli("import-slack", cls.export, "--url", BASE_URL, storage=cls.storage)
        cls.after_second = snapshot(cls.storage)
        cls.users = imported(cls.storage, "user")
        cls.rooms = imported(cls.storage, "room")
        cls.messages = imported(cls.storage, "message")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.storage, ignore_errors=True)
        shutil.rmtree(cls.work, ignore_errors=True)

    def setUp(self):
        self.app = make_app(self.storage)
        self.addCleanup(self.app.close)

    def client_for(self, name):
        """A browser signed in as an imported person, through the link the import printed."""
        link = sign_in_links(self.first[1])[name]
        client = Client(self.app)
        path = link[len(BASE_URL):]
        self.assertEqual(client.get(path).status, 200)
        self.assertEqual(client.post(path, {"_method": "put"}).status, 303)
        return client

    def message(self, source_key):
        return self.app.store.message(self.messages[source_key])

    def test_both_runs_succeed_and_the_second_changes_nothing(self):
        self.assertEqual(self.first[0], 0, self.first[2])
        self.assertEqual(self.second[0], 0, self.second[2])
        self.assertEqual(self.after_first, self.after_second)
        self.assertIn("6 people, 5 rooms, 15 messages (1 files) created; 0 people, 0 rooms, 0 messages were "
                      "already here", self.first[1])
        self.assertIn("0 people, 0 rooms, 0 messages (0 files) created; 6 people, 5 rooms, 15 messages were "
                      "already here and are unchanged", self.second[1])
        # what the export holds is counted the same both times
        report = lambda out: out[out.index("What the export holds"):out.index("Archived Slack channels")]  # noqa: E731
        self.assertEqual(report(self.first[1]), report(self.second[1]))
        self.assertIn("5 people, 5 rooms, 15 messages (1 with a file, 1 files linked, 2 thread replies, 1 edited)",
                      self.first[1])
        self.assertEqual(len(self.after_first["messages"]), 15)
        self.assertEqual(len(self.after_first["search"]), 15)

    def test_imported_messages_notify_nobody(self):
        connection = sqlite3.connect(os.path.join(self.storage, "db", "production.sqlite3"))
        try:
            self.assertEqual(connection.execute("SELECT count(*) FROM memberships WHERE unread_at IS NOT NULL")
                             .fetchone()[0], 0)
            self.assertEqual(connection.execute("SELECT count(*) FROM campfire_py_mentions").fetchone()[0], 0)
        finally:
            connection.close()

    def test_the_report_names_what_was_skipped_and_where(self):
        out = self.first[1]
        self.assertIn("skipped 1: a system message (channel_join) (general/2020-09-13.json #0)", out)
        self.assertIn("skipped 1: a system message (channel_leave) (general/2020-09-14.json #2)", out)
        self.assertIn("skipped 1: a system message (channel_topic) (general/2020-09-13.json #10)", out)
        self.assertIn("skipped 1: a file Slack no longer has (deleted, or past the plan's limit) "
                      "(general/2020-09-13.json #9)", out)
        self.assertIn("1 authors not in users.json, made up from their messages", out)
        self.assertIn("people: 100%", self.first[2])   # progress, as plain lines off a terminal
        self.assertIn("messages: 100%", self.first[2])

    def test_people_come_without_passwords_and_each_gets_a_sign_in_link(self):
        store = self.app.store
        alice, bob, carol, deploy, dan = (store.user(self.users[key("user", slack_id)]) for slack_id in
                                          ("U01ALICE", "U02BOB", "U03CAROL", "U04DEPLOY", "U05DAN"))
        hook = store.user(self.users[key("bot", "B09HOOK")])
        self.assertEqual((alice.name, alice.email_address, alice.administrator), ("Alice Smith", "alice@example.com",
                                                                                 True))
        self.assertEqual((bob.name, bob.administrator, bob.active), ("Bob Émile", False, True))
        self.assertFalse(carol.active)            # deleted in Slack: deactivated here,
        self.assertIsNone(carol.email_address)    # and her address free for someone new
        self.assertTrue(deploy.bot and hook.bot)  # bots, with a key of their own and no email
        self.assertIsNone(deploy.email_address)
        self.assertIsNone(dan.email_address)      # "not an email" is not kept
        self.assertEqual(hook.name, "github")
        for user in (alice, bob, carol, deploy, dan, hook):
            self.assertIsNone(user.password_digest, user.name)
        links = sign_in_links(self.first[1])
        self.assertEqual(sorted(links), ["Alice Smith", "Bob Émile", 'Dan <Dev> & "Co"'])
        self.assertIn("Alice Smith <alice@example.com>: " + BASE_URL + "/session/transfers/", self.first[1])
        client = self.client_for("Alice Smith")
        profile = client.get("/users/me/profile")
        self.assertEqual(profile.status, 200)
        self.assertIn("alice@example.com", profile.text)

    def test_private_rooms_and_direct_messages_show_only_to_their_members(self):
        general, old, secret, direct, group = (self.rooms[key("room", slack_id)] for slack_id in
                                               ("C01GENERAL", "C02OLD", "G01SECRET", "D01AB", "G02MPIM"))
        store = self.app.store
        self.assertEqual(store.room(general).type, campfire.ROOM_OPEN)
        self.assertEqual(store.room(old).type, campfire.ROOM_OPEN)    # archived in Slack, a room here
        self.assertEqual(store.room(secret).type, campfire.ROOM_CLOSED)
        self.assertEqual(store.room(direct).type, campfire.ROOM_DIRECT)
        self.assertEqual(store.room(group).type, campfire.ROOM_DIRECT)
        alice, bob, dan = (self.client_for(name) for name in ("Alice Smith", "Bob Émile", 'Dan <Dev> & "Co"'))
        self.assertIn("plan = {&quot;a&quot;: 1 &lt; 2}", bob.get("/rooms/%d" % secret).text)
        self.assertIn("psst", alice.get("/rooms/%d" % direct).text)
        self.assertIn("hi all", alice.get("/rooms/%d" % group).text)
        self.assertIn("hi all", dan.get("/rooms/%d" % group).text)
        self.assertIn("late to the party", dan.get("/rooms/%d" % general).text)
        for room_id in (secret, direct):
            self.assertEqual(dan.get("/rooms/%d" % room_id).status, 404)
        self.assertNotIn("secret-plans", dan.get("/users/me/sidebar").text)
        self.assertIn("secret-plans", bob.get("/users/me/sidebar").text)
        admin = Client(self.app)
        self.assertEqual(admin.post("/session", {"email_address": "root@example.com",
                                                 "password": "root-password"}).status, 303)
        self.assertEqual(admin.get("/rooms/%d" % direct).status, 404)
        self.assertEqual(admin.get("/rooms/%d" % general).status, 200)   # open rooms hold everyone

    def test_messages_keep_their_authors_times_and_formatting(self):
        hello = self.message(key("C01GENERAL", "1600000100.000200"))
        self.assertEqual(hello["creator_id"], self.users[key("user", "U01ALICE")])
        self.assertEqual(hello["created_at"], "2020-09-13 12:28:20.000200")   # date -u -d @1600000100
        self.assertIn("<strong>Hello</strong> <em>team</em> <del>old</del> <code>code</code> &lt;b&gt; &amp;",
                      hello["body"])
        edited = self.message(key("C01GENERAL", "1600000500.000600"))
        self.assertEqual(edited["updated_at"], "2020-09-13 12:36:40.000000")
        page = self.client_for("Bob Émile").get("/rooms/%d" % self.rooms[key("room", "C01GENERAL")]).text
        self.assertIn("<strong>Hello</strong>", page)
        self.assertIn("Deployed", page)
        # a file whose bytes the export doesn't hold is a link to it
        self.assertIn('href="https://team.slack.com/files/U02BOB/F02REPORT/report.pdf"', page)

    def test_mentions_are_stored_and_rendered_as_mentions(self):
        alice_id, bob_id = self.users[key("user", "U01ALICE")], self.users[key("user", "U02BOB")]
        hi = self.message(key("C01GENERAL", "1600000200.000300"))
        self.assertEqual([campfire.sgid_user_id(sgid) for sgid in campfire.find_mentions(hi["body"])], [alice_id])
        self.assertIsNotNone(campfire.verify_sgid(campfire.find_mentions(hi["body"])[0], self.app.store.sgid_secret))
        page = self.client_for("Alice Smith").get("/rooms/%d" % self.rooms[key("room", "C01GENERAL")]).text
        self.assertIn('class="mention" data-user-id="%d"' % alice_id, page)
        self.assertIn('class="mention" data-user-id="%d"' % bob_id, page)   # "Shipping <@U02BOB|bob>"
        self.assertIn("@here", page)

    def test_thread_replies_are_flattened_as_quotes_of_their_start(self):
        start = self.messages[key("C01GENERAL", "1600000300.000400")]
        general = self.rooms[key("room", "C01GENERAL")]
        reply = self.message(key("C01GENERAL", "1600000400.000500"))
        self.assertEqual(reply["body"], '<blockquote>Shall we ship v2?</blockquote><cite>Alice Smith '
                                        '<a href="/rooms/%d/@%d">#</a></cite><div>Yes!</div>' % (general, start))
        self.assertEqual(self.client_for("Bob Émile").get("/rooms/%d/@%d" % (general, start)).status, 200)

    def test_files_are_stored_as_uploads_and_served_to_the_room(self):
        message_id = self.messages[key("C01GENERAL", "1600000900.000900:F01DIAGRAM")]
        blob = self.app.store.attachment("Message", message_id, "attachment")
        self.assertEqual((blob.filename, blob.content_type, blob.byte_size), ("diagram.png", "image/png", len(DIAGRAM)))
        self.assertEqual(blob.checksum, base64.b64encode(hashlib.md5(DIAGRAM).digest()).decode())
        self.assertNotIn("F01DIAGRAM", blob.key)   # a fresh key, never the export's name
        connection = sqlite3.connect(os.path.join(self.storage, "db", "production.sqlite3"))
        metadata = json.loads(connection.execute("SELECT metadata FROM active_storage_blobs WHERE id = ?",
                                                 (blob.id,)).fetchone()[0])
        connection.close()
        self.assertEqual((metadata["width"], metadata["height"]), (30, 20))
        for name in ("Bob Émile", 'Dan <Dev> & "Co"'):
            response = self.client_for(name).get("/messages/%d/attachment" % message_id)
            self.assertEqual(response.status, 200)
            self.assertEqual(body_of(response), DIAGRAM)
        text = self.message(key("C01GENERAL", "1600000900.000900"))
        self.assertIn("Here&#x27;s the diagram", self.client_for("Bob Émile").get(
            "/rooms/%d" % self.rooms[key("room", "C01GENERAL")]).text.replace("'", "&#x27;"))
        self.assertLess(text["id"], message_id)   # the text, then its file, as Slack showed them

    def test_search_finds_imported_messages_for_those_who_may_read_them(self):
        bob, dan = self.client_for("Bob Émile"), self.client_for('Dan <Dev> & "Co"')

        def results(client, query):
            page = client.get("/searches?q=" + query).text
            return page[page.index('id="search-results"'):]
        self.assertIn("fixed the", results(bob, "typo"))
        self.assertIn("psst", results(bob, "psst"))           # a direct message, to one of its two people
        self.assertNotIn("psst", results(dan, "psst"))        # and to nobody else
        self.assertIn("late to the <mark>party</mark>", results(dan, "party"))
        self.assertIn("diagram", results(dan, "diagram.png"))  # a file, by its name

    def test_the_imported_storage_passes_check(self):
        status, out, err = run_cli("check", storage=self.storage)
        self.assertEqual(status, 0, out + err)
        self.assertIn("No problems found.", out)


class ImportCommandTests(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="campfire-slack-export-")
        self.addCleanup(shutil.rmtree, self.work, True)

    def test_help_and_usage(self):
        status, out, _ = run_cli("import-slack", "--help")
        self.assertEqual(status, 0)
        self.assertIn("usage: campfire.py import-slack [OPTION ...] EXPORT", out)
        self.assertIn("exit status: 0 done; 1 failed", " ".join(out.split()))
        self.assertEqual(run_cli("import-slack")[0], 2)

    def test_what_is_not_an_export_is_refused_and_nothing_changes(self):
        storage = new_storage(self)
        before = snapshot(storage)
        text = os.path.join(self.work, "notes.zip")
        with open(text, "w") as file:
            file.write("not a zip at all")
        status, _, err = run_cli("import-slack", text, storage=storage)
        self.assertEqual(status, 1)
        self.assertIn("not a ZIP archive", err)
        self.assertNotIn("Traceback", err)
        no_users = write_export(self.work, **{"users.json": None})
        status, _, err = run_cli("import-slack", no_users, storage=storage)
        self.assertEqual(status, 1)
        self.assertIn("no users.json", err)
        status, _, err = run_cli("import-slack", os.path.join(self.work, "missing.zip"), storage=storage)
        self.assertEqual(status, 1)
        self.assertIn("There is no file", err)
        self.assertEqual(snapshot(storage), before)

    def test_a_storage_without_an_account_is_refused(self):
        storage = tempfile.mkdtemp(prefix="campfire-slack-")
        self.addCleanup(shutil.rmtree, storage, True)
        status, _, err = run_cli("import-slack", write_export(self.work), storage=storage)
        self.assertEqual(status, 1)
        self.assertIn("create-admin", err)

    def test_refused_while_a_server_runs_on_the_storage(self):
        storage = new_storage(self)
        export = write_export(self.work)
        env = dict(os.environ, CAMPFIRE_STORAGE_PATH=storage, BACKUP_INTERVAL="0")
        env.pop("BACKUP_URL", None)
        server = subprocess.Popen([sys.executable, CAMPFIRE_PY, "serve", "--port", "0", "--host", "127.0.0.1"],
                                  env=env, stderr=subprocess.PIPE, text=True)
        try:
            line = ""
            while "listening" not in line and server.poll() is None:
                line = server.stderr.readline()  # the server's log; it ends when the server does
            self.assertIn("listening", line)
            status, _, err = run_cli("import-slack", export, storage=storage)
            self.assertEqual(status, 3, err)
            self.assertIn("server is running", err)
        finally:
            server.terminate()
            server.wait(30)
            server.stderr.close()
        self.assertEqual(imported(storage, "message"), {})
        self.assertEqual(run_cli("import-slack", export, storage=storage)[0], 0)

    def test_someone_already_here_with_the_same_email_is_that_person(self):
        storage = new_storage(self, admin_email="alice@example.com")
        status, out, err = run_cli("import-slack", write_export(self.work), "--url", BASE_URL, storage=storage)
        self.assertEqual(status, 0, err)
        app = make_app(storage)
        self.addCleanup(app.close)
        alice = app.store.user_by_email("alice@example.com")
        self.assertEqual(alice.name, "Root Admin")   # matched, not changed
        self.assertEqual(imported(storage, "user")[key("user", "U01ALICE")], alice.id)
        hello = app.store.message(imported(storage, "message")[key("C01GENERAL", "1600000100.000200")])
        self.assertEqual(hello["creator_id"], alice.id)
        self.assertNotIn("Alice Smith", sign_in_links(out))   # she has a password already
        self.assertIn("Bob Émile", sign_in_links(out))

    def test_an_interrupted_import_keeps_whole_records_and_a_rerun_completes_it(self):
        export = write_export(self.work)
        complete = new_storage(self)
        self.assertEqual(run_cli("import-slack", export, storage=complete)[0], 0)
        storage = new_storage(self)
        config = campfire.Config(storage_path=storage)
        seen = []

        def progress(label, done, total):
            seen.append(label)
            if label == "messages" and done == 1:   # Ctrl-C as the second room's messages begin
                raise KeyboardInterrupt

        with self.assertRaises(KeyboardInterrupt):
            campfire.import_slack(config, export, base_url=BASE_URL, progress=progress, batch=3)
        partial = snapshot(storage)
        self.assertLess(len(partial["messages"]), 15)
        self.assertGreater(len(partial["messages"]), 0)   # the batches committed before stay
        self.assertEqual(len(partial["messages"]), len(partial["search"]))
        self.assertEqual(len(partial["messages"]), len(imported(storage, "message")))
        self.assertEqual(os.listdir(os.path.join(storage, "files", "tmp")), [])
        result = campfire.import_slack(config, export, base_url=BASE_URL)
        self.assertEqual(result.created["messages"] + result.existing["messages"], 15)
        self.assertEqual(len(result.links), 3)   # nobody's link is lost with the first run
        finished, expected = snapshot(storage), snapshot(complete)
        for table in ("messages", "action_text_rich_texts", "search", "memberships", "active_storage_attachments"):
            self.assertEqual(len(finished[table]), len(expected[table]), table)
        self.assertEqual(sorted(body for _, body in finished["search"]),
                         sorted(body for _, body in expected["search"]))


if __name__ == "__main__":
    unittest.main()
