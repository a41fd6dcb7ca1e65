"""`capalign style sweep`: the data-efficiency study of stylistic alignment (methods x styles x budgets x seeds).

Every cell trains one method on a nested budget subset of the training split (`budget_subset`: the 2%
pairs of a seed are inside its 5% pairs) and is evaluated on the SAME test split (fixed by split_seed,
never trained on; on the shapes world its styled captions come from held-out templates):
  - style accuracy of the captions generated with the style prompt (a style classifier trained on the
    training split's captions, its own held-out accuracy and confusion matrix saved beside the results);
  - WR-LogP (mean per-token log-prob of chosen > rejected) and its summed variant, on the test pairs;
  - content kept: grounding of the generated captions against the annotated objects (recall of objects
    with the right colour, CHAIR_i), beside the factual Base (the base model with its own prompt).
Two extra cells per sweep: `zero-shot/<style>` (the base model with the style prompt: the level every
curve starts from) and `base` (factual captions: the content reference).

Cells are independent processes' work (`--workers N`, or one share per rank under torchrun); a cell
writes its folder and, last, `result.json`, so an interrupted sweep re-runs only unfinished cells.
`sweep.json` (all cells, curves with 95% t intervals over seeds from capalign.stats.mean_ci, saturation
budgets from capalign.stats.saturation_budget), `cells.csv` and one plot per measure are rewritten at
the end of every run. The saturation budget is the smallest budget whose mean over seeds reaches 95% of
the way from the zero-shot level to the plateau, the plateau being the mean at the largest budget; its
interval comes from resampling seeds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .. import CapalignError
from ..config import arg, check_resume, save_config, show_config
from ..io import atomic_write_json, atomic_write_text
from ..models.prompts import fill_prompt
from ..utils import print0
from .config import METHODS, StyleDataArgs
from .results import aggregate


@dataclass
class StyleSweepConfig(StyleDataArgs):
    """Data-efficiency sweep: train and evaluate every method x style x budget x seed on one test split.
    The data flags (--data, --split_seed, --test_share, --prompt, ...) are those of every style command."""

    model: str = arg("", "Base VLM (e.g. the clean nano captioner: `capalign nano train --out runs/nano-clean`).")
    out: str = arg("", "Output folder (e.g. RUN/style): cells/, sweep.json, cells.csv, plot-<measure>.png. Re-running resumes.")
    methods: str = arg("sft,dpo,simpo", f"Comma-separated methods among {','.join(m for m in METHODS if m != 'zero-shot')} (zero-shot always runs).")
    styles: str = arg("humorous,romantic", "Comma-separated styles.")
    budgets: str = arg("1%,2%,5%,10%,20%,50%,100%", "Comma-separated budgets, shares of the training split.")
    seeds: int = arg(3, "Seeds per cell (0..seeds-1): budget subset, LoRA init, data order.")
    n_test: int = arg(50, "Evaluate on at most this many test pairs per style (the same pairs for every cell).")
    steps: int = arg(200, "Optimizer steps per cell, the same for every budget, so cells differ only in their data (small budgets repeat their pairs); 0: --epochs over each budget's pairs, at least --min_steps (then bigger budgets also get more steps).")
    epochs: float = arg(2.0, "With --steps 0: epochs over each budget's pairs.")
    min_steps: int = arg(20, "With --steps 0: at least this many optimizer steps per cell (small budgets repeat their pairs).")
    collapse_share: float = arg(0.5, "Collapse guard: a budget whose mean content recall (recall_attr) is below this share of the factual Base's is collapsed (as is one whose captions the degenerate metric's rule marks collapsed); style measures there are not counted as gains (see sweep.json's saturation_definition).")
    batch_size: int = arg(8, "Pairs per optimizer step.")
    lr: float = arg(2e-3, "LoRA learning rate.")
    lora_r: int = arg(16, "LoRA rank (alpha = 2 x rank).")
    dpo_beta: float = arg(0.1, "DPO beta.")
    simpo_beta: float = arg(2.0, "SimPO beta.")
    simpo_gamma: float = arg(1.0, "SimPO margin gamma.")
    sft_weight: float = arg(0.0, "dpo and simpo cells: + this weight x the SFT loss of the chosen captions (TRL's cpo_alpha; CPO-SimPO).")
    max_new_tokens: int = arg(96, "Longest generated caption, in tokens (the nano captioner's byte-level tokenizer needs up to ~90 for a styled shapes-world caption, 43 for a factual one).")
    classifier: str = arg("", "Style classifier folder (capalign or any HF sequence-classification model); default: train one on the training split.")
    workers: int = arg(1, "Cells run in this many processes at once (each with cpu_count/workers threads).")
    device: str = arg("cpu", "Device of every cell.")
    overwrite: bool = arg(False, "Start over: discard the cells and classifier of an earlier sweep in --out instead of reusing them, "
                                 "also when its settings differ (a re-run may add methods, styles, budgets and seeds; other changes are refused).")
    resume_free = ("methods", "styles", "budgets", "seeds")  # a re-run may add cells; every other field changes what a cell holds

    def __post_init__(self):
        super().__post_init__()
        if not self.data:
            self.data = "shapes:500"
        for name in ("model", "out"):
            if not str(getattr(self, name) or "").strip():
                raise ValueError(f"--{name} is required")
        self.method_list = [m.strip() for m in self.methods.split(",") if m.strip()]
        self.style_list = [s.strip() for s in self.styles.split(",") if s.strip()]
        self.budget_list = [b.strip() for b in self.budgets.split(",") if b.strip()]
        bad = [m for m in self.method_list if m not in METHODS or m == "zero-shot"]
        if bad or not self.method_list:
            raise ValueError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from sft, dpo, simpo")
        if not self.style_list:
            raise ValueError("give at least one style")
        try:
            self.shares = [float(b.rstrip("%")) / 100 for b in self.budget_list]
        except ValueError:
            raise ValueError(f"budgets must be percentages like 1%,10%,100%, got {self.budgets!r}") from None
        if not all(b.endswith("%") for b in self.budget_list) or any(not 0 < s <= 1 for s in self.shares):
            raise ValueError(f"budgets must be percentages in (0%, 100%], got {self.budgets!r}")
        if sorted(set(self.shares)) != self.shares:
            raise ValueError("budgets must be strictly increasing")
        for k in ("seeds", "workers", "n_test", "batch_size", "lora_r"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1")
        if self.steps < 0 or self.min_steps < 0 or self.epochs <= 0:
            raise ValueError(f"steps and min_steps must be >= 0 and epochs > 0, got {self.steps}, {self.min_steps}, {self.epochs}")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")
        if not 0 <= self.collapse_share <= 1:
            raise ValueError(f"collapse_share must be in [0, 1], got {self.collapse_share}")

    def cell_steps(self, n_pairs: int) -> int:
        """Optimizer steps of a cell trained on n_pairs pairs: --steps, or epochs over them (at least --min_steps)."""
        return self.steps or max(math.ceil(self.epochs * n_pairs / self.batch_size), self.min_steps)

    def cells(self) -> list[dict]:
        """Every cell: base, zero-shot per style, then trained cells (largest budgets first, for load balance)."""
        out = [{"name": "base", "method": "base", "style": None}]
        out += [{"name": f"zero-shot/{s}", "method": "zero-shot", "style": s} for s in self.style_list]
        for b, share in sorted(zip(self.budget_list, self.shares), key=lambda x: -x[1]):
            for m in self.method_list:
                for s in self.style_list:
                    for seed in range(self.seeds):
                        out.append({"name": f"{m}/{s}/b{b.rstrip('%')}-s{seed}", "method": m, "style": s, "budget": b, "share": share, "seed": seed})
        return out


# ---- one cell (runs in a worker process) ----------------------------------------------------------
_CACHE: dict = {}


def _preferences(cfg: StyleSweepConfig, style: str):
    key = ("prefs", style, *(str(getattr(cfg, f.name)) for f in fields(StyleDataArgs)))  # one entry per data flags + style
    if key not in _CACHE:
        _CACHE[key] = cfg.open_data(style)
    return _CACHE[key]


def _classifier(path: str):
    from ..metrics.style_classifier import load_classifier

    if ("clf", path) not in _CACHE:
        _CACHE[("clf", path)] = load_classifier(path)
    return _CACHE[("clf", path)]


def _caption(vlm, images: list, prompt: str | None, max_new_tokens: int, batch: int = 50) -> list[str]:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out += vlm.generate(vlm.encode(images[i : i + batch], prompt), max_new_tokens=max_new_tokens).texts
    return out


def evaluate(vlm, test: list, style: str | None, prompt: str | None, cfg: StyleSweepConfig, clf_path: str) -> tuple[dict, list[str]]:
    """Measures of one model on the test pairs: style accuracy and content of its captions, WR-LogP."""
    from ..metrics.degenerate import degeneracy, vocabulary_for
    from ..metrics.style import content_kept, distinct_frames, style_accuracy, wr_logp

    vlm.model.eval()
    caps = _caption(vlm, [p.load_image() for p in test], prompt, cfg.max_new_tokens)
    clf = _classifier(clf_path)
    g = content_kept(caps, test).get("grounding", {})
    m = {"recall_attr": g.get("attr", {}).get("recall"), "chair_i_attr": g.get("attr", {}).get("chair_i"),
         "recall_name": g.get("name", {}).get("recall")}
    if "per_caption" in g:
        m["distinct_frames"] = distinct_frames(caps)
    d = degeneracy(caps, vocabulary_for([p.chosen, p.rejected] for p in test))  # the collapse guard's second half (style/results.py)
    m.update({f"degenerate_{k}": v for k, v in d["corpus"].items()})
    for s in [style] if style else cfg.style_list:  # the base cell: how often each style is (wrongly) detected
        acc = style_accuracy(caps, s, clf)
        m["style_acc" if style else f"style_acc/{s}"] = acc["style_accuracy"]
        if "per_caption" in g:  # shapes world: the caption is in the style AND names every object with its colour, nothing wrong
            ok = [lab == s and faithful(row["attr"]) for lab, row in zip(acc["per_caption"], g["per_caption"])]
            m["styled_faithful" if style else f"styled_faithful/{s}"] = sum(ok) / len(ok) if ok else None
    if style:
        wr = wr_logp(vlm, test)
        m.update(wr_logp=wr["wr_logp"], wr_logp_sum=wr["wr_logp_sum"], margin_mean=wr["margin_mean"])
    return m, caps


def faithful(row: dict) -> bool:
    """One caption's attribute-level grounding row: every annotated object named with its colour, no wrong mention."""
    return row["recalled"] == row["annotated"] and row["hallucinated"] == 0


