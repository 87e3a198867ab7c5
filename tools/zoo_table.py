"""Print the README's model zoo table (Markdown) from src/zoo.py, the single source of truth.

    python tools/zoo_table.py            # paste between <!-- zoo:start --> and <!-- zoo:end --> in README.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src import zoo  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
                            ).parse_args(argv)
    print(zoo.markdown_table())
    return 0


if __name__ == '__main__':
    exit_process(main())
