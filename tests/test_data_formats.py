"""Caption data as distributed (replicas written by tests/replicas.py with json/csv/datasets, never by
capalign): COCO annotation and results files, Karpathy split files, Flickr30k's caption files, a HF dataset
with val/test splits. Counts, ids (one COCO id rule everywhere) and captions; `caption --format coco`; and
capalign evaluate against pycocoevalcap's own COCOEvalCap on the same annotation and results files."""

import json
import shutil

import pytest
import replicas as R

from capalign import CapalignError
from capalign.data.formats import image_id, write_results
from capalign.data.references import read_predictions, read_references
from capalign.data.sources import open_images

JAVA = shutil.which("java") is not None
STRS = [str(i) for i in R.COCO_IDS]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """load_dataset caches under ~/.cache; keep the replicas' caches in the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_the_coco_id_rule():
    assert [image_id(v) for v in ("COCO_val2014_000000397133.jpg", "000000397133.jpg", "train2014/COCO_train2014_000000000009",
                                  397133, "1000092795.jpg", "000001", "sub/img01")] == \
        ["397133", "397133", "9", "397133", "1000092795", "000001", "sub/img01"]


def test_coco_annotation_file(tmp_path):
    caps = {i: R.captions(i, 5 + (i % 2)) for i in R.COCO_IDS[:-1]}  # the last image has no caption: left out
    ann = R.coco_annotations(tmp_path / "coco", caps=caps)
    refs = read_references(str(ann))
    assert list(refs) == STRS[:-1] and all(refs[str(i)]["captions"] == caps[i] for i in caps)
    assert refs["397133"]["image"] == str(tmp_path / "coco" / "val2017" / "000000397133.jpg")
    src = open_images(str(ann))  # as an image source: its images, found in val2017/ beside annotations/
    recs = list(src)
    assert [r.id for r in recs] == STRS[:-1] and [r.captions for r in recs] == [caps[i] for i in caps]
    assert recs[0].image.size == (24, 16) and src.skipped == []
    # the image folder alone: the same ids (COCO file names mean COCO's image_id), in both naming schemes
    assert sorted(open_images(str(tmp_path / "coco" / "val2017")).ids()) == sorted(STRS)
    R.coco_annotations(tmp_path / "c14", split="val2014")
    assert sorted(open_images(str(tmp_path / "c14" / "val2014")).ids()) == sorted(STRS)
    # images elsewhere: a clear error, or image_root
    moved = tmp_path / "elsewhere"
    shutil.move(str(tmp_path / "coco" / "val2017"), moved)
    with pytest.raises(CapalignError, match="cannot find the images of .*000000397133.jpg is in none of"):
        open_images(str(ann))
    assert open_images(str(ann), image_root=str(moved)).ids() == STRS[:-1]
    with pytest.raises(CapalignError, match="holds one split; drop --split val"):
        open_images(str(ann), split="val")


def test_annotations_that_do_not_match_their_images(tmp_path):
    ann = R.coco_annotations(tmp_path / "coco")
    obj = json.loads(ann.read_text())
    obj["annotations"][3]["image_id"] = 999
    ann.write_text(json.dumps(obj))
    with pytest.raises(CapalignError, match=r"annotations\[3\] has image_id 999, which is not among the file's 8 images"):
        read_references(str(ann))


def test_karpathy_files(tmp_path):
    path = R.karpathy_coco(tmp_path / "coco")
    test = [str(i) for i, s in R.KARPATHY_SPLITS.items() if s == "test"]
    src = open_images(str(path), split="test")
    recs = list(src)
    assert [r.id for r in recs] == test and recs[0].captions == R.captions(397133) and recs[0].image.size == (24, 16)
    assert recs[0].meta["path"].endswith("val2014/COCO_val2014_000000397133.jpg")
    assert open_images(str(path), split="train+restval").ids() == ["174482", "403385", "87038", "480985"]
    assert open_images(str(path), default_split="train").ids() == ["174482", "403385"]  # what the training commands read
    with pytest.raises(CapalignError, match=r"holds several splits: test \(3\), val \(1\), restval \(2\), train \(2\); choose one with --split"):
        open_images(str(path))
    with pytest.raises(CapalignError, match="has no split 'validation'; its splits: test"):
        open_images(str(path), split="validation")
    refs = read_references(str(path), split="test")
    assert list(refs) == test and refs["6818"]["captions"] == R.captions(6818)
    # the same COCO images named by a COCO annotation file: the same ids, so refs and predictions match
    assert set(test) <= set(read_references(str(R.coco_annotations(tmp_path / "ann")))) 
    # Flickr30k: ids are the file names' stems, as the image folder, the token file and Kaggle's csv give them
    f = R.karpathy_flickr(tmp_path / "flickr")
    stems = [n[:-4] for n in R.FLICKR_NAMES]
    assert open_images(str(f), split="test").ids() == stems[3:5]
    assert sorted(open_images(str(tmp_path / "flickr" / "flickr30k-images")).ids()) == sorted(stems)
    assert list(read_references(str(f), split="train")) == [stems[0], stems[1], stems[5]]


def test_flickr30k_caption_files(tmp_path):
    stems = [n[:-4] for n in R.FLICKR_NAMES]
    tok = read_references(str(R.flickr_token(tmp_path / "results_20130124.token")))
    kag = read_references(str(R.kaggle_csv(tmp_path / "flickr30k_images" / "results.csv")))
    for refs in (tok, kag):
        assert list(refs) == stems and all(refs[s]["captions"] == R.captions(s) for s in stems)
    assert kag["10002456"]["captions"][4] == "a photo number 10002456 seen in way 4 ."  # the row without its second |
    bad = tmp_path / "bad" / "results.csv"
    R.kaggle_csv(bad)
    bad.write_text(bad.read_text().replace("1000268201.jpg| 2| a photo", "1000268201.jpg a photo"))
    with pytest.raises(CapalignError, match="line 14: expected 'image_name| comment_number| comment'"):
        read_references(str(bad))
    with pytest.raises(CapalignError, match="is a Flickr30k caption file \\(references: --refs\\), not an image source"):
        open_images(str(tmp_path / "results_20130124.token"))
    with pytest.raises(CapalignError, match="has no splits"):
        read_references(str(tmp_path / "results_20130124.token"), split="test")


def test_coco_results_files(tmp_path):
    res = R.coco_results(tmp_path / "res.json", {397133: "a dog .", 37777: "a cat"})
    assert read_predictions(str(res)) == {"397133": "a dog .", "37777": "a cat"}
    (tmp_path / "dup.json").write_text(json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]))
    with pytest.raises(CapalignError, match="image_id 1 appears twice"):
        read_predictions(str(tmp_path / "dup.json"))
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 1, "caption": 5}]))
    with pytest.raises(CapalignError, match=r"\[0\].caption: must be a string, got 5"):
        read_predictions(str(tmp_path / "bad.json"))
    # capalign's writer: decimal ids become COCO's integers, others stay strings; every id reads back the same
    rows = [{"id": "397133", "caption": "x"}, {"id": "000001", "caption": "y"}, {"id": "a/b", "caption": "z"}]
    write_results(tmp_path / "w.json", iter(rows))
    assert [r["image_id"] for r in json.loads((tmp_path / "w.json").read_text())] == [397133, "000001", "a/b"]
    assert read_predictions(str(tmp_path / "w.json")) == {r["id"]: r["caption"] for r in rows}


def test_hf_dataset_with_val_and_test_splits(tmp_path):
    """lmms-lab/COCO-Caption2017's layout: splits val and test, captions in `answer`, the file name in `question_id`."""
    spec = f"hf:{R.hf_coco_caption2017(tmp_path / 'COCO-Caption2017')}"
    with pytest.raises(CapalignError, match="holds several splits: val, test; choose one with --split"):
        open_images(spec)
    src = open_images(spec, split="val")
    recs = list(src)
    assert [r.id for r in recs] == STRS[:6] and recs[0].captions == R.captions(397133) and recs[0].image.size == (24, 16)
    assert open_images(spec, split="test").ids() == STRS[6:]
    refs = read_references(spec, split="val")
    assert list(refs) == STRS[:6] and refs["87038"]["captions"] == R.captions(87038)
    with pytest.raises(CapalignError, match="none of its 2 rows has a caption \\(column 'answer'\\)"):
        read_references(spec, split="test")
    with pytest.raises(CapalignError, match="caption column 'height' of .* holds int32, not text"):
        read_references(spec, split="val", caption_column="height")
    with pytest.raises(CapalignError, match="caption column 'captions' not in"):
        read_references(spec, split="val", caption_column="captions")


