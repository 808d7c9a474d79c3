"""What the tab's buttons do, as plain functions over dicts (no gradio here, so they are unit-tested).

Widget values arrive as {field name: value}; concept editor values as {"concept<i>.<field>": value}.
Every function returns a message for the log; DreamboothError carries bad-input messages and the
tab shows them (tab.py wraps each handler). Paths from the widgets pass the path policy (pathpolicy).
"""
from __future__ import annotations

from pathlib import Path

from ..platform import host, modellock, pathpolicy
from ..service import operations
from ..config import TrainConfig
from ..errors import DreamboothError
from ..data.dataset import check_concepts
from ..service.jobs import runner
from ..registry import CONCEPT_FIELDS, FIELDS
from ..store import model_dir

MAX_CONCEPTS = 4
# Fields the tab shows as widgets (hidden bookkeeping and the concepts list have their own place).
WIDGET_FIELDS = tuple(f for f in FIELDS if not f.hidden and f.name != "concepts_list")
LORA_MERGE_FIELDS = ("use_lora", "lora_model_name", "lora_weight")  # what Generate Ckpt takes from the screen


def concept_key(index: int, name: str) -> str:
    return f"concept{index}.{name}"


def _require_model(model: str | None, action: str = "") -> str:
    if not (model or "").strip():
        what = f"{action}: " if action else ""  # two buttons pressed in a row must not read the same
        raise DreamboothError(f"{what}no model selected: pick one in Model (or create one in the Create tab)",
                              field="model_name")
    return model.strip()


def _concept_has_content(index: int, values: dict) -> bool:
    return bool(str(values.get(concept_key(index, "instance_data_dir"), "") or "").strip())


def values_to_config(model: str, values: dict) -> TrainConfig:
    """A TrainConfig from widget values, on top of the model's saved bookkeeping (type, source, revision)."""
    cfg = TrainConfig()
    if model_dir(model).config_file.is_file():  # else: a model without saved params, default bookkeeping
        saved, _ = operations.load_params(model)
        for field in FIELDS:
            if field.hidden:
                cfg.set(field.name, getattr(saved, field.name))
        cfg.extras.update(saved.extras)
    for field in WIDGET_FIELDS:
        if field.name in values:
            raw = values[field.name]
            if raw is None or (isinstance(raw, str) and field.kind is not str and not raw.strip()):
                raise DreamboothError(f"{field.name} ({field.label}) is empty: expected {field.describe_range()}",
                                      field=field.name)
            if field.kind is int and isinstance(raw, float) and not raw.is_integer():  # said, never rounded
                raise DreamboothError(f"{field.name} ({field.label}) = {raw:g} is not a whole number: type "
                                      f"{int(raw)} or {int(raw) + 1}", field=field.name)
            cfg.set(field.name, raw)
    concepts = []
    for index in range(MAX_CONCEPTS):
        if not _concept_has_content(index, values):
            continue
        concept = {}
        for field in CONCEPT_FIELDS:
            key = concept_key(index, field.name)
            if key in values and values[key] is not None:
                concept[field.name] = values[key]
        concepts.append(concept)
    cfg.set("concepts_list", concepts)
    pathpolicy.check_config(cfg)
    return cfg


def config_to_values(cfg: TrainConfig) -> tuple[dict, list[str]]:
    """Widget values for a config (concepts beyond the 4 editors stay in the file; a warning says so)."""
    values = {f.name: getattr(cfg, f.name) for f in WIDGET_FIELDS}
    warnings = []
    concepts = list(cfg.concepts_list)
    if len(concepts) > MAX_CONCEPTS:
        warnings.append(f"the model has {len(concepts)} concepts; the editors show the first {MAX_CONCEPTS}: "
                        "use a concepts JSON to train all of them")
    for index in range(MAX_CONCEPTS):
        data = concepts[index] if index < len(concepts) else {}
        for field in CONCEPT_FIELDS:
            values[concept_key(index, field.name)] = data.get(field.name, field.default)
    return values, warnings


def default_values() -> dict:
    return config_to_values(TrainConfig())[0]


# buttons ------------------------------------------------------------------------------------------
def _running_job_note(model: str) -> str:
    """Said after Save Params and the Wizard while a training runs: it keeps the values it started with."""
    job = runner().current()
    if job is None or job.kind != "train":
        return ""
    return (f" (the running training of '{job.model_name}' keeps the values it started with; "
            + ("these apply to its next run)" if job.model_name == model else "these apply when you train this model)"))


