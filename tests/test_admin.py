"""The account page, people administration (roles, deactivation, bans), profiles,
sign-in transfer links and QR codes."""

import asyncio
import base64
import html
import http.client
import json
import os
import re
import shutil
import time
import unittest
import urllib.parse
from unittest import mock

from tests.helpers import (AppTestCase, CableClient, Client, LiveServer, avatar_initials, campfire, config_value,
                           sign_in_cookie, wait_until)

CSS = "body { outline: 3px solid rgb(1, 2, 3) }"


def b64url(text):
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def input_value(html_text, element_id):
    match = re.search(r'<input[^>]*\bid="%s"[^>]*>' % re.escape(element_id), html_text)
    assert match, "no #%s on the page" % element_id
    value = re.search(r'\bvalue="([^"]*)"', match.group(0))
    return html.unescape(value.group(1))


class AdminTestCase(AppTestCase):
    """Ada is the administrator (self.client); Bob a member (self.bob)."""

    def setUp(self):
        super().setUp()
        self.first_run()
        self.bob = self.join("Bob Member", "bob@example.com")
        self.bob_user = self.app.store.user_by_email("bob@example.com")
        self.room_id = self.app.db.value("SELECT id FROM rooms WHERE name = 'All Talk'")

    def patch(self, client, path, form):
        return client.post(path, dict(form, _method="patch"))

    def delete(self, client, path, form=None):
        return client.post(path, dict(form or {}, _method="delete"))

    def sign_in(self, email, password, remote_addr="127.0.0.1"):
        client = Client(self.app, remote_addr=remote_addr)
        response = client.post("/session", {"email_address": email, "password": password})
        return client, response

    def make_user(self, name, role=campfire.ROLE_MEMBER):
        with self.app.db.atomic():
            return self.app.store.create_user(name, "%s@example.com" % name.lower().replace(" ", "."), "pw", role)

    def status_of(self, user_id):
        return self.app.db.value("SELECT status FROM users WHERE id = ?", (user_id,))


class AccessTests(AdminTestCase):
    ADMIN_ROUTES = [
        ("PATCH", "/account", {"account[name]": "Renamed"}),
        ("PUT", "/account", {"account[name]": "Renamed again"}),
        ("POST", "/account/join_code", {}),
        ("GET", "/account/custom_styles", None),
        ("GET", "/account/custom_styles/edit", None),
        ("PATCH", "/account/custom_styles", {"account[custom_styles]": CSS}),
        ("PUT", "/account/custom_styles", {"account[custom_styles]": CSS}),
        ("PATCH", "/account/users/{target}", {"user[role]": "administrator"}),
        ("PUT", "/account/users/{target}", {"user[role]": "member"}),
        ("DELETE", "/account/users/{target}", {}),
        ("POST", "/users/{target}/ban", {}),
        ("DELETE", "/users/{target}/ban", {}),
    ]

    def call(self, client, method, path, form):
        if method == "GET":
            return client.get(path)
        if method == "POST":
            return client.post(path, form)
        return client.post(path, dict(form, _method=method.lower()))

    def test_every_admin_route_admin_allowed_member_forbidden_visitor_sent_to_sign_in(self):
        visitor = Client(self.app)
        for index, (method, pattern, form) in enumerate(self.ADMIN_ROUTES):
            with self.subTest(method=method, path=pattern):
                target = self.make_user("Target %d" % index)
                path = pattern.format(target=target.id)
                self.assertEqual(self.call(self.bob, method, path, form).status, 403)
                response = self.call(visitor, method, path, form)
                self.assertEqual(response.status, 302)
                self.assertEqual(response.header("Location"), "/session/new")
                self.assertEqual(self.status_of(target.id), campfire.STATUS_ACTIVE)  # nothing happened
                status = self.call(self.client, method, path, form).status
                self.assertTrue(200 <= status < 400, status)

    def test_pages_for_every_signed_in_person(self):
        for path in ("/account/edit", "/account/users", "/users/me/profile", "/users/%d" % self.bob_user.id):
            with self.subTest(path=path):
                self.assertEqual(self.bob.get(path).status, 200)
                self.assertEqual(self.client.get(path).status, 200)
                response = Client(self.app).get(path)
                self.assertEqual((response.status, response.header("Location")), (302, "/session/new"))

    def test_member_sees_no_administrator_controls(self):
        page = self.bob.get("/account/edit").text
        self.assertIn('id="invite_url"', page)
        for control in ('action="/account"', "/account/join_code", "/account/custom_styles", "Set up chat bots",
                        "/account/bots", 'name="user[role]"', "Deactivate", "restrict_room_creation"):
            self.assertNotIn(control, page)
        admin_page = self.client.get("/account/edit").text
        for control in ('action="/account"', "/account/join_code", "/account/custom_styles/edit",
                        '<a class="button" href="/account/bots">Set up chat bots</a>', 'name="user[role]"',
                        "Deactivate Bob Member"):
            self.assertIn(control, admin_page)

    def test_layout_links_account_and_profile(self):
        page = self.bob.get("/rooms/%d" % self.room_id).text
        self.assertIn('href="/account/edit">Account</a>', page)
        self.assertRegex(page, r'<a class="topbar__user" href="/users/me/profile"[^>]*>.*?<span>Bob Member</span>')
        signed_out = Client(self.app).get("/session/new").text
        self.assertNotIn("/account/edit", signed_out)


