// Batch files read in the browser: CSV/TSV with a review/text/sentence column, or TXT
// with one review per line. Same rows as `read_reviews` in sentiguard/analyze.py: a blank
// line is not a row; a record with an empty text is one.
export const MAX_FILE_BYTES = 20 * 1024 * 1024;
export const MAX_ROWS = 100000;
const TEXT_COLUMNS = ["review", "text", "sentence"]; // same order as sentiguard.data

export class FormatError extends Error {}

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

export async function readReviews(file) {
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
