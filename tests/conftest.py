"""Shared fixtures: tiny random VLM checkpoints, built once per test session (a few seconds each)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_idefics3_path(tmp_path_factory):
    """Tiny random Idefics3 (SmolVLM-like): large images split into tiles + a global image."""
    from capalign.models.tiny import build_idefics3

    return build_idefics3(tmp_path_factory.mktemp("tiny_idefics3"), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_vl_path(tmp_path_factory):
    from capalign.models.tiny_qwen import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_path(tmp_path_factory):
    from capalign.models.tiny_qwen import build_tiny_qwen2_5_vl

    # seed 3: greedy captions differ between images (with seed 0 one token dominates every image)
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"), seed=3)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on 2 (often shared) cores: thread overhead dominates, one intra-op thread is many times faster."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("error:")]


@pytest.fixture
def cli(capsys):
    """Run `capalign ARGS...` in-process: cli("evaluate", "--pred", p, ...) -> CliResult(code, out, err).
    An exception that escapes `main` (a traceback for the user) propagates and fails the test; argparse's
    SystemExit becomes the exit code."""
    from capalign.cli import main

    def run(*argv) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run
