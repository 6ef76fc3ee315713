"use strict";
// Study page: slice viewer over server-rendered PNGs, report figures, confirm / reject with comment.
const studyId = new URLSearchParams(window.location.search).get("id");
const state = { index: 0, count: 0, window: "lung", lesionSlices: [], slices: [], lesionLabels: [] };

function sliceUrl() {
  const overlay = $("overlay").checked ? 1 : 0;
  const lungs = $("lungs").checked ? 1 : 0;
  return `/api/studies/${studyId}/slices/${state.index}.png?window=${state.window}&overlay=${overlay}&lungs=${lungs}`;
}

function show(index) {
  state.index = Math.max(0, Math.min(state.count - 1, index));
  $("slider").value = state.index;
  $("slice-index").textContent = state.index + 1;
  $("slice-position").textContent = sliceInfo();
  $("slice").src = sliceUrl();
}

// Report keys as a radiologist reads them: label and how the value is shown (ratios in %, volumes in mL).
const LABELS = {
  max_ratio: ["Worse lung involved", percent], ratio: ["Involved", percent],
  burden_percent: ["Total lesion burden", (v) => `${v.toFixed(1)} %`],
  lung_ml: ["Lung volume", (v) => `${v.toFixed(0)} mL`], lesion_ml: ["Lesions", (v) => `${v.toFixed(1)} mL`],
  ggo_ml: ["Ground-glass opacity", (v) => `${v.toFixed(1)} mL`],
  consolidation_ml: ["Consolidation", (v) => `${v.toFixed(1)} mL`],
};

function label(key) { return (LABELS[key] || [key.replaceAll("_", " ")])[0]; }
function shown(key, v) {
  if (v === undefined || v === null) return "";
  if (LABELS[key] && typeof v === "number") return LABELS[key][1](v);
  return typeof v === "number" ? String(+v.toFixed(3)) : text(String(v));
}

function numberRows(object) {
  return Object.entries(object || {})
    .filter(([, v]) => v !== undefined && typeof v !== "object")
    .map(([k, v]) => `<tr><td>${text(label(k))}</td><td>${shown(k, v)}</td></tr>`)
    .join("");
}

// Next (step 1) or previous (step -1) slice holding lesions, from the current one.
function lesionStep(step) {
  const ahead = state.lesionSlices.filter((z) => (step > 0 ? z > state.index : z < state.index));
  if (ahead.length) show(step > 0 ? ahead[0] : ahead[ahead.length - 1]);
}

// How far the identification can be trusted, in plain words, from the model card's validation figures.
function identificationNote(ident, card) {
  if (ident.probability === undefined) return "";
  const base = "The identification looks only at how much of the lungs is affected, not at what the lesions are: " +
    "other pneumonias, tumours or fibrosis can score as high. It ranks the worklist; it is not a diagnosis.";
  if (!card) return base;
  return base + ` In validation, at the ${percent(card.threshold)} threshold it flagged ` +
    `${percent(card.sensitivity)} of COVID-19 studies, and also ${percent(1 - card.specificity)} of ` +
    "studies with other or no lung disease.";
}

function sliceInfo() {
  const slice = state.slices[state.index] || {};
  const parts = [];
  if (slice.position_mm !== undefined) parts.push(`position ${slice.position_mm.toFixed(1)} mm`);
  if (slice.instance_number !== null && slice.instance_number !== undefined) {
    parts.push(`instance ${slice.instance_number}`);
  }
  return parts.join(", ");
}

function renderReport(report) {
  const severity = report.severity || {};
  const ident = report.identification || {};
  $("summary").innerHTML = numberRows({
    "COVID-19 identification": identificationText(ident.probability, ident.threshold, ident.positive,
      ident.reliable === false) || undefined,
    "CT category": severity.ct_category === undefined ? undefined : "CT-" + severity.ct_category,
    ...Object.fromEntries(Object.entries(severity).filter(([k]) => !["left", "right", "ct_category"].includes(k))),
  });
  $("ident-note").textContent = identificationNote(ident, session.user.identification);
  const left = severity.left || {};
  const right = severity.right || {};
  const keys = [...new Set([...Object.keys(right), ...Object.keys(left)])].filter((k) => typeof (right[k] ?? left[k]) !== "object");
  $("lungs-table").innerHTML = "<tr><th></th><th>right</th><th>left</th></tr>" +
    keys.map((k) => `<tr><td>${text(label(k))}</td><td>${shown(k, right[k])}</td><td>${shown(k, left[k])}</td></tr>`)
      .join("");
}

