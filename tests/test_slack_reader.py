"""The Slack export reader of campfire.py (import-slack): export ZIPs written here in
Slack's documented format ("How to read Slack data exports"; the message, file, user
and conversation objects), the mrkdwn conversion table case by case, hostile
archives, determinism. The import into a storage is tested in test_slack_import.py.
"""

import html.parser
import io
import json
import os
import random
import struct
import sys
import tempfile
import time
import unittest
import zipfile
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import campfire as slack  # noqa: E402

EXTERNAL = ' target="_blank" rel="noopener noreferrer"'
TEAM = "T01TEAM"

USERS = [
    {"id": "U01ALICE", "team_id": TEAM, "name": "alice", "real_name": "Alice Smith", "deleted": False,
     "is_admin": True, "is_owner": True, "is_bot": False,
     "profile": {"real_name": "Alice Smith", "display_name": "alice", "email": "alice@example.com"}},
    {"id": "U02BOB", "team_id": TEAM, "name": "bob", "real_name": "Bob Émile", "deleted": False, "is_bot": False,
     "profile": {"real_name": "Bob Émile", "display_name": "bob", "email": "bob@example.com"}},
    {"id": "U03CAROL", "team_id": TEAM, "name": "carol", "deleted": True,
     "profile": {"real_name": "Carol Old", "display_name": ""}},
    {"id": "U04DEPLOY", "team_id": TEAM, "name": "deploybot", "deleted": False, "is_bot": True,
     "profile": {"real_name": "Deploy Bot", "bot_id": "B04DEPLOY", "email": "bot@example.com"}},
    {"id": "U05DAN", "team_id": TEAM, "name": "dan", "deleted": False, "is_bot": False,
     "profile": {"real_name": "Dan <Dev> & \"Co\"", "email": "not an email"}},
]
CHANNELS = [{"id": "C01GENERAL", "name": "general", "created": 1600000000, "creator": "U01ALICE",
             "is_archived": False, "is_general": True, "members": ["U01ALICE", "U02BOB", "U03CAROL", "U04DEPLOY"],
             "topic": {"value": "", "creator": "", "last_set": 0}, "purpose": {"value": "", "creator": "", "last_set": 0}},
            {"id": "C02OLD", "name": "old-stuff", "created": 1500000000, "creator": "U02BOB",
             "is_archived": True, "is_general": False, "members": ["U02BOB"]}]
GROUPS = [{"id": "G01SECRET", "name": "secret-plans", "created": 1600000000, "creator": "U01ALICE",
           "is_archived": False, "members": ["U01ALICE", "U02BOB"]}]
DMS = [{"id": "D01AB", "created": 1600000000, "members": ["U01ALICE", "U02BOB"]}]
MPIMS = [{"id": "G02MPIM", "name": "mpdm-alice--bob--dan-1", "created": 1600000000, "creator": "U05DAN",
          "is_archived": False, "members": ["U01ALICE", "U02BOB", "U05DAN"]}]

THREAD_TS = "1600000300.000400"
DIAGRAM = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4

GENERAL_DAY_1 = [
    {"type": "message", "subtype": "channel_join", "ts": "1600000001.000100", "user": "U03CAROL",
     "text": "<@U03CAROL> has joined the channel"},
    {"type": "message", "ts": "1600000100.000200", "user": "U01ALICE", "client_msg_id": "a1",
     "text": "*Hello* _team_ ~old~ `code` &lt;b&gt; &amp; \"quoted\" "
             "<https://example.com/?a=1&amp;b=2|Example &amp; Co>"},
    {"type": "message", "ts": "1600000200.000300", "user": "U02BOB",
     "text": "Hi <@U01ALICE>, see <#C01GENERAL|general> <!here> Grüße 🎉 日本語"},
    {"type": "message", "ts": THREAD_TS, "user": "U01ALICE", "text": "Shall we ship *v2*?",
     "thread_ts": THREAD_TS, "reply_count": 2, "reply_users_count": 2, "latest_reply": "1600086400.000100",
     "replies": [{"user": "U02BOB", "ts": "1600000400.000500"}, {"user": "U01ALICE", "ts": "1600086400.000100"}]},
    {"type": "message", "ts": "1600000400.000500", "user": "U02BOB", "text": "Yes!",
     "thread_ts": THREAD_TS, "parent_user_id": "U01ALICE"},
    {"type": "message", "ts": "1600000500.000600", "user": "U02BOB", "text": "fixed the typo",
     "edited": {"user": "U02BOB", "ts": "1600000600.000000"}},
    {"type": "message", "subtype": "bot_message", "ts": "1600000700.000700", "bot_id": "B04DEPLOY",
     "username": "deploybot", "text": "Deployed <https://ci.example.com/1|build 1>"},
    {"type": "message", "subtype": "bot_message", "ts": "1600000800.000800", "bot_id": "B09HOOK",
     "username": "github", "text": "", "attachments": [
         {"fallback": "Pushed 2 commits to main", "pretext": "", "text": "Pushed *2 commits* to main"}]},
    {"type": "message", "subtype": "file_share", "ts": "1600000900.000900", "user": "U01ALICE",
     "text": "Here's the diagram", "upload": True,
     "files": [{"id": "F01DIAGRAM", "created": 1600000900, "timestamp": 1600000900, "name": "diagram.png",
                "title": "diagram.png", "mimetype": "image/png", "filetype": "png", "pretty_type": "PNG",
                "user": "U01ALICE", "size": len(DIAGRAM), "mode": "hosted", "is_external": False,
                "url_private": "https://files.slack.com/files-pri/T01TEAM-F01DIAGRAM/diagram.png",
                "url_private_download": "https://files.slack.com/files-pri/T01TEAM-F01DIAGRAM/download/diagram.png",
                "permalink": "https://team.slack.com/files/U01ALICE/F01DIAGRAM/diagram.png"}]},
    {"type": "message", "ts": "1600001000.001000", "user": "U02BOB", "text": "",
     "files": [{"id": "F02REPORT", "name": "report <final> & v2.pdf", "title": "Report", "mimetype": "application/pdf",
                "filetype": "pdf", "size": 12345, "mode": "hosted",
                "url_private": "https://files.slack.com/files-pri/T01TEAM-F02REPORT/report.pdf",
                "permalink": "https://team.slack.com/files/U02BOB/F02REPORT/report.pdf"},
               {"id": "F03GONE", "mode": "tombstone"}]},
    {"type": "message", "subtype": "channel_topic", "ts": "1600001100.001100", "user": "U01ALICE",
     "topic": "ship it", "text": "<@U01ALICE> set the channel topic: ship it"},
]
GENERAL_DAY_2 = [   # written newest first: the order in a day file is not trusted
    {"type": "message", "ts": "1600086500.000200", "user": "U05DAN", "text": "late to the party"},
    {"type": "message", "ts": "1600086400.000100", "user": "U01ALICE", "text": "Shipping <@U02BOB|bob>",
     "thread_ts": THREAD_TS, "parent_user_id": "U01ALICE"},
    {"type": "message", "subtype": "channel_leave", "ts": "1600086450.000000", "user": "U03CAROL",
     "text": "<@U03CAROL> has left the channel"},
]


