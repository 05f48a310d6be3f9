"""Rooms: who may see and change what, room kinds, direct
rooms, involvement and the sidebar.

ChatTestCase, the fixture the chat tests share, lives here: an administrator,
a member who created a closed room, a plain member and a non-member."""

import gc
import json
import re
import tempfile
import tracemalloc
import unittest
from html.parser import HTMLParser

from tests.helpers import AppTestCase, Client, campfire, make_app

VOID_TAGS = frozenset("area base br col embed hr img input link meta source track wbr".split())


class _MessageFinder(HTMLParser):
    """data-message-id of each `.message` element, in document order, inside
    the element with id `container` (the whole document when None)."""

    def __init__(self, container):
        super().__init__(convert_charrefs=True)
        self.container = container
        self.ids = []
        self.depth = 0
        self.inside_at = None if container else 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if self.inside_at is None and attributes.get("id") == self.container:
            self.inside_at = self.depth
        elif self.inside_at is not None and "message" in (attributes.get("class") or "").split() \
                and "data-message-id" in attributes:
            self.ids.append(int(attributes["data-message-id"]))
        if tag not in VOID_TAGS:
            self.depth += 1

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS:
            self.depth -= 1

    def handle_endtag(self, tag):
        if tag in VOID_TAGS:
            return
        self.depth -= 1
        if self.container and self.inside_at is not None and self.depth == self.inside_at:
            self.inside_at = -1  # left the container: stop collecting

    def handle_data(self, data):
        pass


def message_ids(html, container="messages"):
    """Message ids inside #messages (or `container`; None for a fragment), in order."""
    finder = _MessageFinder(container)
    finder.feed(html)
    finder.close()
    if finder.inside_at == -1:
        finder.inside_at = None
    return finder.ids


def fragment_message_id(response):
    ids = re.findall(r'data-message-id="(\d+)"', response.text)
    return int(ids[0]) if len(ids) == 1 else None


class ChatTestCase(AppTestCase):
    """Ada (administrator) created All Talk; Bob and Carol are members; Carol
    created the closed room "Secret Plans" with Ada and Bob; Dave is in All
    Talk only."""

    CACHE = True

    def setUp(self):
        self.storage = tempfile.mkdtemp(prefix="campfire-test-")
        self.app = make_app(self.storage, cache=self.CACHE, **self.CONFIG)
        self.client = Client(self.app)
        self.first_run()
        self.ada = self.client
        self.bob = self.join("Bob Builder", "bob@example.com")
        self.carol = self.join("Carol Creator", "carol@example.com")
        self.dave = self.join("Dave Outsider", "dave@example.com")
        self.ada_id = self.user_id("ada@example.com")
        self.bob_id = self.user_id("bob@example.com")
        self.carol_id = self.user_id("carol@example.com")
        self.dave_id = self.user_id("dave@example.com")
        self.all_talk = 1
        self.closed = self.create_closed_room(self.carol, "Secret Plans", [self.ada_id, self.bob_id])

    # Helpers ------------------------------------------------------------------------
    def user_id(self, email):
        return self.app.store.user_by_email(email).id

    def create_closed_room(self, client, name, member_ids):
        response = client.post("/rooms/closeds", {"room[name]": name, "user_ids[]": [str(i) for i in member_ids]})
        self.assertEqual(response.status, 303, response.text[:300])
        return int(response.header("Location").rsplit("/", 1)[1])

    def create_direct_room(self, client, member_ids):
        response = client.post("/rooms/directs", {"user_ids[]": [str(i) for i in member_ids]})
        self.assertEqual(response.status, 303, response.text[:300])
        return int(response.header("Location").rsplit("/", 1)[1])

    def post(self, client, room_id, body, client_message_id=None, **kwargs):
        form = {"message[body]": body}
        if client_message_id is not None:
            form["message[client_message_id]"] = client_message_id
        return client.post("/rooms/%d/messages" % room_id, form, **kwargs)

    def post_id(self, client, room_id, body, **kwargs):
        response = self.post(client, room_id, body, **kwargs)
        self.assertEqual(response.status, 201, response.text[:300])
        return fragment_message_id(response)

    def connect(self, user_id, room_id=None):
        """Mark a user present (a live /cable presence) the way the realtime layer does, straight in SQL."""
        sql = "UPDATE memberships SET connections = 1, connected_at = ? WHERE user_id = ?"
        params = (campfire.utc_now_text(), user_id)
        if room_id is not None:
            sql, params = sql + " AND room_id = ?", params + (room_id,)
        self.app.db.execute(sql, params)
        self.app.store.bump_users([user_id])

    def member_ids(self, room_id):
        return {row[0] for row in self.app.db.all("SELECT user_id FROM memberships WHERE room_id = ?", (room_id,))}

    def room_type(self, room_id):
        return self.app.db.value("SELECT type FROM rooms WHERE id = ?", (room_id,))

    def sidebar_links(self, client):
        """{room id: class attribute} of the rooms in a user's sidebar."""
        page = client.get("/users/me/sidebar")
        self.assertEqual(page.status, 200)
        return {int(room_id): classes for classes, room_id in
                re.findall(r'<a class="([^"]*)" href="/rooms/(\d+)"', page.text)}

    def actors(self):
        return {"administrator": self.ada, "room creator": self.carol, "member": self.bob, "non-member": self.dave}


