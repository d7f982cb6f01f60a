// The page's Report tab: the loaded runs side by side. Plain functions over GET /v1/models' list;
// loaded before app.js, which calls showReport(box, models, headers) when the tab opens.
"use strict";

// eval.json nests groups ({"fid": ..., "moses": {...}}); flatten to dotted names of numbers.
function flatten(obj, prefix, out) {
  for (const [k, v] of Object.entries(obj || {})) {
    const name = prefix ? `${prefix}.${k}` : k;
    if (typeof v === "number") out.set(name, v);
    else if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, name, out);
  }
  return out;
}

function formatNumber(v) {
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : v.toPrecision(4);
}

function metricsTable(models) {
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  head.append(Object.assign(document.createElement("th"), { textContent: "" }));
  for (const m of models) head.append(Object.assign(document.createElement("th"), { textContent: m.id }));
  const body = table.createTBody();
  const rows = [["family", (m) => m.family], ["modality", (m) => m.modality], ["dataset", (m) => m.dataset],
    ["step", (m) => String(m.step)]];
  const flat = models.map((m) => flatten(m.metrics, "", new Map()));
  const names = [...new Set(flat.flatMap((f) => [...f.keys()]))];
  for (const name of names) rows.push([name, (m, i) => (flat[i].has(name) ? formatNumber(flat[i].get(name)) : "–")]);
  for (const [name, cell] of rows) {
    const row = body.insertRow();
    row.append(Object.assign(document.createElement("th"), { textContent: name }));
    models.forEach((m, i) => { row.insertCell().textContent = cell(m, i); });
  }
  return table;
}

async function showReport(box, models, headers) {
  // The full report (curves, grids, config differences) when the server offers GET /report;
  // otherwise the held-out metrics from /v1/models, side by side.
  try {
    const response = await fetch("report", { headers });
    if (response.ok && (response.headers.get("content-type") || "").includes("text/html")) {
      const frame = document.createElement("iframe");
      frame.title = "report";
      frame.sandbox = "";  // the report is self-contained and needs no script
      frame.srcdoc = await response.text();
      box.replaceChildren(frame);
      return;
    }
  } catch (_) { /* fall back to the metrics table */ }
  const withMetrics = models.filter((m) => m.metrics);
  const note = document.createElement("p");
  note.className = "info";
  note.textContent = withMetrics.length === models.length ? "Held-out metrics (eval.json) of the loaded runs."
    : "Held-out metrics (eval.json) of the loaded runs; runs without eval.json show –. Run `genforge eval RUN_DIR`.";
  box.replaceChildren(note, metricsTable(models));
}
