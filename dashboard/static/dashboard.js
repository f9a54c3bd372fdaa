// The dashboard's page: renders each snapshot the server pushes (/api/stream, server-sent events).
// Every number is formatted here from the snapshot's exact values (micros, counts, ratios); text only, no HTML.
"use strict";

const DASH = "–";
const usd = (micros) => (micros == null ? DASH : (micros / 1e6).toFixed(2));
const pct = (x) => (x == null ? DASH : (x * 100).toFixed(2) + "%");
const fixed = (x, digits) => (x == null ? DASH : Number(x).toFixed(digits));
const count = (n) => (n == null ? DASH : Number(n).toLocaleString("en-US"));
const $ = (id) => document.getElementById(id);

function cell(row, text, key, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (key) td.dataset.k = key;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tbody, items, render) {
  const rows = document.createDocumentFragment();
  for (const item of items) {
    const tr = document.createElement("tr");
    render(tr, item);
    rows.appendChild(tr);
  }
  tbody.replaceChildren(rows);
}

function renderCampaigns(section) {
  if (!section) return;
  const statuses = Object.entries(section.by_status).map(([s, n]) => `${count(n)} ${s}`).join(", ");
  $("campaign-counts").textContent =
    `${count(section.total)} campaigns (${statuses}); the ${section.shown} that spent most today are shown`;
  fill($("campaign-rows"), section.rows, (tr, c) => {
    tr.dataset.campaign = c.campaign_id;
    cell(tr, c.campaign_id, "campaign_id");
    cell(tr, c.status, "status", `text status-${c.status}`);
    cell(tr, `${c.pricing_model} ${c.pacing_mode}`, "pricing", "text");
    cell(tr, `${usd(c.spent_micros)} / ${usd(c.total_budget_micros)}`, "spent");
    cell(tr, usd(c.spent_today_micros), "spent_today");
    cell(tr, usd(c.daily_budget_micros), "daily_budget");
    cell(tr, usd(c.plan_micros), "plan");
    cell(tr, fixed(c.pacing_multiplier, 3), "lambda");
    cell(tr, pct(c.throttle_rate), "throttle");
    const td = cell(tr, "", "platforms", "platforms");
    for (const p of c.platforms) {
      const span = document.createElement("span");
      span.dataset.platform = p.platform;
      const multiplier = p.multiplier == null ? "" : ` ×${fixed(p.multiplier, 2)}`;
      const reason = p.reason ? ` (${p.reason})` : "";
      span.textContent = `${p.platform} ${usd(p.ecpm_micros)} · ${pct(p.ctr)} · ${pct(p.cvr)} · ${pct(p.roi)}${multiplier}${reason}`;
      td.appendChild(span);
    }
  });
}

// --- charts (uPlot, served by the dashboard from LOCAL_DIR/dashboard-node) ---

const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d"];
const charts = {};

function chart(id, labels, data, scaleRange) {
  const el = $(id);
  if (window.UPLOT_MISSING || typeof uPlot === "undefined") {
    el.textContent = window.UPLOT_MISSING || "charts unavailable";
    return;
  }
  const key = labels.join("|");
  const current = charts[id];
  if (current && current.key === key) {
    current.plot.setData(data);
    return;
  }
  if (current) current.plot.destroy();
  const series = [{}, ...labels.map((label, i) => ({ label, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true }))];
  const opts = { width: Math.max(320, Math.min(520, el.clientWidth || 420)), height: 200, series, legend: { live: false } };
  if (scaleRange) opts.scales = { y: { range: scaleRange } };
  charts[id] = { key, plot: new uPlot(opts, data, el) };
}

function renderKpis(section) {
  $("kpi-minute").textContent = section.latest_minute || DASH;
  const name = $("kpi-name").value;
  for (const dimension of ["channel", "device_type", "content_type"]) {
    const values = Object.keys(section.series[dimension] || {});
    const data = [section.minutes, ...values.map((v) => section.series[dimension][v][name])];
    chart(`chart-${dimension}`, values, data);
  }
  const rows = [];
  for (const [dimension, values] of Object.entries(section.latest)) {
    for (const [value, k] of Object.entries(values)) rows.push({ dimension, value, ...k });
  }
  fill($("kpi-rows"), rows, (tr, k) => {
    tr.dataset.dimension = k.dimension;
    tr.dataset.value = k.value;
    cell(tr, k.dimension);
    cell(tr, k.value, "value", "text");
    cell(tr, count(k.impressions), "impressions");
    cell(tr, pct(k.ctr), "ctr");
    cell(tr, pct(k.ad_completion_rate), "ad_completion_rate");
    cell(tr, fixed(k.rpai, 6), "rpai");
    cell(tr, fixed(k.ad_relevance_score, 4), "ad_relevance_score");
  });
}

const servingHistory = [[], [], []];

