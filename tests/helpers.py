"""Shared test helpers: a fresh App in a temporary storage directory, an
in-process client that keeps cookies, and a real server on 127.0.0.1:0."""

import asyncio
import contextlib
import gzip
import html
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import campfire  # noqa: E402

TEST_SCRYPT_N = 2 ** 10  # tests hash many passwords; the digest records n, so checks still work
TEST_BCRYPT_COST = 4     # bcrypt's least cost, likewise recorded in each digest


def make_app(storage=None, **overrides):
    """An App on fresh (or the given) storage; overrides are Config fields. Its database
    is watched for writes outside atomic() (see guard_writes)."""
    storage = storage or tempfile.mkdtemp(prefix="campfire-test-")
    overrides.setdefault("scrypt_n", TEST_SCRYPT_N)
    overrides.setdefault("bcrypt_cost", TEST_BCRYPT_COST)
    config = campfire.Config(storage_path=storage, **overrides)
    return guard_writes(campfire.App(config))


_WRITE_RE = re.compile(r"\s*(?:INSERT|UPDATE|DELETE|REPLACE)\b", re.I)
_DATABASE_WRAPPERS = frozenset(function.__code__ for function in (
    campfire.Database.execute, campfire.Database.one, campfire.Database.all, campfire.Database.value))
CAMPFIRE_FILE = os.path.realpath(campfire.__file__)


def guard_writes(app):
    """Every INSERT, UPDATE or DELETE that campfire.py itself runs must be inside
    Database.atomic(). A trace callback on the app's connection sees each statement;
    a write issued by campfire.py (not by a test's own setup) while the database is
    not in atomic() is recorded in app.db.unguarded_writes, and closing the app then
    fails the test that made it."""
    db = app.db
    writes = db.unguarded_writes = []

    def trace(sql):
        if not _WRITE_RE.match(sql) or db.in_atomic:
            return
        frame = sys._getframe(1)
        while frame is not None and frame.f_code in _DATABASE_WRAPPERS:
            frame = frame.f_back
        if frame is not None and os.path.realpath(frame.f_code.co_filename) == CAMPFIRE_FILE:
            writes.append((sql.strip()[:200], "%s:%d" % (frame.f_code.co_name, frame.f_lineno)))
    db.connection.set_trace_callback(trace)
    close = app.close

    def close_and_check():
        close()
        if writes:
            raise AssertionError("campfire.py wrote outside atomic(): %r" % writes[:5])
    app.close = close_and_check
    return app


@contextlib.contextmanager
def config_value(config, name, value):
    """A Config field set to value for the length of a with block (the app reads it when it needs it)."""
    saved = getattr(config, name)
    setattr(config, name, value)
    try:
        yield
    finally:
        setattr(config, name, saved)


class Client:
    """Drives App.handle in-process, like a browser: cookies kept, same-origin writes."""

    def __init__(self, app, remote_addr="127.0.0.1"):
        self.app = app
        self.cookies = {}
        self.remote_addr = remote_addr

    def request(self, method, path, *, form=None, body=b"", headers=None, content_type=None):
        headers = {key.lower(): value for key, value in (headers or {}).items()}
        headers.setdefault("host", "localhost")
        if form is not None:
            body = urllib.parse.urlencode(form, doseq=True).encode()
            content_type = content_type or "application/x-www-form-urlencoded"
        if content_type:
            headers["content-type"] = content_type
        if method not in ("GET", "HEAD"):
            headers.setdefault("sec-fetch-site", "same-origin")
        if self.cookies and "cookie" not in headers:
            headers["cookie"] = "; ".join("%s=%s" % item for item in self.cookies.items())
        if body:
            headers["content-length"] = str(len(body))
        request = campfire.Request(method, path, "HTTP/1.1", headers, body)
        request.remote_addr = self.remote_addr
        response = self.app.handle(request)
        if not isinstance(response, campfire.Response):  # a handler that awaits (a password hash)
            response = asyncio.run(response)
        for name, value in response.headers:
            if name.lower() == "set-cookie":
                pair = value.split(";", 1)[0]
                key, _, val = pair.partition("=")
                if "Max-Age=0" in value:
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = val
        return response

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, form=None, **kwargs):
        return self.request("POST", path, form=form, **kwargs)


