"""The server (section 10) over real sockets on 127.0.0.1: keep-alive,
pipelining, closing, errors on the wire, 100-continue, chunked uploads, HEAD,
timeouts for slow and idle clients, many connections at once, and group commit
(an acknowledged post is on disk before its answer is sent)."""

import gc
import select
import socket
import sqlite3
import threading
import time
import unittest
import urllib.parse

try:
    from tests.helpers import LiveServer, campfire, first_run_cookie, holds_for, wait_until
except ImportError:  # run from inside tests/
    from helpers import LiveServer, campfire, first_run_cookie, holds_for, wait_until


class ResponseReader:
    """Reads responses one after another from a socket, keeping what follows
    (helpers.recv_response drops the bytes of a pipelined next response)."""

    def __init__(self, sock, timeout=5):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buffer = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection; had %r" % self.buffer[:200])
        self.buffer += chunk

    def read_head(self):
        """(status, reason, headers with lower-case names) of the next response."""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            headers[name.lower()] = value
        return int(status), reason, headers

    def read_response(self, head_request=False):
        """(status, headers, body) of the next final response."""
        status, _, headers = self.read_head()
        length = 0 if head_request or status in (204, 304) else int(headers["content-length"])
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body


def request_bytes(method, path, headers=(), body=b""):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1"]
    lines += ["%s: %s" % pair for pair in headers]
    if body:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def wait_closed(sock, timeout=5, since=None):
    """Seconds from `since` (a time.monotonic() reading; now by default) until the peer
    closed cleanly (recv returned b""); fails on data, or when timeout passes first."""
    started = time.monotonic() if since is None else since
    sock.settimeout(timeout)
    data = sock.recv(65536)
    if data:
        raise AssertionError("expected the connection to be closed, got %r" % data[:200])
    return time.monotonic() - started


class LiveServerTestCase(unittest.TestCase):
    """One server for the class; every socket is closed at the end of its test."""

    @classmethod
    def setUpClass(cls):
        cls.live = LiveServer()

    @classmethod
    def tearDownClass(cls):
        cls.live.stop()

    def connect(self):
        sock = self.live.connect()
        self.addCleanup(sock.close)
        return sock


