"""How fast the nano captioner reaches its accuracy bar (>= 90% exact captions on 200 held-out images).

The test suite checks the bar after the default fixed number of steps (tests/test_nano.py); how long
that takes depends on the machine, so it is measured here: the default clean-mode run (3000 steps) with
2 threads and with 1 thread, one after the other in one run, each scored on the held-out images every
250 steps. Reported: steps/s, training seconds to the first evaluation at >= 90% (evaluation time
excluded), final exact match, and the 1-thread / 2-thread speed ratio. The load average is recorded,
since another job on the machine changes every number here.

Run: `.venv/bin/python benchmarks/nano_speed.py [--steps 3000] [--threads 2,1]`; writes
benchmarks/results/nano_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from capalign.io import atomic_write_json  # noqa: E402

BAR = 0.90


def one_run(threads: int, steps: int, every: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "capalign", "nano", "train", "--out", str(out), "--mode", "clean", "--steps", str(steps), "--eval_every", str(every)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = json.loads((out / "nano_result.json").read_text())
    first = next((c for c in r["curve"] if c["val_exact"] >= BAR), None)
    return {"threads": r["threads"], "steps": r["steps"], "train_seconds": r["train_seconds"], "steps_per_s": r["steps"] / r["train_seconds"],
            "seconds_to_bar": first["train_seconds"] if first else None, "step_at_bar": first["step"] if first else None,
            "val_exact": r["val_exact"], "curve": r["curve"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--threads", default="2,1")
    args = ap.parse_args()
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in [int(x) for x in args.threads.split(",")]:
            rows.append(one_run(t, args.steps, args.every, Path(tmp) / f"t{t}"))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"nano captioner, clean mode, {args.steps} steps: time to >= {BAR:.0%} held-out exact")
    for h in ("threads", "steps/s", "s to bar", "step at bar", "final exact", "train s"):
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(str(r["threads"]), f"{r['steps_per_s']:.1f}", "-" if r["seconds_to_bar"] is None else f"{r['seconds_to_bar']:.0f}",
                      str(r["step_at_bar"]), f"{r['val_exact']:.1%}", f"{r['train_seconds']:.0f}")
    Console().print(table)
    ratio = rows[-1]["steps_per_s"] / rows[0]["steps_per_s"] if len(rows) > 1 else None
    if ratio:
        print(f"speed {rows[-1]['threads']} thread(s) / {rows[0]['threads']}: {ratio:.2f}x")
    atomic_write_json(ROOT / "benchmarks/results/nano_speed.json", {
        "bar": BAR, "steps": args.steps, "runs": rows, "speed_ratio_last_over_first": ratio,
        "loadavg_before": load0, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count()})


if __name__ == "__main__":
    main()
