"""One adapter test suite for every VLM family (capalign.models): Idefics3, Qwen2-VL, Qwen2.5-VL.

Tiny random checkpoints (tests/conftest.py) loaded through `load_vlm`, a batch of images of several
sizes and aspect ratios (Idefics3 splits each into tiles + a global image; Qwen gives each its own
dynamic resolution). Every reference value is recomputed through the plain transformers path
(pixel values, `model.model(...)`, `model.generate(...)`), never through the adapter itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from capalign import CapalignError
from capalign.models import Captions, load_vlm

FAMILIES = ["idefics3", "qwen2_vl", "qwen2_5_vl"]
PATH_FIXTURE = {"idefics3": "tiny_idefics3_path", "qwen2_vl": "tiny_qwen2_vl_path", "qwen2_5_vl": "tiny_qwen2_5_vl_path"}
SIZES = [(40, 90), (200, 120), (57, 57), (300, 64)]  # (width, height): tall, wide, square, very wide
NEW = 6  # max_new_tokens everywhere: enough to exercise the cache, fast on 2 cores


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is faster
LORA_TARGETS = r".*(text_model|language_model)\.layers\.\d+\.self_attn\.(q_proj|v_proj)"


def make_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, 1, 3))
    noise = rng.integers(-60, 60, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


IMAGES = [make_image(w, h, i) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def path(request, family):
    return str(request.getfixturevalue(PATH_FIXTURE[family]))


_LOADED: dict[str, object] = {}


@pytest.fixture
def vlm(path):
    """Shared, read-only adapter per family (tests that mutate the model load their own with `fresh`)."""
    if path not in _LOADED:
        _LOADED[path] = load_vlm(path, device="cpu")
    return _LOADED[path]


@pytest.fixture
def fresh(path):
    return lambda **kw: load_vlm(path, device="cpu", **kw)


@pytest.fixture
def enc(vlm):
    return vlm.encode(IMAGES)


def vision_module(vlm):
    return vlm.model.model.visual if vlm.family.startswith("qwen") else vlm.model.model.vision_model


def seqs(caps: Captions) -> list[list[int]]:
    """Each caption's attended ids (content + end token), padding removed."""
    return [ids[m.bool()].tolist() for ids, m in zip(caps.ids, caps.mask)]


def row(caps: Captions, i: int) -> Captions:
    return Captions(texts=[caps.texts[i]], ids=caps.ids[i : i + 1], mask=caps.mask[i : i + 1], content=caps.content[i : i + 1])


def plain_inputs(vlm, images, prompt=None):
    """Processor outputs for the plain transformers path (pixel values included)."""
    texts = vlm.prompt_texts(len(images), vlm.prompt if prompt is None else prompt)
    return dict(vlm.processor(text=texts, images=vlm.processor_images(images), return_tensors="pt", padding=True))


def with_caption(vlm, image, caps: Captions, i: int) -> tuple[dict, int]:
    """Plain processor inputs of one image followed by caption i's tokens (content + end token, if generated), for an
    independent single-sample forward; and T, the prompt's length (the caption starts there)."""
    b = plain_inputs(vlm, [image])
    T = b["input_ids"].shape[1]
    att = caps.ids[i][caps.mask[i].bool()]
    b["input_ids"] = torch.cat([b["input_ids"], att[None]], 1)
    b["attention_mask"] = torch.ones_like(b["input_ids"])
    if "mm_token_type_ids" in b:
        b["mm_token_type_ids"] = torch.cat([b["mm_token_type_ids"], torch.zeros_like(att[None])], 1)
    return b, T


def lm_parameters(vlm):
    vis = {id(p) for p in vlm.vision_parameters()}
    return [(n, p) for n, p in vlm.model.named_parameters() if id(p) not in vis]


# ---------------------------------------------------------------- generation
def test_generate_with_and_without_cache_and_generate_captions(vlm, enc):
    a = vlm.generate(enc, max_new_tokens=NEW, use_cache=True)
    b = vlm.generate(enc, max_new_tokens=NEW, use_cache=False)
    assert a.ids.shape[0] == len(IMAGES)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.mask, b.mask)
    assert vlm.generate_captions(IMAGES, max_new_tokens=NEW) == a.texts
    # greedy captions depend on the image (otherwise batching/reuse tests below prove little)
    assert len({tuple(s) for s in seqs(a)}) > 1


