"""What a run shows people: the end-of-run summary, the plots, and ``report.html``.

In: a run directory's files (read as untrusted data) or a finished run's records. Out:
printed lines, PNG plots, one self-contained HTML page. Imported by the run (:mod:`..fit`),
the LR finder and the CLI; it imports no other engine sub-part.
"""
