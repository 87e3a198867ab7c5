"""Evaluate a segmentation checkpoint and print its mIoU; see `--help`.

    python segmentation/test.py CONFIG CHECKPOINT [--data-root DIR] [--cfg-options KEY=VALUE ...] [--launcher pytorch]

Checkpoints saved by mmseg 0.x (the release's) are converted on load.
"""
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository root, not this folder

from src.mm.run import main  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402

if __name__ == '__main__':
    exit_process(main('segmentation', 'test'))
