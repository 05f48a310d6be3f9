// Campfire in the browser: the entry point. Each feature lives in its own module;
// this file finds the page's parts and wires them together.

import { Cable, showConnection } from "./cable.js"
import { MessageList, RoomStream, decorateMessages, muteToggle } from "./messages.js"
import { MessageScroller } from "./scroller.js"
import { Composer } from "./composer.js"
import { Uploads, Lightbox, squareImageInputs } from "./uploads.js"
import { MessageActions } from "./actions.js"
import { Sidebar, Presence } from "./sidebar.js"
import { confirmDangerousForms, filterPickers, bellInPlace, roomKindFollowsChoice } from "./forms.js"
import { RoomSwitcher } from "./switcher.js"
import { Announcer } from "./announcer.js"
import { h } from "./dom.js"
import { NotificationsControl, UnreadCount, notifyMentionsWhileHidden, registerServiceWorker, unsubscribeOnSignOut } from "./notifications.js"

const body = document.body
const viewer = { id: body.dataset.userId, administrator: body.dataset.administrator === "true" }

function startRoom(section, cable, notifications) {
  const roomId = section.dataset.roomId
  const list = new MessageList(section.querySelector("#messages"), viewer)
  const scroller = new MessageScroller(list)
  const stream = new RoomStream(cable, list, scroller, new Announcer(section))
  const form = section.querySelector("form#composer")
  let actions = null
  const composer = form && new Composer(form, { list, stream, scroller, cable, onEditLast: (message) => actions.edit(message) })
  if (form) new Uploads(form, { list, stream, scroller, dropTarget: section, pasteTarget: composer.editor.root })
  new Lightbox(list.element)
  actions = new MessageActions(list, { composer, scroller })
  // The composer has the focus when the room opens (a permalink's message has it instead).
  if (composer && !section.querySelector("#messages[data-highlight-id]")) composer.editor.root.focus()
  document.querySelector(".skip-link[href='#composer_body']")?.addEventListener("click", (event) => {
    event.preventDefault()
    composer?.editor.focus()
  })
  section.querySelector(".room__tools")?.prepend(muteToggle())
  roomMenu(section.querySelector(".room__header"))
  new Presence(cable, roomId, section.querySelector(".room__header"))
  notifyMentionsWhileHidden(list.element, notifications, section.querySelector(".room__name")?.textContent.trim())
}

// On a phone the room's tools (and the top bar's links) fold into one menu in its header.
function roomMenu(header) {
  const tools = header?.querySelector(".room__tools")
  if (!tools) return
  const toggle = h("button", { type: "button", className: "room__menu-toggle", "aria-label": "Room menu", title: "Room menu", "aria-expanded": "false", "aria-controls": tools.id })
  const show = (open) => {
    toggle.setAttribute("aria-expanded", String(open))
    tools.classList.toggle("room__tools--open", open)
  }
  toggle.addEventListener("click", () => show(!tools.classList.contains("room__tools--open")))
  header.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || !tools.classList.contains("room__tools--open") || event.target.closest("details[open]")) return
    show(false)
    toggle.focus()
  })
  document.addEventListener("click", (event) => { if (!header.contains(event.target)) show(false) })
  tools.before(toggle)
}

confirmDangerousForms()
filterPickers()
bellInPlace()
roomKindFollowsChoice()
squareImageInputs()

if (viewer.id) {
  const controlRoot = document.querySelector(".notifications-control")
  const notifications = controlRoot && new NotificationsControl(controlRoot)
  registerServiceWorker().then((registration) => notifications?.start(registration))
  unsubscribeOnSignOut(document.getElementById("sign_out"))
  new UnreadCount()
  const cable = new Cable()
  showConnection(cable)
  new RoomSwitcher()
  cable.subscribe({ channel: "HeartbeatChannel" })
  const room = document.querySelector("section.room[data-room-id]")
  new Sidebar(cable, room?.dataset.roomId)
  if (room) startRoom(room, cable, notifications)
  // Search results: local times and only the actions the reader may use (plain links and forms there).
  const results = document.getElementById("search-results")
  if (results) decorateMessages(results, viewer, { replies: false })
  cable.connect()
}
