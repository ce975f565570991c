// urlfleet dashboard: hash-routed views over the coordinator's JSON API, live through server-sent
// events. No framework and no build step: the file is embedded in the binary as it is.
"use strict";

const main = () => document.getElementById("main");
let live = null; // the open EventSource of the current view
let timers = [];

function stopLive() {
  if (live) { live.close(); live = null; }
  timers.forEach(clearInterval); timers = [];
}

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, opts || {}));
  if (r.status === 401) { showLogin(); throw new Error("unauthorized"); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function showLogin(message) {
  stopLive();
  if (!message && new URLSearchParams(location.search).has("denied")) message = "Unknown token.";
  const m = main();
  m.replaceChildren(
    h("h1", { text: "Sign in" }),
    h("p", { class: "muted", text: "This coordinator needs a token (the same as for its gRPC API)." }),
    message ? h("p", { class: "error-box", role: "alert", text: message }) : null,
    h("form", { class: "login", method: "post", action: "/login" },
      h("label", { for: "token", text: "Token" }),
      h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true }),
      h("button", { type: "submit", text: "Sign in" })));
  document.getElementById("who").textContent = "";
}

const fmt = (n) => (n === null || n === undefined) ? "–" : Number(n).toLocaleString("en-US");
const when = (ms) => ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "–";
const classes = ["ok", "redirected", "broken", "error", "invalid"];

// Rate and ETA from successive observations of a job's resolved count.
const seen = new Map();
function rateOf(job) {
  const now = Date.now();
  const c = job.counts;
  const prev = seen.get(job.id);
  let rate = prev ? prev.rate : 0;
  if (prev && now > prev.t && c.resolved >= prev.resolved) {
    const inst = (c.resolved - prev.resolved) * 1000 / (now - prev.t);
    rate = prev.rate ? prev.rate * 0.7 + inst * 0.3 : inst;
  }
  if (!prev || now - prev.t > 900) seen.set(job.id, { t: now, resolved: c.resolved, rate });
  const left = c.total - c.resolved;
  const eta = rate > 0.5 && left > 0 ? Math.ceil(left / rate) : null;
  return { rate, eta };
}

function progressBar(job, id) {
  const c = job.counts;
  const pct = c.total ? Math.floor(c.resolved * 100 / c.total) : 100;
  return h("progress", { id, max: c.total || 1, value: c.total ? c.resolved : 1,
    "aria-label": `job ${job.id} progress`, "data-percent": pct, title: `${pct}%` });
}

function countsLine(c) {
  return h("div", { class: "counts" }, classes.map((k) =>
    h("span", { class: "count" }, h("span", { class: "c-" + k, text: k + " " }), h("b", { text: fmt(c[k]) }))),
    c.cancelled ? h("span", { class: "count" }, "cancelled ", h("b", { text: fmt(c.cancelled) })) : null);
}

// ---- Jobs
function jobsView() {
  const body = h("tbody");
  const table = h("div", { class: "scroll" }, h("table", {},
    h("caption", { class: "muted", text: "Newest first; updated live." }),
    h("thead", {}, h("tr", {},
      h("th", { text: "Job" }), h("th", { text: "State" }), h("th", { text: "Progress" }),
      h("th", { class: "num", text: "Rate" }), h("th", { class: "num", text: "ETA" }),
      ...classes.map((k) => h("th", { class: "num wide", text: k })))),
    body));
  main().replaceChildren(h("h1", { text: "Jobs" }), table);
  const render = (jobs) => {
    body.replaceChildren(...jobs.map((j) => {
      const { rate, eta } = rateOf(j);
      const running = j.state === "running" || j.state === "scheduled";
      return h("tr", { "data-job": j.id },
        h("td", {}, h("a", { href: `#/jobs/${j.id}`, text: `#${j.id} ${j.name || ""}` })),
        h("td", { text: j.state }),
        h("td", {}, progressBar(j), h("span", { class: "muted", text: ` ${fmt(j.counts.resolved)} / ${fmt(j.counts.total)}` })),
        h("td", { class: "num", text: running ? `${fmt(Math.round(rate))}/s` : "–" }),
        h("td", { class: "num", text: running && eta !== null ? `${eta}s` : "–" }),
        ...classes.map((k) => h("td", { class: "num wide c-" + k, text: fmt(j.counts[k]) })));
    }));
    if (!jobs.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 10, class: "muted", text: "No jobs yet." })));
  };
  live = new EventSource("/api/jobs/events");
  live.onmessage = (e) => render(JSON.parse(e.data));
  live.onerror = () => api("/api/me").catch(() => {});
}

