"""Catching up, in-process: threads as rooms of their own, the mentions inbox,
@everyone and @here, the line since the last visit, Mark as unread, saved
messages, and search by prefix with rooms named, filters and highlights.

ChatTestCase's people: Ada (administrator) created All Talk; Bob and Carol are
members; Carol created the closed room "Secret Plans" with Ada and Bob; Dave
is in All Talk only."""

import re

from tests.helpers import avatar_initials, campfire, wait_until
from tests.test_cable import CableTestCase
from tests.test_rooms import ChatTestCase, message_ids


def mention_ids(client):
    """Message ids on the first page of the mentions inbox, newest first, and those marked unread."""
    page = client.get("/mentions")
    assert page.status == 200, page.status
    listed = message_ids(page.text, "mentions_list")
    unread = [int(found) for found in re.findall(
        r'<li class="inbox__item inbox__item--unread">.*?data-message-id="(\d+)"', page.text)]
    return listed, unread


def mention_count(client):
    """The number on the sidebar's Mentions link (0 when it shows none)."""
    sidebar = client.get("/users/me/sidebar").text
    link = re.search(r'<a class="sidebar__link sidebar__link--mentions" href="/mentions">(.*?)</a>', sidebar)
    assert link, "the sidebar has no Mentions link"
    count = re.search(r'data-count="(\d+)"', link.group(1))
    return int(count.group(1)) if count else 0


