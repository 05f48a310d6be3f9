"""Files: multipart/form-data, safe file names, image headers, byte ranges,
Content-Disposition, serving rules, the unfurl address guard and OpenGraph.

Everything hand-written here is checked against the standards' own examples
and against independent implementations, installed for the tests only:
`multipart` and `python-multipart` (and email.parser) read the same random
multipart bodies; the multipart-form-data-conformance suite supplies vectors;
Pillow writes the images whose headers are read; werkzeug parses the same
Range and Content-Disposition headers. No test opens a connection.

    pip install multipart python-multipart multipart-form-data-conformance pillow werkzeug
"""

import ast
import base64
import datetime
import email.message
import email.parser
import email.policy
import email.utils
import hashlib
import io
import ipaddress
import json
import os
import pathlib
import random
import shutil
import struct
import sys
import tempfile
import unicodedata
import unittest
import urllib.parse
import zlib

import multipart as peer_multipart                      # PyPI "multipart"
import multipart_form_data_conformance as conformance   # PyPI "multipart-form-data-conformance"
import python_multipart.multipart as peer_python_multipart  # PyPI "python-multipart"
import werkzeug.http
from PIL import Image, ImageOps

from tests.helpers import campfire as files

FUZZ_SEED = 20261204


def chunkings(data, rng=None, random_ways=3):
    """(how, [pieces]) for `data`: whole, one byte at a time, and in random sizes."""
    rng = rng or random.Random(FUZZ_SEED)
    yield "whole", [data]
    yield "bytewise", [data[index:index + 1] for index in range(len(data))]
    for way in range(random_ways):
        pieces, index = [], 0
        while index < len(data):
            size = rng.choice((1, 2, 3, 7, 64, 1000, rng.randint(1, 5000)))
            pieces.append(data[index:index + size])
            index += size
        yield "random%d" % way, pieces


####
#### multipart/form-data
####

def parse_with_ours(pieces, boundary, **options):
    """[(name, filename, content_type, body)] from our parser fed `pieces`."""
    parser = files.MultipartParser(boundary, **options)
    parts, current = [], None
    for piece in pieces:
        for event in parser.feed(piece):
            if isinstance(event, files.PartStarted):
                current = [event.name, event.filename, event.content_type, bytearray()]
            elif isinstance(event, files.PartData):
                current[3] += event.data
            else:
                parts.append((current[0], current[1], current[2], bytes(current[3])))
                current = None
    parser.finish()
    return parts


def parse_with_multipart(pieces, boundary):
    """The same from PyPI's `multipart` (its sans-I/O PushMultipartParser)."""
    parser = peer_multipart.PushMultipartParser(boundary, strict=True)
    parts, current = [], None
    for piece in list(pieces) + [b""]:
        for event in parser.parse(piece):
            if isinstance(event, peer_multipart.MultipartSegment):
                current = [event.name, event.filename, event.content_type, bytearray()]
            elif event is None:
                parts.append((current[0], current[1], current[2], bytes(current[3])))
            else:
                current[3] += event
    return parts


def parse_with_python_multipart(pieces, boundary):
    """The same from PyPI's `python-multipart` (callbacks; its own header parsing)."""
    parts = []
    state = {"field": bytearray(), "value": bytearray(), "headers": [], "data": bytearray()}

    def on_part_begin():
        state["headers"], state["data"] = [], bytearray()

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"].append((bytes(state["field"]).decode(), bytes(state["value"])))
        state["field"], state["value"] = bytearray(), bytearray()

    def on_part_data(data, start, end):
        state["data"] += data[start:end]

    def on_part_end():
        name = filename = content_type = None
        for field, value in state["headers"]:
            if field.lower() == "content-disposition":
                _, options = peer_python_multipart.parse_options_header(value)
                name = options[b"name"].decode("utf-8") if b"name" in options else None
                filename = options[b"filename"].decode("utf-8") if b"filename" in options else None
            elif field.lower() == "content-type":
                content_type = value.decode("utf-8")
        parts.append((name, filename, content_type, bytes(state["data"])))

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_part_data": on_part_data, "on_part_end": on_part_end}
    parser = peer_python_multipart.MultipartParser(boundary, callbacks)
    for piece in pieces:
        parser.write(piece)
    parser.finalize()
    return parts


def parse_with_email(body, boundary):
    """The same from the standard library's MIME parser, given a synthetic
    Content-Type header (compat32: header bytes come back surrogate-escaped)."""
    head = b'Content-Type: multipart/form-data; boundary="' + boundary + b'"\r\n\r\n'
    message = email.parser.BytesParser().parsebytes(head + body)
    parts = []

    def header(part, wanted):
        for name, value in part.raw_items():
            if name.lower() == wanted:
                return value.encode("ascii", "surrogateescape").decode("utf-8")
        return None

    for part in message.get_payload():
        disposition = email.message.Message()
        disposition["Content-Disposition"] = header(part, "content-disposition")
        name = disposition.get_param("name", header="content-disposition")
        filename = disposition.get_param("filename", header="content-disposition")
        parts.append((name, filename, header(part, "content-type"), part.get_payload(decode=True)))
    return parts


# Characters that random field names, file names and boundaries are made of.
BOUNDARY_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=?"
NAME_CHARS = "abcdefghijklmnopqrstuvwxyz_[]0123456789-éü名字"
FILENAME_CHARS = "abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789-_.,;()[]{}!@#$%&+=~'éüñçøß漢字文档Ωдж🙂"


def random_boundary(rng):
    length = rng.choice((1, 2, 10, 16, 40, 69, 70, rng.randint(1, 70)))
    boundary = "".join(rng.choice(BOUNDARY_CHARS) for _ in range(length))
    return boundary.encode("ascii")


def random_content(rng, boundary):
    """Bytes that tempt a parser (CR, LF, dashes, the boundary's prefixes) but
    never hold "--boundary", which no valid body may carry in a part."""
    pieces = []
    for _ in range(rng.randint(0, 12)):
        pieces.append(rng.choice((
            bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))),
            b"\r\n", b"\r", b"\n", b"--", b"\r\n--", b"\r\n\r\n",
            b"\r\n--" + boundary[:rng.randint(0, len(boundary) - 1)],
            b"-" + boundary, b"\r\n-" + boundary,
            b"x" * rng.randint(0, 5000),
        )))
    content = b"".join(pieces)
    while b"--" + boundary in content:
        content = content.replace(b"--" + boundary, b"-x" + boundary)
    return content


def random_form(rng, boundary, preamble=True):
    """(body bytes, [(name, filename, content_type, content)]) of a random form."""
    parts = []
    body = b""
    if preamble and rng.random() < 0.3:
        body += random_content(rng, boundary).replace(b"--" + boundary, b"") + b"\r\n"
        if b"--" + boundary in body:
            body = b""
    for _ in range(rng.randint(1, 6)):
        name = "".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(1, 12)))
        filename = None
        if rng.random() < 0.5:
            filename = "".join(rng.choice(FILENAME_CHARS) for _ in range(rng.randint(1, 40)))
            while "%22" in filename:  # browsers' way of writing a quote, which we decode: tested alone
                filename = filename.replace("%22", "%2")
        content_type = rng.choice((None, "text/plain", "application/octet-stream", "image/png"))
        content = random_content(rng, boundary)
        disposition = 'form-data; name="%s"' % name
        if filename is not None:
            disposition += '; filename="%s"' % filename
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode("utf-8") + b"\r\n"
        if content_type:
            body += b"Content-Type: " + content_type.encode() + b"\r\n"
        body += b"\r\n" + content + b"\r\n"
        parts.append((name, filename, content_type, content))
    body += b"--" + boundary + b"--\r\n"
    if rng.random() < 0.3:
        body += random_content(rng, boundary)
    return body, parts


