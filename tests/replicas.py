"""Small replicas of caption data as it is distributed, written here with json / csv / datasets the way the
original files are laid out (never through capalign's writers), for the reader tests and the docs test.

- COCO: `annotations/captions_val2017.json` (one line: info, licenses, images, annotations) beside
  `val2017/000000397133.jpg`; 2014 names are `COCO_val2014_000000397133.jpg`.
- Karpathy: `dataset_coco.json` ({"images": [{"filepath", "sentids", "filename", "imgid", "split",
  "sentences": [{"tokens", "raw", "imgid", "sentid"}], "cocoid"}], "dataset": "coco"}) beside `train2014/`,
  `val2014/`; `dataset_flickr30k.json` (no filepath, no cocoid) beside `flickr30k-images/`.
- Flickr30k: `results_20130124.token` (`name.jpg#k<TAB>caption`); Kaggle's `flickr30k_images/results.csv`
  (`image_name| comment_number| comment`, with the row whose second `|` is missing).
- A COCO results file: `[{"image_id": 397133, "caption": "..."}]`.
- lmms-lab/COCO-Caption2017 as its hub repo is laid out: README.md whose YAML `configs` map splits val and
  test to `data/val-*.parquet` / `data/test-*.parquet`; columns question_id (the file name), image, question,
  answer (5 captions; none in test), id, license, file_name, coco_url, height, width, date_captured.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

COCO_IDS = [397133, 37777, 252219, 87038, 174482, 403385, 6818, 480985]  # val2017 image ids
FLICKR_NAMES = ["1000092795.jpg", "10002456.jpg", "1000268201.jpg", "1000344755.jpg", "1000366164.jpg", "1000523639.jpg"]


def jpeg(i: int, size=(24, 16)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, ((37 * i) % 256, (91 * i) % 256, (53 * i + 40) % 256)).save(b, format="JPEG")
    return b.getvalue()


def captions(key, k: int = 5) -> list[str]:
    return [f"a photo number {key} seen in way {j} ." for j in range(k)]


def coco_annotations(root: Path, split: str = "val2017", ids=COCO_IDS, caps=None, name=None) -> Path:
    """root/annotations/captions_<split>.json + root/<split>/<file_name>; caps: id -> captions."""
    caps = caps or {i: captions(i) for i in ids}
    prefix = f"COCO_{split}_" if split.endswith("2014") else ""
    images, annotations = [], []
    for i in ids:
        fname = f"{prefix}{i:012d}.jpg"
        images.append({"license": 4, "file_name": fname, "coco_url": f"http://images.cocodataset.org/{split}/{fname}",
                       "height": 16, "width": 24, "date_captured": "2013-11-14 17:02:52", "flickr_url": "http://farm7.staticflickr.com/x.jpg", "id": i})
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / fname).write_bytes(jpeg(i))
    for i in ids:
        for c in caps.get(i, []):
            annotations.append({"image_id": i, "id": 100000 + len(annotations), "caption": c})
    ann = root / "annotations" / (name or f"captions_{split}.json")
    ann.parent.mkdir(parents=True, exist_ok=True)
    info = {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0", "year": 2017}
    ann.write_text(json.dumps({"info": info, "licenses": [{"url": "http://x", "id": 4, "name": "Attribution License"}],
                               "images": images, "annotations": annotations}))
    return ann


KARPATHY_SPLITS = {397133: "test", 37777: "test", 252219: "val", 87038: "restval", 174482: "train", 403385: "train",
                   6818: "test", 480985: "restval"}


def karpathy_coco(root: Path, splits=KARPATHY_SPLITS) -> Path:
    images, sent = [], 0
    for k, (i, split) in enumerate(splits.items()):
        folder = "train2014" if split == "train" else "val2014"
        fname = f"COCO_{folder}_{i:012d}.jpg"
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / fname).write_bytes(jpeg(i))
        sentences = [{"tokens": c.rstrip(" .").split(), "raw": c, "imgid": k, "sentid": sent + j} for j, c in enumerate(captions(i))]
        images.append({"filepath": folder, "sentids": [s["sentid"] for s in sentences], "filename": fname, "imgid": k,
                       "split": split, "sentences": sentences, "cocoid": i})
        sent += len(sentences)
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def karpathy_flickr(root: Path, names=FLICKR_NAMES) -> Path:
    images = []
    for k, name in enumerate(names):
        (root / "flickr30k-images").mkdir(parents=True, exist_ok=True)
        (root / "flickr30k-images" / name).write_bytes(jpeg(k))
        sentences = [{"tokens": c.split(), "raw": c, "imgid": k, "sentid": 5 * k + j} for j, c in enumerate(captions(name[:-4]))]
        images.append({"sentids": [s["sentid"] for s in sentences], "imgid": k, "sentences": sentences,
                       "split": ["train", "train", "val", "test", "test", "train"][k % 6], "filename": name})
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path


def flickr_token(path: Path, names=FLICKR_NAMES) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{n}#{j}\t{c}\n" for n in names for j, c in enumerate(captions(n[:-4]))))
    return path


def kaggle_csv(path: Path, names=FLICKR_NAMES) -> Path:
    """Kaggle's results.csv; the 5th caption of the second image is written without its second `|`
    ("10002456.jpg| 4   a photo ..."), as one row of the Kaggle copy is."""
    lines = ["image_name| comment_number| comment"]
    for n in names:
        for j, c in enumerate(captions(n[:-4])):
            lines.append(f"{n}| {j}   {c}" if (n, j) == (names[1], 4) else f"{n}| {j}| {c}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def coco_results(path: Path, preds: dict[int, str]) -> Path:
    path.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in preds.items()]))
    return path


def _coco_caption2017(val_ids, test_ids) -> dict:
    """lmms-lab/COCO-Caption2017's splits as `datasets.Dataset`s with its features."""
    import datasets

    feats = datasets.Features({
        "question_id": datasets.Value("string"), "image": datasets.Image(), "question": datasets.Value("string"),
        "answer": datasets.Sequence(datasets.Value("string")), "id": datasets.Value("int64"), "license": datasets.Value("int8"),
        "file_name": datasets.Value("string"), "coco_url": datasets.Value("string"), "height": datasets.Value("int32"),
        "width": datasets.Value("int32"), "date_captured": datasets.Value("string")})
    out = {}
    for split, ids in (("val", val_ids), ("test", test_ids)):
        rows = [{"question_id": f"{i:012d}.jpg", "image": {"bytes": jpeg(i), "path": None},
                 "question": "Please carefully observe the image and come up with a caption for the image.",
                 "answer": captions(i) if split == "val" else [], "id": 7, "license": 4, "file_name": f"{i:012d}.jpg",
                 "coco_url": f"http://images.cocodataset.org/{split}2017/{i:012d}.jpg", "height": 16, "width": 24,
                 "date_captured": "2013-11-14 17:02:52"} for i in ids]
        out[split] = datasets.Dataset.from_list(rows, features=feats)
    return out


def hf_coco_caption2017(root: Path, val_ids=COCO_IDS[:6], test_ids=COCO_IDS[6:]) -> Path:
    """A local copy of the hub repo lmms-lab/COCO-Caption2017 (parquet shards + the card's YAML configs)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, ds in _coco_caption2017(val_ids, test_ids).items():
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: val\n    path: data/val-*\n"
        "  - split: test\n    path: data/test-*\n---\n# COCO-Caption2017 (local replica)\n")
    return root


def hf_coco_caption2017_on_disk(root: Path, val_ids=COCO_IDS[:6], test_ids=COCO_IDS[6:]) -> Path:
    """What `load_dataset("lmms-lab/COCO-Caption2017").save_to_disk(root)` writes: a DatasetDict of val and test."""
    import datasets

    datasets.DatasetDict(_coco_caption2017(val_ids, test_ids)).save_to_disk(str(root))
    return root
