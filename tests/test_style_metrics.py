"""Style measures (capalign.metrics.style): WR-LogP recomputed by hand from the model's logits on tiny
Idefics3 and Qwen2-VL checkpoints, the style classifier (fixed split, save/load, HF classifiers, wrong
styles), style accuracy and content kept, and the CLI paths (`style classifier`, `style wrlogp`,
`evaluate --metrics style`)."""

import json

import pytest
import torch

from capalign import CapalignError
from capalign.cli import main
from capalign.data.pairs import Pair
from capalign.data.preferences import open_preferences
from capalign.data.style_fixtures import write_flickrstyle
from capalign.metrics.style import classifier_data, content_kept, style_accuracy, wr_logp
from capalign.metrics.style_classifier import StyleClassifier, load_classifier, resolve_encoder
from capalign.style.config import DEFAULT_PROMPT

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- WR-LogP
def _by_hand(vlm, image, prompt, caption):
    """(sum, mean) of log p(caption tokens + end token | image, prompt) from one plain forward with pixels."""
    inp = dict(vlm.processor(text=vlm.prompt_texts(1, vlm.prompt if prompt is None else prompt),
                             images=vlm.processor_images([image]), return_tensors="pt"))
    ids = torch.tensor([vlm.tokenizer(caption, add_special_tokens=False)["input_ids"] + [vlm.eos_ids[0]]])
    T = inp["input_ids"].shape[1]
    inp["input_ids"] = torch.cat([inp["input_ids"], ids], 1)
    inp["attention_mask"] = torch.cat([inp["attention_mask"], torch.ones_like(ids)], 1)
    if "mm_token_type_ids" in inp:
        inp["mm_token_type_ids"] = torch.cat([inp["mm_token_type_ids"], torch.zeros_like(ids)], 1)
    with torch.no_grad():
        logits = vlm.model(**inp).logits[0, T - 1 : -1].float()
    lp = torch.log_softmax(logits, -1)[torch.arange(ids.shape[1]), ids[0]]
    return float(lp.sum()), float(lp.mean())


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_wr_logp_by_hand(family, request):
    from capalign.models import load_vlm

    path = request.getfixturevalue({"idefics3": "tiny_idefics3_path", "qwen2_vl": "tiny_qwen2_vl_path"}[family])
    vlm = load_vlm(str(path), device="cpu")
    prefs = open_preferences("shapes:12", seed=0)
    pairs = prefs.train[:5] + prefs.test[:2]  # train[0] and train[1] share an image (both styles of a scene)
    assert pairs[0].group == pairs[1].group
    pairs.append(Pair("other-prompt", pairs[2].image, "Describe.", pairs[2].chosen, pairs[2].rejected, "humorous", group=pairs[2].group))
    pairs.append(Pair("broken", b"not an image", None, "a joke", "a fact", "humorous", group="broken"))
    encoded = []
    orig = vlm.encode
    vlm.encode = lambda images, prompt=None, **kw: encoded.append(len(images)) or orig(images, prompt, **kw)
    r = wr_logp(vlm, pairs, batch_size=4)
    groups = {(p.prompt, p.group, i // 4) for i, p in enumerate(pairs[:8])}  # distinct images per prompt and batch
    assert sum(encoded) == len(groups) == 5 and r["n"] == 8 and r["skipped"][0][0] == "broken"
    wins = {"mean": 0, "sum": 0}
    for p, row in zip(pairs, r["per_pair"]):
        img = p.load_image()
        cs, cm = _by_hand(vlm, img, p.prompt, p.chosen)
        rs, rm = _by_hand(vlm, img, p.prompt, p.rejected)
        assert row["id"] == p.id
        assert row["chosen_sum"] == pytest.approx(cs, abs=2e-4) and row["rejected_sum"] == pytest.approx(rs, abs=2e-4)
        assert row["chosen_mean"] == pytest.approx(cm, abs=1e-5) and row["rejected_mean"] == pytest.approx(rm, abs=1e-5)
        wins["mean"] += cm > rm
        wins["sum"] += cs > rs
    assert r["wr_logp"] == wins["mean"] / 8 and r["wr_logp_sum"] == wins["sum"] / 8
    # the prompt matters: the same pair under another prompt scores differently
    assert r["per_pair"][-1]["chosen_sum"] != r["per_pair"][2]["chosen_sum"]


# ---------------------------------------------------------------- the style classifier
@pytest.fixture(scope="module")
def shapes_clf(tmp_path_factory):
    prefs = open_preferences("shapes:60", seed=0)  # 48 train images, 12 test images with held-out templates
    x, y = classifier_data(prefs.train)
    clf = StyleClassifier.fit(x, y)
    tx, ty = classifier_data(prefs.test)
    clf.heldout = clf.evaluate(tx, ty, data="shapes:60 test split")
    out = clf.save_pretrained(tmp_path_factory.mktemp("clf") / "shapes")
    return clf, out, (tx, ty)


def test_classifier_on_held_out_templates(shapes_clf):
    clf, out, (tx, ty) = shapes_clf
    h = clf.heldout
    assert clf.labels == ["factual", "humorous", "romantic"] and h["n"] == len(tx) >= 40
    assert h["accuracy"] >= 0.9, h  # unseen frames, openers and closers; measured 1.0 (docs/style.md)
    assert sum(map(sum, h["confusion"])) == h["n"] and sum(h["confusion"][i][i] for i in range(3)) == round(h["accuracy"] * h["n"])
    loaded = load_classifier(out)
    assert loaded.predict(tx) == clf.predict(tx) and loaded.heldout == json.loads(json.dumps(h))
    assert json.loads((out / "config.json").read_text())["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(CapalignError, match="trained on factual, humorous, romantic; it cannot measure 'sarcastic'"):
        loaded.require("sarcastic")


def test_style_accuracy_and_content_kept(shapes_clf):
    clf, _, _ = shapes_clf
    prefs = open_preferences("shapes:60", "humorous", seed=0)
    test = prefs.test
    caps = [p.chosen for p in test[:6]] + [p.rejected for p in test[6:10]] + ["", "lol"]
    r = style_accuracy(caps, "humorous", clf)
    pred = clf.predict(caps[:10])
    assert r["per_caption"][:10] == pred and r["per_caption"][10:] == [None, clf.predict(["lol"])[0]]
    assert r["style_accuracy"] == sum(p == "humorous" for p in r["per_caption"]) / 12 and r["empty"] == 1
    assert r["classifier"]["heldout_accuracy"] == clf.heldout["accuracy"] and r["classifier"]["heldout_confusion"]
    k = content_kept([p.chosen for p in test] + ["lol"] * 2, test + test[:2])
    assert k["grounding"]["attr"]["chair_i"] == 0.0 and k["grounding"]["n"] == len(test) + 2
    per_object = content_kept([p.chosen for p in test], test)["grounding"]["attr"]["recall"]
    assert per_object == 1.0 and k["grounding"]["attr"]["recall"] < 1.0
    minilm = resolve_encoder("minilm")
    b = content_kept(["a small red circle", ""], [test[0], test[1]], bertscore_model=minilm, num_layers=6)
    from capalign.metrics.bertscore import bert_score

    ref = bert_score(["a small red circle", ""], [test[0].references, test[1].references], model=minilm, num_layers=6)
    assert b["bertscore_per_caption"] == ref["F"] and b["bertscore_f1"] == ref["F_mean"] and ref["F"][1] == 0.0


def test_hf_sequence_classifier(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    minilm = resolve_encoder("minilm")
    tok = AutoTokenizer.from_pretrained(minilm)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32, num_labels=2, id2label={0: "factual", 1: "Humorous"},
                                                     label2id={"factual": 0, "Humorous": 1}))
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    clf = load_classifier(tmp_path / "hf")
    texts = ["a dog", "a dog walks into a bar, lol", "two cats", "a clown", "a red circle"]
    b = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = [["factual", "humorous"][i] for i in model.eval()(**b).logits.argmax(-1).tolist()]
    assert clf.labels == ["factual", "humorous"] and clf.predict(texts) == want
    assert style_accuracy(texts, "humorous", clf)["style_accuracy"] == want.count("humorous") / 5
    with pytest.raises(CapalignError, match="cannot measure 'romantic'"):
        style_accuracy(texts, "romantic", clf)
    (tmp_path / "notclf").mkdir()
    (tmp_path / "notclf" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(CapalignError, match="neither a capalign style classifier"):
        load_classifier(tmp_path / "notclf")


# ---------------------------------------------------------------- command line
def _errors(capsys):
    err = capsys.readouterr().err
    return [l for l in err.splitlines() if l.startswith("error")], err


def test_cli_classifier_evaluate_and_wrlogp(tmp_path, capsys, tiny_idefics3_path):
    root = write_flickrstyle(tmp_path / "fs")
    assert main(["style", "classifier", "--data", str(root), "--out", str(tmp_path / "clf"), "--styles", "humorous"]) == 0
    cfg = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert cfg["labels"] == ["factual", "humorous"] and cfg["heldout"]["n"] == 12 and (tmp_path / "clf" / "model.safetensors").is_file()
    assert main(["style", "classifier", "--data", str(root), "--classifier", str(tmp_path / "clf"), "--styles", "humorous"]) == 0
    assert f"held-out accuracy {cfg['heldout']['accuracy']:.3f} on" in capsys.readouterr().err  # 0-1, as every score
    # a classifier trained on other styles than asked: one line, exit 2
    assert main(["style", "classifier", "--data", str(root), "--classifier", str(tmp_path / "clf")]) == 2
    lines, err = _errors(capsys)
    assert len(lines) == 1 and "cannot measure 'romantic'" in lines[0] and "Traceback" not in err

    prefs = open_preferences(str(root), "humorous")
    preds = [{"id": p.group, "caption": p.chosen} for p in prefs.test]
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preds))
    (tmp_path / "refs.jsonl").write_text("".join(json.dumps({"id": p.group, "captions": p.references}) + "\n" for p in prefs.test))
    args = ["evaluate", "--pred", str(tmp_path / "pred.jsonl"), "--refs", str(tmp_path / "refs.jsonl"), "--metrics", "bleu,style",
            "--style_classifier", str(tmp_path / "clf"), "--out", str(tmp_path / "ev.json")]
    assert main(args + ["--style", "humorous"]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    clf = load_classifier(tmp_path / "clf")
    assert ev["systems"]["pred"]["corpus"]["style_accuracy"] == clf.predict([p["caption"] for p in preds]).count("humorous") / len(preds)
    assert f"held-out accuracy {cfg['heldout']['accuracy']}" in ev["definitions"]["style_accuracy"]
    assert main(args + ["--style", "romantic"]) == 2
    lines, err = _errors(capsys)
    assert len(lines) == 1 and "cannot measure 'romantic'" in lines[0] and "Traceback" not in err
    assert main(args[:-2] + ["--style", ""]) == 2
    lines, _ = _errors(capsys)
    assert len(lines) == 1 and "needs --style" in lines[0]

    out = tmp_path / "wr.json"
    assert main(["style", "wrlogp", "--model", str(tiny_idefics3_path), "--data", str(root), "--style", "romantic",
                 "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())["results"]["base"]
    from capalign.models import load_vlm

    direct = wr_logp(load_vlm(str(tiny_idefics3_path), device="cpu"), open_preferences(str(root), "romantic").test)
    assert r["n"] == 6 and r["wr_logp"] == direct["wr_logp"] and r["wr_logp_sum"] == direct["wr_logp_sum"]


def test_cli_wrlogp_with_adapter_measures_base_beside_it(tmp_path, tiny_qwen2_vl_path):
    from peft import get_peft_model

    from capalign.models import load_vlm
    from capalign.training.lora import lora_config

    tuned = load_vlm(str(tiny_qwen2_vl_path), device="cpu")
    peft_model = get_peft_model(tuned.model, lora_config(tuned, r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "wr.json"
    assert main(["style", "wrlogp", "--model", str(tiny_qwen2_vl_path), "--adapter", str(tmp_path / "adapter"), "--data", "shapes:10",
                 "--style", "romantic", "--device", "cpu", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    res = written["results"]
    assert written["prompt"] == DEFAULT_PROMPT.replace("{style}", "romantic")  # no --prompt, no recorded prompt: style train's default
    test = open_preferences("shapes:10", "romantic", prompt=written["prompt"]).test
    base = wr_logp(load_vlm(str(tiny_qwen2_vl_path), device="cpu"), test)
    assert [r["chosen_sum"] for r in res["base"]["per_pair"]] == pytest.approx([r["chosen_sum"] for r in base["per_pair"]], abs=1e-5)
    lora = wr_logp(tuned, test)  # the in-memory adapted model
    assert [r["chosen_sum"] for r in res["adapter"]["per_pair"]] == pytest.approx([r["chosen_sum"] for r in lora["per_pair"]], abs=1e-4)
    assert [r["chosen_sum"] for r in lora["per_pair"]] != pytest.approx([r["chosen_sum"] for r in base["per_pair"]], abs=1e-2)
