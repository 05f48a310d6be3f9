"""Messages: posting, editing, deleting, unread marks, paging, boosts, /play,
mentions, page caching, and a database Rails wrote."""

import base64
import gzip
import html
import json
import math
import os
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import unittest
import unittest.mock

from tests.helpers import Client, avatar_initials, campfire, gunzipped_three_ways, make_app
from tests.test_rooms import ChatTestCase, fragment_message_id, message_ids
from tests.test_storage import rails_database

SEED_START = 1_700_000_000.0  # 2023-11-14, long before anything the tests post


def seed_messages(app, room_id, creator_id, count, word="Message", start=SEED_START):
    """Messages inserted straight through the store, one second apart; their ids, oldest first."""
    ids = []
    with app.db.atomic():
        for index in range(count):
            message, _ = app.store.create_message(room_id, creator_id, "seed-%d" % index,
                                                  "<div>%s %d</div>" % (word, index), "%s %d" % (word, index),
                                                  now=start + index)
            ids.append(message["id"])
    return ids


class PostMessageTests(ChatTestCase):
    def test_post_answers_201_with_one_sanitized_message_fragment(self):
        response = self.post(self.ada, 1, '<div>Hi <strong onclick="steal()">there</strong><script>evil()</script></div>')
        self.assertEqual(response.status, 201)
        self.assertEqual(len(re.findall(r"data-message-id=", response.text)), 1)
        self.assertIn("<div>Hi <strong>there</strong></div>", response.text)
        self.assertNotIn("onclick", response.text)
        self.assertNotIn("evil()", response.text)
        message = fragment_message_id(response)
        self.assertEqual(response.header("Location"), "/rooms/1/@%d" % message)

    def test_a_text_post_looks_up_no_file_and_answers_what_the_room_shows(self):
        statements = []
        db = self.app.db
        db.group_commit, db.on_batch_opened = True, lambda: None  # as the server runs it: answered, then broadcast
        db.connection.set_trace_callback(statements.append)
        try:
            response = self.post(self.bob, 1, "<div>Just words</div>", client_message_id="words-1")
            self.assertTrue(db.commit_batch())
        finally:
            db.connection.set_trace_callback(None)
            db.group_commit = False
        self.assertEqual(response.status, 201)
        self.assertTrue(any("INSERT INTO messages" in sql for sql in statements), statements)
        self.assertFalse([sql for sql in statements if "active_storage" in sql and "'Message'" in sql])
        message = fragment_message_id(response)
        self.app.message_cache.clear()  # rendered afresh, with every lookup
        shown = str(self.app.message_html(self.app.store.message(message)))
        self.assertEqual(response.text, shown)

    def test_plain_form_submission_is_redirected_back_to_the_room(self):
        response = self.post(self.ada, 1, "from a form", headers={"Sec-Fetch-Mode": "navigate"})
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("Location"), "/rooms/1")
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages"), 1)

    def test_post_writes_the_message_its_rich_text_and_its_search_row(self):
        message = self.post_id(self.bob, 1, "<div>Rows for <em>everything</em></div>", client_message_id="abc-123")
        db = self.app.db
        row = db.one("SELECT * FROM messages WHERE id = ?", (message,))
        self.assertEqual((row["room_id"], row["creator_id"], row["client_message_id"]), (1, self.bob_id, "abc-123"))
        self.assertRegex(row["created_at"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")
        rich = db.one("SELECT * FROM action_text_rich_texts WHERE record_type = 'Message' AND record_id = ? "
                      "AND name = 'body'", (message,))
        self.assertEqual(rich["body"], "<div>Rows for <em>everything</em></div>")
        self.assertEqual(db.value("SELECT body FROM message_search_index WHERE rowid = ?", (message,)),
                         "Rows for everything")
        self.assertEqual(db.value("SELECT rowid FROM message_search_index WHERE message_search_index MATCH 'rows'"),
                         message)

    def test_a_json_post_with_rails_nested_params_is_a_message(self):
        body = json.dumps({"message": {"body": "<div>From <b>JSON</b></div>", "client_message_id": "json-1"}})
        response = self.bob.request("POST", "/rooms/1/messages", body=body.encode(), content_type="application/json")
        self.assertEqual(response.status, 201, response.text[:300])
        row = self.app.store.message(fragment_message_id(response))
        self.assertEqual((row["body"], row["client_message_id"]), ("<div>From <b>JSON</b></div>", "json-1"))
        message = row["id"]
        response = self.bob.request("PATCH", "/rooms/1/messages/%d" % message, content_type="application/json",
                                    body=json.dumps({"message": {"body": "<div>edited</div>"}}).encode())
        self.assertIn(response.status, (200, 303), response.text[:300])
        self.assertEqual(self.app.store.message(message)["body"], "<div>edited</div>")

    def test_retry_with_the_same_client_message_id_returns_the_first_message(self):
        first = self.post(self.bob, 1, "once only", client_message_id="retry-1")
        again = self.post(self.bob, 1, "once only", client_message_id="retry-1")
        self.assertEqual(first.status, 201)
        self.assertIn(again.status, (200, 201))
        self.assertEqual(fragment_message_id(first), fragment_message_id(again))
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages WHERE client_message_id = 'retry-1'"), 1)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM message_search_index"), 1)

    def test_same_client_message_id_from_another_user_or_room_is_a_new_message(self):
        first = self.post_id(self.bob, 1, "mine", client_message_id="shared-id")
        other_user = self.post_id(self.carol, 1, "mine too", client_message_id="shared-id")
        other_room = self.post_id(self.bob, self.closed, "elsewhere", client_message_id="shared-id")
        self.assertEqual(len({first, other_user, other_room}), 3)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages"), 3)

    def test_empty_message_is_422(self):
        for body in ("", "   ", "\n\t ", "<div><br></div>", "<div> </div><p></p>", "<script>x()</script>", "&nbsp;"):
            with self.subTest(body=body):
                self.assertEqual(self.post(self.bob, 1, body).status, 422)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages"), 0)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM message_search_index"), 0)

    def test_body_over_the_limit_is_413(self):
        self.assertEqual(self.post(self.bob, 1, "a" * (campfire.MAX_MESSAGE_BODY_CHARS + 1)).status, 413)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages"), 0)
        self.assertEqual(self.post(self.bob, 1, "a" * campfire.MAX_MESSAGE_BODY_CHARS).status, 201)

    def test_post_to_a_room_that_does_not_exist_is_404(self):
        self.assertEqual(self.post(self.bob, 999, "hello?").status, 404)


