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

const fold = (text) => text.normalize("NFD").replace(/\p{M}/gu, "").toLowerCase().trim()

function showMatching(list, query) {
  const wanted = fold(query)
  for (const item of list.children) item.hidden = Boolean(wanted) && !fold(item.textContent).includes(wanted)
}

// The bell cycles the room's involvement without leaving the page.
export function bellInPlace() {
  document.addEventListener("submit", async (event) => {
    const form = event.target
    if (event.defaultPrevented || !form.matches?.("form.bell")) return
    event.preventDefault()
    const response = await send(form.action, Object.fromEntries(new FormData(form)))
    const bell = response?.ok && fragment(await response.text()).querySelector("form.bell")
    if (!bell) return
    form.replaceWith(bell)
    bell.querySelector("button")?.focus()
  })
}
