#!/usr/bin/env python3
"""Benchmark campfire.py and print each figure beside a ceiling measured in the same run.

`make bench` runs `python3 tests/bench.py`. It prints figures and exits 0 whatever
they are, except: 1 when campfire.py cannot be started, 2 when any check failed
(a response with the wrong message ids, a non-2xx answer, a socket error, a failed
write audit, a failed seeding or sign-in; the report then ends with a
"FAILED checks" line), 130 on Ctrl-C. Everything runs on 127.0.0.1, every step is
bounded in time, and every process it starts is stopped at the end, even on
Ctrl-C or an error.

What it measures
  Throughput  Each workload is driven by 16 keep-alive connections, one request in
              flight on each, for 3 s after a 1 s warm-up: requests/s, p50 and
              p99 latency in ms, failed checks, non-2xx responses and socket
              errors. Every response, warm-up included, is checked.
  Signed-in   On a storage seeded by `campfire.py seed --messages 100000` (100
              people, 20 rooms), signed in as person1 (an administrator, a
              member of every room); every read sends Accept-Encoding: gzip as a
              browser does:
                room      GET /rooms/1: the newest 40 messages of room 1
                messages  GET /rooms/1/messages?before=ID, ID the middle message of
                          room 1's history: the 40 messages before it
                sidebar   GET /users/me/sidebar: a link to each of person1's rooms
                search    GET /searches?q=coffee: the newest 100 messages with the
                          word, in person1's rooms, newest first (Campfire's order
                          by created_at); the word is in about 12% of the messages
                search-rare
                          GET /searches?q=walrus: the same for a word that seed puts
                          in 10 messages spread through the history (skipped, with
                          a note, when the seeded database has none)
                post      POST /rooms/1/messages, a unique client_message_id per
                          request: 201 and the new message
              The four reads run twice: on campfire.py as it ships (page caches
              on) and on `campfire.py serve --no-cache` ("room (no cache)", ...).
              The post runs last on a third start of the server, so that the
              reads' expected ids stay true. Then the search runs once more
              without caches, "search after posts (no cache)": the posts (tens
              of thousands, none with its word) are all newer than its results,
              as after a busy stretch of chat since the word was last used.
  Write audit After the post run the server is killed with SIGKILL (so only what
              was committed counts) and the database is opened directly: every
              acknowledged post (a 201 whose body passed its check) is in
              `messages` (room 1, by person1, with the message id the 201 named),
              with its rich text row and its FTS row (found by MATCH on a token
              unique to this run); no post of this run is there twice; nothing
              is there that was never sent; the posts committed without an
              acknowledgement are at most the requests that can have been in
              flight when a run stopped (connections x runs + socket errors), and
              none was answered with an error; the totals add up (messages =
              seeded + this run's posts = FTS rows = rich texts); PRAGMA
              integrity_check is "ok" and FTS5's 'integrity-check' passes.
  Start       From exec of `python3 campfire.py serve` to the first 200 from /up,
              polled by connecting back to back (sub-millisecond pauses); the
              median of 9 runs on a fresh storage directory and 9 on one that is
              already initialised.
  Idle RSS    VmRSS of the server process (/proc/<pid>/status) after start and
              after the load (the cached reads), in MB (kB / 1024), each once the
              server has had 7 s without a request (it gives freed memory back
              to the OS after 5 s of quiet).

How every response is checked
  The expected ids come from the seeded SQLite file, read by this script before
  any server runs (not through campfire.py): the newest 40 ids of room 1 by
  (created_at, id); the 40 before the chosen id; the newest 100 messages in
  person1's rooms whose body has "coffee" as a whole word (found by a regular
  expression over the rich text bodies, not by FTS5); person1's rooms.
  Reads: before each run, one response is fetched with the workload's own headers
  (so gzipped), gunzipped and checked in full: status 200; the data-message-id
  values, in order, are exactly the expected ids (the search's are read from
  id="search-results" on); for the sidebar, id="user_sidebar" and
  id="shared_rooms" are there and #shared_rooms links exactly person1's rooms.
  A second fetch must return the same bytes. Then, under load:
    wrk (it cannot gunzip in Lua): each response must be 200 and byte-identical
      to that verified reference, so it holds exactly the expected ids too; a
      response that differs in any byte counts as failed.
    stdlib: a response byte-identical to the reference passes at once; any
      other is gunzipped and checked in full as above.
  If the reference itself fails, every response of that workload counts as
  failed (and the reason is printed). If two fetches differ (a page that is not
  deterministic), that workload runs on the stdlib generator.
  Posts (sent with Accept-Encoding: gzip too; wrk gunzips them with zlib through
  LuaJIT's FFI, and falls back to not asking for gzip if that is unavailable,
  which the report then says): status 201; exactly one data-message-id; its
  data-client-message-id is the one sent (stdlib: the very request on that
  connection; wrk, which cannot pair a response with its request: one this
  thread sent and not acknowledged before); the body shows the text posted.
  Acknowledged ids are kept for the write audit.

The ceilings
  Reads (and /up, static): a bare asyncio.Protocol server that answers every
  request with "hello" (the fastest a stdlib Python server can be on this
  machine), measured with the same load generator, connection count and
  duration. Its start time and RSS are the ceilings for campfire's.
  Posts: SQLite+FTS5 inserts in-process (a message row + a rich text row + an
  FTS row per message) into a copy of the seeded database (Campfire's schema
  and size), WAL, PRAGMA synchronous=FULL, foreign keys on: one message per
  transaction, and 100 per transaction. The post row's ceiling is the batched
  figure.

How to read the output
  "% ceil" is the figure as a percentage of the ceiling's: for req/s higher is
  better (100% would be as fast as the ceiling); for latency, start time and RSS
  lower is better (200% means twice the ceiling's). "target" compares with
  the project's performance targets, listed in the README (the no-cache rows are
  reported without a target).
  "gen" names the load generator: wrk (when on PATH) or "py", the stdlib
  generator below. The client shares the 2 cores with the server, so figures
  from the two generators are not comparable with each other; each row is
  compared with the ceiling measured by its own generator. With --repeat N
  every figure is the median of N runs and the counts are totals.

Flags
  --duration S, --warmup S, --connections N, --repeat N, --only NAME[,NAME],
  --skip-no-cache, --no-wrk, --campfire PATH, --seed MESSAGES (0: no seeding,
  no signed-in workloads), --ceiling-server PORT (see --help).

Adding a workload: add it in campfire_workloads(); see its docstring.

Sections
  Constants
  Workloads and checks
  Processes (every child tracked and stopped)
  HTTP helpers (one request, the /up poll, RSS)
  Ceiling server
  Campfire server (start, start time, seeding, sign-in)
  The seeded database (expected ids, write audit, insert ceilings)
  Load generator: wrk
  Load generator: stdlib (processes x selectors)
  Statistics
  The report
  main()
"""

import argparse
import atexit
import collections
import dataclasses
import http.client
import itertools
import os
import random
import re
import secrets
import selectors
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

###############################################################################
# Constants ###################################################################
###############################################################################

HOST = "127.0.0.1"  # everything stays on the loopback interface
CAMPFIRE_PATH = Path(__file__).resolve().parent.parent / "campfire.py"

DEFAULT_DURATION_S = 3.0
DEFAULT_WARMUP_S = 1.0
DEFAULT_CONNECTIONS = 16  # the targets are stated for 16 keep-alive clients
CLIENT_PROCESSES = 2  # one per core; the client shares the cores with the server
WRK_THREADS = 2  # the same split for wrk
WRK_TIMEOUT_GRACE_S = 30.0  # beyond the run's duration before wrk is killed

START_RUNS = 9  # start time is the median of this many runs
START_TIMEOUT_S = 15.0  # a server not up by then counts as failed to start
START_POLL_PAUSE_S = 0.0002  # between connection attempts while polling /up
POLL_REQUEST_TIMEOUT_S = 2.0
REFERENCE_TIMEOUT_S = 10.0  # one reference fetch (an uncached search may be slow)
STOP_TIMEOUT_S = 5.0  # SIGTERM, then SIGKILL after this
IDLE_SETTLE_S = 7.0  # quiet before reading an "idle" RSS (campfire.IDLE_RELEASE_AFTER is 5 s)
SEED_TIMEOUT_S = 900.0  # seeding must finish within this
SQLITE_TIMEOUT_S = 30.0  # busy timeout of the script's own connections

CLIENT_START_DELAY_S = 0.3  # lets every client process fork before the clock starts
CLIENT_RESULT_GRACE_S = 15.0  # for a client process to report after the run ends
CONNECT_TIMEOUT_S = 2.0
RECONNECT_PAUSE_S = 0.01  # after a refused connection, so errors do not spin
SELECT_TIMEOUT_S = 0.05  # upper bound of one select(), so the run ends on time
RECV_BYTES = 256 * 1024  # one recv() takes a whole page of messages

UP_MARKER = b"background-color: green"  # /up's body when the server is ready

# The performance targets the README states
TARGET_START_MS = 150.0
TARGET_IDLE_RSS_MB = 30.0
TARGET_READ_RPS = 20_000.0  # room page, messages page, sidebar, search
TARGET_READ_P99_MS = 5.0
TARGET_AFRESH_RPS = {"room": 2_000.0, "messages": 2_500.0, "sidebar": 8_000.0,  # with caches off
                     "search": 1_500.0, "search-rare": 5_000.0}
TARGET_POST_RPS = 6_500.0

# What `campfire.py seed` creates (person1 is an administrator and a member of
# every room; seed prints the administrator's password, made up for each seed).
DEFAULT_SEED_MESSAGES = 100_000
SEED_EMAIL_ADDRESS = "person1@example.com"
SEEDED_ADMIN_PASSWORD = re.compile(rb"\(an administrator\) with the password '([A-Za-z0-9]+)'")

# The signed-in workloads
READ_ROOM_ID = 1  # room, messages page and post all use this room (an open room)
PAGE_SIZE = 40  # messages on a room page and on a messages page
SEARCH_WORD = "coffee"  # a seed word; no other seed word has the same Porter stem
SEARCH_RARE_WORD = "walrus"  # seed's rare word (SEED_RARE_WORD), likewise alone with its stem
SEARCH_LIMIT = 100  # newest matches on the search page
BROWSER_ACCEPT_ENCODING = "gzip, deflate, br"
POST_TEXT = "bench post "  # a post's body is <div>POST_TEXT + its client_message_id</div>
INSERT_BATCH = 100  # messages per transaction in the batched insert ceiling

BASIC_WORKLOADS = ("up", "static")
READ_WORKLOADS = ("room", "messages", "sidebar", "search", "search-rare")
POST_WORKLOAD = "post"
NO_CACHE_SUFFIX = " (no cache)"
AFTER_POSTS_SUFFIX = " after posts"  # the search run again once the posts are newer than its results

EXIT_CAMPFIRE_DID_NOT_START = 1
EXIT_CHECKS_FAILED = 2

###############################################################################
# Workloads and checks ########################################################
###############################################################################

