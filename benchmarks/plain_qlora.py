"""The baseline: a plain transformers Trainer + peft + bitsandbytes QLoRA script, nothing of ours.

Reads pre-tokenized examples (written by train_throughput.py from the same data a qlora_lab
run uses) and trains with the same settings; prints one JSON line of measurements.
"""

import json
import sys
import time

import psutil
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainerCallback, TrainingArguments


def main(model_dir: str, examples_path: str, out_dir: str, max_steps: int, compute: str) -> None:
    """`compute`: bf16 or fp32, the compute dtype the qlora_lab run used on this machine."""
    examples = json.loads(open(examples_path).read())
    dtype = torch.bfloat16 if compute == "bf16" else torch.float32
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=dtype,
                                                 device_map="cuda" if torch.cuda.is_available() else "cpu")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=64, lora_alpha=16, lora_dropout=0.1, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    pad = model.config.pad_token_id

    def collate(batch):
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch])
        labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch])
        mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    first_step = []

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if not first_step:
                first_step.append(time.time() - psutil.Process().create_time())

    args = TrainingArguments(output_dir=out_dir, max_steps=max_steps, per_device_train_batch_size=4,
                             learning_rate=2e-4, lr_scheduler_type="constant_with_warmup", warmup_steps=0.03,
                             max_grad_norm=0.3, optim="paged_adamw_32bit", gradient_checkpointing=True,
                             gradient_checkpointing_kwargs={"use_reentrant": False}, bf16=compute == "bf16",
                             use_cpu=not torch.cuda.is_available(),
                             save_strategy="no", logging_steps=1, seed=0, data_seed=0, report_to=[],
                             remove_unused_columns=False, include_num_input_tokens_seen="non_padding")
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate,
                      callbacks=[FirstStep()])
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    tokens = trainer.state.num_input_tokens_seen
    print(json.dumps({"tokens_per_s": tokens / train_s, "train_s": train_s, "tokens": tokens,
                      "process_to_first_step_s": first_step[0], "peak_rss_mb": peak_kb / 1024}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
