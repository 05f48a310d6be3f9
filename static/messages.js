// The room's messages: the live list and its stream, scrolling, the actions on each
// message, threads beside the room, the mentions inbox and search as you type.

import { playSound, isMuted, setMuted } from "./sounds.js"
import { h, fragment, fetchText, send, parseMessages } from "./dom.js"
import { RichTextEditor } from "./composer.js"

// Messages --------------------------------------------------------------------
// The room's messages: live from RoomMessagesChannel, each once; threads, local
// times, per-reader actions, catching up, /play sounds.

export const THREAD_WINDOW_MS = 5 * 60 * 1000   // one author's messages within 5 min read as one thread
export const MAX_MESSAGES = 300                  // messages kept on the page, as Campfire's paginator keeps
export const CATCH_UP_MARGIN_MS = 10 * 1000      // ask from a little before the last moment we're sure of
export const HIDDEN_REFRESH_AFTER_MS = 60 * 1000 // a tab hidden longer catches up when shown again

// Whether `message` continues `previous`'s thread: same author within 5 minutes.
export function continuesThread(previous, message) {
  if (!previous || previous.creatorId !== message.creatorId) return false
  const gap = Date.parse(message.createdAt) - Date.parse(previous.createdAt)
  return gap >= 0 && gap < THREAD_WINDOW_MS
}

export const MAX_BIG_EMOJI = 8   // a message of at most this many emoji (and nothing else) shows them larger

// "Today", "Yesterday" or the date: what a day separator says.
export function dayLabel(date, now = new Date()) {
  const day = (moment) => new Date(moment.getFullYear(), moment.getMonth(), moment.getDate()).getTime()
  const days = Math.round((day(now) - day(date)) / 86_400_000)
  if (days === 0) return "Today"
  if (days === 1) return "Yesterday"
  return date.toLocaleDateString([], { weekday: "long", month: "long", day: "numeric", year: date.getFullYear() === now.getFullYear() ? undefined : "numeric" })
}

// Whether a message's text is only emoji (a few): shown larger, as chat apps do.
const EMOJI_ONLY = /^(?:\p{Extended_Pictographic}|[\u{1F1E6}-\u{1F1FF}\u{1F3FB}-\u{1F3FF}\u200d\ufe0f\u20e3]|\s)+$/u
export function isEmojiOnly(text) {
  const trimmed = text.trim()
  return EMOJI_ONLY.test(trimmed) && /[\p{Extended_Pictographic}\u{1F1E6}-\u{1F1FF}]/u.test(trimmed) &&
    [...new Intl.Segmenter().segment(trimmed.replace(/\s/g, ""))].length <= MAX_BIG_EMOJI
}

// Local times; a room's messages show the clock only (day separators say the day), others the day too.
export function localizeTimes(root) {
  const today = new Date().toDateString()
  const separated = Boolean(document.querySelector("section.room #messages"))
  for (const time of root.querySelectorAll("time[datetime]")) {
    const date = new Date(time.getAttribute("datetime"))
    if (Number.isNaN(date.getTime())) continue
    const clock = date.toLocaleTimeString([], { hour: "numeric", minute: "2-digit" })
    const day = date.toDateString() === today || (separated && !time.closest("#search-results")) ? ""
      : date.toLocaleDateString([], { month: "short", day: "numeric" }) + ", "
    time.textContent = day + clock
    time.title = date.toLocaleString()
  }
}

// Shows each reader only the actions the server allows them (adm?(message), own boosts).
export function decorateMessages(root, viewer, { replies = true } = {}) {
  for (const message of root.matches?.(".message") ? [root] : root.querySelectorAll(".message")) {
    const mine = message.dataset.creatorId === viewer.id
    message.classList.toggle("message--mine", mine)
    message.classList.toggle("message--editable", mine || viewer.administrator)
    const mentioned = viewer.id && message.querySelector(`.message__body .mention[data-user-id="${CSS.escape(viewer.id)}"]`)
    message.classList.toggle("message--mentions-me", Boolean(mentioned) && !mine)
    for (const owner of message.querySelectorAll(".message__action--owner")) owner.hidden = !(mine || viewer.administrator)
    const body = message.querySelector(".message__body")
    message.classList.toggle("message--emoji", Boolean(body && !body.querySelector(":not(div, br)") && isEmojiOnly(body.textContent)))
    for (const boost of message.querySelectorAll(".boost")) {
      const remove = boost.querySelector(".boost__remove")
      if (remove) remove.hidden = boost.dataset.boosterId !== viewer.id
    }
    const actions = message.querySelector(".message__actions")
    if (replies && actions && !actions.querySelector("[data-action=reply]")) {
      const reply = h("button", { type: "button", className: "message__action", "data-action": "reply" }, "Reply")
      actions.querySelector("[data-action=boost]")?.after(reply) ?? actions.append(reply)
    }
  }
  localizeTimes(root)
}

