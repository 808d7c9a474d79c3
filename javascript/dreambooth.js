// Dreambooth tab helpers. Elements are found by elem_id (dbt_*) or class, never by argument position.
//  - confirm before Cancel while a job runs (#dbt_cancel, or any element with class "dbt-confirm")
//  - hints: a title on the top buttons
//  - status refresh: keep the log scrolled to its newest line; show training progress in the page title
//  - unsaved edits: fields typed in since the last Load/Save/Train/Create are marked, and so are the
//    fields the Performance Wizard changed; the field an error names is highlighted
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
    // the status line's first word(s) while a job runs (see handlers.status_text)
    var RUNNING = /^(waiting|preparing|generating class images|training|sampling|saving|paused)\b|^\w+ running\b/;
    // messages after which the fields hold what the model has saved
    var IN_SYNC = /^(params of '.*' (saved|loaded)|model '.*' created|training '.*' started)/;

    function root() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function find(id) {
        return root().querySelector("#" + id);
    }

    function valueOf(id) {
        var el = find(id);
        var box = el && el.querySelector("textarea, input");
        return box ? box.value || "" : "";
    }

    function jobRunning() {
        return RUNNING.test(valueOf("dbt_status").split("\n")[0]);
    }

    // unsaved edits ------------------------------------------------------------------------------
    function fieldLabel(block) {
        var label = block.querySelector("label span, .label-wrap span, span[data-testid='block-info']");
        return (label && label.textContent.trim()) || block.id.replace("dbt_", "");
    }

    function showUnsaved() {
        var rule = find("dbt_rule");
        if (!rule) return;
        var note = rule.querySelector(".dbt-unsaved");
        if (!note) {
            note = document.createElement("div");
            note.className = "dbt-unsaved";
            note.id = "dbt_unsaved";
            rule.appendChild(note);
        }
        var edited = root().querySelectorAll(".dbt-edited");
        var names = [];
        edited.forEach(function (block) { names.push(fieldLabel(block)); });
        note.textContent = names.length ? "\u25CF Unsaved edits (" + names.length + "): " + names.slice(0, 5).join("; ")
            + (names.length > 5 ? " \u2026" : "") + " \u2014 Save Params or Train saves them." : "";
    }

    function markEdited(event) {
        var path = event.composedPath ? event.composedPath() : [event.target];
        for (var i = 0; i < path.length; i++) {
            var el = path[i];
            if (el && el.id === "dbt_settings_col") break;
            if (el && el.classList && el.classList.contains("dbt-field")) {
                el.classList.add("dbt-edited");
                showUnsaved();
                return;
            }
        }
    }
    document.addEventListener("input", markEdited, true);
    document.addEventListener("change", markEdited, true);

    var lastMessage = "";

    function fieldId(name) {  // "concepts_list[0].instance_data_dir" -> dbt_concept0_instance_data_dir
        var concept = /^concepts_(?:list|path)\[(\d+)\]\.(\w+)$/.exec(name);
        return concept ? "dbt_concept" + concept[1] + "_" + concept[2] : "dbt_" + name;
    }

    function onMessage() {
        var text = valueOf("dbt_message");
        if (text === lastMessage) return;
        lastMessage = text;
        root().querySelectorAll(".dbt-error").forEach(function (el) { el.classList.remove("dbt-error"); });
        if (IN_SYNC.test(text)) {
            root().querySelectorAll(".dbt-edited").forEach(function (el) { el.classList.remove("dbt-edited"); });
        }
        var changed = /^changed: (.*)$/m.exec(text);  // the Performance Wizard's list
        if (changed) {
            changed[1].split(", ").forEach(function (part) {
                var el = find("dbt_" + part.split(" ")[0]);
                if (el) el.classList.add("dbt-edited");
            });
        }
        if (/^error: /.test(text)) {  // highlight the field the error names
            var words = text.match(/concepts_(?:list|path)\[\d+\]\.\w+|\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b|\b[a-z]+\b/g) || [];
            for (var i = 0; i < words.length; i++) {
                var el = find(fieldId(words[i]));
                if (el && el.classList.contains("dbt-field")) {
                    el.classList.add("dbt-error");
                    break;
                }
            }
        }
        showUnsaved();
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
            if (isCancel && !jobRunning()) return;  // nothing runs: no question, the answer says so
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
        document.title = RUNNING.test(line) ? "[" + line.slice(0, 60) + "] " + baseTitle : baseTitle;
    }

    function update() {
        addHints();
        refreshStatus();
        onMessage();
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
    setInterval(function () { refreshStatus(); onMessage(); }, 1000);  // values change without DOM mutations
})();
