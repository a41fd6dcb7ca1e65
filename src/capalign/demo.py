"""`make demo`: the main job on the embedded default (shapes world + nano captioner).

Runs `capalign vizer study` (Base vs ViZer_GT vs ViZer_G) into runs/demo and prints the table.
Run it again and finished stages are reused; `rm -r runs/demo` starts over.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["vizer", "study", "--out", "runs/demo", *sys.argv[1:]]))
