"""Video-MME inference and scoring at upstream's path (the logic is ``qwenvl.evaluation.videomme``).
``python evaluation/VideoMME/run_videomme.py --help`` lists the commands."""

from qwenvl.evaluation.videomme import main


if __name__ == "__main__":
    raise SystemExit(main())