MESSAGE_ID_RE = re.compile(rb'data-message-id="(\d+)"')
CLIENT_MESSAGE_ID_RE = re.compile(rb'data-client-message-id="([^"]*)"')
ROOM_LINK_RE = re.compile(rb'href="/rooms/(\d+)"')
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Expect:
    """A response check: `Expect(200, contains=(b'id="message_42"',))(status, body)`.

    It is also rendered as Lua (`lua()`), so wrk checks every response with it.
    A workload may use any `check(status, body) -> bool` instead; one without a
    `lua()` method is run by the stdlib generator even when wrk is available.
    """

    status: int = 200
    contains: tuple = ()  # byte strings that must all be in the body
    min_bytes: int = 0  # the body is at least this long

    def __call__(self, status: int, body: bytes) -> bool:
        if status != self.status or len(body) < self.min_bytes:
            return False
        return all(needle in body for needle in self.contains)

    def lua(self) -> str:
        """A Lua expression over `status` and `body` that is true when the check passes."""
        terms = [f"status == {self.status}"]
        if self.min_bytes:
            terms.append(f"#body >= {self.min_bytes}")
        terms += [f"string.find(body, {_lua_string(n)}, 1, true) ~= nil" for n in self.contains]
        return " and ".join(terms)


def gunzipped(body: bytes) -> bytes:
    """The body, decompressed when it starts with gzip's magic bytes; ValueError if corrupt."""
    if body[:2] != GZIP_MAGIC:
        return body
    try:
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    except zlib.error as error:
        raise ValueError(f"corrupt gzip body ({error})") from None


def _describe_ids(got: list, expected: list) -> str:
    def span(ids):
        return f"{len(ids)} ids" + (f" {ids[0]}..{ids[-1]}" if ids else "")
    at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    return f"message ids: got {span(got)}, expected {span(expected)} (first difference at #{at + 1})"


@dataclass(frozen=True)
class PageCheck:
    """A signed-in read: 200, and in the gunzipped body exactly the expected
    message ids, in order (from `section` on, if given), or, with `room_ids`
    (the sidebar), exactly those rooms linked in #shared_rooms.

    Before a run, with_reference() fetches one response, checks it in full and
    keeps its bytes. Then a response byte-identical to that reference passes at
    once; in Python any other is gunzipped and checked in full, in Lua (wrk)
    any other fails. Without a verified reference every response fails in Lua.
    """

    expected_ids: tuple = ()  # message ids in the order the page shows them
    section: bytes = b""  # the ids are read from this marker on
    room_ids: tuple = ()  # the sidebar: rooms that #shared_rooms must link, and only those
    markers: tuple = ()  # byte strings that must be in the body
    reference: Optional[bytes] = None  # a verified response body
    reference_path: Optional[str] = None  # the same bytes in a file, read by the Lua script
    stable: bool = True  # False: two fetches differed, so wrk cannot compare bytes

    def problems(self, status: int, body: bytes) -> list:
        if status != 200:
            return [f"HTTP {status}"]
        try:
            text = gunzipped(body)
        except ValueError as error:
            return [str(error)]
        found = [f"no {marker.decode()}" for marker in self.markers if marker not in text]
        if self.section:
            at = text.find(self.section)
            if at < 0:
                return found + [f"no {self.section.decode()}"]
            text = text[at:]
        if self.room_ids:
            start = text.find(b'id="shared_rooms"')
            links = ROOM_LINK_RE.findall(text[start:text.find(b"</ul>", start)]) if start >= 0 else []
            got = sorted(int(room_id) for room_id in links)
            if got != sorted(self.room_ids):
                found.append(f"#shared_rooms links rooms {got}, expected {sorted(self.room_ids)}")
        else:
            got = [int(message_id) for message_id in MESSAGE_ID_RE.findall(text)]
            if got != list(self.expected_ids):
                found.append(_describe_ids(got, list(self.expected_ids)))
        return found

    def __call__(self, status: int, body: bytes) -> bool:
        if self.reference is not None and status == 200 and body == self.reference:
            return True
        return not self.problems(status, body)

    @property
    def wrk_ok(self) -> bool:
        return self.stable

    def lua_prelude(self) -> str:
        if self.reference_path is None:
            return ""
        return f'local REFERENCE = assert(io.open({_lua_string(self.reference_path)}, "rb")):read("*a")\n'

    def lua(self) -> str:
        return "status == 200 and body == REFERENCE" if self.reference_path else "false"


@dataclass(frozen=True)
class PostSpec:
    """Posts whose form carries a unique client_message_id: `prefix` + tag + "-" + n.

    The prefix starts with a token found nowhere else (e.g. "bx3f9a01c2"), so the
    audit finds this run's posts by it, in `messages` and through FTS5 MATCH."""

    token: str
    room_id: int
    creator_id: int
    id_field: str = "message[client_message_id]"
    body_field: str = "message[body]"

    @property
    def prefix(self) -> str:
        return self.token + "-"

    def body_html(self, client_id: str) -> str:
        return f"<div>{POST_TEXT}{client_id}</div>"

    def form_parts(self) -> list:
        """The urlencoded form split where the client id goes (the id needs no escaping)."""
        placeholder = "CLIENTIDPLACEHOLDER"
        form = urllib.parse.urlencode({self.body_field: self.body_html(placeholder),
                                       self.id_field: placeholder})
        return form.split(placeholder)

    def form(self, client_id: str) -> bytes:
        return client_id.join(self.form_parts()).encode()

    def accepted(self, status: int, body: bytes, client_id: str) -> Optional[int]:
        """The new message's id when the response acknowledges exactly this post, else None."""
        if status != 201:
            return None
        try:
            text = gunzipped(body)
        except ValueError:
            return None
        ids = MESSAGE_ID_RE.findall(text)
        client = CLIENT_MESSAGE_ID_RE.search(text)
        if len(ids) != 1 or client is None or client.group(1).decode(errors="replace") != client_id:
            return None
        if (POST_TEXT + client_id).encode() not in text:
            return None
        return int(ids[0])


@dataclass(frozen=True)
class Workload:
    """One request, repeated on every connection, and the check of every response.

    `kind` says where it runs: "basic" and "read" on the server as it ships,
    "read" again with --no-cache, "post" last (see run_benchmark)."""

    name: str
    method: str
    path: str
    headers: tuple = ()  # (name, value) pairs
    body: bytes = b""
    check: Callable[[int, bytes], bool] = Expect()
    target_rps: Optional[float] = None
    target_p99_ms: Optional[float] = None
    kind: str = "basic"
    posts: Optional[PostSpec] = None  # a unique client id per request (the stdlib generator and wrk)

    def headers_for(self, port: int) -> list:
        """The headers, with what a browser adds to an unsafe request."""
        headers = list(self.headers)
        names = {name.lower() for name, _ in headers}
        if self.method not in ("GET", "HEAD"):
            if "origin" not in names:
                headers.append(("Origin", f"http://{HOST}:{port}"))
            if "sec-fetch-site" not in names:
                headers.append(("Sec-Fetch-Site", "same-origin"))
        return headers

    def request_head(self, port: int, content_length: Optional[int]) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {HOST}:{port}"]
        lines += [f"{name}: {value}" for name, value in self.headers_for(port)]
        if content_length is not None:
            lines.append(f"Content-Length: {content_length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def request_bytes(self, port: int) -> bytes:
        """The request, encoded once; the stdlib generator sends these bytes as they are."""
        with_length = self.body or self.method in ("POST", "PUT", "PATCH")
        return self.request_head(port, len(self.body) if with_length else None) + self.body

    def request_maker(self, port: int, tag: str) -> Callable[[], tuple]:
        """For a `posts` workload: a function returning (request bytes, client id), a new id each call."""
        counter = itertools.count(1)
        spec = self.posts

        def make():
            client_id = f"{spec.prefix}{tag}-{next(counter)}"
            body = spec.form(client_id)
            return self.request_head(port, len(body)) + body, client_id
        return make

    @property
    def wrk_can_check(self) -> bool:
        if self.posts is not None:
            return True
        return callable(getattr(self.check, "lua", None)) and getattr(self.check, "wrk_ok", True)


def workload(name, path, *, method="GET", cookie=None, headers=None, body=None, check=None,
             target_rps=None, target_p99_ms=None, kind="basic", posts=None) -> Workload:
    """Build a workload. `cookie` is a "session_token=..." string (see sign_in());
    `body` is bytes, or a dict sent as a form; a POST, PUT, PATCH or DELETE also
    carries the Origin and Sec-Fetch-Site headers a browser would send."""
    all_headers = dict(headers or {})
    if cookie:
        all_headers["Cookie"] = cookie
    if isinstance(body, dict):
        body = urllib.parse.urlencode(body).encode()
    if isinstance(body, bytes) or posts is not None:
        all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return Workload(name, method, path, tuple(all_headers.items()), body or b"", check or Expect(),
                    target_rps, target_p99_ms, kind, posts)


CEILING_WORKLOAD = workload("ceiling", "/", check=Expect(200, contains=(b"hello",)))


@dataclass(frozen=True)
class SeedFacts:
    """What the seeded database holds, read from it before any server runs."""

    db_path: Path
    messages: int
    user_id: int  # person1
    room_ids: tuple  # person1's rooms, not direct ones
    room_messages: int  # in READ_ROOM_ID
    room_page: tuple  # newest PAGE_SIZE ids of READ_ROOM_ID, oldest first
    before_id: int  # the middle message of READ_ROOM_ID
    before_page: tuple  # the PAGE_SIZE ids before it, oldest first
    search_matches: int  # messages with SEARCH_WORD in person1's rooms
    search_ids: tuple  # the newest SEARCH_LIMIT of them, newest first
    rare_matches: int  # messages with SEARCH_RARE_WORD in person1's rooms
    rare_ids: tuple  # the newest SEARCH_LIMIT of them, newest first


def campfire_workloads(cookie: Optional[str], facts: Optional[SeedFacts] = None,
                       posts: Optional[PostSpec] = None) -> list:
    """The workloads run against campfire.py, in order.

    `cookie` is a signed-in session ("session_token=...") and `facts` what the
    seeded database holds (both None without seeding): the signed-in workloads
    need both. A read ("kind" "read") is also run with caches off; its PageCheck
    gets its reference from the server before each run (with_reference()).
    A signed-in workload is added like this:

        loads.append(workload(
            "room", f"/rooms/{READ_ROOM_ID}", cookie=cookie, headers=read_headers,
            check=PageCheck(expected_ids=facts.room_page), kind="read",
            target_rps=TARGET_READ_RPS, target_p99_ms=TARGET_READ_P99_MS))
    """
    loads = [
        workload("up", "/up", check=Expect(200, contains=(UP_MARKER,))),
        workload("static", "/static/campfire.css", check=Expect(200, min_bytes=1)),
    ]
    if not (cookie and facts):
        return loads
    # A browser that has been in room 1 sends last_room too (else every room
    # page would set it again), and always asks for gzip.
    browser = {"Accept-Encoding": BROWSER_ACCEPT_ENCODING}
    session = f"{cookie}; last_room={READ_ROOM_ID}"
    read = dict(cookie=session, headers=browser, kind="read",
                target_rps=TARGET_READ_RPS, target_p99_ms=TARGET_READ_P99_MS)
    loads += [
        workload("room", f"/rooms/{READ_ROOM_ID}", check=PageCheck(expected_ids=facts.room_page), **read),
        workload("messages", f"/rooms/{READ_ROOM_ID}/messages?before={facts.before_id}",
                 check=PageCheck(expected_ids=facts.before_page), **read),
        workload("sidebar", "/users/me/sidebar", check=PageCheck(
            room_ids=facts.room_ids, markers=(b'id="user_sidebar"', b'id="shared_rooms"')), **read),
        workload("search", "/searches?" + urllib.parse.urlencode({"q": SEARCH_WORD}),
                 check=PageCheck(expected_ids=facts.search_ids, section=b'id="search-results"'), **read),
    ]
    if facts.rare_ids:
        loads.append(workload("search-rare", "/searches?" + urllib.parse.urlencode({"q": SEARCH_RARE_WORD}),
                              check=PageCheck(expected_ids=facts.rare_ids, section=b'id="search-results"'), **read))
    if posts:
        loads.append(workload(POST_WORKLOAD, f"/rooms/{posts.room_id}/messages", method="POST",
                              cookie=session, headers=browser, kind="post", posts=posts,
                              check=Expect(201), target_rps=TARGET_POST_RPS))
    return loads


def without_cache(load: Workload) -> Workload:
    """The same read, reported as "NAME (no cache)", with its target for a page rendered afresh."""
    return dataclasses.replace(load, name=load.name + NO_CACHE_SUFFIX, target_rps=TARGET_AFRESH_RPS.get(load.name),
                               target_p99_ms=None)


def with_reference(load: Workload, port: int, scratch: Path) -> tuple:
    """The workload with its PageCheck's reference, fetched (twice) from the server
    with the workload's own headers and checked in full: (workload, problems)."""
    check = load.check
    headers = dict(load.headers_for(port))
    try:
        first = fetch(port, load.method, load.path, headers=headers, timeout=REFERENCE_TIMEOUT_S)
        second = fetch(port, load.method, load.path, headers=headers, timeout=REFERENCE_TIMEOUT_S)
    except (OSError, http.client.HTTPException) as error:
        return load, [f"the reference request failed: {error}"]
    status, _, body = first
    problems = check.problems(status, body)
    if problems:
        return load, problems
    path = scratch / (re.sub(r"\W+", "-", load.name).strip("-") + ".reference")
    path.write_bytes(body)
    stable = second[0] == status and second[2] == body
    return dataclasses.replace(load, check=dataclasses.replace(
        check, reference=body, reference_path=str(path), stable=stable)), []


def _lua_string(value) -> str:
    """A Lua string literal for bytes or str; decimal escapes for anything unusual."""
    data = value.encode() if isinstance(value, str) else value
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}"
                         for b in data) + '"'


