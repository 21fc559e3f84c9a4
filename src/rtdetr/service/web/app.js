// The job server's page: an organisation's experiments, the jobs of one with their live status, and
// for one job its loss and mAP curves (SVG drawn here) and the end of its log. It calls the same API
// as any client, with the token the user gives. Every text that comes from the server is set with
// textContent or as an attribute value, never parsed as HTML.
//
// Address: /?org=NAME&experiment=ID&job=ID#token=TOKEN. The fragment never reaches the server; the
// token is kept in this tab's sessionStorage and removed from the address at once.
"use strict";

const API = "api/v1/orgs/";
const ACTIVE = new Set(["Pending", "Running", "Canceling", "Pausing", "Resuming"]);
const REFRESH_MS = 2000;
const LOG_LINES = 50;
const TOKEN_KEY = "rtdetr.token";
const SVG_NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"];
const CHART = { width: 480, height: 260, left: 56, right: 16, top: 30, bottom: 44 };

const state = { org: "", token: "", experiment: "", job: "", active: false, timer: 0, busy: false, again: false };

const byId = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// ------------------------------------------------------------------------- address and token
function storage(key, value) {
  try {
    if (value === undefined) return sessionStorage.getItem(key) || "";
    if (value) sessionStorage.setItem(key, value);
    else sessionStorage.removeItem(key);
  } catch (_) {
    // storage refused (private mode, a file: page): the token lives in this page only
  }
  return value || "";
}

function readAddress() {
  const query = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has("token")) storage(TOKEN_KEY, fragment.get("token"));
  state.token = fragment.get("token") || storage(TOKEN_KEY);
  state.org = query.get("org") || "";
  state.experiment = query.get("experiment") || "";
  state.job = query.get("job") || "";
  writeAddress(); // the token leaves the address bar and the history
}

function writeAddress() {
  const query = new URLSearchParams();
  if (state.org) query.set("org", state.org);
  if (state.experiment) query.set("experiment", state.experiment);
  if (state.job) query.set("job", state.job);
  const text = query.toString();
  history.replaceState(null, "", location.pathname + (text ? "?" + text : ""));
}

// ------------------------------------------------------------------------------------ the API
class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status; // 0: the server could not be reached
  }
}

async function api(path, asText = false) {
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  let response;
  try {
    response = await fetch(API + enc(state.org) + path, { headers, cache: "no-store" });
  } catch (error) {
    throw new ApiError("Cannot reach the server: " + error.message, 0);
  }
  if (!response.ok) throw new ApiError(await describe(response), response.status);
  return asText ? response.text() : response.json();
}

async function describe(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) {
      detail = body.detail.map((d) => (typeof d === "string" ? d : d.msg || JSON.stringify(d))).join("; ");
    } else if (body.detail !== undefined) {
      detail = String(body.detail);
    }
  } catch (_) {
    // not JSON: keep the status text
  }
  if (response.status === 401) {
    return "401 Unauthorized: " + detail + ". Enter the server's token (DATA_DIR/.service/token) above.";
  }
  return response.status + " " + response.statusText + ": " + detail;
}

// ------------------------------------------------------------------------------ DOM helpers
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children); // strings become text nodes
  return node;
}

function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

function showMessage(text) {
  const message = byId("message");
  message.textContent = text;
  message.hidden = !text;
}

const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
const shortId = (id) => String(id).slice(0, 8);
const number = (v) => (isNumber(v) ? String(Number(v.toPrecision(4))) : String(v));
const when = (iso) => (iso ? String(iso).replace("T", " ").slice(0, 19) : "");

// status.json counts epochs from 0; the page counts them from 1 ("3/3" for a finished 3-epoch run)
function epochText(job) {
  if (!Number.isInteger(job.epoch)) return "";
  return job.epoch + 1 + (job.max_epoch ? "/" + job.max_epoch : "");
}

function kpiText(kpi) {
  return Object.entries(kpi || {})
    .map(([key, value]) => key + " " + number(value))
    .join(", ");
}

