"""An analytic sample for the live detector: spheres in a cylinder, projected exactly.

The voxel phantoms in :mod:`.phantoms` are projected with a sparse operator,
which costs about a second per 512x512 projection. A simulated detector must
answer ``trigger`` at any angle (fly scans, re-acquisitions) in milliseconds,
so it uses a sample whose line integrals have a closed form: a resin cylinder
(rotation axis vertical, through the detector centre) holding glass beads and
air pores. The chord of a ray through a sphere of radius ``r`` at distance
``d`` from its centre is ``2 sqrt(r^2 - d^2)``; overlapping solids add.

Coordinates are detector pixels: row ``v`` (height, along the rotation axis)
and column ``u``; the sample frame is ``(x, y, z)`` with ``z`` along ``v``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SpherePack", "offset_axis_pack", "camera_rows"]


@dataclass
class SpherePack:
    """Beads and pores in a cylinder, with exact parallel-beam projections.

    Parameters
    ----------
    shape : tuple of int
        Detector ``(height, width)`` in pixels.
    cylinder_radius : float
        Radius of the resin cylinder in pixels.
    cylinder_mu : float
        Attenuation of the resin per pixel.
    centres : numpy.ndarray
        ``(n, 3)`` sphere centres ``(x, y, z)`` in pixels, relative to the axis
        (``x``, ``y``) and the top row (``z``).
    radii, mus : numpy.ndarray
        Radii (pixels), and attenuation *added* to the resin in units of the
        resin's (``-1`` is an air pore, ``1`` a bead twice as dense as resin).
    shift : tuple of float
        Displacement ``(du, dv)`` of the whole sample in pixels (a sample that moved).
    """

    shape: tuple[int, int]
    cylinder_radius: float
    cylinder_mu: float
    centres: np.ndarray
    radii: np.ndarray
    mus: np.ndarray
    shift: tuple[float, float] = field(default=(0.0, 0.0))

    @classmethod
    def random(cls, shape: tuple[int, int], seed: int = 0, max_line_integral: float = 2.0,
               width: float = 1.0) -> SpherePack:
        """A random bead pack filling a detector of ``shape``; the thickest ray sees ``max_line_integral``.

        ``width`` > 1: the cylinder is that many times the one that fills the view (0.84 of the detector's width)
        across, with as many more beads as its section holds; the detector sees its middle (local tomography: no
        open beam beside the sample at any angle). Width 1 gives the pack of before, bead for bead.
        """
        if not 1.0 <= width <= 4.0:
            raise ValueError(f"width is the sample's width in fields of view, 1 to 4; got {width}")
        h, w = shape
        rng = np.random.default_rng(seed)
        radius = 0.42 * w * width
        centres: list[np.ndarray] = []
        radii: list[float] = []
        mus: list[float] = []
        target = int(12 * (w / 64) * (h / 64) * width**2) + 4
        for _ in range(target * 30):  # rejection sampling: beads do not overlap
            if len(radii) >= target:
                break
            r = rng.uniform(0.035, 0.09) * w
            rho = radius - r - 1
            x, y = rng.uniform(-rho, rho, 2)
            if x * x + y * y > rho * rho:
                continue
            z = rng.uniform(-r, h + r)
            c = np.array([x, y, z])
            if centres and np.min(np.linalg.norm(np.asarray(centres) - c, axis=1) - np.asarray(radii)) < r:
                continue
            centres.append(c)
            radii.append(float(r))
            mus.append(float(rng.choice([1.0, 1.6, -1.0], p=[0.55, 0.3, 0.15])))  # two glasses and air pores
        pack = cls((h, w), radius, 1.0, np.asarray(centres, float).reshape(-1, 3),
                   np.asarray(radii, float), np.asarray(mus, float))
        peak = float(max(pack.line_integrals(a).max() for a in (0.0, 45.0, 90.0, 135.0)))
        scale = max_line_integral / max(peak, 1e-9)
        pack.cylinder_mu *= scale  # beads are in units of the resin, so they scale with it
        return pack

    def moved(self, du: float, dv: float = 0.0) -> SpherePack:
        """The same sample displaced by ``(du, dv)`` pixels."""
        return SpherePack(self.shape, self.cylinder_radius, self.cylinder_mu, self.centres, self.radii,
                          self.mus, (self.shift[0] + du, self.shift[1] + dv))

    def line_integrals(self, angle_deg: float, rows: slice | None = None) -> np.ndarray:
        """Exact line integrals ``(height, width)`` (or the selected ``rows``) at ``angle_deg``."""
        h, w = self.shape
        rows = rows or slice(0, h)
        v = np.arange(h, dtype=np.float64)[rows][:, None] + 0.5 - self.shift[1]
        u = np.arange(w, dtype=np.float64)[None, :] + 0.5 - w / 2 - self.shift[0]
        out = np.zeros((len(v), w), np.float64)
        out += self.cylinder_mu * _chord(u, self.cylinder_radius)  # the cylinder is the same on every row
        t = np.deg2rad(angle_deg)
        u0 = self.centres[:, 0] * np.cos(t) + self.centres[:, 1] * np.sin(t)
        for (uc, vc), r, mu in zip(np.stack([u0, self.centres[:, 2]], 1), self.radii, self.mus, strict=True):
            r0, r1 = np.searchsorted(v[:, 0], [vc - r, vc + r])
            c0, c1 = np.searchsorted(u[0], [uc - r, uc + r])
            if r1 <= r0 or c1 <= c0:
                continue
            d2 = (u[:, c0:c1] - uc) ** 2 + (v[r0:r1] - vc) ** 2
            out[r0:r1, c0:c1] += mu * self.cylinder_mu * _chord(np.sqrt(d2), r)
        return out.astype(np.float32)

    def sinogram(self, row: int, angles_deg: np.ndarray) -> np.ndarray:
        """Line integrals of one detector row at every angle, ``(n_angles, width)``."""
        return np.concatenate([self.line_integrals(a, slice(row, row + 1)) for a in angles_deg])


def offset_axis_pack(axis: float, width: int, height: int = 128, seed: int = 3) -> tuple[SpherePack, int]:
    """A bead pack for an offset-axis (half-acquisition) scan of a camera ``width`` columns wide whose axis is at
    column ``axis``: the pack (width 1) of a detector twice as wide as from the axis to the camera's far edge, its
    axis in that detector's middle, and the first of its columns the camera sees (``camera_rows``). The axis must
    lie on a half or whole column of that detector: ``2 * axis`` a whole number."""
    right = axis > (width - 1) / 2
    wide = int(round(2 * axis + 1)) if right else int(round(2 * (width - 1 - axis) + 1))
    return SpherePack.random((height, wide), seed), 0 if right else wide - width


def camera_rows(pack: SpherePack, start: int, width: int, rows: Sequence[int], angles_deg: np.ndarray,
                photons: float = 0.0, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Transmission ``(angles, width)`` of each detector row of ``rows`` that a camera sees from column ``start``
    of ``pack``'s detector on: exact, or with Poisson noise of ``photons`` per pixel of open beam."""
    rng = rng or np.random.default_rng(0)
    out = []
    for row in rows:
        t = np.exp(-pack.sinogram(row, angles_deg))[:, start:start + width]
        if photons:
            t = np.clip(rng.poisson(t * photons) / photons, 1 / photons, None)
        out.append(t)
    return out


def _chord(d: np.ndarray, r: float) -> np.ndarray:
    """Length of a ray at distance ``d`` from the centre of a sphere (or cylinder) of radius ``r``."""
    return 2.0 * np.sqrt(np.clip(r * r - d * d, 0.0, None))