class EditAndDeleteTests(ChatTestCase):
    def edit(self, client, room_id, message_id, body, **kwargs):
        return client.post("/rooms/%d/messages/%d" % (room_id, message_id),
                           {"_method": "patch", "message[body]": body}, **kwargs)

    def matches(self, word):
        return [row[0] for row in self.app.db.all(
            "SELECT rowid FROM message_search_index WHERE message_search_index MATCH ?", ('"%s"' % word,))]

    def test_edit_updates_body_search_row_and_shows_edited(self):
        message = self.post_id(self.bob, 1, "the original wording")
        self.assertNotIn("(edited)", self.bob.get("/rooms/1").text)
        response = self.edit(self.bob, 1, message, "<div>a <em>replacement</em> wording</div>")
        self.assertEqual(response.status, 200)
        self.assertIn("<em>replacement</em>", response.text)
        self.assertEqual(self.app.store.message(message)["body"], "<div>a <em>replacement</em> wording</div>")
        self.assertEqual(self.matches("replacement"), [message])
        self.assertEqual(self.matches("original"), [])
        page = self.bob.get("/rooms/1").text
        self.assertIn("(edited)", page)
        self.assertIn("<em>replacement</em>", page)
        self.assertNotIn("original", page)
        results = self.ada.get("/searches?q=replacement").text
        self.assertEqual(message_ids(results, "search-results"), [message])
        self.assertEqual(message_ids(self.ada.get("/searches?q=original").text, "search-results"), [])

    def test_edit_to_empty_is_422_and_keeps_the_message(self):
        message = self.post_id(self.bob, 1, "keep me")
        self.assertEqual(self.edit(self.bob, 1, message, "<div><br></div>").status, 422)
        self.assertIn("keep me", self.app.store.message(message)["body"])
        self.assertEqual(self.matches("keep"), [message])

    def test_edit_form_redirects_to_the_permalink(self):
        message = self.post_id(self.bob, 1, "before")
        response = self.edit(self.bob, 1, message, "after", headers={"Sec-Fetch-Mode": "navigate"})
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("Location"), "/rooms/1/@%d" % message)

    def test_edit_page_has_its_accessible_names(self):
        message = self.post_id(self.bob, 1, "<div>edit <b>me</b></div>")
        page = self.bob.get("/rooms/1/messages/%d/edit" % message).text
        self.assertIn('aria-label="Edit message"', page)
        self.assertIn("Save changes", page)
        self.assertIn("&lt;b&gt;me&lt;/b&gt;", page)  # the stored HTML, escaped into the textarea

    def test_delete_removes_message_rich_text_search_row_and_boosts(self):
        message = self.post_id(self.bob, 1, "short lived")
        self.assertEqual(self.ada.post("/messages/%d/boosts" % message, {"boost[content]": "👋"}).status, 201)
        response = self.bob.post("/rooms/1/messages/%d" % message, {"_method": "delete"})
        self.assertEqual(response.status, 204)
        db = self.app.db
        self.assertEqual(db.value("SELECT count(*) FROM messages WHERE id = ?", (message,)), 0)
        self.assertEqual(db.value("SELECT count(*) FROM action_text_rich_texts WHERE record_id = ?", (message,)), 0)
        self.assertEqual(db.value("SELECT count(*) FROM message_search_index WHERE rowid = ?", (message,)), 0)
        self.assertEqual(db.value("SELECT count(*) FROM boosts WHERE message_id = ?", (message,)), 0)
        self.assertEqual(message_ids(self.bob.get("/rooms/1").text), [])
        self.assertEqual(self.bob.get("/rooms/1/messages/%d" % message).status, 404)

    def test_delete_form_redirects_to_the_room(self):
        message = self.post_id(self.bob, 1, "bye")
        response = self.bob.post("/rooms/1/messages/%d" % message, {"_method": "delete"},
                                 headers={"Sec-Fetch-Mode": "navigate"})
        self.assertEqual((response.status, response.header("Location")), (303, "/rooms/1"))


class UnreadTests(ChatTestCase):
    def unread_at(self, user_id, room_id=1):
        return self.app.db.value("SELECT unread_at FROM memberships WHERE room_id = ? AND user_id = ?",
                                 (room_id, user_id))

    def test_new_message_marks_disconnected_visible_members_other_than_the_author(self):
        self.app.db.execute("UPDATE memberships SET involvement = 'invisible' WHERE room_id = 1 AND user_id = ?",
                            (self.carol_id,))
        self.app.store.bump_users([self.carol_id])
        self.connect(self.dave_id, 1)
        self.post_id(self.ada, 1, "anyone here?")
        self.assertIsNotNone(self.unread_at(self.bob_id))
        self.assertIsNone(self.unread_at(self.ada_id))     # the author
        self.assertIsNone(self.unread_at(self.carol_id))   # invisible
        self.assertIsNone(self.unread_at(self.dave_id))    # connected

    def test_a_connection_without_presence_for_60_seconds_counts_as_disconnected(self):
        self.app.db.execute("UPDATE memberships SET connections = 1, connected_at = ? WHERE user_id = ?",
                            (campfire.utc_now_text(time.time() - 3600), self.bob_id))
        self.app.store.bump_users([self.bob_id])
        self.post_id(self.ada, 1, "are you still there?")
        self.assertIsNotNone(self.unread_at(self.bob_id))

    def test_visiting_the_room_clears_unread_and_the_sidebar_mark(self):
        self.assertNotIn("sidebar__room--unread", self.sidebar_links(self.bob)[1])
        self.bob.get("/rooms/1")  # cache the page and the sidebar before the message
        self.post_id(self.ada, 1, "news")
        self.assertIn("sidebar__room--unread", self.sidebar_links(self.bob)[1])
        self.assertNotIn("sidebar__room--unread", self.sidebar_links(self.ada)[1])
        page = self.bob.get("/rooms/1")
        self.assertEqual(page.status, 200)
        self.assertIsNone(self.unread_at(self.bob_id))
        self.assertNotIn("sidebar__room--unread", self.sidebar_links(self.bob)[1])
        self.assertNotRegex(page.text, r'sidebar__room--unread" href="/rooms/1"')

    def test_unread_room_is_marked_in_the_sidebar_of_another_room_page(self):
        self.post_id(self.carol, self.closed, "closed news")
        page = self.bob.get("/rooms/1").text
        self.assertRegex(page, r'class="sidebar__room sidebar__room--unread" href="/rooms/%d"' % self.closed)

    def test_invisible_room_is_never_marked_unread(self):
        self.bob.post("/rooms/1/involvement", {"_method": "put", "involvement": "invisible"})
        self.post_id(self.ada, 1, "hidden news")
        self.assertIsNone(self.unread_at(self.bob_id))
        self.assertNotIn(1, self.sidebar_links(self.bob))


