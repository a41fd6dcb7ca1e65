"""Contrastive pretraining of the nano captioner's vision tower, and probes of what a tower's pooled features carry.

Real SmolVLM and Qwen2-VL vision towers are contrastively pretrained (SigLIP; Qwen2-VL's ViT starts from a CLIP
model) before any captioning, so their pooled features carry colour and shape. A nano tower trained only through
the captioning loss need not: its image tokens go to the LM one cell column each, and nothing asks the mean over
patches (ViZer's F_I) to keep what each column shows. `capalign nano vision` trains the nano tower (the same
Idefics3 SigLIP-style transformer, same shape and pixels as `nano train`) against a small text tower on shapes
images and their factual captions, with SigLIP's sigmoid loss (or CLIP's InfoNCE), on the mean-pooled patch
states: exactly the feature `vlm.vision_features` (F_I) returns. `capalign nano train --vision_from DIR` starts
the captioner from it.

What a tower's pooled features carry (`probe`, also `capalign nano probe --model DIR`):
- linear probes (logistic regression on standardised features, fit on probe-train images, scored on held-out
  ones): per cell (left, middle, right) the colour / shape / size of the object there or `none`, accuracy
  averaged over the three cells; and the object count (1-3). Beside each, the majority-class baseline;
- image-text retrieval R@1 over the held-out images (a caption counts as retrieved when it is the image's own
  canonical caption, so scenes with identical captions are not counted as misses): for any tower with a fresh
  text tower trained against the frozen image tower (LiT, the same steps and seed for every tower, so old and
  new towers compare on equal terms), and for a contrastively pretrained tower also with its own text tower;
- region probes: the same colour / shape / size probes, each cell's probe fit on the mean patch state of that
  cell's third of the image only (`grid1x3` pooling, models/base.py `region_means`, what ViZer's grid mapper
  regresses to). Mean pooling against region pooling separates "the tower does not see the colour" from "the
  mean over the image washes out where it is".
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from .. import CapalignError
from ..config import arg, save_config, show_config
from ..data import shapes
from ..io import atomic_write_json
from ..training.loop import fit
from ..utils import print0, seed_everything

TOWER_FILE, TEXT_FILE, META_FILE, RESULT_FILE = "vision_tower.safetensors", "text_tower.safetensors", "nano_vision.json", "nano_vision_result.json"
PROBES = ("colour", "shape", "size", "count")
_WORD = re.compile(r"[a-z]+")


def vision_shape(image_size: int, patch_size: int, width: int, layers: int) -> dict:
    """The nano vision tower's config (nano/train.py builds the captioner's tower from the same dict)."""
    return dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=4, image_size=image_size, patch_size=patch_size)


def image_processor(image_size: int):
    """The nano captioner's image processor (models/tiny.py `idefics3_processor` with no splitting and
    longest_edge = image_size): one tile per shapes image, pixels as the captioner sees them."""
    from transformers import Idefics3ImageProcessorPil

    return Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size})


def pixels(images: list[Image.Image], image_size: int) -> torch.Tensor:
    """[N, 3, S, S] pixel values of shapes images, as the nano captioner's processor gives them."""
    ip = image_processor(image_size)
    return torch.cat([ip([[im]], return_tensors="pt")["pixel_values"][:, 0] for im in images])


class TextTower(nn.Module):
    """A small transformer over the words of a caption (its own word vocabulary), mean-pooled, projected."""

    def __init__(self, vocab: list[str], width: int, layers: int, out_dim: int, max_len: int = 64):
        super().__init__()
        self.vocab, self.max_len = list(vocab), max_len
        self.index = {w: i + 2 for i, w in enumerate(self.vocab)}  # 0: padding, 1: unknown word
        self.emb, self.pos = nn.Embedding(len(self.vocab) + 2, width), nn.Embedding(max_len, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.proj = nn.Linear(width, out_dim)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        rows = [[self.index.get(w, 1) for w in _WORD.findall(t.lower())][: self.max_len] or [1] for t in texts]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenize(texts).to(self.emb.weight.device)
        real = ids != 0
        h = self.enc(self.emb(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device)), src_key_padding_mask=~real)
        return self.proj((h * real.unsqueeze(-1)).sum(1) / real.sum(1, keepdim=True))


def pooled(tower, pix: torch.Tensor) -> torch.Tensor:
    """F_I of an Idefics3 vision tower for one-tile images: the mean of its last hidden states over all
    patches (models/idefics3.py `pool`, mean, with every patch real)."""
    return tower(pixel_values=pix).last_hidden_state.mean(1)


