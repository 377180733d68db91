// The page's controller: choose an image (a file, or an instance of the PACS behind the gateway), compress and decode
// it through the public API, show original, decoded and difference with the analysis over them, and the figures.
//
//   file / PACS instance --(Explicit VR LE as is, else /v1/compress lossless + /v1/decompress)--> original frames
//   --/v1/compress?mode&quality|max_error (JSON: bitstream, rate, analysis) --/v1/decompress--> decoded frames
//   --> views (viewer.js), overlay (overlay.js), figures (PSNR on the native range, as mvmic.model.rate_distortion)
//
// One run at a time: choosing while a run is going is refused, and a run's answer is dropped if its image was
// replaced meanwhile (``state.run`` counts the runs).

import { ApiError, call, firstPart, serverTiming, setToken } from "./api.js";
import { loadBenchmarks } from "./benchmarks.js";
import { DicomError, readDicom } from "./dicom.js";
import { findingsOverlay } from "./overlay.js";
import { PRESETS, SharedView, View, autoWindow, interact, render, renderDifference } from "./viewer.js";

const $ = (id) => document.getElementById(id);
const DICOM = "application/dicom";
const CONTROLS = ["run", "file", "pacs-search"];  // what starts a run: disabled while one goes
const state = { source: null, original: null, decoded: null, result: null, frame: 0, run: 0, working: false,
  window: { width: 400, level: 40 }, organClasses: null, frameCache: null };
const shared = new SharedView();
const views = { original: new View($("original"), shared), decoded: new View($("decoded"), shared),
  difference: new View($("difference"), shared) };

function message(text, kind = "error") {
  const element = $("message");
  element.textContent = text;
  element.className = kind;
  element.hidden = !text;
}

// Runs ``job`` with the page marked busy (nothing else can start); its refusal becomes the message. True if it ran.
async function busy(what, job) {
  if (state.working) {
    message("Wait for the image being processed.", "info");
    return false;
  }
  state.working = true;
  $("busy").hidden = false;
  $("busy").textContent = `${what}…`;
  for (const id of CONTROLS) $(id).disabled = true;
  try {
    await job();
    return true;
  } catch (error) {
    if (error instanceof ApiError || error instanceof DicomError) {
      message(error.message);
    } else {
      console.error(error);
      message(`The page could not show this image (${error.message}).`);
    }
    return false;
  } finally {
    state.working = false;
    $("busy").hidden = true;
    for (const id of CONTROLS) $(id).disabled = false;
  }
}

// -- choosing an image ----------------------------------------------------------------------------------------
function choose(buffer, name) {
  if (state.working) {
    message("Wait for the image being processed.", "info");
    return;
  }
  state.source = { buffer, original: null };
  state.frame = 0;
  $("source-name").textContent = name;
  $("pacs").hidden = true;
  run();
}

async function chooseFile(file) {
  if (!file) return;
  const buffer = await file.arrayBuffer();
  $("file").value = "";  // the same file chosen again (after a refusal, say) is a new choice
  choose(buffer, file.name);
}

$("file").addEventListener("change", () => chooseFile($("file").files[0]));
// a file dropped anywhere on the page (the browser would otherwise open it in place of the page)
document.addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
document.addEventListener("dragleave", (event) => { if (!event.relatedTarget) $("drop").classList.remove("over"); });
document.addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  chooseFile(event.dataTransfer.files[0]);
});

// QIDO-RS through the gateway: studies, then a study's instances; WADO-RS retrieves the one picked, in a standard
// transfer syntax (the gateway decodes MVMIC instances). The lists show no patient attribute and no free text
// (a description may hold a name): study date, modalities, counts; series and instance numbers, modality, size.
const tag = (dataset, key) => (dataset[key] && dataset[key].Value ? dataset[key].Value[0] : "");
const QIDO = { accept: "application/dicom+json" };

// A row picked by click, or by Enter or Space once focused (Tab reaches it).
function selectable(row, pick) {
  row.tabIndex = 0;
  row.addEventListener("click", pick);
  row.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      pick();
    }
  });
}
$("pacs-search").addEventListener("click", () => busy("Searching the PACS", async () => {
  message("");
  const response = await call("QIDO-RS", "/dicomweb/studies?includefield=00201206&includefield=00201208", QIDO);
  const studies = response.status === 204 ? [] : await response.json();
  const body = $("studies").querySelector("tbody");
  body.replaceChildren();
  for (const study of studies) {
    const row = body.insertRow();
    for (const text of [tag(study, "00080020"), (study["00080061"]?.Value || []).join(", "), tag(study, "00201206"),
      tag(study, "00201208")]) row.insertCell().textContent = text;
    selectable(row, () => listInstances(tag(study, "0020000D")));
  }
  $("instances").hidden = true;
  $("pacs").hidden = false;
  if (!studies.length) message("The PACS holds no study.", "info");
}));

