// Campfire's page enhancements: local times, actions only for who may use
// them, confirmations. Each feature lives in its own module as it grows.

const currentUserId = document.body.dataset.userId
const administrator = document.body.dataset.administrator === "true"

function localizeTimes(root = document) {
  for (const time of root.querySelectorAll("time[datetime]")) {
    const date = new Date(time.getAttribute("datetime"))
    if (!Number.isNaN(date.getTime())) {
      time.textContent = date.toLocaleTimeString([], { hour: "numeric", minute: "2-digit" })
      time.title = date.toLocaleString()
    }
  }
}

function markOwnMessages(root = document) {
  for (const message of root.querySelectorAll(".message[data-creator-id]")) {
    const mine = message.dataset.creatorId === currentUserId
    message.classList.toggle("message--mine", mine)
    message.classList.toggle("message--editable", mine || administrator)
  }
}

function confirmDangerousForms() {
  document.addEventListener("submit", (event) => {
    const button = event.submitter
    const question = button?.dataset.confirm || (button?.dataset.action === "delete" ? "Delete this message?" : null)
    if (question && !window.confirm(question)) event.preventDefault()
  })
}

localizeTimes()
markOwnMessages()
confirmDangerousForms()
