"""The run configuration: its typed sections, loading with overrides, and the checks.

In: a YAML file or the embedded default, plus dotted overrides. Out: a validated
:class:`~.sections.RunConfig`, and what ``--print-config`` shows of it (:mod:`.show`).
Imports no other engine module, and below the engine only the schedules' definitions, the
checkpoint reader's documents and, when asked, the zoo (a model's name checked; its layer
groups named for ``--print-config``); every other engine part may import it.
"""
