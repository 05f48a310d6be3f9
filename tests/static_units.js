// Unit tests of static/'s logic that needs no page around it, run in Chromium by
// tests/test_static.py: the real modules, imported from /static/. Each test's
// outcome lands in window.unitResults as { name, ok, error }.

import { Backoff, RECONNECT_MIN_MS, RECONNECT_MAX_MS, RECONNECT_JITTER, switcherChoices } from "/static/cable.js"
import { continuesThread, THREAD_WINDOW_MS, dayLabel, isEmojiOnly } from "/static/messages.js"
import { Drafts, uuid, retryable, failureText, onlyLink, previewAttachment,
  typingSentence, TypingNotifier, TypingPeople, START_EVERY_MS,
  formatBytes, uploadFailureText, filesOf, MAX_FILES_AT_ONCE,
  autocompleteQuery, soundsMatching,
  safeHref, defuse,
  inlineShortcut, blockShortcut, looksLikeMarkdown, markdownToHTML } from "/static/composer.js"
import { matchesFilter, announcement, MAX_ANNOUNCED_CHARS } from "/static/dom.js"
import { SOUND_NAMES } from "/static/sounds.js"
import { notificationState, titleWithCount, base64UrlToBytes, subscriptionPayload, notifiesInPage } from "/static/notifications.js"

const results = []

function test(name, body) {
  try {
    body()
    results.push({ name, ok: true })
  } catch (error) {
    results.push({ name, ok: false, error: String(error?.stack ?? error) })
  }
}

function assertEqual(actual, expected, what = "") {
  const [a, e] = [JSON.stringify(actual), JSON.stringify(expected)]
  if (a !== e) throw new Error(`${what} expected ${e}, got ${a}`)
}

function assert(condition, what) {
  if (!condition) throw new Error(what)
}

// cable.js ---------------------------------------------------------------------

test("Backoff doubles from the minimum up to the maximum, without jitter at the midpoint", () => {
  const backoff = new Backoff(() => 0.5)
  const delays = Array.from({ length: 8 }, () => backoff.next())
  assertEqual(delays, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000])
  assertEqual(delays[0], RECONNECT_MIN_MS)
  assertEqual(delays.at(-1), RECONNECT_MAX_MS)
})

test("Backoff's jitter stays within its share either way", () => {
  assertEqual(new Backoff(() => 0).next(), Math.round(RECONNECT_MIN_MS * (1 - RECONNECT_JITTER)))
  assertEqual(new Backoff(() => 0.999999).next(), Math.round(RECONNECT_MIN_MS * (1 + RECONNECT_JITTER * 0.999998)))
  for (let i = 0; i < 100; i++) {
    const delay = new Backoff().next()
    assert(delay >= 350 && delay <= 650, `a first delay of ${delay} ms`)
  }
})

test("Backoff starts over after a reset", () => {
  const backoff = new Backoff(() => 0.5)
  backoff.next(); backoff.next(); backoff.next()
  backoff.reset()
  assertEqual(backoff.next(), RECONNECT_MIN_MS)
})

// messages.js ------------------------------------------------------------------

const at = (iso, creatorId = "1") => ({ creatorId, createdAt: iso })

test("continuesThread: the same author within five minutes", () => {
  assert(continuesThread(at("2024-05-01T10:00:00Z"), at("2024-05-01T10:04:59Z")), "4:59 later")
  assert(continuesThread(at("2024-05-01T10:00:00Z"), at("2024-05-01T10:00:00Z")), "the same moment")
})

test("continuesThread: not after five minutes, not another author, not back in time, not the first", () => {
  assert(!continuesThread(at("2024-05-01T10:00:00Z"), at("2024-05-01T10:05:00Z")), "exactly 5 minutes")
  assertEqual(THREAD_WINDOW_MS, 5 * 60 * 1000)
  assert(!continuesThread(at("2024-05-01T10:00:00Z", "1"), at("2024-05-01T10:00:01Z", "2")), "another author")
  assert(!continuesThread(at("2024-05-01T10:00:01Z"), at("2024-05-01T10:00:00Z")), "an earlier message")
  assert(!continuesThread(null, at("2024-05-01T10:00:00Z")), "no previous message")
  assert(!continuesThread(false, at("2024-05-01T10:00:00Z")), "a previous element that isn't a message")
})

