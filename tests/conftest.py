"""Shared test helpers: the FlashAttention accuracy rule and seeded inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from collections import Counter

import pytest
import torch
from hypothesis import settings

import attnkit
from attnkit.engines import ENGINE_ORDER

# The suite runs on 2 cores; keep torch from oversubscribing under pytest.
torch.set_num_threads(2)

# Property tests: "ci" is the default (derandomized: the same 700 examples per test every run,
# 2,800 in all); `pytest --hypothesis-profile=thorough` explores ten times more, freshly random.
settings.register_profile("ci", max_examples=700, derandomize=True, deadline=None, print_blob=True)
settings.register_profile("thorough", max_examples=7000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("ATTNKIT_HYPOTHESIS_PROFILE", "ci"))

# Examples of the property tests that compared an engine's non-empty result with the float64 oracle
# (tests/test_properties.py), by test; printed at the end of the run. The ci profile must reach:
COMPARED: Counter[str] = Counter()
MIN_COMPARED = 2000


def pytest_terminal_summary(terminalreporter) -> None:
    if COMPARED:
        parts = ", ".join(f"{name} {n}" for name, n in COMPARED.items())
        terminalreporter.write_line(f"property tests: {sum(COMPARED.values())} examples compared an engine "
                                    f"with the float64 oracle ({parts})")


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float64, NaN-aware (NaN in the same places counts as equal)."""
    a, b = a.detach().double(), b.detach().double()
    same_nan = torch.isnan(a) & torch.isnan(b)
    if (torch.isnan(a) != torch.isnan(b)).any():
        return float("inf")
    d = (a - b).abs().masked_fill(same_nan, 0.0)
    same_inf = torch.isinf(a) & torch.isinf(b) & (a == b)
    d = d.masked_fill(same_inf, 0.0)
    return float(d.max()) if d.numel() else 0.0


def assert_flash_rule(ours: torch.Tensor, baseline: torch.Tensor, ref64: torch.Tensor, floor: float = 1e-6) -> None:
    """FlashAttention's rule: max|ours - ref64| <= 2·max|baseline_same_dtype - ref64| + floor."""
    e_ours, e_base = err(ours, ref64), err(baseline, ref64)
    assert e_ours <= 2 * e_base + floor, f"ours {e_ours:.3g} vs baseline {e_base:.3g} (+{floor:g})"


def qkv(B, H, G, L, S, D, E=None, *, dtype=torch.float32, seed=0, requires_grad=False):
    """Seeded random q (B,H,L,D), k (B,G,S,D), v (B,G,S,E)."""
    g = torch.Generator().manual_seed(seed)
    E = D if E is None else E
    q = torch.randn(B, H, L, D, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(B, G, S, D, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(B, G, S, E, generator=g, dtype=torch.float64).to(dtype)
    return tuple(t.requires_grad_(requires_grad) for t in (q, k, v))


def bad_call(kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """``(query, key, value, options)`` of an `attnkit.attention` call for an error-message test:
    GQA defaults (2, 4, 6, 8) / (2, 2, 5, 8), with ``kwargs`` replacing a tensor or adding options."""
    args = dict(query=torch.zeros(2, 4, 6, 8), key=torch.zeros(2, 2, 5, 8), value=torch.zeros(2, 2, 5, 8))
    args.update({k_: v_ for k_, v_ in kwargs.items() if k_ in args})
    return args["query"], args["key"], args["value"], {k_: v_ for k_, v_ in kwargs.items() if k_ not in args}


@pytest.fixture
def one_thread():
    """Run a test on one torch thread, then restore the suite's setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Every engine, forced: a test of an engine must never let dispatch pick (it could pick the oracle).
ENGINES = list(ENGINE_ORDER)


def general_dispatch(q, k, v, **kwargs):
    """What ``engine="auto"`` dispatch picks on the general path (calls the hot path leaves to it:
    gradients, dropout, weights, float64, ...), whether or not this call would take the hot path."""
    from attnkit.engines import dispatch
    from attnkit.spec import AttentionSpec

    return dispatch.choose(AttentionSpec.build(q, k, v, **kwargs))


def skip_unless_accepts(engine: str, q, k, v, **kwargs) -> None:
    """Skip (with the engine's own reason) when ``engine`` cannot compute this spec."""
    try:
        attnkit.explain(q, k, v, engine=engine, **kwargs)
    except attnkit.AttnkitError as why:
        pytest.skip(f"{engine}: {why}")


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The documentation site, built once per session with ``mkdocs build --strict``."""
    pytest.importorskip("mkdocs", reason="needs the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="needs the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out
