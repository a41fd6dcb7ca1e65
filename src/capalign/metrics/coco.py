"""BLEU-1..4, ROUGE-L and CIDEr-D with pycocoevalcap's exact semantics, without Java.

Same inputs as pycocoevalcap's scorers (`gts`, `res`: id -> list of captions, one candidate per
id) and the same numbers (tests compare within 1e-9, corpus and per caption). What differs is how:
- tokenisation is ptb.py (pure Python) instead of the Java PTBTokenizer;
- n-grams of every sentence are counted once and shared by BLEU and CIDEr;
- ROUGE-L's LCS uses the bit-parallel algorithm (Hyyro 2004) on Python ints instead of the
  O(mn) table, which gives the same lengths;
- CIDEr-D's per-n-gram-order loops are flattened; the quirks are kept on purpose: the Gaussian
  length penalty uses the number of *bigrams* as "length" and the reference-side n-gram weights
  use log(#images) - log(max(1, df)).
Kept quirks of pycocoevalcap: ROUGE splits on " " (so an empty caption is one empty token),
BLEU/CIDEr split on any whitespace, BLEU's corpus length ratio uses the "closest" ref length.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Mapping, Sequence

from .ptb import tokenize_corpus

N = 4
SIGMA = 6.0
BETA = 1.2


def _ngrams(words: list[str]) -> list[Counter]:
    return [Counter(zip(*[words[i:] for i in range(k)])) for k in range(1, N + 1)]


def bleu(gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]], cooked=None):
    """(corpus [B1..B4], per-caption [[B1...], ..., [B4...]]) exactly as pycocoevalcap Bleu(4)."""
    small, tiny = 1e-9, 1e-15
    tot_guess, tot_correct = [0] * N, [0] * N
    tot_test = tot_ref = 0
    per = [[] for _ in range(N)]
    if cooked is None:
        cooked = cook(gts, res)
    for key in gts:
        ref_grams = cooked["refs"][key]
        test_grams, testlen = cooked["test"][key]
        reflen = min((abs(l - testlen), l) for _, l in ref_grams)[1]
        tot_test += testlen
        tot_ref += reflen
        bleu_k = 1.0
        ratio = (testlen + tiny) / (reflen + small)
        bp = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
        for k in range(N):
            maxref: dict = {}
            for g, _ in ref_grams:
                for ng, c in g[k].items():
                    if c > maxref.get(ng, 0):
                        maxref[ng] = c
            correct = sum(min(c, maxref.get(ng, 0)) for ng, c in test_grams[k].items())
            guess = max(0, testlen - k)
            tot_guess[k] += guess
            tot_correct[k] += correct
            bleu_k *= (correct + tiny) / (guess + small)
            per[k].append(bleu_k ** (1.0 / (k + 1)) * bp)
    corpus, b = [], 1.0
    for k in range(N):
        b *= (tot_correct[k] + tiny) / (tot_guess[k] + small)
        corpus.append(b ** (1.0 / (k + 1)))
    ratio = (tot_test + tiny) / (tot_ref + small)
    if ratio < 1:
        corpus = [x * math.exp(1 - 1 / ratio) for x in corpus]
    return corpus, per


def lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel over the positions of `a`."""
    if len(a) < len(b):
        a, b = b, a
    masks: dict[str, int] = {}
    for i, t in enumerate(a):
        masks[t] = masks.get(t, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for t in b:
        m = masks.get(t)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]]):
    """(corpus mean, per-caption ROUGE-L) exactly as pycocoevalcap Rouge (beta=1.2, max P and max R over refs)."""
    scores = []
    b2 = BETA ** 2
    for key in gts:
        cand = res[key][0].split(" ")
        lc = float(len(cand))
        prec_max = rec_max = 0.0
        for ref in gts[key]:
            toks = ref.split(" ")
            l = lcs(toks, cand)
            prec_max = max(prec_max, l / lc)
            rec_max = max(rec_max, l / float(len(toks)))
        scores.append(((1 + b2) * prec_max * rec_max) / float(rec_max + b2 * prec_max) if prec_max != 0 and rec_max != 0 else 0.0)
    return (math.fsum(scores) / len(scores) if scores else float("nan")), scores


def cider_d(gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]], cooked=None):
    """(corpus mean, per-caption CIDEr-D) exactly as pycocoevalcap Cider (n=4, sigma=6, df from these refs)."""
    if cooked is None:
        cooked = cook(gts, res)
    refs, test = cooked["refs"], cooked["test"]
    df: Counter = Counter()
    for key in gts:
        seen = set()
        for g, _ in refs[key]:
            for k in range(N):
                seen.update(g[k])
        df.update(seen)
    ref_len = math.log(float(len(gts)))
    log = math.log
    idf_cache: dict = {}

    def vec(grams):
        out, norms = [], []
        for k in range(N):
            v = {}
            sq = 0.0
            for ng, tf in grams[k].items():
                w = idf_cache.get(ng)
                if w is None:
                    w = idf_cache[ng] = ref_len - log(max(1.0, df.get(ng, 0.0)))
                x = float(tf) * w
                v[ng] = x
                sq += x * x
            out.append(v)
            norms.append(math.sqrt(sq))
        return out, norms, sum(grams[1].values())

    denom = 2 * SIGMA ** 2
    scores = []
    for key in gts:
        hv, hn, hl = vec(test[key][0])
        total = [0.0] * N
        for g, _ in refs[key]:
            rv, rn, rl = vec(g)
            pen = math.e ** (-(float(hl - rl) ** 2) / denom)
            for k in range(N):
                rk = rv[k]
                val = 0.0
                for ng, x in hv[k].items():
                    y = rk.get(ng, 0.0)
                    if y:
                        val += min(x, y) * y
                if hn[k] != 0 and rn[k] != 0:
                    val /= hn[k] * rn[k]
                total[k] += val * pen
        scores.append(sum(total) / N / len(refs[key]) * 10.0)
    return (sum(scores) / len(scores) if scores else float("nan")), scores


def cook(gts, res) -> dict:
    """Count every sentence's n-grams once (shared by BLEU and CIDEr)."""
    refs = {k: [(_ngrams(w), len(w)) for w in (r.split() for r in v)] for k, v in gts.items()}
    test = {k: (_ngrams(res[k][0].split()), len(res[k][0].split())) for k in gts}
    return {"refs": refs, "test": test}


def coco_scores(gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]], tokenize: bool = True,
                metrics: Sequence[str] = ("bleu", "rouge", "cider")) -> tuple[dict, dict]:
    """Score raw captions like pycocoevalcap's COCOEvalCap: tokenise gts and res (separately, as it does),
    then BLEU/ROUGE-L/CIDEr-D. Returns (corpus {name: float}, per_caption {name: [float per id in gts order]})."""
    if set(gts) != set(res):
        raise ValueError("gts and res must have the same ids")
    if tokenize:
        gts = tokenize_corpus({k: list(v) for k, v in gts.items()})
        res = tokenize_corpus({k: list(res[k]) for k in gts})
    corpus, per = {}, {}
    cooked = cook(gts, res) if ("bleu" in metrics or "cider" in metrics) else None
    if "bleu" in metrics:
        c, p = bleu(gts, res, cooked)
        for k in range(N):
            corpus[f"BLEU{k + 1}"], per[f"BLEU{k + 1}"] = c[k], p[k]
    if "rouge" in metrics:
        corpus["ROUGE_L"], per["ROUGE_L"] = rouge_l(gts, res)
    if "cider" in metrics:
        corpus["CIDEr"], per["CIDEr"] = cider_d(gts, res, cooked)
    return corpus, per
