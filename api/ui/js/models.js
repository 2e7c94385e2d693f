// Models: each one the deployment offers, and a form for each generated from its published
// input schema (JSON Schema: enums become choices, numbers keep their bounds, image inputs,
// marked `x-kiln-kind: image`, take a URL or a file uploaded through `POST /v1/files`).
// Submitting starts a job and opens its page, so a newcomer can run the demo models without
// writing a line. A refusal marks the field the problem names.

import { api } from "./api.js";
import { h, fill, problem, title } from "./dom.js";

export function modelsPage(main, _params, { signal }) {
  const list = h("div", { class: "models" });
  fill(main, title("Models"), list);
  api("/v1/models", { signal }).then((models) => {
    fill(list, models.data.map((m) => h("article", { class: "card model", dataset: { model: m.name } },
      h("h2", {}, h("a", { href: `/ui/models/${m.name}` }, m.name)),
      h("p", {}, m.description),
      h("p", { class: "muted" }, `makes ${m.output}`),
      h("a", { href: `/ui/models/${m.name}`, class: "button" }, "Run"))));
  }).catch((error) => fill(list, problem(error)));
}

export function modelPage(main, [name], { signal, go }) {
  fill(main, title(name));
  api("/v1/models", { signal }).then((models) => {
    const model = models.data.find((m) => m.name === name);
    if (!model) {
      fill(main, title(name), h("p", { class: "error", role: "alert" }, "There is no such model."));
      return;
    }
    fill(main, title(name), h("p", {}, model.description), form(model, signal, go));
  }).catch((error) => fill(main, title(name), problem(error)));
}

function kindOf(schema) {
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  if (schema.enum) return "enum";
  if (schema["x-kiln-kind"] === "image") return "file";
  if (type === "string" && (schema.format === "uri" || schema.format === "uri-reference")) return "file";
  return type || "string";
}

function field(name, schema, required) {
  const id = `input-${name}`;
  const kind = kindOf(schema);
  const describe = [schema.description, schema.default !== undefined ? `Default: ${JSON.stringify(schema.default)}.` : null]
    .filter(Boolean).join(" ");
  const common = { id, name, dataset: { kind }, "aria-describedby": `${id}-help ${id}-error`, required: required && kind !== "boolean" };
  let control;
  let extra = null;
  if (kind === "enum") {
    control = h("select", common, required ? null : h("option", { value: "" }, "(default)"),
      schema.enum.filter((v) => v !== null).map((v) => h("option", { value: JSON.stringify(v), selected: v === schema.default }, String(v))));
  } else if (kind === "integer" || kind === "number") {
    control = h("input", { ...common, type: "number", min: schema.minimum, max: schema.maximum, step: kind === "integer" ? 1 : "any", placeholder: schema.default });
  } else if (kind === "boolean") {
    control = h("input", { ...common, type: "checkbox", checked: schema.default === true });
  } else if (kind === "file") {
    control = h("input", { ...common, type: "text", inputmode: "url", placeholder: "https://…, data:…, kiln://jobs/{id}/outputs/0" });
    const picker = h("input", { type: "file", id: `${id}-file`, "aria-label": `Upload a file for ${name}` });
    const note = h("span", { class: "muted", "aria-live": "polite" });
    picker.addEventListener("change", async () => {
      const file = picker.files[0];
      if (!file) return;
      fill(note, `uploading ${file.name}…`);
      try {
        const body = new FormData();
        body.append("content", file, file.name);
        const uploaded = await api("/v1/files", { method: "POST", body });
        control.value = uploaded.urls.get;
        fill(note, `uploaded ${file.name}`);
      } catch (error) {
        fill(note, problem(error));
      }
    });
    extra = h("div", { class: "row" }, h("label", { for: `${id}-file` }, "or upload"), picker, note);
  } else if (kind === "object" || kind === "array") {
    control = h("textarea", { ...common, rows: 3, placeholder: "JSON" });
  } else {
    const long = name === "prompt" || (schema.maxLength || 0) > 200;
    control = long
      ? h("textarea", { ...common, rows: 3, maxlength: schema.maxLength, placeholder: schema.default })
      : h("input", { ...common, type: "text", maxlength: schema.maxLength, placeholder: schema.default });
  }
  return h("div", { class: `field${kind === "boolean" ? " check" : ""}`, dataset: { field: name } },
    h("label", { for: id }, name, required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null),
    control, extra,
    h("div", { id: `${id}-help`, class: "help" }, describe),
    h("div", { id: `${id}-error`, class: "field-error", "aria-live": "polite" }));
}

// What a control holds, typed as the schema says; undefined when left empty (the default).
function valueOf(control) {
  const kind = control.dataset.kind;
  if (kind === "boolean") return control.checked;
  const raw = control.value.trim();
  if (raw === "") return undefined;
  if (kind === "enum") return JSON.parse(raw);
  if (kind === "integer" || kind === "number") return Number(raw);
  if (kind === "object" || kind === "array") {
    try {
      return JSON.parse(raw);
    } catch {
      return raw; // sent as typed: the server names the field
    }
  }
  return raw;
}

function form(model, signal, go) {
  const schema = model.input_schema || {};
  const required = new Set(schema.required || []);
  const properties = Object.entries(schema.properties || {});
  const status = h("div", { "aria-live": "assertive" });
  const button = h("button", { type: "submit", id: "run" }, "Run");
  const el = h("form", { class: "card model-form", id: "model-form", novalidate: false,
    onsubmit: async (event) => {
      event.preventDefault();
      const input = {};
      for (const [name] of properties) {
        const control = el.querySelector(`[name="${CSS.escape(name)}"]`);
        const value = valueOf(control);
        if (value !== undefined && !(control.dataset.kind === "boolean" && value === false && schema.properties[name].default === undefined)) input[name] = value;
      }
      const body = { model: model.name, input };
      const priority = el.querySelector("#job-priority").value;
      if (priority) body.priority = priority;
      const webhook = el.querySelector("#job-webhook").value.trim();
      if (webhook) body.webhook = webhook;
      el.querySelectorAll(".field-error").forEach((e) => fill(e));
      el.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
      button.disabled = true;
      fill(status);
      try {
        const job = await api("/v1/jobs", { method: "POST", body, signal });
        go(`/ui/jobs/${job.id}`);
      } catch (error) {
        fill(status, problem(error));
        const name = (error.field || "").replace(/^input\./, "").split(/[.[]/)[0];
        const control = name && el.querySelector(`[name="${CSS.escape(name)}"]`);
        if (control) {
          control.setAttribute("aria-invalid", "true");
          fill(el.querySelector(`#input-${CSS.escape(name)}-error`), error.message);
          control.focus();
        }
      } finally {
        button.disabled = false;
      }
    } },
    h("fieldset", {}, h("legend", {}, "Input"), properties.map(([name, s]) => field(name, s, required.has(name)))),
    h("fieldset", {}, h("legend", {}, "Job"),
      h("div", { class: "field" }, h("label", { for: "job-priority" }, "priority"),
        h("select", { id: "job-priority" }, ["", "high", "normal", "low"].map((p) => h("option", { value: p }, p || "(normal)")))),
      h("div", { class: "field" }, h("label", { for: "job-webhook" }, "webhook"),
        h("input", { id: "job-webhook", type: "url", placeholder: "https://example.com/hooks/kiln" }),
        h("div", { class: "help" }, "Optional: where job events are posted, signed (Standard Webhooks)."))),
    button, status);
  return el;
}
