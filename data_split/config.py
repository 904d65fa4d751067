"""Configuration of the data side: where images come from, how they are split, where they go.

Keyword-only dataclasses validated on construction; each invalid field raises
``ValueError`` naming it. ``orchestrator.config`` builds them from YAML.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_split.fields import option
from data_split.quantize import DTYPES
from data_split.sources import SOURCES
from data_split.transforms import TRANSFORMS


@dataclass(kw_only=True, frozen=True)
class SyntheticConfig:
    """Seeded class-prototype images: learnable, random-access, any size."""

    train: int = option(2000, 'images in the source train split')
    test: int = option(500, 'images in the source test split')
    channels: int = option(1, 'channels of each image')
    height: int = option(28, 'image height in pixels')
    width: int = option(28, 'image width in pixels')
    classes: int = option(10, 'number of classes (one prototype image each)')
    noise: float = option(0.35, 'std of the Gaussian noise added to each class prototype (pixels in [0, 1])')
    seed: int = option(0, 'seed of the prototypes and the noise')

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            if getattr(self, name) < 0:
                raise ValueError(f"source.synthetic.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("channels", "height", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"source.synthetic.{name} must be >= 1, got {getattr(self, name)}")
        if self.classes < 2:
            raise ValueError(f"source.synthetic.classes must be >= 2, got {self.classes}")


@dataclass(kw_only=True, frozen=True)
class SourceConfig:
    name: str = option("fashion-mnist", 'the image source: one of `fashion-mnist`, `mnist`, `cifar10`, `imagefolder`, `synthetic`')
    root: str | None = option(None, "where the source files are; unset: `/usr/share/datasets/fashion-mnist` (Debian's package) for Fashion-MNIST, `./data/<name>` in torchvision's layout for the others")
    limit: int | None = option(None, 'keep only the first N images of each source split; unset: all')
    download: bool = option(False, "`mnist`, `fashion-mnist`, `cifar10`: fetch the files with torchvision's downloader first (into `source.root`, else `./data/<name>`)")
    image_size: int | list[int] | None = option(None, "`imagefolder`, as torchvision's `Resize` + `CenterCrop`: `S` scales the shorter side to S and keeps the centre S x S; `[H, W]` stretches to H x W; unset: every image must have the same size, which is used")
    channels: int = option(3, '`imagefolder`: 1 (grayscale) or 3 (RGB); images of the other kind are converted')
    skip_bad: bool = option(False, '`imagefolder`: leave out images that cannot be read or decoded (listed in the manifest under `source.skipped`) instead of failing the split')
    synthetic: SyntheticConfig = option(factory=SyntheticConfig, help='`synthetic`: seeded class-prototype images plus Gaussian noise (for tests and benchmarks)')

    def __post_init__(self) -> None:
        if self.name not in SOURCES:
            raise ValueError(f"source.name: unknown source {self.name!r}; expected one of {', '.join(SOURCES)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"source.limit must be >= 1 (or absent for all images), got {self.limit}")
        size = [self.image_size] if isinstance(self.image_size, int) else self.image_size
        if size is not None and ((len(size) != 2 and not isinstance(self.image_size, int)) or min(size) < 1):
            raise ValueError(f"source.image_size must be S or [H, W] with positive sizes, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"source.channels must be 1 or 3, got {self.channels}")
        if self.name == "imagefolder" and self.root is None:
            raise ValueError("source 'imagefolder' needs source.root (a path or URI holding train/<class>/<image>)")
        if self.skip_bad and self.name != "imagefolder":
            raise ValueError(f"source.skip_bad applies to `imagefolder` only, not {self.name!r}")


@dataclass(kw_only=True, frozen=True)
class ExtraSourceConfig(SourceConfig):
    """One of ``extra_sources``: a lower-resolution source that trains the branches it determines.

    Its resolution must be ``(H/fr, W/fc)`` of the main source's with ``fr | rows``,
    ``fc | cols`` (checked when the split runs, against the files). All of its train
    split goes to training; its test split is not used.
    """

    resources: dict[str, float] = option(factory=dict, help='Ray custom resources its read tasks need, e.g. {site_b: 1}')

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.skip_bad:
            raise ValueError("extra_sources: skip_bad is not supported (only the main source can leave images out)")
        bad = {k: v for k, v in self.resources.items() if not v > 0}
        if bad:
            raise ValueError(f"extra_sources resources must be positive amounts, got {bad}")


@dataclass(kw_only=True, frozen=True)
class SplitConfig:
    rows: int = option(2, 'r: polyphase rows of the split')
    cols: int = option(2, 'c: polyphase columns; K = rows * cols branches')
    transform: str = option("dct", 'the orthonormal transform across the K sub-images: `dct` (DCT-II), `dft` (discrete Hartley: real and lossless), `haar` (K a power of two), `identity` (plain polyphase split), `dct2`/`haar2` (separable 2-D: T = T_r (x) T_c)')
    val_fraction: float = option(0.1, 'share of the source train split carved out as the validation split')
    seed: int = option(0, "seed of the train/validation carve and of the row order within each file")
    images_per_task: int = option(10_000, 'images one Ray Data task reads, transforms and writes (bounds its memory)')
    dtype: str = option("uint8", 'stored values of `x`: `uint8` (affine codes whose range comes from the transform matrix: never clips), `float16` or `float32`')

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"split.rows and split.cols must be >= 1, got {self.rows} x {self.cols}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"split.transform: unknown transform {self.transform!r}; expected one of {', '.join(TRANSFORMS)}")
        k = self.rows * self.cols
        if self.transform == "haar" and k & (k - 1):
            raise ValueError(f"split.transform 'haar' needs K = rows*cols to be a power of two, got K={k}")
        if self.transform == "haar2" and (self.rows & (self.rows - 1) or self.cols & (self.cols - 1)):
            raise ValueError(f"split.transform 'haar2' needs rows and cols to be powers of two, got {self.rows} x {self.cols}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"split.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.dtype not in DTYPES:
            raise ValueError(f"split.dtype: unknown dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        if self.images_per_task < 1:
            raise ValueError(f"split.images_per_task must be >= 1, got {self.images_per_task}")

    @property
    def k(self) -> int:
        return self.rows * self.cols


@dataclass(kw_only=True, frozen=True)
class StorageConfig:
    uri: str = option("./runs/fashion-mnist-sub4", "the run's URI: a path, `file://...` or `s3://bucket/prefix` (any fsspec protocol); `--storage` sets it")
    endpoint_url: str | None = option(None, 'S3-compatible endpoint; unset: `AWS_ENDPOINT_URL`, else AWS itself')
    lease_timeout_s: float = option(60.0, "a driver's lease (`<run>/lease.json`) without a heartbeat this long is taken over by the next driver")
    retry_budget_s: float = option(120.0, "remote stores: seconds one read or write keeps retrying (with backoff) through an outage before it fails naming the endpoint; local disks are not retried")
    # Never written to the run, its logs or the lease (tested); prefer profiles or AWS_* environment variables.
    access_key_id: str | None = option(None, "S3 access key, when neither the environment nor an instance profile provides one; never written or logged", secret=True)
    secret_access_key: str | None = option(None, "S3 secret key, with `storage.access_key_id`; never written or logged", secret=True)

    @property
    def credentials(self) -> tuple[str, str] | None:
        return (self.access_key_id, self.secret_access_key) if self.access_key_id and self.secret_access_key else None

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("storage.uri must not be empty")
        if self.lease_timeout_s <= 0:
            raise ValueError(f"storage.lease_timeout_s must be > 0, got {self.lease_timeout_s}")
        if self.retry_budget_s < 0:
            raise ValueError(f"storage.retry_budget_s must be >= 0, got {self.retry_budget_s}")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError("storage.access_key_id and storage.secret_access_key go together: set both or neither")
