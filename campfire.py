#!/usr/bin/env python3
"""Campfire in one file: a self-hosted team chat, compatible with Once Campfire.

    python3 campfire.py            serve on http://0.0.0.0:3000
    python3 campfire.py --help     every command and flag

Only the Python standard library is used. The file reads top to bottom, from
pure code to the code that touches the world:

  1. Constants and limits     every tunable number, with its unit and reason
  2. Errors                   one exception tree, mapped to statuses at the edge
  3. Utilities                time, HTML escaping, tokens, passwords, rate limits
  4. HTTP/1.1                 a sans-I/O request parser and the response writer
  5. Storage                  Campfire's SQLite schema, migrations, atomic()
  6. Domain                   accounts, users and sessions
  7. Rendering                HTML pages, all through one escaping helper
  8. Routes                   the router and every handler, by feature
  9. The application          App: a request in, a response out (no sockets)
 10. The server               asyncio connections, timeouts, signals
 11. Command line             main()
"""

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import hmac
import html
import itertools
import json
import logging
import os
import re
import resource
import secrets
import signal
import socket
import sqlite3
import sys
import time
import traceback
import urllib.parse
import zlib
from dataclasses import dataclass, field
from email.utils import formatdate

VERSION = "0.1.0"

log = logging.getLogger("campfire")


####
#### 1. Constants and limits
####

DEFAULT_PORT = 3000
DEFAULT_BIND = "0.0.0.0"
HERE = os.path.dirname(os.path.abspath(__file__))
STATIC_ROOT = os.path.join(HERE, "static")

# HTTP parsing. Each limit answers with the status RFC 9110/6585 gives it.
MAX_REQUEST_LINE_BYTES = 8 * 1024         # 414 past it; common server default
MAX_HEADER_BYTES = 64 * 1024              # 431 past it (whole header block)
MAX_HEADER_FIELDS = 100                   # 431 past it
MAX_CHUNK_LINE_BYTES = 1024               # a chunk-size line with extensions
DEFAULT_BODY_LIMIT = 1024 * 1024          # 413 past it unless a route says more
FORM_BODY_LIMIT = 64 * 1024               # sign-in, profile and similar forms
MAX_FORM_FIELDS = 1000                    # urlencoded/multipart pairs per request

# Connection timing, in seconds.
HEADER_TIMEOUT = 10.0        # a request head must arrive within this (slowloris)
BODY_IDLE_TIMEOUT = 30.0     # a body that stops arriving for this long is dropped
KEEPALIVE_TIMEOUT = 30.0     # an idle keep-alive connection is closed after this
SHUTDOWN_GRACE = 10.0        # in-flight requests get this long on SIGTERM
SWEEP_INTERVAL = 1.0         # how often deadlines are checked

# Connections: stay below the process's open-file limit, keeping room for the
# database, its WAL, static files and the listening socket.
FILE_DESCRIPTOR_RESERVE = 64
MAX_WRITE_BUFFER_BYTES = 1024 * 1024  # stop reading a client that doesn't read

GZIP_MIN_BYTES = 1024        # smaller bodies aren't worth the CPU
GZIP_LEVEL = 6
GZIP_TYPES = ("text/", "application/json", "application/javascript",
              "image/svg+xml", "application/manifest+json")

# Sessions and sign-in (CAMPFIRE.md, Sessions).
SESSION_COOKIE = "session_token"
SESSION_COOKIE_MAX_AGE = 20 * 365 * 24 * 3600   # Rails' "permanent" cookie
SESSION_REFRESH_SECONDS = 3600                  # last_active_at, at most hourly
SIGN_IN_LIMIT = (10, 180.0)                     # 10 attempts per 3 minutes per IP
SIGN_UP_LIMIT = (10, 180.0)
RATE_LIMITER_MAX_KEYS = 10_000                  # bounded memory under attack
MAX_PASSWORD_BYTES = 72                         # bcrypt's limit, kept for all
MAX_NAME_CHARS = 100
MAX_EMAIL_CHARS = 254                           # RFC 5321 path limit

# scrypt (RFC 7914) for our own password digests: 16 MiB of memory per hash.
SCRYPT_N = 2 ** 14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_SALT_BYTES = 16
SCRYPT_KEY_BYTES = 32
SCRYPT_MAXMEM = 64 * 1024 * 1024

LAST_ROOM_COOKIE = "last_room"
JOIN_CODE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

STATUS_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created",
    204: "No Content", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    409: "Conflict", 413: "Content Too Large", 414: "URI Too Long",
    415: "Unsupported Media Type", 417: "Expectation Failed",
    422: "Unprocessable Content", 426: "Upgrade Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

MIME_TYPES = {
    ".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".html": "text/html; charset=utf-8",
    ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
    ".ico": "image/x-icon", ".webp": "image/webp", ".jpg": "image/jpeg",
    ".gif": "image/gif", ".txt": "text/plain; charset=utf-8",
    ".webmanifest": "application/manifest+json", ".woff2": "font/woff2",
}

# No inline script anywhere (PRODUCT.md §5); styles come from our files too.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


####
#### 2. Errors
####

class CampfireError(Exception):
    """The root of everything this file raises on purpose.

    CampfireError
     ├── HttpError               answered with .status at the HTTP boundary
     │    ├── BadRequest         400: malformed request or form
     │    ├── Forbidden          403: signed in, but not allowed
     │    ├── NotFound           404: also for what you may not know exists
     │    ├── PayloadTooLarge    413
     │    ├── Unprocessable      422: well-formed but invalid (an empty message)
     │    └── TooManyRequests    429: a rate limit
     └── ConfigError             bad configuration: the CLI prints it, exits 1
    """


class HttpError(CampfireError):
    status = 500

    def __init__(self, message="", status=None, headers=()):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.message = message or STATUS_REASONS.get(self.status, "Error")
        self.headers = list(headers)


class BadRequest(HttpError):
    status = 400


class Forbidden(HttpError):
    status = 403


class NotFound(HttpError):
    status = 404


class PayloadTooLarge(HttpError):
    status = 413


class Unprocessable(HttpError):
    status = 422


class TooManyRequests(HttpError):
    status = 429


class ConfigError(CampfireError):
    pass


####
#### 3. Utilities
####

def utc_now_text(now=None):
    """Datetimes as Rails writes them into SQLite: UTC, microseconds."""
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)) + ".%06d" % int(now % 1 * 1_000_000)


def parse_db_time(text):
    """Rails' 'YYYY-MM-DD HH:MM:SS[.ffffff]' (UTC) → unix seconds, or None."""
    if not text:
        return None
    import calendar
    whole, _, fraction = str(text).partition(".")
    try:
        seconds = calendar.timegm(time.strptime(whole[:19], "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return None
    return seconds + (int(fraction[:6].ljust(6, "0")) / 1e6 if fraction[:6].isdigit() else 0)


class HTML(str):
    """Markup known to be safe. Everything else is escaped on the way in.

    HTML("<b>{}</b>").format(name) escapes name unless it is already HTML, and
    HTML(", ").join(parts) escapes each part, so forgetting to escape is not
    something a render function can do.
    """
    __slots__ = ()

    def format(self, *args, **kwargs):
        return HTML(str.format(self, *map(escape, args),
                               **{key: escape(value) for key, value in kwargs.items()}))

    def join(self, parts):
        return HTML(str.join(self, map(escape, parts)))

    def __add__(self, other):
        return HTML(str.__add__(self, escape(other)))


def escape(value):
    if isinstance(value, HTML):
        return value
    if value is None:
        return HTML("")
    return HTML(html.escape(str(value), quote=True))


def random_token(nbytes=32):
    return secrets.token_urlsafe(nbytes)


def token_digest(token):
    """Session tokens are stored hashed: a leaked database signs nobody in."""
    return hashlib.sha256(token.encode()).hexdigest()


def generate_join_code():
    raw = "".join(secrets.choice(JOIN_CODE_ALPHABET) for _ in range(12))
    return "-".join(raw[i:i + 4] for i in range(0, 12, 4))


def b64url_encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """HMAC-signed, optionally expiring values for links and tokens (SECRET_KEY_BASE)."""

    def __init__(self, secret):
        self._key = hashlib.sha256(b"campfire signer\0" + secret.encode()).digest()

    def sign(self, value, purpose, expires_at=None):
        payload = b64url_encode(json.dumps([value, purpose, expires_at], separators=(",", ":")).encode())
        return payload + "--" + self._mac(payload)

    def unsign(self, token, purpose, now=None):
        payload, _, mac = str(token).rpartition("--")
        if not payload or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            value, signed_purpose, expires_at = json.loads(b64url_decode(payload))
        except (ValueError, TypeError, binascii.Error):
            return None
        if signed_purpose != purpose:
            return None
        if expires_at is not None and (time.time() if now is None else now) > expires_at:
            return None
        return value

    def _mac(self, payload):
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()[:40]


# Passwords: scrypt for ours, the system's crypt(3) for bcrypt digests Rails wrote.

def hash_password(password):
    salt = os.urandom(SCRYPT_SALT_BYTES)
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                         maxmem=SCRYPT_MAXMEM, dklen=SCRYPT_KEY_BYTES)
    return "$scrypt$n=%d,r=%d,p=%d$%s$%s" % (SCRYPT_N, SCRYPT_R, SCRYPT_P,
                                             b64url_encode(salt), b64url_encode(key))


class PasswordUnsupported(CampfireError):
    """A digest this system can't check (bcrypt without crypt(3) support)."""


def check_password(password, digest):
    """True or False; raises PasswordUnsupported when the digest can't be checked here."""
    if not digest:
        return False
    candidate = password.encode()[:MAX_PASSWORD_BYTES]
    if digest.startswith("$scrypt$"):
        try:
            _, _, params, salt, key = digest.split("$")
            n, r, p = (int(part.split("=")[1]) for part in params.split(","))
            expected = b64url_decode(key)
            actual = hashlib.scrypt(candidate, salt=b64url_decode(salt), n=n, r=r, p=p,
                                    maxmem=SCRYPT_MAXMEM, dklen=len(expected))
        except (ValueError, IndexError, binascii.Error):
            return False
        return hmac.compare_digest(actual, expected)
    if digest.startswith(("$2a$", "$2b$", "$2y$")):
        result = _system_crypt(candidate, digest.encode())
        if result is None:
            raise PasswordUnsupported("bcrypt is not supported by this system's crypt(3)")
        return hmac.compare_digest(result, digest.encode())
    return False


def _system_crypt(password, setting):
    """crypt(3) through ctypes; None when the library is missing or refuses bcrypt."""
    name = ctypes.util.find_library("crypt")
    if not name or b"\0" in password:
        return None
    try:
        library = ctypes.CDLL(name)
        crypt = library.crypt
    except (OSError, AttributeError):
        return None
    crypt.restype = ctypes.c_char_p
    crypt.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    result = crypt(password, setting)
    if not result or not result.startswith(setting[:4]):
        return None
    return result


class RateLimiter:
    """At most `limit` hits per `window` seconds per key (a sliding window log)."""

    def __init__(self, limit, window, max_keys=RATE_LIMITER_MAX_KEYS):
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self._hits = {}

    def hit(self, key, now=None):
        """Record a hit; False when the key is over its limit."""
        now = time.monotonic() if now is None else now
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.max_keys:
                self._prune(now)
            hits = self._hits[key] = collections.deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return False
        hits.append(now)
        return True

    def _prune(self, now):
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.window]:
            del self._hits[key]
        while len(self._hits) >= self.max_keys:  # still full: forget the oldest keys
            del self._hits[next(iter(self._hits))]


