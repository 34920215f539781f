// stepstream web view: the runs table's sorting, filtering and selection, and the comparison
// charts (uPlot) drawn from /api/series. Pages are rendered by the service; this script sets
// every user-provided string through textContent or attributes, never as HTML.
"use strict";

(function () {
  const MAX_POINTS = 2000;
  const LIVE_EVERY_MS = 5000;
  const COLORS = ["#2f62c9", "#d9480f", "#2b8a3e", "#9c36b5", "#e67700", "#0b7285", "#c2255c", "#5c940d", "#364fc7", "#868e96"];

  // JSON carries NaN and the infinities as "NaN", "Infinity", "-Infinity"; Number() reads all.
  const num = (v) => (typeof v === "number" ? v : Number(v));

  function fmt(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "string") v = Number(v);
    if (Number.isNaN(v)) return "NaN";
    if (!Number.isFinite(v)) return v > 0 ? "Infinity" : "-Infinity";
    if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
    return Number(v.toPrecision(6)).toString();
  }

  // -- the runs table -------------------------------------------------------------------------

  function runsTable(table) {
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    const heads = Array.from(table.tHead.rows[0].cells);
    heads.forEach((th, col) => {
      if (th.classList.contains("nosort")) return;
      th.tabIndex = 0;
      th.addEventListener("click", () => sortBy(th, col));
    });

    function key(row, col, type) {
      const raw = row.cells[col].dataset.sort || "";
      if (type === "number" || type === "auto") {
        const x = raw === "" ? NaN : Number(raw);
        if (type === "number" || !Number.isNaN(x) || raw === "NaN") return { n: x, s: raw };
      }
      return { n: NaN, s: raw.toLowerCase() };
    }

    function sortBy(th, col) {
      const desc = th.classList.contains("sorted-asc");
      heads.forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
      th.classList.add(desc ? "sorted-desc" : "sorted-asc");
      const type = th.dataset.type || "text";
      const sign = desc ? -1 : 1;
      const sorted = rows.slice().sort((a, b) => {
        const ka = key(a, col, type);
        const kb = key(b, col, type);
        const na = !Number.isNaN(ka.n);
        const nb = !Number.isNaN(kb.n);
        if (na && nb) return sign * (ka.n - kb.n);
        if (na !== nb) return na ? -1 : 1; // numbers first, blanks and NaN last
        if (ka.s === kb.s) return 0;
        if (ka.s === "") return 1;
        if (kb.s === "") return -1;
        return sign * ka.s.localeCompare(kb.s, undefined, { numeric: true });
      });
      sorted.forEach((r) => body.appendChild(r));
    }

    const text = document.getElementById("filter-text");
    const state = document.getElementById("filter-state");
    const tag = document.getElementById("filter-tag");
    const experiment = document.getElementById("filter-experiment");
    const shown = document.getElementById("shown");
    function filter() {
      const needle = text.value.trim().toLowerCase();
      let visible = 0;
      for (const row of rows) {
        const tags = JSON.parse(row.dataset.tags || "[]");
        const ok =
          (!needle || row.textContent.toLowerCase().includes(needle)) &&
          (!state.value || row.dataset.state === state.value) &&
          (!tag.value || tags.includes(tag.value)) &&
          (!experiment.value || row.dataset.experiment === experiment.value);
        row.hidden = !ok;
        if (ok) visible += 1;
      }
      shown.textContent = `${visible} of ${rows.length} runs`;
    }
    for (const el of [text, state, tag, experiment]) el.addEventListener("input", filter);
    filter();

    const compare = document.getElementById("compare");
    const picks = Array.from(table.querySelectorAll("input.pick"));
    const selectAll = document.getElementById("select-all");
    const picked = () => picks.filter((p) => p.checked && !p.closest("tr").hidden).map((p) => p.value);
    const update = () => {
      const n = picked().length;
      compare.disabled = n === 0;
      compare.textContent = n ? `compare ${n} selected` : "compare selected";
    };
    picks.forEach((p) => p.addEventListener("change", update));
    selectAll.addEventListener("change", () => {
      picks.forEach((p) => {
        if (!p.closest("tr").hidden) p.checked = selectAll.checked;
      });
      update();
    });
    compare.addEventListener("click", () => {
      const q = new URLSearchParams({ project: compare.dataset.project });
      picked().forEach((r) => q.append("run", r));
      location.href = "/compare?" + q.toString();
    });
    update();
  }

  // -- charts ---------------------------------------------------------------------------------

  function chartsPage(config) {
    const runs = config.runs;
    const state = { smoothing: 0, log: false, x: "step", own: false };
    const charts = new Map(); // series name -> {section, plot, uplot, zoomed}
    let full = []; // per run: Map name -> {steps, values, ts}
    document.querySelectorAll("section.chart").forEach((section) => {
      charts.set(section.dataset.name, { section, plot: section.querySelector(".plot"), uplot: null, zoomed: null, data: null });
    });
    window.stepstream = { charts, state };

    function query(run, extra) {
      const q = new URLSearchParams(run.query);
      if (state.own) q.set("own", "1");
      for (const [k, v] of Object.entries(extra || {})) {
        if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
        else q.set(k, v);
      }
      return q;
    }

    async function fetchJSON(url) {
      const resp = await fetch(url);
      if (!resp.ok) throw new Error(`${url}: ${resp.status}`);
      return resp.json();
    }

    async function readRun(run, extra) {
      const body = await fetchJSON("/api/series?" + query(run, { max_points: MAX_POINTS, ...extra }));
      const out = new Map();
      for (const s of body.series) {
        if (s.string_series) continue;
        out.set(s.name, { steps: s.steps, values: s.values.map(num), ts: s.timestamps });
      }
      return out;
    }

    // One run's [xs, ys] for the chart, and the marks of its NaN and infinities.
    function table(points, runIndex, marks) {
      const xs = state.x === "time" ? points.ts : points.steps;
      const ys = new Array(xs.length);
      const a = state.smoothing;
      let ema = null;
      for (let i = 0; i < xs.length; i++) {
        const v = points.values[i];
        if (!Number.isFinite(v)) {
          ys[i] = null;
          marks.push({ x: xs[i], kind: Number.isNaN(v) ? "nan" : v > 0 ? "pinf" : "ninf", run: runIndex });
          continue;
        }
        ema = ema === null || a === 0 ? v : a * ema + (1 - a) * v;
        ys[i] = state.log && ema <= 0 ? null : ema;
      }
      return [xs, ys];
    }

    function aligned(perRun, marks) {
      const tables = [];
      const present = [];
      perRun.forEach((points, i) => {
        if (points && points.steps.length) {
          tables.push(table(points, i, marks));
          present.push(i);
        }
      });
      if (!tables.length) return null;
      const joined = uPlot.join(tables);
      // Every run keeps its own series slot (and colour) even when it lacks this series.
      const data = [joined[0]];
      runs.forEach((_, i) => {
        const k = present.indexOf(i);
        data.push(k === -1 ? new Array(joined[0].length).fill(null) : joined[k + 1]);
      });
      return data;
    }

    function drawMarks(u, entry) {
      const ctx = u.ctx;
      const { left, top, width, height } = u.bbox;
      ctx.save();
      ctx.beginPath();
      ctx.rect(left, top, width, height);
      ctx.clip();
      if (state.x === "step") {
        runs.forEach((run, i) => {
          for (const m of run.marks) {
            const x = u.valToPos(m.step, "x", true);
            if (x < left || x > left + width) continue;
            ctx.strokeStyle = m.kind === "rewound" ? "#e03131" : "#495057";
            ctx.setLineDash([5, 4]);
            ctx.lineWidth = 1.5 * devicePixelRatio;
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
            ctx.setLineDash([]);
            ctx.fillStyle = ctx.strokeStyle;
            ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
            ctx.fillText(runs.length > 1 ? `${m.label} (${run.label})` : m.label, x + 4, top + 12 * devicePixelRatio * (1 + i));
          }
        });
      }
      const glyph = { nan: "✕", pinf: "▲", ninf: "▼" };
      ctx.font = `${12 * devicePixelRatio}px system-ui, sans-serif`;
      ctx.textAlign = "center";
      for (const m of entry.marks) {
        const x = u.valToPos(m.x, "x", true);
        if (x < left || x > left + width) continue;
        const y = m.kind === "pinf" ? top + 10 * devicePixelRatio : m.kind === "ninf" ? top + height - 4 * devicePixelRatio : top + height / 2;
        ctx.fillStyle = COLORS[m.run % COLORS.length];
        ctx.fillText(glyph[m.kind], x, y);
      }
      ctx.restore();
    }

    function build(name) {
      const entry = charts.get(name);
      const marks = [];
      const data = aligned(full.map((m) => m.get(name)), marks);
      entry.marks = marks;
      entry.zoomed = null;
      if (entry.uplot) {
        entry.uplot.destroy();
        entry.uplot = null;
      }
      entry.plot.textContent = "";
      if (!data) {
        entry.plot.textContent = "no points in this view";
        entry.section.dataset.drawn = "0";
        return;
      }
      const width = Math.max(320, entry.plot.clientWidth || 560);
      const opts = {
        width,
        height: 240,
        scales: { x: { time: state.x === "time" }, y: { distr: state.log ? 3 : 1 } },
        series: [
          { label: state.x === "time" ? "time" : "step", value: (u, v) => (v === null ? "" : state.x === "time" ? new Date(v * 1000).toISOString() : fmt(v)) },
          ...runs.map((run, i) => ({
            label: run.label,
            stroke: COLORS[i % COLORS.length],
            width: 1.5,
            points: { show: false },
            value: (u, v) => fmt(v),
          })),
        ],
        axes: [{ label: state.x === "time" ? "wall-clock time (UTC)" : "step" }, { label: name, size: 60 }],
        cursor: {
          drag: { x: true, y: false, setScale: false },
          bind: {
            dblclick: () => () => {
              reset(name);
              return null;
            },
          },
        },
        hooks: {
          draw: [(u) => drawMarks(u, entry)],
          setSelect: [(u) => zoomed(name, u)],
        },
      };
      entry.uplot = new uPlot(opts, data, entry.plot);
      entry.section.dataset.drawn = String(data.slice(1).filter((ys) => ys.some((y) => y !== null)).length);
      entry.section.dataset.log = String(state.log);
    }

    // A drag selected an x range: read that range again at full resolution (steps only).
    async function zoomed(name, u) {
      if (u.select.width < 2) return;
      const lo = u.posToVal(u.select.left, "x");
      const hi = u.posToVal(u.select.left + u.select.width, "x");
      const entry = charts.get(name);
      entry.zoomed = [lo, hi];
      entry.section.dataset.zoomed = "1";
      u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
      u.setScale("x", { min: lo, max: hi });
      if (state.x !== "step") return;
      const parts = await Promise.all(runs.map((run) => readRun(run, { name: [name], step_min: lo, step_max: hi })));
      if (entry.zoomed === null || entry.zoomed[0] !== lo) return; // reset or zoomed again since
      const marks = [];
      const data = aligned(parts.map((m) => m.get(name)), marks);
      if (!data) return;
      entry.marks = marks;
      u.setData(data, false);
      u.setScale("x", { min: lo, max: hi });
      entry.section.dataset.points = String(data[0].length);
    }

    function reset(name) {
      const entry = charts.get(name);
      delete entry.section.dataset.zoomed;
      build(name);
    }

    async function summaries() {
      const bodies = await Promise.all(runs.map((run) => fetchJSON("/api/summaries?" + query(run))));
      bodies.forEach((body, i) => {
        const found = new Map(body.series.map((s) => [s.name, s]));
        for (const [name, entry] of charts) {
          const s = found.get(name);
          const li = entry.section.querySelectorAll(".stats .stat")[i];
          if (!li) continue;
          li.textContent = s ? `${s.count} pts · last ${fmt(s.last)} @ ${fmt(s.last_step)} · min ${fmt(s.min)} · max ${fmt(s.max)}` : "no points";
        }
      });
    }

    async function load() {
      full = await Promise.all(runs.map((run) => readRun(run)));
      for (const name of charts.keys()) build(name);
      document.body.dataset.chartsDrawn = String(charts.size);
    }

    function rebuildAll() {
      for (const name of charts.keys()) build(name);
    }

    const smoothing = document.getElementById("smoothing");
    smoothing.addEventListener("input", () => {
      state.smoothing = Number(smoothing.value);
      document.getElementById("smoothing-value").textContent = smoothing.value;
      rebuildAll();
    });
    document.getElementById("log-scale").addEventListener("change", (e) => {
      state.log = e.target.checked;
      rebuildAll();
    });
    document.getElementById("x-axis").addEventListener("change", (e) => {
      state.x = e.target.value;
      rebuildAll();
    });
    document.getElementById("inherited").addEventListener("change", async (e) => {
      state.own = !e.target.checked;
      document.body.dataset.summaries = "loading";
      await Promise.all([load(), summaries()]);
      document.body.dataset.summaries = state.own ? "own" : "inherited";
    });
    document.getElementById("reset-zoom").addEventListener("click", () => {
      for (const name of charts.keys()) reset(name);
    });
    if (runs.some((r) => r.live)) {
      setInterval(async () => {
        if (document.hidden || [...charts.values()].some((c) => c.zoomed)) return;
        await Promise.all([load(), summaries()]);
      }, LIVE_EVERY_MS);
    }
    load().catch((err) => {
      document.body.dataset.chartsError = String(err);
    });
  }

  function start() {
    const table = document.getElementById("runs");
    if (table) runsTable(table);
    const config = document.getElementById("chart-config");
    if (config) chartsPage(JSON.parse(config.textContent));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
