// npllm's dashboard: fetches /v1/dashboard (same origin, the session cookie) every 15 s and
// draws it. Charts are SVG drawn here; nothing is loaded from anywhere else.
"use strict";

const REFRESH_MS = 15000;
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f6fb3", "#d1772e", "#3c9a5f", "#a8459a", "#c23b3b", "#6c5bb8", "#1f9ca8",
                 "#8a6d3b", "#5f6b7a", "#b8a02a"];
const TIERS = { premium: "#3c9a5f", standard: "#2f6fb3", discard: "#b8bec8" };

// ---- small DOM helpers ----------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

function fill(selector, ...children) {
  const node = document.querySelector(selector);
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

function chip(text, kind) {
  return el("span", { class: `chip ${kind || String(text).split(/[ :]/)[0]}` }, text);
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit",
                                       minute: "2-digit" });
}

function num(value, digits = 3) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
}

function colour(i) { return PALETTE[i % PALETTE.length]; }

function empty(text) { return el("p", { class: "empty" }, text); }

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.num ? "num" : "" },
                                                         h.text ?? h)))),
    el("tbody", {}, rows));
}

// ---- the page -------------------------------------------------------------------------

async function refresh() {
  const problem = document.getElementById("problem");
  try {
    const response = await fetch("/v1/dashboard", { credentials: "same-origin",
                                                     headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    draw(body);
    problem.hidden = true;
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    problem.hidden = false;
    problem.textContent = `could not refresh: ${err.message}`;
  }
}

function draw(data) {
  drawSleep(data.sleep, data.progress);
  drawAlerts(data.alerts);
  drawSatisfaction(data.satisfaction, data.canaries, data.nights);
  drawNights(data.nights);
  drawRetention(data.retention);
  drawAdapters(data.adapters);
  drawCanaries(data.canaries);
  drawReplay(data.replay);
  drawRouting(data.routing, data.days);
}

function drawSleep(sleep, progress) {
  const state = document.getElementById("state");
  state.textContent = sleep.state;
  state.className = `badge ${sleep.state}`;
  const window = sleep.window ? `window ${sleep.window}` : "no sleep window (any time)";
  const next = sleep.window_open ? "the window is open" : `next window ${when(sleep.next_window)}`;
  fill("#sleep-text", `${sleep.state}: ${sleep.reason || "—"}. ${window}; ${next}.`);
  if (!progress) {
    fill("#progress", el("p", { class: "muted" }, "no cycle is running"));
    return;
  }
  const bar = el("div", { class: progress.steps ? "progress" : "progress unknown" },
                 el("span", {}));
  if (progress.steps) bar.firstChild.style.width = `${(100 * progress.step) / progress.steps}%`;
  fill("#progress",
    el("p", {}, `cycle ${progress.cycle}, started ${when(progress.started_at)}: `,
       el("b", {}, progress.phase)),
    bar,
    progress.steps ? el("p", { class: "muted" }, `step ${progress.step} of ${progress.steps}`)
                   : null);
}

function drawAlerts(alerts) {
  if (!alerts.length) {
    fill("#alerts .body", empty("no alerts raised"));
    return;
  }
  fill("#alerts .body", table(["raised", "kind", "", "message", "resolved"], alerts.map((a) =>
    el("tr", {}, el("td", {}, when(a.raised_at)), el("td", {}, a.kind),
       el("td", {}, chip(a.severity)), el("td", {}, a.message),
       el("td", {}, a.resolved_at ? when(a.resolved_at) : chip("open", "warning"))))));
}

// ---- satisfaction: a line chart over time ---------------------------------------------

function drawSatisfaction(sat, canaries, nights) {
  const series = [{ label: "all rated answers", points: sat.overall, overall: true },
                  ...sat.series];
  const times = series.flatMap((s) => s.points.map((p) => Date.parse(p.at)));
  if (!times.length) {
    fill("#satisfaction .chart", empty("no rated answers in this period yet"));
    fill("#satisfaction .legend");
    return;
  }
  const W = 900, H = 280, L = 44, R = 16, T = 24, B = 30;
  const bucketMs = { minute: 60000, hour: 3600000, day: 86400000 }[sat.bucket];
  let t0 = Math.min(...times), t1 = Math.max(...times) + bucketMs;
  const marks = [];
  for (const n of nights) marks.push({ t: Date.parse(n.started_at), cls: "night-mark",
                                       text: `night ${n.id}` });
  for (const c of canaries) {
    marks.push({ t: Date.parse(c.started_at), cls: "canary-mark",
                 text: `canary ${c.adapter} v${c.candidate}` });
    if (c.decided_at) marks.push({ t: Date.parse(c.decided_at), cls: "canary-mark",
                                   text: `${c.status.replace("_", " ")} v${c.candidate}` });
  }
  const shown = marks.filter((m) => m.t >= t0 - bucketMs && m.t <= t1 + bucketMs);
  for (const m of shown) { t0 = Math.min(t0, m.t); t1 = Math.max(t1, m.t); }
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const y = (v) => T + ((1 - v) / 2) * (H - T - B);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
                             "aria-label": "satisfaction over time" });
  for (const v of [-1, -0.5, 0, 0.5, 1]) {
    chart.append(svg("line", { class: v === 0 ? "axis" : "grid", x1: L, x2: W - R,
                               y1: y(v), y2: y(v) }));
    chart.append(svg("text", { class: "label", x: L - 6, y: y(v) + 4, "text-anchor": "end" },
                     v.toFixed(1)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    chart.append(svg("text", { class: "label", x: x(t), y: H - 8, "text-anchor": anchor },
                     when(new Date(t).toISOString())));
  }
  let labelled = -Infinity;  // labels closer than 48 px to the previous one are left out
  shown.sort((a, b) => a.t - b.t).forEach((m) => {
    const line = svg("line", { class: m.cls, x1: x(m.t), x2: x(m.t), y1: T, y2: H - B });
    line.append(svg("title", {}, m.text));
    chart.append(line);
    if (x(m.t) - labelled < 48) return;
    labelled = x(m.t);
    chart.append(svg("text", { class: "mark-label", x: x(m.t) + 3, y: T - 8 }, m.text));
  });
  const legend = [];
  series.forEach((s, i) => {
    const stroke = s.overall ? "#1d2330" : colour(i - 1);
    const pts = s.points.map((p) => [x(Date.parse(p.at) + bucketMs / 2), y(p.mean), p]);
    if (pts.length > 1) {
      chart.append(svg("polyline", { class: "series", fill: "none", stroke,
                                     "stroke-width": s.overall ? 2.5 : 1.5,
                                     points: pts.map(([a, b]) => `${a},${b}`).join(" ") }));
    }
    for (const [a, b, p] of pts) {
      const dot = svg("circle", { class: "point", cx: a, cy: b, r: s.overall ? 4 : 3,
                                  fill: stroke, "data-series": s.label });
      dot.append(svg("title", {}, `${s.label}, ${when(p.at)}: mean ${num(p.mean)} over ${p.n} rated`));
      chart.append(dot);
    }
    legend.push(el("span", {}, el("i", {}), `${s.label} (${s.points.reduce((n, p) => n + p.n, 0)})`));
    legend[legend.length - 1].firstChild.style.background = stroke;
  });
  fill("#satisfaction .chart", chart);
  fill("#satisfaction .legend", legend);
}

// ---- the nightly learning report -------------------------------------------------------

function meter(right, total) {
  const m = el("span", { class: "meter" }, el("span", {}));
  m.firstChild.style.width = `${total ? (100 * right) / total : 0}%`;
  return m;
}

function fact(label, ...value) { return el("div", { class: "fact" }, `${label}: `, ...value); }

function learnedEntry(l) {
  if (String(l.verdict || "").startsWith("skipped")) {
    return el("div", { class: "learned skipped", "data-adapter": l.adapter },
      el("h3", {}, `${l.adapter} `, chip("skipped", "skipped")), el("p", { class: "muted" }, l.verdict));
  }
  const kind = l.published ? "published" : String(l.verdict || "").split(/[ :]/)[0];
  const version = l.published ? `v${l.published}` :
                  l.candidate_version ? `candidate v${l.candidate_version}` : "";
  const facts = [];
  if (l.efficacy) {
    facts.push(fact("efficacy", meter(l.efficacy.new_right, l.efficacy.new), " ",
                    el("b", {}, `${l.efficacy.new_right}/${l.efficacy.new}`),
                    " taught answers served as taught"));
    if (l.efficacy.rehearsed) {
      facts.push(fact("rehearsed", meter(l.efficacy.rehearsed_right, l.efficacy.rehearsed), " ",
                      el("b", {}, `${l.efficacy.rehearsed_right}/${l.efficacy.rehearsed}`),
                      " earlier answers served"));
    }
  }
  if (l.paraphrases !== null && l.paraphrases !== undefined) {
    facts.push(fact("generalisation", el("b", {}, l.paraphrases),
                    " paraphrases trained (not checked by the cycle)"));
  }
  if (l.locality_counts) {
    const c = l.locality_counts;
    facts.push(fact("locality", el("b", {}, `${c.changed} of ${c.questions}`),
                    ` neighbouring questions changed (${c.in_scope} in its scope)`));
  } else {
    facts.push(fact("locality", el("span", { class: "muted" }, "not checked")));
  }
  facts.push(fact("validation loss", el("b", {},
    `${num(l.validation_loss.before)} → ${num(l.validation_loss.after)}`)));
  facts.push(fact("retention", l.retention.before === null && l.retention.after === null
    ? el("span", { class: "muted" }, "nothing earlier to retain")
    : el("b", {}, `${num(l.retention.before)} → ${num(l.retention.after)}`)));
  if (l.steps) facts.push(fact("steps", el("b", {}, `${l.steps_done ?? "?"} of ${l.steps}`),
                               l.seconds ? ` in ${l.seconds} s` : ""));
  const taught = l.taught.length
    ? el("ul", { class: "taught" }, l.taught.map((q) => el("li", {},
        `“${q.question}” → “${q.answer ?? "?"}”`,
        el("span", { class: "muted" }, q.interaction_id ? ` (interaction #${q.interaction_id}` : " (",
           q.new ? ", new tonight)" : ", learned earlier)"))))
    : null;
  const forgotten = l.forgotten && l.forgotten.length
    ? el("p", {}, `no longer answered as before: ${l.forgotten.map((q) => `“${q}”`).join(", ")}`)
    : null;
  return el("div", { class: `learned ${kind}`, "data-adapter": l.adapter },
    el("h3", {}, `${l.adapter} `, version ? chip(version, kind) : null, " ",
       el("span", { class: "muted" }, `${l.samples ?? 0} new sample(s), ${l.rehearsed ?? 0} rehearsed`)),
    el("p", {}, l.verdict || ""),
    el("div", { class: "facts" }, facts), forgotten,
    taught ? el("p", { class: "muted" }, "questions this version answers, and where they came from:") : null,
    taught);
}

function drawNights(nights) {
  if (!nights.length) {
    fill("#nights .body", empty("no sleep cycle yet: `npllm sleep --now` runs one"));
    return;
  }
  fill("#nights .body", nights.map((n) => el("div", { class: "night", "data-cycle": n.id },
    el("h3", {}, `Night ${n.id} `, chip(n.status), " ",
       el("span", { class: "muted" }, `${n.trigger}, ${when(n.started_at)}`,
          n.seconds !== null ? `, ${n.seconds} s` : "", n.samples !== null ? `, ${n.samples} sample(s)` : "",
          n.resumed_from ? `, resumed night ${n.resumed_from}` : "",
          n.base_unchanged === true ? ", base weights unchanged" : "")),
    n.error ? el("p", {}, `error: ${n.error}`) : null,
    Object.keys(n.topics).length ? el("p", { class: "muted" }, "topics: ",
      Object.entries(n.topics).map(([k, v]) => `${k} (${v})`).join("; ")) : null,
    Object.keys(n.skipped).length ? el("p", { class: "muted" }, "skipped: ",
      Object.entries(n.skipped).map(([k, v]) => `${k}: ${v}`).join("; ")) : null,
    n.learned.length ? n.learned.map(learnedEntry)
                     : el("p", { class: "muted" }, n.status === "running" ? "in progress" : "nothing learned"))));
}

// ---- the R matrix: a heat-map table ----------------------------------------------------

function heat(value) {
  // red (0) → amber (0.5) → green (1), light enough to read the number on
  const v = Math.max(0, Math.min(1, value));
  const hue = 120 * v;
  return `hsl(${hue}, 60%, 82%)`;
}

function drawRetention(r) {
  if (!r.rows.length) {
    fill("#retention .body", empty("no night has trained an adapter yet"));
    return;
  }
  const rows = r.rows.map((row) => el("tr", {},
    el("th", {}, `night ${row.night}`, el("br"), el("span", { class: "muted" }, when(row.started_at))),
    r.columns.map((name) => {
      const c = row.cells[name];
      if (!c) return el("td", { class: "heat" });
      if (c.first) return el("td", { class: "heat first" }, "first version", el("small", {}, c.published ? "published" : "not published"));
      const cell = el("td", { class: "heat measured", "data-retention": c.after },
        el("b", {}, num(c.after)), el("small", {}, `from ${num(c.before)}`),
        el("small", {}, (c.published ? "published" : "refused: kept the version before") +
                        (c.forgotten ? `; ${c.forgotten} answer(s) lost` : "")));
      cell.style.background = heat(c.after);
      return cell;
    })));
  fill("#retention .body", table(["", ...r.columns], rows));
}

// ---- adapters, canaries -----------------------------------------------------------------

function drawAdapters(adapters) {
  if (!adapters.data.length) {
    fill("#adapters .body", empty("no adapter yet: the first night makes one"));
    return;
  }
  fill("#adapters .body", table(["adapter", { text: "served", num: true }, "versions"],
    adapters.data.map((a) => el("tr", { "data-adapter": a.name },
      el("td", {}, el("b", {}, a.name), a.dataset ? el("div", { class: "muted" }, `dataset ${a.dataset}`) : null),
      el("td", { class: "num" }, adapters.served[a.name] ? `v${adapters.served[a.name]}` : "—"),
      el("td", {}, a.versions.map((v) => {
        const c = chip(`v${v.version} ${v.status}`, v.status);
        c.title = [v.sleep_cycle ? `night ${v.sleep_cycle}` : "by hand", v.reason].filter(Boolean).join(": ");
        return c;
      }))))));
}

function drawCanaries(canaries) {
  if (!canaries.length) {
    fill("#canaries .body", empty("no canary trial yet"));
    return;
  }
  fill("#canaries .body", table(["adapter", "arms", "status", "decided", "why"], canaries.map((c) =>
    el("tr", {}, el("td", {}, c.adapter),
       el("td", {}, `v${c.candidate} (${Math.round(c.share * 100)} %) vs v${c.control}`),
       el("td", {}, chip(c.status)),
       el("td", {}, c.decided_at ? `${when(c.decided_at)} by ${c.decided_by}` : `deadline ${when(c.deadline)}`),
       el("td", {}, c.reason || "")))));
}

// ---- bars: replay tiers and routing shares ----------------------------------------------

function stackedBar(chart, x, y, width, height, parts, total) {
  let at = x;
  for (const p of parts) {
    if (!p.value) continue;
    const w = (width * p.value) / total;
    const rect = svg("rect", { class: "bar", x: at, y, width: Math.max(0.5, w), height,
                               fill: p.colour, "data-name": p.name });
    rect.append(svg("title", {}, `${p.name}: ${p.value} (${Math.round((100 * p.value) / total)} %)`));
    chart.append(rect);
    if (w > 40) chart.append(svg("text", { x: at + 4, y: y + height / 2 + 4, fill: "#fff" }, `${p.name} ${p.value}`));
    at += w;
  }
}

function drawReplay(rows) {
  const totals = rows.filter((r) => r.tag === "(all)");
  const total = totals.reduce((n, r) => n + r.interactions, 0);
  if (!total) {
    fill("#replay .chart", empty("the replay buffer is empty"));
    fill("#replay .body");
    return;
  }
  const chart = svg("svg", { viewBox: "0 0 420 40", role: "img", "aria-label": "replay tiers" });
  stackedBar(chart, 0, 6, 420, 28, totals.map((r) => ({ name: r.tier, value: r.interactions,
                                                        colour: TIERS[r.tier] || "#999" })), total);
  fill("#replay .chart", chart);
  fill("#replay .body", table(["tier", "tag", { text: "answers", num: true },
                               { text: "rated", num: true }, { text: "corrected", num: true },
                               { text: "mean reward", num: true }],
    rows.map((r) => el("tr", {}, el("td", {}, r.tag === "(all)" ? el("b", {}, r.tier) : ""),
      el("td", {}, r.tag), el("td", { class: "num" }, r.interactions), el("td", { class: "num" }, r.rated),
      el("td", { class: "num" }, r.corrected), el("td", { class: "num" }, num(r.mean_reward))))));
}

function drawRouting(routing, days) {
  const byDay = new Map();
  for (const r of routing.days) {
    if (!byDay.has(r.day)) byDay.set(r.day, []);
    byDay.get(r.day).push(r);
  }
  if (!byDay.size) {
    fill("#routing .chart", empty(`no answer routed in the last ${days} days`));
    fill("#routing .legend");
    return;
  }
  const names = [...new Set(routing.days.map((r) => r.adapter))].sort();
  const colourOf = (name) => (name === "none" ? "#b8bec8" : colour(names.indexOf(name)));
  const rowH = 26, W = 420, L = 80;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${byDay.size * rowH + 8}`, role: "img",
                             "aria-label": "routing shares by day" });
  [...byDay.entries()].forEach(([day, parts], i) => {
    const total = parts.reduce((n, p) => n + p.answers, 0);
    chart.append(svg("text", { class: "label", x: 0, y: i * rowH + 20 }, `${day} (${total})`));
    stackedBar(chart, L, i * rowH + 4, W - L, rowH - 6,
               parts.map((p) => ({ name: p.adapter, value: p.answers, colour: colourOf(p.adapter) })),
               total);
  });
  fill("#routing .chart", chart);
  const legend = names.map((n) => {
    const item = el("span", {}, el("i", {}), n === "none" ? "none (the base alone)" : n);
    item.firstChild.style.background = colourOf(n);
    return item;
  });
  const modes = Object.entries(routing.modes).map(([m, n]) => `${m} ${n}`).join(", ");
  fill("#routing .legend", legend, el("span", { class: "muted" }, `by mode: ${modes}`));
}

refresh();
setInterval(refresh, REFRESH_MS);
