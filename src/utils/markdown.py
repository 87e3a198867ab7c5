"""Markdown for the tools: tables (README model zoo, complexity report) and generated blocks in pages."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from .atomic import atomic_write

__all__ = ['table', 'replace_block']


def table(headers: Sequence[str], rows: Sequence[Sequence], align: str = '') -> str:
    """A GitHub Markdown table. ``align`` has one letter per column, ``l``/``r``/``c``, or ``-`` for a
    plain ``---`` rule (left, as ``l`` renders) (default ``l`` for the first column, ``r`` for the others).
    Cells are ``str()``-ed; ``|`` in them is escaped."""
    align = align or 'l' + 'r' * (len(headers) - 1)
    if len(align) != len(headers) or any(len(r) != len(headers) for r in rows):
        raise ValueError('every row and the alignment need one entry per header')
    rule = {'l': ':---', 'r': '---:', 'c': ':---:', '-': '---'}
    lines = ['| ' + ' | '.join(str(h) for h in headers) + ' |',
             '|' + '|'.join(rule[a] for a in align) + '|']
    lines += ['| ' + ' | '.join(str(c).replace('|', '\\|') for c in r) + ' |' for r in rows]
    return '\n'.join(lines)


def replace_block(page: Union[str, Path], start: str, end: str, block: str) -> bool:
    """Replace the text between the markers ``start`` and ``end`` of the Markdown file ``page`` with
    ``block`` (crash-safe); False, and nothing written, if the page lacks either marker."""
    text = Path(page).read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with atomic_write(page, 'w') as f:
        f.write(f'{head}{start}\n{block.strip()}\n{end}{tail}')
    return True
