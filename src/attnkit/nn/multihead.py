"""``MultiHeadAttention``: projections around [`attnkit.attention`][attnkit.functional.attention].

A drop-in for ``torch.nn.MultiheadAttention`` (same projections, same ``key_padding_mask``,
``attn_mask``, ``need_weights`` and ``average_attn_weights`` meanings, [`from_torch`][attnkit.nn.multihead.MultiHeadAttention.from_torch] to copy
its weights) that adds grouped-query attention, attnkit's structured masks and a KV cache for
incremental decoding. Attention weights come from the engine (``return_weights=True``): asking for
them never switches to a separate slow path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._numerics import NEG_INF
from .. import masks as _masks
from .._devices import check_device, check_on
from ..errors import AttnkitError
from ..functional import attention
from .kv_cache import KVCache

__all__ = ["MultiHeadAttention"]


def _combine(parts: list[Tensor]) -> Tensor | None:
    """AND of boolean masks (True = attend); if any is float, the sum of additive masks
    (booleans become ``0`` / ``-inf``), as torch combines ``attn_mask`` and ``key_padding_mask``."""
    if not parts:
        return None
    if all(p.dtype == torch.bool for p in parts):
        out = parts[0]
        for p in parts[1:]:
            out = out & p
        return out
    dtype = next(p.dtype for p in parts if p.dtype != torch.bool)
    total: Tensor | None = None
    for p in parts:
        add = torch.zeros((), dtype=dtype, device=p.device).masked_fill(~p, NEG_INF) if p.dtype == torch.bool else p
        total = add if total is None else total + add
    return total


class MultiHeadAttention(nn.Module):
    """Multi-head attention ``out_proj(attention(q_proj(query), k_proj(key), v_proj(value)))``.

    Args:
        embed_dim: model dim (query input and output); split into ``num_heads`` heads of
            ``D = embed_dim // num_heads``.
        num_heads: query heads ``H``.
        num_kv_heads: key/value heads ``G`` (``H % G == 0``): ``None`` or ``H`` for multi-head,
            ``1 < G < H`` for grouped-query, ``1`` for multi-query attention.
        kdim: input dim of ``key`` (default ``embed_dim``).
        vdim: input dim of ``value`` (default ``embed_dim``).
        bias: add biases to the four projections (like torch).
        dropout: dropout on the attention probabilities in training mode.
        batch_first: inputs and outputs are ``(B, L, ·)``; ``False`` means ``(L, B, ·)`` (torch's default).
        device: device of the parameters.
        dtype: dtype of the parameters.

    Example:
        >>> import torch
        >>> from attnkit.nn import MultiHeadAttention
        >>> mha = MultiHeadAttention(64, 8, num_kv_heads=2)
        >>> x = torch.randn(2, 10, 64)
        >>> out, weights = mha(x, need_weights=True, causal=True)
        >>> out.shape, weights.shape
        (torch.Size([2, 10, 64]), torch.Size([2, 10, 10]))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads < 1 or embed_dim % num_heads != 0:
            raise AttnkitError.build("embed_dim divisible by num_heads >= 1", f"embed_dim={embed_dim}, num_heads={num_heads}",
                                     "choose num_heads dividing embed_dim")
        if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
            raise AttnkitError.build(f"num_kv_heads dividing num_heads={num_heads}", f"num_kv_heads={num_kv_heads}",
                                     "use num_heads (MHA), a divisor (GQA) or 1 (MQA)")
        if not 0.0 <= dropout < 1.0:
            raise AttnkitError.build("dropout in [0, 1)", repr(dropout), "e.g. dropout=0.1")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.head_dim = embed_dim // num_heads
        self.dropout, self.batch_first = float(dropout), batch_first
        check_device(device)
        kw = dict(bias=bias, device=device, dtype=dtype)
        kv_out = num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, **kw)
        self.k_proj = nn.Linear(self.kdim, kv_out, **kw)
        self.v_proj = nn.Linear(self.vdim, kv_out, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's initialization: Xavier-uniform input projections, zero biases."""
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))  # nn.Linear's default

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}")

    def new_cache(self, initial_capacity: int = 16) -> KVCache:
        """An empty [`attnkit.KVCache`][attnkit.nn.kv_cache.KVCache] for incremental decoding with this module (see [`forward`][attnkit.nn.multihead.MultiHeadAttention.forward])."""
        return KVCache(initial_capacity)

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> "MultiHeadAttention":
        """A copy of a ``torch.nn.MultiheadAttention`` (weights, dropout, ``batch_first``, train/eval mode).

        Both modules then give the same output for the same inputs and masks.

        Raises:
            AttnkitError: for ``add_bias_kv=True`` or ``add_zero_attn=True`` (not supported).

        Example:
            >>> import torch
            >>> from attnkit.nn import MultiHeadAttention
            >>> ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
            >>> ours = MultiHeadAttention.from_torch(ref).eval()
            >>> x = torch.randn(2, 5, 16)
            >>> torch.allclose(ours(x, x, x)[0], ref(x, x, x)[0], atol=1e-6)
            True
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise AttnkitError.build("a torch.nn.MultiheadAttention", type(module).__name__, "pass the torch module")
        if module.bias_k is not None or module.add_zero_attn:
            raise AttnkitError.build("add_bias_kv=False and add_zero_attn=False", "a module using them",
                                     "append the learned key/value or zero position to key/value yourself")
        ref = module.out_proj.weight
        new = cls(module.embed_dim, module.num_heads, kdim=module.kdim, vdim=module.vdim,
                  bias=module.in_proj_bias is not None, dropout=module.dropout, batch_first=module.batch_first,
                  device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if module._qkv_same_embed_dim:
                weights = module.in_proj_weight.chunk(3)
            else:
                weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
            biases = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None,) * 3
            for proj, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
            new.out_proj.weight.copy_(module.out_proj.weight)
            if module.out_proj.bias is not None:
                new.out_proj.bias.copy_(module.out_proj.bias)
        return new.train(module.training)

    def _torch_attn_mask(self, attn_mask: Tensor, B: int, L: int, S: int) -> Tensor:
        """torch's ``attn_mask`` ``(L, S)`` or ``(B·H, L, S)``, bool True = masked → attnkit mask."""
        if attn_mask.dim() == 2 and attn_mask.shape == (L, S):
            attn_mask = attn_mask[None, None]
        elif attn_mask.dim() == 3 and attn_mask.shape == (B * self.num_heads, L, S):
            attn_mask = attn_mask.view(B, self.num_heads, L, S)
        else:
            raise AttnkitError.build(f"attn_mask of shape (L, S) = ({L}, {S}) or (B·H, L, S) = ({B * self.num_heads}, {L}, {S})",
                                     str(tuple(attn_mask.shape)), "or pass mask= (True = attend, broadcastable to (B, H, L, S))")
        return ~attn_mask if attn_mask.dtype == torch.bool else attn_mask

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        *,
        mask: Tensor | None = None,
        causal: bool | str = False,
        window: tuple[int | None, int | None] | None = None,
        kv_lengths: Tensor | None = None,
        q_lengths: Tensor | None = None,
        cache: KVCache | None = None,
        engine: str = "auto",
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value`` (self-attention when they are omitted).

        Shapes (``batch_first=True``; swap the first two dims otherwise; a missing batch dim is
        allowed, as in torch): ``query (B, L, embed_dim)``, ``key (B, S_new, kdim)``,
        ``value (B, S_new, vdim)``. ``S`` is the number of keys attended: ``S_new``, or the cached
        length after appending when ``cache`` is given.

        Args:
            key_padding_mask: torch's ``(B, S)``: bool True = *ignore* (padding), or float added.
            need_weights: also return the attention weights (exact, from the engine, before dropout).
            attn_mask: torch's ``(L, S)`` or ``(B·H, L, S)``: bool True = *not allowed*, or float added.
            average_attn_weights: average the weights over heads: ``(B, L, S)``; else ``(B, H, L, S)``.
            mask: attnkit's mask: bool True = *may attend*, or float added; broadcastable to
                ``(B, H, L, S)``. Combined with ``attn_mask`` and ``key_padding_mask`` (all apply).
            causal: as in [`attnkit.attention`][attnkit.functional.attention]. ``causal=True`` is
                bottom-right aligned: with a cache, the ``L`` new queries sit at the last ``L`` key
                positions, so decoding step by step equals full causal attention.
            window: ``(left, right)``, as in [`attnkit.attention`][attnkit.functional.attention].
            kv_lengths: ``(B,)`` key lengths, as in [`attnkit.attention`][attnkit.functional.attention].
            q_lengths: ``(B,)`` query lengths, as in [`attnkit.attention`][attnkit.functional.attention].
            cache: an [`attnkit.KVCache`][attnkit.nn.kv_cache.KVCache] (see [`new_cache`][attnkit.nn.multihead.MultiHeadAttention.new_cache]); this call's projected
                keys/values are appended (to every row, each at its own length) and every cached
                position is attended. A ragged cache supplies ``kv_lengths`` unless it is given.
            engine: forwarded to [`attnkit.attention`][attnkit.functional.attention].

        Returns:
            ``(out, weights)``: ``out`` shaped like ``query`` (with ``embed_dim`` features) and the
            weights (or ``None`` unless ``need_weights``). Query rows with no visible key give 0.

        Raises:
            AttnkitError: for mismatched shapes or masks.
        """
        key = query if key is None else key
        value = key if value is None else value
        unbatched = query.dim() == 2  # torch's unbatched (L, ·) inputs, whatever batch_first says
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        for name, t, dim in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise AttnkitError.build(f"{name} as a floating-point tensor (B, ·, {dim})",
                                         f"{type(t).__name__} of dtype {getattr(t, 'dtype', None)}",
                                         f"embed token ids first (nn.Embedding), or convert with {name}.float()")
            if t.dim() != 3 or t.shape[-1] != dim:
                raise AttnkitError.build(f"{name} of shape (B, ·, {dim})" + ("" if self.batch_first else " after (L, B) → (B, L)"),
                                         str(tuple(t.shape)), "check batch_first and the module's kdim/vdim")
        weight = self.q_proj.weight
        check_on(weight.device, "the module's parameters", query=query, key=key, value=value,
                 key_padding_mask=key_padding_mask, attn_mask=attn_mask, mask=mask)
        B, L = query.shape[:2]
        H, G, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(query).reshape(B, L, H, D).transpose(1, 2)  # (B, H, L, D)
        k = self.k_proj(key).reshape(B, -1, G, D).transpose(1, 2)  # (B, G, S_new, D)
        v = self.v_proj(value).reshape(B, -1, G, D).transpose(1, 2)  # (B, G, S_new, D)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, G, S, D): everything cached so far
            kv_lengths = cache.kv_lengths if kv_lengths is None else kv_lengths  # rows of a ragged cache differ
        S = k.shape[2]

        parts = []
        if mask is not None:
            parts.append(mask)
        if attn_mask is not None:
            parts.append(self._torch_attn_mask(attn_mask, B, L, S))
        if key_padding_mask is not None:
            if key_padding_mask.shape != (B, S):
                raise AttnkitError.build(f"key_padding_mask of shape (B, S) = ({B}, {S})", str(tuple(key_padding_mask.shape)),
                                         "one entry per (cached) key; True = padding")
            parts.append(_masks.from_key_padding_mask(key_padding_mask))
        res = attention(
            q, k, v, mask=_combine(parts), causal=causal, window=window, kv_lengths=kv_lengths, q_lengths=q_lengths,
            dropout_p=self.dropout if self.training else 0.0, return_weights=need_weights, engine=engine,
        )
        out = res.out if need_weights else res
        out = self.out_proj(out.transpose(1, 2).reshape(B, L, H * D))  # (B, L, embed_dim)
        weights = None
        if need_weights:
            weights = res.weights.mean(dim=1) if average_attn_weights else res.weights  # (B, L, S) | (B, H, L, S)
        if unbatched:
            out, weights = out.squeeze(0), (weights.squeeze(0) if weights is not None else None)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

