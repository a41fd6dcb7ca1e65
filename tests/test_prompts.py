"""One prompt rule for every command that builds a prompt (issue 21, item 9; models/prompts.py):

- `{style}` is filled the same way in style train, style wrlogp and caption (from a style adapter's record);
  a placeholder nothing fills is an error, never literal text sent to the model;
- the prompt an adapter was trained with is recorded in it and is the default when it is measured
  (`caption --adapter`, `style wrlogp --adapter`: base and adapter under that prompt);
- `''` is no text prompt, just the image, in both families (SmolVLM's chat turn with empty text before).
"""

from __future__ import annotations

import json

import pytest

from capalign import CapalignError
from capalign.models import load_vlm
from capalign.models.prompts import fill_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

# a chat template of the Idefics3 kind (SmolVLM-Instruct renders image and text items of a user turn)
IDEFICS3_CHAT = ("{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
                 "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
                 "{% if add_generation_prompt %}Assistant:{% endif %}")


def test_fill_prompt_one_pass_and_unfilled_placeholders_are_errors():
    assert fill_prompt("Write a {style} caption.", style="humorous") == "Write a humorous caption."
    assert fill_prompt("ref {reference} cap {caption}", reference="{caption}", caption="x") == "ref {caption} cap x"  # one pass
    assert fill_prompt("a {colour} {style} one", style="romantic") == "a {colour} romantic one"  # not a placeholder: text
    with pytest.raises(CapalignError, match=r"--prompt 'Write a \{style\} caption' has \{style\}, but nothing here fills it"):
        fill_prompt("Write a {style} caption", "--prompt")


@pytest.mark.parametrize("family", ["tiny_idefics3_path", "tiny_qwen2_vl_path"])
def test_empty_prompt_is_just_the_image_in_both_families(family, request):
    vlm = load_vlm(str(request.getfixturevalue(family)), device="cpu", prompt="")
    if family == "tiny_idefics3_path":
        vlm.processor.chat_template = IDEFICS3_CHAT  # as SmolVLM checkpoints that ship a chat template
        assert vlm.prompt_texts(1, "")[0] == "<image>" == vlm.prompt_texts(1, None)[0]
        assert vlm.prompt_texts(1, "hi")[0] == "User:<image>hi<end_of_utterance>\nAssistant:"  # text still goes through the template
    else:
        text = vlm.prompt_texts(1, "")[0]
        assert text == vlm.prompt_texts(1, None)[0] and "<|vision_start|><|image_pad|><|vision_end|><|im_end|>" in text
        assert "Describe" not in text
    from PIL import Image

    im = Image.new("RGB", (48, 40), (200, 30, 30))
    assert vlm.prompt is None  # '' at load: no text, as an explicit '' per call
    assert vlm.encode([im], "").inputs["input_ids"].tolist() == vlm.encode([im]).inputs["input_ids"].tolist()


@pytest.fixture(scope="module")
def style_adapter(tmp_path_factory, tiny_idefics3_path):
    """A PEFT adapter with capalign's record, as `capalign style train --style humorous` leaves it."""
    from peft import get_peft_model

    from capalign.models.adapter import write_adapter_meta
    from capalign.training.lora import lora_config

    out = tmp_path_factory.mktemp("style_adapter") / "adapter"
    vlm = load_vlm(str(tiny_idefics3_path), device="cpu")
    get_peft_model(vlm.model, lora_config(vlm, r=2, alpha=4)).save_pretrained(out)
    write_adapter_meta(out, vlm, str(tiny_idefics3_path), prompt="Write a humorous caption for this image.", style="humorous")
    return out


