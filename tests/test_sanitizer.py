"""The rich-text section: allow-list sanitizer, auto-links, plain text, mentions
(a corpus of XSS payloads, idempotence, Trix bodies kept, a seeded fuzz)."""

import base64
import json
import random
import re
import shutil
import tempfile
import unittest
from html.parser import HTMLParser

from tests.helpers import campfire, make_app  # noqa: F401
from campfire import (
    ALLOWED_ATTRIBUTES, ALLOWED_TAGS, ATTACHMENT_ATTRIBUTES, ATTACHMENT_TAG,
    MAX_NESTING_DEPTH, MENTION_CONTENT_TYPE, URL_ATTRIBUTES,
    find_mentions, html_to_plain_text, make_sgid, render_rich_text,
    sanitize_html, sgid_user_id, verify_sgid)

SECRET = "test-secret-key-base"  # a SECRET_KEY_BASE
LINK = 'target="_blank" rel="noopener noreferrer"'

XSS_PAYLOADS = [
    "<script>alert(1)</script>",
    "<SCRIPT>alert(1)</SCRIPT>",
    "<ScRiPt>alert(1)</sCrIpT>",
    '<script type="text/javascript" src="//evil.example/x.js"></script>',
    "<script\n>alert(1)</script\n>",
    "<script/src=//evil.example></script>",
    "<<script>script>alert(1)<</script>/script>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<img src=x onerror=alert(1)>",
    "<IMG SRC=x ONERROR=alert(1)>",
    "<img src=x onerror=alert(1)//",
    '<img src="x" onerror="alert(1)"',
    "<img src=`x` onerror=`alert(1)`>",
    '<img srcset="x 1x, javascript:alert(1) 2x">',
    "<svg onload=alert(1)>",
    "<svg/onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<svg><a xlink:href="javascript:alert(1)"><text x="20" y="20">XSS</text></a></svg>',
    "<svg><style><img src=x onerror=alert(1)></style></svg>",
    '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>',
    '<math><mi xlink:href="javascript:alert(1)">x</mi></math>',
    '<math><maction actiontype="statusline" xlink:href="javascript:alert(1)">x</maction></math>',
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href=" javascript:alert(1)">x</a>',
    '<a href="jav&#x09;ascript:alert(1)">x</a>',
    '<a href="jav&#x0A;ascript:alert(1)">x</a>',
    '<a href="jav\tascript:alert(1)">x</a>',
    '<a href="java\nscript:alert(1)">x</a>',
    '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">x</a>',
    '<a href="&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099&#0000114&#0000105&#0000112&#0000116&#0000058alert(1)">x</a>',
    '<a href="javascript&colon;alert(1)">x</a>',
    '<a href="\x01javascript:alert(1)">x</a>',
    '<a href="java\x00script:alert(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="&#x6A;avascript:alert(1)">x</a>',
    '<a href="\xa0javascript:alert(1)">x</a>',
    '<blockquote cite="javascript:alert(1)">q</blockquote>',
    '<iframe src="javascript:alert(1)"></iframe>',
    '<iframe srcdoc="&lt;script&gt;alert(1)&lt;/script&gt;"></iframe>',
    "<style>body{background:url(javascript:alert(1))}</style>",
    '<div style="background:url(javascript:alert(1))">x</div>',
    '<p STYLE="x:expression(alert(1))">x</p>',
    '<form action="javascript:alert(1)"><input type=submit></form>',
    '<form><button formaction="javascript:alert(1)">x</button></form>',
    '<input onfocus=alert(1) autofocus>',
    '<object data="javascript:alert(1)"></object>',
    '<embed src="javascript:alert(1)">',
    '<base href="javascript:alert(1)//">',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<link rel="stylesheet" href="javascript:alert(1)">',
    '<div title="a" onmouseover="alert(1)">x</div>',
    '<div ONLOAD="alert(1)" OnClick="alert(1)">x</div>',
    '<b title="x" "onclick=alert(1)">x</b>',
    '<a title="x"onclick="alert(1)">x</a>',
    '<a title=\'x\' onclick=alert(1) href=#>x</a>',
    '<span title="</span><script>alert(1)</script>">x</span>',
    '<a title="</script><script>alert(1)</script>">x</a>',
    "<!--><script>alert(1)</script>-->",
    "<!-- <script>alert(1)</script> -->",
    "<!--[if gte IE 4]><script>alert(1)</script><![endif]-->",
    "<![CDATA[<script>alert(1)</script>]]>",
    "<![foo[<script>alert(1)</script>",
    "<?xml version=\"1.0\"?><script>alert(1)</script>",
    "<!DOCTYPE html><script>alert(1)</script>",
    '<a href="http://a.example"><a href="javascript:alert(1)">x</a></a>',
    "<details open ontoggle=alert(1)>",
    "<video><source onerror=alert(1)></video>",
    "<audio src=x onerror=alert(1)>",
    "<template><script>alert(1)</script></template>",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<textarea><img src=x onerror=alert(1)></textarea>',
    '<title><img src=x onerror=alert(1)></title>',
    '<xmp><img src=x onerror=alert(1)></xmp>',
    '<noembed><img src=x onerror=alert(1)></noembed>',
    '<select><option><img src=x onerror=alert(1)></option></select>',
    "<form><math><mtext></form><form><mglyph><style></math><img src onerror=alert(1)>",
    '<svg></p><style><a id="</style><img src=1 onerror=alert(1)>">',
    "<scr\x00ipt>alert(1)</scr\x00ipt>",
    "<img src=x on\x00error=alert(1)>",
    "<a href=\"\\u006aavascript:alert(1)\">x</a>",
    "<a href=\"\xc0\xbcscript\xc0\xbe\">x</a>",
    "%3Cscript%3Ealert(1)%3C/script%3E",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    '<body onload=alert(1)>', '<marquee onstart=alert(1)>x</marquee>',
    '<table background="javascript:alert(1)"><td>x</td></table>',
    '<a href="#" onclick="alert(1)" target="_self" rel="opener">x</a>',
    '<div id="x" data-action="click" class="c">x</div>',
    '<abbr title="x" ONMOUSEOVER=alert(1)>a</abbr>',
    '<plaintext><script>alert(1)</script>',
    '<action-text-attachment url="javascript:alert(1)" href="data:text/html,x" content="<img src=x onerror=alert(1)>"></action-text-attachment>',
    '<a href="https://ok.example/" onclick="alert(1)" style="color:red">ok</a>',
    '<a href="java&#115;cript:alert(1)">x</a>', '<a href="JAVASCRIPT:alert(1)">x</a>',
    '<a href="//evil.example">x</a>', '<a href="/\\evil.example">x</a>',
    '<div><div><span title=\'"><script>alert(1)</script>\'>x</span></div>',
    '<p><svg><p><style><img src=x onerror=alert(1)></style></p></svg></p>',
]

