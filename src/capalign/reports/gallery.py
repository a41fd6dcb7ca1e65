"""The gallery (the ViZer paper's Figure 1): each test image with its reference, the Base caption and
every trained system's caption side by side.

- Words added relative to the Base caption of the same image (a word-level diff, difflib) get class
  `add`.
- On the shapes world (manifest rows with `objects`), each object mention is judged by
  `capalign.metrics.grounding` itself (`vocabulary`, `mention_spans`, `parse_objects`, `grounded`), so
  the marks are the evaluation's rules: a noun with no such object in the image is `hal`; a grounded
  noun whose stated colour matches no object of that shape gets its colour word marked `attr`; other
  mentions are `obj`.
- Per-caption scores come from the system's eval file (`evaluate_system`'s per_caption rows).
Rows carry their scores as JSON for the page's script (page.py), which sorts and filters them.
"""

from __future__ import annotations

import difflib
import html
import re
from pathlib import Path

from ..metrics import registry
from ..metrics.grounding import COLOURS, grounded, mention_spans, parse_objects, vocabulary
from .rundir import Run

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
# per-caption metrics offered for sorting and filtering (labels and directions: capalign.metrics.registry)
METRICS = ("CIDEr", "BLEU4", "ROUGE_L", "BLEU1", "BERTScore_F1", "CLIPScore", "RefCLIP_S", "halluc_obj", "halluc_attr", "recall_obj")
SHOWN = (("CIDEr", "CIDEr"), ("BLEU4", "B4"), ("ROUGE_L", "R-L"), ("BERTScore_F1", "BERTS"), ("CLIPScore", "CLIPS"))
MISSING_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="144" height="144" viewBox="0 0 144 144">'
               '<rect width="144" height="144" fill="#eee" stroke="#bbb"/><path d="M20 20L124 124M124 20L20 124" stroke="#ccc"/>'
               '<text x="72" y="76" font-family="sans-serif" font-size="13" text-anchor="middle" fill="#666">image missing</text></svg>')


def added_spans(caption: str, base: str) -> list[tuple[int, int]]:
    """Character spans of the caption's words that the Base caption does not have at that place (word diff)."""
    words = list(_TOKEN.finditer(caption))
    sm = difflib.SequenceMatcher(None, [m.group().lower() for m in _TOKEN.finditer(base)], [m.group().lower() for m in words], autojunk=False)
    return [words[j].span() for tag, _, _, j1, j2 in sm.get_opcodes() if tag in ("insert", "replace") for j in range(j1, j2)]


def grounding_marks(caption: str, objects, nouns: set[str], attrs: set[str]) -> list[tuple[int, int, str, str]]:
    """(start, end, class, title) over caption.lower() for every object mention, judged by the grounding metric's rules."""
    parsed = parse_objects(objects)
    out = []
    for m in mention_spans(caption, nouns, attrs):
        key = (m["name"], m["attributes"])
        if not grounded(key, parsed, "name"):
            out.append((*m["noun"], "hal", f"hallucinated object: no {m['name']} in the image"))
        elif not grounded(key, parsed, "attr"):
            same = [a for n, a in parsed if n == m["name"]]
            colours = [s for s in m["attribute_spans"] if s[2] in COLOURS]
            # the colour words no object of this shape has; all of them if only their combination is wrong
            wrong = [s for s in colours if not any(s[2] in a for a in same)] or colours
            has = ", ".join(" ".join(sorted(a & set(COLOURS))) + " " + m["name"] for a in same)
            out += [(s, e, "attr", f"wrong attribute: the image has {has}") for s, e, _ in wrong]
        else:
            out.append((*m["noun"], "obj", "object in the image"))
    return out


def marked_html(text: str, marks: list[tuple[int, int, str, str]]) -> str:
    """Escape `text` and wrap each stretch covered by marks in one <span> with the union of their classes."""
    cuts = sorted({0, len(text), *(p for s, e, *_ in marks for p in (s, e))})
    out = []
    for a, b in zip(cuts, cuts[1:]):
        on = [m for m in marks if m[0] <= a and b <= m[1]]
        seg = html.escape(text[a:b])
        if on and text[a:b].strip():
            title = html.escape("; ".join(dict.fromkeys(m[3] for m in on)))
            out.append(f'<span class="{" ".join(sorted({m[2] for m in on}))}" title="{title}">{seg}</span>')
        else:
            out.append(seg)
    return "".join(out)


def caption_html(caption: str, base: str | None, objects, vocab) -> str:
    text = caption if len(caption.lower()) == len(caption) else caption.lower()  # offsets are into caption.lower()
    marks = [(s, e, "add", "added relative to Base") for s, e in added_spans(text, base)] if base is not None else []
    if objects is not None:
        marks += grounding_marks(text, objects, *vocab)
    return marked_html(text, marks)


def per_caption_scores(ev: dict | None) -> dict[str, dict]:
    """id -> {metric: value} from an eval file's per_caption rows (grounding rows become counts)."""
    if not ev or not isinstance(ev.get("per_caption"), dict):
        return {}
    per = ev["per_caption"]
    out: dict[str, dict] = {str(i): {} for i in per.get("id", [])}
    for key, vals in per.items():
        if key in ("id", "grounding") or not isinstance(vals, list):
            continue
        for i, v in zip(per["id"], vals):
            if isinstance(v, (int, float)):
                out[str(i)][key] = float(v)
    for i, g in zip(per.get("id", []), per.get("grounding") or []):
        if g:
            out[str(i)].update(halluc_obj=g["name"]["hallucinated"], halluc_attr=g["attr"]["hallucinated"],
                               mentions=g["name"]["mentions"], recall_obj=g["name"]["recall"])
    return out