class AccountTests(AdminTestCase):
    def test_everyone_sees_name_invitation_link_with_qr_and_people(self):
        page = self.bob.get("/account/edit").text
        code = self.app.store.account()["join_code"]
        self.assertIn("<h1 class=\"panel__title\">Campfire</h1>", page)
        self.assertEqual(input_value(page, "invite_url"), "http://localhost/join/" + code)
        self.assertIn('href="/qr_code/%s"' % b64url("http://localhost/join/" + code), page)
        self.assertIn('data-copy-target="invite_url"', page)
        self.assertIn("/static/clipboard.js?v=", page)
        people = re.findall(r'id="account_user_(\d+)"', page)
        self.assertEqual(people, ["1", str(self.bob_user.id)])  # by name: Ada, Bob
        self.assertIn("Administrator", page)
        self.assertIn("Member", page)

    def test_account_name_change_shows_on_cached_pages(self):
        room_path = "/rooms/%d" % self.room_id
        self.assertIn("All Talk &middot; Campfire", self.bob.get(room_path).text)  # now cached
        response = self.patch(self.client, "/account", {"account[name]": "Acme Chat"})
        self.assertEqual(response.header("Location"), "/account/edit?saved=1")
        self.assertEqual(self.app.store.account_name(), "Acme Chat")
        self.assertIn('role="status">Saved.</p>', self.client.get(response.header("Location")).text)
        self.assertNotIn("Saved.", self.client.get("/account/edit").text)
        page = self.bob.get(room_path).text
        self.assertIn("All Talk &middot; Acme Chat", page)
        self.assertIn('class="topbar__brand" href="/">Acme Chat</a>', page)
        self.assertIn("Acme Chat", Client(self.app).get("/session/new").text)

    def test_blank_or_long_account_name_shows_the_form_again(self):
        response = self.patch(self.client, "/account", {"account[name]": "  "})
        self.assertEqual(response.status, 422)
        self.assertIn("Enter a name.", response.text)
        response = self.patch(self.client, "/account", {"account[name]": "x" * 101})
        self.assertEqual(response.status, 422)
        self.assertIn("at most 100", response.text)
        self.assertEqual(self.app.store.account_name(), "Campfire")

    def test_regenerated_join_code_retires_the_old_link(self):
        old = self.app.store.account()["join_code"]
        self.assertEqual(self.client.post("/account/join_code").status, 303)
        new = self.app.store.account()["join_code"]
        self.assertNotEqual(old, new)
        self.assertRegex(new, r"^[A-Za-z0-9]{4}-[A-Za-z0-9]{4}-[A-Za-z0-9]{4}$")
        self.assertEqual(Client(self.app).get("/join/" + old).status, 404)
        self.assertEqual(Client(self.app).get("/join/" + new).status, 200)
        self.assertEqual(input_value(self.bob.get("/account/edit").text, "invite_url"), "http://localhost/join/" + new)

    def test_restrict_room_creation_checkbox(self):
        setting = "account[settings][restrict_room_creation_to_administrators]"
        self.assertIn('aria-label="New room"', self.bob.get("/users/me/sidebar").text)
        # The form sends a hidden "0" before the checkbox's "1", as Rails forms do.
        self.client.post("/account", [("_method", "patch"), ("account[name]", "Campfire"), (setting, "0"),
                                      (setting, "1")])
        self.assertEqual(json.loads(self.app.store.account()["settings"]),
                         {"restrict_room_creation_to_administrators": True})
        self.assertIn("checked", re.search(r'<input type="checkbox"[^>]*>', self.client.get("/account/edit").text)[0])
        self.assertEqual(self.bob.get("/rooms/opens/new").status, 403)
        self.assertNotIn('aria-label="New room"', self.bob.get("/users/me/sidebar").text)
        self.assertEqual(self.client.get("/rooms/opens/new").status, 200)
        self.client.post("/account", [("_method", "patch"), (setting, "0")])
        self.assertEqual(json.loads(self.app.store.account()["settings"]),
                         {"restrict_room_creation_to_administrators": False})
        self.assertEqual(self.bob.get("/rooms/opens/new").status, 200)
        self.assertIn('aria-label="New room"', self.bob.get("/users/me/sidebar").text)

    def test_name_change_alone_keeps_the_setting_and_other_settings(self):
        self.app.db.execute("UPDATE accounts SET settings = ?",
                            ('{"restrict_room_creation_to_administrators":true,"other":1}',))
        self.patch(self.client, "/account", {"account[name]": "Renamed"})
        self.assertEqual(json.loads(self.app.store.account()["settings"]),
                         {"restrict_room_creation_to_administrators": True, "other": 1})

    def test_users_list_pages_by_500(self):
        with self.app.db.atomic():
            for index in range(campfire.ACCOUNT_USERS_PAGE_SIZE):
                self.app.db.execute("INSERT INTO users (name, email_address, role, status, created_at, updated_at) "
                                    "VALUES (?, ?, 0, 0, '2024-01-01', '2024-01-01')",
                                    ("Zed %03d" % index, "zed%d@example.com" % index))
        self.app.store.bump_everything()
        first = self.bob.get("/account/users").text
        self.assertEqual(len(re.findall(r'id="account_user_', first)), 500)
        self.assertIn('href="/account/users?page=2"', first)
        second = self.bob.get("/account/users?page=2").text
        self.assertEqual(len(re.findall(r'id="account_user_', second)), 2)
        self.assertIn("Zed 499", second)
        self.assertNotIn("page=3", second)
        self.assertEqual(self.bob.get("/account/users?page=x").status, 400)


