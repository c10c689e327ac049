"""Runs inside either implementation's interpreter (ours, or upstream qwen-vl-utils 0.0.14 in its own venv): fetch
every case of a JSON list and write the outputs (pixels as .npy, sizes, sample fps and metadata as JSON).

    python parity_worker.py cases.json out_dir
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    import qwen_vl_utils as q

    cases = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    report = {"module": q.__file__}
    for name, ele in cases.items():
        try:
            if "image" in ele:
                image = q.fetch_image(ele, image_patch_size=ele.pop("patch", 14))
                np.save(out / f"{name}.npy", np.asarray(image))
                report[name] = {"size": list(image.size)}
            else:
                patch = ele.pop("patch", 14)
                (video, metadata), sample_fps = q.fetch_video(
                    ele, image_patch_size=patch, return_video_sample_fps=True, return_video_metadata=True
                )
                np.save(out / f"{name}.npy", video.numpy())
                meta = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in dict(metadata).items()}
                report[name] = {"shape": list(video.shape), "sample_fps": sample_fps, "metadata": meta}
        except Exception as e:  # noqa: BLE001 - reported per case
            report[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