const idOf = (element) => Number(element?.dataset.messageId) || null
const threadItem = (element) => element?.classList.contains("message") && element.dataset

export class MessageList {
  #pendingTemplate

  constructor(container, viewer) {
    this.element = container
    this.roomId = container.dataset.roomId
    this.viewer = viewer
    this.#pendingTemplate = container.closest(".room")?.querySelector(`template[id$="pending_message"]`)
    Object.assign(container, { tabIndex: 0, role: "region" })  // scrollable by keyboard
    container.setAttribute("aria-label", "Messages")
    decorateMessages(container, viewer)
    this.rethread()
  }

  get messages() { return [...this.element.querySelectorAll(":scope > .message")] }
  get saved() { return this.messages.filter(idOf) }
  get oldestId() { return idOf(this.saved[0]) }
  get newestId() { return idOf(this.saved.at(-1)) }

  find(id) { return this.element.querySelector(`:scope > .message[data-message-id="${Number(id)}"]`) }

  lastOwnMessage() {
    return this.saved.filter((message) => message.dataset.creatorId === this.viewer.id).at(-1) ?? null
  }

  // A server-rendered message in its place, for its older copy or our optimistic one
  // (same client_message_id). True when it is new here.
  upsert(message, { onlyExisting = false } = {}) {
    decorateMessages(message, this.viewer)
    const existing = this.find(idOf(message))
    const clientId = message.dataset.clientMessageId
    const pending = clientId && this.element.querySelector(`:scope > .message--pending[data-client-message-id="${CSS.escape(clientId)}"]`)
    if (existing) {
      carryEditor(existing, message)
      existing.replaceWith(message)
    } else if (onlyExisting && !pending) {
      return false
    } else {
      this.#insertInOrder(message)
    }
    pending?.remove()
    this.#rethread(message)
    this.separateDays()
    return !existing
  }

  remove(id) {
    const message = this.find(id)
    const next = message?.nextElementSibling
    message?.remove()
    this.#rethread(next)
    this.separateDays()
  }

  prepend(messages) {
    const first = this.element.firstElementChild
    for (const message of messages.filter((message) => !this.find(idOf(message)))) {
      decorateMessages(message, this.viewer)
      this.element.insertBefore(message, first)
    }
    this.rethread()
  }

  // side "start" drops the oldest, "end" the newest.
  trim(side) {
    const saved = this.saved, excess = saved.length - MAX_MESSAGES
    if (excess <= 0) return false
    for (const message of side === "start" ? saved.slice(0, excess) : saved.slice(-excess)) message.remove()
    this.rethread()
    return true
  }

  replaceAll(messages) {
    for (const message of this.saved) message.remove()
    this.prepend(messages)
  }

  // Our optimistic copy, shown at once, replaced by the server's when it arrives: a copy of
  // the room page's <template id="pending_message">, filled in.
  addPending(clientId, body) {
    const message = this.#pendingTemplate.content.firstElementChild.cloneNode(true)
    const createdAt = new Date().toISOString()
    Object.assign(message.dataset, { clientMessageId: clientId, createdAt })
    message.querySelector("time").dateTime = createdAt
    message.querySelector(".message__body").append(body)
    localizeTimes(message)
    this.element.append(message)
    this.#rethread(message)
    this.separateDays()
    return message
  }

  rethread() {
    for (const message of this.messages) this.#rethread(message, false)
    this.separateDays()
  }

  // A separator ("Today", "Yesterday", a date) before the first message of each day.
  separateDays() {
    for (const separator of this.element.querySelectorAll(":scope > .day-separator")) separator.remove()
    let previous = null
    for (const message of this.messages) {
      const date = new Date(message.dataset.createdAt)
      if (Number.isNaN(date.getTime())) continue
      if (date.toDateString() !== previous) {
        message.before(h("h2", { className: "day-separator" }, h("span", {}, dayLabel(date))))
        message.classList.remove("message--followup")
      }
      previous = date.toDateString()
    }
  }

