// The operations page's three charts, drawn by uPlot (vendored in static/vendor/uplot/,
// loaded as a classic script that defines window.uPlot). Each chart is built once and
// then only given new columns; the page's width decides its size.
const uPlot = window.uPlot;

export const PALETTE = ["#2456c8", "#d9730d", "#2e8b57", "#8e44ad", "#0f7c8c", "#a0522d"];
const LIMIT = "#c0392b";
const CAPACITY = "#7a8394";
// Answers by who gave them: the keys of series.answers in /ops/data.
const ANSWERS = [
  ["primary", "主模型 primary", "#1f8a4c"],
  ["fallback:primary_down", "备用 fallback: primary down", "#c0392b"],
  ["fallback:overloaded", "备用 fallback: overloaded", "#d9730d"],
  ["fallback:primary_timeout", "备用 fallback: timeout", "#8e44ad"],
  ["fallback:primary_error", "备用 fallback: error", "#b8860b"],
];
const SHED = ["拒绝 shed (503)", "#3b3f47"];

const fixed = (digits) => (u, v) => (v == null ? "—" : v.toFixed(digits));
// Axis numbers: whole from 10 up, one decimal below (0.5 answers/s is worth seeing).
const tick = (v) => (Math.abs(v) >= 10 || Number.isInteger(v) ? v.toFixed(0) : v.toFixed(1));
// Requests and MB are counted in whole units: ticks never fall between them.
const WHOLE = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000];
// 24-hour local time; uPlot's default ("11/29/26 6:11pm") does not fit a phone's axis.
const hms = (t) => new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false });
// A y scale from 0 to a little above the highest of the data and `floor()`.
const fromZero = (floor) => (u, min, max) => [0, Math.max(max || 0, floor(), 1) * 1.1];

function line(label, stroke, extra = {}) {
  return { label, stroke, width: 2, spanGaps: false, points: { show: false }, ...extra };
}

function size(node) {
  const narrow = window.innerWidth < 700;
  return { width: Math.max(200, node.clientWidth), height: narrow ? 180 : 220 };
}

function options(node, series, yRange, whole, hooks = {}) {
  const y = { size: 48, values: (u, ticks) => ticks.map(tick) };
  if (whole) y.incrs = WHOLE;
  return {
    ...size(node),
    series: [{ label: "时间 time", value: (u, v) => (v == null ? "—" : hms(v)) }, ...series],
    scales: { x: { time: true }, y: { range: yRange } },
    axes: [{ space: 70, values: (u, ticks) => ticks.map(hms) }, y],
    legend: { live: true },
    cursor: { drag: { x: false, y: false } },
    hooks,
  };
}

function memoryChart(node, data, names) {
  const series = [];
  names.forEach((name, i) => {
    const stroke = PALETTE[i % PALETTE.length];
    series.push(line(`${name} USS`, stroke, { value: fixed(0) }));
    series.push(line(`${name} RSS`, stroke, { dash: [5, 4], width: 1.5, value: fixed(0) }));
  });
  series.push(line("限制 limit", LIMIT, { dash: [8, 4], width: 1.5, value: fixed(0) }));
  const columns = (d) => {
    const out = [d.series.t];
    for (const name of names) {
      out.push(d.series.workers[name].uss_mb, d.series.workers[name].rss_mb);
    }
    out.push(d.series.t.map(() => d.memory_limit_mb));
    return out;
  };
  const state = { limit: data.memory_limit_mb };
  const chart = new uPlot(
    options(node, series, fromZero(() => state.limit || 0), true), columns(data), node);
  return { chart, columns, update: (d) => { state.limit = d.memory_limit_mb; } };
}

function answersChart(node, data) {
  const series = ANSWERS.map(([, label, stroke]) => line(label, stroke, { value: fixed(1) }));
  series.push(line(SHED[0], SHED[1], { dash: [3, 3], value: fixed(1) }));
  const columns = (d) => [
    d.series.t, ...ANSWERS.map(([key]) => d.series.answers[key] || []), d.series.shed,
  ];
  const chart = new uPlot(options(node, series, fromZero(() => 1), false), columns(data), node);
  return { chart, columns, update: () => {} };
}

// Shade, in each worker's colour, the time it was not ready or its breaker was open.
function outageShading(state) {
  return (u) => {
    const { ctx } = u;
    const { top, height } = u.bbox;
    const t = state.data.series.t;
    state.names.forEach((name, i) => {
      const w = state.data.series.workers[name];
      ctx.fillStyle = `${PALETTE[i % PALETTE.length]}22`;
      let from = null;
      for (let k = 0; k <= t.length; k++) {
        const down = k < t.length && (w.ready[k] === 0 || w.breaker_open[k] === 1);
        if (down && from === null) from = k;
        if (!down && from !== null) {
          const x0 = u.valToPos(t[from], "x", true);
          const x1 = u.valToPos(t[Math.min(k, t.length - 1)], "x", true);
          ctx.fillRect(x0, top, Math.max(x1 - x0, 2), height);
          from = null;
        }
      }
    });
  };
}

function flightChart(node, data, names) {
  const state = { data, names };
  const series = names.map((name, i) =>
    line(name, PALETTE[i % PALETTE.length], { value: fixed(0) }));
  series.push(line("容量 capacity", CAPACITY, { dash: [8, 4], width: 1.5, value: fixed(0) }));
  const columns = (d) => [
    d.series.t,
    ...names.map((name) => d.series.workers[name].in_flight),
    d.series.t.map(() => d.capacity_per_worker),
  ];
  const chart = new uPlot(
    options(node, series, fromZero(() => state.data.capacity_per_worker || 1), true,
      { drawClear: [outageShading(state)] }),
    columns(data), node);
  return { chart, columns, update: (d) => { state.data = d; } };
}

export class Charts {
  constructor(nodes) {
    this.nodes = nodes; // {memory, answers, flight}
    this.parts = null;
    this.shape = "";
    // A card's width changes with the window and with the grid's columns; follow it.
    this.widths = new Map();
    this.observer = new ResizeObserver((entries) => {
      for (const entry of entries) {
        const width = Math.round(entry.contentRect.width);
        if (this.widths.get(entry.target) !== width) {
          this.widths.set(entry.target, width);
          this.resize();
        }
      }
    });
    for (const node of Object.values(nodes)) this.observer.observe(node);
  }

  // Draw /ops/data; rebuilt only when the set of workers changes.
  show(data) {
    const names = Object.keys(data.series.workers);
    const shape = names.join(",");
    if (this.parts === null || shape !== this.shape) {
      this.destroy();
      this.shape = shape;
      this.parts = [
        memoryChart(this.nodes.memory, data, names),
        answersChart(this.nodes.answers, data),
        flightChart(this.nodes.flight, data, names),
      ];
      return;
    }
    for (const part of this.parts) {
      part.update(data);
      part.chart.setData(part.columns(data));
    }
  }

  resize() {
    if (this.parts === null) return;
    for (const part of this.parts) part.chart.setSize(size(part.chart.root.parentNode));
  }

  destroy() {
    for (const part of this.parts || []) part.chart.destroy();
    this.parts = null;
  }
}
