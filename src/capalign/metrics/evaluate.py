"""`capalign evaluate`: score one or more caption files against references.

Nothing is dropped silently: predictions without references are counted and excluded, references
without predictions are counted, empty predictions are scored as "" and counted. Rows of the wrong
shape or type and repeated ids are refused with an error naming file, line and field (io.py).
BERTScore / CLIPScore are opt-in (they need model weights); the default metrics need no downloads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import CapalignError
from ..config import arg, save_config, show_config
from ..io import atomic_write_json, check_prediction, check_reference
from .judge import JUDGE_FIELDS

ALL_METRICS = ("bleu", "rouge", "cider", "bertscore", "clipscore", "grounding", "style", "judge", "length", "degenerate")
# what --metrics also takes (case-insensitive, like the names): the tables' labels and the JSON's corpus keys
_ALIASES = {**{f"bleu{n}": "bleu" for n in range(1, 5)}, "rouge-l": "rouge", "rouge_l": "rouge", "cider-d": "cider",
            "berts": "bertscore", "bertscore_f1": "bertscore", "clips": "clipscore", "chair": "grounding", "chairi": "grounding",
            "chairs": "grounding", "p_obj": "grounding", "r_obj": "grounding", "words": "length",
            **{k: "degenerate" for k in ("empty", "nonword", "repeat", "distinct")}}


def metric_names(spec: str) -> list[str]:
    """The metrics of a --metrics value ("BLEU,ROUGE-L,cider"), case-insensitive, as ALL_METRICS names, each once."""
    names, bad = [], []
    for m in (m.strip() for m in spec.split(",")):
        if m:
            key = _ALIASES.get(m.lower(), m.lower())
            (names if key in ALL_METRICS else bad).append(key if key in ALL_METRICS else m)
    if bad:
        raise ValueError(f"unknown metric(s) {', '.join(bad)}; choose from {','.join(ALL_METRICS)} (any case; table labels such as BLEU4 or ROUGE-L work too)")
    return list(dict.fromkeys(names))


@dataclasses.dataclass
class EvaluateConfig:
    """Score caption files (JSONL {"id", "caption"} or COCO results) against references (JSONL {"id", "captions", "objects"?, "image"?},
    a COCO annotation, Karpathy or Flickr30k caption file, or a HF dataset)."""

    pred: list[str] = arg([], "prediction file(s): JSONL {'id', 'caption'} or a COCO results file [{'image_id', 'caption'}]; "
                              "repeat the flag or give several paths; one table row per file")
    refs: str = arg("", "references: JSONL (a shapes-world manifest.jsonl works), COCO captions_*.json, Karpathy dataset_*.json, "
                        "Flickr30k results_20130124.token or Kaggle results.csv, hf:NAME or a save_to_disk folder (docs/data.md)")
    split: str = arg(None, "split of --refs (and --images) where it has several: a Karpathy file (train, val, test, restval) or a HF dataset")
    caption_column: str = arg(None, "caption column of a HF dataset --refs (default: the first text column among captions, caption, answer, sentences, text, ...)")
    images: str = arg("", "image source for CLIPScore (default: the refs' `image` paths, relative to the refs file)")
    metrics: str = arg("bleu,rouge,cider,grounding", f"comma-separated subset of {','.join(ALL_METRICS)} (any case)")
    out: str = arg("", "write corpus and per-caption scores to this JSON file (config saved beside it)")
    bertscore_model: str = arg("roberta-large", "BERTScore model: hub id or local folder")
    bertscore_layer: int = arg(17, "BERTScore hidden layer")
    clip_model: str = arg("openai/clip-vit-base-patch32", "CLIP or SigLIP model for CLIPScore: hub id or local folder")
    device: str = arg("auto", "auto, cpu, cuda, mps")
    style: str = arg("", "style metric: the target style (e.g. humorous)")
    style_classifier: str = arg("", "style metric: classifier folder (`capalign style classifier --out`, or any HF sequence-classification model)")
    judge: str = arg("", "Judge VLM for --metrics judge: hub id or local folder (see `capalign judge`).")
    judge_prompt: str = arg(*JUDGE_FIELDS["judge_prompt"])
    judge_batch_size: int = arg(*JUDGE_FIELDS["judge_batch_size"])
    judge_dtype: str = arg(*JUDGE_FIELDS["judge_dtype"])
    judge_load_in_8bit: bool = arg(*JUDGE_FIELDS["judge_load_in_8bit"])
    degenerate_vocabulary: str = arg("auto", "degenerate metric: the word list that decides `nonword`: auto (shapes when every reference word is a "
                                             "shapes-world word, else english), shapes, english (pyspellchecker's list)")

    def __post_init__(self):
        if isinstance(self.pred, str):
            self.pred = [self.pred]
        names = metric_names(self.metrics)
        self.metrics = ",".join(names)  # canonical: every reader of cfg.metrics splits it on commas
        if not self.pred:
            raise ValueError("give at least one --pred file")
        if not self.refs:
            raise ValueError("--refs is required")
        if self.out and Path(self.out).is_dir():
            raise ValueError(f"out must be a file path (e.g. results.json), got the folder {self.out}")
        if "judge" in names and not self.judge:
            raise ValueError("--metrics judge needs --judge MODEL")
        if self.degenerate_vocabulary not in ("auto", "shapes", "english"):
            raise ValueError(f"unknown degenerate_vocabulary {self.degenerate_vocabulary!r}; expected auto, shapes or english")


def _model_available(name: str) -> bool:
    if Path(name).is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        return False


def _check_models(cfg: EvaluateConfig, names: list[str]) -> None:
    for metric, model, flag in (("bertscore", cfg.bertscore_model, "--bertscore_model"), ("clipscore", cfg.clip_model, "--clip_model")):
        if metric in names:
            if not _model_available(model):
                raise CapalignError(f"{metric} needs model {model!r}, which is not available locally; pass a local folder with {flag}")


def _image_map(cfg: EvaluateConfig, refs: dict[str, dict]) -> tuple[dict, str]:
    """id -> image (path or loader) for CLIPScore: --images SRC (matched by id) or the refs' `image` paths."""
    if cfg.images:
        from ..data.sources import open_images

        src = open_images(cfg.images, split=cfg.split)
        return {e.id: e.load for e in src.entries()}, cfg.images
    base = Path(cfg.refs).resolve().parent
    return {i: str(base / r["image"]) for i, r in refs.items() if isinstance(r.get("image"), str) and r["image"]}, str(base)


