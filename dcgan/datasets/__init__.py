"""Training data: MNIST, Fashion-MNIST and folders of images, as uint8 batches with class labels.

``module`` holds what every source shares (``ImageDataModule`` and its in-memory loader), and
one module per source: ``mnist`` (MNIST, Fashion-MNIST) and ``folder``. The config's
``dataset`` group picks the source by its ``_target_``.
"""

from dcgan.datasets.folder import FolderData
from dcgan.datasets.mnist import SPLITS, MNISTData
from dcgan.datasets.module import ImageDataModule

__all__ = ["SPLITS", "FolderData", "ImageDataModule", "MNISTData"]