class PagingTests(ChatTestCase):
    def setUp(self):
        super().setUp()
        self.ids = seed_messages(self.app, 1, self.bob_id, 130)

    def test_room_page_has_the_newest_40_oldest_first(self):
        page = self.ada.get("/rooms/1")
        self.assertEqual(page.status, 200)
        self.assertEqual(message_ids(page.text), self.ids[-40:])
        self.assertIn("Message 129", page.text)
        self.assertNotIn("Message 89<", page.text)

    def test_room_page_holds_the_readers_pending_message_shape_outside_the_messages(self):
        for client, name in ((self.ada, "Ada Admin"), (self.bob, "Bob Builder")):
            page = client.get("/rooms/1").text
            templates = re.findall(r'<template id="pending_message">(.*?)</template>', page)
            self.assertEqual(len(templates), 1)
            self.assertIn('<span class="message__author">%s</span>' % name, templates[0])
            self.assertIn('class="message message--pending message--mine"', templates[0])
            self.assertIn("Sending&hellip;", templates[0])
            self.assertGreater(page.index('<template id="pending_message">'), page.index('id="composer"'))
            self.assertEqual(message_ids(page), self.ids[-40:])  # the template holds no message id

    def test_before_gives_the_40_before_oldest_first(self):
        response = self.ada.get("/rooms/1/messages?before=%d" % self.ids[90])
        self.assertEqual(response.status, 200)
        self.assertEqual(message_ids(response.text, None), self.ids[50:90])
        self.assertEqual(message_ids(self.ada.get("/rooms/1/messages?before=%d" % self.ids[10]).text, None),
                         self.ids[:10])

    def test_after_gives_the_40_after_oldest_first(self):
        response = self.ada.get("/rooms/1/messages?after=%d" % self.ids[10])
        self.assertEqual(response.status, 200)
        self.assertEqual(message_ids(response.text, None), self.ids[11:51])
        self.assertEqual(message_ids(self.ada.get("/rooms/1/messages?after=%d" % self.ids[120]).text, None),
                         self.ids[121:])

    def test_no_parameters_gives_the_newest_40(self):
        self.assertEqual(message_ids(self.ada.get("/rooms/1/messages").text, None), self.ids[-40:])

    def test_before_the_first_or_after_the_last_is_204(self):
        self.assertEqual(self.ada.get("/rooms/1/messages?before=%d" % self.ids[0]).status, 204)
        self.assertEqual(self.ada.get("/rooms/1/messages?after=%d" % self.ids[-1]).status, 204)
        self.assertEqual(self.ada.get("/rooms/1/messages?before=%d" % self.ids[0]).body, b"")

    def test_anchor_that_is_not_a_message_of_the_room_is_404(self):
        # Campfire: @room.messages.find(params[:before]); a missing id and another room's id look the same
        for query in ("before=999999", "after=999999"):
            with self.subTest(query=query):
                self.assertEqual(self.ada.get("/rooms/1/messages?" + query).status, 404)

    def test_non_numeric_before_or_after_is_400(self):
        for query in ("before=abc", "after=1.5", "before=-3", "after=", "before=0x10", "after=%201"):
            with self.subTest(query=query):
                self.assertEqual(self.ada.get("/rooms/1/messages?" + query).status, 400)

    def test_unicode_digits_in_before_after_or_since_are_400_not_500(self):
        # "²".isdigit() is True but int("²") raises ValueError
        for query in ("before=%C2%B2", "after=%C2%B2", "since=%C2%B2"):
            path = "/rooms/1/refresh?" + query if query.startswith("since") else "/rooms/1/messages?" + query
            with self.subTest(query=query):
                self.assertEqual(self.ada.get(path).status, 400)

    def test_huge_before_after_or_since_is_400_not_500(self):
        # past SQLite's 64-bit integers and time.gmtime's range
        for path in ("/rooms/1/messages?before=99999999999999999999", "/rooms/1/messages?after=99999999999999999999",
                     "/rooms/1/refresh?since=99999999999999999999"):
            with self.subTest(path=path):
                self.assertIn(self.ada.get(path).status, (400, 204))

    def test_permalink_holds_40_before_the_message_and_40_after(self):
        middle = self.ids[65]
        page = self.ada.get("/rooms/1/@%d" % middle)
        self.assertEqual(page.status, 200)
        self.assertEqual(message_ids(page.text), self.ids[25:106])
        self.assertIn('data-highlight-id="%d"' % middle, page.text)

    def test_permalink_at_the_edges_holds_fewer(self):
        self.assertEqual(message_ids(self.ada.get("/rooms/1/@%d" % self.ids[0]).text), self.ids[:41])
        self.assertEqual(message_ids(self.ada.get("/rooms/1/@%d" % self.ids[-1]).text), self.ids[89:])
        self.assertEqual(message_ids(self.ada.get("/rooms/1/@%d" % self.ids[3]).text), self.ids[:44])

    def test_refresh_returns_messages_created_or_updated_since(self):
        since = int((SEED_START + 100) * 1000)
        response = self.ada.get("/rooms/1/refresh?since=%d" % since)
        self.assertEqual(response.status, 200)
        self.assertEqual(message_ids(response.text, None), self.ids[100:])
        edited = self.app.store.message(self.ids[5])
        with self.app.db.atomic():
            self.app.store.update_message(edited, "<div>Edited 5</div>", "Edited 5", now=SEED_START + 500)
        response = self.ada.get("/rooms/1/refresh?since=%d" % int((SEED_START + 200) * 1000))
        self.assertEqual(message_ids(response.text, None), [self.ids[5]])
        self.assertIn("Edited 5", response.text)

    def test_refresh_names_messages_deleted_since(self):
        import time as clock
        since = int(clock.time() * 1000)
        deleted = self.ids[7]
        response = self.ada.post("/rooms/1/messages/%d" % deleted, {"_method": "delete"})
        self.assertEqual(response.status, 204)
        response = self.ada.get("/rooms/1/refresh?since=%d" % (since - 1000))
        self.assertEqual(response.status, 200)
        self.assertIn('<template class="message-removals" data-message-ids="%d"></template>' % deleted, response.text)
        self.assertEqual(message_ids(response.text, None), [])
        later = self.ada.get("/rooms/1/refresh?since=%d" % (int(clock.time() * 1000) + 5000))
        self.assertEqual(later.status, 204)

    def test_refresh_with_nothing_new_is_204(self):
        self.assertEqual(self.ada.get("/rooms/1/refresh?since=%d" % int((SEED_START + 10_000) * 1000)).status, 204)

    def test_refresh_needs_a_number(self):
        self.assertEqual(self.ada.get("/rooms/1/refresh").status, 400)
        self.assertEqual(self.ada.get("/rooms/1/refresh?since=yesterday").status, 400)
        for cursor in ("nonsense", "2023-11-14 22:13:20.000000", "2023-11-14,abc", "'; DROP TABLE messages,1",
                       "2" * 100 + ",1"):
            with self.subTest(cursor=cursor):
                self.assertEqual(self.ada.get("/rooms/1/refresh?since=0&cursor=%s" % cursor).status, 400)

    def refresh_pages(self, since, between_pages=lambda page: None):
        """Follow a refresh's next links to the end: each page's message ids, in order."""
        url, pages = "/rooms/1/refresh?since=%d" % since, []
        while url:
            response = self.ada.get(url)
            self.assertEqual(response.status, 200, url)
            pages.append(message_ids(response.text, None))
            self.assertLessEqual(len(pages[-1]), campfire.REFRESH_PAGE_SIZE)
            following = re.search(r'<template class="message-refresh-next" data-href="([^"]+)"></template>\Z',
                                  response.text)
            url = html.unescape(following[1]) if following else None
            self.assertEqual(response.header("Link"), '<%s>; rel="next"' % url if url else None)
            between_pages(len(pages))
        return pages

    def test_refresh_answers_a_page_at_a_time_and_its_pages_hold_every_change_once(self):
        tied = []
        with self.app.db.atomic():  # changes within one microsecond: pages must still tell them apart
            for index in range(60):
                message, _ = self.app.store.create_message(1, self.carol_id, "tied-%d" % index, "<div>Tied %d</div>"
                                                           % index, "Tied %d" % index, now=SEED_START + 1000)
                tied.append(message["id"])
        pages = self.refresh_pages(0)
        expected = self.ids + tied
        self.assertEqual([len(page) for page in pages[:-1]], [campfire.REFRESH_PAGE_SIZE] * (len(pages) - 1))
        self.assertEqual(len(pages), math.ceil(len(expected) / campfire.REFRESH_PAGE_SIZE))
        self.assertEqual([message for page in pages for message in page], expected)

    def test_refresh_pages_miss_nothing_changed_while_they_are_read(self):
        late = []

        def change(pages_read):
            if pages_read == 1:  # one message already sent, one not yet, edited; one new
                for message_id, body in ((self.ids[3], "Edited early"), (self.ids[120], "Edited late")):
                    with self.app.db.atomic():
                        self.app.store.update_message(self.app.store.message(message_id), "<div>%s</div>" % body, body)
                late.append(self.post_id(self.carol, 1, "posted while paging"))
        pages = self.refresh_pages(0, change)
        seen = [message for page in pages for message in page]
        self.assertEqual(seen[:campfire.REFRESH_PAGE_SIZE], self.ids[:campfire.REFRESH_PAGE_SIZE])
        self.assertEqual(sorted(set(seen)), sorted(self.ids + late))  # nothing lost
        self.assertEqual(seen.count(self.ids[3]), 2)  # sent, then sent again as edited
        self.assertEqual(seen.count(self.ids[120]), 1)  # sent once, as edited
        self.assertEqual(seen.count(late[0]), 1)
        self.assertEqual(seen[-3:], [self.ids[3], self.ids[120], late[0]])

    def test_posted_messages_page_in_the_order_they_were_posted(self):
        posted = [self.post_id(self.carol, 1, "live %d" % index) for index in range(45)]
        self.assertEqual(message_ids(self.ada.get("/rooms/1").text), posted[-40:])
        self.assertEqual(message_ids(self.ada.get("/rooms/1/messages?before=%d" % posted[5]).text, None),
                         self.ids[-35:] + posted[:5])


