"""Bots: the administrators' pages, the bot API with its
key in the path, and webhooks with their replies, in-process and over real
sockets (a receiver on 127.0.0.1 plays the bot)."""

import asyncio
import base64
import http.server
import io
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser

from tests.helpers import Client, LiveServer, campfire, first_run_cookie, wait_until
from tests.test_rooms import ChatTestCase

KEY_RE = re.compile(r"\A([0-9]+)-[A-Za-z0-9]{12}\Z")
ISO_MS_RE = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


class _Controls(HTMLParser):
    """Inputs by their label's text, and links by aria-label or text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.labels, self.inputs, self.links = {}, {}, {}
        self._label_for = self._link = None
        self._text = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "label":
            self._label_for, self._text = attributes.get("for"), []
        elif tag in ("input", "textarea"):
            self.inputs[attributes.get("id")] = attributes
        elif tag == "a":
            self._link, self._text = attributes, []

    def handle_data(self, data):
        self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "label" and self._label_for:
            self.labels["".join(self._text).strip()] = self._label_for
            self._label_for = None
        elif tag == "a" and self._link is not None:
            name = self._link.get("aria-label") or "".join(self._text).strip()
            self.links[name] = self._link.get("href")
            self._link = None

    def textbox(self, label):
        return self.inputs.get(self.labels.get(label))


def controls(html):
    parser = _Controls()
    parser.feed(html)
    return parser


class BotTestCase(ChatTestCase):
    """ChatTestCase's people and rooms, plus helpers for bots."""

    def make_bot(self, name="Helper", webhook_url=""):
        response = self.ada.post("/account/bots", {"user[name]": name, "user[webhook_url]": webhook_url})
        self.assertEqual(response.status, 303, response.text[:500])
        row = self.app.db.one("SELECT id, bot_token FROM users WHERE role = 2 ORDER BY id DESC LIMIT 1")
        return row["id"], "%d-%s" % (row["id"], row["bot_token"])

    def api(self, method, path, body=b"", content_type="text/plain", headers=None):
        """A bot's request: no cookie, no Fetch Metadata, the raw body."""
        all_headers = {"host": "localhost", "user-agent": "curl/8.5.0", "accept": "*/*"}
        if content_type:
            all_headers["content-type"] = content_type
        if body:
            all_headers["content-length"] = str(len(body))
        all_headers.update({key.lower(): value for key, value in (headers or {}).items()})
        body = body.encode() if isinstance(body, str) else body
        response = self.app.handle(campfire.Request(method, path, "HTTP/1.1", all_headers, body))
        if not isinstance(response, campfire.Response):  # a handler that awaits (an upload's disk writes)
            response = asyncio.run(response)
        return response

    def bot_messages(self, bot_id, room_id):
        return [row[0] for row in self.app.db.all(
            "SELECT action_text_rich_texts.body FROM messages JOIN action_text_rich_texts ON record_id = messages.id "
            "AND record_type = 'Message' WHERE creator_id = ? AND room_id = ? ORDER BY messages.id",
            (bot_id, room_id))]


# Administrators manage bots ------------------------------------------------------------

