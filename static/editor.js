// A contenteditable textbox with Trix's formatting. What comes in is rebuilt by
// the Sanitizer; what goes out is editorToHTML.

import { Sanitizer, editorToHTML, isBlank, safeHref } from "./richtext.js"
import { inlineShortcut, blockShortcut, looksLikeMarkdown, markdownToHTML } from "./markdown.js"
import { h } from "./dom.js"

// key: the shortcut with Ctrl (⌘ on Apple systems).
const FORMATS = [
  { name: "bold", label: "Bold", text: "B", key: "b", command: "bold" },
  { name: "italic", label: "Italic", text: "I", key: "i", command: "italic" },
  { name: "strike", label: "Strikethrough", text: "S", key: "shift+x", command: "strikeThrough" },
  { name: "link", label: "Link", text: "", key: "shift+u" },   // Ctrl+K is the room switcher
  { name: "quote", label: "Quote", text: "", key: "shift+9", block: "blockquote" },
  { name: "code", label: "Code block", text: "", key: "shift+c", block: "pre" },
  { name: "bullets", label: "Bulleted list", text: "", key: "shift+8", command: "insertUnorderedList", list: "ul" },
  { name: "numbers", label: "Numbered list", text: "", key: "shift+7", command: "insertOrderedList", list: "ol" },
]
const APPLE = /Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent)
const TOUCH = matchMedia("(pointer: coarse)")   // phones: Enter is a new line, a button sends
let editors = 0

export class RichTextEditor {
  #toolbar = null