####
#### 4. HTTP/1.1 (RFC 9110, RFC 9112)
####
# The parser is sans-I/O: receive_data(bytes) in, Request objects out through
# next_request(). It never touches a socket or a clock, so the server and the
# tests drive the same code. Every malformed input raises HttpError with the
# status RFC 9112 gives it; the server answers it and closes the connection.

_TOKEN_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_FIELD_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE_RE = re.compile(rb"^([0-9A-Fa-f]{1,16})[ \t]*(;.*)?$")


class Request:
    """One parsed HTTP request, plus what the application learns about it."""

    __slots__ = ("method", "target", "path", "query_string", "version", "headers", "body",
                 "keep_alive", "remote_addr", "scheme", "id", "started", "user", "session",
                 "set_cookies", "_query", "_form", "_cookies", "files")

    def __init__(self, method, target, version="HTTP/1.1", headers=None, body=b""):
        self.method = method
        self.target = target
        path, _, self.query_string = target.partition("?")
        self.path = path
        self.version = version
        self.headers = headers if headers is not None else {}
        self.body = body
        connection = self.headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            self.keep_alive = "keep-alive" in connection
        else:
            self.keep_alive = "close" not in connection
        self.remote_addr = "127.0.0.1"
        self.scheme = "http"
        self.id = ""
        self.started = 0.0
        self.user = None
        self.session = None
        self.set_cookies = []
        self.files = {}
        self._query = self._form = self._cookies = None

    def header(self, name, default=""):
        return self.headers.get(name, default)

    @property
    def query(self):
        if self._query is None:
            self._query = FormData(urllib.parse.parse_qsl(self.query_string, keep_blank_values=True,
                                                          max_num_fields=MAX_FORM_FIELDS))
        return self._query

    @property
    def form(self):
        """urlencoded or multipart fields; files go to request.files."""
        if self._form is None:
            content_type = self.headers.get("content-type", "")
            if content_type.startswith("multipart/form-data"):
                fields, self.files = parse_multipart(self.body, content_type)
                self._form = FormData(fields)
            elif content_type.startswith("application/x-www-form-urlencoded") or not content_type:
                try:
                    pairs = urllib.parse.parse_qsl(self.body.decode("utf-8"), keep_blank_values=True,
                                                   max_num_fields=MAX_FORM_FIELDS)
                except (UnicodeDecodeError, ValueError) as error:
                    raise BadRequest("The form could not be read.") from error
                self._form = FormData(pairs)
            else:
                self._form = FormData([])
        return self._form

    @property
    def cookies(self):
        if self._cookies is None:
            self._cookies = parse_cookies(self.headers.get("cookie", ""))
        return self._cookies

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise BadRequest("The JSON body could not be read.") from error

    @property
    def origin(self):
        return "%s://%s" % (self.scheme, self.headers.get("host", "localhost"))


class FormData:
    """Ordered form fields with Campfire's bracket names kept literally:
    form.get("user[name]"), form.getlist("user_ids[]")."""

    __slots__ = ("_pairs", "_first")

    def __init__(self, pairs):
        self._pairs = list(pairs)
        self._first = {}
        for key, value in self._pairs:
            self._first.setdefault(key, value)

    def get(self, key, default=None):
        return self._first.get(key, default)

    def getlist(self, key):
        return [value for name, value in self._pairs if name == key]

    def __contains__(self, key):
        return key in self._first

    def text(self, key, limit=None):
        """A stripped string field ('' when missing); 422 past `limit` characters."""
        value = str(self._first.get(key, "")).strip()
        if limit is not None and len(value) > limit:
            raise Unprocessable("%s is too long." % key)
        return value


def parse_cookies(header):
    cookies = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = urllib.parse.unquote(value.strip().strip('"'))
    return cookies


def parse_multipart(body, content_type):
    """multipart/form-data (RFC 7578) → ([(name, value)], {name: UploadedFile})."""
    match = re.search(r'boundary="?([^";]{1,200})"?', content_type)
    if not match:
        raise BadRequest("The multipart boundary is missing.")
    delimiter = b"--" + match.group(1).encode("latin-1")
    fields, files = [], {}
    parts = body.split(delimiter)
    if len(parts) < 3 or not parts[-1].startswith(b"--"):
        raise BadRequest("The multipart body is incomplete.")
    for part in parts[1:-1][:MAX_FORM_FIELDS]:
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep or not data.endswith(b"\r\n"):
            raise BadRequest("A multipart part is malformed.")
        data = data[:-2]
        disposition = {}
        part_type = "application/octet-stream"
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                for item in value.split(";")[1:]:
                    key, _, raw = item.strip().partition("=")
                    disposition[key.lower()] = raw.strip().strip('"')
            elif name.strip().lower() == "content-type":
                part_type = value.strip()
        name = disposition.get("name")
        if name is None:
            continue
        if "filename" in disposition:
            files[name] = UploadedFile(disposition["filename"], part_type, data)
        else:
            fields.append((name, data.decode("utf-8", "replace")))
    return fields, files


@dataclass
class UploadedFile:
    filename: str
    content_type: str
    data: bytes


