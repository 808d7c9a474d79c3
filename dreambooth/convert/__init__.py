"""Model conversion: single-file (LDM key layout) checkpoints <-> diffusers folders, plus the CLIP tokenizer.

Submodules import torch/diffusers lazily when called; importing this package is free.
  checkpoint_io  safe loading of .safetensors / .ckpt (never unpickles code)
  detect         which model family a state dict is
  ldm_map        diffusers <-> LDM key mapping (any SD1-topology size); ldm_infer: configs from shapes
  tokenizer      CLIP tokenizer files from the host cache or the carried BPE file
  diffusers_io   write / load a complete diffusers folder
  create         source checkpoint or folder -> working diffusers folder
  export         working folder or live modules -> single-file checkpoint for the WebUI
"""
