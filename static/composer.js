// Writing: the composer and its rich-text editor, the sanitizer every piece of HTML
// goes through, Markdown shortcuts, @mention and /play suggestions, typing
// notifications, and files sent from the composer.

import { h, send, parseMessages } from "./dom.js"
import { SOUND_NAMES } from "./sounds.js"

// The composer ----------------------------------------------------------------
// The composer: a rich-text editor for the textarea, optimistic sends with retry,
// drafts, typing notifications, replies, Up arrow to edit. Offline it stays usable:
// what is written waits in an outbox and is sent, in order, once the connection is back.

// Whether a failed send is worth retrying: no answer at all, the server's trouble, or a limit.
export const retryable = (status) => !status || status >= 500 || status === 408 || status === 429

export const RESEND_MIN_MS = 2000    // no answer at all: try again after this, then twice as long…
export const RESEND_MAX_MS = 30000   // …up to this, or at once when the connection comes back
export const LIMIT_WARNING_SHARE = 0.9   // the length limit is shown from this share of it on

// crypto.randomUUID is missing outside secure contexts (plain HTTP on a LAN): 128 random bits then.
export const uuid = () => crypto.randomUUID?.() ??
  [...crypto.getRandomValues(new Uint8Array(16))].map((byte) => byte.toString(16).padStart(2, "0")).join("")

// The unsent text of each room, kept in localStorage across reloads.
export class Drafts {
  constructor(roomId, storage = globalThis.localStorage) {
    Object.assign(this, { key: `campfire:draft:${roomId}`, storage })
  }

  load() { try { return this.storage.getItem(this.key) ?? "" } catch { return "" } }

  save(html) { try { html ? this.storage.setItem(this.key, html) : this.storage.removeItem(this.key) } catch {} }
}

export class Composer {
  #form
  #editor
  #send
  #list
  #stream
  #scroller
  #drafts
  #typing = null
  #pending = new WeakMap()   // pending message → { html, clientId }
  #outbox = []               // pending messages not yet answered, in the order they were written
  #sending = false
  #offline = false
  #resend = { timer: null, delay: RESEND_MIN_MS }
  #limit = h("p", { className: "composer__limit", role: "status", hidden: true })

