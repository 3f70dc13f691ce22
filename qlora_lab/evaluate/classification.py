"""Sequence classification scored as GLUE scores it: accuracy and the task's official metric
(scikit-learn's Matthews correlation and F1, scipy's Pearson and Spearman)."""

from __future__ import annotations

from qlora_lab.evaluate.registry import EvalInputs, evaluation, no_grad
from qlora_lab.model.kinds import KINDS


@no_grad
def predict(model, examples: list[dict], pad_token_id: int, batch_size: int) -> tuple[list, list, float]:
    """(predictions, labels, mean loss): argmax classes, or scores for a one-output (regression) head."""
    from qlora_lab.data.tokens import PadCollator

    was_training = model.training
    model.eval()
    collate = PadCollator(pad_token_id)
    device = next(model.parameters()).device
    predictions, labels, loss_sum = [], [], 0.0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size]).items()}
        out = model(**batch)
        logits = out.logits.float()
        loss_sum += out.loss.item() * len(batch["labels"])
        predictions += (logits[:, 0] if logits.shape[1] == 1 else logits.argmax(-1)).tolist()
        labels += batch["labels"].tolist()
    model.train(was_training)
    return predictions, labels, loss_sum / max(len(examples), 1)


def glue_metrics(task: str, predictions: list, labels: list) -> dict:
    """accuracy (classification tasks) and the task's official metric, by its usual name."""
    from qlora_lab.data.glue import GLUE_TASKS

    metric = GLUE_TASKS[task].metric
    if metric == "pearson_spearman":
        from scipy.stats import pearsonr, spearmanr

        return {"pearson": float(pearsonr(predictions, labels)[0]), "spearman": float(spearmanr(predictions, labels)[0])}
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    out = {"accuracy": float(accuracy_score(labels, predictions))}
    if metric == "f1":
        out["f1"] = float(f1_score(labels, predictions))
    elif metric == "matthews_corrcoef":
        out["matthews_corrcoef"] = float(matthews_corrcoef(labels, predictions))
    return out


@evaluation("classification", order=10, enabled=lambda c: KINDS[c.model.kind].classifies,
            metrics=("eval_loss", "accuracy"))
def measure(inputs: EvalInputs) -> dict:
    """A classifier's eval loss and its task's GLUE scores on the eval split."""
    config = inputs.config
    predictions, labels, loss = predict(inputs.model, inputs.encode(inputs.eval_pairs),
                                        inputs.tokenizer.pad_token_id, config.eval.batch_size)
    return {"eval_loss": loss, **glue_metrics(config.dataset.task, predictions, labels), "n_scored": len(labels)}