###############################################################################
# Processes (every child tracked and stopped) #################################
###############################################################################


class Processes:
    """Every server the benchmark starts, so that all of them are stopped at the end.

    Each child leads its own session (its own process group), so Ctrl-C in the
    terminal reaches only the benchmark, which then stops the group of each.
    """

    def __init__(self):
        self._running = {}  # pid -> (Popen, log file or None)

    def start(self, argv, *, env=None, log_path=None) -> subprocess.Popen:
        log = open(log_path, "ab") if log_path else None
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self._running[proc.pid] = (proc, log)
        return proc

    def stop(self, proc: subprocess.Popen, *, kill=False) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not gone after
        STOP_TIMEOUT_S; with kill=True, SIGKILL at once."""
        _, log = self._running.pop(proc.pid, (proc, None))
        for sig in ((signal.SIGKILL,) if kill else (signal.SIGTERM, signal.SIGKILL)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                proc.poll()  # already gone: reap it
                break
            try:
                proc.wait(STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                continue
        if log:
            log.close()

    def stop_all(self) -> None:
        for proc, _ in list(self._running.values()):
            self.stop(proc)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the finally blocks


###############################################################################
# HTTP helpers (one request, the /up poll, RSS) ###############################
###############################################################################


def fetch(port, method, path, *, headers=None, body=None, timeout=POLL_REQUEST_TIMEOUT_S):
    """One request on a new connection: (status, headers, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def wait_until_up(port, proc, check, timeout_s=START_TIMEOUT_S) -> Optional[float]:
    """Poll GET /up until a response passes `check`; the perf_counter() of that moment,
    or None when the server exits or is not up within timeout_s."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            return None
        try:
            status, _, body = fetch(port, "GET", "/up")
            if check(status, body):
                return time.perf_counter()
        except (OSError, http.client.HTTPException):
            pass  # not listening yet, or closed on us while starting
        time.sleep(START_POLL_PAUSE_S)
    return None


def rss_mb(pid) -> Optional[float]:
    """VmRSS of a process in MB, or None when it has gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


###############################################################################
# Ceiling server ##############################################################
###############################################################################

# Run as `python3 -c CEILING_SERVER_SOURCE HOST PORT`, so its start time and RSS
# are Python's and asyncio's and nothing else. It answers GETs only (no bodies).
CEILING_SERVER_SOURCE = r'''
import asyncio, sys

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"

class Hello(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        buffer = self.buffer + data
        requests = buffer.count(b"\r\n\r\n")
        if requests:
            self.transport.write(RESPONSE * requests)
            buffer = buffer[buffer.rfind(b"\r\n\r\n") + 4:]
        self.buffer = buffer

async def main(host, port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Hello, host, port, backlog=1024)
    await server.serve_forever()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
'''


def ceiling_argv(port) -> list:
    return [sys.executable, "-c", CEILING_SERVER_SOURCE, HOST, str(port)]


def serve_ceiling_in_foreground(port) -> int:
    """`bench.py --ceiling-server PORT`: the ceiling server, for trying other generators."""
    sys.argv = ["ceiling-server", HOST, str(port)]
    try:
        exec(compile(CEILING_SERVER_SOURCE, "<ceiling-server>", "exec"), {"__name__": "__main__"})
    except KeyboardInterrupt:
        pass
    return 0


###############################################################################
# Campfire server (start, start time, seeding, sign-in) #######################
###############################################################################


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log_path: Optional[Path]


def campfire_argv(campfire: Path, port, *, no_cache=False) -> list:
    return [sys.executable, str(campfire), "serve", "--host", HOST, "--port", str(port)] + \
        (["--no-cache"] if no_cache else [])


def campfire_env(storage: Path) -> dict:
    """The server's environment: its storage, and bytecode caching as on any normal install
    (a PYTHONDONTWRITEBYTECODE inherited from a development shell would make every start
    compile campfire.py twice)."""
    env = dict(os.environ, CAMPFIRE_STORAGE_PATH=str(storage))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def start_server(processes, name, argv_for_port, check, *, env=None, log_path=None):
    """Start a server on a free port and wait for /up: (Server or None, ms from exec to up)."""
    port = free_port()
    argv = argv_for_port(port)
    started = time.perf_counter()
    proc = processes.start(argv, env=env, log_path=log_path)
    up_at = wait_until_up(port, proc, check)
    if up_at is None:
        processes.stop(proc)
        return None, None
    return Server(name, proc, port, log_path), (up_at - started) * 1000


def start_times_ms(processes, name, argv_for_port, check, env_for_run, log_path) -> list:
    """START_RUNS starts, each stopped once up; the list of times (ms), empty on failure."""
    times = []
    for run in range(START_RUNS):
        server, ms = start_server(processes, name, argv_for_port, check,
                                  env=env_for_run(run), log_path=log_path)
        if server is None:
            return []
        processes.stop(server.proc)
        times.append(ms)
    return times


def seed_storage(campfire: Path, storage: Path, messages: int, log_path: Path, *, users=None,
                 rooms=None) -> Optional[str]:
    """`campfire.py seed --messages N` (and --users, --rooms when given) into a storage
    directory; the administrator's password it printed, or None when seeding failed."""
    sizes = [*(["--users", str(users)] if users else []), *(["--rooms", str(rooms)] if rooms else [])]
    with open(log_path, "ab") as log:
        try:
            done = subprocess.run([sys.executable, str(campfire), "seed", "--messages", str(messages), *sizes],
                                  env=campfire_env(storage), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=log, timeout=SEED_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None
        log.write(done.stdout)
    found = SEEDED_ADMIN_PASSWORD.search(done.stdout)
    return found.group(1).decode() if done.returncode == 0 and found else None


def sign_in(port, email_address, password) -> Optional[str]:
    """POST /session as a browser would; the "session_token=..." cookie, or None."""
    body = urllib.parse.urlencode({"email_address": email_address, "password": password})
    status, headers, _ = fetch(port, "POST", "/session", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "Origin": f"http://{HOST}:{port}", "Sec-Fetch-Site": "same-origin"})
    for name, value in headers:
        if name.lower() == "set-cookie" and value.startswith("session_token="):
            return value.split(";", 1)[0]
    print(f"sign-in as {email_address} failed: HTTP {status}", file=sys.stderr)
    return None


def log_tail(log_path, lines=15) -> str:
    try:
        return "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


###############################################################################
# The seeded database (expected ids, write audit, insert ceilings) ############
###############################################################################


def database_path(storage: Path) -> Path:
    return storage / "db" / "production.sqlite3"


def _read_only(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=SQLITE_TIMEOUT_S)


def read_seed_facts(db_path: Path, email_address: str) -> SeedFacts:
    """The ids each read must show, straight from the SQLite file (not through campfire.py)."""
    db = _read_only(db_path)
    try:
        row = db.execute("SELECT id FROM users WHERE email_address = ?", (email_address,)).fetchone()
        if row is None:
            raise RuntimeError(f"the seeded database has no user {email_address}")
        user_id = row[0]
        room_ids = tuple(r[0] for r in db.execute(
            "SELECT rooms.id FROM memberships JOIN rooms ON rooms.id = memberships.room_id "
            "WHERE memberships.user_id = ? AND rooms.type != 'Rooms::Direct' ORDER BY rooms.id", (user_id,)))
        if READ_ROOM_ID not in room_ids:
            raise RuntimeError(f"{email_address} is not a member of room {READ_ROOM_ID}")
        in_room = [r[0] for r in db.execute(
            "SELECT id FROM messages WHERE room_id = ? ORDER BY created_at, id", (READ_ROOM_ID,))]
        if len(in_room) < 4 * PAGE_SIZE:
            raise RuntimeError(f"room {READ_ROOM_ID} has only {len(in_room)} messages; seed more")
        middle = len(in_room) // 2
        # Search: a whole-word match in the rich text, newest first (by created_at,
        # then id), in person1's rooms; independent of FTS5 (its Porter stemmer
        # maps no other seed word to "coffee" or "walrus").
        tag = re.compile(r"<[^>]*>")
        marks = ",".join("?" * len(room_ids))
        texts = [(message_id, tag.sub(" ", body or "")) for message_id, body in db.execute(
            "SELECT messages.id, action_text_rich_texts.body FROM messages JOIN action_text_rich_texts "
            "ON action_text_rich_texts.record_type = 'Message' AND action_text_rich_texts.record_id = messages.id "
            "AND action_text_rich_texts.name = 'body' "
            f"WHERE messages.room_id IN ({marks}) ORDER BY messages.created_at DESC, messages.id DESC", room_ids)]

        def containing(search_word):
            word = re.compile(r"(?<!\w)%s(?!\w)" % re.escape(search_word), re.IGNORECASE)
            return [message_id for message_id, text in texts if word.search(text)]
        matches, rare = containing(SEARCH_WORD), containing(SEARCH_RARE_WORD)
        if len(matches) < SEARCH_LIMIT:
            raise RuntimeError(f"only {len(matches)} messages contain {SEARCH_WORD!r}; seed more")
        return SeedFacts(
            db_path=db_path,
            messages=db.execute("SELECT count(*) FROM messages").fetchone()[0],
            user_id=user_id, room_ids=room_ids, room_messages=len(in_room),
            room_page=tuple(in_room[-PAGE_SIZE:]), before_id=in_room[middle],
            before_page=tuple(in_room[middle - PAGE_SIZE:middle]),
            search_matches=len(matches), search_ids=tuple(matches[:SEARCH_LIMIT]),
            rare_matches=len(rare), rare_ids=tuple(rare[:SEARCH_LIMIT]))
    finally:
        db.close()


@dataclass
class PostLedger:
    """What the clients of the post workload sent and which posts were acknowledged."""

    sent: set = field(default_factory=set)  # client ids generated (a superset of those sent)
    acked: dict = field(default_factory=dict)  # client id -> message id, from 201s that passed the check
    refused: dict = field(default_factory=dict)  # client id -> non-2xx status it was answered with (stdlib)
    double_acks: int = 0  # a client id acknowledged twice (the stdlib generator can tell)
    runs: int = 0  # generator runs (each can leave `connections` posts in flight when it stops)
    errors: int = 0  # socket errors (each can lose the answer to one post)
    gunzip: Optional[bool] = None  # wrk: could its Lua gunzip (so asked for gzip)?

    def merge(self, other: "PostLedger") -> None:
        self.double_acks += other.double_acks + len(self.acked.keys() & other.acked.keys())
        self.sent |= other.sent
        self.acked.update(other.acked)
        self.refused.update(other.refused)
        self.runs += other.runs
        self.errors += other.errors
        if other.gunzip is not None:
            self.gunzip = other.gunzip if self.gunzip is None else self.gunzip and other.gunzip


@dataclass
class Audit:
    ok: bool
    summary: str
    problems: list
    seconds: float


def audit_posts(db_path: Path, spec: PostSpec, ledger: PostLedger, seeded_messages: int,
                connections: int) -> Audit:
    """Every acknowledged post in the database with its rich text and FTS row, none
    extra, totals that add up, integrity checks ok (run after the server is gone)."""
    started = time.perf_counter()
    problems = []

    def problem(count, text, examples=()):
        if count:
            shown = ", ".join(str(e) for e in list(examples)[:3])
            problems.append(f"{count:,} {text}" + (f" (e.g. {shown})" if shown else ""))

    db = sqlite3.connect(str(db_path), isolation_level=None, timeout=SQLITE_TIMEOUT_S)
    try:
        like = spec.prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = db.execute(
            "SELECT messages.id, messages.client_message_id, messages.room_id, messages.creator_id, "
            "action_text_rich_texts.body, message_search_index.body FROM messages "
            "LEFT JOIN action_text_rich_texts ON action_text_rich_texts.record_type = 'Message' "
            "AND action_text_rich_texts.record_id = messages.id AND action_text_rich_texts.name = 'body' "
            "LEFT JOIN message_search_index ON message_search_index.rowid = messages.id "
            "WHERE messages.client_message_id LIKE ? ESCAPE '\\'", (like,)).fetchall()
        matched = {r[0] for r in db.execute(
            "SELECT rowid FROM message_search_index WHERE message_search_index MATCH ?", (f'"{spec.token}"',))}
        by_client = collections.defaultdict(list)
        for row in rows:
            by_client[row[1]].append(row)
        message_ids = [row[0] for row in rows]

        # Every acknowledged post is there, as acknowledged, with its rows.
        missing = [c for c in ledger.acked if c not in by_client]
        other_id = [c for c, m in ledger.acked.items() if c in by_client and by_client[c][0][0] != m]
        bad = collections.defaultdict(list)
        for client_id, found in by_client.items():
            message_id, _, room_id, creator_id, rich, fts = found[0]
            if room_id != spec.room_id or creator_id != spec.creator_id:
                bad["in the wrong room or by the wrong person"].append(message_id)
            if rich is None or (POST_TEXT + client_id) not in rich:
                bad["without their rich text (or with another text)"].append(message_id)
            if fts is None or client_id not in fts:
                bad["without their FTS row (or with another text)"].append(message_id)
            if message_id not in matched:
                bad["not found by FTS5 MATCH"].append(message_id)
        problem(len(missing), "acknowledged posts are not in messages", missing)
        problem(len(other_id), "acknowledged posts have another message id than the 201 said", other_id)
        for text, ids in bad.items():
            problem(len(ids), f"posts of this run are {text}", ids)

        # None extra.
        repeated = [c for c, found in by_client.items() if len(found) > 1]
        problem(len(repeated), "client ids are in messages more than once (or with two rich texts)", repeated)
        problem(ledger.double_acks, "client ids were acknowledged twice")
        never_sent = [c for c in by_client if c not in ledger.sent]
        problem(len(never_sent), "posts are in messages that were never sent", never_sent)
        refused = [f"{c} (HTTP {ledger.refused[c]})" for c in by_client if c in ledger.refused]
        problem(len(refused), "posts are in messages although answered with an error", refused)
        unacknowledged = [c for c in by_client if c not in ledger.acked and c not in ledger.refused]
        in_flight_max = connections * ledger.runs + ledger.errors
        if len(unacknowledged) > in_flight_max:
            problem(len(unacknowledged), f"posts are in messages without an acknowledgement, more than the "
                                         f"{in_flight_max} that can have been in flight when a run stopped",
                    unacknowledged)
        stray_fts = matched - set(message_ids)
        problem(len(stray_fts), "FTS rows carry this run's token without a message", sorted(stray_fts))

        # The totals add up: nothing else was written, nothing lost.
        total = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        fts_total = db.execute("SELECT count(*) FROM message_search_index").fetchone()[0]
        rich_total = db.execute("SELECT count(*) FROM action_text_rich_texts "
                                "WHERE record_type = 'Message' AND name = 'body'").fetchone()[0]
        posted = len(set(message_ids))
        if total != seeded_messages + posted:
            problems.append(f"{total:,} messages, not {seeded_messages:,} seeded + {posted:,} posted")
        if fts_total != total:
            problems.append(f"{fts_total:,} FTS rows for {total:,} messages")
        if rich_total != total:
            problems.append(f"{rich_total:,} message rich texts for {total:,} messages")
        integrity = [r[0] for r in db.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            problems.append("PRAGMA integrity_check: " + "; ".join(integrity[:5]))
        try:
            db.execute("INSERT INTO message_search_index(message_search_index) VALUES('integrity-check')")
            fts_integrity = "ok"
        except sqlite3.DatabaseError as error:
            fts_integrity = f"failed ({error})"
            problems.append(f"FTS5 integrity-check: {error}")
    except sqlite3.Error as error:
        problems.append(f"the audit could not read the database: {error}")
        return Audit(False, "could not read the database", problems, time.perf_counter() - started)
    finally:
        db.close()
    seconds = time.perf_counter() - started
    acknowledged = len(ledger.acked)
    summary = (f"{acknowledged - len(missing):,} of {acknowledged:,} acknowledged posts in messages with their "
               f"rich text and FTS row (found by MATCH); {len(unacknowledged)} committed without an "
               f"acknowledgement (in flight when a run stopped; at most {in_flight_max} can be); "
               f"{len(never_sent)} never sent, {len(repeated)} twice; {total:,} messages = {seeded_messages:,} "
               f"seeded + {posted:,} posted, FTS rows {fts_total:,}, rich texts {rich_total:,}; "
               f"PRAGMA integrity_check {'ok' if integrity == ['ok'] else 'FAILED'}; "
               f"FTS5 integrity-check {fts_integrity}")
    return Audit(not problems, summary, problems, seconds)


def _ceiling_words(rng, count) -> list:
    words = ("coffee deploy release search trombone tada lunch meeting design review bug fix ship today "
             "customer support question answer idea plan roadmap feature launch test build green").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 18))) for _ in range(count)]


