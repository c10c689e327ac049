"""Every command-line tool: ``--help`` works and imports neither torch, transformers nor gradio (so it answers at
once); an unknown or abbreviated flag is refused in one or two lines naming the closest flag, never a traceback;
user mistakes found later (bad paths, busy port, missing data) end with one clear line and exit status 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "gradio")

# (how to run it, a real flag of it, the flag mistyped as a prefix)
TOOLS = [
    (("path", "qwen-vl-finetune/qwenvl/train/train_qwen.py"), "--output_dir x --max_pixel 5", "--max_pixels"),
    (("module", "qwenvl.train.train_qwen"), "--output_dir x --learning_rat 1", "--learning_rate"),
    (("module", "qwenvl.train.dpo"), "--output_dir x --bet 0.1", "--beta"),
    (("module", "qwenvl.train.grpo"), "--output_dir x --num_generation 4", "--num_generations"),
    (("module", "qwenvl.data.lint"), "--dataset_use a --model_name_or_path m --max_packed 3", "--max_packed_tokens"),
    (("module", "qwenvl.data.verify_packing"), "--model_name_or_path m --dataset_use a --sampl 2", "--samples"),
    (("module", "qwenvl.data.inspect_video"), "--model_name_or_path m --video v --questio q", "--question"),
    (("module", "qwenvl.train.merge_lora"), "--adapter a --out o --bas b", "--base"),
    (("module", "qwenvl.model.tiny"), "--family qwen3_vl --ou x", "--out"),
    (("module", "qwenvl.quickstart"), "--train-siz 3", "--train-size"),
    (("module", "qwenvl.data.make_demo"), "--ou x", "--out"),
    (("path", "web_demo_mm.py"), "--server-prt 5", "--server-port"),
    (("path", "evaluation/mmmu/run_mmmu.py"), "infer --model-pat m --output-file o", "--model-path"),
    (("path", "evaluation/RealWorldQA/run_realworldqa.py"), "infer --output-file o --data-fil x", "--data-file"),
    (
        ("path", "evaluation/VideoMME/run_videomme.py"),
        "infer --output-file o --data-dir d --duratio short",
        "--duration",
    ),
    (
        ("path", "evaluation/MathVision/run_mathv.py"),
        "eval --input-file i --output-file o --scorin official",
        "--scoring",
    ),
    (
        ("path", "evaluation/ODinW-13/run_odinw.py"),
        "eval --input-file i --data-dir d --output-file o --coord auto",
        "--coords",
    ),
    (("path", "benchmarks/bench_train.py"), "--sample 3", "--samples"),
    (("path", "benchmarks/bench_vision.py"), "--nonsense 3", None),
    (("path", "benchmarks/bench_mmmu.py"), "--nonsense 3", None),
    (("path", "benchmarks/bench_demo.py"), "--repea 3", "--repeat"),
    (("path", "benchmarks/tables.py"), "--result x", "--results"),
    (("path", "benchmarks/bench_libs.py"), "--repeat 3", "--repeats"),
    (("path", "benchmarks/bench_rl.py"), "--step 3", "--steps"),
    (("path", "benchmarks/profile_photos.py"), "--repeat 3", "--repeats"),
    (("path", "benchmarks/bench_data.py"), "--repeat 3", "--repeats"),
    (("path", "benchmarks/bench_data_wait.py"), "--step-second 3", "--step-seconds"),
    (("module", "qwenvl.cli"), "lint --dataset_use a --model_name_or_path m --seeed 1", "--seed"),
    (
        ("module", "qwenvl.data.cache_cli"),
        "build --media_cache c --model_name_or_path m --dataset_use d --max_pixel 5",
        "--max_pixels",
    ),
    (
        ("module", "qwenvl.cli"),
        "cache build --media_cache c --model_name_or_path m --dataset_use d --worker 2",
        "--workers",
    ),
]

PROBE = """
import runpy, sys
kind, target, *argv = sys.argv[1:]
sys.argv = [target, *argv]
code = 0
try:
    if kind == "module":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target, run_name="__main__")
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _probe(kind: str, target: str, *argv: str) -> subprocess.CompletedProcess:
    # This checkout's sources first, whichever checkout the packages were installed from.
    paths = [ROOT / "qwen-vl-finetune", ROOT / "qwen-vl-utils" / "src", ROOT]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, paths)))
    return subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), kind, target, *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def _ids(tool) -> str:
    return tool[0][1]


