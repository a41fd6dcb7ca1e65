"""`capalign rl train`: GRPO on the language model (LoRA) with a caption reward, through TRL's GRPOTrainer.

Decision (issue 8): TRL 1.16's GRPOTrainer has a vision-language path, and a real step runs on tiny
Idefics3 (SmolVLM) and Qwen2-VL checkpoints (tests/test_rl.py runs one per family). So capalign uses it:
TRL owns sampling, the rewards' call, group advantages, the loss (TRL `loss_type`), the KL to the base
(reference = the same PEFT model with its adapter disabled), checkpoints that resume, TensorBoard and
DDP. `RLTrainer` subclasses it where it falls short:

1. One vision pass per image. TRL treats each of the G samples of an image as its own row and runs the
   vision tower G times to sample, G times in the loss forward and G more for the KL reference. The
   vision tower and connector are frozen, so `models.shared_vision.SharedVision` wraps the model's
   `get_image_features` (the one method every path calls) to encode each distinct image once per
   generation batch; the only trainer method overridden is `_generate_and_score_completions`, to start a
   fresh cache for each batch. Loss and gradients equal stock TRL's (tests/test_rl.py).
2. The policy's prompt. TRL renders prompts with the processor's chat template; base checkpoints (SmolVLM
   Base, the nano captioner) have none. The trainer gives the processor a constant template that renders
   exactly `VLM.prompt_texts()` (what `capalign caption` uses), so training and captioning see the same
   tokens in every family (tested: TRL's prompt ids == `VLM.encode`'s).
3. Rewards. `--reward` is `capalign.rl.rewards.build_reward`'s spec (`judge`, `cider`, `cider:1,grounding:0.5`);
   each part is one TRL reward function (TRL sums them with their weights and logs each). They get plain
   caption strings and the dataset columns `image`, `references`, `objects`, `id`; a reward that returns
   NaN or the wrong number of values stops training with a one-line error instead of TRL's silent NaN skip.
4. Resume across epochs: `_get_train_sampler` reseeds TRL's sampler per epoch (stock, a run resumed after
   its first epoch sees the first epoch's image order again and ends with a different adapter).

Python: `run(RLTrainConfig(...))` returns {"steps", "history", "adapter"} and writes the adapter.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

from transformers import TrainerCallback
from trl import GRPOTrainer

from .. import CapalignError
from ..config import check_resume, config_dict, save_config, show_config
from ..devices import resolve_precision
from ..io import atomic_write_json
from ..models.adapter import write_adapter_meta
from ..models.shared_vision import SharedVision
from ..training.args import trainer_arguments
from ..training.card import write_model_card
from ..training.checkpoints import begin_run, last_checkpoint
from ..training.hub import push_folder
from ..training.progress import show_progress
from ..utils import print0
from .config import RLTrainConfig  # noqa: F401  (the CLI finds the config class here)

# reward name -> the dataset column it cannot do without (every row has an image)
NEEDS = {"cider": "references", "bertscore": "references", "judge": "references", "grounding": "objects"}


def reward_parts(cfg: RLTrainConfig, custom: dict | None = None) -> list[tuple[str, object, float]]:
    """cfg.reward (`capalign.rl.rewards.build_reward`'s spec: 'judge', 'cider:1,grounding:0.5', ...) -> [(name, fn, weight)].
    Each part becomes its own TRL reward function, so TRL logs rewards/<name>/mean beside the weighted sum."""
    from .rewards import WeightedReward, build_reward

    named = {k: _named(k, fn) for k, fn in (custom or {}).items()}  # the spec's name is the logged name
    r = build_reward(cfg.reward, judge=cfg.judge, judge_prompt=cfg.judge_prompt, judge_dtype=cfg.judge_dtype,
                     judge_load_in_8bit=cfg.judge_load_in_8bit, judge_batch_size=cfg.judge_batch_size,
                     device=cfg.device, custom=named)
    parts = [(_name(fn), fn, float(w)) for fn, w in (r.parts if isinstance(r, WeightedReward) else [(r, 1.0)])]
    names = [n for n, _, _ in parts]
    if len(set(names)) != len(names):
        raise CapalignError(f"reward {cfg.reward!r} names a reward twice")
    return parts


def _name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _named(name: str, fn):
    def reward(completions, **kw):
        return fn(completions, **kw)

    reward.__name__ = name
    return reward


def checked(name: str, fn, degenerate_vocabulary: str | None = None):
    """A TRL reward function around a capalign reward: plain-string completions in (TRL passes chat messages for
    chat prompts), one finite float per completion out (TRL would skip a NaN row with a warning). With
    `degenerate_vocabulary` it also logs the sampled captions' degeneracy shares (metrics/degenerate.py, the
    metric `capalign evaluate --metrics degenerate` reports) through TRL's `log_metric`: degenerate/<flag>."""
    from .rewards import check_rewards, completion_texts

    def reward(completions, **kw):
        texts = completion_texts(completions)
        if degenerate_vocabulary and kw.get("log_metric") is not None:
            from ..metrics.degenerate import degeneracy

            for k, v in degeneracy(texts, degenerate_vocabulary)["corpus"].items():
                kw["log_metric"](f"degenerate/{k}", v)
        return check_rewards(repr(name), fn(texts, **kw), len(texts))

    reward.__name__ = name  # TRL logs rewards/<name>/mean and /std
    return reward