class MultipartVectorTest(unittest.TestCase):
    """The standards' own examples and the conformance suite, fed every way."""

    def assertParses(self, body, boundary, expected, **options):
        for how, pieces in chunkings(body):
            with self.subTest(feed=how):
                self.assertEqual(parse_with_ours(pieces, boundary, **options), expected)

    def test_rfc7578_section_4_5_example(self):
        # RFC 7578 §4.5 (completed with a closing delimiter): lower-case header names,
        # a charset parameter, and a Content-Transfer-Encoding that is passed through.
        body = (b"--AaB03x\r\n"
                b'content-disposition: form-data; name="field1"\r\n'
                b"content-type: text/plain;charset=UTF-8\r\n"
                b"content-transfer-encoding: quoted-printable\r\n"
                b"\r\n"
                b"Joe owes =E2=82=AC100.\r\n"
                b"--AaB03x--\r\n")
        self.assertParses(body, b"AaB03x", [("field1", None, "text/plain;charset=UTF-8", b"Joe owes =E2=82=AC100.")])
        parts = files.read_multipart(body, "multipart/form-data; boundary=AaB03x")
        self.assertEqual(parts[0][0].headers, (("content-disposition", 'form-data; name="field1"'),
                                               ("content-type", "text/plain;charset=UTF-8"),
                                               ("content-transfer-encoding", "quoted-printable")))

    def test_rfc7578_section_4_6_charset_field(self):
        body = (b"--AaB03x\r\n"
                b'content-disposition: form-data; name="_charset_"\r\n'
                b"\r\n"
                b"iso-8859-1\r\n"
                b"--AaB03x\r\n"
                b'content-disposition: form-data; name="field1"\r\n'
                b"\r\n"
                b"Joe owes \xa4100.\r\n"
                b"--AaB03x--\r\n")
        self.assertParses(body, b"AaB03x", [("_charset_", None, None, b"iso-8859-1"),
                                            ("field1", None, None, b"Joe owes \xa4100.")])

    def test_rfc2046_section_5_1_1_example_with_preamble_epilogue_and_a_quoted_boundary(self):
        # RFC 2046 §5.1.1's sample message body: a boundary with a space (so quoted),
        # a preamble, a part with no header at all, and an epilogue.
        body = (b"This is the preamble.  It is to be ignored, though it\r\n"
                b"is a handy place for composition agents to include an\r\n"
                b"explanatory note to non-MIME conformant readers.\r\n"
                b"\r\n"
                b"--simple boundary\r\n"
                b"\r\n"
                b"This is implicitly typed plain US-ASCII text.\r\n"
                b"It does NOT end with a linebreak.\r\n"
                b"--simple boundary\r\n"
                b"Content-type: text/plain; charset=us-ascii\r\n"
                b"\r\n"
                b"This is explicitly typed plain US-ASCII text.\r\n"
                b"It DOES end with a linebreak.\r\n"
                b"\r\n"
                b"--simple boundary--\r\n"
                b"\r\n"
                b"This is the epilogue.  It is also to be ignored.\r\n")
        boundary = files.multipart_boundary('multipart/form-data; boundary="simple boundary"')
        self.assertEqual(boundary, b"simple boundary")
        self.assertParses(body, boundary, [
            (None, None, None, b"This is implicitly typed plain US-ASCII text.\r\nIt does NOT end with a linebreak."),
            (None, None, "text/plain; charset=us-ascii",
             b"This is explicitly typed plain US-ASCII text.\r\nIt DOES end with a linebreak.\r\n"),
        ], form_data=False)
        # As a form, a part without Content-Disposition is refused (RFC 7578 §4.2).
        with self.assertRaises(files.MultipartError):
            parse_with_ours([body], boundary)

    # The suite's verdicts we differ from on purpose, each allowed by its notes:
    # LF-only lines ("strict parsers SHOULD reject"), a repeated header ("implementations
    # that reject duplicates are also correct") and a NUL in a header (RFC 9110 §5.5).
    CONFORMANCE_REFUSED = {"061-lf-only-lenient", "062-mixed-endings", "208-duplicate-headers",
                           "210-control-chars-in-name"}

    def test_conformance_suite(self):
        cases = sorted(pathlib.Path(conformance.get_tests_dir()).glob("*/*/test.json"))
        self.assertGreater(len(cases), 50)
        for case_file in cases:
            case = json.loads(case_file.read_text())
            folder = case_file.parent
            content_type = json.loads((folder / "headers.json").read_text())["content-type"]
            body = (folder / "input.raw").read_bytes()
            expected = case["expected"]
            for how, pieces in chunkings(body, random_ways=1):
                with self.subTest(case=case["id"], feed=how):
                    if not expected["valid"] or case["id"] in self.CONFORMANCE_REFUSED:
                        with self.assertRaises(files.MultipartError):
                            parse_with_ours(pieces, files.multipart_boundary(content_type))
                        continue
                    parts = parse_with_ours(pieces, files.multipart_boundary(content_type))
                    self.assertEqual(len(parts), len(expected["parts"]))
                    for (name, filename, part_type, data), want in zip(parts, expected["parts"]):
                        self.assertEqual(name, want["name"])
                        self.assertEqual(filename, want.get("filename_star") or want.get("filename"))
                        self.assertEqual(part_type, want.get("content_type"))
                        self.assertEqual(len(data), want["body_size"])
                        if "body_text" in want:
                            self.assertEqual(data.decode("utf-8"), want["body_text"])
                        if "body_base64" in want:
                            self.assertEqual(data, base64.b64decode(want["body_base64"]))
                        if "body_sha256" in want:
                            self.assertEqual(hashlib.sha256(data).hexdigest(), want["body_sha256"])

    def test_boundary_parameter_forms(self):
        for content_type, boundary in (
            ("multipart/form-data; boundary=AaB03x", b"AaB03x"),
            ('multipart/form-data; boundary="AaB03x"', b"AaB03x"),
            ("Multipart/Form-Data; BOUNDARY=AaB03x", b"AaB03x"),
            ("multipart/form-data;boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
             b"----WebKitFormBoundary7MA4YWxkTrZu0gW"),
            ('multipart/form-data; charset=utf-8; boundary="a b:c?d"', b"a b:c?d"),
            ("multipart/form-data; boundary=a'()+_,-./:=?", b"a'()+_,-./:=?"),
            ("multipart/form-data; boundary=" + "x" * 70, b"x" * 70),
            ("multipart/form-data; boundary=AaB03x ; charset=utf-8", b"AaB03x"),
        ):
            with self.subTest(content_type=content_type):
                self.assertEqual(files.multipart_boundary(content_type), boundary)

    def test_bad_boundary_parameters_are_400(self):
        for content_type in (
            None, "", "text/plain", "multipart/form-data", "multipart/form-data; boundary=",
            'multipart/form-data; boundary=""', "multipart/form-data; boundary=" + "x" * 71,
            'multipart/form-data; boundary="ends with space "', "multipart/form-data; boundary=a;boundary=b",
            'multipart/form-data; boundary="unterminated', "multipart/form-data; boundary=a\x00b",
            "multipart/form-data; boundary=tab\there", "multipart/form-data; boundary=é",
            "multipart/mixed; boundary=AaB03x", "multipart/form-data; =x",
        ):
            with self.subTest(content_type=content_type):
                with self.assertRaises(files.MultipartError) as caught:
                    files.multipart_boundary(content_type)
                self.assertEqual(caught.exception.status, 400)

    def test_filename_forms(self):
        cases = (
            (b'filename="a \\"quoted\\" name.txt"', 'a "quoted" name.txt'),
            (b'filename="back\\\\slash.txt"', "back\\slash.txt"),
            (b'filename="C:\\Users\\me\\photo.png"', "C:\\Users\\me\\photo.png"),  # Windows paths kept
            (b'filename="semi;colon.txt"', "semi;colon.txt"),
            (b"filename=plain.txt", "plain.txt"),
            ('filename="naïve 文档.txt"'.encode(), "naïve 文档.txt"),  # raw UTF-8, as browsers send
            (b"filename*=UTF-8''%E2%82%AC%20rates.txt", "€ rates.txt"),
            (b"filename=\"EURO rates.txt\"; filename*=utf-8''%e2%82%ac%20rates.txt", "€ rates.txt"),
            (b"filename*=utf-8''%e2%82%ac%20rates.txt; filename=\"EURO rates.txt\"", "€ rates.txt"),
            (b"filename*=iso-8859-1'en'%A3%20rates.txt", "£ rates.txt"),
            (b"filename=\"fallback.txt\"; filename*=utf-8''%ff%fe", "fallback.txt"),  # bad UTF-8
            (b"filename=\"fallback.txt\"; filename*=koi8-r''%C1", "fallback.txt"),   # charset not allowed
            (b'filename=""', ""),
            (b'filename="say %22hi%22.txt"', 'say "hi".txt'),  # how browsers write a quote
        )
        for parameter, filename in cases:
            body = (b"--b\r\nContent-Disposition: form-data; name=\"f\"; " + parameter + b"\r\n\r\nx\r\n--b--\r\n")
            with self.subTest(parameter=parameter):
                self.assertParses(body, b"b", [("f", filename, None, b"x")])

    def test_rfc8187_ext_value_vectors(self):
        # RFC 8187 §3.2.2's examples.
        self.assertEqual(files.decode_ext_value("iso-8859-1'en'%A3%20rates"), "£ rates")
        self.assertEqual(files.decode_ext_value("UTF-8''%c2%a3%20and%20%e2%82%ac%20rates"), "£ and € rates")
        for bad in ("%A3", "utf-8'%A3", "utf-16''%00a", "utf-8''a b", "utf-8''%ff"):
            self.assertIsNone(files.decode_ext_value(bad), bad)

    def test_rfc6266_examples_read_with_the_parameter_parser(self):
        # RFC 6266 §5's examples, and the lenient "= " spacing its second one shows.
        self.assertEqual(files.parse_parameters("Attachment; filename=example.html"),
                         ("attachment", [("filename", "example.html")]))
        self.assertEqual(files.parse_parameters('INLINE; FILENAME= "an example.html"'),
                         ("inline", [("filename", "an example.html")]))
        disposition, params = files.parse_parameters("attachment; filename*= UTF-8''%e2%82%ac%20rates")
        self.assertEqual(files.decode_ext_value(dict(params)["filename*"]), "€ rates")
        _, params = files.parse_parameters('attachment; filename="EURO rates"; filename*=utf-8\'\'%e2%82%ac%20rates')
        self.assertEqual(params[0], ("filename", "EURO rates"))
        self.assertEqual(files.decode_ext_value(params[1][1]), "€ rates")

    def test_folded_header_line_is_unfolded(self):
        body = (b"--b\r\nContent-Disposition: form-data; name=\"f\";\r\n\tfilename=\"long.txt\"\r\n"
                b"\r\nx\r\n--b--\r\n")
        self.assertParses(body, b"b", [("f", "long.txt", None, b"x")])

    def test_transport_padding_after_a_boundary(self):
        body = b"--b \t \r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--b  \r\n" \
               b"Content-Disposition: form-data; name=\"g\"\r\n\r\ny\r\n--b--  \r\n"
        self.assertParses(body, b"b", [("f", None, None, b"x"), ("g", None, None, b"y")])

    def test_a_form_without_fields_has_no_parts(self):
        self.assertParses(b"--b--\r\n", b"b", [])

    def test_feeding_after_the_end_is_ignored_and_after_an_error_refused(self):
        parser = files.MultipartParser(b"b")
        self.assertEqual(parser.feed(b"--b--\r\n"), [])
        self.assertTrue(parser.done)
        self.assertEqual(parser.feed(b"--b\r\nanything at all"), [])
        parser.finish()
        parser = files.MultipartParser(b"b")
        with self.assertRaises(files.MultipartError):
            parser.feed(b"--b\r\nnot a header\r\n")
        with self.assertRaises(files.MultipartError):
            parser.feed(b"more")
        with self.assertRaises(files.MultipartError):
            parser.finish()