@pytest.mark.parametrize("tool", TOOLS, ids=_ids)
def test_help_works_without_heavy_imports(tool):
    (kind, target), _, _ = tool
    result = _probe(kind, target, *(["infer"] if "run_mmmu" in target else []), "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
    assert "HEAVY=\n" in result.stderr or result.stderr.rstrip().endswith("HEAVY="), result.stderr[-500:]


@pytest.mark.parametrize("tool", TOOLS, ids=_ids)
def test_unknown_or_abbreviated_flags_are_refused_in_a_line(tool):
    (kind, target), argv, closest = tool
    result = _probe(kind, target, *argv.split())
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr.replace(result.stderr[result.stderr.rindex("HEAVY=") :], "")
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert "unknown flag" in err
    if closest:
        assert f"did you mean {closest}?" in err
    assert result.stderr.rstrip().endswith("HEAVY=")


def test_missing_model_folder_is_refused_before_anything_loads_or_runs(tmp_path):
    # Checked with the flags (no torch, no progress bar, no results file), for evaluations and the demo alike.
    out = tmp_path / "out.jsonl"
    tsv = tmp_path / "q.tsv"
    tsv.write_text("index\tquestion\tanswer\timage\n0\tq\tA\tiVBOR\n")
    for target, argv in (
        ("qwenvl.cli", ["eval", "realworldqa", "infer", "--data-file", str(tsv), "--output-file", str(out)]),
        ("qwenvl.cli", ["eval", "mmmu", "infer", "--output-file", str(out)]),
    ):
        result = _probe("module", target, *argv, "--model-path", str(tmp_path / "nope"))
        assert result.returncode == 2, result.stderr[-2000:]
        err = result.stderr[: result.stderr.rindex("HEAVY=")]
        assert len(err.strip().splitlines()) == 1 and "nope does not exist" in err, err
        assert result.stderr.rstrip().endswith("HEAVY="), result.stderr[-500:]
        assert not out.exists() and not list(tmp_path.glob("out.jsonl*"))


def _train_error(*flags: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "qwenvl.train.train_qwen", *flags], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr


def test_training_mistakes_end_in_one_clear_line(tmp_path, tiny_checkpoints):
    out = str(tmp_path / "out")
    assert "--output_dir is required" in _train_error("--dataset_use", "demo_images")
    err = _train_error("--model_name_or_path", str(tmp_path / "nope"), "--dataset_use", "demo_images",
                       "--output_dir", out, "--use_cpu", "True")  # fmt: skip
    assert "does not exist" in err and "nope" in err
    err = _train_error("--model_name_or_path", "Qwen/Not-A-Real-Model-xyz", "--dataset_use", "demo_images",
                       "--output_dir", out, "--use_cpu", "True")  # fmt: skip
    assert "cannot load a model config from 'Qwen/Not-A-Real-Model-xyz'" in err and "HF_HUB_OFFLINE" in err
    err = _train_error("--model_name_or_path", str(tiny_checkpoints["qwen2_vl"]), "--dataset_use",
                       str(tmp_path / "missing.jsonl"), "--output_dir", out, "--use_cpu", "True")  # fmt: skip
    assert "missing.jsonl: annotation file not found" in err
    err = _train_error("--model_name_or_path", str(tiny_checkpoints["qwen2_vl"]), "--dataset_use", "no_such_set",
                       "--output_dir", out, "--use_cpu", "True")  # fmt: skip
    assert "dataset 'no_such_set' is not registered" in err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rat: 0.1\noutput_dir: x\n")
    assert "unknown key 'learning_rat'; did you mean 'learning_rate'?" in _train_error(str(recipe))
    assert "--warmup_ratio and --warmup_steps are both set" in _train_error(
        "--output_dir", out, "--dataset_use", "demo_images", "--warmup_ratio", "0.1", "--warmup_steps", "3"
    )


def test_upstream_flags_are_accepted(tmp_path):
    from qwenvl.train.arguments import parse_args

    _, data_args, args = parse_args(["--output_dir", str(tmp_path), "--dataset_use", "demo_images",
                                     "--warmup_ratio", "0.03", "--base_interval", "2", "--use_cpu", "True"])  # fmt: skip
    assert args.warmup_steps == 0.03 and args.get_warmup_steps(100) == 3  # ceil(0.03 x 100), upstream's meaning
    assert data_args.base_interval == 2


def test_tool_mistakes_end_in_one_clear_line(tmp_path, tiny_checkpoints):
    def run(*cmd: str) -> str:
        result = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=300, cwd=ROOT,
                                env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))  # fmt: skip
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        return result.stderr

    not_a_video = tmp_path / "notes.txt"
    not_a_video.write_text("hello")
    err = run("-m", "qwenvl.data.inspect_video", "--model_name_or_path", str(tiny_checkpoints["qwen3_vl"]),
              "--video", str(not_a_video))  # fmt: skip
    assert "notes.txt: not a readable video" in err
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert "is a file; give a folder" in run("-m", "qwenvl.model.tiny", "--family", "qwen3_vl", "--out", str(a_file))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere; a folder under a file cannot be made by anyone
        assert "cannot write there" in run("-m", "qwenvl.model.tiny", "--family", "qwen3_vl", "--out", str(locked))
    assert "cannot write there" in run("-m", "qwenvl.model.tiny", "--family", "qwen3_vl", "--out", str(a_file / "x"))
    err = run("evaluation/mmmu/run_mmmu.py", "infer", "--model-path", str(tiny_checkpoints["qwen3_vl"]),
              "--data-dir", "MMMU/MMMU", "--output-file", str(tmp_path / "r.jsonl"), "--subjects", "art")  # fmt: skip
    assert "--data-dir MMMU/MMMU: not a local folder" in err and "HF_HUB_OFFLINE" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = run("web_demo_mm.py", "-c", str(tiny_checkpoints["qwen3_vl"]), "--server-port", str(port))
    assert f"port {port} on 127.0.0.1 is not free" in err and "--server-port" in err


