// meterway UI helpers: send the browser's UTC offset, and follow new rows on the Logs page.
(function () {
  "use strict";

  // The Analytics page buckets days in the viewer's time zone, so it needs the offset in
  // minutes east of UTC. Reload once with it when the URL does not carry it yet.
  function sendTimezone() {
    var field = document.querySelector("[data-mw-tz]");
    if (!field) return;
    var offset = String(-new Date().getTimezoneOffset());
    field.value = offset;
    var url = new URL(window.location.href);
    if (url.searchParams.get("tz") !== offset) {
      url.searchParams.set("tz", offset);
      window.location.replace(url.toString());
    }
  }

  // A checkbox above the Logs table that reloads the page every few seconds while checked.
  function followToggle() {
    var table = document.querySelector("body.table-requests table.rows-and-columns");
    if (!table) return;
    var key = "meterway-follow";
    var label = document.createElement("label");
    label.className = "mw-follow";
    var box = document.createElement("input");
    box.type = "checkbox";
    box.checked = window.localStorage.getItem(key) === "on";
    label.appendChild(box);
    label.appendChild(document.createTextNode(" Follow new requests (refresh every 5 s)"));
    var wrapper = table.closest(".table-wrapper") || table;
    wrapper.parentNode.insertBefore(label, wrapper);
    var timer = null;
    function apply() {
      window.localStorage.setItem(key, box.checked ? "on" : "off");
      if (timer) window.clearTimeout(timer);
      timer = box.checked ? window.setTimeout(function () { window.location.reload(); }, 5000) : null;
    }
    box.addEventListener("change", apply);
    apply();
  }

  document.addEventListener("DOMContentLoaded", function () {
    sendTimezone();
    followToggle();
  });
})();
