// The jobs list: filters (status, model, time) kept in the address so a view can be shared,
// newest first, a cursor page at a time, with the caller's queue per lane above it. It stays
// live by reading the same page again every two seconds while it is on screen: one indexed
// read, where following each job's event stream would hold a connection per job and a
// browser opens at most six to one server over HTTP/1.1. A job's own page streams.

import { api, every } from "./api.js";
import { h, fill, badge, bar, time, duration, between, money, problem, title, TERMINAL } from "./dom.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "canceled"];
const PAGE = 25;

export function jobsPage(main, _params, { signal, go }) {
  const query = new URLSearchParams(location.search);
  const lanes = h("div", { class: "lanes", "aria-label": "Your queue per lane", role: "group" });
  const table = h("div", { class: "table-wrap" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  const status = h("select", { id: "filter-status", name: "status" }, h("option", { value: "" }, "any"),
    STATUSES.map((s) => h("option", { value: s, selected: query.get("status") === s }, s)));
  const model = h("select", { id: "filter-model", name: "model" }, h("option", { value: "" }, "any"));
  const since = h("select", { id: "filter-since", name: "since" },
    [["", "any time"], ["1h", "last hour"], ["24h", "last 24 hours"], ["7d", "last 7 days"], ["30d", "last 30 days"], ["custom", "between…"]]
      .map(([v, label]) => h("option", { value: v, selected: query.get("since") === v }, label)));
  // A custom window: two local times, sent as RFC 3339.
  const local = (iso) => (iso ? new Date(new Date(iso) - new Date().getTimezoneOffset() * 60e3).toISOString().slice(0, 16) : "");
  const from = h("input", { type: "datetime-local", id: "filter-from", value: local(query.get("after")) });
  const to = h("input", { type: "datetime-local", id: "filter-to", value: local(query.get("before")) });
  const custom = h("span", { class: "row", hidden: query.get("since") !== "custom" },
    h("label", { for: "filter-from" }, "from"), from, h("label", { for: "filter-to" }, "to"), to);
  since.addEventListener("change", () => { custom.hidden = since.value !== "custom"; });
  const filters = h(
    "form",
    { class: "filters", role: "search", onchange: () => apply() , onsubmit: (e) => { e.preventDefault(); apply(); } },
    h("label", { for: "filter-status" }, "Status"), status,
    h("label", { for: "filter-model" }, "Model"), model,
    h("label", { for: "filter-since" }, "Created"), since, custom,
  );
  fill(main, title("Jobs"), lanes, filters, table, pager);

  function apply(cursor) {
    const next = new URLSearchParams();
    if (status.value) next.set("status", status.value);
    if (model.value) next.set("model", model.value);
    if (since.value) next.set("since", since.value);
    // A window is fixed when applied, so every page of it reads the same jobs.
    const span = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 }[since.value];
    if (span) next.set("after", new Date(Date.now() - span).toISOString());
    if (since.value === "custom" && from.value) next.set("after", new Date(from.value).toISOString());
    if (since.value === "custom" && to.value) next.set("before", new Date(to.value).toISOString());
    if (cursor) {
      // Keep the window the cursor was made in.
      if (query.get("after")) next.set("after", query.get("after"));
      if (query.get("before")) next.set("before", query.get("before"));
      next.set("cursor", cursor);
    }
    const qs = next.toString();
    go(`/ui/jobs${qs ? `?${qs}` : ""}`, { replace: !cursor });
  }

  api("/v1/models", { signal }).then((models) => {
    for (const m of models.data) {
      model.append(h("option", { value: m.name, selected: query.get("model") === m.name }, m.name));
    }
  }).catch(() => {});

  const listQuery = new URLSearchParams({ limit: String(PAGE) });
  if (query.get("status")) listQuery.set("status", query.get("status"));
  if (query.get("model")) listQuery.set("model", query.get("model"));
  if (query.get("after")) listQuery.set("created_after", query.get("after"));
  if (query.get("before")) listQuery.set("created_before", query.get("before"));
  // A cursor carries the filters it was made with: it is sent alone, as the API asks.
  const read = query.get("cursor") ? new URLSearchParams({ cursor: query.get("cursor") }) : listQuery;

  async function refresh() {
    const [page, queue] = await Promise.all([
      api(`/v1/jobs?${read}`, { signal }),
      api("/v1/queue", { signal }),
    ]);
    fill(lanes, queue.lanes.map((l) =>
      h("div", { class: "lane card", dataset: { lane: l.lane } },
        h("span", { class: "lane-name" }, l.lane),
        h("span", {}, h("strong", {}, l.queued), " queued"),
        h("span", {}, h("strong", {}, l.running), " running"))));
    fill(table, page.data.length ? jobsTable(page.data) : h("p", { class: "empty" }, "No jobs match. ", h("a", { href: "/ui/models" }, "Run a model.")));
    fill(pager,
      query.get("cursor") ? h("a", { href: `/ui/jobs?${withoutCursor(query)}` }, "← Newest") : null,
      page.has_more && page.next_cursor
        ? h("button", { type: "button", class: "quiet", onclick: () => apply(page.next_cursor) }, "Older →")
        : null);
  }

  every(2000, refresh, signal, (error) => fill(table, problem(error)));
}

function withoutCursor(query) {
  const q = new URLSearchParams(query);
  q.delete("cursor");
  return q.toString();
}

function jobsTable(jobs) {
  return h(
    "table",
    { class: "jobs", id: "jobs-table" },
    h("caption", { class: "sr-only" }, "Jobs, newest first"),
    h("thead", {}, h("tr", {}, ["Job", "Model", "Status", "Progress", "Created", "Took", "Cost"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, jobs.map((job) =>
      h("tr", { dataset: { job: job.id, status: job.status } },
        h("td", {}, h("a", { href: `/ui/jobs/${job.id}`, class: "mono" }, shortId(job.id))),
        h("td", {}, job.model),
        h("td", {}, badge(job.status)),
        h("td", {}, progressOf(job)),
        h("td", {}, time(job.created_at)),
        h("td", {}, TERMINAL.includes(job.status) ? duration(between(job.created_at, job.completed_at)) : "—"),
        h("td", { class: "num" }, money(job.cost))))),
  );
}

// A queued job's place in line, a running job's bar: what the list says of work in flight.
export function progressOf(job) {
  if (job.status === "queued") {
    const p = job.queue_position;
    return p === null || p === undefined ? "queued" : p >= 100 ? "100+ ahead" : `${p} ahead`;
  }
  if (job.status === "running") {
    return job.progress === null || job.progress === undefined
      ? h("span", { class: "muted" }, "running")
      : bar(job.progress, `${Math.round(job.progress * 100)} percent done`);
  }
  return "";
}

export function shortId(id) {
  return id.length > 13 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id;
}
