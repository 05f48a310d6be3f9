"""Search: FTS5 with porter stemming over the user's own
rooms, the newest 100 matches newest first (by created_at), queries that can't break MATCH,
and the 10 recent searches kept per user."""

import asyncio
import random
import re
import sys
import unittest
import urllib.parse

from tests.helpers import Client, campfire, config_value, gunzipped_three_ways, make_app
from tests.test_messages import seed_messages
from tests.test_rooms import ChatTestCase, message_ids


def results(client, query):
    page = client.get("/searches?" + urllib.parse.urlencode({"q": query}))
    assert page.status == 200, (page.status, query)
    return message_ids(page.text, "search-results")


def recent(client, path="/searches"):
    page = client.get(path).text
    section = page[page.index('class="search__recent"'):page.index('id="search-results"')]
    return [urllib.parse.unquote_plus(query) for query in re.findall(r'href="/searches\?q=([^"]*)"', section)]


class SearchTests(ChatTestCase):
    def test_finds_a_word(self):
        wanted = self.post_id(self.bob, 1, "the kettle is boiling")
        self.post_id(self.bob, 1, "unrelated chatter")
        self.assertEqual(results(self.ada, "kettle"), [wanted])
        self.assertEqual(results(self.ada, "KETTLE"), [wanted])
        self.assertEqual(results(self.ada, "teapot"), [])

    def test_every_word_must_match(self):
        both = self.post_id(self.bob, 1, "red apples")
        self.post_id(self.bob, 1, "red cars")
        self.assertEqual(results(self.ada, "red apples"), [both])
        self.assertEqual(results(self.ada, "apples red"), [both])

    def test_porter_stemming_matches_word_forms(self):
        running = self.post_id(self.bob, 1, "I was running late")
        runs = self.post_id(self.bob, 1, "she runs daily")
        self.assertEqual(results(self.ada, "run"), [runs, running])
        self.assertEqual(results(self.ada, "running"), [runs, running])
        self.assertEqual(results(self.ada, "runs"), [runs, running])

    def test_page_has_search_results_with_message_elements(self):
        message = self.post_id(self.bob, 1, "<div>find <strong>this</strong> one</div>")
        page = self.ada.get("/searches?q=find")
        self.assertEqual(page.status, 200)
        self.assertIn('id="search-results"', page.text)
        self.assertRegex(page.text, r'id="search-results"[^>]*>.*class="message" id="message_%d"' % message)
        self.assertIn("<strong>this</strong>", page.text)
        self.assertIn("1 message for", page.text)

    def test_newest_100_matches_shown_newest_first(self):
        ids = seed_messages(self.app, 1, self.bob_id, 130, word="needle")
        seed_messages(self.app, 1, self.bob_id, 10, word="haystack", start=campfire.time.time() - 10)
        found = results(self.ada, "needle")
        self.assertEqual(len(found), campfire.SEARCH_RESULT_LIMIT)
        self.assertEqual(found, ids[-100:][::-1])

    def test_matches_in_a_closed_room_never_reach_a_non_member(self):
        hidden = self.post_id(self.carol, self.closed, "launch codes")
        shared = self.post_id(self.bob, 1, "launch party")
        self.assertEqual(results(self.dave, "launch"), [shared])
        self.assertEqual(results(self.bob, "launch"), [shared, hidden])
        self.assertEqual(results(self.dave, "codes"), [])
        self.assertEqual(results(self.dave, "launch codes"), [])

    def test_membership_scoped_fallback_keeps_closed_rooms_private(self):
        closed_hits = seed_messages(self.app, self.closed, self.carol_id, 8, word="fallback")
        open_hits = seed_messages(self.app, 1, self.bob_id, 2, word="fallback", start=campfire.time.time() - 100)
        newest_closed = seed_messages(self.app, self.closed, self.carol_id, 3, word="fallback",
                                      start=campfire.time.time() - 50)
        with config_value(self.app.config, "search_probe_limit", 5):
            self.assertEqual(results(self.dave, "fallback"), open_hits[::-1])
            self.assertEqual(results(self.bob, "fallback"), newest_closed[::-1] + open_hits[::-1] + closed_hits[::-1])
            self.assertEqual([row["id"] for row in self.app.store.search(self.dave_id, "fallback")], open_hits[::-1])

    def test_fallback_also_returns_only_the_newest_100(self):
        ids = seed_messages(self.app, 1, self.bob_id, 120, word="plenty")
        with config_value(self.app.config, "search_probe_limit", 5):
            self.assertEqual(results(self.ada, "plenty"), ids[-100:][::-1])

    def test_removed_member_no_longer_finds_the_rooms_messages(self):
        message = self.post_id(self.carol, self.closed, "classified material")
        self.assertEqual(results(self.bob, "classified"), [message])
        self.carol.post("/rooms/closeds/%d" % self.closed, {"_method": "patch", "room[name]": "Secret Plans",
                                                            "user_ids[]": [str(self.ada_id)]})
        self.assertEqual(results(self.bob, "classified"), [])

    def test_fts_syntax_in_queries_never_500s(self):
        self.post_id(self.bob, 1, "near and or not col word quote")
        queries = ['"', '""', '*', 'wor*', 'NEAR(a b)', 'NEAR(near and, 2)', 'a AND', 'AND', 'OR', 'NOT x', 'x NOT',
                   '(', ')', '((near)', '^', '^near', 'col:word', 'body:near', "'", "it's", '-', '-near', '+', '+near',
                   '{}', '{body}: near', '[', ']', '\\', '%', '_', '\0', 'a"b', '"near" OR "and"', 'near AND NOT or',
                   'x' * 10_240, ('word ' * 2_000), 'ünïcødé 漢字 🔥 مرحبا', '\u202e', '', ' ', '*:*', 'NEAR/2']
        for query in queries:
            with self.subTest(query=query[:40]):
                page = self.ada.get("/searches?" + urllib.parse.urlencode({"q": query}))
                self.assertEqual(page.status, 200)
                self.assertIn('id="search-results"', page.text)

    def test_operator_words_are_searched_as_words(self):
        message = self.post_id(self.bob, 1, "salt AND pepper, NOT sugar")
        self.assertEqual(results(self.ada, "NOT sugar"), [message])
        self.assertEqual(results(self.ada, "salt AND"), [message])
        self.assertEqual(results(self.ada, "pepper OR cinnamon"), [])

    def test_punctuation_becomes_spaces(self):
        message = self.post_id(self.bob, 1, "deploy-script failed")
        self.assertEqual(results(self.ada, "deploy script"), [message])
        self.assertEqual(results(self.ada, '"deploy-script"'), [message])
        self.assertEqual(results(self.ada, "failed!"), [message])

    def test_fts_match_expression_quotes_every_word(self):
        self.assertIsNone(campfire.fts_match_expression(""))
        self.assertIsNone(campfire.fts_match_expression('"*^()'))
        # Every word quoted; the last one, still being typed, matches as a prefix too.
        self.assertEqual(campfire.fts_match_expression('NEAR(a b) col:x'),
                         '"NEAR" AND "a" AND "b" AND "col" AND ("x" OR "x"*)')
        self.assertEqual(campfire.fts_match_expression("w " * 1000).count('"w"'), campfire.MAX_SEARCH_WORDS + 1)

    def test_searching_needs_sign_in(self):
        self.assertEqual(Client(self.app).get("/searches?q=x").status, 302)


