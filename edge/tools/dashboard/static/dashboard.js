// The emotion monitor's page: one card per device, kept live by the server's Server-Sent Events.
// Everything shown is a number or a label from the feeds; text goes in with textContent, never as HTML.
"use strict";

const cards = new Map();   // device id -> {el, fields, chart, labels, rows}
let windowS = 300;
let updates = 0;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v, digits, unit) {
  return typeof v === "number" ? v.toFixed(digits) + (unit || "") : "–";
}

function fmtAge(s) {
  if (typeof s !== "number") return "–";
  if (s < 10) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " m " + Math.round(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " m";
}

const FIGS = [
  ["fps", "fps", d => fmt(d.fps, 1)],
  ["age", "last msg", d => fmtAge(d.age_s)],
  ["nfaces", "faces", d => String(d.faces.length)],
  ["cpu", "CPU", d => fmt(d.figures.cpu_temp_c, 1, " °C")],
  ["latency", "latency", d => fmt(d.figures.latency_ms, 1, " ms")],
  ["frames", "frames", d => fmt(d.figures.frames, 0)],
  ["dropped", "dropped", d => fmt(d.figures.dropped_frames, 0)],
  ["outbox", "outbox", d => fmt(d.figures.outbox_pending, 0)],
  ["uptime", "uptime", d => fmtAge(d.figures.uptime_s)],
  ["seq", "message #", d => fmt(d.seq, 0)],
];

function makeCard(device) {
  const root = el("section", "card");
  root.dataset.device = device;
  const head = el("div", "head");
  const name = el("h2", null, device);
  const avail = el("span", "badge avail");
  const state = el("span", "badge state");
  head.append(name, avail, state);
  const health = el("div", "health");
  const figs = el("dl", "figs");
  const fields = {avail, state, health};
  for (const [key, label] of FIGS) {
    const box = el("div");
    const dd = el("dd");
    dd.dataset.k = key;
    box.append(el("dt", null, label), dd);
    figs.append(box);
    fields[key] = dd;
  }
  const faces = el("div", "faces");
  const mixTitle = el("div", "section");
  const mix = el("div", "mix");
  const chart = el("div", "chart");
  const foot = el("div", "foot");
  root.append(head, health, figs, el("div", "section", "faces in view"), faces, mixTitle, mix,
              el("div", "section", "last minutes (black: faces, right axis)"), chart, foot);
  Object.assign(fields, {faces, mixTitle, mix, chart, foot});
  return {el: root, fields, chart: null, labels: null, rows: []};
}

function barRow(name, value, color, text) {
  const row = el("div", "row");
  const bar = el("span", "bar");
  const fill = el("i");
  fill.style.width = Math.round(Math.max(0, Math.min(1, value || 0)) * 100) + "%";
  fill.style.background = color || "#888";
  bar.append(fill);
  row.append(el("span", "name", name), bar, el("span", "val", text));
  return row;
}

function colorOf(d, label) {
  const i = d.labels.indexOf(label);
  return i >= 0 ? d.colors[i] : "#888";
}

function render(card, d) {
  const f = card.fields;
  card.el.dataset.health = d.health.level;
  card.el.dataset.seq = d.seq === null ? "" : String(d.seq);
  f.avail.textContent = d.availability;
  f.avail.dataset.v = d.availability;
  f.state.textContent = d.state || "–";
  f.health.textContent = d.health.level === "ok" ? "healthy" : d.health.reason;
  for (const [key, , get] of FIGS) f[key].textContent = get(d);
  f.faces.replaceChildren(...(d.faces.length ? d.faces.map(t => barRow(
    "#" + t.track_id + " " + t.emotion, t.confidence, colorOf(d, t.emotion), fmt(t.confidence, 2)))
    : [el("div", "nobody", "nobody in view")]));
  const labels = Object.keys(d.mix.probs);
  f.mixTitle.textContent = labels.length ? "emotions (" + d.mix.source + ")" : "emotions";
  f.mix.replaceChildren(...labels.map(l => barRow(l, d.mix.probs[l], colorOf(d, l),
    (100 * d.mix.probs[l]).toFixed(0) + " %")));
  const parts = ["model " + (d.model_id || "–")];
  if (d.figures.detector) parts.push(d.figures.detector);
  if (d.summary) parts.push("last window: " + (d.summary.dominant_emotion || "nobody") + ", " +
                            fmt(d.summary.faces_mean, 2) + " faces");
  if (d.figures.source_state && d.figures.source_state !== "ok") parts.push("source " + d.figures.source_state);
  f.foot.textContent = parts.join(" · ");
}

function chartData(card) {
  const cols = [card.rows.map(r => r[0])];
  card.labels.forEach((_, j) => cols.push(card.rows.map(r => r[2 + j])));
  cols.push(card.rows.map(r => r[1]));
  return cols;
}

function makeChart(card, d) {
  const width = Math.max(240, card.fields.chart.clientWidth || 320);
  const series = [{}];
  card.labels.forEach((l, j) => series.push({label: l, stroke: d.colors[j] || "#888", width: 1.5, scale: "p",
                                             spanGaps: false, points: {show: false}}));
  series.push({label: "faces", stroke: "#222", width: 1, scale: "n", paths: uPlot.paths.stepped({align: 1}),
               points: {show: false}});
  const opts = {
    width, height: 150, legend: {show: false}, cursor: {show: false},
    scales: {x: {time: true}, p: {range: [0, 1]}, n: {range: (u, lo, hi) => [0, Math.max(2, hi)]}},
    axes: [{size: 28}, {scale: "p", size: 34, values: (u, v) => v.map(x => x.toFixed(1))},
           {scale: "n", side: 1, size: 26, grid: {show: false}, values: (u, v) => v.map(x => x % 1 ? "" : x)}],
    series,
  };
  card.fields.chart.replaceChildren();
  card.chart = new uPlot(opts, chartData(card), card.fields.chart);
}

function mergeSeries(card, s, d, replace) {
  if (!s) return;
  const same = card.labels && card.labels.join("\u0000") === s.labels.join("\u0000");
  if (replace || !same) {
    card.labels = s.labels;
    card.rows = s.rows.slice();
    makeChart(card, d);
    return;
  }
  const last = card.rows.length ? card.rows[card.rows.length - 1][0] : -Infinity;
  for (const r of s.rows) if (r[0] > last) card.rows.push(r);
  const oldest = (card.rows.length ? card.rows[card.rows.length - 1][0] : 0) - windowS;
  while (card.rows.length && card.rows[0][0] < oldest) card.rows.shift();
  card.chart.setData(chartData(card));
}

function apply(msg, replace) {
  windowS = msg.window_s || windowS;
  document.getElementById("source").textContent = "Broker " + msg.broker + ", topics " + msg.prefix + "/+/….";
  const main = document.getElementById("devices");
  const empty = document.getElementById("empty");
  if (empty && msg.devices.length) empty.remove();
  const counts = {ok: 0, warn: 0, bad: 0};
  let faces = 0;
  for (const d of msg.devices) {
    let card = cards.get(d.device);
    if (!card) {
      card = makeCard(d.device);
      cards.set(d.device, card);
      const after = [...cards.keys()].sort().indexOf(d.device);
      const next = main.querySelectorAll(".card")[after];
      main.insertBefore(card.el, next || null);
    }
    render(card, d);
    mergeSeries(card, msg.series[d.device], d, replace);
    counts[d.health.level] += 1;
    faces += d.faces.length;
  }
  const n = msg.devices.length;
  document.getElementById("fleet").textContent = n + (n === 1 ? " device" : " devices") + " · " + counts.ok +
    " healthy" + (counts.warn ? " · " + counts.warn + " warning" : "") +
    (counts.bad ? " · " + counts.bad + " in trouble" : "") + " · " + faces + " faces in view";
  const up = document.getElementById("updates");
  up.dataset.updates = String(updates);
  up.textContent = "Updates received: " + updates + ".";
}

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("/events");
  es.addEventListener("snapshot", ev => {
    conn.textContent = "live";
    conn.dataset.state = "live";
    updates += 1;  // the snapshot is an update too: the footer's counts then describe the same messages
    apply(JSON.parse(ev.data), true);
  });
  es.addEventListener("update", ev => {
    updates += 1;
    apply(JSON.parse(ev.data), false);
  });
  es.onerror = () => {  // EventSource reconnects by itself (the server asks for 2 s); say so meanwhile
    conn.textContent = "connection lost, retrying…";
    conn.dataset.state = "lost";
  };
}

window.addEventListener("resize", () => {
  for (const card of cards.values()) {
    if (card.chart) card.chart.setSize({width: Math.max(240, card.fields.chart.clientWidth), height: 150});
  }
});

connect();
