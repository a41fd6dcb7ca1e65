"""Model layer: `load_vlm` returns a family adapter with one interface (see base.VLM)."""

from .base import VLM, Captions, Encoded
from .loading import load_vlm

__all__ = ["VLM", "Captions", "Encoded", "load_vlm"]
