// N-best lists in the formats `electric rerank` reads, parsed in the browser.
//
// Each reader is a port of its service/nbest module and gives what that module's lists hold:
// {id, reference, candidates: [{text, base_score, line}]}, base_score null where the file has
// none (the rank prior then applies, as on the server). The port keeps Python's rules where
// they differ from JavaScript's: lines split on "\n" only, Python's set of whitespace for strip
// and split, Python's float syntax, fairseq scores from base 2 to nats. tests/service/
// test_ui_browser.py checks that both give the same lists. "plain" exists only here: one
// hypothesis a line, a blank line between lists, optionally "base_score<TAB>text".

import { SPACE, RUNS, body, contentLines, pyFloat, pyStrip, splitLines } from "./pytext.js";

export const FORMATS = ["plain", "jsonl", "tsv", "espnet", "kaldi", "fairseq", "moses", "marian"];

export class NbestFormatError extends Error {
  constructor(line, problem) {
    super(line ? `line ${line}: ${problem}` : problem);
    this.line = line;
  }
}

function parseScore(line, value, what) {
  const number = pyFloat(value);
  if (number === null) throw new NbestFormatError(line, `${what} ${pyRepr(value)} is not a number`);
  if (!Number.isFinite(number)) throw new NbestFormatError(line, `${what} ${pyRepr(value)} is not finite`);
  return number;
}

function pyRepr(value) {
  return `'${value}'`;
}

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

class Lists {
  constructor() {
    this.lists = [];
    this.byId = new Map();
  }

  add(id, candidate) {
    let list = this.byId.get(id);
    if (list === undefined) {
      list = { id, reference: null, line: candidate.line, candidates: [] };
      this.byId.set(id, list);
      this.lists.push(list);
    }
    list.candidates.push(candidate);
    return list;
  }
}

function parsePlain(text) {
  const lists = [];
  let current = null;
  splitLines(text).forEach((raw, at) => {
    const content = body(raw);
    const line = at + 1;
    if (!pyStrip(content)) {
      current = null;
      return;
    }
    if (current === null) {
      current = { id: String(lists.length + 1), reference: null, line, candidates: [] };
      lists.push(current);
    }
    const tab = content.indexOf("\t");
    const score = tab >= 0 ? pyFloat(content.slice(0, tab)) : null;
    if (score !== null && !Number.isFinite(score)) {
      throw new NbestFormatError(line, `base score ${pyRepr(content.slice(0, tab))} is not finite`);
    }
    current.candidates.push(score === null
      ? { text: content, base_score: null, line }
      : { text: content.slice(tab + 1), base_score: score, line });
  });
  return lists;
}

function jsonlCandidate(line, index, item) {
  if (typeof item === "string") return { text: item, base_score: null, line };
  if (!isObject(item) || typeof item.text !== "string") {
    throw new NbestFormatError(line, `hypotheses[${index}] is ${JSON.stringify(item).slice(0, 60)}; ` +
                                     'expected a string or {"text": ..., "score": ...}');
  }
  const score = item.score;
  if (score === undefined || score === null) return { text: item.text, base_score: null, line };
  if (typeof score !== "number") {
    throw new NbestFormatError(line, `hypotheses[${index}].score ${JSON.stringify(score)} is not a number`);
  }
  if (!Number.isFinite(score)) throw new NbestFormatError(line, `hypotheses[${index}].score is not finite`);
  return { text: item.text, base_score: score, line };
}

