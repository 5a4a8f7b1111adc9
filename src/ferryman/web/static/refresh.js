// Live updates without reloading the page: every 5 s, while the tab is visible,
// fetch this page again and swap in the parts marked data-live-region (by id).
// On by default where the page says so (data-live-default on <main>); the
// choice is remembered per browser. No inline script: the page's
// Content-Security-Policy allows scripts from this server only.
(function () {
  const box = document.getElementById("auto-refresh");
  const main = document.querySelector("main");
  if (!box || !main) return;
  const stored = localStorage.getItem("ferryman-live");
  box.checked = stored === null ? main.hasAttribute("data-live-default") : stored === "on";
  const status = document.getElementById("live-status");
  let timer = null;
  let busy = false;

  // A region still waiting for its figures (data-live-pending: a count under
  // way) is fetched again after a second rather than the usual five.
  let soonTimer = null;
  function soon() {
    clearTimeout(soonTimer);
    soonTimer = null;
    if (box.checked && document.querySelector("[data-live-pending]")) {
      soonTimer = setTimeout(update, 1000);
    }
  }

  function say(text) {
    if (status) status.textContent = text;
  }

  async function update() {
    if (busy || document.visibilityState !== "visible" || !box.checked) return;
    busy = true;
    try {
      const response = await fetch(location.href, { headers: { "X-Ferryman-Live": "1" } });
      if (!response.ok) throw new Error(response.status + " " + response.statusText);
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const region of document.querySelectorAll("[data-live-region]")) {
        const replacement = fresh.getElementById(region.id);
        // Never pull a control from under the user's hands.
        if (replacement && !region.contains(document.activeElement)) {
          region.replaceWith(document.importNode(replacement, true));
        }
      }
      say("updated " + new Date().toLocaleTimeString());
    } catch (error) {
      say("update failed: " + error.message);
    } finally {
      busy = false;
      soon();
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = null;
    if (box.checked && document.querySelector("[data-live-region]")) {
      timer = setInterval(update, 5000);
      say("live");
    } else {
      say("");
    }
    soon();
  }

  box.addEventListener("change", () => {
    localStorage.setItem("ferryman-live", box.checked ? "on" : "off");
    schedule();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") update();
  });
  schedule();
})();
