"""The files the package ships for the installed timm and torchvision: every architecture's
state_dict table (:mod:`.shipped_tables`), then the verdicts on builders that share a table
(:mod:`.equal_verdicts`). A maintainer's step for a new library version:
``python -m torchgraft.zoo.ship`` (minutes: every architecture is built, and every group of
equal tables run once).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from . import equal_verdicts, shipped_tables
from .arch_index import arch_rows
from .catalogue import LIBRARIES, all_names, library_version
from .shipped_tables import ShippedTables, public_version

__all__ = ["build_tables", "main"]


def build_tables(
    library: str, on_progress: Callable[[int, int], None] | None = None
) -> ShippedTables:
    """Every architecture of the installed ``library`` built on ``meta`` (minutes for timm)."""
    names = all_names(library)
    shipped = ShippedTables(library, public_version(library_version(library)))
    for done, name in enumerate(names, 1):
        rows, failed = arch_rows(library, name)
        shipped.rows.extend(rows)
        shipped.failed.update(failed)
        if on_progress is not None:
            on_progress(done, len(names))
    return shipped


def main() -> None:
    """Write the tables, then the verdicts, into the package's ``zoo/tables/``."""
    for library in LIBRARIES:
        shipped = build_tables(library)
        path = shipped_tables.write(shipped)
        print(
            f"{path}: {len(shipped.rows)} tables, {len(shipped.failed)} failed, "
            f"{path.stat().st_size / 1024:.0f} KiB",
            flush=True,
        )
    groups = equal_verdicts.compute(lambda line: print(line, flush=True))
    path = equal_verdicts.verdicts_path()
    document = {"format": equal_verdicts.FORMAT, "groups": groups}
    path.write_text(json.dumps(document, indent=1) + "\n")
    print(f"{path}: {len(groups)} groups")


if __name__ == "__main__":
    main()
