"""`capalign rl train` on tiny random Idefics3 and Qwen2-VL: TRL's GRPO step with one vision pass per image.

Random tiny models score 0 CIDEr on every caption (no gradient), so most tests use a custom reward
with spread: the number of distinct characters of a caption.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors.torch import load_file

from capalign import CapalignError
from capalign.data.shapes import write_dataset
from capalign.rl.train import RLTrainConfig, build_trainer, checked, reward_parts, run

G, B = 3, 2  # samples per image, images per step


def chars(completions, **kw):
    return [float(len(set(c))) for c in completions]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("shapes"), 4, seed=0)


def _cfg(model, data, out, **kw):
    base = dict(model=str(model), data=str(data), out=str(out), reward="chars", batch_size=B, num_generations=G,
                max_new_tokens=6, max_steps=1, lora_dropout=0.0, save_every=0, lr=1e-2)
    return RLTrainConfig(**{**base, **kw})


def _lora_grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_grpo_step_shared_vision_equals_trl(family, shapes, tmp_path, one_thread, request):
    """Rewards get the right columns, advantages are the group-normalised rewards, the loss and its gradient
    equal TRL's own (vision per row) and a hand computation, and the vision tower runs once per image."""
    from trl.data_utils import prepare_multimodal_messages

    path = request.getfixturevalue("tiny_idefics3_path" if family == "idefics3" else "tiny_qwen2_vl_path")
    seen = []

    def recording(completions, **kw):
        seen.append((completions, kw))
        return chars(completions)

    torch.manual_seed(0)
    tr = build_trainer(_cfg(path, shapes, tmp_path, beta=0.1), {"chars": recording})
    vlm, model, shared = tr.vlm, tr.model, tr.shared_vision
    refs = {r["id"]: r["references"] for r in tr.train_dataset}

    # the prompt TRL renders and tokenizes is exactly the one `capalign caption` uses
    img = tr.train_dataset[0]["image"]
    msgs = prepare_multimodal_messages(tr.train_dataset[0]["prompt"], images=[img])
    trl_ids = vlm.processor.apply_chat_template(conversation=[msgs], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"][0]
    assert list(trl_ids) == vlm.encode([img]).inputs["input_ids"][0].tolist()

    with torch.no_grad():  # a LoRA away from the base, so the KL term is not zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    vision_before = {n: p.detach().clone() for n, p in vlm.model.named_parameters() if ".vision" in n or "connector" in n or "visual" in n}
    assert vision_before

    batch = next(iter(tr.get_train_dataloader()))  # B images x G rows, as TRL's sampler groups them
    model.train()
    tr.current_gradient_accumulation_steps = 1  # set by Trainer.train(); compute_loss reads it
    with shared:
        out = tr._generate_and_score_completions(batch)
        # generation + KL reference: each distinct image through the tower once
        assert shared.encoded == B and shared.requested == 2 * B * G

        # 1. the reward saw plain captions and each row's own columns
        (comps, kw), = seen
        texts = [t.strip() for t in vlm.tokenizer.batch_decode(out["completion_ids"] * out["completion_mask"] + vlm.pad_id * (1 - out["completion_mask"]), skip_special_tokens=True)]
        assert comps == texts
        assert [kw["references"][i] for i in range(B * G)] == [refs[i] for i in kw["id"]]
        assert all(kw["id"][g * G] == kw["id"][g * G + j] for g in range(B) for j in range(G))
        assert len(kw["image"]) == B * G and set(kw) >= {"image", "references", "objects", "id"}

        # 2. advantages recomputed by hand: (r - group mean) / (group std, unbiased, + 1e-4)
        r = torch.tensor(chars(comps)).view(B, G)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()
        torch.testing.assert_close(out["advantages"], adv)

        # 3. the loss with shared vision
        loss_shared = tr.compute_loss(model, out)
        loss_shared.backward()
        g_shared = _lora_grads(model)
        model.zero_grad()
        assert shared.encoded == B and shared.requested == 3 * B * G

    # 4. stock TRL path (the tower runs for every row) gives the same loss and gradient
    calls = []
    inner = vlm.model.model
    orig = inner.get_image_features

    @functools.wraps(orig)
    def counting(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    inner.get_image_features = counting
    loss_trl = tr.compute_loss(model, out)
    loss_trl.backward()
    del inner.get_image_features
    g_trl = _lora_grads(model)
    model.zero_grad()
    assert calls  # TRL re-encoded the B * G rows
    torch.testing.assert_close(loss_shared, loss_trl, rtol=1e-5, atol=1e-6)
    for n in g_trl:
        torch.testing.assert_close(g_shared[n], g_trl[n], rtol=1e-4, atol=1e-7)

    # 5. by hand from the plain forward: GRPO (DeepSeekMath) loss, on-policy ratio rho = 1 (its gradient is not 0),
    #    k3 KL to the adapter-off base times rho (TRL's use_bias_correction_kl: the unbiased reverse-KL gradient)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    att = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    extra = {k: out[k] for k in ("pixel_values", "pixel_attention_mask", "image_grid_thw", "mm_token_type_ids") if k in out}
    P, m = out["prompt_ids"].shape[1], out["completion_mask"].float()

    def logps():
        logits = model(input_ids=ids, attention_mask=att, **extra).logits[:, P - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, out["completion_ids"].unsqueeze(-1)).squeeze(-1)

    with torch.no_grad(), model.disable_adapter():
        ref = logps()
    lp = logps()
    rho = torch.exp(lp - lp.detach())
    per_tok = -rho * out["advantages"][:, None] + 0.1 * (torch.exp(ref - lp) - (ref - lp) - 1) * rho
    loss_hand = ((per_tok * m).sum(1) / m.sum(1)).mean()
    loss_hand.backward()
    g_hand = _lora_grads(model)
    model.zero_grad()
    torch.testing.assert_close(loss_hand, loss_trl.detach(), rtol=1e-4, atol=1e-6)
    diff = sum((g_hand[n] - g_trl[n]).pow(2).sum() for n in g_trl).sqrt() / sum(g.pow(2).sum() for g in g_trl.values()).sqrt()
    assert diff < 1e-5, diff  # float32 round-off only (TRL's fused LM head sums in another order); without rho on the KL: 5e-3

    # 6. a real training step: LoRA moves, the vision tower and connector stay bit-identical
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with shared:
        tr.train()
    assert tr.state.global_step == 1
    assert any(not torch.equal(lora_before[n], p) for n, p in model.named_parameters() if n in lora_before)
    for n, p in vlm.model.named_parameters():
        if n in vision_before:
            assert torch.equal(p, vision_before[n]), n


def test_resume_history_and_adapter(tiny_idefics3_path, shapes, tmp_path, one_thread):
    """A run killed after its step-2 checkpoint and re-run ends with the same adapter as an uninterrupted run;
    history.json, TensorBoard events and a LoRA-only adapter are written."""
    full = run(_cfg(tiny_idefics3_path, shapes, tmp_path / "full", max_steps=3, save_every=1), {"chars": chars})
    assert [h["step"] for h in full["history"]] == [1, 2, 3]
    hist = json.loads((tmp_path / "full" / "history.json").read_text())
    assert hist == full["history"] and all(h["reward_std"] > 0 and h["reward_mean"] > 0 for h in hist)
    assert list((tmp_path / "full" / "runs").rglob("events.out.tfevents*"))
    a = load_file(tmp_path / "full" / "adapter_model.safetensors")
    assert a and all(".text_model." in k and "lora_" in k for k in a)

    calls = []

    def killed(completions, **kw):
        calls.append(1)
        if len(calls) == 3:  # the reward of step 3: checkpoint-2 is on disk
            raise KeyboardInterrupt
        return chars(completions)

    cfg = _cfg(tiny_idefics3_path, shapes, tmp_path / "resumed", max_steps=3, save_every=1)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, {"chars": killed})
    assert not (tmp_path / "resumed" / "adapter_model.safetensors").exists()
    resumed = run(cfg, {"chars": chars})
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3]
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert [h["reward_mean"] for h in resumed["history"]] == pytest.approx([h["reward_mean"] for h in full["history"]])


