"""Datasets of onnlab: MNIST, CIFAR-10, binary segmentation (Carvana or synthetic).

Nothing is ever downloaded: the data root comes from `--data-root` / `$ONNLAB_DATA`, and the
fallbacks are a bundled real-MNIST sample and a seeded synthetic segmentation set.
"""

from onnlab.data.base import ArrayDataset
from onnlab.data.datasets import TASK_NAMES, load_dataset
from onnlab.data.paths import cache_root, resolve_data_root

__all__ = ["ArrayDataset", "TASK_NAMES", "cache_root", "load_dataset", "resolve_data_root"]
