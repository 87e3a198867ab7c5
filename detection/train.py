"""Train a ConvMLP detection model from a config (mmengine Runner); see `--help`.

    python detection/train.py CONFIG [--work-dir DIR] [--data-root DIR] [--resume [CKPT]] [--amp]
        [--cfg-options KEY=VALUE ...] [--launcher pytorch]

Several processes or nodes: `dist_detection.sh`.
"""
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository root, not this folder

from src.mm.run import main  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402

if __name__ == '__main__':
    exit_process(main('detection', 'train'))
