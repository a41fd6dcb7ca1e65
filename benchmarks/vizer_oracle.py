"""The ViZer reward's ceiling on the shapes world: the text side replaced by the exact scene.

    .venv/bin/python benchmarks/vizer_oracle.py --run runs/vizer-objectives [--seed 0]

`--run` is a study folder with the seed's Base and data (`capalign study recipes/demo.yaml --out RUN --until base`).
ViZer's reward is `1 - cos(F_I - c, h(f(caption)))`: the mapper h must predict the image's features from the LM
states f of the caption. Here h(f(caption)) is replaced by an oracle that knows the caption's exact scene: a ridge
regression from the scene's one-hot attributes (per cell: empty or colour, shape, size) to F_I, fit on the seed's
2000 mapper images. On the 300 test images the correct scene is scored against each corruption of
`vizer diagnose` (data/shapes.py `corrupt`, the same seed), per pooling (mean; grid1x3: one third of the image
each) and per feature space: `centred` (F_I - mean, as `mapper train --center`) and `whitened` (PCA-whitened on
the mapper images: every direction of F_I counts the same in the cosine). Also printed: the ridge fit's R^2 and
the share of F_I's variance the scene explains.

Reading it: an oracle AUC near 0.5 says the features' geometry under the cosine hides that error, whatever the
caption side does; a high oracle AUC beside a low mapper AUC (benchmarks/vizer_objectives.py) puts the loss on
the text side (the LM states or the mapper). Writes benchmarks/results/vizer_oracle.json (atomically).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from capalign.data import shapes  # noqa: E402
from capalign.data.sources import batched, open_images  # noqa: E402
from capalign.io import atomic_write_json  # noqa: E402
from capalign.vizer.diagnose import auc  # noqa: E402


def scene_vector(scene: shapes.Scene) -> torch.Tensor:
    """One-hot attributes per cell (left, middle, right): empty, each colour, each shape, each size."""
    colours, names, sizes = list(shapes.COLORS), list(shapes.SHAPES), list(shapes.SIZES)
    width = 1 + len(colours) + len(names) + len(sizes)
    x = torch.zeros(len(shapes.POSITIONS), width)
    at = {o.position: o for o in scene.objects}
    for c, pos in enumerate(shapes.POSITIONS):
        o = at.get(pos)
        if o is None:
            x[c, 0] = 1
        else:
            x[c, 1 + colours.index(o.color)] = 1
            x[c, 1 + len(colours) + names.index(o.name)] = 1
            x[c, 1 + len(colours) + len(names) + sizes.index(o.size)] = 1
    return x.flatten()


def ridge(x: torch.Tensor, y: torch.Tensor, lam: float = 1e-2) -> torch.Tensor:
    """W [Dx+1, Dy] minimising |[x, 1] W - y|^2 + lam |W|^2."""
    xb = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    return torch.linalg.solve(xb.T @ xb + lam * torch.eye(xb.shape[1], dtype=xb.dtype), xb.T @ y.double()).float()


def predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1)], 1) @ w


def whitener(f: torch.Tensor, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, P) with (f - mean) @ P of identity covariance (directions below eps x the top variance dropped)."""
    mu = f.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov((f - mu).T.double()))
    keep = evals > eps * evals.max()
    return mu, (evecs[:, keep] / evals[keep].sqrt()).float()


def features(vlm, source, pooling: str, batch_size: int = 50) -> tuple[torch.Tensor, list[shapes.Scene]]:
    feats, scenes = [], []
    with torch.no_grad():
        for batch in batched(source, batch_size):
            feats.append(vlm.encode([r.image for r in batch], pooling=pooling).features.float())
            scenes += [shapes.scene_from_objects(r.meta["objects"]) for r in batch]
    return torch.cat(feats), scenes


