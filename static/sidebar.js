// The live sidebar (unread and read marks, refreshes) and who is present in the room.

import { h, fragment, fetchText } from "./dom.js"

export const PRESENCE_VISIBILITY_DELAY_MS = 5000   // present/absent 5 s after a visibility change, as in Campfire
export const PRESENCE_REFRESH_EVERY_MS = 50 * 1000 // the server counts a tab silent longer than 60 s as gone

export class Sidebar {
  #currentRoomId

  constructor(cable, currentRoomId) {
    this.#currentRoomId = currentRoomId ? String(currentRoomId) : null
    cable.subscribe({ channel: "UnreadRoomsChannel" }, { received: (data) => this.markUnread(data.roomId) })
    cable.subscribe({ channel: "ReadRoomsChannel" }, { received: (data) => this.markRead(data.room_id) })
    cable.subscribe({ channel: "SidebarChannel" }, { received: (data) => { if (data.action === "refresh") this.refresh() } })
    document.addEventListener("visibilitychange", () => { if (!document.hidden) this.markRead(this.#currentRoomId) })
    this.#decorate()
  }

  get element() { return document.getElementById("user_sidebar") }

  markUnread(roomId) {
    if (String(roomId) === this.#currentRoomId && !document.hidden) return
    this.#setUnread(this.#link(roomId), true)
  }

  markRead(roomId) { this.#setUnread(this.#link(roomId), false) }

  async refresh() {
    const html = await fetchText("/users/me/sidebar")
    const fresh = html && fragment(html).getElementById("user_sidebar")
    const current = this.element
    if (!fresh || !current) return
    const focused = document.activeElement?.closest?.("#user_sidebar [data-room-id]")?.dataset.roomId
    fresh.scrollTop = current.scrollTop
    current.replaceWith(fresh)
    this.#decorate()
    if (focused) this.#link(focused)?.focus()
  }

  #link(roomId) {
    return roomId == null ? null : this.element?.querySelector(`.sidebar__room[data-room-id="${Number(roomId)}"]`)
  }

  // The current room stays marked; unread rooms say so to screen readers too.
  #decorate() {
    const current = this.#link(this.#currentRoomId)
    if (current) {
      current.classList.add("sidebar__room--current")
      current.setAttribute("aria-current", "page")
      if (!document.hidden) current.classList.remove("sidebar__room--unread")
    }
    for (const link of this.element?.querySelectorAll(".sidebar__room") ?? []) {
      this.#setUnread(link, link.classList.contains("sidebar__room--unread"))
    }
  }

  #setUnread(link, unread) {
    if (!link) return
    link.classList.toggle("sidebar__room--unread", unread)
    const note = link.querySelector(".sidebar__unread")
    if (unread && !note) link.append(h("span", { className: "sidebar__unread visually-hidden" }, " (unread)"))
    if (!unread) note?.remove()
  }
}

// PresenceChannel: present while the tab is visible, absent 5 s after it's hidden,
// a refresh every 50 s, and the people present shown in the room's header.
export class Presence {
  #subscription
  #present = false
  #timer = null
  #line

  constructor(cable, roomId, header) {
    this.#line = h("div", { className: "room__presence", hidden: true })
    header.querySelector(".room__name")?.after(this.#line)
    this.#subscription = cable.subscribe({ channel: "PresenceChannel", room_id: Number(roomId) }, {
      connected: () => this.#connected(),
      received: (data) => { if (data.action === "present") this.show(data.users ?? []) },
    })
    cable.addEventListener("disconnected", () => { this.#present = false })
    document.addEventListener("visibilitychange", () => this.#visibilityChanged())
    setInterval(() => { if (this.#subscription.confirmed) this.#subscription.perform("refresh") }, PRESENCE_REFRESH_EVERY_MS)
  }

  show(users) {
    const names = users.map((user) => user.name).join(", ")
    this.#line.replaceChildren(h("span", { className: "visually-hidden" }, `Present: ${names}`), ...users.map((user) =>
      h("img", { className: "avatar", src: user.avatar_url ?? `/users/${Number(user.id)}/avatar`, alt: "", width: 24, height: 24, title: user.name, "aria-hidden": "true" })))
    this.#line.dataset.count = `${users.length} here`   // what a phone shows instead of the faces
    this.#line.hidden = users.length === 0
  }

  // Subscribing counts us present; a hidden tab says otherwise soon after.
  #connected() {
    this.#present = true
    this.#visibilityChanged()
  }

  #visibilityChanged() {
    clearTimeout(this.#timer)
    this.#timer = setTimeout(() => {
      const visible = !document.hidden
      if (!this.#subscription.confirmed || visible === this.#present) return
      this.#present = visible
      this.#subscription.perform(visible ? "present" : "absent")
    }, PRESENCE_VISIBILITY_DELAY_MS)
  }
}
