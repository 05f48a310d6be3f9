// Markdown, as people used to Slack and Zulip type it by habit: shortcuts that turn into
// the rich text they mean as you type, and a pasted Markdown text converted the same way.
// No DOM here: editor.js applies what these find.

// Inline marks, found when their closing delimiter is typed: the text before the caret
// ends with the whole span. The opening delimiter must start a word, so snake_case and
// 2*3*4 stay as they are; bold (**) is looked for before italic (*).
const WORD_START = String.raw`(?:^|(?<=[\s(\u00a0]))`
const span = (delimiter) => {
  const mark = delimiter.replace(/\*/g, "\\*"), char = delimiter[0] === "*" ? "\\*" : delimiter[0]
  const edge = `[^\\s${char}]`
  return new RegExp(`${WORD_START}${mark}(${edge}|${edge}[^${char}]*${edge})${mark}$`, "u")
}
const INLINE = [
  { tag: "strong", pattern: span("**") },
  { tag: "strong", pattern: span("__") },
  { tag: "del", pattern: span("~~") },
  { tag: "em", pattern: span("*") },
  { tag: "em", pattern: span("_") },
  { tag: "code", pattern: new RegExp(`(?:^|(?<=[^\`]))\`([^\`]+)\`$`, "u") },
]

// { tag, length, text }: the last `length` characters before the caret are a span
// of `tag` holding `text`; null when they aren't.
export function inlineShortcut(before) {
  for (const { tag, pattern } of INLINE) {
    const match = pattern.exec(before)
    if (match && !(tag !== "code" && /^\s|\s$/.test(match[1]))) return { tag, length: match[0].length, text: match[1] }
  }
  return null
}

// What the start of a line turns into once the space after it is typed ("- ", "1. ", "> ")
// or, for a code block, once its third backtick is: the name of the editor's format.
export function blockShortcut(line) {
  const text = line.replace(/\u00a0/g, " ")
  if (/^[-*+] $/.test(text)) return "bullets"
  if (/^1[.)] $/.test(text)) return "numbers"
  if (/^> $/.test(text)) return "quote"
  if (text === "```") return "code"
  return null
}

// Whether pasted plain text is written in Markdown (a list, a quote, a fence, a heading,
// or an inline mark): only then is it converted.
export function looksLikeMarkdown(text) {
  return /^\s{0,3}(?:[-*+] \S|\d+[.)] \S|> ?\S|#{1,6} \S|```)/m.test(text) ||
    /\*\*\S(?:.*?\S)?\*\*|__\S(?:.*?\S)?__|~~\S(?:.*?\S)?~~|`[^`\n]+`|\[[^\]\n]+\]\([^)\s]+\)|(?:^|\s)[*_]\S(?:[^*_\n]*\S)?[*_](?=\s|[.,;:!?]|$)/m.test(text)
}

const escapeHTML = (text) => text.replace(/[&<>"]/g, (char) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[char])

// One line's inline marks as HTML (the text escaped first; code spans keep their marks).
export function inlineHTML(text) {
  const codes = []
  let html = escapeHTML(text).replace(/`([^`]+)`/g, (_, code) => `\u0000${codes.push(code) - 1}\u0000`)
  html = html
    .replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, '<a href="$2">$1</a>')
    .replace(/(^|[\s(])(\*\*|__)(\S(?:.*?\S)?)\2(?=$|[\s).,;:!?])/g, "$1<strong>$3</strong>")
    .replace(/(^|[\s(])~~(\S(?:.*?\S)?)~~(?=$|[\s).,;:!?])/g, "$1<del>$2</del>")
    .replace(/(^|[\s(>])([*_])(\S(?:.*?\S)?)\2(?=$|[\s).,;:!?<])/g, "$1<em>$3</em>")
  return html.replace(/\u0000(\d+)\u0000/g, (_, index) => `<code>${codes[index]}</code>`)
}

// A Markdown text as the editor's HTML: fenced code, quotes, lists, headings, lines.
export function markdownToHTML(text) {
  const lines = text.replace(/\r\n?/g, "\n").split("\n")
  const out = []
  for (let index = 0; index < lines.length;) {
    const line = lines[index]
    if (/^\s{0,3}```/.test(line)) {
      const code = []
      for (index++; index < lines.length && !/^\s{0,3}```\s*$/.test(lines[index]); index++) code.push(lines[index])
      index++
      out.push(`<pre>${escapeHTML(code.join("\n"))}</pre>`)
    } else if (/^\s{0,3}>/.test(line)) {
      const quoted = []
      for (; index < lines.length && /^\s{0,3}>/.test(lines[index]); index++) quoted.push(lines[index].replace(/^\s{0,3}> ?/, ""))
      out.push(`<blockquote>${quoted.map(inlineHTML).join("<br>")}</blockquote>`)
    } else if (/^\s{0,3}(?:[-*+]|\d+[.)]) +\S/.test(line)) {
      const ordered = /^\s{0,3}\d/.test(line), item = ordered ? /^\s{0,3}\d+[.)] +/ : /^\s{0,3}[-*+] +/
      const items = []
      for (; index < lines.length && item.test(lines[index]); index++) items.push(lines[index].replace(item, ""))
      const tag = ordered ? "ol" : "ul"
      out.push(`<${tag}>${items.map((each) => `<li>${inlineHTML(each)}</li>`).join("")}</${tag}>`)
    } else if (/^#{1,6} +\S/.test(line)) {
      out.push(`<h1>${inlineHTML(line.replace(/^#{1,6} +/, ""))}</h1>`)
      index++
    } else {
      out.push(line.trim() ? `<div>${inlineHTML(line)}</div>` : "<div><br></div>")
      index++
    }
  }
  return out.join("")
}
