"""The static scan of a torch pickle before torch's ``weights_only`` unpickler runs it.

:mod:`.scan` follows the instructions symbolically (:func:`~.scan.scan_pickle`); what the
instructions that make or fill objects do is in :mod:`.state`, the values it tracks in
:mod:`.nodes`, one rule per allowed callable in :mod:`.calls`, and whole tensors recognised
in one match by :mod:`.fast`.
"""
