"""Dataset records and readers.

The readers only list files and check them; turning files into tensors is the
job of :mod:`tabad.datasets.transforms` and :mod:`tabad.datasets.torch_data`.
"""

from tabad.datasets.sample import CategoryData, Sample

__all__ = ["CategoryData", "Sample"]
