// Campfire's service worker (served at /service-worker.js for the whole site).
//   push               show the notification the server sent; set the app badge
//   notificationclick  focus an open Campfire window on that room, or open one
//   fetch              navigations go to the network; only when it can't be
//                      reached is the small offline page shown instead.
// Chat pages and data are never cached: only the offline page and the two
// files it needs, which are fetched again whenever the worker is updated.

const CACHE_NAME = "campfire-offline-v1"
const OFFLINE_PAGE = "/static/offline.html"
const OFFLINE_ASSETS = [OFFLINE_PAGE, "/static/campfire.css", "/static/campfire-icon.svg"]

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE_NAME)
    await cache.addAll(OFFLINE_ASSETS.map((path) => new Request(path, { cache: "reload" })))
    await self.skipWaiting()
  })())
})

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name !== CACHE_NAME) await caches.delete(name)
    }
    if (self.registration.navigationPreload) await self.registration.navigationPreload.enable()
    await self.clients.claim()
  })())
})

self.addEventListener("fetch", (event) => {
  const request = event.request
  if (request.method !== "GET") return
  if (request.mode === "navigate") {
    event.respondWith(networkOrOfflinePage(event))
    return
  }
  const url = new URL(request.url)
  // Only the offline page's own stylesheet and icon (no ?v=, which chat pages use).
  if (url.origin === self.location.origin && !url.search && OFFLINE_ASSETS.includes(url.pathname)) {
    event.respondWith(fetch(request).catch(() => cachedOrError(url.pathname)))
  }
})

async function networkOrOfflinePage(event) {
  try {
    const preloaded = await event.preloadResponse
    return preloaded || await fetch(event.request)
  } catch {
    return cachedOrError(OFFLINE_PAGE)
  }
}

async function cachedOrError(path) {
  const cache = await caches.open(CACHE_NAME)
  return (await cache.match(path)) || Response.error()
}

// Push: {"title":T,"options":{"body":B,"icon":"/account/logo","data":{"path":"/rooms/1","badge":3}}}
self.addEventListener("push", (event) => {
  const payload = readPayload(event)
  if (!payload) return
  const options = { icon: "/static/icon-192.png", ...(payload.options || {}) }
  options.data = options.data || {}
  event.waitUntil(Promise.all([
    self.registration.showNotification(payload.title || "Campfire", options),
    updateBadge(options.data.badge),
  ]))
})

function readPayload(event) {
  if (!event.data) return null
  try {
    const payload = event.data.json()
    return payload && typeof payload === "object" ? payload : null
  } catch {
    return { title: "Campfire", options: { body: event.data.text() } }
  }
}

async function updateBadge(count) {
  if (typeof count !== "number" || !("setAppBadge" in self.navigator)) return
  try {
    if (count > 0) await self.navigator.setAppBadge(count)
    else await self.navigator.clearAppBadge()
  } catch {
    // Badging is a nicety: a refused badge never blocks the notification.
  }
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close()
  const target = sameOriginUrl(event.notification.data && event.notification.data.path)
  event.waitUntil(focusOrOpen(target))
})

function sameOriginUrl(path) {
  const fallback = new URL("/", self.location.origin)
  if (typeof path !== "string" || !path.startsWith("/") || path.startsWith("//")) return fallback
  const url = new URL(path, self.location.origin)
  return url.origin === self.location.origin ? url : fallback
}

async function focusOrOpen(url) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true })
  const onRoom = windows.find((client) => new URL(client.url).pathname === url.pathname)
  if (onRoom) return onRoom.focus()
  const open = windows.find((client) => new URL(client.url).origin === url.origin)
  if (open) {
    try {
      const navigated = await open.navigate(url.href)
      if (navigated) return navigated.focus()
    } catch {
      // An uncontrolled window can't be navigated from here: open a new one.
    }
  }
  return self.clients.openWindow(url.href)
}
