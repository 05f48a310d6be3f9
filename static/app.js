// Campfire in the browser: the entry point. Each feature lives in its own module;
// this file finds the page's parts and wires them together.

import { Cable, showConnection } from "./cable.js"
import { MessageList, RoomStream, decorateMessages, muteToggle } from "./messages.js"
import { MessageScroller } from "./scroller.js"
import { Composer } from "./composer.js"
import { MessageActions } from "./actions.js"
import { Sidebar, Presence } from "./sidebar.js"
import { confirmDangerousForms, filterPickers, bellInPlace, roomKindFollowsChoice } from "./forms.js"
import { ThreadPanel } from "./threads.js"
import { MentionsInbox } from "./mentions.js"
import { LiveSearch } from "./search.js"

const body = document.body
const viewer = { id: body.dataset.userId, administrator: body.dataset.administrator === "true" }

// A room, or a thread (its own page, or the side panel beside its room): returns what closes it.
function startRoom(section, cable, threads = null) {
  const roomId = section.dataset.roomId
  const list = new MessageList(section.querySelector(".messages"), viewer)
  const scroller = new MessageScroller(list)
  const stream = new RoomStream(cable, list, scroller)
  const form = section.querySelector("form.composer")
  let actions = null
  const composer = form && new Composer(form, { list, stream, scroller, cable, onEditLast: (message) => actions.edit(message) })
  actions = new MessageActions(list, { composer, scroller, openThread: threads && ((url, method) => threads.open(url, method)) })
  const answered = section.querySelector(".thread__parent")
  if (answered) decorateMessages(answered, viewer, { replies: false })
  if (!section.classList.contains("thread")) {
    section.querySelector(".room__tools")?.prepend(muteToggle())
    new Presence(cable, roomId, section.querySelector(".room__header"))
  }
  return { close: () => stream.close() }
}

confirmDangerousForms()
filterPickers()
bellInPlace()
roomKindFollowsChoice()

if (viewer.id) {
  const cable = new Cable()
  showConnection(cable)
  cable.subscribe({ channel: "HeartbeatChannel" })
  const room = document.querySelector("section.room[data-room-id]")
  new Sidebar(cable, room?.dataset.parentRoomId ?? room?.dataset.roomId)
  const main = document.getElementById("main")
  const threads = room && !room.classList.contains("thread") && main ? new ThreadPanel(main, (section) => startRoom(section, cable)) : null
  if (room) startRoom(room, cable, threads)
  // Search results, the mentions inbox, saved messages: local times and only the actions
  // the reader may use (plain links and forms there).
  for (const list of document.querySelectorAll("#search-results, .inbox__list")) decorateMessages(list, viewer, { replies: false })
  const search = document.querySelector("form.search__form")
  if (search) new LiveSearch(search, (root) => decorateMessages(root, viewer, { replies: false }))
  const inbox = document.getElementById("mentions")
  if (inbox) new MentionsInbox(cable, inbox, (root) => decorateMessages(root, viewer, { replies: false }))
  cable.connect()
}
