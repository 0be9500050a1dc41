"""Run the attention benchmark (same as `attnkit bench`); see benchmarks/RESULTS.md.

    python benchmarks/bench_attention.py              # every target case of issue 12 (tens of minutes)
    python benchmarks/bench_attention.py --quick      # tiny versions (seconds)
    python benchmarks/bench_attention.py --all        # plus --under-load and --compile-time
"""

import sys

from attnkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
