"""One GRPO step: capalign's `rl train` vs TRL's GRPOTrainer vs the floor, side by side in one run.

Policy: random weights with SmolVLM-256M's shapes (SigLIP-B/16 at 512 px, 12 vision layers; 30-layer
576-wide Llama; one 512-px tile = 64 image tokens per shapes image), LoRA r=32 on the language model.
Judge: a second random model of the same architecture (seed 1), scored through capalign.rl.rewards' judge
reward (the reward `rl train --reward judge` uses). Data: 8 shapes-world images x 4 samples, exactly
`--tokens` new tokens per sample (min_new_tokens = max_new_tokens), beta 0, one optimizer step.
  capalign = RLTrainer step (TRL's GRPOTrainer + one vision pass per image for all its samples)
  trl      = the same trainer with shared vision off: TRL's own path (the vision tower per row, in
             sampling and again in the loss forward)
  floor    = the work no implementation can skip: one vision pass per image, sampling all samples from it,
             the reward, one policy forward/backward over image + prompt + caption, the AdamW step
Steps are timed from the trainer's on_step_begin to on_step_end (generation, reward, loss, backward,
optimizer), interleaved (floor, capalign, trl) so load changes hit all alike; best of `--repeats`.
Target: capalign <= 1.2 x floor.

Run: `.venv/bin/python benchmarks/rl_step.py [--quick] [--reward judge|cider]`; writes benchmarks/results/rl_step.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from capalign.data.shapes import write_dataset  # noqa: E402
from capalign.io import atomic_write_json  # noqa: E402
from capalign.models.tiny import SMOLVLM_256M, TINY, build_idefics3  # noqa: E402
from capalign.rl.rewards import build_reward  # noqa: E402
from capalign.rl.train import RLTrainConfig, build_trainer  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.seconds.append(time.perf_counter() - self.t0)


def count_images(inner, counter: list):
    """Count the images that go through the vision tower (wraps whatever get_image_features is installed)."""
    orig = inner.get_image_features

    @functools.wraps(orig)
    def counting(*a, **k):
        pv = k.get("pixel_values", a[0] if a else None)
        counter.append(pv.shape[0])  # Idefics3: [images, tiles, 3, H, W]
        return orig(*a, **k)

    inner.get_image_features = counting


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny model, for a smoke run")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--reward", default="judge", choices=["judge", "cider"])
    args = ap.parse_args()
    shape = TINY if args.quick else SMOLVLM_256M
    size = shape["vision"]["image_size"]
    tmp = Path(tempfile.mkdtemp())
    policy = build_idefics3(tmp / "policy", shape, longest_edge=size, seed=0)
    data = write_dataset(tmp / "data", args.images, seed=0)
    cfg = RLTrainConfig(model=str(policy), data=str(data), out=str(tmp / "capalign"), reward=args.reward, batch_size=args.images,
                        num_generations=args.samples, max_new_tokens=args.tokens, max_steps=1, save_every=0, lr=1e-5, device="cpu")
    if args.reward == "judge":
        judge_path = build_idefics3(tmp / "judge", shape, longest_edge=size, seed=1)
        cfg = dataclasses.replace(cfg, judge=str(judge_path))
    reward = build_reward(args.reward, judge=cfg.judge, device="cpu")  # loaded once, shared by both trainers and the floor
    trainers = {"capalign": build_trainer(cfg, {args.reward: reward}),
                "trl": build_trainer(dataclasses.replace(cfg, out=str(tmp / "trl"), shared_vision=False), {args.reward: reward})}
    timers, vision = {}, {"trl": []}
    for name, tr in trainers.items():
        tr.generation_config.min_new_tokens = args.tokens  # exactly `tokens` new tokens in every path
        timers[name] = StepTimer()
        tr.add_callback(timers[name])
    count_images(trainers["trl"].vlm.model.model, vision["trl"])

    # the floor, on the capalign trainer's policy (same weights, same LoRA)
    vlm = trainers["capalign"].vlm
    vlm.model.generation_config.min_new_tokens = args.tokens
    vlm.model.generation_config.suppress_tokens = [vlm.model.config.image_token_id]  # as TRL does: a sampled image token breaks the forward
    rows = trainers["capalign"].train_dataset.select(range(args.images))
    images, refs, ids = list(rows["image"]), list(rows["references"]), list(rows["id"])
    opt = torch.optim.AdamW([p for p in vlm.model.parameters() if p.requires_grad], lr=1e-5)
    G = args.samples

    def floor():
        enc = vlm.encode(images)  # one vision pass per image
        caps = vlm.generate(enc, max_new_tokens=args.tokens, do_sample=True, num_return_sequences=G)  # [B*G]
        r = torch.tensor(reward(completions=caps.texts, references=[x for x in refs for _ in range(G)],
                                image=[x for x in images for _ in range(G)], id=[i for i in ids for _ in range(G)]), dtype=torch.float32).view(-1, G)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()
        vlm.model.train()
        lp = vlm.caption_logprobs(vlm.repeat(enc, G), caps)  # policy forward over image + prompt + caption
        (-(adv * lp).mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        vlm.model.eval()

    def run(name):
        tr = trainers[name]
        if name == "capalign":
            with tr.shared_vision:
                tr.train()
            return timers[name].seconds[-1]
        tr.train()
        return timers[name].seconds[-1]

    def timed_floor():
        t = time.perf_counter()
        floor()
        return time.perf_counter() - t

    times = {"floor": [], "capalign": [], "trl": []}
    timed_floor(), run("capalign"), run("trl")  # warm-up
    enc_before, trl_before = trainers["capalign"].shared_vision.encoded, sum(vision["trl"])
    for _ in range(args.repeats):
        times["floor"].append(timed_floor())
        times["capalign"].append(run("capalign"))
        times["trl"].append(run("trl"))
    passes = {"floor": args.images, "capalign": (trainers["capalign"].shared_vision.encoded - enc_before) / args.repeats,
              "trl": (sum(vision["trl"]) - trl_before) / args.repeats}
    best = {k: min(v) for k, v in times.items()}
    ratio = {"capalign/floor": best["capalign"] / best["floor"], "trl/floor": best["trl"] / best["floor"], "trl/capalign": best["trl"] / best["capalign"]}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    from rich.console import Console
    from rich.table import Table

    shape_name = "tiny Idefics3" if args.quick else "SmolVLM-256M-shaped"
    judge_desc = f"a second random {shape_name} model (seed 1), the same architecture as the policy" if args.reward == "judge" else None
    t = Table(title=f"GRPO step ({'tiny' if args.quick else 'SmolVLM-256M shapes'}, {args.images} images x {G} samples, "
                    f"{args.tokens} new tokens, reward {args.reward}, {torch.get_num_threads()} threads)")
    for c in ("", "best s", "all s", "vision passes / step"):
        t.add_column(c)
    for k in ("floor", "capalign", "trl"):
        t.add_row(k, f"{best[k]:.2f}", " ".join(f"{x:.2f}" for x in times[k]), f"{passes[k]:g}")
    t.add_row("capalign / floor", f"{ratio['capalign/floor']:.3f}", "target <= 1.2: " + ("met" if ratio["capalign/floor"] <= 1.2 else "NOT met"), "")
    t.add_row("trl / floor", f"{ratio['trl/floor']:.3f}", "", "")
    t.add_row("trl / capalign", f"{ratio['trl/capalign']:.3f}", "", "")
    t.add_row("peak memory", f"{peak / 2**30:.2f} GiB", "max RSS (3 models: 2 policies + judge)", "")
    Console().print(t)
    print(f"judge: {judge_desc or 'none (metric reward)'}")
    out = Path(__file__).parent / "results" / ("rl_step_quick.json" if args.quick else "rl_step.json")
    atomic_write_json(out, {"shape": "tiny" if args.quick else "smolvlm-256m", "images": args.images, "samples": G,
                            "new_tokens": args.tokens, "reward": args.reward, "judge": judge_desc,
                            "threads": torch.get_num_threads(), "seconds": times, "best": best, "ratios": ratio,
                            "vision_passes_per_step": passes, "target": 1.2, "peak_memory_bytes": peak})


if __name__ == "__main__":
    main()
