// Files from the composer: the paperclip, drag-and-drop onto the room, and paste.
// Each file becomes a message of its own, sent one after another in the order
// given, as Campfire's composer does. Its pending copy shows a progress bar and
// Cancel; a failed upload keeps the file with Retry and Discard.

import { parseMessages } from "./messages.js"
import { retryable, uuid } from "./composer.js"
import { h } from "./dom.js"

export const MAX_FILES_AT_ONCE = 100   // a bigger drop is refused whole, with a message: nothing is half sent
export const PREVIEW_MAX_WIDTH = 1200  // Campfire's thumbnail box; the server refuses a larger preview
export const PREVIEW_MAX_HEIGHT = 800
export const PREVIEW_WAIT_MS = 5000    // a video that shows no frame by then is sent without a poster

// The size that fits width×height into the thumbnail box, proportions kept (never enlarged).
export function previewSize(width, height) {
  const scale = Math.min(1, PREVIEW_MAX_WIDTH / width, PREVIEW_MAX_HEIGHT / height)
  return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))]
}

async function drawPreview(source, width, height) {
  const [w, h] = previewSize(width, height)
  const canvas = Object.assign(document.createElement("canvas"), { width: w, height: h })
  canvas.getContext("2d").drawImage(source, 0, 0, w, h)
  return new Promise((resolve) => canvas.toBlob(resolve, "image/webp", 0.85))
}

// A video's first frame, for its poster.
function videoFrame(file) {
  return new Promise((resolve) => {
    const video = Object.assign(document.createElement("video"), { muted: true, preload: "auto", src: URL.createObjectURL(file) })
    const done = (value) => { clearTimeout(timer); URL.revokeObjectURL(video.src); resolve(value) }
    const timer = setTimeout(() => done(null), PREVIEW_WAIT_MS)
    video.addEventListener("loadeddata", () => { video.currentTime = Math.min(0.1, video.duration / 2 || 0) }, { once: true })
    video.addEventListener("seeked", async () => done(await drawPreview(video, video.videoWidth, video.videoHeight)), { once: true })
    video.addEventListener("error", () => done(null), { once: true })
  })
}

// What the browser sends beside an image (a copy no larger than the thumbnail box) or a
// video (a poster frame): the server shows it in the room instead of the original. null
// when the file can't be drawn here (the room then shows the original, scaled).
export async function makePreview(file) {
  try {
    if (file.type.startsWith("video/")) return await videoFrame(file)
    if (!/^image\/(png|jpeg|gif|webp)$/.test(file.type) || file.type === "image/gif") return null  // a GIF keeps moving
    const bitmap = await createImageBitmap(file)
    const { width, height } = bitmap
    const preview = width > PREVIEW_MAX_WIDTH || height > PREVIEW_MAX_HEIGHT ? await drawPreview(bitmap, width, height) : null
    bitmap.close()
    return preview
  } catch {
    return null
  }
}

// A size as people read it, in steps of 1,024 (the server writes the same).
export function formatBytes(count) {
  if (count < 1024) return count === 1 ? "1 byte" : `${count} bytes`
  for (const unit of ["KB", "MB", "GB", "TB"]) {
    count /= 1024
    if (count < 1024 || unit === "TB") return `${count.toFixed(1).replace(/\.0$/, "")} ${unit}`
  }
}

// Why an upload failed, in a few words; `tooLarge` names the limit.
export function uploadFailureText(status, tooLarge = "") {
  const reasons = { 0: "no connection", 400: "the upload was cut short", 403: "not allowed here", 404: "not allowed here",
    413: tooLarge ? `larger than ${tooLarge}` : "too large", 422: "the file can't be used" }
  return `Not sent: ${reasons[status ?? 0] ?? "the server had a problem"}.`
}

// The files a drag or a paste carries (none for text or links).
export const filesOf = (transfer) => [...(transfer?.files ?? [])]

export class Uploads {
  #form
  #list
  #stream
  #scroller
  #queue = []
  #sending = false
  #uploads = new WeakMap()   // pending message → { file, clientId, request }
  #notice

