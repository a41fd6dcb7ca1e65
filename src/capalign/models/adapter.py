"""Which base model an adapter belongs to.

An adapter trained on one base loads without complaint onto another base of the same architecture (or
fails deep inside peft with a size mismatch for another one). capalign adapters carry a probe of their
base: a few weights that LoRA never changes (input/output embeddings, the first vision weight), and the
prompt they were trained with, which `load_vlm` uses when no other prompt is asked for (models/prompts.py).
"""

from __future__ import annotations

ADAPTER_META = "capalign_adapter.json"


def base_probe(vlm, k: int = 16) -> list[float]:
    m = vlm.model
    tensors = [m.get_input_embeddings().weight, m.get_output_embeddings().weight, next(iter(vlm.vision_parameters()))]
    return [float(x) for t in tensors for x in t.detach().flatten()[:k].float().cpu()]


def write_adapter_meta(folder, vlm, base_model: str, **extra) -> None:
    from pathlib import Path

    from ..io import atomic_write_json

    atomic_write_json(Path(folder) / ADAPTER_META, {"base_model": base_model, "family": vlm.family, "base_probe": base_probe(vlm), **extra})


def adapter_meta(folder) -> dict:
    """What capalign recorded about an adapter (base model, family, probe, and the prompt it was trained with:
    "" for no text; a style adapter also its style); {} for an adapter capalign did not write."""
    import json
    from pathlib import Path

    path = Path(folder) / ADAPTER_META
    try:
        meta = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def check_adapter_base(folder, vlm, model_name: str) -> None:
    """Raise CapalignError when the adapter in `folder` was trained on another base model than `vlm`."""
    import json
    from pathlib import Path

    import torch

    from .. import CapalignError

    path = Path(folder) / ADAPTER_META
    if not path.exists():
        return  # not written by capalign (or an older version): nothing to check against
    meta = json.loads(path.read_text())
    want, have = torch.tensor(meta.get("base_probe", [])), torch.tensor(base_probe(vlm))
    # bf16 vs fp32 loads round the weights: compare with a tolerance far below the gap between two models
    if meta.get("family") != vlm.family or want.shape != have.shape or not torch.allclose(want, have, rtol=1e-2, atol=1e-3):
        raise CapalignError(f"adapter {folder} was trained on another base model ({meta.get('base_model')}), not {model_name}")