class BotAdminTests(BotTestCase):
    def test_access_matrix_administrator_ok_member_403_signed_out_sign_in(self):
        bot_id, _ = self.make_bot()
        routes = [("GET", "/account/bots", None), ("GET", "/account/bots/new", None),
                  ("GET", "/account/bots/%d/edit" % bot_id, None), ("GET", "/account/bots/%d" % bot_id, None),
                  ("POST", "/account/bots", {"user[name]": "Another"}),
                  ("POST", "/account/bots/%d" % bot_id, {"_method": "patch", "user[name]": "Renamed"}),
                  ("POST", "/account/bots/%d/key" % bot_id, {"_method": "put"}),
                  ("POST", "/account/bots/%d" % bot_id, {"_method": "delete"})]
        signed_out = Client(self.app)
        for method, path, form in routes:
            with self.subTest(method=method, path=path, form=form):
                member = self.bob.request(method, path, form=form)
                self.assertEqual(member.status, 403)
                nobody = signed_out.request(method, path, form=form)
                self.assertEqual(nobody.status, 302)
                self.assertEqual(nobody.header("Location"), "/session/new")
        for method, path, form in routes:  # last, as the final route deletes the bot
            with self.subTest(administrator=path, form=form):
                self.assertIn(self.ada.request(method, path, form=form).status, (200, 302, 303))
        self.assertEqual(self.app.db.value("SELECT status FROM users WHERE id = ?", (bot_id,)), 1)

    def test_new_bot_form_has_the_name_placeholder_and_an_optional_webhook_field(self):
        page = self.ada.get("/account/bots/new")
        self.assertEqual(page.status, 200)
        found = controls(page.text)
        name = found.textbox("Name the bot")
        self.assertEqual((name["name"], name["placeholder"]), ("user[name]", "Name the bot"))
        webhook = found.textbox("Webhook URL (optional)")
        self.assertEqual(webhook["name"], "user[webhook_url]")
        self.assertNotIn("required", webhook)

    def test_create_bot_adds_a_bot_user_to_every_open_room_with_its_webhook(self):
        bot_id, key = self.make_bot("Helper", "https://bots.example.com/hook?x=1")
        self.assertRegex(key, KEY_RE)
        row = self.app.db.one("SELECT * FROM users WHERE id = ?", (bot_id,))
        self.assertEqual((row["role"], row["status"], row["email_address"], row["password_digest"]), (2, 0, None, None))
        self.assertRegex(row["bot_token"], r"\A[A-Za-z0-9]{12}\Z")
        self.assertIn(bot_id, self.member_ids(self.all_talk))
        self.assertNotIn(bot_id, self.member_ids(self.closed))
        self.assertEqual(self.app.db.all("SELECT url FROM webhooks WHERE user_id = ?", (bot_id,))[0][0],
                         "https://bots.example.com/hook?x=1")
        later = self.ada.post("/rooms/opens", {"room[name]": "Later"})
        later_id = int(later.header("Location").rsplit("/", 1)[1])
        self.assertIn(bot_id, self.member_ids(later_id))

    def test_bot_keys_are_id_dash_twelve_letters_or_digits_and_differ(self):
        keys = [self.make_bot("Bot %d" % n)[1] for n in range(5)]
        for key in keys:
            self.assertRegex(key, KEY_RE)
        self.assertEqual(len({key.split("-")[1] for key in keys}), 5)

    def test_bot_without_a_webhook_has_no_webhooks_row(self):
        bot_id, _ = self.make_bot("Quiet")
        self.assertEqual(self.app.db.value("SELECT count(*) FROM webhooks WHERE user_id = ?", (bot_id,)), 0)

    def test_invalid_webhook_url_shows_the_form_again_with_the_error_by_the_field(self):
        for url in ("ftp://example.com/hook", "http://", "example.com/hook", "javascript:alert(1)",
                    "http://exa mple.com/", "https://example.com/" + "a" * 2100, "http://example.com:99999/"):
            with self.subTest(url=url[:40]):
                response = self.ada.post("/account/bots", {"user[name]": "Broken", "user[webhook_url]": url})
                self.assertEqual(response.status, 422)
                found = controls(response.text)
                self.assertEqual(found.textbox("Webhook URL (optional)").get("aria-invalid"), "true")
                self.assertIn('id="user_webhook_url_error"', response.text)
                self.assertEqual(found.textbox("Name the bot")["value"], "Broken")
        self.assertEqual(self.app.db.value("SELECT count(*) FROM users WHERE role = 2"), 0)

    def test_blank_name_is_422(self):
        response = self.ada.post("/account/bots", {"user[name]": "  ", "user[webhook_url]": ""})
        self.assertEqual(response.status, 422)
        self.assertIn('id="user_name_error"', response.text)

    def test_bots_page_lists_each_bot_with_its_curl_command_for_the_current_room(self):
        bot_id, key = self.make_bot("Helper", "http://127.0.0.1:9/hook")
        other = self.ada.post("/rooms/opens", {"room[name]": "Deploys"})
        deploys = int(other.header("Location").rsplit("/", 1)[1])
        self.ada.get("/rooms/%d" % deploys)  # sets the last_room cookie
        page = self.ada.get("/account/bots")
        self.assertEqual(page.status, 200)
        found = controls(page.text)
        curl = found.textbox("curl command for posting messages")
        self.assertIn("readonly", curl)
        self.assertEqual(curl["value"], "curl -d 'Hello!' http://localhost/rooms/%d/%s/messages" % (deploys, key))
        self.assertEqual(curl["value"].split()[-1], "http://localhost/rooms/%d/%s/messages" % (deploys, key))
        self.assertEqual(found.links["Edit Helper"], "/account/bots/%d/edit" % bot_id)
        self.assertEqual(found.links["New bot"], "/account/bots/new")
        self.assertIn("http://127.0.0.1:9/hook", page.text)
        # The bot icon, drawn in the page (a data: URL: no request).
        self.assertIn('<img class="avatar" src="data:image/svg+xml,', page.text)
        self.assertIn('src="%s"' % campfire.avatar_source(self.app.store.user(bot_id), None), page.text)

    def test_curl_command_uses_the_bots_first_room_when_the_last_room_is_not_its(self):
        _, key = self.make_bot("Helper")
        self.ada.get("/rooms/%d" % self.closed)  # the bot isn't in the closed room
        curl = controls(self.ada.get("/account/bots").text).textbox("curl command for posting messages")
        self.assertTrue(curl["value"].endswith("/rooms/%d/%s/messages" % (self.all_talk, key)))

    def test_edit_renames_and_changes_or_clears_the_webhook(self):
        bot_id, key = self.make_bot("Helper", "http://hooks.example.com/a")
        edit = self.ada.get("/account/bots/%d/edit" % bot_id)
        self.assertEqual(controls(edit.text).textbox("Name the bot")["value"], "Helper")
        update = self.ada.post("/account/bots/%d" % bot_id, {"_method": "patch", "user[name]": "Butler",
                                                             "user[webhook_url]": "https://hooks.example.com/b"})
        self.assertEqual(update.status, 303)
        self.assertEqual(self.app.store.user(bot_id).name, "Butler")
        self.assertEqual(self.app.db.value("SELECT url FROM webhooks WHERE user_id = ?", (bot_id,)),
                         "https://hooks.example.com/b")
        self.ada.post("/account/bots/%d" % bot_id, {"_method": "patch", "user[name]": "Butler"})
        self.assertEqual(self.app.db.value("SELECT count(*) FROM webhooks WHERE user_id = ?", (bot_id,)), 1,
                         "a form without the field keeps the webhook")
        self.ada.post("/account/bots/%d" % bot_id, {"_method": "patch", "user[name]": "Butler",
                                                    "user[webhook_url]": ""})
        self.assertEqual(self.app.db.value("SELECT count(*) FROM webhooks WHERE user_id = ?", (bot_id,)), 0)
        bad = self.ada.post("/account/bots/%d" % bot_id, {"_method": "patch", "user[name]": "Butler",
                                                          "user[webhook_url]": "gopher://x"})
        self.assertEqual(bad.status, 422)
        self.assertEqual(self.api("GET", "/rooms/1/%s/messages" % key).status, 200, "editing keeps the key")

    def test_new_key_works_and_the_old_one_stops(self):
        bot_id, old = self.make_bot()
        self.assertEqual(self.api("POST", "/rooms/1/%s/messages" % old, "before").status, 201)
        response = self.ada.post("/account/bots/%d/key" % bot_id, {"_method": "put"})
        self.assertEqual(response.status, 303)
        new = "%d-%s" % (bot_id, self.app.db.value("SELECT bot_token FROM users WHERE id = ?", (bot_id,)))
        self.assertNotEqual(old, new)
        self.assertRegex(new, KEY_RE)
        self.assertEqual(self.api("POST", "/rooms/1/%s/messages" % old, "old").status, 302)
        self.assertEqual(self.api("POST", "/rooms/1/%s/messages" % new, "new").status, 201)

    def test_a_new_key_by_patch_too_as_rails_routes_an_update(self):
        # config/routes.rb's `resource :key, only: :update` answers PATCH and PUT.
        bot_id, old = self.make_bot()
        for method in ("PATCH", "PUT"):
            with self.subTest(method=method):
                before = self.app.db.value("SELECT bot_token FROM users WHERE id = ?", (bot_id,))
                response = self.ada.post("/account/bots/%d/key" % bot_id, {"_method": method.lower()})
                self.assertEqual((response.status, response.header("Location")), (303, "/account/bots"))
                self.assertNotEqual(self.app.db.value("SELECT bot_token FROM users WHERE id = ?", (bot_id,)), before)
                self.assertEqual(self.ada.request(method, "/account/bots/%d/key" % bot_id).status, 303)

    def test_delete_deactivates_the_bot_clears_its_key_and_webhook(self):
        bot_id, key = self.make_bot("Helper", "http://hooks.example.com/a")
        response = self.ada.post("/account/bots/%d" % bot_id, {"_method": "delete"})
        self.assertEqual(response.status, 303)
        row = self.app.db.one("SELECT status, bot_token FROM users WHERE id = ?", (bot_id,))
        self.assertEqual((row["status"], row["bot_token"]), (1, None))
        self.assertEqual(self.app.db.value("SELECT count(*) FROM webhooks WHERE user_id = ?", (bot_id,)), 0)
        self.assertNotIn(bot_id, self.member_ids(self.all_talk))
        response = self.api("GET", "/rooms/1/%s/messages" % key)
        self.assertEqual((response.status, response.header("Location")), (302, "/session/new"))
        self.assertNotIn("Helper", self.ada.get("/account/bots").text)
        self.assertEqual(self.ada.get("/account/bots/%d/edit" % bot_id).status, 404)

    def test_members_and_missing_bots_are_not_bots(self):
        self.assertEqual(self.ada.get("/account/bots/%d/edit" % self.bob_id).status, 404)
        self.assertEqual(self.ada.post("/account/bots/999/key", {"_method": "put"}).status, 404)

    def test_a_bot_never_signs_in_and_its_session_cookie_is_ignored(self):
        bot_id, _ = self.make_bot()
        token = self.app.store.create_session(bot_id, "127.0.0.1", "test")
        page = self.app.handle(campfire.Request("GET", "/rooms/1", "HTTP/1.1",
                                                {"host": "localhost", "cookie": "session_token=" + token}))
        self.assertEqual((page.status, page.header("Location")), (302, "/session/new"))


# The bot API ---------------------------------------------------------------------------