// composer.js: typing ---------------------------------------------------------

test("typingSentence names up to two and counts the rest", () => {
  assertEqual(typingSentence([]), "")
  assertEqual(typingSentence(["Ada"]), "Ada is typing…")
  assertEqual(typingSentence(["Ada", "Bob"]), "Ada and Bob are typing…")
  assertEqual(typingSentence(["Ada", "Bob", "Cy"]), "Ada, Bob and 1 more are typing…")
  assertEqual(typingSentence(["Ada", "Bob", "Cy", "Di"]), "Ada, Bob and 2 more are typing…")
})

test("TypingNotifier sends start at most once a second and stop only after a start", () => {
  let now = 0
  const sent = []
  const notifier = new TypingNotifier((action) => sent.push(action), () => now)
  notifier.stop()
  assertEqual(sent, [], "a stop before any start")
  notifier.typed(false)
  now = START_EVERY_MS - 1
  notifier.typed(false)
  now = START_EVERY_MS
  notifier.typed(false)
  notifier.typed(true)   // the text became blank: a stop
  notifier.typed(true)
  notifier.typed(false)  // typing again starts at once
  assertEqual(sent, ["start", "start", "stop", "start"])
})

test("TypingPeople lists who is typing and forgets them on stop or clear", () => {
  const seen = []
  const people = new TypingPeople((names) => seen.push(names))
  people.receive({ action: "start", user: { id: 1, name: "Ada" } })
  people.receive({ action: "start", user: { id: 2, name: "Bob" } })
  people.receive({ action: "start", user: { id: 1, name: "Ada" } })
  people.receive({ action: "start" })  // no user: ignored
  assertEqual(people.names, ["Bob", "Ada"])
  people.receive({ action: "stop", user: { id: 2, name: "Bob" } })
  assertEqual(people.names, ["Ada"])
  people.clear()
  assertEqual(people.names, [])
  assertEqual(seen.at(-1), [])
})

// composer.js ------------------------------------------------------------------

class MemoryStorage {
  items = new Map()
  getItem(key) { return this.items.has(key) ? this.items.get(key) : null }
  setItem(key, value) { this.items.set(key, String(value)) }
  removeItem(key) { this.items.delete(key) }
}

test("Drafts keeps each room's unsent text under its own key, and forgets it when empty", () => {
  const storage = new MemoryStorage()
  const one = new Drafts(1, storage), two = new Drafts(2, storage)
  assertEqual(one.load(), "")
  one.save("<div>half a thought</div>")
  two.save("<div>another</div>")
  assertEqual(new Drafts(1, storage).load(), "<div>half a thought</div>")
  assertEqual(storage.getItem("campfire:draft:2"), "<div>another</div>")
  one.save("")
  assertEqual(one.load(), "")
  assert(!storage.items.has("campfire:draft:1"), "an empty draft is removed")
})

test("Drafts never throws when storage does (private browsing, a full quota)", () => {
  const broken = { getItem() { throw new Error("denied") }, setItem() { throw new Error("full") }, removeItem() { throw new Error("denied") } }
  const drafts = new Drafts(1, broken)
  drafts.save("<div>x</div>")
  drafts.save("")
  assertEqual(drafts.load(), "")
})

test("uuid gives 128 random bits, different every time", () => {
  const ids = new Set(Array.from({ length: 50 }, uuid))
  assertEqual(ids.size, 50)
  for (const id of ids) assert(/^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/.test(id), id)
})

test("a failed send says why, and offers a retry only when one can help", () => {
  assertEqual([0, undefined, 408, 429, 500, 503].map(retryable), [true, true, true, true, true, true])
  assertEqual([403, 404, 413, 422].map(retryable), [false, false, false, false])
  assertEqual(failureText(undefined), "Not sent: no connection.")
  assertEqual(failureText(413), "Not sent: too long.")
  assertEqual(failureText(422), "Not sent: empty.")
  assertEqual(failureText(502), "Not sent: the server had a problem.")
})