// ---------------------------------------------------------------------------------- rendering
function renderExperiments(experiments) {
  const items = experiments.map((e) => {
    const button = el("button", { type: "button", "data-experiment": e.id, title: e.id }, e.name);
    if (e.id === state.experiment) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => select(e.id, ""));
    return el("li", {}, button);
  });
  byId("experiment-list").replaceChildren(...items);
  byId("experiments-empty").hidden = experiments.length > 0;
  const chosen = experiments.find((e) => e.id === state.experiment);
  byId("jobs-of").textContent = chosen ? "of " + chosen.name : "";
}

function renderJobs(jobs) {
  const rows = jobs.map((job) => {
    const row = el(
      "tr",
      { "data-job": job.id, tabindex: "0" },
      el("td", { class: "id", title: job.id }, shortId(job.id)),
      el("td", {}, job.action),
      el("td", {}, job.name || ""),
      el("td", { class: "status", "data-status": job.status, title: job.message || "" }, job.status),
      el("td", { class: "epoch" }, epochText(job)),
      el("td", { class: "kpi" }, kpiText(job.kpi)),
      el("td", {}, when(job.created_at)),
    );
    if (job.id === state.job) row.setAttribute("aria-selected", "true");
    row.addEventListener("click", () => select(state.experiment, job.id));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter") select(state.experiment, job.id);
    });
    return row;
  });
  byId("job-table").tBodies[0].replaceChildren(...rows);
  byId("jobs-empty").hidden = jobs.length > 0 || !state.experiment;
}

async function renderJob(job) {
  const base = "/experiments/" + enc(state.experiment) + "/jobs/" + enc(job.id);
  const [rows, log] = await Promise.all([api(base + "/metrics"), api(base + "/logs?tail=" + LOG_LINES, true)]);
  byId("job-title").textContent = [job.action, job.name, shortId(job.id), "(" + job.status + ")"]
    .filter(Boolean)
    .join(" ");
  byId("job-message").textContent = job.status_message || job.message || "";
  drawChart(byId("loss-chart"), rows, (key) => /loss/i.test(key), "loss", false);
  drawChart(byId("map-chart"), rows, (key) => /mAP/.test(key), "mAP", true);
  byId("log-tail").textContent = log;
  byId("job").hidden = false;
}

// ----------------------------------------------------------------------------------- charts
function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  const f = raw / power;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * power;
}

// round tick values from lo to hi (inclusive) about `count` steps apart
function ticks(lo, hi, count, integer) {
  if (hi === lo) {
    if (integer) return [lo];
    const pad = Math.abs(lo) * 0.1 || 1;
    lo -= pad;
    hi += pad;
  }
  let step = niceStep((hi - lo) / count);
  if (integer) step = Math.max(1, Math.round(step));
  const first = Math.floor(lo / step + 1e-9) * step;
  const out = [];
  for (let i = 0; first + (i - 1) * step < hi - step * 1e-9; i++) out.push(Number((first + i * step).toPrecision(12)));
  return out;
}