class BoostTests(ChatTestCase):
    def setUp(self):
        super().setUp()
        self.message = self.post_id(self.carol, 1, "boost this")

    def boost(self, client, content, message=None):
        return client.post("/messages/%d/boosts" % (message or self.message), {"boost[content]": content})

    def test_boost_of_16_characters_is_201_with_a_fragment(self):
        response = self.boost(self.bob, "x" * 16)
        self.assertEqual(response.status, 201)
        self.assertIn('class="boost"', response.text)
        self.assertIn("x" * 16, response.text)
        self.assertIn("Bob Builder", response.text)
        emoji = self.boost(self.bob, "🎉" * 16)
        self.assertEqual(emoji.status, 201)

    def test_boost_of_17_characters_or_empty_is_422(self):
        for content in ("x" * 17, "🎉" * 17, "", "   "):
            with self.subTest(content=content):
                self.assertEqual(self.boost(self.bob, content).status, 422)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM boosts"), 0)

    def test_boost_on_a_missing_message_is_404(self):
        self.assertEqual(self.boost(self.bob, "👍", message=9999).status, 404)

    def test_non_member_cannot_boost(self):
        closed_message = self.post_id(self.carol, self.closed, "private")
        self.assertEqual(self.boost(self.dave, "👍", message=closed_message).status, 404)
        self.assertEqual(self.dave.get("/messages/%d/boosts/new" % closed_message).status, 404)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM boosts"), 0)

    def test_delete_own_boost_is_204_and_someone_elses_is_403(self):
        self.assertEqual(self.boost(self.bob, "👍").status, 201)
        boost = self.app.db.value("SELECT id FROM boosts")
        path = "/messages/%d/boosts/%d" % (self.message, boost)
        self.assertEqual(self.carol.post(path, {"_method": "delete"}).status, 403)
        self.assertEqual(self.ada.post(path, {"_method": "delete"}).status, 403)
        self.assertEqual(self.bob.post(path, {"_method": "delete"}).status, 204)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM boosts"), 0)
        self.assertEqual(self.bob.post(path, {"_method": "delete"}).status, 404)

    def test_boost_through_another_messages_path_is_404(self):
        other = self.post_id(self.carol, 1, "another")
        self.assertEqual(self.boost(self.bob, "👍").status, 201)
        boost = self.app.db.value("SELECT id FROM boosts")
        self.assertEqual(self.bob.post("/messages/%d/boosts/%d" % (other, boost), {"_method": "delete"}).status, 404)

    def test_boosts_show_under_the_message_with_their_authors_name(self):
        self.ada.get("/rooms/1")
        self.boost(self.bob, "🔥")
        self.boost(self.dave, "nice one")
        page = self.ada.get("/rooms/1").text
        start = page.index('id="boosts_message_%d"' % self.message)
        boosts = page[start:page.index("</ul>", start)]
        self.assertRegex(boosts, r'boost__content">🔥</span> <span class="boost__author">Bob Builder</span>')
        self.assertRegex(boosts, r'boost__content">nice one</span> <span class="boost__author">Dave Outsider</span>')

    def test_boost_content_is_escaped(self):
        self.assertEqual(self.boost(self.bob, "<b>x</b>").status, 201)
        page = self.ada.get("/rooms/1").text
        self.assertIn("&lt;b&gt;x&lt;/b&gt;", page)
        self.assertNotIn("<b>x</b>", page)

    def test_new_boost_page_offers_the_quick_picks(self):
        page = self.bob.get("/messages/%d/boosts/new" % self.message).text
        for emoji in campfire.BOOST_QUICK_PICKS:
            self.assertIn(emoji, page)


# Campfire's /play: the 15 picture sounds and the 41 text sounds.
PICTURE_SOUNDS = ("56k clowntown curb dangerzone deeper donotwant drama greatjob loggins nyan pushit rumble what "
                  "yay yeah").split()
TEXT_SOUNDS = {
    "bell": "🔔", "bezos": "😆💭", "bueller": "anyone?", "butts": "👐 🚬", "cottoneyejoe": "🎶🙉🎶 ",
    "crickets": "hears crickets chirping", "dadgummit": "dad gummit!! 🎣", "danielsan": "🎆 🏆 🎆",
    "ballmer": "developers!", "flawless": "#flawless", "glados": "🤖💢", "gogogo": "Go, go, go!", "greyjoy": "😖🎺",
    "guarantee": "guarantees it 👌", "heygirl": "✨💁✨", "honk": "HONK", "horn": "🐶 ✂️ 🐱",
    "horror": "💀 💀 💀 💀 💀 💀 💀", "inconceivable": "doesn't think it means what you think it means…",
    "letitgo": "❄️👩❄️⛄️❄️", "live": "is DOING IT LIVE", "makeitso": "make it so 👉", "noooo": "👸💀😒",
    "ohmy": "raises an eyebrow 😏", "ohyeah": "isn't playing by the rules", "rimshot": "plays a rimshot",
    "rollout": "is rolling out 🚗", "sax": "🌇🎷🎶", "secret": "found a secret area 🔑", "sexyback": "🔞",
    "story": "and now you know…", "tada": "plays a fanfare 🎏", "tmyk": "✨ ⭐️ The More You Know ✨ ⭐️",
    "totes": "😁👍", "trololo": "трололо", "trombone": "plays a sad trombone", "unix": "knows this 💻",
    "vuvuzela": "======<() ~ ♪ ~♫", "whoomp": "👏‼️😎", "wups": "wups!", "yodel": "📣🗻🙉",
}


class PlayTests(ChatTestCase):
    def test_campfire_has_exactly_56_sound_names(self):
        self.assertEqual(len(PICTURE_SOUNDS) + len(TEXT_SOUNDS), 56)
        self.assertEqual(set(campfire.SOUND_NAMES), set(PICTURE_SOUNDS) | set(TEXT_SOUNDS))
        self.assertEqual(len(campfire.SOUND_NAMES), 56)
        for name in ("incoming", "mario_coin", "maybe"):
            self.assertNotIn(name, campfire.SOUND_NAMES)

    def test_sound_texts_are_campfires(self):
        self.assertEqual(campfire.SOUND_TEXTS, TEXT_SOUNDS)

    def test_play_tada_renders_a_fanfare(self):
        response = self.post(self.bob, 1, "/play tada")
        self.assertEqual(response.status, 201)
        self.assertIn('data-sound="tada"', response.text)
        self.assertIn('<span class="sound__icon" aria-hidden="true"></span> plays a fanfare 🎏', response.text)
        self.assertIn("plays a fanfare 🎏", self.ada.get("/rooms/1").text)

    def test_picture_sound_renders_its_name_in_a_badge(self):
        response = self.post(self.bob, 1, "<div>/play nyan</div>")
        self.assertIn('data-sound="nyan"', response.text)
        self.assertIn('<span class="sound__icon" aria-hidden="true"></span> <span class="sound__badge">nyan</span>',
                      response.text)

    def test_every_sound_name_plays(self):
        for name in sorted(campfire.SOUND_NAMES):
            with self.subTest(name=name):
                response = self.post(self.bob, 1, "/play " + name)
                self.assertIn('data-sound="%s"' % name, response.text)
                if name in TEXT_SOUNDS:
                    self.assertIn(str(campfire.escape(TEXT_SOUNDS[name])), response.text)
                else:
                    self.assertIn('<span class="sound__badge">%s</span>' % name, response.text)

    def test_unknown_sound_or_extra_words_are_ordinary_messages(self):
        for body in ("/play unknownsound", "/play tada now", "/playtada", "please /play tada", "/play  tada",
                     "/PLAY tada", "/play"):
            with self.subTest(body=body):
                response = self.post(self.bob, 1, body)
                self.assertEqual(response.status, 201)
                self.assertNotIn("data-sound", response.text)
                self.assertNotIn("sound__icon", response.text)
                self.assertIn(str(campfire.escape(body)).split()[0], response.text)


