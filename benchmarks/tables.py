"""Print the Markdown tables of RESULTS.md from the JSON files the benchmarks write (so no figure is typed by hand).

Run::

    .venv/bin/python benchmarks/tables.py [--results benchmarks/results]
"""

from __future__ import annotations

import json
from pathlib import Path


HERE = Path(__file__).resolve().parent


def _s(summary: dict | None, digits: int = 3) -> str:
    if not summary:
        return "-"
    return f"{summary['median']:.{digits}f} ({summary['min']:.{digits}f}-{summary['max']:.{digits}f})"


def vision(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    lines = [
        f"{path.name}: {data['date']}, load {data['load_start']} -> {data['load_end']}, "
        f"OMP_NUM_THREADS={data['omp_num_threads']}" + (f", corpus: {data['corpus']}" if "corpus" in data else ""),
        "",
        "| case | upstream s, median (min-max) | ours s, median (min-max) | speed-up | peak RSS MB upstream / ours "
        "(ratio) | output |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in data["results"]:
        up, ours = row["sides"]["upstream"], row["sides"]["ours"]
        speed = f"{row['speedup']:.2f}x" if row.get("speedup") else "-"
        up_cell = _s(up.get("seconds")) if up.get("seconds") else up.get("error", "-")
        rss = f"{row['upstream_peak_rss_mb']:.0f} / {row['ours_peak_rss_mb']:.0f}"
        if "rss_ratio" in row:
            rss += f" ({row['rss_ratio']:.2f})"
        out = row.get("output", {})
        if out.get("bit_exact"):
            output = "bit-identical"
        elif out.get("bit_exact") is False:
            output = "differs (a listed deviation: tests/qwen_vl_utils/test_parity_upstream.py)"
        elif "mean_abs_diff" in out:
            output = f"differs: mean abs diff {out['mean_abs_diff']:.3f} / 255"
        else:
            output = "-" if not out else json.dumps(out)
        lines.append(f"| {row['case']} | {up_cell} | {_s(ours.get('seconds'))} | {speed} | {rss} | {output} |")
    image_rows = [row for row in data["results"] if row["case"].startswith("fetch_image")]
    if image_rows:  # an image case's worker times `import qwen_vl_utils` alone (nothing else imported before it)
        row = image_rows[0]
        cells = []
        for impl in ("ours", "upstream"):
            values = sorted(r["import_s"] for r in row["sides"][impl]["runs"])
            cells.append(f"{impl} {values[len(values) // 2]:.3f} s ({values[0]:.3f}-{values[-1]:.3f})")
        lines.append(f"\n`import qwen_vl_utils` in a fresh process ({row['case']}'s {len(values)} timed runs): "
                     + ", ".join(cells))  # fmt: skip
    for key, spread in data.get("spread", {}).items():
        lines.append(f"\n{key} over {spread['files']} case(s): min {spread['min']:.2f}, median {spread['median']:.2f}, "
                     f"max {spread['max']:.2f}")  # fmt: skip
    return lines


def libs(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    versions = ", ".join(f"{k} {v}" for k, v in data["versions"].items())
    lines = [
        f"{path.name}: {data['date']}, load {data['load_start']} -> {data['load_end']}, one thread per side, "
        f"{data['repeats']} rotated runs after a warm-up; {versions}",
        "",
        "| step | side | ms, median (min-max) | vs the first side | output vs the first side |",
        "|---|---|---:|---:|---|",
    ]
    for row in data["results"]:
        for name, side in row["sides"].items():
            ms = {k: v * 1000 for k, v in side["seconds"].items()}
            out = side["output"]
            if out.get("identical"):
                cell = "identical"
            elif "max_abs" in out:
                cell = f"differs: max {out['max_abs']:.0f}, mean {out['mean_abs']:.3f} of 255"
            else:
                cell = json.dumps(out)
            lines.append(f"| {row['step']} | {name} | {_s(ms, 1)} | {side['vs_reference']:.2f}x | {cell} |")
    return lines


def train(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    lines = [
        f"{path.name}: {data['date']}, load {data.get('load_start')} -> {data.get('load_end')}, {data['device']}, "
        f"{data['model']}, {data['repeats']} timed epochs per mode after a warm-up",
        "",
        "| mode | real tokens/s, median (min-max) | padding efficiency |",
        "|---|---:|---:|",
    ]
    for mode in ("padded", "packed"):
        r = data[mode]
        lines.append(f"| {mode} | {_s(r['real_tokens_per_s_summary'], 0)} | {r['padding_efficiency']:.2f} |")
    lines.append(f"| **packed / padded** (medians) | **{data['packed_vs_padded']:.2f}x** | |")
    return lines


def mmmu(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    n = data["questions"]
    lines = [
        f"{path.name}: {data['date']}, load {data['load_start']} -> {data['load_end']}, {data['machine']}, "
        f"{n} questions, {data['repeats']} timed runs per side after a warm-up",
        "",
        "| batch size | seconds for all questions, median (min-max) | questions/s (median) |",
        "|---:|---:|---:|",
    ]
    for name, side in data["sides"].items():
        sec = side["seconds"]
        lines.append(f"| {name.split('_')[1]} | {_s(sec)} | {n / sec['median']:.1f} |")
    lines.append(f"| **speed-up** (medians) | **{data['speedup_median']:.2f}x** | |")
    served = data.get("openai")
    if served:
        lines += [
            "",
            f"openai backend against `transformers serve` (load {served['load_start']} -> {served['load_end']}):",
            "",
            "| requests in flight | seconds for all questions, median (min-max) | questions/s (median) |",
            "|---:|---:|---:|",
        ]
        for name, side in served["sides"].items():
            sec = side["seconds"]
            lines.append(f"| {name.rsplit('_', 1)[1]} | {_s(sec)} | {n / sec['median']:.1f} |")
        lines.append(f"| **8 vs 1** (medians) | **{served['speedup_median']:.2f}x** | |")
    return lines


def demo(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    lines = [
        f"{path.name}: {data['date']}, load {data.get('load_start')} -> {data.get('load_end')}, {data['machine']}, "
        f"{data['model']}, {data['request']}",
        "",
        "| backend | time to first token s, median (min-max) | tokens/s, median (min-max) | runs |",
        "|---|---:|---:|---:|",
    ]
    for name, r in data["results"].items():
        lines.append(f"| {name} | {_s(r['ttft_s'])} | {_s(r['tokens_per_s'], 0)} | {r['runs']} |")
    return lines


def photo_profile(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    cores = data["cores"]
    lines = [
        f"{path.name}: {data['date']}, load {data['load_start']} -> {data['load_end']}, one thread per process, "
        f"{len(data['photos'])} photos, max_pixels {data['max_pixels']}",
        "",
        f"| side | CPU s, median (min-max) | JPEG decoding s | PIL resize s | PIL copies s | floor on {cores} cores s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in data["sides"].items():
        med = {k: v[len(v) // 2] for k, v in row.items()}
        lines.append(
            f"| {name} | {med['cpu_s']:.3f} ({row['cpu_s'][0]:.3f}-{row['cpu_s'][-1]:.3f}) | {med['decode_s']:.3f} | "
            f"{med['resize_s']:.3f} | {med['copy_s']:.3f} | {med['cpu_s'] / cores:.3f} |"
        )
    return lines


def main() -> None:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    parser.add_argument("--results", default=str(HERE / "results"))
    args = parser.parse_args()
    root = Path(args.results)
    for name, fn in (("vision.json", vision), ("vision_wide.json", vision), ("vision_wide_30s.json", vision),
                     ("vision_300s_backends.json", vision), ("photo_profile.json", photo_profile), ("libs.json", libs), ("train.json", train), ("train_qwen3_5.json", train), ("mmmu.json", mmmu), ("demo.json", demo)):  # fmt: skip
        path = root / name
        if path.is_file():
            print("\n".join(fn(path)) + "\n")


if __name__ == "__main__":
    main()
