// The dashboard's shell: sign-in, the router and the navigation. Pages live at real paths
// under /ui (a job is /ui/jobs/{id}), so they can be bookmarked and reloaded; the server
// answers every one with this same page. Each page is a function that draws into <main>
// and may return a cleanup, called when the user leaves, which stops its streams and polls.

import { api, apiKey, signIn, signOut, whenRefused } from "./api.js";
import { h, fill, problem, title } from "./dom.js";
import { jobsPage } from "./jobs.js";
import { jobPage } from "./job.js";
import { pipelinesPage, pipelinePage } from "./pipelines.js";
import { modelsPage, modelPage } from "./models.js";
import { usagePage } from "./usage.js";
import { webhooksPage } from "./webhooks.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOutButton = document.getElementById("sign-out");

const routes = [
  [/^\/ui\/jobs\/?$/, jobsPage],
  [/^\/ui\/jobs\/([^/]+)$/, jobPage],
  [/^\/ui\/pipelines\/?$/, pipelinesPage],
  [/^\/ui\/pipelines\/([^/]+)$/, pipelinePage],
  [/^\/ui\/models\/?$/, modelsPage],
  [/^\/ui\/models\/([^/]+\/[^/]+)$/, modelPage],
  [/^\/ui\/usage\/?$/, usagePage],
  [/^\/ui\/webhooks\/?$/, webhooksPage],
];

let leave = null;

export function go(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

function render() {
  if (leave) {
    leave();
    leave = null;
  }
  const path = location.pathname;
  if (!apiKey()) {
    showNav(false);
    signInPage(path === "/ui" || path === "/ui/" ? "/ui/jobs" : path + location.search);
    return;
  }
  showNav(true);
  if (path === "/ui" || path === "/ui/") {
    go("/ui/jobs", { replace: true });
    return;
  }
  for (const [pattern, page] of routes) {
    const match = path.match(pattern);
    if (match) {
      const controller = new AbortController();
      const params = match.slice(1).map(decodeURIComponent);
      const cleanup = page(main, params, { signal: controller.signal, go });
      leave = () => {
        controller.abort();
        if (typeof cleanup === "function") cleanup();
      };
      markCurrent(path);
      main.focus({ preventScroll: true });
      return;
    }
  }
  fill(main, title("Not found"), h("p", {}, "There is no such page. ", h("a", { href: "/ui/jobs" }, "See the jobs.")));
}

function showNav(signedIn) {
  nav.hidden = !signedIn;
  signOutButton.hidden = !signedIn;
}

function markCurrent(path) {
  for (const link of nav.querySelectorAll("a")) {
    const section = link.getAttribute("href");
    if (path === section || path.startsWith(section + "/")) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// Signing in tries the key on a read every key may make; only an accepted key is kept.
function signInPage(returnTo) {
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "kiln_…",
    "aria-describedby": "api-key-help",
  });
  const status = h("div", { id: "sign-in-status", "aria-live": "assertive" });
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    {
      class: "card narrow",
      onsubmit: async (event) => {
        event.preventDefault();
        const key = input.value.trim();
        button.disabled = true;
        fill(status);
        try {
          await api("/v1/queue", { key });
          signIn(key);
          go(returnTo, { replace: true });
        } catch (error) {
          const message =
            error.status === 401
              ? "That API key was not accepted. Check it, or mint one with `kiln keys create`."
              : `Could not sign in: ${error.message}`;
          fill(status, problem({ message, code: error.code }));
          input.focus();
        } finally {
          button.disabled = false;
        }
      },
    },
    title("Sign in"),
    h("label", { for: "api-key" }, "API key"),
    input,
    h(
      "p",
      { id: "api-key-help", class: "help" },
      "The key stays in this browser tab (session storage) and is sent only to this server. You see what this key may see through the API.",
    ),
    button,
    status,
  );
  fill(main, form);
  input.focus();
}

whenRefused(() => {
  signOut();
  render();
});

signOutButton.addEventListener("click", () => {
  signOut();
  go("/ui");
});

// Same-origin links under /ui are followed without a reload; the rest navigate as usual.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const href = link.getAttribute("href");
  if (!href || !href.startsWith("/ui") || link.hasAttribute("download") || link.target) return;
  event.preventDefault();
  go(href);
});

window.addEventListener("popstate", render);
render();
