"""Caption rewards with TRL's reward-function signature, so they plug into `GRPOTrainer(reward_funcs=...)`.

A reward is called as `reward(completions, **columns) -> list[float]`: `completions` are strings or
conversational message lists (`[{"role": "assistant", "content": str | [{"type": "text", ...}]}]`), and
TRL passes every dataset column as a keyword argument (one value per completion), plus extras such as
`prompts`, `trainer_state`, `log_metric` that rewards ignore or use. Columns read here:
- references: `references` (or `captions`, the shapes-world manifest's name): a string or a list per sample;
- images: `images` (TRL's list of images per sample; exactly one is expected) or `image`;
- objects: `objects` (annotated objects, as in `capalign evaluate` references).
Every metric reward calls the metric code of `capalign.metrics`, so training and evaluation cannot drift:
- cider: CIDEr-D (pycocoevalcap semantics). Its n-gram weights use document frequencies over a corpus of
  reference sets. Default corpus: the distinct images of the call (samples grouped by their `id`
  column if present, else by their references), so a sample's reward is exactly its per-caption score
  in `capalign evaluate` over those images, one caption per image; calls with one distinct image are
  an error (every weight would be log(1) = 0). `CiderReward(corpus=...)` fixes the document frequencies
  to a reference corpus instead (e.g. the training set's references, as self-critical training does),
  which makes a sample's reward independent of its batch.
- bertscore: BERTScore F1 (max over references; no idf, so no corpus), as `capalign evaluate`.
- clipscore: the raw image-caption cosine by default (the ViZer paper's CLIPS, evaluate's `CLIPScore`
  column), or `kind="clip_s"` / `"refclip_s"`.
- grounding: per-caption F1 of object precision and recall (level `attr`: stated colours must match;
  `name`: nouns only), from `metrics.grounding` (a caption without annotated objects scores 1 if it
  mentions none, else 0; precision of a caption without mentions is 0).
- judge: a VLM judge's expected grade (capalign.metrics.judge); logs the off-letter mass through TRL's `log_metric`.
`WeightedReward` sums rewards with weights (like GRPOConfig.reward_weights, not normalised).
Every reward checks its output: a NaN, None or infinite value, or a wrong number of values, is a
one-line CapalignError naming the reward.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from .. import CapalignError


# ---- inputs --------------------------------------------------------------------------------------
def completion_texts(completions: Sequence) -> list[str]:
    """Strings, or chat messages (the last message's text parts), stripped."""
    out = []
    for k, c in enumerate(completions):
        if isinstance(c, (list, tuple)) and c and isinstance(c[-1], dict):
            c = c[-1].get("content")
            if isinstance(c, list):
                c = "".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(c, str):
            raise CapalignError(f"completion {k} is neither a string nor a list of chat messages ({type(c).__name__})")
        out.append(c.strip())
    return out


def _column(kw: dict, names: tuple[str, ...], n: int, reward: str, what: str) -> list:
    for name in names:
        if kw.get(name) is not None:
            col = list(kw[name])
            if len(col) != n:
                raise CapalignError(f"the {reward} reward got {len(col)} values of column {name!r} for {n} completions")
            return col
    raise CapalignError(f"the {reward} reward needs {what}: give the dataset a {' or '.join(repr(x) for x in names)} column")


def references_of(kw: dict, n: int, reward: str) -> list[list[str]]:
    col = _column(kw, ("references", "captions"), n, reward, "references")
    out = []
    for k, r in enumerate(col):
        refs = [r] if isinstance(r, str) else [x for x in (r or []) if isinstance(x, str)]
        if not any(x.strip() for x in refs):
            raise CapalignError(f"the {reward} reward needs references, but sample {k} has none")
        out.append(refs)
    return out


def images_of(kw: dict, n: int, reward: str) -> list:
    col = _column(kw, ("images", "image"), n, reward, "the images")
    out = []
    for k, im in enumerate(col):
        if isinstance(im, (list, tuple)):
            if len(im) != 1:
                raise CapalignError(f"the {reward} reward scores one image per caption, but sample {k} has {len(im)}")
            im = im[0]
        if im is None:
            raise CapalignError(f"the {reward} reward needs an image, but sample {k} has none")
        out.append(im)
    return out


def check_rewards(name: str, values, n: int) -> list[float]:
    """The values as floats, or a one-line error if there are not n finite numbers."""
    try:
        values = list(values)
    except TypeError:
        raise CapalignError(f"reward {name} returned {type(values).__name__}, not a list of {n} numbers") from None
    if len(values) != n:
        raise CapalignError(f"reward {name} returned {len(values)} values for {n} completions")
    out = []
    for k, v in enumerate(values):
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise CapalignError(f"reward {name} returned {v!r} for completion {k}, not a number") from None
        if not math.isfinite(v):
            raise CapalignError(f"reward {name} returned {v} for completion {k}")
        out.append(v)
    return out


class Reward:
    """Base: `__call__` is TRL's signature; subclasses implement `compute(texts, kw)`."""

    __name__ = "reward"  # TRL logs rewards under this name

    def __call__(self, completions, **kw) -> list[float]:
        texts = completion_texts(completions)
        return check_rewards(self.__name__, self.compute(texts, kw), len(texts))

    def compute(self, texts: list[str], kw: dict) -> list[float]:
        raise NotImplementedError


# ---- metric rewards ------------------------------------------------------------------------------
class CiderReward(Reward):
    __name__ = "cider"

    def __init__(self, corpus: Sequence[Sequence[str]] | None = None):
        from ..metrics.ptb import tokenize_corpus

        self.corpus = None  # tokenized reference sets that fix the document frequencies
        if corpus is not None:
            sets = [[r] if isinstance(r, str) else list(r) for r in corpus]
            if len(sets) < 2 or any(not s for s in sets):
                raise CapalignError("a CIDEr-D corpus needs at least 2 reference sets, each with at least one reference")
            seen: set = set()
            self.corpus = {}
            for k, v in tokenize_corpus({f"corpus-{j}": s for j, s in enumerate(sets)}).items():
                if tuple(v) not in seen:  # distinct reference sets only, as distinct images
                    seen.add(tuple(v))
                    self.corpus[k] = v

    def compute(self, texts, kw):
        from ..metrics.coco import coco_scores
        from ..metrics.ptb import tokenize_corpus

        n = len(texts)
        refs = references_of(kw, n, self.__name__)
        ids = kw.get("id") if kw.get("id") is not None and len(kw["id"]) == n else None
        groups: dict = {}  # distinct image -> its samples
        for k in range(n):
            groups.setdefault(str(ids[k]) if ids is not None else tuple(refs[k]), []).append(k)
        samples = list(groups.values())
        gts = tokenize_corpus({f"img-{j}": refs[ks[0]] for j, ks in enumerate(samples)})
        extra = {}
        if self.corpus is not None:
            seen = {tuple(v) for v in gts.values()}
            extra = {k: v for k, v in self.corpus.items() if tuple(v) not in seen}  # the scored images count once
        elif len(samples) < 2:
            raise CapalignError("the cider reward needs at least 2 distinct images per call (CIDEr-D's document frequencies "
                                "come from the references of the scored images); batch more images or give CiderReward(corpus=...)")
        cands = tokenize_corpus({k: [t] for k, t in enumerate(texts)})
        out = [0.0] * n
        # candidates do not affect each other's CIDEr-D (document frequencies come from references only), so round r
        # scores the r-th sample of every image against the same corpus; an image with fewer samples repeats its last
        for r in range(max(len(ks) for ks in samples)):
            res = {f"img-{j}": cands[ks[min(r, len(ks) - 1)]] for j, ks in enumerate(samples)}
            _, per = coco_scores({**gts, **extra}, {**res, **{k: [""] for k in extra}}, tokenize=False, metrics=("cider",))
            for j, ks in enumerate(samples):
                if r < len(ks):
                    out[ks[r]] = per["CIDEr"][j]  # gts order: the images first
        return out


class BertScoreReward(Reward):
    __name__ = "bertscore"

    def __init__(self, model: str = "roberta-large", num_layers: int = 17, device: str = "auto"):
        self.model, self.num_layers, self.device = model, num_layers, device

    def compute(self, texts, kw):
        from ..metrics.bertscore import bert_score

        refs = references_of(kw, len(texts), self.__name__)
        return bert_score(texts, refs, model=self.model, num_layers=self.num_layers, device=self.device)["F"]


class ClipScoreReward(Reward):
    __name__ = "clipscore"
    KINDS = ("cos", "clip_s", "refclip_s")

    def __init__(self, model: str = "openai/clip-vit-base-patch32", kind: str = "cos", device: str = "auto"):
        if kind not in self.KINDS:
            raise CapalignError(f"unknown CLIPScore kind {kind!r}; expected one of {', '.join(self.KINDS)}")
        self.model, self.kind, self.device = model, kind, device

    def compute(self, texts, kw):
        from ..data.images import load_image
        from ..metrics.clipscore import clip_score
        from ..metrics.judge import image_key

        images = [load_image(im) for im in images_of(kw, len(texts), self.__name__)]
        refs = references_of(kw, len(texts), self.__name__) if self.kind == "refclip_s" else None
        # content keys: an image seen in an earlier step (or by another sample) reuses its CLIP features
        return clip_score(images, texts, refs, model=self.model, device=self.device, cache_keys=[image_key(im) for im in images])[self.kind]


class GroundingReward(Reward):
    __name__ = "grounding"

    def __init__(self, level: str = "attr"):
        if level not in ("attr", "name"):
            raise CapalignError(f"grounding level must be attr or name, got {level!r}")
        self.level = level

    def compute(self, texts, kw):
        from ..metrics.grounding import grounding

        objects = _column(kw, ("objects",), len(texts), self.__name__, "annotated objects")
        return [f1(row[self.level]) for row in grounding(texts, objects)["per_caption"]]


def f1(row: dict) -> float:
    """Per-caption F1 from a grounding row {mentions, precision, recall}."""
    if row["recall"] is None:  # nothing annotated: right only if nothing is mentioned
        return 1.0 if row["mentions"] == 0 else 0.0
    p, r = row["precision"] or 0.0, row["recall"]
    return 2 * p * r / (p + r) if p + r else 0.0


class JudgeReward(Reward):
    """A VLM judge's expected grade in [0, 1] (capalign.metrics.judge); `last` keeps the latest JudgeScores."""

    __name__ = "judge"

    def __init__(self, judge, **load_kw):
        from ..metrics.judge import Judge

        self.judge = judge if isinstance(judge, Judge) else Judge.load(judge, **load_kw)
        self.last = None

    def compute(self, texts, kw):
        n = len(texts)
        self.last = self.judge.score(images_of(kw, n, self.__name__), texts, references_of(kw, n, self.__name__))
        if callable(kw.get("log_metric")):  # GRPOTrainer: logged beside the reward's mean and spread
            kw["log_metric"]("judge/off_letter_mass", sum(self.last.off_letter_mass) / max(n, 1))
        return self.last.scores


# ---- combination ---------------------------------------------------------------------------------
class WeightedReward(Reward):
    """sum_i w_i * reward_i(completions, **columns); each part is checked on its own first."""

    def __init__(self, parts: Sequence[tuple[Callable, float]]):
        if not parts:
            raise CapalignError("a weighted reward needs at least one part")
        for fn, w in parts:
            if not callable(fn):
                raise CapalignError(f"reward part {fn!r} is not callable")
            if not isinstance(w, (int, float)) or not math.isfinite(w):
                raise CapalignError(f"reward weight for {_name(fn)} must be a finite number, got {w!r}")
        self.parts = list(parts)
        self.__name__ = "+".join(f"{w:g}*{_name(fn)}" for fn, w in self.parts)

    def __call__(self, completions, **kw) -> list[float]:
        n = len(completions)
        total = [0.0] * n
        for fn, w in self.parts:
            vals = check_rewards(_name(fn), fn(completions, **kw), n)
            total = [t + w * v for t, v in zip(total, vals)]
        return check_rewards(self.__name__, total, n)


def _name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


REWARDS = ("cider", "bertscore", "clipscore", "grounding", "judge")


def build_reward(spec: str, judge: str = "", judge_prompt: str = "", judge_dtype: str = "auto", judge_load_in_8bit: bool = False,
                 judge_batch_size: int = 16, bertscore_model: str = "roberta-large", bertscore_layer: int = 17,
                 clip_model: str = "openai/clip-vit-base-patch32", clip_kind: str = "cos", grounding_level: str = "attr",
                 cider_corpus: Sequence[Sequence[str]] | None = None, device: str = "auto",
                 custom: dict[str, Callable] | None = None) -> Reward:
    """A reward from a spec: one name (`judge`, `cider`, ...) or a weighted sum `cider:1,grounding:0.5`.
    `custom` adds named rewards (TRL's signature) that the spec may use beside the built-in ones."""
    custom = dict(custom or {})
    known = (*REWARDS, *custom)
    parts = []
    for item in [x.strip() for x in spec.split(",") if x.strip()]:
        name, _, w = item.partition(":")
        name = name.strip()
        if name not in known:
            raise CapalignError(f"unknown reward {name!r}; choose from {', '.join(known)} (weighted: cider:1,grounding:0.5)")
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise CapalignError(f"reward weight {w!r} in {spec!r} is not a number") from None
        if name in custom:
            fn = custom[name]
        elif name == "judge":
            if not judge:
                raise CapalignError("the judge reward needs a judge model (--judge MODEL)")
            fn = JudgeReward(judge, device=device, dtype=judge_dtype, load_in_8bit=judge_load_in_8bit,
                             prompt=judge_prompt or None, batch_size=judge_batch_size)
        elif name == "cider":
            fn = CiderReward(cider_corpus)
        elif name == "bertscore":
            fn = BertScoreReward(bertscore_model, bertscore_layer, device)
        elif name == "clipscore":
            fn = ClipScoreReward(clip_model, clip_kind, device)
        else:
            fn = GroundingReward(grounding_level)
        parts.append((fn, weight))
    if not parts:
        raise CapalignError(f"empty reward spec {spec!r}; choose from {', '.join(REWARDS)}")
    return parts[0][0] if len(parts) == 1 and parts[0][1] == 1.0 else WeightedReward(parts)


cider = CiderReward()  # plain callables for GRPOTrainer(reward_funcs=[cider, grounding])
grounding = GroundingReward()
