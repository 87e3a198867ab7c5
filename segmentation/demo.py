"""Pictures of a segmentation model's predictions, drawn by mmseg's MMSegInferencer; see `--help`.

    python segmentation/demo.py CONFIG CHECKPOINT IMAGE... [--out DIR]
"""
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository root, not this folder

from src.mm.demo import main  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402

if __name__ == '__main__':
    exit_process(main('segmentation'))
