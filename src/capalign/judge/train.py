"""`capalign judge train`: a nano VLM judge for the shapes world, used exactly like a hub judge.

The real judge (Qwen2.5-VL-3B-Instruct-AWQ) cannot be downloaded here, so the embedded default is a
nano VLM of the SmolVLM architecture (the nano captioner's builder and training loop, nano/train.py, training/loop.py)
trained on (image, reference, candidate caption) -> letter. The reference is the image's canonical
caption; candidates come from five sources, and the grade is a function of what the candidate says:
- factual captions of the image (any phrasing that states positions)        -> usually A
- factual captions of the image with one injected error (a colour, shape or size changed, an object
  moved to an empty cell, dropped, or invented: data/shapes.py `corrupt`)  -> B
- web-style captions (vague, partial, opinionated)                          -> C, or by content (below)
- factual captions with 2-3 injected errors                                 -> D, or E (below)
- factual captions of another image                                         -> E, or D (below)
Grade of a factual-form caption from `errors`, the fewest unit edits (change one object's colour,
shape or size, move it, drop one, invent one) that turn the true scene into the described one:
0 errors -> A; 1 -> B; 2 or more -> D if some described object has the shape and colour of a true
object ("some correct elements"), else E ("completely incorrect"). So a caption of another image that
shares a red circle with the image is D, and a 2-error caption that names no true object is E: the
grade follows the content, never the source. Web-style captions are C whatever they say with `--web_grading fixed`;
with `--web_grading content` they are graded by what they say about the image, by the paper's rubric (`web_grade`):
C ("correct general scene but lacks specificity") when they name objects of the image and every named object is
there (its shape, and its colour where one is stated), D ("some correct elements but major inaccuracies") when they
name a shape of the image but also a wrong colour or a shape that is not there, E ("completely incorrect or
irrelevant") when they name no object of the image ("so aesthetic", "stock photo"). With `fixed` such a caption earns
C, 0.5, on every image, as much as the average caption of a captioner that describes with errors: a GRPO policy
drifted to it (docs/results/rl-collapse.md). "From left to right: a, b" phrasings are left out for
scenes of 2-3 objects: they do not state the cells, so a moved object could read as correct.
The nano judge's prompt is short ("reference: {reference}\\ncaption: {caption}\\ngrade:") rather than
the paper's A.1 text, which would triple the sequence (and training time) of a model that never reads
English instructions; it is recorded in the folder's judge.json, where `Judge.load` finds it.
Degenerate candidates (issue 17; `--degenerate_share`, default 0.15 of the candidates): non-words, character
noise, repeated words, truncation mid-phrase, empty, a caption of another image that names none of its
objects, a correct caption followed by garbage (judge/candidates.py), all graded E. Without them the
judge scored a collapsed policy's non-words 0.5, like a web caption (docs/rl.md). Held-out accuracy is
reported on the ordinary candidates (as before) and on one degenerate candidate of each kind per image.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import CapalignError
from ..config import arg, config_dict, save_config, show_config
from ..data.shapes import CORRUPTIONS, IMAGE_SIZE, Scene, corrupt, factual_captions, scene_from_objects
from ..io import atomic_write_json
from ..metrics.judge import JUDGE_FILE, LETTER_SCORES, LETTERS, Judge, fill
from ..nano.train import NanoTrainConfig, _examples, build_nano
from ..training.card import write_model_card
from ..training.hub import PUBLIC_HELP, PUSH_HELP, hub_token, push_folder
from ..training.loop import fit
from ..training.tracking import REPORT_HELP, Tracker, check_report_to
from ..utils import print0, seed_everything
from .candidates import KINDS as DEGENERATE_KINDS
from .candidates import degenerate_caption

NANO_PROMPT = "reference: {reference}\ncaption: {caption}\ngrade:"
SOURCES = ("correct", "one_error", "web", "errors", "other_image")
GRADE_MAPPING = {
    "A": "factual caption with 0 errors",
    "B": "factual caption with 1 error (a colour, shape or size changed, an object moved, dropped or invented)",
    "C": "web-style caption (vague, partial or opinionated); with web_grading content: one that names only objects of the image",
    "D": "factual caption with >= 2 errors that still names a true object (same shape and colour)",
    "E": "factual caption with >= 2 errors that names no true object (e.g. a caption of another image)",
}


def errors(truth: Scene, said: Scene) -> int:
    """Fewest unit edits from the true scene to the described one: over every partial matching of
    described to true objects, a matched pair costs its differing colour, shape, size and cell; an
    unmatched true object costs 1 (dropped), an unmatched described one 1 (invented)."""
    t, s = list(truth.objects), list(said.objects)
    best = len(t) + len(s)
    for match in itertools.product([None, *range(len(t))], repeat=len(s)):
        used = [m for m in match if m is not None]
        if len(used) != len(set(used)):
            continue
        cost = sum((a.name != t[m].name) + (a.color != t[m].color) + (a.size != t[m].size) + (a.position != t[m].position)
                   for a, m in zip(s, match) if m is not None)
        best = min(best, cost + (len(t) - len(used)) + (len(s) - len(used)))
    return best


def grade_of(truth: Scene, said: Scene) -> tuple[str, int]:
    e = errors(truth, said)
    if e <= 1:
        return "AB"[e], e
    names_one = any((a.name, a.color) == (b.name, b.color) for a in said.objects for b in truth.objects)
    return ("D" if names_one else "E"), e


def web_grade(caption: str, objects) -> str:
    """The grade of a web-style caption by what it says about the image whose `objects` are given (module docstring):
    C when it names objects and each is grounded (metrics/grounding.py, shape and stated colour), D when it names a
    shape of the image but not every mention is grounded, E when no mention names a shape of the image."""
    from ..metrics.grounding import grounded, mentions, parse_objects, vocabulary

    objs = parse_objects(objects)
    said = mentions(caption, *vocabulary([objects]))
    if not any(grounded(m, objs, "name") for m in said):
        return "E"
    return "C" if all(grounded(m, objs, "attr") for m in said) else "D"


def phrasings(scene: Scene) -> list[str]:
    """Factual captions that state every object's cell (see the module docstring)."""
    caps = factual_captions(scene)
    return caps if len(scene.objects) == 1 else [c for i, c in enumerate(caps) if i != 2]


