// keyport portal enhancements. Everything but passkeys works without this
// file; it adds EID checking as you type, an upload progress bar, copy
// buttons and the
// WebAuthn calls of passkey enrolment and sign-in. Loaded as an external
// script so the Content-Security-Policy can forbid inline script.
(function () {
  "use strict";

  // ISO 7064 MOD 97-10 as keyport's EID check (eid.go): 32 digits whose
  // value modulo 97 is 1. Spaces are ignored, as the server ignores them,
  // and the messages are the server's, word for word.
  function eidProblem(raw) {
    var s = raw.trim().replace(/ /g, "");
    if (s === "") return "";
    if (s.length !== 32) return "An EID has 32 digits; this has " + s.length + ".";
    var bad = s.search(/[^0-9]/);
    if (bad >= 0) return "An EID holds digits only; character " + (bad + 1) + " is '" + s.charAt(bad) + "'.";
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

  // Copy buttons next to commands: select the command (so that Ctrl+C
  // works without the clipboard API) and copy it where the browser lets us.
  function wireCopy(btn) {
    btn.addEventListener("click", function () {
      var el = document.getElementById(btn.getAttribute("data-copy"));
      if (!el) return;
      var status = btn.parentNode.querySelector(".copy-status");
      function say(msg) { if (status) status.textContent = msg; }
      var range = document.createRange();
      range.selectNodeContents(el);
      var sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      var text = el.textContent.replace(/\s+/g, " ").trim();
      var manual = "Selected: press Ctrl+C (\u2318C on a Mac) to copy.";
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(text).then(function () { say("Copied."); }, function () { say(manual); });
      } else {
        say(manual);
      }
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

  // Passkeys (WebAuthn). The server's options are JSON with base64url for
  // binary values; the browser's answer goes back the same way, in the
  // form's hidden "credential" field, and the form is then submitted.
  function fromB64u(s) {
    var b = atob(s.replace(/-/g, "+").replace(/_/g, "/"));
    var out = new Uint8Array(b.length);
    for (var i = 0; i < b.length; i++) out[i] = b.charCodeAt(i);
    return out.buffer;
  }
  function toB64u(buf) {
    if (!buf) return "";
    var bytes = new Uint8Array(buf), s = "";
    for (var i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function credentialIDs(list) {
    (list || []).forEach(function (c) { c.id = fromB64u(c.id); });
  }
  function encodeCredential(cred) {
    var r = cred.response;
    var out = {
      id: cred.id, rawId: toB64u(cred.rawId), type: cred.type,
      authenticatorAttachment: cred.authenticatorAttachment || undefined,
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
      response: { clientDataJSON: toB64u(r.clientDataJSON) }
    };
    if (r.attestationObject) {
      out.response.attestationObject = toB64u(r.attestationObject);
      out.response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      out.response.authenticatorData = toB64u(r.authenticatorData);
      out.response.signature = toB64u(r.signature);
      if (r.userHandle) out.response.userHandle = toB64u(r.userHandle);
    }
    return out;
  }
  function wirePasskey(form, create) {
    var status = form.querySelector("#passkey-status");
    function say(msg) { if (status) status.textContent = msg; }
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (!window.PublicKeyCredential || !navigator.credentials) {
        say("This browser cannot use passkeys.");
        return;
      }
      var opts = JSON.parse(form.getAttribute(create ? "data-passkey-create" : "data-passkey-get")).publicKey;
      opts.challenge = fromB64u(opts.challenge);
      if (create) {
        opts.user.id = fromB64u(opts.user.id);
        credentialIDs(opts.excludeCredentials);
      } else {
        credentialIDs(opts.allowCredentials);
      }
      say("Waiting for your passkey…");
      var ask = create ? navigator.credentials.create({ publicKey: opts }) : navigator.credentials.get({ publicKey: opts });
      ask.then(function (cred) {
        form.elements.credential.value = JSON.stringify(encodeCredential(cred));
        say("Checking…");
        form.submit();
      }, function (err) {
        say((create ? "No passkey was created" : "No passkey of this account answered") + " (" + err.name + "). Try again, or use another device.");
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("form[data-passkey-create]"), function (f) { wirePasskey(f, true); });
    Array.prototype.forEach.call(document.querySelectorAll("form[data-passkey-get]"), function (f) { wirePasskey(f, false); });
    Array.prototype.forEach.call(document.querySelectorAll("[data-job-events]"), wireJob);
    Array.prototype.forEach.call(document.querySelectorAll("input[data-eid]"), wireEID);
    Array.prototype.forEach.call(document.querySelectorAll("form[data-upload]"), wireUpload);
    Array.prototype.forEach.call(document.querySelectorAll("button[data-copy]"), wireCopy);
  });
})();
