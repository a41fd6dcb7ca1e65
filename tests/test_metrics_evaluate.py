"""`capalign evaluate` end to end and grounding numbers."""

import json

import pytest

from capalign.cli import main
from capalign.metrics.grounding import grounding, mentions, vocabulary


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_grounding_counts():
    objs = [[{"name": "circle", "attributes": ["red", "small"]}, {"name": "square", "attributes": ["blue"]}],
            ["green triangle"]]
    preds = ["a small red circle and a blue square", "two blue circles next to a triangle"]
    g = grounding(preds, objs)
    # caption 1: both mentions grounded at both levels; caption 2: circles hallucinated, triangle ok (name);
    # at attribute level the triangle has no stated colour so it is grounded.
    assert g["name"]["precision"] == pytest.approx(3 / 4)
    assert g["name"]["chair_i"] == pytest.approx(1 / 4)
    assert g["name"]["chair_s"] == pytest.approx(1 / 2)
    assert g["name"]["recall"] == pytest.approx(3 / 3)
    g2 = grounding(["a blue circle and a green triangle"], [["red circle", "green triangle"]])
    assert g2["name"]["chair_i"] == 0.0 and g2["attr"]["chair_i"] == pytest.approx(0.5)
    assert g2["attr"]["chair_s"] == 1.0 and g2["attr"]["recall"] == pytest.approx(0.5)
    nouns, attrs = vocabulary(objs)
    assert mentions("Two large purple rings.", nouns, attrs) == [("circle", frozenset({"large", "purple"}))]


@pytest.fixture
def files(tmp_path):
    refs = _jsonl(tmp_path / "refs.jsonl", [
        {"id": "1", "captions": ["a red circle", "one red circle"], "objects": [{"name": "circle", "attributes": ["red"]}], "image": "1.png"},
        {"id": "2", "captions": ["a blue square and a green triangle"], "objects": ["blue square", "green triangle"]},
        {"id": "3", "captions": ["a yellow star"], "objects": ["yellow star"]},
    ])
    a = _jsonl(tmp_path / "sysA.jsonl", [{"id": "1", "caption": "a red circle"}, {"id": "2", "caption": "a blue square and a green triangle"},
                                         {"id": "3", "caption": "a yellow star"}])
    b = _jsonl(tmp_path / "sysB.jsonl", [{"id": "1", "caption": "a blue circle"}, {"id": "2", "caption": ""},
                                         {"id": "9", "caption": "no refs for me"}])
    return tmp_path, refs, a, b


def test_cli_two_systems(files, capsys):
    tmp, refs, a, b = files
    out = tmp / "res.json"
    assert main(["evaluate", "--pred", a, b, "--refs", refs, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    A, B = data["systems"]["sysA"], data["systems"]["sysB"]
    assert A["corpus"]["BLEU1"] == pytest.approx(1.0, abs=1e-6) and A["corpus"]["ROUGE_L"] == pytest.approx(1.0)
    assert A["corpus"]["chair_i_attr"] == 0.0 and A["corpus"]["recall_name"] == 1.0
    assert B["counts"] == {"predictions": 3, "empty_predictions": 1, "no_reference": 1,
                           "refs_without_prediction": 1, "scored": 2, "with_objects": 2}
    assert B["per_caption"]["id"] == ["1", "2"] and B["per_caption"]["ROUGE_L"][1] == 0.0
    assert B["corpus"]["chair_i_name"] == 0.0 and B["corpus"]["chair_i_attr"] == 1.0  # "blue circle" vs red circle
    assert (tmp / "res.json.config.json").is_file()
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "sysB" in err and "1 empty predictions" in err and "1 predictions without references" in err


def test_cli_errors(files, capsys):
    tmp, refs, a, b = files
    assert main(["evaluate", "--pred", str(tmp / "missing.jsonl"), "--refs", refs]) == 2
    assert "predictions file not found" in capsys.readouterr().err
    assert main(["evaluate", "--pred", a, "--refs", refs, "--metrics", "bleu,meteor"]) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert main(["evaluate", "--pred", a, "--refs", refs, "--metrics", "bertscore", "--bertscore_model", str(tmp / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: bertscore needs model") and "--bertscore_model" in err[-1]
    other = _jsonl(tmp / "other.jsonl", [{"id": "x", "caption": "hi"}])
    assert main(["evaluate", "--pred", other, "--refs", refs]) == 2
    assert "no prediction id matches" in capsys.readouterr().err


def test_terminal_tables_fit_80_columns_on_the_json_scale_with_coverage(files, capsys):
    """Issue 21, item 6: the table printed x100 scores (JSON, summary and report are 0-1), ran past 80 columns, and
    said only in the JSON that grounding covered some captions; `--metrics BLEU` (its own column name) was refused."""
    tmp, refs, a, b = files
    rows = [json.loads(ln) for ln in open(refs)]
    rows[1].pop("objects"), rows[2].pop("objects")  # grounding can score 1 caption of sysA's 3
    refs = _jsonl(tmp / "refs1.jsonl", rows)
    long_name = _jsonl(tmp / "a_system_with_a_rather_long_name.jsonl", [json.loads(ln) for ln in open(a)])
    out = tmp / "res.json"
    capsys.readouterr()
    assert main(["evaluate", "--pred", a, b, long_name, "--refs", refs, "--out", str(out),
                 "--metrics", "BLEU,ROUGE-L,Cider,GROUNDING,length"]) == 0
    err = capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["metrics"] == ["bleu", "rouge", "cider", "grounding", "length"]
    lines = err.splitlines()
    assert max(len(ln.rstrip()) for ln in lines) <= 80, max(lines, key=len)
    table = [ln.split() for ln in lines]
    for system in ("sysA", "sysB"):
        mine = [w for w in table if w and w[0] == system]  # one row per table it appears in
        shown = [x for row in mine for x in row[1:]]
        corpus, counts = data["systems"][system]["corpus"], data["systems"][system]["counts"]
        for key in ("BLEU1", "BLEU4", "ROUGE_L", "CIDEr", "precision_name", "chair_i_attr"):
            assert f"{corpus[key]:.3f}" in shown, (system, key, shown)  # 0-1, as the JSON: 1.000, never 100.00
        assert f"{corpus['words']:.1f}" in shown
        assert " ".join(shown).count(f"{counts['with_objects']} of {counts['scored']}") == 2  # both grounding tables
    assert "1.000" in [w for w in table if w and w[0] == "sysA"][0] and "100.00" not in err
    assert any(w[:1] == ["a_system_with_a_"] for w in table)  # a long name folds instead of widening the table


@pytest.mark.parametrize("spec,names", [("BLEU", ["bleu"]), ("bleu4,ROUGE-L,CIDEr-D", ["bleu", "rouge", "cider"]), ("CHAIRi,words", ["grounding", "length"])])
def test_metric_names_are_case_insensitive_and_take_table_labels(spec, names):
    from capalign.metrics.evaluate import metric_names

    assert metric_names(spec) == names
    with pytest.raises(ValueError, match="unknown metric"):
        metric_names(spec + ",meteor")
