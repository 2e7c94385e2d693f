// A job's page: what was asked (its input, "copy as curl"), what happened (its status timeline,
// every attempt with its route, outcome, error class, fallback reason, cost and time), what it
// made (images shown, videos in a seekable player, each with its expiry) and whether its
// webhooks arrived (every delivery with its tries, and redeliver). It follows the job's event
// stream, so it changes as the job does without a reload; the timeline and deliveries are read
// again whenever the job's state changes.

import { api, follow, every } from "./api.js";
import { h, fill, badge, bar, time, duration, between, money, bytes, problem, title, copy, toast, TERMINAL } from "./dom.js";

export function jobPage(main, [id], { signal }) {
  const head = h("div", { class: "page-head" });
  const summary = h("section", { class: "card", "aria-labelledby": "summary-h" });
  const outputs = h("section", { "aria-labelledby": "outputs-h" });
  const timeline = h("section", { class: "card", "aria-labelledby": "timeline-h" });
  const attempts = h("section", { "aria-labelledby": "attempts-h" });
  const input = h("section", { class: "card", "aria-labelledby": "input-h" });
  const deliveries = h("section", { "aria-labelledby": "deliveries-h" });
  fill(main, head, h("div", { class: "grid-2" }, summary, timeline), outputs, attempts, h("div", { class: "grid-2" }, input, deliveries));
  fill(head, title("Job"));

  let last = null;
  let lastStatus = null;

  function draw(job) {
    last = job;
    drawHead(head, job);
    drawSummary(summary, job);
    drawOutputs(outputs, job);
    drawAttempts(attempts, job);
    if (!input.dataset.drawn) drawInput(input, job);
    if (job.status !== lastStatus) {
      lastStatus = job.status;
      loadTimeline();
      loadDeliveries();
    }
  }

  async function loadTimeline() {
    try {
      const history = await api(`/v1/jobs/${id}/transitions`, { signal });
      drawTimeline(timeline, history.data);
    } catch (error) {
      if (!signal.aborted) fill(timeline, problem(error));
    }
  }

  async function loadDeliveries() {
    try {
      const list = await api(`/v1/jobs/${id}/deliveries`, { signal });
      drawDeliveries(deliveries, list.data, id, watchDeliveries);
      return list.data;
    } catch (error) {
      if (!signal.aborted) fill(deliveries, problem(error));
      return [];
    }
  }

  // Webhooks are delivered after the job ends, and again when asked: the log is read every two
  // seconds while a delivery is pending.
  let watching = false;
  async function watchDeliveries() {
    if (watching) return;
    watching = true;
    await every(2000, async () => {
      const list = await loadDeliveries();
      return list.some((d) => d.status === "pending");
    }, signal);
    watching = false;
  }

  async function cancel() {
    try {
      draw(await api(`/v1/jobs/${id}/cancel`, { method: "POST", signal }));
      toast("Canceled");
    } catch (error) {
      toast(error.message);
    }
  }
  head.addEventListener("kiln-cancel", cancel);

  (async () => {
    try {
      draw(await api(`/v1/jobs/${id}`, { signal }));
      if (!TERMINAL.includes(last.status)) {
        await follow(`/v1/jobs/${id}/events`, (name, job) => name === "job" && draw(job), signal);
      }
      watchDeliveries();
    } catch (error) {
      if (signal.aborted) return;
      fill(main, title("Job"), error.status === 404
        ? h("p", { class: "error", role: "alert", id: "not-found" }, "Job not found: there is no job with this id that your key may see.")
        : problem(error));
    }
  })();
}

function drawHead(head, job) {
  fill(head,
    title("Job ", h("span", { class: "mono id" }, job.id)),
    h("div", { class: "actions" },
      badge(job.status),
      TERMINAL.includes(job.status) ? null : h("button", { type: "button", class: "danger", id: "cancel", onclick: () => head.dispatchEvent(new Event("kiln-cancel")) }, "Cancel"),
      h("button", { type: "button", class: "quiet", id: "copy-curl", onclick: () => copy(curlOf(job)) }, "Copy as curl")));
}