  // submit: what Enter does (Shift+Enter is a line break); cancel: what Escape does.
  constructor({ label, className = "", submit, cancel }) {
    Object.assign(this, { submit, cancel })
    const root = this.root = h("div", {
      id: `rich_text_${++editors}`, className: `rich-text ${className}`, contentEditable: "true",
      role: "textbox", "aria-multiline": "true", "aria-label": label, "data-placeholder": label,
    })
    root.addEventListener("keydown", (event) => this.#keydown(event))
    root.addEventListener("paste", (event) => this.#paste(event, event.clipboardData))
    root.addEventListener("drop", (event) => this.#paste(event, event.dataTransfer))
    root.addEventListener("input", (event) => this.#markdown(event))
    root.addEventListener("input", () => { if (this.blank && !root.querySelector(":not(div, br)")) root.replaceChildren() })  // the placeholder shows
  }

  get html() { return editorToHTML(this.root) }
  get blank() { return isBlank(this.root) }
  get disabled() { return this.root.contentEditable !== "true" }

  set disabled(flag) {
    this.root.contentEditable = String(!flag)
    this.root.setAttribute("aria-disabled", String(flag))
    this.#toolbar?.update()
  }

  load(html, { mentionName } = {}) {
    this.root.replaceChildren(new Sanitizer({ mentionName }).fromHTML(html))
  }

  clear() {
    this.root.replaceChildren()
    this.#changed()
  }

  focus() {
    this.root.focus()
    getSelection().selectAllChildren(this.root)
    getSelection().collapseToEnd()
  }

  toolbar() { return (this.#toolbar ??= new Toolbar(this)).element }

  run(format) {
    if (this.disabled) return
    this.root.focus()
    if (!this.root.firstChild) getSelection().collapse(this.root.appendChild(h("div", {}, h("br"))), 0)  // a line to format
    const caret = format.block || format.list ? this.#caretOffset() : null   // Chrome moves it to the line's start
    // Quotes and lists are undone by hand: Chrome writes style attributes there (our CSP refuses them).
    const block = format.block && this.#closest(format.block), list = format.list && this.#closest("ul, ol")
    if (format.name === "link") this.#link()
    else if (block?.localName === "pre") document.execCommand("formatBlock", false, "div")
    else if (block) block.replaceWith(...asLines(block))
    else if (list && list.localName === format.list) list.replaceWith(...[...list.children].map((item) => h("div", {}, ...item.childNodes)))
    else if (list) list.replaceWith(h(format.list, {}, ...list.childNodes))
    else document.execCommand(format.command ?? "formatBlock", false, format.block)
    if (caret !== null) this.#placeCaret(caret)
    this.#changed()
  }

  // The collapsed caret as a count of characters before it, and back.
  #caretOffset() {
    const range = this.#range()?.cloneRange()
    if (!range?.collapsed) return null
    range.setStart(this.root, 0)
    return range.toString().length
  }

  #placeCaret(offset) {
    const walker = document.createTreeWalker(this.root, NodeFilter.SHOW_TEXT)
    while (walker.nextNode()) {
      if (offset <= walker.currentNode.length) return getSelection().collapse(walker.currentNode, offset)
      offset -= walker.currentNode.length
    }
  }

  isActive(format) {
    if (format.list) return this.#closest("ul, ol")?.localName === format.list
    if (format.block || format.name === "link") return Boolean(this.#closest(format.block ?? "a"))
    try { return document.queryCommandState(format.command) } catch { return false }
  }

  insertFragment(...nodes) {
    const range = this.#range()
    if (range) this.#insert(range, nodes)
    else this.root.append(...nodes), this.focus(), this.#changed()
  }

  // For autocomplete: the caret's text node up to the caret.
  textBeforeCaret() {
    const range = this.#range()
    return range?.collapsed && range.startContainer.nodeType === Node.TEXT_NODE ? range.startContainer.data.slice(0, range.startOffset) : ""
  }

  // Replaces the `length` characters before the caret with nodes.
  replaceBeforeCaret(length, ...nodes) {
    const range = this.#range()
    if (range?.startContainer.nodeType !== Node.TEXT_NODE) return
    range.setStart(range.startContainer, Math.max(0, range.startOffset - length))
    this.#insert(range, nodes)
  }

  #insert(range, nodes) {
    range.deleteContents()
    const fragment = document.createDocumentFragment()
    fragment.append(...nodes)
    const last = fragment.lastChild
    range.insertNode(fragment)
    if (last) getSelection().collapse(last.parentNode, [...last.parentNode.childNodes].indexOf(last) + 1)
    this.#changed()
  }

  #keydown(event) {
    if (event.isComposing || event.defaultPrevented) return
    const plain = !event.ctrlKey && !event.metaKey && !event.altKey
    if (event.key === "Escape" && this.cancel) this.cancel()
    else if (event.key === "Enter" && plain && event.shiftKey) document.execCommand("insertLineBreak")
    else if (event.key === "Enter" && plain && this.submit && !TOUCH.matches) this.submit()
    else return this.#shortcut(event)
    event.preventDefault()
  }

  #shortcut(event) {
    if (!(APPLE ? event.metaKey : event.ctrlKey) || event.altKey) return
    const key = (event.shiftKey ? "shift+" : "") + (/^Digit\d$/.test(event.code) ? event.code.slice(5) : event.key.toLowerCase())
    const format = FORMATS.find((format) => format.key === key)
    if (format || key === "u") event.preventDefault()   // Campfire has no underline
    if (format) this.run(format)
  }

  // Markdown typed: a closing "**", "_", "`" or "~~" turns its span into rich text; "- ",
  // "1. ", "> " or "```" at the start of a line turns the line into a list, quote or code block.
  #markdown(event) {
    if (event.inputType !== "insertText" || !event.data || this.disabled || this.#closest("pre, code")) return
    const range = this.#range(), node = range?.startContainer
    if (!range?.collapsed || node.nodeType !== Node.TEXT_NODE) return
    const before = this.textBeforeCaret()
    const lineStart = !node.previousSibling && (node.parentNode === this.root || (node.parentNode.localName === "div" && node.parentNode.parentNode === this.root))
    const block = lineStart && blockShortcut(before)
    if (block) return this.#startBlock(node, before.length, FORMATS.find((format) => format.name === block))
    const inline = inlineShortcut(before)
    if (!inline) return
    const after = document.createTextNode("\u200b")   // the caret's place after the span: typing goes on in plain text
    this.replaceBeforeCaret(inline.length, h(inline.tag, {}, inline.text), after)
    getSelection().collapse(after, 1)
  }

  #startBlock(node, length, format) {
    node.deleteData(0, length)   // the line's first text: the marks just typed
    const line = node.parentNode
    if (!node.length) node.remove()
    if (line !== this.root && !line.firstChild) line.append(h("br"))
    if (line !== this.root) getSelection().collapse(line, 0)
    this.run(format)
  }

  // Paste and drop: HTML rebuilt by the allow-list, plain text as text (or, written in
  // Markdown, as the rich text it means), files refused.
  #paste(event, data) {
    event.preventDefault()
    const html = data?.getData("text/html"), text = data?.getData("text/plain")
    const plainHTML = !html || !/<(?:strong|b|em|i|code|pre|ul|ol|blockquote|a|h[1-6]|del|s)\b/i.test(html)
    if (text && plainHTML && looksLikeMarkdown(text) && !this.#closest("pre")) this.insertFragment(new Sanitizer().fromHTML(markdownToHTML(text)))
    else if (html) this.insertFragment(new Sanitizer().fromHTML(html))
    else if (text && !document.execCommand("insertText", false, text)) this.insertFragment(text)
  }

  #link() {
    const current = this.#closest("a")
    const answer = prompt("Link address (empty removes the link)", current?.getAttribute("href") ?? "https://")?.trim()
    if (answer == null) return
    const href = safeHref(answer)
    if (!href) current?.replaceWith(...current.childNodes)
    else if (current) current.setAttribute("href", href)
    else if (this.#range()?.collapsed === false) document.execCommand("createLink", false, href)
    else this.insertFragment(h("a", { href }, href))
  }

  #closest(selector) {
    const node = this.#range()?.startContainer
    const found = (node?.nodeType === Node.ELEMENT_NODE ? node : node?.parentElement)?.closest(selector)
    return found !== this.root && this.root.contains(found) ? found : null
  }

