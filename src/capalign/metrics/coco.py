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


def _inverse(key: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense ids 0..n-1 for the distinct values of key (in sorted order) and n. Argsort-based:
    faster than searchsorted into the distinct values, and numpy 2.x's hash-based np.unique."""
    if len(key) == 0:
        return np.zeros(0, dtype=np.int64), 0
    perm = np.argsort(key)
    s = key[perm]
    ids = np.empty(len(key), dtype=np.int64)
    ids[0] = 0
    np.cumsum(s[1:] != s[:-1], out=ids[1:])
    inv = np.empty_like(ids)
    inv[perm] = ids
    return inv, int(ids[-1]) + 1


class _Table:
    """Distinct (image, n-gram, slot) rows of a corpus, sorted by image, then n-gram, then slot.

    Sentence (i, j) is reference j of image i for j < refs_per[i] and the candidate for j = R (the
    largest number of references); slots in between are empty. Per-sentence arrays have shape
    (n_img, R + 1) and rows carry sent = i * (R + 1) + j. Rows: gram (dense id; n-grams are numbered
    order by order), order (0..3), img, slot, sent, count. Rows with the same (img, gram) form a
    group, refs first and the candidate last, so one sort of bit-packed (img, gram, slot) keys gives
    the per-sentence counts, CIDEr-D's document frequencies, BLEU's max reference counts and the
    ref/candidate pairs of CIDEr-D's clipped dot products.
    """

    def __init__(self, gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]]):
        keys = list(gts)
        self.n_img = I = len(keys)
        refs_per = np.fromiter((len(gts[k]) for k in keys), dtype=np.int64, count=I)
        if I and refs_per.min() < 1:
            raise ValueError("every id needs at least one reference")
        self.refs_per = refs_per
        self.R = R = int(refs_per.max()) if I else 0
        self.S = S = R + 1
        sentences = [r for k in keys for r in gts[k]] + [res[k][0] for k in keys]
        n_refs = len(sentences) - I
        vocab: defaultdict = defaultdict()
        vocab.default_factory = vocab.__len__  # token -> id, new tokens numbered in order
        lookup = vocab.__getitem__
        flat: list[int] = []
        lens = np.empty(len(sentences), dtype=np.int64)
        for i, s in enumerate(sentences):
            w = s.split()
            lens[i] = len(w)
            flat.extend(map(lookup, w))
        V = max(len(vocab), 1)
        tok = np.asarray(flat, dtype=np.int64)
        T = len(tok)
        # the (image, slot) place of each sentence
        ref_image = np.repeat(np.arange(I, dtype=np.int64), refs_per)
        ref_start = np.concatenate(([0], np.cumsum(refs_per)[:-1])).astype(np.int64)
        place = np.concatenate((ref_image * S + np.arange(n_refs, dtype=np.int64) - ref_start[ref_image],
                                np.arange(I, dtype=np.int64) * S + R))
        self.length = np.zeros(I * S, dtype=np.int64)
        self.length[place] = lens
        self.length = self.length.reshape(I, S)
        self.is_ref = np.zeros(I * S, dtype=bool)
        self.is_ref[place[:n_refs]] = True
        self.is_ref = self.is_ref.reshape(I, S)
        sid = np.repeat(place, lens)  # place of each token's sentence
        remaining = np.cumsum(lens)[np.repeat(np.arange(len(lens)), lens)] - np.arange(T, dtype=np.int64)

        # n-gram ids: the k-gram at p gets a dense id from (id of the (k-1)-gram at p) * V + token at p+k-1
        sents, grams = [sid], [tok]
        prev, offset, first_id = tok, V, [0]
        for k in range(1, N):
            first_id.append(offset)
            pos = np.flatnonzero(remaining > k)
            inv, n_new = _inverse(prev[pos] * V + tok[pos + k])
            cur = np.full(T, -1, dtype=np.int64)
            cur[pos] = inv
            sents.append(sid[pos])
            grams.append(inv + offset)
            offset += n_new
            prev = cur
        self.n_grams = G = offset
        # key bits: image | gram | slot, so decoding is shifts and masks
        sbits, gbits = max(int(S - 1).bit_length(), 1), max(int(G - 1).bit_length(), 1)
        if max(int(I - 1).bit_length(), 1) + gbits + sbits > 62:
            raise ValueError("corpus too large for 64-bit n-gram keys")
        sid = np.concatenate(sents)
        del sents, prev, cur, remaining
        img, slot = np.divmod(sid, S)
        key = (((img << gbits) | np.concatenate(grams)) << sbits) | slot
        del grams, sid, img, slot
        key.sort()
        if len(key):
            first = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
            self.count = np.diff(np.append(first, len(key)))
            key = key[first]
        else:
            self.count = np.zeros(0, dtype=np.int64)
        ig = key >> sbits  # (image, gram)
        self.slot = key & ((1 << sbits) - 1)
        self.img = ig >> gbits
        self.gram = ig & ((1 << gbits) - 1)
        self.sent = self.img * S + self.slot
        self.order = (self.gram >= first_id[1]).astype(np.int8)
        for k in range(2, N):
            self.order += self.gram >= first_id[k]
        self.is_cand = self.slot == R
        # groups of rows with the same (image, n-gram)
        new_group = np.concatenate(([True], ig[1:] != ig[:-1])) if len(ig) else np.zeros(0, dtype=bool)
        self.group_start = np.flatnonzero(new_group)
        self.group = np.cumsum(new_group) - 1
        self.cand_rows = np.flatnonzero(self.is_cand)
        self.group_cand = np.full(len(self.group_start), -1, dtype=np.int64)
        self.group_cand[self.group[self.cand_rows]] = self.cand_rows
        self.ref_rows = np.flatnonzero(~self.is_cand)