  constructor(form, { list, stream, scroller, dropTarget, pasteTarget }) {
    this.#form = form
    this.#list = list
    this.#stream = stream
    this.#scroller = scroller
    this.#notice = h("p", { className: "composer__notice", role: "status", hidden: true })
    form.after(this.#notice)
    const input = form.querySelector("input[type=file]")
    input?.addEventListener("change", () => { this.add([...input.files]); input.value = "" })
    pasteTarget?.addEventListener("paste", (event) => {
      const files = filesOf(event.clipboardData)
      if (!files.length) return
      event.preventDefault()
      this.add(files)
    })
    if (dropTarget) this.#acceptDrops(dropTarget)
    list.element.addEventListener("click", (event) => this.#clicked(event))
  }

  // The server's limit, from the form (read at each send, so it is never stale).
  get maxBytes() { return Number(this.#form.dataset.maxUploadBytes) || Infinity }
  get maxText() { return this.#form.dataset.maxUploadText ?? "" }

  add(files) {
    this.#say("")
    if (!files.length) return []
    if (files.length > MAX_FILES_AT_ONCE) {
      this.#say(`You can send at most ${MAX_FILES_AT_ONCE} files at once; none of these ${files.length} was sent.`)
      return []
    }
    const pending = files.map((file) => this.#pendingFor(file))
    this.#queue.push(...pending)
    this.#next()
    return pending
  }

  #say(text) {
    this.#notice.textContent = text
    this.#notice.hidden = !text
  }

  #acceptDrops(target) {
    let depth = 0
    const carriesFiles = (event) => event.dataTransfer?.types.includes("Files")
    target.addEventListener("dragenter", (event) => {
      if (!carriesFiles(event)) return
      depth++
      target.classList.add("room--dropping")
    })
    target.addEventListener("dragleave", () => {
      if (--depth <= 0) { depth = 0; target.classList.remove("room--dropping") }
    })
    target.addEventListener("dragover", (event) => {
      if (!carriesFiles(event)) return
      event.preventDefault()
      event.dataTransfer.dropEffect = "copy"
    })
    target.addEventListener("drop", (event) => {
      depth = 0
      target.classList.remove("room--dropping")
      const files = filesOf(event.dataTransfer)
      if (!files.length) return
      event.preventDefault()
      this.add(files)
    })
  }

  #pendingFor(file) {
    const clientId = uuid()
    const body = h("div", { className: "upload" },
      h("span", { className: "upload__name" }, file.name || "file"), " ",
      h("span", { className: "upload__size" }, formatBytes(file.size)),
      h("progress", { className: "upload__progress", max: 1, value: 0, "aria-label": `Uploading ${file.name}` }),
      h("button", { type: "button", className: "button button--small", "data-action": "cancel-upload" }, "Cancel"))
    const pending = this.#scroller.change(() => this.#list.addPending(clientId, body), { follow: true })
    pending.classList.add("message--upload")
    pending.querySelector(".message__status").textContent = "Waiting…"
    this.#uploads.set(pending, { file, clientId, request: null })
    return pending
  }

  async #next() {
    if (this.#sending) return
    this.#sending = true
    while (this.#queue.length) {
      const pending = this.#queue.shift()
      if (pending.isConnected) await this.#send(pending)
    }
    this.#sending = false
  }

  async #send(pending) {
    const upload = this.#uploads.get(pending)
    if (upload.file.size > this.maxBytes) return this.#failed(pending, 413)
    const progress = pending.querySelector(".upload__progress")
    pending.querySelector(".message__status").textContent = "Uploading…"
    if (upload.preview === undefined) upload.preview = await makePreview(upload.file)
    if (!pending.isConnected) return
    const form = new FormData()
    form.append("message[client_message_id]", upload.clientId)
    form.append("message[attachment]", upload.file, upload.file.name || "file")
    if (upload.preview) form.append("message[preview]", upload.preview, "preview.webp")
    return new Promise((resolve) => {
      const request = upload.request = new XMLHttpRequest()
      request.open("POST", this.#form.action)
      request.setRequestHeader("Accept", "text/html")
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) progress.value = event.loaded / event.total
      })
      request.addEventListener("load", () => {
        upload.request = null
        if (request.status >= 200 && request.status < 300) {
          const [message] = parseMessages(request.responseText)
          if (message) this.#stream.add(message, { own: true })
        } else {
          this.#failed(pending, request.status)
        }
        resolve()
      })
      request.addEventListener("error", () => { upload.request = null; this.#failed(pending, 0); resolve() })
      request.addEventListener("abort", () => { upload.request = null; resolve() })
      request.send(form)
    })
  }

  #failed(pending, status) {
    if (!pending.isConnected) return
    pending.classList.add("message--failed")
    pending.querySelector(".message__status").textContent = uploadFailureText(status, this.maxText)
    pending.querySelector(".upload__progress").hidden = true
    pending.querySelector("[data-action=cancel-upload]").hidden = true
    const choices = h("span", { className: "message__retry" },
      retryable(status) ? h("button", { type: "button", className: "button button--small", "data-action": "retry-upload" }, "Retry") : "",
      h("button", { type: "button", className: "button button--small", "data-action": "discard-upload" }, "Discard"))
    pending.querySelector(".message__meta").append(" ", choices)
  }

  #clicked(event) {
    const button = event.target.closest("[data-action=cancel-upload], [data-action=retry-upload], [data-action=discard-upload]")
    const pending = button?.closest(".message--upload")
    const upload = pending && this.#uploads.get(pending)
    if (!upload) return
    const action = button.dataset.action
    if (action !== "retry-upload") {
      upload.request?.abort()
      return pending.remove()
    }
    pending.classList.remove("message--failed")
    button.parentElement.remove()
    pending.querySelector(".upload__progress").hidden = false
    pending.querySelector("[data-action=cancel-upload]").hidden = false
    pending.querySelector(".message__status").textContent = "Waiting…"
    this.#queue.push(pending)   // the same client_message_id: the server keeps one message
    this.#next()
  }
}

