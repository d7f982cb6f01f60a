// Responsible generation on the page (issue 18): each answer's watermark status and key
// fingerprint, its provenance record (collapsible), blocked samples with their reasons, and the
// chosen run's model card. Loaded before app.js, which calls showCard(model) and
// showResponsible(result). Everything is set as textContent: nothing from the server is parsed as HTML.
"use strict";

// An element made once, placed after `anchorId`'s element.
function panel(id, tag, anchorId) {
  let el = document.getElementById(id);
  if (!el) {
    el = document.createElement(tag);
    el.id = id;
    document.getElementById(anchorId).after(el);
  }
  return el;
}

// The run's README.md (its model card) under the model line, folded.
function showCard(model) {
  const box = panel("model-card", "details", "model-info");
  box.hidden = !(model && model.card);
  if (box.hidden) return;
  fold(box, "Model card (README.md)", model.card, "card");
}

// `details` holding a <summary> line over preformatted text (the model card, the provenance record).
function fold(details, title, text, className) {
  const summary = document.createElement("summary");
  summary.textContent = title;
  const pre = document.createElement("pre");
  if (className) pre.className = className;
  pre.textContent = text;
  details.replaceChildren(summary, pre);
  return details;
}

function watermarkLine(mark) {
  if (!mark) return "watermark: not reported";
  if (mark.applied && mark.posthoc) {  // images: which marks, and how many were too small for one
    const p = mark.posthoc;
    return `watermarked (${mark.method}, key fingerprint ${mark.key_fingerprint}; ` +
      `post-hoc mark on ${p.marked} of ${p.marked + p.unmarked} images)` + (mark.reason ? `; ${mark.reason}` : "");
  }
  if (mark.applied) {
    return `watermarked (${mark.method}, key fingerprint ${mark.key_fingerprint}; ` +
      `gamma ${mark.gamma}, delta ${mark.delta}, context ${mark.context})`;
  }
  return `not watermarked: ${mark.reason || "off"}`;
}

// The blocked samples in the output itself: a text box or molecule caption says why.
function markBlocked(blocked) {
  const boxes = document.querySelectorAll("#output pre.sample, #output .molecules figure");
  for (const b of blocked) {
    const el = boxes[b.index];
    if (!el) continue;
    el.classList.add("blocked");
    const target = el.querySelector(".generated, figcaption") || el;
    target.textContent = `[blocked: ${b.reason}]`;
  }
}

// Under the result: watermark status, screening (counted, with reasons), and the provenance record.
function showResponsible(result) {
  const box = panel("responsible", "div", "resolved");
  box.replaceChildren();
  if (!result) return;
  const mark = document.createElement("p");
  mark.id = "watermark-status";
  mark.className = "info";
  mark.textContent = watermarkLine(result.watermark);
  box.append(mark);
  const screening = result.screening;
  if (screening) {
    const line = document.createElement("p");
    line.id = "screening";
    line.className = screening.blocked ? "info blocked" : "info";
    line.textContent = `filters (${screening.filters.join(", ")}): blocked ${screening.blocked} of ${screening.drawn}`;
    box.append(line);
    if (screening.blocked) {
      const list = document.createElement("ul");
      list.className = "blocked-list";
      for (const b of screening.blocked_samples) {
        list.append(Object.assign(document.createElement("li"), { textContent: `sample ${b.index + 1}: ${b.reason}` }));
      }
      box.append(list);
      markBlocked(screening.blocked_samples);
    }
  }
  if (result.provenance) {
    const details = fold(document.createElement("details"), "Provenance record",
      JSON.stringify(result.provenance, null, 2));
    details.id = "provenance";
    box.append(details);
  }
}
