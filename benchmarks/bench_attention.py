"""Run the attention benchmark (same as `attnkit bench`); see benchmarks/RESULTS.md.

    python benchmarks/bench_attention.py              # every case of the issue (tens of minutes)
    python benchmarks/bench_attention.py --quick      # seconds
"""

import sys

from attnkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