// one polyline (and a dot per epoch) for each key of `rows` that `wanted` accepts
function drawChart(svg, rows, wanted, label, fromZero) {
  const { width, height, left, right, top, bottom } = CHART;
  const keys = [];
  for (const row of rows) {
    for (const [key, value] of Object.entries(row)) {
      if (key !== "epoch" && wanted(key) && isNumber(value) && !keys.includes(key)) keys.push(key);
    }
  }
  const series = keys.map((key) => ({
    key,
    points: rows.filter((r) => Number.isInteger(r.epoch) && isNumber(r[key])).map((r) => [r.epoch + 1, r[key]]),
  }));
  svg.replaceChildren();
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    svg.append(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "no epochs yet"));
    return;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const xTicks = ticks(Math.min(...xs), Math.max(...xs), 6, true);
  const yLow = fromZero ? Math.min(0, ...ys) : Math.min(...ys);
  const yTicks = ticks(yLow, fromZero && Math.max(...ys) <= 0 ? 1 : Math.max(...ys), 5, false);
  const [x0, x1, y0, y1] = [xTicks[0], xTicks.at(-1), yTicks[0], yTicks.at(-1)];
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const sx = (x) => left + (x1 === x0 ? plotW / 2 : ((x - x0) / (x1 - x0)) * plotW);
  const sy = (y) => top + plotH - ((y - y0) / (y1 - y0)) * plotH;
  const f = (v) => v.toFixed(1);
  const mid = top + plotH / 2;

  const grid = svgEl("g", { class: "grid" });
  const axes = svgEl("g", { class: "axis" });
  for (const y of yTicks) {
    grid.append(svgEl("line", { x1: left, x2: left + plotW, y1: f(sy(y)), y2: f(sy(y)) }));
    axes.append(svgEl("text", { x: left - 6, y: f(sy(y) + 4), "text-anchor": "end" }, number(y)));
  }
  for (const x of xTicks) {
    axes.append(svgEl("line", { x1: f(sx(x)), x2: f(sx(x)), y1: top + plotH, y2: top + plotH + 4 }));
    axes.append(svgEl("text", { x: f(sx(x)), y: top + plotH + 18, "text-anchor": "middle" }, String(x)));
  }
  axes.append(
    svgEl("line", { x1: left, x2: left, y1: top, y2: top + plotH }),
    svgEl("line", { x1: left, x2: left + plotW, y1: top + plotH, y2: top + plotH }),
    svgEl("text", { x: left + plotW / 2, y: height - 6, "text-anchor": "middle", class: "label" }, "epoch"),
    svgEl("text", { x: 14, y: mid, "text-anchor": "middle", class: "label", transform: `rotate(-90 14 ${mid})` }, label),
  );
  svg.append(grid, axes);

  let legendX = left;
  series.forEach(({ key, points }, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const line = svgEl("g", { class: "series", "data-series": key });
    line.append(
      svgEl("polyline", {
        "data-series": key,
        points: points.map(([x, y]) => f(sx(x)) + "," + f(sy(y))).join(" "),
        fill: "none",
        stroke: colour,
      }),
    );
    for (const [x, y] of points) {
      const dot = svgEl("circle", { cx: f(sx(x)), cy: f(sy(y)), r: 3, fill: colour });
      dot.append(svgEl("title", {}, key + ", epoch " + x + ": " + number(y)));
      line.append(dot);
    }
    svg.append(line);
    svg.append(
      svgEl("line", { x1: legendX, x2: legendX + 16, y1: 12, y2: 12, stroke: colour, class: "legend" }),
      svgEl("text", { x: legendX + 20, y: 16, class: "legend" }, key),
    );
    legendX += 32 + key.length * 7;
  });
}

// ------------------------------------------------------------------------------------ loading
async function load() {
  if (!state.org) {
    showMessage("Enter the organisation and its token.");
    return;
  }
  try {
    const experiments = await api("/experiments");
    if (!experiments.some((e) => e.id === state.experiment)) {
      state.experiment = experiments.length ? experiments.at(-1).id : "";
      state.job = "";
    }
    renderExperiments(experiments);
    const jobs = state.experiment ? await api("/experiments/" + enc(state.experiment) + "/jobs") : [];
    const job = jobs.find((j) => j.id === state.job);
    if (!job) state.job = "";
    writeAddress();
    renderJobs(jobs);
    if (job) await renderJob(job);
    else byId("job").hidden = true;
    state.active = jobs.some((j) => ACTIVE.has(j.status));
    showMessage("");
  } catch (error) {
    showMessage(error instanceof ApiError ? error.message : "Error: " + error.message);
    if (!(error instanceof ApiError) || error.status !== 0) state.active = false; // a refusal: stop
  }
  clearTimeout(state.timer);
  if (state.active) state.timer = setTimeout(refresh, REFRESH_MS);
}

// one load at a time; a request during one runs once it ends
async function refresh() {
  clearTimeout(state.timer);
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  try {
    do {
      state.again = false;
      await load();
    } while (state.again);
  } finally {
    state.busy = false;
  }
}

function select(experiment, job) {
  state.experiment = experiment;
  state.job = job;
  refresh();
}

function start() {
  readAddress();
  const form = byId("login");
  form.elements.org.value = state.org;
  if (state.token) form.elements.token.placeholder = "(kept for this tab)";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const org = form.elements.org.value.trim();
    if (org !== state.org) [state.experiment, state.job] = ["", ""];
    state.org = org;
    if (form.elements.token.value) state.token = storage(TOKEN_KEY, form.elements.token.value);
    form.elements.token.value = "";
    form.elements.token.placeholder = state.token ? "(kept for this tab)" : "";
    refresh();
  });
  refresh();
}

start();
