/**
 * The live dashboard: one static HTML page with inline CSS and JS (no build step, no external
 * assets). It asks for a token (kept in a JS variable only, never stored), polls `/stats`,
 * `/hot-keys` and `/tags`, draws the hit ratio over time, and offers key lookup and invalidation.
 *
 * @since 0.1.0
 */
import { createHash } from "node:crypto"

export interface DashboardPage {
  readonly html: string
  /** Allows exactly the page's own inline script and style (by hash), same-origin fetches, no framing. */
  readonly contentSecurityPolicy: string
}

/** The page, with `base` (the mount prefix, e.g. `"/admin"`) baked in for its API calls. */
export const dashboardHtml = (options: { readonly base: string; readonly pollMillis?: number | undefined }): string =>
  page
    .replace("__BASE__", () => JSON.stringify(options.base).replace(/</g, "\\u003c"))
    .replace("__POLL__", () => String(Math.max(250, options.pollMillis ?? 1000)))

const sha256 = (text: string) => `'sha256-${createHash("sha256").update(text, "utf8").digest("base64")}'`

/** The page and the Content-Security-Policy that goes with it. */
export const make = (options: { readonly base: string; readonly pollMillis?: number | undefined }): DashboardPage => {
  const html = dashboardHtml(options)
  const script = /<script>([\s\S]*?)<\/script>/.exec(html)?.[1] ?? ""
  const style = /<style>([\s\S]*?)<\/style>/.exec(html)?.[1] ?? ""
  return {
    html,
    contentSecurityPolicy: [
      "default-src 'none'",
      `script-src ${sha256(script)}`,
      `style-src ${sha256(style)}`,
      "connect-src 'self'",
      "img-src 'self' data:",
      "frame-ancestors 'none'",
      "base-uri 'none'",
      "form-action 'none'"
    ].join("; ")
  }
}

