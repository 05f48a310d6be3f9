"""The browser app (static/*.js) in Chromium against a real campfire.py: live
messages over /cable, the rich-text composer, message actions, autocomplete,
unread marks, going offline and a phone-sized screen.

Two people share one seeded server: Person 1 (an administrator) and Person 2.
Each test writes its own unique text, so tests don't see each other's messages."""

import http.client
import os
import re
import subprocess
import sys
import time
import unittest
import urllib.parse
import uuid

from tests.browser import ROOT, WAIT_MS, BrowserTestCase, CampfireProcess, browser_available
from tests.helpers import campfire

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - depends on the machine
    expect = None

ADA, BOB = "Person 1", "Person 2"
PHONE = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True, "device_scale_factor": 2}




def cable_constant(name):
    """A timing constant of static/cable.js, so the waits below follow the page's own."""
    with open(os.path.join(ROOT, "static", "cable.js"), encoding="utf-8") as source:
        return float(re.search(r"export const %s = ([\d.]+)" % name, source.read()).group(1))


# Disconnected, a page says it is offline after OFFLINE_AFTER_MS (ms).
OFFLINE_SHOWN_MS = int(cable_constant("OFFLINE_AFTER_MS")) + WAIT_MS
# The server back, a page may first wait out its longest backoff (RECONNECT_MAX_MS, give or
# take RECONNECT_JITTER), then connect and subscribe again (ms).
LIVE_AGAIN_MS = int(cable_constant("RECONNECT_MAX_MS") * (1 + cable_constant("RECONNECT_JITTER"))) + WAIT_MS

# What `campfire.py seed` prints: the administrator's password, made up for each seed.
SEEDED_ADMIN = re.compile(r"Sign in as (\S+) \(an administrator\) with the password '([A-Za-z0-9]+)'")


def seeded_server():
    """A server seeded with three people; server.passwords maps each email to its password."""
    server = CampfireProcess()
    seeded = subprocess.run([sys.executable, os.path.join(ROOT, "campfire.py"), "seed", "--users", "3", "--rooms", "2",
                             "--messages", "30"], env=server.env, check=True, capture_output=True, text=True, timeout=60)
    admin_email, admin_password = SEEDED_ADMIN.search(seeded.stdout).groups()
    server.passwords = {admin_email: admin_password}
    return server.start()


def signed_in_state(server, email):
    """A Playwright storage state holding a fresh session cookie (one sign-in per person:
    sign-ins are rate limited)."""
    password = getattr(server, "passwords", {}).get(email, "password")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("POST", "/session", urllib.parse.urlencode({"email_address": email, "password": password}),
                       {"Content-Type": "application/x-www-form-urlencoded"})
    response = connection.getresponse()
    response.read()
    cookies = [header.split(";")[0].split("=", 1) for header in response.headers.get_all("Set-Cookie") or []]
    connection.close()
    assert cookies, "signing in as %s set no cookie (status %d)" % (email, response.status)
    return {"cookies": [{"name": name, "value": value, "domain": "127.0.0.1", "path": "/", "httpOnly": True,
                         "secure": False, "sameSite": "Lax", "expires": -1} for name, value in cookies], "origins": []}


def unique(text):
    return "%s %s" % (text, uuid.uuid4().hex[:8])


