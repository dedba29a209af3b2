// joblife dashboard: charts from the JSON the page carries (no inline script: the page's
// Content-Security-Policy allows only this file and the vendored libraries).
"use strict";

function drawCharts(root) {
  if (!window.Chart) return;
  root.querySelectorAll("canvas[data-chart]").forEach((canvas) => {
    const source = document.getElementById(canvas.dataset.chart);
    if (!source) return;
    const spec = JSON.parse(source.textContent);
    const old = window.Chart.getChart(canvas);
    if (old) old.destroy();
    new window.Chart(canvas, {
      type: spec.type || "line",
      data: { labels: spec.labels, datasets: spec.datasets },
      options: Object.assign(
        { responsive: true, maintainAspectRatio: false, animation: false,
          interaction: { mode: "index", intersect: false } },
        spec.options || {}
      ),
    });
  });
}

// "Select all" boxes tick every row box of their table.
function wireSelectAll(root) {
  root.querySelectorAll("input[data-select-all]").forEach((box) => {
    box.addEventListener("change", () => {
      const table = box.closest("table");
      table.querySelectorAll("input[name=job_id]").forEach((row) => { row.checked = box.checked; });
    });
  });
}

document.addEventListener("DOMContentLoaded", () => { drawCharts(document); wireSelectAll(document); });
document.addEventListener("htmx:afterSettle", (event) => { drawCharts(event.target); wireSelectAll(event.target); });
