// Sign-in transfer: a link from another device (or its QR code) opens a page
// whose form signs this browser in. Submitting it on load makes the link work
// in one step; without JavaScript the person presses the button instead.

const form = document.querySelector("form[data-auto-submit]")
if (form) form.requestSubmit()
