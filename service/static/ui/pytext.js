// Python's text rules, where they differ from JavaScript's, for the ports of service/nbest
// (nbest.js) and service/corpus_metrics.py (wer.js): what counts as whitespace in strip() and
// split(), what float() takes (underscores between digits, no hex, no empty string), and lines
// split on "\n" alone.

// What Python's str.isspace() holds true: str.strip() and str.split() use this set.
export const SPACE = "\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const EDGES = new RegExp(`^[${SPACE}]+|[${SPACE}]+$`, "g");
export const RUNS = new RegExp(`[${SPACE}]+`);

export function pyStrip(text) {
  return text.replace(EDGES, "");
}

/** Lines with their endings; split on "\n" only, as service/nbest/document.py does. */
export function splitLines(text) {
  const parts = text.split("\n");
  const out = parts.slice(0, -1).map((line) => `${line}\n`);
  if (parts[parts.length - 1]) out.push(parts[parts.length - 1]);
  return out;
}

/** A line without its ending ("\n" or "\r\n"). */
export function body(line) {
  let out = line.endsWith("\n") ? line.slice(0, -1) : line;
  if (out.endsWith("\r")) out = out.slice(0, -1);
  return out;
}

/** [index, line without its ending] of every line that is not blank. */
export function* contentLines(lines) {
  for (let at = 0; at < lines.length; at += 1) {
    const content = body(lines[at]);
    if (pyStrip(content)) yield [at, content];
  }
}

const DIGITS = "[0-9](?:_?[0-9])*";
const FLOAT = new RegExp(`^[+-]?(?:${DIGITS}(?:\\.(?:${DIGITS})?)?|\\.${DIGITS})` +
                         `(?:[eE][+-]?${DIGITS})?$`);
const NOT_FINITE = /^[+-]?(?:inf|infinity|nan)$/i;

/** Python's float(value): NaN for its infinities and NaNs, null for what it refuses. */
export function pyFloat(value) {
  const text = pyStrip(value);
  if (NOT_FINITE.test(text)) return NaN;
  if (!FLOAT.test(text)) return null;
  return Number(text.replaceAll("_", ""));
}