def insert_rate(db_path: Path, per_transaction: int, seconds: float, room_id: int, creator_id: int) -> float:
    """Messages per second inserted as Campfire inserts one (a message row, its rich
    text row and its FTS row), `per_transaction` to a transaction, for `seconds`."""
    db = sqlite3.connect(str(db_path), isolation_level=None, timeout=SQLITE_TIMEOUT_S)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        texts = _ceiling_words(random.Random(per_transaction), 997)
        inserted = 0
        started = time.perf_counter()
        stop = started + seconds
        while time.perf_counter() < stop:
            db.execute("BEGIN IMMEDIATE")
            for _ in range(per_transaction):
                inserted += 1
                text = texts[inserted % len(texts)]
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()) + ".000000"
                message_id = db.execute(
                    "INSERT INTO messages (room_id, creator_id, client_message_id, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?)", (room_id, creator_id, f"ceiling-{per_transaction}-{inserted}",
                                                stamp, stamp)).lastrowid
                db.execute("INSERT INTO action_text_rich_texts (name, body, record_type, record_id, created_at, "
                           "updated_at) VALUES ('body', ?, 'Message', ?, ?, ?)",
                           (f"<div>{text}</div>", message_id, stamp, stamp))
                db.execute("INSERT INTO message_search_index (rowid, body) VALUES (?, ?)", (message_id, text))
            db.execute("COMMIT")
        return inserted / (time.perf_counter() - started)
    finally:
        db.close()


def measure_insert_ceilings(db_path: Path, scratch: Path, seconds: float, room_id: int,
                            creator_id: int) -> dict:
    """One message per transaction and INSERT_BATCH per transaction, each into its own
    copy of the (audited) database: {"one": per s, "batched": per s}."""
    rates = {}
    for name, per_transaction in (("one", 1), ("batched", INSERT_BATCH)):
        copy = scratch / f"ceiling-{name}.sqlite3"
        source = _read_only(db_path)
        target = sqlite3.connect(str(copy))
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        progress(f"insert ceiling: {per_transaction} per transaction, {seconds:g} s")
        rates[name] = insert_rate(copy, per_transaction, seconds, room_id, creator_id)
        progress(f"  {rates[name]:,.0f} messages/s")
        for suffix in ("", "-wal", "-shm"):
            Path(str(copy) + suffix).unlink(missing_ok=True)
    return rates


###############################################################################
# Load generator: wrk #########################################################
###############################################################################