class MultipartRefusalTest(unittest.TestCase):
    """Every bad body gets the one documented exception, whichever way it arrives."""

    def assertRefused(self, body, error, message_part=None, boundary=b"b", **options):
        for how, pieces in chunkings(body, random_ways=1):
            with self.subTest(feed=how):
                with self.assertRaises(error) as caught:
                    parse_with_ours(pieces, boundary, **options)
                if message_part:
                    self.assertIn(message_part, caught.exception.message)

    def test_wrong_boundary(self):
        self.assertRefused(b"--other\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--other--\r\n",
                           files.MultipartError, "boundary named in its Content-Type")

    def test_empty_body(self):
        self.assertRefused(b"", files.MultipartError, "boundary named in its Content-Type")

    def test_missing_closing_delimiter(self):
        self.assertRefused(b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b\r\n",
                           files.MultipartError, "no closing boundary")

    def test_every_truncation_of_a_valid_body_is_refused(self):
        rng = random.Random(FUZZ_SEED)
        body, _ = random_form(rng, b"AaB03x", preamble=False)
        end = body.index(b"\r\n--AaB03x--") + len(b"\r\n--AaB03x--")
        for cut in range(end):
            with self.subTest(cut=cut):
                with self.assertRaises(files.MultipartError):
                    parse_with_ours([body[:cut]], b"AaB03x")
        parse_with_ours([body[:end]], b"AaB03x")  # from the closing "--" on, the body is complete

    def test_text_after_a_boundary(self):
        self.assertRefused(b"--bX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b--\r\n",
                           files.MultipartError, "text after the boundary")
        self.assertRefused(b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b-x\r\n",
                           files.MultipartError, "text after the boundary")

    def test_lf_only_lines(self):
        self.assertRefused(b"--b\nContent-Disposition: form-data; name=\"a\"\n\nx\n--b--\n",
                           files.MultipartError, "LF alone")
        self.assertRefused(b"--b\r\nContent-Disposition: form-data; name=\"a\"\n\r\nx\r\n--b--\r\n",
                           files.MultipartError, "LF alone")

    def test_malformed_part_headers(self):
        for header, message in (
            (b"Content-Type: text/plain", "no Content-Disposition"),
            (b"Content-Disposition: attachment; name=\"a\"", "not form-data"),
            (b"Content-Disposition: form-data", "no name"),
            (b"Content-Disposition: form-data; filename=\"a.txt\"", "no name"),
            (b"Content-Disposition: form-data; !!!invalid!!!", "could not be read"),
            (b"Content-Disposition: form-data; name=\"a", "could not be read"),
            (b"Content-Disposition: form-data; name=\"a\"; name=\"b\"", "repeats name"),
            (b"Content-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"b\"", "two"),
            (b"Content-Disposition: form-data; name=\"a\"\r\nContent-Type: a/b\r\ncontent-type: c/d", "two"),
            (b"Content-Disposition form-data; name=\"a\"", "Name: value"),
            (b"Bad Name: x\r\nContent-Disposition: form-data; name=\"a\"", "Name: value"),
            (b" folded first: x\r\nContent-Disposition: form-data; name=\"a\"", "continuation"),
            (b"Content-Disposition: form-data; name=\"a\x00b\"", "control character"),
            (b"Content-Disposition: form-data; name=\"a\"\r\nX: \x1b[31m", "control character"),
        ):
            with self.subTest(header=header):
                self.assertRefused(b"--b\r\n" + header + b"\r\n\r\nx\r\n--b--\r\n", files.MultipartError, message)

    def test_no_blank_line_after_the_header(self):
        self.assertRefused(b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\nvalue\r\n--b--\r\n",
                           files.MultipartError)

    def test_part_count_limit_is_413(self):
        part = b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n"
        parse_with_ours([part * 5 + b"--b--\r\n"], b"b", max_parts=5)
        self.assertRefused(part * 6 + b"--b--\r\n", files.MultipartTooLarge, "more than 5 parts", max_parts=5)
        body = part * (files.MAX_MULTIPART_PARTS + 1) + b"--b--\r\n"
        with self.assertRaises(files.MultipartTooLarge) as caught:
            parse_with_ours([body], b"b")
        self.assertEqual(caught.exception.status, 413)

    def test_header_size_and_count_limits_are_413(self):
        filler = b"X-Filler: " + b"y" * (files.MAX_PART_HEADER_BYTES - 70) + b"\r\n"
        fits = b"--b\r\n" + filler + b"Content-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b--\r\n"
        self.assertEqual(parse_with_ours([fits], b"b"), [("a", None, None, b"x")])
        too_big = b"--b\r\n" + filler + b"X-More: zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\r\n" \
                  b"Content-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b--\r\n"
        self.assertRefused(too_big, files.MultipartTooLarge, "larger than")
        endless = b"--b\r\nContent-Disposition: form-data; name=\"" + b"a" * 100_000
        self.assertRefused(endless, files.MultipartTooLarge, "larger than")
        fields = b"".join(b"X-%d: v\r\n" % index for index in range(files.MAX_PART_HEADER_FIELDS))
        self.assertRefused(b"--b\r\n" + fields + b"Content-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b--\r\n",
                           files.MultipartTooLarge, "header fields")

    def test_a_long_preamble_means_a_wrong_boundary(self):
        preamble = b"p" * (files.MAX_MULTIPART_PREAMBLE_BYTES + 10)
        parser = files.MultipartParser(b"b")
        with self.assertRaises(files.MultipartError):
            for start in range(0, len(preamble), 4096):
                parser.feed(preamble[start:start + 4096])
        self.assertEqual(parser.buffered_bytes, 0)

    def test_seeded_garbage_raises_only_documented_errors(self):
        rng = random.Random(FUZZ_SEED)
        outcomes = {"parsed": 0, "refused": 0}
        for round_number in range(400):
            boundary = rng.choice((b"b", b"AaB03x", random_boundary(rng)))
            body, _ = random_form(rng, boundary)
            body = bytearray(body)
            for _ in range(rng.randint(1, 8)):
                mutation = rng.randrange(5)
                where = rng.randrange(len(body) + 1)
                if mutation == 0 and body:
                    body[min(where, len(body) - 1)] = rng.randrange(256)
                elif mutation == 1:
                    body[where:where] = rng.choice((b"\r\n", b"--", b"\r\n--" + boundary, b"\n", b'"', b";",
                                                    b"\r\n\r\n", bytes(rng.randrange(256) for _ in range(5))))
                elif mutation == 2:
                    del body[where:where + rng.randint(1, 20)]
                elif mutation == 3:
                    del body[where:]
                else:
                    body = bytearray(rng.randbytes(rng.randint(0, 300)))
            pieces = next(way for how, way in chunkings(bytes(body), rng) if how == "random0")
            try:
                parse_with_ours(pieces, boundary, max_parts=20)
                outcomes["parsed"] += 1
            except (files.MultipartError, files.MultipartTooLarge) as error:
                self.assertIn(error.status, (400, 413))
                self.assertTrue(error.message)
                outcomes["refused"] += 1
        self.assertGreater(outcomes["parsed"], 10, outcomes)   # the mutations left some bodies valid
        self.assertGreater(outcomes["refused"], 100, outcomes)


class MultipartPeerTest(unittest.TestCase):
    """Random forms, read by us fed three ways, by `multipart`, `python-multipart`
    and email.parser: all four agree part by part, byte for byte."""

    def test_random_forms_agree_with_three_independent_parsers(self):
        rng = random.Random(FUZZ_SEED)
        for round_number in range(150):
            boundary = random_boundary(rng)
            body, expected = random_form(rng, boundary)
            has_preamble = not body.startswith(b"--" + boundary)
            with self.subTest(round=round_number, boundary=boundary):
                for how, pieces in chunkings(body, rng, random_ways=2):
                    if how == "bytewise" and len(body) > 20_000:
                        continue
                    self.assertEqual(parse_with_ours(pieces, boundary), expected, how)
                self.assertEqual(parse_with_multipart([body], boundary), expected)
                self.assertEqual(parse_with_email(body, boundary), expected)
                if not has_preamble:  # python-multipart expects the body to open with the boundary
                    self.assertEqual(parse_with_python_multipart([body], boundary), expected)

    def test_peers_refuse_what_we_refuse(self):
        good = b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nhello\r\n--b--\r\n"
        for bad in (good[:30], good[:-9], good.replace(b"--b--", b"--b"), good.replace(b"--b", b"--c")):
            with self.subTest(body=bad):
                with self.assertRaises(files.MultipartError):
                    parse_with_ours([bad], b"b")
                with self.assertRaises(peer_multipart.ParserError):
                    parse_with_multipart([bad], b"b")
        # Where `multipart` reads a wrongly delimited part as a preamble before an
        # empty form, we refuse: the text was surely the form, under another boundary.
        wrong_first = good.replace(b"--b\r\n", b"--c\r\n", 1)
        self.assertEqual(parse_with_multipart([wrong_first], b"b"), [])
        with self.assertRaises(files.MultipartError):
            parse_with_ours([wrong_first], b"b")

    def test_memory_stays_within_a_delimiter_of_the_latest_chunk(self):
        rng = random.Random(FUZZ_SEED)
        boundary = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
        delimiter_length = len(b"\r\n--" + boundary)
        content = bytearray()
        while len(content) < 4 * 1024 * 1024:  # 4 MiB, salted with near-delimiters every few KiB
            content += rng.randbytes(rng.randint(1, 8000))
            content += b"\r\n--" + boundary[:rng.randint(0, len(boundary) - 1)]
        head = b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"f\"; filename=\"big.bin\"\r\n\r\n"
        body = head + bytes(content) + b"\r\n--" + boundary + b"--\r\n"
        parser = files.MultipartParser(boundary)
        received = hashlib.sha256()
        index = largest = 0
        while index < len(body):
            size = rng.choice((1, 100, 4096, 65536, rng.randint(1, 300_000)))
            for event in parser.feed(body[index:index + size]):
                if isinstance(event, files.PartData):
                    received.update(event.data)
            index += size
            if index > len(head):
                largest = max(largest, parser.buffered_bytes)
        parser.finish()
        self.assertEqual(received.hexdigest(), hashlib.sha256(content).hexdigest())
        self.assertLess(largest, delimiter_length)

    def test_a_piece_that_is_all_body_is_handed_on_whole_and_a_delimiters_start_is_held_back(self):
        boundary = b"xyz"
        parser = files.MultipartParser(boundary)
        head = b"--xyz\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n"
        self.assertIsInstance(parser.feed(head)[0], files.PartStarted)
        for piece in (bytearray(b"a" * 100_000), b"b" * 70_000):  # as the server feeds it, and as bytes
            events = parser.feed(piece)
            self.assertEqual(len(events), 1)
            self.assertIs(events[0].data, piece)  # not copied
            self.assertEqual(parser.buffered_bytes, 0)
        for held in (b"\r", b"\r\n", b"\r\n-", b"\r\n--x", b"\r\n--xy"):
            events = parser.feed(bytearray(b"c" * 10 + held))
            self.assertEqual([event.data for event in events], [b"c" * 10])
            self.assertEqual(parser.buffered_bytes, len(held))
            events = parser.feed(b"d")  # not a delimiter after all: the held bytes are body
            self.assertEqual(b"".join(event.data for event in events), held + b"d")
        events = parser.feed(bytearray(b"tail\r\n--xyz--\r\n"))
        self.assertEqual([type(event) for event in events], [files.PartData, files.PartEnded])
        self.assertEqual(events[0].data, b"tail")
        parser.finish()


