"""wait_for_jobs: a job the scheduler forgot (cancelled while pending: no queue entry, no
accounting line) is lost after `lost_after_s`, whether submitit reports it UNKNOWN (never seen) or
still PENDING (the last state its watcher read); a queued one is waited for. The jobs here are
stand-ins for submitit's (state, done, job_id): the real cluster case is in tests/integration."""

from __future__ import annotations

from dataclasses import dataclass

from qlora_lab.launch.submitit_launchers import LostJobError, wait_for_jobs


@dataclass
class Job:
    job_id: str
    state: str
    polls_to_done: int | None = None  # done after this many polls; None: never

    def done(self) -> bool:
        if self.polls_to_done is None:
            return False
        self.polls_to_done -= 1
        return self.polls_to_done < 0


def test_forgotten_jobs_are_lost_in_either_state_and_queued_ones_waited_for():
    jobs = {0: Job("1_0", "UNKNOWN"), 1: Job("1_1", "PENDING"), 2: Job("1_2", "PENDING", polls_to_done=5),
            3: Job("1_3", "RUNNING", polls_to_done=3)}
    asked = []

    def queued(job_id: str) -> bool:
        asked.append(job_id)
        return job_id == "1_2"  # the one really waiting in the queue

    lost = wait_for_jobs(jobs, queued, poll_s=0.01, lost_after_s=0.0)
    assert sorted(lost) == [0, 1] and all(isinstance(e, LostJobError) for e in lost.values())
    assert "left the queue without a result" in str(lost[1])
    assert "1_3" not in asked  # a running job is never looked up
