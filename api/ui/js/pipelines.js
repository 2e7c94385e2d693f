// Pipelines: the list (read again every two seconds while shown, like the jobs list), and a
// pipeline as the graph of its steps: one column per depth (a step sits right of everything it
// depends on), arrows drawn between them, each step's live status, its job, and its outputs
// once it has them. The page follows the pipeline's event stream; a step's outputs are read
// from its job when the step succeeds.

import { api, follow, every } from "./api.js";
import { h, fill, badge, time, duration, between, money, problem, title, TERMINAL } from "./dom.js";
import { outputCard } from "./job.js";
import { shortId } from "./jobs.js";

export function pipelinesPage(main, _params, { signal }) {
  const table = h("div", { class: "table-wrap" });
  fill(main, title("Pipelines"),
    h("p", { class: "help" }, "Submit one with ", h("code", {}, "POST /v1/pipelines"), "; each step's outputs feed the steps that depend on it."),
    table);
  every(2000, async () => {
    const page = await api("/v1/pipelines?limit=50", { signal });
    fill(table, page.data.length === 0 ? h("p", { class: "empty" }, "No pipelines yet.") :
      h("table", { id: "pipelines-table" },
        h("thead", {}, h("tr", {}, ["Pipeline", "Status", "Steps", "Created", "Took", "Cost"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, page.data.map((p) => h("tr", { dataset: { pipeline: p.id, status: p.status } },
          h("td", {}, h("a", { href: `/ui/pipelines/${p.id}`, class: "mono" }, shortId(p.id))),
          h("td", {}, badge(p.status)),
          h("td", {}, p.steps.map((s) => s.name).join(" → ")),
          h("td", {}, time(p.created_at)),
          h("td", {}, TERMINAL.includes(p.status) ? duration(between(p.created_at, p.completed_at)) : "—"),
          h("td", { class: "num" }, money(p.cost)))))));
  }, signal, (error) => fill(table, problem(error)));
}

export function pipelinePage(main, [id], { signal }) {
  const head = h("div", { class: "page-head" }, title("Pipeline"));
  const graph = h("div", { class: "graph", id: "pipeline-graph", role: "list", "aria-label": "Steps" });
  const facts = h("section", { class: "card" });
  fill(main, head, facts, h("h2", {}, "Steps"), graph);
  const stepJobs = new Map(); // step name → its job, once it succeeded (for its outputs)

  async function draw(p) {
    fill(head, title("Pipeline ", h("span", { class: "mono id" }, p.id)),
      h("div", { class: "actions" }, h("span", { id: "pipeline-status", dataset: { status: p.status } }, badge(p.status)),
        TERMINAL.includes(p.status) ? null : h("button", { type: "button", class: "danger", onclick: async () => {
          try { draw(await api(`/v1/pipelines/${p.id}/cancel`, { method: "POST" })); } catch (e) { fill(facts, problem(e)); }
        } }, "Cancel")));
    fill(facts, h("dl", { class: "facts" },
      h("dt", {}, "Created"), h("dd", {}, time(p.created_at)),
      h("dt", {}, "Finished"), h("dd", {}, time(p.completed_at)),
      h("dt", {}, "Cost"), h("dd", {}, money(p.cost)),
      p.error ? [h("dt", {}, "Error"), h("dd", { class: "error-text" }, `${p.error.code}: ${p.error.message}`)] : null));
    for (const step of p.steps) {
      if (step.status === "succeeded" && step.job_id && !stepJobs.has(step.name)) {
        stepJobs.set(step.name, await api(`/v1/jobs/${step.job_id}`, { signal }).catch(() => null));
      }
    }
    drawGraph(graph, p.steps, stepJobs);
  }

  (async () => {
    try {
      const p = await api(`/v1/pipelines/${id}`, { signal });
      await draw(p);
      if (!TERMINAL.includes(p.status)) {
        await follow(`/v1/pipelines/${id}/events`, (name, view) => name === "pipeline" && draw(view), signal);
      }
    } catch (error) {
      if (signal.aborted) return;
      fill(main, title("Pipeline"), error.status === 404
        ? h("p", { class: "error", role: "alert", id: "not-found" }, "Pipeline not found: there is none with this id that your key may see.")
        : problem(error));
    }
  })();
  const redraw = () => graph.isConnected && arrows(graph);
  window.addEventListener("resize", redraw);
  return () => window.removeEventListener("resize", redraw);
}

// Each step's depth: one more than the deepest step it depends on.
function depths(steps) {
  const byName = new Map(steps.map((s) => [s.name, s]));
  const depth = new Map();
  const of = (s, seen = new Set()) => {
    if (depth.has(s.name)) return depth.get(s.name);
    if (seen.has(s.name)) return 0;
    seen.add(s.name);
    const d = Math.max(-1, ...s.depends_on.map((n) => (byName.has(n) ? of(byName.get(n), seen) : -1))) + 1;
    depth.set(s.name, d);
    return d;
  };
  steps.forEach((s) => of(s));
  return depth;
}

function drawGraph(graph, steps, stepJobs) {
  const depth = depths(steps);
  const columns = [];
  for (const step of steps) (columns[depth.get(step.name)] ||= []).push(step);
  fill(graph, columns.map((column, i) => h("div", { class: "column", role: "presentation" }, column.map((step) => {
    const job = stepJobs.get(step.name);
    return h("div", { class: "node card", role: "listitem", id: `step-${step.name}`, dataset: { step: step.name, status: step.status, depth: i, after: step.depends_on.join(",") } },
      h("div", { class: "row" }, h("strong", {}, step.name), " ", badge(step.status)),
      h("div", { class: "muted" }, step.model),
      step.depends_on.length ? h("div", { class: "muted" }, "after ", step.depends_on.join(", ")) : null,
      step.job_id ? h("a", { href: `/ui/jobs/${step.job_id}`, class: "mono" }, `job ${shortId(step.job_id)}`) : null,
      job ? h("div", { class: "node-outputs" }, job.outputs.map((o) => outputCard(job, o))) : null);
  }))));
  requestAnimationFrame(() => arrows(graph));
}

// Lines from each step to the steps that depend on it, over the laid-out boxes.
function arrows(graph) {
  graph.querySelector("svg.edges")?.remove();
  const box = graph.getBoundingClientRect();
  const svg = h("svg", { class: "edges", width: graph.scrollWidth, height: graph.scrollHeight, "aria-hidden": "true" });
  for (const node of graph.querySelectorAll(".node")) {
    const to = node.getBoundingClientRect();
    const after = node.dataset.after ? node.dataset.after.split(",") : [];
    for (const name of after) {
      const from = graph.querySelector(`#step-${CSS.escape(name)}`)?.getBoundingClientRect();
      if (!from) continue;
      const x1 = from.right - box.left + graph.scrollLeft;
      const y1 = from.top + from.height / 2 - box.top + graph.scrollTop;
      const x2 = to.left - box.left + graph.scrollLeft;
      const y2 = to.top + to.height / 2 - box.top + graph.scrollTop;
      const mid = (x1 + x2) / 2;
      svg.append(h("path", { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 4},${y2}`, class: "edge" }));
      svg.append(h("path", { d: `M${x2 - 10},${y2 - 5} L${x2 - 2},${y2} L${x2 - 10},${y2 + 5}`, class: "edge" }));
    }
  }
  graph.prepend(svg);
}