@dataclass
class RunResult:
    """One measured run of one workload (or the medians of several, see median_run)."""

    rps: float
    p50_ms: float
    p99_ms: float
    failed: int  # responses whose check returned False (warm-up included)
    non2xx: int
    errors: int  # connect, read, write errors and timeouts
    checked: int = 0  # responses checked (warm-up included)
    ledger: Optional[PostLedger] = None  # the post workload's
    sample: Optional[tuple] = None  # (status, body) of the first response that failed its check


WRK_SCRIPT = """\
wrk.method = {method}
{body}{headers}
{prelude}
local SAMPLE = {sample}
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  failed = 0
  non2xx = 0
end

local function check(status, body)
  return {check}
end

function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
  if not check(status, body or "") then
    failed = failed + 1
    if failed == 1 then
      local file = io.open(SAMPLE .. "-" .. tid, "wb")
      if file then file:write(status, "\\n", body or ""); file:close() end
    end
  end
end

function done(summary, latency, requests)
  local failed_total, non2xx_total = 0, 0
  for _, thread in ipairs(threads) do
    failed_total = failed_total + thread:get("failed")
    non2xx_total = non2xx_total + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%.1f p99_us=%.1f failed=%d non2xx=%d errors=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    failed_total, non2xx_total, e.connect + e.read + e.write + e.timeout))
end
"""

# gunzip(s) through zlib and LuaJIT's FFI, or nil when either is missing; the
# layout is zlib's z_stream on LP64 (inflateInit2_ checks its size and version).
WRK_GUNZIP = """\
local gunzip = nil
do
  local has_ffi, ffi = pcall(require, "ffi")
  if has_ffi then
    pcall(ffi.cdef, [[
      typedef struct bench_z_stream {
        const char *next_in; unsigned int avail_in; unsigned long total_in;
        unsigned char *next_out; unsigned int avail_out; unsigned long total_out;
        const char *msg; void *state; void *zalloc; void *zfree; void *opaque;
        int data_type; unsigned long adler; unsigned long reserved;
      } bench_z_stream;
      const char *zlibVersion(void);
      int inflateInit2_(bench_z_stream *strm, int windowBits, const char *version, int stream_size);
      int inflate(bench_z_stream *strm, int flush);
      int inflateEnd(bench_z_stream *strm);
    ]])
    local has_z, z = pcall(ffi.load, "z")
    if not has_z then has_z, z = pcall(ffi.load, "libz.so.1") end
    if has_z then
      local OUT = 1048576
      local out = ffi.new("unsigned char[?]", OUT)
      local stream = ffi.new("bench_z_stream[1]")
      local size = ffi.sizeof("bench_z_stream")
      local function inflate(data)
        ffi.fill(stream, size)
        if z.inflateInit2_(stream, 31, z.zlibVersion(), size) ~= 0 then return nil end
        stream[0].next_in = data
        stream[0].avail_in = #data
        stream[0].next_out = out
        stream[0].avail_out = OUT
        local rc = z.inflate(stream, 4)
        local n = OUT - stream[0].avail_out
        z.inflateEnd(stream)
        if rc ~= 1 then return nil end
        return ffi.string(out, n)
      end
      local ok, result = pcall(inflate, GZIPPED_HELLO)
      if ok and result == "hello" then gunzip = inflate end
    end
  end
end
"""

# The post workload: a unique client id per request (PREFIX .. thread .. "-" .. n),
# every response checked, acknowledged ids and sent counts written to LEDGER.
WRK_POST_SCRIPT = """\
wrk.method = "POST"
{headers}
{gunzip}
if gunzip then wrk.headers["Accept-Encoding"] = {accept_encoding} end
local PREFIX = {prefix}
local FORM = {{ {form} }}
local POST_TEXT = {post_text}
local LEDGER = {ledger}
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  failed, non2xx, sent, nacks = 0, 0, 0, 0
  acks, seen = {{}}, {{}}
  mine = PREFIX .. tid .. "-"
end

function request()
  sent = sent + 1
  return wrk.format(nil, nil, nil, table.concat(FORM, mine .. sent))
end

local function accepted(status, body)
  if status ~= 201 then return nil end
  if body:sub(1, 2) == "\\031\\139" then
    if not gunzip then return nil end
    body = gunzip(body)
    if not body then return nil end
  end
  local _, count = body:gsub('data%-message%-id="', "")
  local mid = body:match('data%-message%-id="(%d+)"')
  local cid = body:match('data%-client%-message%-id="([^"]*)"')
  if count ~= 1 or not mid or not cid or seen[cid] then return nil end
  if cid:sub(1, #mine) ~= mine then return nil end
  local n = tonumber(cid:sub(#mine + 1))
  if not n or n > sent then return nil end
  if not body:find(POST_TEXT .. cid, 1, true) then return nil end
  return cid, mid
end

function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
  local cid, mid = accepted(status, body or "")
  if cid then
    seen[cid] = true
    nacks = nacks + 1
    acks[nacks] = cid .. " " .. mid
  else
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local ledger = assert(io.open(LEDGER, "w"))
  local failed_total, non2xx_total = 0, 0
  for _, thread in ipairs(threads) do
    failed_total = failed_total + thread:get("failed")
    non2xx_total = non2xx_total + thread:get("non2xx")
    ledger:write("sent ", PREFIX, thread:get("tid"), "- ", thread:get("sent"), "\\n")
    for _, ack in ipairs(thread:get("acks")) do ledger:write("ack ", ack, "\\n") end
  end
  ledger:write("gunzip ", gunzip and "yes" or "no", "\\n")
  ledger:close()
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%.1f p99_us=%.1f failed=%d non2xx=%d errors=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    failed_total, non2xx_total, e.connect + e.read + e.write + e.timeout))
end
"""

WRK_RESULT = re.compile(r"BENCH requests=(\d+) duration_us=(\d+) p50_us=([\d.]+) p99_us=([\d.]+) "
                        r"failed=(\d+) non2xx=(\d+) errors=(\d+)")


def _gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def wrk_script(load: Workload, port, *, label="", ledger_path=None, sample_path=None) -> str:
    if load.posts is not None:
        headers = "".join(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}\n"
                          for name, value in load.headers_for(port) if name.lower() != "accept-encoding")
        accept = dict((n.lower(), v) for n, v in load.headers).get("accept-encoding", BROWSER_ACCEPT_ENCODING)
        return WRK_POST_SCRIPT.format(
            headers=headers, gunzip=WRK_GUNZIP.replace("GZIPPED_HELLO", _lua_string(_gzip(b"hello"))),
            accept_encoding=_lua_string(accept),
            prefix=_lua_string(load.posts.prefix + label),
            form=", ".join(_lua_string(part) for part in load.posts.form_parts()),
            post_text=_lua_string(POST_TEXT), ledger=_lua_string(str(ledger_path)))
    headers = "".join(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}\n"
                      for name, value in load.headers_for(port))
    body = f"wrk.body = {_lua_string(load.body)}\n" if load.body else ""  # else no Content-Length
    prelude = getattr(load.check, "lua_prelude", lambda: "")()
    return WRK_SCRIPT.format(method=_lua_string(load.method), body=body, headers=headers,
                             prelude=prelude, check=load.check.lua(), sample=_lua_string(str(sample_path)))


def read_wrk_ledger(path: Path) -> PostLedger:
    ledger = PostLedger(runs=1)
    for line in path.read_text().splitlines():
        kind, *rest = line.split()
        if kind == "sent":
            prefix, count = rest
            ledger.sent.update(f"{prefix}{n}" for n in range(1, int(count) + 1))
        elif kind == "ack":
            client_id, message_id = rest
            ledger.acked[client_id] = int(message_id)
        elif kind == "gunzip":
            ledger.gunzip = rest == ["yes"]
    return ledger


def run_wrk(load: Workload, port, connections, duration_s, warmup_s, scratch: Path,
            label: str = "") -> RunResult:
    """wrk -t2 -c16 -d3s --latency with a Lua script that checks every response
    (after a warm-up run whose checks count too)."""
    url = f"http://{HOST}:{port}{load.path}"
    threads = str(min(WRK_THREADS, connections))
    stem = re.sub(r"\W+", "-", load.name).strip("-") + (f"-{label}" if label else "")

    def wrk(seconds, part):
        script = scratch / f"{stem}-{part}.lua"
        ledger = scratch / f"{stem}-{part}.ledger"
        script.write_text(wrk_script(load, port, label=f"{label}{part}", ledger_path=ledger,
                                     sample_path=scratch / f"{stem}-{part}.failed"))
        argv = ["wrk", "-t", threads, "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                "--latency", "-s", str(script), url]
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=seconds + WRK_TIMEOUT_GRACE_S)
        found = WRK_RESULT.search(done.stdout)
        if not found:
            raise RuntimeError(f"could not read wrk's output:\n{done.stdout}{done.stderr}")
        figures = [int(found.group(1)), int(found.group(2)), float(found.group(3)), float(found.group(4)),
                   int(found.group(5)), int(found.group(6)), int(found.group(7))]
        ledger_data = None
        if load.posts is not None:
            ledger_data = read_wrk_ledger(ledger)
            ledger_data.errors = figures[6]
        return figures, ledger_data

    warm, warm_ledger = wrk(warmup_s, "w") if warmup_s > 0 else ([0] * 7, None)
    (requests, duration_us, p50_us, p99_us, failed, non2xx, errors), ledger = wrk(duration_s, "m")
    if ledger is not None and warm_ledger is not None:
        ledger.merge(warm_ledger)
    sample = None
    for path in sorted(scratch.glob(f"{stem}-*.failed-*")):
        status, _, body = path.read_bytes().partition(b"\n")
        sample = sample or (int(status or 0), body)
        path.unlink()
    return RunResult(requests / (duration_us / 1e6), p50_us / 1000, p99_us / 1000,
                     failed + warm[4], non2xx + warm[5], errors + warm[6], requests + warm[0], ledger, sample)


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    found = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return found.group(1) if found else "?"


###############################################################################
# Load generator: stdlib (processes x selectors) ##############################
###############################################################################

_CHUNKED = -1  # body_length markers
_UNTIL_CLOSE = -2


class _Connection:
    """One keep-alive client connection and the response being read on it."""

    __slots__ = ("sock", "inbox", "outbox", "sent_at", "head_end", "status", "body_length", "close",
                 "request", "key")

    def __init__(self):
        self.sock = None
        self.inbox = bytearray()
        self.outbox = None  # the unsent rest of a request (memoryview), if any
        self.sent_at = 0.0
        self.head_end = -1  # index of the response head's \r\n\r\n, -1 until seen
        self.status = 0
        self.body_length = 0
        self.close = False
        self.request = b""  # the request in flight
        self.key = None  # its client id (posts)


class _ConnectionLost(Exception):
    pass