  constructor(form, { list, stream, scroller, cable, onEditLast }) {
    Object.assign(this, { onEditLast })
    this.#form = form
    this.#editor = new RichTextEditor({ label: form.dataset.label || "Write a message", className: "composer__editor", submit: () => this.submit() })
    this.#list = list
    this.#stream = stream
    this.#scroller = scroller
    this.#drafts = new Drafts(form.dataset.roomId)
    this.#send = form.querySelector("button[type=submit]")
    const early = this.#replaceTextarea()
    form.append(this.#limit)
    this.autocomplete = new Autocomplete(this.#editor, form.dataset.roomId)
    form.append(this.autocomplete.element)
    const draft = this.#drafts.load()
    if (early.typed.trim()) {   // typed in the page's textarea before this script ran: it is the newest draft
      this.#editor.loadText(early.typed)
      this.#changed()
    } else if (draft) this.#editor.load(draft)
    if (early.focused) this.#editor.focus()
    const root = this.#editor.root
    form.addEventListener("submit", (event) => { event.preventDefault(); this.submit() })
    root.addEventListener("keydown", (event) => this.#keydown(event))
    root.addEventListener("input", () => this.#changed())
    root.addEventListener("blur", () => this.#typing?.stop())
    list.element.addEventListener("click", (event) => this.#retryClicked(event))
    if (cable) this.#connect(cable)
  }

  get editor() { return this.#editor }

  // Reply, as Campfire quotes: the quoted text and a cite linking back, then a line to write on.
  quote(message) {
    const text = message.querySelector(".message__body")?.innerText.trim() ?? ""
    const author = message.querySelector(".message__author")?.textContent.trim() ?? ""
    const href = message.querySelector(".message__permalink")?.getAttribute("href") ?? ""
    const line = h("div", {}, h("br"))
    const quote = document.createDocumentFragment()
    quote.append(h("blockquote", {}, text), h("cite", {}, h("a", { href }, author)), line)
    this.#editor.focus()
    this.#editor.insertFragment(quote)
    getSelection().collapse(line, 0)
  }

  async submit() {
    if (this.#editor.blank || this.#editor.disabled || this.#overLimit()) return
    const html = this.#editor.html, clientId = uuid()
    const body = new Sanitizer().fromNode(this.#editor.root)
    this.#editor.clear()
    this.#drafts.save("")
    this.#typing?.stop()
    if (!this.#scroller.hasLatest) await this.#scroller.jumpToLatest()   // a permalink page: send from the latest
    const pending = this.#scroller.change(() => this.#list.addPending(clientId, body), { follow: true })
    this.#pending.set(pending, { html, clientId })
    this.#queue(pending)
    this.#editor.root.focus()
  }

  #queue(pending) {
    this.#outbox.push(pending)
    if (this.#offline || this.#resend.timer) this.#wait(pending)
    this.#drain()
  }

  // One message at a time, oldest first, so they arrive in the order they were written.
  async #drain() {
    if (this.#sending) return
    this.#sending = true
    while (this.#outbox.length && !this.#offline && !this.#resend.timer) {
      const pending = this.#outbox[0]
      const delivered = !pending.isConnected || await this.#post(pending)
      if (delivered === null) {   // no answer: it, and everything after it, waits
        for (const waiting of this.#outbox) this.#wait(waiting)
        this.#scheduleResend()
        break
      }
      this.#outbox.shift()
      this.#resend.delay = RESEND_MIN_MS
    }
    this.#sending = false
  }

  #wait(pending) {
    if (pending.isConnected) pending.querySelector(".message__status").textContent = "Waiting for the connection…"
    pending.classList.add("message--waiting")
  }

  #scheduleResend() {
    clearTimeout(this.#resend.timer)
    this.#resend.timer = setTimeout(() => this.#resendNow(), this.#resend.delay)
    this.#resend.delay = Math.min(RESEND_MAX_MS, this.#resend.delay * 2)
  }

  #resendNow() {
    clearTimeout(this.#resend.timer)
    this.#resend.timer = null
    this.#drain()
  }

  // The page's plain textarea takes typing until this script runs (a slow phone may
  // take a second or more): what it holds, and whether it had the focus, go to the editor.
  #replaceTextarea() {
    const textarea = this.#form.querySelector("textarea")
    const early = { typed: textarea?.value ?? "", focused: textarea !== null && document.activeElement === textarea }
    if (textarea) textarea.value = ""
    this.#form.querySelector(`label[for="${textarea?.id}"]`)?.remove()
    textarea?.removeAttribute("aria-label")
    Object.assign(textarea ?? {}, { hidden: true, required: false, tabIndex: -1 })
    this.#form.classList.add("composer--rich")
    this.#form.prepend(this.#editor.toolbar())
    ;(textarea ?? this.#send).before(this.#editor.root)
    return early
  }

  // Up arrow in an empty composer edits your last message, as in Campfire.
  #keydown(event) {
    if (event.key !== "ArrowUp" || event.defaultPrevented || event.shiftKey || event.ctrlKey || event.metaKey || event.altKey) return
    const last = this.#editor.blank && this.#list.lastOwnMessage()
    if (!last || !this.onEditLast) return
    event.preventDefault()
    this.onEditLast(last)
  }

  // The server refuses a body longer than data-max-chars: say so while it is being written.
  #overLimit() {
    const limit = Number(this.#form.dataset.maxChars) || Infinity
    // The text is a lower bound of the HTML's length: the HTML is built only when it may matter.
    const length = this.#editor.root.textContent.length * 2 < limit ? 0 : this.#editor.html.length
    const over = length > limit, near = length > limit * LIMIT_WARNING_SHARE
    this.#limit.hidden = !near
    this.#limit.textContent = over ? `Too long to send: ${(length - limit).toLocaleString()} characters over the limit of ${limit.toLocaleString()}.`
      : near ? `${(limit - length).toLocaleString()} characters left (a message holds ${limit.toLocaleString()}).` : ""
    this.#limit.classList.toggle("composer__limit--over", over)
    return over
  }

  #changed() {
    this.#overLimit()
    const blank = this.#editor.blank
    this.#drafts.save(blank ? "" : this.#editor.root.innerHTML)
    this.#typing?.typed(blank)
  }

  // true when the server kept it, false when it refused, null when there was no answer.
  // A resend carries the same client_message_id: the server keeps the message once.
  async #post(pending) {
    const sending = this.#pending.get(pending)
    pending.querySelector(".message__status").textContent = "Sending…"
    pending.classList.remove("message--waiting")
    if (!sending.unfurled) {
      sending.unfurled = true
      sending.html += await linkPreview(sending.html)
    }
    const { html, clientId } = sending
    const response = await send(this.#form.action, { "message[body]": html, "message[client_message_id]": clientId })
    if (!response) return null
    if (!response.ok) return this.#failed(pending, response.status, response.headers.get("X-Refused-Because")), false
    let text = null
    try { text = await response.text() } catch { return null }
    const [message] = parseMessages(text)
    if (message) this.#stream.add(message, { own: true })
    return true
  }

  #failed(pending, status, reason = null) {
    if (!pending.isConnected) return
    pending.classList.add("message--failed")
    pending.querySelector(".message__status").textContent = reason ? `Not sent: ${reason}` : failureText(status)
    const retry = h("span", { className: "message__retry" },
      retryable(status) ? h("button", { type: "button", className: "button button--small", "data-action": "retry" }, "Retry") : "",
      h("button", { type: "button", className: "button button--small", "data-action": "discard" }, "Discard"))
    pending.querySelector(".message__meta").append(" ", retry)
    retry.querySelector("button").focus({ preventScroll: true })
  }

  #retryClicked(event) {
    const button = event.target.closest("[data-action=retry], [data-action=discard]")
    const pending = button?.closest(".message--pending")
    if (!pending || !this.#pending.has(pending)) return
    if (button.dataset.action === "discard") return pending.remove()
    pending.classList.remove("message--failed")
    button.parentElement.remove()
    this.#queue(pending)   // the same client_message_id: the server keeps one message
  }

  #connect(cable) {
    this.#typing = connectTyping(cable, this.#form.dataset.roomId, this.#list.viewer.id, this.#form)
    cable.addEventListener("offline", () => this.#setOffline(true))
    cable.addEventListener("online", () => this.#setOffline(false))
    cable.addEventListener("connected", () => this.#resendNow())
    addEventListener("online", () => this.#resendNow())
    this.#setOffline(cable.offline)
  }

  // Offline the composer stays usable; what is sent meanwhile waits its turn.
  #setOffline(offline) {
    this.#offline = offline
    this.#form.classList.toggle("composer--offline", offline)
    if (offline) for (const waiting of this.#outbox) this.#wait(waiting)
    else this.#resendNow()
  }
}

// A message that is only a link carries the page's preview, as Campfire's composer adds it: the
// server fetches it (POST /unfurl_link), and a slow or missing preview never holds the message up.
export const UNFURL_WAIT_MS = 3000
export const onlyLink = (html) => {
  const text = new DOMParser().parseFromString(html, "text/html").body.textContent.trim()
  return /^https?:\/\/\S+$/i.test(text) ? text : null
}

export function previewAttachment({ title, url, image, description }) {
  const attachment = document.createElement("action-text-attachment")
  const attributes = { "content-type": "application/vnd.actiontext.opengraph-embed", href: url, filename: title, caption: description }
  if (image) attributes.url = image
  for (const [name, value] of Object.entries(attributes)) attachment.setAttribute(name, value)
  return attachment.outerHTML
}

async function linkPreview(html) {
  const url = onlyLink(html)
  if (!url) return ""
  try {
    const response = await fetch("/unfurl_link", {
      method: "POST", body: JSON.stringify({ url }), signal: AbortSignal.timeout(UNFURL_WAIT_MS),
      headers: { "Content-Type": "application/json", Accept: "application/json" } })
    return response.status === 200 ? previewAttachment(await response.json()) : ""
  } catch {
    return ""
  }
}

const FAILURES = { 0: "no connection", 413: "too long", 422: "empty", 403: "not allowed here", 404: "not allowed here" }
export const failureText = (status) => `Not sent: ${FAILURES[status ?? 0] ?? "the server had a problem"}.`

// The editor ------------------------------------------------------------------
// A contenteditable textbox with Trix's formatting. What comes in is rebuilt by
// the Sanitizer; what goes out is editorToHTML.

// key: the shortcut with Ctrl (⌘ on Apple systems).
const FORMATS = [
  { name: "bold", label: "Bold", text: "B", key: "b", command: "bold" },
  { name: "italic", label: "Italic", text: "I", key: "i", command: "italic" },
  { name: "strike", label: "Strikethrough", text: "S", key: "shift+x", command: "strikeThrough" },
  { name: "link", label: "Link", text: "", key: "shift+u" },   // Ctrl+K is the room switcher
  { name: "quote", label: "Quote", text: "", key: "shift+9", block: "blockquote" },
  { name: "code", label: "Code block", text: "", key: "shift+c", block: "pre" },
  { name: "bullets", label: "Bulleted list", text: "", key: "shift+8", command: "insertUnorderedList", list: "ul" },
  { name: "numbers", label: "Numbered list", text: "", key: "shift+7", command: "insertOrderedList", list: "ol" },
]
const APPLE = /Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent)
const TOUCH = matchMedia("(pointer: coarse)")   // phones: Enter is a new line, a button sends
let editors = 0

export class RichTextEditor {
  #toolbar = null

  // submit: what Enter does (Shift+Enter is a line break); cancel: what Escape does.
  constructor({ label, className = "", submit, cancel }) {
    Object.assign(this, { submit, cancel })
    const root = this.root = h("div", {
      id: `rich_text_${++editors}`, className: `rich-text ${className}`, contentEditable: "true",
      role: "textbox", "aria-multiline": "true", "aria-label": label, "data-placeholder": label,
    })
    root.addEventListener("keydown", (event) => this.#keydown(event))
    root.addEventListener("paste", (event) => this.#paste(event, event.clipboardData))
    root.addEventListener("drop", (event) => this.#paste(event, event.dataTransfer))
    root.addEventListener("input", (event) => this.#markdown(event))
    root.addEventListener("input", () => { if (this.blank && !root.querySelector(":not(div, br)")) root.replaceChildren() })  // the placeholder shows
  }

  get html() { return editorToHTML(this.root) }
  get blank() { return isBlank(this.root) }
  get disabled() { return this.root.contentEditable !== "true" }

  set disabled(flag) {
    this.root.contentEditable = String(!flag)
    this.root.setAttribute("aria-disabled", String(flag))
    this.#toolbar?.update()
  }

  load(html, { mentionName } = {}) {
    this.root.replaceChildren(new Sanitizer({ mentionName }).fromHTML(html))
  }

  // Plain text, a line a paragraph, as the editor writes lines.
  loadText(text) {
    this.root.replaceChildren(...text.split("\n").map((line) => h("div", {}, line || h("br"))))
  }

  clear() {
    this.root.replaceChildren()
    this.#changed()
  }

  focus() {
    this.root.focus()
    getSelection().selectAllChildren(this.root)
    getSelection().collapseToEnd()
  }

  toolbar() { return (this.#toolbar ??= new Toolbar(this)).element }

  run(format) {
    if (this.disabled) return
    this.root.focus()
    if (!this.root.firstChild) getSelection().collapse(this.root.appendChild(h("div", {}, h("br"))), 0)  // a line to format
    const caret = format.block || format.list ? this.#caretOffset() : null   // Chrome moves it to the line's start
    // Quotes and lists are undone by hand: Chrome writes style attributes there (our CSP refuses them).
    const block = format.block && this.#closest(format.block), list = format.list && this.#closest("ul, ol")
    if (format.name === "link") this.#link()
    else if (block?.localName === "pre") document.execCommand("formatBlock", false, "div")
    else if (block) block.replaceWith(...asLines(block))
    else if (list && list.localName === format.list) list.replaceWith(...[...list.children].map((item) => h("div", {}, ...item.childNodes)))
    else if (list) list.replaceWith(h(format.list, {}, ...list.childNodes))
    else document.execCommand(format.command ?? "formatBlock", false, format.block)
    if (caret !== null) this.#placeCaret(caret)
    this.#changed()
  }

  // The collapsed caret as a count of characters before it, and back.
  #caretOffset() {
    const range = this.#range()?.cloneRange()
    if (!range?.collapsed) return null
    range.setStart(this.root, 0)
    return range.toString().length
  }

  #placeCaret(offset) {
    const walker = document.createTreeWalker(this.root, NodeFilter.SHOW_TEXT)
    while (walker.nextNode()) {
      if (offset <= walker.currentNode.length) return getSelection().collapse(walker.currentNode, offset)
      offset -= walker.currentNode.length
    }
  }

  isActive(format) {
    if (format.list) return this.#closest("ul, ol")?.localName === format.list
    if (format.block || format.name === "link") return Boolean(this.#closest(format.block ?? "a"))
    try { return document.queryCommandState(format.command) } catch { return false }
  }

  insertFragment(...nodes) {
    const range = this.#range()
    if (range) this.#insert(range, nodes)
    else this.root.append(...nodes), this.focus(), this.#changed()
  }

  // For autocomplete: the caret's text node up to the caret.
  textBeforeCaret() {
    const range = this.#range()
    return range?.collapsed && range.startContainer.nodeType === Node.TEXT_NODE ? range.startContainer.data.slice(0, range.startOffset) : ""
  }

  // Replaces the `length` characters before the caret with nodes.
  replaceBeforeCaret(length, ...nodes) {
    const range = this.#range()
    if (range?.startContainer.nodeType !== Node.TEXT_NODE) return
    range.setStart(range.startContainer, Math.max(0, range.startOffset - length))
    this.#insert(range, nodes)
  }

  #insert(range, nodes) {
    range.deleteContents()
    const fragment = document.createDocumentFragment()
    fragment.append(...nodes)
    const last = fragment.lastChild
    range.insertNode(fragment)
    if (last) getSelection().collapse(last.parentNode, [...last.parentNode.childNodes].indexOf(last) + 1)
    this.#changed()
  }

  #keydown(event) {
    if (event.isComposing || event.defaultPrevented) return
    const plain = !event.ctrlKey && !event.metaKey && !event.altKey
    if (event.key === "Escape" && this.cancel) this.cancel()
    else if (event.key === "Enter" && plain && event.shiftKey) document.execCommand("insertLineBreak")
    else if (event.key === "Enter" && plain && this.submit && !TOUCH.matches) this.submit()
    else return this.#shortcut(event)
    event.preventDefault()
  }

  #shortcut(event) {
    if (!(APPLE ? event.metaKey : event.ctrlKey) || event.altKey) return
    const key = (event.shiftKey ? "shift+" : "") + (/^Digit\d$/.test(event.code) ? event.code.slice(5) : event.key.toLowerCase())
    const format = FORMATS.find((format) => format.key === key)
    if (format || key === "u") event.preventDefault()   // Campfire has no underline
    if (format) this.run(format)
  }

  // Markdown typed: a closing "**", "_", "`" or "~~" turns its span into rich text; "- ",
  // "1. ", "> " or "```" at the start of a line turns the line into a list, quote or code block.
  #markdown(event) {
    if (event.inputType !== "insertText" || !event.data || this.disabled || this.#closest("pre, code")) return
    const range = this.#range(), node = range?.startContainer
    if (!range?.collapsed || node.nodeType !== Node.TEXT_NODE) return
    const before = this.textBeforeCaret()
    const lineStart = !node.previousSibling && (node.parentNode === this.root || (node.parentNode.localName === "div" && node.parentNode.parentNode === this.root))
    const block = lineStart && blockShortcut(before)
    if (block) return this.#startBlock(node, before.length, FORMATS.find((format) => format.name === block))
    const inline = inlineShortcut(before)
    if (!inline) return
    const after = document.createTextNode("\u200b")   // the caret's place after the span: typing goes on in plain text
    this.replaceBeforeCaret(inline.length, h(inline.tag, {}, inline.text), after)
    getSelection().collapse(after, 1)
  }

  #startBlock(node, length, format) {
    node.deleteData(0, length)   // the line's first text: the marks just typed
    const line = node.parentNode
    if (!node.length) node.remove()
    if (line !== this.root && !line.firstChild) line.append(h("br"))
    if (line !== this.root) getSelection().collapse(line, 0)
    this.run(format)
  }

  // Paste and drop: HTML rebuilt by the allow-list, plain text as text (or, written in
  // Markdown, as the rich text it means), files refused.
  #paste(event, data) {
    event.preventDefault()
    const html = data?.getData("text/html"), text = data?.getData("text/plain")
    const plainHTML = !html || !/<(?:strong|b|em|i|code|pre|ul|ol|blockquote|a|h[1-6]|del|s)\b/i.test(html)
    if (text && plainHTML && looksLikeMarkdown(text) && !this.#closest("pre")) this.insertFragment(new Sanitizer().fromHTML(markdownToHTML(text)))
    else if (html) this.insertFragment(new Sanitizer().fromHTML(html))
    else if (text && !document.execCommand("insertText", false, text)) this.insertFragment(text)
  }

  #link() {
    const current = this.#closest("a")
    const answer = prompt("Link address (empty removes the link)", current?.getAttribute("href") ?? "https://")?.trim()
    if (answer == null) return
    const href = safeHref(answer)
    if (!href) current?.replaceWith(...current.childNodes)
    else if (current) current.setAttribute("href", href)
    else if (this.#range()?.collapsed === false) document.execCommand("createLink", false, href)
    else this.insertFragment(h("a", { href }, href))
  }

  #closest(selector) {
    const node = this.#range()?.startContainer
    const found = (node?.nodeType === Node.ELEMENT_NODE ? node : node?.parentElement)?.closest(selector)
    return found !== this.root && this.root.contains(found) ? found : null
  }

  #range() {
    const selection = getSelection()
    const range = selection.rangeCount ? selection.getRangeAt(0) : null
    return range && this.root.contains(range.commonAncestorContainer) ? range : null
  }

  #changed() {
    this.root.dispatchEvent(new Event("input", { bubbles: true }))
  }
}

// A quote's content as lines (inline runs in <div>s), to unwrap it.
function asLines(block) {
  const lines = []
  let line = null
  for (const child of [...block.childNodes]) {
    if (/^(div|ul|ol|blockquote|pre|h1)$/.test(child.localName)) {
      lines.push(child)
      line = null
    } else {
      if (!line) lines.push(line = h("div"))
      line.append(child)
    }
  }
  return lines
}

// The formatting buttons: one tab stop, arrow keys move between them (WAI-ARIA toolbar).
class Toolbar {
  #editor
  #buttons

  constructor(editor) {
    this.#editor = editor
    const mod = APPLE ? "Meta+" : "Control+"
    this.#buttons = FORMATS.map((format, index) => {
      const keys = (mod + format.key).replace("shift", "Shift").replace(/\w$/, (key) => key.toUpperCase())
      const button = h("button", {
        type: "button", className: `toolbar__button toolbar__button--${format.name}`, tabIndex: index ? -1 : 0,
        title: `${format.label} (${keys.replace("Control", "Ctrl").replace("Meta+", "⌘")})`,
        "aria-label": format.label, "aria-pressed": "false", "aria-keyshortcuts": keys,
      }, format.text)
      button.addEventListener("mousedown", (event) => event.preventDefault())  // keep the editor's selection
      button.addEventListener("click", () => { editor.run(format); this.update() })
      return button
    })
    this.element = h("div", { className: "toolbar", role: "toolbar", "aria-label": "Text formatting", "aria-controls": editor.root.id }, ...this.#buttons)
    this.element.addEventListener("keydown", (event) => this.#move(event))
    document.addEventListener("selectionchange", () => { if (document.activeElement === editor.root) this.update() })
  }

  update() {
    FORMATS.forEach((format, index) => {
      this.#buttons[index].setAttribute("aria-pressed", String(this.#editor.isActive(format)))
      this.#buttons[index].disabled = this.#editor.disabled
    })
  }

  #move(event) {
    const count = this.#buttons.length, index = this.#buttons.indexOf(document.activeElement)
    const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: count - 1 }[event.key]
    if (index < 0 || next === undefined) return
    event.preventDefault()
    const target = this.#buttons[(next + count) % count]
    for (const button of this.#buttons) button.tabIndex = button === target ? 0 : -1
    target.focus()
  }
}

// Rich text -------------------------------------------------------------------
// Every piece of HTML that reaches an editor (paste, drop, drafts, messages to
// edit) and every body we send is rebuilt node by node from an allow-list of
// Campfire's Trix tags. No markup is copied, and no attribute but a checked href.

export const MENTION_TYPE = "application/vnd.campfire.mention"
const MAX_DEPTH = 40

// Source tag → the tag we write.
const TAGS = {
  strong: "strong", b: "strong", em: "em", i: "em", del: "del", s: "del", strike: "del",
  a: "a", blockquote: "blockquote", pre: "pre", code: "code", ul: "ul", ol: "ol", li: "li",
  h1: "h1", h2: "h1", h3: "h1", h4: "h1", h5: "h1", h6: "h1", div: "div", p: "div", br: "br", cite: "cite",
}
// Block elements we don't keep become plain blocks; their text stays.
const AS_BLOCK = new Set(["section", "article", "header", "footer", "aside", "main", "nav", "figure",
  "figcaption", "address", "dl", "dt", "dd", "tr", "table", "hr", "details", "summary"])
// Nothing inside these survives.
const DROPPED = new Set(["script", "style", "template", "iframe", "object", "embed", "img", "picture", "svg",
  "math", "video", "audio", "canvas", "noscript", "title", "head", "button", "input", "select", "textarea"])
const BLOCKS = new Set(["div", "blockquote", "pre", "ul", "ol", "li", "h1", "cite"])
const SAFE_SCHEMES = /^(?:https?|mailto)$/i
const SGID = /^[\w+/=-]{1,1000}$/

export function safeHref(href) {
  // Browsers ignore tabs and newlines anywhere and controls and spaces at the ends; so do we.
  const url = String(href ?? "").replace(/[\t\n\r]/g, "").replace(/^[\u0000-\u0020]+|[\u0000-\u0020]+$/g, "")
  const scheme = /^([^/?#]*?):/.exec(url.replace(/[\u0000-\u0020\u007f]/g, ""))
  return url && (!scheme || SAFE_SCHEMES.test(scheme[1])) ? url : null
}

// A mention as the editors show it: not editable, sent as an <action-text-attachment>.
export const mentionChip = (sgid, name) =>
  h("span", { className: "mention-chip", contentEditable: "false", "data-sgid": sgid }, "@" + String(name).replace(/^@/, ""))

export class Sanitizer {
  // mode "editor": mentions become chips; "submit": chips become <action-text-attachment>.
  constructor({ mode = "editor", mentionName = () => "mention" } = {}) {
    this.mode = mode
    this.mentionName = mentionName
    this.mentions = 0
  }

  // Untrusted HTML, parsed in an inert document (no scripts run, no images load), rebuilt.
  fromHTML(html) {
    return this.fromNode(new DOMParser().parseFromString(defuse(String(html)), "text/html").body)
  }

  fromNode(root) {
    const fragment = document.createDocumentFragment()
    this.#children(root, fragment, 0)
    return fragment
  }

  #children(source, target, depth) {
    for (const child of source.childNodes) this.#node(child, target, depth)
  }

  #node(node, target, depth) {
    if (node.nodeType === Node.TEXT_NODE) return target.append(this.mode === "submit" ? plainSpaces(node.data) : node.data)
    if (node.nodeType !== Node.ELEMENT_NODE) return
    const name = node.localName
    if (DROPPED.has(name)) return
    if (depth > MAX_DEPTH) return target.append(node.textContent)
    const mention = this.#mention(node)
    if (mention) return target.append(mention)
    const tag = TAGS[name] ?? (AS_BLOCK.has(name) ? "div" : null)
    if (!tag) return this.#children(node, target, depth + 1)  // unknown: keep what's inside
    if (tag === "a" && !safeHref(node.getAttribute("href"))) return this.#children(node, target, depth + 1)
    const element = document.createElement(tag)
    if (tag === "a") element.setAttribute("href", safeHref(node.getAttribute("href")))
    if (tag !== "br") this.#children(node, element, depth + 1)
    target.append(element)
  }

  #mention(node) {
    const editorChip = node.localName === "span" && node.classList.contains("mention-chip")
    const attachment = node.localName === "action-text-attachment"
    if (editorChip || attachment) {
      const sgid = node.getAttribute(editorChip ? "data-sgid" : "sgid") ?? ""
      if (attachment && node.getAttribute("content-type") !== MENTION_TYPE) return null
      if (!SGID.test(sgid)) return document.createTextNode(node.textContent)
      const name = editorChip ? node.textContent : this.mentionName(sgid, this.mentions++)
      return this.mode === "submit" ? h("action-text-attachment", { sgid, "content-type": MENTION_TYPE }) : mentionChip(sgid, name)
    }
    // Copied from a rendered message: "@Name", which the server links again.
    if (node.classList?.contains("mention")) return document.createTextNode("@" + node.textContent.trim())
    return null
  }
}

// Editors write a typed space as U+00A0 at the end of a line; between words it's a space.
// A zero-width space only holds the caret after a Markdown shortcut's span: it isn't sent.
const plainSpaces = (text) => text.replace(/\u200b/g, "").replace(/(?<=^|\S)\u00a0(?=\S)/g, " ")

// Renames on* attributes before parsing. Never run anyway (the document is inert and
// nothing is copied from it), but a parser meeting them reports a CSP violation.
const TAG = /<[a-z][^\s/>]*(?:[\s/]+[^\s"'>/=]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>]*))?)*[\s/]*>/gi
const HANDLER = /([\s/"'])on(?=[^\s"'>/=]*\s*(?:=|[\s/>]))/gi
export const defuse = (html) => html.replace(TAG, (tag) => tag.replace(HANDLER, "$1data-was-on"))

// The editor's content as the HTML we post: Trix's shape, top-level text in <div>s.
export function editorToHTML(root) {
  const fragment = new Sanitizer({ mode: "submit" }).fromNode(root)
  const holder = h("div")
  let line = null
  for (const node of [...fragment.childNodes]) {
    if (node.nodeType === Node.ELEMENT_NODE && BLOCKS.has(node.localName)) {
      holder.append(node)
      line = null
    } else {
      line ??= holder.appendChild(h("div"))
      line.append(node)
    }
  }
  trimEmptyEdges(holder)
  return holder.innerHTML
}

export function isBlank(root) {
  return !root.textContent.replace(/[\s\u200b]/g, "") && !root.querySelector(".mention-chip")
}

function trimEmptyEdges(holder) {
  const empty = (node) => node.nodeType === Node.ELEMENT_NODE && !node.textContent.trim() &&
    !node.querySelector("action-text-attachment")
  while (holder.firstChild && empty(holder.firstChild)) holder.firstChild.remove()
  while (holder.lastChild && empty(holder.lastChild)) holder.lastChild.remove()
  const last = holder.lastElementChild
  while (last?.lastChild?.localName === "br") last.lastChild.remove()
}

// Markdown --------------------------------------------------------------------
// Markdown, as people used to Slack and Zulip type it by habit: shortcuts that turn into
// the rich text they mean as you type, and a pasted Markdown text converted the same way.
// No DOM here: the editor (above) applies what these find.

// Inline marks, found when their closing delimiter is typed: the text before the caret
// ends with the whole span. The opening delimiter must start a word, so snake_case and
// 2*3*4 stay as they are; bold (**) is looked for before italic (*).
const WORD_START = String.raw`(?:^|(?<=[\s(\u00a0]))`
const span = (delimiter) => {
  const mark = delimiter.replace(/\*/g, "\\*"), char = delimiter[0] === "*" ? "\\*" : delimiter[0]
  const edge = `[^\\s${char}]`
  return new RegExp(`${WORD_START}${mark}(${edge}|${edge}[^${char}]*${edge})${mark}$`, "u")
}
const INLINE = [
  { tag: "strong", pattern: span("**") },
  { tag: "strong", pattern: span("__") },
  { tag: "del", pattern: span("~~") },
  { tag: "em", pattern: span("*") },
  { tag: "em", pattern: span("_") },
  { tag: "code", pattern: new RegExp(`(?:^|(?<=[^\`]))\`([^\`]+)\`$`, "u") },
]

// { tag, length, text }: the last `length` characters before the caret are a span
// of `tag` holding `text`; null when they aren't.
export function inlineShortcut(before) {
  for (const { tag, pattern } of INLINE) {
    const match = pattern.exec(before)
    if (match && !(tag !== "code" && /^\s|\s$/.test(match[1]))) return { tag, length: match[0].length, text: match[1] }
  }
  return null
}

// What the start of a line turns into once the space after it is typed ("- ", "1. ", "> ")
// or, for a code block, once its third backtick is: the name of the editor's format.
export function blockShortcut(line) {
  const text = line.replace(/\u00a0/g, " ")
  if (/^[-*+] $/.test(text)) return "bullets"
  if (/^1[.)] $/.test(text)) return "numbers"
  if (/^> $/.test(text)) return "quote"
  if (text === "```") return "code"
  return null
}

// Whether pasted plain text is written in Markdown (a list, a quote, a fence, a heading,
// or an inline mark): only then is it converted.
export function looksLikeMarkdown(text) {
  return /^\s{0,3}(?:[-*+] \S|\d+[.)] \S|> ?\S|#{1,6} \S|```)/m.test(text) ||
    /\*\*\S(?:.*?\S)?\*\*|__\S(?:.*?\S)?__|~~\S(?:.*?\S)?~~|`[^`\n]+`|\[[^\]\n]+\]\([^)\s]+\)|(?:^|\s)[*_]\S(?:[^*_\n]*\S)?[*_](?=\s|[.,;:!?]|$)/m.test(text)
}

const escapeHTML = (text) => text.replace(/[&<>"]/g, (char) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[char])

// One line's inline marks as HTML (the text escaped first; code spans keep their marks).
export function inlineHTML(text) {
  const codes = []
  let html = escapeHTML(text).replace(/`([^`]+)`/g, (_, code) => `\u0000${codes.push(code) - 1}\u0000`)
  html = html
    .replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, '<a href="$2">$1</a>')
    .replace(/(^|[\s(])(\*\*|__)(\S(?:.*?\S)?)\2(?=$|[\s).,;:!?])/g, "$1<strong>$3</strong>")
    .replace(/(^|[\s(])~~(\S(?:.*?\S)?)~~(?=$|[\s).,;:!?])/g, "$1<del>$2</del>")
    .replace(/(^|[\s(>])([*_])(\S(?:.*?\S)?)\2(?=$|[\s).,;:!?<])/g, "$1<em>$3</em>")
  return html.replace(/\u0000(\d+)\u0000/g, (_, index) => `<code>${codes[index]}</code>`)
}

// A Markdown text as the editor's HTML: fenced code, quotes, lists, headings, lines.
export function markdownToHTML(text) {
  const lines = text.replace(/\r\n?/g, "\n").split("\n")
  const out = []
  for (let index = 0; index < lines.length;) {
    const line = lines[index]
    if (/^\s{0,3}```/.test(line)) {
      const code = []
      for (index++; index < lines.length && !/^\s{0,3}```\s*$/.test(lines[index]); index++) code.push(lines[index])
      index++
      out.push(`<pre>${escapeHTML(code.join("\n"))}</pre>`)
    } else if (/^\s{0,3}>/.test(line)) {
      const quoted = []
      for (; index < lines.length && /^\s{0,3}>/.test(lines[index]); index++) quoted.push(lines[index].replace(/^\s{0,3}> ?/, ""))
      out.push(`<blockquote>${quoted.map(inlineHTML).join("<br>")}</blockquote>`)
    } else if (/^\s{0,3}(?:[-*+]|\d+[.)]) +\S/.test(line)) {
      const ordered = /^\s{0,3}\d/.test(line), item = ordered ? /^\s{0,3}\d+[.)] +/ : /^\s{0,3}[-*+] +/
      const items = []
      for (; index < lines.length && item.test(lines[index]); index++) items.push(lines[index].replace(item, ""))
      const tag = ordered ? "ol" : "ul"
      out.push(`<${tag}>${items.map((each) => `<li>${inlineHTML(each)}</li>`).join("")}</${tag}>`)
    } else if (/^#{1,6} +\S/.test(line)) {
      out.push(`<h1>${inlineHTML(line.replace(/^#{1,6} +/, ""))}</h1>`)
      index++
    } else {
      out.push(line.trim() ? `<div>${inlineHTML(line)}</div>` : "<div><br></div>")
      index++
    }
  }
  return out.join("")
}

// Suggestions -----------------------------------------------------------------
// "@name" suggests room members (a mention chip) and "/play " the sounds, in a
// listbox driven by aria-activedescendant: ↑/↓ move, Enter or Tab choose, Escape closes.

export const MENTION_DEBOUNCE_MS = 300   // Campfire waits as long before asking for names
const MENTION = /(?:^|[\s(])@([\p{L}\p{N}_.'-]+(?: [\p{L}\p{N}_.'-]*)?)$/u   // "@Ada", "@Ada Lo"
const PLAY = /^\/play (\w*)$/

// What the text before the caret asks for, if anything.
export function autocompleteQuery(beforeCaret, wholeText) {
  const before = beforeCaret.replace(/\u00a0/g, " ")
  const play = PLAY.exec(wholeText.replace(/\u00a0/g, " "))
  if (play && before.endsWith("/play " + play[1])) return { kind: "sound", query: play[1] }
  const mention = MENTION.exec(before)
  return mention && { kind: "mention", query: mention[1] }
}

export const soundsMatching = (query) =>
  SOUND_NAMES.filter((name) => name.startsWith(query.toLowerCase()))

export class Autocomplete {
  #editor
  #roomId
  #options = []
  #active = -1
  #request = null
  #timer = null
  #ask = null   // the question the list answers

  constructor(editor, roomId) {
    this.#editor = editor
    this.#roomId = roomId
    const list = this.element = h("ul", { id: `${editor.root.id}_suggestions`, className: "autocomplete", role: "listbox", "aria-label": "Suggestions", hidden: true })
    list.addEventListener("mousedown", (event) => event.preventDefault())   // keep the caret in the editor
    list.addEventListener("click", (event) => {
      const option = event.target.closest("[role=option]")
      if (option) this.#choose([...list.children].indexOf(option))
    })
    const root = editor.root
    root.setAttribute("aria-autocomplete", "list")
    root.setAttribute("aria-controls", list.id)
    root.addEventListener("keydown", (event) => this.#keydown(event), true)   // before the editor's Enter
    root.addEventListener("input", () => this.#changed())
    root.addEventListener("blur", () => this.close())
  }

  get open() { return !this.element.hidden }

  close() {
    clearTimeout(this.#timer)
    this.#request?.abort()
    this.#ask = null
    this.#show([])
  }

  #keydown(event) {
    if (!this.open || event.isComposing) return
    const step = { ArrowDown: 1, ArrowUp: -1 }[event.key]
    const count = this.#options.length
    if (step) this.#activate((this.#active + step + count) % count)
    else if (event.key === "Enter" && this.#ask?.kind === "sound" && this.#options[this.#active]?.value === this.#ask.query) {
      this.close()  // "/play tada" typed in full: Enter sends it, as it would without the list
      return
    } else if ((event.key === "Enter" || event.key === "Tab") && !event.shiftKey) this.#choose(this.#active)
    else if (event.key === "Escape") this.close()
    else return
    event.preventDefault()
  }

  #changed() {
    const ask = autocompleteQuery(this.#editor.textBeforeCaret(), this.#editor.root.textContent)
    if (!ask) return this.close()
    this.#ask = ask
    clearTimeout(this.#timer)
    if (ask.kind === "sound") this.#show(soundsMatching(ask.query).map((name) => ({ label: name, value: name })))
    else this.#timer = setTimeout(() => this.#fetchPeople(ask), MENTION_DEBOUNCE_MS)
  }

  async #fetchPeople(ask) {
    this.#request?.abort()
    const request = this.#request = new AbortController()
    let people = []
    try {
      const response = await fetch(`/autocompletable/users?${new URLSearchParams({ query: ask.query, room_id: this.#roomId })}`, { signal: request.signal })
      if (response.ok) people = await response.json()
    } catch { return }
    if (this.#ask === ask) this.#show(people.map((person) => person.group
      ? { label: `@${person.group}`, value: person, note: person.disabled_reason ?? person.description, disabled: Boolean(person.disabled_reason) }
      : { label: person.name, value: person, avatar: person.avatar_url }))
  }

  #show(options) {
    this.#options = options
    this.element.replaceChildren(...options.map((option, index) =>
      h("li", { id: `${this.element.id}_${index}`, className: "autocomplete__option", role: "option", "aria-selected": "false", "aria-disabled": option.disabled ? "true" : null },
        option.avatar ? h("img", { className: "avatar", src: option.avatar, alt: "", width: 20, height: 20 }) : "", option.label,
        option.note ? h("span", { className: "autocomplete__note" }, ` — ${option.note}`) : "")))
    this.element.hidden = !options.length
    this.#activate(options.length ? 0 : -1)
  }

  #activate(index) {
    this.#active = index
    ;[...this.element.children].forEach((item, i) => item.setAttribute("aria-selected", String(i === index)))
    const item = this.element.children[index]
    if (item) this.#editor.root.setAttribute("aria-activedescendant", item.id)
    else this.#editor.root.removeAttribute("aria-activedescendant")
    item?.scrollIntoView({ block: "nearest" })
  }

  #choose(index) {
    const option = this.#options[index], ask = this.#ask
    if (!option || !ask || option.disabled) return   // a disabled @everyone says why not, and stays
    this.close()
    if (option.value.group) this.#editor.replaceBeforeCaret(ask.query.length + 1, `@${option.value.group}`, "\u00a0")
    else if (ask.kind === "sound") this.#editor.replaceBeforeCaret(ask.query.length + 1, " " + option.value)  // a plain space: /play needs one
    else this.#editor.replaceBeforeCaret(ask.query.length + 1, mentionChip(option.value.sgid, option.value.name), "\u00a0")
  }
}

// Typing ----------------------------------------------------------------------
// Typing notifications (TypingNotificationsChannel): "start" at most once a second while typing,
// "stop" when done; others' names shown above the composer for 5 s at most.

export const START_EVERY_MS = 1000   // "start" at most once per second
export const EXPIRES_MS = 5000       // a name not heard from for 5 s is dropped

export class TypingNotifier {
  #perform
  #lastStart = -Infinity
  #typing = false

  constructor(perform, now = () => Date.now()) {
    this.#perform = perform
    this.now = now
  }

  typed(blank) {
    if (blank) return this.stop()
    if (this.now() - this.#lastStart < START_EVERY_MS) return
    this.#lastStart = this.now()
    this.#typing = true
    this.#perform("start")
  }

  stop() {
    if (!this.#typing) return
    this.#typing = false
    this.#lastStart = -Infinity
    this.#perform("stop")
  }
}

// Who else is typing, each name dropped 5 s after its last "start".
export class TypingPeople {
  #people = new Map()   // user id → { name, timer }

  constructor(onChange) { this.onChange = onChange }

  get names() { return [...this.#people.values()].map((person) => person.name) }

  receive({ action, user }) {
    if (!user) return
    clearTimeout(this.#people.get(user.id)?.timer)
    this.#people.delete(user.id)
    if (action === "start") this.#people.set(user.id, { name: user.name, timer: setTimeout(() => this.receive({ action: "stop", user }), EXPIRES_MS) })
    this.onChange(this.names)
  }

  clear() {
    for (const { timer } of this.#people.values()) clearTimeout(timer)
    this.#people.clear()
    this.onChange([])
  }
}

export function typingSentence(names) {
  if (names.length < 3) return names.length ? `${names.join(" and ")} ${names.length === 1 ? "is" : "are"} typing…` : ""
  return `${names[0]}, ${names[1]} and ${names.length - 2} more are typing…`
}

// Subscribes for the room and puts the line before `form`; returns our notifier.
export function connectTyping(cable, roomId, viewerId, form) {
  const line = h("div", { className: "typing-indicator", "aria-live": "polite" })
  form.before(line)
  const people = new TypingPeople((names) => { line.textContent = typingSentence(names) })
  const subscription = cable.subscribe({ channel: "TypingNotificationsChannel", room_id: Number(roomId) }, {
    received: (data) => { if (String(data.user?.id) !== viewerId) people.receive(data) },
  })
  cable.addEventListener("disconnected", () => people.clear())
  return new TypingNotifier((action) => subscription.perform(action))
}

// Uploads ---------------------------------------------------------------------
// Files from the composer: the paperclip, drag-and-drop onto the room, and paste.
// Each file becomes a message of its own, sent one after another in the order
// given, as Campfire's composer does. Its pending copy shows a progress bar and
// Cancel; a failed upload keeps the file with Retry and Discard.

export const MAX_FILES_AT_ONCE = 100   // a bigger drop is refused whole, with a message: nothing is half sent
export const PREVIEW_MAX_WIDTH = 1200  // Campfire's thumbnail box; the server refuses a larger preview
export const PREVIEW_MAX_HEIGHT = 800
export const PREVIEW_WAIT_MS = 5000    // a video that shows no frame by then is sent without a poster

// The size that fits width×height into the thumbnail box, proportions kept (never enlarged).
export function previewSize(width, height) {
  const scale = Math.min(1, PREVIEW_MAX_WIDTH / width, PREVIEW_MAX_HEIGHT / height)
  return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))]
}

async function drawPreview(source, width, height) {
  const [w, h] = previewSize(width, height)
  const canvas = Object.assign(document.createElement("canvas"), { width: w, height: h })
  canvas.getContext("2d").drawImage(source, 0, 0, w, h)
  return new Promise((resolve) => canvas.toBlob(resolve, "image/webp", 0.85))
}

// A video's first frame, for its poster.
function videoFrame(file) {
  return new Promise((resolve) => {
    const video = Object.assign(document.createElement("video"), { muted: true, preload: "auto", src: URL.createObjectURL(file) })
    const done = (value) => { clearTimeout(timer); URL.revokeObjectURL(video.src); resolve(value) }
    const timer = setTimeout(() => done(null), PREVIEW_WAIT_MS)
    video.addEventListener("loadeddata", () => { video.currentTime = Math.min(0.1, video.duration / 2 || 0) }, { once: true })
    video.addEventListener("seeked", async () => done(await drawPreview(video, video.videoWidth, video.videoHeight)), { once: true })
    video.addEventListener("error", () => done(null), { once: true })
  })
}

// What the browser sends beside an image (a copy no larger than the thumbnail box) or a
// video (a poster frame): the server shows it in the room instead of the original. null
// when the file can't be drawn here (the room then shows the original, scaled).
export async function makePreview(file) {
  try {
    if (file.type.startsWith("video/")) return await videoFrame(file)
    if (!/^image\/(png|jpeg|gif|webp)$/.test(file.type) || file.type === "image/gif") return null  // a GIF keeps moving
    const bitmap = await createImageBitmap(file)
    const { width, height } = bitmap
    const preview = width > PREVIEW_MAX_WIDTH || height > PREVIEW_MAX_HEIGHT ? await drawPreview(bitmap, width, height) : null
    bitmap.close()
    return preview
  } catch {
    return null
  }
}

// A size as people read it, in steps of 1,024 (the server writes the same).
export function formatBytes(count) {
  if (count < 1024) return count === 1 ? "1 byte" : `${count} bytes`
  for (const unit of ["KB", "MB", "GB", "TB"]) {
    count /= 1024
    if (count < 1024 || unit === "TB") return `${count.toFixed(1).replace(/\.0$/, "")} ${unit}`
  }
}

// Why an upload failed, in a few words; `tooLarge` names the limit.
export function uploadFailureText(status, tooLarge = "") {
  const reasons = { 0: "no connection", 400: "the upload was cut short", 403: "not allowed here", 404: "not allowed here",
    413: tooLarge ? `larger than ${tooLarge}` : "too large", 422: "the file can't be used" }
  return `Not sent: ${reasons[status ?? 0] ?? "the server had a problem"}.`
}

// The files a drag or a paste carries (none for text or links).
export const filesOf = (transfer) => [...(transfer?.files ?? [])]

export class Uploads {
  #form
  #list
  #stream
  #scroller
  #queue = []
  #sending = false
  #uploads = new WeakMap()   // pending message → { file, clientId, request }
  #notice

  constructor(form, { list, stream, scroller, dropTarget, pasteTarget }) {
    this.#form = form
    this.#list = list
    this.#stream = stream
    this.#scroller = scroller
    this.#notice = h("p", { className: "composer__notice", role: "status", hidden: true })
    form.after(this.#notice)
    const input = form.querySelector("input[type=file]")
    input?.addEventListener("change", () => { this.add([...input.files]); input.value = "" })
    pasteTarget?.addEventListener("paste", (event) => {
      const files = filesOf(event.clipboardData)
      if (!files.length) return
      event.preventDefault()
      this.add(files)
    })
    if (dropTarget) this.#acceptDrops(dropTarget)
    list.element.addEventListener("click", (event) => this.#clicked(event))
  }

  // The server's limit, from the form (read at each send, so it is never stale).
  get maxBytes() { return Number(this.#form.dataset.maxUploadBytes) || Infinity }
  get maxText() { return this.#form.dataset.maxUploadText ?? "" }

  add(files) {
    this.#say("")
    if (!files.length) return []
    if (files.length > MAX_FILES_AT_ONCE) {
      this.#say(`You can send at most ${MAX_FILES_AT_ONCE} files at once; none of these ${files.length} was sent.`)
      return []
    }
    const pending = files.map((file) => this.#pendingFor(file))
    this.#queue.push(...pending)
    this.#next()
    return pending
  }

  #say(text) {
    this.#notice.textContent = text
    this.#notice.hidden = !text
  }

  #acceptDrops(target) {
    let depth = 0
    const carriesFiles = (event) => event.dataTransfer?.types.includes("Files")
    target.addEventListener("dragenter", (event) => {
      if (!carriesFiles(event)) return
      depth++
      target.classList.add("room--dropping")
    })
    target.addEventListener("dragleave", () => {
      if (--depth <= 0) { depth = 0; target.classList.remove("room--dropping") }
    })
    target.addEventListener("dragover", (event) => {
      if (!carriesFiles(event)) return
      event.preventDefault()
      event.dataTransfer.dropEffect = "copy"
    })
    target.addEventListener("drop", (event) => {
      depth = 0
      target.classList.remove("room--dropping")
      const files = filesOf(event.dataTransfer)
      if (!files.length) return
      event.preventDefault()
      this.add(files)
    })
  }

  #pendingFor(file) {
    const clientId = uuid()
    const body = h("div", { className: "upload" },
      h("span", { className: "upload__name" }, file.name || "file"), " ",
      h("span", { className: "upload__size" }, formatBytes(file.size)),
      h("progress", { className: "upload__progress", max: 1, value: 0, "aria-label": `Uploading ${file.name}` }),
      h("button", { type: "button", className: "button button--small", "data-action": "cancel-upload" }, "Cancel"))
    const pending = this.#scroller.change(() => this.#list.addPending(clientId, body), { follow: true })
    pending.classList.add("message--upload")
    pending.querySelector(".message__status").textContent = "Waiting…"
    this.#uploads.set(pending, { file, clientId, request: null })
    return pending
  }

  async #next() {
    if (this.#sending) return
    this.#sending = true
    while (this.#queue.length) {
      const pending = this.#queue.shift()
      if (pending.isConnected) await this.#send(pending)
    }
    this.#sending = false
  }

  async #send(pending) {
    const upload = this.#uploads.get(pending)
    if (upload.file.size > this.maxBytes) return this.#failed(pending, 413)
    const progress = pending.querySelector(".upload__progress")
    pending.querySelector(".message__status").textContent = "Uploading…"
    if (upload.preview === undefined) upload.preview = await makePreview(upload.file)
    if (!pending.isConnected) return
    const form = new FormData()
    form.append("message[client_message_id]", upload.clientId)
    form.append("message[attachment]", upload.file, upload.file.name || "file")
    if (upload.preview) form.append("message[preview]", upload.preview, "preview.webp")
    return new Promise((resolve) => {
      const request = upload.request = new XMLHttpRequest()
      request.open("POST", this.#form.action)
      request.setRequestHeader("Accept", "text/html")
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) progress.value = event.loaded / event.total
      })
      request.addEventListener("load", () => {
        upload.request = null
        if (request.status >= 200 && request.status < 300) {
          const [message] = parseMessages(request.responseText)
          if (message) this.#stream.add(message, { own: true })
        } else {
          this.#failed(pending, request.status)
        }
        resolve()
      })
      request.addEventListener("error", () => { upload.request = null; this.#failed(pending, 0); resolve() })
      request.addEventListener("abort", () => { upload.request = null; resolve() })
      request.send(form)
    })
  }

  #failed(pending, status) {
    if (!pending.isConnected) return
    pending.classList.add("message--failed")
    pending.querySelector(".message__status").textContent = uploadFailureText(status, this.maxText)
    pending.querySelector(".upload__progress").hidden = true
    pending.querySelector("[data-action=cancel-upload]").hidden = true
    const choices = h("span", { className: "message__retry" },
      retryable(status) ? h("button", { type: "button", className: "button button--small", "data-action": "retry-upload" }, "Retry") : "",
      h("button", { type: "button", className: "button button--small", "data-action": "discard-upload" }, "Discard"))
    pending.querySelector(".message__meta").append(" ", choices)
  }

  #clicked(event) {
    const button = event.target.closest("[data-action=cancel-upload], [data-action=retry-upload], [data-action=discard-upload]")
    const pending = button?.closest(".message--upload")
    const upload = pending && this.#uploads.get(pending)
    if (!upload) return
    const action = button.dataset.action
    if (action !== "retry-upload") {
      upload.request?.abort()
      return pending.remove()
    }
    pending.classList.remove("message--failed")
    button.parentElement.remove()
    pending.querySelector(".upload__progress").hidden = false
    pending.querySelector("[data-action=cancel-upload]").hidden = false
    pending.querySelector(".message__status").textContent = "Waiting…"
    this.#queue.push(pending)   // the same client_message_id: the server keeps one message
    this.#next()
  }
}

// Images in messages open full size in a viewer: arrow keys or a swipe go to the
// previous or next image of the room, Escape (or the close button) closes it.
export class Lightbox {
  #dialog
  #image
  #caption
  #links = []
  #index = 0

  constructor(container) {
    this.#image = h("img", { className: "lightbox__image", alt: "" })
    this.#caption = h("p", { className: "lightbox__caption" })
    const close = h("button", { type: "button", className: "button lightbox__close", "aria-label": "Close" }, "×")
    this.#dialog = h("dialog", { className: "lightbox", "aria-label": "Image viewer" }, close, this.#image, this.#caption)
    document.body.append(this.#dialog)
    close.addEventListener("click", () => this.#dialog.close())
    this.#dialog.addEventListener("click", (event) => { if (event.target === this.#dialog) this.#dialog.close() })
    this.#dialog.addEventListener("keydown", (event) => {
      if (event.key === "ArrowLeft") this.#show(this.#index - 1)
      else if (event.key === "ArrowRight") this.#show(this.#index + 1)
    })
    let startX = null
    this.#dialog.addEventListener("pointerdown", (event) => { startX = event.clientX })
    this.#dialog.addEventListener("pointerup", (event) => {
      const moved = startX === null ? 0 : event.clientX - startX
      startX = null
      if (Math.abs(moved) > 50) this.#show(this.#index + (moved < 0 ? 1 : -1))
    })
    container.addEventListener("click", (event) => {
      const link = event.target.closest("a[data-action=view-attachment]")
      if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return
      event.preventDefault()
      this.#links = [...container.querySelectorAll("a[data-action=view-attachment]")]
      this.#show(this.#links.indexOf(link))
      if (!this.#dialog.open) this.#dialog.showModal()
    })
  }

  get open() { return this.#dialog.open }

  #show(index) {
    if (index < 0 || index >= this.#links.length) return
    this.#index = index
    const link = this.#links[index]
    this.#image.src = link.href
    this.#image.alt = link.dataset.filename ?? ""
    this.#caption.textContent = link.dataset.filename ?? ""
  }
}

// A picture chosen for an avatar (or a logo) is cropped to its middle square and
// scaled to the size the input names (data-square-image), in the browser, before
// the form sends it: the server only checks that it is an image.
export async function squareImage(file, size) {
  const bitmap = await createImageBitmap(file)
  const side = Math.min(bitmap.width, bitmap.height)
  const canvas = h("canvas", { width: size, height: size })
  canvas.getContext("2d").drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side, 0, 0, size, size)
  bitmap.close()
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/webp", 0.9))
  const type = blob?.type || "image/png"
  const name = (file.name.replace(/\.[^.]*$/, "") || "avatar") + (type === "image/webp" ? ".webp" : ".png")
  return new File([blob ?? await new Promise((resolve) => canvas.toBlob(resolve))], name, { type })
}

export function squareImageInputs(root = document) {
  for (const input of root.querySelectorAll("input[type=file][data-square-image]")) {
    const size = Number(input.dataset.squareImage)
    const submit = input.form?.querySelector("button[type=submit]")
    const preview = h("img", { className: "field__preview", alt: "", width: 96, height: 96, hidden: true })
    input.after(preview)
    input.addEventListener("change", async () => {
      const [file] = input.files
      if (!file || input.dataset.squared === file.name) return
      if (submit) submit.disabled = true
      try {
        const square = await squareImage(file, size)
        const files = new DataTransfer()
        files.items.add(square)
        input.dataset.squared = square.name
        input.files = files.files
        preview.src = URL.createObjectURL(square)
        preview.hidden = false
      } catch {
        input.setCustomValidity("This file is not an image that can be read.")
        input.reportValidity()
      } finally {
        if (submit) submit.disabled = false
      }
    })
    input.addEventListener("input", () => input.setCustomValidity(""))
  }
}