_URL_JUNK = re.compile(r"[\x00-\x20\x7f]+")


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.other = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    handle_startendtag = handle_starttag

    def handle_comment(self, data):
        self.other.append(("comment", data))

    def handle_decl(self, data):
        self.other.append(("decl", data))

    def handle_pi(self, data):
        self.other.append(("pi", data))

    def unknown_decl(self, data):
        self.other.append(("decl", data))


class RichTextCase(unittest.TestCase):
    def assertSafeHtml(self, out):
        """Only allowed tags and attributes, URLs with safe schemes, no markup
        other than tags, and every "<" starts an allowed tag."""
        collector = _Collector()
        collector.feed(out)
        collector.close()
        self.assertEqual(collector.other, [], out)
        for tag, attrs in collector.tags:
            self.assertIn(tag, ALLOWED_TAGS, out)
            allowed = ALLOWED_ATTRIBUTES | (ATTACHMENT_ATTRIBUTES if tag == ATTACHMENT_TAG else set())
            if tag == "a":
                allowed = allowed | {"target", "rel"}
            for name, value in attrs:
                self.assertIn(name, allowed, out)
                self.assertIsNotNone(value, out)
                if name in URL_ATTRIBUTES:
                    url = _URL_JUNK.sub("", value).lower()
                    self.assertFalse(url.startswith(("javascript:", "data:", "vbscript:")), out)
                    self.assertRegex(url, r"^(?:https?:|mailto:|[^:/?#]*(?:[/?#]|$))", out)
        lowered = out.lower()
        self.assertNotIn("<script", lowered)
        self.assertNotIn("<style", lowered)
        for position in [m.start() for m in re.finditer("<", out)]:
            match = re.match(r"</?([a-z][a-z0-9-]*)[ >]", out[position:])
            self.assertTrue(match and match[1] in ALLOWED_TAGS, out)
        for tag in re.findall(r"<[^>]*>", out):  # attribute names only, values blanked
            self.assertNotRegex(re.sub(r'"[^"]*"', '""', tag),
                                r"(?i)\s(?:on\w*|style|src|srcdoc|srcset|formaction|xlink:href|id|data-\w+)\s*=", out)


