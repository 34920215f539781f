// stepstream web view: draws each series chart on the page from /api/series.
// Pages are rendered by the service; this script only fetches points and builds SVG, setting
// every user-provided string through textContent or attributes, never as HTML.
"use strict";

(function () {
  const MAX_POINTS = 2000;
  const W = 720;
  const H = 220;
  const LEFT = 64;
  const RIGHT = 12;
  const TOP = 12;
  const BOTTOM = 28;
  const SVG = "http://www.w3.org/2000/svg";

  function svg(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // JSON carries NaN and the infinities as "NaN", "Infinity", "-Infinity"; Number() reads all.
  function num(v) {
    return typeof v === "number" ? v : Number(v);
  }

  function fmt(v) {
    if (Number.isNaN(v)) return "NaN";
    if (!Number.isFinite(v)) return v > 0 ? "Infinity" : "-Infinity";
    if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
    return Number(v.toPrecision(6)).toString();
  }

  function chart(series) {
    const steps = series.steps;
    const values = series.values.map(num);
    let x0 = steps[0];
    let x1 = steps[steps.length - 1];
    if (x1 === x0) {
      x0 -= 1;
      x1 += 1;
    }
    const finite = values.filter(Number.isFinite);
    let y0 = finite.length ? Math.min(...finite) : 0;
    let y1 = finite.length ? Math.max(...finite) : 1;
    if (y1 === y0) {
      y0 -= 1;
      y1 += 1;
    }
    const x = (s) => LEFT + ((s - x0) / (x1 - x0)) * (W - LEFT - RIGHT);
    const y = (v) => TOP + (1 - (v - y0) / (y1 - y0)) * (H - TOP - BOTTOM);
    const root = svg("svg", {
      viewBox: `0 0 ${W} ${H}`,
      class: "plot-svg",
      role: "img",
      "aria-label": `${series.name}: ${steps.length} points`,
    });
    root.append(svg("rect", { x: LEFT, y: TOP, width: W - LEFT - RIGHT, height: H - TOP - BOTTOM, class: "frame" }));
    root.append(svg("text", { x: LEFT - 6, y: TOP + 10, class: "axis end" }, fmt(y1)));
    root.append(svg("text", { x: LEFT - 6, y: H - BOTTOM, class: "axis end" }, fmt(y0)));
    root.append(svg("text", { x: LEFT, y: H - 8, class: "axis" }, "step " + fmt(steps[0])));
    root.append(svg("text", { x: W - RIGHT, y: H - 8, class: "axis end" }, fmt(steps[steps.length - 1])));

    // A line through each run of finite values; NaN and the infinities break it and get a mark.
    let run = [];
    const flush = () => {
      if (run.length === 1) {
        const [px, py] = run[0];
        root.append(svg("circle", { cx: px, cy: py, r: 2, class: "dot" }));
      } else if (run.length > 1) {
        root.append(svg("polyline", { points: run.map((p) => p.join(",")).join(" "), class: "line" }));
      }
      run = [];
    };
    let marks = 0;
    values.forEach((v, i) => {
      const px = x(steps[i]).toFixed(2);
      if (Number.isFinite(v)) {
        run.push([px, y(v).toFixed(2)]);
        return;
      }
      flush();
      marks += 1;
      const cls = Number.isNaN(v) ? "nan" : v > 0 ? "posinf" : "neginf";
      const py = Number.isNaN(v) ? (TOP + H - BOTTOM) / 2 : v > 0 ? TOP + 4 : H - BOTTOM - 4;
      const mark = svg("circle", { cx: px, cy: py, r: 3.5, class: "mark " + cls });
      mark.append(svg("title", {}, `step ${fmt(steps[i])}: ${fmt(v)}`));
      root.append(mark);
    });
    flush();
    const box = document.createElement("div");
    box.append(root);
    const legend = document.createElement("p");
    legend.className = "legend";
    legend.textContent =
      `${steps.length} points drawn` + (marks ? `, ${marks} NaN/Infinity marked` : "") +
      (steps.length >= MAX_POINTS * 0.8 ? " (downsampled, extremes kept)" : "");
    box.append(legend);
    return box;
  }

  function lines(series) {
    const pre = document.createElement("pre");
    pre.className = "log";
    pre.textContent = series.steps.map((s, i) => `${fmt(s)}\t${series.values[i]}`).join("\n");
    return pre;
  }

  async function load(section, query) {
    const plot = section.querySelector(".plot");
    const own = section.querySelector("input.inherited").checked ? "0" : "1";
    const params = new URLSearchParams(query);
    params.set("name", section.dataset.name);
    params.set("own", own);
    params.set("max_points", String(MAX_POINTS));
    plot.textContent = "loading…";
    let body;
    try {
      const resp = await fetch("/api/series?" + params.toString());
      body = await resp.json();
      if (!resp.ok) {
        plot.textContent = `${body.error.reason}: ${body.error.message}`;
        return;
      }
    } catch (err) {
      plot.textContent = "could not load the series: " + err;
      return;
    }
    const wantStrings = section.dataset.kind === "string";
    const series = body.series.find((s) => s.string_series === wantStrings);
    plot.replaceChildren();
    if (!series || series.steps.length === 0) {
      plot.textContent = own === "1" ? "no points of its own" : "no points";
      return;
    }
    plot.append(wantStrings ? lines(series) : chart(series));
  }

  function start() {
    const observer =
      "IntersectionObserver" in window
        ? new IntersectionObserver((entries) => {
            for (const entry of entries) {
              if (!entry.isIntersecting) continue;
              observer.unobserve(entry.target);
              entry.target.dispatchEvent(new Event("stepstream:load"));
            }
          })
        : null;
    document.querySelectorAll(".charts").forEach((container) => {
      const query = container.dataset.query || "";
      container.querySelectorAll("section.chart").forEach((section) => {
        const reload = () => load(section, query);
        section.querySelector("input.inherited").addEventListener("change", reload);
        if (observer) {
          section.addEventListener("stepstream:load", reload, { once: true });
          observer.observe(section);
        } else {
          reload();
        }
      });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
