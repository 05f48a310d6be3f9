"""HTTP/1.1 (sections 4 and 9): the sans-I/O parser with fixed vectors fed three
ways, every bad input with its status, a seeded garbage test; the response
writer; and the application's HTTP behaviour in-process (method override,
forgery checks, error pages, gzip, security headers, /up, static files)."""

import email.utils
import gzip
import json
import os
import random
import re
import shutil
import tempfile
import time
import unittest
import urllib.parse
import zlib

try:
    from tests.helpers import AppTestCase, Client, campfire
except ImportError:  # run from inside tests/
    from helpers import AppTestCase, Client, campfire


# The parser, fed three ways ----------------------------------------------------

# The start of a following request: a parser must leave it in its buffer.
NEXT_REQUEST_START = b"GET /next HTTP/1.1\r\nHost: exa"
FEEDS = ("whole", "bytewise", "trailing")


def feed(data, how, body_limit=None):
    """Feed `data` to a fresh parser whole, one byte at a time, or followed by
    the start of the next request; return (requests, parser)."""
    parser = campfire.HttpParser(body_limit)
    if how == "bytewise":
        pieces = (data[index:index + 1] for index in range(len(data)))
    elif how == "trailing":
        pieces = [data + NEXT_REQUEST_START]
    else:
        pieces = [data]
    requests = []
    for piece in pieces:
        parser.receive_data(piece)
        while (request := parser.next_request()) is not None:
            requests.append(request)
    return requests, parser


def summary(request):
    return (request.method, request.target, request.path, request.query_string, request.version,
            request.headers, request.body, request.keep_alive)


class ParserTestCase(unittest.TestCase):
    def parse(self, data, count=1, body_limit=None):
        """Every way of feeding gives the same `count` requests; returns them."""
        results = {}
        for how in FEEDS:
            try:
                requests, parser = feed(data, how, body_limit)
            except campfire.HttpError as error:
                self.fail("fed %s, it was refused with %d (%s)" % (how, error.status, error.message))
            self.assertEqual(len(requests), count, "fed %s, it gave %d requests" % (how, len(requests)))
            results[how] = requests
            if how == "trailing":
                self.assertTrue(parser.has_partial_request, "the next request's start was lost")
            else:
                self.assertFalse(parser.has_partial_request, "fed %s, bytes were left over" % how)
        for how in ("bytewise", "trailing"):
            self.assertEqual([summary(request) for request in results[how]],
                             [summary(request) for request in results["whole"]], "fed %s" % how)
        return results["whole"]

    def assertRejected(self, data, status, body_limit=None):
        """Every way of feeding raises HttpError with `status`."""
        for how in FEEDS:
            with self.subTest(feed=how, status=status):
                with self.assertRaises(campfire.HttpError) as caught:
                    feed(data, how, body_limit)
                self.assertEqual(caught.exception.status, status, caught.exception.message)


