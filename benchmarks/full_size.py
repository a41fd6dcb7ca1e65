"""Every kind of run at the real models' full size, measured against `capalign estimate`'s components.

Models: random weights from the published configs in recipes/configs/ (SmolVLM-Base, Qwen2-VL-2B-Instruct;
Qwen2.5-VL-3B-Instruct as the GRPO judge), their real preprocessor settings (SmolVLM: longest edge 1536,
384-px tiles; Qwen: 14-px patches merged 2x2), the real vocabulary size (a small BPE tokenizer with the
family's special tokens: token ids stay below the real vocabulary), 640x480 random-pixel images.
Runs (each in its own subprocess, so its peak RSS is its own):
  caption  2 images: vision + greedy generation of `--tokens` new tokens (min = max)
  mapper   2 images: what `vizer features --variant g` does per batch (vision, generate, LM states)
  vizer    1 image:  one ViZer step (VizerObjective, LoRA r=32, gradient checkpointing as the recipes set it)
  dpo      1 pair:   one style DPO step (reference forward with the adapter off, policy forward/backward, AdamW)
  grpo     1 image x 2 samples: sampling, the judge's reward (judge forward), policy forward/backward, AdamW
Dtype: float32 on CPU (this CPU has no native bf16 matmul: a 2048^2 bf16 matmul runs ~400x slower than
float32, measured), bfloat16 on CUDA; `--dtype` overrides.
Estimate, component by component from capalign.study.estimate's formulas at the run's dtype: weights
(parameters x bytes), LoRA + gradients + AdamW (16 B per LoRA parameter), the larger of training activations
and the KV cache, plus the process's measured RSS before the model loads (Python, torch, transformers: the
CPU counterpart of the estimator's 10% CUDA-context allowance).

Run: `.venv/bin/python benchmarks/full_size.py [--quick] [--only NAME] [--out FILE]`; runs merge into --out
(default benchmarks/results/full_size.json), replacing older runs of the same name.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from capalign.io import atomic_write_json  # noqa: E402

CONFIGS = ROOT / "recipes" / "configs"
MODELS = {"smolvlm": "HuggingFaceTB--SmolVLM-Base", "qwen2vl": "Qwen--Qwen2-VL-2B-Instruct", "judge": "Qwen--Qwen2.5-VL-3B-Instruct"}
KINDS = ("caption", "mapper", "vizer", "dpo", "grpo")
RUNS = [f"{k}/{m}" for m in ("smolvlm", "qwen2vl") for k in KINDS]
LORA_R = 32


def build(key: str, out: Path, quick: bool) -> Path:
    """A random model saved like a checkpoint: the tiny builder's processor and tokenizer, and (full size) the
    published config's weights shapes with the tiny tokenizer's special-token ids."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    from capalign.models.tiny import TINY, build_idefics3
    from capalign.models.tiny_qwen import build_tiny_qwen2_5_vl, build_tiny_qwen2_vl

    pre = json.loads((CONFIGS / MODELS[key] / "preprocessor_config.json").read_text())
    if key == "smolvlm":
        cfg = json.loads((CONFIGS / MODELS[key] / "config.json").read_text())
        v = cfg["vision_config"]
        shape = dict(TINY, vision=dict(TINY["vision"], image_size=v["image_size"], patch_size=v["patch_size"]), scale_factor=cfg["scale_factor"])
        build_idefics3(out, shape, longest_edge=pre["size"]["longest_edge"] if not quick else 2 * v["image_size"])
    else:
        fn = build_tiny_qwen2_vl if key == "qwen2vl" else build_tiny_qwen2_5_vl
        fn(out, **({} if quick else {"min_pixels": pre["min_pixels"], "max_pixels": pre["max_pixels"]}))
    if quick:
        return out
    tiny = json.loads((out / "config.json").read_text())
    cfg = AutoConfig.from_pretrained(CONFIGS / MODELS[key])
    for c in (cfg, cfg.get_text_config()):
        for k, val in list(tiny.items()) + list((tiny.get("text_config") or {}).items()):
            if k.endswith("_token_id") and hasattr(c, k):
                setattr(c, k, val)
    gen = GenerationConfig.from_pretrained(out)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(cfg, torch_dtype=torch.bfloat16)  # saved in bf16 as published
    model.generation_config = gen
    for f in out.glob("*.safetensors*"):
        f.unlink()
    model.save_pretrained(out)
    return out


def images(n: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]


