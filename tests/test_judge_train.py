"""The nano judge of the shapes world: grades match the injected errors, a few training steps on tiny
settings, and the trained folder scored through the same path as a hub judge."""

import io
import json
import random

import pytest
import torch
from PIL import Image

from capalign.cli import main
from capalign.data import shapes
from capalign.data.shapes import CORRUPTIONS, Scene, ShapeObject, corrupt, factual_captions, scene_from_objects
from capalign.judge.train import (
    NANO_PROMPT,
    SOURCES,
    JudgeTrainConfig,
    candidate,
    errors,
    examples,
    grade_of,
    image_expansion,
    judge_loss,
    training_inputs,
    web_grade,
)
from capalign.metrics.judge import LETTERS, Judge, fill

pytestmark = pytest.mark.usefixtures("one_thread")
BOX = (0.0, 0.0, 0.0, 0.0)


def scene(*objs):
    return Scene(tuple(ShapeObject(*o, BOX) for o in objs))


TRUTH = scene(("circle", "red", "small", "left"), ("square", "blue", "large", "right"))


@pytest.mark.parametrize("said,n,grade", [
    (TRUTH, 0, "A"),
    (scene(("circle", "green", "small", "left"), ("square", "blue", "large", "right")), 1, "B"),  # colour
    (scene(("circle", "red", "small", "middle"), ("square", "blue", "large", "right")), 1, "B"),  # moved
    (scene(("square", "blue", "large", "right"),), 1, "B"),  # dropped
    (scene(("circle", "red", "small", "left"), ("star", "red", "small", "middle"), ("square", "blue", "large", "right")), 1, "B"),  # invented
    (scene(("circle", "red", "large", "left"), ("square", "blue", "small", "right")), 2, "D"),  # two sizes: still names true objects
    (scene(("diamond", "green", "small", "left"), ("triangle", "blue", "large", "right")), 3, "E"),  # shape+colour, shape: no true object named
    # another image: as the square it differs in shape, colour, cell (3) + circle dropped (1) = 4; drop both, invent it = 3
    (scene(("triangle", "yellow", "large", "middle"),), 3, "E"),
    (scene(("circle", "red", "large", "middle"),), 3, "D"),  # circle resized and moved (2) + square dropped (1); names the red circle
])
def test_grades_by_hand(said, n, grade):
    assert errors(TRUTH, said) == n and grade_of(TRUTH, said) == (grade, n)


def test_one_injected_error_is_one_error_of_every_kind():
    rows = [shapes.make_example(0, i, 48, "train")[0] for i in range(60)]
    rng = random.Random(1)
    seen = set()
    for r in rows:
        truth = scene_from_objects(r["objects"])
        for kind in CORRUPTIONS:
            bad = corrupt(truth, kind, rng)
            if bad is not None:
                seen.add(kind)
                assert grade_of(truth, bad) == ("B", 1), (kind, truth, bad)
    assert seen == set(CORRUPTIONS)


def test_candidates_match_their_sources():
    rows = [shapes.make_example(0, i, 48, "train")[0] for i in range(80)]
    ex = examples(rows, random.Random(0))
    assert len(ex) == len(rows) * len(SOURCES)
    for e in ex:
        row = rows[e["image"]]
        assert e["reference"] == row["captions"][0]
        if e["source"] == "correct":
            assert e["grade"] == "A" and e["caption"] in factual_captions(scene_from_objects(row["objects"]))
        elif e["source"] == "web":
            assert e["grade"] == "C" and e["caption"] in row["captions_web"]
        elif e["source"] == "one_error":
            assert (e["grade"], e["errors"]) == ("B", 1)
        else:  # several errors or another image: the grade follows the error count and the identity rule
            assert e["grade"] == ("AB"[e["errors"]] if e["errors"] < 2 else e["grade"]) and (e["errors"] >= 2) == (e["grade"] in "DE")
    counts = {L: sum(e["grade"] == L for e in ex) for L in LETTERS}
    assert min(counts.values()) >= 0.1 * len(ex)  # every grade is well represented
    # "from left to right" (no cells) is never a candidate for a scene of 2-3 objects
    assert not any(e["caption"].startswith("from left to right") for e in ex if len(rows[e["image"]]["objects"]) > 1)
    # the same seed gives the same data
    assert examples(rows, random.Random(0)) == ex
    with pytest.raises(ValueError, match="unknown source"):
        candidate(rows[0], "funny", random.Random(0))


