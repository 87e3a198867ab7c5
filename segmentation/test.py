"""Evaluate a segmentation checkpoint: `python segmentation/test.py CONFIG CHECKPOINT [--data-root DIR] [--cfg-options k=v ...]
[--launcher pytorch]`; prints mIoU. Checkpoints saved by mmseg 0.x load too."""
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository root, not this folder

from src.mmrun import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main('segmentation', 'test'))
