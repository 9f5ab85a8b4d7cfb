"""Random 3-D phantoms of the sample families seen at tomography beamlines.

Every generator takes a size ``n`` (the volume is ``(n, n, n)``, indexed
``(z, y, x)``, rotation axis along ``z``) and a :class:`numpy.random.Generator`,
and returns float32 linear attenuation per voxel, zero outside the cylinder
that stays in the field of view at every angle. Parameters are randomised
from the generator, so the same seed always gives the same volume.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

__all__ = ["FAMILIES", "HELD_OUT_FAMILIES", "GRAIN_SIGMA", "make_phantom", "bead_pack", "foam", "fibres",
           "layered_ellipsoids", "grains", "with_grain"]

#: Correlation length of :func:`with_grain`'s texture (Gaussian sigma, voxels): a grain or pore
#: about two voxels across, the finest structure a detector pixel resolves.
GRAIN_SIGMA = 0.7


def _grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (np.arange(n, dtype=np.float32) - (n - 1) / 2) / (n / 2)  # [-1, 1]
    return c[:, None, None], c[None, :, None], c[None, None, :]


def _fov_mask(n: int, radius: float = 0.92) -> np.ndarray:
    _, y, x = _grid(n)
    return (x * x + y * y) <= radius * radius  # (1, n, n), broadcast over z


def _texture(n: int, rng: np.random.Generator, amplitude: float, sigma: float) -> np.ndarray:
    """Smooth multiplicative density variation (grain, porosity) around 1."""
    field = ndimage.gaussian_filter(rng.standard_normal((n, n, n)).astype(np.float32), sigma)
    field /= field.std() + 1e-12
    return 1.0 + amplitude * field


def _add_spheres(
    vol: np.ndarray, centres: np.ndarray, radii: np.ndarray, value: float | np.ndarray, *, set_: bool
) -> None:
    """Paint spheres (centres/radii in voxels) into ``vol`` within their bounding boxes."""
    n = vol.shape[0]
    values = np.broadcast_to(np.asarray(value, dtype=np.float32), radii.shape)
    for (cz, cy, cx), r, v in zip(centres, radii, values, strict=True):
        lo = np.maximum(np.floor([cz - r, cy - r, cx - r]).astype(int), 0)
        hi = np.minimum(np.ceil([cz + r, cy + r, cx + r]).astype(int) + 1, n)
        if np.any(hi <= lo):
            continue
        z, y, x = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        inside = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r
        block = vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        if set_:
            block[inside] = v
        else:
            block[inside] += v


def bead_pack(n: int, rng: np.random.Generator) -> np.ndarray:
    """Glass beads of a few sizes packed in a thin-walled cylindrical container."""
    vol = np.zeros((n, n, n), np.float32)
    _, y, x = _grid(n)
    r_cyl = rng.uniform(0.75, 0.88)
    rr = np.sqrt(x * x + y * y)
    wall = (rr <= r_cyl) & (rr >= r_cyl - rng.uniform(0.02, 0.04))
    vol += np.broadcast_to(wall, vol.shape) * rng.uniform(0.6, 1.0)
    fill = np.broadcast_to(rr < r_cyl - 0.05, vol.shape).astype(np.float32)
    vol += fill * rng.uniform(0.02, 0.08)  # binder / liquid between beads
    n_beads = int(rng.integers(60, 160) * (n / 128) ** 1.5)
    sizes = rng.choice(rng.uniform(0.03, 0.12, size=3) * n / 2, size=n_beads)
    ang = rng.uniform(0, 2 * np.pi, n_beads)
    rad = np.sqrt(rng.uniform(0, 1, n_beads)) * (r_cyl - 0.06) * n / 2 - sizes * 0.5
    centres = np.stack(
        [rng.uniform(0, n, n_beads), n / 2 + rad * np.sin(ang), n / 2 + rad * np.cos(ang)], axis=1
    )
    _add_spheres(vol, centres, sizes, rng.uniform(0.5, 1.0), set_=True)
    return vol * _texture(n, rng, 0.03, 2.0)


def foam(n: int, rng: np.random.Generator) -> np.ndarray:
    """Porous solid: a matrix with overlapping spherical pores of broad size range."""
    vol = np.zeros((n, n, n), np.float32)
    _, y, x = _grid(n)
    shape_r = rng.uniform(0.6, 0.88)
    if rng.random() < 0.5:
        solid = np.sqrt(x * x + y * y) <= shape_r
    else:  # square column
        solid = (np.abs(x) <= shape_r * 0.75) & (np.abs(y) <= shape_r * 0.75)
    vol[np.broadcast_to(solid, vol.shape)] = rng.uniform(0.3, 0.7)
    n_pores = int(rng.integers(150, 400) * (n / 128) ** 1.5)
    radii = np.exp(rng.normal(np.log(0.06 * n / 2), 0.5, n_pores)).astype(np.float32)
    centres = rng.uniform(0, n, (n_pores, 3))
    _add_spheres(vol, centres, radii, 0.0, set_=True)
    # a few dense inclusions
    k = int(rng.integers(3, 12))
    _add_spheres(vol, rng.uniform(0, n, (k, 3)), rng.uniform(1.5, 4, k), rng.uniform(0.8, 1.2), set_=True)
    return vol * _texture(n, rng, 0.08, 1.5)


def fibres(n: int, rng: np.random.Generator) -> np.ndarray:
    """Fibre composite: cylinders along a preferred direction in a light matrix."""
    z, y, x = (g * n / 2 for g in _grid(n))
    vol = np.zeros((n, n, n), np.float32)
    r_fov = n / 2 * 0.88
    vol[np.broadcast_to(x * x + y * y <= r_fov**2, vol.shape)] = rng.uniform(0.05, 0.2)
    n_fib = int(rng.integers(20, 60) * (n / 128))
    main = rng.normal(size=3)
    main /= np.linalg.norm(main)
    for _ in range(n_fib):
        d = main + rng.normal(scale=rng.uniform(0.1, 0.5), size=3)
        d /= np.linalg.norm(d)
        p = rng.uniform(-0.7, 0.7, 3) * n / 2
        r = rng.uniform(1.2, 4.0) * n / 128
        # distance from each voxel to the fibre axis (cross product magnitude)
        vz, vy, vx = z - p[0], y - p[1], x - p[2]
        t = vz * d[0] + vy * d[1] + vx * d[2]
        dist2 = vz * vz + vy * vy + vx * vx - t * t
        vol[dist2 <= r * r] = rng.uniform(0.5, 1.0)
    vol *= (x * x + y * y <= r_fov**2).astype(np.float32)
    return vol * _texture(n, rng, 0.03, 2.0)


def layered_ellipsoids(n: int, rng: np.random.Generator) -> np.ndarray:
    """Shepp-Logan-like nested ellipsoids, with layers whose contents change along z."""
    z, y, x = _grid(n)
    vol = np.zeros((n, n, n), np.float32)
    ax = rng.uniform(0.6, 0.85, 3)
    ax[0] = rng.uniform(0.8, 1.5)  # long along z
    outer = (x / ax[2]) ** 2 + (y / ax[1]) ** 2 + (z / ax[0]) ** 2 <= 1
    vol[outer] = rng.uniform(0.6, 1.0)
    inner = (x / (ax[2] - 0.05)) ** 2 + (y / (ax[1] - 0.05)) ** 2 + (z / ax[0]) ** 2 <= 1
    vol[inner] = rng.uniform(0.1, 0.3)
    for _ in range(int(rng.integers(6, 14))):
        c = rng.uniform(-0.5, 0.5, 3)
        a = rng.uniform(0.05, 0.35, 3)
        th = rng.uniform(0, np.pi)
        xr = (x - c[2]) * np.cos(th) + (y - c[1]) * np.sin(th)
        yr = -(x - c[2]) * np.sin(th) + (y - c[1]) * np.cos(th)
        e = (xr / a[2]) ** 2 + (yr / a[1]) ** 2 + ((z - c[0]) / a[0]) ** 2 <= 1
        vol[e & inner] += rng.uniform(-0.1, 0.35)
    # stratification: density steps along z (layers)
    n_layers = int(rng.integers(2, 6))
    edges = np.sort(rng.uniform(-1, 1, n_layers))
    for e in edges:
        vol[(z > e) & inner] *= rng.uniform(0.85, 1.15)
    return np.clip(vol, 0, None) * _texture(n, rng, 0.02, 2.0)


def grains(n: int, rng: np.random.Generator) -> np.ndarray:
    """A rock-like polycrystal: Voronoi grains of a few minerals, thin cracks along some boundaries."""
    seeds = np.zeros((n, n, n), bool)
    count = int(rng.integers(150, 400))
    pts = rng.integers(0, n, (count, 3))
    seeds[pts[:, 0], pts[:, 1], pts[:, 2]] = True
    # nearest seed of every voxel: the Voronoi cell it belongs to
    _, (iz, iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    labels = np.zeros((n, n, n), np.int32)
    labels[pts[:, 0], pts[:, 1], pts[:, 2]] = np.arange(1, count + 1)
    cell = labels[iz, iy, ix]
    minerals = rng.choice([0.6, 1.0, 1.4, 2.2], size=count + 1, p=[0.3, 0.4, 0.2, 0.1])
    vol = minerals[cell].astype(np.float32)
    boundary = np.zeros_like(seeds)
    for axis in range(3):
        boundary |= np.diff(cell, axis=axis, append=np.take(cell, [-1], axis=axis)) != 0
    cracked = rng.random(count + 1) < 0.3
    vol[boundary & cracked[cell]] = 0.05
    _, y, x = _grid(n)
    vol *= (x * x + y * y) <= 0.8**2
    return vol * _texture(n, rng, 0.03, 1.5)


#: The families training data are made of.
FAMILIES: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "bead_pack": bead_pack,
    "foam": foam,
    "fibres": fibres,
    "layered": layered_ellipsoids,
}
#: Families no shipped model was trained on: held-out checks of generalisation and fine-tuning.
HELD_OUT_FAMILIES: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {"grains": grains}


def make_phantom(family: str, n: int = 128, seed: int = 0) -> np.ndarray:
    """Return a random phantom volume of one family.

    Parameters
    ----------
    family : str
        One of :data:`FAMILIES` (``bead_pack``, ``foam``, ``fibres``, ``layered``) or
        :data:`HELD_OUT_FAMILIES` (``grains``).
    n : int
        Edge length; the volume is ``(n, n, n)`` with the rotation axis along z.
    seed : int
        Seed of all random parameters: same seed, same volume.

    Returns
    -------
    numpy.ndarray
        float32 attenuation, >= 0, zero outside the field-of-view cylinder.
    """
    known = FAMILIES | HELD_OUT_FAMILIES
    try:
        make = known[family]
    except KeyError:
        raise ValueError(f"unknown phantom family {family!r}; choose from {sorted(known)}") from None
    if n < 16:
        raise ValueError(f"phantom size must be >= 16, got {n}")
    rng = np.random.default_rng(seed)
    vol = make(n, rng).astype(np.float32)
    vol *= _fov_mask(n)
    return np.clip(vol, 0, None)


def with_grain(vol: np.ndarray, rms: float, rng: np.random.Generator, sigma: float = GRAIN_SIGMA) -> np.ndarray:
    """``vol`` with a fine density variation of relative RMS ``rms`` inside the sample.

    Real samples (sintered powders, rock, bone, concrete) vary in density at the scale of a
    voxel. Such a texture belongs to the sample: it turns with it, so in the projections it is
    a pixel-scale texture that the neighbouring frames share in part and that drifts from
    frame to frame (most at the edge of the sample), unlike photon noise (new in every frame)
    and unlike a detector's pixel gains (fixed to the detector). The line integrals average it
    along each ray, so a projection shows a fraction of ``rms`` that falls with the sample's
    thickness.

    Parameters
    ----------
    vol : numpy.ndarray
        ``(n, n, n)`` attenuation (:func:`make_phantom`).
    rms : float
        Relative RMS of the variation, in [0, 0.5] (the density is clipped at zero: a void
        where the variation is below ``-1``, beyond two sigmas at the largest RMS).
    rng : numpy.random.Generator
        Source of the texture.
    sigma : float
        Its correlation length (Gaussian sigma, voxels).

    Returns
    -------
    numpy.ndarray
        A new float32 volume, zero where ``vol`` is.
    """
    if not 0 <= rms <= 0.5:
        raise ValueError(f"sample grain RMS must be in [0, 0.5], got {rms}")
    if rms == 0:
        return vol.astype(np.float32, copy=True)
    # the families' own density variation, at the scale of a voxel and stronger
    return np.clip(vol * _texture(vol.shape[0], rng, rms, sigma), 0, None).astype(np.float32, copy=False)
