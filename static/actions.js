// Message actions in place: Copy link, Boost, Reply, Edit (inline), Delete, unboost.

import { RichTextEditor } from "./editor.js"
import { parseMessages, decorateMessages } from "./messages.js"
import { h, fragment, send } from "./dom.js"

export const COPIED_SHOWN_MS = 2000
export const BOOST_PICKS = ["👍", "👏", "👋", "💪", "❤️", "😂", "🎉", "🔥"]   // Campfire's quick picks
export const MAX_BOOST_CHARS = 16
const NO_HOVER = matchMedia("(hover: none)")

export class MessageActions {
  #list
  #composer
  #scroller

  #openThread

  constructor(list, { composer, scroller, openThread = null }) {
    this.#list = list
    this.#composer = composer
    this.#scroller = scroller
    this.#openThread = openThread
    list.element.addEventListener("click", (event) => this.#clicked(event))
    list.element.addEventListener("submit", (event) => this.#submitted(event))
    // A long press on a touch screen shows the message's actions, not the browser's menu.
    list.element.addEventListener("contextmenu", (event) => {
      const message = event.target.closest(".message")
      if (!NO_HOVER.matches || !message || event.target.closest("a, button, input, [contenteditable=true]")) return
      event.preventDefault()
      this.#select(message, event, true)
    })
  }

  #clicked(event) {
    const action = event.target.closest("[data-action]")
    const message = event.target.closest(".message")
    if (!message) return
    const replies = event.target.closest("a.message__thread")
    if (replies && !event.ctrlKey && !event.metaKey && this.#openThread?.(replies.getAttribute("href"), "get")) return event.preventDefault()
    if (!action) return this.#select(message, event)
    const handler = {
      "copy-link": () => this.copyLink(action),
      "boost": () => BoostPicker.toggle(message, action, this.#list.viewer),
      "reply": () => this.#composer?.quote(message),
      "edit": () => this.edit(message),
    }[action.dataset.action]
    if (!handler) return
    event.preventDefault()
    handler()
  }

  #submitted(event) {
    const form = event.target, message = form.closest(".message")
    if (!message) return
    const kind = form.querySelector("[data-action]")?.dataset.action
    if (kind === "thread") {
      if (this.#openThread?.(form.action, "post")) event.preventDefault()
    } else if (kind === "save" || kind === "unread") {
      event.preventDefault()
      send(form.action, {}).then((response) => {
        const done = kind === "save" ? "Saved" : "Marked as unread"
        flash(form, response?.ok ? done : "Couldn’t do that. Try again.")
      })
    } else if (form.querySelector("[data-action=delete]")) {
      event.preventDefault()
      if (confirm("Delete this message?")) this.#delete(message, form)
    } else if (form.matches(".boost__remove")) {
      event.preventDefault()
      send(form.action, {}, "delete").then((response) => { if (response?.ok) form.closest(".boost").remove() })
    }
  }

  // There is no hover on a touch screen: a tap on a message shows its actions.
  #select(message, event, keep = false) {
    if (!NO_HOVER.matches || event.target.closest("a, button, input, [contenteditable=true], .message-editor, .boost-picker")) return
    for (const other of this.#list.element.querySelectorAll(".message--selected")) {
      if (other !== message) other.classList.remove("message--selected")
    }
    message.classList.toggle("message--selected", keep || !message.classList.contains("message--selected"))
  }

  async copyLink(link) {
    const url = new URL(link.getAttribute("href"), location.origin).href
    try {
      await navigator.clipboard.writeText(url)
    } catch {
      copyWithSelection(url)   // no Clipboard API outside secure contexts (plain HTTP)
    }
    link.parentElement.querySelector(".flash")?.remove()
    const note = h("span", { className: "flash", role: "status" }, "Copied")
    link.after(note)
    setTimeout(() => note.remove(), COPIED_SHOWN_MS)
  }

  async edit(message) {
    const open = message.querySelector(".message-editor [role=textbox]")
    if (open) return open.focus()
    const id = message.dataset.messageId
    const stored = await storedBody(this.#list.roomId, id)
    // While the body was fetched, a newer copy (the send's answer after its live echo, a
    // boost, an edit elsewhere) may have replaced the message: edit that copy, and only once.
    const current = message.isConnected ? message : this.#list.find(id)
    if (stored === null || !current) return
    const opened = current.querySelector(".message-editor [role=textbox]")
    if (opened) return opened.focus()
    new InlineEditor(current, stored, {
      save: (html) => this.#save(current, html),
      done: () => this.#composer?.editor.root.focus(),
    })
  }

  async #save(message, html) {
    const url = `/rooms/${this.#list.roomId}/messages/${message.dataset.messageId}`
    const response = await send(url, { "message[body]": html }, "patch")
    if (!response?.ok) return response?.status === 422 ? "A message can’t be empty." : "Couldn’t save. Try again."
    const [saved] = parseMessages(await response.text())
    if (saved) this.#scroller.change(() => this.#list.upsert(saved))
    return null
  }

  async #delete(message, form) {
    const response = await send(form.action, {}, "delete")
    if (!response?.ok) return alert("Couldn’t delete the message. Try again.")
    this.#list.remove(message.dataset.messageId)
    this.#composer?.editor.root.focus()
  }
}

// A short note beside the control that did something ("Copied", "Saved").
function flash(control, text) {
  control.parentElement.querySelector(".flash")?.remove()
  const note = h("span", { className: "flash", role: "status" }, text)
  control.after(note)
  setTimeout(() => note.remove(), COPIED_SHOWN_MS)
}

// The body as stored (mentions as attachments, /play as typed), from the edit page's textarea.
async function storedBody(roomId, messageId) {
  try {
    const response = await fetch(`/rooms/${roomId}/messages/${messageId}/edit`)
    if (!response.ok) return null
    const page = new DOMParser().parseFromString(await response.text(), "text/html")  // the server's page
    return page.querySelector("#edit_body")?.value ?? null
  } catch {
    return null
  }
}

function copyWithSelection(text) {
  const field = h("textarea", { value: text, readOnly: true })
  Object.assign(field.style, { position: "fixed", opacity: "0" })
  document.body.append(field)
  field.select()
  document.execCommand("copy")
  field.remove()
}

// The message's body swapped for an editor; Enter or "Save changes" saves, Escape or "Cancel" cancels.
class InlineEditor {
  #form
  #editor
  #error = h("p", { className: "message-editor__error", role: "alert", hidden: true })
  #callbacks

