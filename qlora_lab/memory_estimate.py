"""A run's peak accelerator memory, estimated from its config before anything launches.

The QLoRA paper's breakdown (its Figure 6): the 4-bit base weights with their block constants,
the LoRA parameters with their gradients and optimizer state, and the activations and input
gradients, which scale with the tokens of a batch and shrink with gradient checkpointing. The
shapes come from the model config's `arch` (layers, widths, vocabulary) of a Llama-family
decoder; the batch is taken at its longest (source + target lengths), as the planner must
budget for the worst batch.

Plain arithmetic on the config: no torch, no model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from qlora_lab.config import RunConfig
from qlora_lab.catalog import DTYPES, LINEAR_SHAPES, SCALE_FORMATS, target_names

BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
OPTIMIZER_BYTES = {  # per trainable parameter
    "paged_adamw_32bit": 8, "adamw_torch": 8, "adamw_torch_fused": 8,
    "paged_adamw_8bit": 2, "adamw_bnb_8bit": 2, "sgd": 0,
}
MB = 2**20


@dataclass
class MemoryEstimate:
    """Megabytes of each part of a run's peak, and their sum."""

    base_weights_mb: float  # linear layers as stored (4-bit codes + block constants, or 16/32-bit)
    unquantized_mb: float  # embeddings, output head, norms: kept in the compute dtype
    lora_mb: float  # adapter parameters (float32)
    gradients_mb: float  # adapter gradients (float32); every weight's with lora.enabled=false
    optimizer_mb: float  # optimizer state of the adapters
    activations_mb: float  # saved activations and input gradients of the largest batch
    total_mb: float

    def to_dict(self) -> dict:
        return {key: round(value, 1) for key, value in asdict(self).items()}


def linear_shapes(arch, family: str) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of one decoder block, by module name (the family's
    own, from qlora_lab.model.targets.LINEAR_SHAPES)."""
    sizes = {"h": arch.hidden_size, "f": arch.intermediate_size, "3h": 3 * arch.hidden_size}
    if family not in LINEAR_SHAPES:
        raise ValueError(f"memory estimate: model.family={family}: only decoder-only "
                         f"({', '.join(LINEAR_SHAPES)}) shapes are known")
    return {name: (sizes[n_in], sizes[n_out]) for name, (n_in, n_out) in LINEAR_SHAPES[family].items()}


def stored_bytes_per_weight(dtype) -> float:
    """Bytes per linear weight as the data type stores it, constants included."""
    spec = DTYPES.get(dtype.name)
    bits = spec.bits if spec is not None and spec.bits else 4
    if dtype.name in ("bf16", "fp32"):
        return bits / 8
    if dtype.name == "int8":
        return 1.0  # plus one float32 scale per row, counted by the caller
    scale = SCALE_FORMATS[dtype.storage_scale]
    per_block = scale.bits_per_param(0, dtype.blocksize)
    constants = 2 if dtype.name.endswith("_affine") else 1  # an affine type stores a zero point beside the scale
    return (bits + constants * per_block) / 8


def layer_activation_elements(arch, targets: list[str], family: str = "llama") -> int:
    """Elements one decoder layer saves for backward, per token: its norms' inputs and
    outputs, q/k/v after rotary, the attention output and o_proj's input, the MLP's gate, up,
    activation and down_proj input, and each adapter's dropout output and rank-r input."""
    h, f = arch.hidden_size, arch.intermediate_size
    shapes = linear_shapes(arch, family)
    mlp = 3 * f + f if family == "llama" else 2 * f  # gated (gate, up, act, down input) or plain (fc1 out, act)
    elements = 2 * h + 2 * h + 3 * h + h + h + mlp
    return elements + sum(shapes[name][0] for name in targets)


def activation_bytes_per_token(arch, targets: list[str], checkpointing: bool, cb: int,
                               family: str = "llama") -> float:
    """The peak is the larger of two moments. At the loss: every saved activation (with
    checkpointing only each layer's input) and the head's logits, their float32 copy for the
    loss and its log-softmax. In backward through the last layer: the layer inputs, that
    layer's recomputed activations and the input gradients (checkpointing only; without it the
    first moment is the larger)."""
    h, layer = arch.hidden_size, layer_activation_elements(arch, targets, family)
    head = arch.vocab_size * (cb + (4 if cb != 4 else 0) + 4)
    kept = arch.num_layers * (h if checkpointing else layer) * cb
    at_loss = kept + head
    if not checkpointing:
        return at_loss
    in_backward = kept + layer * cb + 2 * h * cb
    return max(at_loss, in_backward)


def estimate_memory(config: RunConfig, compute: str) -> MemoryEstimate:
    """The estimate for one run; `compute` is the resolved compute dtype (bf16, fp16, fp32)."""
    model, dtype, lora, train = config.model, config.dtype, config.lora, config.train
    arch = model.arch
    if arch is None:
        raise ValueError(f"memory estimate: model={model.name} has no `arch` shape in its config")
    shapes = linear_shapes(arch, model.family)
    cb = BYTES[compute]
    layers = arch.num_layers

    weights = sum(i * o for i, o in shapes.values()) * layers
    base = weights * stored_bytes_per_weight(dtype)
    if dtype.name == "int8":
        base += sum(o for _, o in shapes.values()) * layers * 4
    unquantized = (2 * arch.vocab_size * arch.hidden_size + (2 * layers + 1) * arch.hidden_size) * cb

    tokens = train.batch_size * (train.source_max_len + train.target_max_len)
    if train.max_steps == 0:  # eval-only: weights, one layer's activations and the head's logits
        head = arch.vocab_size * (cb + 4 + 4)
        activations = tokens * (layer_activation_elements(arch, [], model.family) * cb + head)
        parts = [base / MB, unquantized / MB, 0.0, 0.0, 0.0, activations / MB]
        return MemoryEstimate(*parts, total_mb=sum(parts))
    shapes_present = set(shapes)
    targets = [name for name in target_names(model.family, lora.targets) if name in shapes_present]
    if lora.enabled:
        lora_params = sum(lora.r * (shapes[name][0] + shapes[name][1]) for name in targets) * layers
        trained, gradient_bytes = lora_params, lora_params * 4  # adapters in float32
    else:  # full fine-tuning: every weight has a gradient and optimizer state, in the weights' dtype
        lora_params, targets = 0, []
        trained = weights + unquantized / cb
        gradient_bytes = trained * cb
    optimizer = OPTIMIZER_BYTES.get(train.optimizer, 8) * trained
    activations = tokens * activation_bytes_per_token(arch, targets, train.gradient_checkpointing, cb, model.family)

    parts = [base / MB, unquantized / MB, lora_params * 4 / MB, gradient_bytes / MB, optimizer / MB,
             activations / MB]
    return MemoryEstimate(*parts, total_mb=sum(parts))
