"""Evaluate a detection checkpoint and print its COCO bbox (and segm) AP; see `--help`.

    python detection/test.py CONFIG CHECKPOINT [--data-root DIR] [--cfg-options KEY=VALUE ...] [--launcher pytorch]

Checkpoints saved by mmdet 2.x (the release's) are converted on load.
"""
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository root, not this folder

from src.mm.run import main  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402

if __name__ == '__main__':
    exit_process(main('detection', 'test'))
