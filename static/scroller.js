// Scrolling the messages: follow new ones at the bottom, else keep the reader's
// place; page in older (and newer) ones; "Jump to latest"; permalink highlights.

import { h, fetchText } from "./dom.js"
import { parseMessages } from "./messages.js"

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