def _parse_head(head: bytes, is_head_request: bool):
    """(status, body length or _CHUNKED/_UNTIL_CLOSE, close after?) from a response head."""
    head = head.lower()
    status = int(head[9:12])
    close = b"\r\nconnection: close" in head
    at = head.find(b"\r\ncontent-length:")
    if is_head_request or status in (204, 304) or 100 <= status < 200:
        return status, 0, close
    if at >= 0:
        end = head.find(b"\r\n", at + 17)
        return status, int(head[at + 17:end if end >= 0 else len(head)]), close
    if b"\r\ntransfer-encoding:" in head and b"chunked" in head:
        return status, _CHUNKED, close
    return status, _UNTIL_CLOSE, True


def _parse_chunked(buf: bytearray, start: int):
    """(body, end) of a complete chunked body starting at `start`, or None (RFC 9112 7.1)."""
    parts = []
    at = start
    while True:
        line_end = buf.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buf[at:line_end]).split(b";", 1)[0], 16)
        if size == 0:
            if buf[line_end + 2:line_end + 4] == b"\r\n":
                return b"".join(parts), line_end + 4
            trailers_end = buf.find(b"\r\n\r\n", line_end)
            return None if trailers_end < 0 else (b"".join(parts), trailers_end + 4)
        data_end = line_end + 2 + size
        if len(buf) < data_end + 2:
            return None
        parts.append(bytes(buf[line_end + 2:data_end]))
        at = data_end + 2


def _take_response(c: _Connection, data: bytes, is_head_request: bool):
    """Add received bytes; the body once the response is complete, else None.
    Empty `data` means the server closed the connection."""
    inbox = c.inbox
    if not data:
        if c.head_end >= 0 and c.body_length == _UNTIL_CLOSE:
            return bytes(inbox[c.head_end + 4:])
        raise _ConnectionLost
    inbox += data
    if c.head_end < 0:
        end = inbox.find(b"\r\n\r\n")
        if end < 0:
            return None
        c.head_end = end
        c.status, c.body_length, c.close = _parse_head(bytes(inbox[:end]), is_head_request)
    start = c.head_end + 4
    length = c.body_length
    if length >= 0:
        stop = start + length
        if len(inbox) < stop:
            return None
        body = bytes(inbox[start:stop])
    elif length == _CHUNKED:
        parsed = _parse_chunked(inbox, start)
        if parsed is None:
            return None
        body, stop = parsed
    else:
        return None  # _UNTIL_CLOSE: complete when the server closes
    del inbox[:stop]
    c.head_end = -1
    return body


def _connect(port) -> Optional[socket.socket]:
    try:
        sock = socket.create_connection((HOST, port), timeout=CONNECT_TIMEOUT_S)
    except OSError:
        return None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class _Client:
    """The connections of one client process, driven by one selector until t_stop.

    Every request is `request`, or, with `make_request`, a new (bytes, key) per
    request (the keys generated are kept in `sent`)."""

    def __init__(self, port, request: bytes, connections: int, t_stop: float, make_request=None):
        self.port = port
        self.request = request
        self.make_request = make_request
        self.sent = []
        self.t_stop = t_stop
        self.selector = selectors.DefaultSelector()
        self.connections = [_Connection() for _ in range(connections)]
        self.errors = 0

    def open(self, c: _Connection) -> bool:
        """(Re)connect and send the next request; False if the run ended first."""
        if c.sock is not None:
            self.selector.unregister(c.sock)
            c.sock.close()
            c.sock = None
        c.inbox.clear()
        c.head_end = -1
        c.outbox = None
        while time.perf_counter() < self.t_stop:
            c.sock = _connect(self.port)
            if c.sock is not None:
                self.selector.register(c.sock, selectors.EVENT_READ, c)
                return self.send(c)
            self.errors += 1
            time.sleep(RECONNECT_PAUSE_S)
        return False

    def send(self, c: _Connection) -> bool:
        if self.make_request is None:
            c.request = self.request
        else:
            c.request, c.key = self.make_request()
            self.sent.append(c.key)
        c.sent_at = time.perf_counter()
        try:
            sent = c.sock.send(c.request)
        except OSError:
            self.errors += 1
            return self.open(c)
        if sent < len(c.request):  # rare: the rest goes when the socket is writable
            c.outbox = memoryview(c.request)[sent:]
            self.selector.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        return True

    def send_rest(self, c: _Connection) -> None:
        try:
            sent = c.sock.send(c.outbox)
        except BlockingIOError:
            return
        except OSError:
            self.errors += 1
            self.open(c)
            return
        c.outbox = c.outbox[sent:] if sent < len(c.outbox) else None
        if c.outbox is None:
            self.selector.modify(c.sock, selectors.EVENT_READ, c)

    def close_all(self) -> None:
        for c in self.connections:
            if c.sock is not None:
                c.sock.close()
        self.selector.close()


def _drive(port, load: Workload, tag: str, connections, t_start, t_measure, t_stop) -> dict:
    """The client process's loop: every response is checked (warm-up included);
    those completed between t_measure and t_stop are counted and their latency
    recorded. A post workload also reports the client ids sent and acknowledged."""
    perf = time.perf_counter
    latencies = array("d")
    record = latencies.append
    failed = non2xx = checked = 0
    acked, refused = {}, {}
    double_acks = 0
    sample = None
    posts = load.posts
    check = load.check
    is_head_request = load.method == "HEAD"
    client = _Client(port, load.request_bytes(port), connections, t_stop,
                     load.request_maker(port, tag) if posts is not None else None)
    select = client.selector.select
    while perf() < t_start:
        time.sleep(0.001)
    for c in client.connections:
        client.open(c)
    try:
        while True:
            now = perf()
            if now >= t_stop:
                break
            for key, mask in select(min(SELECT_TIMEOUT_S, t_stop - now)):
                c = key.data
                if mask & selectors.EVENT_WRITE and c.outbox is not None:
                    client.send_rest(c)
                if not mask & selectors.EVENT_READ or c.sock is not key.fileobj:
                    continue
                try:
                    body = _take_response(c, c.sock.recv(RECV_BYTES), is_head_request)
                except BlockingIOError:
                    continue
                except (OSError, _ConnectionLost, ValueError):
                    client.errors += 1
                    client.open(c)
                    continue
                if body is None:
                    continue
                now = perf()
                status = c.status
                checked += 1
                if posts is not None:
                    message_id = posts.accepted(status, body, c.key)
                    ok = message_id is not None
                    if ok:
                        double_acks += c.key in acked
                        acked[c.key] = message_id
                    elif status < 200 or status > 299:
                        refused[c.key] = status
                else:
                    ok = check(status, body)
                if not ok:
                    failed += 1
                    sample = sample or (status, body)
                if status < 200 or status > 299:
                    non2xx += 1
                if now >= t_measure:
                    record(now - c.sent_at)
                if c.close:
                    client.open(c)
                else:
                    client.send(c)
    finally:
        client.close_all()
    return {"latencies": latencies.tobytes(), "failed": failed, "non2xx": non2xx, "checked": checked,
            "errors": client.errors, "sent": client.sent, "acked": acked, "refused": refused,
            "double_acks": double_acks, "sample": sample}


def _client_process(pipe, *args) -> None:
    try:
        pipe.send(_drive(*args))
    except KeyboardInterrupt:
        pass
    finally:
        pipe.close()


def run_stdlib(load: Workload, port, connections, duration_s, warmup_s, label: str = "") -> RunResult:
    """CLIENT_PROCESSES forked processes, each driving its share of the connections."""
    import multiprocessing  # here, so that the benchmark's own start stays light

    context = multiprocessing.get_context("fork")  # the check need not be picklable
    processes = min(CLIENT_PROCESSES, connections)
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    t_start = time.perf_counter() + CLIENT_START_DELAY_S  # CLOCK_MONOTONIC: shared by processes
    t_measure = t_start + warmup_s
    t_stop = t_measure + duration_s
    clients = []
    reports = []
    try:
        for index, share in enumerate(shares):
            receiver, sender = context.Pipe(duplex=False)
            proc = context.Process(target=_client_process, daemon=True, args=(
                sender, port, load, f"{label}p{index + 1}", share, t_start, t_measure, t_stop))
            proc.start()
            sender.close()
            clients.append((proc, receiver))
        for proc, receiver in clients:
            wait_s = max(0.0, t_stop - time.perf_counter()) + CLIENT_RESULT_GRACE_S
            if not receiver.poll(wait_s):
                raise RuntimeError("a client process did not report in time")
            reports.append(receiver.recv())
    finally:  # on an error or Ctrl-C the clients are killed at once
        finished = len(reports) == len(clients)
        for proc, receiver in clients:
            receiver.close()
            proc.join(1.0 if finished else 0)
            if proc.is_alive():
                proc.kill()
                proc.join()
    latencies = array("d")
    for report in reports:
        latencies.frombytes(report["latencies"])
    ordered = sorted(latencies)
    ledger = None
    if load.posts is not None:
        ledger = PostLedger(runs=1, errors=sum(r["errors"] for r in reports))
        for report in reports:
            ledger.sent.update(report["sent"])
            ledger.double_acks += report["double_acks"]
            ledger.acked.update(report["acked"])
            ledger.refused.update(report["refused"])
    return RunResult(len(ordered) / duration_s, percentile(ordered, 50) * 1000,
                     percentile(ordered, 99) * 1000, sum(r["failed"] for r in reports),
                     sum(r["non2xx"] for r in reports), sum(r["errors"] for r in reports),
                     sum(r["checked"] for r in reports), ledger,
                     next((r["sample"] for r in reports if r["sample"]), None))


###############################################################################
# Statistics ##################################################################
###############################################################################


def percentile(ordered, p) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def median_run(runs: list) -> RunResult:
    """The median of each figure over repeated runs; the counts are totals, the ledgers merged."""
    ledger = None
    for run in runs:
        if run.ledger is not None:
            ledger = ledger or PostLedger()
            ledger.merge(run.ledger)
    return RunResult(rps=statistics.median(r.rps for r in runs),
                     p50_ms=statistics.median(r.p50_ms for r in runs),
                     p99_ms=statistics.median(r.p99_ms for r in runs),
                     failed=sum(r.failed for r in runs), non2xx=sum(r.non2xx for r in runs),
                     errors=sum(r.errors for r in runs), checked=sum(r.checked for r in runs),
                     ledger=ledger, sample=next((r.sample for r in runs if r.sample), None))


###############################################################################
# The report ##################################################################
###############################################################################


@dataclass
class Report:
    header: list = field(default_factory=list)
    throughput: list = field(default_factory=list)  # (Workload, generator, RunResult)
    ceilings: dict = field(default_factory=dict)  # generator -> RunResult
    insert_ceilings: dict = field(default_factory=dict)  # "one"/"batched" -> messages/s
    start_ms: dict = field(default_factory=dict)  # "ceiling"/"fresh"/"initialised" -> [ms]
    rss_mb: dict = field(default_factory=dict)  # ("after start"|"after load", server) -> MB
    audit: Optional[Audit] = None
    failures: list = field(default_factory=list)  # what makes the run fail (exit 2)
    notes: list = field(default_factory=list)


def _pct(value, ceiling) -> str:
    return f"{100 * value / ceiling:.0f}%" if value is not None and ceiling else "-"