def test_qwenvl_console_script(tmp_path):
    exe = Path(sys.executable).with_name("qwenvl")
    assert exe.is_file(), "the qwenvl console script is not installed (pip install -e ./qwen-vl-finetune)"
    listing = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0
    for command in ("train", "lint", "verify-packing", "inspect-video", "merge-lora", "tiny", "quickstart"):
        assert command in listing.stdout
        sub = subprocess.run([str(exe), command, "--help"], capture_output=True, text=True, timeout=60)
        assert sub.returncode == 0 and "usage:" in sub.stdout, sub.stderr
    typo = subprocess.run([str(exe), "trian"], capture_output=True, text=True, timeout=60)
    assert typo.returncode == 2 and "did you mean 'train'?" in typo.stderr
    made = subprocess.run([str(exe), "tiny", "--family", "qwen2_vl", "--out", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    assert json.loads((tmp_path / "t" / "config.json").read_text())["model_type"] == "qwen2_vl"


def test_train_flag_values_are_checked_before_heavy_imports():
    """A value of the wrong kind is refused by the light parser in one line (torch and transformers not imported)."""
    base = ["--output_dir", "x", "--dataset_use", "demo_images"]
    cases = [
        (["--learning_rate", "abc"], "--learning_rate/--learning-rate: invalid float value: 'abc'"),
        (["--max_steps", "1.5"], "--max_steps/--max-steps: invalid int value: '1.5'"),
        (["--bf16", "maybe"], "--bf16: invalid boolean (true/false) value: 'maybe'"),
        (["--overlong", "cut"], "--overlong: invalid choice: 'cut'"),
        (["--dataset_use", "colours%abc"], "'abc' after % is not a percentage; write colours%N"),
        (["--dataset_use", "colours%0"], "'colours%0': the sampling percentage must be positive"),
        (["--eval_dataset_use", "colours%x"], "--eval_dataset_use 'colours%x': 'x' after % is not a percentage"),
    ]
    for flags, expected in cases:
        result = _probe("module", "qwenvl.train.train_qwen", *base, *flags)
        assert result.returncode == 2, result.stderr[-2000:]
        err = result.stderr[: result.stderr.rindex("HEAVY=")]
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
        assert result.stderr.rstrip().endswith("HEAVY="), f"{flags}: heavy modules imported before the check"


def test_train_boolean_flags_accept_the_bare_form(tmp_path):
    from qwenvl.train.arguments import parse_args

    model_args, data_args, args = parse_args(["--output_dir", str(tmp_path), "--dataset_use", "demo_images",
                                              "--use_cpu", "--tune_mm_vision", "--data_packing", "--bf16",
                                              "--tune_mm_llm", "false", "--report_to", "none"])  # fmt: skip
    assert model_args.tune_mm_vision is True and model_args.tune_mm_llm is False
    assert data_args.data_packing is True and args.bf16 is True and args.use_cpu is True


def test_train_help_shows_value_kinds_and_single_percent_signs():
    result = _probe("module", "qwenvl.train.train_qwen", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert "[V ...]" not in text and "%%" not in text
    for shown in ("--learning_rate FLOAT", "--max_steps INT", "--bf16 [BOOL]", "--tune_mm_vision [BOOL]",
                  "--overlong {error,skip,truncate_text}", "name%N samples N%", "--report_to VALUE [VALUE ...]"):  # fmt: skip
        assert shown in text, shown


def test_output_folders_that_are_files_and_missing_reporters_end_in_one_line(tmp_path):
    import importlib.util

    a_file = tmp_path / "taken"
    a_file.write_text("")
    base = ["--dataset_use", "demo_images"]
    result = _probe("module", "qwenvl.train.train_qwen", *base, "--output_dir", str(a_file))
    err = result.stderr[: result.stderr.rindex("HEAVY=")]
    assert result.returncode == 2 and f"--output_dir {a_file} is a file; give a folder" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    result = _probe("module", "qwenvl.train.merge_lora", "--adapter", str(tmp_path), "--out", str(a_file))
    err = result.stderr[: result.stderr.rindex("HEAVY=")]
    assert result.returncode == 2 and f"--out {a_file} is a file; give a folder" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here: --report_to wandb is valid")
    result = _probe("module", "qwenvl.train.train_qwen", *base, "--output_dir", str(tmp_path / "o"),
                    "--report_to", "wandb")  # fmt: skip
    err = result.stderr[: result.stderr.rindex("HEAVY=")]
    assert result.returncode == 2, err
    assert "--report_to wandb needs the wandb package: pip install wandb, or pass --report_to none" in err, err
    assert len(err.strip().splitlines()) <= 2 and result.stderr.rstrip().endswith("HEAVY=")


def test_a_user_error_under_torchrun_is_said_once_and_shown_in_torchruns_report():
    """Both ranks refuse the flag; the line is printed once, then how to read torchrun's report, which names the
    error instead of "To enable traceback see ..." (torchrun raises ChildFailedError for any failed worker)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    paths = [ROOT / "qwen-vl-finetune", ROOT / "qwen-vl-utils" / "src", ROOT]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, paths)), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
         "-m", "qwenvl.train.train_qwen", "--output_dir", "x", "--dataset_use", "demo_images", "--learning_rate", "abc"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode != 0
    error = "train_qwen.py: error: argument --learning_rate/--learning-rate: invalid float value: 'abc'"
    lines = result.stderr.splitlines()
    assert lines[0] == error and lines[2].startswith("(torchrun's ChildFailedError report that follows only"), lines[:4]
    assert sum(line == error for line in lines) == 1, result.stderr
    # Each rank that got as far as parsing names the error; torchrun stops a slower rank (SIGTERM) once one failed.
    named = sum(line.strip() == f"traceback : {error}" for line in lines)
    assert named == 2 or (named == 1 and "(SIGTERM)" in result.stderr), result.stderr
    assert "To enable traceback see" not in result.stderr


def test_train_flags_keep_their_value_kinds_after_a_parse(tmp_path):
    """transformers' parser rewrites the dataclass fields' types when it parses; a second parse in the same process
    (quickstart, tests, a notebook) must still know which flags are booleans."""
    from qwenvl.train.arguments import parse_args

    flags = ["--output_dir", str(tmp_path), "--dataset_use", "demo_images", "--use_cpu", "--report_to", "none"]
    parse_args(flags)
    _, data_args, _ = parse_args([*flags, "--data_packing"])
    assert data_args.data_packing is True


def test_no_deepspeed_cpu_notice_in_our_commands():
    # DeepSpeed warns "Setting accelerator to CPU..." on every import on a machine without a GPU; our commands
    # (anything importing qwenvl first) do not print it. Without qwenvl the notice is there: the check can fail.
    code = "{first}from deepspeed.accelerator import get_accelerator; get_accelerator()"
    paths = [ROOT / "qwen-vl-finetune", ROOT / "qwen-vl-utils" / "src", ROOT]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, paths)), CUDA_VISIBLE_DEVICES="")
    env.pop("DS_ACCELERATOR", None)
    ours, bare = (
        subprocess.run([sys.executable, "-c", code.format(first=first)], capture_output=True, text=True, env=env,
                       timeout=120)  # fmt: skip
        for first in ("import qwenvl; ", "")
    )
    assert ours.returncode == 0 and bare.returncode == 0, ours.stderr[-2000:] + bare.stderr[-2000:]
    assert "Setting accelerator to CPU" in bare.stdout + bare.stderr
    assert "Setting accelerator to CPU" not in ours.stdout + ours.stderr
