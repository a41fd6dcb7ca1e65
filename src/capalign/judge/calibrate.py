"""`capalign judge calibrate`: can this judge be fooled? Grade degenerate captions built from your references.

Before training against a judge (RL's reward), check that it grades nonsense as nonsense. In the shapes world
the first nano judge scored a collapsed policy's non-words 0.5, like a vague caption, and RL(judge) collapsed
in 3 of 5 seeds (docs/rl.md). This command builds, per reference row (its first caption is the reference):

- `reference`: the reference itself (expected A);
- ordinary candidates: for shapes-world rows (with `objects` positions and `captions_web`) one candidate of each
  source the nano judge trains on (correct, one error, web, several errors, another image; expected grade by
  training/judge.py's content rule); for other rows the row's second caption, `other_reference` (expected A);
- degenerate candidates (judge/candidates.py), expected E: nonword, char_noise, repeat, truncated,
  empty, unrelated_image (for shapes rows one naming none of the image's objects), garbage_tail.

It grades them all with the judge (`Judge.score`, the reward's path) and reports per kind the mean score,
the letter distribution (argmax letter) and the share graded as expected. A degenerate kind "fools" the
judge when its mean score is >= FOOLED_SCORE, i.e. on average at least a D ("some correct elements"):
a reward that rates it so gives GRPO little reason to leave it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .. import CapalignError
from ..config import arg, save_config, show_config
from ..io import atomic_write_json, check_reference, read_jsonl_rows, row_id
from ..metrics.judge import JUDGE_FIELDS, LETTERS, Judge, resolve_prompt

FOOLED_SCORE = 0.25


@dataclass
class JudgeCalibrateConfig:
    """Grade degenerate captions (non-words, noise, repeats, truncated, empty, another image's, garbage tails) built
    from references, beside the references themselves and ordinary captions: does the judge grade nonsense E?"""

    judge: str = arg("", "Judge VLM: hub id or local folder (any family `load_vlm` loads; a `capalign judge train` folder works).")
    refs: str = arg("", "References JSONL with `captions` and `image` (a shapes-world manifest.jsonl works); the first caption is the reference.")
    images: str = arg("", "Image source matched by id (default: the refs' `image` paths, relative to the refs file).")
    out: str = arg("", "Write per-kind results and every graded candidate to this JSON file.")
    limit: int = arg(100, "Use at most this many reference rows (each gives 8-13 candidates).")
    seed: int = arg(0, "Seed of the candidates.")
    prompt: str = arg(*JUDGE_FIELDS["judge_prompt"])
    batch_size: int = arg(*JUDGE_FIELDS["judge_batch_size"])
    dtype: str = arg(*JUDGE_FIELDS["judge_dtype"])
    load_in_8bit: bool = arg(*JUDGE_FIELDS["judge_load_in_8bit"])
    device: str = arg("auto", "auto, cpu, cuda, mps")

    def __post_init__(self):
        if not self.judge:
            raise ValueError("--judge MODEL is required")
        if not self.refs:
            raise ValueError("--refs refs.jsonl is required")
        if self.limit < 2:
            raise ValueError(f"limit must be >= 2 (another image's caption needs a second row), got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.out and Path(self.out).is_dir():
            raise ValueError(f"out must be a file path (e.g. calibrate.json), got the folder {self.out}")
        if self.prompt:
            resolve_prompt(self.prompt)


def is_shapes_row(raw: dict) -> bool:
    objs = raw.get("objects")
    return (isinstance(objs, list) and bool(objs) and all(isinstance(o, dict) and {"name", "color", "size", "position"} <= set(o) for o in objs)
            and isinstance(raw.get("captions_web"), list) and bool(raw["captions_web"]))


def read_rows(path: str, limit: int) -> list[tuple[str, dict, dict]]:
    """(id, checked reference row, raw row) of the first `limit` rows; a repeated id is an error."""
    rows, seen = [], set()
    for n, raw in read_jsonl_rows(path, "references file"):
        where = f"{path} line {n}"
        i = row_id(raw, where)
        if i in seen:
            raise CapalignError(f"{path}: duplicate id {i!r} (line {n}); every id must appear once")
        seen.add(i)
        rows.append((i, check_reference(raw, where), raw))
        if len(rows) == limit:
            break
    if len(rows) < 2:
        raise CapalignError(f"{path}: calibration needs at least 2 reference rows (another image's caption is one of the kinds), got {len(rows)}")
    return rows


def build_candidates(rows: list[tuple[str, dict, dict]], rng: random.Random) -> list[dict]:
    """Per row: the reference, ordinary candidates and one degenerate candidate of every kind (module docstring)."""
    from .candidates import KINDS, degenerate_caption
    from .train import SOURCES, candidate, degenerate_candidate

    shapes = all(is_shapes_row(raw) for _, _, raw in rows)  # one rule for the whole file: its kinds are comparable
    raws = [raw for _, _, raw in rows]
    out = []
    for k, (i, ref, raw) in enumerate(rows):
        reference = ref["captions"][0]
        cands = [("reference", "reference", reference, "A")]
        if shapes:
            for source in SOURCES:
                c = candidate(raw, source, rng, raws[(k + rng.randrange(1, len(raws))) % len(raws)])
                cands.append(("ordinary", source, c["caption"], c["grade"]))
            cands += [("degenerate", kind, degenerate_candidate(raw, kind, rng, raws)["caption"], "E") for kind in KINDS]
        else:
            if len(ref["captions"]) > 1:
                cands.append(("ordinary", "other_reference", ref["captions"][1], "A"))
            other = rows[(k + rng.randrange(1, len(rows))) % len(rows)][1]["captions"][0]
            cands += [("degenerate", kind, degenerate_caption(kind, reference, rng, other), "E") for kind in KINDS]
        out += [{"id": i, "group": g, "kind": kind, "caption": cap, "reference": reference, "expected": exp} for g, kind, cap, exp in cands]
    return out


def summarize(cands: list[dict]) -> dict:
    """kind -> {group, n, expected, mean_score, letters (share of each argmax letter), as_expected, fooled}."""
    kinds: dict[str, dict] = {}
    for c in cands:
        kinds.setdefault(c["kind"], []).append(c)
    out = {}
    for kind, cs in kinds.items():
        mean = sum(c["score"] for c in cs) / len(cs)
        exp = {c["expected"] for c in cs}
        out[kind] = {"group": cs[0]["group"], "n": len(cs), "expected": "".join(sorted(exp)) if len(exp) > 1 else exp.pop(),
                     "mean_score": mean, "letters": {L: sum(c["letter"] == L for c in cs) / len(cs) for L in LETTERS},
                     "as_expected": sum(c["letter"] == c["expected"] for c in cs) / len(cs),
                     "fooled": cs[0]["group"] == "degenerate" and mean >= FOOLED_SCORE}
    return out


def run(cfg: JudgeCalibrateConfig) -> dict:
    from ..data.images import BadImage, load_image
    from ..metrics.evaluate import _image_map
    from ..utils import console, print0

    show_config(cfg)
    rows = read_rows(cfg.refs, cfg.limit)
    images, _ = _image_map(cfg, {i: ref for i, ref, _ in rows})
    pics, bad = {}, {}
    for i, _, _ in rows:
        if i in images:
            try:
                src = images[i]
                pics[i] = load_image(src() if callable(src) else src)
            except BadImage as e:
                bad[i] = str(e)
    missing = sum(i not in images for i, _, _ in rows)
    rows = [r for r in rows if r[0] in pics]
    if len(rows) < 2:
        raise CapalignError(f"calibration needs images for at least 2 reference rows, found {len(rows)} readable "
                            "(refs 'image' field, relative to the refs file, or --images SRC matched by id)")
    cands = build_candidates(rows, random.Random(f"judge-calibrate/{cfg.seed}"))
    judge = Judge.load(cfg.judge, cfg.device, cfg.dtype, cfg.load_in_8bit, cfg.prompt or None, cfg.batch_size)
    res = judge.score([pics[c["id"]] for c in cands], [c["caption"] for c in cands], [c["reference"] for c in cands])
    for c, s, L in zip(cands, res.scores, res.letters):
        c["score"], c["letter"] = s, L
    kinds = summarize(cands)

    from rich.table import Table

    t = Table(title=f"judge {cfg.judge}: how it grades each kind of caption ({len(rows)} images; letters = share graded A..E)")
    for h in ("kind", "group", "n", "expected", "mean score", *LETTERS, "as expected"):
        t.add_column(h, justify="left" if h in ("kind", "group") else "right")
    for kind, k in kinds.items():
        t.add_row(kind, k["group"], str(k["n"]), k["expected"], f"{k['mean_score']:.3f}", *(f"{100 * k['letters'][L]:.0f}%" for L in LETTERS),
                  f"{100 * k['as_expected']:.0f}%")
    console.print(t)
    fooled = [kind for kind, k in kinds.items() if k["fooled"]]
    ref_mean = kinds["reference"]["mean_score"]
    if fooled:
        print0("warning: the judge can be fooled: " + ", ".join(f"{k} {kinds[k]['mean_score']:.3f}" for k in fooled)
               + f" (mean score >= {FOOLED_SCORE}: at least a D; references {ref_mean:.3f}); a reward from this judge would not push a policy away from them")
    else:
        print0(f"no degenerate kind scores >= {FOOLED_SCORE} on average (references: {ref_mean:.3f})")
    out = {"judge": cfg.judge, "refs": cfg.refs, "images": len(rows), "images_missing": missing,
           "unreadable_images": bad, "fooled_score": FOOLED_SCORE, "fooled": fooled, "kinds": kinds, "candidates": cands}
    if cfg.out:
        atomic_write_json(cfg.out, out)
        save_config(cfg, cfg.out + ".config.json")
        print0(f"wrote {cfg.out}")
    return out