OBJS = [{"name": "triangle", "attributes": ["purple", "large"]}, {"name": "circle", "attributes": ["red", "small"]}]


@pytest.mark.parametrize("caption,grade", [
    ("so aesthetic", "E"), ("stock photo", "E"), ("IMG_7186.jpg", "E"), ("ITAP of a shape", "E"),  # nothing of the image
    ("nice square", "E"),                                    # names a shape the image does not have
    ("a purple triangle", "C"), ("look at this large triangle", "C"), ("circle clipart png", "C"), ("red circle on grey background", "C"),
    ("my red triangle :)", "D"),                             # the image's shape, a wrong colour
    ("a purple triangle and a blue square", "D"),            # one true object, one that is not there
])
def test_web_grade_by_hand(caption, grade):
    assert web_grade(caption, OBJS) == grade


def test_web_candidates_graded_by_content():
    """--web_grading content: every web candidate's grade is web_grade of its caption, all three grades occur, and the
    other sources and the random stream are those of --web_grading fixed."""
    rows = [shapes.make_example(0, i, 48, "train")[0] for i in range(80)]
    fixed, content = examples(rows, random.Random(0)), examples(rows, random.Random(0), web_grading="content")
    assert [{**e, "grade": None} for e in fixed] == [{**e, "grade": None} for e in content]
    web = [e for e in content if e["source"] == "web"]
    assert all(e["grade"] == web_grade(e["caption"], rows[e["image"]]["objects"]) for e in web)
    assert {e["grade"] for e in web} == {"C", "D", "E"}
    assert all(a == b for a, b in zip(fixed, content) if a["source"] != "web")
    with pytest.raises(ValueError, match="unknown web_grading"):
        JudgeTrainConfig(web_grading="loose")