const page = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cachekit admin</title>
<link rel="icon" href="data:,">
<style>
  :root { --bg:#0f172a; --card:#1e293b; --fg:#e2e8f0; --muted:#94a3b8; --accent:#38bdf8; --ok:#4ade80; --bad:#f87171; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, sans-serif; background:var(--bg); color:var(--fg); }
  header { display:flex; gap:12px; align-items:center; padding:12px 20px; background:#020617; flex-wrap:wrap; }
  header h1 { font-size:18px; margin:0 16px 0 0; }
  input, button { font:inherit; padding:6px 10px; border-radius:6px; border:1px solid #334155; background:#0b1222; color:var(--fg); }
  button { background:var(--accent); color:#0f172a; border:none; cursor:pointer; font-weight:600; }
  button.danger { background:var(--bad); }
  main { display:grid; grid-template-columns:repeat(auto-fit, minmax(320px, 1fr)); gap:16px; padding:16px 20px; }
  section { background:var(--card); border-radius:10px; padding:14px 16px; }
  section h2 { font-size:13px; text-transform:uppercase; letter-spacing:.06em; color:var(--muted); margin:0 0 10px; }
  .numbers { display:grid; grid-template-columns:repeat(3, 1fr); gap:10px; }
  .numbers div span { display:block; font-size:22px; font-weight:700; font-variant-numeric:tabular-nums; }
  .numbers div label { color:var(--muted); font-size:12px; }
  table { width:100%; border-collapse:collapse; font-variant-numeric:tabular-nums; }
  th, td { text-align:left; padding:4px 6px; border-bottom:1px solid #334155; }
  th { color:var(--muted); font-weight:500; }
  ul { margin:0; padding-left:18px; max-height:220px; overflow:auto; }
  pre { white-space:pre-wrap; word-break:break-all; background:#0b1222; padding:8px; border-radius:6px; min-height:2em; }
  canvas { width:100%; height:160px; background:#0b1222; border-radius:6px; }
  #status { color:var(--muted); }
  #status.error { color:var(--bad); }
  .wide { grid-column:1 / -1; }
</style>
</head>
<body>
<header>
  <h1>cachekit admin</h1>
  <input id="token" type="password" placeholder="bearer token" autocomplete="off" size="28">
  <button id="connect">Connect</button>
  <span id="status">not connected</span>
</header>
<main>
  <section>
    <h2>Totals</h2>
    <div class="numbers">
      <div><label>hits</label><span id="hits">-</span></div>
      <div><label>misses</label><span id="misses">-</span></div>
      <div><label>hit ratio</label><span id="hit-ratio">-</span></div>
      <div><label>entries</label><span id="entries">-</span></div>
      <div><label>bytes</label><span id="bytes">-</span></div>
      <div><label>evictions</label><span id="evictions">-</span></div>
    </div>
  </section>
  <section>
    <h2>Hit ratio over time <small id="chart-note">(per poll interval)</small></h2>
    <canvas id="chart" width="600" height="160"></canvas>
  </section>
  <section>
    <h2>Tiers</h2>
    <table><thead><tr><th>tier</th><th>hits</th><th>misses</th><th>entries</th><th>bytes</th><th>health</th></tr></thead>
    <tbody id="tiers"></tbody></table>
  </section>
  <section>
    <h2>Hot keys</h2>
    <ul id="hot-keys"></ul>
  </section>
  <section>
    <h2>Tags</h2>
    <ul id="tags"></ul>
  </section>
  <section>
    <h2>Key lookup</h2>
    <input id="lookup-key" placeholder="key" size="30"> <button id="lookup">Look up</button>
    <pre id="lookup-result"></pre>
  </section>
  <section>
    <h2>Invalidate</h2>
    <input id="invalidate-key" placeholder="key" size="30"> <button id="invalidate" class="danger">Invalidate</button>
    <pre id="invalidate-result"></pre>
  </section>
</main>
<script>
"use strict";
(function () {
  const BASE = __BASE__;
  const POLL_MS = __POLL__;
  let token = "";            // in memory only: never written to storage, cookies or the URL
  let timer = undefined;
  const history = [];        // [hitRatio of the last interval]
  let previous = undefined;
  const $ = (id) => document.getElementById(id);

  function api(path, init) {
    const headers = Object.assign({ "accept": "application/json" }, init && init.body ? { "content-type": "application/json" } : {});
    if (token !== "") headers["authorization"] = "Bearer " + token;
    return fetch(BASE + path, Object.assign({}, init, { headers })).then(async (res) => {
      const text = await res.text();
      let body = undefined;
      try { body = text === "" ? undefined : JSON.parse(text); } catch (e) { body = text; }
      if (!res.ok) {
        const message = body && body.message ? body.message : ("HTTP " + res.status);
        const error = new Error(message); error.status = res.status; throw error;
      }
      return body;
    });
  }
  function setStatus(text, isError) { $("status").textContent = text; $("status").className = isError ? "error" : ""; }
  function fmt(n) { return typeof n === "number" ? n.toLocaleString("en-US") : "-"; }
  function list(el, items) {
    el.replaceChildren(...items.map((text) => { const li = document.createElement("li"); li.textContent = text; return li; }));
  }

  function draw() {
    const canvas = $("chart"); const ctx = canvas.getContext("2d");
    // draw at the displayed size so text and lines are not stretched
    if (canvas.clientWidth > 0 && canvas.width !== canvas.clientWidth) canvas.width = canvas.clientWidth;
    const w = canvas.width, h = canvas.height, left = 34, top = 6, bottom = 6;
    const plotH = h - top - bottom, plotW = w - left - 4;
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#94a3b8"; ctx.textBaseline = "middle";
    ctx.strokeStyle = "#334155"; ctx.lineWidth = 1;
    for (const y of [0, 0.5, 1]) {
      const py = top + plotH - y * plotH;
      ctx.beginPath(); ctx.moveTo(left, py); ctx.lineTo(w, py); ctx.stroke();
      ctx.fillText((y * 100) + "%", 2, py);
    }
    if (history.length === 0) return;
    // x spans the points we have (up to 120), so the line fills the chart from the first poll on
    const step = history.length > 1 ? plotW / (history.length - 1) : 0;
    const point = (r, i) => [left + i * step, top + plotH - r * plotH];
    ctx.beginPath();
    history.forEach((r, i) => { const [x, y] = point(r, i); if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y); });
    if (history.length === 1) { const [x, y] = point(history[0], 0); ctx.lineTo(x + plotW, y); }
    ctx.strokeStyle = "#38bdf8"; ctx.lineWidth = 2; ctx.stroke();
    ctx.lineTo(history.length === 1 ? left + plotW : left + (history.length - 1) * step, top + plotH);
    ctx.lineTo(left, top + plotH); ctx.closePath();
    ctx.fillStyle = "rgba(56, 189, 248, 0.15)"; ctx.fill();
  }

  async function refresh() {
    try {
      const [stats, health] = await Promise.all([api("/stats"), api("/health")]);
      $("hits").textContent = fmt(stats.hits);
      $("misses").textContent = fmt(stats.misses);
      $("hit-ratio").textContent = (stats.hitRatio * 100).toFixed(1) + "%";
      $("entries").textContent = fmt(stats.entries);
      $("bytes").textContent = fmt(stats.bytes);
      $("evictions").textContent = fmt(stats.evictions);
      // the chart shows the ratio of each polling interval, so changes show up at once
      if (previous !== undefined) {
        const dh = stats.hits - previous.hits, dm = stats.misses - previous.misses;
        history.push(dh + dm > 0 ? dh / (dh + dm) : (history.length ? history[history.length - 1] : stats.hitRatio));
      } else {
        history.push(stats.hitRatio);
      }
      while (history.length > 120) history.shift();
      previous = stats;
      draw();
      const healthByName = new Map(health.tiers.map((t) => [t.name, t]));
      $("tiers").replaceChildren(...stats.tiers.map((t) => {
        const tr = document.createElement("tr");
        const hl = healthByName.get(t.name);
        for (const cell of [t.name, fmt(t.hits), fmt(t.misses), fmt(t.entries), fmt(t.bytes), hl ? hl.status + " (" + hl.latencyMillis.toFixed(1) + " ms)" : "-"]) {
          const td = document.createElement("td"); td.textContent = cell; tr.appendChild(td);
        }
        return tr;
      }));
      const [hot, tags] = await Promise.all([
        api("/hot-keys?limit=10").then((r) => r.keys.map((k) => k.key + "  (" + fmt(k.hits) + ")"), (e) => [e.status === 501 ? "not tracked by this cache" : e.message]),
        api("/tags").then((r) => r.tags.slice(0, 200), (e) => [e.status === 501 ? "no tag index in this cache" : e.message])
      ]);
      list($("hot-keys"), hot);
      list($("tags"), tags);
      setStatus("live, updated " + new Date().toLocaleTimeString(), false);
    } catch (e) {
      setStatus(e.status === 401 ? "token refused" : "error: " + e.message, true);
    }
  }

  $("connect").addEventListener("click", () => {
    token = $("token").value.trim();
    $("token").value = "";
    previous = undefined;
    if (timer !== undefined) clearInterval(timer);
    refresh();
    timer = setInterval(refresh, POLL_MS);
  });
  $("lookup").addEventListener("click", () => {
    const key = $("lookup-key").value;
    if (key === "") return;
    api("/entries/" + encodeURIComponent(key)).then(
      (entry) => { $("lookup-result").textContent = JSON.stringify(entry, null, 2); },
      (e) => { $("lookup-result").textContent = e.status === 404 ? "not found" : "error: " + e.message; });
  });
  $("invalidate").addEventListener("click", () => {
    const key = $("invalidate-key").value;
    if (key === "") return;
    api("/invalidate", { method: "POST", body: JSON.stringify({ keys: [key] }) }).then(
      (r) => { $("invalidate-result").textContent = "removed " + r.removed; refresh(); },
      (e) => { $("invalidate-result").textContent = (e.status === 403 ? "needs the admin token: " : "error: ") + e.message; });
  });
})();
</script>
</body>
</html>
`
