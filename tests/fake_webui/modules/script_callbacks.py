"""modules.script_callbacks: register and fire the callbacks the extension uses."""
callbacks = {"ui_tabs": [], "ui_settings": [], "app_started": [], "script_unloaded": []}


def clear_callbacks():
    for items in callbacks.values():
        items.clear()


def on_ui_tabs(fn):
    callbacks["ui_tabs"].append(fn)


def on_ui_settings(fn):
    callbacks["ui_settings"].append(fn)


def on_app_started(fn):
    callbacks["app_started"].append(fn)


def on_script_unloaded(fn):
    callbacks["script_unloaded"].append(fn)


def ui_tabs_callback():
    res = []
    for fn in callbacks["ui_tabs"]:
        res += fn() or []
    return res


def ui_settings_callback():
    for fn in callbacks["ui_settings"]:
        fn()


def app_started_callback(demo, app):
    for fn in callbacks["app_started"]:
        fn(demo, app)


def script_unloaded_callback():
    for fn in reversed(callbacks["script_unloaded"]):
        fn()
