"""Per-corruption AUC of `capalign vizer diagnose` for each mapper objective, over mapper seeds, on one Base.

    .venv/bin/python benchmarks/vizer_objectives.py --run runs/vizer-objectives --seeds 0,1,2

`--run` is a study folder with seed-0's Base and data (`capalign study recipes/demo.yaml --out RUN --until base`).
Per objective and mapper seed: `capalign mapper train` with recipes/demo.yaml's mapper settings (gt, width 256,
2000 samples, 20 epochs, centred) plus the objective's fields, then one `capalign vizer diagnose` over all of them
on the seed's 300 test images. Prints mean and [min, max] over the mapper seeds per corruption kind and writes
benchmarks/results/vizer_objectives.json (atomically; every diagnose JSON stays under RUN/objectives/).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from capalign.io import atomic_write_json
from capalign.vizer import diagnose, mapper

OBJECTIVES = {  # name -> mapper train fields on top of the demo's
    "paper": {},
    "infonce": {"objective": "infonce", "temperature": 0.07},
    "grid1x3": {"pooling": "grid1x3"},
    "late1x3": {"objective": "late", "pooling": "grid1x3"},
    "layer1": {"states_layer": 1},  # the LM's first layer output instead of its last (benchmarks/vizer_oracle.py)
    "grid1x3_layer1": {"pooling": "grid1x3", "states_layer": 1},
    "grid1x3_layer0": {"pooling": "grid1x3", "states_layer": 0},  # the token embeddings: no image in the states at all
    "text": {"text_only": True},  # the caption alone through the LM (no image, no prompt)
    "grid1x3_text": {"pooling": "grid1x3", "text_only": True},
    "grid1x3_text_layer1": {"pooling": "grid1x3", "text_only": True, "states_layer": 1},
}
DEMO = dict(variant="gt", width=256, samples=2000, epochs=20, center=True, device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--objectives", default=",".join(OBJECTIVES))
    ap.add_argument("--out", default="benchmarks/results/vizer_objectives.json")
    a = ap.parse_args()
    run, seeds, names = Path(a.run), [int(s) for s in a.seeds.split(",")], a.objectives.split(",")
    base, data = run / "seed-0" / "base" / "nano-web", run / "seed-0" / "data"
    work = run / "objectives"
    folders = {}
    for name in names:
        for s in seeds:
            d = work / f"{name}-seed{s}"
            if not (d / "mapper_meta.json").exists():
                mapper.run(mapper.MapperTrainConfig(model=str(base), data=str(data / "mapper"), out=str(d), seed=s,
                                                    cache_dir=str(work / "feature-cache"), **DEMO, **OBJECTIVES[name]))
            folders[(name, s)] = str(d)
    res = diagnose.run(diagnose.DiagnoseConfig(model=str(base), data=str(data / "test"), mappers=list(folders.values()),
                                               out=str(work / "diagnose.json"), device="cpu"))["mappers"]
    kinds = [k for k in next(iter(res.values()))["auc"]]
    table = {}
    print(f"{'objective':<10} " + " ".join(f"{k:>19}" for k in kinds) + "   R@1 (mean)")
    for name in names:
        rows = [res[folders[(name, s)]] for s in seeds]
        cell = {k: {"mean": sum(r["auc"][k] for r in rows) / len(rows), "min": min(r["auc"][k] for r in rows),
                    "max": max(r["auc"][k] for r in rows), "per_seed": [r["auc"][k] for r in rows]} for k in kinds}
        r1s = [r["retrieval_r1"] for r in rows if r["retrieval_r1"] is not None]  # None: fewer test images than one group
        r1 = sum(r1s) / len(r1s) if r1s else float("nan")
        table[name] = {"fields": OBJECTIVES[name], "auc": cell, "retrieval_r1_mean": r1, "pairs": rows[0]["pairs"]}
        print(f"{name:<10} " + " ".join(f"{c['mean']:.3f} [{c['min']:.3f},{c['max']:.3f}]" for c in cell.values()) + f"   {r1:.3f}")
    atomic_write_json(a.out, {"run": str(run), "base": str(base), "mapper_seeds": seeds, "mapper_settings": DEMO, "objectives": table})


if __name__ == "__main__":
    main()
