// The benchmarks tab: the last `mvmic bench rd` (its R-D plot and median BD-rates against JPEG 2000, by modality)
// and the last `mvmic bench tasks` (the heads' scores per quality, and its figure of frames), from /v1/benchmarks.

import { ApiError, call } from "./api.js";

const $ = (id) => document.getElementById(id);

// (Re)loads both sections: each opening of the tab shows the latest runs.
export async function loadBenchmarks() {
  await Promise.all([
    section("rd-status", ["rd-bd", "rd-plot"], async () => {
      const rd = await (await call("Benchmarks", "/v1/benchmarks/rd")).json();
      bdTable(rd);
      await image("rd-plot", "/v1/benchmarks/rd.png").catch(() => {});  // the table stands without the plot
      return `${rd.split} split, ${rd.frames} frames, ${Math.round(rd.wall_seconds)} s. Median per-frame BD-rate ` +
        "(PSNR on the native range; negative: fewer bits for the same PSNR).";
    }),
    section("tasks-status", ["tasks-table", "tasks-figure"], async () => {
      const tasks = await (await call("Benchmarks", "/v1/benchmarks/tasks")).json();
      tasksTable(tasks);
      await image("tasks-figure", "/v1/benchmarks/tasks.png").catch(() => {});  // the figure is optional
      const synthetic = tasks.every ? `every ${tasks.every}th synthetic frame` : "every synthetic frame";
      return `${tasks.split} split, ${synthetic}; organ labels: ${tasks.organ_labels}.`;
    }),
  ]);
}

// Loads a section; what it showed before stays hidden unless this load shows it again.
async function section(statusId, shownIds, load) {
  for (const id of shownIds) $(id).hidden = true;
  $(statusId).textContent = "Loading…";
  try {
    $(statusId).textContent = await load();
  } catch (error) {
    for (const id of shownIds) $(id).hidden = true;
    $(statusId).textContent = error instanceof ApiError ? error.message
      : `The results could not be shown: ${error.message}.`;  // a results file of another shape
  }
}

async function image(id, path) {
  $(id).hidden = true;
  const blob = await (await call("Benchmarks", path)).blob();  // fetched with the token, which <img src> cannot send
  if ($(id).src) URL.revokeObjectURL($(id).src);
  $(id).src = URL.createObjectURL(blob);
  $(id).hidden = false;
}

function fill(table, header, rows) {
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  for (const name of header) {
    const cell = document.createElement("th");
    cell.textContent = name;
    head.append(cell);
  }
  const body = table.createTBody();
  for (const values of rows) {
    const row = body.insertRow();
    for (const value of values) row.insertCell().textContent = value;
  }
  table.hidden = false;
}

const percent = (value) => (value === null || value === undefined ? "–" : `${value >= 0 ? "+" : ""}${value.toFixed(1)} %`);
const score = (value) => (value === null || value === undefined ? "–" : value.toFixed(3));

function bdTable(rd) {
  const modalities = [...new Set(rd.bd_vs_reference.flatMap((row) => Object.keys(row.by_modality || {})))].sort();
  fill($("rd-bd"), ["codec", "against", "frames", "all", ...modalities],
    rd.bd_vs_reference.map((row) => [row.codec, row.reference, row.frames, percent(row.median_bd_rate_percent),
      ...modalities.map((m) => percent(row.by_modality?.[m]?.median_bd_rate_percent))]));
}

function tasksTable(tasks) {
  const stages = [...new Set(Object.values(tasks.sets).flatMap((set) => set.rows.flatMap((row) => Object.keys(row.stages))))];
  const rows = [];
  for (const [name, set] of Object.entries(tasks.sets)) {
    const organs = set.key_score !== "lesion Dice";
    for (const row of set.rows) {
      const first = Object.values(row.stages)[0];
      rows.push([name, set.key_score, row.quality, first.bpp.toFixed(3), ...stages.flatMap((stage) => {
        const s = row.stages[stage];
        if (!s) return ["–", "–"];
        return organs ? [score(s.mean_organ_dice), score(s.organ_ap50)] : [score(s.lesion.dice), score(s.lesion.ap50)];
      })]);
    }
  }
  fill($("tasks-table"), ["set", "score", "quality", "bpp", ...stages.flatMap((stage) => [`${stage}: score`, `${stage}: AP50`])],
    rows);
}
