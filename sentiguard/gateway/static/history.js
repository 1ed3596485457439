// One review at a time, as a conversation kept in localStorage (clearable).
import {
  $, el, bilingual, setWords, showError, pct, LABELS, MODELS, reasonWords, showDegraded,
} from "./ui.js";
import { analyze, codePoints, describeError, limits } from "./api.js";

const HISTORY_STORAGE = "sentiguard.history.v1";
const HISTORY_MAX = 200;

function loadHistory() {
  try {
    const items = JSON.parse(localStorage.getItem(HISTORY_STORAGE) || "[]");
    return Array.isArray(items) ? items.filter((x) => x && typeof x.text === "string") : [];
  } catch {
    return []; // unreadable history is dropped, not fatal
  }
}

export function saveHistory(items) {
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
  head.append(bilingual("strong", "label", LABELS[item.label] || item.label));
  head.append(el("span", "score", pct(item.score)));
  answer.append(head, confidenceBar(item.label, item.score));
  const version = item.model_version ? ` · ${item.model_version}` : "";
  const latency = Number.isFinite(item.latency_ms) ? ` · ${Math.round(item.latency_ms)} ms` : "";
  answer.append(bilingual("p", "meta", `模型 Model: ${MODELS[item.model] || item.model}${version}${latency}`));
  if (item.degraded) {
    answer.append(bilingual("p", "degraded-note",
      `降级 degraded: answered by the fallback because ${reasonWords(item.reason)}`));
  }
  li.append(answer);
  return li;
}

export function renderHistory() {
  const items = loadHistory();
  const list = $("conversation");
  list.replaceChildren(...items.map(exchange));
  $("history-empty").hidden = items.length > 0;
  $("clear-history").disabled = items.length === 0;
  list.scrollTop = list.scrollHeight;
}

export async function submitSingle(event) {
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
  setWords(button, "分析中 Analyzing…");
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
    setWords(button, "分析 Analyze");
    input.focus();
  }
}