def export_members(**changes):
    """{member name: bytes} of a small export; changes replace or add members."""
    def dump(value):
        return json.dumps(value, ensure_ascii=False, indent=1).encode("utf-8")
    members = {
        "users.json": dump(USERS),
        "channels.json": dump(CHANNELS),
        "groups.json": dump(GROUPS),
        "dms.json": dump(DMS),
        "mpims.json": dump(MPIMS),
        "integration_logs.json": dump({"logs": []}),
        "general/2020-09-13.json": dump(GENERAL_DAY_1),
        "general/2020-09-14.json": dump(GENERAL_DAY_2),
        "secret-plans/2020-09-13.json": dump([
            {"type": "message", "ts": "1600000050.000001", "user": "U01ALICE",
             "text": "```\nplan = {\"a\": 1 &lt; 2}\n```"}]),
        "D01AB/2020-09-13.json": dump([{"type": "message", "ts": "1600000060.000002", "user": "U02BOB",
                                        "text": "psst"}]),
        "mpdm-alice--bob--dan-1/2020-09-13.json": dump([
            {"type": "message", "ts": "1600000070.000003", "user": "U05DAN", "text": "hi all"}]),
        "__uploads/F01DIAGRAM/diagram.png": DIAGRAM,
    }
    for name, value in changes.items():
        if value is None:
            members.pop(name, None)
        else:
            members[name] = value if isinstance(value, bytes) else dump(value)
    return members


def zip_bytes(members, compression=zipfile.ZIP_DEFLATED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 9, 15, 0, 0, 0))
            info.compress_type = compression
            archive.writestr(info, data)
    return buffer.getvalue()


def open_export(data):
    return slack.open_slack_export(io.BytesIO(data))


def read_all(data):
    with open_export(data) as export:
        return export.people, export.rooms, list(export.messages()), export.report


def by_key(messages):
    return {message.source_key: message for message in messages}


def key(*parts):
    return ":".join(("slack", TEAM) + parts)


def patch_declared_size(data, name, size):
    """The archive with `name`'s uncompressed size rewritten in its central
    directory entry and local header (APPNOTE.TXT 4.3.7, 4.3.12)."""
    data = bytearray(data)
    encoded = name.encode()
    central = data.find(b"PK\x01\x02" + bytes(0))
    while central >= 0:
        name_bytes = struct.unpack_from("<H", data, central + 28)[0]
        if bytes(data[central + 46:central + 46 + name_bytes]) == encoded:
            struct.pack_into("<I", data, central + 24, size)
            local = struct.unpack_from("<I", data, central + 42)[0]
            struct.pack_into("<I", data, local + 22, size)
            return bytes(data)
        central = data.find(b"PK\x01\x02", central + 4)
    raise AssertionError("no member " + name)


####
#### Time
####

class TimeTest(unittest.TestCase):
    def test_ts_becomes_the_datetime_text_rails_writes(self):
        # Expected values from `date -u -d @SECONDS '+%F %T'`, an independent implementation.
        vectors = {
            "1355517523.000005": "2012-12-14 20:38:43.000005",   # the ts in Slack's own message example
            "1600000000.000000": "2020-09-13 12:26:40.000000",
            "1600086400.999999": "2020-09-14 12:26:40.999999",
            "0.000000": "1970-01-01 00:00:00.000000",
            "1": "1970-01-01 00:00:01.000000",
            "1.5": "1970-01-01 00:00:01.500000",
            "253402300799.999999": "9999-12-31 23:59:59.999999",
        }
        for ts, expected in vectors.items():
            with self.subTest(ts=ts):
                self.assertEqual(slack.slack_ts_to_db_time(ts), expected)

    def test_ts_is_exact_where_a_float_is_not(self):
        # Through a float, 99999999999.000001 loses its microsecond (and 253402300799.999999
        # rounds into year 10000); read as integers, neither does.
        self.assertEqual(slack.parse_slack_ts("99999999999.000001"), (99999999999, 1))
        self.assertEqual(slack.slack_ts_to_db_time("99999999999.000001"), "5138-11-16 09:46:39.000001")
        self.assertEqual(slack.slack_ts_to_db_time("1600000000.000001"), "2020-09-13 12:26:40.000001")

    def test_what_is_not_a_ts_gives_none(self):
        for ts in ("", "abc", "1.2.3", "-1.0", "1.1234567", " 1.0", "1.0\n", "１.０", None, 1600000000, "2" * 13,
                   "999999999999.000000"):  # past year 9999
            with self.subTest(ts=ts):
                self.assertIsNone(slack.slack_ts_to_db_time(ts))


####
#### mrkdwn
####

NAMES = {"U01ALICE": "Alice Smith", "U02BOB": "Bob Émile"}
CHANNEL_NAMES = {"C01GENERAL": "general"}
LINK = '<a href="https://example.com"%s>%%s</a>' % EXTERNAL