def candidate(row: dict, source: str, rng: random.Random, other: dict | None = None, web_grading: str = "fixed") -> dict:
    """A candidate caption for a manifest row from one source, with its grade and error count."""
    truth = scene_from_objects(row["objects"])
    if source == "web":
        cap = rng.choice(row["captions_web"])
        return {"caption": cap, "grade": web_grade(cap, row["objects"]) if web_grading == "content" else "C", "errors": None, "source": source}
    if source == "correct":
        said = truth
    elif source in ("one_error", "errors"):
        said = truth
        for _ in range(1 if source == "one_error" else rng.choice((2, 3))):
            kinds = [k for k in CORRUPTIONS if corrupt(said, k, random.Random(0)) is not None]  # applicable kinds (not random)
            said = corrupt(said, rng.choice(kinds), rng)
    elif source == "other_image":
        if other is None:
            raise ValueError("source other_image needs another row")
        said = scene_from_objects(other["objects"])
    else:
        raise ValueError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    g, e = grade_of(truth, said)
    return {"caption": rng.choice(phrasings(said)), "grade": g, "errors": e, "source": source}


def degenerate_candidate(row: dict, kind: str, rng: random.Random, rows: list[dict]) -> dict:
    """A degenerate candidate (judge/candidates.py's `kind`) built from a correct phrasing of the row's
    scene, graded E. `unrelated_image`: the caption of a row of `rows` that names no object of this one (the content
    rule grades it E as well; drawn at random, 100 tries, then any other row's)."""
    truth = scene_from_objects(row["objects"])
    other = None
    if kind == "unrelated_image":
        pick = None
        for _ in range(100):
            cand = rows[rng.randrange(len(rows))]
            if cand is not row and grade_of(truth, scene_from_objects(cand["objects"]))[0] == "E":
                pick = cand
                break
        pick = pick or next(r for r in rows if r is not row)
        other = rng.choice(phrasings(scene_from_objects(pick["objects"])))
    cap = degenerate_caption(kind, rng.choice(phrasings(truth)), rng, other)
    return {"caption": cap, "grade": "E", "errors": None, "source": f"degenerate/{kind}"}


