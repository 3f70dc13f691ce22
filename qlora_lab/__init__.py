"""qlora-lab: QLoRA fine-tuning studies as Hydra sweeps that leave one record per run.

Light on purpose: the analysis imports `qlora_lab.records` on a laptop. What composing the
config folder needs (resolvers, each group's schema) is registered by `qlora_lab.sweep`, which
every process that composes, launches or runs a job imports (CONF_DIR is there)."""

import logging

__version__ = "0.1.0"


class _NoHubKernelsPackage(logging.Filter):
    """bitsandbytes (on AVX512-BF16 CPUs) fetches a CPU kernel from the Hugging Face hub through
    the `kernels` package at import, and warns when it cannot: the package is missing (an older
    transformers does not bring it), or the hub is offline (HF_HUB_OFFLINE=1: runs download
    nothing). bitsandbytes' own CPU path runs then; say nothing. A real failure of a kernel that
    was fetched is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.args[0] if record.args else None
        unreachable = isinstance(err, (ImportError, AttributeError)) or "offline mode" in str(err)
        return not (str(record.msg).startswith("Failed to load CPU gemm_4bit_forward") and unreachable)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoHubKernelsPackage())
