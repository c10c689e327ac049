"""Tiny, randomly initialised Qwen-VL checkpoints built offline, for tests, benchmarks and the quick-start job.

Each checkpoint is complete: a ``transformers`` model of the real class (about 1M parameters, 2 text layers,
2 vision blocks, deepstack on Qwen3-VL), a byte-level BPE tokenizer trained locally with the Qwen special
tokens, a Qwen-style chat template that renders image and video items, and the family's real image and video
processors. ``AutoProcessor.from_pretrained(out)`` and ``AutoModelForImageTextToText.from_pretrained(out)``
load it exactly as they load ``Qwen/Qwen3-VL-8B-Instruct``.

Run::

    python -m qwenvl.model.tiny --family qwen3_vl --out /tmp/tiny-qwen3-vl [--seed 0] [--head-dim 64]
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path
from typing import Any

from qwenvl.model.families import FAMILIES, Family, get_family, transformers_attr


logger = logging.getLogger(__name__)

# Special tokens, in the order Qwen's vocabulary lists them (ids differ: ours come first in a tiny vocab).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Added as normal (non-special) tokens, as in Qwen3 tokenizers, so decode keeps them.
ADDED_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]

# Qwen2's pre-tokenisation regex (contractions, letters, single digits, punctuation runs, newlines, spaces).
QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# A Qwen-VL chat template. Content is a string or a list of typed items; an item counts as an image when its
# type is image/image_url or it has an image/image_url key, likewise for video. ``add_vision_id`` prefixes
# "Picture N: " / "Video N: " as the real templates do. ``__SYSTEM__`` is replaced per family: Qwen2/2.5-VL
# insert a default system prompt, Qwen3-VL does not.
_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% set last_query = namespace(index=-1) %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{% set last_query.index = loop.index0 %}{% endif %}"
    "{% endfor %}"
    "{% for message in messages %}"
    "__SYSTEM__"
    "__THINKING_ASSISTANT__"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] in ['image', 'image_url'] or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] in ['video', 'video_url'] or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "__END_THINKING_ASSISTANT__"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n__THINKING_PROMPT__{% endif %}"
)
# Thinking families (Qwen3.5), as their official templates render: the generation prompt opens ``<think>`` (or, with
# ``enable_thinking=False``, holds an empty think block); an assistant turn after the last user turn is rendered as
# ``<think>\n{reasoning}\n</think>\n\n{answer}`` (an empty block when it has no reasoning), its reasoning taken from
# ``reasoning_content`` or from the text before ``</think>``; earlier assistant turns keep only their answer.
_THINKING_ASSISTANT = (
    "{% if message['role'] == 'assistant' %}"
    "{% set turn = namespace(text='', reasoning='') %}"
    "{% if message['content'] is string %}{% set turn.text = message['content'] %}"
    "{% else %}{% for content in message['content'] %}{% if 'text' in content %}"
    "{% set turn.text = turn.text + content['text'] %}{% endif %}{% endfor %}{% endif %}"
    "{% if message['reasoning_content'] is string %}{% set turn.reasoning = message['reasoning_content'] %}"
    "{% elif '</think>' in turn.text %}"
    "{% set turn.reasoning = turn.text.split('</think>')[0].split('<think>')[-1] %}"
    "{% set turn.text = turn.text.split('</think>')[-1].lstrip('\\n') %}"
    "{% endif %}"
    "<|im_start|>assistant\n"
    "{% if loop.index0 > last_query.index %}"
    "<think>\n{{ turn.reasoning.strip('\\n') }}\n</think>\n\n"
    "{% endif %}"
    "{{ turn.text }}<|im_end|>\n"
    "{% else %}"
)
_THINKING_PROMPT = (
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}"
)
_DEFAULT_SYSTEM_BLOCK = (
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
)


def chat_template(family: Family) -> str:
    """The chat template for a family: Qwen2/2.5-VL add a default system prompt, Qwen3-VL does not; Qwen3.5 thinks
    by default (see ``_THINKING_ASSISTANT``)."""
    thinking = family.thinks_by_default
    return (
        _CHAT_TEMPLATE.replace("__SYSTEM__", _DEFAULT_SYSTEM_BLOCK if family.default_system_prompt else "")
        .replace("__THINKING_ASSISTANT__", _THINKING_ASSISTANT if thinking else "")
        .replace("__END_THINKING_ASSISTANT__", "{% endif %}" if thinking else "")
        .replace("__THINKING_PROMPT__", _THINKING_PROMPT if thinking else "")
    )


_WORDS = (
    "the a an of to in is what which color shape red green blue yellow purple orange black white gray circle "
    "square triangle star image picture video frame left right top bottom answer question option choose "
    "correct you are helpful assistant user system describe this how many there one two three four five "
    "yes no cat dog car tree house person sky water seconds please explain because first then finally "
    "number value size big small large tiny bright dark object box point region"
).split()


def _tokenizer_corpus(seed: int, lines: int = 3000) -> list[str]:
    """Seeded synthetic text: words, digits, punctuation and chat scaffolding, so BPE learns useful merges."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 2000)))
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", "?", "!", ":", ","])
        if rng.random() < 0.2:
            sentence += f" <{rng.randint(0, 99) / 2:.1f} seconds> (A) B) [C] {{D}}\n"
        corpus.append(sentence)
    return corpus