####
#### File names
####

class SafeFilenameTest(unittest.TestCase):
    def test_table(self):
        long_stem = "a" * 300
        for given, expected in (
            ("photo.png", "photo.png"),
            ("../../etc/passwd", "passwd"),
            ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
            ("C:\\Users\\me\\Pictures\\cat.jpg", "cat.jpg"),
            ("/absolute/path/", "file"),
            ("dir/", "file"),
            ("", "file"),
            (None, "file"),
            ("..", "file"),
            ("...", "file"),
            (".htaccess", "htaccess"),
            ("...hidden.txt", "hidden.txt"),
            (". . .x", "x"),
            ("\u3000.name.\u00a0", "name"),
            ("  spaced name.txt  ", "spaced name.txt"),
            ("trailing dots...", "trailing dots"),
            ("tab\tand\nnewline\r.txt", "tabandnewline.txt"),
            ("nul\x00byte.txt", "nulbyte.txt"),
            ("bell\x07\x7f\x85.txt", "bell.txt"),
            ("invoice\u202etxt.exe", "invoicetxt.exe"),          # right-to-left override dropped
            ("line\u2028sep\u2029.txt", "linesep.txt"),
            ("cafe\u0301.txt", "café.txt"),                       # NFC
            ("👨‍👩‍👧 family.png", "👨‍👩‍👧 family.png"),             # joiners kept
            ("文档.pdf", "文档.pdf"),
            ("a\udcffb.txt", "ab.txt"),                          # a lone surrogate (surrogateescape) dropped
            (long_stem + ".png", "a" * 251 + ".png"),
            ("é" * 200 + ".jpeg", "é" * 125 + ".jpeg"),           # cut at a character, within 255 bytes
            ("x." + "y" * 300, "x." + "y" * 253),                 # a "extension" too long to keep
        ):
            with self.subTest(given=given):
                self.assertEqual(files.safe_filename(given), expected)

    def test_random_names_always_come_out_safe(self):
        rng = random.Random(FUZZ_SEED)
        alphabet = ("abcXYZ019 ...-_/\\:*?\"<>|%;'\t\r\n\x00\x1f\x7f\x85\u200b\u200d\u202e\u2066\u2028\u3000"
                    "éü漢字🙂\u0301\ufeff\udc80")
        for _ in range(3000):
            name = "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 5, 30, 300))))
            limit = rng.choice((files.MAX_FILENAME_BYTES, 20, 8))
            safe = files.safe_filename(name, limit)
            with self.subTest(name=name, limit=limit):
                self.assertTrue(safe)
                self.assertLessEqual(len(safe.encode("utf-8")), max(limit, len(files.FALLBACK_FILENAME)))
                self.assertFalse(set(safe) & set("/\\\t\r\n\x00\x1f\x7f\x85\u202e\u2066\u2028\udc80"))
                self.assertFalse(safe.startswith("."))
                self.assertEqual(safe, safe.strip())
                self.assertEqual(files.safe_filename(safe, limit), safe)  # idempotent

    def test_long_names_keep_their_extension(self):
        rng = random.Random(FUZZ_SEED)
        for _ in range(200):
            stem = "".join(rng.choice("abé漢🙂") for _ in range(rng.randint(100, 400)))
            extension = rng.choice((".png", ".tar.gz", ".JPEG", ".webm"))
            safe = files.safe_filename(stem + extension)
            self.assertTrue(safe.endswith(extension.rpartition(".")[1] + extension.rpartition(".")[2]), safe)
            self.assertLessEqual(len(safe.encode()), files.MAX_FILENAME_BYTES)


####
#### Image headers
####

