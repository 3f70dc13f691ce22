"""Everything about sweeps before and after their runs: the config folder, sweep files, the
grid and its composition, the pre-launch check, the plan, the end-of-launch summary and the
micro-study driver. Nothing here runs a model; the run (`qlora_lab.run`) imports nothing from
here."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # Hydra's config root
