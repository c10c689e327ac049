"""RealWorldQA inference and scoring at upstream's path (the logic is ``qwenvl.evaluation.realworldqa``).
``python evaluation/RealWorldQA/run_realworldqa.py --help`` lists the commands."""

from qwenvl.evaluation.realworldqa import main


if __name__ == "__main__":
    raise SystemExit(main())
