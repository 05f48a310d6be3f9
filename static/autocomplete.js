// "@name" suggests room members (a mention chip) and "/play " the sounds, in a
// listbox driven by aria-activedescendant: ↑/↓ move, Enter or Tab choose, Escape closes.

import { mentionChip } from "./richtext.js"
import { SOUND_NAMES } from "./sounds.js"
import { h } from "./dom.js"

export const MENTION_DEBOUNCE_MS = 300   // Campfire waits as long before asking for names
const MENTION = /(?:^|[\s(])@([\p{L}\p{N}_.'-]+(?: [\p{L}\p{N}_.'-]*)?)$/u   // "@Ada", "@Ada Lo"
const PLAY = /^\/play (\w*)$/

// What the text before the caret asks for, if anything.
export function autocompleteQuery(beforeCaret, wholeText) {
  const before = beforeCaret.replace(/\u00a0/g, " ")
  const play = PLAY.exec(wholeText.replace(/\u00a0/g, " "))
  if (play && before.endsWith("/play " + play[1])) return { kind: "sound", query: play[1] }
  const mention = MENTION.exec(before)
  return mention && { kind: "mention", query: mention[1] }
}

export const soundsMatching = (query) =>
  SOUND_NAMES.filter((name) => name.startsWith(query.toLowerCase()))

export class Autocomplete {
  #editor
  #roomId
  #options = []
  #active = -1
  #request = null
  #timer = null
  #ask = null   // the question the list answers

  constructor(editor, roomId) {
    this.#editor = editor
    this.#roomId = roomId
    const list = this.element = h("ul", { id: `${editor.root.id}_suggestions`, className: "autocomplete", role: "listbox", "aria-label": "Suggestions", hidden: true })
    list.addEventListener("mousedown", (event) => event.preventDefault())   // keep the caret in the editor
    list.addEventListener("click", (event) => {
      const option = event.target.closest("[role=option]")
      if (option) this.#choose([...list.children].indexOf(option))
    })
    const root = editor.root
    root.setAttribute("aria-autocomplete", "list")
    root.setAttribute("aria-controls", list.id)
    root.addEventListener("keydown", (event) => this.#keydown(event), true)   // before the editor's Enter
    root.addEventListener("input", () => this.#changed())
    root.addEventListener("blur", () => this.close())
  }

  get open() { return !this.element.hidden }

  close() {
    clearTimeout(this.#timer)
    this.#request?.abort()
    this.#ask = null
    this.#show([])
  }

  #keydown(event) {
    if (!this.open || event.isComposing) return
    const step = { ArrowDown: 1, ArrowUp: -1 }[event.key]
    const count = this.#options.length
    if (step) this.#activate((this.#active + step + count) % count)
    else if (event.key === "Enter" && this.#ask?.kind === "sound" && this.#options[this.#active]?.value === this.#ask.query) {
      this.close()  // "/play tada" typed in full: Enter sends it, as it would without the list
      return
    } else if ((event.key === "Enter" || event.key === "Tab") && !event.shiftKey) this.#choose(this.#active)
    else if (event.key === "Escape") this.close()
    else return
    event.preventDefault()
  }

  #changed() {
    const ask = autocompleteQuery(this.#editor.textBeforeCaret(), this.#editor.root.textContent)
    if (!ask) return this.close()
    this.#ask = ask
    clearTimeout(this.#timer)
    if (ask.kind === "sound") this.#show(soundsMatching(ask.query).map((name) => ({ label: name, value: name })))
    else this.#timer = setTimeout(() => this.#fetchPeople(ask), MENTION_DEBOUNCE_MS)
  }

  async #fetchPeople(ask) {
    this.#request?.abort()
    const request = this.#request = new AbortController()
    let people = []
    try {
      const response = await fetch(`/autocompletable/users?${new URLSearchParams({ query: ask.query, room_id: this.#roomId })}`, { signal: request.signal })
      if (response.ok) people = await response.json()
    } catch { return }
    if (this.#ask === ask) this.#show(people.map((person) => person.group
      ? { label: `@${person.group}`, value: person, note: person.disabled_reason ?? person.description, disabled: Boolean(person.disabled_reason) }
      : { label: person.name, value: person, avatar: person.avatar_url }))
  }

  #show(options) {
    this.#options = options
    this.element.replaceChildren(...options.map((option, index) =>
      h("li", { id: `${this.element.id}_${index}`, className: "autocomplete__option", role: "option", "aria-selected": "false", "aria-disabled": option.disabled ? "true" : null },
        option.avatar ? h("img", { className: "avatar", src: option.avatar, alt: "", width: 20, height: 20 }) : "", option.label,
        option.note ? h("span", { className: "autocomplete__note" }, ` — ${option.note}`) : "")))
    this.element.hidden = !options.length
    this.#activate(options.length ? 0 : -1)
  }

  #activate(index) {
    this.#active = index
    ;[...this.element.children].forEach((item, i) => item.setAttribute("aria-selected", String(i === index)))
    const item = this.element.children[index]
    if (item) this.#editor.root.setAttribute("aria-activedescendant", item.id)
    else this.#editor.root.removeAttribute("aria-activedescendant")
    item?.scrollIntoView({ block: "nearest" })
  }

  #choose(index) {
    const option = this.#options[index], ask = this.#ask
    if (!option || !ask || option.disabled) return   // a disabled @everyone says why not, and stays
    this.close()
    if (option.value.group) this.#editor.replaceBeforeCaret(ask.query.length + 1, `@${option.value.group}`, "\u00a0")
    else if (ask.kind === "sound") this.#editor.replaceBeforeCaret(ask.query.length + 1, " " + option.value)  // a plain space: /play needs one
    else this.#editor.replaceBeforeCaret(ask.query.length + 1, mentionChip(option.value.sgid, option.value.name), "\u00a0")
  }
}