  #rethread(message, andNext = true) {
    if (!threadItem(message)) return
    message.classList.toggle("message--followup", continuesThread(threadItem(message.previousElementSibling), message.dataset))
    if (andNext) this.#rethread(message.nextElementSibling, false)
  }

  // By id among saved messages; our pending ones stay at the very end.
  #insertInOrder(message) {
    const id = idOf(message), saved = this.saved
    const after = saved.findLast((other) => idOf(other) < id)
    if (after) after.after(message)
    else this.element.insertBefore(message, saved[0] ?? this.element.querySelector(":scope > .message--pending"))
  }
}

// An open editor or boost picker stays open when a new copy of its message replaces it.
function carryEditor(from, to) {
  const focused = from.contains(document.activeElement) && document.activeElement
  const editor = from.querySelector(".message-editor"), picker = from.querySelector(".boost-picker")
  if (editor) to.querySelector(".message__body")?.after(editor)
  if (picker) to.querySelector(".message__content")?.append(picker)
  to.classList.toggle("message--editing", Boolean(editor))
  if (focused && to.contains(focused)) focused.focus()
}

// RoomMessagesChannel into the list; catching up after reconnects and long absences.
export class RoomStream {
  #list
  #scroller
  #cable
  #announcer
  #hiddenAt = null
  #subscription
  #subscribedBefore = false
  #closed = false

