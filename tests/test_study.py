"""`capalign vizer study` trains its Base for a fixed number of steps (the same model on any machine),
never a clock: clean pre-training, then web fine-tuning from the clean weights."""

import pytest

from capalign.cli import main
from capalign.training import nano


class Stop(Exception):
    pass


def test_study_base_is_trained_for_fixed_steps(tmp_path, monkeypatch):
    seen = []

    def fake_run(cfg):
        seen.append(cfg)
        if len(seen) == 2:
            raise Stop  # the Base is all this test looks at

    monkeypatch.setattr(nano, "run", fake_run)
    with pytest.raises(Stop):
        main(["vizer", "study", "--out", str(tmp_path / "s"), "--nano_steps", "123", "--web_steps", "45"])
    clean, web = seen
    assert (clean.mode, clean.steps, clean.init_from) == ("clean", 123, None)
    assert (web.mode, web.steps, web.init_from) == ("web", 45, str(tmp_path / "s" / "nano-clean"))


def test_study_web_from_scratch_uses_nano_steps(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(nano, "run", lambda cfg: seen.append(cfg) or (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        main(["vizer", "study", "--out", str(tmp_path / "s"), "--web_from_scratch", "true", "--nano_steps", "77"])
    assert [(c.mode, c.steps, c.init_from) for c in seen] == [("web", 77, None)]
