// Every piece of HTML that reaches an editor (paste, drop, drafts, messages to
// edit) and every body we send is rebuilt node by node from an allow-list of
// Campfire's Trix tags. No markup is copied, and no attribute but a checked href.

import { h } from "./dom.js"

export const MENTION_TYPE = "application/vnd.campfire.mention"
const MAX_DEPTH = 40

// Source tag → the tag we write.
const TAGS = {
  strong: "strong", b: "strong", em: "em", i: "em", del: "del", s: "del", strike: "del",
  a: "a", blockquote: "blockquote", pre: "pre", code: "code", ul: "ul", ol: "ol", li: "li",
  h1: "h1", h2: "h1", h3: "h1", h4: "h1", h5: "h1", h6: "h1", div: "div", p: "div", br: "br", cite: "cite",
}
// Block elements we don't keep become plain blocks; their text stays.
const AS_BLOCK = new Set(["section", "article", "header", "footer", "aside", "main", "nav", "figure",
  "figcaption", "address", "dl", "dt", "dd", "tr", "table", "hr", "details", "summary"])
// Nothing inside these survives.
const DROPPED = new Set(["script", "style", "template", "iframe", "object", "embed", "img", "picture", "svg",
  "math", "video", "audio", "canvas", "noscript", "title", "head", "button", "input", "select", "textarea"])
const BLOCKS = new Set(["div", "blockquote", "pre", "ul", "ol", "li", "h1", "cite"])
const SAFE_SCHEMES = /^(?:https?|mailto)$/i
const SGID = /^[\w+/=-]{1,1000}$/

export function safeHref(href) {
  // Browsers ignore tabs and newlines anywhere and controls and spaces at the ends; so do we.
  const url = String(href ?? "").replace(/[\t\n\r]/g, "").replace(/^[\u0000-\u0020]+|[\u0000-\u0020]+$/g, "")
  const scheme = /^([^/?#]*?):/.exec(url.replace(/[\u0000-\u0020\u007f]/g, ""))
  return url && (!scheme || SAFE_SCHEMES.test(scheme[1])) ? url : null
}

// A mention as the editors show it: not editable, sent as an <action-text-attachment>.
export const mentionChip = (sgid, name) =>
  h("span", { className: "mention-chip", contentEditable: "false", "data-sgid": sgid }, "@" + String(name).replace(/^@/, ""))

export class Sanitizer {
  // mode "editor": mentions become chips; "submit": chips become <action-text-attachment>.
  constructor({ mode = "editor", mentionName = () => "mention" } = {}) {
    this.mode = mode
    this.mentionName = mentionName
    this.mentions = 0
  }

  // Untrusted HTML, parsed in an inert document (no scripts run, no images load), rebuilt.
  fromHTML(html) {
    return this.fromNode(new DOMParser().parseFromString(defuse(String(html)), "text/html").body)
  }

  fromNode(root) {
    const fragment = document.createDocumentFragment()
    this.#children(root, fragment, 0)
    return fragment
  }

  #children(source, target, depth) {
    for (const child of source.childNodes) this.#node(child, target, depth)
  }

  #node(node, target, depth) {
    if (node.nodeType === Node.TEXT_NODE) return target.append(this.mode === "submit" ? plainSpaces(node.data) : node.data)
    if (node.nodeType !== Node.ELEMENT_NODE) return
    const name = node.localName
    if (DROPPED.has(name)) return
    if (depth > MAX_DEPTH) return target.append(node.textContent)
    const mention = this.#mention(node)
    if (mention) return target.append(mention)
    const tag = TAGS[name] ?? (AS_BLOCK.has(name) ? "div" : null)
    if (!tag) return this.#children(node, target, depth + 1)  // unknown: keep what's inside
    if (tag === "a" && !safeHref(node.getAttribute("href"))) return this.#children(node, target, depth + 1)
    const element = document.createElement(tag)
    if (tag === "a") element.setAttribute("href", safeHref(node.getAttribute("href")))
    if (tag !== "br") this.#children(node, element, depth + 1)
    target.append(element)
  }

  #mention(node) {
    const editorChip = node.localName === "span" && node.classList.contains("mention-chip")
    const attachment = node.localName === "action-text-attachment"
    if (editorChip || attachment) {
      const sgid = node.getAttribute(editorChip ? "data-sgid" : "sgid") ?? ""
      if (attachment && node.getAttribute("content-type") !== MENTION_TYPE) return null
      if (!SGID.test(sgid)) return document.createTextNode(node.textContent)
      const name = editorChip ? node.textContent : this.mentionName(sgid, this.mentions++)
      return this.mode === "submit" ? h("action-text-attachment", { sgid, "content-type": MENTION_TYPE }) : mentionChip(sgid, name)
    }
    // Copied from a rendered message: "@Name", which the server links again.
    if (node.classList?.contains("mention")) return document.createTextNode("@" + node.textContent.trim())
    return null
  }
}

// Editors write a typed space as U+00A0 at the end of a line; between words it's a space.
// A zero-width space only holds the caret after a Markdown shortcut's span: it isn't sent.
const plainSpaces = (text) => text.replace(/\u200b/g, "").replace(/(?<=^|\S)\u00a0(?=\S)/g, " ")

// Renames on* attributes before parsing. Never run anyway (the document is inert and
// nothing is copied from it), but a parser meeting them reports a CSP violation.
const TAG = /<[a-z][^\s/>]*(?:[\s/]+[^\s"'>/=]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>]*))?)*[\s/]*>/gi
const HANDLER = /([\s/"'])on(?=[^\s"'>/=]*\s*(?:=|[\s/>]))/gi
export const defuse = (html) => html.replace(TAG, (tag) => tag.replace(HANDLER, "$1data-was-on"))

// The editor's content as the HTML we post: Trix's shape, top-level text in <div>s.
export function editorToHTML(root) {
  const fragment = new Sanitizer({ mode: "submit" }).fromNode(root)
  const holder = h("div")
  let line = null
  for (const node of [...fragment.childNodes]) {
    if (node.nodeType === Node.ELEMENT_NODE && BLOCKS.has(node.localName)) {
      holder.append(node)
      line = null
    } else {
      line ??= holder.appendChild(h("div"))
      line.append(node)
    }
  }
  trimEmptyEdges(holder)
  return holder.innerHTML
}

export function isBlank(root) {
  return !root.textContent.replace(/[\s\u200b]/g, "") && !root.querySelector(".mention-chip")
}

function trimEmptyEdges(holder) {
  const empty = (node) => node.nodeType === Node.ELEMENT_NODE && !node.textContent.trim() &&
    !node.querySelector("action-text-attachment")
  while (holder.firstChild && empty(holder.firstChild)) holder.firstChild.remove()
  while (holder.lastChild && empty(holder.lastChild)) holder.lastChild.remove()
  const last = holder.lastElementChild
  while (last?.lastChild?.localName === "br") last.lastChild.remove()
}