class SeededBrowserTests(BrowserTestCase):
    """One seeded server for the class, and a signed-in browser state (`states`) for
    each of PEOPLE (name → email)."""

    PEOPLE = {ADA: "person1@example.com", BOB: "person2@example.com"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = None
        if not browser_available():
            return
        cls.server = seeded_server()
        cls.addClassCleanup(cls.server.cleanup)
        cls.states = {person: signed_in_state(cls.server, email) for person, email in cls.PEOPLE.items()}


class BrowserApp(SeededBrowserTests):
    """Pages open a room and wait until they are live."""

    def open_room(self, person, room=1, **context_options):
        page = self.new_page(storage_state=self.states[person], **context_options)
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto("%s/rooms/%d" % (self.server.url, room))
        expect(page.locator("body")).to_have_attribute("data-cable", "live")  # every channel confirmed
        return page

    def composer(self, page):
        return page.get_by_role("textbox", name="Write a message")

    def send(self, page, text):
        self.composer(page).click()
        page.keyboard.type(text)
        page.keyboard.press("Enter")

    def message(self, page, text):
        return page.locator("#messages > .message", has_text=text)

    def assert_shown_once(self, page, text):
        expect(self.message(page, text)).to_have_count(1)
        expect(self.message(page, text)).not_to_have_class(re.compile("message--pending"))

    def http(self, person, path, form, expect_status):
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        cookie = "; ".join("%s=%s" % (c["name"], c["value"]) for c in self.states[person]["cookies"])
        connection.request("POST", path, urllib.parse.urlencode(form), {
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie, "Sec-Fetch-Site": "same-origin"})
        self.assertEqual(connection.getresponse().status, expect_status)
        connection.close()


class LiveRoomTests(BrowserApp):
    def test_two_pages_see_each_others_messages_live_exactly_once(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        expect(ada.locator(".room__presence")).to_have_text("Present: %s, %s" % (ADA, BOB))
        expect(bob.locator(".room__presence")).to_have_text("Present: %s, %s" % (ADA, BOB))
        from_ada, from_bob = unique("Hello from Ada"), unique("Hi from Bob")
        self.send(ada, from_ada)
        self.send(bob, from_bob)
        for page in (ada, bob):
            self.assert_shown_once(page, from_ada)
            self.assert_shown_once(page, from_bob)
        # A late echo or 201 must not add a copy: a later message, once shown on both
        # pages, arrived after every echo of the earlier ones (a socket keeps their order).
        later = unique("Later from Ada")
        self.send(ada, later)
        for page in (ada, bob):
            self.assert_shown_once(page, later)
        for page in (ada, bob):
            expect(self.message(page, from_ada)).to_have_count(1)
            expect(page.locator(".message--pending")).to_have_count(0)
        self.screenshot(bob, "app-live-room")

    def test_a_room_page_rebuilt_after_a_post_arrives_gzipped_and_whole(self):
        """The page after a post is rendered afresh and gzipped from its runs of kept messages
        (App.deflated_run) around its own markup: Chromium decodes it to the page sent plain."""
        ada = self.open_room(ADA)
        posted = unique("Spliced page")
        self.send(ada, posted)
        self.assert_shown_once(ada, posted)
        response = ada.reload()
        self.assertEqual(response.headers.get("content-encoding"), "gzip")
        expect(ada.locator("body")).to_have_attribute("data-cable", "live")
        plain = ada.request.get(ada.url, headers={"Accept-Encoding": "identity"})
        self.assertIsNone(plain.headers.get("content-encoding"))
        ids = re.findall(r'<div class="message[^"]*" id="message_(\d+)"', plain.text())
        self.assertGreater(len(ids), 10)  # seeded and posted: more than one run (GZIP_RUN_MESSAGES)
        self.assertEqual(ada.locator("#messages > .message").evaluate_all("nodes => nodes.map(node => node.id)"),
                         ["message_" + found for found in ids])
        self.assert_shown_once(ada, posted)

    def test_markup_typed_or_pasted_never_runs(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        typed = '<img src=x onerror="window.pwned=1"> typed %s' % uuid.uuid4().hex[:8]
        self.send(ada, typed)
        self.assert_shown_once(bob, typed)  # shown as text, not as an element
        self.composer(ada).click()
        ada.evaluate("""() => {
            const data = new DataTransfer()
            data.setData("text/html", '<p>pasted <b>bold</b><img src=x onerror="window.pwned=2"><script>window.pwned=3<\\/script>'
              + '<svg onload="window.pwned=4"></svg><a href="javascript:window.pwned=5">sneaky</a> '
              + '<a href="https://example.com/" onclick="window.pwned=6">fine</a><iframe src="/"></iframe></p>')
            document.activeElement.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }))
        }""")
        editor = self.composer(ada)
        expect(editor.locator("strong")).to_have_text("bold")
        self.assertEqual(editor.locator("img, script, svg, iframe, [onclick]").count(), 0)
        ada.keyboard.type(" marker-%s" % typed[-8:])
        ada.keyboard.press("Enter")
        pasted = self.message(bob, "marker-%s" % typed[-8:])
        expect(pasted.locator(".message__body strong")).to_have_text("bold")
        expect(pasted.locator(".message__body a[href='https://example.com/']")).to_have_text("fine")
        for page in (ada, bob):
            self.assertIsNone(page.evaluate("window.pwned"))
            self.assertEqual(page.locator("#messages img[src=x], #messages script, #messages svg, #messages iframe").count(), 0)
            self.assertEqual(page.locator("#messages a[href^=javascript]").count(), 0)

    def test_edit_and_delete_show_live_in_the_other_page(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        text, adas = unique("Edit me"), unique("Ada's own")
        self.send(ada, adas)
        self.send(bob, text)
        mine = self.message(bob, text)
        expect(mine.get_by_role("link", name="Edit")).to_be_attached()
        for action in (self.message(bob, adas).get_by_role("link", name="Edit"),
                       self.message(bob, adas).get_by_role("button", name="Delete")):
            expect(action).to_be_hidden()  # a member edits and deletes only their own
        expect(self.message(ada, text).get_by_role("link", name="Edit")).to_be_attached()  # an administrator, all
        mine.hover()
        mine.get_by_role("link", name="Edit").click()
        editor = bob.get_by_role("textbox", name="Edit message")
        expect(editor).to_be_focused()
        bob.keyboard.press("End")
        bob.keyboard.type(" (fixed)")
        bob.get_by_role("button", name="Save changes").click()
        expect(self.message(ada, text + " (fixed)")).to_have_count(1)
        expect(self.message(ada, text + " (fixed)").locator(".message__edited")).to_be_visible()
        mine = self.message(bob, text)
        mine.hover()
        mine.get_by_role("button", name="Delete").click()
        expect(self.message(ada, text)).to_have_count(0)
        expect(self.message(bob, text)).to_have_count(0)

    def test_boost_and_typing_show_live(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        self.composer(ada).click()
        ada.keyboard.type("thinking")
        expect(bob.locator(".typing-indicator")).to_have_text("%s is typing…" % ADA)
        ada.keyboard.press("Control+A")
        ada.keyboard.press("Backspace")
        expect(bob.locator(".typing-indicator")).to_have_text("")

        text = unique("Boost me")
        self.send(bob, text)
        message = self.message(ada, text)
        message.hover()
        message.get_by_role("link", name="Boost").click()
        ada.get_by_role("button", name="Boost with 🎉").click()
        expect(self.message(bob, text).locator(".boost")).to_contain_text("🎉")
        expect(self.message(ada, text).locator(".boost")).to_have_count(1)
        expect(self.message(ada, text).locator(".boost__remove")).not_to_have_attribute("hidden", "")
        expect(self.message(bob, text).locator(".boost__remove")).to_be_hidden()  # not Bob's boost

        message.hover()
        message.get_by_role("link", name="Boost").click()
        ada.get_by_role("textbox", name="Write a boost").fill("nice one")
        ada.keyboard.press("Enter")
        expect(self.message(bob, text).locator(".boost")).to_have_count(2)

    def test_unread_mark_appears_for_another_room_with_new_messages(self):
        ada = self.open_room(ADA, room=1)
        bob = self.open_room(BOB, room=2)
        room_two = ada.locator("#user_sidebar .sidebar__room[data-room-id='2']")
        expect(room_two).not_to_have_class(re.compile("sidebar__room--unread"))
        self.send(bob, unique("News in room two"))
        expect(room_two).to_have_class(re.compile("sidebar__room--unread"))
        expect(room_two).to_contain_text("(unread)")
        self.send(ada, unique("Meanwhile in room one"))  # our own room stays read
        expect(bob.locator("#user_sidebar .sidebar__room[data-room-id='1']")).to_have_class(re.compile("sidebar__room--unread"))
        expect(ada.locator("#user_sidebar .sidebar__room[data-room-id='1']")).not_to_have_class(re.compile("--unread"))
        room_two.click()
        ada.wait_for_url("**/rooms/2")
        expect(ada.locator("#user_sidebar .sidebar__room[data-room-id='2']")).not_to_have_class(re.compile("--unread"))

    def test_copy_link_puts_the_absolute_permalink_on_the_clipboard(self):
        ada = self.open_room(ADA, permissions=["clipboard-read", "clipboard-write"])
        message = ada.locator("#messages > .message[data-message-id]").last
        message.hover()
        message.get_by_role("link", name="Copy link").click()
        expect(message.get_by_role("status")).to_have_text("Copied")
        permalink = "%s/rooms/1/@%s" % (self.server.url, message.get_attribute("data-message-id"))
        self.assertEqual(ada.evaluate("navigator.clipboard.readText()"), permalink)

    def test_keyboard_only_send_and_edit_with_the_up_arrow(self):
        ada = self.open_room(ADA)
        self.composer(ada).focus()
        first, second = unique("Line one"), unique("line two")
        ada.keyboard.type(first)
        ada.keyboard.press("Shift+Enter")
        ada.keyboard.type(second)
        ada.keyboard.press("Enter")
        sent = self.message(ada, first)
        self.assert_shown_once(ada, first)
        expect(sent.locator(".message__body br")).to_have_count(1)
        expect(sent.locator(".message__body")).to_contain_text(second)
        expect(self.composer(ada)).to_be_focused()

        ada.keyboard.press("ArrowUp")
        editor = ada.get_by_role("textbox", name="Edit message")
        expect(editor).to_be_focused()
        ada.keyboard.press("Escape")
        expect(editor).to_have_count(0)
        expect(self.composer(ada)).to_be_focused()

        ada.keyboard.press("ArrowUp")
        expect(editor).to_be_focused()
        ada.keyboard.press("Control+End")
        ada.keyboard.type(" edited")
        ada.keyboard.press("Enter")
        expect(sent.locator(".message__body")).to_contain_text(second + " edited")
        expect(editor).to_have_count(0)

    def test_what_is_typed_before_the_scripts_run_moves_into_the_editor_and_is_sent(self):
        # On a slow phone the page's plain textarea takes typing a second or more before the
        # scripts replace it with the editor: nothing typed meanwhile may be lost.
        page = self.new_page(storage_state=self.states[ADA], service_workers="block")
        held, module = [], re.compile(r".*/static/composer\.js(\?.*)?$")
        page.route(module, lambda route: held.append(route))
        page.goto("%s/rooms/1" % self.server.url, wait_until="commit")  # its modules wait for composer.js
        textarea = page.locator("#composer textarea")
        expect(textarea).to_be_visible()
        first, second = unique("Typed before the scripts"), unique("and a second line")
        textarea.click()
        page.keyboard.type(first)
        page.keyboard.press("Enter")
        page.keyboard.type(second)
        deadline = time.monotonic() + WAIT_MS / 1000
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        self.assertTrue(held, "the page asked for composer.js")
        expect(page.locator("#composer [contenteditable]")).to_have_count(0)  # the editor waits for its module
        for route in held:
            route.continue_()
        page.unroute(module)
        editor = self.composer(page)
        expect(editor).to_contain_text(first)
        expect(editor).to_contain_text(second)
        expect(editor).to_be_focused()
        expect(textarea).to_be_hidden()
        expect(page.locator("body")).to_have_attribute("data-cable", "live")
        page.keyboard.press("Enter")
        self.assert_shown_once(page, first)
        expect(self.message(page, first).locator(".message__body")).to_contain_text(second)
        expect(editor).to_have_text("")

    def test_up_arrow_edits_the_message_when_a_newer_copy_replaced_it_while_the_editor_opened(self):
        # The editor opens once the stored body has come back; a copy arriving meanwhile (the
        # send's live echo after its answer, a boost, an edit elsewhere) replaces the message.
        ada = self.open_room(ADA)
        text = unique("Replaced while opening")
        self.send(ada, text)
        self.assert_shown_once(ada, text)
        message_id = self.message(ada, text).get_attribute("data-message-id")
        held = []
        ada.route("**/rooms/1/messages/%s/edit" % message_id, lambda route: held.append(route))
        with ada.expect_request(lambda request: request.url.endswith("/messages/%s/edit" % message_id)):
            ada.keyboard.press("ArrowUp")
        self.http(BOB, "/messages/%s/boosts" % message_id, {"boost[content]": "👀"}, expect_status=201)
        expect(self.message(ada, text).locator(".boost")).to_contain_text("👀")  # the message was replaced
        self.assertEqual(len(held), 1)
        held[0].continue_()
        editor = ada.get_by_role("textbox", name="Edit message")
        expect(editor).to_be_focused()
        expect(editor).to_have_count(1)
        ada.keyboard.press("Control+End")
        ada.keyboard.type(" edited")
        ada.keyboard.press("Enter")
        expect(self.message(ada, text + " edited")).to_have_count(1)
        expect(editor).to_have_count(0)

    def test_the_toolbar_and_shortcuts_format_a_message(self):
        ada = self.open_room(ADA)
        self.composer(ada).click()
        marker = unique("Formatted")
        ada.get_by_role("button", name="Bulleted list").click()
        ada.keyboard.type(marker + " ")
        ada.keyboard.press("Control+B")
        ada.keyboard.type("bold")
        expect(ada.get_by_role("button", name="Bold")).to_have_attribute("aria-pressed", "true")
        ada.keyboard.press("Control+Shift+7")  # the bullets become numbers
        ada.keyboard.press("Enter")
        body = self.message(ada, marker).locator(".message__body")
        expect(body.locator("ol > li strong")).to_have_text("bold")
        self.composer(ada).click()
        ada.get_by_role("button", name="Quote").click()
        ada.keyboard.type("quoted " + marker)
        ada.get_by_role("button", name="Quote").click()  # and out again
        ada.keyboard.press("Enter")
        expect(self.message(ada, "quoted " + marker).locator(".message__body blockquote")).to_have_count(0)

    def test_mentions_and_sounds_autocomplete(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        self.composer(ada).click()
        ada.keyboard.type("Look @Person")
        options = ada.get_by_role("listbox").get_by_role("option")
        expect(options.first).to_be_visible()
        expect(ada.get_by_role("listbox").get_by_role("option", name=BOB)).to_be_visible()
        while ada.get_by_role("option", selected=True).inner_text() != BOB:
            ada.keyboard.press("ArrowDown")
        ada.keyboard.press("Enter")
        expect(self.composer(ada).locator(".mention-chip")).to_have_text("@" + BOB)
        marker = unique("mentioned")
        ada.keyboard.type(marker)
        ada.keyboard.press("Enter")
        expect(self.message(bob, marker).locator(".mention")).to_have_text(BOB)

        ada.keyboard.type("/play tad")
        expect(ada.get_by_role("option", name="tada")).to_be_visible()
        ada.keyboard.press("Tab")
        expect(ada.get_by_role("listbox")).to_be_hidden()
        ada.keyboard.press("Enter")
        expect(bob.locator("#messages > .message[data-sound=tada]").last).to_contain_text("plays a fanfare")

    def test_a_sound_typed_in_full_is_sent_by_enter(self):
        ada = self.open_room(ADA)
        before = ada.locator("#messages > .message[data-sound='rimshot']").count()
        self.composer(ada).click()
        ada.keyboard.type("/play rimshot")
        ada.keyboard.press("Enter")
        expect(ada.locator("#messages > .message[data-sound='rimshot']")).to_have_count(before + 1)
        expect(self.composer(ada)).to_have_text("")

    def test_a_send_without_an_answer_is_sent_again_by_itself_and_kept_once(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        self.allow_error("net::ERR_FAILED")
        ada.route("**/rooms/1/messages", lambda route: route.abort() if route.request.method == "POST" else route.continue_())
        text = unique("Try again")
        self.send(ada, text)
        waiting = self.message(ada, text)
        expect(waiting.get_by_role("status")).to_have_text("Waiting for the connection…")
        expect(waiting).not_to_have_class(re.compile("message--failed"))
        ada.unroute("**/rooms/1/messages")
        self.assert_shown_once(ada, text)
        self.assert_shown_once(bob, text)

    def test_a_send_the_server_failed_can_be_retried_and_is_kept_once(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        self.allow_error("status of 500")
        ada.route("**/rooms/1/messages", lambda route: route.fulfill(status=500, body="Oops")
                  if route.request.method == "POST" else route.continue_())
        text = unique("Server trouble")
        self.send(ada, text)
        failed = self.message(ada, text)
        expect(failed).to_have_class(re.compile("message--failed"))
        expect(failed.get_by_role("status")).to_contain_text("Not sent")
        ada.unroute("**/rooms/1/messages")
        failed.get_by_role("button", name="Retry").click()
        self.assert_shown_once(ada, text)
        self.assert_shown_once(bob, text)

    def test_a_phone_sized_screen_can_send_and_reach_actions(self):
        phone = self.open_room(ADA, **PHONE)
        text = unique("From my phone")
        self.composer(phone).tap()
        phone.keyboard.type(text)
        phone.get_by_role("button", name="Send Message").tap()
        self.assert_shown_once(phone, text)
        message = self.message(phone, text)
        expect(message).to_be_in_viewport()
        message.locator(".message__body").tap()   # its actions appear on tap
        message.get_by_role("link", name="Boost").tap()
        expect(phone.get_by_role("button", name="Boost with 👍")).to_be_in_viewport()
        phone.get_by_role("button", name="Boost with 👍").tap()
        expect(message.locator(".boost")).to_contain_text("👍")
        self.screenshot(phone, "app-phone")


    def test_on_a_phone_the_top_bar_keeps_every_link_on_the_screen(self):
        phone = self.open_room(ADA, **PHONE)
        phone.get_by_role("link", name="Rooms").tap()  # the room list is a screen of its own
        expect(phone).to_have_url(re.compile(r"/users/me/sidebar$"))
        for path in ("/users/me/sidebar", "/searches?q=phone", "/users/me/profile"):
            with self.subTest(path=path):
                phone.goto(self.server.url + path)
                for name in ("Account", "Sign out"):
                    expect(phone.locator(".topbar").get_by_role("button", name=name).or_(
                        phone.locator(".topbar").get_by_role("link", name=name))).to_be_in_viewport(ratio=1)
                outside = phone.evaluate("""() => [...document.querySelectorAll('.topbar *')].filter(e => {
                    const r = e.getBoundingClientRect();
                    return r.width && (r.left < 0 || r.right > document.documentElement.clientWidth); }).length""")
                self.assertEqual(outside, 0)
                search, brand = (phone.locator(".topbar__search").bounding_box(),
                                 phone.locator(".topbar__brand:visible, .topbar__rooms:visible").first.bounding_box())
                self.assertGreaterEqual(search["x"], brand["x"] + brand["width"])  # side by side, not over it
        self.screenshot(phone, "app-phone-rooms")


class OfflineTests(BrowserApp):
    def test_offline_keeps_the_composer_usable_and_reconnecting_catches_up(self):
        self.allow_error("WebSocket connection to")
        ada = self.open_room(ADA)
        self.server.stop()
        expect(ada.get_by_role("status").filter(has_text="offline")).to_be_visible(timeout=OFFLINE_SHOWN_MS)
        expect(self.composer(ada)).to_have_attribute("contenteditable", "true")
        expect(ada.get_by_role("button", name="Send Message")).to_be_enabled()
        self.server.start()
        missed = unique("Sent while you were away")
        bob = self.open_room(BOB)
        self.send(bob, missed)
        expect(ada.locator("body")).to_have_attribute("data-cable", "live", timeout=LIVE_AGAIN_MS)
        expect(ada.locator(".offline-banner")).to_be_hidden()
        expect(self.composer(ada)).to_have_attribute("contenteditable", "true")
        self.assert_shown_once(ada, missed)

    def test_a_restart_with_both_pages_open_ends_with_every_message_shown_once(self):
        self.allow_error("WebSocket connection to")
        self.allow_error("net::ERR_CONNECTION_REFUSED")
        self.allow_error("Failed to load resource")
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        before, doomed = unique("Before the restart"), unique("Deleted while the pages were away")
        self.send(ada, before)
        self.send(ada, doomed)
        self.assert_shown_once(bob, before)
        self.assert_shown_once(bob, doomed)
        doomed_id = self.message(ada, doomed).get_attribute("data-message-id")
        self.server.stop()
        expect(bob.get_by_role("status").filter(has_text="offline")).to_be_visible(timeout=OFFLINE_SHOWN_MS)
        self.server.start()
        during = unique("Posted while the pages were away")
        self.http(BOB, "/rooms/1/messages", {"message[body]": "<div>%s</div>" % during,
                                              "message[client_message_id]": uuid.uuid4().hex}, expect_status=201)
        self.http(ADA, "/rooms/1/messages/%s" % doomed_id, {"_method": "delete"}, expect_status=204)
        for page in (ada, bob):
            expect(page.locator("body")).to_have_attribute("data-cable", "live", timeout=LIVE_AGAIN_MS)
        after = unique("After the restart")
        self.send(bob, after)
        for page in (ada, bob):
            for text in (before, during, after):
                self.assert_shown_once(page, text)
            expect(self.message(page, doomed)).to_have_count(0)

    def test_a_message_posted_before_the_room_is_subscribed_again_is_caught_up(self):
        # After a reconnect's welcome the page subscribes to the room again; a message posted
        # before the server confirms that goes to nobody live here, so the catch-up has to come after.
        refuse, hold, held, sockets = [False], [False], [], []

        def cable(socket):
            if refuse[0]:
                return socket.close()
            server = socket.connect_to_server()
            sockets.append(socket)

            def to_server(frame):
                if hold[0] and '"command":"subscribe"' in frame and "RoomMessagesChannel" in frame:
                    return held.append((server, frame))
                server.send(frame)
            socket.on_message(to_server)
        ada = self.new_page(storage_state=self.states[ADA])
        ada.add_init_script("""(() => {   // each /refresh the page asks for, and whether it was answered
            const fetch = window.fetch
            window.refreshes = []
            window.fetch = function (resource, options) {
                const asked = fetch.call(this, resource, options), url = String(resource.url ?? resource)
                if (url.includes("/refresh?")) {
                    const entry = { url, answered: false }
                    refreshes.push(entry)
                    asked.then(() => { entry.answered = true }, () => { entry.answered = true })
                }
                return asked
            }
        })()""")
        ada.route_web_socket(re.compile(r"/cable$"), cable)
        ada.goto("%s/rooms/1" % self.server.url)
        expect(ada.locator("body")).to_have_attribute("data-cable", "live")
        refuse[0] = True
        for socket in sockets:
            socket.close()
        expect(ada.locator("body")).not_to_have_attribute("data-cable", "live")
        hold[0], refuse[0] = True, False
        ada.evaluate("dispatchEvent(new Event('online'))")  # the network is back: reconnect now
        deadline = time.monotonic() + WAIT_MS / 1000
        while not held and time.monotonic() < deadline:   # welcomed, the room's subscribe held back
            ada.evaluate("new Promise((resolve) => setTimeout(resolve, 50))")
        self.assertEqual(len(held), 1, "the page did not subscribe to the room again")
        ada.wait_for_function("refreshes.every((entry) => entry.answered)")  # any catch-up asked so far is done
        missed = unique("Posted before the room was confirmed")
        self.http(BOB, "/rooms/1/messages", {"message[body]": "<div>%s</div>" % missed,
                                              "message[client_message_id]": uuid.uuid4().hex}, expect_status=201)
        hold[0] = False
        for server, frame in held:
            server.send(frame)
        expect(ada.locator("body")).to_have_attribute("data-cable", "live")
        self.assert_shown_once(ada, missed)

    def test_catching_up_pages_through_more_missed_messages_than_one_refresh_holds(self):
        refuse, sockets, refreshes = [False], [], []

        def cable(socket):  # /cable as usual, except while refused (the network is "down")
            if refuse[0]:
                return socket.close()
            sockets.append(socket)
            socket.connect_to_server()
        ada = self.new_page(storage_state=self.states[ADA])
        ada.route_web_socket(re.compile(r"/cable$"), cable)
        ada.on("request", lambda request: "/refresh?" in request.url and refreshes.append(request.url))
        ada.goto("%s/rooms/2" % self.server.url)
        expect(ada.locator("body")).to_have_attribute("data-cable", "live")
        refuse[0] = True
        for socket in sockets:
            socket.close()
        expect(ada.locator("body")).not_to_have_attribute("data-cable", "live")
        tag = uuid.uuid4().hex[:8]
        missed = ["Missed %s %03d" % (tag, index) for index in range(2 * campfire.REFRESH_PAGE_SIZE + 5)]
        for text in missed:
            self.http(BOB, "/rooms/2/messages", {"message[body]": "<div>%s</div>" % text,
                                                  "message[client_message_id]": uuid.uuid4().hex}, expect_status=201)
        refuse[0] = False
        ada.evaluate("dispatchEvent(new Event('online'))")  # the network is back: reconnect now
        expect(ada.locator("body")).to_have_attribute("data-cable", "live")
        shown = ada.locator("#messages > .message", has_text="Missed %s" % tag)
        expect(shown).to_have_count(len(missed))
        texts = shown.locator(".message__body").all_inner_texts()
        self.assertEqual([text.strip() for text in texts], missed)  # each once, in order
        self.assertGreaterEqual(len(refreshes), 3, refreshes)  # a page holds 40: three pages at least
        self.assertTrue(all("cursor=" in url for url in refreshes[1:]), refreshes)


class RoomsAndPeopleTests(BrowserApp):
    def test_a_room_created_in_one_page_appears_in_the_others_sidebar(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        name = unique("Launch")
        ada.get_by_role("link", name="New room").click()
        ada.get_by_label("Name this room").fill(name)
        ada.get_by_role("button", name="Save").click()
        ada.wait_for_url(re.compile(r"/rooms/\d+$"))
        expect(ada.get_by_role("heading", level=1)).to_have_text(name)
        expect(bob.locator("#shared_rooms").get_by_role("link", name=name)).to_be_visible()

    def test_new_ping_to_a_second_person(self):
        ada = self.open_room(ADA)
        ada.get_by_role("link", name="New Ping").click()
        ada.get_by_label(BOB).check()
        ada.get_by_role("button", name="Start Ping").click()
        ada.wait_for_url(re.compile(r"/rooms/\d+$"))
        expect(ada.get_by_role("heading", level=1)).to_have_text("Ping with %s" % BOB)
        text = unique("Just between us")
        self.send(ada, text)
        self.assert_shown_once(ada, text)
        expect(ada.locator("#direct_rooms").get_by_role("link", name=BOB)).to_be_visible()

    def test_search_finds_a_message(self):
        ada = self.open_room(ADA)
        word = "needle%s" % uuid.uuid4().hex[:8]
        self.send(ada, "Where is the %s today" % word)
        self.assert_shown_once(ada, word)
        search = ada.get_by_role("searchbox", name="Search messages").first
        search.fill(word)
        search.press("Enter")
        ada.wait_for_url(re.compile(r"/searches\?q="))
        expect(ada.locator("#search-results .message", has_text=word)).to_have_count(1)


if __name__ == "__main__":
    unittest.main()