class ThreadTests(ChatTestCase):
    def start_thread(self, client, room_id, message_id):
        response = client.post("/rooms/%d/messages/%d/thread" % (room_id, message_id))
        self.assertEqual(response.status, 303, response.text[:300])
        return int(response.header("Location").rsplit("/", 1)[1])

    def test_a_thread_is_a_room_of_its_own_made_once(self):
        parent = self.post_id(self.ada, self.all_talk, "Shall we ship on Friday?")
        thread = self.start_thread(self.bob, self.all_talk, parent)
        self.assertEqual(self.start_thread(self.carol, self.all_talk, parent), thread)
        self.assertNotEqual(thread, self.all_talk)
        room = self.app.store.room(thread)
        self.assertTrue(room.thread)
        self.assertEqual((room.parent_message_id, room.parent_room_id), (parent, self.all_talk))
        # To Once Campfire it is a closed room nobody belongs to.
        self.assertEqual(self.room_type(thread), campfire.ROOM_CLOSED)
        self.assertEqual(self.member_ids(thread), set())
        # It is nobody's sidebar entry.
        self.assertNotIn(thread, self.sidebar_links(self.bob))

    def test_replies_page_search_and_permalinks_work_in_the_thread(self):
        parent = self.post_id(self.ada, self.all_talk, "Release notes?")
        thread = self.start_thread(self.bob, self.all_talk, parent)
        replies = [self.post_id(self.bob if i % 2 else self.carol, thread, "reply number %d zebra" % i)
                   for i in range(45)]
        page = self.dave.get("/rooms/%d" % thread)
        self.assertEqual(page.status, 200)
        self.assertIn('class="room thread"', page.text)
        self.assertEqual(message_ids(page.text, "thread_messages"), replies[-40:])
        self.assertIn('id="message_%d"' % parent, page.text[page.text.index("thread__parent"):])
        older = self.dave.get("/rooms/%d/messages?before=%d" % (thread, replies[-40]))
        self.assertEqual(message_ids(older.text, None), replies[:5])
        permalink = self.dave.get("/rooms/%d/@%d" % (thread, replies[3]))
        self.assertEqual(permalink.status, 200)
        self.assertIn('data-highlight-id="%d"' % replies[3], permalink.text)
        self.assertIn('class="room thread"', permalink.text)
        search = self.dave.get("/searches?q=zebra")
        self.assertEqual(len(message_ids(search.text, "search-results")), 45)
        self.assertIn("Thread in All Talk", search.text)

    def test_the_room_shows_the_reply_count_and_the_last_repliers(self):
        parent = self.post_id(self.ada, self.all_talk, "Lunch?")
        self.assertNotIn("message__thread", self.bob.get("/rooms/%d" % self.all_talk).text)
        thread = self.start_thread(self.bob, self.all_talk, parent)
        self.assertNotIn("message__thread\"", self.bob.get("/rooms/%d" % self.all_talk).text)  # no replies yet
        self.post_id(self.bob, thread, "Yes")
        self.post_id(self.carol, thread, "Sure")
        self.post_id(self.bob, thread, "Noon")
        page = self.dave.get("/rooms/%d" % self.all_talk).text
        summary = re.search(r'<a class="message__thread" href="/rooms/%d"[^>]*>(.*?)</a>' % thread, page)
        self.assertIsNotNone(summary)
        self.assertIn("3 replies", summary.group(1))
        avatars = [avatar_initials(src) for src in re.findall(r'src="([^"]+)"', summary.group(1))]
        self.assertEqual(avatars, ["BB", "CC"])  # Bob Builder, then Carol Creator: newest first, once each
        reply = self.post_id(self.dave, thread, "I'm in")
        self.assertIn("4 replies", self.ada.get("/rooms/%d" % self.all_talk).text)
        self.ada.post("/rooms/%d/messages/%d" % (thread, reply), {"_method": "delete"})
        self.assertIn("3 replies", self.ada.get("/rooms/%d" % self.all_talk).text)

    def test_catching_up_after_a_reconnect_brings_the_new_reply_counts(self):
        parent = self.post_id(self.ada, self.all_talk, "Anyone?")
        thread = self.start_thread(self.bob, self.all_talk, parent)
        campfire.time.sleep(0.01)  # the next moment, to the millisecond
        since = int(campfire.time.time() * 1000)
        self.assertEqual(self.bob.get("/rooms/%d/refresh?since=%d" % (self.all_talk, since)).status, 204)
        reply = self.post_id(self.carol, thread, "Me!")
        caught_up = self.bob.get("/rooms/%d/refresh?since=%d" % (self.all_talk, since))
        self.assertEqual(message_ids(caught_up.text, None), [parent])
        self.assertIn("1 reply", caught_up.text)
        later = int(campfire.time.time() * 1000)
        campfire.time.sleep(0.01)
        self.carol.post("/rooms/%d/messages/%d" % (thread, reply), {"_method": "delete"})
        caught_up = self.bob.get("/rooms/%d/refresh?since=%d" % (self.all_talk, later))
        self.assertEqual(message_ids(caught_up.text, None), [parent])
        self.assertNotIn("1 reply", caught_up.text)

    def test_only_the_parent_rooms_members_reach_a_thread(self):
        parent = self.post_id(self.carol, self.closed, "Secret agenda")
        thread = self.start_thread(self.bob, self.closed, parent)
        self.post_id(self.bob, thread, "secret reply")
        self.assertEqual(self.ada.get("/rooms/%d" % thread).status, 200)
        self.assertEqual(self.dave.get("/rooms/%d" % thread).status, 404)
        self.assertEqual(self.post(self.dave, thread, "let me in").status, 404)
        self.assertEqual(self.dave.get("/searches?q=secret").text.count('class="message"'), 0)
        self.assertEqual(self.dave.post("/rooms/%d/messages/%d/thread" % (self.closed, parent)).status, 404)

    def test_a_threads_settings_cannot_be_changed_on_their_own(self):
        parent = self.post_id(self.ada, self.all_talk, "topic")
        thread = self.start_thread(self.ada, self.all_talk, parent)
        self.assertEqual(self.ada.get("/rooms/closeds/%d/edit" % thread).status, 404)
        self.assertEqual(self.ada.post("/rooms/closeds/%d" % thread, {"_method": "patch", "room[name]": "x",
                                                                    "user_ids[]": [str(self.dave_id)]}).status, 404)
        self.assertEqual(self.ada.post("/rooms/%d" % thread, {"_method": "delete"}).status, 404)
        self.assertEqual(self.member_ids(thread), set())

    def test_a_reply_in_a_thread_cannot_start_another(self):
        parent = self.post_id(self.ada, self.all_talk, "topic")
        thread = self.start_thread(self.ada, self.all_talk, parent)
        reply = self.post_id(self.bob, thread, "a reply")
        self.assertEqual(self.bob.post("/rooms/%d/messages/%d/thread" % (thread, reply)).status, 422)
        self.assertNotIn("Reply in thread", self.bob.get("/rooms/%d/messages/%d" % (thread, reply)).text)
        self.assertIn("Reply in thread", self.bob.get("/rooms/%d/messages/%d" % (self.all_talk, parent)).text)

    def test_deleting_the_message_or_the_room_takes_the_thread_with_it(self):
        parent = self.post_id(self.ada, self.all_talk, "temporary")
        thread = self.start_thread(self.ada, self.all_talk, parent)
        reply = self.post_id(self.bob, thread, "gone soon, @Ada Admin")
        self.ada.post("/rooms/%d/messages/%d" % (self.all_talk, parent), {"_method": "delete"})
        self.assertIsNone(self.app.store.room(thread))
        self.assertIsNone(self.app.store.message(reply))
        self.assertEqual(self.app.db.value("SELECT count(*) FROM campfire_py_mentions WHERE message_id = ?", (reply,)), 0)
        self.assertEqual(self.bob.get("/rooms/%d" % thread).status, 404)
        parent = self.post_id(self.carol, self.closed, "also temporary")
        thread = self.start_thread(self.carol, self.closed, parent)
        self.post_id(self.carol, thread, "reply")
        self.carol.post("/rooms/%d" % self.closed, {"_method": "delete"})
        self.assertEqual(self.app.db.value("SELECT count(*) FROM rooms WHERE id = ?", (thread,)), 0)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM campfire_py_threads"), 0)