// Images in messages open full size in a viewer: arrow keys or a swipe go to the
// previous or next image of the room, Escape (or the close button) closes it.
export class Lightbox {
  #dialog
  #image
  #caption
  #links = []
  #index = 0

  constructor(container) {
    this.#image = h("img", { className: "lightbox__image", alt: "" })
    this.#caption = h("p", { className: "lightbox__caption" })
    const close = h("button", { type: "button", className: "button lightbox__close", "aria-label": "Close" }, "×")
    this.#dialog = h("dialog", { className: "lightbox", "aria-label": "Image viewer" }, close, this.#image, this.#caption)
    document.body.append(this.#dialog)
    close.addEventListener("click", () => this.#dialog.close())
    this.#dialog.addEventListener("click", (event) => { if (event.target === this.#dialog) this.#dialog.close() })
    this.#dialog.addEventListener("keydown", (event) => {
      if (event.key === "ArrowLeft") this.#show(this.#index - 1)
      else if (event.key === "ArrowRight") this.#show(this.#index + 1)
    })
    let startX = null
    this.#dialog.addEventListener("pointerdown", (event) => { startX = event.clientX })
    this.#dialog.addEventListener("pointerup", (event) => {
      const moved = startX === null ? 0 : event.clientX - startX
      startX = null
      if (Math.abs(moved) > 50) this.#show(this.#index + (moved < 0 ? 1 : -1))
    })
    container.addEventListener("click", (event) => {
      const link = event.target.closest("a[data-action=view-attachment]")
      if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return
      event.preventDefault()
      this.#links = [...container.querySelectorAll("a[data-action=view-attachment]")]
      this.#show(this.#links.indexOf(link))
      if (!this.#dialog.open) this.#dialog.showModal()
    })
  }

  get open() { return this.#dialog.open }

  #show(index) {
    if (index < 0 || index >= this.#links.length) return
    this.#index = index
    const link = this.#links[index]
    this.#image.src = link.href
    this.#image.alt = link.dataset.filename ?? ""
    this.#caption.textContent = link.dataset.filename ?? ""
  }
}

// A picture chosen for an avatar (or a logo) is cropped to its middle square and
// scaled to the size the input names (data-square-image), in the browser, before
// the form sends it: the server only checks that it is an image.
export async function squareImage(file, size) {
  const bitmap = await createImageBitmap(file)
  const side = Math.min(bitmap.width, bitmap.height)
  const canvas = h("canvas", { width: size, height: size })
  canvas.getContext("2d").drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side, 0, 0, size, size)
  bitmap.close()
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/webp", 0.9))
  const type = blob?.type || "image/png"
  const name = (file.name.replace(/\.[^.]*$/, "") || "avatar") + (type === "image/webp" ? ".webp" : ".png")
  return new File([blob ?? await new Promise((resolve) => canvas.toBlob(resolve))], name, { type })
}

export function squareImageInputs(root = document) {
  for (const input of root.querySelectorAll("input[type=file][data-square-image]")) {
    const size = Number(input.dataset.squareImage)
    const submit = input.form?.querySelector("button[type=submit]")
    const preview = h("img", { className: "field__preview", alt: "", width: 96, height: 96, hidden: true })
    input.after(preview)
    input.addEventListener("change", async () => {
      const [file] = input.files
      if (!file || input.dataset.squared === file.name) return
      if (submit) submit.disabled = true
      try {
        const square = await squareImage(file, size)
        const files = new DataTransfer()
        files.items.add(square)
        input.dataset.squared = square.name
        input.files = files.files
        preview.src = URL.createObjectURL(square)
        preview.hidden = false
      } catch {
        input.setCustomValidity("This file is not an image that can be read.")
        input.reportValidity()
      } finally {
        if (submit) submit.disabled = false
      }
    })
    input.addEventListener("input", () => input.setCustomValidity(""))
  }
}
