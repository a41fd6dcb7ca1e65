"""`capalign style wrlogp`: WR-LogP of a model (and its base, with --adapter) on the test split of preference data."""

from __future__ import annotations

from dataclasses import dataclass

from .. import CapalignError
from ..config import arg, save_config, show_config
from ..io import atomic_write_json
from ..utils import print0
from .config import DEFAULT_PROMPT, StyleDataArgs


@dataclass
class WrLogpConfig(StyleDataArgs):
    """WR-LogP of a model on the test split: share of pairs whose chosen caption has the higher mean (and summed)
    log-probability given image and prompt. With --adapter, the base model is measured beside it, under the same
    prompt: the one the adapter was trained with unless --prompt gives another (docs/style.md)."""

    prompt: str = arg(None, "Text prompt after the image ({style} is replaced; '' for none, just the image); default: the prompt "
                            f"the --adapter was trained with (its capalign_adapter.json), else style train's default {DEFAULT_PROMPT!r}. "
                            "Base and adapter are scored under the same prompt.")

    model: str = arg("", "Model: hub id or local folder.")
    adapter: str = arg("", "PEFT adapter folder (e.g. from `capalign style train`); the base model is measured too.")
    style: str = arg("", "Style of the pairs to score (e.g. humorous).")
    batch_size: int = arg(8, "Pairs per batch (one vision pass per distinct image).")
    limit: int = arg(0, "Score only the first N test pairs (0: all).")
    device: str = arg("auto", "Device: auto, cpu, cuda, mps.")
    dtype: str = arg("float32", "Weights dtype: float32, bfloat16, auto.")
    out: str = arg("", "Write the result (per-pair log-probabilities included) to this JSON file.")

    def __post_init__(self):
        super().__post_init__()
        if not self.model:
            raise ValueError("--model is required")
        if not self.style:
            raise ValueError("--style is required")
        if self.batch_size < 1 or self.limit < 0:
            raise ValueError("batch_size must be >= 1 and limit >= 0")


def run_wrlogp(cfg: WrLogpConfig) -> dict:
    from ..metrics.style import wr_logp
    from ..models import load_vlm
    from ..utils import progress

    show_config(cfg)
    if cfg.prompt is None:  # the training prompt of the adapter, else style train's default: measured as trained
        from ..models.adapter import adapter_meta

        recorded = adapter_meta(cfg.adapter).get("prompt") if cfg.adapter else None
        cfg.prompt = recorded if isinstance(recorded, str) else DEFAULT_PROMPT
    prefs = cfg.open_data(cfg.style)  # every pair carries the prompt, {style} filled in
    print0(prefs.summary())
    pairs = prefs.test[: cfg.limit or None]
    if not pairs:
        raise CapalignError(f"no {cfg.style} pairs in the test split of {cfg.data}; raise --test_share")
    runs = {"base": None} if not cfg.adapter else {"base": None, "adapter": cfg.adapter}
    results = {}
    for name, adapter in runs.items():
        vlm = load_vlm(cfg.model, device=cfg.device, dtype=cfg.dtype, adapter=adapter or None)
        with progress() as bar:
            task = bar.add_task(f"WR-LogP {name}", total=len(pairs), rate="")
            r = wr_logp(vlm, pairs, cfg.batch_size, on_batch=lambda k: bar.advance(task, k))
        results[name] = r
        print0(f"{name}: WR-LogP {r['wr_logp']:.3f} (mean log-prob), {r['wr_logp_sum']:.3f} (summed), "
               f"{r['n']} pairs, {len(r['skipped'])} skipped" + (f" (e.g. {r['skipped'][0][0]}: {r['skipped'][0][1]})" if r["skipped"] else ""))
        del vlm
    out = {"data": cfg.data, "style": cfg.style, "model": cfg.model, "adapter": cfg.adapter, "prompt": pairs[0].prompt, "results": results,
           "definition": "WR-LogP: share of test pairs with mean_t log p(chosen_t) > mean_t log p(rejected_t) given image and "
                         "prompt (end token included; ties lose); wr_logp_sum uses sums (docs/style.md)"}
    if cfg.out:
        atomic_write_json(cfg.out, out)
        save_config(cfg, cfg.out + ".config.json")
        print0(f"wrote {cfg.out}")
    return out
