"""The nano training loop shared by the nano captioner and the nano judge."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from ..utils import progress


def fit(model, params, next_batch: Callable[[], dict], steps: int, lr: float, weight_decay: float, desc: str,
        callback: Callable[[int, float], None] | None = None, loss_fn: Callable | None = None,
        resume: dict | None = None, save: Callable[[dict], None] | None = None, save_every: int = 0) -> tuple[list[float], float]:
    """The nano training loop (captioner and judge): AdamW, linear warmup over the first 5% of the steps,
    cosine decay to zero at the last step, gradients clipped at norm 1. `next_batch()` -> forward kwargs
    with labels; `loss_fn(model, batch)` replaces the model's own loss. `callback(step, train_seconds)` runs
    after each step; its time is not training time. Checkpoints: every `save_every` steps (not at the last)
    `save(state)` gets the loop's state (step, optimizer, scheduler, losses, training seconds) for the caller
    to store with its own (model weights, RNGs); `resume=state` continues after that step, the model's
    weights already restored by the caller. Returns (per-step losses, training seconds); the model is left
    in eval mode."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, steps // 20)

    def lr_factor(s: int) -> float:
        return min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    model.train()
    t0, losses, other_s, start = time.time(), [], 0.0, 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        start, losses, other_s = resume["step"], list(resume["losses"]), -resume["train_seconds"]
    with progress() as bar:
        task = bar.add_task(desc, total=steps, rate="", completed=start)
        for step in range(start + 1, steps + 1):
            batch = next_batch()
            loss = loss_fn(model, batch) if loss_fn is not None else model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(task, advance=1, rate=f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
            if callback is not None:
                e0 = time.time()
                callback(step, e0 - t0 - other_s)
                other_s += time.time() - e0
            if save is not None and save_every and step % save_every == 0 and step < steps:
                e0 = time.time()
                save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "losses": losses,
                      "train_seconds": e0 - t0 - other_s})
                other_s += time.time() - e0
    model.eval()
    return losses, time.time() - t0 - other_s
