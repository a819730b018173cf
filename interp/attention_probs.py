"""An attention processor that hands each call's probabilities to a callback.

diffusers' `AttnProcessor` computes softmax(QKᵀ·scale) explicitly; `CapturingProcessor` runs it with
the module seen through `_Recording`, so the probabilities it computes also reach `keep`. Nothing is
detached: the cross-attention maps (`interventions.attention_maps`) read them under `no_grad`, and
the tiny UNet's grounding term (`models.tiny.grounding`) trains through them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.attention_processor import AttnProcessor


class _Recording:
    """`attn` as diffusers' `AttnProcessor` reads it, except that the attention probabilities it
    computes are also handed to `keep`; everything else is the real module (hooks on its
    projections still fire)."""

    def __init__(self, attn: torch.nn.Module, keep: Callable[[torch.Tensor], None]) -> None:
        self._attn, self._keep = attn, keep

    def __getattr__(self, name: str) -> object:
        return getattr(self._attn, name)

    def get_attention_scores(
        self, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        probs = self._attn.get_attention_scores(query, key, attention_mask)
        self._keep(probs)
        return probs


class CapturingProcessor(AttnProcessor):
    """diffusers' `AttnProcessor` (explicit probabilities) that hands each call's probabilities
    ((batch * heads, queries, tokens)) to `keep`."""

    def __init__(self, keep: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.keep = keep

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        return super().__call__(
            _Recording(attn, self.keep), hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
        )
