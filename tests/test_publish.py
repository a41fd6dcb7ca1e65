"""Uploads to the Hub (`capalign publish`, `--push_to_hub` on the training commands), up to the upload call: HfApi
is replaced by a recorder (nothing can reach the Hub here). A missing token is one `error:` line, exit code 2,
before any training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = str(Path(__file__).resolve().parents[1] / "src")


class FakeApi:
    calls: list = []

    def __init__(self, token=None):
        FakeApi.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kw):
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        # what would be uploaded: the folder's files, less the ignored ones
        from huggingface_hub.utils import filter_repo_objects

        files = [str(p.relative_to(kw["folder_path"])) for p in Path(kw["folder_path"]).rglob("*") if p.is_file()]
        FakeApi.calls.append(("upload_folder", {**kw, "files": sorted(filter_repo_objects(files, ignore_patterns=kw["ignore_patterns"]))}))


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
    return FakeApi.calls


def trained_folder(path: Path) -> Path:
    (path / "checkpoint-2").mkdir(parents=True)
    (path / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    (path / "runs").mkdir()
    (path / "runs" / "events.out").write_bytes(b"x")
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(b"x")
    (path / "README.md").write_text("---\nlibrary_name: peft\n---\n")
    return path


def test_publish_is_private_by_default_and_uploads_the_folder_without_checkpoints(hub, cli, tmp_path):
    folder = trained_folder(tmp_path / "adapter")
    r = cli("publish", folder, "--repo_id", "me/my-adapter")
    assert r.code == 0, r.err
    kinds = [k for k, _ in hub]
    assert kinds == ["init", "create_repo", "upload_folder"]
    assert hub[0][1]["token"] == "hf_test_token"
    assert hub[1][1]["repo_id"] == "me/my-adapter" and hub[1][1]["private"] is True
    up = hub[2][1]
    assert up["repo_id"] == "me/my-adapter" and Path(up["folder_path"]) == folder
    assert up["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]  # no checkpoints, no logs


def test_publish_public(hub, cli, tmp_path):
    assert cli("publish", trained_folder(tmp_path / "a"), "--repo_id", "me/x", "--public").code == 0
    assert hub[1][1]["private"] is False


def test_publish_of_a_folder_that_is_not_a_trained_one_is_one_line(hub, cli, tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        r = cli("publish", path, "--repo_id", "me/x")
        assert r.code == 2 and len(r.error_lines) == 1 and "nothing to publish" in r.err
    assert hub == []


def test_publish_without_a_token_is_one_error_line(tmp_path):
    """The real token lookup: HF_TOKEN unset, HF_HOME an empty folder (no saved login)."""
    folder = trained_folder(tmp_path / "adapter")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=SRC, HF_HUB_OFFLINE="1")
    (tmp_path / "hf-home").mkdir()
    r = subprocess.run([sys.executable, "-m", "capalign", "publish", str(folder), "--repo_id", "me/x"], env=env, cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "HF_TOKEN" in errors[0], r.stderr


def test_push_to_hub_after_style_and_vizer_train(hub, cli, tmp_path, tiny_idefics3_path):
    from capalign.data.shapes import write_dataset

    shapes = write_dataset(tmp_path / "shapes", 4, seed=0)
    flags = ("--device", "cpu", "--save_every", 0, "--report_to", "none", "--lora_r", 4, "--lora_alpha", 8, "--max_steps", 1, "--batch_size", 2)
    r = cli("style", "train", "--model", tiny_idefics3_path, "--data", "shapes:16", "--out", tmp_path / "style", "--push_to_hub", "me/style", *flags)
    assert r.code == 0, r.err
    r = cli("mapper", "train", "--model", tiny_idefics3_path, "--data", shapes, "--out", tmp_path / "mapper", "--width", 8, "--samples", 4,
            "--device", "cpu", "--push_to_hub", "me/mapper", "--hub_public")
    assert r.code == 0, r.err
    r = cli("vizer", "train", "--model", tiny_idefics3_path, "--mapper", tmp_path / "mapper", "--images", shapes, "--out", tmp_path / "vizer",
            "--max_new_tokens", 4, "--push_to_hub", "me/vizer", *flags)
    assert r.code == 0, r.err
    creates = [c for k, c in hub if k == "create_repo"]
    uploads = [c for k, c in hub if k == "upload_folder"]
    assert [(c["repo_id"], c["private"]) for c in creates] == [("me/style", True), ("me/mapper", False), ("me/vizer", True)]
    assert [Path(u["folder_path"]) for u in uploads] == [tmp_path / "style", tmp_path / "mapper", tmp_path / "vizer"]
    for u in uploads:
        assert "README.md" in u["files"] and not any(f.startswith(("checkpoint-", "runs/", "feature-cache/")) for f in u["files"])
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(uploads[0]["files"]) & set(uploads[2]["files"])
    # a resume may add or drop the upload: it does not change what was trained
    saved = json.loads((tmp_path / "style" / "capalign_config.json").read_text())
    assert saved["push_to_hub"] == "me/style"


def test_push_to_hub_without_a_token_fails_before_training(monkeypatch, cli, tmp_path, tiny_idefics3_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls = []
    r = cli("style", "train", "--model", tiny_idefics3_path, "--data", "shapes:16", "--out", tmp_path / "style", "--push_to_hub", "me/style",
            "--device", "cpu", "--save_every", 0, "--report_to", "none", "--max_steps", 1, "--batch_size", 2)
    assert r.code == 2 and len(r.error_lines) == 1 and "HF_TOKEN" in r.error_lines[0], r.err
    assert "Traceback" not in r.err
    assert not (tmp_path / "style" / "adapter_model.safetensors").exists() and FakeApi.calls == []