test("onlyLink finds a message that is nothing but one http(s) link", () => {
  assertEqual(onlyLink("<div>https://example.com/a?b=1</div>"), "https://example.com/a?b=1")
  assertEqual(onlyLink("<div> http://example.com </div>"), "http://example.com")
  assertEqual(onlyLink("<div>see https://example.com</div>"), null)
  assertEqual(onlyLink("<div>javascript:alert(1)</div>"), null)
  assertEqual(onlyLink("<div>ftp://example.com/</div>"), null)
})

test("previewAttachment writes Campfire's opengraph embed, escaping what the page said", () => {
  const html = previewAttachment({ title: 'A "quoted" <title>', url: "https://example.com/", image: null, description: "d & e" })
  const element = new DOMParser().parseFromString(html, "text/html").body.firstElementChild
  assertEqual(element.localName, "action-text-attachment")
  assertEqual(element.getAttribute("content-type"), "application/vnd.actiontext.opengraph-embed")
  assertEqual([element.getAttribute("href"), element.getAttribute("filename"), element.getAttribute("caption")],
    ["https://example.com/", 'A "quoted" <title>', "d & e"])
  assertEqual(element.hasAttribute("url"), false)
})

// composer.js: uploads --------------------------------------------------------

test("formatBytes counts in steps of 1,024, as the server writes sizes", () => {
  assertEqual([0, 1, 1023, 1024, 1536, 100 * 1024 * 1024, 1024 ** 3].map(formatBytes),
    ["0 bytes", "1 byte", "1023 bytes", "1 KB", "1.5 KB", "100 MB", "1 GB"])
})

test("uploadFailureText says why a file was not sent, naming the limit when it is too large", () => {
  assertEqual(uploadFailureText(413, "100 MB"), "Not sent: larger than 100 MB.")
  assertEqual(uploadFailureText(0), "Not sent: no connection.")
  assertEqual(uploadFailureText(422), "Not sent: the file can't be used.")
  assertEqual(uploadFailureText(500), "Not sent: the server had a problem.")
})

test("filesOf takes the files a drop or a paste carries, and none from text", () => {
  const data = new DataTransfer()
  data.setData("text/plain", "just words")
  assertEqual(filesOf(data).length, 0)
  data.items.add(new File(["x"], "a.txt", { type: "text/plain" }))
  assertEqual(filesOf(data).map((file) => file.name), ["a.txt"])
  assertEqual(filesOf(null).length, 0)
  assertEqual(MAX_FILES_AT_ONCE, 100)
})

// composer.js: suggestions ----------------------------------------------------

test("autocompleteQuery finds a mention being typed, or /play and a sound", () => {
  assertEqual(autocompleteQuery("hi @Ad", "hi @Ad"), { kind: "mention", query: "Ad" })
  assertEqual(autocompleteQuery("hi (@Ada Lo", "hi (@Ada Lo"), { kind: "mention", query: "Ada Lo" })
  assertEqual(autocompleteQuery("mail ada@example", "mail ada@example"), null)
  assertEqual(autocompleteQuery("/play ta", "/play ta"), { kind: "sound", query: "ta" })
  assertEqual(autocompleteQuery("/play\u00a0", "/play\u00a0"), { kind: "sound", query: "" })
  assertEqual(autocompleteQuery("say /play ta", "say /play ta"), null)
})

test("soundsMatching lists the sounds that start with what was typed, in any case", () => {
  assertEqual(soundsMatching("tr"), ["trololo", "trombone"])
  assertEqual(soundsMatching("TA"), ["tada"])
  assertEqual(soundsMatching("").length, 56)
  assertEqual(SOUND_NAMES.length, 56)
})

// composer.js: rich text ------------------------------------------------------

test("safeHref keeps http(s), mailto and relative links, and refuses the rest", () => {
  assertEqual(safeHref("https://example.com/a?b#c"), "https://example.com/a?b#c")
  assertEqual(safeHref("mailto:ada@example.com"), "mailto:ada@example.com")
  assertEqual(safeHref("/rooms/1/@2"), "/rooms/1/@2")
  assertEqual(safeHref("  http://x.example/\n"), "http://x.example/")
  assertEqual(safeHref("javascript:alert(1)"), null)
  assertEqual(safeHref("java\tscript:alert(1)"), null)
  assertEqual(safeHref(" \u0001javascript:alert(1)"), null)
  assertEqual(safeHref("data:text/html,<b>"), null)
  assertEqual(safeHref(""), null)
  assertEqual(safeHref(null), null)
})