class PermissionMatrixTests(ChatTestCase):
    """Administrator, room creator, plain member and non-member against every room action."""

    def check(self, expected, action):
        for actor, client in self.actors().items():
            with self.subTest(actor=actor):
                self.assertEqual(action(client), expected[actor])

    def test_view_room(self):
        self.check({"administrator": 200, "room creator": 200, "member": 200, "non-member": 404},
                   lambda client: client.get("/rooms/%d" % self.closed).status)

    def test_view_messages_page(self):
        first = self.post_id(self.carol, self.closed, "first")
        self.post_id(self.carol, self.closed, "second")
        self.check({"administrator": 200, "room creator": 200, "member": 200, "non-member": 404},
                   lambda client: client.get("/rooms/%d/messages?after=%d" % (self.closed, first)).status)
        self.check({"administrator": 204, "room creator": 204, "member": 204, "non-member": 404},
                   lambda client: client.get("/rooms/%d/messages?before=%d" % (self.closed, first)).status)

    def test_post(self):
        self.check({"administrator": 201, "room creator": 201, "member": 201, "non-member": 404},
                   lambda client: self.post(client, self.closed, "hello").status)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages WHERE room_id = ?", (self.closed,)), 3)

    def test_edit_message_is_for_administrators_and_the_message_creator(self):
        message = self.post_id(self.bob, self.closed, "Bob wrote this")
        self.check({"administrator": 200, "room creator": 403, "member": 200, "non-member": 404},
                   lambda client: client.post("/rooms/%d/messages/%d" % (self.closed, message),
                                              {"_method": "patch", "message[body]": "changed"}).status)
        self.check({"administrator": 200, "room creator": 403, "member": 200, "non-member": 404},
                   lambda client: client.get("/rooms/%d/messages/%d/edit" % (self.closed, message)).status)

    def test_plain_member_cannot_edit_or_delete_someone_elses_message(self):
        message = self.post_id(self.carol, self.closed, "Carol wrote this")
        path = "/rooms/%d/messages/%d" % (self.closed, message)
        self.assertEqual(self.bob.post(path, {"_method": "patch", "message[body]": "hijacked"}).status, 403)
        self.assertEqual(self.bob.post(path, {"_method": "delete"}).status, 403)
        self.assertIn("Carol wrote this", self.app.store.message(message)["body"])

    def test_delete_message_is_for_administrators_and_the_message_creator(self):
        def delete(client):
            message = self.post_id(self.bob, self.closed, "delete me")
            return client.post("/rooms/%d/messages/%d" % (self.closed, message), {"_method": "delete"}).status
        self.check({"administrator": 204, "room creator": 403, "member": 204, "non-member": 404}, delete)

    def test_boost(self):
        message = self.post_id(self.bob, self.closed, "boost me")
        self.check({"administrator": 201, "room creator": 201, "member": 201, "non-member": 404},
                   lambda client: client.post("/messages/%d/boosts" % message, {"boost[content]": "👍"}).status)

    def test_delete_someone_elses_boost_is_refused_even_to_administrators(self):
        message = self.post_id(self.carol, self.closed, "boosted")
        self.assertEqual(self.bob.post("/messages/%d/boosts" % message, {"boost[content]": "🎉"}).status, 201)
        boost = self.app.db.value("SELECT id FROM boosts WHERE booster_id = ?", (self.bob_id,))
        path = "/messages/%d/boosts/%d" % (message, boost)
        others = {"administrator": self.ada, "room creator": self.carol, "non-member": self.dave}
        for actor, client in others.items():
            with self.subTest(actor=actor):
                self.assertEqual(client.post(path, {"_method": "delete"}).status,
                                 404 if actor == "non-member" else 403)
        self.assertIsNotNone(self.app.store.boost(boost))
        self.assertEqual(self.bob.post(path, {"_method": "delete"}).status, 204)
        self.assertIsNone(self.app.store.boost(boost))

    def update(self, client, room_id, kind, name, member_ids):
        return client.post("/rooms/%s/%d" % (kind, room_id), {"_method": "patch", "room[name]": name,
                                                            "user_ids[]": [str(i) for i in member_ids]}).status

    def test_rename_room(self):
        members = [self.ada_id, self.bob_id, self.carol_id]
        for actor, client in self.actors().items():
            with self.subTest(actor=actor):
                status = self.update(client, self.closed, "closeds", "Renamed by " + actor, members)
                expected = {"administrator": 303, "room creator": 303, "member": 403, "non-member": 404}[actor]
                self.assertEqual(status, expected)
                renamed = self.app.store.room(self.closed).name == "Renamed by " + actor
                self.assertEqual(renamed, status == 303)

    def test_convert_closed_to_open_and_back(self):
        for actor, client in self.actors().items():
            with self.subTest(actor=actor):
                room = self.create_closed_room(self.carol, "Convert " + actor, [self.ada_id, self.bob_id])
                status = self.update(client, room, "opens", "Convert " + actor, [])
                expected = {"administrator": 303, "room creator": 303, "member": 403, "non-member": 404}[actor]
                self.assertEqual(status, expected)
                self.assertEqual(self.room_type(room), campfire.ROOM_OPEN if status == 303 else campfire.ROOM_CLOSED)
        with self.app.db.atomic():
            opened = self.app.store.create_room("Was open", campfire.ROOM_OPEN, self.carol_id,
                                                self.app.store.active_user_ids())
        self.assertEqual(self.update(self.bob, opened.id, "closeds", "Was open", [self.bob_id]), 403)
        self.assertEqual(self.room_type(opened.id), campfire.ROOM_OPEN)
        self.assertEqual(self.update(self.carol, opened.id, "closeds", "Was open", [self.bob_id]), 303)
        self.assertEqual(self.room_type(opened.id), campfire.ROOM_CLOSED)

    def test_the_forms_open_or_closed_choice_wins_over_the_path(self):
        for path, kind, expected in (("/rooms/opens", "closeds", campfire.ROOM_CLOSED),
                                     ("/rooms/closeds", "opens", campfire.ROOM_OPEN),
                                     ("/rooms/closeds", None, campfire.ROOM_CLOSED),
                                     ("/rooms/opens", None, campfire.ROOM_OPEN)):
            with self.subTest(path=path, room_kind=kind):
                form = {"room[name]": "Chosen", "user_ids[]": [str(self.bob_id)]}
                if kind:
                    form["room_kind"] = kind
                response = self.carol.post(path, form)
                self.assertEqual(response.status, 303, response.text[:300])
                room = int(response.header("Location").rsplit("/", 1)[1])
                self.assertEqual(self.room_type(room), expected)
                everyone = set(self.app.store.active_user_ids())
                self.assertEqual(self.member_ids(room), everyone if expected == campfire.ROOM_OPEN
                                 else {self.carol_id, self.bob_id})
                self.assertEqual(self.dave.get("/rooms/%d" % room).status,
                                 200 if expected == campfire.ROOM_OPEN else 404)
        room = self.create_closed_room(self.carol, "Settings", [self.bob_id])
        for path_kind, kind, expected in (("closeds", "opens", campfire.ROOM_OPEN),
                                          ("opens", "closeds", campfire.ROOM_CLOSED)):
            with self.subTest(settings=path_kind, room_kind=kind):
                status = self.carol.post("/rooms/%s/%d" % (path_kind, room), {
                    "_method": "patch", "room[name]": "Settings", "room_kind": kind,
                    "user_ids[]": [str(self.bob_id)]}).status
                self.assertEqual(status, 303)
                self.assertEqual(self.room_type(room), expected)
                self.assertEqual(self.dave.get("/rooms/%d" % room).status,
                                 200 if expected == campfire.ROOM_OPEN else 404)
        self.assertEqual(self.carol.post("/rooms/opens", {"room[name]": "Odd", "room_kind": "directs"}).status, 422)

    def test_grant_and_revoke_members(self):
        for actor, client in self.actors().items():
            with self.subTest(actor=actor):
                room = self.create_closed_room(self.carol, "Members " + actor, [self.ada_id, self.bob_id])
                status = self.update(client, room, "closeds", "Members " + actor, [self.ada_id, self.carol_id,
                                                                                   self.dave_id])
                expected = {"administrator": 303, "room creator": 303, "member": 403, "non-member": 404}[actor]
                self.assertEqual(status, expected)
                if status == 303:
                    self.assertEqual(self.member_ids(room), {self.ada_id, self.carol_id, self.dave_id})
                else:
                    self.assertEqual(self.member_ids(room), {self.ada_id, self.bob_id, self.carol_id})

    def test_delete_room(self):
        for actor, client in self.actors().items():
            with self.subTest(actor=actor):
                room = self.create_closed_room(self.carol, "Doomed " + actor, [self.ada_id, self.bob_id])
                status = client.post("/rooms/%d" % room, {"_method": "delete"}).status
                expected = {"administrator": 303, "room creator": 303, "member": 403, "non-member": 404}[actor]
                self.assertEqual(status, expected)
                self.assertEqual(self.app.store.room(room) is None, status == 303)

    def test_edit_room_page_is_shown_to_every_member_but_only_admins_get_controls(self):
        path = "/rooms/closeds/%d/edit" % self.closed
        self.check({"administrator": 200, "room creator": 200, "member": 200, "non-member": 404},
                   lambda client: client.get(path).status)
        for client in (self.ada, self.carol):
            page = client.get(path).text
            self.assertIn(">Save</button>", page)
            self.assertIn("Delete room", page)
        page = self.bob.get(path).text
        self.assertNotIn(">Save</button>", page)
        self.assertNotIn("Delete room", page)
        self.assertIn(" readonly", page)

    def test_any_member_can_delete_a_direct_room(self):
        for actor, client in self.actors().items():
            with self.subTest(actor=actor):
                self.app.db.execute("DELETE FROM memberships WHERE room_id IN (SELECT id FROM rooms WHERE type = ?)",
                                    (campfire.ROOM_DIRECT,))
                self.app.db.execute("DELETE FROM rooms WHERE type = ?", (campfire.ROOM_DIRECT,))
                self.app.store.bump_everything()
                members = [self.ada_id, self.bob_id, self.carol_id]
                room = self.create_direct_room(self.ada, members)
                status = client.post("/rooms/directs/%d" % room, {"_method": "delete"}).status
                self.assertEqual(status, 404 if actor == "non-member" else 303)
                self.assertEqual(self.app.store.room(room) is None, status == 303)

    def test_involvement(self):
        self.check({"administrator": 200, "room creator": 200, "member": 200, "non-member": 404},
                   lambda client: client.post("/rooms/%d/involvement" % self.closed,
                                              {"_method": "put", "involvement": "everything"}).status)


