// deepfix dataset form: crop and degradation toggles, and the live preview of one image.
// Plain DOM code, no framework; the page works without it (only the preview needs it).
(function () {
  "use strict";

  function cropToggle(form) {
    const custom = form.querySelector("[data-crop-custom]");
    if (!custom) return;
    const radios = form.querySelectorAll('input[name="crop.mode"]');
    const update = () => {
      const checked = form.querySelector('input[name="crop.mode"]:checked');
      custom.hidden = !checked || checked.value !== "custom";
    };
    radios.forEach((r) => r.addEventListener("change", update));
    update();
  }

  function degradationToggles(form) {
    form.querySelectorAll("fieldset[data-degradation]").forEach((fs) => {
      const box = fs.querySelector('legend input[type="checkbox"]');
      if (!box) return;
      const update = () => fs.classList.toggle("off", !box.checked);
      box.addEventListener("change", update);
      update();
    });
  }

  function describe(applied) {
    const params = Object.entries(applied.params || {})
      .map(([k, v]) => `${k}=${typeof v === "number" ? +v.toFixed(3) : v}`)
      .join(", ");
    return `${applied.type.replace(/_/g, " ")}${params ? " (" + params + ")" : ""}`;
  }

  function preview(form) {
    const input = document.getElementById("preview-file");
    const refresh = document.getElementById("preview-refresh");
    const status = document.getElementById("preview-status");
    const result = document.getElementById("preview-result");
    const list = document.getElementById("preview-applied");
    const meta = document.querySelector('meta[name="csrf-token"]');
    const url = form.dataset.previewUrl;
    if (!input || !url || !meta) return;

    const show = (text, isError) => {
      status.textContent = text;
      status.classList.toggle("error", !!isError);
    };

    async function run() {
      const file = input.files && input.files[0];
      if (!file) return;
      const body = new FormData(form);
      body.append("image", file);
      show("Running the pipeline…", false);
      result.dataset.state = "loading";
      let resp;
      let data = {};
      try {
        resp = await fetch(url, {
          method: "POST",
          body: body,
          headers: { "X-CSRF-Token": meta.content },
          credentials: "same-origin",
        });
        data = await resp.json().catch(() => ({}));
      } catch (err) {
        show("Preview failed: " + err, true);
        result.dataset.state = "error";
        return;
      }
      if (!resp.ok) {
        show("Preview failed: " + (data.detail || resp.status + " " + resp.statusText), true);
        result.dataset.state = "error";
        return;
      }
      document.getElementById("preview-face").src = data.face;
      document.getElementById("preview-degraded").src = data.degraded;
      document.getElementById("preview-enhanced").src = data.enhanced;
      list.replaceChildren(
        ...(data.applied || []).map((a) => {
          const li = document.createElement("li");
          li.textContent = describe(a);
          return li;
        })
      );
      const faces = { faces: "face found", whole: "no face: centre crop", skipped: "no face found", disabled: "detection off: centre crop" };
      const info = data.enhance || {};
      const model = info.name ? info.name + (info.version ? " v" + info.version : "") : info.model;
      show(
        [faces[data.policy] || data.policy, model && "enhanced by " + model, data.note]
          .filter(Boolean)
          .join(" · "),
        false
      );
      result.hidden = false;
      result.dataset.state = "done";
      refresh.hidden = false;
    }

    input.addEventListener("change", run);
    refresh.addEventListener("click", run);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("spec-form");
    if (!form) return;
    cropToggle(form);
    degradationToggles(form);
    preview(form);
  });
})();
