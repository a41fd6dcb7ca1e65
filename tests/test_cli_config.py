"""Flags and `--config run.yaml` (config.py, cli.py): the YAML supplies any field, required ones too, and
flags override it; unknown fields, wrong types and YAML that does not parse are one `error:` line; list
flags take several values after one flag and repeated flags. Issue 10, defects 1, 2 and 4 (YAML)."""

import json

import pytest

from capalign.caption import CaptionConfig
from capalign.config import parse_config
from capalign.metrics.evaluate import EvaluateConfig
from capalign.vizer.train import VizerTrainConfig


def _file(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


# ------------------------------------------------------------------------------- YAML and required fields

def test_yaml_supplies_required_fields_and_flags_override_it(tmp_path):
    y = _file(tmp_path, "model: m\nmapper: mp\nimages: imgs/\nout: runs/v\nbatch_size: 16\nlr: 1.0e-4\n")
    cfg = parse_config(VizerTrainConfig, ["--config", y, "--lr", "5e-5"])  # the README's example
    assert (cfg.model, cfg.mapper, cfg.images, cfg.out, cfg.batch_size, cfg.lr) == ("m", "mp", "imgs/", "runs/v", 16, 5e-5)
    assert parse_config(VizerTrainConfig, ["--config", y]).lr == 1e-4
    assert parse_config(VizerTrainConfig, ["--config", y, "--model", "other"]).model == "other"  # a required field too
    c = parse_config(CaptionConfig, ["--config", _file(tmp_path, "model: m\nimages: i/\nout: c.jsonl\n", "c.yaml")])
    assert (c.model, c.images, c.out, c.batch_size) == ("m", "i/", "c.jsonl", 16)


@pytest.mark.parametrize("text,field,value", [
    ("lr: 5e-5", "lr", 5e-5),  # YAML 1.1 reads 5e-5 (no dot) as a string: converted like the flag's text
    ("lr: 1", "lr", 1.0),
    ("do_sample: true", "do_sample", True),
    ("do_sample: 'no'", "do_sample", False),
    ("limit: null", "limit", None),  # an optional field
    ("limit: 7", "limit", 7),
    ("lora_targets: q_proj", "lora_targets", "q_proj"),
])
def test_yaml_values_are_converted_like_flags(tmp_path, text, field, value):
    y = _file(tmp_path, "model: m\nmapper: mp\nimages: i\nout: o\n" + text + "\n")
    got = getattr(parse_config(VizerTrainConfig, ["--config", y]), field)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text,fragment", [
    ("batch_size: [1, 2]", "batch_size: expected an integer, got [1, 2]"),
    ("batch_size: 2.5", "batch_size: expected an integer, got 2.5"),
    ("batch_size: many", "batch_size: expected an integer, got 'many'"),
    ("lr: fast", "lr: expected a number"),
    ("do_sample: 3", "do_sample: expected true or false, got 3"),
    ("lora_targets: yes", "quote it"),  # YAML 1.1 reads yes as a boolean
    ("lr: null", "lr: expected a number, got null"),
    ("bogus: 1\nother: 2", "unknown field(s) in"),
    ("lr: 1.0e-4\nlr: 5.0e-5", "field 'lr' is given twice"),
    ("model: [m", "is not valid YAML"),
    ("model: m\n  mapper: x: y", "is not valid YAML"),
    ("- model\n- m", "must hold a mapping"),
    (b"model: \xff\xfe\n", "is not UTF-8"),
])
def test_bad_yaml_is_one_error_line(tmp_path, cli, text, fragment):
    y = _file(tmp_path, (text + "\n") if isinstance(text, str) else text)
    r = cli("vizer", "train", "--config", y, "--model", "m", "--mapper", "mp", "--images", "i", "--out", str(tmp_path / "o"))
    assert r.code == 2 and r.error_lines and len(r.error_lines) == 1, r.err
    assert fragment in r.error_lines[0] and "Traceback" not in r.err and "usage:" not in r.err


def test_malformed_yaml_names_file_and_line(tmp_path, cli):
    y = _file(tmp_path, "model: m\nimages: i\nout: [o\n")
    r = cli("caption", "--config", y)
    assert r.code == 2 and len(r.error_lines) == 1 and r.err.strip() == r.error_lines[0], r.err
    assert y in r.error_lines[0] and "line 4" in r.error_lines[0]


def test_missing_required_fields_are_named(tmp_path, cli):
    r = cli("vizer", "train", "--config", _file(tmp_path, "model: m\nmapper: mp\n"))
    assert r.code == 2 and len(r.error_lines) == 1
    assert "required: --images, --out" in r.error_lines[0] and "usage:" not in r.err
    r = cli("vizer", "train", "--config", str(tmp_path / "nope.yaml"), "--model", "m", "--mapper", "mp", "--images", "i", "--out", "o")
    assert r.code == 2 and "config file not found" in r.error_lines[0]


def test_abbreviated_config_flag_is_not_ignored(tmp_path, cli):
    r = cli("shapes", "--conf", _file(tmp_path, "n: 3\n"), "--out", str(tmp_path / "ds"))
    assert r.code == 2 and "write the config file flag in full: --config" in r.error_lines[0]


