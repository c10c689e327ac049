"""python -m qwenvl.data.verify_packing on tiny checkpoints: packed rows match the model's own unpacked inference
path, the leak control is visible, a real mismatch (KV cache on) fails, and the dumped layout is exact."""

from __future__ import annotations

import json

import pytest

from qwenvl.data.verify_packing import main


def _run(checkpoint, tmp_path, *extra):
    argv = ["--model_name_or_path", str(checkpoint), "--dataset_use", "demo_video,demo_messages,demo_images",
            "--samples", "7", "--max_packed_tokens", "4096", "--dump", str(tmp_path / "layout.json"), *extra]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


@pytest.mark.slow
def test_packed_rows_match_the_unpacked_inference_path(tiny_checkpoint, family, tmp_path, capsys):
    assert _run(tiny_checkpoint, tmp_path, "--pick", "first") == 0
    out = capsys.readouterr().out
    assert "OK: all 7 samples match their unpacked loss" in out
    assert "the check sees a leak" in out  # the control: without restarting positions, samples see each other
    if family in ("qwen3_5", "qwen3_5_moe"):  # the linear-attention layers were isolated by the training path's hook
        assert "linear-attention layers: 2, packed-sample boundaries each sample run alone" in out
    dump = json.loads((tmp_path / "layout.json").read_text())
    checks = dump["checks"]
    assert len(checks) == 7 and all(c["max_logit_diff"] < 1e-4 for c in checks)
    assert sum(c["videos"] for c in checks) >= 1 and sum(c["images"] for c in checks) >= 1
    for pack in dump["packs"]:
        cu = pack["cu_seqlens"]
        assert [s["start"] for s in pack["samples"]] == cu[:-1] and pack["samples"][-1]["end"] == cu[-1]
        positions = pack["position_ids"]
        assert len(positions) == 4 and len(positions[0]) == cu[-1]
        assert [positions[0][a] for a in cu[:-1]] == [0] * (len(cu) - 1)  # text positions restart per sample
        for sample in pack["samples"]:
            for span in sample["vision"]:
                assert sample["start"] <= span["start"] < span["end"] <= sample["end"]
                assert span["grid_thw"] is not None and span["index"] >= 0


@pytest.mark.slow
def test_kv_cache_on_packed_rows_is_reported_as_a_mismatch(tiny_checkpoints, tmp_path, capsys):
    assert _run(tiny_checkpoints["qwen3_vl"], tmp_path, "--use_cache", "--no_control") == 1
    captured = capsys.readouterr()
    assert "7 samples in 1 pack(s)" in captured.out  # a seeded draw across the mix (default --pick random)
    assert "MISMATCH" in captured.out and "FAILED" in captured.err and "use_cache" in captured.err


def test_sample_longer_than_a_pack_is_a_clear_error(tiny_checkpoints, tmp_path, capsys):
    assert _run(tiny_checkpoints["qwen3_vl"], tmp_path, "--max_packed_tokens", "16") == 2
    assert "raise it" in capsys.readouterr().err