# ------------------------------------------------------------------------ caption --format coco


@pytest.mark.usefixtures("one_thread")
def test_caption_format_coco_resumes_and_evaluates(tmp_path, tiny_idefics3_path, cli):
    from pycocotools.coco import COCO

    ann = R.coco_annotations(tmp_path / "coco")
    out = tmp_path / "results.json"
    base = ["caption", "--model", tiny_idefics3_path, "--images", tmp_path / "coco" / "val2017", "--format", "coco",
            "--out", out, "--max_new_tokens", "3", "--batch_size", "3"]
    r = cli(*base)
    assert r.code == 0, r.err
    rows = json.loads(out.read_text())
    assert sorted(r["image_id"] for r in rows) == sorted(R.COCO_IDS) and all(isinstance(r["caption"], str) for r in rows)
    res = COCO(str(ann)).loadRes(str(out))  # pycocotools reads it as a results file of this annotation file
    assert sorted(res.getImgIds()) == sorted(R.COCO_IDS)
    # resume: the stream OUT.jsonl lost its last 3 lines (a crash); the re-run captions only those, rewrites OUT
    stream = tmp_path / "results.json.jsonl"
    lines = stream.read_text().splitlines(keepends=True)
    stream.write_text("".join(lines[:5]))
    r = cli(*base)
    assert r.code == 0 and "captioned 3 images, 5 already done" in " ".join(r.err.split())
    assert json.loads(out.read_text()) == rows
    r = cli("evaluate", "--pred", out, "--refs", ann, "--out", tmp_path / "e.json", "--metrics", "bleu,cider")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "e.json").read_text())["systems"]["results"]["counts"]["scored"] == 8


