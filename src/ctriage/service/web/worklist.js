"use strict";
// Worklist page: filters map onto GET /api/studies query parameters; the server orders by triage policy.
const REFRESH_MS = 5000;

function fmt(value, digits) {
  return value === null || value === undefined ? "" : Number(value).toFixed(digits);
}

function query() {
  const params = new URLSearchParams();
  if ($("policy").value) params.set("policy", $("policy").value);
  if ($("status").value) params.append("status", $("status").value);
  if ($("positive").value) params.set("positive", $("positive").value);
  if ($("min-category").value) params.set("min_category", $("min-category").value);
  if ($("search").value.trim()) params.set("q", $("search").value.trim());
  if ($("site").value.trim()) params.set("site", $("site").value.trim());
  return params.toString();
}

function row(study, rank) {
  const ident = identificationText(study.probability, study.threshold, study.positive,
    study.status === "incomplete");
  const review = study.review ? `${study.review.decision} (${text(study.review.user)})` : "";
  const status = study.status + (study.progress ? `: ${study.progress}` : "");
  const reason = study.error ? `<div class="reason">${text(study.error)}</div>` : "";
  const person = [study.patient_sex, study.patient_age].filter(Boolean).join(", ");
  return `<tr class="row" data-id="${study.id}">
    <td>${rank}</td><td>${text(personName(study.patient_name))} <span class="dim">${text(study.patient_id)}</span>
      <div class="dim">${text(person)}</div></td>
    <td>${text(study.study_date)}</td><td>${text(study.accession_number)}</td><td>${text(study.series_description)}</td>
    <td>${text(study.site)}</td>
    <td class="status-${study.status}">${text(status)}${reason}</td>
    <td class="${study.positive && study.status === "done" ? "pos" : ""}">${text(ident)}</td>
    <td class="cat${study.ct_category ?? ""}">${study.ct_category === null ? "" : "CT-" + study.ct_category}</td>
    <td>${percent(study.max_ratio)}</td><td>${new Date(study.received_at).toLocaleString()}</td><td>${review}</td></tr>`;
}

// Column sort on top of the policy order: highest first for scores, earliest first for dates.
const sorting = { key: "rank" };
const ASCENDING = new Set(["patient_id", "study_date", "site", "status", "received_at"]);

function sorted(studies) {
  const ranked = studies.map((s, i) => ({ ...s, rank: i + 1 }));
  if (sorting.key === "rank") return ranked;
  const sign = ASCENDING.has(sorting.key) ? 1 : -1;
  return ranked.sort((a, b) => {
    const x = a[sorting.key], y = b[sorting.key];
    if (x === y) return a.rank - b.rank;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * sign;
  });
}

async function refresh() {
  const response = await api("/api/studies?" + query());
  if (!response.ok) return;
  const studies = sorted(await response.json());
  $("worklist").innerHTML = studies.map((s) => row(s, s.rank)).join("");
  for (const tr of document.querySelectorAll("tr.row")) {
    tr.addEventListener("click", () => { window.location = "study.html?id=" + tr.dataset.id; });
  }
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

async function init() {
  const health = await signIn();
  if (!health) return;
  $("node").textContent = `AE ${health.ae_title} port ${health.dicom_port}`;
  $("policy").innerHTML = health.policies.map(
    (p) => `<option ${p === health.policy ? "selected" : ""}>${p}</option>`).join("");
  for (const id of ["policy", "status", "positive", "min-category"]) $(id).addEventListener("change", refresh);
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.addEventListener("click", () => { sorting.key = th.dataset.sort; refresh(); });
  }
  $("search").addEventListener("input", refresh);
  $("site").addEventListener("input", refresh);
  $("upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData();
    for (const f of [...$("upload-files").files, ...$("upload-nifti").files]) form.append("files", f, f.name);
    const response = await api("/api/upload", { method: "POST", body: form });
    const body = await response.json();
    $("upload-result").textContent = response.ok ? `queued study ${body.study_ids.join(", ")}` : body.detail;
    refresh();
  });
  await refresh();
  setInterval(() => { if ($("auto-refresh").checked) refresh(); }, REFRESH_MS);
}

init();
