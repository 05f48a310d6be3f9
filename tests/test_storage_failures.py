"""When the disk refuses writes: a full disk in the middle of a group commit, a
damaged database, a read-only one. Nothing acknowledged is lost, nothing refused
persists, and the server keeps working once space returns."""

import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.parse

from tests.helpers import AppTestCase, Client, LiveServer, campfire, first_run_cookie, make_app, recv_response

BIG = "<div>%s</div>" % " ".join("word%d" % n for n in range(6000))  # ~50 KB: many pages per post


def fill_disk(db, spare_pages=0):
    """Let the database grow by at most spare_pages (PRAGMA max_page_count), with a
    tiny page cache so a large transaction spills, as a nearly full disk behaves."""
    db.execute("PRAGMA cache_size = 8")
    pages = db.value("PRAGMA page_count")
    db.value("PRAGMA max_page_count = %d" % (pages + spare_pages))


def free_disk(db):
    db.value("PRAGMA max_page_count = 4294967294")
    db.execute("PRAGMA cache_size = -2000")


def audit(test, db):
    """Every message has its rich text and exactly its search row; no search row is orphaned."""
    messages = db.value("SELECT count(*) FROM messages")
    test.assertEqual(db.value("SELECT count(*) FROM message_search_index"), messages)
    test.assertEqual(db.value("SELECT count(*) FROM message_search_index WHERE rowid NOT IN "
                              "(SELECT id FROM messages)"), 0)
    test.assertEqual(db.value("SELECT count(*) FROM action_text_rich_texts WHERE record_type = 'Message' "
                              "AND record_id NOT IN (SELECT id FROM messages)"), 0)
    test.assertEqual(db.value("PRAGMA integrity_check"), "ok")
    db.execute("INSERT INTO message_search_index (message_search_index, rank) VALUES ('integrity-check', 1)")


class GroupLostToAFullDiskTests(AppTestCase):
    """The production path in-process: App.handle under group commit, as the server runs it."""

    def setUp(self):
        super().setUp()
        self.first_run()
        self.room_id = self.app.db.value("SELECT id FROM rooms")
        self.bea = self.join("Bea", "bea@example.com")
        self.client.post("/rooms/opens", {"room[name]": "Doomed"})
        self.doomed = self.app.db.value("SELECT id FROM rooms WHERE name = 'Doomed'")
        response = self.post(self.client, "<div>before the trouble</div>", "before")
        self.assertEqual(response.status, 201)
        self.edited_id = self.app.db.value("SELECT id FROM messages WHERE client_message_id = 'before'")
        self.app.db.group_commit = True
        self.app.db.on_batch_opened = lambda: None

    def post(self, client, body, client_id):
        return client.post("/rooms/%d/messages" % self.room_id, {"message[body]": body,
                                                                 "message[client_message_id]": client_id})

    def test_a_group_with_posts_an_edit_and_a_room_deletion_keeps_nothing_and_the_next_group_works(self):
        db = self.app.db
        first = self.post(self.client, "<div>first in the group</div>", "g1")
        edit = self.client.request("PATCH", "/rooms/%d/messages/%d" % (self.room_id, self.edited_id),
                                   form={"message[body]": "<div>edited in the group</div>"})
        deletion = self.client.request("DELETE", "/rooms/%d" % self.doomed)
        self.assertEqual((first.status, edit.status, deletion.status), (201, 200, 303))
        fill_disk(db)
        refused = self.post(self.bea, BIG, "g2")          # SQLite undoes the whole transaction
        self.assertEqual(refused.status, 503)
        self.assertFalse(db.connection.in_transaction)
        later = self.post(self.bea, "<div>after the failure</div>", "g3")
        self.assertEqual(later.status, 503)                 # never committed on its own
        self.assertFalse(db.commit_batch())                 # every held answer becomes 503
        self.app.forget_cached()
        free_disk(db)
        for client_id in ("g1", "g2", "g3"):
            self.assertIsNone(db.value("SELECT id FROM messages WHERE client_message_id = ?", (client_id,)))
        self.assertEqual(self.app.store.plain_text(self.app.store.message(self.edited_id)["body"]), "before the trouble")
        self.assertIsNotNone(db.value("SELECT id FROM rooms WHERE id = ?", (self.doomed,)))
        audit(self, db)
        # The next group works, and its messages are found by search with their own words.
        again = self.post(self.client, "<div>space came back</div>", "g4")
        self.assertEqual(again.status, 201)
        self.assertTrue(db.commit_batch())
        message_id = db.value("SELECT id FROM messages WHERE client_message_id = 'g4'")
        self.assertEqual(db.value("SELECT body FROM message_search_index WHERE rowid = ?", (message_id,)),
                         "space came back")
        audit(self, db)


class StartRepairTests(unittest.TestCase):
    def test_search_rows_of_messages_never_saved_are_removed_at_start(self):
        storage = tempfile.mkdtemp(prefix="campfire-test-")
        self.addCleanup(shutil.rmtree, storage, True)
        app = make_app(storage)
        client = Client(app)
        client.post("/first_run", {"user[name]": "Ada", "user[email_address]": "ada@example.com",
                                   "user[password]": "secret-password"})
        room_id = app.db.value("SELECT id FROM rooms")
        client.post("/rooms/%d/messages" % room_id, {"message[body]": "<div>real</div>"})
        newest = app.db.value("SELECT max(id) FROM messages")
        # What the old failure left: a search row in autocommit for a message that was rolled back.
        app.db.execute("INSERT INTO message_search_index (rowid, body) VALUES (?, 'ghost')", (newest + 1,))
        app.close()
        app = make_app(storage)
        self.addCleanup(app.close)
        audit(self, app.db)
        response = Client(app, remote_addr="10.0.0.9")
        response.cookies = dict(client.cookies)
        self.assertEqual(response.post("/rooms/%d/messages" % room_id, {"message[body]": "<div>next</div>"}).status,
                         201)
        audit(self, app.db)


