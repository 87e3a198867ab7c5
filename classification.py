#!/usr/bin/env python
"""Train or evaluate an image classifier (ConvMLP or any timm model); see ``--help`` and src/train/."""
import sys

from src.train.run import main

if __name__ == '__main__':
    sys.exit(main())
