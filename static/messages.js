// The room's messages: live from RoomMessagesChannel, each once; threads, local
// times, per-reader actions, catching up, /play sounds.

import { playSound, isMuted, setMuted } from "./sounds.js"
import { h, fragment, fetchText } from "./dom.js"

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

export const parseMessages = (html) => [...fragment(html).querySelectorAll(".message")]

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