def evaluate_system(preds: list[dict] | dict[str, str], refs: dict[str, dict], names: list[str], cfg: EvaluateConfig | None = None,
                    images: dict | None = None, images_from: str = "") -> dict:
    """Score one system. preds: {"id", "caption"} rows or {id: caption} (io.read_predictions); refs:
    {id: reference row} (io.read_references, or manifest rows). Rows are validated as in io.py."""
    if isinstance(preds, dict):
        preds = [{"id": i, "caption": c} for i, c in preds.items()]
    by_id: dict[str, str] = {}
    for k, p in enumerate(preds):
        pid, cap = check_prediction(p, f"prediction {k + 1}")
        if pid in by_id:
            raise CapalignError(f"duplicate prediction id {pid!r}; every id must appear once")
        by_id[pid] = cap
    refs = {str(i): check_reference(r, f"reference {i!r}") for i, r in refs.items()}
    counts = {"predictions": len(preds), "empty_predictions": sum(not c.strip() for c in by_id.values())}
    ids = [i for i in by_id if i in refs]
    counts["no_reference"] = len(by_id) - len(ids)
    counts["refs_without_prediction"] = sum(1 for i in refs if i not in by_id)
    counts["scored"] = len(ids)
    if not ids:
        raise CapalignError(f"no prediction id matches a reference id (predictions: {', '.join(list(by_id)[:3])}; "
                            f"references: {', '.join(list(refs)[:3])}); "
                            "check that both files use the same ids (COCO: the integer image_id, docs/data.md)")
    corpus: dict = {}
    per: dict = {}
    ref_names = [m for m in ("bleu", "rouge", "cider") if m in names]
    if ref_names:
        from .coco import coco_scores

        c, p = coco_scores({i: refs[i]["captions"] for i in ids}, {i: [by_id[i]] for i in ids}, metrics=ref_names)
        corpus.update(c)
        per.update(p)
    if "grounding" in names:
        have = [i for i in ids if refs[i].get("objects") is not None]
        if have:
            from .grounding import grounding

            g = grounding([by_id[i] for i in have], [refs[i]["objects"] for i in have])
            for lvl in ("name", "attr"):
                for k, v in g[lvl].items():
                    corpus[f"{k}_{lvl}"] = v
            rows = dict(zip(have, g["per_caption"]))
            per["grounding"] = [rows.get(i) for i in ids]
            counts["with_objects"] = len(have)
    dev = cfg.device if cfg is not None else "auto"
    if "bertscore" in names:
        from .bertscore import bert_score

        kw = dict(model=cfg.bertscore_model, num_layers=cfg.bertscore_layer) if cfg is not None else {}
        b = bert_score([by_id[i] for i in ids], [refs[i]["captions"] for i in ids], device=dev, **kw)
        for k, name in (("P", "BERTScore_P"), ("R", "BERTScore_R"), ("F", "BERTScore_F1")):
            corpus[name] = b[f"{k}_mean"]
            per[name] = b[k]
        counts["bertscore_truncated"] = b["truncated"]
    if "clipscore" in names:
        from .clipscore import clip_score

        images = images or {}
        have = [i for i in ids if i in images]
        counts["clipscore_no_image"] = len(ids) - len(have)
        if not have:
            raise CapalignError(f"clipscore needs images, but none of the {len(ids)} scored ids has one "
                                "(refs 'image' field, relative to the refs file, or --images SRC matched by id)")
        kw = dict(model=cfg.clip_model) if cfg is not None else {}
        c = clip_score([images[i] for i in have], [by_id[i] for i in have], [refs[i]["captions"] for i in have], device=dev,
                       cache_keys=[(images_from, i) for i in have], **kw)
        counts["clipscore_bad_image"] = c["missing_images"]
        counts["clipscore_scored"] = c["scored"]
        counts["clipscore_truncated"] = c["truncated"]
        for k, name in (("cos", "CLIPScore"), ("clip_s", "CLIP_S"), ("refclip_s", "RefCLIP_S")):
            corpus[name] = c[f"{k}_mean"]
            vals = dict(zip(have, c[k]))
            per[name] = [vals.get(i) for i in ids]
        if c["image_errors"]:
            counts["clipscore_image_errors"] = {have[j]: e for j, e in c["image_errors"].items()}  # first 20
    if "style" in names:
        from .style import style_for_evaluate

        s = style_for_evaluate([by_id[i] for i in ids], cfg)
        corpus["style_accuracy"], per["style"], counts["style"] = s["style_accuracy"], s["per_caption"], s["counts"]
    if "length" in names:  # words per caption: a reward that favours long captions shows here first (RL's reward hacking)
        per["words"] = [len(by_id[i].split()) for i in ids]
        corpus["words"] = sum(per["words"]) / len(ids)
    if "degenerate" in names:  # empty / non-word / repetitive captions and distinct share (metrics/degenerate.py)
        from .degenerate import FLAGS, degeneracy, vocabulary_for

        vocab = cfg.degenerate_vocabulary if cfg is not None else "auto"
        d = degeneracy([by_id[i] for i in ids], vocabulary_for(refs[i]["captions"] for i in ids) if vocab == "auto" else vocab)
        corpus.update(d["corpus"])
        per.update({k: [f[k] for f in d["per_caption"]] for k in FLAGS})
        counts["degenerate"] = {**d["counts"], "vocabulary": d["vocabulary"], "collapsed": d["collapsed"]}
    if "judge" in names:
        from .judge import evaluate_judge

        j = evaluate_judge(cfg, [by_id[i] for i in ids], [refs[i]["captions"] for i in ids], [(images or {}).get(i) for i in ids])
        corpus.update(j["corpus"]), per.update(j["per_caption"]), counts.update(j["counts"])
    return {"counts": counts, "corpus": corpus, "per_caption": {"id": ids, **per}}