class AppTestCase(unittest.TestCase):
    """A fresh app per test, removed afterwards; CONFIG holds Config fields it is made with."""

    CONFIG = {}

    def setUp(self):
        self.storage = tempfile.mkdtemp(prefix="campfire-test-")
        self.app = make_app(self.storage, **self.CONFIG)
        self.client = Client(self.app)

    def tearDown(self):
        self.app.close()
        shutil.rmtree(self.storage, ignore_errors=True)

    def first_run(self, client=None, name="Ada Admin", email="ada@example.com", password="secret-password"):
        client = client or self.client
        response = client.post("/first_run", {"user[name]": name, "user[email_address]": email,
                                             "user[password]": password})
        self.assertEqual(response.status, 303, response.text[:500])
        return response

    def join(self, name, email, password="member-password", client=None):
        client = client or Client(self.app)
        code = self.app.store.account()["join_code"]
        response = client.post("/join/" + code, {"user[name]": name, "user[email_address]": email,
                                                 "user[password]": password})
        self.assertEqual(response.status, 303, response.text[:500])
        return client


class LiveServer:
    """The real asyncio server on 127.0.0.1 with an ephemeral port, in a thread."""

    def __init__(self, storage=None, tls=None, **overrides):
        self.storage = storage or tempfile.mkdtemp(prefix="campfire-live-")
        self.app = make_app(self.storage, host="127.0.0.1", port=0, **overrides)
        self.loop = asyncio.new_event_loop()
        self.server = campfire.Server(self.app, "127.0.0.1", 0, tls)
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        self.port = self.server.port

    def connect(self, timeout=5):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return sock

    def call(self, function, *args):
        """Run function on the server's event-loop thread (the database belongs to it)."""
        import concurrent.futures
        future = concurrent.futures.Future()

        def run():
            try:
                future.set_result(function(*args))
            except BaseException as error:  # handed back to the test's thread
                future.set_exception(error)
        self.loop.call_soon_threadsafe(run)
        return future.result(10)

    def stop(self):
        future = asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop)
        future.result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        shutil.rmtree(self.storage, ignore_errors=True)


def recv_response(sock, timeout=5):
    """Read one HTTP response (status, headers dict, body) from a socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head:
        return None, {}, b""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


class CableClient:
    """A minimal RFC 6455 client speaking Action Cable, for tests over real sockets."""

    def __init__(self, port, cookie=None, origin=None, host="127.0.0.1", deflate=False, timeout=5):
        import base64 as _base64
        import json as _json
        self._json = _json
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = _base64.b64encode(os.urandom(16)).decode()
        lines = ["GET /cable HTTP/1.1", "Host: 127.0.0.1:%d" % port, "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13",
                 "Sec-WebSocket-Protocol: actioncable-v1-json, actioncable-unsupported"]
        if cookie:
            lines.append("Cookie: session_token=" + cookie)
        if origin:
            lines.append("Origin: " + origin)
        if deflate:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, self.buffer = data.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1]) if head else None
        self.head = head.decode("latin-1")
        self.deflate = "permessage-deflate" in self.head

    def send_json(self, value):
        self.send_frame(0x1, self._json.dumps(value).encode())

    def send_frame(self, opcode, payload, fin=True, mask=b"\x01\x02\x03\x04"):
        import struct as _struct
        first = (0x80 if fin else 0) | opcode
        length = len(payload)
        if length < 126:
            header = _struct.pack("!BB", first, 0x80 | length)
        elif length < 65536:
            header = _struct.pack("!BBH", first, 0x80 | 126, length)
        else:
            header = _struct.pack("!BBQ", first, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def subscribe(self, channel, **params):
        identifier = self._json.dumps(dict(channel=channel, **params))
        self.send_json({"command": "subscribe", "identifier": identifier})
        return identifier

    def perform(self, identifier, action, **data):
        self.send_json({"command": "message", "identifier": identifier,
                        "data": self._json.dumps(dict(action=action, **data))})

    def _read_exact(self, count):
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def recv_frame(self):
        """(opcode, payload) of the next server frame."""
        import struct as _struct
        import zlib as _zlib
        first, second = self._read_exact(2)
        length = second & 0x7F
        if length == 126:
            length = _struct.unpack("!H", self._read_exact(2))[0]
        elif length == 127:
            length = _struct.unpack("!Q", self._read_exact(8))[0]
        payload = self._read_exact(length)
        if first & 0x40:
            payload = _zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        return first & 0x0F, payload

    def _buffered_frame_length(self):
        """The size of the first whole frame in the buffer, or None while it is incomplete."""
        if len(self.buffer) < 2:
            return None
        length, header = self.buffer[1] & 0x7F, 2
        if length in (126, 127):
            header += 2 if length == 126 else 8
            if len(self.buffer) < header:
                return None
            length = int.from_bytes(self.buffer[2:header], "big")
        return header + length if len(self.buffer) >= header + length else None

    def read_available(self):
        """The JSON messages (pings included) in what one recv() brings, for a socket
        select() found readable; a frame cut in two waits in the buffer for the rest."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        self.buffer += chunk
        messages = []
        while self._buffered_frame_length() is not None:
            opcode, payload = self.recv_frame()
            if opcode == 0x1:
                messages.append(self._json.loads(payload))
        return messages

    def recv_json(self, skip_pings=True):
        while True:
            opcode, payload = self.recv_frame()
            if opcode == 0x9:
                self.send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("close %r" % payload[:2])
            message = self._json.loads(payload)
            if skip_pings and message.get("type") == "ping":
                continue
            return message

    def recv_until(self, predicate, limit=50):
        for _ in range(limit):
            message = self.recv_json()
            if predicate(message):
                return message
        raise AssertionError("no matching message")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


