// Small helpers every page shares: building elements without HTML strings (so nothing from
// the API is ever parsed as markup), and showing times, durations, money and statuses the
// same way everywhere.

// h("a", {href, class}, child, …): an element; children are nodes or text; null is skipped.
// `on*` attributes are listeners; `dataset` and `style` objects are assigned property by
// property (the content security policy forbids style attributes, not style properties).
export function h(tag, attrs = {}, ...children) {
  const svg = ["svg", "g", "rect", "line", "text", "path", "title", "polyline"].includes(tag);
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "style") Object.assign(el.style, value);
    else if (name === "class") el.setAttribute("class", value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Replaces an element's children.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

export function time(iso) {
  return iso ? h("time", { datetime: iso, title: iso }, when(iso)) : "—";
}

export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs} h ${m % 60} min`;
  return `${Math.floor(hrs / 24)} d ${hrs % 24} h`;
}

export function between(from, to) {
  if (!from) return null;
  return (to ? new Date(to) : new Date()) - new Date(from);
}

export function money(cost) {
  if (cost === null || cost === undefined) return "—";
  return cost.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 4 });
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

export const TERMINAL = ["succeeded", "failed", "canceled"];

export function badge(status) {
  return h("span", { class: `badge s-${status}`, dataset: { status } }, status);
}

// A progress bar with its value said in words for screen readers.
export function bar(fraction, label) {
  const percent = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  const inner = h("span", { style: { width: `${percent}%` } });
  return h(
    "span",
    {
      class: "bar",
      role: "progressbar",
      "aria-valuemin": 0,
      "aria-valuemax": 100,
      "aria-valuenow": percent,
      "aria-label": label,
    },
    inner,
  );
}

export function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.classList.add("shown");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("shown"), 3000);
}

// The page's error box: the problem's detail, its code and the field at fault.
export function problem(error) {
  return h(
    "div",
    { class: "error", role: "alert" },
    h("strong", {}, error.message || String(error)),
    error.code ? h("span", { class: "code" }, ` (${error.code}${error.field ? `, ${error.field}` : ""})`) : null,
  );
}

export function title(text, ...extra) {
  document.title = `${text} · Kiln`;
  return h("h1", {}, text, ...extra);
}

export async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast("Copied");
  } catch {
    // No clipboard (an insecure origin, a denied permission): select the text instead.
    toast("Select the text and copy it");
  }
}
