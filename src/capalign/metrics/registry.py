"""Every metric capalign reports, once: its key (as in `capalign evaluate`'s JSON corpus scores), the short
label tables print, its direction and a one-line description. The evaluate table, the study summary, the
report and the style sweep read names, labels and directions from here, so they cannot disagree.

`higher_is_better` is True, False (CHAIR: hallucination rates) or None (neither: caption length). A key
that is not registered (a metric of a newer version, a user's own) keeps its key as label, and is taken
as lower-is-better only when it is a CHAIR rate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool | None = True
    description: str = ""


_ALL = [
    *(Metric(f"BLEU{n}", f"BLEU{n}", True, f"corpus BLEU-{n}, as pycocoevalcap") for n in (1, 2, 3, 4)),
    Metric("ROUGE_L", "ROUGE-L", True, "ROUGE-L F (beta 1.2), as pycocoevalcap"),
    Metric("CIDEr", "CIDEr", True, "CIDEr-D, as pycocoevalcap (x10 scale of its code)"),
    Metric("BERTScore_F1", "BERTS", True, "BERTScore F1, max over references"),
    Metric("CLIPScore", "CLIPS", True, "raw image-caption cosine of a CLIP model"),
    Metric("style_accuracy", "STYLE", True, "share of captions the style classifier puts in the asked style"),
    Metric("precision_name", "P_obj", True, "object precision: mentioned objects that are in the image"),
    Metric("recall_name", "R_obj", True, "object recall: annotated objects that are mentioned"),
    Metric("recall_attr", "R_attr", True, "objects named with the right colour (recall)"),
    Metric("f1_name", "F1_obj", True, "F1 of object precision and recall"),
    Metric("chair_i_name", "CHAIRi", False, "CHAIR_i: hallucinated object mentions / mentions"),
    Metric("chair_s_name", "CHAIRs", False, "CHAIR_s: captions with a hallucinated object"),
    Metric("chair_i_attr", "CHAIRi_attr", False, "CHAIR_i (attribute level; lower is better)"),
    Metric("chair_s_attr", "CHAIRs_attr", False, "CHAIR_s at attribute level"),
    Metric("judge", "Judge", True, "a VLM judge's expected grade (A=1 .. E=0)"),
    Metric("judge_off_letter_mass", "off-letter", False, "judge probability mass off the letters A-E"),
    Metric("words", "words", None, "words per caption"),
    # degeneracy (metrics/degenerate.py): shares of the captions of a system
    Metric("empty", "empty", False, "share of captions with no word"),
    Metric("nonword", "nonword", False, "share of captions most of whose words are not words"),
    Metric("repeat", "repeat", False, "share of captions that repeat a word or a 3-gram"),
    Metric("distinct", "distinct", True, "distinct captions / captions"),
    # per-caption scores the report's gallery sorts and filters by
    Metric("RefCLIP_S", "RefCLIP-S", True, "RefCLIPScore: harmonic mean of CLIPScore and the best reference similarity"),
    Metric("halluc_obj", "hallucinated objects", False, "objects a caption names that are not in the image"),
    Metric("halluc_attr", "hallucinated objects or attributes", False, "objects or colours a caption gets wrong"),
    Metric("recall_obj", "object recall", True, "share of the image's objects a caption names"),
    # the style sweep's measures (capalign style sweep)
    Metric("style_acc", "style_acc", True, "style accuracy of generated captions"),
    Metric("wr_logp", "WR-LogP", True, "WR-LogP (mean per-token log-prob)"),
    Metric("wr_logp_sum", "WR-LogP_sum", True, "WR-LogP (summed log-prob)"),
    Metric("styled_faithful", "styled_faithful", True, "styled and faithful: in the style, every object with its colour, no wrong mention"),
    Metric("distinct_frames", "distinct_frames", True, "distinct style frames per caption (shapes world; object phrases masked)"),
]
METRICS: dict[str, Metric] = {m.name: m for m in _ALL}

# the study's table, summary and report, in this order (judge, words and the degeneracy shares where the recipe evaluates them)
STUDY_METRICS = ("BLEU4", "ROUGE_L", "CIDEr", "precision_name", "recall_name", "recall_attr", "chair_i_name", "chair_i_attr", "chair_s_attr",
                 "judge", "words", "nonword", "distinct")


def get(name: str) -> Metric:
    return METRICS.get(name) or Metric(name, name, False if name.startswith("chair_") else True)


def label(name: str) -> str:
    return get(name).label


def higher_is_better(name: str) -> bool | None:
    return get(name).higher_is_better


def lower_is_better(name: str) -> bool:
    return get(name).higher_is_better is False