class DualEncoder(nn.Module):
    """Image tower (+ projection) and text tower with SigLIP's learnable scale and bias."""

    def __init__(self, tower, text: TextTower, out_dim: int):
        super().__init__()
        self.tower, self.text = tower, text
        self.img_proj = nn.Linear(tower.config.hidden_size, out_dim)
        self.log_scale, self.bias = nn.Parameter(torch.tensor(10.0).log()), nn.Parameter(torch.tensor(-10.0))

    def embed(self, pix: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.img_proj(pooled(self.tower, pix)), dim=-1), F.normalize(self.text(texts), dim=-1)


def contrastive_loss(zi: torch.Tensor, zt: torch.Tensor, positive: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor, kind: str) -> torch.Tensor:
    """sigmoid (SigLIP, arXiv 2303.15343): mean over images of sum_j -log sigmoid(z_ij (t x_i.y_j + b)), z = +1 on
    positives; infonce (CLIP): symmetric cross-entropy at temperature 1/t, positives spread evenly over a row.
    `positive` [B, B] marks pairs that are positives (the diagonal, and pairs of images with the same caption)."""
    logits = zi @ zt.T * log_scale.exp()
    if kind == "sigmoid":
        z = positive.float() * 2 - 1
        return -F.logsigmoid(z * (logits + bias)).sum() / len(zi)
    target = positive.float() / positive.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T)) / 2


def _examples(seed: int, n: int, split: str, image_size: int, offset: int = 0) -> tuple[list[dict], list[Image.Image]]:
    rows, ims = [], []
    for i in range(offset, offset + n):
        row, png = shapes.make_example(seed, i, image_size, split)
        rows.append(row)
        ims.append(Image.open(BytesIO(png)).convert("RGB"))
    return rows, ims


def _vocab(rows: list[dict]) -> list[str]:
    return sorted({w for r in rows for c in r["captions"] for w in _WORD.findall(c.lower())})


def train_dual(tower, rows: list[dict], pix: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int, loss: str,
               text_width: int = 128, text_layers: int = 2, out_dim: int = 128, freeze_tower: bool = False, desc: str = "nano vision") -> tuple[DualEncoder, list[float]]:
    """Train a DualEncoder on (image, factual caption) pairs; with `freeze_tower` only the text tower, the image
    projection, scale and bias learn (LiT). Returns the model (eval mode) and the per-step losses."""
    torch.manual_seed(seed)
    dual = DualEncoder(tower, TextTower(_vocab(rows), text_width, text_layers, out_dim), out_dim)
    params = [p for n, p in dual.named_parameters() if not (freeze_tower and n.startswith("tower."))]
    rng, order = random.Random(seed), []
    canon = [r["captions"][0] for r in rows]

    def next_batch() -> dict:
        nonlocal order
        if len(order) < batch_size:
            order += rng.sample(range(len(rows)), len(rows))
        idx, order = order[:batch_size], order[batch_size:]
        same = torch.tensor([[canon[i] == canon[j] for j in idx] for i in idx])
        return dict(pix=pix[idx], texts=[rng.choice(rows[i]["captions"]) for i in idx], positive=same)

    def loss_fn(m: DualEncoder, b: dict) -> torch.Tensor:
        zi, zt = m.embed(b["pix"], b["texts"])
        return contrastive_loss(zi, zt, b["positive"], m.log_scale, m.bias, loss)

    if freeze_tower:
        tower.requires_grad_(False)
    losses, _ = fit(dual, params, next_batch, steps, lr, 0.01, desc, loss_fn=loss_fn)
    tower.requires_grad_(True)
    return dual, losses


@torch.no_grad()
def retrieval_r1(dual: DualEncoder, rows: list[dict], pix: torch.Tensor) -> dict:
    """Image->text and text->image R@1 over held-out images and their canonical captions; a hit is any item
    with the same canonical caption as the query's own."""
    dual.eval()
    canon = [r["captions"][0] for r in rows]
    zi = torch.cat([dual.embed(pix[i : i + 100], canon[i : i + 100])[0] for i in range(0, len(rows), 100)])
    zt = torch.cat([F.normalize(dual.text(canon[i : i + 100]), dim=-1) for i in range(0, len(rows), 100)])
    sim = zi @ zt.T
    hit = lambda best: sum(canon[i] == canon[j] for i, j in enumerate(best.tolist())) / len(rows)  # noqa: E731
    return {"i2t": hit(sim.argmax(1)), "t2i": hit(sim.argmax(0))}


