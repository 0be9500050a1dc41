"""Rewrite constraints.txt from a venv whose suite just passed (called by ``.ci/latest --write``).

Usage: python tools/write_constraints.py VENV constraints.txt

Pins every distribution installed in VENV except attnkit itself; torch keeps its public version
(``torch==2.13.0``, which matches the local ``+cpu`` build) so the pin never names a wheel variant.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

HEADER = """\
# Pins for the install path of the README and CI (pip install -c constraints.txt ...): the versions the
# whole suite last passed with. pyproject.toml keeps the honest supported ranges.
# torch is the CPU build on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
# Refresh: bash .ci/latest --write  (newest allowed versions, full suite, rewrites this file when green)
"""


def main(venv: str, out: str) -> None:
    freeze = subprocess.run([str(Path(venv) / "bin" / "pip"), "freeze", "--exclude-editable"],
                            check=True, capture_output=True, text=True).stdout.splitlines()
    pins = []
    for line in freeze:
        name, sep, version = line.partition("==")
        if not sep or name.lower() == "attnkit":
            continue  # editable or direct references are not pins
        pins.append(f"{name}=={version.split('+')[0] if name.lower() == 'torch' else version}")
    stamp = f"# Suite green with these on {datetime.date.today().isoformat()}.\n"
    Path(out).write_text(HEADER + stamp + "\n".join(sorted(pins, key=str.lower)) + "\n")
    print(f"write_constraints: {len(pins)} pins -> {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
