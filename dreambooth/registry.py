"""The parameter registry: every training setting declared once.

`db_config.json`, validation, the CLI's `--set key=value`, the REST schema and the tab's widgets are all
derived from these declarations. Key names follow the older Dreambooth extension's `db_config.json`
wherever it has the same setting, so users can bring their files along.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALL_MODEL_TYPES = ("v1x", "v2x-512", "v2x", "SDXL")

LR_SCHEDULERS = (
    "linear",
    "linear_with_warmup",
    "cosine",
    "cosine_annealing",
    "cosine_annealing_with_restarts",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)
OPTIMIZERS = ("Torch AdamW", "8bit AdamW", "Adafactor", "Lion", "8bit Lion", "Prodigy", "AdamW Dadaptation")
MIXED_PRECISION = ("no", "fp16", "bf16")
# Preview and class-image samplers (diffusers scheduler classes without the "Scheduler" suffix, as the older
# extension named them); each is built from the model's own noise schedule.
SAMPLERS = ("PNDM", "DDIM", "DDPM", "DEISMultistep", "DPMSolverMultistep", "DPMSolverSinglestep", "EulerDiscrete",
            "EulerAncestralDiscrete", "HeunDiscrete", "KDPM2Discrete", "KDPM2AncestralDiscrete", "UniPCMultistep")
ATTENTION = ("default", "sdpa", "xformers")


@dataclass(frozen=True)
class Field:
    """One setting. `kind` is int, float, bool, str or list; bounds are inclusive unless `above` is set."""

    name: str
    kind: type
    default: Any
    group: str
    label: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # exclusive lower bound (e.g. learning rates must be > 0)
    choices: tuple[str, ...] | None = None
    model_types: tuple[str, ...] = ALL_MODEL_TYPES
    hidden: bool = False  # bookkeeping the program maintains; not shown as a widget
    multiple_of: int | None = None  # ints only: the value must be a multiple of this

    def describe_range(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        low = f"> {_num(self.above)}" if self.above is not None else (
            f">= {_num(self.minimum)}" if self.minimum is not None else "")
        high = f"<= {_num(self.maximum)}" if self.maximum is not None else ""
        step = f"a multiple of {self.multiple_of}" if self.multiple_of else ""
        return " and ".join(part for part in (low, high, step) if part) or f"a {self.kind.__name__}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _f(name, kind, default, group, label, help, **extra) -> Field:
    return Field(name, kind, default, group, label, help, **extra)


# Model bookkeeping: written by Create and the trainer, carried in db_config.json.
_MODEL = [
    _f("model_name", str, "", "Model", "Model name", "Folder name under models/dreambooth.", hidden=True),
    _f("model_type", str, "v1x", "Model", "Model type",
       "Detected at Create: v1x (SD 1.x), v2x-512 (SD 2.x epsilon), v2x (SD 2.x 768 v-prediction), "
       "SDXL (SDXL base, 1024 px).",
       choices=ALL_MODEL_TYPES, hidden=True),
    _f("src", str, "", "Model", "Source checkpoint", "The checkpoint this model was created from.", hidden=True),
    _f("revision", int, 0, "Model", "Revision", "Lifetime optimizer steps; used in checkpoint names.",
       minimum=0, hidden=True),
    _f("epoch", int, 0, "Model", "Epoch", "Lifetime epochs trained.", minimum=0, hidden=True),
]

_INTERVALS = [
    _f("num_train_epochs", int, 100, "Intervals", "Training steps per image (epochs)",
       "How many times every instance image is seen. 100-200 is typical for a person.",
       minimum=1, maximum=100000),
    _f("save_embedding_every", int, 25, "Intervals", "Save model frequency (epochs)",
       "Write a checkpoint and a resume snapshot every N epochs (0 = only at the end).",
       minimum=0, maximum=100000),
    _f("save_preview_every", int, 5, "Intervals", "Save preview(s) frequency (epochs)",
       "Generate sample images and charts every N epochs (0 = only at the end).",
       minimum=0, maximum=100000),
    _f("epoch_pause_frequency", int, 0, "Intervals", "Pause after N epochs",
       "Pause training after every N epochs, e.g. to let the GPU cool (0 = never).",
       minimum=0, maximum=100000),
    _f("epoch_pause_time", int, 0, "Intervals", "Amount of time to pause between epochs (s)",
       "Length of each pause in seconds.", minimum=0, maximum=3600),
]

_BATCHING = [
    _f("train_batch_size", int, 1, "Batching", "Batch size",
       "Images per step. Larger batches use more VRAM.", minimum=1, maximum=256),
    _f("gradient_accumulation_steps", int, 1, "Batching", "Gradient accumulation steps",
       "Batches summed before each optimizer step: a larger effective batch without more VRAM.",
       minimum=1, maximum=256),
    _f("sample_batch_size", int, 1, "Batching", "Class batch size",
       "Images generated at once for class images and previews.", minimum=1, maximum=64),
    _f("gradient_set_to_none", bool, True, "Batching", "Set gradients to none when zeroing",
       "Frees gradient memory between steps instead of filling it with zeros."),
    _f("gradient_checkpointing", bool, True, "Batching", "Gradient checkpointing",
       "Recompute activations in the backward pass: much less VRAM, about 20% slower."),
    _f("compile_unet", bool, False, "Batching", "Compile the UNet (torch.compile)",
       "Opt-in: compile the UNet for faster steps on some GPUs. The first steps take minutes while it "
       "compiles (needs a C/C++ compiler on a CPU); measure it with "
       "`python -m dreambooth bench --set compile_unet=true`."),
    _f("max_grad_norm", float, 1.0, "Batching", "Max grad norm",
       "Clip the gradient norm to this value (0 = no clipping).", minimum=0, maximum=1000),
    _f("fused_backward_pass", bool, False, "Batching", "Fused backward pass",
       "Apply each weight's optimizer step inside the backward pass and free its gradient at once: saves "
       "memory the size of the trained weights (3.4 GB at SD1.5). Needs gradient accumulation 1, one process, "
       "mixed precision bf16 or no, and Torch AdamW, 8bit AdamW, Adafactor or (8bit) Lion; max grad norm then "
       "clips each tensor on its own, and the text encoder's max grad norm must be 0 while it trains."),
]

_LEARNING_RATE = [
    _f("learning_rate", float, 2e-6, "Learning Rate", "Learning rate",
       "UNet learning rate. 1e-6 to 5e-6 is typical for a full fine-tune.", above=0, maximum=1),
    _f("lr_scheduler", str, "constant_with_warmup", "Learning Rate", "Learning rate scheduler",
       "How the learning rate changes over the run.", choices=LR_SCHEDULERS),
    _f("lr_warmup_steps", int, 0, "Learning Rate", "Learning rate warmup steps",
       "Optimizer steps over which the learning rate rises from 0 (warmup schedulers).",
       minimum=0, maximum=10_000_000),
    _f("lr_cycles", int, 1, "Learning Rate", "Number of hard resets",
       "Cycles of the restart schedulers.", minimum=1, maximum=1000),
    _f("lr_power", float, 1.0, "Learning Rate", "Polynomial power",
       "Power of the polynomial decay.", above=0, maximum=100),
    _f("learning_rate_min", float, 1e-6, "Learning Rate", "Min learning rate",
       "Floor of the polynomial and cosine-annealing schedulers.", minimum=0, maximum=1),
    _f("lr_factor", float, 0.5, "Learning Rate", "Factor",
       "The linear scheduler lowers the learning rate to learning_rate × factor.", minimum=0, maximum=1),
    _f("lr_scale_pos", float, 0.5, "Learning Rate", "Scale position",
       "Fraction of the run over which the linear scheduler reaches its end value.", above=0, maximum=1),
    _f("optimizer", str, "Torch AdamW", "Learning Rate", "Optimizer",
       "Torch AdamW; 8bit AdamW / 8bit Lion (bitsandbytes) save optimizer memory; Adafactor (transformers); "
       "Lion (bitsandbytes); Prodigy (prodigyopt) and AdamW Dadaptation (dadaptation) adapt the learning "
       "rate themselves: set learning_rate to 1.0 for them.", choices=OPTIMIZERS),
    _f("txt_learning_rate", float, 1e-6, "Learning Rate", "Text encoder learning rate",
       "Learning rate of the text encoder while it trains (see stop_text_encoder).", above=0, maximum=1),
    _f("scale_lr", bool, False, "Learning Rate", "Scale Learning Rate",
       "Multiply learning_rate and txt_learning_rate by train_batch_size × gradient_accumulation_steps × "
       "processes (diffusers' --scale_lr), so each image moves the weights as much at any batch size. "
       "learning_rate_min scales with them."),
    _f("weight_decay", float, 0.01, "Learning Rate", "Weight decay",
       "AdamW weight decay.", minimum=0, maximum=1),
]

_TRAINING = [
    _f("stop_text_encoder", float, 0.0, "Training", "Step ratio of text encoder training",
       "Train the text encoder for this fraction of the epochs, then freeze it (0 = never, 1 = always). "
       "Improves likeness; costs VRAM and disables the text-embedding cache while it trains.",
       minimum=0, maximum=1),
    _f("sdxl_train_text_encoder", bool, True, "Training", "SDXL: train CLIP-L (text encoder 1)",
       "While the text encoder trains (stop_text_encoder > 0), train SDXL's first encoder, CLIP ViT-L (123M).",
       model_types=("SDXL",)),
    _f("sdxl_train_text_encoder_2", bool, False, "Training", "SDXL: train OpenCLIP-bigG (text encoder 2)",
       "While the text encoder trains, also train SDXL's second encoder, OpenCLIP ViT-bigG (695M): about "
       "11 GB more VRAM with AdamW; off keeps it frozen (its outputs still change while CLIP-L trains).", model_types=("SDXL",)),
    _f("clip_skip", int, 1, "Training", "Clip skip",
       "Use the output of the N-th last text-encoder layer (2 for anime-style models).", minimum=1, maximum=12),
    _f("prior_loss_weight", float, 0.75, "Training", "Prior loss weight",
       "Weight of the class-image (prior preservation) loss against the instance loss.", minimum=0, maximum=10),
    _f("offset_noise", float, 0.0, "Training", "Offset noise",
       "Adds a per-channel constant to the noise so the model learns very dark and bright images (0.05-0.1).",
       minimum=-1, maximum=1),
    _f("min_snr_gamma", float, 0.0, "Training", "Min-SNR gamma",
       "Min-SNR loss weighting (5 is typical; 0 = off): faster, steadier convergence.", minimum=0, maximum=20),
    _f("use_ema", bool, False, "Training", "Use EMA",
       "Keep an exponential moving average of the UNet weights (smoother results, more memory)."),
    _f("ema_decay", float, 0.9999, "Training", "EMA decay",
       "Largest weight of the old average at each step; as in diffusers, the decay warms up as "
       "min(ema_decay, (1 + step) / (10 + step)), so short runs are not stuck at their starting weights.",
       minimum=0, maximum=1),
    _f("ema_on_cpu", bool, False, "Training", "Keep EMA on the CPU",
       "Hold the EMA weights in system RAM instead of VRAM (slower steps, less VRAM)."),
    _f("ema_update_every", int, 0, "Training", "EMA update interval (steps)",
       "Update the EMA every N optimizer steps, with the decay compounded over the skipped steps "
       "(0 = automatic: every step, or every 10 steps when the EMA is kept on the CPU while training on a GPU).",
       minimum=0, maximum=1000),
    _f("infer_ema", bool, False, "Training", "Use EMA for samples",
       "Generate previews with the EMA weights."),
    _f("save_ema", bool, True, "Training", "Save EMA weights",
       "With use_ema, also write <name>_<step>_ema.safetensors holding the EMA UNet."),
]

_IMAGES = [
    _f("cache_latents", bool, True, "Image Processing", "Cache latents",
       "Encode every image once with the VAE instead of at every step (much faster)."),
    _f("cache_latents_on_disk", bool, False, "Image Processing", "Cache latents on disk",
       "Keep the latent cache in the model's cache/ folder so later runs skip encoding; "
       "entries are invalidated when the image, resolution, bucket or VAE changes."),
    _f("enable_buckets", bool, True, "Image Processing", "Aspect ratio buckets",
       "Group images by aspect ratio at about resolution x resolution pixels instead of cropping squares."),
    _f("hflip", bool, False, "Image Processing", "Apply horizontal flip",
       "Randomly mirror images (not for asymmetric subjects such as text or faces with a parting)."),
    _f("shuffle_tags", bool, False, "Image Processing", "Shuffle tags",
       "Shuffle comma-separated caption tags each time an image is used (keeps keep_tags first tags)."),
    _f("keep_tags", int, 1, "Image Processing", "Tags to keep in front",
       "With shuffle_tags, the first N tags stay in place.", minimum=0, maximum=100),
]

_PRECISION = [
    _f("mixed_precision", str, "fp16", "Image Processing", "Mixed precision",
       "Compute in fp16 or bf16 where the device supports it (fp16 falls back to fp32 on a CPU).",
       choices=MIXED_PRECISION),
    _f("resolution", int, 512, "Image Processing", "Max resolution",
       "Training images are resized and centre-cropped to this size (a multiple of 8: the VAE works in 8-pixel "
       "cells; buckets use multiples of 64 from 256 px up).",
       minimum=8, maximum=4096, multiple_of=8),
    _f("seed", int, -1, "Image Processing", "Seed", "Training seed (-1 = random, logged).",
       minimum=-1, maximum=2**32 - 1),
]

_SAVING = [
    _f("half_model", bool, False, "Saving", "Half model", "Save checkpoints in fp16 (half the size)."),
    _f("use_subdir", bool, False, "Saving", "Save checkpoint to subdirectory",
       "Put checkpoints in models/Stable-diffusion/<name>/."),
    _f("save_safetensors", bool, True, "Saving", "Save as safetensors",
       "Write .safetensors (safe to share) instead of .ckpt."),
    _f("save_ckpt_during", bool, True, "Saving", "Generate a .ckpt file when saving during training",
       "Write a single-file checkpoint at every save interval."),
    _f("save_ckpt_after", bool, True, "Saving", "Generate a .ckpt file when training completes",
       "Write a single-file checkpoint at the end of training."),
    _f("save_ckpt_cancel", bool, True, "Saving", "Generate a .ckpt file when training is canceled",
       "Write a single-file checkpoint when Cancel stops training."),
    _f("save_state_during", bool, True, "Saving", "Save a resume snapshot when saving during training",
       "Keep optimizer and scheduler state so training can resume exactly."),
    _f("save_state_after", bool, True, "Saving", "Save a resume snapshot when training completes",
       "Keep a snapshot of the finished run to continue it later."),
    _f("save_state_cancel", bool, True, "Saving", "Save a resume snapshot when training is canceled",
       "Keep a snapshot when Cancel stops training."),
    _f("save_every_steps", int, 0, "Saving", "Save model every N steps",
       "Save by steps instead of epochs (0 = use save_embedding_every).", minimum=0, maximum=10_000_000),
    _f("preview_every_steps", int, 0, "Saving", "Preview every N steps",
       "Preview by steps instead of epochs (0 = use save_preview_every).", minimum=0, maximum=10_000_000),
    _f("snapshots_to_keep", int, 1, "Saving", "Snapshots to keep",
       "Resume snapshots hold optimizer state (3x the UNet's size): keep only the newest N.",
       minimum=1, maximum=1000),
]

# The older extension's remaining settings, each with its meaning there (README "Advanced settings"). The tab
# shows these groups inside one closed "Advanced" accordion.
_ADVANCED_MODEL = "Advanced: model and sampling"
_ADVANCED_TEXT = "Advanced: text encoder and prompts"
_ADVANCED_LOSS = "Advanced: loss and noise"
_ADVANCED = [
    _f("custom_model_name", str, "", _ADVANCED_MODEL, "Custom model name",
       "Base name of the checkpoints written by saves and Generate Ckpt (<name>_<step>.safetensors, and the "
       "subdirectory with use_subdir); empty = the model's name."),
    _f("pretrained_vae_name_or_path", str, "", _ADVANCED_MODEL, "Alternate VAE",
       "Train (latents are encoded with it) and export with this VAE instead of the model's own: a diffusers "
       "VAE folder (config.json + weights) or a .safetensors VAE file as in models/VAE; empty = the model's."),
    _f("scheduler", str, "PNDM", _ADVANCED_MODEL, "Image generation scheduler",
       "The sampler for previews and class images, built from the model's noise schedule.", choices=SAMPLERS),
    _f("attention", str, "sdpa", _ADVANCED_MODEL, "Attention",
       "default: diffusers' plain attention (most memory); sdpa: PyTorch scaled-dot-product attention (fast, "
       "memory-efficient); xformers: needs the xformers package and a CUDA GPU.", choices=ATTENTION),
    _f("sanity_prompt", str, "", _ADVANCED_MODEL, "Sanity sample prompt",
       "An extra preview at every preview with this prompt and sanity_seed: the same picture each time, so "
       "overtraining shows as it drifts (empty = none)."),
    _f("sanity_seed", int, 420420, _ADVANCED_MODEL, "Sanity sample seed", "Seed of the sanity sample.",
       minimum=0, maximum=2**32 - 1),
    _f("deterministic", bool, False, _ADVANCED_MODEL, "Deterministic",
       "Deterministic algorithms only (cuDNN and CUDA included; slower on a GPU), and seed 0 when seed is -1: "
       "two runs of the same settings give the same weights."),
    _f("full_mixed_precision", bool, False, _ADVANCED_MODEL, "Full mixed precision",
       "With mixed_precision bf16, hold the UNet's own weights in bf16 (no fp32 copy: about half the UNet "
       "memory, coarser updates). fp16 weights would need a loss scaler that cannot unscale them: with fp16 "
       "the weights stay fp32."),
    _f("max_token_length", int, 75, _ADVANCED_TEXT, "Max token length",
       "Caption tokens used: 75, or 150/225/300 for long captions, encoded in 75-token chunks and joined as "
       "the WebUI encodes long prompts (use the same prompts in txt2img).",
       minimum=75, maximum=300, multiple_of=75),
    _f("pad_tokens", bool, True, _ADVANCED_TEXT, "Pad tokens",
       "Pad every caption to the full length (max_token_length in 77-token chunks, as the WebUI does); off = "
       "pad only to the longest caption of the training set (shorter text conditioning)."),
    _f("strict_tokens", bool, False, _ADVANCED_TEXT, "Strict tokens",
       "Encode each part of a caption separated by , ; . ! or ? between its own start and end tokens, so "
       "tags do not run into each other."),
    _f("freeze_clip_normalization", bool, False, _ADVANCED_TEXT, "Freeze CLIP normalization layers",
       "While the text encoder trains, its layer norms keep their weights and it runs in eval mode (no dropout)."),
    _f("tenc_weight_decay", float, 0.01, _ADVANCED_TEXT, "Text encoder weight decay",
       "Weight decay of the text encoder's parameters (weight_decay is the UNet's).", minimum=0, maximum=1),
    _f("tenc_grad_clip_norm", float, 0.0, _ADVANCED_TEXT, "Text encoder max grad norm",
       "Clip the text encoder's gradient norm to this value on its own (0 = clipped together with the UNet "
       "by max_grad_norm). Not with the fused backward pass, which has no whole gradient to clip.",
       minimum=0, maximum=1000),
    _f("train_unet", bool, True, _ADVANCED_LOSS, "Train UNet",
       "Off: the UNet stays exactly as it is and only the text encoder trains (set stop_text_encoder above 0)."),
    _f("prior_loss_scale", bool, False, _ADVANCED_LOSS, "Scale prior loss",
       "Lower the prior loss weight linearly from prior_loss_weight to prior_loss_weight_min over the first "
       "prior_loss_target epochs, then keep the minimum."),
    _f("prior_loss_target", int, 100, _ADVANCED_LOSS, "Prior loss target (epochs)",
       "Epochs over which the prior loss weight falls to its minimum.", minimum=1, maximum=100000),
    _f("prior_loss_weight_min", float, 0.1, _ADVANCED_LOSS, "Minimum prior loss weight",
       "The prior loss weight at and after prior_loss_target epochs.", minimum=0, maximum=10),
    _f("disable_class_matching", bool, False, _ADVANCED_LOSS, "Disable class matching",
       "Use the class folder's images as they are: every one found is used, none is generated to match the "
       "instance captions or the count num_class_images_per asks for."),
    _f("split_loss", bool, True, _ADVANCED_LOSS, "Split loss",
       "Average the instance and the prior (class) loss separately, then add them with prior_loss_weight; "
       "off = one average over all rows, class rows weighted by prior_loss_weight."),
    _f("input_pertubation", bool, False, _ADVANCED_LOSS, "Input perturbation",
       "Perturb the noise added to the latents by 0.1 x extra noise while the target stays the unperturbed "
       "noise (Ning et al. 2023; diffusers' --input_perturbation 0.1): less exposure bias."),
    _f("use_dream", bool, False, _ADVANCED_LOSS, "Use DREAM",
       "DREAM (Zhou et al. 2023): shift the noisy input and the target by the model's own error (one extra "
       "UNet forward per step without gradients): sharper detail, about 30% slower steps."),
    _f("dream_detail_preservation", float, 0.5, _ADVANCED_LOSS, "DREAM detail preservation",
       "Power p of DREAM's weight (1 - alpha_cumprod)^p: higher keeps more detail.", minimum=0, maximum=10),
    _f("dynamic_img_norm", bool, False, _ADVANCED_LOSS, "Dynamic image normalization",
       "Normalize each image by its own mean and standard deviation before the VAE instead of mapping "
       "pixels to [-1, 1]."),
    _f("freeze_spectral_norm", bool, False, _ADVANCED_LOSS, "Freeze spectral norm",
       "Keep the spectral norm of every UNet linear and conv weight at its starting value while training "
       "(sigma-reparametrization, Zhai et al. 2023): steadier training at higher learning rates."),
]

_LORA = [
    _f("use_lora", bool, False, "Lora", "Use LoRA",
       "Train a small low-rank adapter instead of the whole UNet: a fraction of the memory, a file of a few MB "
       "in models/Lora (the WebUI's <lora:NAME_<step>:1> prompt tag) and the base model left unchanged."),
    _f("use_lora_extended", bool, False, "Lora", "Use LoRA extended (conv layers)",
       "Also adapt the UNet's ResNet convolutions (kohya's LoCon / conv_dim): more capacity, a larger file."),
    _f("lora_learning_rate", float, 1e-4, "Lora", "LoRA UNet learning rate",
       "Learning rate of the UNet adapter (1e-4 is typical; LoRA needs far higher rates than a full fine-tune).",
       above=0, maximum=1),
    _f("lora_txt_learning_rate", float, 5e-5, "Lora", "LoRA text encoder learning rate",
       "Learning rate of the text-encoder adapter, trained while stop_text_encoder says the text encoder trains.",
       above=0, maximum=1),
    _f("lora_unet_rank", int, 4, "Lora", "LoRA UNet rank",
       "Rank (kohya's network_dim) of the UNet adapter: higher learns more detail, the file grows linearly.",
       minimum=1, maximum=256),
    _f("lora_txt_rank", int, 4, "Lora", "LoRA text encoder rank",
       "Rank of the text-encoder adapter.", minimum=1, maximum=256),
    _f("lora_unet_alpha", float, 0.0, "Lora", "LoRA UNet alpha",
       "The adapter's output is scaled by alpha / rank (kohya's network_alpha); 0 = the rank (scale 1).",
       minimum=0, maximum=1024),
    _f("lora_txt_alpha", float, 0.0, "Lora", "LoRA text encoder alpha",
       "alpha of the text-encoder adapter; 0 = its rank (scale 1).", minimum=0, maximum=1024),
    _f("lora_dropout", float, 0.0, "Lora", "LoRA dropout",
       "Dropout on the adapters' inputs while training (0 = off; 0.1 can reduce overfitting).", minimum=0,
       maximum=0.9),
    _f("lora_weight", float, 0.8, "Lora", "LoRA merge weight",
       "Generate Ckpt with a Lora Model chosen adds this fraction of the LoRA to the base weights.",
       minimum=0, maximum=4),
    _f("lora_model_name", str, "", "Lora", "Lora Model",
       "A LoRA file in models/Lora (or this model's lora/ folder). Training with use_lora continues from it (its "
       "ranks must match); Generate Ckpt merges it into the base at lora_weight (with use_lora and no Lora "
       "Model chosen: this model's newest LoRA)."),
    _f("save_lora_for_extra_net", bool, True, "Lora", "Save LoRA for extra networks",
       "Write the LoRA files into the WebUI's Lora folder (models/Lora, or --lora-dir), where txt2img lists "
       "them; off: into this model's lora/ folder."),
]

_CONCEPTS = [
    _f("use_concepts", bool, False, "Concepts", "Use concepts list",
       "Read the concepts from concepts_path (a JSON file or JSON text) instead of the editors."),
    _f("concepts_path", str, "", "Concepts", "Concepts list",
       "Path to a concepts JSON file, or the JSON text itself."),
    _f("concepts_list", list, [], "Concepts", "Concepts",
       "The concepts to train: a list of objects with the concept fields."),
]

FIELDS: tuple[Field, ...] = tuple(
    _MODEL + _INTERVALS + _BATCHING + _LEARNING_RATE + _TRAINING + _IMAGES + _PRECISION + _SAVING + _ADVANCED
    + _LORA
    + _CONCEPTS)

CONCEPT_FIELDS: tuple[Field, ...] = (
    _f("instance_data_dir", str, "", "Instance", "Dataset directory",
       "Folder with the instance images (searched recursively)."),
    _f("instance_prompt", str, "[filewords]", "Instance", "Instance prompt",
       "Prompt for the instance images. [filewords] takes the caption from a .txt file beside the image, "
       "else from the file name."),
    _f("instance_token", str, "", "Instance", "Instance token",
       "Your subject's rare token, e.g. 'ohwx'; replaces it in [filewords] captions."),
    _f("class_token", str, "", "Instance", "Class token", "The subject's class, e.g. 'person'."),
    _f("class_data_dir", str, "", "Class", "Classification dataset directory",
       "Folder of class images for prior preservation (generated into classifiers_<i> when empty)."),
    _f("class_prompt", str, "[filewords]", "Class", "Class prompt", "Prompt for the class images."),
    _f("class_negative_prompt", str, "", "Class", "Class negative prompt",
       "Negative prompt used when generating class images."),
    _f("num_class_images_per", int, 0, "Class", "Class images per instance image",
       "0 disables prior preservation.", minimum=0, maximum=1000),
    _f("class_guidance_scale", float, 7.5, "Class", "Classification CFG scale",
       "Guidance scale for class images.", minimum=0, maximum=50),
    _f("class_infer_steps", int, 40, "Class", "Classification steps",
       "Sampling steps for class images.", minimum=1, maximum=500),
    _f("save_sample_prompt", str, "", "Sample", "Sample image prompt",
       "Prompt for preview samples (empty = the first instance caption)."),
    _f("save_sample_negative_prompt", str, "", "Sample", "Sample negative prompt",
       "Negative prompt for preview samples."),
    _f("save_sample_template", str, "", "Sample", "Sample prompt template file",
       "A text file with one sample prompt per line."),
    _f("n_save_sample", int, 1, "Sample", "Number of samples to generate",
       "Samples generated at every preview.", minimum=0, maximum=100),
    _f("sample_seed", int, -1, "Sample", "Sample seed", "-1 = a new seed each preview.",
       minimum=-1, maximum=2**32 - 1),
    _f("save_guidance_scale", float, 7.5, "Sample", "Sample CFG scale",
       "Guidance scale for previews.", minimum=0, maximum=50),
    _f("save_infer_steps", int, 20, "Sample", "Sample steps", "Sampling steps for previews.",
       minimum=1, maximum=500),
)

FIELD_BY_NAME = {field.name: field for field in FIELDS}
CONCEPT_FIELD_BY_NAME = {field.name: field for field in CONCEPT_FIELDS}