class ParserValidInputTest(ParserTestCase):
    def test_simple_get(self):
        [request] = self.parse(b"GET /rooms/1?since=5&x=%20 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertEqual(request.method, "GET")
        self.assertEqual(request.target, "/rooms/1?since=5&x=%20")
        self.assertEqual(request.path, "/rooms/1")
        self.assertEqual(request.query_string, "since=5&x=%20")
        self.assertEqual(request.query.get("x"), " ")
        self.assertEqual(request.version, "HTTP/1.1")
        self.assertEqual(request.headers, {"host": "example.com"})
        self.assertEqual(request.body, b"")
        self.assertTrue(request.keep_alive)

    def test_header_names_are_case_insensitive_and_repeats_are_joined(self):
        [request] = self.parse(
            b"GET / HTTP/1.1\r\nHOST: example.com\r\nAccept: text/html\r\naccept: */*\r\n"
            b"Cookie: a=1\r\ncookie: b=2\r\nX-Spaced:  \t padded value \t \r\nX-Empty:\r\n"
            b"X-Obs-Text: caf\xe9\r\n\r\n")
        self.assertEqual(request.headers["host"], "example.com")
        self.assertEqual(request.header("accept"), "text/html, */*")
        self.assertEqual(request.headers["cookie"], "a=1; b=2")
        self.assertEqual(request.cookies, {"a": "1", "b": "2"})
        self.assertEqual(request.headers["x-spaced"], "padded value")
        self.assertEqual(request.headers["x-empty"], "")
        self.assertEqual(request.headers["x-obs-text"], "caf\xe9")

    def test_repeated_identical_content_length_is_accepted(self):
        [request] = self.parse(b"POST /session HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                               b"Content-Length: 3\r\n\r\nabc")
        self.assertEqual(request.body, b"abc")

    def test_content_length_body(self):
        [request] = self.parse(b"POST /session HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/x-www-form-urlencoded\r\n"
                               b"Content-Length: 33\r\n\r\nemail_address=a%40b.c&password=pw")
        self.assertEqual(request.body, b"email_address=a%40b.c&password=pw")
        self.assertEqual(request.form.get("email_address"), "a@b.c")
        self.assertEqual(request.form.get("password"), "pw")

    def test_zero_content_length_has_an_empty_body(self):
        [request] = self.parse(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(request.body, b"")

    def test_chunked_body_with_extensions_and_trailers(self):
        [request] = self.parse(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\n"
            b"6 ; ext=\"quoted\"\r\n world\r\n"
            b"A\r\n0123456789\r\n"
            b"0\r\nX-Checksum: abc\r\nX-Other: def\r\n\r\n")
        self.assertEqual(request.body, b"hello world0123456789")

    def test_chunked_body_without_trailers_and_with_uppercase_hex(self):
        [request] = self.parse(b"POST /x HTTP/1.1\r\nHost: x\r\ntransfer-encoding: Chunked\r\n\r\n"
                               b"1F\r\n" + b"z" * 31 + b"\r\n0\r\n\r\n")
        self.assertEqual(request.body, b"z" * 31)

    def test_pipelined_requests_come_out_in_order(self):
        requests = self.parse(
            b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /third HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"HEAD /fourth HTTP/1.1\r\nHost: x\r\n\r\n", count=4)
        self.assertEqual([(request.method, request.path, request.body) for request in requests],
                         [("GET", "/first", b""), ("POST", "/second", b"hello"),
                          ("POST", "/third", b"abc"), ("HEAD", "/fourth", b"")])

    def test_http_1_0_without_keep_alive_is_not_kept_alive(self):
        [request] = self.parse(b"GET / HTTP/1.0\r\n\r\n")  # no Host needed in 1.0
        self.assertEqual(request.version, "HTTP/1.0")
        self.assertFalse(request.keep_alive)

    def test_http_1_0_with_keep_alive_is_kept_alive(self):
        [request] = self.parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        self.assertTrue(request.keep_alive)

    def test_connection_close_on_http_1_1_is_not_kept_alive(self):
        [request] = self.parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertFalse(request.keep_alive)
        [request] = self.parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, Close\r\n\r\n")
        self.assertFalse(request.keep_alive)

    def test_absolute_form_target_becomes_a_path(self):
        [request] = self.parse(b"GET http://example.com:3000/rooms/7?since=2 HTTP/1.1\r\n"
                               b"Host: example.com:3000\r\n\r\n")
        self.assertEqual(request.target, "/rooms/7?since=2")
        self.assertEqual(request.path, "/rooms/7")
        self.assertEqual(request.query_string, "since=2")
        [request] = self.parse(b"GET https://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertEqual(request.path, "/")

    def test_asterisk_form_only_for_options(self):
        [request] = self.parse(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(request.target, "*")
        self.assertRejected(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400)

    def test_leading_empty_lines_are_ignored(self):
        [request] = self.parse(b"\r\n\r\n\r\nGET /after-blank-lines HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(request.path, "/after-blank-lines")

    def test_head_request(self):
        [request] = self.parse(b"HEAD /up HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(request.method, "HEAD")
        self.assertEqual(request.body, b"")

    def test_exactly_the_header_field_limit_is_accepted(self):
        fields = b"".join(b"X-F%d: v\r\n" % index for index in range(campfire.MAX_HEADER_FIELDS - 1))
        [request] = self.parse(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        self.assertEqual(len(request.headers), campfire.MAX_HEADER_FIELDS)

    def test_body_exactly_at_the_route_limit_is_accepted(self):
        [request] = self.parse(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789",
                               body_limit=lambda method, path: 10)
        self.assertEqual(request.body, b"0123456789")
        [request] = self.parse(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n", body_limit=lambda method, path: 10)
        self.assertEqual(request.body, b"0123456789")

    def test_body_limit_is_asked_with_the_method_and_path(self):
        asked = []

        def limit(method, path):
            asked.append((method, path))
            return 100
        feed(b"POST /rooms/1/messages?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz", "whole", limit)
        self.assertEqual(asked, [("POST", "/rooms/1/messages")])


class ExpectContinueTest(unittest.TestCase):
    HEAD = (b"POST /session HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\n")

    def test_wants_continue_once_after_the_head_before_the_body(self):
        parser = campfire.HttpParser()
        parser.receive_data(self.HEAD)
        self.assertIsNone(parser.next_request())
        self.assertTrue(parser.wants_continue())
        self.assertFalse(parser.wants_continue(), "the interim response is due only once")
        parser.receive_data(b"hello")
        request = parser.next_request()
        self.assertEqual(request.body, b"hello")
        self.assertFalse(parser.wants_continue())

    def test_wants_continue_fed_one_byte_at_a_time(self):
        parser = campfire.HttpParser()
        answers = []
        for index in range(len(self.HEAD)):
            parser.receive_data(self.HEAD[index:index + 1])
            self.assertIsNone(parser.next_request())
            answers.append(parser.wants_continue())
        self.assertEqual(answers, [False] * (len(self.HEAD) - 1) + [True])
        for byte in b"hell":
            parser.receive_data(bytes([byte]))
            self.assertIsNone(parser.next_request())
            self.assertFalse(parser.wants_continue())
        parser.receive_data(b"o")
        self.assertEqual(parser.next_request().body, b"hello")

    def test_no_interim_response_when_the_body_already_arrived(self):
        parser = campfire.HttpParser()
        parser.receive_data(self.HEAD + b"hello" + NEXT_REQUEST_START)
        self.assertEqual(parser.next_request().body, b"hello")
        self.assertFalse(parser.wants_continue())
        self.assertIsNone(parser.next_request())
        self.assertTrue(parser.has_partial_request)

    def test_expect_is_case_insensitive_and_works_for_chunked_bodies(self):
        parser = campfire.HttpParser()
        parser.receive_data(b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n")
        self.assertIsNone(parser.next_request())
        self.assertTrue(parser.wants_continue())
        parser.receive_data(b"2\r\nok\r\n0\r\n\r\n")
        self.assertEqual(parser.next_request().body, b"ok")

    def test_the_next_request_on_the_connection_can_expect_again(self):
        parser = campfire.HttpParser()
        for _ in range(2):
            parser.receive_data(self.HEAD)
            self.assertIsNone(parser.next_request())
            self.assertTrue(parser.wants_continue())
            parser.receive_data(b"hello")
            self.assertEqual(parser.next_request().body, b"hello")

    def test_no_interim_response_without_a_body(self):
        parser = campfire.HttpParser()
        parser.receive_data(b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n")
        self.assertIsNotNone(parser.next_request())
        self.assertFalse(parser.wants_continue())


class ParserBadInputTest(ParserTestCase):
    def test_request_line_over_8_kib_is_414(self):
        target = b"/" + b"a" * campfire.MAX_REQUEST_LINE_BYTES
        self.assertRejected(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414)
        self.assertRejected(b"GET " + target, 414)  # before its end arrives

    def test_very_long_request_line_is_414_however_it_arrives(self):
        # 100 KiB: past the line limit and the whole-head limit; the line is what's wrong.
        self.assertRejected(b"GET /" + b"a" * 100 * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414)

    def test_header_block_over_64_kib_is_431(self):
        big = b"".join(b"X-Big-%d: %s\r\n" % (index, b"v" * 1000) for index in range(70))
        self.assertLess(70, campfire.MAX_HEADER_FIELDS)
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n", 431)

    def test_more_than_100_header_fields_is_431(self):
        fields = b"".join(b"X-F%d: v\r\n" % index for index in range(campfire.MAX_HEADER_FIELDS))
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n", 431)

    def test_content_length_over_the_route_limit_is_413_before_the_body(self):
        head = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"
        self.assertRejected(head, 413, body_limit=lambda method, path: 10)  # no body byte sent
        head = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (campfire.DEFAULT_BODY_LIMIT + 1)
        self.assertRejected(head, 413)

    def test_chunked_body_over_the_route_limit_is_413(self):
        limit = lambda method, path: 10  # noqa: E731
        self.assertRejected(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"b\r\nhello world\r\n0\r\n\r\n", 413, body_limit=limit)
        self.assertRejected(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n", 413, body_limit=limit)
        # A huge announced chunk is refused when announced, not after its data.
        self.assertRejected(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"ffffffffffffffff\r\n", 413)

    def test_malformed_request_line_is_400(self):
        for line in (b"GET /", b"GET / HTTP/1.1 extra", b"G T / HTTP/1.1", b"GET  / HTTP/1.1",
                     b" GET / HTTP/1.1", b"GET / HTTP/1.1 ", b"GE(T / HTTP/1.1", b"GET\t/ HTTP/1.1",
                     b"GET /a\x01b HTTP/1.1", b"GET /a\x7fb HTTP/1.1", b"GET /a\x00 HTTP/1.1",
                     b"GET /caf\xe9 HTTP/1.1", b"GET rooms HTTP/1.1", b"GET ftp://x/ HTTP/1.1"):
            with self.subTest(line=line):
                self.assertRejected(line + b"\r\nHost: x\r\n\r\n", 400)

    def test_lowercase_method_is_400(self):
        self.assertRejected(b"get / HTTP/1.1\r\nHost: x\r\n\r\n", 400)
        self.assertRejected(b"Post / HTTP/1.1\r\nHost: x\r\n\r\n", 400)

    def test_unknown_minor_or_major_version_is_505(self):
        for version in (b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/3.0"):
            with self.subTest(version=version):
                self.assertRejected(b"GET / " + version + b"\r\nHost: x\r\n\r\n", 505)

    def test_garbage_version_is_400(self):
        for version in (b"HTTP/1", b"HTTP/1.1x", b"http/1.1", b"HTTX/1.1", b"HTTP/11.1", b"HTTP/1.1/",
                        b"1.1", b"HTTP/\xd9.1"):
            with self.subTest(version=version):
                self.assertRejected(b"GET / " + version + b"\r\nHost: x\r\n\r\n", 400)

    def test_missing_host_on_http_1_1_is_400(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400)

    def test_conflicting_host_headers_are_400(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400)

    def test_header_without_colon_is_400(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", 400)

    def test_space_before_colon_is_400(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400)
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nX-A\t: y\r\n\r\n", 400)

    def test_obs_fold_line_is_400(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: a\r\n continued\r\n\r\n", 400)
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: a\r\n\tcontinued\r\n\r\n", 400)

    def test_empty_or_invalid_header_name_is_400(self):
        for line in (b": no-name", b"X(A): y", b"X A: y", b"X\x00: y", b"Caf\xe9: y"):
            with self.subTest(line=line):
                self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n", 400)

    def test_control_characters_in_a_value_are_400(self):
        for value in (b"a\x00b", b"a\x01b", b"a\x7fb", b"a\rb", b"a\nb", b"a\x1bb"):
            with self.subTest(value=value):
                self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: " + value + b"\r\n\r\n", 400)

    def test_bare_lf_in_method_header_name_or_chunk_size_is_400(self):
        # A bare LF ends a line for some proxies (RFC 9112 §2.2), so accepting it
        # inside a token lets two parsers disagree about where a field starts.
        self.assertRejected(b"GET\n / HTTP/1.1\r\nHost: x\r\n\r\n", 400)
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length\n: 5\r\n\r\n", 400)
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"5\n\r\nhello\r\n0\r\n\r\n", 400)

    def test_content_length_with_transfer_encoding_is_400(self):
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400)
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                            b"Content-Length: 0\r\n\r\n0\r\n\r\n", 400)

    def test_conflicting_content_length_is_400(self):
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                            b"Content-Length: 6\r\n\r\nhello!", 400)

    def test_non_numeric_content_length_is_400(self):
        for value in (b"abc", b"-1", b"+5", b"1e3", b"5 5", b"0x10", b"5,5", b"", b"1" * 19):
            with self.subTest(value=value):
                self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + value
                                    + b"\r\n\r\n", 400)

    def test_non_ascii_digits_in_content_length_are_400_not_a_crash(self):
        # Latin-1 superscripts pass str.isdigit() but int() refuses them.
        for value in (b"\xb2", b"1\xb3", b"\xb9"):
            with self.subTest(value=value):
                self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + value
                                    + b"\r\n\r\n", 400)

    def test_malformed_absolute_form_authority_is_400_not_a_crash(self):
        for target in (b"http://[::1/x", b"http://example.co[m/a", b"https://]/"):
            with self.subTest(target=target):
                self.assertRejected(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400)

    def test_transfer_coding_other_than_chunked_is_501(self):
        for coding in (b"gzip", b"gzip, chunked", b"chunked, chunked", b"identity"):
            with self.subTest(coding=coding):
                self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding
                                    + b"\r\n\r\n", 501)

    def test_bad_chunk_size_is_400(self):
        for line in (b"zz", b"", b"-1", b"0x5", b"1" * 17, b" 5", b"g"):
            with self.subTest(line=line):
                self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    + line + b"\r\nhello\r\n0\r\n\r\n", 400)

    def test_chunk_line_without_end_is_400_past_its_limit(self):
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;"
                            + b"e" * (campfire.MAX_CHUNK_LINE_BYTES + 1), 400)

    def test_chunk_not_followed_by_crlf_is_400(self):
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"5\r\nhelloXX0\r\n\r\n", 400)
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"5\r\nhello\n0\r\n\r\n", 400)

    def test_trailers_over_the_header_limit_are_431(self):
        trailers = b"".join(b"X-T%d: %s\r\n" % (index, b"t" * 1000) for index in range(70))
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"0\r\n" + trailers + b"\r\n", 431)

    def test_expect_other_than_100_continue_is_417(self):
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n"
                            b"Content-Length: 1\r\n\r\nx", 417)
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n", 417)

    def test_header_limit_does_not_depend_on_how_bytes_arrive(self):
        # A 7 KiB request line and 60 KiB of fields are each inside their limit;
        # the answer must not change with the TCP segment sizes.
        request_line = b"GET /" + b"a" * 7000 + b" HTTP/1.1\r\n"
        fields = b"Host: x\r\n" + b"".join(b"X-%d: %s\r\n" % (index, b"v" * 1000) for index in range(60))
        self.parse(request_line + fields + b"\r\n")

    def test_head_scan_is_linear_when_bytes_arrive_one_at_a_time(self):
        # A client dribbling a 60 KiB head in 1-byte segments must not cost the
        # event loop quadratic time (each byte rescanning the whole buffer): ten
        # times the bytes take about ten times as long, a rescan a hundred times.
        # Ratios of the best of a few runs of this thread's CPU time (a busy machine
        # delays a run but adds no CPU time to it).
        def dribble(fields):
            data = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
                b"X-%d: %s\r\n" % (index, b"v" * 1000) for index in range(fields)) + b"\r\n"
            parser = campfire.HttpParser()
            started = time.thread_time()
            for index in range(len(data)):
                parser.receive_data(data[index:index + 1])
                request = parser.next_request()
            elapsed = time.thread_time() - started
            self.assertIsNotNone(request)
            return elapsed
        small = min(dribble(6) for _ in range(5))
        large = min(dribble(60) for _ in range(3))
        self.assertLess(large / small, 40, "60 KiB took %.0f times as long as 6 KiB" % (large / small))


# Seeded garbage -------------------------------------------------------------

FUZZ_SEED = 20240917
FUZZ_INPUTS = 20_000
FUZZ_ALLOWED_STATUSES = {400, 413, 414, 417, 431, 501, 505}
FUZZ_BODY_LIMIT = 4096

FUZZ_VALID = (
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET /rooms/1?since=4 HTTP/1.1\r\nHost: x\r\nAccept: a\r\naccept: b\r\nCookie: s=1\r\n\r\n",
    b"POST /session HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 27\r\n\r\nemail_address=a&password=bb",
    b"POST /rooms/1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"HEAD /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET http://example.com/a?b=c HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
)

FUZZ_TOKENS = (b"GET", b"POST", b"HEAD", b" ", b"/", b"\r\n", b"\r\n\r\n", b"\n", b"\r", b":", b": ",
               b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"Host: x", b"Content-Length", b"Transfer-Encoding",
               b"chunked", b"Expect", b"100-continue", b"0", b"5", b"ff", b"99999999999999999999", b";",
               b"\t", b"\x00", b"\xff", b"\xb2", b"Connection: close", b"a" * 40, b"%2e%2e", b"*")


def fuzz_inputs(rng):
    """Yield (data, pieces, expected_requests or None) forever."""
    while True:
        kind = rng.random()
        if kind < 0.2:  # pure random bytes
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 400)))
            expected = None
        elif kind < 0.35:  # random HTTP-ish tokens, to get past the request line
            data = b"".join(rng.choice(FUZZ_TOKENS) for _ in range(rng.randrange(1, 60)))
            expected = None
        elif kind < 0.45:  # a valid request with one field value replaced by random bytes
            lines = rng.choice(FUZZ_VALID).split(b"\r\n")
            fields = [index for index, line in enumerate(lines) if b": " in line]
            if fields:
                index = rng.choice(fields)
                value = bytes(rng.choice(b"0123456789abcdef ,;\t\x00\x7f\x80\xb2\xb9\xff")
                              for _ in range(rng.randrange(0, 6)))
                lines[index] = lines[index].split(b": ")[0] + b": " + value
            data = b"\r\n".join(lines)
            expected = None
        elif kind < 0.85:  # a mutated valid request
            data = bytearray(rng.choice(FUZZ_VALID))
            for _ in range(rng.randrange(1, 5)):
                operation = rng.randrange(5)
                position = rng.randrange(len(data) + 1)
                if operation == 0 and data:  # flip bits
                    position = min(position, len(data) - 1)
                    data[position] ^= 1 << rng.randrange(8)
                elif operation == 1:  # insert random bytes
                    data[position:position] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 4)))
                elif operation == 2 and data:  # delete bytes
                    del data[position:position + rng.randrange(1, 4)]
                elif operation == 3:  # splice another request in
                    other = rng.choice(FUZZ_VALID)
                    cut = rng.randrange(len(other) + 1)
                    data[position:] = other[cut:]
                else:  # replace a byte with an interesting one
                    if data:
                        data[min(position, len(data) - 1)] = rng.choice(b"\r\n :;\t\x00\x7f\xb2\xff0-")
            data = bytes(data)
            expected = None
        else:  # valid requests, pipelined, split at random points
            chosen = [rng.choice(FUZZ_VALID) for _ in range(rng.randrange(1, 4))]
            data = b"".join(chosen)
            expected = len(chosen)
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(0, 5)))
        pieces = [data[start:end] for start, end in zip([0] + cuts, cuts + [len(data)])]
        yield data, pieces, expected