def pillow_bytes(image, format, **options):
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def exif_with_orientation(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Camera maker"  # another IFD0 entry before it, so the walk is a walk
    return exif


def jpeg_with_segments(jpeg, segments):
    """A JPEG with marker segments inserted right after SOI."""
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def app_segment(marker, payload):
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def sniff_every_way(test, data, expected_info):
    """Fed whole, bytewise and in random chunks, the sniffer agrees."""
    for how, pieces in chunkings(data, random_ways=2):
        sniffer = files.ImageSniffer()
        for piece in pieces:
            if sniffer.feed(piece):
                break
        test.assertEqual(sniffer.finish(), expected_info, how)


class ImageHeaderTest(unittest.TestCase):
    """Pillow writes images in every format, mode and many sizes; we read their
    headers and agree with what Pillow reads back."""

    def check(self, data, content_type, width, height, orientation=1):
        with Image.open(io.BytesIO(data)) as image:
            shown = ImageOps.exif_transpose(image) if orientation != 1 else image
            self.assertEqual(shown.size, (width, height))  # Pillow agrees with what we expect
        expected = files.ImageInfo(content_type, width, height, orientation)
        self.assertEqual(files.sniff_image(data[:files.IMAGE_SNIFF_BYTES]), expected)
        sniff_every_way(self, data, expected)

    def sizes(self, count, limit=700):
        rng = random.Random(FUZZ_SEED + count)
        fixed = [(1, 1), (1, 300), (300, 1), (255, 256), (257, 255)]
        return fixed + [(rng.randint(1, limit), rng.randint(1, limit)) for _ in range(count)]

    def test_png_in_every_mode_and_many_sizes(self):
        for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
            for width, height in self.sizes(6):
                with self.subTest(mode=mode, size=(width, height)):
                    self.check(pillow_bytes(Image.new(mode, (width, height)), "PNG"), "image/png", width, height)
        data = pillow_bytes(Image.new("RGB", (33, 17)), "PNG", interlace=True)  # Adam7
        self.check(data, "image/png", 33, 17)

    def test_gif_static_and_animated(self):
        for width, height in self.sizes(10):
            with self.subTest(size=(width, height)):
                self.check(pillow_bytes(Image.new("P", (width, height)), "GIF"), "image/gif", width, height)
        frames = [Image.new("RGB", (120, 80), colour) for colour in ("red", "green", "blue")]
        animated = pillow_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
        self.check(animated, "image/gif", 120, 80)
        gif87 = b"GIF87a" + pillow_bytes(Image.new("P", (9, 4)), "GIF")[6:]
        self.assertEqual(files.sniff_image(gif87), files.ImageInfo("image/gif", 9, 4))

    def test_jpeg_baseline_progressive_grayscale_cmyk(self):
        for mode, options in (("RGB", {}), ("RGB", {"progressive": True}), ("RGB", {"optimize": True}),
                              ("L", {}), ("CMYK", {}), ("RGB", {"quality": 5, "subsampling": 2})):
            for width, height in self.sizes(5, limit=2000):
                with self.subTest(mode=mode, options=options, size=(width, height)):
                    data = pillow_bytes(Image.new(mode, (width, height)), "JPEG", **options)
                    self.check(data, "image/jpeg", width, height)

    def test_jpeg_exif_orientation_swaps_quarter_turns(self):
        for orientation in range(1, 9):
            for byte_order in ("little", "big"):
                with self.subTest(orientation=orientation, byte_order=byte_order):
                    exif = exif_with_orientation(orientation)
                    exif.endian = "<" if byte_order == "little" else ">"
                    data = pillow_bytes(Image.new("RGB", (64, 20)), "JPEG", exif=exif)
                    swapped = orientation >= 5
                    self.check(data, "image/jpeg", 20 if swapped else 64, 64 if swapped else 20, orientation)

    def test_jpeg_metadata_past_64_kib_is_skipped_without_being_kept(self):
        jpeg = pillow_bytes(Image.new("RGB", (640, 480)), "JPEG", icc_profile=os.urandom(200_000))
        self.assertGreater(jpeg.rindex(b"ICC_PROFILE\x00"), files.IMAGE_SNIFF_BYTES)  # in several APP2 segments
        sniff_every_way(self, jpeg, files.ImageInfo("image/jpeg", 640, 480))
        sniffer = files.ImageSniffer()
        for start in range(0, len(jpeg), 65536):
            done = sniffer.feed(jpeg[start:start + 65536])
            self.assertLess(sniffer.buffered_bytes, 2 * 65536)
            if done:
                break
        self.assertEqual(sniffer.finish(), files.ImageInfo("image/jpeg", 640, 480))
        # Given only the first 64 KiB, it is cut off: the caller should stream instead.
        with self.assertRaises(files.ImageHeaderError):
            files.sniff_image(jpeg[:files.IMAGE_SNIFF_BYTES])

    def test_jpeg_fill_bytes_standalone_markers_and_stray_bytes(self):
        jpeg = pillow_bytes(Image.new("RGB", (31, 7)), "JPEG")
        expected = files.ImageInfo("image/jpeg", 31, 7)
        self.assertEqual(jpeg[2:4], b"\xff\xe0")
        app0_end = 4 + int.from_bytes(jpeg[4:6], "big")
        variants = {
            "fill bytes": jpeg[:2] + b"\xff\xff\xff" + jpeg[2:],
            "RST and TEM": jpeg[:2] + b"\xff\xd0\xff\xd7\xff\x01" + jpeg[2:],
            "stray bytes": jpeg[:app0_end] + b"\x00\x12garbage" + jpeg[app0_end:],
            "APP segments": jpeg_with_segments(jpeg, [app_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x/>"),
                                                      app_segment(0xED, b"Photoshop 3.0\x00" + b"8" * 5000),
                                                      app_segment(0xFE, b"a comment")]),
        }
        for name, data in variants.items():
            with self.subTest(name):
                self.assertEqual(files.sniff_image(data), expected)
                sniff_every_way(self, data, expected)

    def test_webp_lossy_lossless_and_extended(self):
        for width, height in self.sizes(6, limit=2000):
            with self.subTest(size=(width, height)):
                image = Image.new("RGB", (width, height))
                lossy = pillow_bytes(image, "WEBP")
                lossless = pillow_bytes(image, "WEBP", lossless=True)
                extended = pillow_bytes(Image.new("RGBA", (width, height)), "WEBP")  # alpha: VP8X
                self.assertEqual((lossy[12:16], lossless[12:16], extended[12:16]), (b"VP8 ", b"VP8L", b"VP8X"))
                for data in (lossy, lossless, extended):
                    self.check(data, "image/webp", width, height)
        frames = [Image.new("RGB", (90, 50), colour) for colour in ("red", "blue")]
        self.check(pillow_bytes(frames[0], "WEBP", save_all=True, append_images=frames[1:]), "image/webp", 90, 50)
        self.check(pillow_bytes(Image.new("RGB", (16383, 3)), "WEBP", lossless=True), "image/webp", 16383, 3)

    def test_not_images(self):
        for data in (b"", b"GIF", b"\x89PN", b"\xff\xd8", b"RIFF", b"hello, world", b"%PDF-1.7\n",
                     b"RIFF\x10\x00\x00\x00WAVEfmt ", b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                     b"\x00" * 100, b"GIF90a" + b"\x01" * 10, b"\x89PNG\r\n\x1a\x0b" + b"\x00" * 30):
            with self.subTest(data=data[:16]):
                self.assertIsNone(files.sniff_image(data))

    def test_every_truncation_of_a_header_is_422_or_not_yet_an_image(self):
        samples = {
            "png": pillow_bytes(Image.new("RGB", (5, 6)), "PNG"),
            "gif": pillow_bytes(Image.new("P", (5, 6)), "GIF"),
            "jpeg": pillow_bytes(Image.new("RGB", (5, 6)), "JPEG", exif=exif_with_orientation(6)),
            "vp8": pillow_bytes(Image.new("RGB", (5, 6)), "WEBP"),
            "vp8l": pillow_bytes(Image.new("RGB", (5, 6)), "WEBP", lossless=True),
            "vp8x": pillow_bytes(Image.new("RGBA", (5, 6)), "WEBP"),
        }
        for name, data in samples.items():
            complete = files.sniff_image(data)
            self.assertIsNotNone(complete)
            for cut in range(len(data)):
                with self.subTest(name=name, cut=cut):
                    try:
                        info = files.sniff_image(data[:cut])
                    except files.ImageHeaderError as error:
                        self.assertEqual(error.status, 422)
                        self.assertIn("cut off", error.message)
                    else:
                        self.assertIn(info, (None, complete))
                        if info is None:
                            self.assertLess(cut, 12)  # too short to tell what it is

    def test_headers_that_lie_are_422(self):
        def png(width, height, depth=8, colour=2, crc=None):
            ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
            crc = zlib.crc32(ihdr) if crc is None else crc
            return files.PNG_SIGNATURE + struct.pack(">I", 13) + ihdr + struct.pack(">I", crc)

        def gif(width, height):
            return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00" * 10

        jpeg = pillow_bytes(Image.new("RGB", (40, 30)), "JPEG")
        sof = jpeg.index(b"\xff\xc0")

        def jpeg_size(width, height):
            return jpeg[:sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9:]

        lossless = pillow_bytes(Image.new("RGB", (5, 6)), "WEBP", lossless=True)
        lossy = pillow_bytes(Image.new("RGB", (5, 6)), "WEBP")
        extended = bytearray(pillow_bytes(Image.new("RGBA", (5, 6)), "WEBP"))

        def vp8x(width, height):
            data = bytearray(extended)
            data[24:27] = (width - 1).to_bytes(3, "little")
            data[27:30] = (height - 1).to_bytes(3, "little")
            return bytes(data)

        self.assertEqual(files.sniff_image(png(65535, 4096)), files.ImageInfo("image/png", 65535, 4096))
        self.assertEqual(files.sniff_image(vp8x(16384, 16384)), files.ImageInfo("image/webp", 16384, 16384))
        lies = {
            "png zero width": png(0, 10),
            "png zero height": png(10, 0),
            "png too wide": png(65536, 1),
            "png 2**31 - 1 high": png(1, 2 ** 31 - 1),
            "png too many pixels": png(20000, 20000),
            "png bad crc": png(10, 10, crc=1234),
            "png bad bit depth": png(10, 10, depth=3),
            "png bad colour type": png(10, 10, colour=5),
            "png first chunk not IHDR": files.PNG_SIGNATURE + b"\x00\x00\x00\x0dIDAT" + b"\x00" * 17,
            "gif zero": gif(0, 0),
            "gif zero height": gif(100, 0),
            "jpeg zero height": jpeg_size(40, 0),
            "jpeg zero width": jpeg_size(0, 30),
            "jpeg end before frame": b"\xff\xd8\xff\xe0\x00\x04ab\xff\xd9",
            "jpeg scan before frame": b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20,
            "jpeg short segment length": b"\xff\xd8\xff\xe0\x00\x01" + b"\x00" * 20,
            "jpeg second SOI": b"\xff\xd8\xff\xd8" + b"\x00" * 20,
            "jpeg frame without components": jpeg[:sof + 9] + b"\x00" + jpeg[sof + 10:],
            "webp vp8l version 1": lossless[:21] + (int.from_bytes(lossless[21:25], "little") | 1 << 29)
                                   .to_bytes(4, "little") + lossless[25:],
            "webp vp8l bad signature": lossless[:20] + b"\x2e" + lossless[21:],
            "webp vp8 bad start code": lossy[:23] + b"\x9d\x01\x2b" + lossy[26:],
            "webp vp8 not a key frame": lossy[:20] + bytes((lossy[20] | 1,)) + lossy[21:],
            "webp vp8x too many pixels": vp8x(16384, 16385),
            "webp vp8x too wide": vp8x(70000, 1),
            "webp unknown first chunk": lossy[:12] + b"ALPH" + lossy[16:],
            "webp chunk larger than file": lossy[:4] + struct.pack("<I", 12) + lossy[8:],
        }
        for name, data in lies.items():
            with self.subTest(name):
                with self.assertRaises(files.ImageHeaderError) as caught:
                    files.sniff_image(data)
                self.assertEqual(caught.exception.status, 422)
                self.assertTrue(caught.exception.message)

    def test_jpeg_without_a_frame_in_the_scan_limit_is_422(self):
        sniffer = files.ImageSniffer()
        sniffer.feed(b"\xff\xd8")
        segment = app_segment(0xE2, b"\x00" * 65533)
        with self.assertRaises(files.ImageHeaderError):
            for _ in range(files.JPEG_SCAN_LIMIT // len(segment) + 2):
                sniffer.feed(segment)

    def test_corrupted_headers_raise_only_the_documented_error(self):
        rng = random.Random(FUZZ_SEED)
        samples = [pillow_bytes(Image.new("RGB", (rng.randint(1, 99), rng.randint(1, 99))), format, **options)
                   for format, options in (("PNG", {}), ("GIF", {}), ("JPEG", {"exif": exif_with_orientation(8)}),
                                           ("JPEG", {"progressive": True}), ("WEBP", {}),
                                           ("WEBP", {"lossless": True}))]
        samples.append(pillow_bytes(Image.new("RGBA", (20, 20)), "WEBP"))
        seen = {"info": 0, "none": 0, "error": 0}
        for _ in range(5000):
            data = bytearray(rng.choice(samples)[:200])
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(min(len(data), 60))] = rng.randrange(256)
            try:
                info = files.sniff_image(bytes(data))
            except files.ImageHeaderError:
                seen["error"] += 1
                continue
            if info is None:
                seen["none"] += 1
                continue
            seen["info"] += 1
            self.assertTrue(1 <= info.width <= files.MAX_IMAGE_SIDE_PIXELS)
            self.assertTrue(1 <= info.height <= files.MAX_IMAGE_SIDE_PIXELS)
            self.assertLessEqual(info.width * info.height, files.MAX_IMAGE_PIXELS)
        self.assertTrue(all(seen.values()), seen)


####
#### Byte ranges
####

class RangeTest(unittest.TestCase):
    def test_rfc9110_section_14_1_2_examples(self):
        length = 10000
        for header, expected in (
            ("bytes=0-499", (0, 499)),            # the first 500 bytes
            ("bytes=500-999", (500, 999)),        # the second 500 bytes
            ("bytes=500-600,601-999", (500, 999)),  # "other valid (but not canonical)" forms of it
            ("bytes=500-700,601-999", (500, 999)),
            ("bytes=-500", (9500, 9999)),         # the final 500 bytes
            ("bytes=9500-", (9500, 9999)),
            ("bytes=0-", (0, 9999)),
        ):
            with self.subTest(header=header):
                self.assertEqual(files.parse_range(header, length), files.ByteRange(*expected))
        # "The first and last bytes only": two ranges that don't merge, so 200 with everything.
        self.assertIsNone(files.parse_range("bytes=0-0,-1", length))

    def test_rfc9110_section_14_4_content_range_examples(self):
        self.assertEqual(files.content_range(files.ByteRange(42, 1233), 1234), "bytes 42-1233/1234")
        with self.assertRaises(files.RangeNotSatisfiable) as caught:
            files.parse_range("bytes=1234-", 1234)
        self.assertEqual(caught.exception.status, 416)
        self.assertEqual(caught.exception.headers, [("Content-Range", "bytes */1234")])

    def test_open_suffix_and_clipped_ranges(self):
        for header, length, expected in (
            ("bytes=0-0", 1, (0, 0)),
            ("bytes=-1", 1, (0, 0)),
            ("bytes=-20", 10, (0, 9)),            # a suffix longer than the file: all of it
            ("bytes=5-100", 10, (5, 9)),          # last-pos past the end is clipped
            ("bytes=9-", 10, (9, 9)),
            ("Bytes=2-3", 10, (2, 3)),            # the unit is case-insensitive
            ("bytes=1-2 , 3-4", 10, (1, 4)),      # OWS around list elements, touching ranges merge
            ("bytes=, 1-2,,", 10, (1, 2)),        # empty list elements (RFC 9110 §5.6.1)
            ("bytes=0-99999999999999999999999999", 10, (0, 9)),
            ("bytes=-99999999999999999999999999", 10, (0, 9)),
            ("bytes=0000000000000000000000000001-2", 10, (1, 2)),
            ("bytes=" + "9" * 5000 + "-," + "0-1", 10, (0, 1)),  # no int() past Python's digit limit
            ("bytes=4-6,0-9", 10, (0, 9)),       # out of order and overlapping: merged
            ("bytes=8-9,-2", 10, (8, 9)),
        ):
            with self.subTest(header=header[:60]):
                self.assertEqual(files.parse_range(header, length), files.ByteRange(*expected))

    def test_invalid_headers_are_ignored(self):
        for header in ("", None, "bytes", "bytes=", "bytes=,", "bytes=5-4", "bytes=abc", "bytes=0-5;x",
                       "bytes=--5", "bytes=1-2-3", "bytes=+1-2", "bytes=0x1-2", "bytes=-", "bytes=1 -2",
                       "items=0-5", "bytes =0-5", "bytes=0-5, x", "bytes=١-٢", "bytes=" + "0-1," * 101,
                       "bytes=99999999999999999999999-99999999999999999999998"):
            with self.subTest(header=(header or "")[:60]):
                self.assertIsNone(files.parse_range(header, 10000))

    def test_unsatisfiable_is_416(self):
        for header, length in (("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=20-30,40-", 10),
                               ("bytes=" + "9" * 40 + "-", 10)):
            with self.subTest(header=header):
                with self.assertRaises(files.RangeNotSatisfiable) as caught:
                    files.parse_range(header, length)
                self.assertEqual(caught.exception.headers, [("Content-Range", "bytes */%d" % length)])

    def test_several_ranges_that_stay_apart_are_served_whole(self):
        self.assertIsNone(files.parse_range("bytes=0-1,5-6", 10))
        self.assertEqual(files.parse_range("bytes=0-1,50-60", 10), files.ByteRange(0, 1))  # one is unsatisfiable

    def test_empty_representation_is_served_whole(self):
        for header in ("bytes=0-", "bytes=-5", "bytes=0-0"):
            self.assertIsNone(files.parse_range(header, 0))

    def test_http_date_formats_of_rfc9110_section_5_6_7(self):
        expected = 784111777
        self.assertEqual(files.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), expected)
        self.assertEqual(files.parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), expected)
        self.assertEqual(files.parse_http_date("Sun Nov  6 08:49:37 1994"), expected)
        now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
        self.assertEqual(files.parse_http_date("Thursday, 01-Jan-76 00:00:00 GMT", now), 3345062400)  # 2076
        self.assertEqual(files.parse_http_date("Saturday, 01-Jan-77 00:00:00 GMT", now), 220924800)   # 1977
        self.assertEqual(files.parse_http_date("Saturday, 01-Jan-50 00:00:00 GMT", now), 2524608000)
        for bad in ("", "yesterday", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 31 Feb 1994 08:49:37 GMT",
                    "Sun, 06 Nov 1994 25:49:37 GMT", "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 6 Nov 1994 08:49:37 GMT",
                    "Sun, 06 Nov 0000 08:49:37 GMT"):
            self.assertIsNone(files.parse_http_date(bad), bad)

    def test_http_dates_agree_with_email_utils_and_werkzeug(self):
        rng = random.Random(FUZZ_SEED)
        for _ in range(500):
            moment = rng.randint(0, 4102444800)  # 1970 to 2100
            stamp = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
            imf = email.utils.formatdate(moment, usegmt=True)
            asctime = stamp.strftime("%a %b ") + ("%2d" % stamp.day) + stamp.strftime(" %H:%M:%S %Y")
            self.assertEqual(files.parse_http_date(imf), moment)
            self.assertEqual(email.utils.mktime_tz(email.utils.parsedate_tz(imf)), moment)
            self.assertEqual(werkzeug.http.parse_date(imf).timestamp(), moment)
            self.assertEqual(files.parse_http_date(asctime), moment)
            self.assertEqual(werkzeug.http.parse_date(asctime).timestamp(), moment)
            if 1980 <= stamp.year <= 2069:
                rfc850 = stamp.strftime("%A, %d-%b-%y %H:%M:%S GMT")
                self.assertEqual(files.parse_http_date(rfc850, now=moment), moment)

    def test_if_range(self):
        etag = '"abc123"'
        modified = 784111777
        date = "Sun, 06 Nov 1994 08:49:37 GMT"
        for if_range, expected in (
            (etag, files.ByteRange(0, 9)),
            ('W/"abc123"', None),           # a weak tag never matches (§13.1.5)
            ('"other"', None),
            (date, files.ByteRange(0, 9)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", files.ByteRange(0, 9)),
            ("Sun, 06 Nov 1994 08:49:38 GMT", None),  # the date must match exactly
            ("garbage", None),
            ('"unterminated', None),
        ):
            with self.subTest(if_range=if_range):
                self.assertEqual(files.select_range("bytes=0-9", 100, if_range=if_range, etag=etag,
                                                    last_modified=modified), expected)
        self.assertIsNone(files.select_range("bytes=0-9", 100, if_range='"abc"', etag='W/"abc"'))
        self.assertIsNone(files.select_range("bytes=0-9", 100, if_range=date))  # no Last-Modified known
        self.assertIsNone(files.select_range(None, 100, if_range=etag, etag=etag))
        # If-Range that doesn't match wins over an unsatisfiable range: 200, not 416.
        self.assertIsNone(files.select_range("bytes=500-", 100, if_range='"old"', etag=etag))
        with self.assertRaises(files.RangeNotSatisfiable):
            files.select_range("bytes=500-", 100, if_range=etag, etag=etag)

    def test_random_headers_agree_with_werkzeug(self):
        """werkzeug reads one range per header and refuses what isn't in
        ascending order; where it reads a header, we read it the same way.
        The differences are ours on purpose: RFC 9110 §14.1.1 makes a suffix
        longer than the file mean all of it (werkzeug: not satisfiable), and
        "-0" valid but unsatisfiable (werkzeug: invalid)."""
        rng = random.Random(FUZZ_SEED)
        compared = {"single": 0, "multiple": 0, "invalid": 0}

        def number():
            return str(rng.choice((0, 1, 5, 9, 10, 11, 99, 100, 101, rng.randint(0, 200))))

        def spec():
            kind = rng.randrange(8)
            if kind < 3:
                return number() + "-" + number()
            if kind < 5:
                return number() + "-"
            if kind < 7:
                return "-" + number()
            return rng.choice(("", "x", "-", "1-2-3", "a-1", "1-b", "--1", "+1-2", "1 -2", "1- 2"))

        for _ in range(8000):
            specs = [spec() for _ in range(rng.choice((1, 1, 1, 2, 3)))]
            space = rng.choice(("", " ", "\t"))
            header = rng.choice(("bytes", "bytes", "BYTES", "lines")) + "=" + ("," + space).join(specs)
            length = rng.choice((1, 10, 100, 150))
            theirs = werkzeug.http.parse_range_header(header)
            try:
                ours = files.parse_range(header, length)
            except files.RangeNotSatisfiable:
                ours = "416"
            with self.subTest(header=header, length=length):
                if any(" " in spec.strip() for spec in specs):
                    # werkzeug reads "1 -2" as "1-2"; RFC 9110's int-range has no white space
                    # inside, so we ignore such a header (200).
                    self.assertIsNone(ours)
                    continue
                if theirs is None or theirs.units != "bytes":
                    if len(specs) == 1 and specs[0] != "-0" and theirs is None:
                        self.assertIsNone(ours)
                        compared["invalid"] += 1
                    continue
                if len(theirs.ranges) == 1:
                    compared["single"] += 1
                    start, stop = theirs.ranges[0]
                    span = theirs.range_for_length(length)
                    if span is not None:
                        self.assertEqual(ours, files.ByteRange(span[0], span[1] - 1))
                    elif start < 0 and -start > length:
                        self.assertEqual(ours, files.ByteRange(0, length - 1))
                    else:
                        self.assertEqual(ours, "416")
                    continue
                compared["multiple"] += 1
                spans = []
                for start, stop in theirs.ranges:
                    if start < 0:
                        spans.append((max(0, length + start), length - 1))
                    elif start < length:
                        spans.append((start, length - 1 if stop is None else min(stop - 1, length - 1)))
                merged = []
                for first, last in sorted(spans):
                    if merged and first <= merged[-1][1] + 1:
                        merged[-1][1] = max(merged[-1][1], last)
                    else:
                        merged.append([first, last])
                if not merged:
                    self.assertEqual(ours, "416")
                elif len(merged) == 1:
                    self.assertEqual(ours, files.ByteRange(*merged[0]))
                else:
                    self.assertIsNone(ours)
        self.assertTrue(all(count > 50 for count in compared.values()), compared)


####
#### Serving files
####

class ContentDispositionTest(unittest.TestCase):
    def test_examples(self):
        self.assertEqual(files.content_disposition("inline", "photo.png"), 'inline; filename="photo.png"')
        self.assertEqual(files.content_disposition("attachment", "€ rates.pdf"),
                         "attachment; filename=\"_ rates.pdf\"; filename*=UTF-8''%E2%82%AC%20rates.pdf")
        self.assertEqual(files.content_disposition("attachment", "Crème brûlée.txt"),
                         "attachment; filename=\"Creme brulee.txt\"; "
                         "filename*=UTF-8''Cr%C3%A8me%20br%C3%BBl%C3%A9e.txt")
        self.assertEqual(files.content_disposition("attachment", "a\r\nSet-Cookie: x=1"),
                         'attachment; filename="aSet-Cookie: x=1"')
        self.assertEqual(files.content_disposition("attachment", ""), 'attachment; filename="file"')
        self.assertEqual(files.content_disposition("attachment", "100%.txt"),
                         "attachment; filename=\"100%.txt\"; filename*=UTF-8''100%25.txt")
        self.assertEqual(files.content_disposition("attachment", 'q"uote.txt'),
                         "attachment; filename=\"q\\\"uote.txt\"; filename*=UTF-8''q%22uote.txt")
        with self.assertRaises(ValueError):
            files.content_disposition("form-data", "x")

    def test_random_unicode_names_read_back_by_email_werkzeug_and_us(self):
        rng = random.Random(FUZZ_SEED)
        alphabet = ("abcdefghijklmnopqrstuvwxyz ABC0123456789 .-_,;=+!#$&^`|~'()[]{}@%\"\\*?:<>"
                    "éèüñçøßÅ漢字文档Ωдж🙂👍🏽\u05d0\u0627\u0301\u200d\t\x00")
        plain = "".join(char for char in alphabet if char not in "/\\\t\x00\u0301")
        for round_number in range(1500):
            if round_number % 2:
                name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
            else:  # a name with nothing to make safe: it must come back exactly
                name = "x" + "".join(rng.choice(plain) for _ in range(rng.randint(0, 60))) + "x"
            disposition = rng.choice(("inline", "attachment"))
            expected = files.safe_filename(name)
            if round_number % 2 == 0:
                self.assertEqual(expected, name)
            header = files.content_disposition(disposition, name)
            with self.subTest(name=name):
                header.encode("ascii")  # a header field value of visible ASCII only
                self.assertTrue(all(" " <= char <= "~" for char in header))
                # werkzeug prefers filename* as RFC 6266 §4.3 asks.
                self.assertEqual(werkzeug.http.parse_options_header(header), (disposition, {"filename": expected}))
                # Our own parameter reader.
                parsed_disposition, params = files.parse_parameters(header)
                params = dict(params)
                self.assertEqual(parsed_disposition, disposition)
                if "filename*" in params:
                    self.assertEqual(files.decode_ext_value(params["filename*"]), expected)
                    # The standard library's RFC 2231 reader on the extended parameter alone.
                    message = email.message.Message()
                    message["Content-Disposition"] = "%s; filename*=%s" % (disposition, params["filename*"])
                    self.assertEqual(message.get_filename(), expected)
                    charset, language, encoded = email.utils.decode_rfc2231(params["filename*"])
                    self.assertEqual((charset, urllib.parse.unquote(encoded)), ("UTF-8", expected))
                else:
                    self.assertEqual(params["filename"], expected)
                # The ASCII fallback, as email's header parser reads a quoted string.
                message = email.parser.Parser(policy=email.policy.default).parsestr(
                    "Content-Disposition: %s; filename=%s\n\n" % (
                        disposition, header.split("; filename=", 1)[1].split("; filename*=")[0]))
                fallback = message["content-disposition"].params["filename"]
                self.assertTrue(fallback.isascii())
                self.assertEqual(len(fallback), len("".join(
                    char for char in unicodedata.normalize("NFKD", expected) if not unicodedata.combining(char))))


class FileStoreOpenTest(unittest.TestCase):
    """A committed upload moves from tmp/ into its place in a file worker while a request
    may be opening it: whenever the move happens, the bytes are found."""

    def test_a_file_moved_into_place_while_it_is_looked_for_is_found(self):
        root = tempfile.mkdtemp(prefix="campfire-files-")
        self.addCleanup(shutil.rmtree, root, True)
        store = files.FileStore(root)
        key = files.generate_blob_key()
        descriptor = store.create_temp(key)
        store.write(descriptor, b"the bytes", hashlib.md5())
        os.close(descriptor)
        real_open, looked = open, []

        def open_while_it_moves(path, mode="r", *args, **kwargs):
            looked.append(path)
            try:
                return real_open(path, mode, *args, **kwargs)
            finally:
                if len(looked) == 1:
                    store.promote(key)  # the worker's move lands right after the first look
        files.open = open_while_it_moves
        self.addCleanup(delattr, files, "open")
        found = store.open(key)
        self.assertIsNotNone(found, "the file was missed while it moved: looked at %s" % looked)
        file, size = found
        with file:
            self.assertEqual((file.read(), size), (b"the bytes", 9))
        self.assertTrue(os.path.exists(store.path(key)))


class ServingTest(unittest.TestCase):
    def test_inline_and_download_types(self):
        for stored, served, disposition in (
            ("image/png", "image/png", "inline"),
            ("image/jpeg", "image/jpeg", "inline"),
            ("IMAGE/GIF", "image/gif", "inline"),
            ("image/webp", "image/webp", "inline"),
            ("video/mp4", "video/mp4", "inline"),
            ("video/webm; codecs=vp9", "video/webm", "inline"),
            ("audio/mpeg", "audio/mpeg", "inline"),
            ("application/pdf", "application/pdf", "inline"),
            ("image/svg+xml", "application/octet-stream", "attachment"),
            ("text/html", "application/octet-stream", "attachment"),
            ("text/html; charset=utf-8", "application/octet-stream", "attachment"),
            ("application/xhtml+xml", "application/octet-stream", "attachment"),
            ("text/plain", "application/octet-stream", "attachment"),
            ("application/zip", "application/octet-stream", "attachment"),
            ("application/javascript", "application/octet-stream", "attachment"),
            ("image/png\r\nSet-Cookie: x=1", "application/octet-stream", "attachment"),
            ("", "application/octet-stream", "attachment"),
            (None, "application/octet-stream", "attachment"),
        ):
            with self.subTest(stored=stored):
                content_type, how, headers = files.serving_for(stored)
                self.assertEqual((content_type, how), (served, disposition))
                headers = dict(headers)
                self.assertEqual(headers["X-Content-Type-Options"], "nosniff")
                self.assertEqual(headers["Accept-Ranges"], "bytes")
                if served == "application/pdf":
                    self.assertNotIn("Content-Security-Policy", headers)  # Chromium's viewer won't run sandboxed
                else:
                    self.assertEqual(headers["Content-Security-Policy"], "sandbox")

    def test_upload_content_type(self):
        png = files.ImageInfo("image/png", 1, 1)
        self.assertEqual(files.upload_content_type("image/jpeg", png), "image/png")       # the bytes win
        self.assertEqual(files.upload_content_type("application/octet-stream", png), "image/png")
        self.assertEqual(files.upload_content_type("image/png", None), "application/octet-stream")  # not an image
        self.assertEqual(files.upload_content_type("image/svg+xml", None), "image/svg+xml")
        self.assertEqual(files.upload_content_type("Video/MP4", None), "video/mp4")
        self.assertEqual(files.upload_content_type("nonsense", None), "application/octet-stream")
        self.assertEqual(files.upload_content_type(None, None), "application/octet-stream")


####
#### Link previews
####

# (address, allowed): the guard's whole decision table, as data.
UNFURL_ADDRESSES = (
    # IPv4 loopback, private, shared, link-local and cloud metadata
    ("127.0.0.1", False), ("127.255.255.254", False), ("127.1.2.3", False),
    ("10.0.0.1", False), ("10.255.255.255", False),
    ("172.16.0.1", False), ("172.31.255.255", False), ("172.15.255.255", True), ("172.32.0.0", True),
    ("192.168.0.1", False), ("192.168.255.255", False), ("192.169.0.1", True),
    ("100.64.0.1", False), ("100.127.255.255", False), ("100.63.255.255", True), ("100.128.0.0", True),
    ("169.254.169.254", False), ("169.254.0.1", False), ("169.253.255.255", True),
    ("168.63.129.16", False), ("168.63.129.17", True), ("168.63.129.15", True),
    # IPv4 special purpose, documentation, benchmarking, multicast, reserved
    ("0.0.0.0", False), ("0.1.2.3", False), ("192.0.0.1", False), ("192.0.0.170", False),
    ("192.0.2.1", False), ("198.51.100.7", False), ("203.0.113.9", False), ("192.88.99.1", False),
    ("198.18.0.1", False), ("198.19.255.255", False), ("198.20.0.1", True),
    ("224.0.0.1", False), ("239.255.255.250", False), ("240.0.0.1", False), ("255.255.255.255", False),
    # IPv4 public
    ("1.1.1.1", True), ("8.8.8.8", True), ("93.184.215.14", True), ("140.82.112.3", True),
    ("223.255.255.255", True), ("192.0.3.1", True), ("203.0.114.1", True),
    # IPv6 loopback, unspecified, ULA, link-local, multicast, site-local
    ("::1", False), ("::", False), ("fc00::1", False), ("fd12:3456:789a::1", False),
    ("fe80::1", False), ("fe80::1%eth0", False), ("febf::1", False), ("fec0::1", False),
    ("ff02::1", False), ("ff0e::101", False),
    # IPv6 forms that embed IPv4 (all refused, whatever they embed)
    ("::ffff:127.0.0.1", False), ("::ffff:8.8.8.8", False), ("::ffff:7f00:1", False),
    ("::127.0.0.1", False), ("::8.8.8.8", False), ("64:ff9b::7f00:1", False), ("64:ff9b::808:808", False),
    ("64:ff9b:1::a00:1", False), ("2002:7f00:1::1", False), ("2002:808:808::1", False),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False), ("2001::1", False),
    # IPv6 documentation, benchmarking, ORCHID, discard
    ("2001:db8::1", False), ("2001:db8:ffff::1", False), ("3fff::1", False), ("3fff:fff::1", False),
    ("2001:2::1", False), ("2001:10::1", False), ("2001:20::1", False), ("100::1", False),
    # IPv6 outside global unicast
    ("4000::1", False), ("1234::1", False), ("e000::1", False),
    # IPv6 public
    ("2606:4700:4700::1111", True), ("2001:4860:4860::8888", True), ("2a00:1450:4001:82b::200e", True),
    ("2620:fe::fe", True), ("2400:cb00::1", True), ("2c0f:fb50:4003::1", True), ("3ffe::1", True),
    ("2001:200::1", True),
    # Not addresses
    ("", False), ("localhost", False), ("127.1", False), ("0x7f.0.0.1", False), ("2130706433", False),
    ("[::1]", False), ("1.2.3.4.5", False), ("::ffff:999.0.0.1", False), (" 8.8.8.8", False),
)