test("defuse renames event handler attributes before parsing, and nothing else", () => {
  assertEqual(defuse('<img src=x onerror="alert(1)">'), '<img src=x data-was-onerror="alert(1)">')
  assertEqual(defuse("<svg/onload=alert(1)>"), "<svg/data-was-onload=alert(1)>")
  assertEqual(defuse("<p>one of the online ones</p>"), "<p>one of the online ones</p>")
})

// dom.js: forms ---------------------------------------------------------------

test("matchesFilter finds people by any part of the name, ignoring case and accents", () => {
  assert(matchesFilter("José Álvarez", "jose"), "accents")
  assert(matchesFilter("Ada Lovelace", "LOVE"), "case")
  assert(matchesFilter("Ada Lovelace", "  "), "a blank filter")
  assert(!matchesFilter("Ada Lovelace", "bob"), "another name")
})

// composer.js: Markdown -------------------------------------------------------

test("inlineShortcut finds a span when its closing mark is typed, and not inside words", () => {
  assertEqual(inlineShortcut("say **bold**"), { tag: "strong", length: 8, text: "bold" })
  assertEqual(inlineShortcut("an _italic_"), { tag: "em", length: 8, text: "italic" })
  assertEqual(inlineShortcut("a *b c*"), { tag: "em", length: 5, text: "b c" })
  assertEqual(inlineShortcut("run `ls -l`"), { tag: "code", length: 7, text: "ls -l" })
  assertEqual(inlineShortcut("~~gone~~"), { tag: "del", length: 8, text: "gone" })
  assertEqual(inlineShortcut("*a* and *b*"), { tag: "em", length: 3, text: "b" })
  for (const plain of ["**bold*", "snake_case_", "2*3*", "* x*", "``", "a **b **"]) assertEqual(inlineShortcut(plain), null, plain)
})

test("blockShortcut turns a line's start into a list, a quote or a code block", () => {
  assertEqual(["- ", "*\u00a0", "1. ", "> ", "```", "-", "2. ", "a "].map(blockShortcut),
    ["bullets", "bullets", "numbers", "quote", "code", null, null, null])
})

test("markdownToHTML converts a pasted Markdown text, escaping what it holds", () => {
  assert(looksLikeMarkdown("- one\n- two") && looksLikeMarkdown("a **b** c") && !looksLikeMarkdown("2*3*4 and snake_case"), "detection")
  assertEqual(markdownToHTML("# T\nSome **b**, _i_ and `x<y`\n- one\n- two\n1. a\n> q\n```\n<b>\n```"),
    "<h1>T</h1><div>Some <strong>b</strong>, <em>i</em> and <code>x&lt;y</code></div><ul><li>one</li><li>two</li></ul>" +
    "<ol><li>a</li></ol><blockquote>q</blockquote><pre>&lt;b&gt;</pre>")
})

// messages.js: day separators and big emoji ---------------------------------------

test("dayLabel says Today, Yesterday, or the date", () => {
  const now = new Date(2026, 2, 10, 0, 30)
  assertEqual(dayLabel(new Date(2026, 2, 10, 0, 5), now), "Today")
  assertEqual(dayLabel(new Date(2026, 2, 9, 23, 59), now), "Yesterday")
  assertEqual(dayLabel(new Date(2026, 2, 1, 12), now), new Date(2026, 2, 1).toLocaleDateString([], { weekday: "long", month: "long", day: "numeric" }))
  assert(dayLabel(new Date(2025, 11, 31), now).includes("2025"), "another year names it")
})

test("isEmojiOnly is true for a few emoji and nothing else", () => {
  assert(isEmojiOnly(" 🎉 ") && isEmojiOnly("👍🏽👍") && isEmojiOnly("🇫🇷") && isEmojiOnly("👨‍👩‍👧"), "emoji")
  assert(!isEmojiOnly("ok 🎉") && !isEmojiOnly("123") && !isEmojiOnly("") && !isEmojiOnly("🎉".repeat(9)), "not only emoji")
})

// dom.js: announcing ----------------------------------------------------------