class NonMemberTests(ChatTestCase):
    """A closed room never reveals itself to someone outside it."""

    def setUp(self):
        super().setUp()
        self.secret = self.post_id(self.carol, self.closed, "the secret ingredient")

    def assertHidden(self, response):
        self.assertEqual(response.status, 404)
        self.assertNotIn("Secret Plans", response.text)
        self.assertNotIn("secret ingredient", response.text)

    def test_non_member_gets_404_for_everything_in_a_closed_room(self):
        room, message = self.closed, self.secret
        gets = ["/rooms/%d" % room, "/rooms/%d/messages" % room, "/rooms/%d/messages?before=%d" % (room, message),
                "/rooms/%d/messages/%d" % (room, message), "/rooms/%d/messages/%d/edit" % (room, message),
                "/rooms/%d/@%d" % (room, message), "/rooms/%d/refresh?since=0" % room,
                "/rooms/%d/involvement" % room, "/rooms/closeds/%d" % room, "/rooms/closeds/%d/edit" % room,
                "/rooms/opens/%d/edit" % room, "/messages/%d/boosts/new" % message,
                "/autocompletable/users?query=a&room_id=%d" % room]
        for path in gets:
            with self.subTest(path=path):
                self.assertHidden(self.dave.get(path))
        posts = [("/rooms/%d/messages" % room, {"message[body]": "let me in"}),
                 ("/rooms/%d/messages/%d" % (room, message), {"_method": "patch", "message[body]": "x"}),
                 ("/rooms/%d/messages/%d" % (room, message), {"_method": "delete"}),
                 ("/messages/%d/boosts" % message, {"boost[content]": "👍"}),
                 ("/rooms/%d/involvement" % room, {"_method": "put", "involvement": "everything"}),
                 ("/rooms/closeds/%d" % room, {"_method": "patch", "room[name]": "Mine", "user_ids[]": ["4"]}),
                 ("/rooms/opens/%d" % room, {"_method": "patch", "room[name]": "Mine"}),
                 ("/rooms/%d" % room, {"_method": "delete"})]
        for path, form in posts:
            with self.subTest(path=path, form=form):
                self.assertHidden(self.dave.post(path, form))
        self.assertEqual(self.member_ids(room), {self.ada_id, self.bob_id, self.carol_id})
        self.assertEqual(self.app.store.room(room).name, "Secret Plans")
        self.assertIn("secret ingredient", self.app.store.message(message)["body"])
        self.assertEqual(self.app.db.value("SELECT count(*) FROM boosts"), 0)

    def test_closed_message_ids_through_another_rooms_path_are_404(self):
        message = self.secret
        for client, who in ((self.dave, "non-member"), (self.bob, "member of both")):
            with self.subTest(who=who):
                for path in ("/rooms/1/messages/%d" % message, "/rooms/1/messages/%d/edit" % message,
                             "/rooms/1/@%d" % message):
                    self.assertHidden(client.get(path))
                self.assertHidden(client.post("/rooms/1/messages/%d" % message,
                                              {"_method": "patch", "message[body]": "x"}))
                self.assertHidden(client.post("/rooms/1/messages/%d" % message, {"_method": "delete"}))
        self.assertIn("secret ingredient", self.app.store.message(message)["body"])

    def test_closed_message_ids_as_paging_anchors_of_another_room_are_404(self):
        # Campfire pages with @room.messages.find(params[:before]): an anchor from elsewhere is a 404, so
        # /rooms/1/messages?before=<closed id> can't tell a non-member that the message exists or when it was written.
        older = self.post_id(self.bob, 1, "older open message")
        self.secret = self.post_id(self.carol, self.closed, "another secret ingredient")
        self.post_id(self.bob, 1, "newer open message")
        for client, who in ((self.dave, "non-member"), (self.bob, "member of both")):
            for query in ("before=%d" % self.secret, "after=%d" % self.secret):
                with self.subTest(who=who, query=query):
                    response = client.get("/rooms/1/messages?" + query)
                    self.assertEqual(response.status, 404)
                    self.assertNotIn("open message", response.text)
        self.assertEqual(self.dave.get("/rooms/1/messages?after=%d" % older).status, 200)

    def test_boosts_on_closed_messages_are_404_for_non_members(self):
        self.assertEqual(self.bob.post("/messages/%d/boosts" % self.secret, {"boost[content]": "🔥"}).status, 201)
        boost = self.app.db.value("SELECT id FROM boosts")
        self.assertHidden(self.dave.post("/messages/%d/boosts/%d" % (self.secret, boost), {"_method": "delete"}))
        self.assertIsNotNone(self.app.store.boost(boost))

    def test_a_room_that_does_not_exist_looks_the_same_as_a_closed_one(self):
        missing = self.dave.get("/rooms/999")
        hidden = self.dave.get("/rooms/%d" % self.closed)
        self.assertEqual((missing.status, hidden.status), (404, 404))
        strip = lambda text: re.sub(r"X-Request-Id|logged as \S+", "", text)
        self.assertEqual(strip(missing.text), strip(hidden.text))

    def test_closed_room_is_not_in_the_non_members_sidebar_or_search(self):
        self.assertNotIn(self.closed, self.sidebar_links(self.dave))
        self.assertIn(self.closed, self.sidebar_links(self.bob))
        self.assertNotIn("secret ingredient", self.dave.get("/searches?q=ingredient").text)