def build_tokenizer(seed: int = 0, vocab_size: int = 1024) -> Any:
    """Train a byte-level BPE tokenizer with Qwen's pre-tokenizer and special tokens, wrapped as ``Qwen2Tokenizer``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    raw = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(_tokenizer_corpus(seed), trainer=trainer)

    tok = Qwen2Tokenizer(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=32768,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tok.add_tokens(ADDED_TOKENS)
    return tok


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """The vision token ids a Qwen-VL config needs, looked up by name in the tokenizer."""
    names = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    ids = {}
    for key, token in names.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {token} token; a Qwen-VL tokenizer needs it for {key}")
        ids[key] = token_id
    return ids


def build_config(family: Family, tokenizer: Any, head_dim: int = 32) -> Any:
    """A tiny config of the family's real config class, with token ids taken from ``tokenizer``.

    ``head_dim`` 32 (4 heads) by default; 64 (2 heads) suits kernels that only take head sizes 64/128, such as
    vLLM's CPU attention.
    """
    if head_dim not in (32, 64):
        raise ValueError(f"head_dim must be 32 or 64, got {head_dim}")
    ids = special_token_ids(tokenizer)
    # Round the embedding table up to a multiple of 64 like real checkpoints (151936 > len(tokenizer)).
    vocab_size = (len(tokenizer) + 63) // 64 * 64
    text: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=128 // head_dim,
        num_key_value_heads=max(1, 64 // head_dim),
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    # Each mrope_section must sum to half the rotary dimensions (head_dim, or a quarter of it for Qwen3.5).
    if family.video_timestamps:  # Qwen3-VL and Qwen3.5: the same vision stack (Qwen3.5 without DeepStack)
        vision = dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            out_hidden_size=128,
            patch_size=family.patch_size,
            spatial_merge_size=family.spatial_merge_size,
            temporal_patch_size=family.temporal_patch_size,
            num_position_embeddings=64,  # must be a perfect square (an 8x8 learned grid)
            in_channels=3,
        )
        if family.deepstack:
            vision["deepstack_visual_indexes"] = [0, 1]  # must be < vision depth; at most num_hidden_layers are used
        text["head_dim"] = head_dim
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [6, 5, 5] if head_dim == 32 else [12, 10, 10],
            "mrope_interleaved": True,
        }
    if family.linear_attention:
        # Qwen3.5: four text layers, Gated DeltaNet linear attention and full attention alternating (the released
        # checkpoints have three linear layers per full one; with a single full-attention layer at the end, a model
        # this small learns the main job's colours too slowly: 49% instead of 99% held-out), partial rotary
        # embeddings on a quarter of each head.
        text.update(
            num_hidden_layers=4,
            layer_types=["linear_attention", "full_attention"] * 2,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=head_dim,  # 64 with --head-dim 64: vLLM's CPU kernels take no smaller heads
            linear_value_head_dim=head_dim,
            linear_conv_kernel_dim=4,
        )
        text["rope_parameters"].update(
            rope_theta=10_000_000.0,
            partial_rotary_factor=0.25,
            mrope_section=[2, 1, 1] if head_dim == 32 else [3, 3, 2],
        )
    elif not family.video_timestamps:
        sections = [4, 6, 6] if head_dim == 32 else [8, 12, 12]
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": sections}
        if family.temporal_rope == "group_index":
            # Qwen2-VL's vision hidden_size is the merger's output width, i.e. the text hidden size.
            vision = dict(depth=2, embed_dim=64, hidden_size=128, num_heads=4, mlp_ratio=2)
        else:
            vision = dict(
                depth=2,
                hidden_size=64,
                intermediate_size=128,
                num_heads=4,
                out_hidden_size=128,
                window_size=112,
                fullatt_block_indexes=[1],
                tokens_per_second=2,
            )
        vision.update(
            patch_size=family.patch_size,
            spatial_merge_size=family.spatial_merge_size,
            temporal_patch_size=family.temporal_patch_size,
            in_channels=3,
        )
    if family.moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128, router_aux_loss_coef=0.001)
        if family.linear_attention:
            text.update(shared_expert_intermediate_size=128)
        else:
            text.update(decoder_sparse_step=1, mlp_only_layers=[])
    config_cls = transformers_attr(family.config_class)
    return config_cls(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_processor(family: Family, tokenizer: Any) -> Any:
    """The family's real processor around ``tokenizer``, with pixel budgets sized for tiny tests."""
    from transformers import Qwen2VLImageProcessor

    f = family.image_factor
    if family.video_timestamps:
        mean = std = [0.5, 0.5, 0.5]
    else:  # OpenAI CLIP statistics, as in Qwen2/2.5-VL checkpoints
        mean = [0.48145466, 0.4578275, 0.40821073]
        std = [0.26862954, 0.26130258, 0.27577711]
    common = dict(
        patch_size=family.patch_size,
        merge_size=family.spatial_merge_size,
        temporal_patch_size=family.temporal_patch_size,
        image_mean=mean,
        image_std=std,
    )
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 4 * f * f, "longest_edge": 256 * f * f}, **common)
    video_cls = transformers_attr(family.video_processor_class)
    if family.video_timestamps:
        # Qwen3-VL's video budget is over T*H*W (all frames together), like the real checkpoints.
        video_processor = video_cls(
            size={"shortest_edge": 4 * f * f, "longest_edge": 16 * 64 * f * f},
            fps=2,
            min_frames=4,
            max_frames=16,
            **common,
        )
    else:
        video_processor = video_cls(size={"shortest_edge": 4 * f * f, "longest_edge": 64 * f * f}, **common)
    processor_cls = transformers_attr(family.processor_class)
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template(family),
    )


