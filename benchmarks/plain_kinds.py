"""The baseline for the other model kinds: a plain transformers Trainer + peft + bitsandbytes
QLoRA script for a seq2seq (T5) or classifier (RoBERTa) model, nothing of ours.

Reads pre-tokenized examples (written by kinds_throughput.py from the same data a qlora_lab run
uses) and trains with the same settings; prints one JSON line of measurements.

    python plain_kinds.py seq2seq|classifier MODEL_DIR EXAMPLES.json OUT_DIR STEPS COMPUTE
"""

import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, BitsAndBytesConfig, Trainer,
                          TrainingArguments)

TARGETS = {  # every linear layer, as qlora_lab's lora.targets=all names them
    "seq2seq": r"(.*\.)?(q|k|v|o|wi|wi_0|wi_1|wo)",
    "classifier": r"(.*\.)?(attention\.self\.query|attention\.self\.key|attention\.self\.value|attention\.output\.dense"
                  r"|intermediate\.dense|layer\.[^.]+\.output\.dense)",
}


def main(kind: str, model_dir: str, examples_path: str, out_dir: str, max_steps: int, compute: str,
         num_labels: int = 2) -> None:
    examples = json.loads(open(examples_path).read())
    dtype = torch.bfloat16 if compute == "bf16" else torch.float32
    skip = {"llm_int8_skip_modules": ["lm_head", "classifier"]} if kind == "classifier" else {}
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype, **skip)
    torch.manual_seed(0)
    if kind == "seq2seq":
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, quantization_config=quant, dtype=dtype, device_map="cpu")
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, quantization_config=quant, dtype=dtype,
                                                                   device_map="cpu", num_labels=num_labels)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(
        r=64, lora_alpha=16, lora_dropout=0.1, target_modules=TARGETS[kind], bias="none",
        task_type="SEQ_2_SEQ_LM" if kind == "seq2seq" else "SEQ_CLS",
        modules_to_save=["classifier"] if kind == "classifier" else None))
    pad = model.config.pad_token_id

    def collate(batch):
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch])
        mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
        if kind == "seq2seq":
            lw = max(len(e["labels"]) for e in batch)
            labels = torch.tensor([e["labels"] + [-100] * (lw - len(e["labels"])) for e in batch])
        else:
            labels = torch.tensor([e["labels"] for e in batch])
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    args = TrainingArguments(output_dir=out_dir, max_steps=max_steps, per_device_train_batch_size=4,
                             learning_rate=2e-4, lr_scheduler_type="constant_with_warmup", warmup_steps=0.03,
                             max_grad_norm=0.3, optim="paged_adamw_32bit", gradient_checkpointing=True,
                             gradient_checkpointing_kwargs={"use_reentrant": False}, bf16=compute == "bf16",
                             use_cpu=True, save_strategy="no", logging_steps=1, seed=0, data_seed=0, report_to=[],
                             remove_unused_columns=False, include_num_input_tokens_seen="non_padding")
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    tokens = trainer.state.num_input_tokens_seen
    print(json.dumps({"tokens_per_s": tokens / train_s, "train_s": train_s, "tokens": tokens}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
