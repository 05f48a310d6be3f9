// An Action Cable client (the actioncable-v1-json protocol): subscriptions, a ping watchdog, reconnects
// with backoff and jitter, every subscription made again after a reconnect.

import { h } from "./dom.js"

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