def _scores_html(s: dict) -> str:
    parts = [f"{label} {s[k]:.3f}" for k, label in SHOWN if s.get(k) is not None]
    if "mentions" in s:
        parts.append(f"hallucinated objects {s['halluc_obj']}/{s['mentions']} · wrong attributes {s['halluc_attr'] - s['halluc_obj']}")
    return f'<div class="sc">{html.escape(" · ".join(parts))}</div>' if parts else ""


def _thumbnail(src: Path, dest_stem: Path, size: int) -> str | None:
    """Write a small copy of the image (PNG, or JPEG for photos); the file name, or None if unreadable."""
    from PIL import Image

    try:
        with Image.open(src) as im:
            photo = im.format == "JPEG"
            im = im.convert("RGB")
            im.thumbnail((size, size))
            dest = dest_stem.with_suffix(".jpg" if photo else ".png")
            im.save(dest, **({"quality": 88} if photo else {}))
        return dest.name
    except (OSError, ValueError):
        return None


def build(run: Run, folder: Path, max_images: int, thumb: int) -> tuple[str, dict]:
    """Write the thumbnails under folder/assets/img and return (the gallery's HTML, its data for the script)."""
    img_dir = folder / "assets" / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    (folder / "assets" / "missing.svg").write_text(MISSING_SVG)
    rows_html, rows, missing, cut = [], [], 0, {}
    systems = run.headline()
    for seed in run.seeds if systems else []:  # no systems (e.g. a style-only study): no gallery, nothing missing
        manifest = run.test_manifest(seed)
        test = run.jsonl(manifest, f"test data of seed {seed}")
        if not test:
            continue
        if 0 < max_images < len(test):
            cut[seed] = len(test)
            test = test[:max_images]
        caps = {s: run.jsonl(run.system_file(s, seed, "captions"), f"captions of {s}, seed {seed}") for s in systems}
        caps = {s: {str(r.get("id")): r["caption"] if isinstance(r.get("caption"), str) else "" for r in v} for s, v in caps.items() if v is not None}
        scores = {s: per_caption_scores(run.json(run.system_file(s, seed, "eval"), f"scores of {s}, seed {seed}")) for s in systems}
        shapes = any(r.get("objects") is not None for r in test)
        vocab = vocabulary(r["objects"] for r in test if r.get("objects") is not None) if shapes else None
        base_dir = (run.root / manifest).parent
        for r in test:
            k, iid = len(rows), str(r.get("id"))
            name = _thumbnail(base_dir / str(r.get("image", "")), img_dir / f"s{seed}-{k:05d}", thumb) if r.get("image") else None
            missing += name is None
            src = f"assets/img/{name}" if name else "assets/missing.svg"
            refs = [c for c in r.get("captions") or [] if isinstance(c, str)]
            base_cap = caps.get(run.baseline, {}).get(iid)
            cells = []
            for s in systems:
                cap = caps.get(s, {}).get(iid)
                if cap is None:
                    cells.append(f'<td class="cap none" data-system="{html.escape(s)}">no caption</td>')
                    continue
                body = caption_html(cap, None if s == run.baseline else base_cap, r.get("objects") if shapes else None, vocab)
                cells.append(f'<td class="cap" data-system="{html.escape(s)}"><div class="txt">{body}</div>'
                             f'{_scores_html(scores[s].get(iid, {}))}</td>')
            present = [" ".join(_TOKEN.findall(caps[s][iid].lower())) for s in systems if iid in caps.get(s, {})]
            ref_more = f'<div class="more">+{len(refs) - 1} more</div>' if len(refs) > 1 else ""
            rows_html.append(
                f'<tr id="g{k}" data-seed="{html.escape(seed)}" data-id="{html.escape(iid)}">'
                f'<td class="im"><img src="{src}" alt="{html.escape(iid)}"><div class="id">seed {html.escape(seed)} · {html.escape(iid)}</div></td>'
                f'<td class="ref" title="{html.escape(chr(10).join(refs))}">{html.escape(refs[0]) if refs else "-"}{ref_more}</td>'
                + "".join(cells) + "</tr>")
            rows.append({"seed": seed, "id": iid, "differ": len(set(present)) > 1,
                         "s": {s: scores[s].get(iid, {}) for s in systems}})
    if missing:
        run.note(f"{missing} test image(s) no longer exist or cannot be read: shown as placeholders")
    present_metrics = {m for r in rows for s in r["s"].values() for m in s}
    metrics = [{"key": k, "label": registry.label(k), "higher": registry.higher_is_better(k)} for k in METRICS if k in present_metrics]
    data = {"systems": systems, "left_out": [s for s in run.systems if s not in systems], "cut": cut, "max_images": max_images, "baseline": run.baseline, "seeds": run.seeds, "metrics": metrics, "rows": rows,
            "images": len(rows), "missing_images": missing}
    if not rows:
        return "", data
    head = "<th>image</th><th>reference</th>" + "".join(f"<th>{html.escape(s)}</th>" for s in systems)
    table = f'<table id="gallery"><thead><tr>{head}</tr></thead><tbody>{"".join(rows_html)}</tbody></table>'
    return table, data
