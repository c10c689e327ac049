"""qwenvl: fine-tuning, evaluation and inference for the Qwen-VL family."""

__version__ = "0.1.0"

import logging as _logging


class _NoCpuAcceleratorNotice(_logging.Filter):
    """DeepSpeed logs "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
    as a warning whenever it is imported (through transformers or peft) on a machine without a GPU, in every
    command and every DataLoader worker; on such a machine it is expected, not something to act on."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU.")


_logging.getLogger("DeepSpeed").addFilter(_NoCpuAcceleratorNotice())