# Slack text as an export holds it (&, <, > escaped) → the HTML Campfire stores.
CONVERSIONS = [
    ("plain text", "<div>plain text</div>"),
    ("*bold*", "<div><strong>bold</strong></div>"),
    ("_italic_", "<div><em>italic</em></div>"),
    ("~strike~", "<div><del>strike</del></div>"),
    ("`code`", "<div><code>code</code></div>"),
    ("*bold _and italic_*", "<div><strong>bold <em>and italic</em></strong></div>"),
    ("~*_all three_*~", "<div><del><strong><em>all three</em></strong></del></div>"),
    ("(*bold*), _it_.", "<div>(<strong>bold</strong>), <em>it</em>.</div>"),
    ("snake_case_name", "<div>snake_case_name</div>"),
    ("2*3*4", "<div>2*3*4</div>"),
    ("* not bold *", "<div>* not bold *</div>"),
    ("*unclosed", "<div>*unclosed</div>"),
    ("**", "<div>**</div>"),
    ("`*not bold* _here_`", "<div><code>*not bold* _here_</code></div>"),
    ("x`y`z", "<div>x<code>y</code>z</div>"),
    ("``", "<div>``</div>"),
    ("line one\nline two", "<div>line one<br>line two</div>"),
    ("para\n\npara", "<div>para<br><br>para</div>"),
    ("\n\nedges\n\n", "<div>edges</div>"),
    ("a\r\nb", "<div>a<br>b</div>"),
    ("&gt; quoted\n&gt; more\nafter", "<blockquote>quoted<br>more</blockquote><div>after</div>"),
    ("&gt;no space", "<blockquote>no space</blockquote>"),
    ("&gt; *bold* in a quote", "<blockquote><strong>bold</strong> in a quote</blockquote>"),
    ("&gt;&gt;&gt; all\nof this", "<blockquote>all<br>of this</blockquote>"),
    ("1 &gt; 0", "<div>1 &gt; 0</div>"),
    ("```\nfn main() {}\n  indented\n```", "<pre>fn main() {}\n  indented</pre>"),
    ("```*not bold* &lt;tag&gt; &amp;```", "<pre>*not bold* &lt;tag&gt; &amp;</pre>"),
    ("before ```mid``` after", "<div>before</div><pre>mid</pre><div>after</div>"),
    ("```unclosed", "<div>```unclosed</div>"),
    ("```\n\n```", ""),
    ("&amp; &lt; &gt;", "<div>&amp; &lt; &gt;</div>"),
    ("&amp;lt; is unescaped once", "<div>&amp;lt; is unescaped once</div>"),
    ("&quot;stays&quot;", "<div>&amp;quot;stays&amp;quot;</div>"),
    ("\"double\" and 'single'", "<div>&quot;double&quot; and 'single'</div>"),
    ("<script>alert(1)</script>", "<div>&lt;script&gt;alert(1)&lt;/script&gt;</div>"),
    ("no\xa0break", "<div>no&nbsp;break</div>"),
    ("tab\there, control\x01\x7f gone", "<div>tab\there, control gone</div>"),
    ("Grüße 🎉 日本語 — ok", "<div>Grüße 🎉 日本語 — ok</div>"),
    (":tada: stays a code", "<div>:tada: stays a code</div>"),
    ("<https://example.com>", "<div>%s</div>" % (LINK % "https://example.com")),
    ("<https://example.com|a label>", "<div>%s</div>" % (LINK % "a label")),
    ("<https://example.com/?a=1&amp;b=2|Example &amp; Co>",
     '<div><a href="https://example.com/?a=1&amp;b=2"%s>Example &amp; Co</a></div>' % EXTERNAL),
    ("<http://www.example.com|www.example.com>",
     '<div><a href="http://www.example.com"%s>www.example.com</a></div>' % EXTERNAL),
    ("<mailto:bob@example.com|bob@example.com>", '<div><a href="mailto:bob@example.com">bob@example.com</a></div>'),
    ("<javascript:alert(1)|click me>", "<div>click me</div>"),
    ("<javascript:alert(1)>", "<div>javascript:alert(1)</div>"),
    ("<https://example.com/\"onmouseover=x|x>", "<div>x</div>"),
    ("*<https://example.com|bold link>*", "<div><strong>%s</strong></div>" % (LINK % "bold link")),
    ("`<https://example.com|in code>`", "<div><code>in code</code></div>"),
    ("<https://example.com/a_b_c|a_b_c> _x_", "<div>%s <em>x</em></div>"
     % ('<a href="https://example.com/a_b_c"%s>a_b_c</a>' % EXTERNAL)),
    ("<@U01ALICE>", '<div><slack-mention user="U01ALICE">@Alice Smith</slack-mention></div>'),
    ("<@U01ALICE|alice>", '<div><slack-mention user="U01ALICE">@Alice Smith</slack-mention></div>'),
    ("<@U09NOBODY|ghost>", '<div><slack-mention user="U09NOBODY">@ghost</slack-mention></div>'),
    ("<@U09NOBODY>", '<div><slack-mention user="U09NOBODY">@U09NOBODY</slack-mention></div>'),
    ("hey <@U02BOB>!", '<div>hey <slack-mention user="U02BOB">@Bob Émile</slack-mention>!</div>'),
    ("`<@U01ALICE>`", "<div><code>@Alice Smith</code></div>"),
    ("<#C01GENERAL|general>", "<div>#general</div>"),
    ("<#C01GENERAL>", "<div>#general</div>"),
    ("<#C01GENERAL|>", "<div>#general</div>"),
    ("<#C09UNKNOWN>", "<div>#C09UNKNOWN</div>"),
    ("<!here> <!channel> <!everyone> <!group>", "<div>@here @channel @everyone @channel</div>"),
    ("<!here|here>", "<div>@here</div>"),
    ("<!subteam^S01DEVS|@devs>", "<div>@devs</div>"),
    ("<!subteam^S01DEVS>", "<div>@S01DEVS</div>"),
    ("<!date^1392734382^{date_short}|Feb 18, 2014>", "<div>Feb 18, 2014</div>"),
    ("<!date^1392734382^{date_short}>", "<div>2014-02-18 14:39 UTC</div>"),
    ("<!unknown>", "<div>!unknown</div>"),
    ("", ""),
    ("\n \n", ""),
]


def convert(text):
    return slack.mrkdwn_to_html(text, user_name=NAMES.get, channel_name=CHANNEL_NAMES.get)


class _TagChecker(html.parser.HTMLParser):
    """Fails unless the HTML uses only our tags and attributes, properly nested."""
    ALLOWED = {"div": set(), "br": set(), "strong": set(), "em": set(), "del": set(), "code": set(),
               "pre": set(), "blockquote": set(), "cite": set(), "a": {"href", "target", "rel"},
               "slack-mention": {"user"}, "slack-permalink": {"message"}}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []

    def handle_starttag(self, tag, attrs):
        assert tag in self.ALLOWED, tag
        assert {name for name, _ in attrs} <= self.ALLOWED[tag], (tag, attrs)
        if tag != "br":
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, tag

    def check(self, text):
        self.feed(text)
        self.close()
        assert not self.stack, self.stack


