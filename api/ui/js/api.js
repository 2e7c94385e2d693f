// The dashboard's one way to the API: every call carries the signed-in key from session
// storage (never a URL, never a log), and every refusal becomes an ApiError holding the
// problem's code, field and detail (RFC 9457), so each page can say what went wrong.

const KEY = "kiln.key";

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function signIn(key) {
  sessionStorage.setItem(KEY, key);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || problem.type || `http_${status}`;
    this.field = problem.field || null;
  }
}

// Notified when the key is refused mid-session (revoked, or the server restarted with
// another ledger), so the page can ask for it again.
let onRefused = () => {};
export function whenRefused(handler) {
  onRefused = handler;
}

function headers(extra = {}, key = apiKey()) {
  const h = { Accept: "application/json", ...extra };
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(response) {
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    problem = { detail: `${response.status} ${response.statusText}` };
  }
  return new ApiError(response.status, problem);
}

// A JSON call. `key` overrides the stored key (sign-in tries a key before keeping it).
export async function api(path, { method = "GET", body, signal, key } = {}) {
  const init = { method, signal, headers: headers({}, key ?? apiKey()) };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    const error = await failure(response);
    if (response.status === 401 && key === undefined) onRefused(error);
    throw error;
  }
  // 202 may carry a body (a job accepted and still queued) or none (a redelivery scheduled).
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// Follows a server-sent event stream (`GET …/events`) with the key in a header, which
// EventSource cannot send: each event's data is parsed and handed to `onEvent(name, data)`.
// A dropped connection is resumed with `Last-Event-ID` after a pause; the stream's own end
// (after a terminal event) ends the follow. Returns when done or when `signal` aborts.
export async function follow(path, onEvent, signal) {
  let lastId = null;
  let pause = 500;
  while (!signal.aborted) {
    const extra = { Accept: "text/event-stream" };
    if (lastId) extra["Last-Event-ID"] = lastId;
    let response;
    try {
      response = await fetch(path, { headers: headers(extra), signal });
    } catch (error) {
      if (signal.aborted) return;
      await sleep(pause, signal);
      pause = Math.min(pause * 2, 8000);
      continue;
    }
    if (!response.ok) {
      const error = await failure(response);
      if (response.status === 401) onRefused(error);
      throw error;
    }
    pause = 500;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { name: "message", data: [], id: null };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return; // the server ends the stream after the terminal event
        buffer += value;
        let newline;
        while ((newline = buffer.search(/\r?\n/)) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + (buffer[newline] === "\r" ? 2 : 1));
          if (line === "") {
            if (event.id !== null) lastId = event.id;
            if (event.data.length) onEvent(event.name, JSON.parse(event.data.join("\n")));
            event = { name: "message", data: [], id: null };
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") event.name = text;
            else if (field === "data") event.data.push(text);
            else if (field === "id") event.id = text;
          }
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      await sleep(pause, signal); // dropped mid-stream: resume where it was
    }
  }
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

// Calls `task` now and then every `ms` while the page is shown and the tab visible, until
// `signal` aborts or the task returns false. A failed call goes to `onError` (the page shows
// it) and is tried again on the next tick.
export async function every(ms, task, signal, onError = console.warn) {
  while (!signal.aborted) {
    if (document.visibilityState === "visible") {
      try {
        if ((await task()) === false) return;
      } catch (error) {
        if (signal.aborted) return;
        onError(error);
      }
    }
    await sleep(ms, signal);
  }
}
