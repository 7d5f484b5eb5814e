"""Dataset loaders, one module per family; importing this package registers them all."""

from . import cifar, fashion_mnist, image_folder, imagenet, tiny_imagenet  # noqa: F401
from ._common import DatasetFormatError

__all__ = ["DatasetFormatError"]
