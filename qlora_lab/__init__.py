"""qlora-lab: QLoRA fine-tuning studies as Hydra sweeps that leave one record per run."""

__version__ = "0.1.0"
