"""/cable over real sockets: the handshake's refusals, Action Cable's protocol,
Campfire's channels and broadcasts."""

import re
import select
import time
import unittest
import urllib.parse
import urllib.request

from tests.helpers import CableClient, Client, LiveServer, campfire, first_run_cookie, sign_in_cookie, wait_until  # noqa: F401


class CableTestCase(unittest.TestCase):
    def setUp(self):
        self.server = LiveServer()
        self.addCleanup(self.server.stop)
        app = self.server.app
        client = Client(app)
        client.post("/first_run", {"user[name]": "Ada Admin", "user[email_address]": "ada@example.com",
                                   "user[password]": "secret-one"})
        code = app.store.account()["join_code"]
        Client(app).post("/join/" + code, {"user[name]": "Bob Builder", "user[email_address]": "bob@example.com",
                                           "user[password]": "secret-two"})
        self.port = self.server.port
        self.origin = "http://127.0.0.1:%d" % self.port
        self.ada = sign_in_cookie(self.port, "ada@example.com", "secret-one")
        self.bob = sign_in_cookie(self.port, "bob@example.com", "secret-two")

    def connect(self, cookie, **kwargs):
        client = CableClient(self.port, cookie, origin=kwargs.pop("origin", self.origin), **kwargs)
        self.addCleanup(client.close)
        return client

    def post(self, cookie, room_id, body, client_message_id="cm-1"):
        data = urllib.parse.urlencode({"message[body]": body, "message[client_message_id]": client_message_id}).encode()
        request = urllib.request.Request("http://127.0.0.1:%d/rooms/%d/messages" % (self.port, room_id), data=data,
                                         headers={"Cookie": "session_token=" + cookie, "Sec-Fetch-Site": "same-origin"})
        with urllib.request.urlopen(request) as response:
            return response.status, response.read().decode()

    def current_avatar_url(self, user_id):
        """The avatar the person's page shows now (a versioned URL, or their initials as a data: URL)."""
        request = urllib.request.Request("http://127.0.0.1:%d/users/%d" % (self.port, user_id),
                                         headers={"Cookie": "session_token=" + self.ada})
        with urllib.request.urlopen(request) as response:
            page = response.read().decode()
        return re.search(r'<img class="avatar" src="([^"]+)" alt="" width="96"', page)[1]  # the profile's

    def create_room(self, name, member_ids):
        app = self.server.app

        def create():
            with app.db.atomic():
                return app.store.create_room(name, campfire.ROOM_CLOSED, 1, member_ids)
        return self.server.call(create)

    def welcomed(self, cookie, **kwargs):
        client = self.connect(cookie, **kwargs)
        self.assertEqual(client.status, 101, client.head)
        self.assertEqual(client.recv_json(), {"type": "welcome"})
        return client

    def confirm(self, client, channel, **params):
        identifier = client.subscribe(channel, **params)
        reply = client.recv_until(lambda m: m.get("identifier") == identifier and "type" in m)
        return identifier, reply["type"]


