"""Run under `accelerate launch` by test_multiprocess.py: resume one model, train a copy without a break.

Each process writes rank<r>.json with a digest of its own UNet weights after each run, so the test can
check that data-parallel processes hold identical weights and that resuming matches an unbroken run.
"""
import hashlib
import json
import sys
from pathlib import Path

from dreambooth.service.operations import load_params
from dreambooth.store import model_dir
from dreambooth.train.loop import Trainer


def digest(trainer) -> str:
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    sha = hashlib.sha256()
    for key, tensor in sorted(unet.state_dict().items()):
        sha.update(key.encode())
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def run(name: str, epochs: int, resume: bool) -> dict:
    cfg, _ = load_params(name)
    cfg.num_train_epochs = epochs
    trainer = Trainer(model_dir(name), cfg, resume=resume)
    result = trainer.run()
    return {"digest": digest(trainer), "steps": result.steps, "revision": result.revision,
            "processes": trainer.accelerator.num_processes, "rank": trainer.accelerator.process_index,
            "steps_per_epoch": trainer.plan.steps_per_epoch}


def main(out_dir: str, resumed: str, unbroken: str, epochs: int) -> None:
    record = {"resumed": run(resumed, epochs, resume=True), "unbroken": run(unbroken, epochs, resume=False)}
    rank = record["resumed"]["rank"]
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