def save_params(model: str, values: dict) -> str:
    model = _require_model(model, "Save Params")
    cfg = values_to_config(model, values)
    path = operations.save_params(model, cfg)
    return f"params of '{model}' saved to {path}{_running_job_note(model)}"


def load_params(model: str) -> tuple[dict, str]:
    model = _require_model(model, "Load Params")
    cfg, warnings = operations.load_params(model)
    values, more = config_to_values(cfg)
    lines = [f"params of '{model}' loaded (model type {cfg.model_type}, revision {cfg.revision}, "
             f"epoch {cfg.epoch})"] + [f"warning: {w}" for w in warnings + more]
    return values, "\n".join(lines)


def model_info(model: str | None) -> str:
    if not (model or "").strip():
        return "no model selected"
    try:
        cfg, _ = operations.load_params(model)
    except DreamboothError as error:
        return str(error)
    snapshot = operations.newest_snapshot(model)
    return (f"{model}: type {cfg.model_type} · revision {cfg.revision} · epoch {cfg.epoch} · "
            f"source {Path(cfg.src).name if cfg.src else '-'} · "
            + (f"resumable from {snapshot.name}" if snapshot else "no snapshot to resume"))


def resume_label(model: str | None) -> str:
    """The Resume box names the snapshot it would continue from, so a user knows what ticking it does."""
    from ..train.snapshot import snapshot_revision

    try:
        snapshot = operations.newest_snapshot(model) if (model or "").strip() else None
    except DreamboothError:  # not a model name (the status poll passes what the last job was given)
        snapshot = None
    if snapshot is None:
        return "Resume (no snapshot yet: Train starts at step 1)"
    return f"Resume from {snapshot.name} (step {snapshot_revision(snapshot)})"


def create_model(name: str, source: str, model_type: str = "detect", hub_id: str = "", hub_token: str = "") -> str:
    """Create from the chosen source checkpoint, or from a Hugging Face Hub id when one is typed."""
    from ..convert.hub import is_hub_id, resolve_hub_model

    name = (name or "").strip()
    hub_id = (hub_id or "").strip()
    if hub_id and not is_hub_id(hub_id):
        raise DreamboothError(f"Hub model id '{hub_id[:100]}' is not of the form org/name "
                              "(e.g. runwayml/stable-diffusion-v1-5)", field="hub_id")
    if not hub_id and not (source or "").strip():
        raise DreamboothError("no source chosen: pick one in Source checkpoint or type a Hub model id",
                              field="source")

    def progress(message: str) -> None:
        runner().note(message)

    with runner().exclusive("create", name):
        # a Hub id is looked up by the hub library in its own cache (never as a path here); a path passes
        # the path policy
        source = resolve_hub_model(hub_id, hub_token, progress) if hub_id else pathpolicy.check_source(source)
        operations.create_model(name, source, progress=progress,
                                model_type=None if model_type in (None, "", "detect") else model_type)
    if Path(str(source)).name == operations.EMBEDDED_CHECKPOINT:
        _apply_demo_settings(name)
        return (f"model '{name}' created from the embedded tiny demo checkpoint, with demo images as "
                "Concept 1 and CPU-friendly settings (loaded below): press Train")
    return f"model '{name}' created and its params loaded: set concepts and params, then Train"


def _apply_demo_settings(name: str) -> None:
    """A model made from the embedded demo checkpoint gets the demo's concept and small settings."""
    from ..tools.demo import DEMO_SETTINGS

    cfg, _ = operations.load_params(name)
    for key, value in DEMO_SETTINGS.items():
        cfg.set(key, value)
    cfg.set("concepts_list", [{"instance_data_dir": str(operations.demo_instance_dir()),
                               "instance_prompt": "a photo of sks toy", "n_save_sample": 1, "sample_seed": 7,
                               "save_infer_steps": 10}])
    operations.save_params(name, cfg)


