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