class SanitizerXssTest(RichTextCase):
    def test_corpus_is_large_enough(self):
        self.assertGreaterEqual(len(XSS_PAYLOADS), 60)

    def test_xss_corpus_output_is_safe(self):
        for payload in XSS_PAYLOADS:
            for link in (False, True):
                with self.subTest(payload=payload, link=link):
                    self.assertSafeHtml(sanitize_html(payload, link=link))

    def test_xss_corpus_is_idempotent(self):
        for payload in XSS_PAYLOADS:
            for link in (False, True):
                with self.subTest(payload=payload, link=link):
                    once = sanitize_html(payload, link=link)
                    self.assertEqual(sanitize_html(once, link=link), once)

    def test_xss_corpus_plain_text_never_raises(self):
        for payload in XSS_PAYLOADS:
            with self.subTest(payload=payload):
                self.assertIsInstance(html_to_plain_text(sanitize_html(payload)), str)

    def test_script_contents_are_dropped_not_kept_as_text(self):
        self.assertEqual(sanitize_html("a<script>alert(1)</script>b"), "ab")
        self.assertEqual(sanitize_html("a<svg><text>x</text></svg>b"), "ab")
        self.assertEqual(sanitize_html('<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>ok'), "ok")

    def test_disallowed_tags_keep_their_text(self):
        self.assertEqual(sanitize_html("<marquee>hi <u>there</u></marquee>"), "hi there")
        self.assertEqual(sanitize_html("x<embed src=y>z"), "xz")

    def test_unclosed_tag_at_end_becomes_text(self):
        self.assertEqual(sanitize_html("<img src=x onerror=alert(1)//"), "&lt;img src=x onerror=alert(1)//")

    def test_unterminated_markup_at_the_end_is_kept_as_text(self):
        # Parsed once, not rescanned from every "<" (quadratic in HTMLParser.close()).
        self.assertEqual(sanitize_html("<a <a <a"), "&lt;a &lt;a &lt;a")
        self.assertEqual(sanitize_html("<div>ok</div><!-- open"), "<div>ok</div>&lt;!-- open")
        self.assertEqual(sanitize_html("x <b then"), "x &lt;b then")
        self.assertEqual(sanitize_html("<b>x</b> AT&T &amp"), "<b>x</b> AT&amp;T &amp;")
        self.assertEqual(sanitize_html("<b>x<script>never closed <b>"), "<b>x</b>")
        self.assertTrue(sanitize_html("<a b='" * 5000).startswith("&lt;a b='&lt;a b='"))

    def test_javascript_href_is_dropped_but_link_text_kept(self):
        self.assertEqual(sanitize_html('<a href="jav&#x09;ascript:alert(1)">x</a>'), "<a>x</a>")

    def test_null_bytes_are_removed(self):
        self.assertEqual(sanitize_html("a\x00b<b>c\x00</b>"), "ab<b>c</b>")

    def test_duplicate_attributes_keep_the_first(self):
        self.assertEqual(sanitize_html('<span title="a" title="b">x</span>'), '<span title="a">x</span>')


