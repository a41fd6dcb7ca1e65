"""A VLM judge: grades a caption A-E against its image and a reference caption (ViZer appendix A.1).

The ViZer paper's RL baseline asks a VLM judge (Qwen2.5-VL-3B-Instruct-AWQ) for one letter, A
(excellent) .. E (wrong), and maps it to a score in [0, 1]. Departures, and why:
- The grade is read from the judge's next-token distribution, not from generated text: with p_L the
  probability of letter L (summed over its tokens, "A" and " A"), the score is the expected grade
  sum_L p_L s_L / sum_L p_L with s = A 1.0, B 0.75, C 0.5, D 0.25, E 0.0. It never fails to parse, is
  smooth in the judge's belief, and `off_letter_mass` = 1 - sum_L p_L says how much the judge wanted to
  say something else (high values mean the prompt does not fit the judge).
- The prompt is the user turn of A.1 with `{reference}` and `{caption}` placeholders, wrapped by the
  judge family's own chat template (Qwen: system "You are a helpful assistant."); A.1 also shows an
  assistant turn "Score:" in an order that reads as a rendering artefact, so `answer_prefix` (text
  after the template, before the letter) is configurable and empty by default.
- Several references: the first one fills `{reference}` (A.1 shows a single human reference).
Batched, without gradients; the judge's vision tower runs once per distinct image for all of that
image's captions (`VLM.encode_samples`), so scoring G samples per image costs one vision pass.
A judge folder may hold `judge.json` (written by `capalign judge train`) with its prompt and answer
prefix, which then replace the defaults: a trained nano judge is used exactly like a hub judge.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .. import CapalignError

LETTERS = "ABCDE"
LETTER_SCORES = (1.0, 0.75, 0.5, 0.25, 0.0)
JUDGE_FILE = "judge.json"
DEFAULT_PROMPT = """Look at this image and evaluate the caption quality.
Reference (human-written): {reference}
Generated caption: {caption}
Rate the generated caption:
A) Excellent - Perfect description, captures all key details
B) Good - Accurate main objects/scene, minor missing details
C) Fair - Correct general scene but lacks specificity
D) Poor - Some correct elements but major inaccuracies
E) Wrong - Completely incorrect or irrelevant
Answer with just the letter (A, B, C, D, or E):"""


def check_prompt(prompt: str) -> str:
    missing = [f"{{{k}}}" for k in ("reference", "caption") if f"{{{k}}}" not in prompt]
    if missing:
        raise CapalignError(f"judge prompt lacks the {' and '.join(missing)} placeholder(s); it needs both {{reference}} and {{caption}}")
    fill(prompt, "", "")  # any other placeholder ({style}) is refused here, before a judge is loaded
    return prompt


def resolve_prompt(prompt: str | None) -> str | None:
    """A prompt given as text or as the path of a text file (None: keep the default)."""
    if not prompt:
        return None
    p = Path(prompt)
    return check_prompt(p.read_text() if len(prompt) < 4096 and "\n" not in prompt and p.is_file() else prompt)


def fill(prompt: str, reference: str, caption: str) -> str:
    """The prompt rule of every command (models/prompts.py): one pass, so braces inside the caption or reference
    are left alone; a placeholder a judge cannot fill ({style}) is an error."""
    from ..models.prompts import fill_prompt

    return fill_prompt(prompt, "judge prompt", reference=reference, caption=caption)


def reference_text(refs, k: int) -> str:
    """The reference for sample k: a string, or the first of a list of strings."""
    if isinstance(refs, str) and refs.strip():
        return refs
    if isinstance(refs, (list, tuple)):
        for r in refs:
            if isinstance(r, str) and r.strip():
                return r
    raise CapalignError(f"sample {k} has no reference caption; the judge grades a caption against a reference")


def letter_token_ids(tokenizer) -> list[list[int]]:
    """Per letter, every token that spells it alone: "A" and " A" are different tokens in byte-level BPE
    vocabularies (Qwen, SmolLM), and a judge may answer with either depending on the template."""
    out = []
    for letter in LETTERS:
        ids = {t[0] for s in (letter, " " + letter) if len(t := tokenizer.encode(s, add_special_tokens=False)) == 1}
        if not ids:
            raise CapalignError(f"the judge's tokenizer has no single token for the letter {letter!r}; it cannot answer A-E")
        out.append(sorted(ids))
    flat = [i for ids in out for i in ids]
    if len(flat) != len(set(flat)):
        raise CapalignError("the judge's tokenizer maps two grade letters to the same token")
    return out


def image_key(im) -> tuple:
    """Identity of an image's pixels, so equal images share one vision pass whatever object holds them."""
    return (im.mode, im.size, hashlib.blake2b(im.tobytes(), digest_size=16).digest())


