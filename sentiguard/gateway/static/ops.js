// sentiguard operations page: polls GET /ops/data every 2 s and shows the workers, three
// charts of the last minutes (ops.charts.js, uPlot) and the watchdog's timeline. Plain ES
// modules, no build step, nothing fetched beyond this gateway. The API key is the one the
// web UI keeps (api.js); text from the service reaches the page only as text (ui.js el()).
import { $, el } from "./ui.js";
import { apiKey, saveKey } from "./api.js";
import { Charts, PALETTE } from "./ops.charts.js";

const POLL_MS = 2000;
const TIMELINE_SHOWN = 60;

const STATES = {
  ready: ["就绪", "ready", "ok"],
  starting: ["启动中", "starting", "warn"],
  loading: ["加载中", "loading", "warn"],
  recycling: ["回收中", "recycling", "warn"],
  draining: ["排空中", "draining", "warn"],
  reloading: ["重载中", "reloading", "warn"],
  backoff: ["退避中", "backoff", "bad"],
  parked: ["已停放", "parked", "bad"],
  stopped: ["已停止", "stopped", "bad"],
  down: ["不可用", "down", "bad"],
};
const BREAKER = {
  closed: ["闭合", "closed", "ok"],
  open: ["断开", "open", "bad"],
  half_open: ["半开", "half-open", "warn"],
};
const CAUSES = {
  memory: ["内存", "memory"],
  memory_critical: ["内存", "memory critical"],
  hang: ["卡死", "hang"],
  crash: ["崩溃", "crash"],
  reload: ["重载", "reload"],
  cannot_start: ["无法启动", "cannot start"],
  ready: ["就绪", "ready"],
  memory_hold: ["内存", "held"],
  recycle_held: ["内存", "held"],
  worker_stopped: ["停止", "stopped"],
};

// Chinese, then English marked lang="en" (screen readers switch voice).
function bi(tag, className, zh, en) {
  const node = el(tag, className);
  if (zh) node.append(`${zh} `);
  const span = el("span", null, en);
  span.lang = "en";
  node.append(span);
  return node;
}

function badge(map, key) {
  const [zh, en, tone] = map[key] || ["", String(key ?? "—"), "warn"];
  return bi("span", `badge ${tone || "neutral"}`, zh, en);
}

const mb = (v) => (v == null ? "—" : `${Math.round(v)}`);
const clock = (iso) => new Date(iso).toLocaleTimeString("en-GB", { hour12: false });

function cell(row, label, ...children) {
  const td = el("td");
  td.dataset.label = label; // shown before the value when the table becomes cards
  td.append(...children);
  row.append(td);
  return td;
}

function meter(value, max) {
  const node = el("meter");
  node.min = 0;
  node.max = Math.max(max || 1, 1);
  node.value = Math.min(value || 0, node.max);
  // Green below 60 %, amber to 85 %, red above: how close to the limit it runs.
  node.low = 0.6 * node.max;
  node.high = 0.85 * node.max;
  node.optimum = 0;
  return node;
}

function workerRow(w, i) {
  const row = el("tr");
  const name = el("strong", "worker-name", w.name);
  name.style.borderColor = PALETTE[i % PALETTE.length];
  const nameCell = cell(row, "进程 Worker", name);
  if (w.state !== "ready" && w.reason) nameCell.append(el("div", "hint reason", w.reason));
  cell(row, "状态 State", badge(STATES, w.state));
  cell(row, "PID", el("span", "num", w.pid ?? "—"));
  const used = w.uss_mb ?? w.rss_mb;
  const memory = el("span", "num", `${mb(w.uss_mb)} / ${mb(w.rss_mb)} MB`);
  const limit = bi("span", "hint", "限制", `limit ${mb(w.memory_limit_mb)} MB`);
  cell(row, "内存 Memory", memory, meter(used, w.memory_limit_mb), limit);
  const flight = el("span", "num", `${w.in_flight} / ${w.capacity}`);
  cell(row, "在途 In flight", flight, meter(w.in_flight, w.capacity));
  cell(row, "熔断器 Breaker", badge(BREAKER, w.breaker));
  const restarts = Object.entries(w.restarts || {}).filter(([, n]) => n > 0);
  const list = el("span", "restarts");
  if (!restarts.length) list.append("—");
  for (const [cause, n] of restarts) {
    const [zh, en] = CAUSES[cause] || ["", cause];
    list.append(bi("span", "restart", zh, `${en} ${n}`));
  }
  cell(row, "重启 Restarts", list);
  return row;
}

