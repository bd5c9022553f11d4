"""``PrunedMultiheadAttention``: ``nn.MultiheadAttention`` with some of its heads removed.

``nn.MultiheadAttention`` cannot lose a head in place: its forward takes the head width from its
input (``embed_dim // num_heads``), so its inner width must equal the model width. Head pruning
(``attention.prune_attention_heads``) therefore replaces it by this module, which keeps the kept
heads' rows of the q, k and v projections (three ``nn.Linear``, from the query, key and value
widths to ``num_heads * head_dim``), the matching input columns of ``out_proj`` (back to
``embed_dim``), the same call (``query, key, value, key_padding_mask, need_weights, attn_mask,
average_attn_weights, is_causal``), the same layout (``batch_first`` or not, unbatched inputs) and
the same outputs ``(attn_output, attn_weights)``. ``bias_k``/``bias_v`` and ``add_zero_attn`` are
kept; a 3-D ``attn_mask`` with one mask per original head keeps the kept heads' masks. Averaged
attention weights average over the kept heads.

It answers ``nn.TransformerEncoderLayer``'s fast-path checks with ``in_proj_bias = None`` and
``_qkv_same_embed_dim = False``, so an encoder layer holding it takes its ordinary path (the fused
kernel needs the packed weights of the full module).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.techniques.neuron_pruning.heads import slice_linear


def _float_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True: not attended) as an additive float mask; a float mask as it is."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, -math.inf)


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention whose heads were cut out of an ``nn.MultiheadAttention``.

    Attributes:
        q_proj, k_proj, v_proj: ``nn.Linear`` from the query, key and value widths to
            ``num_heads * head_dim`` (head h: outputs ``h * head_dim : (h + 1) * head_dim``).
        out_proj: ``nn.Linear(num_heads * head_dim, embed_dim)``.
        bias_k, bias_v: ``(1, 1, num_heads * head_dim)`` parameters, or None.
        num_heads, head_dim, embed_dim, kdim, vdim, dropout, batch_first, add_zero_attn: as in
            ``nn.MultiheadAttention`` (``head_dim`` is the original's; ``num_heads`` the kept).
        kept_heads: the original indices of the kept heads, in order.
    """

    #: Read by ``nn.TransformerEncoderLayer``'s fast-path checks: not a packed module.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, mha: nn.MultiheadAttention):
        """Copy every head of ``mha`` (the same function, unpacked into three Linear layers)."""
        super().__init__()
        e, d, h = mha.embed_dim, mha.head_dim, mha.num_heads
        self.embed_dim, self.kdim, self.vdim, self.head_dim = e, mha.kdim, mha.vdim, d
        self.num_heads, self.kept_heads = h, tuple(range(h))
        self.dropout, self.batch_first = mha.dropout, mha.batch_first
        self.add_zero_attn = mha.add_zero_attn
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().chunk(3)
        else:
            weights = [mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight]
        biases = [None] * 3 if mha.in_proj_bias is None else mha.in_proj_bias.detach().chunk(3)
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weights, biases, strict=True):
            lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device,
                            dtype=w.dtype)  # fmt: skip
            with torch.no_grad():
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            setattr(self, name, lin)
        self.out_proj = slice_linear(mha.out_proj, None, None)
        self.bias_k = None if mha.bias_k is None else nn.Parameter(mha.bias_k.detach().clone())
        self.bias_v = None if mha.bias_v is None else nn.Parameter(mha.bias_v.detach().clone())
        self.train(mha.training)

    @torch.no_grad()
    def keep(self, heads: list[int]) -> PrunedMultiheadAttention:
        """Keep only the given heads (indices among the current ones, sorted, at least one).

        Returns:
            The module itself, smaller.
        """
        d = self.head_dim
        chans = torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads])
        chans = chans.to(self.out_proj.weight.device)
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(self, name, slice_linear(getattr(self, name), chans, None))
        self.out_proj = slice_linear(self.out_proj, None, chans)
        for name in ("bias_k", "bias_v"):
            if getattr(self, name) is not None:
                setattr(self, name, nn.Parameter(getattr(self, name).detach()[..., chans]))
        self.kept_heads = tuple(self.kept_heads[h] for h in heads)
        self.num_heads = len(heads)
        return self

    def _masks(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        shape: tuple[int, int, int],
        dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """One additive mask of shape broadcastable to (batch, heads, queries, keys), as
        ``F.multi_head_attention_forward`` builds it (bias_k and the zero key add a column)."""
        n, tq, s = shape
        extra = int(self.bias_k is not None) + int(self.add_zero_attn)
        am, kpm = _float_mask(attn_mask, dtype), _float_mask(key_padding_mask, dtype)
        if am is not None:
            if am.dim() == 3:  # one mask per original head: keep the kept heads'
                am = am.unflatten(0, (n, -1))[:, list(self.kept_heads)]
            am = F.pad(am, (0, extra))
        if kpm is not None:
            kpm = F.pad(kpm, (0, extra))[:, None, None, :]
            am = kpm if am is None else am + kpm
        if am is not None and am.shape[-1] != s + extra:
            raise RuntimeError(f"the masks cover {am.shape[-1] - extra} keys, not {s}")
        return am

    def _qkv(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple:
        """Project (batch, tokens, width) inputs to (batch, heads, tokens, head_dim) q, k, v,
        with bias_k/bias_v and a zero key appended as ``nn.MultiheadAttention`` does."""
        n = query.shape[0]
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(n, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(n, 1, -1)], dim=1)
        q, k, v = (z.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
                   for z in (q, k, v))  # fmt: skip
        if self.add_zero_attn:
            k, v = (torch.cat([z, z.new_zeros(z.shape[:2] + (1, z.shape[3]))], dim=2)
                    for z in (k, v))  # fmt: skip
        return q, k, v

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``nn.MultiheadAttention.forward`` on the kept heads: (attn_output, attn_weights)."""
        batched = query.dim() == 3
        if not batched:
            query, key, value = query[None], key[None], value[None]
            key_padding_mask = None if key_padding_mask is None else key_padding_mask[None]
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        causal = is_causal and key_padding_mask is None and not need_weights
        n, tq, s = query.shape[0], query.shape[1], key.shape[1]
        mask = None if causal else self._masks(attn_mask, key_padding_mask, (n, tq, s),
                                                query.dtype)  # fmt: skip
        q, k, v = self._qkv(query, key, value)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / self.head_dim)) @ k.transpose(-2, -1)
            weights = (scores if mask is None else scores + mask).softmax(dim=-1)
            weights = F.dropout(weights, p=p) if p > 0 else weights
            y = weights @ v
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                               is_causal=causal)  # fmt: skip
        out = self.out_proj(y.transpose(1, 2).flatten(2))
        if not batched:
            return out[0], None if weights is None else weights[0]
        return (out if self.batch_first else out.transpose(0, 1)), weights