function drawSummary(el, job) {
  const rows = [
    ["Status", h("span", { id: "job-status", dataset: { status: job.status } }, job.status)],
    ["Model", h("a", { href: `/ui/models/${job.model}` }, job.model)],
    ["Priority", job.priority],
  ];
  if (job.status === "queued") rows.push(["Queue", job.queue_position === null ? "waiting" : `${job.queue_position >= 100 ? "100+" : job.queue_position} ahead`]);
  if (job.status === "running") {
    rows.push(["Progress", job.progress === null ? "running" : bar(job.progress, `${Math.round(job.progress * 100)} percent done`)]);
  }
  rows.push(
    ["Created", time(job.created_at)],
    ["Started", time(job.started_at)],
    ["Finished", time(job.completed_at)],
    ["Took", job.completed_at ? duration(between(job.created_at, job.completed_at)) : duration(between(job.created_at)) + " so far"],
    ["Cost", money(job.cost)],
    ["Outputs expire", time(job.expires_at)],
    ["Webhook", job.webhook || "—"],
  );
  if (job.error) rows.push(["Error", h("span", { class: "error-text" }, `${job.error.code}: ${job.error.message}`)]);
  fill(el, h("h2", { id: "summary-h" }, "Summary"), h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
}

function drawTimeline(el, history) {
  const start = history.length ? new Date(history[0].at) : null;
  fill(el, h("h2", { id: "timeline-h" }, "Timeline"),
    h("ol", { class: "timeline", id: "timeline" }, history.map((t) =>
      h("li", { dataset: { to: t.to } },
        badge(t.to),
        " ", time(t.at),
        start ? h("span", { class: "muted" }, ` +${duration(new Date(t.at) - start)}`) : null,
        t.reason ? h("div", { class: "muted" }, t.reason) : null))));
}

function drawOutputs(el, job) {
  if (!job.outputs.length) {
    fill(el, h("h2", { id: "outputs-h" }, "Outputs"), h("p", { class: "muted" }, TERMINAL.includes(job.status) ? "No outputs." : "Not yet."));
    return;
  }
  // A player being watched is not replaced when the job is drawn again.
  if (el.dataset.outputs === String(job.outputs.length) && job.outputs.every((o) => !o.expired)) return;
  el.dataset.outputs = String(job.outputs.length);
  fill(el, h("h2", { id: "outputs-h" }, "Outputs"), h("div", { class: "outputs" }, job.outputs.map((o) => outputCard(job, o))));
}

export function outputCard(job, o) {
  const label = `Output ${o.index} of job ${job.id}`;
  let media;
  if (o.expired || !o.url) media = h("p", { class: "muted" }, "Expired: the file was deleted.");
  else if (o.content_type.startsWith("image/")) {
    media = h("img", { src: o.url, alt: label, class: "output-image", dataset: { index: o.index }, width: o.width, height: o.height, loading: "lazy" });
  } else if (o.content_type.startsWith("video/")) {
    media = h("video", { src: o.url, controls: true, preload: "metadata", class: "output-video", dataset: { index: o.index }, "aria-label": label, poster: o.preview_url, width: o.width, height: o.height, playsinline: true });
  } else media = h("a", { href: o.url }, "Download");
  const facts = [o.content_type, bytes(o.bytes)];
  if (o.width) facts.push(`${o.width}×${o.height}`);
  if (o.duration_seconds) facts.push(`${o.duration_seconds.toFixed(2)} s`);
  if (o.fps) facts.push(`${o.fps} fps`);
  return h("figure", { class: "output card" }, media,
    h("figcaption", {},
      h("div", {}, facts.join(" · ")),
      h("div", { class: "muted" }, o.expired ? "expired " : "expires ", time(o.expires_at)),
      o.url ? h("a", { href: o.url, download: `${job.id}-${o.index}` }, "Download") : null));
}

function drawAttempts(el, job) {
  fill(el, h("h2", { id: "attempts-h" }, "Attempts"),
    job.attempts.length === 0 ? h("p", { class: "muted" }, "None yet.") :
      h("div", { class: "table-wrap" }, h("table", { id: "attempts" },
        h("thead", {}, h("tr", {}, ["#", "Route", "Provider", "Outcome", "Error class", "Error", "Fallback reason", "Cost", "Took"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, job.attempts.map((a) => h("tr", { dataset: { number: a.number } },
          h("td", {}, a.number),
          h("td", { class: "mono" }, a.route),
          h("td", {}, a.provider),
          h("td", {}, a.outcome ? badge(a.outcome) : a.progress !== null ? bar(a.progress, "attempt progress") : "running"),
          h("td", { class: "error-class" }, a.error_class || "—"),
          h("td", {}, a.error ? `${a.error.code}: ${a.error.message}` : "—"),
          h("td", { class: "fallback-reason" }, a.fallback_reason || "—"),
          h("td", { class: "num" }, money(a.cost)),
          h("td", {}, duration(between(a.started_at, a.finished_at)))))))));
}

function drawInput(el, job) {
  el.dataset.drawn = "1";
  fill(el, h("h2", { id: "input-h" }, "Input"), h("pre", { class: "json", tabindex: 0 }, JSON.stringify(job.input, null, 2)));
}

function drawDeliveries(el, list, jobId, reload) {
  const redeliver = async (delivery) => {
    try {
      await api(`/v1/jobs/${jobId}/deliveries/${delivery}/redeliver`, { method: "POST" });
      toast("Scheduled again");
      reload();
    } catch (error) {
      toast(error.message);
    }
  };
  fill(el, h("h2", { id: "deliveries-h" }, "Webhook deliveries"),
    list.length === 0 ? h("p", { class: "muted" }, "None: this job has no webhook, or it has not ended.") :
      h("ul", { class: "deliveries", id: "deliveries" }, list.map((d) =>
        h("li", { class: "card", dataset: { delivery: d.id, status: d.status } },
          h("div", { class: "row" }, h("strong", {}, d.type), " ", badge(d.status), " ",
            h("span", { class: "mono muted" }, d.url)),
          h("ol", { class: "tries" }, d.tries.map((t) => h("li", { class: "try" }, tryText(t)))),
          d.next_try_at ? h("div", { class: "muted" }, "next try ", time(d.next_try_at)) : null,
          h("button", { type: "button", class: "quiet redeliver", onclick: () => redeliver(d.id) }, "Redeliver")))));
}

function tryText(t) {
  const outcome = t.status_code ? `HTTP ${t.status_code}` : t.error || "no answer";
  return [`try ${t.number}: `, time(t.at), " — ", outcome, ` in ${duration(t.latency_ms)}`];
}

// The submit that made this job, as a shell command. The key is left as a variable: the page
// never writes it anywhere.
function curlOf(job) {
  const body = { model: job.model, input: job.input };
  if (job.priority && job.priority !== "normal") body.priority = job.priority;
  if (job.webhook) body.webhook = job.webhook;
  if (job.webhook_events) body.webhook_events = job.webhook_events;
  const json = JSON.stringify(body).replaceAll("'", "'\\''");
  return `curl -sS ${location.origin}/v1/jobs \\\n  -H "Authorization: Bearer $KILN_API_KEY" \\\n  -H "Content-Type: application/json" \\\n  -d '${json}'`;
}