// ---- A job
function chart(svg, series, colors, stacked) {
  svg.replaceChildren();
  const n = series[0] ? series[0].length : 0;
  if (n < 2) { svg.append(svgEl("text", { x: 8, y: 70, fill: "#57606a" }, "Not enough samples yet")); return; }
  const W = 600, H = 140;
  const totals = [...Array(n).keys()].map((i) => stacked ? series.reduce((s, v) => s + v[i], 0) : Math.max(...series.map((v) => v[i])));
  const max = Math.max(1, ...totals);
  const x = (i) => i * W / (n - 1), y = (v) => H - v * (H - 8) / max;
  const base = new Array(n).fill(0);
  series.forEach((vals, k) => {
    const top = vals.map((v, i) => (stacked ? base[i] : 0) + v);
    const pts = top.map((v, i) => `${x(i)},${y(v)}`).join(" ");
    if (stacked) {
      const bottom = base.map((v, i) => `${x(i)},${y(v)}`).reverse().join(" ");
      svg.append(svgEl("polygon", { points: pts + " " + bottom, fill: colors[k], "fill-opacity": 0.75 }));
      top.forEach((v, i) => { base[i] = v; });
    } else {
      svg.append(svgEl("polyline", { points: pts, fill: "none", stroke: colors[k], "stroke-width": 2 }));
    }
  });
  svg.append(svgEl("text", { x: 4, y: 14, fill: "#57606a", "font-size": 12 }, fmt(Math.round(max))));
}

function svgEl(tag, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text) el.textContent = text;
  return el;
}