class ConnectionTest(LiveServerTestCase):
    def test_keep_alive_serves_several_requests_on_one_connection(self):
        sock = self.connect()
        reader = ResponseReader(sock)
        for path, expected in (("/up", 200), ("/first_run", 200), ("/no/such/page", 404), ("/up", 200)):
            sock.sendall(request_bytes("GET", path))
            status, headers, body = reader.read_response()
            self.assertEqual(status, expected, path)
            self.assertNotIn("connection", headers)
            self.assertEqual(len(body), int(headers["content-length"]))

    def test_pipelined_requests_are_answered_in_order(self):
        sock = self.connect()
        sock.sendall(request_bytes("GET", "/up") + request_bytes("GET", "/no/such/page")
                     + request_bytes("GET", "/session/new"))
        reader = ResponseReader(sock)
        responses = [reader.read_response() for _ in range(3)]
        self.assertEqual([status for status, _, _ in responses], [200, 404, 303])
        self.assertIn(b"background-color: green", responses[0][2])
        self.assertEqual(responses[2][1]["location"], "/first_run")  # no account yet
        sock.sendall(request_bytes("GET", "/up"))
        self.assertEqual(reader.read_response()[0], 200)

    def test_connection_close_closes_after_the_response(self):
        sock = self.connect()
        sock.sendall(request_bytes("GET", "/up", [("Connection", "close")]))
        reader = ResponseReader(sock)
        status, headers, body = reader.read_response()
        self.assertEqual(status, 200)
        self.assertEqual(headers["connection"], "close")
        self.assertIn(b"background-color: green", body)
        self.assertEqual(reader.buffer, b"")
        wait_closed(sock)

    def test_http_1_0_closes_after_the_response(self):
        sock = self.connect()
        sock.sendall(b"GET /up HTTP/1.0\r\n\r\n")
        status, headers, _ = ResponseReader(sock).read_response()
        self.assertEqual((status, headers["connection"]), (200, "close"))
        wait_closed(sock)

    def test_malformed_request_gets_400_and_the_connection_is_closed(self):
        for data in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                     b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"):
            with self.subTest(data=data):
                sock = self.connect()
                sock.sendall(data)
                reader = ResponseReader(sock)
                status, headers, body = reader.read_response()
                self.assertEqual(status, 400)
                self.assertEqual(headers["connection"], "close")
                self.assertIn(b"400", body)
                wait_closed(sock)

    def test_non_ascii_content_length_and_bad_ipv6_target_get_400_on_the_wire(self):
        # A ValueError escaping the parser makes the server log a traceback and
        # drop the connection without an answer.
        for data in (b"POST /session HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",
                     b"GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n"):
            with self.subTest(data=data), self.assertNoLogs("campfire", level="ERROR"):
                sock = self.connect()
                sock.sendall(data)
                self.assertEqual(ResponseReader(sock).read_response()[0], 400)
                wait_closed(sock)

    def test_bad_version_gets_505_on_the_wire(self):
        sock = self.connect()
        sock.sendall(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")
        self.assertEqual(ResponseReader(sock).read_response()[0], 505)
        wait_closed(sock)

    def test_long_request_line_gets_414_and_close(self):
        sock = self.connect()
        sock.sendall(b"GET /" + b"a" * (campfire.MAX_REQUEST_LINE_BYTES + 10))
        status, headers, _ = ResponseReader(sock).read_response()
        self.assertEqual((status, headers["connection"]), (414, "close"))
        wait_closed(sock)

    def test_too_many_header_fields_get_431_and_close(self):
        sock = self.connect()
        fields = [("X-F%d" % index, "v") for index in range(campfire.MAX_HEADER_FIELDS + 1)]
        sock.sendall(request_bytes("GET", "/up", fields))
        status, headers, _ = ResponseReader(sock).read_response()
        self.assertEqual((status, headers["connection"]), (431, "close"))
        wait_closed(sock)

    def test_body_over_the_limit_gets_413_before_it_is_sent(self):
        sock = self.connect()
        sock.sendall(b"POST /session HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: %d\r\n\r\n" % (campfire.DEFAULT_BODY_LIMIT * 100))
        status, headers, _ = ResponseReader(sock).read_response()
        self.assertEqual((status, headers["connection"]), (413, "close"))
        wait_closed(sock)

    def test_expect_100_continue_gets_the_interim_response_then_the_final_one(self):
        sock = self.connect()
        body = b"email_address=nobody%40example.com&password=wrong"
        sock.sendall(b"POST /session HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        reader = ResponseReader(sock)
        status, reason, headers = reader.read_head()
        self.assertEqual((status, reason, headers), (100, "Continue", {}))
        self.assertEqual(reader.buffer, b"")
        sock.sendall(body)
        status, headers, page = reader.read_response()
        self.assertEqual(status, 401)
        self.assertIn(b"nobody@example.com", page)

    def test_chunked_post_works_end_to_end(self):
        sock = self.connect()
        form = b"email_address=chunky%40example.com&password=not-the-password"
        chunks = b"".join(b"%x;part=%d\r\n%s\r\n" % (len(form[start:start + 7]), start, form[start:start + 7])
                          for start in range(0, len(form), 7))
        sock.sendall(b"POST /session HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
        sock.sendall(chunks[:10])
        time.sleep(0.05)  # the body arrives in pieces, across reads
        sock.sendall(chunks[10:] + b"0\r\nX-Trailer: done\r\n\r\n")
        reader = ResponseReader(sock)
        status, headers, page = reader.read_response()
        self.assertIn(status, (200, 401))
        self.assertIn(b"chunky@example.com", page)  # the form was read from the chunks
        sock.sendall(request_bytes("GET", "/up"))
        self.assertEqual(reader.read_response()[0], 200)  # and the connection stays usable

    def test_head_returns_headers_with_content_length_but_no_body(self):
        sock = self.connect()
        sock.sendall(request_bytes("HEAD", "/up") + request_bytes("GET", "/up"))
        reader = ResponseReader(sock)
        status, headers, body = reader.read_response(head_request=True)
        self.assertEqual(status, 200)
        length = int(headers["content-length"])
        self.assertGreater(length, 0)
        # The very next bytes are the GET's response: the HEAD sent no body.
        while len(reader.buffer) < 12:
            reader._fill()
        self.assertTrue(reader.buffer.startswith(b"HTTP/1.1 200"), reader.buffer[:40])
        status, headers, body = reader.read_response()
        self.assertEqual((status, len(body)), (200, length))

    def test_server_keeps_serving_after_a_bad_connection(self):
        good = self.connect()
        good_reader = ResponseReader(good)
        good.sendall(request_bytes("GET", "/up"))
        self.assertEqual(good_reader.read_response()[0], 200)
        bad = self.connect()
        bad.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n")
        self.assertEqual(ResponseReader(bad).read_response()[0], 400)
        wait_closed(bad)
        good.sendall(request_bytes("GET", "/up"))
        self.assertEqual(good_reader.read_response()[0], 200)
        fresh = self.connect()
        fresh.sendall(request_bytes("GET", "/up"))
        self.assertEqual(ResponseReader(fresh).read_response()[0], 200)

    def test_wrong_method_is_405_with_allow_on_the_wire(self):
        sock = self.connect()
        reader = ResponseReader(sock)
        sock.sendall(request_bytes("PUT", "/up", [("Content-Length", "0")]) + request_bytes("PUT", "/session", [
            ("Content-Length", "0"), ("Sec-Fetch-Site", "same-origin")]))
        status, headers, _ = reader.read_response()
        self.assertEqual((status, headers["allow"]), (405, "GET, HEAD"))
        status, headers, _ = reader.read_response()
        self.assertEqual((status, headers["allow"]), (405, "POST, DELETE"))
        sock.sendall(request_bytes("GET", "/up"))
        self.assertEqual(reader.read_response()[0], 200)  # the connection stays usable

    def test_many_concurrent_connections_all_get_answers(self):
        count = 200
        socks = [self.connect() for _ in range(count)]
        for index, sock in enumerate(socks):
            sock.sendall(request_bytes("GET", "/up" if index % 2 else "/no/such/page/%d" % index))
        statuses = [ResponseReader(sock, timeout=10).read_response()[0] for sock in socks]
        self.assertEqual(statuses, [404 if index % 2 == 0 else 200 for index in range(count)])


class TimeoutTest(unittest.TestCase):
    """Each test gets its own server started after shortening the timeouts."""

    HEADER_TIMEOUT = 0.3
    KEEPALIVE_TIMEOUT = 0.3
    SWEEP_INTERVAL = 0.05
    # How long a test waits for a close before failing: far past the timeouts above (a
    # loaded machine only makes the close late), far short of what a broken deadline takes.
    GIVE_UP = 10.0

    def setUp(self):
        self.live = LiveServer(header_timeout=self.HEADER_TIMEOUT, keepalive_timeout=self.KEEPALIVE_TIMEOUT,
                               sweep_interval=self.SWEEP_INTERVAL)
        self.addCleanup(self.live.stop)

    def connect(self):
        sock = self.live.connect()
        self.addCleanup(sock.close)
        return sock

    def test_slow_client_with_half_a_request_line_is_dropped_after_the_header_timeout(self):
        started = time.monotonic()  # before the server accepts, so before its deadline is set
        sock = self.connect()
        sock.sendall(b"GET /up HT")
        waited = wait_closed(sock, timeout=self.GIVE_UP, since=started)
        self.assertGreaterEqual(waited, self.HEADER_TIMEOUT)

    def test_dribbling_client_is_dropped_even_while_bytes_keep_arriving(self):
        # Slowloris: a byte every 50 ms never completes the head; the deadline
        # is set when the head starts and is not pushed back by each byte.
        sock = self.connect()
        request = request_bytes("GET", "/up", [("X-Pad", "p" * 500)])  # 25 s of bytes at this pace
        started = time.monotonic()
        for index in range(len(request) - 4):
            try:
                sock.sendall(request[index:index + 1])
            except OSError:  # reset after the close: it was dropped
                break
            readable, _, _ = select.select([sock], [], [], 0.05)
            if readable:
                try:
                    self.assertEqual(sock.recv(65536), b"")
                except ConnectionResetError:
                    pass
                break
            self.assertLess(time.monotonic() - started, self.GIVE_UP, "still connected after %d s" % self.GIVE_UP)
        else:
            self.fail("the whole dribbled head went through")

    def test_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(self):
        sock = self.connect()
        reader = ResponseReader(sock)
        sent = time.monotonic()  # the keep-alive deadline is set once the request is answered
        sock.sendall(request_bytes("GET", "/up"))
        self.assertEqual(reader.read_response()[0], 200)
        waited = wait_closed(sock, timeout=self.GIVE_UP, since=sent)
        self.assertGreaterEqual(waited, self.KEEPALIVE_TIMEOUT)

    def test_active_keep_alive_connection_is_not_dropped(self):
        # A pause a twentieth of the timeout, two dozen times: longer than one timeout
        # in all, never idle that long (a pause would have to stretch twentyfold on a
        # busy machine).
        timeout = 2.0
        live = LiveServer(keepalive_timeout=timeout, sweep_interval=self.SWEEP_INTERVAL)
        self.addCleanup(live.stop)
        sock = live.connect()
        self.addCleanup(sock.close)
        reader = ResponseReader(sock)
        started = time.monotonic()
        for _ in range(24):
            sock.sendall(request_bytes("GET", "/up"))
            self.assertEqual(reader.read_response()[0], 200)
            time.sleep(timeout / 20)
        sock.sendall(request_bytes("GET", "/up"))
        self.assertEqual(reader.read_response()[0], 200)
        self.assertGreater(time.monotonic() - started, timeout)


class IdleMemoryTest(unittest.TestCase):
    """After a burst of requests and a quiet spell, freed memory goes back to the
    OS, once: the server's own release runs (a full collection and malloc_trim),
    and the count the server keeps says when."""

    QUIET = 0.5  # IDLE_RELEASE_AFTER for these tests, in seconds

    def setUp(self):
        self.live = LiveServer(idle_release_after=self.QUIET, sweep_interval=0.05)
        self.addCleanup(self.live.stop)

    def releases(self):
        return self.live.server.memory_releases

    def get_up(self, sock):
        sock.sendall(request_bytes("GET", "/up"))
        self.assertEqual(ResponseReader(sock).read_response()[0], 200)

    def test_memory_is_released_once_per_burst_after_the_quiet_spell(self):
        holds_for(lambda: self.releases() == 0, 2 * self.QUIET,
                  message="nothing happened, so there is nothing to give back")
        sock = self.live.connect()
        self.addCleanup(sock.close)
        full_collections = gc.get_stats()[2]["collections"]
        for _ in range(20):  # a burst: one request after another, never a quiet spell between
            last_sent = time.monotonic()
            self.get_up(sock)
        wait_until(lambda: self.releases() == 1, message="no release after the burst")
        # The release comes a quiet spell after the last request (it was handled after last_sent).
        self.assertGreaterEqual(time.monotonic() - last_sent, self.QUIET)
        self.assertGreater(gc.get_stats()[2]["collections"], full_collections, "the release collects garbage")
        holds_for(lambda: self.releases() == 1, 2 * self.QUIET, message="once per burst, not on every sweep")
        self.get_up(sock)
        wait_until(lambda: self.releases() == 2, message="a new burst earns a new release")

    def test_a_release_gives_back_sqlites_page_cache(self):
        library = sqlite_library()
        if library is None:
            self.skipTest("this Python's SQLite is not a shared library ctypes can reach")
        app = self.live.app

        def read_many_pages():
            connection = app.db.connection
            connection.execute("CREATE TABLE IF NOT EXISTS test_pages (body TEXT)")
            connection.executemany("INSERT INTO test_pages VALUES (?)", [("x" * 1000,)] * 3000)
            return len(connection.execute("SELECT body FROM test_pages").fetchall())
        self.assertEqual(self.live.call(read_many_pages), 3000)  # about 3 MB of pages now cached
        held = library.sqlite3_memory_used()
        sock = self.live.connect()
        self.addCleanup(sock.close)
        self.get_up(sock)
        wait_until(lambda: self.releases() == 1, message="no release after the request")
        self.assertLess(library.sqlite3_memory_used(), held - 2 * 1024 * 1024, "the page cache went back")
        self.assertEqual(self.live.call(lambda: app.db.value("SELECT count(*) FROM test_pages")), 3000)


def sqlite_library():
    """The SQLite library the sqlite3 module uses, through ctypes (sqlite3_memory_used:
    the bytes SQLite holds in this process), or None when it is linked in statically."""
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        return None
    library = ctypes.CDLL(name)
    library.sqlite3_memory_used.restype = ctypes.c_int64
    library.sqlite3_libversion.restype = ctypes.c_char_p
    if library.sqlite3_libversion().decode() != sqlite3.sqlite_version or library.sqlite3_memory_used() <= 0:
        return None  # another copy than the one sqlite3 uses
    return library


class GroupCommitTest(unittest.TestCase):
    """Writes of requests handled together share one transaction and one fsync
    (a COMMIT: in WAL mode with synchronous=FULL each commit is one fsync of the
    log); every answer waits for that commit."""

    CLIENTS = 8
    POSTS_EACH = 30

    def setUp(self):
        self.live = LiveServer()
        self.addCleanup(self.live.stop)
        app = self.live.app

        self.token = first_run_cookie(self.live.port)
        self.room_id = self.live.call(lambda: app.db.value("SELECT id FROM rooms"))
        self.database = app.config.resolved_database_path

    def post_bytes(self, client_id):
        body = urllib.parse.urlencode({"message[body]": "<div>durable %s</div>" % client_id,
                                       "message[client_message_id]": client_id}).encode()
        return request_bytes("POST", "/rooms/%d/messages" % self.room_id, [
            ("Cookie", "session_token=%s" % self.token), ("Sec-Fetch-Site", "same-origin"),
            ("Content-Type", "application/x-www-form-urlencoded")], body)

    def count_commits(self):
        """The COMMIT statements the server's connection runs from now on (sqlite3's trace callback)."""
        commits = []
        connection = self.live.app.db.connection

        def trace(statement):
            if statement.lstrip().upper().startswith("COMMIT"):
                commits.append(statement)
        self.live.call(lambda: connection.set_trace_callback(trace))
        self.addCleanup(lambda: self.live.call(lambda: connection.set_trace_callback(None)))
        return commits

    def test_posts_handled_together_share_one_commit_and_wait_for_it(self):
        socks = [socket.create_connection(("127.0.0.1", self.live.port), timeout=10) for _ in range(self.CLIENTS)]
        for sock in socks:
            self.addCleanup(sock.close)
        readers = [ResponseReader(sock, timeout=10) for sock in socks]
        for sock, reader in zip(socks, readers):  # every connection accepted before the posts
            sock.sendall(request_bytes("GET", "/up"))
            self.assertEqual(reader.read_response()[0], 200)
        commits = self.count_commits()
        # Hold the event loop while the eight posts arrive, so it finds them all at its next look.
        holding, release = threading.Event(), threading.Event()
        self.live.loop.call_soon_threadsafe(lambda: (holding.set(), release.wait(10)))
        self.assertTrue(holding.wait(10))
        for number, sock in enumerate(socks):
            sock.sendall(self.post_bytes("together-%d" % number))
        release.set()
        statuses = []
        for reader in readers:
            statuses.append(reader.read_response()[0])
            self.assertEqual(len(commits), 1, "an answer came before its commit, or the posts were not grouped")
        self.assertEqual(statuses, [201] * self.CLIENTS)
        self.assertEqual(self.live.call(lambda: self.live.app.db.value(
            "SELECT count(*) FROM messages WHERE client_message_id LIKE 'together-%'")), self.CLIENTS)
        # A post on its own is a commit of its own.
        socks[0].sendall(self.post_bytes("alone"))
        self.assertEqual(readers[0].read_response()[0], 201)
        self.assertEqual(len(commits), 2)

    def test_every_answered_post_is_already_committed_with_its_search_row(self):
        # Eight connections post at once, so commits are shared. After each 201,
        # a separate connection to the database file (which sees only committed
        # data) must find the message and its search row.
        problems, acknowledged = [], []

        def client(number):
            observer = sqlite3.connect(self.database, timeout=5)
            sock = socket.create_connection(("127.0.0.1", self.live.port), timeout=10)
            reader = ResponseReader(sock, timeout=10)
            try:
                for index in range(self.POSTS_EACH):
                    client_id = "c%d-%d" % (number, index)
                    sock.sendall(self.post_bytes(client_id))
                    status, _, body = reader.read_response()
                    if status != 201:
                        problems.append((client_id, status))
                        continue
                    row = observer.execute("SELECT id FROM messages WHERE client_message_id = ?", (client_id,)).fetchone()
                    found = row and observer.execute(
                        "SELECT count(*) FROM message_search_index WHERE message_search_index MATCH ? AND rowid = ?",
                        ('"%s"' % client_id, row[0])).fetchone()[0]
                    if not found:
                        problems.append((client_id, "answered but not committed"))
                    acknowledged.append(client_id)
            finally:
                sock.close()
                observer.close()

        threads = [threading.Thread(target=client, args=(number,)) for number in range(self.CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(problems, [])
        self.assertEqual(len(acknowledged), self.CLIENTS * self.POSTS_EACH)

    def test_a_commit_that_fails_answers_503_and_keeps_nothing(self):
        app = self.live.app

        class FailingCommit:  # the disk refusing the commit (full, or gone)
            def __init__(self, connection):
                self.connection = connection

            def execute(self, sql, *args):
                if sql == "COMMIT":
                    raise sqlite3.OperationalError("database or disk is full")
                return self.connection.execute(sql, *args)

            def __getattr__(self, name):
                return getattr(self.connection, name)

        real = app.db.connection
        self.live.call(lambda: setattr(app.db, "connection", FailingCommit(real)))
        sock = socket.create_connection(("127.0.0.1", self.live.port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(self.post_bytes("lost-1"))
        status, _, body = ResponseReader(sock, timeout=10).read_response()
        self.assertEqual(status, 503)
        self.assertIn(b"could not be saved", body)
        self.live.call(lambda: setattr(app.db, "connection", real))
        self.assertIsNone(self.live.call(lambda: app.db.value(
            "SELECT id FROM messages WHERE client_message_id = 'lost-1'")))
        # The retry (same client_message_id) is kept, once.
        sock = socket.create_connection(("127.0.0.1", self.live.port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(self.post_bytes("lost-1"))
        self.assertEqual(ResponseReader(sock, timeout=10).read_response()[0], 201)
        self.assertEqual(self.live.call(lambda: app.db.value(
            "SELECT count(*) FROM messages WHERE client_message_id = 'lost-1'")), 1)


if __name__ == "__main__":
    unittest.main()