def probe_targets(rows: list[dict]) -> dict[str, list[list[str]]]:
    """Per probe, per target: the label of each image. colour/shape/size: one target per cell (left, middle,
    right), the object's attribute there or 'none'; count: one target, the number of objects."""
    at = lambda r, pos: next((o for o in r["objects"] if o["position"] == pos), None)  # noqa: E731
    out = {k: [[(o[f] if (o := at(r, pos)) else "none") for r in rows] for pos in shapes.POSITIONS]
           for k, f in (("colour", "color"), ("shape", "name"), ("size", "size"))}
    out["count"] = [[str(len(r["objects"])) for r in rows]]
    return out


def _standardised(train_x: torch.Tensor, test_x: torch.Tensor):
    """Both feature sets scaled by the training set's mean and standard deviation (numpy arrays)."""
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(train_x.numpy())
    return sc.transform(train_x.numpy()), sc.transform(test_x.numpy())


def _probe_accuracy(a, ytr: list[str], b, yte: list[str]) -> tuple[float, float]:
    """Held-out accuracy of one logistic-regression probe on standardised features (a: train, b: test), and the
    majority baseline (the most frequent training label's share of the held-out labels)."""
    from collections import Counter

    from sklearn.linear_model import LogisticRegression

    pred = LogisticRegression(max_iter=3000).fit(a, ytr).predict(b)
    top = Counter(ytr).most_common(1)[0][0]
    return sum(p == y for p, y in zip(pred, yte)) / len(yte), sum(y == top for y in yte) / len(yte)


def _mean(pairs: list[tuple[float, float]]) -> dict:
    return {"accuracy": sum(a for a, _ in pairs) / len(pairs), "majority": sum(m for _, m in pairs) / len(pairs)}


def linear_probes(train_x: torch.Tensor, train_rows: list[dict], test_x: torch.Tensor, test_rows: list[dict]) -> dict:
    """Per PROBES, the held-out accuracy of its probes averaged over its targets, and the majority baseline."""
    tr, te = probe_targets(train_rows), probe_targets(test_rows)
    a, b = _standardised(train_x, test_x)
    return {k: _mean([_probe_accuracy(a, ytr, b, yte) for ytr, yte in zip(tr[k], te[k])]) for k in PROBES}


def region_probes(train_r: torch.Tensor, train_rows: list[dict], test_r: torch.Tensor, test_rows: list[dict]) -> dict:
    """Colour / shape / size probes where cell k's probe sees only region k's features ([N, 3, D] inputs)."""
    tr, te = probe_targets(train_rows), probe_targets(test_rows)
    regions = [_standardised(train_r[:, c], test_r[:, c]) for c in range(train_r.shape[1])]
    return {k: _mean([_probe_accuracy(a, tr[k][c], b, te[k][c]) for c, (a, b) in enumerate(regions)]) for k in ("colour", "shape", "size")}


@torch.no_grad()
def tower_features(tower, pix: torch.Tensor, columns: int = len(shapes.POSITIONS)) -> tuple[torch.Tensor, torch.Tensor]:
    """One tower pass: ([N, D] F_I, the mean last hidden state over all patches as `pooled` gives it; [N, columns, D]
    the mean over each vertical strip of the square patch grid, grid1x<columns> of models/base.py `region_means`,
    the features of ViZer's grid pooling for one-tile images)."""
    from ..models.base import region_means

    tower.eval()
    means, regions = [], []
    for i in range(0, len(pix), 100):
        hs = tower(pixel_values=pix[i : i + 100]).last_hidden_state  # [B, P, D]
        side = int(round(hs.shape[1] ** 0.5))
        idx = torch.arange(hs.shape[1])
        rows, cols = idx // side, idx % side
        means.append(hs.mean(1))
        regions += [region_means(h, rows, cols, side, side, (1, columns)).view(columns, -1) for h in hs]
    return torch.cat(means).float(), torch.stack(regions).float()


