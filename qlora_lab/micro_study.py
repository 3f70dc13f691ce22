"""`python -m qlora_lab.micro_study` (`make micro-study`): the entry; the driver is
`qlora_lab.sweep.micro_study`."""

from qlora_lab.sweep.micro_study import main

if __name__ == "__main__":
    main()
