// The job page follows its job while it runs: statuses from /jobs/ID/status.json, and
// each step's log from the byte offset it has shown so far, appending only what is new.
// A fetch asks for at most what the server gives (256 KiB), so a log of tens of MB
// arrives in bounded pieces and the page never re-renders what it already shows.
"use strict";
(function () {
  const root = document.getElementById("job");
  if (!root) return;
  const jobId = root.dataset.jobId;
  const POLL_MS = 1000;
  const logs = new Map(); // position -> {element, offset, decoder, busy}

  for (const section of root.querySelectorAll(".step")) {
    const element = section.querySelector("[role=log]");
    logs.set(Number(section.dataset.position), {
      section, element, offset: 0, decoder: new TextDecoder("utf-8"), busy: false,
      known: Number(element.dataset.logLength || "0"),
    });
  }

  function setStatus(container, status) {
    const span = container.querySelector(".status");
    if (!span || span.textContent === status) return;
    span.textContent = status;
    span.className = "status status-" + status;
  }

  function text(id, value) {
    const element = document.getElementById(id);
    if (element && element.textContent !== value) element.textContent = value;
  }

  async function followLog(log) {
    if (log.busy) return;
    log.busy = true;
    try {
      while (log.offset < log.known) {
        const response = await fetch(
          "/jobs/" + encodeURIComponent(jobId) + "/steps/" + log.section.dataset.position +
            "/log?offset=" + log.offset,
          { credentials: "same-origin", cache: "no-store" });
        if (!response.ok) return;
        const bytes = new Uint8Array(await response.arrayBuffer());
        log.known = Math.max(log.known, Number(response.headers.get("X-Log-Length") || "0"));
        if (bytes.length === 0) return;
        log.offset += bytes.length;
        const element = log.element;
        const atBottom = element.scrollHeight - element.scrollTop - element.clientHeight < 24;
        // stream: a UTF-8 character split between two pieces is decoded whole.
        element.appendChild(document.createTextNode(log.decoder.decode(bytes, { stream: true })));
        if (atBottom) element.scrollTop = element.scrollHeight;
      }
    } catch (error) {
      // A failed fetch is retried at the next poll.
    } finally {
      log.busy = false;
    }
  }

  async function poll() {
    let final = root.dataset.final === "true";
    try {
      const response = await fetch("/jobs/" + encodeURIComponent(jobId) + "/status.json",
        { credentials: "same-origin", cache: "no-store" });
      if (response.ok) {
        const job = await response.json();
        setStatus(document.getElementById("job-status"), job.status);
        text("job-duration", job.duration || "–");
        text("job-reason", job.reason || "–");
        text("job-cancel-requested", job.cancel_requested ? "yes" : "no");
        for (const step of job.steps) {
          const log = logs.get(step.position);
          if (!log) continue;
          setStatus(log.section.querySelector(".step-status"), step.status);
          const exit = step.exit_code === null ? "–" : String(step.exit_code);
          const exitElement = log.section.querySelector(".step-exit");
          if (exitElement.textContent !== exit) exitElement.textContent = exit;
          const durationElement = log.section.querySelector(".step-duration");
          const duration = step.duration || "–";
          if (durationElement.textContent !== duration) durationElement.textContent = duration;
          log.known = Math.max(log.known, step.log_length);
        }
        final = job.final;
        if (final) {
          root.dataset.final = "true";
          const cancel = document.getElementById("cancel-form");
          if (cancel) cancel.remove();
        }
      }
    } catch (error) {
      // The next poll tries again.
    }
    await Promise.all(Array.from(logs.values(), followLog));
    const caughtUp = Array.from(logs.values()).every((log) => log.offset >= log.known);
    if (!(final && caughtUp)) setTimeout(poll, POLL_MS);
  }

  poll();
})();