class SanitizerTrixTest(RichTextCase):
    PRESERVED = [
        "<div>Hello <strong>there</strong></div>",
        "<div><em>a</em> <del>b</del> <code>c</code></div>",
        "<h1>Title</h1><div>text</div>",
        "<ul><li>one</li><li>two<ul><li>nested</li></ul></li></ul>",
        "<ol><li>first</li><li>second</li></ol>",
        '<blockquote><cite>Alice <a href="/rooms/1/@5">#</a></cite><br>quoted</blockquote><div>reply</div>',
        '<blockquote cite="https://example.com/src">q</blockquote>',
        "<pre>def f():\n    return 1 &lt; 2</pre>",
        "<div>a<br><br>b</div>",
        '<div>don\'t &amp; &quot;quote&quot; &lt;3 a&nbsp; b</div>',
        '<a href="mailto:a@example.com">mail</a>',
        '<span class="x y">z</span>',
        '<time datetime="2024-01-01">new year</time>',
        f'<a href="https://example.com/a?b=1&amp;c=2" {LINK}>x</a>',
    ]

    def test_trix_bodies_are_preserved_exactly(self):
        for body in self.PRESERVED:
            with self.subTest(body=body):
                self.assertEqual(sanitize_html(body), body)

    def test_absolute_links_get_target_and_rel(self):
        self.assertEqual(sanitize_html('<a href="https://example.com" target="_self" rel="opener">x</a>'),
                         f'<a href="https://example.com" {LINK}>x</a>')
        self.assertEqual(sanitize_html('<a title="t" href="HTTP://example.com">x</a>'),
                         f'<a title="t" href="HTTP://example.com" {LINK}>x</a>')
        self.assertEqual(sanitize_html('<a href="/rooms/1">x</a>'), '<a href="/rooms/1">x</a>')

    def test_open_tags_are_closed_and_stray_end_tags_dropped(self):
        self.assertEqual(sanitize_html("<div><b>x"), "<div><b>x</b></div>")
        self.assertEqual(sanitize_html("</p>x</b><i>y</div>"), "x<i>y</i>")
        self.assertEqual(sanitize_html("<b><i>x</b>y</i>"), "<b><i>x</i></b>y")

    def test_nested_links_are_flattened(self):
        self.assertEqual(sanitize_html('<a href="/a">x<a href="/b">y</a>z</a>'), '<a href="/a">xy</a>z')

    def test_void_elements_have_no_end_tag(self):
        self.assertEqual(sanitize_html("a<br/>b<hr>c</br>"), "a<br>b<hr>c")

    def test_deep_nesting_is_bounded(self):
        depth = MAX_NESTING_DEPTH * 3
        out = sanitize_html("<div>" * depth + "deep" + "</div>" * depth)
        self.assertEqual(out.count("<div>"), MAX_NESTING_DEPTH)
        self.assertEqual(out.count("</div>"), MAX_NESTING_DEPTH)
        self.assertIn("deep", out)
        self.assertEqual(sanitize_html(out), out)

    def test_plain_text_fast_path_matches_parser(self):
        for text in ["hello", "a > b \"c\"", "AT&T &amp; co", "x\xa0y", "see https://x.example."]:
            for link in (False, True):
                with self.subTest(text=text, link=link):
                    self.assertEqual(sanitize_html(text, link=link),
                                     sanitize_html("<b></b>" + text, link=link).replace("<b></b>", ""))


