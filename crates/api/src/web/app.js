// tessera web view: draws GET /v1/overview (an OverviewView) and polls it every 2 s.
// Plain JavaScript with no dependencies; every text goes in through textContent.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "tessera.token";

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function mib(n) {
  if (n >= 1024 && n % 1024 === 0) return (n / 1024) + "GiB";
  if (n >= 1024) return (n / 1024).toFixed(1) + "GiB";
  return n + "MiB";
}

function age(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + Math.floor(s % 86400 / 3600) + "h";
}

function ask(a) {
  switch (a.kind) {
    case "mig": return "mig " + a.profile;
    case "mem": return "mem " + mib(a.memory_mib) + (a.sm_percent ? " sm " + a.sm_percent + "%" : "");
    case "mps": return "mps " + mib(a.memory_mib) + (a.sm_percent ? " sm " + a.sm_percent + "%" : "");
    case "share": return "time-slice share";
    default: return a.kind;
  }
}

function token() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return localStorage.getItem(TOKEN_KEY);
}

// The holder of a slice: the leased request with this ID, or a bare "in use".
function holder(o, lease) {
  if (lease === undefined || lease === null) return null;
  return o.leases.find(r => r.id === lease) || { id: lease, user: "?", command: [], running_ms: 0 };
}

function holderLines(o, r) {
  if (!r) return [];
  const cmd = o.commands_hidden ? null : (r.command || []).join(" ");
  return [
    h("div", { class: "who", text: r.user + " · #" + r.id }),
    h("div", { class: "age", text: "held " + age(r.running_ms || 0) }),
    cmd ? h("div", { class: "cmd", text: cmd }) : null,
  ];
}

function migGrid(o, g) {
  const slots = Math.max(g.memory_slots, 1);
  const grid = h("div", { class: "grid" });
  grid.style.gridTemplateColumns = "repeat(" + slots + ", minmax(0, 1fr))";
  const covered = new Array(slots).fill(false);
  // Empty lists are left out of the JSON.
  const widths = g.instance_slots || [], mems = g.instance_memory_mib || [];
  (g.gpu.instances || []).forEach((inst, k) => {
    const span = Math.max(widths[k] || 1, 1);
    for (let s = inst.start; s < Math.min(inst.start + span, slots); s++) covered[s] = true;
    const r = holder(o, inst.lease);
    const cls = "cell instance " + (r ? "held" : (inst.busy ? "busy-unleased" : "free"));
    const cell = h("div", {
      class: cls, "data-gpu": g.gpu.index, "data-slice": inst.profile + "@" + inst.start,
      "data-user": r ? r.user : null, "data-lease": r ? r.id : null,
      title: inst.uuid || null,
    },
      h("div", { class: "name", text: inst.profile + " @" + inst.start }),
      h("div", { class: "mem", text: mib(mems[k] || 0) }),
      r ? holderLines(o, r) : h("div", { text: inst.busy ? "in use" : "free" }));
    cell.style.gridColumn = (inst.start + 1) + " / span " + span;
    cell.style.gridRow = "1";
    grid.append(cell);
  });
  covered.forEach((c, s) => {
    if (c) return;
    const e = h("div", { class: "cell empty", title: "memory slice " + s + " not in any instance" });
    e.style.gridColumn = String(s + 1);
    e.style.gridRow = "1";
    grid.append(e);
  });
  return grid;
}

function mpsView(o, g) {
  const total = g.gpu.memory_mib || g.total_memory_mib || 1;
  const memBar = h("div", { class: "bar", "aria-label": "memory" });
  const smBar = h("div", { class: "bar", "aria-label": "SMs" });
  let mem = 0, sm = 0;
  const cells = h("div", { class: "grid" });
  cells.style.gridTemplateColumns = "repeat(auto-fill, minmax(120px, 1fr))";
  for (const c of g.gpu.shares || []) {
    const r = holder(o, c.lease);
    mem += c.memory_mib; sm += c.sm_percent;
    const m = h("span", { title: (r ? r.user : "client") + " " + mib(c.memory_mib) });
    m.style.width = (100 * c.memory_mib / total).toFixed(2) + "%";
    memBar.append(m);
    const s = h("span", { title: (r ? r.user : "client") + " " + c.sm_percent + "% SMs" });
    s.style.width = Math.min(c.sm_percent, 100) + "%";
    smBar.append(s);
    cells.append(h("div", {
      class: "cell client held", "data-gpu": g.gpu.index,
      "data-slice": "mps" + (r ? "-" + r.id : ""), "data-user": r ? r.user : null, "data-lease": r ? r.id : null,
    },
      h("div", { class: "name", text: "MPS " + mib(c.memory_mib) + " · " + c.sm_percent + "% SMs" }),
      holderLines(o, r)));
  }
  return [
    h("div", { class: "barlabel", text: "memory " + mib(mem) + " of " + mib(total) }), memBar,
    h("div", { class: "barlabel", text: "SMs " + sm + "% of 100%" + (g.gpu.capacity ? " · clients " + (g.gpu.shares || []).length + " of " + g.gpu.capacity : "") }), smBar,
    (g.gpu.shares || []).length ? cells : h("p", { class: "muted", text: "no MPS clients" }),
  ];
}

