// sentiguard web UI: one review at a time (a conversation kept in localStorage) and batch
// files streamed in chunks through POST /analyze {"texts"}. Plain JS, no build step, no
// network beyond this gateway.
//
// Contract kept everywhere below: user text reaches the page only through textContent
// (the el() helper); innerHTML is never used. Batch rules match `sentiguard analyze --file`
// (sentiguard/analyze.py): one result row per input row, in order; an empty or too-long
// row keeps its place with an error code in `reason`.
"use strict";

(() => {
  const KEY_STORAGE = "sentiguard.apiKey";
  const HISTORY_STORAGE = "sentiguard.history.v1";
  const HISTORY_MAX = 200;
  const MAX_FILE_BYTES = 20 * 1024 * 1024;
  const MAX_ROWS = 100000;
  const TABLE_ROWS = 200;
  const CHUNK_TEXTS = 64; // fits the primary's deadline; see CHUNK_TEXTS in analyze.py
  const LANES = 2; // chunks in flight at once: one per default primary worker
  const MAX_SHED_WAIT_MS = 120000;
  const MAX_NETWORK_RETRIES = 5;
  const TEXT_COLUMNS = ["review", "text", "sentence"]; // same order as sentiguard.data
  const RESULT_COLUMNS = ["text", "label", "label_zh", "score", "model", "degraded", "reason"];
  // The gateway's defaults; refined from /openapi.json when it states them.
  const limits = { maxTexts: 256, maxChars: 5000, maxBodyBytes: 2000000 };

  const LABELS = { positive: "正面 Positive", negative: "负面 Negative" };
  const MODELS = {
    primary: "主模型 primary (StructBERT)",
    fallback: "备用模型 fallback (jieba + scikit-learn)",
  };
  const REASONS = {
    primary_down: "the primary model is down (no worker is ready) · 主模型不可用",
    overloaded: "every primary worker is busy (overloaded) · 主模型繁忙",
    primary_timeout: "the primary model did not answer in time · 主模型超时",
    primary_error: "the primary model answered with an error · 主模型出错",
  };
  const ROW_ERRORS = {
    empty_text: "空评论 empty review",
    text_too_long: "评论过长 review too long",
  };

  const $ = (id) => document.getElementById(id);

  // The only way this file puts text on the page: as a text node, never as markup.
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function showError(id, message) {
    const node = $(id);
    node.textContent = message;
    node.hidden = !message;
  }

  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const codePoints = (s) => (s.length > limits.maxChars / 2 ? [...s].length : s.length);

  function reasonWords(reason) {
    return REASONS[reason] || String(reason || "unknown");
  }

  // ---------------------------------------------------------------- API access

  class ApiError extends Error {
    constructor(status, code, message, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  function apiKey() {
    try {
      return localStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return "";
    }
  }

  // POST /analyze; resolves with the JSON body of a 200, rejects with ApiError (HTTP
  // errors, status 0 when the service cannot be reached). `signal` cancels it.
  async function analyze(payload, signal) {
    const headers = { "Content-Type": "application/json" };
    const key = apiKey();
    if (key) headers["X-API-Key"] = key;
    let response;
    try {
      response = await fetch("/analyze", {
        method: "POST", headers, body: JSON.stringify(payload), signal,
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "unreachable",
        "无法连接服务 Cannot reach the service: is `sentiguard up` running?");
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (response.ok && body) return body;
    const error = (body && body.error) || {};
    const retryAfter = Number(response.headers.get("Retry-After")) || 1;
    if (response.status === 401) askForKey();
    throw new ApiError(response.status, error.code || `http_${response.status}`,
      error.message || `HTTP ${response.status}`, retryAfter);
  }

  function describeError(e) {
    if (e.status === 401) return "需要 API 密钥 An API key is required: enter it above, then try again.";
    if (e.status === 503) {
      return `服务繁忙 The service is shedding load: try again in ${e.retryAfter} s.`;
    }
    return e.message;
  }

  function askForKey() {
    $("key-panel").hidden = false;
    $("key-input").focus();
  }

  // Learn the real caps when /openapi.json states them (maxItems on texts, maxLength on
  // text); otherwise keep the documented defaults.
  async function loadLimits() {
    try {
      const response = await fetch("/openapi.json");
      if (response.ok) findLimits(await response.json(), 0);
    } catch {
      /* the defaults stand */
    }
    limits.maxTexts = Math.max(1, limits.maxTexts);
    for (const node of document.querySelectorAll(".limit-chars")) {
      node.textContent = String(limits.maxChars);
    }
    for (const node of document.querySelectorAll(".limit-chunk")) {
      node.textContent = String(chunkSize());
    }
    for (const node of document.querySelectorAll(".limit-file-mb")) {
      node.textContent = String(MAX_FILE_BYTES / 1048576);
    }
    for (const node of document.querySelectorAll(".limit-rows")) {
      node.textContent = MAX_ROWS.toLocaleString("en-US");
    }
    $("review-input").maxLength = limits.maxChars;
  }

  function findLimits(node, depth) {
    if (!node || typeof node !== "object" || depth > 12) return;
    for (const [key, value] of Object.entries(node)) {
      if (value && typeof value === "object") {
        if (key === "texts" && Number.isInteger(value.maxItems)) limits.maxTexts = value.maxItems;
        if (key === "text" && Number.isInteger(value.maxLength)) limits.maxChars = value.maxLength;
        findLimits(value, depth + 1);
      }
    }
  }

  const chunkSize = () => Math.min(CHUNK_TEXTS, limits.maxTexts);

  async function pollHealth() {
    const pill = $("service-status");
    try {
      const response = await fetch("/health");
      const body = await response.json();
      if (body.status === "ok") {
        pill.textContent = "服务正常 Service OK";
        pill.title = "";
        pill.className = "status-pill ok";
      } else {
        // /health gives one sentence per reason; the first is the headline, all are in
        // the tooltip.
        const reasons = (body.reasons || []).map((r) => reasonWords(r.reason || r));
        pill.textContent = `服务降级 Service degraded${reasons.length ? `: ${reasons[0]}` : ""}`;
        pill.title = reasons.join("\n");
        pill.className = "status-pill warn";
      }
    } catch {
      pill.textContent = "无法连接 Service unreachable";
      pill.className = "status-pill bad";
    }
  }

  // ---------------------------------------------------------------- single review + history

  function loadHistory() {
    try {
      const items = JSON.parse(localStorage.getItem(HISTORY_STORAGE) || "[]");
      return Array.isArray(items) ? items.filter((x) => x && typeof x.text === "string") : [];
    } catch {
      return []; // unreadable history is dropped, not fatal
    }
  }

  function saveHistory(items) {
    try {
      localStorage.setItem(HISTORY_STORAGE, JSON.stringify(items.slice(-HISTORY_MAX)));
    } catch {
      /* storage full or disabled: the page still works without history */
    }
  }

  function confidenceBar(label, score) {
    const bar = el("div", `bar ${label}`);
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", String(Math.round(100 * score)));
    bar.setAttribute("aria-label", `置信度 confidence ${pct(score)}`);
    const fill = el("span", "fill");
    fill.style.width = pct(score);
    bar.append(fill);
    return bar;
  }

  function exchange(item) {
    const li = el("li", "exchange");
    li.append(el("p", "bubble user", item.text));
    const answer = el("div", `bubble answer ${item.label}`);
    const head = el("p", "verdict");
    head.append(el("strong", "label", LABELS[item.label] || item.label));
    head.append(el("span", "score", pct(item.score)));
    answer.append(head, confidenceBar(item.label, item.score));
    const version = item.model_version ? ` · ${item.model_version}` : "";
    const latency = Number.isFinite(item.latency_ms) ? ` · ${Math.round(item.latency_ms)} ms` : "";
    answer.append(el("p", "meta", `模型 Model: ${MODELS[item.model] || item.model}${version}${latency}`));
    if (item.degraded) {
      answer.append(el("p", "degraded-note",
        `降级 degraded: answered by the fallback because ${reasonWords(item.reason)}`));
    }
    li.append(answer);
    return li;
  }

  function renderHistory() {
    const items = loadHistory();
    const list = $("conversation");
    list.replaceChildren(...items.map(exchange));
    $("history-empty").hidden = items.length > 0;
    $("clear-history").disabled = items.length === 0;
    list.scrollTop = list.scrollHeight;
  }

  function showDegraded(reason) {
    const banner = $("degraded-banner");
    if (reason === null) {
      banner.hidden = true;
      banner.textContent = "";
      return;
    }
    banner.textContent = `降级 degraded: answered by the fallback because ${reasonWords(reason)}`;
    banner.hidden = false;
  }

  async function submitSingle(event) {
    event.preventDefault();
    const input = $("review-input");
    const text = input.value.trim();
    input.setAttribute("aria-invalid", "false");
    if (!text) {
      input.setAttribute("aria-invalid", "true");
      showError("single-error", "请输入评论 Type or paste a review first.");
      input.focus();
      return;
    }
    if (codePoints(text) > limits.maxChars) {
      input.setAttribute("aria-invalid", "true");
      showError("single-error",
        `评论过长 The review has ${codePoints(text)} characters; the limit is ${limits.maxChars}.`);
      return;
    }
    showError("single-error", "");
    const button = $("analyze-button");
    button.disabled = true;
    button.textContent = "分析中 Analyzing…";
    try {
      const result = await analyze({ text });
      const items = loadHistory();
      items.push({
        text, label: result.label, score: result.score, model: result.model,
        model_version: result.model_version, degraded: !!result.degraded,
        reason: result.reason, latency_ms: result.latency_ms, at: Date.now(),
      });
      saveHistory(items);
      renderHistory();
      showDegraded(result.degraded ? result.reason : null);
      input.value = "";
    } catch (e) {
      showError("single-error", describeError(e));
    } finally {
      button.disabled = false;
      button.textContent = "分析 Analyze";
      input.focus();
    }
  }

  // ---------------------------------------------------------------- batch files

  class FormatError extends Error {}

  function parseDelimited(text, delimiter) {
    const rows = [];
    let row = [];
    let field = "";
    let quoted = false;
    let quoteLine = 0;
    let line = 1;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (quoted) {
        if (c === '"') {
          if (text[i + 1] === '"') {
            field += '"';
            i++;
          } else {
            quoted = false;
          }
        } else {
          if (c === "\n") line++;
          field += c;
        }
      } else if (c === '"' && field === "") {
        quoted = true;
        quoteLine = line;
      } else if (c === delimiter) {
        row.push(field);
        field = "";
      } else if (c === "\n" || c === "\r") {
        row.push(field);
        rows.push(row);
        row = [];
        field = "";
        if (c === "\r" && text[i + 1] === "\n") i++;
        line++;
      } else {
        field += c;
      }
    }
    if (quoted) throw new FormatError(`line ${quoteLine}: a quote is never closed`);
    if (field !== "" || row.length) {
      row.push(field);
      rows.push(row);
    }
    return rows;
  }

  // The review of each row of a CSV/TSV (text/review/sentence column) or TXT file.
  function parseReviews(name, content) {
    const ext = (name.match(/\.[^.]+$/) || [""])[0].toLowerCase();
    if (ext === ".txt") return content.split(/\r\n|\r|\n/).filter((l) => l.trim());
    let delimiter = ext === ".csv" ? "," : "\t";
    const first = content.split(/\r?\n/, 1)[0];
    if (delimiter === "," && first.includes("\t") && !first.includes(",")) delimiter = "\t";
    const rows = parseDelimited(content, delimiter);
    const header = (rows[0] || []).map((h) => h.trim().toLowerCase());
    const column = TEXT_COLUMNS.find((c) => header.includes(c));
    if (!column) {
      throw new FormatError(
        `第一行没有 text 或 review 列 The first line (${header.join(", ") || "empty"}) ` +
        "has no text or review column: name the column of reviews \"text\", " +
        "or save one review per line as .txt.");
    }
    const at = header.indexOf(column);
    return rows.slice(1).filter((r) => r.some((c) => c.trim())).map((r) => r[at] || "");
  }

  async function readReviews(file) {
    const ext = (file.name.match(/\.[^.]+$/) || [""])[0].toLowerCase();
    if (![".csv", ".tsv", ".tab", ".txt"].includes(ext)) {
      throw new FormatError(`文件格式不支持 "${file.name}" is not a .csv or .txt file: ` +
        "use a CSV with a text or review column, or a TXT with one review per line.");
    }
    if (file.size > MAX_FILE_BYTES) {
      throw new FormatError(`文件过大 "${file.name}" is ${(file.size / 1048576).toFixed(1)} MB; ` +
        `the limit is ${MAX_FILE_BYTES / 1048576} MB: split it, or use \`sentiguard analyze --file\`.`);
    }
    let content;
    try {
      content = new TextDecoder("utf-8", { fatal: true }).decode(await file.arrayBuffer());
    } catch {
      throw new FormatError(`"${file.name}" is not UTF-8 text: save it as UTF-8 and try again.`);
    }
    const reviews = parseReviews(file.name, content.replace(/^\uFEFF/, ""));
    if (reviews.length === 0) throw new FormatError(`"${file.name}" has no reviews.`);
    if (reviews.length > MAX_ROWS) {
      throw new FormatError(`"${file.name}" has ${reviews.length} rows; the limit is ` +
        `${MAX_ROWS}: split it, or use \`sentiguard analyze --file\`.`);
    }
    return reviews;
  }

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

  async function runBatch(event) {
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
    $("batch-progress-text").textContent = job.noteText ? `${base} · ${job.noteText}` : base;
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
      div.append(el("dt", null, term), el("dd", null, value));
      summary.append(div);
    }
    const body = $("batch-table").tBodies[0];
    body.replaceChildren(...rows.slice(0, TABLE_ROWS).map((r, i) => {
      const tr = el("tr", r.label ? "" : "failed");
      const note = r.label
        ? (r.degraded ? `降级 degraded: ${r.reason}` : "")
        : (ROW_ERRORS[r.reason] || `失败 failed: ${r.reason}`);
      tr.append(el("td", "num", i + 1), el("td", "text", r.text),
        el("td", null, r.label ? LABELS[r.label] : "—"),
        el("td", "num", r.label ? pct(r.score) : "—"), el("td", null, r.model || "—"),
        el("td", null, note));
      return tr;
    }));
    $("batch-table-note").textContent = rows.length > TABLE_ROWS
      ? `显示前 ${TABLE_ROWS} 行 Showing the first ${TABLE_ROWS} of ${rows.length} rows; download for all.`
      : `共 ${rows.length} 行 All ${rows.length} rows shown.`;
    $("batch-result").hidden = false;
    $("batch-download").onclick = () => download(job);
    if (Object.keys(reasons).length) showDegraded(Object.keys(reasons)[0]);
  }

  function csvCell(value) {
    if (value === null || value === undefined) return "";
    const s = String(value);
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  }

  // The same columns as `sentiguard analyze --out`; a UTF-8 BOM so spreadsheet programs
  // read the Chinese text correctly.
  function download(job) {
    const lines = [RESULT_COLUMNS.join(",")];
    for (const r of job.results) lines.push(RESULT_COLUMNS.map((c) => csvCell(r[c])).join(","));
    const blob = new Blob(["\uFEFF" + lines.join("\n") + "\n"], { type: "text/csv;charset=utf-8" });
    const url = URL.createObjectURL(blob);
    const a = el("a");
    a.href = url;
    a.download = `${job.name.replace(/\.[^.]+$/, "")}.results.csv`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    $("single-form").addEventListener("submit", submitSingle);
    $("review-input").addEventListener("keydown", (e) => {
      // Enter sends; Shift+Enter is a new line; Enter that confirms an IME composition
      // (how Chinese is typed) must not send a half-typed review.
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        $("single-form").requestSubmit();
      }
    });
    $("review-input").addEventListener("input", () => showError("single-error", ""));
    $("clear-history").addEventListener("click", () => {
      saveHistory([]);
      renderHistory();
      showDegraded(null);
      $("review-input").focus();
    });
    $("batch-form").addEventListener("submit", runBatch);
    $("batch-file").addEventListener("change", () => showError("batch-error", ""));
    $("batch-cancel").addEventListener("click", () => {
      if (currentJob) {
        const job = currentJob;
        currentJob = null;
        job.abort.abort();
      }
    });
    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) {
        showError("key-error", "请输入密钥 Enter the key first.");
        return;
      }
      try {
        localStorage.setItem(KEY_STORAGE, key);
      } catch {
        /* kept for this page only */
      }
      showError("key-error", "");
      $("key-panel").hidden = true;
      showError("single-error", "");
      showError("batch-error", "");
      $("review-input").focus();
    });
    renderHistory();
    loadLimits();
    pollHealth();
    setInterval(pollHealth, 10000);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
