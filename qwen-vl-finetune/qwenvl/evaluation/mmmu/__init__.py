"""MMMU: data layouts and prompts (``data``), the official parsing and scoring (``scoring``), infer / eval / compare
(``cli``, run as ``evaluation/mmmu/run_mmmu.py`` or ``python -m qwenvl.evaluation.mmmu.cli``)."""