class ParserFuzzTest(unittest.TestCase):
    def test_seeded_garbage_raises_only_documented_http_errors(self):
        rng = random.Random(FUZZ_SEED)
        failures, ran, errors_seen = [], 0, set()
        limit = lambda method, path: FUZZ_BODY_LIMIT  # noqa: E731
        for data, pieces, expected in fuzz_inputs(rng):
            if ran == FUZZ_INPUTS:
                break
            ran += 1
            parser = campfire.HttpParser(limit)
            requests = 0
            try:
                for piece in pieces:
                    parser.receive_data(piece)
                    while parser.next_request() is not None:
                        requests += 1
                    parser.wants_continue()
            except campfire.HttpError as error:
                errors_seen.add(error.status)
                if error.status not in FUZZ_ALLOWED_STATUSES:
                    failures.append((data, "HttpError %d" % error.status))
                elif expected is not None:
                    failures.append((data, "valid input refused with %d" % error.status))
            except Exception as error:  # anything else is a crash of the server's reader
                failures.append((data, repr(error)))
            else:
                if expected is not None and requests != expected:
                    failures.append((data, "%d of %d valid requests parsed" % (requests, expected)))
        self.assertEqual(ran, FUZZ_INPUTS)
        if failures:
            self.fail("%d of %d inputs failed; the first ones:\n%s" % (
                len(failures), ran, "\n".join("%r -> %s" % item for item in failures[:5])))
        self.assertTrue({400, 505}.issubset(errors_seen), errors_seen)  # the garbage reached the checks