@pytest.mark.parametrize("argv,fragment", [
    (["--n", "abc"], "argument --n: invalid int value: 'abc'"),
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["--n"], "argument --n: expected one argument"),
])
def test_bad_flags_are_one_error_line(tmp_path, cli, argv, fragment):
    r = cli("shapes", "--out", str(tmp_path / "ds"), *argv)
    assert r.code == 2 and len(r.error_lines) == 1 and fragment in r.error_lines[0], r.err
    assert "usage:" not in r.err and "--help" in r.error_lines[0]
    assert not (tmp_path / "ds").exists()


# ------------------------------------------------------------------------------- list flags

@pytest.mark.parametrize("argv,want", [
    (["--pred", "a", "--pred", "b"], ["a", "b"]),
    (["--pred", "a", "b"], ["a", "b"]),
    (["--pred", "a", "b", "--pred", "c"], ["a", "b", "c"]),
    (["--pred", "a"], ["a"]),
])
def test_list_flags_repeat_or_several_values(argv, want):
    assert parse_config(EvaluateConfig, [*argv, "--refs", "r.jsonl"]).pred == want


def test_list_flags_from_yaml_and_override(tmp_path):
    y = _file(tmp_path, "pred: [x.jsonl, y.jsonl]\nrefs: r.jsonl\n")
    assert parse_config(EvaluateConfig, ["--config", y]).pred == ["x.jsonl", "y.jsonl"]
    assert parse_config(EvaluateConfig, ["--config", y, "--pred", "z", "--pred", "w"]).pred == ["z", "w"]  # flags replace the YAML list
    y1 = _file(tmp_path, "pred: x.jsonl\nrefs: r.jsonl\n", "one.yaml")
    assert parse_config(EvaluateConfig, ["--config", y1]).pred == ["x.jsonl"]


def test_list_flags_documented_in_help(cli):
    r = cli("evaluate", "--help")
    assert r.code == 0 and "repeat the flag or give several paths" in " ".join(r.out.split())
    r = cli("vizer", "diagnose", "--help")
    assert r.code == 0 and "repeat the flag" in " ".join(r.out.split())


def test_evaluate_scores_every_repeated_pred(tmp_path, cli):
    """Defect 2: `--pred a --pred b` scored only b."""
    refs = _file(tmp_path, '{"id": "1", "captions": ["a red circle"]}\n{"id": "2", "captions": ["a blue square"]}\n', "refs.jsonl")
    a = _file(tmp_path, '{"id": "1", "caption": "a red circle"}\n{"id": "2", "caption": "a blue square"}\n', "a.jsonl")
    b = _file(tmp_path, '{"id": "1", "caption": "a green circle"}\n{"id": "2", "caption": "a square"}\n', "b.jsonl")
    c = _file(tmp_path, '{"id": "1", "caption": "circle"}\n{"id": "2", "caption": "square"}\n', "c.jsonl")
    out = tmp_path / "res.json"
    r = cli("evaluate", "--pred", a, "--pred", b, c, "--refs", refs, "--out", out)
    assert r.code == 0, r.err
    systems = json.loads(out.read_text())["systems"]
    assert list(systems) == ["a", "b", "c"]
    assert systems["a"]["corpus"]["BLEU1"] == pytest.approx(1.0, abs=1e-6) and systems["b"]["corpus"]["BLEU1"] < 0.9


def test_recipe_values_are_coerced_after_a_command_parsed_its_flags():
    """HfArgumentParser resolves a dataclass's field types in place; the study's coercion must not depend on it."""
    from capalign.config import coerce
    from capalign.vizer.train import VizerTrainConfig

    before = coerce(VizerTrainConfig, {"lr": "1e-2", "max_steps": "3", "do_sample": "true"})
    with pytest.raises(SystemExit):
        parse_config(VizerTrainConfig, ["--help"])
    after = coerce(VizerTrainConfig, {"lr": "1e-2", "max_steps": "3", "do_sample": "true"})
    assert before == after == {"lr": 0.01, "max_steps": 3, "do_sample": True}


@pytest.mark.parametrize("module,cls,field,value", [
    ("capalign.style.config", "StyleTrainConfig", "lr", 5e-4), ("capalign.style.config", "StyleTrainConfig", "lr_scheduler", "cosine"),
    ("capalign.style.config", "StyleTrainConfig", "epochs", 3.0), ("capalign.rl.config", "RLTrainConfig", "lr", 1e-5),
    ("capalign.vizer.train", "VizerTrainConfig", "max_grad_norm", 0.0)])
def test_method_defaults_reach_the_config_and_its_flags(module, cls, field, value):
    """A method's own default of a shared group field (training/args.method_defaults) is the default of the
    dataclass and of its flag. Applied above @dataclass it was silently ignored: style train ran at lr 1e-4."""
    import dataclasses
    import importlib

    from capalign.config import make_parser

    cfg_cls = getattr(importlib.import_module(module), cls)
    assert next(f for f in dataclasses.fields(cfg_cls) if f.name == field).default == value
    assert make_parser(cfg_cls).get_default(field) == value


def test_method_defaults_above_dataclass_is_an_error():
    from dataclasses import dataclass

    from capalign.training.args import OptimArgs, method_defaults

    with pytest.raises(TypeError, match="below @dataclass"):
        @method_defaults(lr=1.0)
        @dataclass(kw_only=True)
        class Wrong(OptimArgs):
            pass
