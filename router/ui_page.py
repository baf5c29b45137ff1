"""The status page's markup, style and script (served by :mod:`router.ui`).

Kept as Python strings, not package data, so the page ships wherever the code
does. The script builds the DOM with ``textContent`` only (never ``innerHTML``),
so an operator's drain reason cannot inject markup. Hooks for tests and
scripts: ``body[data-conn]`` (``connecting|live|reconnecting|stale``) and
``article[data-provider][data-breaker][data-drained]``.
"""

from __future__ import annotations

__all__ = ["HTML", "SCRIPT", "STYLE"]

STYLE = r"""
:root {
  --bg: #f6f8fa; --card: #ffffff; --fg: #1f2328; --muted: #656d76; --line: #d0d7de;
  --ok: #1a7f37; --ok-bg: #dafbe1; --warn: #9a6700; --warn-bg: #fff8c5;
  --bad: #cf222e; --bad-bg: #ffebe9; --drain: #8250df; --drain-bg: #fbefff; --bar: #0969da;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --card: #161b22; --fg: #e6edf3; --muted: #8d96a0; --line: #30363d;
    --ok: #3fb950; --ok-bg: #12261e; --warn: #d29922; --warn-bg: #272115;
    --bad: #f85149; --bad-bg: #2d1517; --drain: #a371f7; --drain-bg: #231a33; --bar: #4493f8;
  }
}
* { box-sizing: border-box; }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif;
}
header.top {
  display: flex; align-items: center; gap: 16px; padding: 12px 24px;
  background: var(--card); border-bottom: 1px solid var(--line);
}
header.top h1 { font-size: 18px; margin: 0; }
header.top h1 small { color: var(--muted); font-weight: 400; }
.spacer { flex: 1; }
.chip {
  display: inline-flex; align-items: center; gap: 6px; padding: 2px 10px;
  border: 1px solid var(--line); border-radius: 999px; color: var(--muted); white-space: nowrap;
}
.chip::before {
  content: ""; width: 8px; height: 8px; border-radius: 50%; background: var(--muted);
}
body[data-conn="live"] #conn::before { background: var(--ok); }
body[data-conn="reconnecting"] #conn::before, body[data-conn="stale"] #conn::before {
  background: var(--bad);
}
#summary.ok::before { background: var(--ok); }
#summary.degraded::before { background: var(--warn); }
#summary.down::before { background: var(--bad); }
main { padding: 16px 24px 32px; max-width: 1600px; }
.banner {
  display: none; margin-bottom: 16px; padding: 10px 14px; border-radius: 6px;
  background: var(--bad-bg); color: var(--bad); border: 1px solid var(--bad); font-weight: 600;
}
.banner.show { display: block; }
h2 {
  font-size: 13px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted);
  margin: 8px 0 10px;
}
#providers {
  display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 12px;
}
article.provider {
  background: var(--card); border: 1px solid var(--line); border-left: 6px solid var(--ok);
  border-radius: 8px; padding: 12px 14px;
}
article.breaker-half_open { border-left-color: var(--warn); }
article.breaker-open { border-left-color: var(--bad); background: var(--bad-bg); }
article.drained:not(.breaker-open) { border-left-color: var(--drain); }
article header { display: flex; align-items: flex-start; justify-content: space-between; }
article h3 { margin: 0; font-size: 16px; }
.sub { color: var(--muted); font-size: 12px; }
.badge {
  font-weight: 700; font-size: 12px; letter-spacing: .04em; padding: 3px 10px;
  border-radius: 4px; color: #fff; background: var(--ok);
}
.badge[data-breaker="half_open"] { background: var(--warn); }
.badge[data-breaker="open"] { background: var(--bad); }
.flags { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin-top: 8px; }
.tag {
  font-size: 11px; font-weight: 600; padding: 1px 8px; border-radius: 999px;
  border: 1px solid var(--line); color: var(--muted);
}
.tag.forced, .tag.unhealthy { color: var(--bad); border-color: var(--bad); }
.tag.drain { color: var(--drain); border-color: var(--drain); background: var(--drain-bg); }
.reason { font-size: 12px; color: var(--drain); font-style: italic; overflow-wrap: anywhere; }
.score { display: flex; gap: 14px; align-items: center; margin: 10px 0 6px; }
.score-value { font-size: 26px; font-weight: 700; min-width: 76px; }
.score-value small { display: block; font-size: 11px; color: var(--muted); font-weight: 400; }
.components { flex: 1; display: grid; gap: 2px; }
.comp { display: grid; grid-template-columns: 52px 1fr 34px; gap: 6px; align-items: center; }
.comp .k, .comp .v { font-size: 11px; color: var(--muted); }
.comp .v { text-align: right; font-variant-numeric: tabular-nums; }
.bar { height: 6px; background: var(--line); border-radius: 3px; overflow: hidden; }
.bar > span { display: block; height: 100%; background: var(--bar); }
.bar.warn > span { background: var(--warn); }
.bar.bad > span { background: var(--bad); }
dl.metrics {
  display: grid; grid-template-columns: 1fr 1fr; gap: 8px 14px; margin: 8px 0 0;
}
.metric dt { font-size: 11px; color: var(--muted); text-transform: uppercase; }
.metric dd { margin: 0; font-variant-numeric: tabular-nums; }
.metric .bar { margin-top: 3px; }
table { width: 100%; border-collapse: collapse; background: var(--card); }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
td { font-variant-numeric: tabular-nums; }
td.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.empty { color: var(--muted); padding: 10px; background: var(--card); }
section { margin-top: 20px; }
footer { color: var(--muted); font-size: 12px; padding: 0 24px 24px; }
"""