# Other pieces of section 4 ------------------------------------------------------

class SerializeResponseTest(unittest.TestCase):
    DATE = "Sun, 06 Nov 1994 08:49:37 GMT"

    def test_fixed_vector(self):
        data = campfire.serialize_response(200, [("Content-Type", "text/plain")], b"hello",
                                           keep_alive=True, date=self.DATE)
        self.assertEqual(data, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                               b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 5\r\n\r\nhello")

    def test_date_and_content_length_are_present(self):
        data = campfire.serialize_response(404, [], b"missing!", keep_alive=True)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.assertEqual(lines[0], "HTTP/1.1 404 Not Found")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        self.assertEqual(headers["Content-Length"], "8")
        date = email.utils.parsedate_to_datetime(headers["Date"])
        self.assertLess(abs(date.timestamp() - time.time()), 5)
        self.assertTrue(headers["Date"].endswith(" GMT"))
        self.assertNotIn("Connection", headers)
        self.assertEqual(body, b"missing!")

    def test_head_has_the_get_content_length_and_no_body(self):
        data = campfire.serialize_response(200, [], b"0123456789", keep_alive=True, head_only=True,
                                           date=self.DATE)
        self.assertTrue(data.endswith(b"Content-Length: 10\r\n\r\n"), data)

    def test_204_and_304_have_no_content_length_and_no_body(self):
        for status in (204, 304):
            with self.subTest(status=status):
                data = campfire.serialize_response(status, [("ETag", '"x"')], b"ignored", keep_alive=True,
                                                   date=self.DATE)
                self.assertNotIn(b"Content-Length", data)
                self.assertTrue(data.endswith(b"\r\n\r\n"))
                self.assertNotIn(b"ignored", data)

    def test_connection_close_when_not_kept_alive(self):
        data = campfire.serialize_response(200, [], b"", keep_alive=False, date=self.DATE)
        self.assertIn(b"\r\nConnection: close\r\n", data)
        self.assertIn(b"\r\nContent-Length: 0\r\n", data)


class EtagTest(unittest.TestCase):
    """If-None-Match as RFC 9110 §13.1.2 reads it: a list, "*", and the weak comparison."""

    def test_the_tag_itself_matches_and_others_do_not(self):
        self.assertTrue(campfire.etag_matches('"abc"', '"abc"'))
        self.assertFalse(campfire.etag_matches('"abd"', '"abc"'))
        self.assertFalse(campfire.etag_matches(None, '"abc"'))
        self.assertFalse(campfire.etag_matches("", '"abc"'))
        self.assertFalse(campfire.etag_matches('abc', '"abc"'))  # not quoted: not this entity-tag

    def test_a_list_matches_when_any_of_its_tags_does(self):
        self.assertTrue(campfire.etag_matches('"x", "abc" ,"y"', '"abc"'))
        self.assertFalse(campfire.etag_matches('"x", "y"', '"abc"'))

    def test_weak_comparison_ignores_w_on_either_side(self):
        self.assertTrue(campfire.etag_matches('W/"abc"', '"abc"'))
        self.assertTrue(campfire.etag_matches('"abc"', 'W/"abc"'))
        self.assertTrue(campfire.etag_matches('"x", W/"abc"', '"abc"'))

    def test_a_star_matches_any_tag(self):
        self.assertTrue(campfire.etag_matches("*", '"abc"'))


class EscapeTest(unittest.TestCase):
    def test_pages_escape_the_five_characters_as_html_escape_does(self):
        import html
        text = "<a href=\"x\">Tom & Jerry's\xa0café</a>"
        self.assertEqual(campfire.escape_html(text), html.escape(text, quote=True))
        self.assertEqual(campfire.escape(text), html.escape(text, quote=True))
        self.assertEqual(campfire.escape(campfire.HTML("<b>")), "<b>")  # already HTML: kept as it is

    def test_stored_bodies_keep_apostrophes_and_write_no_break_spaces_as_trix_does(self):
        self.assertEqual(campfire.escape_html("Tom & Jerry's\xa0<café> \"", trix=True),
                         "Tom &amp; Jerry's&nbsp;&lt;café&gt; &quot;")


class FormAndCookieTest(unittest.TestCase):
    def test_parse_cookies_first_wins_and_values_are_unquoted(self):
        self.assertEqual(campfire.parse_cookies('a=1; b="x%20y"; a=2; junk; =v; c='),
                         {"a": "1", "b": "x y", "c": ""})
        self.assertEqual(campfire.parse_cookies(""), {})

    def test_form_data_keeps_bracket_names_and_order(self):
        form = campfire.FormData([("user[name]", " Ada "), ("ids[]", "1"), ("ids[]", "2")])
        self.assertEqual(form.get("user[name]"), " Ada ")
        self.assertEqual(form.text("user[name]"), "Ada")
        self.assertEqual(form.getlist("ids[]"), ["1", "2"])
        self.assertIn("ids[]", form)
        self.assertEqual(form.text("missing"), "")
        with self.assertRaises(campfire.Unprocessable):
            form.text("user[name]", limit=2)

    def test_urlencoded_forms_read_as_the_standard_library_reads_them(self):
        # parse_urlencoded is the fast path for every form and query string;
        # urllib.parse.parse_qsl (keep_blank_values) is the reference.
        rng = random.Random(20261125)
        pieces = ["a", "b", "=", "&", "+", "%", "%2", "%41", "%zz", "%C3%A9", "%E2%82", "%FF", " ", "[", "]",
                  "é", ";", "%26", "%3D", "%2B", "user[name]", "ids%5B%5D", ""]
        for _ in range(5000):
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
            with self.subTest(text=text):
                self.assertEqual(campfire.parse_urlencoded(text.encode("utf-8")),
                                 urllib.parse.parse_qsl(text, keep_blank_values=True))

    def request(self, target, body=b"", content_type=None, method="POST"):
        headers = {"host": "x"}
        if content_type:
            headers["content-type"] = content_type
        return campfire.Request(method, target, "HTTP/1.1", headers, body)

    def test_params_merge_the_query_string_and_the_body_as_rails_does(self):
        # Rails: request_parameters.merge(query_parameters), by top-level name.
        request = self.request("/x?involvement=everything&user[name]=Query&ids[]=3",
                               b"_method=put&user[email_address]=b%40x&ids[]=1&ids[]=2&b=2",
                               "application/x-www-form-urlencoded")
        params = request.params
        self.assertEqual(params.get("involvement"), "everything")
        self.assertEqual(params.get("_method"), "put")
        self.assertEqual(params.get("b"), "2")
        self.assertEqual(params.get("user[name]"), "Query")
        self.assertNotIn("user[email_address]", params)  # the query's user replaces the body's whole user
        self.assertEqual(params.getlist("ids[]"), ["3"])
        self.assertEqual(self.request("/x?q=hi", method="GET").params.get("q"), "hi")
        self.assertEqual(self.request("/x", b"q=body", "application/x-www-form-urlencoded").params.get("q"), "body")
        multipart = (b'--B\r\nContent-Disposition: form-data; name="room[name]"\r\n\r\nPlans\r\n--B--\r\n')
        request = self.request("/x?user_ids[]=4", multipart, "multipart/form-data; boundary=B")
        self.assertEqual((request.params.get("room[name]"), request.params.getlist("user_ids[]")), ("Plans", ["4"]))

    def test_json_bodies_are_params_with_rails_nesting_as_bracket_names(self):
        body = json.dumps({"message": {"body": "<b>hi</b>", "client_message_id": 7}, "user_ids": [1, "2"],
                           "account": {"settings": {"restrict_room_creation_to_administrators": True}},
                           "nothing": None, "rows": [{"a": 1}, [2.5]]}).encode()
        params = self.request("/x?extra=1", body, "application/json; charset=utf-8").params
        self.assertEqual(params.items(), [
            ("message[body]", "<b>hi</b>"), ("message[client_message_id]", "7"), ("user_ids[]", "1"),
            ("user_ids[]", "2"), ("account[settings][restrict_room_creation_to_administrators]", "true"),
            ("nothing", ""), ("rows[][a]", "1"), ("rows[][]", "2.5"), ("extra", "1")])
        self.assertEqual(self.request("/x", b'["a", {"b": false}]', "application/json").params.items(),
                         [("_json[]", "a"), ("_json[][b]", "false")])  # Rails' _json for a body that isn't an object
        self.assertEqual(self.request("/x", b"", "application/json").params.items(), [])

    def test_json_params_rebuild_the_object_they_came_from(self):
        # An independent reading: nest the bracket names back the way Rack's
        # normalize_params does for name[key] and name[] and compare.
        def nest(pairs):
            root = {}
            for name, value in pairs:
                keys = re.findall(r"\[([^\]]*)\]", name)
                keys.insert(0, name.split("[", 1)[0])
                node = root
                for key, following in zip(keys, keys[1:] + [None]):
                    if following is None:
                        if key == "":
                            node.append(value)
                        else:
                            node[key] = value
                    elif following == "":
                        node = node.setdefault(key, [])
                    else:
                        node = node.setdefault(key, {})
            return root

        def text(value):
            return {dict: lambda v: {k: text(i) for k, i in v.items()}, list: lambda v: [text(i) for i in v],
                    bool: lambda v: "true" if v else "false", type(None): lambda v: ""}.get(type(value), str)(value)
        rng = random.Random(20260314)

        def random_value(depth):
            kind = rng.choice(["dict", "list", "str", "int", "bool", "none"] if depth < 4 else ["str", "int"])
            if kind == "dict":
                return {"k%d" % n: random_value(depth + 1) for n in range(rng.randint(1, 3))}
            if kind == "list":  # lists of scalars: Rack's name[] holds values
                return [rng.choice(["x", "é ☕", 3, True]) for _ in range(rng.randint(1, 3))]
            return {"str": lambda: rng.choice(["", "a b", "ü&=", "[x]"]), "int": lambda: rng.randint(-9, 99),
                    "bool": lambda: rng.random() < 0.5, "none": lambda: None}[kind]()
        for _ in range(300):
            value = {"top%d" % n: random_value(0) for n in range(rng.randint(1, 4))}
            with self.subTest(value=value):
                self.assertEqual(nest(campfire._json_params(value)), text(value))

    def test_json_bodies_are_bounded_like_forms(self):
        deep = b'{"a":' * (campfire.MAX_PARAMS_DEPTH + 1) + b"1" + b"}" * (campfire.MAX_PARAMS_DEPTH + 1)
        fine = b'{"a":' * campfire.MAX_PARAMS_DEPTH + b"1" + b"}" * campfire.MAX_PARAMS_DEPTH
        many = json.dumps({"ids": list(range(campfire.MAX_FORM_FIELDS + 1))}).encode()
        for body in (deep, many, b"[" * 100_000, b'{"a": ', b'{"a": "\xff"}', b"{'a': 1}"):
            with self.subTest(body=body[:30]):
                with self.assertRaises(campfire.BadRequest):
                    self.request("/x", body, "application/json").params
        self.assertEqual(len(self.request("/x", fine, "application/json").params.items()), 1)

    def test_too_many_fields_are_400_in_a_form_and_a_query(self):
        many = "&".join("f%d=1" % n for n in range(campfire.MAX_FORM_FIELDS + 1))
        request = campfire.Request("POST", "/x?" + many, "HTTP/1.1", {"host": "x"}, many.encode())
        with self.assertRaises(campfire.BadRequest):
            request.form
        with self.assertRaises(campfire.BadRequest):
            request.query
        fine = campfire.Request("GET", "/x?a=1&a=2&b", "HTTP/1.1", {"host": "x"})
        self.assertEqual(fine.query.getlist("a"), ["1", "2"])
        self.assertEqual(fine.query.get("b"), "")

    def test_parsed_cookies_are_kept_read_only_and_bounded(self):
        header = "session_token=abc; last_room=7"
        first = campfire.parse_cookies(header)
        self.assertIs(campfire.parse_cookies(header), first)
        with self.assertRaises(TypeError):
            first["session_token"] = "forged"  # shared between requests, so nobody may change it
        for n in range(campfire.COOKIE_HEADERS_KEPT + 10):
            campfire.parse_cookies("n=%d" % n)
        self.assertLessEqual(campfire._parse_cookies_kept.cache_info().currsize, campfire.COOKIE_HEADERS_KEPT)
        long_header = "x=" + "y" * campfire.MEMO_KEY_MAX_CHARS
        self.assertEqual(campfire.parse_cookies(long_header)["x"], "y" * campfire.MEMO_KEY_MAX_CHARS)
        self.assertIsNot(campfire.parse_cookies(long_header), campfire.parse_cookies(long_header))  # not kept

    def test_router_remembers_matches_without_changing_them(self):
        router = campfire.Router(campfire.ROUTES)
        first = router.match("GET", "/rooms/12/messages")
        self.assertEqual(first[1], {"room_id": 12})
        self.assertIs(router.match("GET", "/rooms/12/messages"), first)
        self.assertEqual(router.match("GET", "/rooms/13/messages")[1], {"room_id": 13})
        self.assertIsNone(router.match("GET", "/rooms/x/messages"))
        self.assertIsNone(router.match("GET", "/rooms/x/messages"))
        for n in range(campfire.ROUTES_KEPT + 10):
            router.match("GET", "/users/%d" % n)
        self.assertLessEqual(len(router._matched), campfire.ROUTES_KEPT)
        self.assertEqual(router.match("GET", "/rooms/12/messages")[1], {"room_id": 12})

    def test_invalid_utf8_form_is_400(self):
        request = campfire.Request("POST", "/x", "HTTP/1.1", {"host": "x"}, b"a=%ff\xff")
        with self.assertRaises(campfire.BadRequest):
            request.form

    def multipart(self, *parts, boundary="XyZ"):
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
        return body + b"--" + boundary.encode() + b"--\r\n"

    def test_multipart_fields_and_files(self):
        body = self.multipart(
            b'Content-Disposition: form-data; name="message[body]"\r\n\r\nhello\r\nworld',
            b'Content-Disposition: form-data; name="attachment"; filename="cat.png"\r\n'
            b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x00")
        fields, files = campfire.parse_multipart(body, 'multipart/form-data; boundary="XyZ"')
        self.assertEqual(fields, [("message[body]", "hello\r\nworld")])
        self.assertEqual(files["attachment"], campfire.UploadedFile("cat.png", "image/png", b"\x89PNG\r\n\x00"))

    def test_a_multipart_part_without_a_name_is_400(self):
        body = self.multipart(b"Content-Disposition: form-data\r\n\r\nno name")  # RFC 7578 §4.2: name is a MUST
        with self.assertRaises(campfire.BadRequest):
            campfire.parse_multipart(body, "multipart/form-data; boundary=XyZ")

    def test_multipart_quoted_filename_may_hold_a_semicolon(self):
        body = self.multipart(b'Content-Disposition: form-data; name="f"; filename="notes; final.txt"\r\n'
                              b"\r\ndata")
        _, files = campfire.parse_multipart(body, "multipart/form-data; boundary=XyZ")
        self.assertEqual(files["f"].filename, "notes; final.txt")

    def test_multipart_without_boundary_or_end_is_400(self):
        with self.assertRaises(campfire.BadRequest):
            campfire.parse_multipart(b"", "multipart/form-data")
        with self.assertRaises(campfire.BadRequest):
            campfire.parse_multipart(b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n',
                                     "multipart/form-data; boundary=B")
        with self.assertRaises(campfire.BadRequest):
            campfire.parse_multipart(b"--B\r\nno blank line\r\n--B--\r\n", "multipart/form-data; boundary=B")


# The application, in-process -------------------------------------------------------
# Extra routes for these tests only, added to a copy of the app's router.

TEXT = "text/plain; charset=utf-8"
LARGE_PAGE = "<!DOCTYPE html><p>" + "The campfire crackles. " * 100 + "</p>"


def _test_post(app, request):
    return campfire.Response("POST handled", content_type=TEXT)


def _test_patch(app, request):
    return campfire.Response("PATCH handled", content_type=TEXT)


def _test_put(app, request):
    return campfire.Response("PUT handled", content_type=TEXT)


def _test_delete(app, request):
    return campfire.Response("DELETE handled", content_type=TEXT)


def _test_boom(app, request):
    raise RuntimeError("kaboom: password=hunter2")


def _test_large(app, request):
    return campfire.Response(LARGE_PAGE)


def _test_small(app, request):
    return campfire.Response("<p>short</p>")


TEST_ROUTES = campfire.build_routes((
    ("POST", "/test/method", "test_method", _test_post, "public"),
    ("PATCH", "/test/method", "test_method", _test_patch, "public"),
    ("PUT", "/test/method", "test_method", _test_put, "public"),
    ("DELETE", "/test/method", "test_method", _test_delete, "public"),
    ("GET", "/test/boom", "test_boom", _test_boom, "public"),
    ("GET", "/test/large", "test_large", _test_large, "public"),
    ("GET", "/test/small", "test_small", _test_small, "public"),
))


def raw_request(app, method, target, headers=None, body=b""):
    """App.handle with exactly these headers (Client adds Sec-Fetch-Site itself)."""
    headers = {key.lower(): value for key, value in (headers or {}).items()}
    headers.setdefault("host", "localhost")
    request = campfire.Request(method, target, "HTTP/1.1", headers, body)
    return app.handle(request)


class AppHttpTestCase(AppTestCase):
    def setUp(self):
        super().setUp()
        self.app.router = campfire.Router(campfire.ROUTES + TEST_ROUTES)


class RouteTableTest(unittest.TestCase):
    """The route table: checked when built, the source of every URL."""

    def test_a_second_route_for_the_same_method_and_pattern_is_refused(self):
        with self.assertRaisesRegex(ValueError, "two routes for GET /x"):
            campfire.build_routes((("GET", "/x", "x", _test_small), ("GET POST", "/x", "x", _test_small)))
        with self.assertRaisesRegex(ValueError, "two routes"):
            campfire.Router(campfire.ROUTES + campfire.build_routes((("GET", "/rooms/<int:room_id>", "other",
                                                                       _test_small),)))

    def test_a_name_given_to_two_patterns_is_refused(self):
        with self.assertRaisesRegex(ValueError, "'x' is given to /x and /y"):
            campfire.build_routes((("GET", "/x", "x", _test_small), ("GET", "/y", "x", _test_small)))
        # one name for one pattern under several methods is the usual case
        self.assertEqual(len(campfire.build_routes((("GET", "/x", "x", _test_small),
                                                    ("PATCH PUT", "/x", "x", _test_post)))), 3)

    def test_url_for_fills_parameters_quotes_text_and_adds_a_query(self):
        url_for = campfire.url_for
        self.assertEqual(url_for("room", room_id=7), "/rooms/7")
        self.assertEqual(url_for("room_at_message", room_id=7, message_id=42), "/rooms/7/@42")
        self.assertEqual(url_for("join", join_code="AbCd-1234 /?"), "/join/AbCd-1234%20%2F%3F")
        self.assertEqual(url_for("static", path="a b/app.js", v="3f"), "/static/a%20b/app.js?v=3f")
        self.assertEqual(url_for("searches", q="tom & jerry"), "/searches?q=tom+%26+jerry")
        self.assertEqual(url_for("root"), "/")
        with self.assertRaises(KeyError):
            url_for("no_such_route")
        with self.assertRaises(KeyError):
            url_for("room")  # room_id is missing

    def test_every_named_route_builds_a_path_the_router_matches_back(self):
        router = campfire.Router(campfire.ROUTES)
        samples = {"int": 12, None: "abc", "path": "app.js", "secret": "AbCd-1234"}
        for route in campfire.ROUTES:
            if route.name is None:
                continue
            params = {name: samples[kind] for kind, name in campfire._PARAM_RE.findall(route.pattern)
                      for kind in [kind or None]}
            with self.subTest(name=route.name, method=route.method):
                path = campfire.url_for(route.name, **params)
                found = router.match(route.method, path)
                self.assertIsNotNone(found, path)
                self.assertIs(found[0].handler, route.handler)
                self.assertEqual(found[1], params)

    def test_allowed_methods_lists_head_with_get_in_a_fixed_order(self):
        router = campfire.Router(campfire.ROUTES)
        self.assertEqual(router.allowed_methods("/rooms/3/messages/4"), ["GET", "HEAD", "PUT", "PATCH", "DELETE"])
        self.assertEqual(router.allowed_methods("/session"), ["POST", "DELETE"])
        self.assertEqual(router.allowed_methods("/nowhere"), [])


class MethodNotAllowedRoutesTest(AppHttpTestCase):
    def test_a_known_path_with_another_method_is_405_with_allow(self):
        self.first_run()
        response = self.client.request("PUT", "/searches")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.header("Allow"), "GET, HEAD, POST")
        response = self.client.request("POST", "/rooms/1/refresh")
        self.assertEqual((response.status, response.header("Allow")), (405, "GET, HEAD"))
        self.assertEqual(self.client.request("GET", "/session").header("Allow"), "POST, DELETE")

    def test_a_form_method_override_to_a_method_the_path_lacks_is_405(self):
        self.first_run()
        response = self.client.post("/searches/clear", {"_method": "patch"})
        self.assertEqual((response.status, response.header("Allow")), (405, "DELETE"))
        response = self.client.post("/test/boom", {"_method": "delete"})
        self.assertEqual((response.status, response.header("Allow")), (405, "GET, HEAD"))

    def test_head_follows_get_and_an_unknown_path_is_still_404(self):
        self.assertEqual(self.client.request("HEAD", "/test/small").status, 200)
        self.assertEqual(self.client.request("HEAD", "/test/method").status, 405)
        self.assertEqual(self.client.request("DELETE", "/nowhere/at/all").status, 404)
        self.assertIsNone(self.client.request("DELETE", "/nowhere/at/all").header("Allow"))


class MethodOverrideTest(AppHttpTestCase):
    def test_form_method_override_to_delete_patch_and_put(self):
        for value, expected in (("delete", "DELETE handled"), ("patch", "PATCH handled"),
                                ("put", "PUT handled"), ("PATCH", "PATCH handled")):
            with self.subTest(_method=value):
                response = self.client.post("/test/method", {"_method": value, "x": "1"})
                self.assertEqual((response.status, response.text), (200, expected))

    def test_multipart_form_can_override_too(self):
        body = (b'--B\r\nContent-Disposition: form-data; name="_method"\r\n\r\nput\r\n--B--\r\n')
        response = self.client.post("/test/method", body=body, content_type="multipart/form-data; boundary=B")
        self.assertEqual(response.text, "PUT handled")

    def test_override_cannot_turn_post_into_get_or_unknown_methods(self):
        for value in ("get", "head", "options", "trace", ""):
            with self.subTest(_method=value):
                self.assertEqual(self.client.post("/test/method", {"_method": value}).text, "POST handled")

    def test_override_only_from_form_bodies(self):
        response = self.client.post("/test/method", body=b'{"_method": "delete"}',
                                    content_type="application/json")
        self.assertEqual(response.text, "POST handled")
        response = self.client.post("/test/method?_method=delete", form={})
        self.assertEqual(response.text, "POST handled")

    def test_sign_out_form_posts_delete_session(self):
        self.first_run()
        self.assertIn(campfire.SESSION_COOKIE, self.client.cookies)
        response = self.client.post("/session", {"_method": "delete"})
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("Location"), "/session/new")
        self.assertNotIn(campfire.SESSION_COOKIE, self.client.cookies)


