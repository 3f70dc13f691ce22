"""Measures of a trained (or only quantized) model: one module per evaluation."""
