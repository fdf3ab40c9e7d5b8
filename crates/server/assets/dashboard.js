// The dashboard: reads /dashboard/data with the admin key and draws it. Read-only.
"use strict";

const $ = (id) => document.getElementById(id);
const DAYS = 30;

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function credits(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

// Images (dark) in front of requests (light) per day, one bar pair per day, as SVG.
function chart(days, today) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 240;
  const height = 40;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  const byDay = new Map(days.map((d) => [d.day, d]));
  const peak = Math.max(1, ...days.map((d) => d.requests));
  const step = width / DAYS;
  const title = document.createElementNS(ns, "title");
  title.textContent = days.map((d) => `${isoDay(d.day)}: ${d.images} images, ${d.requests} requests, ${d.errors} errors`).join("\n") || "no requests";
  svg.append(title);
  for (let i = 0; i < DAYS; i++) {
    const day = byDay.get(today - (DAYS - 1) + i);
    if (!day) continue;
    for (const [value, kind] of [[day.requests, "requests"], [day.images, "images"]]) {
      const bar = document.createElementNS(ns, "rect");
      const h = (value / peak) * height;
      bar.setAttribute("x", (i * step + 1).toFixed(1));
      bar.setAttribute("y", (height - h).toFixed(1));
      bar.setAttribute("width", (step - 2).toFixed(1));
      bar.setAttribute("height", h.toFixed(1));
      bar.setAttribute("class", kind);
      svg.append(bar);
    }
  }
  return svg;
}

function isoDay(day) {
  return new Date(day * 86400000).toISOString().slice(0, 10);
}

function show(data) {
  const server = data.server;
  const total = Object.values(server.by_status).reduce((a, b) => a + b, 0);
  const errors = Object.entries(server.by_status)
    .filter(([status]) => Number(status) >= 400)
    .reduce((sum, [, n]) => sum + n, 0);
  const ms = (v) => (v === null ? "–" : `${Math.round(v)} ms`);
  const rows = [
    ["model", data.model],
    ["requests since start", String(total)],
    ["error rate", total ? `${((100 * errors) / total).toFixed(1)} %` : "–"],
    ["image latency p50 / p95", `${ms(server.p50_ms)} / ${ms(server.p95_ms)}`],
    ["queue depth", String(server.queue_depth)],
    ["in flight", `${server.in_flight_megapixels.toFixed(2)} MP, ${(data.memory.in_flight_bytes / 1048576).toFixed(0)} of ${(data.memory.budget_bytes / 1048576).toFixed(0)} MiB`],
    ["batches, mean size", `${server.batches}, ${server.mean_batch_size === null ? "–" : server.mean_batch_size.toFixed(2)}`],
  ];
  const list = $("server");
  list.replaceChildren();
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dd.dataset.stat = name;
    list.append(dt, dd);
  }
  const statuses = $("statuses").tBodies[0];
  statuses.replaceChildren();
  for (const [status, count] of Object.entries(server.by_status)) {
    const tr = document.createElement("tr");
    tr.append(cell(status), cell(String(count)), cell(`${((100 * count) / total).toFixed(1)} %`));
    statuses.append(tr);
  }
  $("no-accounts").hidden = data.accounts;
  $("keys").hidden = !data.accounts;
  const keys = $("keys").tBodies[0];
  keys.replaceChildren();
  for (const key of data.keys) {
    const tr = document.createElement("tr");
    tr.dataset.key = key.name;
    const kind = key.admin ? " (admin)" : key.sandbox ? " (sandbox)" : "";
    const chartCell = document.createElement("td");
    chartCell.append(chart(key.days, data.today));
    tr.append(cell(key.name + kind), cell(key.plan), cell(credits(key.available)),
      cell(`${credits(key.used)} / ${credits(key.allowance)}`), cell(credits(key.payg)), chartCell);
    keys.append(tr);
  }
}

async function refresh() {
  const headers = {};
  const key = $("api-key").value.trim();
  if (key) headers["x-api-key"] = key;
  try {
    const response = await fetch("/dashboard/data", { headers });
    const body = await response.json();
    if (!response.ok) {
      $("error").textContent = `${response.status}: ${body.error ? body.error.message : JSON.stringify(body)}`;
      $("error").hidden = false;
      return;
    }
    $("error").hidden = true;
    show(body);
  } catch (error) {
    $("error").textContent = `could not load the data: ${error.message}`;
    $("error").hidden = false;
  }
}

$("api-key").value = localStorage.getItem("cutout-api-key") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("cutout-api-key", $("api-key").value);
  refresh();
});
refresh();
setInterval(refresh, 10000);