class HttpParser:
    """Bytes in, Request objects out, in order (pipelining works for free).

    `body_limit(method, path)` names the largest body a route accepts; a larger
    Content-Length is refused with 413 before any of the body is read.
    """

    HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILERS = range(6)

    def __init__(self, body_limit=None):
        self._body_limit = body_limit or (lambda method, path: DEFAULT_BODY_LIMIT)
        self._buffer = bytearray()
        self._state = self.HEAD
        self._request = None
        self._remaining = 0
        self._limit = 0
        self._chunks = None
        self._continue_sent = False

    @property
    def has_partial_request(self):
        return bool(self._buffer) or self._state != self.HEAD

    @property
    def reading_body(self):
        return self._state != self.HEAD

    def receive_data(self, data):
        self._buffer += data

    def wants_continue(self):
        """True once, when a head asked for `Expect: 100-continue` and its body is due."""
        if (self._state != self.HEAD and not self._continue_sent and self._request is not None
                and self._request.headers.get("expect", "").lower() == "100-continue"):
            self._continue_sent = True
            return True
        return False

    def next_request(self):
        """The next complete Request, or None when more bytes are needed."""
        while True:
            if self._state == self.HEAD:
                if not self._parse_head():
                    return None
                if self._state == self.HEAD:
                    return self._finish()
            elif self._state == self.BODY:
                if len(self._buffer) < self._remaining:
                    return None
                self._request.body = bytes(self._buffer[:self._remaining])
                del self._buffer[:self._remaining]
                return self._finish()
            elif self._state in (self.CHUNK_SIZE, self.TRAILERS):
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_CHUNK_LINE_BYTES:
                        raise BadRequest("A chunk line is too long.")
                    return None
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 2]
                if self._state == self.TRAILERS:
                    if not line:
                        self._request.body = b"".join(self._chunks)
                        return self._finish()
                    self._remaining += len(line)  # trailers count against the head limit
                    if self._remaining > MAX_HEADER_BYTES:
                        raise HttpError("Too many trailer fields.", 431)
                    continue
                match = _CHUNK_SIZE_RE.match(line)
                if not match:
                    raise BadRequest("A chunk size is malformed.")
                size = int(match.group(1), 16)
                if size == 0:
                    self._state, self._remaining = self.TRAILERS, 0
                    continue
                self._limit -= size
                if self._limit < 0:
                    raise PayloadTooLarge("The request body is too large.")
                self._state, self._remaining = self.CHUNK_DATA, size
            elif self._state == self.CHUNK_DATA:
                if len(self._buffer) < self._remaining + 2:
                    return None
                if self._buffer[self._remaining:self._remaining + 2] != b"\r\n":
                    raise BadRequest("A chunk is not followed by CRLF.")
                self._chunks.append(bytes(self._buffer[:self._remaining]))
                del self._buffer[:self._remaining + 2]
                self._state = self.CHUNK_SIZE

    def _finish(self):
        request, self._request = self._request, None
        self._state, self._chunks, self._continue_sent = self.HEAD, None, False
        return request

    def _parse_head(self):
        buffer = self._buffer
        # RFC 9112 §2.2: ignore at least one empty line before a request line.
        while buffer[:2] == b"\r\n":
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            line_end = buffer.find(b"\r\n")
            if line_end < 0 and len(buffer) > MAX_REQUEST_LINE_BYTES:
                raise HttpError("The request line is too long.", 414)
            if len(buffer) > MAX_HEADER_BYTES:
                if 0 <= line_end <= MAX_REQUEST_LINE_BYTES or line_end < 0:
                    raise HttpError("The request headers are too large.", 431)
            if line_end > MAX_REQUEST_LINE_BYTES:
                raise HttpError("The request line is too long.", 414)
            return False
        if end + 4 > MAX_HEADER_BYTES + MAX_REQUEST_LINE_BYTES:
            raise HttpError("The request headers are too large.", 431)
        head = bytes(buffer[:end])
        del buffer[:end + 4]
        lines = head.split(b"\r\n")
        request_line = lines[0]
        if len(request_line) > MAX_REQUEST_LINE_BYTES:
            raise HttpError("The request line is too long.", 414)
        if len(lines) - 1 > MAX_HEADER_FIELDS:
            raise HttpError("Too many header fields.", 431)
        if end - len(request_line) > MAX_HEADER_BYTES:
            raise HttpError("The request headers are too large.", 431)
        parts = request_line.split(b" ")
        if len(parts) != 3:
            raise BadRequest("The request line is malformed.")
        method, target, version = parts
        if not _TOKEN_RE.match(method):
            raise BadRequest("The method is malformed.")
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            if re.match(rb"^HTTP/\d\.\d$", version):
                raise HttpError("Only HTTP/1.0 and HTTP/1.1 are spoken here.", 505)
            raise BadRequest("The HTTP version is malformed.")
        if not target or any(byte <= 0x20 or byte >= 0x7f for byte in target):
            raise BadRequest("The request target is malformed.")
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN_RE.match(name):
                # Covers obs-fold (a line starting with space) and "Name : value" (RFC 9112 §5.1).
                raise BadRequest("A header field is malformed.")
            value = value.strip(b" \t")
            if _FIELD_VALUE_BAD.search(value):
                raise BadRequest("A header field value holds control characters.")
            key = name.decode("ascii").lower()
            text = value.decode("latin-1")
            if key in headers:
                if key in ("content-length", "host"):
                    if headers[key] != text:
                        raise BadRequest("Conflicting %s headers." % key)
                    continue
                headers[key] = headers[key] + ("; " if key == "cookie" else ", ") + text
            else:
                headers[key] = text
        version_text = version.decode()
        if version_text == "HTTP/1.1" and "host" not in headers:
            raise BadRequest("HTTP/1.1 requests need a Host header.")
        target_text = target.decode("ascii")
        if not target_text.startswith("/"):
            if target_text.startswith(("http://", "https://")):  # absolute-form, RFC 9112 §3.2.2
                split = urllib.parse.urlsplit(target_text)
                target_text = (split.path or "/") + ("?" + split.query if split.query else "")
            elif not (target_text == "*" and method == b"OPTIONS"):
                raise BadRequest("The request target is malformed.")
        request = Request(method.decode("ascii"), target_text, version_text, headers)
        expect = headers.get("expect")
        if expect is not None and expect.lower() != "100-continue":
            raise HttpError("Only 100-continue is understood.", 417)
        transfer_encoding = headers.get("transfer-encoding")
        content_length = headers.get("content-length")
        limit = self._body_limit(request.method, request.path)
        if transfer_encoding is not None:
            # RFC 9112 §6.1: both headers is a smuggling attempt; only chunked is spoken.
            if content_length is not None:
                raise BadRequest("Both Transfer-Encoding and Content-Length were sent.")
            if transfer_encoding.strip().lower() != "chunked":
                raise HttpError("Only chunked transfer coding is understood.", 501)
            self._request, self._state, self._chunks, self._limit = request, self.CHUNK_SIZE, [], limit
        elif content_length is not None:
            if not content_length.isdigit() or len(content_length) > 18:
                raise BadRequest("Content-Length is malformed.")
            length = int(content_length)
            if length > limit:
                raise PayloadTooLarge("The request body is too large.")
            self._request = request
            if length:
                self._state, self._remaining = self.BODY, length
        else:
            self._request = request
        return True


def serialize_response(status, headers, body, *, keep_alive, head_only=False, date=None):
    """The bytes of a response: status line, headers, Date, Content-Length, body."""
    lines = ["HTTP/1.1 %d %s" % (status, STATUS_REASONS.get(status, "Status"))]
    for name, value in headers:
        lines.append("%s: %s" % (name, value))
    lines.append("Date: " + (date or formatdate(usegmt=True)))
    if status >= 200 and status not in (204, 304):
        lines.append("Content-Length: %d" % len(body))
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if head_only or status in (204, 304):
        return head
    return head + body


class Response:
    """What a handler returns. Bodies are bytes by the time they are sent."""

    __slots__ = ("status", "body", "headers", "content_type", "compressible", "upgrade")

    def __init__(self, body=b"", status=200, content_type="text/html; charset=utf-8", headers=None):
        self.status = status
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.content_type = content_type
        self.headers = list(headers or ())
        self.compressible = True
        self.upgrade = None

    def header(self, name):
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")


def redirect(location, status=303):
    return Response(b"", status, headers=[("Location", location)])


def json_response(value, status=200, headers=None):
    return Response(json.dumps(value, separators=(",", ":"), ensure_ascii=False), status,
                    "application/json", headers)


def gzip_bytes(data, level=GZIP_LEVEL):
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip wrapper
    return compressor.compress(data) + compressor.flush()


def accepts_gzip(request):
    accept = request.headers.get("accept-encoding", "")
    if "gzip" not in accept:
        return False
    for part in accept.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


####
#### 5. Storage
####
# Campfire's own schema (db/schema.rb), written the way Rails writes it for
# SQLite, so a database either program created opens in the other. Our
# additions live in new indexes and tables, never in changes to Campfire's.