def estimate_parts(path: Path, kind: str, dtype: str, tokens: int, judge: Path | None, checkpointing: bool = False) -> dict:
    """Bytes per component from capalign.study.estimate's formulas, at `dtype` (its formulas assume bf16)."""
    from capalign.study.estimate import Costs, model_facts

    wb = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    f = model_facts(str(path), path.parent, (640, 480))
    c = Costs(f, "A100-80GB", 0.4)
    n_img = 2 if kind in ("caption", "mapper") else 1
    seq = f["img_tokens"] + 16 + tokens
    parts = {"weights": wb * f["total"], "lora_adamw": 0, "activations": 0,
             "kv_cache": c.kv_bytes(seq, 2 if kind == "grpo" else n_img) * wb / 2, "judge_weights": 0}
    if kind in ("vizer", "dpo", "grpo"):
        parts["lora_adamw"] = 16 * c.lora_params(LORA_R)
        parts["activations"] = c.train_act_bytes(seq, 1 if kind == "vizer" else 2, checkpointing=checkpointing) * wb / 2
    if kind == "grpo" and judge is not None:
        jf = model_facts(str(judge), judge.parent, (640, 480))
        parts["judge_weights"] = wb * jf["total"]
    parts["img_tokens_estimated"] = f["img_tokens"]
    return parts


