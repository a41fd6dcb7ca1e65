"""One ViZer training step vs its floor, measured side by side in one run.

Model: random weights with SmolVLM-256M's shapes (SigLIP-B/16 at 512 px, 12 vision layers; 30-layer
576-wide Llama), LoRA r=32 on the language model as in `capalign vizer train`.
  step  = VizerObjective path: encode (vision once) + batched generation + LM forward/backward over
          image + prompt + caption with pooling, mapper and cosine loss + AdamW step on LoRA
  floor = the work no implementation can skip: one batched generation with the vision tower run once,
          plus one forward/backward of the language model over the same tokens (sum of last hidden
          states as the loss) + the same optimizer step
Target: step <= 1.15 x floor. Peak memory: max RSS of this process (CPU) or max allocated (CUDA).

Run: `.venv/bin/python benchmarks/vizer_step.py [--quick]`; writes benchmarks/results/vizer_step.json.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from capalign.io import atomic_write_json  # noqa: E402
from capalign.models import load_vlm  # noqa: E402
from capalign.models.tiny import SMOLVLM_256M, TINY, build_idefics3  # noqa: E402
from capalign.vizer.mapper import Mapper  # noqa: E402
from capalign.vizer.train import VizerObjective, VizerTrainConfig, lora_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny model, for a smoke run")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    shape, size = (TINY, 64) if args.quick else (SMOLVLM_256M, 512)
    tmp = Path(tempfile.mkdtemp())
    path = build_idefics3(tmp / "m", shape, longest_edge=shape["vision"]["image_size"])
    vlm = load_vlm(str(path), device="cpu", dtype="float32")
    vlm.model.generation_config.min_new_tokens = args.tokens  # exactly `tokens` new tokens in both paths
    from peft import get_peft_model

    vlm.model.requires_grad_(False)
    get_peft_model(vlm.model, lora_config(vlm, VizerTrainConfig(model="", mapper="", images="", out="")))
    mapper = Mapper(vlm.text_hidden_size, vlm.vision_hidden_size, 256).requires_grad_(False)
    objective = VizerObjective(vlm, mapper)
    params = [p for p in vlm.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).byte().numpy()) for _ in range(args.batch)]

    def step():
        enc = vlm.encode(images)
        vlm.model.eval()
        caps = vlm.generate(enc, max_new_tokens=args.tokens)
        vlm.model.train()
        loss, _ = objective(enc, caps)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def floor():
        enc = vlm.encode(images)
        vlm.model.eval()
        caps = vlm.generate(enc, max_new_tokens=args.tokens)
        vlm.model.train()
        h = vlm._forward(enc, caps)  # the LM over image + prompt + caption tokens, no pooling/mapper
        h.float().sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = {"step": [], "floor": []}
    step(), floor()  # warm-up
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        for name, fn in (("floor", floor), ("step", step)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["step"] / best["floor"]
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"ViZer step vs floor ({'tiny' if args.quick else 'SmolVLM-256M shapes'}, batch {args.batch}, {args.tokens} new tokens, {torch.get_num_threads()} threads)")
    for c in ("", "best s", "all s"):
        t.add_column(c)
    for k in ("floor", "step"):
        t.add_row(k, f"{best[k]:.2f}", " ".join(f"{x:.2f}" for x in times[k]))
    t.add_row("step / floor", f"{ratio:.3f}", "target <= 1.15: " + ("met" if ratio <= 1.15 else "NOT met"))
    t.add_row("peak memory", f"{peak / 2**30:.2f} GiB", "max RSS" if not torch.cuda.is_available() else "CUDA max allocated")
    Console().print(t)
    out = Path(__file__).parent / "results" / ("vizer_step_quick.json" if args.quick else "vizer_step.json")
    atomic_write_json(out, {"shape": "tiny" if args.quick else "smolvlm-256m", "batch": args.batch, "new_tokens": args.tokens,
                            "threads": torch.get_num_threads(), "seconds": times, "best": best, "ratio": ratio, "target": 1.15,
                            "peak_memory_bytes": peak})


if __name__ == "__main__":
    main()