def build_dataset(cfg: RLTrainConfig, vlm, needs: set[str]):
    """Records -> a datasets.Dataset of TRL's vision-language rows: prompt messages, image, references, objects, id."""
    from datasets import Dataset

    from ..data.sources import open_images
    from ..metrics.grounding import parse_objects

    messages = [{"role": "user", "content": [{"type": "image"}]}]  # rendered by the exact-prompt template below
    rows, no_refs, no_objs = [], [], []
    source = open_images(cfg.data, limit=cfg.limit, default_split="train")
    for r in source:
        objs = r.meta.get("objects")  # one Arrow schema for every source: the grounding metric's reading of them
        objs = None if objs is None else [{"name": n, "attributes": sorted(a)} for n, a in parse_objects(objs)]
        no_refs += [r.id] if not r.captions else []
        no_objs += [r.id] if objs is None else []
        rows.append({"prompt": messages, "image": r.image, "references": list(r.captions), "objects": objs or [], "id": r.id})
    if not rows:
        raise CapalignError(f"no usable images in {cfg.data} ({len(source.skipped)} skipped)")
    if "references" in needs and no_refs:
        raise CapalignError(f"reward {cfg.reward!r} needs reference captions, but {len(no_refs)} of {len(rows)} images have none (e.g. {no_refs[0]!r})")
    if "objects" in needs and no_objs:
        raise CapalignError(f"reward {cfg.reward!r} needs object annotations ('objects'), but {len(no_objs)} of {len(rows)} images have none (e.g. {no_objs[0]!r})")
    if len(rows) < cfg.batch_size:
        raise CapalignError(f"{len(rows)} images are fewer than one batch of {cfg.batch_size}")
    return Dataset.from_list(rows)


def exact_prompt_template(vlm) -> str:
    """A chat template that renders any message list as the adapter's own prompt text (its image
    placeholder included); the processor then expands the placeholder for the message's image."""
    return "{% raw %}" + vlm.prompt_texts(1, vlm.prompt)[0] + "{% endraw %}"


class RLTrainer(GRPOTrainer):
    """GRPOTrainer whose vision tower runs once per distinct image of a generation batch (see module doc)."""

    def __init__(self, *args, shared_vision: SharedVision | None = None, **kw):
        self.shared_vision = shared_vision
        super().__init__(*args, **kw)

    def _generate_and_score_completions(self, inputs):
        if self.shared_vision is not None:
            self.shared_vision.clear()  # a new batch of images: the loss steps that follow reuse its encodings
        return super()._generate_and_score_completions(inputs)

    def _get_train_sampler(self, dataset=None):
        # TRL's RepeatSampler draws every epoch's order from one generator seeded once, so a run resumed in its
        # second or later epoch replays the first epoch's order. Trainer calls set_epoch at every epoch start;
        # reseeding there gives each epoch one order whether the run was resumed or not.
        sampler = super()._get_train_sampler(dataset)
        if getattr(sampler, "generator", None) is not None:
            sampler.set_epoch = lambda epoch: sampler.generator.manual_seed(self.args.seed + epoch)
        return sampler


class History(TrainerCallback):
    """history.json: one row per logged step, rebuilt from the trainer's log history (so it survives resumes)."""

    def __init__(self, path: Path, reward_names: list[str]):
        self.path, self.names = path, reward_names
        self.rows: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kw):
        rows = []
        for h in state.log_history:
            if "reward" not in h:
                continue
            row = {"step": h["step"], "reward_mean": h["reward"], "reward_std": h["reward_std"], "loss": h.get("loss"),
                   "kl": h.get("kl"), "entropy": h.get("entropy"), "completion_length": h.get("completions/mean_length"),
                   "frac_reward_zero_std": h.get("frac_reward_zero_std"), "learning_rate": h.get("learning_rate")}
            row.update({f"reward_{n}": h.get(f"rewards/{n}/mean") for n in self.names})
            row.update({f"degenerate_{k}": h.get(f"degenerate/{k}") for k in ("empty", "nonword", "repeat", "distinct")})
            rows.append(row)
        self.rows = rows
        if state.is_world_process_zero:
            atomic_write_json(self.path, rows)


