// Notifications: the service worker registered (so its push and offline code run),
// Web Push turned on and off with the "Notifications" control, the number of unread
// rooms in the tab's title and icon, and the browser's own notification for a
// mention that arrives while the tab is hidden and push is off.

export const SUBSCRIPTIONS_URL = "/users/me/push_subscriptions"
export const SERVICE_WORKER_URL = "/service-worker.js"

export const STATE_LABELS = {
  on: "On",
  off: "Off",
  blocked: "Blocked by the browser: allow notifications for this site in its settings",
  unsupported: "Not supported in this browser",
  ios: "On iPhone and iPad, add Campfire to your Home Screen first (Share, then Add to Home Screen)",
}

// What the control shows. iOS has Web Push only for web apps added to the Home
// Screen; in a Safari tab it has no PushManager at all.
export function notificationState({ supported, ios = false, standalone = false, permission = "default", subscribed = false }) {
  if (!supported) return ios && !standalone ? "ios" : "unsupported"
  if (permission === "denied") return "blocked"
  return permission === "granted" && subscribed ? "on" : "off"
}

// "(3) All Talk · Campfire": the page's own title, after the count of unread rooms.
export function titleWithCount(title, count) {
  const base = title.replace(/^\(\d+\) /, "")
  return count > 0 ? `(${count}) ${base}` : base
}

// The page's vapid-public-key (the web-push gem's URL-safe base64, padded or not) as bytes.
export function base64UrlToBytes(text) {
  const base64 = text.replace(/=+$/, "").replace(/-/g, "+").replace(/_/g, "/")
  const binary = atob(base64 + "=".repeat((4 - base64.length % 4) % 4))
  return Uint8Array.from(binary, (character) => character.charCodeAt(0))
}

// Campfire's JSON for POST /users/me/push_subscriptions.
export function subscriptionPayload(subscription) {
  const { endpoint, keys: { p256dh, auth } = {} } = subscription.toJSON()
  return { push_subscription: { endpoint, p256dh_key: p256dh, auth_key: auth } }
}

function environment() {
  const ios = /iPad|iPhone|iPod/.test(navigator.userAgent) || (navigator.platform === "MacIntel" && navigator.maxTouchPoints > 1)
  return {
    supported: window.isSecureContext && "serviceWorker" in navigator && "PushManager" in window && "Notification" in window,
    ios,
    standalone: window.matchMedia("(display-mode: standalone)").matches || navigator.standalone === true,
    permission: "Notification" in window ? Notification.permission : "denied",
  }
}

export async function registerServiceWorker() {
  if (!("serviceWorker" in navigator) || !window.isSecureContext) return null
  try {
    return await navigator.serviceWorker.register(SERVICE_WORKER_URL, { scope: "/" })
  } catch {
    return null
  }
}

// The "Notifications" button and its state. Permission is asked only when the
// person clicks it, as browsers expect.
export class NotificationsControl {
  #root
  #button
  #status
  #registration = null
  #busy = false
  state = "off"

  constructor(root) {
    this.#root = root
    this.#button = root.querySelector("#notifications_toggle")
    this.#status = root.querySelector("#notifications_state")
    this.#button.addEventListener("click", () => this.toggle())
  }

  async start(registration) {
    this.#registration = registration
    this.#root.hidden = false
    await this.refresh()
  }

  get pushOn() { return this.state === "on" }

