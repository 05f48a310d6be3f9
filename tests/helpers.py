"""Shared test helpers: a fresh App in a temporary storage directory, an
in-process client that keeps cookies, and a real server on 127.0.0.1:0."""

import asyncio
import os
import shutil
import socket
import sys
import tempfile
import threading
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import campfire  # noqa: E402

campfire.SCRYPT_N = 2 ** 10  # tests hash many passwords; the format records n, so checks still work


def make_app(storage=None, **overrides):
    storage = storage or tempfile.mkdtemp(prefix="campfire-test-")
    config = campfire.Config(storage_path=storage, **overrides)
    return campfire.App(config)


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
    """A fresh app per test, removed afterwards."""

    def setUp(self):
        self.storage = tempfile.mkdtemp(prefix="campfire-test-")
        self.app = make_app(self.storage)
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

    def __init__(self, storage=None):
        self.storage = storage or tempfile.mkdtemp(prefix="campfire-live-")
        self.app = make_app(self.storage, host="127.0.0.1", port=0)
        self.loop = asyncio.new_event_loop()
        self.server = campfire.Server(self.app, "127.0.0.1", 0)
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