def test_batched_generation_equals_per_image(vlm, enc):
    batched = vlm.generate(enc, max_new_tokens=NEW)
    assert (enc.inputs["attention_mask"] == 0).any(), "prompts of different lengths: left padding is exercised"
    assert (enc.inputs["attention_mask"][:, -1] == 1).all(), "padding must be on the left"
    for i, im in enumerate(IMAGES):
        single = vlm.generate(vlm.encode([im]), max_new_tokens=NEW)
        assert seqs(single) == [seqs(batched)[i]], f"image {i} ({im.size})"


def test_encoded_reuse_does_not_rerun_vision_and_matches_plain_generate(vlm):
    calls = []
    handle = vision_module(vlm).register_forward_hook(lambda *a: calls.append(1))
    try:
        enc = vlm.encode(IMAGES)
        n_encode = len(calls)
        assert n_encode >= 1
        ours = vlm.generate(enc, max_new_tokens=NEW)
        vlm.generate(enc, max_new_tokens=NEW, use_cache=False)
        assert len(calls) == n_encode, "generate() re-ran the vision tower"
        vlm.caption_states(enc, ours), vlm.caption_logprobs(enc, ours)
        assert len(calls) == n_encode, "training forwards re-ran the vision tower"

        batch = plain_inputs(vlm, IMAGES)
        T = batch["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"], enc.inputs["input_ids"])
        with torch.no_grad():
            out = vlm.model.generate(**batch, max_new_tokens=NEW, do_sample=False, eos_token_id=vlm.eos_ids, pad_token_id=vlm.pad_id)
        assert len(calls) > n_encode  # the hook does see the plain path's vision call
    finally:
        handle.remove()
    plain = vlm.captions_from_ids(out[:, T:])
    assert torch.equal(plain.ids, ours.ids) and plain.texts == ours.texts


def test_sampling_returns_n_per_image_and_leaves_encoded_intact(vlm, enc):
    greedy = vlm.generate(enc, max_new_tokens=NEW)
    before_inputs = {k: v.clone() for k, v in enc.inputs.items()}
    before_mm = [p.clone() for p in enc.mm.pooler_output]
    before_feats = enc.features.clone()
    torch.manual_seed(0)
    samples = vlm.generate(enc, max_new_tokens=NEW, do_sample=True, num_return_sequences=2)
    assert len(samples.texts) == 2 * len(IMAGES) and samples.ids.shape[0] == 2 * len(IMAGES)
    assert samples.mask.shape == samples.content.shape == samples.ids.shape
    assert enc.inputs.keys() == before_inputs.keys()
    assert all(torch.equal(enc.inputs[k], v) for k, v in before_inputs.items())
    assert len(enc.mm.pooler_output) == len(before_mm)
    assert all(torch.equal(a, b) for a, b in zip(enc.mm.pooler_output, before_mm))
    assert torch.equal(enc.features, before_feats)
    again = vlm.generate(enc, max_new_tokens=NEW)
    assert torch.equal(again.ids, greedy.ids)


def test_max_new_tokens_must_be_positive(vlm, enc):
    for n in (0, -3):
        with pytest.raises(CapalignError, match=rf"max_new_tokens must be > 0, got {n}"):
            vlm.generate(enc, max_new_tokens=n)
    with pytest.raises(CapalignError, match="max_new_tokens"):
        vlm.generate_captions(IMAGES[:1], max_new_tokens=0)
    with pytest.raises(CapalignError, match="empty batch"):
        vlm.encode([])


# ---------------------------------------------------------------- vision features
def test_vision_features_alone_equal_batched_and_encode(vlm, enc):
    batch = vlm.vision_features(IMAGES)
    assert batch.shape == (len(IMAGES), vlm.vision_hidden_size)
    assert torch.allclose(batch, enc.features, atol=1e-6)
    for i, im in enumerate(IMAGES):
        alone = vlm.vision_features([im])
        assert torch.allclose(alone[0], batch[i], atol=1e-5), f"image {i}: {(alone[0] - batch[i]).abs().max()}"
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)


