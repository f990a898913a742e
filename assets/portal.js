// keyport portal enhancements. Everything works without this file; it adds
// EID checking as you type and an upload progress bar. Loaded as an external
// script so the Content-Security-Policy can forbid inline script.
(function () {
  "use strict";

  // ISO 7064 MOD 97-10 as keyport's EID check (eid.go): 32 digits whose
  // value modulo 97 is 1. Spaces are ignored, as the server ignores them.
  function eidProblem(raw) {
    var s = raw.replace(/\s+/g, "");
    if (s === "") return "";
    if (!/^[0-9]*$/.test(s)) return "An EID holds digits only.";
    if (s.length !== 32) return "An EID has 32 digits; this has " + s.length + ".";
    var r = 0;
    for (var i = 0; i < s.length; i++) r = (r * 10 + (s.charCodeAt(i) - 48)) % 97;
    if (r !== 1) return "The check digits are wrong: please re-type the EID.";
    return "";
  }

  function wireEID(input) {
    var out = document.getElementById(input.getAttribute("aria-describedby").split(" ")[0]);
    function check() {
      var msg = eidProblem(input.value);
      input.setCustomValidity(msg);
      input.setAttribute("aria-invalid", msg ? "true" : "false");
      if (out) out.textContent = msg;
    }
    input.addEventListener("input", check);
    if (input.value) check();
  }

  function wireUpload(form) {
    var bar = form.querySelector("progress");
    var status = form.querySelector("[data-upload-status]");
    form.addEventListener("submit", function (ev) {
      if (!window.XMLHttpRequest || !window.FormData) return;
      ev.preventDefault();
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable && bar) { bar.max = e.total; bar.value = e.loaded; }
        if (status) status.textContent = e.lengthComputable ? Math.round(100 * e.loaded / e.total) + "% uploaded" : "uploading";
      });
      xhr.addEventListener("load", function () {
        if (status) status.textContent = "checking and storing…";
        document.open(); document.write(xhr.responseText); document.close();
        if (xhr.responseURL) history.replaceState(null, "", xhr.responseURL);
      });
      xhr.addEventListener("error", function () { if (status) status.textContent = "upload failed: check the connection and try again"; });
      if (bar) bar.hidden = false;
      xhr.send(new FormData(form));
    });
  }

  // Job page: follow the job over server-sent events; when it ends, load
  // the page again to show the final result.
  function wireJob(box) {
    if (!window.EventSource) return;
    var es = new EventSource(box.getAttribute("data-job-events"));
    var first = null;
    function set(id, text) { var el = document.getElementById(id); if (el) el.textContent = text; }
    es.addEventListener("job", function (ev) {
      var j = JSON.parse(ev.data);
      if (first === null) first = j.state + "|" + j.updated_at;
      var st = document.getElementById("job-state");
      if (st) { st.textContent = j.state; st.className = "state " + j.state; }
      set("job-attempts", String(j.attempts));
      set("job-updated", j.updated_at.replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC"));
      set("job-error", j.last_error || "none");
      var list = document.getElementById("job-transcript");
      if (list && j.result && j.result.responses) {
        list.textContent = "";
        j.result.responses.forEach(function (r) { var li = document.createElement("li"); li.textContent = r; list.appendChild(li); });
      }
    });
    es.addEventListener("end", function () {
      es.close();
      var st = document.getElementById("job-state");
      if (first !== null && st && first.split("|")[0] !== st.textContent) location.reload();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-job-events]"), wireJob);
    Array.prototype.forEach.call(document.querySelectorAll("input[data-eid]"), wireEID);
    Array.prototype.forEach.call(document.querySelectorAll("form[data-upload]"), wireUpload);
  });
})();