  constructor(cable, list, scroller, announcer = null) {
    this.#list = list
    this.#scroller = scroller
    this.#cable = cable
    this.#announcer = announcer
    const times = list.saved.map((message) => Date.parse(message.dataset.createdAt)).filter(Number.isFinite)
    this.lastSeenAt = times.length ? Math.max(...times) : Date.now()
    this.#subscription = cable.subscribe({ channel: "RoomMessagesChannel", room_id: Number(list.roomId) }, {
      received: (data) => this.receive(data),
      connected: () => this.#subscribed(),
    })
    cable.addEventListener("disconnected", () => list.element.removeAttribute("data-live"))
    cable.addEventListener("ping", () => this.#touch())
    document.addEventListener("visibilitychange", () => this.#visibilityChanged())
  }

  // A thread's panel closed: its messages are no longer wanted.
  close() {
    this.#closed = true
    this.#cable.unsubscribe(this.#subscription)
  }

  receive(data) {
    if (this.#closed) return
    this.#touch()
    if (data.action === "remove") return this.#list.remove(data.id)
    const [message] = parseMessages(data.html ?? "")
    if (data.action === "append" && message) this.add(message)
    else if (message) this.#scroller.change(() => this.#list.upsert(message, { onlyExisting: true }))
  }

  // A live message (or our own, acknowledged): shown once, its sound played once.
  add(message, { own = false } = {}) {
    const theirs = !own && message.dataset.creatorId !== this.#list.viewer.id
    if (!this.#scroller.hasLatest && !own) {
      if (theirs) this.#announcer?.message(message)
      return this.#scroller.arrived()
    }
    if (!this.#scroller.change(() => this.#list.upsert(message), { follow: own })) return
    if (theirs) this.#announcer?.message(message)
    this.#scroller.arrived()
    if (message.dataset.sound) playSound(message.dataset.sound)
    if (!own) this.#list.element.dispatchEvent(new CustomEvent("message:arrived", { detail: { message } }))
  }

  // Merge what changed while we weren't listening, a page at a time: each page
  // names the next one until nothing is left.
  async catchUp(since = this.lastSeenAt - CATCH_UP_MARGIN_MS) {
    const first = `/rooms/${this.#list.roomId}/refresh?since=${Math.max(0, Math.floor(since))}`
    for (let url = first; url;) {
      const html = await fetchText(url)
      if (!html) return
      const page = fragment(html)
      const removals = page.querySelector("template.message-removals")?.dataset.messageIds ?? ""
      this.#scroller.change(() => {
        for (const message of parseMessages(html)) this.#list.upsert(message, { onlyExisting: !this.#scroller.hasLatest })
        for (const id of removals.split(" ").filter(Boolean)) this.#list.remove(id)
      })
      const next = page.querySelector("template.message-refresh-next")?.dataset.href
      url = next?.startsWith(`/rooms/${this.#list.roomId}/refresh?`) && next !== url ? next : null
    }
  }

  // Subscribed: nothing sent from now on is missed. Subscribed again after a reconnect:
  // catch up only now, since a message posted after the welcome but before this
  // confirmation was sent to nobody here and a catch-up asked at the welcome may predate it.
  #subscribed() {
    this.#list.element.setAttribute("data-live", "")
    if (this.#subscribedBefore && !this.#closed) this.catchUp()
    this.#subscribedBefore = true
  }

  // Pings move the moment we are sure of only while the room's messages reach us: between a
  // reconnect's welcome and the room's confirmation they don't.
  #touch() {
    if (this.#cable.connected && this.#subscription?.confirmed) this.lastSeenAt = this.#cable.serverNow()
  }

  #visibilityChanged() {
    if (this.#closed) return
    if (document.hidden) return (this.#hiddenAt = Date.now())
    if (this.#hiddenAt !== null && Date.now() - this.#hiddenAt > HIDDEN_REFRESH_AFTER_MS) this.catchUp()
    this.#hiddenAt = null
  }
}

// A speaker (crossed out when muted) in the room header; sounds.js remembers the choice.
export function muteToggle() {
  const button = h("button", { type: "button", className: "mute-toggle" })
  const show = () => {
    const muted = isMuted()
    button.classList.toggle("mute-toggle--muted", muted)
    button.setAttribute("aria-label", muted ? "Unmute sounds" : "Mute sounds")
    button.title = muted ? "Sounds are off" : "Sounds are on"
  }
  button.addEventListener("click", () => { setMuted(!isMuted()); show() })
  show()
  return button
}

// Scrolling -------------------------------------------------------------------
// Scrolling the messages: follow new ones at the bottom, else keep the reader's
// place; page in older (and newer) ones; "Jump to latest"; permalink highlights.

export const PAGE_EDGE_PX = 400   // load more when this close to an edge
export const AT_BOTTOM_PX = 48    // this close to the bottom counts as there
const PAGE_SIZE = 40              // the server's pages hold 40 messages

export class MessageScroller {
  #list
  #box
  #jump = h("button", { type: "button", className: "jump-to-latest", hidden: true }, "Jump to latest")
  #loading = false
  #reachedStart = false
  #hasLatest = true
  #pinned = null          // kept in view while the layout settles: "bottom", a message, or nothing
  #userScrolled = false

  constructor(list) {
    this.#list = list
    const box = this.#box = list.element
    box.after(this.#jump)
    this.#jump.addEventListener("click", () => this.jumpToLatest())
    box.addEventListener("scroll", () => this.#scrolled(), { passive: true })
    for (const intent of ["wheel", "touchstart", "pointerdown", "keydown"]) {
      box.addEventListener(intent, () => { this.#userScrolled = true }, { passive: true })
    }
    // Styles, the composer and a phone's keyboard resize the list: keep the reader's place.
    new ResizeObserver(() => this.#keepPinned()).observe(box)
    this.#reachedStart = "reachedStart" in box.dataset   // the page holds the room's first message
    const highlight = box.dataset.highlightId && list.find(box.dataset.highlightId)
    if (highlight) this.#highlight(highlight)
    else this.scrollToBottom()
    this.#scrolled()   // a short page loads more at once: there's nothing to scroll yet
  }

  get hasLatest() { return this.#hasLatest }
  get #fromBottom() { return this.#box.scrollHeight - this.#box.scrollTop - this.#box.clientHeight }
  get atBottom() { return this.#fromBottom <= AT_BOTTOM_PX }

  scrollToBottom() {
    this.#box.scrollTop = this.#box.scrollHeight
    this.#pinned = "bottom"
    this.#showJump(false)
  }

  // Adds or removes messages keeping what the reader sees in place, or following
  // to the bottom if they were there (or `follow`).
  change(apply, { follow = false } = {}) {
    const stick = follow || (this.atBottom && this.#hasLatest)
    const top = this.#box.getBoundingClientRect().top
    const anchor = stick ? null : this.#list.messages.find((message) => message.getBoundingClientRect().bottom > top)
    const before = anchor?.getBoundingClientRect().top
    const result = apply()
    if (stick) {
      if (this.#list.trim("start")) this.#reachedStart = false
      this.scrollToBottom()
    } else if (anchor?.isConnected) {
      this.#box.scrollTop += anchor.getBoundingClientRect().top - before
    }
    return result
  }

  arrived() {
    if (this.atBottom && this.#hasLatest) this.scrollToBottom()
    else this.#showJump(true, true)
  }

  async jumpToLatest() {
    if (!this.#hasLatest) {
      const html = await fetchText(`/rooms/${this.#list.roomId}/messages`)
      if (html) this.#list.replaceAll(parseMessages(html))
      this.#hasLatest = true
      this.#reachedStart = false
    }
    this.scrollToBottom()
    document.querySelector("#composer [role=textbox]")?.focus({ preventScroll: true })
  }

  #keepPinned() {
    if (this.#pinned === "bottom") this.scrollToBottom()
    else this.#pinned?.scrollIntoView({ block: "center" })
  }

  #scrolled() {
    if (this.atBottom && this.#hasLatest) this.#pinned = "bottom"
    else if (this.#userScrolled) this.#pinned = null
    if (this.#box.scrollTop < PAGE_EDGE_PX && !this.#reachedStart) this.#page("before")
    if (this.#fromBottom < PAGE_EDGE_PX && !this.#hasLatest) this.#page("after")
    if (this.atBottom && this.#hasLatest) this.#showJump(false)
    else if (this.#fromBottom > this.#box.clientHeight) this.#showJump(true)
  }

  async #page(direction) {
    const older = direction === "before"
    const id = older ? this.#list.oldestId : this.#list.newestId
    if (this.#loading || !id) return
    this.#loading = true
    const html = await fetchText(`/rooms/${this.#list.roomId}/messages?${direction}=${id}`)
    this.#loading = false
    if (html === null) return
    if (html === "") return older ? (this.#reachedStart = true) : (this.#hasLatest = true)
    this.change(() => {
      const messages = parseMessages(html)
      if (older) this.#list.prepend(messages)
      else for (const message of messages) this.#list.upsert(message)
      if (this.#list.trim(older ? "end" : "start")) older ? (this.#hasLatest = false) : (this.#reachedStart = false)
    })
    this.#scrolled()
  }

  #highlight(message) {
    // A permalink shows up to 40 after the message; if there are 40, newer ones load on the way down.
    this.#hasLatest = this.#list.saved.filter((other) => Number(other.dataset.messageId) > Number(message.dataset.messageId)).length < PAGE_SIZE
    message.classList.add("message--highlight")
    message.tabIndex = -1
    message.scrollIntoView({ block: "center" })
    message.focus({ preventScroll: true })
    this.#pinned = message
  }

  #showJump(show, fresh = false) {
    this.#jump.hidden = !show
    this.#jump.classList.toggle("jump-to-latest--fresh", show && (fresh || this.#jump.classList.contains("jump-to-latest--fresh")))
  }
}

// Message actions -------------------------------------------------------------
// Message actions in place: Copy link, Boost, Reply, Edit (inline), Delete, unboost.

export const COPIED_SHOWN_MS = 2000
export const BOOST_PICKS = ["👍", "👏", "👋", "💪", "❤️", "😂", "🎉", "🔥"]   // Campfire's quick picks
export const MAX_BOOST_CHARS = 16
const NO_HOVER = matchMedia("(hover: none)")

export class MessageActions {
  #list
  #composer
  #scroller

  #openThread

  constructor(list, { composer, scroller, openThread = null }) {
    this.#list = list
    this.#composer = composer
    this.#scroller = scroller
    this.#openThread = openThread
    list.element.addEventListener("click", (event) => this.#clicked(event))
    list.element.addEventListener("submit", (event) => this.#submitted(event))
    // A long press on a touch screen shows the message's actions, not the browser's menu.
    list.element.addEventListener("contextmenu", (event) => {
      const message = event.target.closest(".message")
      if (!NO_HOVER.matches || !message || event.target.closest("a, button, input, [contenteditable=true]")) return
      event.preventDefault()
      this.#select(message, event, true)
    })
  }

  #clicked(event) {
    const action = event.target.closest("[data-action]")
    const message = event.target.closest(".message")
    if (!message) return
    const replies = event.target.closest("a.message__thread")
    if (replies && !event.ctrlKey && !event.metaKey && this.#openThread?.(replies.getAttribute("href"), "get")) return event.preventDefault()
    if (!action) return this.#select(message, event)
    const handler = {
      "copy-link": () => this.copyLink(action),
      "boost": () => BoostPicker.toggle(message, action, this.#list.viewer),
      "reply": () => this.#composer?.quote(message),
      "edit": () => this.edit(message),
    }[action.dataset.action]
    if (!handler) return
    event.preventDefault()
    handler()
  }

  #submitted(event) {
    const form = event.target, message = form.closest(".message")
    if (!message) return
    const kind = form.querySelector("[data-action]")?.dataset.action
    if (kind === "thread") {
      if (this.#openThread?.(form.action, "post")) event.preventDefault()
    } else if (kind === "save" || kind === "unread") {
      event.preventDefault()
      send(form.action, {}).then((response) => {
        const done = kind === "save" ? "Saved" : "Marked as unread"
        flash(form, response?.ok ? done : "Couldn’t do that. Try again.")
      })
    } else if (form.querySelector("[data-action=delete]")) {
      event.preventDefault()
      if (confirm("Delete this message?")) this.#delete(message, form)
    } else if (form.matches(".boost__remove")) {
      event.preventDefault()
      send(form.action, {}, "delete").then((response) => { if (response?.ok) form.closest(".boost").remove() })
    }
  }

  // There is no hover on a touch screen: a tap on a message shows its actions.
  #select(message, event, keep = false) {
    if (!NO_HOVER.matches || event.target.closest("a, button, input, [contenteditable=true], .message-editor, .boost-picker")) return
    for (const other of this.#list.element.querySelectorAll(".message--selected")) {
      if (other !== message) other.classList.remove("message--selected")
    }
    message.classList.toggle("message--selected", keep || !message.classList.contains("message--selected"))
  }

  async copyLink(link) {
    const url = new URL(link.getAttribute("href"), location.origin).href
    try {
      await navigator.clipboard.writeText(url)
    } catch {
      copyWithSelection(url)   // no Clipboard API outside secure contexts (plain HTTP)
    }
    link.parentElement.querySelector(".flash")?.remove()
    const note = h("span", { className: "flash", role: "status" }, "Copied")
    link.after(note)
    setTimeout(() => note.remove(), COPIED_SHOWN_MS)
  }

  async edit(message) {
    const open = message.querySelector(".message-editor [role=textbox]")
    if (open) return open.focus()
    const id = message.dataset.messageId
    const stored = await storedBody(this.#list.roomId, id)
    // While the body was fetched, a newer copy (the send's answer after its live echo, a
    // boost, an edit elsewhere) may have replaced the message: edit that copy, and only once.
    const current = message.isConnected ? message : this.#list.find(id)
    if (stored === null || !current) return
    const opened = current.querySelector(".message-editor [role=textbox]")
    if (opened) return opened.focus()
    new InlineEditor(current, stored, {
      save: (html) => this.#save(current, html),
      done: () => this.#composer?.editor.root.focus(),
    })
  }

  async #save(message, html) {
    const url = `/rooms/${this.#list.roomId}/messages/${message.dataset.messageId}`
    const response = await send(url, { "message[body]": html }, "patch")
    if (!response?.ok) return response?.status === 422 ? "A message can’t be empty." : "Couldn’t save. Try again."
    const [saved] = parseMessages(await response.text())
    if (saved) this.#scroller.change(() => this.#list.upsert(saved))
    return null
  }

  async #delete(message, form) {
    const response = await send(form.action, {}, "delete")
    if (!response?.ok) return alert("Couldn’t delete the message. Try again.")
    this.#list.remove(message.dataset.messageId)
    this.#composer?.editor.root.focus()
  }
}

// A short note beside the control that did something ("Copied", "Saved").
function flash(control, text) {
  control.parentElement.querySelector(".flash")?.remove()
  const note = h("span", { className: "flash", role: "status" }, text)
  control.after(note)
  setTimeout(() => note.remove(), COPIED_SHOWN_MS)
}

// The body as stored (mentions as attachments, /play as typed), from the edit page's textarea.
async function storedBody(roomId, messageId) {
  try {
    const response = await fetch(`/rooms/${roomId}/messages/${messageId}/edit`)
    if (!response.ok) return null
    const page = new DOMParser().parseFromString(await response.text(), "text/html")  // the server's page
    return page.querySelector("#edit_body")?.value ?? null
  } catch {
    return null
  }
}

function copyWithSelection(text) {
  const field = h("textarea", { value: text, readOnly: true })
  Object.assign(field.style, { position: "fixed", opacity: "0" })
  document.body.append(field)
  field.select()
  document.execCommand("copy")
  field.remove()
}

// The message's body swapped for an editor; Enter or "Save changes" saves, Escape or "Cancel" cancels.
class InlineEditor {
  #form
  #editor
  #error = h("p", { className: "message-editor__error", role: "alert", hidden: true })
  #callbacks

  constructor(message, storedHTML, callbacks) {
    this.#callbacks = callbacks
    const names = [...message.querySelectorAll(".message__body .mention")].map((chip) => chip.textContent.trim())
    const editor = this.#editor = new RichTextEditor({
      label: "Edit message", className: "message-editor__input", submit: () => this.#save(), cancel: () => this.close(),
    })
    editor.load(storedHTML, { mentionName: (sgid, index) => names[index] ?? "mention" })
    const cancel = h("button", { type: "button", className: "button" }, "Cancel")
    cancel.addEventListener("click", () => this.close())
    this.#form = h("form", { className: "message-editor" }, editor.toolbar(), editor.root, this.#error,
      h("button", { type: "submit", className: "button button--primary" }, "Save changes"), cancel)
    this.#form.addEventListener("submit", (event) => { event.preventDefault(); this.#save() })
    message.classList.add("message--editing")
    message.querySelector(".message__body").after(this.#form)
    editor.focus()
  }

  async #save() {
    const problem = this.#editor.blank ? "A message can’t be empty." : await this.#callbacks.save(this.#editor.html)
    if (!problem) return this.close()
    this.#error.textContent = problem
    this.#error.hidden = false
  }

  close() {
    // The message may have been replaced by the saved (or a live) copy by now.
    this.#form.closest(".message")?.classList.remove("message--editing")
    this.#form.remove()
    this.#callbacks.done()
  }
}

class BoostPicker {
  static #open = null

  static toggle(message, trigger, viewer) {
    const same = BoostPicker.#open?.message.dataset.messageId === message.dataset.messageId
    BoostPicker.#open?.close()
    if (!same) BoostPicker.#open = new BoostPicker(message, trigger, viewer)
  }

  constructor(message, trigger, viewer) {
    Object.assign(this, { message, trigger, viewer })
    const input = h("input", { type: "text", className: "boost-picker__input", maxLength: MAX_BOOST_CHARS, placeholder: "Or type a boost", required: true, "aria-label": "Write a boost" })
    const form = h("form", { className: "boost-picker__form" }, input, h("button", { type: "submit", className: "button" }, "Add boost"))
    form.addEventListener("submit", (event) => { event.preventDefault(); this.#boost(input.value.trim()) })
    const picks = BOOST_PICKS.map((emoji) => {
      const pick = h("button", { type: "button", className: "boost-picker__pick", "aria-label": `Boost with ${emoji}` }, emoji)
      pick.addEventListener("click", () => this.#boost(emoji))
      return pick
    })
    this.element = h("div", { className: "boost-picker", role: "group", "aria-label": "Boost this message" }, ...picks, form)
    this.element.addEventListener("keydown", (event) => { if (event.key === "Escape") { event.preventDefault(); this.close(true) } })
    message.querySelector(".message__content").append(this.element)
    trigger.setAttribute("aria-expanded", "true")
    this.element.scrollIntoView({ block: "nearest" })
    picks[0].focus({ preventScroll: true })
    this.onOutside = (event) => { if (!this.element.contains(event.target) && !trigger.contains(event.target)) this.close() }
    document.addEventListener("pointerdown", this.onOutside)
  }

  async #boost(content) {
    if (!content || [...content].length > MAX_BOOST_CHARS) return
    const id = Number(this.message.dataset.messageId)
    const response = await send(`/messages/${id}/boosts`, { "boost[content]": content })
    if (!response?.ok) return
    const boost = fragment(await response.text()).querySelector(".boost")
    // The live copy of the message may show it already.
    const message = document.querySelector(`.message[data-message-id="${id}"]`) ?? this.message
    if (boost && !message.querySelector(`#${CSS.escape(boost.id)}`)) {
      message.querySelector("ul.boosts")?.append(boost)
      decorateMessages(message, this.viewer, { replies: Boolean(message.querySelector("[data-action=reply]")) })
    }
    this.close(true)
  }

  close(returnFocus = false) {
    document.removeEventListener("pointerdown", this.onOutside)
    this.element.remove()
    this.trigger.setAttribute("aria-expanded", "false")
    const id = Number(this.message.dataset.messageId)   // the message may have been replaced meanwhile
    if (returnFocus) document.querySelector(`.message[data-message-id="${id}"] [data-action=boost]`)?.focus()
    if (BoostPicker.#open === this) BoostPicker.#open = null
  }
}

// Threads ---------------------------------------------------------------------
// Threads: "Reply in thread" and "N replies" open the thread beside its room on a wide
// screen, a side panel that is live and has its own composer; on a phone (and without
// JavaScript) the thread is a page of its own.

export const SIDE_PANEL_MEDIA = "(min-width: 721px)"   // narrower is the phone layout: a thread is its own page

export class ThreadPanel {
  #main
  #start
  #current = null   // { panel, room, url }
  #loading = null

  // start(section): what makes a thread section live; returns { close() }.
  constructor(main, start) {
    this.#main = main
    this.#start = start
    main.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.#current?.panel.contains(event.target) && !event.defaultPrevented) this.close()
    })
  }

  get wide() { return matchMedia(SIDE_PANEL_MEDIA).matches }

  // url: the thread's page (GET) or the form that starts it (POST, answered by a redirect
  // to the page). False when the browser should go there itself.
  open(url, method = "get") {
    if (!this.wide) return false
    this.#load(url, method)
    return true
  }

  async #load(url, method) {
    const request = this.#loading = {}
    let response = null
    try {
      response = method === "post" ? await send(url, {}) : await fetch(url, { headers: { Accept: "text/html" } })
    } catch {}
    if (this.#loading !== request) return
    if (!response?.ok) return this.#failed()
    const section = fragment(await response.text()).querySelector("section.thread")
    if (!section) return this.#failed()
    this.close()
    // The answered message is also in the room beside it: one id per page.
    for (const copy of section.querySelectorAll(".thread__parent [id]")) copy.removeAttribute("id")
    const close = h("button", { type: "button", className: "button button--quiet thread__close" }, "Close thread")
    close.addEventListener("click", () => this.close())
    section.querySelector(".thread__header").append(close)
    const panel = h("aside", { className: "thread-panel", "aria-labelledby": "thread_name" }, section)
    this.#main.append(panel)
    this.#main.classList.add("main--with-thread")
    this.#current = { panel, room: this.#start(section), url: response.url }
    section.querySelector(".composer [role=textbox]")?.focus()
  }

  #failed() {
    this.#main.querySelector(".thread-panel__error")?.remove()
    const note = h("p", { className: "notice notice--alert thread-panel__error", role: "alert" }, "Couldn’t open the thread. Try again.")
    this.#main.append(note)
    setTimeout(() => note.remove(), 4000)
  }

  close() {
    if (!this.#current) return
    this.#current.room.close()
    this.#current.panel.remove()
    this.#main.classList.remove("main--with-thread")
    this.#current = null
  }
}

// The mentions inbox ----------------------------------------------------------
// The mentions inbox (/mentions): a new mention appears at the top as it is made.

export class MentionsInbox {
  #section
  #decorate

  constructor(cable, section, decorate) {
    this.#section = section
    this.#decorate = decorate
    cable.subscribe({ channel: "MentionsChannel" }, { received: () => this.refresh() })
    cable.addEventListener("connected", (event) => { if (event.detail.reconnected) this.refresh() })
  }

  // The first page again, as the server renders it (read marks and all); older pages stay as they are.
  async refresh() {
    if (new URLSearchParams(location.search).has("before")) return
    const html = await fetchText("/mentions")
    const fresh = html && fragment(html).getElementById("mentions")
    if (!fresh) return
    this.#decorate(fresh)
    this.#section.replaceChildren(...fresh.childNodes)
  }
}

// Search ----------------------------------------------------------------------
// Search as you type: the results follow the words (the last one matched as a prefix),
// the room and person filters apply at once. Only a search sent (Enter, the button)
// joins the recent ones: it is a POST, what is shown as you type is a GET.

export const SEARCH_DEBOUNCE_MS = 200   // one request per pause in typing, not per key
const SEARCH_FIELDS = ["q", "room_id", "creator_id"]

export class LiveSearch {
  #form
  #decorate
  #timer = null
  #request = null

  constructor(form, decorate) {
    this.#form = form
    this.#decorate = decorate
    form.querySelector("input[name=q]")?.addEventListener("input", () => this.#schedule())
    for (const select of form.querySelectorAll("select")) select.addEventListener("change", () => this.#search())
  }

  #schedule() {
    clearTimeout(this.#timer)
    this.#timer = setTimeout(() => this.#search(), SEARCH_DEBOUNCE_MS)
  }

  async #search() {
    const fields = new FormData(this.#form)
    const params = new URLSearchParams([...fields].filter(([name, value]) => SEARCH_FIELDS.includes(name) && value))
    if (!params.get("q")?.trim()) return
    this.#request?.abort()
    const request = this.#request = new AbortController()
    let html
    try {
      const response = await fetch(`${this.#form.action}?${params}`, { signal: request.signal, headers: { Accept: "text/html" } })
      if (!response.ok) return
      html = await response.text()
    } catch { return }
    const page = fragment(html)
    const results = page.getElementById("search-results"), current = document.getElementById("search-results")
    if (!results || !current) return
    this.#decorate(results)
    current.replaceWith(results)
    const summary = page.querySelector(".search__summary"), shown = document.querySelector(".search__summary")
    if (summary && shown) shown.replaceWith(summary)
    else if (summary) results.before(summary)
    history.replaceState(null, "", `${this.#form.action}?${params}`)
  }
}
