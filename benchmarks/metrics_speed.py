"""BLEU + ROUGE-L + CIDEr-D: capalign.metrics.coco vs pycocoevalcap on 25,000 candidates x 5 references.

Both timings include tokenisation (Java PTBTokenizer for pycocoevalcap, ptb.py for us), since that
is what a user waits for; ours starts with cold tokeniser caches. Checks that every corpus and
per-caption score is identical (<= 1e-9), prints a table, writes benchmarks/results/metrics_speed.json
(atomically) and exits 1 if any score differs.

    .venv/bin/python benchmarks/metrics_speed.py [n_candidates]
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from capalign.io import atomic_write_json
from capalign.metrics import coco, ptb, synth

TOL = 1e-9
NAMES = ("BLEU1", "BLEU2", "BLEU3", "BLEU4", "ROUGE_L", "CIDEr")


def _ours(gts, res):
    for cache in (ptb._cache, ptb._infos, ptb._lines):  # cold start, like a fresh process
        cache.clear()
    t0 = time.perf_counter()
    g = ptb.tokenize_corpus({k: list(v) for k, v in gts.items()})
    r = ptb.tokenize_corpus({k: list(res[k]) for k in gts})
    t1 = time.perf_counter()
    corpus, per = coco.coco_scores(g, r, tokenize=False)  # what coco_scores(gts, res) does after tokenising
    t2 = time.perf_counter()
    return corpus, per, t2 - t0, t1 - t0


def _theirs(gts, res):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    t0 = time.perf_counter()
    tok = PTBTokenizer()
    g = tok.tokenize({k: [{"caption": c} for c in v] for k, v in gts.items()})
    r = tok.tokenize({k: [{"caption": c} for c in v] for k, v in res.items()})
    t1 = time.perf_counter()
    b, bp = Bleu(4).compute_score(g, r, verbose=0)
    ro, rop = Rouge().compute_score(g, r)
    ci, cip = Cider().compute_score(g, r)
    t2 = time.perf_counter()
    corpus = {"BLEU1": b[0], "BLEU2": b[1], "BLEU3": b[2], "BLEU4": b[3], "ROUGE_L": ro, "CIDEr": ci}
    per = {"BLEU1": bp[0], "BLEU2": bp[1], "BLEU3": bp[2], "BLEU4": bp[3], "ROUGE_L": list(rop), "CIDEr": list(cip)}
    return {k: float(v) for k, v in corpus.items()}, {k: [float(x) for x in v] for k, v in per.items()}, t2 - t0, t1 - t0


def main(n: int = 25000) -> int:
    gts, res = synth.corpus(n, n_refs=5, seed=123)
    load_before = os.getloadavg()
    ours_c, ours_p, t_ours, t_ours_tok = _ours(gts, res)
    theirs_c, theirs_p, t_theirs, t_theirs_tok = _theirs(gts, res)
    load_after = os.getloadavg()

    diffs = {}
    for k in NAMES:
        assert len(ours_p[k]) == len(theirs_p[k]) == n, k
        diffs[k] = (abs(ours_c[k] - theirs_c[k]), max(abs(x - y) for x, y in zip(ours_p[k], theirs_p[k])))
    worst = max(max(v) for v in diffs.values())
    identical = bool(worst <= TOL)
    ratio = t_theirs / t_ours

    console = Console()
    scores = Table(title=f"{n:,} candidates x 5 refs (synth seed 123): scores")
    for col in ("metric", "capalign", "pycocoevalcap", "|diff| corpus", "max |diff| per caption"):
        scores.add_column(col, justify="left" if col == "metric" else "right")
    for k in NAMES:
        scores.add_row(k, f"{ours_c[k]:.12f}", f"{theirs_c[k]:.12f}", f"{diffs[k][0]:.1e}", f"{diffs[k][1]:.1e}")
    console.print(scores)
    times = Table(title="wall time, tokenisation included")
    for col in ("", "total s", "tokenize s", "score s"):
        times.add_column(col, justify="left" if not col else "right")
    times.add_row("pycocoevalcap (Java PTBTokenizer)", f"{t_theirs:.2f}", f"{t_theirs_tok:.2f}", f"{t_theirs - t_theirs_tok:.2f}")
    times.add_row("capalign (pure Python + numpy)", f"{t_ours:.2f}", f"{t_ours_tok:.2f}", f"{t_ours - t_ours_tok:.2f}")
    times.add_row("speed-up", f"{ratio:.1f}x", f"{t_theirs_tok / t_ours_tok:.1f}x", f"{(t_theirs - t_theirs_tok) / (t_ours - t_ours_tok):.1f}x")
    console.print(times)
    verdict = "[green]identical[/green]" if identical else "[red]DIFFERENT[/red]"
    console.print(f"scores {verdict} (max |diff| {worst:.1e}, tolerance {TOL:g}); "
                  f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after on {os.cpu_count()} CPUs")

    out = Path(__file__).parent / "results" / "metrics_speed.json"
    atomic_write_json(out, {
        "candidates": n, "refs_per_candidate": 5, "corpus_seed": 123, "tokenizer_included": True,
        "pycocoevalcap_s": t_theirs, "pycocoevalcap_tokenizer_s": t_theirs_tok,
        "capalign_s": t_ours, "capalign_tokenizer_s": t_ours_tok, "speedup": ratio,
        "identical": identical, "tolerance": TOL, "max_abs_diff": worst,
        "max_abs_diff_by_metric": {k: {"corpus": d[0], "per_caption": d[1]} for k, d in diffs.items()},
        "scores": ours_c, "pycocoevalcap_scores": theirs_c,
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "cpus": os.cpu_count(), "python": platform.python_version(),
    })
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:])))