class CustomStylesTests(AdminTestCase):
    def set_css(self, css, client=None):
        return self.patch(client or self.client, "/account/custom_styles", {"account[custom_styles]": css})

    def stylesheet_href(self, page):
        match = re.search(r'<link rel="stylesheet" href="(/account/custom_styles\.css\?v=[0-9a-f]+)">', page)
        return match and html.unescape(match.group(1))

    def test_no_stylesheet_until_there_is_custom_css(self):
        self.assertIsNone(self.stylesheet_href(self.client.get("/rooms/%d" % self.room_id).text))
        response = Client(self.app).get("/account/custom_styles.css")
        self.assertEqual((response.status, response.body), (200, b""))

    def test_custom_css_is_a_stylesheet_on_every_page_and_served_publicly(self):
        room_path = "/rooms/%d" % self.room_id
        self.bob.get(room_path)  # cached before the change
        self.assertEqual(self.set_css(CSS).header("Location"), "/account/edit")
        self.assertEqual(self.app.store.account()["custom_styles"], CSS)
        pages = [self.bob.get(room_path), self.bob.get("/account/edit"), self.bob.get("/searches?q=x"),
                 Client(self.app).get("/session/new"), Client(self.app).get("/nowhere")]
        hrefs = {self.stylesheet_href(page.text) for page in pages}
        self.assertEqual(len(hrefs), 1)
        href = hrefs.pop()
        self.assertIsNotNone(href)
        for page in pages:
            self.assertNotIn("<style", page.text)
            policy = page.header("Content-Security-Policy")
            self.assertIn("style-src 'self'", policy)
            self.assertNotIn("unsafe-inline", policy)
        sheet = Client(self.app).get(href)
        self.assertEqual(sheet.status, 200)
        self.assertEqual(sheet.header("Content-Type"), "text/css; charset=utf-8")
        self.assertEqual(sheet.body.decode(), CSS)
        self.assertEqual(sheet.header("Cache-Control"), "public, max-age=31536000, immutable")
        again = Client(self.app).get(href, headers={"If-None-Match": sheet.header("ETag")})
        self.assertEqual(again.status, 304)
        unversioned = Client(self.app).get("/account/custom_styles.css")
        self.assertEqual(unversioned.header("Cache-Control"), "public, no-cache")

    def test_changed_css_gets_a_new_url(self):
        self.set_css(CSS)
        first = self.stylesheet_href(self.bob.get("/account/edit").text)
        self.set_css("body { color: red }")
        second = self.stylesheet_href(self.bob.get("/account/edit").text)
        self.assertNotEqual(first, second)
        self.assertEqual(Client(self.app).get(second).body, b"body { color: red }")
        self.set_css("   ")
        self.assertIsNone(self.app.store.account()["custom_styles"])
        self.assertIsNone(self.stylesheet_href(self.bob.get("/account/edit").text))

    def test_edit_form_shows_current_css_escaped(self):
        self.set_css("a::after { content: '</textarea><script>' }")
        page = self.client.get("/account/custom_styles/edit").text
        self.assertIn("a::after { content: &#x27;&lt;/textarea&gt;&lt;script&gt;&#x27; }</textarea>", page)

    def test_css_over_the_limit_is_413_and_kept_in_the_form(self):
        self.set_css(CSS)
        too_big = "/* " + "x" * campfire.MAX_CUSTOM_STYLES_BYTES + " */"
        response = self.set_css(too_big)
        self.assertEqual(response.status, 413)
        self.assertIn("at most 64 KiB", response.text)
        self.assertIn("x" * 1000, response.text)
        self.assertEqual(self.app.store.account()["custom_styles"], CSS)
        exactly = "/*" + "é" * ((campfire.MAX_CUSTOM_STYLES_BYTES - 4) // 2) + "*/"
        self.assertEqual(len(exactly.encode()), campfire.MAX_CUSTOM_STYLES_BYTES)
        self.assertEqual(self.set_css(exactly).status, 303)


class RoleTests(AdminTestCase):
    def role_of(self, user_id):
        return self.app.db.value("SELECT role FROM users WHERE id = ?", (user_id,))

    def test_promote_and_demote(self):
        path = "/account/users/%d" % self.bob_user.id
        self.assertEqual(self.patch(self.client, path, {"user[role]": "administrator"}).status, 303)
        self.assertEqual(self.role_of(self.bob_user.id), campfire.ROLE_ADMINISTRATOR)
        self.assertEqual(self.bob.get("/account/custom_styles/edit").status, 200)  # at once, same session
        self.assertIn('data-administrator="true"', self.bob.get("/account/edit").text)
        self.patch(self.client, path, {"user[role]": "bot"})  # anything else means member
        self.assertEqual(self.role_of(self.bob_user.id), campfire.ROLE_MEMBER)
        self.assertEqual(self.bob.get("/account/custom_styles/edit").status, 403)

    def test_the_last_administrator_cannot_step_down(self):
        response = self.patch(self.client, "/account/users/1", {"user[role]": "member"})
        self.assertEqual(response.status, 422)
        self.assertIn("You are the only administrator", response.text)
        self.assertIn('role="alert"', response.text)
        self.assertEqual(self.role_of(1), campfire.ROLE_ADMINISTRATOR)
        self.patch(self.client, "/account/users/%d" % self.bob_user.id, {"user[role]": "administrator"})
        self.assertEqual(self.patch(self.client, "/account/users/1", {"user[role]": "member"}).status, 303)
        self.assertEqual(self.role_of(1), campfire.ROLE_MEMBER)
        # Bob is now the only one: he can't step down, nor be deactivated or banned by himself.
        response = self.patch(self.bob, "/account/users/%d" % self.bob_user.id, {"user[role]": "member"})
        self.assertEqual(response.status, 422)
        self.assertIn("only administrator", response.text)

    def test_an_inactive_administrator_does_not_count(self):
        carol = self.make_user("Carol", campfire.ROLE_ADMINISTRATOR)
        self.app.db.execute("UPDATE users SET status = ? WHERE id = ?", (campfire.STATUS_BANNED, carol.id))
        self.app.store.bump_everything()
        self.assertEqual(self.patch(self.client, "/account/users/1", {"user[role]": "member"}).status, 422)

    def test_bots_and_deactivated_people_are_not_managed_here(self):
        bot = self.make_user("Helper", campfire.ROLE_BOT)
        self.assertEqual(self.patch(self.client, "/account/users/%d" % bot.id, {"user[role]": "member"}).status, 404)
        self.assertEqual(self.client.post("/users/%d/ban" % bot.id).status, 404)
        self.assertEqual(self.patch(self.client, "/account/users/999", {"user[role]": "member"}).status, 404)


class DeactivationTests(AdminTestCase):
    def test_deactivation_ends_sessions_memberships_and_frees_the_email(self):
        bob_id = self.bob_user.id
        with self.app.db.atomic():
            closed = self.app.store.create_room("Closed", campfire.ROOM_CLOSED, 1, [1, bob_id])
            direct = self.app.store.create_room(None, campfire.ROOM_DIRECT, 1, [1, bob_id])
            self.app.store.record_search(bob_id, "hello")
            self.app.db.execute("INSERT INTO push_subscriptions (user_id, endpoint, created_at, updated_at) "
                                "VALUES (?, 'https://push.example/1', '2024-01-01', '2024-01-01')", (bob_id,))
        other_session, _ = self.sign_in("bob@example.com", "member-password")
        disconnected = []
        self.app.cable.disconnect = lambda **kwargs: disconnected.append(kwargs)
        response = self.delete(self.client, "/account/users/%d" % bob_id)
        self.assertEqual(response.header("Location"), "/account/edit")
        self.assertEqual(disconnected, [{"user_id": bob_id, "session_id": None}])  # every session
        row = self.app.db.one("SELECT * FROM users WHERE id = ?", (bob_id,))
        self.assertEqual(row["status"], campfire.STATUS_DEACTIVATED)
        self.assertRegex(row["email_address"], r"^x-deactivated-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-"
                                               r"[0-9a-f]{12}@example\.com$")
        for table in ("sessions", "searches", "push_subscriptions"):
            self.assertEqual(self.app.db.value("SELECT count(*) FROM %s WHERE user_id = ?" % table, (bob_id,)), 0)
        rooms = {row[0] for row in self.app.db.all("SELECT room_id FROM memberships WHERE user_id = ?", (bob_id,))}
        self.assertEqual(rooms, {direct.id})
        self.assertNotIn(bob_id, self.app.store.room_member_ids(closed.id))
        for client in (self.bob, other_session):
            self.assertEqual(client.get("/rooms/%d" % self.room_id).header("Location"), "/session/new")
        _, again = self.sign_in("bob@example.com", "member-password")
        self.assertEqual(again.status, 401)
        self.join("New Bob", "bob@example.com", password="another-password")
        self.assertEqual(self.app.store.user_by_email("bob@example.com").name, "New Bob")
        self.assertNotIn("Bob Member", self.client.get("/account/edit").text)

    def test_administrators_cannot_deactivate_themselves(self):
        self.patch(self.client, "/account/users/%d" % self.bob_user.id, {"user[role]": "administrator"})
        response = self.delete(self.client, "/account/users/1")
        self.assertEqual(response.status, 422)
        self.assertIn("You can&#x27;t deactivate yourself.", response.text)
        self.assertEqual(self.status_of(1), campfire.STATUS_ACTIVE)

    def test_banned_people_are_unbanned_before_deactivation(self):
        self.client.post("/users/%d/ban" % self.bob_user.id)
        response = self.delete(self.client, "/account/users/%d" % self.bob_user.id)
        self.assertEqual(response.status, 422)
        self.assertEqual(self.status_of(self.bob_user.id), campfire.STATUS_BANNED)


class BanTests(AdminTestCase):
    def post_messages(self, client, count):
        for index in range(count):
            response = client.post("/rooms/%d/messages" % self.room_id, {"message[body]": "spam %d" % index})
            self.assertEqual(response.status, 201)

    def bob_messages(self):
        return self.app.db.value("SELECT count(*) FROM messages WHERE creator_id = ?", (self.bob_user.id,))

    def test_ban_blocks_public_addresses_sessions_and_messages(self):
        bob_id = self.bob_user.id
        for address in ("8.8.8.8", "8.8.8.8", "10.1.2.3", "192.168.0.7", "::1", "fe80::1", "::ffff:9.9.9.9",
                        "2001:4860:4860::8888"):
            self.sign_in("bob@example.com", "member-password", address)
        self.post_messages(self.bob, 3)
        self.client.post("/rooms/%d/messages" % self.room_id, {"message[body]": "keep me"})
        disconnected = []
        self.app.cable.disconnect = lambda **kwargs: disconnected.append(kwargs)
        response = self.client.post("/users/%d/ban" % bob_id)
        self.assertEqual(response.header("Location"), "/users/%d" % bob_id)
        self.assertEqual(self.status_of(bob_id), campfire.STATUS_BANNED)
        self.assertEqual(disconnected, [{"user_id": bob_id, "session_id": None}])  # every session
        banned = sorted(row[0] for row in self.app.db.all("SELECT ip_address FROM bans WHERE user_id = ?", (bob_id,)))
        self.assertEqual(banned, ["2001:4860:4860::8888", "8.8.8.8", "9.9.9.9"])
        self.assertEqual(self.app.db.value("SELECT count(*) FROM sessions WHERE user_id = ?", (bob_id,)), 0)
        self.assertEqual(self.bob_messages(), 0)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM message_search_index WHERE body MATCH 'spam'"), 0)
        self.assertIn("keep me", self.client.get("/rooms/%d" % self.room_id).text)
        self.assertEqual(self.bob.get("/rooms/%d" % self.room_id).header("Location"), "/session/new")
        _, again = self.sign_in("bob@example.com", "member-password", "172.16.0.1")
        self.assertEqual(again.status, 401)
        self.assertIn("Banned", self.client.get("/users/%d" % bob_id).text)
        self.assertIn("Unban Bob Member", self.client.get("/users/%d" % bob_id).text)

    def test_banned_address_may_read_but_not_write(self):
        self.sign_in("bob@example.com", "member-password", "8.8.8.8")
        self.client.post("/users/%d/ban" % self.bob_user.id)
        carol = self.make_user("Carol")
        from_banned, response = self.sign_in(carol.email_address, "pw", "8.8.8.8")
        self.assertEqual(response.status, 429)
        self.assertEqual(from_banned.get("/session/new").status, 200)
        self.assertEqual(Client(self.app, remote_addr="::ffff:8.8.8.8").post("/session", {}).status, 429)
        signed_in, response = self.sign_in(carol.email_address, "pw", "8.8.4.4")
        self.assertEqual(response.status, 303)
        signed_in.remote_addr = "8.8.8.8"  # the same person, now on the banned network
        self.assertEqual(signed_in.get("/rooms/%d" % self.room_id).status, 200)
        self.assertEqual(signed_in.post("/rooms/%d/messages" % self.room_id, {"message[body]": "hi"}).status, 429)
        self.assertEqual(self.client.post("/rooms/%d/messages" % self.room_id, {"message[body]": "ok"}).status, 201)

    def test_unban_restores_the_person_and_their_addresses(self):
        self.sign_in("bob@example.com", "member-password", "8.8.8.8")
        self.client.post("/users/%d/ban" % self.bob_user.id)
        response = self.delete(self.client, "/users/%d/ban" % self.bob_user.id)
        self.assertEqual(response.header("Location"), "/users/%d" % self.bob_user.id)
        self.assertEqual(self.status_of(self.bob_user.id), campfire.STATUS_ACTIVE)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM bans"), 0)
        client, response = self.sign_in("bob@example.com", "member-password", "8.8.8.8")
        self.assertEqual(response.status, 303)
        self.assertEqual(client.get("/rooms/%d" % self.room_id).status, 200)  # memberships were kept

    def test_administrators_cannot_ban_themselves(self):
        response = self.client.post("/users/1/ban")
        self.assertEqual(response.status, 422)
        self.assertIn("You can&#x27;t ban yourself.", response.text)
        self.assertEqual(self.status_of(1), campfire.STATUS_ACTIVE)

    def test_messages_are_deleted_in_chunks_after_the_response_under_a_loop(self):
        self.post_messages(self.bob, 5)
        removed = []
        self.app.events.subscribe(type("Listener", (), {"message_removed": lambda _, m: removed.append(m["id"])})())

        async def scenario():
            with config_value(self.app.config, "message_purge_chunk", 2):
                response = self.client.post("/users/%d/ban" % self.bob_user.id)
                self.assertEqual(response.status, 303)
                self.assertEqual(self.bob_messages(), 5)  # the request didn't wait for the deletion
                counts = []
                for _ in range(5):
                    await asyncio.sleep(0)
                    counts.append(self.bob_messages())
            return counts
        counts = asyncio.run(scenario())
        self.assertEqual(counts[:3], [3, 1, 0])
        self.assertEqual(len(removed), 5)

    def test_unban_during_the_purge_keeps_the_rest(self):
        self.post_messages(self.bob, 5)

        async def scenario():
            with config_value(self.app.config, "message_purge_chunk", 2):
                self.client.post("/users/%d/ban" % self.bob_user.id)
                await asyncio.sleep(0)
                self.delete(self.client, "/users/%d/ban" % self.bob_user.id)
                for _ in range(5):
                    await asyncio.sleep(0)
        asyncio.run(scenario())
        self.assertEqual(self.bob_messages(), 3)


class ProfileTests(AdminTestCase):
    def update(self, client=None, **fields):
        form = {"user[name]": "Bob Member", "user[email_address]": "bob@example.com", "user[password]": "",
                "user[bio]": ""}
        form.update({"user[%s]" % key: value for key, value in fields.items()})
        return self.patch(client or self.bob, "/users/me/profile", form)

    def test_profile_form_has_campfire_fields(self):
        page = self.bob.get("/users/me/profile").text
        for name in ("user[name]", "user[email_address]", "user[password]", "user[bio]"):
            self.assertIn('name="%s"' % name, page)
        self.assertIn('maxlength="200"', page)
        self.assertIn('value="bob@example.com"', page)

    def test_edit_name_email_bio_and_blank_password_keeps_it(self):
        response = self.update(name="Robert", email_address="robert@example.com", bio="Plays the tuba.")
        self.assertEqual(response.header("Location"), "/users/me/profile?saved=1")
        self.assertIn('role="status">Saved.</p>', self.bob.get(response.header("Location")).text)
        user = self.app.store.user(self.bob_user.id)
        self.assertEqual((user.name, user.email_address, user.bio), ("Robert", "robert@example.com", "Plays the tuba."))
        self.assertIn("<span>Robert</span>", self.bob.get("/rooms/%d" % self.room_id).text)
        self.assertIn("Plays the tuba.", self.client.get("/users/%d" % user.id).text)
        _, response = self.sign_in("robert@example.com", "member-password")
        self.assertEqual(response.status, 303)

    def test_new_password_replaces_the_old(self):
        self.update(password="a new password")
        self.assertEqual(self.sign_in("bob@example.com", "member-password")[1].status, 401)
        self.assertEqual(self.sign_in("bob@example.com", "a new password")[1].status, 303)

    def test_bio_over_200_characters_shows_the_form_again(self):
        response = self.update(name="Robert", bio="b" * 201)
        self.assertEqual(response.status, 422)
        self.assertIn('id="user_bio_error"', response.text)
        self.assertIn("b" * 201, response.text)
        self.assertIn('value="Robert"', response.text)
        user = self.app.store.user(self.bob_user.id)
        self.assertEqual((user.name, user.bio), ("Bob Member", None))
        self.assertEqual(self.update(bio="b" * 198 + "\r\n" + "c").status, 303)  # a line break is one character

    def test_taken_email_and_bad_fields_show_errors(self):
        response = self.update(email_address="ADA@example.com")
        self.assertEqual(response.status, 422)
        self.assertIn("Someone else already uses this email address.", response.text)
        response = self.update(name="", email_address="nope", password="x" * 73)
        self.assertEqual(response.status, 422)
        for field in ("user_name_error", "user_email_address_error", "user_password_error"):
            self.assertIn('id="%s"' % field, response.text)
        self.assertEqual(self.app.store.user(self.bob_user.id).email_address, "bob@example.com")


class UserPageTests(AdminTestCase):
    def test_members_see_name_bio_and_role_only(self):
        self.app.db.execute("UPDATE users SET bio = 'Runs the place.' WHERE id = 1")
        self.app.store.bump_everything()
        page = self.bob.get("/users/1").text
        for shown in ("Ada Admin", "Runs the place.", "Administrator"):
            self.assertIn(shown, page)
        avatar = re.search(r'<div class="profile__head"><img class="avatar" src="([^"]+)"', page)
        self.assertEqual(avatar_initials(avatar.group(1)), "AA")
        for hidden in ("ada@example.com", "session_transfer_url", "/ban", "Deactivate"):
            self.assertNotIn(hidden, page)

    def test_administrators_see_email_transfer_link_ban_and_deactivate(self):
        response = self.client.get("/users/%d" % self.bob_user.id)
        page = response.text
        self.assertIn("bob@example.com", page)
        self.assertIn("/session/transfers/", input_value(page, "session_transfer_url"))
        self.assertIn('action="/users/%d/ban"' % self.bob_user.id, page)
        self.assertIn("Ban Bob Member", page)
        self.assertIn("Deactivate Bob Member", page)
        self.assertEqual(response.header("Cache-Control"), "no-store")
        own = self.client.get("/users/1").text
        self.assertNotIn("Ban Ada", own)
        self.assertIn('href="/users/me/profile"', own)

    def test_another_persons_profile_has_a_ping_button_that_opens_your_direct_room(self):
        ada_id = self.app.db.value("SELECT id FROM users WHERE email_address = 'ada@example.com'")
        page = self.bob.get("/users/%d" % ada_id).text
        form = re.search(r'<form method="post" action="(/rooms/directs)" class="form__actions">'
                         r'<input type="hidden" name="user_ids\[\]" value="(\d+)">'
                         r'<button type="submit" class="button button--primary">Ping</button></form>', page)
        self.assertIsNotNone(form, page)
        self.assertEqual(int(form.group(2)), ada_id)
        response = self.bob.post(form.group(1), {"user_ids[]": form.group(2)})
        self.assertEqual(response.status, 303)
        room_id = int(response.header("Location").rsplit("/", 1)[1])
        self.assertEqual(sorted(self.app.store.room_member_ids(room_id)), sorted([ada_id, self.bob_user.id]))
        self.assertEqual(self.bob.post(form.group(1), {"user_ids[]": form.group(2)}).header("Location"),
                         "/rooms/%d" % room_id)  # the same room again
        self.assertNotIn(">Ping</button>", self.bob.get("/users/%d" % self.bob_user.id).text)


class TransferTests(AdminTestCase):
    def transfer_url(self, client=None):
        page = (client or self.bob).get("/users/me/profile")
        self.assertEqual(page.header("Cache-Control"), "no-store")
        return input_value(page.text, "session_transfer_url")

    def use(self, url, client=None):
        client = client or Client(self.app)
        path = urllib.parse.urlsplit(url).path
        page = client.get(path)
        if page.status != 200:
            return client, page
        return client, client.post(path, {"_method": "put"})

    def test_profile_shows_link_and_qr_code(self):
        page = self.bob.get("/users/me/profile").text
        url = input_value(page, "session_transfer_url")
        self.assertRegex(url, r"^http://localhost/session/transfers/[A-Za-z0-9_-]+--[0-9a-f]+$")
        self.assertIn('<a class="button" href="/qr_code/%s">Show auto-login QR code</a>' % b64url(url), page)

    def test_link_signs_another_browser_in_and_is_reusable(self):
        url = self.transfer_url()
        sessions = self.app.db.value("SELECT count(*) FROM sessions WHERE user_id = ?", (self.bob_user.id,))
        phone = Client(self.app)
        page = phone.get(urllib.parse.urlsplit(url).path)
        self.assertEqual(page.status, 200)
        form = re.search(r'<form method="post" action="([^"]+)"[^>]*data-auto-submit>', page.text)
        self.assertEqual(form.group(1), urllib.parse.urlsplit(url).path)
        self.assertIn('name="_method" value="put"', page.text)
        self.assertIn('<script type="module" src="/static/transfer.js?v=', page.text)
        # No inline script but the import map, which names our own modules only.
        self.assertEqual(re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page.text), ['<script type="importmap">'])
        self.assertRegex(page.text, r'<script type="importmap">\{"imports":\{[^<]*\}\}</script>')
        response = phone.post(form.group(1), {"_method": "put"})
        self.assertEqual((response.status, response.header("Location")), (303, "/"))
        self.assertIn("<span>Bob Member</span>", phone.get("/account/edit").text)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM sessions WHERE user_id = ?", (self.bob_user.id,)),
                         sessions + 1)
        laptop, response = self.use(url)  # the same link again
        self.assertEqual(response.status, 303)
        self.assertNotEqual(laptop.cookies["session_token"], phone.cookies["session_token"])

    def test_administrator_link_signs_in_as_that_person(self):
        url = input_value(self.client.get("/users/%d" % self.bob_user.id).text, "session_transfer_url")
        client, response = self.use(url)
        self.assertEqual(response.status, 303)
        self.assertIn('data-user-id="%d"' % self.bob_user.id, client.get("/account/edit").text)

    def test_expired_link_is_400(self):
        url = self.transfer_url()
        later = time.time() + campfire.TRANSFER_TOKEN_SECONDS + 1
        with mock.patch.object(campfire.time, "time", return_value=later):
            client, response = self.use(url)
            self.assertEqual(response.status, 400)
            self.assertIn("sign-in link is not valid", response.text)
            self.assertEqual(client.post(urllib.parse.urlsplit(url).path, {"_method": "put"}).status, 400)
        self.assertNotIn("session_token", client.cookies)
        self.assertEqual(self.use(url)[1].status, 303)  # still good before it expires

    def test_tampered_or_foreign_tokens_are_400(self):
        url = self.transfer_url()
        path = urllib.parse.urlsplit(url).path
        payload, mac = path.rsplit("/", 1)[1].split("--")
        forged = campfire.b64url_encode(json.dumps([1, "transfer", time.time() + 999]).encode())
        other_purpose = self.app.signer.sign(self.bob_user.id, "something else", expires_at=time.time() + 99)
        for token in (payload + "--" + mac[:-1] + ("0" if mac[-1] != "0" else "1"), forged + "--" + mac,
                      "garbage", other_purpose, payload):
            with self.subTest(token=token):
                client = Client(self.app)
                self.assertEqual(client.get("/session/transfers/" + token).status, 400)
                self.assertEqual(client.post("/session/transfers/" + token, {"_method": "put"}).status, 400)
                self.assertNotIn("session_token", client.cookies)

    def test_deactivated_or_banned_person_link_is_400(self):
        url = self.transfer_url()
        self.client.post("/users/%d/ban" % self.bob_user.id)
        self.assertEqual(self.use(url)[1].status, 400)
        self.delete(self.client, "/users/%d/ban" % self.bob_user.id)
        self.assertEqual(self.use(url)[1].status, 303)
        self.delete(self.client, "/account/users/%d" % self.bob_user.id)
        self.assertEqual(self.use(url)[1].status, 400)