@pytest.mark.parametrize("chunk", [1, 2])
def test_vision_in_chunks_equals_one_pass(fresh, enc, chunk):
    """encode() with vision_batch_size: same features, same LM image embeddings, same captions."""
    v = fresh()
    v.vision_batch_size = chunk
    calls = []
    hook = vision_module(v).register_forward_hook(lambda *a: calls.append(1))
    try:
        chunked = v.encode(IMAGES)
    finally:
        hook.remove()
    assert len(calls) == -(-len(IMAGES) // chunk)  # one tower pass per chunk
    assert torch.allclose(chunked.features, enc.features, atol=1e-5)
    assert len(chunked.mm.pooler_output) == len(enc.mm.pooler_output)
    for a, b in zip(chunked.mm.pooler_output, enc.mm.pooler_output):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert v.generate(chunked, max_new_tokens=5).texts == v.generate(enc, max_new_tokens=5).texts


def _by_hand_idefics3(vlm, im, how):
    b = plain_inputs(vlm, [im])
    pv, pam = b["pixel_values"][0], b["pixel_attention_mask"][0]  # [N, 3, H, W], [N, H, W]
    p = vlm.model.config.vision_config.patch_size
    states, masks = [], []
    for x, m in zip(pv, pam):
        if not x.any():  # padding sub-image
            continue
        H, W = m.shape
        pm = m.reshape(H // p, p, W // p, p).any(-1).any(1)  # patch is real if any of its pixels is
        with torch.no_grad():
            h = vlm.model.model.vision_model(pixel_values=x[None], patch_attention_mask=pm[None]).last_hidden_state[0]
        states.append(h[pm.flatten()])
        masks.append(pm)
    assert len(states) > 2, "image should be split into several tiles + a global image"
    if how == "global":  # the processor puts the global image last
        states = states[-1:]
    h = torch.cat(states)
    return h.amax(0) if how == "max" else h.mean(0)


def _by_hand_qwen(vlm, im, how):
    b = plain_inputs(vlm, [im])
    with torch.no_grad():
        h = vlm.model.model.visual(b["pixel_values"], grid_thw=b["image_grid_thw"]).last_hidden_state
    assert h.shape[0] == int(b["image_grid_thw"].prod())
    return h.amax(0) if how == "max" else h.mean(0)


@pytest.mark.parametrize("how", ["mean", "global", "max"])
def test_pooling_recomputed_by_hand(vlm, how):
    by_hand = _by_hand_qwen if vlm.family.startswith("qwen") else _by_hand_idefics3
    feats = vlm.vision_features(IMAGES, pooling=how)
    for i, im in enumerate(IMAGES):
        if how == "global" and im.width == im.height:
            continue  # square: the global image has no padding (covered by mean)
        ref = by_hand(vlm, im, how)
        assert torch.allclose(feats[i], ref, atol=1e-5), f"{how} image {i}: {(feats[i] - ref).abs().max()}"


def test_pooling_modes_differ_for_tiled_images(vlm):
    if vlm.family != "idefics3":
        pytest.skip("Qwen has one view per image: global == mean")
    mean, glob = vlm.vision_features(IMAGES, pooling="mean"), vlm.vision_features(IMAGES, pooling="global")
    assert not torch.allclose(mean, glob, atol=1e-4)


# ---------------------------------------------------------------- training forwards
def test_caption_states_grads_reach_language_model_not_vision(fresh):
    vlm = fresh()
    enc = vlm.encode(IMAGES)
    caps = vlm.generate(enc, max_new_tokens=NEW)
    s = vlm.caption_states(enc, caps)
    assert s.shape == (len(IMAGES), vlm.text_hidden_size)
    assert s.requires_grad
    s.pow(2).sum().backward()
    lm = dict(lm_parameters(vlm))
    with_grad = [n for n, p in lm.items() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any("q_proj" in n for n in with_grad) and any("mlp" in n for n in with_grad), with_grad
    for p in vlm.vision_parameters():
        assert p.grad is None or not p.grad.any()


def test_caption_states_with_lora_only_lora_gets_grads(fresh):
    from peft import LoraConfig, get_peft_model

    vlm = fresh()
    peft_model = get_peft_model(vlm.model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    lora = {n: p for n, p in vlm.model.named_parameters() if "lora_" in n}
    assert lora and all(("text_model" in n or "language_model" in n) for n in lora), "LoRA on the LM only"
    assert {n.rsplit(".lora_", 1)[0].split(".")[-1] for n in lora} == {"q_proj", "v_proj"}
    enc = vlm.encode(IMAGES)
    caps = vlm.generate(enc, max_new_tokens=NEW)
    s = vlm.caption_states(enc, caps)
    assert s.requires_grad
    s.pow(2).sum().backward()
    for n, p in vlm.model.named_parameters():
        if n in lora:
            assert p.requires_grad
        else:
            assert not p.requires_grad and p.grad is None, n
    assert all(lora[n].grad is not None and lora[n].grad.abs().sum() > 0 for n in lora if "lora_B" in n)
    del peft_model


def test_caption_states_equal_independent_single_sample_forward(vlm, enc):
    caps = vlm.generate(enc, max_new_tokens=NEW)
    states = vlm.caption_states(enc, caps)
    checked = 0
    for i, im in enumerate(IMAGES):
        content = caps.ids[i][caps.content[i].bool()]
        n = len(content)
        if n == 0:
            continue
        b, T = with_caption(vlm, im, caps, i)
        with torch.no_grad():
            h = vlm.model.model(**b, use_cache=False).last_hidden_state[0, T : T + n]
        ref = h.mean(0)
        assert torch.allclose(states[i], ref, atol=1e-4), f"image {i}: {(states[i] - ref).abs().max()}"
        checked += 1
    assert checked >= 2


def test_repeat_then_caption_states_equal_per_sample(vlm, enc):
    assert vlm.repeat(enc, 1) is enc
    rep = vlm.repeat(enc, 2)
    assert len(rep) == 2 * len(IMAGES) and len(rep.mm.pooler_output) == 2 * len(IMAGES)
    assert torch.equal(rep.features[2], enc.features[1])
    torch.manual_seed(1)
    caps = vlm.generate(enc, max_new_tokens=NEW, do_sample=True, num_return_sequences=2)  # image k // 2
    with torch.no_grad():
        states = vlm.caption_states(rep, caps)
        for k in range(len(caps.texts)):
            one = vlm.caption_states(vlm.encode([IMAGES[k // 2]]), row(caps, k))
            assert torch.allclose(states[k], one[0], atol=1e-4), f"sample {k}: {(states[k] - one[0]).abs().max()}"
    with pytest.raises(ValueError, match="repeat the encoding"):
        vlm.caption_states(enc, caps)


def test_caption_logprobs_equal_generation_scores(fresh):
    """Sum of log-softmaxed greedy scores up to and including the end token; normalize divides by the count."""
    vlm = fresh()
    enc = vlm.encode(IMAGES)
    first = vlm.generate(enc, max_new_tokens=NEW)
    # make captions end early, at different lengths: declare the 3rd token of caption 0 an end token too
    stop = int(first.ids[0, 2])
    eos = vlm.model.generation_config.eos_token_id
    vlm.model.generation_config.eos_token_id = (eos if isinstance(eos, list) else [eos]) + [stop]
    vlm = type(vlm)(vlm.model, vlm.processor)
    T = enc.inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = vlm.model.generate(
            **enc.inputs, mm_encoder_outputs=enc.mm_outputs, max_new_tokens=NEW, do_sample=False,
            eos_token_id=vlm.eos_ids, pad_token_id=vlm.pad_id, output_scores=True, return_dict_in_generate=True,
        )
    caps = vlm.generate(enc, max_new_tokens=NEW)
    assert torch.equal(vlm.captions_from_ids(out.sequences[:, T:]).ids, caps.ids)
    lens = caps.mask.sum(1)
    assert lens[0] <= 3 and len(set(lens.tolist())) > 1, lens
    assert torch.isin(caps.ids[0, int(lens[0]) - 1], torch.tensor(vlm.eos_ids))  # end token is attended
    ref = torch.zeros(len(IMAGES))
    for t, scores in enumerate(out.scores):
        lp = torch.log_softmax(scores.float(), -1)
        for i in range(len(IMAGES)):
            if t < lens[i]:
                ref[i] += lp[i, out.sequences[i, T + t]]
    with torch.no_grad():
        total = vlm.caption_logprobs(enc, caps, normalize=False)
        mean = vlm.caption_logprobs(enc, caps, normalize=True)
    assert torch.allclose(total, ref, atol=1e-4), (total, ref)
    assert torch.allclose(mean, ref / lens, atol=1e-5)
    assert vlm.caption_logprobs(enc, caps).requires_grad


def test_tokenize_captions_matches_generated_ids(vlm, enc):
    caps = vlm.generate(enc, max_new_tokens=NEW)
    with torch.no_grad():
        lp_gen = vlm.caption_logprobs(enc, caps, normalize=False)
    tok = vlm.tokenize_captions(caps.texts)
    assert (tok.ids[tok.mask.bool()] != vlm.pad_id).all() or vlm.pad_id in vlm.eos_ids
    with torch.no_grad():
        lp_tok = vlm.caption_logprobs(enc, tok, normalize=False)
    same = [i for i in range(len(IMAGES)) if seqs(tok)[i] == seqs(caps)[i]]
    for i in same:
        assert torch.allclose(lp_tok[i], lp_gen[i], atol=1e-5)
    # deterministic case: a known text vs the same ids given as "generated" (content + end token)
    text = "a red car is parked on the street."
    t = vlm.tokenize_captions([text] * len(IMAGES))
    ids = vlm.tokenizer(text, add_special_tokens=False)["input_ids"] + [vlm.eos_ids[0], vlm.pad_id]
    g = vlm.captions_from_ids(torch.tensor([ids] * len(IMAGES)))
    assert g.texts == [text] * len(IMAGES)
    assert seqs(g) == seqs(t) and torch.equal(g.content[:, : t.ids.shape[1]], t.content)
    with torch.no_grad():
        a, b = vlm.caption_logprobs(enc, t, normalize=False), vlm.caption_logprobs(enc, g, normalize=False)
        assert torch.allclose(a, b, atol=1e-5)
        assert torch.allclose(vlm.caption_states(enc, t), vlm.caption_states(enc, g), atol=1e-5)


def test_tokenize_captions_ends_with_the_chat_end_token(fresh):
    """Real Qwen2-VL-Instruct: generation eos [<|im_end|>, <|endoftext|>], tokenizer eos <|im_end|>:
    a tokenized reference must end like the model's own captions (with <|im_end|>)."""
    vlm = fresh()
    end = vlm.tokenizer.eos_token_id
    other = vlm.tokenizer.pad_token_id if vlm.tokenizer.pad_token_id not in (end, None) else 1
    assert other < end  # the case where sorting the ids picked the wrong one
    vlm.model.generation_config.eos_token_id = [end, other]
    vlm = type(vlm)(vlm.model, vlm.processor)
    assert set(vlm.eos_ids) == {end, other}
    caps = vlm.tokenize_captions(["a dog"])
    assert int(caps.ids[0, caps.mask[0].bool()][-1]) == end


# ---------------------------------------------------------------- prompts
def test_default_prompt_and_override(vlm, path):
    enc = vlm.encode(IMAGES[:2])
    decoded = vlm.tokenizer.decode(enc.inputs["input_ids"][0][enc.inputs["attention_mask"][0].bool()])
    text_only = vlm.tokenizer.decode(enc.inputs["input_ids"][0], skip_special_tokens=True)
    image_token = "<image>" if vlm.family == "idefics3" else "<|image_pad|>"
    assert image_token in decoded
    if vlm.family == "idefics3":
        assert vlm.prompt is None
        assert text_only.strip() == "", f"SmolVLM-Base takes the image alone, got text {text_only!r}"
        override = "A photo of"
    else:
        assert "You are a helpful assistant." in decoded
        assert "Describe this image in the shortest form." in decoded
        assert decoded.rstrip().endswith("assistant")
        override = "What is shown here?"
    for custom in (vlm.encode(IMAGES[:2], prompt=override), load_vlm(path, device="cpu", prompt=override).encode(IMAGES[:2])):
        d = vlm.tokenizer.decode(custom.inputs["input_ids"][0], skip_special_tokens=True)
        assert override in d and "Describe this image" not in d
    if vlm.family != "idefics3":  # "" forces no prompt
        none = load_vlm(path, device="cpu", prompt="")
        d = none.tokenizer.decode(none.encode(IMAGES[:1]).inputs["input_ids"][0])
        assert "Describe this image" not in d and "You are a helpful assistant." in d


# ---------------------------------------------------------------- load_vlm
def _one_line_error(fn, *needles):
    with pytest.raises(CapalignError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_load_vlm_bad_input(tmp_path, tiny_idefics3_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt2")
    _one_line_error(lambda: load_vlm(str(tmp_path / "gpt2"), device="cpu"), "unsupported model family", "'gpt2'", "idefics3", "qwen2_vl")
    _one_line_error(lambda: load_vlm(str(tmp_path / "missing"), device="cpu"), "model path not found", "missing")
    _one_line_error(lambda: load_vlm(str(tiny_idefics3_path), device="cpu", dtype="float16"), "float16", "CPU")
    _one_line_error(lambda: load_vlm(str(tiny_idefics3_path), device="cpu", dtype="int3"), "unknown dtype", "int3")
    _one_line_error(lambda: load_vlm(str(tiny_idefics3_path), device="cpu", pooling="median"), "unknown pooling", "median")
    _one_line_error(lambda: load_vlm(str(tiny_idefics3_path), device="cpu", adapter=str(tmp_path / "no_adapter")), "adapter folder not found")
    vlm = load_vlm(str(tiny_idefics3_path), device="cpu")
    _one_line_error(lambda: vlm.generate(vlm.encode(IMAGES[:1]), max_new_tokens=0), "max_new_tokens must be > 0")


def test_load_vlm_applies_saved_lora_adapter(fresh, vlm, tmp_path):
    from peft import LoraConfig, get_peft_model

    tuned = fresh()
    peft_model = get_peft_model(tuned.model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in tuned.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(tmp_path / "adapter")

    enc = vlm.encode(IMAGES)
    caps = vlm.generate(enc, max_new_tokens=NEW)
    with torch.no_grad():
        base = vlm.caption_logprobs(enc, caps), vlm.caption_states(enc, caps)
        mem = tuned.caption_logprobs(enc, caps), tuned.caption_states(enc, caps)
        loaded_vlm = load_vlm(vlm.model.name_or_path, device="cpu", adapter=str(tmp_path / "adapter"))
        assert any("lora_" in n for n, _ in loaded_vlm.model.named_parameters())
        loaded = loaded_vlm.caption_logprobs(enc, caps), loaded_vlm.caption_states(enc, caps)
    for b, m, l in zip(base, mem, loaded):
        assert torch.allclose(l, m, atol=1e-5)
        assert not torch.allclose(l, b, atol=1e-3)
    assert loaded_vlm.generate(enc, max_new_tokens=NEW).texts == tuned.generate(enc, max_new_tokens=NEW).texts


def test_states_layer_reads_that_hidden_state(path, vlm, enc):
    """states_layer 0: the caption tokens' input embeddings (the embedding matrix's rows, by hand); k: decoder layer k's
    output in an independent single-sample forward; -1 (default): the last hidden state. Out of range: one clear error."""
    from capalign import CapalignError
    from capalign.models import load_vlm

    caps = vlm.generate(enc, max_new_tokens=NEW)
    n_layers = vlm.model.config.get_text_config().num_hidden_layers
    emb = vlm.model.get_input_embeddings().weight
    v0 = load_vlm(path, device="cpu", dtype="float32", states_layer=0)
    s0 = v0.caption_states(enc, caps)
    v1 = load_vlm(path, device="cpu", dtype="float32", states_layer=1)
    s1 = v1.caption_states(enc, caps)
    checked = 0
    for i, im in enumerate(IMAGES):
        content = caps.ids[i][caps.content[i].bool()]
        n = len(content)
        if n == 0:
            continue
        assert torch.allclose(s0[i], emb[content].mean(0), atol=1e-5)
        b, T = with_caption(vlm, im, caps, i)
        with torch.no_grad():
            h1 = vlm.model.model(**b, use_cache=False, output_hidden_states=True).hidden_states[1][0, T : T + n]
        assert torch.allclose(s1[i], h1.mean(0), atol=1e-4)
        checked += 1
    assert checked >= 2
    if n_layers > 1:
        assert not torch.allclose(s1, vlm.caption_states(enc, caps), atol=1e-3)  # not the last layer's
    for bad in (n_layers, -2):
        with pytest.raises(CapalignError, match=f"states_layer must be -1 .* or 0..{n_layers - 1}"):
            load_vlm(path, device="cpu", dtype="float32", states_layer=bad)


def test_text_only_states_are_the_caption_alone(path, vlm, enc):
    """text_only: caption_states run the caption's tokens alone through the LM: equal to an independent text-only
    forward, the same whatever image the caption is paired with, and not the image-conditioned states."""
    from capalign.models import load_vlm

    caps = vlm.generate(enc, max_new_tokens=NEW)
    t = load_vlm(path, device="cpu", dtype="float32", text_only=True)
    s = t.caption_states(enc, caps)
    checked = 0
    for i in range(len(IMAGES)):
        content = caps.ids[i][caps.content[i].bool()]
        if len(content) == 0:
            continue
        att = caps.ids[i][caps.mask[i].bool()]
        with torch.no_grad():
            h = vlm.model.model(input_ids=att[None], use_cache=False).last_hidden_state[0, : len(content)]
        assert torch.allclose(s[i], h.mean(0), atol=1e-4)
        checked += 1
    assert checked >= 2
    swapped = t.caption_states(t.select(enc, list(range(len(enc)))[::-1]), caps)  # each caption under another image
    assert torch.allclose(swapped, s, atol=1e-5)
    assert not torch.allclose(s, vlm.caption_states(enc, caps), atol=1e-3)
