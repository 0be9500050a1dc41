"""One whole-model workload of `attnkit bench --models`, sdpa vs attnkit, interleaved medians.

For A/B runs of two versions of attnkit on a noisy machine: run it alternately with each tree
first on the path, several rounds, and compare the ratios (never absolute times across processes):

    for i in 1 2 3; do
      for tree in /path/new /path/old; do PYTHONPATH=$tree/src python benchmarks/ab_workload.py train; done
    done

The argument is a substring of a workload's name (``train``, ``generate``, ``B=4 L=512``, ...).
Needs the ``hf`` extra; set ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import sys

from attnkit.bench import models
from attnkit.bench.timing import interleaved_medians


def main(which: str, repeats: int = 9) -> str:
    import attnkit.integrations.hf as akhf

    akhf.register()
    name, load, make, _ = next(w for w in models._workloads() if which in w[0])
    calls = {impl: make(load(impl)) for impl in ("sdpa", "attnkit")}
    for call in calls.values():  # warm-up (and the kernel build on a first run)
        call(), call()
    t = interleaved_medians(calls, repeats=repeats)
    return f"{name}: sdpa {t['sdpa'] * 1e3:.0f} ms, attnkit {t['attnkit'] * 1e3:.0f} ms, ratio {t['sdpa'] / t['attnkit']:.3f}"


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "train"))