class RoomCreationTests(ChatTestCase):
    def restrict_room_creation(self):
        self.app.db.execute("UPDATE accounts SET settings = ?",
                            (json.dumps({"restrict_room_creation_to_administrators": True}),))
        self.app.store.bump_everything()

    def test_anyone_can_create_rooms_by_default(self):
        self.assertEqual(self.bob.get("/rooms/opens/new").status, 200)
        self.assertEqual(self.bob.get("/rooms/closeds/new").status, 200)
        self.assertEqual(self.bob.post("/rooms/opens", {"room[name]": "Bob's"}).status, 303)

    def test_restricted_room_creation_is_403_for_members_not_administrators(self):
        self.restrict_room_creation()
        for path in ("/rooms/opens/new", "/rooms/closeds/new"):
            self.assertEqual(self.bob.get(path).status, 403)
            self.assertEqual(self.ada.get(path).status, 200)
        rooms = self.app.db.value("SELECT count(*) FROM rooms")
        self.assertEqual(self.bob.post("/rooms/opens", {"room[name]": "Nope"}).status, 403)
        self.assertEqual(self.bob.post("/rooms/closeds", {"room[name]": "Nope", "user_ids[]": ["1"]}).status, 403)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM rooms"), rooms)
        self.assertEqual(self.ada.post("/rooms/opens", {"room[name]": "Admins may"}).status, 303)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM rooms"), rooms + 1)

    def test_restricted_room_creation_hides_the_new_room_link_but_not_new_ping(self):
        self.restrict_room_creation()
        sidebar = self.bob.get("/users/me/sidebar").text
        self.assertNotIn('href="/rooms/opens/new"', sidebar)
        self.assertIn('href="/rooms/directs/new"', sidebar)
        self.assertIn('href="/rooms/opens/new"', self.ada.get("/users/me/sidebar").text)
        self.assertEqual(self.bob.get("/rooms/directs/new").status, 200)
        self.create_direct_room(self.bob, [self.carol_id])

    def test_open_room_takes_in_every_active_user_and_later_joiners(self):
        response = self.bob.post("/rooms/opens", {"room[name]": "Open House"})
        room = int(response.header("Location").rsplit("/", 1)[1])
        self.assertEqual(self.room_type(room), campfire.ROOM_OPEN)
        self.assertEqual(self.member_ids(room), {self.ada_id, self.bob_id, self.carol_id, self.dave_id})
        self.assertEqual(self.app.store.room(room).creator_id, self.bob_id)
        eve = self.join("Eve Newcomer", "eve@example.com")
        eve_id = self.user_id("eve@example.com")
        self.assertIn(eve_id, self.member_ids(room))
        self.assertIn(eve_id, self.member_ids(self.all_talk))
        self.assertNotIn(eve_id, self.member_ids(self.closed))
        self.assertEqual(eve.get("/rooms/%d" % room).status, 200)
        self.assertIn(room, self.sidebar_links(eve))

    def test_closed_room_holds_the_chosen_people_and_its_creator(self):
        self.assertEqual(self.room_type(self.closed), campfire.ROOM_CLOSED)
        self.assertEqual(self.member_ids(self.closed), {self.ada_id, self.bob_id, self.carol_id})
        self.assertEqual(self.app.store.room(self.closed).creator_id, self.carol_id)

    def test_room_without_a_name_is_called_new_room(self):
        response = self.bob.post("/rooms/opens", {"room[name]": ""})
        room = int(response.header("Location").rsplit("/", 1)[1])
        self.assertEqual(self.app.store.room(room).name, "New room")

    def test_room_name_over_100_characters_is_422(self):
        long_name = "x" * (campfire.MAX_ROOM_NAME_CHARS + 1)
        rooms = self.app.db.value("SELECT count(*) FROM rooms")
        self.assertEqual(self.bob.post("/rooms/opens", {"room[name]": long_name}).status, 422)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM rooms"), rooms)
        response = self.carol.post("/rooms/closeds/%d" % self.closed, {"_method": "patch", "room[name]": long_name,
                                                                       "user_ids[]": [str(self.bob_id)]})
        self.assertEqual(response.status, 422)
        self.assertEqual(self.app.store.room(self.closed).name, "Secret Plans")
        self.assertEqual(self.member_ids(self.closed), {self.ada_id, self.bob_id, self.carol_id})

    def test_new_room_form_has_its_accessible_names(self):
        page = self.bob.get("/rooms/opens/new").text
        self.assertIn("Name this room", page)
        self.assertIn(">Save</button>", page)

    def test_converting_to_open_lets_everyone_in_and_to_closed_keeps_the_chosen(self):
        self.assertEqual(self.dave.get("/rooms/%d" % self.closed).status, 404)
        self.assertEqual(self.carol.post("/rooms/opens/%d" % self.closed,
                                         {"_method": "patch", "room[name]": "Secret Plans"}).status, 303)
        self.assertEqual(self.room_type(self.closed), campfire.ROOM_OPEN)
        self.assertEqual(self.dave.get("/rooms/%d" % self.closed).status, 200)
        self.assertEqual(self.carol.post("/rooms/closeds/%d" % self.closed,
                                         {"_method": "patch", "room[name]": "Secret Plans",
                                          "user_ids[]": [str(self.bob_id)]}).status, 303)
        self.assertEqual(self.room_type(self.closed), campfire.ROOM_CLOSED)
        self.assertEqual(self.member_ids(self.closed), {self.bob_id, self.carol_id})
        self.assertEqual(self.dave.get("/rooms/%d" % self.closed).status, 404)
        self.assertEqual(self.ada.get("/rooms/%d" % self.closed).status, 404)

    def test_granted_member_gets_in_and_revoked_member_is_shut_out(self):
        self.assertEqual(self.ada.post("/rooms/closeds/%d" % self.closed, {
            "_method": "patch", "room[name]": "Secret Plans",
            "user_ids[]": [str(self.carol_id), str(self.dave_id)]}).status, 303)
        self.assertEqual(self.dave.get("/rooms/%d" % self.closed).status, 200)
        self.assertEqual(self.bob.get("/rooms/%d" % self.closed).status, 404)
        self.assertNotIn(self.closed, self.sidebar_links(self.bob))
        self.assertIn(self.closed, self.sidebar_links(self.dave))

    def test_deleting_a_room_removes_its_messages_boosts_and_search_rows(self):
        message = self.post_id(self.bob, self.closed, "going away soon")
        self.assertEqual(self.carol.post("/messages/%d/boosts" % message, {"boost[content]": "👋"}).status, 201)
        self.assertEqual(self.carol.post("/rooms/%d" % self.closed, {"_method": "delete"}).header("Location"), "/")
        db = self.app.db
        self.assertIsNone(self.app.store.room(self.closed))
        self.assertEqual(db.value("SELECT count(*) FROM memberships WHERE room_id = ?", (self.closed,)), 0)
        self.assertEqual(db.value("SELECT count(*) FROM messages WHERE id = ?", (message,)), 0)
        self.assertEqual(db.value("SELECT count(*) FROM action_text_rich_texts WHERE record_id = ?", (message,)), 0)
        self.assertEqual(db.value("SELECT count(*) FROM message_search_index WHERE rowid = ?", (message,)), 0)
        self.assertEqual(db.value("SELECT count(*) FROM boosts"), 0)
        self.assertEqual(self.bob.get("/rooms/%d" % self.closed).status, 404)


