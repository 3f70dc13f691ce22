"""Zero-shot accuracy through lm-evaluation-harness (Figure 3's suite: Winogrande, HellaSwag,
PiQA, ARC-Easy, ARC-Challenge), on the run's own model object: no reload, no second copy.

Task definitions are lm-eval's own; `include_path` adds a folder of task YAMLs of your own
(the tests define one over a local data file, since the hub's data cannot be downloaded here).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from qlora_lab.evaluate.registry import EvalInputs, evaluation


@dataclass
class ZeroShotResult:
    accuracy: dict[str, float]  # task -> acc
    accuracy_norm: dict[str, float]  # task -> acc_norm, where the task reports it (HellaSwag, ARC)
    n_questions: dict[str, int]

    @property
    def mean(self) -> float:
        """The paper's Figure 3 measure: the mean of the tasks' accuracies."""
        return sum(self.accuracy.values()) / len(self.accuracy)


def task_manager(tasks: list[str], include_path: str | None):
    """lm-eval's task index (its own tasks and the folder's), the names checked against it:
    called before the model loads, so a misspelt task costs no training."""
    if include_path == "stdlib":
        from qlora_lab.data.stdlib_next_line import stdlib_tasks_dir

        include_path = str(stdlib_tasks_dir())
    manager = _index(include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"eval.lm_eval.tasks: lm-eval knows no task {unknown[0]!r}"
                         + ("" if include_path else " (tasks of your own: eval.lm_eval.include_path=DIR)"))
    return manager


@functools.lru_cache(maxsize=4)
def _index(include_path: str | None):
    """lm-eval's TaskManager indexes thousands of task YAMLs: once per process, not per check."""
    import logging

    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # it warns that a model object was passed: we mean it
    return TaskManager(include_path=include_path)


def zero_shot(model, tokenizer, tasks: list[str], include_path: str | None, num_fewshot: int, limit: int | None,
              batch_size: int, seed: int = 0) -> ZeroShotResult:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(tasks, include_path)
    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, backend="causal")
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                  task_manager=manager, random_seed=seed, numpy_random_seed=seed,
                                  torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=0,
                                  log_samples=False)
    model.train(was_training)
    results = out["results"]
    return ZeroShotResult(
        accuracy={t: float(results[t]["acc,none"]) for t in tasks},
        accuracy_norm={t: float(results[t]["acc_norm,none"]) for t in tasks if "acc_norm,none" in results[t]},
        n_questions={t: int(out["n-samples"][t]["effective"]) for t in tasks},
    )


def _check_tasks(config) -> None:
    """A misspelt task fails before any model loads."""
    task_manager(config.eval.lm_eval.tasks, config.eval.lm_eval.include_path)


@evaluation("zero_shot", order=20, enabled=lambda c: bool(c.eval.lm_eval.tasks), metrics=("zero_shot_mean",),
            prepare=_check_tasks)
def measure(inputs: EvalInputs) -> dict:
    """Zero-shot accuracy per lm-eval task and their mean (Figure 3's suite)."""
    cfg = inputs.config.eval.lm_eval
    result = zero_shot(inputs.model, inputs.tokenizer, cfg.tasks, cfg.include_path, cfg.num_fewshot, cfg.limit,
                       cfg.batch_size, inputs.config.train.seed)
    return {"zero_shot": result.accuracy, "zero_shot_acc_norm": result.accuracy_norm,
            "zero_shot_n": result.n_questions, "zero_shot_mean": result.mean}