function serviceLine(data) {
  const f = data.fallback;
  const shed = data.series.shed.reduce((a, v) => a + (v || 0), 0) * data.interval_s;
  const dog = data.watchdog;
  const node = $("service-line");
  node.replaceChildren(
    bi("span", null, "备用模型", `fallback ${f.in_use} / ${f.capacity} in use`),
    " · ",
    bi("span", null, "拒绝", `shed ${Math.round(shed)} in ${data.window_s / 60} min`),
    " · ",
    dog.stale
      ? bi("span", "warn-text", "看门狗无报告", "watchdog silent")
      : bi("span", null, "看门狗", `watchdog pid ${dog.pid}`),
  );
  // What `up` reports about the gateway processes and the watchdog it keeps: each problem
  // (a FATAL program and when `up` restarts it, a crash loop) in its own line.
  const problems = programProblems(data);
  $("program-problems").hidden = problems.length === 0;
  $("program-problems").replaceChildren(...problems.map((text) => {
    const item = el("li", "warn-text", text);
    item.lang = "en";
    return item;
  }));
}

function programProblems(data) {
  const report = data.programs;
  if (!report) return [];
  if (report.stale) return [`\`up\` has not reported for ${Math.round(report.age_s)} s: is it running?`];
  return report.problems || [];
}

function renderTimeline(incidents) {
  const list = $("timeline");
  $("timeline-empty").hidden = incidents.length > 0;
  list.replaceChildren(...incidents.slice(0, TIMELINE_SHOWN).map((incident) => {
    const item = el("li", incident.open ? "incident open" : "incident");
    const time = el("time", null, clock(incident.ts));
    time.dateTime = incident.ts;
    time.title = incident.ts;
    const [zh, en] = CAUSES[incident.cause] || ["", incident.cause];
    const text = el("span", "incident-text", incident.summary);
    text.lang = "en";
    item.append(time, bi("span", `badge cause ${incident.cause}`, zh, en), text);
    if (incident.open) item.append(bi("span", "badge warn", "进行中", "in progress"));
    return item;
  }));
}

function setStatus(tone, zh, en) {
  const pill = $("ops-status");
  pill.replaceChildren(...bi("span", null, zh, en).childNodes);
  pill.className = `status-pill ${tone}`;
}

function render(data) {
  $("workers-table").tBodies[0].replaceChildren(...data.workers.map(workerRow));
  serviceLine(data);
  renderTimeline(data.incidents);
  charts.show(data);
  for (const id of ["window-min", "window-min-en"]) $(id).textContent = data.window_s / 60;
  const down = data.workers.filter((w) => w.state !== "ready").map((w) => `${w.name} ${w.state}`);
  const at = new Date(data.now * 1000).toLocaleTimeString("en-GB", { hour12: false });
  const problems = programProblems(data);
  if (data.watchdog.stale) setStatus("warn", "看门狗无报告", `Watchdog silent · ${at}`);
  else if (problems.length) setStatus("warn", "进程异常", `${problems[0]} · ${at}`);
  else if (down.length) setStatus("warn", "降级", `Degraded: ${down.join(", ")} · ${at}`);
  else setStatus("ok", "正常", `All workers ready · ${at}`);
  document.documentElement.dataset.opsRendered = String(++rendered);
}

class NeedKey extends Error {}

async function fetchData() {
  const headers = {};
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  const response = await fetch("/ops/data", { headers, cache: "no-store" });
  if (response.status === 401) throw new NeedKey();
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

async function poll() {
  clearTimeout(timer);
  try {
    render(await fetchData());
    $("key-panel").hidden = true;
  } catch (e) {
    if (e instanceof NeedKey) {
      $("key-panel").hidden = false;
      setStatus("bad", "需要 API 密钥", "API key required: enter it below the header");
    } else {
      setStatus("bad", "无法连接", "Service unreachable: is `sentiguard up` running?");
    }
  } finally {
    clearTimeout(timer); // a poll started by the key form may have set one meanwhile
    timer = setTimeout(poll, POLL_MS);
  }
}

let timer = 0;
let rendered = 0;
const charts = new Charts({
  memory: $("memory-chart"), answers: $("answers-chart"), flight: $("flight-chart"),
});

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("key-input").value.trim();
  const error = $("key-error");
  error.hidden = Boolean(key);
  error.textContent = key ? "" : "请输入密钥 Enter the key first.";
  if (!key) return;
  saveKey(key);
  $("key-input").value = "";
  poll();
});
poll();
