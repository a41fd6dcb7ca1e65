"""GPU check: one script for a machine with one CUDA GPU (<= 8 minutes on one H200), no downloads.

  1. `pytest -m gpu` with CAPALIGN_TEST_DEVICE set to the device: the model-layer invariants on the tiny models
     (tensors on the wrong device, dtype mixes; tests/test_gpu_device.py);
  2. benchmarks/full_size.py's ten runs at full size in bf16 (random weights from recipes/configs/), their
     peak memory (CUDA max allocated) beside the estimator's components; steps per second = 1 / seconds;
  3. captioning throughput, images/s at batch 1, 8 and 32 for both families: the vision pass (encode) and
     greedy decoding timed apart; the vision pass as a share of the GPU's bf16 peak (FLOPs from
     capalign.study.estimate) and decoding as a share of its memory bandwidth (LM weights + KV cache read per
     new token);
  4. SDPA vs eager attention and gradient checkpointing on vs off, on the ViZer step of SmolVLM-Base.
Writes benchmarks/results/gpu_check.json with `gpu` (the device's name) and the versions.
`--device cpu --quick --out FILE` runs the same code on the tiny models, fewer of them (the test suite runs it:
one pytest case, caption + ViZer on SmolVLM, DPO on Qwen2-VL, one variant).

Run: `.venv/bin/python benchmarks/gpu_check.py [--device cuda] [--quick] [--out FILE]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from capalign.io import atomic_write_json  # noqa: E402

PEAKS = {"H200": (989.0, 4.8), "H100": (989.0, 3.35), "A100": (312.0, 2.04), "L4": (121.0, 0.30)}  # datasheet dense bf16 TFLOP/s, TB/s


def peak_of(name: str) -> tuple[float, float] | None:
    return next((v for k, v in PEAKS.items() if k in name), None)


def full_size(args, cache: Path, extra: list[str], only: str = "") -> list[dict]:
    out = Path(tempfile.mkdtemp()) / "full.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "full_size.py"), "--out", str(out), "--cache", str(cache), *extra]
    cmd += (["--quick"] if args.quick else []) + (["--only", only] if only else []) + (["--dtype", "float32"] if args.device == "cpu" else [])
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())["runs"]


def throughput(args, cache: Path, peak) -> list[dict]:
    import torch

    from capalign.models import load_vlm
    from capalign.study.estimate import Costs, model_facts

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from full_size import images

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    rows, tokens = [], args.tokens
    for key in ("smolvlm", "qwen2vl"):
        vlm = load_vlm(str(cache / key), device=args.device, dtype="bfloat16" if args.device == "cuda" else "float32")
        vlm.model.generation_config.min_new_tokens = tokens
        f = model_facts(str(cache / key), cache, (640, 480))
        c = Costs(f, "A100-80GB", 1.0)
        for b in args.batches:
            imgs = images(b)
            vlm.generate(vlm.encode(imgs[:1]), max_new_tokens=2)  # warm-up
            sync()
            t0 = time.perf_counter()
            enc = vlm.encode(imgs)
            sync()
            t1 = time.perf_counter()
            vlm.generate(enc, max_new_tokens=tokens)
            sync()
            t2 = time.perf_counter()
            vision_s, gen_s = t1 - t0, t2 - t1
            row = {"model": key, "batch": b, "images_per_s": b / (t2 - t0), "vision_s": vision_s, "generate_s": gen_s,
                   "new_tokens": tokens}
            if peak:
                flops = b * (f["vision_flops"] + 2 * f["connector"] * f["img_tokens"])
                read = 2 * (f["lm"] + f["vocab"] * f["d"]) + c.kv_bytes(f["img_tokens"] + 16 + tokens, b)  # bytes per new token
                row.update(vision_share_of_peak=flops / vision_s / (peak[0] * 1e12),
                           decode_share_of_bandwidth=read * tokens / gen_s / (peak[1] * 1e12))  # prefill counted in gen_s: a lower bound
            rows.append(row)
        del vlm
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="tiny models: the same code in about a minute")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device (use --device cpu --quick for the smoke path)")
    args.batches = [1, 2] if args.quick else [1, 8, 32]
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none (cpu)"
    peak = peak_of(gpu)
    doc = {"gpu": gpu, "device": args.device, "quick": args.quick, "peak_bf16_tflops_and_tb_per_s": peak,
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
                        "python": sys.version.split()[0]}}
    out = Path(args.out)
    t0 = time.perf_counter()
    env = dict(os.environ, CAPALIGN_TEST_DEVICE=args.device, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", str(ROOT / "tests")]
                       + (["-k", "idefics3 and encode"] if args.quick else []),
                       env=env, capture_output=True, text=True, cwd=ROOT)
    doc["pytest"] = {"returncode": p.returncode, "summary": (p.stdout.strip().splitlines() or [""])[-1]}
    atomic_write_json(out, doc)
    cache = Path(tempfile.mkdtemp() if args.quick else "/tmp/capalign-full-size")
    doc["full_size"] = full_size(args, cache, [], "caption/smolvlm,vizer/smolvlm,dpo/qwen2vl" if args.quick else "")
    for r in doc["full_size"]:
        r["steps_per_s"] = 1 / r["seconds"] if r.get("completed") else None
    atomic_write_json(out, doc)
    doc["throughput"] = throughput(args, cache, peak)
    atomic_write_json(out, doc)
    doc["variants"] = {f"{a}, checkpointing {c}": full_size(args, cache, ["--attn", a, "--checkpointing", c], "vizer/smolvlm")[0]
                       for a, c in ((("sdpa", "off"),) if args.quick else (("sdpa", "on"), ("sdpa", "off"), ("eager", "on")))}
    doc["seconds"] = time.perf_counter() - t0
    atomic_write_json(out, doc)
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"gpu: {gpu}; pytest -m gpu: {doc['pytest']['summary']}")
    t = Table(title="full-size runs")
    for col in ("run", "s", "steps/s", "peak GiB", "estimated GiB"):
        t.add_column(col)
    for r in doc["full_size"]:
        ok = r.get("completed")
        t.add_row(r["name"], f"{r['seconds']:.2f}" if ok else "failed", f"{r['steps_per_s']:.2f}" if ok else "",
                  f"{(r['allocator_peak_bytes'] or r['measured_peak_bytes']) / 2**30:.2f}" if ok else "", f"{r['estimated_peak_bytes'] / 2**30:.2f}" if ok else "")
    con.print(t)
    t = Table(title="captioning throughput")
    for col in ("model", "batch", "images/s", "vision s", "generate s", "vision % peak", "decode % bandwidth"):
        t.add_column(col)
    for r in doc["throughput"]:
        t.add_row(r["model"], str(r["batch"]), f"{r['images_per_s']:.2f}", f"{r['vision_s']:.3f}", f"{r['generate_s']:.3f}",
                  f"{100 * r['vision_share_of_peak']:.1f}" if "vision_share_of_peak" in r else "", f"{100 * r['decode_share_of_bandwidth']:.1f}" if "decode_share_of_bandwidth" in r else "")
    con.print(t)
    for k, r in doc["variants"].items():
        con.print(f"vizer/smolvlm {k}: " + (f"{r['seconds']:.2f} s" if r.get("completed") else f"failed: {r.get('error')}"))
    if p.returncode:
        print(p.stdout[-3000:])


if __name__ == "__main__":
    main()