function renderReviews(reviews) {
  $("reviews").innerHTML = reviews.map((r) =>
    `<li><b>${text(r.decision)}</b> by ${text(r.user)} at ${new Date(r.created_at).toLocaleString()}: ${text(r.comment)}</li>`,
  ).join("");
}

async function load() {
  const response = await api(`/api/studies/${studyId}`);
  if (!response.ok) { $("title").textContent = "No such study"; return null; }
  const study = await response.json();
  $("title").textContent = `${personName(study.patient_name)} ${study.patient_id || ""} ${study.study_date || ""}` +
    ` ${study.accession_number ? "accession " + study.accession_number : ""}`;
  $("status").textContent = study.status + (study.progress ? `: ${study.progress}` : "");
  $("status").className = "status-" + study.status;
  $("failure").hidden = study.status !== "failed";
  $("incomplete").hidden = study.status !== "incomplete";
  $("incomplete").textContent = study.status === "incomplete" ? `Incomplete series: ${study.error}` : "";
  $("review-panel").hidden = study.status !== "done";
  $("error").textContent = study.error;
  $("send-status").textContent = study.send_status || "not sent";
  if (study.n_slices > 0 && $("viewer").hidden) {
    $("viewer").hidden = false;
    state.count = study.n_slices;
    state.lesionSlices = study.lesion_slices;
    state.slices = study.slices;
    state.lesionLabels = study.lesion_labels;
    $("lesion-info").textContent = study.lesion_slices.length ? `${study.lesion_slices.length} slices with lesions`
      : "no lesions found";
    $("slider").max = state.count - 1;
    $("slice-count").textContent = state.count;
    if (study.files.includes("projection.png")) $("projection").src = `/api/studies/${studyId}/files/projection.png`;
    renderReport(study.report || {});
    show(study.most_involved_slice ?? Math.floor(state.count / 2));  // the most involved slice first
  }
  renderReviews(study.reviews);
  return study;
}

async function review(decision) {
  const response = await api(`/api/studies/${studyId}/review`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ decision, comment: $("comment").value }),
  });
  const body = await response.json();
  $("review-message").textContent = response.ok ? `${body.decision} saved` : body.detail;
  await load();
}

async function post(path) {
  const response = await api(`/api/studies/${studyId}/${path}`, { method: "POST" });
  if (!response.ok) alert((await response.json()).detail);
  await load();
}

// Multiplanar view (NiiVue, vendored): the CT as NIfTI from the API with the report's lesion labels over it.
const LUNG_WINDOW = [-1350, 150];  // HU shown black to white at first, as the slice viewer's lung window
let mpr = null;