class MentionInboxTests(ChatTestCase):
    def test_a_mention_lands_in_the_inbox_unread_until_its_room_is_opened(self):
        first = self.post_id(self.ada, self.all_talk, "Hello @Bob Builder")
        self.post_id(self.ada, self.all_talk, "no mention here")
        second = self.post_id(self.carol, self.closed, "@Bob Builder, the plans")
        self.assertEqual(mention_ids(self.bob), ([second, first], [second, first]))
        self.assertEqual(mention_count(self.bob), 2)
        self.assertEqual(mention_ids(self.carol), ([], []))
        self.bob.get("/rooms/%d" % self.all_talk)
        self.assertEqual(mention_ids(self.bob), ([second, first], [second]))
        self.assertEqual(mention_count(self.bob), 1)
        self.bob.get("/rooms/%d/@%d" % (self.closed, second))
        self.assertEqual(mention_ids(self.bob), ([second, first], []))
        self.assertEqual(mention_count(self.bob), 0)

    def test_the_inbox_links_each_mention_to_its_place_and_names_the_room(self):
        message = self.post_id(self.carol, self.closed, "@Bob Builder look")
        page = self.bob.get("/mentions").text
        self.assertIn('<a href="/rooms/%d/@%d">Secret Plans</a>' % (self.closed, message), page)

    def test_the_inbox_pages_newest_first(self):
        ids = [self.post_id(self.ada, self.all_talk, "@Bob Builder number %d" % i) for i in range(45)]
        listed, _ = mention_ids(self.bob)
        self.assertEqual(listed, ids[::-1][:40])
        older = re.search(r'href="(/mentions\?before=\d+)"', self.bob.get("/mentions").text).group(1)
        self.assertEqual(message_ids(self.bob.get(older).text, "mentions_list"), ids[4::-1])

    def test_someone_present_in_the_room_has_read_it(self):
        self.connect(self.bob_id, self.all_talk)
        message = self.post_id(self.ada, self.all_talk, "@Bob Builder you're here")
        self.assertEqual(mention_ids(self.bob), ([message], []))

    def test_a_room_left_takes_its_mentions_out_of_the_inbox(self):
        message = self.post_id(self.carol, self.closed, "@Bob Builder secret")
        self.assertEqual(mention_ids(self.bob)[0], [message])
        self.carol.post("/rooms/closeds/%d" % self.closed, {"_method": "patch", "room[name]": "Secret Plans",
                                                            "user_ids[]": [str(self.ada_id)]})
        self.assertEqual(mention_ids(self.bob), ([], []))
        self.assertEqual(mention_count(self.bob), 0)

    def test_everyone_reaches_every_member_but_the_author(self):
        message = self.post_id(self.bob, self.all_talk, "Standup in 5, @everyone")
        for client in (self.ada, self.carol, self.dave):
            self.assertEqual(mention_ids(client)[0], [message])
        self.assertEqual(mention_ids(self.bob)[0], [])
        closed = self.post_id(self.carol, self.closed, "@everyone plans")
        self.assertEqual(mention_ids(self.dave)[0], [message])  # not in Secret Plans
        self.assertEqual(mention_ids(self.ada)[0], [closed, message])
        body = self.bob.get("/rooms/%d/messages/%d" % (self.all_talk, message)).text
        self.assertIn('<span class="mention mention--group">@everyone</span>', body)

    def test_everyone_skips_those_who_turned_the_room_off_but_not_their_own_mentions(self):
        self.carol.post("/rooms/%d/involvement" % self.all_talk, {"_method": "put", "involvement": "nothing"})
        self.dave.post("/rooms/%d/involvement" % self.all_talk, {"_method": "put", "involvement": "invisible"})
        everyone = self.post_id(self.bob, self.all_talk, "@everyone lunch")
        named = self.post_id(self.bob, self.all_talk, "@Carol Creator and @Dave Outsider, lunch")
        self.assertEqual(mention_ids(self.ada)[0], [everyone])
        self.assertEqual(mention_ids(self.carol)[0], [named])
        self.assertEqual(mention_ids(self.dave)[0], [named])

    def test_here_reaches_only_those_present(self):
        self.connect(self.carol_id, self.all_talk)
        message = self.post_id(self.bob, self.all_talk, "@here quick question")
        self.assertEqual(mention_ids(self.carol)[0], [message])
        self.assertEqual(mention_ids(self.ada)[0], [])
        self.assertEqual(mention_ids(self.dave)[0], [])

    def test_thread_replies_count_as_mentions_for_its_participants(self):
        parent = self.post_id(self.ada, self.all_talk, "Who reviews?")
        thread = int(self.bob.post("/rooms/%d/messages/%d/thread" % (self.all_talk, parent))
                     .header("Location").rsplit("/", 1)[1])
        first = self.post_id(self.bob, thread, "I can")
        self.assertEqual(mention_ids(self.ada), ([first], [first]))   # the author of the message it answers
        self.assertEqual(mention_ids(self.carol)[0], [])               # not in the thread
        second = self.post_id(self.carol, thread, "Me too")
        self.assertEqual(mention_ids(self.ada)[0], [second, first])
        self.assertEqual(mention_ids(self.bob)[0], [second])           # a replier, not for their own
        self.assertEqual(mention_ids(self.dave)[0], [])
        self.ada.get("/rooms/%d" % thread)                               # opening the thread reads them
        self.assertEqual(mention_ids(self.ada)[1], [])

    def test_everyone_in_a_big_room_is_for_administrators_and_the_rooms_creator(self):
        for i in range(campfire.EVERYONE_OPEN_LIMIT - 3):  # 4 people, then 21
            self.app.store.create_user("Person %d" % i, "person%d@example.com" % i, password_digest="x")
        room = self.create_closed_room(self.bob, "Big room", list(self.app.store.active_user_ids()))
        self.assertEqual(len(self.app.store.room_member_ids(room)), campfire.EVERYONE_OPEN_LIMIT + 1)
        refused = self.post(self.carol, room, "@everyone hi")
        self.assertEqual(refused.status, 403)
        self.assertIn("Only administrators and the room's creator", refused.header("X-Refused-Because"))
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages WHERE room_id = ?", (room,)), 0)
        self.assertEqual(self.post(self.bob, room, "@everyone from the creator").status, 201)
        self.assertEqual(self.post(self.ada, room, "@everyone from an administrator").status, 201)
        self.assertEqual(self.post(self.carol, room, "@here is fine").status, 201)
        self.assertEqual(self.post(self.carol, self.closed, "@everyone in a small room").status, 201)
        # The composer's autocomplete offers it, and says why not.
        offered = campfire.json.loads(self.carol.get("/autocompletable/users?query=ever&room_id=%d" % room).body)
        self.assertEqual(offered[0]["group"], "everyone")
        self.assertIn("Only administrators", offered[0]["disabled_reason"])
        offered = campfire.json.loads(self.bob.get("/autocompletable/users?query=e&room_id=%d" % room).body)
        self.assertEqual(offered[0], {"group": "everyone", "name": "everyone", "description":
                                      "Notify everyone in this room", "disabled_reason": None})
        offered = campfire.json.loads(self.carol.get("/autocompletable/users?query=he&room_id=%d" % room).body)
        self.assertEqual(offered[0]["group"], "here")
        self.assertIsNone(offered[0]["disabled_reason"])