test("announcement names the author and text, sums up a burst and cuts long text", () => {
  assertEqual(announcement([{ author: "Ada", text: "hi" }]), "Ada: hi")
  assertEqual(announcement([{ author: "Ada", text: "one" }, { author: "Bob", text: "two" }]), "2 new messages. Latest, Bob: two")
  assertEqual(announcement([{ author: "Ada", text: "x".repeat(500) }]).length, "Ada: ".length + MAX_ANNOUNCED_CHARS)
  assertEqual(announcement([]), "")
})

// cable.js: the room switcher -------------------------------------------------

test("switcherChoices filters rooms and people, names that start with the query first", () => {
  const rooms = [{ label: "Design review", href: "/rooms/2" }, { label: "All Talk", href: "/rooms/1" }, { label: "Ada Lovelace", href: "/rooms/9" }]
  const people = [{ label: "Ada Lovelace", href: "/users/3" }, { label: "Adam Smith", href: "/users/4" }]
  assertEqual(switcherChoices(rooms, people, "ta").map((choice) => choice.href), ["/rooms/1"])
  assertEqual(switcherChoices(rooms, people, "ad").map((choice) => choice.href), ["/rooms/9", "/users/4"])
  assertEqual(switcherChoices(rooms, people, "").length, 4)
})

// notifications.js ----------------------------------------------------------------

test("notificationState: on only when permitted and subscribed; blocked, unsupported and the iOS rule", () => {
  assertEqual(notificationState({ supported: true, permission: "granted", subscribed: true }), "on")
  assertEqual(notificationState({ supported: true, permission: "granted", subscribed: false }), "off")
  assertEqual(notificationState({ supported: true, permission: "default", subscribed: true }), "off")
  assertEqual(notificationState({ supported: true, permission: "denied", subscribed: true }), "blocked")
  assertEqual(notificationState({ supported: false }), "unsupported")
  assertEqual(notificationState({ supported: false, ios: true, standalone: false }), "ios")
  assertEqual(notificationState({ supported: false, ios: true, standalone: true }), "unsupported")
})

test("titleWithCount puts the unread rooms before the title once, and takes them away at zero", () => {
  assertEqual(titleWithCount("All Talk · Campfire", 3), "(3) All Talk · Campfire")
  assertEqual(titleWithCount("(3) All Talk · Campfire", 4), "(4) All Talk · Campfire")
  assertEqual(titleWithCount("(4) All Talk · Campfire", 0), "All Talk · Campfire")
  assertEqual(titleWithCount("(1984) a room", 0), "(1984) a room".replace(/^\(\d+\) /, ""))
})

test("base64UrlToBytes reads the web-push gem's padded key and unpadded text alike", () => {
  const bytes = Array.from({ length: 65 }, (_, i) => (i * 37 + 251) % 256)
  const padded = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_")
  assert(padded.endsWith("="), "65 bytes are padded")
  assertEqual(Array.from(base64UrlToBytes(padded)), bytes)
  assertEqual(Array.from(base64UrlToBytes(padded.replace(/=+$/, ""))), bytes)
  assertEqual(Array.from(base64UrlToBytes("-_8")), [251, 255])
})

test("subscriptionPayload is Campfire's push_subscription JSON", () => {
  const subscription = { toJSON: () => ({ endpoint: "https://push.example/1", expirationTime: null, keys: { p256dh: "BP", auth: "AU" } }) }
  assertEqual(subscriptionPayload(subscription), { push_subscription: { endpoint: "https://push.example/1", p256dh_key: "BP", auth_key: "AU" } })
})

test("notifiesInPage: only a mention of the reader, in a hidden tab, with push off and permission given", () => {
  const yes = { mentionsReader: true, hidden: true, pushOn: false, permission: "granted" }
  assert(notifiesInPage(yes), "all four")
  assert(!notifiesInPage({ ...yes, mentionsReader: false }), "not a mention")
  assert(!notifiesInPage({ ...yes, hidden: false }), "the tab is visible")
  assert(!notifiesInPage({ ...yes, pushOn: true }), "push shows it instead")
  assert(!notifiesInPage({ ...yes, permission: "default" }), "not permitted")
  assert(!notifiesInPage({ ...yes, permission: "denied" }), "blocked")
})

window.unitResults = results
