// Calls to the service's /v1 API from the page: the API key, and refusals as readable errors.
//
// The key lives in sessionStorage (this tab only, gone when it closes) and travels as
// "Authorization: Bearer"; every refusal has the one shape {"error": {"type", "message"}}.

const KEY_NAME = "electric-api-key";

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }

  /** One line for the user: the status, the error's type and its message. */
  describe() {
    return this.status ? `${this.status} ${this.type}: ${this.message}` : this.message;
  }
}

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY_NAME) || "";
  } catch {
    return "";  // storage switched off: the key then lasts as long as the page
  }
}

let pageKey = "";

export function currentKey() {
  return storedKey() || pageKey;
}

export function setKey(key) {
  pageKey = key;
  try {
    if (key) sessionStorage.setItem(KEY_NAME, key);
    else sessionStorage.removeItem(KEY_NAME);
  } catch {
    // keep it in pageKey only
  }
}

async function refusal(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's page, say): fall back to the status line
  }
  const error = body && typeof body === "object" ? body.error : null;
  if (error && typeof error.message === "string") {
    return new ApiError(response.status, String(error.type || "error"), error.message);
  }
  return new ApiError(response.status, "http_error",
                      response.statusText || "the service refused the request");
}

/** GET (no body) or POST (a JSON body) to the API; the parsed JSON, or an ApiError. */
export async function call(path, body) {
  const headers = {};
  const key = currentKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method: body === undefined ? "GET" : "POST", headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    throw new ApiError(0, "network", `the service did not answer (${exc.message})`);
  }
  if (!response.ok) throw await refusal(response);
  return response.json();
}
