"""torch's intra-op thread count for the length of a ``with`` block."""
import contextlib
from typing import Iterator, Optional

import torch

__all__ = ['torch_threads']


@contextlib.contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """Inside the block torch uses ``threads`` intra-op threads (None or 0: as set); after it, the count it had
    before, also on an exception."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
