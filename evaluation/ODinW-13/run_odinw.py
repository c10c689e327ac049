"""ODinW-13 inference and COCO mAP at upstream's path (the logic is ``qwenvl.evaluation.odinw``).
``python evaluation/ODinW-13/run_odinw.py --help`` lists the commands."""

from qwenvl.evaluation.odinw import main


if __name__ == "__main__":
    raise SystemExit(main())