def test_caption_with_an_adapter_defaults_to_its_training_prompt(tiny_idefics3_path, style_adapter, tmp_path, cli, monkeypatch):
    from capalign.data.shapes import write_dataset
    from capalign.models.base import VLM

    data = write_dataset(tmp_path / "ds", 2)
    seen = []
    orig = VLM.encode
    monkeypatch.setattr(VLM, "encode", lambda self, *a, **k: seen.append(self.prompt) or orig(self, *a, **k))
    base = ["caption", "--model", tiny_idefics3_path, "--images", data, "--max_new_tokens", "2", "--adapter", style_adapter]
    assert cli(*base, "--out", tmp_path / "a.jsonl").code == 0
    assert set(seen) == {"Write a humorous caption for this image."}
    seen.clear()
    assert cli(*base, "--out", tmp_path / "b.jsonl", "--prompt", "Now a {style} one:").code == 0  # {style}: the adapter's
    assert set(seen) == {"Now a humorous one:"}
    seen.clear()
    assert cli(*base, "--out", tmp_path / "c.jsonl", "--prompt", "").code == 0  # '' is asked for: no text
    assert set(seen) == {None}
    r = cli("caption", "--model", tiny_idefics3_path, "--images", data, "--out", tmp_path / "d.jsonl", "--prompt", "a {style} one")
    assert r.code == 2 and "has {style}, but nothing here fills it" in r.error_lines[0] and not (tmp_path / "d.jsonl").exists()


def test_style_train_records_prompt_and_style(tiny_idefics3_path, tmp_path):
    from capalign.models.adapter import adapter_meta
    from capalign.style import train as style_trainer
    from capalign.style.config import StyleTrainConfig

    cfg = StyleTrainConfig(model=str(tiny_idefics3_path), data="shapes:8", out=str(tmp_path / "st"), style="romantic", method="sft",
                           prompt="Caption, {style} please:", max_steps=1, batch_size=2, lora_r=2, lora_alpha=4, device="cpu",
                           report_to="none", save_every=0)
    style_trainer.run(cfg)
    meta = adapter_meta(tmp_path / "st")
    assert meta["prompt"] == "Caption, romantic please:" and meta["style"] == "romantic"


def test_wrlogp_fills_style_and_scores_base_and_adapter_under_the_training_prompt(tiny_idefics3_path, style_adapter, tmp_path, cli):
    from capalign.data.preferences import open_preferences
    from capalign.metrics.style import wr_logp

    base = ["style", "wrlogp", "--model", tiny_idefics3_path, "--data", "shapes:8", "--style", "humorous", "--device", "cpu"]
    assert cli(*base, "--prompt", "Write a {style} caption for this image.", "--out", tmp_path / "t.json").code == 0
    assert cli(*base, "--prompt", "Write a humorous caption for this image.", "--out", tmp_path / "f.json").code == 0
    templ, filled = (json.loads((tmp_path / n).read_text()) for n in ("t.json", "f.json"))
    assert templ["prompt"] == filled["prompt"] == "Write a humorous caption for this image."
    assert templ["results"] == filled["results"]  # {style} filled as style train fills it, not scored as literal braces

    assert cli(*base, "--adapter", style_adapter, "--out", tmp_path / "a.json").code == 0  # no --prompt: the adapter's
    res = json.loads((tmp_path / "a.json").read_text())
    assert res["prompt"] == "Write a humorous caption for this image."
    pairs = open_preferences("shapes:8", "humorous", prompt="Write a humorous caption for this image.").test
    want = wr_logp(load_vlm(str(tiny_idefics3_path), device="cpu", dtype="float32"), pairs)  # independent: the base, that prompt
    got = {r["id"]: r for r in res["results"]["base"]["per_pair"]}
    assert {r["id"]: pytest.approx(r["chosen_sum"], abs=1e-4) for r in want["per_pair"]} == {i: r["chosen_sum"] for i, r in got.items()}


def test_judge_prompt_with_a_placeholder_it_cannot_fill_is_refused():
    from capalign.metrics.judge import check_prompt

    with pytest.raises(CapalignError, match=r"has \{style\}"):
        check_prompt("Is {caption} a {style} caption of {reference}?")
