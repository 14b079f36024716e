"""Bidirectional attention for embedding, in the same weights that generate causally.

GritLM copied and patched each modeling file to add an ``is_causal`` switch. We change attention through a public
argument instead: transformers 5 passes a ready 4-D ``attention_mask`` through to the attention kernels unchanged
(``masking_utils.create_causal_mask`` returns it as-is). A mask in which every query sees every non-pad key is
bidirectional attention, per call, with no state on the model: a server can embed and generate at once.

We do not toggle ``config.is_causal``: it is shared, mutable state on the model (unsafe with concurrent requests),
and with no padding transformers drops the mask and SDPA falls back to the module's own ``is_causal=True``.

An additive float mask works with both the ``sdpa`` and ``eager`` kernels. Pad queries attend to the real keys too
(their outputs are discarded), which avoids all-masked rows and the NaNs they produce.
"""

from __future__ import annotations

import torch


def bidirectional_mask(padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 padding mask → (B, 1, T, T) additive mask: 0 where a key is real, dtype-min where it is padding."""
    keys = padding_mask[:, None, None, :].bool()  # (B, 1, 1, T)
    mask = torch.zeros(keys.shape, dtype=dtype, device=padding_mask.device)
    mask = mask.masked_fill(~keys, torch.finfo(dtype).min)
    return mask.expand(-1, 1, padding_mask.shape[1], -1)  # (B, 1, T, T), a view: no T² memory until the kernel


def positions(padding_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so left- and right-padded batches give the same positions."""
    return (padding_mask.long().cumsum(-1) - 1).clamp(min=0)


def hidden_states(
    base_model: torch.nn.Module, input_ids: torch.Tensor, padding_mask: torch.Tensor, bidirectional: bool = True
) -> torch.Tensor:
    """Last hidden states (B, T, H) of the decoder body, with bidirectional or causal attention."""
    if bidirectional:
        mask = bidirectional_mask(padding_mask, base_model.dtype)
    else:
        mask = padding_mask
    out = base_model(input_ids=input_ids, attention_mask=mask, position_ids=positions(padding_mask), use_cache=False)
    return out.last_hidden_state


@torch.inference_mode()
def check_bidirectional(base_model: torch.nn.Module, model_path: str = "") -> None:
    """Refuse an architecture that ignores the 4-D mask: the first token must see a change to the last one."""
    from grit.loading import UnsupportedModelError

    device = next(base_model.parameters()).device
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9]], device=device)
    ones = torch.ones_like(ids)
    arch = getattr(base_model.config, "model_type", "?")
    advice = (
        "so grit cannot give it bidirectional attention for embedding; use a Llama/Mistral/Qwen2/Gemma-style decoder"
    )
    try:
        bi = hidden_states(base_model, ids, ones, bidirectional=True)[:, 0]
        causal = hidden_states(base_model, ids, ones, bidirectional=False)[:, 0]
    except (RuntimeError, ValueError, TypeError, IndexError) as e:  # ALiBi (Bloom, Falcon) builds its own bias
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(
            f"model {model_path!r} ({arch}) fails on a 4-D attention mask ({type(e).__name__}: {first}), {advice}"
        ) from None
    seen = (bi[0] - bi[1]).abs().max().item()  # > 0: the first token saw the last
    leak = (causal[0] - causal[1]).abs().max().item()  # ~0: causal attention does not look ahead
    if seen == 0 or seen <= 10 * leak:
        raise UnsupportedModelError(f"model {model_path!r} ({arch}) does not honour a 4-D attention mask, {advice}")
