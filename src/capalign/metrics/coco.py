"""BLEU-1..4, ROUGE-L and CIDEr-D with pycocoevalcap's exact semantics, without Java.

Same inputs as pycocoevalcap's scorers (`gts`, `res`: id -> list of captions, one candidate per
id) and the same numbers (tests compare within 1e-9, corpus and per caption). What differs is how:
- tokenisation is ptb.py (pure Python) instead of the Java PTBTokenizer;
- every token becomes an integer id once per corpus, and every n-gram (n = 1..4) an integer id,
  numbered by numpy (bigram id = unique(unigram id * V + next token), and so on). Each sentence's
  n-gram counts are then one sorted (sentence, n-gram) table shared by BLEU and CIDEr-D;
- BLEU's clipped counts and CIDEr-D's document frequencies, tf-idf weights, norms and clipped dot
  products are array operations over that table (a reference n-gram finds the same n-gram of its
  image's candidate by binary search), not per-caption dicts;
- ROUGE-L's LCS uses the bit-parallel algorithm (Hyyro 2004) on Python ints instead of the
  O(mn) table, which gives the same lengths; the candidate's bit masks are built once per image.
Only the floating-point summation order differs from pycocoevalcap (differences ~1e-15).
Kept quirks of pycocoevalcap: the CIDEr-D Gaussian length penalty uses the number of *bigrams* as
"length", the n-gram weights use log(#images) - log(max(1, df)) with df counted over the
references of the evaluated set, the clipping min(hyp, ref) * ref; ROUGE splits on " " (so an
empty caption is one empty token), BLEU/CIDEr split on any whitespace (a fraction token
"42\u00a01/2" is one ROUGE token and two BLEU/CIDEr tokens), BLEU's length ratio uses the
"closest" reference length (ties: the shorter).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np

from .ptb import tokenize_corpus

N = 4
SIGMA = 6.0
BETA = 1.2
_SMALL, _TINY = 1e-9, 1e-15


def _sorted_unique(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each value's first row in the sorted array).
    np.unique is avoided: numpy 2.x's hash-based path takes seconds on millions of int64."""
    s = np.sort(key)
    first = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1]))) if len(s) else np.zeros(0, dtype=np.int64)
    return s[first], first


class _Table:
    """N-gram counts of every sentence of a corpus: refs (image by image) then the candidates.

    Arrays (one row per distinct (sentence, n-gram) pair, sorted by sentence then n-gram id):
    sent, gram, order (0..3), count. Per sentence: length (words), image. Refs are sentences
    0..n_refs-1, the candidate of image i is sentence n_refs + i.
    """

    def __init__(self, gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]]):
        keys = list(gts)
        self.n_img = len(keys)
        refs_per = np.fromiter((len(gts[k]) for k in keys), dtype=np.int64, count=self.n_img)
        if self.n_img and refs_per.min() < 1:
            raise ValueError("every id needs at least one reference")
        self.refs_per = refs_per
        self.n_refs = int(refs_per.sum())
        sentences = [r for k in keys for r in gts[k]] + [res[k][0] for k in keys]
        n_sent = len(sentences)
        vocab: defaultdict = defaultdict()
        vocab.default_factory = vocab.__len__  # token -> id, new tokens numbered in order
        lookup = vocab.__getitem__
        flat: list[int] = []
        lens = np.empty(n_sent, dtype=np.int64)
        for i, s in enumerate(sentences):
            w = s.split()
            lens[i] = len(w)
            flat.extend(map(lookup, w))
        V = max(len(vocab), 1)
        tok = np.asarray(flat, dtype=np.int64)
        T = len(tok)
        self.length = lens
        self.ref_image = np.repeat(np.arange(self.n_img, dtype=np.int64), refs_per)
        sid = np.repeat(np.arange(n_sent, dtype=np.int64), lens)
        ends = np.cumsum(lens)
        remaining = ends[sid] - np.arange(T, dtype=np.int64)  # words from this position to the sentence end

        # n-gram ids: order k at position p = unique(id of the (k-1)-gram at p * V + token at p+k-1)
        sents, grams = [sid], [tok]
        prev = tok
        offset = V
        first_id = [0]  # ids are numbered order by order: the first id of each order
        for k in range(1, N):
            first_id.append(offset)
            pos = np.flatnonzero(remaining > k)
            key = prev[pos] * V + tok[pos + k]
            uniq, _ = _sorted_unique(key)
            inv = np.searchsorted(uniq, key)
            cur = np.full(T, -1, dtype=np.int64)
            cur[pos] = inv
            sents.append(sid[pos])
            grams.append(inv + offset)
            offset += len(uniq)
            prev = cur
        self.n_grams = G = offset
        key = np.concatenate(sents) * G + np.concatenate(grams)
        n_rows = len(key)
        key, first = _sorted_unique(key)
        count = np.diff(np.concatenate((first, [n_rows])))
        self.sent = key // G
        self.gram = key - self.sent * G
        self.order = (np.searchsorted(np.array(first_id), self.gram, side="right") - 1).astype(np.int8)
        self.count = count
        n_ref_rows = int(np.searchsorted(self.sent, self.n_refs))  # rows are sorted by sentence
        self.ref_rows = slice(0, n_ref_rows)
        self.cand_rows = slice(n_ref_rows, len(key))
        # For each ref row: the row of the same n-gram in its image's candidate (or -1).
        rs, rg = self.sent[self.ref_rows], self.gram[self.ref_rows]
        cs, cg = self.sent[self.cand_rows], self.gram[self.cand_rows]
        ckey = (cs - self.n_refs) * G + cg  # sorted
        rkey = self.ref_image[rs] * G + rg
        idx = np.searchsorted(ckey, rkey)
        idx[idx >= len(ckey)] = 0
        hit = ckey[idx] == rkey if len(ckey) else np.zeros(len(rkey), dtype=bool)
        self.match = np.where(hit, idx, -1)


