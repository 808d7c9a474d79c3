// Dreambooth tab helpers. Elements are found by elem_id (dbt_*) or class, never by argument position.
//  - confirm before Cancel (#dbt_cancel, or any element with class "dbt-confirm" + data-confirm/title)
//  - hints: a title on the top buttons
//  - status refresh: keep the log scrolled to its newest line; show training progress in the page title
// Works in the WebUI (loaded from javascript/) and standalone (run by a load event of the tab).
(function () {
    "use strict";

    var HINTS = {
        dbt_save: "Save the parameters below into this model's db_config.json",
        dbt_load: "Load this model's saved parameters into the fields below",
        dbt_ckpt: "Write a single-file checkpoint into the Stable-diffusion folder (selectable in txt2img)",
        dbt_samples: "Generate preview images now (during training: at the next step)",
        dbt_cancel: "Stop training after the current step; the last checkpoint and a snapshot are kept",
        dbt_train: "Start training the selected model with the parameters below",
        dbt_wizard: "Fill in settings suited to your GPU memory and image count"
    };
    var CANCEL_TEXT = "Cancel training? It stops after the current step; progress so far is kept.";

    function root() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function find(id) {
        return root().querySelector("#" + id);
    }

    // Capture phase on document: runs before gradio's own click handler; composedPath crosses shadow roots.
    document.addEventListener("click", function (event) {
        var path = event.composedPath ? event.composedPath() : [event.target];
        for (var i = 0; i < path.length; i++) {
            var el = path[i];
            if (!el || !el.getAttribute) continue;
            var isCancel = el.id === "dbt_cancel";
            var isConfirm = el.classList && el.classList.contains("dbt-confirm");
            if (!isCancel && !isConfirm) continue;
            var text = el.getAttribute("data-confirm") || (isCancel ? CANCEL_TEXT : (el.title || "Are you sure?"));
            if (!window.confirm(text)) {
                event.stopImmediatePropagation();
                event.preventDefault();
            }
            return;
        }
    }, true);

    function addHints() {
        Object.keys(HINTS).forEach(function (id) {
            var el = find(id);
            var button = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
            var target = button || el;
            if (target && !target.title) target.title = HINTS[id];
        });
    }

    var baseTitle = null;
    var lastLog = "";

    function refreshStatus() {
        var log = find("dbt_log");
        var area = log && log.querySelector("textarea");
        if (area && area.value !== lastLog) {
            lastLog = area.value;
            area.scrollTop = 0;  // the log lists the newest line first
        }
        var status = find("dbt_status");
        var box = status && status.querySelector("textarea, input");
        var text = box ? box.value || "" : "";
        if (baseTitle === null) baseTitle = document.title;
        var line = text.split("\n")[0];
        document.title = /^(training|preparing|sampling|saving)\b/.test(line) ? "[" + line.slice(0, 60) + "] " + baseTitle : baseTitle;
    }

    function update() {
        addHints();
        refreshStatus();
    }

    if (typeof onUiUpdate === "function") {
        onUiUpdate(update);  // WebUI: called after every gradio update
    } else {
        var start = function () {
            new MutationObserver(update).observe(document.body, {childList: true, subtree: true});
            update();
        };
        if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
        else start();
    }
    setInterval(refreshStatus, 2000);  // textarea values change without DOM mutations
})();