class BotApiTests(BotTestCase):
    def setUp(self):
        super().setUp()
        self.bot_id, self.key = self.make_bot("Helper")
        self.base = "/rooms/%d/%s/messages" % (self.all_talk, self.key)

    def test_routes_with_a_key_and_member_routes_never_collide(self):
        router = self.app.router
        cases = [("GET", "/rooms/5/2-AbCd1234EfGh/messages", "bot_messages"),
                 ("POST", "/rooms/5/2-AbCd1234EfGh/messages", "bot_create_message"),
                 ("PATCH", "/rooms/5/2-AbCd1234EfGh/messages/9", "bot_update_message"),
                 ("PUT", "/rooms/5/2-AbCd1234EfGh/messages/9", "bot_update_message"),
                 ("DELETE", "/rooms/5/2-AbCd1234EfGh/messages/9", "bot_delete_message"),
                 ("POST", "/rooms/5/2-AbCd1234EfGh/messages/9/boosts", "bot_create_boost"),
                 ("DELETE", "/rooms/5/2-AbCd1234EfGh/messages/9/boosts/3", "bot_delete_boost"),
                 ("GET", "/rooms/5/messages", "message_page"), ("POST", "/rooms/5/messages", "create_message"),
                 ("GET", "/rooms/5/messages/9", "show_message"), ("PATCH", "/rooms/5/messages/9", "update_message"),
                 ("DELETE", "/rooms/5/messages/9", "delete_message"),
                 ("GET", "/rooms/5/messages/9/edit", "edit_message"), ("GET", "/rooms/5/@9", "permalink"),
                 ("GET", "/rooms/5/refresh", "refresh_room")]
        for method, path, name in cases:
            with self.subTest(method=method, path=path):
                found = router.match(method, path)
                self.assertIsNotNone(found)
                self.assertEqual(found[0].handler.__name__, name)
        self.assertEqual(router.match("GET", "/rooms/5/2-AbCd1234EfGh/messages")[1],
                         {"room_id": 5, "bot_key": "2-AbCd1234EfGh"})

    def test_a_curl_form_body_is_the_message_even_when_it_looks_like_a_form(self):
        for text in ("_method=delete&x=1", "a&" * 1500 + "b"):
            with self.subTest(text=text[:20]):
                response = self.api("POST", self.base, text, content_type="application/x-www-form-urlencoded")
                self.assertEqual(response.status, 201)
                message_id = int(response.header("Location").rsplit("/", 1)[1])
                self.assertEqual(self.app.store.message(message_id)["body"], campfire.sanitize_html(text, link=True))

    def test_messages_are_json_oldest_first_with_total_count_and_a_link_to_older(self):
        bob_ids = [self.post_id(self.bob, 1, "<div>Message <b>%d</b></div>" % n) for n in range(44)]
        self.api("POST", self.base, "from the bot")
        response = self.api("GET", self.base)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.content_type, "application/json; charset=utf-8")  # Rails' render json
        messages = json.loads(response.body)
        self.assertEqual(len(messages), 40)
        self.assertEqual([m["id"] for m in messages[:-1]], bob_ids[5:])
        self.assertEqual(response.header("X-Total-Count"), "45")
        self.assertEqual(response.header("Link"),
                         '<http://localhost%s?before=%d>; rel="next"' % (self.base, bob_ids[5]))
        first, last = messages[0], messages[-1]
        self.assertEqual(list(first), ["id", "created_at", "body", "creator", "room", "url"])
        self.assertRegex(first["created_at"], ISO_MS_RE)
        self.assertEqual(first["body"], {"plain_text": "Message 5", "html": "<div>Message <b>5</b></div>"})
        self.assertEqual(first["creator"], {"id": self.bob_id, "name": "Bob Builder", "role": "member",
                                            "avatar_url": "http://localhost/users/%d/avatar" % self.bob_id})
        self.assertEqual(first["room"], {"id": 1})
        self.assertEqual(first["url"], "http://localhost/rooms/1/messages/%d" % bob_ids[5])  # room_message_url
        self.assertEqual(self.bob.get("/rooms/1/messages/%d" % bob_ids[5]).status, 200)
        self.assertEqual(last["creator"]["role"], "bot")
        self.assertEqual(last["body"]["plain_text"], "from the bot")
        stored = self.app.db.value("SELECT created_at FROM messages WHERE id = ?", (first["id"],))
        self.assertEqual(first["created_at"], stored[:10] + "T" + stored[11:23] + "Z")
        admin = json.loads(self.api("GET", self.base + "?before=%d" % bob_ids[3]).body)
        self.assertEqual([m["id"] for m in admin], bob_ids[:3])

    def test_following_the_link_pages_back_and_the_last_page_has_none(self):
        ids = [self.post_id(self.bob, 1, "m%d" % n) for n in range(45)]
        first = self.api("GET", self.base)
        link = re.match(r'<http://localhost([^>]+)>; rel="next"\Z', first.header("Link"))[1]
        older = self.api("GET", link)
        self.assertEqual([m["id"] for m in json.loads(older.body)], ids[:5])
        self.assertIsNone(older.header("Link"))
        after = self.api("GET", self.base + "?after=%d" % ids[40])
        self.assertEqual([m["id"] for m in json.loads(after.body)], ids[41:])
        self.assertIsNone(after.header("Link"))
        self.assertEqual(self.api("GET", self.base + "?after=%d" % ids[-1]).body, b"[]")

    def test_an_after_page_links_to_the_next_newer_page(self):
        # by_bots_controller.rb#next_page_params: ?after= pages walk forward, ?before= pages back.
        ids = [self.post_id(self.bob, 1, "m%d" % n) for n in range(90)]
        pages, link = [], "%s?after=%d" % (self.base, ids[0])
        while link is not None:
            response = self.api("GET", link)
            self.assertEqual(response.status, 200)
            pages.append([m["id"] for m in json.loads(response.body)])
            header = response.header("Link")
            link = re.fullmatch(r'<http://localhost([^>]+)>; rel="next"', header)[1] if header else None
            if link:
                self.assertEqual(link, "%s?after=%d" % (self.base, pages[-1][-1]))
        self.assertEqual(pages, [ids[1:41], ids[41:81], ids[81:]])
        back = self.api("GET", "%s?before=%d" % (self.base, ids[-1]))
        self.assertEqual(back.header("Link"), '<http://localhost%s?before=%d>; rel="next"' % (self.base, ids[49]))

    def test_a_page_next_to_a_message_not_in_the_room_is_rails_json_404(self):
        # `@room.messages.find(params[:before])` raises RecordNotFound: Rails' JSON 404.
        secret = self.post_id(self.carol, self.closed, "secret")
        for query in ("before=abc", "after=%d" % secret, "before=999999", "after=1" + "0" * 30):
            with self.subTest(query=query):
                response = self.api("GET", self.base + "?" + query)
                self.assertEqual(response.status, 404)
                self.assertEqual(response.content_type, "application/json; charset=utf-8")
                self.assertEqual(json.loads(response.body), {"status": 404, "error": "Not Found"})

    def test_empty_room_is_an_empty_array(self):
        response = self.api("GET", self.base)
        self.assertEqual((response.status, response.body, response.header("X-Total-Count")), (200, b"[]", "0"))
        self.assertIsNone(response.header("Link"))

    def test_post_raw_text_is_201_with_an_empty_body_and_the_location(self):
        response = self.api("POST", self.base, "Hello <b>world</b><script>alert(1)</script>!")
        self.assertEqual(response.status, 201)
        self.assertEqual((response.body, response.content_type), (b"", "application/json"))  # Rails' head :created
        message_id = int(re.fullmatch(r"http://localhost/messages/(\d+)", response.header("Location"))[1])
        row = self.app.store.message(message_id)
        self.assertEqual((row["creator_id"], row["room_id"]), (self.bot_id, 1))
        self.assertEqual(row["body"], "Hello <b>world</b>!")
        self.assertEqual(self.app.db.value("SELECT body FROM message_search_index WHERE rowid = ?", (message_id,)),
                         "Hello world!")
        self.assertIn('data-message-id="%d"' % message_id, self.bob.get("/rooms/1").text)
        self.assertEqual(self.bob.get("/messages/%d" % message_id).header("Location"), "/rooms/1/@%d" % message_id)
        secret = self.post_id(self.carol, self.closed, "closed room")
        self.assertEqual(self.dave.get("/messages/%d" % secret).status, 404)
        self.assertEqual(self.dave.get("/messages/999").status, 404)

    def test_post_reads_any_content_type_as_utf8_text(self):
        for content_type, body in (("application/x-www-form-urlencoded", "Hello!"),  # curl -d
                                   ("application/json", '{"not": "parsed"}'), (None, "no type"),
                                   ("text/html; charset=utf-8", "<div>Café ☕</div>")):
            with self.subTest(content_type=content_type):
                response = self.api("POST", self.base, body.encode("utf-8"), content_type=content_type)
                self.assertEqual(response.status, 201)
                message_id = int(response.header("Location").rsplit("/", 1)[1])
                self.assertEqual(self.app.store.plain_text(self.app.store.message(message_id)["body"]),
                                 self.app.store.plain_text(body))

    def assert_bare(self, response, status):
        """Campfire's `head status`: nothing in the body."""
        self.assertEqual(response.status, status)
        self.assertEqual((response.body, response.content_type), (b"", "application/json"))

    def test_blank_post_is_a_bare_422(self):
        for body in (b"", b"   ", b"<div> </div>"):
            with self.subTest(body=body):
                self.assert_bare(self.api("POST", self.base, body), 422)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages"), 0)

    def test_multipart_attachment_is_posted_and_a_broken_image_is_a_bare_422(self):
        boundary = "XyZ"
        body = ("--XyZ\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"notes.txt\"\r\n"
                "Content-Type: text/plain\r\n\r\nminutes\r\n--XyZ--\r\n").encode("latin-1")
        response = self.api("POST", self.base, body, content_type="multipart/form-data; boundary=" + boundary)
        self.assertEqual(response.status, 201)
        message_id = int(response.header("Location").rsplit("/", 1)[1])
        self.assertEqual(self.app.store.attachment("Message", message_id, "attachment").filename, "notes.txt")
        body = ("--XyZ\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"cat.png\"\r\n"
                "Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n...\r\n--XyZ--\r\n").encode("latin-1")
        response = self.api("POST", self.base, body, content_type="multipart/form-data; boundary=" + boundary)
        self.assert_bare(response, 422)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages"), 1)

    def test_bad_key_redirects_to_sign_in_the_same_for_existing_and_missing_rooms(self):
        wrong_token = "%d-%s" % (self.bot_id, "A" * 12 if not self.key.endswith("A" * 12) else "B" * 12)
        for key in (wrong_token, "%d-%s" % (self.bob_id, self.key.split("-")[1]), "999-AbCd1234EfGh",
                    "nonsense", "1-short", self.key + "x"):
            for room_id in (1, self.closed, 999):
                for method, suffix in (("GET", ""), ("POST", ""), ("PUT", "/1"), ("DELETE", "/1"),
                                       ("POST", "/1/boosts"), ("DELETE", "/1/boosts/1")):
                    with self.subTest(key=key, room=room_id, method=method, suffix=suffix):
                        response = self.api(method, "/rooms/%d/%s/messages%s" % (room_id, key, suffix), "hi")
                        self.assertEqual(response.status, 302)
                        self.assertEqual(response.header("Location"), "/session/new")
                        self.assertEqual(response.body, b"")
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages"), 0)

    def test_a_room_the_bot_is_not_in_is_a_bare_404(self):
        secret = self.post_id(self.carol, self.closed, "secret")
        for method, suffix in (("GET", ""), ("POST", ""), ("PATCH", "/%d" % secret), ("DELETE", "/%d" % secret),
                               ("POST", "/%d/boosts" % secret)):
            for room_id in (self.closed, 999):
                with self.subTest(method=method, room=room_id):
                    response = self.api(method, "/rooms/%d/%s/messages%s" % (room_id, self.key, suffix), "x")
                    self.assert_bare(response, 404)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages"), 1)

    def test_a_message_of_another_room_is_404(self):
        secret = self.post_id(self.carol, self.closed, "secret")
        for method in ("PATCH", "DELETE", "GET"):  # `@room.messages.find`: Rails' JSON 404
            with self.subTest(method=method):
                response = self.api(method, self.base + "/%d" % secret, "mine now")
                self.assertEqual((response.status, json.loads(response.body)), (404, {"status": 404, "error": "Not Found"}))
        # The boosts controller finds the message with find_by and `head`s the 404.
        self.assert_bare(self.api("POST", self.base + "/%d/boosts" % secret, "👍"), 404)
        self.assert_bare(self.api("DELETE", self.base + "/%d/boosts/1" % secret), 404)
        self.assertEqual(self.app.store.plain_text(self.app.store.message(secret)["body"]), "secret")

    def test_edit_own_message_200_with_json_and_others_403(self):
        own = int(self.api("POST", self.base, "first draft").header("Location").rsplit("/", 1)[1])
        for method in ("PATCH", "PUT"):
            response = self.api(method, self.base + "/%d" % own, "<div>second <em>draft</em></div>")
            self.assertEqual(response.status, 200)
            data = json.loads(response.body)
            self.assertEqual((data["id"], data["body"]["html"], data["body"]["plain_text"]),
                             (own, "<div>second <em>draft</em></div>", "second draft"))
        shown = json.loads(self.api("GET", self.base + "/%d" % own).body)
        self.assertEqual(shown["body"]["plain_text"], "second draft")
        bobs = self.post_id(self.bob, 1, "Bob's words")
        response = self.api("PATCH", self.base + "/%d" % bobs, "hijacked")
        self.assert_bare(response, 403)
        self.assertEqual(response.content_type, "application/json")
        self.assertEqual(self.app.store.plain_text(self.app.store.message(bobs)["body"]), "Bob's words")
        self.assertEqual(self.api("PATCH", self.base + "/%d" % own, "  ").status, 422)

    def test_delete_own_message_204_and_others_403(self):
        own = int(self.api("POST", self.base, "short lived").header("Location").rsplit("/", 1)[1])
        bobs = self.post_id(self.bob, 1, "Bob stays")
        self.assert_bare(self.api("DELETE", self.base + "/%d" % bobs), 403)
        response = self.api("DELETE", self.base + "/%d" % own)
        self.assertEqual((response.status, response.body), (204, b""))
        self.assertIsNone(self.app.store.message(own))
        self.assertIsNotNone(self.app.store.message(bobs))
        self.assertEqual(self.api("DELETE", self.base + "/%d" % own).status, 404)

    def test_boosts_201_with_json_blank_422_delete_own_only(self):
        bobs = self.post_id(self.bob, 1, "boost me")
        response = self.api("POST", self.base + "/%d/boosts" % bobs, "🎉")
        self.assertEqual(response.status, 201)
        self.assertEqual(response.content_type, "application/json; charset=utf-8")
        boost = json.loads(response.body)
        self.assertEqual(list(boost), ["id", "content", "created_at", "booster", "message"])
        self.assertEqual(boost["content"], "🎉")
        self.assertEqual(boost["message"], {"id": bobs, "url": "http://localhost/rooms/1/messages/%d" % bobs})
        self.assertEqual((boost["booster"]["id"], boost["booster"]["role"]), (self.bot_id, "bot"))
        self.assertRegex(boost["created_at"], ISO_MS_RE)
        self.assertEqual(self.app.store.boost(boost["id"])["booster_id"], self.bot_id)
        self.assertEqual(self.api("POST", self.base + "/%d/boosts" % bobs, " ").status, 422)
        self.assertEqual(self.api("POST", self.base + "/%d/boosts" % bobs, "x" * 17).status, 422)
        self.assertEqual(self.api("POST", self.base + "/999/boosts", "👍").status, 404)
        bobs_boost = self.bob.post("/messages/%d/boosts" % bobs, {"boost[content]": "👍"})
        bobs_boost_id = int(re.search(r'id="boost_(\d+)"', bobs_boost.text)[1])
        # Another's boost is not found (boosts_controller.rb: find_by!(id:, booster: Current.user)).
        _, other_key = self.make_bot("Other")
        other_boost = json.loads(self.api("POST", "/rooms/1/%s/messages/%d/boosts" % (other_key, bobs), "👀").body)
        for boost_id in (bobs_boost_id, other_boost["id"], 9999):
            with self.subTest(boost_id=boost_id):
                self.assert_bare(self.api("DELETE", self.base + "/%d/boosts/%d" % (bobs, boost_id)), 404)
        self.assertIsNotNone(self.app.store.boost(other_boost["id"]))
        response = self.api("DELETE", self.base + "/%d/boosts/%d" % (bobs, boost["id"]))
        self.assertEqual(response.status, 204)
        self.assertIsNone(self.app.store.boost(boost["id"]))
        self.assertIsNotNone(self.app.store.boost(bobs_boost_id))

    def test_bot_requests_skip_forgery_checks_and_ignore_cookies(self):
        cross_site = {"origin": "https://elsewhere.example", "sec-fetch-site": "cross-site"}
        self.assertEqual(self.api("POST", self.base, "from anywhere", headers=cross_site).status, 201)
        # A person's cookie opens nothing on a bot route: only the key counts.
        cookie = {"cookie": "session_token=" + self.ada.cookies["session_token"]}
        response = self.api("GET", "/rooms/1/nonsense/messages", headers=cookie)
        self.assertEqual(response.status, 302)
        # ... and people's routes still refuse cross-site writes.
        self.assertEqual(self.ada.post("/rooms/1/messages", {"message[body]": "x"}, headers=cross_site).status, 403)

    def test_a_bot_key_on_a_persons_route_is_403(self):
        # concerns/authentication.rb signs a bot in by params[:bot_key] anywhere; deny_bots then
        # answers `head :forbidden` on every route but the bot API.
        form, json_type = "application/x-www-form-urlencoded", "application/json"
        cases = [("GET", "/rooms/1/messages?bot_key=%s" % self.key, "", None),
                 ("GET", "/rooms/1?bot_key=%s" % self.key, "", None),
                 ("GET", "/account/bots?bot_key=%s" % self.key, "", None),
                 ("GET", "/?bot_key=%s" % self.key, "", None),
                 ("POST", "/rooms/1/messages?bot_key=%s" % self.key, "message[body]=hi", form),
                 ("POST", "/rooms/1/messages", "message[body]=hi&bot_key=%s" % self.key, form),
                 ("POST", "/rooms/1/messages", json.dumps({"bot_key": self.key, "message": {"body": "hi"}}), json_type)]
        for method, path, body, content_type in cases:
            with self.subTest(method=method, path=path, body=body):
                response = self.api(method, path, body, content_type=content_type)
                self.assertEqual((response.status, response.body), (403, b""))
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages"), 0)

    def test_a_bad_bot_key_on_a_persons_route_still_goes_to_sign_in(self):
        for key in ("", "nonsense", "%d-AAAAAAAAAAAA" % self.bot_id, "%d-%s" % (self.bob_id, self.key.split("-")[1])):
            with self.subTest(key=key):
                response = self.api("GET", "/rooms/1/messages?bot_key=" + key)
                self.assertEqual((response.status, response.header("Location")), (302, "/session/new"))

    def test_a_persons_session_comes_before_a_bot_key_in_the_parameters(self):
        # restore_authentication runs first: the person is signed in and the key is just a parameter.
        response = self.bob.get("/rooms/1/messages?bot_key=%s" % self.key)
        self.assertEqual(response.status, 204)

    def test_deactivated_bots_key_is_refused(self):
        self.ada.post("/account/bots/%d" % self.bot_id, {"_method": "delete"})
        for method in ("GET", "POST"):
            self.assertEqual(self.api(method, self.base, "still here?").status, 302)

    def test_requests_are_rate_limited_per_key_with_a_bare_429(self):
        self.app.bot_api_limiter = campfire.RateLimiter(3, 60.0)
        statuses = [self.api("GET", self.base).status for _ in range(4)]
        self.assertEqual(statuses, [200, 200, 200, 429])
        response = self.api("POST", self.base, "one more")
        self.assert_bare(response, 429)
        self.assertEqual(response.header("Retry-After"), "60")
        _, other = self.make_bot("Other")
        self.assertEqual(self.api("GET", "/rooms/1/%s/messages" % other).status, 200)

    def test_the_request_log_never_shows_the_key(self):
        request_log = getattr(self.app, "request_log", None)
        if request_log is not None:  # the batched request log writes to a stream
            request_log.stream, request_log.enabled, request_log.schedule = io.StringIO(), True, None
            self.api("POST", self.base, "logged?")
            output = request_log.stream.getvalue()
        else:
            with self.assertLogs("campfire", level="INFO") as logs:
                self.api("POST", self.base, "logged?")
            output = "\n".join(logs.output)
        self.assertIn("/rooms/1/[FILTERED]/messages 201", output)
        self.assertNotIn(self.key, output)

    def test_iso_time_ms(self):
        self.assertEqual(campfire.iso_time_ms("2025-01-02 03:04:05.678901"), "2025-01-02T03:04:05.678Z")
        self.assertEqual(campfire.iso_time_ms("2025-01-02 03:04:05"), "2025-01-02T03:04:05.000Z")
        self.assertEqual(campfire.iso_time_ms("2025-01-02 03:04:05.5"), "2025-01-02T03:04:05.500Z")