SCRIPT = r"""
"use strict";
(() => {
  const body = document.body;
  const grid = document.getElementById("providers");
  const failovers = document.getElementById("failovers");
  const updated = document.getElementById("updated");
  const summary = document.getElementById("summary");
  const banner = document.getElementById("banner");
  const LABEL = { closed: "CLOSED", half_open: "HALF-OPEN", open: "OPEN" };
  const KNOWN = ["health", "latency", "cost", "load"];
  let lastSnapshot = 0;
  let renders = 0;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  const secs = (s) =>
    s == null ? "–" : s < 1 ? Math.round(s * 1000) + " ms" : s.toFixed(2) + " s";
  const pct = (x) => (x == null ? "–" : (x * 100).toFixed(1) + " %");
  const usd = (x) => "$" + (x < 0.01 ? x.toFixed(4) : x.toFixed(3));
  const time = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

  function bar(frac, cls) {
    const b = el("div", "bar" + (cls ? " " + cls : ""));
    const f = el("span");
    f.style.width = (Math.max(0, Math.min(1, frac || 0)) * 100).toFixed(1) + "%";
    b.append(f);
    return b;
  }
  function metric(label, value, extra) {
    const d = el("div", "metric");
    d.append(el("dt", null, label), el("dd", null, value));
    if (extra) d.append(extra);
    return d;
  }

  function card(p) {
    const a = el("article", "provider breaker-" + p.breaker + (p.drained ? " drained" : ""));
    a.dataset.provider = p.name;
    a.dataset.breaker = p.breaker;
    a.dataset.drained = String(p.drained);
    const head = el("header");
    const title = el("div");
    title.append(el("h3", null, p.name), el("div", "sub", p.adapter + " · " + p.kinds.join(", ")));
    const badge = el("span", "badge", LABEL[p.breaker] || p.breaker);
    badge.dataset.breaker = p.breaker;
    badge.title = "circuit breaker";
    head.append(title, badge);
    a.append(head);

    const flags = el("div", "flags");
    if (p.breaker_forced_open) flags.append(el("span", "tag forced", "held open by operator"));
    else if (p.breaker === "open" && p.breaker_open_remaining_s != null)
      flags.append(
        el("span", "tag", "half-open in " + Math.ceil(p.breaker_open_remaining_s) + " s"));
    if (p.drained)
      flags.append(el("span", "tag drain", "DRAINED"), el("span", "reason", p.drain_reason || ""));
    if (!p.healthy) flags.append(el("span", "tag unhealthy", "unhealthy"));
    if (p.breaker_failures > 0 && p.breaker === "closed")
      flags.append(el("span", "tag", p.breaker_failures + " consecutive failures"));
    if (p.rate_limit.cooldown_until)
      flags.append(
        el("span", "tag forced", "429 cooldown until " + time(p.rate_limit.cooldown_until)));
    if (flags.childElementCount) a.append(flags);

    const score = el("div", "score");
    const value = p.score ? p.score.value : null;
    const sv = el("div", "score-value", value == null ? "–" : value.toFixed(3));
    sv.append(el("small", null, "score"));
    const comps = el("div", "components");
    const c = (p.score && p.score.components) || {};
    const keys = KNOWN.concat(Object.keys(c).filter((k) => !KNOWN.includes(k)).sort());
    for (const k of keys) {
      const row = el("div", "comp");
      const v = c[k] == null ? "–" : c[k].toFixed(2);
      row.append(el("span", "k", k), bar(c[k]), el("span", "v", v));
      comps.append(row);
    }
    score.append(sv, comps);
    a.append(score);

    const dl = el("dl", "metrics");
    const rl = p.rate_limit;
    const room = rl.capacity ? rl.available / rl.capacity : 0;
    dl.append(metric("rate-limit headroom", rl.available.toFixed(1) + " / " + rl.capacity,
      bar(room, room < 0.1 ? "bad" : room < 0.3 ? "warn" : "")));
    if (p.max_concurrency) {
      const load = p.inflight / p.max_concurrency;
      dl.append(metric("in flight", p.inflight + " / " + p.max_concurrency,
        bar(load, load > 0.9 ? "bad" : load > 0.7 ? "warn" : "")));
    } else {
      dl.append(metric("in flight", p.inflight + " (no cap)"));
    }
    const lat = Object.entries(p.latency_ewma_s || {}).map(([k, v]) => k + " " + secs(v));
    dl.append(metric("latency (ewma)", lat.length ? lat.join(" · ") : "–"));
    dl.append(metric("success ratio", pct(p.success_ratio),
      bar(p.success_ratio, p.success_ratio < 0.9 ? "bad" : p.success_ratio < 0.98 ? "warn" : "")));
    const cost = [];
    if (p.kinds.includes("image")) cost.push(usd(p.cost.per_image_usd) + "/image");
    if (p.kinds.includes("video")) cost.push(usd(p.cost.per_video_s_usd) + "/video-s");
    dl.append(metric("cost", cost.join(" · ") || "–"));
    dl.append(metric("priority · weight", p.priority + " · " + p.weight));
    a.append(dl);
    return a;
  }

  function failoverTable(rows) {
    if (!rows.length) return el("div", "empty", "No failovers recently.");
    const t = el("table");
    const hr = el("tr");
    for (const h of ["time", "from", "to", "reason", "job"]) hr.append(el("th", null, h));
    t.append(el("thead"));
    t.tHead.append(hr);
    const tb = el("tbody");
    for (const f of rows) {
      const tr = el("tr");
      tr.append(el("td", null, time(f.at)), el("td", null, f.from), el("td", null, f.to),
        el("td", null, f.reason), el("td", "mono", f.job_id));
      tb.append(tr);
    }
    t.append(tb);
    return t;
  }

  function render(s) {
    grid.replaceChildren(...s.providers.map(card));
    failovers.replaceChildren(failoverTable(s.failovers));
    const total = s.providers.length;
    const open = s.providers.filter((p) => p.breaker === "open").length;
    const drained = s.providers.filter((p) => p.drained).length;
    summary.textContent = s.routable + "/" + total + " routable" +
      (open ? " · " + open + " open" : "") + (drained ? " · " + drained + " drained" : "");
    const level = s.routable === 0 ? "down" : s.routable < total ? "degraded" : "ok";
    summary.className = "chip " + level;
    banner.classList.toggle("show", total > 0 && s.routable === 0);
    document.title = (open ? "● " + open + " open · " : "") + "Switchman status";
    updated.textContent = "updated " + time(s.at);
    renders += 1;
    body.dataset.renders = String(renders);
  }

  function setConn(state, text) {
    body.dataset.conn = state;
    document.getElementById("conn").textContent = text;
  }

  const initial = document.getElementById("initial");
  if (initial) render(JSON.parse(initial.textContent));

  const url = location.pathname.replace(/\/?$/, "/events");
  const source = new EventSource(url);
  source.addEventListener("open", () => setConn("live", "live"));
  source.addEventListener("error", () => setConn("reconnecting", "reconnecting…"));
  source.addEventListener("snapshot", (e) => {
    lastSnapshot = Date.now();
    if (body.dataset.conn !== "live") setConn("live", "live");
    render(JSON.parse(e.data));
  });
  setInterval(() => {
    if (body.dataset.conn === "live" && Date.now() - lastSnapshot > 5000) setConn("stale", "stale");
  }, 1000);
})();
"""

HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Switchman status</title>
<style>/*STYLE*/</style>
</head>
<body data-conn="connecting">
<header class="top">
  <h1>Switchman <small>provider status</small></h1>
  <span id="summary" class="chip">–</span>
  <span class="spacer"></span>
  <span id="updated" class="sub"></span>
  <span id="conn" class="chip">connecting…</span>
</header>
<main>
  <div id="banner" class="banner" role="alert">
    No provider can take traffic: every provider is open or drained.
  </div>
  <h2>Providers</h2>
  <div id="providers"></div>
  <section>
    <h2>Recent failovers</h2>
    <div id="failovers"></div>
  </section>
</main>
<footer>
  Live over Server-Sent Events. Shows what <code>/metrics</code> shows; operator controls:
  <code>switchman drain|undrain|breaker|reload</code>.
</footer>
<script id="initial" type="application/json">/*INITIAL*/</script>
<script>/*SCRIPT*/</script>
</body>
</html>
"""