class HandshakeTests(CableTestCase):
    def test_handshake_speaks_actioncable_subprotocol(self):
        client = self.welcomed(self.ada)
        self.assertIn("Sec-WebSocket-Protocol: actioncable-v1-json", client.head)

    def test_foreign_origin_is_refused_with_403(self):
        client = self.connect(self.ada, origin="http://evil.example")
        self.assertEqual(client.status, 403)

    def test_without_session_gets_unauthorized_disconnect(self):
        client = self.connect(None)
        self.assertEqual(client.status, 101)
        self.assertEqual(client.recv_json(), {"type": "disconnect", "reason": "unauthorized", "reconnect": False})

    def test_refused_handshakes_are_rate_limited_per_ip(self):
        statuses = [self.connect(self.ada, origin="http://evil.example").status for _ in range(campfire.CABLE_REFUSALS[0] + 2)]
        self.assertEqual(statuses[0], 403)
        self.assertEqual(statuses[-1], 429)

    def test_bad_version_is_426(self):
        sock = self.server.connect()
        sock.sendall(b"GET /cable HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
        head = sock.recv(4096).decode("latin-1")
        sock.close()
        self.assertTrue(head.startswith("HTTP/1.1 426"), head)
        self.assertIn("Sec-WebSocket-Version: 13", head)

    def test_permessage_deflate_is_negotiated_without_context_takeover(self):
        client = self.welcomed(self.ada, deflate=True)
        self.assertIn("server_no_context_takeover", client.head)
        self.assertIn("client_no_context_takeover", client.head)


class ChannelTests(CableTestCase):
    def test_identifier_is_echoed_verbatim_and_unknown_channel_rejected(self):
        client = self.welcomed(self.ada)
        identifier = '{"channel": "RoomMessagesChannel",   "room_id": 1}'
        client.send_json({"command": "subscribe", "identifier": identifier})
        self.assertEqual(client.recv_json(), {"identifier": identifier, "type": "confirm_subscription"})
        self.assertEqual(self.confirm(client, "NoSuchChannel")[1], "reject_subscription")

    def test_non_member_is_rejected_from_a_closed_room(self):
        room = self.create_room("Secret", [1])
        client = self.welcomed(self.bob)
        self.assertEqual(self.confirm(client, "RoomMessagesChannel", room_id=room.id)[1], "reject_subscription")
        self.assertEqual(self.confirm(client, "PresenceChannel", room_id=room.id)[1], "reject_subscription")

    def test_posted_message_reaches_subscribers_with_rendered_html(self):
        bob = self.welcomed(self.bob, deflate=True)
        identifier, kind = self.confirm(bob, "RoomMessagesChannel", room_id=1)
        self.assertEqual(kind, "confirm_subscription")
        status, fragment = self.post(self.ada, 1, "<div>Hello <b>Bob</b></div>", "client-42")
        self.assertEqual(status, 201)
        message = bob.recv_until(lambda m: m.get("identifier") == identifier)
        payload = message["message"]
        self.assertEqual(payload["action"], "append")
        self.assertEqual(payload["client_message_id"], "client-42")
        self.assertIn("Hello <b>Bob</b>", payload["html"])
        self.assertIn('data-message-id="%d"' % payload["id"], payload["html"])

    def test_two_subscriptions_to_one_room_get_each_message_once_and_one_left_keeps_it(self):
        bob = self.welcomed(self.bob)
        first = '{"channel":"RoomMessagesChannel","room_id":1}'
        second = '{"room_id":1,"channel":"RoomMessagesChannel"}'  # the same room, another identifier
        for identifier in (first, second):
            bob.send_json({"command": "subscribe", "identifier": identifier})
            self.assertEqual(bob.recv_until(lambda m: m.get("identifier") == identifier and "type" in m)["type"],
                             "confirm_subscription")

        def appended(client_message_id):
            self.assertEqual(self.post(self.ada, 1, "hello", client_message_id)[0], 201)
            marker = self.post(self.ada, 1, "end", client_message_id + "-end")  # everything before it has come
            self.assertEqual(marker[0], 201)
            seen, deadline = [], time.monotonic() + 10
            while time.monotonic() < deadline:
                frame = bob.recv_json(skip_pings=False)  # a ping ends the wait for one frame, not the deadline
                message = frame.get("message")
                if isinstance(message, dict) and message.get("action") == "append":
                    if message["client_message_id"] == client_message_id + "-end":
                        return seen
                    seen.append((frame["identifier"], message["client_message_id"]))
            return seen + ["the end marker never came"]
        self.assertEqual(appended("both"), [(first, "both")], "one frame for the room, under the first")
        bob.send_json({"command": "unsubscribe", "identifier": first})
        self.assertEqual(appended("second"), [(second, "second")], "the subscription left still gets the room")
        bob.send_json({"command": "unsubscribe", "identifier": second})
        self.assertEqual(self.post(self.ada, 1, "gone", "gone")[0], 201)
        self.assertFalse(self.server.call(lambda: self.server.app.cable.streams.get("room_1_messages")),
                         "nobody is left on the room's stream")

    def test_edit_delete_and_boost_are_broadcast(self):
        bob = self.welcomed(self.bob)
        identifier, _ = self.confirm(bob, "RoomMessagesChannel", room_id=1)
        self.post(self.ada, 1, "first words", "c1")
        appended = bob.recv_until(lambda m: m.get("identifier") == identifier)["message"]
        message_id = appended["id"]
        body = urllib.parse.urlencode({"_method": "patch", "message[body]": "second words"}).encode()
        urllib.request.urlopen(urllib.request.Request(
            "http://127.0.0.1:%d/rooms/1/messages/%d" % (self.port, message_id), data=body,
            headers={"Cookie": "session_token=" + self.ada, "Sec-Fetch-Site": "same-origin"}))
        replaced = bob.recv_until(lambda m: m.get("identifier") == identifier)["message"]
        self.assertEqual((replaced["action"], replaced["id"]), ("replace", message_id))
        self.assertIn("second words", replaced["html"])
        boost = urllib.parse.urlencode({"boost[content]": "🎉"}).encode()
        urllib.request.urlopen(urllib.request.Request(
            "http://127.0.0.1:%d/messages/%d/boosts" % (self.port, message_id), data=boost,
            headers={"Cookie": "session_token=" + self.bob, "Sec-Fetch-Site": "same-origin"}))
        boosted = bob.recv_until(lambda m: m.get("identifier") == identifier)["message"]
        self.assertIn("🎉", boosted["html"])
        urllib.request.urlopen(urllib.request.Request(
            "http://127.0.0.1:%d/rooms/1/messages/%d" % (self.port, message_id),
            data=urllib.parse.urlencode({"_method": "delete"}).encode(),
            headers={"Cookie": "session_token=" + self.ada, "Sec-Fetch-Site": "same-origin"}))
        removed = bob.recv_until(lambda m: m.get("identifier") == identifier)["message"]
        self.assertEqual(removed, {"action": "remove", "id": message_id})

    def test_typing_is_relayed_to_others_not_the_typist(self):
        ada, bob = self.welcomed(self.ada), self.welcomed(self.bob)
        ada_id, _ = self.confirm(ada, "TypingNotificationsChannel", room_id=1)
        bob_id, _ = self.confirm(bob, "TypingNotificationsChannel", room_id=1)
        ada.perform(ada_id, "start")
        message = bob.recv_until(lambda m: m.get("identifier") == bob_id)
        self.assertEqual(message["message"], {"action": "start", "user": {"id": 1, "name": "Ada Admin"}})

    def test_presence_counts_connections_and_clears_unread(self):
        app = self.server.app
        self.post(self.ada, 1, "while bob is away", "away-1")
        unread = lambda: self.server.call(app.db.value, "SELECT unread_at FROM memberships WHERE room_id = 1 AND user_id = 2")
        connections = lambda: self.server.call(app.db.value, "SELECT connections FROM memberships WHERE room_id = 1 AND user_id = 2")
        wait_until(lambda: unread() is not None, message="the post left no unread mark")
        bob = self.welcomed(self.bob)
        reads_id, _ = self.confirm(bob, "ReadRoomsChannel")
        self.confirm(bob, "PresenceChannel", room_id=1)
        read = bob.recv_until(lambda m: m.get("identifier") == reads_id)
        self.assertEqual(read["message"], {"room_id": 1})
        self.assertEqual(connections(), 1)
        self.assertIsNone(unread())
        self.post(self.ada, 1, "while bob is here", "here-1")
        self.assertIsNone(unread())
        bob.close()
        wait_until(lambda: connections() == 0, message="closing the socket did not count the connection out")

    def test_every_presence_subscriber_learns_who_is_present(self):
        first, second = self.welcomed(self.ada), self.welcomed(self.ada)
        ada = {"id": 1, "name": "Ada Admin", "avatar_url": self.current_avatar_url(1)}
        identifier, _ = self.confirm(first, "PresenceChannel", room_id=1)
        message = first.recv_until(lambda m: m.get("identifier") == identifier)
        self.assertEqual(message["message"], {"action": "present", "users": [ada]})
        identifier, _ = self.confirm(second, "PresenceChannel", room_id=1)
        message = second.recv_until(lambda m: m.get("identifier") == identifier)
        self.assertEqual(message["message"], {"action": "present", "users": [ada]})

    def typing_frames_before_next_post(self, listener, typing_id, messages_id, cookie, note):
        """The typing frames `listener` receives until a message posted now reaches it."""
        self.post(cookie, 1, note, note)
        frames = []
        while True:
            message = listener.recv_json()
            if message.get("identifier") == typing_id:
                frames.append(message["message"]["action"])
            elif message.get("identifier") == messages_id and message["message"].get("client_message_id") == note:
                return frames

    def test_typing_stops_are_relayed_only_after_a_relayed_start(self):
        ada, bob = self.welcomed(self.ada), self.welcomed(self.bob)
        typing_id, _ = self.confirm(ada, "TypingNotificationsChannel", room_id=1)
        messages_id, _ = self.confirm(ada, "RoomMessagesChannel", room_id=1)
        bob_typing, _ = self.confirm(bob, "TypingNotificationsChannel", room_id=1)

        for _ in range(500):
            bob.perform(bob_typing, "stop")
        self.confirm(bob, "HeartbeatChannel")  # Bob's commands are handled in order
        self.assertEqual(self.typing_frames_before_next_post(ada, typing_id, messages_id, self.bob, "n1"), [])

        bob.perform(bob_typing, "start")
        for _ in range(500):
            bob.perform(bob_typing, "stop")
        self.confirm(bob, "SidebarChannel")
        self.assertEqual(self.typing_frames_before_next_post(ada, typing_id, messages_id, self.bob, "n2"),
                         ["start", "stop"])  # the start, then one stop

        time.sleep(campfire.TYPING_THROTTLE)  # past the throttle of that start
        started = time.monotonic()
        for _ in range(250):
            bob.perform(bob_typing, "start")
            bob.perform(bob_typing, "stop")
        self.confirm(bob, "UnreadRoomsChannel")
        frames = self.typing_frames_before_next_post(ada, typing_id, messages_id, self.bob, "n3")
        intervals = (time.monotonic() - started) / campfire.TYPING_THROTTLE + 1
        self.assertLessEqual(len(frames), 2 * intervals, frames)  # a start and its stop per interval at most
        self.assertIn("start", frames)  # and typing still shows

    def present_in_room_one(self):
        return sorted(self.server.call(lambda: list(self.server.app.cable.present.get(1, {}))))

    def wait_for_presence(self, expected):
        deadline = time.time() + 5
        while time.time() < deadline and self.present_in_room_one() != expected:
            time.sleep(0.02)
        self.assertEqual(self.present_in_room_one(), expected)

    def who_is_present(self, cookie):
        """The present list a fresh PresenceChannel subscriber is told."""
        watcher = self.welcomed(cookie)
        identifier, _ = self.confirm(watcher, "PresenceChannel", room_id=1)
        users = watcher.recv_until(lambda m: m.get("identifier") == identifier)["message"]["users"]
        watcher.close()
        return [user["name"] for user in users]

    def test_repeated_present_actions_end_with_the_socket(self):
        bob = self.welcomed(self.bob)
        identifier, _ = self.confirm(bob, "PresenceChannel", room_id=1)
        for _ in range(5):
            bob.perform(identifier, "present")
        self.confirm(bob, "HeartbeatChannel")  # commands run in order: the five were handled
        self.assertEqual(self.present_in_room_one(), [2])
        bob.close()
        self.wait_for_presence([])
        self.assertEqual(self.who_is_present(self.ada), ["Ada Admin"])

    def test_absent_and_present_count_once_per_subscription(self):
        hidden, visible = self.welcomed(self.bob), self.welcomed(self.bob)  # two tabs
        hidden_id, _ = self.confirm(hidden, "PresenceChannel", room_id=1)
        self.confirm(visible, "PresenceChannel", room_id=1)
        for _ in range(5):
            hidden.perform(hidden_id, "absent")
        self.confirm(hidden, "HeartbeatChannel")
        self.assertEqual(self.present_in_room_one(), [2])  # the visible tab still counts
        self.assertEqual(self.who_is_present(self.ada), ["Ada Admin", "Bob Builder"])
        visible.close()
        self.wait_for_presence([])  # the hidden tab no longer counted
        for _ in range(3):
            hidden.perform(hidden_id, "present")
        self.confirm(hidden, "SidebarChannel")
        self.assertEqual(self.present_in_room_one(), [2])
        hidden.perform(hidden_id, "absent")
        self.confirm(hidden, "UnreadRoomsChannel")
        self.assertEqual(self.present_in_room_one(), [])
        hidden.perform(hidden_id, "present")
        self.confirm(hidden, "ReadRoomsChannel")
        self.assertEqual(self.present_in_room_one(), [2])
        hidden.close()
        self.wait_for_presence([])

    def test_unread_rooms_channel_tells_other_members(self):
        bob = self.welcomed(self.bob)
        unreads, _ = self.confirm(bob, "UnreadRoomsChannel")
        self.post(self.ada, 1, "ping", "u-1")
        self.assertEqual(bob.recv_until(lambda m: m.get("identifier") == unreads)["message"], {"roomId": 1})

    def test_sign_out_closes_that_sessions_sockets(self):
        bob = self.welcomed(self.bob)
        urllib.request.urlopen(urllib.request.Request(
            "http://127.0.0.1:%d/session" % self.port, data=b"_method=delete",
            headers={"Cookie": "session_token=" + self.bob, "Sec-Fetch-Site": "same-origin",
                     "Content-Type": "application/x-www-form-urlencoded"}))
        message = bob.recv_json()
        self.assertEqual(message, {"type": "disconnect", "reason": "unauthorized", "reconnect": False})
        with self.assertRaises(ConnectionError):
            bob.recv_json()

    def test_revoked_member_stops_receiving_the_room(self):
        room = self.create_room("Closed", [1, 2])
        bob = self.welcomed(self.bob)
        identifier, kind = self.confirm(bob, "RoomMessagesChannel", room_id=room.id)
        sidebar, _ = self.confirm(bob, "SidebarChannel")
        unreads, _ = self.confirm(bob, "UnreadRoomsChannel")
        self.assertEqual(kind, "confirm_subscription")
        body = urllib.parse.urlencode({"_method": "patch", "room[name]": "Closed", "user_ids[]": []}).encode()
        urllib.request.urlopen(urllib.request.Request(
            "http://127.0.0.1:%d/rooms/closeds/%d" % (self.port, room.id), data=body,
            headers={"Cookie": "session_token=" + self.ada, "Sec-Fetch-Site": "same-origin"}))
        self.assertEqual(bob.recv_until(lambda m: m.get("identifier") == sidebar)["message"], {"action": "refresh"})
        self.post(self.ada, room.id, "bob must not see this", "secret-1")
        self.post(self.ada, 1, "but this one", "public-1")
        following = bob.recv_until(lambda m: "message" in m)
        self.assertEqual((following["identifier"], following["message"]), (unreads, {"roomId": 1}))

    def test_protocol_error_closes_with_1002(self):
        client = self.welcomed(self.ada)
        client.sock.sendall(b"\x81\x05hello")  # unmasked client frame
        opcode, payload = client.recv_frame()
        while opcode != 0x8:
            opcode, payload = client.recv_frame()
        self.assertEqual(int.from_bytes(payload[:2], "big"), 1002)

    def test_invalid_utf8_closes_with_1007(self):
        client = self.welcomed(self.ada)
        client.send_frame(0x1, b"\xff\xfe")
        opcode, payload = client.recv_frame()
        while opcode != 0x8:
            opcode, payload = client.recv_frame()
        self.assertEqual(int.from_bytes(payload[:2], "big"), 1007)

    def test_a_server_error_closes_with_1011_and_no_details(self):
        client = self.welcomed(self.ada)
        cable = self.server.app.cable

        def broken(connection, text):
            raise RuntimeError("secret detail")
        cable.command = broken
        with self.assertLogs("campfire", level="ERROR") as logs:
            client.subscribe("HeartbeatChannel")
            opcode, payload = client.recv_frame()
            while opcode != 0x8:
                opcode, payload = client.recv_frame()
        self.assertEqual(int.from_bytes(payload[:2], "big"), 1011)
        self.assertNotIn(b"secret", payload)
        self.assertIn("secret detail", "\n".join(logs.output))



class PingScheduleTest(unittest.TestCase):
    """Action Cable's ping reaches each connection once per CABLE_PING_INTERVAL
    (3 s), whether one socket is open or many: a phone on a small team's server
    is not woken more often than Rails would wake it."""

    WINDOW = 9.5                 # seconds: three intervals and a half
    SOCKET_COUNTS = (1, 10, 50)  # a lone socket, a few, and more than there are slices

    def open_sockets(self, count):
        server = LiveServer()
        self.addCleanup(server.stop)
        cookie = first_run_cookie(server.port)
        clients = []
        for _ in range(count):
            client = CableClient(server.port, cookie, origin="http://127.0.0.1:%d" % server.port, timeout=10)
            self.addCleanup(client.close)
            self.assertEqual(client.status, 101, client.head)
            self.assertEqual(client.recv_json(), {"type": "welcome"})
            clients.append(client)
        return clients

    def test_each_socket_gets_one_ping_per_interval_however_many_are_open(self):
        # One server per count, all listened to over the same 9.5 s.
        groups = {count: self.open_sockets(count) for count in self.SOCKET_COUNTS}
        by_socket = {client.sock: client for clients in groups.values() for client in clients}
        pings = dict.fromkeys(by_socket.values(), 0)
        deadline = time.monotonic() + self.WINDOW
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(list(by_socket), [], [], remaining)
            for sock in readable:
                client = by_socket[sock]
                pings[client] += sum(message.get("type") == "ping" for message in client.read_available())
        intervals = self.WINDOW / campfire.CABLE_PING_INTERVAL
        for count, clients in groups.items():
            counts = sorted(pings[client] for client in clients)
            with self.subTest(sockets=count):
                self.assertGreaterEqual(counts[0], int(intervals) - 1, counts)
                self.assertLessEqual(counts[-1], int(intervals) + 1, counts)


if __name__ == "__main__":
    unittest.main()


class BroadcastMemoryTest(unittest.TestCase):
    """A broadcast holds nothing per subscriber while it runs. With 10,000 sockets open
    the server tracks hundreds of thousands of objects; anything a broadcast keeps
    alive for each subscriber outlives the collections that run meanwhile and piles
    up in the oldest generation, whose collection then stalls the loop for tens of ms
    (the slowest posts of a steady fan-out)."""

    SUBSCRIBERS = 5000

    def test_a_broadcast_to_thousands_allocates_nothing_that_lives_per_subscriber(self):
        from tests.helpers import make_app
        import gc
        app = make_app()
        self.addCleanup(app.close)
        counts = []

        class Subscriber:
            deflate = False

            def send_frame(self, frame):
                counts.append(gc.get_count()[0])  # objects the collector tracks, made since it last ran
                self.frame = frame
        subscribers = [Subscriber() for _ in range(self.SUBSCRIBERS)]
        identifier = '{"channel":"RoomMessagesChannel","room_id":1}'
        app.cable.streams["room_1_messages"] = dict.fromkeys(subscribers, identifier)
        enabled = gc.isenabled()
        gc.disable()  # so that the count only grows with what is made and kept
        try:
            before = gc.get_count()[0]
            app.cable.broadcast("room_1_messages", {"action": "append", "id": 1})
        finally:
            if enabled:
                gc.enable()
        self.assertEqual(len(counts), self.SUBSCRIBERS)
        self.assertEqual(len({subscriber.frame for subscriber in subscribers}), 1, "one frame, encoded once")
        self.assertLess(max(counts) - before, 50, "nothing kept per subscriber during the broadcast")
