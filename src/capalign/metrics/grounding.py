"""Object grounding of captions against annotated objects (CHAIR-style), pure functions.

Rules (documented in docs/metrics.md):
- Annotations: dicts {"name": noun, "attributes": [...]} (other keys ignored) or strings
  "red circle" (last word = name, earlier words = attributes).
- Vocabulary of nouns = every annotated name in the corpus + the SHAPES_WORLD nouns, plus the
  small SYNONYMS table; plurals are folded with simple English rules ("circles" -> "circle").
- A mention = a known noun in the caption; its attributes = the known attribute words directly
  before it (stopping at the first other word), e.g. "two small red circles" -> circle {small, red}.
- Name level: a mention is hallucinated if no annotated object has that name.
  Attribute level: it is hallucinated if no annotated object has that name AND every colour the
  mention states (sizes are not required to match: the shapes world's sizes are relative).
- Per caption: precision = grounded mentions / mentions, recall = annotated object names
  mentioned / annotated names, CHAIR_i = hallucinated / mentions (corpus: pooled counts),
  CHAIR_s = share of captions with >= 1 hallucinated mention.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
SYNONYMS = {"ring": "circle", "disc": "circle", "disk": "circle", "dot": "circle", "box": "square",
            "rhombus": "diamond", "grey": "gray"}
_WORD = re.compile(r"[a-z]+")


def singular(w: str) -> str:
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "xes", "sses")):
        return w[:-2]
    if w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        return w[:-1]
    return w


def parse_objects(objects: Iterable) -> list[tuple[str, frozenset]]:
    out = []
    for o in objects or []:
        if isinstance(o, str):
            words = o.lower().split()
            if words:
                out.append((SYNONYMS.get(words[-1], words[-1]), frozenset(words[:-1])))
        elif isinstance(o, Mapping) and o.get("name"):
            name = str(o["name"]).lower()
            out.append((SYNONYMS.get(name, name), frozenset(str(a).lower() for a in o.get("attributes") or [])))
    return out


def vocabulary(all_objects: Iterable[Iterable]) -> tuple[set[str], set[str]]:
    nouns, attrs = set(SHAPES), set(COLOURS) | set(SIZES)
    for objs in all_objects:
        for name, at in parse_objects(objs):
            nouns.add(name)
            attrs |= at
    return nouns, attrs


def mention_spans(caption: str, nouns: set[str], attrs: set[str]) -> list[dict]:
    """The mentions of `caption` with where they are (for the HTML report's marks): per mention
    {"name", "attributes" (frozenset), "noun": (start, end), "attribute_spans": [(start, end, attribute)]},
    character offsets into caption.lower()."""
    words = list(_WORD.finditer((caption or "").lower()))
    out = []
    for i, m in enumerate(words):
        w = m.group()
        n = SYNONYMS.get(w, w)
        n = n if n in nouns else SYNONYMS.get(singular(w), singular(w))
        if n not in nouns:
            continue
        j, spans = i - 1, []
        while j >= 0 and SYNONYMS.get(words[j].group(), words[j].group()) in attrs:
            spans.append((words[j].start(), words[j].end(), SYNONYMS.get(words[j].group(), words[j].group())))
            j -= 1
        out.append({"name": n, "attributes": frozenset(a for _, _, a in spans), "noun": m.span(), "attribute_spans": spans[::-1]})
    return out


def mentions(caption: str, nouns: set[str], attrs: set[str]) -> list[tuple[str, frozenset]]:
    return [(m["name"], m["attributes"]) for m in mention_spans(caption, nouns, attrs)]


def grounded(m: tuple[str, frozenset], objs: list[tuple[str, frozenset]], level: str) -> bool:
    """Is mention m = (name, attributes) grounded in the parsed objects at `level` ("name" or "attr")?"""
    name, at = m
    colours = at & set(COLOURS)
    return any(n == name and (level == "name" or colours <= oat) for n, oat in objs)


def grounding(predictions: Sequence[str], objects: Sequence[Iterable]) -> dict:
    """predictions[i] is scored against objects[i]. Returns corpus scores per level and per-caption rows."""
    nouns, attrs = vocabulary(objects)
    result: dict = {"per_caption": []}
    totals = {lvl: {"mentions": 0, "grounded": 0, "hall_captions": 0, "recalled": 0, "annotated": 0} for lvl in ("name", "attr")}
    for cap, objs in zip(predictions, objects):
        objs = parse_objects(objs)
        ms = mentions(cap, nouns, attrs)
        row = {}
        for lvl in ("name", "attr"):
            ok = [grounded(m, objs, lvl) for m in ms]
            t = totals[lvl]
            names = {n for n, _ in objs}
            said = {m[0] for m, g in zip(ms, ok) if g}
            t["mentions"] += len(ms)
            t["grounded"] += sum(ok)
            t["hall_captions"] += int(not all(ok))
            t["recalled"] += len(names & said)
            t["annotated"] += len(names)
            # the counts behind the ratios, so corpus (pooled) scores can be recomputed and bootstrapped per caption
            row[lvl] = {"mentions": len(ms), "hallucinated": len(ms) - sum(ok), "recalled": len(names & said), "annotated": len(names),
                        "precision": sum(ok) / len(ms) if ms else None,
                        "recall": len(names & said) / len(names) if names else None}
        result["per_caption"].append(row)
    n = len(result["per_caption"])
    for lvl, t in totals.items():
        p = t["grounded"] / t["mentions"] if t["mentions"] else 0.0
        r = t["recalled"] / t["annotated"] if t["annotated"] else 0.0
        result[lvl] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                       "chair_i": 1 - p if t["mentions"] else 0.0, "chair_s": t["hall_captions"] / n if n else 0.0}
    return result
