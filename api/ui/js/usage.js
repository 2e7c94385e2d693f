// Usage over a chosen window: cost per day as a stacked bar chart split by model or provider
// (drawn as SVG here, with the same numbers in a table for screen readers and for copying),
// the window's totals (jobs, success rate, fallbacks, cost) and the sums per model and per
// provider. Two reads of `GET /v1/usage` (per day, split by model; per day, split by
// provider), each one pass over the window's jobs: a job falls in one day, so the sums per
// model and per provider are the parts added up over the days, and switching the chart's
// split needs no read at all.

import { api } from "./api.js";
import { h, fill, money, problem, title } from "./dom.js";

const PALETTE = ["#b4532a", "#2a6fb4", "#3f8f4f", "#8a4fb4", "#b49a2a", "#2aa3a3", "#b42a6f", "#6b6b6b"];

export function usagePage(main, _params, { signal }) {
  const query = new URLSearchParams(location.search);
  const days = h("select", { id: "usage-window" }, [7, 30, 90].map((d) => h("option", { value: d, selected: String(d) === (query.get("days") || "30") }, `last ${d} days`)));
  const split = h("select", { id: "usage-split" }, ["model", "provider"].map((s) => h("option", { value: s, selected: s === (query.get("split") || "model") }, `by ${s}`)));
  const totals = h("div", { class: "totals", id: "usage-totals" });
  const chart = h("figure", { class: "card chart", id: "usage-chart" });
  const tables = h("div", { class: "grid-2" });
  const controls = h("form", { class: "filters", onsubmit: (e) => e.preventDefault() },
    h("label", { for: "usage-window" }, "Window"), days, h("label", { for: "usage-split" }, "Split"), split);
  fill(main, title("Usage"), controls, totals, chart, tables);
  let read = null;

  function draw() {
    history.replaceState(null, "", `/ui/usage?days=${days.value}&split=${split.value}`);
    if (!read) return;
    const { byModel, byProvider, from, to } = read;
    const t = byModel.total;
    const rate = t.jobs ? `${((t.succeeded / t.jobs) * 100).toFixed(1)} %` : "—";
    fill(totals, [["Jobs", t.jobs], ["Success rate", rate], ["Failed", t.failed], ["Fallbacks", t.fallbacks], ["Cost", money(t.cost)], ["Cost per success", money(t.cost_per_success)]]
      .map(([k, v]) => h("div", { class: "card stat" }, h("div", { class: "muted" }, k), h("div", { class: "big" }, v))));
    drawChart(chart, split.value === "model" ? byModel : byProvider, from, to, split.value);
    fill(tables, groupTable("By model", summed(byModel.parts)), groupTable("By provider", summed(byProvider.parts)));
  }

  async function load() {
    const to = new Date();
    const from = new Date(to - Number(days.value) * 86400e3);
    const range = `from=${from.toISOString()}&to=${to.toISOString()}&group_by=day`;
    try {
      const [byModel, byProvider] = await Promise.all([
        api(`/v1/usage?${range}&split=model`, { signal }),
        api(`/v1/usage?${range}&split=provider`, { signal }),
      ]);
      read = { byModel, byProvider, from, to };
      draw();
    } catch (error) {
      if (!signal.aborted) fill(totals, problem(error));
    }
  }
  days.addEventListener("change", load);
  split.addEventListener("change", draw);
  load();
}

// The parts of every day added up per model (or provider).
function summed(parts = []) {
  const by = new Map();
  for (const p of parts) {
    const s = by.get(p.key) || by.set(p.key, { key: p.key, jobs: 0, succeeded: 0, failed: 0, fallbacks: 0, cost: 0 }).get(p.key);
    for (const f of ["jobs", "succeeded", "failed", "fallbacks", "cost"]) s[f] += p[f];
  }
  return [...by.values()]
    .sort((a, b) => a.key.localeCompare(b.key))
    .map((s) => ({ ...s, cost_per_success: s.succeeded ? s.cost / s.succeeded : null }));
}

function dayKeys(from, to) {
  const keys = [];
  const d = new Date(Date.UTC(from.getUTCFullYear(), from.getUTCMonth(), from.getUTCDate()));
  while (d <= to) {
    keys.push(d.toISOString().slice(0, 10));
    d.setUTCDate(d.getUTCDate() + 1);
  }
  return keys;
}

function drawChart(el, usage, from, to, split) {
  const days = dayKeys(from, to);
  const parts = usage.parts || [];
  const names = [...new Set(parts.map((p) => p.key))].sort();
  const color = new Map(names.map((n, i) => [n, PALETTE[i % PALETTE.length]]));
  const cost = new Map(); // day → [[name, cost]]
  for (const p of parts) (cost.get(p.group) || cost.set(p.group, []).get(p.group)).push([p.key, p.cost]);
  const max = Math.max(0, ...days.map((d) => (cost.get(d) || []).reduce((s, [, c]) => s + c, 0)));
  const width = 720, height = 240, left = 56, bottom = 24, top = 8;
  const step = (width - left) / days.length;
  const scale = max > 0 ? (height - bottom - top) / max : 0;
  const svg = h("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": "chart-title", class: "bars" },
    h("title", { id: "chart-title" }, `Cost per day ${split === "model" ? "by model" : "by provider"}`));
  for (const fraction of [0, 0.5, 1]) {
    const y = height - bottom - fraction * max * scale;
    svg.append(h("line", { x1: left, x2: width, y1: y, y2: y, class: "grid" }),
      h("text", { x: left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, money(fraction * max)));
  }
  days.forEach((day, i) => {
    let y = height - bottom;
    for (const [name, c] of cost.get(day) || []) {
      const barHeight = c * scale;
      y -= barHeight;
      svg.append(h("rect", { x: left + i * step + 1, y, width: Math.max(1, step - 2), height: barHeight, fill: color.get(name) },
        h("title", {}, `${day} · ${name}: ${money(c)}`)));
    }
    if (days.length <= 31 ? i % Math.ceil(days.length / 8) === 0 : i % 15 === 0) {
      svg.append(h("text", { x: left + i * step + step / 2, y: height - 6, class: "axis", "text-anchor": "middle" }, day.slice(5)));
    }
  });
  const legend = h("ul", { class: "legend" }, names.map((n) => h("li", {}, h("span", { class: "swatch", style: { background: color.get(n) } }), n)));
  const table = h("details", {}, h("summary", {}, "As a table"),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Day"), h("th", { scope: "col" }, split), h("th", { scope: "col" }, "Jobs"), h("th", { scope: "col" }, "Cost"))),
      h("tbody", {}, parts.map((p) => h("tr", {}, h("td", {}, p.group), h("td", {}, p.key), h("td", { class: "num" }, p.jobs), h("td", { class: "num" }, money(p.cost)))))));
  fill(el, h("figcaption", {}, h("h2", {}, "Cost per day")), names.length ? [svg, legend] : h("p", { class: "muted" }, "Nothing cost anything in this window."), table);
}

function groupTable(caption, rows) {
  return h("section", { class: "card" }, h("h2", {}, caption),
    rows.length === 0 ? h("p", { class: "muted" }, "Nothing in this window.") :
      h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["", "Jobs", "Succeeded", "Failed", "Fallbacks", "Cost", "Per success"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, rows.map((r) => h("tr", {}, h("th", { scope: "row" }, r.key), h("td", { class: "num" }, r.jobs), h("td", { class: "num" }, r.succeeded),
          h("td", { class: "num" }, r.failed), h("td", { class: "num" }, r.fallbacks), h("td", { class: "num" }, money(r.cost)), h("td", { class: "num" }, money(r.cost_per_success))))))));
}