class SearchCacheBoundTests(ChatTestCase):
    """Distinct searches over large messages, through the app as requests reach it:
    the caches they fill stay within their bounds (smaller here, so the test is quick)."""

    CONFIG = {"page_cache_bytes": 2 * 1024 * 1024, "message_cache_bytes": 1024 * 1024}

    def held(self, cache):
        """The values a cache holds, read from its dictionary (counted here, not by the cache)."""
        return [value[0] if isinstance(value, tuple) else value for value in cache._data.values()]

    def texts_held(self, cache):
        """The bytes of the texts a cache's keys and values hold (a kept search result's key
        holds its message and the result before it), each text counted once."""
        sizes = {}

        def walk(item):
            if isinstance(item, (str, bytes)):
                sizes[id(item)] = sys.getsizeof(item)
            elif isinstance(item, tuple):
                for part in item:
                    walk(part)
        for key, (value, _) in cache._data.items():
            walk(key)
            walk(value)
        return sum(sizes.values())

    def test_many_distinct_searches_over_large_messages_keep_the_caches_bounded(self):
        large = " ".join("filler%d" % index for index in range(2500))  # ~25 KB of words
        for index in range(60):
            self.post_id(self.bob, 1, "<div>topic%d group%d %s</div>" % (index, index % 3, large))
        page_bytes = message_bytes = 0
        for index in range(40):  # each shows 20 large messages; 40 pages would hold ~40 MB
            query = "group%d filler%d" % (index % 3, index)
            page = self.ada.get("/searches?" + urllib.parse.urlencode({"q": query}), headers={"Accept-Encoding": "gzip"})
            self.assertEqual(page.status, 200)
            page_bytes = sum(len(entry.body or b"") + len(entry.gzipped or b"") for entry in self.held(self.app.page_cache))
            message_bytes = self.texts_held(self.app.message_cache)
            self.assertLessEqual(page_bytes, self.app.config.page_cache_bytes)
            self.assertLessEqual(message_bytes, self.app.config.message_cache_bytes)
        self.assertGreater(page_bytes, self.app.config.page_cache_bytes // 2)  # filled, and evicting
        self.assertGreater(message_bytes, self.app.config.message_cache_bytes // 2)
        repeat = self.ada.get("/searches?" + urllib.parse.urlencode({"q": query}))
        again = self.ada.get("/searches?" + urllib.parse.urlencode({"q": query}),
                             headers={"If-None-Match": repeat.header("ETag")})
        self.assertEqual(again.status, 304)  # the latest search is still cached


class RecentSearchTests(ChatTestCase):
    def search(self, client, query):
        """What the search form does: POST /searches, then the page it redirects to."""
        response = client.post("/searches", {"q": query})
        self.assertEqual(response.status, 303)
        return client.get(response.header("Location"))

    def test_the_search_form_posts_and_lands_on_the_results(self):
        for page in (self.bob.get("/rooms/1").text, self.bob.get("/searches").text):
            self.assertRegex(page, r'<form[^>]*method="post" action="/searches"[^>]*role="search"')
        response = self.bob.post("/searches", {"q": "café plans"})
        self.assertEqual((response.status, response.header("Location")), (303, "/searches?q=caf%C3%A9+plans"))
        self.assertEqual(self.stored(self.bob_id), ["café plans"])
        self.assertEqual(self.bob.post("/searches", {}).header("Location"), "/searches")

    def test_reading_results_records_nothing(self):
        # Campfire records a search when the form is sent (searches_controller.rb#create), never on a GET.
        self.assertEqual(self.bob.get("/searches?q=plans").status, 200)
        self.assertEqual(self.stored(self.bob_id), [])

    def stored(self, user_id):
        return [row[0] for row in self.app.db.all("SELECT query FROM searches WHERE user_id = ? ORDER BY id",
                                                  (user_id,))]

    def test_only_the_10_most_recent_searches_are_kept(self):
        queries = ["topic%02d" % index for index in range(12)]
        for query in queries:
            self.search(self.bob, query)
        self.assertEqual(self.stored(self.bob_id), queries[-10:])
        self.assertEqual(recent(self.bob), list(reversed(queries[-10:])))

    def test_repeating_the_latest_search_is_not_recorded_twice(self):
        self.search(self.bob, "same thing")
        self.search(self.bob, "same thing")
        self.search(self.bob, "same thing")
        self.assertEqual(self.stored(self.bob_id), ["same thing"])

    def test_repeating_an_older_search_moves_it_to_the_top(self):
        for query in ("first", "second", "first"):
            self.search(self.bob, query)
        self.assertEqual(self.stored(self.bob_id), ["second", "first"])

    def test_searches_are_kept_per_user(self):
        self.search(self.bob, "bobs query")
        self.search(self.carol, "carols query")
        self.assertEqual(self.stored(self.bob_id), ["bobs query"])
        self.assertEqual(recent(self.carol), ["carols query"])

    def test_clear_removes_them(self):
        for query in ("one", "two", "three"):
            self.search(self.bob, query)
        self.search(self.carol, "stays")
        response = self.bob.post("/searches/clear", {"_method": "delete"})
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("Location"), "/searches")
        self.assertEqual(self.stored(self.bob_id), [])
        self.assertEqual(recent(self.bob), [])
        self.assertEqual(self.stored(self.carol_id), ["stays"])
        self.search(self.bob, "three")
        self.assertEqual(self.stored(self.bob_id), ["three"])

    def test_only_searches_made_on_our_own_pages_are_recorded(self):
        # Only the search form's POST records, and a POST from another site is refused; a
        # link (a GET) from anywhere shows results and writes nothing into the history.
        for site in ("cross-site", "same-site", "same-origin", "none", None):
            with self.subTest(site=site):
                page = self.bob.get("/searches?q=planted", headers={"Sec-Fetch-Site": site} if site else {})
                self.assertEqual(page.status, 200)
        for site in ("cross-site", "same-site"):  # a form on another site, or another origin of ours
            with self.subTest(site=site):
                response = self.bob.post("/searches", {"q": "planted"}, headers={"Sec-Fetch-Site": site})
                self.assertEqual(response.status, 403)
        self.assertEqual(self.stored(self.bob_id), [])
        self.bob.post("/searches", {"q": "from our form"})
        old_browser = campfire.Request("POST", "/searches", "HTTP/1.1", {  # no Fetch Metadata at all
            "host": "localhost", "cookie": "session_token=" + self.bob.cookies["session_token"],
            "content-type": "application/x-www-form-urlencoded"}, b"q=an+old+browser")
        self.assertEqual(self.app.handle(old_browser).status, 303)
        self.assertEqual(recent(self.bob), ["an old browser", "from our form"])

    def test_empty_or_wordless_queries_are_not_recorded(self):
        for query in ("", "   ", "***", '"'):
            self.search(self.bob, query)
        self.assertEqual(self.stored(self.bob_id), [])

    def test_recent_searches_list_is_fresh_after_each_search(self):
        self.assertEqual(recent(self.bob), [])
        self.search(self.bob, "alpha")
        self.assertEqual(recent(self.bob), ["alpha"])
        self.search(self.bob, "beta")
        self.assertEqual(recent(self.bob, "/searches?q=alpha"), ["beta", "alpha"])  # reading changes no order
        self.search(self.bob, "alpha")
        self.assertEqual(recent(self.bob), ["alpha", "beta"])

    def test_queries_are_capped(self):
        self.search(self.bob, "long " * 200)
        [query] = self.stored(self.bob_id)
        self.assertLessEqual(len(query), campfire.MAX_SEARCH_QUERY_CHARS)


class SearchOrderTests(ChatTestCase):
    """Results are the newest 100 by created_at (then id) whatever order the ids are in:
    an import keeps old times under new ids, and a Rails storage may hold anything."""

    CACHE = False  # every page rendered afresh, as right after a new message

    def test_a_message_with_a_lower_id_but_a_later_time_comes_first(self):
        now = campfire.time.time()
        newest = seed_messages(self.app, 1, self.bob_id, 1, word="needle", start=now)[0]
        older = seed_messages(self.app, 1, self.bob_id, 130, word="needle", start=now - 1000)
        self.assertEqual(results(self.ada, "needle"), [newest] + older[-99:][::-1])

    def test_messages_given_old_times_under_new_ids_come_after_newer_ones(self):
        now = campfire.time.time()
        recent = seed_messages(self.app, 1, self.bob_id, 130, word="needle", start=now - 200)
        imported = seed_messages(self.app, 1, self.bob_id, 60, word="needle", start=now - 100_000)
        self.assertEqual(results(self.ada, "needle"), recent[-100:][::-1])
        self.assertTrue(set(imported).isdisjoint(results(self.ada, "needle")))

    def test_out_of_order_ids_in_a_room_the_person_is_not_in_change_nothing(self):
        now = campfire.time.time()
        seed_messages(self.app, self.closed, self.carol_id, 5, word="needle", start=now)  # Dave isn't in it
        visible = seed_messages(self.app, 1, self.bob_id, 130, word="needle", start=now - 1000)
        self.assertEqual(results(self.dave, "needle"), visible[-100:][::-1])

    def test_ids_in_time_order_are_answered_from_the_newest_matches_alone(self):
        ids = seed_messages(self.app, 1, self.bob_id, 250, word="needle")
        statements = []
        self.app.db.connection.set_trace_callback(statements.append)
        try:
            found = self.app.store.search(self.ada_id, "needle")
        finally:
            self.app.db.connection.set_trace_callback(None)
        self.assertEqual([row["id"] for row in found], ids[-100:][::-1])
        self.assertFalse([sql for sql in statements if "ORDER BY messages.created_at DESC" in sql])  # no fallback
        self.assertEqual(len([sql for sql in statements if "FROM message_search_index JOIN messages" in sql]),
                         1)  # one walk, the matches joined to their messages
        self.assertFalse([sql for sql in statements if "FROM messages WHERE messages.id IN" in sql])
        self.assertFalse([sql for sql in statements if "action_text_rich_texts" in sql])  # bodies: only to render

    def steps_of(self, search):
        """(the ids search() finds, how many steps of SQLite's virtual machine it took, in hundreds)."""
        steps = [0]

        def count():
            steps[0] += 1
            return 0  # go on
        self.app.db.connection.set_progress_handler(count, 100)
        try:
            found = search()
        finally:
            self.app.db.connection.set_progress_handler(None, 0)
        return [row["id"] for row in found], steps[0]

    def sqlite_steps(self, query):
        return self.steps_of(lambda: self.app.store.search(self.ada_id, query))

    def test_a_search_costs_the_same_however_much_was_written_since_its_results(self):
        now = campfire.time.time()
        ids = seed_messages(self.app, 1, self.bob_id, 150, word="needle", start=now - 100_000)
        found, before = self.sqlite_steps("needle")
        self.assertEqual(found, ids[-100:][::-1])
        for start, room in ((now - 50_000, 1), (now - 40_000, self.closed)):  # a busy day since, without the word
            seed_messages(self.app, room, self.bob_id, 1500, word="chatter", start=start)
        found, after = self.sqlite_steps("needle")
        self.assertEqual(found, ids[-100:][::-1])
        self.assertLessEqual(after, before * 1.25 + 2)  # not 3,000 messages looked at again

    def test_late_messages_found_by_the_scan_at_start_still_sort_by_time(self):
        now = campfire.time.time()
        newer = seed_messages(self.app, 1, self.bob_id, 3, word="needle", start=now)
        older = seed_messages(self.app, 1, self.bob_id, 130, word="needle", start=now - 1000)  # later ids, older times
        seed_messages(self.app, 1, self.bob_id, 40, word="chatter", start=now + 10)
        self.app.close()
        with config_value(campfire, "MESSAGE_ORDER_SCAN_CHUNK", 7):  # many steps, the last one short
            self.app = make_app(self.storage, cache=False)
        order = self.app.store.message_order
        self.assertTrue(order.known)
        self.assertFalse(order.sorted_from(older[-1]))  # the last late message: below it, newer ones
        self.assertTrue(order.sorted_from(older[-1] + 1))
        self.assertEqual([row["id"] for row in self.app.store.search(self.ada_id, "needle")],
                         newer[::-1] + older[-97:][::-1])

    def test_until_the_scan_has_ended_the_search_asks_the_database(self):
        now = campfire.time.time()
        newest = seed_messages(self.app, 1, self.bob_id, 1, word="needle", start=now)
        older = seed_messages(self.app, 1, self.bob_id, 130, word="needle", start=now - 1000)
        order = self.app.store.message_order = campfire.MessageOrder(self.app.db)  # as at start, not scanned
        self.assertFalse(order.sorted_from(older[-1] + 1))
        statements = []
        self.app.db.connection.set_trace_callback(statements.append)
        try:
            found = [row["id"] for row in self.app.store.search(self.ada_id, "needle")]
        finally:
            self.app.db.connection.set_trace_callback(None)
        self.assertEqual(found, newest + older[-99:][::-1])
        self.assertTrue([sql for sql in statements if "FROM messages WHERE room_id IN" in sql])  # is any newer?

    def room_search(self, query, room_id, limit):
        """steps_of Ada's search in the room, with few matches walked before the query."""
        with config_value(self.app.config, "search_probe_limit", 20):
            return self.steps_of(lambda: self.app.store.search(self.ada_id, query, limit, room_id=room_id))

    def test_a_search_in_one_room_lists_only_the_matches_since_its_recent_messages(self):
        now = campfire.time.time()
        seed_messages(self.app, self.closed, self.carol_id, 1500, word="needle", start=now - 100_000)  # long ago
        mine = []
        for index in range(60):  # the room's recent messages, among many more matches elsewhere
            mine += seed_messages(self.app, 1, self.bob_id, 1, word="needle" if index % 3 else "chatter",
                                  start=now + 10 * index)
            seed_messages(self.app, self.closed, self.carol_id, 5, word="needle", start=now + 10 * index + 1)
        wanted = [message_id for index, message_id in enumerate(mine) if index % 3][-10:][::-1]
        with config_value(campfire, "SEARCH_RECENT_MESSAGES", 60):
            found, recent = self.room_search("needle", 1, 10)
            self.app.store.message_order = campfire.MessageOrder(self.app.db)  # unknown: every match is listed
            found_listing_all, listing_all = self.room_search("needle", 1, 10)
        self.assertEqual(found, wanted)
        self.assertEqual(found_listing_all, wanted)
        self.assertLess(recent * 3, listing_all)  # not the 1,500 older matches

    def test_a_search_in_one_room_past_a_late_message_lists_every_match(self):
        now = campfire.time.time()
        newest = seed_messages(self.app, 1, self.bob_id, 15, word="needle", start=now + 100)
        seed_messages(self.app, 1, self.bob_id, 40, word="needle", start=now)  # later ids, older times
        with config_value(campfire, "SEARCH_RECENT_MESSAGES", 20):  # its floor: among the late ones
            found, _ = self.room_search("needle", 1, 5)
        self.assertEqual(found, newest[-5:][::-1])

    def test_the_scan_under_the_server_takes_a_chunk_per_event_loop_turn(self):
        now = campfire.time.time()
        seed_messages(self.app, 1, self.bob_id, 30, word="needle", start=now)
        late = seed_messages(self.app, 1, self.bob_id, 5, word="needle", start=now - 1000)
        seed_messages(self.app, 1, self.bob_id, 30, word="needle", start=now + 100)
        order = campfire.MessageOrder(self.app.db)

        async def scan():
            campfire.run_in_background(order.step)
            turns = 0
            while not order.known:
                await asyncio.sleep(0)
                turns += 1
            return turns
        with config_value(campfire, "MESSAGE_ORDER_SCAN_CHUNK", 4):
            turns = asyncio.run(scan())
        self.assertGreaterEqual(turns, 65 // 4)  # each chunk in a turn of its own, between requests
        self.assertFalse(order.sorted_from(late[-1]))
        self.assertTrue(order.sorted_from(late[-1] + 1))
        order.written(late[-1] + 100, campfire.utc_now_text(now - 5000))  # a message written late from now on
        self.assertFalse(order.sorted_from(late[-1] + 100))


class SearchGzipTests(ChatTestCase):
    """A search page sent gzipped is its own markup compressed for the response and each
    result's piece kept compressed (App.search_result_parts), each piece compressed after
    the result before it: decoded, it is the page sent uncompressed, byte for byte."""

    CACHE = False
    GZIP = {"Accept-Encoding": "gzip, deflate, br"}

    def setUp(self):
        super().setUp()
        self.ids = [self.post_id(self.bob if index % 3 else self.carol, 1 if index % 4 else self.closed,
                                 "<div>coffee number %d <strong>%s</strong> %s</div>"
                                 % (index, "é☕" * (index % 4), "walrus" if index % 10 == 0 else ""))
                    for index in range(60)]

    def kept_results(self):
        return [key for key in self.app.message_cache._data if key[0] == "search result"]

    @staticmethod
    def result_id(key):
        """The message a kept result shows: the first of what its rendering depends on (App._message_key)."""
        return key[1][0]

    def assertSplicedIsPlain(self, client, path):
        gzipped = client.get(path, headers=self.GZIP)
        plain = client.get(path)
        self.assertEqual((gzipped.status, plain.status), (200, 200))
        self.assertEqual(gzipped.header("Content-Encoding"), "gzip")
        self.assertEqual(gunzipped_three_ways(self, gzipped.body), plain.body)
        # pieces compressed after the result before them cost some bytes, never many: within a quarter
        # of the page compressed whole (a piece alone would cost three times the bytes)
        self.assertLessEqual(len(gzipped.body), 1.25 * len(campfire.gzip_bytes(plain.body, campfire.GZIP_FRESH_LEVEL)))
        return plain.text

    def test_search_pages_gzipped_from_kept_results_are_the_plain_pages(self):
        queries = ["coffee", "walrus", "coffee number 7", "coff", "nothing-matches-this", "",
                   "coffee&room_id=1", "coffee&creator_id=%d" % self.carol_id]
        for client in (self.ada, self.bob, self.dave):
            for query in queries:
                with self.subTest(query=query, viewer=client):
                    page = self.assertSplicedIsPlain(client, "/searches?q=" + query)
                    self.assertNotIn("<!--messages", page)
        found = message_ids(self.assertSplicedIsPlain(self.ada, "/searches?q=coffee"), "search-results")
        self.assertEqual(found, self.ids[::-1])  # every result, newest first
        self.assertGreaterEqual(len(self.kept_results()), 60)

    def test_a_page_again_reuses_every_kept_result(self):
        self.assertSplicedIsPlain(self.ada, "/searches?q=coffee")
        kept = set(self.kept_results())
        self.assertEqual(len(kept), 60)
        self.assertSplicedIsPlain(self.ada, "/searches?q=coffee")
        self.assertEqual(set(self.kept_results()), kept)

    def test_an_edited_message_has_its_search_result_compressed_afresh(self):
        self.assertSplicedIsPlain(self.ada, "/searches?q=coffee")
        kept = set(self.kept_results())
        edited = self.ids[41]  # Bob's, in All Talk; the next older result is ids[40]
        response = self.bob.post("/rooms/1/messages/%d" % edited, {"_method": "patch",
                                                                   "message[body]": "coffee revised"})
        self.assertLess(response.status, 400)
        page = self.assertSplicedIsPlain(self.ada, "/searches?q=coffee")
        self.assertIn("<mark>coffee</mark> revised", page)
        self.assertNotIn("coffee</mark> number 41 ", page)
        fresh = set(self.kept_results()) - kept
        # the edited result, and the one after it (older), compressed after the edited text
        self.assertEqual(sorted(map(self.result_id, fresh)), sorted([edited, self.ids[40]]))
        text, piece = self.app.message_cache.get(next(key for key in fresh if self.result_id(key) == edited))
        self.assertIn(b"coffee</mark> revised", text)
        self.assertIn(b"coffee</mark> number 41", next(key for key in kept if self.result_id(key) == edited)[-1] + b" "
                      + self.app.message_cache.get(next(key for key in kept if self.result_id(key) == edited))[0])
        self.assertEqual(next(key for key in fresh if self.result_id(key) == self.ids[40])[-1], text)

    def test_a_new_match_changes_only_the_first_two_results(self):
        self.assertSplicedIsPlain(self.ada, "/searches?q=coffee")
        kept = set(self.kept_results())
        newest = self.post_id(self.bob, 1, "one more coffee")
        self.assertSplicedIsPlain(self.ada, "/searches?q=coffee")
        self.assertEqual(sorted(map(self.result_id, set(self.kept_results()) - kept)), sorted([newest, self.ids[-1]]))

    def test_a_piece_compressed_after_a_text_decodes_after_it(self):
        rng = random.Random(11)
        texts = [b"", b"a", "<div>é☕ coffee</div>".encode() * 2500, bytes(rng.randrange(256) for _ in range(50000)),
                 b"<article>same again</article>" * 40]
        for before in texts:
            for text in texts:
                for level in (1, 6):
                    with self.subTest(before=len(before), text=len(text), level=level):
                        pieces = [campfire.deflate_piece(before, level), campfire.deflate_piece(text, level, after=before)]
                        body = before + text
                        self.assertEqual(gunzipped_three_ways(self, campfire.gzip_pieces(body, [p for p in pieces if p])),
                                         body)
        letters = bytes(rng.choice(b"abcdefghij") for _ in range(3000))  # ~1,200 bytes compressed alone
        self.assertLess(len(campfire.deflate_piece(letters, after=letters)), len(campfire.deflate_piece(letters)) / 20)


class SearchPrefixTests(ChatTestCase):
    CACHE = False

    def test_the_porter_tokenizer_names_a_words_terms(self):
        terms = self.app.store.search_terms.terms
        self.assertEqual(terms("running"), ("run",))
        self.assertEqual(terms("Coffee"), ("coffe",))
        self.assertEqual(terms("foo_bar"), ("foo", "bar"))
        self.assertEqual(terms("_"), ())

    def test_a_last_word_no_longer_term_begins_with_is_matched_as_itself(self):
        first = self.post_id(self.bob, 1, "fresh coffee")
        self.assertEqual(self.app.store.search_match("fresh coffee"), '"fresh" AND "coffee"')
        self.assertEqual(results(self.ada, "coffee"), [first])
        later = self.post_id(self.bob, 1, "a new coffeemaker")  # its term, "coffeemak", begins with "coffe"
        self.assertEqual(self.app.store.search_match("fresh coffee"), '"fresh" AND ("coffee" OR "coffee"*)')
        self.assertEqual(results(self.ada, "coffee"), [later, first])
        self.assertEqual(results(self.ada, "fresh coffee"), [first])

    def test_whether_a_term_has_longer_ones_is_looked_up_again_only_after_a_message_changes(self):
        first = self.post_id(self.bob, 1, "fresh coffee")
        statements = []
        self.app.db.connection.set_trace_callback(statements.append)
        try:
            for _ in range(3):
                self.assertEqual(self.app.store.search_match("coffee"), '"coffee"')
        finally:
            self.app.db.connection.set_trace_callback(None)
        self.assertEqual(len([sql for sql in statements if "campfire_py_search_terms WHERE" in sql]), 1)
        response = self.bob.post("/rooms/1/messages/%d" % first, {"_method": "patch",
                                                                  "message[body]": "a coffeemaker"})
        self.assertLess(response.status, 400)
        self.assertEqual(self.app.store.search_match("coffee"), '("coffee" OR "coffee"*)')
        self.assertEqual(results(self.ada, "coffee"), [first])

    def test_a_word_being_typed_still_finds_the_longer_words(self):
        plain = self.post_id(self.bob, 1, "a run today")
        longer = self.post_id(self.bob, 1, "the runway is clear")
        self.assertEqual(results(self.ada, "run"), [longer, plain])
        self.assertEqual(results(self.ada, "runw"), [longer])
        self.assertEqual(results(self.ada, "ru"), [longer, plain])

    def test_a_word_the_index_has_nothing_for_finds_nothing(self):
        self.post_id(self.bob, 1, "nothing to see")
        self.assertEqual(self.app.store.search_match("zebra"), '"zebra"')
        self.assertEqual(results(self.ada, "zebra"), [])


class SearchFilterPeopleTests(ChatTestCase):
    CACHE = False

    def people(self, client):
        page = client.get("/searches?q=anything").text
        section = re.search(r'<select name="creator_id">.*?</select>', page, re.S).group(0)
        return re.findall(r'<option value="\d+"[^>]*>([^<]*)</option>', section)

    def test_the_person_filter_follows_joins_renames_and_deactivations(self):
        self.assertEqual(self.people(self.ada), ["Ada Admin", "Bob Builder", "Carol Creator", "Dave Outsider"])
        self.join("Eve Newcomer", "eve@example.com")
        self.assertEqual(self.people(self.ada),
                         ["Ada Admin", "Bob Builder", "Carol Creator", "Dave Outsider", "Eve Newcomer"])
        self.bob.post("/users/me/profile", {"_method": "patch", "user[name]": "Zed Builder"})
        self.assertEqual(self.people(self.ada),
                         ["Ada Admin", "Carol Creator", "Dave Outsider", "Eve Newcomer", "Zed Builder"])
        self.app.store.deactivate(self.app.store.user(self.dave_id))
        self.assertEqual(self.people(self.ada), ["Ada Admin", "Carol Creator", "Eve Newcomer", "Zed Builder"])


if __name__ == "__main__":
    unittest.main()
