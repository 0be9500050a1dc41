"""``attnkit build``: compile the fused CPU kernel ahead of time (otherwise it compiles on first use)."""

from __future__ import annotations

import argparse

from ..errors import AttnkitError
from ._help import examples

__all__ = ["register"]


def _cmd_build(args: argparse.Namespace) -> int:
    from ..engines.kernel import build

    try:
        lib, seconds, compiled = build.timed_build(force=args.force)
    except RuntimeError as err:
        raise AttnkitError.build(
            "a C++ compiler and ninja to build the fused kernel",
            str(err).splitlines()[0] if str(err) else "build failed",
            "install g++ and `pip install ninja` (attnkit still runs on the PyTorch tile path)",
        ) from None
    how = f"compiled in {seconds:.1f} s" if compiled else "already built (cached)"
    print(f"fused CPU kernel {how}: {lib}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="compile the fused CPU kernel now (cached per torch version, source and CPU)",
        description=(
            "Compile attnkit's fused C++ attention kernel ahead of time. It is cached under "
            "$ATTNKIT_CACHE (default ~/.cache/attnkit), so this runs once per machine."
        ),
        epilog=examples("attnkit build", "attnkit build --force"),
    )
    p.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    p.set_defaults(run=_cmd_build)
