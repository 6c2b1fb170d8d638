"""Datasets, file readers and the DataLoader."""

from .cifar import cifar10
from .dataloader import DataLoader
from .dataset import Dataset, TensorDataset
from .datasets import (ChecksumError, DatasetNotFoundError, download, fashion_mnist,
                       find_files, mnist, search_dirs)
from .idx import DataFormatError, load_idx_pair, read_idx

__all__ = ["Dataset", "TensorDataset", "DataLoader", "read_idx", "load_idx_pair",
           "mnist", "fashion_mnist", "cifar10", "download", "find_files", "search_dirs",
           "DataFormatError", "DatasetNotFoundError", "ChecksumError"]
