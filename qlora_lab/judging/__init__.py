"""Pairwise judging of the runs of a sweep: pairs, judges, judgments, relative scores."""
