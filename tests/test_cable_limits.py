"""/cable under hostile or careless clients, over real sockets: revoked sessions are
cut off at once, nothing follows our Close, bad identifiers and deep nesting are
refused without noise, and floods of empty fragments are bounded."""

import json
import select
import socket
import time
import unittest
import urllib.parse
import urllib.request

from tests.helpers import CableClient, LiveServer, campfire, first_run_cookie, sign_in_cookie


def frames_until_eof(client, timeout):
    """Every frame the server sends until it closes TCP: [(opcode, payload)]; raises if it doesn't."""
    frames, deadline = [], time.monotonic() + timeout
    while True:
        try:
            frames.append(client.recv_frame())
        except (ConnectionError, OSError):
            return frames
        if time.monotonic() > deadline:
            raise AssertionError("the server kept the socket open: %r" % frames[-5:])


class CableLimitsTestCase(unittest.TestCase):
    def setUp(self):
        self.server = LiveServer()
        self.addCleanup(self.server.stop)
        self.port = self.server.port
        self.origin = "http://127.0.0.1:%d" % self.port
        self.ada = first_run_cookie(self.port, "Ada", "ada@example.com", "secret-one")
        code = self.server.call(lambda: self.server.app.store.account()["join_code"])
        body = urllib.parse.urlencode({"user[name]": "Bob", "user[email_address]": "bob@example.com",
                                       "user[password]": "secret-two"}).encode()
        urllib.request.urlopen(urllib.request.Request("%s/join/%s" % (self.origin, code), data=body,
                                                      headers={"Sec-Fetch-Site": "same-origin"}))
        self.bob = sign_in_cookie(self.port, "bob@example.com", "secret-two")
        self.bob_id = self.server.call(lambda: self.server.app.store.user_by_email("bob@example.com").id)

    def connect(self, cookie=None, **kwargs):
        client = CableClient(self.port, cookie, origin=self.origin, **kwargs)
        self.addCleanup(client.close)
        return client

    def welcomed(self, cookie):
        client = self.connect(cookie)
        self.assertEqual(client.recv_json(), {"type": "welcome"})
        return client

    def subscribe(self, client, channel, **params):
        identifier = client.subscribe(channel, **params)
        reply = client.recv_until(lambda m: m.get("identifier") == identifier and "type" in m)
        return identifier, reply["type"]

    def request(self, cookie, method, path, form=None):
        data = urllib.parse.urlencode(dict(form or {}, _method=method)).encode()
        return urllib.request.urlopen(urllib.request.Request(
            self.origin + path, data=data, headers={"Cookie": "session_token=" + cookie,
                                                    "Sec-Fetch-Site": "same-origin"}))

    def post(self, cookie, text, client_id):
        self.request(cookie, "post", "/rooms/1/messages", {"message[body]": text,
                                                           "message[client_message_id]": client_id})


class RevokedSessionTests(CableLimitsTestCase):
    def assert_cut_off(self, revoke):
        bob = self.welcomed(self.bob)
        identifier, kind = self.subscribe(bob, "RoomMessagesChannel", room_id=1)
        self.assertEqual(kind, "confirm_subscription")
        revoke()
        for n in range(5):  # the client ignores our Close; these must never reach it
            self.post(self.ada, "after the revocation %d" % n, "after-%d" % n)
        frames = frames_until_eof(bob, timeout=3)
        texts = [payload for opcode, payload in frames if opcode == 0x1]
        self.assertTrue(any(json.loads(text).get("type") == "disconnect" for text in texts), frames)
        self.assertFalse([text for text in texts if b"after the revocation" in text], texts)
        closes = [index for index, (opcode, _) in enumerate(frames) if opcode == 0x8]
        self.assertTrue(closes)
        self.assertEqual(frames[closes[0] + 1:], [])  # nothing at all after our Close

    def test_sign_out_cuts_the_socket_off_at_once(self):
        self.assert_cut_off(lambda: self.request(self.bob, "delete", "/session"))

    def test_deactivation_cuts_the_socket_off_at_once(self):
        self.assert_cut_off(lambda: self.request(self.ada, "delete", "/account/users/%d" % self.bob_id))

    def test_a_ban_cuts_the_socket_off_at_once(self):
        self.assert_cut_off(lambda: self.request(self.ada, "post", "/users/%d/ban" % self.bob_id))


