// Staying live: the Action Cable client, the sidebar and presence it keeps current,
// and the room switcher.

import { h, fragment, fetchText, matchesFilter } from "./dom.js"

// The Action Cable client -----------------------------------------------------
// An Action Cable client (the actioncable-v1-json protocol): subscriptions, a ping watchdog, reconnects
// with backoff and jitter, every subscription made again after a reconnect.

export const STALE_AFTER_MS = 6000      // no ping or message this long: the socket is dead
export const RECONNECT_MIN_MS = 500     // then 1 s, 2 s, 4 s…
export const RECONNECT_MAX_MS = 15000
export const RECONNECT_JITTER = 0.3     // ± this share of each delay
export const OFFLINE_AFTER_MS = 5000    // 5 s disconnected is offline, as in Campfire

export class Backoff {
  #attempts = 0

  constructor(random = Math.random) { this.random = random }

  next() {
    const base = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** this.#attempts++)
    return Math.round(base * (1 + RECONNECT_JITTER * (2 * this.random() - 1)))
  }

  reset() { this.#attempts = 0 }
}

class Subscription {
  constructor(cable, params, callbacks) {
    Object.assign(this, { cable, callbacks, identifier: JSON.stringify(params), confirmed: false })
  }

  perform(action, data = {}) {
    return this.cable.send({ command: "message", identifier: this.identifier, data: JSON.stringify({ ...data, action }) })
  }

}

// Events: "connected" (detail.reconnected), "subscribed" (all confirmed),
// "disconnected", "ping", "offline" and "online".
export class Cable extends EventTarget {
  subscriptions = new Map()   // identifier → Subscription
  offline = false
  #url
  #socket = null
  #backoff = new Backoff()
  #timers = {}
  #welcomed = false
  #everConnected = false
  #stopped = false
  #serverOffsetMs = 0

