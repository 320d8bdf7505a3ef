"""Random distortions of training digits, on their ``uint8`` pixels: shifts, affine maps, elastic fields.

Each transform is a small frozen dataclass of strengths, called as
``transform(images, rng, out)`` on ``images: (n, 784) uint8`` (rows of
28x28 digits) and writing ``out: (n, 784) uint8``: every image gets its own
random draw, all of them vectorised over the batch. Randomness comes from
``rng`` only, drawn in a fixed order, so the same generator state gives the
same pixels. Pixels that come from outside the 28x28 field are black (0), as
MNIST's background.

- :class:`Shift`: whole-pixel translations, up to ``max_shift`` each way.
- :class:`Affine`: rotation, scale, shear and translation about the centre,
  sampled with bilinear interpolation.
- :class:`Elastic`: Simard, Steinkraus and Platt (2003): a random
  displacement field, smoothed by a Gaussian of ``sigma`` pixels and scaled
  by ``alpha``, sampled with bilinear interpolation.

NumPy only. SciPy's ``ndimage`` (in the environment through MLflow) was
measured against these on 55,000 images and is slower here: ``map_coordinates``
over the batch as one 3-D array, or in a Python loop over single images,
against the vectorised bilinear gather below; ``gaussian_filter`` against
the small matrix products that make the fields.

The names the config uses are :data:`AUGMENTATIONS`; ``none`` is no entry
at all: the training loop then never touches the pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

__all__ = ["AUGMENTATIONS", "Affine", "Elastic", "Shift", "gaussian_matrix"]

SIDE = 28  #: MNIST's field, pixels per side
PIXELS = SIDE * SIDE
CENTRE = (SIDE - 1) / 2  #: rotations and scalings turn about the field's geometric centre (index coordinates)
# Samples are gathered from a zero-padded copy of each image: one black row and
# column before it and three after, so that a coordinate clipped to [-1, SIDE]
# and its right/lower neighbour always fall inside the padded field.
PAD_SIDE = SIDE + 4
PAD_PIXELS = PAD_SIDE * PAD_SIDE
# Images per pass of the bilinear sampling: its ten or so float32 scratch arrays
# of a block (100 KB each) stay in a core's L2 cache, where a block of 128 did
# not; smaller blocks pay more in per-call overhead than they save.
BLOCK = 32
# Elastic fields: the smoothing's rank kept (see Elastic) holds this much of the field's variance.
FIELD_VARIANCE_KEPT = 0.999

# Index coordinates of every output pixel, row-major: (784,) each, float32.
_GRID_Y, _GRID_X = (g.ravel().astype(np.float32) for g in np.mgrid[0:SIDE, 0:SIDE])
_HOMOGENEOUS = np.stack([_GRID_Y, _GRID_X, np.ones(PIXELS, dtype=np.float32)])  # (3, 784): (row, col, 1) per pixel


def _padded(images: np.ndarray) -> np.ndarray:
    """``images: (n, 784) uint8`` -> ``(n * PAD_PIXELS,)`` float32, each image inside a black border (row/col 1..28)."""
    n = len(images)
    out = np.zeros((n, PAD_SIDE, PAD_SIDE), dtype=np.float32)
    out[:, 1 : SIDE + 1, 1 : SIDE + 1] = images.reshape(n, SIDE, SIDE)
    return out.reshape(-1)


def bilinear(images: np.ndarray, source: Callable[[slice], tuple[np.ndarray, np.ndarray]], out: np.ndarray) -> None:
    """Sample every image at its own source coordinates, bilinearly, black outside the field.

    Args:
        images: ``(n, 784) uint8``.
        source: ``source(rows)`` gives the ``(k, 784) float32`` source row
            and column, in index coordinates, of each output pixel of
            ``images[rows]`` (fresh arrays: they are used as scratch).
        out: ``(n, 784) uint8``, the sampled images, rounded to the nearest level.

    A coordinate that is a whole number reproduces its pixel exactly, so
    zero strength is the identity. Done :data:`BLOCK` images at a time --
    coordinates made, then sampled -- so that the dozen passes over a block
    find their scratch arrays in the core's cache; every pixel's arithmetic
    is the same whatever the block.
    """
    for start in range(0, len(images), BLOCK):
        rows = slice(start, start + BLOCK)
        y, x = source(rows)
        _bilinear_block(images[rows], y, x, out[rows])


def _bilinear_block(images: np.ndarray, y: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """:func:`bilinear` on one block of images, as in-place passes over it (no per-image loop).

    The four neighbours are gathered from offset views of one flat padded
    array with ``intp`` indices (``take`` would convert any other index type
    first, at twice the cost of the gather).
    """
    n = len(images)
    flat = _padded(images)
    # Into the padded frame, clipped so the 2x2 neighbourhood stays inside it;
    # anything beyond the border samples the black padding, as it should.
    for c in (y, x):
        c += 1
        np.clip(c, 0, SIDE + 1, out=c)
    y0, x0 = np.floor(y), np.floor(x)
    y -= y0  # the fractions, in place
    x -= x0
    # The flat index of each top-left neighbour: within its image in float32 (exact, < PAD_PIXELS),
    # then the image's start.
    y0 *= PAD_SIDE
    y0 += x0
    idx = y0.astype(np.intp)
    idx += (np.arange(n, dtype=np.intp) * PAD_PIXELS)[:, None]
    top, right, bottom, corner = (np.empty_like(y) for _ in range(4))
    for offset, into in ((0, top), (1, right), (PAD_SIDE, bottom), (PAD_SIDE + 1, corner)):
        flat[offset:].take(idx, out=into, mode="clip")  # "clip": no bounds check, which would buffer `out`
    # top + x * (right - top), the same for the bottom row, then between the rows.
    right -= top
    right *= x
    top += right
    corner -= bottom
    corner *= x
    bottom += corner
    bottom -= top
    bottom *= y
    top += bottom
    top += 0.5  # round half up: the values are >= 0, so truncation after +0.5 rounds
    np.copyto(out, top, casting="unsafe")


@dataclass(frozen=True)
class Shift:
    """Whole-pixel shifts: each image moves by ``dy, dx`` drawn uniformly from ``-max_shift..max_shift``."""

    max_shift: int

    def __call__(self, images: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> None:
        """``images: (n, 784) uint8`` shifted into ``out: (n, 784) uint8`` (black where nothing moved in)."""
        n, s = len(images), self.max_shift
        dy, dx = rng.integers(-s, s + 1, size=(2, n, 1)).astype(np.float32)
        # Whole-pixel source coordinates make the bilinear sample an exact copy.
        bilinear(images, lambda rows: (_GRID_Y + dy[rows], _GRID_X + dx[rows]), out)


@dataclass(frozen=True)
class Affine:
    """Random affine maps about the centre: rotation, scale, shear, then translation.

    Per image, uniformly: a rotation in ``±rotation`` degrees, a scale in
    ``[1 - scale, 1 + scale]``, a horizontal shear in ``±shear`` degrees and a
    translation in ``±translate`` pixels along each axis. The image is warped
    by that map (each output pixel samples the source at the inverse map).
    """

    rotation: float
    scale: float
    shear: float
    translate: float

    def __call__(self, images: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> None:
        """``images: (n, 784) uint8`` warped into ``out: (n, 784) uint8``."""
        n = len(images)
        angle, shear = np.radians(rng.uniform(-1, 1, size=(2, n)) * [[self.rotation], [self.shear]])
        zoom = 1 + self.scale * rng.uniform(-1, 1, size=n)
        shift = self.translate * rng.uniform(-1, 1, size=(2, n))
        cos, sin, tan = np.cos(angle), np.sin(angle), np.tan(shear)  # (n,) each
        # The map in (row, col) coordinates: rotate @ shear @ zoom, where the shear moves
        # each row sideways in proportion to its height: [[1, 0], [tan, 1]].
        fwd = np.empty((n, 2, 2))
        fwd[:, 0, 0], fwd[:, 0, 1] = (cos - sin * tan) * zoom, -sin * zoom
        fwd[:, 1, 0], fwd[:, 1, 1] = (sin + cos * tan) * zoom, cos * zoom
        inv = np.linalg.inv(fwd)  # (n, 2, 2)
        # Source = inv @ (p - centre - shift) + centre for every output pixel p: per image, a
        # (2, 3) matrix applied to the pixels' (row, col, 1) -- one matrix product for the batch.
        rows = np.empty((n, 2, 3))
        rows[:, :, :2] = inv
        rows[:, :, 2] = CENTRE - np.einsum("nij,jn->ni", inv, CENTRE + shift)
        maps = rows.astype(np.float32)

        def source(block: slice) -> tuple[np.ndarray, np.ndarray]:
            m = maps[block]
            coords = (m.reshape(2 * len(m), 3) @ _HOMOGENEOUS).reshape(len(m), 2, PIXELS)
            return coords[:, 0], coords[:, 1]

        bilinear(images, source, out)


def gaussian_matrix(sigma: float, side: int = SIDE, truncate: float = 4.0) -> np.ndarray:
    """``(side, side) float64`` G with ``G @ u`` = ``u`` convolved with a Gaussian of ``sigma``, zero outside.

    The kernel is cut at ``truncate * sigma`` and normalised to sum 1, as
    ``scipy.ndimage.gaussian_filter1d(..., mode="constant")`` does.
    """
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2) if sigma > 0 else (offsets == 0).astype(float)
    kernel /= kernel.sum()
    distance = np.arange(side)[:, None] - np.arange(side)[None, :]
    return np.where(np.abs(distance) <= radius, kernel[np.clip(distance + radius, 0, 2 * radius)], 0.0)


@dataclass(frozen=True)
class Elastic:
    """Elastic distortions (Simard, Steinkraus and Platt, 2003).

    Per image, two random fields (row and column displacement) of uniform
    values in [-1, 1], each convolved with a Gaussian of ``sigma`` pixels and
    scaled by ``alpha``; every pixel samples the source at its own position
    plus its displacement.

    How the fields are drawn, and why it is the same distribution: a
    smoothed field is ``G U G^T`` (``G``: :func:`gaussian_matrix`, ``U``:
    28x28 uniforms of variance 1/3). With ``G = A S B^T`` (its SVD),
    ``B^T U B`` has uncorrelated entries of variance 1/3 (an orthogonal
    change of basis), and a sum of hundreds of uniforms is Gaussian to
    within the eye's and the network's reach. So a field is drawn as
    ``C Z C^T`` with ``C = A_r S_r`` and ``Z`` an ``r x r`` matrix of normals
    of variance 1/3, where ``r`` keeps :data:`FIELD_VARIANCE_KEPT` of the
    field's variance (r = 7 for sigma 4, instead of 28): the same covariance
    (tests/test_augment.py compares the two), with 49 random numbers per
    field instead of 784 and far fewer multiply-adds. Below sigma 1 (which
    validation refuses) a field averages too few uniforms to be Gaussian.
    """

    alpha: float
    sigma: float

    @cached_property
    def _basis(self) -> np.ndarray:
        """``C: (28, r) float32``, the top-``r`` part of the smoothing, times ``sqrt(alpha)`` (C appears twice in a
        field)."""
        a, s, _ = np.linalg.svd(gaussian_matrix(self.sigma))
        # Variance of C Z C^T over all pixels ~ (sum of s_i^2 over i <= r)^2.
        kept = np.cumsum(s**2) ** 2 / np.sum(s**2) ** 2
        r = int(np.searchsorted(kept, FIELD_VARIANCE_KEPT) + 1)
        return (a[:, :r] * s[:r] * math.sqrt(self.alpha)).astype(np.float32)

    def draws(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """The random part of ``n`` images' fields: ``(2, n, r, r) float32`` normals of variance 1/3 (row, then column
        fields)."""
        r = self._basis.shape[1]
        z = rng.standard_normal((2 * n, r, r), dtype=np.float32)
        z *= np.float32(math.sqrt(1 / 3))  # the variance of a uniform on [-1, 1]
        return z.reshape(2, n, r, r)

    def smooth(self, z: np.ndarray) -> np.ndarray:
        """Displacement fields from draws ``z: (..., r, r)``: ``C Z C^T``, as ``(..., 784) float32``, in pixels."""
        c = self._basis
        r = c.shape[1]
        # Two flat products: (m*r, r) @ C^T, then C @ each (r, 28).
        half = (z.reshape(-1, r) @ c.T).reshape(-1, r, SIDE)  # Z C^T
        return np.matmul(c, half).reshape(*z.shape[:-2], PIXELS)

    def fields(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Row and column displacements of ``n`` images: two ``(n, 784) float32``, in pixels."""
        dy, dx = self.smooth(self.draws(n, rng))
        return dy, dx

    def __call__(self, images: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> None:
        """``images: (n, 784) uint8`` distorted into ``out: (n, 784) uint8``."""
        z = self.draws(len(images), rng)  # all of the chunk's randomness first, in one fixed order

        def source(block: slice) -> tuple[np.ndarray, np.ndarray]:
            dy, dx = self.smooth(z[:, block])
            dy += _GRID_Y
            dx += _GRID_X
            return dy, dx

        bilinear(images, source, out)


#: ``augment.name`` -> the transform's class, built from the group's other keys.
AUGMENTATIONS: dict[str, type] = {"shift": Shift, "affine": Affine, "elastic": Elastic}
