"""MMMU inference and scoring with the official rules, resumable (upstream's path; the logic is the package's
``qwenvl.evaluation.mmmu``). ``python evaluation/mmmu/run_mmmu.py --help`` lists the commands."""

from qwenvl.evaluation.mmmu.cli import main


if __name__ == "__main__":
    raise SystemExit(main())
