"""A decoder-only character transformer in plain PyTorch, nanoGPT-sized for a CPU, and its sampler.

``CharTransformer``: token and learned position embeddings, ``depth`` blocks of multi-head causal
self-attention (one fused q/k/v ``Linear``, ``F.scaled_dot_product_attention(is_causal=True)``,
an output projection) and a GELU MLP, each wrapped in a residual connection with a normalization
before it (pre-LN, the default, as GPT-2) or after the sum (post-LN, the original Transformer's),
a final normalization (pre-LN only: a post-LN block already ends in one) and an output head tied to
the token embedding. The normalization is an argument: LayerNorm, RMSNorm, BatchNorm over the
batch's tokens, or none.

At the defaults (4 layers, 4 heads, width 128, context 128, MLP 4x) on the 84-character vocabulary
of the Shakespeare training plays, the model has 820,480 parameters: 4 x 198,272 in the blocks,
10,752 in the token embedding (shared with the head), 16,384 in the position embedding and 256 in
the final LayerNorm (``parameter_count``).

``CausalSelfAttention.written_out`` computes softmax(Q K^T / sqrt(d) + mask) V by hand, the
reference that ``scaled_dot_product_attention`` is checked against; setting a model's attention
``impl`` to "written_out" (``set_attention``) runs the whole model on it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core.params import ParameterError, check_choice, check_float, check_int

#: Normalizations a block can use.
NORM_TYPES = ("layernorm", "rmsnorm", "batchnorm", "none")
#: Where a block normalizes: before each sub-layer (inside the residual branch) or after the sum.
PLACEMENTS = ("pre", "post")
#: How attention is computed: PyTorch's fused kernel, or the formula written out.
ATTENTION_IMPLS = ("sdpa", "written_out")
#: The defaults: nanoGPT's small character model, cut to a CPU's size.
DEFAULTS = {"context": 128, "width": 128, "depth": 4, "heads": 4, "mlp_ratio": 4}


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over every token of the batch: statistics per channel over (batch, position).

    Takes (batch, tokens, width), as the other norms do. In training mode a token's output depends
    on the other tokens of the batch, later positions included: a leak of the future that the
    causality of the attention cannot stop (one reason transformers do not use it).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize (batch, tokens, width) per channel."""
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def make_norm(norm: str, width: int) -> nn.Module:
    """A normalization layer over the last dimension of (batch, tokens, width).

    Args:
        norm: "layernorm" (``nn.LayerNorm``), "rmsnorm" (``nn.RMSNorm``: scale only, no mean),
            "batchnorm" (``TokenBatchNorm``) or "none" (``nn.Identity``).
        width: the model width.

    Returns:
        The layer.
    """
    check_choice("norm", norm, NORM_TYPES)
    if norm == "layernorm":
        return nn.LayerNorm(width)
    if norm == "rmsnorm":
        return nn.RMSNorm(width)
    if norm == "batchnorm":
        return TokenBatchNorm(width)
    return nn.Identity()


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: fused q/k/v projection, attention, output projection.

    Attributes:
        qkv: ``Linear(width, 3 * width)``; its output is q, k, v, each split into ``heads`` heads
            of ``head_dim = width // heads`` channels (head h: channels ``h * d : (h + 1) * d``).
        proj: ``Linear(width, width)``, the output projection.
        heads: the number of heads; ``head_dim``: channels per head. Their product, the inner
            width, is ``width`` when built; head pruning
            (``techniques.neuron_pruning.prune_heads``) lowers ``heads`` and slices ``qkv`` to
            ``3 * heads * head_dim`` outputs and ``proj`` to ``heads * head_dim`` inputs.
        impl: "sdpa" or "written_out" (see ``ATTENTION_IMPLS``).
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ParameterError("heads", heads, f"a divisor of the width {width}")
        self.heads, self.dropout, self.impl = heads, dropout, "sdpa"
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.resid_drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(self.heads * self.head_dim, dim=2)
        return tuple(z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))

    def written_out(self, x: torch.Tensor) -> torch.Tensor:
        """The heads' outputs by the formula: softmax(Q K^T / sqrt(d) + mask) V, mask -inf above
        the diagonal (a token sees itself and earlier tokens). No dropout.

        Args:
            x: (batch, tokens, width).

        Returns:
            (batch, heads, tokens, head_dim), before the output projection.
        """
        q, k, v = self._split(x)
        t, d = x.shape[1], q.shape[-1]
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v

    def heads_output(self, x: torch.Tensor) -> torch.Tensor:
        """The heads' outputs by ``F.scaled_dot_product_attention(is_causal=True)`` (attention
        dropout in training mode).

        Args:
            x: (batch, tokens, width).

        Returns:
            (batch, heads, tokens, head_dim), before the output projection.
        """
        q, k, v = self._split(x)
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention of (batch, tokens, width), projected back to (batch, tokens, width)."""
        y = self.written_out(x) if self.impl == "written_out" else self.heads_output(x)
        y = y.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.heads * self.head_dim)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    """The block's feed-forward part: Linear to ``hidden``, GELU, Linear back, dropout."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., width) to (..., width)."""
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """One transformer block: attention and MLP, each in a residual connection with a norm.

    Pre-LN: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``. Post-LN: ``norm1(x + attn(x))``,
    then ``norm2(x + mlp(x))``.
    """

    def __init__(
        self, width: int, heads: int, hidden: int, dropout: float, norm: str, placement: str
    ):
        super().__init__()
        self.placement = check_choice("placement", placement, PLACEMENTS)
        self.norm1, self.norm2 = make_norm(norm, width), make_norm(norm, width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.mlp = MLP(width, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, width) to the same shape."""
        if self.placement == "pre":
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class CharTransformer(nn.Module):
    """A decoder-only character transformer (see the module's docstring).

    Args:
        vocab_size: characters in the vocabulary (``Vocab.size``), at least 2.
        context: the longest input, in characters (position embeddings), at least 1.
        width: the model width, divisible by ``heads``.
        depth: the number of blocks, at least 1.
        heads: attention heads per block.
        mlp_ratio: the MLP's hidden width as a multiple of ``width``.
        dropout: dropout on the embeddings, attention weights and residual branches, in [0, 1).
        norm: one of ``NORM_TYPES``.
        placement: "pre" (pre-LN) or "post" (post-LN).

    Weights start as GPT-2's: normal(0, 0.02), the residual branches' output projections
    normal(0, 0.02 / sqrt(2 * depth)), biases zero.
    """

    def __init__(
        self,
        vocab_size: int,
        context: int = DEFAULTS["context"],
        width: int = DEFAULTS["width"],
        depth: int = DEFAULTS["depth"],
        heads: int = DEFAULTS["heads"],
        mlp_ratio: int = DEFAULTS["mlp_ratio"],
        dropout: float = 0.0,
        norm: str = "layernorm",
        placement: str = "pre",
    ):
        super().__init__()
        vocab_size = check_int("vocab_size", vocab_size, minimum=2)
        self.context = check_int("context", context, minimum=1)
        width, depth = check_int("width", width, minimum=1), check_int("depth", depth, minimum=1)
        heads = check_int("heads", heads, minimum=1)
        if width % heads:
            raise ParameterError("heads", heads, f"a divisor of the width {width}")
        hidden = width * check_int("mlp_ratio", mlp_ratio, minimum=1)
        dropout = check_float("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        check_choice("norm", norm, NORM_TYPES)
        check_choice("placement", placement, PLACEMENTS)
        self.config = dict(
            vocab_size=vocab_size, context=context, width=width, depth=depth, heads=heads,
            mlp_ratio=mlp_ratio, dropout=dropout, norm=norm, placement=placement,
        )  # fmt: skip
        self.tok_emb = nn.Embedding(vocab_size, width)
        self.pos_emb = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(width, heads, hidden, dropout, norm, placement) for _ in range(depth)
        )
        self.norm_f = make_norm(norm, width) if placement == "pre" else nn.Identity()
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied: one matrix, one storage
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim == 2:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-character logits.

        Args:
            idx: (batch, tokens) int64 character indices, tokens at most ``context``.

        Returns:
            (batch, tokens, vocab_size) logits; position t predicts character t + 1.
        """
        t = idx.shape[1]
        if t > self.context:
            raise ParameterError("context", t, f"at most the model's context {self.context}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm_f(x))


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters of a model (a tied matrix counted once).

    Args:
        model: any module.

    Returns:
        The number of scalars in its distinct parameter tensors.
    """
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared one once


def set_attention(model: nn.Module, impl: str) -> nn.Module:
    """Switch every ``CausalSelfAttention`` of a model to one attention implementation.

    Args:
        model: a ``CharTransformer`` (or any module holding ``CausalSelfAttention``).
        impl: "sdpa" or "written_out".

    Returns:
        The same model, changed in place.
    """
    check_choice("impl", impl, ATTENTION_IMPLS)
    for m in model.modules():
        if isinstance(m, CausalSelfAttention):
            m.impl = impl
    return model


@torch.no_grad()
def generate(
    model: CharTransformer,
    prompt_ids: torch.Tensor,
    n: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample ``n`` characters after a prompt, one at a time, in evaluation mode.

    Each step feeds the last ``model.context`` characters and draws the next from
    softmax(logits / temperature); temperature 0 takes the most likely character. The draw is
    made on the CPU with ``generator``, so a seed gives the same text on any device.

    Args:
        model: the model (its device is used; its training mode is restored afterwards).
        prompt_ids: 1-D int64 indices of the prompt, at least one.
        n: characters to add, at least 0.
        temperature: >= 0.
        generator: a seeded CPU ``torch.Generator`` (None: torch's global one).

    Returns:
        1-D int64 tensor on the CPU: the prompt followed by the ``n`` new indices.
    """
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.ndim != 1 or len(prompt_ids) < 1:
        raise ParameterError("prompt_ids", prompt_ids, "a 1-D tensor of at least one index")
    n = check_int("n", n, minimum=0)
    temperature = check_float("temperature", temperature, 0.0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = prompt_ids.detach().cpu().long()
    try:
        for _ in range(n):
            window = out[-model.context :].unsqueeze(0).to(device)
            logits = model(window)[0, -1].float().cpu()
            if temperature == 0:
                nxt = logits.argmax().view(1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            out = torch.cat([out, nxt])
    finally:
        model.train(was_training)
    return out
