"use strict";
// Login page: POST /api/login sets the session cookie; then back to the page asked for (same site only).
function nextPage() {
  const next = new URLSearchParams(window.location.search).get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/";
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await fetch("/api/login", {
    method: "POST", headers: { "Content-Type": "application/json" }, credentials: "same-origin",
    body: JSON.stringify({ username: $("username").value, password: $("password").value }),
  });
  if (response.ok) { window.location = nextPage(); return; }
  $("login-error").textContent = (await response.json()).detail;
});
