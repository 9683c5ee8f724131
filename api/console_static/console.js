// The tandem console: reads /v1/admin/overview every few seconds, acts through the admin
// endpoints, explains one user's answer. Plain DOM, text only (never innerHTML with data).
"use strict";

const TOKEN_KEY = "tandem.adminToken";
const REFRESH_MS = 2000;
const ARM_MS = 5000;
let armed = null; // {key, until}: an action button clicked once, waiting for its confirmation
let timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function status(text, isError, id) {
  const node = document.getElementById(id || "status");
  node.textContent = text;
  node.classList.toggle("error", Boolean(isError));
}

async function call(method, path, body) {
  const headers = { Authorization: "Bearer " + token() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  let payload = null;
  try { payload = await response.json(); } catch (e) { payload = null; }
  if (!response.ok) {
    const why = (payload && (payload.error || payload.detail || payload.title)) || response.statusText;
    const error = new Error(`${response.status}: ${why}`);
    error.status = response.status;
    throw error;
  }
  return payload;
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  return typeof value === "number" ? value.toFixed(digits) : String(value);
}

function age(seconds) {
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

// -- actions ------------------------------------------------------------------------------

function actionButton(key, label, confirmLabel, className, act) {
  const isArmed = armed && armed.key === key && armed.until > Date.now();
  return el("button", {
    type: "button",
    class: className + (isArmed ? " armed" : ""),
    "data-key": key,
    onclick: async (event) => {
      if (!(armed && armed.key === key && armed.until > Date.now())) {
        armed = { key, until: Date.now() + ARM_MS };
        event.target.textContent = confirmLabel;
        event.target.classList.add("armed");
        return;
      }
      armed = null;
      event.target.disabled = true;
      try {
        status(await act(), false, "action");
      } catch (error) {
        status(`${label} failed: ${error.message}`, true, "action");
      }
      refresh();
    },
  }, isArmed ? confirmLabel : label);
}

async function rollback(store) {
  const answer = await call("POST", `/v1/stores/${encodeURIComponent(store)}/rollback`);
  return `${store}: rolled back from v${answer.rolled_back} to v${answer.live}`;
}

async function cutover(store, version) {
  const answer = await call(
    "POST", `/v1/admin/stores/${encodeURIComponent(store)}/cutover`, { version });
  return `${store}: v${answer.live} is live (was v${answer.previous ?? "none"})`;
}

// -- overview -----------------------------------------------------------------------------

function gates(g) {
  const title = [...g.reasons, ...Object.entries(g.metrics).map(([k, v]) => `${k} = ${v}`)];
  if (g.passed === true) return el("span", { class: "gate-pass", title: title.join("\n") || null }, "passed");
  if (g.passed === false) return el("span", { class: "gate-fail", title: title.join("\n") }, "failed: " + g.reasons.join("; "));
  return el("span", { class: "muted" }, "pending");
}

function versionRow(store, v) {
  return el("tr", { "data-version": v.version },
    el("td", {}, "v" + v.version),
    el("td", {}, el("span", { class: `state state-${v.state}` }, v.state)),
    el("td", { class: "num" }, v.count.toLocaleString("en")),
    el("td", { title: v.checksum || null }, v.checksum ? v.checksum.slice(0, 12) : "–"),
    el("td", { class: "num" }, age(v.age_s)),
    el("td", { class: "gates" }, gates(v.gates)),
    el("td", {}, v.can_cutover
      ? actionButton(`cutover:${store}:${v.version}`, "Cut over", `Make v${v.version} live?`,
        "cutover", () => cutover(store, v.version))
      : null));
}

function storeCard(s) {
  return el("div", { class: "panel store", "data-store": s.store },
    el("h2", {}, s.store),
    el("p", { class: "pointers" },
      "live ", el("strong", { class: "live-version" }, s.live ? "v" + s.live : "none"),
      " · backup ", el("span", { class: "backup-version" }, s.backup ? "v" + s.backup : "none"),
      " ",
      s.backup ? actionButton(`rollback:${s.store}`, "Roll back", `Roll back to v${s.backup}?`,
        "rollback", () => rollback(s.store)) : null),
    el("table", { class: "versions" },
      el("thead", {}, el("tr", {}, ["version", "state", "records", "checksum", "age", "gates", ""]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, s.versions.map((v) => versionRow(s.store, v)))));
}

function renderLatency(l) {
  const figures = [
    ["p50", l.p50_ms === null ? "–" : `${fmt(l.p50_ms, 1)} ms`],
    ["p99", l.p99_ms === null ? "–" : `${fmt(l.p99_ms, 1)} ms`],
    ["degraded", l.degraded_share === null ? "–" : `${fmt(100 * l.degraded_share, 1)} %`],
    ["requests", l.requests],
    ["rate", `${fmt(l.rate_per_s, 1)} /s`],
    ["errors", l.errors],
  ];
  const node = document.getElementById("latency");
  node.replaceChildren(...figures.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", { "data-figure": k }, v))));
  node.title = `over the last ${fmt(l.window_s, 0)} s`;
}

function renderLag(groups) {
  document.querySelector("#lag tbody").replaceChildren(...groups.map((g) => el("tr", { "data-role": g.role },
    el("td", {}, g.role),
    el("td", {}, g.group),
    el("td", { class: "num lag" }, g.lag === null ? "?" : g.lag.toLocaleString("en")),
    el("td", { class: g.error ? "gate-fail" : "muted" }, g.error
      ? g.error
      : g.topics.map((t) => `${t.topic}: ${t.lag}`).join(", ") || "no committed offsets"))));
}

async function refresh() {
  clearTimeout(timer);
  if (!token()) return;
  try {
    const o = await call("GET", "/v1/admin/overview");
    document.getElementById("stores").replaceChildren(...o.stores.map(storeCard));
    renderLatency(o.latency);
    renderLag(o.lag);
    document.body.dataset.loaded = String(o.now_ms);
    status(`updated ${new Date(o.now_ms).toLocaleTimeString()}`);
  } catch (error) {
    status(`could not load the overview: ${error.message}`, true);
    if (error.status === 401 || error.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      return;
    }
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

// -- why these items? ---------------------------------------------------------------------

function signals(s) {
  const recent = s.recent.slice(-8).map((e) => `${e.event_type} ${e.item_id}`).join(", ");
  const affinity = Object.entries(s.affinity).map(([c, a]) => `${c} ${a.toFixed(2)}`).join(", ");
  return el("div", { class: "signals", id: "session-signals" },
    el("span", {}, "session: ", el("strong", {}, s.session_id || "none")),
    el("span", {}, "device: ", s.device || "–"),
    el("span", {}, "events: ", s.events),
    el("span", {}, "recent: ", recent || "–"),
    el("span", {}, "category affinity: ", affinity || "–"),
    el("span", {}, "seeds (i2i): ", s.seeds.join(", ") || "–"),
    el("span", {}, "excluded: ", s.excluded.join(", ") || "–"));
}

function contributionCell(value, contribution) {
  if (contribution === null) return el("td", { class: "num contrib" }, fmt(value, 3));
  return el("td", { class: "num contrib" },
    el("span", { class: contribution >= 0 ? "pos" : "neg" }, (contribution >= 0 ? "+" : "") + contribution.toFixed(3)),
    el("small", {}, fmt(value, 3)));
}

function renderExplanation(x) {
  const head = ["#", "item", "sources", "category", "score", ...x.features, ...(x.contributions ? ["bias"] : [])];
  const rows = x.candidates.map((c) => el("tr", { class: c.in_answer ? "in-answer" : null, "data-item": c.item_id },
    el("td", { class: "num" }, c.position),
    el("td", {}, c.item_id),
    el("td", {}, c.sources.join("+")),
    el("td", {}, c.category || "–"),
    el("td", { class: "num score" }, c.score.toFixed(4)),
    c.values.map((v, i) => contributionCell(v, c.contributions ? c.contributions[i] : null)),
    c.contributions ? el("td", { class: "num" }, c.bias.toFixed(3)) : null));
  const versions = Object.entries(x.versions).map(([s, v]) => `${s} ${v ? "v" + v : "none"}`).join(", ");
  document.getElementById("explain-out").replaceChildren(
    el("p", {}, `${x.user_id}: ${x.candidates.length} candidates from ${versions}, ranked by `,
      el("strong", { id: "explain-reranker" }, x.reranker),
      x.contributions ? ` (cells: contribution to the ${x.contributions}, value below)` : " (no per-feature contributions: cells show values)"),
    signals(x.session),
    el("p", {}, "final order: ", el("span", { id: "explain-order" }, x.order.join(" › "))),
    el("table", { id: "explain-table" },
      el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)));
}

async function explain(event) {
  event.preventDefault();
  const user = document.getElementById("explain-user").value.trim();
  const params = new URLSearchParams({ user, k: document.getElementById("explain-k").value });
  const device = document.getElementById("explain-device").value;
  if (device) params.set("device", device);
  try {
    renderExplanation(await call("GET", `/v1/admin/explain?${params}`));
  } catch (error) {
    document.getElementById("explain-out").replaceChildren(el("p", { class: "gate-fail" }, `could not explain: ${error.message}`));
  }
}

// -- start --------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const field = document.getElementById("token");
    if (!field.value) return;
    sessionStorage.setItem(TOKEN_KEY, field.value);
    field.value = "";
    status("loading…");
    refresh();
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(timer);
    status("token forgotten; enter it again to load the console");
  });
  document.getElementById("explain-form").addEventListener("submit", explain);
  refresh();
});