  constructor(message, storedHTML, callbacks) {
    this.#callbacks = callbacks
    const names = [...message.querySelectorAll(".message__body .mention")].map((chip) => chip.textContent.trim())
    const editor = this.#editor = new RichTextEditor({
      label: "Edit message", className: "message-editor__input", submit: () => this.#save(), cancel: () => this.close(),
    })
    editor.load(storedHTML, { mentionName: (sgid, index) => names[index] ?? "mention" })
    const cancel = h("button", { type: "button", className: "button" }, "Cancel")
    cancel.addEventListener("click", () => this.close())
    this.#form = h("form", { className: "message-editor" }, editor.toolbar(), editor.root, this.#error,
      h("button", { type: "submit", className: "button button--primary" }, "Save changes"), cancel)
    this.#form.addEventListener("submit", (event) => { event.preventDefault(); this.#save() })
    message.classList.add("message--editing")
    message.querySelector(".message__body").after(this.#form)
    editor.focus()
  }

  async #save() {
    const problem = this.#editor.blank ? "A message can’t be empty." : await this.#callbacks.save(this.#editor.html)
    if (!problem) return this.close()
    this.#error.textContent = problem
    this.#error.hidden = false
  }

  close() {
    // The message may have been replaced by the saved (or a live) copy by now.
    this.#form.closest(".message")?.classList.remove("message--editing")
    this.#form.remove()
    this.#callbacks.done()
  }
}

class BoostPicker {
  static #open = null

  static toggle(message, trigger, viewer) {
    const same = BoostPicker.#open?.message.dataset.messageId === message.dataset.messageId
    BoostPicker.#open?.close()
    if (!same) BoostPicker.#open = new BoostPicker(message, trigger, viewer)
  }

  constructor(message, trigger, viewer) {
    Object.assign(this, { message, trigger, viewer })
    const input = h("input", { type: "text", className: "boost-picker__input", maxLength: MAX_BOOST_CHARS, placeholder: "Or type a boost", required: true, "aria-label": "Write a boost" })
    const form = h("form", { className: "boost-picker__form" }, input, h("button", { type: "submit", className: "button" }, "Add boost"))
    form.addEventListener("submit", (event) => { event.preventDefault(); this.#boost(input.value.trim()) })
    const picks = BOOST_PICKS.map((emoji) => {
      const pick = h("button", { type: "button", className: "boost-picker__pick", "aria-label": `Boost with ${emoji}` }, emoji)
      pick.addEventListener("click", () => this.#boost(emoji))
      return pick
    })
    this.element = h("div", { className: "boost-picker", role: "group", "aria-label": "Boost this message" }, ...picks, form)
    this.element.addEventListener("keydown", (event) => { if (event.key === "Escape") { event.preventDefault(); this.close(true) } })
    message.querySelector(".message__content").append(this.element)
    trigger.setAttribute("aria-expanded", "true")
    this.element.scrollIntoView({ block: "nearest" })
    picks[0].focus({ preventScroll: true })
    this.onOutside = (event) => { if (!this.element.contains(event.target) && !trigger.contains(event.target)) this.close() }
    document.addEventListener("pointerdown", this.onOutside)
  }

  async #boost(content) {
    if (!content || [...content].length > MAX_BOOST_CHARS) return
    const id = Number(this.message.dataset.messageId)
    const response = await send(`/messages/${id}/boosts`, { "boost[content]": content })
    if (!response?.ok) return
    const boost = fragment(await response.text()).querySelector(".boost")
    // The live copy of the message may show it already.
    const message = document.querySelector(`.message[data-message-id="${id}"]`) ?? this.message
    if (boost && !message.querySelector(`#${CSS.escape(boost.id)}`)) {
      message.querySelector("ul.boosts")?.append(boost)
      decorateMessages(message, this.viewer, { replies: Boolean(message.querySelector("[data-action=reply]")) })
    }
    this.close(true)
  }

  close(returnFocus = false) {
    document.removeEventListener("pointerdown", this.onOutside)
    this.element.remove()
    this.trigger.setAttribute("aria-expanded", "false")
    const id = Number(this.message.dataset.messageId)   // the message may have been replaced meanwhile
    if (returnFocus) document.querySelector(`.message[data-message-id="${id}"] [data-action=boost]`)?.focus()
    if (BoostPicker.#open === this) BoostPicker.#open = null
  }
}
