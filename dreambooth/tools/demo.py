"""`python -m dreambooth demo`: the whole flow on the embedded tiny model, on any CPU, in well under a minute."""
from __future__ import annotations

from ..platform import host
from ..service.operations import create_model, demo_instance_dir, ensure_embedded_source, generate_ckpt, load_params, \
    remove_model, train_model
from ..errors import DreamboothError
from ..store import model_dir
from ..train.control import TrainControl

# Checkpoints for the WebUI's list only at the end (and on Generate Ckpt): a resume snapshot every epoch,
# but not a checkpoint file per epoch once someone raises the epochs.
DEMO_SETTINGS = {
    "num_train_epochs": 2, "save_embedding_every": 1, "save_ckpt_during": False, "save_preview_every": 1,
    "train_batch_size": 1,
    "learning_rate": 1e-4, "lr_scheduler": "constant", "mixed_precision": "no", "resolution": 64,
    "gradient_checkpointing": False, "seed": 1234,
}


def run_demo(name: str = "demo") -> None:
    model = model_dir(name)
    source = ensure_embedded_source()
    if model.path.exists():
        cfg, _ = load_params(name)
        if cfg.src != str(source.resolve()):
            raise DreamboothError(f"a model named '{name}' exists and is not the demo: move it away first",
                                  field="model_name")
        remove_model(name)  # the demo starts fresh every time
    print(f"source checkpoint: {source}")
    create_model(name, source)
    cfg, _ = load_params(name)
    for key, value in DEMO_SETTINGS.items():
        cfg.set(key, value)
    cfg.set("concepts_list", [{
        "instance_data_dir": str(demo_instance_dir()), "instance_prompt": "a photo of sks toy",
        "n_save_sample": 1, "sample_seed": 7, "save_infer_steps": 10}])
    result = train_model(name, cfg, TrainControl(on_log=print))
    checkpoint = generate_ckpt(name)
    print(f"\nmodel folder:      {model.path}")
    print(f"instance images:   {demo_instance_dir()}")
    print(f"samples:           {model.samples}  ({len(result.samples)} images)")
    print(f"charts:            {', '.join(str(p) for p in result.charts)}")
    print(f"resume snapshot:   {result.snapshots[-1] if result.snapshots else 'none'}")
    print(f"checkpoints:       {host.checkpoint_dir()}  (final: {checkpoint.name})")
    print(f"steps trained:     {result.steps}, last loss {result.last_loss:.4f}")