class LiveFullDiskTests(unittest.TestCase):
    """Over real sockets: concurrent posters while the disk fills, then space returns."""

    def setUp(self):
        self.live = LiveServer()
        self.addCleanup(self.live.stop)
        self.token = first_run_cookie(self.live.port)
        self.room_id = self.live.call(lambda: self.live.app.db.value("SELECT id FROM rooms"))

    def post(self, client_id, body):
        form = urllib.parse.urlencode({"message[body]": body, "message[client_message_id]": client_id}).encode()
        sock = socket.create_connection(("127.0.0.1", self.live.port), timeout=20)
        try:
            sock.sendall(("POST /rooms/%d/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: session_token=%s\r\n"
                          "Content-Type: application/x-www-form-urlencoded\r\nSec-Fetch-Site: same-origin\r\n"
                          "Content-Length: %d\r\n\r\n" % (self.room_id, self.token, len(form))).encode() + form)
            return recv_response(sock, timeout=20)[0]
        finally:
            sock.close()

    def test_every_acknowledged_post_survives_a_full_disk_and_posting_works_again(self):
        db = self.live.app.db
        self.live.call(fill_disk, db, 60)
        statuses = {}

        def poster(prefix):
            for n in range(12):
                client_id = "%s-%d" % (prefix, n)
                statuses[client_id] = self.post(client_id, BIG if n % 2 else "<div>%s small</div>" % client_id)

        threads = [threading.Thread(target=poster, args=("p%d" % index,)) for index in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        self.assertIn(503, statuses.values())
        self.assertEqual(set(statuses.values()) - {201, 503}, set())
        # The posters' last writes race: a small one may still fit after a big one was
        # refused, and a group refused whole for one big post leaves its room unused, so a
        # big post may fit once more. Any write that succeeds turns /up green again, so big
        # posts follow until one is refused (the 60 spare pages hold only a few).
        for n in range(8):
            if self.post("last-big-%d" % n, BIG) == 503:
                break
        else:
            self.fail("eight big posts fitted in 60 spare pages")
        self.assertEqual(self.get_up(), 503)  # writes were refused: /up is red
        self.live.call(free_disk, db)
        kept = set(self.live.call(lambda: [row[0] for row in db.all("SELECT client_message_id FROM messages")]))
        acknowledged = {client_id for client_id, status in statuses.items() if status == 201}
        self.assertEqual(kept & set(statuses), acknowledged)
        self.live.call(audit, self, db)
        self.assertEqual(self.post("after", "<div>after</div>"), 201)
        self.assertEqual(self.get_up(), 200)  # a write succeeded: green again
        self.live.call(audit, self, db)

    def get_up(self):
        sock = socket.create_connection(("127.0.0.1", self.live.port), timeout=10)
        try:
            sock.sendall(b"GET /up HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            return recv_response(sock)[0]
        finally:
            sock.close()


class DamagedDatabaseTests(AppTestCase):
    def test_up_turns_red_when_reads_find_damage(self):
        self.first_run()
        self.assertEqual(self.client.get("/up").status, 200)
        path = self.app.config.resolved_database_path
        self.app.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = os.path.getsize(path)
        page = self.app.db.value("PRAGMA page_size")
        with open(path, "r+b") as file:  # scribble over every page but the first (the header)
            file.seek(page)
            file.write(os.urandom(size - page))
        self.app.db.execute("PRAGMA cache_size = 0")  # forget the cached pages
        self.app.db.connection.close()
        self.app.db.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.app.db.connection.row_factory = sqlite3.Row
        self.app.store.bump_everything()
        self.assertEqual(self.client.get("/up").status, 503)


class ReadOnlyDatabaseTests(unittest.TestCase):
    @unittest.skipIf(hasattr(os, "geteuid") and os.geteuid() == 0 and not shutil.which("setpriv"),
                     "root can write a read-only file; setpriv is needed to start as another user")
    def test_a_read_only_database_stops_the_start_with_one_clear_line(self):
        storage = tempfile.mkdtemp(prefix="campfire-test-")
        self.addCleanup(shutil.rmtree, storage, True)
        make_app(storage).close()
        path = os.path.join(storage, "db", "production.sqlite3")
        os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        command = [sys.executable, os.path.join(os.path.dirname(campfire.__file__), "campfire.py"), "seed",
                   "--users", "1", "--rooms", "1", "--messages", "1"]
        if os.geteuid() == 0:  # root writes anything: run as nobody, who owns the storage but not the file
            for root, dirs, files in os.walk(storage):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), 65534, 65534)
            os.chown(storage, 65534, 65534)
            os.chown(path, 0, 0)
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + command
        result = subprocess.run(command, env=dict(os.environ, CAMPFIRE_STORAGE_PATH=storage),
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertIn("read-only", result.stderr)


if __name__ == "__main__":
    unittest.main()
