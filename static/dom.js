// What every part of the page shares: small DOM and HTTP helpers, the page-wide
// form behaviours, and the screen-reader announcer of new messages.

// DOM and HTTP helpers --------------------------------------------------------

// h("button", { type: "button", "aria-label": "Bold" }, "B"): properties where the element has them, else attributes.
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag)
  for (const [name, value] of Object.entries(attributes)) {
    if (value == null || value === false) continue
    if (name in element && !name.includes("-")) element[name] = value
    else element.setAttribute(name, value === true ? "" : value)
  }
  element.append(...children)
  return element
}

// The server's own rendering (already sanitized there) as nodes.
export function fragment(html) {
  const template = document.createElement("template")
  template.innerHTML = html
  return template.content
}

// The .message elements of a piece of HTML: a page of messages, a message sent back.
export const parseMessages = (html) => [...fragment(html).querySelectorAll(".message")]

// A same-origin form POST (Rails' _method for the other verbs); null when the network fails.
export async function send(url, fields = {}, method = "post") {
  const body = new URLSearchParams(method === "post" ? fields : { _method: method, ...fields })
  try {
    return await fetch(url, { method: "POST", body, headers: { Accept: "text/html" } })
  } catch {
    return null
  }
}

// GET a fragment: its text, "" for 204 No Content, null on errors and when the network fails.
export async function fetchText(url) {
  try {
    const response = await fetch(url, { headers: { Accept: "text/html" } })
    return response.status === 204 ? "" : response.ok ? await response.text() : null
  } catch {
    return null
  }
}

// Forms -----------------------------------------------------------------------
// Forms: confirmations before danger, a filter for long people pickers, and
// the notification bell switched in place.

export function confirmDangerousForms() {
  document.addEventListener("submit", (event) => {
    if (event.defaultPrevented) return
    const button = event.submitter
    const question = button?.dataset.confirm ?? (button?.dataset.action === "delete" ? "Delete this message?" : null)
    if (question && !confirm(question)) event.preventDefault()
  })
}

// The member pickers (New Ping, new room, room settings) get a "Find people" box.
export function filterPickers(root = document) {
  for (const picker of root.querySelectorAll(".picker[data-members]")) {
    const list = picker.querySelector(".picker__people")
    if (!list) continue
    let filter = picker.querySelector("input[data-picker-filter]")
    if (!filter) list.before(filter = h("input", { type: "search", className: "field__input picker__filter", placeholder: "Find people…", "aria-label": "Find people", "data-picker-filter": "" }))
    filter.hidden = false
    filter.setAttribute("aria-controls", list.id ||= `picker_people_${Math.random().toString(36).slice(2, 8)}`)
    filter.addEventListener("input", () => showMatching(list, filter.value))
    filter.addEventListener("keydown", (event) => { if (event.key === "Enter") event.preventDefault() })  // not a submit
  }
}

// New room and room settings: the form posts to /rooms/opens or /rooms/closeds, as the
// Open/Closed choice says (the server reads the choice too, for a page without scripts).
export function roomKindFollowsChoice(root = document) {
  for (const form of root.querySelectorAll("form[data-room-form]")) {
    const follow = () => {
      const kind = form.querySelector('input[name="room_kind"]:checked')?.value
      if (kind === "opens" || kind === "closeds") form.setAttribute("action", form.getAttribute("action").replace(/^\/rooms\/(opens|closeds)\b/, `/rooms/${kind}`))
    }
    form.addEventListener("change", (event) => { if (event.target.name === "room_kind") follow() })
    follow()
  }
}

// Whether a person's name matches what was typed in the filter: any part of it,
// ignoring case and accents ("jose" finds "José"); an empty filter matches everyone.
export function matchesFilter(text, query) {
  const wanted = fold(query)
  return !wanted || fold(text).includes(wanted)
}

const fold = (text) => text.normalize("NFD").replace(/\p{M}/gu, "").toLowerCase().trim()

function showMatching(list, query) {
  for (const item of list.children) item.hidden = !matchesFilter(item.textContent, query)
}

// The bell's menu sets the room's involvement without leaving the page; Escape or a
// click elsewhere closes it.
export function bellInPlace() {
  document.addEventListener("submit", async (event) => {
    const form = event.target, bell = form.closest?.("details.bell")
    if (event.defaultPrevented || !bell || !form.matches(".bell__choice")) return
    event.preventDefault()
    const response = await send(form.action, Object.fromEntries(new FormData(form)))
    const fresh = response?.ok && fragment(await response.text()).querySelector("details.bell")
    if (!fresh) return
    bell.replaceWith(fresh)
    fresh.querySelector("summary")?.focus()
  })
  document.addEventListener("keydown", (event) => {
    const bell = event.key === "Escape" && event.target.closest?.("details.bell[open]")
    if (!bell) return
    bell.open = false
    bell.querySelector("summary").focus()
  })
  document.addEventListener("click", (event) => {
    for (const bell of document.querySelectorAll("details.bell[open]")) if (!bell.contains(event.target)) bell.open = false
  })
}

// Announcing new messages -----------------------------------------------------
// New messages read out by screen readers, as the typing line is: a polite live region
// with the author and the text, at most one announcement every ANNOUNCE_EVERY_MS (a burst
// becomes one: how many, and the latest).

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
