"""Datasets as (source, target) pairs: where rows come from, how a row becomes a pair, tokens."""
