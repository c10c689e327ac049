"""GRPO rollouts from a vLLM server kept in sync with the policy (``qwenvl grpo --rollout_backend vllm_server``).

The user starts the server on the checkpoint training starts from, with vLLM's development endpoints on (and
per-request media settings accepted, which video prompts need)::

    VLLM_SERVER_DEV_MODE=1 vllm serve CKPT --trust-request-mm-kwargs --host 127.0.0.1 --port 8000 [--dtype ...]

Rollouts: one chat request per prompt with ``n`` = G, built by the inference layer
(:meth:`qwenvl.inference.openai_backend.OpenAIBackend.encode`: images resized under the training budget and sent
as PNG, so the server keeps their size; videos as the frames training samples, resized, as PNG, with their sampling
in ``media_io_kwargs``, so the server's frames, sizes and Qwen3-VL timestamps are training's). vLLM answers with the prompt's and each completion's token ids
(``return_token_ids``) and each sampled token's log-probability (``logprobs``; vLLM's raw log-probs, before
temperature): the trained tokens are exactly the sampled ones, and the server's rendering of the prompt must be
token for token the one training encodes (a difference is an error naming the first differing token).

Weight sync, every ``--vllm_sync_steps`` optimiser steps (rank 0; the other ranks wait): the policy's weights, LoRA
merged into copies of the adapted weights, are written under their checkpoint names as safetensors to a folder
the server reads (``--vllm_sync_dir``); ``POST /collective_rpc`` runs the workers' ``reload_weights(weights_path=...)``
(vllm/v1/worker/gpu_model_runner.py, in place, checkpoint format), then ``/reset_mm_cache``,
``/reset_encoder_cache`` (the scheduler would otherwise look up vision embeddings the worker dropped) and
``/reset_prefix_cache`` (KV blocks computed with the old weights). A probe then checks that it took effect: the
server's greedy answer to a training prompt is scored by the policy, and the mean absolute difference of the
log-probs must be within ``--vllm_sync_tolerance``. The same probe before the first rollout finds a server holding
other weights (an earlier run's), which then gets the policy's; a server of another model fails the prompt check
or the reload.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator

from qwenvl.cli import Unreachable, UserError


logger = logging.getLogger(__name__)

START_HINT = (
    "VLLM_SERVER_DEV_MODE=1 vllm serve {checkpoint} --trust-request-mm-kwargs --port PORT (README: Preference and RL "
    "tuning)"
)
SHARD_BYTES = 2 << 30  # safetensors files of at most about this size (what is held in memory at once)
GATHER_BYTES = 1 << 30  # under ZeRO-3: parameters gathered on every rank at once for the sync (about)
PROBE_TOKENS = 8


@dataclass
class Sampled:
    """One completion from the server: its token ids (through the end token, when it ended) and the log-prob of
    each under the weights that sampled it."""

    ids: list[int]
    logps: list[float]
    ended: bool


class RolloutServer:
    """A vLLM OpenAI-compatible server (``url``: its root, ``http://HOST:PORT``; a trailing ``/v1`` is accepted)
    sampling the policy's rollouts; ``checkpoint`` is ``--model_name_or_path`` (named in the errors)."""

    def __init__(self, url: str, checkpoint: str, family: Any, budget: Any, timeout: float = 600.0) -> None:
        from qwenvl.inference.openai_backend import OpenAIBackend

        self.root = url.rstrip("/").removesuffix("/v1")
        self.checkpoint = checkpoint
        self.hint = START_HINT.format(checkpoint=checkpoint)
        self.timeout = timeout
        try:
            self.backend = OpenAIBackend(f"{self.root}/v1", checkpoint=checkpoint, family=family.model_type,
                                         budget=budget, timeout=timeout, max_retries=2, video_frames="sampled")  # fmt: skip
        except Unreachable:
            raise Unreachable(f"cannot reach the vLLM server at {self.root} (--vllm_url); start it first: {self.hint}")
        except UserError as e:
            raise UserError(f"--vllm_url {self.root}: {e}") from None
        self.model = self.backend.model
        # The development endpoints are checked now, not after the first optimiser step: a body without a method
        # is refused (400) by /collective_rpc and unknown (404) to a server started without them.
        status, body = self.post("/collective_rpc", {}, allowed=(400,))
        if status != 400:
            raise UserError(f"{self.root}/collective_rpc answered HTTP {status} ({body[:120]!r}), not vLLM's 400 for "
                            f"a call without a method; weights cannot be synced: start vLLM as {self.hint}")  # fmt: skip

    def check_video_settings(self) -> None:
        """Video prompts send their sampling per request (``media_io_kwargs``), which vLLM refuses (HTTP 400) unless
        started with ``--trust-request-mm-kwargs``: checked before training on a prompt without media."""
        probe = {"model": self.model, "messages": [{"role": "user", "content": "x"}],
                 "media_io_kwargs": {"video": {"num_frames": -1}}}  # fmt: skip
        status, _ = self.post("/tokenize", probe, allowed=(400,))
        if status == 400:
            raise UserError(f"{self.root}/tokenize refused per-request media_io_kwargs (HTTP 400), which video prompts "
                            f"need to send training's frames and timestamps; restart the server as {self.hint}")  # fmt: skip

    # ------------------------------------------------------------------------------------------------ HTTP

    def post(self, path: str, body: dict[str, Any], allowed: tuple[int, ...] = ()) -> tuple[int, str]:
        """POST JSON to the server root; a status other than 200 and ``allowed`` is a :class:`UserError` (404 on a
        development endpoint says how to start the server)."""
        url = self.root + path
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            if e.code in allowed:
                return e.code, text
            if e.code == 404:
                raise UserError(f"{url} answered HTTP 404: the server was started without vLLM's development "
                                f"endpoints, which the weight sync needs; restart it as {self.hint}") from None  # fmt: skip
            raise UserError(
                f"{url} answered HTTP {e.code}: {' '.join(text.split())[:300]} (see the server's log)"
            ) from None
        except OSError as e:
            raise Unreachable(f"cannot reach {url} ({e}); is the vLLM server still running?") from None

    # ------------------------------------------------------------------------------------------------ sampling

    def sample(self, items: list[dict[str, Any]], n: int, gen: dict[str, Any], seeds: list[int],
               end_ids: list[int], suppressed: list[int]) -> list[list[Sampled]]:  # fmt: skip
        """``n`` completions of each prompt item (``{"record", "prompt"}`` of :class:`PromptDataset`), all
        requests in flight at once; ``gen``: ``max_tokens``, ``temperature``, ``top_p``, ``top_k`` (0: off)."""
        with ThreadPoolExecutor(max(1, len(items))) as pool:
            futures = [
                pool.submit(self._one, item, n, gen, seed, end_ids, suppressed) for item, seed in zip(items, seeds)
            ]
            return [f.result() for f in futures]

    def _one(self, item: dict[str, Any], n: int, gen: dict[str, Any], seed: int | None, end_ids: list[int],
             suppressed: list[int]) -> list[Sampled]:  # fmt: skip
        from qwenvl.inference.openai_backend import chat_completion

        record, prompt = item["record"], item["prompt"]
        extra: dict[str, Any] = {"return_token_ids": True, "skip_special_tokens": False, "stop_token_ids": end_ids,
                                 "logit_bias": {str(t): -100 for t in suppressed}}  # fmt: skip
        if gen.get("top_k"):
            extra["top_k"] = gen["top_k"]
        messages, body = self.backend.encode(record.prompt)
        extra.update(body)
        request = dict(model=self.model, messages=messages, n=n, logprobs=True,
                       max_tokens=gen["max_tokens"], temperature=gen["temperature"], top_p=gen.get("top_p", 1.0),
                       seed=seed, extra_body=extra)  # fmt: skip
        try:
            response = chat_completion(self.backend.client, self.backend.api_base, request, self.backend.max_retries)
        except ConnectionError as e:
            raise Unreachable(f"{e} (the vLLM server of --vllm_url)") from None
        served = getattr(response, "prompt_token_ids", None)
        if served is None:
            raise UserError(f"{self.root} did not return the prompt's token ids (return_token_ids): --rollout_backend "
                            "vllm_server needs a vLLM server")  # fmt: skip
        self.check_prompt(record, list(prompt["input_ids"].tolist()), list(served))
        out = []
        for choice in sorted(response.choices, key=lambda c: c.index):
            ids = list(getattr(choice, "token_ids", None) or [])
            logps = [t.logprob for t in (choice.logprobs.content if choice.logprobs else None) or []]
            if len(logps) != len(ids):
                raise UserError(f"{self.root} returned {len(ids)} token ids but {len(logps)} log-probs for "
                                f"{record.id}; is it a vLLM server?")  # fmt: skip
            cut = next((i for i, t in enumerate(ids) if t in end_ids), None)
            if cut is not None:
                ids, logps = ids[: cut + 1], logps[: cut + 1]
            out.append(Sampled(ids, logps, cut is not None))
        if len(out) != n:
            raise UserError(f"{self.root} returned {len(out)} completions of {record.id}, asked for n={n}")
        return out

    def check_prompt(self, record: Any, ours: list[int], served: list[int]) -> None:
        """The server must render and tokenise the prompt (chat template, media placeholders and their sizes)
        exactly as training encodes it."""
        if ours == served:
            return
        at = next((i for i, (a, b) in enumerate(zip(ours, served)) if a != b), min(len(ours), len(served)))
        fix = (f"serve {self.checkpoint} itself (same chat template and processor) and train with the pixel budget "
               "the server keeps (--max_pixels / --min_pixels, and for videos --video_max_pixels / --video_max_frames, "
               "within its processor's)")  # fmt: skip
        raise UserError(f"{record.id}: the server at {self.root} renders the prompt as {len(served)} tokens, training "
                        f"as {len(ours)} (first difference at token {at}); {fix}")  # fmt: skip

    def greedy(self, item: dict[str, Any], end_ids: list[int], suppressed: list[int]) -> Sampled:
        """The server's greedy answer (``PROBE_TOKENS`` at most) to a prompt item, with its log-probs."""
        gen = {"max_tokens": PROBE_TOKENS, "temperature": 0.0}
        return self._one(item, 1, gen, None, end_ids, suppressed)[0]

    # ------------------------------------------------------------------------------------------------ weights

    def reload(self, folder: Path) -> None:
        """Load the weights in ``folder`` into the server's model in place and drop everything computed with the
        old ones (multimodal inputs cache, vision encoder outputs, prefix KV blocks)."""
        call = {"method": "reload_weights", "kwargs": {"weights_path": str(folder.resolve())}}
        try:
            self.post("/collective_rpc", call)
        except Unreachable:
            raise
        except UserError as e:
            raise UserError(f"the vLLM server could not load the policy's weights from {folder} ({e}); it must serve "
                            f"the model of --model_name_or_path: {self.hint}") from None  # fmt: skip
        self.post("/reset_mm_cache", {})
        self.post("/reset_encoder_cache", {})
        for _ in range(20):  # refused while blocks are held; nothing runs now, so this is a transient state
            _, body = self.post("/reset_prefix_cache", {})
            if json.loads(body or "{}").get("success", True):
                return
            time.sleep(0.5)
        raise UserError(f"{self.root}/reset_prefix_cache kept answering success false: requests still running on "
                        "the server? It must serve only this training run")  # fmt: skip


def policy_weights(model: Any, names: Collection[str] | None = None) -> Iterator[tuple[str, Any]]:
    """The model's weights under transformers' names in memory, with LoRA merged: for each adapted
    layer, ``W + delta`` as a new tensor (the model is not changed); trained ``modules_to_save`` copies replace the
    originals; the adapters' own tensors are left out. ``names``: only these entries of the state dict (its names
    in memory; a LoRA layer's weight needs its adapters' weights in memory too)."""
    base = model
    layers: dict[str, Any] = {}
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
    except ImportError:
        PeftModel = LoraLayer = None  # noqa: N806
    if PeftModel is not None and isinstance(model, PeftModel):
        base = model.get_base_model()
        layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
        for name, layer in layers.items():
            if any(layer.use_dora.get(a, False) for a in layer.active_adapters):
                raise UserError(f"{name}: DoRA adapters cannot be merged for the vLLM weight sync; use plain LoRA")
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or ".original_module." in name or (names is not None and name not in names):
            continue
        if ".modules_to_save." in name:
            owner, _, rest = name.partition(".modules_to_save.")
            adapter, _, leaf = rest.partition(".")
            if adapter not in model.active_adapters:
                continue
            name = f"{owner}.{leaf}"
        elif ".base_layer." in name:
            owner, _, leaf = name.partition(".base_layer.")
            layer = layers[owner]
            name = f"{owner}.{leaf}"
            if leaf == "weight" and not layer.merged:
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        tensor = tensor + layer.get_delta_weight(adapter).to(tensor.dtype)
        yield name, tensor


def checkpoint_names(model: Any, weights: dict[str, Any]) -> dict[str, Any]:
    """``weights`` under the names ``save_pretrained`` writes (transformers 5 renames some families' weights on
    load, e.g. Qwen2.5-VL's ``visual.`` -> ``model.visual.``, and reverts that on save; the same function here).

    Only the conversions that matched the checkpoint on load are reverted: transformers' loader keeps just those on
    the model, but its ZeRO-3 loader (5.24) keeps them all, and reverting a legacy renaming the checkpoint never used
    gives names it never had (Qwen3-VL's ``model.language_model.model.embed_tokens``)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: the names in memory are the saved ones
        return weights
    conversions = getattr(model, "_weight_conversions", None)
    if conversions is None or all(c.was_used() for c in conversions):
        return revert_weight_conversion(model, weights)
    model._weight_conversions = [c for c in conversions if c.was_used()]
    try:
        return revert_weight_conversion(model, weights)
    finally:
        model._weight_conversions = conversions


def write_weights(model: Any, folder: Path, family: Any, zero3: bool = False, writer: bool = True,
                  gather_bytes: int = GATHER_BYTES) -> int:  # fmt: skip
    """Write :func:`policy_weights` to ``folder`` as safetensors shards under the checkpoint's names and in the
    layout of the family's hub checkpoints (replacing earlier shards); returns the bytes written.

    ``zero3``: the parameters are partitioned by DeepSpeed ZeRO-3. Every rank must then call this, in step: the
    parameters are gathered on every rank (a collective) group by group, about ``gather_bytes`` at a time with each
    LoRA layer whole, and only the ``writer`` rank reads and writes them."""
    from safetensors.torch import save_file

    from qwenvl.model.loader import to_hub_layout

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if writer:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.safetensors"):
            old.unlink()
    shard: dict[str, Any] = {}
    size = total = index = 0

    def flush() -> None:
        nonlocal shard, size, index
        if shard:
            # Renamings act per weight (the Qwen-VL families have no many-to-one conversions), so per shard is exact,
            # as in transformers' own save of offloaded models.
            named = to_hub_layout(family, checkpoint_names(base, shard))
            save_file(named, str(folder / f"model-{index:05d}.safetensors"), metadata={"format": "pt"})
            index += 1
            shard, size = {}, 0

    def add(weights: Iterator[tuple[str, Any]]) -> None:
        nonlocal size, total
        for name, tensor in weights:
            # A copy on the CPU: tied weights must not share storage in a safetensors file.
            shard[name] = tensor.detach().to("cpu", copy=True).contiguous()
            nbytes = tensor.numel() * tensor.element_size()
            size += nbytes
            total += nbytes
            if size >= SHARD_BYTES:
                flush()

    if not zero3:
        add(policy_weights(model))
    else:
        import deepspeed

        gathered: set[str] = set()
        for names, params in zero3_groups(base, gather_bytes):
            with deepspeed.zero.GatheredParameters(params):  # (no modifier_rank: read only, nothing scattered back)
                if writer:
                    add(policy_weights(model, names))
            gathered |= names
        if writer:  # buffers: never partitioned
            add(policy_weights(model, set(base.state_dict()) - gathered))
    if writer:
        flush()
    return total


def zero3_groups(base: Any, limit: int = GATHER_BYTES) -> Iterator[tuple[set[str], list[Any]]]:
    """``base``'s parameters (all their names, tied ones too) in consecutive groups of about ``limit`` bytes at full
    size (ZeRO-3's ``ds_numel``), never splitting a LoRA layer (its merge reads the base weight and the adapters
    together). The same groups in the same order on every rank, as the collective gathers need."""
    names: set[str] = set()
    params: dict[int, Any] = {}
    size, owner = 0, None
    for name, param in base.named_parameters(remove_duplicate=False):
        lora = name.partition(".base_layer.")[0] if ".base_layer." in name else name.partition(".lora_")[0]
        this = lora if lora != name else name.rpartition(".")[0]
        if names and this != owner and size >= limit:
            yield names, list(params.values())
            names, params, size = set(), {}, 0
        owner = this
        names.add(name)
        if id(param) not in params:
            params[id(param)] = param
            size += getattr(param, "ds_numel", param.numel()) * param.element_size()
    if names:
        yield names, list(params.values())
