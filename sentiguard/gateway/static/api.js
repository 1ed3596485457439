// The gateway's API: POST /analyze with the stored API key, the limits it states in
// /openapi.json, and /health for the status pill.
import { $, reasonWords, setWords } from "./ui.js";
import { MAX_FILE_BYTES, MAX_ROWS } from "./reviews.js";

const KEY_STORAGE = "sentiguard.apiKey";
const CHUNK_TEXTS = 32; // one forward pass of a worker; see CHUNK_TEXTS in analyze.py
// The gateway's defaults; refined from /openapi.json when it states them.
export const limits = { maxTexts: 256, maxChars: 5000, maxBodyBytes: 2000000 };

export const chunkSize = () => Math.min(CHUNK_TEXTS, limits.maxTexts);
export const codePoints = (s) => (s.length > limits.maxChars / 2 ? [...s].length : s.length);

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export function apiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function saveKey(key) {
  try {
    localStorage.setItem(KEY_STORAGE, key);
  } catch {
    /* storage disabled: the key is not kept */
  }
}

// POST /analyze; resolves with the JSON body of a 200, rejects with ApiError (HTTP
// errors, status 0 when the service cannot be reached). `signal` cancels it.
export async function analyze(payload, signal) {
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

export function describeError(e) {
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
export async function loadLimits() {
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

export async function pollHealth() {
  const pill = $("service-status");
  try {
    const response = await fetch("/health");
    const body = await response.json();
    if (body.status === "ok") {
      setWords(pill, "服务正常 Service OK");
      pill.title = "";
      pill.className = "status-pill ok";
    } else {
      // /health gives one sentence per reason; the first is the headline, all are in
      // the tooltip.
      const reasons = (body.reasons || []).map((r) => reasonWords(r.reason || r));
      setWords(pill, `服务降级 Service degraded${reasons.length ? `: ${reasons[0]}` : ""}`);
      pill.title = reasons.join("\n");
      pill.className = "status-pill warn";
    }
  } catch {
    setWords(pill, "无法连接 Service unreachable");
    pill.className = "status-pill bad";
  }
}
