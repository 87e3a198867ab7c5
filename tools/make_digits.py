"""Write scikit-learn's handwritten digits as an ImageFolder: python tools/make_digits.py ROOT [--size 32]."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from src.train.digits import write_digits_imagefolder  # noqa: E402

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('root')
    p.add_argument('--size', type=int, default=32)
    a = p.parse_args()
    print(f'digits ImageFolder in {write_digits_imagefolder(a.root, a.size)}')
