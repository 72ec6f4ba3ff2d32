// Keeps a deployment page current without reloading: fetches its progress part every two
// seconds (same origin, the session cookie) until the deployment is finished.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  var finished = ["completed", "canceled", "aborted"];
  function done() {
    var status = live.querySelector("[data-testid=status]");
    return status && finished.indexOf(status.textContent.trim()) >= 0;
  }
  function refresh() {
    fetch(live.getAttribute("data-live"), { credentials: "same-origin" })
      .then(function (response) {
        if (response.redirected || !response.ok) { throw new Error(String(response.status)); }
        return response.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        if (!done()) { window.setTimeout(refresh, 2000); }
      })
      .catch(function () { window.setTimeout(refresh, 5000); });
  }
  if (!done()) { window.setTimeout(refresh, 2000); }
})();