class DirectRoomTests(ChatTestCase):
    def test_one_direct_room_per_exact_set_of_people(self):
        first = self.create_direct_room(self.ada, [self.bob_id])
        self.assertEqual(self.create_direct_room(self.ada, [self.bob_id]), first)
        self.assertEqual(self.create_direct_room(self.bob, [self.ada_id]), first)
        group = self.create_direct_room(self.ada, [self.bob_id, self.carol_id])
        self.assertNotEqual(group, first)
        self.assertEqual(self.create_direct_room(self.carol, [self.bob_id, self.ada_id]), group)
        other = self.create_direct_room(self.ada, [self.carol_id])
        self.assertNotIn(other, (first, group))
        self.assertEqual(self.app.db.value("SELECT count(*) FROM rooms WHERE type = ?", (campfire.ROOM_DIRECT,)), 3)
        self.assertEqual(self.member_ids(first), {self.ada_id, self.bob_id})
        self.assertEqual(self.member_ids(group), {self.ada_id, self.bob_id, self.carol_id})

    def test_direct_room_is_named_by_the_other_members(self):
        room = self.create_direct_room(self.ada, [self.bob_id, self.carol_id])
        self.assertIsNone(self.app.store.room(room).name)
        self.assertIn("Ping with Bob Builder, Carol Creator", self.ada.get("/rooms/%d" % room).text)
        self.assertIn("Ping with Ada Admin, Carol Creator", self.bob.get("/rooms/%d" % room).text)
        self.assertIn("Ping with Ada Admin, Bob Builder", self.carol.get("/rooms/directs/%d/edit" % room).text)
        sidebar = self.bob.get("/users/me/sidebar").text
        self.assertRegex(sidebar, r'href="/rooms/%d"[^>]*><span class="sidebar__name">Ada Admin, Carol Creator</span>'
                         % room)
        self.assertEqual(self.dave.get("/rooms/%d" % room).status, 404)

    def test_direct_rooms_cannot_be_converted(self):
        room = self.create_direct_room(self.ada, [self.bob_id])
        for kind in ("opens", "closeds"):
            response = self.ada.post("/rooms/%s/%d" % (kind, room), {"_method": "patch", "room[name]": "Renamed",
                                                                     "user_ids[]": [str(self.carol_id)]})
            self.assertEqual(response.status, 403)
        self.assertEqual(self.room_type(room), campfire.ROOM_DIRECT)
        self.assertEqual(self.member_ids(room), {self.ada_id, self.bob_id})
        self.assertEqual(self.ada.get("/rooms/opens/%d/edit" % room).header("Location"), "/rooms/directs/%d/edit" % room)

    def test_direct_room_needs_someone_else(self):
        response = self.ada.post("/rooms/directs", {"user_ids[]": [str(self.ada_id)]})
        self.assertEqual(response.status, 422)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM rooms WHERE type = ?", (campfire.ROOM_DIRECT,)), 0)

    def test_new_ping_form_has_its_accessible_names(self):
        page = self.ada.get("/rooms/directs/new").text
        self.assertIn("New Ping", page)
        self.assertIn("Start Ping", page)
        self.assertIn("Cancel changes", page)


