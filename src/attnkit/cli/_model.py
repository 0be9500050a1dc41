"""Load a local Hugging Face model folder for ``attnkit explain``, checking it first.

``transformers`` reports a broken folder with its own exceptions, at the moment it reaches the
broken part (a truncated weights file only once the weights load). `check_folder` looks at
the files first — ``config.json`` a JSON object, a weights file whose safetensors header covers
the file exactly, tokenizer files present — so a broken folder costs milliseconds and one line
naming the file and the fix. `load` then wraps what only loading can find (a configuration
the model class rejects). `tokens_within_limits` checks the text against the model's
position limit and ``--max-length`` with the tokenizer alone, before the model loads.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Callable

from ..errors import AttnkitError

__all__ = ["check_folder", "load", "tokens_within_limits", "token_or_position"]

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
_REDOWNLOAD = "re-download or re-save the model (model.save_pretrained and tokenizer.save_pretrained)"


def _bad(folder: Path, expected: str, got: str, fix: str = _REDOWNLOAD) -> AttnkitError:
    return AttnkitError.build(f"--model {folder} with {expected}", got, fix)


def _check_safetensors(folder: Path, path: Path) -> None:
    """The 8-byte header length, the JSON header and the data offsets must account for every byte."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= size - 8:
            raise _bad(folder, f"an intact {path.name}", f"a file of {size} bytes without a valid header (truncated?)")
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise _bad(folder, f"an intact {path.name}", "a damaged safetensors header") from None
    if 8 + n + end != size:
        raise _bad(folder, f"an intact {path.name} of {8 + n + end} bytes", f"{size} bytes (truncated or damaged)")


def check_folder(folder: Path) -> None:
    """Structural checks of a model folder (no ``transformers`` import, no weights read)."""
    if not folder.is_dir():
        raise AttnkitError.build("--model PATH to a local Hugging Face model folder (with config.json)", str(folder),
                                 "pass the folder that holds config.json and the weights, or drop --model for all-MiniLM-L6-v2")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise _bad(folder, "a config.json", "no config.json in it", "pass the folder that holds config.json and the weights")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeError):
        raise _bad(folder, "a config.json holding a JSON object", "a file that is not valid JSON (empty or damaged?)") from None
    if not isinstance(config, dict) or not config.get("model_type") and not config.get("architectures"):
        raise _bad(folder, "a config.json naming the model (model_type)", f"a JSON {type(config).__name__} without it")
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and (heads < 1 or hidden % heads):
        raise _bad(folder, "num_attention_heads dividing hidden_size in config.json",
                   f"{heads} heads for hidden_size {hidden}", "restore the config.json that came with the weights")
    weights = [name for name in _WEIGHTS if (folder / name).is_file()]
    if not weights:
        raise _bad(folder, f"a weights file ({' or '.join(_WEIGHTS[::2])})", "none in the folder")
    if weights[0] == "model.safetensors":
        _check_safetensors(folder, folder / "model.safetensors")
    elif weights[0] == "model.safetensors.index.json":
        try:
            shards = sorted(set(json.loads((folder / weights[0]).read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeError):
            raise _bad(folder, f"a valid {weights[0]}", "a damaged index") from None
        for shard in shards:
            path = (folder / str(shard)).resolve()
            if path.parent != folder.resolve() or not path.is_file():  # never follow an index out of the folder
                raise _bad(folder, f"the weight shards that {weights[0]} lists", f"no shard {Path(str(shard)).name} in the folder")
            _check_safetensors(folder, path)
    if not any((folder / name).is_file() for name in _TOKENIZER):
        raise _bad(folder, f"tokenizer files (one of {', '.join(_TOKENIZER)})", "none in the folder",
                   "save the tokenizer into the folder too: tokenizer.save_pretrained(folder)")


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text[:160]}"


def load(model: str | None) -> tuple[Any, Callable[[], Any], str, int | None]:
    """(tokenizer, model loader, display name, position limit) for a folder, or the packaged MiniLM."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: never reach for the hub
    from ..integrations import hf

    if model is None:
        folder, name = hf.minilm_path(), "all-MiniLM-L6-v2"
    else:
        folder = Path(model).expanduser()
        check_folder(folder)
        name = folder.resolve().name
    tf = hf._transformers()
    tf.utils.logging.set_verbosity_error()
    tf.utils.logging.disable_progress_bar()
    try:
        config = tf.AutoConfig.from_pretrained(str(folder))
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _bad(folder, "a configuration and tokenizer transformers can load", _first_line(err)) from None
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def load_model() -> Any:
        try:
            return tf.AutoModel.from_pretrained(str(folder)).eval()
        except (OSError, EOFError, ValueError, RuntimeError, KeyError, TypeError) as err:  # e.g. shapes that do not match
            raise _bad(folder, "a model transformers can build from its config.json and weights", _first_line(err),
                       "fix config.json (heads, sizes) to match the weights, or " + _REDOWNLOAD) from None

    return tokenizer, load_model, name, limit


def tokens_within_limits(tokenizer: Any, text: str, max_length: int | None, limit: int | None) -> list[str]:
    """The tokens the model will see; refuses texts over the position limit and a --max-length that
    cannot be honoured, and says when the text was truncated."""
    ids = tokenizer(text)["input_ids"]
    n = len(ids)
    if max_length is not None and limit is not None and max_length > limit:
        raise AttnkitError.build(f"--max-length <= {limit} (the model's position limit)", str(max_length),
                                 f"pass --max-length {limit}")
    if max_length is None and limit is not None and n > limit:
        raise AttnkitError.build(f"a text of at most {limit} tokens (the model's position limit)", f"{n} tokens",
                                 f"pass --max-length {limit} to truncate it, or shorten the text")
    if max_length is not None and n > max_length:
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        if len(ids) > max_length:  # the tokenizer keeps its special tokens whatever max_length says
            special = n - len(tokenizer(text, add_special_tokens=False)["input_ids"])
            raise AttnkitError.build(f"--max-length >= {special + 1} (the {special} special tokens and one word)",
                                     str(max_length), f"pass --max-length {special + 1} or more")
        print(f"truncated the text from {n} to {len(ids)} tokens (--max-length {max_length})")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    unk = getattr(tokenizer, "unk_token", None)
    plain = [t for t, s in zip(tokens, tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)) if not s]
    if unk is not None and plain and all(t == unk for t in plain):
        raise AttnkitError.build("a text the tokenizer knows", f"only {unk} (unknown) tokens",
                                 "check the text; with --model, check that the folder holds the model's own tokenizer files")
    return tokens


def token_or_position(tokens: list[str], token: str) -> str | int:
    """``--token`` as a word of the text, or else, when it is an integer, as a token position."""
    from ..inspect import locate

    try:
        locate(tokens, token)
        return token
    except AttnkitError:
        try:
            return int(token)
        except ValueError:
            return token  # locate raises again below, naming the tokens
