"""Image sources by name: the factory of every ``source.name`` (``data_split.config.SOURCES``) and ``make_source``.

One module per format: ``idx`` (Fashion-MNIST, MNIST), ``cifar`` (CIFAR-10), ``imagefolder`` (PNG/JPEG
folders on any fsspec URI, and the one image decoder), ``synthetic`` (tests); ``base`` is what they share.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from data_split.config import SourceConfig
from data_split.sources.base import KNOWN_CLASS_NAMES, SOURCE_SPLITS, ImageSource, SourceError
from data_split.sources.cifar import CifarSource
from data_split.sources.idx import IdxSource
from data_split.sources.imagefolder import IMAGE_SUFFIXES, ImageFolderSource, decode_image, image_folder
from data_split.sources.synthetic import SYNTHETIC_CHUNK, SyntheticSource
from data_split.storage import RunStorage

__all__ = [
    "FACTORIES",
    "FASHION_MNIST_DEBIAN_ROOT",
    "IMAGE_SUFFIXES",
    "KNOWN_CLASS_NAMES",
    "SOURCE_SPLITS",
    "SYNTHETIC_CHUNK",
    "CifarSource",
    "IdxSource",
    "ImageFolderSource",
    "ImageSource",
    "SourceError",
    "SyntheticSource",
    "decode_image",
    "make_source",
]

FASHION_MNIST_DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"


def _download(cfg: SourceConfig, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[cfg.name]
    for train in (True, False):
        cls(str(root), train=train, download=True)


# source.name -> factory(cfg, root, run storage), for every name that SourceConfig accepts (data_split.config.SOURCES)
FACTORIES: dict[str, Callable[[SourceConfig, Path, RunStorage | None], ImageSource]] = {
    "fashion-mnist": lambda cfg, root, _: IdxSource(
        name=cfg.name, root=root, torchvision_folder="FashionMNIST", limit=cfg.limit
    ),
    "mnist": lambda cfg, root, _: IdxSource(name=cfg.name, root=root, torchvision_folder="MNIST", limit=cfg.limit),
    "cifar10": lambda cfg, root, _: CifarSource(root=root, limit=cfg.limit),
    "imagefolder": lambda cfg, _, storage: image_folder(cfg, storage),
    "synthetic": lambda cfg, root, _: SyntheticSource(cfg=cfg.synthetic, limit=cfg.limit),
}


def make_source(cfg: SourceConfig, storage: RunStorage | None = None) -> ImageSource:
    """The source named by ``cfg``, validated (raises ``SourceError`` naming the bad file).

    ``storage``: the run's; an image folder on an object store (``s3://``) uses its endpoint and credentials.
    """
    default_roots = {"fashion-mnist": FASHION_MNIST_DEBIAN_ROOT, "mnist": "./data/mnist", "cifar10": "./data/cifar10"}
    if cfg.download:  # the Debian folder is read-only: downloads go under ./data like the others
        default_roots["fashion-mnist"] = "./data/fashion-mnist"
    root = Path(os.path.expanduser(cfg.root or default_roots.get(cfg.name, ".")))
    if cfg.name == "fashion-mnist" and cfg.root is None and not cfg.download and not root.is_dir():
        raise SourceError(
            f"Fashion-MNIST is not at {root} (Debian's package): install it "
            "(`apt-get install dataset-fashion-mnist`), or let torchvision fetch it into "
            "./data/fashion-mnist (`--set source.download=true`), or point `source.root` at a copy"
        )
    if cfg.download and cfg.name in default_roots:
        _download(cfg, root)
    source = FACTORIES[cfg.name](cfg, root, storage)
    source.validate()
    return source
