// The room switcher: Ctrl+K (⌘K on Apple systems) opens a dialog listing your rooms and
// people; typing filters them, ↑/↓ move, Enter goes, Escape closes.

import { h } from "./dom.js"
import { matchesFilter } from "./forms.js"

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
