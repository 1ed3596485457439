// Page helpers and the words the UI shows. The rule of this UI lives here: user text
// reaches the page only as text (el() sets textContent); innerHTML is never used.

export const $ = (id) => document.getElementById(id);

// The only way the UI puts text on the page: as a text node, never as markup.
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// The page is lang="zh-CN"; the English half of a bilingual label goes in a
// <span lang="en"> so a screen reader reads it as English. Runs without Chinese that
// hold Latin letters are the English ones; numbers and symbols stay as they are.
// For the UI's own words only: a review is put on the page as it is, with el().
const CJK_RUN = /[\u2e80-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef]+/u;
const LATIN = /[A-Za-z]/;

export function words(text) {
  const nodes = [];
  for (const part of String(text).split(new RegExp(`(${CJK_RUN.source})`, "u"))) {
    if (!part) continue;
    if (CJK_RUN.test(part) || !LATIN.test(part)) {
      nodes.push(document.createTextNode(part));
      continue;
    }
    const [, lead, core, trail] = part.match(/^(\s*)([\s\S]*?)(\s*)$/);
    if (lead) nodes.push(document.createTextNode(lead));
    const span = el("span", null, core);
    span.lang = "en";
    nodes.push(span);
    if (trail) nodes.push(document.createTextNode(trail));
  }
  return nodes;
}

// Set a node's text to a bilingual label (see words()).
export function setWords(node, text) {
  node.replaceChildren(...words(text));
  return node;
}

// el() for the UI's own bilingual words.
export const bilingual = (tag, className, text) => setWords(el(tag, className), text);

export function showError(id, message) {
  const node = $(id);
  setWords(node, message || "");
  node.hidden = !message;
}

export const pct = (x) => `${(100 * x).toFixed(1)}%`;
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export const LABELS = { positive: "正面 Positive", negative: "负面 Negative" };
export const MODELS = {
  primary: "主模型 primary (StructBERT)",
  fallback: "备用模型 fallback (jieba + scikit-learn)",
};
export const REASONS = {
  primary_down: "the primary model is down (no worker is ready) · 主模型不可用",
  overloaded: "every primary worker is busy (overloaded) · 主模型繁忙",
  primary_timeout: "the primary model did not answer in time · 主模型超时",
  primary_error: "the primary model answered with an error · 主模型出错",
};
export const ROW_ERRORS = {
  empty_text: "空评论 empty review",
  text_too_long: "评论过长 review too long",
};

export function reasonWords(reason) {
  return REASONS[reason] || String(reason || "unknown");
}

// The banner above the conversation: the latest answer was degraded, and why (null hides it).
export function showDegraded(reason) {
  const banner = $("degraded-banner");
  if (reason === null) {
    banner.hidden = true;
    banner.textContent = "";
    return;
  }
  setWords(banner, `降级 degraded: answered by the fallback because ${reasonWords(reason)}`);
  banner.hidden = false;
}
