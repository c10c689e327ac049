"""One conversation to model inputs: media through qwen_vl_utils (resized once), tokens through the processor's
chat template, labels on assistant turns only, and 4-row M-RoPE position ids.

Pixel budgets (``MediaBudget``) are applied here, once, by qwen_vl_utils; the processor gets ``do_resize=False``
so it does not resize again. ``video_max_pixels`` / ``video_min_pixels`` are **per frame** for every family
(upstream used them per frame for Qwen2.5-VL but as a T·H·W total for Qwen3-VL); qwen_vl_utils additionally caps
a frame at 768 tokens and the whole video at ``MODEL_SEQ_LEN``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

import torch

from qwenvl.cli import UserError
from qwenvl.data.media_cache import MediaCache, ProcessedItem
from qwenvl.model.budget import TRAINING_BUDGET, MediaBudget
from qwenvl.model.families import Family
from qwenvl.model.rope import mrope_position_ids


IGNORE_INDEX = -100


class MediaLoadError(UserError):
    """An image or video of a sample could not be loaded (missing, corrupt, unsupported, too short, timeout)."""

    def __init__(self, sample_id: str, path: str, reason: str) -> None:
        super().__init__(f"{sample_id}: cannot load {path}: {reason}")
        self.sample_id = sample_id
        self.path = path
        self.reason = reason


class EncodedSample(TypedDict, total=False):
    """Model inputs of one sample (1-D token tensors; position_ids is ``(4, L)``)."""

    sample_id: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    mm_token_type_ids: torch.Tensor
    position_ids: torch.Tensor
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor
    second_per_grid_ts: torch.Tensor
    media_cache: list[int]  # [hits, misses] of this sample's media, with a media cache


class SampleEncoder:
    """Encodes conversations for one checkpoint's processor and family."""

    def __init__(
        self,
        processor: Any,
        family: Family,
        budget: MediaBudget | None = None,
        tokens_per_second: float = 2.0,
        media_cache: MediaCache | None = None,
    ):
        self.processor = processor
        self.family = family
        self.budget = budget or TRAINING_BUDGET
        self.tokens_per_second = tokens_per_second
        self.media_cache = media_cache
        tok = processor.tokenizer
        self.im_start = _token_id(tok, "<|im_start|>")
        self.im_end = _token_id(tok, "<|im_end|>")
        self.assistant_header = [self.im_start] + tok.encode("assistant\n", add_special_tokens=False)
        # Tokens that would break a sample's structure if they came from annotation text: turn markers and the
        # media placeholders (their counts must match the media). Grounding markup (<|box_start|>, <|quad_start|>,
        # <|object_ref_start|> and their ends) is legitimate answer text for Qwen2-VL and stays allowed.
        grounding = ("<|box_", "<|quad_", "<|object_ref_")
        self.reserved = [t for t in tok.all_special_tokens if t.startswith("<|") and not t.startswith(grounding)]

    def media_items(self, messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """``(kind, item)`` of every image and video of ``messages``, in order, with the budgets applied."""
        items = []
        for message in messages:
            if not isinstance(message["content"], list):
                continue
            for item in message["content"]:
                kind = item.get("type")
                if kind == "image":
                    items.append((kind, self.budget.image_item(item)))
                elif kind == "video":
                    items.append((kind, self.budget.video_item(item)))
        return items

    def load_media(self, messages: list[dict[str, Any]], sample_id: str = "") -> tuple[list, list, list]:
        """Fetch and resize every image and video of ``messages`` (in order) with the budgets: ``(images, videos,
        video metadata)``, as the processor gets them.

        A record's items load concurrently, largest first, as ``process_vision_info`` loads them.

        Raises:
            MediaLoadError: naming the sample and the file, whatever went wrong while loading it.
        """
        from qwenvl.data.media_cache import fetch_item

        items = self.media_items(messages)
        images, videos, metadata = [], [], []
        for (kind, _), (media, meta) in zip(items, self._load_all(items, sample_id, fetch_item)):
            if kind == "image":
                images.append(media)
            else:
                videos.append(media)
                metadata.append(meta)
        return images, videos, metadata

    def load_processed(self, messages: list[dict[str, Any]], sample_id: str = "") -> tuple[list, list[int]]:
        """Every image and video of ``messages`` processed, through the media cache: ``(processed items,
        [hits, misses])``. Loads concurrently as :meth:`load_media` does."""
        assert self.media_cache is not None
        cache = self.media_cache
        results = self._load_all(self.media_items(messages), sample_id, lambda kind, item, _: cache.load(kind, item))
        outcomes = [sum(o == "hit" for _, o in results), sum(o == "miss" for _, o in results)]
        return [processed for processed, _ in results], outcomes

    def _load_all(self, items: list[tuple[str, dict[str, Any]]], sample_id: str, load: Any) -> list[Any]:
        from qwen_vl_utils.image_io import reuse_image_blocks

        with reuse_image_blocks():
            if len(items) <= 1:
                return [self._load_item(load, kind, item, sample_id) for kind, item in items]
            return self._load_parallel(load, items, sample_id)

    def _load_item(self, load: Any, kind: str, item: dict[str, Any], sample_id: str) -> Any:
        try:
            return load(kind, item, self.family.patch_size)
        except Exception as e:  # noqa: BLE001 - every media failure is reported the same way
            raise MediaLoadError(sample_id, str(item.get(kind)), f"{type(e).__name__}: {e}") from e

    def _load_parallel(self, load: Any, items: list[tuple[str, dict[str, Any]]], sample_id: str) -> list[Any]:
        import concurrent.futures

        # The scheduling of process_vision_info (qwen_vl_utils): as many threads as it would use, biggest first.
        from qwen_vl_utils.vision_process import _fetch_cost, _fetch_workers

        infos = [item for _, item in items]
        order = sorted(range(len(items)), key=lambda i: _fetch_cost(infos[i]))
        with concurrent.futures.ThreadPoolExecutor(max_workers=_fetch_workers(infos)) as pool:
            futures = {i: pool.submit(self._load_item, load, *items[i], sample_id) for i in order}
        return [futures[i].result() for i in range(len(items))]  # the first failing item in order is reported

    def check_text(self, messages: list[dict[str, Any]], sample_id: str) -> None:
        for message in messages:
            items = message["content"] if isinstance(message["content"], list) else [{"text": message["content"]}]
            for item in items:
                text = item.get("text") or ""
                for token in self.reserved:
                    if token in text:
                        raise ValueError(
                            f"{sample_id}: text contains the reserved token {token}, which would be read as a control "
                            "token; remove it from the annotation"
                        )

    def __call__(self, messages: list[dict[str, Any]], sample_id: str = "") -> EncodedSample:
        self.check_text(messages, sample_id)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        outcomes = None
        if self.media_cache is not None:
            processed, outcomes = self.load_processed(messages, sample_id)
            enc = processor_with_patches(self.processor, text, processed)
        else:
            images, videos, metadata = self.load_media(messages, sample_id)
            kwargs: dict[str, Any] = {"return_tensors": "pt", "do_resize": False}
            if images:
                kwargs["images"] = images
            if videos:
                kwargs["videos"] = videos
                kwargs["do_sample_frames"] = False
                # transformers 5.x derives Qwen3-VL timestamps and Qwen2.5-VL's second_per_grid_ts from metadata.
                kwargs["video_metadata"] = metadata
            enc = self.processor(text=[text], **kwargs)
        input_ids = enc["input_ids"][0]
        sample: EncodedSample = {
            "sample_id": sample_id,
            "input_ids": input_ids,
            "labels": self.labels(input_ids, messages, sample_id),
            "mm_token_type_ids": enc["mm_token_type_ids"][0],
        }
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
            if key in enc and enc[key] is not None:
                sample[key] = enc[key]
        if outcomes is not None:
            sample["media_cache"] = outcomes
        sample["position_ids"] = mrope_position_ids(
            self.family,
            sample["mm_token_type_ids"],
            sample.get("image_grid_thw"),
            sample.get("video_grid_thw"),
            sample.get("second_per_grid_ts"),
            self.tokens_per_second,
        )
        return sample

    def labels(self, input_ids: torch.Tensor, messages: list[dict[str, Any]], sample_id: str = "") -> torch.Tensor:
        """-100 everywhere except the content of assistant turns and their closing ``<|im_end|>``.

        Turns are found by role: the k-th message is the k-th ``<|im_start|>`` of the rendered text (one more when
        the template adds a default system prompt), so assistant text that happens to contain "assistant" is not
        mistaken for a turn.
        """
        ids = input_ids.tolist()
        starts = [i for i, t in enumerate(ids) if t == self.im_start]
        extra = len(starts) - len(messages)
        if extra not in (0, 1):
            raise ValueError(
                f"{sample_id}: the chat template rendered {len(starts)} turns for {len(messages)} messages; "
                "the processor's chat template is not a Qwen-style template"
            )
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        header = self.assistant_header
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            s = starts[k + extra]
            if ids[s : s + len(header)] != header:
                raise ValueError(f"{sample_id}: turn {k} is not rendered as '<|im_start|>assistant\\n'")
            begin = s + len(header)
            try:
                end = ids.index(self.im_end, begin)
            except ValueError:
                raise ValueError(f"{sample_id}: assistant turn {k} has no closing <|im_end|>") from None
            labels[begin : end + 1] = input_ids[begin : end + 1]
        return labels


def processor_with_patches(processor: Any, text: str, processed: list[ProcessedItem]) -> Any:
    """``processor(text=[text], images=..., videos=...)`` for media whose patches are already computed (from the
    media cache): the processor renders and tokenises the text and writes the placeholders (their counts, Qwen3-VL's
    timestamps, Qwen2.5-VL's ``second_per_grid_ts``) as usual, with the image and video processors' pixel work
    (``_preprocess``) replaced by the items' patches, concatenated in order as those processors would return them.
    The images and videos it is given are tiny stand-ins: only their number is read outside ``_preprocess``."""
    import copy

    from PIL import Image
    from transformers import BatchFeature

    from qwenvl.data.media_cache import PIXEL_KEYS, sub_processor

    replay = copy.copy(processor)
    kwargs: dict[str, Any] = {"return_tensors": "pt", "do_resize": False}
    expected: dict[str, torch.Tensor] = {}
    for kind in ("image", "video"):
        items = [p for p in processed if p.kind == kind]
        if not items:
            continue
        pixels_key, grid_key = PIXEL_KEYS[kind]
        patches = BatchFeature({pixels_key: torch.cat([p.pixels for p in items]) if len(items) > 1 else items[0].pixels,
                                grid_key: torch.cat([p.grid for p in items])})  # fmt: skip
        stand_in = copy.copy(sub_processor(processor, kind))
        stand_in._preprocess = lambda *args, _patches=patches, **kw: _patches
        expected[pixels_key] = patches[pixels_key]
        if kind == "image":
            replay.image_processor = stand_in
            kwargs["images"] = [Image.new("RGB", (2, 2)) for _ in items]
        else:
            replay.video_processor = stand_in
            kwargs.update(videos=[torch.zeros(2, 3, 2, 2) for _ in items], do_sample_frames=False,
                          video_metadata=[p.metadata for p in items])  # fmt: skip
    enc = replay(text=[text], **kwargs)
    for key, pixels in expected.items():
        got = enc.get(key)
        if got is None or got.shape != pixels.shape or got.data_ptr() != pixels.data_ptr():
            import transformers

            raise RuntimeError(
                f"transformers {transformers.__version__}'s processor did not take the cached patches for {key} "
                "(its image / video processor no longer goes through _preprocess); train without --media_cache"
            )
    return enc


def _token_id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {token} token; it is not a Qwen tokenizer")
    return token_id


def truncate_text_only(sample: EncodedSample, max_length: int) -> EncodedSample | None:
    """Cut ``sample`` to ``max_length`` tokens if the cut falls after its last vision token; else ``None``."""
    types = sample["mm_token_type_ids"]
    vision = (types != 0).nonzero()
    last_vision = int(vision[-1]) if len(vision) else -1
    # Keep the <|vision_end|> after the last vision run too.
    if last_vision + 2 > max_length:
        return None
    out = dict(sample)
    for key in ("input_ids", "labels", "mm_token_type_ids"):
        out[key] = sample[key][:max_length]
    out["position_ids"] = sample["position_ids"][:, :max_length]
    if int((out["labels"] != IGNORE_INDEX).sum()) == 0:
        return None
    return out  # type: ignore[return-value]


def encode_prompts(
    processor: Any, family: Family, conversations: list[list[dict[str, Any]]], budget: MediaBudget
) -> Any:
    """Left-padded model inputs for a batch of conversations, each ending with a user turn: what every inference
    backend feeds the model. Media go through qwen_vl_utils under ``budget`` (resized once, as in training), so
    the processor is told not to resize again."""
    from qwen_vl_utils import process_vision_info

    conversations = [budget.apply(c) for c in conversations]
    texts = [processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    images, videos, video_kwargs = process_vision_info(
        conversations, return_video_kwargs=True, return_video_metadata=True, image_patch_size=family.patch_size
    )
    kwargs: dict[str, Any] = {"do_resize": False}
    if images:
        kwargs["images"] = images
    if videos:
        frames, metadata = zip(*videos)
        kwargs.update(videos=list(frames), video_metadata=list(metadata), **video_kwargs)
    return processor(text=texts, padding=True, padding_side="left", return_tensors="pt", **kwargs)


@dataclass(frozen=True)
class MediaCost:
    """What one image or video costs the model under a budget: the resized size, the frames and the visual
    tokens (text around a video's frames, such as Qwen3-VL's timestamps, not included)."""

    kind: str  # image or video
    width: int
    height: int
    frames: int  # 1 for an image
    tokens: int
    plan: Any = None  # the video's sampling plan (qwen_vl_utils.video_io.VideoPlan)

    def describe(self, name: str) -> str:
        if self.kind == "image":
            return f"{name}: {self.width}x{self.height}, {self.tokens} visual tokens"
        return f"{name}: {self.frames} frames of {self.width}x{self.height}, {self.tokens} visual tokens"


def media_cost(item: dict[str, Any], family: Family, budget: MediaBudget) -> MediaCost:
    """The cost of a content item (``{"type": "image", "image": ...}`` or a video) from its header or a probe,
    without decoding pixels: the sizes and frame counts that training, every inference backend, the demo and
    ``inspect_video`` produce for it (they all resize through qwen_vl_utils under the same budget)."""
    from qwen_vl_utils.image_io import image_source, open_image
    from qwen_vl_utils.resize import image_target_size
    from qwen_vl_utils.video_io import plan_video

    factor = family.image_factor
    if item.get("type") == "image" or "image" in item:
        ele = budget.image_item(item)
        with open_image(image_source(ele)) as image:
            width, height = image.size
        h, w = image_target_size(height, width, ele, family.patch_size)
        return MediaCost("image", w, h, 1, (h // factor) * (w // factor))
    ele = budget.video_item(item)
    source = ele["video"]
    if not isinstance(source, str) or source.startswith(("http://", "https://")):
        raise ValueError("only local video files can be measured without decoding")
    plan = plan_video(source, ele, family.patch_size)
    groups = plan.nframes // family.temporal_patch_size
    return MediaCost(
        "video", plan.width, plan.height, plan.nframes, groups * (plan.height // factor) * (plan.width // factor), plan
    )
