"""Open and closed rooms made and changed in Chromium the way a person does it:
the sidebar's "+", the New room form's Open/Closed choice and member picker,
and Room settings. Whoever a closed room leaves out must not learn of it:
no page (404), no sidebar entry, no search hit, no /cable subscription.

Three seeded people share one server: Person 1 (an administrator) makes the
rooms, Person 2 is picked, Person 3 is left out."""

import re
import unittest
import uuid

from tests.helpers import CableClient
from tests.test_browser_app import SeededBrowserTests

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - depends on the machine
    expect = None

ADA, BOB, CAROL = "Person 1", "Person 2", "Person 3"
EMAILS = {ADA: "person1@example.com", BOB: "person2@example.com", CAROL: "person3@example.com"}


class RoomKindsInBrowserTests(SeededBrowserTests):
    PEOPLE = EMAILS

    def open_room(self, person, room=1, **context_options):
        page = self.new_page(storage_state=self.states[person], **context_options)
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto("%s/rooms/%d" % (self.server.url, room))
        if context_options.get("java_script_enabled", True):
            expect(page.locator("body")).to_have_attribute("data-cable", "live")
        return page

    def sidebar_link(self, page, name):
        return page.locator("#user_sidebar .sidebar__room", has_text=name)

    def room_id(self, page):
        return int(re.search(r"/rooms/(\d+)$", page.url).group(1))

    def fill_room_form(self, page, name, kind, picked):
        """Name, Open or Closed, and exactly the people in `picked` ticked."""
        page.get_by_label("Name this room").fill(name)
        page.get_by_role("radio", name=re.compile(r"^%s\b" % kind)).check()
        if kind == "Closed":
            for person in (BOB, CAROL):
                box = page.get_by_role("checkbox", name=re.compile(r"\b%s$" % person))
                box.set_checked(person in picked)
        page.get_by_role("button", name="Save").click()
        page.wait_for_url(re.compile(r"/rooms/\d+$"))

    def create_room(self, page, name, kind, picked=()):
        page.locator("#user_sidebar").get_by_role("link", name="New room").click()
        page.wait_for_url("**/rooms/opens/new")
        self.fill_room_form(page, name, kind, picked)
        return self.room_id(page)

    def change_room(self, page, room_id, kind, picked=()):
        page.goto("%s/rooms/%d" % (self.server.url, room_id))
        page.get_by_role("link", name="Room settings").click()
        page.wait_for_url(re.compile(r"/rooms/(opens|closeds)/%d/edit$" % room_id))
        self.fill_room_form(page, page.get_by_label("Name this room").input_value(), kind, picked)

    def status_of_room(self, page, room_id):
        return page.goto("%s/rooms/%d" % (self.server.url, room_id)).status

    def search_hits(self, page, word):
        page.goto("%s/searches?q=%s" % (self.server.url, word))
        return page.locator("#search-results .message").count()

    def cable_answer(self, person, room_id):
        """reject_subscription or confirm_subscription, over a real socket with the person's cookie."""
        cookie = next(c["value"] for c in self.states[person]["cookies"] if c["name"] == "session_token")
        client = CableClient(self.server.port, cookie, origin=self.server.url)
        self.addCleanup(client.close)
        self.assertEqual(client.recv_json(), {"type": "welcome"})
        identifier = client.subscribe("RoomMessagesChannel", room_id=room_id)
        reply = client.recv_until(lambda message: message.get("identifier") == identifier and "type" in message)
        return reply["type"]

    def assert_left_out(self, room_id, name, word=None):
        carol = self.open_room(CAROL)
        self.assertEqual(self.sidebar_link(carol, name).count(), 0)
        self.allow_error("status of 404")
        self.assertEqual(self.status_of_room(carol, room_id), 404)
        if word:
            self.assertEqual(self.search_hits(carol, word), 0)
        self.assertEqual(self.cable_answer(CAROL, room_id), "reject_subscription")

    def assert_member(self, person, room_id, name):
        page = self.open_room(person)
        expect(self.sidebar_link(page, name)).to_have_count(1)
        self.assertEqual(self.status_of_room(page, room_id), 200)
        self.assertEqual(self.cable_answer(person, room_id), "confirm_subscription")

    def test_closed_room_made_with_the_new_room_form_is_hidden_from_people_left_out(self):
        name, word = "Secret %s" % uuid.uuid4().hex[:6], "hush%s" % uuid.uuid4().hex[:8]
        bob, carol = self.open_room(BOB), self.open_room(CAROL)  # watching their sidebars live
        ada = self.open_room(ADA)
        room_id = self.create_room(ada, name, "Closed", picked={BOB})
        self.assertEqual(ada.get_by_role("heading", level=1).inner_text(), name)
        expect(self.sidebar_link(bob, name)).to_have_count(1)  # Bob's sidebar refreshed live…
        carol.reload()
        expect(carol.locator("body")).to_have_attribute("data-cable", "live")
        self.assertEqual(self.sidebar_link(carol, name).count(), 0)  # …Carol's never lists it
        ada.get_by_role("textbox", name="Write a message").click()
        ada.keyboard.type("the plan is %s" % word)
        ada.keyboard.press("Enter")
        expect(ada.locator("#messages > .message", has_text=word)).not_to_have_class(re.compile("message--pending"))
        self.assertEqual(self.search_hits(bob, word), 1)
        self.assertEqual(self.cable_answer(BOB, room_id), "confirm_subscription")
        self.assert_left_out(room_id, name, word)

    def test_closed_room_made_without_javascript_is_closed_too(self):
        name = "No script %s" % uuid.uuid4().hex[:6]
        ada = self.open_room(ADA, java_script_enabled=False)
        room_id = self.create_room(ada, name, "Closed", picked={BOB})
        self.assert_member(BOB, room_id, name)
        self.assert_left_out(room_id, name)

    def test_room_settings_switch_open_to_closed_and_back(self):
        name = "Switch %s" % uuid.uuid4().hex[:6]
        ada = self.open_room(ADA)
        room_id = self.create_room(ada, name, "Open")
        self.assert_member(CAROL, room_id, name)  # open: everyone
        self.change_room(ada, room_id, "Closed", picked={BOB})
        self.assert_member(BOB, room_id, name)
        self.assert_left_out(room_id, name)
        self.change_room(ada, room_id, "Open")
        self.assert_member(CAROL, room_id, name)


if __name__ == "__main__":
    unittest.main()
