// Small DOM and HTTP helpers the feature modules share.

// h("button", { type: "button", "aria-label": "Bold" }, "B"): properties where the element has them, else attributes.
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag)
  for (const [name, value] of Object.entries(attributes)) {
    if (value == null || value === false) continue
    if (name in element && !name.includes("-")) element[name] = value
    else element.setAttribute(name, value === true ? "" : value)
  }
  element.append(...children)
  return element
}

// The server's own rendering (already sanitized there) as nodes.
export function fragment(html) {
  const template = document.createElement("template")
  template.innerHTML = html
  return template.content
}

// A same-origin form POST (Rails' _method for the other verbs); null when the network fails.
export async function send(url, fields = {}, method = "post") {
  const body = new URLSearchParams(method === "post" ? fields : { _method: method, ...fields })
  try {
    return await fetch(url, { method: "POST", body, headers: { Accept: "text/html" } })
  } catch {
    return null
  }
}

// GET a fragment: its text, "" for 204 No Content, null on errors and when the network fails.
export async function fetchText(url) {
  try {
    const response = await fetch(url, { headers: { Accept: "text/html" } })
    return response.status === 204 ? "" : response.ok ? await response.text() : null
  } catch {
    return null
  }
}
