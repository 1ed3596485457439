// Batch runs: a file's reviews streamed through POST /analyze {"texts"} in chunks, two
// in flight, with progress, a summary, the first rows in a table, and a CSV download.
// One result row per input row, in order, like `sentiguard analyze --file`.
import {
  $, el, bilingual, setWords, showError, pct, sleep, LABELS, ROW_ERRORS, showDegraded,
} from "./ui.js";
import { ApiError, analyze, chunkSize, codePoints, describeError, limits } from "./api.js";
import { readReviews } from "./reviews.js";

const TABLE_ROWS = 200;
const LANES = 2; // chunks in flight at once: one per default primary worker
const MAX_SHED_WAIT_MS = 120000;
const MAX_NETWORK_RETRIES = 5;
const RESULT_COLUMNS = ["text", "label", "label_zh", "score", "model", "degraded", "reason"];

const failedRow = (text, code) => ({
  text, label: "", label_zh: "", score: "", model: "", degraded: "", reason: code,
});

// Send `indexes` of `texts` and store each answer in results[i]. 413 splits the
// chunk; another 4xx asks one by one so only the bad row fails; 503 waits Retry-After.
async function sendChunk(job, indexes) {
  const texts = indexes.map((i) => job.texts[i].trim());
  let shedWaitMs = 0;
  let networkRetries = 0;
  for (;;) {
    try {
      const body = await analyze({ texts }, job.abort.signal);
      body.results.forEach((r, k) => {
        job.results[indexes[k]] = { ...r, text: job.texts[indexes[k]] };
      });
      return;
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      if (e.status === 503 && shedWaitMs < MAX_SHED_WAIT_MS) {
        job.note(`服务繁忙，${e.retryAfter} 秒后重试 Service busy (shedding load): retrying in ${e.retryAfter} s…`);
        shedWaitMs += e.retryAfter * 1000;
        await sleep(e.retryAfter * 1000);
        continue;
      }
      if (e.status === 0 && networkRetries < MAX_NETWORK_RETRIES) {
        networkRetries++;
        job.note("连接中断，重试中 Connection lost: retrying…");
        await sleep(1000);
        continue;
      }
      if ((e.status === 413 || e.code === "too_many_texts") && indexes.length > 1) {
        const half = Math.ceil(indexes.length / 2);
        await sendChunk(job, indexes.slice(0, half));
        await sendChunk(job, indexes.slice(half));
        return;
      }
      if (e.status >= 400 && e.status < 500 && e.status !== 401) {
        if (indexes.length === 1) {
          job.results[indexes[0]] = failedRow(job.texts[indexes[0]], e.code);
          return;
        }
        for (const i of indexes) await sendChunk(job, [i]);
        return;
      }
      throw e;
    }
  }
}

function planChunks(job) {
  const chunks = [];
  let part = [];
  let bytes = 0;
  const maxBytes = limits.maxBodyBytes / 2;
  job.texts.forEach((text, i) => {
    const trimmed = text.trim();
    if (!trimmed) {
      job.results[i] = failedRow(text, "empty_text");
      return;
    }
    if (codePoints(trimmed) > limits.maxChars) {
      job.results[i] = failedRow(text, "text_too_long");
      return;
    }
    const size = 3 * trimmed.length + 8; // UTF-8 upper bound for BMP text
    if (part.length && (part.length >= chunkSize() || bytes + size > maxBytes)) {
      chunks.push(part);
      part = [];
      bytes = 0;
    }
    part.push(i);
    bytes += size;
  });
  if (part.length) chunks.push(part);
  return chunks;
}

let currentJob = null;

export function cancelBatch() {
  if (currentJob) {
    const job = currentJob;
    currentJob = null;
    job.abort.abort();
  }
}

export async function runBatch(event) {
  event.preventDefault();
  showError("batch-error", "");
  const file = $("batch-file").files[0];
  if (!file) {
    showError("batch-error", "请先选择文件 Choose a CSV or TXT file first.");
    $("batch-file").focus();
    return;
  }
  let texts;
  try {
    texts = await readReviews(file);
  } catch (e) {
    showError("batch-error", e.message);
    return;
  }
  const started = performance.now();
  const job = {
    name: file.name, texts, results: new Array(texts.length), abort: new AbortController(),
    done: 0, noteText: "",
    note(text) {
      this.noteText = text;
      updateProgress(this);
    },
  };
  currentJob = job;
  $("batch-result").hidden = true;
  $("batch-progress-box").hidden = false;
  $("batch-start").disabled = true;
  $("batch-cancel").hidden = false;
  const chunks = planChunks(job);
  job.done = texts.length - chunks.reduce((n, c) => n + c.length, 0);
  updateProgress(job);
  let next = 0;
  const lane = async () => {
    while (next < chunks.length && currentJob === job) {
      const indexes = chunks[next++];
      await sendChunk(job, indexes);
      job.done += indexes.length;
      job.noteText = "";
      updateProgress(job);
    }
  };
  try {
    await Promise.all(Array.from({ length: LANES }, lane));
    job.seconds = (performance.now() - started) / 1000;
    showBatchResult(job);
  } catch (e) {
    job.abort.abort();
    const why = e.name === "AbortError" ? "已取消 Cancelled." : describeError(e);
    showError("batch-error", `${why} (${job.done} / ${texts.length} rows done; nothing to download)`);
  } finally {
    if (currentJob === job) currentJob = null;
    $("batch-start").disabled = false;
    $("batch-cancel").hidden = true;
  }
}

