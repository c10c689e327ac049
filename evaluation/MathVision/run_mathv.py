"""MathVision inference and scoring at upstream's path (the logic is ``qwenvl.evaluation.mathvision``).
``python evaluation/MathVision/run_mathv.py --help`` lists the commands."""

from qwenvl.evaluation.mathvision import main


if __name__ == "__main__":
    raise SystemExit(main())
