"""Evaluate a detection checkpoint: `python detection/test.py CONFIG CHECKPOINT [--data-root DIR] [--cfg-options k=v ...]
[--launcher pytorch]`; prints COCO bbox (and segm) AP. Checkpoints saved by mmdet 2.x load too."""
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository root, not this folder

from src.mmrun import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main('detection', 'test'))