class MrkdwnTest(unittest.TestCase):
    def test_conversion_table(self):
        for text, expected in CONVERSIONS:
            with self.subTest(text=text):
                self.assertEqual(convert(text)[0], expected)

    def test_every_table_result_is_well_formed_with_our_tags_only(self):
        for text, _ in CONVERSIONS:
            with self.subTest(text=text):
                _TagChecker().check(convert(text)[0])

    def test_mentions_are_listed_once_in_order_of_first_appearance(self):
        body, mentions = convert("<@U02BOB> <@U01ALICE> <@U02BOB|bob> `<@U09CODE>` <!here>")
        self.assertEqual(mentions, ("U02BOB", "U01ALICE"))

    def test_random_markup_gives_only_our_tags_well_formed(self):
        pieces = ["*", "_", "~", "`", "```", "\n", "&gt; ", "&gt;&gt;&gt;", "&amp;", "&lt;", "<", ">", "|", " ",
                  "a", "é", "\x00", "\xa0", "<@U01ALICE>", "<#C01GENERAL|g>", "<https://x.org|x>", "<!here>",
                  "<@U9|", "\"", "'", "<script>", "&#x3c;"]
        generator = random.Random(20240611)
        for _ in range(3000):
            text = "".join(generator.choice(pieces) for _ in range(generator.randrange(1, 30)))
            body, mentions = convert(text)
            try:
                _TagChecker().check(body)
            except AssertionError as error:
                self.fail("%r → %r: %s" % (text, body, error))
            self.assertNotIn("\x00", body)

    def test_a_hostile_long_line_converts_in_linear_time(self):
        for text in ("*a " * 40_000, "_" * 100_000, "`a" * 50_000, "*_~" * 30_000, "<@U1>*" * 20_000):
            started = time.perf_counter()
            body, _ = slack.mrkdwn_to_html(text)
            self.assertLess(time.perf_counter() - started, 5.0, text[:12])
            _TagChecker().check(body)

    def test_finish_body_puts_in_the_callers_mentions_and_permalinks(self):
        body = (slack.reply_quote("Shall we ship v2?", "Alice <A>", "slack:T1:C1:1.000001")
                + convert("<@U01ALICE> and <@U09NOBODY|ghost>")[0])
        chips = {"U01ALICE": '<action-text-attachment sgid="s1" content-type="application/vnd.campfire.mention">'
                             '</action-text-attachment>'}
        finished = slack.finish_body(body, mention=chips.get,
                                     permalink={"slack:T1:C1:1.000001": "/rooms/5/@9"}.get)
        self.assertEqual(finished,
                         '<blockquote>Shall we ship v2?</blockquote><cite>Alice &lt;A&gt; <a href="/rooms/5/@9">#</a>'
                         '</cite><div><action-text-attachment sgid="s1" content-type="application/vnd.campfire.mention">'
                         '</action-text-attachment> and @ghost</div>')

    def test_finish_body_without_callbacks_keeps_names_and_drops_the_link(self):
        body = slack.reply_quote("q", "Alice", "k") + convert("<@U01ALICE>")[0]
        self.assertEqual(slack.finish_body(body),
                         "<blockquote>q</blockquote><cite>Alice</cite><div>@Alice Smith</div>")

    def test_user_text_cannot_forge_a_placeholder(self):
        text = '&lt;slack-mention user="U01ALICE"&gt;x&lt;/slack-mention&gt; <slack-mention user="U1">'
        body, mentions = convert(text)
        self.assertEqual(mentions, ())
        self.assertEqual(slack.finish_body(body, mention=lambda user_id: "CHIP"), body)
        self.assertNotIn("CHIP", slack.finish_body(body, mention=lambda user_id: "CHIP"))

    def test_excerpt_is_one_line_of_text_cut_at_the_limit(self):
        body = convert("*Hi* <@U01ALICE>\n&gt; quoted &amp; more\n```code\nblock```")[0]
        self.assertEqual(slack.html_excerpt(body), "Hi @Alice Smith quoted & more code block")
        self.assertEqual(slack.html_excerpt("<div>%s</div>" % ("word " * 100)),
                         ("word " * 40)[:199].rstrip() + "\u2026")
        self.assertEqual(len(slack.html_excerpt("<div>%s</div>" % ("x" * 500))), slack.SLACK_REPLY_EXCERPT_CHARS)


####
#### The export
####

class ExportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = zip_bytes(export_members())
        cls.people, cls.rooms, cls.messages, cls.report = read_all(cls.data)
        cls.keyed = by_key(cls.messages)

    def test_people_come_from_users_json_with_names_emails_bots_and_deleted(self):
        people = {person.slack_id: person for person in self.people}
        self.assertEqual(list(people), ["U01ALICE", "U02BOB", "U03CAROL", "U04DEPLOY", "U05DAN"])
        alice = people["U01ALICE"]
        self.assertEqual((alice.name, alice.username, alice.email, alice.is_admin, alice.is_bot, alice.deleted,
                          alice.listed, alice.source_key),
                         ("Alice Smith", "alice", "alice@example.com", True, False, False, True, key("user", "U01ALICE")))
        self.assertEqual(people["U02BOB"].name, "Bob Émile")
        self.assertTrue(people["U03CAROL"].deleted)
        self.assertEqual((people["U03CAROL"].name, people["U03CAROL"].email), ("Carol Old", None))
        self.assertTrue(people["U04DEPLOY"].is_bot)
        self.assertIsNone(people["U04DEPLOY"].email)   # bots sign in with keys, not email
        self.assertEqual(people["U05DAN"].name, 'Dan <Dev> & "Co"')   # text: escaping is the renderer's job
        self.assertIsNone(people["U05DAN"].email)      # "not an email"

    def test_conversations_become_open_closed_and_direct_rooms_with_members(self):
        rooms = {room.slack_id: room for room in self.rooms}
        self.assertEqual(list(rooms), ["C01GENERAL", "C02OLD", "G01SECRET", "D01AB", "G02MPIM"])
        general = rooms["C01GENERAL"]
        self.assertEqual((general.kind, general.name, general.member_ids, general.creator_id, general.created_at,
                          general.archived, general.source_key),
                         (slack.ROOM_OPEN, "general", ("U01ALICE", "U02BOB", "U03CAROL", "U04DEPLOY"), "U01ALICE",
                          "2020-09-13 12:26:40.000000", False, key("room", "C01GENERAL")))
        self.assertTrue(rooms["C02OLD"].archived)
        self.assertEqual((rooms["G01SECRET"].kind, rooms["G01SECRET"].name, rooms["G01SECRET"].member_ids),
                         (slack.ROOM_CLOSED, "secret-plans", ("U01ALICE", "U02BOB")))
        self.assertEqual((rooms["D01AB"].kind, rooms["D01AB"].name, rooms["D01AB"].member_ids),
                         (slack.ROOM_DIRECT, None, ("U01ALICE", "U02BOB")))
        self.assertEqual((rooms["G02MPIM"].kind, rooms["G02MPIM"].name, rooms["G02MPIM"].member_ids),
                         (slack.ROOM_DIRECT, None, ("U01ALICE", "U02BOB", "U05DAN")))

    def test_messages_come_room_by_room_each_in_time_order_across_day_files(self):
        order = [(message.room.slack_id, message.source_key.split(":", 3)[3]) for message in self.messages]
        rooms_seen = list(dict.fromkeys(room for room, _ in order))
        self.assertEqual(rooms_seen, ["C01GENERAL", "G01SECRET", "D01AB", "G02MPIM"])
        general = [message for message in self.messages if message.room.slack_id == "C01GENERAL"]
        self.assertEqual([message.created_at for message in general],
                         sorted(message.created_at for message in general))
        self.assertEqual([message.slack_ts for message in general][-2:], ["1600086400.000100", "1600086500.000200"])
        self.assertEqual(self.keyed[key("C01GENERAL", "1600000100.000200")].created_at,
                         "2020-09-13 12:28:20.000200")

    def test_system_messages_are_skipped_and_counted_by_reason(self):
        self.assertEqual(self.report.skipped["a system message (channel_join)"], 1)
        self.assertEqual(self.report.skipped["a system message (channel_leave)"], 1)
        self.assertEqual(self.report.skipped["a system message (channel_topic)"], 1)
        self.assertEqual(self.report.examples["a system message (channel_join)"], ["general/2020-09-13.json #0"])
        self.assertNotIn(key("C01GENERAL", "1600000001.000100"), self.keyed)
        self.assertTrue(any("skipped 1: a system message (channel_join)" in line for line in self.report.summary()))

    def test_formatting_entities_and_html_specials_are_converted_and_escaped(self):
        message = self.keyed[key("C01GENERAL", "1600000100.000200")]
        self.assertEqual(message.body_html,
                         '<div><strong>Hello</strong> <em>team</em> <del>old</del> <code>code</code> &lt;b&gt; '
                         '&amp; &quot;quoted&quot; <a href="https://example.com/?a=1&amp;b=2"%s>Example &amp; Co</a>'
                         '</div>' % EXTERNAL)
        self.assertEqual(message.author.slack_id, "U01ALICE")
        self.assertIsNone(message.attachment)

    def test_mentions_are_placeholders_with_the_slack_ids_listed(self):
        message = self.keyed[key("C01GENERAL", "1600000200.000300")]
        self.assertEqual(message.body_html,
                         '<div>Hi <slack-mention user="U01ALICE">@Alice Smith</slack-mention>, see #general @here '
                         'Grüße 🎉 日本語</div>')
        self.assertEqual(message.mentions, ("U01ALICE",))

    def test_an_edited_message_has_its_latest_text_and_its_edit_time(self):
        message = self.keyed[key("C01GENERAL", "1600000500.000600")]
        self.assertEqual(message.body_html, "<div>fixed the typo</div>")
        self.assertEqual((message.created_at, message.updated_at),
                         ("2020-09-13 12:35:00.000600", "2020-09-13 12:36:40.000000"))
        self.assertEqual(self.report.edited, 1)

    def test_thread_replies_are_flattened_in_time_order_quoting_the_thread_start(self):
        parent_key = key("C01GENERAL", THREAD_TS)
        parent = self.keyed[parent_key]
        self.assertIsNone(parent.reply_to)
        first = self.keyed[key("C01GENERAL", "1600000400.000500")]
        second = self.keyed[key("C01GENERAL", "1600086400.000100")]
        quote = ('<blockquote>Shall we ship v2?</blockquote><cite>Alice Smith'
                 '<slack-permalink message="%s"></slack-permalink></cite>' % parent_key)
        self.assertEqual(first.body_html, quote + "<div>Yes!</div>")
        self.assertEqual(second.body_html,
                         quote + '<div>Shipping <slack-mention user="U02BOB">@Bob Émile</slack-mention></div>')
        self.assertEqual((first.reply_to, second.reply_to), (parent_key, parent_key))
        keys = [message.source_key for message in self.messages]
        self.assertLess(keys.index(parent_key), keys.index(first.source_key))
        # The second reply, on the next day, sits at its own time between the day's other messages.
        self.assertLess(keys.index(key("C01GENERAL", "1600001000.001000")), keys.index(second.source_key))
        self.assertEqual(keys.index(second.source_key) + 1, keys.index(key("C01GENERAL", "1600086500.000200")))
        self.assertEqual(self.report.replies, 2)
        finished = slack.finish_body(second.body_html, mention=lambda user_id: "<chip %s>" % user_id,
                                     permalink=lambda source_key: "/rooms/1/@42")
        self.assertEqual(finished, '<blockquote>Shall we ship v2?</blockquote><cite>Alice Smith '
                                   '<a href="/rooms/1/@42">#</a></cite><div>Shipping <chip U02BOB></div>')

    def test_bot_messages_are_written_by_the_bot_user_or_a_bot_known_by_its_messages(self):
        deploy = self.keyed[key("C01GENERAL", "1600000700.000700")]
        self.assertEqual(deploy.author.slack_id, "U04DEPLOY")   # profile.bot_id maps B04DEPLOY to its user
        self.assertEqual(deploy.body_html,
                         '<div>Deployed <a href="https://ci.example.com/1"%s>build 1</a></div>' % EXTERNAL)
        hook = self.keyed[key("C01GENERAL", "1600000800.000800")]
        self.assertEqual((hook.author.slack_id, hook.author.name, hook.author.is_bot, hook.author.listed,
                          hook.author.deleted, hook.author.source_key),
                         ("B09HOOK", "github", True, False, False, key("bot", "B09HOOK")))
        self.assertEqual(hook.body_html, "<div>Pushed <strong>2 commits</strong> to main</div>")

    def test_a_file_whose_bytes_are_in_the_export_becomes_an_attachment_message(self):
        text = self.keyed[key("C01GENERAL", "1600000900.000900")]
        self.assertEqual(text.body_html, "<div>Here's the diagram</div>")
        message = self.keyed[key("C01GENERAL", "1600000900.000900", "F01DIAGRAM")]
        self.assertEqual(message.body_html, "")
        self.assertEqual(message.created_at, text.created_at)
        attachment = message.attachment
        self.assertEqual((attachment.slack_file_id, attachment.filename, attachment.content_type, attachment.byte_size),
                         ("F01DIAGRAM", "diagram.png", "image/png", len(DIAGRAM)))
        keys = [message.source_key for message in self.messages]
        self.assertEqual(keys.index(text.source_key) + 1, keys.index(message.source_key))
        with open_export(self.data) as export:
            self.assertEqual(export.read_attachment(attachment), DIAGRAM)
            out = io.BytesIO()
            self.assertEqual(export.copy_attachment(attachment, out), len(DIAGRAM))
            self.assertEqual(out.getvalue(), DIAGRAM)
            forged = slack.SlackAttachment("F01DIAGRAM", "x", "image/png", 1, "users.json")
            with self.assertRaises(slack.SlackExportError):
                export.read_attachment(forged)   # only members indexed as file bytes are read
        self.assertEqual(self.report.attachments, 1)

    def test_a_file_whose_bytes_are_not_in_the_export_becomes_a_link_line(self):
        message = self.keyed[key("C01GENERAL", "1600001000.001000")]
        self.assertEqual(message.body_html,
                         '<div><a href="https://team.slack.com/files/U02BOB/F02REPORT/report.pdf"%s>'
                         'report &lt;final&gt; &amp; v2.pdf</a></div>' % EXTERNAL)
        self.assertIsNone(message.attachment)
        self.assertEqual(self.report.file_links, 1)
        self.assertEqual(self.report.skipped["a file Slack no longer has (deleted, or past the plan's limit)"], 1)

    def test_private_direct_and_group_direct_messages_are_read(self):
        self.assertEqual(self.keyed[key("G01SECRET", "1600000050.000001")].body_html,
                         '<pre>plan = {&quot;a&quot;: 1 &lt; 2}</pre>')
        self.assertEqual(self.keyed[key("D01AB", "1600000060.000002")].author.slack_id, "U02BOB")
        self.assertEqual(self.keyed[key("G02MPIM", "1600000070.000003")].body_html, "<div>hi all</div>")

    def test_the_report_counts_what_was_produced(self):
        self.assertEqual((self.report.people, self.report.rooms), (5, 5))
        self.assertEqual(self.report.messages, len(self.messages))
        self.assertEqual(len(self.messages), 15)
        self.assertEqual(self.report.summary()[0], "5 people, 5 rooms, 15 messages (1 with a file, 1 files linked, "
                                                   "2 thread replies, 1 edited)")
        self.assertEqual(self.report.summary()[1], "1 authors not in users.json, made up from their messages")
        self.assertEqual(self.report.unlisted_authors, 1)   # the "github" bot, B09HOOK

    def test_every_source_key_is_unique(self):
        keys = [message.source_key for message in self.messages]
        keys += [person.source_key for person in self.people] + [room.source_key for room in self.rooms]
        self.assertEqual(len(keys), len(set(keys)))