class CatchingUpTests(ChatTestCase):
    def test_the_line_since_your_last_visit_sits_above_the_first_unseen_message(self):
        seen = self.post_id(self.ada, self.all_talk, "seen already")
        self.bob.get("/rooms/%d" % self.all_talk)
        unseen = [self.post_id(self.ada, self.all_talk, "new %d" % i) for i in range(2)]
        page = self.bob.get("/rooms/%d" % self.all_talk).text
        self.assertEqual(page.count('id="since_last_visit"'), 1)
        self.assertLess(page.index('id="message_%d"' % seen), page.index("since_last_visit"))
        self.assertLess(page.index("since_last_visit"), page.index('id="message_%d"' % unseen[0]))
        again = self.bob.get("/rooms/%d" % self.all_talk).text
        self.assertNotIn("since_last_visit", again)

    def test_mark_as_unread_brings_the_room_back_from_that_message(self):
        ids = [self.post_id(self.ada, self.all_talk, "message %d" % i) for i in range(3)]
        self.bob.get("/rooms/%d" % self.all_talk)
        self.assertNotIn("sidebar__room--unread", self.sidebar_links(self.bob).get(self.all_talk, ""))
        response = self.bob.post("/rooms/%d/messages/%d/unread" % (self.all_talk, ids[1]))
        self.assertEqual(response.status, 204)
        self.assertIn("sidebar__room--unread", self.sidebar_links(self.bob)[self.all_talk])
        page = self.bob.get("/rooms/%d" % self.all_talk).text
        self.assertLess(page.index('id="message_%d"' % ids[0]), page.index("since_last_visit"))
        self.assertLess(page.index("since_last_visit"), page.index('id="message_%d"' % ids[1]))
        self.assertEqual(self.dave.post("/rooms/%d/messages/%d/unread" % (self.closed, ids[1])).status, 404)

    def test_saved_messages_are_listed_newest_saved_first_and_can_be_removed(self):
        first = self.post_id(self.ada, self.all_talk, "keep this")
        second = self.post_id(self.carol, self.closed, "and this")
        self.assertEqual(self.bob.post("/messages/%d/bookmark" % second).status, 201)
        self.assertEqual(self.bob.post("/messages/%d/bookmark" % first).status, 201)
        self.assertEqual(self.bob.post("/messages/%d/bookmark" % first).status, 201)  # once, however often
        page = self.bob.get("/bookmarks")
        self.assertEqual(message_ids(page.text, "saved_list"), [first, second])
        self.assertIn(">Secret Plans</a>", page.text)
        self.assertEqual(message_ids(self.ada.get("/bookmarks").text, "saved_list"), [])
        self.assertIn('href="/bookmarks"', self.bob.get("/users/me/sidebar").text)
        self.assertEqual(self.bob.post("/messages/%d/bookmark" % first, {"_method": "delete"}).status, 204)
        self.assertEqual(message_ids(self.bob.get("/bookmarks").text, "saved_list"), [second])
        self.assertEqual(self.dave.post("/messages/%d/bookmark" % second).status, 404)
        self.carol.post("/rooms/%d/messages/%d" % (self.closed, second), {"_method": "delete"})
        self.assertEqual(message_ids(self.bob.get("/bookmarks").text, "saved_list"), [])

    def test_bad_paging_gets_a_clear_answer(self):
        self.assertEqual(self.bob.get("/bookmarks?page=999999999999999999").status, 200)
        self.assertEqual(self.bob.get("/bookmarks?page=two").status, 400)
        self.assertEqual(self.bob.get("/mentions?before=999999999999999999").status, 200)
        self.assertEqual(self.bob.get("/mentions?before=-1").status, 400)
        self.assertEqual(self.bob.post("/messages/999999/bookmark").status, 404)
        self.assertEqual(self.bob.post("/rooms/1/messages/999999/thread").status, 404)

    def test_search_matches_a_prefix_names_rooms_filters_and_highlights(self):
        design = self.post_id(self.bob, self.all_talk, "the design review is today")
        secret = self.post_id(self.carol, self.closed, "designers only")
        self.post_id(self.bob, self.all_talk, "unrelated")
        page = self.ada.get("/searches?q=desi").text
        self.assertEqual(message_ids(page, "search-results"), [secret, design])  # newest first
        self.assertIn("<mark>design</mark> review", page)
        self.assertIn("<mark>designers</mark> only", page)
        self.assertIn('<a href="/rooms/%d/@%d">All Talk</a>' % (self.all_talk, design), page)
        self.assertIn('<a href="/rooms/%d/@%d">Secret Plans</a>' % (self.closed, secret), page)
        by_room = self.ada.get("/searches?q=desi&room_id=%d" % self.closed).text
        self.assertEqual(message_ids(by_room, "search-results"), [secret])
        by_person = self.ada.get("/searches?q=desi&creator_id=%d" % self.bob_id).text
        self.assertEqual(message_ids(by_person, "search-results"), [design])
        # A room the person isn't in filters nothing and reveals nothing.
        self.assertEqual(message_ids(self.dave.get("/searches?q=desi&room_id=%d" % self.closed).text,
                                     "search-results"), [design])
        self.assertEqual(self.ada.get("/searches?q=desi&room_id=x").status, 400)

    def test_searching_as_you_type_keeps_no_recent_searches(self):
        self.post_id(self.bob, self.all_talk, "kettle")
        for typed in ("k", "ke", "ket"):
            self.assertEqual(self.ada.get("/searches?q=%s" % typed).status, 200)
        self.assertEqual(self.app.store.recent_searches(self.ada_id), [])
        sent = self.ada.post("/searches", {"q": "ket", "room_id": str(self.all_talk), "creator_id": ""})
        self.assertEqual(sent.header("Location"), "/searches?q=ket&room_id=%d" % self.all_talk)
        self.assertEqual(self.app.store.recent_searches(self.ada_id), ["ket"])

    def test_highlight_words_marks_text_only(self):
        html = ('<p>Design &amp; amp <a href="/design">design link</a> designs</p>'
                '<action-text-attachment sgid="x" content-type="y">design</action-text-attachment>')
        self.assertEqual(campfire.highlight_words(html, ["designs", "amp"]),
                         '<p><mark>Design</mark> &amp; <mark>amp</mark> <a href="/design"><mark>design</mark> link</a> '
                         '<mark>designs</mark></p>'
                         '<action-text-attachment sgid="x" content-type="y">design</action-text-attachment>')

    def test_group_mentions_are_words_not_parts_of_words(self):
        self.assertEqual(campfire.group_mentions("@everyone and @HERE"), {"everyone", "here"})
        self.assertEqual(campfire.group_mentions("mail@everyone.com @everyones x@here"), set())


