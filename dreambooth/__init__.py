"""The Dreambooth tab: Dreambooth fine-tuning for Stable Diffusion, as a WebUI extension and standalone.

Importing the package is cheap (no torch): heavy modules are imported where they are used.
"""
__version__ = "0.1.0"
