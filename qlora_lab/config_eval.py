"""The `eval` group's typed config: what is measured after training, one dataclass per
evaluation that has settings of its own. Split from qlora_lab.config (which re-exports it) to
keep each module to one screenful of concerns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from qlora_lab.config_checks import ConfigError, at_least, choice, positive


def objectives() -> tuple[str, ...]:
    """What `eval.objective` may name: every registered evaluation's numbers, and the training loss."""
    from qlora_lab.evaluate.registry import metric_names

    return tuple(dict.fromkeys(metric_names() + ("train_loss_last",)))


@dataclass
class MmluConfig:
    """MMLU (Hendrycks et al. 2021): on when `path` is set, as the paper measured it."""

    path: Optional[str] = None  # folder in the standard layout (dev/, test/, val/), "hub", or "stdlib" (generated here)
    hub_id: str = "cais/mmlu"  # used when path=hub
    split: str = "test"  # test (what the paper reports) | val (what its code logged)
    shots: int = 5  # 0 | 5 answered dev questions before each question
    batch_size: int = 8  # questions per forward after the shared prefix

    def validate(self) -> None:
        choice("eval.mmlu.split", self.split, ("test", "val"))
        choice("eval.mmlu.shots", self.shots, (0, 5))
        positive("eval.mmlu.batch_size", self.batch_size)
        if self.path not in (None, "hub", "stdlib") and not Path(self.path).is_dir():
            raise ConfigError("eval.mmlu.path", self.path, "no such folder (or hub for cais/mmlu, stdlib for the "
                                                           "benchmark generated from the standard library)")


@dataclass
class PplConfig:
    """Perplexity of a text corpus (on when `path` or `hub_id` is set); else of the held-out split."""

    path: Optional[str] = None  # a folder of .txt files, or "stdlib": the library modules no built base was pretrained on
    hub_id: Optional[str] = None  # or a hub dataset (e.g. a Pile Common Crawl sample)
    hub_config: Optional[str] = None
    text_field: str = "text"
    seq_len: int = 512  # tokens per window
    max_tokens: int = 100_000  # tokens scored at most
    before_training: bool = False  # score the base before fine-tuning (metrics.base_ppl: Table 2's measure) instead of after

    def validate(self) -> None:
        if self.path not in (None, "stdlib") and not Path(self.path).is_dir():
            raise ConfigError("eval.ppl.path", self.path, "no such folder (or stdlib: the held-out library source)")
        positive("eval.ppl.seq_len", self.seq_len)
        positive("eval.ppl.max_tokens", self.max_tokens)


@dataclass
class LmEvalConfig:
    """Zero-shot tasks through lm-evaluation-harness (on when `tasks` is non-empty): Figure 3's suite."""

    tasks: list = field(default_factory=list)  # e.g. [winogrande, hellaswag, piqa, arc_easy, arc_challenge]
    # a folder of task YAMLs of your own (local data), added to lm-eval's; or "stdlib": ours, generated
    # here from held-out library source (stdlib_next_line: which of four lines comes next)
    include_path: Optional[str] = None
    num_fewshot: int = 0  # the paper's zero-shot
    limit: Optional[int] = None  # questions per task at most (None: all)
    batch_size: int = 8

    def validate(self) -> None:
        at_least("eval.lm_eval.num_fewshot", self.num_fewshot, 0)
        positive("eval.lm_eval.batch_size", self.batch_size)
        if self.limit is not None:
            positive("eval.lm_eval.limit", self.limit)
        if self.include_path not in (None, "stdlib") and not Path(self.include_path).is_dir():
            raise ConfigError("eval.lm_eval.include_path", self.include_path,
                              "no such folder (or stdlib: the tasks generated from the held-out library source)")


@dataclass
class EvalConfig:
    """What is measured after training: held-out loss/perplexity, RougeL of generations, MMLU."""

    loss: bool = True  # held-out loss and perplexity over the eval split's target tokens
    batch_size: int = 8  # eval micro-batch
    n_generate: int = 4  # held-out examples answered greedily and scored by RougeL (0: none)
    max_new_tokens: int = 64  # generation length cap
    mmlu: MmluConfig = field(default_factory=MmluConfig)
    ppl: PplConfig = field(default_factory=PplConfig)
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    # output fidelity: KL of the model's next-token distributions from its unquantized self's, on
    # eval.ppl's corpus (else the held-out split), in windows of eval.ppl.seq_len
    fidelity: bool = False
    fidelity_tokens: int = 8192  # positions scored at most (a bare base's reference is cached: tokens x vocab floats)
    # the 16-bit checkpoint fidelity compares with; null: the base's own unquantized weights. A base
    # released quantized has none of its own: give the original it was made from (the released study)
    fidelity_reference: Optional[str] = None
    # JSONL of id, prompt[, reference], a set (oasst1, vicuna), or a list: into generations.jsonl
    prompts: Optional[Union[str, list]] = None
    prompt_template: str = "{prompt}"  # how a prompt is put to the model (Guanaco: "### Human: {prompt}### Assistant:")
    sampling: str = "greedy"  # greedy | paper (top-p 0.9, temperature 0.7), seeded by train.seed
    objective: str = "eval_loss"  # the metric a run returns to a search sweeper (optuna); not in run_id

    def validate(self) -> None:
        positive("eval.batch_size", self.batch_size)
        positive("eval.fidelity_tokens", self.fidelity_tokens)
        if not isinstance(self.fidelity, bool):
            raise ConfigError("eval.fidelity", self.fidelity, "expected true or false")
        if self.fidelity_reference is not None:
            if not self.fidelity:
                raise ConfigError("eval.fidelity_reference", self.fidelity_reference, "is what eval.fidelity=true "
                                                                                      "compares with; set that too")
            if not (Path(self.fidelity_reference) / "config.json").is_file():
                raise ConfigError("eval.fidelity_reference", self.fidelity_reference,
                                  "no checkpoint folder there (expected a 16-bit transformers folder with config.json)")
        choice("eval.objective", self.objective, objectives())
        at_least("eval.n_generate", self.n_generate, 0)
        positive("eval.max_new_tokens", self.max_new_tokens)
        choice("eval.sampling", self.sampling, ("greedy", "paper"))
        from qlora_lab.evaluate.prompt_sets import PROMPT_SETS

        for item in [self.prompts] if isinstance(self.prompts, str) else self.prompts or []:
            if item not in PROMPT_SETS and not Path(item).is_file():
                raise ConfigError("eval.prompts", item, f"no such file (or a named set: {', '.join(PROMPT_SETS)})")
        if "{prompt}" not in self.prompt_template:
            raise ConfigError("eval.prompt_template", self.prompt_template, "must contain {prompt}")
        self.mmlu.validate()
        self.ppl.validate()
        self.lm_eval.validate()
