"""`capalign style train` on tiny random Idefics3 (SmolVLM) and Qwen2-VL checkpoints.

- the one-vision-pass forward equals a plain forward per caption (vision run for every caption, no
  padding), and capalign's DPO loss equals TRL's DPOTrainer loss on the same batch and adapter;
- training changes LoRA only: the vision tower and connector are bit-identical afterwards;
- a run killed after a checkpoint and re-run ends with the same adapter as an uninterrupted run;
- TRL's DPOTrainer / SFTTrainer backends train on both families;
- bad input is one `error:` line with exit code 2.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from capalign.cli import main
from capalign.style.config import StyleTrainConfig

FAMILIES = ["tiny_idefics3_path", "tiny_qwen2_vl_path"]


def _pairs():
    from capalign.data.pairs import Pair

    g = torch.Generator().manual_seed(0)
    ims = [Image.fromarray((torch.rand(40 + 8 * i, 48, 3, generator=g) * 255).byte().numpy()) for i in range(3)]
    return [Pair(str(i), im, None, "a very funny red circle " * (i + 1), "a red circle", "humorous") for i, im in enumerate(ims)]


@pytest.mark.parametrize("family", FAMILIES)
def test_one_vision_pass_equals_plain_forward_and_trl_dpo(family, request, one_thread, tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments
    from trl import DPOConfig, DPOTrainer

    from capalign.models import load_vlm
    from capalign.style.train import StyleTrainer, caption_token_logps, collate, interleave
    from capalign.training.lora import lora_config

    vlm = load_vlm(str(request.getfixturevalue(family)), device="cpu", dtype="float32", prompt="Write a funny caption.")
    pairs = _pairs()
    eos = vlm.tokenizer.convert_ids_to_tokens(vlm.eos_ids[0])
    prompt = vlm.prompt_texts(1, vlm.prompt)[0]
    peft_cfg = lora_config(vlm, r=4, alpha=8, dropout=0.0)
    peft_cfg.init_lora_weights = False  # a random, non-zero adapter: policy != reference, so the loss is not log 2
    rows = [{"image": p.image, "prompt": prompt, "chosen": p.chosen + eos, "rejected": p.rejected + eos} for p in pairs]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=3, max_steps=1, report_to=[], use_cpu=True, max_length=None,
                     save_strategy="no", gradient_checkpointing=False, bf16=False, beta=0.1)
    torch.manual_seed(0)
    trl = DPOTrainer(model=vlm.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=vlm.processor, peft_config=peft_cfg)
    model = trl.model  # the PEFT model; vlm.model carries the same LoRA layers

    # 1. one vision pass + repeat vs a plain forward per caption (vision again for each, no padding)
    texts = interleave([p.chosen for p in pairs], [p.rejected for p in pairs])
    with torch.no_grad():
        enc = vlm.encode([p.image for p in pairs])
        caps = vlm.tokenize_captions(texts)
        ours = caption_token_logps(model, vlm, vlm.repeat(enc, 2), caps).sum(1)  # [2B]
        for k, text in enumerate(texts):
            im = pairs[k // 2].image
            batch = vlm.processor(text=[prompt], images=vlm.processor_images([im]), return_tensors="pt")
            cap = vlm.tokenize_captions([text]).ids[0]  # caption tokens + end token, no padding
            batch["input_ids"] = torch.cat([batch["input_ids"], cap[None]], 1)
            batch["attention_mask"] = torch.ones_like(batch["input_ids"])
            if "mm_token_type_ids" in batch:
                batch["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(cap[None])], 1)
            logits = model(**batch).logits[0, -len(cap) - 1 : -1].float()
            plain = torch.log_softmax(logits, -1).gather(-1, cap[:, None]).sum()
            assert abs(plain.item() - ours[k].item()) < 1e-3 * max(1.0, abs(plain.item())), (k, plain.item(), ours[k].item())

    # 2. the whole DPO loss vs TRL's DPOTrainer on the same batch (its collator repeats the images)
    model.train()
    trl_loss = trl.compute_loss(model, trl.data_collator([dict(r) for r in rows]))
    st = StyleTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "st"), report_to=[], use_cpu=True, remove_unused_columns=False),
                      train_dataset=pairs, data_collator=collate, vlm=vlm, method="dpo", beta=0.1, gamma=1.0, prompt=vlm.prompt)
    our_loss = st.compute_loss(model, collate(pairs))
    assert abs(trl_loss.item() - our_loss.item()) < 1e-4
    assert abs(our_loss.item() - 0.6931) > 1e-3  # not the trivial policy == reference value

    # 3. --sft_weight 0.5 (+ 0.5 x token NLL of the chosen captions) vs TRL's loss_type=[sigmoid, sft], loss_weights=[1, 0.5]
    trl.loss_types, trl.loss_weights = ["sigmoid", "sft"], [1.0, 0.5]
    trl_mix = trl.compute_loss(model, trl.data_collator([dict(r) for r in rows]))
    st.sft_weight = 0.5
    our_mix = st.compute_loss(model, collate(pairs))
    assert abs(trl_mix.item() - our_mix.item()) < 1e-4 and our_mix.item() - our_loss.item() > 0.1


def _cfg(model, out, **kw) -> StyleTrainConfig:
    base = dict(model=str(model), data="shapes:16", out=str(out), batch_size=4, lora_r=4, lora_alpha=8, device="cpu", report_to="none",
                save_every=0, lr=1e-2)
    return StyleTrainConfig(**{**base, **kw})


@pytest.mark.parametrize("family,method", [("tiny_idefics3_path", "simpo"), ("tiny_qwen2_vl_path", "sft")])
def test_training_changes_lora_only(family, method, request, one_thread, tmp_path):
    from capalign.style.train import build

    trainer, vlm, _ = build(_cfg(request.getfixturevalue(family), tmp_path, method=method, max_steps=2))
    vision = {id(p): p.detach().clone() for p in vlm.vision_parameters()}
    lora = {n: p.detach().clone() for n, p in vlm.model.named_parameters() if "lora_" in n}
    trainable = [n for n, p in vlm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and vlm.language_model_prefix.split(".")[-1] in n for n in trainable)
    trainer.train()
    assert all(torch.equal(p, vision[id(p)]) for p in vlm.vision_parameters())  # vision tower + connector bit-identical
    assert any(not torch.equal(p, lora[n]) for n, p in vlm.model.named_parameters() if "lora_" in n)


def test_killed_run_resumes_to_the_same_adapter(tiny_idefics3_path, one_thread, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from capalign.style import train as style_trainer

    kw = dict(method="dpo", max_steps=6, save_every=2, lora_dropout=0.1)  # dropout: the RNG state must be restored too
    style_trainer.run(_cfg(tiny_idefics3_path, tmp_path / "a", **kw))

    original = style_trainer.StyleTrainer.training_step

    def killed(self, *a, **k):
        if self.state.global_step == 4:  # checkpoint-4 is on disk; die in step 5
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(style_trainer.StyleTrainer, "training_step", killed)
    with pytest.raises(KeyboardInterrupt):
        style_trainer.run(_cfg(tiny_idefics3_path, tmp_path / "b", **kw))
    assert not (tmp_path / "b" / "style_result.json").exists()  # nothing looks finished
    monkeypatch.setattr(style_trainer.StyleTrainer, "training_step", original)
    style_trainer.run(_cfg(tiny_idefics3_path, tmp_path / "b", **kw))  # resumes from checkpoint-4
    a, b = load_file(tmp_path / "a" / "adapter_model.safetensors"), load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref = load_file(tmp_path / "a" / "checkpoint-2" / "adapter_model.safetensors") if (tmp_path / "a" / "checkpoint-2").exists() else None
    assert ref is None or any(not torch.equal(a[k], ref[k]) for k in a)  # training moved on after step 2


def test_resume_with_other_settings_is_refused_and_overwrite_starts_over(tiny_idefics3_path, one_thread, tmp_path, monkeypatch):
    """Issue 21, item 3 for the training commands: the config is saved when the run starts, so a killed run carries
    the settings of its checkpoints; a resume with others is refused, --overwrite trains from scratch."""
    from safetensors.torch import load_file

    from capalign import CapalignError
    from capalign.style import train as style_trainer

    kw = dict(method="sft", max_steps=4, save_every=2, lora_dropout=0.0)
    style_trainer.run(_cfg(tiny_idefics3_path, tmp_path / "a", **kw))
    original = style_trainer.StyleTrainer.training_step

    def killed(self, *a, **k):
        if self.state.global_step == 2:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(style_trainer.StyleTrainer, "training_step", killed)
    with pytest.raises(KeyboardInterrupt):
        style_trainer.run(_cfg(tiny_idefics3_path, tmp_path / "b", lr=0.05, **kw))  # checkpoint-2 made at lr 0.05
    monkeypatch.setattr(style_trainer.StyleTrainer, "training_step", original)
    saved = (tmp_path / "b" / "capalign_config.json").read_bytes()
    assert json.loads(saved)["lr"] == 0.05 and (tmp_path / "b" / "checkpoint-2").is_dir()
    with pytest.raises(CapalignError, match=r"other settings \(lr: 0.05 before, 0.01 now\).*--overwrite"):
        style_trainer.run(_cfg(tiny_idefics3_path, tmp_path / "b", **kw))
    assert (tmp_path / "b" / "capalign_config.json").read_bytes() == saved
    style_trainer.run(_cfg(tiny_idefics3_path, tmp_path / "b", overwrite=True, **kw))  # from scratch at lr 0.01
    a, b = load_file(tmp_path / "a" / "adapter_model.safetensors"), load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # = the uninterrupted run, nothing of lr 0.05 left
    assert json.loads((tmp_path / "b" / "capalign_config.json").read_text())["lr"] == 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_backends_train(family, request, one_thread, tmp_path):
    from capalign.style import train as style_trainer

    for method in ("dpo", "sft"):
        r = style_trainer.run(_cfg(request.getfixturevalue(family), tmp_path / method, method=method, backend="trl", max_steps=1))
        assert r["steps"] == 1 and (tmp_path / method / "adapter_model.safetensors").exists()


def _one_error_line(err: str) -> bool:
    """The resolved config may be printed first; then exactly one `error:` line ends the output, no traceback."""
    lines = err.splitlines()
    return lines[-1].startswith("error:") and sum("error" in x.lower() for x in lines) == 1 and "Traceback" not in err


def test_adapter_from_another_base_is_one_line(tiny_idefics3_path, tiny_qwen2_vl_path, one_thread, tmp_path, capsys):
    """(The other bad inputs of style train and sweep are rows of tests/test_cli_bad_input.py.)"""
    # an adapter trained on one base, loaded onto another (same family, other weights; and another family)
    from capalign.models.tiny import build_idefics3
    from capalign.style import train as style_trainer

    style_trainer.run(_cfg(tiny_idefics3_path, tmp_path / "ad", method="sft", max_steps=1))
    other = build_idefics3(tmp_path / "other", seed=1)
    (tmp_path / "imgs").mkdir()
    _pairs()[0].image.save(tmp_path / "imgs" / "a.png")
    for model in (other, tiny_qwen2_vl_path):
        rc = main(["caption", "--model", str(model), "--adapter", str(tmp_path / "ad"), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "c.jsonl")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and _one_error_line(err) and ("another base model" in err or "does not fit" in err), err