class ExportVariantsTest(unittest.TestCase):
    def test_an_author_missing_from_users_json_is_made_up_once_deactivated(self):
        day = [{"type": "message", "ts": "1600000000.000001", "user": "U07GUEST", "text": "one",
                "user_profile": {"real_name": "Guest Person", "display_name": "guest", "name": "guest"}},
               {"type": "message", "ts": "1600000000.000002", "user": "U07GUEST", "text": "two"},
               {"type": "message", "ts": "1600000000.000003", "user": "USLACKBOT", "text": "reminder"}]
        _, _, messages, report = read_all(zip_bytes(export_members(**{"general/2020-09-13.json": day,
                                                                      "general/2020-09-14.json": None})))
        self.assertEqual(report.unlisted_authors, 2)
        guest = [message.author for message in messages if message.author.slack_id == "U07GUEST"]
        self.assertIs(guest[0], guest[1])
        self.assertEqual((guest[0].name, guest[0].listed, guest[0].deleted, guest[0].is_bot),
                         ("Guest Person", False, True, False))
        slackbot = messages[2].author
        self.assertEqual((slackbot.name, slackbot.is_bot, slackbot.deleted), ("Slackbot", True, False))

    def test_edit_and_delete_records_apply_to_the_message_they_name(self):
        day = [{"type": "message", "ts": "1600000000.000001", "user": "U01ALICE", "text": "first draft"},
               {"type": "message", "ts": "1600000000.000002", "user": "U01ALICE", "text": "to be deleted"},
               {"type": "message", "subtype": "message_changed", "hidden": True, "ts": "1600000100.000000",
                "message": {"type": "message", "user": "U01ALICE", "text": "final text", "ts": "1600000000.000001",
                            "edited": {"user": "U01ALICE", "ts": "1600000100.000000"}}},
               {"type": "message", "subtype": "message_changed", "hidden": True, "ts": "1600000050.000000",
                "message": {"type": "message", "user": "U01ALICE", "text": "second draft", "ts": "1600000000.000001",
                            "edited": {"user": "U01ALICE", "ts": "1600000050.000000"}}},
               {"type": "message", "subtype": "message_deleted", "hidden": True, "ts": "1600000200.000000",
                "deleted_ts": "1600000000.000002"},
               {"type": "message", "subtype": "pinned_item", "hidden": True, "ts": "1600000300.000000",
                "user": "U01ALICE", "text": "pinned"}]
        _, _, messages, report = read_all(zip_bytes(export_members(**{"general/2020-09-13.json": day,
                                                                      "general/2020-09-14.json": None})))
        general = [message for message in messages if message.room.slack_id == "C01GENERAL"]
        self.assertEqual([message.body_html for message in general], ["<div>final text</div>"])
        self.assertEqual(general[0].updated_at, "2020-09-13 12:28:20.000000")
        self.assertEqual(report.skipped["a deleted message"], 1)
        self.assertEqual(report.skipped["a hidden record"], 1)

    def test_a_reply_whose_thread_start_is_missing_is_imported_without_a_quote(self):
        day = [{"type": "message", "ts": "1600000000.000005", "user": "U01ALICE", "text": "orphan",
                "thread_ts": "1500000000.000001", "parent_user_id": "U02BOB"},
               {"type": "message", "subtype": "tombstone", "ts": "1600000001.000000", "user": "USLACKBOT",
                "text": "This message was deleted.", "thread_ts": "1600000001.000000"},
               {"type": "message", "ts": "1600000002.000000", "user": "U02BOB", "text": "after the tombstone",
                "thread_ts": "1600000001.000000"}]
        _, _, messages, report = read_all(zip_bytes(export_members(**{"general/2020-09-13.json": day,
                                                                      "general/2020-09-14.json": None})))
        general = [message for message in messages if message.room.slack_id == "C01GENERAL"]
        self.assertEqual([(message.body_html, message.reply_to) for message in general],
                         [("<div>orphan</div>", None), ("<div>after the tombstone</div>", None)])
        self.assertEqual((report.unquoted_replies, report.skipped["a system message (tombstone)"]), (2, 1))

    def test_a_reply_with_only_a_file_keeps_its_quote_before_the_file(self):
        day = [{"type": "message", "ts": "1600000000.000001", "user": "U01ALICE", "text": "photo please",
                "thread_ts": "1600000000.000001"},
               {"type": "message", "ts": "1600000000.000002", "user": "U02BOB", "text": "",
                "thread_ts": "1600000000.000001",
                "files": [{"id": "F01DIAGRAM", "name": "diagram.png", "mimetype": "image/png"}]}]
        _, _, messages, _ = read_all(zip_bytes(export_members(**{"general/2020-09-13.json": day,
                                                                 "general/2020-09-14.json": None})))
        general = [message for message in messages if message.room.slack_id == "C01GENERAL"]
        parent_key = key("C01GENERAL", "1600000000.000001")
        self.assertEqual([(message.source_key, message.body_html, message.reply_to,
                           message.attachment and message.attachment.filename) for message in general], [
            (parent_key, "<div>photo please</div>", None, None),
            (key("C01GENERAL", "1600000000.000002"),
             '<blockquote>photo please</blockquote><cite>Alice Smith<slack-permalink message="%s">'
             '</slack-permalink></cite>' % parent_key, parent_key, None),
            (key("C01GENERAL", "1600000000.000002", "F01DIAGRAM"), "", parent_key, "diagram.png")])

    def test_file_bytes_in_slackdumps_standard_layout_are_found_too(self):
        members = export_members(**{"__uploads/F01DIAGRAM/diagram.png": None,
                                    "general/attachments/F01DIAGRAM-diagram.png": DIAGRAM})
        data = zip_bytes(members)
        with open_export(data) as export:
            attachments = [message.attachment for message in export.messages() if message.attachment]
            self.assertEqual([attachment.member for attachment in attachments],
                             ["general/attachments/F01DIAGRAM-diagram.png"])
            self.assertEqual(export.read_attachment(attachments[0]), DIAGRAM)

    def test_attachment_names_and_types_from_the_export_are_made_safe(self):
        day = [{"type": "message", "ts": "1600000000.000001", "user": "U01ALICE", "text": "",
                "files": [{"id": "F01DIAGRAM", "name": "../../etc/passwd\x00", "mimetype": "text/html; x=<y>"}]}]
        _, _, messages, _ = read_all(zip_bytes(export_members(**{"general/2020-09-13.json": day,
                                                                 "general/2020-09-14.json": None})))
        attachment = [message.attachment for message in messages if message.attachment][0]
        self.assertEqual((attachment.filename, attachment.content_type), ("passwd", "application/octet-stream"))

    def test_an_export_zipped_inside_one_folder_is_read_the_same(self):
        members = {"slack-export/" + name: data for name, data in export_members().items()}
        nested = read_all(zip_bytes(members))
        flat = read_all(zip_bytes(export_members()))
        self.assertEqual([message.source_key for message in nested[2]], [message.source_key for message in flat[2]])
        self.assertEqual([message.body_html for message in nested[2]], [message.body_html for message in flat[2]])

    def test_a_public_only_export_without_private_lists_is_read(self):
        members = export_members(**{"groups.json": None, "dms.json": None, "mpims.json": None})
        _, rooms, messages, report = read_all(zip_bytes(members))
        self.assertEqual([room.slack_id for room in rooms], ["C01GENERAL", "C02OLD"])
        self.assertEqual(report.skipped["a day file in a folder no conversation list names"], 3)
        self.assertEqual({message.room.slack_id for message in messages}, {"C01GENERAL"})

    def test_without_team_ids_keys_are_scoped_by_the_general_channel(self):
        users = [{key_: value for key_, value in user.items() if key_ != "team_id"} for user in USERS]
        with open_export(zip_bytes(export_members(**{"users.json": users}))) as export:
            self.assertEqual(export.workspace, "C01GENERAL")
            self.assertEqual(export.rooms[0].source_key, "slack:C01GENERAL:room:C01GENERAL")

    def test_malformed_entries_are_skipped_and_reported(self):
        users = USERS + [{"id": "../x"}, "not an object", dict(USERS[0])]
        channels = CHANNELS + [{"id": "C09BAD", "name": "../escape"}, {"name": "no-id"}, dict(CHANNELS[0])]
        day = [{"type": "message", "ts": "not a ts", "user": "U01ALICE", "text": "x"}, 42,
               {"type": "message", "ts": "1600000000.000001", "text": "nobody wrote this"},
               {"type": "message", "ts": "1600000000.000002", "user": "U01ALICE", "text": "   "},
               {"type": "message", "ts": "1600000000.000003", "user": "U01ALICE", "text": "kept"},
               {"type": "message", "ts": "1600000000.000003", "user": "U01ALICE", "text": "same ts again"},
               {"type": "message", "ts": "1600000000.000004", "user": "U01ALICE", "text": "x" * 200_001}]
        members = export_members(**{"users.json": users, "channels.json": channels,
                                    "general/2020-09-13.json": day, "general/2020-09-14.json": None})
        people, rooms, messages, report = read_all(zip_bytes(members))
        self.assertEqual(len(people), 5)
        self.assertEqual(len(rooms), 5)
        general = [message.body_html for message in messages if message.room.slack_id == "C01GENERAL"]
        self.assertEqual(general, ["<div>kept</div>"])
        self.assertEqual(report.skipped, {
            "a user without a valid id": 2, "a user listed twice": 1,
            "a conversation without a valid id": 1, "a conversation whose folder can't be told apart": 1,
            "a conversation listed twice": 1, "a message without a valid ts": 1, "not a message": 1,
            "a message without an author": 1, "an empty message": 1, "a message listed twice": 1,
            "a message over 200000 characters": 1})


