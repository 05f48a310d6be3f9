// Threads: "Reply in thread" and "N replies" open the thread beside its room on a wide
// screen, a side panel that is live and has its own composer; on a phone (and without
// JavaScript) the thread is a page of its own.

import { h, fragment, send } from "./dom.js"

export const SIDE_PANEL_MEDIA = "(min-width: 721px)"   // narrower is the phone layout: a thread is its own page

export class ThreadPanel {
  #main
  #start
  #current = null   // { panel, room, url }
  #loading = null

  // start(section): what makes a thread section live; returns { close() }.
  constructor(main, start) {
    this.#main = main
    this.#start = start
    main.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.#current?.panel.contains(event.target) && !event.defaultPrevented) this.close()
    })
  }

  get wide() { return matchMedia(SIDE_PANEL_MEDIA).matches }

  // url: the thread's page (GET) or the form that starts it (POST, answered by a redirect
  // to the page). False when the browser should go there itself.
  open(url, method = "get") {
    if (!this.wide) return false
    this.#load(url, method)
    return true
  }

  async #load(url, method) {
    const request = this.#loading = {}
    let response = null
    try {
      response = method === "post" ? await send(url, {}) : await fetch(url, { headers: { Accept: "text/html" } })
    } catch {}
    if (this.#loading !== request) return
    if (!response?.ok) return this.#failed()
    const section = fragment(await response.text()).querySelector("section.thread")
    if (!section) return this.#failed()
    this.close()
    // The answered message is also in the room beside it: one id per page.
    for (const copy of section.querySelectorAll(".thread__parent [id]")) copy.removeAttribute("id")
    const close = h("button", { type: "button", className: "button button--quiet thread__close" }, "Close thread")
    close.addEventListener("click", () => this.close())
    section.querySelector(".thread__header").append(close)
    const panel = h("aside", { className: "thread-panel", "aria-labelledby": "thread_name" }, section)
    this.#main.append(panel)
    this.#main.classList.add("main--with-thread")
    this.#current = { panel, room: this.#start(section), url: response.url }
    section.querySelector(".composer [role=textbox]")?.focus()
  }

  #failed() {
    this.#main.querySelector(".thread-panel__error")?.remove()
    const note = h("p", { className: "notice notice--alert thread-panel__error", role: "alert" }, "Couldn’t open the thread. Try again.")
    this.#main.append(note)
    setTimeout(() => note.remove(), 4000)
  }

  close() {
    if (!this.#current) return
    this.#current.room.close()
    this.#current.panel.remove()
    this.#main.classList.remove("main--with-thread")
    this.#current = null
  }
}
