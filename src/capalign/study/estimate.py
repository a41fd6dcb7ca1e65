"""`capalign estimate RECIPE`: expected GPU memory and time per stage of a recipe. ESTIMATES, not measurements.

Where the numbers come from:
- the model: its config.json read with transformers' AutoConfig (a local folder, the hub cache, or, for hub
  ids that cannot be downloaded, recipes/configs/<org>--<name>/ beside the recipe: SmolVLM-Base and
  Qwen2-VL-2B-Instruct as published on the hub) -> parameter counts of the vision tower, connector and LM,
  and image tokens per image (Idefics3: tiles of the processor's `max_image_size` after resizing the
  longest edge to `size`, plus the global image; Qwen2-VL: 14-px patches merged 2x2) for `--image_size`;
- FLOPs: 2 x parameters x tokens per forward, plus attention 4 x layers x n^2 x width (vision: per tile;
  LM: 2 x T^2 x width, causal). Training with LoRA on a frozen model: backward ~= one more forward (input
  gradients only); the vision tower runs once per image without gradients;
- generation: per new token, the time of the larger of compute (2 x LM parameters x batch) and reading
  the LM weights and the KV cache once from memory (decoding is memory-bound at small batches);
- time = FLOPs / (peak x `--mfu`), with the GPU's datasheet dense bf16 peak and memory bandwidth;
- memory: bf16 weights + LoRA parameters, gradients and AdamW states in fp32 (16 bytes each) + the largest
  of: training activations (per LM layer and token, what autograd keeps with LoRA on every linear layer:
  the two RMSNorms' inputs and outputs, the dropped-out inputs of the q/k/v/o/gate/up adapters (6 x width)
  and of down (MLP width), the rotated q and k, the attention's inputs and output, the MLP's gate, up,
  activation and product: ~(14 x width + 4 x KV width + 5 x MLP width) values, 2026-12-04, after
  benchmarks/full_size.py measured the earlier 7 x width + 4 x MLP width 38% low on a DPO step;
  with gradient_checkpointing only the layer inputs plus one layer)
  and the KV cache of generation; + 10% for the CUDA context and fragmentation.
CPU stages (the nano Base, evaluation) are not estimated.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .. import CapalignError
from ..config import arg, show_config
from ..utils import console
from .recipe import load_recipe

GPUS = {  # datasheet dense bf16 TFLOP/s, memory bandwidth TB/s, memory GB
    "A100-80GB": (312.0, 2.04, 80), "A100-40GB": (312.0, 1.56, 40), "H100-SXM": (989.0, 3.35, 80),
    "L4": (121.0, 0.30, 24), "A10G": (125.0, 0.60, 24), "RTX4090": (165.0, 1.01, 24),
}
FP32 = {"A100-80GB": 19.5, "A100-40GB": 19.5, "H100-SXM": 67.0, "L4": 30.3, "A10G": 31.2, "RTX4090": 82.6}  # datasheet FP32 TFLOP/s (no TF32)


@dataclass
class EstimateConfig:
    """Estimate GPU memory and time per stage of a recipe (from parameter, activation and FLOP counts; estimates)."""

    recipe: str = arg(help="Recipe YAML.")
    set: list[str] = arg([], "Override recipe fields as in `capalign study` (stage.field=value).")
    gpu: str = arg("A100-80GB", f"GPU whose datasheet peak and bandwidth set the times: {', '.join(GPUS)}.")
    mfu: float = arg(0.4, "Share of the peak FLOP/s that compute-bound work reaches (0.3-0.5 is typical for these sizes).")
    image_size: str = arg("640x480", "Typical image (WxH) of the data, for image tokens per image (COCO: ~640x480).")
    n_unlabeled: int = arg(None, "Number of unlabeled images when data.unlabeled is a source of unknown size (else vizer.limit / max_steps).")
    n_test: int = arg(5000, "Number of test images when data.test is a source (else data.test_limit).")
    style_pairs: int = arg(None, "Training pairs per style of the style sweep's data when it is a folder or dataset (FlickrStyle10K as "
                                 "distributed: 7000 images per style, so 5600 at test_share 0.2); shapes:N is counted.")
    caption_tokens: int = arg(32, "Typical tokens of a training caption (style sweep: chosen and rejected).")

    def __post_init__(self):
        if self.gpu not in GPUS:
            raise ValueError(f"unknown gpu {self.gpu!r}; choose from {', '.join(GPUS)}")
        if not 0 < self.mfu <= 1:
            raise ValueError("mfu must be in (0, 1]")


def find_config(model: str, recipe_dir: Path) -> Path | str:
    """A folder with config.json for `model`: the model folder itself, recipes/configs/<org>--<name>, or the id (hub/cache)."""
    if Path(model).is_dir():
        return Path(model)
    for d in (recipe_dir / "configs", Path(__file__).resolve().parents[3] / "recipes" / "configs"):
        if (d / model.replace("/", "--") / "config.json").is_file():
            return d / model.replace("/", "--")
    return model


def model_facts(model: str, recipe_dir: Path, image_wh: tuple[int, int]) -> dict:
    """Parameter counts and per-image token counts of a VLM from its config."""
    from transformers import AutoConfig

    where = find_config(model, recipe_dir)
    try:
        cfg = AutoConfig.from_pretrained(str(where))
    except (OSError, ValueError) as e:
        raise CapalignError(f"estimate needs the config of {model}: not a folder, not in recipes/configs/, and the hub says: "
                            f"{str(e).splitlines()[0]}") from None
    pre = {}
    if isinstance(where, Path) and (where / "preprocessor_config.json").is_file():
        pre = json.loads((where / "preprocessor_config.json").read_text())
    t, v = cfg.get_text_config(), cfg.vision_config
    d, layers, inter, V = t.hidden_size, t.num_hidden_layers, t.intermediate_size, t.vocab_size
    heads, kv = t.num_attention_heads, getattr(t, "num_key_value_heads", None) or t.num_attention_heads
    hd = getattr(t, "head_dim", None) or d // heads
    lm_layer = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * inter  # q, o + k, v + gated MLP
    tied = bool(getattr(cfg, "tie_word_embeddings", False) or getattr(t, "tie_word_embeddings", False))
    W, H = image_wh
    if cfg.model_type == "idefics3":
        dv, lv, iv, p, tile = v.hidden_size, v.num_hidden_layers, v.intermediate_size, v.patch_size, v.image_size
        longest = (pre.get("size") or {}).get("longest_edge", 4 * tile)
        s = longest / max(W, H)
        tiles = math.ceil(W * s / tile) * math.ceil(H * s / tile) + 1  # + the global image
        n_patch = (tile // p) ** 2  # per tile
        vision = lv * (4 * dv * dv + 2 * dv * iv) + 3 * p * p * dv + n_patch * dv
        connector = dv * cfg.scale_factor ** 2 * d
        img_tokens = tiles * n_patch // cfg.scale_factor ** 2
        vision_flops = tiles * (2 * lv * (4 * dv * dv + 2 * dv * iv) * n_patch + 4 * lv * n_patch ** 2 * dv)
    elif cfg.model_type in ("qwen2_vl", "qwen2_5_vl"):
        vd = v.to_dict()
        dv, lv, p, m = vd.get("embed_dim") or vd["hidden_size"], vd["depth"], vd["patch_size"], vd["spatial_merge_size"]
        mlp = 3 * dv * vd["intermediate_size"] if "intermediate_size" in vd and cfg.model_type == "qwen2_5_vl" else 2 * dv * dv * vd.get("mlp_ratio", 4)
        f = p * m
        n_patch = (max(f, round(W / f) * f) // p) * (max(f, round(H / f) * f) // p)
        vision = lv * (4 * dv * dv + mlp) + 3 * vd.get("temporal_patch_size", 2) * p * p * dv
        connector = (dv * m * m) ** 2 + dv * m * m * d
        img_tokens, tiles = n_patch // (m * m), 1
        vision_flops = 2 * lv * (4 * dv * dv + mlp) * n_patch + 4 * lv * n_patch ** 2 * dv  # (Qwen2.5: windowed, less)
    else:
        raise CapalignError(f"estimate knows idefics3 and qwen2_vl configs, not {cfg.model_type}")
    lm = layers * lm_layer
    return {"model": model, "config_from": str(where), "family": cfg.model_type, "d": d, "layers": layers, "inter": inter, "kv": kv, "hd": hd,
            "vocab": V, "lm": lm, "embed": V * d * (1 if tied else 2), "vision": vision, "connector": connector,
            "total": lm + V * d * (1 if tied else 2) + vision + connector, "img_tokens": img_tokens, "tiles": tiles,
            "vision_flops": vision_flops}


class Costs:
    """FLOP, time and memory formulas for one model on one GPU (see the module docstring)."""

    def __init__(self, f: dict, gpu: str, mfu: float):
        self.f, (self.peak, self.bw, self.mem) = f, GPUS[gpu]
        self.rate = self.peak * 1e12 * mfu

    def lm_forward(self, tokens: int, batch: int) -> float:  # FLOPs of one LM forward over `tokens` (no LM head)
        f = self.f
        return batch * (2 * f["lm"] * tokens + 2 * f["layers"] * tokens ** 2 * f["d"])

    def vision_s(self, images: int) -> float:
        return images * (self.f["vision_flops"] + 2 * self.f["connector"] * self.f["img_tokens"]) / self.rate

    def generate_s(self, prompt: int, new: int, batch: int) -> float:
        f = self.f
        prefill = self.lm_forward(prompt, batch) / self.rate
        weights = 2 * (f["lm"] + f["vocab"] * f["d"])  # bytes read per decode step (bf16)
        per_step = max(batch * 2 * (f["lm"] + f["vocab"] * f["d"]) / self.rate, (weights + self.kv_bytes(prompt + new, batch)) / (self.bw * 1e12))
        return prefill + new * per_step

    def kv_bytes(self, tokens: int, batch: int) -> float:
        f = self.f
        return 2 * f["layers"] * f["kv"] * f["hd"] * tokens * batch * 2

    def weights_gb(self) -> float:
        return 2 * self.f["total"] / 1e9

    def lora_params(self, r: int) -> int:
        f = self.f
        q, kv = f["d"] + f["d"], f["d"] + f["kv"] * f["hd"]
        return f["layers"] * r * (2 * q + 2 * kv + 2 * (f["d"] + f["inter"]) + (f["inter"] + f["d"]))

    def train_act_bytes(self, tokens: int, batch: int, checkpointing: bool) -> float:
        f = self.f
        per_layer = (14 * f["d"] + 4 * f["kv"] * f["hd"] + 5 * f["inter"]) * 2  # bf16 values autograd keeps (module docstring)
        if checkpointing:
            return batch * tokens * (f["layers"] * f["d"] * 2 + per_layer)
        return batch * tokens * f["layers"] * per_layer


def _n(value, fallback) -> int | None:
    return value if isinstance(value, int) else fallback


def estimate(recipe, facts: dict, cfg: EstimateConfig, judge: dict | None = None) -> list[dict]:
    """Rows {"stage", "what", "memory_gb", "minutes"} per seed, for the GPU stages of the recipe (`judge`: the
    facts of the rl stage's judge model, if it has one)."""
    from .stages import STAGES

    c, f, sec = Costs(facts, cfg.gpu, cfg.mfu), facts, recipe.sections
    prompt = f["img_tokens"] + 16  # image tokens + a short text prompt
    data = STAGES["data"].opts(sec.get("data") or {})
    systems = 1  # the Base, plus every ViZer run's evaluated adapters
    if "vizer" in sec:
        o = STAGES["vizer"].opts(sec["vizer"])
        arms = len(o.variants or STAGES["mapper"].opts(sec.get("mapper") or {}).variants) * len(o.sampling or [1])
        systems += arms * max(1, len(o.steps or []))
    if "rl" in sec:
        systems += len(STAGES["rl"].opts(sec["rl"]).rewards)
    rows = []
    if "mapper" in sec:
        m = STAGES["mapper"].command_config(None, sec["mapper"], model="x", data="x", out="x")
        for v in STAGES["mapper"].opts(sec["mapper"]).variants:
            n, b, new = m.samples, m.feature_batch_size, m.max_new_tokens
            s = c.vision_s(n) + (c.generate_s(prompt, new, b) * n / b if v == "g" else 0) + c.lm_forward(prompt + new, n) / c.rate
            mem = c.weights_gb() + c.kv_bytes(prompt + new, b) / 1e9
            rows.append({"stage": f"mapper ({v})", "what": f"{n} images x (vision{' + generate ' + str(new) if v == 'g' else ''} + LM forward), batch {b}",
                         "memory_gb": mem, "minutes": s / 60})
    if "diagnose" in sec:  # float32 (capalign vizer diagnose): the FP32 peak, weights and KV cache at 4 bytes
        dg = STAGES["diagnose"].command_config(None, sec["diagnose"], model="x", data="x", mappers=["x"])
        n_test = data.test_limit or _n(data.test, cfg.n_test)
        n, k = min(dg.limit or n_test, n_test), 1 + (6 if isinstance(data.test, int) else 4)  # correct + one per corruption
        s = c.peak / FP32[cfg.gpu] * (c.vision_s(n) + c.lm_forward(prompt + 32, n * k) / c.rate)
        rows.append({"stage": "diagnose", "what": f"{n} test images x {k} captions (vision + LM forward), float32",
                     "memory_gb": 2 * c.weights_gb() + 2 * c.kv_bytes(prompt + 32, dg.batch_size * k) / 1e9, "minutes": s / 60})
    if "vizer" in sec:
        vz = STAGES["vizer"].command_config(None, sec["vizer"], model="x", mapper="x", images="x", out="x")
        o = STAGES["vizer"].opts(sec["vizer"])
        n_unl = vz.limit or _n(data.unlabeled, cfg.n_unlabeled)
        steps = (o.steps or [None])[-1] or vz.max_steps or (n_unl // vz.batch_size * vz.epochs if n_unl else None)
        if steps is None:
            raise CapalignError("the number of ViZer steps is unknown: set vizer.max_steps or vizer.limit, or pass --n_unlabeled")
        b, new, tok = vz.batch_size, vz.max_new_tokens, prompt + vz.max_new_tokens
        step_s = c.vision_s(b) + c.generate_s(prompt, new, b // vz.grad_accum) * vz.grad_accum + 2 * c.lm_forward(tok, b) / c.rate
        micro = b // vz.grad_accum
        opt = 16 * c.lora_params(vz.lora_r) / 1e9
        mem = c.weights_gb() + opt + max(c.train_act_bytes(tok, micro, vz.gradient_checkpointing), c.kv_bytes(tok, micro)) / 1e9
        arms = len(STAGES["vizer"].opts(sec["vizer"]).variants or STAGES["mapper"].opts(sec.get("mapper") or {}).variants) * len(o.sampling or [1])
        rows.append({"stage": f"vizer (x{arms} runs)", "what": f"{steps} steps x {b} images (generate {new} + 2 LM passes over {tok} tokens), "
                     f"LoRA r={vz.lora_r}{', checkpointing' if vz.gradient_checkpointing else ''}", "memory_gb": mem, "minutes": arms * steps * step_s / 60})
    if "rl" in sec:
        rows += rl_rows(recipe, c, facts, cfg, judge)
    if "caption" in sec:
        cp = STAGES["caption"].command_config(None, sec["caption"], model="x", images="x", out="x")
        n = data.test_limit or _n(data.test, cfg.n_test)
        s = systems * (c.vision_s(n) + c.generate_s(prompt, cp.max_new_tokens, cp.batch_size) * n / cp.batch_size)
        mem = c.weights_gb() + c.kv_bytes(prompt + cp.max_new_tokens, cp.batch_size) / 1e9
        rows.append({"stage": f"caption (x{systems} systems)", "what": f"{n} test images, batch {cp.batch_size}, {cp.max_new_tokens} new tokens",
                     "memory_gb": mem, "minutes": s / 60})
    if "features" in sec:
        n = data.test_limit or _n(data.test, cfg.n_test)
        rows.append({"stage": "features", "what": f"{n} test images: vision + LM forward per system", "memory_gb": c.weights_gb() * 1.1,
                     "minutes": (c.vision_s(n) + (systems + 1) * c.lm_forward(prompt + 32, n) / c.rate) / 60})
    if "style" in sec:
        rows += _style_rows(c, STAGES["style"].command_config(None, sec["style"], model="x", out="x"), prompt, cfg)
    for r in rows:
        r["memory_gb"] *= 1.1  # CUDA context, allocator fragmentation
    return rows


def _style_rows(c: Costs, sw, prompt: int, cfg: EstimateConfig) -> list[dict]:
    """The style sweep (study-wide): training steps of every cell (one vision pass per image; policy forward and
    backward over chosen and rejected, plus a reference forward for DPO; SFT: chosen only) and the evaluation of
    every cell (generation with the style prompt + WR-LogP's forward over the test pairs)."""
    import re

    from ..data.preferences import parse_budget

    m = re.fullmatch(r"shapes:(\d+)(:\d+)?", str(sw.data))
    n = cfg.style_pairs or (int(int(m[1]) * (1 - sw.test_share)) if m else None)
    if not n:
        raise CapalignError(f"the style sweep's training pairs per style are unknown for {sw.data}: pass --style_pairs N "
                            "(FlickrStyle10K as distributed: 5600 per style at test_share 0.2)")
    b, tok = sw.batch_size, prompt + cfg.caption_tokens
    steps = {meth: sum(sw.cell_steps(parse_budget(x, n)) for x in sw.budget_list) * len(sw.style_list) * sw.seeds
             for meth in sw.method_list}
    fwd = {"sft": 3 * c.lm_forward(tok, b), "dpo": 4 * c.lm_forward(tok, 2 * b), "simpo": 3 * c.lm_forward(tok, 2 * b)}  # fwd + bwd (~2 fwd)
    train_s = sum(k * (c.vision_s(b) + fwd[meth] / c.rate) for meth, k in steps.items())
    n_cells = sum(len(sw.style_list) * sw.seeds * len(sw.budget_list) for _ in sw.method_list) + len(sw.style_list) + 1
    t = sw.n_test
    eval_s = n_cells * (c.vision_s(t) + c.generate_s(prompt, sw.max_new_tokens, min(t, 50)) * math.ceil(t / 50) + c.lm_forward(tok, 2 * t) / c.rate)
    opt = 16 * c.lora_params(sw.lora_r) / 1e9
    mem = c.weights_gb() + opt + c.train_act_bytes(tok, 2 * b, False) / 1e9
    return [{"stage": f"style sweep ({n_cells - len(sw.style_list) - 1} trained cells)",
             "what": f"{', '.join(sw.method_list)} x {len(sw.style_list)} styles x {len(sw.budget_list)} budgets x {sw.seeds} seeds; "
                     f"{sum(steps.values())} steps x {b} pairs of {n} per style at 100%, LoRA r={sw.lora_r}", "memory_gb": mem, "minutes": train_s / 60},
            {"stage": f"style eval ({n_cells} cells)", "what": f"{t} test pairs per cell: generate {sw.max_new_tokens} + WR-LogP",
             "memory_gb": c.weights_gb() + c.kv_bytes(prompt + sw.max_new_tokens, 50) / 1e9, "minutes": eval_s / 60}]


JUDGE_PROMPT_TOKENS = 160  # the A.1 prompt (~110 tokens) + a reference + a caption, beside the image tokens


def rl_rows(recipe, c: Costs, f: dict, cfg: EstimateConfig, judge: dict | None) -> list[dict]:
    """GRPO runs (one per reward): per step, B images x G samples: the policy's vision once per image, sampling
    B*G captions, the loss forward + backward over B*G sequences (+ a reference forward when beta > 0), and,
    for a judge reward, the judge's vision once per image and one forward per sample."""
    from .stages import STAGES

    sec, data = recipe.sections, STAGES["data"].opts(recipe.sections.get("data") or {})
    o = STAGES["rl"].opts(sec["rl"])
    rl = STAGES["rl"].command_config(None, sec["rl"], model="x", data="x", out="x", reward="cider")
    n = rl.limit or _n(getattr(data, o.split), cfg.n_unlabeled)
    steps = rl.max_steps or (int(n * rl.epochs) // rl.batch_size if n else None)
    if steps is None:
        raise CapalignError("the number of RL steps is unknown: set rl.max_steps or rl.limit, or pass --n_unlabeled")
    B, G, new = rl.batch_size, rl.num_generations, rl.max_new_tokens
    prompt = f["img_tokens"] + 16
    tok, micro = prompt + new, B * G // rl.grad_accum
    passes = 2 + (rl.beta > 0)
    policy_s = c.vision_s(B) + c.generate_s(prompt, new, B * G) + passes * c.lm_forward(tok, B * G) / c.rate
    mem = c.weights_gb() + 16 * c.lora_params(rl.lora_r) / 1e9 + max(c.train_act_bytes(tok, micro, rl.gradient_checkpointing), c.kv_bytes(tok, B * G)) / 1e9
    rows = []
    for spec in o.rewards:
        step_s, what, m = policy_s, f"{steps} steps x {B} images x {G} samples (generate {new} + {passes} LM passes over {tok} tokens)", mem
        if "judge" in spec and judge:
            jc = Costs(judge, cfg.gpu, cfg.mfu)
            jtok = judge["img_tokens"] + JUDGE_PROMPT_TOKENS
            step_s += jc.vision_s(B) + jc.lm_forward(jtok, B * G) / jc.rate
            m += jc.weights_gb() + jc.kv_bytes(jtok, rl.judge_batch_size) / 1e9
            what += f" + judge {judge['model']} ({judge['total'] / 1e9:.2f} B): vision per image, one forward of {jtok} tokens per sample"
        elif "judge" in spec:
            what += " + judge (its config not found: not counted)"
        rows.append({"stage": f"rl ({spec})", "what": what + (", checkpointing" if rl.gradient_checkpointing else ""), "memory_gb": m,
                     "minutes": steps * step_s / 60})
    return rows


def run(cfg: EstimateConfig) -> list[dict]:
    from rich.table import Table

    show_config(cfg)
    recipe = load_recipe(cfg.recipe, cfg.set)
    base = (recipe.sections.get("base") or {}).get("model")
    if not base:
        console.print("base: the nano captioner, trained by the study on CPU (~0.6 M parameters): nothing to estimate; "
                      "the demo's measured times are in docs/study.md")
        return []
    w, h = (int(x) for x in cfg.image_size.lower().split("x"))
    facts = model_facts(base.replace("{seed}", str(recipe.seeds[0])), Path(cfg.recipe).resolve().parent, (w, h))
    judge_id = (recipe.sections.get("rl") or {}).get("judge")
    try:
        judge = model_facts(judge_id, Path(cfg.recipe).resolve().parent, (w, h)) if judge_id else None
    except CapalignError as e:  # a judge whose config is not at hand: its rows say it is not counted
        console.print(f"judge not counted: {e}")
        judge = None
    rows = estimate(recipe, facts, cfg, judge)
    g = GPUS[cfg.gpu]
    t = Table(title=f"ESTIMATE for {recipe.name} on one {cfg.gpu} ({g[0]:.0f} TFLOP/s bf16 at {cfg.mfu:.0%}, {g[1]} TB/s, {g[2]} GB), per seed")
    for col in ("stage", "work", "GPU memory", "time"):
        t.add_column(col, justify="left" if col in ("stage", "work") else "right")
    for r in rows:
        warn = " [red](> GPU)[/red]" if r["memory_gb"] > g[2] else ""
        t.add_row(r["stage"], r["what"], f"{r['memory_gb']:.1f} GB{warn}", f"{r['minutes']:.1f} min")
    console.print(t)
    total = sum(r["minutes"] for r in rows)
    console.print(f"{facts['model']}: {facts['total'] / 1e9:.2f} B parameters (LM {facts['lm'] / 1e9:.2f} B + embeddings {facts['embed'] / 1e9:.2f} B, "
                  f"vision {facts['vision'] / 1e9:.2f} B, connector {facts['connector'] / 1e6:.0f} M; config from {facts['config_from']}), "
                  f"{facts['img_tokens']} image tokens per {w}x{h} image. Total ~{total:.0f} min per seed, "
                  f"~{total * len(recipe.seeds):.0f} min for {len(recipe.seeds)} seed(s), plus CPU evaluation. "
                  "Estimates from parameter, activation and FLOP counts (capalign/study/estimate.py), not measurements.")
    return rows
