"""Padding-free training batches: a batch's examples concatenated into one row.

stanford_alpaca pads every batch to its longest example; on GenMedGPT-5k-id about a quarter of a
batch of 8 is padding, computed and thrown away. With `--packing` a batch is one row of all its
examples back to back (`DataCollatorWithFlattening`): `position_ids` restart at 0 for every
example and `cu_seq_lens_*` mark where each one starts, so

- on GPUs with flash-attention installed, its varlen kernel attends within each example;
- elsewhere `packed_sdpa` (registered here) runs PyTorch's causal SDPA once per example.
  transformers' own sdpa would also keep the examples apart, through a block-causal mask over
  the whole row, but it computes every masked score: the square of the row's length instead of
  the sum of each example's square, n times the work for n examples of similar length.

`check_isolation` runs a model on two examples packed and apart and refuses a model whose
attention lets them see each other (remote code that ignores `position_ids`, say).
"""

from __future__ import annotations

import importlib.util
import logging

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface, DataCollatorWithFlattening
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

logger = logging.getLogger(__name__)

PACKED_SDPA = "packed_sdpa"


class PackingError(Exception):
    """The model cannot train on packed rows; the message says why and what to use instead."""


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Causal SDPA per example of a packed row (cu_seq_lens_q from the collator); plain sdpa otherwise
    (padded batches, generation). A sliding-window layer (Gemma 3: 5 of every 6) sees only its last
    `sliding_window` keys, as in the model's own masks; examples within the window need no mask."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if getattr(module, "attn_logit_softcapping", None) is not None:
        raise PackingError("--packing: this model caps attention logits (Gemma 2), which SDPA cannot do. "
                           "Train without --packing, or use --group_by_length.")
    window = kwargs.get("sliding_window")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    bounds = bounds.tolist()
    parts = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
        if window is not None and e - s > window:
            pos = torch.arange(e - s, device=query.device)
            allowed = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - window)
            parts.append(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scaling))
        else:
            parts.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True))
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
# Padded batches and generation under this name get exactly the masks plain sdpa gets.
AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


def collator() -> DataCollatorWithFlattening:
    """One row per batch: input_ids, labels (the first of each example masked), position_ids and cu_seq_lens."""
    return DataCollatorWithFlattening(return_flash_attn_kwargs=True)


def enable(model) -> str:
    """Switch the model to an attention that keeps packed examples apart; returns its name.

    flash-attention's varlen kernel where it runs (CUDA, `flash_attn` installed), else packed_sdpa.
    Called before the Trainer or FSDP moves the model to its GPU."""
    current = model.config._attn_implementation or ""
    if current.startswith("flash_attention"):
        return current  # varlen kernels read cu_seq_lens themselves
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        try:
            model.set_attn_implementation("flash_attention_2")
            return "flash_attention_2"
        except (ImportError, ValueError) as e:
            logger.warning("flash_attention_2 unavailable (%s); packed rows use %s", e, PACKED_SDPA)
    set_attention(model, PACKED_SDPA)
    return PACKED_SDPA


def set_attention(model, name: str) -> None:
    """Set the attention implementation on the model and every sub-config (peft and FSDP wrappers included)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = name


def disable(model) -> None:
    """Back to plain sdpa before saving: `packed_sdpa` exists only where this module is imported."""
    if model.config._attn_implementation == PACKED_SDPA:
        set_attention(model, "sdpa")


@torch.no_grad()
def check_isolation(model, lengths: tuple[int, ...] | None = None, tolerance: float = 1e-3) -> float:
    """Largest logit difference between random examples run packed and run apart.

    With a sliding window (Gemma 3) one example is longer than the window, so the window is checked too.

    Raises PackingError when the examples leak into each other, so a model whose attention
    ignores packed rows is refused before training instead of learning across examples."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(0)
        vocab = model.get_input_embeddings().num_embeddings
        if lengths is None:
            window = getattr(model.config, "sliding_window", None)
            lengths = (5, 7) + ((window + 3,) if window and window <= 4096 else ())
        examples = [{"input_ids": torch.randint(3, vocab, (n,), generator=generator).tolist()} for n in lengths]
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator()(examples).items()}
        batch.pop("labels")
        packed = model(**batch, use_cache=False).logits[0].float()
        apart = torch.cat([
            model(input_ids=torch.tensor([e["input_ids"]], device=device), use_cache=False).logits[0].float()
            for e in examples
        ])
    finally:
        model.train(was_training)
    diff = float((packed - apart).abs().max())
    if not diff <= tolerance:
        raise PackingError(
            f"--packing: this model's attention ({model.config._attn_implementation}) lets packed examples see each "
            f"other (logits differ by {diff:.3g} from the examples run apart). Train without --packing, or use "
            "--group_by_length to cut padding instead."
        )
    return diff
