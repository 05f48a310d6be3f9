// Copy buttons: <button data-copy-target="ID"> copies the value of the field with
// that id (the invitation link, a sign-in link). The buttons are hidden until this
// module shows them, so without JavaScript there is no button that does nothing.

const FEEDBACK_MS = 2000

async function copy(field) {
  try {
    await navigator.clipboard.writeText(field.value)
    return true
  } catch {
    // No clipboard API (plain HTTP on another host) or permission refused: the old way.
    field.select()
    return document.execCommand?.("copy") ?? false
  }
}

for (const button of document.querySelectorAll("button[data-copy-target]")) {
  const field = document.getElementById(button.dataset.copyTarget)
  if (!field) continue
  const label = button.textContent
  let timer = null
  button.hidden = false
  button.addEventListener("click", async () => {
    button.textContent = (await copy(field)) ? "Copied!" : "Press Ctrl+C to copy"
    clearTimeout(timer)
    timer = setTimeout(() => { button.textContent = label }, FEEDBACK_MS)
  })
}
