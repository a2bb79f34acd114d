"""HTML building blocks for ``report.html``: escaping by default, tables, images, the page.

Every string that comes from a run's files (class names, tensor keys, paths, group names) is
data. The helpers here escape whatever they are given unless it is :class:`Html` — markup
another helper built — so forgetting to escape takes an explicit ``Html(...)``, never an
omission. Escaping is :func:`torchgraft.text.printable` (control characters and direction
overrides written as escapes) followed by :func:`html.escape` (``<``, ``>``, ``&`` and quotes).

The page is self-contained: one inline stylesheet, images as ``data:`` URIs, no script, no
font or stylesheet fetched from anywhere; ``<details>`` folds long tables without JavaScript.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ...text import printable

__all__ = [
    "Html",
    "Section",
    "definitions",
    "details",
    "esc",
    "items",
    "join",
    "note",
    "page",
    "png",
    "table",
]


class Html(str):
    """Markup built by these helpers: inserted as it is (everything else is escaped)."""


def esc(value: object) -> Html:
    """``value`` as text that cannot become markup (``Html`` passes through unchanged)."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(printable(value), quote=True))


def join(parts: Iterable[object], separator: str = "") -> Html:
    """Parts (each escaped unless ``Html``) joined by ``separator`` (itself escaped)."""
    return Html(esc(separator).join(esc(part) for part in parts))


def note(text: object, kind: str = "note") -> Html:
    """A paragraph set apart: ``kind`` is ``note`` (grey) or ``warn`` (amber)."""
    return Html(f'<p class="{kind}">{esc(text)}</p>')


def items(values: Iterable[object]) -> Html:
    """A bulleted list."""
    return Html("<ul>" + "".join(f"<li>{esc(v)}</li>" for v in values) + "</ul>")


def definitions(rows: Iterable[tuple[object, object]]) -> Html:
    """A two-column table of ``(name, value)`` rows (the run at a glance)."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return Html(f'<table class="facts"><tbody>{body}</tbody></table>')


def table(
    headers: Sequence[object],
    rows: Sequence[Sequence[object]],
    *,
    limit: int | None = None,
    more: str = "rows",
    numeric: Iterable[int] = (),
) -> Html:
    """A table; past ``limit`` rows the rest are counted in a last line, not shown.

    Args:
        headers: column titles.
        rows: cells (escaped unless ``Html``).
        limit: most rows shown (None: all).
        more: what the rows are, for the "… N more" line.
        numeric: column indexes aligned right.
    """
    right = set(numeric)

    def cell(tag: str, index: int, value: object) -> str:
        align = ' class="num"' if index in right else ""
        return f"<{tag}{align}>{esc(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    shown = rows if limit is None else rows[:limit]
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in shown
    )
    left = len(rows) - len(shown)
    if left:
        body += (
            f'<tr><td class="more" colspan="{len(headers)}">'
            f"{esc(f'… {left:,} more {more} not shown')}</td></tr>"
        )
    return Html(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def details(summary: object, body: object, *, open_: bool = False) -> Html:
    """A fold: ``summary`` always visible, ``body`` shown on click (no script needed)."""
    state = " open" if open_ else ""
    return Html(f"<details{state}><summary>{esc(summary)}</summary>{esc(body)}</details>")


def png(data: bytes, alt: object, *, css_class: str = "figure") -> Html:
    """An ``<img>`` holding ``data`` (PNG bytes) as a ``data:`` URI."""
    encoded = base64.b64encode(data).decode("ascii")
    return Html(f'<img class="{css_class}" alt="{esc(alt)}" src="data:image/png;base64,{encoded}">')


@dataclass
class Section:
    """One ``<section id=...>`` of the page: ``key`` is its id (stable: tests and links use it)."""

    key: str
    title: str
    body: Html


def page(title: object, subtitle: object, sections: Sequence[Section]) -> str:
    """The whole document: head with the stylesheet, a table of contents, the sections."""
    contents = "".join(f'<li><a href="#{s.key}">{esc(s.title)}</a></li>' for s in sections)
    parts = "".join(
        f'<section id="{s.key}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p>"
        f'<nav><ul class="toc">{contents}</ul></nav></header>'
        f"<main>{parts}</main></body></html>\n"
    )


# System fonts and plain colours only: nothing to fetch, readable printed or on a phone.
_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;
margin:0;background:#f6f7f9}
header{background:#1f3b57;color:#fff;padding:16px 24px}
header h1{margin:0 0 4px;font-size:20px;word-break:break-all}
header p{margin:0 0 8px;opacity:.85}
.toc{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:4px 16px}
.toc a{color:#cfe3ff}
main{padding:8px 24px 32px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:16px 0;
padding:4px 16px 12px}
h2{font-size:17px;border-bottom:1px solid #e4e7eb;padding-bottom:4px}
h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #e1e4e8;padding:3px 8px;text-align:left;vertical-align:top;
word-break:break-word}
thead th{background:#f0f2f5}
table.facts th{background:#f7f8fa;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.more{color:#6a737d;font-style:italic}
img.figure{max-width:100%;height:auto;border:1px solid #eee;margin:6px 0}
.note{color:#57606a}
.warn{color:#8a4b00;background:#fff6e5;padding:4px 8px;border-radius:4px}
details{margin:4px 0}
summary{cursor:pointer}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
figure{margin:0;border:1px solid #e1e4e8;border-radius:4px;padding:6px;font-size:12px}
figure img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;
display:block;margin:0 auto 4px;background:#000}
figcaption{word-break:break-word}
.bad{color:#b31d28;font-weight:600}
.good{color:#22863a;font-weight:600}
.flag{color:#8a4b00;font-weight:600}
code{font-size:12px}
"""
