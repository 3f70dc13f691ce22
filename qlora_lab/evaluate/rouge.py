"""Greedy answers to held-out sources, scored by RougeL (rouge-score) against the targets."""

from __future__ import annotations

from qlora_lab.evaluate.registry import EvalInputs, evaluation, no_grad
from qlora_lab.model.kinds import KINDS

# The paper's sampling for the answers it judged: nucleus 0.9, temperature 0.7.
SAMPLING = {"greedy": {"do_sample": False}, "paper": {"do_sample": True, "top_p": 0.9, "temperature": 0.7}}


@no_grad
def generate_answers(model, tokenizer, pairs: list[tuple[str, str]], max_new_tokens: int, source_max_len: int,
                     ids: list | None = None, sampling: str = "greedy", seed: int = 0) -> list[dict]:
    """One answer per (source, reference) pair, as generations.jsonl rows; sampling is seeded.
    The source is encoded as in training: bos + source for a decoder-only model (the answer is
    what follows it), source + eos into an encoder-decoder's encoder (the answer is the output)."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    torch.manual_seed(seed)
    rows = []
    for index, (source, reference) in enumerate(pairs):
        if encoder_decoder:
            source_ids = tokenizer(source, max_length=source_max_len - 1, truncation=True, add_special_tokens=False)
            tokens = torch.tensor([source_ids["input_ids"] + [tokenizer.eos_token_id]], device=device)
        else:
            tokens = tokenizer(tokenizer.bos_token + source, max_length=source_max_len, truncation=True,
                               add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        out = model.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             **SAMPLING[sampling])
        answer = tokenizer.decode(out[0] if encoder_decoder else out[0, tokens.shape[1]:], skip_special_tokens=True)
        rows.append({"id": index if ids is None else ids[index], "prompt": source, "reference": reference,
                     "generation": answer})
    model.train(was_training)
    return rows


def rouge_l(rows: list[dict]) -> float | None:
    """Mean RougeL F-measure of generations against references (None when there are none)."""
    if not rows:
        return None
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(r["reference"], r["generation"])["rougeL"].fmeasure for r in rows]
    return sum(scores) / len(scores)


def _load_prompts(config) -> list[dict] | None:
    """A bad prompts file or an unreachable set fails before any model loads."""
    from qlora_lab.evaluate.prompt_sets import load_prompts

    return load_prompts(config.eval.prompts) if config.eval.prompts else None


@evaluation("generations", order=50, enabled=lambda c: not KINDS[c.model.kind].classifies, metrics=("rougeL",),
            prepare=_load_prompts)
def measure(inputs: EvalInputs) -> dict:
    """Answers to `eval.n_generate` held-out sources (scored by RougeL) and to the prompt sets,
    kept in generations.jsonl for judging."""
    import json

    ec, tc = inputs.config.eval, inputs.config.train
    answer = lambda pairs, ids: generate_answers(inputs.model, inputs.tokenizer, pairs, ec.max_new_tokens,
                                                 tc.source_max_len, ids=ids, sampling=ec.sampling, seed=tc.seed)
    pairs = inputs.eval_pairs[: ec.n_generate]
    heldout = answer(pairs, [f"heldout-{i}" for i in range(len(pairs))])
    prompts, prompted = inputs.prepared or [], []
    if prompts:
        prompted = answer([(ec.prompt_template.format(prompt=r["prompt"]), r.get("reference")) for r in prompts],
                          [r["id"] for r in prompts])
        prompted = [{**row, "prompt": r["prompt"]} for row, r in zip(prompted, prompts)]  # the question as asked
    rows = [{**r, "set": "heldout"} for r in heldout] + [{**r, "set": "prompts"} for r in prompted]
    if rows:
        with open(inputs.run_dir / "generations.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    return {"rougeL": rouge_l(heldout)} if heldout else {}
