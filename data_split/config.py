"""Configuration of the data side: where images come from, how they are split, where they go.

Keyword-only dataclasses whose fields declare their constraints (``data_split.fields``): construction
checks them and the cross-field rules below, and an error names the dotted key.
``orchestrator.config`` builds them from YAML.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_split.errors import ConfigError
from data_split.fields import Key, Section, option
from data_split.quantize import DTYPES
from data_split.transforms import TRANSFORMS

# source.name; data_split.sources builds each (FACTORIES): this module imports no source, so sources may import it
SOURCES = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "synthetic")


@dataclass(kw_only=True, frozen=True)
class SyntheticConfig(Section):
    """Seeded class-prototype images: learnable, random-access, any size."""

    SECTION = "source.synthetic"

    train: int = option(2000, "images in the source train split", ge=0)
    test: int = option(500, "images in the source test split", ge=0)
    channels: int = option(1, "channels of each image", ge=1)
    height: int = option(28, "image height in pixels", ge=1)
    width: int = option(28, "image width in pixels", ge=1)
    classes: int = option(10, "number of classes (one prototype image each)", ge=2)
    noise: float = option(0.35, "std of the Gaussian noise added to each class prototype (pixels in [0, 1])")
    seed: int = option(0, "seed of the prototypes and the noise")


def image_size_is_s_or_hw(source: SourceConfig, key: Key) -> None:
    size = [source.image_size] * 2 if isinstance(source.image_size, int) else source.image_size
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ConfigError(f"{key('image_size')} must be S or [H, W] with positive sizes, got {source.image_size}")


def imagefolder_needs_root(source: SourceConfig, key: Key) -> None:
    if source.name == "imagefolder" and source.root is None:
        raise ConfigError(f"source 'imagefolder' needs {key('root')} (a path or URI holding train/<class>/<image>)")


def skip_bad_needs_imagefolder(source: SourceConfig, key: Key) -> None:
    if source.skip_bad and source.name != "imagefolder":
        raise ConfigError(f"{key('skip_bad')} applies to `imagefolder` only, not {source.name!r}")


@dataclass(kw_only=True, frozen=True)
class SourceConfig(Section):
    SECTION = "source"
    RULES = (image_size_is_s_or_hw, imagefolder_needs_root, skip_bad_needs_imagefolder)

    name: str = option("fashion-mnist", "the image source", choices=SOURCES)
    root: str | None = option(
        None,
        "where the source files are; unset: `/usr/share/datasets/fashion-mnist` "
        "(Debian's package) for Fashion-MNIST, `./data/<name>` in torchvision's layout "
        "for the others",
    )
    limit: int | None = option(None, "keep only the first N images of each source split; unset: all", ge=1)
    download: bool = option(
        False,
        "`mnist`, `fashion-mnist`, `cifar10`: fetch the files with torchvision's "
        "downloader first (into `source.root`, else `./data/<name>`)",
    )
    image_size: int | list[int] | None = option(
        None,
        "`imagefolder`, as torchvision's `Resize` + `CenterCrop`: `S` "
        "scales the shorter side to S and keeps the centre S x S; `[H, "
        "W]` stretches to H x W; unset: every image must have the same "
        "size, which is used",
    )
    channels: int = option(
        3, "`imagefolder`: 1 (grayscale) or 3 (RGB); images of the other kind are converted", choices=(1, 3)
    )
    skip_bad: bool = option(
        False,
        "`imagefolder`: leave out images that cannot be read or decoded (listed in the "
        "manifest under `source.skipped`) instead of failing the split",
    )
    synthetic: SyntheticConfig = option(
        factory=SyntheticConfig,
        help="`synthetic`: seeded class-prototype images plus Gaussian noise (for tests and benchmarks)",
    )


def extra_sources_keep_every_image(source: ExtraSourceConfig, key: Key) -> None:
    if source.skip_bad:
        raise ConfigError(f"{key('skip_bad')} is not supported (only the main source can leave images out)")


def resources_are_positive(source: ExtraSourceConfig, key: Key) -> None:
    if bad := {k: v for k, v in source.resources.items() if not v > 0}:
        raise ConfigError(f"{key('resources')} must be positive amounts, got {bad}")


@dataclass(kw_only=True, frozen=True)
class ExtraSourceConfig(SourceConfig):
    """One of ``extra_sources``: a lower-resolution source that trains the branches it determines.

    Its resolution must be ``(H/fr, W/fc)`` of the main source's with ``fr | rows``,
    ``fc | cols`` (checked when the split runs, against the files). All of its train
    split goes to training; its test split is not used.
    """

    SECTION = "extra_sources[]"
    RULES = (*SourceConfig.RULES, extra_sources_keep_every_image, resources_are_positive)

    resources: dict[str, float] = option(
        factory=dict, help="Ray custom resources its read tasks need, e.g. {site_b: 1}"
    )


def haar_needs_powers_of_two(split: SplitConfig, key: Key) -> None:
    if split.transform == "haar" and split.k & (split.k - 1):
        raise ConfigError(f"{key('transform')} 'haar' needs K = rows*cols to be a power of two, got K={split.k}")
    if split.transform == "haar2" and (split.rows & (split.rows - 1) or split.cols & (split.cols - 1)):
        raise ConfigError(
            f"{key('transform')} 'haar2' needs rows and cols to be powers of two, got {split.rows} x {split.cols}"
        )


@dataclass(kw_only=True, frozen=True)
class SplitConfig(Section):
    SECTION = "split"
    RULES = (haar_needs_powers_of_two,)

    rows: int = option(2, "r: polyphase rows of the split", ge=1)
    cols: int = option(2, "c: polyphase columns; K = rows * cols branches", ge=1)
    transform: str = option(
        "dct",
        "the orthonormal transform across the K sub-images: `dct` (DCT-II), `dft` "
        "(discrete Hartley: real and lossless), `haar` (K a power of two), `identity` "
        "(plain polyphase split), `dct2`/`haar2` (separable 2-D: T = T_r (x) T_c)",
        choices=TRANSFORMS,
    )
    val_fraction: float = option(0.1, "share of the source train split carved out as the validation split", ge=0, lt=1)
    seed: int = option(0, "seed of the train/validation carve and of the row order within each file")
    images_per_task: int = option(
        10_000, "images one Ray Data task reads, transforms and writes (bounds its memory)", ge=1
    )
    dtype: str = option(
        "uint8",
        "stored values of `x`: `uint8` (affine codes whose range comes from the transform "
        "matrix: never clips), `float16` or `float32`",
        choices=DTYPES,
    )

    @property
    def k(self) -> int:
        return self.rows * self.cols


def uri_is_set(storage: StorageConfig, key: Key) -> None:
    if not storage.uri:
        raise ConfigError(f"{key('uri')} must not be empty")


def keys_go_together(storage: StorageConfig, key: Key) -> None:
    if bool(storage.access_key_id) != bool(storage.secret_access_key):
        raise ConfigError(f"{key('access_key_id')} and {key('secret_access_key')} go together: set both or neither")


@dataclass(kw_only=True, frozen=True)
class StorageConfig(Section):
    SECTION = "storage"
    RULES = (uri_is_set, keys_go_together)

    uri: str = option(
        "./runs/fashion-mnist-sub4",
        "the run's URI: a path, `file://...` or `s3://bucket/prefix` (any fsspec protocol); `--storage` sets it",
    )
    endpoint_url: str | None = option(None, "S3-compatible endpoint; unset: `AWS_ENDPOINT_URL`, else AWS itself")
    lease_timeout_s: float = option(
        60.0,
        "a driver's lease (`<run>/lease.json`) without a heartbeat this long is taken over by the next driver",
        gt=0,
    )
    retry_budget_s: float = option(
        120.0,
        "remote stores: seconds one read or write keeps retrying (with backoff) "
        "through an outage before it fails naming the endpoint; local disks are "
        "not retried",
        ge=0,
    )
    # Never written to the run, its logs or the lease (tested); prefer profiles or AWS_* environment variables.
    access_key_id: str | None = option(
        None,
        "S3 access key, when neither the environment nor an instance profile provides one; never written or logged",
        secret=True,
    )
    secret_access_key: str | None = option(
        None, "S3 secret key, with `storage.access_key_id`; never written or logged", secret=True
    )

    @property
    def credentials(self) -> tuple[str, str] | None:
        return (self.access_key_id, self.secret_access_key) if self.access_key_id and self.secret_access_key else None