class ForgeryProtectionTest(AppHttpTestCase):
    def test_cross_site_fetch_metadata_on_unsafe_request_is_403(self):
        for site in ("cross-site", "same-site", "none"):
            with self.subTest(site=site):
                response = raw_request(self.app, "PUT", "/test/method", {"Sec-Fetch-Site": site})
                self.assertEqual(response.status, 403)
                self.assertNotIn("PUT handled", response.text)

    def test_cross_site_method_override_is_403(self):
        body = b"_method=delete"
        response = raw_request(self.app, "POST", "/test/method", {
            "Sec-Fetch-Site": "cross-site", "Content-Type": "application/x-www-form-urlencoded",
            "Content-Length": str(len(body))}, body)
        self.assertEqual(response.status, 403)

    def test_foreign_origin_on_unsafe_request_is_403(self):
        for origin in ("http://evil.example", "https://localhost", "http://localhost:3001", "null"):
            with self.subTest(origin=origin):
                self.assertEqual(raw_request(self.app, "POST", "/test/method", {"Origin": origin}).status, 403)
                self.assertEqual(raw_request(self.app, "POST", "/test/method", {
                    "Origin": origin, "Sec-Fetch-Site": "same-origin"}).status, 403)

    def test_same_origin_or_no_metadata_is_allowed(self):
        for headers in ({"Sec-Fetch-Site": "same-origin"}, {}, {"Origin": "http://localhost"},
                        {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}):
            with self.subTest(headers=headers):
                response = raw_request(self.app, "DELETE", "/test/method", headers)
                self.assertEqual((response.status, response.text), (200, "DELETE handled"))

    def test_safe_requests_are_not_checked(self):
        response = raw_request(self.app, "GET", "/test/small", {"Sec-Fetch-Site": "cross-site",
                                                                 "Origin": "http://evil.example"})
        self.assertEqual(response.status, 200)

    def test_real_sign_in_form_refuses_cross_site_posts(self):
        response = self.client.post("/session", {"email_address": "a@b.c", "password": "x"},
                                    headers={"Sec-Fetch-Site": "cross-site"})
        self.assertEqual(response.status, 403)
        self.assertIn("text/html", response.header("Content-Type"))