def test_reward_parts_and_checked(tmp_path):
    """--reward is capalign.rl.rewards.build_reward's spec; each part is one TRL reward function, named as in the spec."""
    from capalign.rl.rewards import CiderReward, GroundingReward

    cfg = lambda reward, **kw: RLTrainConfig(model="m", data="d", out=str(tmp_path), reward=reward, **kw)  # noqa: E731
    (n, fn, w), = reward_parts(cfg("cider"))
    assert (n, w) == ("cider", 1.0) and isinstance(fn, CiderReward)
    parts = reward_parts(cfg("cider:0.7, grounding:0.3, chars:2"), {"chars": chars})
    assert [(n, w) for n, _, w in parts] == [("cider", 0.7), ("grounding", 0.3), ("chars", 2.0)]
    assert isinstance(parts[1][1], GroundingReward) and parts[2][1](["ab", "a"]) == [2.0, 1.0]
    for bad, msg in (("bleu", "unknown reward 'bleu'"), ("cider:x", "not a number"), ("cider,cider", "twice"), ("", "empty reward spec"),
                     ("judge", "needs a judge model")):
        with pytest.raises(CapalignError, match=msg):
            reward_parts(cfg(bad))
    ok = checked("r", lambda completions, **kw: [1, 2])
    assert ok([[{"role": "assistant", "content": " a "}], "b"], references=[["x"], ["y"]]) == [1.0, 2.0]
    with pytest.raises(CapalignError, match="returned 1 values for 2 completions"):
        checked("r", lambda completions, **kw: [1.0])(["a", "b"])
    with pytest.raises(CapalignError, match="returned nan for completion 1"):
        checked("r", lambda completions, **kw: [1.0, float("nan")])(["a", "b"])
    with pytest.raises(CapalignError, match="not a list of 2 numbers"):
        checked("r", lambda completions, **kw: None)(["a", "b"])


