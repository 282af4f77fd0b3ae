"""Dataset records and readers.

The readers only list files and check them; turning files into tensors is the
job of :mod:`tabad.datasets.transforms` and :mod:`tabad.datasets.loader`.

Reading, from the API down (each module imports only those below it):

* :mod:`~tabad.datasets.readers`: ``read_category``, ``list_categories``, ``detect_layout``;
  dispatches through
* :mod:`~tabad.datasets.layouts`: the registry of layout names and the detection order, which
  loads on use
* :mod:`~tabad.datasets.mvtec` and :mod:`~tabad.datasets.published`: one
  :class:`~tabad.datasets.reading.Layout` per folder layout, built on
* :mod:`~tabad.datasets.reading`: the Layout protocol and the checks every reader ends with,
* :mod:`~tabad.datasets.images` (decoding), :mod:`~tabad.datasets.listing` (which files, in
  which order) and :mod:`~tabad.datasets.sample` (the records).
"""

from tabad.datasets.sample import CategoryData, Sample

__all__ = ["CategoryData", "Sample"]
