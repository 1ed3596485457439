// sentiguard web UI: the wiring. Plain ES modules, no build step, nothing fetched beyond
// this gateway (works offline).
//   ui.js       page helpers and words; user text only ever as textContent
//   api.js      POST /analyze, API key, limits from /openapi.json, /health
//   history.js  one review at a time, a conversation kept in localStorage
//   reviews.js  CSV/TXT parsing in the browser
//   batch.js    chunked batch runs, progress, summary, table, CSV download
import { $, showError, showDegraded } from "./ui.js";
import { loadLimits, pollHealth, saveKey } from "./api.js";
import { renderHistory, saveHistory, submitSingle } from "./history.js";
import { cancelBatch, runBatch } from "./batch.js";

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
  $("batch-cancel").addEventListener("click", cancelBatch);
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) {
      showError("key-error", "请输入密钥 Enter the key first.");
      return;
    }
    saveKey(key);
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

init(); // module scripts run after the document is parsed