function jobView(id) {
  const title = h("h1", { text: `Job #${id}` });
  const summary = h("div");
  const rateChart = svgEl("svg", { viewBox: "0 0 600 140", preserveAspectRatio: "none", role: "img", "aria-label": "checks per second" });
  const classChart = svgEl("svg", { viewBox: "0 0 600 140", preserveAspectRatio: "none", role: "img", "aria-label": "outcome classes over time" });
  const charts = h("div", { class: "charts" },
    h("figure", {}, rateChart, h("figcaption", { text: "Checks per second" })),
    h("figure", {}, classChart, h("figcaption", {}, "Outcomes over time: ",
      ...["ok", "redirected", "broken", "error"].map((k) => h("span", { class: "c-" + k, text: k + " " })))));
  const state = { class: "", kind: "", status: "", host: "", q: "", sort: "", order: "asc", page: 1 };
  const field = (name, label, input) => h("label", { for: "f-" + name }, label, input);
  const onChange = (name) => (e) => { state[name] = e.target.value; state.page = 1; loadFailures(); };
  const kinds = ["", "broken", "timeout", "dns", "connect", "tls", "too_many_redirects", "redirect_loop", "blocked", "failed", "other", "invalid"];
  const filters = h("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
    field("class", "Class", h("select", { id: "f-class", onchange: onChange("class") },
      h("option", { value: "", text: "all failures" }), ...["broken", "error", "invalid"].map((c) => h("option", { value: c, text: c })))),
    field("kind", "Kind", h("select", { id: "f-kind", onchange: onChange("kind") }, ...kinds.map((k) => h("option", { value: k, text: k || "any" })))),
    field("status", "Status", h("input", { id: "f-status", inputmode: "numeric", size: 5, onchange: onChange("status") })),
    field("host", "Host", h("input", { id: "f-host", size: 16, onchange: onChange("host") })),
    field("q", "Search URL", h("input", { id: "f-q", type: "search", size: 20, onchange: onChange("q") })));
  const csv = h("a", { id: "csv", href: "#", download: `job-${id}-failures.csv`, text: "Download CSV" });
  const body = h("tbody");
  const sortButton = (key, label) => h("button", { type: "button", class: "link", "data-sort": key,
    onclick: () => { state.order = state.sort === key && state.order === "asc" ? "desc" : "asc"; state.sort = key; loadFailures(); } }, label);
  const table = h("div", { class: "scroll" }, h("table", { id: "failures" },
    h("caption", { class: "muted", id: "failures-caption" }),
    h("thead", {}, h("tr", {},
      h("th", { class: "num" }, sortButton("status", "Status")), h("th", { text: "Kind" }),
      h("th", {}, sortButton("url", "URL")), h("th", { class: "wide" }, sortButton("time", "Checked")),
      h("th", { class: "wide", text: "Detail" }))), body));
  const pageInfo = h("span", { class: "muted" });
  const prev = h("button", { type: "button", text: "Previous", onclick: () => { if (state.page > 1) { state.page--; loadFailures(); } } });
  const next = h("button", { type: "button", text: "Next", onclick: () => { state.page++; loadFailures(); } });
  const cancelButton = h("button", { type: "button", class: "danger", id: "cancel", text: "Cancel job", hidden: true,
    onclick: async () => {
      if (!confirm(`Cancel job #${id}? Finished results are kept.`)) return;
      try { render(await api(`/api/jobs/${id}/cancel`, { method: "POST", headers: { "X-Urlfleet": "1" } })); }
      catch (e) { summary.append(h("p", { class: "error-box", role: "alert", text: e.message })); }
    } });
  main().replaceChildren(title, summary, cancelButton, h("h2", { text: "Progress" }), charts,
    h("h2", { text: "Failures" }), filters, h("p", {}, csv), table, h("div", { class: "pager" }, prev, pageInfo, next));

  function query(extra) {
    const p = new URLSearchParams();
    for (const k of ["class", "kind", "status", "host", "q", "sort", "order"]) if (state[k]) p.set(k, state[k]);
    for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
    return p.toString();
  }
  async function loadFailures() {
    csv.href = `/api/jobs/${id}/failures.csv?${query()}`;
    try {
      const page = await api(`/api/jobs/${id}/failures?${query({ page: state.page, per_page: 50 })}`);
      const pages = Math.max(1, Math.ceil(page.total / page.per_page));
      if (state.page > pages) { state.page = pages; }
      body.replaceChildren(...page.rows.map((r) => h("tr", { "data-class": r.class },
        h("td", { class: "num", text: r.status ?? "–" }),
        h("td", { class: "c-" + r.class, text: r.kind }),
        h("td", { class: "url" }, r.class === "invalid" ? r.url : h("a", { href: `#/url?u=${encodeURIComponent(r.url)}`, text: r.url })),
        h("td", { class: "wide", text: r.checked_at ? r.checked_at.replace("T", " ").slice(0, 19) : "–" }),
        h("td", { class: "wide", text: r.error || (r.final_url && r.redirects.length ? "→ " + r.final_url : "") }))));
      if (!page.rows.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No failures match." })));
      document.getElementById("failures-caption").textContent = `${fmt(page.total)} failures match`;
      pageInfo.textContent = `page ${state.page} of ${pages}`;
      prev.disabled = state.page <= 1; next.disabled = state.page >= pages;
    } catch (e) { body.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "error-box", text: e.message }))); }
  }
  async function loadCharts() {
    try {
      const s = (await api(`/api/jobs/${id}/samples`)).samples;
      // The job as of now closes the series (a job that ended has no sample after its end).
      if (last) {
        const c = last.counts;
        const at = last.finished_at_ms || Date.now();
        if (!s.length || at > s[s.length - 1][0]) s.push([at, c.checked + c.fresh, c.ok, c.redirected, c.broken, c.error]);
      }
      const d = (col) => s.slice(1).map((row, i) => Math.max(0, (row[col] - s[i][col]) * 1000 / Math.max(1, row[0] - s[i][0])));
      chart(rateChart, [d(1)], ["#0550ae"], false);
      chart(classChart, [2, 3, 4, 5].map((c) => s.map((row) => row[c])), ["#1a7f37", "#0969da", "#cf222e", "#9a6700"], true);
    } catch (e) { /* the charts wait for samples */ }
  }
  let last = null;
  function render(job) {
    const first = last === null;
    last = job;
    title.textContent = `Job #${job.id} ${job.name || ""}`;
    const { rate, eta } = rateOf(job);
    const running = job.state === "running" || job.state === "scheduled";
    const c = job.counts;
    summary.replaceChildren(
      h("p", {}, h("b", { id: "job-state", text: job.state }), ` · created ${when(job.created_at_ms)}`,
        job.finished_at_ms ? ` · finished ${when(job.finished_at_ms)}` : "", job.owner ? ` · by ${job.owner}` : ""),
      progressBar(job, "job-progress"),
      h("p", { class: "muted" }, `${fmt(c.resolved)} of ${fmt(c.total)} resolved (${c.total ? Math.floor(c.resolved * 100 / c.total) : 100}%)`,
        running ? ` · ${fmt(Math.round(rate))} checks/s` : "", running && eta !== null ? ` · about ${eta}s left` : "",
        ` · ${fmt(c.pending)} pending, ${fmt(c.leased)} leased, ${fmt(c.fresh)} fresh, ${fmt(c.duplicates)} duplicates`),
      countsLine(c));
    cancelButton.hidden = !running;
    if (first || !running) { loadFailures(); loadCharts(); }
  }
  live = new EventSource(`/api/jobs/${id}/events`);
  live.onmessage = (e) => render(JSON.parse(e.data));
  live.onerror = () => { if (last && !(last.state === "running" || last.state === "scheduled")) { live.close(); } };
  timers.push(setInterval(() => { loadCharts(); if (last && (last.state === "running")) loadFailures(); }, 4000));
}

