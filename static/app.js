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

const body = document.body
const viewer = { id: body.dataset.userId, administrator: body.dataset.administrator === "true" }

function startRoom(section, cable) {
  const roomId = section.dataset.roomId
  const list = new MessageList(section.querySelector("#messages"), viewer)
  const scroller = new MessageScroller(list)
  const stream = new RoomStream(cable, list, scroller)
  const form = section.querySelector("form#composer")
  let actions = null
  const composer = form && new Composer(form, { list, stream, scroller, cable, onEditLast: (message) => actions.edit(message) })
  if (form) new Uploads(form, { list, stream, scroller, dropTarget: section, pasteTarget: composer.editor.root })
  new Lightbox(list.element)
  actions = new MessageActions(list, { composer, scroller })
  section.querySelector(".room__tools")?.prepend(muteToggle())
  new Presence(cable, roomId, section.querySelector(".room__header"))
}

confirmDangerousForms()
filterPickers()
bellInPlace()
roomKindFollowsChoice()
squareImageInputs()

if (viewer.id) {
  const cable = new Cable()
  showConnection(cable)
  cable.subscribe({ channel: "HeartbeatChannel" })
  const room = document.querySelector("section.room[data-room-id]")
  new Sidebar(cable, room?.dataset.roomId)
  if (room) startRoom(room, cable)
  // Search results: local times and only the actions the reader may use (plain links and forms there).
  const results = document.getElementById("search-results")
  if (results) decorateMessages(results, viewer, { replies: false })
  cable.connect()
}