class UnfurlGuardTest(unittest.TestCase):
    def test_address_table(self):
        self.assertGreaterEqual(len(UNFURL_ADDRESSES), 60)
        for address, allowed in UNFURL_ADDRESSES:
            with self.subTest(address=address):
                self.assertIs(files.unfurl_address_allowed(address), allowed)

    def test_non_strings_are_refused(self):
        for value in (None, 2130706433, b"8.8.8.8", ipaddress.ip_address("8.8.8.8")):
            self.assertFalse(files.unfurl_address_allowed(value))

    def test_every_blocked_network_is_refused_at_both_ends_and_its_neighbours_checked(self):
        for network in files.BLOCKED_IPV4_NETWORKS:
            for address in (network.network_address, network.broadcast_address):
                self.assertFalse(files.unfurl_address_allowed(str(address)), address)
            for neighbour in (int(network.network_address) - 1, int(network.broadcast_address) + 1):
                if 0 <= neighbour < 2 ** 32:
                    address = ipaddress.IPv4Address(neighbour)
                    blocked = any(address in other for other in files.BLOCKED_IPV4_NETWORKS)
                    self.assertEqual(files.unfurl_address_allowed(str(address)), not blocked, address)

    def test_agrees_with_pythons_is_global_for_random_addresses(self):
        """Where Python's registry and ours overlap, they agree: an address we
        allow is one Python calls global (the reverse doesn't hold: we refuse
        every IPv4-embedding form and Azure's host address)."""
        rng = random.Random(FUZZ_SEED)
        for _ in range(20000):
            if rng.random() < 0.5:
                address = ipaddress.IPv4Address(rng.getrandbits(32))
            else:
                address = ipaddress.IPv6Address(rng.getrandbits(128) if rng.random() < 0.5
                                                else (rng.randrange(0x2000, 0x4000) << 112) | rng.getrandbits(112))
            if files.unfurl_address_allowed(str(address)):
                self.assertTrue(address.is_global, address)