class AttachmentTest(RichTextCase):
    def mention(self, user_id=7, **extra):
        attributes = "".join(f' {k}="{v}"' for k, v in extra.items())
        return (f'<action-text-attachment sgid="{make_sgid(user_id, SECRET)}" '
                f'content-type="{MENTION_CONTENT_TYPE}"{attributes}></action-text-attachment>')

    def test_mention_survives_when_allowed(self):
        body = f"<div>Hi {self.mention()}!</div>"
        self.assertEqual(sanitize_html(body, keep_attachment=lambda sgid, ct: verify_sgid(sgid, SECRET) == 7), body)

    def test_mention_is_dropped_when_not_allowed(self):
        body = f"<div>Hi {self.mention()}!</div>"
        self.assertEqual(sanitize_html(body, keep_attachment=lambda sgid, ct: False), "<div>Hi !</div>")

    def test_keep_attachment_receives_sgid_and_content_type(self):
        seen = []
        sanitize_html(self.mention(3), keep_attachment=lambda sgid, ct: seen.append((sgid, ct)))
        self.assertEqual(seen, [(make_sgid(3, SECRET), MENTION_CONTENT_TYPE)])

    def test_attachment_only_attributes_stay_off_other_tags(self):
        self.assertEqual(sanitize_html('<div sgid="x" filename="y" content="z">a</div>'), "<div>a</div>")

    def test_render_replaces_mentions_with_chips(self):
        body = f"<div>Hi {self.mention(7)} and {self.mention(8)}</div>"
        chips = {make_sgid(7, SECRET): '<span class="mention">@Ann</span>'}
        self.assertEqual(render_rich_text(body, mention=chips.get),
                         '<div>Hi <span class="mention">@Ann</span> and </div>')

    def test_render_keeps_escaped_content_text_when_mention_unknown(self):
        body = sanitize_html(self.mention(9, content="&lt;b&gt;Bob &amp;amp; co&lt;/b&gt;"))
        self.assertEqual(render_rich_text(body), "Bob &amp; co")

    def test_render_drops_other_attachments(self):
        body = '<div>a<action-text-attachment sgid="s" content-type="image/png" url="/x.png"></action-text-attachment>b</div>'
        self.assertEqual(render_rich_text(body), "<div>ab</div>")

    def test_render_reads_rails_written_attachments(self):
        sgid = make_sgid(4, "another secret key base")
        body = f'<div><action-text-attachment content-type="{MENTION_CONTENT_TYPE}" sgid="{sgid}"></action-text-attachment></div>'
        self.assertEqual(render_rich_text(body, mention=lambda s: f"<b>{sgid_user_id(s)}</b>"), "<div><b>4</b></div>")

    def test_render_without_attachments_returns_input(self):
        body = "<div>plain</div>"
        self.assertIs(render_rich_text(body), body)

    def test_find_mentions_in_order_without_duplicates(self):
        body = self.mention(2) + self.mention(1) + self.mention(2)
        self.assertEqual(find_mentions(body), [make_sgid(2, SECRET), make_sgid(1, SECRET)])
        self.assertEqual(find_mentions("<div>none</div>"), [])


class SgidTest(unittest.TestCase):
    def test_round_trip(self):
        sgid = make_sgid(42, SECRET)
        self.assertEqual(verify_sgid(sgid, SECRET), 42)
        self.assertEqual(sgid_user_id(sgid), 42)

    def test_format_is_rails_message_verifier(self):
        data, _, digest = make_sgid(5, SECRET).partition("--")
        # GlobalID::Verifier: URL-safe base64 with padding, HMAC-SHA1 (MessageVerifier's default).
        self.assertEqual(json.loads(base64.urlsafe_b64decode(data)),
                         {"_rails": {"data": "gid://campfire/User/5", "pur": "attachable"}})
        self.assertRegex(digest, r"^[0-9a-f]{40}$")

    def test_tampering_is_detected(self):
        sgid = make_sgid(42, SECRET)
        data, _, digest = sgid.partition("--")
        forged = base64.urlsafe_b64encode(base64.urlsafe_b64decode(data).replace(b"/42", b"/1")).decode()
        self.assertIsNone(verify_sgid(f"{forged}--{digest}", SECRET))
        self.assertIsNone(verify_sgid(sgid[:-1] + ("0" if sgid[-1] != "0" else "1"), SECRET))
        self.assertIsNone(verify_sgid(sgid, "other secret"))
        self.assertIsNone(verify_sgid("no-separator", SECRET))
        self.assertIsNone(verify_sgid("\udcff--\udcff", SECRET))

    def test_rails_legacy_message_envelope_is_read(self):
        message = base64.b64encode(b'"gid://campfire/User/17"').decode()
        envelope = {"_rails": {"message": message, "exp": None, "pur": "attachable"}}
        sgid = base64.b64encode(json.dumps(envelope).encode()).decode() + "--" + "ab" * 20
        self.assertEqual(sgid_user_id(sgid), 17)

    def test_marshal_era_sgid_is_read(self):
        marshal = b'\x04\b{\bI"\bgid\x06:\x06ETI"\x1egid://campfire/User/23\x06;\x00T'
        self.assertEqual(sgid_user_id(base64.b64encode(marshal).decode() + "--abc"), 23)

    def test_garbage_sgids_give_none(self):
        for sgid in ["", "--", "!!!--00", "bm90IGpzb24=--00", base64.b64encode(b'{"_rails":{"data":"gid://campfire/Room/3"}}').decode()]:
            with self.subTest(sgid=sgid):
                self.assertIsNone(sgid_user_id(sgid))


