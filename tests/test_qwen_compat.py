"""Qwen2-VL processor on a torchvision-less machine (capalign.models.compat) + tiny Qwen builders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from capalign.models.compat import (
    is_qwen_vl_processor_dir,
    load_processor,
    make_qwen_vl_processor,
    qwen_vl_image_processor,
    torchvision_available,
)
from capalign.models.tiny_qwen import (
    QWEN2_VL_SPECIAL_TOKENS,
    build_bpe_tokenizer,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen2_vl,
)

MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 64
PATCH, MERGE, TEMPORAL = 14, 2, 2
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
# (width, height): tall+upscaled (min_pixels), wide+downscaled (max_pixels), square (rounded).
SIZES = [(40, 90), (320, 190), (57, 57)]


# ---------------------------------------------------------------- first-principles reference
def ref_smart_resize(h: int, w: int, factor: int = PATCH * MERGE, lo: int = MIN_PIXELS, hi: int = MAX_PIXELS):
    """Qwen2-VL target size: sides multiples of `factor`, area within [lo, hi], aspect ~kept."""
    rh, rw = factor * round(h / factor), factor * round(w / factor)
    if rh * rw > hi:
        s = math.sqrt(h * w / hi)
        rh, rw = max(factor, factor * math.floor(h / s / factor)), max(factor, factor * math.floor(w / s / factor))
    elif rh * rw < lo:
        s = math.sqrt(lo / (h * w))
        rh, rw = factor * math.ceil(h * s / factor), factor * math.ceil(w * s / factor)
    return rh, rw


def ref_pixel_values(img):
    """PIL bicubic resize -> /255 -> CLIP normalize -> Qwen2-VL patch order (written independently)."""
    from PIL import Image

    rh, rw = ref_smart_resize(img.height, img.width)
    x = np.asarray(img.convert("RGB").resize((rw, rh), Image.BICUBIC), dtype=np.float32) / 255.0
    x = ((x - MEAN) / STD).transpose(2, 0, 1)  # C, H, W
    gh, gw = rh // PATCH, rw // PATCH
    rows = []
    # Tokens are ordered by merge block (row-major), then position inside the block (row-major);
    # each token is C x T x P x P with the single frame repeated T times.
    for bh in range(gh // MERGE):
        for bw in range(gw // MERGE):
            for mh in range(MERGE):
                for mw in range(MERGE):
                    i, j = (bh * MERGE + mh) * PATCH, (bw * MERGE + mw) * PATCH
                    patch = x[:, i : i + PATCH, j : j + PATCH]  # C, P, P
                    rows.append(np.repeat(patch[:, None], TEMPORAL, axis=1).reshape(-1))
    return np.stack(rows), (1, gh, gw)


def make_image(w: int, h: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"), seed=0)


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from transformers import Qwen2VLForConditionalGeneration

    processor = load_processor(tiny_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    return processor, model


def make_batch(processor, images):
    prompts = ["Describe the image.", "What is shown here?", "Caption:"]
    msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}] for t in prompts]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in msgs]
    return texts, processor(
        text=texts, images=[[im] for im in images], return_tensors="pt", padding=True, padding_side="left"
    )


# ---------------------------------------------------------------- tests
@pytest.mark.skipif(torchvision_available(), reason="documents the torchvision-less failure only")
def test_plain_transformers_path_fails_without_torchvision(tiny_dir):
    """The obstacle this module works around (if this starts passing, compat can be simplified)."""
    from transformers import AutoProcessor, Qwen2VLProcessor

    proc = load_processor(tiny_dir)
    with pytest.raises((AttributeError, ImportError, ValueError, TypeError)):
        Qwen2VLProcessor(proc.image_processor, proc.tokenizer, proc.video_processor)
    with pytest.raises((AttributeError, ImportError, ValueError, TypeError)):
        AutoProcessor.from_pretrained(tiny_dir)


def test_load_processor_uses_real_classes(tiny_dir, loaded):
    from transformers import Qwen2VLProcessor
    from transformers.video_processing_utils import VideoProcessorMixin

    processor, _ = loaded
    assert is_qwen_vl_processor_dir(tiny_dir)
    assert type(processor) is Qwen2VLProcessor
    expected_ip = "Qwen2VLImageProcessor" if torchvision_available() else "Qwen2VLImageProcessorPil"
    assert type(processor.image_processor).__name__ == expected_ip
    assert isinstance(processor.video_processor, VideoProcessorMixin)
    assert "check_argument_for_proper_class" not in processor.__dict__  # instance-scoped bypass removed
    assert processor.image_processor.size["shortest_edge"] == MIN_PIXELS
    assert processor.image_processor.size["longest_edge"] == MAX_PIXELS
    # The library's type check still applies to the other sub-processors.
    with pytest.raises(TypeError):
        make_qwen_vl_processor(processor.tokenizer, processor.tokenizer)
    if not torchvision_available():
        with pytest.raises(ImportError, match="torchvision"):
            processor.video_processor(videos=[np.zeros((4, 28, 28, 3), np.uint8)])
    # Saved config stays loadable by the real video processor on a torchvision machine.
    saved = json.loads((tiny_dir / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2VLProcessor"
    assert saved["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert saved["image_processor"]["image_processor_type"] == "Qwen2VLImageProcessor"


def test_tokenizer_and_config_ids_match(tiny_dir, loaded):
    processor, model = loaded
    tok, cfg = processor.tokenizer, model.config
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN2_VL_SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(ids)
    assert cfg.image_token_id == ids["<|image_pad|>"] == processor.image_token_id
    assert cfg.video_token_id == ids["<|video_pad|>"] == processor.video_token_id
    assert cfg.vision_start_token_id == ids["<|vision_start|>"]
    assert tok.pad_token_id == ids["<|endoftext|>"] == model.generation_config.pad_token_id
    assert tok.eos_token_id == ids["<|im_end|>"] == model.generation_config.eos_token_id
    assert cfg.vision_config.hidden_size == cfg.text_config.hidden_size
    head_dim = cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == head_dim // 2
    text = "<|im_start|>user\nA café ☕ — 画像<|im_end|>"
    enc = tok(text)["input_ids"]
    assert ids["<|im_start|>"] in enc and ids["<|im_end|>"] in enc
    assert tok.decode(enc) == text  # byte-level: lossless for any unicode


def test_batch_grid_tokens_and_pixels(loaded):
    processor, _ = loaded
    images = [make_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    texts, inputs = make_batch(processor, images)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in texts[0]
    assert texts[0].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")

    refs = [ref_pixel_values(im) for im in images]
    grids = [g for _, g in refs]
    assert inputs["image_grid_thw"].tolist() == [list(g) for g in grids]
    assert len({g for g in grids}) == 3  # different dynamic resolutions
    n_tokens = [int(np.prod(g)) // MERGE**2 for g in grids]
    ids = inputs["input_ids"]
    assert (ids == processor.image_token_id).sum(dim=1).tolist() == n_tokens
    # left padding: every row ends with the generation prompt, pads only at the start.
    assert inputs["attention_mask"][:, -1].all()
    pad = processor.tokenizer.pad_token_id
    for row, mask in zip(ids, inputs["attention_mask"]):
        n_pad = int((mask == 0).sum())
        assert (row[:n_pad] == pad).all() and mask[n_pad:].all()

    pv = inputs["pixel_values"]
    assert pv.shape == (sum(int(np.prod(g)) for g in grids), 3 * TEMPORAL * PATCH * PATCH)
    expected = np.concatenate([p for p, _ in refs])
    if torchvision_available():  # torchvision resizes with its own bicubic kernel
        np.testing.assert_allclose(pv.numpy(), expected, atol=0.15)
    else:
        np.testing.assert_allclose(pv.numpy(), expected, atol=1e-5, rtol=0)


def test_no_resize_image_is_backend_independent(loaded):
    """When no resize is needed, preprocessing is just rescale/normalize/patchify: identical on both backends."""
    processor, _ = loaded
    img = make_image(84, 56, seed=7)  # multiples of 28, area within [min, max] -> no resize
    assert ref_smart_resize(56, 84) == (56, 84)
    out = processor.image_processor(images=[img], return_tensors="np")
    expected, grid = ref_pixel_values(img)
    assert out["image_grid_thw"].tolist() == [list(grid)]
    np.testing.assert_allclose(out["pixel_values"], expected, atol=1e-5, rtol=0)


def _generate(model, inputs, use_cache):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, use_cache=use_cache)
    return out[:, inputs["input_ids"].shape[1] :]


def test_generate_cache_equivalence_and_roundtrip(tmp_path, loaded):
    from transformers import Qwen2VLForConditionalGeneration

    processor, model = loaded
    images = [make_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    _, inputs = make_batch(processor, images)
    with_cache = _generate(model, inputs, True)
    without_cache = _generate(model, inputs, False)
    assert with_cache.shape[0] == 3 and 1 <= with_cache.shape[1] <= 5
    assert torch.equal(with_cache, without_cache)

    processor.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    processor2 = load_processor(tmp_path)
    model2 = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert processor2.to_dict() == processor.to_dict()
    assert processor2.chat_template == processor.chat_template
    _, inputs2 = make_batch(processor2, images)
    assert inputs2.keys() == inputs.keys()
    for k in inputs:
        assert torch.equal(inputs[k], inputs2[k]), k
    assert torch.equal(_generate(model2, inputs2, True), with_cache)


def test_build_bpe_tokenizer_shared_api():
    tok = build_bpe_tokenizer(["<pad>", "<image>"], extra_corpus=["fake image words"], vocab_size=400, pad_token="<pad>")
    assert tok.convert_tokens_to_ids("<pad>") == 0 and tok.convert_tokens_to_ids("<image>") == 1
    assert tok.pad_token == "<pad>"
    assert len(tok) <= 400
    enc = tok("x<image>ÿ 🙂")["input_ids"]
    assert 1 in enc and tok.decode(enc) == "x<image>ÿ 🙂"


def test_tiny_qwen2_5_vl(tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    d = build_tiny_qwen2_5_vl(tmp_path, seed=1, num_layers=1, vision_depth=2)
    processor = load_processor(d)
    assert type(processor) is Qwen2_5_VLProcessor
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(d).eval()
    images = [make_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    _, inputs = make_batch(processor, images)
    grids = [ref_pixel_values(im)[1] for im in images]
    assert inputs["image_grid_thw"].tolist() == [list(g) for g in grids]
    assert torch.equal(_generate(model, inputs, True), _generate(model, inputs, False))


def test_image_processor_factory_matches_backend():
    ip = qwen_vl_image_processor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    assert ip.size["shortest_edge"] == MIN_PIXELS and ip.merge_size == MERGE
