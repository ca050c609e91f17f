// The status page: polls /dae/summary once a second with the controller's secret (from
// #token=... in the address, or typed in and kept in this browser's localStorage), fills the
// tables and draws each outbound's byte rate on the canvas. No build step, no library.
"use strict";
const COLORS = ["#1e88e5", "#e53935", "#43a047", "#fb8c00", "#8e24aa", "#00acc1", "#6d4c41", "#546e7a"];
const HISTORY = 120;  // seconds on the chart
const hashToken = new URLSearchParams(location.hash.slice(1)).get("token");
let token = hashToken || localStorage.getItem("dae-secret") || "";
const series = {};  // outbound -> [bytes/s ...]
let last = null;    // {t, bytes: {outbound: n}}

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(Math.round(n))) + " " + units[i];
}

function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows.map(cells => {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      if (c && typeof c === "object") { td.textContent = c.text; td.className = c.cls || ""; }
      else td.textContent = c;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function draw() {
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const names = Object.keys(series);
  const max = Math.max(1, ...names.flatMap(n => series[n]));
  ctx.strokeStyle = "#ddd"; ctx.fillStyle = "#777"; ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = h - 16 - (h - 24) * i / 4;
    ctx.beginPath(); ctx.moveTo(50, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(fmtBytes(Math.round(max * i / 4)) + "/s", 0, y + 4);
  }
  names.forEach((name, k) => {
    const pts = series[name];
    ctx.strokeStyle = COLORS[k % COLORS.length]; ctx.lineWidth = 2; ctx.beginPath();
    pts.forEach((v, i) => {
      const x = 50 + (w - 50) * (HISTORY - pts.length + i) / (HISTORY - 1);
      const y = h - 16 - (h - 24) * v / max;
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  });
  document.getElementById("legend").replaceChildren(...names.map((name, k) => {
    const s = document.createElement("span");
    const i = document.createElement("i"); i.style.background = COLORS[k % COLORS.length];
    s.append(i, name + " " + fmtBytes(series[name].at(-1) || 0) + "/s");
    s.dataset.outbound = name;
    return s;
  }));
}

function render(s) {
  document.getElementById("meta").textContent =
    `${s.version} · ${s.config} (${s.strategy}) · up ${Math.round(s.uptime_s)} s · ` +
    `RSS ${fmtBytes(s.rss_bytes)} · ${s.fds} fds · ${s.connections.length} connections`;
  fill("outbounds", s.outbounds.map(o => [o.name, o.kind, o.kernel_packets, fmtBytes(o.kernel_bytes), o.flows,
    o.active, fmtBytes(o.bytes_up), fmtBytes(o.bytes_down), o.refused]));
  fill("nodes", s.groups.flatMap(g => g.nodes.map(n => [g.name, n.name, n.protocol,
    {text: !n.checked ? "unchecked" : n.alive ? "alive" : "down", cls: !n.checked ? "unknown" : n.alive ? "alive" : "down"},
    n.latency_ms === null ? "-" : n.latency_ms + " ms",
    g.now === n.name ? (g.pinned === n.name ? "pinned" : "yes") : ""])));
  fill("rules", s.rules.slice(0, 10).map(r => [r.hits, r.text, r.outbound, r.where]));
  fill("connections", s.connections.map(c => [c.src, c.dst, c.outbound, c.node, c.rule, fmtBytes(c.upload),
    fmtBytes(c.download), c.age_s + " s"]));
  const now = performance.now() / 1000;
  // groups: what the relay carried both ways; direct and block never reach the relay, so the
  // bytes the kernel program classified for them (client -> out, the direction it sees)
  const bytes = Object.fromEntries(s.outbounds.map(o => [o.name,
    o.kind === "group" ? o.bytes_up + o.bytes_down : o.kernel_bytes]));
  if (last) {
    const dt = Math.max(0.001, now - last.t);
    for (const [name, n] of Object.entries(bytes)) {
      const arr = series[name] || (series[name] = []);
      arr.push(Math.max(0, (n - (last.bytes[name] || 0)) / dt));
      if (arr.length > HISTORY) arr.shift();
    }
  }
  last = {t: now, bytes};
  draw();
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

async function poll() {
  try {
    const r = await fetch("/dae/summary", {headers: token ? {Authorization: "Bearer " + token} : {}});
    if (r.status === 401) {
      document.getElementById("meta").textContent = "the controller wants its secret";
      document.getElementById("login").hidden = false;
      return;
    }
    render(await r.json());
  } catch (e) {
    document.getElementById("meta").textContent = "controller unreachable: " + e;
  }
  setTimeout(poll, 1000);
}

document.getElementById("login").addEventListener("submit", ev => {
  ev.preventDefault();
  token = document.getElementById("secret").value;
  localStorage.setItem("dae-secret", token);
  document.getElementById("login").hidden = true;
  poll();
});
poll();