class ThreadCableTests(CableTestCase):
    """A thread over /cable: its RoomMessagesChannel is its parent room's members', a
    reply reaches them there and re-renders the answered message in the room, and a
    member taken out of the room is taken out of its threads too."""

    def test_replies_reach_the_rooms_members_and_count_in_the_room(self):
        app = self.server.app
        room = self.create_room("Plans", [1, 2]).id
        status, _ = self.post(self.ada, room, "Thread root", "root")
        parent = self.server.call(lambda: app.db.value("SELECT max(id) FROM messages"))
        thread = self.server.call(lambda: app.store.start_thread(app.store.message(parent), app.store.user(1)).id)
        bob = self.welcomed(self.bob)
        self.assertEqual(self.confirm(bob, "RoomMessagesChannel", room_id=thread)[1], "confirm_subscription")
        room_stream, _ = self.confirm(bob, "RoomMessagesChannel", room_id=room)
        mentions, _ = self.confirm(bob, "MentionsChannel")
        self.post(self.ada, thread, "first reply", "reply-1")
        append = bob.recv_until(lambda m: m.get("message", {}).get("action") == "append")
        self.assertIn("first reply", append["message"]["html"])
        replace = bob.recv_until(lambda m: m.get("identifier") == room_stream)
        self.assertEqual(replace["message"]["action"], "replace")
        self.assertEqual(replace["message"]["id"], parent)
        self.assertIn("1 reply", replace["message"]["html"])
        # Bob replies; Ada, whose message the thread answers, hears of it.
        ada = self.welcomed(self.ada)
        ada_mentions, _ = self.confirm(ada, "MentionsChannel")
        self.post(self.bob, thread, "second reply", "reply-2")
        mentioned = ada.recv_until(lambda m: m.get("identifier") == ada_mentions)
        self.assertEqual(mentioned["message"]["action"], "mentioned")
        # Out of the room, out of its threads.
        self.server.call(lambda: app.store.update_room(app.store.room(room), "Plans", campfire.ROOM_CLOSED, [1],
                                                       app.store.user(1)))
        wait_until(lambda: not any(bob_connection for bob_connection in app.cable.streams.get(
            "room_%d_messages" % thread, ()) if bob_connection.user_id == 2))
        self.assertEqual(self.confirm(bob, "RoomMessagesChannel", room_id=thread)[1], "reject_subscription")

    def test_a_thread_is_no_subscription_for_people_outside_its_room(self):
        app = self.server.app
        room = self.create_room("Ada alone", [1]).id
        self.post(self.ada, room, "private root", "root")
        parent = self.server.call(lambda: app.db.value("SELECT max(id) FROM messages"))
        thread = self.server.call(lambda: app.store.start_thread(app.store.message(parent), app.store.user(1)).id)
        bob = self.welcomed(self.bob)
        self.assertEqual(self.confirm(bob, "RoomMessagesChannel", room_id=thread)[1], "reject_subscription")
        self.assertEqual(self.confirm(bob, "TypingNotificationsChannel", room_id=thread)[1], "reject_subscription")


