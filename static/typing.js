// Typing notifications (TypingNotificationsChannel): "start" at most once a second while typing,
// "stop" when done; others' names shown above the composer for 5 s at most.

import { h } from "./dom.js"

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
