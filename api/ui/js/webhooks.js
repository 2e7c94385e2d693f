// Webhooks: the key's signing secret, hidden until asked for (it is read from the API only
// then), and its rotation, after which the previous secret keeps signing beside the new one
// for a day so receivers can switch without dropping a delivery.

import { api } from "./api.js";
import { h, fill, problem, title, time, copy } from "./dom.js";

export function webhooksPage(main, _params, { signal }) {
  const secret = h("code", { id: "webhook-secret", class: "secret" }, "whsec_••••••••••••••••");
  const status = h("div", { "aria-live": "polite" });
  const reveal = h("button", { type: "button", id: "reveal-secret", onclick: async () => {
    try {
      const s = await api("/v1/webhooks/default/secret", { signal });
      fill(secret, s.key);
      reveal.hidden = true;
      copyButton.hidden = false;
    } catch (error) {
      fill(status, problem(error));
    }
  } }, "Reveal");
  const copyButton = h("button", { type: "button", class: "quiet", hidden: true, onclick: () => copy(secret.textContent) }, "Copy");
  const rotate = h("button", { type: "button", class: "danger", id: "rotate-secret", onclick: async () => {
    if (!confirm("Rotate the signing secret? The current one keeps signing beside the new one for 24 hours.")) return;
    try {
      const s = await api("/v1/webhooks/default/secret/rotate", { method: "POST", signal });
      fill(secret, s.key);
      reveal.hidden = true;
      copyButton.hidden = false;
      fill(status, h("p", {}, "Rotated. The previous secret still signs until ", time(s.previous_valid_until), "."));
    } catch (error) {
      fill(status, problem(error));
    }
  } }, "Rotate");
  fill(main, title("Webhooks"),
    h("section", { class: "card" },
      h("h2", {}, "Signing secret"),
      h("p", {}, "Deliveries are signed per Standard Webhooks (", h("code", {}, "webhook-id"), ", ", h("code", {}, "webhook-timestamp"), ", ", h("code", {}, "webhook-signature"), ") with this key's secret."),
      h("p", {}, secret), h("div", { class: "actions" }, reveal, copyButton, rotate), status),
    h("p", { class: "help" }, "Each job's deliveries, with every try and a redeliver button, are on the job's page."));
}
