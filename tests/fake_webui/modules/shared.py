"""modules.shared: opts with add_option, OptionInfo, cmd_opts, and the lazy `sd_model` gotcha."""
import sys
import types

# lora_dir: the built-in Lora extension's --lora-dir (the real default is <models>/Lora; None tests the fallback)
cmd_opts = types.SimpleNamespace(dreambooth_tab_models_path=None, ckpt_dir=None, api_auth=None, ckpt=None,
                                 lora_dir=None)
lazy_load_attempts = 0  # reading shared.sd_model counts here: the extension must never do it


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None,
                 section=None, refresh=None, **kwargs):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section, self.refresh, self.comment = onchange, section, refresh, ""
        self.category_id = kwargs.get("category_id")

    def info(self, text):
        self.comment = text
        return self

    def link(self, label, url):
        return self

    def needs_reload_ui(self):
        return self

    def needs_restart(self):
        return self


class Options:
    def __init__(self):
        object.__setattr__(self, "data_labels", {})
        object.__setattr__(self, "data", {})

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, key):
        if key in self.data:
            return self.data[key]
        raise AttributeError(key)

    def __setattr__(self, key, value):
        self.data[key] = value


opts = Options()


class _Shared(types.ModuleType):
    @property
    def sd_model(self):
        """As the WebUI: reading it loads a model (here: counts the attempt)."""
        global lazy_load_attempts
        lazy_load_attempts += 1
        from modules import sd_models

        sd_models.model_data.sd_model = sd_models.FakeModel()
        return sd_models.model_data.sd_model


sys.modules[__name__].__class__ = _Shared
