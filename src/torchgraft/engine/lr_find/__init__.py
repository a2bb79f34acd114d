"""The learning-rate range test: its arithmetic, the sweep, the run that drives it, its files.

In: a run configuration (or any model and optimizer). Out: ``lr_find.csv``/``.json``/``.png``
and a suggested LR. Built on the engine's session; nothing in the engine imports it back.
"""