class QrCodeRouteTests(AdminTestCase):
    def test_opened_in_a_browser_it_is_a_page_with_a_title_and_a_way_back(self):
        url = "http://localhost/join/" + self.app.store.account()["join_code"]
        path = "/qr_code/" + b64url(url)
        page = self.client.get(path, headers={"Sec-Fetch-Mode": "navigate", "Referer": "http://localhost/account/edit"})
        self.assertEqual(page.status, 200)
        self.assertIn("text/html", page.header("Content-Type"))
        self.assertIn("<title>QR code &middot; ", page.text)
        self.assertIn('<h1 class="panel__title">Scan this QR code</h1>', page.text)
        self.assertIn('<img class="qr-page__code" src="%s"' % path, page.text)
        self.assertIn('<a class="button" href="/account/edit">Back</a>', page.text)
        elsewhere = self.client.get(path, headers={"Sec-Fetch-Mode": "navigate", "Referer": "https://evil.example/x"})
        self.assertIn('<a class="button" href="/">Back</a>', elsewhere.text)
        image = self.client.get(path, headers={"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"})
        self.assertEqual(image.header("Content-Type"), "image/svg+xml")
        self.assertIn("Sec-Fetch-Mode", image.header("Vary"))

    def test_svg_public_and_cached_for_a_year(self):
        url = "http://localhost/join/" + self.app.store.account()["join_code"]
        response = Client(self.app).get("/qr_code/" + b64url(url))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("Content-Type"), "image/svg+xml")
        self.assertEqual(response.header("Cache-Control"), "public, max-age=31536000, immutable")
        self.assertEqual(response.text, campfire.qr_svg(url))
        padded = base64.urlsafe_b64encode(url.encode()).decode()  # Rails' urlsafe_encode64 keeps the padding
        self.assertEqual(Client(self.app).get("/qr_code/" + urllib.parse.quote(padded)).text, response.text)

    def test_bad_codes_are_400(self):
        too_long = b64url("http://x/" + "a" * campfire.MAX_QR_CODE_TEXT_BYTES)
        for code in ("not*base64", "a", "ab+c", b64url("ok") + "===",
                     base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="), too_long):
            with self.subTest(code=code[:40]):
                self.assertEqual(Client(self.app).get("/qr_code/" + code).status, 400)
        self.assertEqual(Client(self.app).get("/qr_code/" + b64url("a" * campfire.MAX_QR_CODE_TEXT_BYTES)).status,
                         200)


@unittest.skipUnless(shutil.which("zbarimg") or os.environ.get("CI"), "needs zbarimg (apt-get install zbar-tools)")
class QrCodeDecodeTests(AdminTestCase):
    def test_transfer_link_qr_code_decodes_to_the_exact_url(self):
        from tests.test_qrcode import zbar_decode
        self.assertIsNotNone(shutil.which("zbarimg"), "CI must install zbar-tools")
        page = self.bob.get("/users/me/profile").text
        url = input_value(page, "session_transfer_url")
        qr_path = re.search(r'href="(/qr_code/[^"]+)">Show auto-login QR code', page).group(1)
        svg = Client(self.app).get(qr_path).text
        view = re.search(r'viewBox="0 0 (\d+) (\d+)"', svg)
        side = int(view.group(1))
        border = 4
        size = side - 2 * border
        matrix = [[False] * size for _ in range(size)]
        path = re.search(r'<path fill="#000" d="([^"]*)"', svg).group(1)
        for x, y, run in re.findall(r"M(\d+) (\d+)h(\d+)v1h-\d+z", path):
            for column in range(int(x), int(x) + int(run)):
                matrix[int(y) - border][column - border] = True
        self.assertEqual(zbar_decode(matrix).decode("utf-8"), url)
        phone = Client(self.app)  # and the decoded link signs a phone in
        self.assertEqual(phone.post(urllib.parse.urlsplit(url).path, {"_method": "put"}).status, 303)


class LiveServerTests(unittest.TestCase):
    """Over real sockets, with the server's group commit and event loop."""

    def setUp(self):
        self.server = LiveServer()
        self.addCleanup(self.server.stop)
        app = self.server.app
        Client(app).post("/first_run", {"user[name]": "Ada Admin", "user[email_address]": "ada@example.com",
                                        "user[password]": "secret-one"})
        Client(app).post("/join/" + app.store.account()["join_code"], {
            "user[name]": "Bob Builder", "user[email_address]": "bob@example.com", "user[password]": "secret-two"})
        self.port = self.server.port
        self.ada = sign_in_cookie(self.port, "ada@example.com", "secret-one")
        self.bob = sign_in_cookie(self.port, "bob@example.com", "secret-two")
        self.bob_id = app.store.user_by_email("bob@example.com").id

    def request(self, method, path, cookie, form=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        self.addCleanup(connection.close)
        headers = {"Cookie": "session_token=" + cookie, "Sec-Fetch-Site": "same-origin"}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        response.read()
        return response.status

    def count_messages(self):
        return self.server.call(lambda: self.server.app.db.value(
            "SELECT count(*) FROM messages WHERE creator_id = ?", (self.bob_id,)))

    def test_ban_closes_the_persons_sockets_and_deletes_their_messages(self):
        for index in range(5):
            self.assertEqual(self.request("POST", "/rooms/1/messages", self.bob, {"message[body]": "spam %d" % index}),
                             201)
        cable = CableClient(self.port, self.bob)
        self.addCleanup(cable.close)
        self.assertEqual(cable.recv_json()["type"], "welcome")
        with config_value(self.server.app.config, "message_purge_chunk", 2):
            self.assertEqual(self.request("POST", "/users/%d/ban" % self.bob_id, self.ada), 303)
            message = cable.recv_json()
            self.assertEqual(message, {"type": "disconnect", "reason": "unauthorized", "reconnect": False})
            wait_until(lambda: self.count_messages() == 0, message="the ban left the person's messages")
        self.assertEqual(self.request("GET", "/rooms/1", self.bob), 302)

    def test_deactivation_closes_the_persons_sockets(self):
        cable = CableClient(self.port, self.bob)
        self.addCleanup(cable.close)
        self.assertEqual(cable.recv_json()["type"], "welcome")
        self.assertEqual(self.request("POST", "/account/users/%d" % self.bob_id, self.ada, {"_method": "delete"}), 303)
        self.assertEqual(cable.recv_json()["type"], "disconnect")


if __name__ == "__main__":
    unittest.main()