AVATAR_DATA_URL = "data:image/svg+xml,"  # how a page draws an avatar with no picture (avatar_source)


def avatar_initials(src):
    """The text an avatar's data: URL draws (a person's initials), or None for any other src."""
    if not src.startswith(AVATAR_DATA_URL):
        return None
    match = re.search(r">([^<]*)</text>", urllib.parse.unquote(src[len(AVATAR_DATA_URL):]))
    return html.unescape(match.group(1)) if match else None


def wait_until(predicate, timeout=10.0, interval=0.01, message="the condition never held"):
    """Poll predicate until it returns something true (which is returned), failing
    after timeout seconds: a deadline, never a fixed sleep, so a loaded machine
    only makes a test slower, not wrong."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("%s (waited %.1f s)" % (message, timeout))
        time.sleep(interval)


def holds_for(predicate, seconds, interval=0.01, message="the condition stopped holding"):
    """Check predicate stays true for `seconds` (for what must NOT happen, e.g.
    a second release); fails as soon as it is false."""
    deadline = time.monotonic() + seconds
    while True:
        if not predicate():
            raise AssertionError(message)
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def first_run_cookie(port, name="Ada", email="ada@example.com", password="secret-password"):
    """POST /first_run over the socket (the account and its administrator); returns the session token."""
    return _session_cookie(port, "/first_run", {"user[name]": name, "user[email_address]": email,
                                                "user[password]": password})


def sign_in_cookie(port, email, password):
    """POST /session over the socket; returns the session token."""
    return _session_cookie(port, "/session", {"email_address": email, "password": password})


def _session_cookie(port, path, form):
    import urllib.request
    import urllib.error
    body = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=body, method="POST",
                                     headers={"Sec-Fetch-Site": "same-origin"})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None
    opener = urllib.request.build_opener(NoRedirect)
    try:
        response = opener.open(request)
    except urllib.error.HTTPError as error:
        response = error
    cookie = response.headers.get("Set-Cookie", "")
    return cookie.split("session_token=", 1)[1].split(";", 1)[0]


def gunzipped_three_ways(test, body):
    """body as three independent gzip decoders read it: the gzip module, zlib and the gzip
    program (each checks the CRC-32 and the length); the three must agree."""
    by_module = gzip.decompress(body)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    by_zlib = inflater.decompress(body) + inflater.flush()
    test.assertTrue(inflater.eof)
    by_program = subprocess.run(["gzip", "-dc"], input=body, capture_output=True, check=True, timeout=30).stdout
    test.assertEqual(by_module, by_zlib)
    test.assertEqual(by_module, by_program)
    return by_module