# ------------------------------------------------------------------------ the oracle: COCOEvalCap


@pytest.mark.java
@pytest.mark.skipif(not JAVA, reason="java not on PATH: pycocoevalcap's PTBTokenizer needs it")
def test_evaluate_equals_cocoevalcap_on_the_same_files(tmp_path, cli, monkeypatch, capsys):
    """COCOEvalCap (pycocoevalcap's own evaluation, on pycocotools' COCO API) and `capalign evaluate` read the
    same captions_val2017.json and results file and report the same BLEU-1..4, ROUGE-L and CIDEr."""
    import pycocoevalcap.eval as ev
    from pycocoevalcap.eval import COCOEvalCap
    from pycocotools.coco import COCO

    from capalign.metrics import synth

    class Skipped:  # METEOR and SPICE: not capalign metrics (SPICE downloads Stanford CoreNLP)
        def __init__(self, *a):
            pass

        def method(self):
            return "skipped"

        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

    monkeypatch.setattr(ev, "Meteor", Skipped)
    monkeypatch.setattr(ev, "Spice", Skipped)
    gts, res = synth.corpus(300, n_refs=5, seed=7)
    ids = [100000 + 7 * k for k in range(len(gts))]
    ann = R.coco_annotations(tmp_path / "coco", ids=ids, caps=dict(zip(ids, gts.values())))
    results = R.coco_results(tmp_path / "results.json", dict(zip(ids, (c[0] for c in res.values()))))
    coco = COCO(str(ann))
    oracle = COCOEvalCap(coco, coco.loadRes(str(results)))
    oracle.evaluate()
    r = cli("evaluate", "--pred", results, "--refs", ann, "--metrics", "bleu,rouge,cider", "--out", tmp_path / "ours.json")
    assert r.code == 0, r.err
    ours = json.loads((tmp_path / "ours.json").read_text())["systems"]["results"]
    assert ours["counts"]["scored"] == 300
    names = {"BLEU1": "Bleu_1", "BLEU2": "Bleu_2", "BLEU3": "Bleu_3", "BLEU4": "Bleu_4", "ROUGE_L": "ROUGE_L", "CIDEr": "CIDEr"}
    for k, theirs in names.items():
        assert ours["corpus"][k] == pytest.approx(oracle.eval[theirs], abs=1e-9, rel=0), k
    assert 0.05 < oracle.eval["Bleu_1"] < 0.9 and oracle.eval["CIDEr"] > 0.05  # a comparison of real numbers, not of zeros
    per = dict(zip(ours["per_caption"]["id"], ours["per_caption"]["CIDEr"]))
    worst = max(abs(per[str(i)] - oracle.imgToEval[i]["CIDEr"]) for i in ids)
    assert worst <= 1e-9


def test_format_prefix_where_the_content_does_not_say(tmp_path):
    """A COCO file under another name (captions.dat): no extension or layout marker to go by, so `coco:` names it."""
    ann = R.coco_annotations(tmp_path / "coco", name="captions.dat")
    with pytest.raises(CapalignError, match="unsupported file type .dat"):
        open_images(str(ann))
    assert open_images(f"coco:{ann}", image_root=str(tmp_path / "coco" / "val2017")).ids() == STRS
    assert list(read_references(f"coco:{ann}")) == STRS
    res = R.coco_results(tmp_path / "res.txt", {397133: "a dog"})
    assert read_predictions(f"coco:{res}") == {"397133": "a dog"}
    with pytest.raises(CapalignError, match="not a COCO annotation file"):
        read_references(f"coco:{res}")
