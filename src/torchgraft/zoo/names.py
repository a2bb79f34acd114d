"""Checking a model spec's name without building the model (config validation)."""

from __future__ import annotations

from ..errors import SpecError

__all__ = ["check_spec_name"]


def check_spec_name(spec: str) -> str | None:
    """What is wrong with ``spec``'s name (with close matches), or None when the zoo knows it.

    Nothing is built: the spec's library (torchvision or timm, and only that one) is asked
    for its registry, and a ``package.module:callable`` is imported and looked up (importing
    runs the package's own code, as building it would).
    """
    from . import LOCAL, adapter, parse_spec
    from ._base import did_you_mean

    try:
        library, name = parse_spec(spec)
        if library == "torchvision":
            torchvision_zoo = adapter(library)
            if name not in torchvision_zoo.names():
                hint = did_you_mean(name, torchvision_zoo.names(), f"{torchvision_zoo.PREFIX}:")
                return f"no torchvision model '{name}'{hint}"
        if library == "timm":
            timm_zoo = adapter(library)
            arch = name.partition(".")[0]
            if not timm_zoo.is_model(arch):
                return f"no timm model '{arch}'" + did_you_mean(
                    arch, timm_zoo.names(), f"{timm_zoo.PREFIX}:"
                )
        if library == LOCAL:
            from . import local as local_zoo

            local_zoo.resolve_builder(name)
    except SpecError as exc:
        return str(exc)
    return None