class PlainTextTest(unittest.TestCase):
    def test_examples(self):
        mention = f'<action-text-attachment sgid="{make_sgid(7, SECRET)}" content-type="{MENTION_CONTENT_TYPE}"></action-text-attachment>'
        names = {make_sgid(7, SECRET): "Ann"}
        cases = [
            ("<div>/play tada</div>", "/play tada"),
            ("<div>Hello <strong>there</strong></div>", "Hello there"),
            ("<div>a</div><div>b</div>", "a\nb"),
            ("<div>a<br>b<br><br><br><br>c</div>", "a\nb\n\nc"),
            ("<ul><li>a</li><li>b<ul><li>c</li></ul></li></ul><div>d</div>", "• a\n• b\n  • c\n\nd"),
            ("<ol><li>x</li><li>y</li></ol>", "1. x\n2. y"),
            ("<h1>T</h1><div>x</div>", "T\n\nx"),
            ("<div>AT&amp;T &lt;3 &quot;q&quot;</div>", 'AT&T <3 "q"'),
            ("  AT&amp;T  ", "AT&T"),
            (f"<div>hi {mention}!</div>", "hi @Ann!"),
            ("<pre>a\n\n  b</pre>", "a\n\n  b"),
            ("<div>x</div>\n\n<div>y</div>", "x\ny"),
            ("<script>evil()</script>ok", "ok"),
        ]
        for html, text in cases:
            with self.subTest(html=html):
                self.assertEqual(html_to_plain_text(html, mention_name=names.get), text)

    def test_source_newlines_between_tags_are_formatting(self):
        self.assertEqual(html_to_plain_text("<ul>\n  <li>a</li>\n  <li>b</li>\n</ul>\n<div>c</div>"), "• a\n• b\n\nc")
        self.assertEqual(html_to_plain_text("<b>a</b>\n<i>b</i>"), "a b")

    def test_attachments_other_than_mentions_show_caption_or_filename(self):
        self.assertEqual(html_to_plain_text('<action-text-attachment content-type="image/png" filename="cat.png"></action-text-attachment>'), "[cat.png]")

    def test_mention_falls_back_to_content_then_nothing(self):
        with_content = f'<action-text-attachment sgid="x" content-type="{MENTION_CONTENT_TYPE}" content="&lt;span&gt;Bob&lt;/span&gt;"></action-text-attachment>'
        self.assertEqual(html_to_plain_text(f"hi {with_content}"), "hi @Bob")
        bare = f'<action-text-attachment sgid="x" content-type="{MENTION_CONTENT_TYPE}"></action-text-attachment>'
        self.assertEqual(html_to_plain_text(f"hi {bare}!"), "hi !")


class AutoLinkTest(RichTextCase):
    """Bare URLs become links on the way a posted body is stored (App.clean_body,
    which sanitizes with link=True)."""

    @classmethod
    def setUpClass(cls):
        cls.storage = tempfile.mkdtemp(prefix="campfire-test-")
        cls.app = make_app(cls.storage)

    @classmethod
    def tearDownClass(cls):
        cls.app.close()
        shutil.rmtree(cls.storage, ignore_errors=True)

    def auto_link(self, html):
        return self.app.store.clean_body(html, room_id=1)

    def link(self, url, text=None):
        return f'<a href="{url}" {LINK}>{text or url}</a>'

    def test_examples(self):
        cases = [
            ("see https://example.com.", f"see {self.link('https://example.com')}."),
            ("(see https://example.com/a)", f"(see {self.link('https://example.com/a')})"),
            ("https://en.wikipedia.org/wiki/Python_(language)), ok",
             f"{self.link('https://en.wikipedia.org/wiki/Python_(language)')}), ok"),
            ("go to www.example.com!?", f"go to {self.link('http://www.example.com', 'www.example.com')}!?"),
            ("a https://x.example/?a=1&amp;b=2; b", f"a {self.link('https://x.example/?a=1&amp;b=2')}; b"),
            ("mail bob@www.example.com or xhttp://no", "mail bob@www.example.com or xhttp://no"),
            ("<div>x http://a.example</div>", f"<div>x {self.link('http://a.example')}</div>"),
            ("just http:// and www.", "just http:// and www."),
        ]
        for html, expected in cases:
            with self.subTest(html=html):
                self.assertEqual(self.auto_link(html), expected)
                self.assertEqual(self.auto_link(expected), expected)

    def test_not_inside_links_code_or_pre(self):
        for html in ['<a href="/x">http://a.example</a>', "<code>http://a.example</code>",
                     "<pre>see www.example.com</pre>", "<pre><b>http://a.example</b></pre>"]:
            with self.subTest(html=html):
                self.assertEqual(self.auto_link(html), html)

    def test_linked_output_is_safe(self):
        self.assertSafeHtml(self.auto_link('x https://a.example/"onmouseover=alert(1)// y'))

    def test_url_split_by_a_dropped_tag_links_the_same_twice(self):
        once = self.auto_link("www.<u>example</u>.com")
        self.assertEqual(once, self.link("http://www.example.com", "www.example.com"))
        self.assertEqual(self.auto_link(once), once)