def letter_probs(logits, ids: list[list[int]]):
    """[N, V] next-token logits -> ([N, 5] probabilities renormalised over the letters, [N] mass off the letters).
    In log space, so a judge that is sure of another token still gives a finite letter distribution."""
    import torch

    logits = logits.double()
    per = torch.stack([torch.logsumexp(logits[:, i], -1) for i in ids], -1)  # [N, 5] log p(letter)
    on = torch.logsumexp(per, -1) - torch.logsumexp(logits, -1)  # [N] log of the mass on the letters
    return torch.softmax(per, -1), (-torch.expm1(on)).clamp(0.0, 1.0)


@dataclass
class JudgeScores:
    scores: list[float]  # expected grade per sample, in [0, 1]
    probs: list[list[float]]  # per sample, P(A..E) renormalised over the five letters
    off_letter_mass: list[float]  # per sample, next-token probability outside the five letters

    @property
    def letters(self) -> list[str]:
        return [LETTERS[max(range(5), key=p.__getitem__)] for p in self.probs]

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else float("nan")


class Judge:
    """A VLM (any `load_vlm` family) that grades captions; `score()` is batched and gradient-free."""

    def __init__(self, vlm, prompt: str | None = None, answer_prefix: str = "", batch_size: int = 16, name: str = ""):
        if batch_size < 1:
            raise CapalignError(f"judge batch_size must be >= 1, got {batch_size}")
        self.vlm, self.name, self.batch_size = vlm, name, batch_size
        self.prompt = check_prompt(prompt if prompt is not None else DEFAULT_PROMPT)
        self.answer_prefix = answer_prefix
        self.letter_ids = letter_token_ids(vlm.tokenizer)

    @classmethod
    def load(cls, name_or_path: str, device: str = "auto", dtype: str = "auto", load_in_8bit: bool = False,
             prompt: str | None = None, batch_size: int = 16) -> "Judge":
        from ..models import load_vlm
        from ..models.loading import FAMILIES, _config

        family = _config(name_or_path).model_type
        if family not in FAMILIES:
            raise CapalignError(f"judge {name_or_path!r} is not a vision-language model capalign can load "
                                f"(model type {family!r}; supported: {', '.join(FAMILIES)})")
        saved = Path(name_or_path).expanduser() / JUDGE_FILE
        meta = json.loads(saved.read_text()) if saved.is_file() else {}
        vlm = load_vlm(name_or_path, device=device, dtype=dtype, load_in_8bit=load_in_8bit)
        return cls(vlm, resolve_prompt(prompt) or meta.get("prompt"), meta.get("answer_prefix", ""), batch_size, name_or_path)

    def score(self, images: list, captions: list[str], references: list) -> JudgeScores:
        """images[k] (PIL image, path or bytes), captions[k], references[k] (a string or a list: the first is used)."""
        import torch

        from ..data.images import load_image

        n = len(captions)
        if len(images) != n or len(references) != n:
            raise CapalignError(f"judge got {len(images)} images, {n} captions and {len(references)} references; they must match")
        prompts = [fill(self.prompt, reference_text(r, k), c if isinstance(c, str) else "") for k, (r, c) in enumerate(zip(references, captions))]
        pics = [load_image(im) for im in images]
        groups: dict[tuple, list[int]] = {}  # distinct image -> its samples
        for k, im in enumerate(pics):
            groups.setdefault(image_key(im), []).append(k)
        groups_list = list(groups.values())
        probs = torch.zeros((n, 5), dtype=torch.float64)
        off = torch.zeros(n, dtype=torch.float64)
        for g in range(0, len(groups_list), self.batch_size):  # up to batch_size distinct images per vision batch
            chunk = groups_list[g : g + self.batch_size]
            samples = [k for ks in chunk for k in ks]
            enc = self.vlm.encode_samples([pics[ks[0]] for ks in chunk], [prompts[k] for k in samples],
                                          [j for j, ks in enumerate(chunk) for _ in ks], self.answer_prefix)
            for s in range(0, len(samples), self.batch_size):
                idx = list(range(s, min(s + self.batch_size, len(samples))))
                with torch.no_grad():
                    logits = self.vlm.next_token_logits(self.vlm.select(enc, idx)).cpu()  # [b, V]
                p, o = letter_probs(logits, self.letter_ids)
                rows = torch.tensor([samples[i] for i in idx])
                probs[rows], off[rows] = p, o
        scores = probs @ torch.tensor(LETTER_SCORES, dtype=torch.float64)
        return JudgeScores(scores.tolist(), probs.tolist(), off.tolist())


