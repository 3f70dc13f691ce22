"""Output fidelity (llama.cpp's `perplexity --kl-divergence`): on held-out text, the run's model
against its unquantized self, position by position: the KL divergence of its next-token
distribution from the reference's (mean, 95% interval over windows, 99th percentile), how often
the two pick the same most likely token, and the ratio of their perplexities.

The reference is the same base with its linear weights unquantized (at the compute dtype, the
rest held as the run holds it) and, after fine-tuning, the run's adapter on it: what a merge into
16-bit weights would serve, so that KL says how much the adapter leans on the quantization error
(after LoftQ's or PiSSA's split, the base the run quantized: PiSSA's residual, LoftQ's W - sBA).
Before any training (an eval-only run) it is the checkpoint itself, so an adapter init that
starts away from zero is measured by how close quantized base + adapter come to the 16-bit model.
A bare base's log-probabilities are computed once per base, text and precision and cached on
disk (a PTQ sweep of many data types shares them); an adapter's are computed in the run. None of
them goes into the record.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from qlora_lab.config_checks import ConfigError
from qlora_lab.evaluate.registry import EvalInputs, evaluation, no_grad

REFERENCE_VERSION = 1  # bump when what a cached reference holds changes


@dataclass
class Fidelity:
    """What the record's metrics hold: the quantized model's distance from its reference."""

    kl_to_base: float  # mean over scored positions of KL(reference || model), nats
    kl_to_base_ci: list[float]  # 95% interval of that mean, over windows (positions within one are not independent)
    kl_to_base_p99: float  # 99th percentile over positions
    top1_agree: float  # share of positions where both pick the same most likely next token
    ppl_ratio: float  # the model's perplexity on the text / the reference's
    ref_ppl: float  # the reference's own perplexity on the text
    fidelity_tokens: int  # positions scored

    def to_metrics(self) -> dict:
        return dict(vars(self))


def compare(reference: Iterable, model: Iterable, targets: Iterable) -> Fidelity:
    """Fidelity from matching sequences of per-window log-probabilities ([positions, vocab]) and
    the tokens that followed each position ([positions])."""
    import torch

    kls, agree, nll_model, nll_ref, window_kl = [], 0, 0.0, 0.0, []
    for ref_lp, model_lp, target in zip(reference, model, targets, strict=True):
        ref_lp, model_lp = ref_lp.float(), model_lp.float()
        kl = (ref_lp.exp() * (ref_lp - model_lp)).sum(dim=-1).clamp(min=0.0)  # rounding can dip below 0
        kls.append(kl)
        window_kl.append(kl.mean().item())
        agree += int((ref_lp.argmax(dim=-1) == model_lp.argmax(dim=-1)).sum())
        nll_model -= model_lp.gather(1, target.view(-1, 1)).sum().item()
        nll_ref -= ref_lp.gather(1, target.view(-1, 1)).sum().item()
    every = torch.cat(kls)
    n = every.numel()
    mean = every.mean().item()
    half = _half_interval(window_kl)
    return Fidelity(kl_to_base=mean, kl_to_base_ci=[max(0.0, mean - half), mean + half],
                    kl_to_base_p99=torch.quantile(every.double(), 0.99).item(), top1_agree=agree / n,
                    ppl_ratio=math.exp((nll_model - nll_ref) / n), ref_ppl=math.exp(nll_ref / n), fidelity_tokens=n)


def _half_interval(values: list[float]) -> float:
    """1.96 standard errors of the mean of `values` (0 for one value)."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return 1.96 * math.sqrt(variance / len(values))


