// Word error rate as service/corpus_metrics.py counts it (jiwer's default, no normalisation):
// whitespace runs of two or more become one space, the ends are stripped, words are what a
// single space separates; errors are the word-level edit distance (substitutions, deletions,
// insertions), and a corpus's WER is its total errors over its total reference words.

import { SPACE, pyStrip } from "./pytext.js";

const RUNS = new RegExp(`[${SPACE}]{2,}`, "g");

export function words(text) {
  return pyStrip(text.replace(RUNS, " ")).split(" ").filter((w) => w.length >= 1);
}

/** Levenshtein distance between two word lists, in O(len(b)) memory. */
export function editDistance(a, b) {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i += 1) {
    const row = [i];
    for (let j = 1; j <= b.length; j += 1) {
      const substitute = previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1);
      row.push(Math.min(substitute, previous[j] + 1, row[j - 1] + 1));
    }
    previous = row;
  }
  return previous[b.length];
}

/** [word errors, reference words] of one hypothesis. */
export function wordErrors(reference, hypothesis) {
  const ref = words(reference);
  return [editDistance(ref, words(hypothesis)), ref.length];
}

/** Corpus WER of [reference, hypothesis] pairs: total errors / total reference words. */
export function corpusWer(pairs) {
  let errors = 0;
  let total = 0;
  for (const [reference, hypothesis] of pairs) {
    const [e, n] = wordErrors(reference, hypothesis);
    errors += e;
    total += n;
  }
  return errors / Math.max(total, 1);
}
