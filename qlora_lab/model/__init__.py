"""The base model: build or load it, quantize its linear layers, attach LoRA adapters.

Kept import-free so that config validation (which reads the registries here) never pays for
torch or transformers.
"""