async function openMpr() {
  $("mpr").hidden = false;
  if (mpr) return;
  const DRAG = niivue.DRAG_MODE;
  mpr = new niivue.Niivue({
    backColor: [0, 0, 0, 1], show3Dcrosshair: true, isRadiologicalConvention: true,
    isOrientationTextVisible: true, dragAndDropEnabled: false,
    mouseEventConfig: {
      leftButton: { primary: DRAG.crosshair, withShift: DRAG.pan, withCtrl: DRAG.windowing },
      rightButton: DRAG.windowing, centerButton: DRAG.pan,
    },
  });
  window.mprViewer = mpr;
  $("mpr-status").textContent = "loading volume...";
  try {
    await mpr.attachToCanvas($("mpr-canvas"));
    mpr.setSliceType(mpr.sliceTypeMultiplanar);
    mpr.onLocationChange = (data) => { $("mpr-location").textContent = data.string || ""; };
    await mpr.loadVolumes([
      { url: `/api/studies/${studyId}/volume.nii.gz`, name: "ct.nii.gz", colormap: "gray",
        cal_min: LUNG_WINDOW[0], cal_max: LUNG_WINDOW[1] },
      { url: `/api/studies/${studyId}/files/lesions.nii.gz`, name: "lesions.nii.gz", opacity: 0.5 },
    ]);
    // label values and colours as the slice viewer shows them (from the API: ctriage.labels.LesionLabel)
    const labels = state.lesionLabels;
    mpr.volumes[1].setColormapLabel({
      R: [0, ...labels.map((l) => l.rgb[0])], G: [0, ...labels.map((l) => l.rgb[1])],
      B: [0, ...labels.map((l) => l.rgb[2])], A: [0, ...labels.map(() => 255)], I: [0, ...labels.map((l) => l.value)],
    });
    mpr.updateGLVolume();
    $("mpr-status").textContent = "";
    window.mprLoaded = true;  // read by the browser test
  } catch (error) {
    $("mpr-status").textContent = `MPR view unavailable: ${error.message || error}`;
    window.mprError = String(error);
  }
}

function mprZoom(factor) {
  if (!mpr) return;
  const pan = mpr.scene.pan2Dxyzmm;
  pan[3] = factor ? Math.max(0.5, Math.min(8, pan[3] * factor)) : 1;
  if (!factor) { pan[0] = 0; pan[1] = 0; pan[2] = 0; }
  mpr.drawScene();
}

async function init() {
  const health = await signIn();
  if (!health) return;
  $("windows").innerHTML = health.windows.map(
    (w) => `<button data-window="${w}" class="${w === state.window ? "active" : ""}">${w}</button>`).join("");
  for (const button of document.querySelectorAll("#windows button")) {
    button.addEventListener("click", () => {
      state.window = button.dataset.window;
      for (const b of document.querySelectorAll("#windows button")) b.classList.toggle("active", b === button);
      show(state.index);
    });
  }
  $("slice").addEventListener("wheel", (event) => { event.preventDefault(); show(state.index + Math.sign(event.deltaY)); });
  $("slice").addEventListener("keydown", (event) => {
    if (event.key === "ArrowUp") show(state.index - 1);
    if (event.key === "ArrowDown") show(state.index + 1);
  });
  $("slider").addEventListener("input", () => show(Number($("slider").value)));
  $("prev-lesion").addEventListener("click", () => lesionStep(-1));
  $("next-lesion").addEventListener("click", () => lesionStep(1));
  $("overlay").addEventListener("change", () => show(state.index));
  $("lungs").addEventListener("change", () => show(state.index));
  $("mpr-open").addEventListener("click", openMpr);
  $("mpr-zoom-in").addEventListener("click", () => mprZoom(1.25));
  $("mpr-zoom-out").addEventListener("click", () => mprZoom(0.8));
  $("mpr-reset").addEventListener("click", () => mprZoom(0));
  $("mpr-overlay").addEventListener("change", () => {
    if (mpr && mpr.volumes.length > 1) mpr.setOpacity(1, $("mpr-overlay").checked ? 0.5 : 0);
  });
  $("confirm").addEventListener("click", () => review("confirmed"));
  $("reject").addEventListener("click", () => review("rejected"));
  $("retry").addEventListener("click", () => post("retry"));
  $("reanalyse").addEventListener("click", () => post("retry"));
  $("send").addEventListener("click", () => post("send"));
  $("delete").addEventListener("click", async () => {
    if (!window.confirm("Delete this study's images, results and reviews from ctriage?")) return;
    const response = await api(`/api/studies/${studyId}`, { method: "DELETE" });
    if (response.ok) window.location = "index.html"; else alert((await response.json()).detail);
  });
  const study = await load();
  if (study && study.status !== "done" && study.status !== "failed") {
    const timer = setInterval(async () => {
      const s = await load();
      if (!s || s.status === "done" || s.status === "failed") clearInterval(timer);
    }, 3000);
  }
}

init();