@functools.lru_cache(maxsize=1)
def cached_judge(name: str, device: str, dtype: str, load_in_8bit: bool, prompt: str | None, batch_size: int) -> Judge:
    return Judge.load(name, device, dtype, load_in_8bit, prompt, batch_size)


def evaluate_judge(cfg, captions: list[str], references: list[list[str]], images: list) -> dict:
    """The judge column of `capalign evaluate`: per-caption scores (None where the image is missing or
    unreadable: counted) and their mean. `images[k]`: path, bytes, PIL image, a callable returning one, or None."""
    from ..data.images import BadImage, load_image

    judge = cached_judge(cfg.judge, cfg.device, cfg.judge_dtype, cfg.judge_load_in_8bit, cfg.judge_prompt or None, cfg.judge_batch_size)
    pics, errors = [], {}
    for k, src in enumerate(images):
        try:
            pics.append(load_image(src() if callable(src) else src) if src is not None else None)
        except BadImage as e:
            pics.append(None)
            errors[k] = str(e)
    have = [k for k, p in enumerate(pics) if p is not None]
    if not have:
        raise CapalignError(f"the judge needs images, but none of the {len(captions)} scored ids has a readable one "
                            "(refs 'image' field, relative to the refs file, or --images SRC matched by id)")
    res = judge.score([pics[k] for k in have], [captions[k] for k in have], [references[k] for k in have])
    score, off, letter = ([None] * len(captions) for _ in range(3))
    for j, k in enumerate(have):
        score[k], off[k], letter[k] = res.scores[j], res.off_letter_mass[j], res.letters[j]
    return {"corpus": {"judge": res.mean, "judge_off_letter_mass": sum(res.off_letter_mass) / len(have)},
            "per_caption": {"judge": score, "judge_off_letter_mass": off, "judge_letter": letter},
            "counts": {"judge_scored": len(have), "judge_no_image": sum(s is None for s in images), "judge_bad_image": len(errors)}}


def definition(cfg) -> str:
    judge = cached_judge(cfg.judge, cfg.device, cfg.judge_dtype, cfg.judge_load_in_8bit, cfg.judge_prompt or None, cfg.judge_batch_size)
    return (f"expected grade over the judge's next-token P(A..E) renormalised over the letters, A=1 B=.75 C=.5 D=.25 E=0; "
            f"judge {cfg.judge}; prompt {judge.prompt!r}" + (f"; answer prefix {judge.answer_prefix!r}" if judge.answer_prefix else ""))


JUDGE_FIELDS = dict(
    judge_prompt=("", "Judge prompt (text, or a text file) with {reference} and {caption}; default: the judge folder's judge.json, else the ViZer paper's appendix A.1 prompt."),
    judge_batch_size=(16, "Captions per judge forward (and distinct images per judge vision batch)."),
    judge_dtype=("auto", "Judge weights: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16."),
    judge_load_in_8bit=(False, "Load the judge in 8-bit with bitsandbytes (CUDA only)."),
)


