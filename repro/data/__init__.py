"""Datasets for repro: a registry, readers for each official format, a decoded-tensor cache, seeded splits,
and a loader that keeps whole splits on the training device (see each module's docstring)."""

from repro.data.dataset import ImageDataset, channel_stats
from repro.data.loader import DeviceLoader, augment_batch
from repro.data.load import fetch_dataset, load_dataset, locate, verify_source
from repro.data.registry import DatasetSpec, RemoteFile, default_data_dir, get_spec, list_datasets
from repro.data.splits import balanced_subset, make_splits

__all__ = [
    "DatasetSpec",
    "DeviceLoader",
    "ImageDataset",
    "RemoteFile",
    "augment_batch",
    "balanced_subset",
    "channel_stats",
    "default_data_dir",
    "fetch_dataset",
    "get_spec",
    "list_datasets",
    "load_dataset",
    "locate",
    "make_splits",
    "verify_source",
]
