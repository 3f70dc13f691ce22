"""The adapter study's table from records: KL at init and the share won back, the loss gap paired
with plain LoRA of the same data type, and that its runs never enter the data-type tables."""

from __future__ import annotations

from qlora_analysis.collect import collect
from qlora_analysis.tables.adapters import adapters
from qlora_analysis.tables.claims import claims
from qlora_analysis.tables.fidelity import ptq_fidelity
from synthetic_runs import write_run


def test_the_adapters_table_and_its_separation(tmp_path):
    init_kl = {"gaussian": 5.0, "loftq": 2.0, "pissa": 4.99}
    for i, (init, kl) in enumerate(init_kl.items()):
        write_run(tmp_path / "adapters_init" / str(i), {"dtype": "nf4", "dtype.double_quant": False, "lora.init": init,
                                                        "lora.r": 16, "train.max_steps": 0},
                  {"kl_to_base": kl / 1e3, "kl_to_base_ci": [(kl - 0.1) / 1e3, (kl + 0.1) / 1e3]})
    losses = {("gaussian", False): 3.0, ("loftq", False): 2.9, ("gaussian", True): 3.0005}
    for i, ((init, dora), loss) in enumerate(losses.items()):
        for seed in range(3):
            write_run(tmp_path / "adapters" / f"{i}-{seed}", {"dtype": "nf4", "dtype.double_quant": False,
                                                              "lora.init": init, "lora.dora": dora, "lora.r": 16,
                                                              "train.seed": seed},
                      {"eval_loss": loss + 0.01 * seed + 0.0002 * i * seed})
    write_run(tmp_path / "ptq" / "0", {"dtype": "nf4", "dtype.double_quant": False, "train.max_steps": 0},
              {"kl_to_base": 4.0e-3, "kl_to_base_ci": [3.9e-3, 4.1e-3]})
    runs = collect(tmp_path)
    table = adapters(runs, None)
    frame = table.frame
    assert list(frame.index) == [("NF4", "LoRA"), ("NF4", "LoRA+DoRA"), ("NF4", "LoftQ"), ("NF4", "PiSSA")]
    kl = frame["KL at init, r16 (won back)"]
    assert kl[("NF4", "LoRA")] == "5.000"
    assert kl[("NF4", "LoftQ")] == "2.000 (+60%, holds)"
    assert kl[("NF4", "PiSSA")].endswith("below the noise floor)")
    assert kl[("NF4", "LoRA+DoRA")] == "5.000"  # DoRA starts as plain LoRA
    gap = frame["vs LoRA (loss gap, paired)"]
    assert gap[("NF4", "LoftQ")].startswith("+0.099") and gap[("NF4", "LoftQ")].endswith("(holds)")
    assert gap[("NF4", "LoRA+DoRA")].endswith("(below the noise floor)")
    # the data-type tables read the plain study only: the adapter sweeps' NF4 rows never stand in
    assert list(ptq_fidelity(runs)["kl_to_base"]) == [4.0e-3]
    assert claims(runs, None) is None or "LoftQ" not in claims(runs, None).frame.to_string()
    assert "NF4 · all · r16 · LoftQ" in set(runs["config"])


def test_an_adapter_init_sweep_stays_out_of_the_ptq_perplexity_table(tmp_path):
    from qlora_analysis.tables.ptq_perplexity import ptq_perplexity

    write_run(tmp_path / "ptq" / "0", {"dtype": "nf4", "lora.r": 8, "train.max_steps": 0}, {"ppl": 30.0})
    for i, init in enumerate(("gaussian", "loftq")):  # (r 64: the gaussian run is not the PTQ run's duplicate)
        write_run(tmp_path / "init" / str(i), {"dtype": "nf4", "lora.init": init, "train.max_steps": 0}, {"ppl": 50.0})
    table = ptq_perplexity(collect(tmp_path), None)
    assert table.numbers["mean"].tolist() == [30.0] and table.numbers["runs"].tolist() == [1]
