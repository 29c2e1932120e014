// The n-best view: parsed lists -> a /v1/rerank request, and its answer -> tables and WER.
//
// Lists go to the service with their position as the id (a file's own ids may be longer than
// the API takes); lists without hypotheses stay out of the request, since /v1/rerank needs one
// at least. "Before" is each list's choice by base score alone (the first on ties), as
// `electric rerank` reports it; "after" is the top of the re-ranked list.

import { element } from "./dom.js";
import { formatNumber } from "./heat.js";
import { wordErrors } from "./wer.js";

const MAX_SHOWN = 200;

/** The /v1/rerank body for ``lists`` with the weights the user set (null: the model's). */
export function rerankRequest(lists, weights) {
  const body = {
    lists: lists.map((list, i) => [list, i]).filter(([list]) => list.candidates.length)
      .map(([list, i]) => ({
        id: i,
        hypotheses: list.candidates.map((c) => (c.base_score === null
          ? c.text : { text: c.text, score: c.base_score })),
      })),
  };
  for (const [name, value] of Object.entries(weights)) {
    if (value !== null) body[name] = value;
  }
  return body;
}

const cell = (tag, value, className) => element(tag, className, value);

function baseChoice(byIndex) {
  let best = 0;
  for (let i = 1; i < byIndex.length; i += 1) {
    if (byIndex[i].base_score > byIndex[best].base_score) best = i;
  }
  return best;
}

function listTable(list, ranked, reference, before) {
  const box = document.createElement("section");
  box.className = "nbest-list";
  box.append(cell("h3", `List ${list.id}`));
  if (reference !== null) box.append(cell("p", `reference: ${reference}`, "reference"));
  const table = document.createElement("table");
  const head = ["rank", "#", "hypothesis", "base score", "Electric score", "tokens", "combined"];
  if (reference !== null) head.push("word errors");
  head.push("");
  const row = document.createElement("tr");
  for (const name of head) {
    const th = cell("th", name);
    th.scope = "col";
    row.append(th);
  }
  const thead = document.createElement("thead");
  thead.append(row);
  const tbody = document.createElement("tbody");
  ranked.forEach((hyp, place) => {
    const tr = document.createElement("tr");
    tr.dataset.index = String(hyp.index);
    const marks = [];
    if (place === 0) {
      tr.classList.add("chosen");
      marks.push("chosen");
    }
    if (hyp.index === before) marks.push("base choice");
    tr.append(cell("td", String(place + 1)), cell("td", String(hyp.index)),
              cell("td", hyp.text || "(empty)", hyp.text ? "text" : "text muted"),
              cell("td", formatNumber(hyp.base_score, 3), "num"),
              cell("td", formatNumber(hyp.score, 3), "num"),
              cell("td", String(hyp.num_tokens), "num"),
              cell("td", formatNumber(hyp.combined, 3), "num"));
    if (reference !== null) {
      const [errors, total] = wordErrors(reference, hyp.text);
      tr.append(cell("td", `${errors}/${total}`, "num"));
    }
    tr.append(cell("td", marks.join(", "), "marks"));
    tbody.append(tr);
  });
  table.append(thead, tbody);
  box.append(table);
  return box;
}

/** Summary and per-list tables of a /v1/rerank answer; ``references[i]`` may be null. */
export function rerankView(lists, response, references) {
  const summary = document.createDocumentFragment();
  const tables = document.createDocumentFragment();
  const short = (x) => String(Number(x.toPrecision(6)));
  const weights = cell("p", `Weights in use: lm_weight ${short(response.lm_weight)}, ` +
                            `length_bonus ${short(response.length_bonus)}, ` +
                            `rank_prior ${response.rank_prior}` +
                            " (combined = base + lm_weight × score + length_bonus × tokens)",
                       "weights-used");
  summary.append(weights);
  const totals = { before: 0, after: 0, oracle: 0, words: 0, lists: 0 };
  const answered = response.lists || [];
  answered.forEach((answer, shown) => {
    const list = lists[answer.id];
    const ranked = answer.hypotheses;
    const byIndex = [];
    for (const hyp of ranked) byIndex[hyp.index] = hyp;
    const before = baseChoice(byIndex);
    const reference = references[answer.id];
    if (reference !== null) {
      const errors = byIndex.map((hyp) => wordErrors(reference, hyp.text)[0]);
      totals.before += errors[before];
      totals.after += errors[ranked[0].index];
      totals.oracle += Math.min(...errors);
      totals.words += wordErrors(reference, "")[1];
      totals.lists += 1;
    }
    if (shown < MAX_SHOWN) tables.append(listTable(list, ranked, reference, before));
  });
  const skipped = lists.length - answered.length;
  if (totals.lists) {
    const rate = (errors) => errors / Math.max(totals.words, 1);
    const line = cell("p", `WER on ${totals.lists} lists with references: before ` +
                           `${(100 * rate(totals.before)).toFixed(2)}% (base scores alone), ` +
                           `after ${(100 * rate(totals.after)).toFixed(2)}%, oracle ` +
                           `${(100 * rate(totals.oracle)).toFixed(2)}%`, "wer");
    line.dataset.werBefore = String(rate(totals.before));
    line.dataset.werAfter = String(rate(totals.after));
    line.dataset.werOracle = String(rate(totals.oracle));
    summary.append(line);
  } else {
    summary.append(cell("p", "No references: give one per list to see WER before and after.",
                        "muted"));
  }
  if (skipped) summary.append(cell("p", `${skipped} lists without hypotheses left out.`, "muted"));
  if (answered.length > MAX_SHOWN) {
    summary.append(cell("p", `Showing the first ${MAX_SHOWN} of ${answered.length} lists; the ` +
                             "WER counts them all.", "muted"));
  }
  return { summary, tables };
}