function renderServing(s) {
  $("serving-auctions").textContent = count(s.auctions);
  $("serving-rate").textContent = fixed(s.auctions_per_s, 1);
  $("serving-fill-rate").textContent = pct(s.fill_rate);
  const recent = s.recent;
  $("serving-latency").textContent = recent
    ? `${fixed(recent.latency_ms.p50, 2)} / ${fixed(recent.latency_ms.p95, 2)} / ${fixed(recent.latency_ms.p99, 2)}`
    : DASH;
  $("serving-bid-filter").textContent = recent ? pct(recent.bid_filter_share) : DASH;
  const live = s.latency_live;
  $("serving-latency-live").textContent = live
    ? `${fixed(live.p50, 2)} / ${fixed(live.p95, 2)} / ${fixed(live.p99, 2)}`
    : DASH;
  const meter = s.bid_filter_live;
  $("serving-bid-filter-shed").textContent = meter && meter.screened ? pct(meter.shed_share) : DASH;
  fill($("no-bid-rows"), Object.entries(s.openrtb_no_bids || {}), (tr, [reason, n]) => {
    cell(tr, reason, "reason", "text");
    cell(tr, count(n), "count");
  });
  fill($("no-fill-rows"), Object.entries(recent ? recent.no_fill_reasons : {}), (tr, [reason, n]) => {
    cell(tr, reason, "reason", "text");
    cell(tr, count(n), "count");
  });
  fill($("event-rows"), Object.entries(s.events || {}), (tr, [name, n]) => {
    tr.dataset.event = name;
    cell(tr, name, "event", "text");
    cell(tr, count(n), "count");
  });
  fill($("refused-rows"), Object.entries(s.rejected_events_by_reason || {}), (tr, [reason, n]) => {
    cell(tr, reason, "reason", "text");
    cell(tr, count(n), "count");
  });
  if (s.auctions_per_s != null) {
    servingHistory[0].push(Date.now() / 1000);
    servingHistory[1].push(s.auctions_per_s);
    servingHistory[2].push(s.fill_rate == null ? null : s.fill_rate * 100);
    if (servingHistory[0].length > 300) servingHistory.forEach((a) => a.shift());
  }
  chart("chart-serving", ["auctions/s", "fill rate %"], servingHistory);
}

function renderQuality(q) {
  const ivt = q.ivt;
  $("quality-ivt-rate").textContent = ivt ? pct(ivt.ivt_rate) : DASH;
  $("quality-ivt-counts").textContent = ivt ? `${count(ivt.ivt_impressions)} / ${count(ivt.ivt_clicks)}` : DASH;
  $("quality-model").textContent = q.model_version == null ? DASH : `${q.model_version} (${q.scorer || "?"})`;
  const c = q.calibration;
  $("quality-calibration").textContent = c
    ? `${c.kind} slope ${fixed(c.slope, 3)} intercept ${fixed(c.intercept, 3)} on ${count(c.fitted_on_clicks)} clicks`
    : "none yet";
  fill($("calibration-rows"), q.observed_over_expected || [], (tr, r) => {
    cell(tr, r.model_version, "model_version", "text");
    cell(tr, r.hour, "hour", "text");
    cell(tr, count(r.impressions), "impressions");
    cell(tr, count(r.clicks), "clicks");
    cell(tr, fixed(r.expected_clicks, 1), "expected_clicks");
    cell(tr, fixed(r.observed_over_expected, 3), "observed_over_expected");
    cell(tr, count(r.alerts), "alerts");
  });
}

function renderFinance(f) {
  fill($("bill-rows"), f.hours, (tr, h) => {
    tr.dataset.hour = h.hour;
    cell(tr, h.hour.replace("T", " ").slice(0, 16), "hour");
    cell(tr, h.status || DASH, "status", `text bill-${h.status}`);
    cell(tr, count(h.campaigns), "campaigns");
    cell(tr, count(h.held_back), "held_back");
    cell(tr, usd(h.spend_micros), "spend");
    cell(tr, usd(h.gross_spend_micros), "gross_spend");
    cell(tr, usd(h.ivt_credit_micros), "ivt_credit");
  });
}

let latest = null;

function render(snapshot) {
  latest = snapshot;
  renderCampaigns(snapshot.campaigns);
  renderKpis(snapshot.kpis);
  renderServing(snapshot.serving);
  renderQuality(snapshot.quality);
  renderFinance(snapshot.finance);
  const errors = Object.entries(snapshot.errors || {});
  $("errors").hidden = errors.length === 0;
  $("errors").textContent = errors.map(([source, message]) => `${source}: ${message} (its numbers are the last read)`).join("\n");
  if (!document.body.dataset.updates) document.body.dataset.firstRenderMs = performance.now().toFixed(0);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  $("status").textContent = `updated ${snapshot.at.slice(11, 19)} UTC · built in ${fixed(snapshot.build_ms, 0)} ms`;
}

$("kpi-name").addEventListener("change", () => latest && renderKpis(latest.kpis));

const stream = new EventSource("/api/stream");
stream.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
stream.addEventListener("error", () => { $("status").textContent = "reconnecting…"; });
