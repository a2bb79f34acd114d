"""The run configuration: its typed sections, loading with overrides, and the checks.

In: a YAML file or the embedded default, plus dotted overrides. Out: a validated
:class:`~.sections.RunConfig`. Imports nothing below the engine but :mod:`torchgraft.model`
and the checkpoint reader's documents; every other engine part may import it.
"""