def build_model(family: Family, config: Any, seed: int = 0) -> Any:
    """A randomly initialised model of the family's real class; the same seed gives the same weights."""
    import torch
    from transformers import GenerationConfig

    model_cls = transformers_attr(family.model_class)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    eos = config.text_config.eos_token_id
    pad = config.text_config.pad_token_id
    model.generation_config = GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad, do_sample=False)
    return model.eval()


def build_tiny(family: str, seed: int = 0, head_dim: int = 32) -> tuple[Any, Any]:
    """Build ``(model, processor)`` for ``family`` in memory."""
    fam = get_family(family)
    tokenizer = build_tokenizer(seed)
    processor = build_processor(fam, tokenizer)
    model = build_model(fam, build_config(fam, tokenizer, head_dim), seed)
    return model, processor


def to_hub_expert_layout(folder: Path, family: str) -> None:
    """Store Qwen3-VL-MoE expert weights as the hub checkpoints do (``[experts, hidden, 2 x intermediate]``, the
    transpose of transformers 5's in-memory layout, which its ``save_pretrained`` keeps), so the tiny checkpoint
    loads through the same weight conversion as ``Qwen/Qwen3-VL-30B-A3B-Instruct`` (under ZeRO-3 too)."""
    from safetensors.torch import load_file, save_file

    from qwenvl.model.loader import to_hub_layout

    for file in sorted(folder.glob("*.safetensors")):
        save_file(to_hub_layout(get_family(family), load_file(file)), file, metadata={"format": "pt"})


def write_tiny_checkpoint(family: str, out: str | Path, seed: int = 0, head_dim: int = 32) -> Path:
    """Write a complete tiny checkpoint for ``family`` to ``out`` and return the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny(family, seed, head_dim)
    model.save_pretrained(out)
    if get_family(family).hub_experts_transposed:
        to_hub_expert_layout(out, family)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("wrote tiny %s checkpoint (%d parameters) to %s", family, n_params, out)
    return out


def check_output_folder(out: str | Path, flag: str = "--out") -> Path:
    """``out`` as a folder this process can write into (created if missing), or a :class:`UserError`."""
    from qwenvl.cli import UserError

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {out} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".qwenvl-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{flag} {out}: cannot write there ({e.strerror}); give a writable folder") from None
    return path


def main(argv: list[str] | None = None) -> None:
    from qwenvl.cli import StrictParser, run_tool

    parser = StrictParser(description=__doc__)
    parser.add_argument("--family", required=True, choices=sorted(FAMILIES), help="model family to build")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the tokenizer corpus and the weights")
    parser.add_argument("--head-dim", type=int, default=32, choices=[32, 64], help="64 for vLLM's CPU attention")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        check_output_folder(args.out)
        path = write_tiny_checkpoint(args.family, args.out, args.seed, args.head_dim)
        print(f"tiny {args.family} checkpoint written to {path}")
        return 0

    sys.exit(run_tool(body))


if __name__ == "__main__":
    main()