class UnauthenticatedTests(CableLimitsTestCase):
    def test_a_socket_without_a_session_that_ignores_our_close_is_dropped(self):
        saved = campfire.CABLE_CLOSE_TIMEOUT
        campfire.CABLE_CLOSE_TIMEOUT = 1.0
        self.addCleanup(setattr, campfire, "CABLE_CLOSE_TIMEOUT", saved)
        client = self.connect()
        self.assertEqual(client.recv_json()["reason"], "unauthorized")
        started = time.monotonic()
        frames_until_eof(client, timeout=1.0 + campfire.SWEEP_INTERVAL + 3)
        self.assertLess(time.monotonic() - started, 1.0 + campfire.SWEEP_INTERVAL + 3)


class EmptyFragmentFloodTests(CableLimitsTestCase):
    def test_a_flood_of_empty_continuations_is_closed_with_1009(self):
        client = self.welcomed(self.ada)
        client.send_frame(0x1, b"{", fin=False)
        empty = b"\x00\x80" + b"\x00\x00\x00\x00"  # a masked, empty, non-final continuation frame
        try:
            client.sock.sendall(empty * (campfire.MAX_MESSAGE_FRAGMENTS + 10))
        except OSError:
            pass  # the server may close while we are still sending
        codes = [int.from_bytes(payload[:2], "big") for opcode, payload in frames_until_eof(client, 5)
                 if opcode == 0x8]
        self.assertEqual(codes, [1009])
        self.assertEqual(self.server.call(lambda: len(self.server.app.cable.connections)), 0)


class IdentifierTests(CableLimitsTestCase):
    def test_room_ids_must_be_numbers_as_campfire_sends_them(self):
        client = self.welcomed(self.ada)
        for room_id in (True, "1", "01", 1.0, [1], {"id": 1}, None):
            with self.subTest(room_id=room_id):
                self.assertEqual(self.subscribe(client, "RoomMessagesChannel", room_id=room_id)[1],
                                 "reject_subscription")
        self.assertEqual(self.subscribe(client, "RoomMessagesChannel", room_id=1)[1], "confirm_subscription")

    def test_deep_nesting_is_ignored_quietly_and_the_connection_goes_on(self):
        client = self.welcomed(self.ada)
        with self.assertNoLogs("campfire", level="ERROR"):
            client.send_frame(0x1, b"[" * 100_000 + b"]" * 100_000)
            client.send_json({"command": "subscribe", "identifier": "[" * 50_000 + "]" * 50_000})
            client.send_json({"command": "message", "identifier": json.dumps({"channel": "HeartbeatChannel"}),
                              "data": "{\"a\":" * 50_000 + "1" + "}" * 50_000})
            self.assertEqual(self.subscribe(client, "HeartbeatChannel")[1], "confirm_subscription")


class BareLineFeedTests(unittest.TestCase):
    def test_a_head_with_bare_line_feeds_is_answered_400_at_once(self):
        server = LiveServer()
        self.addCleanup(server.stop)
        for head in (b"GET /up HTTP/1.1\nHost: x\n\n", b"GET /up HTTP/1.1\r\nHost: x\n\r\n",
                     b"GET /up HTTP/1.1\nHost: x\n"):
            with self.subTest(head=head):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                self.addCleanup(sock.close)
                started = time.monotonic()
                sock.sendall(head)
                ready, _, _ = select.select([sock], [], [], 2)
                self.assertTrue(ready, "no answer before the head timeout")
                self.assertTrue(sock.recv(1024).startswith(b"HTTP/1.1 400 "))
                self.assertLess(time.monotonic() - started, 2)


if __name__ == "__main__":
    unittest.main()
