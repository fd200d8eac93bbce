// The console works without JavaScript; this only asks before leaving a half-written note.
document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form#confirm, form#publish")) {
    let dirty = false;
    form.addEventListener("input", () => { dirty = true; });
    form.addEventListener("submit", () => { dirty = false; });
    window.addEventListener("beforeunload", (e) => { if (dirty) { e.preventDefault(); } });
  }
});