def train(model: str, values: dict, resume: bool = False) -> str:
    model = _require_model(model)
    if runner().busy():
        job = runner().current()
        raise DreamboothError(f"a job is already running ({job.kind} of '{job.model_name}'): "
                              "wait for it or press Cancel", field="job")
    cfg = values_to_config(model, values)
    modellock.check_free(model_dir(model).path)  # another process trains it: say so now
    count = operations.preflight(cfg)  # concept folders, attention
    runner().start_training(model, cfg, resume=resume)
    return (f"training '{model}' started: {count} instance image(s), {cfg.num_train_epochs} epoch(s)"
            + (" (resuming from the newest snapshot)" if resume else "")
            + "; the values on screen were saved to its db_config.json")


def cancel() -> str:
    return runner().cancel()


def generate_samples(model: str, values: dict) -> tuple[list[str], str]:
    message = runner().request_samples()
    if message is not None:
        return [], message
    model = _require_model(model)
    cfg = values_to_config(model, values)
    check_concepts(cfg.concepts())
    with runner().exclusive("samples", model) as job:
        paths = operations.generate_samples(model, cfg, job.control)
        job.control.update(samples=[str(p) for p in paths])
    return [str(p) for p in paths], f"{len(paths)} sample(s) generated for '{model}'"


def generate_ckpt(model: str, values: dict | None = None) -> str:
    """Uses Half model and Save to subdirectory as ticked on screen (`values`), not only as saved."""
    values = values or {}
    message = runner().request_save(values.get("half_model"), values.get("use_subdir"))  # during training
    if message is not None:
        return message
    model = _require_model(model)
    with runner().exclusive("checkpoint", model) as job:
        lora = {key: values[key] for key in LORA_MERGE_FIELDS if key in values}  # the LoRA as chosen on screen
        path = operations.generate_ckpt(model, half=values.get("half_model"), subdir=values.get("use_subdir"),
                                        overrides=lora)
        job.control.update(checkpoints=[str(path)])  # the export refreshed the WebUI's list
    runner().note(f"checkpoint written: {path}")
    return f"checkpoint written: {path} (select it in txt2img)"


def detect_vram_gb() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 1024**3


