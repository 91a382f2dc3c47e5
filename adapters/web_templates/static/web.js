// The run page, live: server-sent events from /runs/<id>/events insert steps and update the
// status; the page resumes from the last stream id it saw (EventSource sends Last-Event-ID).
"use strict";
(function () {
  const page = document.getElementById("run");
  if (!page) return;
  const runId = page.dataset.run;
  const token = page.dataset.token;
  const q = (params) => new URLSearchParams({ t: token, ...params }).toString();
  let elapsed = parseFloat(page.dataset.elapsed || "0");
  let state = document.getElementById("state").textContent.trim();
  let clock = null;

  function showElapsed() {
    const s = Math.floor(elapsed), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const mm = h ? String(m).padStart(2, "0") : String(m);
    document.getElementById("elapsed").textContent = (h ? h + ":" : "") + mm + ":" + String(r).padStart(2, "0");
  }
  function tick() {
    if (state === "running") { elapsed += 1; showElapsed(); }
  }

  function insert(entry) {
    if (!entry.html || document.querySelector('[data-seq="' + entry.seq + '"]')) return;
    const holder = document.createElement("template");
    holder.innerHTML = entry.html;  // server-rendered and escaped (adapters/web_templates/entries.html)
    const target = document.getElementById(entry.kind === "tool" ? "steps" : "words");
    target.appendChild(holder.content);
    document.getElementById("no-steps").hidden = document.getElementById("steps").children.length > 0;
  }

  function status(s) {
    state = s.state;
    const el = document.getElementById("state");
    el.textContent = s.state;
    el.className = "state " + s.state;
    elapsed = s.elapsed_s;
    showElapsed();
    if (s.tokens_in || s.tokens_out) {
      document.getElementById("tokens").textContent =
        s.tokens_in.toLocaleString("en") + " in / " + s.tokens_out.toLocaleString("en") + " out";
      document.getElementById("cost").textContent = "$" + s.cost.toFixed(4);
    }
    document.getElementById("note").textContent = s.note || "";
    page.dataset.state = s.state;
    if (s.final) finished();
  }

  function finished() {
    if (source) source.close();
    clearInterval(clock);
    const cancel = document.getElementById("cancel");
    if (cancel) cancel.remove();
    page.dataset.final = "true";
    fetch("/runs/" + runId + "/tail?" + q({}), { credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : ""))
      .then((html) => { if (html) document.getElementById("tail").innerHTML = html; page.dataset.tail = "loaded"; });
  }

  let source = null;
  if (page.dataset.final !== "true") {
    source = new EventSource("/runs/" + runId + "/events?" + q({ after: page.dataset.after }));
    source.addEventListener("step", (e) => insert(JSON.parse(e.data)));
    source.addEventListener("status", (e) => status(JSON.parse(e.data)));
    source.addEventListener("open", () => { page.dataset.live = "open"; });
    clock = setInterval(tick, 1000);
  }
  const cancelForm = document.getElementById("cancel");
  if (cancelForm) {
    cancelForm.addEventListener("submit", (e) => {
      if (!window.confirm("Cancel this run? The agent stops now.")) e.preventDefault();
    });
  }
})();
