// Forms: confirmations before danger, a filter for long people pickers, and
// the notification bell switched in place.

import { h, fragment, send } from "./dom.js"

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