def test_bad_input_cli(tiny_idefics3_path, shapes, tmp_path, capsys, one_thread):
    from capalign.cli import main

    with pytest.raises(SystemExit) as e:  # every help text formats (argparse chokes on a bare %)
        main(["rl", "train", "--help"])
    assert e.value.code == 0
    common = ["rl", "train", "--model", str(tiny_idefics3_path), "--out", str(tmp_path / "o"), "--batch_size", "2", "--max_steps", "1"]
    nocaps = tmp_path / "nocaps.jsonl"
    nocaps.write_text("".join(json.dumps({"id": f"x{i}", "image": str(shapes / f"images/{i:06d}.png")}) + "\n" for i in range(4)))
    for argv, msg in (
        (["--data", str(shapes), "--num_generations", "1"], "num_generations (samples per image) must be >= 2"),
        (["--data", str(shapes), "--reward", "bleu"], "unknown reward 'bleu'"),
        (["--data", str(shapes), "--reward", "judge"], "the judge reward needs a judge model (--judge MODEL)"),
        (["--data", str(nocaps), "--reward", "cider"], "needs reference captions, but 4 of 4 images have none"),
    ):
        capsys.readouterr()
        assert main(common + argv) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and msg in errors[0] and "Traceback" not in err, err

    # a reward that returns NaN stops the run with the reward named (one line through the CLI's CapalignError)
    with pytest.raises(CapalignError, match="reward 'nan' returned nan for completion 0"):
        run(_cfg(tiny_idefics3_path, shapes, tmp_path / "n", reward="nan"), {"nan": lambda completions, **kw: [float("nan")] * len(completions)})


def test_capalign_rewards_train(tiny_idefics3_path, tiny_qwen2_vl_path, shapes, tmp_path, one_thread):
    """The built-in rewards through `rl train`: a Qwen2-VL judge grading an Idefics3 policy, plus CIDEr-D and grounding;
    history.json logs each part, and the logged reward is their weighted sum."""
    res = run(_cfg(tiny_idefics3_path, shapes, tmp_path / "o", reward="judge,cider:0.5,grounding:0.5", judge=str(tiny_qwen2_vl_path)))
    (h,) = res["history"]
    assert {"reward_judge", "reward_cider", "reward_grounding"} <= set(h)
    assert 0 <= h["reward_judge"] <= 1 and h["reward_cider"] >= 0 and 0 <= h["reward_grounding"] <= 1
    assert h["reward_mean"] == pytest.approx(h["reward_judge"] + 0.5 * h["reward_cider"] + 0.5 * h["reward_grounding"], rel=1e-5)


def test_history_logs_the_sampled_captions_degeneracy(tiny_idefics3_path, shapes, tmp_path, one_thread):
    """history.json's degenerate_<flag> are metrics/degenerate.py's shares of the very captions the reward scored
    (logged through TRL's log_metric), with the vocabulary evaluate's auto rule picks for these references."""
    from capalign.metrics.degenerate import degeneracy

    seen: list[list[str]] = []

    def recording(completions, **kw):
        seen.append(list(completions))
        return chars(completions)

    (h,) = run(_cfg(tiny_idefics3_path, shapes, tmp_path / "o"), {"chars": recording})["history"]
    assert len(seen) == 1 and len(seen[0]) == B * G
    want = degeneracy(seen[0], "shapes")["corpus"]  # shapes-world references -> the shapes vocabulary
    assert {k: h[f"degenerate_{k}"] for k in want} == pytest.approx(want)
    assert h["degenerate_nonword"] > 0  # a random tiny model writes non-words: the test cannot pass on zeros alone
