// The /ui page: wires the forms to the API and puts the answers on the page.
//
// Score: each line of the box is one sentence (a final empty line is dropped; any other line
// goes as written, so that the service's own rule refuses a blank one and says which). Re-rank:
// a file or pasted text, parsed here, re-ranked by /v1/rerank. Model: GET /v1/model. A 401
// anywhere opens the key panel; once a key is given, what was refused runs again.

import { ApiError, call, currentKey, setKey } from "./api.js";
import { describeToken, legend, moveWithinSentence, sentenceCards } from "./heat.js";
import { modelPanel } from "./model.js";
import { parseNbest, readReferences } from "./nbest.js";
import { pyFloat } from "./pytext.js";
import { rerankRequest, rerankView } from "./rerank.js";

const $ = (id) => document.getElementById(id);
const MAX_LINK_CHARS = 2000;
const waitingForKey = new Set();

function showError(box, exc) {
  let message = exc instanceof ApiError ? exc.describe() : exc.message;
  // "sentences[2]: ..." names a line of the box: say which, counting from 1.
  message = message.replace(/\bsentences\[(\d+)\]/g, (all, i) => `${all} (line ${Number(i) + 1})`);
  box.textContent = message;
  box.hidden = false;
}

function clearError(box) {
  box.textContent = "";
  box.hidden = true;
}

function askForKey(exc) {
  $("key-reason").textContent = currentKey()
    ? `The service refused the key: ${exc.message}`
    : `This service wants an API key: ${exc.message}`;
  $("key-panel").hidden = false;
  $("api-key").focus();
}

/** Run ``action``, showing what goes wrong in ``box``; after a 401, again once a key is set. */
async function guarded(box, button, action) {
  clearError(box);
  if (button) button.disabled = true;
  try {
    await action();
  } catch (exc) {
    showError(box, exc);
    if (exc instanceof ApiError && exc.status === 401) {
      waitingForKey.add(() => guarded(box, button, action));
      askForKey(exc);
    }
  } finally {
    if (button) button.disabled = false;
  }
}

function sentencesOf(text) {
  const lines = text.split("\n").map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l));
  while (lines.length && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

function keepInLink(text) {
  const url = new URL(window.location.href);
  if (text.length <= MAX_LINK_CHARS) url.searchParams.set("text", text);
  else url.searchParams.delete("text");
  window.history.replaceState(null, "", url);
}

async function score() {
  const text = $("sentences").value;
  const sentences = sentencesOf(text);
  if (!sentences.length) throw new Error("type at least one sentence (one per line)");
  const response = await call("v1/score", { sentences, truncate: $("truncate").checked });
  const { cards, range } = sentenceCards(sentences, response.results);
  $("legend").replaceChildren(legend(range));
  $("legend").hidden = false;
  $("score-detail").textContent = "Hover over or focus a token (Tab, then arrow keys) for its energy.";
  $("score-results").replaceChildren(...cards);
  keepInLink(sentences.join("\n"));
}

function weight(id) {
  const input = $(id);
  if (input.value === "") {
    if (input.validity.badInput) throw new Error(`${id.replace("-", "_")} is not a number`);
    return null;
  }
  const value = pyFloat(input.value);
  if (value === null || !Number.isFinite(value)) {
    throw new Error(`${id.replace("-", "_")} ${JSON.stringify(input.value)} is not a finite number`);
  }
  return value;
}

async function rerank() {
  const { format, lists } = parseNbest($("nbest-format").value, $("nbest-text").value);
  if (!lists.some((list) => list.candidates.length)) {
    throw new Error(`no hypotheses found (read as ${format})`);
  }
  const refsText = $("refs").value;
  const references = refsText.trim()
    ? readReferences(refsText, lists.length) : lists.map((list) => list.reference);
  const body = rerankRequest(lists, {
    lm_weight: weight("lm-weight"), length_bonus: weight("length-bonus"),
    rank_prior: $("rank-prior").value || null,
  });
  const response = await call("v1/rerank", body);
  const { summary, tables } = rerankView(lists, response, references);
  const read = document.createElement("p");
  read.textContent = `Read as ${format}: ${lists.length} lists, ` +
                     `${lists.reduce((n, list) => n + list.candidates.length, 0)} hypotheses.`;
  $("nbest-summary").replaceChildren(read, summary);
  $("nbest-results").replaceChildren(tables);
}

async function loadModel() {
  $("model-panel").replaceChildren(modelPanel(await call("v1/model")));
}

function submitOnCtrlEnter(form) {
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}

function onSubmit(formId, errorId, buttonId, action) {
  const form = $(formId);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    guarded($(errorId), buttonId ? $(buttonId) : null, action);
  });
  submitOnCtrlEnter(form);
}

function loadFileInto(inputId, textareaId) {
  $(inputId).addEventListener("change", async () => {
    const file = $(inputId).files[0];
    if (file) $(textareaId).value = await file.text();
  });
}

function wireTokens() {
  const results = $("score-results");
  const explain = (event) => {
    const cell = event.target.closest ? event.target.closest(".tok") : null;
    if (cell) $("score-detail").textContent = describeToken(cell, cell.closest(".card"));
  };
  results.addEventListener("mouseover", explain);
  results.addEventListener("focusin", explain);
  results.addEventListener("keydown", moveWithinSentence);
}

function wireKey() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setKey($("api-key").value.trim());
    $("api-key").value = "";
    $("key-panel").hidden = true;
    const again = [...waitingForKey];
    waitingForKey.clear();
    for (const action of again) action();
  });
  $("key-forget").addEventListener("click", () => {
    setKey("");
    $("api-key").value = "";
  });
}

function start() {
  onSubmit("score-form", "score-error", "score-button", score);
  onSubmit("nbest-form", "nbest-error", "nbest-button", rerank);
  $("model-reload").addEventListener("click", () => guarded($("model-error"), $("model-reload"), loadModel));
  loadFileInto("nbest-file", "nbest-text");
  loadFileInto("refs-file", "refs");
  wireTokens();
  wireKey();
  guarded($("model-error"), null, loadModel);
  const linked = new URLSearchParams(window.location.search).get("text");
  if (linked) {
    $("sentences").value = linked;
    guarded($("score-error"), $("score-button"), score);
  }
}

start();
