"""Packed samples kept apart inside Gated DeltaNet linear-attention layers (Qwen3.5, Qwen3.5-MoE).

Full-attention layers keep packed samples apart by themselves: row 0 of the 4-row ``position_ids`` restarts at
each sample, and transformers turns that into a block-diagonal mask (sdpa, eager) or per-sample ``cu_seqlens``
(flash-attention). A linear-attention layer has no mask. Its short causal convolution (a window of
``linear_conv_kernel_dim`` tokens) and its recurrent state run straight across a sample boundary, so without help
the second sample of a packed row sees the end of the first::

    row      [a0 a1 a2 | b0 b1]         position_ids[0] = [0 1 2 0 1]  ->  samples [0, 3) and [3, 5)
    conv     b0's window = (a1, a2, b0)          wanted: (pad, pad, b0)
    state    S(b0) = decay * S(a2) + update(b0)   wanted: S(b0) = update(b0)

transformers' layer forwards sequence boundaries to its kernels when the caller passes them
(``cu_seq_lens_q`` -> flash-linear-attention's ``cu_seqlens``, ``seq_idx`` -> causal-conv1d), and refuses them on
its reference PyTorch path (which cannot honour them). Nobody passes them during packed training. This module
does, for one model:

* a forward pre-hook on the text model reads the sample boundaries from row 0 of the position ids it is called
  with (the same rule transformers uses for attention: a new sample wherever the position does not advance by 1);
* every linear-attention module of that model gets an instance-level ``forward`` that, when the row holds more
  than one sample and no cache is in use, either hands the boundaries to the kernels (CUDA with
  flash-linear-attention and causal-conv1d installed, one packed row) or runs transformers' own forward once per
  sample and concatenates (the exact reference path, used on CPU).

It is attached by :func:`qwenvl.model.loader.load_model` to models whose family entry says ``linear_attention``
(training, ``verify_packing``, every inference backend); nothing is patched globally, other models and other
instances of the class are untouched, and :meth:`PackedLinearAttention.detach` undoes it. With one sample per row
(inference, padded batches) and whenever a cache is in use (generation), transformers' forward runs unchanged.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import types
from typing import Any

import torch


logger = logging.getLogger(__name__)


def sample_segments(text_positions: torch.Tensor) -> list[list[tuple[int, int]]]:
    """``[(start, end), ...]`` of the samples of each row of ``(B, L)`` text position ids: a sample starts wherever
    the position does not follow the previous one by 1 (``[0 1 2 0 1] -> [(0, 3), (3, 5)]``)."""
    positions = text_positions.detach().to("cpu")
    out = []
    for row in positions:
        starts = [0] + [i for i in range(1, len(row)) if int(row[i]) != int(row[i - 1]) + 1]
        out.append(list(zip(starts, starts[1:] + [len(row)])))
    return out


def kernels_available() -> bool:
    """Whether flash-linear-attention and causal-conv1d are installed (transformers then uses them on CUDA), unless
    ``QWENVL_LINEAR_ATTENTION_KERNELS=0`` asks for the per-sample path (to compare the two, as
    scripts/gpu_check.sh does)."""
    if os.environ.get("QWENVL_LINEAR_ATTENTION_KERNELS", "1") == "0":
        return False
    return importlib.util.find_spec("fla") is not None and importlib.util.find_spec("causal_conv1d") is not None


class PackedLinearAttention:
    """The boundary hook of one model (see the module doc). ``mode`` tells what the last packed forward did:
    ``"kernels"``, ``"per_sample"`` or ``None`` (nothing packed seen yet)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.segments: list[list[tuple[int, int]]] | None = None
        self.shape: tuple[int, int] | None = None
        self.mode: str | None = None
        self.layers = [m for name, m in model.named_modules() if name.endswith("linear_attn")]
        text_models = [
            m
            for m in model.modules()
            if isinstance(getattr(m, "layers", None), torch.nn.ModuleList)
            and any(hasattr(layer, "linear_attn") for layer in m.layers)
        ]
        if not self.layers or len(text_models) != 1:
            raise ValueError(
                f"{type(model).__name__} has {len(self.layers)} linear-attention layers in {len(text_models)} text "
                "models; expected a Qwen3.5 model (at least one linear_attn layer in one text model)"
            )
        self._handles = [text_models[0].register_forward_pre_hook(self._read_boundaries, with_kwargs=True)]
        for layer in self.layers:
            original = layer.forward
            layer.forward = types.MethodType(self._make_forward(original), layer)
            layer._qwenvl_original_forward = original

    def _read_boundaries(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        positions = kwargs.get("position_ids")
        self.segments, self.shape = None, None
        if positions is None or positions.ndim != 3 or positions.shape[0] != 4:
            return  # no text-position row: the model counts positions itself, one sample per row
        segments = sample_segments(positions[0])
        if any(len(row) > 1 for row in segments):
            self.segments, self.shape = segments, tuple(positions.shape[1:])

    def _make_forward(self, original: Any) -> Any:
        hook = self

        def forward(
            layer: torch.nn.Module,
            hidden_states: torch.Tensor,
            cache: Any = None,
            attention_mask: torch.Tensor | None = None,
            **kwargs: Any,
        ) -> torch.Tensor:
            segments = hook.segments
            if segments is None or cache is not None or tuple(hidden_states.shape[:2]) != hook.shape:
                return original(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
            if hidden_states.is_cuda and len(segments) == 1 and kernels_available():
                hook.mode = "kernels"
                return original(hidden_states, cache=None, attention_mask=attention_mask,
                                **hook.kernel_kwargs(segments[0], hidden_states.device), **kwargs)  # fmt: skip
            hook.mode = "per_sample"
            rows = []
            for b, row in enumerate(segments):
                parts = [
                    original(
                        hidden_states[b : b + 1, start:end],
                        cache=None,
                        attention_mask=attention_mask[b : b + 1, start:end] if attention_mask is not None else None,
                        **kwargs,
                    )
                    for start, end in row
                ]
                rows.append(torch.cat(parts, dim=1))
            return torch.cat(rows, dim=0)

        return forward

    @staticmethod
    def kernels_usable() -> bool:
        """Whether packed rows on CUDA go to the kernels (see :func:`kernels_available`)."""
        return kernels_available()

    @staticmethod
    def kernel_kwargs(row: list[tuple[int, int]], device: torch.device) -> dict[str, torch.Tensor]:
        """Boundaries in the kernels' forms: ``cu_seq_lens_q`` (flash-linear-attention's ``cu_seqlens``, int32
        offsets ``[0, e0, e1, ...]``) and ``seq_idx`` (causal-conv1d: the sample index of every token, ``(1, L)``)."""
        ends = [end for _, end in row]
        cu = torch.tensor([0, *ends], dtype=torch.int32, device=device)
        seq_idx = torch.cat(
            [torch.full((end - start,), i, dtype=torch.int32, device=device) for i, (start, end) in enumerate(row)]
        ).unsqueeze(0)
        return {"cu_seq_lens_q": cu, "seq_idx": seq_idx}

    def detach(self) -> None:
        """Remove the hook and give every layer its own forward back."""
        for handle in self._handles:
            handle.remove()
        for layer in self.layers:
            del layer.forward
            del layer._qwenvl_original_forward
        self._handles = []


def isolate_packed_samples(model: torch.nn.Module) -> PackedLinearAttention:
    """Attach the boundary hook to ``model`` (once; a second call returns the first hook)."""
    existing = getattr(model, "_qwenvl_packed_linear_attention", None)
    if existing is not None:
        return existing
    hook = PackedLinearAttention(model)
    model._qwenvl_packed_linear_attention = hook
    logger.info("packed samples are kept apart in %d linear-attention layers", len(hook.layers))
    return hook
