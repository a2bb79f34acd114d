"""Datasets, image decoding and transforms built from a model's preprocessing."""
