"""Attention projections fused in one model and separate in the other.

timm's ViTs and torchvision's ``nn.MultiheadAttention`` hold the query, key and value
projections of an attention layer as one matrix (``qkv.weight``, ``in_proj_weight``: the
three stacked along the output dimension, query first); Hugging Face transformers, EVA without
``qkv_fused`` and many original repositories hold three (``query``/``key``/``value``,
``q_proj``/``k_proj``/``v_proj``, ``q``/``k``/``v``). A graft between the two forms needs
values transformed, not only renamed.

Before matching, :func:`regrouped` gives the source the target's form — derived tensors
named as a model of that form names them, placed where the first of their originals was in
the source's order:

* fused for a fused target: ``<layer>.qkv.weight`` (or ``in_proj_weight``) = the three
  concatenated, query first (biases likewise, when all three have one);
* split for a separate target: ``<layer>.query.weight`` … (the target's own leaf names), the
  rows of each projection.

Matching, exactness and verification then treat them as any source tensor; the plan says
which tensors were derived and from what (:attr:`SourceWeights.derived`). Only complete
triples of equal shapes are regrouped, and only into the form the target uses.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import torch

from ..source import SourceWeights

__all__ = ["TRIPLES", "derived_order", "describe_derived", "regrouped"]

#: Leaf names of separate query, key and value projections.
TRIPLES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q", "k", "v"))
#: Fused forms: (weight leaf, bias leaf).
FUSED = (("qkv.weight", "qkv.bias"), ("in_proj_weight", "in_proj_bias"))

Table = Mapping[str, tuple[int, ...]]


def regrouped(weights: SourceWeights, target: Table) -> SourceWeights:
    """``weights`` with attention projections fused or split to the ``target`` table's form;
    the same object when there is nothing to regroup."""
    tensors = weights.checkpoint.tensors
    fused, separate = _fused_form(target), _separate_form(target)
    changes: dict[str, dict[str, torch.Tensor]] = {}  # first original -> derived tensors
    derived: dict[str, tuple[str, ...]] = {}  # derived key -> originals
    if fused is not None and _fused_form(tensors) is None:
        for parent, names in _separate_layers(tensors):
            for leaf, fused_leaf in zip(("weight", "bias"), fused, strict=True):
                originals = tuple(f"{parent}.{n}.{leaf}" for n in names)
                parts = [tensors.get(k) for k in originals]
                if any(p is None for p in parts) or len({tuple(p.shape) for p in parts}) != 1:
                    continue
                key = f"{parent}.{fused_leaf}"
                changes.setdefault(originals[0], {})[key] = torch.cat(parts, dim=0)
                derived[key] = originals
    elif separate is not None and _separate_form(tensors) is None:
        for original in tensors:
            split = _split(original, tensors[original], separate)
            if split:
                changes[original] = split
                derived.update(dict.fromkeys(split, (original,)))
    if not changes:
        return weights
    consumed = {k for originals in derived.values() for k in originals}

    def replaced(keys):
        for key in keys:
            yield from changes.get(key, {})
            if key not in consumed:
                yield key

    made = {k: v for parts in changes.values() for k, v in parts.items()}
    checkpoint = dataclasses.replace(
        weights.checkpoint,
        tensors={k: made[k] if k in made else tensors[k] for k in replaced(tensors)},
    )
    return dataclasses.replace(
        weights,
        checkpoint=checkpoint,
        order=tuple(replaced(weights.order)) if weights.order is not None else None,
        derived={**weights.derived, **derived},
        stored_order_trusted=weights.order_trusted,
    )


def derived_order(order: Sequence[str], derived: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """A registration ``order`` of stored keys (a source model's) read in derived keys: each
    derived tensor where the first of its originals was, the originals left out."""
    placed: dict[str, list[str]] = {}
    for key, originals in derived.items():
        placed.setdefault(originals[0], []).append(key)
    consumed = {k for originals in derived.values() for k in originals}
    result: list[str] = []
    for key in order:
        result.extend(placed.get(key, ()))
        if key not in consumed:
            result.append(key)
    return tuple(result)


def describe_derived(originals: tuple[str, ...]) -> str:
    """The plan's words for a derived source tensor."""
    if len(originals) == 1:
        return f"rows of {originals[0]} (split: query, key, value)"
    stem = originals[0].rpartition(".")[0].rpartition(".")[0]
    leaves = ", ".join(k.rpartition(".")[0].rpartition(".")[2] for k in originals)
    return f"{stem}.{{{leaves}}} concatenated (fused)"


def _fused_form(table: Mapping) -> tuple[str, str] | None:
    """The fused (weight, bias) leaves ``table`` uses, if any."""
    for weight, bias in FUSED:
        if any(k == weight or k.endswith(f".{weight}") for k in table):
            return weight, bias
    return None


def _separate_form(table: Mapping) -> tuple[str, str, str] | None:
    """The separate leaf names ``table`` uses, if it has a complete triple."""
    for names in TRIPLES:
        if any(True for _ in _layers_named(table, names)):
            return names
    return None


def _layers_named(table: Mapping, names: tuple[str, str, str]):
    pattern = re.compile(rf"^(.*)\.{re.escape(names[0])}\.weight$")
    for key in table:
        match = pattern.match(key)
        if match and all(f"{match.group(1)}.{n}.weight" in table for n in names[1:]):
            yield match.group(1)


def _separate_layers(tensors: Mapping[str, torch.Tensor]):
    for names in TRIPLES:
        for parent in _layers_named(tensors, names):
            yield parent, names


def _split(key: str, value: torch.Tensor, names: tuple[str, str, str]) -> dict[str, torch.Tensor]:
    """The three row blocks of a fused weight or bias, named with the target's ``names``."""
    for weight, bias in FUSED:
        for fused_leaf, leaf in ((weight, "weight"), (bias, "bias")):
            if key != fused_leaf and not key.endswith(f".{fused_leaf}"):
                continue
            if value.dim() != (2 if leaf == "weight" else 1) or value.shape[0] % 3:
                return {}
            parent = key[: -len(fused_leaf)].rstrip(".")
            prefix = f"{parent}." if parent else ""
            parts = value.chunk(3, dim=0)
            return {f"{prefix}{n}.{leaf}": part for n, part in zip(names, parts, strict=True)}
    return {}
