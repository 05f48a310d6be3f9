"""Everyday use in Chromium: the keyboard (the composer focused, the skip link, the
room switcher), Markdown typed and pasted, the bell's menu and hidden rooms, icons,
a phone at 390×844, the small feedback a team expects, writing while offline, and
new messages announced to screen readers.

Person 1 (an administrator) and Person 2 share one seeded server."""

import re
import sqlite3
import os
import unittest
import uuid

from tests.test_browser_app import ADA, BOB, LIVE_AGAIN_MS, OFFLINE_SHOWN_MS, PHONE, BrowserApp, unique

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - depends on the machine
    expect = None

EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF]")


class KeyboardTests(BrowserApp):
    def test_the_composer_has_the_focus_on_load_and_after_switching_rooms_with_ctrl_k(self):
        ada = self.open_room(ADA)
        expect(self.composer(ada)).to_be_focused()

        ada.keyboard.press("Control+K")
        switcher = ada.get_by_role("dialog", name="Switch rooms")
        expect(switcher).to_be_visible()
        finder = switcher.get_by_role("combobox", name="Find a room or a person")
        expect(finder).to_be_focused()
        ada.keyboard.type("room 02")
        expect(switcher.get_by_role("option")).to_have_count(1)
        expect(switcher.get_by_role("option").first).to_contain_text("Room 02")
        ada.keyboard.press("Enter")
        ada.wait_for_url("**/rooms/2")
        expect(ada.get_by_role("heading", level=1)).to_have_text("Room 02")
        expect(self.composer(ada)).to_be_focused()

        ada.keyboard.press("Control+K")   # people too, and Escape closes without going anywhere
        ada.keyboard.type("Person 2")
        expect(switcher.get_by_role("option", name=re.compile("Person 2"))).to_be_visible()
        ada.keyboard.press("Escape")
        expect(switcher).to_be_hidden()
        self.assertTrue(ada.url.endswith("/rooms/2"))

    def test_skip_to_composer_is_first_in_the_tab_order(self):
        ada = self.open_room(ADA)
        # Where a freshly opened page starts: the focus on the document itself.
        ada.evaluate("() => { const root = document.documentElement; root.tabIndex = -1; root.focus(); "
                     "root.removeAttribute('tabindex') }")
        ada.keyboard.press("Tab")
        skip = ada.get_by_role("link", name="Skip to composer")
        expect(skip).to_be_focused()
        expect(skip).to_be_in_viewport()
        ada.keyboard.press("Enter")
        expect(self.composer(ada)).to_be_focused()
        text = unique("Sent by keyboard alone")
        ada.keyboard.type(text)
        ada.keyboard.press("Enter")
        self.assert_shown_once(ada, text)


