// The mentions inbox (/mentions): a new mention appears at the top as it is made.

import { fragment, fetchText } from "./dom.js"

export class MentionsInbox {
  #section
  #decorate

  constructor(cable, section, decorate) {
    this.#section = section
    this.#decorate = decorate
    cable.subscribe({ channel: "MentionsChannel" }, { received: () => this.refresh() })
    cable.addEventListener("connected", (event) => { if (event.detail.reconnected) this.refresh() })
  }

  // The first page again, as the server renders it (read marks and all); older pages stay as they are.
  async refresh() {
    if (new URLSearchParams(location.search).has("before")) return
    const html = await fetchText("/mentions")
    const fresh = html && fragment(html).getElementById("mentions")
    if (!fresh) return
    this.#decorate(fresh)
    this.#section.replaceChildren(...fresh.childNodes)
  }
}