class FuzzTest(RichTextCase):
    PIECES = [
        "<div>", "</div>", "<b>", "</b>", "<a href='http://x.example'>", "<a href=javascript:alert(1)>", "</a>",
        "<script>", "</script>", "<style>", "</style>", "<svg>", "</svg>", "<math>", "</math>",
        "<img src=x onerror=alert(1)>", "<pre>", "</pre>", "<code>", "</code>", "<ul>", "<li>", "</li>", "</ul>",
        "<ol>", "</ol>", "<br>", "<br/>", "<hr>", "<!--", "-->", "<!", "<![CDATA[", "]]>", "<?", "<![if x]>",
        "<", ">", "/", "\"", "'", "=", "&", "&amp;", "&lt;", "&#x6A;", "&#", "&nbsp;", "\x00", "\n", " ",
        "http://a.example/", "www.b.example", ".", ")", "(", "text", "ñ", "😀",
        "<action-text-attachment sgid='s' content-type='application/vnd.campfire.mention'>",
        "</action-text-attachment>", "<blockquote cite=' javascript:x'>", "</blockquote>",
        "<span title='a\"b' onclick=x class=c>", "</span>", "<textarea>", "</textarea>", "<template>",
        "<noscript>", "</noscript>", "<p", " title=", "<a/", "</", "<x-y>", "<DIV CLASS=q>", "<Li>",
    ]

    def test_random_tag_soup_is_always_safe_and_idempotent(self):
        rng = random.Random(20240601)
        for _ in range(5000):
            soup = "".join(rng.choice(self.PIECES) for _ in range(rng.randint(1, 30)))
            link = rng.random() < 0.5
            with self.subTest(soup=soup, link=link):
                out = sanitize_html(soup, link=link)
                self.assertSafeHtml(out)
                self.assertEqual(sanitize_html(out, link=link), out)
                html_to_plain_text(out)
                html_to_plain_text(soup)
                self.assertSafeHtml(render_rich_text(out))
                find_mentions(out)

    def test_one_line_shortcut_matches_the_parser(self):
        # "<div>text</div>" (the composer's one line) skips the parser; "<div >"
        # takes it. Both must give the same stored body and the same plain text.
        rng = random.Random(20261125)
        pieces = list("ab xyz.,;:!?&#>\"'\n\t/\\-_=@%") + [
            "&amp;", "&lt;", "&#39;", "&nbsp;", "&#x6A;", "http://a.example/x?b=c&d", "www.b.example",
            "mailto:x@y.example", "ñ", "😀", "  ", "/play tada", "https://c.example", "\x00"]
        for _ in range(3000):
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
            link = rng.random() < 0.5
            with self.subTest(text=text, link=link):
                self.assertEqual(sanitize_html("<div>%s</div>" % text, link=link),
                                 sanitize_html("<div >%s</div>" % text, link=link))
                self.assertEqual(html_to_plain_text("<div>%s</div>" % text),
                                 html_to_plain_text("<div >%s</div>" % text))


if __name__ == "__main__":
    unittest.main()
