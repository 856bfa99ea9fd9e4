// Portrait Studio: small helpers for its part of the WebUI page. Every id and class starts with "portrait-".
// Safe to run more than once and on pages without the Portrait Studio tab.
(function () {
    "use strict";

    const ROOT_ID = "portrait-studio";
    const READY_CLASS = "portrait-ready";

    function portraitRoot() {
        // The WebUI renders inside a shadow root reached through gradioApp(); fall back to the document.
        const app = typeof gradioApp === "function" ? gradioApp() : document;
        return app.querySelector("#" + ROOT_ID);
    }

    // Ctrl+Enter (Cmd+Enter on macOS) in a Portrait Studio field presses that panel's submit button,
    // as the same keys start a generation in the WebUI's own tabs.
    function submitOnCtrlEnter(event) {
        if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) {
            return;
        }
        const panel = event.target.closest(".portrait-panel");
        const button = panel && panel.querySelector("button.portrait-submit:not([disabled])");
        if (button) {
            event.preventDefault();
            button.click();
        }
    }

    function setup() {
        const root = portraitRoot();
        if (!root || root.classList.contains(READY_CLASS)) {
            return; // the tab is absent (not built yet, or disabled) or already set up
        }
        root.addEventListener("keydown", submitOnCtrlEnter);
        root.classList.add(READY_CLASS);
    }

    window.portraitStudio = Object.freeze({setup: setup});
    if (typeof onUiLoaded === "function") {
        onUiLoaded(setup);
    }
})();
