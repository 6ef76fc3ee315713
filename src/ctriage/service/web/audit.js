"use strict";
// Audit page (admins): the newest events of GET /api/audit, filtered by action or study; CSV export of the same.
function auditQuery() {
  const params = new URLSearchParams();
  if ($("action").value.trim()) params.set("action", $("action").value.trim());
  if ($("study-id").value) params.set("study_id", $("study-id").value);
  return params.toString();
}

async function showAudit() {
  const response = await api("/api/audit?" + auditQuery());
  if (!response.ok) { $("audit-message").textContent = (await response.json()).detail; return; }
  const rows = await response.json();
  $("audit").innerHTML = rows.map((e) => `<tr class="audit-row"><td>${e.id}</td>
    <td>${new Date(e.at).toLocaleString()}</td><td>${text(e.user)}</td><td>${text(e.host)}</td>
    <td>${text(e.action)}</td><td>${e.study_id ?? ""} ${text(e.study_uid)}</td><td>${text(e.detail)}</td></tr>`).join("");
  $("csv").href = "/api/audit.csv?" + auditQuery();
}

async function initAudit() {
  if (!(await signIn())) return;
  $("apply").addEventListener("click", showAudit);
  await showAudit();
}

initAudit();
