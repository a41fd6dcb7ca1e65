"""benchmarks/full_size.py and benchmarks/gpu_check.py cannot rot: their quick paths run here (tiny models)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_full_size(tmp_path, only: str, *extra: str) -> dict:
    out = tmp_path / "full.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "full_size.py"), "--quick", "--only", only, "--out", str(out), *extra],
                   check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def check_runs(doc: dict, names: set) -> None:
    assert {r["name"] for r in doc["runs"]} == names
    for r in doc["runs"]:
        assert r["completed"], r.get("error")
        assert r["measured_peak_bytes"] > r["rss_before_load_bytes"] > 0
        # Linux: the load's peak and the work's peak (from a reset mark) are measured apart; the process peak is their max
        assert r["load_peak_bytes"] >= r["rss_after_load_bytes"] > r["rss_before_load_bytes"]
        assert r["work_peak_bytes"] >= r["rss_after_load_bytes"] * 0.9  # the mark starts at the RSS after loading
        assert r["measured_peak_bytes"] >= max(r["load_peak_bytes"], r["work_peak_bytes"])
        assert r["work_ratio"] == pytest.approx(r["work_peak_bytes"] / r["estimated_peak_bytes"])
        # the work's peak is the largest of its phases' peaks, each measured from its own reset mark
        phases = {"caption": ["encode", "generate"], "mapper": ["encode", "generate", "states"],
                  "vizer": ["encode", "generate", "forward", "backward", "step"],
                  "dpo": ["encode", "reference", "forward", "backward", "step"],
                  "grpo": ["encode", "generate+judge", "forward", "backward", "step"]}[r["kind"]]
        assert list(r["phase_peak_bytes"]) == phases and list(r["phase_end_rss_bytes"]) == phases
        assert r["work_peak_bytes"] == max(r["phase_peak_bytes"].values())
        assert all(r["phase_peak_bytes"][k] >= r["phase_end_rss_bytes"][k] > 0 for k in phases)
        # the child ran with the fixed mmap threshold (freed blocks go back to the kernel: RSS follows live tensors)
        assert r["malloc"] == "live" and r["malloc_env"] == {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
        assert r["estimated_peak_bytes"] > r["rss_before_load_bytes"]
        assert r["seconds"] > 0 and r["image_tokens_per_image"] > 0
        assert r["estimate_parts"]["weights"] > 0
        assert (r["estimate_parts"]["lora_adamw"] > 0) == (r["kind"] in ("vizer", "dpo", "grpo"))
        assert (r["estimate_parts"]["judge_weights"] > 0) == (r["kind"] == "grpo")


def test_full_size_quick_run_merges_into_out(tmp_path):
    """One training run (DPO, SmolVLM family) completes and is merged into an --out that already holds another run."""
    out = tmp_path / "full.json"
    out.write_text(json.dumps({"runs": [{"name": "caption/qwen2vl", "completed": False, "error": "not run"}]}))
    doc = run_full_size(tmp_path, "dpo/smolvlm", "--cache", str(tmp_path / "cache"))
    assert [r["name"] for r in doc["runs"]] == ["dpo/smolvlm", "caption/qwen2vl"]  # kept, in RUNS order
    check_runs({"runs": doc["runs"][:1]}, {"dpo/smolvlm"})
    # --reestimate runs nothing and recomputes the same estimate with the same estimator; the failed run stays as it was
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "full_size.py"), "--reestimate", "--out", str(out), "--cache", str(tmp_path / "cache")],
                   check=True, capture_output=True, text=True)
    again = json.loads(out.read_text())
    assert again["runs"][0]["estimated_peak_bytes"] == doc["runs"][0]["estimated_peak_bytes"]
    assert again["runs"][0]["seconds"] == doc["runs"][0]["seconds"] and again["runs"][1] == doc["runs"][1]


def test_full_size_malloc_default_leaves_glibc_alone(tmp_path, monkeypatch):
    """--malloc default: the child sees no malloc setting, not even one inherited from the caller's environment."""
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4096")
    doc = run_full_size(tmp_path, "caption/qwen2vl", "--malloc", "default")
    (r,) = doc["runs"]
    assert r["completed"] and r["malloc"] == "default"
    assert r["malloc_env"] == {"MALLOC_MMAP_THRESHOLD_": None, "MALLOC_TRIM_THRESHOLD_": None}


@pytest.mark.slow
def test_full_size_quick_every_run(tmp_path):
    doc = run_full_size(tmp_path, "")
    check_runs(doc, {f"{k}/{m}" for k in ("caption", "mapper", "vizer", "dpo", "grpo") for m in ("smolvlm", "qwen2vl")})


def test_gpu_check_cpu_quick_path(tmp_path):
    """gpu_check's --device cpu --quick path: every section is filled and every run completed."""
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(out)],
                   check=True, capture_output=True, text=True)
    doc = json.loads(out.read_text())
    assert doc["gpu"] == "none (cpu)" and doc["versions"]["torch"]
    assert doc["pytest"]["returncode"] == 0 and "passed" in doc["pytest"]["summary"]
    assert {r["name"] for r in doc["full_size"]} == {"caption/smolvlm", "vizer/smolvlm", "dpo/qwen2vl"}
    assert all(r["completed"] and r["steps_per_s"] > 0 for r in doc["full_size"])
    assert {(r["model"], r["batch"]) for r in doc["throughput"]} == {(m, b) for m in ("smolvlm", "qwen2vl") for b in (1, 2)}
    assert all(r["images_per_s"] > 0 and r["vision_s"] > 0 and r["generate_s"] > 0 for r in doc["throughput"])
    (variant,) = doc["variants"].values()
    assert variant["completed"] and variant["gradient_checkpointing"] is False