function updateProgress(job) {
  const total = job.texts.length;
  const bar = $("batch-progress");
  bar.max = total;
  bar.value = job.done;
  const base = `已完成 Done ${job.done} / ${total} (${pct(job.done / total)})`;
  setWords($("batch-progress-text"), job.noteText ? `${base} · ${job.noteText}` : base);
}

function showBatchResult(job) {
  const rows = job.results;
  const count = (f) => rows.filter(f).length;
  const positive = count((r) => r.label === "positive");
  const negative = count((r) => r.label === "negative");
  const models = {};
  const reasons = {};
  for (const r of rows) {
    if (r.model) models[r.model] = (models[r.model] || 0) + 1;
    if (r.degraded === true) reasons[r.reason] = (reasons[r.reason] || 0) + 1;
  }
  const answered = positive + negative;
  const entries = [
    ["总行数 Rows", rows.length],
    ["正面 Positive", positive],
    ["负面 Negative", negative],
    ["正面占比 Share positive", answered ? pct(positive / answered) : "n/a"],
    ["失败 Failed", rows.length - answered],
    ["模型 Models", Object.entries(models).map(([m, n]) => `${m} ${n}`).join(", ") || "none"],
    ["降级 Degraded", Object.entries(reasons).map(([r, n]) => `${r} ${n}`).join(", ") || "0"],
    ["用时 Time", `${job.seconds.toFixed(1)} s`],
  ];
  const summary = $("batch-summary");
  summary.replaceChildren();
  for (const [term, value] of entries) {
    const div = el("div");
    div.append(bilingual("dt", null, term), bilingual("dd", null, value));
    summary.append(div);
  }
  $("batch-table").tBodies[0].replaceChildren(...rows.slice(0, TABLE_ROWS).map(tableRow));
  setWords($("batch-table-note"), rows.length > TABLE_ROWS
    ? `显示前 ${TABLE_ROWS} 行 Showing the first ${TABLE_ROWS} of ${rows.length} rows; download for all.`
    : `共 ${rows.length} 行 All ${rows.length} rows shown.`);
  $("batch-result").hidden = false;
  $("batch-download").onclick = () => download(job);
  if (Object.keys(reasons).length) showDegraded(Object.keys(reasons)[0]);
}

// One result as a table row; below 600 px wide style.css lays it out as a card, so each
// cell has a class naming its column, the model cell a caption shown only on a card, and
// the rows explicit ARIA roles (a table styled display:block keeps its semantics).
function tableRow(r, i) {
  const tr = el("tr", r.label ? `is-${r.label}` : "failed");
  const note = r.label
    ? (r.degraded ? `降级 degraded: ${r.reason}` : "")
    : (ROW_ERRORS[r.reason] || `失败 failed: ${r.reason}`);
  const model = bilingual("td", "model", r.model || "—");
  model.prepend(bilingual("span", "card-caption", "模型 Model: "));
  tr.append(el("td", "num idx", i + 1), el("td", "text", r.text),
    bilingual("td", "sentiment", r.label ? LABELS[r.label] : "—"),
    el("td", "num score", r.label ? pct(r.score) : "—"), model, bilingual("td", "note", note));
  tr.setAttribute("role", "row");
  for (const td of tr.cells) td.setAttribute("role", "cell");
  return tr;
}

// A text a spreadsheet would run as a formula (= + - @, or a leading tab or CR) gets a
// leading apostrophe: shown, not evaluated (OWASP), as `sentiguard analyze --out` does.
function csvCell(value) {
  if (value === null || value === undefined) return "";
  let s = String(value);
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

// The same columns as `sentiguard analyze --out`; a UTF-8 BOM so spreadsheet programs
// read the Chinese text correctly.
function download(job) {
  const lines = [RESULT_COLUMNS.join(",")];
  for (const r of job.results) lines.push(RESULT_COLUMNS.map((c) => csvCell(r[c])).join(","));
  const blob = new Blob(["\uFEFF" + lines.join("\r\n") + "\r\n"], {
    type: "text/csv;charset=utf-8",
  });
  const url = URL.createObjectURL(blob);
  const a = el("a");
  a.href = url;
  a.download = `${job.name.replace(/\.[^.]+$/, "")}.results.csv`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
