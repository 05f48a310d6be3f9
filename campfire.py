#!/usr/bin/env python3
"""Campfire in one file: a self-hosted team chat, compatible with Once Campfire.

    python3 campfire.py            serve on http://0.0.0.0:3000
    python3 campfire.py --help     every command and flag

Only the Python standard library is used. The file reads top to bottom, from
pure code to the code that touches the world:

  1. Constants and limits     every limit and tunable, with its unit and reason
  2. Errors                   one exception tree, mapped to statuses at the edge
  3. Utilities                time, HTML escaping, tokens, passwords, rate limits
  4. HTTP/1.1                 a sans-I/O request parser, the response writer, routing, URLs
  5. WebSocket                RFC 6455 framing and permessage-deflate, sans-I/O
  6. Action Cable             the JSON protocol spoken on /cable
  7. Rich text                the allow-list sanitizer, auto-links, plain text, mentions
  8. QR codes                 byte-mode QR symbols as SVG, for invitation and sign-in links
  9. Web Push                 P-256, ECDSA, AES-128-GCM, HKDF, aes128gcm and VAPID, sans-I/O
 9a. Rails' formats           signed cookies, signed global ids, key derivation, bcrypt
 10. Files                    multipart, file names, image headers, byte ranges, serving rules,
                              the link-preview address guard and OpenGraph
 11. Storage                  Campfire's SQLite schema, migrations, Database and atomic()
 12. Domain                   every operation on accounts, people, sessions, rooms, memberships,
                              messages, boosts, search, bots, push subscriptions and files, with its SQL; Events
 13. Rendering                render_* from plain data and a View: pages, fragments, JSON
 14. Routes                   the route table (the map of the server), then its thin handlers
                              by feature: sessions, rooms, messages, search, people, account, bots
 15. Real time                /cable connections, channels and broadcasts
 16. The application          App: a request in, a response out (no sockets); its caches
 17. Background work          purges, webhook and push deliveries, link previews, backups, off the request path
 18. The server               asyncio connections, timeouts, group commit, signals
 19. Operations               seed, check, backup, restore, administrators, deployment recipes
 20. Command line             main()
"""

import os
import sys

# The server runs as the module `campfire`, from its cached bytecode and
# without site-packages (only the standard library is used). Run as a script,
# CPython would keep this file's whole syntax tree in memory for as long as the
# server runs (about 15 MB it frees only when the script ends), so `serve`
# starts over as the module right away, before anything else is loaded.
_MODULE = os.path.splitext(os.path.basename(__file__))[0]
if (__name__ == "__main__" and not os.environ.get("CAMPFIRE_AS_MODULE") and _MODULE.isidentifier()
        and (sys.argv[1:2] in ([], ["serve"]) or sys.argv[1].startswith("-"))
        and not {"-h", "--help", "--version"} & set(sys.argv)):
    os.environ["CAMPFIRE_AS_MODULE"] = "1"
    os.execv(sys.executable, [sys.executable, "-S", "-c", "import sys; sys.path.insert(0, %r); import %s; "
                              "sys.exit(%s.main())" % (os.path.dirname(os.path.abspath(__file__)), _MODULE, _MODULE),
                              *sys.argv[1:]])

import asyncio
import base64
import binascii
import bisect
import calendar
import codecs
import collections
import contextlib
import ctypes
import datetime
import enum
import errno
import functools
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import math
import re
import resource
import signal
import socket
import sqlite3
import struct
import threading
import time
import traceback
import types
import unicodedata
import urllib.parse
import zlib
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser

VERSION = "0.1.0"

log = logging.getLogger("campfire")


####
#### 1. Constants and limits
####

DEFAULT_PORT = 3000
DEFAULT_BIND = "0.0.0.0"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # LOG_LEVEL's choices, quietest last
HERE = os.path.dirname(os.path.abspath(__file__))
STATIC_ROOT = os.path.join(HERE, "static")

# HTTP parsing. Each limit answers with the status RFC 9110/6585 gives it.
MAX_REQUEST_LINE_BYTES = 8 * 1024         # 414 past it; common server default
MAX_HEADER_BYTES = 64 * 1024              # 431 past it (whole header block)
MAX_HEADER_FIELDS = 100                   # 431 past it
MAX_CHUNK_LINE_BYTES = 1024               # a chunk-size line with extensions
DEFAULT_BODY_LIMIT = 1024 * 1024          # 413 past it unless a route says more
FORM_BODY_LIMIT = 64 * 1024               # sign-in, profile and similar forms
COOKIE_HEADERS_KEPT = 4096               # parsed Cookie headers remembered (see parse_cookies),
ROUTES_KEPT = 4096                       # and matched (method, path) pairs by the router,
MEMO_KEY_MAX_CHARS = 512                 # each at most this long (so at most a few MB in all)
MAX_FORM_FIELDS = 1000                    # urlencoded/multipart pairs per request
MAX_PARAMS_DEPTH = 32                     # a JSON body's nesting; Rack's param_depth_limit for form names
BODY_LIMITS_KEPT = 10_000                 # (method, path) → body limit answers remembered
STATIC_PATHS_KEPT = 1000                  # static paths whose last disk check is remembered

# Connection timing, in seconds.
HEADER_TIMEOUT = 10.0        # a request head must arrive within this (slowloris)
BODY_IDLE_TIMEOUT = 30.0     # a body that stops arriving for this long is dropped
KEEPALIVE_TIMEOUT = 30.0     # an idle keep-alive connection is closed after this
SHUTDOWN_GRACE = 10.0        # in-flight requests get this long on SIGTERM
# Group commit: the writes of requests handled together share one transaction
# and one fsync. The commit waits while each look at the sockets brings more
# writes, up to this long after the first (a few milliseconds at most).
GROUP_COMMIT_MAX_WAIT = 0.004
SWEEP_INTERVAL = 1.0         # how often deadlines are checked
IDLE_RELEASE_AFTER = 5.0     # this long without a request, memory freed since goes back to the OS
FIRST_RELEASE_AFTER = 1.0    # after start, the memory start-up used is given back once
SHUTDOWN_POLL_INTERVAL = 0.05  # while stopping, how often idle connections are looked for
CLOSE_FRAMES_GRACE = 0.1     # while stopping, time for WebSocket close frames to reach clients

# Connections: stay below the process's open-file limit, keeping room for the
# database, its WAL, static files, worker threads' files and the listening socket.
# At start the soft limit is raised to the hard one (most shells and systemd set a
# soft limit of 1,024 under a hard one of 4,096 to 1,048,576).
FILE_DESCRIPTOR_RESERVE = 64
MIN_CONNECTIONS = 16         # the connection cap never goes below this, however few files are free
MAX_OPEN_FILES_WANTED = 1024 * 1024   # never ask for more than this, even when the hard limit is unlimited
LISTEN_BACKLOG = 1024        # asyncio accepts up to this many sockets per loop turn before any is refused
MAX_WRITE_BUFFER_BYTES = 1024 * 1024  # stop reading a client that doesn't read
# glibc's malloc, pinned: its adaptive mmap threshold jumps to 16 MiB once scrypt's
# buffer is freed, and from then on such a buffer stays in the heap (+16 MB RSS after
# the first sign-ins). Pinning the trim threshold too keeps asyncio's 256 KiB read
# buffers from growing and shrinking the heap on every read.
MALLOC_MMAP_THRESHOLD = 1024 * 1024      # larger blocks are mmapped, and given back when freed
MALLOC_TRIM_THRESHOLD = 8 * 1024 * 1024  # free heap kept before it is given back
STATIC_RECHECK_SECONDS = 1.0          # an edited file in static/ is served within this
REQUEST_LOG_FLUSH_SECONDS = 0.1       # request log lines are written in batches this often

GZIP_MIN_BYTES = 1400        # a body that fits in one TCP segment (~1,460 bytes) gains nothing
GZIP_LEVEL = 6
GZIP_TYPES = ("text/", "application/json", "application/javascript",
              "image/svg+xml", "application/manifest+json")

# Sessions and sign-in (Campfire's app/controllers/sessions_controller.rb, app/models/session.rb).
SESSION_COOKIE = "session_token"
SESSION_COOKIE_MAX_AGE = 20 * 365 * 24 * 3600   # Rails' "permanent" cookie
SESSION_REFRESH_SECONDS = 3600                  # last_active_at, at most hourly
SESSION_TOKEN_BYTES = 32                        # 256 random bits in each session cookie
MAX_SESSION_TOKEN_CHARS = 200                   # a longer cookie names no session (ours are 43)
SESSIONS_KEPT = 50_000                          # sessions remembered in memory (then all forgotten)
MAX_USER_AGENT_CHARS = 255                      # sessions.user_agent is a Rails varchar
SECRET_KEY_BASE_BYTES = 64                      # a generated SECRET_KEY_BASE, as Rails' secret (128 hex digits)
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
# Password hashes run in worker threads (hashlib.scrypt releases the GIL), never on
# the event loop: one hash is about 50 ms of CPU that would otherwise stall everyone.
PASSWORD_WORKERS = max(1, (os.cpu_count() or 2) // 2)  # half the cores; the event loop keeps the rest
PASSWORD_QUEUE_LIMIT = 64                       # hashes waiting at once; past it, 503 with Retry-After
BUSY_RETRY_AFTER_SECONDS = 5                    # that Retry-After: a queue of hashes drains within it
PASSWORD_CHANGE_LIMIT = (5, 600.0)              # password changes per person per 10 minutes → 429

LAST_ROOM_COOKIE = "last_room"
JOIN_CODE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

# Chat (Campfire's app/models/message.rb, app/controllers/searches_controller.rb).
MESSAGE_PAGE_SIZE = 40            # a room page, a ?before=/?after= page, each side of a permalink
REFRESH_PAGE_SIZE = MESSAGE_PAGE_SIZE  # one /refresh?since= answer: no dearer than a room page; the client pages on
MAX_REFRESH_DELETIONS = 500       # deleted ids a /refresh names (a few bytes each)
MAX_REFRESH_CURSOR_CHARS = 64     # "<updated_at>,<id>" of the last message a /refresh page held
MESSAGE_DELETIONS_KEPT_SECONDS = 7 * 24 * 3600  # how long /refresh remembers a deletion
MAX_TIMESTAMP_MS = 253402300799999  # 9999-12-31, the last moment a datetime column can hold
MAX_MESSAGE_BODY_CHARS = 64 * 1024  # 413 past it: a long message, not a document
MESSAGE_BODY_LIMIT = 256 * 1024   # HTTP body of a message post (HTML escapes inflate it)
MAX_CLIENT_MESSAGE_ID_CHARS = 100
CLIENT_MESSAGE_ID_BYTES = 16      # a client_message_id made up for a post without one (bots, plain forms)
ROOMS_KEPT = 10_000               # rooms remembered in memory (then all forgotten)
SGIDS_KEPT = 10_000               # people's signed mention ids remembered (~130 bytes each; signing one
                                  # costs a JSON encoding and an HMAC, and a post with "@" needs the room's)
SQLITE_IN_CHUNK = 500             # ids bound in one IN (...) list: old SQLite builds allow 999 variables
MAX_BOOST_CHARS = 16              # boosts.content is varchar(16)
MAX_ROOM_NAME_CHARS = 100
MAX_BIO_CHARS = 200
SEARCH_RESULT_LIMIT = 100         # Campfire shows the last 100 matches
SEARCH_PROBE_LIMIT = 1000         # newest matches looked at before a membership-scoped query
SEARCH_REBUILD_CHUNK = 500        # messages checked (and indexed if need be) per event-loop turn while
                                  # a missing or partial search index is rebuilt: a few ms of work a turn
SEARCH_REBUILD_LOG_EVERY = 20_000  # a progress line in the log after each this many messages checked
MAX_SEARCH_WORDS = 16
MAX_SEARCH_QUERY_CHARS = 200
RECENT_SEARCHES_KEPT = 10
AUTOCOMPLETE_LIMIT = 20
AUTOCOMPLETE_CANDIDATES = 500     # names matched before the room's members are picked from them
MENTION_LOOKAHEAD_CHARS = 2 * MAX_NAME_CHARS  # a name is looked for in this many characters after "@"
                                              # (longer than any name, escaped: "&" is "&amp;")
PRESENCE_WINDOW = 60.0            # seconds: a member seen on /cable this recently isn't "disconnected"
# Catching up: the mentions inbox, @everyone and @here, threads, bookmarks.
MAX_ROW_ID = 2 ** 63 - 1          # SQLite's largest rowid: "before" when paging from the newest
MENTION_COUNTS_KEPT = 50_000      # people whose unread mention counts are remembered (then all forgotten)
MAX_SAVED_PAGE = 100_000          # the furthest page of saved messages a link may ask for (an OFFSET SQLite holds)
MENTIONS_PAGE_SIZE = 40           # the inbox and the saved list show this many at a time, newest first
EVERYONE_OPEN_LIMIT = 20          # people in a room above which only administrators and the room's
                                  # creator may notify @everyone (a nudge against paging a crowd)
THREAD_REPLIER_AVATARS = 3        # the last repliers shown beside "N replies"
MAX_MENTION_COUNT_SHOWN = 99      # the sidebar says "99+" past it
BOOST_QUICK_PICKS = ("👍", "👏", "👋", "💪", "❤️", "😂", "🎉", "🔥")

# Accounts, people, sign-in links and QR codes (Campfire's app/controllers/accounts/*).
ACCOUNT_USERS_PAGE_SIZE = 500              # the account page lists people 500 at a time, as Campfire's does
MAX_ACCOUNT_NAME_CHARS = 100
MAX_CUSTOM_STYLES_BYTES = 64 * 1024        # 413 past it: a theme, not a framework
CUSTOM_STYLES_BODY_LIMIT = 3 * MAX_CUSTOM_STYLES_BYTES + FORM_BODY_LIMIT  # percent-encoding triples a byte
TRANSFER_TOKEN_SECONDS = 4 * 3600          # Campfire's signed_id(purpose: :transfer, expires_in: 4.hours)
MAX_QR_CODE_TEXT_BYTES = 1024              # 400 past it: our links are far shorter, and it bounds the CPU a
                                           # public request can spend (about 40 ms for 1 KiB)
QR_CODE_CACHE_CONTROL = "public, max-age=31536000, immutable"  # a code never changes: cached for a year
QR_CODES_KEPT_BYTES = 2 * 1024 * 1024      # drawn codes remembered (~7 KB of SVG for one of our links,
                                           # 54 KB at most): a link shown again costs nothing
QR_CODE_LIMIT = (30, 60.0)                 # codes drawn afresh per IP per minute → 429 (each costs tens of ms)
MESSAGE_PURGE_CHUNK = 200                  # a banned person's messages deleted this many per event-loop turn

# Uploaded files, kept in Active Storage's layout (storage/files/<ab>/<cd>/<key>), so
# a Once Campfire storage opens with its files. An upload streams to a temporary file
# as it arrives: memory holds at most the read-ahead and one write, whatever its size.
MAX_UPLOAD_BYTES = 100 * 1024 * 1024      # one file; 413 past it (CAMPFIRE_MAX_UPLOAD_BYTES changes it)
UPLOAD_FORM_OVERHEAD_BYTES = 64 * 1024    # an upload's multipart headers and its other fields
MAX_UPLOAD_FIELD_BYTES = MESSAGE_BODY_LIMIT  # the text fields of an upload form, together
UPLOAD_READ_AHEAD_BYTES = 1024 * 1024     # body bytes buffered before the socket stops being read
UPLOAD_WRITE_BYTES = 256 * 1024           # written to disk at a time (one worker-thread call)
MAX_FORM_FILES = 2                        # files kept from one form: a message's file and its preview
AVATAR_BODY_LIMIT = 4 * 1024 * 1024       # a profile or bot form with its picture: the browser sends 512×512
# Campfire caches avatars for 30 minutes (users/avatars_controller.rb); their URL doesn't change with the
# picture, so a new one would show late. Revalidated each time instead: a 304 when unchanged.
AVATAR_CACHE_CONTROL = "private, no-cache"
AVATAR_PIXELS = 512                       # the browser crops a picture to this square (Campfire's variant size)
LOGO_CACHE_CONTROL = "public, max-age=300, stale-while-revalidate=604800"  # accounts/logos_controller.rb
FILE_SEND_CHUNK_BYTES = 256 * 1024        # read from disk at a time where sendfile can't be used
FILE_WORKERS = 4                          # threads for file I/O (uploads, opening downloads)
BLOB_KEY_CHARS = 28                       # Active Storage's SecureRandom.base36(28)
BLOB_KEY_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
FILE_CACHE_CONTROL = "private, max-age=3600"  # a blob never changes, but who may read it can
PREVIEW_MAX_WIDTH, PREVIEW_MAX_HEIGHT = 1200, 800  # Campfire's thumbnail box (app/models/message/attachment.rb)

# Bots and their webhooks (Campfire's app/models/webhook.rb: 7 s per connect and
# per read, no retries). A reply is a message, and a message holds
# MAX_MESSAGE_BODY_CHARS, so 1 MiB is already generous.
BOT_TOKEN_CHARS = 12                     # a bot's key is "<id>-<12 letters and digits>"
BOT_API_LIMIT = (300, 60.0)              # bot API requests per key per minute → 429
MAX_WEBHOOK_URL_CHARS = 2048             # 2 KB: the form refuses longer URLs
WEBHOOK_TIMEOUT = 7.0                    # seconds to connect, and for each read and write
WEBHOOK_TIMEOUT_REPLY = "Failed to respond within 7 seconds"  # Campfire's words, posted as the bot
WEBHOOK_TOTAL_TIMEOUT = 60.0             # seconds for a whole delivery (a reply that trickles)
MAX_WEBHOOK_REPLY_BYTES = 1024 * 1024    # a longer reply body is refused, nothing posted
MAX_WEBHOOK_HEAD_BYTES = 64 * 1024       # the reply's status line and headers
WEBHOOK_READ_BYTES = 64 * 1024           # read from a webhook's socket at a time
WEBHOOK_QUEUE_SIZE = 1000                # deliveries waiting; past it new ones are dropped (logged)
WEBHOOK_WORKERS = 8                      # deliveries in flight at once (a slow bot holds one)

# WebSocket (RFC 6455, RFC 7692) and Action Cable on /cable.
MAX_WEBSOCKET_MESSAGE_BYTES = 1024 * 1024  # Campfire's cable limit; 1009 past it
# A message's fragments are bounded in number as well as in bytes: empty
# continuation frames would otherwise grow memory without adding a byte (1009).
# Browsers send a text message in one frame; 64 KiB fragments reach 1 MiB in 16.
MAX_MESSAGE_FRAGMENTS = 1024
DEFLATE_LEVEL = 6                        # zlib's default; a broadcast is compressed once for all
DEFLATE_MIN_MESSAGE_BYTES = 100          # shorter ones (cable pings) barely shrink, and a
                                         # compression costs ~15 µs
MAX_CABLE_IDENTIFIER_BYTES = 4 * 1024    # identifiers are small JSON objects
MAX_CABLE_SUBSCRIPTIONS = 64             # per connection
CABLE_PING_INTERVAL = 3.0                # seconds; Action Cable's beat
CABLE_BEAT_SLICES = 30                   # its pings go out in this many slices across the interval
MAX_CABLE_SEND_BUFFER = 256 * 1024       # a reader this far behind is dropped
CABLE_LIVENESS_PING = 15.0               # seconds between WebSocket pings
CABLE_DEAD_AFTER = 45.0                  # no bytes from a peer this long: it is gone
CABLE_CLOSE_TIMEOUT = 5.0                # our close unanswered this long: drop the socket
CABLE_REFUSALS = (30, 60.0)              # refused handshakes per IP per minute → 429
TYPING_THROTTLE = 0.5                    # seconds between typing starts we relay per connection (stops follow them)

# Rich text: Trix nests lists a few levels; deeper is an attack: its tags are dropped, its text kept.
MAX_NESTING_DEPTH = 64

# Storage.
SQLITE_BUSY_TIMEOUT_MS = 5000    # a write waits this long for another process's lock (a backup) before 503
FAILURE_WINDOW = 60.0            # seconds /up stays red after a refused write or a damaged read, unless a
                                 # write succeeds

# Backups (storage/backups/). A backup is one tar archive: a manifest, a consistent
# copy of the database, and every other file of the storage named by the SHA-256 of
# its content. Automatic backups keep those contents once, in backups/content/, so
# an hourly backup copies only what is new; `backup PATH` puts them in the archive.
BACKUP_DIR_NAME = "backups"
BACKUP_CONTENT_DIR_NAME = "content"        # backups/content/<sha256>: each stored file's content, once
BACKUP_STATUS_FILE = "status.json"         # the last automatic backup's outcome, for /up and the account page
BACKUP_FORMAT = "campfire-backup"
BACKUP_FORMAT_VERSION = 1                  # a newer archive format is refused, never half-read
BACKUP_DEFAULT_INTERVAL = "1h"             # BACKUP_INTERVAL: a number with s, m, h or d; 0 turns them off
MAX_EXPORT_FILE_NAME_CHARS = 50            # an exported upload's name: 4 UTF-8 bytes each stay under 255 bytes
BACKUP_MIN_INTERVAL = 60                   # seconds: a shorter interval would back up more than it serves
BACKUP_STEP_PAGES = 1024                   # database pages per step of the online copy (4 MiB at 4 KiB pages)
BACKUP_COPY_BLOCK_BYTES = 1024 * 1024      # read and written at a time when archiving and hashing files
BACKUP_MANIFEST_MAX_BYTES = 64 * 1024 * 1024  # about 300,000 files' entries: a bigger one is not ours
BACKUP_KEEP = {"hourly": 24, "daily": 7, "weekly": 8}  # retention: the newest backup of each of so many periods
BACKUP_START_DELAY = 60.0                  # seconds after start before an overdue backup: the start stays fast
BACKUP_RETRY_AFTER_FAILURE = 600.0         # seconds: a failed backup is tried again this soon, not an hour later
BACKUP_STOP_WAIT = 15.0                    # seconds SIGTERM waits for a cancelled backup or upload to end
STORAGE_LOCK_FILE = ".campfire.lock"       # held by a running server: restore refuses while it is
UPLOADS_DIR_NAME = "files"                 # storage/files/: uploads in Active Storage's disk layout

# Off-site copies of backups (BACKUP_URL: s3:// or https://), section 17.
# A multipart part, and the largest file sent in one PUT: a failure resends at
# most this much, and a 1 GiB backup is 64 parts.
OFFSITE_PART_BYTES = 16 * 1024 * 1024
OFFSITE_BLOCK_BYTES = 256 * 1024           # read from disk and written to the socket at a time
OFFSITE_ATTEMPTS = 6                       # tries of one request: the first, and 5 retries that wait 31 s at most
OFFSITE_BACKOFF_BASE = 1.0                 # seconds: the first retry waits up to this, doubling after
OFFSITE_BACKOFF_MAX = 60.0                 # seconds: no wait between tries is longer, however many there are
OFFSITE_RETRY_AFTER_MAX = 300.0            # seconds: a server's Retry-After is honoured up to this
OFFSITE_SOCKET_TIMEOUT = 60.0              # seconds a connect, a send or a read may stall before it fails
OFFSITE_RESPONSE_MAX_BYTES = 8 * 1024 * 1024  # a ListObjectsV2 page of 1,000 keys is well under 1 MiB
OFFSITE_ERROR_BODY_MAX_BYTES = 64 * 1024   # an error answer is a short XML document; more is not read
OFFSITE_ABORT_ATTEMPTS = 3                 # AbortMultipartUpload tries after a failed or cancelled upload
OFFSITE_ABORT_TIMEOUT = 10.0               # seconds a socket operation of that abort may stall: a cancel ends soon
OFFSITE_LIST_MAX_PAGES = 10_000            # ListObjectsV2 pages followed (10 M keys) before giving up
OFFSITE_NAME_MAX_BYTES = 255               # a backup's file name, as most file systems allow
OFFSITE_SERVER_TEXT_MAX_CHARS = 300        # of a server's error message, quoted in ours and in the log
OFFSITE_CONTENT_TYPE = "application/octet-stream"
OFFSITE_USER_AGENT = "Campfire/" + VERSION
OFFSITE_DEFAULT_REGION = "us-east-1"       # what the AWS CLI assumes when no region is configured

# Amazon S3's own limits (Amazon S3 User Guide, "Amazon S3 multipart upload limits").
S3_MIN_PART_BYTES = 5 * 1024 * 1024        # every part but the last
S3_MAX_PART_BYTES = 5 * 1024 ** 3
S3_MAX_PARTS = 10_000                      # part numbers 1 to 10,000
S3_MAX_OBJECT_BYTES = 5 * 1024 ** 4
S3_MAX_KEY_BYTES = 1024                    # an object key, in UTF-8
S3_LIST_PAGE_KEYS = 1000                   # ListObjectsV2: max-keys is at most 1,000
S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
S3_RETRYABLE_CODES = frozenset({"RequestTimeout", "InternalError", "SlowDown", "ServiceUnavailable"})

# Signature Version 4 (AWS General Reference, "Create a signed AWS API request").
SIGV4_ALGORITHM = "AWS4-HMAC-SHA256"
SIGV4_TERMINATOR = "aws4_request"
SIGV4_MAX_EXPIRES = 7 * 24 * 3600          # a presigned URL lives at most 7 days (X-Amz-Expires)
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# HTTP statuses worth another try: 408 and 429 (RFC 9110 §15.5.9, RFC 6585 §4),
# and the 5xx a busy or restarting server answers. Any other status is final.
OFFSITE_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# seed: messages written per transaction (a transaction per message would take hours).
SEED_BATCH = 5000

# Caches: rendered pages and messages, dropped by version, bounded by the bytes
# they hold: a message may be 64 KiB, so a page of search results can be
# megabytes, and a bound by count let 150 searches keep 900 MB.
PAGE_CACHE_BYTES = 32 * 1024 * 1024     # bodies plus their gzip forms: ~500 room pages of 40 ordinary messages
MESSAGE_CACHE_BYTES = 16 * 1024 * 1024  # rendered messages: ~12,000 of an ordinary size
CACHE_ENTRY_OVERHEAD_BYTES = 256        # counted per entry besides its value: its key and bookkeeping

# Avatar colours for initials: crc32 of the id, modulo 18, as Campfire picks them.
AVATAR_COLORS = ("#b91c1c", "#c2410c", "#b45309", "#4d7c0f", "#15803d", "#047857", "#0e7490", "#155e75",
                 "#0369a1", "#1d4ed8", "#4338ca", "#6d28d9", "#7e22ce", "#a21caf", "#be185d", "#be123c",
                 "#9a3412", "#0f766e")

# /play: Campfire's 56 sounds and what a message shows for each. The 15 that
# Campfire shows as a picture are shown here as the sound's name in a badge.
SOUND_PICTURES = frozenset("56k clowntown curb dangerzone deeper donotwant drama greatjob loggins nyan pushit "
                           "rumble what yay yeah".split())
SOUND_TEXTS = {
    "bell": "🔔", "bezos": "😆💭", "bueller": "anyone?", "butts": "👐 🚬", "cottoneyejoe": "🎶🙉🎶 ",
    "crickets": "hears crickets chirping", "dadgummit": "dad gummit!! 🎣", "danielsan": "🎆 🏆 🎆",
    "ballmer": "developers!", "flawless": "#flawless", "glados": "🤖💢", "gogogo": "Go, go, go!",
    "greyjoy": "😖🎺", "guarantee": "guarantees it 👌", "heygirl": "✨💁✨", "honk": "HONK",
    "horn": "🐶 ✂️ 🐱", "horror": "💀 💀 💀 💀 💀 💀 💀",
    "inconceivable": "doesn't think it means what you think it means…", "letitgo": "❄️👩❄️⛄️❄️",
    "live": "is DOING IT LIVE", "makeitso": "make it so 👉", "noooo": "👸💀😒", "ohmy": "raises an eyebrow 😏",
    "ohyeah": "isn't playing by the rules", "rimshot": "plays a rimshot", "rollout": "is rolling out 🚗",
    "sax": "🌇🎷🎶", "secret": "found a secret area 🔑", "sexyback": "🔞", "story": "and now you know…",
    "tada": "plays a fanfare 🎏", "tmyk": "✨ ⭐️ The More You Know ✨ ⭐️", "totes": "😁👍", "trololo": "трололо",
    "trombone": "plays a sad trombone", "unix": "knows this 💻", "vuvuzela": "======<() ~ ♪ ~♫",
    "whoomp": "👏‼️😎", "wups": "wups!", "yodel": "📣🗻🙉",
}
SOUND_NAMES = frozenset(SOUND_TEXTS) | SOUND_PICTURES
PLAY_RE = re.compile(r"\A/play (\w+)\Z")

# Web Push (RFC 8030, RFC 8188, RFC 8291, RFC 8292) and Campfire's lib/web_push/*.
P256_SCALAR_BYTES = 32
P256_POINT_BYTES = 1 + 2 * P256_SCALAR_BYTES  # SEC 1 §2.3.3: 0x04 || X || Y
PUSH_MESSAGE_MAX_BYTES = 4096        # RFC 8291 §4: push services need accept no more
PUSH_RECORD_SIZE = 4096              # RFC 8188 rs; RFC 8291 §4: must exceed the one record's length
PUSH_SALT_BYTES = 16                 # RFC 8188 §2.1
PUSH_AUTH_SECRET_BYTES = 16          # RFC 8291 §3.2: the subscription's auth secret
PUSH_HEADER_BYTES = PUSH_SALT_BYTES + 4 + 1 + P256_POINT_BYTES  # salt, rs, idlen, keyid (our public key): 86
PUSH_PADDING_DELIMITER = b"\x02"     # RFC 8188 §2: the last record ends its plaintext with 0x02
GCM_TAG_BYTES = 16                   # AEAD_AES_128_GCM's expansion (RFC 8188 §2)
PUSH_MAX_PLAINTEXT_BYTES = (PUSH_MESSAGE_MAX_BYTES - PUSH_HEADER_BYTES - GCM_TAG_BYTES
                            - len(PUSH_PADDING_DELIMITER))  # 3,993, as RFC 8291 §4 says
VAPID_TOKEN_LIFETIME = 12 * 3600     # seconds; RFC 8292 §2 allows at most 24 h, so 12 h of slack for clocks
VAPID_TOKEN_RENEW_BEFORE = 3600      # seconds; a cached token with less left is signed afresh
VAPID_TOKENS_KEPT = 64               # push-service origins whose token is cached (a handful in practice)
PUSH_ICON_PATH = "/account/logo"     # lib/web_push/notification.rb: the account's logo
PUSH_ELLIPSIS = "\u2026"             # ends a body cut to fit
VAPID_SUBJECT = "mailto:support@37signals.com"  # lib/web_push/notification.rb: the contact push services see
VAPID_KEY_FILE = "vapid_key"         # in the storage directory when VAPID_* are unset: not in the database
PUSH_QUEUE_SIZE = 10_000             # pushes waiting (Campfire's pool queue); past it the oldest is dropped, logged
PUSH_WORKERS = 16                    # pushes in flight at once: a slow push service holds one
PUSH_PROCESSES = 1                   # processes that encrypt and sign: the curve math is pure Python and
                                     # holds the GIL, so it runs beside the event loop, never on it (one of
                                     # the two cores a small server has; about 600 pushes a second)
PUSH_WORKER_NICENESS = 10            # the push process yields the CPU to the server's (nice(2) steps)
PUSH_TIMEOUT = 10.0                  # seconds to connect, and for each read and write
PUSH_TOTAL_TIMEOUT = 30.0            # seconds for one attempt in all
PUSH_TTL = 4 * 7 * 24 * 3600         # seconds a push service keeps an undelivered push: the web-push gem's 4 weeks
PUSH_RETRIES = 3                     # further attempts after a 429 or 5xx, then the push is dropped (logged)
PUSH_RETRY_DELAY = 5.0               # seconds before the first retry, doubled each time
PUSH_RETRY_AFTER_MAX = 600.0         # seconds: a longer Retry-After is cut to this (a queued chat push is stale by then)
MAX_PUSH_REPLY_BYTES = 64 * 1024     # a push service answers with a few bytes; more is refused
MAX_PUSH_ENDPOINT_CHARS = 2048       # a push service's URL (FCM's and Mozilla's are under 300)
MAX_PUSH_KEY_CHARS = 256             # p256dh is 87 characters and auth 22, in base64url
MAX_PUSH_SUBSCRIPTIONS = 50          # per person: browsers and devices; past it the oldest is replaced

# The installable app (Campfire's app/views/pwa/): colours match static/campfire.css.
THEME_COLOR_LIGHT = "#f6f5f3"
THEME_COLOR_DARK = "#161513"

# TRUSTED_PROXIES: only from these peers do X-Forwarded-For/-Proto/-Host count.
MAX_FORWARDED_HOPS = 20                   # X-Forwarded-For entries walked; no real chain of proxies is longer
# Sent over HTTPS only (RFC 6797 §7.2): browsers then use https:// for a year.
# Without includeSubDomains: other names under the domain may not serve HTTPS.
HSTS_MAX_AGE_SECONDS = 365 * 24 * 3600
# HTTP_REDIRECT_PORT: a second port that sends http:// visitors to https://. It reads
# a request's head only (never a body), within these bounds, answers and closes.
REDIRECT_MAX_HEAD_BYTES = 8 * 1024        # a browser's head to a bare address is under 2 KB
REDIRECT_HEAD_TIMEOUT = 10.0              # seconds for that head to arrive; then the connection closes
REDIRECT_MAX_CONNECTIONS = 512            # open at once; past it a new one is closed at once

# Free space in the storage (MIN_FREE_DISK_BYTES): below it uploads are refused with a
# 507 and administrators are warned, so the database keeps room for messages.
MIN_FREE_DISK_BYTES = 256 * 1024 * 1024   # bytes: a few hundred uploads of photos, weeks of messages
DISK_CHECK_SECONDS = 5.0                  # statvfs at most this often; the answer is kept between

# GET /metrics (Prometheus text format 0.0.4), from loopback or METRICS_ALLOW only.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds

SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "strict-origin-when-cross-origin"),
                    ("X-Frame-Options", "DENY"))

STATUS_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created",
    204: "No Content", 206: "Partial Content", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    409: "Conflict", 411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
    415: "Unsupported Media Type", 416: "Range Not Satisfiable", 417: "Expectation Failed",
    422: "Unprocessable Content", 426: "Upgrade Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported", 507: "Insufficient Storage",
}

MIME_TYPES = {
    ".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".html": "text/html; charset=utf-8",
    ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
    ".ico": "image/x-icon", ".webp": "image/webp", ".jpg": "image/jpeg",
    ".gif": "image/gif", ".txt": "text/plain; charset=utf-8",
    ".webmanifest": "application/manifest+json", ".woff2": "font/woff2",
}

# No inline script anywhere, and styles come from our own files too.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


# multipart/form-data (RFC 7578). Past a limit marked 413 the request is answered
# "Content Too Large"; the others are malformed bodies, 400.
MAX_BOUNDARY_CHARS = 70                   # RFC 2046 §5.1.1: 1 to 70 characters
MAX_MULTIPART_PARTS = MAX_FORM_FIELDS     # 413 past it; a form of ours has fewer than 10 fields
MAX_PART_HEADER_BYTES = 8 * 1024          # 413 past it: one part's header block; a 255-byte
                                          # name, percent-encoded in filename*, is under 1 KiB
MAX_PART_HEADER_FIELDS = 16               # 413 past it; browsers send 2 (RFC 7578 §4.8 allows 3)
MAX_MULTIPART_PREAMBLE_BYTES = 64 * 1024  # no boundary by then: the declared one is wrong, 400
MAX_TRANSPORT_PADDING_BYTES = 256         # spaces allowed after a boundary (RFC 2046 §5.1.1)

# File names.
MAX_FILENAME_BYTES = 255                  # NAME_MAX of ext4, APFS and NTFS: a download must fit
MAX_EXTENSION_BYTES = 16                  # a longer ".tail" is not an extension worth keeping
FALLBACK_FILENAME = "file"                # what a name that was only dots and slashes becomes

# Image headers. A PNG, GIF or WebP needs at most IMAGE_HEADER_BYTES; a JPEG
# needs everything up to its frame header, which follows its metadata
# segments (EXIF, ICC profile, XMP: rarely past 64 KiB, at most JPEG_SCAN_LIMIT).
IMAGE_HEADER_BYTES = 33                   # PNG signature + IHDR with its CRC (8 + 25)
IMAGE_SNIFF_BYTES = 64 * 1024             # what sniff_image() is usually given: all common JPEGs fit
JPEG_SCAN_LIMIT = 16 * 1024 * 1024        # 422 past it: no camera or editor writes this much metadata
MAX_IMAGE_SIDE_PIXELS = 65_535            # JPEG's own ceiling; past it no browser decodes the image
MAX_IMAGE_PIXELS = 1 << 28                # 268 megapixels (16384²), above browsers' decode limits

# Byte ranges (RFC 9110 §14).
MAX_RANGE_SPECS = 100                     # more ranges in one header: ignored (§14.2 lets us), 200
MAX_RANGE_DIGITS = 18                     # positions past 10**18 bytes stand for "beyond the end"

# Link previews: a page is read up to this many bytes, and only its <head>.
MAX_PREVIEW_PAGE_BYTES = 1024 * 1024      # the fetch reads at most 1 MiB
UNFURL_TIMEOUT = 10.0                     # seconds for a whole preview fetch, redirects included
MAX_UNFURL_REDIRECTS = 3                  # followed, each checked again like the first address
UNFURL_WORKERS = 16                       # previews fetched at once (Campfire's limit); past it, 204
MAX_UNFURL_URL_CHARS = 2048               # a longer URL gets no preview
UNFURL_READ_BYTES = 64 * 1024             # read from a page's socket at a time
CHARSET_PRESCAN_BYTES = 1024              # WHATWG HTML §13.2.3.2: <meta charset> within 1024 bytes
MAX_PREVIEW_TITLE_CHARS = 300             # longer titles are cut (a chat line, not an article)
MAX_PREVIEW_DESCRIPTION_CHARS = 1000
MAX_PREVIEW_URL_CHARS = 2048              # longer URLs are dropped, not cut (a cut URL is wrong)
PREVIEW_FEED_CHARS = 8 * 1024             # the HTML parser is fed this much at a time, and
PREVIEW_PENDING_CHARS = 64 * 1024         # stops when markup this long is still unfinished
MAX_PREVIEW_MARKUP_ITEMS = 5000           # tags, comments and texts read in a head; real heads
                                          # have a few hundred (a news site's: ~300)

# The unfurl guard (Campfire's lib/restricted_http/private_network_guard.rb):
# a link preview never fetches from these.
BLOCKED_IPV4_NETWORKS = tuple(ipaddress.IPv4Network(network) for network in (
    "0.0.0.0/8",          # "this network" (RFC 791)
    "10.0.0.0/8",         # private (RFC 1918)
    "100.64.0.0/10",      # carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",        # loopback
    "168.63.129.16/32",   # Azure's host agent and DNS, reachable from every VM
    "169.254.0.0/16",     # link-local, and cloud metadata at 169.254.169.254 (RFC 3927)
    "172.16.0.0/12",      # private (RFC 1918)
    "192.0.0.0/24",       # IETF protocol assignments (RFC 6890)
    "192.0.2.0/24",       # TEST-NET-1 (RFC 5737)
    "192.88.99.0/24",     # 6to4 relay anycast (RFC 7526)
    "192.168.0.0/16",     # private (RFC 1918)
    "198.18.0.0/15",      # benchmarking (RFC 2544)
    "198.51.100.0/24",    # TEST-NET-2 (RFC 5737)
    "203.0.113.0/24",     # TEST-NET-3 (RFC 5737)
    "224.0.0.0/4",        # multicast
    "240.0.0.0/4",        # reserved, and the broadcast address 255.255.255.255
))
IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")   # RFC 4291 §2.4: all else is refused
BLOCKED_IPV6_NETWORKS = tuple(ipaddress.IPv6Network(network) for network in (
    "2001::/23",          # IETF protocol assignments: Teredo 2001::/32 (embeds IPv4), benchmarking,
                          # ORCHID (RFC 2928, RFC 6890)
    "2001:db8::/32",      # documentation (RFC 3849)
    "2002::/16",          # 6to4: embeds an IPv4 address (RFC 3056)
    "3fff::/20",          # documentation (RFC 9637)
))
# Outside 2000::/3, and so refused with it: ::/128, ::1, IPv4-mapped ::ffff:0:0/96 and
# IPv4-compatible ::/96, NAT64 64:ff9b::/96 and 64:ff9b:1::/48, discard 100::/64,
# ULA fc00::/7, link-local fe80::/10, multicast ff00::/8.

# Serving files. Images, video, audio and PDF are shown inline; everything else
# downloads. SVG is an image that can carry script, so it downloads too.
INLINE_CONTENT_TYPES = frozenset((
    "image/png", "image/jpeg", "image/gif", "image/webp",   # the four whose headers are checked
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "audio/mpeg", "audio/mp4", "audio/aac", "audio/ogg", "audio/opus", "audio/wav",
    "audio/x-wav", "audio/webm", "audio/flac",
    "application/pdf",
))
INLINE_IMAGE_TYPES = frozenset(("image/png", "image/jpeg", "image/gif", "image/webp"))  # shown in a message
DOWNLOAD_CONTENT_TYPE = "application/octet-stream"  # what every other file is served as
# Every file response: the browser must not guess a type (an upload declared
# image/png that is really HTML stays an image), and what it opens as a page runs
# no script and has an origin of its own (W3C CSP3 §6.3.2.1 sandbox).
FILE_CONTENT_SECURITY_POLICY = "sandbox"
FILE_RESPONSE_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", FILE_CONTENT_SECURITY_POLICY),
    ("Cross-Origin-Resource-Policy", "same-origin"),  # other sites can't embed our files
    ("Accept-Ranges", "bytes"),                       # RFC 9110 §14.3: videos seek
)
# Chromium's PDF viewer refuses to run in a sandboxed document (crbug.com/413851),
# so a PDF gets no sandbox: served as application/pdf with nosniff, the browser
# only ever hands it to its PDF viewer, whose scripts never run on our origin.
PDF_RESPONSE_HEADERS = tuple(header for header in FILE_RESPONSE_HEADERS
                             if header[0] != "Content-Security-Policy")


####
#### 2. Errors
####

class CampfireError(Exception):
    """The root of everything this file raises on purpose.

    CampfireError
     ├── HttpError               answered with .status at the HTTP boundary
     │    ├── BadRequest         400: malformed request or form
     │    │    ├── MultipartError 400: a multipart body that can't be read (section 10)
     │    │    └── ClientGone     the client left mid-upload: its handler stops, nothing is sent
     │    ├── Forbidden          403: signed in, but not allowed
     │    ├── NotFound           404: also for what you may not know exists
     │    │    └── RecordNotFound 404 for a record asked by id (the bot API answers it in JSON)
     │    ├── MethodNotAllowed   405: the path exists, not for this method (with Allow)
     │    ├── PayloadTooLarge    413
     │    │    └── MultipartTooLarge 413: too many parts, or a part header too long
     │    ├── RangeNotSatisfiable 416: no requested byte range is in the file
     │    ├── Unprocessable      422: well-formed but invalid (an empty message)
     │    │    └── ImageHeaderError 422: an image whose header is cut off, corrupt or absurd
     │    ├── TooManyRequests    429: a rate limit
     │    ├── ServiceUnavailable 503: a write the disk refused, or too much work waiting
     │    └── InsufficientStorage 507: an upload refused while the storage is low on space
     ├── ConfigError             bad configuration: the CLI prints it, exits 1
     ├── BackupError             a backup, restore or check that failed: the CLI exits 1
     │    ├── BackupInvalid      an archive or database that fails its checks
     │    ├── BackupRefused      a restore that would lose data (a newer schema, a storage in use)
     │    └── BackupCancelled    stopped by Ctrl-C or shutdown: everything half-written removed
     ├── OffsiteError            a copy to BACKUP_URL that failed (section 17; OffsiteError draws its subtree)
     ├── PasswordUnsupported     a bcrypt digest this system's crypt(3) can't check
     ├── HandshakeRefused        a WebSocket upgrade refused: 400 or 426 (section 5)
     ├── CableCommandError       an Action Cable command that can't be read: ignored
     ├── WebPushError            bad subscription keys or endpoint (422), bad VAPID keys (at start)
     ├── PushFailed              a push service that didn't answer in time: logged (section 17)
     └── WebhookFailed           a delivery that failed: logged (section 17)
          └── WebhookTimedOut    no answer within 7 s: the bot "failed to respond"

    WebSocket protocol errors never raise: they close the socket with 1002,
    1007 or 1009 (section 5). A 500 or a 1011 logs its details and sends none.
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


class RecordNotFound(NotFound):
    pass


class MethodNotAllowed(HttpError):
    status = 405


class PayloadTooLarge(HttpError):
    status = 413


class Unprocessable(HttpError):
    status = 422


class TooManyRequests(HttpError):
    status = 429


class ServiceUnavailable(HttpError):
    status = 503


class InsufficientStorage(HttpError):
    """507 (RFC 4918 §11.5): the storage is below config.min_free_disk_bytes, so an
    upload is refused before its body is read."""
    status = 507


class MultipartError(BadRequest):
    """400: a multipart/form-data body that can't be read (a wrong or missing
    boundary, a truncated body, a malformed part header)."""


class MultipartTooLarge(PayloadTooLarge):
    """413: a multipart body past MAX_MULTIPART_PARTS parts, or a part whose
    header is past MAX_PART_HEADER_BYTES or MAX_PART_HEADER_FIELDS."""


class ImageHeaderError(Unprocessable):
    """422: a file that starts like a PNG, GIF, JPEG or WebP image but whose
    header is cut off, corrupt, or states a size that is zero or absurd."""


class RangeNotSatisfiable(HttpError):
    """416: a Range header none of whose ranges overlaps the representation;
    the answer carries Content-Range: bytes */length (RFC 9110 §15.5.17)."""

    status = 416

    def __init__(self, length):
        super().__init__("None of the requested ranges is within the file's %d bytes." % length,
                         headers=[("Content-Range", "bytes */%d" % length)])
        self.length = length


class ClientGone(BadRequest):
    """400 that no one reads: the client closed its connection mid-upload (nothing is logged)."""


class ConfigError(CampfireError):
    pass


class BackupError(CampfireError):
    pass


class BackupInvalid(BackupError):
    pass


class BackupRefused(BackupError):
    pass


class BackupCancelled(BackupError):
    pass


class OffsiteError(CampfireError):
    """The root of what off-site backups raise on purpose.

    OffsiteError
     ├── OffsiteConfigError   BACKUP_URL or an AWS_* variable can't be used: at start-up, exit 1
     ├── OffsiteUnsupported   the target can't do that (list or delete on an https:// target)
     ├── OffsiteCancelled     Cancellation.cancel() was called; a multipart upload was aborted
     └── OffsiteFailed        refused by the other end, or still failing after every attempt

    Messages name the target and the request, never a secret: no secret key, no
    signature, no password, no presigned query string.
    """


class OffsiteConfigError(OffsiteError, ConfigError, ValueError):
    pass


class OffsiteUnsupported(OffsiteError):
    pass


class OffsiteCancelled(OffsiteError):
    pass


class OffsiteFailed(OffsiteError):
    """A request that failed for good: .status and .code (S3's error code) when the
    server answered, .attempts made, and .retryable when more tries might succeed
    later (the server was down or busy) rather than never (access denied)."""

    def __init__(self, message, status=None, code=None, attempts=1, retryable=False):
        super().__init__(message)
        self.status = status
        self.code = code
        self.attempts = attempts
        self.retryable = retryable


####
#### 3. Utilities
####

def utc_now_text(now=None):
    """Datetimes as Rails writes them into SQLite: UTC, microseconds."""
    now = time.time() if now is None else now
    return _utc_second_text(int(now // 1)) + ".%06d" % int(now % 1 * 1_000_000)


@functools.lru_cache(maxsize=8)  # the few seconds in use at a time (now, a minute ago)
def _utc_second_text(second):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))


_DB_TIME_RE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def iso_time(text):
    """A database datetime as ISO 8601 UTC to the second ("2024-05-01T09:30:00Z")."""
    text = str(text or "")
    if _DB_TIME_RE.match(text):
        return "%sT%sZ" % (text[:10], text[11:19])
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(parse_db_time(text) or 0))


def iso_time_ms(db_time):
    """A datetime column as UTC ISO 8601 with milliseconds: "2025-01-02T03:04:05.678Z"."""
    seconds = parse_db_time(db_time) or 0
    fraction = str(db_time or "").partition(".")[2][:3]
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(seconds))) + \
        "." + (fraction.ljust(3, "0") if fraction.isdigit() else "000") + "Z"


def parse_db_time(text):
    """Rails' 'YYYY-MM-DD HH:MM:SS[.ffffff]' (UTC) → unix seconds, or None."""
    if not text:
        return None
    text = str(text)
    try:
        seconds = calendar.timegm((int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                                   int(text[14:16]), int(text[17:19]), 0, 0, 0))
    except ValueError:
        return None
    fraction = text[20:26]
    return seconds + (int(fraction.ljust(6, "0")) / 1e6 if text[19:20] == "." and fraction.isdigit() else 0)


def byte_size_text(size):
    """1536 → "1.5 KiB": a size for people."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return ("%d %s" if unit == "bytes" else "%.1f %s") % (size, unit)
        size /= 1024


def escape_html(text, *, trix=False):
    """The one escaping function: & < > " and ' as character references, as
    html.escape writes them. trix=True writes text the way a stored message body
    (Trix's serialization) has it: ' stays as it is and a no-break space becomes
    &nbsp;, so sanitizing a body Rails stored gives back the same bytes."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    if trix:
        return text.replace("\xa0", "&nbsp;")
    return text.replace("'", "&#x27;")


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
    """value as HTML: unchanged when it already is, else through escape_html."""
    if isinstance(value, HTML):
        return value
    if value is None:
        return HTML("")
    return HTML(escape_html(str(value)))


def format_bytes(count):
    """A size as people read it, in steps of 1,024 as Rails' number_to_human_size: "1.5 MB"."""
    if count < 1024:
        return "1 byte" if count == 1 else "%d bytes" % count
    for unit in ("KB", "MB", "GB", "TB"):
        count /= 1024
        if count < 1024 or unit == "TB":
            return ("%.1f" % count).removesuffix(".0") + " " + unit


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(seconds=None):
    """RFC 9110 §5.6.7's IMF-fixdate, whatever the locale."""
    t = time.gmtime(seconds)
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (_WEEKDAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1],
                                                   t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def release_free_memory():
    """Hand freed heap back to the OS (glibc keeps it otherwise): idle RSS matters on a Pi."""
    import gc
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


# Tokens come from os.urandom, as the secrets module's do: that module loads
# random (and seeds it) at import, a few milliseconds of every start.

def random_token(nbytes=32):
    """URL-safe base64 of nbytes random bytes (secrets.token_urlsafe)."""
    return base64.urlsafe_b64encode(os.urandom(nbytes)).rstrip(b"=").decode("ascii")


def random_hex(nbytes):
    """Hex of nbytes random bytes (secrets.token_hex)."""
    return os.urandom(nbytes).hex()


def token_digest(token):
    """Session tokens are stored hashed: a leaked database signs nobody in."""
    return hashlib.sha256(token.encode()).hexdigest()


def random_alphanumeric(length):
    """Letters and digits, as Rails' SecureRandom.alphanumeric: join codes, bot keys."""
    import secrets  # here: new codes and keys are rare (see random_token)
    return "".join(secrets.choice(JOIN_CODE_ALPHABET) for _ in range(length))


def generate_join_code():
    raw = random_alphanumeric(12)
    return "-".join(raw[i:i + 4] for i in range(0, 12, 4))


def plain_error_page(status, message):
    """An error page that needs nothing (no database, no layout): for the parser's
    refusals and for when the database itself is down."""
    return "<!DOCTYPE html><html><body><h1>%d %s</h1><p>%s</p></body></html>" % (
        status, STATUS_REASONS.get(status, "Error"), escape_html(message))


def normalized_ip(text):
    """An address as the bans table keeps it (IPv4-mapped IPv6 as plain IPv4), or None."""
    import ipaddress  # here, not at the top: only bans need it, and it is slow to load
    try:
        address = ipaddress.ip_address(str(text).strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address


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


# Passwords: bcrypt as Rails' has_secure_password writes it, through the system's
# crypt(3) (section 9a); scrypt where crypt(3) has no bcrypt.

def hash_password(password, n=SCRYPT_N, bcrypt_cost=None):
    """A "$2a$" bcrypt digest of cost bcrypt_cost (default BCRYPT_COST, Rails' own), which
    Rails checks unchanged; where this system's crypt(3) can't make bcrypt (or the
    password holds a NUL, which bcrypt can't take), an scrypt digest of cost n."""
    try:
        digest = bcrypt_hash(password, BCRYPT_COST if bcrypt_cost is None else bcrypt_cost)
    except ValueError:
        digest = None
    return digest or scrypt_password(password, n)


def scrypt_password(password, n=SCRYPT_N):
    """An scrypt digest of cost n (the digest records it, so any cost checks later)."""
    salt = os.urandom(SCRYPT_SALT_BYTES)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                         maxmem=SCRYPT_MAXMEM, dklen=SCRYPT_KEY_BYTES)
    return "$scrypt$n=%d,r=%d,p=%d$%s$%s" % (n, SCRYPT_R, SCRYPT_P, b64url_encode(salt), b64url_encode(key))


def unknown_password_digest(n=SCRYPT_N, bcrypt_cost=None):
    """A digest no password matches, made as today's are: checking it makes a sign-in
    for an unknown address take as long as one for a known address (Rails' authenticate_by
    does the same), so the answer's timing tells nobody who has an account."""
    return hash_password(random_token(), n, bcrypt_cost)


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
    if digest.startswith(("$2a$", "$2b$", "$2y$", "$2x$")):
        matches = bcrypt_check(candidate, digest)
        if matches is None:
            raise PasswordUnsupported("bcrypt is not supported by this system's crypt(3)")
        return matches
    return False


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

# Both on a head decoded as Latin-1, so each character stands for the byte of the same value.
_FIELD_LINE = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*"  # a token, a colon, a value without controls
_FIELD_LINES_RE = re.compile(_FIELD_LINE + r"(?:\r\n" + _FIELD_LINE + r")*")
_TARGET_RE = re.compile(rb"[\x21-\x7e]+\Z")
_METHOD_RE = re.compile(rb"[A-Z]{1,20}\Z")  # methods are case-sensitive tokens; ours are all upper case
_REQUEST_LINE_RE = re.compile(r"([A-Z]{1,20}) ([\x21-\x7e]+) (HTTP/1\.[01])\Z")  # all three at once
_CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,18}\Z")
_CHUNK_SIZE_RE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(;[^\r\n]*)?\Z")


class Request:
    """One parsed HTTP request, plus what the application learns about it."""

    __slots__ = ("method", "target", "path", "query_string", "version", "headers", "body",
                 "keep_alive", "remote_addr", "scheme", "id", "started", "user", "session",
                 "set_cookies", "_query", "_form", "_params", "_cookies", "files", "streaming", "body_reader",
                 "route")

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
        self.streaming = False     # the body is an upload, read as it arrives (HttpParser.take_body)
        self.body_reader = None    # the server's BodyReader of a streamed body
        self.route = None          # the Route it matched, for /metrics
        self._query = self._form = self._params = self._cookies = None

    def header(self, name, default=""):
        return self.headers.get(name, default)

    @property
    def query(self):
        if self._query is None:
            try:
                self._query = FormData(parse_urlencoded(self.query_string.encode("latin-1")))
            except ValueError as error:
                raise BadRequest("The query string could not be read.") from error
        return self._query

    @property
    def form(self):
        """urlencoded or multipart fields; files go to request.files."""
        if self._form is None:
            content_type = self.headers.get("content-type", "")
            if self.streaming:  # an upload: its handler reads the body as it arrives (App.receive_form)
                self._form = FormData([])
            elif content_type.startswith("multipart/form-data"):
                fields, self.files = parse_multipart(self.body, content_type)
                self._form = FormData(fields)
            elif content_type.startswith("application/x-www-form-urlencoded") or not content_type:
                try:
                    self.body.decode("utf-8")  # a form is UTF-8 (what is escaped may still be mangled)
                    pairs = parse_urlencoded(self.body)
                except ValueError as error:  # UnicodeDecodeError is one
                    raise BadRequest("The form could not be read.") from error
                self._form = FormData(pairs)
            else:
                self._form = FormData([])
        return self._form

    @property
    def params(self):
        """Every parameter of the request in one view, as Rails' params: the query
        string's and the body's (a form, multipart fields, or a JSON object with its
        nesting written as bracket names, {"message":{"body":"hi"}} as message[body]).
        Rails merges them as request_parameters.merge(query_parameters), so a
        top-level name the query string has is taken from the query string."""
        if self._params is None:
            if self.headers.get("content-type", "").startswith("application/json"):
                body = FormData(_json_params(self.json()) if self.body else [])
            else:
                body = self.form
            query = self.query
            if not body:
                self._params = query
            elif not query:
                self._params = body
            else:
                names = {_param_root(name) for name, _ in query.items()}
                self._params = FormData([pair for pair in body.items() if _param_root(pair[0]) not in names]
                                        + query.items())
        return self._params

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise BadRequest("The JSON body could not be read.") from error

    @property
    def cookies(self):
        if self._cookies is None:
            self._cookies = parse_cookies(self.headers.get("cookie", ""))
        return self._cookies

    @property
    def origin(self):
        return "%s://%s" % (self.scheme, self.headers.get("host", "localhost"))


_FORWARDED_HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?\Z")


def parse_trusted_proxies(text, variable="TRUSTED_PROXIES"):
    """TRUSTED_PROXIES (or METRICS_ALLOW) "127.0.0.1, 10.0.0.0/8, ::1" → a tuple of ip_network."""
    import ipaddress  # here, not at the top: only a server behind a proxy needs it
    networks = []
    for part in (text or "").replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError("%s must be addresses or CIDR ranges (like 127.0.0.1 or 10.0.0.0/8), "
                              "separated by commas or spaces; %r is neither." % (variable, part)) from None
    return tuple(networks)


def _trusted(address, proxies):
    address = normalized_ip(address)
    return address is not None and any(address in network for network in proxies)


def _last_value(header):
    """The last of a header's comma-separated values: the one our peer wrote."""
    return header.rpartition(",")[2].strip()


def apply_forwarded(request, proxies):
    """When the peer is one of the trusted proxies, the client's address, the scheme
    and the host come from X-Forwarded-For, -Proto and -Host; from any other peer
    those headers change nothing. X-Forwarded-For is read from the right (each proxy
    appends the address it saw): the first address that isn't a trusted proxy is the
    client's, and what lies left of it (written by that client) is never looked at."""
    if not proxies or not _trusted(request.remote_addr, proxies):
        return
    headers = request.headers
    chain = headers.get("x-forwarded-for")
    if chain:
        for hop in reversed(chain.split(",")[-MAX_FORWARDED_HOPS:]):
            address = normalized_ip(hop)
            if address is None:
                break  # not an address: the one before it (a trusted proxy's) stands
            request.remote_addr = str(address)
            if not any(address in network for network in proxies):
                break
    proto = _last_value(headers.get("x-forwarded-proto", "")).lower()
    if proto in ("http", "https"):
        request.scheme = proto
    host = _last_value(headers.get("x-forwarded-host", ""))
    if host and _FORWARDED_HOST_RE.match(host):
        headers["host"] = host


def parse_urlencoded(data):
    """application/x-www-form-urlencoded bytes → [(name, value)], in order: "+"
    is a space, %XX a byte, the bytes UTF-8 (a bad sequence becomes U+FFFD),
    empty fields skipped, a name without "=" has the value "". ValueError past
    MAX_FORM_FIELDS fields."""
    if not data:
        return []
    fields = data.split(b"&")
    if len(fields) > MAX_FORM_FIELDS:
        raise ValueError("more than %d form fields" % MAX_FORM_FIELDS)
    pairs = []
    for pair in fields:
        if pair:
            name, _, value = pair.partition(b"=")
            pairs.append((_form_text(name), _form_text(value)))
    return pairs


def _param_root(name):
    """The top-level name of a bracket name: "user" for user[name] (Rack's normalize_params)."""
    return re.split(r"[\[\]]", name.lstrip("[]"), maxsplit=1)[0]


def _json_params(value):
    """A JSON body → [(bracket name, text)], as a form would send it: objects nest
    as name[key], arrays as name[], true/false/numbers as their text, null as "".
    A body that is not an object is the parameter _json (Rails' JSON params
    parser). BadRequest past MAX_PARAMS_DEPTH levels or MAX_FORM_FIELDS values."""
    pairs = []

    def walk(name, value, depth):
        if depth > MAX_PARAMS_DEPTH:
            raise BadRequest("The JSON body is nested too deeply.")
        if isinstance(value, dict):
            for key, item in value.items():
                walk(key if name is None else "%s[%s]" % (name, key), item, depth + 1)
        elif isinstance(value, list):
            for item in value:
                walk(name + "[]", item, depth + 1)
        else:
            if len(pairs) >= MAX_FORM_FIELDS:
                raise BadRequest("The JSON body has more than %d values." % MAX_FORM_FIELDS)
            text = "" if value is None else ("true" if value else "false") if isinstance(value, bool) else str(value)
            pairs.append((name, text))
    walk(None if isinstance(value, dict) else "_json", value, 0)
    return pairs


def _form_text(raw):
    if b"+" in raw:
        raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        raw = urllib.parse.unquote_to_bytes(raw)
    return raw.decode("utf-8", "replace")


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

    def items(self):
        """The (name, value) pairs, in order, repeated names included."""
        return list(self._pairs)

    def __bool__(self):
        return bool(self._pairs)

    def __contains__(self, key):
        return key in self._first

    def text(self, key, limit=None):
        """A stripped string field ('' when missing); 422 past `limit` characters."""
        value = str(self._first.get(key, "")).strip()
        if limit is not None and len(value) > limit:
            raise Unprocessable("%s is too long." % key)
        return value


def parse_cookies(header):
    """A Cookie header → a read-only {name: value} (the first of a repeated name
    wins). A browser sends the same header request after request, so the
    answers for the latest few thousand headers are kept."""
    if len(header) <= MEMO_KEY_MAX_CHARS:
        return _parse_cookies_kept(header)
    return _parse_cookies(header)


def _parse_cookies(header):
    found = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in found:
            found[name] = urllib.parse.unquote(value.strip().strip('"'))
    return types.MappingProxyType(found)


_parse_cookies_kept = functools.lru_cache(maxsize=COOKIE_HEADERS_KEPT)(_parse_cookies)


def parse_multipart(body, content_type):
    """A whole multipart/form-data body (a small form; uploads stream instead) →
    ([(name, value)], {name: UploadedFile}). MultipartError (400) when it can't be read."""
    fields, files = [], {}
    for part, data in read_multipart(body, content_type):
        if part.filename is None:
            fields.append((part.name, data.decode("utf-8", "replace")))
        elif part.filename and part.name not in files:
            files[part.name] = UploadedFile(safe_filename(part.filename), part.content_type or DOWNLOAD_CONTENT_TYPE,
                                            data)
    return fields, files


@dataclass
class UploadedFile:
    """One file part of a multipart form."""

    filename: str
    content_type: str
    data: bytes


class HttpParser:
    """Bytes in, Request objects out, in order (pipelining works for free).

    `body_limit(method, path)` names the largest body a route accepts; a larger
    Content-Length is refused with 413 before any of the body is read.

    `upload_limit(request)` is the largest upload the request may carry, or None
    when its body is not an upload. An upload's Request comes out as soon as its
    head is read, with .streaming set; its body is then taken piece by piece
    with take_body() until body_done, and never held whole.
    """

    HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, TRAILERS, STREAM = range(6)

    def __init__(self, body_limit=None, upload_limit=None):
        self._body_limit = body_limit or (lambda method, path: DEFAULT_BODY_LIMIT)
        self._upload_limit = upload_limit or (lambda request: None)
        self._buffer = bytearray()
        self._state = self.HEAD
        self._request = None
        self._remaining = 0
        self._limit = 0
        self._chunks = None
        self._continue_sent = False
        self._scanned = 0         # how much of the buffer holds no end of head

    @property
    def has_partial_request(self):
        return bool(self._buffer) or self._state != self.HEAD

    @property
    def reading_body(self):
        return self._state != self.HEAD

    @property
    def body_done(self):
        """Whether a streamed body has been taken whole (the next request may follow)."""
        return self._state != self.STREAM

    def take_body(self):
        """The bytes of a streamed body that have arrived and not been taken yet."""
        if self._state != self.STREAM:
            return b""
        data = bytes(self._buffer[:self._remaining])
        del self._buffer[:len(data)]
        self._remaining -= len(data)
        if not self._remaining:
            self._finish()
        return data

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
                if not self._buffer:
                    return None
                if not self._parse_head():
                    return None
                if self._state == self.HEAD:
                    return self._finish()
                if self._state == self.STREAM:
                    return self._request
            elif self._state == self.STREAM:
                return None  # the body is taken with take_body()
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
        while buffer.startswith(b"\r\n"):
            del buffer[:2]
            self._scanned = 0
        # Resume the search where the last one stopped: a head arriving a byte
        # at a time must cost linear time, not quadratic.
        end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3))
        line_end = buffer.find(b"\r\n", 0, MAX_REQUEST_LINE_BYTES + 2)
        if line_end < 0 and (end >= 0 or len(buffer) > MAX_REQUEST_LINE_BYTES):
            raise HttpError("The request line is too long.", 414)
        if end < 0:
            # RFC 9112 §2.2: we read only CRLF line endings; a bare LF would make us
            # wait for a head that never ends, so it is refused as soon as it arrives.
            newline = buffer.find(b"\n", max(0, self._scanned - 1))
            while newline >= 0:
                if newline == 0 or buffer[newline - 1] != 0x0D:
                    raise BadRequest("A line of the request head ends without CR.")
                newline = buffer.find(b"\n", newline + 1)
            self._scanned = len(buffer)
            if line_end >= 0 and len(buffer) - line_end - 2 > MAX_HEADER_BYTES:
                raise HttpError("The request headers are too large.", 431)
            return False
        self._scanned = 0
        head = buffer[:end].decode("latin-1")  # one character per byte; the checks below are on bytes' values
        del buffer[:end + 4]
        request_line = head[:line_end] if line_end < end else head
        if len(request_line) > MAX_REQUEST_LINE_BYTES:
            raise HttpError("The request line is too long.", 414)
        if head.count("\r\n") > MAX_HEADER_FIELDS:
            raise HttpError("Too many header fields.", 431)
        if end - len(request_line) > MAX_HEADER_BYTES:
            raise HttpError("The request headers are too large.", 431)
        well_formed = _REQUEST_LINE_RE.match(request_line)
        if well_formed is None:
            _refuse_request_line(request_line.encode("latin-1"))
        method, target_text, version_text = well_formed.groups()
        headers = {}
        fields = head[len(request_line) + 2:]
        # One match checks every field line: this refuses obs-fold (a line
        # starting with space), "Name : value" (RFC 9112 §5.1) and control
        # characters in a value.
        if fields and not _FIELD_LINES_RE.fullmatch(fields):
            raise BadRequest("A header field is malformed.")
        for line in fields.split("\r\n") if fields else ():
            name, _, text = line.partition(":")
            key = name.lower()
            text = text.strip(" \t")
            if key in headers:
                if key in ("content-length", "host"):
                    if headers[key] != text:
                        raise BadRequest("Conflicting %s headers." % key)
                    continue
                headers[key] = headers[key] + ("; " if key == "cookie" else ", ") + text
            else:
                headers[key] = text
        if version_text == "HTTP/1.1" and "host" not in headers:
            raise BadRequest("HTTP/1.1 requests need a Host header.")
        if not target_text.startswith("/"):
            if target_text.startswith(("http://", "https://")):  # absolute-form, RFC 9112 §3.2.2
                try:
                    split = urllib.parse.urlsplit(target_text)
                except ValueError as error:
                    raise BadRequest("The request target is malformed.") from error
                target_text = (split.path or "/") + ("?" + split.query if split.query else "")
            elif not (target_text == "*" and method == "OPTIONS"):
                raise BadRequest("The request target is malformed.")
        request = Request(method, target_text, version_text, headers)
        expect = headers.get("expect")
        if expect is not None and expect.lower() != "100-continue":
            raise HttpError("Only 100-continue is understood.", 417)
        transfer_encoding = headers.get("transfer-encoding")
        content_length = headers.get("content-length")
        upload_limit = self._upload_limit(request)
        if transfer_encoding is not None:
            # RFC 9112 §6.1: both headers is a smuggling attempt; only chunked is spoken.
            if content_length is not None:
                raise BadRequest("Both Transfer-Encoding and Content-Length were sent.")
            if transfer_encoding.strip().lower() != "chunked":
                raise HttpError("Only chunked transfer coding is understood.", 501)
            if upload_limit is not None:  # its size must be known before it is read
                raise HttpError("Send files with a Content-Length.", 411)
            limit = self._body_limit(request.method, request.path)
            self._request, self._state, self._chunks, self._limit = request, self.CHUNK_SIZE, [], limit
        elif content_length is not None:
            if not _CONTENT_LENGTH_RE.match(content_length):
                raise BadRequest("Content-Length is malformed.")
            length = int(content_length)
            if upload_limit is not None and length > upload_limit:
                raise PayloadTooLarge("A file can be at most %s." % format_bytes(upload_limit - UPLOAD_FORM_OVERHEAD_BYTES))
            if length and upload_limit is None and length > self._body_limit(request.method, request.path):
                raise PayloadTooLarge("The request body is too large.")
            self._request = request
            if length and upload_limit is not None:
                request.streaming = True
                self._state, self._remaining = self.STREAM, length
            elif length:
                self._state, self._remaining = self.BODY, length
        else:
            self._request = request
        return True


def _refuse_request_line(request_line):
    """The error for a request line _REQUEST_LINE_RE refused, as precise as it can be."""
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise BadRequest("The request line is malformed.")
    method, target, version = parts
    if not _METHOD_RE.match(method):
        raise BadRequest("The method is malformed.")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if re.match(rb"HTTP/\d\.\d\Z", version):
            raise HttpError("Only HTTP/1.0 and HTTP/1.1 are spoken here.", 505)
        raise BadRequest("The HTTP version is malformed.")
    if not _TARGET_RE.match(target):
        raise BadRequest("The request target is malformed.")
    raise BadRequest("The request line is malformed.")


def serialize_response(status, headers, body, *, keep_alive, head_only=False, date=None, content_length=None):
    """The bytes of a response: status line, headers, Date, Content-Length, body.
    content_length: of a body sent after these bytes (a file), instead of `body`'s."""
    has_body = status >= 200 and status != 204 and status != 304
    head = "HTTP/1.1 %d %s\r\n%sDate: %s\r\n%s%s\r\n" % (
        status, STATUS_REASONS.get(status, "Status"), "".join([f"{name}: {value}\r\n" for name, value in headers]),
        date or http_date(), "Content-Length: %d\r\n" % (len(body) if content_length is None else content_length)
        if has_body else "",
        "" if keep_alive else "Connection: close\r\n")
    if head_only or not has_body:
        return head.encode("latin-1")
    return head.encode("latin-1") + body


def https_redirect(head, https_port, date=None):
    """What HTTP_REDIRECT_PORT answers to one request head (its bytes up to the blank
    line): a 301 for GET and HEAD, a 308 for other methods (RFC 9110 §15.4.2 and
    §15.4.9: the method and body are then kept), to the same path and query at
    https:// on the same host name and https_port; a 400 for a head it can't read.
    The connection is never kept: nothing more is read from it."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    host = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            host = None if host is not None else value.strip().decode("latin-1")  # two Hosts: unreadable
            if host is None:
                break
    if (len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1].startswith(b"/")
            or any(byte <= 0x20 or byte >= 0x7F for byte in parts[1]) or not host
            or not _FORWARDED_HOST_RE.match(host)):
        body = plain_error_page(400, "This address only sends browsers to HTTPS; the request could not be read.")
        return serialize_response(400, [("Content-Type", "text/html; charset=utf-8")], body.encode(),
                                  keep_alive=False, date=date)
    name = host[:host.index("]") + 1] if host.startswith("[") else host.partition(":")[0]
    location = "https://%s%s%s" % (name, "" if https_port == 443 else ":%d" % https_port, parts[1].decode("ascii"))
    status = 301 if parts[0] in (b"GET", b"HEAD") else 308
    return serialize_response(status, [("Location", location)], b"", keep_alive=False, date=date)


class Response:
    """What a handler returns. Bodies are bytes by the time they are sent."""

    __slots__ = ("status", "body", "headers", "content_type", "compressible", "upgrade", "file")

    def __init__(self, body=b"", status=200, content_type="text/html; charset=utf-8", headers=None):
        self.status = status
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.content_type = content_type
        self.headers = list(headers or ())
        self.compressible = True
        self.upgrade = None
        self.file = None          # a FileBody sent instead of body: a stored file, never read whole

    def header(self, name):
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")


@dataclass(slots=True)
class FileBody:
    """length bytes of an open file from offset: the body of a file response."""

    file: object
    offset: int
    length: int

    def read_all(self):
        """The bytes, for tests and small files."""
        self.file.seek(self.offset)
        return self.file.read(self.length)


def redirect(location, status=303):
    return Response(b"", status, headers=[("Location", location)])


def json_response(value, status=200, headers=None):
    return Response(json.dumps(value, separators=(",", ":"), ensure_ascii=False), status,
                    "application/json; charset=utf-8", headers)


def etag_matches(if_none_match, etag):
    """Whether an If-None-Match value names etag (RFC 9110 §13.1.2): "*", or an
    entity-tag of its comma-separated list that equals etag by the weak
    comparison (§8.8.3.2: a W/ prefix on either side is ignored)."""
    if if_none_match is None:
        return False
    if if_none_match == etag:  # a browser sends back the one tag it was given
        return True
    opaque = etag[2:] if etag.startswith("W/") else etag
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or (candidate[2:] if candidate.startswith("W/") else candidate) == opaque:
            return True
    return False


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


# Routing: a route table in, matches and URLs out -----------------------------
# The table itself is the application's (section 14); this is the machinery,
# pure like the parser above.

@dataclass(frozen=True, slots=True)
class Route:
    """One row of a route table: a method, a path pattern (<name>, <int:name>,
    <path:name>, or <secret:name> for a credential the request log must not show),
    its name (what url_for builds the path by; None
    for an alias nothing links to), the handler, who may call it, and the largest
    request body it takes."""

    method: str
    pattern: str
    name: str
    handler: object
    auth: str = "user"
    body_limit: int = FORM_BODY_LIMIT
    upload: bool = False    # a multipart body here is read as it arrives, files to disk (App.receive_form)


def build_routes(rows):
    """Rows (methods, pattern, name, handler[, auth[, body_limit[, upload]]]) → Routes, one per
    method ("PATCH PUT" is two), checked by check_routes."""
    return check_routes(tuple(Route(method, pattern, name, handler, *rest)
                              for methods, pattern, name, handler, *rest in rows for method in methods.split()))


def check_routes(routes):
    """routes, unless two have the same method and pattern or a name is given to two
    patterns (ValueError: a route that would silently never be reached, or a URL
    built for the wrong page)."""
    seen, patterns = set(), {}
    for route in routes:
        if (route.method, route.pattern) in seen:
            raise ValueError("two routes for %s %s" % (route.method, route.pattern))
        seen.add((route.method, route.pattern))
        if route.name is not None and patterns.setdefault(route.name, route.pattern) != route.pattern:
            raise ValueError("the route name %r is given to %s and %s" % (route.name, patterns[route.name],
                                                                           route.pattern))
    return routes


_PARAM_RE = re.compile(r"<(?:(int|path|secret):)?([a-z_]+)>")
_PARAM_PATTERNS = {None: r"[^/]+", "int": r"[0-9]{1,18}", "path": r".+", "secret": r"[^/]+"}
LOG_FILTERED = "[FILTERED]"  # what the request log shows for a <secret:…> segment
METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")  # how an Allow header lists them


class Router:
    """(method, path) → (route, params): static paths by dict lookup, patterns
    grouped by method, first segment and depth, answers remembered."""

    def __init__(self, routes):
        self._static = {}
        self._dynamic = collections.defaultdict(list)
        self._matched = {}  # (method, path) → what match() found for a pattern route
        self._methods = sorted({route.method for route in routes}, key=METHOD_ORDER.index)
        self._secrets = collections.defaultdict(list)  # first segment → [regex], see log_path
        self._compile_secret_patterns({route.pattern for route in routes if "<secret:" in route.pattern})
        for route in check_routes(tuple(routes)):
            if "<" not in route.pattern:
                self._static[(route.method, route.pattern)] = (route, {})
                continue
            converters = {}

            def replace(match):
                converters[match.group(2)] = match.group(1)
                return "(?P<%s>%s)" % (match.group(2), _PARAM_PATTERNS[match.group(1)])
            regex = "^" + _PARAM_RE.sub(replace, re.escape(route.pattern).replace(r"\<", "<").replace(r"\>", ">")) + "$"
            segments = route.pattern.split("/")
            self._dynamic[(route.method, segments[1], len(segments))].append((regex, converters, route))
        for candidates in self._dynamic.values():  # literal segments win over parameters
            candidates.sort(key=lambda item: item[2].pattern.count("<"))

    def match(self, method, path):
        """(route, params) or None; both are shared between requests, so read them only."""
        found = self._static.get((method, path))
        if found:
            return found
        key = (method, path)
        if key in self._matched:
            return self._matched[key]
        found = self._match_pattern(method, path)
        if len(path) <= MEMO_KEY_MAX_CHARS:
            if len(self._matched) >= ROUTES_KEPT:
                self._matched.clear()
            self._matched[key] = found
        return found

    def _compile_secret_patterns(self, patterns):
        """Where the patterns' <secret:…> segments are, whatever the method (a 405 or
        404 is logged too): each secret a group, more path allowed after it, so a
        pattern that extends another's needs no regex of its own."""
        def replace(match):
            return "(%s)" % _PARAM_PATTERNS["secret"] if match.group(1) == "secret" \
                else "(?:%s)" % _PARAM_PATTERNS[match.group(1)]
        for pattern in sorted(patterns):
            if any(pattern.startswith(other + "/") for other in patterns):
                continue
            escaped = re.escape(pattern).replace(r"\<", "<").replace(r"\>", ">")
            self._secrets[pattern.split("/")[1]].append(re.compile("^" + _PARAM_RE.sub(replace, escaped) + "(?=/|$)"))

    def log_path(self, path):
        """The path as the request log may show it: every secret segment LOG_FILTERED."""
        head = path[1:path.find("/", 1)] if path.find("/", 1) > 0 else path[1:]
        for regex in self._secrets.get(head, ()):
            matched = regex.match(path)
            if matched:
                pieces, done = [], 0
                for group in range(1, matched.lastindex + 1):
                    pieces += (path[done:matched.start(group)], LOG_FILTERED)
                    done = matched.end(group)
                return "".join(pieces) + path[done:]
        return path

    def allowed_methods(self, path):
        """The methods some route takes at path, in METHOD_ORDER (HEAD wherever GET is):
        what a 405's Allow header lists (RFC 9110 §15.5.6); empty when nothing is there."""
        methods = [method for method in self._methods if self.match(method, path)]
        if "GET" in methods:
            methods.insert(1, "HEAD")
        return methods

    def _match_pattern(self, method, path):
        segments = path.split("/")
        candidates = self._dynamic.get((method, segments[1] if len(segments) > 1 else "", len(segments)), ())
        if not candidates and segments[-1] != "":  # a <path:…> pattern spans segments
            candidates = [item for key, items in self._dynamic.items() if key[:2] == (method, segments[1])
                          for item in items if "<path:" in item[2].pattern]
        for regex, converters, route in candidates:
            matched = re.match(regex, path)  # compiled on first use (re keeps them), not at every start
            if matched:
                params = {}
                for name, value in matched.groupdict().items():
                    params[name] = int(value) if converters[name] == "int" else urllib.parse.unquote(value)
                return route, params
        return None


class UrlBuilder:
    """Paths from a route table by name: each pattern becomes a %-format template once."""

    def __init__(self, routes):
        self._templates = {}  # name → (template, parameter names, (name, safe characters) of those quoted)
        for route in routes:
            if route.name is None or route.name in self._templates:
                continue
            names, quoted = [], []

            def placeholder(match):
                kind, name = match.groups()
                names.append(name)
                if kind != "int":
                    quoted.append((name, "/" if kind == "path" else ""))
                return "%%(%s)%s" % (name, "d" if kind == "int" else "s")
            template = _PARAM_RE.sub(placeholder, route.pattern.replace("%", "%%"))
            self._templates[route.name] = (template, frozenset(names), tuple(quoted))

    def template(self, name):
        """The %-format template of a route whose parameters are all numbers: what a hot
        template embeds ("/rooms/%(room_id)d/@%(message_id)d")."""
        template, _, quoted = self._templates[name]
        if quoted:
            raise ValueError("%s has parameters that need quoting" % name)
        return template

    def build(self, name, /, **params):
        """The path of the route called name, parameters filled in (text percent-encoded);
        any its pattern doesn't name become the query string."""
        template, names, quoted = self._templates[name]
        for key, safe in quoted:
            params[key] = urllib.parse.quote(str(params[key]), safe=safe)
        if len(params) == len(names):
            return template % params
        return template % params + "?" + urllib.parse.urlencode(
            {key: value for key, value in params.items() if key not in names})


####
#### 5. WebSocket (RFC 6455, RFC 7692)
####
# WebSocket: RFC 6455 framing and RFC 7692 permessage-deflate (sans-I/O) ######
###############################################################################
#
# Bytes in, events and bytes out: nothing here touches a socket, the clock or
# asyncio, so the server and the tests drive the same code.
#
#   check_handshake(method, headers) -> {"accept", "subprotocol", "deflate"},
#       or raises HandshakeRefused(.status 400 | 426, .reason, .headers);
#       the caller answers 101 with those values (see Cable.handshake).
#
#   protocol = WebSocketProtocol(deflate=result["deflate"] is not None)
#   protocol.receive_data(data)     never raises; bad input queues a close frame
#   protocol.events_received()      -> [TextMessage | BinaryMessage | Ping |
#                                       Pong | CloseReceived]
#   protocol.send_text(text), send_frame(frame), send_ping(payload)
#                                   queue data (nothing once we sent Close)
#   protocol.data_to_send()         -> bytes to write: our sends, automatic
#                                      pongs, close frames
#
# States (WebSocketState):
#
#   OPEN    -- close() ----------------------------------------> CLOSING
#   CLOSING -- their close (we send nothing more) -------------> CLOSED
#   OPEN    -- their close (we echo its code) -----------------> CLOSED
#   OPEN    -- protocol error (we send 1002, 1007 or 1009) ----> CLOSED
#   CLOSING -- protocol error (we send nothing more) ----------> CLOSED
#
# The caller writes data_to_send() after every call. Once state is CLOSED the
# caller writes data_to_send() one last time and then closes the TCP
# connection: that is after our echo of their close, after our close in
# answer to a protocol error, or when their close answers ours (RFC 6455
# §7.1.1: the server closes TCP first). In CLOSING it keeps reading for the
# client's close, under a timeout of its own. Input after CLOSED is ignored.
#
# Fan-out encodes a message once (encode_message(), plain and deflated) and
# hands the same frame bytes to every subscriber's protocol (send_frame), which
# drops them once it has sent Close (§5.5.1). Deflate is negotiated without
# context takeover both ways, so no zlib state outlives a message and an idle
# connection holds no buffers at all. In CLOSING, data frames from the peer are
# skipped unread (nothing is inflated or kept) while we wait for its Close.

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
WEBSOCKET_VERSION = "13"  # RFC 6455 §4.1: the only version browsers speak
ACTIONCABLE_SUBPROTOCOL = "actioncable-v1-json"
MAX_CONTROL_PAYLOAD = 125  # RFC 6455 §5.5: control frames fit a 7-bit length

OPCODE_CONTINUATION = 0x0  # RFC 6455 §5.2
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA

CLOSE_NORMAL = 1000  # RFC 6455 §7.4.1
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005  # stands for an empty close payload; never on the wire
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.1: dropped from each message
DEFLATE_WINDOW_BITS = 15  # we compress with zlib's full 32 KiB window
DEFLATE_RESPONSE = (
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
)
_WINDOW_BITS_VALUES = frozenset(str(bits) for bits in range(8, 16))  # RFC 7692 §7.1.2


def _is_valid_close_code(code):
    """RFC 6455 §7.4: codes an endpoint may send (1012-1014 were added to
    the IANA registry later); 1004-1006 and 1015 are reserved."""
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


# Handshake (RFC 6455 §4.2) ####################################################


class HandshakeRefused(CampfireError):
    """An upgrade request we answer with an HTTP error instead of 101."""

    def __init__(self, status, reason, headers=()):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = list(headers)


def websocket_accept(key):
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()
    return base64.b64encode(digest).decode()


def _comma_list(value):
    return [item.strip() for item in value.split(",") if item.strip()]


def check_handshake(method, headers):
    """Validate a client's opening handshake (RFC 6455 §4.2.1); `headers`
    maps lowercase names to values, repeated ones comma-joined."""
    if method != "GET":
        raise HandshakeRefused(400, "a WebSocket handshake is a GET")
    if "websocket" not in [t.lower() for t in _comma_list(headers.get("upgrade", ""))]:
        raise HandshakeRefused(400, "Upgrade: websocket is missing")
    if "upgrade" not in [t.lower() for t in _comma_list(headers.get("connection", ""))]:
        raise HandshakeRefused(400, "Connection: Upgrade is missing")
    if headers.get("sec-websocket-version", "").strip() != WEBSOCKET_VERSION:
        # §4.2.2: tell the client which version we speak.
        raise HandshakeRefused(
            426, "unsupported WebSocket version", [("Sec-WebSocket-Version", WEBSOCKET_VERSION)]
        )
    key = headers.get("sec-websocket-key", "").strip()
    try:
        nonce = base64.b64decode(key, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII str
        nonce = b""
    if len(nonce) != 16:  # §4.1: a base64-encoded 16-byte nonce
        raise HandshakeRefused(400, "Sec-WebSocket-Key is not 16 bytes in base64")
    offered = _comma_list(headers.get("sec-websocket-protocol", ""))
    return {
        "accept": websocket_accept(key),
        "subprotocol": ACTIONCABLE_SUBPROTOCOL if ACTIONCABLE_SUBPROTOCOL in offered else None,
        "deflate": negotiate_deflate(headers.get("sec-websocket-extensions", "")),
    }


def negotiate_deflate(extensions):
    """Answer the first permessage-deflate offer we can honour (RFC 7692 §5,
    §7.1), or None to run without the extension.

    We always ask for no context takeover both ways, so each message is
    compressed and inflated alone. We decline server_max_window_bits below
    15: a broadcast is compressed once, with one window, for every client.
    client_max_window_bits needs no answer (§7.1.2.2): a fresh 15-bit
    inflater reads any smaller window.
    """
    for offer in extensions.split(","):
        name, *params = [part.strip() for part in offer.split(";")]
        if name.lower() == "permessage-deflate":
            response = _accept_deflate_offer(params)
            if response is not None:
                return response
    return None


def _accept_deflate_offer(params):
    seen = set()
    response = DEFLATE_RESPONSE
    for param in params:
        name, has_value, value = param.partition("=")
        name, value = name.strip().lower(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':  # RFC 6455 §9.1
            value = value[1:-1]
        if name in seen:  # §7.1: a repeated parameter voids the offer
            return None
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if has_value:
                return None
        elif name == "server_max_window_bits":  # §7.1.2.1: a value is required
            if value != str(DEFLATE_WINDOW_BITS):
                return None
            response += f"; server_max_window_bits={DEFLATE_WINDOW_BITS}"
        elif name == "client_max_window_bits":  # §7.1.2.2: the value is optional
            if has_value and value not in _WINDOW_BITS_VALUES:
                return None
        else:
            return None
    return response


# Frames (RFC 6455 §5) #########################################################


def encode_frame(opcode, payload, *, fin=True, rsv1=False):
    """A server frame: unmasked (§5.1), with the shortest length encoding (§5.2)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        header = bytes((first, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


def encode_message(text, *, deflate):
    """One text message as frame bytes, compressed when `deflate` and worth it
    (RFC 7692 §6: a message may always go uncompressed, with RSV1 clear)."""
    payload = text.encode()
    if deflate and len(payload) >= DEFLATE_MIN_MESSAGE_BYTES:
        compressor = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -DEFLATE_WINDOW_BITS)
        compressed = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        compressed = compressed[: -len(DEFLATE_TAIL)]  # §7.2.1; a sync flush ends with it
        if len(compressed) < len(payload):
            return encode_frame(OPCODE_TEXT, compressed, rsv1=True)
    return encode_frame(OPCODE_TEXT, payload)


def _close_frame(code, reason=""):
    payload = b"" if code == CLOSE_NO_STATUS else code.to_bytes(2, "big") + reason.encode()
    return encode_frame(OPCODE_CLOSE, payload)


def _unmask(payload, mask):
    """XOR with the 4-byte key (§5.3) as one big-integer operation: ~50x a
    per-byte Python loop on large frames."""
    length = len(payload)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")


# Events #######################################################################


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A whole text message from the peer (UTF-8 checked)."""

    text: str


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    """A whole binary message from the peer."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping from the peer."""

    payload: bytes  # already answered: the pong is in data_to_send()


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong from the peer, answering one of our pings."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer's close frame: the connection is closing."""

    code: int  # CLOSE_NO_STATUS (1005) for an empty close frame
    reason: str


class WebSocketState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"  # we sent a close and wait for theirs
    CLOSED = "closed"  # write data_to_send(), then close the TCP connection


# The connection ###############################################################


class _PartialMessage:
    """A fragmented message between its first frame and its FIN (§5.4)."""

    __slots__ = ("opcode", "size", "frames", "parts", "utf8", "inflater")

    def __init__(self, opcode, compressed):
        self.opcode = opcode
        self.size = 0  # payload bytes so far, after inflating
        self.frames = 0
        self.parts = []
        # §8.1: text is checked fragment by fragment, to fail as early as possible.
        self.utf8 = codecs.getincrementaldecoder("utf-8")() if opcode == OPCODE_TEXT else None
        self.inflater = zlib.decompressobj(wbits=-DEFLATE_WINDOW_BITS) if compressed else None


class WebSocketProtocol:
    """The server side of one WebSocket connection, after the handshake."""

    __slots__ = (
        "state", "close_code", "_deflate", "_max_message_bytes",
        "_buffer", "_partial", "_events", "_outgoing",
    )

    def __init__(self, *, deflate=False, max_message_bytes=MAX_WEBSOCKET_MESSAGE_BYTES):
        self.state = WebSocketState.OPEN
        self.close_code = None  # the code we closed with, or echoed
        self._deflate = deflate
        self._max_message_bytes = max_message_bytes
        self._buffer = b""  # an incomplete frame (a bytearray), else b""
        self._partial = None  # a _PartialMessage while one is fragmented
        self._events = None  # a list once there is something to report
        self._outgoing = b""

    # The caller's side ########################################################

    def events_received(self):
        events, self._events = self._events, None
        return events if events is not None else []

    def data_to_send(self):
        data, self._outgoing = self._outgoing, b""
        return data

    def send_text(self, text):
        if self.state is WebSocketState.OPEN:  # §5.5.1: no data after our close
            self._outgoing += encode_message(text, deflate=self._deflate)

    def send_frame(self, frame):
        """A data frame already encoded (a broadcast: the same bytes for every subscriber)."""
        if self.state is WebSocketState.OPEN:  # §5.5.1: no data after our close
            self._outgoing += frame

    def send_ping(self, payload=b""):
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError("a ping payload is at most 125 bytes")
        if self.state is WebSocketState.OPEN:
            self._outgoing += encode_frame(OPCODE_PING, payload)

    def close(self, code=CLOSE_NORMAL, reason=""):
        """Start the closing handshake (§7.1.2); state becomes CLOSING."""
        if not _is_valid_close_code(code) or len(reason.encode()) > MAX_CONTROL_PAYLOAD - 2:
            raise ValueError(f"cannot close with {code} {reason!r}")
        if self.state is WebSocketState.OPEN:
            self._outgoing += _close_frame(code, reason)
            self.state = WebSocketState.CLOSING
            self.close_code = code

    def receive_data(self, data):
        if self.state is WebSocketState.CLOSED or not data:
            return
        if self._buffer:
            self._buffer += data
            buf = self._buffer
        else:
            buf = data if type(data) is bytes else bytes(data)
        pos, end = 0, len(buf)
        while end - pos >= 2 and self.state is not WebSocketState.CLOSED:
            first, second = buf[pos], buf[pos + 1]
            opcode = first & 0x0F
            error = self._header_error(first, second, opcode)
            if error:
                self._fail(CLOSE_PROTOCOL_ERROR, error)
                break
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                start += 2
                if end < start:
                    break
                length = int.from_bytes(buf[pos + 2 : start], "big")
            elif length == 127:
                start += 8
                if end < start:
                    break
                length = int.from_bytes(buf[pos + 2 : start], "big")
                if length >> 63:  # §5.2: the most significant bit must be 0
                    self._fail(CLOSE_PROTOCOL_ERROR, "frame length out of range")
                    break
            # Refuse an oversized message on its declared length, before buffering it.
            if opcode < OPCODE_CLOSE:
                received = self._partial.size if self._partial is not None else 0
                if length > self._max_message_bytes - received:
                    self._fail(CLOSE_MESSAGE_TOO_BIG, "message too big")
                    break
            start += 4  # the masking key
            stop = start + length
            if end < stop:
                break
            pos = stop
            if opcode < OPCODE_CLOSE and self.state is WebSocketState.CLOSING:
                continue  # data after our Close is discarded unread (§1.4, §7.1.2)
            payload = _unmask(buf[start:stop], buf[start - 4 : start])
            self._receive_frame(first, opcode, payload)
        if self.state is WebSocketState.CLOSED or pos == end:
            self._buffer = b""
        elif buf is self._buffer:
            del buf[:pos]
        else:
            self._buffer = bytearray(buf[pos:])

    # Parsing ##################################################################

    def _header_error(self, first, second, opcode):
        """Why a frame's first two bytes are a protocol error, or ""."""
        if not second & 0x80:
            return "client frames must be masked"  # §5.1
        if opcode >= OPCODE_CLOSE:
            if opcode > OPCODE_PONG:
                return "unknown opcode"  # §5.2
            if not first & 0x80:
                return "fragmented control frame"  # §5.5
            if first & 0x70:
                return "reserved bits on a control frame"  # RFC 7692 §6.1
            if (second & 0x7F) > MAX_CONTROL_PAYLOAD:
                return "control frame too long"  # §5.5
        elif opcode == OPCODE_CONTINUATION:
            if self._partial is None:
                return "continuation without a message"  # §5.4
            if first & 0x70:
                return "reserved bits on a continuation"  # RFC 7692 §6.1: first frame only
        elif opcode <= OPCODE_BINARY:
            if self._partial is not None:
                return "new message inside a fragmented one"  # §5.4
            if first & 0x30 or (first & 0x40 and not self._deflate):
                return "reserved bits without an extension"  # §5.2
        else:
            return "unknown opcode"  # §5.2
        return ""

    def _receive_frame(self, first, opcode, payload):
        if opcode == OPCODE_CLOSE:
            self._receive_close(payload)
        elif opcode == OPCODE_PING:
            if self.state is WebSocketState.OPEN:  # §5.5.2: answer with the same payload
                self._outgoing += encode_frame(OPCODE_PONG, payload)
            self._emit(Ping(payload))
        elif opcode == OPCODE_PONG:
            self._emit(Pong(payload))
        elif opcode and first & 0x80:  # a whole message in one frame: no state kept
            if first & 0x40:
                inflater = zlib.decompressobj(wbits=-DEFLATE_WINDOW_BITS)
                payload = self._inflate(inflater, payload + DEFLATE_TAIL, self._max_message_bytes)
                if payload is None:
                    return
            if opcode == OPCODE_BINARY:
                self._deliver(BinaryMessage(payload))
                return
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_PAYLOAD, "invalid UTF-8")
                return
            self._deliver(TextMessage(text))
        else:
            self._receive_fragment(first, opcode, payload)

    def _receive_fragment(self, first, opcode, payload):
        fin = bool(first & 0x80)
        partial = self._partial
        if partial is None:
            partial = self._partial = _PartialMessage(opcode, first & 0x40)
        partial.frames += 1
        if partial.frames > MAX_MESSAGE_FRAGMENTS:
            self._fail(CLOSE_MESSAGE_TOO_BIG, "message in too many fragments")
            return
        if partial.inflater is not None:
            allowance = self._max_message_bytes - partial.size
            data = payload + DEFLATE_TAIL if fin else payload
            payload = self._inflate(partial.inflater, data, allowance)
            if payload is None:
                return
        partial.size += len(payload)
        if partial.utf8 is not None:
            try:
                payload = partial.utf8.decode(payload, fin)
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_PAYLOAD, "invalid UTF-8")
                return
        if payload:
            partial.parts.append(payload)
        if fin:
            self._partial = None
            if partial.opcode == OPCODE_TEXT:
                self._deliver(TextMessage("".join(partial.parts)))
            else:
                self._deliver(BinaryMessage(b"".join(partial.parts)))

    def _inflate(self, inflater, data, allowance):
        """Inflate at most `allowance` bytes (RFC 7692 §7.2.2); asking for one
        more tells a zip bomb from a message that fits exactly."""
        try:
            inflated = inflater.decompress(data, allowance + 1)
        except zlib.error:
            self._fail(CLOSE_PROTOCOL_ERROR, "invalid compressed data")
            return None
        if len(inflated) > allowance:
            self._fail(CLOSE_MESSAGE_TOO_BIG, "message too big")
            return None
        return inflated

    def _receive_close(self, payload):
        if not payload:
            code, reason = CLOSE_NO_STATUS, ""
        elif len(payload) == 1:  # §5.5.1: a body starts with a 2-byte code
            self._fail(CLOSE_PROTOCOL_ERROR, "close payload of one byte")
            return
        else:
            code = int.from_bytes(payload[:2], "big")
            if not _is_valid_close_code(code):
                self._fail(CLOSE_PROTOCOL_ERROR, "invalid close code")
                return
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                self._fail(CLOSE_PROTOCOL_ERROR, "close reason is not UTF-8")
                return
        self._emit(CloseReceived(code, reason))
        if self.state is WebSocketState.OPEN:  # §5.5.1: echo their code; empty for empty
            self._outgoing += _close_frame(code)
            self.close_code = code
        self.state = WebSocketState.CLOSED
        self._partial = None

    def _fail(self, code, reason):
        """_Fail the WebSocket Connection_ (§7.1.7): send a close unless we
        already did, and stop reading; the caller then closes TCP."""
        if self.state is WebSocketState.OPEN:
            self._outgoing += _close_frame(code, reason)
            self.close_code = code
        self.state = WebSocketState.CLOSED
        self._partial = None

    def _deliver(self, message):
        if self.state is WebSocketState.OPEN:  # in CLOSING, data is discarded
            self._emit(message)

    def _emit(self, event):
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)



####
#### 6. Action Cable's protocol
####
# The JSON dialect Rails' Action Cable speaks over a WebSocket (the
# actioncable-v1-json subprotocol). Pure functions; the channels live with the
# server's real-time section.

CABLE_WELCOME = json.dumps({"type": "welcome"})
CABLE_UNAUTHORIZED = json.dumps({"type": "disconnect", "reason": "unauthorized", "reconnect": False})


@dataclass(frozen=True)
class CableCommand:
    """One command from an Action Cable client, its identifier decoded."""

    command: str          # subscribe | unsubscribe | message
    identifier: str       # echoed back verbatim
    channel: str
    params: dict
    data: dict


class CableCommandError(CampfireError):
    """A command that can't be understood; the connection ignores it."""


def parse_cable_command(text):
    """A client's text frame → CableCommand, or CableCommandError."""
    try:
        frame = json.loads(text)
    except ValueError as error:
        raise CableCommandError("not JSON") from error
    except RecursionError as error:  # nesting past the interpreter's limit: refused, not a crash
        raise CableCommandError("nested too deeply") from error
    if not isinstance(frame, dict):
        raise CableCommandError("not an object")
    command, identifier = frame.get("command"), frame.get("identifier")
    if command not in ("subscribe", "unsubscribe", "message"):
        raise CableCommandError("unknown command")
    if not isinstance(identifier, str) or len(identifier.encode()) > MAX_CABLE_IDENTIFIER_BYTES:
        raise CableCommandError("bad identifier")
    try:
        params = json.loads(identifier)
    except (ValueError, RecursionError) as error:
        raise CableCommandError("identifier is not JSON") from error
    if not isinstance(params, dict) or not isinstance(params.get("channel"), str):
        raise CableCommandError("identifier names no channel")
    data = {}
    if command == "message":
        try:
            data = json.loads(frame.get("data") or "{}")
        except (TypeError, ValueError, RecursionError) as error:
            raise CableCommandError("data is not JSON") from error
        if not isinstance(data, dict):
            raise CableCommandError("data is not an object")
    return CableCommand(command, identifier, params["channel"], params, data)


def cable_frame(identifier, message):
    """A broadcast as Action Cable sends it: the identifier echoed, the message any JSON."""
    return json.dumps({"identifier": identifier, "message": message}, separators=(",", ":"), ensure_ascii=False)


def cable_reply(identifier, kind):
    return json.dumps({"identifier": identifier, "type": kind}, separators=(",", ":"))


####
#### 7. Rich text
####
# Message bodies are Trix HTML. On the way in they pass sanitize_html (an
# allow-list rebuild, so the output is canonical, well-formed and idempotent);
# html_to_plain_text feeds search, webhooks, notifications and /play;
# render_rich_text (section 13) swaps stored mention attachments for chips on the way out.
# Campfire's helpers/content_filters/sanitize_tags.rb, exactly: Trix writes
# strikethrough as <del>, so there is no <s> or <strike>.

ALLOWED_TAGS = frozenset(
    "a abbr acronym address b big blockquote br cite code dd del dfn div dl dt em"
    " h1 h2 h3 h4 h5 h6 hr i ins kbd li ol p pre samp small span strong sub sup"
    " time tt ul var action-text-attachment figure figcaption".split())
# Rails' safe list without src (no <img>) and xml:lang, plus class. No style,
# on*, id (would collide with the page's) or data-*.
ALLOWED_ATTRIBUTES = frozenset(
    "abbr alt cite class datetime height href lang name title width".split())
ATTACHMENT_TAG = "action-text-attachment"
# ActionText::Attachment::ATTRIBUTES, allowed on ATTACHMENT_TAG only.
ATTACHMENT_ATTRIBUTES = frozenset(
    "sgid content-type url href filename filesize width height previewable"
    " presentation caption content".split())
URL_ATTRIBUTES = frozenset(("href", "cite", "url"))
MENTION_CONTENT_TYPE = "application/vnd.campfire.mention"
OPENGRAPH_CONTENT_TYPE = "application/vnd.actiontext.opengraph-embed"  # a link preview: href, filename (its
                                                                        # title), caption, url (its image)

_ATTACHMENT_ALLOWED = ALLOWED_ATTRIBUTES | ATTACHMENT_ATTRIBUTES
_VOID_TAGS = frozenset(("br", "hr"))
# Nothing inside these survives. <embed> is void, so it has no content to drop.
_DROP_CONTENT = frozenset(
    "script style iframe object svg math template noscript textarea title select"
    " xmp noembed noframes head".split())
_NO_LINK_TAGS = frozenset(("a", "code", "pre", ATTACHMENT_TAG))
_NO_SELF_NESTING = frozenset(("a", ATTACHMENT_TAG))  # a browser closes the outer <a> instead
_EXTERNAL_LINK = ' target="_blank" rel="noopener noreferrer"'

# WHATWG URL parsing drops tabs and newlines anywhere and C0 controls and spaces
# at the ends; dropping all of them before looking for a scheme is stricter.
_URL_IGNORED = re.compile(r"[\x00-\x20\x7f]+")
# Allowed: http, https, mailto, or relative (no ":" before the first / ? #).
_SAFE_URL = re.compile(r"(?:https?:|mailto:|[^:/?#]*(?:[/?#]|\Z))", re.I | re.A)
_EXTERNAL_URL = re.compile(r"https?:|[/\\]{2}", re.I | re.A)  # a browser reads "/\" as "//"
# Bare URLs in text, like rails_autolink: not glued to a word, an email or a path.
_BARE_URL = re.compile(r"(?<![\w@/.:-])(?:https?://|www\.)\w[^\s<>\"]*", re.I | re.A)
_URL_TRAILING = ".,;:!?"
_HTML_TAG = re.compile(r"<[^>]*>")
_ATTACHMENT_START = re.compile(r"<action-text-attachment\b([^>]*)>")
_ATTACHMENT_ELEMENT = re.compile(
    r"<action-text-attachment\b([^>]*)>(.*?)</action-text-attachment>", re.S)
_QUOTED_ATTRIBUTE = re.compile(r'([\w:-]+)="([^"]*)"')

# Plain text: paragraph-like blocks are set off by a blank line, others by a newline.
_PARAGRAPH_TAGS = frozenset(
    "p h1 h2 h3 h4 h5 h6 ul ol dl blockquote pre figure address hr".split())
_LINE_TAGS = frozenset("div li dd dt figcaption".split())
_LIST_TAGS = frozenset(("ul", "ol"))


def _link_urls(text):
    """Escaped text with its bare http(s) and www. URLs made into links."""
    if not _BARE_URL.search(text):  # most text runs: skip building pieces
        return escape_html(text, trix=True)
    out, done = [], 0
    for match in _BARE_URL.finditer(text):
        url = match[0]
        end, unbalanced = len(url), url.count(")") - url.count("(")
        while True:  # trailing punctuation and an unbalanced ")" end the sentence, not the URL
            if url[end - 1] in _URL_TRAILING:
                end -= 1
            elif url[end - 1] == ")" and unbalanced > 0:
                end, unbalanced = end - 1, unbalanced - 1
            else:
                break
        url = url[:end]
        href = url if url[:1] in "hH" else "http://" + url
        out += (escape_html(text[done:match.start()], trix=True), '<a href="', escape_html(href, trix=True),
                '"', _EXTERNAL_LINK, ">", escape_html(url, trix=True), "</a>")
        done = match.start() + len(url)
    out.append(escape_html(text[done:], trix=True))
    return "".join(out)


def _fragment_text(fragment):
    """Rough text of an attribute holding HTML (an attachment's content)."""
    return " ".join(unescape(_HTML_TAG.sub(" ", fragment)).split())


def _attachment_attributes(source):
    """Attributes of a start tag as written by sanitize_html (or Rails)."""
    return {name: unescape(value) for name, value in _QUOTED_ATTRIBUTE.findall(source)}


def _feed_whole(parser, html):
    """parser.feed(html), then whatever it left unparsed (an unterminated tag,
    comment or charref at the end) as text. HTMLParser.close() would rescan that
    tail from each "<" in it: quadratic time on "<a <a <a…" (CPython gh-135462)."""
    parser.feed(html)
    if parser.rawdata and not parser.cdata_elem:  # an unclosed <script>'s text is dropped
        parser.handle_data(unescape(parser.rawdata))


def _parse_marked_section(parser, i, report=True):
    """HTMLParser.parse_marked_section, minus the AssertionError that
    _markupbase raises on "<![foo[": read it as a browser does, a bogus
    comment up to the first ">". ("<![CDATA[…]]>" is still dropped whole.)"""
    try:
        return HTMLParser.parse_marked_section(parser, i, report)
    except AssertionError:
        end = parser.rawdata.find(">", i + 3)
        return end + 1 if end >= 0 else -1


class _Sanitizer(HTMLParser):
    """Rebuilds HTML from allowed tags and attributes only. Text is buffered
    until an emitted tag, so a dropped tag never splits a URL that a second
    pass would then link: this is what makes the output idempotent."""

    def __init__(self, keep_attachment, link):
        super().__init__(convert_charrefs=True)
        self.out = []
        self._keep_attachment = keep_attachment
        self._link = link
        self._text = []        # pending text run
        self._open = []        # emitted elements still open, innermost last
        self._no_link = 0      # how many open elements forbid auto-links
        self._skip_tag = None  # element whose content is being dropped
        self._skip_depth = 0

    def handle_starttag(self, tag, attrs):
        if self._skip_tag:
            self._skip_depth += tag == self._skip_tag
            return
        if tag not in ALLOWED_TAGS:
            if tag in _DROP_CONTENT:
                self._skip_tag, self._skip_depth = tag, 1
            return
        if len(self._open) >= MAX_NESTING_DEPTH or (tag in _NO_SELF_NESTING and tag in self._open):
            return
        kept, external = {}, False
        allowed = _ATTACHMENT_ALLOWED if tag == ATTACHMENT_TAG else ALLOWED_ATTRIBUTES
        for name, value in attrs:
            if name in allowed and name not in kept:
                value = value or ""
                if name in URL_ATTRIBUTES:
                    url = _URL_IGNORED.sub("", value)
                    if not _SAFE_URL.match(url):
                        continue
                    if tag == "a" and name == "href" and _EXTERNAL_URL.match(url):
                        external = True
                kept[name] = value
        if tag == ATTACHMENT_TAG and not self._keep_attachment(
                kept.get("sgid", ""), kept.get("content-type", "")):
            return
        self._flush_text()
        if kept:
            attributes = "".join(f' {name}="{escape_html(value, trix=True)}"' for name, value in kept.items())
            self.out.append(f"<{tag}{attributes}{_EXTERNAL_LINK if external else ''}>")
        else:
            self.out.append(f"<{tag}>")
        if tag not in _VOID_TAGS:
            self._open.append(tag)
            self._no_link += tag in _NO_LINK_TAGS

    def handle_startendtag(self, tag, attrs):
        # "<div/>" opens a div in HTML; "<script/>" has no content to drop.
        if tag not in _DROP_CONTENT:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if self._skip_tag:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if not self._skip_depth:
                    self._skip_tag = None
            return
        if tag in self._open:  # never emit an end tag that wasn't opened
            self._flush_text()
            while True:
                name = self._open.pop()
                self._no_link -= name in _NO_LINK_TAGS
                self.out.append(f"</{name}>")
                if name == tag:
                    break

    def handle_data(self, data):
        if not self._skip_tag:
            self._text.append(data)

    parse_marked_section = _parse_marked_section

    def _flush_text(self):
        if self._text:
            text = "".join(self._text)
            self._text.clear()
            linked = self._link and not self._no_link
            self.out.append(_link_urls(text) if linked else escape_html(text, trix=True))

    def finish(self):
        self._flush_text()
        self.out.extend(f"</{name}>" for name in reversed(self._open))
        return "".join(self.out)


_SINGLE_DIV = re.compile(r"<div>([^<]*)</div>\Z")  # one line of text, as the composer sends it


def sanitize_html(html, *, keep_attachment=lambda sgid, content_type: True, link=False):
    """Allowed tags and attributes only, well-formed, every text and value
    escaped; contents of script, style, svg… dropped. Attachments survive only
    when keep_attachment(sgid, content_type) says so (the caller checks mention
    signatures). link=True also auto-links bare URLs, as Campfire does after
    sanitizing. sanitize_html(sanitize_html(x)) == sanitize_html(x)."""
    html = html.replace("\0", "")  # browsers never let NUL reach a tag name or URL intact
    if "<" not in html:  # plain text from bots and the API: no parser needed
        text = unescape(html) if "&" in html else html
        return _link_urls(text) if link else escape_html(text, trix=True)
    single_line = _SINGLE_DIV.match(html)
    if single_line:  # what the composer sends for one line: the same result, without a parser
        return "<div>" + sanitize_html(single_line[1], link=link) + "</div>"
    parser = _Sanitizer(keep_attachment, link)
    try:
        _feed_whole(parser, html)
    except AssertionError:  # html.parser's last-resort "should not get here" checks
        return escape_html(html, trix=True)
    return parser.finish()


class _PlainText(HTMLParser):
    """Action Text's to_plain_text: blocks become line breaks, list items get
    bullets or numbers, a mention becomes "@Name"."""

    def __init__(self, mention_name):
        super().__init__(convert_charrefs=True)
        self.parts = []
        self._mention_name = functools.lru_cache(maxsize=None)(mention_name)  # a body names few people, often
        self._breaks = 0       # line breaks owed before the next text
        self._lists = []       # [ordered?, items so far] per open list
        self._pre = 0
        self._skip_tag = None  # an attachment (already written) or a dropped element
        self._skip_depth = 0

    def handle_starttag(self, tag, attrs):
        if self._skip_tag:
            self._skip_depth += tag == self._skip_tag
            return
        if tag == ATTACHMENT_TAG or tag in _DROP_CONTENT:
            if tag == ATTACHMENT_TAG:
                self._write(self._attachment_text(dict(attrs)))
            self._skip_tag, self._skip_depth = tag, 1
        elif tag == "br":
            self._breaks += 1
        elif tag == "li":
            self._break(1)
            if self._lists and self._lists[-1][0]:
                self._lists[-1][1] += 1
                bullet = f"{self._lists[-1][1]}. "
            else:
                bullet = "• "
            self._write("  " * max(len(self._lists) - 1, 0) + bullet)
        else:
            self._block(tag)
            if tag in _LIST_TAGS:
                self._lists.append([tag == "ol", 0])
            self._pre += tag == "pre"

    def handle_endtag(self, tag):
        if self._skip_tag:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if not self._skip_depth:
                    self._skip_tag = None
            return
        if tag in _LIST_TAGS and self._lists:
            self._lists.pop()
        elif tag == "pre" and self._pre:
            self._pre -= 1
        self._block(tag)

    def handle_data(self, data):
        if self._skip_tag:
            return
        if not self._pre and "\n" in data and data.isspace():  # source formatting
            if self._breaks or not self.parts:
                return
            data = " "
        self._write(data)

    parse_marked_section = _parse_marked_section

    def _attachment_text(self, attrs):
        if attrs.get("content-type") == MENTION_CONTENT_TYPE:
            name = (self._mention_name(attrs.get("sgid") or "")
                    or _fragment_text(attrs.get("content") or ""))
            return name if not name or name.startswith("@") else "@" + name
        if attrs.get("content-type") == OPENGRAPH_CONTENT_TYPE:
            return ""  # the link it previews is in the text already
        label = attrs.get("caption") or attrs.get("filename")
        return f"[{label}]" if label else ""

    def _block(self, tag):
        if tag in _PARAGRAPH_TAGS:
            self._break(1 if self._lists else 2)  # a nested list is one more line
        elif tag in _LINE_TAGS:
            self._break(1)

    def _break(self, lines):
        self._breaks = max(self._breaks, lines)

    def _write(self, text):
        if text:
            if self._breaks and self.parts:
                self.parts.append("\n" * min(self._breaks, 2))  # at most one blank line
            self._breaks = 0
            self.parts.append(text)


def html_to_plain_text(html, *, mention_name=lambda sgid: None):
    """Plain text for search, webhooks, notifications and the /play check:
    "<div>/play tada</div>" → "/play tada". A mention is "@" + mention_name(sgid),
    else its content's text, else nothing."""
    if "<" not in html:
        return (unescape(html) if "&" in html else html).strip()
    single_line = _SINGLE_DIV.match(html)
    if single_line:
        return html_to_plain_text(single_line[1])
    parser = _PlainText(mention_name)
    try:
        _feed_whole(parser, html)
    except AssertionError:
        return _HTML_TAG.sub("", html).strip()
    return "".join(parser.parts).strip()


def find_mentions(stored_html):
    """The sgids of mention attachments, in order of first appearance."""
    if "<action-text-attachment" not in stored_html:
        return []
    sgids = {}
    for match in _ATTACHMENT_START.finditer(stored_html):
        attributes = _attachment_attributes(match[1])
        if attributes.get("content-type") == MENTION_CONTENT_TYPE and attributes.get("sgid"):
            sgids.setdefault(attributes["sgid"])
    return list(sgids)


# Mentions carry the person's signed global id as Action Text's attachable_sgid
# writes it (section 9a: signed with SECRET_KEY_BASE's "signed_global_ids" key), so
# Rails verifies ours and we verify Rails'.
_GID_USER = re.compile(r"gid://[\w.-]+/User/(\d{1,18})(?!\d)")


def _unbase64(data):
    """Decoded text (latin-1, so Marshal bytes survive), or "" when not base64."""
    try:
        return base64.b64decode(data + "=" * (-len(data) % 4), altchars=b"-_").decode("latin-1")
    except (binascii.Error, ValueError):
        return ""


def make_sgid(user_id, secret_key_base):
    """user.attachable_sgid: gid://campfire/User/<id>, purpose "attachable", no expiry."""
    return attachable_sgid(secret_key_base, "User", int(user_id))


def sgid_user_id(sgid):
    """The user id in a stored sgid, signature not checked (bodies Rails wrote
    are trusted data, and Campfire itself reads a User's sgid unverified:
    lib/rails_ext/action_text_attachables.rb). Reads {"_rails":{"data":gid}}, the
    older {"_rails":{"message":base64(json or Marshal)}} and Marshal-era ids."""
    text = _unbase64(sgid.rpartition("--")[0] or sgid)
    try:
        rails = json.loads(text)["_rails"]
        text = rails["data"] if "data" in rails else _unbase64(rails["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        pass  # not a JSON envelope: search the decoded bytes themselves
    match = _GID_USER.search(text) if isinstance(text, str) else None
    return int(match[1]) if match else None


def verify_sgid(sgid, secret_key_base, now=None):
    """The user id when the sgid is a User's signed with this SECRET_KEY_BASE for
    attachment (in any format Rails has written), else None."""
    located = locate_signed_global_id(secret_key_base, sgid, now=time.time() if now is None else now)
    if located is None or located[0] != GLOBALID_APP or located[1] != "User" or not located[2].isdigit():
        return None
    return int(located[2])


# Mentions typed as text ------------------------------------------------------------

_MENTION_SKIP_TAGS = frozenset(("a", "code", "pre", "action-text-attachment"))
_TAG_SPLIT = re.compile(r"(<[^>]*>)")
_TAG_NAME = re.compile(r"</?([a-zA-Z][\w-]*)")
_AT_SIGN = re.compile(r"(?<![\w@])@")


def _mention_index(people):
    """({name: sgid}, {first character: [name lengths, longest first]}) for names as
    the sanitizer escapes them, lower-cased; of two people with one name, the first
    wins. At an "@" only the lengths of names starting with the next character are
    tried, each a dictionary lookup: linear in the text, whatever the room's size."""
    names, lengths = {}, collections.defaultdict(set)
    for name, sgid in people:
        key = escape_html(name, trix=True).lower()
        if len(key) <= MENTION_LOOKAHEAD_CHARS and key not in names:
            names[key] = sgid
            lengths[key[:1]].add(len(key))
    return names, {first: sorted(found, reverse=True) for first, found in lengths.items()}


def link_mentions(html_text, people):
    """'@Name' in sanitized HTML (outside links and code) becomes the mention
    attachment Campfire stores. people: [(name, sgid)]; the longest name wins."""
    if not people:
        return html_text
    candidates = _mention_index(people)
    parts = _TAG_SPLIT.split(html_text)
    skipping = 0
    for index, part in enumerate(parts):
        if part.startswith("<"):
            tag = _TAG_NAME.match(part)
            if tag and tag.group(1).lower() in _MENTION_SKIP_TAGS and not part.endswith("/>"):
                skipping += -1 if part.startswith("</") else 1
            continue
        if not skipping and "@" in part:
            parts[index] = _link_mentions_in_text(part, candidates)
    return "".join(parts)


def _link_mentions_in_text(text, candidates):
    names, lengths = candidates
    tail = lengths.get("", ())  # a blank name, tried last as the shortest
    pieces, position = [], 0
    for match in _AT_SIGN.finditer(text):
        start = match.end()
        if match.start() < position:
            continue
        bucket = lengths.get(text[start:start + 1].lower()[:1], ())
        if not bucket and not tail:  # no name starts here (most "@"s): look no further
            continue
        following = text[start:start + MENTION_LOOKAHEAD_CHARS].lower()
        for length in itertools.chain(bucket if following else (), tail):
            sgid = names.get(following[:length])
            end = start + length
            if sgid is not None and len(following) >= length and not (
                    end < len(text) and (text[end].isalnum() or text[end] == "_")):
                pieces.append(text[position:match.start()])
                pieces.append('<action-text-attachment sgid="%s" content-type="%s"></action-text-attachment>'
                              % (escape_html(sgid, trix=True), MENTION_CONTENT_TYPE))
                position = end
                break
    pieces.append(text[position:])
    return "".join(pieces)


# @everyone and @here stay text in the stored body (as Once Campfire would show
# them); they notify when posted and show as mentions.
_GROUP_MENTION = re.compile(r"(?<![\w@])@(everyone|here)(?!\w)", re.I)
_SKIP_FOR_MARKS = frozenset(("a", "code", "pre", "action-text-attachment"))


def group_mentions(plain_text):
    """{"everyone", "here"}: the groups a message's text notifies."""
    return {name.lower() for name in _GROUP_MENTION.findall(plain_text)} if "@" in plain_text else set()


def _mark_text(html_text, pattern, replace, skip=_SKIP_FOR_MARKS):
    """Sanitized HTML with pattern's matches in its text (outside the tags in skip) replaced."""
    parts = _TAG_SPLIT.split(html_text)
    skipping = 0
    for index, part in enumerate(parts):
        if part.startswith("<"):
            tag = _TAG_NAME.match(part)
            if tag and tag.group(1).lower() in skip and not part.endswith("/>"):
                skipping += -1 if part.startswith("</") else 1
            continue
        if not skipping and part:
            parts[index] = pattern.sub(replace, part)
    return "".join(parts)


def render_group_mentions(html_text):
    """@everyone and @here in a displayed body as mention chips."""
    if "@" not in html_text:
        return html_text
    return _mark_text(html_text, _GROUP_MENTION,
                      lambda match: '<span class="mention mention--group">%s</span>' % match[0])


_SUFFIXES = ("ing", "es", "ed", "s")


def highlight_words(html_text, words):
    """Sanitized HTML with the words a search matched in <mark>: words starting with a
    query word, or with its stem (FTS5's porter tokenizer matches "designs" for "designing")."""
    stems = set()
    for word in words:
        word = word.lower()
        stems.add(word)
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                stems.add(word[:-len(suffix)])
                break
    if not stems:
        return html_text
    pattern = re.compile(r"(?<![\w&#])(?:%s)\w*" % "|".join(map(re.escape, sorted(stems, key=len, reverse=True))),
                         re.I)
    return _mark_text(html_text, pattern, lambda match: "<mark>%s</mark>" % match[0], skip=(ATTACHMENT_TAG,))


####
#### 8. QR codes (ISO/IEC 18004)
####
# ISO/IEC 18004:2015, byte mode only, rendered as SVG for /qr_code/<id>.

QR_MIN_VERSION, QR_MAX_VERSION = 1, 40
QR_LEVELS = "LMQH"  # §7.5.1: error correction levels, least to most
_QR_MODE_BYTE = 0b0100  # §7.4.5 mode indicator for 8-bit byte data
_QR_PAD_CODEWORDS = (0b11101100, 0b00010001)  # §7.4.10, alternated to fill capacity
_QR_LEVEL_BITS = {"L": 0b01, "M": 0b00, "Q": 0b11, "H": 0b10}  # §7.9.1 Table 12
_QR_FORMAT_GENERATOR = 0b10100110111  # Annex C: BCH(15,5) generator polynomial
_QR_FORMAT_MASK = 0b101010000010010  # Annex C: keeps the format bits from being all zero
_QR_VERSION_GENERATOR = 0b1111100100101  # Annex D: BCH(18,6) generator polynomial
_QR_FIRST_VERSION_WITH_INFO = 7  # §7.10: smaller symbols carry no version information
_GF256_PRIMITIVE = 0x11D  # §7.5.2: x^8 + x^4 + x^3 + x^2 + 1

# §7.5.1 Table 9, per version 1..40: error correction codewords in each block ...
_QR_EC_CODEWORDS_PER_BLOCK = {
    "L": (7, 10, 15, 20, 26, 18, 20, 24, 30, 18, 20, 24, 26, 30, 22, 24, 28, 30, 28, 28,
          28, 28, 30, 30, 26, 28, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30),
    "M": (10, 16, 26, 18, 24, 16, 18, 22, 22, 26, 30, 22, 22, 24, 24, 28, 28, 26, 26, 26,
          26, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28),
    "Q": (13, 22, 18, 26, 18, 24, 18, 22, 20, 24, 28, 26, 24, 20, 30, 24, 28, 28, 26, 30,
          28, 30, 30, 30, 30, 28, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30),
    "H": (17, 28, 22, 16, 22, 28, 26, 26, 24, 28, 24, 28, 22, 24, 24, 30, 28, 28, 26, 28,
          30, 24, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30),
}
# ... and how many blocks the codewords are split into (the rest of Table 9 follows
# from these: all blocks are as equal as possible, the longer ones last).
_QR_EC_BLOCKS = {
    "L": (1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 4, 6, 6, 6, 6, 7, 8,
          8, 9, 9, 10, 12, 12, 12, 13, 14, 15, 16, 17, 18, 19, 19, 20, 21, 22, 24, 25),
    "M": (1, 1, 1, 2, 2, 4, 4, 4, 5, 5, 5, 8, 9, 9, 10, 10, 11, 13, 14, 16,
          17, 17, 18, 20, 21, 23, 25, 26, 28, 29, 31, 33, 35, 37, 38, 40, 43, 45, 47, 49),
    "Q": (1, 1, 2, 2, 4, 4, 6, 6, 8, 8, 8, 10, 12, 16, 12, 17, 16, 18, 21, 20,
          23, 23, 25, 27, 29, 34, 34, 35, 38, 40, 43, 45, 48, 51, 53, 56, 59, 62, 65, 68),
    "H": (1, 1, 2, 4, 4, 4, 5, 6, 8, 8, 11, 11, 16, 16, 18, 16, 19, 21, 25, 25,
          25, 34, 30, 32, 35, 37, 40, 42, 45, 48, 51, 54, 57, 60, 63, 66, 70, 74, 77, 81),
}

# §7.8.2 Table 10: module (row i, column j) is inverted where the condition holds.
_QR_MASKS = (
    lambda i, j: (i + j) % 2 == 0,
    lambda i, j: i % 2 == 0,
    lambda i, j: j % 3 == 0,
    lambda i, j: (i + j) % 3 == 0,
    lambda i, j: (i // 2 + j // 3) % 2 == 0,
    lambda i, j: (i * j) % 2 + (i * j) % 3 == 0,
    lambda i, j: ((i * j) % 2 + (i * j) % 3) % 2 == 0,
    lambda i, j: ((i + j) % 2 + (i * j) % 3) % 2 == 0,
)
# §7.8.3 Table 11 penalty weights N1..N4, and the 1:1:3:1:1 finder-like pattern
# with its 4 light modules on either side, as rows and columns read it.
_QR_PENALTY_RUN, _QR_PENALTY_BLOCK, _QR_PENALTY_FINDER, _QR_PENALTY_BALANCE = 3, 3, 40, 10
_QR_FINDER_LIKE = ("10111010000", "00001011101")


def _gf256_tables():
    """Antilog and log tables of GF(256), the exp table doubled so products need no modulo."""
    exp, log, value = [0] * 510, [0] * 256, 1
    for power in range(255):
        exp[power] = exp[power + 255] = value
        log[value] = power
        value <<= 1
        if value & 0x100:
            value ^= _GF256_PRIMITIVE
    return tuple(exp), tuple(log)


_GF256_EXP, _GF256_LOG = _gf256_tables()


def _gf256_mul(a, b):
    return 0 if a == 0 or b == 0 else _GF256_EXP[_GF256_LOG[a] + _GF256_LOG[b]]


def _rs_generator(degree):
    """Annex A: the product of (x - a^i) for i < degree, highest power first."""
    poly = [1]
    for i in range(degree):
        poly = [hi ^ _gf256_mul(lo, _GF256_EXP[i]) for hi, lo in zip(poly + [0], [0] + poly)]
    return poly


def _rs_remainder(data, generator):
    """§7.5.2: the error correction codewords, data * x^n mod generator."""
    remainder = [0] * (len(generator) - 1)
    for byte in data:
        factor = byte ^ remainder[0]
        remainder = remainder[1:] + [0]
        remainder = [r ^ _gf256_mul(g, factor) for r, g in zip(remainder, generator[1:])]
    return remainder


def _bch_code(data, generator):
    """Annex C and D: data followed by its BCH remainder."""
    value = data << (generator.bit_length() - 1)
    remainder = value
    while remainder.bit_length() >= generator.bit_length():
        remainder ^= generator << (remainder.bit_length() - generator.bit_length())
    return value | remainder


def _qr_format_bits(level, mask):
    return _bch_code(_QR_LEVEL_BITS[level] << 3 | mask, _QR_FORMAT_GENERATOR) ^ _QR_FORMAT_MASK


def _qr_version_bits(version):
    return _bch_code(version, _QR_VERSION_GENERATOR)


def _qr_alignment_positions(version):
    """Annex E Table E.1: evenly spaced from the far edge, the first gap taking the slack."""
    if version == 1:
        return []
    count, last = version // 7 + 2, 4 * version + 10
    # Steps are even and rounded up; version 32 is the table's one exception.
    step = 26 if version == 32 else 2 * -(-(last - 6) // (2 * count - 2))
    return [6] + [last - step * k for k in reversed(range(count - 1))]


def _qr_data_modules(version):
    """Table 1: modules left for codewords once the function patterns are drawn."""
    size = 4 * version + 17
    count = version // 7 + 2 if version > 1 else 0
    # Three 8x8 finders with separators, two timing lines between them, 5x5 alignment
    # patterns (minus the modules already counted on a timing line), 2x15 format bits
    # plus the dark module, and 2x18 version bits.
    alignment = 25 * max(count * count - 3, 0) - 10 * max(count - 2, 0)
    version_info = 36 if version >= _QR_FIRST_VERSION_WITH_INFO else 0
    return size * size - 3 * 64 - 2 * (size - 16) - alignment - 31 - version_info


def _qr_data_capacity(version, level):
    """Data codewords of (version, level): all codewords minus the error correction ones."""
    blocks = _QR_EC_BLOCKS[level][version - 1]
    return _qr_data_modules(version) // 8 - blocks * _QR_EC_CODEWORDS_PER_BLOCK[level][version - 1]


def _qr_count_bits(version):
    return 8 if version <= 9 else 16  # §7.4.1 Table 3, byte mode


def _qr_choose_version(length, level):
    for version in range(QR_MIN_VERSION, QR_MAX_VERSION + 1):
        if 4 + _qr_count_bits(version) + 8 * length <= 8 * _qr_data_capacity(version, level):
            return version
    raise ValueError(f"{length} bytes do not fit in a level {level} QR code")


def _qr_data_codewords(data, version, capacity):
    """§7.4: mode, count, data, terminator, zero bits to a byte boundary, pad codewords."""
    bits = f"{_QR_MODE_BYTE:04b}{len(data):0{_qr_count_bits(version)}b}"
    bits += "".join(f"{byte:08b}" for byte in data)
    bits += "0" * min(4, 8 * capacity - len(bits))
    bits += "0" * (-len(bits) % 8)
    codewords = [int(bits[k:k + 8], 2) for k in range(0, len(bits), 8)]
    return codewords + [_QR_PAD_CODEWORDS[k % 2] for k in range(capacity - len(codewords))]


def _qr_final_codewords(data, version, level):
    """§7.5-7.6: split into blocks, add error correction, interleave column by column."""
    capacity = _qr_data_capacity(version, level)
    codewords = _qr_data_codewords(data, version, capacity)
    block_count = _QR_EC_BLOCKS[level][version - 1]
    generator = _rs_generator(_QR_EC_CODEWORDS_PER_BLOCK[level][version - 1])
    short_length, long_count = divmod(capacity, block_count)
    blocks, start = [], 0
    for index in range(block_count):
        end = start + short_length + (index >= block_count - long_count)
        blocks.append(codewords[start:end])
        start = end
    ec_blocks = [_rs_remainder(block, generator) for block in blocks]
    columns = itertools.chain(itertools.zip_longest(*blocks), zip(*ec_blocks))
    return [codeword for column in columns for codeword in column if codeword is not None]


def _qr_function_patterns(version):
    """§6.3: finders, separators, timing, alignment, dark module, version info.

    Returns (dark, reserved) grids; the format areas are reserved but left light
    because their bits depend on the mask.
    """
    size = 4 * version + 17
    dark = [[False] * size for _ in range(size)]
    reserved = [[False] * size for _ in range(size)]

    def put(row, col, is_dark):
        dark[row][col], reserved[row][col] = is_dark, True

    for top, left in ((0, 0), (0, size - 7), (size - 7, 0)):
        for row in range(top - 1, top + 8):
            for col in range(left - 1, left + 8):
                if 0 <= row < size and 0 <= col < size:
                    ring = max(abs(row - top - 3), abs(col - left - 3))
                    put(row, col, ring in (0, 1, 3))  # ring 4 is the light separator
    centres = _qr_alignment_positions(version)
    for row, col in itertools.product(centres, centres):
        if not reserved[row][col]:  # skip the three that would overlap a finder
            for r, c in itertools.product(range(-2, 3), range(-2, 3)):
                put(row + r, col + c, max(abs(r), abs(c)) != 1)
    for i in range(8, size - 8):
        if not reserved[6][i]:  # alignment patterns on the timing lines agree with them
            put(6, i, i % 2 == 0)
            put(i, 6, i % 2 == 0)
    for copy in _qr_format_positions(size):
        for row, col in copy:
            put(row, col, False)
    put(size - 8, 8, True)  # §7.9.1: the dark module is always dark
    if version >= _QR_FIRST_VERSION_WITH_INFO:
        bits = _qr_version_bits(version)
        # Annex D: a 6x3 block above the bottom-left finder, transposed by the top-right one.
        for i in range(18):
            put(size - 11 + i % 3, i // 3, bits >> i & 1 == 1)
            put(i // 3, size - 11 + i % 3, bits >> i & 1 == 1)
    return dark, reserved


def _qr_format_positions(size):
    """§7.9.1: where format bits 0 (least significant) to 14 go, in both copies."""
    near_top_left = ([(i, 8) for i in range(6)] + [(7, 8), (8, 8), (8, 7)]
                     + [(8, 5 - i) for i in range(6)])
    split = [(8, size - 1 - i) for i in range(8)] + [(size - 7 + i, 8) for i in range(7)]
    return near_top_left, split


def _qr_place_codewords(dark, reserved, codewords):
    """§7.7.3: two-module columns, zigzag from the bottom right, skipping column 6."""
    size = len(dark)
    bits = "".join(f"{byte:08b}" for byte in codewords)
    position = 0
    for pair, right in enumerate(c if c > 6 else c - 1 for c in range(size - 1, 0, -2)):
        upward = pair % 2 == 0
        for row in range(size - 1, -1, -1) if upward else range(size):
            for col in (right, right - 1):
                if not reserved[row][col]:
                    # Modules past the last codeword are the zero remainder bits.
                    dark[row][col] = position < len(bits) and bits[position] == "1"
                    position += 1


def _qr_masked(dark, reserved, mask, level):
    """§7.8.2 and §7.9: a copy of the symbol with a data mask and its format bits."""
    condition = _QR_MASKS[mask]
    masked = [row[:] for row in dark]
    for i, j in itertools.product(range(len(dark)), repeat=2):
        if not reserved[i][j] and condition(i, j):
            masked[i][j] = not masked[i][j]
    bits = _qr_format_bits(level, mask)
    for copy in _qr_format_positions(len(dark)):
        for i, (row, col) in enumerate(copy):
            masked[row][col] = bits >> i & 1 == 1
    return masked


def _qr_penalty(dark):
    """§7.8.3 Table 11: lower is better; the quiet zone counts as light for pattern 3."""
    rows = ["".join("1" if module else "0" for module in row) for row in dark]
    lines = rows + ["".join(column) for column in zip(*rows)]
    score = 0
    for line in lines:
        score += sum(len(run) - 5 + _QR_PENALTY_RUN for run in re.findall(r"0{5,}|1{5,}", line))
        padded = "0000" + line + "0000"
        score += _QR_PENALTY_FINDER * sum(padded.count(pattern) for pattern in _QR_FINDER_LIKE)
    size = len(dark)
    all_ones = (1 << size) - 1
    as_ints = [int(row, 2) for row in rows]
    for upper, lower in zip(as_ints, as_ints[1:]):
        for a, b in ((upper, lower), (all_ones ^ upper, all_ones ^ lower)):
            score += _QR_PENALTY_BLOCK * (a & b & a >> 1 & b >> 1).bit_count()
    dark_count, total = sum(row.count("1") for row in rows), size * size
    return score + _QR_PENALTY_BALANCE * (abs(dark_count * 20 - total * 10) // total)


def qr_matrix(data: bytes, *, level: str = "M") -> list[list[bool]]:
    """The modules (True = dark) of the smallest byte-mode QR code holding data."""
    if level not in _QR_LEVEL_BITS:
        raise ValueError(f"unknown QR error correction level {level!r}")
    version = _qr_choose_version(len(data), level)
    dark, reserved = _qr_function_patterns(version)
    _qr_place_codewords(dark, reserved, _qr_final_codewords(bytes(data), version, level))
    candidates = [_qr_masked(dark, reserved, mask, level) for mask in range(len(_QR_MASKS))]
    return min(candidates, key=_qr_penalty)  # the first mask wins a tie


def qr_svg(text: str, *, level: str = "M", module_px: int = 8, border: int = 4) -> str:
    """An SVG of text's UTF-8 bytes: one path of horizontal dark runs on a white square."""
    if module_px < 1 or border < 0:
        raise ValueError("module_px must be positive and border not negative")
    matrix = qr_matrix(text.encode("utf-8"), level=level)
    side = len(matrix) + 2 * border
    runs = []
    for row_index, row in enumerate(matrix):
        col = 0
        for is_dark, group in itertools.groupby(row):
            length = len(list(group))
            if is_dark:
                runs.append(f"M{col + border} {row_index + border}h{length}v1h-{length}z")
            col += length
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {side} {side}"'
        f' width="{side * module_px}" height="{side * module_px}" shape-rendering="crispEdges">'
        f'<rect width="{side}" height="{side}" fill="#fff"/>'
        f'<path fill="#000" d="{"".join(runs)}"/></svg>'
    )


####
#### 9. Web Push (RFC 8291, RFC 8292)
####
# P-256, ECDSA (RFC 6979), AES-128-GCM, HKDF, the aes128gcm coding and VAPID, pure:
# bytes and ints in, bytes out. Pushes are encrypted in a worker process (section 17).

# P-256, also secp256r1 (FIPS 186-4 §D.1.2.3, SEC 2 §2.4.2): y² = x³ - 3x + b over
# GF(p), a group of prime order n generated by G.
P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
P256_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
P256_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
P256_UNCOMPRESSED = 0x04

# Scalar multiplication works on signed odd digits, one per 4 bits: 65 digits
# cover any scalar below 2^257 (a scalar, or a scalar plus n; see _recode).
_WINDOW_BITS = 4
_WINDOWS = 65
_ODD_MULTIPLES = 8  # 1P, 3P, ..., 15P: the digits' magnitudes
_GUARD_BIT = 264    # above every bit the digits read (at most 260)



class WebPushError(CampfireError, ValueError):
    """A key, subscription, token or message that Web Push cannot use.

    Raised for bad input only (a subscription's keys, a configured key pair, a
    ciphertext that fails its tag); the message says which, never the secret.
    """


# -- Constant time -----------------------------------------------------------
#
# What an observer of our timing must not learn is a private scalar: the VAPID
# key, each message's ephemeral key, and each signature's nonce. So the scalar
# multiplications below have no branch and no table index that depends on the
# scalar: the scalar is recoded arithmetically into signed digits (_recode,
# _make_odd), every digit's point is read by scanning the whole table with masks
# (_select), and the additions are arranged so that the formulas' exceptional
# cases cannot occur (proofs at _scalar_mult and _base_mult) except at the last
# one or two additions, which use complete formulas (_complete_add) instead. A
# secret value is inverted blinded (_inverse_blinded): pow(x, -1, m) runs an
# extended Euclid whose time depends on x, so it is given x·r for a fresh random r.
#
# Python cannot promise more: its integers take time that varies a little with
# their size, and the interpreter's own memory traffic is not ours to control.
# The GCM tag is compared with hmac.compare_digest. AES's S-box is a 256-byte
# table indexed by key and data (see the AES section for why that is accepted);
# GHASH uses no tables at all.


# -- Encoding helpers ----------------------------------------------------------

def _b64url_padded(data):
    """The web-push gem's form (Ruby's urlsafe_encode64): URL-safe with padding."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def _unb64url(text, what):
    """Bytes of base64url text, padded or not. As the web-push gem (Ruby's
    urlsafe_decode64) does, '+' and '/' are accepted too; anything else is refused."""
    if isinstance(text, str):
        try:
            text = text.strip().encode("ascii")
        except UnicodeEncodeError:
            raise WebPushError("%s is not base64url" % what) from None
    elif not isinstance(text, (bytes, bytearray)):
        raise WebPushError("%s is missing" % what)
    text = bytes(text).rstrip(b"=")
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except ValueError:  # binascii.Error
        raise WebPushError("%s is not base64url" % what) from None


def _bytes_to_int(data):
    return int.from_bytes(data, "big")


# -- P-256: points -------------------------------------------------------------
#
# Three coordinate systems, each where it is cheapest:
#   affine (x, y)                   keys on the wire, and the precomputed tables;
#   Jacobian (X, Y, Z)              x = X/Z², y = Y/Z³: doubling and adding a table
#                                   point in the main loops (8 and 11 multiplications);
#   homogeneous (X, Y, Z)           x = X/Z, y = Y/Z: the complete formula for the
#                                   last additions, with the infinity (0, 1, 0).
# Field elements are Python ints. Sums and differences are left unreduced (Python
# has no overflow), and each product is reduced once, with %.

def p256_is_on_curve(x, y):
    """SEC 1 §3.2.2.1: both coordinates in [0, p) and y² = x³ - 3x + b."""
    p = P256_P
    return 0 <= x < p and 0 <= y < p and (y * y - (x * x * x - 3 * x + P256_B)) % p == 0


def p256_decode_point(data):
    """(x, y) of an uncompressed point (SEC 1 §2.3.4), fully validated (SEC 1 §3.2.2.1):
    65 bytes, the 0x04 prefix, coordinates below p, on the curve. The infinity has
    no uncompressed form, so it is refused with the rest; and as P-256's order is
    prime, a point on the curve that isn't the infinity needs no subgroup check."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != P256_POINT_BYTES:
        raise WebPushError("a P-256 public key is 65 bytes")
    if data[0] != P256_UNCOMPRESSED:
        raise WebPushError("a P-256 public key must be uncompressed (0x04)")
    x, y = _bytes_to_int(data[1:33]), _bytes_to_int(data[33:])
    if not p256_is_on_curve(x, y):
        raise WebPushError("the P-256 public key is not a point on the curve")
    return x, y


def p256_encode_point(x, y):
    return bytes((P256_UNCOMPRESSED,)) + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def _jacobian_double(X1, Y1, Z1):
    """2P in Jacobian coordinates for a = -3 (Bernstein-Lange, dbl-2001-b). With no
    point of order 2 on P-256, this never meets an exceptional case."""
    p = P256_P
    delta = Z1 * Z1 % p
    gamma = Y1 * Y1 % p
    beta = X1 * gamma % p
    alpha = 3 * (X1 - delta) * (X1 + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Z3 = 2 * Y1 * Z1 % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    return X3, Y3, Z3


def _jacobian_add_affine(X1, Y1, Z1, x2, y2):
    """P1 + P2 for a Jacobian P1 and an affine P2 (add-1998-cmo-2 with Z2 = 1).
    Wrong when P1 is the infinity or P1 = ±P2: callers rule both out."""
    p = P256_P
    z1z1 = Z1 * Z1 % p
    h = x2 * z1z1 % p - X1
    r = y2 * Z1 * z1z1 % p - Y1
    hh = h * h % p
    hhh = h * hh % p
    v = X1 * hh % p
    X3 = (r * r - hhh - 2 * v) % p
    Y3 = (r * (v - X3) - Y1 * hhh) % p
    Z3 = Z1 * h % p
    return X3, Y3, Z3


def _complete_add(X1, Y1, Z1, X2, Y2, Z2):
    """P1 + P2 in homogeneous coordinates, right for every pair of points, the
    infinity (0, 1, 0) included: Renes, Costello and Batina, "Complete addition
    formulas for prime order elliptic curves" (2016), algorithm 4 (a = -3)."""
    p, b = P256_P, P256_B
    t0 = X1 * X2 % p
    t1 = Y1 * Y2 % p
    t2 = Z1 * Z2 % p
    t3 = ((X1 + Y1) * (X2 + Y2) - t0 - t1) % p
    t4 = ((Y1 + Z1) * (Y2 + Z2) - t1 - t2) % p
    y3 = ((X1 + Z1) * (X2 + Z2) - t0 - t2) % p
    z3 = b * t2 % p
    x3 = y3 - z3
    x3 = 3 * x3
    z3 = t1 - x3
    x3 = t1 + x3
    y3 = b * y3 % p
    t2 = 3 * t2
    y3 = 3 * (y3 - t2 - t0)
    t0 = 3 * t0 - t2
    t1 = t4 * y3 % p
    t2 = t0 * y3 % p
    Y3 = (x3 * z3 + t2) % p
    X3 = (x3 * t3 - t1) % p
    Z3 = (z3 * t4 + t3 * t0) % p
    return X3, Y3, Z3


def _jacobian_to_homogeneous(X, Y, Z):
    """(X/Z², Y/Z³) = (XZ/Z³, Y/Z³)."""
    p = P256_P
    return X * Z % p, Y, Z * Z % p * Z % p


def _inverse_blinded(value, modulus):
    """value⁻¹ modulo a prime, for a secret value (nonzero). The extended Euclid behind
    pow(x, -1, m) takes a time that depends on x, so it runs on value·r for a fresh
    random r in [1, m-1]: value·r is uniform whatever value is, and tells nothing of
    it. Five times faster than Fermat's pow(value, m - 2, m), itself constant-time."""
    while True:
        r = _bytes_to_int(os.urandom(32)) % modulus
        if r:
            return pow(value * r % modulus, -1, modulus) * r % modulus


def _homogeneous_to_affine(X, Y, Z):
    """(x, y), or None for the infinity. Z may depend on a secret: blinded inverse."""
    if Z == 0:
        return None
    p = P256_P
    z_inverse = _inverse_blinded(Z, p)
    return X * z_inverse % p, Y * z_inverse % p


def _invert_all(values, modulus):
    """Inverses of many nonzero public values (points of the tables, multiples of a
    public point) for the price of one (Montgomery's trick)."""
    prefix, product = [], 1
    for value in values:
        prefix.append(product)
        product = product * value % modulus
    inverse = pow(product, -1, modulus)
    inverses = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        inverses[i] = prefix[i] * inverse % modulus
        inverse = inverse * values[i] % modulus
    return inverses


def _jacobians_to_affine(points):
    """Affine forms of Jacobian points, none the infinity, with one inversion."""
    p = P256_P
    inverses = _invert_all([Z for _, _, Z in points], p)
    affine = []
    for (X, Y, _), z_inverse in zip(points, inverses):
        zz = z_inverse * z_inverse % p
        affine.append((X * zz % p, Y * zz % p * z_inverse % p))
    return affine


def _odd_multiples(x, y):
    """Jacobian 1P, 3P, ..., 15P of an affine point P. kP = (k-1)P + P never meets
    an exceptional case for 3 <= k <= 15, as P's order (n) is far larger."""
    point = _jacobian_double(x, y, 1)
    multiples = [(x, y, 1)]
    for k in range(3, 2 * _ODD_MULTIPLES):
        point = _jacobian_add_affine(*point, x, y)
        if k % 2:
            multiples.append(point)
    return multiples


# -- P-256: constant-time scalar multiplication -------------------------------

def _make_odd(k):
    """k, or k + n when k is even: the same point, and an odd number (n is odd), as
    _recode needs. Arithmetic only: ((k & 1) - 1) is 0 for odd k, -1 (all ones) for even."""
    return k + (P256_N & ((k & 1) - 1))


def _recode(k):
    """Signed odd digits d0..d64 with k = Σ di·16^i, for odd k < 2^257 (Joye and
    Tunstall's regular recoding): each di odd and in [-15, 15], d64 1 or 3. Done step
    by step, d = (k mod 32) - 16 and k becomes (k - d)/16, odd again; the k of step i
    is then k >> 4i with its low bit set, so di comes straight from bits 4i..4i+4.
    No digit is zero (no table needs the infinity), and every k runs the same
    operations on integers of the same length: a guard bit above the bits read
    keeps a small k from being a short integer."""
    k |= 1 << _GUARD_BIT
    digits = [((k >> _WINDOW_BITS * i & 31) | 1) - 16 for i in range(_WINDOWS - 1)]
    digits.append((k >> _WINDOW_BITS * (_WINDOWS - 1) & 31) | 1)
    return digits


def _select(table, digit):
    """The affine point digit·P from table = (1P, 3P, ..., 15P), reading every entry:
    the index and the sign become masks, so no branch and no memory address depends
    on the digit."""
    sign = digit >> 8                      # -1 for a negative digit, else 0 (|digit| < 16)
    index = ((digit ^ sign) - sign) >> 1   # |digit| = 2·index + 1
    x = y = 0
    for j, (table_x, table_y) in enumerate(table):
        mask = ((index ^ j) - 1) >> 8      # -1 (all ones) when j == index, else 0
        x |= table_x & mask
        y |= table_y & mask
    return x, (P256_P - y) & sign | y & ~sign  # -P = (x, p - y)


def _scalar_mult(k, x, y):
    """k·P in homogeneous coordinates, for 0 <= k < n and P a validated affine point.

    Fixed windows of 4 bits, from the top digit down: four doublings, then one
    addition of the digit's multiple of P. The top digit is positive, so the
    accumulator is m·P with 1 <= m; before the addition at window j >= 1 it is
    16m·P with 16m < 2^257 / 16^j + 16 < n/4, while the digit's multiple is d·P with
    |d| <= 15 < 16m, so 16m ± d is never 0 mod n: the accumulator is never the
    infinity nor ±dP, and the short formulas are right. Only the last addition
    (window 0) can meet those cases (k = 0, or k ≡ ±2d), so it uses the complete
    formula."""
    table = _jacobians_to_affine(_odd_multiples(x, y))
    digits = _recode(_make_odd(k))
    X, Y = _select(table, digits[-1])
    Z = 1
    for digit in reversed(digits[1:-1]):
        for _ in range(_WINDOW_BITS):
            X, Y, Z = _jacobian_double(X, Y, Z)
        X, Y, Z = _jacobian_add_affine(X, Y, Z, *_select(table, digit))
    for _ in range(_WINDOW_BITS):
        X, Y, Z = _jacobian_double(X, Y, Z)
    return _complete_add(*_jacobian_to_homogeneous(X, Y, Z), *_select(table, digits[0]), 1)


@functools.lru_cache(maxsize=1)
def _base_table():
    """For each window i, the affine (2j+1)·16^i·G for j = 0..7: 520 points, built
    once on first use (about 6 ms, 100 KB) and kept: a constant, like G itself."""
    window_bases = [(P256_GX, P256_GY, 1)]
    for _ in range(_WINDOWS - 1):
        X, Y, Z = window_bases[-1]
        for _ in range(_WINDOW_BITS):
            X, Y, Z = _jacobian_double(X, Y, Z)
        window_bases.append((X, Y, Z))
    multiples = []
    for x, y in _jacobians_to_affine(window_bases):
        multiples.extend(_odd_multiples(x, y))
    affine = _jacobians_to_affine(multiples)
    return tuple(tuple(affine[i:i + _ODD_MULTIPLES]) for i in range(0, len(affine), _ODD_MULTIPLES))


def _base_mult(k):
    """k·G in homogeneous coordinates, for 0 <= k < n: one table addition per digit and
    no doublings (a comb over the precomputed windows).

    Before window i the accumulator is A·G with A = Σ_{j<i} dj·16^j, odd (d0 is), so
    0 < |A| < 16^i, while the addition brings D·G with 16^i <= |D| <= 15·16^i. For
    i <= 62, |A| + |D| < 16^63 < n, so A ± D is never 0 mod n and the short formula
    is right. Windows 63 and 64 can wrap around n and use the complete formula."""
    table = _base_table()
    digits = _recode(_make_odd(k))
    X, Y = _select(table[0], digits[0])
    Z = 1
    for i in range(1, _WINDOWS - 2):
        X, Y, Z = _jacobian_add_affine(X, Y, Z, *_select(table[i], digits[i]))
    point = _jacobian_to_homogeneous(X, Y, Z)
    for i in (_WINDOWS - 2, _WINDOWS - 1):
        point = _complete_add(*point, *_select(table[i], digits[i]), 1)
    return point


# -- P-256: keys and ECDH --------------------------------------------------------

def p256_generate_private_key():
    """A uniformly random scalar in [1, n-1] (rejection sampling, FIPS 186-4 §B.4.2)."""
    while True:
        k = _bytes_to_int(os.urandom(P256_SCALAR_BYTES))
        if 1 <= k < P256_N:
            return k


def p256_check_private_key(k):
    if not isinstance(k, int) or not 1 <= k < P256_N:
        raise WebPushError("a P-256 private key is a number from 1 to n-1")
    return k


def p256_public_key(private_key):
    """The 65-byte uncompressed public point d·G."""
    x, y = _homogeneous_to_affine(*_base_mult(p256_check_private_key(private_key)))
    return p256_encode_point(x, y)


def p256_ecdh(private_key, peer_public_key):
    """The shared secret of ECDH (SEC 1 §3.3.1): the x coordinate of d·Q, 32 bytes, as
    RFC 8291 §3.1 uses it. The peer's point is validated before any arithmetic."""
    x, y = p256_decode_point(peer_public_key)
    shared = _homogeneous_to_affine(*_scalar_mult(p256_check_private_key(private_key), x, y))
    if shared is None:  # impossible for a valid point and 1 <= d < n; never output it
        raise WebPushError("ECDH produced the point at infinity")
    return shared[0].to_bytes(32, "big")


# -- ECDSA with SHA-256 and deterministic nonces (RFC 6979) ---------------------

def _rfc6979_nonces(private_key, digest):
    """Candidate nonces k of RFC 6979 §3.2 for P-256 and SHA-256 (qlen = hlen = 256,
    so bits2int is a plain conversion and bits2octets one reduction mod q)."""
    q = P256_N
    mac = lambda key, data: hmac.new(key, data, hashlib.sha256).digest()
    x_octets = private_key.to_bytes(32, "big")  # int2octets(x)
    h_octets = (_bytes_to_int(digest) % q).to_bytes(32, "big")  # bits2octets(h1)
    V, K = b"\x01" * 32, b"\x00" * 32  # steps b, c
    K = mac(K, V + b"\x00" + x_octets + h_octets)  # step d
    V = mac(K, V)  # step e
    K = mac(K, V + b"\x01" + x_octets + h_octets)  # step f
    V = mac(K, V)  # step g
    while True:  # step h
        V = mac(K, V)
        k = _bytes_to_int(V)
        if 1 <= k < q:
            yield k
        K = mac(K, V + b"\x00")
        V = mac(K, V)


def ecdsa_sign(private_key, message):
    """ECDSA P-256 SHA-256 signature (SEC 1 §4.1.3) as r || s, 32 bytes each: the
    form JWS uses for ES256 (RFC 7518 §3.4). Deterministic, so the same key and
    message always give the same signature (RFC 6979)."""
    return _ecdsa_sign_digest(p256_check_private_key(private_key), hashlib.sha256(message).digest())


def _ecdsa_sign_digest(d, digest):
    n = P256_N
    z = _bytes_to_int(digest)
    for k in _rfc6979_nonces(d, digest):
        x, _ = _homogeneous_to_affine(*_base_mult(k))  # never the infinity: 1 <= k < n
        r = x % n
        s = _inverse_blinded(k, n) * (z + r * d) % n
        if r and s:  # else RFC 6979 §3.4: the next candidate
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def ecdsa_verify(public_key, message, signature):
    """True when signature (r || s, 64 bytes) is public_key's over message (SEC 1 §4.1.4)."""
    if len(signature) != 2 * P256_SCALAR_BYTES:
        return False
    try:
        x, y = p256_decode_point(public_key)
    except WebPushError:
        return False
    n = P256_N
    r, s = _bytes_to_int(signature[:32]), _bytes_to_int(signature[32:])
    if not (1 <= r < n and 1 <= s < n):
        return False
    w = pow(s, -1, n)  # public values: no blinding needed
    z = _bytes_to_int(hashlib.sha256(message).digest())
    point = _complete_add(*_base_mult(z * w % n), *_scalar_mult(r * w % n, x, y))
    affine = _homogeneous_to_affine(*point)
    return affine is not None and affine[0] % n == r


# -- AES-128 (FIPS 197), encryption only -----------------------------------------
#
# Every block of a message is encrypted at once, as one integer: the blocks side by
# side, big-endian, so a block's column c (FIPS 197 §3.4: bytes 4c..4c+3) is a 32-bit
# word and row r the r-th byte of each word. SubBytes is bytes.translate through the
# S-box; ShiftRows and MixColumns are shifts and masks that move every block's bytes
# at once; AddRoundKey is one XOR with the round key repeated. A few dozen integer
# operations per round, whatever the number of blocks: four (200 bytes) to seven
# (4 KB) times faster than the usual 4 KB of "T-tables", one block at a time.
#
# SubBytes and xtime still read a 256-byte table at indexes that depend on the key
# and the data, which a program sharing the CPU's cache could in principle observe.
# Accepted here: each key encrypts one message of at most 4 KB (RFC 8291 derives a
# fresh key per message from a fresh ephemeral ECDH), so such an observer gets one
# short trace per key, and the table is four cache lines rather than sixty-four.

def _aes_sbox():
    """The S-box, derived rather than typed in (FIPS 197 §5.1.1): the inverse in
    GF(2^8) modulo x^8 + x^4 + x^3 + x + 1, then the affine map with 0x63."""
    exp, log = [0] * 255, [0] * 256
    value = 1
    for i in range(255):  # 3 generates GF(2^8)*: value·3 = value ^ xtime(value)
        exp[i], log[value] = value, i
        value ^= _xtime(value)
    sbox = bytearray(256)
    for a in range(256):
        b = exp[-log[a] % 255] if a else 0
        rotations = b ^ (b << 1) ^ (b << 2) ^ (b << 3) ^ (b << 4)
        sbox[a] = (rotations ^ (rotations >> 8) ^ 0x63) & 0xFF
    return bytes(sbox)


def _xtime(b):
    """b·x in GF(2^8) (FIPS 197 §4.2.1)."""
    return ((b << 1) ^ (0x11B if b & 0x80 else 0)) & 0xFF


def _byte_pattern(positions):
    """16 bytes, 0xFF at the given positions: a mask for one block."""
    return bytes(0xFF if i in positions else 0 for i in range(16))


_AES_SBOX = _aes_sbox()
_AES_XTIME = bytes(_xtime(b) for b in range(256))
_AES_ROUNDS = 10  # Nr for a 128-bit key (FIPS 197 §5)
_AES_RCON = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1B, 0x36)  # FIPS 197 §5.2
_AES_ROW_0 = _byte_pattern({0, 4, 8, 12})
# ShiftRows (FIPS 197 §5.1.2) gives column c the row-r byte of column c + r: row r
# moves up 32·r bits within its block, the columns that wrap around down 128 - 32·r.
_AES_SHIFTED_ROWS = tuple((32 * r, _byte_pattern({4 * c + r for c in range(4 - r)}),
                           _byte_pattern({4 * c + r for c in range(4 - r, 4)})) for r in (1, 2, 3))
# A word rotated left by 8 or 16 bits, for MixColumns: the bytes that stay, the ones that wrap.
_AES_ROTATE_8 = (bytes.fromhex("ffffff00") * 4, bytes.fromhex("000000ff") * 4)
_AES_ROTATE_16 = (bytes.fromhex("ffff0000") * 4, bytes.fromhex("0000ffff") * 4)


def aes128_expand_key(key):
    """The 11 round keys of FIPS 197 §5.2 (Nk = 4, Nr = 10), 16 bytes each."""
    if len(key) != 16:
        raise WebPushError("an AES-128 key is 16 bytes")
    words = list(struct.unpack(">4I", key))
    for i in range(4, 44):
        temp = words[i - 1]
        if i % 4 == 0:  # SubWord(RotWord(temp)) xor Rcon
            rotated = ((temp << 8 | temp >> 24) & 0xFFFFFFFF).to_bytes(4, "big")
            temp = _bytes_to_int(rotated.translate(_AES_SBOX)) ^ _AES_RCON[i // 4 - 1] << 24
        words.append(words[i - 4] ^ temp)
    return tuple(struct.pack(">4I", *words[i:i + 4]) for i in range(0, 44, 4))


def _rotate_words(state, bits, masks):
    """Every 32-bit word of state rotated left by bits."""
    stay, wrap = masks
    return (state << bits) & stay | (state >> (32 - bits)) & wrap


def _aes128_encrypt_blocks(round_keys, blocks):
    """FIPS 197 Cipher() of each 16-byte block of blocks, all at once."""
    size = len(blocks)
    repeat = lambda pattern: _bytes_to_int(pattern * (size // 16))
    row_0 = repeat(_AES_ROW_0)
    rows = [(bits, 128 - bits, repeat(stay), repeat(wrap)) for bits, stay, wrap in _AES_SHIFTED_ROWS]
    rotate_8 = tuple(map(repeat, _AES_ROTATE_8))
    rotate_16 = tuple(map(repeat, _AES_ROTATE_16))
    state = _bytes_to_int(blocks) ^ repeat(round_keys[0])
    for round_number in range(1, _AES_ROUNDS + 1):
        state = _bytes_to_int(state.to_bytes(size, "big").translate(_AES_SBOX))  # SubBytes
        shifted = state & row_0                                                  # ShiftRows
        for up, down, stay, wrap in rows:
            shifted |= (state << up) & stay | (state >> down) & wrap
        state = shifted
        if round_number < _AES_ROUNDS:  # MixColumns: b_r = 2a_r ^ 3a_r+1 ^ a_r+2 ^ a_r+3
            doubled = _bytes_to_int(state.to_bytes(size, "big").translate(_AES_XTIME))
            pairs = state ^ _rotate_words(state, 8, rotate_8)                    # a_r ^ a_r+1
            state = (doubled ^ _rotate_words(doubled ^ state, 8, rotate_8)
                     ^ _rotate_words(pairs, 16, rotate_16))
        state ^= repeat(round_keys[round_number])                                # AddRoundKey
    return state.to_bytes(size, "big")


def aes128_encrypt_block(round_keys, block):
    """FIPS 197 Cipher() of one 16-byte block with aes128_expand_key's round keys."""
    if len(block) != 16:
        raise WebPushError("an AES block is 16 bytes")
    return _aes128_encrypt_blocks(round_keys, block)


# -- GCM (NIST SP 800-38D) ---------------------------------------------------------
#
# GHASH multiplies in GF(2^128) without tables: each operand's 128 bits are spread
# one per byte (the bits' text '0'/'1' is exactly that), one integer product then
# adds up every pair of bits in its byte (at most 128, so no byte overflows into
# the next), and the low bit of each byte is the carry-less product. All of it runs
# inside int and bytes built-ins: about 4 µs a block, four times faster than a
# 4-bit-table GHASH in Python, and with no key-dependent memory access at all.

_GHASH_ZEROS_128 = int.from_bytes(b"0" * 128, "big")   # '0' per bit of a 128-bit block
_GHASH_ZEROS_255 = int.from_bytes(b"0" * 255, "big")   # '0' per bit of a 255-bit product
_GHASH_LOW_BITS = int.from_bytes(b"\x01" * 255, "big")
_GHASH_LOW_127 = (1 << 127) - 1


def _ghash_spread(x):
    """The 128 bits of x, most significant first, one per byte (0 or 1)."""
    return int.from_bytes(format(x, "0128b").encode("ascii"), "big") - _GHASH_ZEROS_128


def _gf128_multiply(x, h_spread):
    """x·H in GCM's GF(2^128) (SP 800-38D §6.3), blocks read as big-endian integers,
    so that bit 127 is the coefficient of x^0 ("reflected"). h_spread = _ghash_spread(H)."""
    product = (_ghash_spread(x) * h_spread) & _GHASH_LOW_BITS | _GHASH_ZEROS_255
    c = int(product.to_bytes(255, "big"), 2)  # bit 254 - k: the coefficient of x^k
    # Reduce by x^128 = x^7 + x^2 + x + 1. The low 127 bits hold x^128..x^254 as
    # x^128·q with q = low << 1 (reflected); q·(1 + x + x^2 + x^7) is computed 7 bits
    # wider so nothing falls off, then the 7 bits past x^127 are folded once more.
    low = c & _GHASH_LOW_127
    t = (low << 8) ^ (low << 7) ^ (low << 6) ^ (low << 1)
    fold = (t & 0x7F) << 121
    return (c >> 127) ^ (t >> 7) ^ fold ^ (fold >> 1) ^ (fold >> 2) ^ (fold >> 7)


def _ghash(h_spread, y, data):
    """GHASH (SP 800-38D §6.4) continued from y over data, zero-padded to whole blocks."""
    data = bytes(data) + bytes(-len(data) % 16)
    for i in range(0, len(data), 16):
        y = _gf128_multiply(y ^ _bytes_to_int(data[i:i + 16]), h_spread)
    return y


def _counter_blocks(j0, count):
    """J0, inc32(J0), ..., count blocks: the low 32 bits count, modulo 2^32 (§6.2)."""
    prefix, low = j0 >> 32, j0 & 0xFFFFFFFF
    counters = struct.pack(">" + "12xI" * count, *((low + i) & 0xFFFFFFFF for i in range(count)))
    prefixes = (prefix << 32).to_bytes(16, "big") * count
    return (_bytes_to_int(counters) | _bytes_to_int(prefixes)).to_bytes(16 * count, "big")


def _gcm_setup(key, nonce, length):
    """The spread hash key H = E(K, 0^128), E(K, J0) and the keystream for length bytes
    from inc32(J0) (SP 800-38D §7.1 steps 1-3). A 96-bit nonce, the usual one, needs
    a single call to the cipher; any other length first needs H for its GHASH."""
    round_keys = aes128_expand_key(key)
    blocks = (length + 15) // 16 + 1  # J0, then one per block of data
    if len(nonce) == 12:
        j0 = _bytes_to_int(nonce) << 32 | 1
        out = _aes128_encrypt_blocks(round_keys, bytes(16) + _counter_blocks(j0, blocks))
        h, out = out[:16], out[16:]
    elif nonce:
        h = _aes128_encrypt_blocks(round_keys, bytes(16))
        h_spread = _ghash_spread(_bytes_to_int(h))
        j0 = _ghash(h_spread, 0, nonce + bytes(-len(nonce) % 16 + 8) + struct.pack(">Q", 8 * len(nonce)))
        out = _aes128_encrypt_blocks(round_keys, _counter_blocks(j0, blocks))
    else:
        raise WebPushError("a GCM nonce is not empty")
    return _ghash_spread(_bytes_to_int(h)), out[:16], out[16:16 + length]


def _gcm_tag(h_spread, tag_mask, aad, ciphertext):
    """SP 800-38D §7.1 steps 5-6: GHASH over A, C and their bit lengths, xor E(K, J0)."""
    y = _ghash(h_spread, 0, aad)
    y = _ghash(h_spread, y, ciphertext)
    y = _ghash(h_spread, y, struct.pack(">QQ", 8 * len(aad), 8 * len(ciphertext)))
    return (y ^ _bytes_to_int(tag_mask)).to_bytes(16, "big")


def _xor(data, keystream):
    return (_bytes_to_int(data) ^ _bytes_to_int(keystream)).to_bytes(len(data), "big")


def aes128gcm_seal(key, nonce, plaintext, aad=b""):
    """AES-128-GCM authenticated encryption (SP 800-38D §7.1): ciphertext || 16-byte tag."""
    h_spread, tag_mask, keystream = _gcm_setup(key, nonce, len(plaintext))
    ciphertext = _xor(plaintext, keystream)
    return ciphertext + _gcm_tag(h_spread, tag_mask, aad, ciphertext)


def aes128gcm_open(key, nonce, sealed, aad=b""):
    """The plaintext of aes128gcm_seal's output (SP 800-38D §7.2), or WebPushError when
    the tag doesn't match; the tags are compared in constant time."""
    if len(sealed) < GCM_TAG_BYTES:
        raise WebPushError("an AES-GCM ciphertext is at least 16 bytes")
    ciphertext, tag = sealed[:-GCM_TAG_BYTES], sealed[-GCM_TAG_BYTES:]
    h_spread, tag_mask, keystream = _gcm_setup(key, nonce, len(ciphertext))
    if not hmac.compare_digest(_gcm_tag(h_spread, tag_mask, aad, ciphertext), tag):
        raise WebPushError("the AES-GCM tag does not match")
    return _xor(ciphertext, keystream)


# -- HKDF-SHA-256 (RFC 5869) ----------------------------------------------------------

def hkdf_extract(salt, ikm):
    """RFC 5869 §2.2: PRK = HMAC-Hash(salt, IKM); no salt means HashLen zeros."""
    return hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()


def hkdf_expand(prk, info, length):
    """RFC 5869 §2.3: T(1) || T(2) || ... cut to length (at most 255 blocks)."""
    if not 0 <= length <= 255 * 32:
        raise WebPushError("HKDF-SHA-256 gives at most 8160 bytes")
    blocks, block = [], b""
    for counter in range(1, (length + 31) // 32 + 1):
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha256).digest()
        blocks.append(block)
    return b"".join(blocks)[:length]


def hkdf_sha256(salt, ikm, info, length):
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


# -- Web Push message encryption (RFC 8291) in one aes128gcm record (RFC 8188) -------

def push_subscription_keys(p256dh, auth):
    """The subscription's public key (65 bytes, a valid P-256 point) and auth secret
    (16 bytes) from their base64url text (PushSubscription.toJSON()'s keys), or
    WebPushError saying which one is wrong."""
    public_key = _unb64url(p256dh, "p256dh")
    try:
        p256_decode_point(public_key)
    except WebPushError as error:
        raise WebPushError("p256dh: %s" % error) from None
    auth_secret = _unb64url(auth, "auth")
    if len(auth_secret) != PUSH_AUTH_SECRET_BYTES:
        raise WebPushError("auth is 16 bytes")
    return public_key, auth_secret


def _push_keys(ecdh_secret, auth_secret, ua_public, as_public, salt):
    """The content-encryption key and nonce of RFC 8291 §3.3-3.4 and RFC 8188 §2.2-2.3."""
    key_info = b"WebPush: info\x00" + ua_public + as_public
    ikm = hkdf_sha256(auth_secret, ecdh_secret, key_info, 32)
    prk = hkdf_extract(salt, ikm)
    cek = hkdf_expand(prk, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = hkdf_expand(prk, b"Content-Encoding: nonce\x00", 12)
    return cek, nonce


def encrypt_push_message(plaintext, p256dh, auth, *, ephemeral_key=None, salt=None):
    """The body of a Web Push request (Content-Encoding: aes128gcm): the RFC 8188
    header (salt, rs = 4096, keyid = our ephemeral public key) and one record, the
    plaintext (bytes) followed by the 0x02 delimiter, sealed (RFC 8291 §4).

    p256dh and auth are the subscription's base64url keys. ephemeral_key (a private
    scalar) and salt (16 bytes) are fresh random values unless a test gives them."""
    if len(plaintext) > PUSH_MAX_PLAINTEXT_BYTES:
        raise WebPushError("a push message holds at most %d bytes of plaintext" % PUSH_MAX_PLAINTEXT_BYTES)
    ua_public, auth_secret = push_subscription_keys(p256dh, auth)
    as_private = p256_generate_private_key() if ephemeral_key is None else ephemeral_key
    salt = os.urandom(PUSH_SALT_BYTES) if salt is None else salt
    if len(salt) != PUSH_SALT_BYTES:
        raise WebPushError("the salt is 16 bytes")
    as_public = p256_public_key(as_private)
    cek, nonce = _push_keys(p256_ecdh(as_private, ua_public), auth_secret, ua_public, as_public, salt)
    header = salt + struct.pack(">IB", PUSH_RECORD_SIZE, len(as_public)) + as_public
    return header + aes128gcm_seal(cek, nonce, plaintext + PUSH_PADDING_DELIMITER)


# -- VAPID (RFC 8292) ------------------------------------------------------------------

class VapidKey:
    """The application server's P-256 key pair, in the form Campfire configures it
    (VAPID_PUBLIC_KEY and VAPID_PRIVATE_KEY, written by the web-push gem's
    WebPush.generate_key): URL-safe base64, with padding, of the 65-byte public point
    and of the private scalar's big-endian bytes. repr() never shows the private key."""

    __slots__ = ("private_key", "public_key")

    def __init__(self, private_key):
        self.private_key = p256_check_private_key(private_key)
        self.public_key = p256_public_key(private_key)

    @classmethod
    def generate(cls):
        return cls(p256_generate_private_key())

    @classmethod
    def from_base64(cls, public_text, private_text):
        """The pair as the environment gives it. The gem writes the scalar without its
        leading zero bytes (OpenSSL's BN#to_s(2)), so 1 to 32 bytes are read; the pair
        must match, or every push would be refused with a 403 much later."""
        scalar = _unb64url(private_text, "VAPID_PRIVATE_KEY")
        if not 1 <= len(scalar) <= P256_SCALAR_BYTES or not 1 <= _bytes_to_int(scalar) < P256_N:
            raise WebPushError("VAPID_PRIVATE_KEY is not a P-256 private key")
        key = cls(_bytes_to_int(scalar))
        public_key = _unb64url(public_text, "VAPID_PUBLIC_KEY")
        try:
            p256_decode_point(public_key)
        except WebPushError as error:
            raise WebPushError("VAPID_PUBLIC_KEY: %s" % error) from None
        if not hmac.compare_digest(public_key, key.public_key):
            raise WebPushError("VAPID_PUBLIC_KEY does not belong to VAPID_PRIVATE_KEY")
        return key

    @property
    def public_key_base64(self):
        """For VAPID_PUBLIC_KEY and the page's vapid-public-key meta tag."""
        return _b64url_padded(self.public_key)

    @property
    def private_key_base64(self):
        """For VAPID_PRIVATE_KEY: the scalar as 32 bytes, which the gem reads too."""
        return _b64url_padded(self.private_key.to_bytes(P256_SCALAR_BYTES, "big"))

    def __repr__(self):
        return "<VapidKey public=%s>" % self.public_key_base64


def push_origin(endpoint):
    """The origin of a push endpoint (RFC 6454 §6.2), the JWT's "aud" (RFC 8292 §2):
    https://host, with the port only when it is not 443."""
    try:
        url = urllib.parse.urlsplit(endpoint)
        port = url.port
    except ValueError:
        raise WebPushError("the push endpoint is not a URL") from None
    if url.scheme.lower() != "https" or not url.hostname:
        raise WebPushError("a push endpoint is an https URL")
    host = url.hostname
    if ":" in host:
        host = "[%s]" % host
    return "https://" + host + ("" if port in (None, 443) else ":%d" % port)


def _vapid_signing_input(audience, subject, expires_at):
    """The JWS header and claims of RFC 8292 §2, as RFC 7515 §5.1 joins them."""
    header = b64url_encode(json.dumps({"typ": "JWT", "alg": "ES256"}, separators=(",", ":")).encode())
    claims = b64url_encode(json.dumps({"aud": audience, "exp": int(expires_at), "sub": subject},
                                separators=(",", ":")).encode())
    return header + "." + claims


def vapid_token(key, audience, subject, expires_at):
    """The JWT of RFC 8292 §2: ES256 (RFC 7518 §3.4) over {"aud", "exp", "sub"}."""
    signing_input = _vapid_signing_input(audience, subject, expires_at)
    return signing_input + "." + b64url_encode(ecdsa_sign(key.private_key, signing_input.encode("ascii")))


class VapidSigner:
    """Authorization header values (RFC 8292 §3) for one key and contact. A token is
    signed once per push service and reused until VAPID_TOKEN_RENEW_BEFORE of its
    VAPID_TOKEN_LIFETIME is left: signing is the costly part of a push's headers.
    Safe to share between threads."""

    def __init__(self, key, subject, lifetime=VAPID_TOKEN_LIFETIME):
        if not subject.startswith(("mailto:", "https:")):  # RFC 8292 §2.1
            raise WebPushError("the VAPID subject is a mailto: or https: URI")
        if not VAPID_TOKEN_RENEW_BEFORE < lifetime <= 24 * 3600:
            raise WebPushError("a VAPID token lives at most 24 hours")
        self.key, self.subject, self.lifetime = key, subject, lifetime
        self._tokens = {}  # audience -> (token, expires_at), at most VAPID_TOKENS_KEPT
        self._lock = threading.Lock()

    def token(self, audience, now=None):
        now = time.time() if now is None else now
        with self._lock:
            cached = self._tokens.get(audience)
        if cached and cached[1] - now > VAPID_TOKEN_RENEW_BEFORE:
            return cached[0]
        expires_at = int(now) + self.lifetime
        token = vapid_token(self.key, audience, self.subject, expires_at)
        with self._lock:
            self._tokens.pop(audience, None)
            while len(self._tokens) >= VAPID_TOKENS_KEPT:
                del self._tokens[next(iter(self._tokens))]  # the oldest
            self._tokens[audience] = (token, expires_at)
        return token

    def authorization(self, endpoint, now=None):
        """The Authorization header for a push to endpoint: "vapid t=<JWT>, k=<key>"."""
        token = self.token(push_origin(endpoint), now)
        return "vapid t=%s, k=%s" % (token, b64url_encode(self.key.public_key))


# -- Campfire's notification payload ------------------------------------------------
#
# lib/web_push/notification.rb sends {"title", "options": {"body", "icon", "data":
# {"path", "badge"}}} as JSON. Campfire never cuts it, so the push of a long
# message is more than one push message holds and fails. Here the body (then, if
# need be, the title) is cut at a character boundary so the encrypted message fits
# PUSH_MESSAGE_MAX_BYTES, and ends with an ellipsis.

def _continues_character(ch):
    """Code points that belong to the character before them: combining marks, the
    zero-width joiner, variation selectors, emoji modifiers and tags."""
    code = ord(ch)
    return (0x0300 <= code <= 0x036F or 0x1AB0 <= code <= 0x1AFF or 0x1DC0 <= code <= 0x1DFF
            or 0x20D0 <= code <= 0x20FF or 0xFE20 <= code <= 0xFE2F or 0xFE00 <= code <= 0xFE0F
            or code == 0x200D or 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F
            or 0xE0100 <= code <= 0xE01EF)


def _character_boundary(text, cut):
    """The largest cut <= cut that splits no visible character: not before a combining
    code point, not after a joiner, not inside a flag's pair of regional indicators."""
    while 0 < cut < len(text) and (_continues_character(text[cut]) or text[cut - 1] == "\u200d"):
        cut -= 1
    run = 0
    while run < cut and 0x1F1E6 <= ord(text[cut - 1 - run]) <= 0x1F1FF:
        run += 1
    return cut - run % 2


def _payload_json(title, body, path, badge, icon):
    message = {"title": title, "options": {"body": body, "icon": icon, "data": {"path": path, "badge": badge}}}
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _cut_to_fit(text, encode):
    """The longest text[:cut] + ellipsis whose encode() fits, by bisection (the JSON
    size grows with the cut; escapes make it more than one byte per character)."""
    low, high = 0, len(text)  # text[:low] + ellipsis is known to fit, or low = 0
    while low < high:
        middle = (low + high + 1) // 2
        if len(encode(text[:middle] + PUSH_ELLIPSIS)) <= PUSH_MAX_PLAINTEXT_BYTES:
            low = middle
        else:
            high = middle - 1
    return text[:_character_boundary(text, low)] + PUSH_ELLIPSIS


def push_payload(title, body, path, badge, icon=PUSH_ICON_PATH):
    """Campfire's notification JSON as UTF-8 bytes, at most PUSH_MAX_PLAINTEXT_BYTES."""
    title, body = _scrub(title), _scrub(body)
    payload = _payload_json(title, body, path, badge, icon)
    if len(payload) <= PUSH_MAX_PLAINTEXT_BYTES:
        return payload
    body = _cut_to_fit(body, lambda text: _payload_json(title, text, path, badge, icon))
    payload = _payload_json(title, body, path, badge, icon)
    if len(payload) > PUSH_MAX_PLAINTEXT_BYTES:
        body = ""
        title = _cut_to_fit(title, lambda text: _payload_json(text, body, path, badge, icon))
        payload = _payload_json(title, body, path, badge, icon)
    if len(payload) > PUSH_MAX_PLAINTEXT_BYTES:
        raise WebPushError("the notification does not fit a push message")
    return payload


def _scrub(text):
    """Text that encodes as UTF-8: a lone surrogate (from bytes decoded with
    surrogateescape) becomes "?" instead of failing the whole push."""
    return text.encode("utf-8", "replace").decode("utf-8")


#### 9a. Rails' formats
####
# What Once Campfire's Rails app signs and hashes, written and read the same way,
# so a storage, its people's passwords, their mentions and their session cookies
# move between Campfire and this server in both directions. Pure, but for bcrypt
# (the system's crypt(3) through ctypes). Sources: railties
# lib/rails/application.rb (key_generator), activesupport
# lib/active_support/message_verifier.rb and messages/*.rb, actionpack
# lib/action_dispatch/middleware/cookies.rb, globalid lib/global_id/*.rb,
# actiontext lib/action_text/attachable.rb, bcrypt-ruby lib/bcrypt/*.rb.
# Campfire sets config.load_defaults 7.0 and later 8.x (config/application.rb):
# keys are PBKDF2-HMAC-SHA256 of SECRET_KEY_BASE with 1000 iterations, signatures
# HMAC-SHA1.

# railties/lib/rails/application.rb (key_generator): PBKDF2 with 1000 iterations.
RAILS_KEY_ITERATIONS = 1000
# activesupport/lib/active_support/key_generator.rb (rails_key): 64 bytes by default.
RAILS_KEY_BYTES = 64
# load_defaults 7.0 and later: active_support.key_generator_hash_digest_class = SHA256.
RAILS_KEY_DIGEST = "sha256"
# ActiveSupport::MessageVerifier's default digest; neither Rails.application's
# verifiers, GlobalID's verifier nor the signed cookie jar change it.
VERIFIER_DIGEST = "sha1"
VERIFIER_SEPARATOR = "--"

# actionpack/lib/action_dispatch/railtie.rb
SIGNED_COOKIE_SALT = "signed cookie"
# globalid lib/global_id/railtie.rb: app.key_generator.rails_key('signed_global_ids')
SIGNED_GLOBAL_IDS_SALT = "signed_global_ids"

# Campfire's module name, dasherized (GlobalID.app), and Action Text's locator purpose.
GLOBALID_APP = "campfire"
ATTACHABLE_PURPOSE = "attachable"  # actiontext/lib/action_text/attachable.rb LOCATOR_NAME

# app/controllers/concerns/authentication.rb: cookies.signed.permanent[:session_token]
RAILS_SESSION_COOKIE = SESSION_COOKIE
PERMANENT_COOKIE_YEARS = 20  # action_dispatch PermanentCookieJar: 20.years.from_now

# A signed cookie is at most 4096 bytes (ActionDispatch::Cookies::MAX_COOKIE_SIZE) and an
# attachable sgid about 120; anything longer is refused before any HMAC or decoding work.
MAX_SIGNED_MESSAGE_CHARS = 8192

# bcrypt-ruby: BCrypt::Engine::DEFAULT_COST (has_secure_password uses Engine.cost).
BCRYPT_COST = 12
BCRYPT_MIN_COST = 4
BCRYPT_MAX_COST = 31
# BCrypt::Engine.generate_salt writes "$2a$"; crypt_blowfish (in bcrypt-ruby and in
# libxcrypt alike) computes $2a$ the same way, so Rails checks these digests unchanged.
BCRYPT_PREFIX = "$2a$"
BCRYPT_SALT_BYTES = 16                 # BCrypt::Engine::MAX_SALT_LENGTH
BCRYPT_MAX_PASSWORD_BYTES = 72         # BCrypt::Engine::MAX_SECRET_BYTESIZE: the rest is ignored
# bcrypt-ruby's BCrypt::Password.valid_hash?
BCRYPT_DIGEST = re.compile(r"\$[0-9a-z]{2}\$[0-9]{2}\$[A-Za-z0-9./]{53}")
# libxcrypt's <crypt.h>: sizeof(struct crypt_data) and CRYPT_GENSALT_OUTPUT_SIZE.
_CRYPT_DATA_BYTES = 32768
_CRYPT_GENSALT_OUTPUT_BYTES = 192


class InvalidMessage(ValueError):
    """A signed message that is malformed, tampered with, expired or for another purpose."""


# Key derivation ----------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def rails_key(secret_key_base, salt, key_bytes=RAILS_KEY_BYTES, digest=RAILS_KEY_DIGEST,
                 iterations=RAILS_KEY_ITERATIONS):
    """Rails.application.key_generator.rails_key(salt, key_bytes): PBKDF2-HMAC.

    The password is SECRET_KEY_BASE's text as given (Rails uses the string itself,
    not a hex decoding of it). Cached like Rails' CachingKeyGenerator."""
    if not isinstance(secret_key_base, str) or not secret_key_base:
        raise ValueError("secret_key_base must be a non-empty string")
    return hashlib.pbkdf2_hmac(digest, secret_key_base.encode("utf-8"), salt.encode("utf-8"),
                               iterations, key_bytes)


def signed_cookie_key(secret_key_base):
    return rails_key(secret_key_base, SIGNED_COOKIE_SALT)


def signed_global_id_key(secret_key_base):
    return rails_key(secret_key_base, SIGNED_GLOBAL_IDS_SALT)


# Serializers -------------------------------------------------------------------------

_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


def rails_json(value):
    """ActiveSupport::JSON.encode: compact, UTF-8 kept, and <, > and & escaped
    (escape_html_entities_in_json); U+2028/U+2029 stay raw under load_defaults 8.1+."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return re.sub(r"[<>&]", lambda m: _HTML_ESCAPES[m.group()], text)


def _reject_constant(name):
    raise ValueError("not JSON: " + name)


def rails_json_load(text):
    return json.loads(text, parse_constant=_reject_constant)


MARSHAL_SIGNATURE = b"\x04\x08"


class _MarshalReader:
    """Enough of Ruby's Marshal format (marshal.c, format 4.8) to read what Rails put in
    signed messages: nil, booleans, integers, symbols and strings (with their encoding
    ivar), and arrays and hashes of those. Anything else is refused."""

    MAX_DEPTH = 16

    def __init__(self, data):
        self.data, self.pos, self.symbols = data, 2, []

    def read(self):
        if not self.data.startswith(MARSHAL_SIGNATURE):
            raise ValueError("not Marshal 4.8")
        value = self._object(0)
        if self.pos != len(self.data):
            raise ValueError("trailing bytes after Marshal data")
        return value

    def _byte(self):
        if self.pos >= len(self.data):
            raise ValueError("truncated Marshal data")
        self.pos += 1
        return self.data[self.pos - 1]

    def _bytes(self, count):
        if count < 0 or self.pos + count > len(self.data):
            raise ValueError("truncated Marshal data")
        self.pos += count
        return self.data[self.pos - count:self.pos]

    def _long(self):
        c = self._byte()
        c = c - 256 if c > 127 else c
        if c == 0:
            return 0
        if 4 < c < 128:
            return c - 5
        if -129 < c < -4:
            return c + 5
        raw = self._bytes(abs(c))
        value = int.from_bytes(raw, "little")
        return value if c > 0 else value - (1 << (8 * len(raw)))

    def _symbol(self):
        tag = self._byte()
        if tag == 0x3A:  # ':'
            name = self._bytes(self._long()).decode("utf-8")
            self.symbols.append(name)
            return name
        if tag == 0x3B:  # ';' a link to a symbol read before
            index = self._long()
            if not 0 <= index < len(self.symbols):
                raise ValueError("bad Marshal symbol link")
            return self.symbols[index]
        raise ValueError("expected a Marshal symbol")

    def _object(self, depth):
        if depth > self.MAX_DEPTH:
            raise ValueError("Marshal data nested too deeply")
        tag = self._byte()
        if tag == 0x30:  # '0'
            return None
        if tag == 0x54:  # 'T'
            return True
        if tag == 0x46:  # 'F'
            return False
        if tag == 0x69:  # 'i'
            return self._long()
        if tag in (0x3A, 0x3B):
            self.pos -= 1
            return self._symbol()
        if tag == 0x22:  # '"' a string without ivars: binary
            return self._bytes(self._long()).decode("latin-1")
        if tag == 0x49:  # 'I' an object followed by its ivars (a string's encoding)
            if self._byte() != 0x22:
                raise ValueError("only strings may carry ivars here")
            raw = self._bytes(self._long())
            encoding = "latin-1"
            for _ in range(self._long()):
                name = self._symbol()
                value = self._object(depth + 1)
                if name == "E":
                    encoding = "utf-8" if value is True else "ascii"
                elif name == "encoding" and isinstance(value, str):
                    encoding = value
            try:
                return raw.decode(encoding)
            except (LookupError, UnicodeDecodeError) as error:
                raise ValueError("undecodable Marshal string") from error
        if tag == 0x5B:  # '['
            return [self._object(depth + 1) for _ in range(self._long())]
        if tag == 0x7B:  # '{'
            result = {}
            for _ in range(self._long()):
                key = self._object(depth + 1)
                result[key] = self._object(depth + 1)
            return result
        raise ValueError("unsupported Marshal type %r" % chr(tag))


def marshal_load(data):
    """Ruby Marshal.load for plain data (see _MarshalReader); ValueError otherwise."""
    return _MarshalReader(bytes(data)).read()


def _load_allowing_marshal(raw):
    """ActiveSupport's :json_allow_marshal serializer: Marshal when the bytes start with
    Marshal's signature, else JSON (the load_defaults 7.1+ message serializer)."""
    if raw.startswith(MARSHAL_SIGNATURE):
        return marshal_load(raw)
    return rails_json_load(raw.decode("utf-8"))


# Base64
# ---------------------------------------------------------------------------------

_STRICT_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_URLSAFE_BASE64 = re.compile(r"[A-Za-z0-9_\-+/]*={0,2}")


def strict_encode64(data):
    return base64.b64encode(data).decode("ascii")


def strict_decode64(text):
    """Ruby's Base64.strict_decode64: standard alphabet, padding required."""
    if not _STRICT_BASE64.fullmatch(text):
        raise ValueError("not strict base64")
    return base64.b64decode(text)


def urlsafe_encode64(data, padding=True):
    text = base64.urlsafe_b64encode(data).decode("ascii")
    return text if padding else text.rstrip("=")


def urlsafe_decode64(text):
    """Ruby's Base64.urlsafe_decode64: pads when the length is not a multiple of four,
    maps - and _ to + and /, then decodes strictly (so + and / are accepted too)."""
    if not _URLSAFE_BASE64.fullmatch(text):
        raise ValueError("not URL-safe base64")
    if not text.endswith("=") and len(text) % 4:
        text += "=" * (-len(text) % 4)
    return strict_decode64(text.replace("-", "+").replace("_", "/"))


# Verifier ----------------------------------------------------------------------------

def _iso8601_ms(moment):
    """Time#utc.iso8601(3), the expiry format in Rails' metadata: truncated to ms, 'Z'."""
    moment = moment.astimezone(datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (moment.microsecond // 1000)


_ISO8601 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)")


def parse_iso8601(text):
    """Unix seconds of an ISO 8601 date-time as Rails writes expiries (Time.iso8601)."""
    match = _ISO8601.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError("not an ISO 8601 time")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction = match.group(7) or "0"
    zone = match.group(8)
    if zone == "Z":
        offset = datetime.timedelta(0)
    else:
        digits = zone[1:].replace(":", "")
        offset = datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        offset = -offset if zone[0] == "-" else offset
    moment = datetime.datetime(year, month, day, hour, minute, second,
                               tzinfo=datetime.timezone(offset))
    return moment.timestamp() + int(fraction) / 10 ** len(fraction)


def _utc_moment(now):
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc)


class MessageVerifier:
    """ActiveSupport::MessageVerifier (activesupport/lib/active_support/message_verifier.rb,
    messages/codec.rb and messages/metadata.rb) in the configurations Campfire uses.

    A message is  encode(payload) + "--" + hex HMAC(digest, secret, encode(payload)).

    serializer "json" (load_defaults 7.1+, use_message_serializer_for_metadata = true):
        payload = JSON {"_rails":{"data":VALUE,"exp":ISO,"pur":PURPOSE}} (exp and pur
        only when given), or the bare JSON value when there is no metadata.
        Reads Marshal-serialized payloads too (json_allow_marshal).
    serializer "null" (the signed cookie jar's NullSerializer, value already a string):
        with metadata, the legacy envelope
        JSON {"_rails":{"message":strict_base64(VALUE),"exp":ISO|null,"pur":PURPOSE|null}};
        without, VALUE itself.

    encoding "strict" (Rails' default): strict base64 written; read strict, then URL-safe.
    encoding "url_safe" (url_safe: true): URL-safe base64 without padding.
    encoding "globalid" (GlobalID::Verifier): URL-safe base64 *with* padding, for the
    payload and for the legacy envelope's inner message alike.
    """

    ENCODINGS = ("strict", "url_safe", "globalid")
    SERIALIZERS = ("json", "null")

    def __init__(self, secret, *, digest=VERIFIER_DIGEST, serializer="json", encoding="strict"):
        if encoding not in self.ENCODINGS or serializer not in self.SERIALIZERS:
            raise ValueError("unknown encoding or serializer")
        self._secret = bytes(secret)
        self._digest = digest
        self._serializer = serializer
        self._encoding = encoding
        self._hex_length = hashlib.new(digest).digest_size * 2

    # -- encoding ------------------------------------------------------------------

    def _encode(self, data, inner=False):
        if self._encoding == "globalid":
            return urlsafe_encode64(data)
        if self._encoding == "url_safe" and not inner:
            return urlsafe_encode64(data, padding=False)
        return strict_encode64(data)

    def _decode(self, text, inner=False):
        """Rails 7.2+ reads the configured alphabet first, then the other one; the legacy
        envelope's inner message is written strict. GlobalID's decode is URL-safe only
        (which takes both alphabets anyway)."""
        if self._encoding == "globalid":
            decoders = (urlsafe_decode64,)
        elif self._encoding == "url_safe" and not inner:
            decoders = (urlsafe_decode64, strict_decode64)
        else:
            decoders = (strict_decode64, urlsafe_decode64)
        for decode in decoders:
            try:
                return decode(text)
            except (ValueError, binascii.Error):
                continue
        raise InvalidMessage("not base64")

    def _sign(self, encoded):
        return hmac.new(self._secret, encoded.encode("ascii"), self._digest).hexdigest()

    # -- generate ------------------------------------------------------------------

    def generate(self, value, *, purpose=None, expires_at=None, expires_in=None, now=None):
        """A signed message. expires_at: Unix seconds; expires_in: seconds from now."""
        expiry = None
        if expires_at is not None:
            expiry = _iso8601_ms(_utc_moment(expires_at))
        elif expires_in is not None:
            if now is None:
                raise ValueError("expires_in needs now")
            expiry = _iso8601_ms(_utc_moment(now + expires_in))
        has_metadata = expiry is not None or purpose is not None
        if self._serializer == "null":
            if not isinstance(value, str):
                raise TypeError("the null serializer signs strings")
            if has_metadata:
                inner = self._encode(value.encode("utf-8"), inner=True)
                payload = rails_json({"_rails": {"message": inner, "exp": expiry,
                                                  "pur": None if purpose is None else str(purpose)}})
            else:
                payload = value
        else:
            if has_metadata:
                rails = {"data": value}
                if expiry is not None:
                    rails["exp"] = expiry
                if purpose is not None:
                    rails["pur"] = str(purpose)
                value = {"_rails": rails}
            payload = rails_json(value)
        encoded = self._encode(payload.encode("utf-8"))
        return encoded + VERIFIER_SEPARATOR + self._sign(encoded)

    # -- verify --------------------------------------------------------------------

    def verify(self, message, *, purpose=None, now):
        """The signed value; raises InvalidMessage (Rails' verify raises InvalidSignature)."""
        if not isinstance(message, str) or len(message) > MAX_SIGNED_MESSAGE_CHARS:
            raise InvalidMessage("not a signed message")
        split = len(message) - self._hex_length - len(VERIFIER_SEPARATOR)
        if split <= 0 or message[split:split + len(VERIFIER_SEPARATOR)] != VERIFIER_SEPARATOR:
            raise InvalidMessage("no signature")
        encoded, digest = message[:split], message[split + len(VERIFIER_SEPARATOR):]
        if not encoded.strip() or not encoded.isascii():
            raise InvalidMessage("empty or non-ASCII data")
        if not hmac.compare_digest(digest.encode("utf-8", "replace"), self._sign(encoded).encode("ascii")):
            raise InvalidMessage("mismatched digest")
        payload = self._decode(encoded)
        try:
            return self._read_payload(payload, purpose, now)
        except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as error:
            if isinstance(error, InvalidMessage):
                raise
            raise InvalidMessage("unreadable payload") from error

    def verified(self, message, *, purpose=None, now):
        """Rails' verified: the value, or None when the message isn't valid."""
        try:
            return self.verify(message, purpose=purpose, now=now)
        except InvalidMessage:
            return None

    def _read_payload(self, payload, purpose, now):
        if payload.startswith(b'{"_rails":{"message":'):
            # The legacy envelope (metadata serialized as JSON around an inner message).
            envelope = rails_json_load(payload.decode("utf-8"))
            rails = self._check_metadata(envelope, purpose, now)
            inner = self._decode(rails["message"], inner=True)
            return inner.decode("utf-8") if self._serializer == "null" else _load_allowing_marshal(inner)
        if self._serializer == "null":
            if purpose is not None:
                raise InvalidMessage("missing metadata")
            return payload.decode("utf-8")
        value = _load_allowing_marshal(payload)
        if isinstance(value, dict) and "_rails" in value:
            return self._check_metadata(value, purpose, now)["data"]
        if purpose is not None:
            raise InvalidMessage("missing metadata")
        return value

    @staticmethod
    def _check_metadata(envelope, purpose, now):
        rails = envelope["_rails"]
        if not isinstance(rails, dict):
            raise InvalidMessage("malformed metadata")
        expiry = rails.get("exp")
        if expiry is not None and now >= parse_iso8601(expiry):
            raise InvalidMessage("expired")
        signed_purpose = rails.get("pur")
        if signed_purpose is not None and not isinstance(signed_purpose, str):
            raise InvalidMessage("malformed purpose")
        if (signed_purpose or "") != ("" if purpose is None else str(purpose)):
            raise InvalidMessage("mismatched purpose")
        return rails


# Cookies -----------------------------------------------------------------------------

def _cookie_verifier(secret_key_base):
    return MessageVerifier(signed_cookie_key(secret_key_base), serializer="null")


def permanent_expiry(now):
    """20.years.from_now: the same calendar date and time 20 years on (Feb 29 → Feb 28)."""
    moment = _utc_moment(now)
    year = moment.year + PERMANENT_COOKIE_YEARS
    try:
        later = moment.replace(year=year)
    except ValueError:  # February 29th in a year that has none
        later = moment.replace(year=year, day=28)
    return later.timestamp()


def sign_cookie(secret_key_base, name, value, *, expires_at=None):
    """cookies.signed[name] = {value:, expires:}: the cookie's value before escaping.
    The value is JSON-serialized first (action_dispatch.cookies_serializer = :json)."""
    return _cookie_verifier(secret_key_base).generate(
        rails_json(value), purpose="cookie." + name, expires_at=expires_at)


def sign_permanent_cookie(secret_key_base, name, value, *, now):
    """cookies.signed.permanent[name] = value: (signed value, expiry in Unix seconds).
    Set-Cookie carries the same expiry as the signed metadata."""
    expires_at = permanent_expiry(now)
    return sign_cookie(secret_key_base, name, value, expires_at=expires_at), expires_at


def verify_signed_cookie(secret_key_base, name, value, *, now):
    """cookies.signed[name] for an already unescaped value: the JSON value, or None.

    Like SignedKeyRotatingCookieJar: checked with purpose "cookie.<name>", then without
    a purpose (cookies written before use_cookies_with_metadata); the signed text must be
    JSON (a Marshal value reads as nil under the :json cookie serializer)."""
    verifier = _cookie_verifier(secret_key_base)
    data = verifier.verified(value, purpose="cookie." + name, now=now)
    if data is None:
        data = verifier.verified(value, now=now)
    if data is None or data.encode("utf-8", "replace").startswith(MARSHAL_SIGNATURE):
        return None
    try:
        return rails_json_load(data)
    except ValueError:
        return None


def rails_session_cookie(secret_key_base, token, *, now):
    """The session_token cookie Campfire sets after sign-in: (escaped value, expires_at).
    Rails adds: path=/, expires=<expires_at>, httponly, samesite=lax, and secure when the
    request was HTTPS (force_ssl)."""
    signed, expires_at = sign_permanent_cookie(secret_key_base, RAILS_SESSION_COOKIE, token, now=now)
    return cookie_escape(signed), expires_at


def verify_rails_session_cookie(secret_key_base, raw_value, *, now):
    """The session token in a session_token cookie as the browser sent it, or None."""
    value = verify_signed_cookie(secret_key_base, RAILS_SESSION_COOKIE, cookie_unescape(raw_value), now=now)
    return value if isinstance(value, str) and value else None


_COOKIE_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._")


def cookie_escape(text):
    """Rack::Utils.escape (URI.encode_www_form_component), which Rack applies to every
    Set-Cookie value: '+', '/' and '=' of base64 become %2B, %2F and %3D."""
    out = []
    for byte in text.encode("utf-8"):
        if byte in _COOKIE_SAFE:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append("%%%02X" % byte)
    return "".join(out)


def cookie_unescape(text):
    """Rack::Utils.unescape as Rack reads cookies ('+' is a space); a value with a broken
    %-escape is kept as sent, as Rack does."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        return text
    try:
        return urllib.parse.unquote_plus(text, errors="strict")
    except UnicodeDecodeError:
        return text


# Global IDs
# ---------------------------------------------------------------------------------

def global_id_verifier(secret_key_base):
    """SignedGlobalID.verifier: GlobalID::Verifier over the signed_global_ids key."""
    return MessageVerifier(signed_global_id_key(secret_key_base), encoding="globalid")


def global_id(model_name, model_id, app=GLOBALID_APP):
    """URI::GID.create: gid://app/Model/id (the id CGI-escaped)."""
    return "gid://%s/%s/%s" % (app, model_name, urllib.parse.quote_plus(str(model_id), safe=""))


_GID = re.compile(r"gid://([^/?#]+)/([A-Za-z_][\w:]*)/([^?#]+)(?:\?([^#]*))?")


def parse_global_id(uri):
    """(app, model_name, model_id) of a gid:// URI, or None. A composite id ("1/2") is
    returned as its text."""
    match = _GID.fullmatch(uri) if isinstance(uri, str) else None
    if not match:
        return None
    return match.group(1), match.group(2), urllib.parse.unquote_plus(match.group(3))


def sign_global_id(secret_key_base, model_name, model_id, *, purpose=ATTACHABLE_PURPOSE,
                   expires_at=None, app=GLOBALID_APP):
    """SignedGlobalID#to_s. Action Text's attachable_sgid (to_sgid(expires_in: nil,
    for: "attachable")) has no expiry, so by default neither does this."""
    return global_id_verifier(secret_key_base).generate(
        global_id(model_name, model_id, app), purpose=purpose, expires_at=expires_at)


def attachable_sgid(secret_key_base, model_name, model_id):
    """user.attachable_sgid, the sgid of a mention attachment."""
    return sign_global_id(secret_key_base, model_name, model_id)


def locate_signed_global_id(secret_key_base, sgid, *, purpose=ATTACHABLE_PURPOSE, now):
    """GlobalID::Locator.locate_signed's parse step: (app, model_name, model_id) when the
    signature, purpose and expiry hold, else None. Reads the current format, the Rails
    7.x one (Marshal in a legacy envelope) and GlobalID's older self-described
    {"gid":…,"purpose":…,"expires_at":…} messages."""
    verifier = global_id_verifier(secret_key_base)
    value = verifier.verified(sgid, purpose=purpose, now=now)
    if value is None:
        legacy = verifier.verified(sgid, now=now)
        if isinstance(legacy, dict) and isinstance(legacy.get("gid"), str):
            try:
                expired = legacy.get("expires_at") is not None and now > parse_iso8601(legacy["expires_at"])
            except ValueError:
                return None
            if not expired and str(legacy.get("purpose")) == str(purpose):
                value = legacy["gid"]
    return parse_global_id(value) if isinstance(value, str) else None


# Campfire's own pattern for a gid inside Marshal bytes: gid://campfire/<Model>/<digits>.
_GID_IN_BYTES = re.compile(rb"gid://" + GLOBALID_APP.encode("ascii") + rb"/[^/]+/\d+")


def peek_global_id(sgid):
    """The gid inside an sgid, signature NOT checked — what Campfire does for User
    attachables (lib/rails_ext/action_text_attachables.rb), so mentions survive a
    changed SECRET_KEY_BASE. (app, model_name, model_id) or None."""
    if not isinstance(sgid, str) or len(sgid) > MAX_SIGNED_MESSAGE_CHARS:
        return None
    message = sgid.split(VERIFIER_SEPARATOR)[0]
    try:
        try:
            envelope = rails_json_load(strict_decode64(message).decode("utf-8"))
        except ValueError:
            envelope = rails_json_load(urlsafe_decode64(message).decode("utf-8"))
        rails = envelope["_rails"]
        if "data" in rails:
            return parse_global_id(rails["data"])
        if "message" in rails:
            try:
                inner = strict_decode64(rails["message"])
            except ValueError:
                inner = urlsafe_decode64(rails["message"])
            match = _GID_IN_BYTES.search(inner)
            return parse_global_id(match.group().decode("ascii")) if match else None
    except (ValueError, UnicodeDecodeError, TypeError, KeyError):
        return None
    return None


# bcrypt
# ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _libcrypt():
    """libxcrypt's crypt_rn and crypt_gensalt_rn, or None when this system lacks them
    (glibc's old libcrypt has no bcrypt and no crypt_rn; macOS has neither)."""
    import ctypes.util  # only the password functions need it, and it is slow to import
    names = [ctypes.util.find_library("crypt"), "libcrypt.so.1", "libcrypt.so.2"]
    for name in filter(None, names):
        try:
            library = ctypes.CDLL(name)
            crypt_rn, gensalt = library.crypt_rn, library.crypt_gensalt_rn
        except (OSError, AttributeError):
            continue
        crypt_rn.restype = ctypes.c_char_p
        crypt_rn.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int)
        gensalt.restype = ctypes.c_char_p
        gensalt.argtypes = (ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int,
                            ctypes.c_char_p, ctypes.c_int)
        return crypt_rn, gensalt
    return None


def _crypt(password, setting):
    """crypt_rn(password, setting) with a private struct crypt_data (thread-safe), or
    None on failure. Both arguments are bytes without NUL (callers check)."""
    functions = _libcrypt()
    if functions is None:
        return None
    crypt_rn = functions[0]
    data = ctypes.create_string_buffer(_CRYPT_DATA_BYTES)
    result = crypt_rn(password, setting, data, _CRYPT_DATA_BYTES)
    if not result or result.startswith(b"*"):
        return None
    return result


def _bcrypt_password_bytes(password):
    """The bytes bcrypt sees. bcrypt-ruby truncates to 72 bytes (Engine.hash_secret) and
    refuses a NUL (StringValueCStr raises), so a NUL is a ValueError here too."""
    data = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    if b"\0" in data:
        raise ValueError("a bcrypt password cannot contain NUL")
    return data[:BCRYPT_MAX_PASSWORD_BYTES]


@functools.lru_cache(maxsize=1)
def bcrypt_supported():
    """True when this system's crypt(3) can both make and check $2a$ digests."""
    salt = bcrypt_salt(BCRYPT_MIN_COST, random_bytes=bytes(BCRYPT_SALT_BYTES))
    if salt is None:
        return False
    result = _crypt(b"probe", salt.encode("ascii"))
    return bool(result) and BCRYPT_DIGEST.fullmatch(result.decode("ascii")) is not None


def bcrypt_salt(cost=BCRYPT_COST, *, random_bytes=None):
    """BCrypt::Engine.generate_salt: "$2a$" + cost + 22 characters, or None."""
    if not BCRYPT_MIN_COST <= cost <= BCRYPT_MAX_COST:
        raise ValueError("bcrypt cost must be between %d and %d" % (BCRYPT_MIN_COST, BCRYPT_MAX_COST))
    functions = _libcrypt()
    if functions is None:
        return None
    random_bytes = os.urandom(BCRYPT_SALT_BYTES) if random_bytes is None else random_bytes
    output = ctypes.create_string_buffer(_CRYPT_GENSALT_OUTPUT_BYTES)
    result = functions[1](BCRYPT_PREFIX.encode("ascii"), cost, random_bytes, len(random_bytes),
                          output, _CRYPT_GENSALT_OUTPUT_BYTES)
    if not result or not result.startswith(BCRYPT_PREFIX.encode("ascii")):
        return None
    return result.decode("ascii")


def bcrypt_hash(password, cost=BCRYPT_COST):
    """BCrypt::Password.create(password, cost:): a "$2a$" digest Rails' has_secure_password
    accepts, or None when this system can't make one (the caller falls back). A password
    with a NUL raises ValueError (Rails can't take one either). CPU-heavy: run it off the
    event loop."""
    password = _bcrypt_password_bytes(password)
    salt = bcrypt_salt(cost)
    if salt is None:
        return None
    result = _crypt(password, salt.encode("ascii"))
    if result is None:
        return None
    digest = result.decode("ascii")
    return digest if BCRYPT_DIGEST.fullmatch(digest) else None


def bcrypt_check(password, digest):
    """BCrypt::Password.new(digest).is_password?(password): True or False, or None when
    this system can't compute bcrypt (the caller decides). A malformed digest is False."""
    if not isinstance(digest, str) or not BCRYPT_DIGEST.fullmatch(digest):
        return False
    try:
        password = _bcrypt_password_bytes(password)
    except ValueError:
        return False
    result = _crypt(password, digest[:29].encode("ascii"))
    if result is None:
        return None if not bcrypt_supported() else False
    return hmac.compare_digest(result, digest.encode("ascii"))


def is_bcrypt_digest(digest):
    return isinstance(digest, str) and BCRYPT_DIGEST.fullmatch(digest) is not None


####
#### 10. Files
####
# The pure building blocks of uploads, downloads and link previews: bytes and
# strings in, values and events out. Nothing here touches a socket, a file, the
# clock or the database.

# Header parameters (RFC 9110 §5.6.6, RFC 8187, RFC 9110 §5.6.7) ----------------------

_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TOKEN_TEXT_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_MEDIA_TYPE_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+/[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_OWS = " \t"


def _is_control(char):
    """CTL (RFC 5234 B.1) other than HTAB: never inside a header value."""
    return (char < " " and char != "\t") or char == "\x7f"


def parse_parameters(value):
    """'form-data; name="a"; filename=b.txt' → ('form-data', [('name', 'a'), ('filename', 'b.txt')]).

    RFC 9110 §5.6.6: parameters follow ";" with optional whitespace; names are
    tokens, matched case-insensitively (returned lower-cased, in order, repeats
    kept); values are tokens or quoted strings. Within a quoted string only \\"
    and \\\\ are escapes: browsers never escape anything else, and Windows paths
    (C:\\Users\\x.txt) keep their backslashes. Two leniencies that real
    clients need: whitespace around "=", and an unquoted value of any characters
    up to the next ";" (boundaries such as boundary=a:b/c?d are sent unquoted).
    ValueError when it can't be read."""
    main, _, rest = value.partition(";")
    params = []
    i, end = 0, len(rest)
    while i < end:
        while i < end and rest[i] in _OWS:
            i += 1
        if i >= end:
            break
        if rest[i] == ";":  # an empty parameter: "a;;b=c"
            i += 1
            continue
        start = i
        while i < end and rest[i] in _TCHARS:
            i += 1
        name = rest[start:i].lower()
        if not name:
            raise ValueError("a parameter without a name")
        while i < end and rest[i] in _OWS:
            i += 1
        if i >= end or rest[i] != "=":
            raise ValueError("the parameter %r has no value" % name)
        i += 1
        while i < end and rest[i] in _OWS:
            i += 1
        if i < end and rest[i] == '"':
            text, i = _quoted_string(rest, i)
        else:
            stop = rest.find(";", i)
            stop = end if stop < 0 else stop
            text = rest[i:stop].rstrip(_OWS)
            i = stop
            if not text or '"' in text or any(_is_control(char) for char in text):
                raise ValueError("the parameter %r has a malformed value" % name)
        params.append((name, text))
        while i < end and rest[i] in _OWS:
            i += 1
        if i < end:
            if rest[i] != ";":
                raise ValueError("text after the parameter %r" % name)
            i += 1
    return main.strip(_OWS).lower(), params


def _quoted_string(text, start):
    """RFC 9110 §5.6.4 quoted-string at text[start] == '"' → (value, index after)."""
    chars = []
    i, end = start + 1, len(text)
    while i < end:
        char = text[i]
        if char == '"':
            return "".join(chars), i + 1
        if char == "\\" and i + 1 < end and text[i + 1] in '"\\':
            chars.append(text[i + 1])
            i += 2
            continue
        if _is_control(char):
            raise ValueError("a control character in a quoted string")
        chars.append(char)
        i += 1
    raise ValueError("a quoted string without its closing quote")


def decode_ext_value(value):
    """RFC 8187 §3.2 ext-value, "UTF-8''na%C3%AFve.txt" → "naïve.txt"; None when
    it is malformed or in a charset other than UTF-8 or ISO-8859-1 (the two
    §3.2.1 requires), so the caller falls back to the plain parameter."""
    charset, quote, rest = value.partition("'")
    _language, quote2, encoded = rest.partition("'")
    if not (quote and quote2) or charset.lower() not in ("utf-8", "iso-8859-1"):
        return None
    if any(char in " \"'" or _is_control(char) for char in encoded):
        return None
    try:
        return urllib.parse.unquote_to_bytes(encoded).decode(charset.lower(), "strict")
    except UnicodeDecodeError:
        return None


_HTTP_DATE_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_IMF_FIXDATE_RE = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) ([A-Z][a-z]{2}) (\d{4}) "
                             r"(\d\d):(\d\d):(\d\d) GMT\Z")
_RFC850_DATE_RE = re.compile(r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
                             r"(\d\d)-([A-Z][a-z]{2})-(\d\d) (\d\d):(\d\d):(\d\d) GMT\Z")
_ASCTIME_DATE_RE = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([ \d]\d) "
                              r"(\d\d):(\d\d):(\d\d) (\d{4})\Z")


def parse_http_date(value, now=None):
    """An HTTP-date (RFC 9110 §5.6.7) → seconds since the epoch, or None.

    All three formats a recipient must accept: IMF-fixdate, the obsolete
    RFC 850 form (its two-digit year is the latest year with those digits that
    is not more than 50 years after `now`; without `now`, 1970 to 2069) and
    asctime. The weekday is checked for form only, as RFC 9110 asks of nobody
    to verify it."""
    value = value.strip(_OWS)
    if match := _IMF_FIXDATE_RE.match(value):
        day, month, year, hour, minute, second = match.groups()
    elif match := _RFC850_DATE_RE.match(value):
        day, month, short_year, hour, minute, second = match.groups()
        reference = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).year if now is not None else 2019
        year = reference - reference % 100 + int(short_year)
        if year > reference + 50:
            year -= 100
        elif year <= reference - 50:
            year += 100
    elif match := _ASCTIME_DATE_RE.match(value):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    if month not in _HTTP_DATE_MONTHS:
        return None
    try:
        moment = datetime.datetime(int(year), _HTTP_DATE_MONTHS[month], int(day), int(hour), int(minute), int(second))
    except ValueError:  # 31 February, 25 o'clock, year 0
        return None
    return calendar.timegm(moment.timetuple())


# multipart/form-data (RFC 7578, RFC 2046 §5.1.1) -------------------------------------
# MultipartParser is sans-I/O: feed(bytes) returns events, in order,
#
#   PartStarted(name, filename, content_type, headers)   a part's header was read
#   PartData(data)                                       some of its body, in order
#   PartEnded()                                          its body is complete
#
# and finish() checks that the closing delimiter came. Whatever the size of a
# part, the parser holds at most one part header (MAX_PART_HEADER_BYTES) or one
# delimiter's length of body: a body's bytes are handed on as they arrive,
# except those that might be the start of a delimiter split between two feeds.
#
# RFC 2046 §5.1.1's grammar, which the states follow:
#   multipart-body := [preamble CRLF] dash-boundary transport-padding CRLF
#                     body-part *encapsulation close-delimiter transport-padding [CRLF epilogue]
#   encapsulation  := delimiter transport-padding CRLF body-part
#   delimiter      := CRLF dash-boundary          dash-boundary := "--" boundary
# Treating the body as if it began with a CRLF makes the first dash-boundary a
# delimiter like the others.

_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]\Z")  # §5.1.1 bchars


def multipart_boundary(content_type):
    """The boundary of a `multipart/form-data; boundary=…` Content-Type, as bytes.
    MultipartError when the type is another, the boundary missing, repeated, or
    not 1 to 70 of RFC 2046's characters; quoted and unquoted forms are read."""
    try:
        media_type, params = parse_parameters(content_type or "")
    except ValueError as error:
        raise MultipartError("The Content-Type header could not be read (%s)." % error) from None
    if media_type != "multipart/form-data":
        raise MultipartError("The body is not multipart/form-data.")
    boundaries = [value for name, value in params if name == "boundary"]
    if not boundaries:
        raise MultipartError("The multipart boundary is missing from the Content-Type header.")
    if len(boundaries) > 1:
        raise MultipartError("The Content-Type header names more than one boundary.")
    if not _BOUNDARY_RE.match(boundaries[0]):
        raise MultipartError("The multipart boundary must be 1 to %d letters, digits or '()+_,-./:=? "
                             "(RFC 2046)." % MAX_BOUNDARY_CHARS)
    return boundaries[0].encode("ascii")


@dataclass(frozen=True, slots=True)
class PartStarted:
    """A part's header was read. `filename` is None for a plain field and a
    string for a file field ("" when a browser sent the field with no file
    chosen); it is as sent, so pass it through safe_filename() before use.
    `content_type` is the part's Content-Type as sent, or None (RFC 7578 §4.4:
    then text/plain for a field, application/octet-stream for a file).
    `headers` are all of the part's header fields, (name, value), as sent."""

    name: str
    filename: str | None
    content_type: str | None
    headers: tuple


@dataclass(frozen=True, slots=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnded:
    pass


_PART_ENDED = PartEnded()


class MultipartParser:
    """multipart/form-data bytes in, PartStarted/PartData/PartEnded out.

        parser = MultipartParser(multipart_boundary(request.header("content-type")))
        for chunk in body:
            for event in parser.feed(chunk): ...
        parser.finish()

    MultipartError (400) for a malformed body, MultipartTooLarge (413) past a
    limit; after either, the parser refuses everything. With form_data=False
    any multipart body is read (RFC 2046 alone): parts need no
    Content-Disposition and PartStarted.name is None when there is none.
    """

    PREAMBLE, DELIMITER, HEADER, BODY, EPILOGUE, FAILED = range(6)

    def __init__(self, boundary, *, max_parts=MAX_MULTIPART_PARTS, max_header_bytes=MAX_PART_HEADER_BYTES,
                 max_header_fields=MAX_PART_HEADER_FIELDS, form_data=True):
        if isinstance(boundary, str):
            boundary = boundary.encode("ascii")
        if not 1 <= len(boundary) <= MAX_BOUNDARY_CHARS or b"\r" in boundary or b"\n" in boundary:
            raise MultipartError("The multipart boundary must be 1 to %d characters." % MAX_BOUNDARY_CHARS)
        self._delimiter = b"\r\n--" + boundary
        self._max_parts = max_parts
        self._max_header_bytes = max_header_bytes
        self._max_header_fields = max_header_fields
        self._form_data = form_data
        self._buffer = bytearray(b"\r\n")  # see the note above: the body's first line is a delimiter too
        self._state = self.PREAMBLE
        self._error = None
        self._scanned = 0        # how much of the buffer holds no CRLF (part headers)
        self._preamble_bytes = 0
        self._parts = 0
        self._header_bytes = 0
        self._fields = []        # [(name, value)] of the part whose header is being read

    @classmethod
    def for_content_type(cls, content_type, **limits):
        return cls(multipart_boundary(content_type), **limits)

    @property
    def buffered_bytes(self):
        """Bytes held back: at most a delimiter's length while in a body."""
        return len(self._buffer)

    @property
    def done(self):
        """True once the closing delimiter was read (what follows is ignored)."""
        return self._state == self.EPILOGUE

    def feed(self, data):
        """Consume `data`; return the events it completes, in order."""
        if self._state == self.FAILED:
            raise self._error
        if self._state == self.EPILOGUE:
            return []  # RFC 2046 §5.1.1: the epilogue is ignored
        self._buffer += data
        events = []
        try:
            while self._step(events):
                pass
        except (MultipartError, MultipartTooLarge) as error:
            self._fail(error)
        return events

    def finish(self):
        """The body ended: MultipartError unless its closing delimiter was read."""
        if self._state == self.FAILED:
            raise self._error
        if self._state == self.EPILOGUE:
            return
        if self._state == self.PREAMBLE:
            self._fail(MultipartError("The body does not contain the boundary named in its Content-Type."))
        if self._state == self.HEADER and not self._buffer and not self._fields:
            self._fail(MultipartError("The multipart body has no closing boundary (--boundary--)."))
        self._fail(MultipartError("The multipart body was cut off before its closing boundary."))

    def _fail(self, error):
        self._state = self.FAILED
        self._error = error
        self._buffer = bytearray()
        raise error

    def _step(self, events):
        """Make one move; False when more bytes are needed."""
        state, buffer = self._state, self._buffer
        if state == self.BODY:
            index = buffer.find(self._delimiter)
            if index >= 0:
                if index:
                    events.append(PartData(bytes(buffer[:index])))
                del buffer[:index + len(self._delimiter)]
                events.append(_PART_ENDED)
                self._state = self.DELIMITER
                return True
            keep = self._partial_delimiter_length()
            if len(buffer) > keep:
                events.append(PartData(bytes(buffer[:len(buffer) - keep])))
                del buffer[:len(buffer) - keep]
            return False
        if state == self.HEADER:
            return self._read_header_line(events)
        if state == self.DELIMITER:
            return self._read_delimiter_end()
        if state == self.PREAMBLE:
            index = buffer.find(self._delimiter)
            if index >= 0:
                self._preamble_bytes += index
                del buffer[:index + len(self._delimiter)]
                self._state = self.DELIMITER
                return True
            keep = self._partial_delimiter_length()
            self._preamble_bytes += len(buffer) - keep
            del buffer[:len(buffer) - keep]
            if self._preamble_bytes > MAX_MULTIPART_PREAMBLE_BYTES:
                raise MultipartError("The body does not start with the boundary named in its Content-Type.")
            return False
        return False

    def _partial_delimiter_length(self):
        """How many bytes at the buffer's end could begin a delimiter. The
        delimiter's only CR is its first byte (a boundary holds none), so the
        last CR near the end is the one candidate."""
        buffer, delimiter = self._buffer, self._delimiter
        start = buffer.rfind(b"\r", max(0, len(buffer) - len(delimiter) + 1))
        if start >= 0 and delimiter.startswith(buffer[start:]):
            return len(buffer) - start
        return 0

    def _read_delimiter_end(self):
        """After a delimiter: "--" closes the body; otherwise transport padding
        (spaces and tabs) and a CRLF open the next part (RFC 2046 §5.1.1)."""
        buffer = self._buffer
        if buffer[:1] == b"-":
            if len(buffer) < 2:
                return False
            if buffer[1:2] != b"-":
                raise MultipartError("A boundary line has text after the boundary.")
            if not self._parts and self._preamble_bytes:
                # Text, then straight to the closing delimiter: the text was the parts,
                # written with another boundary. (An empty form, "--b--" alone, is fine.)
                raise MultipartError("The body does not contain the boundary named in its Content-Type.")
            self._state = self.EPILOGUE
            self._buffer = bytearray()
            return False
        padding = 0
        while padding < len(buffer) and buffer[padding] in b" \t":
            padding += 1
        if padding > MAX_TRANSPORT_PADDING_BYTES:
            raise MultipartError("A boundary line has text after the boundary.")
        if len(buffer) < padding + 2:
            if buffer[padding:] in (b"", b"\r"):
                return False
        if buffer[padding:padding + 2] != b"\r\n":
            if buffer[padding:padding + 1] == b"\n":
                raise MultipartError("A boundary line ends with LF alone; multipart lines end with CRLF "
                                     "(RFC 2046 §5.1.1).")
            raise MultipartError("A boundary line has text after the boundary.")
        del buffer[:padding + 2]
        self._parts += 1
        if self._parts > self._max_parts:
            raise MultipartTooLarge("The form has more than %d parts." % self._max_parts)
        self._state = self.HEADER
        self._header_bytes = 0
        self._fields = []
        self._scanned = 0
        return True

    def _read_header_line(self, events):
        buffer = self._buffer
        index = buffer.find(b"\r\n", self._scanned)
        if index < 0:
            if self._header_bytes + len(buffer) > self._max_header_bytes:
                raise MultipartTooLarge("A part's header is larger than %d bytes." % self._max_header_bytes)
            self._scanned = max(0, len(buffer) - 1)
            return False
        self._header_bytes += index + 2
        if self._header_bytes > self._max_header_bytes:
            raise MultipartTooLarge("A part's header is larger than %d bytes." % self._max_header_bytes)
        line = bytes(buffer[:index])
        del buffer[:index + 2]
        self._scanned = 0
        if not line:
            events.append(self._part_started())
            self._state = self.BODY
            return True
        if b"\n" in line:
            raise MultipartError("A part header line ends with LF alone; multipart lines end with CRLF "
                                 "(RFC 2046 §5.1.1).")
        text = line.decode("utf-8", "replace")
        if any(_is_control(char) for char in text):
            raise MultipartError("A part header contains a control character.")
        if text[0] in _OWS:
            # obs-fold (RFC 5322 §2.2.3, which MIME part headers follow): a continuation line.
            if not self._fields:
                raise MultipartError("A part header starts with a continuation line.")
            name, value = self._fields[-1]
            self._fields[-1] = (name, (value + " " + text.strip(_OWS)).strip(_OWS))
            return True
        name, colon, value = text.partition(":")
        if not colon or not _TOKEN_TEXT_RE.match(name):
            raise MultipartError("A part header line is not a 'Name: value' field.")
        if len(self._fields) >= self._max_header_fields:
            raise MultipartTooLarge("A part has more than %d header fields." % self._max_header_fields)
        self._fields.append((name, value.strip(_OWS)))
        return True

    def _part_started(self):
        """RFC 7578 §4.2: each part has one Content-Disposition of type form-data
        with a name; filename* (RFC 8187) wins over filename (RFC 6266 §4.3)."""
        fields = tuple(self._fields)
        found = {}
        for name, value in fields:
            key = name.lower()
            if key in ("content-disposition", "content-type"):
                if key in found:
                    raise MultipartError("A part has two %s header fields." % name)
                found[key] = value
        content_type = found.get("content-type")
        if "content-disposition" not in found:
            if self._form_data:
                raise MultipartError("A part has no Content-Disposition header field (RFC 7578 §4.2).")
            return PartStarted(None, None, content_type, fields)
        try:
            disposition, params = parse_parameters(found["content-disposition"])
        except ValueError as error:
            raise MultipartError("A part's Content-Disposition could not be read (%s)." % error) from None
        if self._form_data and disposition != "form-data":
            raise MultipartError("A part's Content-Disposition is not form-data (RFC 7578 §4.2).")
        values = {}
        for key, value in params:
            if key in values:
                raise MultipartError("A part's Content-Disposition repeats %s." % key)
            values[key] = value
        name = values.get("name")
        if name is None and self._form_data:
            raise MultipartError("A part's Content-Disposition has no name (RFC 7578 §4.2).")
        filename = values.get("filename")
        # WHATWG HTML §4.10.21.8: browsers write a quote in a name or file name as %22
        # (and CR, LF as %0D, %0A, which safe_filename() would drop anyway).
        name = name.replace("%22", '"') if name is not None else None
        filename = filename.replace("%22", '"') if filename is not None else None
        if "filename*" in values:
            filename = decode_ext_value(values["filename*"]) or filename
        return PartStarted(name, filename, content_type, fields)


def read_multipart(body, content_type, **limits):
    """A whole multipart/form-data body → [(PartStarted, bytes)], for small
    forms held in memory; uploads go through MultipartParser as they arrive."""
    parser = MultipartParser.for_content_type(content_type, **limits)
    parts, started, chunks = [], None, []
    for event in parser.feed(body):
        if isinstance(event, PartStarted):
            started, chunks = event, []
        elif isinstance(event, PartData):
            chunks.append(event.data)
        else:
            parts.append((started, b"".join(chunks)))
    parser.finish()
    return parts


# File names --------------------------------------------------------------------------

# Bidirectional controls (Unicode Annex #9): they make "txt.exe" read "exe.txt".
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cs", "Zl", "Zp"))  # controls, lone surrogates, line breaks


def safe_filename(name, max_bytes=MAX_FILENAME_BYTES):
    """What an uploaded file's name may be once it is ours: the last path
    component (after / or \\), in NFC, without control characters, bidi
    controls or line separators, without leading dots or surrounding spaces
    (and trailing dots, which Windows drops), at most `max_bytes` of UTF-8 with
    its extension kept. Never empty: FALLBACK_FILENAME when nothing is left."""
    name = re.split(r"[/\\]", name or "")[-1]
    name = "".join(char for char in name
                   if unicodedata.category(char) not in _UNSAFE_CATEGORIES and char not in _BIDI_CONTROLS)
    name = re.sub(r"^[\s.]+|[\s.]+$", "", unicodedata.normalize("NFC", name))
    encoded = name.encode("utf-8")
    if len(encoded) > max_bytes:
        stem, dot, extension = name.rpartition(".")
        extension = dot + extension
        extension_bytes = len(extension.encode("utf-8"))
        if not stem or not 2 <= extension_bytes <= min(MAX_EXTENSION_BYTES, max_bytes // 2):
            stem, extension, extension_bytes = name, "", 0
        stem = re.sub(r"[\s.]+$", "", stem.encode("utf-8")[:max_bytes - extension_bytes].decode("utf-8", "ignore"))
        name = unicodedata.normalize("NFC", stem + extension) if stem else extension.lstrip(".")
    return name or FALLBACK_FILENAME


# Image headers -----------------------------------------------------------------------
# The browser makes every preview; the server only checks that an image is one
# and learns its size, from its first bytes. ImageSniffer is fed a file as it
# arrives and stops as soon as it knows (PNG and WebP: 33 bytes, GIF: 10, JPEG:
# everything up to its frame header); segments it doesn't need are skipped, not kept.

@dataclass(frozen=True, slots=True)
class ImageInfo:
    """A real image's type and its size as shown: for a JPEG whose EXIF
    orientation is 5 to 8 (a quarter turn) width and height are swapped, as
    browsers draw it (CSS image-orientation: from-image)."""

    content_type: str
    width: int
    height: int
    orientation: int = 1


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"        # PNG §5.2
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")      # GIF89a §17
JPEG_SIGNATURE = b"\xff\xd8\xff"             # SOI and the next marker's 0xFF (T.81 §B.1.1.3)
_SIGNATURES = (PNG_SIGNATURE, b"GIF8", JPEG_SIGNATURE, b"RIFF")

# PNG §11.2.2: bit depths allowed for each colour type.
_PNG_BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# ITU T.81 Table B.1: the SOFn markers; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_JPEG_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_JPEG_STANDALONE_MARKERS = frozenset((0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7))  # TEM, RSTn
_EXIF_ORIENTATION_TAG = 0x0112               # TIFF 6.0 / EXIF 2.3 §4.6.4, a SHORT from 1 to 8


class ImageSniffer:
    """Feed a file's first bytes; learn whether it is a PNG, GIF, JPEG or WebP,
    and its size.

        sniffer = ImageSniffer()
        for chunk in upload:
            if sniffer.feed(chunk):   # True once it knows
                break
        info = sniffer.finish()        # ImageInfo, or None if not one of the four

    ImageHeaderError (422) when the file starts like one of the four but its
    header is cut off, corrupt, or says the image is 0 pixels or past
    MAX_IMAGE_SIDE_PIXELS / MAX_IMAGE_PIXELS."""

    def __init__(self):
        self._buffer = bytearray()
        self._done = False
        self._info = None
        self._kind = None
        self._position = 0        # file offset of the buffer's first byte (JPEG)
        self._skip = 0            # JPEG bytes still to pass over
        self._orientation = 1
        self._exif_read = False

    @property
    def buffered_bytes(self):
        """Bytes held: at most a JPEG's EXIF segment (64 KiB) plus the latest chunk."""
        return len(self._buffer)

    def feed(self, data):
        if self._done:
            return True
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            self._position += skipped
            data = data[skipped:]
        self._buffer += data
        self._step()
        return self._done

    def finish(self):
        """No more bytes: the ImageInfo, None for a file that is none of the
        four, or ImageHeaderError for an image cut off before its size."""
        if not self._done:
            if self._kind is None:
                return None
            raise ImageHeaderError("The %s image is cut off before the end of its header." % self._kind)
        return self._info

    def _decide(self, info):
        self._done = True
        self._info = info
        self._buffer = bytearray()
        return info

    def _step(self):
        buffer = self._buffer
        if self._kind is None:
            head = bytes(buffer[:12])
            if head.startswith(PNG_SIGNATURE):
                self._kind = "PNG"
            elif head[:6] in GIF_SIGNATURES:
                self._kind = "GIF"
            elif head.startswith(JPEG_SIGNATURE):
                self._kind = "JPEG"
                del buffer[:2]  # SOI
                self._position = 2
            elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                self._kind = "WebP"
            elif len(head) >= 12 or not any(signature.startswith(head[:len(signature)])
                                            for signature in _SIGNATURES):
                self._decide(None)  # not an image we know: just a file
                return
            else:
                return
        if self._kind == "PNG":
            self._png()
        elif self._kind == "GIF":
            self._gif()
        elif self._kind == "WebP":
            self._webp()
        else:
            self._jpeg()

    def _checked(self, content_type, width, height, orientation=1):
        if width < 1 or height < 1:
            raise ImageHeaderError("The image's header says it is %d×%d pixels." % (width, height))
        if width > MAX_IMAGE_SIDE_PIXELS or height > MAX_IMAGE_SIDE_PIXELS or width * height > MAX_IMAGE_PIXELS:
            raise ImageHeaderError("The image's header says it is %d×%d pixels, more than we show "
                                   "(%d on a side, %d in all)." % (width, height, MAX_IMAGE_SIDE_PIXELS,
                                                                   MAX_IMAGE_PIXELS))
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        return self._decide(ImageInfo(content_type, width, height, orientation))

    def _png(self):
        """PNG §5.3, §11.2.2: the first chunk is IHDR, 13 bytes, with a CRC."""
        data = self._buffer
        if len(data) < IMAGE_HEADER_BYTES:
            return
        length = int.from_bytes(data[8:12], "big")
        if length != 13 or data[12:16] != b"IHDR":
            raise ImageHeaderError("The PNG image does not start with its IHDR chunk.")
        if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
            raise ImageHeaderError("The PNG image's IHDR chunk is corrupt (its CRC does not match).")
        width = int.from_bytes(data[16:20], "big")
        height = int.from_bytes(data[20:24], "big")
        depth, colour, compression, filtering, interlace = data[24:29]
        if (depth not in _PNG_BIT_DEPTHS.get(colour, ()) or compression != 0 or filtering != 0
                or interlace not in (0, 1)):
            raise ImageHeaderError("The PNG image's IHDR chunk has values PNG does not define.")
        self._checked("image/png", width, height)

    def _gif(self):
        """GIF89a §18: the logical screen descriptor follows the 6-byte signature."""
        data = self._buffer
        if len(data) < 10:
            return
        self._checked("image/gif", int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little"))

    def _webp(self):
        """RFC 9649 §2.5-2.7: a RIFF file whose first chunk is VP8, VP8L or VP8X."""
        data = self._buffer
        if len(data) < 20:
            return
        riff_size = int.from_bytes(data[4:8], "little")
        fourcc = bytes(data[12:16])
        chunk_size = int.from_bytes(data[16:20], "little")
        if chunk_size + 12 > riff_size:
            raise ImageHeaderError("The WebP image's first chunk is larger than the file says it is.")
        if fourcc == b"VP8 ":
            # RFC 6386 §9.1: a 3-byte frame tag (bit 0 clear on a key frame), the start
            # code 9D 01 2A, then 14-bit width and height each with a 2-bit scale.
            if len(data) < 30:
                return
            if chunk_size < 10 or data[20] & 1 or data[23:26] != b"\x9d\x01\x2a":
                raise ImageHeaderError("The WebP image's VP8 frame header is corrupt.")
            width = int.from_bytes(data[26:28], "little") & 0x3FFF
            height = int.from_bytes(data[28:30], "little") & 0x3FFF
        elif fourcc == b"VP8L":
            # RFC 9649 §3.2: signature 0x2F, then width-1 and height-1 in 14 bits each,
            # an alpha bit and a 3-bit version that must be 0.
            if len(data) < 25:
                return
            bits = int.from_bytes(data[21:25], "little")
            if chunk_size < 5 or data[20] != 0x2F or bits >> 29:
                raise ImageHeaderError("The WebP image's VP8L header is corrupt.")
            width = (bits & 0x3FFF) + 1
            height = ((bits >> 14) & 0x3FFF) + 1
        elif fourcc == b"VP8X":
            # RFC 9649 §2.7: flags, 3 reserved bytes, canvas width-1 and height-1 in 24 bits each.
            if len(data) < 30:
                return
            if chunk_size < 10:
                raise ImageHeaderError("The WebP image's VP8X chunk is too short.")
            width = int.from_bytes(data[24:27], "little") + 1
            height = int.from_bytes(data[27:30], "little") + 1
        else:
            raise ImageHeaderError("The WebP image's first chunk is neither VP8, VP8L nor VP8X.")
        self._checked("image/webp", width, height)

    def _jpeg(self):
        """ITU T.81 §B.1.1: walk the marker segments to the first SOFn, reading
        EXIF's orientation (APP1) on the way and skipping the rest; 0xFF fill
        bytes before a marker are allowed (§B.1.1.2), and stray bytes between
        segments are passed over as libjpeg does."""
        buffer = self._buffer
        while True:
            if self._position > JPEG_SCAN_LIMIT:
                raise ImageHeaderError("The JPEG image has no frame header in its first %d bytes."
                                       % JPEG_SCAN_LIMIT)
            start = buffer.find(b"\xff")
            if start < 0:
                self._consume(len(buffer))
                return
            marker_at = start
            while marker_at < len(buffer) and buffer[marker_at] == 0xFF:
                marker_at += 1
            if marker_at >= len(buffer):
                self._consume(start)  # keep the 0xFFs: the marker may follow in the next feed
                return
            marker = buffer[marker_at]
            if marker == 0x00:  # a stuffed zero belongs to entropy-coded data, not here
                self._consume(marker_at + 1)
                continue
            if marker in _JPEG_STANDALONE_MARKERS:
                self._consume(marker_at + 1)
                continue
            if marker == 0xD8:
                raise ImageHeaderError("The JPEG image has a second start-of-image marker before its frame.")
            if marker in (0xD9, 0xDA):
                raise ImageHeaderError("The JPEG image has no frame header before its %s."
                                       % ("end" if marker == 0xD9 else "scan data"))
            if len(buffer) < marker_at + 3:
                self._consume(start)
                return
            length = int.from_bytes(buffer[marker_at + 1:marker_at + 3], "big")
            if length < 2:
                raise ImageHeaderError("The JPEG image has a segment shorter than its length field.")
            segment_start = marker_at + 3
            segment_end = marker_at + 1 + length
            if marker in _JPEG_SOF_MARKERS:
                if len(buffer) < segment_start + 6:
                    self._consume(start)
                    return
                # §B.2.2: P, Y (lines), X (samples per line), Nf, then 3 bytes per component.
                height = int.from_bytes(buffer[segment_start + 1:segment_start + 3], "big")
                width = int.from_bytes(buffer[segment_start + 3:segment_start + 5], "big")
                components = buffer[segment_start + 5]
                if components < 1 or length < 8 + 3 * components:
                    raise ImageHeaderError("The JPEG image's frame header is corrupt.")
                self._checked("image/jpeg", width, height, self._orientation)
                return
            if marker == 0xE1 and not self._exif_read:
                if len(buffer) < segment_end:
                    self._consume(start)
                    return
                payload = bytes(buffer[segment_start:segment_end])
                if payload.startswith(b"Exif\x00\x00"):
                    self._exif_read = True
                    self._orientation = _exif_orientation(payload[6:])
            available = min(segment_end, len(buffer))
            self._skip = segment_end - available
            self._consume(available)
            if self._skip:
                return

    def _consume(self, count):
        del self._buffer[:count]
        self._position += count


def _exif_orientation(tiff):
    """The Orientation (1 to 8) in IFD0 of an EXIF TIFF structure (TIFF 6.0 §2);
    1 when it is absent or unreadable: a bad EXIF block is common and harmless."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return 1
    order = "little" if tiff[:2] == b"II" else "big"
    offset = int.from_bytes(tiff[4:8], order)
    if offset + 2 > len(tiff):
        return 1
    count = int.from_bytes(tiff[offset:offset + 2], order)
    for index in range(min(count, (len(tiff) - offset - 2) // 12)):
        entry = tiff[offset + 2 + 12 * index:offset + 14 + 12 * index]
        if int.from_bytes(entry[0:2], order) == _EXIF_ORIENTATION_TAG:
            kind, values = int.from_bytes(entry[2:4], order), int.from_bytes(entry[4:8], order)
            value = int.from_bytes(entry[8:10], order)
            return value if kind == 3 and values == 1 and 1 <= value <= 8 else 1
    return 1


def sniff_image(head):
    """The ImageInfo of a file's first bytes (usually IMAGE_SNIFF_BYTES of them),
    None when it is not a PNG, GIF, JPEG or WebP; ImageHeaderError when its
    header lies or does not end within `head`."""
    sniffer = ImageSniffer()
    sniffer.feed(head)
    return sniffer.finish()


# Byte ranges (RFC 9110 §14, §13.1.5) -------------------------------------------------
# One range is served as 206 with Content-Range. Several are first sorted and
# merged where they overlap or touch (§15.3.7.2 allows it); if one range is
# left it is served as 206, otherwise the whole file as 200 (§14.2: a server
# may ignore Range). Players and download managers ask for one range; a
# multipart/byteranges answer would serve only the rare client that asks for
# several, and many small overlapping ranges are a known way to make a server
# work hard for nothing.

@dataclass(frozen=True, slots=True)
class ByteRange:
    first: int  # both inclusive, as in Content-Range
    last: int

    @property
    def length(self):
        return self.last - self.first + 1


_RANGE_SPEC_RE = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")


def _position(digits):
    """(exact order key, value capped at 10**MAX_RANGE_DIGITS) of a run of digits."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > MAX_RANGE_DIGITS:
        return (len(digits), digits), 10 ** MAX_RANGE_DIGITS
    return (len(digits), digits), int(digits)


def parse_range(header, length):
    """The byte range of a `Range` header to serve from a representation of
    `length` bytes, or None to serve all of it with 200: no header, a unit
    other than bytes, invalid syntax (§14.2: the header is then ignored), an
    empty representation (no byte range of it can be written), several ranges
    that don't merge into one, or more than MAX_RANGE_SPECS of them.
    RangeNotSatisfiable (416) when the header is valid and no range overlaps
    the representation (§14.1.1)."""
    if not header:
        return None
    unit, equals, range_set = header.partition("=")
    if not equals or not _TOKEN_TEXT_RE.match(unit) or unit.lower() != "bytes":
        return None
    elements = range_set.split(",")
    if len(elements) > MAX_RANGE_SPECS:
        return None
    specs = []
    for element in elements:
        element = element.strip(_OWS)
        if not element:
            continue  # §5.6.1: empty list elements are allowed and don't count
        match = _RANGE_SPEC_RE.fullmatch(element)
        if not match:
            return None
        first_digits, last_digits, suffix_digits = match.groups()
        if suffix_digits is not None:
            specs.append((None, _position(suffix_digits)[1]))
            continue
        first_key, first = _position(first_digits)
        if last_digits:
            last_key, last = _position(last_digits)
            if last_key < first_key:
                return None  # §14.1.1: last-pos less than first-pos is invalid
        else:
            last = None
        specs.append((first, last))
    if not specs:
        return None
    if length <= 0:
        return None
    satisfiable = []
    for first, last in specs:
        if first is None:  # a suffix: the last `last` bytes; all of them if it is longer
            if last > 0:
                satisfiable.append((max(0, length - last), length - 1))
        elif first < length:
            satisfiable.append((first, length - 1 if last is None else min(last, length - 1)))
    if not satisfiable:
        raise RangeNotSatisfiable(length)
    satisfiable.sort()
    merged = [list(satisfiable[0])]
    for first, last in satisfiable[1:]:
        if first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    if len(merged) > 1:
        return None
    return ByteRange(*merged[0])


_ENTITY_TAG_RE = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"\Z')  # RFC 9110 §8.8.3 opaque-tag


def if_range_matches(value, *, etag=None, last_modified=None, now=None):
    """RFC 9110 §13.1.5: whether a Range may be honoured given its If-Range.
    An entity-tag must equal the current strong `etag` (a weak tag never
    matches); an HTTP-date must equal `last_modified` (seconds since the epoch)
    exactly. Anything else, or an unreadable value, is False: the file is then
    served whole with 200."""
    value = value.strip(_OWS)
    if value.startswith("W/"):
        return False
    if value.startswith('"'):
        return (bool(_ENTITY_TAG_RE.match(value)) and etag is not None and not etag.startswith("W/")
                and value == etag)
    moment = parse_http_date(value, now)
    return moment is not None and last_modified is not None and moment == int(last_modified)


def select_range(range_header, length, *, if_range=None, etag=None, last_modified=None, now=None):
    """The whole Range decision for a GET of `length` bytes (RFC 9110 §13.2.2:
    If-Range first, then Range): a ByteRange to answer 206, None to answer 200
    with everything, or RangeNotSatisfiable for 416."""
    if not range_header:
        return None  # §13.1.5: If-Range without Range is ignored
    if if_range is not None and not if_range_matches(if_range, etag=etag, last_modified=last_modified, now=now):
        return None
    return parse_range(range_header, length)


def content_range(byte_range, length):
    """The Content-Range of a 206 (RFC 9110 §14.4): 'bytes 0-499/1234'."""
    return "bytes %d-%d/%d" % (byte_range.first, byte_range.last, length)


# Serving files: disposition, type and headers (RFC 6266, RFC 8187) -------------------

def normalized_content_type(content_type):
    """'Image/PNG; charset=x' → 'image/png'; None when it is not type/subtype."""
    media_type = (content_type or "").partition(";")[0].strip(_OWS).lower()
    return media_type if _MEDIA_TYPE_RE.match(media_type) else None


def upload_content_type(declared, image=None):
    """The type to store for an upload: the sniffed image type when there is
    one; DOWNLOAD_CONTENT_TYPE for a file declared as an image that isn't one,
    or declared as nothing readable; otherwise the declared type, normalized."""
    if image is not None:
        return image.content_type
    declared = normalized_content_type(declared)
    if declared is None or declared.startswith("image/") and declared != "image/svg+xml":
        return DOWNLOAD_CONTENT_TYPE
    return declared


def serving_for(content_type):
    """(Content-Type to send, "inline" or "attachment", extra headers) for a
    stored file: the types of INLINE_CONTENT_TYPES are shown in the browser as
    what they are; every other file downloads as DOWNLOAD_CONTENT_TYPE, so an
    HTML or SVG upload is never a page of ours."""
    media_type = normalized_content_type(content_type)
    if media_type in INLINE_CONTENT_TYPES:
        headers = PDF_RESPONSE_HEADERS if media_type == "application/pdf" else FILE_RESPONSE_HEADERS
        return media_type, "inline", headers
    return DOWNLOAD_CONTENT_TYPE, "attachment", FILE_RESPONSE_HEADERS


# RFC 8187 §3.2.1 attr-char: what may stand unencoded in an ext-value.
_ATTR_CHAR_SAFE = "!#$&+-.^_`|~"


def content_disposition(disposition, filename):
    """`inline` or `attachment` with the file's name, for every browser
    (RFC 6266 §4.3, Appendix D): filename="…" is an ASCII stand-in (accents
    dropped, other non-ASCII characters as "_", quotes and backslashes
    escaped) and, when that is not the name itself, filename*=UTF-8''… (RFC 8187)
    carries it exactly, which browsers prefer. The name passes through
    safe_filename() first, so no stored name can break the header."""
    if disposition not in ("inline", "attachment"):
        raise ValueError("disposition must be inline or attachment")
    name = safe_filename(filename)
    fallback = "".join(char for char in unicodedata.normalize("NFKD", name) if not unicodedata.combining(char))
    fallback = "".join(char if " " <= char <= "~" else "_" for char in fallback)
    header = '%s; filename="%s"' % (disposition, fallback.replace("\\", "\\\\").replace('"', '\\"'))
    if fallback != name or any(char in name for char in '\\"%'):  # some agents decode % (Appendix D)
        header += "; filename*=UTF-8''" + urllib.parse.quote(name, safe=_ATTR_CHAR_SAFE)
    return header


# Link previews: the address guard and OpenGraph --------------------------------------

def unfurl_address_allowed(address):
    """Whether a link preview may connect to `address`, an IP address as
    getaddrinfo() returns it. IPv4: anything outside BLOCKED_IPV4_NETWORKS.
    IPv6: only global unicast (2000::/3) outside BLOCKED_IPV6_NETWORKS; every
    form that embeds an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo)
    is refused rather than unwrapped. A scoped address ("fe80::1%eth0") or
    anything that isn't an address is refused."""
    if not isinstance(address, str) or "%" in address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 4:
        return not any(ip in network for network in BLOCKED_IPV4_NETWORKS)
    return ip in IPV6_GLOBAL_UNICAST and not any(ip in network for network in BLOCKED_IPV6_NETWORKS)


@dataclass(frozen=True, slots=True)
class LinkPreview:
    """What a page says about itself; any field may be None (Campfire shows a
    preview only with a title, a URL and a description)."""

    title: str | None
    description: str | None
    image: str | None
    url: str | None


# WHATWG Encoding §4.2: labels whose meaning on the web differs from Python's.
_WEB_CHARSETS = {
    "iso-8859-1": "cp1252", "latin1": "cp1252", "l1": "cp1252", "us-ascii": "cp1252", "ascii": "cp1252",
    "windows-1252": "cp1252", "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030",
    "euc-kr": "cp949", "ks_c_5601-1987": "cp949", "shift_jis": "cp932", "sjis": "cp932",
    "x-sjis": "cp932", "windows-31j": "cp932", "iso-8859-9": "cp1254", "tis-620": "cp874",
}
_META_CHARSET_RE = re.compile(rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([A-Za-z0-9_\-:.]+)", re.IGNORECASE)


def _web_codec(label, from_meta=False):
    """A charset label → a Python text codec name, or None (unknown, not a
    text encoding, or UTF-7, which the web forbids). A <meta> that names
    UTF-16 means UTF-8: the bytes it is written in are ASCII-compatible."""
    label = label.strip().strip("\"'").lower()
    label = _WEB_CHARSETS.get(label, label)
    if from_meta and label.startswith("utf-16"):
        label = "utf-8"
    try:
        info = codecs.lookup(label)
    except LookupError:
        return None
    if info.name in ("utf-7",) or not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def document_charset(body, content_type=None):
    """The codec to decode an HTML page with (WHATWG HTML §13.2.3.1): a BOM,
    then the Content-Type's charset, then a <meta> in the first
    CHARSET_PRESCAN_BYTES, then UTF-8."""
    for bom, name in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                      (codecs.BOM_UTF16_BE, "utf-16-be")):
        if body.startswith(bom):
            return name
    if content_type:
        try:
            _, params = parse_parameters(content_type)
        except ValueError:
            params = []
        for name, value in params:
            if name == "charset" and (codec := _web_codec(value)):
                return codec
    match = _META_CHARSET_RE.search(body[:CHARSET_PRESCAN_BYTES])
    if match and (codec := _web_codec(match.group(1).decode("ascii"), from_meta=True)):
        return codec
    return "utf-8"


_STRAY_LESS_THAN_RE = re.compile(r"<(?![A-Za-z!/?])")


class _EndOfHead(Exception):
    """Raised by the reader at </head> or <body>: nothing after it is read."""


class _HeadReader(HTMLParser):
    """Collects <meta property|name=… content=…> (the first of each key),
    <title>'s text and <base href> from a page's head; stops after
    MAX_PREVIEW_MARKUP_ITEMS tags, comments, texts and character references
    (html.parser spends a Python call on each, so this bounds the time a page
    can cost). Character references are counted as they come, so the title
    is kept as written and unescaped at the end."""

    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.meta = {}
        self.title = []
        self.title_chars = 0
        self.base = None
        self._in_title = False
        self._title_done = False
        self._items = 0

    def _count(self):
        self._items += 1
        if self._items > MAX_PREVIEW_MARKUP_ITEMS:
            raise _EndOfHead

    def handle_comment(self, data):
        self._count()

    def handle_decl(self, decl):
        self._count()

    def handle_pi(self, data):
        self._count()

    def unknown_decl(self, data):
        self._count()

    def handle_starttag(self, tag, attrs):
        self._count()
        if tag == "body":
            raise _EndOfHead
        values = {}
        for name, value in attrs:
            values.setdefault(name, value)
        if tag == "meta":
            key = (values.get("property") or values.get("name") or "").strip().lower()
            content = values.get("content")
            if key and content is not None:
                self.meta.setdefault(key, content)
        elif tag == "title" and not self._title_done:
            self._in_title = True
        elif tag == "base" and self.base is None and values.get("href"):
            self.base = values["href"]

    def handle_endtag(self, tag):
        self._count()
        if tag == "head":
            raise _EndOfHead
        if tag == "title" and self._in_title:
            self._in_title = False
            self._title_done = True

    def handle_data(self, data):
        self._count()
        self._title_text(data)

    def handle_entityref(self, name):
        self._count()
        self._title_text("&%s;" % name)

    def handle_charref(self, name):
        self._count()
        self._title_text("&#%s;" % name)

    def _title_text(self, text):
        if self._in_title and self.title_chars < MAX_PREVIEW_TITLE_CHARS * 4:
            self.title.append(text)
            self.title_chars += len(text)


def _clean_text(text, limit):
    text = re.sub(r"[ \t\n\r\f]+", " ", text or "").strip(" ")  # HTML's white space; a no-break space stays
    if len(text) > limit:
        text = text[:limit - 1].rstrip() + "…"
    return text or None


def _absolute_url(value, base):
    """`value` resolved against `base`, if the result is an http(s) URL with a
    host (WHATWG URL: surrounding spaces and controls, inner tabs and newlines,
    are dropped first); otherwise None."""
    if value is None:
        return None
    value = re.sub(r"[\t\n\r]", "", value).strip("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f"
                                                  "\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c"
                                                  "\x1d\x1e\x1f ")
    if not value:
        return None
    try:
        url = urllib.parse.urljoin(base, value)
        parts = urllib.parse.urlsplit(url)
        parts.port  # ValueError for a port that isn't a number
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_PREVIEW_URL_CHARS:
        return None
    return url


def extract_link_preview(body, page_url, content_type=None):
    """A LinkPreview from an HTML page's bytes (at most MAX_PREVIEW_PAGE_BYTES
    of them are read, and only up to </head> or <body>): og:title, then
    twitter:title, then <title>; og:description, then twitter:description,
    then <meta name=description>; og:image (the first), resolved against the
    page (or its <base href>) and only if http(s); og:url if http(s), else the
    page's URL. `page_url` is the address the page came from after redirects;
    `content_type` its Content-Type header, for the charset."""
    body = bytes(body[:MAX_PREVIEW_PAGE_BYTES])
    codec = document_charset(body, content_type)
    text = body.decode(codec, "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    # A "<" that can't open markup is text to an HTML tokenizer and "</>" is nothing
    # (WHATWG HTML §13.2.5.6-7); html.parser would spend a Python call on each, uncounted.
    text = _STRAY_LESS_THAN_RE.sub("&lt;", text.replace("</>", ""))
    reader = _HeadReader()
    try:
        # Fed in pieces, without close(): html.parser rescans what it holds back (an
        # unclosed comment or tag) on every feed, and at close() once per "<" in it,
        # which is quadratic. A head whose unfinished markup outgrows
        # PREVIEW_PENDING_CHARS is read no further.
        for start in range(0, len(text), PREVIEW_FEED_CHARS):
            reader.feed(text[start:start + PREVIEW_FEED_CHARS])
            if len(reader.rawdata) > PREVIEW_PENDING_CHARS:
                break
    except _EndOfHead:
        pass
    except (AssertionError, ValueError):  # html.parser on some malformed markup; keep what was read
        pass
    meta = reader.meta
    page_url = _absolute_url(page_url, page_url)
    base = _absolute_url(reader.base, page_url) if page_url else None
    base = base or page_url or ""

    def first(*keys):
        for key in keys:
            value = meta.get(key)
            if value is not None and value.strip():
                return value
        return None

    title = _clean_text(first("og:title", "twitter:title") or unescape("".join(reader.title)),
                        MAX_PREVIEW_TITLE_CHARS)
    description = _clean_text(first("og:description", "twitter:description", "description"),
                              MAX_PREVIEW_DESCRIPTION_CHARS)
    image = None
    for key in ("og:image", "og:image:url", "og:image:secure_url", "twitter:image", "twitter:image:src"):
        if meta.get(key) and (image := _absolute_url(meta[key], base)):
            break
    url = _absolute_url(meta.get("og:url"), base) or page_url
    return LinkPreview(title, description, image, url)


####
#### 11. Storage
####
# Campfire's own schema and migrations (db/schema.rb, db/migrate/*.rb), written
# the way Rails' SQLite adapter writes them, so a storage either program created
# opens in the other. A storage is brought forward exactly as Rails' `db:prepare`
# would: each pending migration in version order, in its own transaction that
# also records its version in schema_migrations. A new storage is created from
# the schema (as Rails loads db/schema.rb) with every version recorded. Our own
# additions live in tables and indexes named campfire_py_*, recorded in
# campfire_py_migrations: no Rails migration can take those names.

# db/schema.rb, version 2025_12_12_154340, as Rails 8.2 creates it.
RAILS_SCHEMA = """
CREATE TABLE "accounts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "created_at" datetime(6) NOT NULL, "custom_styles" text, "join_code" varchar NOT NULL, "name" varchar NOT NULL, "settings" json, "singleton_guard" integer DEFAULT 0 NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_accounts_on_singleton_guard" ON "accounts" ("singleton_guard");
CREATE TABLE "action_text_rich_texts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "body" text, "created_at" datetime(6) NOT NULL, "name" varchar NOT NULL, "record_id" bigint NOT NULL, "record_type" varchar NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_action_text_rich_texts_uniqueness" ON "action_text_rich_texts" ("record_type", "record_id", "name");
CREATE TABLE "active_storage_attachments" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "blob_id" bigint NOT NULL, "created_at" datetime(6) NOT NULL, "name" varchar NOT NULL, "record_id" bigint NOT NULL, "record_type" varchar NOT NULL, CONSTRAINT "fk_rails_c3b3935057"
FOREIGN KEY ("blob_id")
  REFERENCES "active_storage_blobs" ("id")
);
CREATE INDEX "index_active_storage_attachments_on_blob_id" ON "active_storage_attachments" ("blob_id");
CREATE UNIQUE INDEX "index_active_storage_attachments_uniqueness" ON "active_storage_attachments" ("record_type", "record_id", "name", "blob_id");
CREATE TABLE "active_storage_blobs" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "byte_size" bigint NOT NULL, "checksum" varchar, "content_type" varchar, "created_at" datetime(6) NOT NULL, "filename" varchar NOT NULL, "key" varchar NOT NULL, "metadata" text, "service_name" varchar NOT NULL);
CREATE UNIQUE INDEX "index_active_storage_blobs_on_key" ON "active_storage_blobs" ("key");
CREATE TABLE "active_storage_variant_records" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "blob_id" bigint NOT NULL, "variation_digest" varchar NOT NULL, CONSTRAINT "fk_rails_993965df05"
FOREIGN KEY ("blob_id")
  REFERENCES "active_storage_blobs" ("id")
);
CREATE UNIQUE INDEX "index_active_storage_variant_records_uniqueness" ON "active_storage_variant_records" ("blob_id", "variation_digest");
CREATE TABLE "bans" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "created_at" datetime(6) NOT NULL, "ip_address" varchar NOT NULL, "updated_at" datetime(6) NOT NULL, "user_id" integer NOT NULL, CONSTRAINT "fk_rails_070022cd76"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_bans_on_ip_address" ON "bans" ("ip_address");
CREATE INDEX "index_bans_on_user_id" ON "bans" ("user_id");
CREATE TABLE "boosts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "booster_id" integer NOT NULL, "content" varchar(16) NOT NULL, "created_at" datetime(6) NOT NULL, "message_id" integer NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_3539c52d73"
FOREIGN KEY ("message_id")
  REFERENCES "messages" ("id")
);
CREATE INDEX "index_boosts_on_booster_id" ON "boosts" ("booster_id");
CREATE INDEX "index_boosts_on_message_id" ON "boosts" ("message_id");
CREATE TABLE "memberships" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "connected_at" datetime(6), "connections" integer DEFAULT 0 NOT NULL, "created_at" datetime(6) NOT NULL, "involvement" varchar DEFAULT 'mentions', "room_id" integer NOT NULL, "unread_at" datetime(6), "updated_at" datetime(6) NOT NULL, "user_id" integer NOT NULL);
CREATE INDEX "index_memberships_on_room_id_and_created_at" ON "memberships" ("room_id", "created_at");
CREATE UNIQUE INDEX "index_memberships_on_room_id_and_user_id" ON "memberships" ("room_id", "user_id");
CREATE INDEX "index_memberships_on_room_id" ON "memberships" ("room_id");
CREATE INDEX "index_memberships_on_user_id" ON "memberships" ("user_id");
CREATE TABLE "messages" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "client_message_id" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "creator_id" integer NOT NULL, "room_id" integer NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_a8db0fb63a"
FOREIGN KEY ("room_id")
  REFERENCES "rooms" ("id")
, CONSTRAINT "fk_rails_761a2f12b3"
FOREIGN KEY ("creator_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_messages_on_creator_id" ON "messages" ("creator_id");
CREATE INDEX "index_messages_on_room_id" ON "messages" ("room_id");
CREATE TABLE "push_subscriptions" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "auth_key" varchar, "created_at" datetime(6) NOT NULL, "endpoint" varchar, "p256dh_key" varchar, "updated_at" datetime(6) NOT NULL, "user_agent" varchar, "user_id" integer NOT NULL, CONSTRAINT "fk_rails_43d43720fc"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "idx_on_endpoint_p256dh_key_auth_key_7553014576" ON "push_subscriptions" ("endpoint", "p256dh_key", "auth_key");
CREATE INDEX "index_push_subscriptions_on_user_id" ON "push_subscriptions" ("user_id");
CREATE TABLE "rooms" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "created_at" datetime(6) NOT NULL, "creator_id" bigint NOT NULL, "name" varchar, "type" varchar NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE TABLE "searches" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "created_at" datetime(6) NOT NULL, "query" varchar NOT NULL, "updated_at" datetime(6) NOT NULL, "user_id" integer NOT NULL, CONSTRAINT "fk_rails_e192b86393"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_searches_on_user_id" ON "searches" ("user_id");
CREATE TABLE "sessions" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "created_at" datetime(6) NOT NULL, "ip_address" varchar, "last_active_at" datetime(6) NOT NULL, "token" varchar NOT NULL, "updated_at" datetime(6) NOT NULL, "user_agent" varchar, "user_id" integer NOT NULL, CONSTRAINT "fk_rails_758836b4f0"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE UNIQUE INDEX "index_sessions_on_token" ON "sessions" ("token");
CREATE INDEX "index_sessions_on_user_id" ON "sessions" ("user_id");
CREATE TABLE "users" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "bio" text, "bot_token" varchar, "created_at" datetime(6) NOT NULL, "email_address" varchar, "name" varchar NOT NULL, "password_digest" varchar, "role" integer DEFAULT 0 NOT NULL, "status" integer DEFAULT 0 NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_users_on_bot_token" ON "users" ("bot_token");
CREATE UNIQUE INDEX "index_users_on_email_address" ON "users" ("email_address");
CREATE TABLE "webhooks" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "url" varchar, "user_id" integer NOT NULL, CONSTRAINT "fk_rails_51bf96d3bc"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_webhooks_on_user_id" ON "webhooks" ("user_id");
CREATE VIRTUAL TABLE IF NOT EXISTS message_search_index USING fts5 (body, tokenize=porter);
"""

# db/migrate, in version order: (version, file name, the statements Rails runs).
# The first eight are the ONCE releases' (Rails 7.2, whose table rebuilds write
# DEFAULT NULL); the two Active Storage migrations of 2025-08-25 find their
# tables already there.
RAILS_MIGRATIONS = (
    ("20231215043540", "create_initial_schema", """
CREATE TABLE "accounts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "join_code" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE TABLE "action_text_rich_texts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "body" text, "record_type" varchar NOT NULL, "record_id" bigint NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_action_text_rich_texts_uniqueness" ON "action_text_rich_texts" ("record_type", "record_id", "name");
CREATE TABLE "active_storage_blobs" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "key" varchar NOT NULL, "filename" varchar NOT NULL, "content_type" varchar, "metadata" text, "service_name" varchar NOT NULL, "byte_size" bigint NOT NULL, "checksum" varchar, "created_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_active_storage_blobs_on_key" ON "active_storage_blobs" ("key");
CREATE TABLE "active_storage_attachments" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "record_type" varchar NOT NULL, "record_id" bigint NOT NULL, "blob_id" bigint NOT NULL, "created_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_c3b3935057"
FOREIGN KEY ("blob_id")
  REFERENCES "active_storage_blobs" ("id")
);
CREATE INDEX "index_active_storage_attachments_on_blob_id" ON "active_storage_attachments" ("blob_id");
CREATE UNIQUE INDEX "index_active_storage_attachments_uniqueness" ON "active_storage_attachments" ("record_type", "record_id", "name", "blob_id");
CREATE TABLE "active_storage_variant_records" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "blob_id" bigint NOT NULL, "variation_digest" varchar NOT NULL, CONSTRAINT "fk_rails_993965df05"
FOREIGN KEY ("blob_id")
  REFERENCES "active_storage_blobs" ("id")
);
CREATE UNIQUE INDEX "index_active_storage_variant_records_uniqueness" ON "active_storage_variant_records" ("blob_id", "variation_digest");
CREATE TABLE "rooms" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "type" varchar NOT NULL, "creator_id" bigint NOT NULL);
CREATE TABLE "users" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar, "password_digest" varchar, "active" boolean DEFAULT 1);
CREATE UNIQUE INDEX "index_users_on_email_address" ON "users" ("email_address");
CREATE TABLE "messages" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "room_id" integer NOT NULL, "creator_id" integer NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "client_message_id" varchar NOT NULL, CONSTRAINT "fk_rails_a8db0fb63a"
FOREIGN KEY ("room_id")
  REFERENCES "rooms" ("id")
, CONSTRAINT "fk_rails_761a2f12b3"
FOREIGN KEY ("creator_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_messages_on_creator_id" ON "messages" ("creator_id");
CREATE INDEX "index_messages_on_room_id" ON "messages" ("room_id");
CREATE TABLE "boosts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "message_id" integer NOT NULL, "booster_id" integer NOT NULL, "content" varchar(16) NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_3539c52d73"
FOREIGN KEY ("message_id")
  REFERENCES "messages" ("id")
);
CREATE INDEX "index_boosts_on_booster_id" ON "boosts" ("booster_id");
CREATE INDEX "index_boosts_on_message_id" ON "boosts" ("message_id");
CREATE TABLE "memberships" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "room_id" integer NOT NULL, "user_id" integer NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "unread_at" datetime(6), "involvement" varchar DEFAULT 'mentions', "connections" integer DEFAULT 0 NOT NULL, "connected_at" datetime(6));
CREATE INDEX "index_memberships_on_room_id_and_created_at" ON "memberships" ("room_id", "created_at");
CREATE UNIQUE INDEX "index_memberships_on_room_id_and_user_id" ON "memberships" ("room_id", "user_id");
CREATE INDEX "index_memberships_on_room_id" ON "memberships" ("room_id");
CREATE INDEX "index_memberships_on_user_id" ON "memberships" ("user_id");
CREATE TABLE "push_subscriptions" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "endpoint" varchar DEFAULT NULL, "p256dh_key" varchar DEFAULT NULL, "auth_key" varchar DEFAULT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "user_agent" varchar DEFAULT NULL, CONSTRAINT "fk_rails_43d43720fc"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "idx_on_endpoint_p256dh_key_auth_key_7553014576" ON "push_subscriptions" ("endpoint", "p256dh_key", "auth_key");
CREATE INDEX "index_push_subscriptions_on_user_id" ON "push_subscriptions" ("user_id");
CREATE TABLE "searches" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "query" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_e192b86393"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_searches_on_user_id" ON "searches" ("user_id");
create virtual table message_search_index using fts5(body, tokenize=porter);"""),
    ("20231220143106", "add_bio_to_users", """
ALTER TABLE "users" ADD "bio" text;"""),
    ("20240110071740", "create_sessions", """
CREATE TABLE "sessions" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "token" varchar NOT NULL, "ip_address" varchar, "user_agent" varchar, "last_active_at" datetime(6) NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_758836b4f0"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_sessions_on_user_id" ON "sessions" ("user_id");
CREATE UNIQUE INDEX "index_sessions_on_token" ON "sessions" ("token");"""),
    ("20240115124901", "remove_owner_role", """
update users set role = 1 where role = 2;"""),
    ("20240130003150", "create_webhooks", """
CREATE TABLE "webhooks" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "url" varchar, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_51bf96d3bc"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_webhooks_on_user_id" ON "webhooks" ("user_id");"""),
    ("20240130213001", "add_custom_styles_to_accounts", """
ALTER TABLE "accounts" ADD "custom_styles" text;"""),
    ("20240131105830", "alter_users_set_password_digest_not_null", """
update users set password_digest = '' where password_digest is null;
CREATE TEMPORARY TABLE "ausers" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar DEFAULT NULL, "password_digest" varchar DEFAULT NULL, "active" boolean DEFAULT 1, "bio" text DEFAULT NULL);
CREATE UNIQUE INDEX "tindex_ausers_on_email_address" ON "ausers" ("email_address");
INSERT INTO "ausers" ("id","name","created_at","updated_at","role","email_address","password_digest","active","bio") SELECT "id","name","created_at","updated_at","role","email_address","password_digest","active","bio" FROM "users";
DROP TABLE "users";
CREATE TABLE "users" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar DEFAULT NULL, "password_digest" varchar NOT NULL, "active" boolean DEFAULT 1, "bio" text DEFAULT NULL);
CREATE UNIQUE INDEX "index_users_on_email_address" ON "users" ("email_address");
INSERT INTO "users" ("id","name","created_at","updated_at","role","email_address","password_digest","active","bio") SELECT "id","name","created_at","updated_at","role","email_address","password_digest","active","bio" FROM "ausers";
DROP TABLE "ausers";"""),
    ("20240209110503", "alter_users_add_bot_token", """
ALTER TABLE "users" ADD "bot_token" varchar;
CREATE UNIQUE INDEX "index_users_on_bot_token" ON "users" ("bot_token");
CREATE TEMPORARY TABLE "ausers" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar DEFAULT NULL, "password_digest" varchar NOT NULL, "active" boolean DEFAULT 1, "bio" text DEFAULT NULL, "bot_token" varchar DEFAULT NULL);
CREATE UNIQUE INDEX "tindex_ausers_on_email_address" ON "ausers" ("email_address");
CREATE UNIQUE INDEX "tindex_ausers_on_bot_token" ON "ausers" ("bot_token");
INSERT INTO "ausers" ("id","name","created_at","updated_at","role","email_address","password_digest","active","bio","bot_token") SELECT "id","name","created_at","updated_at","role","email_address","password_digest","active","bio","bot_token" FROM "users";
DROP TABLE "users";
CREATE TABLE "users" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar DEFAULT NULL, "password_digest" varchar DEFAULT NULL, "active" boolean DEFAULT 1, "bio" text DEFAULT NULL, "bot_token" varchar DEFAULT NULL);
CREATE UNIQUE INDEX "index_users_on_email_address" ON "users" ("email_address");
CREATE UNIQUE INDEX "index_users_on_bot_token" ON "users" ("bot_token");
INSERT INTO "users" ("id","name","created_at","updated_at","role","email_address","password_digest","active","bio","bot_token") SELECT "id","name","created_at","updated_at","role","email_address","password_digest","active","bio","bot_token" FROM "ausers";
DROP TABLE "ausers";"""),
    ("20250825100957", "add_service_name_to_active_storage_blobs", """
"""),
    ("20250825100958", "create_active_storage_variant_records", """
CREATE TABLE IF NOT EXISTS "active_storage_variant_records" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "blob_id" bigint NOT NULL, "variation_digest" varchar NOT NULL, CONSTRAINT "fk_rails_993965df05"
FOREIGN KEY ("blob_id")
  REFERENCES "active_storage_blobs" ("id")
);
CREATE UNIQUE INDEX IF NOT EXISTS "index_active_storage_variant_records_uniqueness" ON "active_storage_variant_records" ("blob_id", "variation_digest");"""),
    ("20250825100959", "remove_not_null_on_active_storage_blobs_checksum", """
CREATE TEMPORARY TABLE "aactive_storage_blobs" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "key" varchar NOT NULL, "filename" varchar NOT NULL, "content_type" varchar, "metadata" text, "service_name" varchar NOT NULL, "byte_size" bigint NOT NULL, "checksum" varchar, "created_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "tindex_aactive_storage_blobs_on_key" ON "aactive_storage_blobs" ("key");
INSERT INTO "aactive_storage_blobs" ("id","key","filename","content_type","metadata","service_name","byte_size","checksum","created_at") SELECT "id","key","filename","content_type","metadata","service_name","byte_size","checksum","created_at" FROM "active_storage_blobs";
DROP TABLE "active_storage_blobs";
CREATE TABLE "active_storage_blobs" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "key" varchar NOT NULL, "filename" varchar NOT NULL, "content_type" varchar, "metadata" text, "service_name" varchar NOT NULL, "byte_size" bigint NOT NULL, "checksum" varchar, "created_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_active_storage_blobs_on_key" ON "active_storage_blobs" ("key");
INSERT INTO "active_storage_blobs" ("id","key","filename","content_type","metadata","service_name","byte_size","checksum","created_at") SELECT "id","key","filename","content_type","metadata","service_name","byte_size","checksum","created_at" FROM "aactive_storage_blobs";
DROP TABLE "aactive_storage_blobs";"""),
    ("20251126092013", "create_bans", """
CREATE TABLE "bans" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "user_id" integer NOT NULL, "ip_address" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, CONSTRAINT "fk_rails_070022cd76"
FOREIGN KEY ("user_id")
  REFERENCES "users" ("id")
);
CREATE INDEX "index_bans_on_user_id" ON "bans" ("user_id");
CREATE INDEX "index_bans_on_ip_address" ON "bans" ("ip_address");"""),
    ("20251126115722", "change_active_to_status_on_users", """
ALTER TABLE "users" ADD "status" integer DEFAULT 0 NOT NULL;
UPDATE users SET status = 1 WHERE active = 0;
CREATE TEMPORARY TABLE "ausers" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar, "password_digest" varchar, "active" boolean DEFAULT 1, "bio" text, "bot_token" varchar, "status" integer DEFAULT 0 NOT NULL);
CREATE UNIQUE INDEX "tindex_ausers_on_email_address" ON "ausers" ("email_address");
CREATE UNIQUE INDEX "tindex_ausers_on_bot_token" ON "ausers" ("bot_token");
INSERT INTO "ausers" ("id","name","created_at","updated_at","role","email_address","password_digest","active","bio","bot_token","status") SELECT "id","name","created_at","updated_at","role","email_address","password_digest","active","bio","bot_token","status" FROM "users";
DROP TABLE "users";
CREATE TABLE "users" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "name" varchar NOT NULL, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL, "role" integer DEFAULT 0 NOT NULL, "email_address" varchar, "password_digest" varchar, "bio" text, "bot_token" varchar, "status" integer DEFAULT 0 NOT NULL);
CREATE UNIQUE INDEX "index_users_on_email_address" ON "users" ("email_address");
CREATE UNIQUE INDEX "index_users_on_bot_token" ON "users" ("bot_token");
INSERT INTO "users" ("id","name","created_at","updated_at","role","email_address","password_digest","bio","bot_token","status") SELECT "id","name","created_at","updated_at","role","email_address","password_digest","bio","bot_token","status" FROM "ausers";
DROP TABLE "ausers";"""),
    ("20251126130131", "add_account_settings", """
ALTER TABLE "accounts" ADD "settings" json;"""),
    ("20251212154340", "add_singleton_constraint_to_accounts", """
ALTER TABLE "accounts" ADD "singleton_guard" integer DEFAULT 0 NOT NULL;
CREATE UNIQUE INDEX "index_accounts_on_singleton_guard" ON "accounts" ("singleton_guard");"""),
)

# Versions before the first file are the 2023 history squashed into it (Rails
# lists them as "NO FILE" and ignores them).
RAILS_FIRST_VERSION = RAILS_MIGRATIONS[0][0]
RAILS_CREATE_BANS = "20251126092013"
RAILS_ONCE_ERA_LAST = "20240209110503"  # the first ONCE releases knew migrations up to this one
RAILS_LATEST_VERSION = RAILS_MIGRATIONS[-1][0]
RAILS_INTERNAL_TABLES = """
CREATE TABLE IF NOT EXISTS "schema_migrations" ("version" varchar NOT NULL PRIMARY KEY);
CREATE TABLE IF NOT EXISTS "ar_internal_metadata" ("key" varchar NOT NULL PRIMARY KEY, "value" varchar, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
"""
# Campfire runs in production (config/environments/production.rb); Rails records
# the environment a storage was migrated in and refuses destructive tasks in it.
RAILS_ENVIRONMENT = "production"

# Ours: ordered, named, each applied once inside a transaction and recorded in
# campfire_py_migrations. Storages of earlier releases also recorded
# 0001_campfire_schema, the Rails schema those releases created themselves.
MIGRATIONS = (
    ("0002_message_paging_indexes", """
        CREATE INDEX IF NOT EXISTS "campfire_py_messages_by_room_and_created_at" ON "messages" ("room_id", "created_at");
        CREATE INDEX IF NOT EXISTS "campfire_py_messages_by_room_and_updated_at" ON "messages" ("room_id", "updated_at");
    """),
    # A retried post is found by its client_message_id without scanning the room.
    ("0003_message_client_id_index", """
        CREATE INDEX IF NOT EXISTS "campfire_py_messages_by_client_message_id" ON "messages" ("client_message_id");
    """),
    # A new message marks rooms unread only for members not already marked:
    # this partial index holds just those, so a busy room isn't rescanned.
    ("0004_unread_candidates_index", """
        CREATE INDEX IF NOT EXISTS "campfire_py_memberships_unread_candidates" ON "memberships" ("room_id")
        WHERE "unread_at" IS NULL;
    """),
    # Deleted messages are remembered for a while, so a page catching up after
    # a reconnect (/refresh?since=) learns of deletions it missed, too.
    ("0005_message_deletions", """
        CREATE TABLE IF NOT EXISTS "campfire_py_message_deletions" ("message_id" integer PRIMARY KEY NOT NULL,
        "room_id" integer NOT NULL, "deleted_at" datetime(6) NOT NULL);
        CREATE INDEX IF NOT EXISTS "index_campfire_py_message_deletions_on_room_id_and_deleted_at"
        ON "campfire_py_message_deletions" ("room_id", "deleted_at");
    """),
    # Earlier releases named these indexes the way Rails names its own
    # (index_<table>_on_<columns>), which a later Rails migration could take.
    ("0006_own_index_names", """
        DROP INDEX IF EXISTS "index_messages_on_room_id_and_created_at";
        DROP INDEX IF EXISTS "index_messages_on_room_id_and_updated_at";
        DROP INDEX IF EXISTS "index_messages_on_client_message_id";
        DROP INDEX IF EXISTS "index_memberships_on_room_id_where_unread_at_is_null";
        CREATE INDEX IF NOT EXISTS "campfire_py_messages_by_room_and_created_at" ON "messages" ("room_id", "created_at");
        CREATE INDEX IF NOT EXISTS "campfire_py_messages_by_room_and_updated_at" ON "messages" ("room_id", "updated_at");
        CREATE INDEX IF NOT EXISTS "campfire_py_messages_by_client_message_id" ON "messages" ("client_message_id");
        CREATE INDEX IF NOT EXISTS "campfire_py_memberships_unread_candidates" ON "memberships" ("room_id")
        WHERE "unread_at" IS NULL;
    """),
    # A thread is a room of its own (so paging, search, refresh and permalinks work
    # in it unchanged), with no memberships: its parent room's members read it. To
    # Once Campfire it is an empty closed room nobody belongs to.
    ("0008_threads_mentions_bookmarks", """
        CREATE TABLE IF NOT EXISTS "campfire_py_threads" ("room_id" integer PRIMARY KEY NOT NULL,
        "parent_message_id" integer NOT NULL, "parent_room_id" integer NOT NULL, "created_at" datetime(6) NOT NULL);
        CREATE UNIQUE INDEX IF NOT EXISTS "campfire_py_threads_by_parent_message_id"
        ON "campfire_py_threads" ("parent_message_id");
        CREATE INDEX IF NOT EXISTS "campfire_py_threads_by_parent_room_id" ON "campfire_py_threads" ("parent_room_id");
        CREATE TABLE IF NOT EXISTS "campfire_py_mentions" ("user_id" integer NOT NULL, "message_id" integer NOT NULL,
        "room_id" integer NOT NULL, "created_at" datetime(6) NOT NULL, "read_at" datetime(6),
        PRIMARY KEY ("user_id", "message_id"));
        CREATE INDEX IF NOT EXISTS "campfire_py_mentions_unread" ON "campfire_py_mentions" ("user_id", "room_id")
        WHERE "read_at" IS NULL;
        CREATE INDEX IF NOT EXISTS "campfire_py_mentions_by_message_id" ON "campfire_py_mentions" ("message_id");
        CREATE TABLE IF NOT EXISTS "campfire_py_bookmarks" ("user_id" integer NOT NULL, "message_id" integer NOT NULL,
        "created_at" datetime(6) NOT NULL, PRIMARY KEY ("user_id", "message_id"));
        CREATE INDEX IF NOT EXISTS "campfire_py_bookmarks_by_message_id" ON "campfire_py_bookmarks" ("message_id");
    """),
)

# The SQLite result codes that mean "this change can't be saved right now" (503), not a bug (500):
# https://sqlite.org/rescode.html, primary codes.
SQLITE_UNAVAILABLE_CODES = frozenset((5, 6, 8, 10, 13, 14))  # BUSY LOCKED READONLY IOERR FULL CANTOPEN
SQLITE_DAMAGED_CODES = frozenset((11, 26))                   # CORRUPT NOTADB
WRITE_REFUSED_MESSAGE = "The change could not be saved; please try again."


class Database:
    """One SQLite connection in WAL mode, used from the event loop's thread."""

    def __init__(self, path):
        self.path = path
        if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError("%s is read-only for this user: the server writes every message to it." % path)
        try:
            self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                              cached_statements=256)
            self.connection.row_factory = sqlite3.Row
            self.connection.execute("PRAGMA busy_timeout = %d" % SQLITE_BUSY_TIMEOUT_MS)
            self._refuse_newer_schema()  # before anything is changed, even the journal mode
            mode = self.connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise ConfigError("%s is not a usable SQLite database (%s)." % (path, error)) from error
        if mode.lower() != "wal":
            raise ConfigError("%s could not be switched to WAL mode." % path)
        # FULL: a commit is on disk before the response that acknowledges it.
        self.connection.execute("PRAGMA synchronous = FULL")
        self.connection.execute("PRAGMA foreign_keys = ON")
        # Every request's writes run in a savepoint (see atomic()); SQLite keeps
        # a savepoint's undo pages in a temporary file unless told to use memory,
        # and that file costs more than the writes themselves. What memory holds
        # is at most the pages one request changes, or one query's sort.
        self.connection.execute("PRAGMA temp_store = MEMORY")
        self._depth = 0
        self._committing = False  # commit_batch is writing what the group deferred
        # Group commit (the server turns it on): the writes of the requests
        # handled together share one transaction and one fsync, and their
        # responses wait for that commit (see Server.flush_writes).
        self.group_commit = False
        self.batch_open = False
        self.batch_lost = False          # SQLite undid the group's whole transaction (a full disk)
        self.batch_writes = 0            # atomic() blocks in the open group
        self.failed_at = None            # monotonic time of the last refused write or damaged read
        self.on_batch_opened = None
        self.on_rollback = lambda: None  # what was read inside an undone savepoint may be cached
        self._after_commit = []
        self._deferred = []  # (sql, params) run just before COMMIT; see defer()
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
        """A transaction (BEGIN IMMEDIATE); nested calls become savepoints. Under
        group commit every outermost call is a savepoint of the group's shared
        transaction, so one request's failure undoes only its own writes.

        SQLite may undo a whole transaction by itself (a full disk while spilling
        pages, https://sqlite.org/lang_transaction.html "Response To Errors Within
        A Transaction"). Then the group is lost: no later write joins it (each is
        refused with 503 until the group ends), nothing it deferred runs, and
        every request in it is answered 503 (commit_batch returns False)."""
        if self.batch_lost:
            raise ServiceUnavailable(WRITE_REFUSED_MESSAGE)
        if self._depth or self.group_commit:
            if not self._depth and not self.batch_open:
                self.connection.execute("BEGIN IMMEDIATE")
                self.batch_open = True
                self.batch_writes = 0
                self.on_batch_opened()
            if not self._depth:
                self.batch_writes += 1
            with self._savepoint("sp%d" % self._depth):
                yield self
            return
        self.connection.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self
            self._run_deferred()
            self.connection.execute("COMMIT")
        except BaseException as error:
            self._deferred.clear()
            self._after_commit.clear()
            if self.connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.connection.execute("ROLLBACK")
            self._note_failure(error)
            self.on_rollback()
            raise
        else:
            self.failed_at = None
            self._depth = 0
            self._run_after_commit()
        finally:
            self._depth = 0

    @contextlib.contextmanager
    def _savepoint(self, name):
        self.connection.execute("SAVEPOINT " + name)
        self._depth += 1
        deferred_before, after_commit_before = len(self._deferred), len(self._after_commit)
        try:
            yield
        except BaseException as error:
            del self._deferred[deferred_before:]
            del self._after_commit[after_commit_before:]  # what it caused didn't happen
            try:
                if not self.connection.in_transaction:
                    raise sqlite3.OperationalError("the transaction was rolled back")
                self.connection.execute("ROLLBACK TO " + name)
                self.connection.execute("RELEASE " + name)
            except sqlite3.Error:
                self._lose_batch()
            self._note_failure(error)
            self.on_rollback()
            raise
        else:
            self.connection.execute("RELEASE " + name)
        finally:
            self._depth -= 1

    @property
    def in_atomic(self):
        """Whether a write now is inside atomic() (or the group's commit, which writes what it deferred)."""
        return self._depth > 0 or self._committing

    def _lose_batch(self):
        """The group's transaction is gone (SQLite undid it): nothing of it may persist."""
        log.error("the database undid a whole group of writes (is the disk full?); every request "
                  "in it is answered 503")
        self._deferred.clear()
        self._after_commit.clear()
        if self.batch_open:
            self.batch_lost = True
        with contextlib.suppress(sqlite3.Error):
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")

    def _note_failure(self, error):
        if isinstance(error, sqlite3.Error) and sqlite_failure(error) != "constraint":
            self.failed_at = time.monotonic()

    @property
    def failing(self):
        """True while the latest refused write (or damaged read) is recent and no write has succeeded since."""
        failed = self.failed_at
        return failed is not None and time.monotonic() - failed < FAILURE_WINDOW

    def defer(self, sql, params):
        """Run a write at the end of the transaction, just before COMMIT, in the
        order deferred; a savepoint rolled back drops what it deferred.

        For the search index: FTS5 writes out its pending rows as a new index
        segment whenever a savepoint begins or ends, so a row written inside
        each request's savepoint costs a segment (and later merges) per message;
        deferred, a whole group's rows make one segment."""
        if not (self._depth or self.batch_open):
            raise RuntimeError("defer() needs a transaction (use atomic())")
        self._deferred.append((sql, params))

    def _run_deferred(self):
        deferred, self._deferred = self._deferred, []
        for sql, group in itertools.groupby(deferred, key=lambda item: item[0]):
            self.connection.executemany(sql, [params for _, params in group])

    def after_commit(self, callback):
        """Run callback once what was written so far is durable (now, outside a transaction);
        never, if the savepoint or transaction it was asked in is rolled back."""
        if self.batch_open or self._depth:
            self._after_commit.append(callback)
        else:
            callback()

    def _run_after_commit(self):
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.error("after-commit callback failed:\n%s", traceback.format_exc())

    def commit_batch(self):
        """Commit the group's transaction; False (and rolled back) if it failed."""
        if not self.batch_open:
            return True
        callbacks, self._after_commit = self._after_commit, []
        self.batch_open = False
        if self.batch_lost:
            self.batch_lost = False
            self._deferred.clear()
            return False
        self._committing = True
        try:
            self._run_deferred()
            self.connection.execute("COMMIT")
        except sqlite3.Error as error:
            self._deferred.clear()
            log.error("group commit failed: %s", error)
            with contextlib.suppress(sqlite3.Error):
                if self.connection.in_transaction:
                    self.connection.execute("ROLLBACK")
            self.failed_at = time.monotonic()
            return False
        finally:
            self._committing = False
        self.failed_at = None
        self._after_commit = callbacks
        self._run_after_commit()
        return True

    def repair_search_tail(self):
        """Delete search rows past the newest message: only a lost write can leave them,
        and each would take the rowid of the next message posted."""
        newest = self.value("SELECT max(id) FROM messages") or 0
        orphans = self.value("SELECT count(*) FROM message_search_index WHERE rowid > ?", (newest,))
        if orphans:
            with self.atomic():
                self.execute("DELETE FROM message_search_index WHERE rowid > ?", (newest,))
            log.warning("removed %d search rows of messages that were never saved", orphans)
        return orphans

    def table_names(self):
        return {row[0] for row in self.all("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def rails_versions(self):
        """The versions in Rails' schema_migrations (an empty set when there is no such table)."""
        if "schema_migrations" not in self.table_names():
            return set()
        return {str(row[0]) for row in self.all("SELECT version FROM schema_migrations")}

    def _refuse_newer_schema(self):
        """A storage a newer Campfire migrated (a version we don't know, past the squashed
        2023 history) is refused before anything in it is changed."""
        known = {version for version, _, _ in RAILS_MIGRATIONS}
        unknown = sorted(version for version in self.rails_versions()
                         if version not in known and version >= RAILS_FIRST_VERSION)
        if unknown:
            self.connection.close()
            raise ConfigError(
                "%s was migrated by a newer Campfire than this server knows (its schema_migrations has "
                "%s; the newest this server knows is %s). Nothing in it was changed: run it with the "
                "Campfire that wrote it, or a newer campfire.py." % (self.path, ", ".join(unknown), RAILS_LATEST_VERSION))

    def pending_rails_migrations(self):
        """(version, name) of the Rails migrations this storage lacks, in the order they run;
        None for a storage with no schema at all (it would be created whole). Campfire's
        tables without schema_migrations lack them all, as far as can be told (and are refused)."""
        tables = self.table_names()
        if "schema_migrations" not in tables:
            if "campfire_py_migrations" in tables:
                return []
            if tables & {"users", "messages", "accounts"}:
                return [(version, name) for version, name, _ in RAILS_MIGRATIONS]
            return None
        done = self.rails_versions()
        return [(version, name) for version, name, _ in RAILS_MIGRATIONS if version not in done]

    def migrate_rails(self):
        """Bring Campfire's schema up to date as Rails' db:prepare would (see RAILS_MIGRATIONS)."""
        tables = self.table_names()
        if "schema_migrations" not in tables:
            if "campfire_py_migrations" in tables:
                # An earlier release of ours created this storage with today's schema
                # but recorded no Rails versions: record them, as loading db/schema.rb does.
                self._record_rails_schema(create=False)
            elif tables & {"users", "messages", "accounts"}:
                raise ConfigError("%s has Campfire's tables but no schema_migrations, so which of Rails' "
                                  "migrations it has can't be told; it was left unchanged." % self.path)
            else:
                self._record_rails_schema(create=True)
            return
        done = self.rails_versions()
        ran = False
        for version, name, script in RAILS_MIGRATIONS:
            if version not in done:
                self._run_rails_migration(version, name, script)
                ran = True
        if ran or "ar_internal_metadata" not in tables:
            with self.atomic():
                self._record_environment()

    def _record_rails_schema(self, *, create):
        with self.atomic():
            if create:
                for statement in _split_sql(RAILS_SCHEMA):
                    self.execute(statement)
            for statement in _split_sql(RAILS_INTERNAL_TABLES):
                self.execute(statement)
            self.connection.executemany("INSERT OR IGNORE INTO schema_migrations (version) VALUES (?)",
                                        [(version,) for version, _, _ in RAILS_MIGRATIONS])
            self._record_environment()
        if create:
            log.info("created Campfire's schema, version %s", RAILS_LATEST_VERSION)

    def _record_environment(self):
        for statement in _split_sql(RAILS_INTERNAL_TABLES):
            self.execute(statement)
        stamp = utc_now_text()
        self.execute("INSERT INTO ar_internal_metadata (key, value, created_at, updated_at) VALUES "
                     "('environment', ?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                     "updated_at = excluded.updated_at", (RAILS_ENVIRONMENT, stamp, stamp))

    def _run_rails_migration(self, version, name, script):
        """One migration and its schema_migrations row in one transaction. A table rebuild
        drops a table others refer to: as Rails does, foreign keys are checked at commit
        (defer_foreign_keys), when every row is back."""
        try:
            with self.atomic():
                self.execute("PRAGMA defer_foreign_keys = ON")
                aside = self._move_our_bans_aside() if version == RAILS_CREATE_BANS else None
                for statement in _split_sql(script):
                    self.execute(statement)
                if aside:
                    self.execute('INSERT INTO "bans" ("id", "user_id", "ip_address", "created_at", "updated_at") '
                                 'SELECT "id", "user_id", "ip_address", "created_at", "updated_at" FROM "%s"' % aside)
                    self.execute('DROP TABLE "%s"' % aside)
                self.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
        except sqlite3.Error as error:
            raise ConfigError("%s: Campfire's migration %s_%s.rb failed (%s); the storage is as it was before it."
                              % (self.path, version, name, error)) from error
        log.info("migrated %s_%s.rb", version, name)

    def _move_our_bans_aside(self):
        """Earlier releases of ours created `bans` in storages Rails hadn't yet given one;
        Rails' CreateBans would then fail. Its rows wait aside while the migration runs."""
        if "bans" not in self.table_names():
            return None
        self.execute('DROP INDEX IF EXISTS "index_bans_on_user_id"')
        self.execute('DROP INDEX IF EXISTS "index_bans_on_ip_address"')
        self.execute('ALTER TABLE "bans" RENAME TO "campfire_py_bans_before_migration"')
        return "campfire_py_bans_before_migration"

    def migrate(self, migrations=MIGRATIONS):
        self.migrate_rails()
        self.execute('CREATE TABLE IF NOT EXISTS "campfire_py_migrations" '
                     '("name" varchar PRIMARY KEY NOT NULL, "applied_at" datetime(6) NOT NULL)')
        done = {row[0] for row in self.all('SELECT name FROM campfire_py_migrations')}
        for name, script in migrations:
            if name in done:
                continue
            with self.atomic():
                for statement in _split_sql(script):
                    self.execute(statement)
                self.execute("INSERT INTO campfire_py_migrations (name, applied_at) VALUES (?, ?)",
                             (name, utc_now_text()))
            log.info("applied migration %s", name)

    def healthy(self):
        """False while a refused write or a damaged read is recent (see failing), or when
        the file itself can't be read now (which counts as such a failure)."""
        if self.failing:
            return False
        try:
            self.value("SELECT max(id) FROM messages")  # reads the file, not just the connection
        except sqlite3.Error:
            self.failed_at = time.monotonic()
            return False
        return True

    def close(self):
        self.commit_batch()
        with contextlib.suppress(sqlite3.Error):
            # Without waiting: a reader that never lets go (Litestream holds a read
            # transaction all the time) only means the WAL stays for the next start.
            self.connection.execute("PRAGMA busy_timeout = 0")
            self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.connection.close()


def sqlite_failure(error):
    """What kind of failure an sqlite3 error is: "unavailable" (a full or read-only disk,
    I/O, a lock: 503), "damaged" (a corrupt file), "constraint", or "bug"."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return "bug"
    code &= 0xFF  # the primary result code
    if code in SQLITE_UNAVAILABLE_CODES:
        return "unavailable"
    if code in SQLITE_DAMAGED_CODES:
        return "damaged"
    return "constraint" if code == 19 else "bug"  # SQLITE_CONSTRAINT


def _split_sql(script):
    return [statement.strip() for statement in script.split(";\n") if statement.strip()]


# Backups -----------------------------------------------------------------------
# A backup is one tar archive (POSIX pax), written beside its final name and
# renamed into place only after it has been read back and checked:
#   manifest.json      format, versions, schema, counts, checks, and every file's SHA-256
#   database.sqlite3   a consistent copy made with SQLite's online backup API
#                      (https://sqlite.org/backup.html), one step at a time
#   content/<sha256>   the content of each other file of the storage (the secret, uploads),
#                      in a self-contained archive only
# Automatic backups keep file contents once, beside the archives in
# backups/content/, so an hourly backup of a large file store copies only what
# is new. `restore` looks for a content first in the archive, then in the
# content/ folder beside it.

BACKUP_NAME_RE = re.compile(r"\Acampfire-(\d{8}T\d{6}Z)(?:-(\d+))?\.tar\Z")
BACKUP_MANIFEST_MEMBER = "manifest.json"
BACKUP_DATABASE_MEMBER = "database.sqlite3"
BACKUP_PARTIAL_SUFFIX = ".partial"        # an archive being written: never listed, never restored
BACKUP_HASHES_FILE = "hashes.json"        # known SHA-256 of storage files by size, mtime and inode
RESTORE_ASIDE_PREFIX = "replaced-"        # storage/replaced-<time>/: what a forced restore set aside
RESTORE_STAGING_PREFIX = ".restore-"
BACKUP_WORK_PREFIX = ".backup-"
BACKUP_CONTENT_GRACE = 24 * 3600          # seconds: content newer than this is never pruned (a backup may be writing it)
BACKUP_PERIODS = {"hourly": "%Y%m%d%H", "daily": "%Y%m%d", "weekly": "%G%V"}  # UTC; ISO weeks
COUNTED_TABLES = ("users", "rooms", "memberships", "messages", "boosts", "active_storage_blobs")
_SHA256_RE = re.compile(r"\A[0-9a-f]{64}\Z")
_INTERVAL_RE = re.compile(r"\A\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*\Z")
INTERVAL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text, name="BACKUP_INTERVAL"):
    """"30m", "6h", "1d", "90s" → seconds; "0" → 0 (off)."""
    match = _INTERVAL_RE.match(text or "")
    if not match or (not match.group(2) and float(match.group(1)) != 0):
        raise ConfigError("%s must be a number with a unit (s, m, h or d), like 30m or 6h, or 0 for off; not %r."
                          % (name, text))
    seconds = float(match.group(1)) * INTERVAL_UNITS[match.group(2) or "s"]
    if 0 < seconds < BACKUP_MIN_INTERVAL:
        raise ConfigError("%s must be at least %d seconds, not %r." % (name, BACKUP_MIN_INTERVAL, text))
    return seconds


def parse_backup_keep(text):
    """BACKUP_KEEP "24,7,8" → {"hourly": 24, "daily": 7, "weekly": 8}."""
    parts = [part.strip() for part in (text or "").split(",")]
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ConfigError("BACKUP_KEEP must be three whole numbers, hourly,daily,weekly (like 24,7,8), not %r."
                          % text)
    return dict(zip(BACKUP_KEEP, map(int, parts)))


def backup_file_name(now):
    return time.strftime("campfire-%Y%m%dT%H%M%SZ.tar", time.gmtime(now))


def backup_time(name):
    """The UTC time in a backup's name (unix seconds), or None for a name not ours."""
    match = BACKUP_NAME_RE.match(name)
    return None if match is None else calendar.timegm(time.strptime(match.group(1), "%Y%m%dT%H%M%SZ"))


def backups_to_keep(stamps, keep=BACKUP_KEEP):
    """Of {name: unix time}, the names retention keeps: the newest backup of each of the
    latest keep["hourly"] hours that have one, of keep["daily"] days and keep["weekly"]
    ISO weeks (UTC); and the newest of all, always."""
    ordered = sorted(stamps, key=lambda name: (stamps[name], name), reverse=True)
    kept = set(ordered[:1])
    for rule, count in keep.items():
        seen = set()
        for name in ordered:
            period = time.strftime(BACKUP_PERIODS[rule], time.gmtime(stamps[name]))
            if period in seen:
                continue
            if len(seen) >= count:
                break
            seen.add(period)
            kept.add(name)
    return kept


def _fsync_directory(path):
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _write_file_atomically(path, data, mode=0o600):
    partial = "%s.%s%s" % (path, random_hex(4), BACKUP_PARTIAL_SUFFIX)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def _copy_stream(source, target, cancelled, hasher=None, progress=None, limit=None):
    """Copy source to target in BACKUP_COPY_BLOCK_BYTES blocks (at most limit bytes);
    the bytes copied. hasher sees every block; cancelled() is asked before each."""
    copied = 0
    while limit is None or copied < limit:
        if cancelled():
            raise BackupCancelled("The backup was stopped.")
        block = source.read(BACKUP_COPY_BLOCK_BYTES if limit is None else min(BACKUP_COPY_BLOCK_BYTES, limit - copied))
        if not block:
            break
        if hasher is not None:
            hasher.update(block)
        if target is not None:
            target.write(block)
        copied += len(block)
        if progress is not None:
            progress(len(block))
    return copied


def hash_file(path, cancelled=lambda: False):
    """(hex SHA-256, size) of a file, read in blocks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        size = _copy_stream(file, None, cancelled, hasher)
    return hasher.hexdigest(), size


def backups_dir(config):
    return os.path.join(config.storage_path, BACKUP_DIR_NAME)


def storage_files(storage_path, database_path):
    """Every file of the storage a backup holds, as sorted '/'-separated relative paths:
    all but the database (copied on its own) and its journals, the backups, the lock,
    and what a restore set aside. Links are not followed."""
    database = os.path.realpath(database_path)
    left_out = {database + suffix for suffix in ("", "-wal", "-shm", "-journal")}
    found = []
    for root, directories, files in os.walk(storage_path):
        top = os.path.samefile(root, storage_path)
        if top:
            directories[:] = [name for name in directories if name != BACKUP_DIR_NAME
                              and not name.startswith((RESTORE_ASIDE_PREFIX, RESTORE_STAGING_PREFIX))]
        directories.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if (top and name == STORAGE_LOCK_FILE) or name.endswith(BACKUP_PARTIAL_SUFFIX) \
                    or os.path.islink(path) or not os.path.isfile(path) or os.path.realpath(path) in left_out:
                continue
            found.append(os.path.relpath(path, storage_path).replace(os.sep, "/"))
    return found


def _safe_relative_path(relative):
    """A manifest's file path, if it stays inside the storage and is not one of ours; else None."""
    parts = relative.split("/") if isinstance(relative, str) else []
    if not parts or relative.startswith("/") or "\\" in relative or "\0" in relative \
            or any(part in ("", ".", "..") for part in parts) or parts[0] == BACKUP_DIR_NAME \
            or parts[0] == STORAGE_LOCK_FILE or parts[0].startswith((RESTORE_ASIDE_PREFIX, RESTORE_STAGING_PREFIX)):
        return None
    return os.path.join(*parts)


class FileHashes:
    """The SHA-256 of storage files, remembered with each file's size, mtime and inode
    (in backups/hashes.json), so an unchanged file is not read again every hour."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path) as file:
                known = json.load(file)
            self.known = known if isinstance(known, dict) else {}
        except (OSError, ValueError):
            self.known = {}

    def lookup(self, relative, status):
        entry = self.known.get(relative)
        if isinstance(entry, list) and entry[:3] == [status.st_size, status.st_mtime_ns, status.st_ino]:
            return entry[3]
        return None

    def remember(self, relative, status, digest):
        self.known[relative] = [status.st_size, status.st_mtime_ns, status.st_ino, digest]

    def save(self, relatives):
        self.known = {relative: self.known[relative] for relative in relatives if relative in self.known}
        with contextlib.suppress(OSError):
            _write_file_atomically(self.path, json.dumps(self.known).encode())


def copy_database(source_path, target_path, *, progress=None, cancelled=lambda: False, step_pages=BACKUP_STEP_PAGES):
    """A consistent copy of a database that may be in use, step_pages pages a step.

    A read transaction is held from the first step to the last: writers go on
    (WAL), and the copy is the database as it was when the copy began (without it,
    each write by another connection would restart the copy from the first page).
    The copy is left in rollback-journal mode, one file."""
    if not os.path.isfile(source_path):
        raise BackupError("There is no database at %s." % source_path)
    try:
        source = sqlite3.connect("file:%s?mode=rw" % urllib.parse.quote(source_path), uri=True,
                                 isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise BackupError("%s can't be opened (%s)." % (source_path, error)) from error
    target = None
    try:
        source.execute("PRAGMA busy_timeout = %d" % SQLITE_BUSY_TIMEOUT_MS)
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot starts here
        target = sqlite3.connect(target_path, isolation_level=None)

        def step(status, remaining, total):
            if cancelled():
                raise BackupCancelled("The backup was stopped.")
            if progress is not None:
                progress(total - remaining, total)
        source.backup(target, pages=step_pages, progress=step)
        target.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as error:
        raise BackupError("The database could not be copied (%s)." % error) from error
    finally:
        if target is not None:
            target.close()
        source.close()


@dataclass
class DatabaseReport:
    """What check_database found: problems (sentences; none when healthy) and facts."""
    problems: list
    counts: dict
    migrations: list
    schema_version: int
    checks: dict


def schema_version_of(migration_names):
    """The number of the newest migration applied ("0005_…" → 5); 0 for a database Rails wrote."""
    return max((int(name.split("_", 1)[0]) for name in migration_names if name.split("_", 1)[0].isdigit()),
               default=0)


CURRENT_SCHEMA_VERSION = schema_version_of(name for name, _ in MIGRATIONS)


def own_migration_names():
    """Every name campfire_py_migrations may hold: our migrations, and the one-time
    re-signing of mentions (Store.RESIGNED_MENTIONS, a data step)."""
    return {name for name, _ in MIGRATIONS} | {Store.RESIGNED_MENTIONS}


def check_database(path, *, repair=None):
    """Read a database through: SQLite's integrity_check, FTS5's own integrity-check,
    one search row per message and none without, the schema version, the counts.

    It writes (FTS5's checks are commands written as INSERTs): give it a copy, or a
    storage no server runs on. repair(connection, report), when given, runs before the
    search rows are compared (the `check --repair` command rebuilds them there)."""
    problems, checks, counts = [], {}, {}
    try:
        connection = sqlite3.connect("file:%s?mode=rw" % urllib.parse.quote(path), uri=True, isolation_level=None)
    except sqlite3.Error as error:
        return DatabaseReport(["%s can't be opened (%s)" % (path, error)], {}, [], 0, {"integrity_check": "failed"})
    try:
        connection.execute("PRAGMA busy_timeout = %d" % SQLITE_BUSY_TIMEOUT_MS)
        try:
            rows = [row[0] for row in connection.execute("PRAGMA integrity_check(20)")]
        except sqlite3.DatabaseError as error:
            rows = [str(error)]
        checks["integrity_check"] = "ok" if rows == ["ok"] else "failed"
        if rows != ["ok"]:
            problems.append("SQLite's integrity check failed: " + "; ".join(rows))
            return DatabaseReport(problems, counts, [], 0, checks)
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"users", "messages", "rooms"} <= tables:
            problems.append("this is not a Campfire database (no users, rooms or messages table)")
            return DatabaseReport(problems, counts, [], 0, checks)
        for table in COUNTED_TABLES:
            if table in tables:
                counts[table] = connection.execute('SELECT count(*) FROM "%s"' % table).fetchone()[0]
        migrations = sorted(row[0] for row in connection.execute("SELECT name FROM campfire_py_migrations")) \
            if "campfire_py_migrations" in tables else []
        known = own_migration_names()
        unknown = [name for name in migrations if name not in known]
        version = schema_version_of(migrations)
        if unknown:
            problems.append("the schema is newer than this Campfire knows (migrations %s)" % ", ".join(unknown))
        if "message_search_index" not in tables:
            problems.append("the search index (message_search_index) is missing")
            return DatabaseReport(problems, counts, migrations, version, checks)
        if repair is not None:
            repair(connection)
        try:
            connection.execute("INSERT INTO message_search_index (message_search_index) VALUES ('integrity-check')")
            checks["search_index"] = "ok"
        except sqlite3.DatabaseError as error:
            checks["search_index"] = "failed"
            problems.append("the search index is damaged (%s)" % error)
        missing = connection.execute("SELECT count(*) FROM messages WHERE id NOT IN "
                                     "(SELECT rowid FROM message_search_index)").fetchone()[0]
        orphans = connection.execute("SELECT count(*) FROM message_search_index WHERE rowid NOT IN "
                                     "(SELECT id FROM messages)").fetchone()[0]
        checks["search_rows"] = "ok" if not (missing or orphans) else "failed"
        if missing:
            problems.append("%d messages have no search row" % missing)
        if orphans:
            problems.append("%d search rows belong to no message" % orphans)
        return DatabaseReport(problems, counts, migrations, version, checks)
    except sqlite3.DatabaseError as error:
        problems.append("the database could not be read through (%s)" % error)
        checks.setdefault("integrity_check", "failed")
        return DatabaseReport(problems, counts, [], 0, checks)
    finally:
        connection.close()


@dataclass
class BackupResult:
    path: str
    size: int
    manifest: dict
    seconds: float


def _no_progress(label, done, total):
    pass


def _unused_path(path):
    """path, or path with -2, -3, … before .tar when a backup of the same second exists."""
    stem, extension = os.path.splitext(path)
    candidate, number = path, 1
    while os.path.exists(candidate):
        number += 1
        candidate = "%s-%d%s" % (stem, number, extension)
    return candidate


def write_backup(config, target=None, *, progress=None, cancelled=lambda: False, now=None, hashes=None,
                 step_pages=BACKUP_STEP_PAGES):
    """Write one checked backup of config's storage and return a BackupResult.

    target None: storage/backups/campfire-<UTC time>.tar, its file contents kept once
    in backups/content/. A directory: the same name in it; another path: that file.
    Both of those are self-contained. Nothing existing is replaced; on a failure
    or cancellation, everything half-written is removed."""
    import shutil
    import tempfile
    started = time.monotonic()
    progress = progress or _no_progress
    now = time.time() if now is None else now
    folder = backups_dir(config)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if target is None:
        final, pool = _unused_path(os.path.join(folder, backup_file_name(now))), os.path.join(
            folder, BACKUP_CONTENT_DIR_NAME)
        os.makedirs(pool, mode=0o700, exist_ok=True)
    else:
        final = os.path.join(target, backup_file_name(now)) if os.path.isdir(target) else target
        pool = None
        if os.path.exists(final):
            raise BackupError("%s already exists; a backup never replaces a file." % final)
        if not os.path.isdir(os.path.dirname(os.path.abspath(final))):
            raise BackupError("The folder for %s does not exist." % final)
    work = tempfile.mkdtemp(prefix=BACKUP_WORK_PREFIX, dir=folder)
    partial = final + BACKUP_PARTIAL_SUFFIX
    try:
        copy = os.path.join(work, BACKUP_DATABASE_MEMBER)
        copy_database(config.resolved_database_path, copy, cancelled=cancelled, step_pages=step_pages,
                      progress=lambda done, total: progress("database", done, total))
        progress("checks", 0, 1)
        report = check_database(copy)
        if report.problems:
            raise BackupInvalid("The database copy fails its checks: %s." % "; ".join(report.problems))
        progress("checks", 1, 1)
        database_sha256, database_size = hash_file(copy, cancelled)
        files = _gather_files(config, pool, hashes, progress, cancelled)
        manifest = {
            "format": BACKUP_FORMAT, "format_version": BACKUP_FORMAT_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "campfire_version": VERSION, "sqlite_version": sqlite3.sqlite_version,
            "schema_version": report.schema_version, "migrations": report.migrations,
            "database": {"size": database_size, "sha256": database_sha256},
            "counts": report.counts, "checks": report.checks,
            "contents_in_archive": pool is None,
            "files": [{"path": relative, "size": size, "sha256": digest} for relative, size, digest, _ in files],
        }
        _write_archive(partial, manifest, copy, files if pool is None else (), progress, cancelled)
        progress("verify", 0, 1)
        verify_backup(partial, content_dir=pool, cancelled=cancelled)
        progress("verify", 1, 1)
        try:
            os.link(partial, final)   # never replaces: fails if final appeared meanwhile
            os.unlink(partial)
        except FileExistsError:
            raise BackupError("%s appeared while the backup was written; nothing was replaced." % final) from None
        except OSError:
            if os.path.exists(final):
                raise BackupError("%s already exists; a backup never replaces a file." % final) from None
            os.rename(partial, final)  # a file system without hard links (FAT)
        _fsync_directory(os.path.dirname(os.path.abspath(final)))
        return BackupResult(final, os.path.getsize(final), manifest, time.monotonic() - started)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _gather_files(config, pool, hashes, progress, cancelled):
    """[(relative path, size, sha256, full path)] of the storage's files; with a pool,
    each content not yet there is copied in (checked by its hash on the way)."""
    storage = config.storage_path
    relatives = storage_files(storage, config.resolved_database_path)
    hashes = hashes if hashes is not None else FileHashes(os.path.join(backups_dir(config), BACKUP_HASHES_FILE))
    files = []
    for index, relative in enumerate(relatives):
        progress("files", index, len(relatives))
        full = os.path.join(storage, relative)
        try:
            status = os.stat(full)
            digest = hashes.lookup(relative, status)
            if digest is None or (pool is not None and not os.path.exists(os.path.join(pool, digest))):
                digest = _store_content(full, pool, cancelled) if pool is not None else hash_file(full, cancelled)[0]
                hashes.remember(relative, status, digest)
        except FileNotFoundError:
            continue  # removed since the listing: not part of this backup
        files.append((relative, status.st_size, digest, full))
    progress("files", len(relatives), len(relatives))
    hashes.save(relatives)
    return files


def _store_content(path, pool, cancelled):
    """Copy a file into the pool under its SHA-256 (once); the digest."""
    hasher = hashlib.sha256()
    partial = os.path.join(pool, "%s%s" % (random_hex(8), BACKUP_PARTIAL_SUFFIX))
    try:
        with open(path, "rb") as source, open(partial, "xb") as target:
            os.chmod(partial, 0o600)
            _copy_stream(source, target, cancelled, hasher)
            target.flush()
            os.fsync(target.fileno())
        digest = hasher.hexdigest()
        destination = os.path.join(pool, digest)
        if os.path.exists(destination):
            os.unlink(partial)
        else:
            os.rename(partial, destination)
        return digest
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


class _HashingReader:
    """A file read through a hash (what tarfile copies into an archive is what we checked)."""

    def __init__(self, file, cancelled, progress):
        self.file, self.cancelled, self.progress = file, cancelled, progress
        self.hasher = hashlib.sha256()

    def read(self, size=-1):
        if self.cancelled():
            raise BackupCancelled("The backup was stopped.")
        block = self.file.read(size)
        self.hasher.update(block)
        self.progress(len(block))
        return block


def _write_archive(path, manifest, database_path, files, progress, cancelled):
    import io
    import tarfile
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    contents = {}
    for _, size, digest, full in files:
        contents.setdefault(digest, (size, full))
    total = os.path.getsize(database_path) + sum(size for size, _ in contents.values())
    done = [0]

    def advance(count):
        done[0] += count
        progress("archive", min(done[0], total), total)

    def member(name, size):
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o600, int(time.time())
        return info

    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
            archive.addfile(member(BACKUP_MANIFEST_MEMBER, len(manifest_bytes)), io.BytesIO(manifest_bytes))
            with open(database_path, "rb") as database:
                archive.addfile(member(BACKUP_DATABASE_MEMBER, os.path.getsize(database_path)),
                                _HashingReader(database, cancelled, advance))
            for digest, (size, full) in contents.items():
                with open(full, "rb") as file:
                    reader = _HashingReader(file, cancelled, advance)
                    archive.addfile(member("%s/%s" % (BACKUP_CONTENT_DIR_NAME, digest), size), reader)
                if reader.hasher.hexdigest() != digest:
                    raise BackupError("%s changed while it was being backed up; try again." % full)
        raw.flush()
        os.fsync(raw.fileno())
    progress("archive", total, total)


def read_manifest(archive):
    """The manifest of a backup archive (its first member), checked for shape; BackupInvalid else."""
    import tarfile
    try:
        with tarfile.open(archive, mode="r:") as tar:
            return _read_manifest_member(tar, tar.next(), archive)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise BackupInvalid("%s is not a readable backup (%s)." % (archive, error)) from error


def _read_manifest_member(tar, info, archive):
    if info is None or info.name != BACKUP_MANIFEST_MEMBER or not info.isfile() \
            or info.size > BACKUP_MANIFEST_MAX_BYTES:
        raise BackupInvalid("%s is not a Campfire backup (it does not begin with its manifest)." % archive)
    try:
        manifest = json.loads(tar.extractfile(info).read())
    except ValueError as error:
        raise BackupInvalid("The manifest of %s can't be read (%s)." % (archive, error)) from error
    if not isinstance(manifest, dict) or manifest.get("format") != BACKUP_FORMAT:
        raise BackupInvalid("%s is not a Campfire backup." % archive)
    if not isinstance(manifest.get("format_version"), int) or manifest["format_version"] > BACKUP_FORMAT_VERSION:
        raise BackupRefused("%s was written by a newer Campfire (backup format %r); upgrade Campfire to use it."
                            % (archive, manifest.get("format_version")))
    database = manifest.get("database")
    files = manifest.get("files")
    if not (isinstance(database, dict) and isinstance(database.get("size"), int)
            and _SHA256_RE.match(str(database.get("sha256"))) and isinstance(files, list)
            and isinstance(manifest.get("schema_version"), int)
            and all(isinstance(entry, dict) and _safe_relative_path(entry.get("path")) is not None
                    and isinstance(entry.get("size"), int) and _SHA256_RE.match(str(entry.get("sha256")))
                    for entry in files)):
        raise BackupInvalid("The manifest of %s is damaged (a field is missing or wrong)." % archive)
    return manifest


def verify_backup(archive, *, content_dir=None, extract_to=None, deep_files=True, progress=None,
                  cancelled=lambda: False):
    """Read a whole archive back and check it against its manifest; the manifest.

    Every member's SHA-256 and size must match (nothing unknown, no links, no
    paths outside); every file the manifest names must be in the archive or in
    content_dir (each read and hashed when deep_files). With extract_to, the
    database is written there and must pass check_database too."""
    import tarfile
    progress = progress or _no_progress
    try:
        size = os.path.getsize(archive)
        with tarfile.open(archive, mode="r:") as tar:
            manifest = _read_manifest_member(tar, tar.next(), archive)
            wanted = {entry["sha256"]: entry["size"] for entry in manifest["files"]}
            in_archive, database_seen = set(), False
            for info in tar:
                if info.offset == 0:
                    continue  # the manifest, read above
                progress("verify", min(info.offset_data, size), size)
                name = info.name
                if not info.isfile():
                    raise BackupInvalid("%s holds %s, which is not a plain file." % (archive, name))
                if name == BACKUP_DATABASE_MEMBER and not database_seen:
                    expected, database_seen = manifest["database"], True
                    target = open(extract_to, "xb") if extract_to else None
                    try:
                        digest, copied = _hash_member(tar, info, target, cancelled)
                    finally:
                        if target is not None:
                            target.close()
                    if (digest, copied) != (expected["sha256"], expected["size"]):
                        raise BackupInvalid("The database in %s does not match its manifest (damaged)." % archive)
                    continue
                prefix, _, digest = name.partition("/")
                if prefix != BACKUP_CONTENT_DIR_NAME or digest not in wanted or digest in in_archive:
                    raise BackupInvalid("%s holds %s, which its manifest does not name." % (archive, name))
                if _hash_member(tar, info, None, cancelled) != (digest, wanted[digest]):
                    raise BackupInvalid("%s in %s does not match its manifest (damaged)." % (name, archive))
                in_archive.add(digest)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise BackupInvalid("%s can't be read through (%s)." % (archive, error)) from error
    if not database_seen:
        raise BackupInvalid("%s holds no database." % archive)
    for digest, length in wanted.items():
        if digest in in_archive:
            continue
        stored = os.path.join(content_dir, digest) if content_dir else None
        if stored is None or not os.path.isfile(stored):
            raise BackupInvalid("A file of %s (content %s…) is neither in it nor in %s." % (
                archive, digest[:12], content_dir or "a content folder beside it"))
        if deep_files and hash_file(stored, cancelled) != (digest, length):
            raise BackupInvalid("The stored content %s does not match its name (damaged)." % stored)
    if extract_to:
        report = check_database(extract_to)
        if report.problems:
            raise BackupInvalid("The database in %s fails its checks: %s." % (archive, "; ".join(report.problems)))
    progress("verify", size, size)
    return manifest


def _hash_member(tar, info, target, cancelled):
    hasher = hashlib.sha256()
    copied = _copy_stream(tar.extractfile(info), target, cancelled, hasher, limit=info.size)
    return hasher.hexdigest(), copied


def self_contained_copy(archive, content_dir, target, *, cancelled=lambda: False):
    """Write a backup that holds its file contents too (for sending elsewhere): the
    archive's manifest and database, each content from content_dir; then check it."""
    import tarfile
    manifest = dict(read_manifest(archive), contents_in_archive=True)
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    digests = {entry["sha256"]: entry["size"] for entry in manifest["files"]}
    try:
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as raw:
            with tarfile.open(archive, mode="r:") as source, \
                    tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as copy:
                import io
                for info in source:
                    if info.name == BACKUP_MANIFEST_MEMBER:
                        info = tarfile.TarInfo(BACKUP_MANIFEST_MEMBER)
                        info.size, info.mode, info.mtime = len(manifest_bytes), 0o600, int(time.time())
                        copy.addfile(info, io.BytesIO(manifest_bytes))
                    elif info.name == BACKUP_DATABASE_MEMBER:
                        copy.addfile(info, _HashingReader(source.extractfile(info), cancelled, lambda count: None))
                for digest, size in digests.items():
                    info = tarfile.TarInfo("%s/%s" % (BACKUP_CONTENT_DIR_NAME, digest))
                    info.size, info.mode, info.mtime = size, 0o600, int(time.time())
                    with open(os.path.join(content_dir, digest), "rb") as file:
                        copy.addfile(info, _HashingReader(file, cancelled, lambda count: None))
            raw.flush()
            os.fsync(raw.fileno())
        verify_backup(target, cancelled=cancelled)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise
    return manifest


def list_backups(folder):
    """The archives in a backups folder, newest first: dicts with name, path, size, time,
    and check ("ok", or what is wrong with the manifest: it is read, not the whole archive)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(folder):
            stamp = backup_time(name)
            if stamp is None:
                continue
            path = os.path.join(folder, name)
            entry = {"name": name, "path": path, "size": os.path.getsize(path), "time": stamp, "manifest": None}
            try:
                entry["manifest"] = read_manifest(path)
                failed = [key for key, value in entry["manifest"].get("checks", {}).items() if value != "ok"]
                entry["check"] = "ok" if not failed else "failed: " + ", ".join(failed)
            except BackupError as error:
                entry["check"] = str(error)
            found.append(entry)
    found.sort(key=lambda entry: (entry["time"], entry["name"]), reverse=True)
    return found


def prune_backups(folder, keep=BACKUP_KEEP, now=None):
    """Delete the archives retention doesn't keep, then the stored contents no kept
    archive names (older than BACKUP_CONTENT_GRACE). The names deleted."""
    backups = list_backups(folder)
    kept = backups_to_keep({entry["name"]: entry["time"] for entry in backups}, keep)
    deleted = []
    for entry in backups:
        if entry["name"] not in kept:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry["path"])
            deleted.append(entry["name"])
    remaining = [entry for entry in backups if entry["name"] in kept]
    if any(entry["manifest"] is None for entry in remaining):
        return deleted  # an unreadable manifest: what it needs is unknown, so no content goes
    needed = {item["sha256"] for entry in remaining for item in entry["manifest"]["files"]}
    pool = os.path.join(folder, BACKUP_CONTENT_DIR_NAME)
    now = time.time() if now is None else now
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(pool):
            path = os.path.join(pool, name)
            with contextlib.suppress(OSError):
                if name not in needed and now - os.path.getmtime(path) > BACKUP_CONTENT_GRACE:
                    os.unlink(path)
    return deleted


def read_backup_status(folder):
    try:
        with open(os.path.join(folder, BACKUP_STATUS_FILE)) as file:
            status = json.load(file)
        return status if isinstance(status, dict) else {}
    except (OSError, ValueError):
        return {}


def write_backup_status(folder, status):
    with contextlib.suppress(OSError):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        _write_file_atomically(os.path.join(folder, BACKUP_STATUS_FILE), json.dumps(status, sort_keys=True).encode())


def lock_storage(storage_path):
    """Hold the storage's lock (for as long as the returned descriptor stays open): a
    running server holds it, and restore refuses to touch a storage in use."""
    import fcntl
    os.makedirs(storage_path, exist_ok=True)
    descriptor = os.open(os.path.join(storage_path, STORAGE_LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise BackupRefused("A Campfire server is running on %s; stop it first." % storage_path) from None
    return descriptor


def storage_in_use(config):
    """Whether the storage holds data: a database, or any file a backup would hold."""
    return os.path.exists(config.resolved_database_path) or bool(
        os.path.isdir(config.storage_path) and storage_files(config.storage_path, config.resolved_database_path))
# Files on disk ---------------------------------------------------------------------
# Where Active Storage's Disk service keeps them (activestorage's
# lib/active_storage/service/disk_service.rb): <root>/<key[0:2]>/<key[2:4]>/<key>.
# An upload is written to <root>/tmp/<key> and moved into place (a rename, atomic
# on one file system) only once the row naming it has committed; a deleted blob's
# file goes after the deletion has. At start, sweep() settles what a crash left
# between the two. Every method but the path helpers blocks: worker threads call them.

def generate_blob_key():
    """28 lower-case letters and digits, as Active Storage's SecureRandom.base36(28)."""
    key = []
    while len(key) < BLOB_KEY_CHARS:
        for byte in os.urandom(BLOB_KEY_CHARS * 2):
            if byte < 252 and len(key) < BLOB_KEY_CHARS:  # 252 = 7 × 36: no letter is likelier
                key.append(BLOB_KEY_ALPHABET[byte % 36])
    return "".join(key)


_BLOB_KEY_RE = re.compile(r"[0-9a-z]{%d}\Z" % BLOB_KEY_CHARS)


class FileStore:
    def __init__(self, root):
        self.root = root
        self.temp_root = os.path.join(root, "tmp")  # never a key's folder: those have two characters

    def path(self, key):
        return os.path.join(self.root, key[:2], key[2:4], key)

    def temp_path(self, key):
        return os.path.join(self.temp_root, key)

    def create_temp(self, key):
        """A new temporary file for an upload: its descriptor, open for writing."""
        os.makedirs(self.temp_root, exist_ok=True)
        return os.open(self.temp_path(key), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    @staticmethod
    def write(descriptor, data, digest):
        digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view):]

    @staticmethod
    def close(descriptor, *, sync):
        try:
            if sync:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def discard_temp(self, key):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path(key))

    def promote(self, key):
        """Move a committed upload into its place."""
        final = self.path(key)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(self.temp_path(key), final)

    def delete(self, key):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(key))

    def open(self, key):
        """(file object, size) of a blob's bytes, or None when they are missing. An upload
        whose row has just committed may still be in tmp/ until its move."""
        for path in (self.path(key), self.temp_path(key)):
            try:
                file = open(path, "rb")
            except (FileNotFoundError, NotADirectoryError):
                continue
            return file, os.fstat(file.fileno()).st_size
        return None

    def sweep(self, blob_exists):
        """Settle the uploads a crash left in tmp/: a committed one (blob_exists(key)) is
        moved into place, any other deleted. Returns (moved, deleted)."""
        moved = deleted = 0
        try:
            names = os.listdir(self.temp_root)
        except FileNotFoundError:
            return 0, 0
        for name in names:
            if _BLOB_KEY_RE.match(name) and blob_exists(name):
                self.promote(name)
                moved += 1
            else:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(os.path.join(self.temp_root, name))
                deleted += 1
        return moved, deleted


####
#### 12. Domain
####
# Every operation on accounts, people, sessions, rooms, memberships, messages,
# boosts, search and bots, with its SQL: nothing above Storage but this section
# speaks SQL. An operation takes what it needs (ids, rows, plain values), runs
# its writes in one atomic(), and records what it caused on Events (a message to
# broadcast, sockets to close, a webhook to queue), which listeners act on once
# the transaction commits. It never renders HTML and never sees a request.

ROLE_MEMBER, ROLE_ADMINISTRATOR, ROLE_BOT = 0, 1, 2
STATUS_ACTIVE, STATUS_DEACTIVATED, STATUS_BANNED = 0, 1, 2
ROOM_OPEN, ROOM_CLOSED, ROOM_DIRECT = "Rooms::Open", "Rooms::Closed", "Rooms::Direct"
INVOLVEMENTS = ("invisible", "nothing", "mentions", "everything")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
BOT_KEY_RE = re.compile(r"([0-9]{1,18})-([A-Za-z0-9]{%d})\Z" % BOT_TOKEN_CHARS)


@dataclass(slots=True)
class User:
    """A row of users, as the domain uses it."""

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
    """A row of rooms; type is Rails' class name (Rooms::Open, ::Closed, ::Direct). A
    thread's room names the message it answers and that message's room."""

    id: int
    name: str
    type: str
    creator_id: int
    parent_message_id: int = None
    parent_room_id: int = None

    @classmethod
    def from_row(cls, row, parent_message_id=None, parent_room_id=None):
        return cls(row["id"], row["name"], row["type"], row["creator_id"], parent_message_id, parent_room_id)

    @property
    def direct(self):
        return self.type == ROOM_DIRECT

    @property
    def thread(self):
        return self.parent_message_id is not None


@dataclass(slots=True)
class Blob:
    """A row of active_storage_blobs, as attached to a record."""

    id: int
    key: str
    filename: str
    content_type: str
    byte_size: int
    checksum: str
    width: int = None
    height: int = None
    created_at: str = ""

    @classmethod
    def from_row(cls, row):
        try:
            metadata = json.loads(row["metadata"] or "{}")
        except ValueError:
            metadata = {}
        width, height = (metadata.get("width"), metadata.get("height")) if isinstance(metadata, dict) else (None, None)
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            width = height = None
        return cls(row["id"], row["key"], row["filename"] or FALLBACK_FILENAME,
                   (row["content_type"] or DOWNLOAD_CONTENT_TYPE).lower(), row["byte_size"] or 0, row["checksum"] or "",
                   width, height, row["created_at"] or "")

    @property
    def kind(self):
        """How a message shows it: "image", "video", "audio" or "file"."""
        content_type = self.content_type
        if content_type in INLINE_IMAGE_TYPES:
            return "image"
        if content_type.startswith("video/") and content_type in INLINE_CONTENT_TYPES:
            return "video"
        if content_type.startswith("audio/") and content_type in INLINE_CONTENT_TYPES:
            return "audio"
        return "file"

    @property
    def etag(self):
        """Strong: a blob's bytes never change, and its checksum names them."""
        return '"%s"' % (self.checksum or self.key).replace('"', "")


@dataclass(slots=True)
class Upload:
    """A file received and written to a temporary file, ready to become a blob."""

    key: str
    filename: str
    content_type: str
    byte_size: int
    checksum: str         # base64 of the MD5 digest, as Active Storage keeps it
    width: int = None     # an image's, from its header
    height: int = None

    @property
    def metadata(self):
        """Active Storage's metadata JSON after its analyzers ran."""
        if self.width:
            return {"identified": True, "width": self.width, "height": self.height, "analyzed": True}
        return {"identified": True, "analyzed": True}


@dataclass(slots=True)
class SessionInfo:
    """The signed-in session behind a request's cookie."""

    id: int
    user_id: int
    last_active: float


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One message to post to one bot's webhook URL."""

    bot_id: int
    room_id: int
    message_id: int
    url: str
    payload: bytes


@dataclass(slots=True)
class PushDelivery:
    """One notification to one push subscription (Campfire's WebPush::Notification)."""

    subscription_id: int
    endpoint: str
    p256dh_key: str
    auth_key: str
    title: str
    body: str
    path: str
    badge: int          # the person's unread rooms, for the app's badge
    attempt: int = 0    # retries so far (after a 429 or 5xx)


def can_administer(user, record_creator_id):
    """Campfire's adm?(record): administrators, and whoever created the room or message."""
    return user.administrator or record_creator_id == user.id


def fts_match_expression(query):
    """A user's words as an FTS5 expression that cannot be a syntax error:
    non-word characters become spaces (as Campfire's app/models/message/searchable.rb does)
    and every word is quoted."""
    words = search_words(query)
    if not words:
        return None
    # The last word is still being typed: it matches as a prefix ("desi" finds
    # "design") as well as stemmed ("designing" finds "designs").
    *done, last = ['"%s"' % word for word in words]
    return " AND ".join(done + ['(%s OR %s*)' % (last, last)])


def search_words(query):
    return re.findall(r"\w+", str(query))[:MAX_SEARCH_WORDS]


def generate_bot_token():
    return random_alphanumeric(BOT_TOKEN_CHARS)


def bot_key(bot_row):
    """The key a bot's API requests carry: "<id>-<token>"."""
    return "%d-%s" % (bot_row["id"], bot_row["bot_token"])


def webhook_url_error(url):
    """Why a webhook URL can't be used, or None (http or https, a host, at most 2 KB)."""
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        return "Use a URL of at most %d characters." % MAX_WEBHOOK_URL_CHARS
    if not url.isascii() or any(char.isspace() or not char.isprintable() for char in url):
        return "Enter a URL without spaces (percent-encode anything else)."
    try:
        split = urllib.parse.urlsplit(url)
        split.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return "Enter a valid URL."
    if split.scheme.lower() not in ("http", "https") or not split.hostname:
        return "Enter an http:// or https:// URL with a host name."
    return None


class Events:
    """What a change tells the rest of the server, once its transaction commits.

    A domain operation records what it caused by calling the method named for it
    (message_created, sessions_revoked, …). Each is delivered after the commit
    to every listener that has a method of that name: the real-time layer (it
    broadcasts), the background workers (webhooks, purges) and the app (its page
    cache). A listener's failure is logged and never undoes or blocks the change."""

    def __init__(self, db):
        self._db = db
        self._listeners = []

    def subscribe(self, listener):
        self._listeners.append(listener)

    def _emit(self, name, *args, **kwargs):
        if self._listeners:
            self._db.after_commit(lambda: self._deliver(name, args, kwargs))

    def _deliver(self, name, args, kwargs):
        for listener in self._listeners:
            handler = getattr(listener, name, None)
            if handler is None:
                continue
            try:
                handler(*args, **kwargs)
            except Exception:
                log.error("listener %s.%s failed:\n%s", type(listener).__name__, name, traceback.format_exc())

    def message_created(self, room, message, unread_user_ids):
        self._emit("message_created", room, message, unread_user_ids)

    def mentioned(self, user_ids, message):
        """A new message notifies these people (their inbox and its count changed)."""
        self._emit("mentioned", user_ids, message)

    def message_updated(self, message):
        self._emit("message_updated", message)

    def message_removed(self, message):
        self._emit("message_removed", message)

    def boost_changed(self, message, boost, change):
        self._emit("boost_changed", message, boost, change)

    def room_changed(self, room, change, revoked=()):
        self._emit("room_changed", room, change, revoked)

    def room_deleted(self, room, member_ids):
        self._emit("room_deleted", room, member_ids)

    def sidebar_changed(self, user_ids):
        self._emit("sidebar_changed", user_ids)

    def room_read(self, room_id, user_id):
        self._emit("room_read", room_id, user_id)

    def sessions_revoked(self, user_id, session_id=None):
        """A person's sessions (or one of them) ended: their sockets must close."""
        self._emit("sessions_revoked", user_id, session_id)

    def account_changed(self):
        """Something every page shows changed (a name, the CSS, a setting)."""
        self._emit("account_changed")

    def user_banned(self, user_id):
        """Their messages are to be deleted, in the background."""
        self._emit("user_banned", user_id)

    def blobs_created(self, keys):
        """Uploads now named by committed rows: their files move into place."""
        self._emit("blobs_created", keys)

    def blobs_deleted(self, keys):
        """Blobs whose rows are gone: their files go too."""
        self._emit("blobs_deleted", keys)


class Store:
    """The domain's state and operations, over one Database.

    Reads of what every request needs (people, rooms, memberships, sessions) are
    kept in memory and named by versions: every cached page names the versions it
    was built from, so a change anywhere makes the stale copy unreachable rather
    than wrong."""

    def __init__(self, db, config, sgid_secret):
        self.db = db
        self.config = config
        self.sgid_secret = sgid_secret
        self.events = Events(db)
        self._users = {}        # id → User; dropped whenever a user row changes
        self._sessions = {}     # token digest → SessionInfo
        self._member_rooms = {}  # user id → (versions, {room id: involvement}, {unread room ids})
        self._room_members = {}  # room id → (versions, [active member ids])
        self._last_search = {}   # user id → their latest recorded query
        self._mention_counts = {}  # user id → (versions, {room id: unread mentions})
        self._rooms = {}         # room id → Room (dropped when its name or type changes)
        self._sgids = {}         # user id → their attachable sgid
        self._derived = {}       # name → (global_version, value): custom CSS, banned addresses
        self.room_versions = collections.Counter()        # messages, boosts, name, members
        self.user_versions = collections.Counter()        # a user's sidebar: memberships, unread, names
        self.membership_versions = collections.Counter()  # who is in a room
        self.message_version = 0                          # any message anywhere (search results)
        self.global_version = 0                           # account name, user names and avatars

    # Versions ----------------------------------------------------------------
    def bump_room(self, room_id):
        self.room_versions[room_id] += 1
        self.message_version += 1

    def bump_users(self, user_ids):
        for user_id in user_ids:
            self.user_versions[user_id] += 1

    def bump_everything(self):
        self.global_version += 1
        self._last_search.clear()
        self._rooms.clear()
        self._users.clear()
        self._member_rooms.clear()
        self._room_members.clear()
        self._mention_counts.clear()

    def memberships_changed(self, room_id, user_ids):
        self.membership_versions[room_id] += 1
        self.bump_room(room_id)
        self.bump_users(user_ids)

    def _account_changed(self):
        """Pages show the account's name, CSS and settings and everyone's names: all stale."""
        self.bump_everything()
        self.events.account_changed()

    def _derived_value(self, name, build):
        """build(), kept until the global version moves (every account change moves it)."""
        cached = self._derived.get(name)
        if cached is None or cached[0] != self.global_version:
            cached = self._derived[name] = (self.global_version, build())
        return cached[1]

    # Account -----------------------------------------------------------------
    def account(self):
        return self.db.one("SELECT * FROM accounts ORDER BY id LIMIT 1")

    def account_logo(self):
        """The account's logo (a Blob), or None: read once per account change."""
        def build():
            account = self.db.one("SELECT id FROM accounts ORDER BY id LIMIT 1")
            return self.attachment("Account", account["id"], "logo") if account else None
        return self._derived_value("logo", build)

    def set_account_logo(self, upload):
        """The account's logo in place of the one before; None removes it."""
        account_id = self.account()["id"]
        with self.db.atomic():
            self._detach("Account", [account_id], "logo")
            if upload is not None:
                self._attach("Account", account_id, "logo", upload, utc_now_text())
        self._account_changed()

    def account_name(self):
        account = self.account()
        return account["name"] if account else "Campfire"

    def account_settings(self):
        """The account's settings as a dict ({} when unreadable)."""
        account = self.account()
        try:
            settings = json.loads(account["settings"] or "{}") if account else {}
        except ValueError:
            settings = {}
        return settings if isinstance(settings, dict) else {}

    def account_setting(self, name):
        return bool(self.account_settings().get(name))

    def join_code_matches(self, join_code):
        account = self.account()
        return account is not None and hmac.compare_digest(account["join_code"].encode(), join_code.encode())

    def custom_styles(self):
        """(css, digest) of the account's custom CSS; css is '' when there is none."""
        def build():
            account = self.account()
            css = (account["custom_styles"] if account else None) or ""
            return css, hashlib.sha256(css.encode()).hexdigest()[:16]
        return self._derived_value("custom_styles", build)

    def _create_account(self, stamp):
        self.db.execute("INSERT INTO accounts (name, join_code, settings, singleton_guard, created_at, updated_at) "
                        "VALUES (?, ?, ?, 0, ?, ?)", ("Campfire", generate_join_code(), "{}", stamp, stamp))

    def first_run(self, name, email, password_digest):
        """Campfire's FirstRun (app/models/first_run.rb): the account, its administrator and the
        open room "All Talk". (user, room), or None when the account exists already."""
        with self.db.atomic():
            if self.account() is not None:
                return None
            self._create_account(utc_now_text())
            user = self.create_user(name, email, role=ROLE_ADMINISTRATOR, password_digest=password_digest)
            room = self.create_room("All Talk", ROOM_OPEN, user.id, self.active_user_ids())
        return user, room

    def update_account(self, name, settings):
        with self.db.atomic():
            self.db.execute("UPDATE accounts SET name = ?, settings = ?, updated_at = ? WHERE id = ?",
                            (name, json.dumps(settings, separators=(",", ":")), utc_now_text(),
                             self.account()["id"]))
        self._account_changed()
        self.events.sidebar_changed(self.active_user_ids())  # "New room" may have come or gone

    def regenerate_join_code(self):
        with self.db.atomic():
            self.db.execute("UPDATE accounts SET join_code = ?, updated_at = ? WHERE id = ?",
                            (generate_join_code(), utc_now_text(), self.account()["id"]))

    def set_custom_styles(self, css):
        with self.db.atomic():
            self.db.execute("UPDATE accounts SET custom_styles = ?, updated_at = ? WHERE id = ?",
                            (css if css.strip() else None, utc_now_text(), self.account()["id"]))
        self._account_changed()

    # People ------------------------------------------------------------------
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

    def forget_user(self, user_id):
        self._users.pop(user_id, None)

    def create_user(self, name, email, password=None, role=ROLE_MEMBER, *, password_digest=None):
        """A person in every open room. Handlers pass a digest made off the event loop;
        a password is hashed here (for the command line and tests)."""
        now = utc_now_text()
        digest = password_digest or hash_password(password, self.config.scrypt_n, self.config.bcrypt_cost)
        with self.db.atomic():
            user_id = self.db.execute(
                "INSERT INTO users (name, email_address, password_digest, role, status, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (name, email, digest, role, STATUS_ACTIVE, now, now)).lastrowid
            self._join_open_rooms(user_id, now)
        return self.user(user_id)

    def _join_open_rooms(self, user_id, now):
        """New people and new bots are members of every open room (Campfire's User#join_open_rooms)."""
        for row in self.db.all("SELECT id FROM rooms WHERE type = ?", (ROOM_OPEN,)):
            self._add_membership(row["id"], user_id, now=now)
            self.memberships_changed(row["id"], [user_id])

    def set_password_digest(self, user_id, digest):
        with self.db.atomic():
            self.db.execute("UPDATE users SET password_digest = ?, updated_at = ? WHERE id = ?",
                            (digest, utc_now_text(), user_id))
        self.forget_user(user_id)

    def update_profile(self, user, name, email, bio, password_digest=None):
        """Name, email address, bio and (when given) a new password digest. False when the
        address was taken meanwhile (the unique index refused it)."""
        try:
            with self.db.atomic():
                self.db.execute("UPDATE users SET name = ?, email_address = ?, bio = ?, updated_at = ? WHERE id = ?",
                                (name, email, bio or None, utc_now_text(), user.id))
                if password_digest:
                    self.set_password_digest(user.id, password_digest)
        except sqlite3.IntegrityError:
            return False
        self._account_changed()  # names and avatars are everywhere: in cached pages and messages
        return True

    def active_user_ids(self):
        return [row[0] for row in self.db.all("SELECT id FROM users WHERE status = ?", (STATUS_ACTIVE,))]

    def active_users(self, exclude_bots=False):
        rows = self.db.all("SELECT * FROM users WHERE status = ? %s ORDER BY lower(name), id"
                           % ("AND role != 2" if exclude_bots else ""), (STATUS_ACTIVE,))
        return [User.from_row(row) for row in rows]

    def users_matching(self, query, user_ids=None, limit=AUTOCOMPLETE_LIMIT):
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self.db.all("SELECT * FROM users WHERE status = ? AND name LIKE ? ESCAPE '\\' "
                           "ORDER BY lower(name), id LIMIT ?", (STATUS_ACTIVE, pattern, AUTOCOMPLETE_CANDIDATES))
        users = [User.from_row(row) for row in rows]
        if user_ids is not None:
            allowed = set(user_ids)
            users = [user for user in users if user.id in allowed]
        return users[:limit]

    def people_page(self, page, include_banned):
        """One page of people (no bots) by name, and whether another page follows."""
        offset = (page - 1) * ACCOUNT_USERS_PAGE_SIZE
        rows = self.db.all("SELECT * FROM users WHERE role != ? AND status IN (?, ?) ORDER BY lower(name), id "
                           "LIMIT ? OFFSET ?", (ROLE_BOT, STATUS_ACTIVE, STATUS_BANNED if include_banned
                                                else STATUS_ACTIVE, ACCOUNT_USERS_PAGE_SIZE + 1, offset))
        return [User.from_row(row) for row in rows[:ACCOUNT_USERS_PAGE_SIZE]], len(rows) > ACCOUNT_USERS_PAGE_SIZE

    # People: what administrators do ------------------------------------------
    def manageable_user(self, user_id):
        """A person (not a bot) who is active or banned: the ones administrators manage; else None."""
        user = self.user(user_id)
        if user is None or user.bot or user.status == STATUS_DEACTIVATED:
            return None
        return user

    def removal_problem(self, actor, user, action):
        """Why an administrator may not demote, deactivate or ban this person, or None."""
        if action != "demote" and user.id == actor.id:
            return "You can't %s yourself." % action
        if user.administrator and user.active and not self.db.value(
                "SELECT count(*) FROM users WHERE role = ? AND status = ? AND id != ?",
                (ROLE_ADMINISTRATOR, STATUS_ACTIVE, user.id)):
            who = "You are" if user.id == actor.id else "%s is" % user.name
            return ("%s the only administrator. Make someone else an administrator first, so that someone can "
                    "still manage this account." % who)
        return None

    def set_role(self, user, role):
        with self.db.atomic():
            self.db.execute("UPDATE users SET role = ?, updated_at = ? WHERE id = ?", (role, utc_now_text(), user.id))
        self._account_changed()

    def deactivate(self, user):
        """Campfire's User#deactivate (app/models/user.rb), for a person or a bot: out of
        every room but direct ones; push subscriptions, webhooks, searches and sessions
        deleted; a person's email address changed so it is free to use again, a bot's key
        cleared; their sockets closed."""
        email = user.email_address
        if email:
            import uuid  # here, not at the top: only deactivation needs it, and it is slow to load
            email = "x-deactivated-%s@%s" % (uuid.uuid4(), email.rpartition("@")[2] if "@" in email else "deactivated")
        with self.db.atomic():
            room_ids = [row[0] for row in self.db.all(
                "DELETE FROM memberships WHERE user_id = ? AND room_id IN (SELECT id FROM rooms WHERE type != ?) "
                "RETURNING room_id", (user.id, ROOM_DIRECT))]
            self.db.execute("DELETE FROM push_subscriptions WHERE user_id = ?", (user.id,))
            self.db.execute("DELETE FROM webhooks WHERE user_id = ?", (user.id,))
            self.clear_searches(user.id)
            self._delete_sessions_of(user.id)
            self.db.execute("UPDATE users SET status = ?, email_address = ?, bot_token = NULL, updated_at = ? "
                            "WHERE id = ?", (STATUS_DEACTIVATED, email, utc_now_text(), user.id))
            for room_id in room_ids:
                self.memberships_changed(room_id, [user.id])
        self._account_changed()
        self.events.sessions_revoked(user.id)

    def ban(self, user):
        """Campfire's app/models/user/bannable.rb: every public address the person signed in
        from is banned, their sessions and sockets end, and their messages are deleted in
        the background (see purge_messages_step)."""
        addresses = set()
        for (text,) in self.db.all("SELECT DISTINCT ip_address FROM sessions WHERE user_id = ?", (user.id,)):
            address = normalized_ip(text)
            if address is not None and address.is_global:  # a private address would ban a whole office
                addresses.add(str(address))
        stamp = utc_now_text()
        with self.db.atomic():
            known = {row[0] for row in self.db.all("SELECT ip_address FROM bans WHERE user_id = ?", (user.id,))}
            for address in sorted(addresses - known):
                self.db.execute("INSERT INTO bans (user_id, ip_address, created_at, updated_at) VALUES (?, ?, ?, ?)",
                                (user.id, address, stamp, stamp))
            self.db.execute("UPDATE users SET status = ?, updated_at = ? WHERE id = ?", (STATUS_BANNED, stamp, user.id))
            self._delete_sessions_of(user.id)
        self._account_changed()
        self.events.sessions_revoked(user.id)
        self.events.user_banned(user.id)

    def unban(self, user):
        with self.db.atomic():
            self.db.execute("UPDATE users SET status = ?, updated_at = ? WHERE id = ?",
                            (STATUS_ACTIVE, utc_now_text(), user.id))
            self.db.execute("DELETE FROM bans WHERE user_id = ?", (user.id,))
        self._account_changed()

    def purge_messages_step(self, user_id):
        """Delete the next chunk of a banned person's messages; True while more remain."""
        user = self.user(user_id)
        if user is None or user.status != STATUS_BANNED:  # unbanned meanwhile: keep what is left
            return False
        chunk = self.config.message_purge_chunk
        messages = self.db.all(self.MESSAGE_COLUMNS + "WHERE messages.creator_id = ? ORDER BY messages.id LIMIT ?",
                               (user_id, chunk))
        if not messages:
            return False
        with self.db.atomic():
            for message in messages:
                self._delete_message(message)
        for message in messages:
            self.events.message_removed(message)
        return len(messages) == chunk

    def address_banned(self, remote_addr):
        """True when requests from this address are refused: a banned address may read, not
        write, as with Campfire's bans (app/models/ban.rb)."""
        banned = self._derived_value("banned_addresses", lambda: frozenset(
            str(normalized_ip(row[0]) or row[0]) for row in self.db.all("SELECT DISTINCT ip_address FROM bans")))
        if not banned:
            return False
        address = normalized_ip(remote_addr)
        return address is not None and str(address) in banned

    # Sessions ----------------------------------------------------------------
    def create_session(self, user_id, ip_address, user_agent, now=None):
        """A new session; returns the token for the cookie (only its digest is stored)."""
        token = random_token(SESSION_TOKEN_BYTES)
        stamp = utc_now_text(now)
        with self.db.atomic():
            self.db.execute(
                "INSERT INTO sessions (user_id, token, ip_address, user_agent, last_active_at, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (user_id, token_digest(token), ip_address, user_agent[:MAX_USER_AGENT_CHARS], stamp, stamp, stamp))
        return token

    def session_for(self, token, now):
        """The session a cookie names, refreshing last_active_at at most hourly."""
        if not token or len(token) > MAX_SESSION_TOKEN_CHARS:
            return None
        digest = token_digest(token)
        info = self._sessions.get(digest)
        if info is None:
            row = self.db.one("SELECT id, user_id, last_active_at FROM sessions WHERE token = ?", (digest,))
            if row is None:
                return None
            info = SessionInfo(row["id"], row["user_id"], parse_db_time(row["last_active_at"]) or 0)
            if len(self._sessions) > SESSIONS_KEPT:
                self._sessions.clear()
            self._sessions[digest] = info
        if now - info.last_active > SESSION_REFRESH_SECONDS:
            stamp = utc_now_text(now)
            with self.db.atomic():
                self.db.execute("UPDATE sessions SET last_active_at = ?, updated_at = ? WHERE id = ?",
                                (stamp, stamp, info.id))
            info.last_active = now
        return info

    def adopt_rails_session(self, rails_token, ip_address, user_agent, now=None):
        """The session Rails stored under this token (in plain text, has_secure_token)
        replaced by one of ours for the same person; our token, or None."""
        row = self.db.one("SELECT id, user_id FROM sessions WHERE token = ?", (rails_token,))
        if row is None:
            return None
        with self.db.atomic():
            self.db.execute("DELETE FROM sessions WHERE id = ?", (row["id"],))
            return self.create_session(row["user_id"], ip_address, user_agent, now)

    def end_session(self, token, user_id, session_id):
        """Sign out: the session is deleted and its sockets close."""
        digest = token_digest(token)
        self._sessions.pop(digest, None)
        with self.db.atomic():
            self.db.execute("DELETE FROM sessions WHERE token = ? OR id = ?", (digest, session_id))
        self.events.sessions_revoked(user_id, session_id)

    def _delete_sessions_of(self, user_id):
        self._sessions = {key: info for key, info in self._sessions.items() if info.user_id != user_id}
        self.db.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))

    # Rooms and memberships ---------------------------------------------------
    def room(self, room_id):
        room = self._rooms.get(room_id)
        if room is None:
            row = self.db.one("SELECT rooms.*, campfire_py_threads.parent_message_id, "
                              "campfire_py_threads.parent_room_id FROM rooms LEFT JOIN campfire_py_threads "
                              "ON campfire_py_threads.room_id = rooms.id WHERE rooms.id = ?", (room_id,))
            if row is None:
                return None
            if len(self._rooms) > ROOMS_KEPT:
                self._rooms.clear()
            room = self._rooms[room_id] = Room.from_row(row, row["parent_message_id"], row["parent_room_id"])
        return room

    def member_room(self, room_id, user_id):
        """The room, if the user belongs to it; else None (never reveal that it exists)."""
        return self.room(room_id) if room_id in self.user_rooms(user_id) else None

    def room_title(self, room, viewer_id):
        """A direct room is named by its other members (Campfire's app/helpers/rooms_helper.rb)."""
        if room.type != ROOM_DIRECT:
            return room.name or "Untitled room"
        others = [self.user(user_id) for user_id in self.room_member_ids(room.id) if user_id != viewer_id]
        return ", ".join(user.name for user in others if user) or "Just you"

    def sidebar_rooms(self, user_id):
        """The rooms a person sees in the sidebar, each with its title: ([shared rooms by name],
        [direct rooms, most recently active first]) as lists of (Room, title)."""
        rows = self.rooms_for(user_id)
        shared = [Room.from_row(row) for row in rows if row["type"] != ROOM_DIRECT]
        direct = sorted((Room.from_row(row) for row in rows if row["type"] == ROOM_DIRECT),
                        key=lambda room: self.room_updated_at(room.id), reverse=True)
        return ([(room, self.room_title(room, user_id)) for room in shared],
                [(room, self.room_title(room, user_id)) for room in direct])

    def may_create_rooms(self, user):
        return user.administrator or not self.account_setting("restrict_room_creation_to_administrators")

    def create_room(self, name, room_type, creator_id, member_ids):
        now = utc_now_text()
        involvement = "everything" if room_type == ROOM_DIRECT else "mentions"
        with self.db.atomic():
            room_id = self.db.execute(
                "INSERT INTO rooms (name, type, creator_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (name, room_type, creator_id, now, now)).lastrowid
            for user_id in member_ids:
                self._add_membership(room_id, user_id, involvement, now)
        self.memberships_changed(room_id, member_ids)
        return self.room(room_id)

    def open_room(self, name, room_type, creator, member_ids):
        """A new open or closed room: an open one holds everyone, a closed one the chosen
        people and its creator."""
        active = set(self.active_user_ids())
        members = active if room_type == ROOM_OPEN else (set(member_ids) & active) | {creator.id}
        room = self.create_room(name, room_type, creator.id, sorted(members))
        self.events.room_changed(room, "created")
        return room

    def update_room(self, room, name, room_type, member_ids, actor):
        """Rename, open or close a room and set its members, as open_room chooses them."""
        active = set(self.active_user_ids())
        with self.db.atomic():
            if name != room.name:
                self.db.execute("UPDATE rooms SET name = ?, updated_at = ? WHERE id = ?",
                                (name, utc_now_text(), room.id))
                self._rooms.pop(room.id, None)
                self.bump_room(room.id)
                self.bump_users(self.room_member_ids(room.id))
            if room_type != room.type:
                self.db.execute("UPDATE rooms SET type = ?, updated_at = ? WHERE id = ?",
                                (room_type, utc_now_text(), room.id))
                self._rooms.pop(room.id, None)
                self.bump_room(room.id)
            wanted = active if room_type == ROOM_OPEN else (set(member_ids) & active) | {actor.id}
            granted, revoked = self._set_room_members(room, wanted)
        room = self.room(room.id)
        self.events.room_changed(room, "updated", revoked=revoked)
        return room

    def start_direct_room(self, member_ids, creator):
        """The direct room of exactly these people, made if it doesn't exist yet: (room, created)."""
        members = sorted(set(member_ids) | {creator.id})
        with self.db.atomic():
            room = self.direct_room_for(members)
            created = room is None
            if created:
                room = self.create_room(None, ROOM_DIRECT, creator.id, members)
        if created:
            self.events.room_changed(room, "created")
        return room, created

    def remove_room(self, room):
        """Delete a room with its messages, boosts, memberships and search rows."""
        member_ids = self.room_member_ids(room.id)
        threads = [self.room(room_id) for room_id in self.thread_room_ids(room.id)]
        with self.db.atomic():
            for thread in threads:
                self._delete_room_rows(thread.id)
            self._delete_room_rows(room.id)
        self._rooms.pop(room.id, None)
        self.memberships_changed(room.id, member_ids)
        self.events.room_deleted(room, member_ids)
        for thread in threads:
            self.events.room_deleted(thread, ())

    def _delete_room_rows(self, room_id):
        """A room's rows: its messages with their boosts, rich text, search rows, mentions and
        bookmarks; its memberships; its thread record."""
        message_ids = "SELECT id FROM messages WHERE room_id = ?"
        self.db.execute("DELETE FROM boosts WHERE message_id IN (%s)" % message_ids, (room_id,))
        room_message_ids = [row[0] for row in self.db.execute(message_ids, (room_id,))]
        for message_id in room_message_ids:
            self.db.defer(self.SEARCH_ROW_DELETE, (message_id,))
        for start in range(0, len(room_message_ids), SQLITE_IN_CHUNK):
            self._detach("Message", room_message_ids[start:start + SQLITE_IN_CHUNK])
        self.db.execute("DELETE FROM action_text_rich_texts WHERE record_type = 'Message' AND record_id IN (%s)"
                        % message_ids, (room_id,))
        self.db.execute("DELETE FROM campfire_py_bookmarks WHERE message_id IN (%s)" % message_ids, (room_id,))
        self.db.execute("DELETE FROM campfire_py_mentions WHERE room_id = ?", (room_id,))
        self.db.execute("DELETE FROM messages WHERE room_id = ?", (room_id,))
        self.db.execute("DELETE FROM campfire_py_message_deletions WHERE room_id = ?", (room_id,))
        self.db.execute("DELETE FROM memberships WHERE room_id = ?", (room_id,))
        self.db.execute("DELETE FROM campfire_py_threads WHERE room_id = ?", (room_id,))
        self.db.execute("DELETE FROM rooms WHERE id = ?", (room_id,))
        self._rooms.pop(room_id, None)

    def _add_membership(self, room_id, user_id, involvement="mentions", now=None):
        now = now or utc_now_text()
        self.db.execute(
            "INSERT OR IGNORE INTO memberships (room_id, user_id, involvement, connections, created_at, updated_at) "
            "VALUES (?, ?, ?, 0, ?, ?)", (room_id, user_id, involvement, now, now))

    def _set_room_members(self, room, user_ids):
        """Grant and revoke so the room's members are exactly user_ids: (granted, revoked)."""
        wanted = set(user_ids)
        current = {row[0] for row in self.db.all("SELECT user_id FROM memberships WHERE room_id = ?", (room.id,))}
        now = utc_now_text()
        for user_id in wanted - current:
            self._add_membership(room.id, user_id, now=now)
        for user_id in current - wanted:
            self.db.execute("DELETE FROM memberships WHERE room_id = ? AND user_id = ?", (room.id, user_id))
        self.memberships_changed(room.id, wanted | current)
        return wanted - current, current - wanted

    def direct_room_for(self, user_ids):
        """The one direct room whose members are exactly these users, if any."""
        ids = sorted(set(user_ids))
        marks = ",".join("?" * len(ids))
        row = self.db.one(
            "SELECT rooms.id FROM rooms JOIN memberships ON memberships.room_id = rooms.id "
            "WHERE rooms.type = ? GROUP BY rooms.id "
            "HAVING count(*) = ? AND sum(memberships.user_id IN (%s)) = ? ORDER BY rooms.id LIMIT 1" % marks,
            (ROOM_DIRECT, len(ids), *ids, len(ids)))
        return self.room(row[0]) if row else None

    def membership(self, room_id, user_id):
        return self.db.one("SELECT * FROM memberships WHERE room_id = ? AND user_id = ?", (room_id, user_id))

    def rooms_for(self, user_id):
        """The rooms a user sees, with their membership, visible ones only."""
        return self.db.all(
            "SELECT rooms.*, memberships.involvement, memberships.unread_at FROM rooms "
            "JOIN memberships ON memberships.room_id = rooms.id "
            "WHERE memberships.user_id = ? AND memberships.involvement != 'invisible' "
            "ORDER BY lower(rooms.name), rooms.id", (user_id,))

    def hidden_rooms(self, user_id):
        """The rooms a person hid from the sidebar, by name, as (Room, title)."""
        rooms = [Room.from_row(row) for row in self.db.all(
            "SELECT rooms.* FROM rooms JOIN memberships ON memberships.room_id = rooms.id "
            "WHERE memberships.user_id = ? AND memberships.involvement = 'invisible' "
            "ORDER BY lower(rooms.name), rooms.id", (user_id,))]
        return [(room, self.room_title(room, user_id)) for room in rooms]

    def _memberships_of(self, user_id):
        key = (self.user_versions[user_id], self.global_version)
        cached = self._member_rooms.get(user_id)
        if cached is None or cached[0] != key:
            rows = self.db.all("SELECT room_id, involvement, unread_at FROM memberships WHERE user_id = ?", (user_id,))
            rooms = {row[0]: row[1] for row in rows}
            # Threads are read by their parent room's members.
            rooms.update((row[0], row[1]) for row in self.db.all(
                "SELECT campfire_py_threads.room_id, memberships.involvement FROM campfire_py_threads "
                "JOIN memberships ON memberships.room_id = campfire_py_threads.parent_room_id "
                "WHERE memberships.user_id = ?", (user_id,)))
            cached = self._member_rooms[user_id] = (
                key, rooms,
                {row[0] for row in rows if row[2] is not None and row[1] != "invisible"})
        return cached

    def user_rooms(self, user_id):
        """{room_id: involvement} for a user's memberships, cached per user version."""
        return self._memberships_of(user_id)[1]

    def unread_room_ids(self, user_id):
        return self._memberships_of(user_id)[2]

    def room_updated_at(self, room_id):
        return self.db.value("SELECT updated_at FROM rooms WHERE id = ?", (room_id,)) or ""

    def room_member_ids(self, room_id):
        """Active members' ids of a room (a thread's: its parent room's), cached per room membership version."""
        room = self.room(room_id)
        if room is not None and room.thread:
            room_id = room.parent_room_id
        key = (self.membership_versions[room_id], self.global_version)
        cached = self._room_members.get(room_id)
        if cached is None or cached[0] != key:
            ids = [row[0] for row in self.db.all(
                "SELECT memberships.user_id FROM memberships JOIN users ON users.id = memberships.user_id "
                "WHERE memberships.room_id = ? AND users.status = ? ORDER BY lower(users.name), users.id",
                (room_id, STATUS_ACTIVE))]
            cached = self._room_members[room_id] = (key, ids)
        return cached[1]

    def set_involvement(self, room_id, user_id, involvement):
        with self.db.atomic():
            self.db.execute("UPDATE memberships SET involvement = ?, updated_at = ? WHERE room_id = ? "
                            "AND user_id = ?", (involvement, utc_now_text(), room_id, user_id))
        self.bump_users([user_id])
        self.events.sidebar_changed([user_id])

    def mark_read(self, room_id, user_id):
        """Visiting a room clears its unread mark (only writes when there is one)."""
        if room_id not in self.unread_room_ids(user_id):
            return False
        with self.db.atomic():
            cursor = self.db.execute("UPDATE memberships SET unread_at = NULL WHERE room_id = ? AND user_id = ? "
                                     "AND unread_at IS NOT NULL", (room_id, user_id))
        if cursor.rowcount:
            self.bump_users([user_id])
            self.events.room_read(room_id, user_id)
            return True
        return False

    # Presence (Campfire's app/channels/presence_channel.rb): connections counted on
    # the membership, connected_at stamped, the unread mark cleared.
    def presence_arrived(self, room_id, user_id, *, new_connection):
        """A tab is present in the room: a new connection (subscribing) or one back in view."""
        stamp = utc_now_text()
        with self.db.atomic():
            self.db.execute(
                "UPDATE memberships SET connections = connections + ?, connected_at = ?, unread_at = NULL, "
                "updated_at = ? WHERE room_id = ? AND user_id = ?",
                (1 if new_connection else 0, stamp, stamp, room_id, user_id))
        self.bump_users([user_id])
        self.events.room_read(room_id, user_id)

    def presence_left(self, room_id, user_id, *, connection_closed):
        """A tab left the room: its connection closed (unsubscribing) or it went out of view."""
        with self.db.atomic():
            self.db.execute(
                "UPDATE memberships SET connections = max(connections - ?, 0), updated_at = ? "
                "WHERE room_id = ? AND user_id = ?", (1 if connection_closed else 0, utc_now_text(), room_id, user_id))
            if not connection_closed:
                self.db.execute("UPDATE memberships SET connected_at = NULL WHERE room_id = ? AND user_id = ?",
                                (room_id, user_id))

    def presence_refreshed(self, room_id, user_id):
        with self.db.atomic():
            self.db.execute("UPDATE memberships SET connected_at = ? WHERE room_id = ? AND user_id = ?",
                            (utc_now_text(), room_id, user_id))

    def reset_connections(self):
        """Nobody is connected to a server that just started: counts left by a crash
        would otherwise hide unread marks forever."""
        with self.db.atomic():
            self.db.execute("UPDATE memberships SET connections = 0 WHERE connections != 0")

    # Messages ----------------------------------------------------------------
    MESSAGE_COLUMNS = ("SELECT messages.id, messages.room_id, messages.creator_id, messages.client_message_id, "
                       "messages.created_at, messages.updated_at, action_text_rich_texts.body AS body, "
                       # Edited: the body changed after it was saved. Rails touches messages.updated_at
                       # for boosts and attachments too, but only an edit moves the rich text's.
                       "action_text_rich_texts.updated_at > action_text_rich_texts.created_at AS edited "
                       "FROM messages LEFT JOIN action_text_rich_texts ON action_text_rich_texts.record_type = "
                       "'Message' AND action_text_rich_texts.record_id = messages.id AND "
                       "action_text_rich_texts.name = 'body' ")

    # A new message marks its room unread for visible, disconnected members other
    # than the author (Campfire's app/models/room.rb, Room#receive).
    _UNREAD_RULE = ("unread_at IS NULL AND room_id = ? AND user_id != ? AND involvement != 'invisible' "
                    "AND (connections = 0 OR connected_at IS NULL OR connected_at < ?)")
    ANY_TO_MARK_UNREAD = "SELECT 1 FROM memberships WHERE " + _UNREAD_RULE + " LIMIT 1"
    MARK_UNREAD = "UPDATE memberships SET unread_at = ?, updated_at = ? WHERE " + _UNREAD_RULE + " RETURNING user_id"

    # Search rows are written when the transaction commits, in order (Database.defer).
    SEARCH_ROW_INSERT = "INSERT INTO message_search_index (rowid, body) VALUES (?, ?)"
    SEARCH_ROW_DELETE = "DELETE FROM message_search_index WHERE rowid = ?"

    def message(self, message_id):
        return self.db.one(self.MESSAGE_COLUMNS + "WHERE messages.id = ?", (message_id,))

    def message_in(self, message_id, *, room_id=None, member_id=None):
        """The one message lookup: the message, if it is in room_id (when given) and in a
        room member_id belongs to (when given); else None."""
        message = self.message(message_id)
        if message is None or (room_id is not None and message["room_id"] != room_id) or (
                member_id is not None and message["room_id"] not in self.user_rooms(member_id)):
            return None
        return message

    def message_room_id(self, message_id):
        return self.db.value("SELECT room_id FROM messages WHERE id = ?", (message_id,))

    def message_by_client_id(self, room_id, creator_id, client_message_id):
        message_id = self.db.value("SELECT id FROM messages WHERE client_message_id = ? AND room_id = ? "
                                   "AND creator_id = ? ORDER BY id LIMIT 1", (client_message_id, room_id, creator_id))
        return None if message_id is None else self.message(message_id)

    RESIGNED_MENTIONS = "0007_rails_signed_mentions"

    def resign_mentions(self):
        """Once: mentions stored by earlier releases (signed in a format of their own)
        are signed again as Rails signs them, so Rails can verify every body we wrote.
        Timestamps stay: the bodies didn't change for anyone reading them."""
        if self.db.value("SELECT 1 FROM campfire_py_migrations WHERE name = ?", (self.RESIGNED_MENTIONS,)):
            return 0
        changed = 0
        with self.db.atomic():
            for row in self.db.all("SELECT id, body FROM action_text_rich_texts WHERE body LIKE ?",
                                   ("%" + MENTION_CONTENT_TYPE + "%",)):
                body = row["body"]
                for sgid in find_mentions(body):
                    user_id = sgid_user_id(sgid)
                    if user_id is not None and verify_sgid(sgid, self.sgid_secret) is None:
                        body = body.replace(sgid, self.mention_sgid(user_id))
                if body != row["body"]:
                    self.db.execute("UPDATE action_text_rich_texts SET body = ? WHERE id = ?", (body, row["id"]))
                    changed += 1
            self.db.execute("INSERT INTO campfire_py_migrations (name, applied_at) VALUES (?, ?)",
                            (self.RESIGNED_MENTIONS, utc_now_text()))
        if changed:
            log.info("signed the mentions of %d messages as Rails signs them", changed)
        return changed

    def mention_sgid(self, user_id):
        """A person's attachable sgid (the same for as long as SECRET_KEY_BASE is): made once,
        since a post with an "@" needs one for every member of the room."""
        sgid = self._sgids.get(user_id)
        if sgid is None:
            if len(self._sgids) >= SGIDS_KEPT:
                self._sgids.clear()
            sgid = self._sgids[user_id] = make_sgid(user_id, self.sgid_secret)
        return sgid

    def _keep_attachment(self, sgid, content_type):
        """Posted bodies keep only mentions we signed ourselves, and link previews."""
        if content_type == OPENGRAPH_CONTENT_TYPE:
            return True
        return content_type == MENTION_CONTENT_TYPE and verify_sgid(sgid, self.sgid_secret) is not None

    def mentioned_user(self, sgid):
        user_id = sgid_user_id(sgid)
        return self.user(user_id) if user_id else None

    def _mention_name(self, sgid):
        user = self.mentioned_user(sgid)
        return user.name if user else None

    def message_text(self, message):
        """A message's plain text; a file's is its name (Campfire's Message#plain_text_body)."""
        text = self.plain_text(message["body"])
        if not text and not message["body"]:
            blob = self.attachment("Message", message["id"], "attachment")
            if blob is not None:
                return blob.filename
        return text

    def plain_text(self, stored_body):
        """A body's text for search, webhooks, the bot API and /play, mentions as "@Name"."""
        return html_to_plain_text(stored_body or "", mention_name=self._mention_name)

    def clean_body(self, raw_body, room_id):
        """A posted body as it is stored: sanitized, auto-linked, '@Name' turned into mentions."""
        if len(raw_body) > MAX_MESSAGE_BODY_CHARS:
            raise PayloadTooLarge("A message holds at most %d characters." % MAX_MESSAGE_BODY_CHARS)
        body = sanitize_html(raw_body, keep_attachment=self._keep_attachment, link=True)
        if "@" in body:
            members = [self.user(user_id) for user_id in self.room_member_ids(room_id)]
            body = link_mentions(body, [(user.name, self.mention_sgid(user.id)) for user in members if user])
        return body

    def post_message(self, room, user, raw_body, client_message_id):
        """(message, created): a retry with the same client_message_id returns the first."""
        existing = self.message_by_client_id(room.id, user.id, client_message_id)
        if existing is not None:
            return existing, False
        body = self.clean_body(str(raw_body), room.id)
        plain = self.plain_text(body)
        if not plain.strip():
            raise Unprocessable("A message can't be empty.")
        groups = group_mentions(plain)
        if "everyone" in groups:
            problem = self.everyone_problem(room, user)
            if problem:  # the composer shows the reason from the header
                raise Forbidden(problem, headers=[("X-Refused-Because", problem)])
        if groups or room.thread or "<action-text-attachment" in body:  # someone to notify
            with self.db.atomic():
                message, unread_user_ids = self.create_message(room.id, user.id, client_message_id, body, plain)
                mentioned = self._record_mentions(room, message, groups)
        else:  # most messages: nobody's inbox changes
            message, unread_user_ids = self.create_message(room.id, user.id, client_message_id, body, plain)
            mentioned = []
        if room.direct:  # direct rooms are listed by recency in every member's sidebar
            self.bump_users(self.room_member_ids(room.id))
        if room.thread:  # the message it answers counts one more reply
            self.bump_room(room.parent_room_id)
        self.events.message_created(room, message, unread_user_ids)
        if mentioned:
            self.events.mentioned(mentioned, message)
        return message, True

    def edit_message(self, message, raw_body):
        if not message["body"] and self.attachment("Message", message["id"], "attachment") is not None:
            raise Forbidden("A file can be deleted, not edited.")  # Campfire's messages_controller.rb
        body = self.clean_body(str(raw_body), message["room_id"])
        plain = self.plain_text(body)
        if not plain.strip():
            raise Unprocessable("A message can't be empty.")
        self.update_message(message, body, plain)
        message = self.message(message["id"])
        self.events.message_updated(message)
        return message

    def remove_message(self, message):
        with self.db.atomic():
            self._delete_message(message)
        room = self.room(message["room_id"])
        if room is not None and room.thread:
            self.bump_room(room.parent_room_id)
        self.events.message_removed(message)

    def create_message(self, room_id, creator_id, client_message_id, body, plain_text, now=None):
        """The message, its rich text and its search row, in one transaction.

        Returns (the message as a row would read, ids of members whose room just became unread)."""
        stamp = utc_now_text(now)
        with self.db.atomic():
            message_id = self.db.execute(
                "INSERT INTO messages (room_id, creator_id, client_message_id, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)", (room_id, creator_id, client_message_id, stamp, stamp)).lastrowid
            self.db.execute(
                "INSERT INTO action_text_rich_texts (name, body, record_type, record_id, created_at, updated_at) "
                "VALUES ('body', ?, 'Message', ?, ?, ?)", (body, message_id, stamp, stamp))
            self.db.defer(self.SEARCH_ROW_INSERT, (message_id, plain_text))
            # Looked for first: in a busy room nearly everyone is unread already or
            # present, and the search (a partial index) costs a fifth of the update.
            unread_params = (room_id, creator_id, utc_now_text((now or time.time()) - PRESENCE_WINDOW))
            unread = []
            if self.db.one(self.ANY_TO_MARK_UNREAD, unread_params):
                unread = [row[0] for row in self.db.execute(self.MARK_UNREAD,
                                                            (stamp, stamp, *unread_params)).fetchall()]
            self.db.execute("UPDATE rooms SET updated_at = ? WHERE id = ?", (stamp, room_id))
            self.bump_room(room_id)
            self.bump_users(unread)
        message = {"id": message_id, "room_id": room_id, "creator_id": creator_id,
                   "client_message_id": client_message_id, "created_at": stamp, "updated_at": stamp, "body": body,
                   "edited": False}
        return message, unread

    def update_message(self, message, body, plain_text, now=None):
        stamp = utc_now_text(now)
        with self.db.atomic():
            self.db.execute("UPDATE action_text_rich_texts SET body = ?, updated_at = ? WHERE record_type = "
                            "'Message' AND record_id = ? AND name = 'body'", (body, stamp, message["id"]))
            self.db.execute("UPDATE messages SET updated_at = ? WHERE id = ?", (stamp, message["id"]))
            self.db.defer(self.SEARCH_ROW_DELETE, (message["id"],))
            self.db.defer(self.SEARCH_ROW_INSERT, (message["id"], plain_text))
        self.bump_room(message["room_id"])

    def _delete_message(self, message):
        """The message, its rich text, boosts, attachment and search row; its deletion remembered for /refresh."""
        stamp = utc_now_text()
        self._detach("Message", [message["id"]])
        self.db.execute("INSERT OR REPLACE INTO campfire_py_message_deletions (message_id, room_id, deleted_at) "
                        "VALUES (?, ?, ?)", (message["id"], message["room_id"], stamp))
        self.db.execute("DELETE FROM campfire_py_message_deletions WHERE deleted_at < ?",
                        (utc_now_text(time.time() - MESSAGE_DELETIONS_KEPT_SECONDS),))
        self.db.execute("DELETE FROM boosts WHERE message_id = ?", (message["id"],))
        self.db.defer(self.SEARCH_ROW_DELETE, (message["id"],))
        self.db.execute("DELETE FROM action_text_rich_texts WHERE record_type = 'Message' AND record_id = ?",
                        (message["id"],))
        self.db.execute("DELETE FROM campfire_py_mentions WHERE message_id = ?", (message["id"],))
        self.db.execute("DELETE FROM campfire_py_bookmarks WHERE message_id = ?", (message["id"],))
        self.db.execute("DELETE FROM messages WHERE id = ?", (message["id"],))
        thread_room_id = self.db.value("SELECT room_id FROM campfire_py_threads WHERE parent_message_id = ?",
                                       (message["id"],))
        if thread_room_id is not None:  # its thread goes with it
            self._delete_room_rows(thread_room_id)
        self.bump_room(message["room_id"])

    # Attachments (Active Storage's tables, as Rails writes them) -------------------
    ATTACHMENT_COLUMNS = (
        "SELECT active_storage_attachments.record_id, active_storage_attachments.name, active_storage_blobs.id, "
        "active_storage_blobs.key, active_storage_blobs.filename, active_storage_blobs.content_type, "
        "active_storage_blobs.metadata, active_storage_blobs.byte_size, active_storage_blobs.checksum, "
        "active_storage_blobs.created_at FROM active_storage_attachments JOIN active_storage_blobs "
        "ON active_storage_blobs.id = active_storage_attachments.blob_id ")

    def attachments_for(self, record_type, record_ids, name=None):
        """{record id: Blob} of the records' attachments (named `name`, or any)."""
        found = {}
        record_ids = list(record_ids)
        for start in range(0, len(record_ids), SQLITE_IN_CHUNK):
            chunk = record_ids[start:start + SQLITE_IN_CHUNK]
            rows = self.db.all(
                self.ATTACHMENT_COLUMNS + "WHERE active_storage_attachments.record_type = ? AND "
                "active_storage_attachments.record_id IN (%s) ORDER BY active_storage_attachments.id"
                % ",".join("?" * len(chunk)), (record_type, *chunk))
            for row in rows:
                if name is None or row["name"] == name:
                    found.setdefault(row["record_id"], Blob.from_row(row))
        return found

    def attachment(self, record_type, record_id, name):
        return self.attachments_for(record_type, [record_id], name).get(record_id)

    def blob_exists(self, key):
        return self.db.value("SELECT 1 FROM active_storage_blobs WHERE key = ?", (key,)) is not None

    def _attach(self, record_type, record_id, name, upload, stamp):
        """Insert the upload's blob and attach it (inside atomic()); its file moves into place after the commit."""
        blob_id = self.db.execute(
            "INSERT INTO active_storage_blobs (key, filename, content_type, metadata, service_name, byte_size, "
            "checksum, created_at) VALUES (?, ?, ?, ?, 'local', ?, ?, ?)",
            (upload.key, upload.filename, upload.content_type, json.dumps(upload.metadata, separators=(",", ":")),
             upload.byte_size, upload.checksum, stamp)).lastrowid
        self.db.execute("INSERT INTO active_storage_attachments (name, record_type, record_id, blob_id, created_at) "
                        "VALUES (?, ?, ?, ?, ?)", (name, record_type, record_id, blob_id, stamp))
        self.events.blobs_created([upload.key])

    def _detach(self, record_type, record_ids, name=None):
        """Delete the records' attachments and their blobs, with the variants Rails made of
        them (inside atomic()); the files go after the commit."""
        if not record_ids:
            return
        marks = ",".join("?" * len(record_ids))
        name_clause, params = ("AND name = ? ", (record_type, *record_ids, name)) if name else ("", (record_type,
                                                                                                   *record_ids))
        blob_ids = [row[0] for row in self.db.all(
            "SELECT blob_id FROM active_storage_attachments WHERE record_type = ? AND record_id IN (%s) %s"
            % (marks, name_clause), params)]
        if not blob_ids:
            return
        self.db.execute("DELETE FROM active_storage_attachments WHERE record_type = ? AND record_id IN (%s) %s"
                        % (marks, name_clause), params)
        blob_marks = ",".join("?" * len(blob_ids))
        variant_ids = [row[0] for row in self.db.all(
            "SELECT id FROM active_storage_variant_records WHERE blob_id IN (%s)" % blob_marks, blob_ids)]
        if variant_ids:
            variant_marks = ",".join("?" * len(variant_ids))
            blob_ids += [row[0] for row in self.db.all(
                "SELECT blob_id FROM active_storage_attachments WHERE record_type = 'ActiveStorage::VariantRecord' "
                "AND record_id IN (%s)" % variant_marks, variant_ids)]
            self.db.execute("DELETE FROM active_storage_attachments WHERE record_type = "
                            "'ActiveStorage::VariantRecord' AND record_id IN (%s)" % variant_marks, variant_ids)
            self.db.execute("DELETE FROM active_storage_variant_records WHERE id IN (%s)" % variant_marks, variant_ids)
        blob_marks = ",".join("?" * len(blob_ids))
        # A blob another record still uses stays (Rails lets two attachments share one).
        in_use = {row[0] for row in self.db.all(
            "SELECT blob_id FROM active_storage_attachments WHERE blob_id IN (%s)" % blob_marks, blob_ids)}
        gone = [blob_id for blob_id in blob_ids if blob_id not in in_use]
        if not gone:
            return
        gone_marks = ",".join("?" * len(gone))
        keys = [row[0] for row in self.db.all("SELECT key FROM active_storage_blobs WHERE id IN (%s)" % gone_marks,
                                              gone)]
        self.db.execute("DELETE FROM active_storage_blobs WHERE id IN (%s)" % gone_marks, gone)
        self.events.blobs_deleted(keys)

    def preview_of(self, message_id, blob):
        """The smaller copy of a message's image (or its video's poster) the sender's browser
        made (a Blob), else True when Rails made one (a variant), else None."""
        if blob.kind not in ("image", "video"):
            return None
        preview = self.attachment("Message", message_id, "preview")
        if preview is not None:
            return preview
        return True if blob.kind == "image" and self.variant_key(blob.id) else None

    def variant_key(self, blob_id):
        """The key of a preview Rails made of a blob (Campfire's 1200×800 thumbnail), or None."""
        return self.db.value(
            "SELECT active_storage_blobs.key FROM active_storage_variant_records JOIN active_storage_attachments "
            "ON active_storage_attachments.record_type = 'ActiveStorage::VariantRecord' AND "
            "active_storage_attachments.record_id = active_storage_variant_records.id JOIN active_storage_blobs "
            "ON active_storage_blobs.id = active_storage_attachments.blob_id "
            "WHERE active_storage_variant_records.blob_id = ? ORDER BY active_storage_variant_records.id LIMIT 1",
            (blob_id,))

    def set_avatar(self, user_id, upload):
        """A person's (or a bot's) picture, in place of the one before; None removes it."""
        with self.db.atomic():
            self._detach("User", [user_id], "avatar")
            if upload is not None:
                self._attach("User", user_id, "avatar", upload, utc_now_text())
            self.db.execute("UPDATE users SET updated_at = ? WHERE id = ?", (utc_now_text(), user_id))
        self.forget_user(user_id)
        self._account_changed()  # avatars are everywhere: in cached pages and messages

    def post_attachment(self, room, user, upload, client_message_id, preview=None):
        """(message, created): a message holding one file, as Campfire makes one per file, with
        the preview its sender's browser made, if any. Its text, for search, is the file's name."""
        existing = self.message_by_client_id(room.id, user.id, client_message_id)
        if existing is not None:
            return existing, False
        with self.db.atomic():
            message, unread_user_ids = self.create_message(room.id, user.id, client_message_id, "", upload.filename)
            self._attach("Message", message["id"], "attachment", upload, message["created_at"])
            if preview is not None:
                self._attach("Message", message["id"], "preview", preview, message["created_at"])
        if room.direct:
            self.bump_users(self.room_member_ids(room.id))
        self.events.message_created(room, message, unread_user_ids)
        return message, True

    def messages_page(self, room_id, *, before=None, after=None, limit=MESSAGE_PAGE_SIZE):
        """Up to `limit` messages next to a message (or the newest), oldest first."""
        if before is not None:
            rows = self.db.all(self.MESSAGE_COLUMNS + "WHERE messages.room_id = ? AND "
                               "(messages.created_at, messages.id) < (SELECT created_at, id FROM messages WHERE id = ?) "
                               "ORDER BY messages.created_at DESC, messages.id DESC LIMIT ?", (room_id, before, limit))
            return rows[::-1]
        if after is not None:
            return self.db.all(self.MESSAGE_COLUMNS + "WHERE messages.room_id = ? AND "
                               "(messages.created_at, messages.id) > (SELECT created_at, id FROM messages WHERE id = ?) "
                               "ORDER BY messages.created_at, messages.id LIMIT ?", (room_id, after, limit))
        rows = self.db.all(self.MESSAGE_COLUMNS + "WHERE messages.room_id = ? "
                           "ORDER BY messages.created_at DESC, messages.id DESC LIMIT ?", (room_id, limit))
        return rows[::-1]

    def message_count(self, room_id):
        return self.db.value("SELECT count(*) FROM messages WHERE room_id = ?", (room_id,))

    def messages_extent(self):
        """(the newest message id or 0, how many messages there are), across every room."""
        newest, count = self.db.one("SELECT max(id), count(*) FROM messages")
        return newest or 0, count

    def has_older(self, room_id, message_id):
        """Whether the room has a message before this one."""
        return bool(self.db.value("SELECT 1 FROM messages WHERE room_id = ? AND (created_at, id) < "
                                  "(SELECT created_at, id FROM messages WHERE id = ?) LIMIT 1", (room_id, message_id)))

    def has_newer(self, room_id, message_id):
        """Whether the room has a message after this one."""
        return bool(self.db.value("SELECT 1 FROM messages WHERE room_id = ? AND (created_at, id) > "
                                  "(SELECT created_at, id FROM messages WHERE id = ?) LIMIT 1", (room_id, message_id)))

    def deleted_since(self, room_id, since_text, limit=MAX_REFRESH_DELETIONS):
        return [row[0] for row in self.db.all(
            "SELECT message_id FROM campfire_py_message_deletions WHERE room_id = ? AND deleted_at >= ? "
            "ORDER BY deleted_at LIMIT ?", (room_id, since_text, limit))]

    def messages_since(self, room_id, since_text, limit, after=None):
        """Messages created or edited since a moment, by (updated_at, id), past `after`:
        the (updated_at, id) of the last one a previous page held (an edit moves a
        message to the end, so nothing is skipped)."""
        if after is None:
            return self.db.all(self.MESSAGE_COLUMNS + "WHERE messages.room_id = ? AND messages.updated_at >= ? "
                               "ORDER BY messages.updated_at, messages.id LIMIT ?", (room_id, since_text, limit))
        return self.db.all(self.MESSAGE_COLUMNS + "WHERE messages.room_id = ? AND messages.updated_at >= ? "
                           "AND (messages.updated_at, messages.id) > (?, ?) "
                           "ORDER BY messages.updated_at, messages.id LIMIT ?", (room_id, since_text, *after, limit))

    # Boosts ------------------------------------------------------------------
    def boosts_for(self, message_ids):
        if not message_ids:
            return {}
        boosts = collections.defaultdict(list)
        for start in range(0, len(message_ids), SQLITE_IN_CHUNK):
            chunk = message_ids[start:start + SQLITE_IN_CHUNK]
            for row in self.db.all("SELECT id, message_id, booster_id, content FROM boosts WHERE message_id IN (%s) "
                                   "ORDER BY id" % ",".join("?" * len(chunk)), chunk):
                boosts[row["message_id"]].append(row)
        return boosts

    def boost(self, boost_id):
        return self.db.one("SELECT * FROM boosts WHERE id = ?", (boost_id,))

    def add_boost(self, message, booster_id, content):
        """A boost of at most MAX_BOOST_CHARS (422 when empty or longer); returns its row."""
        if not content:
            raise Unprocessable("A boost needs some content.")
        if len(content) > MAX_BOOST_CHARS:
            raise Unprocessable("A boost holds at most %d characters." % MAX_BOOST_CHARS)
        stamp = utc_now_text()
        with self.db.atomic():
            boost_id = self.db.execute(
                "INSERT INTO boosts (message_id, booster_id, content, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (message["id"], booster_id, content, stamp, stamp)).lastrowid
        self.bump_room(message["room_id"])
        boost = self.boost(boost_id)
        self.events.boost_changed(message, boost, "created")
        return boost

    def remove_boost(self, message, boost):
        with self.db.atomic():
            self.db.execute("DELETE FROM boosts WHERE id = ?", (boost["id"],))
        self.bump_room(message["room_id"])
        self.events.boost_changed(message, boost, "deleted")

    # Catching up: mentions, @everyone and @here, threads, bookmarks, unread marks ----
    def home_room(self, room):
        """The room whose members read this one: a thread's parent room, else the room itself."""
        return self.room(room.parent_room_id) if room.thread else room

    def everyone_problem(self, room, user):
        """Why this person may not notify @everyone here, or None: in a room of more than
        EVERYONE_OPEN_LIMIT people only administrators and the room's creator may."""
        home = self.home_room(room)
        if home is None or user.administrator or user.bot or user.id == home.creator_id:
            return None  # a bot is set up by an administrator (and Campfire's bot API refuses no text)
        if len(self.room_member_ids(home.id)) <= EVERYONE_OPEN_LIMIT:
            return None
        return ("Only administrators and the room's creator can notify @everyone in a room of more than %d "
                "people." % EVERYONE_OPEN_LIMIT)

    def present_member_ids(self, room_id, now=None):
        """Members with the room open in a visible tab (who @here reaches)."""
        since = utc_now_text((now or time.time()) - PRESENCE_WINDOW)
        return {row[0] for row in self.db.all("SELECT user_id FROM memberships WHERE room_id = ? AND connections > 0 "
                                              "AND connected_at >= ?", (room_id, since))}

    def thread_participant_ids(self, room):
        """Who a thread's replies notify: the author of the message it answers and everyone who replied."""
        ids = {row[0] for row in self.db.all("SELECT DISTINCT creator_id FROM messages WHERE room_id = ?", (room.id,))}
        parent = self.message(room.parent_message_id)
        if parent is not None:
            ids.add(parent["creator_id"])
        return ids

    def _record_mentions(self, room, message, groups):
        """Inbox rows for everyone a new message notifies: the people it mentions, the room
        for @everyone, those present for @here, a thread's participants. People reading the
        room as it arrives have seen it. Returns their ids."""
        home = self.home_room(room)
        ids = {sgid_user_id(sgid) for sgid in find_mentions(message["body"] or "")}
        if room.thread:
            ids |= self.thread_participant_ids(room)
        if not ids and not groups:
            return []
        members = set(self.room_member_ids(home.id))
        present = self.present_member_ids(home.id)
        if groups:  # a room someone muted (or hid) doesn't call them for @everyone or @here
            muted = {row[0] for row in self.db.all("SELECT user_id FROM memberships WHERE room_id = ? AND "
                                                   "involvement IN ('nothing', 'invisible')", (home.id,))}
            ids |= (members if "everyone" in groups else present) - muted
        if room.thread:
            present = set()  # being in the room is not reading its threads
        ids &= members
        ids.discard(message["creator_id"])
        ids = sorted(user_id for user_id in ids if (user := self.user(user_id)) is not None and not user.bot)
        stamp = message["created_at"]
        for user_id in ids:
            self.db.execute("INSERT OR IGNORE INTO campfire_py_mentions (user_id, message_id, room_id, created_at, "
                            "read_at) VALUES (?, ?, ?, ?, ?)",
                            (user_id, message["id"], room.id, stamp, stamp if user_id in present else None))
        self.bump_users(ids)
        return ids

    def mentions(self, user_id, *, before=None, limit=MENTIONS_PAGE_SIZE):
        """(messages newest first, {message id: unread}, more): what mentions the person in rooms
        they still belong to, `limit` at a time before a message id."""
        rows = self.db.all("SELECT message_id, room_id, read_at FROM campfire_py_mentions WHERE user_id = ? "
                           "AND message_id < ? ORDER BY message_id DESC LIMIT ?",
                           (user_id, MAX_ROW_ID if before is None else before, limit + 1))
        more = len(rows) > limit
        rooms = self.user_rooms(user_id)
        rows = [row for row in rows[:limit] if row["room_id"] in rooms]
        unread = {row["message_id"]: row["read_at"] is None for row in rows}
        messages = self.messages_by_id(list(unread))
        return sorted(messages, key=lambda message: message["id"], reverse=True), unread, more

    def _unread_mentions(self, user_id):
        """{room id: unread mentions} of the person's rooms, cached per user version (a
        mention, a read and a change of rooms each bump it)."""
        key = (self.user_versions[user_id], self.global_version)
        cached = self._mention_counts.get(user_id)
        if cached is None or cached[0] != key:
            rooms = self.user_rooms(user_id)
            counts = {room_id: count for room_id, count in self.db.all(
                "SELECT room_id, count(*) FROM campfire_py_mentions WHERE user_id = ? AND read_at IS NULL "
                "GROUP BY room_id", (user_id,)) if room_id in rooms}
            if len(self._mention_counts) > MENTION_COUNTS_KEPT:
                self._mention_counts.clear()
            cached = self._mention_counts[user_id] = (key, counts)
        return cached[1]

    def unread_mention_count(self, user_id):
        return sum(self._unread_mentions(user_id).values())

    def mark_mentions_read(self, user_id, room_id):
        """Opening a room reads the mentions in it; writes only when there are some."""
        if room_id not in self._unread_mentions(user_id):
            return False
        with self.db.atomic():
            self.db.execute("UPDATE campfire_py_mentions SET read_at = ? WHERE user_id = ? AND room_id = ? "
                            "AND read_at IS NULL", (utc_now_text(), user_id, room_id))
        self.bump_users([user_id])
        self.events.sidebar_changed([user_id])
        return True

    def messages_by_id(self, message_ids):
        rows = []
        for start in range(0, len(message_ids), SQLITE_IN_CHUNK):
            chunk = message_ids[start:start + SQLITE_IN_CHUNK]
            rows += self.db.all(self.MESSAGE_COLUMNS + "WHERE messages.id IN (%s)" % ",".join("?" * len(chunk)), chunk)
        return rows

    def threads_changed_since(self, room_id, since_text, limit=REFRESH_PAGE_SIZE):
        """The room's messages whose threads gained or lost a reply since a moment."""
        return self.messages_by_id([row[0] for row in self.db.all(
            "SELECT parent_message_id FROM campfire_py_threads WHERE parent_room_id = ? AND ("
            "EXISTS (SELECT 1 FROM messages WHERE messages.room_id = campfire_py_threads.room_id "
            "AND messages.created_at >= ?) OR EXISTS (SELECT 1 FROM campfire_py_message_deletions AS deletions "
            "WHERE deletions.room_id = campfire_py_threads.room_id AND deletions.deleted_at >= ?)) "
            "ORDER BY parent_message_id DESC LIMIT ?", (room_id, since_text, since_text, limit))])

    def thread_room_ids(self, room_id):
        return [row[0] for row in self.db.all("SELECT room_id FROM campfire_py_threads WHERE parent_room_id = ?",
                                              (room_id,))]

    def thread_room_for(self, message_id):
        room_id = self.db.value("SELECT room_id FROM campfire_py_threads WHERE parent_message_id = ?", (message_id,))
        return None if room_id is None else self.room(room_id)

    def start_thread(self, message, user):
        """The room of the thread answering a message, made when it has none yet."""
        parent_room = self.room(message["room_id"])
        if parent_room.thread:
            raise Unprocessable("A reply in a thread can't start a thread of its own.")
        with self.db.atomic():
            room = self.thread_room_for(message["id"])
            if room is not None:
                return room
            stamp = utc_now_text()
            room_id = self.db.execute("INSERT INTO rooms (name, type, creator_id, created_at, updated_at) "
                                      "VALUES (NULL, ?, ?, ?, ?)", (ROOM_CLOSED, user.id, stamp, stamp)).lastrowid
            self.db.execute("INSERT INTO campfire_py_threads (room_id, parent_message_id, parent_room_id, created_at) "
                            "VALUES (?, ?, ?, ?)", (room_id, message["id"], parent_room.id, stamp))
            self.bump_users(self.room_member_ids(parent_room.id))  # their rooms now include the thread
        return self.room(room_id)

    def threads_for(self, message_ids):
        """{message id: (thread room id, replies, last repliers' ids newest first)} for those
        of the messages that have replies in a thread."""
        threads = {}
        for start in range(0, len(message_ids), SQLITE_IN_CHUNK):
            chunk = message_ids[start:start + SQLITE_IN_CHUNK]
            for parent_id, room_id in self.db.all(
                    "SELECT parent_message_id, room_id FROM campfire_py_threads WHERE parent_message_id IN (%s)"
                    % ",".join("?" * len(chunk)), chunk):
                count = self.db.value("SELECT count(*) FROM messages WHERE room_id = ?", (room_id,))
                if not count:
                    continue
                repliers = []
                for (creator_id,) in self.db.all("SELECT creator_id FROM messages WHERE room_id = ? "
                                                 "ORDER BY created_at DESC, id DESC", (room_id,)):
                    if creator_id not in repliers:
                        repliers.append(creator_id)
                        if len(repliers) == THREAD_REPLIER_AVATARS:
                            break
                threads[parent_id] = (room_id, count, tuple(repliers))
        return threads

    def unread_since(self, room_id, user_id):
        """When the room became unread for the person (the first message they haven't seen), or None."""
        return self.db.value("SELECT unread_at FROM memberships WHERE room_id = ? AND user_id = ?", (room_id, user_id))

    def mark_unread(self, message, user_id):
        """"Mark as unread": the room is unread from this message on, until the person comes back."""
        room = self.room(message["room_id"])
        home = self.home_room(room)
        stamp = message["created_at"]
        if room.thread:  # the room is unread from the message the thread answers
            parent = self.message(room.parent_message_id)
            stamp = parent["created_at"] if parent is not None else stamp
        with self.db.atomic():
            self.db.execute("UPDATE memberships SET unread_at = ?, updated_at = ? WHERE room_id = ? AND user_id = ?",
                            (stamp, utc_now_text(), home.id, user_id))
        self.bump_users([user_id])
        self.events.sidebar_changed([user_id])
        return home

    def save_message(self, user_id, message):
        with self.db.atomic():
            self.db.execute("INSERT OR IGNORE INTO campfire_py_bookmarks (user_id, message_id, created_at) "
                            "VALUES (?, ?, ?)", (user_id, message["id"], utc_now_text()))
        self.bump_users([user_id])

    def unsave_message(self, user_id, message_id):
        with self.db.atomic():
            self.db.execute("DELETE FROM campfire_py_bookmarks WHERE user_id = ? AND message_id = ?",
                            (user_id, message_id))
        self.bump_users([user_id])

    def saved_messages(self, user_id, page=0, limit=MENTIONS_PAGE_SIZE):
        """(messages, most recently saved first, in rooms the person still belongs to; more)."""
        rows = self.db.all("SELECT message_id FROM campfire_py_bookmarks WHERE user_id = ? "
                           "ORDER BY created_at DESC, message_id DESC LIMIT ? OFFSET ?",
                           (user_id, limit + 1, page * limit))
        order = {row[0]: index for index, row in enumerate(rows[:limit])}
        rooms = self.user_rooms(user_id)
        messages = [message for message in self.messages_by_id(list(order)) if message["room_id"] in rooms]
        return sorted(messages, key=lambda message: order[message["id"]]), len(rows) > limit

    # Search ------------------------------------------------------------------
    def search(self, user_id, query, limit=SEARCH_RESULT_LIMIT, *, room_id=None, creator_id=None):
        """The newest `limit` messages matching every word (the last one as a prefix too),
        in the user's rooms only, newest first (by created_at, as Campfire orders them);
        with room_id, in that room and its threads; with creator_id, that person's.

        A probe takes the newest matches across all rooms (FTS5 walks its
        doclists in rowid order, so this is cheap) and keeps the user's; only
        when that leaves too few does a membership-scoped query run."""
        match = fts_match_expression(query)
        if match is None:
            return []
        rooms = self.user_rooms(user_id)
        if room_id is not None:
            rooms = {candidate for candidate in rooms if candidate == room_id or (
                (room := self.room(candidate)) is not None and room.parent_room_id == room_id)}
        probe_limit = self.config.search_probe_limit
        probe = self.db.all("SELECT rowid FROM message_search_index WHERE message_search_index MATCH ? "
                            "ORDER BY rowid DESC LIMIT ?", (match, probe_limit))
        candidate_ids = [row[0] for row in probe]
        marks = ",".join("?" * len(candidate_ids)) or "NULL"
        visible = [row[0] for row in self.db.all("SELECT id, room_id, creator_id FROM messages WHERE id IN (%s) "
                                                 "ORDER BY created_at DESC, id DESC" % marks, candidate_ids)
                   if row[1] in rooms and creator_id in (None, row[2])][:limit]
        if len(visible) == limit or len(probe) < probe_limit:
            rows = self.db.all(self.MESSAGE_COLUMNS + "WHERE messages.id IN (%s) "
                               "ORDER BY messages.created_at DESC, messages.id DESC"
                               % (",".join("?" * len(visible)) or "NULL"), visible)
        else:
            room_ids = list(rooms) or [0]
            rows = self.db.all(
                self.MESSAGE_COLUMNS + "WHERE messages.id IN (SELECT rowid FROM message_search_index "
                "WHERE message_search_index MATCH ?) AND messages.room_id IN (%s) AND (? IS NULL OR "
                "messages.creator_id = ?) ORDER BY messages.created_at DESC, messages.id DESC LIMIT ?"
                % ",".join("?" * len(room_ids)), (match, *room_ids, creator_id, creator_id, limit))
        return rows

    def search_index_complete(self):
        """Whether every message seems to have its search row (as many rows as messages).
        A storage restored from a backup, or made by hand, may have none or some."""
        messages = self.db.value("SELECT count(*) FROM messages")
        try:
            rows = self.db.value("SELECT count(*) FROM message_search_index_docsize")
        except sqlite3.OperationalError:  # an index made without its size table: walk it
            return False
        return rows == messages

    def index_missing_search_rows(self, after, upto, chunk):
        """Search rows for the messages with ids in (after, upto] that have none, looking
        at `chunk` messages: (the last id looked at or None when done, looked at, written)."""
        rows = self.db.all(self.MESSAGE_COLUMNS + "WHERE messages.id > ? AND messages.id <= ? "
                           "ORDER BY messages.id LIMIT ?", (after, upto, chunk))
        if not rows:
            return None, 0, 0
        indexed = {row[0] for row in self.db.all("SELECT rowid FROM message_search_index WHERE rowid BETWEEN ? AND ?",
                                                 (rows[0]["id"], rows[-1]["id"]))}
        missing = [(row["id"], self.plain_text(row["body"])) for row in rows if row["id"] not in indexed]
        if missing:
            with self.db.atomic():
                self.db.connection.executemany(self.SEARCH_ROW_INSERT, missing)
            self.message_version += 1  # search results may change
        return rows[-1]["id"], len(rows), len(missing)

    def is_latest_search(self, user_id, query):
        return self._last_search.get(user_id) == query

    def record_search(self, user_id, query):
        """Keep the user's 10 most recent distinct searches (skips a repeat of the latest)."""
        if self.is_latest_search(user_id, query):
            return
        stamp = utc_now_text()
        with self.db.atomic():
            self.db.execute("DELETE FROM searches WHERE user_id = ? AND query = ?", (user_id, query))
            self.db.execute("INSERT INTO searches (user_id, query, created_at, updated_at) VALUES (?, ?, ?, ?)",
                            (user_id, query, stamp, stamp))
            self.db.execute("DELETE FROM searches WHERE user_id = ? AND id NOT IN (SELECT id FROM searches WHERE "
                            "user_id = ? ORDER BY id DESC LIMIT ?)", (user_id, user_id, RECENT_SEARCHES_KEPT))
        self._last_search[user_id] = query
        self.bump_users([user_id])

    def recent_searches(self, user_id):
        return [row[0] for row in self.db.all("SELECT query FROM searches WHERE user_id = ? ORDER BY id DESC LIMIT ?",
                                              (user_id, RECENT_SEARCHES_KEPT))]

    def clear_searches(self, user_id):
        with self.db.atomic():
            self.db.execute("DELETE FROM searches WHERE user_id = ?", (user_id,))
        self._last_search.pop(user_id, None)
        self.bump_users([user_id])

    # Bots (Campfire's app/models/user/bot.rb) ---------------------------------
    # A bot is a user with role bot and a bot_token; its key "<id>-<token>" in the
    # path is all a bot API request carries.
    _BOT_COLUMNS = ("SELECT users.id, users.name, users.bot_token, (SELECT url FROM webhooks "
                    "WHERE webhooks.user_id = users.id ORDER BY webhooks.id LIMIT 1) AS webhook_url FROM users ")

    def active_bots(self):
        """Rows (id, name, bot_token, webhook_url) of the active bots, by name."""
        return self.db.all(self._BOT_COLUMNS + "WHERE users.role = ? AND users.status = ? "
                           "ORDER BY lower(users.name), users.id", (ROLE_BOT, STATUS_ACTIVE))

    def active_bot(self, bot_id):
        return self.db.one(self._BOT_COLUMNS + "WHERE users.id = ? AND users.role = ? AND users.status = ?",
                           (bot_id, ROLE_BOT, STATUS_ACTIVE))

    def authenticate_bot(self, key):
        """The active bot a key names, else None (Campfire's User.authenticate_bot)."""
        match = BOT_KEY_RE.match(key.strip())
        if not match:
            return None
        row = self.active_bot(int(match[1]))
        if row is None or not row["bot_token"] or not hmac.compare_digest(row["bot_token"].encode(),
                                                                          match[2].encode()):
            return None
        return self.user(row["id"])

    def _set_webhook(self, bot_id, url, now):
        """One webhooks row per bot: the URL, or none when it is blank."""
        if not url:
            self.db.execute("DELETE FROM webhooks WHERE user_id = ?", (bot_id,))
        elif not self.db.execute("UPDATE webhooks SET url = ?, updated_at = ? WHERE user_id = ?",
                                 (url, now, bot_id)).rowcount:
            self.db.execute("INSERT INTO webhooks (user_id, url, created_at, updated_at) VALUES (?, ?, ?, ?)",
                            (bot_id, url, now, now))

    def create_bot(self, name, webhook_url):
        """A bot in every open room, as people are (it has no email and no password)."""
        now = utc_now_text()
        with self.db.atomic():
            bot_id = self.db.execute(
                "INSERT INTO users (name, role, status, bot_token, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (name, ROLE_BOT, STATUS_ACTIVE, generate_bot_token(), now, now)).lastrowid
            self._join_open_rooms(bot_id, now)
            self._set_webhook(bot_id, webhook_url, now)
        self._account_changed()
        return bot_id

    def update_bot(self, bot_id, name, webhook_url=None, *, change_webhook=True):
        now = utc_now_text()
        with self.db.atomic():
            self.db.execute("UPDATE users SET name = ?, updated_at = ? WHERE id = ?", (name, now, bot_id))
            if change_webhook:
                self._set_webhook(bot_id, webhook_url, now)
        self._account_changed()  # its name is on every message it wrote

    def reset_bot_key(self, bot_id):
        with self.db.atomic():
            self.db.execute("UPDATE users SET bot_token = ?, updated_at = ? WHERE id = ?",
                            (generate_bot_token(), utc_now_text(), bot_id))

    def webhook_deliveries(self, room, message):
        """Who hears about a new message (Campfire's app/models/webhook.rb): in a direct room
        every active bot in it, elsewhere each mentioned active bot in the room, never its
        author, and only for messages people wrote (a bot's post or reply never triggers one)."""
        author = self.user(message["creator_id"])
        if author is None or author.bot:
            return []
        body = message["body"] or ""
        if room.direct:
            candidates = self.room_member_ids(room.id)
        else:
            mentioned = {sgid_user_id(sgid) for sgid in find_mentions(body)}
            if not mentioned:
                return []
            candidates = [user_id for user_id in self.room_member_ids(room.id) if user_id in mentioned]
        deliveries = []
        for user_id in candidates:
            user = self.user(user_id)
            if user is None or not user.bot or not user.active or user_id == author.id:
                continue
            row = self.active_bot(user_id)
            if row is None or not row["webhook_url"] or not row["bot_token"]:
                continue
            plain = self.message_text(message).replace("@" + user.name, "").strip()
            payload = {"user": {"id": author.id, "name": author.name},
                       "room": {"id": room.id, "name": room.name,
                                "path": url_for("bot_messages", room_id=room.id, bot_key=bot_key(row))},
                       "message": {"id": message["id"], "body": {"html": body, "plain": plain},
                                   "path": url_for("room_at_message", room_id=room.id, message_id=message["id"])}}
            deliveries.append(WebhookDelivery(user_id, room.id, message["id"], row["webhook_url"],
                                              json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()))
        return deliveries

    # Push subscriptions and who gets a push (Campfire's app/models/push/subscription.rb,
    # users/push_subscriptions_controller.rb and room/message_pusher.rb) --------------
    PUSH_SUBSCRIPTION_COLUMNS = "SELECT id, user_id, endpoint, p256dh_key, auth_key, user_agent, created_at, updated_at " \
                                "FROM push_subscriptions "

    def push_subscriptions(self, user_id):
        return self.db.all(self.PUSH_SUBSCRIPTION_COLUMNS + "WHERE user_id = ? ORDER BY id", (user_id,))

    def push_subscription(self, user_id, subscription_id):
        return self.db.one(self.PUSH_SUBSCRIPTION_COLUMNS + "WHERE id = ? AND user_id = ?", (subscription_id, user_id))

    def subscribe_push(self, user_id, endpoint, p256dh_key, auth_key, user_agent, now=None):
        """A browser's subscription, kept once: the same endpoint again is touched (and takes
        new keys if the browser made new ones), and an endpoint another person had is theirs
        no more (the browser now belongs to this person). Past MAX_PUSH_SUBSCRIPTIONS a
        person's oldest subscription goes."""
        stamp = utc_now_text(now)
        with self.db.atomic():
            self.db.execute("DELETE FROM push_subscriptions WHERE endpoint = ? AND user_id != ?", (endpoint, user_id))
            existing = self.db.one("SELECT id FROM push_subscriptions WHERE endpoint = ? AND user_id = ? "
                                   "ORDER BY id LIMIT 1", (endpoint, user_id))
            if existing is not None:
                self.db.execute("UPDATE push_subscriptions SET p256dh_key = ?, auth_key = ?, user_agent = ?, "
                                "updated_at = ? WHERE id = ?", (p256dh_key, auth_key, user_agent, stamp, existing[0]))
                return existing[0]
            subscription_id = self.db.execute(
                "INSERT INTO push_subscriptions (user_id, endpoint, p256dh_key, auth_key, user_agent, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (user_id, endpoint, p256dh_key, auth_key, user_agent, stamp, stamp)).lastrowid
            self.db.execute("DELETE FROM push_subscriptions WHERE user_id = ? AND id NOT IN (SELECT id FROM "
                            "push_subscriptions WHERE user_id = ? ORDER BY updated_at DESC, id DESC LIMIT ?)",
                            (user_id, user_id, MAX_PUSH_SUBSCRIPTIONS))
        return subscription_id

    def unsubscribe_push(self, user_id, *, subscription_id=None, endpoint=None):
        """Delete one of a person's subscriptions, by id (the subscriptions page) or by
        endpoint (signing out, as Campfire's sessions_controller.rb does)."""
        column, value = ("id", subscription_id) if subscription_id is not None else ("endpoint", endpoint)
        with self.db.atomic():
            self.db.execute("DELETE FROM push_subscriptions WHERE %s = ? AND user_id = ?" % column, (value, user_id))

    def expire_push_subscription(self, subscription_id):
        """The push service said the subscription is gone (404 or 410)."""
        with self.db.atomic():
            self.db.execute("DELETE FROM push_subscriptions WHERE id = ?", (subscription_id,))

    def unread_room_counts(self, user_ids):
        """{user id: rooms unread}, the badge of Campfire's Push::Subscription#notification."""
        counts = dict.fromkeys(user_ids, 0)
        for user_id, count in self.db.all(
                "SELECT user_id, count(*) FROM memberships WHERE unread_at IS NOT NULL "
                "AND user_id IN (SELECT value FROM json_each(?)) GROUP BY user_id", (json.dumps(list(counts)),)):
            counts[user_id] = count
        return counts

    # Visible, disconnected members other than the author (as unread marks them), whose
    # involvement is everything or mentions (Membership.involved_in_*), and active.
    PUSH_RECIPIENTS = (
        "SELECT push_subscriptions.id, push_subscriptions.user_id, push_subscriptions.endpoint, "
        "push_subscriptions.p256dh_key, push_subscriptions.auth_key, memberships.involvement "
        "FROM memberships JOIN push_subscriptions ON push_subscriptions.user_id = memberships.user_id "
        "JOIN users ON users.id = memberships.user_id "
        "WHERE memberships.room_id = ? AND memberships.user_id != ? "
        "AND memberships.involvement IN ('everything', 'mentions') AND users.status = ? "
        "AND (memberships.connections = 0 OR memberships.connected_at IS NULL OR memberships.connected_at < ?) "
        "ORDER BY push_subscriptions.id")

    def push_deliveries(self, room, message, now=None):
        """The pushes a new message causes (Campfire's Room::MessagePusher): members
        involved in everything get every message, those involved in mentions the
        messages that mention them. A direct room names its author as the title;
        another room is the title and the author prefixes the text."""
        home = self.home_room(room) or room  # a thread's readers are its room's members
        rows = self.db.all(self.PUSH_RECIPIENTS, (home.id, message["creator_id"], STATUS_ACTIVE,
                                                  utc_now_text((now or time.time()) - PRESENCE_WINDOW)))
        if not rows:
            return []
        body = message["body"] or ""
        # Mentions, and whom @everyone, @here or a thread's reply notified (the inbox's rows).
        mentioned = {sgid_user_id(sgid) for sgid in find_mentions(body)} | {row[0] for row in self.db.all(
            "SELECT user_id FROM campfire_py_mentions WHERE message_id = ?", (message["id"],))}
        rows = [row for row in rows if (row[5] == "everything" and not room.thread) or row[1] in mentioned]
        if not rows:
            return []
        author = self.user(message["creator_id"])
        author_name = author.name if author is not None else ""
        text = self.plain_text(body)
        if home.direct:
            title, text = author_name, text
        else:
            title, text = home.name, "%s: %s" % (author_name, text)
        path = url_for("room", room_id=room.id)
        badges = self.unread_room_counts({row[1] for row in rows})
        return [PushDelivery(row[0], row[2], row[3], row[4], title, text, path, badges[row[1]]) for row in rows]

    def test_push_delivery(self, subscription):
        """Campfire's users/push_subscriptions/test_notifications_controller.rb: "Campfire Test"
        and a random UUID, opening the subscriptions page."""
        import uuid  # here, not at the top: slow to load and rarely needed
        badge = self.unread_room_counts([subscription["user_id"]])[subscription["user_id"]]
        return PushDelivery(subscription["id"], subscription["endpoint"], subscription["p256dh_key"],
                            subscription["auth_key"], "Campfire Test", str(uuid.uuid4()),
                            url_for("user_push_subscriptions"), badge)

    # Seeding (the seed command's bulk writes) -----------------------------------
    def people_count(self):
        """How many people (not bots) the database holds, active or not."""
        return self.db.value("SELECT count(*) FROM users WHERE role != ?", (ROLE_BOT,)) or 0

    def seed_people(self, count, password_digest, admin_digest, now):
        """count people "Person N" <personN@example.com> in one statement, the first an
        administrator with admin_digest, the others with password_digest; returns the
        first one's number."""
        first = (self.db.value("SELECT max(id) FROM users") or 0) + 1
        stamp = utc_now_text(now)
        rows = [("Person %d" % n, "person%d@example.com" % n, admin_digest if n == first else password_digest,
                 ROLE_ADMINISTRATOR if n == first else ROLE_MEMBER, STATUS_ACTIVE, stamp, stamp)
                for n in range(first, first + count)]
        with self.db.atomic():
            if self.account() is None:
                self._create_account(stamp)
            self.db.connection.executemany("INSERT INTO users (name, email_address, password_digest, role, status, "
                                           "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return first

    def seed_messages(self, messages):
        """messages: [(room_id, creator_id, client_message_id, stamp, plain text)], written
        in one transaction with their rich text ("<div>text</div>") and search rows."""
        with self.db.atomic():
            first_id = (self.db.value("SELECT max(id) FROM messages") or 0) + 1
            ids = range(first_id, first_id + len(messages))
            self.db.connection.executemany(
                "INSERT INTO messages (id, room_id, creator_id, client_message_id, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", [(message_id, room_id, creator_id, client_id, stamp, stamp)
                                              for message_id, (room_id, creator_id, client_id, stamp, _)
                                              in zip(ids, messages)])
            self.db.connection.executemany(
                "INSERT INTO action_text_rich_texts (name, body, record_type, record_id, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", [("body", "<div>%s</div>" % plain, "Message", message_id, stamp, stamp)
                                              for message_id, (_, _, _, stamp, plain) in zip(ids, messages)])
            self.db.connection.executemany("INSERT INTO message_search_index (rowid, body) VALUES (?, ?)",
                                           [(message_id, message[4]) for message_id, message in zip(ids, messages)])
            for room_id in {message[0] for message in messages}:
                self.bump_room(room_id)

    def optimize_search_index(self):
        """Merge the search index's segments, as a long-lived index would be."""
        with self.db.atomic():
            self.db.execute("INSERT INTO message_search_index (message_search_index) VALUES ('optimize')")

    def rebuild_search_index(self, batch=SEED_BATCH):
        """Write the search index afresh from the messages, one row each (check --repair):
        what was damaged, missing or left over is gone. The messages indexed."""
        written = 0
        with self.db.atomic():
            self.db.execute("DELETE FROM message_search_index")
            self.db.execute("INSERT INTO message_search_index (message_search_index) VALUES ('rebuild')")
            last = 0
            while True:
                rows = self.db.all("SELECT messages.id, action_text_rich_texts.body FROM messages "
                                   "LEFT JOIN action_text_rich_texts ON action_text_rich_texts.record_type = 'Message' "
                                   "AND action_text_rich_texts.record_id = messages.id "
                                   "AND action_text_rich_texts.name = 'body' WHERE messages.id > ? "
                                   "ORDER BY messages.id LIMIT ?", (last, batch))
                if not rows:
                    break
                self.db.connection.executemany(self.SEARCH_ROW_INSERT,
                                               [(row[0], self.plain_text(row[1])) for row in rows])
                written += len(rows)
                last = rows[-1][0]
        return written


####
#### 13. Rendering
####
# Every page and fragment is built by a render_* function from plain data (rows,
# Users, Rooms, strings) and, for whole pages, one View: who is looking, the
# account's name and settings, the static files' URLs. Nothing here reads the
# database or a cache (App caches what these return), and every value reaches
# the page through HTML.format/escape; paths come from url_for.

PAGE_ASSETS = ("app.js", "campfire.css", "components.css", "catchup.css", "campfire-icon.svg", "account.css",
               "clipboard.js", "transfer.js")  # the static files pages link to, by their versioned URLs


@dataclass(slots=True)
class View:
    """What rendering a page knows besides its own data."""

    user: User                  # the person looking, or None (signed out, or an error page)
    account_name: str
    custom_styles: str          # the digest of the account's custom CSS; "" when there is none
    assets: dict                # a PAGE_ASSETS name → its URL, versioned by content
    origin: str                 # "scheme://host", for links that leave the page (invitations, bots)
    logo: str = ""              # the account logo's URL when one is set: the page's icon
    vapid_public_key: str = ""  # the signed-in app's applicationServerKey, as Campfire's vapid-public-key meta tag
    scripts: "PageScripts" = None  # the import map and the modules app.js needs


@dataclass(slots=True, frozen=True)
class PageScripts:
    """How a page loads static/'s modules with one request each and none on a reload.

    app.js imports its modules by relative names ("./cable.js"); the import map
    sends each to its versioned URL, which is served immutable, so a reload finds
    every module in the browser's cache without asking (HTML's import maps).
    modulepreload links fetch the whole graph at once instead of one level at a
    time. The map is inline, so the CSP allows exactly its text by its hash."""

    import_map: str = ""        # the <script type="importmap"> text (JSON)
    preloads: tuple = ()        # versioned URLs of every module app.js imports, directly or not
    content_security_policy: str = CONTENT_SECURITY_POLICY  # with the map's hash in script-src


def page_scripts(modules, entry="app.js"):
    """PageScripts for StaticFiles.modules(): every module mapped to its version, and
    the modules `entry` reaches through static imports, in the order they are met."""
    if entry not in modules:
        return PageScripts()
    import_map = json.dumps({"imports": {url_for("static", path=name): url_for("static", path=name, v=digest)
                                         for name, (digest, _) in modules.items()}}, separators=(",", ":"))
    reached, pending = [], list(modules[entry][1])
    while pending:
        name = pending.pop(0)
        if name in modules and name not in reached and name != entry:
            reached.append(name)
            pending.extend(modules[name][1])
    digest = base64.b64encode(hashlib.sha256(import_map.encode()).digest()).decode()
    policy = CONTENT_SECURITY_POLICY.replace("script-src 'self'", "script-src 'self' 'sha256-%s'" % digest, 1)
    return PageScripts(import_map, tuple(url_for("static", path=name, v=modules[name][0]) for name in reached), policy)


def room_settings_path(room):
    name = {ROOM_OPEN: "edit_open_room", ROOM_CLOSED: "edit_closed_room", ROOM_DIRECT: "edit_direct_room"}
    return url_for(name.get(room.type, "edit_open_room"), room_id=room.id)


def qr_code_path(text):
    return url_for("qr_code", code=b64url_encode(text.encode("utf-8")))


def render_qr_page(code, text, back):
    """The QR code opened as a page: a heading, the code, the link it holds, the way back."""
    return HTML(
        '<section class="panel qr-page"><h1 class="panel__title">Scan this QR code</h1>'
        '<p class="panel__intro">Point a phone\'s camera at it to open the link there.</p>'
        '<img class="qr-page__code" src="{src}" alt="QR code of the link below" width="280" height="280">'
        '<p class="qr-page__link">{text}</p>'
        '<p><a class="button" href="{back}">Back</a></p></section>').format(
        src=url_for("qr_code", code=code), text=text, back=back)


def role_label(user):
    return "Administrator" if user.administrator else "Bot" if user.bot else "Member"


def message_sound(plain_text):
    """The /play sound a message is ("/play tada" alone in it), or None."""
    match = PLAY_RE.match(plain_text) if plain_text.startswith("/play ") else None
    return match.group(1) if match and match.group(1) in SOUND_NAMES else None


def involvement_choices(direct):
    """The involvements the bell's menu offers, in the order Campfire's bell goes through them."""
    return ("everything", "nothing") if direct else ("mentions", "everything", "nothing", "invisible")


INVOLVEMENT_LABELS = {"invisible": "Hidden from the sidebar", "nothing": "No notifications",
                      "mentions": "Notify on mentions", "everything": "Notify on every message"}


# The layout ------------------------------------------------------------------

def render_layout(view, title, body, *, sidebar=None, body_class=""):
    """A whole page: head, top bar (signed in), the sidebar when given, the body."""
    user = view.user
    top = HTML("")
    if user is not None:
        top = HTML(
            '<header class="topbar">'
            '<a class="topbar__rooms" href="{sidebar_url}">Rooms</a>'
            '<a class="topbar__brand" href="{root}">{account}</a>'
            '<form class="topbar__search" method="post" action="{searches}" role="search">'
            '<input type="search" name="q" placeholder="Search" aria-label="Search messages"></form>'
            '<nav class="topbar__nav" aria-label="Account">'
            '<a class="button button--quiet" href="{edit_account}">Account</a>'
            '<a class="topbar__user" href="{profile}" title="Your profile">{avatar}<span>{name}</span></a>'
            '<span class="notifications-control" hidden>'
            '<button type="button" class="button button--quiet notifications-control__button" id="notifications_toggle" '
            'aria-describedby="notifications_state">Notifications</button>'
            '<span class="notifications-control__state" id="notifications_state" role="status"></span></span>'
            '<form method="post" action="{session}" class="inline-form" id="sign_out">'
            '<input type="hidden" name="_method" value="delete">'
            '<input type="hidden" name="push_subscription_endpoint" value="">'
            '<button type="submit" class="button button--quiet">Sign out</button></form>'
            '</nav></header>').format(
            account=view.account_name, name=user.name, avatar=render_avatar(user.id, 24),
            sidebar_url=url_for("user_sidebar"), root=url_for("root"), searches=url_for("searches"),
            edit_account=url_for("edit_account"), profile=url_for("user_profile"), session=url_for("session"))
    main = HTML('<div class="layout">{sidebar}<main id="main" class="main">{body}</main></div>').format(
        sidebar=sidebar, body=body) if sidebar else HTML('<main id="main" class="main main--solo">{}</main>').format(body)
    # The account's CSS as a stylesheet of our own origin, so the CSP needs no
    # 'unsafe-inline' (Campfire writes it raw in a <style> tag).
    custom_styles = HTML('<link rel="stylesheet" href="{}">').format(
        url_for("account_custom_stylesheet", v=view.custom_styles)) if view.custom_styles else ""
    assets = view.assets
    # First in the tab order: past the top bar and the sidebar, to what the page is for.
    skip = HTML('<a class="skip-link" href="#composer_body">Skip to composer</a>') if "room-page" in body_class \
        else HTML('<a class="skip-link" href="#main">Skip to content</a>')
    return HTML(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        '<title>{title}</title>'
        '<link rel="stylesheet" href="{css}">'
        '<link rel="stylesheet" href="{components}">'
        '<link rel="stylesheet" href="{catchup}">'
        '{icon_link}{custom_styles}'
        '<link rel="apple-touch-icon" href="{touch_icon}">'
        '<link rel="manifest" href="{manifest}">'
        '<meta name="theme-color" content="{light}" media="(prefers-color-scheme: light)">'
        '<meta name="theme-color" content="{dark}" media="(prefers-color-scheme: dark)">{vapid}'
        '{modules}<script type="module" src="{js}"></script>'
        '</head><body class="{body_class}"{user_data}>{skip}{top}{main}</body></html>').format(skip=skip,
        js=assets["app.js"], components=assets["components.css"], catchup=assets["catchup.css"],
        light=THEME_COLOR_LIGHT, dark=THEME_COLOR_DARK,
        user_data=HTML(' data-user-id="{}" data-user-name="{}" data-administrator="{}"').format(
            user.id, user.name, "true" if user.administrator else "false") if user else "",
        title="%s · %s" % (title, view.account_name) if title else view.account_name,
        css=assets["campfire.css"], touch_icon=view.logo or url_for("static", path="icon-192.png"),
        icon_link=HTML('<link rel="icon" href="{}">').format(view.logo) if view.logo else HTML(
            '<link rel="icon" href="{}" type="image/svg+xml">').format(assets["campfire-icon.svg"]),
        manifest=url_for("webmanifest"), body_class=body_class, top=top, main=main, custom_styles=custom_styles,
        modules=render_module_scripts(view.scripts), vapid=HTML('<meta name="vapid-public-key" content="{}">').format(view.vapid_public_key)
        if view.vapid_public_key else "")


def render_module_scripts(scripts):
    """The import map first (HTML: it must come before any module is fetched), then a
    modulepreload link per module."""
    if scripts is None or not scripts.import_map:
        return HTML("")
    return HTML('<script type="importmap">' + scripts.import_map + '</script>' + "".join(
        '<link rel="modulepreload" href="%s">' % escape_html(url) for url in scripts.preloads))


def render_sidebar(shared, direct, unread, current_room_id=None, can_create_rooms=True, hidden=(), mentions=0):
    """#user_sidebar: the mentions inbox (with its unread count) and saved messages,
    shared rooms by name, direct rooms by recency, unread marks, and the rooms hidden
    from it. shared, direct and hidden are [(Room, title)]; unread holds room ids."""
    def item(room, title):
        classes = "sidebar__room"
        if room.id in unread:
            classes += " sidebar__room--unread"
        if room.id == current_room_id:
            classes += " sidebar__room--current"
        return HTML('<li><a class="{classes}" href="{url}" data-room-id="{id}"{current}>'
                    '<span class="sidebar__name">{name}</span></a></li>').format(
            classes=classes, url=url_for("room", room_id=room.id), id=room.id, name=title,
            current=HTML(' aria-current="page"') if room.id == current_room_id else "")
    new_room = HTML('<a class="sidebar__add" href="{}" aria-label="New room" title="New room">+</a>').format(
        url_for("new_open_room")) if can_create_rooms else ""
    return HTML(
        '<nav id="user_sidebar" class="sidebar" aria-label="Rooms">'
        '<ul class="sidebar__links"><li><a class="sidebar__link sidebar__link--mentions" href="{mentions_url}">Mentions'
        '{count}</a></li><li><a class="sidebar__link sidebar__link--saved" href="{saved_url}">Saved</a></li></ul>'
        '<div class="sidebar__section"><h2 class="sidebar__heading">Rooms {new_room}</h2>'
        '<ul id="shared_rooms" class="sidebar__rooms">{shared}</ul></div>'
        '<div class="sidebar__section"><h2 class="sidebar__heading">Pings '
        '<a class="sidebar__add" href="{new_direct}" aria-label="New Ping" title="New Ping">+</a></h2>'
        '<ul id="direct_rooms" class="sidebar__rooms">{direct}</ul></div>{hidden}</nav>').format(
        new_room=new_room, new_direct=url_for("new_direct_room"), hidden=render_hidden_rooms(hidden),
        mentions_url=url_for("mentions"), saved_url=url_for("bookmarks"),
        count=HTML(' <span class="sidebar__count" data-count="{count}">{shown}<span class="visually-hidden"> unread'
                   '</span></span>').format(count=mentions, shown=mentions if mentions <= MAX_MENTION_COUNT_SHOWN
                                            else "%d+" % MAX_MENTION_COUNT_SHOWN) if mentions else "",
        shared=HTML("").join(item(room, title) for room, title in shared),
        direct=HTML("").join(item(room, title) for room, title in direct))


def render_hidden_rooms(hidden):
    """The rooms hidden from the sidebar (involvement "invisible"), each with a way back."""
    if not hidden:
        return HTML("")
    items = HTML("").join(HTML(
        '<li class="sidebar__hidden-room"><a href="{url}" class="sidebar__room" data-hidden-room-id="{id}">'
        '<span class="sidebar__name">{name}</span></a>'
        '<form method="post" action="{action}" class="inline-form">'
        '<input type="hidden" name="_method" value="put"><input type="hidden" name="involvement" value="mentions">'
        '<button type="submit" class="button button--small" aria-label="Show {name} in the sidebar">Show</button>'
        '</form></li>').format(url=url_for("room", room_id=room.id), id=room.id, name=title,
                               action=url_for("room_involvement", room_id=room.id)) for room, title in hidden)
    return HTML(
        '<details class="sidebar__section sidebar__hidden"><summary class="sidebar__heading">Hidden rooms ({count})'
        '</summary><ul id="hidden_rooms" class="sidebar__rooms" aria-label="Hidden rooms">{items}</ul></details>').format(
        count=len(hidden), items=items)


def render_error_page(view, status, message):
    return render_layout(view, STATUS_REASONS.get(status, "Error"), HTML(
        '<section class="panel"><h1 class="panel__title">{status} · {reason}</h1>'
        '<p>{message}</p><p><a href="{root}">Back to Campfire</a></p></section>').format(
        status=status, reason=STATUS_REASONS.get(status, "Error"), message=message, root=url_for("root")))


# Forms -----------------------------------------------------------------------

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


def render_notice(notice):
    return HTML('<p class="notice notice--alert" role="alert">{}</p>').format(notice) if notice else HTML("")


def render_saved(saved):
    """What a form's page says after it saved (it was redirected back with ?saved=1)."""
    return HTML('<p class="notice notice--success" role="status">Saved.</p>') if saved else HTML("")


def render_copyable(field_id, label, value, copy_label, qr_label):
    """A read-only link with a copy button (shown by clipboard.js) and a link to its QR code."""
    return HTML(
        '<div class="field"><label class="field__label" for="{id}">{label}</label>'
        '<input class="field__input" id="{id}" type="text" value="{value}" readonly spellcheck="false"></div>'
        '<div class="form__actions"><button type="button" class="button" data-copy-target="{id}" hidden>{copy}</button>'
        '<a class="button" href="{qr}">{qr_label}</a></div>').format(
        id=field_id, label=label, value=value, copy=copy_label, qr=qr_code_path(value), qr_label=qr_label)


def render_page_assets(view):
    """The account pages' own stylesheet and copy buttons, linked from the page's body."""
    return HTML('<link rel="stylesheet" href="{css}"><script type="module" src="{js}"></script>').format(
        css=view.assets["account.css"], js=view.assets["clipboard.js"])


# First run, sign in, sign up and sign-in links --------------------------------

def render_auth_page(title, intro, action, fields, button, *, notice=None):
    notice_html = HTML('<p class="notice notice--alert" role="alert">{}</p>').format(notice) if notice else ""
    return HTML(
        '<section class="panel panel--auth"><h1 class="panel__title">{title}</h1>'
        '<p class="panel__intro">{intro}</p>{notice}'
        '<form method="post" action="{action}" class="form">{fields}'
        '<button type="submit" class="button button--primary">{button}</button></form></section>').format(
        title=title, intro=intro, notice=notice_html, action=action, fields=HTML("").join(fields),
        button=button)


def render_user_fields(values, errors):
    return [
        render_field("Your name", "user[name]", values.get("user[name]", ""), errors=errors,
                     autocomplete="name", autofocus=True, maxlength=MAX_NAME_CHARS),
        render_field("Email address", "user[email_address]", values.get("user[email_address]", ""),
                     type="email", errors=errors, autocomplete="username", maxlength=MAX_EMAIL_CHARS),
        render_field("Password", "user[password]", "", type="password", errors=errors,
                     autocomplete="new-password", maxlength=MAX_PASSWORD_BYTES),
    ]


def render_first_run(values, errors):
    return render_auth_page("Set up Campfire", "Create the administrator's account. You can invite everyone else next.",
                            url_for("first_run"), render_user_fields(values, errors), "Create account")


def render_sign_in(view, email, notice=None):
    fields = [
        render_field("Email address", "email_address", email, type="email", autocomplete="username",
                     autofocus=not email, maxlength=MAX_EMAIL_CHARS),
        render_field("Password", "password", "", type="password", autocomplete="current-password",
                     autofocus=bool(email)),
    ]
    return render_auth_page("Sign in", "Welcome back to %s." % view.account_name, url_for("session"), fields,
                            "Sign in", notice=notice)


def render_join(view, join_code, values, errors):
    return render_auth_page("Join %s" % view.account_name, "Create your account to start chatting.",
                            url_for("join", join_code=join_code), render_user_fields(values, errors), "Join")


def render_session_transfer(view, user, token):
    """The page a sign-in link opens: transfer.js submits its form (PUT) at once; without
    JavaScript the person presses the button."""
    return HTML(
        '<section class="panel panel--auth"><h1 class="panel__title">Sign in as {name}</h1>'
        '<p class="panel__intro">This link signs this browser in to {account} as {name}.</p>'
        '<form method="post" action="{action}" class="form" data-auto-submit>'
        '<input type="hidden" name="_method" value="put">'
        '<button type="submit" class="button button--primary">Sign in as {name}</button></form></section>'
        '<script type="module" src="{script}"></script>').format(
        name=user.name, account=view.account_name, action=url_for("session_transfer", token=token),
        script=view.assets["transfer.js"])


# Rooms -----------------------------------------------------------------------

def render_no_rooms():
    return HTML('<section class="panel"><h1 class="panel__title">No rooms yet</h1>'
                '<p>You are not in any room yet. An administrator can add you to one.</p></section>')


def render_sidebar_page(sidebar):
    """The room list as a page (a phone's Rooms screen): the sidebar under its heading."""
    return HTML('<section class="rooms-screen" aria-labelledby="rooms_heading">'
                '<h1 class="rooms-screen__title" id="rooms_heading">Rooms</h1>{}</section>').format(sidebar)


def render_bell(room, involvement):
    """The bell: the room's involvement, shown by its icon, chosen from a menu of them all."""
    action = url_for("room_involvement", room_id=room.id)
    choices = HTML("").join(HTML(
        '<form method="post" action="{action}" class="bell__choice">'
        '<input type="hidden" name="_method" value="put"><input type="hidden" name="involvement" value="{value}">'
        '<button type="submit" class="bell__option bell--{value}" aria-pressed="{pressed}">{label}</button>'
        '</form>').format(action=action, value=value, label=INVOLVEMENT_LABELS[value],
                          pressed="true" if value == involvement else "false")
        for value in involvement_choices(room.direct))
    label = INVOLVEMENT_LABELS.get(involvement, involvement)
    return HTML(
        '<details class="bell" id="involvement_room_{id}"><summary class="bell__button bell--{current}" title="{label}">'
        '<span class="visually-hidden">Notifications: {label}</span></summary>'
        '<div class="bell__menu" role="group" aria-label="Notifications">{choices}</div></details>').format(
        id=room.id, current=involvement, label=label, choices=choices)


def render_composer(room, *, form_id="composer", label="Write a message", send="Send Message", files=True,
                    max_upload_bytes=MAX_UPLOAD_BYTES):
    """The composer: text and, with files, a paperclip for files (each file becomes a
    message of its own)."""
    attach = HTML(
        '<label class="composer__attach" for="{form_id}_files" title="Attach files">'
        '<span class="visually-hidden">Attach files</span></label>'
        '<input class="composer__files visually-hidden" type="file" id="{form_id}_files" name="message[attachment]" '
        'multiple>').format(form_id=form_id) if files else ""
    return HTML(
        '<form class="composer" id="{form_id}" method="post" action="{action}" data-room-id="{id}" '
        'data-label="{label}" data-max-chars="{max_chars}"{multipart}>{attach}'
        '<label class="visually-hidden" for="{form_id}_body">{label}</label>'
        '<textarea class="composer__input" id="{form_id}_body" name="message[body]" rows="1" '
        'placeholder="{label}" aria-label="{label}"{required}></textarea>'
        '<button type="submit" class="button button--primary composer__send">{send}</button>'
        '</form>').format(action=url_for("room_messages", room_id=room.id), id=room.id, form_id=form_id, label=label,
                          send=send, max_chars=MAX_MESSAGE_BODY_CHARS, attach=attach,
                          required="" if files else HTML(" required"),
                          multipart=HTML(' enctype="multipart/form-data" data-max-upload-bytes="{}" '
                                         'data-max-upload-text="{}"').format(
                              max_upload_bytes, format_bytes(max_upload_bytes)) if files else "")


def render_pending_message(viewer, template_id="pending_message"):
    """The shape of a message the viewer has sent and the server hasn't answered yet: the
    browser fills in a copy (client id, time, body) the moment it sends, as Campfire's
    app/views/messages/_template.html.erb does."""
    return HTML(
        '<template id="{template_id}"><div class="message message--pending message--mine" '
        'data-creator-id="{id}"><span class="message__avatar" aria-hidden="true">{avatar}</span>'
        '<div class="message__content"><div class="message__meta"><span class="message__author">{name}</span> '
        '<time></time> <span class="message__status" role="status">Sending…</span></div>'
        '<div class="message__body"></div></div></div></template>').format(
        id=viewer.id, avatar=render_avatar(viewer.id), name=viewer.name, template_id=template_id)


def render_since_line():
    """Where the messages the reader hasn't seen begin."""
    return HTML('<div class="since-line" id="since_last_visit" role="separator" aria-label="Since your last visit">'
                '<span>Since your last visit</span></div>')


def render_thread(room, parent_room, parent_title, parent_html, messages, viewer, *, highlight_id=None):
    """A thread: the message it answers, its replies (rendered), its own composer. The same
    section is a page of its own (on a phone) and the desktop's side panel."""
    return HTML(
        '<section class="room thread" id="thread" data-room-id="{id}" data-parent-room-id="{parent_room_id}" '
        'data-parent-message-id="{parent_id}" aria-labelledby="thread_name">'
        '<header class="room__header thread__header"><h1 class="room__name" id="thread_name">Thread '
        '<span class="thread__where">in {title}</span></h1>'
        '<a class="button button--quiet thread__back" href="{back}">Back to the room</a></header>'
        '<div class="thread__parent">{parent}</div>'
        '<div class="messages" id="thread_messages" data-room-id="{id}"{highlight}>{messages}</div>'
        '{composer}{pending}</section>').format(
        id=room.id, parent_room_id=parent_room.id, parent_id=room.parent_message_id, title=parent_title,
        back=url_for("room_at_message", room_id=parent_room.id, message_id=room.parent_message_id),
        parent=parent_html, messages=messages,
        highlight=HTML(' data-highlight-id="{}"').format(highlight_id) if highlight_id else "",
        composer=render_composer(room, form_id="thread_composer", label="Reply in thread", send="Send reply",
                                 files=False),
        pending=render_pending_message(viewer, "thread_pending_message"))


def render_inbox_item(where, message_html, *, marker="", controls=""):
    title, href = where
    return HTML('<li class="inbox__item{marker_class}"><p class="inbox__where">{marker}<a href="{href}">{title}</a>'
                '{controls}</p>{message}</li>').format(
        marker_class=" inbox__item--unread" if marker else "", href=href, title=title, controls=controls,
        marker=HTML('<span class="inbox__new">{}</span> ').format(marker) if marker else "", message=message_html)


def render_inbox(items, older_href):
    """/mentions: items are ((room title, permalink), unread, message HTML), newest first."""
    body = HTML("").join(render_inbox_item(where, html, marker="New" if unread else "")
                         for where, unread, html in items)
    return HTML(
        '<section class="inbox" id="mentions" aria-labelledby="mentions_title">'
        '<header class="room__header"><h1 class="room__name" id="mentions_title">Mentions</h1></header>'
        '<ol class="inbox__list" id="mentions_list">{body}</ol>{empty}{older}</section>').format(
        body=body, empty=HTML('<p class="inbox__empty">Nobody has mentioned you yet.</p>') if not items else "",
        older=HTML('<a class="button inbox__older" href="{}">Older mentions</a>').format(older_href)
        if older_href else "")


def render_saved_messages(items, more_href):
    """/bookmarks: items are ((room title, permalink), message id, message HTML)."""
    body = HTML("").join(render_inbox_item(where, html, controls=HTML(
        ' <form method="post" action="{action}" class="inline-form inbox__remove">'
        '<input type="hidden" name="_method" value="delete">'
        '<button type="submit" class="button button--quiet button--small">Remove from saved</button></form>').format(
        action=url_for("message_bookmark", message_id=message_id))) for where, message_id, html in items)
    return HTML(
        '<section class="inbox" id="saved" aria-labelledby="saved_title">'
        '<header class="room__header"><h1 class="room__name" id="saved_title">Saved</h1></header>'
        '<ol class="inbox__list" id="saved_list">{body}</ol>{empty}{more}</section>').format(
        body=body, empty=HTML('<p class="inbox__empty">Nothing saved yet: “Save message” on any message keeps it '
                              'here.</p>') if not items else "",
        more=HTML('<a class="button inbox__older" href="{}">More</a>').format(more_href) if more_href else "")


def render_room(room, viewer, title, involvement, messages, *, highlight_id=None, max_upload_bytes=MAX_UPLOAD_BYTES,
                reached_start=False):
    """The room: its header, its messages (rendered), the composer. On a phone the header is
    the top bar: a way back to the rooms, the name, who is here, and one menu holding the
    room's tools and the top bar's links (room__phone-only). reached_start: the messages
    begin with the room's first, so the app asks for nothing older."""
    return HTML(
        '<section class="room" id="room" data-room-id="{id}" data-room-type="{type}" aria-labelledby="room_name">'
        '<header class="room__header"><a class="room__back" href="{rooms}" aria-label="Rooms" title="Rooms"></a>'
        '<h1 class="room__name" id="room_name">{heading}</h1>'
        '<div class="room__tools" id="room_tools">{bell}'
        '<a class="room__settings" href="{settings}" aria-label="Room settings" title="Room settings"></a>'
        '<a class="room__phone-only button button--quiet" href="{search}">Search</a>'
        '<a class="room__phone-only button button--quiet" href="{account}">Account</a>'
        '<a class="room__phone-only button button--quiet" href="{profile}">Your profile</a></div>'
        '</header>'
        '<div class="messages" id="messages" data-room-id="{id}"{highlight}{start}>{messages}</div>'
        '{composer}{pending}</section>').format(start=HTML(' data-reached-start') if reached_start else "",
        id=room.id, type=room.type.split("::")[-1].lower(), heading="Ping with %s" % title if room.direct else title,
        bell=render_bell(room, involvement), settings=room_settings_path(room), rooms=url_for("user_sidebar"),
        search=url_for("searches"), account=url_for("edit_account"), profile=url_for("user_profile"),
        highlight=HTML(' data-highlight-id="{}"').format(highlight_id) if highlight_id else "",
        messages=messages, composer=render_composer(room, max_upload_bytes=max_upload_bytes), pending=render_pending_message(viewer))


def render_person_choice(user, *, checked=False, disabled=False):
    return HTML('<li><label class="picker__person"><input type="checkbox" name="user_ids[]" value="{id}"{checked}'
                '{disabled}> {avatar} {name}</label></li>').format(
        id=user.id, name=user.name, avatar=render_avatar(user.id, 24),
        checked=HTML(" checked") if checked else "", disabled=HTML(" disabled") if disabled else "")


def render_room_form(people, *, room=None, room_type=ROOM_OPEN, name="", member_ids=(), errors=None,
                     can_edit=True):
    """New room and room settings: name, open or closed, members (people to pick from), delete."""
    errors = errors or {}
    editing = room is not None
    chosen = set(member_ids)
    checkboxes = HTML("").join(render_person_choice(user, checked=user.id in chosen, disabled=not can_edit)
                               for user in people)
    kinds = HTML("").join(
        HTML('<label class="choice"><input type="radio" name="room_kind" value="{value}"{checked}{disabled}> '
             '<span><strong>{label}</strong> {help}</span></label>').format(
            value=value, label=label, help=help_text, checked=HTML(" checked") if room_type == kind else "",
            disabled=HTML(" disabled") if not can_edit else "")
        for kind, value, label, help_text in (
            (ROOM_OPEN, "opens", "Open", "Everyone is in it, including people who join later."),
            (ROOM_CLOSED, "closeds", "Closed", "Only the people you pick below.")))
    if editing:
        action = url_for("open_room" if room_type == ROOM_OPEN else "closed_room", room_id=room.id)
    else:
        action = url_for("open_rooms" if room_type == ROOM_OPEN else "closed_rooms")
    delete = HTML("")
    if editing and can_edit:
        delete = HTML('<form method="post" action="{}" class="danger-zone">'
                      '<input type="hidden" name="_method" value="delete">'
                      '<button type="submit" class="button button--danger" data-confirm="Delete this room and all its '
                      'messages?">Delete room</button></form>').format(url_for("room", room_id=room.id))
    notice = HTML("") if can_edit else HTML(
        '<p class="notice">Only the room\'s creator or an administrator can change these settings.</p>')
    return HTML(
        '<section class="panel panel--wide"><h1 class="panel__title">{title}</h1>{notice}'
        '<form method="post" action="{action}" class="form room-form" data-room-form>'
        '{method}'
        '<div class="field"><label class="field__label" for="room_name_field">Name this room</label>'
        '<input class="field__input" id="room_name_field" name="room[name]" value="{name}" maxlength="{max}" '
        'required autofocus{readonly}>{name_error}</div>'
        '<fieldset class="field"><legend class="field__label">Who can see it</legend>{kinds}</fieldset>'
        '<fieldset class="field picker" data-members><legend class="field__label">Members</legend>'
        '<ul class="picker__people">{people}</ul></fieldset>'
        '<div class="form__actions">{save}<a class="button" href="{cancel}">Cancel changes</a></div>'
        '</form>{delete}</section>').format(
        title="Room settings" if editing else "New room", notice=notice, action=action,
        method=HTML('<input type="hidden" name="_method" value="patch">') if editing else "",
        name=name, max=MAX_ROOM_NAME_CHARS, readonly=HTML(" readonly") if not can_edit else "",
        name_error=render_errors(errors, "room[name]"), kinds=kinds, people=checkboxes,
        save=HTML('<button type="submit" class="button button--primary">Save</button>') if can_edit else "",
        cancel=url_for("room", room_id=room.id) if editing else url_for("root"), delete=delete)


def render_direct_form(people, errors=None):
    return HTML(
        '<section class="panel panel--wide"><h1 class="panel__title">New Ping</h1>'
        '<p class="panel__intro">A private conversation with the people you pick.</p>{error}'
        '<form method="post" action="{action}" class="form" data-direct-form>'
        '<fieldset class="field picker" data-members><legend class="field__label">People</legend>'
        '<input class="field__input picker__filter" type="search" placeholder="Find people…" '
        'aria-label="Find people" data-picker-filter hidden>'
        '<ul class="picker__people">{options}</ul></fieldset>'
        '<div class="form__actions"><button type="submit" class="button button--primary">Start Ping</button>'
        '<a class="button" href="{root}">Cancel changes</a></div></form></section>').format(
        error=render_errors(errors or {}, "user_ids[]"), action=url_for("direct_rooms"), root=url_for("root"),
        options=HTML("").join(render_person_choice(user) for user in people))


def render_direct_settings(room, title, members):
    items = HTML("").join(HTML('<li class="picker__person">{avatar} {name}</li>').format(
        avatar=render_avatar(user.id, 24), name=user.name) for user in members)
    return HTML(
        '<section class="panel panel--wide"><h1 class="panel__title">Ping with {names}</h1>'
        '<ul class="picker__people">{items}</ul>'
        '<div class="form__actions"><a class="button" href="{room}">Back to the conversation</a></div>'
        '<form method="post" action="{direct}" class="danger-zone">'
        '<input type="hidden" name="_method" value="delete">'
        '<button type="submit" class="button button--danger" data-confirm="Delete this conversation?">'
        'Delete conversation</button></form></section>').format(
        names=title, items=items, room=url_for("room", room_id=room.id),
        direct=url_for("direct_room", room_id=room.id))


# Messages and boosts ---------------------------------------------------------

def render_avatar(user_id, size=36):
    return HTML(_avatar_template() % {"user_id": user_id, "size": size})


@functools.cache
def _avatar_template():
    """An avatar's <img>, %-formatted: on every message, twice with a mention."""
    return ('<img class="avatar" src="' + URLS.template("user_avatar") + '" alt="" width="%(size)d" '
            'height="%(size)d" loading="lazy">')


def render_avatar_svg(user):
    if user.bot:
        return ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><rect width="64" height="64" fill="#475569"/>'
                '<rect x="14" y="20" width="36" height="28" rx="6" fill="#e2e8f0"/><circle cx="25" cy="33" r="4" fill="#475569"/>'
                '<circle cx="39" cy="33" r="4" fill="#475569"/><rect x="30" y="10" width="4" height="10" fill="#e2e8f0"/></svg>')
    color = AVATAR_COLORS[zlib.crc32(str(user.id).encode()) % len(AVATAR_COLORS)]
    return str(HTML(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><rect width="64" height="64" fill="{color}"/>'
        '<text x="32" y="32" dy="0.35em" text-anchor="middle" fill="#ffffff" font-family="system-ui, sans-serif" '
        'font-size="26" font-weight="600">{initials}</text></svg>').format(color=color, initials=user.initials))


def render_mention(user):
    """A mention's chip in a message."""
    return str(HTML('<span class="mention" data-user-id="{id}">{avatar}{name}</span>').format(
        id=user.id, avatar=render_avatar(user.id, 20), name=user.name))


def render_link_preview(attributes):
    """A link preview Campfire's composer stored (OPENGRAPH_CONTENT_TYPE): the page's title, its
    description and its site, linked. Its picture would come from another site, which this
    page's Content-Security-Policy doesn't load, so it is left out."""
    href = attributes.get("href", "")
    split = urllib.parse.urlsplit(href) if _EXTERNAL_URL.match(href) else None
    if split is None or split.scheme.lower() not in ("http", "https") or not split.hostname:
        return ""
    return str(HTML(
        '<a class="og-embed" href="{href}" target="_blank" rel="noopener noreferrer">'
        '<span class="og-embed__title">{title}</span><span class="og-embed__description">{description}</span>'
        '<span class="og-embed__site">{site}</span></a>').format(
        href=href, title=attributes.get("filename") or split.hostname, description=attributes.get("caption", ""),
        site=split.hostname))


def render_rich_text(stored_html, *, mention=lambda sgid: None):
    """Stored (sanitized) body → display HTML: each mention attachment becomes
    mention(sgid), a ready HTML chip; when that is None the attachment's inner
    HTML or its content's text (escaped) stays. Other attachments are dropped:
    files are rendered elsewhere."""
    if "<action-text-attachment" not in stored_html:
        return stored_html

    def replace(match):
        attributes = _attachment_attributes(match[1])
        if attributes.get("content-type") == OPENGRAPH_CONTENT_TYPE:
            return render_link_preview(attributes)
        if attributes.get("content-type") != MENTION_CONTENT_TYPE:
            return ""
        chip = mention(attributes.get("sgid", ""))
        if chip is not None:
            return chip
        return match[2] or escape_html(_fragment_text(attributes.get("content", "")), trix=True)

    done = {}  # a body names few people, often: each distinct element is rendered once

    def replace_once(match):
        element = match[0]
        if element not in done:
            done[element] = replace(match)
        return done[element]

    return _ATTACHMENT_ELEMENT.sub(replace_once, stored_html)


def render_message_author(user_id, name):
    """The avatar and name that open a message (App keeps one per person)."""
    return HTML(
        '<a class="message__avatar" href="{url}" tabindex="-1" aria-hidden="true">{avatar}</a>'
        '<div class="message__content"><div class="message__meta">'
        '<a class="message__author" href="{url}">{name}</a> ').format(
        url=url_for("user", user_id=user_id), avatar=render_avatar(user_id), name=name)


def render_boost(boost, booster_name):
    return HTML(
        '<li class="boost" id="boost_{id}" data-booster-id="{booster_id}" title="{name}">'
        '<span class="boost__content">{content}</span> <span class="boost__author">{name}</span>'
        '<form method="post" action="{action}" class="boost__remove">'
        '<input type="hidden" name="_method" value="delete">'
        '<button type="submit" aria-label="Remove boost">×</button></form></li>').format(
        id=boost["id"], booster_id=boost["booster_id"], name=booster_name, content=boost["content"],
        action=url_for("message_boost", message_id=boost["message_id"], boost_id=boost["id"]))


@functools.cache
def _message_template():
    """The page's hottest template, so %-formatted: numbers through %d, every other value
    through escape() (the one escaping helper) first. Its paths are the route table's."""
    return (
        '<div class="message" id="message_%(message_id)d" data-message-id="%(message_id)d" '
        'data-client-message-id="%(client_id)s" data-creator-id="%(creator_id)d" data-created-at="%(created)s"'
        '%(sound_attr)s>%(author)s'
        '<a class="message__permalink" href="' + URLS.template("room_at_message") + '">'
        '<time datetime="%(created)s">%(short)s</time></a>'
        '%(edited)s</div>'
        '<div class="message__body">%(body)s</div>'
        '<ul class="boosts" id="boosts_message_%(message_id)d">%(boosts)s</ul>%(thread)s'
        '<div class="message__actions">'
        '<a class="message__action" data-action="copy-link" href="' + URLS.template("room_at_message") + '">'
        'Copy link</a>'
        '<a class="message__action" data-action="boost" href="' + URLS.template("new_message_boost") + '">Boost</a>'
        '%(thread_action)s'
        '<form method="post" action="' + URLS.template("message_bookmark") + '" class="message__action inline-form">'
        '<button type="submit" data-action="save" title="Save message">Save message</button></form>'
        '<form method="post" action="' + URLS.template("room_message_unread") + '" '
        'class="message__action inline-form"><button type="submit" data-action="unread" title="Mark as unread">Mark as unread</button></form>'
        '<a class="message__action message__action--owner" data-action="edit" '
        'href="' + URLS.template("edit_room_message") + '">Edit</a>'
        '<form method="post" action="' + URLS.template("room_message") + '" '
        'class="message__action message__action--owner inline-form">'
        '<input type="hidden" name="_method" value="delete">'
        '<button type="submit" data-action="delete">Delete</button></form>'
        '</div></div></div>')


@functools.cache
def _thread_action_template():
    return ('<form method="post" action="' + URLS.template("room_message_thread") + '" '
            'class="message__action inline-form"><button type="submit" data-action="thread" title="Reply in thread">Reply in thread</button>'
            '</form>')


def render_thread_summary(thread):
    """"N replies" with the last repliers' avatars, linking to the thread; thread is
    (thread room id, replies, last repliers' ids) or None."""
    if not thread:
        return ""
    room_id, count, repliers = thread
    return HTML(
        '<a class="message__thread" href="{url}" data-thread-room-id="{room_id}">'
        '<span class="message__thread-avatars" aria-hidden="true">{avatars}</span>'
        '<span class="message__thread-count">{count} {noun}</span></a>').format(
        url=url_for("room", room_id=room_id), room_id=room_id, count=count, noun="reply" if count == 1 else "replies",
        avatars=HTML("").join(render_avatar(user_id, 20) for user_id in repliers))


def _preview_size(blob):
    """An image's size scaled to fit Campfire's 1200×800 thumbnail box, as it will show."""
    if not blob.width:
        return None
    scale = min(1.0, PREVIEW_MAX_WIDTH / blob.width, PREVIEW_MAX_HEIGHT / blob.height)
    return max(1, round(blob.width * scale)), max(1, round(blob.height * scale))


def render_attachment(message_id, blob, *, preview=None):
    """A message's file: an image or a video shown in place (its width and height set, so
    nothing moves when it loads), audio with controls, anything else a card with its
    name, size and a download link. preview: the Blob of the smaller copy (or the video's
    poster) the sender's browser made, True for a variant Rails made, or None."""
    url = url_for("message_attachment", message_id=message_id)
    download = url_for("message_attachment_download", message_id=message_id)
    size = (preview.width, preview.height) if isinstance(preview, Blob) and preview.width else _preview_size(blob)
    dimensions = HTML(' width="{}" height="{}"').format(*size) if size else ""
    kind = blob.kind
    if kind == "image":
        source = url_for("message_attachment_preview", message_id=message_id) if preview else url
        return HTML(
            '<figure class="attachment attachment--image"><a class="attachment__link" href="{url}" '
            'data-action="view-attachment" data-filename="{name}"><img class="attachment__image" src="{source}" '
            'alt="{name}"{dimensions} loading="lazy"></a></figure>').format(
            url=url, source=source, name=blob.filename, dimensions=dimensions)
    if kind == "video":
        poster = HTML(' poster="{}"').format(url_for("message_attachment_preview", message_id=message_id)) \
            if preview else ""
        return HTML(
            '<figure class="attachment attachment--video"><video class="attachment__video" src="{url}" controls '
            'preload="metadata"{poster}{dimensions} aria-label="{name}"></video>'
            '<figcaption class="attachment__caption"><a href="{download}" download>{name}</a></figcaption>'
            '</figure>').format(url=url, download=download, name=blob.filename, dimensions=dimensions, poster=poster)
    if kind == "audio":
        return HTML(
            '<figure class="attachment attachment--audio"><audio class="attachment__audio" src="{url}" controls '
            'preload="metadata" aria-label="{name}"></audio>'
            '<figcaption class="attachment__caption"><a href="{download}" download>{name}</a></figcaption>'
            '</figure>').format(url=url, download=download, name=blob.filename)
    extension = os.path.splitext(blob.filename)[1].lstrip(".").upper()[:4] or "FILE"
    return HTML(
        '<div class="attachment attachment--file"><span class="attachment__icon" aria-hidden="true">{extension}'
        '</span><span class="attachment__details"><a class="attachment__name" href="{open}"{target}>{name}</a>'
        '<span class="attachment__size">{size}</span></span>'
        '<a class="button attachment__download" href="{download}" download aria-label="Download {name}">Download</a>'
        '</div>').format(
        extension=extension, open=url if blob.content_type in INLINE_CONTENT_TYPES else download,
        target=HTML(' target="_blank" rel="noopener"') if blob.content_type in INLINE_CONTENT_TYPES else "",
        name=blob.filename, size=format_bytes(blob.byte_size), download=download)


def render_message(message, *, author, body, sound, boosts, thread=None, in_thread=False, attachment=None):
    """One message, the same for every reader; per-reader controls are shown or hidden
    by the browser from data-creator-id, and the server checks. author: its opening
    (render_message_author); body: the display HTML; sound: the /play name it is, or
    None; boosts: [(boost row, booster's name)]; thread: what render_thread_summary
    takes; in_thread: a reply in a thread (which has no threads of its own);
    attachment: its file (render_attachment)."""
    if attachment is not None:
        body = attachment
    if sound:
        text = SOUND_TEXTS.get(sound)
        body = HTML('<span class="sound" data-sound="{name}"><span class="sound__icon" aria-hidden="true"></span> '
                    '{label}</span>').format(
            name=sound, label=text if text else HTML('<span class="sound__badge">{}</span>').format(sound))
    edited = HTML(' <span class="message__edited" title="Edited">(edited)</span>') \
        if message["edited"] else ""
    created = iso_time(message["created_at"])
    return HTML(_message_template() % {
        "message_id": message["id"], "room_id": message["room_id"], "creator_id": message["creator_id"],
        "client_id": escape(message["client_message_id"]), "created": escape(created), "short": escape(created[11:16]),
        "sound_attr": HTML(' data-sound="{}"').format(sound) if sound else (
            HTML(' data-attachment="true"') if attachment is not None else ""),
        "author": author, "edited": edited, "body": escape(body),
        "boosts": HTML("").join(render_boost(boost, name) for boost, name in boosts),
        "thread": render_thread_summary(thread),
        "thread_action": "" if in_thread else _thread_action_template() % {
            "room_id": message["room_id"], "message_id": message["id"]}})


def render_message_removals(message_ids):
    """What /refresh adds after the messages: those deleted since, for the page to drop."""
    return HTML('<template class="message-removals" data-message-ids="{}"></template>').format(
        " ".join(map(str, message_ids)))


def render_refresh_next(href):
    """What ends a /refresh page when more changed: the next page's URL."""
    return HTML('<template class="message-refresh-next" data-href="{}"></template>').format(href)


def render_message_editor(message):
    """The edit page: the stored body in a textarea (the browser app reads it from here too)."""
    return HTML(
        '<section class="panel panel--wide"><h1 class="panel__title">Edit message</h1>'
        '<form method="post" action="{action}" class="form">'
        '<input type="hidden" name="_method" value="patch">'
        '<label class="visually-hidden" for="edit_body">Edit message</label>'
        '<textarea class="field__input" id="edit_body" name="message[body]" rows="6" aria-label="Edit message" '
        'required autofocus>{body}</textarea>'
        '<div class="form__actions"><button type="submit" class="button button--primary">Save changes</button>'
        '<a class="button" href="{cancel}">Cancel changes</a></div></form></section>').format(
        action=url_for("room_message", room_id=message["room_id"], message_id=message["id"]),
        cancel=url_for("room_at_message", room_id=message["room_id"], message_id=message["id"]),
        body=message["body"] or "")


def render_boost_form(message):
    picks = HTML("").join(HTML('<button type="submit" name="boost[content]" value="{emoji}" class="boost-pick" '
                               'aria-label="Boost with {emoji}">{emoji}</button>').format(emoji=emoji)
                          for emoji in BOOST_QUICK_PICKS)
    return HTML(
        '<section class="panel"><h1 class="panel__title">Boost</h1>'
        '<form method="post" action="{action}" class="form boost-form">'
        '<div class="boost-picks">{picks}</div></form>'
        '<form method="post" action="{action}" class="form">'
        '<div class="field"><label class="field__label" for="boost_content">Or write a boost</label>'
        '<input class="field__input" id="boost_content" name="boost[content]" maxlength="{max}" required></div>'
        '<div class="form__actions"><button type="submit" class="button button--primary">Boost</button>'
        '<a class="button" href="{cancel}">Cancel changes</a></div></form></section>').format(
        action=url_for("message_boosts", message_id=message["id"]), picks=picks, max=MAX_BOOST_CHARS,
        cancel=url_for("room_at_message", room_id=message["room_id"], message_id=message["id"]))


def render_search_result(where, message_html):
    title, href = where
    return HTML('<article class="search-result"><p class="search-result__room">in <a href="{href}">{title}</a></p>'
                '{message}</article>').format(href=href, title=title, message=message_html)


def render_search_filters(rooms, people, room_id, creator_id):
    """The room and person a search may be narrowed to."""
    room_options = HTML("").join(HTML('<option value="{id}"{selected}>{title}</option>').format(
        id=room.id, title=title, selected=HTML(" selected") if room.id == room_id else "") for room, title in rooms)
    people_options = HTML("").join(HTML('<option value="{id}"{selected}>{name}</option>').format(
        id=user.id, name=user.name, selected=HTML(" selected") if user.id == creator_id else "") for user in people)
    return HTML(
        '<div class="search__filters">'
        '<label class="search__filter">Room <select name="room_id"><option value="">Any room</option>{rooms}'
        '</select></label>'
        '<label class="search__filter">Person <select name="creator_id"><option value="">Anyone</option>{people}'
        '</select></label></div>').format(rooms=room_options, people=people_options)


def render_search(query, results, result_count, recent, *, rooms=(), people=(), room_id=None, creator_id=None):
    """The search page: the form and its filters, recent searches, and the results
    (rendered messages, each naming its room)."""
    recent_html = HTML("").join(HTML('<li><a href="{url}">{query}</a></li>').format(
        url=url_for("searches", q=item), query=item) for item in recent)
    clear = HTML('<form method="post" action="{}" class="inline-form">'
                 '<input type="hidden" name="_method" value="delete">'
                 '<button type="submit" class="button button--quiet">Clear</button></form>').format(
        url_for("clear_searches")) if recent else ""
    summary = (HTML('<p class="search__summary">{count} {noun} for “{query}”</p>').format(
        count=result_count, noun="message" if result_count == 1 else "messages", query=query)
        if query else HTML(""))
    return HTML(
        '<section class="search"><header class="room__header"><h1 class="room__name">Search</h1></header>'
        '<form method="post" action="{action}" class="search__form" role="search">'
        '<input class="field__input" type="search" name="q" value="{query}" aria-label="Search messages" '
        'placeholder="Search messages" autofocus autocomplete="off">'
        '<button type="submit" class="button button--primary">Search</button>{filters}</form>'
        '<div class="search__recent"><h2 class="sidebar__heading">Recent searches {clear}</h2><ul>{recent}</ul></div>'
        '{summary}<div id="search-results" class="messages messages--search">{results}</div></section>').format(
        action=url_for("searches"), query=query, clear=clear, recent=recent_html, summary=summary, results=results,
        filters=render_search_filters(rooms, people, room_id, creator_id))


# People, the account and bots ------------------------------------------------

def render_people(view, people, page, more):
    """One page of the account's people; administrators get role and deactivation controls."""
    viewer = view.user

    def controls(user):
        if not viewer.administrator or user.status != STATUS_ACTIVE:
            return HTML("")
        options = HTML("").join(
            HTML('<option value="{value}"{selected}>{label}</option>').format(
                value=value, label=label, selected=HTML(" selected") if user.role == role else "")
            for role, value, label in ((ROLE_MEMBER, "member", "Member"),
                                       (ROLE_ADMINISTRATOR, "administrator", "Administrator")))
        deactivate = HTML("") if user.id == viewer.id else HTML(
            '<form method="post" action="{action}" class="inline-form">'
            '<input type="hidden" name="_method" value="delete">'
            '<button type="submit" class="button button--danger button--small" aria-label="Deactivate {name}" '
            'data-confirm="Deactivate {name}? They will be signed out everywhere and can\'t sign in again.">'
            'Deactivate</button></form>').format(action=url_for("account_user", user_id=user.id), name=user.name)
        return HTML(
            '<form method="post" action="{action}" class="inline-form">'
            '<input type="hidden" name="_method" value="patch">'
            '<select class="field__input people__role" name="user[role]" aria-label="Role for {name}">'
            '{options}</select>'
            '<button type="submit" class="button button--small" aria-label="Save role for {name}">Save</button>'
            '</form>{deactivate}').format(action=url_for("account_user", user_id=user.id), name=user.name,
                                          options=options, deactivate=deactivate)

    items = HTML("").join(
        HTML('<li class="people__person" id="account_user_{id}" data-user-id="{id}">'
             '<a class="people__name" href="{url}">{avatar}<span>{name}</span></a>'
             '<span class="profile__role">{role}</span>{banned}<span class="people__controls">{controls}</span>'
             '</li>').format(
            id=user.id, url=url_for("user", user_id=user.id), avatar=render_avatar(user.id, 24), name=user.name,
            role=role_label(user), banned=HTML('<span class="profile__role people__banned">Banned</span>')
            if user.status == STATUS_BANNED else "", controls=controls(user))
        for user in people)
    pages = []
    if page > 1:
        pages.append(HTML('<a class="button" href="{}" rel="prev">Previous people</a>').format(
            url_for("account_users", page=page - 1)))
    if more:
        pages.append(HTML('<a class="button" href="{}" rel="next">More people</a>').format(
            url_for("account_users", page=page + 1)))
    return HTML('<section class="panel__section" aria-labelledby="account_users_heading">'
                '<h2 class="panel__subtitle" id="account_users_heading">People</h2>'
                '<ul class="people" id="account_users">{items}</ul>{pages}</section>').format(
        items=items, pages=HTML('<div class="form__actions">{}</div>').format(HTML("").join(pages)) if pages else "")


def render_people_page(view, people_html):
    return HTML('{}<section class="panel panel--wide">{}</section>').format(render_page_assets(view), people_html)


def render_storage_warning(storage):
    """Administrators' warning when the storage is low on space (uploads are refused meanwhile)."""
    if not storage or not storage["low"]:
        return HTML("")
    return HTML('<p class="notice notice--alert" role="alert" id="storage_low">The storage is low on disk space: '
                '{free} free, under the {threshold} kept in reserve (<code>MIN_FREE_DISK_BYTES</code>). '
                'Uploads are refused until space is freed; messages still work.</p>').format(
        free=byte_size_text(storage["free_bytes"]), threshold=byte_size_text(storage["min_free_bytes"]))


def render_backup_status(backups):
    """Administrators' view of the automatic backups: the last good one, and a failure, loudly."""
    offsite = backups.get("offsite")
    if offsite and not offsite["ok"]:
        remote = HTML('<p class="notice notice--alert" role="alert" id="offsite_failure">The copy to {target} failed '
                      '({when} UTC): {error} The local backups are kept; the next backup tries again.</p>').format(
            target=offsite["target"], when=offsite["last_failure_at"].replace("T", " ").rstrip("Z"),
            error=offsite["last_error"])
    elif offsite:
        remote = HTML('<p class="panel__intro">Each backup is also copied to {}.</p>').format(offsite["target"])
    else:
        remote = HTML("")
    if backups["last_failed"]:
        failure = HTML('<p class="notice notice--alert" role="alert" id="backup_failure">The last backup failed '
                       '({when} UTC): {error} Older backups are kept; it is tried again soon.</p>').format(
            when=backups["last_failure_at"].replace("T", " ").rstrip("Z"), error=backups["last_error"])
    else:
        failure = HTML("")
    if backups["last_backup"]:
        last = HTML('The last good backup is <code>{name}</code> ({size}, {when} UTC).').format(
            name=backups["last_backup"], size=byte_size_text(backups["last_size_bytes"] or 0),
            when=backups["last_success_at"].replace("T", " ").rstrip("Z"))
    else:
        last = HTML("No backup has been made yet.")
    if backups["interval_seconds"]:
        every = HTML(" A backup is made every {} in <code>storage/backups/</code>.").format(
            _interval_text(backups["interval_seconds"]))
    else:
        every = HTML(" Automatic backups are off (<code>BACKUP_INTERVAL=0</code>).")
    return HTML(
        '<section class="panel__section" aria-labelledby="backups_heading" id="backups">'
        '<h2 class="panel__subtitle" id="backups_heading">Backups</h2>{failure}'
        '<p class="panel__intro">{last}{every}</p>{remote}</section>').format(failure=failure, last=last,
                                                                            every=every, remote=remote)


def _interval_text(seconds):
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length and seconds % length == 0:
            count = int(seconds // length)
            return unit if count == 1 else "%d %ss" % (count, unit)
    return "%d seconds" % seconds


def render_account_page(view, account, invite_url, people_html, *, restricted, values=None, errors=None,
                        notice=None, saved=False, backups=None, storage=None):
    """The account: its name, the invitation link, people; administrators also edit it."""
    errors = errors or {}
    name = (values or {}).get("account[name]", account["name"])
    if view.user.administrator:
        head = HTML(
            '<h1 class="panel__title">{title}</h1>{notice}'
            '<form method="post" action="{action}" class="form" id="account_form" enctype="multipart/form-data">'
            '<input type="hidden" name="_method" value="patch">{name_field}'
            '<div class="field"><span class="field__label">Logo</span><img class="account__logo" src="{logo}" '
            'alt="The account logo" width="64" height="64">'
            '<label class="field__label" for="account_logo">Upload a new logo</label>'
            '<input class="field__input" type="file" id="account_logo" name="account[logo]" '
            'accept="image/png,image/jpeg,image/gif,image/webp" data-square-image="{logo_pixels}">{logo_error}'
            '</div>'
            '<div class="field"><input type="hidden" name="{setting}" value="0">'
            '<label class="choice"><input type="checkbox" id="account_restrict_room_creation" name="{setting}" '
            'value="1"{checked}> <span>Only administrators can create rooms</span></label></div>'
            '<div class="form__actions"><button type="submit" class="button button--primary">Save changes</button>'
            '</div></form>').format(
            title=account["name"], notice=HTML("").join((render_notice(notice), render_saved(saved))),
            action=url_for("account"),
            logo=view.logo or url_for("account_logo"), logo_pixels=AVATAR_PIXELS,
            logo_error=render_errors(errors, "account[logo]"),
            name_field=render_field("Account name", "account[name]", name, errors=errors,
                                    maxlength=MAX_ACCOUNT_NAME_CHARS),
            setting="account[settings][restrict_room_creation_to_administrators]",
            checked=HTML(" checked") if restricted else "")
        tools = HTML(
            '<section class="panel__section" aria-labelledby="account_admin_heading">'
            '<h2 class="panel__subtitle" id="account_admin_heading">Administration</h2><div class="form__actions">'
            '<a class="button" href="{styles}">Edit custom CSS</a>'
            '<a class="button" href="{bots}">Set up chat bots</a></div>{remove_logo}{storage}</section>{backups}').format(
            styles=url_for("edit_account_custom_styles"), bots=url_for("account_bots"),
            storage=render_storage_warning(storage),
            backups=render_backup_status(backups) if backups else "",
            remove_logo=HTML('<form method="post" action="{}" class="inline-form">'
                             '<input type="hidden" name="_method" value="delete">'
                             '<button type="submit" class="button">Remove logo</button></form>').format(
                url_for("account_logo")) if view.logo else "")
        regenerate = HTML(
            '<form method="post" action="{}" class="inline-form">'
            '<button type="submit" class="button button--danger" '
            'data-confirm="Make a new invitation link? The current one will stop working.">'
            'Regenerate invitation link</button></form>').format(url_for("account_join_code"))
    else:
        head = HTML('<h1 class="panel__title">{}</h1>{}').format(account["name"], render_notice(notice))
        tools = regenerate = HTML("")
    return HTML(
        '{assets}<section class="panel panel--wide account" id="account">{head}'
        '<section class="panel__section" aria-labelledby="invite_heading">'
        '<h2 class="panel__subtitle" id="invite_heading">Invite people</h2>'
        '<p class="panel__intro">Anyone with this link can join {name}. Share it with your team.</p>'
        '{invite}{regenerate}</section>{tools}{people}</section>').format(
        head=head, name=account["name"], regenerate=regenerate, tools=tools,
        invite=render_copyable("invite_url", "Invitation link", invite_url, "Copy invitation link", "Show QR code"),
        people=people_html, assets=render_page_assets(view))


def render_custom_styles_form(css, *, error=None):
    return HTML(
        '<section class="panel panel--wide"><h1 class="panel__title">Custom CSS</h1>'
        '<p class="panel__intro">Styles added to every page, for everyone. Use them to adjust colours, fonts and '
        'spacing. At most {max} KiB.</p>'
        '<form method="post" action="{action}" class="form">'
        '<input type="hidden" name="_method" value="patch">'
        '<div class="field"><label class="field__label" for="account_custom_styles">Custom CSS</label>'
        '<textarea class="field__input" id="account_custom_styles" name="account[custom_styles]" rows="18" '
        'spellcheck="false"{invalid}>{css}</textarea>{error}</div>'
        '<div class="form__actions"><button type="submit" class="button button--primary">Save changes</button>'
        '<a class="button" href="{cancel}">Cancel changes</a></div></form></section>').format(
        max=MAX_CUSTOM_STYLES_BYTES // 1024, css=css, invalid=HTML(' aria-invalid="true"') if error else "",
        action=url_for("account_custom_styles"), cancel=url_for("edit_account"),
        error=render_errors({"account[custom_styles]": error} if error else {}, "account[custom_styles]"))


def render_user_page(view, user, *, transfer_url=None, notice=None):
    """What Campfire's users/show shows: name, avatar, bio, role; administrators also
    see the email address, a sign-in link (transfer_url), and ban/unban and deactivate."""
    viewer = view.user
    admin = viewer.administrator and not user.bot
    email = HTML('<p class="profile__email">{}</p>').format(user.email_address) \
        if admin and user.email_address and user.status != STATUS_DEACTIVATED else ""
    state = {STATUS_BANNED: "Banned", STATUS_DEACTIVATED: "Deactivated"}.get(user.status)
    tools = HTML("")
    if admin and user.status == STATUS_ACTIVE:
        danger = HTML("") if user.id == viewer.id else HTML(
            '<div class="danger-zone form__actions">'
            '<form method="post" action="{ban}" class="inline-form">'
            '<button type="submit" class="button button--danger" data-confirm="Ban {name}? They will be signed out, '
            'the addresses they used will be blocked and all their messages deleted.">Ban {name}</button></form>'
            '<form method="post" action="{deactivate}" class="inline-form">'
            '<input type="hidden" name="_method" value="delete">'
            '<button type="submit" class="button button--danger" data-confirm="Deactivate {name}? They will be '
            'signed out everywhere and can\'t sign in again.">Deactivate {name}</button></form></div>').format(
            ban=url_for("user_ban", user_id=user.id), deactivate=url_for("account_user", user_id=user.id),
            name=user.name)
        tools = HTML(
            '<section class="panel__section" aria-labelledby="transfer_heading">'
            '<h2 class="panel__subtitle" id="transfer_heading">Sign-in link</h2>'
            '<p class="panel__intro">Opening this link signs a browser in as {name}, for the next 4 hours. '
            'Give it only to {name}.</p>{transfer}</section>{danger}').format(
            name=user.name, danger=danger,
            transfer=render_copyable("session_transfer_url", "Sign-in link", transfer_url,
                                     "Copy sign-in link", "Show auto-login QR code"))
    elif admin and user.status == STATUS_BANNED:
        tools = HTML(
            '<div class="danger-zone form__actions"><form method="post" action="{ban}" class="inline-form">'
            '<input type="hidden" name="_method" value="delete">'
            '<button type="submit" class="button">Unban {name}</button></form></div>').format(
            ban=url_for("user_ban", user_id=user.id), name=user.name)
    own = HTML('<div class="form__actions"><a class="button" href="{}">Edit your profile</a></div>').format(
        url_for("user_profile")) if user.id == viewer.id else ""
    if user.id != viewer.id and user.status == STATUS_ACTIVE:
        own = HTML('<form method="post" action="{action}" class="form__actions">'
                   '<input type="hidden" name="user_ids[]" value="{id}">'
                   '<button type="submit" class="button button--primary">Ping</button></form>').format(
            action=url_for("direct_rooms"), id=user.id)
    return HTML(
        '{assets}<section class="panel panel--wide profile">{notice}<div class="profile__head">{avatar}'
        '<div><h1 class="panel__title">{name}</h1><p class="profile__role">{role}{state}</p>{email}</div></div>'
        '<p class="profile__bio">{bio}</p>{own}{tools}</section>').format(
        assets=render_page_assets(view) if tools else "", notice=render_notice(notice),
        avatar=render_avatar(user.id, 96), name=user.name, role=role_label(user),
        state=HTML(" · {}").format(state) if state else "", email=email, bio=user.bio or "", own=own, tools=tools)


def render_profile(view, values, errors, transfer_url, *, saved=False):
    user = view.user
    bio_error = render_errors(errors, "user[bio]")
    avatar_error = render_errors(errors, "user[avatar]")
    fields = HTML("").join([
        HTML('<div class="field"><label class="field__label" for="user_avatar">Avatar</label>'
             '<input class="field__input" type="file" id="user_avatar" name="user[avatar]" '
             'accept="image/png,image/jpeg,image/gif,image/webp" data-square-image="{size}"{invalid}>'
             '<p class="field__hint">Square images look best: the picture is cropped to its middle square.</p>'
             '{error}</div>').format(size=AVATAR_PIXELS, error=avatar_error,
                                    invalid=HTML(' aria-invalid="true"') if avatar_error else ""),
        render_field("Your name", "user[name]", values["user[name]"], errors=errors, autocomplete="name",
                     maxlength=MAX_NAME_CHARS),
        render_field("Email address", "user[email_address]", values["user[email_address]"], type="email",
                     errors=errors, autocomplete="username", maxlength=MAX_EMAIL_CHARS),
        render_field("New password (leave blank to keep yours)", "user[password]", "", type="password",
                     errors=errors, autocomplete="new-password", required=False, maxlength=MAX_PASSWORD_BYTES),
        HTML('<div class="field"><label class="field__label" for="user_bio">Bio</label>'
             '<textarea class="field__input field__input--prose" id="user_bio" name="user[bio]" rows="3" '
             'maxlength="{max}"{invalid}>'
             '{bio}</textarea>{error}</div>').format(
            max=MAX_BIO_CHARS, bio=values["user[bio]"], error=bio_error,
            invalid=HTML(' aria-invalid="true"') if bio_error else ""),
    ])
    return HTML(
        '{assets}<section class="panel panel--wide profile"><div class="profile__head">{avatar}'
        '<div><h1 class="panel__title">Your profile</h1><p class="profile__role">{role}</p></div></div>'
        '{saved}<form method="post" action="{action}" class="form" enctype="multipart/form-data">'
        '<input type="hidden" name="_method" value="patch">{fields}'
        '<div class="form__actions"><button type="submit" class="button button--primary">Save changes</button>'
        '<a class="button" href="{cancel}">Cancel changes</a></div></form>'
        '<form method="post" action="{avatar_action}" class="inline-form profile__remove-avatar">'
        '<input type="hidden" name="_method" value="delete">'
        '<button type="submit" class="button button--small">Remove avatar</button></form>'
        '<section class="panel__section" aria-labelledby="transfer_heading">'
        '<h2 class="panel__subtitle" id="transfer_heading">Sign in on another device</h2>'
        '<p class="panel__intro">Open this link on your phone or another computer, or scan its QR code, to sign '
        'in there without a password. It works for 4 hours: keep it to yourself.</p>'
        '{transfer}</section>'
        '<section class="panel__section" aria-labelledby="push_heading">'
        '<h2 class="panel__subtitle" id="push_heading">Notifications</h2>'
        '<p class="panel__intro">Turn them on in each browser with "Notifications" at the top of the page. '
        '<a href="{push_subscriptions}">Browsers that get notifications</a></p></section></section>').format(
        push_subscriptions=url_for("user_push_subscriptions"), avatar=render_avatar(user.id, 96), role=role_label(user), fields=fields,
        action=url_for("user_profile"), saved=render_saved(saved),
        avatar_action=url_for("user_avatar", user_id=user.id),
        cancel=url_for("user", user_id=user.id),
        transfer=render_copyable("session_transfer_url", "Sign-in link", transfer_url,
                                 "Copy sign-in link", "Show auto-login QR code"),
        assets=render_page_assets(view))


def render_bot_item(bot_row, post_url):
    """One bot's card: name, webhook, and the curl command that posts as it (post_url: its
    absolute post URL, or None when it is in no room)."""
    command = HTML(
        '<div class="field"><label class="field__label" for="bot_{id}_curl">curl command for posting messages</label>'
        '<input class="field__input" id="bot_{id}_curl" type="text" value="{command}" readonly '
        'spellcheck="false"></div>').format(id=bot_row["id"], command="curl -d 'Hello!' %s" % post_url) \
        if post_url else HTML('<p class="notice">Not in any room yet.</p>')
    webhook = HTML('Webhook: <code>{}</code>').format(bot_row["webhook_url"]) if bot_row["webhook_url"] \
        else HTML("No webhook")
    return HTML(
        '<li class="bot" id="bot_{id}"><div class="profile__head">{avatar}<div>'
        '<h2 class="bot__name">{name}</h2><p class="bot__webhook">{webhook}</p></div></div>{command}'
        '<div class="form__actions"><a class="button" href="{edit}" aria-label="Edit {name}">'
        'Edit</a></div></li>').format(
        id=bot_row["id"], avatar=render_avatar(bot_row["id"], 48), name=bot_row["name"], webhook=webhook,
        command=command, edit=url_for("edit_account_bot", bot_id=bot_row["id"]))


def render_bots(items):
    """The bots page: items are render_bot_item's cards."""
    return HTML(
        '<section class="panel panel--wide"><h1 class="panel__title">Chat bots</h1>'
        '<p class="panel__intro">A bot posts with its own key, and hears about messages that mention it '
        '(and every message in a direct room with it) at its webhook URL.</p>'
        '{items}<div class="form__actions"><a class="button button--primary" href="{new}">New bot</a>'
        '<a class="button" href="{account}">Back to the account</a></div></section>').format(
        items=HTML('<ul class="bots">{}</ul>').format(HTML("").join(items)) if items
        else HTML('<p class="notice">No bots yet.</p>'), new=url_for("new_account_bot"), account=url_for("edit_account"))


def render_push_subscriptions(subscriptions):
    """Campfire's users/push_subscriptions/index.html.erb: each browser that gets pushes,
    with a test notification and a delete button."""
    def item(row):
        return HTML(
            '<li class="push-subscription"><strong class="push-subscription__agent">{agent}</strong>'
            '<span class="push-subscription__endpoint">{endpoint}</span><span class="push-subscription__actions">'
            '<form method="post" action="{test}" class="inline-form"><button type="submit" class="button">'
            'Send test notification</button></form>'
            '<form method="post" action="{delete}" class="inline-form"><input type="hidden" name="_method" '
            'value="delete"><button type="submit" class="button button--danger">Delete subscription</button>'
            '</form></span></li>').format(
            agent=row["user_agent"] or "A browser", endpoint=row["endpoint"],
            test=url_for("user_push_subscription_test_notifications", subscription_id=row["id"]),
            delete=url_for("user_push_subscription", subscription_id=row["id"]))
    items = HTML('<ul class="push-subscriptions" id="push_subscriptions">{}</ul>').format(
        HTML("").join(item(row) for row in subscriptions)) if subscriptions else \
        HTML('<p class="notice" id="push_subscriptions">No browser gets notifications yet. Turn them on with '
             '"Notifications" at the top of the page.</p>')
    return HTML('<section class="panel panel--wide"><h1 class="panel__title">Push Notification Subscriptions</h1>'
                '{}</section>').format(items)


def render_bot_form(*, bot_row=None, values=None, errors=None):
    values, errors = values or {}, errors or {}
    editing = bot_row is not None
    fields = HTML(
        '<div class="field"><label class="visually-hidden" for="user_name">Name the bot</label>'
        '<input class="field__input" id="user_name" name="user[name]" value="{name}" placeholder="Name the bot" '
        'maxlength="{max_name}" required autofocus{name_invalid}>{name_error}</div>'
        '<div class="field"><label class="field__label" for="user_webhook_url">Webhook URL (optional)</label>'
        '<input class="field__input" id="user_webhook_url" name="user[webhook_url]" type="url" value="{url}" '
        'placeholder="https://example.com/campfire-bot" maxlength="{max_url}"{url_invalid}>{url_error}</div>'
        '<div class="field"><label class="field__label" for="user_avatar">Avatar (optional)</label>'
        '<input class="field__input" type="file" id="user_avatar" name="user[avatar]" '
        'accept="image/png,image/jpeg,image/gif,image/webp" data-square-image="{avatar_pixels}">{avatar_error}'
        '</div>').format(avatar_pixels=AVATAR_PIXELS, avatar_error=render_errors(errors, "user[avatar]"),
        name=values.get("user[name]", ""), max_name=MAX_NAME_CHARS, url=values.get("user[webhook_url]", ""),
        max_url=MAX_WEBHOOK_URL_CHARS, name_error=render_errors(errors, "user[name]"),
        url_error=render_errors(errors, "user[webhook_url]"),
        name_invalid=HTML(' aria-invalid="true"') if "user[name]" in errors else "",
        url_invalid=HTML(' aria-invalid="true"') if "user[webhook_url]" in errors else "")
    extra = HTML("")
    if editing:
        extra = HTML(
            '<div class="danger-zone"><div class="field"><label class="field__label" for="bot_key">Bot key</label>'
            '<input class="field__input" id="bot_key" type="text" value="{key}" readonly spellcheck="false"></div>'
            '<form method="post" action="{reset}" class="inline-form">'
            '<input type="hidden" name="_method" value="put">'
            '<button type="submit" class="button">Reset key</button></form> '
            '<form method="post" action="{bot}" class="inline-form">'
            '<input type="hidden" name="_method" value="delete">'
            '<button type="submit" class="button button--danger" data-confirm="Delete this bot?">Delete bot</button>'
            '</form></div>').format(reset=url_for("account_bot_key", bot_id=bot_row["id"]),
                                    bot=url_for("account_bot", bot_id=bot_row["id"]), key=bot_key(bot_row))
    return HTML(
        '<section class="panel panel--wide"><h1 class="panel__title">{title}</h1>'
        '<form method="post" action="{action}" class="form" enctype="multipart/form-data">{method}{fields}'
        '<div class="form__actions"><button type="submit" class="button button--primary">{button}</button>'
        '<a class="button" href="{cancel}">Cancel changes</a></div></form>{extra}</section>').format(
        title="Edit %s" % bot_row["name"] if editing else "New bot",
        action=url_for("account_bot", bot_id=bot_row["id"]) if editing else url_for("account_bots"),
        method=HTML('<input type="hidden" name="_method" value="patch">') if editing else "",
        fields=fields, button="Save changes" if editing else "Create bot", extra=extra,
        cancel=url_for("account_bots"))


# JSON ------------------------------------------------------------------------

BOT_ROLE_NAMES = {ROLE_MEMBER: "member", ROLE_ADMINISTRATOR: "administrator", ROLE_BOT: "bot"}


def person_json(user_id, user, origin):
    return {"id": user_id, "name": user.name if user else "Deleted user",
            "role": BOT_ROLE_NAMES.get(user.role, "member") if user else "member",
            "avatar_url": origin + url_for("user_avatar", user_id=user_id)}


def message_json(message, plain_text, creator, origin):
    """A message as the bot API shows it (Campfire's app/views/messages/_message.json.jbuilder)."""
    return {"id": message["id"], "created_at": iso_time_ms(message["created_at"]),
            "body": {"plain_text": plain_text, "html": message["body"] or ""},
            "creator": person_json(message["creator_id"], creator, origin),
            "room": {"id": message["room_id"]},
            "url": message_url(message, origin)}


def message_url(message, origin):
    """Campfire's room_message_url: the message's own address in its room."""
    return origin + url_for("room_message", room_id=message["room_id"], message_id=message["id"])


def boost_json(boost, booster, message, origin):
    """A boost as the bot API shows it (app/views/messages/boosts/_boost.json.jbuilder)."""
    return {"id": boost["id"], "content": boost["content"], "created_at": iso_time_ms(boost["created_at"]),
            "booster": person_json(boost["booster_id"], booster, origin),
            "message": {"id": message["id"], "url": message_url(message, origin)}}


def manifest_json(account_name, logo=None):
    """The installable app's manifest (Campfire's app/views/pwa/); logo: the account's (a Blob), whose
    512×512 square the browser made is its icon at 192 and 512."""
    icon_192 = {"src": url_for("static", path="icon-192.png"), "sizes": "192x192", "type": "image/png"}
    maskable = url_for("static", path="icon-maskable-512.png")
    if logo is not None:
        source = url_for("account_logo", v=logo.key[:8])
        icon_192 = {"src": source, "sizes": "192x192", "type": logo.content_type}
        return dict(manifest_json(account_name), icons=[
            dict(icon_192, purpose="any"), {"src": source, "sizes": "512x512", "type": logo.content_type,
                                            "purpose": "any"},
            {"src": maskable, "sizes": "512x512", "type": "image/png", "purpose": "maskable"}], shortcuts=[
            {"name": "New chat room", "url": url_for("new_open_room"), "icons": [icon_192]},
            {"name": "My profile", "url": url_for("user_profile"), "icons": [icon_192]}])
    return {
        "name": account_name, "short_name": account_name if len(account_name) <= 12 else "Campfire", "id": "/",
        "start_url": url_for("root"), "scope": "/", "display": "standalone", "background_color": THEME_COLOR_LIGHT,
        "theme_color": THEME_COLOR_LIGHT,
        "icons": [dict(icon_192, purpose="any"),
                  {"src": maskable, "sizes": "512x512", "type": "image/png", "purpose": "any"},
                  {"src": maskable, "sizes": "512x512", "type": "image/png", "purpose": "maskable"},
                  {"src": url_for("static", path="icon.svg"), "sizes": "any", "type": "image/svg+xml",
                   "purpose": "any"}],
        "shortcuts": [{"name": "New chat room", "url": url_for("new_open_room"), "icons": [icon_192]},
                      {"name": "My profile", "url": url_for("user_profile"), "icons": [icon_192]}],
    }


def _metric_labels(pairs):
    """{name="value",…} with the text format's escapes: backslash, double quote, newline."""
    return "{%s}" % ",".join('%s="%s"' % (name, str(value).replace("\\", "\\\\").replace('"', '\\"')
                                           .replace("\n", "\\n")) for name, value in pairs)


_GAUGE_HELP = (
    ("http_connections", "Open HTTP connections, /cable ones apart."),
    ("cable_connections", "Open /cable WebSocket connections."),
    ("cable_subscriptions", "Action Cable channel subscriptions on those connections."),
    ("webhook_queue_depth", "Webhook deliveries waiting."),
    ("push_queue_depth", "Web Push notifications waiting, retries included."),
    ("backup_age_seconds", "Seconds since the last good backup (absent before the first)."),
    ("backup_failing", "1 when the last backup or its off-site copy failed."),
    ("storage_free_bytes", "Free bytes in the storage directory's file system."),
    ("storage_low", "1 when that is under MIN_FREE_DISK_BYTES and uploads are refused."),
    ("database_failing", "1 when the database refused writes or showed damage lately."),
)


def render_metrics(metrics, gauges, version):
    """The Prometheus text exposition format 0.0.4 (prometheus.io/docs/instrumenting/exposition_formats):
    counters and the latency histogram from Metrics, then the gauges, a value of None left out."""
    lines = ["# HELP campfire_info The running version.", "# TYPE campfire_info gauge",
             "campfire_info%s 1" % _metric_labels((("version", version),)),
             "# HELP campfire_http_requests_total HTTP requests answered, by route and status.",
             "# TYPE campfire_http_requests_total counter"]
    routes = sorted((pattern, method, stats) for pattern, by_method in metrics.routes.items()
                    for method, stats in by_method.items())
    for pattern, method, stats in routes:
        for status, count in sorted(stats.statuses.items()):
            lines.append("campfire_http_requests_total%s %d" % (
                _metric_labels((("method", method), ("route", pattern), ("status", status))), count))
    lines += ["# HELP campfire_http_request_duration_seconds Time from a request's head to its answer, by route.",
              "# TYPE campfire_http_request_duration_seconds histogram"]
    for pattern, method, stats in routes:
        labels, total = (("method", method), ("route", pattern)), 0
        for bound, count in zip(METRICS_LATENCY_BUCKETS + ("+Inf",), stats.buckets):
            total += count
            lines.append("campfire_http_request_duration_seconds_bucket%s %d" % (
                _metric_labels(labels + (("le", bound),)), total))
        lines.append("campfire_http_request_duration_seconds_sum%s %r" % (_metric_labels(labels), stats.seconds))
        lines.append("campfire_http_request_duration_seconds_count%s %d" % (_metric_labels(labels), total))
    lines += ["# HELP campfire_messages_posted_total Messages posted (committed) since the server started.",
              "# TYPE campfire_messages_posted_total counter",
              "campfire_messages_posted_total %d" % metrics.messages_posted]
    for name, help_text in _GAUGE_HELP:
        lines += ["# HELP campfire_%s %s" % (name, help_text), "# TYPE campfire_%s gauge" % name]
        if gauges.get(name) is not None:
            lines.append("campfire_%s %s" % (name, gauges[name]))
    return "\n".join(lines) + "\n"


####
#### 14. Routes
####
# The route table below is the map of the server: every method and path it
# answers, the name url_for builds the path by, the handler, and who may call it:
#   public      anyone (the user is still loaded when signed in)
#   signed_out  only people not signed in (others go to /)
#   user        a signed-in person (others go to sign in, or first run)
#   admin       a signed-in administrator (others get 403)
#   bot         the bot API: the key in the path authenticates (no cookie, no forgery check)
#   health      /up: no session looked at, nothing logged
# A path segment that is a credential (a sign-in link's token, a join code, a bot
# key) is declared <secret:name>: the request log shows it as [FILTERED].
# and, where a route takes more than FORM_BODY_LIMIT, the largest body it takes.
# The handlers follow, grouped by feature in the table's order; each parses and
# checks its input, calls the domain, renders and answers. App owns the Router
# made from this table; a path matched with the wrong method is a 405 with Allow.

BOT_MESSAGES_PATH = "/rooms/<int:room_id>/<secret:bot_key>/messages"


def route_table():
    return (
        # method(s)     path pattern                                  name                      handler                   who      body limit
        # Health, files and the installable app
        ("GET",         "/up",                                        "up",                     health_check,             "health"),
        ("GET",         "/metrics",                                   "metrics",                metrics,                  "health"),
        ("GET",         "/static/<path:path>",                        "static",                 static_file,              "public"),
        ("GET",         "/webmanifest.json",                          "webmanifest",            web_manifest,             "public"),
        ("GET",         "/webmanifest",                               None,                     web_manifest,             "public"),
        ("GET",         "/service-worker.js",                         "service_worker",         service_worker,           "public"),
        ("GET",         "/service-worker",                            None,                     service_worker,           "public"),
        # First run, sign in and out, sign up, sign-in links and their QR codes
        ("GET",         "/first_run",                                 "first_run",              first_run_form,           "public"),
        ("POST",        "/first_run",                                 "first_run",              first_run,                "public"),
        ("GET",         "/session/new",                               "new_session",            sign_in_form,             "signed_out"),
        ("POST",        "/session",                                   "session",                sign_in,                  "public"),
        ("DELETE",      "/session",                                   "session",                sign_out,                 "user"),
        ("GET",         "/join/<secret:join_code>",                   "join",                   join_form,                "signed_out"),
        ("POST",        "/join/<secret:join_code>",                   "join",                   join,                     "signed_out"),
        ("GET",         "/session/transfers/<secret:token>",          "session_transfer",       show_session_transfer,    "public"),
        ("PUT PATCH",   "/session/transfers/<secret:token>",          "session_transfer",       update_session_transfer,  "public"),
        ("GET",         "/qr_code/<secret:code>",                     "qr_code",                qr_code,                  "public"),
        # Rooms
        ("GET",         "/",                                          "root",                   landing),
        ("GET",         "/rooms",                                     "rooms",                  landing),
        ("GET",         "/rooms/<int:room_id>",                       "room",                   show_room),
        ("DELETE",      "/rooms/<int:room_id>",                       "room",                   delete_room),
        ("GET",         "/rooms/opens/new",                           "new_open_room",          new_open_room),
        ("GET",         "/rooms/closeds/new",                         "new_closed_room",        new_closed_room),
        ("POST",        "/rooms/opens",                               "open_rooms",             create_open_room),
        ("POST",        "/rooms/closeds",                             "closed_rooms",           create_closed_room),
        ("GET",         "/rooms/opens/<int:room_id>",                 "open_room",              room_kind_show),
        ("PATCH PUT",   "/rooms/opens/<int:room_id>",                 "open_room",              update_open_room),
        ("GET",         "/rooms/closeds/<int:room_id>",               "closed_room",            room_kind_show),
        ("PATCH PUT",   "/rooms/closeds/<int:room_id>",               "closed_room",            update_closed_room),
        ("GET",         "/rooms/opens/<int:room_id>/edit",            "edit_open_room",         edit_room),
        ("GET",         "/rooms/closeds/<int:room_id>/edit",          "edit_closed_room",       edit_room),
        ("GET",         "/rooms/directs/new",                         "new_direct_room",        new_direct_room),
        ("POST",        "/rooms/directs",                             "direct_rooms",           create_direct_room),
        ("GET",         "/rooms/directs/<int:room_id>",               "direct_room",            room_kind_show),
        ("DELETE",      "/rooms/directs/<int:room_id>",               "direct_room",            delete_direct_room),
        ("GET",         "/rooms/directs/<int:room_id>/edit",          "edit_direct_room",       edit_direct_room),
        ("GET",         "/rooms/<int:room_id>/involvement",           "room_involvement",       show_involvement),
        ("PUT PATCH",   "/rooms/<int:room_id>/involvement",           "room_involvement",       update_involvement),
        # Messages and boosts
        ("GET",         "/rooms/<int:room_id>/messages",              "room_messages",          message_page),
        ("POST",        "/rooms/<int:room_id>/messages",              "room_messages",          create_message,           "user",  MESSAGE_BODY_LIMIT, True),
        ("GET",         "/rooms/<int:room_id>/messages/<int:message_id>", "room_message",       show_message),
        ("PATCH PUT",   "/rooms/<int:room_id>/messages/<int:message_id>", "room_message",       update_message,           "user",  MESSAGE_BODY_LIMIT),
        ("DELETE",      "/rooms/<int:room_id>/messages/<int:message_id>", "room_message",       delete_message),
        ("GET",         "/rooms/<int:room_id>/messages/<int:message_id>/edit", "edit_room_message", edit_message),
        ("GET",         "/rooms/<int:room_id>/@<int:message_id>",     "room_at_message",        permalink),
        ("GET",         "/rooms/<int:room_id>/refresh",               "room_refresh",           refresh_room),
        ("POST",        "/rooms/<int:room_id>/messages/<int:message_id>/thread", "room_message_thread", start_thread),
        ("POST",        "/rooms/<int:room_id>/messages/<int:message_id>/unread", "room_message_unread", mark_unread),
        ("POST",        "/messages/<int:message_id>/bookmark",        "message_bookmark",       save_message),
        ("DELETE",      "/messages/<int:message_id>/bookmark",        "message_bookmark",       unsave_message),
        # Catching up: the mentions inbox and saved messages
        ("GET",         "/mentions",                                  "mentions",               mentions_inbox),
        ("GET",         "/bookmarks",                                 "bookmarks",              saved_messages),
        ("GET",         "/messages/<int:message_id>",                 "message",                message_location),
        ("GET",         "/messages/<int:message_id>/attachment",      "message_attachment",     message_attachment),
        ("GET",         "/messages/<int:message_id>/attachment/download", "message_attachment_download",
         message_attachment_download),
        ("GET",         "/messages/<int:message_id>/attachment/preview", "message_attachment_preview",
         message_attachment_preview),
        ("GET",         "/messages/<int:message_id>/boosts/new",      "new_message_boost",      new_boost),
        ("POST",        "/messages/<int:message_id>/boosts",          "message_boosts",         create_boost),
        ("DELETE",      "/messages/<int:message_id>/boosts/<int:boost_id>", "message_boost",    delete_boost),
        ("POST",        "/unfurl_link",                               "unfurl_link",            unfurl_link),
        # Search
        ("GET",         "/searches",                                  "searches",               search),
        ("POST",        "/searches",                                  "searches",               create_search),
        ("DELETE",      "/searches/clear",                            "clear_searches",         clear_searches),
        # People and profiles
        ("GET",         "/users/me/sidebar",                          "user_sidebar",           sidebar),
        ("GET",         "/users/me/profile",                          "user_profile",           edit_profile),
        ("PATCH PUT",   "/users/me/profile",                          "user_profile",           update_profile,           "user",  AVATAR_BODY_LIMIT),
        ("GET",         "/users/me/push_subscriptions",               "user_push_subscriptions", push_subscriptions_page),
        ("POST",        "/users/me/push_subscriptions",               "user_push_subscriptions", create_push_subscription),
        ("DELETE",      "/users/me/push_subscriptions/<int:subscription_id>", "user_push_subscription", delete_push_subscription),
        ("POST",        "/users/me/push_subscriptions/<int:subscription_id>/test_notifications",
                                                                      "user_push_subscription_test_notifications",
                                                                                                create_test_notification),
        ("GET",         "/users/<int:user_id>",                       "user",                   show_user),
        ("GET",         "/users/<int:user_id>/avatar",                "user_avatar",            avatar),
        ("DELETE",      "/users/<int:user_id>/avatar",                "user_avatar",            delete_avatar),
        ("POST",        "/users/<int:user_id>/ban",                   "user_ban",               create_ban,               "admin"),
        ("DELETE",      "/users/<int:user_id>/ban",                   "user_ban",               delete_ban,               "admin"),
        ("GET",         "/autocompletable/users",                     "autocompletable_users",  autocompletable_users),
        # The account: its page, settings, custom CSS and people
        ("GET",         "/account/edit",                              "edit_account",           edit_account),
        ("PATCH PUT",   "/account",                                   "account",                update_account,           "admin", AVATAR_BODY_LIMIT),
        ("GET",         "/account/logo",                              "account_logo",           account_logo,             "public"),
        ("DELETE",      "/account/logo",                              "account_logo",           delete_account_logo,      "admin"),
        ("POST",        "/account/join_code",                         "account_join_code",      regenerate_join_code,     "admin"),
        ("GET",         "/account/custom_styles",                     "account_custom_styles",  custom_styles_redirect,   "admin"),
        ("PATCH PUT",   "/account/custom_styles",                     "account_custom_styles",  update_custom_styles,     "admin", CUSTOM_STYLES_BODY_LIMIT),
        ("GET",         "/account/custom_styles/edit",                "edit_account_custom_styles", edit_custom_styles,   "admin"),
        ("GET",         "/account/custom_styles.css",                 "account_custom_stylesheet", custom_styles_stylesheet, "public"),
        ("GET",         "/account/users",                             "account_users",          account_users),
        ("PATCH PUT",   "/account/users/<int:user_id>",               "account_user",           update_account_user,      "admin"),
        ("DELETE",      "/account/users/<int:user_id>",               "account_user",           deactivate_account_user,  "admin"),
        # Bots: administrators' pages, and the bot API (Campfire's paths)
        ("GET",         "/account/bots",                              "account_bots",           bots_index,               "admin"),
        ("POST",        "/account/bots",                              "account_bots",           create_bot_route,         "admin", AVATAR_BODY_LIMIT),
        ("GET",         "/account/bots/new",                          "new_account_bot",        new_bot,                  "admin"),
        ("GET",         "/account/bots/<int:bot_id>",                 "account_bot",            show_bot,                 "admin"),
        ("PATCH PUT",   "/account/bots/<int:bot_id>",                 "account_bot",            update_bot_route,         "admin", AVATAR_BODY_LIMIT),
        ("DELETE",      "/account/bots/<int:bot_id>",                 "account_bot",            delete_bot,               "admin"),
        ("GET",         "/account/bots/<int:bot_id>/edit",            "edit_account_bot",       edit_bot,                 "admin"),
        ("PUT PATCH",   "/account/bots/<int:bot_id>/key",             "account_bot_key",        reset_bot_key_route,      "admin"),
        ("GET",         BOT_MESSAGES_PATH,                            "bot_messages",           bot_messages,             "bot"),
        ("POST",        BOT_MESSAGES_PATH,                            "bot_messages",           bot_create_message,       "bot",   MESSAGE_BODY_LIMIT, True),
        ("GET",         BOT_MESSAGES_PATH + "/<int:message_id>",      "bot_message",            bot_show_message,         "bot"),
        ("PATCH PUT",   BOT_MESSAGES_PATH + "/<int:message_id>",      "bot_message",            bot_update_message,       "bot",   MESSAGE_BODY_LIMIT),
        ("DELETE",      BOT_MESSAGES_PATH + "/<int:message_id>",      "bot_message",            bot_delete_message,       "bot"),
        ("POST",        BOT_MESSAGES_PATH + "/<int:message_id>/boosts", "bot_message_boosts",   bot_create_boost,         "bot"),
        ("DELETE",      BOT_MESSAGES_PATH + "/<int:message_id>/boosts/<int:boost_id>", "bot_message_boost", bot_delete_boost, "bot"),
        # Real time
        ("GET",         "/cable",                                     "cable",                  cable,                    "public"),
    )


# Helpers the handlers share ----------------------------------------------------

def _page(app, request, title, body, *, status=200, headers=None, sidebar=True, body_class="", current_room_id=None):
    """A whole page around body, as a Response; the signed-in get the sidebar unless sidebar=False."""
    view = app.view(request)
    side = _sidebar_html(app, view.user, current_room_id) if sidebar and view.user is not None else None
    return Response(render_layout(view, title, body, sidebar=side, body_class=body_class), status, headers=headers)


def _auth_page(app, request, title, body, *, status=200, headers=None):
    return _page(app, request, title, body, status=status, headers=headers, sidebar=False, body_class="auth")


def _sidebar_html(app, user, current_room_id=None):
    shared, direct = app.store.sidebar_rooms(user.id)
    return render_sidebar(shared, direct, app.store.unread_room_ids(user.id), current_room_id,
                          app.store.may_create_rooms(user), app.store.hidden_rooms(user.id),
                          app.store.unread_mention_count(user.id))


def _navigating(request):
    """A plain form submission by a browser (answered with a redirect, not a fragment)."""
    return request.headers.get("sec-fetch-mode") == "navigate"


def _id_param(request, name):
    """A numeric query parameter (an id or milliseconds), None when absent; 400 when malformed."""
    value = request.params.get(name)
    if value is None:
        return None
    if not _CONTENT_LENGTH_RE.match(value):
        raise BadRequest("%s takes a number." % name)
    return int(value)


def check_field(errors, field, value, *, blank=None, max_chars=None, max_bytes=None, problem=None):
    """The one form check: value, after recording in errors[field] what is wrong with it,
    if anything: `blank` (the message) when it is empty, too many characters or bytes, or
    what problem(value) says (None when it is fine)."""
    if not value:
        if blank:
            errors[field] = blank
    elif max_chars is not None and len(value) > max_chars:
        errors[field] = "Use at most %d characters." % max_chars
    elif max_bytes is not None and len(value.encode()) > max_bytes:
        errors[field] = "Use at most %d bytes." % max_bytes
    elif problem is not None:
        message = problem(value)
        if message:
            errors[field] = message
    return value


def _email_problem(email):
    return None if EMAIL_RE.match(email) and len(email) <= MAX_EMAIL_CHARS else "Enter a valid email address."


def _member_room(app, request, room_id):
    """The room, if the signed-in person belongs to it; 404 otherwise (never reveal it exists)."""
    room = app.store.member_room(room_id, request.user.id)
    if room is None:
        raise NotFound("There is no such room.")
    return room


def _settable_room(app, request, room_id):
    """A room whose settings, members and involvement its members may change: not a
    thread's (a thread follows its room)."""
    room = _member_room(app, request, room_id)
    if room.thread:
        raise NotFound("There is no such room.")
    return room


def _find_message(app, message_id, *, room_id=None, member=None):
    """The message, if it is in room_id (when given) and member belongs to its room; else 404."""
    message = app.store.message_in(message_id, room_id=room_id, member_id=member.id if member else None)
    if message is None:
        raise NotFound("There is no such message.")
    return message


def _message_in_room(app, request, room_id, message_id):
    _member_room(app, request, room_id)
    return _find_message(app, message_id, room_id=room_id)


def _transfer_url(app, request, user, now=None):
    """A link that signs a browser in as `user`, reusable for 4 hours (Campfire's app/models/user/transferable.rb)."""
    now = time.time() if now is None else now
    token = app.signer.sign(user.id, "transfer", expires_at=int(now + TRANSFER_TOKEN_SECONDS))
    return request.origin + url_for("session_transfer", token=token)


# Health ---------------------------------------------------------------------
# A page a load balancer or a person reads at a glance: green while the
# database answers, red (503) when it does not, or when writes were refused
# (a full disk) or reads found damage within FAILURE_WINDOW. Never cached.

HEALTH_PAGE = '<!DOCTYPE html><html><body style="background-color: %s"></body></html>'
HEALTHY_PAGE, UNHEALTHY_PAGE = (HEALTH_PAGE % "green").encode(), (HEALTH_PAGE % "red").encode()
HEALTH_HEADERS = (("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
                  ("Cache-Control", "no-store"))


def health_check(app, request):
    if request.query_string and request.params.get("detail") == "1":
        return health_detail(app, request)
    if not app.db.healthy():
        return Response(UNHEALTHY_PAGE, 503, headers=HEALTH_HEADERS)
    return Response(HEALTHY_PAGE, headers=HEALTH_HEADERS)


def health_detail(app, request):
    """/up?detail=1: JSON for monitoring, to loopback and administrators only (it names
    backups and disk space): the database, the backups, free space, connections, the version."""
    address = normalized_ip(request.remote_addr)
    if address is None or not address.is_loopback:
        app._authenticate(request)
        if request.user is None or not request.user.administrator:
            raise NotFound("There is nothing at this address.")
    healthy = app.db.healthy()
    backups = app.backups.summary()
    storage = app.storage_summary()
    connections = app.connection_summary()
    detail = {"status": "ok" if healthy and backups["ok"] and not storage["low"] else "failing",
              "database": "ok" if healthy else "failing", "backups": backups,
              "storage_free_bytes": storage["free_bytes"], "storage": storage, "connections": connections,
              "version": VERSION}
    return json_response(detail, 200 if healthy else 503, headers=[("Cache-Control", "no-store")])


def metrics(app, request):
    """GET /metrics: the Prometheus text format, to loopback and METRICS_ALLOW only
    (others get the 404 of an address that isn't there). The client address is the
    one rate limits use: X-Forwarded-For counts only from TRUSTED_PROXIES."""
    address = normalized_ip(request.remote_addr)
    if address is None or not (address.is_loopback or any(address in network
                                                           for network in app.config.metrics_allow)):
        raise NotFound("There is nothing at this address.")
    backups = app.backups.summary()
    storage = app.storage_summary()
    connections = app.connection_summary()
    gauges = {
        "http_connections": connections["http"],
        "cable_connections": connections["cable"],
        "cable_subscriptions": connections["cable_subscriptions"],
        "webhook_queue_depth": len(app.webhooks.pending),
        "push_queue_depth": app.pushes.depth,
        "backup_age_seconds": backups["last_success_age_seconds"],
        "backup_failing": int(not backups["ok"]),
        "storage_free_bytes": storage["free_bytes"],
        "storage_low": int(storage["low"]),
        "database_failing": int(not app.db.healthy()),
    }
    return Response(render_metrics(app.metrics, gauges, VERSION), content_type=METRICS_CONTENT_TYPE,
                    headers=[("Cache-Control", "no-store")])


# Static files and the installable app --------------------------------------------

def static_file(app, request, path):
    return app.static.response(request, request.path[len("/static/"):])


def web_manifest(app, request):
    return json_response(manifest_json(app.store.account_name(), app.store.account_logo()),
                         headers=[("Content-Type", "application/manifest+json"), ("Cache-Control", "no-cache")])


def service_worker(app, request):
    """Served from the root so its scope is the whole site; it caches no chat, only the offline page."""
    response = app.static.response(request, "service-worker.js")
    response.headers = [(name, value) for name, value in response.headers if name != "Cache-Control"]
    response.headers.append(("Cache-Control", "no-cache"))
    return response


# First run, sign in, sign out, sign up, sign-in links and QR codes ----------------

def first_run_form(app, request):
    if app.store.account() is not None:
        return redirect(url_for("root"))
    return _auth_page(app, request, "Set up Campfire", render_first_run({}, {}))


async def first_run(app, request):
    if app.store.account() is not None:
        return redirect(url_for("root"))
    values, errors = _user_form(request.params)
    if errors:
        return _auth_page(app, request, "Set up Campfire", render_first_run(values, errors), status=422)
    digest = await app.off_loop(hash_password, values["user[password]"], app.config.scrypt_n, app.config.bcrypt_cost)
    created = app.store.first_run(values["user[name]"], values["user[email_address]"], digest)
    if created is None:  # someone else finished first run meanwhile
        return redirect(url_for("root"))
    user, room = created
    response = redirect(url_for("room", room_id=room.id))
    app.start_session(request, response, user)
    return response


def _user_form(form):
    """First run's and sign-up's fields: (values, errors)."""
    errors = {}
    values = {
        "user[name]": check_field(errors, "user[name]", form.text("user[name]"), blank="Enter your name.",
                                  max_chars=MAX_NAME_CHARS),
        "user[email_address]": check_field(errors, "user[email_address]", form.text("user[email_address]"),
                                           blank="Enter a valid email address.", problem=_email_problem),
        "user[password]": check_field(errors, "user[password]", str(form.get("user[password]", "")),
                                      blank="Choose a password.", max_bytes=MAX_PASSWORD_BYTES),
    }
    return values, errors


def sign_in_form(app, request):
    if app.store.account() is None:
        return redirect(url_for("first_run"))
    return _sign_in_page(app, request, request.params.text("email_address"))


def _sign_in_page(app, request, email, notice=None, status=200):
    return _auth_page(app, request, "Sign in", render_sign_in(app.view(request), email, notice), status=status)


async def sign_in(app, request):
    email = request.params.text("email_address")
    password = str(request.params.get("password", ""))
    if not app.sign_in_limiter.hit(request.remote_addr):
        return _sign_in_page(app, request, email, "Too many requests or unauthorized.", 429)
    user = app.store.user_by_email(email) if email else None
    # Every attempt checks a password, an unknown address's against a digest nothing matches.
    digest = user.password_digest if user is not None and user.password_digest \
        else await app.unknown_password_digest()
    try:
        matches = await app.off_loop(check_password, password, digest)
    except PasswordUnsupported:
        return _sign_in_page(app, request, email,
                             "This password can't be checked on this server. Ask an administrator "
                             "for a sign-in link.", 401)
    if not (matches and user is not None and user.active and not user.bot):
        return _sign_in_page(app, request, email, "Too many requests or unauthorized.", 401)
    response = redirect(url_for("root"))
    app.start_session(request, response, user)
    return response


def sign_out(app, request):
    endpoint = request.params.text("push_subscription_endpoint")  # Campfire's sessions_controller.rb
    if endpoint:
        app.store.unsubscribe_push(request.user.id, endpoint=endpoint)
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        request.set_cookies.clear()  # a session adopted from Rails' cookie just now ends unsent
        app.store.end_session(token, request.user.id, request.session.id)
    response = redirect(url_for("new_session"))
    app.clear_cookie(response, SESSION_COOKIE)
    return response


def _require_join_code(app, join_code):
    if not app.store.join_code_matches(join_code):
        raise NotFound("This invitation link is not valid.")


def _join_page(app, request, join_code, values, errors, status=200):
    view = app.view(request)
    return _auth_page(app, request, "Join %s" % view.account_name, render_join(view, join_code, values, errors),
                      status=status)


def join_form(app, request, join_code):
    _require_join_code(app, join_code)
    return _join_page(app, request, join_code, {}, {})


async def join(app, request, join_code):
    _require_join_code(app, join_code)
    if not app.sign_up_limiter.hit(request.remote_addr):
        raise TooManyRequests("Too many sign-ups from this address. Try again in a few minutes.")
    values, errors = _user_form(request.params)
    if errors:
        return _join_page(app, request, join_code, values, errors, status=422)
    email = values["user[email_address]"]
    if app.store.user_by_email(email) is not None:
        return redirect(url_for("new_session", email_address=email))
    digest = await app.off_loop(hash_password, values["user[password]"], app.config.scrypt_n, app.config.bcrypt_cost)
    if app.store.user_by_email(email) is not None:  # the same address joined while this one hashed
        return redirect(url_for("new_session", email_address=email))
    user = app.store.create_user(values["user[name]"], email, password_digest=digest)
    response = redirect(url_for("root"))
    app.start_session(request, response, user)
    return response


def _transfer_user(app, token):
    user_id = app.signer.unsign(token, "transfer")
    user = app.store.user(user_id) if type(user_id) is int else None
    if user is None or not user.active or user.bot:
        raise BadRequest("This sign-in link is not valid: it may have expired (links last 4 hours). "
                         "Open your profile on a signed-in device for a new one.")
    return user


def show_session_transfer(app, request, token):
    user = _transfer_user(app, token)
    return _auth_page(app, request, "Sign in", render_session_transfer(app.view(request), user, token),
                      headers=[("Cache-Control", "no-store")])


def update_session_transfer(app, request, token):
    user = _transfer_user(app, token)
    response = redirect(url_for("root"))
    app.start_session(request, response, user)
    return response


_BASE64URL_RE = re.compile(r"\A[A-Za-z0-9_-]+={0,2}\Z")


def qr_code(app, request, code):
    """/qr_code/<base64url of a URL>: the URL as a QR code (Campfire's qr_code_controller.rb)."""
    if len(code) > 4 * -(-MAX_QR_CODE_TEXT_BYTES // 3) or not _BASE64URL_RE.match(code):
        raise BadRequest("A QR code is made from a base64url-encoded link of at most %d bytes."
                         % MAX_QR_CODE_TEXT_BYTES)
    try:
        text = b64url_decode(code).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise BadRequest("A QR code is made from a base64url-encoded UTF-8 link.") from None
    if len(text.encode()) > MAX_QR_CODE_TEXT_BYTES:
        raise BadRequest("A QR code is made from a link of at most %d bytes." % MAX_QR_CODE_TEXT_BYTES)
    if _navigating(request):  # opened as a page: one with a title and a way back, the code as its image
        referer = urllib.parse.urlsplit(request.headers.get("referer", ""))
        back = referer.path if referer.netloc == request.headers.get("host") and referer.path.startswith("/") \
            and not referer.path.startswith("//") else url_for("root")
        return _page(app, request, "QR code", render_qr_page(code, text, back), sidebar=False,
                     headers=[("Cache-Control", "no-store"), ("Vary", "Sec-Fetch-Mode")])
    svg = app.qr_codes.get(text)
    if svg is None:
        if not app.qr_code_limiter.hit(request.remote_addr):
            raise TooManyRequests("Too many QR codes from this address. Try again in a minute.",
                                  headers=[("Retry-After", "%d" % QR_CODE_LIMIT[1])])
        svg = qr_svg(text)
        app.qr_codes.put(text, svg)
    return Response(svg, 200, "image/svg+xml", headers=[("Cache-Control", QR_CODE_CACHE_CONTROL),
                                                        ("Vary", "Sec-Fetch-Mode")])


# Rooms ----------------------------------------------------------------------------

def landing(app, request):
    rooms = app.store.rooms_for(request.user.id)
    if not rooms:
        return _page(app, request, "Welcome", render_no_rooms())
    last = request.cookies.get(LAST_ROOM_COOKIE, "")
    room_ids = [room["id"] for room in rooms]
    # Else the oldest room the person is in, as Campfire's Room.original (app/models/room.rb):
    # on a new account that is "All Talk".
    oldest = min(rooms, key=lambda room: (room["created_at"], room["id"]))["id"]
    target = int(last) if last.isdigit() and int(last) in room_ids else oldest
    return redirect(url_for("room", room_id=target), 302)


def _room_page(app, request, room, messages, *, highlight_id=None, unread_since=None, reached_start=False):
    """The room (or a thread, its own page) with these messages; a line above the
    first one created since unread_since, the moment the room became unread."""
    if room.thread:
        return _thread_page(app, request, room, messages, highlight_id=highlight_id)
    user = request.user
    involvement = app.store.user_rooms(user.id).get(room.id, "mentions")
    title = app.store.room_title(room, user.id)
    split = next((index for index, message in enumerate(messages)
                  if unread_since and message["created_at"] >= unread_since), None)
    if split is None:
        messages_html = app.messages_html(messages)
    else:
        messages_html = (app.messages_html(messages[:split]) + render_since_line()
                         + app.messages_html(messages[split:]))
    body = render_room(room, user, title, involvement, messages_html, highlight_id=highlight_id,
                       max_upload_bytes=app.config.max_upload_bytes, reached_start=reached_start)
    return _page(app, request, title, body, body_class="room-page", current_room_id=room.id)


def _thread_page(app, request, room, messages, *, highlight_id=None):
    store, user = app.store, request.user
    parent_room = store.room(room.parent_room_id)
    parent = store.message(room.parent_message_id)
    title = store.room_title(parent_room, user.id)
    body = render_thread(room, parent_room, title, app.messages_html([parent]) if parent else "",
                         app.messages_html(messages), user, highlight_id=highlight_id)
    return _page(app, request, "Thread in %s" % title, body, body_class="room-page thread-page",
                 current_room_id=parent_room.id)


def show_room(app, request, room_id):
    """The room with its newest messages; visiting clears its unread mark and reads the
    mentions in it. A thread's room is the thread's own page."""
    room = _member_room(app, request, room_id)
    user = request.user
    store = app.store
    unread_since = store.unread_since(room.id, user.id) if room.id in store.unread_room_ids(user.id) else None
    store.mark_read(room.id, user.id)
    store.mark_mentions_read(user.id, room.id)
    key = ("room", user.id, room.id, store.room_versions[room.id], store.user_versions[user.id],
           store.global_version, unread_since, store.room_versions[room.parent_room_id] if room.thread else 0)
    response = app.cached(request, key, lambda: _newest_room_page(app, request, room, unread_since))
    if room.thread:
        return response
    if request.cookies.get(LAST_ROOM_COOKIE) != str(room.id):
        app.set_cookie(response, LAST_ROOM_COOKIE, str(room.id), http_only=False)
    return response


def _newest_room_page(app, request, room, unread_since):
    messages = app.store.messages_page(room.id, limit=MESSAGE_PAGE_SIZE)
    return _room_page(app, request, room, messages, unread_since=unread_since,
                      reached_start=len(messages) < MESSAGE_PAGE_SIZE)


def delete_room(app, request, room_id, *, direct_only=False):
    room = _settable_room(app, request, room_id)
    if not room.direct and not can_administer(request.user, room.creator_id):
        raise Forbidden("Only the room's creator or an administrator can delete it.")
    if direct_only and not room.direct:
        raise NotFound("There is no such room.")
    app.store.remove_room(room)
    return redirect(url_for("root"), 303)


def delete_direct_room(app, request, room_id):
    return delete_room(app, request, room_id, direct_only=True)


def _require_room_creation(app, user):
    if not app.store.may_create_rooms(user):
        raise Forbidden("Only administrators can create rooms here.")


def _room_form_page(app, request, *, room=None, room_type=ROOM_OPEN, name="", member_ids=(), errors=None,
                    status=200):
    people = [user for user in app.store.active_users(exclude_bots=False) if user.id != request.user.id]
    can_edit = room is None or can_administer(request.user, room.creator_id)
    body = render_room_form(people, room=room, room_type=room_type, name=name, member_ids=member_ids,
                            errors=errors, can_edit=can_edit)
    return _page(app, request, "Room settings" if room is not None else "New room", body, status=status)


_ROOM_KINDS = {"opens": ROOM_OPEN, "closeds": ROOM_CLOSED}


def _room_form_values(request, room_type):
    """(name, room type, member ids, errors). The form's Open/Closed choice
    (room_kind) decides the type whichever path it was posted to, so the form
    works without JavaScript; without the field, the path's room_type does, as in Campfire."""
    errors = {}
    name = check_field(errors, "room[name]", request.params.text("room[name]"), max_chars=MAX_ROOM_NAME_CHARS)
    kind = request.params.text("room_kind")
    if kind and kind not in _ROOM_KINDS:
        raise Unprocessable("A room is either open or closed.")
    member_ids = {int(value) for value in request.params.getlist("user_ids[]") if str(value).isdigit()}
    return name or "New room", _ROOM_KINDS[kind] if kind else room_type, member_ids, errors


def new_open_room(app, request):
    return _new_room(app, request, ROOM_OPEN)


def new_closed_room(app, request):
    return _new_room(app, request, ROOM_CLOSED)


def _new_room(app, request, room_type):
    _require_room_creation(app, request.user)
    return _room_form_page(app, request, room_type=room_type, name="New room")


def create_open_room(app, request):
    return _create_room(app, request, ROOM_OPEN)


def create_closed_room(app, request):
    return _create_room(app, request, ROOM_CLOSED)


def _create_room(app, request, room_type):
    _require_room_creation(app, request.user)
    name, room_type, member_ids, errors = _room_form_values(request, room_type)
    if errors:
        return _room_form_page(app, request, room_type=room_type, name=name, member_ids=member_ids,
                               errors=errors, status=422)
    room = app.store.open_room(name, room_type, request.user, member_ids)
    return redirect(url_for("room", room_id=room.id))


def room_kind_show(app, request, room_id):
    _settable_room(app, request, room_id)
    return redirect(url_for("room", room_id=room_id), 302)


def update_open_room(app, request, room_id):
    return _update_room(app, request, room_id, ROOM_OPEN)


def update_closed_room(app, request, room_id):
    return _update_room(app, request, room_id, ROOM_CLOSED)


def _update_room(app, request, room_id, room_type):
    """Rename, open or close a room, and set its members (room_type unless the form chooses)."""
    room = _settable_room(app, request, room_id)
    if room.direct:
        raise Forbidden("A direct room can't become another kind of room.")
    if not can_administer(request.user, room.creator_id):
        raise Forbidden("Only the room's creator or an administrator can change it.")
    name, room_type, member_ids, errors = _room_form_values(request, room_type)
    if errors:
        return _room_form_page(app, request, room=room, room_type=room_type, name=name, member_ids=member_ids,
                               errors=errors, status=422)
    room = app.store.update_room(room, name, room_type, member_ids, request.user)
    return redirect(url_for("room", room_id=room.id))


def edit_room(app, request, room_id):
    room = _settable_room(app, request, room_id)
    if room.direct:
        return redirect(url_for("edit_direct_room", room_id=room.id), 302)
    return _room_form_page(app, request, room=room, room_type=room.type, name=room.name or "",
                           member_ids=app.store.room_member_ids(room.id))


def _direct_form_page(app, request, errors=None, status=200):
    people = [user for user in app.store.active_users() if user.id != request.user.id]
    return _page(app, request, "New Ping", render_direct_form(people, errors), status=status)


def new_direct_room(app, request):
    return _direct_form_page(app, request)


def create_direct_room(app, request):
    active = set(app.store.active_user_ids())
    chosen = {int(value) for value in request.params.getlist("user_ids[]") if str(value).isdigit()} & active
    chosen.discard(request.user.id)
    if not chosen:
        return _direct_form_page(app, request, {"user_ids[]": "Pick at least one person."}, status=422)
    room, _ = app.store.start_direct_room(chosen, request.user)
    return redirect(url_for("room", room_id=room.id))


def edit_direct_room(app, request, room_id):
    room = _settable_room(app, request, room_id)
    if not room.direct:
        return redirect(room_settings_path(room), 302)
    members = [user for user in map(app.store.user, app.store.room_member_ids(room.id)) if user]
    body = render_direct_settings(room, app.store.room_title(room, request.user.id), members)
    return _page(app, request, "Room settings", body)


def show_involvement(app, request, room_id):
    room = _settable_room(app, request, room_id)
    return Response(render_bell(room, app.store.user_rooms(request.user.id).get(room.id, "mentions")))


def update_involvement(app, request, room_id):
    room = _settable_room(app, request, room_id)
    involvement = request.params.text("involvement")
    allowed = ("everything", "nothing") if room.direct else INVOLVEMENTS
    if involvement not in allowed:
        raise Unprocessable("Involvement must be one of: %s." % ", ".join(allowed))
    app.store.set_involvement(room.id, request.user.id, involvement)
    if _navigating(request):
        return redirect(url_for("room", room_id=room.id))
    return Response(render_bell(room, involvement))


# Messages and boosts ------------------------------------------------------------

def message_page(app, request, room_id):
    room = _member_room(app, request, room_id)
    before, after = _id_param(request, "before"), _id_param(request, "after")

    def build():
        anchor = before if before is not None else after
        if anchor is not None and app.store.message_room_id(anchor) != room.id:
            raise NotFound("There is no such message in this room.")
        messages = app.store.messages_page(room.id, before=before, after=after)
        if not messages:
            return Response(b"", 204)
        return Response(app.messages_html(messages))
    key = ("messages", room.id, app.store.room_versions[room.id], app.store.global_version, before, after)
    return app.cached(request, key, build)


def create_message(app, request, room_id):
    room = _member_room(app, request, room_id)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return _create_message_from_form(app, request, room)
    client_message_id = request.params.text("message[client_message_id]")[:MAX_CLIENT_MESSAGE_ID_CHARS] \
        or random_hex(CLIENT_MESSAGE_ID_BYTES)
    message, created = app.store.post_message(room, request.user, request.params.get("message[body]", ""),
                                              client_message_id)
    if _navigating(request):
        return redirect(url_for("room", room_id=room.id))
    boosts = () if created else app.store.boosts_for([message["id"]]).get(message["id"], ())
    return Response(app.message_html(message, boosts, () if created else None), 201 if created else 200,
                    headers=[("Location", url_for("room_at_message", room_id=room.id, message_id=message["id"]))])


def _client_message_id(form):
    return form.text("message[client_message_id]")[:MAX_CLIENT_MESSAGE_ID_CHARS] or random_hex(CLIENT_MESSAGE_ID_BYTES)


async def _create_message_from_form(app, request, room):
    """A multipart post (Campfire's composer uploads this way): message[attachment] makes a
    message of the file; without one, message[body] is the text, as from a plain form."""
    form, uploads = await app.receive_form(request)
    kept = ()
    try:
        upload = uploads.get("message[attachment]")
        client_message_id = _client_message_id(form)
        if upload is None:
            message, created = app.store.post_message(room, request.user, form.get("message[body]", ""),
                                                      client_message_id)
        else:
            if not upload.byte_size:
                raise Unprocessable("The file %s is empty." % upload.filename)
            preview = _usable_preview(uploads.get("message[preview]"))
            message, created = app.store.post_attachment(room, request.user, upload, client_message_id, preview)
            kept = (upload, preview) if created else ()
    finally:
        await app.discard_uploads([upload for upload in uploads.values() if upload not in kept])
    if _navigating(request):
        return redirect(url_for("room", room_id=room.id))
    boosts = () if created else app.store.boosts_for([message["id"]]).get(message["id"], ())
    return Response(app.message_html(message, boosts), 201 if created else 200,
                    headers=[("Location", url_for("room_at_message", room_id=room.id, message_id=message["id"]))])


def _usable_preview(preview):
    """The preview a browser sent with an image or a video, if it is an image that fits
    Campfire's thumbnail box; otherwise it is dropped (the original is shown scaled)."""
    if preview is None or not preview.width or preview.content_type not in INLINE_IMAGE_TYPES:
        return None
    if preview.width > PREVIEW_MAX_WIDTH or preview.height > PREVIEW_MAX_HEIGHT:
        return None
    return preview


def _attachment_of(app, request, message_id):
    """A message's file, for a member of its room or the person who sent it; else 404."""
    message = app.store.message(message_id)
    if message is None or (message["creator_id"] != request.user.id
                           and message["room_id"] not in app.store.user_rooms(request.user.id)):
        raise NotFound("There is no such file.")
    blob = app.store.attachment("Message", message_id, "attachment")
    if blob is None:
        raise NotFound("There is no such file.")
    return blob


def message_attachment(app, request, message_id):
    """The file as the browser shows it: images, video, audio and PDF in place, the rest downloads."""
    return app.file_response(request, _attachment_of(app, request, message_id))


def message_attachment_download(app, request, message_id):
    return app.file_response(request, _attachment_of(app, request, message_id), download=True)


def message_attachment_preview(app, request, message_id):
    """The smaller copy of an image (Campfire's 1200×800 thumbnail) or a video's poster frame
    that the sender's browser made, or Rails did; else the image itself."""
    blob = _attachment_of(app, request, message_id)
    preview = app.store.preview_of(message_id, blob)
    if isinstance(preview, Blob):
        return app.file_response(request, preview)
    if preview is None and blob.kind != "image":
        raise NotFound("This file has no preview.")
    return app.file_response(request, blob, key=app.store.variant_key(blob.id) if preview else None)


async def unfurl_link(app, request):
    """Campfire's POST /unfurl_link: {title, url, image, description} of the page at `url`
    (a form field or a JSON body), or 204 when there is no preview to show."""
    url = request.params.get("url", "")
    if not isinstance(url, str) or not url.strip():
        raise Unprocessable("Give the url to preview.")
    preview = await app.link_preview(url.strip())
    if preview is None or not (preview.title and preview.url and preview.description):
        return Response(b"", 204)
    return json_response({"title": preview.title, "url": preview.url, "image": preview.image,
                          "description": preview.description})


def show_message(app, request, room_id, message_id):
    message = _message_in_room(app, request, room_id, message_id)
    return Response(app.message_html(message, app.store.boosts_for([message_id]).get(message_id, ())))


def update_message(app, request, room_id, message_id):
    message = _message_in_room(app, request, room_id, message_id)
    if not can_administer(request.user, message["creator_id"]):
        raise Forbidden("You can only edit your own messages.")
    message = app.store.edit_message(message, request.params.get("message[body]", ""))
    if _navigating(request):
        return redirect(url_for("room_at_message", room_id=room_id, message_id=message_id))
    return Response(app.message_html(message, app.store.boosts_for([message_id]).get(message_id, ())))


def delete_message(app, request, room_id, message_id):
    message = _message_in_room(app, request, room_id, message_id)
    if not can_administer(request.user, message["creator_id"]):
        raise Forbidden("You can only delete your own messages.")
    app.store.remove_message(message)
    if _navigating(request):
        return redirect(url_for("room", room_id=room_id))
    return Response(b"", 204)


def edit_message(app, request, room_id, message_id):
    message = _message_in_room(app, request, room_id, message_id)
    if not can_administer(request.user, message["creator_id"]):
        raise Forbidden("You can only edit your own messages.")
    return _page(app, request, "Edit message", render_message_editor(message))


def permalink(app, request, room_id, message_id):
    message = _message_in_room(app, request, room_id, message_id)
    messages = (app.store.messages_page(room_id, before=message_id) + [message]
                + app.store.messages_page(room_id, after=message_id))
    app.store.mark_mentions_read(request.user.id, room_id)
    return _room_page(app, request, app.store.room(room_id), messages, highlight_id=message_id)


# Threads, unread marks and saved messages ------------------------------------------

def start_thread(app, request, room_id, message_id):
    """"Reply in thread": the thread's room (made the first time), its own page."""
    message = _message_in_room(app, request, room_id, message_id)
    thread = app.store.start_thread(message, request.user)
    return redirect(url_for("room", room_id=thread.id))


def mark_unread(app, request, room_id, message_id):
    """"Mark as unread": the room shows unread, its line above this message, until the next visit."""
    message = _message_in_room(app, request, room_id, message_id)
    app.store.mark_unread(message, request.user.id)
    if _navigating(request):
        return redirect(url_for("user_sidebar"))  # the list of rooms, this one marked
    return Response(b"", 204)


def save_message(app, request, message_id):
    message = _find_message(app, message_id, member=request.user)
    app.store.save_message(request.user.id, message)
    if _navigating(request):
        return redirect(url_for("bookmarks"))
    return Response(b"", 201)


def unsave_message(app, request, message_id):
    message = _find_message(app, message_id, member=request.user)
    app.store.unsave_message(request.user.id, message["id"])
    if _navigating(request):
        return redirect(url_for("bookmarks"))
    return Response(b"", 204)


def _where(app, user, message):
    """(the title of the room a message is in, its permalink); a thread's reply is "Thread in <room>"."""
    store = app.store
    room = store.room(message["room_id"])
    home = store.home_room(room)
    title = store.room_title(home, user.id)
    return ("Thread in %s" % title if room.thread else title,
            url_for("room_at_message", room_id=room.id, message_id=message["id"]))


def mentions_inbox(app, request):
    """Every message that mentions the person (or @everyone, @here, or a thread they are
    in), newest first, a page at a time; unread ones marked until their room is opened."""
    user, store = request.user, app.store
    before = _id_param(request, "before")

    def build():
        messages, unread, more = store.mentions(user.id, before=before)
        items = [(_where(app, user, message), unread[message["id"]], app.messages_html([message]))
                 for message in messages]
        older = url_for("mentions", before=messages[-1]["id"]) if more and messages else None
        return _page(app, request, "Mentions", render_inbox(items, older))
    key = ("mentions", user.id, before, store.user_versions[user.id], store.global_version, store.message_version)
    return app.cached(request, key, build)


def saved_messages(app, request):
    """The messages the person saved, most recently saved first, with a way to remove each."""
    user, store = request.user, app.store
    page = min(_id_param(request, "page") or 0, MAX_SAVED_PAGE)

    def build():
        messages, more = store.saved_messages(user.id, page)
        items = [(_where(app, user, message), message["id"], app.messages_html([message])) for message in messages]
        older = url_for("bookmarks", page=page + 1) if more else None
        return _page(app, request, "Saved", render_saved_messages(items, older))
    key = ("saved", user.id, page, store.user_versions[user.id], store.global_version, store.message_version)
    return app.cached(request, key, build)


_REFRESH_CURSOR_RE = re.compile(r"([0-9][0-9:. TZ+-]*),([0-9]{1,18})")


def refresh_room(app, request, room_id):
    """What changed since a moment (ms since the epoch): created or edited messages, oldest
    first, REFRESH_PAGE_SIZE at a time; the first page also holds a <template
    class="message-removals" data-message-ids="…"> naming deleted ones. When more
    changed, the page ends with <template class="message-refresh-next" data-href="…">,
    the URL of the next page (also in a Link header, rel="next")."""
    room = _member_room(app, request, room_id)
    since = _id_param(request, "since")
    if since is None or since > MAX_TIMESTAMP_MS:
        raise BadRequest("since takes milliseconds since the epoch.")
    cursor = request.params.text("cursor")
    matched = _REFRESH_CURSOR_RE.fullmatch(cursor) if len(cursor) <= MAX_REFRESH_CURSOR_CHARS else None
    if cursor and not matched:
        raise BadRequest("cursor takes the value a previous page's next link gave.")
    after = (matched[1], int(matched[2])) if matched else None
    since_text = utc_now_text(since / 1000)
    messages = app.store.messages_since(room.id, since_text, REFRESH_PAGE_SIZE + 1, after)
    deleted = app.store.deleted_since(room.id, since_text) if after is None else ()
    # Messages whose threads were replied in (or lost a reply) since: their counts changed.
    replied = app.store.threads_changed_since(room.id, since_text) if after is None else []
    if not messages and not deleted and not replied:
        return Response(b"", 204)
    following, headers = HTML(""), []
    if len(messages) > REFRESH_PAGE_SIZE:
        del messages[REFRESH_PAGE_SIZE:]
        last = messages[-1]
        href = url_for("room_refresh", room_id=room.id, since=since, cursor="%s,%d" % (last["updated_at"], last["id"]))
        following = render_refresh_next(href)
        headers.append(("Link", '<%s>; rel="next"' % href))
    listed = {message["id"] for message in messages}
    messages += [message for message in replied if message["id"] not in listed]
    return Response(app.messages_html(messages) + (render_message_removals(deleted) if deleted else "") + following,
                    headers=headers)


def message_location(app, request, message_id):
    """Where a bot post's Location points: the message in its room, for members."""
    message = _find_message(app, message_id, member=request.user)
    return redirect(url_for("room_at_message", room_id=message["room_id"], message_id=message_id), 302)


def new_boost(app, request, message_id):
    message = _find_message(app, message_id, member=request.user)
    return _page(app, request, "Boost", render_boost_form(message))


def create_boost(app, request, message_id):
    message = _find_message(app, message_id, member=request.user)
    boost = app.store.add_boost(message, request.user.id, request.params.text("boost[content]"))
    if _navigating(request):
        return redirect(url_for("room_at_message", room_id=message["room_id"], message_id=message_id))
    return Response(render_boost(boost, request.user.name), 201)


def delete_boost(app, request, message_id, boost_id):
    message = _find_message(app, message_id, member=request.user)
    boost = app.store.boost(boost_id)
    if boost is None or boost["message_id"] != message_id:
        raise NotFound("There is no such boost.")
    if boost["booster_id"] != request.user.id:
        raise Forbidden("You can only remove your own boosts.")
    app.store.remove_boost(message, boost)
    if _navigating(request):
        return redirect(url_for("room_at_message", room_id=message["room_id"], message_id=message_id))
    return Response(b"", 204)


# Search -----------------------------------------------------------------------------

def create_search(app, request):
    """What the search form sends (Campfire's searches_controller.rb#create): the query
    joins the recent searches, then its results are shown."""
    query = request.params.text("q")[:MAX_SEARCH_QUERY_CHARS]
    if query and fts_match_expression(query):
        app.store.record_search(request.user.id, query)  # the latest repeated writes nothing
    filters = {name: request.params.text(name) for name in ("room_id", "creator_id")
               if request.params.text(name).isdigit()}  # the room and person it is narrowed to
    return redirect(url_for("searches", q=query, **filters) if query else url_for("searches"))


def search(app, request):
    """Messages matching every word (the last as a prefix too, so results follow typing),
    each naming its room, the words marked; filtered by room and by person when asked."""
    query = request.params.text("q")[:MAX_SEARCH_QUERY_CHARS]
    user = request.user
    user_id = user.id
    store = app.store
    # The filters' "Any room" and "Anyone" send empty values.
    room_id = _id_param(request, "room_id") if request.params.get("room_id") else None
    creator_id = _id_param(request, "creator_id") if request.params.get("creator_id") else None
    if room_id is not None and store.member_room(room_id, user_id) is None:
        room_id = None  # a room the person isn't in filters nothing (and says nothing about it)

    def build():
        results = store.search(user_id, query, room_id=room_id, creator_id=creator_id) if query else []
        words = search_words(query)
        results_html = HTML("").join(
            render_search_result(_where(app, user, message), app.messages_html([message], highlight=words))
            for message in results)
        shared, direct = store.sidebar_rooms(user_id)
        body = render_search(query, results_html, len(results), store.recent_searches(user_id),
                             rooms=shared + direct, people=store.active_users(exclude_bots=True),
                             room_id=room_id, creator_id=creator_id)
        return _page(app, request, "Search", body)
    key = ("search", user_id, query, room_id, creator_id, store.user_versions[user_id], store.global_version,
           store.message_version)
    return app.cached(request, key, build)


def clear_searches(app, request):
    app.store.clear_searches(request.user.id)
    return redirect(url_for("searches"))


# People and profiles ----------------------------------------------------------------

def push_subscriptions_page(app, request):
    body = render_push_subscriptions(app.store.push_subscriptions(request.user.id))
    return _page(app, request, "Push notification subscriptions", body, headers=[("Cache-Control", "no-store")])


def _push_subscription_fields(request):
    """endpoint, p256dh_key and auth_key: push_subscription[endpoint] in a form, or the
    JSON the app sends ({"push_subscription": {"endpoint": …}}), as Campfire reads them."""
    return [request.params.text("push_subscription[%s]" % name) for name in ("endpoint", "p256dh_key", "auth_key")]


def check_push_subscription(endpoint, p256dh_key, auth_key):
    """The subscription a browser sent, or Unprocessable: an https URL a push can be sent
    to (printable ASCII, so it is safe in a request line), and keys Web Push can use."""
    endpoint, p256dh_key, auth_key = endpoint.strip(), p256dh_key.strip(), auth_key.strip()
    if not endpoint or len(endpoint) > MAX_PUSH_ENDPOINT_CHARS or not re.fullmatch(r"[!-~]+", endpoint):
        raise Unprocessable("The push subscription's endpoint must be an https URL.")
    try:
        push_origin(endpoint)
        if len(p256dh_key) > MAX_PUSH_KEY_CHARS or len(auth_key) > MAX_PUSH_KEY_CHARS:
            raise WebPushError("the keys are too long")
        push_subscription_keys(p256dh_key, auth_key)
    except WebPushError as error:
        raise Unprocessable("The push subscription can't be used: %s." % error) from None
    return endpoint, p256dh_key, auth_key


def create_push_subscription(app, request):
    """Campfire's PushSubscriptionsController#create: 200 with no body."""
    endpoint, p256dh_key, auth_key = check_push_subscription(*_push_subscription_fields(request))
    user_agent = request.headers.get("user-agent", "")[:MAX_PUSH_ENDPOINT_CHARS]
    app.store.subscribe_push(request.user.id, endpoint, p256dh_key, auth_key, user_agent)
    return Response(b"", 200)


def delete_push_subscription(app, request, subscription_id):
    app.store.unsubscribe_push(request.user.id, subscription_id=subscription_id)
    if _navigating(request):
        return redirect(url_for("user_push_subscriptions"))
    return Response(b"", 204)


def create_test_notification(app, request, subscription_id):
    subscription = app.store.push_subscription(request.user.id, subscription_id)
    if subscription is None:
        raise NotFound("That push subscription is not yours, or it is gone.")
    app.pushes.enqueue(app.store.test_push_delivery(subscription))
    return redirect(url_for("user_push_subscriptions"))


def sidebar(app, request):
    """The sidebar fragment for the live app; opened as a page (on a phone), the room list."""
    if _navigating(request):
        return _page(app, request, "Rooms", render_sidebar_page(_sidebar_html(app, request.user)), sidebar=False,
                     body_class="sidebar-page")
    key = ("sidebar", request.user.id, app.store.user_versions[request.user.id], app.store.global_version)
    return app.cached(request, key, lambda: Response(_sidebar_html(app, request.user)))


def _profile_page(app, request, values, errors, status=200, saved=False):
    body = render_profile(app.view(request), values, errors, _transfer_url(app, request, request.user), saved=saved)
    return _page(app, request, "Your profile", body, status=status,
                 headers=[("Cache-Control", "no-store")])  # the page holds a sign-in link


def edit_profile(app, request):
    user = request.user
    return _profile_page(app, request, {"user[name]": user.name, "user[email_address]": user.email_address or "",
                                        "user[bio]": user.bio or ""}, {}, saved=request.params.get("saved") == "1")


async def update_profile(app, request):
    """Campfire's users/profiles_controller.rb: name, email, password (blank keeps it), bio (at most 200 characters)."""
    user, form, errors = request.user, request.params, {}
    name = form.text("user[name]") if "user[name]" in form else user.name
    email = form.text("user[email_address]") if "user[email_address]" in form else user.email_address or ""
    bio = str(form.get("user[bio]", "")).replace("\r\n", "\n").strip() if "user[bio]" in form else user.bio or ""
    password = str(form.get("user[password]", ""))
    values = {"user[name]": check_field(errors, "user[name]", name, blank="Enter your name.", max_chars=MAX_NAME_CHARS),
              "user[email_address]": check_field(errors, "user[email_address]", email,
                                                 blank="Enter a valid email address.", problem=_email_problem),
              "user[bio]": check_field(errors, "user[bio]", bio, max_chars=MAX_BIO_CHARS)}
    check_field(errors, "user[password]", password, max_bytes=MAX_PASSWORD_BYTES)
    if "user[email_address]" not in errors:
        owner = app.store.user_by_email(email)
        if owner is not None and owner.id != user.id:
            errors["user[email_address]"] = "Someone else already uses this email address."
    if password and not errors and not app.password_change_limiter.hit(user.id):
        errors["user[password]"] = "You changed your password several times just now. Try again in a few minutes."
        return _profile_page(app, request, values, errors, status=429)
    if errors:
        return _profile_page(app, request, values, errors, status=422)
    avatar = request.files.get("user[avatar]")
    if avatar is not None and avatar.data:
        try:
            avatar = await app.store_image(avatar)
        except HttpError as error:
            return _profile_page(app, request, values, {"user[avatar]": error.message}, status=422)
    else:
        avatar = None
    digest = await app.off_loop(hash_password, password, app.config.scrypt_n, app.config.bcrypt_cost) if password else None
    try:
        if not app.store.update_profile(user, name, email, bio, digest):
            return _profile_page(app, request, values, {  # the same address taken meanwhile
                "user[email_address]": "Someone else already uses this email address."}, status=422)
        if avatar is not None:
            app.store.set_avatar(user.id, avatar)
            avatar = None
    finally:
        if avatar is not None:
            await app.discard_uploads([avatar])
    return redirect(url_for("user_profile", saved=1))


def _user_page(app, request, user, *, notice=None, status=200):
    viewer = request.user
    transfer_url = _transfer_url(app, request, user) \
        if viewer.administrator and not user.bot and user.status == STATUS_ACTIVE else None
    return _page(app, request, user.name, render_user_page(app.view(request), user, transfer_url=transfer_url,
                                                           notice=notice), status=status,
                 headers=[("Cache-Control", "no-store")] if transfer_url else None)  # it holds a sign-in link


def show_user(app, request, user_id):
    user = app.store.user(user_id)
    if user is None:
        raise NotFound("There is no such person.")
    return _user_page(app, request, user)


def avatar(app, request, user_id):
    """The person's picture, or Campfire's initials on a colour (the bot icon for bots)."""
    user = app.store.user(user_id)
    if user is None:
        raise NotFound("There is no such person.")
    blob = app.store.attachment("User", user_id, "avatar")
    if blob is not None and blob.kind == "image":
        return app.file_response(request, blob, cache_control=AVATAR_CACHE_CONTROL)
    svg = render_avatar_svg(user)
    etag = '"%s"' % hashlib.sha256(svg.encode()).hexdigest()[:16]
    headers = [("ETag", etag), ("Cache-Control", AVATAR_CACHE_CONTROL)]
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(b"", 304, None, headers)
    return Response(svg, 200, "image/svg+xml", headers)


def delete_avatar(app, request, user_id):
    """Remove your own picture (Campfire's users/avatars_controller.rb#destroy)."""
    if user_id != request.user.id:
        raise Forbidden("You can only remove your own avatar.")
    app.store.set_avatar(user_id, None)
    return redirect(url_for("user_profile"))


def _manageable_user(app, user_id):
    user = app.store.manageable_user(user_id)
    if user is None:
        raise NotFound("There is no such person.")
    return user


def create_ban(app, request, user_id):
    user = _manageable_user(app, user_id)
    if user.status == STATUS_BANNED:
        return redirect(url_for("user", user_id=user.id))
    problem = app.store.removal_problem(request.user, user, "ban")
    if problem:
        return _user_page(app, request, user, notice=problem, status=422)
    app.store.ban(user)
    return redirect(url_for("user", user_id=user.id))


def delete_ban(app, request, user_id):
    user = _manageable_user(app, user_id)
    if user.status == STATUS_BANNED:
        app.store.unban(user)
    return redirect(url_for("user", user_id=user.id))


def autocompletable_users(app, request):
    query = request.params.text("query")[:MAX_NAME_CHARS]
    room_id = request.params.get("room_id", "")
    member_ids = None
    if room_id.isdigit():
        member_ids = app.store.room_member_ids(_member_room(app, request, int(room_id)).id)
    users = app.store.users_matching(query, member_ids)
    groups = []
    if member_ids is not None:  # in a room: @everyone and @here, with why not when the person may not
        room = app.store.room(int(room_id))
        for name, description in (("everyone", "Notify everyone in this room"),
                                  ("here", "Notify everyone here now")):
            if name.startswith(query.lower()):
                groups.append({"group": name, "name": name, "description": description, "disabled_reason":
                               app.store.everyone_problem(room, request.user) if name == "everyone" else None})
    return json_response(groups + [{"value": user.id, "name": user.name,
                                    "avatar_url": url_for("user_avatar", user_id=user.id),
                                    "sgid": app.store.mention_sgid(user.id)} for user in users])


# The account ------------------------------------------------------------------------

_TRUE_VALUES = ("1", "true", "on", "yes")  # how Rails casts a checkbox's value


def _account_page(app, request, *, values=None, errors=None, notice=None, status=200, saved=False):
    view = app.view(request)
    account = app.store.account()
    people, more = app.store.people_page(1, include_banned=view.user.administrator)
    invite_url = request.origin + url_for("join", join_code=account["join_code"])
    body = render_account_page(
        view, account, invite_url, render_people(view, people, 1, more), values=values, errors=errors, notice=notice,
        saved=saved,
        restricted=app.store.account_settings().get("restrict_room_creation_to_administrators") is True,
        backups=app.backups.summary() if view.user.administrator else None,
        storage=app.storage_summary() if view.user.administrator else None)
    return _page(app, request, "Account", body, status=status)


def edit_account(app, request):
    return _account_page(app, request, saved=request.params.get("saved") == "1")


def update_account(app, request):
    request.form  # noqa: B018 (reading the parts fills request.files)
    logo = request.files.get("account[logo]")
    if logo is not None and logo.data:
        return _update_account_with_logo(app, request, logo)
    return _update_account(app, request)


async def _update_account_with_logo(app, request, file):
    try:
        logo = await app.store_image(file)
    except HttpError as error:
        return _account_page(app, request, errors={"account[logo]": error.message}, status=422)
    try:
        response = _update_account(app, request)
        if response.status < 400:
            app.store.set_account_logo(logo)
            logo = None
        return response
    finally:
        if logo is not None:
            await app.discard_uploads([logo])


def account_logo(app, request):
    """The logo, or Campfire's own icon: public, cached 5 minutes and then revalidated in the
    background for a week (Campfire's accounts/logos_controller.rb)."""
    logo = app.store.account_logo()
    if logo is not None:
        return app.file_response(request, logo, cache_control=LOGO_CACHE_CONTROL)
    response = app.static.response(request, "icon-192.png")
    response.headers = [(name, value) for name, value in response.headers if name != "Cache-Control"]
    response.headers.append(("Cache-Control", LOGO_CACHE_CONTROL))
    return response


def delete_account_logo(app, request):
    app.store.set_account_logo(None)
    return redirect(url_for("edit_account"))


def _update_account(app, request):
    name = app.store.account()["name"]
    if "account[name]" in request.params:
        errors = {}
        name = check_field(errors, "account[name]", request.params.text("account[name]"), blank="Enter a name.",
                           max_chars=MAX_ACCOUNT_NAME_CHARS)
        if errors:
            return _account_page(app, request, values={"account[name]": name}, errors=errors, status=422)
    settings = app.store.account_settings()
    # The checkbox follows a hidden "0", as in Rails: the last value sent wins.
    restrict = request.params.getlist("account[settings][restrict_room_creation_to_administrators]")
    if restrict:
        settings["restrict_room_creation_to_administrators"] = str(restrict[-1]).strip().lower() in _TRUE_VALUES
    app.store.update_account(name, settings)
    return redirect(url_for("edit_account", saved=1))


def regenerate_join_code(app, request):
    app.store.regenerate_join_code()
    return redirect(url_for("edit_account"))


def custom_styles_redirect(app, request):
    return redirect(url_for("edit_account_custom_styles"), 302)


def update_custom_styles(app, request):
    css = str(request.params.get("account[custom_styles]", "")).replace("\r\n", "\n")
    if len(css.encode()) > MAX_CUSTOM_STYLES_BYTES:
        return _page(app, request, "Custom CSS", render_custom_styles_form(css, error=(
            "Custom CSS can be at most %d KiB; this is %d KiB." % (MAX_CUSTOM_STYLES_BYTES // 1024,
                                                                  -(-len(css.encode()) // 1024)))), status=413)
    app.store.set_custom_styles(css)
    return redirect(url_for("edit_account"))


def edit_custom_styles(app, request):
    return _page(app, request, "Custom CSS", render_custom_styles_form(app.store.custom_styles()[0]))


def custom_styles_stylesheet(app, request):
    """The custom CSS for every page's <link>: public, and immutable under its digest. (Campfire
    writes it raw in a <style> tag; a file of our own origin needs no 'unsafe-inline' in the CSP.)"""
    css, digest = app.store.custom_styles()
    etag = '"%s"' % digest
    headers = [("ETag", etag), ("Cache-Control", "public, max-age=31536000, immutable"
                                if request.params.get("v") == digest else "public, no-cache")]
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(b"", 304, None, headers)
    return Response(css, 200, "text/css; charset=utf-8", headers)


def account_users(app, request):
    page = min(_id_param(request, "page") or 1, 1_000_000)
    view = app.view(request)
    people, more = app.store.people_page(page, include_banned=view.user.administrator)
    return _page(app, request, "People", render_people_page(view, render_people(view, people, page, more)))


def update_account_user(app, request, user_id):
    user = _manageable_user(app, user_id)
    # As Campfire's accounts/users_controller.rb: anything but member or administrator means member.
    role = ROLE_ADMINISTRATOR if request.params.text("user[role]") == "administrator" else ROLE_MEMBER
    if role == user.role:
        return redirect(url_for("edit_account"))
    problem = app.store.removal_problem(request.user, user, "demote") if role == ROLE_MEMBER else None
    if problem:
        return _account_page(app, request, notice=problem, status=422)
    app.store.set_role(user, role)
    return redirect(url_for("edit_account"))


def deactivate_account_user(app, request, user_id):
    user = _manageable_user(app, user_id)
    problem = app.store.removal_problem(request.user, user, "deactivate")
    if problem is None and user.status == STATUS_BANNED:
        problem = "%s is banned. Unban them before deactivating them." % user.name
    if problem:
        return _account_page(app, request, notice=problem, status=422)
    app.store.deactivate(user)
    return redirect(url_for("edit_account"))


# Bots: administrators' pages ------------------------------------------------------------

def _bot_post_url(app, request, bot_row):
    """The bot's absolute post URL for the admin's current room (the last_room
    cookie) when the bot is in it too, else for the bot's first room; None
    when the bot is in no room."""
    bot_rooms = app.store.user_rooms(bot_row["id"])
    if not bot_rooms or not bot_row["bot_token"]:
        return None
    last = request.cookies.get(LAST_ROOM_COOKIE, "")
    if last.isdigit() and int(last) in bot_rooms and int(last) in app.store.user_rooms(request.user.id):
        room_id = int(last)
    else:
        room_id = min(bot_rooms)
    return request.origin + url_for("bot_messages", room_id=room_id, bot_key=bot_key(bot_row))


def _bot_form(form):
    errors = {}
    values = {"user[name]": check_field(errors, "user[name]", form.text("user[name]"), blank="Name the bot.",
                                        max_chars=MAX_NAME_CHARS),
              "user[webhook_url]": check_field(errors, "user[webhook_url]", form.text("user[webhook_url]"),
                                               problem=webhook_url_error)}
    return values, errors


def _require_bot(app, bot_id):
    row = app.store.active_bot(bot_id)
    if row is None:
        raise NotFound("There is no such bot.")
    return row


def bots_index(app, request):
    items = [render_bot_item(bot, _bot_post_url(app, request, bot)) for bot in app.store.active_bots()]
    return _page(app, request, "Chat bots", render_bots(items))


def _bot_avatar_file(request):
    """The picture an administrator chose on the bot form, if any (the form awaits its writing)."""
    request.form  # noqa: B018 (reading the parts fills request.files)
    file = request.files.get("user[avatar]")
    return file if file is not None and file.data else None


async def _bot_avatar(app, request):
    """(Upload or None, errors) of the bot form's picture."""
    try:
        return await app.store_image(_bot_avatar_file(request)), {}
    except HttpError as error:
        return None, {"user[avatar]": error.message}


def create_bot_route(app, request):
    if _bot_avatar_file(request) is not None:
        return _create_bot(app, request)
    values, errors = _bot_form(request.params)
    if errors:
        return _page(app, request, "New bot", render_bot_form(values=values, errors=errors), status=422)
    app.store.create_bot(values["user[name]"], values["user[webhook_url]"])
    return redirect(url_for("account_bots"))


async def _create_bot(app, request):
    values, errors = _bot_form(request.params)
    avatar, avatar_errors = await _bot_avatar(app, request) if not errors else (None, {})
    if errors or avatar_errors:
        return _page(app, request, "New bot", render_bot_form(values=values, errors=errors or avatar_errors),
                     status=422)
    try:
        bot_id = app.store.create_bot(values["user[name]"], values["user[webhook_url]"])
        if avatar is not None:
            app.store.set_avatar(bot_id, avatar)
            avatar = None
    finally:
        if avatar is not None:
            await app.discard_uploads([avatar])
    return redirect(url_for("account_bots"))


def new_bot(app, request):
    return _page(app, request, "New bot", render_bot_form())


def show_bot(app, request, bot_id):
    _require_bot(app, bot_id)
    return redirect(url_for("edit_account_bot", bot_id=bot_id), 302)


def update_bot_route(app, request, bot_id):
    row = _require_bot(app, bot_id)
    if _bot_avatar_file(request) is not None:
        return _update_bot(app, request, bot_id, row)
    values, errors = _bot_form(request.params)
    if errors:
        return _page(app, request, "Edit bot", render_bot_form(bot_row=row, values=values, errors=errors), status=422)
    # Campfire changes the webhook only when the field is sent; blank removes it.
    app.store.update_bot(bot_id, values["user[name]"], values["user[webhook_url]"],
                         change_webhook="user[webhook_url]" in request.params)
    return redirect(url_for("account_bots"))


async def _update_bot(app, request, bot_id, row):
    values, errors = _bot_form(request.params)
    avatar, avatar_errors = await _bot_avatar(app, request) if not errors else (None, {})
    if errors or avatar_errors:
        return _page(app, request, "Edit bot", render_bot_form(bot_row=row, values=values,
                                                               errors=errors or avatar_errors), status=422)
    try:
        # Campfire changes the webhook only when the field is sent; blank removes it.
        app.store.update_bot(bot_id, values["user[name]"], values["user[webhook_url]"],
                             change_webhook="user[webhook_url]" in request.params)
        if avatar is not None:
            app.store.set_avatar(bot_id, avatar)
            avatar = None
    finally:
        if avatar is not None:
            await app.discard_uploads([avatar])
    return redirect(url_for("account_bots"))


def delete_bot(app, request, bot_id):
    _require_bot(app, bot_id)
    app.store.deactivate(app.store.user(bot_id))
    return redirect(url_for("account_bots"))


def edit_bot(app, request, bot_id):
    row = _require_bot(app, bot_id)
    return _page(app, request, "Edit bot", render_bot_form(
        bot_row=row, values={"user[name]": row["name"], "user[webhook_url]": row["webhook_url"] or ""}))


def reset_bot_key_route(app, request, bot_id):
    _require_bot(app, bot_id)
    app.store.reset_bot_key(bot_id)
    return redirect(url_for("account_bots"))


# The bot API (Campfire's messages/by_bots_controller.rb) --------------------------------
# A bot's key "<id>-<token>" in the path is all a bot API request carries: no
# cookie, no forgery check, JSON out. Webhook deliveries, the other half, are
# background work (section 17).

def _bot_head(status, headers=()):
    """Rails' `head status` on the bot API's JSON routes: no body, typed application/json
    without a charset (ActionController::Head)."""
    return Response(b"", status, "application/json", list(headers))


# What Rails' public exceptions app answers for ActiveRecord::RecordNotFound on a JSON route.
RECORD_NOT_FOUND_JSON = {"status": 404, "error": "Not Found"}


def bot_api(handler):
    """Wrap a bot API handler: rate limit per key, authenticate by the key (a bad
    key is sent to sign in, as Campfire does, whether or not the room exists),
    404 for a room the bot isn't in. Refusals are bare statuses, as Campfire's
    by_bots controllers `head` them; a record asked for by id and missing is
    Rails' JSON 404. The handler gets (app, request, room, bot, bot_key, **params)."""
    def answer(app, request, room_id, bot_key, **params):
        if not app.bot_api_limiter.hit(bot_key):
            return _bot_head(429, [("Retry-After", "%d" % BOT_API_LIMIT[1])])
        bot = app.store.authenticate_bot(bot_key)
        if bot is None:
            return redirect(url_for("new_session"), 302)
        try:
            room = app.store.member_room(room_id, bot.id)
            if room is None:
                raise NotFound("There is no such room.")
            response = handler(app, request, room, bot, bot_key, **params)
        except RecordNotFound:
            return json_response(RECORD_NOT_FOUND_JSON, 404)
        except HttpError as error:
            return _bot_head(error.status, error.headers)
        if type(response) is types.CoroutineType:
            return _bot_answer_later(response)
        return response
    answer.__name__, answer.__doc__ = handler.__name__, handler.__doc__
    return answer


async def _bot_answer_later(pending):
    """An upload's answer, its errors as the bot API gives them."""
    try:
        return await pending
    except RecordNotFound:
        return json_response(RECORD_NOT_FOUND_JSON, 404)
    except HttpError as error:
        return _bot_head(error.status, error.headers)


def _raw_text(request):
    """A bot's raw request body, any content type, read as UTF-8 (Campfire's by_bots)."""
    return request.body.decode("utf-8", "replace")


async def _bot_post_form(app, request, room, bot):
    """A bot's multipart post: its `attachment` file is the message (Campfire's by_bots);
    without a file, its `body` field (or nothing: 422)."""
    form, uploads = await app.receive_form(request)
    kept = None
    try:
        upload = uploads.get("attachment")
        if upload is None:
            message, _ = app.store.post_message(room, bot, form.get("body", ""), random_hex(CLIENT_MESSAGE_ID_BYTES))
        else:
            if not upload.byte_size:
                raise Unprocessable("The file %s is empty." % upload.filename)
            message, _ = app.store.post_attachment(room, bot, upload, random_hex(CLIENT_MESSAGE_ID_BYTES))
            kept = upload
    finally:
        await app.discard_uploads([upload for upload in uploads.values() if upload is not kept])
    return Response(b"", 201, None, [("Location", url_for("message", message_id=message["id"]))])


def _bot_room_message(app, room, message_id, missing=RecordNotFound):
    """The room's message with this id; `missing` raised when it has none (Campfire's
    `@room.messages.find` raises RecordNotFound, the boosts controller `head`s a 404)."""
    message = app.store.message_in(message_id, room_id=room.id) if message_id is not None else None
    if message is None:
        raise missing("There is no such message.")
    return message


def _bot_anchor(app, room, request, name):
    """The message a ?before= or ?after= names, in this room; None when absent."""
    value = request.params.get(name)
    if value is None or value == "":  # Rails' params[:before].present?
        return None
    return _bot_room_message(app, room, int(value) if _CONTENT_LENGTH_RE.match(value) else None)["id"]


def _message_json(app, request, message):
    return message_json(message, app.store.message_text(message), app.store.user(message["creator_id"]),
                        request.origin)


@bot_api
def bot_messages(app, request, room, bot, bot_key):
    """40 messages, oldest first: the newest, or next to ?before= / ?after=. Link's
    rel="next" goes on the way the client walks: older from the newest page or a
    ?before= page, newer from an ?after= page (by_bots_controller.rb#next_page_params)."""
    before, after = _bot_anchor(app, room, request, "before"), _bot_anchor(app, room, request, "after")
    messages = app.store.messages_page(room.id, before=before, after=after)
    headers = [("X-Total-Count", str(app.store.message_count(room.id)))]
    if messages:
        newer = after is not None
        edge = messages[-1]["id"] if newer else messages[0]["id"]
        if app.store.has_newer(room.id, edge) if newer else app.store.has_older(room.id, edge):
            next_page = url_for("bot_messages", room_id=room.id, bot_key=bot_key,
                                **{"after" if newer else "before": edge})
            headers.append(("Link", '<%s%s>; rel="next"' % (request.origin, next_page)))
    return json_response([_message_json(app, request, message) for message in messages], 200, headers)


@bot_api
def bot_create_message(app, request, room, bot, bot_key):
    """The raw body is the message (HTML, sanitized like any other) → 201 and its Location."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return _bot_post_form(app, request, room, bot)
    message, _ = app.store.post_message(room, bot, _raw_text(request), random_hex(CLIENT_MESSAGE_ID_BYTES))
    return _bot_head(201, [("Location", request.origin + url_for("message", message_id=message["id"]))])


@bot_api
def bot_show_message(app, request, room, bot, bot_key, message_id):
    return json_response(_message_json(app, request, _bot_room_message(app, room, message_id)))


@bot_api
def bot_update_message(app, request, room, bot, bot_key, message_id):
    message = _bot_room_message(app, room, message_id)
    if message["creator_id"] != bot.id:
        raise Forbidden("A bot can only change its own messages.")
    return json_response(_message_json(app, request, app.store.edit_message(message, _raw_text(request))))


@bot_api
def bot_delete_message(app, request, room, bot, bot_key, message_id):
    message = _bot_room_message(app, room, message_id)
    if message["creator_id"] != bot.id:
        raise Forbidden("A bot can only delete its own messages.")
    app.store.remove_message(message)
    return Response(b"", 204)


@bot_api
def bot_create_boost(app, request, room, bot, bot_key, message_id):
    """The raw body is the boost's content."""
    message = _bot_room_message(app, room, message_id, missing=NotFound)
    boost = app.store.add_boost(message, bot.id, _raw_text(request).strip())
    return json_response(boost_json(boost, bot, message, request.origin), 201)


@bot_api
def bot_delete_boost(app, request, room, bot, bot_key, message_id, boost_id):
    """Own boosts only; another's is not found (boosts_controller.rb finds it by booster)."""
    message = _bot_room_message(app, room, message_id, missing=NotFound)
    boost = app.store.boost(boost_id)
    if boost is None or boost["message_id"] != message["id"] or boost["booster_id"] != bot.id:
        raise NotFound("There is no such boost of yours.")
    app.store.remove_boost(message, boost)
    return Response(b"", 204)


# Real time -----------------------------------------------------------------------

def cable(app, request):
    """/cable: the WebSocket handshake; the connection then belongs to Cable (section 15)."""
    return app.cable.handshake(request)


# The table, checked: a second route for the same method and pattern, or a name
# given to two patterns, stops the import.
ROUTES = build_routes(route_table())
URLS = UrlBuilder(ROUTES)


# url_for("room", room_id=7) is "/rooms/7"; parameters the pattern doesn't name
# become the query string: url_for("searches", q="x") is "/searches?q=x".
url_for = URLS.build


####
#### 15. Real time
####
# /cable: WebSocket connections speaking Action Cable, the channels Campfire
# has, and broadcasts. A broadcast is encoded once per identifier (plain and
# deflated) and the same bytes are written to every subscriber.



class CableConnection:
    """One /cable WebSocket: the RFC 6455 protocol, its subscriptions, its user."""

    __slots__ = ("cable", "http", "ws", "deflate", "user_id", "session_id", "subscriptions", "present_in",
                 "last_seen", "typing_at", "typing_in", "closing_at", "__weakref__")

    def __init__(self, cable, http, deflate, user_id, session_id):
        self.cable, self.http, self.deflate = cable, http, deflate
        self.ws = WebSocketProtocol(deflate=deflate)
        self.user_id, self.session_id = user_id, session_id
        self.subscriptions = {}        # identifier → (channel, params, streams)
        self.present_in = set()        # PresenceChannel identifiers that count this user as present
        self.last_seen = cable.now()
        self.typing_at = 0.0           # when the last start was relayed
        self.typing_in = None          # the room of that start, until its stop is relayed
        self.closing_at = None

    def receive(self, data):
        self.last_seen = self.cable.now()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, TextMessage):
                self.cable.command(self, event.text)
        self.flush()

    def flush(self):
        out = self.ws.data_to_send()
        if out:
            self._write(out)
        if self.ws.state is WebSocketState.CLOSED:
            self.http.close()

    def _write(self, data):
        transport = self.http.transport
        if self.http.closing:
            return
        if transport.get_write_buffer_size() > MAX_CABLE_SEND_BUFFER:
            log.warning("dropping a /cable reader %d bytes behind", transport.get_write_buffer_size())
            self.http.close()
            return
        transport.write(data)

    def send(self, text):
        self.ws.send_text(text)
        self.flush()

    def send_frame(self, frame):
        """A frame encoded once for many subscribers; dropped once we have sent Close."""
        if self.ws.state is WebSocketState.OPEN:
            self.ws.send_frame(frame)
            self.flush()

    def close(self, code=CLOSE_NORMAL, reason=""):
        """Start the closing handshake; a peer that doesn't answer within config.cable_close_timeout is dropped."""
        if self.ws.state is WebSocketState.OPEN:
            self.ws.close(code, reason)
            self.closing_at = self.cable.now()
            self.http.deadline = self.http.server.loop.time() + self.cable.app.config.cable_close_timeout
            self.flush()

    def drop(self):
        """Close now, without waiting for the peer (a revoked session): nothing more reaches it."""
        self.close(CLOSE_NORMAL)
        self.http.close()


class Cable:
    """Connections, streams and channels; an Events listener for broadcasts."""

    def __init__(self, app):
        self.app = app
        self.connections = set()
        self.streams = collections.defaultdict(set)         # stream → {CableConnection}
        self.by_user = collections.defaultdict(set)         # user id → {CableConnection}
        self.present = collections.defaultdict(collections.Counter)  # room id → user id → connections
        self.refusals = RateLimiter(*CABLE_REFUSALS)
        self._beat_queue, self._beat_slice = [], 1   # connections still to ping in this interval
        self._beats = 0                              # beats so far; every CABLE_BEAT_SLICES-th starts an interval
        self.clock = time.monotonic
        self.channels = {
            "RoomMessagesChannel": self._subscribe_room_messages,
            "PresenceChannel": self._subscribe_presence,
            "TypingNotificationsChannel": self._subscribe_typing,
            "UnreadRoomsChannel": lambda connection, params: ["user_%d_unreads" % connection.user_id],
            "ReadRoomsChannel": lambda connection, params: ["user_%d_reads" % connection.user_id],
            "HeartbeatChannel": lambda connection, params: [],
            "SidebarChannel": lambda connection, params: ["user_%d_sidebar" % connection.user_id],
            "MentionsChannel": lambda connection, params: ["user_%d_mentions" % connection.user_id],
        }
        app.events.subscribe(self)

    def now(self):
        return self.clock()

    # Handshake ------------------------------------------------------------------
    def handshake(self, request):
        """The 101 response that turns this request into a CableConnection."""
        address = request.remote_addr
        try:
            result = check_handshake(request.method, request.headers)
        except HandshakeRefused as refused:
            self._refused(address)
            raise HttpError(refused.reason, refused.status, refused.headers) from None
        origin = request.headers.get("origin")
        if origin is not None and origin != request.origin:
            self._refused(address)
            raise Forbidden("WebSocket connections from other origins are refused.")
        if request.user is None:
            self._refused(address)
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", result["accept"])]
        if result["subprotocol"]:
            headers.append(("Sec-WebSocket-Protocol", result["subprotocol"]))
        if result["deflate"]:
            headers.append(("Sec-WebSocket-Extensions", result["deflate"]))
        response = Response(b"", 101, None, headers)
        user, session = request.user, request.session
        deflate = result["deflate"] is not None

        def upgrade(http):
            connection = CableConnection(self, http, deflate, user.id if user else None,
                                         session.id if session else None)
            if user is None:  # Action Cable's answer to a connection it won't identify
                connection.send(CABLE_UNAUTHORIZED)
                connection.close(CLOSE_NORMAL)
                return connection
            self.connections.add(connection)
            self.by_user[user.id].add(connection)
            connection.send(CABLE_WELCOME)
            return connection
        response.upgrade = upgrade
        return response

    def _refused(self, address):
        if not self.refusals.hit(address):
            raise TooManyRequests("Too many refused connections from this address.")

    def connection_lost(self, connection):
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        self.by_user[connection.user_id].discard(connection)
        if not self.by_user[connection.user_id]:
            del self.by_user[connection.user_id]
        for identifier in list(connection.subscriptions):
            self._unsubscribe(connection, identifier)

    # Commands --------------------------------------------------------------------
    def command(self, connection, text):
        if connection.user_id is None:
            return
        try:
            command = parse_cable_command(text)
        except CableCommandError as error:
            log.debug("ignored a /cable command: %s", error)
            return
        if command.command == "subscribe":
            self._subscribe(connection, command)
        elif command.command == "unsubscribe":
            self._unsubscribe(connection, command.identifier)
        elif command.identifier in connection.subscriptions:
            self._perform(connection, command)

    def _subscribe(self, connection, command):
        if command.identifier in connection.subscriptions:
            return
        channel = self.channels.get(command.channel)
        streams = None
        if channel is not None and len(connection.subscriptions) < MAX_CABLE_SUBSCRIPTIONS:
            streams = channel(connection, command.params)
        if streams is None:
            connection.send(cable_reply(command.identifier, "reject_subscription"))
            return
        connection.subscriptions[command.identifier] = (command.channel, command.params, streams)
        for stream in streams:
            self.streams[stream].add(connection)
        connection.send(cable_reply(command.identifier, "confirm_subscription"))
        if command.channel == "PresenceChannel":
            room_id = command.params["room_id"]
            newly_present = self._present(connection, command.identifier, room_id, count=True)
            if not newly_present:  # nobody new: still tell this tab who is here
                connection.send(cable_frame(command.identifier, self._presence_message(room_id)))

    def _unsubscribe(self, connection, identifier):
        subscription = connection.subscriptions.pop(identifier, None)
        if subscription is None:
            return
        channel, params, streams = subscription
        for stream in streams:
            subscribers = self.streams.get(stream)
            if subscribers is not None:
                subscribers.discard(connection)
                if not subscribers:
                    del self.streams[stream]
        if channel == "PresenceChannel":
            self._absent(connection, identifier, params["room_id"], count=True)

    def _perform(self, connection, command):
        channel, params, _ = connection.subscriptions[command.identifier]
        action = command.data.get("action")
        if channel == "PresenceChannel":
            room_id = params["room_id"]
            if action == "present":
                self._present(connection, command.identifier, room_id, count=False)
            elif action == "absent":
                self._absent(connection, command.identifier, room_id, count=False)
            elif action == "refresh":
                self.app.store.presence_refreshed(room_id, connection.user_id)
        elif channel == "TypingNotificationsChannel" and action in ("start", "stop"):
            # Starts are relayed at most once per TYPING_THROTTLE, and a stop only after a
            # relayed start: whatever a client sends, at most two frames per interval.
            room_id = params["room_id"]
            if action == "start":
                now = self.now()
                if now - connection.typing_at < TYPING_THROTTLE:
                    return
                connection.typing_at, connection.typing_in = now, room_id
            elif connection.typing_in != room_id:
                return
            else:
                connection.typing_in = None
            user = self.app.store.user(connection.user_id)
            self.broadcast("room_%d_typing" % params["room_id"],
                           {"action": action, "user": {"id": user.id, "name": user.name}},
                           exclude=connection)

    # Channels ----------------------------------------------------------------------
    def _member_room(self, connection, params):
        """The room an identifier names, if the connection's user is a member. Campfire's
        client sends room_id as a JSON number (Current.room.id); true, 1.0 or "01" name nothing."""
        room_id = params.get("room_id")
        if type(room_id) is not int or room_id not in self.app.store.user_rooms(connection.user_id):
            return None
        return room_id

    def _subscribe_room_messages(self, connection, params):
        room_id = self._member_room(connection, params)
        return None if room_id is None else ["room_%d_messages" % room_id]

    def _subscribe_presence(self, connection, params):
        room_id = self._member_room(connection, params)
        return None if room_id is None else ["room_%d_presence" % room_id]

    def _subscribe_typing(self, connection, params):
        room_id = self._member_room(connection, params)
        return None if room_id is None else ["room_%d_typing" % room_id]

    # Presence (Campfire's app/channels/presence_channel.rb): connections counted on the
    # membership, connected_at stamped, the unread mark cleared. A subscription
    # counts the person present once at most, whatever its client sends, so when
    # it ends (the socket too) it no longer counts.
    def _present(self, connection, identifier, room_id, count):
        """count: a new subscription (else a tab back in view). True when the person is newly present."""
        user_id = connection.user_id
        self.app.store.presence_arrived(room_id, user_id, new_connection=count)
        if identifier in connection.present_in:
            return False
        connection.present_in.add(identifier)
        counter = self.present[room_id]
        counter[user_id] += 1
        if counter[user_id] == 1:
            self._broadcast_presence(room_id)
            return True
        return False

    def _absent(self, connection, identifier, room_id, count):
        """count: the subscription ended (else the tab went out of view)."""
        user_id = connection.user_id
        counted = identifier in connection.present_in
        if not count and not counted:
            return
        self.app.store.presence_left(room_id, user_id, connection_closed=count)
        if not counted:
            return
        connection.present_in.discard(identifier)
        counter = self.present[room_id]
        counter[user_id] -= 1
        if counter[user_id] <= 0:
            del counter[user_id]
            if not counter:
                del self.present[room_id]
            self._broadcast_presence(room_id)

    def _presence_message(self, room_id):
        users = [self.app.store.user(user_id) for user_id in self.present.get(room_id, ())]
        return {"action": "present",
                "users": [{"id": user.id, "name": user.name} for user in sorted(filter(None, users), key=lambda u: u.name)]}

    def _broadcast_presence(self, room_id):
        self.broadcast("room_%d_presence" % room_id, self._presence_message(room_id))

    # Broadcasting ------------------------------------------------------------------------
    def broadcast(self, stream, message, exclude=None):
        self.broadcast_many((stream,), message, exclude)

    def broadcast_many(self, streams, message, exclude=None):
        """Send `message` to every subscriber of these streams, each frame encoded once."""
        frames = {}
        for stream in streams:
            for connection in tuple(self.streams.get(stream, ())):
                if connection is exclude:
                    continue
                for identifier, (_, _, subscribed) in connection.subscriptions.items():
                    if stream in subscribed:
                        break
                else:
                    continue
                key = (identifier, connection.deflate)
                frame = frames.get(key)
                if frame is None:
                    frame = frames[key] = encode_message(cable_frame(identifier, message), deflate=connection.deflate)
                connection.send_frame(frame)

    def drop_room(self, room_id, user_ids=None):
        """Unsubscribe users (everyone when None) from a room's streams."""
        names = ("room_%d_messages" % room_id, "room_%d_presence" % room_id, "room_%d_typing" % room_id)
        for stream in names:
            for connection in list(self.streams.get(stream, ())):
                if user_ids is None or connection.user_id in user_ids:
                    for identifier, (_, _, subscribed) in list(connection.subscriptions.items()):
                        if stream in subscribed:
                            self._unsubscribe(connection, identifier)

    def disconnect(self, *, user_id=None, session_id=None, reason="unauthorized", reconnect=False):
        """Close a user's (or one session's) sockets. A revoked session (sign-out,
        deactivation, a ban) is cut off at once: out of every stream, TCP closed after
        our Close. A restart (reconnect=True) closes politely with 1001."""
        for connection in list(self.by_user.get(user_id, ())) if user_id is not None else list(self.connections):
            if session_id is None or connection.session_id == session_id:
                connection.send(json.dumps({"type": "disconnect", "reason": reason, "reconnect": reconnect}))
                if reconnect:
                    connection.close(CLOSE_GOING_AWAY)
                else:
                    self.connection_lost(connection)
                    connection.drop()

    def beat(self):
        """Every CABLE_PING_INTERVAL / CABLE_BEAT_SLICES: Action Cable's ping to the next slice of
        connections; drop dead and stuck peers. Each interval starts by queueing every connection
        and has CABLE_BEAT_SLICES beats, so each connection gets one ping per interval however few
        there are, and a broadcast never waits behind them all when there are many."""
        if self._beats % CABLE_BEAT_SLICES == 0:
            self._beat_queue = list(self.connections)
            self._beat_slice = max(1, -(-len(self._beat_queue) // CABLE_BEAT_SLICES))
        self._beats += 1
        batch = self._beat_queue[-self._beat_slice:]
        del self._beat_queue[-self._beat_slice:]
        now = self.now()
        close_timeout = self.app.config.cable_close_timeout
        ping = {True: None, False: None}
        text = json.dumps({"type": "ping", "message": int(time.time())})
        for connection in batch:
            if connection not in self.connections:
                continue
            if connection.closing_at is not None:
                if now - connection.closing_at > close_timeout:
                    connection.http.close()
                continue
            if now - connection.last_seen > CABLE_DEAD_AFTER:
                connection.http.close()
                continue
            frame = ping[connection.deflate]
            if frame is None:
                frame = ping[connection.deflate] = encode_message(text, deflate=connection.deflate)
            connection.send_frame(frame)
            if now - connection.last_seen > CABLE_LIVENESS_PING:
                connection.ws.send_ping()
                connection.flush()

    # Events (after each change commits) ----------------------------------------------------
    def message_created(self, room, message, unread_user_ids):
        html_text = str(self.app.message_html(message, (), ()))
        self.broadcast("room_%d_messages" % room.id, {
            "action": "append", "id": message["id"], "client_message_id": message["client_message_id"],
            "html": html_text})
        creator_id, connected = message["creator_id"], self.by_user
        if connected:
            self.broadcast_many(["user_%d_unreads" % user_id for user_id in self.app.store.room_member_ids(room.id)
                                 if user_id in connected and user_id != creator_id], {"roomId": room.id})
        if room.direct:
            self.broadcast_many(["user_%d_sidebar" % user_id for user_id in unread_user_ids], {"action": "refresh"})
        if room.thread:  # the message it answers shows one more reply
            self._replace({"id": room.parent_message_id})

    def mentioned(self, user_ids, message):
        self.broadcast_many(["user_%d_mentions" % user_id for user_id in user_ids],
                            {"action": "mentioned", "id": message["id"]})
        self.sidebar_changed(user_ids)

    def _replace(self, message):
        message = self.app.store.message(message["id"])
        if message is not None:
            boosts = self.app.store.boosts_for([message["id"]]).get(message["id"], ())
            self.broadcast("room_%d_messages" % message["room_id"], {
                "action": "replace", "id": message["id"], "html": str(self.app.message_html(message, boosts))})

    def message_updated(self, message):
        self._replace(message)

    def boost_changed(self, message, boost, change):
        self._replace(message)

    def message_removed(self, message):
        self.broadcast("room_%d_messages" % message["room_id"], {"action": "remove", "id": message["id"]})
        room = self.app.store.room(message["room_id"])
        if room is not None and room.thread:
            self._replace({"id": room.parent_message_id})

    def room_changed(self, room, change, revoked=()):
        members = set(self.app.store.room_member_ids(room.id)) | set(revoked)
        if revoked:
            self.drop_room(room.id, set(revoked))
            for thread_room_id in self.app.store.thread_room_ids(room.id):  # its threads go with it
                self.drop_room(thread_room_id, set(revoked))
        self.sidebar_changed(members)

    def room_deleted(self, room, member_ids):
        self.drop_room(room.id)
        self.sidebar_changed(member_ids)

    def sidebar_changed(self, user_ids):
        self.broadcast_many(["user_%d_sidebar" % user_id for user_id in user_ids], {"action": "refresh"})

    def room_read(self, room_id, user_id):
        self.broadcast("user_%d_reads" % user_id, {"room_id": room_id})

    def sessions_revoked(self, user_id, session_id=None):
        self.disconnect(user_id=user_id, session_id=session_id)


####
#### 16. The application
####
# App turns a Request into a Response without touching a socket, so tests
# drive it in-process and the server is a thin adapter around it.

# A module's static imports, as static/*.js write them: `import { a } from "./b.js"`
# or `import "./b.js"` at the start of a line (dynamic import() is not preloaded).
STATIC_IMPORT = re.compile(r'^import\s+(?:[^"\';]*?\sfrom\s*)?"\./([A-Za-z0-9_-]+\.js)"', re.M)
STATIC_MODULE_NAME = re.compile(r"[A-Za-z0-9_-]+\.js")  # names safe in an import map and a CSP hash's text
STATIC_CLASSIC_SCRIPTS = frozenset({"service-worker.js"})  # run as a worker, never imported by a page


class StaticFiles:
    """Files under static/, held in memory with their gzip form and ETag.

    Only regular files inside the root are served: '..', encoded slashes or
    backslashes, NUL bytes and symlinks that lead outside all answer 404.
    """

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self._cache = {}   # real path → (mtime_ns, size, entry)
        self._recent = {}  # relative path → (checked at, entry): skips the disk for a moment

    def _entry(self, relative):
        now = time.monotonic()
        recent = self._recent.get(relative)
        if recent is not None and now - recent[0] < STATIC_RECHECK_SECONDS:
            return recent[1]
        entry = self._load(relative)
        if len(self._recent) > STATIC_PATHS_KEPT:
            self._recent.clear()
        self._recent[relative] = (now, entry)
        return entry

    def _load(self, relative):
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

    def modules(self):
        """The ES modules at the top of static/ (the service worker is a classic script,
        not one of them): name → (its content digest, the names it imports statically,
        in order). Read from the entries above, so a file is parsed again only when it
        changes on disk."""
        try:
            names = sorted(entry.name for entry in os.scandir(self.root)
                           if STATIC_MODULE_NAME.fullmatch(entry.name) and entry.name not in STATIC_CLASSIC_SCRIPTS)
        except OSError:
            return {}
        modules = {}
        for name in names:
            entry = self._entry(name)
            if entry is not None:
                imports = STATIC_IMPORT.findall(entry[0].decode("utf-8", "replace"))
                modules[name] = (entry[3], tuple(dict.fromkeys(imports)))
        return modules

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
        if etag_matches(request.headers.get("if-none-match"), etag):
            response = Response(b"", 304, None, headers)
            return response
        if compressed is not None and accepts_gzip(request):
            headers.append(("Content-Encoding", "gzip"))
            data = compressed
        response = Response(data, 200, content_type, headers)
        response.compressible = False
        return response


class LruCache:
    """A dict bounded by the bytes its values hold (`size` of each, plus
    CACHE_ENTRY_OVERHEAD_BYTES) that forgets the least recently used. A value
    larger than the whole bound is not kept."""

    def __init__(self, max_bytes, size=sys.getsizeof):
        self.max_bytes = max_bytes
        self.size = size
        self.bytes = 0                          # what the entries held now count
        self._data = collections.OrderedDict()  # key → (value, its count)

    def get(self, key):
        entry = self._data.get(key)
        if entry is None:
            return None
        self._data.move_to_end(key)
        return entry[0]

    def put(self, key, value):
        cost = self.size(value) + CACHE_ENTRY_OVERHEAD_BYTES
        replaced = self._data.pop(key, None)
        if replaced is not None:
            self.bytes -= replaced[1]
        if cost > self.max_bytes:
            return
        self._data[key] = (value, cost)
        self.bytes += cost
        while self.bytes > self.max_bytes:
            self.bytes -= self._data.popitem(last=False)[1][1]

    def clear(self):
        self._data.clear()
        self.bytes = 0

    def __len__(self):
        return len(self._data)


class RequestLog:
    """One line per request (method, path, status, milliseconds, request id),
    written in batches: the logging module's per-record cost and flush would
    halve a busy server's throughput. Never a query string, cookie or body."""

    def __init__(self, stream=None):
        self.stream = stream
        self.enabled = log.isEnabledFor(logging.INFO)
        self.schedule = None      # the server's way to flush soon; without one, lines go out at once
        self._lines = []
        self._stamp = (0, "")

    def add(self, method, path, status, milliseconds, request_id):
        now = int(time.time())
        if self._stamp[0] != now:
            self._stamp = (now, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)))
        self._lines.append("%s INFO %s %s %d %.1fms %s\n" % (self._stamp[1], method, path, status,
                                                              milliseconds, request_id))
        if self.schedule is None:
            self.flush()
        elif len(self._lines) == 1:
            self.schedule(self.flush)

    def flush(self):
        if self._lines:
            stream = self.stream or sys.stderr
            stream.write("".join(self._lines))
            stream.flush()
            self._lines.clear()


class RouteStats:
    """One route's counts for /metrics: answers by status, and a latency histogram."""

    __slots__ = ("statuses", "buckets", "seconds")

    def __init__(self):
        self.statuses = {}                                      # status → answers
        self.buckets = [0] * (len(METRICS_LATENCY_BUCKETS) + 1)  # the last one is past every bound
        self.seconds = 0.0


class Metrics:
    """What /metrics counts in the request path: a few integer additions per request
    on the event loop's thread (no lock, nothing allocated once a route and status
    have been seen), and the messages posted, counted as they commit (an Events
    listener). Bounded: one RouteStats per route of the table, plus one for the
    requests no route matched."""

    UNMATCHED = "unmatched"

    def __init__(self):
        self.routes = {}        # (pattern or UNMATCHED) → {method: RouteStats}
        self.messages_posted = 0

    def observe(self, route, status, seconds):
        pattern, method = (route.pattern, route.method) if route is not None else (self.UNMATCHED, "")
        by_method = self.routes.get(pattern)
        if by_method is None:
            by_method = self.routes[pattern] = {}
        stats = by_method.get(method)
        if stats is None:
            stats = by_method[method] = RouteStats()
        statuses = stats.statuses
        statuses[status] = statuses.get(status, 0) + 1
        stats.buckets[bisect.bisect_left(METRICS_LATENCY_BUCKETS, seconds)] += 1
        stats.seconds += seconds

    def message_created(self, room, message, unread_user_ids):
        self.messages_posted += 1


class DiskSpace:
    """The storage's free space, from statvfs at most every DISK_CHECK_SECONDS. Under
    the server a timer refreshes it off the event loop (Server._watch_disk) and
    readers take the kept answer; without one (tests, commands) it is read when stale."""

    def __init__(self, path, clock=time.monotonic):
        self.path = path
        self.clock = clock
        self.free_bytes = None       # None until read, or when statvfs fails
        self.checked_at = None
        self.refreshed_elsewhere = False

    def refresh(self):
        """Blocking (a network file system may take its time): read the free space now."""
        try:
            disk = os.statvfs(self.path)
            self.free_bytes = disk.f_bavail * disk.f_frsize
        except OSError:
            self.free_bytes = None
        self.checked_at = self.clock()
        return self.free_bytes

    def free(self):
        if not self.refreshed_elsewhere and (
                self.checked_at is None or self.clock() - self.checked_at >= DISK_CHECK_SECONDS):
            self.refresh()
        return self.free_bytes

    def low(self, threshold):
        free = self.free()
        return free is not None and free < threshold


@dataclass(slots=True)
class CachedPage:
    """A rendered response kept for the next identical request, plain and gzipped."""

    body: bytes
    gzipped: bytes
    content_type: str
    etag: str
    headers: tuple

    def size(self):
        """The bytes a page cache counts for this page: its body, plain and gzipped."""
        return len(self.body) + len(self.gzipped or b"")


@dataclass
class Config:
    """Where the data lives and how to serve it: defaults, then the environment, then flags."""

    storage_path: str = os.path.join(HERE, "storage")
    database_path: str = None
    secret_key_base: str = None
    host: str = DEFAULT_BIND
    port: int = DEFAULT_PORT
    tls_cert_path: str = None
    tls_key_path: str = None
    log_level: str = "INFO"
    static_root: str = STATIC_ROOT
    cache: bool = True            # rendered pages and messages; off only to measure without
    page_cache_bytes: int = PAGE_CACHE_BYTES
    message_cache_bytes: int = MESSAGE_CACHE_BYTES
    # Tunables, each defaulting to its constant in section 1 (the unit and the reason
    # are there); tests make the slow ones fast.
    scrypt_n: int = SCRYPT_N
    bcrypt_cost: int = BCRYPT_COST
    password_queue_limit: int = PASSWORD_QUEUE_LIMIT
    header_timeout: float = HEADER_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    sweep_interval: float = SWEEP_INTERVAL
    idle_release_after: float = IDLE_RELEASE_AFTER
    cable_close_timeout: float = CABLE_CLOSE_TIMEOUT
    webhook_timeout: float = WEBHOOK_TIMEOUT
    webhook_queue_size: int = WEBHOOK_QUEUE_SIZE
    message_purge_chunk: int = MESSAGE_PURGE_CHUNK
    search_probe_limit: int = SEARCH_PROBE_LIMIT
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    link_previews: bool = True    # CAMPFIRE_LINK_PREVIEWS=off for an install with no way out
    unfurl_allowed: object = None  # decides a preview's addresses (unfurl_address_allowed); tests name loopback
    vapid_public_key: str = None  # VAPID_PUBLIC_KEY / VAPID_PRIVATE_KEY, as Campfire's config/initializers/vapid.rb;
    vapid_private_key: str = None  # unset, a pair is generated once and kept in the storage directory
    push_timeout: float = PUSH_TIMEOUT
    push_total_timeout: float = PUSH_TOTAL_TIMEOUT
    push_queue_size: int = PUSH_QUEUE_SIZE
    push_retry_delay: float = PUSH_RETRY_DELAY
    backup_interval: float = None     # seconds between automatic backups; 0 off; None: BACKUP_DEFAULT_INTERVAL
    backup_keep: dict = None          # retention; None: BACKUP_KEEP
    backup_target: object = None      # where finished backups are copied: parse_backup_url(BACKUP_URL)
    backup_step_pages: int = BACKUP_STEP_PAGES
    trusted_proxies: tuple = ()       # ip_network: peers whose X-Forwarded-* headers count (TRUSTED_PROXIES)
    metrics_allow: tuple = ()         # ip_network: besides loopback, who may read /metrics (METRICS_ALLOW)
    redirect_port: int = None         # HTTP_REDIRECT_PORT: plain HTTP here is sent to the HTTPS port
    min_free_disk_bytes: int = MIN_FREE_DISK_BYTES

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
        previews = (environ.get("CAMPFIRE_LINK_PREVIEWS") or "on").strip().lower()
        if previews not in ("on", "off", "true", "false", "1", "0"):
            raise ConfigError("CAMPFIRE_LINK_PREVIEWS must be on or off, not %r." % previews)
        config.link_previews = previews in ("on", "true", "1")
        upload_limit = environ.get("CAMPFIRE_MAX_UPLOAD_BYTES")
        if upload_limit:
            if not upload_limit.isdigit() or int(upload_limit) < 1:
                raise ConfigError("CAMPFIRE_MAX_UPLOAD_BYTES must be a number of bytes, not %r." % upload_limit)
            config.max_upload_bytes = int(upload_limit)
        config.tls_cert_path = environ.get("TLS_CERT_PATH") or None
        config.tls_key_path = environ.get("TLS_KEY_PATH") or None
        config.vapid_public_key = environ.get("VAPID_PUBLIC_KEY") or None
        config.vapid_private_key = environ.get("VAPID_PRIVATE_KEY") or None
        config.log_level = (environ.get("LOG_LEVEL") or "INFO").upper()
        if config.log_level not in LOG_LEVELS:
            raise ConfigError("LOG_LEVEL must be one of %s, not %r." % (", ".join(LOG_LEVELS), environ["LOG_LEVEL"]))
        config.backup_interval = parse_interval(environ.get("BACKUP_INTERVAL") or BACKUP_DEFAULT_INTERVAL)
        config.backup_keep = parse_backup_keep(environ["BACKUP_KEEP"]) if environ.get("BACKUP_KEEP") else None
        config.backup_target = parse_backup_url(environ["BACKUP_URL"], environ) if environ.get("BACKUP_URL") else None
        config.trusted_proxies = parse_trusted_proxies(environ.get("TRUSTED_PROXIES"))
        config.metrics_allow = parse_trusted_proxies(environ.get("METRICS_ALLOW"), "METRICS_ALLOW")
        redirect_port = environ.get("HTTP_REDIRECT_PORT")
        if redirect_port:
            if not redirect_port.isdigit() or not 0 <= int(redirect_port) < 65536:
                raise ConfigError("HTTP_REDIRECT_PORT must be a number between 0 and 65535, not %r." % redirect_port)
            config.redirect_port = int(redirect_port)
        free = environ.get("MIN_FREE_DISK_BYTES")
        if free:
            if not free.isdigit():
                raise ConfigError("MIN_FREE_DISK_BYTES must be a number of bytes (0 turns the check off), "
                                  "not %r." % free)
            config.min_free_disk_bytes = int(free)
        return config

    @property
    def resolved_database_path(self):
        return self.database_path or os.path.join(self.storage_path, "db", "production.sqlite3")


class App:
    """The server without its sockets: a Request in (handle), a Response out.

    It owns the database and the domain (Store), the Router made from the route
    table, the caches of rendered pages and messages, and the listeners that act
    on the domain's Events after each commit: Cable (broadcasts), Webhooks and
    Purges (background work), and itself (account_changed)."""

    def __init__(self, config=None):
        self.config = config or Config()
        self._prepare_storage()
        self.db = Database(self.config.resolved_database_path)
        secret = self.config.secret_key_base or self._stored_secret()
        self.secret_key_base = secret
        self.store = Store(self.db, self.config, secret)
        self.files = FileStore(os.path.join(self.config.storage_path, "files"))
        try:
            self.db.migrate()
            self.store.resign_mentions()
            self.db.repair_search_tail()
            self.store.reset_connections()
            moved, deleted = self.files.sweep(self.store.blob_exists)
            if moved or deleted:
                log.warning("uploads a stop cut short: %d committed moved into place, %d unfinished deleted",
                            moved, deleted)
        except ConfigError:
            self.db.connection.close()
            raise
        except sqlite3.Error as error:
            self.db.connection.close()
            raise ConfigError("%s can't be used (%s)." % (self.config.resolved_database_path, error)) from error
        self.db.on_rollback = self.forget_cached
        self.signer = Signer(secret)
        self.routes = ROUTES
        self.router = Router(self.routes)
        self.static = StaticFiles(self.config.static_root)
        self.sign_in_limiter = RateLimiter(*SIGN_IN_LIMIT)
        self.sign_up_limiter = RateLimiter(*SIGN_UP_LIMIT)
        self.password_change_limiter = RateLimiter(*PASSWORD_CHANGE_LIMIT)
        self.qr_code_limiter = RateLimiter(*QR_CODE_LIMIT)
        self.qr_codes = LruCache(QR_CODES_KEPT_BYTES)
        self._workers = None        # the thread pool for password hashes, made on first use
        self._file_workers = None   # the thread pool for file I/O, made on first use
        self._file_jobs = set()     # its work not waited for (file_work_soon)
        self._unfurl_workers = None  # threads fetching link previews, made on first use
        self._unfurls_running = 0
        self._work_waiting = 0
        self.secure_cookies = bool(self.config.tls_cert_path)
        self.events = self.store.events
        self.page_cache = LruCache(self.config.page_cache_bytes, CachedPage.size)
        self.message_cache = LruCache(self.config.message_cache_bytes)
        self.events.subscribe(self)   # account_changed: below
        self.cable = Cable(self)
        self.bot_api_limiter = RateLimiter(*BOT_API_LIMIT)
        self.webhooks = Webhooks(self)
        self.purges = Purges(self)
        self._unknown_digest = None  # see unknown_password_digest()
        self._vapid_key = self._configured_vapid_key()  # or, when unset, the stored one on first use
        self.pushes = Pushes(self)
        self.search_rebuild = SearchIndexRebuild(self)
        try:
            asyncio.get_running_loop()  # under the server: it starts once the server listens
        except RuntimeError:
            self.search_rebuild.start()  # tests and commands: at once
        self.offsite = OffsiteClient(self.config.backup_target) if self.config.backup_target else None
        self.backups = BackupSchedule(self)
        self.request_log = RequestLog()
        self.metrics = Metrics()
        self.events.subscribe(self.metrics)   # message_created
        self.disk = DiskSpace(self.config.storage_path)
        self.http_connections = ()  # the server's open connections (Server shares its set)
        self._body_limits = {}     # (method, path) → bytes, as body_limit found it
        self.requests_handled = 0  # also numbers the request ids
        self._request_prefix = random_hex(3)
        self._date = (0, "")
        self._assets_checked = (-STATIC_RECHECK_SECONDS, {}, PageScripts())

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
        secret = random_hex(SECRET_KEY_BASE_BYTES)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secret + "\n")
        return secret

    def _configured_vapid_key(self):
        public, private = self.config.vapid_public_key, self.config.vapid_private_key
        if not public and not private:
            return None
        if not public or not private:
            raise ConfigError("Set both VAPID_PUBLIC_KEY and VAPID_PRIVATE_KEY, or neither.")
        try:
            return VapidKey.from_base64(public, private)
        except WebPushError as error:
            raise ConfigError("The VAPID key pair can't be used: %s." % error) from None

    @property
    def vapid_key(self):
        """The key pushes are signed with: VAPID_* when set, else a pair generated at the
        first start and kept in the storage directory (never in the database, whose dump
        people share, and never logged)."""
        if self._vapid_key is None:
            self._vapid_key = self._stored_vapid_key()
        return self._vapid_key

    def _stored_vapid_key(self):
        path = os.path.join(self.config.storage_path, VAPID_KEY_FILE)
        try:
            with open(path) as file:
                public, private = (file.read().split() + ["", ""])[:2]
            return VapidKey.from_base64(public, private)
        except FileNotFoundError:
            pass
        except (OSError, WebPushError) as error:
            raise ConfigError("%s can't be read (%s); remove it to make a new key pair, and people "
                              "turn notifications on again." % (path, error)) from None
        key = VapidKey.generate()
        temporary = path + ".new"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write("%s\n%s\n" % (key.public_key_base64, key.private_key_base64))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)  # a crash never leaves half a key behind
        return key

    def close(self):
        self.pushes.close()
        if self._workers is not None:
            self._workers.shutdown(wait=True)
            self._workers = None
        if self._file_workers is not None:
            self._file_workers.shutdown(wait=True)
            self._file_workers = None
        if self._unfurl_workers is not None:
            self._unfurl_workers.shutdown(wait=False, cancel_futures=True)
            self._unfurl_workers = None
        self.db.close()

    async def off_loop(self, function, *args):
        """function(*args) in the worker threads, for blocking work such as a password hash;
        503 when config.password_queue_limit calls are already waiting."""
        if self._work_waiting >= self.config.password_queue_limit:
            raise ServiceUnavailable("The server is busy. Try again in a moment.",
                                     headers=[("Retry-After", "%d" % BUSY_RETRY_AFTER_SECONDS)])
        if self._workers is None:
            import concurrent.futures  # here: most starts never sign anyone in
            self._workers = concurrent.futures.ThreadPoolExecutor(PASSWORD_WORKERS, "campfire-worker")
        self._work_waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._workers, function, *args)
        finally:
            self._work_waiting -= 1

    async def unknown_password_digest(self):
        """What an unknown address's password is checked against: made once, off the loop
        (a bcrypt of cost 12 takes a third of a second), then one check costs what a
        known address's does."""
        if self._unknown_digest is None:
            self._unknown_digest = await self.off_loop(
                unknown_password_digest, self.config.scrypt_n, self.config.bcrypt_cost)
        return self._unknown_digest

    # Operations ----------------------------------------------------------------
    def storage_summary(self):
        """Free space in the storage as plain data, for /up?detail=1, /metrics and the account page."""
        threshold = self.config.min_free_disk_bytes
        free = self.disk.free()
        return {"free_bytes": free, "min_free_bytes": threshold, "low": free is not None and free < threshold}

    def connection_summary(self):
        """Open connections: plain HTTP ones, /cable ones and their channel subscriptions."""
        cable = self.cable.connections
        return {"http": sum(1 for connection in self.http_connections if connection.upgraded is None),
                "cable": len(cable),
                "cable_subscriptions": sum(len(connection.subscriptions) for connection in cable)}

    # Files ---------------------------------------------------------------------
    def _file_pool(self):
        if self._file_workers is None:
            import concurrent.futures
            self._file_workers = concurrent.futures.ThreadPoolExecutor(FILE_WORKERS, "campfire-files")
        return self._file_workers

    async def file_work(self, function, *args, **kwargs):
        """function(*args, **kwargs) in a file worker thread (disk I/O never blocks the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._file_pool(), functools.partial(function, *args, **kwargs))

    def file_work_soon(self, function, *args):
        """function(*args) in a file worker thread, not waited for (a failure is logged).
        close() and settle_file_work() wait for it."""
        job = self._file_pool().submit(function, *args)
        self._file_jobs.add(job)

        def done(job):
            self._file_jobs.discard(job)
            if not job.cancelled() and job.exception() is not None:
                log.error("file work failed: %r", job.exception())
        job.add_done_callback(done)

    def settle_file_work(self):
        """Wait until the file work asked for so far is done (tests; a stop waits in close())."""
        import concurrent.futures
        concurrent.futures.wait(list(self._file_jobs))

    def blobs_created(self, keys):
        """The Events listener: committed uploads move into place."""
        for key in keys:
            self.file_work_soon(self.files.promote, key)

    def blobs_deleted(self, keys):
        for key in keys:
            self.file_work_soon(self.files.delete, key)

    async def discard_uploads(self, uploads):
        """Delete the temporary files of uploads no row will name."""
        for upload in uploads:
            await self.file_work(self.files.discard_temp, upload.key)

    def upload_limit(self, request):
        """The largest body of an upload (HttpParser streams it), or None when the request
        doesn't carry one: only multipart posts to the routes marked upload do."""
        if request.method != "POST" or not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return None
        found = self.router.match("POST", request.path)
        if found is None or not found[0].upload:
            return None
        return self.config.max_upload_bytes + UPLOAD_FORM_OVERHEAD_BYTES

    async def receive_form(self, request):
        """A multipart form, read as it arrives: (FormData of its text fields, {field name: Upload}).
        Each file goes to a temporary file in storage as it comes (memory holds one write at
        most), its MD5 taken and its image header checked on the way. The caller keeps the
        uploads (Store.post_attachment …) or hands them to discard_uploads()."""
        try:
            parser = MultipartParser.for_content_type(request.headers.get("content-type", ""))
        except MultipartError:
            raise
        fields, receiving, text_bytes, part = [], {}, 0, None
        try:
            async for chunk in _body_chunks(request):
                for event in parser.feed(chunk):
                    kind = type(event)
                    if kind is PartData:
                        if part is None:
                            continue
                        if type(part) is list:
                            text_bytes += len(event.data)
                            if text_bytes > MAX_UPLOAD_FIELD_BYTES:
                                raise PayloadTooLarge("The form's text is too long.")
                            part.append(event.data)
                        else:
                            await part.add(event.data)
                    elif kind is PartStarted:
                        if event.filename is None:
                            part = [event.name]
                        elif not event.filename or event.name in receiving or len(receiving) >= MAX_FORM_FILES:
                            part = None  # a file input left empty, or one file too many: skipped
                        else:
                            part = _ReceivingFile(self, event.name, event.filename, event.content_type,
                                                  self.config.max_upload_bytes)
                            receiving[event.name] = part
                            await part.open()
                    else:  # PartEnded
                        if type(part) is list:
                            fields.append((part[0], b"".join(part[1:]).decode("utf-8", "replace")))
                        elif part is not None:
                            await part.finish()
                        part = None
            parser.finish()
        except BaseException:
            for file in receiving.values():
                await self.file_work(file.discard)
            raise
        return FormData(fields), {name: file.upload for name, file in receiving.items()}

    async def store_image(self, file):
        """A small uploaded image held in memory (an avatar, a logo) written to a temporary
        file: its Upload, or Unprocessable when it is not a PNG, JPEG, GIF or WebP image."""
        if sniff_image(file.data) is None:
            raise Unprocessable("Choose a PNG, JPEG, GIF or WebP image.")
        return await self.store_bytes(file)

    async def store_bytes(self, file):
        """A small file held in memory (an avatar, a logo, a webhook's reply) written to a
        temporary file: its Upload. ImageHeaderError (422) for an image whose header lies."""
        image = sniff_image(file.data)
        key = generate_blob_key()

        def write():
            descriptor = self.files.create_temp(key)
            try:
                digest = hashlib.md5()
                FileStore.write(descriptor, file.data, digest)
            finally:
                FileStore.close(descriptor, sync=True)
            return base64.b64encode(digest.digest()).decode()
        checksum = await self.file_work(write)
        return Upload(key, file.filename, upload_content_type(file.content_type, image), len(file.data), checksum,
                      image.width if image else None, image.height if image else None)

    async def file_response(self, request, blob, *, key=None, download=False, cache_control=FILE_CACHE_CONTROL):
        """A stored file as a response: inline only for the types that are safe to show,
        sandboxed, with an ETag (304) and byte ranges (206, 416). key: another blob's bytes
        under this blob's name (a preview)."""
        content_type, disposition, headers = serving_for(blob.content_type)
        etag = blob.etag if key is None else '"%s"' % key
        headers = [header for header in headers if header[0] != "X-Content-Type-Options"]  # _finish adds it
        headers += [("Content-Disposition", content_disposition("attachment" if download else disposition,
                                                                 blob.filename)),
                    ("ETag", etag), ("Cache-Control", cache_control)]
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(b"", 304, None, headers)
        opened = await self.file_work(self.files.open, key or blob.key)
        if opened is None:
            log.error("blob %s (%s) is missing from %s", blob.id, key or blob.key, self.files.root)
            raise NotFound("This file is missing from the server's storage.")
        file, size = opened
        try:
            byte_range = select_range(request.headers.get("range"), size, if_range=request.headers.get("if-range"),
                                      etag=etag)
        except RangeNotSatisfiable:
            file.close()
            raise
        response = Response(b"", 200, content_type, headers)
        if byte_range is None:
            response.file = FileBody(file, 0, size)
        else:
            response.status = 206
            response.headers.append(("Content-Range", content_range(byte_range, size)))
            response.file = FileBody(file, byte_range.first, byte_range.length)
        response.compressible = False
        return response

    async def link_preview(self, url):
        """The LinkPreview of a page, fetched in a worker thread; None when previews are off,
        UNFURL_WORKERS are busy, or the fetch was refused or failed (logged)."""
        if not self.config.link_previews or self._unfurls_running >= UNFURL_WORKERS:
            return None
        if self._unfurl_workers is None:
            import concurrent.futures
            self._unfurl_workers = concurrent.futures.ThreadPoolExecutor(UNFURL_WORKERS, "campfire-unfurl")
        allowed = self.config.unfurl_allowed or unfurl_address_allowed
        self._unfurls_running += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._unfurl_workers, functools.partial(fetch_link_preview, url, allowed=allowed))
        except UnfurlRefused as error:
            log.info("no preview of %s: %s", url[:200], error)
            return None
        finally:
            self._unfurls_running -= 1

    # Helpers for handlers --------------------------------------------------------

    def asset_url(self, name):
        return url_for("static", path=name, v=self.static.version(name))

    def set_cookie(self, response, name, value, *, max_age=SESSION_COOKIE_MAX_AGE, http_only=True):
        response.headers.append(("Set-Cookie", self.cookie_header(name, value, max_age=max_age, http_only=http_only)))

    def cookie_header(self, name, value, *, max_age=SESSION_COOKIE_MAX_AGE, http_only=True):
        parts = ["%s=%s" % (name, urllib.parse.quote(value, safe="")), "Path=/", "Max-Age=%d" % max_age,
                 "SameSite=Lax"]
        if http_only:
            parts.append("HttpOnly")
        if self.secure_cookies:
            parts.append("Secure")
        return "; ".join(parts)

    def clear_cookie(self, response, name):
        self.set_cookie(response, name, "", max_age=0)

    def start_session(self, request, response, user):
        token = self.store.create_session(user.id, request.remote_addr, request.headers.get("user-agent", ""))
        self.set_cookie(response, SESSION_COOKIE, token)

    def account_changed(self):
        """The Events listener for what every page shows: the cached pages go (their versions
        are stale already; this gives the memory back)."""
        self.page_cache.clear()

    def forget_cached(self):
        """After writes were undone: nothing cached may outlive them."""
        self.store.bump_everything()
        self.page_cache.clear()
        self.message_cache.clear()

    # Rendering, and what it caches ---------------------------------------------
    def view(self, request, *, signed_in=True):
        """What rendering a page for this request knows besides its own data."""
        css, digest = self.store.custom_styles()
        user = request.user if signed_in else None
        logo = self.store.account_logo()
        return View(user, self.store.account_name(), digest if css.strip() else "", self._assets()[0], request.origin,
                    url_for("account_logo", v=logo.key[:8]) if logo else "",
                    self.vapid_key.public_key_base64 if user is not None else "", self._assets()[1])

    def _assets(self):
        """The PAGE_ASSETS' versioned URLs and the PageScripts, looked up again at most
        every STATIC_RECHECK_SECONDS. A changed module changes the import map: cached
        pages holding the old one (whose hash the CSP no longer allows) go."""
        now = time.monotonic()
        checked, assets, scripts = self._assets_checked
        if now - checked >= STATIC_RECHECK_SECONDS:
            assets = {name: self.asset_url(name) for name in PAGE_ASSETS}
            fresh = page_scripts(self.static.modules())
            if fresh != scripts:
                scripts = fresh
                self.page_cache.clear()
            self._assets_checked = (now, assets, scripts)
        return assets, scripts

    def message_html(self, message, boosts=(), thread=None, attachment=False, *, highlight=()):
        """A message as render_message makes it, kept until it, its boosts, its thread or any
        name change. thread: its summary from Store.threads_for, looked up when None;
        attachment: its Blob or None when known, else looked up; highlight: search words
        to mark (such a copy isn't kept)."""
        store = self.store
        if thread is None:
            thread = store.threads_for([message["id"]]).get(message["id"], ())
        key = (message["id"], message["updated_at"], tuple(boost["id"] for boost in boosts), thread,
               store.global_version)
        cached = self.message_cache.get(key) if self.config.cache and not highlight else None
        if cached is not None:
            return cached
        stored = message["body"] or ""
        if attachment is False:
            attachment = store.attachment("Message", message["id"], "attachment")
        if attachment is not None:
            attachment = render_attachment(message["id"], attachment, preview=store.preview_of(message["id"],
                                                                                              attachment))
        sound = message_sound(store.plain_text(stored)) if "/play " in stored else None
        body = None if sound else self.render_body(stored)
        if highlight and body is not None:
            body = HTML(highlight_words(body, highlight))
        if boosts:
            booster = store.user
            boosts = [(boost, user.name if (user := booster(boost["booster_id"])) else "Someone") for boost in boosts]
        room = store.room(message["room_id"])
        rendered = render_message(message, author=self._author_html(message["creator_id"]), body=body, sound=sound,
                                  boosts=boosts, thread=thread, in_thread=room is not None and room.thread,
                                  attachment=attachment)
        if not highlight:
            self.message_cache.put(key, rendered)
        return rendered

    def render_body(self, stored_body):
        """A stored body as a message shows it: each mention a chip of the person it names,
        @everyone and @here chips too."""
        if "@" in stored_body:
            stored_body = render_group_mentions(stored_body)
        if "<action-text-attachment" not in stored_body:  # most bodies: nothing to swap
            return HTML(stored_body)
        chips = {}
        for sgid in find_mentions(stored_body):
            user = self.store.mentioned_user(sgid)
            if user is not None:
                chips[sgid] = render_mention(user)
        return HTML(render_rich_text(stored_body, mention=chips.get))

    def messages_html(self, messages, *, highlight=()):
        ids = [message["id"] for message in messages]
        boosts, threads = self.store.boosts_for(ids), self.store.threads_for(ids)
        attachments = self.store.attachments_for("Message", ids, "attachment")
        return HTML("").join(self.message_html(message, boosts.get(message["id"], ()), threads.get(message["id"], ()),
                                               attachments.get(message["id"]), highlight=highlight)
                             for message in messages)

    def _author_html(self, creator_id):
        """The avatar and name that open a message, kept per person until names change."""
        key = ("author", creator_id, self.store.global_version)
        author = self.message_cache.get(key) if self.config.cache else None
        if author is None:
            creator = self.store.user(creator_id)
            author = render_message_author(creator_id, creator.name if creator else "Deleted user")
            self.message_cache.put(key, author)
        return author

    def cached(self, request, key, build):
        """A rendered 200 response kept by `key` (which names every version it
        depends on), with its gzip form and ETag; If-None-Match → 304."""
        if not self.config.cache:
            return build()
        self._assets()  # first: a changed module takes the pages holding its old URL out of the cache
        entry = self.page_cache.get(key)
        if entry is None:
            response = build()
            if response.status != 200:
                return response
            body = response.body
            entry = CachedPage(body, gzip_bytes(body) if len(body) >= GZIP_MIN_BYTES else None,
                               response.content_type,
                               '"%s"' % hashlib.blake2b(body, digest_size=12).hexdigest(), tuple(response.headers))
            self.page_cache.put(key, entry)
        headers = [("ETag", entry.etag), ("Cache-Control", "private, no-cache"), ("Vary", "Accept-Encoding"),
                   *entry.headers]
        if etag_matches(request.headers.get("if-none-match"), entry.etag):
            return Response(b"", 304, None, headers)
        if entry.gzipped is not None and accepts_gzip(request):
            response = Response(entry.gzipped, 200, entry.content_type, headers)
            response.headers.append(("Content-Encoding", "gzip"))
        else:
            response = Response(entry.body, 200, entry.content_type, headers)
        response.compressible = False
        return response

    def body_limit(self, method, path):
        """The largest body the route accepts (413 past it). A POST may stand for
        PATCH, PUT or DELETE through _method, so those routes count for it too."""
        key = (method, path)
        limit = self._body_limits.get(key)
        if limit is None:
            methods = (method,) if method != "POST" else ("POST", "PATCH", "PUT", "DELETE")
            limits = [found[0].body_limit for candidate in methods if (found := self.router.match(candidate, path))]
            limit = max(limits) if limits else FORM_BODY_LIMIT
            if len(self._body_limits) > BODY_LIMITS_KEPT:
                self._body_limits.clear()
            self._body_limits[key] = limit
        return limit

    # Requests ------------------------------------------------------------------
    def handle(self, request):
        """Request → Response. Never raises: errors become error pages.

        A handler that must wait (an `async def` one, for a password hash off the
        event loop) makes this return a coroutine instead; awaited, it gives the
        Response. The server awaits it before the connection's next request."""
        self.requests_handled += 1
        request.id = "%s-%d" % (self._request_prefix, self.requests_handled)
        request.started = time.perf_counter()
        if self.config.trusted_proxies:
            apply_forwarded(request, self.config.trusted_proxies)
        try:
            response = self._dispatch(request)
            if type(response) is types.CoroutineType:
                return self._handle_later(request, response)
        except Exception as error:
            response = self._failure_response(request, error)
        self._finish(request, response)
        return response

    async def _handle_later(self, request, pending):
        try:
            response = await pending
            response = response if isinstance(response, Response) else Response(response)
        except Exception as error:
            response = self._failure_response(request, error)
        self._finish(request, response)
        return response

    def _failure_response(self, request, error):
        if isinstance(error, sqlite3.Error):
            failure = sqlite_failure(error)
            if failure == "unavailable":
                log.error("request %s %s %s: the database refused it: %s", request.id, request.method,
                          self.router.log_path(request.path), error)
                return self._error_response(request, 503, WRITE_REFUSED_MESSAGE)
            if failure == "damaged":
                self.db.failed_at = time.monotonic()  # /up turns red
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("request %s %s %s: the disk is full: %s", request.id, request.method,
                      self.router.log_path(request.path), error)
            return self._error_response(request, 503, WRITE_REFUSED_MESSAGE)
        if isinstance(error, HttpError):
            response = self._error_response(request, error.status, error.message)
            response.headers.extend(error.headers)
            return response
        log.error("request %s %s %s failed:\n%s", request.id, request.method, self.router.log_path(request.path),
                  "".join(traceback.format_exception(error)))
        return self._error_response(
            request, 500, "Something went wrong on our side. The error was logged as %s." % request.id)

    def _dispatch(self, request):
        method = request.method
        lookup = "GET" if method == "HEAD" else method
        found = self.router.match(lookup, request.path)
        # A form's _method stands for PATCH, PUT or DELETE (browsers can't send them);
        # a bot's raw body is never read as a form, whatever its content type says.
        if method == "POST" and not (found and (found[0].auth == "bot" or found[0].upload)) and request.headers.get(
                "content-type", "").startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            override = str(request.form.get("_method", "")).upper()
            if override in ("PATCH", "PUT", "DELETE"):
                lookup = override
                found = self.router.match(lookup, request.path)
        if method not in ("GET", "HEAD") and self.store.address_banned(request.remote_addr):
            raise TooManyRequests("Requests from this address are blocked.")
        if found is None:
            allowed = self.router.allowed_methods(request.path)
            if allowed:  # RFC 9110 §15.5.6
                raise MethodNotAllowed("This address doesn't take %s requests." % lookup,
                                       headers=[("Allow", ", ".join(allowed))])
            raise NotFound("There is nothing at this address.")
        route, params = found
        request.route = route
        auth = route.auth
        if lookup not in ("GET", "HEAD") and auth != "bot":
            self._check_request_origin(request)
        if auth not in ("health", "bot"):
            self._authenticate(request)
        if auth == "signed_out" and request.user is not None:
            return redirect(url_for("root"))
        if (auth == "user" or auth == "admin") and request.user is None:
            if self._bot_key_given(request):
                return Response(b"", 403, "text/html")  # Campfire's deny_bots: `head :forbidden`
            return redirect(url_for("new_session" if self.store.account() is not None else "first_run"), 302)
        if auth == "admin" and not request.user.administrator:
            raise Forbidden("Only administrators can do that.")
        if route.upload and request.headers.get("content-type", "").startswith("multipart/form-data") \
                and self.disk.low(self.config.min_free_disk_bytes):
            # Refused before the body is read: the space left is kept for messages.
            raise InsufficientStorage("The server is low on disk space, so files can't be uploaded "
                                      "right now. An administrator has been told.")
        response = route.handler(self, request, **params)
        return response if isinstance(response, Response) or type(response) is types.CoroutineType \
            else Response(response)

    def _check_request_origin(self, request):
        """Fetch Metadata first (https://w3c.github.io/webappsec-fetch-metadata/), Origin second."""
        site = request.headers.get("sec-fetch-site")
        if site is not None and site != "same-origin":
            raise Forbidden("Cross-site requests are refused.")
        origin = request.headers.get("origin")
        if origin is not None and origin != request.origin:
            raise Forbidden("Requests from other origins are refused.")

    def _bot_key_given(self, request):
        """A good bot key among the parameters of a request without a session: Campfire
        (concerns/authentication.rb) signs in a bot by params[:bot_key] on any route,
        and every route but the bot API then refuses it."""
        key = request.params.get("bot_key")
        return bool(key) and self.store.authenticate_bot(key) is not None

    def _authenticate(self, request):
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return
        now = time.time()
        session = self.store.session_for(token, now)
        if session is None and VERIFIER_SEPARATOR in token:
            session = self._adopt_rails_session(request, token, now)
        if session is None:
            return
        user = self.store.user(session.user_id)
        if user is None or not user.active or user.bot:
            return
        request.user, request.session = user, session

    def _adopt_rails_session(self, request, value, now):
        """A session_token cookie Rails signed with this SECRET_KEY_BASE names a session
        Rails stored (app/controllers/concerns/authentication.rb): that session becomes
        one of ours and the browser gets our cookie with this response."""
        rails_token = verify_signed_cookie(self.secret_key_base, SESSION_COOKIE, value, now=now)
        if not isinstance(rails_token, str) or not rails_token:
            return None
        token = self.store.adopt_rails_session(rails_token, request.remote_addr,
                                               request.headers.get("user-agent", ""), now)
        if token is None:
            return None
        request.set_cookies.append(self.cookie_header(SESSION_COOKIE, token))
        return self.store.session_for(token, now)

    def _error_response(self, request, status, message):
        if request.path.startswith("/static/"):
            return Response(message, status, "text/plain; charset=utf-8")
        try:
            # An error page never depends on the session.
            return Response(render_error_page(self.view(request, signed_in=False), status, message), status)
        except sqlite3.Error:  # the database is down: a page that needs nothing from it
            return Response(plain_error_page(status, message), status)

    def _finish(self, request, response):
        headers = response.headers
        present = {name.lower() for name, _ in headers} if headers else ()
        if response.content_type and "content-type" not in present and response.status not in (204, 304):
            headers.append(("Content-Type", response.content_type))
        if "content-security-policy" not in present:
            headers.append(("Content-Security-Policy", self._assets_checked[2].content_security_policy))
        headers.extend(SECURITY_HEADERS)
        headers.append(("X-Request-Id", request.id))
        for cookie in request.set_cookies:
            headers.append(("Set-Cookie", cookie))
        if request.scheme == "https":
            # Over HTTPS (served directly or ended by a trusted proxy) cookies are
            # Secure, and HSTS keeps browsers on HTTPS (RFC 6797 §7.2: never over http).
            headers.append(("Strict-Transport-Security", "max-age=%d" % HSTS_MAX_AGE_SECONDS))
            for index, (name, value) in enumerate(headers):
                if name == "Set-Cookie" and not value.endswith("; Secure"):
                    headers[index] = (name, value + "; Secure")
        if (response.compressible and len(response.body) >= GZIP_MIN_BYTES
                and response.content_type and response.content_type.startswith(GZIP_TYPES)
                and "content-encoding" not in present and accepts_gzip(request)):
            response.body = gzip_bytes(response.body)
            headers.append(("Content-Encoding", "gzip"))
            headers.append(("Vary", "Accept-Encoding"))
        seconds = time.perf_counter() - request.started
        self.metrics.observe(request.route, response.status, seconds)
        if request.path != "/up" and self.request_log.enabled:
            self.request_log.add(request.method, self.router.log_path(request.path), response.status,
                                 seconds * 1000, request.id)

    def http_date(self):
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, http_date(now))
        return self._date[1]

    def serialize(self, request, response, keep_alive):
        return serialize_response(response.status, response.headers, response.body, keep_alive=keep_alive,
                                  head_only=request.method == "HEAD", date=self.http_date(),
                                  content_length=response.file.length if response.file is not None else None)


async def _body_chunks(request):
    """A request's body in pieces: as it arrives when streamed, else the one it has."""
    reader = request.body_reader
    if reader is None:
        if request.body:
            yield request.body
        return
    while chunk := await reader.read():
        yield chunk


class _ReceivingFile:
    """One file of a multipart form on its way to a temporary file (App.receive_form)."""

    def __init__(self, app, name, filename, declared_type, max_bytes):
        self.app = app
        self.key = generate_blob_key()
        self.filename = safe_filename(filename)
        self.declared_type = declared_type
        self.max_bytes = max_bytes
        self.descriptor = None
        self.digest = hashlib.md5()
        self.size = 0
        self.pending, self.pending_bytes = [], 0
        self.sniffer, self.sniffing = ImageSniffer(), True
        self.upload = None

    async def open(self):
        self.descriptor = await self.app.file_work(self.app.files.create_temp, self.key)

    async def add(self, data):
        self.size += len(data)
        if self.size > self.max_bytes:
            raise PayloadTooLarge("A file can be at most %s." % format_bytes(self.max_bytes))
        if self.sniffing and self.sniffer.feed(data):  # microseconds: it reads a few header bytes
            self.sniffing = False
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes >= UPLOAD_WRITE_BYTES:
            await self._write()

    async def _write(self):
        if self.pending:
            data = b"".join(self.pending) if len(self.pending) > 1 else self.pending[0]
            self.pending, self.pending_bytes = [], 0
            await self.app.file_work(FileStore.write, self.descriptor, data, self.digest)

    async def finish(self):
        await self._write()
        image = self.sniffer.finish()
        descriptor, self.descriptor = self.descriptor, None
        await self.app.file_work(FileStore.close, descriptor, sync=True)
        self.upload = Upload(self.key, self.filename, upload_content_type(self.declared_type, image), self.size,
                             base64.b64encode(self.digest.digest()).decode(), image.width if image else None,
                             image.height if image else None)

    def discard(self):
        """Blocking: the temporary file goes (a worker thread calls it)."""
        descriptor, self.descriptor = self.descriptor, None
        if descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(descriptor)
        self.app.files.discard_temp(self.key)


####
#### 17. Background work
####
# Work that follows a change, off the request path: a banned person's messages
# deleted in chunks, and webhook deliveries. Each starts from an Events listener.
# Automatic backups run on a timer, on a thread of their own.

def run_in_background(step):
    """Call step() until it returns False. Under the server each call gets its own
    event-loop turn, so a long job never holds up requests; without a running loop
    (tests, the command line) it runs to the end at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        while step():
            pass
        return

    def turn():
        try:
            more = step()
        except Exception:
            log.error("background job failed:\n%s", traceback.format_exc())
            return
        if more:
            loop.call_soon(turn)
    loop.call_soon(turn)


class SearchIndexRebuild:
    """At start, messages without a search row (a storage restored or made by hand, or a
    Rails storage whose index was lost) get one, a chunk per event-loop turn while the
    server answers, with progress in the log. Only messages that existed at start are
    looked at: a new one writes its own row."""

    def __init__(self, app):
        self.store = app.store
        self.upto = self.after = self.looked = self.written = self.total = 0
        self.logged_at = 0
        self.started = False

    def start(self):
        if not self.started:
            self.started = True
            run_in_background(self.step)

    def step(self):
        store = self.store
        if not self.upto:
            if store.search_index_complete():
                return False
            self.upto, self.total = store.messages_extent()
            log.info("search index: incomplete; checking %d messages in the background", self.total)
        last, looked, written = store.index_missing_search_rows(self.after, self.upto, SEARCH_REBUILD_CHUNK)
        if last is None:
            log.info("search index: rebuilt (%d messages checked, %d indexed)", self.looked, self.written)
            return False
        self.after, self.looked, self.written = last, self.looked + looked, self.written + written
        if self.looked - self.logged_at >= SEARCH_REBUILD_LOG_EVERY:
            self.logged_at = self.looked
            log.info("search index: %d of %d messages checked, %d indexed", self.looked, self.total, self.written)
        return True


class Purges:
    """The Events listener that deletes a banned person's messages, a chunk per turn."""

    def __init__(self, app):
        self.store = app.store
        app.events.subscribe(self)

    def user_banned(self, user_id):
        run_in_background(lambda: self.store.purge_messages_step(user_id))


# Webhooks --------------------------------------------------------------------------
# A person's message that a bot should hear about is queued (bounded) when it
# commits; a few asyncio workers POST it to the bot's webhook and post a text
# reply back as the bot, on the event loop's thread (the database belongs to
# it). Posting a message never waits for a bot.

class WebhookFailed(CampfireError):
    """A delivery that produced no usable reply (logged; never reaches a client)."""


class WebhookTimedOut(WebhookFailed):
    """Connecting, or one read or write, took longer than config.webhook_timeout."""


def webhook_request_bytes(url, payload):
    """The POST a webhook receives: JSON, one request per connection."""
    split = urllib.parse.urlsplit(url)
    host = split.hostname
    host = "[%s]" % host if ":" in host else host
    if split.port is not None:
        host += ":%d" % split.port
    target = (split.path or "/") + ("?" + split.query if split.query else "")
    head = ("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            "Accept: */*\r\nUser-Agent: Campfire/%s\r\nConnection: close\r\n\r\n") % (
        target, host, len(payload), VERSION)
    return head.encode("ascii") + payload


class WebhookResponseReader:
    """Bytes of one HTTP/1.1 response in, status, headers and body out (sans-I/O).

    receive_data(bytes) and receive_eof() return True once the response is
    complete. Bodies framed by Content-Length, chunked coding (RFC 9112 §7.1)
    or the end of the connection; interim 1xx responses are skipped. Raises
    WebhookFailed past MAX_WEBHOOK_HEAD_BYTES or max_body, or on malformed input."""

    def __init__(self, max_body=None):
        self.max_body = MAX_WEBHOOK_REPLY_BYTES if max_body is None else max_body
        self.status = None
        self.headers = {}
        self.body = bytearray()
        self._buffer = bytearray()
        self._framing = None      # "length", "chunked", "eof" once the head is read
        self._remaining = 0       # bytes left of the body or of the current chunk
        self._in_chunk = False
        self._trailers = False
        self.complete = False

    @property
    def content_type(self):
        """The media type alone, lower case, as Net::HTTP's content_type gives it."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def receive_data(self, data):
        self._buffer += data
        while not self.complete:
            if self._framing is None:
                if not self._parse_head():
                    break
            elif not self._parse_body():
                break
        return self.complete

    def receive_eof(self):
        if self.complete:
            return True
        if self._framing == "eof":
            self.complete = True
            return True
        raise WebhookFailed("the connection closed before the reply was complete")

    def _parse_head(self):
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_WEBHOOK_HEAD_BYTES:
                raise WebhookFailed("the reply's headers are too large")
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[:end + 4]
        match = re.match(r"HTTP/1\.[01] ([0-9]{3})(?: |\Z)", lines[0])
        if not match:
            raise WebhookFailed("the reply is not HTTP/1.x: %r" % lines[0][:100])
        status = int(match[1])
        if 100 <= status < 200:
            return True  # an interim response: the real one follows
        headers = {}
        for line in lines[1:]:
            name, separator, value = line.partition(":")
            if not separator:
                raise WebhookFailed("a reply header is malformed")
            key = name.strip().lower()
            headers[key] = headers[key] + ", " + value.strip() if key in headers else value.strip()
        self.status, self.headers = status, headers
        if status in (204, 304):
            self.complete = True
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._framing = "chunked"
        elif "content-length" in headers:
            if not re.fullmatch(r"[0-9]{1,18}", headers["content-length"]):
                raise WebhookFailed("the reply's Content-Length is malformed")
            self._framing, self._remaining = "length", int(headers["content-length"])
            if self._remaining > self.max_body:
                raise WebhookFailed("the reply is larger than %d bytes" % self.max_body)
        else:
            self._framing = "eof"
        return True

    def _take(self, count):
        if len(self.body) + count > self.max_body:
            raise WebhookFailed("the reply is larger than %d bytes" % self.max_body)
        self.body += self._buffer[:count]
        del self._buffer[:count]

    def _parse_body(self):
        if self._framing == "eof":
            self._take(len(self._buffer))
            return False
        if self._framing == "length":
            count = min(self._remaining, len(self._buffer))
            self._take(count)
            self._remaining -= count
            self.complete = self._remaining == 0
            return False
        if self._in_chunk:  # chunked: the chunk's data, then its CRLF
            if len(self._buffer) < self._remaining + 2:
                return False
            if self._buffer[self._remaining:self._remaining + 2] != b"\r\n":
                raise WebhookFailed("a reply chunk is not followed by CRLF")
            self._take(self._remaining)
            del self._buffer[:2]
            self._in_chunk = False
            return True
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > MAX_CHUNK_LINE_BYTES:
                raise WebhookFailed("a reply chunk line is too long")
            return False
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 2]
        if self._trailers:
            self.complete = not line
            return True
        match = re.fullmatch(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?", line)
        if not match:
            raise WebhookFailed("a reply chunk size is malformed")
        size = int(match[1], 16)
        if size == 0:
            self._trailers = True
        else:
            if len(self.body) + size > self.max_body:
                raise WebhookFailed("the reply is larger than %d bytes" % self.max_body)
            self._in_chunk, self._remaining = True, size
        return True


class OutboundRequests:
    """What webhook and push deliveries share: one request on a fresh connection whose
    every step (connecting, sending, each read) must finish within step_timeout(), else
    step_failure is raised; the reply read by WebhookResponseReader; TLS checked against
    the system's CAs (SSL_CERT_FILE when set)."""

    step_failure = WebhookFailed
    _tls = None

    def step_timeout(self):
        raise NotImplementedError

    async def _exchange(self, reader, writer, request, max_reply=None):
        try:
            writer.write(request)
            await self._step(writer.drain(), "sending")
            response = WebhookResponseReader(max_reply)
            while True:
                data = await self._step(reader.read(WEBHOOK_READ_BYTES), "reading")
                if response.receive_data(data) if data else response.receive_eof():
                    return response
        finally:
            writer.transport.abort()

    async def _step(self, awaitable, doing):
        timeout = self.step_timeout()
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except TimeoutError:
            raise self.step_failure("nothing for %gs while %s" % (timeout, doing)) from None

    def _tls_context(self):
        if self._tls is None:
            import ssl  # loaded on the first https request only
            self._tls = ssl.create_default_context()
        return self._tls


class Webhooks(OutboundRequests):
    """The Events listener that delivers webhooks, and its bounded queue.

    The server runs WEBHOOK_WORKERS workers (start/stop); without a server
    (tests, the command line) run_pending() delivers what is queued."""

    step_failure = WebhookTimedOut

    def __init__(self, app):
        self.app = app
        self.pending = collections.deque()
        self._wakeup = None
        self._workers = []
        self._tls = None
        app.events.subscribe(self)

    # Events ---------------------------------------------------------------------
    def message_created(self, room, message, unread_user_ids):
        for delivery in self.app.store.webhook_deliveries(room, message):
            self.enqueue(delivery)

    def enqueue(self, delivery):
        if len(self.pending) >= self.app.config.webhook_queue_size:
            log.warning("webhook queue full (%d): dropped message %d for bot %d",
                        self.app.config.webhook_queue_size, delivery.message_id, delivery.bot_id)
            return
        self.pending.append(delivery)
        if self._wakeup is not None:
            self._wakeup.set()

    # Workers --------------------------------------------------------------------
    def start(self, loop):
        self._wakeup = asyncio.Event()
        self._workers = [loop.create_task(self._work()) for _ in range(WEBHOOK_WORKERS)]
        if self.pending:
            self._wakeup.set()

    def stop(self):
        """Cancel the workers (no reply is posted after this); queued deliveries are dropped."""
        for worker in self._workers:
            worker.cancel()
        self._workers, self._wakeup = [], None
        if self.pending:
            log.warning("dropped %d queued webhook deliveries at shutdown", len(self.pending))
            self.pending.clear()

    async def _work(self):
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._drain()

    async def _drain(self):
        while self.pending:
            await self.deliver(self.pending.popleft())

    def run_pending(self):
        """Deliver everything queued, on a private event loop in this thread."""
        async def drain_all():
            await asyncio.gather(*(self._drain() for _ in range(WEBHOOK_WORKERS)))
        asyncio.run(drain_all())

    # One delivery ---------------------------------------------------------------
    async def deliver(self, delivery):
        """POST once (no retries, no redirects followed) and act on the reply."""
        try:
            reply = await asyncio.wait_for(self._post(delivery.url, delivery.payload), WEBHOOK_TOTAL_TIMEOUT)
        except WebhookTimedOut as error:
            log.warning("webhook for bot %d timed out (%s)", delivery.bot_id, error)
            self._post_reply(delivery, WEBHOOK_TIMEOUT_REPLY)
            return
        except TimeoutError:
            log.warning("webhook for bot %d took over %gs in all; nothing posted",
                        delivery.bot_id, WEBHOOK_TOTAL_TIMEOUT)
            return
        except (WebhookFailed, OSError, EOFError, ValueError, UnicodeError) as error:
            log.warning("webhook for bot %d failed: %s", delivery.bot_id, str(error) or type(error).__name__)
            return
        except Exception:
            log.error("webhook for bot %d failed:\n%s", delivery.bot_id, traceback.format_exc())
            return
        if reply.status == 200 and reply.content_type in ("text/html", "text/plain"):
            self._post_reply(delivery, bytes(reply.body).decode("utf-8", "replace"))
        elif 300 <= reply.status < 400:
            log.warning("webhook for bot %d answered %d (redirects aren't followed); nothing posted",
                        delivery.bot_id, reply.status)
        elif reply.headers.get("content-type") and reply.body:
            # Any other reply is a file, posted as attachment.<ext> (Campfire's app/models/webhook.rb).
            await self._post_file_reply(delivery, reply)
        elif not 200 <= reply.status < 300:
            log.warning("webhook for bot %d answered %d; nothing posted", delivery.bot_id, reply.status)

    async def _post(self, url, payload):
        split = urllib.parse.urlsplit(url)
        https = split.scheme.lower() == "https"
        port = split.port or (443 if https else 80)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                split.hostname, port, ssl=self._tls_context() if https else None,
                server_hostname=split.hostname if https else None), self.app.config.webhook_timeout)
        except TimeoutError:
            raise WebhookTimedOut("no connection within %gs" % self.app.config.webhook_timeout) from None
        return await self._exchange(reader, writer, webhook_request_bytes(url, payload))

    def step_timeout(self):
        return self.app.config.webhook_timeout

    async def _post_file_reply(self, delivery, reply):
        import mimetypes  # here: only a bot answering with a file needs its table
        content_type = normalized_content_type(reply.content_type) or DOWNLOAD_CONTENT_TYPE
        extension = mimetypes.guess_extension(content_type, strict=False) or ".bin"
        try:
            upload = await self.app.store_bytes(UploadedFile("attachment" + extension, content_type,
                                                             bytes(reply.body)))
        except HttpError as error:
            log.warning("webhook reply from bot %d not posted: %s", delivery.bot_id, error.message)
            return
        if not self._post_reply(delivery, upload=upload):
            await self.app.discard_uploads([upload])

    def _post_reply(self, delivery, text=None, *, upload=None):
        """The reply (text, or a file) as the bot's message, if the bot is still active and in
        the room. True when it was posted."""
        app = self.app
        bot = app.store.user(delivery.bot_id)
        room = app.store.room(delivery.room_id)
        if bot is None or not bot.active or room is None or room.id not in app.store.user_rooms(bot.id):
            log.info("webhook reply from bot %d dropped: the bot or the room is gone", delivery.bot_id)
            return False
        try:
            if upload is not None:
                app.store.post_attachment(room, bot, upload, random_hex(CLIENT_MESSAGE_ID_BYTES))
                return True
            app.store.post_message(room, bot, text, random_hex(CLIENT_MESSAGE_ID_BYTES))
            return True
        except HttpError as error:
            log.warning("webhook reply from bot %d not posted: %s", delivery.bot_id, error.message)
        except Exception:
            log.error("webhook reply from bot %d not posted:\n%s", delivery.bot_id, traceback.format_exc())
        return False


# Link previews (Campfire's unfurl_links_controller.rb and lib/restricted_http/) -------
# A worker thread resolves the name, keeps only the addresses unfurl_address_allowed
# accepts (every one must pass, so a name that also points inside is refused),
# connects to that address itself (so a second lookup can't rebind it), and checks
# each redirect's address the same way. The whole fetch has one deadline.

class UnfurlRefused(CampfireError):
    """A preview that can't or mustn't be fetched: a private address, a bad URL, a slow
    or unreadable page. Answered 204, like a page without a preview."""


def _pinned_connection(host, address, port, https, timeout):
    import http.client
    base = http.client.HTTPSConnection if https else http.client.HTTPConnection

    class Pinned(base):
        def connect(self):
            self.sock = socket.create_connection((address, port), timeout)
            if https:
                self.sock = self._context.wrap_socket(self.sock, server_hostname=host)
    if https:
        import ssl
        return Pinned(host, port, timeout=timeout, context=ssl.create_default_context())
    return Pinned(host, port, timeout=timeout)


def fetch_link_preview(url, *, allowed=unfurl_address_allowed, resolve=None, timeout=UNFURL_TIMEOUT):
    """A LinkPreview of the page at url (blocking: call it from a worker thread), or
    UnfurlRefused. allowed(address) decides each resolved address; resolve is getaddrinfo."""
    resolve = resolve or socket.getaddrinfo
    deadline = time.monotonic() + timeout
    for _ in range(MAX_UNFURL_REDIRECTS + 1):
        split = urllib.parse.urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname or len(url) > MAX_UNFURL_URL_CHARS:
            raise UnfurlRefused("only http and https addresses are previewed")
        https = split.scheme == "https"
        try:
            port = split.port or (443 if https else 80)
            addresses = [info[4][0] for info in resolve(split.hostname, port, type=socket.SOCK_STREAM)]
        except (OSError, ValueError, UnicodeError) as error:
            raise UnfurlRefused("%s can't be resolved (%s)" % (split.hostname, error)) from None
        if not addresses or not all(allowed(address) for address in addresses):
            raise UnfurlRefused("%s is a private address" % split.hostname)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UnfurlRefused("no answer within %gs" % timeout)
        connection = _pinned_connection(split.hostname, addresses[0], port, https, remaining)
        try:
            path = (split.path or "/") + ("?" + split.query if split.query else "")
            connection.request("GET", path, headers={
                "Host": split.netloc.rpartition("@")[2], "Accept": "text/html,application/xhtml+xml",
                "User-Agent": "Campfire link preview (+https://once.com/campfire)"})
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("location"):
                url = urllib.parse.urljoin(url, response.getheader("location"))
                continue
            content_type = response.getheader("content-type", "")
            if response.status != 200 or "html" not in content_type.lower():
                raise UnfurlRefused("the page answered %d %s" % (response.status, content_type))
            body = bytearray()
            while len(body) < MAX_PREVIEW_PAGE_BYTES:
                if time.monotonic() > deadline:
                    raise UnfurlRefused("no whole page within %gs" % timeout)
                data = response.read1(min(UNFURL_READ_BYTES, MAX_PREVIEW_PAGE_BYTES - len(body)))
                if not data:
                    break
                body += data
            return extract_link_preview(bytes(body), url, content_type)
        except (OSError, ValueError, UnicodeError) as error:
            raise UnfurlRefused("the page could not be read (%s)" % (error or type(error).__name__)) from None
        finally:
            connection.close()
    raise UnfurlRefused("more than %d redirects" % MAX_UNFURL_REDIRECTS)


# Web Push deliveries ---------------------------------------------------------------
# A new message's pushes are queued when it commits (bounded: past the limit the
# oldest is dropped, logged). PUSH_WORKERS asyncio tasks take them one at a time:
# the payload is built, encrypted and signed in a worker process (the curve math
# is pure Python and holds the GIL: in a thread it would still take the
# interpreter from the event loop), then POSTed to the push service (RFC 8030 §5)
# over TLS checked against the system's CAs (SSL_CERT_FILE is honoured), with a
# timeout per step and one in all. 404 and 410 delete the subscription (RFC 8030
# §7.3); 429 and 5xx are tried again later, after Retry-After when given.

class PushFailed(CampfireError):
    """A push that got no answer: it is logged, and the next message tries again."""


_push_signer = None  # in a push worker process: the VapidSigner, made once, its tokens cached


def _push_worker_start(private_key, subject):
    """A push worker process's initializer. Ctrl-C is the server's to handle, and the CPU
    goes to the server first."""
    global _push_signer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(PUSH_WORKER_NICENESS)  # chat first: a push can wait a moment, a message shouldn't
    except OSError:
        pass
    _push_signer = VapidSigner(VapidKey(private_key), subject)


def push_request_parts(title, body, path, badge, endpoint, p256dh_key, auth_key):
    """In a push worker process: (the encrypted body, the Authorization header)."""
    payload = push_payload(title, body, path, badge)
    return encrypt_push_message(payload, p256dh_key, auth_key), _push_signer.authorization(endpoint)


def push_request_bytes(endpoint, body, authorization, ttl=PUSH_TTL):
    """The POST a push service receives (RFC 8030 §5, RFC 8291 §4, RFC 8292 §3)."""
    split = urllib.parse.urlsplit(endpoint)
    host = split.hostname
    host = "[%s]" % host if ":" in host else host
    if split.port is not None:
        host += ":%d" % split.port
    target = (split.path or "/") + ("?" + split.query if split.query else "")
    head = ("POST %s HTTP/1.1\r\nHost: %s\r\nTTL: %d\r\nUrgency: high\r\nContent-Type: application/octet-stream\r\n"
            "Content-Encoding: aes128gcm\r\nContent-Length: %d\r\nAuthorization: %s\r\nUser-Agent: Campfire/%s\r\n"
            "Connection: close\r\n\r\n") % (target, host, ttl, len(body), authorization, VERSION)
    return head.encode("ascii") + body


def retry_after_seconds(value, now=None):
    """Retry-After (RFC 9110 §10.2.3), seconds or an HTTP date, as seconds from now; None if unreadable."""
    value = (value or "").strip()
    if value.isdigit():
        return float(value)
    import email.utils  # here: only a push service that asks for patience needs it
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Pushes(OutboundRequests):
    """The Events listener that sends Web Push notifications, and its bounded queue.

    The server runs PUSH_WORKERS workers (start/stop); without a server (tests, the
    command line) run_pending() sends what is queued. close() ends the worker process."""

    step_failure = PushFailed

    def __init__(self, app):
        self.app = app
        self.pending = collections.deque()
        self._wakeup = None
        self._workers = []
        self._busy = 0            # deliveries being sent right now
        self._retries = set()     # timer handles of pushes waiting to be tried again
        self._tls = None
        self._pool = None
        app.events.subscribe(self)

    # Events ---------------------------------------------------------------------
    def message_created(self, room, message, unread_user_ids):
        for delivery in self.app.store.push_deliveries(room, message):
            self.enqueue(delivery)

    @property
    def depth(self):
        """Pushes waiting: queued, and waiting to be tried again."""
        return len(self.pending) + len(self._retries)

    def enqueue(self, delivery):
        if len(self.pending) >= self.app.config.push_queue_size:
            dropped = self.pending.popleft()
            log.warning("push queue full (%d): dropped the oldest push (subscription %d)",
                        self.app.config.push_queue_size, dropped.subscription_id)
        self.pending.append(delivery)
        if self._wakeup is not None:
            self._wakeup.set()

    # Workers --------------------------------------------------------------------
    def start(self, loop):
        self._wakeup = asyncio.Event()
        self._workers = [loop.create_task(self._work()) for _ in range(PUSH_WORKERS)]
        if self.pending:
            self._wakeup.set()

    def stop(self):
        """Cancel the workers; queued pushes and retries are dropped (logged)."""
        for worker in self._workers:
            worker.cancel()
        for handle in self._retries:
            handle.cancel()
        dropped = len(self.pending) + len(self._retries)
        self._workers, self._wakeup, self._retries = [], None, set()
        self.pending.clear()
        if dropped:
            log.warning("dropped %d queued pushes at shutdown", dropped)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def _work(self):
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.pending:
                self._busy += 1
                try:
                    await self.deliver(self.pending.popleft())
                finally:
                    self._busy -= 1

    def run_pending(self, timeout=120):
        """Send everything queued, retries included, on a private event loop in this thread."""
        async def run():
            self.start(asyncio.get_running_loop())
            try:
                while self.pending or self._busy or self._retries:
                    await asyncio.sleep(0.005)
            finally:
                self.stop()
        asyncio.run(asyncio.wait_for(run(), timeout))

    def _process_pool(self):
        if self._pool is None:
            import concurrent.futures  # here: a server without push subscriptions never needs them
            import multiprocessing
            key = self.app.vapid_key
            # spawn, not fork: a fork of this process would copy its threads' locks mid-use.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                PUSH_PROCESSES, mp_context=multiprocessing.get_context("spawn"),
                initializer=_push_worker_start, initargs=(key.private_key, VAPID_SUBJECT))
        return self._pool

    # One delivery ---------------------------------------------------------------
    async def deliver(self, delivery):
        """Encrypt and sign off the loop, POST once, act on the answer."""
        import concurrent.futures.process
        subscription = delivery.subscription_id
        try:
            body, authorization = await asyncio.get_running_loop().run_in_executor(
                self._process_pool(), push_request_parts, delivery.title, delivery.body, delivery.path,
                delivery.badge, delivery.endpoint, delivery.p256dh_key, delivery.auth_key)
        except WebPushError as error:
            log.warning("push to subscription %d not sent: %s", subscription, error)
            return
        except concurrent.futures.process.BrokenProcessPool:
            log.error("the push worker process stopped; it is started again for the next push")
            self._pool = None
            return
        try:
            reply = await asyncio.wait_for(self._post(delivery.endpoint, body, authorization),
                                           self.app.config.push_total_timeout)
        except TimeoutError:
            log.warning("push to subscription %d took over %gs in all; not sent",
                        subscription, self.app.config.push_total_timeout)
            return
        except (PushFailed, WebhookFailed, OSError, EOFError, ValueError, UnicodeError) as error:
            log.warning("push to subscription %d failed: %s", subscription, str(error) or type(error).__name__)
            return
        status = reply.status
        if 200 <= status < 300:
            return
        if status in (404, 410):
            log.info("push subscription %d has expired (%d): deleted", subscription, status)
            self.app.store.expire_push_subscription(subscription)
        elif status == 429 or status >= 500:
            self._retry(delivery, status, reply.headers.get("retry-after"))
        else:
            log.warning("push to subscription %d refused with %d: %s", subscription, status,
                        bytes(reply.body[:200]).decode("utf-8", "replace"))

    def _retry(self, delivery, status, retry_after):
        if delivery.attempt >= PUSH_RETRIES:
            log.warning("push to subscription %d answered %d %d times; dropped", delivery.subscription_id,
                        status, delivery.attempt + 1)
            return
        delay = retry_after_seconds(retry_after) if retry_after else None
        if delay is None:
            delay = self.app.config.push_retry_delay * 2 ** delivery.attempt
        delay = min(delay, PUSH_RETRY_AFTER_MAX)
        delivery.attempt += 1
        log.info("push to subscription %d answered %d; trying again in %gs", delivery.subscription_id, status, delay)

        def again():
            self._retries.discard(handle)
            self.enqueue(delivery)
        handle = asyncio.get_running_loop().call_later(delay, again)
        self._retries.add(handle)

    async def _post(self, endpoint, body, authorization):
        split = urllib.parse.urlsplit(endpoint)
        reader, writer = await self._step(asyncio.open_connection(
            split.hostname, split.port or 443, ssl=self._tls_context(), server_hostname=split.hostname),
            "connecting")
        return await self._exchange(reader, writer, push_request_bytes(endpoint, body, authorization),
                                    MAX_PUSH_REPLY_BYTES)

    def step_timeout(self):
        return self.app.config.push_timeout
# Off-site copies ---------------------------------------------------------------
# Each finished backup is sent to BACKUP_URL: AWS Signature Version 4 written with
# hmac/hashlib, S3's PutObject and multipart upload, or a plain HTTPS PUT. The
# client blocks (http.client), so it runs on the backups' own thread; another
# thread stops it with Cancellation.cancel().
# Signature Version 4 ------------------------------------------------------
#
# Pure functions of their arguments: no clock, no socket. The steps and their
# names follow the AWS General Reference ("Create a signed AWS API request") and,
# for S3, the Amazon S3 API Reference ("Signature Calculations for the
# Authorization Header: Transferring Payload in a Single Chunk").

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_AMZ_DATE = re.compile(r"\A[0-9]{8}T[0-9]{6}Z\Z")
_HEADER_SPACES = re.compile(r"[ \t]+")
_HEADER_NAME = re.compile(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 §5.1: a token


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(default=None, repr=False)  # temporary credentials (AWS STS)


@dataclass(frozen=True)
class SignedRequest:
    """What to send (target, headers), and the steps that led to it."""
    target: str              # the request target: the encoded path and the canonical query
    headers: list            # (name, value) pairs to send, Authorization last
    canonical_request: str
    string_to_sign: str
    signature: str


def uri_encode(text, keep_slash=False):
    """UriEncode() of the S3 API Reference: every byte of the UTF-8 text but the
    unreserved ones (RFC 3986 §2.3) as %XY with upper-case hex; '/' stays when
    encoding an object key's path. S3 encodes each path segment once and never
    normalizes '.' or '//' segments (other services do both)."""
    out = []
    for byte in text.encode("utf-8"):
        if byte in _UNRESERVED or (keep_slash and byte == 0x2F):
            out.append(chr(byte))
        else:
            out.append("%%%02X" % byte)
    return "".join(out)


def canonical_query_string(params):
    """(name, value) pairs, unencoded, as the sorted, encoded CanonicalQueryString.
    Sorted by encoded name, then by encoded value for a repeated name; a name
    without a value keeps its '=' ("lifecycle=")."""
    pairs = sorted((uri_encode(name), uri_encode(value)) for name, value in params)
    return "&".join("%s=%s" % pair for pair in pairs)


def canonical_headers(headers):
    """(name, value) pairs as (CanonicalHeaders, SignedHeaders): names in lower
    case and sorted, values trimmed with inner runs of spaces made one, and the
    values of a repeated name joined by ',' in the order they were given."""
    values = {}
    for name, value in headers:
        if not _HEADER_NAME.match(name):
            raise ValueError("%r is not an HTTP header name." % name)
        if any(c in value for c in "\r\n\0"):
            raise ValueError("The value of the %s header has a line break." % name)
        values.setdefault(name.lower(), []).append(_HEADER_SPACES.sub(" ", value).strip(" "))
    names = sorted(values)
    text = "".join("%s:%s\n" % (name, ",".join(values[name])) for name in names)
    return text, ";".join(names)


def canonical_request(method, path, params, headers, payload_hash):
    """The CanonicalRequest, and the SignedHeaders it names. `path` is the
    unencoded absolute path (an S3 object key follows the bucket's '/')."""
    headers_text, signed = canonical_headers(headers)
    text = "\n".join([method.upper(), uri_encode(path, keep_slash=True),
                      canonical_query_string(params), headers_text, signed, payload_hash])
    return text, signed


def credential_scope(date, region, service):
    return "%s/%s/%s/%s" % (date, region, service, SIGV4_TERMINATOR)


def string_to_sign(amz_date, scope, canonical):
    return "\n".join([SIGV4_ALGORITHM, amz_date, scope,
                      hashlib.sha256(canonical.encode("utf-8")).hexdigest()])


def signing_key(secret_access_key, date, region, service):
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")."""
    key = ("AWS4" + secret_access_key).encode("utf-8")
    for part in (date, region, service, SIGV4_TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def amz_date(now):
    """The ISO 8601 basic form SigV4 wants (20130524T000000Z) of a Unix time."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _check_amz_date(value):
    if not _AMZ_DATE.match(value):
        raise ValueError("%r is not a date of the form 20130524T000000Z." % value)


def sigv4_sign(method, path, params, headers, *, credentials, region, service, amz_date,
               payload_hash, content_sha256_header=None, sign_session_token=True):
    """Sign a request with the Authorization header.

    `headers` are the (name, value) pairs to sign, Host among them; the signer adds
    X-Amz-Date, X-Amz-Content-SHA256 (S3 requires it, so by default when the service
    is "s3": a hex SHA-256 of the payload or UNSIGNED-PAYLOAD) and, with temporary
    credentials, X-Amz-Security-Token, signed unless `sign_session_token` is false
    (some services want it added after signing). Headers sent but not given here
    (Content-Length, User-Agent) are simply not signed.
    """
    _check_amz_date(amz_date)
    if content_sha256_header is None:
        content_sha256_header = service == "s3"
    headers = list(headers)
    names = {name.lower() for name, _ in headers}
    if "host" not in names:
        raise ValueError("A signed request needs its Host header.")
    if names & {"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"}:
        raise ValueError("Authorization and the X-Amz-* headers of the signature are set by the signer.")
    headers.append(("X-Amz-Date", amz_date))
    if content_sha256_header:
        headers.append(("X-Amz-Content-SHA256", payload_hash))
    token = credentials.session_token
    if token and sign_session_token:
        headers.append(("X-Amz-Security-Token", token))
    canonical, signed = canonical_request(method, path, params, headers, payload_hash)
    scope = credential_scope(amz_date[:8], region, service)
    to_sign = string_to_sign(amz_date, scope, canonical)
    key = signing_key(credentials.secret_access_key, amz_date[:8], region, service)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    if token and not sign_session_token:
        headers.append(("X-Amz-Security-Token", token))
    headers.append(("Authorization", "%s Credential=%s/%s, SignedHeaders=%s, Signature=%s"
                    % (SIGV4_ALGORITHM, credentials.access_key_id, scope, signed, signature)))
    query = canonical_query_string(params)
    target = uri_encode(path, keep_slash=True) + ("?" + query if query else "")
    return SignedRequest(target, headers, canonical, to_sign, signature)


def sigv4_presign(method, host, path, params=(), *, credentials, region, service, amz_date,
                  expires, scheme="https"):
    """A presigned URL (S3 API Reference, "Authenticating Requests: Using Query
    Parameters"): the signature and its scope ride in the query, only Host is
    signed, and the payload is UNSIGNED-PAYLOAD. Valid for `expires` seconds."""
    _check_amz_date(amz_date)
    if not 1 <= expires <= SIGV4_MAX_EXPIRES:
        raise ValueError("A presigned URL lives from 1 second to 7 days, not %r seconds." % (expires,))
    scope = credential_scope(amz_date[:8], region, service)
    params = list(params) + [
        ("X-Amz-Algorithm", SIGV4_ALGORITHM),
        ("X-Amz-Credential", "%s/%s" % (credentials.access_key_id, scope)),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(int(expires))),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if credentials.session_token:
        params.append(("X-Amz-Security-Token", credentials.session_token))
    canonical, _ = canonical_request(method, path, params, [("Host", host)], UNSIGNED_PAYLOAD)
    to_sign = string_to_sign(amz_date, scope, canonical)
    key = signing_key(credentials.secret_access_key, amz_date[:8], region, service)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return "%s://%s%s?%s&X-Amz-Signature=%s" % (scheme, host, uri_encode(path, keep_slash=True),
                                                canonical_query_string(params), signature)


# Configuration ----------------------------------------------------------------
#
# BACKUP_URL names where backups go:
#   s3://BUCKET/PREFIX   Amazon S3, or any S3-compatible store through an endpoint;
#                        the variables are those the AWS CLI reads (AWS CLI User
#                        Guide, "Environment variables to configure the AWS CLI")
#   https://HOST/PATH/   a PUT of each file to that URL plus its name (WebDAV, a
#                        plain HTTPS store), with optional user:password@ (Basic auth)
#   https://…?X-Amz-Signature=…  a presigned URL: each file is PUT to it as it is

_BUCKET = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,253}[A-Za-z0-9]\Z")
# Bucket names fit for virtual-hosted-style addressing over TLS (S3 User Guide,
# "Bucket naming rules"); others (dots break the *.s3 certificate) use path style.
_DNS_BUCKET = re.compile(r"\A[a-z0-9](?:[a-z0-9-]{1,61})[a-z0-9]\Z")
_REGION = re.compile(r"\A[a-z0-9][a-z0-9-]{0,62}\Z")
_BACKUP_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _first_set(environ, *names):
    for name in names:
        value = (environ.get(name) or "").strip()
        if value:
            return name, value
    return None, None


@dataclass(frozen=True)
class S3Target:
    bucket: str
    prefix: str                 # "" or ends with "/"
    region: str
    credentials: AwsCredentials = field(repr=False)
    scheme: str = "https"       # http only through an explicit endpoint
    host: str = ""
    port: int = 443
    base_path: str = ""         # an endpoint's own path ("/s3"), or ""
    path_style: bool = False    # /BUCKET/KEY on the endpoint, rather than BUCKET.host/KEY
    endpoint: str = None        # the endpoint as configured, for messages

    supports_retention = True

    @property
    def host_header(self):
        return _host_header(self.scheme, self.host, self.port)

    def object_path(self, key):
        return self.bucket_path().rstrip("/") + "/" + key

    def bucket_path(self):
        if self.path_style:
            return self.base_path + "/" + self.bucket
        return self.base_path + "/"

    def describe(self):
        where = self.endpoint or self.region
        return "s3://%s/%s (%s)" % (self.bucket, self.prefix, where)


@dataclass(frozen=True)
class HttpsTarget:
    host: str
    port: int
    path: str                   # the collection's path, encoded as given; or the presigned object's
    query: str = field(default="", repr=False)  # kept as given (a presigned URL's signature lives here)
    username: str = None
    password: str = field(default=None, repr=False)
    presigned: bool = False     # the URL names one object: each file is PUT to it as it is

    scheme = "https"
    supports_retention = False

    @property
    def host_header(self):
        return _host_header(self.scheme, self.host, self.port)

    def target_for(self, name):
        if self.presigned:
            path = self.path
        else:
            path = self.path + ("" if self.path.endswith("/") else "/") + uri_encode(name)
        return path + ("?" + self.query if self.query else "")

    def describe(self):
        return "https://%s%s" % (self.host_header, self.path)


def _host_header(scheme, host, port):
    shown = "[%s]" % host if ":" in host else host
    default = 443 if scheme == "https" else 80
    return shown if port == default else "%s:%d" % (shown, port)


def parse_backup_url(url, environ=None):
    """BACKUP_URL and the AWS_* variables as an S3Target or an HttpsTarget.

    Raises OffsiteConfigError with a sentence that says what to fix. `environ`
    defaults to os.environ; only the variables named here are read.
    """
    environ = os.environ if environ is None else environ
    url = (url or "").strip()
    if not url:
        raise OffsiteConfigError("BACKUP_URL is empty: give s3://BUCKET/PREFIX or https://HOST/PATH/.")
    if _CONTROL.search(url):
        raise OffsiteConfigError("BACKUP_URL has a control character in it.")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "s3":
        return _parse_s3_url(url, environ)
    if scheme == "https":
        return _parse_https_url(url)
    if scheme == "http":
        raise OffsiteConfigError("BACKUP_URL must use https:// (backups would cross the network in clear); "
                                 "for a store on this network, use s3:// with AWS_ENDPOINT_URL_S3.")
    raise OffsiteConfigError("BACKUP_URL must start with s3:// or https://, not %r." % url.split("/", 1)[0])


def _parse_s3_url(url, environ):
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise OffsiteConfigError("BACKUP_URL s3://BUCKET/PREFIX takes no ?query or #fragment.")
    if "@" in parts.netloc:
        raise OffsiteConfigError("BACKUP_URL s3:// takes no credentials: set AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY instead.")
    bucket = parts.netloc
    if not bucket:
        raise OffsiteConfigError("BACKUP_URL s3:// names no bucket: write s3://BUCKET/PREFIX.")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise OffsiteConfigError("%r is not a bucket name: letters, digits, '.', '-' and '_', "
                                 "3 to 255 of them, starting and ending with a letter or digit." % bucket)
    prefix = parts.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if len(prefix.encode("utf-8")) > S3_MAX_KEY_BYTES - OFFSITE_NAME_MAX_BYTES:
        raise OffsiteConfigError("The prefix in BACKUP_URL is too long for S3 keys (1,024 bytes with the name).")

    access_name, access_key = _first_set(environ, "AWS_ACCESS_KEY_ID")
    secret_name, secret_key = _first_set(environ, "AWS_SECRET_ACCESS_KEY")
    missing = [name for name, value in (("AWS_ACCESS_KEY_ID", access_key),
                                        ("AWS_SECRET_ACCESS_KEY", secret_key)) if not value]
    if missing:
        raise OffsiteConfigError("BACKUP_URL is %s, but %s %s not set: S3 needs an access key and its secret."
                                 % ("s3://%s/%s" % (bucket, prefix), " and ".join(missing),
                                    "is" if len(missing) == 1 else "are"))
    _, token = _first_set(environ, "AWS_SESSION_TOKEN")
    credentials = AwsCredentials(access_key, secret_key, token)

    region_name, region = _first_set(environ, "AWS_REGION", "AWS_DEFAULT_REGION")
    region = region or OFFSITE_DEFAULT_REGION
    if not _REGION.match(region):
        raise OffsiteConfigError("%s=%r is not a region name (like eu-west-1)." % (region_name, region))

    endpoint_name, endpoint = _first_set(environ, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    if endpoint:
        # An S3-compatible store (MinIO, Ceph, Garage, R2, ...): path-style
        # addressing, since such stores rarely have a DNS name per bucket.
        ep = urllib.parse.urlsplit(endpoint)
        try:
            port = ep.port
        except ValueError:
            raise OffsiteConfigError("%s=%r has a bad port." % (endpoint_name, endpoint)) from None
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise OffsiteConfigError("%s must be http(s)://HOST[:PORT], not %r." % (endpoint_name, endpoint))
        if ep.query or ep.fragment or "@" in ep.netloc:
            raise OffsiteConfigError("%s takes no credentials, ?query or #fragment." % endpoint_name)
        return S3Target(bucket, prefix, region, credentials, scheme=ep.scheme, host=ep.hostname,
                        port=port or (443 if ep.scheme == "https" else 80), base_path=ep.path.rstrip("/"),
                        path_style=True, endpoint="%s://%s" % (ep.scheme, ep.netloc))
    # Amazon S3 itself: the regional endpoint, with the bucket in the host name
    # (virtual-hosted style) when its name allows (S3 User Guide, "Virtual hosting
    # of buckets"). The China regions live under amazonaws.com.cn.
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    host = "s3.%s.%s" % (region, suffix)
    if _DNS_BUCKET.match(bucket):
        return S3Target(bucket, prefix, region, credentials, host="%s.%s" % (bucket, host))
    return S3Target(bucket, prefix, region, credentials, host=host, path_style=True)


def _parse_https_url(url):
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or 443
    except ValueError:
        raise OffsiteConfigError("BACKUP_URL has a bad port.") from None
    if not parts.hostname:
        raise OffsiteConfigError("BACKUP_URL https:// names no host.")
    if parts.fragment:
        raise OffsiteConfigError("BACKUP_URL takes no #fragment.")
    if any(c in url for c in " \"<>\\^`{|}"):
        raise OffsiteConfigError("BACKUP_URL has characters a URL must encode (a space, a quote, ...).")
    query_names = {name.lower() for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)}
    presigned = bool(query_names & {"x-amz-signature", "signature"})
    username = password = None
    if parts.username is not None:
        if presigned:
            raise OffsiteConfigError("BACKUP_URL is a presigned URL: it takes no user:password@.")
        username = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
    return HttpsTarget(parts.hostname, port, parts.path or "/", parts.query, username, password, presigned)


def check_backup_name(name):
    """A backup's name becomes the last part of its key or URL: one plain file name."""
    if not isinstance(name, str) or not _BACKUP_NAME.match(name) \
            or len(name.encode("utf-8")) > OFFSITE_NAME_MAX_BYTES:
        raise ValueError("%r is not a backup name: letters, digits, '.', '_', '+' and '-', starting "
                         "with a letter or digit, at most %d of them." % (name, OFFSITE_NAME_MAX_BYTES))
    return name


# Transport --------------------------------------------------------------------

class Cancellation:
    """Stops an off-site transfer from another thread.

    cancel() is safe from any thread (the event loop's, a signal handler's): the
    worker sees it before its next block, during a wait between attempts, and
    within a socket operation, whose socket cancel() shuts down. The transfer
    then ends with OffsiteCancelled, after aborting a multipart upload.
    """

    def __init__(self):
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._sockets = set()

    def cancel(self):
        self._event.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                # The plain socket's shutdown, even for a TLS socket: it wakes a
                # blocked send or recv without touching the TLS state another
                # thread is using.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def cancelled(self):
        return self._event.is_set()

    def check(self):
        if self._event.is_set():
            raise OffsiteCancelled("The off-site transfer was cancelled.")

    def wait(self, seconds):
        """Sleep, or raise OffsiteCancelled as soon as cancel() is called."""
        if self._event.wait(max(0.0, seconds)):
            self.check()

    def _track(self, sock):
        with self._lock:
            self._sockets.add(sock)
        self.check()  # a cancel() just before the socket was tracked

    def _untrack(self, sock):
        with self._lock:
            self._sockets.discard(sock)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = OFFSITE_ATTEMPTS
    base_delay: float = OFFSITE_BACKOFF_BASE
    max_delay: float = OFFSITE_BACKOFF_MAX
    retry_after_max: float = OFFSITE_RETRY_AFTER_MAX


def retry_delay(policy, failures, retry_after=None, rnd=None):
    """Seconds to wait after the `failures`-th failed attempt: exponential backoff
    with full jitter (a uniform wait up to base * 2^(failures-1), capped), as the
    AWS SDKs do ("Retry behavior", AWS SDKs and Tools Reference Guide), so many
    clients failing together don't come back together. A server's Retry-After
    (RFC 9110 §10.2.3) is a floor, itself capped."""
    if rnd is None:
        import random
        rnd = random.random
    ceiling = min(policy.max_delay, policy.base_delay * 2 ** max(0, failures - 1))
    delay = ceiling * rnd()
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.retry_after_max))
    return delay


@dataclass
class _Response:
    status: int
    reason: str
    headers: object           # http.client.HTTPMessage
    body: bytes


class _Retry(Exception):
    """One attempt failed in a way another might not: what happened, and a
    server's Retry-After when it gave one."""

    def __init__(self, message, status=None, code=None, retry_after=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


@dataclass
class _Body:
    """A request body: bytes in memory, or `length` bytes of an open file from
    `offset`, read block by block on every attempt (never whole)."""
    data: bytes = None
    fileobj: object = None
    offset: int = 0
    length: int = 0

    def __len__(self):
        return len(self.data) if self.data is not None else self.length


class _Connection:
    """One keep-alive connection to the target's host, reopened after a failure."""

    def __init__(self, scheme, host, port, ssl_context, timeout, cancellation, block):
        self.scheme, self.host, self.port = scheme, host, port
        self.ssl_context, self.timeout = ssl_context, timeout
        self.cancellation = cancellation
        self.block = block
        self.conn = None
        self.reused = False     # the last exchange began on a connection that had served before

    def close(self):
        if self.conn is not None:
            if self.conn.sock is not None:
                self.cancellation._untrack(self.conn.sock)
            self.conn.close()
            self.conn = None

    def _open(self):
        import http.client
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self.conn = conn
        conn.connect()
        self.cancellation._track(conn.sock)
        return conn

    def exchange(self, method, target, headers, body, on_sent, limit):
        """Send one request and read its answer (at most `limit` bytes of body)."""
        import http.client
        self.reused = self.conn is not None
        conn = self.conn or self._open()
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        try:
            conn.endheaders()
            if body is not None:
                self._send_body(conn, body, on_sent)
        except OffsiteCancelled:
            raise
        except OSError as error:
            # A server may answer before it has read the whole body (a 403, a 413)
            # and close the connection: read that answer if there is one.
            if self.cancellation.cancelled:
                raise
            try:
                response = conn.getresponse()
            except (OSError, http.client.HTTPException):
                raise error from None
            return self._finish(response, limit)
        return self._finish(conn.getresponse(), limit)

    def _send_body(self, conn, body, on_sent):
        if body.data is not None:
            self.cancellation.check()
            conn.send(body.data)
            on_sent(len(body.data))
            return
        view = memoryview(self.block)
        body.fileobj.seek(body.offset)
        remaining = body.length
        while remaining:
            self.cancellation.check()
            count = body.fileobj.readinto(view[:min(len(view), remaining)])
            if not count:
                raise OffsiteFailed("The file got shorter while it was being sent.")
            conn.send(view[:count])
            remaining -= count
            on_sent(count)

    def _finish(self, response, limit):
        if not 200 <= response.status < 300:
            limit = min(limit, OFFSITE_ERROR_BODY_MAX_BYTES)
        data = response.read(limit + 1)
        if len(data) > limit or not response.isclosed():
            # More than we read is left: the connection can't carry another request.
            if 200 <= response.status < 300:
                self.close()
                raise OffsiteFailed("The answer was longer than %d bytes." % limit, status=response.status)
            data = data[:limit]
            self.close()
        elif response.will_close:
            self.close()
        return _Response(response.status, response.reason, response.headers, data)


def _sha256_of(fileobj, offset, length, block, cancellation):
    """The payload hash of a file's range, read once before it is sent, so the
    store checks what it received against what is on disk."""
    digest = hashlib.sha256()
    view = memoryview(block)
    fileobj.seek(offset)
    remaining = length
    while remaining:
        cancellation.check()
        count = fileobj.readinto(view[:min(len(view), remaining)])
        if not count:
            raise OffsiteFailed("The file got shorter while it was being read.")
        digest.update(view[:count])
        remaining -= count
    return digest.hexdigest()


def _local(tag):
    return tag.rsplit("}", 1)[-1]


def _child_text(element, name, default=None):
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return default


def _parse_xml(body):
    """An S3 answer as an element. S3 never sends a DOCTYPE, so one is refused
    rather than expanded (entity expansion could blow up memory)."""
    import xml.etree.ElementTree as ElementTree
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise ValueError("a DOCTYPE in an S3 answer")
    return ElementTree.fromstring(body)


def _s3_error(body):
    """(Code, Message) of an S3 <Error> document (S3 API Reference, "Error
    responses"), or (None, None)."""
    import xml.etree.ElementTree as ElementTree
    try:
        root = _parse_xml(body)
    except (ValueError, ElementTree.ParseError):
        return None, None
    if _local(root.tag) != "Error":
        return None, None
    code, message = _child_text(root, "Code"), _child_text(root, "Message")
    return (_printable(code) or None) if code else None, _printable(message) if message else None


def _printable(text):
    """A server's words for a message or a log line: one line, bounded."""
    text = _CONTROL.sub(" ", text or "").strip()
    if len(text) > OFFSITE_SERVER_TEXT_MAX_CHARS:
        text = text[:OFFSITE_SERVER_TEXT_MAX_CHARS] + "\u2026"
    return text


def _parse_s3_time(text):
    """ListObjectsV2's LastModified (2009-10-12T17:50:30.000Z) as a Unix time."""
    match = re.match(r"\A(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z\Z", (text or "").strip())
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = float("0." + match.group(7)) if match.group(7) else 0.0
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) + fraction


def _plan_parts(size, part_bytes):
    """(number, offset, length) of each part. The part grows past `part_bytes`,
    in whole MiB, when 10,000 parts could not hold the file."""
    if size > S3_MAX_OBJECT_BYTES:
        raise OffsiteFailed("A file of %d bytes is larger than S3 allows (5 TiB)." % size)
    mib = 1024 * 1024
    part = max(part_bytes, math.ceil(size / S3_MAX_PARTS / mib) * mib)
    count = max(1, math.ceil(size / part))
    return [(n + 1, n * part, min(part, size - n * part)) for n in range(count)]


# The client -------------------------------------------------------------------

@dataclass(frozen=True)
class UploadResult:
    name: str
    location: str          # s3://bucket/key, or the https URL without its query
    size: int
    parts: int             # 0 for a single PUT
    etag: str = None


@dataclass(frozen=True)
class RemoteBackup:
    name: str              # relative to the prefix
    size: int
    modified: float        # Unix time, as the store reports it
    etag: str = None


class OffsiteClient:
    """Uploads, lists and deletes backups at one target. Blocking: call it from
    a worker thread. Every method takes an optional Cancellation; a client
    holds no connection between calls, so one client may serve several threads.

        client = OffsiteClient(parse_backup_url(os.environ["BACKUP_URL"]))
        client.upload("storage/backups/x.tar", "x.tar", progress=print, cancellation=c)
        for backup in client.list_backups(): ...
        client.delete_backup("old.tar")
    """

    def __init__(self, target, *, part_bytes=OFFSITE_PART_BYTES, retry=RetryPolicy(),
                 timeout=OFFSITE_SOCKET_TIMEOUT, sign_payload=True, ssl_context=None,
                 clock=time.time, rnd=None, list_page_keys=S3_LIST_PAGE_KEYS):
        if not S3_MIN_PART_BYTES <= part_bytes <= S3_MAX_PART_BYTES:
            raise ValueError("A part is from 5 MiB to 5 GiB (S3's limits), not %d bytes." % part_bytes)
        if not 1 <= retry.attempts:
            raise ValueError("At least one attempt.")
        if not 1 <= list_page_keys <= S3_LIST_PAGE_KEYS:
            raise ValueError("A listing page is 1 to 1,000 keys.")
        self.target = target
        self.part_bytes = part_bytes
        self.retry = retry
        self.timeout = timeout
        self.sign_payload = sign_payload
        # The system's CA store; OpenSSL also reads SSL_CERT_FILE and SSL_CERT_DIR.
        import random
        import ssl
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.clock = clock
        self.rnd = rnd or random.random
        self.list_page_keys = list_page_keys

    # Public operations.

    def upload(self, path, name, *, progress=None, cancellation=None):
        """Send the file at `path` as `name` (under the prefix, or after the URL).

        `progress(done, total)` is called from this thread after every block
        sent; `done` goes back when a part is sent again after a failure.
        """
        check_backup_name(name)
        cancellation = cancellation or Cancellation()
        cancellation.check()
        with open(path, "rb", buffering=0) as fileobj:
            size = os.fstat(fileobj.fileno()).st_size
            if isinstance(self.target, S3Target):
                return self._upload_s3(fileobj, size, name, progress, cancellation)
            return self._upload_https(fileobj, size, name, progress, cancellation)

    def list_backups(self, *, cancellation=None):
        """The objects right under the prefix (not in "folders" below it), oldest first."""
        target = self._s3_only("list backups")
        cancellation = cancellation or Cancellation()
        found, token = [], None
        with self._session(cancellation) as connection:
            for _ in range(OFFSITE_LIST_MAX_PAGES):
                params = [("list-type", "2"), ("prefix", target.prefix), ("delimiter", "/"),
                          ("max-keys", str(self.list_page_keys))]
                if token is not None:
                    params.append(("continuation-token", token))
                response = self._s3_request(connection, "GET", target.bucket_path(), params,
                                            what="ListObjectsV2 s3://%s/%s" % (target.bucket, target.prefix),
                                            limit=OFFSITE_RESPONSE_MAX_BYTES)
                root = self._xml(response, "ListObjectsV2")
                for item in root:
                    if _local(item.tag) != "Contents":
                        continue
                    key = _child_text(item, "Key", "")
                    name = key[len(target.prefix):] if key.startswith(target.prefix) else ""
                    if not name or "/" in name:
                        continue
                    try:
                        size = int(_child_text(item, "Size", "0"))
                    except ValueError:
                        size = 0
                    found.append(RemoteBackup(name, size, _parse_s3_time(_child_text(item, "LastModified")),
                                              _child_text(item, "ETag")))
                if _child_text(root, "IsTruncated", "false").strip().lower() != "true":
                    break
                next_token = _child_text(root, "NextContinuationToken")
                if not next_token or next_token == token:
                    raise OffsiteFailed("ListObjectsV2 said there was more but gave no new continuation token.")
                token = next_token
            else:
                raise OffsiteFailed("More than %d pages of objects under s3://%s/%s."
                                    % (OFFSITE_LIST_MAX_PAGES, target.bucket, target.prefix))
        found.sort(key=lambda backup: (backup.modified or 0, backup.name))
        return found

    def delete_backup(self, name, *, cancellation=None):
        """Delete one backup; deleting one that is already gone succeeds."""
        target = self._s3_only("delete backups")
        check_backup_name(name)
        key = target.prefix + name
        with self._session(cancellation or Cancellation()) as connection:
            self._s3_request(connection, "DELETE", target.object_path(key), (), ok=(200, 204),
                             gone_ok="NoSuchKey", what="DeleteObject s3://%s/%s" % (target.bucket, key))

    def presigned_url(self, name, expires, method="GET"):
        """A URL that lets its holder GET (or PUT) one backup for `expires` seconds."""
        target = self._s3_only("presign URLs")
        check_backup_name(name)
        return sigv4_presign(method, target.host_header, target.object_path(target.prefix + name),
                             credentials=target.credentials, region=target.region, service="s3",
                             amz_date=amz_date(self.clock()), expires=expires, scheme=target.scheme)

    # S3.

    def _s3_only(self, doing):
        if not isinstance(self.target, S3Target):
            raise OffsiteUnsupported(
                "Can't %s at %s: an https:// target only takes PUTs, so keep old backups in check on the "
                "server itself (a lifecycle rule, a cleanup job); only s3:// targets apply retention here."
                % (doing, self.target.describe()))
        return self.target

    def _upload_s3(self, fileobj, size, name, progress, cancellation):
        target = self.target
        key = target.prefix + name
        path = target.object_path(key)
        where = "s3://%s/%s" % (target.bucket, key)
        block = bytearray(OFFSITE_BLOCK_BYTES)
        report = progress or (lambda done, total: None)
        with self._session(cancellation, block) as connection:
            if size <= self.part_bytes:
                payload_hash = self._payload_hash(fileobj, 0, size, block, cancellation)
                response = self._s3_request(
                    connection, "PUT", path, (), body=_Body(fileobj=fileobj, offset=0, length=size),
                    payload_hash=payload_hash, headers=[("Content-Type", OFFSITE_CONTENT_TYPE)],
                    what="PutObject " + where, on_sent=self._progress(report, 0, size))
                report(size, size)
                return UploadResult(name, where, size, 0, response.headers.get("ETag"))

            response = self._s3_request(connection, "POST", path, [("uploads", "")], body=_Body(data=b""),
                                        headers=[("Content-Type", OFFSITE_CONTENT_TYPE)],
                                        what="CreateMultipartUpload " + where)
            upload_id = _child_text(self._xml(response, "CreateMultipartUpload"), "UploadId")
            if not upload_id:
                raise OffsiteFailed("CreateMultipartUpload %s gave no UploadId." % where)
            try:
                etags = []
                for number, offset, length in _plan_parts(size, self.part_bytes):
                    payload_hash = self._payload_hash(fileobj, offset, length, block, cancellation)
                    response = self._s3_request(
                        connection, "PUT", path, [("partNumber", str(number)), ("uploadId", upload_id)],
                        body=_Body(fileobj=fileobj, offset=offset, length=length), payload_hash=payload_hash,
                        what="UploadPart %d of %s" % (number, where), on_sent=self._progress(report, offset, size))
                    etag = response.headers.get("ETag")
                    if not etag:
                        raise OffsiteFailed("UploadPart %d of %s gave no ETag." % (number, where))
                    etags.append((number, etag))
                if os.fstat(fileobj.fileno()).st_size != size:
                    raise OffsiteFailed("%s changed size while it was being uploaded." % name)
                response = self._s3_request(
                    connection, "POST", path, [("uploadId", upload_id)], body=_Body(data=_complete_xml(etags)),
                    headers=[("Content-Type", "application/xml")], what="CompleteMultipartUpload " + where,
                    check=_check_complete)
            except BaseException:
                self._abort(path, upload_id, where)
                raise
        report(size, size)
        return UploadResult(name, where, size, len(etags), response.headers.get("ETag")
                            or _child_text(_parse_xml(response.body), "ETag"))

    def _abort(self, path, upload_id, where):
        """AbortMultipartUpload, so the parts sent don't stay (and cost) forever;
        best effort, on a fresh connection that a cancellation doesn't stop."""
        try:
            with self._session(Cancellation(), attempts=OFFSITE_ABORT_ATTEMPTS,
                               timeout=min(self.timeout, OFFSITE_ABORT_TIMEOUT)) as connection:
                self._s3_request(connection, "DELETE", path, [("uploadId", upload_id)], ok=(200, 204),
                                 gone_ok="NoSuchUpload", what="AbortMultipartUpload " + where)
        except OffsiteError as error:
            log.warning("offsite: could not abort the multipart upload of %s (%s); a lifecycle rule "
                        "for incomplete multipart uploads will remove its parts", where, error)

    def _payload_hash(self, fileobj, offset, length, block, cancellation):
        if not self.sign_payload:
            return UNSIGNED_PAYLOAD
        return _sha256_of(fileobj, offset, length, block, cancellation)

    def _s3_request(self, connection, method, path, params, *, what, body=None, payload_hash=None,
                    headers=(), ok=(200,), gone_ok=None, on_sent=None, limit=OFFSITE_ERROR_BODY_MAX_BYTES,
                    check=None):
        target = self.target
        if payload_hash is None:
            payload_hash = hashlib.sha256(body.data).hexdigest() if body is not None else EMPTY_SHA256

        def build():
            signed = sigv4_sign(method, path, params, [("Host", target.host_header)] + list(headers),
                                credentials=target.credentials, region=target.region, service="s3",
                                amz_date=amz_date(self.clock()), payload_hash=payload_hash)
            return signed.target, signed.headers

        return self._exchange(connection, method, build, body, what=what, ok=ok, gone_ok=gone_ok,
                              on_sent=on_sent, limit=limit, check=check)

    def _xml(self, response, what):
        import xml.etree.ElementTree as ElementTree
        try:
            return _parse_xml(response.body)
        except (ValueError, ElementTree.ParseError):
            raise OffsiteFailed("%s answered with something other than XML." % what,
                                status=response.status) from None

    # HTTPS PUT.

    def _upload_https(self, fileobj, size, name, progress, cancellation):
        target = self.target
        request_target = target.target_for(name)
        location = "https://%s%s" % (target.host_header, request_target.split("?", 1)[0])
        headers = [("Host", target.host_header)]
        if not target.presigned:
            # A presigned URL may have signed the Content-Type it expects: send none.
            headers.append(("Content-Type", OFFSITE_CONTENT_TYPE))
        if target.username is not None:
            credentials = ("%s:%s" % (target.username, target.password)).encode("utf-8")
            headers.append(("Authorization", "Basic " + base64.b64encode(credentials).decode("ascii")))
        report = progress or (lambda done, total: None)
        with self._session(cancellation, bytearray(OFFSITE_BLOCK_BYTES)) as connection:
            response = self._exchange(connection, "PUT", lambda: (request_target, headers),
                                      _Body(fileobj=fileobj, offset=0, length=size), what="PUT " + location,
                                      ok=(200, 201, 204), on_sent=self._progress(report, 0, size),
                                      limit=OFFSITE_ERROR_BODY_MAX_BYTES)
        report(size, size)
        return UploadResult(name, location, size, 0, response.headers.get("ETag"))

    # Requests, retried.

    def _session(self, cancellation, block=None, attempts=None, timeout=None):
        return _Session(self, cancellation, block or bytearray(OFFSITE_BLOCK_BYTES), attempts,
                        timeout or self.timeout)

    @staticmethod
    def _progress(report, base, total):
        sent = [0]

        def on_sent(count):
            sent[0] += count
            report(base + sent[0], total)

        def restart():
            sent[0] = 0

        on_sent.restart = restart
        return on_sent

    def _exchange(self, connection, method, build, body, *, what, ok, gone_ok=None, on_sent=None, limit,
                  check=None):
        """One request, tried up to the policy's attempts: signed afresh each time
        (a signature is only good for 15 minutes around its date), and its body
        read from disk again."""
        import http.client
        import ssl
        attempts = connection.attempts or self.retry.attempts
        cancellation = connection.cancellation
        failures = 0
        stale_retried = False
        while True:
            cancellation.check()
            if on_sent is not None:
                on_sent.restart()
            request_target, headers = build()
            headers = list(headers) + [("User-Agent", OFFSITE_USER_AGENT)]
            try:
                response = connection.transport.exchange(method, request_target, headers, body,
                                                         on_sent or (lambda count: None), limit)
                return self._judge(response, what, ok, gone_ok, check)
            except _Retry as error:
                connection.transport.close()
                failure, retry_after = error, error.retry_after
                status, code = error.status, error.code
            except OffsiteError:
                connection.transport.close()
                raise
            except ssl.SSLCertVerificationError as error:
                connection.transport.close()
                raise OffsiteFailed(
                    "%s: the TLS certificate of %s could not be verified (%s). Install its CA in the "
                    "system's store, or point SSL_CERT_FILE at it." % (what, connection.transport.host,
                                                                       error.verify_message or error.reason)
                ) from None
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError) as error:
                connection.transport.close()
                cancellation.check()
                failure, retry_after, status, code = error, None, None, None
            except ssl.SSLError as error:
                connection.transport.close()
                cancellation.check()
                raise OffsiteFailed("%s: TLS failed (%s)." % (what, error.reason or error)) from None
            except (OSError, http.client.HTTPException) as error:
                # Refused, reset, timed out, closed early, a name that did not
                # resolve (DNS can be briefly down): all worth another try.
                reused = connection.transport.reused
                connection.transport.close()
                cancellation.check()
                if reused and not stale_retried and isinstance(error, (ConnectionResetError, BrokenPipeError)):
                    # A kept-alive connection the server had closed meanwhile
                    # (RFC 9112 §9.3.1): try again at once on a new one.
                    stale_retried = True
                    continue
                failure, retry_after, status, code = error, None, None, None
            failures += 1
            reason = str(failure) or type(failure).__name__
            if failures >= attempts:
                raise OffsiteFailed("%s failed after %d attempts: %s" % (what, failures, reason),
                                    status=status, code=code, attempts=failures, retryable=True)
            delay = retry_delay(self.retry, failures, retry_after, self.rnd)
            log.warning("offsite: %s failed (%s); attempt %d of %d in %.1f s",
                        what, reason, failures + 1, attempts, delay)
            cancellation.wait(delay)

    def _judge(self, response, what, ok, gone_ok, check):
        status = response.status
        if status in ok:
            if check is not None:
                check(response)
            return response
        code, message = _s3_error(response.body)
        if status == 404 and gone_ok and code == gone_ok:
            return response  # already gone: what a DELETE wanted
        detail = "%d %s" % (status, _printable(response.reason)) + (": %s" % code if code else "") \
            + (" (%s)" % message if message else "")
        if status in OFFSITE_RETRYABLE_STATUSES or (code in S3_RETRYABLE_CODES and status < 500):
            raise _Retry(detail, status, code,
                         retry_after_seconds(response.headers.get("Retry-After"), self.clock()))
        if code == "RequestTimeTooSkewed":
            detail += "; this machine's clock is off by more than 15 minutes"
        elif _REGION.match(response.headers.get("x-amz-bucket-region") or ""):
            # S3 names the bucket's region when it was asked in another one
            # (S3 API Reference, HeadBucket and "Error responses").
            detail += "; the bucket is in %s: set AWS_REGION=%s" % ((response.headers["x-amz-bucket-region"],) * 2)
        elif 300 <= status < 400 and response.headers.get("Location"):
            detail += "; the server redirects elsewhere (%s), fix the URL" % \
                _printable(response.headers.get("Location").split("?", 1)[0])
        raise OffsiteFailed("%s: %s" % (what, detail), status=status, code=code)


class _Session:
    """The connection one operation uses, closed when it ends."""

    def __init__(self, client, cancellation, block, attempts, timeout):
        target = client.target
        self.cancellation = cancellation
        self.attempts = attempts
        self.transport = _Connection(target.scheme, target.host, target.port, client.ssl_context,
                                     timeout, cancellation, block)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.transport.close()


def _complete_xml(etags):
    import xml.etree.ElementTree as ElementTree
    root = ElementTree.Element("CompleteMultipartUpload", xmlns=S3_XMLNS)
    for number, etag in etags:
        part = ElementTree.SubElement(root, "Part")
        ElementTree.SubElement(part, "PartNumber").text = str(number)
        ElementTree.SubElement(part, "ETag").text = etag
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def _check_complete(response):
    """CompleteMultipartUpload can answer 200 and still fail: the error is then
    in the body, and the request should be retried (S3 API Reference,
    CompleteMultipartUpload)."""
    import xml.etree.ElementTree as ElementTree
    try:
        root = _parse_xml(response.body)
    except (ValueError, ElementTree.ParseError):
        raise _Retry("CompleteMultipartUpload answered 200 without a readable result") from None
    if _local(root.tag) == "Error":
        code, message = _s3_error(response.body)
        if code in S3_RETRYABLE_CODES or code is None:
            raise _Retry("200 with an error: %s (%s)" % (code, message), response.status, code)
        raise OffsiteFailed("CompleteMultipartUpload: %s (%s)" % (code, message), status=response.status,
                            code=code)


class BackupSchedule:
    """Automatic backups while serving: one every config.backup_interval seconds into
    storage/backups/, then retention, then the off-site copy. The work runs on a
    thread of its own (SQLite's backup steps, hashing and file copies release the
    GIL), so the event loop only starts it and records how it ended. A failure is
    logged as an error, kept in backups/status.json, shown to administrators on the
    account page and in /up?detail=1, tried again sooner, and deletes nothing."""

    def __init__(self, app):
        self.app = app
        self.folder = backups_dir(app.config)
        self.status = read_backup_status(self.folder)
        self.running = None          # the future of the backup being written
        self.started_at = None
        self.loop = None
        self._timer = None
        self._executor = None
        self._cancel = None           # a threading.Event the backup's steps look at
        self._offsite_cancel = None   # a Cancellation for the off-site copy
        self._hashes = None
        self._stopped = False

    @property
    def interval(self):
        interval = self.app.config.backup_interval
        return parse_interval(BACKUP_DEFAULT_INTERVAL) if interval is None else interval

    def start(self, loop):
        self.loop = loop
        if not self.interval:
            return
        last = max((self.status.get("last_success") or {}).get("time", 0),
                   max((backup_time(name) or 0 for name in _listdir(self.folder)), default=0))
        self._schedule(max(BACKUP_START_DELAY, last + self.interval - time.time()))

    def _schedule(self, delay):
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, self.run_now)

    def run_now(self):
        """Start a backup now (unless one is running); the future of its work."""
        if self.running is not None:
            return self.running
        import concurrent.futures
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "campfire-backup")
        self._cancel = threading.Event()
        self._offsite_cancel = Cancellation()
        self.started_at = time.time()
        self.running = self.loop.run_in_executor(self._executor, self._work, self._cancel)
        self.running.add_done_callback(self._finished)
        return self.running

    def _work(self, cancel):
        """On the backup thread: write, check, record, prune. The status it recorded."""
        config = self.app.config
        if self._hashes is None:
            self._hashes = FileHashes(os.path.join(self.folder, BACKUP_HASHES_FILE))
        status = dict(read_backup_status(self.folder))
        try:
            result = write_backup(config, cancelled=cancel.is_set, hashes=self._hashes,
                                  step_pages=config.backup_step_pages)
        except BackupCancelled:
            raise
        except Exception as error:
            message = str(error) if isinstance(error, (BackupError, OSError)) else "%s: %s" % (
                type(error).__name__, error)
            log.error("BACKUP FAILED: %s (older backups are untouched)", message)
            if not isinstance(error, (BackupError, OSError)):
                log.error("%s", traceback.format_exc())
            status["last_failure"] = {"time": time.time(), "error": message}
            write_backup_status(self.folder, status)
            return status
        status["last_success"] = {"name": os.path.basename(result.path), "time": time.time(),
                                  "size": result.size, "seconds": round(result.seconds, 2)}
        write_backup_status(self.folder, status)
        log.info("backed up to %s (%d bytes) in %.1f s", result.path, result.size, result.seconds)
        try:
            deleted = prune_backups(self.folder, config.backup_keep or BACKUP_KEEP)
        except OSError as error:
            log.error("old backups could not be pruned: %s", error)
        else:
            if deleted:
                log.info("retention removed %d old backups: %s", len(deleted), ", ".join(deleted))
        if self.app.offsite is not None and not cancel.is_set():
            status["offsite"] = self._send_offsite(result.path, status.get("offsite") or {})
            write_backup_status(self.folder, status)
        return status

    def _send_offsite(self, archive, record):
        """On the backup thread: a self-contained copy of the archive to BACKUP_URL, then
        retention there (S3 only). The off-site part of the status."""
        client, name = self.app.offsite, os.path.basename(archive)
        where = client.target.describe()
        outgoing = os.path.join(self.folder, BACKUP_WORK_PREFIX + name)
        record = dict(record)
        try:
            self_contained_copy(archive, os.path.join(self.folder, BACKUP_CONTENT_DIR_NAME), outgoing,
                                cancelled=self._cancel.is_set)
            uploaded = client.upload(outgoing, name, cancellation=self._offsite_cancel)
            record["last_success"] = {"name": name, "time": time.time(), "location": where,
                                      "size": uploaded.size}
            log.info("backup %s copied to %s", name, where)
            if client.target.supports_retention:
                remote = {item.name: backup_time(item.name) for item in client.list_backups(
                    cancellation=self._offsite_cancel) if backup_time(item.name) is not None}
                remote[name] = backup_time(name) or time.time()
                for old in sorted(set(remote) - backups_to_keep(remote, self.app.config.backup_keep or BACKUP_KEEP)):
                    client.delete_backup(old, cancellation=self._offsite_cancel)
                    log.info("retention removed %s from %s", old, where)
            elif not record.get("retention_noted"):
                log.warning("%s can't list or delete: retention there is up to that server (a lifecycle rule, "
                            "a cleanup job)", where)
                record["retention_noted"] = True
        except (OffsiteCancelled, BackupCancelled):
            raise BackupCancelled("The off-site copy was stopped.") from None
        except (OffsiteError, BackupError, OSError) as error:
            log.error("OFF-SITE COPY FAILED: backup %s to %s: %s (the local backup is kept)", name, where, error)
            record["last_failure"] = {"time": time.time(), "error": str(error), "name": name}
        finally:
            with contextlib.suppress(OSError):
                os.unlink(outgoing)
        return record

    def _finished(self, future):
        self.running = None
        if future.cancelled() or isinstance(future.exception(), BackupCancelled):
            return
        error = future.exception()
        if error is not None:  # only a bug gets here: _work records every failure it expects
            log.error("backup failed:\n%s", "".join(traceback.format_exception(error)))
            self.status = dict(self.status, last_failure={"time": time.time(), "error": str(error)})
        else:
            self.status = future.result()
        if self.interval and not self._stopped:
            self._schedule(BACKUP_RETRY_AFTER_FAILURE if self.failed else self.interval)

    @property
    def failed(self):
        """Whether the latest backup failed (a later success clears it)."""
        failure = self.status.get("last_failure")
        return bool(failure) and failure["time"] >= (self.status.get("last_success") or {}).get("time", 0)

    def summary(self, now=None):
        """The state of backups as plain data, for /up?detail=1 and the account page."""
        now = time.time() if now is None else now
        success = self.status.get("last_success") or {}
        failure = self.status.get("last_failure") or {}
        return {
            "interval_seconds": self.interval,
            "running": self.running is not None,
            "last_success_at": _iso_seconds(success.get("time")),
            "last_success_age_seconds": round(now - success["time"]) if success.get("time") else None,
            "last_backup": success.get("name"),
            "last_size_bytes": success.get("size"),
            "last_failure_at": _iso_seconds(failure.get("time")),
            "last_error": failure.get("error"),
            "last_failed": self.failed,
            "ok": not self.failed and not self.offsite_failed,
            "offsite": self._offsite_summary(),
        }

    @property
    def offsite_failed(self):
        record = self.status.get("offsite") or {}
        failure = record.get("last_failure")
        return self.app.offsite is not None and bool(failure) and failure["time"] >= (
            record.get("last_success") or {}).get("time", 0)

    def _offsite_summary(self):
        if self.app.offsite is None:
            return None
        record = self.status.get("offsite") or {}
        success, failure = record.get("last_success") or {}, record.get("last_failure") or {}
        return {"target": self.app.offsite.target.describe(), "ok": not self.offsite_failed,
                "last_success_at": _iso_seconds(success.get("time")), "last_copy": success.get("name"),
                "last_failure_at": _iso_seconds(failure.get("time")), "last_error": failure.get("error")}

    async def stop(self):
        """Stop the timer; a backup being written is cancelled (its partial files removed)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        running = self.running
        if running is not None:
            self._cancel.set()
            self._offsite_cancel.cancel()
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(running), BACKUP_STOP_WAIT)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


def _listdir(folder):
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _iso_seconds(stamp):
    return None if not stamp else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


####
#### 18. The server
####
# A thin adapter: asyncio feeds bytes to HttpParser, hands each request to
# App.handle in order and writes the responses back.

def _error_bytes(status, message, date=None):
    body = plain_error_page(status, message).encode()
    return serialize_response(status, [("Content-Type", "text/html; charset=utf-8")], body,
                              keep_alive=False, date=date)


class BodyReader:
    """A streamed upload's body between the connection, which feed()s what arrives, and
    the handler, which awaits read(). Past UPLOAD_READ_AHEAD_BYTES unread, the
    socket stops being read until the handler catches up (its disk writes set the pace)."""

    def __init__(self, pause, resume):
        self._pause, self._resume = pause, resume
        self._chunks = collections.deque()
        self._buffered = 0
        self._ended = False
        self._error = None
        self._waiter = None
        self.paused = False

    def feed(self, data):
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= UPLOAD_READ_AHEAD_BYTES and not self.paused:
            self.paused = True
            self._pause()
        self._wake()

    def end(self):
        self._ended = True
        self._wake()

    def abort(self, error):
        self._error = error
        self._wake()

    def _wake(self):
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self):
        """The next piece of the body; b"" at its end. ConnectionError when the client left."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._ended:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        if self._error is not None:
            raise self._error
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self.paused and self._buffered < UPLOAD_READ_AHEAD_BYTES // 2:
            self.paused = False
            self._resume()
        return data


class HttpConnection(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.app = server.app
        self.transport = None
        self.parser = HttpParser(self.app.body_limit, self.app.upload_limit)
        self.streaming = None      # the BodyReader of an upload being received
        self.remote_addr = "0.0.0.0"
        self.deadline = 0.0
        self.head_deadline = None
        self.closing = False
        self.held = []
        self.upgraded = None       # the CableConnection once this is a WebSocket
        self.waiting = None        # the task of a handler that awaits (see App.handle)

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
        self.head_deadline = now + self.server.header_timeout
        self.deadline = self.head_deadline
        transport.set_write_buffer_limits(high=MAX_WRITE_BUFFER_BYTES)

    def connection_lost(self, exc):
        self.closing = True
        self.server.connections.discard(self)
        if self.streaming is not None:
            self.streaming.abort(ClientGone("The connection closed before the upload ended."))
            self.streaming = None
        if self.upgraded is not None:
            self.app.cable.connection_lost(self.upgraded)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        if not self.closing and (self.waiting is None or (self.streaming is not None and not self.streaming.paused)):
            self.transport.resume_reading()

    def data_received(self, data):
        if self.closing:
            return
        if self.upgraded is not None:
            try:
                self.upgraded.receive(data)
            except Exception:  # 1011 and a log line; the details stay here
                log.error("/cable connection failed:\n%s", traceback.format_exc())
                with contextlib.suppress(Exception):
                    self.upgraded.close(CLOSE_INTERNAL_ERROR)
                self.close()
            return
        self.parser.receive_data(data)
        try:
            if self.streaming is not None:
                self._feed_body()
                return
            self._process()
        except Exception:
            log.error("connection from %s failed:\n%s", self.remote_addr, traceback.format_exc())
            self.close()

    def _process(self):
        app, parser, transport = self.app, self.parser, self.transport
        while not self.closing and self.waiting is None:
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
            if request.streaming:
                request.body_reader = BodyReader(self._pause_upload, self._resume_upload)
            response = app.handle(request)
            if not isinstance(response, Response):
                if request.streaming:
                    self._stream_for(request, response)
                else:
                    self._wait_for(request, response)
                return
            if request.streaming:  # answered before its body was read: nothing can follow it
                request.keep_alive = False
            if not self._respond(request, response):
                return
            self.head_deadline = None
        if self.closing or self.waiting is not None:
            return
        now = self.server.loop.time()
        if not parser.has_partial_request:  # every request answered: the usual case
            self.head_deadline = None
            self.deadline = now + self.server.keepalive_timeout
        elif parser.reading_body:
            if parser.wants_continue():
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.deadline = now + BODY_IDLE_TIMEOUT
        else:
            if self.head_deadline is None:
                self.head_deadline = now + self.server.header_timeout
            self.deadline = self.head_deadline

    def _respond(self, request, response):
        """Write one response, or hold it for the group commit; False when this
        connection reads no further request (closed, closing, upgraded or sending a file)."""
        keep_alive = request.keep_alive and not self.server.stopping
        data = self.app.serialize(request, response, keep_alive)
        if response.upgrade is not None and response.status == 101:
            self._upgrade(data, response.upgrade)
            return False
        if response.file is not None:
            if request.method == "HEAD" or self.held:  # (behind held answers: rare enough to close after)
                response.file.file.close()
                if self.held:
                    self.held.append((_error_bytes(503, "Please try again."), False))
                    self.transport.pause_reading()
                    return False
                self.transport.write(data)
                if not keep_alive:
                    self.close()
                return keep_alive
            self._send_file(data, response.file, keep_alive)
            return False
        if self.app.db.batch_open or self.held:
            self.held.append((data, keep_alive))  # written once the group commit is durable
            self.server.holding.add(self)
        else:
            self.transport.write(data)
        if not keep_alive:
            if not self.held:
                self.close()
            else:
                self.transport.pause_reading()
            return False
        return True

    def _wait_for(self, request, pending):
        """A handler is waiting (for a password hash): read nothing more until it has
        answered, so pipelined requests are still answered in order."""
        self.transport.pause_reading()
        self.deadline = float("inf")  # the work it waits for is bounded (see App.off_loop)
        self.waiting = self.server.loop.create_task(pending)

        def answered(task):
            self.waiting = None
            if self.closing or task.cancelled():
                self.close()
                return
            if self._respond(request, task.result()):  # _handle_later never raises
                self.head_deadline = None
                self.transport.resume_reading()
                self._process()  # whatever arrived meanwhile
        self.waiting.add_done_callback(answered)

    def _send_file(self, head, body, keep_alive):
        """Write a file response: its head, then its bytes with sendfile(2) where the
        transport allows it (asyncio reads and writes in pieces otherwise, as over TLS).
        Nothing more is read until it is sent."""
        self.transport.pause_reading()
        self.transport.write(head)
        self.deadline = float("inf")  # a slow reader is paced by TCP; close() stops it
        loop = self.server.loop

        async def send():
            try:
                await loop.sendfile(self.transport, body.file, body.offset, body.length)
            finally:
                body.file.close()
        self.waiting = loop.create_task(send())

        def sent(task):
            self.waiting = None
            if self.closing or task.cancelled() or task.exception() is not None or not keep_alive:
                self.close()
                return
            self.head_deadline = None
            self.deadline = loop.time() + self.server.keepalive_timeout
            self.transport.resume_reading()
            self._process()
        self.waiting.add_done_callback(sent)

    def _stream_for(self, request, pending):
        """An upload's handler is running: the body goes to it as it arrives (_feed_body),
        and the connection reads nothing else until it has answered."""
        self.streaming = request.body_reader
        if request.headers.get("expect", "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.waiting = self.server.loop.create_task(pending)

        def answered(task):
            self.waiting = None
            if self.streaming is not None:  # answered before the body ended (an error): close after
                self.streaming = None
                request.keep_alive = False
            if self.closing or task.cancelled():
                self.close()
                return
            if self._respond(request, task.result()):
                self.head_deadline = None
                self.transport.resume_reading()
                self._process()
        self.waiting.add_done_callback(answered)
        self._feed_body()

    def _feed_body(self):
        reader, parser = self.streaming, self.parser
        data = parser.take_body()
        if data:
            reader.feed(data)
        if parser.body_done:
            self.streaming = None
            reader.end()
            self.transport.pause_reading()  # the next request waits for this one's answer
            self.deadline = float("inf")    # the handler's work is bounded (disk writes, one commit)
        elif not reader.paused:
            self.deadline = self.server.loop.time() + BODY_IDLE_TIMEOUT

    def _pause_upload(self):
        self.transport.pause_reading()
        self.deadline = float("inf")  # the wait is ours (the disk), not the client's

    def _resume_upload(self):
        if self.streaming is not None and not self.closing:
            self.transport.resume_reading()
            self.deadline = self.server.loop.time() + BODY_IDLE_TIMEOUT

    def _upgrade(self, handshake, upgrade):
        """Switch this connection to WebSocket: it belongs to the cable from now on."""
        self.transport.write(handshake)
        leftover = bytes(self.parser._buffer)
        self.parser = None
        self.deadline = float("inf")   # the cable's pings decide when a peer is gone
        self.transport.set_write_buffer_limits(high=MAX_CABLE_SEND_BUFFER * 2)
        self.upgraded = upgrade(self)
        if leftover:
            self.upgraded.receive(leftover)

    @property
    def idle(self):
        if self.upgraded is not None:
            return False
        return not self.held and self.waiting is None and not self.parser.has_partial_request

    def release(self, committed):
        """Write the responses held for a group commit (503s if it failed)."""
        held, self.held = self.held, []
        for data, keep_alive in held:
            if self.closing:
                return
            if not committed:
                self.transport.write(_error_bytes(503, "The change could not be saved; please try again."))
                self.close()
                return
            self.transport.write(data)
            if not keep_alive:
                self.close()
                return

    def close(self):
        if not self.closing:
            self.closing = True
            self.transport.close()


class RedirectConnection(asyncio.Protocol):
    """One connection to HTTP_REDIRECT_PORT: a head read (bounded in bytes and time),
    answered by https_redirect, then closed."""

    def __init__(self, redirector):
        self.redirector = redirector
        self.transport = None
        self.buffer = bytearray()
        self.timer = None
        self.done = False

    def connection_made(self, transport):
        self.transport = transport
        if len(self.redirector.connections) >= REDIRECT_MAX_CONNECTIONS:
            self.done = True
            transport.close()
            return
        self.redirector.connections.add(self)
        self.timer = self.redirector.loop.call_later(REDIRECT_HEAD_TIMEOUT, transport.close)

    def data_received(self, data):
        if self.done:
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 and len(self.buffer) <= REDIRECT_MAX_HEAD_BYTES:
            return
        self.done = True
        self.transport.pause_reading()
        if end < 0 or end + 4 > REDIRECT_MAX_HEAD_BYTES:
            self.transport.write(_error_bytes(431, "The request's head is too long."))
        else:
            self.transport.write(https_redirect(bytes(self.buffer[:end + 4]), self.redirector.https_port))
        self.buffer = None
        self.transport.close()

    def connection_lost(self, exc):
        self.redirector.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()


class HttpsRedirector:
    """HTTP_REDIRECT_PORT: a plain-HTTP listener that sends every request to the HTTPS port."""

    def __init__(self, host, port, https_port):
        self.host, self.port, self.https_port = host, port, https_port
        self.connections = set()
        self.loop = None
        self._server = None

    async def start(self):
        self.loop = asyncio.get_running_loop()
        try:
            self._server = await self.loop.create_server(lambda: RedirectConnection(self), self.host, self.port,
                                                         backlog=LISTEN_BACKLOG, reuse_address=True)
        except OSError as error:
            raise ConfigError("Cannot listen on %s:%d for HTTP_REDIRECT_PORT (%s)." % (
                self.host, self.port, error.strerror)) from error
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self):
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.transport.close()


class TlsCertificate:
    """The certificate and key served over HTTPS (TLS_CERT_PATH, TLS_KEY_PATH). On
    SIGHUP they are read again: new handshakes get the new pair, connections already
    open keep the one they shook hands with, and a pair that can't be loaded is
    logged while the one in use stays. The listening context hands each handshake
    to the current one from its server-name callback, which OpenSSL calls for every
    ClientHello, with or without the server_name extension (RFC 6066 §3)."""

    def __init__(self, cert_path, key_path):
        self.cert_path, self.key_path = cert_path, key_path
        self.context = self._load()      # the one the socket listens with
        self.current = self.context      # the one handshakes use
        self.context.sni_callback = self._choose

    def _load(self):
        import ssl  # loaded only when serving TLS: a faster start for everyone else
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert_path, self.key_path)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError("The TLS certificate or key could not be loaded (%s)." % error) from error
        return context

    def _choose(self, ssl_object, server_name, context):
        current = self.current
        if current is not context:
            ssl_object.context = current
        return None

    def reload(self):
        """Blocking (it reads two files): True when the new pair is in use."""
        try:
            context = self._load()
        except ConfigError as error:
            log.error("SIGHUP: %s The certificate in use is kept.", error)
            return False
        self.current = context
        log.info("SIGHUP: reloaded the TLS certificate %s", self.cert_path)
        return True


class Server:
    def __init__(self, app, host, port, tls=None):
        self.app = app
        self.host, self.port = host, port
        self.tls = tls
        self.ssl_context = tls.context if tls else None
        self.scheme = "https" if tls else "http"
        self.redirector = None
        self.connections = set()
        app.http_connections = self.connections
        self.holding = set()      # connections with responses waiting for the group commit
        self.stopping = False
        self.loop = None
        self._server = None
        self._sweeper = None
        self._disk_watch = None
        self._reloading = None        # the task of a SIGHUP's certificate reload
        self._batch_deadline = 0.0    # group commit: see flush_writes()
        self._batch_seen = 0
        self._handled_seen = self._handled_released = 0   # see release_memory_when_idle()
        self.memory_releases = 0      # how many times it gave memory back
        self._quiet_since = 0.0
        self.header_timeout, self.keepalive_timeout = app.config.header_timeout, app.config.keepalive_timeout
        self.max_connections = max(MIN_CONNECTIONS, raise_open_file_limit() - open_file_count() - FILE_DESCRIPTOR_RESERVE)

    async def start(self):
        self.loop = asyncio.get_running_loop()
        try:
            self._server = await self.loop.create_server(
                lambda: HttpConnection(self), self.host, self.port, ssl=self.ssl_context,
                backlog=LISTEN_BACKLOG, reuse_address=True)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigError("Port %d is already in use on %s. Stop the other program or choose "
                                  "another port with PORT or --port." % (self.port, self.host)) from error
            raise ConfigError("Cannot listen on %s:%d (%s)." % (self.host, self.port, error.strerror)) from error
        self.port = self._server.sockets[0].getsockname()[1]
        if self.app.config.redirect_port is not None:
            if self.tls is None:
                self._server.close()
                raise ConfigError("HTTP_REDIRECT_PORT sends visitors to HTTPS: set TLS_CERT_PATH and TLS_KEY_PATH too.")
            self.redirector = HttpsRedirector(self.host, self.app.config.redirect_port, self.port)
            try:
                await self.redirector.start()
            except ConfigError:
                self._server.close()
                raise
        self.app.db.group_commit = True
        self.app.request_log.enabled = log.isEnabledFor(logging.INFO)
        self.app.request_log.schedule = lambda flush: self.loop.call_later(REQUEST_LOG_FLUSH_SECONDS, flush)
        self.app.db.on_batch_opened = self._batch_opened
        self._sweeper = self.loop.create_task(self._sweep())
        self._beat = self.loop.create_task(self._cable_beat())
        self.app.webhooks.start(self.loop)
        self.app.pushes.start(self.loop)
        self.app.search_rebuild.start()
        self.app.backups.start(self.loop)
        self.app.disk.refresh()
        self.app.disk.refreshed_elsewhere = True
        self._disk_watch = self.loop.create_task(self._watch_disk())

    async def reload_tls(self):
        """SIGHUP: the certificate and key read again off the loop (see TlsCertificate)."""
        if self.tls is None:
            log.info("SIGHUP: not serving TLS, nothing to reload")
            return False
        return await self.loop.run_in_executor(None, self.tls.reload)

    async def _watch_disk(self):
        """The storage's free space, read off the loop every DISK_CHECK_SECONDS."""
        was_low = False
        while not self.stopping:
            await asyncio.sleep(DISK_CHECK_SECONDS)
            await self.app.file_work(self.app.disk.refresh)
            storage = self.app.storage_summary()
            if storage["low"] != was_low:
                was_low = storage["low"]
                if was_low:
                    log.warning("the storage is low on disk space (%s free, under MIN_FREE_DISK_BYTES %s): "
                                "uploads are refused", byte_size_text(storage["free_bytes"]),
                                byte_size_text(storage["min_free_bytes"]))
                else:
                    log.info("the storage has disk space again: uploads are taken")

    def reload_tls_soon(self):
        """The SIGHUP handler: one reload at a time (a second signal while one runs is ignored)."""
        if self._reloading is None or self._reloading.done():
            self._reloading = self.loop.create_task(self.reload_tls())

    async def _cable_beat(self):
        """Beats on a fixed schedule, not a fixed pause after each: a busy loop makes a
        beat late, never a ping interval longer (a pause's overshoot would add up over
        an interval's beats). After a stall of a whole interval the schedule restarts."""
        period = CABLE_PING_INTERVAL / CABLE_BEAT_SLICES
        next_beat = self.loop.time()
        while not self.stopping:
            next_beat += period
            now = self.loop.time()
            if now - next_beat > CABLE_PING_INTERVAL:
                next_beat = now
            await asyncio.sleep(next_beat - now)
            try:
                self.app.cable.beat()
            except Exception:
                log.error("cable beat failed:\n%s", traceback.format_exc())

    def _batch_opened(self):
        self._batch_deadline = self.loop.time() + GROUP_COMMIT_MAX_WAIT
        self._batch_seen = 0
        self._flush_after_next_poll()

    def _flush_after_next_poll(self):
        # A timer due now runs after the callbacks of the loop's next look at the
        # sockets (call_soon would run before them), so requests that arrived
        # meanwhile join this commit.
        self.loop.call_at(self.loop.time(), self.flush_writes)

    def flush_writes(self):
        """Commit the group's writes with one fsync, then answer the requests that made them."""
        db = self.app.db
        if db.batch_open and db.batch_writes > self._batch_seen and self.loop.time() < self._batch_deadline:
            self._batch_seen = db.batch_writes  # more came: look at the sockets once more first
            self._flush_after_next_poll()
            return
        self.commit_and_answer()

    def commit_and_answer(self):
        committed = self.app.db.commit_batch()
        if not committed:
            self.app.forget_cached()
        holding, self.holding = self.holding, set()
        for connection in holding:
            connection.release(committed)

    async def _sweep(self):
        """Drop connections past their deadline: slow heads, stalled bodies, idle keep-alives."""
        while not self.stopping:
            await asyncio.sleep(self.app.config.sweep_interval)
            now = self.loop.time()
            for connection in [c for c in self.connections if c.deadline < now]:
                connection.close()
            self.release_memory_when_idle(now)

    def release_memory_when_idle(self, now):
        """After a burst of requests and config.idle_release_after seconds of quiet, hand
        what the burst freed back to the OS (once per burst: a full collection
        takes milliseconds, which only a quiet server can spare)."""
        handled = self.app.requests_handled
        if handled != self._handled_seen:
            self._handled_seen, self._quiet_since = handled, now
        elif handled != self._handled_released and now - self._quiet_since >= self.app.config.idle_release_after:
            self._handled_released = handled
            release_free_memory()
            self.memory_releases += 1

    async def stop(self):
        """Stop accepting, let in-flight requests finish (bounded), close the database."""
        self.stopping = True
        self.app.webhooks.stop()
        self.app.pushes.stop()
        await self.app.backups.stop()
        if self._server is not None:
            self._server.close()
        if self.redirector is not None:
            self.redirector.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._beat.cancel()
        if self._disk_watch is not None:
            self._disk_watch.cancel()
        # Tell every WebSocket to reconnect (to the next server), closing with 1001.
        self.app.cable.disconnect(reason="server_restart", reconnect=True)
        deadline = self.loop.time() + SHUTDOWN_GRACE
        while self.connections and self.loop.time() < deadline:
            for connection in [c for c in self.connections if c.idle]:
                connection.close()
            await asyncio.sleep(SHUTDOWN_POLL_INTERVAL)
        self.commit_and_answer()
        self.app.request_log.flush()
        for connection in list(self.connections):
            if connection.upgraded is not None:
                await asyncio.sleep(CLOSE_FRAMES_GRACE)
                break
        for connection in list(self.connections):
            connection.close()
        self.app.close()


def raise_open_file_limit():
    """Raise the soft open-file limit to the hard one (logged); the limit in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            log.info("raised the open-file limit from %d to %d", soft, wanted)
            soft = wanted
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %d (%s)", soft, error)
    return MAX_OPEN_FILES_WANTED if soft == resource.RLIM_INFINITY else soft


def open_file_count():
    """Descriptors this process holds now (Linux and most BSDs list them), else 0."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 0


def make_tls_certificate(config):
    """The TlsCertificate of TLS_CERT_PATH and TLS_KEY_PATH, or None when serving plain HTTP."""
    if not (config.tls_cert_path and config.tls_key_path):
        if config.tls_cert_path or config.tls_key_path:
            raise ConfigError("Set both TLS_CERT_PATH and TLS_KEY_PATH to serve HTTPS.")
        return None
    return TlsCertificate(config.tls_cert_path, config.tls_key_path)


def tune_malloc():
    """Pin glibc's malloc thresholds (see MALLOC_MMAP_THRESHOLD); other C libraries: nothing."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, MALLOC_MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, MALLOC_TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


async def serve(config):
    tune_malloc()
    try:
        storage_lock = lock_storage(config.storage_path)  # held until the process ends
    except BackupRefused:
        raise ConfigError("Another Campfire server is running on %s." % config.storage_path) from None
    except OSError as error:
        raise ConfigError("Storage directory %s cannot be created (%s)." % (config.storage_path, error.strerror)) \
            from error
    app = App(config)
    try:
        server = Server(app, config.host, config.port, make_tls_certificate(config))
    except BaseException:
        app.close()
        raise
    try:
        await server.start()
    except BaseException:
        app.close()
        raise
    stop = asyncio.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        server.loop.add_signal_handler(signal_number, stop.set)
    server.loop.add_signal_handler(signal.SIGHUP, server.reload_tls_soon)
    log.info("Campfire %s listening on %s://%s:%d", VERSION, server.scheme, config.host, server.port)
    if server.redirector is not None:
        log.info("sending http://%s:%d to https", config.host, server.redirector.port)
    server.loop.call_later(FIRST_RELEASE_AFTER, release_free_memory)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    os.close(storage_lock)


####
#### 19. Operations
####
# Long jobs for the command line, each reporting its progress: seed, backup,
# restore, check, administrators, and the deployment recipes.

SEED_WORDS = ("the quick brown fox jumps over lazy dog campfire chat room message deploy release server "
              "database search index coffee lunch meeting design review bug fix ship today tomorrow "
              "customer support question answer idea plan roadmap feature launch test build green red "
              "weekend morning evening thanks great nice awesome sounds good agree maybe later soon "
              "python sqlite network socket browser phone laptop keyboard music sound trombone tada").split()
SEED_PASSWORD = "password"
SEED_ADMIN_PASSWORD_CHARS = 20   # letters and digits: about 119 bits, never guessed


class SeedRefused(CampfireError):
    """seed would add demo people beside real ones (without --force)."""


def seed_database(app, *, users=100, rooms=20, messages=100_000, progress=None, now=None, force=False):
    """Fill a database with people, rooms and messages for demos and benchmarks.

    Every seeded person signs in with SEED_PASSWORD except the first, an administrator,
    whose password is made up here: a demo database copied onto a server must not
    open its administration to anyone who read this file. A database that already
    has people is refused unless force. Returns (the administrator's email, password)."""
    import random
    rng = random.Random(2024)
    progress = progress or (lambda label, done, total: None)
    now = time.time() if now is None else now
    store = app.store
    if not force and store.people_count():
        raise SeedRefused("the database already has people in it; seed adds demo people (all with "
                          "the password %r) only with --force" % SEED_PASSWORD)
    digest = hash_password(SEED_PASSWORD, app.config.scrypt_n, app.config.bcrypt_cost)
    admin_password = random_alphanumeric(SEED_ADMIN_PASSWORD_CHARS)
    first_new = store.seed_people(users, digest, hash_password(admin_password, app.config.scrypt_n, app.config.bcrypt_cost), now)
    user_ids = store.active_user_ids()
    room_ids = []
    for index in range(rooms):
        closed = index % 5 == 4
        members = user_ids if not closed else sorted({user_ids[0], *rng.sample(user_ids, max(2, len(user_ids) // 3))})
        room = store.create_room("Room %02d" % (index + 1), ROOM_CLOSED if closed else ROOM_OPEN, user_ids[0], members)
        room_ids.append(room.id)
    progress("people and rooms", users + rooms, users + rooms)
    members = {room_id: store.room_member_ids(room_id) for room_id in room_ids}
    start = now - messages * 5  # five seconds apart, ending now
    written = 0
    while written < messages:
        count = min(SEED_BATCH, messages - written)
        batch = []
        for offset in range(count):
            room_id = room_ids[rng.randrange(len(room_ids))]
            stamp = utc_now_text(start + (written + offset) * 5)
            plain = " ".join(rng.choice(SEED_WORDS) for _ in range(rng.randint(3, 18)))
            batch.append((room_id, rng.choice(members[room_id]), random_hex(8), stamp, plain))
        store.seed_messages(batch)
        written += count
        progress("messages", written, messages)
    progress("search index", 0, 1)
    store.optimize_search_index()
    progress("search index", 1, 1)
    store.bump_everything()
    return "person%d@example.com" % first_new, admin_password


def storage_report(config):
    """What opening this storage will do, for an administrator before a move: the schema's
    era and the migrations it lacks, and what it holds. Reads only
    (the database is opened read-only; nothing is migrated)."""
    path = config.resolved_database_path
    if not os.path.exists(path):
        return ["%s: no database yet; the first start creates Campfire's schema (version %s)."
                % (path, RAILS_LATEST_VERSION)]
    try:
        db = sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(os.path.abspath(path)), uri=True)
        try:
            return _storage_report(db, path, config)
        finally:
            db.close()
    except sqlite3.Error as error:
        return ["%s can't be read as a Campfire database (%s)." % (path, error)]


def _storage_report(db, path, config):
    def value(sql, params=()):
        row = db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    lines = ["Storage: %s" % path]
    known = [version for version, _, _ in RAILS_MIGRATIONS]
    if "schema_migrations" in tables:
        versions = {str(row[0]) for row in db.execute("SELECT version FROM schema_migrations")}
        newer = sorted(v for v in versions if v not in known and v >= RAILS_FIRST_VERSION)
        if newer:
            return lines + ["Schema: migrated by a newer Campfire (%s); this server refuses it and changes "
                            "nothing." % ", ".join(newer)]
        pending = [(version, name) for version, name, _ in RAILS_MIGRATIONS if version not in versions]
        latest = max((v for v in versions if v in known), default=None)
        era = ("the first ONCE releases (users.active, no bans, no account settings)"
               if latest is not None and latest <= RAILS_ONCE_ERA_LAST else
               "Once Campfire v1.3 (Rails 8)" if latest is not None and latest < RAILS_LATEST_VERSION else
               "today's Once Campfire")
        lines.append("Schema: version %s, %s." % (latest, era))
        if pending:
            lines.append("At start, these Rails migrations run, each recorded in schema_migrations:")
            lines += ["  %s_%s.rb" % item for item in pending]
        else:
            lines.append("Nothing to migrate: Rails' db:prepare would find nothing pending.")
    elif "campfire_py_migrations" in tables:
        lines.append("Schema: created by an earlier release of this server; at start, Rails' %d migration "
                     "versions are recorded in schema_migrations." % len(known))
    elif tables & {"users", "messages", "accounts"}:
        return lines + ["Schema: Campfire's tables without schema_migrations; this server refuses it."]
    else:
        lines.append("Schema: empty; the first start creates Campfire's schema.")
        return lines

    def count(table, where="1"):
        return value('SELECT count(*) FROM "%s" WHERE %s' % (table, where)) if table in tables else 0

    status = "status" if "status" in {row[1] for row in db.execute("PRAGMA table_info(users)")} else None
    active = "status = 0" if status else "coalesce(active, 1) != 0"
    lines.append("Account: %s" % (value("SELECT name FROM accounts ORDER BY id LIMIT 1") or "(none yet)"))
    lines.append("People: %d active, %d deactivated or banned, %d bots" % (
        count("users", "role != 2 AND " + active), count("users", "role != 2 AND NOT (%s)" % active),
        count("users", "role = 2")))
    rooms = {row[0]: row[1] for row in db.execute("SELECT type, count(*) FROM rooms GROUP BY type")}
    lines.append("Rooms: %d open, %d closed, %d direct" % (
        rooms.get(ROOM_OPEN, 0), rooms.get(ROOM_CLOSED, 0), rooms.get(ROOM_DIRECT, 0)))
    messages = count("messages")
    lines.append("Messages: %d, with %d boosts" % (messages, count("boosts")))
    try:
        indexed = value("SELECT count(*) FROM message_search_index_docsize")
    except sqlite3.Error:
        indexed = None
    if indexed != messages:
        lines.append("Search index: %s of %d messages; the rest are indexed in the background at start."
                     % ("unknown" if indexed is None else indexed, messages))
    bcrypt = count("users", "password_digest LIKE '$2_$%'")
    if bcrypt:
        lines.append("Passwords: %d bcrypt digests (Rails'); this system's crypt(3) %s." % (bcrypt, (
            "checks them, and new passwords are bcrypt too" if bcrypt_supported() else
            "has no bcrypt: those people need a sign-in link from an administrator")))
    sessions = count("sessions", "length(token) != 64")
    if sessions:
        lines.append("Sessions: %d signed in on Rails; they stay signed in if SECRET_KEY_BASE is the one "
                     "Rails used%s." % (sessions, "" if config.secret_key_base else " (it is not set)"))
    files = [(count("active_storage_attachments", "record_type = 'Message' AND name = 'attachment'"), "file attachments"),
             (count("active_storage_attachments", "record_type = 'User'"), "avatars"),
             (count("active_storage_attachments", "record_type = 'Account'"), "account logos")]
    if any(number for number, _ in files):
        lines.append("Files: %s; they show here as in Campfire (storage/files/ holds them)."
                     % ", ".join("%d %s" % pair for pair in files))
    subscriptions = count("push_subscriptions")
    if subscriptions:
        lines.append("Push subscriptions: %d; pushes go on with the VAPID keys Rails used (VAPID_PUBLIC_KEY, "
                     "VAPID_PRIVATE_KEY)." % subscriptions)
    return lines


def print_progress(label, done, total):
    """One self-rewriting line on a terminal, a line per step otherwise."""
    line = "%s: %d/%d (%d%%)" % (label, done, total, 100 * done // max(total, 1))
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line + ("\n" if done >= total else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


# Backups, restore, checks and administrators ---------------------------------------
# The command line's operations on a storage. Each reports progress through
# progress(label, done, total) and raises a BackupError subclass (or ConfigError)
# with a sentence for the person at the terminal.

CHECK_REPAIRED = "repaired"


def restore_backup(config, archive, *, force=False, progress=None, now=None):
    """Put a backup back into config's storage; (manifest, the folder the replaced
    storage was moved to, or None).

    Refused while a server runs on the storage, for a storage that holds data
    unless force (what is there is then moved to storage/replaced-<time>/, never
    deleted), and for a backup of a newer schema. The archive is read through and
    checked, and every file staged inside the storage, before anything in it moves."""
    import shutil
    import tempfile
    progress = progress or _no_progress
    now = time.time() if now is None else now
    archive = os.path.abspath(archive)
    if not os.path.isfile(archive):
        raise BackupError("There is no backup at %s." % archive)
    manifest = read_manifest(archive)
    known = own_migration_names()
    newer = [name for name in manifest.get("migrations") or () if name not in known]
    if manifest["schema_version"] > CURRENT_SCHEMA_VERSION or newer:
        raise BackupRefused("%s comes from a newer Campfire (schema %d; this one knows %d). Upgrade campfire.py "
                            "first, then restore." % (archive, manifest["schema_version"], CURRENT_SCHEMA_VERSION))
    lock = lock_storage(config.storage_path)
    staging = None
    try:
        occupied = storage_in_use(config)
        if occupied and not force:
            raise BackupRefused("%s already holds a Campfire. To replace it, restore with --force: what is there "
                                "now is moved to %s<time>/ in it, not deleted." % (config.storage_path,
                                                                                  RESTORE_ASIDE_PREFIX))
        staging = tempfile.mkdtemp(prefix=RESTORE_STAGING_PREFIX, dir=config.storage_path)
        database = os.path.join(staging, BACKUP_DATABASE_MEMBER)
        content_dir = os.path.join(os.path.dirname(archive), BACKUP_CONTENT_DIR_NAME)
        verify_backup(archive, content_dir=content_dir, extract_to=database, progress=progress)
        staged = _stage_files(archive, manifest, content_dir, staging, progress)
        with _interrupts_deferred():
            aside = _set_aside(config, now) if occupied else None
            for relative, path in staged:
                destination = os.path.join(config.storage_path, relative)
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                os.replace(path, destination)
            database_path = config.resolved_database_path
            os.makedirs(os.path.dirname(database_path), exist_ok=True)
            for suffix in ("-wal", "-shm", "-journal"):   # a journal left by no one must not meet the new file
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(database_path + suffix)
            os.replace(database, database_path)
            _fsync_directory(os.path.dirname(database_path))
        return manifest, aside
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)


def _stage_files(archive, manifest, content_dir, staging, progress):
    """Every file the manifest names, written under staging and checked by its hash:
    [(relative path, staged path)]."""
    import tarfile
    contents = os.path.join(staging, BACKUP_CONTENT_DIR_NAME)
    os.makedirs(contents)
    with tarfile.open(archive, mode="r:") as tar:
        for info in tar:
            prefix, _, digest = info.name.partition("/")
            if prefix == BACKUP_CONTENT_DIR_NAME and _SHA256_RE.match(digest) and info.isfile():
                with open(os.path.join(contents, digest), "xb") as target:
                    if _hash_member(tar, info, target, lambda: False)[0] != digest:
                        raise BackupInvalid("%s in %s changed while it was read." % (info.name, archive))
    staged = []
    entries = manifest["files"]
    for index, entry in enumerate(entries):
        progress("files", index, len(entries))
        relative = _safe_relative_path(entry["path"])
        source = os.path.join(contents, entry["sha256"])
        if not os.path.exists(source):
            source = os.path.join(content_dir, entry["sha256"])
        target_path = os.path.join(staging, "files", relative)
        os.makedirs(os.path.dirname(target_path), exist_ok=True)
        hasher = hashlib.sha256()
        with open(source, "rb") as file, open(target_path, "xb") as target:
            _copy_stream(file, target, lambda: False, hasher)
            target.flush()
            os.fsync(target.fileno())
        if hasher.hexdigest() != entry["sha256"]:
            raise BackupInvalid("The content of %s does not match the manifest (damaged)." % entry["path"])
        os.chmod(target_path, 0o600)
        staged.append((relative, target_path))
    progress("files", len(entries), len(entries))
    return staged


def _set_aside(config, now):
    """Move the storage's data (all but backups/, the lock and earlier set-asides) into
    storage/replaced-<time>/; the folder."""
    storage = config.storage_path
    aside = _unused_path(os.path.join(storage, RESTORE_ASIDE_PREFIX + time.strftime("%Y%m%dT%H%M%SZ",
                                                                                    time.gmtime(now))))
    os.makedirs(aside, mode=0o700)
    for name in os.listdir(storage):
        if name in (BACKUP_DIR_NAME, STORAGE_LOCK_FILE) or name.startswith((RESTORE_ASIDE_PREFIX,
                                                                              RESTORE_STAGING_PREFIX)):
            continue
        os.rename(os.path.join(storage, name), os.path.join(aside, name))
    database = config.resolved_database_path
    for suffix in ("", "-wal", "-shm", "-journal"):  # a DATABASE_PATH outside the storage
        if os.path.exists(database + suffix):
            os.rename(database + suffix, os.path.join(aside, "database-" + os.path.basename(database) + suffix))
    return aside


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C waits until the block is done (files are being switched: half a switch is worse)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@dataclass
class StorageReport:
    problems: list
    repaired: list
    facts: dict


def check_storage(config, *, repair=False, progress=None):
    """The `check` command: the database (SQLite's and FTS5's integrity checks, a
    search row per message), its schema version, and uploaded files against their
    rows. Without repair it reads a consistent copy, so a running server is never
    held up; with repair it works in place and needs the server stopped."""
    import shutil
    import tempfile
    progress = progress or _no_progress
    database = config.resolved_database_path
    if not os.path.isfile(database):
        raise BackupError("There is no database at %s." % database)
    repaired, lock, work = [], None, None
    try:
        if repair:
            lock = lock_storage(config.storage_path)
            report = check_database(database)
            if any("search" in problem for problem in report.problems) and not any(
                    "integrity check" in problem or "newer" in problem for problem in report.problems):
                app = App(config)
                try:
                    indexed = app.store.rebuild_search_index()
                finally:
                    app.close()
                repaired.append("rebuilt the search index (%d messages)" % indexed)
                report = check_database(database)
            path = database
        else:
            folder = backups_dir(config)
            os.makedirs(folder, mode=0o700, exist_ok=True)
            work = tempfile.mkdtemp(prefix=BACKUP_WORK_PREFIX, dir=folder)
            path = os.path.join(work, BACKUP_DATABASE_MEMBER)
            copy_database(database, path, progress=lambda done, total: progress("database", done, total))
            progress("checks", 0, 1)
            report = check_database(path)
            progress("checks", 1, 1)
        problems = list(report.problems)
        if report.schema_version > CURRENT_SCHEMA_VERSION:
            problems.append("the schema (%d) is newer than this Campfire's (%d)"
                            % (report.schema_version, CURRENT_SCHEMA_VERSION))
        problems += _check_uploads(config, path)
        facts = {"schema_version": report.schema_version, "counts": report.counts, "checks": report.checks}
        return StorageReport(problems, repaired, facts)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def _check_uploads(config, database_path):
    """Files without rows and rows without files, in Active Storage's disk layout
    (<root>/<key[0:2]>/<key[2:4]>/<key>, Rails' ActiveStorage::Service::DiskService)."""
    root = os.path.join(config.storage_path, UPLOADS_DIR_NAME)
    connection = sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(database_path), uri=True)
    try:
        keys = {row[0] for row in connection.execute("SELECT key FROM active_storage_blobs")}
    except sqlite3.Error:
        keys = set()
    finally:
        connection.close()
    problems = []
    missing = sorted(key for key in keys if not os.path.isfile(os.path.join(root, key[:2], key[2:4], key)))
    if missing:
        problems.append("%d uploaded files are missing (rows without files), such as %s"
                        % (len(missing), ", ".join(missing[:3])))
    strays = []
    if os.path.isdir(root):
        for folder, _, names in os.walk(root):
            for name in names:
                relative = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
                if name not in keys or relative != "%s/%s/%s" % (name[:2], name[2:4], name):
                    strays.append(relative)
    if strays:
        problems.append("%d files in %s belong to no upload (files without rows), such as %s"
                        % (len(strays), root, ", ".join(sorted(strays)[:3])))
    return problems


def create_administrator(config, name, email, password):
    """A new administrator (or, on an empty storage, the account and its first
    administrator, as the first-run page makes them); the User."""
    errors = {}
    check_field(errors, "name", name, blank="Enter a name.", max_chars=MAX_NAME_CHARS)
    check_field(errors, "email", email, blank="Enter an email address.", problem=_email_problem)
    check_field(errors, "password", password, blank="Choose a password.", max_bytes=MAX_PASSWORD_BYTES)
    if errors:
        raise ConfigError(" ".join(errors.values()))
    app = App(config)
    try:
        if app.store.user_by_email(email) is not None:
            raise ConfigError("Someone already signs in as %s; reset-password makes them a sign-in link." % email)
        digest = hash_password(password, config.scrypt_n)
        created = app.store.first_run(name, email, digest) if app.store.account() is None else None
        return created[0] if created else app.store.create_user(name, email, role=ROLE_ADMINISTRATOR,
                                                                 password_digest=digest)
    finally:
        app.close()


def sign_in_link(config, email, base_url, now=None):
    """A link that signs the person with this address in for TRANSFER_TOKEN_SECONDS, to
    set a new password (Campfire's script/admin/reset-password answers the same need)."""
    now = time.time() if now is None else now
    app = App(config)
    try:
        user = app.store.user_by_email(email)
        if user is None or not user.active or user.bot:
            raise ConfigError("No active person signs in as %s." % email)
        token = app.signer.sign(user.id, "transfer", expires_at=int(now + TRANSFER_TOKEN_SECONDS))
        return base_url.rstrip("/") + url_for("session_transfer", token=token)
    finally:
        app.close()


# Export -------------------------------------------------------------------------------
# The whole account as JSON Lines a person can read and another tool can import:
# one object a line, each with its "type", in the order account, user, room,
# membership, file, message, boost (each kind by id, so what a line names came
# before it). Uploaded files are copied beside it under files/. Nothing secret
# leaves: no password digests, bot keys, sessions, push subscriptions or webhooks.

EXPORT_LINES_NAME = "campfire.jsonl"
EXPORT_FILES_DIR = "files"
ROLE_NAMES = {ROLE_MEMBER: "member", ROLE_ADMINISTRATOR: "administrator", ROLE_BOT: "bot"}
STATUS_NAMES = {STATUS_ACTIVE: "active", STATUS_DEACTIVATED: "deactivated", STATUS_BANNED: "banned"}
ROOM_KIND_NAMES = {ROOM_OPEN: "open", ROOM_CLOSED: "closed", ROOM_DIRECT: "direct"}
_UNSAFE_FILE_NAME_RE = re.compile(r"[\x00-\x1f/\\]|\A\.+")


def export_file_name(blob_id, filename):
    """files/<id>-<name>: the upload's own name, made safe to write anywhere."""
    name = _UNSAFE_FILE_NAME_RE.sub("_", filename or "")[:MAX_EXPORT_FILE_NAME_CHARS] or "file"
    return "%s/%d-%s" % (EXPORT_FILES_DIR, blob_id, name)


def export_account(config, target, *, progress=None):
    """Write the export into the folder target (which must not exist yet) from one
    consistent read of the database, so a running server is never held up; returns
    the count of each type. On a failure or Ctrl-C nothing half-written is left."""
    import shutil
    progress = progress or _no_progress
    database = config.resolved_database_path
    if not os.path.isfile(database):
        raise BackupError("There is no database at %s." % database)
    if os.path.lexists(target):
        raise BackupError("%s already exists; an export is written into a new folder." % target)
    if not os.path.isdir(os.path.dirname(os.path.abspath(target))):
        raise BackupError("The folder for %s does not exist." % target)
    import tempfile
    uploads = os.path.join(config.storage_path, UPLOADS_DIR_NAME)
    counts = collections.Counter()
    partial = connection = None
    try:
        partial = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(os.path.abspath(target)))
        connection = sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(os.path.abspath(database)), uri=True,
                                     isolation_level=None)
        connection.execute("BEGIN")  # one snapshot for every table
        os.makedirs(os.path.join(partial, EXPORT_FILES_DIR))
        names = {}
        with open(os.path.join(partial, EXPORT_LINES_NAME), "w", encoding="utf-8") as out:
            def write(kind, record):
                out.write(json.dumps({"type": kind, **record}, ensure_ascii=False, sort_keys=False) + "\n")
                counts[kind] += 1
            account = connection.execute("SELECT name, created_at FROM accounts ORDER BY id LIMIT 1").fetchone()
            if account is not None:
                write("account", {"name": account[0], "created_at": account[1]})
            avatars = dict(connection.execute(
                "SELECT record_id, blob_id FROM active_storage_attachments WHERE record_type = 'User' "
                "AND name = 'avatar' ORDER BY id"))
            for user_id, name, email, role, status, bio, created, updated in connection.execute(
                    "SELECT id, name, email_address, role, status, bio, created_at, updated_at FROM users ORDER BY id"):
                names[user_id] = name
                write("user", {"id": user_id, "name": name, "email_address": email,
                               "role": ROLE_NAMES.get(role, str(role)), "status": STATUS_NAMES.get(status, str(status)),
                               "bio": bio, "avatar_file_id": avatars.get(user_id),
                               "created_at": created, "updated_at": updated})
            for room_id, name, kind, creator, created, updated in connection.execute(
                    "SELECT id, name, type, creator_id, created_at, updated_at FROM rooms ORDER BY id"):
                write("room", {"id": room_id, "name": name, "kind": ROOM_KIND_NAMES.get(kind, kind),
                               "creator_id": creator, "created_at": created, "updated_at": updated})
            for room_id, user_id, involvement, created in connection.execute(
                    "SELECT room_id, user_id, involvement, created_at FROM memberships ORDER BY id"):
                write("membership", {"room_id": room_id, "user_id": user_id, "involvement": involvement,
                                     "created_at": created})
            blobs = connection.execute("SELECT id, key, filename, content_type, byte_size, checksum, created_at "
                                       "FROM active_storage_blobs ORDER BY id").fetchall()
            for index, (blob_id, key, filename, content_type, size, checksum, created) in enumerate(blobs):
                progress("files", index, len(blobs))
                relative = export_file_name(blob_id, filename)
                source = os.path.join(uploads, key[:2], key[2:4], key)
                present = os.path.isfile(source)
                if present:
                    shutil.copyfile(source, os.path.join(partial, *relative.split("/")))
                write("file", {"id": blob_id, "filename": filename, "content_type": content_type, "byte_size": size,
                               "checksum": checksum, "path": relative if present else None, "created_at": created})
            progress("files", len(blobs), len(blobs))
            attachments = collections.defaultdict(list)
            for message_id, blob_id in connection.execute(
                    "SELECT record_id, blob_id FROM active_storage_attachments WHERE record_type = 'Message' "
                    "ORDER BY id"):
                attachments[message_id].append(blob_id)
            total = connection.execute("SELECT count(*) FROM messages").fetchone()[0]
            mention_name = lambda sgid: names.get(sgid_user_id(sgid))  # noqa: E731
            for index, (message_id, room_id, creator, client_id, created, updated, body) in enumerate(
                    connection.execute(
                        "SELECT messages.id, room_id, creator_id, client_message_id, messages.created_at, "
                        "messages.updated_at, action_text_rich_texts.body FROM messages "
                        "LEFT JOIN action_text_rich_texts ON action_text_rich_texts.record_type = 'Message' "
                        "AND action_text_rich_texts.record_id = messages.id AND action_text_rich_texts.name = 'body' "
                        "ORDER BY messages.id")):
                if index % 1000 == 0:
                    progress("messages", index, total)
                write("message", {"id": message_id, "room_id": room_id, "creator_id": creator,
                                  "client_message_id": client_id, "created_at": created, "updated_at": updated,
                                  "body_html": body or "",
                                  "body_text": html_to_plain_text(body or "", mention_name=mention_name),
                                  "file_ids": attachments.get(message_id, [])})
            progress("messages", total, total)
            for boost_id, message_id, booster, content, created in connection.execute(
                    "SELECT id, message_id, booster_id, content, created_at FROM boosts ORDER BY id"):
                write("boost", {"id": boost_id, "message_id": message_id, "booster_id": booster, "content": content,
                                "created_at": created})
        connection.execute("COMMIT")
        os.rename(partial, target)
    except sqlite3.Error as error:
        raise BackupError("The database could not be read: %s." % error) from error
    except OSError as error:
        raise BackupError("The export could not be written: %s." % error) from error
    finally:
        if connection is not None:
            connection.close()
        if partial is not None and os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)
    return counts


# Recipes ------------------------------------------------------------------------------
# Deployment files printed by `campfire.py recipe NAME`, filled in with
# this file's location, the storage and the port. Each is what a careful admin
# would write by hand; the README says where each goes.

def recipe_text(name, config, script=None):
    script = os.path.abspath(script or os.path.join(HERE, os.path.basename(__file__)))
    storage = os.path.abspath(config.storage_path)
    values = {"script": script, "home": os.path.dirname(script), "storage": storage, "port": config.port,
              "python": "/usr/bin/python3", "database": os.path.abspath(config.resolved_database_path),
              "version": VERSION, "script_name": os.path.basename(script)}
    if name == "litestream":
        values["replica"] = _litestream_replica(config)
        target = config.backup_target
        values["endpoint"] = "\n        endpoint: %s" % target.endpoint if isinstance(target, S3Target) and \
            target.endpoint else ""
    try:
        template = RECIPES[name][1]
    except KeyError:
        raise ConfigError("There is no recipe %r; choose from %s." % (name, ", ".join(RECIPES))) from None
    return template.format(**values)


def _litestream_replica(config):
    """Litestream's replica URL beside BACKUP_URL's backups (an s3:// target only)."""
    target = config.backup_target
    if isinstance(target, S3Target):
        return "s3://%s/%slitestream" % (target.bucket, target.prefix)
    return "s3://BUCKET/campfire/litestream"


RECIPES = {
    "systemd": ("a hardened systemd service (/etc/systemd/system/campfire.service)", """\
# /etc/systemd/system/campfire.service: Campfire as a service of its own user.
#   useradd --system --home-dir {storage} --shell /usr/sbin/nologin campfire
#   install -d -o campfire -g campfire -m 700 {storage}
#   systemctl daemon-reload && systemctl enable --now campfire
# Settings such as BACKUP_URL and AWS_* go in /etc/campfire.env (mode 600).
[Unit]
Description=Campfire team chat
Documentation=file://{home}/README.md
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=campfire
Group=campfire
WorkingDirectory={storage}
Environment=CAMPFIRE_STORAGE_PATH={storage}
Environment=PORT={port}
Environment=PYTHONPYCACHEPREFIX=/var/cache/campfire
EnvironmentFile=-/etc/campfire.env
ExecStart={python} {script}
Restart=on-failure
RestartSec=2s
KillSignal=SIGTERM
TimeoutStopSec=30s
UMask=0077
LimitNOFILE=65536
CacheDirectory=campfire
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={storage}
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
CapabilityBoundingSet=
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""),
    "docker": ("a Dockerfile: the storage a volume, a user without privileges, a health check on /up", """\
# Build beside campfire.py and static/:  docker build -t campfire .
# Run:  docker run -d --name campfire -p {port}:{port} -v campfire-storage:/storage campfire
# The storage is a volume, never the image: back it up with
#   docker exec campfire python3 /app/{script_name} backup
FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /storage --shell /usr/sbin/nologin campfire \\
 && install -d -o campfire -g campfire -m 700 /storage
COPY {script_name} /app/{script_name}
COPY static /app/static
# Compiled once here: the server runs from the cached bytecode, and /app stays read-only.
RUN python3 -m compileall -q /app/{script_name}
ENV CAMPFIRE_STORAGE_PATH=/storage PORT={port} PYTHONUNBUFFERED=1
USER campfire
VOLUME ["/storage"]
EXPOSE {port}
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \\
  CMD ["python3", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/up' % os.environ.get('PORT', '{port}'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]
CMD ["python3", "/app/{script_name}"]
"""),
    "caddy": ("a Caddyfile: HTTPS from Let's Encrypt in front of Campfire, WebSockets passed", """\
# /etc/caddy/Caddyfile: Caddy gets and renews the certificate for the name below,
# and passes WebSockets (/cable) through as they are. Caddy sends X-Forwarded-For,
# -Proto and -Host; Campfire believes them only from TRUSTED_PROXIES, so put
# TRUSTED_PROXIES=127.0.0.1 in Campfire's environment (/etc/campfire.env).
chat.example.com {{
\treverse_proxy 127.0.0.1:{port} {{
\t\tflush_interval -1
\t}}
\trequest_body {{
\t\tmax_size 100MB
\t}}
}}
"""),
    "nginx": ("an nginx site: HTTPS in front of Campfire, WebSockets passed", """\
# /etc/nginx/conf.d/campfire.conf (the http block): HTTPS in front of Campfire.
# The certificate paths are certbot's; /cable needs the Upgrade headers below.
# Campfire believes the X-Forwarded-* headers only from TRUSTED_PROXIES, so put
# TRUSTED_PROXIES=127.0.0.1 in Campfire's environment (/etc/campfire.env).
map $http_upgrade $campfire_connection {{
    default upgrade;
    ''      close;
}}

upstream campfire {{
    server 127.0.0.1:{port};
    keepalive 16;
}}

server {{
    listen 80;
    listen [::]:80;
    server_name chat.example.com;
    return 301 https://$host$request_uri;
}}

server {{
    listen 443 ssl;
    listen [::]:443 ssl;
    server_name chat.example.com;
    ssl_certificate /etc/letsencrypt/live/chat.example.com/fullchain.pem;
    ssl_certificate_key /etc/letsencrypt/live/chat.example.com/privkey.pem;
    client_max_body_size 100m;

    location / {{
        proxy_pass http://campfire;
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $host;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $campfire_connection;
        proxy_read_timeout 1h;
        proxy_buffering off;
    }}
}}
"""),
    "litestream": ("a Litestream configuration: the WAL streamed beside BACKUP_URL's backups", """\
# /etc/litestream.yml: Litestream (https://litestream.io) streams the database's
# WAL to the replica below, for a warm standby or a restore to any second.
# Campfire's own backups (hourly archives with the files) go on beside it.
# Credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in Litestream's environment.
# Restore to a point in time:  litestream restore -timestamp 2024-05-01T09:30:00Z {database}
dbs:
  - path: {database}
    replicas:
      - url: {replica}{endpoint}
        sync-interval: 1s
        retention: 168h
        snapshot-interval: 24h
"""),
}


####
#### 20. Command line
####

# The commands and their options, as a table that both the parser and the
# help read. (argparse would cost about 5 ms of every start, a thirtieth of
# the start's budget, for a command line this small.)

def port_number(text):
    number = int(text)
    if not 0 <= number <= 65535:
        raise ValueError(text)
    return number


# What an option's type reads, for the message when a value isn't that.
VALUE_NAMES = {int: "a whole number", port_number: "a port number from 0 (any free port) to 65535"}

# command -> (what it does, {option: (type, default, help)}); a bool option is a flag.
COMMANDS = {
    "serve": ("run the server (the default command)", {
        "--host": (str, None, "address to bind (BIND; default %s)" % DEFAULT_BIND),
        "--port": (port_number, None, "port to listen on (PORT; default %d)" % DEFAULT_PORT),
        "--storage": (str, None, "storage directory (CAMPFIRE_STORAGE_PATH)"),
        "--no-cache": (bool, False, "render every page afresh (to measure what the caches save)"),
    }),
    "seed": ("fill the database with people, rooms and messages", {
        "--users": (int, 100, "people to add (default 100)"),
        "--rooms": (int, 20, "rooms to add (default 20)"),
        "--messages": (int, 100_000, "messages to add (default 100,000)"),
        "--storage": (str, None, "storage directory (CAMPFIRE_STORAGE_PATH)"),
        "--force": (bool, False, "seed a database that already has people in it"),
    }),
    "backup": ("write a checked backup now, whether or not the server runs", {
        "--storage": (str, None, "storage directory (CAMPFIRE_STORAGE_PATH)"),
    }),
    "backups": ("list the backups in storage/backups/ with size, age and check", {
        "--verify": (bool, False, "read each archive through and check every byte, not just its manifest"),
        "--storage": (str, None, "storage directory (CAMPFIRE_STORAGE_PATH)"),
    }),
    "restore": ("restore a backup into a storage no server runs on, after checking it", {
        "--force": (bool, False, "replace a storage that holds data (it is moved to storage/replaced-TIME/)"),
        "--storage": (str, None, "storage directory (CAMPFIRE_STORAGE_PATH)"),
    }),
    "check": ("report what opening a storage will do, then check its database, search index and files; "
              "exit 1 on a problem", {
        "--repair": (bool, False, "rebuild the search index (the server must be stopped)"),
        "--storage": (str, None, "storage directory (CAMPFIRE_STORAGE_PATH)"),
    }),
    "create-admin": ("add an administrator (the password is asked without echo, or read from stdin)", {
        "--name": (str, None, "the name (asked when not given)"),
        "--email": (str, None, "the email address (asked when not given)"),
        "--storage": (str, None, "storage directory (CAMPFIRE_STORAGE_PATH)"),
    }),
    "reset-password": ("print a sign-in link for someone who lost their password (valid 4 hours)", {
        "--url": (str, None, "the address people open Campfire at (default http://localhost:PORT)"),
        "--storage": (str, None, "storage directory (CAMPFIRE_STORAGE_PATH)"),
    }),
    "export": ("write the whole account as JSON Lines, with its files, into a new folder", {
        "--storage": (str, None, "storage directory (CAMPFIRE_STORAGE_PATH)"),
    }),
    "recipe": ("print a deployment file: systemd, docker, caddy, nginx or litestream", {
        "--storage": (str, None, "storage directory the recipe names (CAMPFIRE_STORAGE_PATH)"),
    }),
}
USAGE = "campfire.py [COMMAND] [OPTION ...]"

# The words a command takes after its options: command -> ((NAME, required, what it is), ...)
COMMAND_ARGUMENTS = {
    "backup": (("PATH", False, "write a self-contained archive there (a file, or a folder for the usual name) "
                               "instead of into storage/backups/"),),
    "restore": (("ARCHIVE", True, "the backup archive to restore"),),
    "reset-password": (("EMAIL", True, "the email address the person signs in with"),),
    "export": (("FOLDER", True, "the folder to create: campfire.jsonl and files/ go in it"),),
    "recipe": (("NAME", True, "one of: " + ", ".join(RECIPES)),),
}

# What each exit status means (also in --help and the README).
EXIT_OK = 0
EXIT_FAILED = 1         # the work failed, a check found a problem, or the configuration is wrong
EXIT_USAGE = 2          # a command line that can't be read
EXIT_REFUSED = 3        # refused to lose data: a server runs on the storage, it holds data, a newer schema
EXIT_INTERRUPTED = 130  # Ctrl-C: what was half-written is removed (128 + SIGINT, as shells report it)
EXIT_CODES_HELP = ("exit status: 0 done; 1 failed or a problem found; 2 a command line that can't be read; "
                   "3 refused to lose data (a server is running on the storage, it holds data without --force, "
                   "or the backup is from a newer Campfire); 130 interrupted (Ctrl-C), nothing half-written kept.")


class ProgressBar:
    """progress(label, done, total) on stderr: a bar redrawn in place on a terminal,
    a plain line at each tenth otherwise (so a log stays short)."""

    CELLS = 30
    REDRAW_SECONDS = 0.1

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._shown = None
        self._drawn = 0.0

    def __call__(self, label, done, total):
        fraction = min(1.0, done / total) if total else 1.0
        finished = done >= total
        if self.tty:
            now = time.monotonic()
            if not finished and self._shown == label and now - self._drawn < self.REDRAW_SECONDS:
                return
            self._shown, self._drawn = label, now
            cells = int(fraction * self.CELLS)
            self.stream.write("\r%-9s [%s%s] %3d%%%s" % (label, "#" * cells, "-" * (self.CELLS - cells),
                                                         fraction * 100, "\n" if finished else ""))
        else:
            step = (label, int(fraction * 10))
            if step == self._shown:
                return
            self._shown = step
            self.stream.write("%s: %d%%\n" % (label, fraction * 100))
        self.stream.flush()


def _age_text(seconds):
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return "%d%s ago" % (seconds // length, unit)
    return "just now"


def backup_command(config, options):
    target = options["path"]
    result = write_backup(config, target, progress=ProgressBar())
    if target is None:
        status = read_backup_status(backups_dir(config))
        status["last_success"] = {"name": os.path.basename(result.path), "time": time.time(), "size": result.size,
                                  "seconds": round(result.seconds, 2)}
        write_backup_status(backups_dir(config), status)
    counts = result.manifest["counts"]
    print("Backed up to %s (%s: %d messages, %d people, %d files) in %.1f s; checked." % (
        result.path, byte_size_text(result.size), counts.get("messages", 0), counts.get("users", 0),
        len(result.manifest["files"]), result.seconds))
    return EXIT_OK


def backups_command(config, options):
    folder = backups_dir(config)
    entries = list_backups(folder)
    status = read_backup_status(folder)
    failure = status.get("last_failure")
    if failure and failure.get("time", 0) > (status.get("last_success") or {}).get("time", 0):
        print("The last automatic backup FAILED %s: %s" % (_age_text(time.time() - failure["time"]),
                                                           failure.get("error")))
    if not entries:
        print("No backups in %s yet." % folder)
        return EXIT_FAILED if failure else EXIT_OK
    content_dir = os.path.join(folder, BACKUP_CONTENT_DIR_NAME)
    bad = 0
    print("%-36s %10s %10s  %s" % ("BACKUP", "SIZE", "AGE", "CHECK"))
    for entry in entries:
        check = entry["check"]
        if options["verify"] and check == "ok":
            try:
                verify_backup(entry["path"], content_dir=content_dir, deep_files=True)
            except BackupError as error:
                check = str(error)
        bad += check != "ok"
        print("%-36s %10s %10s  %s" % (entry["name"], byte_size_text(entry["size"]),
                                       _age_text(time.time() - entry["time"]), check))
    return EXIT_FAILED if bad else EXIT_OK


def restore_command(config, options):
    manifest, aside = restore_backup(config, options["archive"], force=options["force"], progress=ProgressBar())
    counts = manifest["counts"]
    print("Restored the backup of %s: %d messages, %d people, %d files; checked." % (
        manifest["created_at"], counts.get("messages", 0), counts.get("users", 0), len(manifest["files"])))
    if aside:
        print("What the storage held before is in %s." % aside)
    return EXIT_OK


def check_command(config, options):
    print("\n".join(storage_report(config)))
    if not _schema_current(config):
        print("The database, search index and file checks run once the storage's schema is today's "
              "(after this server's first start).")
        return EXIT_OK
    report = check_storage(config, repair=options["repair"], progress=ProgressBar())
    for line in report.repaired:
        print("Repaired: " + line)
    for problem in report.problems:
        print("Problem: " + problem)
    counts = report.facts["counts"]
    print("Schema version %d; %s." % (report.facts["schema_version"], ", ".join(
        "%d %s" % (count, table) for table, count in counts.items())))
    if report.problems:
        print("%d problem(s) found.%s" % (len(report.problems), "" if options["repair"] else
                                          " `check --repair` rebuilds the search index (with the server stopped)."))
        return EXIT_FAILED
    print("No problems found.")
    return EXIT_OK


def _schema_current(config):
    """Whether the storage's schema is today's (this server opened it, or Rails ran every
    migration), so the checks' expectations hold; read-only."""
    path = config.resolved_database_path
    if not os.path.exists(path):
        return False
    db = sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(os.path.abspath(path)), uri=True)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "campfire_py_migrations" in tables:
            return True
        return "schema_migrations" in tables and db.execute(
            "SELECT 1 FROM schema_migrations WHERE version = ?", (RAILS_LATEST_VERSION,)).fetchone() is not None
    finally:
        db.close()


def _ask(prompt, secret=False):
    """A line from the person at the terminal (a password without echo), or from stdin's next line."""
    if sys.stdin.isatty():
        import getpass
        return getpass.getpass(prompt) if secret else input(prompt)
    line = sys.stdin.readline()
    if not line:
        raise ConfigError("Expected %s on standard input." % prompt.strip(": ").lower())
    return line.rstrip("\r\n")


def create_admin_command(config, options):
    name = options["name"] or _ask("Name: ")
    email = options["email"] or _ask("Email address: ")
    password = _ask("Password: ", secret=True)
    if sys.stdin.isatty() and _ask("Password again: ", secret=True) != password:
        raise ConfigError("The passwords don't match; nothing was changed.")
    user = create_administrator(config, name.strip(), email.strip(), password)
    print("%s (%s) is an administrator and can sign in now." % (user.name, user.email_address))
    return EXIT_OK


def reset_password_command(config, options):
    base = options["url"] or "http://localhost:%d" % config.port
    link = sign_in_link(config, options["email"], base)
    print("Open this link within %d hours to sign in, then set a new password on your profile:\n%s"
          % (TRANSFER_TOKEN_SECONDS // 3600, link))
    return EXIT_OK


def export_command(config, options):
    counts = export_account(config, options["folder"], progress=ProgressBar())
    print("Exported to %s: %s." % (options["folder"], ", ".join(
        "%d %s" % (counts[kind], kind + "s") for kind in ("user", "room", "membership", "message", "boost", "file"))))
    return EXIT_OK


def recipe_command(config, options):
    sys.stdout.write(recipe_text(options["name"], config))
    return EXIT_OK


OPERATIONS = {"backup": backup_command, "backups": backups_command, "restore": restore_command,
              "check": check_command, "create-admin": create_admin_command,
              "reset-password": reset_password_command, "export": export_command, "recipe": recipe_command}


class UsageError(Exception):
    """A command line that cannot be read; the message says which word and why."""


def _option_key(name):
    """'--no-cache' -> 'no_cache', the key parse_command_line returns it under."""
    return name[2:].replace("-", "_")


def parse_command_line(argv):
    """The words after campfire.py -> (command, {option: value}), every option present.

    The command is "serve" when the first word is an option or there are none.
    Values come as `--port 3000` or `--port=3000`."""
    command = "serve"
    if argv and not argv[0].startswith("-"):
        command, argv = argv[0], argv[1:]
        if command not in COMMANDS:
            raise UsageError("unknown command %r (choose from %s)" % (command, ", ".join(COMMANDS)))
    options = COMMANDS[command][1]
    values = {_option_key(name): default for name, (_, default, _) in options.items()}
    arguments = list(COMMAND_ARGUMENTS.get(command, ()))
    values.update((name.lower(), None) for name, _, _ in arguments)
    words = iter(argv)
    for word in words:
        name, equals, value = word.partition("=")
        if arguments and not word.startswith("-"):
            values[arguments.pop(0)[0].lower()] = word
            continue
        if name not in options:
            raise UsageError("%s does not take %r" % (command, word))
        kind = options[name][0]
        key = _option_key(name)
        if kind is bool:
            if equals:
                raise UsageError("%s takes no value" % name)
            values[key] = True
            continue
        if not equals:
            value = next(words, None)
            if value is None:
                raise UsageError("%s needs a value" % name)
        try:
            values[key] = kind(value)
        except ValueError:
            raise UsageError("%s needs %s, not %r" % (name, VALUE_NAMES[kind], value)) from None
    missing = [name for name, required, _ in arguments if required]
    if missing:
        raise UsageError("%s needs %s" % (command, " ".join(missing)))
    return command, values


def command_help(command):
    """`campfire.py COMMAND --help`: what the command does, its words, its options, its exit status."""
    summary, options = COMMANDS[command]
    arguments = COMMAND_ARGUMENTS.get(command, ())
    words = " ".join(name if required else "[%s]" % name for name, required, _ in arguments)
    lines = ["usage: campfire.py %s [OPTION ...]%s" % (command, " " + words if words else ""), "", summary + "."]
    if arguments:
        lines += [""] + ["  %-20s %s" % (name, description) for name, _, description in arguments]
    lines += ["", "options:"]
    for name, (kind, _, description) in options.items():
        lines.append("  %-20s %s" % (name if kind is bool else name + " " + name[2:].upper(), description))
    lines.append("  %-20s %s" % ("-h, --help", "show this help and exit"))
    if command != "serve":
        lines += [""] + textwrap_lines(EXIT_CODES_HELP)
    return "\n".join(lines)


def textwrap_lines(text, width=79):
    import textwrap
    return textwrap.wrap(text, width)


def help_text():
    lines = ["usage: " + USAGE, "", "Campfire: a team chat in one file.", "", "commands:"]
    lines += ["  %-20s %s" % (command, summary) for command, (summary, _) in COMMANDS.items()]
    lines += ["", "`campfire.py COMMAND --help` says more about each."]
    for command, (_, options) in COMMANDS.items():
        lines += ["", "options of %s:" % command]
        for name, (kind, _, description) in options.items():
            lines.append("  %-20s %s" % (name if kind is bool else name + " " + name[2:].upper(), description))
    lines += ["", "  %-20s %s" % ("-h, --help", "show this help and exit"),
              "  %-20s %s" % ("--version", "show the version and exit"), "",
              "Configuration also comes from the environment: PORT, BIND, CAMPFIRE_STORAGE_PATH,",
              "DATABASE_PATH, SECRET_KEY_BASE, TLS_CERT_PATH, TLS_KEY_PATH, LOG_LEVEL,",
              "VAPID_PUBLIC_KEY, VAPID_PRIVATE_KEY, BACKUP_INTERVAL, BACKUP_KEEP, BACKUP_URL and",
              "the AWS_* variables it reads, TRUSTED_PROXIES, METRICS_ALLOW, HTTP_REDIRECT_PORT,",
              "MIN_FREE_DISK_BYTES. SIGHUP reads the TLS certificate and key again.", ""] + textwrap_lines(EXIT_CODES_HELP)
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(command_help(argv[0]) if argv[0] in COMMANDS else help_text())
        return 0
    if "--version" in argv:
        print("Campfire %s" % VERSION)
        return 0
    try:
        command, options = parse_command_line(argv)
    except UsageError as error:
        print("usage: %s\ncampfire.py: %s (see campfire.py --help)" % (USAGE, error), file=sys.stderr)
        return 2
    try:
        config = Config.from_environment()
    except ConfigError as error:
        print("campfire: %s" % error, file=sys.stderr)
        return 1
    logging.basicConfig(level=getattr(logging, config.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    if command == "serve" and options["host"]:
        config.host = options["host"]
    if command == "serve" and options["port"] is not None:
        config.port = options["port"]
    if options["storage"]:
        config.storage_path = options["storage"]
    if command == "serve" and options["no_cache"]:
        config.cache = False
    try:
        if command == "serve":
            asyncio.run(serve(config))
        elif command == "seed":
            app = App(config)
            try:
                admin_email, admin_password = seed_database(
                    app, users=options["users"], rooms=options["rooms"], messages=options["messages"],
                    progress=print_progress, force=options["force"])
            finally:
                app.close()
            print("Seeded. Sign in as %s (an administrator) with the password %r; everyone else's "
                  "password is %r." % (admin_email, admin_password, SEED_PASSWORD))
        else:
            return OPERATIONS[command](config, options)
    except SeedRefused as error:
        print("campfire: %s" % error, file=sys.stderr)
        return 1
    except ConfigError as error:
        print("campfire: %s" % error, file=sys.stderr)
        return 1
    except BackupRefused as error:
        print("campfire: %s" % error, file=sys.stderr)
        return EXIT_REFUSED
    except BackupError as error:
        print("campfire: %s" % error, file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if command != "serve":
            print("\ncampfire: interrupted; nothing half-written was kept.", file=sys.stderr)
            return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