def _bleu_parts(t: _Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per image: clipped n-gram matches [I, N], candidate n-grams [I, N], candidate length [I], "closest" reference length [I]."""
    I, R = t.n_img, t.R
    # max count of each (image, n-gram) over the image's references (the candidate row counts 0)
    ref_count = np.where(t.is_cand, 0, t.count)
    maxref = np.maximum.reduceat(ref_count, t.group_start) if len(ref_count) else ref_count
    c = t.cand_rows
    clipped = np.minimum(t.count[c], maxref[t.group[c]])
    correct = np.bincount(t.img[c] * N + t.order[c], weights=clipped, minlength=I * N).reshape(I, N)
    testlen = t.length[:, R]
    guess = np.maximum(0, testlen[:, None] - np.arange(N)[None, :])
    # "closest" reference length, ties -> the shorter one (empty slots never win)
    reflens = t.length[:, :R]
    packed = np.where(t.is_ref[:, :R], np.abs(reflens - testlen[:, None]) * (1 << 31) + reflens, np.iinfo(np.int64).max)
    reflen = packed.min(axis=1) & ((1 << 31) - 1)
    return correct, guess, testlen, reflen


def bleu(gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]], table: _Table | None = None):
    """(corpus [B1..B4], per-caption [[B1...], ..., [B4...]]) exactly as pycocoevalcap Bleu(4)."""
    t = table if table is not None else _Table(gts, res)
    if t.n_img == 0:
        return [0.0] * N, [[] for _ in range(N)]
    correct, guess, testlen, reflen = _bleu_parts(t)
    prec = (correct + _TINY) / (guess + _SMALL)
    cum = np.cumprod(prec, axis=1)
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    short = ratio < 1
    bp = np.ones(t.n_img)
    bp[short] = np.exp(1 - 1 / ratio[short])
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


def bleu_counts(gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]], tokenize: bool = True) -> np.ndarray:
    """Per caption, in gts order, the counts corpus BLEU pools: [n, 2N + 2] = clipped matches (N), candidate
    n-grams (N), candidate length, closest reference length. `corpus_bleu` of the rows gives the corpus
    BLEU-N exactly, so corpus BLEU can be bootstrapped over captions (capalign.stats)."""
    if tokenize:
        gts = tokenize_corpus({k: list(v) for k, v in gts.items()})
        res = tokenize_corpus({k: list(res[k]) for k in gts})
    t = _Table(gts, res)
    correct, guess, testlen, reflen = _bleu_parts(t)
    return np.concatenate([correct, guess, testlen[:, None], reflen[:, None]], axis=1).astype(np.float64)


def corpus_bleu(x: np.ndarray, n: int = N) -> np.ndarray:
    """[..., items, 2N + 2] count rows (bleu_counts) -> [...] corpus BLEU-n, pycocoevalcap's formula (a capalign.stats statistic)."""
    tot = x.sum(-2)  # [..., 2N + 2]
    logp = sum(np.log((tot[..., k] + _TINY) / (tot[..., N + k] + _SMALL)) for k in range(n)) / n
    ratio = (tot[..., 2 * N] + _TINY) / (tot[..., 2 * N + 1] + _SMALL)
    bp = np.where(ratio < 1, np.exp(1 - 1 / np.minimum(ratio, 1)), 1.0)
    return np.exp(logp) * bp


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
    I, R, S = t.n_img, t.R, t.S
    if I == 0:
        return float("nan"), []
    # document frequency: in how many images' reference sets an n-gram occurs = groups whose first row is a ref
    gs = t.group_start
    df = np.bincount(t.gram[gs[~t.is_cand[gs]]], minlength=t.n_grams).astype(np.float64)
    ref_len = np.log(float(I))
    w = t.count * (ref_len - np.log(np.maximum(1.0, df[t.gram])))
    norm = np.sqrt(np.bincount(t.sent * N + t.order, weights=w * w, minlength=I * S * N)).reshape(I, S, N)
    bigrams = np.maximum(t.length - 1, 0)  # pycocoevalcap's "length": the number of bigrams

    r = t.ref_rows
    m = t.group_cand[t.group[r]]  # the candidate row with the same (image, n-gram), or -1
    hit = m >= 0
    r, m = r[hit], m[hit]
    wr, wc = w[r], w[m]
    val = np.bincount(t.sent[r] * N + t.order[r], weights=np.minimum(wc, wr) * wr, minlength=I * S * N).astype(np.float64).reshape(I, S, N)[:, :R]  # (int when empty)
    hn = norm[:, R:, :]
    rn = norm[:, :R, :]
    nz = (hn != 0) & (rn != 0)
    val[nz] /= np.broadcast_to(hn, rn.shape)[nz] * rn[nz]
    delta = (bigrams[:, R:] - bigrams[:, :R]).astype(np.float64)
    pen = np.e ** (-(delta ** 2) / (2 * SIGMA ** 2))
    total = (val * pen[:, :, None]).sum(axis=1)  # empty slots have val 0
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
