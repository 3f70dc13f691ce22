"""How runs are launched: Hydra launcher plugins of ours (SLURM with per-job resources, the
local pool) and their registration. The run knows nothing of them: a launcher hands it a
config and a folder."""