def _status_bytes(field: str) -> int | None:
    """VmRSS / VmHWM of this process from /proc/self/status (Linux), in bytes; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so that it measures from here on (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(name: str, cache: Path, dtype: str, tokens: int, attn: str = "sdpa", checkpointing: str = "recipe") -> dict:
    import torch

    from capalign.models import load_vlm
    from capalign.training.lora import lora_config
    from capalign.training.losses import dpo_loss

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kind, key = name.split("/")
    dev = "cuda" if torch.cuda.is_available() and dtype != "float32" else "cpu"
    t0 = time.perf_counter()
    vlm = load_vlm(str(cache / key), device=dev, dtype=dtype, attn_implementation=attn)
    vlm.model.generation_config.min_new_tokens = tokens  # exactly `tokens` new tokens (random weights stop anywhere)
    load_s = time.perf_counter() - t0
    # loading a bf16 checkpoint as float32 holds the file's mapped pages and the float32 copy at once: a host-RAM
    # peak of loading, not of the work; the work's own peak is measured from a reset mark (None where unsupported)
    load_peak, after_load = _status_bytes("VmHWM"), _status_bytes("VmRSS")
    work_mark = _reset_peak()
    phases: dict[str, list[int | None]] = {}  # phase -> [its peak RSS, RSS at its end]; each phase measured from a reset mark

    def mark(phase: str) -> None:
        if work_mark:
            phases[phase] = [_status_bytes("VmHWM"), _status_bytes("VmRSS")]
            _reset_peak()

    n_img, ckpt = (2 if kind in ("caption", "mapper") else 1), False
    imgs = images(n_img)
    if kind not in ("caption", "mapper"):
        vlm.model.requires_grad_(False)  # frozen before the vision pass, as the trainers do (else autograd keeps the tower's activations)
    t0 = time.perf_counter()
    enc = vlm.encode(imgs)
    img_tok = int((enc.inputs["input_ids"] == vlm.model.config.image_token_id).sum()) // n_img
    mark("encode")
    if kind in ("caption", "mapper"):
        vlm.model.eval()
        with torch.no_grad():
            caps = vlm.generate(enc, max_new_tokens=tokens)
            mark("generate")
            if kind == "mapper":
                vlm.caption_states(enc, caps)
                mark("states")
    else:
        from peft import get_peft_model

        peft = get_peft_model(vlm.model, lora_config(vlm, r=LORA_R))
        ckpt = kind != "dpo" if checkpointing == "recipe" else checkpointing == "on"
        if ckpt:  # recipe: the vizer and rl recipes set gradient_checkpointing: true; style has none
            vlm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        opt = torch.optim.AdamW([p for p in vlm.model.parameters() if p.requires_grad], lr=1e-5)
        if kind == "vizer":
            from capalign.vizer.mapper import Mapper
            from capalign.vizer.train import VizerObjective

            vlm.model.eval()
            caps = vlm.generate(enc, max_new_tokens=tokens)
            mark("generate")
            vlm.model.train()
            mapper = Mapper(vlm.text_hidden_size, vlm.vision_hidden_size, 256).requires_grad_(False).to(vlm.device)
            loss, _ = VizerObjective(vlm, mapper)(enc, caps)
        elif kind == "dpo":
            from capalign.style.train import caption_token_logps

            enc2 = vlm.repeat(enc, 2)
            caps = vlm.tokenize_captions(["a funny cat plays a piano on the roof of a red car", "a cat on a car"])
            with torch.no_grad(), peft.disable_adapter():
                ref = caption_token_logps(peft, vlm, enc2, caps).sum(1)
            mark("reference")
            vlm.model.train()
            lp = caption_token_logps(peft, vlm, enc2, caps).sum(1)
            loss = dpo_loss(lp[0::2], lp[1::2], ref[0::2], ref[1::2], 0.1).losses.mean()
        else:  # grpo: 1 image x 2 samples, the judge's grade as reward
            from capalign.rl.rewards import build_reward

            reward = build_reward("judge", judge=str(cache / "judge"), judge_dtype=dtype, device=dev, judge_batch_size=2)
            vlm.model.eval()
            caps = vlm.generate(enc, max_new_tokens=tokens, do_sample=True, num_return_sequences=2)
            r = torch.tensor(reward(completions=caps.texts, references=[["a photo"]] * 2, image=imgs * 2, id=["0", "0"]), dtype=torch.float32)
            adv = ((r - r.mean()) / (r.std() + 1e-4)).to(vlm.device)
            mark("generate+judge")
            vlm.model.train()
            loss = -(adv * vlm.caption_logprobs(vlm.repeat(enc, 2), caps)).mean()
        mark("forward")
        loss.backward()
        mark("backward")
        opt.step()
        opt.zero_grad(set_to_none=True)
        mark("step")
    seconds = time.perf_counter() - t0
    work_peak = max(p for p, _ in phases.values()) if phases else None  # no phases: no reset mark (not Linux)
    # the reset also lowers ru_maxrss (Linux derives it from the same mark): the process peak is the larger of the two
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, load_peak or 0, work_peak or 0)
    return {"name": name, "kind": kind, "model": MODELS[key], "dtype": dtype, "device": dev, "seconds": seconds, "load_seconds": load_s,
            "new_tokens": tokens, "images": n_img, "image_tokens_per_image": img_tok, "measured_peak_bytes": peak,
            "rss_before_load_bytes": base_rss, "load_peak_bytes": load_peak, "rss_after_load_bytes": after_load, "work_peak_bytes": work_peak,
            "phase_peak_bytes": {k: v[0] for k, v in phases.items()}, "phase_end_rss_bytes": {k: v[1] for k, v in phases.items()},
            "allocator_peak_bytes": torch.cuda.max_memory_allocated() if dev == "cuda" else None,
            "threads": torch.get_num_threads(), "attn": attn, "malloc_env": {k: os.environ.get(k) for k in MALLOC_LIVE},
            "gradient_checkpointing": ckpt if kind in ("vizer", "dpo", "grpo") else None}


# glibc's malloc raises its mmap threshold after large frees (up to 32 MiB), so freed activations stay in its heap and
# in RSS: on the ViZer step that retention was 24-34% of the estimate (docs/results/full-size.md). A fixed threshold returns
# every freed block >= 128 KiB to the kernel, so RSS follows the live tensors, the quantity the estimator models (and a
# GPU's max_memory_allocated reports). `--malloc default` keeps glibc's own behaviour.
MALLOC_LIVE = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def run_one(name: str, cache: Path, dtype: str, tokens: int, quick: bool, attn: str = "sdpa", checkpointing: str = "recipe",
            malloc: str = "live") -> dict:
    cmd = [sys.executable, __file__, "--_child", name, "--cache", str(cache), "--dtype", dtype, "--tokens", str(tokens),
           "--attn", attn, "--checkpointing", checkpointing]
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_LIVE}
    p = subprocess.run(cmd, capture_output=True, text=True, env={**env, **MALLOC_LIVE} if malloc == "live" else env)
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"name": name, "completed": False, "error": " | ".join(tail), "measured_peak_bytes": None,
                "estimated_peak_bytes": None, "seconds": None}
    return with_estimate({**json.loads(lines[-1][7:]), "malloc": malloc}, cache, quick)


def with_estimate(r: dict, cache: Path, quick: bool) -> dict:
    """The run `r` with the estimator's components for its settings, the estimate and the ratios."""
    key = r["name"].split("/")[1]
    parts = estimate_parts(cache / key, r["kind"], r["dtype"], r["new_tokens"], cache / "judge" if r["kind"] == "grpo" else None,
                           bool(r["gradient_checkpointing"]))
    img_est = parts.pop("img_tokens_estimated")
    est_model = parts["weights"] + parts["judge_weights"] + parts["lora_adamw"] + max(parts["activations"], parts["kv_cache"])
    est = r["rss_before_load_bytes"] + est_model
    r.update(completed=True, quick=quick, estimate_parts=parts, image_tokens_estimated=img_est, estimated_peak_bytes=int(est),
             ratio=r["measured_peak_bytes"] / est,  # the whole process, loading included
             work_ratio=r["work_peak_bytes"] / est if r.get("work_peak_bytes") else None)  # the work alone: what a GPU holds
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny models, the same code: a smoke run in seconds")
    ap.add_argument("--only", default="", help=f"comma-separated run names or parts of them ({', '.join(RUNS)})")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "full_size.json"))
    ap.add_argument("--cache", default="", help="folder for the built models (default: a temporary folder; full size: /tmp/capalign-full-size)")
    ap.add_argument("--dtype", default="", help="float32 | bfloat16 (default: bfloat16 on CUDA, float32 on CPU)")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per caption")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    ap.add_argument("--checkpointing", default="recipe", choices=["recipe", "on", "off"], help="gradient checkpointing of the training runs")
    ap.add_argument("--malloc", default="live", choices=["live", "default"],
                    help="live: glibc returns freed blocks >= 128 KiB (RSS follows live tensors); default: glibc's own (keeps freed heap)")
    ap.add_argument("--reestimate", action="store_true", help="run nothing: recompute the estimates of the runs already in --out "
                                                                  "with the current estimator (after a change to it)")
    ap.add_argument("--_child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--_build", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._build:
        build(args._build, Path(args.cache), args.quick)
        return
    import torch

    dtype = args.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    if args._child:
        print("RESULT " + json.dumps(child(args._child, Path(args.cache), dtype, args.tokens, args.attn, args.checkpointing)))
        return
    if args.reestimate:
        out = Path(args.out)
        doc = json.loads(out.read_text())
        cache = Path(args.cache or "/tmp/capalign-full-size")  # the built models' configs (the estimator reads them)
        doc["runs"] = [with_estimate(r, cache, r.get("quick", False)) if r.get("completed") else r for r in doc["runs"]]
        atomic_write_json(out, doc)
        for r in doc["runs"]:
            if r.get("completed"):
                print(f"{r['name']}: estimate {r['estimated_peak_bytes'] / 2**30:.2f} GiB, work/estimate {r['work_ratio'] or float('nan'):.2f}")
        return
    names = [n for n in RUNS if not args.only or any(o.strip() and o.strip() in n for o in args.only.split(","))]
    if not names:
        raise SystemExit(f"error: --only {args.only!r} matches none of {', '.join(RUNS)}")
    cache = Path(args.cache or (tempfile.mkdtemp() if args.quick else "/tmp/capalign-full-size"))
    needed = {n.split("/")[1] for n in names} | ({"judge"} if any(n.startswith("grpo") for n in names) else set())
    for key in sorted(needed):
        if not (cache / key / "config.json").is_file() or (not args.quick and not list((cache / key).glob("*.safetensors*"))):
            subprocess.run([sys.executable, __file__, "--_build", key, "--cache", str(cache / key)] + (["--quick"] if args.quick else []), check=True)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    runs = {r["name"]: r for r in doc.get("runs", [])}
    for name in names:
        r = run_one(name, cache, dtype, args.tokens, args.quick, args.attn, args.checkpointing, args.malloc)
        runs[name] = r
        doc.update(benchmark="full_size", cpu_threads=os.environ.get("OMP_NUM_THREADS"), torch=torch.__version__,
                   runs=[runs[n] for n in RUNS if n in runs])
        atomic_write_json(out, doc)
        print(f"{name}: " + (f"{r['seconds']:.1f} s, peak {r['measured_peak_bytes'] / 2**30:.2f} GiB" if r["completed"] else f"FAILED: {r['error']}"), flush=True)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Full-size runs ({'tiny models, --quick' if args.quick else 'published configs, random weights'}, 640x480, {args.tokens} new tokens)")
    for c in ("run", "dtype", "s", "img tok/img (est)", "load peak GiB", "work peak GiB", "process peak GiB", "estimated GiB", "work/est", "process/est"):
        t.add_column(c)
    for r in doc["runs"]:
        if not r.get("completed"):
            t.add_row(r["name"], "", "failed", *[""] * 7)
            continue
        gib = lambda k: f"{r[k] / 2**30:.2f}" if r.get(k) else "-"  # noqa: E731
        t.add_row(r["name"], r["dtype"], f"{r['seconds']:.1f}", f"{r['image_tokens_per_image']} ({r['image_tokens_estimated']})",
                  gib("load_peak_bytes"), gib("work_peak_bytes"), gib("measured_peak_bytes"), gib("estimated_peak_bytes"),
                  f"{r['work_ratio']:.2f}" if r.get("work_ratio") else "-", f"{r['ratio']:.2f}")
    Console().print(t)


if __name__ == "__main__":
    main()