class MentionTests(ChatTestCase):
    def stored(self, message):
        return self.app.store.message(message)["body"]

    def test_typed_full_name_of_a_member_becomes_a_signed_mention(self):
        message = self.post_id(self.ada, 1, "Hey @Bob Builder, look")
        body = self.stored(message)
        attachment = re.search(r'<action-text-attachment sgid="([^"]+)" content-type="([^"]+)">', body)
        self.assertIsNotNone(attachment, body)
        self.assertEqual(attachment.group(2), "application/vnd.campfire.mention")
        self.assertEqual(campfire.sgid_user_id(campfire.unescape(attachment.group(1))), self.bob_id)
        self.assertEqual(self.app.db.value("SELECT body FROM message_search_index WHERE rowid = ?", (message,)),
                         "Hey @Bob Builder, look")
        page = self.carol.get("/rooms/1").text
        self.assertRegex(page, r'<span class="mention" data-user-id="%d">.*?Bob Builder</span>' % self.bob_id)

    def test_names_with_apostrophes_and_ampersands_are_mentioned_too(self):
        with self.app.db.atomic():
            obrien = self.app.store.create_user("Dan O'Brien", "dan@example.com", "pw")
            tom = self.app.store.create_user("Tom & Jerry", "tom@example.com", "pw")
        for name, user in (("Dan O'Brien", obrien), ("Tom & Jerry", tom)):
            with self.subTest(name=name):
                message = self.post_id(self.ada, 1, "thanks @%s!" % name)
                sgids = re.findall(r'<action-text-attachment sgid="([^"]+)"', self.stored(message))
                self.assertEqual([campfire.sgid_user_id(campfire.unescape(sgid)) for sgid in sgids], [user.id])

    def test_name_of_someone_outside_the_room_stays_text(self):
        message = self.post_id(self.carol, self.closed, "ask @Dave Outsider later")
        self.assertNotIn("action-text-attachment", self.stored(message))
        self.assertIn("@Dave Outsider", self.stored(message))
        self.assertNotIn('class="mention"', self.carol.get("/rooms/%d" % self.closed).text)

    def test_forged_mentions_are_dropped(self):
        forged = [campfire.make_sgid(self.bob_id, "not our secret key base"),
                  base64.b64encode(json.dumps({"_rails": {"data": "gid://campfire/User/%d" % self.bob_id,
                                                          "pur": "attachable"}}).encode()).decode() + "--" + "ab" * 32,
                  "garbage"]
        for sgid in forged:
            with self.subTest(sgid=sgid):
                message = self.post_id(self.dave, 1, '<div>hi <action-text-attachment sgid="%s" content-type="%s">'
                                                     '</action-text-attachment></div>'
                                       % (sgid, campfire.MENTION_CONTENT_TYPE))
                self.assertNotIn("action-text-attachment", self.stored(message))
                self.assertNotIn('class="mention"', self.ada.get("/rooms/1/messages/%d" % message).text)

    def test_mention_signed_by_us_is_kept(self):
        people = json.loads(self.dave.get("/autocompletable/users?query=bob&room_id=1").text)
        sgid = people[0]["sgid"]
        message = self.post_id(self.dave, 1, '<div>hi <action-text-attachment sgid="%s" content-type="%s">'
                                             '</action-text-attachment></div>' % (sgid, campfire.MENTION_CONTENT_TYPE))
        self.assertIn("action-text-attachment", self.stored(message))
        self.assertIn('class="mention" data-user-id="%d"' % self.bob_id, self.ada.get("/rooms/1").text)

    def test_mention_in_code_or_a_link_stays_text(self):
        message = self.post_id(self.ada, 1, "<pre>@Bob Builder</pre>")
        self.assertNotIn("action-text-attachment", self.stored(message))

    def test_autocomplete_returns_room_members_with_sgids(self):
        response = self.ada.get("/autocompletable/users?query=bo&room_id=1")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.header("Content-Type").startswith("application/json"))
        people = json.loads(response.text)
        self.assertEqual([person["name"] for person in people], ["Bob Builder"])
        person = people[0]
        self.assertEqual(set(person), {"name", "value", "avatar_url", "sgid"})
        self.assertEqual(person["value"], self.bob_id)
        self.assertEqual(avatar_initials(person["avatar_url"]), "BB")  # no picture: drawn, not fetched
        self.assertEqual(campfire.verify_sgid(person["sgid"], self.app.store.sgid_secret), self.bob_id)

    def test_autocomplete_lists_only_members_of_the_room(self):
        people = json.loads(self.ada.get("/autocompletable/users?query=o&room_id=%d" % self.closed).text)
        names = {person["name"] for person in people}
        self.assertIn("Bob Builder", names)
        self.assertIn("Carol Creator", names)
        self.assertNotIn("Dave Outsider", names)

    def test_autocomplete_returns_at_most_20(self):
        with self.app.db.atomic():
            for index in range(25):
                self.app.store.create_user("Bo Peep %02d" % index, "bo%d@example.com" % index, "pw")
        people = json.loads(self.ada.get("/autocompletable/users?query=bo&room_id=1").text)
        self.assertEqual(len(people), 20)


class CachingChecks:
    """Run twice: with the page caches on and off."""

    def assertShows(self, client, text, path="/rooms/1"):
        page = client.get(path)
        self.assertEqual(page.status, 200)
        self.assertIn(text, page.text)

    def assertHides(self, client, text, path="/rooms/1"):
        page = client.get(path)
        self.assertEqual(page.status, 200)
        self.assertNotIn(text, page.text)

    def prime(self):
        for client in (self.ada, self.bob):
            client.get("/rooms/1")
            client.get("/rooms/%d" % self.closed)
            client.get("/users/me/sidebar")

    def test_post_edit_delete_boost_and_rename_show_up_at_once_for_everyone(self):
        self.prime()
        message = self.post_id(self.bob, 1, "fresh words")
        for client in (self.bob, self.ada):
            self.assertShows(client, "fresh words")
        self.bob.post("/rooms/1/messages/%d" % message, {"_method": "patch", "message[body]": "revised words"})
        for client in (self.bob, self.ada):
            self.assertShows(client, "revised words")
            self.assertHides(client, "fresh words")
        self.ada.post("/messages/%d/boosts" % message, {"boost[content]": "🥳"})
        for client in (self.bob, self.ada):
            self.assertShows(client, "🥳")
        self.bob.post("/rooms/1/messages/%d" % message, {"_method": "delete"})
        for client in (self.bob, self.ada):
            self.assertHides(client, "revised words")
        self.ada.post("/rooms/opens/1", {"_method": "patch", "room[name]": "Campfire Talk"})
        for client in (self.bob, self.ada):
            self.assertShows(client, "Campfire Talk")
            self.assertShows(client, "Campfire Talk", "/users/me/sidebar")
            self.assertShows(client, "Campfire Talk", "/rooms/%d" % self.closed)

    def test_messages_page_and_permalink_show_edits(self):
        first = self.post_id(self.bob, 1, "first words")
        second = self.post_id(self.bob, 1, "second words")
        path = "/rooms/1/messages?before=%d" % second
        self.assertShows(self.ada, "first words", path)
        self.bob.post("/rooms/1/messages/%d" % first, {"_method": "patch", "message[body]": "better words"})
        self.assertShows(self.ada, "better words", path)
        self.assertShows(self.ada, "better words", "/rooms/1/@%d" % first)

    def test_a_page_cached_for_one_user_is_never_served_to_another(self):
        message = self.post_id(self.bob, 1, "shared message")
        for client, name in ((self.ada, "Ada Admin"), (self.bob, "Bob Builder"), (self.ada, "Ada Admin"),
                             (self.bob, "Bob Builder")):
            for path in ("/rooms/1", "/searches?q=shared", "/rooms/1/@%d" % message):
                with self.subTest(name=name, path=path):
                    page = client.get(path).text
                    shown = re.search(r'class="topbar__user"[^>]*>.*?<span>([^<]*)</span>', page).group(1)
                    self.assertEqual(shown, name)
        self.assertIn('data-user-id="%d"' % self.bob_id, self.bob.get("/rooms/1").text)
        self.assertIn('data-user-id="%d"' % self.ada_id, self.ada.get("/rooms/1").text)

    def test_a_removed_member_gets_404_even_after_the_page_was_cached(self):
        self.post_id(self.carol, self.closed, "plans")
        self.assertEqual(len(message_ids(self.bob.get("/searches?q=plans").text, "search-results")), 1)
        self.assertShows(self.bob, "plans", "/rooms/%d" % self.closed)
        self.assertShows(self.bob, "plans", "/rooms/%d/messages" % self.closed)
        self.carol.post("/rooms/closeds/%d" % self.closed, {"_method": "patch", "room[name]": "Secret Plans",
                                                            "user_ids[]": [str(self.ada_id)]})
        for path in ("/rooms/%d" % self.closed, "/rooms/%d/messages" % self.closed):
            response = self.bob.get(path)
            self.assertEqual(response.status, 404)
            self.assertNotIn("plans", response.text)
        self.assertNotIn(self.closed, self.sidebar_links(self.bob))
        self.assertEqual(message_ids(self.bob.get("/searches?q=plans").text, "search-results"), [])

    def test_search_results_follow_new_messages(self):
        self.assertEqual(message_ids(self.ada.get("/searches?q=zeppelin").text, "search-results"), [])
        message = self.post_id(self.bob, 1, "a zeppelin overhead")
        self.assertEqual(message_ids(self.ada.get("/searches?q=zeppelin").text, "search-results"), [message])

    def test_direct_rooms_reorder_by_recency_in_a_cached_sidebar(self):
        with_bob = self.create_direct_room(self.ada, [self.bob_id])
        with_carol = self.create_direct_room(self.ada, [self.carol_id])
        self.connect(self.ada_id)

        def direct_order():
            page = self.ada.get("/users/me/sidebar").text
            return [int(i) for i in re.findall(r'href="/rooms/(\d+)"', page[page.index('id="direct_rooms"'):])]
        self.post_id(self.carol, with_carol, "first")
        self.assertEqual(direct_order(), [with_carol, with_bob])
        self.post_id(self.bob, with_bob, "newer")  # Ada is connected: no unread mark, but the order changes
        self.assertEqual(direct_order(), [with_bob, with_carol])