  constructor(url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/cable") {
    super()
    this.#url = url
    this.#armOffline()
    // The network came back or the tab woke up: don't wait out the backoff.
    addEventListener("online", () => this.#reconnectNow())
    document.addEventListener("visibilitychange", () => { if (!document.hidden) this.#reconnectNow() })
  }

  get connected() { return this.#welcomed }

  // The server's clock as its pings tell it (ms since the epoch).
  serverNow() { return Date.now() + this.#serverOffsetMs }

  connect() {
    if (this.#socket || this.#stopped) return
    clearTimeout(this.#timers.retry)
    const socket = this.#socket = new WebSocket(this.#url, ["actioncable-v1-json", "actioncable-unsupported"])
    socket.onmessage = (event) => this.#receive(event.data)
    socket.onclose = () => this.#lost(socket)
    socket.onerror = () => socket.close()
    this.#feedWatchdog()
  }

  subscribe(params, callbacks = {}) {
    const subscription = new Subscription(this, params, callbacks)
    this.subscriptions.set(subscription.identifier, subscription)
    if (this.#welcomed) this.send({ command: "subscribe", identifier: subscription.identifier })
    return subscription
  }

  unsubscribe(subscription) {
    if (this.subscriptions.get(subscription.identifier) !== subscription) return
    this.subscriptions.delete(subscription.identifier)
    this.send({ command: "unsubscribe", identifier: subscription.identifier })
  }

  send(command) {
    if (!this.#welcomed || this.#socket.readyState !== WebSocket.OPEN) return false
    this.#socket.send(JSON.stringify(command))
    return true
  }

  #receive(text) {
    this.#feedWatchdog()
    let frame
    try { frame = JSON.parse(text) } catch { return }
    if (frame.type === "welcome") return this.#welcome()
    if (frame.type === "ping") return this.#ping(frame.message)
    if (frame.type === "disconnect") {
      this.#stopped = frame.reconnect === false
      return this.#drop()
    }
    const subscription = this.subscriptions.get(frame.identifier)
    if (!subscription) return
    if (frame.type === "confirm_subscription") {
      subscription.confirmed = true
      subscription.callbacks.connected?.()
    } else if (frame.type === "reject_subscription") {
      this.subscriptions.delete(frame.identifier)
    } else if ("message" in frame) {
      return subscription.callbacks.received?.(frame.message)
    }
    if ([...this.subscriptions.values()].every((each) => each.confirmed)) this.dispatchEvent(new CustomEvent("subscribed"))
  }

  #welcome() {
    this.#welcomed = true
    this.#backoff.reset()
    this.#setOffline(false)
    for (const { identifier } of this.subscriptions.values()) this.send({ command: "subscribe", identifier })
    this.dispatchEvent(new CustomEvent("connected", { detail: { reconnected: this.#everConnected } }))
    this.#everConnected = true
  }

  #ping(seconds) {
    if (Number.isFinite(seconds)) this.#serverOffsetMs = seconds * 1000 - Date.now()
    this.dispatchEvent(new CustomEvent("ping"))
  }

  #feedWatchdog() {
    clearTimeout(this.#timers.watchdog)
    this.#timers.watchdog = setTimeout(() => this.#drop(), STALE_AFTER_MS)
  }

  // A dead socket can take long to report its close: stop listening to it now.
  #drop() {
    const socket = this.#socket
    if (socket?.readyState === WebSocket.CONNECTING) socket.onopen = () => socket.close()
    else socket?.close()
    this.#lost(socket)
  }

  #lost(socket) {
    if (!socket || socket !== this.#socket) return
    socket.onmessage = socket.onclose = socket.onerror = null
    this.#socket = null
    clearTimeout(this.#timers.watchdog)
    for (const subscription of this.subscriptions.values()) subscription.confirmed = false
    if (this.#welcomed) {
      this.#welcomed = false
      this.#armOffline()
      this.dispatchEvent(new CustomEvent("disconnected"))
    }
    if (this.#stopped) return this.#setOffline(true)
    this.#timers.retry = setTimeout(() => this.connect(), this.#backoff.next())
  }

  #reconnectNow() {
    if (this.#socket || this.#stopped) return
    this.#backoff.reset()
    this.connect()
  }

  #armOffline() {
    clearTimeout(this.#timers.offline)
    this.#timers.offline = setTimeout(() => { if (!this.#welcomed) this.#setOffline(true) }, OFFLINE_AFTER_MS)
  }

  #setOffline(offline) {
    if (!offline) clearTimeout(this.#timers.offline)
    if (this.offline === offline) return
    this.offline = offline
    this.dispatchEvent(new CustomEvent(offline ? "offline" : "online"))
  }
}

// The banner shown while offline, and body[data-cable] ("connecting", "live" once every
// subscription is confirmed, "offline") for styles and tests.
export function showConnection(cable) {
  const banner = h("div", { className: "offline-banner", role: "status", hidden: true }, "You’re offline. Reconnecting…")
  document.body.prepend(banner)
  const show = (state) => {
    banner.hidden = state !== "offline"
    document.body.dataset.cable = state
  }
  show("connecting")
  cable.addEventListener("subscribed", () => show("live"))
  cable.addEventListener("disconnected", () => show(cable.offline ? "offline" : "connecting"))
  cable.addEventListener("offline", () => show("offline"))
  cable.addEventListener("online", () => show("connecting"))
}

// The sidebar and presence ----------------------------------------------------
// The live sidebar (unread and read marks, refreshes) and who is present in the room.

export const PRESENCE_VISIBILITY_DELAY_MS = 5000   // present/absent 5 s after a visibility change, as in Campfire
export const PRESENCE_REFRESH_EVERY_MS = 50 * 1000 // the server counts a tab silent longer than 60 s as gone

export class Sidebar {
  #currentRoomId

  constructor(cable, currentRoomId) {
    this.#currentRoomId = currentRoomId ? String(currentRoomId) : null
    cable.subscribe({ channel: "UnreadRoomsChannel" }, { received: (data) => this.markUnread(data.roomId) })
    cable.subscribe({ channel: "ReadRoomsChannel" }, { received: (data) => this.markRead(data.room_id) })
    cable.subscribe({ channel: "SidebarChannel" }, { received: (data) => { if (data.action === "refresh") this.refresh() } })
    document.addEventListener("visibilitychange", () => { if (!document.hidden) this.markRead(this.#currentRoomId) })
    this.#decorate()
  }

  get element() { return document.getElementById("user_sidebar") }

  markUnread(roomId) {
    if (String(roomId) === this.#currentRoomId && !document.hidden) return
    this.#setUnread(this.#link(roomId), true)
  }

  markRead(roomId) { this.#setUnread(this.#link(roomId), false) }

  async refresh() {
    const html = await fetchText("/users/me/sidebar")
    const fresh = html && fragment(html).getElementById("user_sidebar")
    const current = this.element
    if (!fresh || !current) return
    const focused = document.activeElement?.closest?.("#user_sidebar [data-room-id]")?.dataset.roomId
    fresh.scrollTop = current.scrollTop
    current.replaceWith(fresh)
    this.#decorate()
    if (focused) this.#link(focused)?.focus()
  }

  #link(roomId) {
    return roomId == null ? null : this.element?.querySelector(`.sidebar__room[data-room-id="${Number(roomId)}"]`)
  }

  // The current room stays marked; unread rooms say so to screen readers too.
  #decorate() {
    const current = this.#link(this.#currentRoomId)
    if (current) {
      current.classList.add("sidebar__room--current")
      current.setAttribute("aria-current", "page")
      if (!document.hidden) current.classList.remove("sidebar__room--unread")
    }
    for (const link of this.element?.querySelectorAll(".sidebar__room") ?? []) {
      this.#setUnread(link, link.classList.contains("sidebar__room--unread"))
    }
  }

  #setUnread(link, unread) {
    if (!link) return
    link.classList.toggle("sidebar__room--unread", unread)
    const note = link.querySelector(".sidebar__unread")
    if (unread && !note) link.append(h("span", { className: "sidebar__unread visually-hidden" }, " (unread)"))
    if (!unread) note?.remove()
  }
}

// PresenceChannel: present while the tab is visible, absent 5 s after it's hidden,
// a refresh every 50 s, and the people present shown in the room's header.
export class Presence {
  #subscription
  #present = false
  #timer = null
  #line

  constructor(cable, roomId, header) {
    this.#line = h("div", { className: "room__presence", hidden: true })
    header.querySelector(".room__name")?.after(this.#line)
    this.#subscription = cable.subscribe({ channel: "PresenceChannel", room_id: Number(roomId) }, {
      connected: () => this.#connected(),
      received: (data) => { if (data.action === "present") this.show(data.users ?? []) },
    })
    cable.addEventListener("disconnected", () => { this.#present = false })
    document.addEventListener("visibilitychange", () => this.#visibilityChanged())
    setInterval(() => { if (this.#subscription.confirmed) this.#subscription.perform("refresh") }, PRESENCE_REFRESH_EVERY_MS)
  }

  show(users) {
    const names = users.map((user) => user.name).join(", ")
    this.#line.replaceChildren(h("span", { className: "visually-hidden" }, `Present: ${names}`), ...users.map((user) =>
      h("img", { className: "avatar", src: user.avatar_url ?? `/users/${Number(user.id)}/avatar`, alt: "", width: 24, height: 24, title: user.name, "aria-hidden": "true" })))
    this.#line.dataset.count = `${users.length} here`   // what a phone shows instead of the faces
    this.#line.hidden = users.length === 0
  }

  // Subscribing counts us present; a hidden tab says otherwise soon after.
  #connected() {
    this.#present = true
    this.#visibilityChanged()
  }

  #visibilityChanged() {
    clearTimeout(this.#timer)
    this.#timer = setTimeout(() => {
      const visible = !document.hidden
      if (!this.#subscription.confirmed || visible === this.#present) return
      this.#present = visible
      this.#subscription.perform(visible ? "present" : "absent")
    }, PRESENCE_VISIBILITY_DELAY_MS)
  }
}

// The room switcher -----------------------------------------------------------
// The room switcher: Ctrl+K (⌘K on Apple systems) opens a dialog listing your rooms and
// people; typing filters them, ↑/↓ move, Enter goes, Escape closes.

export const PEOPLE_DEBOUNCE_MS = 200   // wait for a pause in typing before asking for names
export const MAX_CHOICES = 30           // a longer list is a filter not yet typed
const APPLE = /Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent)

// The choices matching what was typed: names that start with it first, then those that
// contain it, each group in its given order; people already listed as a room are left out.
export function switcherChoices(rooms, people, query) {
  const matching = [...rooms, ...people.filter((person) => !rooms.some((room) => room.label === person.label))]
    .filter((choice) => matchesFilter(choice.label, query))
  const starts = (choice) => matchesFilter(choice.label.slice(0, query.trim().length), query)
  return [...matching.filter(starts), ...matching.filter((choice) => !starts(choice))].slice(0, MAX_CHOICES)
}

// The rooms the sidebar lists, as choices.
function sidebarRooms() {
  return [...document.querySelectorAll("#user_sidebar .sidebar__room")].map((link) => ({
    label: (link.querySelector(".sidebar__name") ?? link).textContent.replace(" (unread)", "").trim(),
    href: link.getAttribute("href"), kind: link.closest("#direct_rooms") ? "Ping" : "Room",
  }))
}

export class RoomSwitcher {
  #dialog
  #input
  #list
  #choices = []
  #people = []
  #active = 0
  #timer = null

  constructor() {
    this.#input = h("input", {
      type: "text", className: "switcher__input", placeholder: "Find a room or a person", autocomplete: "off",
      role: "combobox", "aria-label": "Find a room or a person", "aria-expanded": "true", "aria-controls": "switcher_choices",
      "aria-autocomplete": "list",
    })
    this.#list = h("ul", { id: "switcher_choices", className: "switcher__choices", role: "listbox", "aria-label": "Rooms and people" })
    this.#dialog = h("dialog", { className: "switcher", "aria-label": "Switch rooms" },
      h("p", { className: "switcher__hint", id: "switcher_hint" }, "Go to a room or a person: type, then Enter."), this.#input, this.#list)
    this.#dialog.setAttribute("aria-describedby", "switcher_hint")
    this.#input.addEventListener("input", () => this.#changed())
    this.#input.addEventListener("keydown", (event) => this.#keydown(event))
    this.#list.addEventListener("mousedown", (event) => event.preventDefault())
    this.#list.addEventListener("click", (event) => {
      const option = event.target.closest("[role=option]")
      if (option) this.#go([...this.#list.children].indexOf(option))
    })
    this.#dialog.addEventListener("click", (event) => { if (event.target === this.#dialog) this.close() })   // the backdrop
    document.body.append(this.#dialog)
    document.addEventListener("keydown", (event) => {
      if (event.key.toLowerCase() === "k" && (APPLE ? event.metaKey : event.ctrlKey) && !event.altKey && !event.shiftKey) {
        event.preventDefault()
        this.#dialog.open ? this.close() : this.open()
      }
    })
  }

  get element() { return this.#dialog }

  open() {
    this.#input.value = ""
    this.#people = []
    this.#show()
    this.#dialog.showModal()
    this.#input.focus()
  }

  close() { this.#dialog.close() }

  #changed() {
    this.#show()
    clearTimeout(this.#timer)
    const query = this.#input.value.trim()
    if (query) this.#timer = setTimeout(() => this.#fetchPeople(query), PEOPLE_DEBOUNCE_MS)
  }

  async #fetchPeople(query) {
    let people = []
    try {
      const response = await fetch(`/autocompletable/users?${new URLSearchParams({ query })}`)
      if (response.ok) people = await response.json()
    } catch { return }
    if (query !== this.#input.value.trim()) return
    this.#people = people.map((person) => ({ label: person.name, href: `/users/${Number(person.value)}`, kind: "Person" }))
    this.#show()
  }

  #show() {
    this.#choices = switcherChoices(sidebarRooms(), this.#people, this.#input.value)
    this.#active = 0
    this.#list.replaceChildren(...this.#choices.map((choice, index) => h("li", {
      id: `switcher_choice_${index}`, className: "switcher__choice", role: "option", "aria-selected": String(index === 0),
    }, h("span", { className: "switcher__label" }, choice.label), " ", h("span", { className: "switcher__kind" }, choice.kind))))
    if (!this.#choices.length) this.#list.append(h("li", { className: "switcher__empty", role: "presentation" }, "Nothing matches."))
    this.#highlight()
  }

  #highlight() {
    const options = this.#list.querySelectorAll("[role=option]")
    options.forEach((option, index) => option.setAttribute("aria-selected", String(index === this.#active)))
    const active = options[this.#active]
    if (active) this.#input.setAttribute("aria-activedescendant", active.id)
    else this.#input.removeAttribute("aria-activedescendant")
    active?.scrollIntoView({ block: "nearest" })
  }

  #keydown(event) {
    const count = this.#choices.length
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault()
      if (count) this.#active = (this.#active + (event.key === "ArrowDown" ? 1 : -1) + count) % count
      this.#highlight()
    } else if (event.key === "Enter") {
      event.preventDefault()
      this.#go(this.#active)
    }
  }

  #go(index) {
    const choice = this.#choices[index]
    if (!choice) return
    this.close()
    location.assign(choice.href)
  }
}
