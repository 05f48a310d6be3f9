// Search as you type: the results follow the words (the last one matched as a prefix),
// the room and person filters apply at once. Only a search sent (Enter, the button)
// joins the recent ones: it is a POST, what is shown as you type is a GET.

import { fragment } from "./dom.js"

export const SEARCH_DEBOUNCE_MS = 200   // one request per pause in typing, not per key
const SEARCH_FIELDS = ["q", "room_id", "creator_id"]

export class LiveSearch {
  #form
  #decorate
  #timer = null
  #request = null

  constructor(form, decorate) {
    this.#form = form
    this.#decorate = decorate
    form.querySelector("input[name=q]")?.addEventListener("input", () => this.#schedule())
    for (const select of form.querySelectorAll("select")) select.addEventListener("change", () => this.#search())
  }

  #schedule() {
    clearTimeout(this.#timer)
    this.#timer = setTimeout(() => this.#search(), SEARCH_DEBOUNCE_MS)
  }

  async #search() {
    const fields = new FormData(this.#form)
    const params = new URLSearchParams([...fields].filter(([name, value]) => SEARCH_FIELDS.includes(name) && value))
    if (!params.get("q")?.trim()) return
    this.#request?.abort()
    const request = this.#request = new AbortController()
    let html
    try {
      const response = await fetch(`${this.#form.action}?${params}`, { signal: request.signal, headers: { Accept: "text/html" } })
      if (!response.ok) return
      html = await response.text()
    } catch { return }
    const page = fragment(html)
    const results = page.getElementById("search-results"), current = document.getElementById("search-results")
    if (!results || !current) return
    this.#decorate(results)
    current.replaceWith(results)
    const summary = page.querySelector(".search__summary"), shown = document.querySelector(".search__summary")
    if (summary && shown) shown.replaceWith(summary)
    else if (summary) results.before(summary)
    history.replaceState(null, "", `${this.#form.action}?${params}`)
  }
}