def run_cell(cell: dict, cfg: StyleSweepConfig, clf_path: str) -> dict:
    """Train (unless base / zero-shot) and evaluate one cell into out/cells/<name>/; result.json is written last."""
    from ..data.preferences import budget_subset
    from ..models import load_vlm
    from .config import StyleTrainConfig
    from .train import train

    d = Path(cfg.out) / "cells" / cell["name"]
    if (d / "result.json").exists():
        return json.loads((d / "result.json").read_text())
    shutil.rmtree(d, ignore_errors=True)  # leftovers of an interrupted run of this cell
    t0 = time.time()
    style = cell["style"]
    prefs = _preferences(cfg, style or cfg.style_list[0])
    test = prefs.test[: cfg.n_test]
    res = {**cell, "n_test": len(test)}
    if cell["method"] in ("base", "zero-shot"):
        prompt = fill_prompt(cfg.prompt, "--prompt", style=style) if style else None
        vlm = load_vlm(cfg.model, device=cfg.device, dtype="float32", prompt=prompt)
        res.update(steps=0, n_pairs=0)
    else:
        prompt = fill_prompt(cfg.prompt, "--prompt", style=style)
        subset = budget_subset(prefs.train, cell["budget"], cell["seed"])
        data_args = {f.name: getattr(cfg, f.name) for f in fields(StyleDataArgs)}  # --data, --split_seed, --prompt, ...
        tcfg = StyleTrainConfig(**data_args, model=cfg.model, out=str(d / "adapter"), method=cell["method"], style=style, budget=cell["budget"],
                                max_steps=cfg.cell_steps(len(subset)), batch_size=cfg.batch_size, lr=cfg.lr, lora_r=cfg.lora_r, lora_alpha=2 * cfg.lora_r,
                                beta=cfg.dpo_beta if cell["method"] == "dpo" else cfg.simpo_beta if cell["method"] == "simpo" else None,
                                gamma=cfg.simpo_gamma, sft_weight=cfg.sft_weight if cell["method"] != "sft" else 0.0, seed=cell["seed"], device=cfg.device, save_every=0, report_to="none",
                                log_every=10)
        vlm, tr = train(tcfg, subset, {"n_train_split": len(prefs.train)})
        res.update(steps=tr["steps"], n_pairs=len(subset), train_seconds=tr["train_seconds"],
                   final_loss=next((h["loss"] for h in reversed(tr["history"]) if "loss" in h), None))
    t1 = time.time()
    measures, caps = evaluate(vlm, test, style, prompt, cfg, clf_path)
    atomic_write_text(d / "captions.jsonl", "".join(json.dumps({"id": p.id, "caption": c}, ensure_ascii=False) + "\n" for p, c in zip(test, caps)))
    res.update(measures=measures, eval_seconds=round(time.time() - t1, 2), seconds=round(time.time() - t0, 2), examples=caps[:5])
    atomic_write_json(d / "result.json", res)  # last: marks the cell finished
    return res


