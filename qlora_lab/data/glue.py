"""GLUE (Wang et al. 2019) as the hub's `nyu-mll/glue` lays it out: per task, its text fields,
its label names (the ClassLabel order) and its official metric.

A row becomes (source, target): the source is the task's one text, or its two texts as a pair
(the tokenizer puts the model's separator between them); the target is the label's name, or
the similarity score as text for the regression task STS-B.
"""

from __future__ import annotations

from dataclasses import dataclass

from qlora_lab.data.format_spec import Format


@dataclass(frozen=True)
class GlueTask:
    text_fields: tuple[str, ...]  # one text, or a pair
    labels: tuple[str, ...]  # ClassLabel names in index order; empty for regression (STS-B)
    metric: str  # the official metric beside accuracy: matthews_corrcoef | f1 | pearson_spearman | accuracy
    eval_split: str = "validation"  # the labelled split scored (GLUE's test labels are hidden)

    @property
    def regression(self) -> bool:
        return not self.labels


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(("sentence",), ("unacceptable", "acceptable"), "matthews_corrcoef"),
    "sst2": GlueTask(("sentence",), ("negative", "positive"), "accuracy"),
    "mrpc": GlueTask(("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1"),
    "qqp": GlueTask(("question1", "question2"), ("not_duplicate", "duplicate"), "f1"),
    "stsb": GlueTask(("sentence1", "sentence2"), (), "pearson_spearman"),
    "mnli": GlueTask(("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "accuracy",
                     eval_split="validation_matched"),
    "qnli": GlueTask(("question", "sentence"), ("entailment", "not_entailment"), "accuracy"),
    "rte": GlueTask(("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy"),
    "wnli": GlueTask(("sentence1", "sentence2"), ("not_entailment", "entailment"), "accuracy"),
}


def glue_format(task: str) -> Format:
    spec = GLUE_TASKS[task]

    def to_pair(row: dict):
        label = row["label"]
        if spec.regression:
            target = str(float(label))
        else:
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(spec.labels):
                raise ValueError(f"label {label!r} is not one of 0..{len(spec.labels) - 1} "
                                 f"({', '.join(spec.labels)}); GLUE's test split has no labels (-1)")
            target = spec.labels[label]
        texts = tuple(str(row[f]) for f in spec.text_fields)
        return (texts[0] if len(texts) == 1 else texts), target

    return Format(spec.text_fields + ("label",), to_pair)


def num_labels(task: str) -> int:
    """Outputs of the classification head: the label count, or 1 for a regression task."""
    return len(GLUE_TASKS[task].labels) or 1