def oracle_aucs(f_test: torch.Tensor, scenes: list[shapes.Scene], w: torch.Tensor, transform, seed: int) -> dict:
    """Per corruption kind: AUC of the oracle reward (correct scene vs the corrupted one, same image)."""
    rng = random.Random(seed)
    target = transform(f_test)
    loss = lambda i, sc: 1 - torch.cosine_similarity(target[i], transform(predict(w, scene_vector(sc)[None]))[0], dim=0)  # noqa: E731
    correct, wrong = [], {k: ([], []) for k in shapes.CORRUPTIONS}
    for i, sc in enumerate(scenes):
        c = loss(i, sc)
        for kind in shapes.CORRUPTIONS:
            bad = shapes.corrupt(sc, kind, rng)
            if bad is not None:
                wrong[kind][0].append(c)
                wrong[kind][1].append(loss(i, bad))
        correct.append(c)
    out = {k: auc(torch.stack(a), torch.stack(b)) for k, (a, b) in wrong.items() if a}
    out["all"] = auc(torch.cat([torch.stack(a) for a, _ in wrong.values() if a]), torch.cat([torch.stack(b) for _, b in wrong.values() if b]))
    return out


def readout(pred: torch.Tensor, scenes: list[shapes.Scene]) -> float:
    """Share of (image, cell) where the colour group of a predicted scene vector (argmax over empty + colours)
    names that cell's colour in `scenes` (empty counts as a value)."""
    k = 1 + len(shapes.COLORS)
    width = pred.shape[1] // len(shapes.POSITIONS)
    want = torch.stack([scene_vector(s) for s in scenes]).view(len(scenes), len(shapes.POSITIONS), width)[..., :k].argmax(-1)
    got = pred.view(len(scenes), len(shapes.POSITIONS), width)[..., :k].argmax(-1)
    return (got == want).float().mean().item()


def layer_states(vlm, enc, caps) -> torch.Tensor:
    """[layers + 1, N, D_t]: every LM layer's hidden states (embeddings first) mean-pooled over the caption tokens that
    `caption_states` pools (its last entry is `caption_states`)."""
    from capalign.models.base import masked_mean

    last, w = vlm.caption_token_states(enc, caps)  # the last layer, after the final norm, and the pooling weights
    kw = vlm.extend_inputs(enc.inputs, caps.ids, caps.mask)
    hs = vlm.model.model(**kw, mm_encoder_outputs=enc.mm_outputs, use_cache=False, output_hidden_states=True).hidden_states
    T = enc.inputs["input_ids"].shape[1]
    return torch.stack([masked_mean(h[:, T:].float(), w.float()) for h in hs[:-1]] + [masked_mean(last.float(), w.float())])


def mismatched_states(vlm, source, batch_size: int = 50) -> tuple[torch.Tensor, list, list]:
    """Pooled LM states (every layer) of each image with the caption of the next image in its batch (image and caption
    disagree), with the image's scene and the caption's scene."""
    states, img_scenes, cap_scenes = [], [], []
    with torch.no_grad():
        for batch in batched(source, batch_size):
            if len(batch) < 2:
                continue
            scenes = [shapes.scene_from_objects(r.meta["objects"]) for r in batch]
            enc = vlm.encode([r.image for r in batch])
            other = [scenes[(i + 1) % len(batch)] for i in range(len(batch))]
            caps = vlm.tokenize_captions([shapes.factual_captions(sc)[0] for sc in other])
            states.append(layer_states(vlm, enc, caps))
            img_scenes += scenes
            cap_scenes += other
    return torch.cat(states, 1), img_scenes, cap_scenes