  async subscription() {
    try {
      return (await this.#registration?.pushManager?.getSubscription()) ?? null
    } catch {
      return null
    }
  }

  async refresh(note = "") {
    const found = environment()
    const state = notificationState({ ...found, supported: found.supported && this.#registration !== null, subscribed: Boolean(await this.subscription()) })
    this.state = state
    this.#root.dataset.state = state
    this.#button.setAttribute("aria-pressed", String(state === "on"))
    this.#button.disabled = state === "unsupported" || state === "ios"
    this.#status.textContent = note ? `${STATE_LABELS[state]} (${note})` : STATE_LABELS[state]
    return state
  }

  async toggle() {
    if (this.#busy) return
    this.#busy = true
    let note = ""
    try {
      const state = await this.refresh()
      if (state === "on") {
        await (await this.subscription())?.unsubscribe()
      } else if (state === "off") {
        const permission = Notification.permission === "default" ? await Notification.requestPermission() : Notification.permission
        if (permission === "granted") note = await this.#subscribe()
      }
    } catch (error) {
      note = error?.message || "it failed"
    } finally {
      this.#busy = false
    }
    await this.refresh(note)
  }

  // Subscribes and tells the server; a subscription the server refused is dropped again.
  async #subscribe() {
    const key = document.querySelector('meta[name="vapid-public-key"]')?.content
    if (!key) return "the server has no key"
    const registration = await navigator.serviceWorker.ready
    const subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: base64UrlToBytes(key) })
    let response = null
    try {
      response = await fetch(SUBSCRIPTIONS_URL, {
        method: "POST", headers: { "Content-Type": "application/json", Accept: "text/html" },
        body: JSON.stringify(subscriptionPayload(subscription)),
      })
    } catch {
      // the network failed: handled below
    }
    if (response?.ok) return ""
    await subscription.unsubscribe()
    return "the server refused it"
  }
}

// Signing out forgets this browser's push subscription, here and on the server
// (Campfire's sessions_controller.js): its endpoint goes with the form.
export function unsubscribeOnSignOut(form) {
  form?.addEventListener("submit", async (event) => {
    if (event.defaultPrevented) return
    event.preventDefault()
    try {
      const registration = await navigator.serviceWorker?.getRegistration("/")
      const subscription = await registration?.pushManager?.getSubscription()
      if (subscription) {
        form.elements.push_subscription_endpoint.value = subscription.endpoint
        await subscription.unsubscribe()
      }
    } catch {
      // Signing out never waits on push: the server drops a dead subscription on its own.
    }
    form.submit()
  })
}

// The tab's title and icon carry the number of unread rooms in the sidebar.
export class UnreadCount {
  #icon
  #iconHref
  #image = null
  count = -1

  constructor() {
    this.#icon = document.querySelector('link[rel="icon"]')
    this.#iconHref = this.#icon?.getAttribute("href")
    new MutationObserver(() => this.update()).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ["class"] })
    this.update()
  }

  update() {
    const count = document.querySelectorAll("#user_sidebar .sidebar__room--unread").length
    document.title = titleWithCount(document.title, count)
    if (count === this.count) return
    this.count = count
    this.#drawIcon(count)
  }

  #drawIcon(count) {
    if (!this.#icon || !this.#iconHref) return
    if (count === 0) return this.#icon.setAttribute("href", this.#iconHref)
    if (!this.#image) {
      this.#image = new Image()
      this.#image.addEventListener("load", () => this.#drawIcon(this.count))
      this.#image.src = this.#iconHref
      return
    }
    if (!this.#image.complete) return
    const canvas = document.createElement("canvas")
    canvas.width = canvas.height = 64
    const context = canvas.getContext("2d")
    context.drawImage(this.#image, 0, 0, 64, 64)
    context.fillStyle = "#d92d20"
    context.beginPath()
    context.arc(44, 20, 20, 0, 2 * Math.PI)
    context.fill()
    context.fillStyle = "#ffffff"
    context.font = "bold 28px system-ui, sans-serif"
    context.textAlign = "center"
    context.textBaseline = "middle"
    context.fillText(count > 9 ? "9+" : String(count), 44, 21)
    this.#icon.setAttribute("type", "image/png")
    this.#icon.setAttribute("href", canvas.toDataURL("image/png"))
  }
}

// The browser's own notification is for a mention of the reader that arrives while
// the tab is hidden and push is off (with push on, the service worker shows one).
export function notifiesInPage({ mentionsReader, hidden, pushOn, permission }) {
  return mentionsReader && hidden && !pushOn && permission === "granted"
}

export function notifyMentionsWhileHidden(list, control, roomName) {
  list.addEventListener("message:arrived", (event) => {
    const message = event.detail.message
    if (!notifiesInPage({
      mentionsReader: message.classList.contains("message--mentions-me"), hidden: document.hidden,
      pushOn: Boolean(control?.pushOn), permission: "Notification" in window ? Notification.permission : "denied",
    })) return
    const author = message.querySelector(".message__author")?.textContent.trim() ?? ""
    const text = message.querySelector(".message__body")?.textContent.trim() ?? ""
    const notification = new Notification(roomName || "Campfire", { body: author ? `${author}: ${text}` : text, tag: `message-${message.dataset.messageId}`, icon: "/account/logo" })
    notification.addEventListener("click", () => {
      window.focus()
      message.scrollIntoView({ block: "center" })
      notification.close()
    })
  })
}