from tests.test_push import Browser  # noqa: E402


class CatchingUpPushTests(ChatTestCase):
    """Web Push follows the inbox: @everyone and a thread's replies push like a mention."""

    def setUp(self):
        super().setUp()
        self.endpoint_of = {}
        for name, client in (("ada", self.ada), ("bob", self.bob), ("carol", self.carol), ("dave", self.dave)):
            browser = Browser("https://push.example.com/" + name)
            response = client.request("POST", "/users/me/push_subscriptions", content_type="application/json",
                                      body=campfire.json.dumps({"push_subscription": browser.fields()}).encode())
            self.assertEqual(response.status, 200)
            self.endpoint_of[browser.endpoint] = name
        self.app.pushes.pending.clear()

    def pushed(self):
        deliveries = list(self.app.pushes.pending)
        self.app.pushes.pending.clear()
        return {self.endpoint_of[delivery.endpoint]: delivery for delivery in deliveries}

    def test_everyone_pushes_to_every_member_and_a_thread_reply_to_its_participants(self):
        self.post_id(self.ada, self.all_talk, "@everyone standup")
        self.assertEqual(set(self.pushed()), {"bob", "carol", "dave"})
        parent = self.post_id(self.carol, self.all_talk, "Who reviews?")
        self.pushed()
        thread = int(self.bob.post("/rooms/%d/messages/%d/thread" % (self.all_talk, parent))
                     .header("Location").rsplit("/", 1)[1])
        self.post_id(self.bob, thread, "I will")
        pushed = self.pushed()
        self.assertEqual(set(pushed), {"carol"})
        self.assertEqual(pushed["carol"].title, "All Talk")
        self.assertEqual(pushed["carol"].path, "/rooms/%d" % thread)
        self.app.store.set_involvement(self.all_talk, self.dave_id, "everything")
        self.post_id(self.ada, thread, "me too")   # a thread's reply isn't "every message" of the room
        self.assertEqual(set(self.pushed()), {"bob", "carol"})