function timesliceView(o, g) {
  const n = Math.max(g.gpu.capacity || 0, 1);
  const grid = h("div", { class: "grid" });
  grid.style.gridTemplateColumns = "repeat(" + Math.min(n, 4) + ", minmax(0, 1fr))";
  const byReplica = new Map();
  for (const r of o.leases) {
    if (r.slice && r.slice.kind === "timeslice" && r.slice.gpu === g.gpu.index) byReplica.set(r.slice.replica, r);
  }
  // Holders the caller may not see still count: fill the remaining replicas with them.
  let hidden = (g.gpu.shares || []).filter(s => s.lease === undefined || s.lease === null).length;
  for (let i = 0; i < n; i++) {
    let r = byReplica.get(i) || null;
    let busy = !!r;
    if (!r && hidden > 0) { hidden--; busy = true; }
    grid.append(h("div", {
      class: "cell replica " + (busy ? "held" : "free"), "data-gpu": g.gpu.index,
      "data-slice": "replica-" + i, "data-user": r ? r.user : null, "data-lease": r ? r.id : null,
    },
      h("div", { class: "name", text: "replica " + i }),
      r ? holderLines(o, r) : h("div", { text: busy ? "in use" : "free" })));
  }
  return grid;
}

function gpuCard(o, g) {
  const v = g.gpu;
  const mode = { mig: "MIG", mps: "MPS", timeslice: "time-slicing" }[v.mode] || v.mode;
  const title = (g.node ? g.node + " · " : "") + "GPU " + v.index + " · " + v.model;
  let body;
  if (v.mode === "mig") body = migGrid(o, g);
  else if (v.mode === "mps") body = mpsView(o, g);
  else body = timesliceView(o, g);
  return h("article", { class: "gpu " + v.mode + (v.drained ? " drained" : ""), "data-gpu": v.index, "data-node": g.node },
    h("h3", { text: title }),
    h("p", { class: "sub muted", text: mode + " · " + v.busy + " busy" + (v.drained ? " · drained" : "") + (v.reserved_for ? " · reserved for #" + v.reserved_for : "") }),
    v.last_error ? h("p", { class: "problem", text: v.last_error }) : null,
    (v.quarantined || []).map(q => h("p", { class: "problem", text: "quarantined: " + q })),
    body);
}

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "muted", text: empty });
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map(x => h("th", { text: x })))),
    h("tbody", {}, rows));
}

function render(o) {
  document.title = o.source;
  document.getElementById("title").textContent = o.source;
  const busy = o.gpus.reduce((a, g) => a + g.gpu.busy, 0);
  document.getElementById("summary").textContent =
    o.gpus.length + " GPUs · " + busy + " slices leased · " + o.queue.length + " waiting · " +
    o.repartitions_total + " re-partitions · backend " + o.backend + " · updated " +
    new Date(o.now_ms).toLocaleTimeString();
  document.getElementById("gpus").replaceChildren(...o.gpus.map(g => gpuCard(o, g)));
  document.getElementById("queue").replaceChildren(table(
    ["#", "user", "wants", "priority", "waiting", "why"],
    o.queue.map((r, i) => h("tr", { "data-request": r.id, "data-user": r.user },
      h("td", { text: (r.position || i + 1) + " (#" + r.id + ")" }),
      h("td", { text: r.user }),
      h("td", { text: ask(r.ask) + (r.gpu_model ? " on " + r.gpu_model : "") }),
      h("td", { text: r.priority }),
      h("td", { text: age(r.waited_ms) }),
      h("td", { class: "reason", text: r.wait_reason || "next pass" }))),
    "Nobody is waiting."));
  document.getElementById("users").replaceChildren(table(
    ["user", "leased", "waiting", "slice time", "leases"],
    o.users.map(u => h("tr", { "data-user": u.user },
      h("td", { text: u.user }), h("td", { text: u.leased }), h("td", { text: u.queued }),
      h("td", { text: age(u.slice_seconds * 1000) }), h("td", { text: u.leases_total }))),
    "No usage yet."));
  document.getElementById("repartitions").replaceChildren(table(
    ["when", "GPU", "layout", "took"],
    o.repartitions.map(p => h("tr", {},
      h("td", { text: age(Math.max(o.now_ms - p.at_ms, 0)) + " ago" }),
      h("td", { text: (p.node ? p.node + " · " : "") + p.gpu }),
      h("td", { text: (p.layout.join(" ") || "(empty)") + (p.created.length ? "  +" + p.created.join(" +") : "") + (p.destroyed.length ? "  −" + p.destroyed.join(" −") : "") }),
      h("td", { text: p.took_ms + " ms" }))),
    "None since the daemon started."));
}

function showError(text) {
  const e = document.getElementById("error");
  e.textContent = text || "";
  e.hidden = !text;
}

async function refresh() {
  const t = token();
  try {
    const res = await fetch("v1/overview", { headers: t ? { Authorization: "Bearer " + t } : {}, cache: "no-store" });
    if (res.status === 401) {
      document.getElementById("login").hidden = false;
      const body = await res.json().catch(() => ({}));
      showError(body.error || "unauthorized");
      return;
    }
    if (!res.ok) throw new Error("HTTP " + res.status + ": " + (await res.text()));
    document.getElementById("login").hidden = true;
    showError(null);
    render(await res.json());
    document.body.dataset.loaded = "1";
  } catch (err) {
    showError("cannot reach the daemon: " + err.message);
  } finally {
    setTimeout(refresh, POLL_MS);
  }
}

document.getElementById("login").addEventListener("submit", ev => {
  ev.preventDefault();
  localStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  refresh();
});

refresh();