TINY = ["--n_train", "12", "--n_val", "3", "--steps", "4", "--batch_size", "6", "--image_size", "48", "--vision_width", "32",
        "--vision_layers", "1", "--text_width", "32", "--text_layers", "1", "--vocab_size", "320", "--eval_batch_size", "7"]


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    out = tmp_path_factory.mktemp("nano_judge")
    assert main(["judge", "train", "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_a_judge_folder(tiny_judge, capsys):
    meta = json.loads((tiny_judge / "judge.json").read_text())
    assert meta["prompt"] == NANO_PROMPT and set(meta["grade_mapping"]) == set(LETTERS)
    assert meta["web_grading"] == JudgeTrainConfig().web_grading  # how its web-style candidates were graded
    res = json.loads((tiny_judge / "judge_result.json").read_text())
    val = res["val"]
    assert res["steps"] == 4 and val["n"] == 3 * len(SOURCES)
    matrix = val["confusion"]["matrix"]
    assert sum(map(sum, matrix)) == val["n"] and [sum(r) for r in matrix] == [val["true_grade_counts"][L] for L in LETTERS]
    assert val["exact"] == pytest.approx(sum(matrix[i][i] for i in range(5)) / val["n"])
    assert val["within_one"] == pytest.approx(sum(matrix[i][j] for i in range(5) for j in range(5) if abs(i - j) <= 1) / val["n"])
    assert (tiny_judge / "judge_config.json").is_file()


def test_trained_judge_scores_like_a_hub_judge(tiny_judge, tmp_path):
    judge = Judge.load(str(tiny_judge), device="cpu")
    assert judge.prompt == NANO_PROMPT  # from judge.json
    row, png = shapes.make_example(0, 0, 48, "val")
    im = Image.open(io.BytesIO(png)).convert("RGB")
    caps = [row["captions"][0], row["captions_web"][0]]
    res = judge.score([im, im], caps, [row["captions"]] * 2)
    assert all(0 <= s <= 1 for s in res.scores) and all(abs(sum(p) - 1) < 1e-9 for p in res.probs)
    # training tokenizes prompt + letter exactly as scoring tokenizes the prompt
    kw = training_inputs(judge, image_expansion(judge.vlm, im), [row["captions"][0]] * 2, caps, [7, 8])
    enc = judge.vlm.encode_samples([im], [fill(NANO_PROMPT, row["captions"][0], c) for c in caps], [0, 0])
    assert torch.equal(kw["input_ids"][:, :-1], enc.inputs["input_ids"]) and kw["labels"][:, -1].tolist() == [7, 8]
    assert (kw["labels"][:, :-1] == -100).all()
    # the training loss: the letter's cross-entropy + the text tokens' next-token loss, each as transformers computes it
    text = kw["text_labels"]
    assert (text[kw["input_ids"] == judge.vlm.tokenizer.convert_tokens_to_ids("<image>")] == -100).all() and (text[:, -5:] != -100).all()
    batch = {**kw, "pixel_values": judge.vlm.processor.image_processor([[im], [im]], return_tensors="pt")["pixel_values"]}
    plain = {k: v for k, v in batch.items() if k not in ("labels", "text_labels")}
    with torch.no_grad():
        letter, lm = judge.vlm.model(**plain, labels=kw["labels"]).loss, judge.vlm.model(**plain, labels=text).loss
        assert judge_loss(judge.vlm.model, batch, 0.0) == pytest.approx(letter.item(), rel=1e-5)
        assert judge_loss(judge.vlm.model, batch, 0.5) == pytest.approx(letter.item() + 0.5 * lm.item(), rel=1e-5)
    # and the CLI scores a shapes manifest with it
    shapes.write_dataset(tmp_path / "d", 3, seed=0, image_size=48, split="val")
    pred = tmp_path / "p.jsonl"
    pred.write_text("".join(json.dumps({"id": f"val-{i:06d}", "caption": "a small red circle."}) + "\n" for i in range(3)))
    assert main(["judge", "--judge", str(tiny_judge), "--pred", str(pred), "--refs", str(tmp_path / "d" / "manifest.jsonl"),
                 "--out", str(tmp_path / "s.json"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["systems"]["p"]["counts"]["judge_scored"] == 3


def test_config_errors():
    with pytest.raises(ValueError, match="prompt lacks the {caption} placeholder"):
        JudgeTrainConfig(prompt="reference: {reference}")
    assert main(["judge", "train", "--n_train", "1"]) == 2


# ------------------------------------------------------------------ degenerate candidates (issue 17)

def test_degenerate_candidates_are_graded_e_as_built():
    from capalign.judge.candidates import KINDS
    from capalign.judge.train import degenerate_candidate, degenerate_examples, phrasings
    from capalign.metrics.degenerate import degeneracy

    rows = [shapes.make_example(0, i, 48, "train")[0] for i in range(40)]
    ex = degenerate_examples(rows, random.Random(0))
    assert len(ex) == len(rows) * len(KINDS) and {e["grade"] for e in ex} == {"E"}
    assert [e["source"] for e in ex[: len(KINDS)]] == [f"degenerate/{k}" for k in KINDS]
    for e in ex:
        row, kind = rows[e["image"]], e["source"].split("/")[1]
        truth = scene_from_objects(row["objects"])
        flags = degeneracy([e["caption"]], "shapes")["per_caption"][0]
        assert flags["empty"] == (kind == "empty") and (flags["nonword"] if kind in ("nonword", "char_noise") else True), e
        assert flags["repeat"] or kind != "repeat", e
        if kind == "unrelated_image":  # a factual caption of another row that names no true object: E by the content rule too
            said = [r for r in rows if r is not row and e["caption"] in phrasings(scene_from_objects(r["objects"]))]
            assert said and all(grade_of(truth, scene_from_objects(r["objects"]))[0] == "E" for r in said), e
        if kind == "garbage_tail":
            assert any(e["caption"].startswith(p + " ") for p in phrasings(truth)), e
    assert degenerate_examples(rows, random.Random(0)) == ex  # seeded
    with pytest.raises(ValueError, match="unknown degenerate kind"):
        degenerate_candidate(rows[0], "funny", random.Random(0), rows)


def test_train_measures_ordinary_and_degenerate_candidates(tiny_judge):
    from capalign.judge.candidates import KINDS

    res = json.loads((tiny_judge / "judge_result.json").read_text())
    d = res["val_degenerate"]
    assert d["n"] == 3 * len(KINDS) and d["true_grade_counts"] == {"A": 0, "B": 0, "C": 0, "D": 0, "E": d["n"]}
    assert set(d["mean_score_by_source"]) == {f"degenerate/{k}" for k in KINDS}
    assert d["exact"] == pytest.approx(d["confusion"]["matrix"][4][4] / d["n"])
    assert res["val"]["n"] == 3 * len(SOURCES)  # the ordinary set is unchanged: every earlier judge was measured on it


def test_calibrate_summary_by_hand():
    from capalign.judge.calibrate import summarize

    cands = [{"kind": "reference", "group": "reference", "expected": "A", "score": s, "letter": L} for s, L in ((1.0, "A"), (0.5, "C"))]
    cands += [{"kind": "nonword", "group": "degenerate", "expected": "E", "score": s, "letter": L} for s, L in ((0.5, "C"), (0.0, "E"), (0.25, "D"), (0.25, "D"))]
    k = summarize(cands)
    assert k["reference"]["mean_score"] == 0.75 and k["reference"]["letters"]["A"] == 0.5 and k["reference"]["as_expected"] == 0.5
    assert k["nonword"]["mean_score"] == 0.25 and k["nonword"]["fooled"] and not k["reference"]["fooled"]  # 0.25 >= FOOLED_SCORE
    assert k["nonword"]["letters"] == {"A": 0, "B": 0, "C": 0.25, "D": 0.5, "E": 0.25} and k["nonword"]["as_expected"] == 0.25


def test_calibrate_grades_every_kind(tiny_judge, tmp_path, capsys):
    from capalign.judge.candidates import KINDS

    data = shapes.write_dataset(tmp_path / "d", 4, seed=0, image_size=48, split="val")
    out = tmp_path / "cal.json"
    assert main(["judge", "calibrate", "--judge", str(tiny_judge), "--refs", str(data / "manifest.jsonl"), "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res["kinds"]) == ["reference", *SOURCES, *KINDS] and res["images"] == 4
    for kind, k in res["kinds"].items():
        cs = [c for c in res["candidates"] if c["kind"] == kind]
        assert k["n"] == len(cs) == 4 and k["mean_score"] == pytest.approx(sum(c["score"] for c in cs) / 4)
        assert sum(k["letters"].values()) == pytest.approx(1.0) and k["fooled"] == (k["group"] == "degenerate" and k["mean_score"] >= 0.25)
        if k["group"] == "degenerate":
            assert {c["expected"] for c in cs} == {"E"}
    assert all(c["expected"] == "A" and c["caption"] == c["reference"] for c in res["candidates"] if c["kind"] == "reference")
    # the tiny judge has learnt nothing: every degenerate kind fools it, and one warning line says so
    err = " ".join(capsys.readouterr().err.split())
    assert res["fooled"] and err.count("warning: the judge can be fooled: ") == 1

    # references that are not shapes-world rows: the second caption is the ordinary candidate
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"id": f"val-{i:06d}", "captions": ["a dog on a sofa", "a brown dog resting"], "image": f"d/images/val-{i:06d}.png"}) + "\n"
                            for i in range(3)))
    assert main(["judge", "calibrate", "--judge", str(tiny_judge), "--refs", str(refs), "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res["kinds"]) == ["reference", "other_reference", *KINDS]
    assert [c["caption"] for c in res["candidates"] if c["kind"] == "unrelated_image"] == ["a dog on a sofa"] * 3