def collapse_of(result: dict) -> str | None:
    """Why an evaluate_system result's captions collapsed (metrics/degenerate.py's rule), or None: not collapsed, or
    not scored with the degenerate metric. Every reader of an eval file's verdict (this command's warning, the study
    summary, the report) goes through here."""
    return ((result.get("counts") or {}).get("degenerate") or {}).get("collapsed")


# the terminal tables, one per group of metrics, in this order: (title, corpus keys, the count of captions the group
# covered; None: every scored caption). Labels come from capalign.metrics.registry; scores are on the JSON's scale
# (0-1, CIDEr-D as pycocoevalcap, words per caption), so terminal, JSON, study summary and report agree.
TABLE_GROUPS = (
    ("text vs references", ("BLEU1", "BLEU2", "BLEU3", "BLEU4", "ROUGE_L", "CIDEr", "BERTScore_F1", "words"), None),
    ("objects named (grounding)", ("precision_name", "recall_name", "f1_name", "chair_i_name", "chair_s_name"), "with_objects"),
    ("objects named with their colours", ("recall_attr", "chair_i_attr", "chair_s_attr"), "with_objects"),
    ("image-caption cosine", ("CLIPScore",), "clipscore_scored"),
    ("style", ("style_accuracy",), None),
    ("VLM judge", ("judge", "judge_off_letter_mass"), "judge_scored"),
    ("degenerate captions (shares)", ("empty", "nonword", "repeat", "distinct"), None),
)
EVALUATE_COLUMNS = tuple(k for _, keys, _ in TABLE_GROUPS for k in keys)
TABLE_WIDTH = 80  # a terminal's or a log's width; every table fits it (a group too wide is split in parts)
TABLE_NOTE = ("scores as in the JSON: 0-1 (CIDEr-D 0-10, words per caption); BLEU/ROUGE-L/CIDEr-D as pycocoevalcap, "
              "BERTS = BERTScore F1, CLIPS = raw image-caption cosine, CHAIR lower is better; captions: how many the scores cover")


