"""BLEU + ROUGE-L + CIDEr-D: capalign.metrics.coco vs pycocoevalcap on 25,000 candidates x 5 references.

Both timings include tokenisation (Java PTBTokenizer for pycocoevalcap, ptb.py for us), since that
is what a user waits for. Checks that every corpus and per-caption score is identical (<= 1e-9),
prints a table and writes benchmarks/results/metrics_speed.json.
"""

import json
import sys
import time
from pathlib import Path

from capalign.metrics import coco, synth


def main(n: int = 25000) -> int:
    gts, res = synth.corpus(n, n_refs=5, seed=123)

    t0 = time.perf_counter()
    ours_c, ours_p = coco.coco_scores(gts, res)
    t_ours = time.perf_counter() - t0

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    t0 = time.perf_counter()
    tok = PTBTokenizer()
    g = tok.tokenize({k: [{"caption": c} for c in v] for k, v in gts.items()})
    r = tok.tokenize({k: [{"caption": c} for c in v] for k, v in res.items()})
    t_tok = time.perf_counter() - t0
    b, bp = Bleu(4).compute_score(g, r, verbose=0)
    ro, rop = Rouge().compute_score(g, r)
    ci, cip = Cider().compute_score(g, r)
    t_theirs = time.perf_counter() - t0

    theirs_c = {"BLEU1": b[0], "BLEU2": b[1], "BLEU3": b[2], "BLEU4": b[3], "ROUGE_L": ro, "CIDEr": ci}
    theirs_p = {"BLEU1": bp[0], "BLEU2": bp[1], "BLEU3": bp[2], "BLEU4": bp[3], "ROUGE_L": list(rop), "CIDEr": list(cip)}
    diff = max(max(abs(ours_c[k] - theirs_c[k]), max(abs(x - y) for x, y in zip(ours_p[k], theirs_p[k]))) for k in theirs_c)
    diff = float(diff)
    identical = bool(diff <= 1e-9)
    ratio = t_theirs / t_ours
    print(f"{'':28}{'seconds':>10}")
    print(f"{'pycocoevalcap (Java tok)':28}{t_theirs:10.2f}   (tokenizer {t_tok:.2f})")
    print(f"{'capalign (pure Python)':28}{t_ours:10.2f}")
    print(f"{'speed-up':28}{ratio:10.1f}x   scores identical: {identical} (max |diff| {diff:.1e})")
    for k in theirs_c:
        print(f"  {k:8} {ours_c[k]:.6f} {theirs_c[k]:.6f}")
    out = Path(__file__).parent / "results" / "metrics_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"candidates": n, "refs_per_candidate": 5, "tokenizer_included": True,
                               "pycocoevalcap_s": t_theirs, "pycocoevalcap_tokenizer_s": t_tok, "capalign_s": t_ours,
                               "speedup": ratio, "identical": identical, "max_abs_diff": diff, "scores": {k: float(v) for k, v in ours_c.items()}}, indent=2) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:])))
