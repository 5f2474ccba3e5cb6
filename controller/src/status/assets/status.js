// The rpar status page: polls api/status (with the page's token) once a second and draws the
// figures, the per-job table, two small SVG charts and the recent failures. Plain JavaScript,
// no build step; compiled into rpar-controller with include_str!.
(function () {
  "use strict";
  var token = new URLSearchParams(window.location.search).get("token") || "";
  var SVG = "http://www.w3.org/2000/svg";

  function $(id) { return document.getElementById(id); }
  function set(id, v) { $(id).textContent = String(v); }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = String(text);
    if (cls) { td.className = cls; }
    tr.appendChild(td);
  }
  // "0-3,7" for [0,1,2,3,7]; long lists are cut.
  function ranges(ids) {
    var out = [], i = 0;
    while (i < ids.length) {
      var j = i;
      while (j + 1 < ids.length && ids[j + 1] === ids[j] + 1) { j++; }
      out.push(i === j ? String(ids[i]) : ids[i] + "-" + ids[j]);
      i = j + 1;
    }
    var s = out.join(",");
    return s.length > 60 ? s.slice(0, 57) + "..." : s;
  }
  function fmtTime(t) {
    var d = new Date(t * 1000);
    return d.toISOString().slice(11, 19);
  }
  function duration(s) {
    s = Math.floor(s);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + (s % 60) + "s";
  }

  // A line chart of `values` into the SVG element `id`, with the maximum written top left.
  function chart(id, values, colour) {
    var svg = $(id), w = svg.clientWidth || 420, h = svg.clientHeight || 110;
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var max = 0;
    values.forEach(function (v) { if (v > max) { max = v; } });
    var top = max > 0 ? max : 1;
    var axis = document.createElementNS(SVG, "line");
    axis.setAttribute("x1", 0); axis.setAttribute("x2", w);
    axis.setAttribute("y1", h - 1); axis.setAttribute("y2", h - 1);
    axis.setAttribute("stroke", "#bbb");
    svg.appendChild(axis);
    if (values.length > 1) {
      var pts = values.map(function (v, i) {
        var x = (i / (values.length - 1)) * (w - 2) + 1;
        var y = h - 2 - (v / top) * (h - 18);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      var line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", pts.join(" "));
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", colour);
      line.setAttribute("stroke-width", "1.5");
      svg.appendChild(line);
    }
    var label = document.createElementNS(SVG, "text");
    label.setAttribute("x", 4); label.setAttribute("y", 12);
    label.setAttribute("font-size", "11"); label.setAttribute("fill", "#666");
    label.textContent = "max " + (Math.round(max * 10) / 10);
    svg.appendChild(label);
  }

  function render(s) {
    var c = s.controller || {};
    set("controller", "controller " + (c.address || "?") + " · pid " + c.pid + " on " + c.host +
        " · up " + duration(c.uptime_seconds || 0) + " · scheme " + c.scheme +
        " · task DB " + (s.db || {}).backend + " · clients " + s.clients);
    var e = s.engines, t = s.tasks;
    set("engines-total", e.registered);
    set("engines-busy", e.busy);
    set("engines-idle", e.idle);
    set("engines-dead", e.dead);
    set("tasks-submitted", t.submitted);
    set("tasks-queued", t.queued);
    set("tasks-running", t.running);
    set("tasks-completed", t.completed);
    set("tasks-failed", t.failed);
    set("task-rate", (Math.round((s.rates.finished_per_second || 0) * 10) / 10));

    var hist = s.history || [];
    chart("chart-queue", hist.map(function (p) { return p.queued + p.running; }), "#3367d6");
    var rate = [];
    for (var i = 1; i < hist.length; i++) {
      var dt = hist[i].t - hist[i - 1].t;
      rate.push(dt > 0 ? Math.max(0, hist[i].finished - hist[i - 1].finished) / dt : 0);
    }
    chart("chart-rate", rate, "#2b7a2b");

    var body = $("jobs").tBodies[0];
    while (body.firstChild) { body.removeChild(body.firstChild); }
    (s.jobs || []).forEach(function (j) {
      var tr = document.createElement("tr");
      tr.className = "job";
      tr.setAttribute("data-job", j.job);
      cell(tr, j.job, "l");
      cell(tr, j.kind || "", "l");
      cell(tr, j.registered);
      cell(tr, j.busy, "busy");
      cell(tr, j.idle, "idle");
      cell(tr, j.dead, "dead");
      cell(tr, j.queue);
      cell(tr, j.completed);
      cell(tr, ranges(j.ids) + (j.dead_ids.length ? " (dead " + ranges(j.dead_ids) + ")" : ""), "l");
      body.appendChild(tr);
    });

    var fb = $("failures").tBodies[0];
    while (fb.firstChild) { fb.removeChild(fb.firstChild); }
    (s.failures || []).slice().reverse().forEach(function (f) {
      var tr = document.createElement("tr");
      tr.className = "failure";
      cell(tr, fmtTime(f.t), "l");
      cell(tr, f.engine_id === null || f.engine_id === undefined ? "" : f.engine_id);
      cell(tr, f.ename, "l dead");
      cell(tr, f.evalue, "l");
      cell(tr, f.msg_id, "l");
      fb.appendChild(tr);
    });
    set("error", "");
    document.body.setAttribute("data-loaded", "1");
  }

  function poll() {
    fetch("api/status?engines=0", { headers: { "Authorization": "token " + token }, cache: "no-store" })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status + " from the controller"); }
        return r.json();
      })
      .then(render)
      .catch(function (err) { set("error", String(err)); })
      .then(function () { window.setTimeout(poll, 1000); });
  }
  poll();
})();