def probe(tower, image_size: int, seed: int = 0, n_probe: int = 2000, n_test: int = 500, lit_steps: int = 600, batch_size: int = 64,
          lr: float = 1e-3, loss: str = "sigmoid", own: DualEncoder | None = None) -> dict:
    """What a tower's pooled features carry (module docstring): linear probes and LiT retrieval, and the own
    text tower's retrieval where one is given. Probe images: split 'train' from index 10^6 (never a nano
    training image); held-out: split 'val'."""
    tr_rows, tr_ims = _examples(seed, n_probe, "train", image_size, offset=10**6)
    te_rows, te_ims = _examples(seed, n_test, "val", image_size)
    tr_pix, te_pix = pixels(tr_ims, image_size), pixels(te_ims, image_size)
    (tr_f, tr_r), (te_f, te_r) = tower_features(tower, tr_pix), tower_features(tower, te_pix)
    out = {"probes": linear_probes(tr_f, tr_rows, te_f, te_rows), "region_probes": region_probes(tr_r, tr_rows, te_r, te_rows),
           "n_probe": n_probe, "n_test": n_test}
    out["lit_r1"], out["lit_steps"] = None, lit_steps
    if lit_steps:  # 0: probes only
        lit, _ = train_dual(tower, tr_rows, tr_pix, lit_steps, batch_size, lr, seed, loss, freeze_tower=True, desc="LiT probe")
        out["lit_r1"] = retrieval_r1(lit, te_rows, te_pix)
    if own is not None:
        out["r1"] = retrieval_r1(own, te_rows, te_pix)
    return out


def load_tower(path: str | Path):
    """The vision tower of a `nano vision` folder or of any Idefics3 model folder (a nano captioner)."""
    from transformers import Idefics3VisionConfig, Idefics3VisionTransformer

    p = Path(path)
    if (p / META_FILE).exists():
        meta = json.loads((p / META_FILE).read_text())
        tower = Idefics3VisionTransformer(Idefics3VisionConfig(**meta["vision"]))
        tower.load_state_dict(load_file(p / TOWER_FILE))
        return tower, meta["vision"]["image_size"]
    from ..models import load_vlm

    vlm = load_vlm(str(p), device="cpu", dtype="float32")
    if vlm.family != "idefics3":
        raise CapalignError(f"{path}: probes read nano (Idefics3) vision towers; this is a {vlm.family} model")
    tower = vlm.model.model.vision_model
    return tower, tower.config.image_size


def check_vision_folder(path: str | Path) -> Path:
    p = Path(path)
    if not (p / META_FILE).exists():
        raise CapalignError(f"--vision_from {path}: not a `capalign nano vision` folder (no {META_FILE})")
    return p


def init_from_vision(model, path: str | Path) -> None:
    """Copy a `nano vision` tower into an Idefics3 model's vision tower; refuse one of another shape."""
    p = check_vision_folder(path)
    want = json.loads((p / META_FILE).read_text())["vision"]
    have = model.config.vision_config
    diff = [k for k, v in want.items() if getattr(have, k, None) != v]
    if diff:
        raise CapalignError(f"--vision_from {path}: its tower differs from this model's in {', '.join(f'{k} ({want[k]} vs {getattr(have, k, None)})' for k in diff)}")
    model.model.vision_model.load_state_dict(load_file(p / TOWER_FILE))


