// The page's media: music results (an <audio> player, the piano roll, downloads per piece) and
// the image a diffusion run edits (a file picker, shown only for runs that declare init_image).
// Loaded before app.js, which calls these. Plain JavaScript; nothing leaves this server.
"use strict";

// ready: settles once a picked file has been read (a click right after picking waits for it)
const media = { urls: [], initImage: null, ready: Promise.resolve() };

// Object URLs made for the last result, freed when the next one is shown.
function mediaUrl(blob) {
  const url = URL.createObjectURL(blob);
  media.urls.push(url);
  return url;
}

function freeMediaUrls() {
  for (const url of media.urls) URL.revokeObjectURL(url);
  media.urls = [];
}

function base64Blob(base64, type) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function downloadLink(blob, filename, label) {
  const link = document.createElement("a");
  link.href = mediaUrl(blob);
  link.download = filename;
  link.textContent = label;
  return link;
}

// One figure per piece: its piano roll, a player when the server rendered a WAV (FluidSynth),
// and links to the MIDI, WAV and PNG files. Without a WAV, the server's reason is shown.
function showMusic(result) {
  freeMediaUrls();
  const list = document.createElement("div");
  list.className = "pieces";
  result.midi.forEach((midi, i) => {
    const name = `${result.model}-seed${result.seed}-${i + 1}`;
    const card = document.createElement("figure");
    const roll = document.createElement("img");
    roll.className = "roll";
    roll.alt = `piano roll of piece ${i + 1}`;
    roll.src = "data:image/png;base64," + result.piano_roll_png[i];
    card.append(roll);
    const wav = result.wav && result.wav[i];
    if (wav) {
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.preload = "metadata";
      audio.src = mediaUrl(base64Blob(wav, "audio/wav"));
      card.append(audio);
    }
    const caption = document.createElement("figcaption");
    caption.append(`${result.steps[i]} sixteenths · `,
      downloadLink(base64Blob(midi, "audio/midi"), `${name}.mid`, "MIDI"));
    if (wav) caption.append(" · ", downloadLink(base64Blob(wav, "audio/wav"), `${name}.wav`, "WAV"));
    caption.append(" · ", downloadLink(base64Blob(result.piano_roll_png[i], "image/png"), `${name}.png`, "PNG"));
    card.append(caption);
    list.append(card);
  });
  const out = document.getElementById("output");
  out.replaceChildren(list);
  if (result.audio_note) {
    const note = document.createElement("p");
    note.className = "info";
    note.textContent = `No audio: ${result.audio_note}`;
    out.append(note);
  }
}

// The init_image picker: visible for runs that take one; the chosen PNG is kept as base64 and
// sent with each request until another model is picked or the file is cleared.
function showInitPicker(model) {
  const takes = (model.options || []).some((o) => o.name === "init_image");
  document.getElementById("init-row").hidden = !takes;
  document.getElementById("init-image").value = "";
  media.initImage = null;
}

function readInitImage(input) {
  media.initImage = null;
  const file = input.files && input.files[0];
  if (!file) return;
  media.ready = new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => {
      // a data: URL whose type is the browser's guess; the part after the comma is the file in
      // base64, which the server checks is a PNG
      media.initImage = String(reader.result).split(",", 2)[1] || null;
      resolve();
    };
    reader.onerror = () => resolve();
    reader.readAsDataURL(file);
  });
}

document.getElementById("init-image").addEventListener("change", (e) => readInitImage(e.target));
