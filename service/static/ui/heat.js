// Heat maps of per-token energies over the original text, and their colour legend.
//
// Offsets from /v1/score are [start, end) spans in Unicode code points (Python string
// indices); JavaScript strings count UTF-16 units, so the text is split into code points
// before slicing, or every span after an emoji would land one unit early. Text between tokens
// (spaces, anything the tokenizer dropped) is shown uncoloured. Colours come in BINS classes
// (heat-0 .. heat-8 in ui.css): a blue-orange diverging scale, safe for the common colour-vision
// deficiencies, each bin with the text colour that keeps WCAG AA contrast. Classes rather than
// computed colours keep the page free of inline styles (the CSP forbids them).

import { element } from "./dom.js";

export const BINS = 9;

export function energyRange(results) {
  let min = Infinity;
  let max = -Infinity;
  for (const result of results) {
    for (const e of result.energies) {
      if (e < min) min = e;
      if (e > max) max = e;
    }
  }
  return Number.isFinite(min) ? { min, max } : { min: 0, max: 0 };
}

/** The colour bin of an energy: 0 (lowest: fits its context) to BINS - 1 (highest). */
export function binOf(energy, range) {
  const width = range.max - range.min;
  if (!(width > 0)) return (BINS - 1) / 2;
  const t = (energy - range.min) / width;
  return Math.max(0, Math.min(BINS - 1, Math.floor(t * BINS)));
}

export function formatNumber(x, digits = 4) {
  return Number(x).toFixed(digits);
}

function tokenCell(token, piece, energy, sentence) {
  const cell = element("span", `tok heat-${binOf(energy, sentence.range)}`, piece);
  if (!piece) cell.classList.add("tok-empty");  // a token with no characters of its own
  cell.dataset.energy = String(energy);
  cell.dataset.token = token;
  cell.tabIndex = -1;
  cell.title = `token ${token}\nenergy ${formatNumber(energy)}\n` +
               `sentence score ${formatNumber(sentence.score, 3)}`;
  return cell;
}

/** The sentence's text with one element per scored token, in token order. */
export function heatText(text, result, range) {
  const chars = Array.from(text);
  const line = element("p", "heat");
  let cursor = 0;
  const sentence = { range, score: result.score };
  result.tokens.forEach((token, i) => {
    const [rawStart, rawEnd] = result.offsets[i];
    // Offsets may overlap (several tokens for one character): each character is shown once,
    // in the first token that covers it; the others are empty cells.
    const start = Math.min(Math.max(rawStart, cursor), chars.length);
    const end = Math.min(Math.max(rawEnd, start), chars.length);
    if (start > cursor) line.append(chars.slice(cursor, start).join(""));
    line.append(tokenCell(token, chars.slice(start, end).join(""), result.energies[i], sentence));
    cursor = end;
  });
  if (cursor < chars.length) line.append(chars.slice(cursor).join(""));
  const first = line.querySelector(".tok");
  if (first) first.tabIndex = 0;  // one tab stop per sentence; arrows move inside it
  return line;
}

/** Arrow keys, Home and End move the focus between a sentence's tokens. */
export function moveWithinSentence(event) {
  const cell = event.target;
  if (!cell.classList || !cell.classList.contains("tok")) return;
  const cells = Array.from(cell.parentElement.querySelectorAll(".tok"));
  const at = cells.indexOf(cell);
  const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: cells.length - 1 }[event.key];
  if (to === undefined || to < 0 || to >= cells.length) return;
  event.preventDefault();
  cell.tabIndex = -1;
  cells[to].tabIndex = 0;
  cells[to].focus();
}

/** What the detail line says about a token cell. */
export function describeToken(cell, card) {
  const piece = cell.textContent ? `"${cell.textContent}"` : "(no characters)";
  return `${card.dataset.label}: ${piece}, token ${cell.dataset.token}, energy ` +
         `${formatNumber(Number(cell.dataset.energy))}; sentence score ` +
         `${formatNumber(Number(card.dataset.score), 3)}`;
}

/** One card per sentence; the highest score is marked when there are two or more. */
export function sentenceCards(texts, results) {
  const range = energyRange(results);
  const best = results.length > 1
    ? results.reduce((b, r, i) => (r.score > results[b].score ? i : b), 0) : -1;
  const cards = results.map((result, i) => {
    const card = element("article", "card");
    card.dataset.label = `Sentence ${i + 1}`;
    card.dataset.score = String(result.score);
    card.dataset.numTokens = String(result.num_tokens);
    const head = element("header", "card-head");
    head.append(element("h3", "", card.dataset.label));
    if (i === best) {
      card.classList.add("best");
      head.append(element("span", "badge", "best score"));
    }
    if (result.truncated) head.append(element("span", "badge warn", "truncated"));
    card.append(head);
    card.append(heatText(texts[i], result, range));
    const facts = element("dl", "facts");
    const mean = result.num_tokens ? -result.score / result.num_tokens : 0;
    const rows = [["score (−Σ energy)", formatNumber(result.score, 3)],
                  ["tokens", String(result.num_tokens)],
                  ["mean energy", formatNumber(mean)]];
    if (best >= 0 && i !== best) {
      rows.push(["vs best", formatNumber(result.score - results[best].score, 3)]);
    }
    for (const [name, value] of rows) {
      facts.append(element("dt", "", name), element("dd", "", value));
    }
    card.append(facts);
    return card;
  });
  return { cards, range };
}

/** The colour key: one swatch per bin with the energy at its lower edge, and the range. */
export function legend(range) {
  const box = document.createDocumentFragment();
  box.append(element("span", "legend-title", "energy"));
  const scale = element("span", "legend-scale");
  const width = (range.max - range.min) / BINS;
  for (let bin = 0; bin < BINS; bin += 1) {
    const from = range.min + bin * width;
    const swatch = element("span", `swatch heat-${bin}`, formatNumber(from, 2));
    swatch.title = `from ${formatNumber(from)} to ${formatNumber(from + width)}`;
    scale.append(swatch);
  }
  box.append(scale);
  box.append(element("span", "legend-range",
                     `${formatNumber(range.min)} (fits its context) … ${formatNumber(range.max)} ` +
                     "(surprising); uncoloured text is not scored"));
  return box;
}