@no_grad
def window_logprobs(model, windows: list[list[int]]) -> Iterator:
    """Per window, the model's next-token log-probabilities at every position but the last."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for window in windows:
            logits = model(input_ids=torch.tensor([window], device=device)).logits[0, :-1]
            yield torch.log_softmax(logits.float(), dim=-1).cpu()
    finally:
        model.train(was_training)


def targets(windows: list[list[int]]) -> list:
    import torch

    return [torch.tensor(window[1:]) for window in windows]


def fidelity_windows(config, tokenizer, eval_pairs: list, tokens: int | None = None) -> list[list[int]]:
    """The text scored: eval.ppl's corpus where one is set, else the held-out split's pairs; at most
    `tokens` positions (default eval.fidelity_tokens)."""
    from qlora_lab.evaluate.perplexity import corpus_texts, corpus_windows

    ec = config.eval
    if ec.ppl.path or ec.ppl.hub_id:
        texts = corpus_texts(ec.ppl.path, ec.ppl.hub_id, ec.ppl.hub_config, ec.ppl.text_field)
    else:
        texts = [source + target for source, target in eval_pairs]
    return corpus_windows(tokenizer, texts, ec.ppl.seq_len, tokens or ec.fidelity_tokens)


def reference_base(config, stored: bool = False, own: bool = False):
    """The run's base with its linear weights unquantized: loaded in the compute dtype as the
    quantized run loads its unquantized parts, then widened to float32 where the run's k-bit
    preparation widens them (norms and embeddings keep the same values either way). `stored`:
    the weights the run's base quantized (after LoftQ's or PiSSA's split), not the checkpoint's.
    `eval.fidelity_reference` names another checkpoint to compare with; `own` ignores it (export
    merges into the base's own)."""
    import torch

    from qlora_lab.config import DTypeConfig
    from qlora_lab.model.build import initial_adapter, load_base, model_path
    from qlora_lab.model.quantize import to_compute_dtype

    init = initial_adapter(config.model, config.dtype, config.lora, config.train.seed) if stored else None

    compute = config.dtype.compute_dtype
    unquantized = DTypeConfig(name="bf16" if compute == "bf16" else "fp32", backend="none", double_quant=None,
                              blocksize=None, compute_dtype=compute)
    chosen = None if own else config.eval.fidelity_reference
    path = str(init.base_path) if init else chosen or model_path(config.model)
    base = to_compute_dtype(load_base(path, unquantized, config.model.kind), unquantized)
    for param in base.parameters():
        param.requires_grad = False
        if config.lora.enabled and config.dtype.backend != "none" and param.dtype != torch.float32:
            param.data = param.data.float()
    return base


def cached_reference(config, windows: list[list[int]]) -> list:
    """The bare base's per-window log-probabilities, computed once per base, text and precision."""
    import torch

    from qlora_lab.cache import atomic_write, build_lock, cache_dir
    from qlora_lab.model.build import model_path
    from qlora_lab.model.quantize import compute_autocast

    key = _reference_key(config, config.eval.fidelity_reference or model_path(config.model), windows)
    path = cache_dir() / "fidelity" / f"reference-{key}.pt"
    if not path.exists():
        with build_lock(f"fidelity/reference-{key}"):
            if not path.exists():
                reference = reference_base(config)
                device = next(reference.parameters()).device.type
                with compute_autocast(config.dtype.compute_dtype, device):
                    logprobs = list(window_logprobs(reference, windows))
                del reference
                atomic_write(path, lambda tmp: torch.save(torch.cat(logprobs), tmp))
    stored = torch.load(path, weights_only=True)
    return list(stored.split([len(w) - 1 for w in windows]))


def _reference_key(config, path: str, windows: list[list[int]]) -> str:
    """What decides a reference's numbers: the checkpoint's files, the text, the precision."""
    files = []
    if Path(path).is_dir():
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(path).iterdir() if p.is_file())
    text = hashlib.sha256(json.dumps(windows).encode()).hexdigest()
    spec = {"path": str(path), "files": files, "text": text, "compute": config.dtype.compute_dtype,
            "widened": config.lora.enabled and config.dtype.backend != "none", "kind": config.model.kind,
            "version": REFERENCE_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _check(config) -> None:
    """Refused before any model loads: what has no unquantized self to compare with."""
    if config.model.kind != "causal":
        raise ConfigError("eval.fidelity", True, f"measures next-token distributions: needs a causal model, not "
                                                 f"model.kind={config.model.kind}")
    if not config.lora.enabled and config.train.max_steps > 0:
        raise ConfigError("eval.fidelity", True, "a full fine-tune (lora.enabled=false) has no unquantized self to "
                                                 "compare with; measure its base with train.max_steps=0")


@evaluation("fidelity", order=35, enabled=lambda c: c.eval.fidelity, prepare=_check,
            metrics=("kl_to_base", "kl_to_base_p99", "top1_agree", "ppl_ratio"))
def measure(inputs: EvalInputs) -> dict:
    """The model against its unquantized self: the bare base (cached) for an eval-only run, the
    same adapter on the unquantized base after fine-tuning."""
    config = inputs.config
    windows = fidelity_windows(config, inputs.tokenizer, inputs.eval_pairs)
    if config.train.max_steps == 0:
        reference: Iterable = cached_reference(config, windows)
    else:
        from qlora_lab.model.merge import with_adapter

        reference = window_logprobs(with_adapter(reference_base(config, stored=True), inputs.model), windows)
    return compare(reference, window_logprobs(inputs.model, windows), targets(windows)).to_metrics()