// ---- Hosts
async function hostsView() {
  const body = h("tbody");
  main().replaceChildren(h("h1", { text: "Hosts" }),
    h("p", { class: "muted", text: "The frontier by host: work waiting, leases out, the pace in force, and the recent answers this coordinator ingested." }),
    h("div", { class: "scroll" }, h("table", { id: "hosts" }, h("thead", {}, h("tr", {},
      h("th", { text: "Host" }), h("th", { class: "num", text: "Pending" }), h("th", { class: "num", text: "Leases" }),
      h("th", { class: "num", text: "Next lease in" }), h("th", { class: "wide", text: "Recent answers" }),
      h("th", { class: "num wide", text: "p50 / p90 / p99 ms" }))), body)));
  const load = async () => {
    const hosts = await api("/api/hosts");
    body.replaceChildren(...hosts.map((x) => h("tr", {},
      h("td", { class: "url", text: x.host }), h("td", { class: "num", text: fmt(x.pending) }),
      h("td", { class: "num", text: `${x.active_leases} / ${x.max_leases}` }),
      h("td", { class: "num", text: x.next_allowed_in_ms > 0 ? `${(x.next_allowed_in_ms / 1000).toFixed(1)}s` : "now" }),
      h("td", { class: "wide" }, x.mix ? ["ok", "redirected", "broken", "error"].map((k) => h("span", { class: "c-" + k, text: `${k} ${x.mix[k]} ` })) : "–"),
      h("td", { class: "num wide", text: x.latency_ms ? `${x.latency_ms.p50} / ${x.latency_ms.p90} / ${x.latency_ms.p99}` : "–" }))));
    if (!hosts.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "muted", text: "No host has work waiting." })));
  };
  await load().catch((e) => main().append(h("p", { class: "error-box", role: "alert", text: e.message })));
  timers.push(setInterval(() => load().catch(() => {}), 2000));
}

