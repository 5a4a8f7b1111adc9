// Reload the page every 5 seconds while the box is ticked (remembered per browser).
(function () {
  const box = document.getElementById("auto-refresh");
  if (!box) return;
  box.checked = localStorage.getItem("ferryman-refresh") === "on";
  let timer = null;
  function schedule() {
    clearTimeout(timer);
    if (box.checked) timer = setTimeout(() => location.reload(), 5000);
  }
  box.addEventListener("change", () => {
    localStorage.setItem("ferryman-refresh", box.checked ? "on" : "off");
    schedule();
  });
  schedule();
})();