def _cell(key: str, v) -> str:
    return "-" if v is None else f"{v:.1f}" if key == "words" else f"{v:.3f}"


def _tables(results: dict[str, dict], width: int = TABLE_WIDTH) -> list:
    """rich Tables of the corpus scores: one per group that some system has, each at most `width` columns wide
    (measured; a group too wide is split), with a `captions` column: how many captions the group's scores
    cover, "1 of 4" where not every scored caption (grounding needs objects, CLIPScore an image)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from . import registry

    measure = Console(width=10 * width)
    name_w = min(max(len(n) for n in results), 16)  # longer system names fold onto a second line

    def table(title: str, keys: list[str], covered: dict) -> Table:
        t = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False, title_justify="left")
        t.add_column("system", max_width=name_w, overflow="fold")
        for k in keys:
            t.add_column(registry.label(k), justify="right", no_wrap=True)
        t.add_column("captions", justify="right", no_wrap=True)
        for name, r in results.items():
            c, total = covered[name]
            t.add_row(name, *(_cell(k, r["corpus"].get(k)) for k in keys), f"{c} of {total}" if c != total else str(total))
        return t

    tables = []
    for title, keys, count in TABLE_GROUPS:
        keys = [k for k in keys if any(k in r["corpus"] for r in results.values())]
        if not keys:
            continue
        covered = {n: (r["counts"].get(count, 0) if count else r["counts"]["scored"], r["counts"]["scored"]) for n, r in results.items()}
        parts = [[]]
        for k in keys:
            if parts[-1] and measure.measure(table(title, [*parts[-1], k], covered)).maximum > width:
                parts.append([])
            parts[-1].append(k)
        tables += [table(title + (f" ({i + 1}/{len(parts)})" if len(parts) > 1 else ""), ks, covered) for i, ks in enumerate(parts)]
    return tables


def _table(results: dict[str, dict]) -> None:
    from ..utils import console

    for t in _tables(results):
        console.print(t, width=TABLE_WIDTH)
    console.print(TABLE_NOTE, width=TABLE_WIDTH)


def run(cfg: EvaluateConfig) -> dict:
    show_config(cfg)
    names = [m.strip() for m in cfg.metrics.split(",") if m.strip()]
    _check_models(cfg, names)
    from ..data.references import read_predictions, read_references

    refs = read_references(cfg.refs, cfg.split, cfg.caption_column)
    systems = {path: read_predictions(path) for path in dict.fromkeys(cfg.pred)}  # every file is checked before any scoring
    images, images_from = _image_map(cfg, refs) if {"clipscore", "judge"} & set(names) else ({}, "")
    from ..utils import print0

    results: dict[str, dict] = {}
    for path in cfg.pred:
        preds = systems[path]
        name = Path(path).stem
        while name in results:
            name += "'"
        res = evaluate_system(preds, refs, names, cfg, images, images_from)
        c = res["counts"]
        print0(f"{name}: {c['scored']} scored, {c['empty_predictions']} empty predictions (scored as \"\"), "
               f"{c['no_reference']} predictions without references (excluded), {c['refs_without_prediction']} references without prediction"
               + (f"; CLIPScore: {c['clipscore_scored']} scored, {c['clipscore_no_image']} without image, "
                  f"{c['clipscore_bad_image']} unreadable images (excluded)" if "clipscore_scored" in c else "")
               + (f"; {sum(c['clipscore_truncated'].values())} CLIPScore texts truncated" if sum(c.get("clipscore_truncated", {}).values()) else "")
               + (f"; {c['bertscore_truncated']} BERTScore sentences truncated" if c.get("bertscore_truncated") else ""))
        results[name] = {"file": str(path), **res}
    _table(results)
    for name, r in results.items():  # one line per collapsed system, after the table (metrics/degenerate.py's rule)
        if collapse_of(r):
            print0(f"warning: {name}: captions collapsed: {collapse_of(r)}")
    out = {"metrics": names, "refs": cfg.refs, "definitions": {
        "BLEU1-4/ROUGE_L/CIDEr": "pycocoevalcap semantics (PTB tokenisation, CIDEr-D sigma=6), values in [0,1] except CIDEr",
        "grounding": "*_name: noun only; *_attr: noun and stated colours must match (see docs/metrics.md)"}, "systems": results}
    if "bertscore" in names:
        from .bertscore import DEFINITION

        out["definitions"]["BERTScore_P/R/F1"] = f"{DEFINITION}; model {cfg.bertscore_model}, layer {cfg.bertscore_layer}, no idf, not rescaled"
    if "clipscore" in names:
        from .clipscore import definitions

        d = definitions()
        out["definitions"].update({"CLIPScore": d["cos"] + f"; model {cfg.clip_model}", "CLIP_S": d["clip_s"], "RefCLIP_S": d["refclip_s"]})
    if "style" in names:
        from .style import style_definition

        out["definitions"]["style_accuracy"] = style_definition(cfg)
    if "degenerate" in names:
        from .degenerate import DEFINITION

        out["definitions"]["empty/nonword/repeat/distinct"] = DEFINITION
    if "judge" in names:
        from .judge import definition

        out["definitions"]["judge"] = definition(cfg)
    if cfg.out:
        atomic_write_json(cfg.out, out)
        save_config(cfg, cfg.out + ".config.json")  # beside the results, never over them
        print0(f"wrote {cfg.out}")
    return out
