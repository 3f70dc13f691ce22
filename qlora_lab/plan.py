"""`python -m qlora_lab.plan` (`qlora-plan`): the entry; the planner is `qlora_lab.sweep.plan`."""

from qlora_lab.sweep.plan import main

if __name__ == "__main__":
    main()
