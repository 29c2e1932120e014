// The model panel: whatever GET /v1/model returns, as nested definition lists.
//
// Only ModelInfo's own fields are known (manifest, variant, provider, providers, max_tokens,
// batching, request_limits, ready); the manifest is the artifact's and holds whatever its
// exporter wrote, so it is shown key by key rather than picked apart.

import { element } from "./dom.js";

const MAX_DEPTH = 6;
const FIRST = ["variant", "provider", "providers", "max_tokens", "ready", "batching",
               "request_limits"];

const text = (tag, value, className) => element(tag, className, value);

function scalar(value) {
  if (value === null) return text("span", "none", "muted");
  if (typeof value === "boolean") return text("span", value ? "yes" : "no");
  return text("span", String(value));
}

/** A value as a readable node: objects as definition lists, lists of scalars inline. */
export function valueNode(value, depth = 0) {
  if (Array.isArray(value)) {
    if (value.every((v) => v === null || typeof v !== "object")) {
      return text("span", value.length ? value.map(String).join(", ") : "(none)");
    }
    const list = document.createElement("ol");
    for (const item of value) {
      const li = document.createElement("li");
      li.append(valueNode(item, depth + 1));
      list.append(li);
    }
    return list;
  }
  if (value !== null && typeof value === "object") {
    if (depth >= MAX_DEPTH) return text("code", JSON.stringify(value));
    const dl = document.createElement("dl");
    dl.className = "tree";
    const entries = Object.entries(value);
    if (!entries.length) return text("span", "(empty)", "muted");
    for (const [key, item] of entries) {
      dl.append(text("dt", key));
      const dd = document.createElement("dd");
      dd.append(valueNode(item, depth + 1));
      dl.append(dd);
    }
    return dl;
  }
  return scalar(value);
}

/** The panel's content: the serving facts first, then the manifest. */
export function modelPanel(info) {
  const box = document.createDocumentFragment();
  const name = info.manifest && typeof info.manifest.name === "string" ? info.manifest.name : "model";
  box.append(text("h3", name));
  const serving = {};
  for (const key of FIRST) if (key in info) serving[key] = info[key];
  for (const [key, value] of Object.entries(info)) {
    if (!FIRST.includes(key) && key !== "manifest") serving[key] = value;
  }
  box.append(text("h4", "Serving"));
  box.append(valueNode(serving));
  if (info.manifest && typeof info.manifest === "object") {
    const details = document.createElement("details");
    details.open = true;
    details.append(text("summary", "Manifest (training, evaluation, re-ranking defaults)"));
    details.append(valueNode(info.manifest));
    box.append(details);
  }
  return box;
}