# Webhooks --------------------------------------------------------------------------------

class Receiver:
    """A bot's webhook on 127.0.0.1: records each request, answers with respond(handler, receiver)."""

    def __init__(self, respond, tls=None):
        self.requests = []
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append((self.command, self.path, dict(self.headers), body))
                try:
                    respond(self, receiver)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = "%s://127.0.0.1:%d/hooks/helper?token=abc" % ("https" if tls else "http",
                                                                 self.server.server_address[1])

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def answer(status=200, content_type="text/plain", body=b"", headers=()):
    def respond(handler, receiver):
        handler.send_response(status)
        if content_type:
            handler.send_header("Content-Type", content_type)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return respond


def hang(seconds=10):
    def respond(handler, receiver):
        receiver.release.wait(seconds)
        answer(200, "text/plain", b"too late")(handler, receiver)
    return respond


def huge(total, length_header=True):
    def respond(handler, receiver):
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        if length_header:
            handler.send_header("Content-Length", str(total))
        else:
            handler.send_header("Connection", "close")
        handler.end_headers()
        chunk = b"x" * 65536
        for _ in range(total // len(chunk)):
            handler.wfile.write(chunk)
        handler.close_connection = True
    return respond


def ordered(data):
    """A parsed JSON value with every object as a list of (key, value): key order kept."""
    return json.loads(data, object_pairs_hook=list)


PNG_1x1 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


class WebhookTests(BotTestCase):
    def receiver(self, respond):
        receiver = Receiver(respond)
        self.addCleanup(receiver.close)
        return receiver

    def deliver(self):
        self.app.webhooks.run_pending()

    def test_a_mention_sends_campfires_payload_and_a_text_reply_is_posted_as_the_bot(self):
        receiver = self.receiver(answer(200, "text/plain; charset=utf-8", "Hi <b>Bob</b> 👋".encode()))
        bot_id, key = self.make_bot("Helper", receiver.url)
        message_id = self.post_id(self.bob, 1, "<div>Hey @Helper, deploy please</div>")
        stored = self.app.store.message(message_id)["body"]
        self.assertIn("application/vnd.campfire.mention", stored)
        self.assertEqual(len(self.app.webhooks.pending), 1)
        self.deliver()
        self.assertEqual(len(receiver.requests), 1)
        method, path, headers, body = receiver.requests[0]
        self.assertEqual((method, path), ("POST", "/hooks/helper?token=abc"))
        self.assertEqual(headers["Content-Type"], "application/json")
        expected = {"user": {"id": self.bob_id, "name": "Bob Builder"},
                    "room": {"id": 1, "name": "All Talk", "path": "/rooms/1/%s/messages" % key},
                    "message": {"id": message_id, "body": {"html": stored, "plain": "Hey , deploy please"},
                                "path": "/rooms/1/@%d" % message_id}}
        self.assertEqual(json.loads(body), expected)
        self.assertEqual(ordered(body), [
            ("user", [("id", self.bob_id), ("name", "Bob Builder")]),
            ("room", [("id", 1), ("name", "All Talk"), ("path", "/rooms/1/%s/messages" % key)]),
            ("message", [("id", message_id), ("body", [("html", stored), ("plain", "Hey , deploy please")]),
                         ("path", "/rooms/1/@%d" % message_id)])])
        self.assertEqual(self.bot_messages(bot_id, 1), ["Hi <b>Bob</b> 👋"])
        self.assertEqual(len(self.app.webhooks.pending), 0, "the reply triggers nothing")
        self.assertIn("Hi <b>Bob</b> 👋", self.bob.get("/rooms/1").text)

    def test_the_payload_path_is_a_working_bot_api_address(self):
        receiver = self.receiver(answer(204, None))
        bot_id, _ = self.make_bot("Helper", receiver.url)
        self.post_id(self.bob, 1, "@Helper status?")
        self.deliver()
        payload = json.loads(receiver.requests[0][3])
        self.assertEqual(self.api("POST", payload["room"]["path"], "all good").status, 201)
        self.assertEqual(self.bot_messages(bot_id, 1), ["all good"])

    def test_html_replies_are_posted_sanitized(self):
        receiver = self.receiver(answer(200, "text/html", b"<div>ok <script>x()</script><em>done</em></div>"))
        bot_id, _ = self.make_bot("Helper", receiver.url)
        self.post_id(self.bob, 1, "@Helper go")
        self.deliver()
        self.assertEqual(self.bot_messages(bot_id, 1), ["<div>ok <em>done</em></div>"])

    def test_every_message_in_a_direct_room_reaches_its_bots_without_a_mention(self):
        receiver = self.receiver(answer(200, "text/plain", b"pong"))
        bot_id, _ = self.make_bot("Helper", receiver.url)
        direct = self.create_direct_room(self.bob, [bot_id])
        self.post_id(self.bob, direct, "ping")
        self.deliver()
        self.assertEqual(json.loads(receiver.requests[0][3])["room"]["name"], None)
        self.assertEqual(json.loads(receiver.requests[0][3])["message"]["body"]["plain"], "ping")
        self.assertEqual(self.bot_messages(bot_id, direct), ["pong"])

    def test_bots_not_mentioned_in_a_shared_room_hear_nothing(self):
        receiver = self.receiver(answer(200, "text/plain", b"pong"))
        self.make_bot("Helper", receiver.url)
        self.post_id(self.bob, 1, "Helper is not mentioned, just named")
        self.post_id(self.bob, 1, "<div>@Someone else</div>")
        self.assertEqual(len(self.app.webhooks.pending), 0)

    def test_only_mentioned_bots_with_webhooks_are_called_once_each(self):
        first, second = self.receiver(answer(204, None)), self.receiver(answer(204, None))
        self.make_bot("Alpha", first.url)
        self.make_bot("Beta", second.url)
        self.make_bot("Gamma")  # no webhook
        self.post_id(self.bob, 1, "@Alpha and @Gamma and @Alpha again")
        self.deliver()
        self.assertEqual((len(first.requests), len(second.requests)), (1, 0))
        self.assertEqual(json.loads(first.requests[0][3])["message"]["body"]["plain"], "and @Gamma and  again")

    def test_a_bot_mentioned_outside_its_rooms_or_deactivated_hears_nothing(self):
        receiver = self.receiver(answer(200, "text/plain", b"hi"))
        bot_id, _ = self.make_bot("Helper", receiver.url)
        sgid = self.app.store.mention_sgid(bot_id)
        mention = '<action-text-attachment sgid="%s" content-type="application/vnd.campfire.mention">' \
                  '</action-text-attachment>' % sgid
        self.post_id(self.carol, self.closed, "<div>%s are you there?</div>" % mention)
        self.assertEqual(len(self.app.webhooks.pending), 0)
        self.ada.post("/account/bots/%d" % bot_id, {"_method": "delete"})
        self.post_id(self.bob, 1, "<div>%s ?</div>" % mention)
        self.assertEqual(len(self.app.webhooks.pending), 0)

    def test_bot_api_posts_and_replies_never_trigger_webhooks_no_loop(self):
        alpha_hook = self.receiver(answer(200, "text/plain", b"@Beta your turn"))
        beta_hook = self.receiver(answer(200, "text/plain", b"@Alpha no, yours"))
        alpha, alpha_key = self.make_bot("Alpha", alpha_hook.url)
        beta, _ = self.make_bot("Beta", beta_hook.url)
        # A direct room of Bob and both bots: each bot hears Bob, and replies mention the other.
        direct = self.create_direct_room(self.bob, [alpha, beta])
        self.post_id(self.bob, direct, "hello bots")
        self.deliver()
        self.assertEqual((len(alpha_hook.requests), len(beta_hook.requests)), (1, 1))
        self.assertEqual(len(self.bot_messages(alpha, direct)), 1)
        self.assertEqual(len(self.bot_messages(beta, direct)), 1)
        self.assertEqual(len(self.app.webhooks.pending), 0)
        self.deliver()
        self.assertEqual((len(alpha_hook.requests), len(beta_hook.requests)), (1, 1))
        # A bot mentioning itself and another bot through the API triggers nothing either.
        self.assertEqual(self.api("POST", "/rooms/%d/%s/messages" % (direct, alpha_key), "@Alpha @Beta hi").status, 201)
        self.assertEqual(self.api("POST", "/rooms/1/%s/messages" % alpha_key, "@Alpha @Beta hi").status, 201)
        self.assertEqual(len(self.app.webhooks.pending), 0)

    def test_any_other_reply_is_posted_as_a_file_named_attachment(self):
        # Campfire's app/models/webhook.rb: not a 200 text/plain or text/html, so a file, whatever the status.
        cases = [("json", answer(200, "application/json", b'{"text": "hi"}'), "attachment.json", "application/json"),
                 ("png", answer(200, "image/png", PNG_1x1), "attachment.png", "image/png"),
                 ("500", answer(500, "text/plain", b"boom"), "attachment.txt", "text/plain"),
                 ("201 text", answer(201, "text/plain", b"created?"), "attachment.txt", "text/plain")]
        for name, respond, filename, content_type in cases:
            with self.subTest(name):
                receiver = self.receiver(respond)
                bot_id, _ = self.make_bot("Bot %s" % name, receiver.url)
                self.post_id(self.bob, 1, "@Bot %s, talk to me" % name)
                self.deliver()
                message_id = self.app.db.value("SELECT max(id) FROM messages WHERE creator_id = ?", (bot_id,))
                blob = self.app.store.attachment("Message", message_id, "attachment")
                self.assertEqual((blob.filename, blob.content_type), (filename, content_type))
                self.assertIn(filename, self.bob.get("/rooms/1").text)

    def test_errors_post_nothing_and_are_logged(self):
        cases = [("redirect", answer(302, "text/html", b"moved", headers=[("Location", "http://127.0.0.1:9/")])),
                 ("ten megabytes", huge(10 * 1024 * 1024)),
                 ("two megabytes until close", huge(2 * 1024 * 1024, length_header=False)),
                 ("empty text", answer(200, "text/plain", b""))]
        for name, respond in cases:
            with self.subTest(name):
                receiver = self.receiver(respond)
                bot_id, _ = self.make_bot("Bot %s" % name, receiver.url)
                self.post_id(self.bob, 1, "@Bot %s, talk to me" % name)
                with self.assertLogs("campfire", level="WARNING") as logs:
                    self.deliver()
                self.assertEqual(len(receiver.requests), 1, "no retries")
                self.assertEqual(self.bot_messages(bot_id, 1), [])
                self.assertTrue(any("bot %d" % bot_id in line for line in logs.output), logs.output)

    def test_a_refused_connection_is_logged_and_posts_nothing(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        bot_id, _ = self.make_bot("Helper", "http://127.0.0.1:%d/" % port)
        self.post_id(self.bob, 1, "@Helper anyone?")
        with self.assertLogs("campfire", level="WARNING") as logs:
            self.deliver()
        self.assertIn("failed", "\n".join(logs.output))
        self.assertEqual(self.bot_messages(bot_id, 1), [])

    def test_a_receiver_that_hangs_gets_failed_to_respond_posted_as_the_bot(self):
        default_timeout = campfire.WEBHOOK_TIMEOUT
        self.patch_timeout(0.5)
        receiver = self.receiver(hang())
        bot_id, _ = self.make_bot("Helper", receiver.url)
        self.post_id(self.bob, 1, "@Helper are you awake?")
        started = time.monotonic()
        with self.assertLogs("campfire", level="WARNING"):
            self.deliver()
        # The timeout in force is what ended it: not before it, and long before the default.
        self.assertGreaterEqual(time.monotonic() - started, self.app.config.webhook_timeout)
        self.assertLess(time.monotonic() - started, default_timeout)
        self.assertEqual(self.bot_messages(bot_id, 1), ["Failed to respond within 7 seconds"])

    def patch_timeout(self, seconds):
        self.app.config.webhook_timeout = seconds

    @unittest.skipUnless(shutil.which("openssl"), "openssl makes the test certificate")
    def test_https_webhooks_verify_the_certificate(self):
        import ssl
        import tempfile
        directory = tempfile.mkdtemp(prefix="campfire-tls-")
        self.addCleanup(shutil.rmtree, directory, True)
        cert, key = directory + "/cert.pem", directory + "/key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
        receiver = self.receiver_tls(answer(200, "text/plain", b"secure hello"), (cert, key))
        bot_id, _ = self.make_bot("Helper", receiver.url)
        self.post_id(self.bob, 1, "@Helper over TLS, unknown issuer")
        with self.assertLogs("campfire", level="WARNING") as logs:
            self.deliver()
        self.assertIn("CERTIFICATE_VERIFY_FAILED", "\n".join(logs.output))
        self.assertEqual(self.bot_messages(bot_id, 1), [])
        self.app.webhooks._tls = ssl.create_default_context(cafile=cert)  # now the issuer is trusted
        self.post_id(self.bob, 1, "@Helper over TLS, trusted")
        self.deliver()
        self.assertEqual(self.bot_messages(bot_id, 1), ["secure hello"])
        self.assertEqual(json.loads(receiver.requests[-1][3])["message"]["body"]["plain"], "over TLS, trusted")

    def receiver_tls(self, respond, tls):
        receiver = Receiver(respond, tls)
        self.addCleanup(receiver.close)
        return receiver

    def test_the_queue_is_bounded_and_drops_with_a_log_line(self):
        self.app.config.webhook_queue_size = 2
        self.make_bot("Helper", "http://127.0.0.1:9/")
        self.post_id(self.bob, 1, "@Helper one")
        self.post_id(self.bob, 1, "@Helper two")
        with self.assertLogs("campfire", level="WARNING") as logs:
            self.post_id(self.bob, 1, "@Helper three")
        self.assertIn("queue full", logs.output[0])
        self.assertEqual(len(self.app.webhooks.pending), 2)

    def test_a_reply_for_a_bot_deactivated_meanwhile_is_dropped(self):
        receiver = self.receiver(answer(200, "text/plain", b"late reply"))
        bot_id, _ = self.make_bot("Helper", receiver.url)
        self.post_id(self.bob, 1, "@Helper hi")
        self.ada.post("/account/bots/%d" % bot_id, {"_method": "delete"})
        self.deliver()
        self.assertEqual(len(receiver.requests), 1)
        self.assertEqual(self.bot_messages(bot_id, 1), [])


class WebhookUnitTests(unittest.TestCase):
    RESPONSES = [
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: 5\r\n\r\nhello",
         (200, "text/plain", b"hello")),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nok",
         (200, "text/html", b"ok")),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"4\r\nWiki\r\n6;ext=1\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n",
         (200, "text/plain", b"Wikipedia in \r\n\r\nchunks.")),
        (b"HTTP/1.1 204 No Content\r\n\r\n", (204, "", b"")),
        (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", (200, "text/plain", b"until the end")),
    ]

    def read(self, data, step=None, max_body=None):
        reader = campfire.WebhookResponseReader(max_body)
        done = False
        pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
        for piece in pieces:
            done = reader.receive_data(piece)
            if done:
                break
        if not done:
            done = reader.receive_eof()
        self.assertTrue(done)
        return reader.status, reader.content_type, bytes(reader.body)

    def test_responses_whole_byte_by_byte_and_with_trailing_data(self):
        for data, expected in self.RESPONSES:
            with self.subTest(data=data[:40]):
                self.assertEqual(self.read(data), expected)
                self.assertEqual(self.read(data, step=1), expected)
                if b"Content-Length" in data or b"chunked" in data:
                    self.assertEqual(self.read(data + b"HTTP/1.1 junk after"), expected)

    def test_limits_and_malformed_replies_raise_webhook_failed(self):
        for data, max_body in (
                (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", 10),
                (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 11, 10),
                (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nB\r\n", 10),
                (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", None),
                (b"SSH-2.0-OpenSSH\r\n\r\n", None),
                (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", None),
                (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", None),
                (b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"y" * 70000, None)):
            with self.subTest(data=data[:50]):
                with self.assertRaises(campfire.WebhookFailed):
                    self.read(data, max_body=max_body)

    def test_request_bytes(self):
        data = campfire.webhook_request_bytes("https://[::1]:8443/hook?a=b#frag", b'{"x":1}')
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.assertEqual(lines[0], "POST /hook?a=b HTTP/1.1")
        self.assertIn("Host: [::1]:8443", lines)
        self.assertIn("Content-Type: application/json", lines)
        self.assertIn("Content-Length: 7", lines)
        self.assertEqual(body, b'{"x":1}')
        self.assertTrue(campfire.webhook_request_bytes("http://example.com", b"").startswith(
            b"POST / HTTP/1.1\r\nHost: example.com\r\n"))

    def test_webhook_url_rules(self):
        for url in ("http://example.com", "https://bots.example.com:8443/a/b?c=d", "http://127.0.0.1:4567/hook"):
            self.assertIsNone(campfire.webhook_url_error(url), url)
        for url in ("ftp://example.com", "http:///path", "//example.com/x", "mailto:a@b.c", "http://ex ample.com",
                    "http://exämple.com", "http://example.com:70000/", "https://e.com/" + "a" * 2040):
            self.assertIsNotNone(campfire.webhook_url_error(url), url)


# Over real sockets ----------------------------------------------------------------------------

class LiveBotTests(unittest.TestCase):
    """The real server: a bot posting the way Campfire's documentation shows, and webhook workers."""

    def setUp(self):
        self.live = LiveServer()
        self.addCleanup(self.live.stop)
        self.origin = "http://127.0.0.1:%d" % self.live.port
        app = self.live.app

        self.admin = Client(app)
        self.admin.cookies["session_token"] = first_run_cookie(self.live.port)

    def call(self, function, *args):
        return self.live.call(function, *args)

    def make_bot(self, name, webhook_url=""):
        self.call(lambda: self.admin.post("/account/bots", {"user[name]": name, "user[webhook_url]": webhook_url}))
        row = self.call(lambda: self.live.app.db.one(
            "SELECT id, bot_token FROM users WHERE name = ? AND role = 2", (name,)))
        return row["id"], "%d-%s" % (row["id"], row["bot_token"])

    def curl_command(self):
        page = self.call(lambda: self.admin.request("GET", "/account/bots",
                                                    headers={"Host": "127.0.0.1:%d" % self.live.port}))
        return controls(page.text).textbox("curl command for posting messages")["value"]

    def http(self, method, url, body=None, headers=None):
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None
        try:
            response = urllib.request.build_opener(NoRedirect).open(request, timeout=5)
        except urllib.error.HTTPError as error:
            response = error
        with response:
            return response.status, response.headers, response.read()

    def bot_texts(self, bot_id):
        return self.call(lambda: [self.live.app.store.plain_text(row[0]) for row in self.live.app.db.all(
            "SELECT body FROM action_text_rich_texts JOIN messages ON messages.id = record_id "
            "AND record_type = 'Message' WHERE messages.creator_id = ? ORDER BY messages.id", (bot_id,))])

    def wait_for(self, predicate, timeout=10.0):
        return wait_until(predicate, timeout)

    def test_the_curl_command_from_the_bots_page_posts_as_campfires_docs_show(self):
        bot_id, key = self.make_bot("Helper")
        command = self.curl_command()
        url = "%s/rooms/1/%s/messages" % (self.origin, key)
        self.assertEqual(command, "curl -d 'Hello!' " + url)
        if shutil.which("curl"):
            result = subprocess.run(["curl", "-sS", "-i", "-d", "Hello!", url], capture_output=True, timeout=10)
            head = result.stdout.decode("latin-1")
            self.assertTrue(head.startswith("HTTP/1.1 201"), head)
            self.assertRegex(head, r"(?i)\r\nlocation: %s/messages/\d+\r\n" % re.escape(self.origin))
            result = subprocess.run(["curl", "-sS", "-i", "-H", "Content-Type: text/plain", "--data-binary",
                                     "<b>Plain</b> text", url], capture_output=True, timeout=10)
            self.assertTrue(result.stdout.startswith(b"HTTP/1.1 201"), result.stdout)
        else:
            for body, content_type in ((b"Hello!", "application/x-www-form-urlencoded"),
                                       (b"<b>Plain</b> text", "text/plain")):
                status, headers, _ = self.http("POST", url, body, {"Content-Type": content_type})
                self.assertEqual(status, 201)
        status, headers, body = self.http("GET", url)
        self.assertEqual(status, 200)
        self.assertEqual(headers["X-Total-Count"], "2")
        messages = json.loads(body)
        self.assertEqual([m["body"]["plain_text"] for m in messages], ["Hello!", "Plain text"])
        self.assertEqual(messages[0]["url"], "%s/rooms/1/messages/%d" % (self.origin, messages[0]["id"]))
        self.assertEqual(self.bot_texts(bot_id), ["Hello!", "Plain text"])
        status, headers, _ = self.http("POST", "%s/rooms/999/%s/messages" % (self.origin, "1-AAAAAAAAAAAA"), b"x")
        self.assertEqual((status, headers["Location"]), (302, "/session/new"))

    def test_webhook_round_trip_through_the_servers_workers(self):
        receiver = Receiver(answer(200, "text/plain", b"On it!"))
        self.addCleanup(receiver.close)
        bot_id, _ = self.make_bot("Helper", receiver.url)
        ada_id = self.call(lambda: self.live.app.store.user_by_email("ada@example.com").id)
        self.call(lambda: self.live.app.store.post_message(self.live.app.store.room(1), self.live.app.store.user(ada_id),
                                                     "@Helper deploy", "live-1"))
        self.assertEqual(self.wait_for(lambda: self.bot_texts(bot_id)), ["On it!"])
        self.assertEqual(json.loads(receiver.requests[0][3])["message"]["body"]["plain"], "deploy")

    def test_a_hanging_webhook_never_slows_the_chat_and_posts_failed_to_respond(self):
        self.live.app.config.webhook_timeout = 3.0  # the deliveries hang this long, far longer than the chat takes to answer
        receiver = Receiver(hang())
        self.addCleanup(receiver.close)
        bot_id, key = self.make_bot("Sleepy", receiver.url)
        ada_id = self.call(lambda: self.live.app.store.user_by_email("ada@example.com").id)
        url = "%s/rooms/1/%s/messages" % (self.origin, key)
        for n in range(3):  # three deliveries in flight at once, all hanging
            self.call(lambda n=n: self.live.app.store.post_message(
                self.live.app.store.room(1), self.live.app.store.user(ada_id), "@Sleepy wake up %d" % n, "h-%d" % n))
        self.wait_for(lambda: len(receiver.requests) == 3)
        status, _, _ = self.http("GET", self.origin + "/up")
        self.assertEqual(status, 200)
        status, _, _ = self.http("POST", url, b"I answer meanwhile", {"Content-Type": "text/plain"})
        self.assertEqual(status, 201)
        # Answered while all three deliveries still hang: none has timed out and posted yet.
        self.assertEqual(self.bot_texts(bot_id), ["I answer meanwhile"])
        texts = self.wait_for(lambda: (lambda t: t if len(t) == 4 else None)(self.bot_texts(bot_id)))
        self.assertEqual(sorted(texts), ["Failed to respond within 7 seconds"] * 3 + ["I answer meanwhile"])


if __name__ == "__main__":
    unittest.main()