  #range() {
    const selection = getSelection()
    const range = selection.rangeCount ? selection.getRangeAt(0) : null
    return range && this.root.contains(range.commonAncestorContainer) ? range : null
  }

  #changed() {
    this.root.dispatchEvent(new Event("input", { bubbles: true }))
  }
}

// A quote's content as lines (inline runs in <div>s), to unwrap it.
function asLines(block) {
  const lines = []
  let line = null
  for (const child of [...block.childNodes]) {
    if (/^(div|ul|ol|blockquote|pre|h1)$/.test(child.localName)) {
      lines.push(child)
      line = null
    } else {
      if (!line) lines.push(line = h("div"))
      line.append(child)
    }
  }
  return lines
}

// The formatting buttons: one tab stop, arrow keys move between them (WAI-ARIA toolbar).
class Toolbar {
  #editor
  #buttons

  constructor(editor) {
    this.#editor = editor
    const mod = APPLE ? "Meta+" : "Control+"
    this.#buttons = FORMATS.map((format, index) => {
      const keys = (mod + format.key).replace("shift", "Shift").replace(/\w$/, (key) => key.toUpperCase())
      const button = h("button", {
        type: "button", className: `toolbar__button toolbar__button--${format.name}`, tabIndex: index ? -1 : 0,
        title: `${format.label} (${keys.replace("Control", "Ctrl").replace("Meta+", "⌘")})`,
        "aria-label": format.label, "aria-pressed": "false", "aria-keyshortcuts": keys,
      }, format.text)
      button.addEventListener("mousedown", (event) => event.preventDefault())  // keep the editor's selection
      button.addEventListener("click", () => { editor.run(format); this.update() })
      return button
    })
    this.element = h("div", { className: "toolbar", role: "toolbar", "aria-label": "Text formatting", "aria-controls": editor.root.id }, ...this.#buttons)
    this.element.addEventListener("keydown", (event) => this.#move(event))
    document.addEventListener("selectionchange", () => { if (document.activeElement === editor.root) this.update() })
  }

  update() {
    FORMATS.forEach((format, index) => {
      this.#buttons[index].setAttribute("aria-pressed", String(this.#editor.isActive(format)))
      this.#buttons[index].disabled = this.#editor.disabled
    })
  }

  #move(event) {
    const count = this.#buttons.length, index = this.#buttons.indexOf(document.activeElement)
    const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: count - 1 }[event.key]
    if (index < 0 || next === undefined) return
    event.preventDefault()
    const target = this.#buttons[(next + count) % count]
    for (const button of this.#buttons) button.tabIndex = button === target ? 0 : -1
    target.focus()
  }
}
