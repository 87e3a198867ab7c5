"""Markdown rendering for the tools' tables (README model zoo, complexity report)."""
from __future__ import annotations

from typing import Sequence

__all__ = ['table']


def table(headers: Sequence[str], rows: Sequence[Sequence], align: str = '') -> str:
    """A GitHub Markdown table. ``align`` has one letter per column, ``l``/``r``/``c`` (default ``l``
    for the first column, ``r`` for the others). Cells are ``str()``-ed; ``|`` in them is escaped."""
    align = align or 'l' + 'r' * (len(headers) - 1)
    if len(align) != len(headers) or any(len(r) != len(headers) for r in rows):
        raise ValueError('every row and the alignment need one entry per header')
    rule = {'l': ':---', 'r': '---:', 'c': ':---:'}
    lines = ['| ' + ' | '.join(str(h) for h in headers) + ' |',
             '|' + '|'.join(rule[a] for a in align) + '|']
    lines += ['| ' + ' | '.join(str(c).replace('|', '\\|') for c in r) + ' |' for r in rows]
    return '\n'.join(lines)
