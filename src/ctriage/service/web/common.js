"use strict";
// Shared by the pages: element lookup, HTML escaping, the signed-in user and API calls that carry the CSRF token.
const $ = (id) => document.getElementById(id);
const session = { user: null };

function text(value) {
  const span = document.createElement("span");
  span.textContent = value ?? "";
  return span.innerHTML;
}

// DICOM person name "Last^First^Middle" as "Last, First Middle".
function personName(value) {
  const [last, first, middle] = String(value || "").split("^");
  const given = [first, middle].filter(Boolean).join(" ");
  return given ? `${last}, ${given}` : (last || "");
}

// A ratio in [0, 1] as a percentage with one decimal ("" when unknown).
function percent(ratio) {
  return ratio === null || ratio === undefined ? "" : `${(100 * ratio).toFixed(1)} %`;
}

// The identification in plain words: what the probability says against the model's threshold.
function identificationText(probability, threshold, positive, unreliable) {
  if (probability === null || probability === undefined) return "";
  if (unreliable) return `not assessed: lungs not wholly in the series (${percent(probability)})`;
  const against = threshold === null || threshold === undefined ? "" : `, threshold ${percent(threshold)}`;
  return (positive ? "COVID-19-like pattern" : "no COVID-19-like pattern") + ` (${percent(probability)}${against})`;
}

function toLogin() {
  window.location = "login.html?next=" + encodeURIComponent(window.location.pathname + window.location.search);
}

// fetch() for the API: sends the session's CSRF token on writes, goes to the login page when the session ended.
async function api(path, options = {}) {
  const method = (options.method || "GET").toUpperCase();
  const headers = { ...(options.headers || {}) };
  if (method !== "GET" && session.user) headers["X-CSRF-Token"] = session.user.csrf_token;
  const response = await fetch(path, { ...options, method, headers, credentials: "same-origin" });
  if (response.status === 401) toLogin();
  return response;
}

// Who is signed in (and the service settings); shows the name, role and a logout button in the header.
async function signIn() {
  const response = await api("/api/me");
  if (!response.ok) return null;
  session.user = await response.json();
  const box = $("account");
  if (box) {
    box.innerHTML = `${text(session.user.username)} (${text(session.user.role)}) ` +
      (session.user.role === "admin" ? '<a href="audit.html">audit trail</a> ' : "") +
      '<button id="logout">Log out</button>';
    $("logout").addEventListener("click", async () => {
      await api("/api/logout", { method: "POST" });
      window.location = "login.html";
    });
  }
  for (const element of document.querySelectorAll(".admin-only")) element.hidden = session.user.role !== "admin";
  return session.user;
}