def grpo_args(cfg: RLTrainConfig, reward_weights: list[float], world_size: int = 1):
    """RLTrainConfig -> trl.GRPOConfig (batch_size images x num_generations samples per optimizer step)."""
    from trl import GRPOConfig

    completions = cfg.batch_size * cfg.num_generations
    per_device, rem = divmod(completions, cfg.grad_accum * world_size)
    if rem or per_device < 1:
        raise CapalignError(f"batch_size x num_generations = {completions} completions must split evenly over grad_accum ({cfg.grad_accum}) x processes ({world_size})")
    kw = trainer_arguments(cfg, per_device, cfg.max_steps or -1, num_train_epochs=cfg.epochs,
                           gradient_checkpointing=False, activation_checkpointing=cfg.gradient_checkpointing,
                           log_completions=False, disable_tqdm=True)  # capalign's display instead (training/progress.py)
    return GRPOConfig(
        **kw, num_generations=cfg.num_generations, max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature,
        top_p=cfg.top_p, top_k=0, beta=cfg.beta, loss_type=cfg.loss_type, epsilon=cfg.epsilon,
        scale_rewards=cfg.scale_rewards, reward_weights=reward_weights,
    )


def build_trainer(cfg: RLTrainConfig, custom_rewards: dict | None = None) -> RLTrainer:
    """The policy (LoRA on the LM), the rewards and the data wired into an RLTrainer; `trainer.vlm` is the policy's
    adapter. `custom_rewards`: extra {name: fn} usable in cfg.reward, each with TRL's signature (completions as
    plain strings + the dataset columns image, references, objects, id as keyword arguments)."""
    from ..models import load_vlm

    custom = dict(custom_rewards or {})
    terms = reward_parts(cfg, custom)
    needs = {NEEDS[n] for n, _, _ in terms if n in NEEDS and n not in custom}
    args = grpo_args(cfg, [w for _, _, w in terms], int(os.environ.get("WORLD_SIZE", "1")))
    prec = resolve_precision(cfg.mixed_precision, cfg.device)
    vlm = load_vlm(cfg.model, device=prec.device, dtype=prec.weights, prompt=cfg.prompt)
    dataset = build_dataset(cfg, vlm, needs)
    from ..metrics.degenerate import vocabulary_for

    vocab = vocabulary_for(dataset["references"])  # the shapes world's words on shapes data, else English
    funcs = [checked(n, fn, vocab if k == 0 else None) for k, (n, fn, _) in enumerate(terms)]  # the first part logs degeneracy
    template = getattr(vlm.processor, "chat_template", None)
    vlm.processor.chat_template = exact_prompt_template(vlm)
    trainer = RLTrainer(model=vlm.model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=vlm.processor,
                        peft_config=cfg.peft_config(vlm),
                        callbacks=[History(Path(cfg.out) / "history.json", [n for n, _, _ in terms])],
                        shared_vision=SharedVision(vlm) if cfg.shared_vision else None)
    trainer.vlm, trainer.model_chat_template = vlm, template
    return trainer


def run(cfg: RLTrainConfig, custom_rewards: dict | None = None) -> dict:
    """Train (resuming from the newest checkpoint in cfg.out); returns {"steps", "history", "adapter"}."""
    show_config(cfg)
    out = Path(cfg.out)
    overwrite = check_resume(cfg, out)  # an earlier run in --out must have the same settings (or --overwrite)
    trainer = build_trainer(cfg, custom_rewards)
    show_progress(trainer, "rl train")  # capalign's bar or log lines, not tqdm or raw log dicts
    begin_run(cfg, overwrite, ("rl_result.json", "history.json"))
    resume = None if overwrite else last_checkpoint(out)
    if resume:
        print0(f"resuming from {resume}")
    shared = trainer.shared_vision
    with shared if shared is not None else nullcontext():
        trainer.train(resume_from_checkpoint=resume)
    trainer.vlm.processor.chat_template = trainer.model_chat_template  # the saved processor is the model's own
    trainer.save_model(cfg.out)
    steps, history = trainer.state.global_step, next(c for c in trainer.callback_handler.callbacks if isinstance(c, History)).rows
    if trainer.is_world_process_zero():
        write_adapter_meta(out, trainer.vlm, cfg.model, prompt=trainer.vlm.prompt or "")  # captioning with it is the default
        save_config(cfg, out)
        last = history[-1] if history else {}
        write_model_card(out, title=f"GRPO LoRA adapter of {cfg.model}", base_model=cfg.model, adapter=True, tags=("grpo", "image-captioning"),
                         method=f"GRPO (capalign rl train, TRL's GRPOTrainer) on the language model with reward `{cfg.reward}`"
                                + (f" (judge `{cfg.judge}`)" if cfg.judge else "") + f", {cfg.num_generations} sampled captions per image.",
                         data=f"Images with references from `{cfg.data}`" + (f" (at most {cfg.limit})" if cfg.limit else "") + ".",
                         config=config_dict(cfg), metrics={"steps": steps, **{f"last logged {k}": v for k, v in last.items() if k != "step"}})
        atomic_write_json(out / "rl_result.json", {"steps": steps, "history": history, "config": config_dict(cfg),
                                                   "vision": {"requested": shared.requested, "encoded": shared.encoded} if shared else None})
        print0(f"rl: {steps} steps; adapter saved to {out} (use: capalign caption --model {cfg.model} --adapter {out})")
        if cfg.push_to_hub:
            push_folder(out, cfg.push_to_hub, private=not cfg.hub_public)
    return {"steps": steps, "history": history, "adapter": str(out)}