def bleu(gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]], table: _Table | None = None):
    """(corpus [B1..B4], per-caption [[B1...], ..., [B4...]]) exactly as pycocoevalcap Bleu(4)."""
    t = table if table is not None else _Table(gts, res)
    I = t.n_img
    if I == 0:
        return [0.0] * N, [[] for _ in range(N)]
    cand = t.cand_rows
    n_cand_rows = cand.stop - cand.start
    # max count of each candidate n-gram over its image's references
    maxref = np.zeros(n_cand_rows, dtype=np.int64)
    m = t.match
    hit = m >= 0
    np.maximum.at(maxref, m[hit], t.count[t.ref_rows][hit])
    clipped = np.minimum(t.count[cand], maxref)
    img = t.sent[cand] - t.n_refs
    correct = np.bincount(img * N + t.order[cand], weights=clipped, minlength=I * N).reshape(I, N)
    testlen = t.length[t.n_refs:]
    guess = np.maximum(0, testlen[:, None] - np.arange(N)[None, :])
    # "closest" reference length, ties -> the shorter one
    reflens = t.length[: t.n_refs]
    diff = np.abs(reflens - testlen[t.ref_image])
    packed = diff * (1 << 31) + reflens
    starts = np.concatenate(([0], np.cumsum(t.refs_per)[:-1]))
    reflen = np.minimum.reduceat(packed, starts) & ((1 << 31) - 1)

    prec = (correct + _TINY) / (guess + _SMALL)
    cum = np.cumprod(prec, axis=1)
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    with np.errstate(divide="ignore"):
        bp = np.where(ratio < 1, np.exp(1 - 1 / np.where(ratio < 1, ratio, 1.0)), 1.0)
    per = [(cum[:, k] ** (1.0 / (k + 1)) * bp).tolist() for k in range(N)]

    tot_correct = [int(x) for x in correct.sum(axis=0).round()]
    tot_guess = [int(x) for x in guess.sum(axis=0)]
    tot_test, tot_ref = int(testlen.sum()), int(reflen.sum())
    corpus, b = [], 1.0
    for k in range(N):
        b *= float(tot_correct[k] + _TINY) / (tot_guess[k] + _SMALL)
        corpus.append(b ** (1.0 / (k + 1)))
    ratio = (tot_test + _TINY) / (tot_ref + _SMALL)
    if ratio < 1:
        corpus = [x * math.exp(1 - 1 / ratio) for x in corpus]
    return corpus, per


def lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel over the positions of `a`."""
    masks: dict[str, int] = {}
    for i, t in enumerate(a):
        masks[t] = masks.get(t, 0) | (1 << i)
    return _lcs_masks(masks, len(a), b)


def _lcs_masks(masks: dict, n: int, b: Sequence[str]) -> int:
    full = (1 << n) - 1
    v = full
    get = masks.get
    for t in b:
        m = get(t)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return n - v.bit_count()


def rouge_l(gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]]):
    """(corpus mean, per-caption ROUGE-L) exactly as pycocoevalcap Rouge (beta=1.2, max P and max R over refs)."""
    scores = []
    b2 = BETA ** 2
    for key in gts:
        cand = res[key][0].split(" ")
        lc = float(len(cand))
        masks: dict[str, int] = {}
        for i, t in enumerate(cand):
            masks[t] = masks.get(t, 0) | (1 << i)
        prec_max = rec_max = 0.0
        for ref in gts[key]:
            toks = ref.split(" ")
            l = _lcs_masks(masks, len(cand), toks)
            if l:
                p, r = l / lc, l / float(len(toks))
                if p > prec_max:
                    prec_max = p
                if r > rec_max:
                    rec_max = r
        scores.append(((1 + b2) * prec_max * rec_max) / float(rec_max + b2 * prec_max) if prec_max != 0 and rec_max != 0 else 0.0)
    return (math.fsum(scores) / len(scores) if scores else float("nan")), scores


def cider_d(gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]], table: _Table | None = None):
    """(corpus mean, per-caption CIDEr-D) exactly as pycocoevalcap Cider (n=4, sigma=6, df from these refs)."""
    t = table if table is not None else _Table(gts, res)
    I = t.n_img
    if I == 0:
        return float("nan"), []
    G = t.n_grams
    refs = t.ref_rows
    # document frequency: in how many images' reference sets each n-gram occurs
    per_image, _ = _sorted_unique(t.ref_image[t.sent[refs]] * G + t.gram[refs])
    df = np.bincount(per_image % G, minlength=G).astype(np.float64)
    ref_len = np.log(float(I))
    w = t.count * (ref_len - np.log(np.maximum(1.0, df[t.gram])))
    n_sent = t.n_refs + I
    norm = np.sqrt(np.bincount(t.sent * N + t.order, weights=w * w, minlength=n_sent * N)).reshape(n_sent, N)
    bigrams = np.maximum(t.length - 1, 0)  # pycocoevalcap's "length": the number of bigrams

    m = t.match
    hit = np.flatnonzero(m >= 0)
    wr = w[refs][hit]
    wc = w[t.cand_rows][m[hit]]
    r_sent = t.sent[refs][hit]
    val = np.bincount(r_sent * N + t.order[refs][hit], weights=np.minimum(wc, wr) * wr,
                      minlength=t.n_refs * N).reshape(t.n_refs, N)
    hn = norm[t.n_refs:][t.ref_image]
    rn = norm[: t.n_refs]
    nz = (hn != 0) & (rn != 0)
    val = np.where(nz, val / np.where(nz, hn * rn, 1.0), val)
    delta = (bigrams[t.n_refs:][t.ref_image] - bigrams[: t.n_refs]).astype(np.float64)
    pen = np.e ** (-(delta ** 2) / (2 * SIGMA ** 2))
    val = val * pen[:, None]
    total = np.add.reduceat(val, np.concatenate(([0], np.cumsum(t.refs_per)[:-1])), axis=0)  # refs are contiguous per image
    scores = total.mean(axis=1) / t.refs_per * 10.0
    return float(np.mean(scores)), scores.tolist()


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
    table = _Table(gts, res) if ("bleu" in metrics or "cider" in metrics) else None
    if "bleu" in metrics:
        c, p = bleu(gts, res, table)
        for k in range(N):
            corpus[f"BLEU{k + 1}"], per[f"BLEU{k + 1}"] = c[k], p[k]
    if "rouge" in metrics:
        corpus["ROUGE_L"], per["ROUGE_L"] = rouge_l(gts, res)
    if "cider" in metrics:
        corpus["CIDEr"], per["CIDEr"] = cider_d(gts, res, table)
    return corpus, per
