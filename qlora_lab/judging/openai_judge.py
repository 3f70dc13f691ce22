"""Any OpenAI-compatible chat-completions endpoint as the judge, through the `openai` client.

Timeouts and HTTP errors are retried up to a bound, then written as such (winner null, with
the reason). An answer with no verdict, or an ambiguous one, is written as null at once: asked
again at temperature 0 the judge would answer the same. The API key is read from the environment and never
written into a judgment, a log line or an error message.
"""

from __future__ import annotations

import time

from qlora_lab.judging.runs import PairTask
from qlora_lab.judging.verdicts import Judgment, Unparseable, judge_messages, parse_verdict


def openai_judge(base_url: str, model: str, api_key: str, mode: str = "threeclass", retries: int = 2,
                 timeout_s: float = 60.0, backoff_s: float = 0.5, prompt: str = "vicuna"):
    """A judge function for one endpoint; the client never retries on its own (we count)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
    name = f"openai:{model}"

    def judge(task: PairTask) -> Judgment:
        reason = None
        for attempt in range(retries + 1):
            try:
                reply = client.chat.completions.create(model=model, messages=judge_messages(task, mode, prompt),
                                                       temperature=0)
            except Exception as err:  # timeouts, HTTP status errors, connection errors
                reason = _error_reason(err, api_key)
            else:
                try:
                    winner, score_a, score_b = parse_verdict(reply.choices[0].message.content or "", mode)
                except Unparseable as err:
                    return Judgment(task.prompt_id, task.model_a, task.model_b, None, name,
                                    reason=f"unparseable verdict: {err}")
                return Judgment(task.prompt_id, task.model_a, task.model_b, winner, name, score_a, score_b)
            if attempt < retries:
                time.sleep(backoff_s * (2**attempt))
        return Judgment(task.prompt_id, task.model_a, task.model_b, None, name,
                        reason=f"{reason} (after {retries + 1} tries)")

    return judge


def _error_reason(err: Exception, api_key: str) -> str:
    """One line about a failed request, with the key scrubbed should a library echo it."""
    status = getattr(err, "status_code", None)
    text = f"{type(err).__name__}" + (f" (HTTP {status})" if status else "") + f": {str(err).splitlines()[0][:160]}"
    return text.replace(api_key, "***") if api_key else text
