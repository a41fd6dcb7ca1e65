"""ViZer: the mapper (save/load, fit, `capalign mapper train` + feature cache) and `capalign vizer train`
(zero-label: never reads captions; only LoRA inside the language model trains; exact resume;
2-process DDP == 1 process with the same global batch).

Tiny random checkpoints from tests/conftest.py; one 24-image shapes dataset; few steps, short captions.
Expensive runs are module-scoped fixtures shared by several tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import capalign.models as cm
import capalign.vizer.train as vz
from capalign.cli import main
from capalign.data.sources import Record, open_images
from capalign.metrics.degenerate import degeneracy, vocabulary_for
from capalign.models import load_vlm
from capalign.training.lora import LM_LINEAR
from capalign.vizer.mapper import Mapper, fit_mapper

NEW = "6"  # max_new_tokens everywhere
# the shared Idefics3 run: 4 steps of 4 images, checkpoint at step 2; lr high enough that LoRA B moves
# (and adapter snapshots at steps 2 and 4 for the budget curve of `capalign study`)
VIZER_ARGS = ["--max_steps", "4", "--save_every", "2", "--batch_size", "4", "--max_new_tokens", NEW, "--lr", "5e-3", "--device", "cpu",
              "--export_steps", "2,4"]


def cli(*argv) -> int:
    return main([str(a) for a in argv])


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is faster


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vizer")


@pytest.fixture(scope="module")
def shapes(work) -> Path:
    from capalign.data.shapes import write_dataset

    return write_dataset(work / "shapes", 24, seed=0)


class Calls:
    """Counts VLM.encode / VLM.generate calls (the expensive frozen-model work)."""

    def __init__(self, mp):
        self.encode = self.generate = 0
        VLM = cm.VLM
        enc, gen = VLM.encode, VLM.generate

        def encode(s, *a, **k):
            self.encode += 1
            return enc(s, *a, **k)

        def generate(s, *a, **k):
            self.generate += 1
            return gen(s, *a, **k)

        mp.setattr(VLM, "encode", encode)
        mp.setattr(VLM, "generate", generate)


@pytest.fixture(scope="module")
def mapper_g(work, shapes, tiny_idefics3_path):
    """`capalign mapper train --variant g` on the tiny Idefics3; returns (mapper folder, calls)."""
    out = work / "mappers" / "g16"
    with pytest.MonkeyPatch.context() as mp:
        calls = Calls(mp)
        # samples > images in the data: the cache must still be reused (the data is exhausted)
        rc = cli("mapper", "train", "--model", tiny_idefics3_path, "--data", shapes, "--out", out, "--variant", "g",
                 "--width", 16, "--samples", 100, "--max_new_tokens", NEW, "--feature_batch_size", 8, "--device", "cpu")
    assert rc == 0
    return out, calls


class GuardedRecord(Record):
    """A record whose captions (and meta, which holds the other caption kinds) must not be read."""

    accessed: list[str] = []

    @property
    def captions(self):
        GuardedRecord.accessed.append("captions")
        raise AssertionError("vizer train read Record.captions")

    @captions.setter
    def captions(self, value):
        self._captions = value

    @property
    def meta(self):
        GuardedRecord.accessed.append("meta")
        raise AssertionError("vizer train read Record.meta")

    @meta.setter
    def meta(self, value):
        self._meta = value


def guard_captions(mp):
    real = vz.open_images

    def guarded(*a, **k):
        src = real(*a, **k)
        inner = src.iter

        def it(skip_ids=None):
            for r in inner(skip_ids):
                yield GuardedRecord(r.id, r.image, r._captions if isinstance(r, GuardedRecord) else r.captions, {})

        src.iter = it
        return src

    mp.setattr(vz, "open_images", guarded)


def capture_vlm(mp, into: dict):
    """Patch load_vlm (as vizer imports it) to keep the VLM and a copy of its weights before LoRA."""
    real = cm.load_vlm

    def wrapped(*a, **k):
        vlm = real(*a, **k)
        into["vlm"] = vlm
        into["before"] = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
        generate, into["captions"] = vlm.generate, []

        def kept(*a, **k):  # the captions of every generate call (one per step here)
            out = generate(*a, **k)
            into["captions"].append(list(out.texts))
            return out

        vlm.generate = kept
        return vlm

    mp.setattr(cm, "load_vlm", wrapped)


@pytest.fixture(scope="module")
def vizer_run(work, shapes, tiny_idefics3_path, mapper_g):
    """The uninterrupted Idefics3 run (also run A of the resume test), with captions guarded."""
    out = work / "vizer-a"
    got: dict = {}
    GuardedRecord.accessed.clear()
    with pytest.MonkeyPatch.context() as mp:
        guard_captions(mp)
        capture_vlm(mp, got)
        rc = cli("vizer", "train", "--model", tiny_idefics3_path, "--mapper", mapper_g[0], "--images", shapes, "--out", out, *VIZER_ARGS)
    got.update(rc=rc, out=out, accessed=list(GuardedRecord.accessed))
    return got


def base_name(n: str) -> str:
    return n.replace(".base_layer.", ".")


def check_frozen_and_lora(got: dict, lm_prefix: str, frozen_prefixes: tuple[str, ...]):
    vlm, before = got["vlm"], got["before"]
    after = dict(vlm.model.named_parameters())
    lora = {n: p for n, p in after.items() if "lora_" in n}
    base = {base_name(n): p for n, p in after.items() if "lora_" not in n}
    assert set(base) == set(before)  # LoRA only wraps layers, it adds no other parameter
    for prefix in (*frozen_prefixes, lm_prefix):
        names = [n for n in before if n.startswith(prefix + ".")]
        assert names, prefix
        changed = [n for n in names if not torch.equal(before[n], base[n])]
        assert not changed, f"frozen weights changed under {prefix}: {changed[:3]}"
    # LoRA: only inside the language model, on its linear layers; B starts at zero and was trained
    assert lora and all(n.startswith(lm_prefix + ".") for n in lora), [n for n in lora if not n.startswith(lm_prefix)][:3]
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in lora} == set(LM_LINEAR)
    bs = [p for n, p in lora.items() if ".lora_B." in n]
    assert bs and all(p.abs().sum() > 0 for p in bs)
    keys = load_file(str(Path(got["out"]) / "adapter_model.safetensors")).keys()
    assert keys and all(k.startswith("base_model.model." + lm_prefix + ".") for k in keys)
    cfg = json.loads((Path(got["out"]) / "adapter_config.json").read_text())
    assert cfg["r"] == 32 and cfg["lora_alpha"] == 64


def adapter_tensors(out) -> dict:
    return load_file(str(Path(out) / "adapter_model.safetensors"))


def history(out) -> list[dict]:
    return json.loads((Path(out) / "vizer_result.json").read_text())["history"]


# ---------------------------------------------------------------------------------------------
# 1. mapper
# ---------------------------------------------------------------------------------------------
def test_mapper_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = Mapper(12, 7, width=5, depth=3).eval()
    x = torch.randn(4, 12)
    m.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text()) == {"in_dim": 12, "out_dim": 7, "width": 5, "depth": 3,
                                                                  "objective": "cosine", "temperature": 0.07, "regions": 1}
    m2 = Mapper.from_pretrained(tmp_path).eval()
    assert [l.weight.shape for l in m2.net if hasattr(l, "weight")] == [(5, 12), (5, 5), (7, 5)]
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)


def test_fit_mapper_learns_linear_map():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(1000, 16, generator=g)
    W = torch.randn(16, 8, generator=g)
    feats = states @ W + 0.5  # a fixed (affine) map; the mean feature alone explains little of it
    mapper, stats = fit_mapper(states, feats, width=64, epochs=10, batch_size=32, lr=3e-3, seed=0)
    assert stats["n_val"] == 100 and stats["n_train"] == 900
    assert stats["val_cos"] > 0.95, stats
    assert stats["val_cos_mean_feature_baseline"] < 0.5, stats
    # the stats are what the returned mapper does on fresh data
    x = torch.randn(200, 16, generator=g)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(mapper(x), x @ W + 0.5, dim=-1).mean()
    assert cos > 0.95
    assert stats["beats_mean_feature_baseline"] is True


def test_fit_mapper_flags_a_mapper_below_the_mean_feature_baseline():
    """Issue 21, item 8: captions that carry nothing about the features (independent noise) beside features that
    share a large common component: no mapper beats predicting the mean feature, and the stats say so."""
    g = torch.Generator().manual_seed(0)
    states = torch.randn(400, 16, generator=g)
    feats = 5.0 + 0.3 * torch.randn(400, 8, generator=g)  # cosines between images ~0.99, as pooled patch features
    _, stats = fit_mapper(states, feats, width=32, epochs=3, batch_size=32, lr=3e-3, seed=0)
    assert stats["val_cos"] < stats["val_cos_mean_feature_baseline"]  # measured here, independently of the flag
    assert stats["beats_mean_feature_baseline"] is False


def test_mapper_train_cli_and_feature_cache(work, shapes, tiny_idefics3_path, mapper_g, capsys):
    out, first = mapper_g
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    meta = json.loads((out / "mapper_meta.json").read_text())
    assert meta["variant"] == "g" and meta["width"] == 16 and meta["samples"] == 24 and meta["pooling"] == "mean"
    assert meta["n_val"] + meta["n_train"] == 24 and -1 <= meta["val_cos"] <= 1
    m = Mapper.from_pretrained(out)
    assert (m.net[0].in_features, m.net[0].out_features, m.net[-1].out_features) == (64, 16, 32)  # D_t, w, D_v
    assert first.encode == 3 and first.generate == 3  # 24 images / feature_batch_size 8
    cache = out / "feature-cache"  # under --out by default, never beside it (issue 21)
    assert len(list(cache.glob("features-*.safetensors"))) == 1 and not (work / "mappers" / "feature-cache").exists()
    assert meta["beats_mean_feature_baseline"] == (meta["val_cos"] > meta["val_cos_mean_feature_baseline"])

    # same data/variant, other width (and same too-large sample count): no VLM call, same cache file
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        again = Calls(mp)
        rc = cli("mapper", "train", "--model", tiny_idefics3_path, "--data", shapes, "--out", work / "mappers" / "g8",
                 "--variant", "g", "--width", 8, "--samples", 100, "--max_new_tokens", NEW, "--device", "cpu", "--cache_dir", cache)
    assert rc == 0 and (again.encode, again.generate) == (0, 0)
    assert len(list(cache.glob("features-*.safetensors"))) == 1
    meta8 = json.loads((work / "mappers" / "g8" / "mapper_meta.json").read_text())
    assert meta8["width"] == 8 and meta8["samples"] == 24
    warned = "does not beat the mean-feature baseline" in " ".join(capsys.readouterr().err.split())
    assert warned == (not meta8["beats_mean_feature_baseline"])  # a warning line exactly when the flag says so
    assert Mapper.from_pretrained(work / "mappers" / "g8").net[0].out_features == 8

    # variant gt: human captions, no generation; a new cache entry
    with pytest.MonkeyPatch.context() as mp:
        gt = Calls(mp)
        rc = cli("mapper", "train", "--model", tiny_idefics3_path, "--data", shapes, "--out", work / "mappers" / "gt",
                 "--variant", "gt", "--width", 16, "--samples", 24, "--feature_batch_size", 12, "--device", "cpu", "--cache_dir", cache)
    assert rc == 0 and (gt.encode, gt.generate) == (2, 0)
    assert json.loads((work / "mappers" / "gt" / "mapper_meta.json").read_text())["variant"] == "gt"
    assert len(list(cache.glob("features-*.safetensors"))) == 2

    # gt on a plain folder of images (no captions): one clear error line, exit code 2
    capsys.readouterr()
    rc = cli("mapper", "train", "--model", tiny_idefics3_path, "--data", shapes / "images", "--out", work / "mappers" / "nocap",
             "--variant", "gt", "--samples", 8, "--device", "cpu")
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert rc == 2 and len(err) == 1 and "captions" in err[0], err
    assert not (work / "mappers" / "nocap" / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# 2-3. vizer train: zero-label, frozen vision + connector + LM base, LoRA in the LM only
# ---------------------------------------------------------------------------------------------
def test_vizer_never_reads_captions(shapes, vizer_run):
    assert open_images(str(shapes)).iter().__next__().captions  # the manifest does have captions
    assert vizer_run["rc"] == 0 and vizer_run["accessed"] == []
    res = json.loads((vizer_run["out"] / "vizer_result.json").read_text())
    assert res["steps"] == 4 and [h["step"] for h in res["history"]] == [1, 2, 3, 4]
    assert all(0 <= h["loss"] <= 2 and abs(1 - h["cos"] - h["loss"]) < 1e-5 for h in res["history"])
    # each step logs metrics/degenerate.py's shares of the captions it generated (vocabulary from the first step's)
    caps = vizer_run["captions"]
    assert len(caps) == 4 and res["degenerate_vocabulary"] == vocabulary_for(caps[0])
    for h, c in zip(res["history"], caps):
        assert {k: h[f"degenerate_{k}"] for k in ("empty", "nonword", "repeat", "distinct")} == degeneracy(c, res["degenerate_vocabulary"])["corpus"]
    assert [p.name for p in vizer_run["out"].glob("checkpoint-*")] == ["checkpoint-2"]


def test_vizer_idefics3_frozen_weights_and_adapter(work, shapes, tiny_idefics3_path, vizer_run):
    check_frozen_and_lora(vizer_run, "model.text_model", ("model.vision_model", "model.connector"))
    # the saved adapter loads; a zero-B adapter is a no-op, the trained one changes the model
    imgs = [r.image for r in open_images(str(shapes), limit=4)]
    base = load_vlm(str(tiny_idefics3_path), device="cpu")
    tuned = load_vlm(str(tiny_idefics3_path), device="cpu", adapter=str(vizer_run["out"]))
    enc_b, enc_t = base.encode(imgs), tuned.encode(imgs)
    torch.testing.assert_close(enc_t.features, enc_b.features, rtol=0, atol=0)  # vision untouched
    caps = base.generate(enc_b, max_new_tokens=6)
    with torch.no_grad():
        s_base, s_tuned = base.caption_states(enc_b, caps), tuned.caption_states(enc_t, caps)
    assert (s_base - s_tuned).abs().max() > 1e-3
    zero = work / "zero-adapter"
    zero.mkdir()
    (zero / "adapter_config.json").write_text((vizer_run["out"] / "adapter_config.json").read_text())
    from safetensors.torch import save_file

    save_file({k: (v if ".lora_A." in k else torch.zeros_like(v)) for k, v in adapter_tensors(vizer_run["out"]).items()},
              str(zero / "adapter_model.safetensors"))
    zvlm = load_vlm(str(tiny_idefics3_path), device="cpu", adapter=str(zero))
    with torch.no_grad():
        torch.testing.assert_close(zvlm.caption_states(zvlm.encode(imgs), caps), s_base, rtol=0, atol=1e-6)

    # `capalign caption --adapter` gives other captions than the base model
    outs = {}
    for name, extra in (("base", []), ("tuned", ["--adapter", vizer_run["out"]])):
        path = work / f"captions-{name}.jsonl"
        assert cli("caption", "--model", tiny_idefics3_path, "--images", shapes, "--out", path, "--limit", 8,
                   "--batch_size", 8, "--max_new_tokens", NEW, "--device", "cpu", *extra) == 0
        outs[name] = [json.loads(l)["caption"] for l in path.read_text().splitlines()]
    assert len(outs["base"]) == len(outs["tuned"]) == 8 and outs["base"] != outs["tuned"]


def test_vizer_qwen2_vl_frozen_weights(work, shapes, tiny_qwen2_vl_path):
    mapper = work / "mappers" / "qwen-gt"
    assert cli("mapper", "train", "--model", tiny_qwen2_vl_path, "--data", shapes, "--out", mapper, "--variant", "gt",
               "--width", 8, "--samples", 8, "--device", "cpu") == 0
    got: dict = {}
    out = work / "vizer-qwen"
    with pytest.MonkeyPatch.context() as mp:
        capture_vlm(mp, got)
        rc = cli("vizer", "train", "--model", tiny_qwen2_vl_path, "--mapper", mapper, "--images", shapes, "--out", out,
                 "--max_steps", 2, "--batch_size", 2, "--max_new_tokens", 4, "--lr", "1e-2", "--save_every", 0, "--device", "cpu")
    assert rc == 0
    got["out"] = out
    check_frozen_and_lora(got, "model.language_model", ("model.visual",))
    assert any(n.startswith("model.visual.merger.") for n in got["before"])  # the connector is covered
    assert load_vlm(str(tiny_qwen2_vl_path), device="cpu", adapter=str(out)).model.peft_config  # loads


# ---------------------------------------------------------------------------------------------
# 4. resume
# ---------------------------------------------------------------------------------------------
def test_vizer_resume_matches_uninterrupted(work, shapes, tiny_idefics3_path, mapper_g, vizer_run):
    from accelerate import Accelerator

    out = work / "vizer-b"
    argv = ["vizer", "train", "--model", tiny_idefics3_path, "--mapper", mapper_g[0], "--images", shapes, "--out", out, *VIZER_ARGS]
    real = Accelerator.backward
    n = {"calls": 0}

    def crashing(self, loss, **kw):
        n["calls"] += 1
        if n["calls"] == 3:
            raise RuntimeError("killed")
        return real(self, loss, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Accelerator, "backward", crashing)
        with pytest.raises(RuntimeError, match="killed"):
            cli(*argv)
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"] and not (out / "adapter_model.safetensors").exists()

    def counting(self, loss, **kw):
        n["calls"] += 1
        return real(self, loss, **kw)

    n["calls"] = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Accelerator, "backward", counting)
        assert cli(*argv) == 0
    assert n["calls"] == 2  # resumed at step 2: only steps 3 and 4 ran
    a, b = adapter_tensors(vizer_run["out"]), adapter_tensors(out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    ha, hb = history(vizer_run["out"]), history(out)
    assert [h["step"] for h in hb] == [1, 2, 3, 4]
    for x, y in zip(ha, hb):
        assert abs(x["loss"] - y["loss"]) < 1e-6 and abs(x["cos"] - y["cos"]) < 1e-6, (ha, hb)


def test_vizer_export_step_equals_shorter_run(work, shapes, tiny_idefics3_path, mapper_g, vizer_run):
    """The budget curve of `capalign study` reads step-k snapshots of one long run: each must be exactly the
    adapter a k-step run ends with (nested budgets, no retraining)."""
    out = work / "vizer-2steps"
    args = [a for a in VIZER_ARGS if a not in ("2,4", "--export_steps")]
    args[args.index("--max_steps") + 1] = "2"
    assert cli("vizer", "train", "--model", tiny_idefics3_path, "--mapper", mapper_g[0], "--images", shapes, "--out", out, *args) == 0
    for k, short in ((2, out), (4, vizer_run["out"])):
        a, b = adapter_tensors(vizer_run["out"] / f"step-{k}"), adapter_tensors(short)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (k, name)
    assert not torch.equal(*(adapter_tensors(vizer_run["out"] / f"step-{k}")[name] for k in (2, 4)))
    assert cli("vizer", "train", "--model", tiny_idefics3_path, "--mapper", mapper_g[0], "--images", shapes, "--out", work / "x",
               "--max_steps", "2", "--export_steps", "3", "--batch_size", "4", "--device", "cpu") == 2  # beyond the run: one error line


# ---------------------------------------------------------------------------------------------
# 5. two processes (gloo, DDP) == one process with the same global batch
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vizer_two_processes_match_one(work, shapes, tiny_idefics3_path, mapper_g):
    # no dropout (the random streams differ with the process count); warmup checks the LR schedule
    # advances once per optimizer step whatever the number of processes
    common = ["vizer", "train", "--model", tiny_idefics3_path, "--mapper", mapper_g[0], "--images", shapes,
              "--max_steps", 3, "--batch_size", 4, "--max_new_tokens", NEW, "--lr", "5e-3", "--warmup_steps", 3,
              "--lora_dropout", 0, "--save_every", 2, "--device", "cpu"]
    one, two = work / "ddp-1", work / "ddp-2"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(vz.__file__).parents[2])}
    # torchrun, not `accelerate launch --cpu --num_processes 2`: without an MPI hostfile that one starts a
    # single process; Accelerator picks up torchrun's env (MULTI_CPU, gloo)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "capalign", *map(str, common), "--out", str(two)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert cli(*common, "--out", one) == 0  # the 1-process reference, meanwhile
    try:
        log, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail("2-process run timed out:\n" + log[-3000:])
    assert proc.returncode == 0, log[-3000:]
    # really two processes: both ranks wrote their RNG state into the (complete) checkpoint
    assert {p.name for p in (two / "checkpoint-2").glob("random_states_*")} == {"random_states_0.pkl", "random_states_1.pkl"}
    h1, h2 = history(one), history(two)
    assert [h["step"] for h in h2] == [1, 2, 3]
    for x, y in zip(h1, h2):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-6), (h1, h2)
    assert h1[0]["loss"] != h1[-1]["loss"]  # training moved the loss: the comparison is not trivial
    a, b = adapter_tensors(one), adapter_tensors(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=k)