class MethodNotAllowedTest(AppHttpTestCase):
    """RFC 9110 §15.5.6: a path that exists, asked with a method it doesn't answer,
    is 405 with Allow naming the methods it does answer."""

    def assert_405(self, response, allow):
        self.assertEqual(response.status, 405, response.text[:300])
        self.assertEqual(response.header("Allow"), allow)
        self.assertIn("<!DOCTYPE html>", response.text)

    def test_wrong_method_on_a_known_path_is_405_with_allow(self):
        self.assert_405(self.client.request("PUT", "/session"), "POST, DELETE")
        self.assert_405(self.client.request("PUT", "/up"), "GET, HEAD")
        self.assert_405(self.client.request("DELETE", "/rooms/1/involvement"), "GET, HEAD, PUT, PATCH")
        self.assert_405(self.client.request("PATCH", "/test/small"), "GET, HEAD")

    def test_a_method_override_the_path_does_not_answer_is_405_too(self):
        self.assert_405(self.client.post("/up", {"_method": "delete"}), "GET, HEAD")
        self.assert_405(self.client.post("/session", {"_method": "patch"}), "POST, DELETE")
        # A POST the path only answers through _method names what it answers.
        self.assert_405(self.client.post("/rooms/1/involvement", {"involvement": "nothing"}),
                        "GET, HEAD, PUT, PATCH")

    def test_pattern_paths_list_every_method_of_their_routes(self):
        self.assert_405(self.client.request("PUT", "/rooms/5/messages"), "GET, HEAD, POST")
        self.assert_405(self.client.request("POST", "/rooms/5/messages/7"), "GET, HEAD, PUT, PATCH, DELETE")
        self.assert_405(self.client.request("PUT", "/rooms/5/2-AbCd1234EfGh/messages"), "GET, HEAD, POST")

    def test_paths_no_route_answers_stay_404(self):
        for method, path in (("PUT", "/no/such/page"), ("GET", "/rooms/x/messages"), ("POST", "/rooms/5/nothing")):
            with self.subTest(method=method, path=path):
                response = self.client.request(method, path)
                self.assertEqual(response.status, 404)
                self.assertIsNone(response.header("Allow"))