@dataclass
class NanoVisionConfig:
    """Contrastively pretrain the nano vision tower on shapes images and captions; probes and retrieval."""

    out: str = arg("runs/nano-vision", "Output folder: vision_tower.safetensors (for `nano train --vision_from`), the text tower, nano_vision_result.json.")
    loss: str = arg("sigmoid", "sigmoid: SigLIP's pairwise sigmoid loss; infonce: CLIP's symmetric cross-entropy.")
    n_train: int = arg(6000, "Training images (shapes world, split 'train'; the same images `nano train` sees).")
    steps: int = arg(2000, "Optimizer steps (AdamW, warmup, cosine decay: the nano loop).")
    batch_size: int = arg(128, "Pairs per batch (the negatives of each image are the batch's other captions).")
    lr: float = arg(1e-3, "Peak learning rate.")
    seed: int = arg(0, "Seed for data, init and training.")
    image_size: int = arg(shapes.IMAGE_SIZE, "Image side (must match the captioner's).")
    patch_size: int = arg(16, "Vision patch size (must match the captioner's).")
    vision_width: int = arg(96, "Vision tower width (must match the captioner's).")
    vision_layers: int = arg(2, "Vision tower layers (must match the captioner's).")
    text_width: int = arg(128, "Text tower width (used only here).")
    text_layers: int = arg(2, "Text tower layers.")
    embed_dim: int = arg(128, "Joint embedding size.")
    compare: str = arg(None, "Also probe this tower (a nano captioner folder or another `nano vision` folder) on the same images, side by side.")
    probe_train: int = arg(2000, "Images the linear probes and the LiT text tower are fit on (split 'train', never a training image).")
    probe_test: int = arg(500, "Held-out images (split 'val') the probes and retrieval are scored on.")
    lit_steps: int = arg(600, "Steps of the LiT text tower trained against each frozen tower for retrieval.")

    def __post_init__(self):
        if self.loss not in ("sigmoid", "infonce"):
            raise ValueError(f"loss must be sigmoid or infonce, got {self.loss!r}")
        for k in ("n_train", "steps", "batch_size", "probe_train", "probe_test", "lit_steps"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1")


def _line(name: str, r: dict) -> str:
    p = " ".join(f"{k} {r['probes'][k]['accuracy']:.2f} (maj {r['probes'][k]['majority']:.2f})" for k in PROBES)
    g = " ".join(f"{k} {v['accuracy']:.2f}" for k, v in r["region_probes"].items())
    lit = f"; LiT R@1 i2t {r['lit_r1']['i2t']:.2f} t2i {r['lit_r1']['t2i']:.2f}" if r["lit_r1"] else ""
    own = f", own R@1 i2t {r['r1']['i2t']:.2f}" if "r1" in r else ""
    return f"{name}: probes {p}; region probes {g}{lit}{own}"


def run(cfg: NanoVisionConfig) -> dict:
    from transformers import Idefics3VisionConfig, Idefics3VisionTransformer

    show_config(cfg)
    other = None
    if cfg.compare:  # refuse a wrong --compare before minutes of training, not after
        other, size = load_tower(cfg.compare)
        if size != cfg.image_size:
            raise CapalignError(f"--compare {cfg.compare}: its tower sees {size}-px images, this one {cfg.image_size}")
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    vision = vision_shape(cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers)
    rows, ims = _examples(cfg.seed, cfg.n_train, "train", cfg.image_size)
    pix = pixels(ims, cfg.image_size)
    torch.manual_seed(cfg.seed)
    tower = Idefics3VisionTransformer(Idefics3VisionConfig(**vision))
    dual, losses = train_dual(tower, rows, pix, cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, cfg.loss, cfg.text_width, cfg.text_layers, cfg.embed_dim)
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, out / TOWER_FILE)
    save_file({k: v.contiguous() for k, v in dual.state_dict().items() if not k.startswith("tower.")}, out / TEXT_FILE)
    atomic_write_json(out / META_FILE, {"vision": vision, "text_vocab": dual.text.vocab, "loss": cfg.loss, "embed_dim": cfg.embed_dim})
    kw = dict(image_size=cfg.image_size, seed=cfg.seed, n_probe=cfg.probe_train, n_test=cfg.probe_test, lit_steps=cfg.lit_steps, loss=cfg.loss)
    result = {"final_loss": sum(losses[-20:]) / len(losses[-20:]), "steps": cfg.steps, "towers": {"contrastive": probe(tower, own=dual, **kw)}}
    if other is not None:
        result["towers"][cfg.compare] = probe(other, **kw)
    atomic_write_json(out / RESULT_FILE, result)
    save_config(cfg, out / "nano_vision_config.json")
    for name, r in result["towers"].items():
        print0(_line(name, r))
    return result


@dataclass
class NanoProbeConfig:
    """Probe a nano vision tower's pooled features (F_I): linear probes for colour, shape, size, count; LiT retrieval."""

    model: str = arg(None, "A nano captioner folder or a `nano vision` folder.")
    out: str = arg(None, "Write the result JSON here (default: print only).")
    seed: int = arg(0, "Seed for the probe images and the LiT text tower.")
    probe_train: int = arg(2000, "Images the probes and the LiT text tower are fit on.")
    probe_test: int = arg(500, "Held-out images the probes and retrieval are scored on.")
    lit_steps: int = arg(600, "LiT text tower steps (0: the probes only, no retrieval).")

    def __post_init__(self):
        if not self.model:
            raise ValueError("--model is required")
        for k in ("probe_train", "probe_test"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1")
        if self.lit_steps < 0:
            raise ValueError("lit_steps must be >= 0")


def run_probe(cfg: NanoProbeConfig) -> dict:
    tower, size = load_tower(cfg.model)
    r = probe(tower, size, seed=cfg.seed, n_probe=cfg.probe_train, n_test=cfg.probe_test, lit_steps=cfg.lit_steps)
    if cfg.out:
        atomic_write_json(Path(cfg.out), {"model": cfg.model, **r})
    print0(_line(cfg.model, r))
    return r