SCHEMA = """
CREATE TABLE IF NOT EXISTS "accounts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "join_code" varchar NOT NULL, "custom_styles" text, "settings" json, "singleton_guard" integer DEFAULT 0 NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS "index_accounts_on_singleton_guard" ON "accounts" ("singleton_guard");
CREATE TABLE IF NOT EXISTS "users" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "email_address" varchar, "password_digest" varchar, "role" integer DEFAULT 0 NOT NULL, "status" integer DEFAULT 0 NOT NULL, "bio" text, "bot_token" varchar, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS "index_users_on_email_address" ON "users" ("email_address");
CREATE UNIQUE INDEX IF NOT EXISTS "index_users_on_bot_token" ON "users" ("bot_token");
CREATE TABLE IF NOT EXISTS "sessions" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "token" varchar NOT NULL, "ip_address" varchar, "user_agent" varchar, "last_active_at" datetime(6) NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_758836b4f0" FOREIGN KEY ("user_id") REFERENCES "users" ("id"));
CREATE UNIQUE INDEX IF NOT EXISTS "index_sessions_on_token" ON "sessions" ("token");
CREATE INDEX IF NOT EXISTS "index_sessions_on_user_id" ON "sessions" ("user_id");
CREATE TABLE IF NOT EXISTS "rooms" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar, "type" varchar NOT NULL, "creator_id" bigint NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE TABLE IF NOT EXISTS "memberships" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "room_id" integer NOT NULL, "user_id" integer NOT NULL, "involvement" varchar DEFAULT 'mentions', "connections" integer DEFAULT 0 NOT NULL, "connected_at" datetime(6), "unread_at" datetime(6), "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS "index_memberships_on_room_id_and_user_id" ON "memberships" ("room_id", "user_id");
CREATE INDEX IF NOT EXISTS "index_memberships_on_room_id_and_created_at" ON "memberships" ("room_id", "created_at");
CREATE INDEX IF NOT EXISTS "index_memberships_on_room_id" ON "memberships" ("room_id");
CREATE INDEX IF NOT EXISTS "index_memberships_on_user_id" ON "memberships" ("user_id");
CREATE TABLE IF NOT EXISTS "messages" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "room_id" integer NOT NULL, "creator_id" integer NOT NULL, "client_message_id" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_a8db0fb63a" FOREIGN KEY ("room_id") REFERENCES "rooms" ("id"), CONSTRAINT "fk_rails_761a2f12b3" FOREIGN KEY ("creator_id") REFERENCES "users" ("id"));
CREATE INDEX IF NOT EXISTS "index_messages_on_room_id" ON "messages" ("room_id");
CREATE INDEX IF NOT EXISTS "index_messages_on_creator_id" ON "messages" ("creator_id");
CREATE TABLE IF NOT EXISTS "action_text_rich_texts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "body" text, "record_type" varchar NOT NULL, "record_id" bigint NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS "index_action_text_rich_texts_uniqueness" ON "action_text_rich_texts" ("record_type", "record_id", "name");
CREATE TABLE IF NOT EXISTS "boosts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "message_id" integer NOT NULL, "booster_id" integer NOT NULL, "content" varchar(16) NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_0a5f6f6c1e" FOREIGN KEY ("message_id") REFERENCES "messages" ("id"));
CREATE INDEX IF NOT EXISTS "index_boosts_on_message_id" ON "boosts" ("message_id");
CREATE INDEX IF NOT EXISTS "index_boosts_on_booster_id" ON "boosts" ("booster_id");
CREATE TABLE IF NOT EXISTS "searches" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "query" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_e192b86393" FOREIGN KEY ("user_id") REFERENCES "users" ("id"));
CREATE INDEX IF NOT EXISTS "index_searches_on_user_id" ON "searches" ("user_id");
CREATE TABLE IF NOT EXISTS "webhooks" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "url" varchar, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_51bf96d3bc" FOREIGN KEY ("user_id") REFERENCES "users" ("id"));
CREATE INDEX IF NOT EXISTS "index_webhooks_on_user_id" ON "webhooks" ("user_id");
CREATE TABLE IF NOT EXISTS "push_subscriptions" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "endpoint" varchar, "p256dh_key" varchar, "auth_key" varchar, "user_agent" varchar, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_43d43720fc" FOREIGN KEY ("user_id") REFERENCES "users" ("id"));
CREATE INDEX IF NOT EXISTS "index_push_subscriptions_on_user_id" ON "push_subscriptions" ("user_id");
CREATE INDEX IF NOT EXISTS "idx_on_endpoint_p256dh_key_auth_key_7553014576" ON "push_subscriptions" ("endpoint", "p256dh_key", "auth_key");
CREATE TABLE IF NOT EXISTS "bans" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "ip_address" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_070022cd76" FOREIGN KEY ("user_id") REFERENCES "users" ("id"));
CREATE INDEX IF NOT EXISTS "index_bans_on_user_id" ON "bans" ("user_id");
CREATE INDEX IF NOT EXISTS "index_bans_on_ip_address" ON "bans" ("ip_address");
CREATE TABLE IF NOT EXISTS "active_storage_blobs" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "key" varchar NOT NULL, "filename" varchar NOT NULL, "content_type" varchar, "metadata" text, "service_name" varchar NOT NULL, "byte_size" bigint NOT NULL, "checksum" varchar, "created_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS "index_active_storage_blobs_on_key" ON "active_storage_blobs" ("key");
CREATE TABLE IF NOT EXISTS "active_storage_attachments" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "record_type" varchar NOT NULL, "record_id" bigint NOT NULL, "blob_id" bigint NOT NULL, "created_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_c3b3935057" FOREIGN KEY ("blob_id") REFERENCES "active_storage_blobs" ("id"));
CREATE INDEX IF NOT EXISTS "index_active_storage_attachments_on_blob_id" ON "active_storage_attachments" ("blob_id");
CREATE UNIQUE INDEX IF NOT EXISTS "index_active_storage_attachments_uniqueness" ON "active_storage_attachments" ("record_type", "record_id", "name", "blob_id");
CREATE TABLE IF NOT EXISTS "active_storage_variant_records" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "blob_id" bigint NOT NULL, "variation_digest" varchar NOT NULL, CONSTRAINT "fk_rails_993965df05" FOREIGN KEY ("blob_id") REFERENCES "active_storage_blobs" ("id"));
CREATE UNIQUE INDEX IF NOT EXISTS "index_active_storage_variant_records_uniqueness" ON "active_storage_variant_records" ("blob_id", "variation_digest");
CREATE VIRTUAL TABLE IF NOT EXISTS "message_search_index" USING fts5(body, tokenize=porter);
"""

# Ordered, named, each applied once inside a transaction and recorded in
# campfire_py_migrations (Rails' schema_migrations is left alone).
MIGRATIONS = (
    ("0001_campfire_schema", SCHEMA),
    ("0002_message_paging_indexes", """
        CREATE INDEX IF NOT EXISTS "index_messages_on_room_id_and_created_at" ON "messages" ("room_id", "created_at");
        CREATE INDEX IF NOT EXISTS "index_messages_on_room_id_and_updated_at" ON "messages" ("room_id", "updated_at");
    """),
)

SQLITE_BUSY_TIMEOUT_MS = 5000


class Database:
    """One SQLite connection in WAL mode, used from the event loop's thread."""

    def __init__(self, path):
        self.path = path
        try:
            self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                              cached_statements=256)
            self.connection.row_factory = sqlite3.Row
            self.connection.execute("PRAGMA busy_timeout = %d" % SQLITE_BUSY_TIMEOUT_MS)
            mode = self.connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise ConfigError("%s is not a usable SQLite database (%s)." % (path, error)) from error
        if mode.lower() != "wal":
            raise ConfigError("%s could not be switched to WAL mode." % path)
        # FULL: a commit is on disk before the response that acknowledges it.
        self.connection.execute("PRAGMA synchronous = FULL")
        self.connection.execute("PRAGMA foreign_keys = ON")
        self._depth = 0
        self._check_fts5()

    def _check_fts5(self):
        try:
            self.connection.execute("CREATE VIRTUAL TABLE temp.campfire_fts5_probe USING fts5(x)")
            self.connection.execute("DROP TABLE temp.campfire_fts5_probe")
        except sqlite3.OperationalError as error:
            raise ConfigError("This Python's SQLite (%s) was built without FTS5, which search needs."
                              % sqlite3.sqlite_version) from error

    def execute(self, sql, params=()):
        return self.connection.execute(sql, params)

    def one(self, sql, params=()):
        return self.connection.execute(sql, params).fetchone()

    def all(self, sql, params=()):
        return self.connection.execute(sql, params).fetchall()

    def value(self, sql, params=()):
        row = self.connection.execute(sql, params).fetchone()
        return None if row is None else row[0]

    @contextlib.contextmanager
    def atomic(self):
        """A transaction (BEGIN IMMEDIATE); nested calls become savepoints."""
        if self._depth:
            name = "sp%d" % self._depth
            self.connection.execute("SAVEPOINT " + name)
            self._depth += 1
            try:
                yield self
            except BaseException:
                self.connection.execute("ROLLBACK TO " + name)
                self.connection.execute("RELEASE " + name)
                raise
            else:
                self.connection.execute("RELEASE " + name)
            finally:
                self._depth -= 1
            return
        self.connection.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        else:
            self.connection.execute("COMMIT")
        finally:
            self._depth = 0

    def migrate(self):
        self.execute('CREATE TABLE IF NOT EXISTS "campfire_py_migrations" '
                     '("name" varchar PRIMARY KEY NOT NULL, "applied_at" datetime(6) NOT NULL)')
        done = {row[0] for row in self.all('SELECT name FROM campfire_py_migrations')}
        for name, script in MIGRATIONS:
            if name in done:
                continue
            with self.atomic():
                for statement in _split_sql(script):
                    self.execute(statement)
                self.execute("INSERT INTO campfire_py_migrations (name, applied_at) VALUES (?, ?)",
                             (name, utc_now_text()))
            log.info("applied migration %s", name)

    def close(self):
        with contextlib.suppress(sqlite3.Error):
            self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.connection.close()


def _split_sql(script):
    return [statement.strip() for statement in script.split(";\n") if statement.strip()]


####
#### 6. Domain: accounts, users, sessions
####

ROLE_MEMBER, ROLE_ADMINISTRATOR, ROLE_BOT = 0, 1, 2
STATUS_ACTIVE, STATUS_DEACTIVATED, STATUS_BANNED = 0, 1, 2
ROOM_OPEN, ROOM_CLOSED, ROOM_DIRECT = "Rooms::Open", "Rooms::Closed", "Rooms::Direct"
INVOLVEMENTS = ("invisible", "nothing", "mentions", "everything")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


@dataclass(slots=True)
class User:
    id: int
    name: str
    email_address: str = None
    role: int = ROLE_MEMBER
    status: int = STATUS_ACTIVE
    bio: str = None
    password_digest: str = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row):
        return cls(row["id"], row["name"], row["email_address"], row["role"], row["status"],
                   row["bio"], row["password_digest"])

    @property
    def administrator(self):
        return self.role == ROLE_ADMINISTRATOR

    @property
    def bot(self):
        return self.role == ROLE_BOT

    @property
    def active(self):
        return self.status == STATUS_ACTIVE

    @property
    def initials(self):
        words = [word for word in re.split(r"\s+", self.name.strip()) if word]
        return "".join(word[0] for word in words[:2]).upper() or "?"


@dataclass(slots=True)
class Room:
    id: int
    name: str
    type: str
    creator_id: int

    @classmethod
    def from_row(cls, row):
        return cls(row["id"], row["name"], row["type"], row["creator_id"])

    @property
    def direct(self):
        return self.type == ROOM_DIRECT


@dataclass(slots=True)
class SessionInfo:
    id: int
    user_id: int
    last_active: float


