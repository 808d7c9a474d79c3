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
from ..monitor import charts
from ..monitor.metrics import MetricsLog, memory_mb
from ..platform.cpu_memory import return_freed_memory
from ..store import ModelDir
from .control import TrainControl
from .plan import TrainPlan, plan_from_config, shard_groups
from .schedulers import build_lr_scheduler, learning_rate_factor, learning_rates, spec_from_config
from .ema import EMA, resolve_update_every
from .fused_backward import FusedBackward, check_fused_backward
from .parking import PARKING_FOLDER, FrozenParking, parking_place
from .setup import (cast_frozen, load_models, make_accelerator, pick_seed,
                    set_text_encoder_trainable, text_encoder_epochs)
from .pace import TrainingPace
from .step import StepInputs, micro_batch_loss
# the older extension's training settings, each in its own module
from .determinism import deterministic_algorithms, training_seed
from .full_precision import hold_in_bf16, saved_as_fp32
from .param_groups import check_something_trains, clip_gradients, freeze_clip_norms, freeze_unet, optimizer_groups
from .prior_schedule import prior_weight
from .spectral import SpectralNormFreeze

LOG_EVERY = 10  # steps between metric flushes (the only place the loop waits for the device)
CHART_EVERY_S = 10.0  # seconds between chart redraws during training (a redraw takes ~0.3 s)