class ErrorPageTest(AppHttpTestCase):
    def test_unknown_route_is_a_404_html_page(self):
        response = self.client.get("/no/such/page")
        self.assertEqual(response.status, 404)
        self.assertTrue(response.header("Content-Type").startswith("text/html"))
        self.assertIn("<!DOCTYPE html>", response.text)
        self.assertIn("404", response.text)
        self.assertEqual(self.client.post("/no/such/page", {}).status, 404)

    def test_handler_exception_is_a_500_page_without_details_and_logged_with_request_id(self):
        with self.assertLogs("campfire", level="ERROR") as logs:
            response = self.client.get("/test/boom")
        self.assertEqual(response.status, 500)
        self.assertIn("<!DOCTYPE html>", response.text)
        self.assertNotIn("kaboom", response.text)
        self.assertNotIn("hunter2", response.text)
        self.assertNotIn("Traceback", response.text)
        request_id = response.header("X-Request-Id")
        self.assertTrue(request_id)
        self.assertIn(request_id, response.text)
        logged = "\n".join(logs.output)
        self.assertIn(request_id, logged)
        self.assertIn("Traceback (most recent call last)", logged)
        self.assertIn("RuntimeError: kaboom", logged)

    def test_request_ids_are_unique(self):
        ids = {self.client.get("/test/small").header("X-Request-Id") for _ in range(5)}
        self.assertEqual(len(ids), 5)

    def test_pages_still_answer_500_when_the_database_is_down(self):
        # App.handle "never raises": the error page itself must not need the database.
        self.app.db.connection.close()
        with self.assertLogs("campfire", level="ERROR"):
            try:
                response = self.client.get("/first_run")
            except Exception as error:
                self.fail("App.handle raised %r" % error)
        self.assertIn(response.status, (500, 503))