class Store:
    """Every query the domain needs, as literal SQL with bound parameters."""

    def __init__(self, db):
        self.db = db
        self._users = {}        # id → User; dropped whenever a user row changes
        self._sessions = {}     # token digest → SessionInfo

    # Account ---------------------------------------------------------------
    def account(self):
        return self.db.one("SELECT * FROM accounts ORDER BY id LIMIT 1")

    def account_name(self):
        account = self.account()
        return account["name"] if account else "Campfire"

    # Users -----------------------------------------------------------------
    def user(self, user_id):
        user = self._users.get(user_id)
        if user is None:
            row = self.db.one("SELECT * FROM users WHERE id = ?", (user_id,))
            if row is None:
                return None
            user = self._users[user_id] = User.from_row(row)
        return user

    def user_by_email(self, email):
        row = self.db.one("SELECT * FROM users WHERE lower(email_address) = lower(?)", (email,))
        return User.from_row(row) if row else None

    def user_count(self):
        return self.db.value("SELECT count(*) FROM users")

    def forget_user(self, user_id):
        self._users.pop(user_id, None)

    def create_user(self, name, email, password, role=ROLE_MEMBER):
        now = utc_now_text()
        cursor = self.db.execute(
            "INSERT INTO users (name, email_address, password_digest, role, status, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, email, hash_password(password), role, STATUS_ACTIVE, now, now))
        user_id = cursor.lastrowid
        for row in self.db.all("SELECT id FROM rooms WHERE type = ?", (ROOM_OPEN,)):
            self.add_membership(row["id"], user_id, now=now)
        return self.user(user_id)

    def set_password_digest(self, user_id, digest):
        self.db.execute("UPDATE users SET password_digest = ?, updated_at = ? WHERE id = ?",
                        (digest, utc_now_text(), user_id))
        self.forget_user(user_id)

    # Sessions --------------------------------------------------------------
    def create_session(self, user_id, ip_address, user_agent, now=None):
        """A new session; returns the token for the cookie (only its digest is stored)."""
        token = random_token()
        stamp = utc_now_text(now)
        self.db.execute(
            "INSERT INTO sessions (user_id, token, ip_address, user_agent, last_active_at, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user_id, token_digest(token), ip_address, user_agent[:255], stamp, stamp, stamp))
        return token

    def session_for(self, token, now):
        """The session a cookie names, refreshing last_active_at at most hourly."""
        if not token or len(token) > 200:
            return None
        digest = token_digest(token)
        info = self._sessions.get(digest)
        if info is None:
            row = self.db.one("SELECT id, user_id, last_active_at FROM sessions WHERE token = ?", (digest,))
            if row is None:
                return None
            info = SessionInfo(row["id"], row["user_id"], parse_db_time(row["last_active_at"]) or 0)
            if len(self._sessions) > 50_000:
                self._sessions.clear()
            self._sessions[digest] = info
        if now - info.last_active > SESSION_REFRESH_SECONDS:
            stamp = utc_now_text(now)
            self.db.execute("UPDATE sessions SET last_active_at = ?, updated_at = ? WHERE id = ?",
                            (stamp, stamp, info.id))
            info.last_active = now
        return info

    def delete_session(self, token):
        digest = token_digest(token)
        self._sessions.pop(digest, None)
        self.db.execute("DELETE FROM sessions WHERE token = ?", (digest,))

    def delete_sessions_of(self, user_id):
        self._sessions = {k: v for k, v in self._sessions.items() if v.user_id != user_id}
        self.db.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))

    # Rooms -----------------------------------------------------------------
    def room(self, room_id):
        row = self.db.one("SELECT * FROM rooms WHERE id = ?", (room_id,))
        return Room.from_row(row) if row else None

    def create_room(self, name, room_type, creator_id, member_ids):
        now = utc_now_text()
        cursor = self.db.execute(
            "INSERT INTO rooms (name, type, creator_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (name, room_type, creator_id, now, now))
        room_id = cursor.lastrowid
        involvement = "everything" if room_type == ROOM_DIRECT else "mentions"
        for user_id in member_ids:
            self.add_membership(room_id, user_id, involvement, now)
        return self.room(room_id)

    def add_membership(self, room_id, user_id, involvement="mentions", now=None):
        now = now or utc_now_text()
        self.db.execute(
            "INSERT OR IGNORE INTO memberships (room_id, user_id, involvement, connections, created_at, updated_at) "
            "VALUES (?, ?, ?, 0, ?, ?)", (room_id, user_id, involvement, now, now))

    def membership(self, room_id, user_id):
        return self.db.one("SELECT * FROM memberships WHERE room_id = ? AND user_id = ?", (room_id, user_id))

    def rooms_for(self, user_id):
        """The rooms a user sees, with their membership, visible ones only."""
        return self.db.all(
            "SELECT rooms.*, memberships.involvement, memberships.unread_at FROM rooms "
            "JOIN memberships ON memberships.room_id = rooms.id "
            "WHERE memberships.user_id = ? AND memberships.involvement != 'invisible' "
            "ORDER BY lower(rooms.name), rooms.id", (user_id,))

    def active_user_ids(self):
        return [row[0] for row in self.db.all("SELECT id FROM users WHERE status = ?", (STATUS_ACTIVE,))]


####
#### 7. Rendering
####
# Every page is built from small functions returning HTML, and every value
# reaches the page through HTML.format/escape.

def render_layout(app, request, title, body, *, sidebar=None, body_class="", status=200, headers=None):
    account_name = app.store.account_name()
    user = request.user
    top = HTML("")
    if user is not None:
        top = HTML(
            '<header class="topbar">'
            '<a class="topbar__brand" href="/">{account}</a>'
            '<nav class="topbar__nav" aria-label="Account">'
            '<span class="topbar__user">{name}</span>'
            '<form method="post" action="/session" class="inline-form">'
            '<input type="hidden" name="_method" value="delete">'
            '<button type="submit" class="button button--quiet">Sign out</button></form>'
            '</nav></header>').format(account=account_name, name=user.name)
    if sidebar is None and user is not None:
        sidebar = render_sidebar(app, request)
    main = HTML('<div class="layout">{sidebar}<main id="main" class="main">{body}</main></div>').format(
        sidebar=sidebar or "", body=body) if sidebar else HTML('<main id="main" class="main main--solo">{}</main>').format(body)
    page = HTML(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        '<title>{title}</title>'
        '<link rel="stylesheet" href="{css}">'
        '<link rel="icon" href="{icon}" type="image/svg+xml">'
        '</head><body class="{body_class}">{top}{main}</body></html>').format(
        title="%s · %s" % (title, account_name) if title else account_name,
        css=app.asset_url("campfire.css"), icon=app.asset_url("campfire-icon.svg"),
        body_class=body_class, top=top, main=main)
    return Response(page, status, headers=headers)


def render_sidebar(app, request, current_room_id=None):
    rooms = app.store.rooms_for(request.user.id)
    shared = [room for room in rooms if room["type"] != ROOM_DIRECT]
    items = HTML("").join(
        HTML('<li><a class="sidebar__room{current}" href="/rooms/{id}">{name}</a></li>').format(
            id=room["id"], name=room["name"] or "Untitled",
            current=HTML(" sidebar__room--current") if room["id"] == current_room_id else "")
        for room in shared)
    return HTML(
        '<nav id="user_sidebar" class="sidebar" aria-label="Rooms">'
        '<h2 class="sidebar__heading">Rooms</h2>'
        '<ul id="shared_rooms" class="sidebar__rooms">{items}</ul></nav>').format(items=items)


def render_errors(errors, field_name):
    message = errors.get(field_name)
    if not message:
        return HTML("")
    return HTML('<p class="field__error" id="{id}_error" role="alert">{message}</p>').format(
        id=field_name.replace("[", "_").replace("]", ""), message=message)


def render_field(label, name, value="", *, type="text", errors=None, autocomplete=None,
                 required=True, autofocus=False, maxlength=None):
    errors = errors or {}
    field_id = name.replace("[", "_").replace("]", "")
    attributes = HTML(" ").join(
        HTML('{}="{}"').format(key, val) for key, val in (
            ("autocomplete", autocomplete), ("maxlength", maxlength)) if val)
    flags = HTML("").join(flag for flag, on in (
        (HTML(" required"), required), (HTML(" autofocus"), autofocus),
        (HTML(' aria-invalid="true"'), name in errors)) if on)
    return HTML(
        '<div class="field"><label class="field__label" for="{id}">{label}</label>'
        '<input class="field__input" id="{id}" name="{name}" type="{type}" value="{value}" {attributes}{flags}>'
        '{error}</div>').format(id=field_id, label=label, name=name, type=type, value=value,
                                attributes=attributes, flags=flags, error=render_errors(errors, name))


def render_auth_page(app, request, title, intro, action, fields, button, *, notice=None, status=200):
    notice_html = HTML('<p class="notice notice--alert" role="alert">{}</p>').format(notice) if notice else ""
    body = HTML(
        '<section class="panel panel--auth"><h1 class="panel__title">{title}</h1>'
        '<p class="panel__intro">{intro}</p>{notice}'
        '<form method="post" action="{action}" class="form">{fields}'
        '<button type="submit" class="button button--primary">{button}</button></form></section>').format(
        title=title, intro=intro, notice=notice_html, action=action, fields=HTML("").join(fields),
        button=button)
    return render_layout(app, request, title, body, sidebar=False, body_class="auth", status=status)


def render_user_fields(values, errors):
    return [
        render_field("Your name", "user[name]", values.get("user[name]", ""), errors=errors,
                     autocomplete="name", autofocus=True, maxlength=MAX_NAME_CHARS),
        render_field("Email address", "user[email_address]", values.get("user[email_address]", ""),
                     type="email", errors=errors, autocomplete="username", maxlength=MAX_EMAIL_CHARS),
        render_field("Password", "user[password]", "", type="password", errors=errors,
                     autocomplete="new-password", maxlength=MAX_PASSWORD_BYTES),
    ]


def render_room(app, request, room, messages_html=HTML("")):
    body = HTML(
        '<section class="room" data-room-id="{id}" aria-labelledby="room_name">'
        '<header class="room__header"><h1 class="room__name" id="room_name">{name}</h1></header>'
        '<div class="messages" id="messages" aria-live="polite">{messages}</div>'
        '</section>').format(id=room.id, name=room.name or "Untitled", messages=messages_html)
    return render_layout(app, request, room.name, body,
                         sidebar=render_sidebar(app, request, current_room_id=room.id), body_class="room-page")


def render_error_page(app, request, status, message):
    body = HTML('<section class="panel"><h1 class="panel__title">{status} · {reason}</h1>'
                '<p>{message}</p><p><a href="/">Back to Campfire</a></p></section>').format(
        status=status, reason=STATUS_REASONS.get(status, "Error"), message=message)
    user, request.user = request.user, None  # an error page never depends on the session
    try:
        return render_layout(app, request, STATUS_REASONS.get(status, "Error"), body, sidebar=False, status=status)
    finally:
        request.user = user


####
#### 8. Routes
####
# Each handler is declared with the route it answers. `auth` says who may ask:
#   public      anyone (the user is still loaded when signed in)
#   signed_out  only people not signed in (others go to /)
#   user        a signed-in person (others go to sign in, or first run)
#   admin       a signed-in administrator (others get 403)

@dataclass(frozen=True)
class RouteSpec:
    method: str
    pattern: str
    auth: str
    body_limit: int


def route(method, pattern, *, auth="user", body_limit=FORM_BODY_LIMIT):
    def decorate(handler):
        handler.__dict__.setdefault("route_specs", []).append(RouteSpec(method, pattern, auth, body_limit))
        return handler
    return decorate


_PARAM_RE = re.compile(r"<(?:(int|path):)?([a-z_]+)>")
_PARAM_PATTERNS = {None: r"[^/]+", "int": r"[0-9]{1,18}", "path": r".+"}


class Router:
    """Static paths by dict lookup; patterns grouped by their first segment."""

    def __init__(self, handlers):
        self._static = {}
        self._dynamic = collections.defaultdict(list)
        for handler in handlers:
            for spec in handler.route_specs:
                if "<" not in spec.pattern:
                    self._static[(spec.method, spec.pattern)] = (handler, spec)
                    continue
                converters = {}

                def replace(match):
                    converters[match.group(2)] = match.group(1)
                    return "(?P<%s>%s)" % (match.group(2), _PARAM_PATTERNS[match.group(1)])
                regex = re.compile("^" + _PARAM_RE.sub(replace, re.escape(spec.pattern).replace(r"\<", "<").replace(r"\>", ">")) + "$")
                first = spec.pattern.split("/")[1]
                self._dynamic[(spec.method, first)].append((regex, converters, handler, spec))
        for routes in self._dynamic.values():  # literal segments win over parameters
            routes.sort(key=lambda item: item[3].pattern.count("<"))

    def match(self, method, path):
        """(handler, spec, params) or None."""
        found = self._static.get((method, path))
        if found:
            return found[0], found[1], {}
        first = path.split("/", 2)[1] if path.count("/") >= 1 else ""
        for regex, converters, handler, spec in self._dynamic.get((method, first), ()):
            matched = regex.match(path)
            if matched:
                params = {}
                for name, value in matched.groupdict().items():
                    params[name] = int(value) if converters[name] == "int" else urllib.parse.unquote(value)
                return handler, spec, params
        return None


# Health ---------------------------------------------------------------------

@route("GET", "/up", auth="public")
def health_check(app, request):
    try:
        app.db.value("SELECT 1")
    except sqlite3.Error:
        return Response('<!DOCTYPE html><html><body style="background-color: red"></body></html>', 503,
                        headers=[("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")])
    return Response('<!DOCTYPE html><html><body style="background-color: green"></body></html>',
                    headers=[("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
                             ("Cache-Control", "no-store")])


# Static files -------------------------------------------------------------------

@route("GET", "/static/<path:path>", auth="public")
def static_file(app, request, path):
    return app.static.response(request, request.path[len("/static/"):])


# First run, sign in, sign out, sign up -------------------------------------

@route("GET", "/first_run", auth="public")
def first_run_form(app, request):
    if app.store.account() is not None:
        return redirect("/")
    return render_first_run(app, request, {}, {})


def render_first_run(app, request, values, errors, status=200):
    return render_auth_page(app, request, "Set up Campfire",
                            "Create the administrator's account. You can invite everyone else next.",
                            "/first_run", render_user_fields(values, errors), "Create account",
                            status=status)


@route("POST", "/first_run", auth="public")
def first_run(app, request):
    if app.store.account() is not None:
        return redirect("/")
    values, errors = _user_form(request.form)
    if errors:
        return render_first_run(app, request, values, errors, status=422)
    with app.db.atomic():
        if app.store.account() is not None:  # someone else finished first run meanwhile
            return redirect("/")
        now = utc_now_text()
        app.db.execute("INSERT INTO accounts (name, join_code, settings, singleton_guard, created_at, updated_at) "
                       "VALUES (?, ?, ?, 0, ?, ?)", ("Campfire", generate_join_code(), "{}", now, now))
        user = app.store.create_user(values["user[name]"], values["user[email_address]"],
                                     values["user[password]"], ROLE_ADMINISTRATOR)
        room = app.store.create_room("All Talk", ROOM_OPEN, user.id, app.store.active_user_ids())
        response = redirect("/rooms/%d" % room.id)
        app.start_session(request, response, user)
    return response


def _user_form(form):
    values = {key: form.text(key) for key in ("user[name]", "user[email_address]")}
    values["user[password]"] = str(form.get("user[password]", ""))
    errors = {}
    if not values["user[name]"]:
        errors["user[name]"] = "Enter your name."
    elif len(values["user[name]"]) > MAX_NAME_CHARS:
        errors["user[name]"] = "Use at most %d characters." % MAX_NAME_CHARS
    if not EMAIL_RE.match(values["user[email_address]"]) or len(values["user[email_address]"]) > MAX_EMAIL_CHARS:
        errors["user[email_address]"] = "Enter a valid email address."
    if not values["user[password]"]:
        errors["user[password]"] = "Choose a password."
    elif len(values["user[password]"].encode()) > MAX_PASSWORD_BYTES:
        errors["user[password]"] = "Use at most %d bytes." % MAX_PASSWORD_BYTES
    return values, errors


@route("GET", "/session/new", auth="signed_out")
def sign_in_form(app, request):
    if app.store.account() is None:
        return redirect("/first_run")
    return render_sign_in(app, request, request.query.text("email_address"))


def render_sign_in(app, request, email, notice=None, status=200):
    fields = [
        render_field("Email address", "email_address", email, type="email", autocomplete="username",
                     autofocus=not email, maxlength=MAX_EMAIL_CHARS),
        render_field("Password", "password", "", type="password", autocomplete="current-password",
                     autofocus=bool(email)),
    ]
    return render_auth_page(app, request, "Sign in", "Welcome back to %s." % app.store.account_name(),
                            "/session", fields, "Sign in", notice=notice, status=status)


@route("POST", "/session", auth="public")
def sign_in(app, request):
    email = request.form.text("email_address")
    password = str(request.form.get("password", ""))
    if not app.sign_in_limiter.hit(request.remote_addr):
        return render_sign_in(app, request, email, "Too many requests or unauthorized.", 429)
    user = app.store.user_by_email(email) if email else None
    try:
        valid = user is not None and user.active and not user.bot and check_password(password, user.password_digest)
    except PasswordUnsupported:
        return render_sign_in(app, request, email,
                              "This password can't be checked on this server. Ask an administrator "
                              "for a sign-in link.", 401)
    if not valid:
        return render_sign_in(app, request, email, "Too many requests or unauthorized.", 401)
    if not user.password_digest.startswith("$scrypt$"):  # a Rails bcrypt digest: upgrade it
        app.store.set_password_digest(user.id, hash_password(password))
    response = redirect("/")
    app.start_session(request, response, user)
    return response


@route("DELETE", "/session", auth="user")
def sign_out(app, request):
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        app.store.delete_session(token)
    response = redirect("/session/new")
    app.clear_cookie(response, SESSION_COOKIE)
    return response


@route("GET", "/join/<join_code>", auth="signed_out")
def join_form(app, request, join_code):
    _require_join_code(app, join_code)
    return render_join(app, request, join_code, {}, {})


def _require_join_code(app, join_code):
    account = app.store.account()
    if account is None or not hmac.compare_digest(account["join_code"].encode(), join_code.encode()):
        raise NotFound("This invitation link is not valid.")


def render_join(app, request, join_code, values, errors, status=200):
    return render_auth_page(app, request, "Join %s" % app.store.account_name(),
                            "Create your account to start chatting.",
                            "/join/%s" % urllib.parse.quote(join_code), render_user_fields(values, errors),
                            "Join", status=status)


@route("POST", "/join/<join_code>", auth="signed_out")
def join(app, request, join_code):
    _require_join_code(app, join_code)
    if not app.sign_up_limiter.hit(request.remote_addr):
        raise TooManyRequests("Too many sign-ups from this address. Try again in a few minutes.")
    values, errors = _user_form(request.form)
    if errors:
        return render_join(app, request, join_code, values, errors, status=422)
    email = values["user[email_address]"]
    if app.store.user_by_email(email) is not None:
        return redirect("/session/new?" + urllib.parse.urlencode({"email_address": email}))
    with app.db.atomic():
        user = app.store.create_user(values["user[name]"], email, values["user[password]"])
    response = redirect("/")
    app.start_session(request, response, user)
    return response


# Landing and rooms ------------------------------------------------------------

@route("GET", "/", auth="user")
@route("GET", "/rooms", auth="user")
def landing(app, request):
    rooms = app.store.rooms_for(request.user.id)
    if not rooms:
        body = HTML('<section class="panel"><h1 class="panel__title">No rooms yet</h1>'
                    '<p>You are not in any room yet. An administrator can add you to one.</p></section>')
        return render_layout(app, request, "Welcome", body)
    last = request.cookies.get(LAST_ROOM_COOKIE, "")
    room_ids = [room["id"] for room in rooms]
    target = int(last) if last.isdigit() and int(last) in room_ids else room_ids[0]
    return redirect("/rooms/%d" % target, 302)


@route("GET", "/rooms/<int:room_id>", auth="user")
def show_room(app, request, room_id):
    room = app.room_for_member(request, room_id)
    response = render_room(app, request, room)
    app.set_cookie(response, LAST_ROOM_COOKIE, str(room.id), http_only=False)
    return response


####
#### 9. The application
####
# App turns a Request into a Response without touching a socket, so tests
# drive it in-process and the server is a thin adapter around it.

class StaticFiles:
    """Files under static/, held in memory with their gzip form and ETag.

    Only regular files inside the root are served: '..', encoded slashes or
    backslashes, NUL bytes and symlinks that lead outside all answer 404.
    """

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self._cache = {}   # real path → (mtime_ns, size, entry)

    def _entry(self, relative):
        if not relative or "\0" in relative or "\\" in relative or relative.startswith("/"):
            return None
        if any(part in ("", ".", "..") for part in relative.split("/")):
            return None
        full = os.path.realpath(os.path.join(self.root, relative))
        if not full.startswith(self.root + os.sep):
            return None
        try:
            stat = os.stat(full)
        except OSError:
            return None
        if not (stat.st_mode & 0o170000 == 0o100000):  # regular files only
            return None
        cached = self._cache.get(full)
        if cached and cached[0] == stat.st_mtime_ns and cached[1] == stat.st_size:
            return cached[2]
        with open(full, "rb") as file:
            data = file.read()
        content_type = MIME_TYPES.get(os.path.splitext(full)[1].lower(), "application/octet-stream")
        digest = hashlib.sha256(data).hexdigest()[:16]
        compressed = gzip_bytes(data, 9) if content_type.startswith(GZIP_TYPES) and len(data) >= GZIP_MIN_BYTES else None
        entry = (data, compressed, content_type, digest)
        self._cache[full] = (stat.st_mtime_ns, stat.st_size, entry)
        return entry

    def version(self, relative):
        entry = self._entry(relative)
        return entry[3] if entry else "0"

    def response(self, request, raw_path):
        lowered = raw_path.lower()
        if "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
            raise NotFound()
        entry = self._entry(urllib.parse.unquote(raw_path))
        if entry is None:
            raise NotFound()
        data, compressed, content_type, digest = entry
        etag = '"%s"' % digest
        versioned = request.query.get("v") == digest
        headers = [("ETag", etag), ("Vary", "Accept-Encoding"),
                   ("Cache-Control", "public, max-age=31536000, immutable" if versioned else "no-cache")]
        if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
            response = Response(b"", 304, None, headers)
            return response
        if compressed is not None and accepts_gzip(request):
            headers.append(("Content-Encoding", "gzip"))
            data = compressed
        response = Response(data, 200, content_type, headers)
        response.compressible = False
        return response


@dataclass
class Config:
    storage_path: str = os.path.join(HERE, "storage")
    database_path: str = None
    secret_key_base: str = None
    host: str = DEFAULT_BIND
    port: int = DEFAULT_PORT
    tls_cert_path: str = None
    tls_key_path: str = None
    log_level: str = "INFO"
    static_root: str = STATIC_ROOT

    @classmethod
    def from_environment(cls, environ=None):
        environ = os.environ if environ is None else environ
        config = cls()
        config.storage_path = environ.get("CAMPFIRE_STORAGE_PATH") or config.storage_path
        config.database_path = environ.get("DATABASE_PATH") or None
        config.secret_key_base = environ.get("SECRET_KEY_BASE") or None
        config.host = environ.get("BIND") or config.host
        port = environ.get("PORT")
        if port:
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError("PORT must be a number between 1 and 65535, not %r." % port)
            config.port = int(port)
        config.tls_cert_path = environ.get("TLS_CERT_PATH") or None
        config.tls_key_path = environ.get("TLS_KEY_PATH") or None
        config.log_level = (environ.get("LOG_LEVEL") or "INFO").upper()
        return config

    @property
    def resolved_database_path(self):
        return self.database_path or os.path.join(self.storage_path, "db", "production.sqlite3")


class App:
    def __init__(self, config=None):
        self.config = config or Config()
        self._prepare_storage()
        self.db = Database(self.config.resolved_database_path)
        self.db.migrate()
        self.store = Store(self.db)
        self.signer = Signer(self.config.secret_key_base or self._stored_secret())
        self.router = Router(handler for handler in globals().values()
                             if callable(handler) and hasattr(handler, "route_specs"))
        self.static = StaticFiles(self.config.static_root)
        self.sign_in_limiter = RateLimiter(*SIGN_IN_LIMIT)
        self.sign_up_limiter = RateLimiter(*SIGN_UP_LIMIT)
        self.secure_cookies = bool(self.config.tls_cert_path)
        self._request_numbers = itertools.count(1)
        self._request_prefix = secrets.token_hex(3)
        self._date = (0, "")

    # Setup ------------------------------------------------------------------
    def _prepare_storage(self):
        path = self.config.storage_path
        database_dir = os.path.dirname(self.config.resolved_database_path)
        for directory in (path, database_dir):
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as error:
                raise ConfigError("Storage directory %s cannot be created (%s)." % (directory, error.strerror)) from error
            if not os.access(directory, os.W_OK | os.X_OK):
                raise ConfigError("Storage directory %s is not writable by this user." % directory)

    def _stored_secret(self):
        path = os.path.join(self.config.storage_path, "secret_key_base")
        try:
            with open(path) as file:
                secret = file.read().strip()
            if secret:
                return secret
        except FileNotFoundError:
            pass
        secret = secrets.token_hex(64)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secret + "\n")
        return secret

    def close(self):
        self.db.close()

    # Helpers for handlers --------------------------------------------------------
    def asset_url(self, name):
        return "/static/%s?v=%s" % (name, self.static.version(name))

    def set_cookie(self, response, name, value, *, max_age=SESSION_COOKIE_MAX_AGE, http_only=True):
        parts = ["%s=%s" % (name, urllib.parse.quote(value, safe="")), "Path=/", "Max-Age=%d" % max_age,
                 "SameSite=Lax"]
        if http_only:
            parts.append("HttpOnly")
        if self.secure_cookies:
            parts.append("Secure")
        response.headers.append(("Set-Cookie", "; ".join(parts)))

    def clear_cookie(self, response, name):
        self.set_cookie(response, name, "", max_age=0)

    def start_session(self, request, response, user):
        token = self.store.create_session(user.id, request.remote_addr, request.headers.get("user-agent", ""))
        self.set_cookie(response, SESSION_COOKIE, token)

    def room_for_member(self, request, room_id):
        """The room, if the signed-in user belongs to it; 404 otherwise (never reveal it exists)."""
        room = self.store.room(room_id)
        if room is None or self.store.membership(room_id, request.user.id) is None:
            raise NotFound("There is no such room.")
        return room

    def body_limit(self, method, path):
        """The largest body any route at this path accepts (413 past it)."""
        limits = [spec.body_limit for candidate in ("GET", "POST", "PUT", "PATCH", "DELETE")
                  if (found := self.router.match(candidate, path)) for spec in (found[1],)]
        return max(limits) if limits else FORM_BODY_LIMIT

    # Requests ------------------------------------------------------------------
    def handle(self, request):
        """Request → Response. Never raises: errors become error pages."""
        request.id = "%s-%d" % (self._request_prefix, next(self._request_numbers))
        request.started = time.perf_counter()
        try:
            response = self._dispatch(request)
        except HttpError as error:
            response = self._error_response(request, error.status, error.message)
            response.headers.extend(error.headers)
        except Exception:
            log.error("request %s %s %s failed:\n%s", request.id, request.method, request.path,
                      traceback.format_exc())
            response = self._error_response(
                request, 500, "Something went wrong on our side. The error was logged as %s." % request.id)
        self._finish(request, response)
        return response

    def _dispatch(self, request):
        method = request.method
        lookup = "GET" if method == "HEAD" else method
        if method == "POST" and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")):
            override = str(request.form.get("_method", "")).upper()
            if override in ("PATCH", "PUT", "DELETE"):
                lookup = override
        found = self.router.match(lookup, request.path)
        if found is None:
            raise NotFound("There is nothing at this address.")
        handler, spec, params = found
        if lookup not in ("GET", "HEAD"):
            self._check_request_origin(request)
        self._authenticate(request)
        if spec.auth == "signed_out" and request.user is not None:
            return redirect("/")
        if spec.auth in ("user", "admin") and request.user is None:
            return redirect("/session/new" if self.store.account() is not None else "/first_run", 302)
        if spec.auth == "admin" and not request.user.administrator:
            raise Forbidden("Only administrators can do that.")
        response = handler(self, request, **params)
        return response if isinstance(response, Response) else Response(response)

    def _check_request_origin(self, request):
        """Fetch Metadata first, Origin second (CAMPFIRE.md: forgery protection)."""
        site = request.headers.get("sec-fetch-site")
        if site is not None and site != "same-origin":
            raise Forbidden("Cross-site requests are refused.")
        origin = request.headers.get("origin")
        if origin is not None and origin != request.origin:
            raise Forbidden("Requests from other origins are refused.")

    def _authenticate(self, request):
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return
        session = self.store.session_for(token, time.time())
        if session is None:
            return
        user = self.store.user(session.user_id)
        if user is None or not user.active or user.bot:
            return
        request.user, request.session = user, session

    def _error_response(self, request, status, message):
        if request.path.startswith("/static/"):
            return Response(message, status, "text/plain; charset=utf-8")
        return render_error_page(self, request, status, message)

    def _finish(self, request, response):
        headers = response.headers
        present = {name.lower() for name, _ in headers}
        if response.content_type and "content-type" not in present and response.status not in (204, 304):
            headers.append(("Content-Type", response.content_type))
        if "content-security-policy" not in present:
            headers.append(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        headers.append(("X-Content-Type-Options", "nosniff"))
        headers.append(("Referrer-Policy", "strict-origin-when-cross-origin"))
        headers.append(("X-Frame-Options", "DENY"))
        headers.append(("X-Request-Id", request.id))
        if (response.compressible and len(response.body) >= GZIP_MIN_BYTES
                and response.content_type and response.content_type.startswith(GZIP_TYPES)
                and "content-encoding" not in present and accepts_gzip(request)):
            response.body = gzip_bytes(response.body)
            headers.append(("Content-Encoding", "gzip"))
            headers.append(("Vary", "Accept-Encoding"))
        if request.path != "/up" and log.isEnabledFor(logging.INFO):
            log.info("%s %s %d %.1fms %s", request.method, request.path, response.status,
                     (time.perf_counter() - request.started) * 1000, request.id)

    def http_date(self):
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]

    def serialize(self, request, response, keep_alive):
        return serialize_response(response.status, response.headers, response.body, keep_alive=keep_alive,
                                  head_only=request.method == "HEAD", date=self.http_date())


####
#### 10. The server
####
# A thin adapter: asyncio feeds bytes to HttpParser, hands each request to
# App.handle in order and writes the responses back.

def _error_bytes(status, message, date=None):
    body = ("<!DOCTYPE html><html><body><h1>%d %s</h1><p>%s</p></body></html>"
            % (status, STATUS_REASONS.get(status, "Error"), html.escape(message))).encode()
    return serialize_response(status, [("Content-Type", "text/html; charset=utf-8")], body,
                              keep_alive=False, date=date)


class HttpConnection(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.app = server.app
        self.transport = None
        self.parser = HttpParser(self.app.body_limit)
        self.remote_addr = "0.0.0.0"
        self.deadline = 0.0
        self.head_deadline = None
        self.closing = False
        self.busy = False

    def connection_made(self, transport):
        self.transport = transport
        if len(self.server.connections) >= self.server.max_connections:
            transport.write(_error_bytes(503, "The server is at its connection limit; try again shortly."))
            transport.close()
            self.closing = True
            return
        peer = transport.get_extra_info("peername")
        self.remote_addr = peer[0] if peer else "0.0.0.0"
        self.server.connections.add(self)
        now = self.server.loop.time()
        self.head_deadline = now + HEADER_TIMEOUT
        self.deadline = self.head_deadline
        transport.set_write_buffer_limits(high=MAX_WRITE_BUFFER_BYTES)

    def connection_lost(self, exc):
        self.closing = True
        self.server.connections.discard(self)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        if not self.closing:
            self.transport.resume_reading()

    def data_received(self, data):
        if self.closing:
            return
        self.parser.receive_data(data)
        try:
            self._process()
        except Exception:
            log.error("connection from %s failed:\n%s", self.remote_addr, traceback.format_exc())
            self.close()

    def _process(self):
        app, parser, transport = self.app, self.parser, self.transport
        while not self.closing:
            try:
                request = parser.next_request()
            except HttpError as error:
                transport.write(_error_bytes(error.status, error.message, app.http_date()))
                self.close()
                return
            if request is None:
                break
            request.remote_addr = self.remote_addr
            request.scheme = self.server.scheme
            self.busy = True
            response = app.handle(request)
            self.busy = False
            keep_alive = request.keep_alive and not self.server.stopping
            transport.write(app.serialize(request, response, keep_alive))
            if not keep_alive:
                self.close()
                return
            self.head_deadline = None
        if self.closing:
            return
        now = self.server.loop.time()
        if parser.wants_continue():
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if parser.reading_body:
            self.deadline = now + BODY_IDLE_TIMEOUT
        elif parser.has_partial_request:
            if self.head_deadline is None:
                self.head_deadline = now + HEADER_TIMEOUT
            self.deadline = self.head_deadline
        else:
            self.head_deadline = None
            self.deadline = now + KEEPALIVE_TIMEOUT

    @property
    def idle(self):
        return not self.busy and not self.parser.has_partial_request

    def close(self):
        if not self.closing:
            self.closing = True
            self.transport.close()


class Server:
    def __init__(self, app, host, port, ssl_context=None):
        self.app = app
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context else "http"
        self.connections = set()
        self.stopping = False
        self.loop = None
        self._server = None
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_connections = max(16, soft_limit - FILE_DESCRIPTOR_RESERVE)

    async def start(self):
        self.loop = asyncio.get_running_loop()
        try:
            self._server = await self.loop.create_server(
                lambda: HttpConnection(self), self.host, self.port, ssl=self.ssl_context,
                backlog=1024, reuse_address=True)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigError("Port %d is already in use on %s. Stop the other program or choose "
                                  "another port with PORT or --port." % (self.port, self.host)) from error
            raise ConfigError("Cannot listen on %s:%d (%s)." % (self.host, self.port, error.strerror)) from error
        self.port = self._server.sockets[0].getsockname()[1]
        self.loop.create_task(self._sweep())

    async def _sweep(self):
        """Drop connections past their deadline: slow heads, stalled bodies, idle keep-alives."""
        while not self.stopping:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.loop.time()
            for connection in [c for c in self.connections if c.deadline < now]:
                connection.close()

    async def stop(self):
        """Stop accepting, let in-flight requests finish (bounded), close the database."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + SHUTDOWN_GRACE
        while self.connections and self.loop.time() < deadline:
            for connection in [c for c in self.connections if c.idle]:
                connection.close()
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.close()
        self.app.close()


def make_ssl_context(config):
    if not (config.tls_cert_path and config.tls_key_path):
        if config.tls_cert_path or config.tls_key_path:
            raise ConfigError("Set both TLS_CERT_PATH and TLS_KEY_PATH to serve HTTPS.")
        return None
    import ssl  # loaded only when serving TLS: a faster start for everyone else
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert_path, config.tls_key_path)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError("The TLS certificate or key could not be loaded (%s)." % error) from error
    return context


async def serve(config):
    app = App(config)
    server = Server(app, config.host, config.port, make_ssl_context(config))
    try:
        await server.start()
    except BaseException:
        app.close()
        raise
    stop = asyncio.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        server.loop.add_signal_handler(signal_number, stop.set)
    log.info("Campfire %s listening on %s://%s:%d", VERSION, server.scheme, config.host, server.port)
    await stop.wait()
    log.info("shutting down")
    await server.stop()


####
#### 11. Command line
####

def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="campfire.py", description="Campfire: a team chat in one file.",
        epilog="Configuration also comes from the environment: PORT, BIND, CAMPFIRE_STORAGE_PATH, "
               "DATABASE_PATH, SECRET_KEY_BASE, TLS_CERT_PATH, TLS_KEY_PATH, LOG_LEVEL.")
    parser.add_argument("--version", action="version", version="Campfire %s" % VERSION)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_parser = commands.add_parser("serve", help="run the server (the default)")
    for target in (parser, serve_parser):
        target.add_argument("--host", help="address to bind (BIND; default %s)" % DEFAULT_BIND)
        target.add_argument("--port", type=int, help="port to listen on (PORT; default %d)" % DEFAULT_PORT)
        target.add_argument("--storage", help="storage directory (CAMPFIRE_STORAGE_PATH)")
    args = parser.parse_args(argv)
    try:
        config = Config.from_environment()
    except ConfigError as error:
        print("campfire: %s" % error, file=sys.stderr)
        return 1
    logging.basicConfig(level=getattr(logging, config.log_level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    if args.host:
        config.host = args.host
    if args.port is not None:
        config.port = args.port
    if args.storage:
        config.storage_path = args.storage
    try:
        if args.command in (None, "serve"):
            asyncio.run(serve(config))
    except ConfigError as error:
        print("campfire: %s" % error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