def _num(value, fmt) -> str:
    return "n/a" if value is None else format(value, fmt)


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def _table(headers, rows) -> str:
    """Left-aligned first column, the rest right-aligned except the last (free text)."""
    widths = [max(len(str(row[i])) for row in [headers] + rows) for i in range(len(headers))]

    def line(cells):
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:-1], widths[1:-1])]
        out.append(str(cells[-1]))
        return "  ".join(out).rstrip()
    return "\n".join([line(headers)] + [line(row) for row in rows])


def _throughput_target(load: Workload, run: RunResult) -> str:
    parts, ok = [], True
    if load.target_rps:
        parts.append(f">={load.target_rps:,.0f}/s")
        ok = ok and run.rps >= load.target_rps
    if load.target_p99_ms:
        parts.append(f"p99<={load.target_p99_ms:g}ms")
        ok = ok and run.p99_ms <= load.target_p99_ms
    ok = ok and run.failed == 0 and run.non2xx == 0 and run.errors == 0
    return f"{' '.join(parts)} {_verdict(ok)}" if parts else "-"


def check_failures(report: Report) -> None:
    """A failure for every campfire workload with a failed check, a non-2xx or a socket error."""
    for load, gen, run in report.throughput:
        if load is CEILING_WORKLOAD:
            continue
        if run.failed or run.non2xx or run.errors:
            report.failures.append(
                f"{load.name}: {run.failed:,} of {run.checked:,} responses failed their check, "
                f"{run.non2xx:,} non-2xx, {run.errors:,} socket errors ({gen})"
                + (f"; the first that failed: {describe_failure(load, *run.sample)}" if run.sample else ""))


def describe_failure(load: Workload, status: int, body: bytes) -> str:
    """What is wrong with a response that failed its check."""
    check = load.check
    if isinstance(check, PageCheck):
        problems = check.problems(status, body)
        if problems:
            return "; ".join(problems)
        if check.reference is None:
            return "it passes the full check, but there was no verified reference"
        mine, theirs = gunzipped(body), gunzipped(check.reference)
        at = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        return (f"it has the right ids but differs from the reference ({len(mine):,} vs {len(theirs):,} bytes "
                f"gunzipped) from byte {at:,}: {mine[max(0, at - 60):at + 60]!r} "
                f"instead of {theirs[max(0, at - 60):at + 60]!r}")
    if load.posts is not None:
        try:
            text = gunzipped(body)
        except ValueError as error:
            return f"HTTP {status}, {error}"
        return f"HTTP {status}: {text[:300]!r}"
    return f"HTTP {status}: {body[:300]!r}"


def format_report(report: Report) -> str:
    out = list(report.header)
    if report.throughput:
        rows = []
        batched = report.insert_ceilings.get("batched")
        for load, gen, run in report.throughput:
            is_ceiling = load is CEILING_WORKLOAD
            if load.kind == "post":
                ceiling_rps, ceiling = batched, None
            else:
                ceiling = None if is_ceiling else report.ceilings.get(gen)
                ceiling_rps = ceiling and ceiling.rps
            rows.append([
                f"{load.name} (hello)" if is_ceiling else load.name,
                f"{run.rps:,.0f}", _num(ceiling_rps, ",.0f") if not is_ceiling else "-",
                _pct(run.rps, ceiling_rps),
                f"{run.p50_ms:.3f}", _pct(run.p50_ms, ceiling and ceiling.p50_ms),
                f"{run.p99_ms:.3f}", _pct(run.p99_ms, ceiling and ceiling.p99_ms),
                run.failed, run.non2xx, run.errors, gen,
                "-" if is_ceiling else _throughput_target(load, run),
                f"{load.method} {load.path}"])
        out += ["", "Throughput (failed: responses failing their check, warm-up included; "
                    "ceiling: the hello row of the same gen; for post, SQLite+FTS5 inserts batched "
                    f"{INSERT_BATCH} per transaction)",
                _table(["workload", "req/s", "ceiling", "% ceil", "p50 ms", "% ceil", "p99 ms", "% ceil",
                        "failed", "non-2xx", "errors", "gen", "target", "request"], rows)]
    posts = [(load, gen, run) for load, gen, run in report.throughput if load.kind == "post"]
    if posts or report.insert_ceilings or report.audit:
        out += ["", "Writes: posts beside SQLite+FTS5 inserts (message + rich text + FTS row each; "
                    "in-process, on a copy of the seeded database, WAL, synchronous=FULL; this run)"]
        rows = []
        for key, label in (("one", "insert, 1 per transaction"),
                           ("batched", f"insert, {INSERT_BATCH} per transaction")):
            if key in report.insert_ceilings:
                rate = report.insert_ceilings[key]
                rows.append([label, f"{rate:,.0f}",
                             " ".join(f"{_pct(run.rps, rate)} of it" for _, _, run in posts) or "-", ""])
        for load, gen, run in posts:
            acked = len(run.ledger.acked) if run.ledger else 0
            rows.append([f"post ({gen})", f"{run.rps:,.0f}", _throughput_target(load, run),
                         f"{acked:,} acknowledged posts in all (warm-up included)"])
        if rows:
            out.append(_table(["", "messages/s", "post is", ""], rows))
        if report.audit:
            audit = report.audit
            out.append(f"write audit ({audit.seconds:.1f} s): {'ok' if audit.ok else 'FAILED'}: {audit.summary}")
            out += [f"  audit problem: {p}" for p in audit.problems]
    if report.start_ms:
        ceiling = report.start_ms.get("ceiling")
        ceiling_ms = statistics.median(ceiling) if ceiling else None
        rows = []
        for key, label in (("ceiling", "ceiling server"), ("fresh", "fresh storage"),
                           ("initialised", "initialised storage")):
            if key not in report.start_ms:
                continue
            times = report.start_ms[key]
            ms = statistics.median(times) if times else None
            target = "-" if key == "ceiling" or ms is None else \
                f"<={TARGET_START_MS:g} {_verdict(ms <= TARGET_START_MS)}"
            rows.append([label, _num(ms, ".1f"), _num(ceiling_ms, ".1f"), _pct(ms, ceiling_ms),
                         target, " ".join(f"{t:.1f}" for t in times) or "did not start"])
        out += ["", f"Start: exec -> first 200 from /up (median of {START_RUNS})", _table(
            ["", "ms", "ceiling ms", "% ceil", "target", "runs (ms)"], rows)]
    if report.rss_mb:
        rows = []
        for when in ("after start", "after load"):
            mb = report.rss_mb.get((when, "campfire"))
            ceiling = report.rss_mb.get((when, "ceiling"))
            if mb is None and ceiling is None:
                continue
            target = "-" if mb is None else f"<={TARGET_IDLE_RSS_MB:g} {_verdict(mb <= TARGET_IDLE_RSS_MB)}"
            rows.append([when, _num(mb, ".1f"), _num(ceiling, ".1f"), _pct(mb, ceiling), target, ""])
        out += ["", "Idle RSS (VmRSS of the server process)", _table(
            ["", "MB", "ceiling MB", "% ceil", "target", ""], rows)]
    if report.notes:
        out += [""] + [f"note: {n}" for n in report.notes]
    out.append("")
    if report.failures:
        out.append(f"FAILED checks ({len(report.failures)}):")
        out += [f"  {failure}" for failure in report.failures]
    else:
        checked = sum(run.checked for load, _, run in report.throughput if load is not CEILING_WORKLOAD)
        out.append(f"checks: all {checked:,} campfire responses passed"
                   + ("; write audit ok" if report.audit else ""))
    return "\n".join(out)


###############################################################################
# main() ######################################################################
###############################################################################


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Benchmark campfire.py beside a bare asyncio 'hello' ceiling and SQLite insert "
                    "ceilings (the README's performance targets).")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, metavar="S",
                        help=f"seconds measured per workload, after the warm-up "
                             f"(default {DEFAULT_DURATION_S:g}; wrk rounds to whole seconds)")
    parser.add_argument("--warmup", type=float, default=DEFAULT_WARMUP_S, metavar="S",
                        help=f"seconds of warm-up before each measured run (default {DEFAULT_WARMUP_S:g})")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS, metavar="N",
                        help=f"keep-alive connections, one request in flight on each "
                             f"(default {DEFAULT_CONNECTIONS})")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="measure every workload N times and print medians (default 1)")
    known = list(BASIC_WORKLOADS + READ_WORKLOADS) + [POST_WORKLOAD, "ceiling", "start"]
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"run only these workloads (comma-separated or repeated; {', '.join(known)}); "
                             "a read name runs it with caches on and off; "
                             "'start' selects the start-time runs; the ceiling always runs")
    parser.add_argument("--skip-no-cache", action="store_true",
                        help="do not run the reads again with `serve --no-cache`")
    parser.add_argument("--no-wrk", action="store_true",
                        help="use the stdlib load generator even when wrk is on PATH")
    parser.add_argument("--campfire", type=Path, default=CAMPFIRE_PATH, metavar="PATH",
                        help=f"the server to measure (default {CAMPFIRE_PATH})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED_MESSAGES, metavar="MESSAGES",
                        help=f"run `campfire.py seed --messages MESSAGES` first and sign in as "
                             f"{SEED_EMAIL_ADDRESS} (default {DEFAULT_SEED_MESSAGES:,}); 0 skips seeding "
                             f"and the signed-in workloads")
    parser.add_argument("--seed-users", type=int, metavar="N",
                        help="people the seed adds (campfire.py seed's default when not given)")
    parser.add_argument("--seed-rooms", type=int, metavar="N",
                        help="rooms the seed adds (campfire.py seed's default when not given)")
    parser.add_argument("--ceiling-server", type=int, metavar="PORT",
                        help="only serve the ceiling 'hello' server on PORT, in the foreground")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1 or args.repeat < 1 or args.seed < 0:
        parser.error("--duration, --connections and --repeat must be positive, --warmup and --seed not negative")
    args.only = {name for value in args.only or () for name in value.split(",") if name}
    if args.only - set(known):
        parser.error(f"--only: no workload named {', '.join(sorted(args.only - set(known)))} "
                     f"(known: {', '.join(known)})")
    return args


def measure_start_times(args, processes, report, scratch: Path, wanted) -> None:
    """Start-time runs, first (nothing else is running): ceiling, fresh, initialised."""
    if not wanted("start"):
        return
    progress(f"start time: ceiling server x{START_RUNS}")
    report.start_ms["ceiling"] = start_times_ms(
        processes, "ceiling", ceiling_argv, Expect(200), lambda run: None, None)
    if not args.campfire.exists():
        return
    log = scratch / "campfire-start.log"
    fresh = [scratch / f"fresh-{run}" for run in range(START_RUNS)]
    for path in fresh:
        path.mkdir()
    progress(f"start time: campfire, fresh storage x{START_RUNS}")
    report.start_ms["fresh"] = start_times_ms(
        processes, "campfire", lambda port: campfire_argv(args.campfire, port),
        Expect(200, contains=(UP_MARKER,)), lambda run: campfire_env(fresh[run]), log)
    if report.start_ms["fresh"]:
        progress(f"start time: campfire, initialised storage x{START_RUNS}")
        report.start_ms["initialised"] = start_times_ms(
            processes, "campfire", lambda port: campfire_argv(args.campfire, port),
            Expect(200, contains=(UP_MARKER,)), lambda run: campfire_env(fresh[0]), log)
    else:
        report.notes.append(f"campfire.py did not serve /up; its log ends:\n{log_tail(log)}")


