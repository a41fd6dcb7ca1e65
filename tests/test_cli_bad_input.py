"""Bad input, command by command: every row is one command line whose input is wrong in one way.

Each row must exit with code 2, print exactly one `error:` line that contains the row's fragment, print
no traceback, and leave every file that existed before the command byte-for-byte unchanged (the row's
own folder, which holds earlier outputs such as a caption file being resumed, and the shared data).

A row is data: (command line, setup, expected fragment). The command line is split on spaces after
these placeholders are filled in:
  {tmp}     the row's own folder (fresh for every row; setups write into it)
  {model}   tiny random Idefics3 (SmolVLM architecture)     {qwen}   tiny random Qwen2-VL
  {data}    an 8-image shapes-world dataset (manifest with captions and objects)
  {images}  a folder of 3 images without captions           {mapper} a mapper made for {model}
  {adapter_qwen} a PEFT adapter made for {qwen}              {mapper_other} a mapper of other sizes
  {clf_humorous} a style classifier that knows humorous and factual only
Setups (SETUPS below) write the bad files. New commands add rows; a new kind of bad file adds a setup.
Issue 10, defect 4: the adapter, --out, non-UTF-8 and YAML rows each gave a traceback before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import replicas as R

pytestmark = pytest.mark.usefixtures("one_thread")

BAD_BYTES = "caf\u00e9".encode("latin-1")  # not UTF-8


def _w(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _rows(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _coco_mismatch(t: Path) -> None:
    """A COCO annotation file one of whose annotations names an image the file does not have."""
    ann = R.coco_annotations(t / "coco")
    obj = json.loads(ann.read_text())
    obj["annotations"][3]["image_id"] = 999
    ann.write_text(json.dumps(obj))


def _kaggle_bad(t: Path) -> None:
    path = R.kaggle_csv(t / "flickr30k_images" / "results.csv")
    path.write_text(path.read_text().replace("1000092795.jpg| 1| ", "1000092795.jpg "))


GOOD_PRED = _rows([{"id": "000000", "caption": "a red circle"}, {"id": "000001", "caption": "a blue square"}])
GOOD_REFS = _rows([{"id": "000000", "captions": ["a red circle"]}, {"id": "000001", "captions": ["a blue square"]}])

# name -> function(tmp) that writes files into the row's folder; every row also gets the files of "outputs"
SETUPS = {
    "none": lambda t: None,
    # earlier outputs that a failing command must not touch
    "outputs": lambda t: (_w(t / "caps.jsonl", '{"id": "000000", "caption": "an earlier caption"}\n'),
                          _w(t / "caps.jsonl.config.json", '{"command": "CaptionConfig"}\n'), _w(t / "res.json", '{"earlier": true}\n'),
                          _w(t / "p.jsonl", GOOD_PRED), _w(t / "r.jsonl", GOOD_REFS), _w(t / "afile", "a file\n")),
    "empty_dir": lambda t: (t / "empty").mkdir(),
    "notes_txt": lambda t: _w(t / "notes.txt", "not images\n"),
    "nouns_bad": lambda t: _w(t / "nouns.txt", "circle\nred-ish\n"),
    "manifest_bad_json": lambda t: _w(t / "m.jsonl", '{"id": "a", "image": "a.png"}\n{"id": "b", "image": \n'),
    "manifest_dup": lambda t: _w(t / "m.jsonl", _rows([{"id": "a", "image": "a.png"}, {"id": "a", "image": "b.png"}])),
    "manifest_id_list": lambda t: _w(t / "m.jsonl", _rows([{"id": ["a"], "image": "a.png"}])),
    "manifest_image_int": lambda t: _w(t / "m.jsonl", _rows([{"id": "a", "image": 3}])),
    "manifest_not_utf8": lambda t: _w(t / "m.jsonl", b'{"id": "a", "image": "' + BAD_BYTES + b'.png"}\n'),
    "csv_extra_cells": lambda t: _w(t / "m.csv", "id,image\na,a.png,oops\n"),
    "csv_not_utf8": lambda t: _w(t / "m.csv", b"id,image\n" + BAD_BYTES + b",a.png\n"),
    "model_file": lambda t: _w(t / "model.bin", b"\0" * 16),
    "not_adapter": lambda t: _w(t / "adapter" / "notes.txt", "not an adapter\n"),
    "out_not_captions": lambda t: _w(t / "caps.jsonl", "id,caption\n000000,a red circle\n"),
    "out_not_utf8": lambda t: _w(t / "caps.jsonl", b'{"id": "000000", "caption": "' + BAD_BYTES + b'"}\n'),
    "yaml_malformed": lambda t: _w(t / "run.yaml", "model: [unclosed\nout: x\n"),
    "yaml_not_utf8": lambda t: _w(t / "run.yaml", b"out: " + BAD_BYTES + b"\n"),
    "yaml_list": lambda t: _w(t / "run.yaml", "- out\n- x\n"),
    "yaml_unknown": lambda t: _w(t / "run.yaml", "bogus_field: 1\n"),
    "yaml_bad_type": lambda t: _w(t / "run.yaml", "batch_size: [16]\n"),
    "yaml_steps_text": lambda t: _w(t / "run.yaml", "steps: ten\n"),
    "yaml_model_only": lambda t: _w(t / "run.yaml", "model: some/model\n"),
    "pred_dir": lambda t: (t / "preds").mkdir(),
    "pred_empty": lambda t: _w(t / "p.jsonl", ""),
    "pred_bad_json": lambda t: _w(t / "p.jsonl", GOOD_PRED + '{"id": "x", "caption": \n'),
    "pred_caption_int": lambda t: _w(t / "p.jsonl", GOOD_PRED + _rows([{"id": "000002", "caption": 5}])),
    "pred_dup": lambda t: _w(t / "p.jsonl", GOOD_PRED + _rows([{"id": "000000", "caption": "again"}])),
    "pred_not_utf8": lambda t: _w(t / "p.jsonl", b'{"id": "000000", "caption": "' + BAD_BYTES + b'"}\n'),
    "pred_other_ids": lambda t: _w(t / "p.jsonl", _rows([{"id": "zzz", "caption": "a"}])),
    "refs_caption_str": lambda t: _w(t / "r.jsonl", _rows([{"id": "000000", "captions": "a dog"}])),
    "refs_dup": lambda t: _w(t / "r.jsonl", GOOD_REFS + _rows([{"id": "000001", "captions": ["again"]}])),
    "refs_objects_str": lambda t: _w(t / "r.jsonl", _rows([{"id": "000000", "captions": ["a"], "objects": "red circle"}])),
    "prefs_bad_json": lambda t: _w(t / "prefs.jsonl", '{"id": "a", "image": "a.png", "chosen": "x", "rejected": "y", "style": "humorous"}\n{"id": \n'),
    "prefs_not_utf8": lambda t: _w(t / "prefs.jsonl", b'{"id": "a", "image": "a.png", "chosen": "' + BAD_BYTES + b'", "rejected": "y", "style": "humorous"}\n'),
    "prefs_csv_not_utf8": lambda t: _w(t / "prefs.csv", b"image,chosen,rejected,style\na.png," + BAD_BYTES + b",y,humorous\n"),
    "prefs_no_chosen": lambda t: _w(t / "prefs.jsonl", _rows([{"image": "a.png", "rejected": "y", "style": "humorous"}])),
    "prefs_missing_images": lambda t: _w(t / "prefs.jsonl", _rows([{"id": f"p{i}", "image": f"gone{i}.png", "chosen": f"a funny circle {i}",
                                                                    "rejected": f"a circle {i}", "style": "humorous"} for i in range(10)])),
    "shapes_manifest_no_image": lambda t: _w(t / "shapes.jsonl", _rows([{"id": "a", "image": "a.png", "objects": []}, {"id": "b", "objects": []}])),
    # configs saved beside earlier outputs (issue 21): another command's, or this command's with other settings
    "caps_other_settings": lambda t: _w(t / "caps.jsonl.config.json", json.dumps({"command": "CaptionConfig", "model": "some/other-model",
                                                                                  "max_new_tokens": 2, "do_sample": True, "temperature": 0.7})),
    "caps_tokens_2": lambda t: _w(t / "caps.jsonl.config.json", json.dumps({"command": "CaptionConfig", "max_new_tokens": 2})),
    "caps_of_evaluate": lambda t: _w(t / "caps.jsonl.config.json", json.dumps({"command": "EvaluateConfig"})),
    "style_train_lr": lambda t: _w(t / "st" / "capalign_config.json", json.dumps({"command": "StyleTrainConfig", "lr": 0.1})),
    "vizer_steps": lambda t: _w(t / "vz" / "capalign_config.json", json.dumps({"command": "VizerTrainConfig", "max_steps": 5})),
    "vizer_of_rl": lambda t: _w(t / "vz" / "capalign_config.json", json.dumps({"command": "RLTrainConfig"})),
    "rl_generations": lambda t: _w(t / "rl" / "capalign_config.json", json.dumps({"command": "RLTrainConfig", "num_generations": 4})),
    "style_sweep_lr": lambda t: _w(t / "ss" / "capalign_config.json", json.dumps({"command": "StyleSweepConfig", "lr": 0.5})),
    "sweep_lr": lambda t: _w(t / "sw" / "capalign_config.json", json.dumps({"command": "SweepConfig", "vizer_lr": 0.5})),
    "nano_checkpoint": lambda t: (_w(t / "nano" / "capalign_config.json", json.dumps({"command": "NanoTrainConfig", "steps": 5})),
                                  _w(t / "nano" / "checkpoints" / "checkpoint-2" / "state.pt", b"weights")),
    "nano_of_vizer": lambda t: (_w(t / "nano" / "capalign_config.json", json.dumps({"command": "VizerTrainConfig"})),
                                _w(t / "nano" / "checkpoints" / "checkpoint-2" / "state.pt", b"weights")),
    "unfinished_model": lambda t: (_w(t / "unf" / "capalign_unfinished.json", "{}\n"), _w(t / "unf" / "config.json", '{"model_type": "idefics3"}\n')),
    "run_broken_index": lambda t: _w(t / "run" / "index.json", "{broken\n"),
    "karpathy": lambda t: R.karpathy_coco(t / "k"),
    "coco_mismatch": _coco_mismatch,
    "coco_no_images": lambda t: (R.coco_annotations(t / "coco"), shutil.rmtree(t / "coco" / "val2017")),
    "flickr_token": lambda t: R.flickr_token(t / "results_20130124.token"),
    "kaggle_bad": _kaggle_bad,
    "hf_val_test": lambda t: R.hf_coco_caption2017_on_disk(t / "hf"),
    "results_dup": lambda t: _w(t / "dup.json", json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}])),
    "newyorker_from_pixels": lambda t: __import__("capalign.data.style_fixtures", fromlist=["x"]).write_newyorker(t / "ny", "matching_from_pixels"),
    "test_refs_bad": lambda t: (shutil.copytree(DATA_DIR[0], t / "test"),
                                _w(t / "test" / "manifest.jsonl", _rows([{"id": "000000", "image": "images/000000.png", "captions": "a dog"}]))),
}
DATA_DIR: list[Path] = []  # set by the `env` fixture (the copy of {data} for test_refs_bad)

CAPTION = "caption --model {model} --images {data} --out {tmp}/caps.jsonl --max_new_tokens 2"
EVALUATE = "evaluate --pred {tmp}/p.jsonl --refs {tmp}/r.jsonl --out {tmp}/res.json"
SHAPES = "shapes --out {tmp}/ds --n 2"
NANO = "nano train --out {tmp}/nano --steps 1 --n_train 2 --n_val 1"
NANO_VISION = "nano vision --out {tmp}/nv --steps 1 --n_train 4 --batch_size 2 --probe_train 4 --probe_test 2 --lit_steps 1"
NANO_PROBE = "nano probe --model {model} --probe_train 4 --probe_test 2 --lit_steps 1"
MAPPER = "mapper train --model {model} --data {data} --out {tmp}/mapper --samples 4 --width 8 --max_new_tokens 2"
VIZER = "vizer train --model {model} --mapper {mapper} --images {data} --out {tmp}/vz --max_steps 1 --batch_size 2 --max_new_tokens 2"
SWEEP = "vizer sweep --model {model} --mapper_data {data} --images {data} --test {data} --out {tmp}/sw --widths 8 --sizes 4"
STUDY = "vizer study --out {tmp}/st --nano_steps 1 --web_steps 1"
STYLE_PAIRS = "style pairs --data shapes:4 --out {tmp}/pairs --style humorous"
STYLE_CLASSIFIER = "style classifier --data shapes:4 --out {tmp}/clf"
STYLE_WRLOGP = "style wrlogp --model {model} --data shapes:4 --style humorous --device cpu --out {tmp}/wr.json"
STYLE_TRAIN = "style train --model {model} --data shapes:10 --style humorous --max_steps 1 --batch_size 2 --device cpu --report_to none --out {tmp}/st"
STYLE_SWEEP = ("style sweep --model {model} --data shapes:10 --methods sft --styles humorous --budgets 50%,100% --seeds 1 --n_test 2 "
               "--steps 1 --batch_size 2 --max_new_tokens 2 --out {tmp}/ss")
RL = "rl train --model {model} --data {data} --out {tmp}/rl --batch_size 2 --num_generations 2 --max_new_tokens 2 --max_steps 1 --save_every 0"
JUDGE = "judge --judge {model} --pred {tmp}/p.jsonl --refs {data}/manifest.jsonl --device cpu --out {tmp}/j.json"
JUDGE_TRAIN = "judge train --out {tmp}/jt --steps 1 --n_train 4 --n_val 2"
CALIBRATE = "judge calibrate --judge {model} --refs {data}/manifest.jsonl --device cpu --limit 2 --out {tmp}/cal.json"
STUDY_RECIPE = "study {tmp}/run.yaml --out {tmp}/st"
ESTIMATE = "estimate {tmp}/run.yaml"
DIAGNOSE = "vizer diagnose --model {model} --mappers {mapper} --data {data} --out {tmp}/diag.json"


def _with(base: str, **flags) -> str:
    """`base` with some flags replaced (or added)."""
    words = base.split()
    for k, v in flags.items():
        flag = "--" + k
        if flag in words:
            words[words.index(flag) + 1] = v
        else:
            words += [flag, v]
    return " ".join(words)


ROWS = [
    # ------------------------------------------------------------------ caption
    (_with(CAPTION, images="{tmp}/nope"), "none", "image source not found: {tmp}/nope"),
    (_with(CAPTION, images="{tmp}/notes.txt"), "notes_txt", "unsupported file type .txt"),
    (_with(CAPTION, images="{tmp}/empty"), "empty_dir", "no images found in {tmp}/empty"),
    (_with(CAPTION, images="{tmp}/m.jsonl"), "manifest_bad_json", "{tmp}/m.jsonl line 2: invalid JSON"),
    (_with(CAPTION, images="{tmp}/m.jsonl"), "manifest_dup", "duplicate id 'a' (lines 1 and 2)"),
    (_with(CAPTION, images="{tmp}/m.jsonl"), "manifest_id_list", "line 1: 'id' must be a string or an integer"),
    (_with(CAPTION, images="{tmp}/m.jsonl"), "manifest_image_int", "line 1: 'image' must be a path string"),
    (_with(CAPTION, images="{tmp}/m.jsonl"), "manifest_not_utf8", "{tmp}/m.jsonl line 1: not UTF-8 text"),
    (_with(CAPTION, images="{tmp}/m.csv"), "csv_extra_cells", "{tmp}/m.csv line 2: 3 cells, but the header has 2 columns"),
    (_with(CAPTION, images="{tmp}/m.csv"), "csv_not_utf8", "{tmp}/m.csv: not UTF-8 text"),
    (_with(CAPTION, model="{tmp}/nope"), "none", "model path not found: {tmp}/nope"),
    (_with(CAPTION, model="{tmp}/model.bin"), "model_file", "model path is a file, not a model folder"),
    (_with(CAPTION, model="{data}"), "none", "cannot load model"),
    (_with(CAPTION, adapter="{tmp}/nope"), "none", "adapter folder not found: {tmp}/nope"),
    (_with(CAPTION, adapter="{tmp}/adapter"), "not_adapter", "{tmp}/adapter is not a PEFT adapter (no adapter_config.json)"),
    (_with(CAPTION, adapter="{adapter_qwen}"), "none", "adapter {adapter_qwen} does not fit model {model}"),
    (_with(CAPTION, out="{tmp}"), "none", "out must be a file path"),
    (_with(CAPTION, out="{tmp}/afile/caps.jsonl"), "none", "cannot write --out {tmp}/afile/caps.jsonl: {tmp}/afile is a file, not a folder"),
    (_with(CAPTION, out="/sys/capalign-test/caps.jsonl"), "none", "/sys/capalign-test"),
    (_with(CAPTION, out="/proc/none/x.jsonl"), "none", "cannot write --out /proc/none/x.jsonl"),  # issue 21: a traceback for root
    (CAPTION, "out_not_captions", "cannot resume into --out {tmp}/caps.jsonl: {tmp}/caps.jsonl line 1: invalid JSON"),
    (CAPTION, "out_not_utf8", "cannot resume into --out {tmp}/caps.jsonl: {tmp}/caps.jsonl line 1: not UTF-8 text"),
    # issue 21: an existing --out is resumed only when it is this command's, with the same settings
    (_with(CAPTION, out="{tmp}/r.jsonl"), "none", "cannot resume into --out {tmp}/r.jsonl: {tmp}/r.jsonl line 1: missing 'caption'"),
    (_with(CAPTION, out="{data}/manifest.jsonl"), "none", "cannot resume into --out {data}/manifest.jsonl: {data}/manifest.jsonl line 1: missing 'caption'"),
    (_with(CAPTION, out="{tmp}/p.jsonl"), "none", "cannot resume into --out {tmp}/p.jsonl: it was not written by `capalign caption`"),
    (CAPTION, "caps_other_settings", 'was made with other settings (model: "some/other-model" before'),
    (_with(CAPTION, max_new_tokens="3"), "caps_tokens_2", "--out {tmp}/caps.jsonl was made with other settings (max_new_tokens: 2 before, 3 now)"),
    (CAPTION, "caps_of_evaluate", "--out {tmp}/caps.jsonl holds another command's output"),
    (_with(CAPTION, prompt="a_{{style}}_one"), "none", "--prompt 'a_{{style}}_one' has {{style}}, but nothing here fills it"),
    (_with(CAPTION, out="{tmp}/m.jsonl", images="{tmp}/m.jsonl"), "manifest_dup", "--out {tmp}/m.jsonl is also the input --images"),
    (CAPTION + " --config {tmp}/run.yaml", "yaml_malformed", "config file {tmp}/run.yaml is not valid YAML"),
    (CAPTION + " --config {tmp}/run.yaml", "yaml_not_utf8", "config file {tmp}/run.yaml is not UTF-8 text"),
    (CAPTION + " --config {tmp}/run.yaml", "yaml_bad_type", "{tmp}/run.yaml: batch_size: expected an integer, got [16]"),
    (_with(CAPTION, batch_size="0"), "none", "batch_size must be > 0, got 0"),
    (_with(CAPTION, batch_size="many"), "none", "argument --batch_size: invalid int value: 'many'"),
    (_with(CAPTION, dtype="float64"), "none", "dtype must be one of"),
    (_with(CAPTION, format="csv"), "none", "format must be jsonl or coco, got 'csv'"),
    (_with(CAPTION, format="coco", out="{tmp}/res.json"), "none", "{tmp}/res.json: a COCO results file is a JSON array"),
    (_with(CAPTION, split="test"), "none", "has no splits (only HF datasets and Karpathy files do); drop --split test"),
    (_with(CAPTION, images="{tmp}/k/dataset_coco.json", split="validation"), "karpathy", "has no split 'validation'; its splits: test (3), val (1)"),
    (_with(CAPTION, images="{tmp}/k/dataset_coco.json"), "karpathy", "holds several splits: test (3), val (1), restval (2), train (2); choose one with --split"),
    (_with(CAPTION, images="{tmp}/coco/annotations/captions_val2017.json"), "coco_mismatch", "annotations[3] has image_id 999, which is not among the file's 8 images"),
    (_with(CAPTION, images="{tmp}/coco/annotations/captions_val2017.json"), "coco_no_images", "cannot find the images of {tmp}/coco/annotations/captions_val2017.json"),
    (_with(CAPTION, images="{tmp}/results_20130124.token"), "flickr_token", "is a Flickr30k caption file (references: --refs), not an image source"),
    (_with(CAPTION, images="{tmp}/hf"), "hf_val_test", "{tmp}/hf holds several splits: val (6), test (2); choose one with --split"),
    # ------------------------------------------------------------------ evaluate
    (_with(EVALUATE, pred="{tmp}/nope.jsonl"), "none", "predictions file not found: {tmp}/nope.jsonl"),
    (_with(EVALUATE, pred="{tmp}/preds"), "pred_dir", "predictions file {tmp}/preds is not a file"),
    (EVALUATE, "pred_empty", "predictions file {tmp}/p.jsonl has no rows"),
    (EVALUATE, "pred_bad_json", "{tmp}/p.jsonl line 3: invalid JSON"),
    (EVALUATE, "pred_caption_int", "{tmp}/p.jsonl line 3: 'caption' must be a string, got 5 (a number)"),
    (EVALUATE, "pred_dup", "{tmp}/p.jsonl: duplicate id '000000' (lines 1 and 3)"),
    (EVALUATE, "pred_not_utf8", "{tmp}/p.jsonl line 1: not UTF-8 text"),
    (EVALUATE, "pred_other_ids", "no prediction id matches a reference id"),
    (EVALUATE, "refs_caption_str", "{tmp}/r.jsonl line 1: 'captions' must be a non-empty list of strings, got \"a dog\" (a string)"),
    (EVALUATE, "refs_dup", "{tmp}/r.jsonl: duplicate id '000001' (lines 2 and 3)"),
    (_with(EVALUATE, metrics="degenerate", degenerate_vocabulary="french"), "none", "unknown degenerate_vocabulary 'french'"),
    (EVALUATE, "refs_objects_str", "{tmp}/r.jsonl line 1: 'objects' must be a list"),
    (_with(EVALUATE, refs="{tmp}/nope.jsonl"), "none", "references file not found: {tmp}/nope.jsonl"),
    (_with(EVALUATE, split="test"), "none", "{tmp}/r.jsonl has no splits"),
    (_with(EVALUATE, refs="{tmp}/k/dataset_coco.json", split="validation"), "karpathy", "has no split 'validation'; its splits: test (3)"),
    (_with(EVALUATE, refs="{tmp}/k/dataset_coco.json"), "karpathy", "holds several splits: test (3), val (1), restval (2), train (2)"),
    (_with(EVALUATE, refs="{tmp}/coco/annotations/captions_val2017.json"), "coco_mismatch", "has image_id 999, which is not among the file's 8 images"),
    (_with(EVALUATE, refs="{tmp}/hf", split="val", caption_column="height"), "hf_val_test", "caption column 'height' of {tmp}/hf holds int32, not text"),
    (_with(EVALUATE, refs="{tmp}/hf", split="test"), "hf_val_test", "no references in {tmp}/hf: none of its 2 rows has a caption"),
    (_with(EVALUATE, refs="{tmp}/flickr30k_images/results.csv"), "kaggle_bad", "results.csv line 3: expected 'image_name| comment_number| comment'"),
    (_with(EVALUATE, pred="{tmp}/dup.json"), "results_dup", "{tmp}/dup.json: image_id 1 appears twice"),
    (_with(EVALUATE, refs="{tmp}/dup.json"), "results_dup", "{tmp}/dup.json is a COCO results file (predictions); pass it as --pred"),
    (_with(EVALUATE, out="{tmp}/afile/res.json"), "none", "{tmp}/afile is a file, not a folder"),
    (_with(EVALUATE, out="{tmp}"), "none", "out must be a file path"),
    (_with(EVALUATE, out="{tmp}/r.jsonl"), "none", "--out {tmp}/r.jsonl is also the input --refs"),
    (_with(EVALUATE, out="{tmp}/p.jsonl"), "none", "--out {tmp}/p.jsonl is also the input --pred"),
    (_with(EVALUATE, out="/proc/none/res.json"), "none", "cannot write --out /proc/none/res.json"),
    (_with(EVALUATE, metrics="bleu,meteor"), "none", "unknown metric(s) meteor"),
    (_with(EVALUATE, metrics="bertscore", bertscore_model="{tmp}/nope"), "none", "bertscore needs model"),
    (EVALUATE + " --config {tmp}/run.yaml", "yaml_unknown", "unknown field(s) in {tmp}/run.yaml: bogus_field"),
    (_with(EVALUATE, metrics="style", style="humorous"), "none", "the style metric needs --style (e.g. humorous) and --style_classifier"),
    (_with(EVALUATE, metrics="style", style="humorous", style_classifier="{tmp}/empty"), "empty_dir", "style classifier not found: {tmp}/empty"),
    # ------------------------------------------------------------------ shapes
    (_with(SHAPES, out="{tmp}/afile/ds"), "none", "{tmp}/afile is a file, not a folder"),
    (_with(SHAPES, out="{tmp}/afile"), "none", "{tmp}/afile/images: Not a directory"),
    (_with(SHAPES, out="/proc/none/ds"), "none", "cannot write --out /proc/none/ds"),
    (_with(SHAPES, n="0"), "none", "n must be >= 1, got 0"),
    (_with(SHAPES, n="abc"), "none", "argument --n: invalid int value: 'abc'"),
    (_with(SHAPES, image_size="8"), "none", "image_size must be in [16, 4096]"),
    (_with(SHAPES, split="a/b"), "none", "split must be alphanumeric"),
    (SHAPES + " --config {tmp}/run.yaml", "yaml_list", "must hold a mapping of field: value, got list"),
    (SHAPES + " --config {tmp}/run.yaml", "yaml_not_utf8", "is not UTF-8 text"),
    # ------------------------------------------------------------------ nano train
    (_with(NANO, out="{tmp}/afile/nano"), "none", "{tmp}/afile is a file, not a folder"),
    (_with(NANO, out="{tmp}/afile"), "none", "{tmp}/afile: File exists"),
    (_with(NANO, mode="fancy"), "none", "mode must be clean, web or styled, got 'fancy'"),
    (_with(NANO, steps="0"), "none", "steps must be >= 1"),
    (_with(NANO, text_model="gpt"), "none", "text_model must be nano or smollm2"),
    (_with(NANO, init_from="{tmp}/nope"), "none", "model path not found: {tmp}/nope"),
    (_with(NANO, init_from="{data}"), "none", "cannot load model"),
    (NANO, "nano_checkpoint", "--out {tmp}/nano was made with other settings (steps: 5 before, 1 now)"),
    (NANO, "nano_of_vizer", "--out {tmp}/nano holds another command's output"),
    (_with(NANO, save_every="-1"), "none", "save_every must be >= 0"),
    (_with(CAPTION, model="{tmp}/unf"), "unfinished_model", "{tmp}/unf is an unfinished model: its training run was interrupted"),
    (NANO + " --config {tmp}/run.yaml", "yaml_steps_text", "{tmp}/run.yaml: steps: expected an integer, got 'ten'"),
    (_with(NANO, vision_from="{tmp}/nope"), "none", "--vision_from {tmp}/nope: not a `capalign nano vision` folder"),
    (_with(NANO, vision_from="{model}"), "none", "not a `capalign nano vision` folder (no nano_vision.json)"),
    # ------------------------------------------------------------------ nano vision / nano probe
    (_with(NANO_VISION, loss="hinge"), "none", "loss must be sigmoid or infonce, got 'hinge'"),
    (_with(NANO_VISION, steps="0"), "none", "steps must be >= 1"),
    (_with(NANO_VISION, probe_test="0"), "none", "probe_test must be >= 1"),
    (_with(NANO_VISION, compare="{tmp}/nope"), "none", "model path not found: {tmp}/nope"),
    (_with(NANO_VISION, compare="{qwen}"), "none", "probes read nano (Idefics3) vision towers; this is a qwen2_vl model"),
    (_with(NANO_VISION, out="{tmp}/afile/nv"), "none", "{tmp}/afile is a file, not a folder"),
    ("nano probe --lit_steps 1", "none", "--model is required"),
    (_with(NANO_PROBE, model="{tmp}/nope"), "none", "model path not found: {tmp}/nope"),
    (_with(NANO_PROBE, model="{qwen}"), "none", "probes read nano (Idefics3) vision towers; this is a qwen2_vl model"),
    (_with(NANO_PROBE, probe_train="0"), "none", "probe_train must be >= 1"),
    (_with(NANO_PROBE, lit_steps="-1"), "none", "lit_steps must be >= 0"),
    # ------------------------------------------------------------------ mapper train
    (_with(MAPPER, model="{tmp}/nope"), "none", "model path not found: {tmp}/nope"),
    (_with(MAPPER, data="{tmp}/nope"), "none", "image source not found: {tmp}/nope"),
    (_with(MAPPER, data="{tmp}/empty"), "empty_dir", "no images found in {tmp}/empty"),
    (_with(MAPPER, data="{tmp}/m.jsonl"), "manifest_not_utf8", "{tmp}/m.jsonl line 1: not UTF-8 text"),
    (_with(MAPPER, data="{tmp}/m.csv"), "csv_extra_cells", "3 cells, but the header has 2 columns"),
    (_with(MAPPER, data="{images}"), "none", "no usable (image, caption) pairs in {images} (variant gt needs captions)"),
    (_with(MAPPER, variant="gtx"), "none", "variant must be gt or g, got 'gtx'"),
    (_with(MAPPER, out="{tmp}/afile/mapper"), "none", "{tmp}/afile is a file, not a folder"),
    (MAPPER + " --config {tmp}/run.yaml", "yaml_malformed", "is not valid YAML"),
    # ------------------------------------------------------------------ vizer train
    (_with(VIZER, mapper="{tmp}/nope"), "none", "not a mapper folder (no mapper_meta.json): {tmp}/nope"),
    (_with(VIZER, mapper="{adapter_qwen}"), "none", "not a mapper folder (no mapper_meta.json)"),
    (_with(VIZER, mapper="{mapper_other}"), "none", "train the mapper on this model"),
    (_with(VIZER, images="{tmp}/nope"), "none", "image source not found: {tmp}/nope"),
    (_with(VIZER, images="{tmp}/empty"), "empty_dir", "no images found in {tmp}/empty"),
    (_with(VIZER, images="{tmp}/m.jsonl"), "manifest_bad_json", "{tmp}/m.jsonl line 2: invalid JSON"),
    (_with(VIZER, batch_size="64"), "none", "8 images are fewer than one batch of 64"),
    (_with(VIZER, batch_size="3", grad_accum="2"), "none", "batch_size must be divisible by grad_accum"),
    (_with(VIZER, out="{tmp}/afile/vz"), "none", "{tmp}/afile is a file, not a folder"),
    (_with(VIZER, model="{tmp}/nope"), "none", "model path not found: {tmp}/nope"),
    (VIZER, "vizer_steps", "--out {tmp}/vz was made with other settings (max_steps: 5 before, 1 now)"),
    (VIZER, "vizer_of_rl", "--out {tmp}/vz holds another command's output"),
    ("vizer train --config {tmp}/run.yaml", "yaml_model_only", "the following arguments are required: --mapper, --images, --out"),
    # ------------------------------------------------------------------ vizer sweep
    (_with(SWEEP, test="{tmp}/nope"), "none", "references file not found: {tmp}/nope"),
    (_with(SWEEP, test="{tmp}/test"), "test_refs_bad", "{tmp}/test/manifest.jsonl line 1: 'captions' must be a non-empty list of strings"),
    (_with(SWEEP, widths="8,x"), "none", "widths and sizes must be comma-separated positive integers"),
    (_with(SWEEP, out="{tmp}/afile/sw"), "none", "{tmp}/afile is a file, not a folder"),
    (_with(SWEEP, images="{tmp}/nope"), "none", "image source not found: {tmp}/nope"),
    (SWEEP, "sweep_lr", "--out {tmp}/sw was made with other settings (vizer_lr: 0.5 before, 0.0001 now)"),
    # ------------------------------------------------------------------ vizer study
    (_with(STUDY, out="{tmp}/afile/st"), "none", "{tmp}/afile is a file, not a folder"),
    (_with(STUDY, out="{tmp}/afile"), "none", "{tmp}/afile: File exists"),
    (_with(STUDY, n_test="many"), "none", "argument --n_test: invalid int value: 'many'"),
    (STUDY + " --config {tmp}/run.yaml", "yaml_unknown", "unknown field(s) in {tmp}/run.yaml: bogus_field"),
    # ------------------------------------------------------------------ vizer diagnose
    (_with(DIAGNOSE, mappers="{tmp}/nope"), "none", "not a mapper folder (no mapper_meta.json): {tmp}/nope"),
    (_with(DIAGNOSE, mappers="{mapper_other}"), "none", "it was trained on another model"),
    (_with(DIAGNOSE, out="{tmp}/afile/diag.json"), "none", "{tmp}/afile is a file, not a folder"),
    (_with(DIAGNOSE, corruptions="words"), "none", "corruptions must be auto, shapes or text, got 'words'"),
    (_with(DIAGNOSE, corruptions="text", nouns="{tmp}/nope.txt"), "none", "noun list not found: {tmp}/nope.txt"),
    (_with(DIAGNOSE, corruptions="text", colours="red,blue!"), "none", "colour list not found: red,blue!"),
    (_with(DIAGNOSE, corruptions="text", nouns="{tmp}/nouns.txt"), "nouns_bad", "{tmp}/nouns.txt line 2: 'red-ish' is not"),
    (_with(DIAGNOSE, data="{images}", corruptions="text"), "none", "no image has a caption"),
    (_with(DIAGNOSE, data="{images}", corruptions="shapes"), "none", "rows need `objects` (a shapes-world manifest)"),
    # ------------------------------------------------------------------ judge, judge train
    (JUDGE, "pred_bad_json", "{tmp}/p.jsonl line 3: invalid JSON"),
    (JUDGE, "pred_dup", "{tmp}/p.jsonl: duplicate id '000000' (lines 1 and 3)"),
    (JUDGE, "pred_not_utf8", "{tmp}/p.jsonl line 1: not UTF-8 text"),
    (_with(JUDGE, judge="{tmp}/nope"), "none", "model path not found: {tmp}/nope"),
    (_with(JUDGE, out="{tmp}/p.jsonl"), "none", "--out {tmp}/p.jsonl is also the input --pred"),
    (_with(JUDGE, prompt="{{reference}}:{{caption}}:{{style}}"), "none", "judge prompt '{{reference}}:{{caption}}:{{style}}' has {{style}}"),
    (_with(JUDGE, prompt="grade"), "none", "judge prompt lacks the {{reference}} and {{caption}} placeholder"),
    (_with(JUDGE_TRAIN, n_train="1"), "none", "n_train"),
    (_with(JUDGE_TRAIN, out="{tmp}/afile/jt"), "none", "{tmp}/afile is a file, not a folder"),
    (JUDGE_TRAIN + " --config {tmp}/run.yaml", "yaml_malformed", "{tmp}/run.yaml"),
    (_with(JUDGE_TRAIN, degenerate_share="1"), "none", "degenerate_share must be in [0, 1), got 1.0"),
    (_with(JUDGE_TRAIN, web_grading="loose"), "none", "unknown web_grading 'loose'; expected fixed or content"),
    # ------------------------------------------------------------------ judge calibrate
    (_with(CALIBRATE, judge="{tmp}/nope"), "none", "model path not found: {tmp}/nope"),
    (_with(CALIBRATE, limit="1"), "none", "limit must be >= 2"),
    (_with(CALIBRATE, prompt="grade"), "none", "judge prompt lacks the {{reference}} and {{caption}} placeholder"),
    (_with(CALIBRATE, refs="{tmp}/r.jsonl"), "refs_caption_str", "{tmp}/r.jsonl line 1: 'captions' must be a non-empty list of strings"),
    (_with(CALIBRATE, refs="{tmp}/r.jsonl", limit="5"), "refs_dup", "{tmp}/r.jsonl: duplicate id '000001' (line 3)"),
    (_with(CALIBRATE, refs="{tmp}/r.jsonl"), "none", "calibration needs images for at least 2 reference rows, found 0 readable"),
    (_with(CALIBRATE, refs="{tmp}/nope.jsonl"), "none", "references file not found: {tmp}/nope.jsonl"),
    (_with(CALIBRATE, out="{tmp}/afile/cal.json"), "none", "{tmp}/afile"),
    # ------------------------------------------------------------------ study, estimate (recipes)
    (STUDY_RECIPE, "yaml_malformed", "{tmp}/run.yaml"),
    (STUDY_RECIPE, "yaml_list", "{tmp}/run.yaml"),
    (STUDY_RECIPE, "yaml_unknown", "unknown stage 'bogus_field'"),
    (_with(STUDY_RECIPE, out="{tmp}/afile/st"), "none", "{tmp}/afile is a file, not a folder"),
    (ESTIMATE, "yaml_malformed", "{tmp}/run.yaml"),
    (ESTIMATE, "yaml_unknown", "unknown stage 'bogus_field'"),
    ("estimate {tmp}/nope.yaml", "none", "{tmp}/nope.yaml"),
    # ------------------------------------------------------------------ publish (refused before any token lookup or upload)
    ("publish {tmp}/nope --repo_id me/x", "none", "{tmp}/nope is not a trained folder"),
    ("publish {tmp}/empty --repo_id me/x", "empty_dir", "{tmp}/empty is not a trained folder"),
    # ------------------------------------------------------------------ rl train
    (_with(RL, num_generations="1"), "none", "num_generations (samples per image) must be >= 2"),
    (_with(RL, reward="bleu"), "none", "unknown reward 'bleu'"),
    (_with(RL, reward="cider:x"), "none", "reward weight 'x' in 'cider:x' is not a number"),
    (_with(RL, reward="cider:nan,grounding"), "none", "must be a finite number"),
    (_with(RL, reward="judge"), "none", "the judge reward needs a judge model (--judge MODEL)"),
    (_with(RL, reward="judge", judge="{tmp}/nope"), "none", "model path not found: {tmp}/nope"),
    (_with(RL, reward="judge", judge="{model}", judge_prompt="grade"), "none", "judge prompt lacks the {{reference}} and {{caption}} placeholder"),
    (_with(RL, data="{images}"), "none", "needs reference captions, but 3 of 3 images have none"),
    (_with(RL, data="{images}", reward="grounding"), "none", "needs object annotations ('objects'), but 3 of 3 images have none"),
    (_with(RL, data="{tmp}/nope"), "none", "image source not found: {tmp}/nope"),
    (_with(RL, batch_size="64"), "none", "8 images are fewer than one batch of 64"),
    (_with(RL, out="{tmp}/afile/rl"), "none", "{tmp}/afile is a file, not a folder"),
    (_with(RL, out="{tmp}/afile"), "none", "{tmp}/afile: File exists"),
    (RL, "rl_generations", "--out {tmp}/rl was made with other settings (num_generations: 4 before, 2 now)"),
    (RL + " --config {tmp}/run.yaml", "yaml_unknown", "unknown field(s) in {tmp}/run.yaml: bogus_field"),
    # ------------------------------------------------------------------ report
    ("report {tmp}/nope", "none", "{tmp}/nope is not a folder"),
    ("report {tmp}/afile", "none", "{tmp}/afile is not a folder"),
    ("report {tmp}/empty", "empty_dir", "{tmp}/empty is not a capalign run folder (it has no index.json"),
    ("report {tmp}/run", "run_broken_index", "{tmp}/run/index.json is not valid JSON"),
    ("report {tmp}/empty --max_images -1", "empty_dir", "max_images must be >= 0, got -1"),
    ("report {tmp}/empty --out {tmp}/afile/report", "empty_dir", "{tmp}/afile is a file, not a folder"),
    # ------------------------------------------------------------------ style pairs / classifier / wrlogp
    (_with(STYLE_PAIRS, data="{tmp}/nope"), "none", "preference data not found: {tmp}/nope"),
    (_with(STYLE_PAIRS, data="{tmp}/prefs.jsonl"), "prefs_bad_json", "{tmp}/prefs.jsonl line 2: invalid JSON"),
    (_with(STYLE_PAIRS, data="{tmp}/prefs.jsonl"), "prefs_not_utf8", "{tmp}/prefs.jsonl line 1: not UTF-8 text"),
    (_with(STYLE_PAIRS, data="{tmp}/prefs.csv"), "prefs_csv_not_utf8", "{tmp}/prefs.csv: not UTF-8 text"),
    (_with(STYLE_PAIRS, data="{tmp}/prefs.jsonl"), "prefs_no_chosen", "{tmp}/prefs.jsonl: missing column(s) chosen"),
    (_with(STYLE_PAIRS, data="{tmp}/shapes.jsonl"), "shapes_manifest_no_image", "{tmp}/shapes.jsonl line 2: a shapes-world row needs an 'image' path"),
    (_with(STYLE_PAIRS, data="shapes:x"), "none", "bad shapes spec 'shapes:x'"),
    (_with(STYLE_PAIRS, data="{tmp}/ny"), "newyorker_from_pixels", "is a New Yorker caption contest `_from_pixels` config: it has the cartoons"),
    (_with(STYLE_PAIRS, style="sarcastic"), "none", "no 'sarcastic' pairs in shapes:4"),
    (_with(STYLE_PAIRS, out="{tmp}/afile/pairs"), "none", "{tmp}/afile is a file, not a folder"),
    (_with(STYLE_CLASSIFIER, data="{tmp}/empty"), "empty_dir", "cannot tell what preference data {tmp}/empty holds"),
    ("style classifier --data shapes:4 --classifier {tmp}/empty", "empty_dir", "style classifier not found: {tmp}/empty"),
    (_with(STYLE_CLASSIFIER, classifier="{tmp}/empty"), "empty_dir", "give exactly one of --out (train a classifier) or --classifier"),
    (_with(STYLE_WRLOGP, model="{tmp}/nope"), "none", "model path not found: {tmp}/nope"),
    (_with(STYLE_WRLOGP, model="{data}"), "none", "cannot load model"),
    (_with(STYLE_WRLOGP, adapter="{adapter_qwen}"), "none", "does not fit model"),
    # ------------------------------------------------------------------ style train
    (_with(STYLE_TRAIN, budget="500"), "none", "budget 500 pairs is larger than the"),
    (_with(STYLE_TRAIN, budget="1%"), "none", "below one pair"),
    (_with(STYLE_TRAIN, budget="0"), "none", "budget 0 is below one pair"),
    (_with(STYLE_TRAIN, budget="ten"), "none", "budget 'ten' is not a percentage like '10%' or a pair count"),
    (_with(STYLE_TRAIN, method="ppo"), "none", "unknown method 'ppo'"),
    (_with(STYLE_TRAIN, method="zero-shot", push_to_hub="me/x"), "none", "zero-shot trains no adapter, there is nothing to upload"),
    (_with(STYLE_TRAIN, method="simpo", backend="trl"), "none", "--backend trl covers sft and dpo only"),
    (_with(STYLE_TRAIN, method="sft", sft_weight="1"), "none", "sft_weight must be >= 0 and is for dpo and simpo"),
    (_with(STYLE_TRAIN, style="gothic"), "none", "no 'gothic' pairs in shapes:10"),
    (_with(STYLE_TRAIN, data="{tmp}/prefs.jsonl"), "prefs_missing_images", "10 pairs were skipped (e.g. p0: image not found: {tmp}/gone0.png)"),
    (_with(STYLE_TRAIN, data="{tmp}/prefs.jsonl"), "prefs_not_utf8", "{tmp}/prefs.jsonl line 1: not UTF-8 text"),
    (_with(STYLE_TRAIN, model="{tmp}/nope"), "none", "model path not found: {tmp}/nope"),
    (_with(STYLE_TRAIN, model="{adapter_qwen}"), "none", "cannot load model"),
    (_with(STYLE_TRAIN, out="{tmp}/afile/st"), "none", "{tmp}/afile is a file, not a folder"),
    (_with(STYLE_TRAIN, batch_size="3", grad_accum="2"), "none", "batch_size must be divisible by grad_accum"),
    (_with(STYLE_TRAIN, beta="-1"), "none", "beta must be > 0"),
    (STYLE_TRAIN, "style_train_lr", "--out {tmp}/st was made with other settings (lr: 0.1 before, 0.0005 now)"),
    (STYLE_TRAIN + " --config {tmp}/run.yaml", "yaml_unknown", "unknown field(s) in {tmp}/run.yaml: bogus_field"),
    # ------------------------------------------------------------------ style sweep
    (_with(STYLE_SWEEP, methods="sft,ppo"), "none", "unknown method(s) ppo"),
    (_with(STYLE_SWEEP, methods="zero-shot"), "none", "unknown method(s) zero-shot"),
    (_with(STYLE_SWEEP, budgets="1%,100%"), "none", "budget 1% of 8 train pairs is 0.08 pairs, below one pair"),
    (_with(STYLE_SWEEP, budgets="10,20"), "none", "budgets must be percentages"),
    (_with(STYLE_SWEEP, budgets="50%,20%"), "none", "budgets must be strictly increasing"),
    (_with(STYLE_SWEEP, styles="humorous,gothic"), "none", "no 'gothic' pairs in shapes:10"),
    (_with(STYLE_SWEEP, seeds="0"), "none", "seeds must be >= 1"),
    (_with(STYLE_SWEEP, steps="-1"), "none", "steps and min_steps must be >= 0"),
    (_with(STYLE_SWEEP, collapse_share="2"), "none", "collapse_share must be in [0, 1], got 2.0"),
    (_with(STYLE_SWEEP, sft_weight="-1"), "none", "sft_weight must be >= 0, got -1.0"),
    (_with(STYLE_SWEEP, model="{tmp}/nope"), "none", "model path not found: {tmp}/nope"),
    (_with(STYLE_SWEEP, model="{adapter_qwen}"), "none", "cannot load model"),
    (_with(STYLE_SWEEP, classifier="{tmp}/empty"), "empty_dir", "style classifier not found: {tmp}/empty"),
    (_with(STYLE_SWEEP, styles="romantic", classifier="{clf_humorous}"), "none", "it cannot measure 'romantic'"),
    (_with(STYLE_SWEEP, data="{tmp}/prefs.jsonl"), "prefs_bad_json", "{tmp}/prefs.jsonl line 2: invalid JSON"),
    (_with(STYLE_SWEEP, out="{tmp}/afile/ss"), "none", "{tmp}/afile is a file, not a folder"),
    (_with(STYLE_SWEEP, test_share="0"), "none", "no 'humorous' test pairs"),
    (STYLE_SWEEP, "style_sweep_lr", "--out {tmp}/ss was made with other settings (lr: 0.5 before, 0.002 now)"),
    # ------------------------------------------------------------------ no command
    ("vizer fly", "none", "unknown command 'vizer fly'"),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_idefics3_path, tiny_qwen2_vl_path):
    """The shared inputs (see the module docstring); rows must never change them."""
    import torch
    from peft import get_peft_model

    from capalign.data.shapes import write_dataset
    from capalign.models import load_vlm
    from capalign.training.lora import lora_config
    from capalign.vizer.mapper import Mapper

    root = tmp_path_factory.mktemp("bad_input_env")
    data = write_dataset(root / "data", 8)
    DATA_DIR[:] = [data]
    images = root / "images"
    images.mkdir()
    for p in sorted((data / "images").iterdir())[:3]:
        shutil.copy(p, images / p.name)
    qwen = load_vlm(str(tiny_qwen2_vl_path), device="cpu")
    get_peft_model(qwen.model, lora_config(qwen, r=2, alpha=4)).save_pretrained(root / "adapter_qwen")
    vlm = load_vlm(str(tiny_idefics3_path), device="cpu")
    meta = {"variant": "gt", "pooling": vlm.pooling, "prompt": vlm.prompt, "center": False}
    for name, (d_in, d_out) in {"mapper": (vlm.text_hidden_size, vlm.vision_hidden_size), "mapper_other": (7, 5)}.items():
        torch.manual_seed(0)
        Mapper(d_in, d_out, width=8).save_pretrained(root / name)
        (root / name / "mapper_meta.json").write_text(json.dumps(meta))
    from capalign.data.preferences import open_preferences
    from capalign.metrics.style import classifier_data
    from capalign.metrics.style_classifier import StyleClassifier

    StyleClassifier.fit(*classifier_data(open_preferences("shapes:10", "humorous").train)).save_pretrained(root / "clf_humorous")
    return {"clf_humorous": str(root / "clf_humorous"), "model": str(tiny_idefics3_path), "qwen": str(tiny_qwen2_vl_path), "data": str(data), "images": str(images),
            "adapter_qwen": str(root / "adapter_qwen"), "mapper": str(root / "mapper"), "mapper_other": str(root / "mapper_other"),
            "root": root}


def _snapshot(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file()}


def _id(row) -> str:
    row = row.values[0] if hasattr(row, "values") else row  # a pytest.param row (a known defect, xfail)
    return f"{row[0].split(' --')[0].replace(' ', '_')}-{row[1]}-{row[2][:40]}"


@pytest.mark.parametrize("row", ROWS, ids=[_id(r) for r in ROWS])
def test_bad_input(row, env, tmp_path, cli):
    command, setup, fragment = row
    SETUPS["outputs"](tmp_path)
    SETUPS[setup](tmp_path)
    fill = {**{k: v for k, v in env.items() if k != "root"}, "tmp": str(tmp_path)}
    before = _snapshot(tmp_path, env["root"])
    r = cli(*command.format(**fill).split())
    assert r.code == 2, f"exit code {r.code}\n{r.err[-3000:]}"
    assert len(r.error_lines) == 1, r.err[-3000:]
    assert fragment.format(**fill) in r.error_lines[0], r.error_lines[0]
    assert "Traceback" not in r.err
    after = _snapshot(tmp_path, env["root"])
    changed = sorted(str(p) for p, b in before.items() if after.get(p) != b)
    assert not changed, f"existing files changed or removed: {changed}"


# ---------------------------------------------------------------------------------- bugs stay bugs

@pytest.mark.parametrize("exc", [KeyError("id"), ValueError("bad math"), TypeError("no"), FileNotFoundError(2, "No such file", "x")])
def test_bugs_keep_their_traceback(exc, monkeypatch, tmp_path, cli):
    """Only CapalignError and environment OSErrors become one line; anything else is a bug and propagates."""
    import capalign.data.shapes as shapes

    def run(cfg):
        raise exc

    monkeypatch.setattr(shapes, "run", run)
    with pytest.raises(type(exc)):
        cli("shapes", "--out", tmp_path / "ds")


@pytest.mark.parametrize("errno_name,strerror", [("EACCES", "Permission denied"), ("ENOSPC", "No space left on device"), ("EROFS", "Read-only file system")])
def test_environment_oserrors_are_one_line(errno_name, strerror, monkeypatch, tmp_path, cli):
    import errno

    import capalign.data.shapes as shapes

    def run(cfg):
        raise OSError(getattr(errno, errno_name), strerror, str(tmp_path / "ds" / "x.png"))

    monkeypatch.setattr(shapes, "run", run)
    r = cli("shapes", "--out", tmp_path / "ds")
    assert r.code == 2 and r.error_lines == [f"error: {tmp_path / 'ds' / 'x.png'}: {strerror}"] and "Traceback" not in r.err


@pytest.mark.parametrize("errno_name", ["ENOENT", "EINVAL", "ENAMETOOLONG"])
def test_any_oserror_on_the_output_path_is_one_line(errno_name, monkeypatch, tmp_path, cli):
    """Issue 21, item 11: an OSError of any kind on --out (or inside it, or a folder above it) names that path in one
    line; the same error on another path stays a traceback (test_bugs_keep_their_traceback)."""
    import errno
    import os

    import capalign.data.shapes as shapes

    for where in (tmp_path / "ds" / "images" / "x.png", tmp_path / "ds", tmp_path):
        def run(cfg, where=where):
            raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)), str(where))

        monkeypatch.setattr(shapes, "run", run)
        r = cli("shapes", "--out", tmp_path / "ds")
        assert r.code == 2 and r.error_lines == [f"error: {where}: {os.strerror(getattr(errno, errno_name))}"], r.err
        assert "Traceback" not in r.err
    monkeypatch.setattr(shapes, "run", lambda cfg: (_ for _ in ()).throw(OSError(errno.ENOENT, "No such file", str(tmp_path.parent / "elsewhere"))))
    with pytest.raises(FileNotFoundError):
        cli("shapes", "--out", tmp_path / "ds")


def test_every_command_has_bad_input_rows():
    """A command registered in the CLI without a row here would escape the table (issue 10)."""
    from capalign.cli import COMMANDS

    covered = set()
    for row in ROWS:
        row = row.values[0] if hasattr(row, "values") else row
        words = row[0].split(" --")[0].split()
        covered.add(tuple(w for w in words if not w.startswith("{") and "/" not in w and not w.endswith((".yaml", ".jsonl"))))
    missing = [" ".join(c) for c in COMMANDS if c not in covered]
    assert not missing, f"commands without bad-input rows: {missing}"