class InvolvementTests(ChatTestCase):
    def put(self, client, room_id, involvement, **kwargs):
        return client.post("/rooms/%d/involvement" % room_id, {"_method": "put", "involvement": involvement}, **kwargs)

    def menu(self, client, room_id):
        """The bell's menu: [(involvement, pressed)] in its order."""
        bell = client.get("/rooms/%d/involvement" % room_id)
        self.assertEqual(bell.status, 200)
        return [(value, pressed == "true") for value, pressed in re.findall(
            r'name="involvement" value="([a-z]+)"><button type="submit" class="bell__option bell--\1" '
            r'aria-pressed="(true|false)">', bell.text)]

    def test_invisible_hides_the_room_from_the_sidebar(self):
        self.assertIn(self.all_talk, self.sidebar_links(self.bob))
        self.assertEqual(self.put(self.bob, self.all_talk, "invisible").status, 200)
        self.assertEqual(self.app.store.membership(self.all_talk, self.bob_id)["involvement"], "invisible")
        self.assertNotIn(self.all_talk, self.sidebar_links(self.bob))
        self.assertIn(self.all_talk, self.sidebar_links(self.ada))
        self.assertEqual(self.bob.get("/rooms/%d" % self.all_talk).status, 200)  # still a member
        self.assertEqual(self.put(self.bob, self.all_talk, "mentions").status, 200)
        self.assertIn(self.all_talk, self.sidebar_links(self.bob))

    def test_unknown_involvement_is_422(self):
        self.assertEqual(self.put(self.bob, self.all_talk, "loud").status, 422)
        self.assertEqual(self.put(self.bob, self.all_talk, "").status, 422)
        self.assertEqual(self.app.store.membership(self.all_talk, self.bob_id)["involvement"], "mentions")

    def test_direct_rooms_accept_only_everything_or_nothing(self):
        room = self.create_direct_room(self.ada, [self.bob_id])
        self.assertEqual(self.app.store.membership(room, self.bob_id)["involvement"], "everything")
        for involvement in ("mentions", "invisible"):
            self.assertEqual(self.put(self.bob, room, involvement).status, 422)
        self.assertEqual(self.put(self.bob, room, "nothing").status, 200)
        self.assertEqual(self.app.store.membership(room, self.bob_id)["involvement"], "nothing")
        self.assertEqual(self.put(self.bob, room, "everything").status, 200)

    def test_the_bell_is_a_menu_of_the_four_involvements_marking_the_current_one(self):
        order = ["mentions", "everything", "nothing", "invisible"]
        self.assertEqual(self.menu(self.bob, self.all_talk), [(value, value == "mentions") for value in order])
        for chosen in ("nothing", "invisible", "everything", "mentions"):
            with self.subTest(chosen=chosen):
                response = self.put(self.bob, self.all_talk, chosen)
                self.assertIn('<summary class="bell__button bell--%s" title="%s">' % (
                    chosen, campfire.INVOLVEMENT_LABELS[chosen]), response.text)
                self.assertEqual(self.menu(self.bob, self.all_talk), [(value, value == chosen) for value in order])
                page = self.bob.get("/rooms/%d" % self.all_talk).text
                self.assertIn('value="%s"><button type="submit" class="bell__option bell--%s" aria-pressed="true">%s'
                              % (chosen, chosen, campfire.INVOLVEMENT_LABELS[chosen]), page)

    def test_a_direct_rooms_bell_offers_everything_and_nothing(self):
        room = self.create_direct_room(self.ada, [self.bob_id])
        self.assertEqual(self.menu(self.bob, room), [("everything", True), ("nothing", False)])
        self.put(self.bob, room, "nothing")
        self.assertEqual(self.menu(self.bob, room), [("everything", False), ("nothing", True)])

    def test_hidden_rooms_are_listed_with_a_way_back(self):
        self.assertNotIn("Hidden rooms", self.bob.get("/users/me/sidebar").text)
        self.put(self.bob, self.all_talk, "invisible")
        sidebar = self.bob.get("/users/me/sidebar").text
        self.assertIn('aria-label="Hidden rooms"', sidebar)
        hidden = re.search(r'<ul id="hidden_rooms".*?</ul>', sidebar).group(0)
        self.assertIn('href="/rooms/%d"' % self.all_talk, hidden)
        self.assertIn('name="involvement" value="mentions"', hidden)
        self.assertNotIn("Hidden rooms", self.ada.get("/users/me/sidebar").text)
        self.put(self.bob, self.all_talk, "mentions")
        self.assertNotIn("Hidden rooms", self.bob.get("/users/me/sidebar").text)
        self.assertIn(self.all_talk, self.sidebar_links(self.bob))

    def test_navigating_form_goes_back_to_the_room(self):
        response = self.put(self.bob, self.all_talk, "everything", headers={"Sec-Fetch-Mode": "navigate"})
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("Location"), "/rooms/%d" % self.all_talk)



