"""Trained folders others can use: every adapter (vizer, style, rl train) is a plain PEFT adapter that peft and
transformers load where capalign cannot be imported, with the same outputs as capalign's loaded adapter; every
trained folder (adapters, the mapper, nano and judge) carries a real model card (README.md): a YAML header
that parses with the right base_model, no template placeholders, no claim of a hub push that did not happen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from capalign.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is faster

TRAIN = ("--device", "cpu", "--save_every", 0, "--report_to", "none", "--lora_r", 4, "--lora_alpha", 8, "--lr", "1e-2")


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from capalign.data.shapes import write_dataset

    work = tmp_path_factory.mktemp("cards")
    write_dataset(work / "shapes", 8, seed=0)
    return work


@pytest.fixture(scope="module")
def trained(work, tiny_idefics3_path, tiny_qwen2_vl_path) -> dict[str, tuple[Path, Path]]:
    """name -> (base model folder, trained folder) of one short run of every command that trains an adapter or a mapper."""
    shapes = work / "shapes"
    runs = {}
    assert cli("mapper", "train", "--model", tiny_idefics3_path, "--data", shapes, "--out", work / "mapper", "--variant", "gt",
               "--width", 8, "--samples", 8, "--device", "cpu") == 0
    runs["mapper"] = (tiny_idefics3_path, work / "mapper")
    assert cli("vizer", "train", "--model", tiny_idefics3_path, "--mapper", work / "mapper", "--images", shapes, "--out", work / "vizer",
               "--max_steps", 1, "--batch_size", 2, "--max_new_tokens", 4, *TRAIN) == 0
    runs["vizer"] = (tiny_idefics3_path, work / "vizer")
    assert cli("style", "train", "--model", tiny_qwen2_vl_path, "--data", "shapes:16", "--out", work / "style", "--method", "dpo",
               "--max_steps", 1, "--batch_size", 2, *TRAIN) == 0
    runs["style"] = (tiny_qwen2_vl_path, work / "style")
    assert cli("rl", "train", "--model", tiny_idefics3_path, "--data", shapes, "--out", work / "rl", "--reward", "cider",
               "--max_steps", 1, "--batch_size", 2, "--num_generations", 2, "--max_new_tokens", 4, *TRAIN) == 0
    runs["rl"] = (tiny_idefics3_path, work / "rl")
    return runs


def card_header(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def check_card(folder: Path, base_model: str | None, adapter: bool) -> str:
    header, body = card_header(folder)
    from capalign import __version__

    assert header.get("base_model") == base_model
    assert (header.get("library_name") == "peft") == adapter
    assert "capalign" in header["tags"]
    assert "[More Information Needed]" not in body and "pushed to the hub" not in body.lower()
    assert f"capalign {__version__}" in body
    for section in ("## Method", "## Data", "## Training configuration", "## Results", "## Intended use and limits"):
        assert section in body
    cfg = json.loads(body.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert cfg["out"] == str(folder)  # the run's own config
    return body


@pytest.mark.parametrize("name", ["vizer", "style", "rl", "mapper"])
def test_model_card_of_every_trained_folder(trained, name):
    base, folder = trained[name]
    body = check_card(folder, str(base), adapter=name != "mapper")
    assert "| steps | 1 |" in body or name == "mapper"  # the metrics table of the run
    if name == "mapper":
        assert "| val_cos |" in body and "| val_cos_mean_feature_baseline |" in body


def test_model_card_of_nano_and_judge(tmp_path):
    from capalign.judge.train import JudgeTrainConfig
    from capalign.judge.train import run as judge_run
    from capalign.nano.train import NanoTrainConfig
    from capalign.nano.train import run as nano_run

    tiny = dict(n_train=8, n_val=4, steps=2, batch_size=4, vision_width=16, text_width=32, text_layers=1, vocab_size=300, eval_batch_size=4)
    nano_run(NanoTrainConfig(out=str(tmp_path / "nano"), **tiny))
    body = check_card(tmp_path / "nano", None, adapter=False)
    assert "| val_exact |" in body and "| steps | 2 |" in body
    judge_run(JudgeTrainConfig(out=str(tmp_path / "judge"), **tiny))
    body = check_card(tmp_path / "judge", None, adapter=False)
    assert "| held-out exact grade |" in body


# the loader of a user without capalign: transformers + peft only, capalign's import refused
NO_CAPALIGN = textwrap.dedent("""
    import sys

    class NoCapalign:
        def find_spec(self, name, path=None, target=None):
            if name == "capalign" or name.startswith("capalign."):
                raise ImportError("capalign is blocked in this test")

    sys.meta_path.insert(0, NoCapalign())
    try:
        import capalign  # noqa: F401
        sys.exit("capalign was importable")
    except ImportError:
        pass
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base, folder, inputs, out = sys.argv[1:]
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base, torch_dtype=torch.float32), folder).eval()
    with torch.no_grad():
        logits = model(**torch.load(inputs)).logits
    torch.save(logits, out)
    assert not any(m.startswith("capalign") for m in sys.modules)
""")


@pytest.mark.parametrize("name", ["vizer", "style", "rl"])
def test_adapter_loads_with_peft_alone_and_gives_capalign_outputs(trained, name, tmp_path):
    from capalign.models import load_vlm

    base, folder = trained[name]
    vlm = load_vlm(str(base), device="cpu", dtype="float32", adapter=str(folder), prompt="A photo of")
    plain = load_vlm(str(base), device="cpu", dtype="float32", prompt="A photo of")
    image = Image.new("RGB", (64, 48), (200, 40, 90))
    inputs = dict(vlm.processor(text=vlm.prompt_texts(1, vlm.prompt), images=vlm.processor_images([image]), return_tensors="pt"))
    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "load.py"
    script.write_text(NO_CAPALIGN)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, str(script), str(base), str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "logits.pt")],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = torch.load(tmp_path / "logits.pt")
    with torch.no_grad():
        ours, without = vlm.model(**inputs).logits, plain.model(**inputs).logits
    assert theirs.shape == ours.shape
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (theirs - ours).abs().max()
    if name != "rl":  # one GRPO step of two equally rewarded samples has zero advantage: its LoRA B stays at zero
        assert not torch.allclose(ours, without, atol=1e-4, rtol=1e-4)  # the adapter changes the outputs: the comparison can fail