def _worker_init(threads: int) -> None:
    import torch

    os.environ["CAPALIGN_QUIET"] = "1"  # no per-cell progress bars from the Trainer
    torch.set_num_threads(threads)
    import transformers

    transformers.logging.set_verbosity_error()


def _cell_job(cell: dict, cfg_dict: dict, clf_path: str) -> dict:
    try:
        return run_cell(cell, StyleSweepConfig(**cfg_dict), clf_path)
    except Exception as e:  # noqa: BLE001 (reported per cell; the sweep goes on and a re-run retries it)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {**cell, "error": f"{type(e).__name__}: {first}"}


# ---- the sweep ------------------------------------------------------------------------------------
def train_classifier(cfg: StyleSweepConfig, out: Path) -> str:
    """The style classifier of the sweep: given (--classifier) or fitted on the training split's captions of
    every style (chosen -> its style, rejected -> factual), evaluated on the test split's (held-out templates)."""
    from ..metrics.style import classifier_data
    from ..metrics.style_classifier import StyleClassifier

    if cfg.classifier:  # its styles were checked by check_inputs
        return cfg.classifier
    path = out / "classifier"
    if (path / "config.json").exists():
        return str(path)
    train = [p for s in cfg.style_list for p in _preferences(cfg, s).train]
    test = [p for s in cfg.style_list for p in _preferences(cfg, s).test]
    clf = StyleClassifier.fit(*classifier_data(train))
    clf.heldout = clf.evaluate(*classifier_data(test), data=f"{cfg.data} test split (split seed {cfg.split_seed})")
    clf.save_pretrained(path)
    print0(f"style classifier: held-out accuracy {clf.heldout['accuracy']:.3f} on {clf.heldout['n']} captions; labels {clf.labels}")
    return str(path)