class DeterminismTest(unittest.TestCase):
    def test_the_same_zip_gives_the_same_records_every_time(self):
        data = zip_bytes(export_members())
        first, second = read_all(data), read_all(data)
        self.assertEqual(first[0], second[0])
        self.assertEqual(first[1], second[1])
        self.assertEqual(first[2], second[2])
        self.assertEqual(first[3].summary(), second[3].summary())
        with open_export(data) as export:   # a second pass over one open export, too
            self.assertEqual(list(export.messages()), list(export.messages()))

    def test_a_later_export_of_the_same_workspace_gives_the_same_keys_for_what_it_shares(self):
        later_day = GENERAL_DAY_2 + [{"type": "message", "ts": "1600172800.000001", "user": "U02BOB", "text": "new"}]
        earlier = read_all(zip_bytes(export_members()))[2]
        later = read_all(zip_bytes(export_members(**{"general/2020-09-14.json": later_day}),
                                   compression=zipfile.ZIP_STORED))[2]
        earlier_keys = {message.source_key for message in earlier}
        later_keys = {message.source_key for message in later}
        self.assertEqual(later_keys - earlier_keys, {key("C01GENERAL", "1600172800.000001")})
        self.assertLessEqual(earlier_keys, later_keys)

    def test_member_order_in_the_zip_does_not_change_the_output(self):
        members = export_members()
        reordered = dict(reversed(list(members.items())))
        self.assertEqual(read_all(zip_bytes(members))[2], read_all(zip_bytes(reordered))[2])


####
#### Hostile archives
####

