// The composer: a rich-text editor for the textarea, optimistic sends with retry,
// drafts, typing notifications, replies, Up arrow to edit. Offline it stays usable:
// what is written waits in an outbox and is sent, in order, once the connection is back.

import { RichTextEditor } from "./editor.js"
import { Sanitizer } from "./richtext.js"
import { parseMessages } from "./messages.js"
import { Autocomplete } from "./autocomplete.js"
import { connectTyping } from "./typing.js"
import { h, send } from "./dom.js"

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
    this.#replaceTextarea()
    form.append(this.#limit)
    this.autocomplete = new Autocomplete(this.#editor, form.dataset.roomId)
    form.append(this.autocomplete.element)
    const draft = this.#drafts.load()
    if (draft) this.#editor.load(draft)
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

  #replaceTextarea() {
    const textarea = this.#form.querySelector("textarea")
    this.#form.querySelector(`label[for="${textarea?.id}"]`)?.remove()
    textarea?.removeAttribute("aria-label")
    Object.assign(textarea ?? {}, { hidden: true, required: false, tabIndex: -1 })
    this.#form.classList.add("composer--rich")
    this.#form.prepend(this.#editor.toolbar())
    ;(textarea ?? this.#send).before(this.#editor.root)
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
