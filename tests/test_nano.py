"""The nano captioner's accuracy bar: clean mode reaches >= 90% exact captions on held-out images
after its default fixed number of steps (no clock: the same model on a busy or an idle machine), and
the saved folder loads like a hub checkpoint. How fast that is: benchmarks/nano_speed.py."""

import json

import pytest

from capalign.cli import main
from capalign.models import load_vlm
from capalign.nano.train import exact_match


def test_exact_match_normalises_only_case_and_spaces():
    assert exact_match("A small red  circle on the left.", ["a small red circle on the left."])
    assert not exact_match("a small red circle on the left", ["a small red circle on the left."])
    assert not exact_match("a large red circle on the left.", ["a small red circle on the left."])


@pytest.mark.slow
def test_nano_clean_reaches_90_percent_exact_after_default_steps(tmp_path):
    out = tmp_path / "nano"
    assert main(["nano", "train", "--out", str(out), "--mode", "clean"]) == 0
    result = json.loads((out / "nano_result.json").read_text())
    assert result["steps"] == 3000
    assert result["val_exact"] >= 0.90, result["samples"][:5]  # the bar, on 200 held-out images
    # the folder is a checkpoint load_vlm understands, and greedy captions reproduce the recorded ones
    vlm = load_vlm(str(out), device="cpu")
    from capalign.nano.train import _examples

    val = _examples(0, 5, "val", result["image_size"])
    caps = vlm.generate_captions([im for _, im in val], max_new_tokens=40)
    assert caps == [s["caption"] for s in result["samples"][:5]]


def test_styled_mode_mixes_held_in_styles_into_factual_captions():
    """--mode styled: about styled_fraction of the training captions are humorous or romantic, in held-in phrasings only
    (the style study's test split keeps unseen phrasings); the rest are the canonical factual caption."""
    import random
    import re

    from capalign.data.shapes_style import FRAMES
    from capalign.nano.train import NanoTrainConfig, _examples, _pick_caption

    rows = [r for r, _ in _examples(0, 40, "train", 32)]
    rng = random.Random(0)
    caps = [(r, _pick_caption(r, NanoTrainConfig(mode="styled", styled_fraction=0.3), rng)) for r in rows * 25]
    styled = [c for r, c in caps if c != r["captions"][0]]
    assert 0.25 < len(styled) / len(caps) < 0.35

    def frame_re(frame):  # a frame as a regex: {all} and [one|many] become wildcards
        return re.compile(".*".join(re.escape(x) for x in re.split(r"\{all\}|\[[^\]]*\]", frame)))

    for style in ("humorous", "romantic"):
        held_in = [frame_re(f) for f in FRAMES[style]["in"]]
        mine = [c for c in styled if any(p.search(c) for p in held_in)]
        assert len(mine) > 0.3 * len(styled)  # both styles appear
    assert not any(p.search(c) for c in styled for s in ("humorous", "romantic") for p in (frame_re(f) for f in FRAMES[s]["out"]))
    assert all(c == r["captions"][0] for r, c in caps if c not in styled)
