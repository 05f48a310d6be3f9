"""Catching up in Chromium, the way three people use it: a thread's reply seen live
in the side panel and counted in the room (and a thread as its own page on a
phone), the mentions inbox filling live, @everyone from the composer's
autocomplete reaching everyone's inbox, Mark as unread and the line since the last
visit, Save message and the Saved list, and search as you type.

The seeded people: Person 1 (an administrator), Person 2 and Person 3, all in
the seeded open rooms 1 and 2."""

import re
import unittest
import uuid

from tests.helpers import avatar_initials
from tests.test_browser_app import SeededBrowserTests, unique

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - depends on the machine
    expect = None

ADA, BOB, CAROL = "Person 1", "Person 2", "Person 3"
EMAILS = {ADA: "person1@example.com", BOB: "person2@example.com", CAROL: "person3@example.com"}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


class CatchingUpInBrowserTests(SeededBrowserTests):
    PEOPLE = EMAILS

    def open(self, person, path="/rooms/1", **context_options):
        page = self.new_page(storage_state=self.states[person], **context_options)
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(self.server.url + path)
        expect(page.locator("body")).to_have_attribute("data-cable", "live")
        return page

    def message(self, page, text):
        return page.locator("#messages > .message", has_text=text)

    def send(self, page, text, name="Write a message", within=None):
        (within or page).get_by_role("textbox", name=name).click()
        page.keyboard.type(text)
        page.keyboard.press("Enter")

    def post(self, page, body, room=1):
        """A message posted by the page's person straight to the server (as a bot or script would)."""
        status = page.evaluate("""([room, body]) => fetch(`/rooms/${room}/messages`, { method: "POST",
            body: new URLSearchParams({ "message[body]": body }), headers: { Accept: "text/html" } }).then((r) => r.status)""",
                               [room, body])
        self.assertEqual(status, 201)

    def test_a_thread_reply_is_seen_live_in_the_panel_and_counted_in_the_room(self):
        ada, bob, carol = self.open(ADA), self.open(BOB), self.open(CAROL)
        root = unique("Shall we ship on Friday?")
        self.send(ada, root)
        for page in (bob, carol):
            expect(self.message(page, root)).to_have_count(1)

        self.message(ada, root).get_by_role("button", name="Reply in thread").click()
        ada_panel = ada.locator("aside.thread-panel")
        expect(ada_panel.get_by_role("textbox", name="Reply in thread")).to_be_focused()
        expect(ada_panel.locator(".thread__parent")).to_contain_text(root)
        expect(ada_panel.locator(".messages")).to_have_attribute("data-live", "")
        self.message(bob, root).get_by_role("button", name="Reply in thread").click()
        bob_panel = bob.locator("aside.thread-panel")
        expect(bob_panel.locator(".messages")).to_have_attribute("data-live", "")

        reply = unique("Friday works for me")
        self.send(bob, reply, name="Reply in thread", within=bob_panel)
        expect(ada_panel.locator(".messages > .message", has_text=reply)).to_have_count(1)   # live, in the panel
        for page in (ada, bob, carol):                                                         # counted in the room
            expect(self.message(page, root).locator(".message__thread")).to_contain_text("1 reply")
            expect(self.message(page, reply)).to_have_count(0)                                 # not in the room itself
        replier = self.message(carol, root).locator(".message__thread img.avatar")
        expect(replier).to_have_attribute("src", re.compile(r"^data:image/svg\+xml,"))  # no picture: drawn
        self.assertEqual(avatar_initials(replier.get_attribute("src")), "P2")
        # The author of the message a thread answers hears of its replies.
        expect(ada.locator(".sidebar__link--mentions .sidebar__count")).to_be_visible()
        self.screenshot(ada, "catchup-thread-panel-desktop")

        # On a phone the thread is a page of its own, live, with its own composer.
        phone = self.open(CAROL, **PHONE)
        self.message(phone, root).locator(".message__thread").click()
        phone.wait_for_url(re.compile(r"/rooms/\d+$"))
        expect(phone.locator("body")).to_have_attribute("data-cable", "live")
        expect(phone.locator("section.thread .messages > .message", has_text=reply)).to_have_count(1)
        expect(phone.locator("aside.thread-panel")).to_have_count(0)
        from_phone = unique("Count me in")
        phone.get_by_role("textbox", name="Reply in thread").click()
        phone.keyboard.type(from_phone)
        phone.get_by_role("button", name="Send reply").click()   # on a phone Enter is a new line
        expect(ada_panel.locator(".messages > .message", has_text=from_phone)).to_have_count(1)
        expect(self.message(bob, root).locator(".message__thread")).to_contain_text("2 replies")
        self.screenshot(phone, "catchup-thread-page-phone")

        ada_panel.get_by_role("button", name="Close thread").click()
        expect(ada_panel).to_have_count(0)

    def test_the_mentions_inbox_shows_a_mention_arriving_live(self):
        bob = self.open(BOB, "/mentions")
        ada = self.open(ADA)
        text = unique("the deploy checklist")
        self.post(ada, "@%s could you look at %s" % (BOB, text))
        item = bob.locator("#mentions_list > .inbox__item", has_text=text)
        expect(item).to_have_count(1)
        expect(item).to_have_class(re.compile(r"\binbox__item--unread\b"))
        expect(item.locator(".inbox__new")).to_have_text("New")
        expect(item.locator(".mention")).to_contain_text(BOB)
        expect(bob.locator(".sidebar__link--mentions .sidebar__count")).to_be_visible()
        self.screenshot(bob, "catchup-mentions")
        item.locator(".inbox__where a").click()                       # to its place in the room
        bob.wait_for_url(re.compile(r"/rooms/1/@\d+$"))
        expect(bob.locator("#messages > .message--highlight")).to_contain_text(text)
        bob.goto(self.server.url + "/mentions")
        item = bob.locator("#mentions_list > .inbox__item", has_text=text)
        expect(item).not_to_have_class(re.compile(r"\binbox__item--unread\b"))

    def test_everyone_from_the_autocomplete_reaches_every_members_inbox(self):
        ada = self.open(ADA)
        text = unique("standup in five minutes")
        ada.get_by_role("textbox", name="Write a message").click()
        ada.keyboard.type("@ever")
        option = ada.get_by_role("option", name=re.compile(r"^@everyone"))
        expect(option).to_be_visible()
        ada.keyboard.press("Enter")
        ada.keyboard.type(text)
        ada.keyboard.press("Enter")
        sent = self.message(ada, text)
        expect(sent.locator(".mention--group")).to_have_text("@everyone")
        for person in (BOB, CAROL):
            inbox = self.open(person, "/mentions")
            expect(inbox.locator("#mentions_list > .inbox__item--unread", has_text=text)).to_have_count(1)

    def test_mark_as_unread_and_the_line_since_your_last_visit(self):
        bob, ada = self.open(BOB), self.open(ADA)
        first, second = unique("first of two"), unique("second of two")
        self.post(ada, first)
        self.post(ada, second)
        expect(self.message(bob, second)).to_have_count(1)
        self.message(bob, first).get_by_role("button", name="Mark as unread").click()
        expect(self.message(bob, first).get_by_role("status")).to_have_text("Marked as unread")
        bob.goto(self.server.url + "/rooms/2")
        expect(bob.locator("#user_sidebar .sidebar__room--unread[data-room-id='1']")).to_have_count(1)
        bob.goto(self.server.url + "/rooms/1")
        expect(bob.get_by_role("separator", name="Since your last visit")).to_be_visible()
        expect(bob.locator("#since_last_visit + .message")).to_contain_text(first)
        self.screenshot(bob, "catchup-since-last-visit")

    def test_save_message_and_the_saved_list(self):
        bob, ada = self.open(BOB), self.open(ADA)
        text = unique("the wifi password is on the fridge")
        self.post(ada, text)
        self.message(bob, text).get_by_role("button", name="Save message").click()
        expect(self.message(bob, text).get_by_role("status")).to_have_text("Saved")
        bob.locator("#user_sidebar").get_by_role("link", name="Saved").click()
        bob.wait_for_url("**/bookmarks")
        saved = bob.locator("#saved_list > .inbox__item", has_text=text)
        expect(saved).to_have_count(1)
        saved.get_by_role("button", name="Remove from saved").click()
        bob.wait_for_url("**/bookmarks")
        expect(bob.locator("#saved_list > .inbox__item", has_text=text)).to_have_count(0)

    def test_search_follows_typing_names_rooms_filters_and_highlights(self):
        ada, bob = self.open(ADA), self.open(BOB)
        word = "desk" + uuid.uuid4().hex[:8]
        self.post(ada, "the %s review" % word)
        self.post(bob, "another %s note" % word, room=2)
        search = self.open(CAROL, "/searches")
        search.locator("form.search__form").get_by_role("searchbox").press_sequentially(word[:9], delay=40)
        results = search.locator("#search-results .search-result")
        expect(results).to_have_count(2)
        expect(results.locator("mark")).to_have_text([word, word])
        expect(results.locator(".search-result__room a")).to_have_count(2)
        search.locator("form.search__form").get_by_label("Person").select_option(label=BOB)
        expect(results).to_have_count(1)
        expect(results).to_contain_text("another")
        self.assertNotIn(word[:9], search.locator(".search__recent").inner_text())
        self.screenshot(search, "catchup-search")


if __name__ == "__main__":
    unittest.main()
