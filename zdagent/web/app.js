// zdagent's status page: polls /api/status and draws it. Every value from the daemon goes
// into the page as text (textContent / attributes set one by one), never as HTML: versions
// and reasons come from users.
"use strict";

const POLL_MS = 1500;
const SAMPLES = 60; // points kept per chart series (1.5 min at 1.5 s)
const SLOT_COLOURS = { blue: "#1f5fbf", green: "#138a45" };
const GOOD = new Set(["healthy"]);
const WARN = new Set(["starting", "idle", "paused", "reverted", "restarting", "disabled"]);
const series = new Map(); // "app|slot|key" -> [{t, v}]

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("zdagent-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search); // out of the URL
  }
  return sessionStorage.getItem("zdagent-token");
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function ago(ts, now) {
  if (!ts) return "-";
  const s = Math.max(0, Math.round(now - ts));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return new Date(ts * 1000).toLocaleString();
}

function tone(status) {
  return GOOD.has(status) ? "ok" : WARN.has(status) ? "warn" : "bad";
}

function health(s) {
  if (s.state === "running") {
    return el("span", { class: `pill ${s.health === "healthy" ? "ok" : "bad"}` }, s.health || "-");
  }
  return el("span", { class: `pill ${s.state === "missing" ? "warn" : "bad"}` },
    s.state === "missing" ? "no container" : "down");
}

function slotTable(app) {
  const slots = app.slots || {};
  const rows = Object.entries(slots).map(([name, s]) => el("tr",
    { class: name === app.live_slot ? "live" : null, "data-slot": name },
    el("td", {}, name), el("td", { class: "version" }, s.version || "-"),
    el("td", {}, s.state || "-"),
    el("td", {}, health(s))));
  if (!rows.length) {
    return el("p", { class: "muted reason" }, app.look_error || "looking at the slots…");
  }
  return el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "slot"),
    el("th", {}, "version"), el("th", {}, "state"), el("th", {}, "health"))),
    el("tbody", {}, ...rows));
}

function keyValues(title, obj) {
  if (obj === null || obj === undefined) return null;
  if (typeof obj !== "object") return el("div", { class: "kv" }, el("b", {}, title), String(obj));
  const items = Object.entries(obj).filter(([, v]) => v !== null && typeof v !== "object");
  if (!items.length) return null;
  return el("div", { class: "kv", "data-extra": title }, el("b", {}, title),
    ...items.map(([k, v]) => el("span", {}, `${k}: ${v}`)));
}

// Traffic figures (when the daemon follows the app's access log): per slot, the requests and
// 5xx answers of the last window (``traffic.slots[slot]``: requests, errors, seconds, p99),
// drawn as requests/s and 5xx/s over the last polls.
function record(appName, traffic, now) {
  const slots = traffic && traffic.slots;
  if (!slots || typeof slots !== "object") return;
  for (const [slot, f] of Object.entries(slots)) {
    if (!f || typeof f !== "object" || !(f.seconds > 0)) continue;
    for (const [key, value] of [["req/s", f.requests / f.seconds],
                                ["5xx/s", f.errors / f.seconds]]) {
      if (!Number.isFinite(value)) continue;
      const id = `${appName}|${slot}|${key}`;
      const points = series.get(id) || [];
      points.push({ t: now, v: value });
      while (points.length > SAMPLES) points.shift();
      series.set(id, points);
    }
  }
}