def start_campfire(args, processes, report, storage: Path, log: Path, *, no_cache=False) -> Optional[Server]:
    what = "campfire --no-cache" if no_cache else "campfire"
    progress(f"starting {what}")
    server, _ = start_server(
        processes, "campfire", lambda port: campfire_argv(args.campfire, port, no_cache=no_cache),
        Expect(200, contains=(UP_MARKER,)), env=campfire_env(storage), log_path=log)
    if server is None:
        report.notes.append(f"{what} did not serve /up; its log ends:\n{log_tail(log)}")
    return server


def record_rss(report, when, servers) -> None:
    """VmRSS of each running server, after a pause so that it is idle."""
    time.sleep(IDLE_SETTLE_S)
    for server in servers:
        if server is not None:
            report.rss_mb[(when, server.name)] = rss_mb(server.proc.pid)


class Runner:
    """Runs workloads --repeat times (interleaved within a phase) and puts the medians in
    the report; measures the hello ceiling with each generator before its first use."""

    def __init__(self, args, report, use_wrk, ceiling: Server, scratch: Path):
        self.args, self.report, self.use_wrk = args, report, use_wrk
        self.ceiling, self.scratch = ceiling, scratch

    def generator_for(self, load) -> str:
        return "wrk" if self.use_wrk and load.wrk_can_check else "py"

    def _run(self, load, server, gen, label) -> RunResult:
        args = self.args
        progress(f"{label}: {load.name} {load.method} {load.path} ({gen})")
        if gen == "wrk":
            run = run_wrk(load, server.port, args.connections, args.duration, args.warmup, self.scratch, label)
        else:
            run = run_stdlib(load, server.port, args.connections, args.duration, args.warmup, label)
        progress(f"  {run.rps:,.0f} req/s  p50 {run.p50_ms:.3f} ms  p99 {run.p99_ms:.3f} ms  "
                 f"failed {run.failed}  non-2xx {run.non2xx}  errors {run.errors}")
        return run

    def ceilings(self, gens) -> None:
        gens = sorted(set(gens) - set(self.report.ceilings))
        if gens:
            self.phase([CEILING_WORKLOAD] * len(gens), self.ceiling, gens)

    def phase(self, loads, server, gens=None) -> None:
        gens = gens or [self.generator_for(load) for load in loads]
        if any(load is not CEILING_WORKLOAD for load in loads):
            self.ceilings(gens)
        plan = [(load, gen, []) for load, gen in zip(loads, gens)]
        for repeat in range(self.args.repeat):
            for load, gen, runs in plan:
                runs.append(self._run(load, server, gen, f"r{repeat + 1}"))
        for load, gen, runs in plan:
            result = median_run(runs)
            if load is CEILING_WORKLOAD:
                self.report.ceilings[gen] = result
            self.report.throughput.append((load, gen, result))


def prepare_reads(loads, server, scratch, report) -> list:
    """Each read with its reference fetched from this server and checked (with_reference())."""
    prepared = []
    for load in loads:
        ready, problems = with_reference(load, server.port, scratch)
        if problems:
            report.failures.append(f"{load.name}: the reference response is wrong, so every response "
                                   f"counts as failed: {'; '.join(problems)}")
        elif not ready.check.stable:
            report.notes.append(f"{load.name}: two responses differed byte for byte, so it ran on the "
                                f"stdlib generator (which gunzips and checks every response)")
        prepared.append(ready)
    return prepared


def run_benchmark(args, processes: Processes) -> int:
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    report = Report(header=[
        f"Campfire benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version}, {args.connections} keep-alive connections, {args.duration:g} s "
        f"per run after a {args.warmup:g} s warm-up, median of {args.repeat} run(s)",
        "generator: " + (f"wrk {wrk_version()} (-t{min(WRK_THREADS, args.connections)})" if use_wrk
                         else f"stdlib, {min(CLIENT_PROCESSES, args.connections)} processes"),
        f"server: {args.campfire}" + ("" if args.campfire.exists() else " (missing)"),
        "load average before the run (other work on the machine skews figures): "
        + " ".join(f"{load:.2f}" for load in os.getloadavg()),
    ])

    def wanted(name):
        return not args.only or name in args.only

    campfire_ok = args.campfire.exists()
    if not campfire_ok:
        report.notes.append(f"{args.campfire} does not exist: only the ceiling was measured")
    with tempfile.TemporaryDirectory(prefix="campfire-bench-") as scratch_name:
        scratch = Path(scratch_name)
        measure_start_times(args, processes, report, scratch, wanted)
        if report.start_ms.get("fresh") == []:
            campfire_ok = False
        if campfire_ok and (not args.only or args.only - {"start"}):
            campfire_ok = run_loads(args, processes, report, scratch, use_wrk, wanted)
        elif not args.only or args.only - {"start"}:
            ceiling, _ = start_server(processes, "ceiling", ceiling_argv, Expect(200))
            if ceiling is None:
                raise RuntimeError("the ceiling server did not start")
            Runner(args, report, use_wrk, ceiling, scratch).ceilings(["wrk" if use_wrk else "py"])
        processes.stop_all()
    check_failures(report)
    print(format_report(report), flush=True)
    if not campfire_ok:
        return EXIT_CAMPFIRE_DID_NOT_START
    return EXIT_CHECKS_FAILED if report.failures else 0


def run_loads(args, processes, report, scratch: Path, use_wrk, wanted) -> bool:
    """The load phases; False when campfire.py did not start.

      1. seed, read the expected ids from the database, start campfire, sign in
      2. up, static and the reads, on campfire as it ships
      3. the reads on `campfire.py serve --no-cache` (same storage)
      4. post on campfire as it ships; SIGKILL; the write audit; the insert ceilings
      5. the search again on `campfire.py serve --no-cache`, the posts newer than its results
    """
    ceiling, _ = start_server(processes, "ceiling", ceiling_argv, Expect(200))
    if ceiling is None:
        raise RuntimeError("the ceiling server did not start")
    runner = Runner(args, report, use_wrk, ceiling, scratch)
    storage = scratch / "load-storage"
    storage.mkdir()
    log = scratch / "campfire-load.log"
    facts = None
    signed_in_wanted = any(wanted(name) for name in READ_WORKLOADS + (POST_WORKLOAD,))
    if args.seed and signed_in_wanted:
        progress(f"seeding {args.seed:,} messages")
        seeded_at = time.perf_counter()
        admin_password = seed_storage(args.campfire, storage, args.seed, log, users=args.seed_users,
                                      rooms=args.seed_rooms)
        if admin_password:
            seconds = time.perf_counter() - seeded_at
            try:
                facts = read_seed_facts(database_path(storage), SEED_EMAIL_ADDRESS)
            except (RuntimeError, sqlite3.Error) as error:
                report.failures.append(f"the seeded database is not as expected: {error}")
            if facts:
                report.header.append(
                    f"database: {facts.messages:,} messages seeded in {seconds:.1f} s; signed in as "
                    f"{SEED_EMAIL_ADDRESS}; room {READ_ROOM_ID}: {facts.room_messages:,} messages, "
                    f"before={facts.before_id} (its middle one); q={SEARCH_WORD}: {facts.search_matches:,} "
                    f"matches in {len(facts.room_ids)} rooms; q={SEARCH_RARE_WORD}: {facts.rare_matches:,}")
                if not facts.rare_ids:
                    report.notes.append(f"the seeded database has no {SEARCH_RARE_WORD!r}: search-rare did not run")
        else:
            report.failures.append(f"seeding failed; its log ends:\n{log_tail(log)}")
    elif not args.seed:
        report.notes.append("--seed 0: the signed-in workloads did not run")

    campfire = start_campfire(args, processes, report, storage, log)
    if campfire is None:
        return False
    cookie = None
    if facts:
        cookie = sign_in(campfire.port, SEED_EMAIL_ADDRESS, admin_password)
        if cookie is None:
            report.failures.append(f"sign-in as {SEED_EMAIL_ADDRESS} failed: the signed-in workloads did not run")
    spec = PostSpec(token="bx" + secrets.token_hex(4), room_id=READ_ROOM_ID,
                    creator_id=facts.user_id) if facts else None
    loads = [w for w in campfire_workloads(cookie, facts if cookie else None, spec) if wanted(w.name)]
    reads = [w for w in loads if w.kind == "read"]

    # 2. As it ships.
    record_rss(report, "after start", (ceiling, campfire))
    runner.phase([w for w in loads if w.kind == "basic"] + prepare_reads(reads, campfire, scratch, report),
                 campfire)
    record_rss(report, "after load", (ceiling, campfire))
    processes.stop(campfire.proc)

    # 3. Caches off.
    if reads and not args.skip_no_cache:
        uncached = start_campfire(args, processes, report, storage, log, no_cache=True)
        if uncached is None:
            return False
        runner.phase(prepare_reads([without_cache(w) for w in reads], uncached, scratch, report), uncached)
        processes.stop(uncached.proc)

    # 4. Posts, the write audit and the insert ceilings.
    posts = [w for w in loads if w.kind == "post"]
    if posts:
        writer = start_campfire(args, processes, report, storage, log)
        if writer is None:
            return False
        runner.phase(posts, writer)
        processes.stop(writer.proc, kill=True)  # only what was committed counts
        run = report.throughput[-1][2]
        ledger = run.ledger or PostLedger()
        if ledger.gunzip is False:
            report.notes.append("wrk's Lua could not load zlib through FFI, so the posts were sent without "
                                "Accept-Encoding: gzip")
        progress("write audit")
        report.audit = audit_posts(facts.db_path, spec, ledger, facts.messages, args.connections)
        if not report.audit.ok:
            report.failures.append("write audit: " + "; ".join(report.audit.problems))
        report.insert_ceilings = measure_insert_ceilings(facts.db_path, scratch, args.duration,
                                                         READ_ROOM_ID, facts.user_id)

    # 5. The search once more, now that every post is newer than its results.
    searches = [dataclasses.replace(without_cache(w), name=w.name + AFTER_POSTS_SUFFIX + NO_CACHE_SUFFIX)
                for w in reads if w.name == "search"]
    if posts and searches and not args.skip_no_cache:
        again = start_campfire(args, processes, report, storage, log, no_cache=True)
        if again is None:
            return False
        runner.phase(prepare_reads(searches, again, scratch, report), again)
        processes.stop(again.proc)
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ceiling_server is not None:
        return serve_ceiling_in_foreground(args.ceiling_server)
    processes = Processes()
    atexit.register(processes.stop_all)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return run_benchmark(args, processes)
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    finally:
        processes.stop_all()


if __name__ == "__main__":
    sys.exit(main())