class OpenGraphTest(unittest.TestCase):
    def preview(self, page, url="https://example.com/articles/1", content_type="text/html; charset=utf-8"):
        if isinstance(page, str):
            page = page.encode("utf-8")
        return files.extract_link_preview(page, url, content_type)

    def test_news_article(self):
        page = """<!DOCTYPE html>
<html lang="en"><head>
<meta charset="utf-8">
<title>Ignored when og:title is there</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta property="og:site_name" content="The Daily Example">
<meta property="og:type" content="article">
<meta property="og:title" content="Rust &amp; Python: a &quot;friendly&quot; rivalry &#8212; part&nbsp;2">
<meta property="og:description" content="What happens when   two
    communities meet &hellip; and the &#x1F525; that follows.">
<meta property="og:url" content="https://example.com/articles/rust-python?utm_source=x&amp;a=1">
<meta property="og:image" content="/images/hero.jpg?w=1200&amp;h=630">
<meta property="og:image" content="https://cdn.example.com/second.jpg">
<meta property="og:image:width" content="1200">
<link rel="stylesheet" href="/main.css">
<script>var x = "<meta property='og:title' content='not this'>";</script>
</head>
<body><meta property="og:description" content="not this either"><p>Hello</p></body></html>"""
        self.assertEqual(self.preview(page), files.LinkPreview(
            title="Rust & Python: a \"friendly\" rivalry — part\u00a02",
            description="What happens when two communities meet … and the 🔥 that follows.",
            image="https://example.com/images/hero.jpg?w=1200&h=630",
            url="https://example.com/articles/rust-python?utm_source=x&a=1"))

    def test_attributes_in_odd_order_uppercase_tags_and_name_instead_of_property(self):
        page = """<HTML><HEAD>
<META CONTENT="Shouting Title" PROPERTY="OG:TITLE">
<Meta content='Single-quoted description' name=og:description>
<meta content=//images.example.net/pic.png property=og:image />
<TITLE>Fallback</TITLE>
</HEAD><BODY></BODY></HTML>"""
        self.assertEqual(self.preview(page, "http://example.org/x"), files.LinkPreview(
            "Shouting Title", "Single-quoted description", "http://images.example.net/pic.png", "http://example.org/x"))

    def test_fallbacks_to_title_and_meta_description_and_twitter(self):
        page = """<html><head><title>
   Plain   page &lt;title&gt;
</title><meta name="description" content="The meta description."></head><body>x</body></html>"""
        self.assertEqual(self.preview(page), files.LinkPreview(
            "Plain page <title>", "The meta description.", None, "https://example.com/articles/1"))
        page = """<head><meta name="twitter:title" content="Tweet title">
<meta name="twitter:description" content="Tweet text"><meta name="twitter:image" content="img/t.png">
<title>Page</title></head>"""
        self.assertEqual(self.preview(page, "https://x.example/a/b"), files.LinkPreview(
            "Tweet title", "Tweet text", "https://x.example/a/img/t.png", "https://x.example/a/b"))

    def test_only_http_images_and_urls_and_base_href(self):
        page = """<head><base href="https://static.example.com/assets/">
<meta property="og:image" content="javascript:alert(1)">
<meta property="og:url" content="javascript:alert(2)">
<meta property="og:title" content="t"></head>"""
        self.assertEqual(self.preview(page, "https://example.com/p"),
                         files.LinkPreview("t", None, None, "https://example.com/p"))
        for image, expected in (
            ("data:image/png;base64,AAAA", None),
            ("file:///etc/passwd", None),
            ("ftp://example.com/a.png", None),
            ("  https://cdn.example.com/a.png\n", "https://cdn.example.com/a.png"),
            ("https://cdn.example.com/a\n.png", "https://cdn.example.com/a.png"),
            ("pic.png", "https://static.example.com/assets/pic.png"),  # <base href> applies
            ("https://:80/x.png", None),
            ("https://host:notaport/x.png", None),
            ("https://cdn.example.com/" + "a" * 3000, None),
        ):
            with self.subTest(image=image):
                page = '<head><base href="https://static.example.com/assets/"><meta property="og:image" ' \
                       'content="%s"></head>' % image
                self.assertEqual(self.preview(page, "https://example.com/p").image, expected)
        # og:image wins over og:image:secure_url, which is used when og:image is unusable.
        page = '<head><meta property="og:image" content="javascript:x"><meta property="og:image:secure_url" ' \
               'content="https://s.example/i.png"></head>'
        self.assertEqual(self.preview(page).image, "https://s.example/i.png")

    def test_charsets_from_header_meta_and_bom(self):
        title = "Crème brûlée à la 東京"
        shift_jis = '<html><head><meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">' \
                    '<meta property="og:title" content="東京の天気"></head></html>'
        self.assertEqual(self.preview(shift_jis.encode("shift_jis"), content_type="text/html").title, "東京の天気")
        latin = '<head><meta charset="iso-8859-1"><meta property="og:title" content="Crème brûlée"></head>'
        self.assertEqual(self.preview(latin.encode("cp1252"), content_type="text/html").title, "Crème brûlée")
        # The header wins over the <meta>.
        self.assertEqual(self.preview(latin.encode("utf-8"), content_type="text/html; charset=UTF-8").title,
                         "Crème brûlée")
        page = '<head><meta property="og:title" content="%s"></head>' % title
        self.assertEqual(self.preview(b"\xef\xbb\xbf" + page.encode(), content_type="text/html; charset=latin1").title,
                         title)  # a BOM wins over everything
        self.assertEqual(self.preview(codecs_bom16(page), content_type="text/html").title, title)
        self.assertEqual(self.preview(page.encode(), content_type="text/html").title, title)  # UTF-8 by default
        for label in ("utf-7", "rot13", "hex", "no-such-charset", "utf-16"):
            meta = '<head><meta charset="%s"><meta property="og:title" content="%s"></head>' % (label, title)
            self.assertEqual(self.preview(meta.encode(), content_type="text/html").title, title, label)

    def test_reading_stops_at_the_end_of_the_head_and_at_1_mib(self):
        late = '<head><meta property="og:title" content="early">' + " " * files.MAX_PREVIEW_PAGE_BYTES + \
               '<meta property="og:description" content="too late"></head>'
        preview = self.preview(late)
        self.assertEqual((preview.title, preview.description), ("early", None))
        reader_saw = self.preview('<head></head><meta property="og:title" content="after head">')
        self.assertIsNone(reader_saw.title)

    def test_markup_that_html_parser_is_slow_on_is_bounded(self):
        # Each of these, 1 MiB long, once cost html.parser minutes (an unclosed comment
        # is rescanned once per "<" at close()) or a Python call per character.
        for unit in ("<!--", "<", "< ", "</>", "<a/>", "&#1234;", "<![CDATA[", "<?x", "<title>&amp;"):
            with self.subTest(unit=unit):
                filler = unit * (files.MAX_PREVIEW_PAGE_BYTES // len(unit))
                page = '<head><meta property="og:title" content="kept">' + filler
                self.assertEqual(self.preview(page).title, "kept")

    def test_a_head_with_too_much_markup_is_read_no_further(self):
        filler = '<link rel="preload" href="/a.js">' * (files.MAX_PREVIEW_MARKUP_ITEMS + 1)
        page = "<head>%s<meta property=\"og:title\" content=\"too late\"></head>" % filler
        self.assertIsNone(self.preview(page).title)
        page = "<head>%s<meta property=\"og:title\" content=\"in time\"></head>" % filler[:100 * 33]
        self.assertEqual(self.preview(page).title, "in time")

    def test_title_text_with_stray_less_than_and_references(self):
        page = "<head><title>Fish &amp; chips < 5 &pound; &#x263A; &#9731;</title></head>"
        self.assertEqual(self.preview(page).title, "Fish & chips < 5 £ ☺ ☃")

    def test_long_values_are_cut_and_empty_ones_skipped(self):
        page = '<head><meta property="og:title" content="   "><title>%s</title>' \
               '<meta property="og:description" content="%s"></head>' % ("t" * 1000, "d" * 5000)
        preview = self.preview(page)
        self.assertEqual(len(preview.title), files.MAX_PREVIEW_TITLE_CHARS)
        self.assertTrue(preview.title.endswith("…"))
        self.assertEqual(len(preview.description), files.MAX_PREVIEW_DESCRIPTION_CHARS)

    def test_seeded_garbage_never_raises(self):
        rng = random.Random(FUZZ_SEED)
        pieces = ("<", ">", "<head>", "</head>", "<meta ", 'property="og:title" ', "content='", "'", '"', "&",
                  "&amp;", "&#", "&#x", "<!--", "-->", "<![CDATA[", "<!", "<?", "<title>", "</title>", "<script>",
                  "=", " ", "\x00", "é", "<base href=", "og:image", "javascript:", "//", "http://")
        for _ in range(1500):
            page = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
            data = page.encode("utf-8") if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 200))
            preview = files.extract_link_preview(data, rng.choice(("https://e.example/", "not a url", "")), None)
            for value in (preview.image, preview.url):
                self.assertTrue(value is None or value.startswith(("http://", "https://")), value)


def codecs_bom16(text):
    return b"\xff\xfe" + text.encode("utf-16-le")


####
#### The file itself
####

class StandardLibraryOnlyTest(unittest.TestCase):
    def test_campfire_py_imports_only_the_standard_library(self):
        tree = ast.parse(pathlib.Path(files.__file__).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module.split(".")[0])
        self.assertTrue(imported)
        self.assertLessEqual(imported, set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names))


if __name__ == "__main__":
    unittest.main()
