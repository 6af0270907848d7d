"""Datasets and transforms for scene classification, semantic segmentation and change detection.

Loaders return ``datasets.Dataset`` objects whose images are ``datasets.Image`` features, so Hub
datasets with the same columns work with the same transforms:

- classification: ``image``, ``label`` (``ClassLabel``);
- segmentation: ``image``, ``mask`` (+ ``name``);
- change detection: ``image_a``, ``image_b``, ``label`` (+ ``name``).

Transforms (for ``Dataset.with_transform`` or :func:`attach_transform`) produce ``pixel_values``
(``pixel_values_a``/``pixel_values_b``) and ``labels``; the collate functions stack them.
"""

from ._io import IMAGE_EXTENSIONS
from .change_detection import load_change_detection_folder
from .classification import load_classification_dataset, load_image_folder, save_resized_image_folder
from .collate import (
    change_detection_collate_fn,
    classification_collate_fn,
    collate_fn,
    segmentation_collate_fn,
)
from .pipelines import (
    ChangeDetectionTransform,
    ClassificationTransform,
    SegmentationTransform,
    attach_transform,
    check_mask_files,
)
from .segmentation import load_segmentation_folder
from .splits import add_validation_split, stratified_split
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_min_size,
    joint_crop,
    joint_flip_rotate,
    map_mask,
    mask_to_array,
    normalize,
    processor_settings,
    resize_image,
    resize_mask,
    to_rgb,
    validate_mask,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ChangeDetectionTransform",
    "ClassificationTransform",
    "SegmentationTransform",
    "add_validation_split",
    "attach_transform",
    "change_detection_collate_fn",
    "check_mask_files",
    "check_min_size",
    "classification_collate_fn",
    "collate_fn",
    "joint_crop",
    "joint_flip_rotate",
    "load_change_detection_folder",
    "load_classification_dataset",
    "load_image_folder",
    "load_segmentation_folder",
    "map_mask",
    "mask_to_array",
    "normalize",
    "processor_settings",
    "resize_image",
    "resize_mask",
    "save_resized_image_folder",
    "segmentation_collate_fn",
    "stratified_split",
    "to_rgb",
    "validate_mask",
]
