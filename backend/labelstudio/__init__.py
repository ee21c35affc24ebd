"""Everything labelloop knows about Label Studio: the API client (the only importer of
``label_studio_sdk``), label-config parsing, image resolution and JSON conversions.

``client`` is not imported here, so parsing and conversion stay usable without loading the SDK.
"""

from backend.labelstudio.config import LabelConfig, UnsupportedConfig, parse_label_config
from backend.labelstudio.convert import annotation_labels, prediction_item, task_image_ref
from backend.labelstudio.images import ImageError, ImageResolver

__all__ = [
    "ImageError",
    "ImageResolver",
    "LabelConfig",
    "UnsupportedConfig",
    "annotation_labels",
    "parse_label_config",
    "prediction_item",
    "task_image_ref",
]
