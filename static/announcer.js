// New messages read out by screen readers, as the typing line is: a polite live region
// with the author and the text, at most one announcement every ANNOUNCE_EVERY_MS (a burst
// becomes one: how many, and the latest).

import { h } from "./dom.js"

export const ANNOUNCE_EVERY_MS = 2000   // a busy room would otherwise talk over itself
export const MAX_ANNOUNCED_CHARS = 200  // a long message is cut: the reader can go and read it

// What to say for the messages that arrived since the last announcement, oldest first.
export function announcement(messages) {
  if (!messages.length) return ""
  const { author, text } = messages.at(-1)
  const said = text.length > MAX_ANNOUNCED_CHARS ? text.slice(0, MAX_ANNOUNCED_CHARS - 1) + "…" : text
  const latest = `${author}: ${said}`
  return messages.length === 1 ? latest : `${messages.length} new messages. Latest, ${latest}`
}

export class Announcer {
  #pending = []
  #lastAt = -Infinity
  #timer = null

  constructor(container, now = () => Date.now()) {
    this.now = now
    this.region = h("div", { className: "visually-hidden announcer", "aria-live": "polite", "aria-atomic": "true" })
    container.append(this.region)
  }

  // A message element someone else posted, just shown.
  message(element) {
    const author = element.querySelector(".message__author")?.textContent.trim() ?? ""
    const body = element.querySelector(".message__body")
    const text = (body?.innerText || body?.textContent || "").replace(/\s+/g, " ").trim()
    this.#pending.push({ author, text })
    if (this.#timer !== null) return
    const wait = this.#lastAt + ANNOUNCE_EVERY_MS - this.now()
    if (wait <= 0) this.#speak()
    else this.#timer = setTimeout(() => this.#speak(), wait)
  }

  #speak() {
    this.#timer = null
    this.#lastAt = this.now()
    this.region.textContent = announcement(this.#pending)
    this.#pending = []
  }
}