// ---- Workers
async function workersView() {
  const body = h("tbody");
  main().replaceChildren(h("h1", { text: "Workers" }),
    h("p", { class: "muted", text: "Workers connected to this coordinator." }),
    h("div", { class: "scroll" }, h("table", { id: "workers" }, h("thead", {}, h("tr", {},
      h("th", { text: "Worker" }), h("th", { class: "num", text: "Capacity" }), h("th", { class: "num", text: "Credits" }),
      h("th", { class: "num", text: "In flight" }), h("th", { class: "num", text: "URLs in hand" }),
      h("th", { class: "num wide", text: "Leases" }),
      h("th", { class: "num wide", text: "Last heard" }), h("th", { class: "wide", text: "Connected" }))), body)));
  const load = async () => {
    const ws = await api("/api/workers");
    body.replaceChildren(...ws.map((w) => h("tr", {},
      h("td", { text: w.worker_id }), h("td", { class: "num", text: fmt(w.capacity) }), h("td", { class: "num", text: fmt(w.credits) }),
      h("td", { class: "num", text: fmt(w.in_flight) }), h("td", { class: "num", text: fmt(w.in_hand) }),
      h("td", { class: "num wide", text: fmt(w.leases) }),
      h("td", { class: "num wide", text: `${Math.max(0, Math.round((Date.now() - w.last_heard_ms) / 1000))}s ago` }),
      h("td", { class: "wide", text: when(w.connected_at_ms) }))));
    if (!ws.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "muted", text: "No worker is connected." })));
  };
  await load().catch((e) => main().append(h("p", { class: "error-box", role: "alert", text: e.message })));
  timers.push(setInterval(() => load().catch(() => {}), 2000));
}

// ---- A URL
async function urlView(u) {
  main().replaceChildren(h("h1", { class: "url", text: u }));
  try {
    const page = await api(`/api/url?u=${encodeURIComponent(u)}`);
    const latest = page.checks[0];
    main().append(
      latest ? h("p", {}, h("b", { class: "c-" + latest.class, text: latest.class }), ` ${latest.status ?? ""} ${latest.kind} · checked ${latest.checked_at ?? ""}`) : null,
      latest && latest.redirects.length ? h("div", {}, h("h2", { text: "Redirect chain" }),
        h("ol", {}, ...latest.redirects.map((r) => h("li", { class: "url", text: `${r.status} ${r.url}` })), h("li", { class: "url", text: latest.final_url }))) : null,
      h("h2", { text: "History" }),
      h("div", { class: "scroll" }, h("table", { id: "history" }, h("thead", {}, h("tr", {},
        h("th", { text: "Checked" }), h("th", { text: "Class" }), h("th", { class: "num", text: "Status" }),
        h("th", { class: "num", text: "ms" }), h("th", { class: "wide", text: "Detail" }))),
      h("tbody", {}, ...page.checks.map((c) => h("tr", {},
        h("td", { text: (c.checked_at || "").replace("T", " ").slice(0, 19) }), h("td", { class: "c-" + c.class, text: c.kind }),
        h("td", { class: "num", text: c.status ?? "–" }), h("td", { class: "num", text: fmt(c.response_time_ms) }),
        h("td", { class: "wide", text: c.error || "" })))))));
  } catch (e) { main().append(h("p", { class: "error-box", role: "alert", text: e.message })); }
}

async function route() {
  stopLive();
  const hash = location.hash || "#/";
  try {
    const me = await api("/api/me");
    document.getElementById("who").replaceChildren(
      me.tokens ? h("span", {}, `${me.name} (${me.role}) `,
        h("form", { method: "post", action: "/logout", class: "inline" }, h("button", { class: "link", type: "submit", text: "Sign out" }))) : "");
  } catch (e) { return; }
  let m;
  if ((m = hash.match(/^#\/jobs\/(\d+)/))) jobView(Number(m[1]));
  else if (hash.startsWith("#/hosts")) hostsView();
  else if (hash.startsWith("#/workers")) workersView();
  else if ((m = hash.match(/^#\/url\?u=(.*)$/))) urlView(decodeURIComponent(m[1]));
  else jobsView();
  main().focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
