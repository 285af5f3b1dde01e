"""The report page: one HTML file with its CSS, script and data inline.

A Content-Security-Policy in the page forbids every fetch, so the file is
self-contained by construction: opened from a mail attachment or a laptop
without network it shows exactly what it shows here.
"""
from __future__ import annotations

import html
import json
from typing import Any

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "base-uri 'none'; form-action 'none'")


def render(doc: dict[str, Any]) -> str:
    # inside <script> only "</" can end the element early; \u003c keeps the JSON intact
    data = json.dumps(doc, separators=(",", ":"), default=repr).replace("<", "\\u003c")
    title = html.escape(f"cmflow report {doc['summary']['run']}")
    return (PAGE.replace("%%CSP%%", CSP).replace("%%TITLE%%", title)
            .replace("%%CSS%%", CSS).replace("%%JS%%", JS).replace("%%DATA%%", data))


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="%%CSP%%">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%%TITLE%%</title>
<style>%%CSS%%</style></head>
<body>
<header><h1>cmflow run <span id="run-id"></span></h1><div id="state"></div></header>
<nav><a href="#summary">Summary</a><a href="#timeline">Timeline</a><a href="#hosts">Hosts</a>
<a href="#critical">Critical path</a><a href="#plan">Plan</a><a href="#jobs">Jobs</a></nav>
<section id="summary"><h2>Summary</h2><dl id="summary-list"></dl><div id="failures"></div></section>
<section id="timeline"><h2>Timeline <small>one lane per host slot; hover or click a bar</small></h2>
<div class="legend" id="legend"></div>
<label><input type="checkbox" id="show-crit"> highlight the critical path</label>
<div id="tl-wrap"><div id="tl"></div></div>
<div id="details" class="details" hidden></div></section>
<section id="hosts"><h2>Hosts</h2><table id="host-table"></table></section>
<section id="critical"><h2>Critical path</h2><div id="crit"></div></section>
<section id="plan"><h2>Plan <small>the flow's structure; each node's state</small></h2><div id="plan-tree"></div></section>
<section id="jobs"><h2>Jobs</h2>
<div class="toolbar"><input id="filter" type="search" placeholder="filter: text, or state:failed, host:h1, task:a">
<span id="job-count"></span></div>
<div id="jt-head" class="jt-row jt-head"></div><div id="jt" class="jt"><div id="jt-space"></div></div></section>
<div id="tip" class="tip" hidden></div>
<script id="report-data" type="application/json">%%DATA%%</script>
<script>%%JS%%</script>
</body></html>
"""

CSS = """
:root{--ok:#3a9d5d;--failed:#d0312d;--retried:#e8912d;--running:#2f6fd6;--cached:#8a8f98;--notrun:#c9ccd1;
--fg:#1d2127;--muted:#5d6673;--line:#e3e6ea;--bg:#fff}
*{box-sizing:border-box}
body{font:13px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg);margin:0}
header{display:flex;align-items:baseline;gap:16px;padding:12px 20px 4px}
h1{font-size:18px;margin:0} h2{font-size:15px;margin:18px 0 8px} h2 small{font-weight:normal;color:var(--muted)}
nav{padding:0 20px 8px;border-bottom:1px solid var(--line)} nav a{margin-right:14px;color:var(--running)}
section{padding:0 20px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
dt{color:var(--muted)} dd{margin:0;font-family:ui-monospace,Menlo,monospace;word-break:break-all}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-weight:600}
.s-ok{background:var(--ok)} .s-failed{background:var(--failed)} .s-cached{background:var(--cached)}
.s-running{background:var(--running)} .s-killed,.s-cancelled{background:var(--retried)} .s-notrun{background:var(--notrun)}
#tl-wrap{overflow:auto;max-height:70vh;border:1px solid var(--line)}
#tl svg{display:block} .lane-label{font:11px ui-monospace,monospace;fill:var(--muted)}
.lane-bg{fill:#f7f8fa} .axis{font:10px system-ui;fill:var(--muted)} .grid{stroke:var(--line)}
rect.bar{stroke:#fff;stroke-width:.6} rect.bar.st1{stroke:var(--failed);stroke-width:2}
rect.bar.st2{stroke:var(--retried);stroke-width:2;stroke-dasharray:3 2} rect.bar.st3{stroke:var(--running);stroke-width:2}
rect.bar:hover{opacity:.75} .fail-mark{stroke:var(--failed);stroke-width:2}
.wait{stroke:#9aa1ab;stroke-width:1.5} rect.phase{fill:#fff;opacity:.45;pointer-events:none}
.crit-on rect.bar.crit{stroke:#000;stroke-width:2.5} .crit-on rect.bar:not(.crit){opacity:.35}
.legend span{display:inline-block;margin-right:12px} .legend i{display:inline-block;width:12px;height:10px;margin-right:4px;vertical-align:middle}
.tip{position:fixed;pointer-events:none;background:#1d2127;color:#fff;padding:6px 8px;border-radius:4px;
font:12px ui-monospace,monospace;max-width:520px;white-space:pre-wrap;z-index:10}
.details{border:1px solid var(--line);padding:8px 12px;margin-top:8px;white-space:pre-wrap;font:12px ui-monospace,monospace}
table{border-collapse:collapse} th,td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:left}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
#plan-tree details{margin-left:14px} #plan-tree summary{cursor:pointer} .node-job{margin-left:28px;font-family:ui-monospace,monospace}
.chip{display:inline-block;width:9px;height:9px;border-radius:2px;margin-right:5px;vertical-align:middle}
.toolbar{display:flex;gap:12px;align-items:center;margin-bottom:6px} #filter{width:420px;padding:4px 6px}
.jt{height:480px;overflow:auto;position:relative;border:1px solid var(--line)} #jt-space{position:relative}
.jt-row{display:grid;grid-template-columns:70px minmax(160px,2fr) 110px 80px 110px 60px 80px 80px 60px minmax(160px,3fr);
height:22px;align-items:center;white-space:nowrap}
.jt-row>div{overflow:hidden;text-overflow:ellipsis;padding:0 6px}
.jt-head{font-weight:600;border:1px solid var(--line);border-bottom:0;background:#f7f8fa} .jt-head>div{cursor:pointer}
.jt-body{position:absolute;left:0;right:0} .jt-body .jt-row{border-bottom:1px solid #f0f1f3;cursor:pointer}
.jt-body .jt-row:hover{background:#f3f6fb}
"""

JS = r"""
(function () {
'use strict';
const T0 = performance.now(), marks = {};
const mark = (name) => { marks[name] = Math.round(performance.now() - T0); };
const D = JSON.parse(document.getElementById('report-data').textContent);
mark('parse');
const S = D.summary, $ = (id) => document.getElementById(id);
const STATES = ['ok', 'failed', 'retried', 'running', 'cached'];
const esc = (s) => String(s == null ? '' : s).replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
const fmt = (t) => t == null ? '' : (t < 60 ? t.toFixed(2) + 's' : t < 3600 ? Math.floor(t / 60) + 'm' + String(Math.round(t % 60)).padStart(2, '0') + 's' : (t / 3600).toFixed(1) + 'h');
const when = (t) => t ? new Date(t * 1000).toLocaleString() : '';
const colours = [];
const colour = (i) => colours[i] || (colours[i] = 'hsl(' + ((i * 137.508) % 360).toFixed(1) + ',55%,' + (i % 2 ? 48 : 58) + '%)');
const bytes = (n) => n < 1024 ? n + ' B' : n < 1048576 ? (n / 1024).toFixed(1) + ' KiB' : (n / 1048576).toFixed(1) + ' MiB';

// ---------------------------------------------------------------- summary
$('run-id').textContent = S.run;
$('state').innerHTML = '<span class="badge s-' + esc(S.state) + '">' + esc(S.state) + '</span>';
const c = S.counts;
const rows = [
  ['flow', S.flow], ['command line', (S.argv || []).join(' ')], ['started', when(S.start)], ['ended', when(S.end)],
  ['wall time', fmt(S.wall)],
  ['jobs', S.jobs + ': ' + c.ok + ' done, ' + c.failed + ' failed, ' + c.cached + ' cached' +
    (c.running ? ', ' + c.running + ' running' : '') + (c['not run'] ? ', ' + c['not run'] + ' not run' : '') +
    ' (' + S.attempts + ' attempts)'],
  ['hosts used', S.hosts_used.join(', ') || '-'], ['value', S.value]];
if (S.resumed_from) rows.push(['resumed from', S.resumed_from]);
$('summary-list').innerHTML = rows.map((r) => '<dt>' + esc(r[0]) + '</dt><dd>' + esc(r[1]) + '</dd>').join('');
if (S.failures && S.failures.length) {
  $('failures').innerHTML = '<h3>Failures</h3><ul>' + S.failures.slice(0, 50).map((f) =>
    '<li><b>' + esc(f.task || 'flow') + '</b>' + (f.host ? ' on ' + esc(f.host) : '') + ': ' + esc(f.reason) + '</li>').join('') + '</ul>';
}

// ---------------------------------------------------------------- timeline
const LANE = 16, LEFT = 130, TOP = 22;
const lanes = [];               // [hostIndex, slot]
const laneOf = [];              // hostIndex -> first lane row
D.hosts.forEach((h, i) => { laneOf[i] = lanes.length; for (let s = 0; s < Math.max(h[2], 1); s++) lanes.push([i, s]); });
const onCrit = new Uint8Array(D.jobs.length);
D.critical.forEach((j) => { onCrit[j] = 1; });
const CANVAS_OVER = 3000;   // more bars than this: one canvas instead of an SVG element per bar
let geo = null;             // the drawn timeline's geometry, for hit-testing the canvas
function drawTimeline() {
  if (D.attempts.length > CANVAS_OVER) return drawCanvas();
  const wrap = $('tl-wrap');
  const W = Math.max(wrap.clientWidth - LEFT - 20, 300);
  const span = Math.max(S.wall, 1e-3);
  const x = (t) => LEFT + (Math.max(t, 0) / span) * W;
  const H = TOP + lanes.length * LANE + 4;
  const out = [];
  out.push('<svg xmlns="http://www.w3.org/2000/svg" width="' + (LEFT + W + 10) + '" height="' + H + '">');
  for (let k = 0; k < lanes.length; k++) {
    const y = TOP + k * LANE;
    if (k % 2 === 0) out.push('<rect class="lane-bg" x="' + LEFT + '" y="' + y + '" width="' + W + '" height="' + LANE + '"/>');
    if (lanes.length <= 2000 || lanes[k][1] === 0)
      out.push('<text class="lane-label" x="4" y="' + (y + 12) + '">' + esc(D.hosts[lanes[k][0]][0]) + ':' + (lanes[k][1] + 1) + '</text>');
  }
  const ticks = 8;
  for (let i = 0; i <= ticks; i++) {
    const t = span * i / ticks, xx = x(t);
    out.push('<line class="grid" x1="' + xx + '" x2="' + xx + '" y1="' + (TOP - 4) + '" y2="' + H + '"/>');
    out.push('<text class="axis" x="' + xx + '" y="12" text-anchor="middle">' + fmt(t) + '</text>');
  }
  const many = D.attempts.length > 20000;   // aggregate: no wait lines, no per-bar marks
  for (let k = 0; k < D.attempts.length; k++) {
    const a = D.attempts[k];
    const y = TOP + (laneOf[a[1]] + a[2]) * LANE;
    const x0 = x(a[4]), w = Math.max(x(a[5]) - x0, 1);
    if (!many && a[3] != null && a[4] - a[3] > span / W)
      out.push('<line class="wait" x1="' + x(a[3]) + '" x2="' + x0 + '" y1="' + (y + LANE - 1) + '" y2="' + (y + LANE - 1) + '"/>');
    const job = D.jobs[a[0]];
    out.push('<rect class="bar st' + a[6] + (onCrit[a[0]] ? ' crit' : '') + '" data-a="' + k + '" x="' + x0.toFixed(1) +
      '" y="' + (y + 2) + '" width="' + w.toFixed(1) + '" height="' + (LANE - 4) + '" fill="' + colour(job[2]) + '"/>');
    if (a[6] === 1 && !many)
      out.push('<path class="fail-mark" d="M' + (x0 + w - 5) + ' ' + (y + 3) + 'l4 9m0 -9l-4 9"/>');
  }
  for (const p of D.phases) {
    const a = D.attempts[p[0]];
    const y = TOP + (laneOf[a[1]] + a[2]) * LANE;
    out.push('<rect class="phase ph-' + esc(p[1]) + '" x="' + x(p[2]) + '" y="' + (y + 2) + '" width="' +
      Math.max(x(p[3]) - x(p[2]), 1) + '" height="' + (LANE - 4) + '"/>');
  }
  out.push('</svg>');
  $('tl').innerHTML = out.join('');
  $('tl').dataset.bars = String(D.attempts.length);
}
$('legend').innerHTML = D.tasks.slice(0, 40).map((t, i) => '<span><i style="background:' + colour(i) + '"></i>' + esc(t) + '</span>').join('') +
  '<span><i style="border:2px solid var(--failed)"></i>failed</span><span><i style="border:2px dashed var(--retried)"></i>retried</span>' +
  '<span><i style="background:#b9bec6;height:2px"></i>waiting</span>' +
  (D.phases.length ? '<span><i style="background:#ccc"></i>paler part: staging inputs / fetching outputs</span>' : '');
function attemptText(k) {
  const a = D.attempts[k], j = D.jobs[a[0]];
  const lines = ['#' + j[0] + ' ' + j[1] + (a[8] > 1 ? '  (attempt ' + a[8] + ')' : ''),
    'state:   ' + STATES[a[6]] + (a[10] ? ' — ' + a[10] : ''),
    'host:    ' + D.hosts[a[1]][0] + ' slot ' + (a[2] + 1),
    'exit:    ' + (a[7] == null ? '-' : a[7]),
    'run:     ' + fmt(a[5] - a[4]) + (a[3] != null ? '   waited ' + fmt(a[4] - a[3]) : ''),
    'command: ' + j[10]];
  for (const p of D.phases) if (p[0] === k) lines.push(p[1] + ': ' + fmt(p[3] - p[2]));
  if (a[9]) lines.push('stderr (last lines):\n' + a[9]);
  return lines.join('\n');
}
function drawCanvas(crit) {
  const wrap = $('tl-wrap');
  const W = Math.max(wrap.clientWidth - LEFT - 20, 300), span = Math.max(S.wall, 1e-3);
  const H = Math.min(TOP + lanes.length * LANE + 4, 32000);
  const x = (t) => LEFT + (Math.max(t, 0) / span) * W;
  let cv = $('tl').querySelector('canvas');
  if (!cv) { $('tl').innerHTML = ''; cv = document.createElement('canvas'); $('tl').appendChild(cv); }
  cv.width = LEFT + W + 10; cv.height = H;
  const g = cv.getContext('2d');
  g.fillStyle = '#fff'; g.fillRect(0, 0, cv.width, H);
  g.font = '11px monospace';
  for (let k = 0; k < lanes.length; k++) {
    const y = TOP + k * LANE;
    if (k % 2 === 0) { g.fillStyle = '#f7f8fa'; g.fillRect(LEFT, y, W, LANE); }
    if (lanes.length <= 2000 || lanes[k][1] === 0) { g.fillStyle = '#5d6673'; g.fillText(D.hosts[lanes[k][0]][0] + ':' + (lanes[k][1] + 1), 4, y + 12); }
  }
  g.strokeStyle = '#e3e6ea'; g.fillStyle = '#5d6673'; g.font = '10px sans-serif'; g.textAlign = 'center';
  for (let i = 0; i <= 8; i++) {
    const xx = x(span * i / 8);
    g.beginPath(); g.moveTo(xx, TOP - 4); g.lineTo(xx, H); g.stroke();
    g.fillText(fmt(span * i / 8), xx, 12);
  }
  const byLane = new Map();
  const marks = [];
  for (let k = 0; k < D.attempts.length; k++) {
    const a = D.attempts[k], row = laneOf[a[1]] + a[2], y = TOP + row * LANE;
    const x0 = x(a[4]), w = Math.max(x(a[5]) - x0, 1);
    g.globalAlpha = crit && !onCrit[a[0]] ? 0.3 : 1;
    g.fillStyle = colour(D.jobs[a[0]][2]);
    g.fillRect(x0, y + 2, w, LANE - 4);
    if (a[6] === 1 || a[6] === 2 || a[6] === 3 || (crit && onCrit[a[0]])) marks.push(k);
    let l = byLane.get(row); if (!l) byLane.set(row, l = []); l.push(k);
  }
  g.globalAlpha = 1; g.lineWidth = 2;
  for (const k of marks) {
    const a = D.attempts[k], y = TOP + (laneOf[a[1]] + a[2]) * LANE, x0 = x(a[4]), w = Math.max(x(a[5]) - x0, 1);
    g.strokeStyle = crit && onCrit[a[0]] ? '#000' : ['', '#d0312d', '#e8912d', '#2f6fd6'][a[6]];
    g.strokeRect(x0, y + 2, w, LANE - 4);
  }
  for (const l of byLane.values()) l.sort((p, q) => D.attempts[p][4] - D.attempts[q][4]);
  geo = {x0: LEFT, W: W, span: span, byLane: byLane, cv: cv};
  $('tl').dataset.bars = String(D.attempts.length);
}
function hitAt(e) {
  if (e.target.dataset && e.target.dataset.a !== undefined) return +e.target.dataset.a;
  if (!geo || e.target !== geo.cv) return undefined;
  const r = geo.cv.getBoundingClientRect();
  const row = Math.floor((e.clientY - r.top - TOP) / LANE), t = (e.clientX - r.left - geo.x0) / geo.W * geo.span;
  const l = geo.byLane.get(row);
  if (!l) return undefined;
  let lo = 0, hi = l.length - 1, best = -1;            // the last attempt that started by t
  while (lo <= hi) { const m = (lo + hi) >> 1; if (D.attempts[l[m]][4] <= t) { best = m; lo = m + 1; } else hi = m - 1; }
  const slack = geo.span / geo.W;                      // a bar is at least a pixel wide
  return best >= 0 && D.attempts[l[best]][5] + slack >= t ? l[best] : undefined;
}
const tip = $('tip');
$('tl').addEventListener('mousemove', (e) => {
  const k = hitAt(e);
  if (k === undefined) { tip.hidden = true; return; }
  tip.textContent = attemptText(k);
  tip.hidden = false;
  tip.style.left = Math.min(e.clientX + 14, window.innerWidth - 540) + 'px';
  tip.style.top = (e.clientY + 14) + 'px';
});
$('tl').addEventListener('mouseleave', () => { tip.hidden = true; });
function showDetails(text) { const d = $('details'); d.textContent = text; d.hidden = false; }
$('tl').addEventListener('click', (e) => {
  const k = hitAt(e);
  if (k !== undefined) showDetails(attemptText(k));
});
$('show-crit').addEventListener('change', (e) => {
  $('tl').classList.toggle('crit-on', e.target.checked);
  if (geo) drawCanvas(e.target.checked);
});

// ---------------------------------------------------------------- hosts
$('host-table').innerHTML = '<tr><th>host</th><th class="num">slots</th><th class="num">jobs</th><th class="num">busy %</th>' +
  '<th class="num">busy time</th><th class="num">failures</th><th class="num">bytes moved</th></tr>' +
  D.hostFigures.map((h) => '<tr><td>' + esc(h.host) + '</td><td class="num">' + h.slots + '</td><td class="num">' + h.jobs +
    '</td><td class="num">' + h.busy_pct.toFixed(1) + '</td><td class="num">' + fmt(h.busy) + '</td><td class="num">' + h.failures +
    '</td><td class="num">' + bytes(h.bytes) + '</td></tr>').join('');

// ---------------------------------------------------------------- critical path
(function () {
  if (!D.critical.length) { $('crit').textContent = 'no jobs ran'; return; }
  let total = 0;
  const items = D.critical.map((j) => { const r = D.jobs[j]; total += r[7] || 0; return r; });
  $('crit').innerHTML = '<p>' + items.length + ' job(s) in a chain, ' + fmt(total) + ' of running time in a wall time of ' + fmt(S.wall) +
    ':</p><ol>' + items.slice(0, 200).map((r) => '<li>#' + r[0] + ' ' + esc(r[1]) + ' — ' + esc(r[3]) + ', ' + fmt(r[7] || 0) +
    (r[4] ? ' on ' + esc(r[4]) : '') + '</li>').join('') + (items.length > 200 ? '<li>…</li>' : '') + '</ol>';
})();

// ---------------------------------------------------------------- plan tree (children built when opened)
const stateColour = {ok: 'var(--ok)', failed: 'var(--failed)', cached: 'var(--cached)', running: 'var(--running)', 'not run': 'var(--notrun)'};
const bySeq = new Map(D.jobs.map((r, i) => [r[0], i]));
// a deferred call or a local function ("op": "call" / "local") has inputs, not items (as data.py's _operands)
const operands = (node) => node.items || node.inputs || [];
function tally(node, acc) {
  if (node.job !== undefined) { const r = D.jobs[bySeq.get(node.job)]; const st = r ? r[3] : 'not run'; acc[st] = (acc[st] || 0) + 1; return acc; }
  for (const it of operands(node)) tally(it, acc);
  return acc;
}
function nodeState(acc) {
  return acc.failed ? 'failed' : acc.running ? 'running' : acc['not run'] ? 'not run' : acc.ok ? 'ok' : acc.cached ? 'cached' : 'not run';
}
function planNode(node) {
  if (node.job !== undefined) {
    const r = D.jobs[bySeq.get(node.job)];
    const st = r ? r[3] : 'not run';
    const div = document.createElement('div');
    div.className = 'node-job';
    div.innerHTML = '<span class="chip" style="background:' + stateColour[st] + '"></span>#' + node.job + ' ' + esc(r ? r[1] : '') + ' <small>' + esc(st) + '</small>';
    return div;
  }
  const acc = tally(node, {}), items = operands(node);
  const det = document.createElement('details');
  const parts = Object.keys(acc).map((k) => acc[k] + ' ' + k).join(', ');
  det.innerHTML = '<summary><span class="chip" style="background:' + stateColour[nodeState(acc)] + '"></span>' +
    esc({seq: 'Seq (;)', par: 'Par (|)', sum: 'Sum (+)'}[node.op] || (node.label ? node.label + ' (' + node.op + ')' : node.op)) +
    ' — ' + items.length + (node.items ? ' item(s); ' : ' input(s); ') + esc(parts) + '</summary>';
  det.addEventListener('toggle', () => {
    if (!det.open || det.dataset.built) return;
    det.dataset.built = '1';
    const frag = document.createDocumentFragment();
    const shown = items.slice(0, 1000);
    for (const it of shown) frag.appendChild(planNode(it));
    if (items.length > shown.length) { const more = document.createElement('div'); more.className = 'node-job'; more.textContent = '… ' + (items.length - shown.length) + ' more (see the job table)'; frag.appendChild(more); }
    det.appendChild(frag);
  });
  return det;
}
if (D.plan) { const root = planNode(D.plan); if (root.tagName === 'DETAILS') root.open = true; $('plan-tree').appendChild(root); }
else $('plan-tree').textContent = '(no expression)';

// ---------------------------------------------------------------- job table (virtual: only visible rows exist)
const COLS = [['#', 0, 'num'], ['job', 1], ['task', 2], ['state', 3], ['host', 4], ['tries', 5, 'num'], ['wait', 6, 'num'], ['run', 7, 'num'], ['exit', 8, 'num'], ['error', 9]];
const RH = 22;
let order = D.jobs.map((_, i) => i), view = order, sortCol = 0, sortDir = 1;
$('jt-head').innerHTML = COLS.map((cdef, i) => '<div data-c="' + i + '">' + cdef[0] + '</div>').join('');
function cell(r, ci) {
  const v = r[COLS[ci][1]];
  if (ci === 2) return D.tasks[v];
  if (ci === 6 || ci === 7) return v == null ? '' : fmt(v);
  return v == null ? '' : v;
}
function renderRows() {
  const box = $('jt'), top = box.scrollTop;
  const first = Math.floor(top / RH), n = Math.ceil(box.clientHeight / RH) + 2;
  const html = [];
  for (let i = first; i < Math.min(view.length, first + n); i++) {
    const r = D.jobs[view[i]];
    html.push('<div class="jt-row" data-j="' + view[i] + '">' + COLS.map((cdef, ci) => '<div' + (cdef[2] ? ' style="text-align:right"' : '') +
      (ci === 3 ? '><span class="chip" style="background:' + stateColour[r[3]] + '"></span' : '') + '>' + esc(cell(r, ci)) + '</div>').join('') + '</div>');
  }
  let body = box.querySelector('.jt-body');
  if (!body) { body = document.createElement('div'); body.className = 'jt-body'; $('jt-space').appendChild(body); }
  body.style.top = (first * RH) + 'px';
  body.innerHTML = html.join('');
}
function applyView() {
  const q = $('filter').value.trim().toLowerCase();
  let rows = order;
  if (q) {
    const terms = q.split(/\s+/);
    rows = order.filter((i) => {
      const r = D.jobs[i];
      return terms.every((t) => {
        const m = /^(state|host|task):(.*)$/.exec(t);
        if (m) { const v = m[1] === 'state' ? r[3] : m[1] === 'host' ? r[4] : D.tasks[r[2]]; return String(v).toLowerCase() === m[2]; }
        return (r[1] + ' ' + D.tasks[r[2]] + ' ' + r[3] + ' ' + r[4] + ' ' + r[9]).toLowerCase().includes(t);
      });
    });
  }
  view = rows;
  $('jt-space').style.height = (view.length * RH) + 'px';
  $('job-count').textContent = view.length + ' of ' + D.jobs.length + ' jobs';
  renderRows();
}
$('jt-head').addEventListener('click', (e) => {
  const ci = +e.target.dataset.c;
  if (isNaN(ci)) return;
  sortDir = ci === sortCol ? -sortDir : 1; sortCol = ci;
  const k = COLS[ci][1];
  order = order.slice().sort((a, b) => {
    let x = D.jobs[a][k], y = D.jobs[b][k];
    if (ci === 2) { x = D.tasks[x]; y = D.tasks[y]; }
    if (x == null) return 1; if (y == null) return -1;
    return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
  });
  applyView();
});
let pending = 0;
$('filter').addEventListener('input', () => { clearTimeout(pending); pending = setTimeout(applyView, 120); });
$('jt').addEventListener('scroll', () => requestAnimationFrame(renderRows));
$('jt').addEventListener('click', (e) => {
  const row = e.target.closest('.jt-row');
  if (!row) return;
  const j = +row.dataset.j;
  let last = -1;
  for (let k = 0; k < D.attempts.length; k++) if (D.attempts[k][0] === j) last = k;
  const r = D.jobs[j];
  showDetails(last >= 0 ? attemptText(last) : '#' + r[0] + ' ' + r[1] + '\nstate: ' + r[3] + '\ncommand: ' + r[10]);
  $('details').scrollIntoView({block: 'nearest'});
});

mark('sections');
applyView();          // before the timeline: reading the table's height must not lay out thousands of bars
mark('table');
drawTimeline();
mark('timeline');
let resizing = 0;
window.addEventListener('resize', () => { clearTimeout(resizing); resizing = setTimeout(drawTimeline, 200); });
window.cmflowReport = {bars: D.attempts.length, jobs: D.jobs.length, ready: true, marks: marks};
document.body.dataset.ready = '1';
})();
"""
