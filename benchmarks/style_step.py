"""One DPO training step of 8 pairs: capalign's style trainer vs TRL's DPOTrainer vs the floor, side by side.

Model: random weights with SmolVLM-256M's shapes (SigLIP-B/16 at 512 px, 12 vision layers; 30-layer 576-wide
Llama), LoRA r=32 on the language model, shapes-world images with (humorous, factual) caption pairs, the
style prompt. Both trainers share ONE PEFT model (TRL builds it from the same LoRA config with a random,
non-zero init, so the policy differs from the reference and the loss is not the trivial log 2).
  trl      = DPOTrainer: its collator (processor on 2B prompts, images repeated) + compute_loss (policy forward
             on 2B sequences with vision, reference forward on 2B sequences with vision) + backward + AdamW step
  capalign = StyleTrainer: compute_loss (encode: vision once per image; reference forward, adapter off, no
             grad; policy forward on 2B sequences reusing the image embeddings) + backward + AdamW step;
             the reference cache is cleared before each timed step (a first-epoch step)
  cached   = the same with the reference log-probs cached (every later epoch)
  floor    = the work no implementation can skip: one vision pass per image + the reference LM forward
             without gradients + the policy LM forward/backward over the same tokens (log-probs of the caption
             tokens summed as the loss) + the same AdamW step
Targets: capalign >= 2x faster than trl; capalign <= 1.15 x floor. The losses of trl and capalign on the same
batch and weights must agree within 1e-4.

Run: `.venv/bin/python benchmarks/style_step.py [--quick]`; writes benchmarks/results/style_step.json.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from capalign.data import shapes  # noqa: E402
from capalign.data.pairs import Pair  # noqa: E402
from capalign.io import atomic_write_json  # noqa: E402
from capalign.models import load_vlm  # noqa: E402
from capalign.models.tiny import IDEFICS3_SPECIALS, SMOLVLM_256M, TINY, build_idefics3, build_tokenizer  # noqa: E402
from capalign.style.train import StyleTrainer, caption_token_logps, collate, interleave  # noqa: E402
from capalign.training.lora import lora_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny model, for a smoke run")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from datasets import Dataset
    from transformers import TrainingArguments
    from trl import DPOConfig, DPOTrainer

    shape = TINY if args.quick else SMOLVLM_256M
    tmp = Path(tempfile.mkdtemp())
    rows = [shapes.make_example(0, i, split="bench") for i in range(max(args.pairs, 200))]
    corpus = [c for r, _ in rows for k in ("captions", "captions_humorous") for c in r[k]]
    tok = build_tokenizer(IDEFICS3_SPECIALS, corpus, vocab_size=600)
    path = build_idefics3(tmp / "m", shape, tokenizer=tok, longest_edge=shape["vision"]["image_size"])
    vlm = load_vlm(str(path), device="cpu", dtype="float32", prompt="Write a humorous caption for this image.")
    pairs = [Pair(str(i), Image.open(BytesIO(png)).convert("RGB"), None, r["captions_humorous"][0], r["captions"][0], "humorous")
             for i, (r, png) in enumerate(rows[: args.pairs])]

    # TRL: the same prompt text and captions (it adds no end token to vision datasets: append it like capalign does)
    eos = vlm.tokenizer.convert_ids_to_tokens(vlm.eos_ids[0])
    prompt = vlm.prompt_texts(1, vlm.prompt)[0]
    trl_rows = [{"image": p.image, "prompt": prompt, "chosen": p.chosen + eos, "rejected": p.rejected + eos} for p in pairs]
    peft_cfg = lora_config(vlm, r=32, alpha=64, dropout=0.0)
    peft_cfg.init_lora_weights = False
    dpo_args = DPOConfig(output_dir=str(tmp / "trl"), per_device_train_batch_size=args.pairs, max_steps=1, report_to=[], use_cpu=True,
                         max_length=None, save_strategy="no", gradient_checkpointing=False, bf16=False, beta=0.1)
    torch.manual_seed(0)
    trl = DPOTrainer(model=vlm.model, args=dpo_args, train_dataset=Dataset.from_list(trl_rows), processing_class=vlm.processor, peft_config=peft_cfg)
    model = trl.model
    ours = StyleTrainer(model=model, args=TrainingArguments(output_dir=str(tmp / "st"), report_to=[], use_cpu=True, remove_unused_columns=False),
                        train_dataset=pairs, data_collator=collate, vlm=vlm, method="dpo", beta=0.1, gamma=1.0, prompt=vlm.prompt)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    model.train()

    # 1. the same loss on the same batch and weights
    loss_trl = trl.compute_loss(model, trl.data_collator([dict(r) for r in trl_rows])).item()
    loss_ours = ours.compute_loss(model, collate(pairs)).item()
    ours._ref_cache.clear()

    def finish(loss):
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def trl_step():
        finish(trl.compute_loss(model, trl.data_collator([dict(r) for r in trl_rows])))

    def capalign_step():
        ours._ref_cache.clear()
        finish(ours.compute_loss(model, collate(pairs)))

    def cached_step():
        finish(ours.compute_loss(model, collate(pairs)))

    def floor():
        enc2 = vlm.repeat(vlm.encode([p.image for p in pairs]), 2)
        caps = vlm.tokenize_captions(interleave([p.chosen for p in pairs], [p.rejected for p in pairs]))
        with torch.no_grad(), model.disable_adapter():
            caption_token_logps(model, vlm, enc2, caps)
        finish(caption_token_logps(model, vlm, enc2, caps).sum())

    steps = {"trl": trl_step, "capalign": capalign_step, "cached": cached_step, "floor": floor}
    for fn in steps.values():  # warm-up
        fn()
    times = {k: [] for k in steps}
    for _ in range(args.repeats):  # interleaved, so load changes hit every path alike
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    speedup, vs_floor = best["trl"] / best["capalign"], best["capalign"] / best["floor"]
    diff = abs(loss_trl - loss_ours)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    from rich.console import Console
    from rich.table import Table

    n_sub = vlm.processor(text=[prompt], images=vlm.processor_images([pairs[0].image]), return_tensors="pt")["pixel_values"].shape[1]
    t = Table(title=f"DPO step, {args.pairs} pairs ({'tiny' if args.quick else 'SmolVLM-256M shapes'}, {n_sub} sub-image(s)/image, "
                    f"{torch.get_num_threads()} threads)")
    for c in ("path", "best s", "median s", "all s"):
        t.add_column(c)
    for k in steps:
        t.add_row(k, f"{best[k]:.2f}", f"{med[k]:.2f}", " ".join(f"{x:.2f}" for x in times[k]))
    t.add_row("trl / capalign", f"{speedup:.2f}x", f"{med['trl'] / med['capalign']:.2f}x", "target >= 2: " + ("met" if speedup >= 2 else "NOT met"))
    t.add_row("capalign / floor", f"{vs_floor:.3f}", f"{med['capalign'] / med['floor']:.3f}", "target <= 1.15: " + ("met" if vs_floor <= 1.15 else "NOT met"))
    t.add_row("loss trl | capalign", f"{loss_trl:.6f}", f"{loss_ours:.6f}", f"|diff| {diff:.2e} (<= 1e-4: {'yes' if diff <= 1e-4 else 'NO'})")
    t.add_row("peak memory", f"{peak / 2**30:.2f} GiB", "", "max RSS")
    Console().print(t)
    out = Path(__file__).parent / "results" / ("style_step_quick.json" if args.quick else "style_step.json")
    atomic_write_json(out, {"shape": "tiny" if args.quick else "smolvlm-256m", "pairs": args.pairs, "sub_images_per_image": int(n_sub),
                            "threads": torch.get_num_threads(), "seconds": times, "best": best, "median": med,
                            "speedup_vs_trl": speedup, "ratio_vs_floor": vs_floor, "targets": {"speedup_vs_trl": 2.0, "ratio_vs_floor": 1.15},
                            "loss": {"trl": loss_trl, "capalign": loss_ours, "abs_diff": diff}, "peak_memory_bytes": peak})


if __name__ == "__main__":
    main()