class NonFiniteLoss(Exception):
    def __init__(self, step: int):
        super().__init__(f"loss became NaN or infinite at step {step}")
        self.step = step


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
        self._params, self._params_for = [], None  # see _trained_parameters
        self._check_every_override = check_every
        self._offload_override = offload
        self.parking: FrozenParking | None = None  # where the cached frozen modules wait (after preparation)
        self._written: tuple[int, set[str]] = (-1, set())  # (revision, what was saved at it): never twice

    # set-up -----------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        import torch

        from ..data.dataset import collect_items
        from ..data.prepare import PreparationInputs, prepare_training_set
        from .optimizers import build_optimizer

        cfg, control = self.cfg, self.control
        check_something_trains(cfg)
        control.update(state="preparing", model_name=self.model.name, started_at=time.time())
        concepts = cfg.concepts()
        pairs = collect_items(concepts, lambda message: self.log(f"warning: {message}"))  # bad folders fail here

        self.accelerator = accelerator = make_accelerator(cfg, self.log)
        self.device = accelerator.device
        if cfg.fused_backward_pass:  # refused before the slow preparation when it cannot train this
            check_fused_backward(cfg, accelerator.num_processes, accelerator.mixed_precision)
        self.check_every = self._check_every_override or (1 if self.device.type == "cpu" else LOG_EVERY)
        if self.device.type == "cpu":
            return_freed_memory(self.log)
        self.models = models = load_models(self.model, self.device, cfg)
        if not cfg.train_unet:
            freeze_unet(models.unet)
        self.full_precision = hold_in_bf16(models.unet, cfg.full_mixed_precision, accelerator.mixed_precision, self.log)
        text_encoder_frozen = cfg.stop_text_encoder <= 0
        self.frozen_cast = cast = cast_frozen(models, accelerator.mixed_precision, text_encoder_frozen)
        if cast:
            self.log(f"frozen {' and '.join(cast)} in {accelerator.mixed_precision} (they never train)")
        # buckets, class images (generated when missing), bucket report, latent and text caches
        preparation = PreparationInputs(
            cfg=cfg, model=self.model, models=models, device=self.device,
            class_image_seed=pick_seed(training_seed(cfg)), is_main_process=accelerator.is_main_process,
            wait_for_everyone=accelerator.wait_for_everyone, autocast=accelerator.autocast, log=self.log,
            set_state=lambda state: control.update(state=state, detail=""),
            canceled=control.cancel_requested.is_set, progress=self._detail)
        self.training_set = prepare_training_set(preparation, concepts, pairs)
        self.lora = None  # LoRA adapters are attached after the class images: those come from the base
        if cfg.use_lora:
            from .lora_run import start_lora

            self.lora = start_lora(self.model, cfg, models, cfg.stop_text_encoder > 0, accelerator.mixed_precision,
                                   self.training_set, self.log)
        self._park_frozen(text_encoder_frozen)
        self.first_captions = {}  # each concept's first caption: the default sample prompt
        for item in self.training_set.items:
            self.first_captions.setdefault(item.concept, item.caption)
        self.concepts = concepts
        self.plan: TrainPlan = plan_from_config(cfg, self.training_set.plan_items(cfg.train_batch_size),
                                                accelerator.num_processes)  # buckets may add short batches

        self.text_encoder_epochs = text_encoder_epochs(cfg.stop_text_encoder, self.plan.epochs)
        self.text_encoder_training = self.text_encoder_epochs > 0
        self.learning_rates = learning_rates(cfg, accelerator.num_processes)
        if cfg.scale_lr:
            self.log(f"scale_lr: learning rates × {learning_rate_factor(cfg, accelerator.num_processes)} (batch "
                     f"{cfg.train_batch_size} × accumulation {cfg.gradient_accumulation_steps} × "
                     f"{accelerator.num_processes} process(es)): {self.learning_rates[0]:g}, text encoder "
                     f"{self.learning_rates[1]:g}")
        if self.lora is not None:
            groups = self.lora.param_groups(self.learning_rates)
        else:
            if self.text_encoder_training:
                set_text_encoder_trainable(models.text_encoder, True, cfg.gradient_checkpointing)
                if cfg.freeze_clip_normalization:
                    freeze_clip_norms(models.text_encoder)
            groups = optimizer_groups(cfg, models.unet, models.text_encoder, self.learning_rates,
                                      self.text_encoder_training)
        optimizer = build_optimizer(cfg.optimizer, groups, cfg.weight_decay)
        self.schedule = spec_from_config(cfg, self.plan.total_steps)
        self.lr_scheduler = build_lr_scheduler(optimizer, self.schedule)
        self.fused = None
        if cfg.fused_backward_pass:
            self.fused = FusedBackward(optimizer, cfg.max_grad_norm)
            self.log("fused backward pass: each weight is stepped and its gradient freed during the backward pass"
                     + (f" (max_grad_norm {cfg.max_grad_norm:g} clips each tensor)" if cfg.max_grad_norm > 0 else ""))
        if self.lora is not None:  # the adapters' gradients are the ones to average across processes
            from .lora import AdaptedUNet

            self.unet, self.optimizer = accelerator.prepare(AdaptedUNet(models.unet, self.lora.network), optimizer)
            self.text_encoder = models.text_encoder
        elif self.text_encoder_training:
            self.unet, self.text_encoder, self.optimizer = accelerator.prepare(models.unet, models.text_encoder,
                                                                               optimizer)
        else:
            self.unet, self.optimizer = accelerator.prepare(models.unet, optimizer)
            self.text_encoder = models.text_encoder
        self.ema = None
        if cfg.use_ema and self.lora is None:
            every = resolve_update_every(cfg.ema_update_every, cfg.ema_on_cpu, self.device)
            self.ema = EMA(models.unet, cfg.ema_decay, cfg.ema_on_cpu, every)
            self.log(f"EMA of the UNet: decay up to {cfg.ema_decay:g} with warm-up, updated every {every} step(s)"
                     + (", kept in RAM" if cfg.ema_on_cpu else ""))

        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(models.scheduler_config)
        self.seed = pick_seed(training_seed(cfg))
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.step_inputs = StepInputs(
            training_set=self.training_set, unet=self.unet, text_encoder=self.text_encoder,
            frozen_text_encoder=models.text_encoder, noise_scheduler=self.noise_scheduler, generator=self.generator,
            clip_skip=cfg.clip_skip, offset_noise=cfg.offset_noise, min_snr_gamma=cfg.min_snr_gamma,
            prior_loss_weight=cfg.prior_loss_weight, split_loss=cfg.split_loss,
            input_perturbation=cfg.input_pertubation, dream=cfg.dream_detail_preservation if cfg.use_dream else None)
        self._bad_loss = torch.zeros((), dtype=torch.bool, device=self.device)  # any non-finite loss so far
        self.global_step = 0
        self.start_revision = cfg.revision
        self.start_epoch = 0
        self.skip_batches = 0
        if self.resume:
            self._restore()
        self.spectral = None
        if cfg.freeze_spectral_norm and cfg.train_unet:  # after a resume: the norms of the weights it continues
            self.spectral = SpectralNormFreeze(models.unet)
            self.log(f"freeze_spectral_norm: {len(self.spectral)} UNet weights keep their spectral norm")
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
        self._pace = TrainingPace(self.global_step, self.clock)
        self._charts_drawn_at, self._charts_step = self.clock(), None
        progress = self._progress_bar()
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
            self._check_finite()  # the last steps may not have been checked yet (off the CPU)
            if canceled:
                progress.close()
                self._flush_metrics()
                result.state = "canceled"
                self.log("training canceled")
                self._save("cancel")
        except NonFiniteLoss as stop:
            progress.close()
            self._stop_on_nan(stop)
        progress.close()
        self._flush_metrics()
        if result.state != "failed":  # charts up to the last step (a NaN stop logged nothing new)
            self._draw_charts()
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
            set_text_encoder_trainable(self.models.text_encoder, False, False)
            if self.lora is not None:
                self.lora.stop_text_training()
            self.training_set.cache_text(self.models.text_encoder, self.cfg.clip_skip)  # its outputs are fixed now
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
        accelerator, unet = self.accelerator, self.unet
        lr = self.lr_scheduler.get_last_lr()[0]
        if accelerator.num_processes > 1:  # different noise per process, reproducible on resume from the step
            self.generator.manual_seed((self.seed * 1_000_003 + self.global_step) * 1009 + accelerator.process_index)
        weight = prior_weight(self.cfg, self.global_step / self.plan.steps_per_epoch)  # annealed per step
        self.step_inputs.prior_loss_weight = weight
        total_loss = total_prior = total_instance = 0.0
        for index, indices in enumerate(group):
            last = index == len(group) - 1
            sync = accelerator.no_sync(unet) if not last and accelerator.num_processes > 1 else contextlib.nullcontext()
            with sync:
                # Backward outside autocast (as torch advises): autocast keeps a low-precision copy of every
                # weight it casts until its region ends, 1.7 GB at SD1.5 if the region spanned the backward.
                with accelerator.autocast():
                    loss, instance_part, prior_part = micro_batch_loss(self.step_inputs, indices,
                                                                       self.text_encoder_training)
                    loss = loss / len(group)
                accelerator.backward(loss)
            total_loss = total_loss + loss.detach()
            total_prior = total_prior + prior_part.detach() / len(group)
            total_instance = total_instance + instance_part.detach() / len(group)
        self._watch_for_nan(total_loss)
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
                         memory_mb=memory_mb(self.device), memory_kind=self._memory_kind(), prior_loss=total_prior,
                         instance_loss=total_instance, prior_weight=weight)

    def _trained_parameters(self) -> list:
        unet, text_encoder = self._parameter_lists()
        return unet + text_encoder

    def _parameter_lists(self) -> tuple[list, list]:
        """(UNet, text encoder) parameters being trained; rebuilt only when the text encoder freezes,
        since walking the modules every step costs a few milliseconds."""
        key = self.text_encoder_training
        if self._params_for != key and self.lora is not None:  # the adapters only, never the frozen base
            self._params, self._params_for = self.lora.trained_parameters(key), key
        elif self._params_for != key:
            unet = [p for p in self.unet.parameters() if p.requires_grad]
            text_encoder = [p for p in self.text_encoder.parameters() if p.requires_grad] \
                if self.text_encoder_training else []
            self._params, self._params_for = (unet, text_encoder), key
        return self._params

    def _cancel_requested(self) -> bool:
        """One process sees Cancel alone; agreeing on it is a collective that waits for every device, so
        with several processes the vote is held every `check_every` steps (Cancel answers within those)."""
        if self.accelerator.num_processes == 1:
            return self.control.cancel_requested.is_set()
        if self.global_step % self.check_every:
            return False
        return self._any_process(self.control.cancel_requested.is_set())

    def _watch_for_nan(self, loss) -> None:
        """Stop before a non-finite loss reaches the weights that get saved.

        The flag stays on the device; reading it waits for the device, so off the CPU it is read every
        `check_every` steps. Weights from those few steps are never saved: every save checks first.
        """
        import torch

        self._bad_loss = torch.logical_or(self._bad_loss, ~torch.isfinite(loss))
        if (self.global_step + 1) % self.check_every:
            return
        self._check_finite(step=self.global_step + 1)

    def _check_finite(self, step: int | None = None) -> None:
        """Read the NaN flag now (all processes agree); raise NonFiniteLoss when any loss so far was bad."""
        if self._any_process(bool(self._bad_loss)):
            raise NonFiniteLoss(self.global_step if step is None else step)

    def _check_weights_finite(self) -> None:
        """Before anything is written: the trained weights themselves (one device sync per save)."""
        import torch

        params = [p.detach() for p in self._trained_parameters()]
        if self.ema is not None:
            params += self.ema.shadow
        finite = torch.stack([torch.isfinite(p).all().to(self.device) for p in params]).all()
        if self._any_process(not bool(finite)):
            raise NonFiniteLoss(self.global_step)

    def _any_process(self, flag: bool) -> bool:
        """Under data-parallel training every process must stop at the same step, or the others hang
        waiting for its gradients: a stop seen by one process is agreed by all."""
        if self.accelerator.num_processes == 1:
            return flag
        import torch

        votes = self.accelerator.reduce(torch.tensor([float(flag)], device=self.device), reduction="sum")
        return bool(votes.item() > 0)

    def _stop_on_nan(self, stop: NonFiniteLoss) -> None:
        """Nothing is saved: working/, the checkpoints and the snapshots keep the last good weights."""
        from ..errors import DreamboothError

        self.metrics.discard()
        self.control.update(state="failed", finished_at=time.time())
        kept = self.result.checkpoints[-1] if self.result.checkpoints else "the weights from before this run"
        advice = [f"lower learning_rate (now {self.cfg.learning_rate:g})"]
        if self.accelerator.mixed_precision == "fp16":
            advice.append("use mixed_precision bf16 or no instead of fp16")
        message = f"{stop}; training stopped and nothing was saved from it. Kept: {kept}. Try: {'; '.join(advice)}"
        self.log(message)
        raise DreamboothError(message, field="learning_rate") from None

    def _memory_kind(self) -> str:
        return "VRAM" if self.device.type == "cuda" else "RAM (RSS)"

    def _after_step(self, epoch: int, progress) -> None:
        control = self.control
        if self.global_step % LOG_EVERY == 0:
            self._check_finite()  # the flush waits for the device anyway: no NaN row reaches the file
            self._flush_metrics(progress)
        control.update(step=self.global_step, epoch=epoch + 1)
        if control.sample_requested.is_set() or self.plan.previews_at_step(self.global_step):
            control.sample_requested.clear()
            self._flush_metrics()
            self._preview()
        requested = control.take_save_request()  # Generate Ckpt during training
        if requested is not None or self.plan.saves_at_step(self.global_step):
            self._save("during", requested)

    def _end_of_epoch(self, epoch: int) -> None:
        plan = self.plan
        if plan.saves_after(epoch):
            self._save("after" if epoch == plan.epochs else "during")
        if plan.previews_after(epoch):
            self._flush_metrics()
            self._preview()
        if plan.pauses_after(epoch) and self.cfg.epoch_pause_time > 0:
            self.control.update(state="paused")
            self.log(f"pausing {self.cfg.epoch_pause_time} s after epoch {epoch}")
            with self._pace.excluded():
                self._pause(self.cfg.epoch_pause_time)
            self.control.update(state="training", detail="")

    def _pause(self, seconds: float) -> None:
        """Wait, saying the time left each second; Cancel ends the pause early."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._detail(f"{left:.0f} s left")
            if self.control.cancel_requested.wait(min(1.0, left)):
                return

    def _detail(self, text: str) -> None:
        self.control.update(detail=text)

    # reporting --------------------------------------------------------------------------------------
    def _progress_bar(self):
        from tqdm.auto import tqdm

        return tqdm(total=self.plan.total_steps, initial=self.global_step, desc=f"Training {self.model.name}",
                    unit="step", disable=not self.accelerator.is_main_process, dynamic_ncols=True)

    def _flush_metrics(self, progress=None) -> None:
        rows = self.metrics.flush() if self.accelerator.is_main_process else self.metrics.discard()
        if not rows:
            return
        rate = self._pace.steps_per_second(self.global_step)
        remaining = self.plan.total_steps - self.global_step
        last = rows[-1]
        self.result.last_loss = last["loss"]
        self.control.update(loss=last["loss"], lr=last["lr"], memory_mb=last["memory_mb"],
                            memory_kind=last.get("memory_kind", ""), it_per_s=rate,
                            eta_s=remaining / rate if rate > 0 else None)
        if progress is not None:
            progress.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", refresh=False)
        if self.clock() - self._charts_drawn_at >= CHART_EVERY_S:  # the charts follow the training
            with self._pace.excluded():
                self._draw_charts()

    def _draw_charts(self) -> None:
        if not self.accelerator.is_main_process or self._charts_step == self.global_step:
            return
        drawn = charts.draw_charts(self.model.logging, self.model.name)
        self._charts_drawn_at, self._charts_step = self.clock(), self.global_step
        self.result.charts = drawn
        self.control.update(charts=[str(p) for p in drawn])

    # saving -----------------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        return self.start_revision + self.global_step

    def _save(self, reason: str, requested: dict | None = None) -> None:
        """Write what the saving switches ask for at this point: working weights, checkpoint, snapshot.
        `requested`: Generate Ckpt's export choices; it always gets its checkpoint."""
        with self._pace.excluded():
            self._save_now(reason, requested)

    def _save_now(self, reason: str, requested: dict | None = None) -> None:
        from .saving import SaveInputs, save_training_state

        # a Cancel right after an epoch's save (the same step) must not write the same files again
        done = self._written[1] if self._written[0] == self.revision else set()
        want_ckpt = requested is not None or (getattr(self.cfg, f"save_ckpt_{reason}") and "checkpoint" not in done)
        want_state = getattr(self.cfg, f"save_state_{reason}") and "snapshot" not in done
        if done and not (want_ckpt or want_state):
            return
        # never write weights from unchecked steps: off the CPU the flag is read only every few steps
        self._check_finite()
        self._check_weights_finite()
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
        # the same on every process (only the main one writes), so all of them skip the same saves
        saved = {name for name, wanted in (("checkpoint", want_ckpt), ("snapshot", want_state)) if wanted}
        self._written = (self.revision, done | saved | {"working"})
        self.control.update(state="training", detail="")

    def _preview(self) -> None:
        if not self.accelerator.is_main_process:
            return
        with self._pace.excluded():
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
        self._draw_charts()
        self.control.update(state="training", detail="",
                            samples=[str(p) for p in samples] or self.control.snapshot().samples)

    def _park_frozen(self, text_encoder_frozen: bool) -> None:
        """After caching, park the frozen modules whose outputs are cached until a preview or save needs them."""
        cached_text = text_encoder_frozen and self.training_set.embeddings is not None
        folder = self.model.path / PARKING_FOLDER / f"process{self.accelerator.process_index}"
        self.parking = FrozenParking(self.device, folder, self.log)
        self.parking.park([
            ("VAE", self.models.vae, parking_place(self.device, self.training_set.cached, self._offload_override)),
            ("text encoder", self.models.text_encoder, parking_place(self.device, cached_text, self._offload_override))])

    def _frozen_back(self, onto_device: bool = True):
        return self.parking.back(onto_device) if self.parking is not None else contextlib.nullcontext()

    def snapshot_state(self) -> dict:
        return {"seed": self.seed, "optimizer": self.cfg.optimizer, "global_step": self.global_step,
                "epochs_done": self._epochs_done,
                "batches_done_in_epoch": self._batches_done, "total_steps": self.plan.total_steps}

    def save_config(self) -> None:
        self.cfg.revision = self.revision
        save_config(self.cfg, self.model.config_file)

