"""The method in one figure, from real data: an image, its K polyphase sub-images, its K spectral sub-images.

    .venv/bin/python scripts/method_figure.py [--source fashion-mnist] [--rows 2 --cols 2] [--transform dct]
                                              [--index 0] [--out docs/method.png]

Reads the first test image of the source (Fashion-MNIST from Debian's package by default) through the same
``make_source`` and ``data_split.transforms`` code the split uses, so the panels are what the branches train on
(before quantisation): polyphase component ``k = a*c + b`` is ``x[a::r, b::c]``; spectral component ``k`` is
row ``k`` of ``T`` applied along the K phases. Each panel has its own colour scale (the spectral components
other than 0 are signed and small), and its title gives the range.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from data_split.config import SourceConfig
from data_split.sources import KNOWN_CLASS_NAMES, make_source
from data_split.transforms import polyphase_split, spectral_split


def figure(x: np.ndarray, r: int, c: int, transform: str, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = x[None].astype(np.float32) / 255  # (1, C, H, W) in [0, 1]
    poly = polyphase_split(pixels, r, c)[0, 0]  # (H/r, W/c, K), channel 0
    spec = spectral_split(pixels, r, c, transform)[0, 0]  # (H/r, W/c, K)
    k = r * c
    fig, axes = plt.subplots(3, k, figsize=(1.9 * k, 6.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(pixels[0, 0], cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title(f"image {pixels.shape[2]}x{pixels.shape[3]}", fontsize=9)
    for i in range(k):
        a, b = divmod(i, c)
        axes[1, i].imshow(poly[..., i], cmap="gray", vmin=0, vmax=1)
        axes[1, i].set_title(f"polyphase {i}: x[{a}::{r}, {b}::{c}]", fontsize=8)
        s = spec[..., i]
        lim = float(np.abs(s).max()) or 1.0
        axes[2, i].imshow(s, cmap="gray" if i == 0 else "RdBu_r", vmin=0 if i == 0 else -lim, vmax=lim)
        axes[2, i].set_title(f"{transform} {i}: [{s.min():.2f}, {s.max():.2f}]", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="fashion-mnist")
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--cols", type=int, default=2)
    p.add_argument("--transform", default="dct")
    p.add_argument("--index", type=int, default=0, help="which test image")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "method.png")
    args = p.parse_args()
    source = make_source(SourceConfig(name=args.source))
    x, y = source.read("test", args.index, args.index + 1)
    names = KNOWN_CLASS_NAMES.get(args.source)
    label = names[int(y[0])] if names else f"class {int(y[0])}"
    figure(
        x[0],
        args.rows,
        args.cols,
        args.transform,
        f"{args.source} test image {args.index} ({label}): K={args.rows * args.cols} sub-images, each a branch's input",
        args.out,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