class SidebarOrderTests(ChatTestCase):
    """The sidebar is built from the memberships and rooms kept in memory; its order is
    still the one SQLite gives (ORDER BY lower(name), id: ASCII letters folded, text
    compared as UTF-8 bytes), checked against SQLite itself."""

    CACHE = False

    def hide(self, client, room_id):
        response = client.post("/rooms/%d/involvement" % room_id, {"_method": "put", "involvement": "invisible"})
        self.assertEqual(response.status, 200)

    def listed(self, client, section):
        page = client.get("/users/me/sidebar").text
        found = re.search(r'<ul id="%s".*?</ul>' % section, page, re.S)
        return [int(room_id) for room_id in re.findall(r'data-(?:hidden-)?room-id="(\d+)"', found.group(0))] if found else []

    def sqlite_order(self, user_id, hidden=False):
        return [row[0] for row in self.app.db.all(
            "SELECT rooms.id FROM rooms JOIN memberships ON memberships.room_id = rooms.id "
            "WHERE memberships.user_id = ? AND (memberships.involvement = 'invisible') = ? AND rooms.type != ? "
            "ORDER BY lower(rooms.name), rooms.id", (user_id, hidden, campfire.ROOM_DIRECT))]

    def test_shared_and_hidden_rooms_sort_as_sqlite_sorts_them(self):
        rooms = {name: self.create_closed_room(self.ada, name, [self.bob_id])
                 for name in ("beta", "Alpha", "\u00c9mile", "zeta", "alpha", "_under", "Zeta", "\u00e9cole", "10 Ten")}
        self.assertEqual(self.listed(self.bob, "shared_rooms"), self.sqlite_order(self.bob_id))
        self.hide(self.bob, rooms["Zeta"])
        self.hide(self.bob, rooms["alpha"])
        self.assertEqual(self.listed(self.bob, "shared_rooms"), self.sqlite_order(self.bob_id))
        self.assertEqual(self.listed(self.bob, "hidden_rooms"), self.sqlite_order(self.bob_id, hidden=True))
        self.assertEqual(self.listed(self.bob, "hidden_rooms"), [rooms["alpha"], rooms["Zeta"]])
        self.ada.post("/rooms/closeds/%d" % rooms["zeta"], {"_method": "patch", "room[name]": "Aardvark",
                                                             "user_ids[]": [str(self.bob_id)]})
        listed = self.listed(self.bob, "shared_rooms")
        self.assertLess(listed.index(rooms["zeta"]), listed.index(rooms["Alpha"]))  # "aardvark" < "alpha"
        self.assertEqual(self.listed(self.bob, "shared_rooms"), self.sqlite_order(self.bob_id))

    def test_a_room_entry_kept_drawn_is_the_one_drawn_afresh_escaped_and_marked(self):
        rooms = [self.app.store.room(self.create_closed_room(self.ada, name, [self.bob_id]))
                 for name in ("<b>bold</b>", "Tom & Jerry")]
        shared = [(room, room.name) for room in rooms]
        campfire._sidebar_room.cache_clear()
        cold = campfire.render_sidebar(shared, [], {rooms[1].id}, rooms[0].id)
        warm = campfire.render_sidebar(shared, [], {rooms[1].id}, rooms[0].id)
        self.assertEqual(warm, cold)
        self.assertEqual(campfire._sidebar_room.cache_info().hits, 2)
        self.assertIn("&lt;b&gt;bold&lt;/b&gt;", cold)
        self.assertNotIn("<b>bold", cold)
        self.assertIn('class="sidebar__room sidebar__room--unread" href="/rooms/%d"' % rooms[1].id, cold)
        self.assertIn('class="sidebar__room sidebar__room--current" href="/rooms/%d" data-room-id="%d" '
                      'aria-current="page"' % (rooms[0].id, rooms[0].id), cold)
        plain = campfire.render_sidebar(shared, [], set(), None)  # read, and elsewhere: drawn so
        self.assertNotIn("sidebar__room--", plain)
        self.assertNotIn("aria-current", plain)
        # markup given as a title is not mistaken for the same text given plain
        self.assertNotEqual(campfire._sidebar_room(1, campfire.HTML("<i>x</i>"), False, False),
                            campfire._sidebar_room(1, "<i>x</i>", False, False))

    def test_direct_rooms_most_recently_active_first(self):
        with_bob = self.create_direct_room(self.ada, [self.bob_id])
        with_carol = self.create_direct_room(self.ada, [self.carol_id])
        with_dave = self.create_direct_room(self.ada, [self.dave_id])
        self.post_id(self.ada, with_carol, "latest news")
        self.assertEqual(self.listed(self.ada, "direct_rooms")[0], with_carol)
        self.post_id(self.ada, with_bob, "even later")
        self.assertEqual(self.listed(self.ada, "direct_rooms")[:2], [with_bob, with_carol])
        self.assertEqual(sorted(self.listed(self.ada, "direct_rooms")), sorted([with_bob, with_carol, with_dave]))


