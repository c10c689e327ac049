"""M-RoPE position ids for one sample, as a pure function shared by every family (no model, no config object).

The result has 4 rows: row 0 is the plain text position ``0..L-1`` (transformers reads it to find where packed
samples start, so attention stays inside each sample), rows 1-3 are the temporal / height / width M-RoPE
positions. Text tokens advance all three by one; a vision segment of ``t x h x w`` merged tokens starts at the
current position ``p`` and takes ``(p + t_index, p + row, p + col)``; the next token continues at
``p + max(h, w)`` (transformers 5.x semantics, which this must match).

Families differ only in the temporal index of video tokens:

* Qwen2-VL: the frame-group index ``0, 1, 2, ...``;
* Qwen2.5-VL: ``int(group * tokens_per_second * second_per_grid_t)`` (seconds per temporal patch);
* Qwen3-VL / -MoE, Qwen3.5 / -MoE: every frame group is its own segment (the processor writes a ``<t seconds>`` timestamp before
  each), so each group has ``t = 1`` and temporal index 0; time is carried by the timestamp text.
"""

from __future__ import annotations

from typing import Sequence

import torch

from qwenvl.model.families import Family


TEXT, IMAGE, VIDEO = 0, 1, 2


def _segments(token_types: torch.Tensor) -> list[tuple[int, int, int]]:
    """Runs of equal token type as ``(type, start, end)``."""
    types = token_types.tolist()
    runs = []
    start = 0
    for i in range(1, len(types) + 1):
        if i == len(types) or types[i] != types[start]:
            runs.append((types[start], start, i))
            start = i
    return runs


def mrope_position_ids(
    family: Family,
    mm_token_type_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: Sequence[float] | torch.Tensor | None = None,
    tokens_per_second: float = 2.0,
) -> torch.Tensor:
    """Position ids ``(4, L)`` for one sample.

    Args:
        family: the model family (decides the temporal index of video tokens).
        mm_token_type_ids: ``(L,)`` with 0 for text, 1 for image tokens, 2 for video tokens (the processor's output).
        image_grid_thw: ``(n_images, 3)`` patch grids of the sample's images, in order.
        video_grid_thw: ``(n_videos, 3)`` patch grids of the sample's videos, in order.
        second_per_grid_ts: seconds per temporal patch of each video (Qwen2.5-VL; default 1.0 each).
        tokens_per_second: ``vision_config.tokens_per_second`` (Qwen2.5-VL).

    Raises:
        ValueError: the vision token runs do not match the grids (count or size).
    """
    types = mm_token_type_ids.reshape(-1)
    length = types.numel()
    merge = family.spatial_merge_size
    images = [tuple(int(x) for x in g) for g in image_grid_thw] if image_grid_thw is not None else []
    videos: list[tuple[int, int, int]] = []
    video_seconds: list[float] = []
    for i, g in enumerate(video_grid_thw if video_grid_thw is not None else []):
        t, h, w = (int(x) for x in g)
        seconds = float(second_per_grid_ts[i]) if second_per_grid_ts is not None else 1.0
        if family.video_timestamps:  # one segment per temporal patch
            videos.extend([(1, h, w)] * t)
            video_seconds.extend([seconds] * t)
        else:
            videos.append((t, h, w))
            video_seconds.append(seconds)
    grids = {IMAGE: iter(images), VIDEO: iter(zip(videos, video_seconds))}
    counts = {IMAGE: 0, VIDEO: 0}

    rows = torch.empty((3, length), dtype=torch.long)
    pos = 0
    for kind, start, end in _segments(types):
        if kind == TEXT:
            rows[:, start:end] = torch.arange(pos, pos + end - start)
            pos += end - start
            continue
        if kind not in grids:
            raise ValueError(f"mm_token_type_ids has unknown type {kind} at token {start}; expected 0, 1 or 2")
        try:
            item = next(grids[kind])
        except StopIteration:
            what = "image" if kind == IMAGE else "video"
            raise ValueError(f"more {what} token runs than {what} grids (run at token {start})") from None
        counts[kind] += 1
        (t, h, w), seconds = (item, 1.0) if kind == IMAGE else item
        gh, gw = h // merge, w // merge
        if t * gh * gw != end - start:
            raise ValueError(
                f"vision run at tokens {start}:{end} has {end - start} tokens but its grid {(t, h, w)} implies "
                f"{t * gh * gw}"
            )
        if kind == VIDEO and family.temporal_rope == "seconds":
            temporal = (torch.arange(t) * (tokens_per_second * seconds)).long()
        else:
            temporal = torch.arange(t)
        tt, hh, ww = torch.meshgrid(temporal, torch.arange(gh), torch.arange(gw), indexing="ij")
        rows[0, start:end] = tt.reshape(-1) + pos
        rows[1, start:end] = hh.reshape(-1) + pos
        rows[2, start:end] = ww.reshape(-1) + pos
        pos += max(gh, gw)
    if counts[IMAGE] != len(images) or counts[VIDEO] != len(videos):
        raise ValueError(
            f"found {counts[IMAGE]} image and {counts[VIDEO]} video token runs, but {len(images)} image and "
            f"{len(videos)} video grids"
        )
    return torch.cat([torch.arange(length).unsqueeze(0), rows], dim=0)
