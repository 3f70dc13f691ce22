"""qlora_analysis: folders of run records -> the QLoRA paper's tables, Elo ratings and plots.

Reads only what runs and the judge write (`record.json`, `generations.jsonl`,
`judgments.jsonl`); never a model, a log, a launcher's pickles or a wandb server.
"""

from qlora_analysis.collect import RecordSchemaError, collect, left_out, read_judgments
from qlora_analysis.elo import elo_ratings

__all__ = ["collect", "elo_ratings", "left_out", "read_judgments", "RecordSchemaError"]
