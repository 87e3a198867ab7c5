#!/usr/bin/env python
"""Train or evaluate an image classifier (ConvMLP or any timm model); see ``--help`` and src/train/."""

from src.train.run import main
from src.utils.shutdown import exit_process

if __name__ == '__main__':
    exit_process(main())