class MembershipMemoryTests(ChatTestCase):
    """Every person's memberships are kept in memory once they are read (the sidebar,
    the room list, what they may see): a thousand people in two hundred rooms is
    200,000 of them, so what each one costs is bounded."""

    PEOPLE, ROOMS = 40, 50
    MAX_BYTES_EACH = 100

    def test_each_kept_membership_costs_under_a_hundred_bytes(self):
        store = self.app.store
        stamp = campfire.utc_now_text()
        with self.app.db.atomic():
            people = [self.app.db.execute(
                "INSERT INTO users (name, email_address, role, status, created_at, updated_at) "
                "VALUES (?, ?, 0, 0, ?, ?)", ("Person %d" % n, "p%d@example.com" % n, stamp, stamp)).lastrowid
                for n in range(self.PEOPLE)]
        for n in range(self.ROOMS):
            store.create_room("Room %d" % n, campfire.ROOM_CLOSED, self.ada_id, [self.ada_id, *people])
        for user_id in people:  # read once, so the rooms themselves are kept before counting
            store.user_rooms(user_id)
        store.bump_users(people)
        gc.collect()
        tracemalloc.start()
        try:
            for user_id in people:
                self.assertEqual(len(store._membership_rooms(user_id)), self.ROOMS)
            gc.collect()
            kept, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        memberships = self.PEOPLE * self.ROOMS
        self.assertLess(kept / memberships, self.MAX_BYTES_EACH, "%d bytes for %d memberships" % (kept, memberships))


class ParamsFromAnywhereTests(ChatTestCase):
    """Campfire's buttons put parameters in the URL and Rails reads the query
    string, a form and a JSON body alike: so does every handler here."""

    def test_the_bell_button_puts_the_involvement_in_the_query_string(self):
        # Campfire's button_to_change_involvement: POST …/involvement?involvement=… with _method=put.
        response = self.bob.post("/rooms/%d/involvement?involvement=everything" % self.all_talk, {"_method": "put"})
        self.assertEqual(response.status, 200, response.text[:300])
        self.assertEqual(self.app.store.membership(self.all_talk, self.bob_id)["involvement"], "everything")

    def test_a_direct_room_from_user_ids_in_the_query_string(self):
        response = self.ada.post("/rooms/directs?user_ids[]=%d" % self.bob_id, {})
        self.assertEqual(response.status, 303, response.text[:300])
        room = int(response.header("Location").rsplit("/", 1)[1])
        self.assertEqual(self.member_ids(room), {self.ada_id, self.bob_id})

    def test_json_bodies_are_read_as_rails_reads_them(self):
        response = self.bob.request("PUT", "/rooms/%d/involvement" % self.all_talk,
                                    body=json.dumps({"involvement": "nothing"}).encode(), content_type="application/json")
        self.assertEqual(response.status, 200, response.text[:300])
        self.assertEqual(self.app.store.membership(self.all_talk, self.bob_id)["involvement"], "nothing")
        response = self.carol.request("POST", "/rooms/directs", body=json.dumps({"user_ids": [self.dave_id]}).encode(),
                                      content_type="application/json")
        self.assertEqual(response.status, 303, response.text[:300])
        room = int(response.header("Location").rsplit("/", 1)[1])
        self.assertEqual(self.member_ids(room), {self.carol_id, self.dave_id})

    def test_a_json_body_that_cannot_be_read_is_400(self):
        for body in (b'{"involvement": ', b'{"a":' * 40 + b"1" + b"}" * 40):
            with self.subTest(body=body[:20]):
                response = self.bob.request("PUT", "/rooms/%d/involvement" % self.all_talk, body=body,
                                            content_type="application/json")
                self.assertEqual(response.status, 400)
        self.assertEqual(self.app.store.membership(self.all_talk, self.bob_id)["involvement"], "mentions")


if __name__ == "__main__":
    unittest.main()