def check_inputs(cfg: StyleSweepConfig) -> None:
    """Everything a cell could fail on because of the input, checked before any folder is written:
    the model, each style's pairs, every budget against its training split, the classifier's styles."""
    from ..data.preferences import parse_budget
    from ..metrics.style_classifier import load_classifier
    from ..models.loading import check_model

    check_model(cfg.model)
    for s in cfg.style_list:
        n = len(_preferences(cfg, s).train)
        if not _preferences(cfg, s).test:
            raise CapalignError(f"no {s!r} test pairs in {cfg.data} (test_share {cfg.test_share}); the sweep measures every cell on them")
        for b in cfg.budget_list:
            parse_budget(b, n)  # below one pair / not a budget: one line, naming the budget and the split size
    if cfg.classifier:
        clf = load_classifier(cfg.classifier)
        for s in cfg.style_list:
            clf.require(s)


def run(cfg: StyleSweepConfig) -> dict:
    show_config(cfg)
    check_inputs(cfg)
    out = Path(cfg.out)
    if check_resume(cfg, out):  # --overwrite: the cells of the earlier sweep go
        for p in (out / "cells", out / "classifier"):
            shutil.rmtree(p, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    t0 = time.time()
    clf_path = train_classifier(cfg, out)
    cells = cfg.cells()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    todo = [c for i, c in enumerate(cells) if i % world == rank and not (out / "cells" / c["name"] / "result.json").exists()]
    print0(f"{len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run ({cfg.workers} worker(s))")
    errors = {}
    if todo:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // cfg.workers)
        if cfg.workers == 1:  # in this process: keep its torch threads, silence per-cell output for the run only
            from unittest import mock

            with mock.patch.dict(os.environ, {"CAPALIGN_QUIET": "1"}):
                errors = _drain((_cell_job(c, asdict(cfg), clf_path) for c in todo), len(todo))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(threads,)) as pool:
                futs = [pool.submit(_cell_job, c, asdict(cfg), clf_path) for c in todo]
                errors = _drain((f.result() for f in as_completed(futs)), len(todo))
    summary = aggregate(cfg, clf_path, wall_seconds=time.time() - t0)
    if errors:
        first = next(iter(errors.items()))
        raise CapalignError(f"{len(errors)} cell(s) failed (first: {first[0]}: {first[1]}); the others are in {out / 'sweep.json'}; re-run to retry")
    return summary


def _drain(results, total: int) -> dict:
    from ..utils import progress

    errors = {}
    with progress() as bar:
        task = bar.add_task("style sweep", total=total, rate="")
        for r in results:
            if "error" in r:
                errors[r["name"]] = r["error"]
                print0(f"[red]cell {r['name']} failed: {r['error']}")
            bar.update(task, advance=1, rate=r["name"])
    return errors
