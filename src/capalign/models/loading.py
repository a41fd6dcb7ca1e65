"""`load_vlm`: hub id or local path -> family adapter, with a clear one-line error for anything else."""

from __future__ import annotations

import logging
from pathlib import Path

from .. import CapalignError
from ..devices import resolve_device, resolve_dtype
from .base import VLM, Pooling

log = logging.getLogger(__name__)

# config.model_type -> (adapter module, adapter class, transformers model class)
FAMILIES = {
    "idefics3": ("idefics3", "Idefics3VLM", "Idefics3ForConditionalGeneration"),
    "qwen2_vl": ("qwen2_vl", "Qwen2VLM", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("qwen2_vl", "Qwen2VLM", "Qwen2_5_VLForConditionalGeneration"),
}

# written into a model folder before its training writes any weights, removed once the model is final: a folder
# that holds it is an interrupted (or still running) training run, never a model to load
UNFINISHED_MARKER = "capalign_unfinished.json"


def check_finished(name_or_path: str) -> None:
    """A one-line error for a local folder that a training run left unfinished (UNFINISHED_MARKER)."""
    marker = Path(name_or_path).expanduser() / UNFINISHED_MARKER
    if marker.is_file():
        raise CapalignError(f"{name_or_path} is an unfinished model: its training run was interrupted or is still running ({marker} exists); "
                            "re-run the training command to finish it, or choose another model")


def _config(name_or_path: str):
    from transformers import AutoConfig

    looks_local = name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists() or name_or_path.count("/") > 1
    if looks_local and not Path(name_or_path).expanduser().is_dir():
        what = "is a file, not a model folder" if Path(name_or_path).expanduser().exists() else "not found"
        raise CapalignError(f"model path {what}: {name_or_path} (expected a local model folder or a hub id like HuggingFaceTB/SmolVLM-256M-Base)")
    try:
        return AutoConfig.from_pretrained(str(Path(name_or_path).expanduser()) if looks_local else name_or_path)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CapalignError(f"cannot load model {name_or_path!r}: {first}") from None


def check_model(name_or_path: str, unfinished_ok: bool = False):
    """The transformers config of a model of a supported family (cheap: no weights); a one-line error otherwise,
    also for an unfinished folder (check_finished) unless `unfinished_ok` (the training run loading its own)."""
    if not unfinished_ok:
        check_finished(name_or_path)
    cfg = _config(name_or_path)
    if cfg.model_type not in FAMILIES:
        raise CapalignError(f"unsupported model family {cfg.model_type!r} for {name_or_path}; supported: {', '.join(FAMILIES)}")
    return cfg


def check_adapter(adapter: str) -> None:
    """A PEFT adapter folder has adapter_config.json (cheap check before any weights are loaded)."""
    hint = "expected a PEFT adapter folder, e.g. the output folder of `capalign vizer train`"
    if not Path(adapter).is_dir():
        raise CapalignError(f"adapter folder not found: {adapter} ({hint})")
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise CapalignError(f"{adapter} is not a PEFT adapter (no adapter_config.json); {hint}")


def resolve_prompt(prompt: str | None, adapter: str | None = None) -> str | None:
    """The prompt a model loaded with `adapter` is run under (models/prompts.py): `prompt` with {style} filled
    from the adapter's record, or, when prompt is None, the prompt the adapter was trained with; None: the
    family's default."""
    from .adapter import adapter_meta
    from .prompts import fill_prompt

    meta = adapter_meta(adapter) if adapter else {}
    if prompt is None:
        prompt = meta.get("prompt") if isinstance(meta.get("prompt"), str) else None
    return None if prompt is None else fill_prompt(prompt, "--prompt", style=meta.get("style"))


def load_processor(path: str, family: str):
    from transformers import AutoProcessor

    if family.startswith("qwen"):
        from .compat import load_processor as load_qwen_processor  # works without torchvision

        return load_qwen_processor(path)
    return AutoProcessor.from_pretrained(path)


def load_vlm(
    name_or_path: str,
    device: str = "auto",
    dtype: str = "auto",
    adapter: str | None = None,
    prompt: str | None = None,
    pooling: Pooling = "mean",
    states_layer: int = -1,
    text_only: bool = False,
    attn_implementation: str | None = "sdpa",
    load_in_8bit: bool = False,
    unfinished_ok: bool = False,
) -> VLM:
    """Load a VLM and wrap it in its family adapter.

    `adapter`: a PEFT adapter folder (e.g. the output of `capalign vizer train`), merged for inference
    speed only when asked by the caller; here it is loaded unmerged so it can keep training.
    `prompt`: the text prompt after the image; None: the adapter's training prompt (a capalign adapter records
    it), else the family default; "": no text, just the image (models/prompts.py). `{style}` in it is filled
    with the adapter's recorded style.
    `states_layer`: the LM hidden state that `caption_states` reads (-1: the last, after the final norm);
    `text_only`: `caption_states` runs the caption alone through the LM (no image, no prompt).
    `load_in_8bit`: bitsandbytes LLM.int8 weights (CUDA only). Checkpoints saved quantised (AWQ, GPTQ,
    bitsandbytes: a `quantization_config` in config.json) load through transformers' own integration,
    on CUDA only here; on other devices both are a clear error instead of a failure deep in a kernel.
    A folder that a training run left unfinished is refused (check_finished) unless `unfinished_ok`.
    """
    import importlib

    import transformers

    cfg = check_model(name_or_path, unfinished_ok)
    family = cfg.model_type
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    mod, cls_name, model_cls = FAMILIES[family]
    path = str(Path(name_or_path).expanduser()) if Path(name_or_path).expanduser().is_dir() else name_or_path
    quant = getattr(cfg, "quantization_config", None)
    method = (quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)) if quant else None
    if (load_in_8bit or method) and not dev.startswith("cuda"):
        what = f"{name_or_path!r} is a {method}-quantised checkpoint, which" if method else "8-bit loading (bitsandbytes)"
        raise CapalignError(f"{what} needs a CUDA device here (device is {dev}); use an unquantised checkpoint on {dev}")
    kw = {}
    if load_in_8bit:
        from transformers import BitsAndBytesConfig

        kw = dict(quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": dev})
    elif method:
        kw = dict(device_map={"": dev})  # quantised weights are placed at load time; .to() is not allowed for them
    try:
        model = getattr(transformers, model_cls).from_pretrained(path, dtype=torch_dtype, attn_implementation=attn_implementation, **kw)
        processor = load_processor(path, family)
    except (OSError, ValueError, ImportError) as e:  # ImportError: a quantisation backend is missing
        raise CapalignError(f"cannot load model {name_or_path!r}: {str(e).strip().splitlines()[0]}") from None
    if not kw:
        model.to(dev)
    model.eval()
    if adapter:
        check_adapter(adapter)
        from peft import PeftModel

        try:
            PeftModel.from_pretrained(model, adapter, is_trainable=False)  # injects LoRA layers into `model` in place
        except (RuntimeError, ValueError, KeyError) as e:  # size mismatch / no target module: another base model
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CapalignError(f"adapter {adapter} does not fit model {name_or_path}: {first[:200]}") from None
    cls = getattr(importlib.import_module(f".{mod}", __package__), cls_name)
    vlm = cls(model, processor, prompt=resolve_prompt(prompt, adapter), pooling=pooling, states_layer=states_layer,
              text_only=text_only)
    if adapter:
        from .adapter import check_adapter_base

        check_adapter_base(adapter, vlm, name_or_path)
    return vlm