class MarkdownTests(BrowserApp):
    def test_markdown_typed_in_the_composer_becomes_rich_text(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        marker = unique("Markdown")
        self.composer(ada).click()
        ada.keyboard.type(marker + " is **bold** and _leaning_ with `code()` ok")
        editor = self.composer(ada)
        expect(editor.locator("strong")).to_have_text("bold")
        expect(editor.locator("em")).to_have_text("leaning")
        expect(editor.locator("code")).to_have_text("code()")
        ada.keyboard.press("Enter")
        body = self.message(bob, marker).locator(".message__body")
        expect(body.locator("strong")).to_have_text("bold")
        expect(body.locator("em")).to_have_text("leaning")
        expect(body.locator("code")).to_have_text("code()")
        expect(body).not_to_contain_text("**")
        self.assertNotIn("\u200b", body.inner_html())

        for line, selector, expected in (("> ", "blockquote", "quoted"), ("- ", "ul > li", "first item"),
                                         ("1. ", "ol > li", "numbered"), ("```", "pre", "x = 1")):
            with self.subTest(shortcut=line):
                tagged = unique(expected)
                self.composer(ada).click()
                ada.keyboard.type(line)
                ada.keyboard.type(tagged)
                expect(self.composer(ada).locator(selector)).to_have_text(tagged)
                ada.keyboard.press("Enter")
                sent = self.message(bob, tagged).locator(".message__body " + selector)
                expect(sent).to_have_text(tagged)

    def test_markdown_pasted_is_converted_the_same_way(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        marker = unique("Pasted")
        self.composer(ada).click()
        ada.evaluate("""(text) => {
            const data = new DataTransfer()
            data.setData("text/plain", text)
            document.activeElement.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }))
        }""", "%s **strong**\n- one\n- two\n> said\n```\nprint(1)\n```" % marker)
        editor = self.composer(ada)
        expect(editor.locator("strong")).to_have_text("strong")
        expect(editor.locator("ul > li")).to_have_count(2)
        expect(editor.locator("blockquote")).to_have_text("said")
        expect(editor.locator("pre")).to_have_text("print(1)")
        ada.get_by_role("button", name="Send Message").click()
        body = self.message(bob, marker).locator(".message__body")
        expect(body.locator("strong")).to_have_text("strong")
        expect(body.locator("ul > li")).to_have_count(2)
        expect(body.locator("blockquote")).to_have_text("said")
        expect(body.locator("pre")).to_have_text("print(1)")


class BellAndIconTests(BrowserApp):
    def test_the_bell_is_a_menu_and_hidden_rooms_can_be_brought_back(self):
        bob = self.open_room(BOB, room=2)
        bell = bob.locator("details.bell > summary")
        expect(bell).to_have_accessible_name(re.compile("^Notifications: Notify on mentions"))
        bell.click()
        menu = bob.get_by_role("group", name="Notifications")
        labels = ["Notify on mentions", "Notify on every message", "No notifications", "Hidden from the sidebar"]
        expect(menu.get_by_role("button")).to_have_text(labels)
        icons = menu.get_by_role("button").evaluate_all(
            "buttons => buttons.map((button) => getComputedStyle(button, '::before').maskImage)")
        self.assertEqual(len(set(icons)), 4, icons)  # four icons, one per state
        self.assertTrue(all("svg" in icon for icon in icons), icons)
        expect(menu.get_by_role("button", name="Notify on mentions")).to_have_attribute("aria-pressed", "true")
        menu.get_by_role("button", name="No notifications").click()
        expect(bob.locator("details.bell > summary")).to_have_accessible_name(re.compile("No notifications"))
        expect(bob.locator("details.bell > summary")).to_be_focused()

        bob.locator("details.bell > summary").click()
        bob.get_by_role("group", name="Notifications").get_by_role("button", name="Hidden from the sidebar").click()
        hidden = bob.get_by_role("list", name="Hidden rooms")
        expect(bob.locator("#shared_rooms .sidebar__room[data-room-id='2']")).to_have_count(0)
        bob.locator(".sidebar__hidden > summary").click()
        expect(hidden.get_by_role("link", name="Room 02")).to_be_visible()
        hidden.get_by_role("button", name="Show Room 02 in the sidebar").click()
        bob.wait_for_url("**/rooms/2")
        expect(bob.locator("#shared_rooms .sidebar__room[data-room-id='2']")).to_have_count(1)
        expect(bob.get_by_role("list", name="Hidden rooms")).to_have_count(0)

    def test_every_icon_is_svg_not_an_emoji(self):
        ada = self.open_room(ADA)
        controls = ada.locator(".room__header button, .room__header a, .room__header summary, .toolbar button, "
                               ".composer button, .message__actions :is(a, button)")
        texts = controls.evaluate_all("items => items.map((item) => item.textContent)")
        self.assertEqual([text for text in texts if EMOJI.search(text)], [])
        for name in ("Mute sounds", "Link", "Quote", "Code block", "Bulleted list", "Numbered list"):
            with self.subTest(name):
                button = ada.get_by_role("button", name=name)
                self.assertEqual(button.inner_text().strip(), "")
                self.assertIn("svg", button.evaluate("(item) => getComputedStyle(item, '::before').maskImage"))
                self.assertGreaterEqual(button.evaluate("(item) => parseFloat(getComputedStyle(item, '::before').width)"), 16)


class PhoneTests(BrowserApp):
    def test_a_phone_shows_a_messages_actions_on_tap_for_that_message_only(self):
        phone = self.open_room(ADA, **PHONE)
        tall = unique("Tall") + "".join("\nline %d" % n for n in range(60))
        self.composer(phone).tap()
        phone.evaluate("(text) => { document.activeElement.innerText = text; document.activeElement.dispatchEvent(new Event('input', { bubbles: true })) }", tall)
        phone.get_by_role("button", name="Send Message").tap()
        message = self.message(phone, tall.split("\n")[0])
        expect(message).to_have_count(1)
        expect(message).not_to_have_class(re.compile("message--pending"))
        visible_actions = phone.locator(".message__actions:visible")
        expect(visible_actions).to_have_count(0)   # no toolbar under every message
        message.locator(".message__body").tap(position={"x": 40, "y": 30})
        expect(visible_actions).to_have_count(1)
        expect(message.locator(".message__actions")).to_be_visible()
        boost = message.get_by_role("link", name="Boost")
        expect(boost).to_be_in_viewport()
        box = boost.bounding_box()
        self.assertGreaterEqual(min(box["width"], box["height"]), 24)
        message.locator(".message__body").evaluate("(body) => body.closest('.messages').scrollBy(0, 600)")
        expect(boost).to_be_in_viewport()   # a tall message's actions stay on screen
        self.screenshot(phone, "phone-actions-on-tap")
        message.locator(".message__body").tap(position={"x": 40, "y": 30})
        expect(visible_actions).to_have_count(0)

        other = phone.locator("#messages > .message:not(.message--followup)").first
        other.locator(".message__body").dispatch_event("contextmenu")   # a long press
        expect(other.locator(".message__actions")).to_be_visible()
        expect(visible_actions).to_have_count(1)

    def test_a_phones_top_bar_keeps_the_room_name_one_menu_and_a_presence_count(self):
        phone, _ = self.open_room(ADA, **PHONE), self.open_room(BOB)
        expect(phone.locator(".topbar")).to_be_hidden()
        expect(phone.get_by_role("heading", level=1)).to_be_visible()
        expect(phone.get_by_role("link", name="Rooms")).to_be_visible()
        header_buttons = phone.locator(".room__header").get_by_role("button").filter(visible=True)
        expect(header_buttons).to_have_count(1)
        expect(header_buttons).to_have_accessible_name("Room menu")
        expect(phone.locator(".room__presence")).to_have_attribute("data-count", "2 here")
        self.assertEqual(phone.locator(".room__presence").evaluate("(line) => getComputedStyle(line, '::before').content"),
                         '"2 here"')
        header_buttons.tap()
        menu = phone.locator("#room_tools")
        for name in ("Room settings", "Search", "Account", "Your profile"):
            expect(menu.get_by_role("link", name=name)).to_be_visible()
        expect(menu.get_by_role("button", name="Mute sounds")).to_be_visible()
        self.screenshot(phone, "phone-room-menu")

    def test_touch_targets_are_at_least_24_px_and_the_rooms_screen_has_main_and_h1(self):
        phone = self.open_room(ADA, **PHONE)
        sizes = phone.locator("#messages .message__author:visible, #messages .message__permalink:visible").evaluate_all(
            "links => links.map((link) => { const box = link.getBoundingClientRect(); return [box.width, box.height] })")
        self.assertTrue(sizes)
        self.assertEqual([size for size in sizes if min(size) < 24], [])
        phone.get_by_role("link", name="Rooms").tap()
        phone.wait_for_url("**/users/me/sidebar")
        main = phone.get_by_role("main")
        expect(main).to_have_count(1)
        expect(main.get_by_role("heading", level=1, name="Rooms")).to_be_visible()
        expect(main.get_by_role("link", name="Room 01")).to_be_visible()


class FeedbackTests(BrowserApp):
    def test_day_separators_big_emoji_and_a_reply_that_names_its_author(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        expect(ada.locator("#messages > h2.day-separator").first).to_have_text("Today")
        times = ada.locator("#messages .message__permalink time").all_inner_texts()
        self.assertFalse([time for time in times if "," in time], times)  # the day is in the separator

        self.send(bob, "🎉🎉")
        big = ada.locator("#messages > .message.message--emoji").last
        expect(big).to_contain_text("🎉🎉")
        size = big.locator(".message__body").evaluate("(body) => parseFloat(getComputedStyle(body).fontSize)")
        self.assertGreaterEqual(size, 28)

        quoted = unique("Worth quoting")
        self.send(bob, quoted)
        message = self.message(ada, quoted)
        message.hover()
        message.get_by_role("button", name="Reply", exact=True).click()
        cite = self.composer(ada).locator("cite")
        expect(cite).to_have_text(BOB)
        expect(cite.get_by_role("link", name=BOB)).to_have_count(1)

    def test_long_names_end_in_an_ellipsis_and_the_composer_states_its_limit(self):
        ada = self.open_room(ADA)
        ada.evaluate("document.querySelector('#shared_rooms .sidebar__name').textContent = 'A very '.repeat(20)")
        name = ada.locator("#shared_rooms .sidebar__name").first
        self.assertEqual(name.evaluate("(item) => getComputedStyle(item).textOverflow"), "ellipsis")
        self.assertGreater(name.evaluate("(item) => item.scrollWidth"), name.evaluate("(item) => item.clientWidth"))

        limit = int(ada.locator("#composer").get_attribute("data-max-chars"))
        self.composer(ada).click()
        ada.evaluate("(count) => { const editor = document.activeElement; editor.textContent = 'x'.repeat(count); "
                     "editor.dispatchEvent(new Event('input', { bubbles: true })) }", limit + 10)
        status = ada.locator(".composer__limit")
        expect(status).to_be_visible()
        expect(status).to_contain_text("over the limit")
        before = ada.locator("#messages > .message").count()
        ada.get_by_role("button", name="Send Message").click()
        # A send empties the composer at once, in the click's own task: still full, nothing was sent.
        self.assertEqual(self.composer(ada).evaluate("(editor) => editor.textContent.length"), limit + 10)
        self.assertEqual(ada.locator("#messages > .message").count(), before)  # nothing sent, nothing failed
        self.composer(ada).evaluate("(editor) => { editor.textContent = 'short'; "
                                    "editor.dispatchEvent(new Event('input', { bubbles: true })) }")
        expect(status).to_be_hidden()

    def test_jump_to_latest_and_the_offline_banner_cover_nothing(self):
        self.allow_error("WebSocket connection to")
        ada = self.open_room(ADA, viewport={"width": 1000, "height": 420})
        ada.locator("#messages").hover()
        ada.mouse.wheel(0, -3000)   # the reader scrolls up
        jump = ada.get_by_role("button", name="Jump to latest")
        expect(jump).to_be_visible()
        jump_box, list_box = jump.bounding_box(), ada.locator("#messages").bounding_box()
        self.assertGreaterEqual(jump_box["y"], list_box["y"] + list_box["height"] - 0.5)  # below the messages
        ada.context.set_offline(True)
        banner = ada.locator(".offline-banner")
        expect(banner).to_be_visible(timeout=OFFLINE_SHOWN_MS)
        banner_box = banner.bounding_box()
        search_box = ada.get_by_role("searchbox", name="Search messages").bounding_box()
        self.assertLessEqual(banner_box["y"] + banner_box["height"], search_box["y"] + 0.5)
        ada.context.set_offline(False)
        expect(ada.locator("body")).to_have_attribute("data-cable", "live", timeout=LIVE_AGAIN_MS)


class OfflineSendingTests(BrowserApp):
    def test_messages_written_offline_are_sent_in_order_once_when_the_connection_returns(self):
        self.allow_error("WebSocket connection to")
        self.allow_error("Failed to load resource")
        ada = self.open_room(ADA)
        self.server.stop()
        expect(ada.get_by_role("status").filter(has_text="offline")).to_be_visible(timeout=OFFLINE_SHOWN_MS)
        expect(self.composer(ada)).to_have_attribute("contenteditable", "true")
        texts = [unique("Written offline %d" % n) for n in (1, 2, 3)]
        for text in texts:
            self.send(ada, text)
        for text in texts:
            expect(self.message(ada, text).locator(".message__status")).to_have_text("Waiting for the connection…")
        expect(self.message(ada, texts[0])).not_to_have_class(re.compile("message--failed"))
        self.server.start()
        expect(ada.locator("body")).to_have_attribute("data-cable", "live", timeout=LIVE_AGAIN_MS)
        for text in texts:
            self.assert_shown_once(ada, text)
        expect(ada.locator(".message--pending")).to_have_count(0)  # nothing left to send again
        bob = self.open_room(BOB)
        for text in texts:
            self.assert_shown_once(bob, text)
        database = sqlite3.connect(os.path.join(self.server.storage, "db", "production.sqlite3"))
        self.addCleanup(database.close)
        rows = [database.execute(
            "SELECT messages.id FROM messages JOIN action_text_rich_texts ON record_id = messages.id "
            "AND record_type = 'Message' WHERE body LIKE ?", ("%" + text + "%",)).fetchall() for text in texts]
        self.assertEqual([len(found) for found in rows], [1, 1, 1])  # exactly once each
        ids = [found[0][0] for found in rows]
        self.assertEqual(ids, sorted(ids))  # in the order they were written
        shown = ada.locator("#messages > .message").all_inner_texts()
        positions = [next(index for index, item in enumerate(shown) if text in item) for text in texts]
        self.assertEqual(positions, sorted(positions))

    def test_a_message_the_server_refuses_says_not_sent(self):
        ada = self.open_room(ADA)
        self.allow_error("status of 413")
        ada.route("**/rooms/1/messages", lambda route: route.fulfill(status=413, body="Too long")
                  if route.request.method == "POST" else route.continue_())
        text = unique("Refused")
        self.send(ada, text)
        expect(self.message(ada, text).get_by_role("status")).to_have_text("Not sent: too long.")
        ada.unroute("**/rooms/1/messages")


class AnnouncementTests(BrowserApp):
    def test_new_messages_are_announced_politely_with_author_and_text(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        region = ada.locator(".announcer")
        expect(region).to_have_attribute("aria-live", "polite")
        region.evaluate("(region) => { window.announced = []; new MutationObserver(() => announced.push(region.textContent))"
                        ".observe(region, { childList: true, characterData: true, subtree: true }) }")
        first = unique("Announce me")
        self.send(bob, first)
        expect(region).to_have_text("%s: %s" % (BOB, first))
        # Posted straight to the server, the burst arrives well within one ANNOUNCE_EVERY_MS (2 s);
        # typed one by one in a busy browser it could straddle two announcements.
        burst = [unique("Burst %d" % n) for n in range(3)]
        for text in burst:
            self.post_as(BOB, text)
        expect(region).to_have_text(re.compile(r"^\d new messages\. Latest, %s: %s$" % (BOB, burst[-1])))
        own = unique("My own words")
        self.send(ada, own)
        self.assert_shown_once(ada, own)
        # The next announcement counts only what others posted since the last one: one message, not two.
        after = unique("After yours")
        self.post_as(BOB, after)
        expect(region).to_have_text("%s: %s" % (BOB, after))
        self.assertEqual([said for said in ada.evaluate("announced") if own in said], [])

    def post_as(self, person, text):
        self.http(person, "/rooms/1/messages", {"message[body]": "<div>%s</div>" % text,
                                                 "message[client_message_id]": uuid.uuid4().hex}, expect_status=201)


if __name__ == "__main__":
    unittest.main()
