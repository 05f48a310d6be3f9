// Campfire in the browser: the entry point. The features live in a handful of modules
// (a page fetches each once): dom.js, messages.js, composer.js, cable.js,
// notifications.js and sounds.js. This file finds the page's parts and wires them together.

import { Cable, showConnection, Sidebar, Presence, RoomSwitcher } from "./cable.js"
import { MessageList, RoomStream, decorateMessages, muteToggle, MessageScroller, MessageActions, ThreadPanel,
  MentionsInbox, LiveSearch } from "./messages.js"
import { Composer, Uploads, Lightbox, squareImageInputs } from "./composer.js"
import { h, confirmDangerousForms, filterPickers, bellInPlace, roomKindFollowsChoice, Announcer } from "./dom.js"
import { NotificationsControl, UnreadCount, notifyMentionsWhileHidden, registerServiceWorker, unsubscribeOnSignOut } from "./notifications.js"

const body = document.body
const viewer = { id: body.dataset.userId, administrator: body.dataset.administrator === "true" }

// A room, or a thread (its own page, or the side panel beside its room): returns what closes it.
function startRoom(section, cable, notifications, threads = null) {
  const roomId = section.dataset.roomId
  const list = new MessageList(section.querySelector(".messages"), viewer)
  const scroller = new MessageScroller(list)
  const stream = new RoomStream(cable, list, scroller, new Announcer(section))
  const form = section.querySelector("form.composer")
  let actions = null
  const composer = form && new Composer(form, { list, stream, scroller, cable, onEditLast: (message) => actions.edit(message) })
  if (form) new Uploads(form, { list, stream, scroller, dropTarget: section, pasteTarget: composer.editor.root })
  new Lightbox(list.element)
  actions = new MessageActions(list, { composer, scroller, openThread: threads && ((url, method) => threads.open(url, method)) })
  // The composer has the focus when the room opens (a permalink's message has it instead).
  if (composer && !section.querySelector(".messages[data-highlight-id]")) composer.editor.root.focus()
  const answered = section.querySelector(".thread__parent")
  if (answered) decorateMessages(answered, viewer, { replies: false })
  if (!section.closest(".thread-panel")) {
    document.querySelector(".skip-link[href='#composer_body']")?.addEventListener("click", (event) => {
      event.preventDefault()
      composer?.editor.focus()
    })
  }
  if (!section.classList.contains("thread")) {
    section.querySelector(".room__tools")?.prepend(muteToggle())
    roomMenu(section.querySelector(".room__header"))
    new Presence(cable, roomId, section.querySelector(".room__header"))
  }
  notifyMentionsWhileHidden(list.element, notifications, section.querySelector(".room__name")?.textContent.trim())
  return { close: () => stream.close() }
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
  new Sidebar(cable, room?.dataset.parentRoomId ?? room?.dataset.roomId)
  const main = document.getElementById("main")
  const threads = room && !room.classList.contains("thread") && main
    ? new ThreadPanel(main, (section) => startRoom(section, cable, notifications)) : null
  if (room) startRoom(room, cable, notifications, threads)
  // Search results, the mentions inbox, saved messages: local times and only the actions
  // the reader may use (plain links and forms there).
  for (const list of document.querySelectorAll("#search-results, .inbox__list")) decorateMessages(list, viewer, { replies: false })
  const search = document.querySelector("form.search__form")
  if (search) new LiveSearch(search, (root) => decorateMessages(root, viewer, { replies: false }))
  const inbox = document.getElementById("mentions")
  if (inbox) new MentionsInbox(cable, inbox, (root) => decorateMessages(root, viewer, { replies: false }))
  cable.connect()
}