def made_for_resolution(model: str | None) -> int | None:
    """The image size the model's UNet was built for (sample_size × the VAE's downscale), or None."""
    import json

    if not (model or "").strip():
        return None
    working = model_dir(model).working
    try:
        unet = json.loads((working / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((working / "vae" / "config.json").read_text(encoding="utf-8"))
        size = unet["sample_size"]
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def detect_bf16() -> bool | None:
    """Whether the CUDA device computes in bf16 (None: no CUDA device, so not known)."""
    import torch

    return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None


def wizard(model: str, values: dict, vram_from_user) -> tuple[dict, str]:
    """Performance Wizard: CUDA VRAM (or the number the user entered), the image count of the concepts on
    screen (no saved concepts needed), the model's own resolution. Returns only the values it changes."""
    import importlib.util

    from ..wizard import recommend

    vram = detect_vram_gb()
    source = "CUDA device"
    if vram is None:
        source = "entered (no CUDA device)"
        vram = float(vram_from_user or 0)
    cfg = values_to_config(model, values) if (model or "").strip() else _config_from_values(values)
    model_type = cfg.model_type  # the saved model's (values_to_config keeps it), else the default
    count = check_concepts(cfg.concepts())
    bnb = importlib.util.find_spec("bitsandbytes") is not None and vram > 0
    xformers = importlib.util.find_spec("xformers") is not None
    changes, reasons = recommend(vram, count, model_type, bnb, xformers, bf16_available=detect_bf16(),
                                 made_for=made_for_resolution(model))
    changed = {name: value for name, value in changes.items() if _differs(values.get(name), value)}
    lines = [f"Performance Wizard: {vram:g} GB VRAM ({source}), {count} image(s), {model_type}"]
    lines += [f"  {reason}" for reason in reasons]
    if changed:
        lines.append("changed: " + ", ".join(f"{name} {_shown(values.get(name))} → {_shown(value)}"
                                             for name, value in changed.items()))
        lines.append("the changed fields are marked; review them, then Save Params or Train"
                     + _running_job_note(model or ""))
    else:
        lines.append("nothing to change: the fields already hold these values")
    return changed, "\n".join(lines)


def _shown(value) -> str:
    return "(empty)" if value is None or value == "" else f"{value:g}" if isinstance(value, float) else str(value)


def _differs(screen, value) -> bool:
    """Whether an on-screen value differs from `value` (numbers as numbers: 3 == 3.0; "" == None)."""
    if isinstance(value, bool) or isinstance(screen, bool):
        return screen != value
    if isinstance(value, (int, float)):
        try:
            return abs(float(screen) - float(value)) > 1e-12 * max(1.0, abs(float(value)))
        except (TypeError, ValueError):
            return True
    return str(screen if screen is not None else "").strip() != str(value if value is not None else "").strip()


def edited_fields(values: dict, baseline: dict) -> list[str]:
    """The widget names whose on-screen value differs from `baseline` (the params last loaded or saved)."""
    return [name for name, value in baseline.items() if name in values and _differs(values[name], value)]


def shown_baseline(model: str | None) -> dict:
    """The values the fields hold when nothing was edited: the model's saved params, or the defaults."""
    if (model or "").strip() and model_dir(model).config_file.is_file():
        cfg, _ = operations.load_params(model)
        return config_to_values(cfg)[0]
    return default_values()


def params_on_select(model: str, shown: str | None, values: dict) -> tuple[dict | None, str]:
    """A model was selected: (its params, message) when the fields hold what was last loaded or saved
    (nothing edited), else (None, a message naming the edits kept and how to replace them)."""
    model = _require_model(model)
    try:
        baseline = shown_baseline(shown)
    except DreamboothError:  # the shown model was removed meanwhile
        baseline = default_values()
    edited = edited_fields(values, baseline)
    if edited:
        names = ", ".join(edited[:6]) + (f" and {len(edited) - 6} more" if len(edited) > 6 else "")
        return None, (f"'{model}' selected; the fields keep your unsaved edits ({names}): press Load Params to "
                      f"replace them with the params of '{model}', or Save Params to save them to '{model}'")
    loaded, text = load_params(model)
    return loaded, f"{text} (selected; nothing on screen was edited)"


def _config_from_values(values: dict) -> TrainConfig:
    cfg = TrainConfig()
    concepts = [{f.name: values[concept_key(i, f.name)] for f in CONCEPT_FIELDS if concept_key(i, f.name) in values}
                for i in range(MAX_CONCEPTS) if _concept_has_content(i, values)]
    cfg.set("concepts_list", concepts)
    for name in ("use_concepts", "concepts_path"):
        if name in values:
            cfg.set(name, values[name])
    pathpolicy.check_config(cfg)
    return cfg


def source_choices() -> list[str]:
    """Source checkpoints as names relative to the checkpoint folder (full paths for others)."""
    base = host.checkpoint_dir()
    names = []
    for path in operations.list_source_checkpoints():
        path = Path(path)
        try:
            names.append(str(path.resolve().relative_to(base.resolve())))
        except ValueError:
            names.append(str(path))
    return names


def lora_choices(model: str | None = None) -> list[str]:
    """The Lora Model selector: "" (none), then the LoRA files of the Lora folder and the model's lora/."""
    from ..model.lora_files import list_lora_files
    from ..store import model_dir

    try:
        folder = model_dir(model) if model else None
    except DreamboothError:
        folder = None
    return [""] + list_lora_files(folder)


def model_choices() -> list[str]:
    from ..store import list_models

    return list_models()


def model_choices_on_load() -> dict:
    """The Model list when a page (re)loads: every model, and the running job's model selected so the page
    shows what trains (after Reload UI too)."""
    update = {"choices": model_choices()}
    job = runner().current()
    if job is not None and job.model_name in update["choices"]:
        update["value"] = job.model_name
    return update


def neighbour_note() -> str | None:
    """What it means when another Dreambooth extension is enabled in the same WebUI (None if none is)."""
    others = host.other_dreambooth_extensions()
    if not others:
        return None
    names = ", ".join(f"`{name}`" for name, _ in others)
    return (f"**Another Dreambooth extension is enabled: {names}.** Both can be enabled together: this tab "
            "keeps its own flag (`--dreambooth-tab-models-path`), settings section and API "
            f"(`/dreambooth-tab/v1/...`). This tab's models are in `{host.dreambooth_root()}`; Save Params here "
            "writes this tab's `db_config.json` format. Train in one tab at a time (each needs the GPU to "
            "itself); to keep only one, disable the other in Extensions > Installed.")