class GzipTest(AppHttpTestCase):
    def test_large_text_body_is_gzipped_when_accepted(self):
        response = self.client.get("/test/large", headers={"Accept-Encoding": "gzip, deflate, br"})
        self.assertEqual(response.header("Content-Encoding"), "gzip")
        self.assertIn("Accept-Encoding", response.header("Vary"))
        self.assertLess(len(response.body), len(LARGE_PAGE))
        self.assertEqual(gzip.decompress(response.body).decode(), LARGE_PAGE)

    def test_gzip_of_any_size_decodes_and_compresses_as_well_as_the_largest_window(self):
        # Each body repeats its first part at its very end, so the best match lies
        # as far back as the body is long: a window too small for it would miss it.
        for size in (0, 1, 100, 250, 251, 262, 511, 512, 1400, 1786, 1787, 2048, 4000, 40000, 70000):
            head = os.urandom(min(size // 3, 200)).hex().encode()[:size // 3]
            middle = os.urandom(max(0, size - 2 * len(head)))
            body = (head + middle + head)[:size]
            for level in (campfire.GZIP_FRESH_LEVEL, campfire.GZIP_LEVEL):
                with self.subTest(size=size, level=level):
                    compressed = campfire.gzip_bytes(body, level)
                    self.assertEqual(gzip.decompress(compressed), body)
                    largest = zlib.compressobj(level, zlib.DEFLATED, 31)
                    self.assertLessEqual(len(compressed), len(largest.compress(body) + largest.flush()) + 8)

    def test_not_gzipped_when_not_accepted(self):
        for accept in (None, "identity", "br, deflate", "gzip;q=0", "gzip; q=0.0"):
            with self.subTest(accept=accept):
                headers = {"Accept-Encoding": accept} if accept else {}
                response = self.client.get("/test/large", headers=headers)
                self.assertIsNone(response.header("Content-Encoding"))
                self.assertEqual(response.text, LARGE_PAGE)

    def test_small_body_is_not_gzipped(self):
        response = self.client.get("/test/small", headers={"Accept-Encoding": "gzip"})
        self.assertIsNone(response.header("Content-Encoding"))
        self.assertEqual(response.text, "<p>short</p>")

    def test_gzip_head_response_has_the_compressed_length(self):
        request = campfire.Request("HEAD", "/test/large", "HTTP/1.1", {"host": "x", "accept-encoding": "gzip"})
        response = self.app.handle(request)
        data = self.app.serialize(request, response, keep_alive=True)
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertEqual(body, b"")
        self.assertIn(b"\r\nContent-Length: %d\r\n" % len(response.body), head + b"\r\n")
        self.assertGreater(len(response.body), 0)


class SecurityHeadersTest(AppHttpTestCase):
    def test_pages_carry_csp_without_unsafe_inline_script_and_nosniff(self):
        for path in ("/first_run", "/no/such/page", "/test/small"):
            with self.subTest(path=path):
                response = self.client.get(path)
                csp = response.header("Content-Security-Policy")
                directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
                self.assertIn("script-src", directives)
                self.assertNotIn("'unsafe-inline'", directives["script-src"])
                self.assertNotIn("'unsafe-eval'", directives["script-src"])
                self.assertEqual(directives.get("object-src"), ["'none'"])
                self.assertEqual(response.header("X-Content-Type-Options"), "nosniff")
                self.assertEqual(response.header("X-Frame-Options"), "DENY")
                self.assertTrue(response.header("Referrer-Policy"))


class HealthCheckTest(AppHttpTestCase):
    def test_up_is_green(self):
        response = self.client.get("/up")
        self.assertEqual(response.status, 200)
        self.assertIn("background-color: green", response.text)
        self.assertEqual(response.header("Cache-Control"), "no-store")

    def test_up_is_503_when_the_database_fails(self):
        self.app.db.connection.close()
        response = self.client.get("/up")
        self.assertEqual(response.status, 503)
        self.assertIn("background-color: red", response.text)
        self.assertEqual(response.header("Cache-Control"), "no-store", "a failure is not remembered either")

    def test_head_up_serializes_without_body(self):
        request = campfire.Request("HEAD", "/up", "HTTP/1.1", {"host": "x"})
        response = self.app.handle(request)
        data = self.app.serialize(request, response, keep_alive=False)
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertEqual(body, b"")
        self.assertIn(b"Content-Length: %d" % len(response.body), head)
        self.assertIn(b"Connection: close", head)
        self.assertGreater(len(response.body), 0)


# Static files ------------------------------------------------------------------

LARGE_CSS = (":root { --color-bg: #fff; }\n" + ".message { padding: 0.5rem; color: var(--color-bg); }\n" * 60).encode()
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


class StaticFilesTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="campfire-static-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.root = os.path.join(self.tmp, "static")
        os.makedirs(os.path.join(self.root, "sub"))
        files = {"large.css": LARGE_CSS, "small.css": b"body{margin:0}", "app.js": b"export const x = 1;\n",
                 "icon.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>", "pixel.png": PNG,
                 "manifest.json": b'{"name": "Campfire"}', "sub/nested.txt": b"nested",
                 "blob.unknownext": b"?"}
        for name, data in files.items():
            with open(os.path.join(self.root, name), "wb") as file:
                file.write(data)
        # Things outside the root that a traversal would reach.
        for name in ("campfire.py", "secret.txt"):
            with open(os.path.join(self.tmp, name), "w") as file:
                file.write("SECRET")
        os.symlink(os.path.join(self.tmp, "secret.txt"), os.path.join(self.root, "leak.txt"))
        os.symlink(os.path.join(self.root, "small.css"), os.path.join(self.root, "alias.css"))
        config = campfire.Config(storage_path=os.path.join(self.tmp, "storage"), static_root=self.root)
        self.app = campfire.App(config)
        self.addCleanup(self.app.close)
        self.client = Client(self.app)

    def test_mime_types(self):
        for name, expected in (("large.css", "text/css; charset=utf-8"),
                               ("app.js", "text/javascript; charset=utf-8"),
                               ("icon.svg", "image/svg+xml"), ("pixel.png", "image/png"),
                               ("manifest.json", "application/json"), ("sub/nested.txt", "text/plain; charset=utf-8"),
                               ("blob.unknownext", "application/octet-stream")):
            with self.subTest(name=name):
                response = self.client.get("/static/" + name)
                self.assertEqual(response.status, 200)
                self.assertEqual(response.header("Content-Type"), expected)
                self.assertEqual(response.header("X-Content-Type-Options"), "nosniff")

    def test_body_is_the_file(self):
        self.assertEqual(self.client.get("/static/pixel.png").body, PNG)

    def test_etag_and_if_none_match_gives_304(self):
        response = self.client.get("/static/app.js")
        etag = response.header("ETag")
        self.assertRegex(etag, r'^"[0-9a-f]{16}"$')
        for value in (etag, '"other", ' + etag, etag + ', "other"'):
            with self.subTest(if_none_match=value):
                cached = self.client.get("/static/app.js", headers={"If-None-Match": value})
                self.assertEqual(cached.status, 304)
                self.assertEqual(cached.body, b"")
                self.assertEqual(cached.header("ETag"), etag)
                data = self.app.serialize(campfire.Request("GET", "/static/app.js"), cached, True)
                self.assertNotIn(b"Content-Length", data)
        self.assertEqual(self.client.get("/static/app.js", headers={"If-None-Match": '"stale"'}).status, 200)

    def test_versioned_url_is_immutable_and_plain_url_is_no_cache(self):
        digest = self.client.get("/static/app.js").header("ETag").strip('"')
        self.assertEqual(self.app.asset_url("app.js"), "/static/app.js?v=" + digest)
        response = self.client.get("/static/app.js?v=" + digest)
        self.assertEqual(response.header("Cache-Control"), "public, max-age=31536000, immutable")
        for target in ("/static/app.js", "/static/app.js?v=0000000000000000", "/static/app.js?v="):
            with self.subTest(target=target):
                self.assertEqual(self.client.get(target).header("Cache-Control"), "no-cache")

    def test_large_css_is_gzipped_when_accepted(self):
        response = self.client.get("/static/large.css", headers={"Accept-Encoding": "gzip"})
        self.assertEqual(response.header("Content-Encoding"), "gzip")
        self.assertIn("Accept-Encoding", response.header("Vary"))
        self.assertEqual(gzip.decompress(response.body), LARGE_CSS)
        plain = self.client.get("/static/large.css")
        self.assertIsNone(plain.header("Content-Encoding"))
        self.assertEqual(plain.body, LARGE_CSS)
        self.assertEqual(plain.header("ETag"), response.header("ETag"))

    def test_small_files_and_images_are_not_gzipped(self):
        for name in ("small.css", "pixel.png"):
            with self.subTest(name=name):
                response = self.client.get("/static/" + name, headers={"Accept-Encoding": "gzip"})
                self.assertIsNone(response.header("Content-Encoding"))

    def test_changed_file_is_served_fresh_after_the_recheck_interval(self):
        first = self.client.get("/static/app.js")
        with open(os.path.join(self.root, "app.js"), "wb") as file:
            file.write(b"export const x = 22222;\n")
        self.app.static._recent.clear()  # as if STATIC_RECHECK_SECONDS had passed
        second = self.client.get("/static/app.js")
        self.assertEqual(second.body, b"export const x = 22222;\n")
        self.assertNotEqual(first.header("ETag"), second.header("ETag"))

    def test_traversal_attempts_are_404(self):
        for target in ("/static/../campfire.py", "/static/%2e%2e/campfire.py", "/static/..%2fcampfire.py",
                       "/static/%2E%2E%2Fcampfire.py", "/static/sub/../../secret.txt",
                       "/static/sub/%2e%2e/%2e%2e/secret.txt", "/static/a%2fb", "/static/sub%2Fnested.txt",
                       "/static/a%5cb", "/static/sub%5cnested.txt", "/static/..\\secret.txt",
                       "/static/%00", "/static/app.js%00.png", "/static/.", "/static/./app.js",
                       "/static/", "/static//etc/passwd", "/static/%2fetc/passwd", "/static/sub//nested.txt",
                       "/static/" + os.path.join(self.tmp, "secret.txt")):
            with self.subTest(target=target):
                response = self.client.get(target)
                self.assertEqual(response.status, 404)
                self.assertNotIn(b"SECRET", response.body)

    def test_symlink_leading_outside_the_root_is_404(self):
        response = self.client.get("/static/leak.txt")
        self.assertEqual(response.status, 404)
        self.assertNotIn(b"SECRET", response.body)

    def test_symlink_inside_the_root_is_served(self):
        self.assertEqual(self.client.get("/static/alias.css").body, b"body{margin:0}")

    def test_directory_is_404(self):
        for target in ("/static/sub", "/static/sub/"):
            with self.subTest(target=target):
                self.assertEqual(self.client.get(target).status, 404)

    def test_missing_file_is_404(self):
        self.assertEqual(self.client.get("/static/nope.css").status, 404)


if __name__ == "__main__":
    unittest.main()
