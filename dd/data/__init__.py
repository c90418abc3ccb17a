"""Datasets, ZCA whitening and differentiable augmentation."""

from dd.data.augment import DSA, DSA_MODES, DSA_TRANSFORMS
from dd.data.images import IMAGE_DATASETS, ImageDataset, load_image_dataset
from dd.data.text import TextDataset, load_text_dataset
from dd.data.zca import ZCA

__all__ = ["DSA", "DSA_MODES", "DSA_TRANSFORMS", "IMAGE_DATASETS", "ImageDataset", "TextDataset", "ZCA", "load_image_dataset",
           "load_text_dataset"]
