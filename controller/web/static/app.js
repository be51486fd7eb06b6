// Live updates: listen to the event stream (GET /api/v1/events, by the session cookie) and
// ask htmx to reload each live part of the page whose event kinds (data-live) just changed.
// Bursts are coalesced: one reload at most every REFRESH_MS per part, and always one after
// the last event, so the page ends up showing the final state.
(function () {
  "use strict";
  var REFRESH_MS = 400;
  var parts = Array.prototype.slice.call(document.querySelectorAll("[data-live]"));
  var status = document.getElementById("live-status");
  if (!parts.length || !window.EventSource) { return; }
  var pending = parts.map(function () { return null; });

  function changed(kind) {
    parts.forEach(function (el, i) {
      if ((" " + el.getAttribute("data-live") + " ").indexOf(" " + kind + " ") < 0) { return; }
      if (pending[i]) { return; }
      pending[i] = setTimeout(function () {
        pending[i] = null;
        htmx.trigger(el, "refresh");
      }, REFRESH_MS);
    });
  }

  var source = new EventSource("/api/v1/events");
  ["job", "machine", "plan", "endpoint", "host"].forEach(function (kind) {
    source.addEventListener(kind, function () { changed(kind); });
  });
  source.onopen = function () {
    if (status) { status.textContent = "live"; status.className = "live on"; }
  };
  // leaving the page ends its stream at once (browsers allow few connections per host)
  window.addEventListener("pagehide", function () { source.close(); });
  source.onerror = function () {
    if (status) { status.textContent = "reconnecting"; status.className = "live off"; }
  };
})();

// A running job's output as it comes (its page's #live-output): long-polls the job's live
// output (by the session cookie) from the last piece shown, until the job has ended. The
// element is looked up each time: the page's live part is swapped when the job changes.
(function () {
  "use strict";
  var first = document.getElementById("live-output");
  if (!first || !window.fetch) { return; }
  var job = first.getAttribute("data-job"), after = 0, text = "", KEEP = 65536;
  function show() {
    var pre = document.getElementById("live-output");
    if (pre) { pre.textContent = text; }
  }
  function poll() {
    fetch("/api/v1/jobs/" + job + "/live?wait=10&after=" + after, {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (out) {
        if (!out) { return; }
        out.pieces.forEach(function (p) { text += p.text; });
        if (text.length > KEEP) { text = text.slice(-KEEP); }
        after = out.next;
        show();
        if (out.pieces.length || ["done", "failed", "killed"].indexOf(out.state) < 0) {
          setTimeout(poll, out.pieces.length ? 0 : 1000);
        }
      }, function () { setTimeout(poll, 2000); });
  }
  document.body.addEventListener("htmx:afterSwap", show);
  poll();
})();
