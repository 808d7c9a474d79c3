"""The Dreambooth training loop: epochs over the cached training set, saves, previews, pauses, cancel.

Requests from the outside (cancel, sample now, save now) arrive through a TrainControl and are honoured
at step boundaries. Cancel stops at the next step and then runs the final save.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TrainConfig, save_config
from ..monitor.metrics import MetricsLog, memory_mb
from ..platform.cpu_memory import return_freed_memory
from ..store import ModelDir
from .control import TrainControl
from .plan import TrainPlan, plan_from_config, shard_groups
from .schedulers import build_lr_scheduler, spec_from_config
from .ema import start_ema
from .fused_backward import check_fused_backward
from .guard import NanGuard, NonFiniteLoss, cancel_agreed, nan_stop_message
from .parking import PARKING_FOLDER, FrozenParking
from .reporting import LiveReport, memory_kind, progress_bar
from .saving import WrittenAt, first_captions
from .setup import (build_training_optimizer, load_training_models, make_accelerator, pick_seed,
                    prepare_trained, prepare_training_data, run_learning_rates, start_fused_backward,
                    stop_text_encoder_training, text_encoder_epochs, trained_parameter_lists)
from .step import accumulate_gradients, step_inputs_from
# the older extension's training settings, each in its own module
from .determinism import deterministic_algorithms, training_seed
from .full_precision import saved_as_fp32
from .param_groups import check_something_trains, clip_gradients
from .prior_schedule import prior_weight
from .spectral import start_spectral_freeze

LOG_EVERY = 10  # steps between metric flushes (the only place the loop waits for the device)
CHART_EVERY_S = 10.0  # seconds between chart redraws during training (a redraw takes ~0.3 s)


@dataclass
class TrainResult:
    state: str  # "done" or "canceled"
    steps: int
    revision: int
    checkpoints: list[Path] = field(default_factory=list)
    snapshots: list[Path] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    charts: list[Path] = field(default_factory=list)
    last_loss: float | None = None
    main_process: bool = True  # False in the other processes of a data-parallel run


class Trainer:
    clock = staticmethod(time.perf_counter)  # what it/s and the ETA are measured with
    def __init__(self, model: ModelDir, cfg: TrainConfig, control: TrainControl | None = None,
                 resume: bool = False, *, check_every: int | None = None, offload: bool | None = None):
        """`check_every`: steps between reads of the device-side NaN flag and (with several processes) the
        cancel vote; None = 1 on a CPU (free there) and LOG_EVERY on an accelerator, where each read waits
        for the device. `offload`: move cached frozen modules to RAM between previews; None = on an
        accelerator only. Both exist so that tests on a CPU run the accelerator's code paths."""
        self.model = model
        self.cfg = cfg
        self.control = control or TrainControl()
        self.resume = resume
        self.log = self.control.log
        self._params, self._params_for = [], None  # see _parameter_lists
        self._check_every_override = check_every
        self._offload_override = offload
        self.parking: FrozenParking | None = None  # where the cached frozen modules wait (after preparation)
        self._written = WrittenAt()  # what was saved at the current revision: never twice

    # set-up -----------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        import torch

        from ..data.dataset import collect_items

        cfg, control = self.cfg, self.control
        check_something_trains(cfg)
        control.update(state="preparing", model_name=self.model.name, started_at=time.time())
        self.concepts = concepts = cfg.concepts()
        pairs = collect_items(concepts, lambda message: self.log(f"warning: {message}"))  # bad folders fail here

        self.accelerator = accelerator = make_accelerator(cfg, self.log)
        self.device = accelerator.device
        if cfg.fused_backward_pass:  # refused before the slow preparation when it cannot train this
            check_fused_backward(cfg, accelerator.num_processes, accelerator.mixed_precision)
        self.check_every = self._check_every_override or (1 if self.device.type == "cpu" else LOG_EVERY)
        if self.device.type == "cpu":
            return_freed_memory(self.log)
        self.models, self.full_precision, self.frozen_cast = load_training_models(
            self.model, self.device, cfg, accelerator.mixed_precision, self.log)
        models = self.models
        self.training_set = prepare_training_data(cfg, self.model, models, accelerator, control, concepts, pairs,
                                                  pick_seed(training_seed(cfg)), self.log, self._detail)
        self.lora = None  # LoRA adapters are attached after the class images: those come from the base
        if cfg.use_lora:
            from .lora_run import start_lora

            self.lora = start_lora(self.model, cfg, models, cfg.stop_text_encoder > 0, accelerator.mixed_precision,
                                   self.training_set, self.log)
        # the frozen modules whose outputs are cached wait (in RAM or on disk) until a preview or save needs them
        self.parking = FrozenParking(self.device, self.model.path / PARKING_FOLDER /
                                     f"process{accelerator.process_index}", self.log)
        text_cached = cfg.stop_text_encoder <= 0 and self.training_set.embeddings is not None
        self.parking.park_frozen(models.vae, models.text_encoder, self.training_set.cached, text_cached,
                                 self._offload_override)
        self.first_captions = first_captions(self.training_set.items)
        self.plan: TrainPlan = plan_from_config(cfg, self.training_set.plan_items(cfg.train_batch_size),
                                                accelerator.num_processes)  # buckets may add short batches

        self.text_encoder_epochs = text_encoder_epochs(cfg.stop_text_encoder, self.plan.epochs)
        self.text_encoder_training = self.text_encoder_epochs > 0
        self.learning_rates = run_learning_rates(cfg, accelerator.num_processes, self.log)
        optimizer = build_training_optimizer(cfg, models, self.lora, self.learning_rates, self.text_encoder_training)
        self.schedule = spec_from_config(cfg, self.plan.total_steps)
        self.lr_scheduler = build_lr_scheduler(optimizer, self.schedule)
        self.fused = start_fused_backward(cfg, optimizer, self.log)
        self.unet, self.text_encoder, self.optimizer = prepare_trained(accelerator, models, self.lora, optimizer,
                                                                       self.text_encoder_training)
        # a LoRA run keeps no EMA (lora_run says so): its adapters are small
        self.ema = start_ema(cfg, models.unet, self.device, self.log) if self.lora is None else None

        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(models.scheduler_config)
        self.seed = pick_seed(training_seed(cfg))
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.step_inputs = step_inputs_from(cfg, self.training_set, self.unet, self.text_encoder, models.text_encoder,
                                            self.noise_scheduler, self.generator)
        self.nan_guard = NanGuard(accelerator, self.device, self.check_every)
        self.global_step, self.start_revision, self.start_epoch, self.skip_batches = 0, cfg.revision, 0, 0
        if self.resume:
            self._restore()
        # after a resume: the norms of the weights it continues
        self.spectral = start_spectral_freeze(cfg, models.unet, self.log)
        self.metrics = MetricsLog(self.model.logging, keep_until=self.global_step if self.resume else None,
                                  warn=lambda message: self.log(f"warning: {message}"),
                                  owner=accelerator.is_main_process)
        self.log(f"training {len(self.training_set)} images, {self.plan.epochs} epochs, "
                 f"{self.plan.steps_per_epoch} steps per epoch ({self.plan.total_steps} steps), "
                 f"batch {cfg.train_batch_size} x {cfg.gradient_accumulation_steps}, seed {self.seed}, "
                 f"device {self.device}, precision {accelerator.mixed_precision}, attention {models.attention}")

    def _restore(self) -> None:
        from .resume import restore

        counters = restore(self.model, self.cfg, self.models.unet, self.models.text_encoder,
                           self.ema, self.optimizer, self.lr_scheduler, self.generator, self.learning_rates,
                           self.log, adapters=self.lora.network if self.lora else None)
        self.seed = counters.seed
        self.global_step = counters.global_step
        self.start_revision = counters.start_revision
        self.start_epoch = counters.epochs_done
        self.skip_batches = counters.batches_done_in_epoch

    # the loop ---------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        with deterministic_algorithms(self.cfg.deterministic):
            try:
                return self._run()
            finally:
                if getattr(self, "fused", None) is not None:  # the UNet may outlive this run (tests, the bench)
                    self.fused.remove()
                if self.parking is not None:
                    self.parking.close()

    def _run(self) -> TrainResult:
        self._prepare()
        result = TrainResult("done", 0, self.start_revision, main_process=self.accelerator.is_main_process)
        self.result = result
        self._epochs_done = self.start_epoch
        self._batches_done = self.skip_batches
        control = self.control
        control.update(state="training", total_epochs=self.plan.epochs, total_steps=self.plan.total_steps,
                       step=self.global_step, epoch=self.start_epoch, detail="")
        self.report = LiveReport(self.model, self.metrics, control, result, self.plan.total_steps, self.global_step,
                                 self.accelerator.is_main_process, self.clock, CHART_EVERY_S)
        progress = progress_bar(self.plan.total_steps, self.global_step, self.model.name,
                                self.accelerator.is_main_process)
        canceled = False
        try:
            for epoch in range(self.start_epoch, self.plan.epochs):
                canceled = self._train_epoch(epoch, progress)
                if canceled:
                    break
                self._epochs_done = epoch + 1
                self._batches_done = 0
                self.cfg.epoch += 1
                self._end_of_epoch(epoch + 1)
            self.nan_guard.check(self.global_step)  # the last steps may not have been checked yet (off the CPU)
            if canceled:
                progress.close()
                self.report.flush(self.global_step)
                result.state = "canceled"
                self.log("training canceled")
                self._save("cancel")
        except NonFiniteLoss as stop:
            progress.close()
            self._stop_on_nan(stop)
        progress.close()
        self.report.flush(self.global_step)
        if result.state != "failed":  # charts up to the last step (a NaN stop logged nothing new)
            self.report.draw_charts(self.global_step)
        result.steps = self.global_step
        result.revision = self.start_revision + self.global_step
        control.update(state=result.state, finished_at=time.time())
        self.log(f"training {result.state} after {self.global_step} steps")
        return result

    def _train_epoch(self, epoch: int, progress) -> bool:
        """One epoch; True when a cancel request stopped it."""
        batches = self.training_set.epoch_batches(self.seed, epoch, self.cfg.train_batch_size)
        accumulation = self.cfg.gradient_accumulation_steps
        groups = [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)]
        groups = shard_groups(groups, self.accelerator.num_processes, self.accelerator.process_index)
        skip = self.skip_batches if epoch == self.start_epoch else 0
        if self.text_encoder_training and epoch >= self.text_encoder_epochs:
            self.text_encoder_training = False
            stop_text_encoder_training(self.models, self.lora, self.training_set, self.cfg.clip_skip)
            self.log(f"text encoder frozen after {epoch} epoch(s) (stop_text_encoder {self.cfg.stop_text_encoder})")
        for group_index, group in enumerate(groups):
            if group_index * accumulation < skip:
                continue
            if self._cancel_requested():
                return True
            self._optimizer_step(group)
            self._batches_done = min(len(batches), (group_index + 1) * accumulation)
            progress.update(1)
            self._after_step(epoch, progress)
        return False

    def _optimizer_step(self, group: list[list[int]]) -> None:
        accelerator = self.accelerator
        lr = self.lr_scheduler.get_last_lr()[0]
        if accelerator.num_processes > 1:  # different noise per process, reproducible on resume from the step
            self.generator.manual_seed((self.seed * 1_000_003 + self.global_step) * 1009 + accelerator.process_index)
        weight = prior_weight(self.cfg, self.global_step / self.plan.steps_per_epoch)  # annealed per step
        self.step_inputs.prior_loss_weight = weight
        total_loss, total_prior, total_instance = accumulate_gradients(accelerator, self.step_inputs, group,
                                                                       self.text_encoder_training)
        self.nan_guard.watch(total_loss, step=self.global_step + 1)
        if self.fused is None:  # (fused: every tensor was stepped and its gradient freed during backward)
            clip_gradients(accelerator.clip_grad_norm_, *self._parameter_lists(), self.cfg.max_grad_norm,
                           self.cfg.tenc_grad_clip_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=self.cfg.gradient_set_to_none)
        if self.spectral is not None:
            self.spectral.apply()
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update()
        self.global_step += 1
        self.metrics.add(total_loss, step=self.global_step, epoch=self._epochs_done + 1, lr=lr,
                         memory_mb=memory_mb(self.device), memory_kind=memory_kind(self.device), prior_loss=total_prior,
                         instance_loss=total_instance, prior_weight=weight)

    def _parameter_lists(self) -> tuple[list, list]:
        """(UNet, text encoder) parameters being trained; rebuilt only when the text encoder freezes,
        since walking the modules every step costs a few milliseconds."""
        key = self.text_encoder_training
        if self._params_for != key:
            self._params, self._params_for = trained_parameter_lists(self.unet, self.text_encoder, self.lora, key), key
        return self._params

    def _cancel_requested(self) -> bool:
        return cancel_agreed(self.accelerator, self.device, self.control.cancel_requested.is_set, self.global_step,
                             self.check_every)

    def _stop_on_nan(self, stop: NonFiniteLoss) -> None:
        """Nothing is saved: working/, the checkpoints and the snapshots keep the last good weights."""
        from ..errors import DreamboothError

        self.metrics.discard()
        self.control.update(state="failed", finished_at=time.time())
        message = nan_stop_message(stop, self.result.checkpoints, self.cfg.learning_rate,
                                   self.accelerator.mixed_precision)
        self.log(message)
        raise DreamboothError(message, field="learning_rate") from None

    def _after_step(self, epoch: int, progress) -> None:
        control = self.control
        if self.global_step % LOG_EVERY == 0:
            self.nan_guard.check(self.global_step)  # the flush waits for the device anyway: no NaN row is written
            self.report.flush(self.global_step, progress)
        control.update(step=self.global_step, epoch=epoch + 1)
        if control.sample_requested.is_set() or self.plan.previews_at_step(self.global_step):
            control.sample_requested.clear()
            self.report.flush(self.global_step)
            self._preview()
        requested = control.take_save_request()  # Generate Ckpt during training
        if requested is not None or self.plan.saves_at_step(self.global_step):
            self._save("during", requested)

    def _end_of_epoch(self, epoch: int) -> None:
        plan = self.plan
        if plan.saves_after(epoch):
            self._save("after" if epoch == plan.epochs else "during")
        if plan.previews_after(epoch):
            self.report.flush(self.global_step)
            self._preview()
        if plan.pauses_after(epoch) and self.cfg.epoch_pause_time > 0:
            self.control.update(state="paused")
            self.log(f"pausing {self.cfg.epoch_pause_time} s after epoch {epoch}")
            with self.report.pace.excluded():
                self.control.pause(self.cfg.epoch_pause_time)
            self.control.update(state="training", detail="")

    def _detail(self, text: str) -> None:
        self.control.update(detail=text)

    # saving -----------------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        return self.start_revision + self.global_step

    def _save(self, reason: str, requested: dict | None = None) -> None:
        """Write what the saving switches ask for at this point: working weights, checkpoint, snapshot.
        `requested`: Generate Ckpt's export choices; it always gets its checkpoint."""
        with self.report.pace.excluded():
            self._save_now(reason, requested)

    def _save_now(self, reason: str, requested: dict | None = None) -> None:
        from .saving import SaveInputs, save_training_state

        wanted = self._written.wanted(self.revision, self.cfg, reason, requested)
        if wanted is None:  # all of it was written at this step already
            return
        want_ckpt, want_state = wanted
        # never write weights from unchecked steps: off the CPU the flag is read only every few steps
        self.nan_guard.check(self.global_step)
        unet_params, text_params = self._parameter_lists()
        trained = [p.detach() for p in unet_params + text_params] + (self.ema.shadow if self.ema is not None else [])
        self.nan_guard.check_weights(trained, self.global_step)
        self.control.update(state="saving")
        if self.accelerator.is_main_process:
            state = SaveInputs(
                model=self.model, cfg=self.cfg, revision=self.revision,
                unet=self.models.unet, vae=self.models.vae, lora=self.lora,
                text_encoder=self.models.text_encoder, text_encoder_trained=self.text_encoder_epochs > 0,
                frozen_cast=self.frozen_cast, ema=self.ema, optimizer=self.optimizer,
                lr_scheduler=self.lr_scheduler, generator=self.generator, resume_state=self.snapshot_state(),
                save_config=self.save_config, log=self.log, progress=self._detail, **(requested or {}))
            with saved_as_fp32(state.unet, self.full_precision), self._frozen_back(onto_device=False):
                checkpoint, snapshot = save_training_state(state, want_ckpt, want_state)
            if checkpoint is not None:
                self.result.checkpoints.append(checkpoint)
                self.control.update(checkpoints=[str(p) for p in self.result.checkpoints])
            if snapshot is not None:
                self.result.snapshots.append(snapshot)
        self.accelerator.wait_for_everyone()
        self._written.record(self.revision, want_ckpt, want_state)
        self.control.update(state="training", detail="")

    def _preview(self) -> None:
        if not self.accelerator.is_main_process:
            return
        with self.report.pace.excluded():
            self._preview_now()

    def _preview_now(self) -> None:
        from .saving import PreviewInputs, write_previews

        self.control.update(state="sampling", detail="")
        preview = PreviewInputs(
            model=self.model, cfg=self.cfg, concepts=self.concepts, first_captions=self.first_captions,
            unet=self.models.unet, models=self.models, ema=self.ema, revision=self.revision,
            step=self.global_step, device=self.device, autocast=self.accelerator.autocast, log=self.log,
            progress=self._detail)
        with self._frozen_back():
            samples = write_previews(preview)
        self.result.samples.extend(samples)
        self.report.draw_charts(self.global_step)
        self.control.update(state="training", detail="",
                            samples=[str(p) for p in samples] or self.control.snapshot().samples)

    def _frozen_back(self, onto_device: bool = True):
        return self.parking.back(onto_device) if self.parking is not None else contextlib.nullcontext()

    def snapshot_state(self) -> dict:
        return {"seed": self.seed, "optimizer": self.cfg.optimizer, "global_step": self.global_step,
                "epochs_done": self._epochs_done,
                "batches_done_in_epoch": self._batches_done, "total_steps": self.plan.total_steps}

    def save_config(self) -> None:
        self.cfg.revision = self.revision
        save_config(self.cfg, self.model.config_file)