class LruCacheTests(unittest.TestCase):
    def page(self, size, tag=b"x"):
        body = os.urandom(size // 2).hex().encode()[:size]  # incompressible, like a page of distinct messages
        return campfire.CachedPage(body, campfire.gzip_bytes(body), "text/html; charset=utf-8", '"%s"' % tag, ())

    def held(self, cache):
        """What the entries really hold, counted here rather than by the cache."""
        return sum(len(entry.body) + len(entry.gzipped) + campfire.CACHE_ENTRY_OVERHEAD_BYTES
                   for entry, _ in cache._data.values())

    def test_large_distinct_pages_never_hold_more_than_the_bound_and_the_oldest_go(self):
        bound = 4 * 1024 * 1024
        cache = campfire.LruCache(bound, campfire.CachedPage.size)
        keys = []
        for index in range(60):  # 60 pages of ~400 KB (plain and gzipped): 24 MB offered
            keys.append(("search", index))
            cache.put(keys[-1], self.page(200_000 + index))
            self.assertLessEqual(self.held(cache), bound)
            self.assertEqual(cache.bytes, self.held(cache))
            self.assertTrue(cache.get(keys[-1]) is not None)  # the newest is kept
        self.assertGreater(self.held(cache), bound // 2)  # it does cache
        self.assertTrue(cache.get(keys[0]) is None)  # the oldest went first
        kept = [key for key in keys if cache.get(key) is not None]
        self.assertEqual(kept, keys[-len(kept):])
        cache.get(kept[0])  # used now: the next to go is the one after it
        cache.put(("search", "new"), self.page(200_000))
        self.assertTrue(cache.get(kept[0]) is not None)
        self.assertTrue(cache.get(kept[1]) is None)

    def test_replacing_clearing_and_a_page_larger_than_the_bound(self):
        cache = campfire.LruCache(1024 * 1024, campfire.CachedPage.size)
        cache.put("a", self.page(100_000))
        cache.put("a", self.page(10_000))
        self.assertEqual(cache.bytes, self.held(cache))
        self.assertEqual(len(cache), 1)
        cache.put("huge", self.page(800_000))  # plain and gzipped, larger than the whole cache
        self.assertTrue(cache.get("huge") is None)
        self.assertTrue(cache.get("a") is not None)
        cache.clear()
        self.assertEqual((len(cache), cache.bytes), (0, 0))

    def test_rendered_messages_are_counted_by_their_size_in_memory(self):
        cache = campfire.LruCache(256 * 1024)
        for index in range(100):
            cache.put(index, campfire.HTML("é" * 10_000 + str(index)))  # 2 bytes a character in memory
            self.assertLessEqual(sum(sys.getsizeof(value) + campfire.CACHE_ENTRY_OVERHEAD_BYTES
                                     for value, _ in cache._data.values()), 256 * 1024)
        self.assertGreaterEqual(len(cache), 10)


class CachedPageTests(CachingChecks, ChatTestCase):
    CACHE = True

    def test_etag_gives_304_until_the_room_changes(self):
        first = self.ada.get("/rooms/1")
        etag = first.header("ETag")
        self.assertTrue(etag)
        again = self.ada.get("/rooms/1", headers={"If-None-Match": etag})
        self.assertEqual(again.status, 304)
        self.assertEqual(again.body, b"")
        self.post_id(self.bob, 1, "news")
        self.ada.get("/rooms/1")  # visiting clears the unread mark, which changes the sidebar
        changed = self.ada.get("/rooms/1", headers={"If-None-Match": etag})
        self.assertEqual(changed.status, 200)
        self.assertNotEqual(changed.header("ETag"), etag)
        self.assertIn("news", changed.text)

    def test_a_weak_or_listed_etag_gives_304_too(self):
        etag = self.ada.get("/rooms/1").header("ETag")
        for value in ("W/" + etag, '"other", ' + etag, "*"):
            with self.subTest(if_none_match=value):
                self.assertEqual(self.ada.get("/rooms/1", headers={"If-None-Match": value}).status, 304)

    def test_etag_differs_between_users(self):
        self.assertNotEqual(self.ada.get("/rooms/1").header("ETag"), self.bob.get("/rooms/1").header("ETag"))
        response = self.bob.get("/rooms/1", headers={"If-None-Match": self.ada.get("/rooms/1").header("ETag")})
        self.assertEqual(response.status, 200)

    def test_a_cached_page_keeps_the_forms_asked_for_and_both_are_the_same_page(self):
        for index in range(30):
            self.post_id(self.bob, 1, "<p>line %d of the coffee plans</p>" % index)
        browser = {"Accept-Encoding": "gzip, deflate, br"}
        for first, then in ((browser, {}), ({}, browser)):
            with self.subTest(first=first):
                self.ada.get("/rooms/1")  # settles what a visit changes (the unread line)
                self.app.page_cache.clear()
                one = self.ada.get("/rooms/1", headers=first)
                [entry] = [entry for entry, _ in self.app.page_cache._data.values() if entry.etag == one.header("ETag")]
                if first:  # a browser's visit keeps the gzip form alone, a fraction of the plain size
                    self.assertIsNone(entry.body)
                    self.assertLess(len(entry.gzipped), len(gzip.decompress(entry.gzipped)) / 3)
                else:
                    self.assertIsNone(entry.gzipped)
                other = self.ada.get("/rooms/1", headers=then)  # the other form, made from the kept one
                self.assertEqual(other.header("ETag"), one.header("ETag"))
                gzipped, plain = (one, other) if first else (other, one)
                self.assertEqual(gzipped.header("Content-Encoding"), "gzip")
                self.assertIsNone(plain.header("Content-Encoding"))
                self.assertEqual(gunzipped_three_ways(self, gzipped.body), plain.body)
                self.assertIn("line 29 of the coffee plans", plain.text)
                self.assertIsNotNone(entry.body)
                self.assertIsNotNone(entry.gzipped)
                self.assertEqual(self.app.page_cache.bytes, sum(
                    kept.size() + campfire.CACHE_ENTRY_OVERHEAD_BYTES for kept, _ in self.app.page_cache._data.values()))
                for headers, form in ((browser, gzipped), ({}, plain)):  # and from now on, as kept
                    self.assertEqual(self.ada.get("/rooms/1", headers=headers).body, form.body)


class UncachedPageTests(CachingChecks, ChatTestCase):
    CACHE = False

    def test_caches_are_really_off(self):
        self.ada.get("/rooms/1")
        self.assertEqual(len(self.app.page_cache), 0)


class KeptMessagesTests(ChatTestCase):
    """Pages are rendered afresh (the page cache is off) from the rendered messages the app
    keeps; for every viewer they are byte for byte the pages a render with nothing kept makes."""

    CACHE = False

    def setUp(self):
        super().setUp()
        self.bob_message = self.post_id(self.bob, 1, "<div>bob says coffee first</div>")
        mention = ('<action-text-attachment sgid="%s" content-type="%s"></action-text-attachment>'
                   % (self.app.store.mention_sgid(self.bob_id), campfire.MENTION_CONTENT_TYPE))
        self.mention = self.post_id(self.ada, 1, "<div>coffee for %s and @everyone</div>" % mention)
        self.ids = [self.post_id(self.ada if index % 2 else self.bob, 1, "<div>coffee number %d</div>" % index)
                    for index in range(45)]
        self.paths = ["/rooms/1", "/rooms/1/messages?before=%d" % self.ids[30], "/searches?q=coffee",
                      "/rooms/1/@%d" % self.mention]

    def assertKeptIsFresh(self):
        for client in (self.ada, self.bob):
            for path in self.paths:
                with self.subTest(path=path, viewer=client):
                    client.get(path)  # settles what a visit changes (the unread line), keeps the messages
                    kept = client.get(path)
                    self.assertGreater(len(self.app.message_cache), 40)
                    self.app.message_cache.clear()
                    fresh = client.get(path)
                    self.assertEqual((kept.status, fresh.status), (200, 200))
                    self.assertEqual(kept.text, fresh.text)

    def renders(self, client, path, *, post=None):
        """How many messages a request renders (rather than takes as kept), with a post by
        `post` (a client) before it when given."""
        with unittest.mock.patch.object(campfire, "render_message", wraps=campfire.render_message) as render:
            if post is not None:
                self.post_id(post, 1, "<div>one more</div>")
            self.assertEqual(client.get(path).status, 200)
        return render.call_count

    def test_pages_from_kept_messages_equal_fresh_pages_after_edits_boosts_saves_and_deletes(self):
        self.assertKeptIsFresh()
        self.bob.post("/rooms/1/messages/%d" % self.ids[44], {"_method": "patch", "message[body]": "coffee revised"})
        self.assertKeptIsFresh()
        self.assertEqual(self.ada.post("/messages/%d/boosts" % self.ids[40], {"boost[content]": "🥳"}).status, 201)
        self.assertEqual(self.bob.post("/messages/%d/boosts" % self.mention, {"boost[content]": "☕"}).status, 201)
        self.assertKeptIsFresh()
        self.ada.post("/messages/%d/bookmark" % self.ids[39])
        self.assertKeptIsFresh()
        self.ada.post("/rooms/1/messages/%d" % self.ids[41], {"_method": "delete"})
        self.assertKeptIsFresh()
        self.bob.post("/users/me/profile", {"_method": "patch", "user[name]": "Robert Builder"})
        self.assertKeptIsFresh()
        page = self.ada.get("/rooms/1").text
        self.assertIn("coffee revised", page)
        self.assertIn("Robert Builder", page)
        self.assertNotIn("coffee number 41<", page)

    def bodies_read(self, client, path):
        """The ids whose rich text a request reads (the IN lists of the statements that join it)."""
        statements = []
        self.app.db.connection.set_trace_callback(statements.append)
        try:
            self.assertEqual(client.get(path).status, 200)
        finally:
            self.app.db.connection.set_trace_callback(None)
        return sorted(int(found) for sql in statements if "action_text_rich_texts" in sql
                      for found in re.findall(r"\d+", sql.partition(" IN (")[2].partition(")")[0]))

    def test_a_page_reads_the_bodies_of_only_the_messages_it_renders(self):
        before = "/rooms/1/messages?before=%d" % self.ids[30]
        for path in ("/rooms/1", before):
            self.ada.get(path)
            self.assertEqual(self.bodies_read(self.ada, path), [], path)
        self.bob.post("/users/me/profile", {"_method": "patch", "user[name]": "Robert Builder"})  # every name
        self.assertEqual(self.bodies_read(self.ada, "/rooms/1"), sorted(self.ids[-40:]))
        self.assertEqual(self.bodies_read(self.ada, "/rooms/1"), [])
        self.assertIn("Robert Builder", self.ada.get("/rooms/1").text)
        self.app.message_cache.clear()
        self.assertEqual(self.bodies_read(self.bob, before), sorted(self.ids[:30][-40:] + [self.bob_message,
                                                                                           self.mention]))
        self.assertEqual(self.bodies_read(self.bob, before), [])
        self.assertIn("coffee number 29<", self.bob.get(before).text)

    def test_a_new_message_renders_one_message_not_the_page(self):
        self.ada.get("/rooms/1")
        self.assertEqual(self.renders(self.ada, "/rooms/1"), 0)
        self.assertEqual(self.renders(self.ada, "/rooms/1", post=self.bob), 1)  # the post's own answer
        self.assertEqual(self.renders(self.bob, "/rooms/1"), 0)
        self.assertIn("one more", self.bob.get("/rooms/1").text)

    def test_with_no_room_for_kept_messages_every_page_renders_each_message(self):
        app = make_app(self.storage, cache=False, message_cache_bytes=0)
        try:
            client = Client(app)
            client.cookies = dict(self.ada.cookies)
            for _ in range(2):
                self.assertEqual(self.renders(client, "/rooms/1"), 40)
        finally:
            app.close()


class SplicedGzipTests(ChatTestCase):
    """A room or messages page sent gzipped is built from the runs of its messages kept
    compressed (App.deflated_run) and its own markup: every such body, decoded by the gzip
    module, by zlib and by the gzip program, is the page sent uncompressed, byte for byte."""

    CACHE = False
    GZIP = {"Accept-Encoding": "gzip, deflate, br"}

    def setUp(self):
        super().setUp()
        self.ids = [self.post_id(self.ada if index % 3 else self.bob, 1,
                                 "<div>coffee number %d <strong>%s</strong></div>" % (index, "é☕" * (index % 4)))
                    for index in range(45)]
        self.paths = ["/rooms/1", "/rooms/1/messages?before=%d" % self.ids[30],
                      "/rooms/1/messages?after=%d" % self.ids[2]]

    def assertSplicedIsPlain(self, client, path):
        client.get(path, headers=self.GZIP)  # settles what a visit changes (the unread line)
        gzipped = client.get(path, headers=self.GZIP)
        plain = client.get(path)
        self.assertEqual((gzipped.status, plain.status), (200, 200))
        self.assertEqual(gzipped.header("Content-Encoding"), "gzip")
        self.assertIsNone(plain.header("Content-Encoding"))
        self.assertEqual(gunzipped_three_ways(self, gzipped.body), plain.body)
        # runs compressed alone cost some bytes, never many: within a quarter of the page compressed whole
        self.assertLessEqual(len(gzipped.body), 1.25 * len(campfire.gzip_bytes(plain.body, campfire.GZIP_FRESH_LEVEL)))
        return plain.text

    def kept_runs(self):
        return [key for key in self.app.message_cache._data if key[0] == "deflated"]

    def test_pieces_joined_are_one_gzip_stream_of_their_data(self):
        rng = random.Random(7)
        datas = [b"", b"a", b"<div>coffee</div>" * 3000, bytes(rng.randrange(256) for _ in range(70000)),
                 "é☕ ".encode() * 500, b"x" * 40000]
        for count in (1, 2, 6):
            for level in (1, 6, 9):
                with self.subTest(count=count, level=level):
                    chosen = [rng.choice(datas) for _ in range(count)]
                    body = b"".join(chosen)
                    spliced = campfire.gzip_pieces(body, [campfire.deflate_piece(data, level) for data in chosen if data])
                    self.assertEqual(gunzipped_three_ways(self, spliced), body)
        # RFC 1952's CRC-32 check value, read back from the trailer of a spliced stream
        spliced = campfire.gzip_pieces(b"123456789", [campfire.deflate_piece(b"1234"), campfire.deflate_piece(b"56789")])
        self.assertEqual(spliced[-8:], bytes.fromhex("2639f4cb09000000"))
        self.assertEqual(spliced[:10], bytes.fromhex("1f8b08000000000000ff"))

    def test_room_and_messages_pages_gzipped_from_kept_runs_are_the_plain_pages(self):
        for client in (self.ada, self.bob):
            for path in self.paths:
                with self.subTest(path=path, viewer=client):
                    self.assertSplicedIsPlain(client, path)
        self.assertGreater(len(self.kept_runs()), 3)
        self.assertEqual(self.kept_runs(), [key for key in self.kept_runs()
                                            if all(isinstance(fragment, str) for fragment in key[1])])

    def test_a_room_page_with_the_since_line_is_spliced_around_it(self):
        self.bob.get("/rooms/1")
        self.bob.get("/rooms/2")  # Bob is elsewhere while Ada posts
        for index in range(5):
            self.post_id(self.ada, 1, "<div>while Bob was away %d</div>" % index)
        gzipped = self.bob.get("/rooms/1", headers=self.GZIP)
        self.assertEqual(gzipped.header("Content-Encoding"), "gzip")
        page = gunzipped_three_ways(self, gzipped.body).decode()
        self.assertIn('id="since_last_visit"', page)
        self.assertLess(page.index("coffee number 44"), page.index("since_last_visit"), page.index("away 0"))
        self.assertNotIn("<!--messages", page)

    def test_an_edited_message_has_its_run_compressed_afresh(self):
        for path in self.paths:
            self.assertSplicedIsPlain(self.ada, path)
        runs = set(self.kept_runs())
        edited = self.ids[40]
        author = self.ada  # index 40: every third message is Bob's, from index 0
        response = author.post("/rooms/1/messages/%d" % edited, {"_method": "patch", "message[body]": "coffee revised"})
        self.assertLess(response.status, 400)
        page = self.assertSplicedIsPlain(self.ada, "/rooms/1")
        self.assertIn("coffee revised", page)
        self.assertNotIn("coffee number 40 ", page)
        fresh = set(self.kept_runs()) - runs
        self.assertEqual(len(fresh), 1)  # the run holding the edited message, and only it
        self.assertTrue(any("coffee revised" in fragment for fragment in next(iter(fresh))[1]))

    def test_kept_messages_at_their_bound_still_make_whole_pages(self):
        for bound in (0, 12 * 1024, 64 * 1024):
            app = make_app(self.storage, cache=False, message_cache_bytes=bound)
            try:
                client = Client(app)
                client.cookies = dict(self.ada.cookies)
                for _ in range(2):
                    for path in self.paths:
                        with self.subTest(bound=bound, path=path):
                            client.get(path)
                            gzipped = client.get(path, headers=self.GZIP)
                            self.assertEqual(gunzipped_three_ways(self, gzipped.body), client.get(path).body)
                            self.assertLessEqual(app.message_cache.bytes, bound)
                if bound:
                    self.assertGreater(app.message_cache.bytes, bound // 2)
            finally:
                app.close()


class SplicedGzipCachedTests(SplicedGzipTests):
    """The same with the page cache on: a page kept is gzipped from the runs once; its ETag
    is the plain page's, and If-None-Match still answers 304."""

    CACHE = True

    def test_etag_names_the_page_whichever_encoding(self):
        self.ada.get("/rooms/1")  # settles the unread line
        gzipped = self.ada.get("/rooms/1", headers=self.GZIP)
        plain = self.ada.get("/rooms/1")
        self.assertEqual(gzipped.header("ETag"), plain.header("ETag"))
        again = self.ada.get("/rooms/1", headers={**self.GZIP, "If-None-Match": gzipped.header("ETag")})
        self.assertEqual(again.status, 304)
        self.post_id(self.bob, 1, "<div>one more</div>")
        changed = self.ada.get("/rooms/1", headers={**self.GZIP, "If-None-Match": gzipped.header("ETag")})
        self.assertEqual(changed.status, 200)
        self.assertIn(b"one more", gunzipped_three_ways(self, changed.body))


class RailsDatabaseTests(unittest.TestCase):
    """A database written the way Rails writes it, with a Trix body holding a mention."""

    RAILS_SGID = base64.b64encode(json.dumps({"_rails": {"data": "gid://campfire/User/1", "pur": "attachable"}})
                                  .encode()).decode() + "--" + "4f3c2a1b" * 8
    BODY = ('<div>Hi <action-text-attachment sgid="%s" content-type="application/vnd.campfire.mention">'
            '</action-text-attachment></div>') % RAILS_SGID

    def setUp(self):
        self.storage = tempfile.mkdtemp(prefix="campfire-rails-")
        os.makedirs(os.path.join(self.storage, "db"))
        path = os.path.join(self.storage, "db", "production.sqlite3")
        rails_database(path)
        connection = sqlite3.connect(path)
        stamp = "2025-03-04 05:07:08.654321"
        connection.execute("INSERT INTO messages (room_id, creator_id, client_message_id, created_at, updated_at) "
                           "VALUES (1, 1, 'f5b8c1e0-1111-4222-8333-944445555666', ?, ?)", (stamp, stamp))
        connection.execute("INSERT INTO action_text_rich_texts (name, body, record_type, record_id, created_at, "
                           "updated_at) VALUES ('body', ?, 'Message', 1, ?, ?)", (self.BODY, stamp, stamp))
        connection.execute("INSERT INTO message_search_index (rowid, body) VALUES (1, 'Hi @Rita Rails')")
        connection.commit()
        connection.close()
        self.app = make_app(self.storage)
        self.client = Client(self.app)
        self.client.cookies["session_token"] = self.app.store.create_session(1, "127.0.0.1", "test")

    def tearDown(self):
        self.app.close()
        shutil.rmtree(self.storage, ignore_errors=True)

    def test_rails_message_renders_with_its_mention_chip(self):
        page = self.client.get("/rooms/1")
        self.assertEqual(page.status, 200)
        self.assertEqual(message_ids(page.text), [1])
        self.assertRegex(page.text, r'<div class="message__body"><div>Hi <span class="mention" data-user-id="1">'
                                    r'.*?Rita Rails</span></div></div>')
        self.assertIn('datetime="2025-03-04T05:07:08Z"', page.text)
        self.assertNotIn("action-text-attachment", page.text)

    def test_rails_message_is_found_by_search(self):
        for query in ("Hi", "rita"):
            with self.subTest(query=query):
                page = self.client.get("/searches?q=" + query)
                self.assertEqual(message_ids(page.text, "search-results"), [1])

    def test_rails_user_signs_in_with_the_bcrypt_password(self):
        digest = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
        if not campfire.bcrypt_supported():
            self.skipTest("this system's crypt(3) has no bcrypt")
        self.assertEqual(self.app.db.value("SELECT password_digest FROM users WHERE email_address = ?",
                                           ("rita@example.com",)), digest)  # Rails' own bcrypt digest
        client = Client(self.app)
        response = client.post("/session", {"email_address": "rita@example.com", "password": "U*U"})
        self.assertEqual(response.status, 303)
        page = client.get("/rooms/1")
        self.assertEqual(page.status, 200)
        self.assertIn('class="mention"', page.text)

    def test_new_messages_land_beside_the_rails_ones(self):
        response = self.client.post("/rooms/1/messages", {"message[body]": "hello from python"})
        self.assertEqual(response.status, 201)
        self.assertEqual(message_ids(self.client.get("/rooms/1").text), [1, fragment_message_id(response)])


if __name__ == "__main__":
    unittest.main()