def text_side(vlm, train_source, test_source) -> dict:
    """What the mapper's input carries: a ridge probe from pooled LM states (caption conditioned on an image it does
    not describe) to scene vectors, fit on the mapper images with the caption's scene as the target; on the test
    images, the share of cells whose colour it reads as the caption says and as the image shows. A second probe
    fit with the image's scene as the target measures how much of the image the states carry."""
    H_tr, img_tr, cap_tr = mismatched_states(vlm, train_source)
    H_te, img_te, cap_te = mismatched_states(vlm, test_source)
    layers = []
    for h_tr, h_te in zip(H_tr, H_te):  # embeddings, layer 1, ..., the last (ViZer's input)
        to_cap = ridge(h_tr, torch.stack([scene_vector(s) for s in cap_tr]), lam=1.0)
        to_img = ridge(h_tr, torch.stack([scene_vector(s) for s in img_tr]), lam=1.0)
        pc, pi = predict(to_cap, h_te), predict(to_img, h_te)
        layers.append({"caption_colour_from_states": readout(pc, cap_te), "image_colour_from_states": readout(pi, img_te),
                       "caption_probe_reads_image_colour": readout(pc, img_te)})
    return {**layers[-1], "per_layer": layers, "n_train": len(cap_tr), "n_test": len(cap_te)}


def main() -> None:
    from capalign.models import load_vlm

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", default="", help="the Base folder (default: RUN/seed-S/base/nano-web)")
    ap.add_argument("--poolings", default="mean,grid1x3")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vizer_oracle.json"))
    a = ap.parse_args()
    run = Path(a.run)
    base, data = Path(a.base or run / f"seed-{a.seed}" / "base" / "nano-web"), run / f"seed-{a.seed}" / "data"
    table = {}
    for pooling in a.poolings.split(","):
        vlm = load_vlm(str(base), device="cpu", dtype="float32", pooling=pooling)
        f_tr, s_tr = features(vlm, open_images(str(data / "mapper")), pooling)
        f_te, s_te = features(vlm, open_images(str(data / "test")), pooling)
        x_tr = torch.stack([scene_vector(s) for s in s_tr])
        mu, P = whitener(f_tr)
        w = ridge(x_tr, f_tr)
        resid = f_tr - predict(w, x_tr)
        explained = 1 - resid.var(0).sum().item() / f_tr.var(0).sum().item()  # share of F_I's total variance
        x_te = torch.stack([scene_vector(s) for s in s_te])
        r2_test = 1 - (f_te - predict(w, x_te)).var(0).sum().item() / f_te.var(0).sum().item()
        spaces = {"centred": lambda f: f - mu, "whitened": lambda f: (f - mu) @ P}
        table[pooling] = {"variance_explained_train": explained, "variance_explained_test": r2_test, "dims": f_tr.shape[1],
                          "whitened_dims": P.shape[1], **{name: oracle_aucs(f_te, s_te, w, t, a.seed) for name, t in spaces.items()}}
    ts = text_side(load_vlm(str(base), device="cpu", dtype="float32"), open_images(str(data / "mapper")), open_images(str(data / "test")))
    kinds = [*shapes.CORRUPTIONS, "all"]
    print(f"{'pooling':<8} {'space':<9} {'R2 test':>7} " + " ".join(f"{k:>8}" for k in kinds))
    for pooling, r in table.items():
        for space in ("centred", "whitened"):
            print(f"{pooling:<8} {space:<9} {r['variance_explained_test']:>7.3f} " + " ".join(f"{r[space][k]:>8.3f}" for k in kinds))
    for i, r in enumerate(ts["per_layer"]):
        print(f"LM layer {i if i < len(ts['per_layer']) - 1 else 'last (normed)'}: caption colour {r['caption_colour_from_states']:.3f}, "
              f"image colour {r['image_colour_from_states']:.3f}")
    print("LM states of a caption under an image it does not describe, colour per cell read by a linear probe: "
          f"the caption's {ts['caption_colour_from_states']:.3f}, the image's {ts['image_colour_from_states']:.3f} "
          f"(the caption probe agrees with the image on {ts['caption_probe_reads_image_colour']:.3f})")
    atomic_write_json(a.out, {"run": str(run), "base": str(base), "seed": a.seed, "n_train": len(s_tr), "n_test": len(s_te), "poolings": table,
                              "text_side": ts})


if __name__ == "__main__":
    main()
