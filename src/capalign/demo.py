"""`make demo`: the embedded default study (shapes world + nano captioner): recipes/demo.yaml into runs/demo.

Prints the results table (scores, and ViZer minus Base paired on the same test images) and the run
folder; the HTML report of that folder is `capalign report runs/demo` (runs/demo/report/index.html).
Run it again and finished stages are reused; `rm -r runs/demo` starts over. Extra arguments are passed
on to `capalign study` (e.g. `--seeds 0,1`).
"""

import sys
from pathlib import Path

from .cli import main

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"  # in a source checkout (what `make demo` uses)


def demo(argv: list[str]) -> int:
    if RECIPE.is_file():
        rc = main(["study", str(RECIPE), "--out", "runs/demo", *argv])
    else:  # an installed package without the recipes folder: the same recipe, from `capalign vizer study`'s defaults
        rc = main(["vizer", "study", "--out", "runs/demo", *argv])
    if rc == 0:
        print("\nrun folder: runs/demo (index.json, summary.json, summary_forest.png, seed-*/)\n"
              "report: runs/demo/report/index.html (written by `capalign report runs/demo`)")
    return rc


if __name__ == "__main__":
    sys.exit(demo(sys.argv[1:]))