class HostileArchiveTest(unittest.TestCase):
    def assertRefused(self, data, fragment):
        with self.assertRaises(slack.SlackExportError) as caught:
            with open_export(data) as export:
                list(export.messages())
        self.assertIn(fragment, str(caught.exception))
        return caught.exception

    def test_names_that_climb_out_or_are_absolute_are_refused(self):
        for name in ("../evil.json", "general/../../evil.json", "/etc/passwd", "C:/windows/x.json",
                     "general\\..\\..\\evil.json", "./users.json", "general/./2020-09-13.json"):
            with self.subTest(name=name):
                self.assertRefused(zip_bytes(export_members(**{name: b"[]"})), "refused: the member")

    def test_a_member_declaring_a_huge_size_is_refused_before_it_is_inflated(self):
        data = patch_declared_size(zip_bytes(export_members()), "users.json", 0xFFFFFFF0)
        self.assertRefused(data, "users.json declares 4294967280 bytes")

    def test_a_real_deflate_bomb_over_the_member_limit_is_refused(self):
        bomb = b"[" + b" " * (8 * 1024 * 1024) + b"]"   # 8 MiB of spaces deflate to ~8 KiB
        data = zip_bytes(export_members(**{"general/2020-09-13.json": bomb}))
        self.assertLess(len(data), 100_000)
        with mock.patch.object(slack, "SLACK_MAX_JSON_MEMBER_BYTES", 4 * 1024 * 1024):
            self.assertRefused(data, "general/2020-09-13.json declares 8388610 bytes")

    def test_files_over_the_whole_archive_limits_are_refused(self):
        data = zip_bytes(export_members())
        with mock.patch.object(slack, "SLACK_MAX_TOTAL_UNCOMPRESSED_BYTES", 5000):
            self.assertRefused(data, "the archive declares")
        with mock.patch.object(slack, "SLACK_MAX_JSON_TOTAL_BYTES", 5000):
            self.assertRefused(data, "the JSON files declare")
        with mock.patch.object(slack, "SLACK_MAX_FILE_MEMBER_BYTES", 100):
            self.assertRefused(data, "__uploads/F01DIAGRAM/diagram.png declares 1032 bytes")

    def test_a_member_whose_bytes_disagree_with_its_declared_size_fails_cleanly(self):
        data = patch_declared_size(zip_bytes(export_members()), "users.json", 10)
        self.assertRefused(data, "users.json can't be read")
        data = patch_declared_size(zip_bytes(export_members()), "__uploads/F01DIAGRAM/diagram.png", 20)
        with open_export(data) as export:
            attachment = next(message.attachment for message in export.messages() if message.attachment)
            with self.assertRaises(slack.SlackExportError):
                export.read_attachment(attachment)
            with self.assertRaises(slack.SlackExportError):
                export.copy_attachment(attachment, io.BytesIO())

    def test_too_many_members_are_refused(self):
        members = export_members(**{"extra/%03d.txt" % index: b"" for index in range(40)})
        data = zip_bytes(members)
        with mock.patch.object(slack, "SLACK_MAX_EXPORT_MEMBERS", 30):
            self.assertRefused(data, "the archive declares 52 members; an export has at most 30")
            # An end record that understates the count: the directory itself is counted.
            end = data.rfind(b"PK\x05\x06")
            lying = bytearray(data)
            struct.pack_into("<HH", lying, end + 8, 5, 5)
            self.assertRefused(bytes(lying), "the archive has more than 30 members")

    def test_a_member_count_declared_in_the_end_record_is_refused_before_zipfile_reads_it(self):
        # Only an end-of-central-directory record claiming 60,000 entries: zipfile would
        # fail later with its own error; the declared count is refused first.
        end_record = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 60000, 60000, 46 * 60000, 0, 0)
        with mock.patch.object(slack, "SLACK_MAX_EXPORT_MEMBERS", 50_000):
            self.assertRefused(end_record, "declares 60000 members")
        zip64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 10 ** 9, 10 ** 9, 10 ** 6, 0)
        locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, 0, 1)
        end_record = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
        self.assertRefused(zip64 + locator + end_record, "declares 1000000000 members")

    def test_a_huge_central_directory_is_refused(self):
        end_record = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 10, 10, 1 << 30, 0, 0)
        self.assertRefused(end_record, "table of contents is 1073741824 bytes")

    def test_invalid_json_is_refused_naming_the_member(self):
        self.assertRefused(zip_bytes(export_members(**{"users.json": b'[{"id": "U1",'})),
                           "users.json is not valid JSON (line 1, column 14")
        self.assertRefused(zip_bytes(export_members(**{"general/2020-09-14.json": b"[{]"})),
                           "general/2020-09-14.json is not valid JSON")
        self.assertRefused(zip_bytes(export_members(**{"channels.json": b"\xff\xfe[]"})),
                           "channels.json is not UTF-8 text")
        self.assertRefused(zip_bytes(export_members(**{"dms.json": b"[" * 100_000 + b"]" * 100_000})),
                           "dms.json is not usable JSON (RecursionError)")
        self.assertRefused(zip_bytes(export_members(**{"general/2020-09-13.json": {"messages": []}})),
                           "general/2020-09-13.json is not a list")

    def test_a_zip_without_users_json_is_not_a_slack_export(self):
        self.assertRefused(zip_bytes(export_members(**{"users.json": None})),
                           "not a Slack export: it has no users.json")
        self.assertRefused(zip_bytes({"users.json": b"[]", "readme.txt": b"hi"}),
                           "not a Slack export: it has no channels.json")
        self.assertRefused(zip_bytes({}), "not a Slack export")

    def test_a_file_that_is_not_a_zip_is_refused(self):
        self.assertRefused(b"", "not a ZIP archive")
        self.assertRefused(b"[]", "not a ZIP archive")
        self.assertRefused(b"%PDF-1.4 " + os.urandom(2000), "not a ZIP archive")
        truncated = zip_bytes(export_members())
        self.assertRefused(truncated[:len(truncated) // 2] + truncated[-22:], "not a readable ZIP archive")

    def test_encrypted_and_duplicate_members_are_refused(self):
        # zipfile writes no encrypted members: set the flag (APPNOTE.TXT 4.4.4 bit 0) by hand.
        data = bytearray(zip_bytes(export_members()))
        central = data.find(b"PK\x01\x02users.json"[:4])
        while bytes(data[central + 46:central + 56]) != b"users.json":
            central = data.find(b"PK\x01\x02", central + 4)
        data[central + 8] |= 0x1
        data[struct.unpack_from("<I", data, central + 42)[0] + 6] |= 0x1
        self.assertRefused(bytes(data), "users.json is encrypted")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive, self.assertWarns(UserWarning):
            for name, data in export_members().items():
                archive.writestr(name, data)
            archive.writestr("users.json", b"[]")
        self.assertRefused(buffer.getvalue(), "appears twice")

    def test_a_path_that_does_not_exist_is_a_clean_error(self):
        with self.assertRaises(slack.SlackExportError) as caught:
            slack.open_slack_export("/nonexistent/export.zip")
        self.assertIn("can't open", str(caught.exception))

    def test_an_export_on_disk_is_opened_and_closed_by_path(self):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "export.zip")
            with open(path, "wb") as file:
                file.write(zip_bytes(export_members()))
            with slack.open_slack_export(path) as export:
                self.assertEqual(len(list(export.messages())), 15)
            self.assertTrue(export._archive._stream.closed)


####
#### Against Campfire's own sanitizer
####

class CampfireSanitizerTest(unittest.TestCase):
    """The bodies are already what Campfire's sanitizer writes: sanitizing them again
    changes nothing, so nothing is lost or reinterpreted when they are stored."""

    campfire = slack

    def finished(self, body):
        chip = '<action-text-attachment sgid="%s" content-type="application/vnd.campfire.mention"></action-text-attachment>'
        return slack.finish_body(body, mention=lambda user_id: chip % self.campfire.make_sgid(7, "secret"),
                                 permalink=lambda source_key: "/rooms/1/@2")

    def test_the_conversion_table_survives_sanitizing_unchanged(self):
        for text, _ in CONVERSIONS:
            body = self.finished(convert(text)[0])
            with self.subTest(text=text):
                self.assertEqual(self.campfire.sanitize_html(body), body)

    def test_imported_bodies_survive_sanitizing_unchanged(self):
        for message in read_all(zip_bytes(export_members()))[2]:
            body = self.finished(message.body_html)
            with self.subTest(key=message.source_key):
                self.assertEqual(self.campfire.sanitize_html(body), body)
                self.assertEqual(self.campfire.sanitize_html(body, link=True), body)

    def test_mentions_are_found_where_campfire_looks_for_them(self):
        message = by_key(read_all(zip_bytes(export_members()))[2])[key("C01GENERAL", "1600000200.000300")]
        body = self.finished(message.body_html)
        self.assertEqual(len(self.campfire.find_mentions(body)), 1)
        self.assertEqual(self.campfire.sgid_user_id(self.campfire.find_mentions(body)[0]), 7)


if __name__ == "__main__":
    unittest.main()