function listInstances(study) {
  return busy("Listing the study", async () => {
    const response = await call("QIDO-RS", `/dicomweb/studies/${encodeURIComponent(study)}/instances`, QIDO);
    const instances = response.status === 204 ? [] : await response.json();
    const body = $("instances").querySelector("tbody");
    body.replaceChildren();
    for (const instance of instances) {
      const row = body.insertRow();
      for (const text of [tag(instance, "00200011"), tag(instance, "00200013"), tag(instance, "00080060"),
        instance["00280010"] ? `${tag(instance, "00280011")} × ${tag(instance, "00280010")}` : ""]) {
        row.insertCell().textContent = text;
      }
      selectable(row, () => retrieve(study, tag(instance, "0020000E"), tag(instance, "00080018"),
        `PACS: series ${tag(instance, "00200011")}, instance ${tag(instance, "00200013")}`));
    }
    $("instances").hidden = false;
  });
}

async function retrieve(study, series, instance, name) {
  let buffer = null;
  await busy("Retrieving the instance", async () => {
    const path = ["studies", study, "series", series, "instances", instance].map(encodeURIComponent).join("/");
    const response = await call("WADO-RS", `/dicomweb/${path}`,
      { accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' });
    buffer = await firstPart(response);
  });
  if (buffer) choose(buffer, name);
}

// -- compressing and decoding ---------------------------------------------------------------------------------
function parameters() {
  const mode = $("mode").value;
  const query = new URLSearchParams({ mode });
  if (mode === "lossy") query.set("quality", $("quality").value);  // the service says what is out of range
  if (mode === "near-lossless") query.set("max_error", $("max-error").value);
  return query;
}

// The source's stored values, read once per source.
async function originalOf(source) {
  if (!source.original) {
    try {
      source.original = readDicom(source.buffer);  // Explicit VR Little Endian, native pixels: read as it is
    } catch (error) {
      if (!(error instanceof DicomError)) throw error;
      // another transfer syntax (compressed, implicit VR, big endian): the service's lossless round trip gives its
      // stored values exactly, in Explicit VR Little Endian
      const stream = await call("Reading the file (lossless)", "/v1/compress?mode=lossless",
        { method: "POST", body: source.buffer, type: DICOM, accept: "application/octet-stream" });
      const decoded = await call("Reading the file (decoding)", "/v1/decompress",
        { method: "POST", body: await stream.arrayBuffer(), type: "application/octet-stream", accept: DICOM });
      source.original = readDicom(await decoded.arrayBuffer());
    }
  }
  return source.original;
}

function run() {
  const source = state.source;
  if (!source) {
    message("Choose a DICOM file first.", "info");
    return;
  }
  const query = parameters();
  const number = ++state.run;
  busy("Compressing and decoding", async () => {
    message("");
    document.body.dataset.state = "working";
    try {
      await compare(source, query, number);
    } catch (error) {
      if (state.run === number) clear();  // the views and figures were of another image or mode
      throw error;
    }
  });
}

async function compare(source, query, number) {
  if (!state.organClasses) state.organClasses = (await (await call("Models", "/v1/models")).json()).organ_classes;
  const started = performance.now();
  const compressed = await call(`Compress (${query.get("mode")})`, `/v1/compress?${query}`,
    { method: "POST", body: source.buffer, type: DICOM, accept: "application/json" });
  const result = await compressed.json();
  const bitstream = Uint8Array.from(atob(result.bitstream), (c) => c.charCodeAt(0));
  const decodedResponse = await call("Decompress", "/v1/decompress",
    { method: "POST", body: bitstream, type: "application/octet-stream", accept: DICOM });
  const decoded = readDicom(await decodedResponse.arrayBuffer());
  const roundTrip = performance.now() - started;
  const original = await originalOf(source);
  if (state.run !== number || state.source !== source) return;  // another run has begun: its answer counts
  if (original.rows !== decoded.rows || original.columns !== decoded.columns ||
      original.frames.length !== decoded.frames.length || original.samples !== decoded.samples) {
    throw new ApiError("the decoded image does not have the original's size, frames or samples");
  }
  const newImage = state.original !== original;
  const frameErrors = original.frames.map((frame, i) => errors(frame, decoded.frames[i]));
  Object.assign(state, { original, decoded, result, quality: query.get("quality"), frameCache: new Map(), frameErrors,
    frame: Math.min(state.frame, original.frames.length - 1),
    timing: { ...serverTiming(compressed), ...serverTiming(decodedResponse), roundTrip },
    all: frameErrors.reduce((sum, e) => ({ squared: sum.squared + e.squared, max: Math.max(sum.max, e.max),
      count: sum.count + e.count }), { squared: 0, max: 0, count: 0 }) });
  $("frame").max = original.frames.length - 1;
  $("frame").value = state.frame;
  $("frame-field").hidden = original.frames.length < 2;
  const colour = original.samples === 3;
  for (const id of ["preset", "window-width", "window-level"]) $(id).disabled = colour;
  $("window-note").hidden = !colour;
  $("preset").querySelector("[value=header]").disabled = !original.window;
  if (newImage) {
    setPreset(original.window && original.modality === "CT" ? "header" : "auto");
    fit();
  } else if ($("preset").value === "auto") {
    setPreset("auto");
  }
  show();
  document.body.dataset.state = "shown";
}

// No image: what was shown belonged to another image or mode.
function clear() {
  Object.assign(state, { original: null, decoded: null, result: null, frameCache: null, frameErrors: null });
  for (const view of Object.values(views)) view.show(null, null);
  $("figures").querySelector("tbody").replaceChildren();
  $("legend").replaceChildren();
  $("findings-summary").textContent = "No analysis yet.";
  $("frame-field").hidden = true;
  document.body.dataset.state = "ready";
}

$("controls").addEventListener("submit", (event) => { event.preventDefault(); run(); });
$("mode").addEventListener("change", () => {
  $("quality-field").hidden = $("mode").value !== "lossy";
  $("bound-field").hidden = $("mode").value !== "near-lossless";
});

// -- the views --------------------------------------------------------------------------------------------------
function fit() {
  const { rows, columns } = state.original;
  shared.fit(rows, columns, $("original").width, $("original").height);
}

function setPreset(name) {
  $("preset").value = name;
  const { original } = state;
  if (!original) return;
  const window = name === "auto" ? autoWindow(original, original.frames[state.frame])
    : name === "header" ? original.window : PRESETS[name] || state.window;
  setWindow(window);
}

function setWindow(window) {
  state.window = { width: window.width, level: window.level };
  $("window-width").value = Math.round(window.width * 100) / 100;
  $("window-level").value = Math.round(window.level * 100) / 100;
  if (state.original) showImages();
}

$("preset").addEventListener("change", () => setPreset($("preset").value));
for (const id of ["window-width", "window-level"]) {
  $(id).addEventListener("change", () => {
    const width = Number($("window-width").value), level = Number($("window-level").value);
    if (!(width > 0) || !Number.isFinite(level) || $("window-width").value === "" || $("window-level").value === "") {
      message("The window needs a width above 0 and a level (both in modality units, e.g. HU).", "info");
      setWindow(state.window);  // back to the window shown
      return;
    }
    message("");
    $("preset").value = "manual";
    setWindow({ width, level });
  });
}
$("frame").addEventListener("input", () => {
  state.frame = Number($("frame").value);
  if (state.original) show();
});
for (const id of ["show-lesions", "show-organs", "show-boxes"]) {
  $(id).addEventListener("change", () => {
    if (!state.original) return;  // the choice holds for the next image
    state.frameCache = new Map();
    show();
  });
}

interact(Object.values(views), shared, (dx, dy) => {
  if (!state.original || state.original.samples === 3) return;
  $("preset").value = "manual";
  const gain = state.window.width / 200;
  setWindow({ width: Math.max(1, state.window.width + dx * gain), level: state.window.level + dy * gain });
}, () => state.original && fit());

// What a frame's views need beyond the window, made once per frame and run: errors, difference, overlay.
function frameParts(frame) {
  if (!state.frameCache.has(frame)) {
    const { original, decoded, result } = state;
    const before = original.frames[frame], after = decoded.frames[frame];
    const frameErrors = state.frameErrors[frame];
    const findings = result.analysis ? result.analysis.frames.find((f) => f.frame === frame) : null;
    const overlay = findings ? findingsOverlay(findings, state.organClasses,
      { lesions: $("show-lesions").checked, organs: $("show-organs").checked, boxes: $("show-boxes").checked }) : null;
    const difference = renderDifference(original, before, after, Math.max(frameErrors.max, 1));
    state.frameCache.set(frame, { frameErrors, findings, overlay, difference });
  }
  return state.frameCache.get(frame);
}

// Original and decoded through the window (what a window change redraws).
function showImages() {
  const { original, decoded, frame } = state;
  const { overlay } = frameParts(frame);
  views.original.show(render(original, original.frames[frame], state.window), null);
  views.decoded.show(render(decoded, decoded.frames[frame], state.window), overlay && overlay.draw);
}

function show() {
  const { original, result, frame } = state;
  const { frameErrors, findings, overlay, difference } = frameParts(frame);
  showImages();
  views.difference.show(difference, null);
  $("frame-label").textContent = `${frame + 1} / ${original.frames.length}`;
  const operatingPoint = result.mode === "lossy" ? `, quality ${state.quality}, code ${result.quality_code}`
    : result.mode === "near-lossless" ? `, τ = ${result.max_error}` : "";
  $("decoded-caption").textContent = `Decoded (${result.mode}${operatingPoint}) + analysis`;
  $("difference-caption").textContent =
    `Difference (decoded − original), full scale ±${Math.max(frameErrors.max, 1)} (square root)`;
  figures(frameErrors);
  legend(findings, overlay);
}

// Squared error and largest error of decoded against original, in stored units (all samples).
function errors(before, after) {
  let squared = 0, max = 0;
  for (let i = 0; i < before.length; i++) {
    const e = after[i] - before[i];
    squared += e * e;
    if (Math.abs(e) > max) max = Math.abs(e);
  }
  return { squared, max, count: before.length };
}

// PSNR on the native range: peak 2**BitsStored - 1 (mvmic.model.rate_distortion.psnr).
function psnr({ squared, count }, bitsStored) {
  if (squared === 0) return "∞ (identical)";
  const peak = 2 ** bitsStored - 1;
  return `${(10 * Math.log10((peak * peak) / (squared / count))).toFixed(2)} dB`;
}

function figures(frameErrors) {
  const { original, result, timing, all } = state;
  const ms = (value) => (value === undefined ? "–" : `${value.toFixed(1)} ms`);
  const rows = [
    ["image", `${original.columns} × ${original.rows}, ${original.frames.length} frame(s), ${original.samples} sample(s), ` +
      `${original.bitsStored} bits ${original.signed ? "signed" : "unsigned"}${original.modality ? `, ${original.modality}` : ""}`],
    ["bitstream", `${result.bytes.toLocaleString("en")} bytes`],
    ["bits per pixel", result.bits_per_pixel.toFixed(4)],
    ["compression ratio", `${result.compression_ratio.toFixed(2)} : 1`],
    ["PSNR, this frame (native range)", psnr(frameErrors, original.bitsStored)],
    ["PSNR, all frames", psnr(all, original.bitsStored)],
    ["maximum error, this frame", String(frameErrors.max)],
    ["maximum error, all frames", String(all.max)],
    ["encode (server)", ms(timing.encode)],
    ["analysis (server)", ms(timing.analysis)],
    ["decode (server)", ms(timing.decode)],
    ["compress + decompress, round trip", ms(timing.roundTrip)],
  ];
  const body = $("figures").querySelector("tbody");
  body.replaceChildren();
  for (const [name, value] of rows) {
    const row = body.insertRow();
    row.insertCell().textContent = name;
    const cell = row.insertCell();
    cell.textContent = value;
    cell.dataset.figure = name;
  }
}

function legend(findings, overlay) {
  const { result } = state;
  const summary = $("findings-summary");
  const list = $("legend");
  list.replaceChildren();
  if (!result.analysis) {
    summary.textContent = `No analysis: ${result.analysis_skipped || "the service gave none"}.`;
    return;
  }
  const boxes = findings ? findings.boxes.length : 0;
  summary.textContent = `${boxes} box(es) in this frame, read from the bitstream by the task heads ` +
    `(${result.analysis.heads_runtime}).`;
  summary.dataset.boxes = boxes;
  for (const { label, colour } of overlay ? overlay.legend : []) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${colour.join(",")})`;
    item.append(swatch, label);
    list.append(item);
  }
}

// -- tabs and token -----------------------------------------------------------------------------------------------
for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll("[role=tab]")) {
      other.setAttribute("aria-selected", String(other === tab));
      $(other.getAttribute("aria-controls")).hidden = other !== tab;
    }
    if (tab.id === "tab-benchmarks") loadBenchmarks();
  });
}

$("token").value = sessionStorage.getItem("mvmic-token") || "";
setToken($("token").value);
$("token").addEventListener("change", () => {
  setToken($("token").value);
  sessionStorage.setItem("mvmic-token", $("token").value.trim());
});
document.body.dataset.state = "ready";
