"""`upscale dashboard`: a status page, its JSON endpoints, and the fleet's Prometheus gauges.

    GET  /                 the page (plain HTML + inline JS: no front-end build chain)
    GET  /api/status       fleet: states, lanes, pause, circuit, cooldown, spend, budgets, throughput
    GET  /api/failures     latest failures with their reasons
    GET  /api/batches      per-batch progress and spend
    POST /api/resume       lift a pause                      (token)
    POST /api/retry/{job}  re-enqueue a failed job           (token)
    GET  /metrics          fleet gauges (one place, so N workers do not report N copies)
    GET  /healthz

Reading is open (put it behind your network policy); every POST needs
`Authorization: Bearer $UPSCALE_API_TOKEN`. The page takes the token once from `?token=` and
keeps it in the tab's sessionStorage; without one it is read-only.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from producers.api import Producer
from producers.serving import errors_middleware, serve_app
from worker.metrics import fleet_metrics
from worker.settings import Settings

log = structlog.get_logger("producers.dashboard")
PRODUCER: web.AppKey[Producer] = web.AppKey("producer", Producer)
MAX_FAILURES = 1000


@web.middleware
async def writes_need_token(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.method in ("GET", "HEAD"):
        return await handler(request)
    token = request.app[PRODUCER].settings.api_token.get_secret_value()
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        return web.json_response({"error": "read-only: a valid bearer token is needed"}, status=401)
    return await handler(request)


async def status(request: web.Request) -> web.Response:
    return web.json_response(await request.app[PRODUCER].fleet_status())


async def failures(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "20")
    limit = int(raw) if raw.isdigit() else 0
    if not 1 <= limit <= MAX_FAILURES:
        return web.json_response(
            {"error": f"limit must be a whole number from 1 to {MAX_FAILURES}, not {raw!r}"},
            status=400,
        )
    recs = await request.app[PRODUCER].ledger.recent_failures(limit)
    return web.json_response(
        [
            {
                k: r.model_dump()[k]
                for k in ("job_id", "source", "error_class", "error", "updated_at")
            }
            for r in recs
        ]
    )


async def batches(request: web.Request) -> web.Response:
    return web.json_response(await request.app[PRODUCER].ledger.recent_batches())


async def resume(request: web.Request) -> web.Response:
    lifted = await request.app[PRODUCER].flow.resume()
    log.info("resumed from the dashboard", was_paused=lifted)
    return web.json_response({"resumed": lifted})


async def retry(request: web.Request) -> web.Response:
    r = await request.app[PRODUCER].retry(request.match_info["job_id"])
    if r is None:
        return web.json_response({"error": "no such job"}, status=404)
    return web.json_response({"job_id": r.job_id, "outcome": r.outcome})


async def metrics(request: web.Request) -> web.Response:
    body = fleet_metrics(await request.app[PRODUCER].fleet_status())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def page(_request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def create_app(producer: Producer) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, writes_need_token])
    app[PRODUCER] = producer
    app.router.add_get("/", page)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/failures", failures)
    app.router.add_get("/api/batches", batches)
    app.router.add_post("/api/resume", resume)
    app.router.add_post("/api/retry/{job_id}", retry)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(settings: Settings, host: str, port: int) -> None:
    await serve_app("dashboard", create_app, settings, host, port)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>upscale-queue</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222;max-width:1100px}
 h1{font-size:1.3rem} h2{font-size:1rem;margin-top:1.5rem}
 .pill{display:inline-block;padding:.2rem .6rem;border-radius:1rem;font-weight:600}
 .ok{background:#d7f5dd;color:#145a24} .bad{background:#fde0e0;color:#8a1010}
 table{border-collapse:collapse;width:100%} td,th{border-bottom:1px solid #eee;padding:.3rem;text-align:left}
 .grid{display:grid;grid-template-columns:repeat(4,1fr);gap:.8rem}
 .card{border:1px solid #ddd;border-radius:.5rem;padding:.6rem} .big{font-size:1.4rem;font-weight:700}
 button{cursor:pointer} button:disabled{cursor:not-allowed;opacity:.5} svg{width:100%;height:80px}
</style></head><body>
<h1>upscale-queue <span id="mode" class="pill"></span></h1>
<div id="pause"></div>
<div class="grid">
 <div class="card">queue depth<div class="big" id="depth">-</div><div id="lanes"></div></div>
 <div class="card">jobs<div id="states"></div></div>
 <div class="card">spend today / total<div class="big" id="spend">-</div><div id="budgets"></div></div>
 <div class="card">upstream<div id="flow"></div></div>
</div>
<h2>jobs finished per minute, last hour</h2><svg id="chart" viewBox="0 0 600 80" preserveAspectRatio="none"></svg>
<h2>queue depth, last hour</h2><svg id="depthchart" viewBox="0 0 600 80" preserveAspectRatio="none"></svg>
<h2>latest failures</h2><table><thead><tr><th>job</th><th>source</th><th>reason</th><th></th></tr></thead><tbody id="failures"></tbody></table>
<h2>batches</h2><table><thead><tr><th>batch</th><th>progress</th><th>states</th><th>spend</th></tr></thead><tbody id="batches"></tbody></table>
<script>
const q = new URLSearchParams(location.search);
if (q.get("token")) { sessionStorage.setItem("uqToken", q.get("token")); history.replaceState(null, "", location.pathname); }
const token = sessionStorage.getItem("uqToken");
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const usd = v => "$" + Number(v || 0).toFixed(2);
document.getElementById("mode").textContent = token ? "operator" : "read-only";
document.getElementById("mode").className = "pill " + (token ? "ok" : "");
async function post(path) {
  const r = await fetch(path, {method: "POST", headers: {Authorization: "Bearer " + token}});
  if (!r.ok) alert((await r.json()).error || r.status);
  refresh();
}
function chart(points, id = "chart") {
  points = points.map(v => v ?? 0);
  const max = Math.max(1, ...points), w = 600 / points.length;
  document.getElementById(id).innerHTML = points.map((v, i) =>
    `<rect x="${i * w}" y="${80 - 78 * v / max}" width="${w - 1}" height="${78 * v / max}" fill="#4a7bd0"><title>${v}</title></rect>`).join("");
}
async function refresh() {
  const [s, f, b] = await Promise.all(["/api/status", "/api/failures", "/api/batches"].map(u => fetch(u).then(r => r.json())));
  const p = s.pause;
  document.getElementById("pause").innerHTML = p
    ? `<p id="paused" class="pill bad">PAUSED: ${esc(p.reason)} ${esc(p.detail)}</p> <button id="resume" ${token ? "" : "disabled"} onclick="post('/api/resume')">Resume</button>`
    : `<p id="running" class="pill ok">running</p>`;
  document.getElementById("depth").textContent = s.queue_depth;
  document.getElementById("lanes").innerHTML = Object.entries(s.lanes).map(([k, v]) =>
    `${esc(k)}: ${v.depth} (${v.calls_last_minute}/min, oldest ${Math.round(v.oldest_age_s)}s)`).join("<br>");
  document.getElementById("states").innerHTML = Object.entries(s.states).map(([k, v]) => `${esc(k)}: <b>${v}</b>`).join("<br>") || "none";
  document.getElementById("spend").textContent = usd(s.spend.today_usd) + " / " + usd(s.spend.total_usd);
  const bd = s.budgets;
  document.getElementById("budgets").innerHTML = [bd.daily_usd != null ? `daily cap ${usd(bd.daily_usd)} (left ${usd(bd.daily_left_usd)})` : "",
    bd.total_usd != null ? `total cap ${usd(bd.total_usd)} (left ${usd(bd.total_left_usd)})` : ""].filter(Boolean).join("<br>") || "no caps";
  document.getElementById("flow").innerHTML = `circuit: <b>${esc(s.circuit)}</b><br>cooldown: ${s.cooldown_s.toFixed(1)}s<br>in flight: ${s.inflight}<br>calls last minute: ${s.calls_last_minute}`;
  chart(s.finished_per_minute);
  chart(s.depth_per_minute, "depthchart");
  document.getElementById("failures").innerHTML = f.map(x => `<tr class="failure"><td>${esc(x.job_id)}</td><td>${esc(x.source)}</td>
    <td class="reason">${esc(x.error_class)}: ${esc(x.error)}</td><td><button class="retry" ${token ? "" : "disabled"} onclick="post('/api/retry/${esc(x.job_id)}')">Retry</button></td></tr>`).join("")
    || "<tr><td colspan=4>none</td></tr>";
  document.getElementById("batches").innerHTML = b.map(x => {
    const done = ["succeeded", "failed", "skipped"].reduce((a, k) => a + (x.states[k] || 0), 0);
    return `<tr><td>${esc(x.batch)}</td><td><progress max="${x.total}" value="${done}"></progress> ${done}/${x.total}</td>
      <td>${Object.entries(x.states).map(([k, v]) => esc(k) + "=" + v).join(" ")}</td><td>${usd(x.spend_usd)}</td></tr>`;
  }).join("") || "<tr><td colspan=4>none</td></tr>";
}
refresh(); setInterval(refresh, 3000);
</script></body></html>
"""
