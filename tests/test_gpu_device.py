"""Model-layer invariants on the device named by CAPALIGN_TEST_DEVICE (default cpu): marked `gpu`, so
benchmarks/gpu_check.py runs them with the device set to cuda (`pytest -m gpu`). They catch tensors created
on the wrong device and dtype mixes, which a CPU-only suite cannot."""

import os

import pytest
import torch
from PIL import Image

from capalign.models import load_vlm
from capalign.training.lora import lora_config

DEVICE = os.environ.get("CAPALIGN_TEST_DEVICE", "cpu")
DTYPES = ["float32"] + (["bfloat16"] if DEVICE.startswith("cuda") else [])  # bf16 matmuls on this CPU are far too slow
pytestmark = pytest.mark.gpu


@pytest.fixture(params=["idefics3", "qwen2_vl", "qwen2_5_vl"])
def path(request):
    return request.getfixturevalue(f"tiny_{request.param}_path")


@pytest.mark.parametrize("dtype", DTYPES)
def test_encode_generate_logprobs_on_the_device(path, dtype):
    vlm = load_vlm(str(path), device=DEVICE, dtype=dtype)
    imgs = [Image.new("RGB", (64, 48), c) for c in ("red", "blue")]
    enc = vlm.encode(imgs)
    assert enc.features.device.type == torch.device(DEVICE).type
    caps = vlm.generate(enc, max_new_tokens=4)
    assert caps.ids.device.type == torch.device(DEVICE).type and len(caps.texts) == 2
    lp = vlm.caption_logprobs(enc, caps)
    assert lp.shape == (2,) and lp.device.type == torch.device(DEVICE).type and torch.isfinite(lp).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_lora_step_changes_only_lora_weights_on_the_device(path, dtype):
    from peft import get_peft_model

    vlm = load_vlm(str(path), device=DEVICE, dtype=dtype)
    vlm.model.requires_grad_(False)
    peft = get_peft_model(vlm.model, lora_config(vlm, r=4))
    params = {n: p for n, p in peft.named_parameters() if p.requires_grad}
    assert params and all("lora_" in n for n in params)
    for n, p in params.items():  # LoRA B starts at zero: make the step move A too
        torch.nn.init.normal_(p, std=0.02)
    before = {n: p.detach().clone() for n, p in params.items()}
    enc = vlm.encode([Image.new("RGB", (64, 48), "green")])
    caps = vlm.tokenize_captions(["a green square"])
    vlm.model.train()
    loss = -vlm.caption_logprobs(enc, caps).mean()
    loss.backward()
    torch.optim.SGD(params.values(), lr=1.0).step()
    assert all(p.device.type == torch.device(DEVICE).type for p in params.values())
    assert any(not torch.equal(before[n], p) for n, p in params.items())