def degenerate_examples(rows: list[dict], rng: random.Random) -> list[dict]:
    """Every row with one degenerate candidate of every kind."""
    return [{"image": i, "reference": row["captions"][0], **degenerate_candidate(row, kind, rng, rows)}
            for i, row in enumerate(rows) for kind in DEGENERATE_KINDS]


def examples(rows: list[dict], rng: random.Random, per_source: int = 1, web_grading: str = "fixed") -> list[dict]:
    """Every row with `per_source` candidates from every source (another image: a random other row)."""
    out = []
    for i, row in enumerate(rows):
        for source in SOURCES:
            for _ in range(per_source):
                other = rows[(i + rng.randrange(1, len(rows))) % len(rows)] if len(rows) > 1 else None
                out.append({"image": i, "reference": row["captions"][0], **candidate(row, source, rng, other, web_grading)})
    return out


@dataclass
class JudgeTrainConfig:
    """Train a nano VLM judge (SmolVLM architecture) on the shapes world: (image, reference, candidate) -> A-E."""

    out: str = arg("runs/judge", "Output folder: a model folder that `--judge` (and `load_vlm`) accept, with judge.json.")
    n_train: int = arg(2000, "Training images (shapes world, split 'train'); candidates are drawn fresh at every step.")
    n_val: int = arg(200, "Held-out images (split 'val'), one candidate per source each, for accuracy and the confusion matrix.")
    seed: int = arg(0, "Seed for data, init and training.")
    steps: int = arg(3000, "Optimizer steps (warmup + cosine decay; fixed, never a clock).")
    batch_size: int = arg(32, "Candidates per step.")
    lr: float = arg(3e-3, "Peak learning rate (AdamW).")
    weight_decay: float = arg(0.01, "AdamW weight decay.")
    image_size: int = arg(IMAGE_SIZE, "Image side in pixels (the vision encoder's tile size).")
    vision_width: int = arg(96, "Vision encoder width.")
    vision_layers: int = arg(2, "Vision encoder layers.")
    text_width: int = arg(96, "Language model width (96 x 6 layers was the best of the measured settings, docs/rl.md).")
    text_layers: int = arg(6, "Language model layers.")
    vocab_size: int = arg(400, "BPE vocabulary size of the locally trained tokenizer.")
    prompt: str = arg(NANO_PROMPT, "Judge prompt with {reference} and {caption}; recorded in judge.json.")
    lm_weight: float = arg(1.0, "Weight of the auxiliary next-token loss on the prompt's text (reference and candidate); 0: the letter only.")
    eval_batch_size: int = arg(64, "Held-out candidates per judge forward.")
    report_to: str = arg("tensorboard", REPORT_HELP)
    push_to_hub: str = arg(None, PUSH_HELP)
    hub_public: bool = arg(False, PUBLIC_HELP)
    degenerate_share: float = arg(0.15, "Share of training candidates that are degenerate (non-words, noise, repeats, truncated, empty, "
                                        "another image's, garbage after a correct caption), graded E; 0: the ordinary five sources only.")
    web_grading: str = arg("fixed", "Grade of web-style candidates: fixed (always C) or content (C / D / E by what they say about the "
                                    "image, the paper's rubric; see the module docstring).")

    def __post_init__(self):
        check_report_to(self.report_to)
        for k in ("n_train", "n_val", "steps", "batch_size", "eval_batch_size"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1")
        if self.n_train < 2 or self.n_val < 2:
            raise ValueError("n_train and n_val must be >= 2 (candidates from another image need one)")
        if not 0 <= self.degenerate_share < 1:
            raise ValueError(f"degenerate_share must be in [0, 1), got {self.degenerate_share}")
        if self.web_grading not in ("fixed", "content"):
            raise ValueError(f"unknown web_grading {self.web_grading!r}; expected fixed or content")
        for k in ("{reference}", "{caption}"):
            if k not in self.prompt:
                raise ValueError(f"prompt lacks the {k} placeholder")


def image_expansion(vlm, image) -> str:
    """What the processor expands an image placeholder to for this image (its size decides it)."""
    batch = vlm.processor(text=vlm.prompt_texts(1, vlm.prompt), images=vlm.processor_images([image]), return_text_replacement_offsets=True)
    return batch["text_replacement_offsets"][0][0]["replacement"]


def training_inputs(judge: Judge, expansion: str, references: list[str], captions: list[str], answers: list[int]) -> dict:
    """Forward kwargs (without pixels) for prompts + answer letter, tokenized as `Judge.score` tokenizes the
    prompts (VLM.encode_samples). `labels`: the letter only; `text_labels`: every text token (not padding,
    not image or other special tokens), for the auxiliary language-model loss."""
    vlm = judge.vlm
    texts = [vlm.prompt_texts(1, fill(judge.prompt, r, c))[0] + judge.answer_prefix for r, c in zip(references, captions)]
    inputs = vlm.prompt_inputs(texts, [expansion] * len(texts))  # left padded [B, T]
    answer = torch.tensor(answers).unsqueeze(1)  # [B, 1]
    kw = vlm.extend_inputs(inputs, answer, torch.ones_like(answer))  # + position ids as at scoring time
    labels = torch.full_like(kw["input_ids"], -100)
    labels[:, -1] = answer[:, 0]
    text = (kw["attention_mask"] == 1) & ~torch.isin(kw["input_ids"], torch.tensor(vlm.tokenizer.all_special_ids))
    return {**kw, "labels": labels, "text_labels": kw["input_ids"].masked_fill(~text, -100)}


def judge_loss(model, batch: dict, lm_weight: float) -> torch.Tensor:
    """Cross-entropy of the letter + lm_weight x next-token cross-entropy over the prompt's text tokens.
    The auxiliary term is why the nano judge learns in minutes: the letter alone is one label per sequence,
    while predicting the candidate from the image and the reference teaches the model, token by token, to
    expect what the reference says, which is what an error violates."""
    import torch.nn.functional as F

    labels, text = batch["labels"], batch["text_labels"]
    kw = {k: v for k, v in batch.items() if k not in ("labels", "text_labels")}
    logits = model(**kw).logits[:, :-1].float()  # [B, T-1, V] predicting tokens 1..T-1
    letter = F.cross_entropy(logits[:, -1], labels[:, -1])
    if not lm_weight:
        return letter
    return letter + lm_weight * F.cross_entropy(logits.flatten(0, 1), text[:, 1:].flatten(), ignore_index=-100)


def measure(judge: Judge, images: list, rows: list[dict]) -> dict:
    """Exact and within-one-grade accuracy, confusion matrix (rows: true grade, columns: argmax letter),
    mean expected score per true grade and per source, off-letter mass."""
    res = judge.score([images[r["image"]] for r in rows], [r["caption"] for r in rows], [r["reference"] for r in rows])
    true = [LETTERS.index(r["grade"]) for r in rows]
    pred = [LETTERS.index(x) for x in res.letters]
    conf = [[0] * 5 for _ in range(5)]
    for t, p in zip(true, pred):
        conf[t][p] += 1
    by = lambda key: {k: sum(s for s, r in zip(res.scores, rows) if r[key] == k) / max(1, sum(r[key] == k for r in rows))  # noqa: E731
                      for k in dict.fromkeys(r[key] for r in rows)}
    return {"n": len(rows), "exact": sum(t == p for t, p in zip(true, pred)) / len(rows),
            "within_one": sum(abs(t - p) <= 1 for t, p in zip(true, pred)) / len(rows),
            "confusion": {"rows_true_cols_pred": list(LETTERS), "matrix": conf},
            "true_grade_counts": {L: sum(t == i for t in true) for i, L in enumerate(LETTERS)},
            "mean_score_by_true_grade": dict(sorted(by("grade").items())), "mean_score_by_source": by("source"),
            "off_letter_mass_mean": sum(res.off_letter_mass) / len(rows), "off_letter_mass_max": max(res.off_letter_mass)}


def confusion_table(m: dict) -> str:
    rows = ["true\\pred " + " ".join(f"{L:>5}" for L in LETTERS)]
    rows += [f"{L:>9} " + " ".join(f"{v:>5}" for v in r) for L, r in zip(LETTERS, m["confusion"]["matrix"])]
    return "\n".join(rows)


def run(cfg: JudgeTrainConfig) -> dict:
    from ..models import load_vlm

    show_config(cfg)
    if cfg.push_to_hub:
        hub_token()  # before any work
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    train = _examples(cfg.seed, cfg.n_train, "train", cfg.image_size)
    val = _examples(cfg.seed, cfg.n_val, "val", cfg.image_size)
    rng = random.Random(cfg.seed)
    train_rows = [r for r, _ in train]
    corpus = [fill(cfg.prompt, e["reference"], e["caption"]) + e["grade"] for e in examples(train_rows[:1000], rng, web_grading=cfg.web_grading)]
    nano = NanoTrainConfig(out=cfg.out, seed=cfg.seed, image_size=cfg.image_size, vision_width=cfg.vision_width, vision_layers=cfg.vision_layers,
                           text_width=cfg.text_width, text_layers=cfg.text_layers, vocab_size=cfg.vocab_size)
    build_nano(nano, corpus, out)
    vlm = load_vlm(str(out), device="cpu", dtype="float32")
    judge = Judge(vlm, cfg.prompt, batch_size=cfg.eval_batch_size)
    letter = [vlm.tokenizer.encode(L, add_special_tokens=False) for L in LETTERS]
    if any(len(x) != 1 for x in letter):
        raise CapalignError("the judge tokenizer does not encode every letter A-E as one token")
    letter = [x[0] for x in letter]

    # 1. the processor once: every image is the same size, so one placeholder expansion serves all prompts
    pix = torch.cat([vlm.processor.image_processor([[im]], return_tensors="pt")["pixel_values"] for _, im in train])  # [N, 1, 3, S, S]
    expansion = image_expansion(vlm, train[0][1])
    order: list[int] = []

    def next_batch() -> dict:
        nonlocal order
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(train)), len(train))
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        cands = [degenerate_candidate(train_rows[i], rng.choice(DEGENERATE_KINDS), rng, train_rows)
                 if cfg.degenerate_share and rng.random() < cfg.degenerate_share else  # share 0 draws nothing: the old stream
                 candidate(train_rows[i], rng.choice(SOURCES), rng, train_rows[(i + rng.randrange(1, len(train))) % len(train)], cfg.web_grading)
                 for i in idx]
        kw = training_inputs(judge, expansion, [train_rows[i]["captions"][0] for i in idx], [c["caption"] for c in cands],
                             [letter[LETTERS.index(c["grade"])] for c in cands])
        return {**kw, "pixel_values": pix[idx]}

    # 2. train
    n_params = sum(p.numel() for p in vlm.model.parameters())
    tracker = Tracker(cfg.report_to, out, "judge", config_dict(cfg))
    losses, train_s = fit(vlm.model, vlm.model.parameters(), next_batch, cfg.steps, cfg.lr, cfg.weight_decay, "nano judge",
                          loss_fn=tracker.logged_loss(lambda model, batch: judge_loss(model, batch, cfg.lm_weight)))
    tracker.close()
    vlm.model.save_pretrained(out)
    vlm.processor.save_pretrained(out)
    atomic_write_json(out / JUDGE_FILE, {"prompt": cfg.prompt, "answer_prefix": judge.answer_prefix, "letters": list(LETTERS),
                                         "letter_scores": list(LETTER_SCORES), "grade_mapping": GRADE_MAPPING, "web_grading": cfg.web_grading,
                                         "trained_on": "capalign shapes world (capalign judge train)"})

    # 3. held-out accuracy through the same scoring path as the judge reward
    held = heldout(Judge.load(str(out), device="cpu", dtype="float32", batch_size=cfg.eval_batch_size), val, cfg.seed, cfg.web_grading)
    m = held["val"]
    result = {"steps": cfg.steps, "train_seconds": round(train_s, 1), "threads": torch.get_num_threads(), "params": n_params,
              "final_loss": sum(losses[-50:]) / len(losses[-50:]), "val_images": cfg.n_val, **held,
              "loss_curve": [round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 4) for i in range(0, len(losses), 100)]}
    atomic_write_json(out / "judge_result.json", result)
    save_config(cfg, out / "judge_config.json")
    write_model_card(out, title="capalign nano judge", tags=("judge", "shapes-world", "idefics3"), config=config_dict(cfg),
                     method=f"A small SmolVLM-architecture (Idefics3) judge trained from scratch to grade (image, reference, candidate) A-E "
                            f"with the letter's cross-entropy (plus {cfg.lm_weight} x next-token loss on the prompt), {cfg.steps} AdamW steps.",
                     data=f"{cfg.n_train} synthetic shapes-world images (seed {cfg.seed}), candidates drawn fresh each step; {cfg.n_val} held-out images.",
                     metrics={"steps": cfg.steps, "final_loss": result["final_loss"], "params": n_params, "held-out exact grade": m["exact"],
                              "held-out within one grade": m["within_one"]},
                     usage="The judge of `capalign judge --judge THIS_FOLDER` and `capalign rl train --reward judge --judge THIS_FOLDER` "
                           "(its prompt and letters are in judge.json).",
                     limits="A research toy: it grades captions of the synthetic shapes world only.")
    print0(f"nano judge: {cfg.steps} steps in {train_s:.0f}s, {n_params / 1e6:.2f}M params; held-out ({m['n']} candidates of {cfg.n_val} images): "
           f"exact grade {m['exact']:.1%}, within one grade {m['within_one']:.1%}, off-letter mass {m['off_letter_mass_mean']:.4f}")
    print0(confusion_table(m))
    d = held["val_degenerate"]
    print0(f"degenerate candidates ({d['n']}): graded E {d['exact']:.1%}, within one grade {d['within_one']:.1%}; mean score by kind: "
           + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in d["mean_score_by_source"].items()))
    if cfg.push_to_hub:
        push_folder(out, cfg.push_to_hub, private=not cfg.hub_public)
    return result


def heldout(judge: Judge, val: list, seed: int, web_grading: str = "fixed") -> dict:
    """Held-out measures of a judge on the `val` examples ((row, image) pairs of split 'val'): `val`, one ordinary
    candidate per source and image (the candidates every earlier judge was measured on), and `val_degenerate`,
    one degenerate candidate of every kind per image (all graded E). Callable on any judge, e.g. an old one."""
    rows, images = [r for r, _ in val], [im for _, im in val]
    return {"val": measure(judge, images, examples(rows, random.Random(f"judge-val/{seed}"), web_grading=web_grading)),
            "val_degenerate": measure(judge, images, degenerate_examples(rows, random.Random(f"judge-val-degenerate/{seed}")))}
