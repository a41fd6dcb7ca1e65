"""Stage `summary`: after every seed, the multi-seed summary (study/summary.py): summary.json, the tables
printed at the end of a study, a forest plot and, with a ViZer budget, the difference-against-steps plot.
It re-runs every time (seconds), over the seeds whose evaluation is complete."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ... import CapalignError
from ...config import arg
from ...io import atomic_write_bytes, atomic_write_json, read_jsonl, read_references
from ...utils import print0
from .. import layout
from ..stage import Context, Stage
from ..summary import METRICS, clean, headline_systems, print_summary, summarize


@dataclass
class SummaryOptions:
    baseline: str = arg("Base", "The system every other one is compared with.")
    metrics: list[str] = arg(None, f"Metrics (corpus keys of `capalign evaluate`; default: those of {', '.join(METRICS)} the eval files have).")
    level: float = arg(0.95, "Confidence level of the intervals.")
    n_boot: int = arg(2000, "Bootstrap replicates.")
    bootstrap_seed: int = arg(0, "Seed of the bootstrap (fixed: the same run gives the same summary).")

    def __post_init__(self):
        if isinstance(self.metrics, str):
            self.metrics = [m.strip() for m in self.metrics.split(",") if m.strip()]
        if not 0 < self.level < 1:
            raise ValueError("level must be in (0, 1)")
        if self.n_boot < 100:
            raise ValueError("n_boot must be >= 100")


class SummaryStage(Stage):
    name, help = "summary", "Scores over seeds and paired differences vs the Base (capalign.stats); summary.json and plots."
    options, needs, per_seed, always_run = SummaryOptions, ("evaluate",), False, True

    def outputs(self, ctx: Context) -> list[Path]:
        return [ctx.root / layout.SUMMARY, ctx.root / layout.FOREST]

    def run(self, ctx: Context) -> None:
        from ...plotting import budget_png, forest_png

        o = self.opts(self.section(ctx))
        done = {s: c for s, c in ctx.seeds.items() if c.evals and all(p.exists() for p in c.evals.values())}
        if not done:
            raise CapalignError("no seed has finished its evaluation; nothing to summarise")
        files = {s: {n: {"eval": c.evals[n], "captions": c.captions[n]} for n in c.evals} for s, c in done.items()}
        refs = {s: read_references(str(c.test_manifest)) for s, c in done.items()}
        budgets = next(iter(done.values())).budgets
        if o.baseline not in next(iter(files.values())):
            raise CapalignError(f"summary.baseline {o.baseline!r} is not a system of this study ({', '.join(next(iter(files.values())))})")
        summary = clean(summarize(files, refs, o.baseline, o.metrics, o.level, o.n_boot, o.bootstrap_seed, budgets))
        atomic_write_json(ctx.root / layout.SUMMARY, summary)
        atomic_write_bytes(ctx.root / layout.FOREST, forest_png(summary, headline_systems(summary)))
        if budgets:
            atomic_write_bytes(ctx.root / layout.BUDGET, budget_png(summary))
        print_summary(summary)
        s0, c0 = next(iter(done.items()))  # a look at what the systems say (first test images of the first seed)
        for name in [o.baseline, *headline_systems(summary)]:
            caps = [r["caption"] for _, r in zip(range(3), read_jsonl(c0.captions[name]))]
            print0(f"{name} (seed {s0}): " + " | ".join(caps))
        missing = sorted(set(ctx.seeds) - set(done))
        print0(f"summary over seeds {', '.join(map(str, sorted(done)))}" + (f" (seeds {missing} not finished)" if missing else "")
               + f" -> {ctx.root / layout.SUMMARY}, {ctx.root / layout.FOREST}" + (f", {ctx.root / layout.BUDGET}" if budgets else ""))