function pyStr(value) {
  if (value === true) return "True";
  if (value === false) return "False";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function parseJsonl(text) {
  const lists = [];
  for (const [at, content] of contentLines(splitLines(text))) {
    const line = at + 1;
    let obj;
    try {
      obj = JSON.parse(content);
    } catch (exc) {
      throw new NbestFormatError(line, `not JSON: ${exc.message}`);
    }
    if (!isObject(obj)) throw new NbestFormatError(line, "expected a JSON object with 'hypotheses'");
    if (!Array.isArray(obj.hypotheses)) {
      throw new NbestFormatError(line, "'hypotheses' is missing or not a list");
    }
    const reference = obj.reference ?? null;
    if (reference !== null && typeof reference !== "string") {
      throw new NbestFormatError(line, "'reference' is not a string");
    }
    const id = obj.id !== undefined && obj.id !== null ? pyStr(obj.id) : String(line);
    lists.push({ id, reference, line,
                 candidates: obj.hypotheses.map((h, j) => jsonlCandidate(line, j, h)) });
  }
  return lists;
}

function parseTsv(text) {
  const lines = splitLines(text);
  const first = contentLines(lines).next();
  const [firstAt, firstContent] = first.done ? [null, ""] : first.value;
  const names = firstContent.split("\t");
  const header = names.includes("id") && names.includes("text");
  // A header names the columns (a repeated name: its last column, as in Python's dict).
  const columns = header ? Object.fromEntries(names.map((n, i) => [n, i]))
                         : { id: 0, text: 1, score: 2 };
  const need = Math.max(columns.id, columns.text) + 1;
  const out = new Lists();
  for (const [at, content] of contentLines(lines)) {
    if (header && at === firstAt) continue;
    const line = at + 1;
    const fields = content.split("\t");
    if (fields.length < need) {
      throw new NbestFormatError(line, `${fields.length} tab-separated fields; a row needs at ` +
                                       `least ${need} (id, text)`);
    }
    const id = fields[columns.id];
    let score = null;
    const scoreAt = columns.score;
    if (scoreAt !== undefined && scoreAt < fields.length && pyStrip(fields[scoreAt])) {
      score = parseScore(line, pyStrip(fields[scoreAt]), "score");
    }
    const list = out.add(id, { text: fields[columns.text], base_score: score, line });
    const refAt = columns.reference;
    if (refAt !== undefined && refAt < fields.length && fields[refAt]) {
      if (list.reference !== null && list.reference !== fields[refAt]) {
        throw new NbestFormatError(line, `list '${id}' has a different reference on an earlier row`);
      }
      list.reference = fields[refAt];
    }
  }
  return out.lists;
}

/** The keys of a JSON text's top-level object in the order written (first occurrence). A
 * JavaScript object lists integer-like keys first, whatever the text's order; Python keeps it. */
function topLevelKeys(text) {
  const keys = [];
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      if (depth === 1 && expectKey) keys.push(JSON.parse(text.slice(i, j + 1)));
      expectKey = false;
      i = j;
    } else if (c === "{" || c === "[") {
      depth += 1;
      expectKey = c === "{" && depth === 1;
    } else if (c === "}" || c === "]") {
      depth -= 1;
    } else if (c === "," && depth === 1) {
      expectKey = true;
    }
  }
  return [...new Set(keys)];
}

function lineOf(text, key) {
  const at = text.indexOf(`${JSON.stringify(key)}:`);
  return at >= 0 ? text.slice(0, at).split("\n").length : 0;
}

const HYP_KEY = /^hyp_([1-9][0-9]*)$/;

function parseEspnet(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (exc) {
    throw new NbestFormatError(null, `not JSON: ${exc.message}`);
  }
  if (!isObject(data)) throw new NbestFormatError(1, "expected an object keyed by utterance id");
  return topLevelKeys(text).map((uttId) => {
    const utt = data[uttId];
    const line = lineOf(text, uttId);
    const where = `utterance '${uttId}'`;
    if (!isObject(utt)) throw new NbestFormatError(line, `${where} is not an object of hyp_N entries`);
    const keys = Object.keys(utt).map((k) => [HYP_KEY.exec(k), k]).filter(([m]) => m)
      .map(([m, k]) => [Number(m[1]), k]).sort((a, b) => a[0] - b[0]).map(([, k]) => k);
    const candidates = keys.map((key) => {
      const hyp = utt[key];
      if (!isObject(hyp) || typeof hyp.text !== "string") {
        throw new NbestFormatError(line, `${where}, ${key}: expected {"text": ..., "score": ...}`);
      }
      const score = hyp.score ?? null;
      if (score !== null && typeof score !== "number") {
        throw new NbestFormatError(line, `${where}, ${key}: score ${JSON.stringify(score)} is not a number`);
      }
      if (score !== null && !Number.isFinite(score)) {
        throw new NbestFormatError(line, `${where}, ${key}: score is not finite`);
      }
      return { text: hyp.text, base_score: score, line };
    });
    const reference = utt.ref ?? null;
    if (reference !== null && typeof reference !== "string") {
      throw new NbestFormatError(line, `${where}: 'ref' is not a string`);
    }
    return { id: uttId, reference, line, candidates };
  });
}

const KALDI_KEY = /^(.+)-([0-9]+)$/s;

function kaldiSplit(content) {
  const core = content.replace(new RegExp(`^[${SPACE}]+`), "");
  const gap = RUNS.exec(core);
  if (!gap) return [core, ""];
  return [core.slice(0, gap.index), pyStrip(core.slice(gap.index))];
}

function parseKaldi(text) {
  const out = new Lists();
  const seen = new Map();
  for (const [at, content] of contentLines(splitLines(text))) {
    const line = at + 1;
    const [key, words] = kaldiSplit(content);
    const match = KALDI_KEY.exec(key);
    if (!match) {
      throw new NbestFormatError(line, `key '${key}' does not end in -N, the hypothesis's rank ` +
                                       "(utt-1, utt-2, ...)");
    }
    if (seen.has(key)) {
      throw new NbestFormatError(line, `key '${key}' appears twice (first on line ${seen.get(key)})`);
    }
    seen.set(key, line);
    out.add(match[1], { text: words, base_score: null, line });
  }
  return out.lists;
}