function chart(appName) {
  const lines = [];
  for (const [id, points] of series) {
    const [app, slot, key] = id.split("|");
    if (app !== appName) continue;
    lines.push({ slot, key, values: points.map((p) => p.v), error: key === "5xx/s" });
  }
  if (!lines.length) return el("p", { class: "muted reason" }, "no traffic figures yet");
  const max = Math.max(1e-9, ...lines.flatMap((l) => l.values));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${SAMPLES} 64`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "requests and errors per slot");
  for (const l of lines) {
    const path = document.createElementNS(ns, "polyline");
    const values = l.values.length === 1 ? [l.values[0], l.values[0]] : l.values;
    const pts = values.map((v, i) => `${i + SAMPLES - values.length},${62 - (v / max) * 58}`);
    path.setAttribute("points", pts.join(" "));
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", SLOT_COLOURS[l.slot] || "#888");
    path.setAttribute("stroke-width", l.error ? "1" : "2");
    if (l.error) path.setAttribute("stroke-dasharray", "2 1.5");
    path.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(path);
  }
  const legend = el("div", { class: "legend" }, ...lines.map((l) => {
    const last = l.values.length ? l.values[l.values.length - 1] : 0;
    const sw = el("span", { class: "sw" });
    sw.style.background = SLOT_COLOURS[l.slot] || "#888";
    return el("span", {}, sw, `${l.slot} ${last.toFixed(1)} ${l.key}`);
  }));
  return el("div", { class: "chart" }, svg, legend);
}

function appCard(name, app, now) {
  const wd = app.watchdog || {};
  const live = app.live_slot;
  const liveVersion = live && app.slots && app.slots[live] ? app.slots[live].version : null;
  const standby = app.standby;
  record(name, app.traffic, now);
  const top = el("div", { class: "top" }, el("h3", {}, name),
    el("span", { class: "pill ok live-version", "data-live": live || "" },
      live ? `${liveVersion || "?"} on ${live}` : "nothing live"),
    el("span", { class: `pill ${tone(wd.status)} watchdog-status` }, `watchdog: ${wd.status || "-"}`),
    wd.busy ? el("span", { class: "pill warn" }, "deploying") : null);
  const facts = el("div", { class: "kv" },
    el("span", {}, standby ? (standby.warm ? `standby ${standby.slot} warm` :
      `no warm standby (${standby.slot} ${standby.state})`) : "no standby"),
    el("span", {}, `reverts: ${wd.reverts || 0}`),
    el("span", {}, `last deploy: ${app.history && app.history.length ?
      ago(app.history[0].finished_at || app.history[0].started_at, now) : "never"}`));
  return el("article", { class: "card", "data-app": name }, top,
    wd.last_reason ? el("p", { class: "reason watchdog-reason" }, wd.last_reason) : null,
    facts, slotTable(app), keyValues("canary", app.canary),
    keyValues("maintenance", app.maintenance), chart(name));
}

function timelineItem(r, now) {
  const bad = r.outcome !== "succeeded" && r.outcome !== "running";
  const move = r.from_slot && r.slot && r.from_slot !== r.slot ? ` ${r.from_slot} → ${r.slot}` :
    r.slot ? ` on ${r.slot}` : "";
  const why = r.reason || r.error;
  return el("li", { "data-kind": r.kind, "data-outcome": r.outcome },
    el("span", { class: "muted", title: new Date(r.started_at * 1000).toISOString() },
      ago(r.finished_at || r.started_at, now)),
    el("span", { class: "what" }, el("b", {}, r.app), ` ${r.kind} `, r.version || "", move, " ",
      el("span", { class: `pill ${bad ? "bad" : r.outcome === "running" ? "warn" : "ok"}` },
        r.outcome), r.user ? el("span", { class: "muted" }, ` by ${r.user}`) : null),
    why ? el("span", { class: "why" }, why) : null);
}

function render(data) {
  const now = data.now || Date.now() / 1000;
  const d = data.daemon || {};
  document.getElementById("summary").textContent =
    `${d.summary || ""} · daemon ${d.version || ""} · updated ${new Date(now * 1000).toLocaleTimeString()}`;
  const apps = Object.entries(data.apps || {});
  document.getElementById("apps").replaceChildren(...(apps.length ?
    apps.map(([n, a]) => appCard(n, a, now)) : [el("p", { class: "muted" }, "no apps")]));
  const items = (data.timeline || []).map((r) => timelineItem(r, now));
  document.getElementById("timeline").replaceChildren(...(items.length ? items :
    [el("li", { class: "muted" }, "nothing yet")]));
  const errs = Object.entries(data.config_errors || {});
  document.getElementById("errors").replaceChildren(...(errs.length ?
    [el("h2", {}, "Bad app files"), ...errs.map(([f, m]) => el("p", { class: "reason bad" },
      `${f}.toml: ${m}`))] : []));
}

async function poll() {
  const conn = document.getElementById("conn");
  const headers = {};
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  try {
    const r = await fetch("api/status", { headers, cache: "no-store",
      signal: AbortSignal.timeout(10000) });
    if (!r.ok) throw new Error(r.status === 401 ? "token needed (#token=… in the URL)" :
      `HTTP ${r.status}`);
    render(await r.json());
    conn.textContent = "live";
    conn.className = "pill ok";
  } catch (e) {
    conn.textContent = `disconnected: ${e.message}`;
    conn.className = "pill bad";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