const FAIRSEQ_LINE = /^([A-Z])-([^\t]*)\t([\s\S]*)$/;
const ATTACHED = new Set(["D", "P", "A", "I", "E"]);

function fairseqScored(line, kind, rest) {
  const tab = rest.indexOf("\t");
  if (tab < 0) {
    throw new NbestFormatError(line, `an ${kind}- line needs a score and a text after the id, ` +
                                     "separated by tabs");
  }
  return [parseScore(line, pyStrip(rest.slice(0, tab)), `${kind}- score`) * Math.LN2,
          rest.slice(tab + 1)];
}

function parseFairseq(text) {
  const out = new Lists();
  const refs = new Map();
  let open = null;  // [sample id, list] of the hypothesis block being read
  splitLines(text).forEach((raw, at) => {
    const line = at + 1;
    const content = body(raw);
    const match = FAIRSEQ_LINE.exec(content);
    if (!match && (content.startsWith("H-") || content.startsWith("D-"))) {
      throw new NbestFormatError(line, `a ${content.slice(0, 2)} line needs the id, a tab, the ` +
                                       "score, a tab and the text");
    }
    const kind = match ? match[1] : "";
    let sample = match ? match[2] : "";
    const rest = match ? match[3] : "";
    if (kind === "E") sample = sample.split("_")[0];
    if (ATTACHED.has(kind) && open && open[0] === sample) {
      if (kind === "D") {
        const candidate = open[1].candidates[open[1].candidates.length - 1];
        [candidate.base_score, candidate.text] = fairseqScored(line, kind, rest);
      }
      return;
    }
    open = null;
    if (kind === "D") throw new NbestFormatError(line, `D-${sample} does not follow an H-${sample} line`);
    if (kind === "T") refs.set(sample, rest);
    if (kind !== "H") return;
    const [score, hyp] = fairseqScored(line, kind, rest);
    open = [sample, out.add(sample, { text: hyp, base_score: score, line })];
  });
  for (const list of out.lists) list.reference = refs.has(list.id) ? refs.get(list.id) : null;
  return out.lists;
}

function parseMoses(text) {
  const out = new Lists();
  for (const [at, content] of contentLines(splitLines(text))) {
    const line = at + 1;
    const parts = content.split("|||");
    if (parts.length < 4) {
      throw new NbestFormatError(line, `${parts.length} '|||'-separated fields; expected id ||| ` +
                                       "hypothesis ||| features ||| total");
    }
    const sentence = pyStrip(parts[0]);
    if (!sentence) throw new NbestFormatError(line, "the sentence id (first field) is empty");
    const total = parseScore(line, pyStrip(parts[3]), "total score");
    out.add(sentence, { text: pyStrip(parts[1]), base_score: total, line });
  }
  return out.lists;
}

const READERS = {
  plain: parsePlain, jsonl: parseJsonl, tsv: parseTsv, espnet: parseEspnet, kaldi: parseKaldi,
  fairseq: parseFairseq, moses: parseMoses, marian: parseMoses,
};

/** The format a text most likely is; "plain" when nothing else fits. */
export function detectFormat(text) {
  const lines = Array.from(contentLines(splitLines(text)), ([, content]) => content);
  if (!lines.length) return "plain";
  const first = pyStrip(lines[0]);
  if (first.startsWith("{")) {
    try {
      const data = JSON.parse(text);
      if (isObject(data) && !Array.isArray(data.hypotheses)) return "espnet";
    } catch {
      // not one document: JSON lines, perhaps
    }
    try {
      if (Array.isArray(JSON.parse(first).hypotheses)) return "jsonl";
    } catch {
      // not JSON lines either
    }
  }
  if (lines.every((l) => l.split("|||").length >= 4)) return "moses";
  if (lines.some((l) => /^H-[^\t]*\t/.test(l))) return "fairseq";
  const names = lines[0].split("\t");
  if (names.includes("id") && names.includes("text")) return "tsv";
  if (lines.every((l) => KALDI_KEY.test(kaldiSplit(l)[0]))) return "kaldi";
  return "plain";
}

/** The lists of ``text`` read as ``format`` ("auto": detected); NbestFormatError names the line. */
export function parseNbest(format, text) {
  const chosen = format === "auto" ? detectFormat(text) : format;
  const reader = READERS[chosen];
  if (!reader) throw new NbestFormatError(null, `unknown format '${format}'; choose one of ${FORMATS.join(", ")}`);
  return { format: chosen, lists: reader(text) };
}

/** One reference a line, list n taking line n; trailing blank lines are not references. */
export function readReferences(text, count) {
  const lines = text.split("\n").map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l));
  while (lines.length && !pyStrip(lines[lines.length - 1])) lines.pop();
  if (lines.length !== count) {
    throw new NbestFormatError(null, `${lines.length} references for ${count} lists; give one ` +
                                     "line per list, in order");
  }
  return lines.map(pyStrip);
}
