"""Synthetic chest-radiograph phantoms: seeded PA-chest-like images with findings and masks.

The phantoms are for tests and demos only: they are not real patients and are always
named as synthetic when written to disk (see :mod:`cxrlab.data.synthetic_layouts`).

Geometry lives in normalized coordinates: ``x`` (columns) and ``y`` (rows) run from -1
to 1 across the image, ``y`` downwards. A random similarity transform (scale, rotation,
shift) maps the image grid to anatomical coordinates ``(u, v)`` in which every structure
is defined. Radiological convention: the patient's right is on the image left, so the
heart lies mostly right of the midline and the gastric bubble under the image-right
hemidiaphragm. Intensities follow a radiograph: air dark, soft tissue grey, bone bright.

Findings (each with a boolean mask in image orientation):

- ``cardiomegaly``: heart widened to a cardiothoracic ratio (CTR) of 0.55-0.66 (normal
  hearts 0.38-0.47); mask = heart.
- ``effusion``: basal fluid opacity whose upper border rises laterally (meniscus) and
  blunts the costophrenic angle; one side or both; mask = fluid inside the lung field.
- ``pneumothorax``: the lung collapses toward the hilum, leaving an apical/lateral rim
  that is darker and free of lung markings, bounded by a thin bright pleural line;
  mask = the rim.
- ``consolidation``: one dense, patchy focal opacity in one lung (optional air
  bronchograms); mask = the opacity.
- ``edema``: bilateral symmetric perihilar haze (batwing) with blurred vessels.
- ``atelectasis``: a plate-like band or a medial basal wedge with volume loss (elevated
  hemidiaphragm, mediastinum pulled toward the side).
- ``nodule``: one or two small round opacities.
- ``infiltrates``: patchy opacities in both lungs, peripheral and basal (ARDS-like).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from cxrlab.errors import ConfigError

FINDINGS = ("cardiomegaly", "effusion", "pneumothorax", "consolidation", "edema",
            "atelectasis", "nodule", "infiltrates")

NORMAL_CTR = (0.38, 0.47)
CARDIOMEGALY_CTR = (0.55, 0.66)
MIN_SIZE = 32

_F32 = np.float32


@dataclass
class Phantom:
    """One synthetic radiograph.

    Attributes:
        image: ``uint8`` (8 bits) or ``uint16`` (more bits) array ``(S, S)``; air dark.
        masks: Finding name -> bool ``(S, S)`` mask, one entry per finding present.
        findings: The findings rendered, in :data:`FINDINGS` order (empty = normal).
        anatomy: Bool ``(S, S)`` masks of the normal anatomy: ``"lungs"`` (both lung
            fields, heart excluded), ``"heart"``, ``"body"``.
        severity: Finding name -> severity in ``[0, 1]`` (0 faint, 1 marked).
        ctr: Cardiothoracic ratio the heart was drawn with (in anatomical coordinates).
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    findings: tuple[str, ...]
    anatomy: dict[str, np.ndarray] = field(default_factory=dict)
    severity: dict[str, float] = field(default_factory=dict)
    ctr: float = float("nan")


def check_findings(findings: Iterable[str]) -> tuple[str, ...]:
    """Validate finding names and return them in :data:`FINDINGS` order.

    ``"normal"`` is accepted and means no finding; a single string is one name.

    Raises:
        ConfigError: A name is not in :data:`FINDINGS`.
    """
    names = set()
    for name in [findings] if isinstance(findings, str) else findings:
        key = str(name).strip().lower()
        if key == "normal":
            continue
        if key not in FINDINGS:
            raise ConfigError("findings", f"unknown finding {name!r}; expected one of "
                                          f"{', '.join(FINDINGS)} or 'normal'")
        names.add(key)
    return tuple(f for f in FINDINGS if f in names)


@functools.lru_cache(maxsize=8)
def _base_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = ((np.arange(size, dtype=_F32) + 0.5) / size * 2.0 - 1.0).astype(_F32)
    x, y = np.meshgrid(axis, axis)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _ramp(signed_dist: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside indicator: 1 inside (negative distance), 0 outside, linear over ``edge``."""
    return np.clip(0.5 - signed_dist * (1.0 / edge), 0.0, 1.0)


def _ellipse_dist(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float,
                  angle: float = 0.0) -> np.ndarray:
    """Approximate signed distance to an ellipse (negative inside)."""
    du, dv = u - _F32(cu), v - _F32(cv)
    if angle:
        c, s = _F32(np.cos(angle)), _F32(np.sin(angle))
        du, dv = c * du + s * dv, c * dv - s * du
    q = np.sqrt((du * _F32(1.0 / a)) ** 2 + (dv * _F32(1.0 / b)) ** 2)
    return (q - 1.0) * _F32(min(a, b))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """Unit-scale band-limited noise of ``shape``: ``cells`` random values per side, upsampled."""
    coarse = rng.standard_normal((cells, cells), dtype=_F32)
    if not shape[0] or not shape[1]:
        return np.zeros(shape, _F32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _segment_dist(u: np.ndarray, v: np.ndarray, p0: tuple[float, float],
                  p1: tuple[float, float]) -> np.ndarray:
    """Distance from every point to the segment ``p0``-``p1``."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    length2 = du * du + dv * dv
    t = np.clip(((u - _F32(p0[0])) * _F32(du) + (v - _F32(p0[1])) * _F32(dv))
                * _F32(1.0 / length2), 0.0, 1.0)
    return np.sqrt((u - _F32(p0[0]) - t * _F32(du)) ** 2 + (v - _F32(p0[1]) - t * _F32(dv)) ** 2)


@dataclass
class _Lung:
    side: int          # -1 image left (patient right), +1 image right (patient left)
    cu: float
    cv: float
    a: float
    b: float
    dome: float        # v of the hemidiaphragm's top
    dome_curve: float  # how much lower the lateral costophrenic angle lies

    def dome_v(self, u: np.ndarray) -> np.ndarray:
        lateral = (u - _F32(self.cu)) * _F32(1.0 / self.a)
        return _F32(self.dome) + _F32(self.dome_curve) * lateral * lateral

    def lateral(self, u: np.ndarray) -> np.ndarray:
        """0 at the medial edge of the lung, 1 at its lateral edge."""
        return np.clip((self.side * (u - _F32(self.cu)) + _F32(self.a)) * _F32(0.5 / self.a),
                       0.0, 1.0)


@dataclass
class _Params:
    angle: float
    scale: float
    shift: tuple[float, float]
    body_half_width: float
    lungs: tuple[_Lung, _Lung]
    heart: tuple[float, float, float, float, float]   # cu, cv, a, b, angle
    ctr: float
    mediastinal_shift: float
    severity: dict[str, float]
    sides: dict[str, int]


def _sample_params(rng: np.random.Generator, findings: tuple[str, ...],
                   severity: Mapping[str, float] | None) -> _Params:
    sev: dict[str, float] = {}
    for name in findings:
        given = None if severity is None else severity.get(name)
        sev[name] = float(np.clip(given, 0.0, 1.0)) if given is not None \
            else float(0.25 + 0.75 * rng.beta(2.0, 1.4))
    sides = {name: int(rng.choice((-1, 1))) for name in
             ("effusion", "pneumothorax", "consolidation", "atelectasis")}
    half_sep = rng.uniform(0.36, 0.41)
    lungs = []
    for side in (-1, 1):
        a = rng.uniform(0.27, 0.31)
        b = rng.uniform(0.60, 0.68)
        cv = rng.uniform(-0.12, -0.05)
        dome = cv + b * rng.uniform(0.55, 0.62) + (0.04 if side == 1 else 0.0)
        if "atelectasis" in findings and sides["atelectasis"] == side:
            dome -= 0.12 + 0.08 * sev["atelectasis"]
        lungs.append(_Lung(side, side * half_sep + rng.uniform(-0.015, 0.015), cv, a, b,
                           dome, rng.uniform(0.10, 0.15)))
    left, right = lungs
    thorax_width = (right.cu + right.a) - (left.cu - left.a)
    lo, hi = CARDIOMEGALY_CTR if "cardiomegaly" in findings else NORMAL_CTR
    ctr = rng.uniform(lo, hi)
    half_extent = ctr * thorax_width / 2.0
    heart_angle = np.deg2rad(rng.uniform(20.0, 35.0))
    aspect = rng.uniform(0.74, 0.86)
    ha = half_extent / np.sqrt(np.cos(heart_angle) ** 2 + (aspect * np.sin(heart_angle)) ** 2)
    hb = ha * aspect
    med_shift = 0.0
    if "atelectasis" in findings:
        med_shift = sides["atelectasis"] * 0.035 * (0.5 + sev["atelectasis"])
    left_border = -(0.08 + 0.25 * half_extent) + med_shift
    heart_v = min(left.dome, right.dome) - 0.55 * hb + rng.uniform(-0.02, 0.02)
    heart = (left_border + half_extent, heart_v, ha, hb, heart_angle)
    return _Params(
        angle=np.deg2rad(rng.uniform(-5.0, 5.0)), scale=rng.uniform(0.9, 1.04),
        shift=(rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)),
        body_half_width=rng.uniform(0.84, 0.95), lungs=(left, right), heart=heart,
        ctr=float(ctr), mediastinal_shift=med_shift, severity=sev, sides=sides)


def _coordinates(size: int, p: _Params) -> tuple[np.ndarray, np.ndarray]:
    x, y = _base_grid(size)
    c, s = _F32(np.cos(p.angle)), _F32(np.sin(p.angle))
    xs, ys = x - _F32(p.shift[0]), y - _F32(p.shift[1])
    inv = _F32(1.0 / p.scale)
    return (c * xs + s * ys) * inv, (c * ys - s * xs) * inv


def generate_phantom(rng: np.random.Generator, size: int, findings: Iterable[str] = (), *,
                     bits: int = 8, severity: Mapping[str, float] | None = None) -> Phantom:
    """Render one chest-radiograph-like phantom.

    Args:
        rng: Source of every random choice (anatomy, findings, noise); the same state
            gives the same image.
        size: Side of the square image in pixels (at least 32).
        findings: Names from :data:`FINDINGS` (``"normal"`` or empty = no finding).
        bits: 8 gives ``uint8``; 9-16 give ``uint16`` scaled to ``2**bits - 1``.
        severity: Optional finding -> severity in ``[0, 1]``; missing ones are drawn
            (mostly clearly visible, sometimes faint).

    Returns:
        The :class:`Phantom` with its image, finding masks and anatomy masks.

    Raises:
        ConfigError: Unknown finding, size below 32 or bits outside 8-16.
    """
    names = check_findings(findings)
    if int(size) != size or size < MIN_SIZE:
        raise ConfigError("size", f"phantom size must be an integer >= {MIN_SIZE}, got {size!r}")
    if int(bits) != bits or not 8 <= bits <= 16:
        raise ConfigError("bits", f"bits must be an integer from 8 to 16, got {bits!r}")
    size = int(size)
    p = _sample_params(rng, names, severity)
    u, v = _coordinates(size, p)
    edge = 3.0 / size / p.scale          # about 1.5 pixels in anatomical units
    render = _Renderer(rng, size, u, v, edge, p)
    density = render.anatomy()
    masks: dict[str, np.ndarray] = {}
    for name in names:
        masks[name] = getattr(render, name)(density)
    render.markings_layer(density)
    image = _acquire(rng, density, size, bits)
    anatomy = {"lungs": render.lung_field > 0.5, "heart": render.heart > 0.5,
               "body": render.body > 0.5}
    return Phantom(image=image, masks=masks, findings=names, anatomy=anatomy,
                   severity={k: p.severity[k] for k in names}, ctr=p.ctr)


def _acquire(rng: np.random.Generator, density: np.ndarray, size: int, bits: int) -> np.ndarray:
    """Detector response: blur, gain, gamma, noise and quantization."""
    img = cv2.GaussianBlur(density, (0, 0), 0.35 + size / 512.0)
    img *= _F32(rng.uniform(0.9, 1.1))
    img += _F32(rng.uniform(-0.03, 0.03))
    np.clip(img, 0.0, 1.0, out=img)
    img = cv2.pow(img, float(rng.uniform(0.85, 1.2)))
    noise = rng.random(img.shape, dtype=_F32)
    noise -= _F32(0.5)
    img += noise * _F32(rng.uniform(0.03, 0.07))     # uniform noise, sd 0.009-0.02
    top = (1 << bits) - 1
    img *= _F32(top)
    img += _F32(0.5)
    np.clip(img, 0.0, top, out=img)
    return img.astype(np.uint8 if bits == 8 else np.uint16)


Block = tuple[slice, slice]


class _Renderer:
    """Builds the density map of one phantom; one method per finding returns its mask.

    Every structure is computed only inside the pixel block that covers its anatomical
    bounding box (see :meth:`_block`), which keeps a 256 px phantom at a few ms.
    """

    def __init__(self, rng: np.random.Generator, size: int, u: np.ndarray, v: np.ndarray,
                 edge: float, p: _Params) -> None:
        self.rng, self.size, self.u, self.v, self.edge, self.p = rng, size, u, v, edge, p
        self.lung_sides: dict[int, np.ndarray] = {}
        self.lung_blocks: dict[int, Block] = {}
        self.marking_gain = np.ones((size, size), dtype=_F32)
        self.marking_blur = 0.0

    def _block(self, u0: float, u1: float, v0: float, v1: float) -> tuple[Block, np.ndarray,
                                                                          np.ndarray]:
        """Pixel block covering the anatomical box ``[u0, u1] x [v0, v1]``, with its u, v."""
        p, half = self.p, self.size / 2.0
        c, s = math.cos(p.angle), math.sin(p.angle)
        corners = [(u, v) for u in (u0, u1) for v in (v0, v1)]
        cols = [(p.scale * (c * u - s * v) + p.shift[0] + 1.0) * half - 0.5 for u, v in corners]
        rows = [(p.scale * (s * u + c * v) + p.shift[1] + 1.0) * half - 0.5 for u, v in corners]

        def clamp(x: float) -> int:
            return min(max(int(x), 0), self.size)

        sl = (slice(clamp(min(rows) - 3), clamp(max(rows) + 4)),
              slice(clamp(min(cols) - 3), clamp(max(cols) + 4)))
        return sl, self.u[sl], self.v[sl]

    # ------------------------------------------------------------------ anatomy
    def anatomy(self) -> np.ndarray:
        u, v, p, edge, size = self.u, self.v, self.p, self.edge, self.size
        bu = np.square(u * _F32(1.0 / p.body_half_width))
        bv = np.square((v - _F32(0.25)) * _F32(0.8))
        self.body = _ramp((np.sqrt(np.sqrt(bu * bu + bv * bv)) - 1.0) * _F32(0.5), edge)
        density = _F32(0.42) * self.body
        density += _F32(0.03)

        hu, hv, ha, hb, hang = p.heart
        r = max(ha, hb)
        self.heart = np.zeros((size, size), _F32)
        sl, bu, bv = self._block(hu - r, hu + r, hv - r, hv + r)
        self.heart[sl] = _ramp(_ellipse_dist(bu, bv, hu, hv, ha, hb, hang), edge)
        density[sl] += _F32(0.05) * self.heart[sl]
        occluder = self.heart.copy()
        ku = 0.09 + p.mediastinal_shift
        sl, bu, bv = self._block(ku - 0.08, ku + 0.08, -0.47, -0.33)
        np.maximum(occluder[sl], _ramp(_ellipse_dist(bu, bv, ku, -0.40, 0.075, 0.06), edge),
                   out=occluder[sl])

        self.lung_field = np.zeros((size, size), _F32)
        for lung in p.lungs:
            sl, bu, bv = self._block(lung.cu - lung.a, lung.cu + lung.a, lung.cv - lung.b,
                                     min(lung.cv + lung.b, lung.dome + lung.dome_curve))
            inside = _ramp(_ellipse_dist(bu, bv, lung.cu, lung.cv, lung.a, lung.b), edge)
            inside *= _ramp(bv - lung.dome_v(bu), edge)
            inside *= _ramp(_F32(0.06) - lung.side * (bu - _F32(p.mediastinal_shift)), edge)
            inside *= 1.0 - occluder[sl]
            full = np.zeros((size, size), _F32)
            full[sl] = inside
            self.lung_sides[lung.side], self.lung_blocks[lung.side] = full, sl
            self.lung_field[sl] += inside
            density[sl] -= _F32(0.29) * inside
        left, right = p.lungs
        self.thorax_block = self._block(left.cu - left.a - 0.08, right.cu + right.a + 0.08,
                                        min(left.cv - left.b, right.cv - right.b) - 0.08,
                                        max(left.dome, right.dome) + 0.25)[0]

        # abdomen (liver/spleen) below the hemidiaphragms, gastric bubble under the left one
        sl, bu, bv = self._block(-1.5, 1.5, min(left.dome, right.dome) - 0.02, 2.0)
        diaphragm = np.minimum(left.dome_v(bu), right.dome_v(bu))
        density[sl] += _F32(0.05) * _ramp(diaphragm - bv, edge) * self.body[sl]
        gu, gv = right.cu - 0.02, right.dome + 0.11
        sl, bu, bv = self._block(gu - 0.09, gu + 0.09, gv - 0.06, gv + 0.06)
        density[sl] -= _F32(0.14) * _ramp(_ellipse_dist(bu, bv, gu, gv, 0.08, 0.045), edge)
        tu = 0.4 * p.mediastinal_shift
        sl, bu, bv = self._block(tu - 0.05, tu + 0.05, -1.5, -0.3)
        trachea = _ramp(np.abs(bu - _F32(tu)) - _F32(0.032), edge)
        density[sl] -= _F32(0.11) * trachea * _ramp(bv + _F32(0.35), 3 * edge)
        self._bones(density)
        return density

    def _bones(self, density: np.ndarray) -> None:
        p, edge = self.p, self.edge
        sl = self.thorax_block
        bu, bv = self.u[sl], self.v[sl]
        thorax = np.maximum(*(_ramp(_ellipse_dist(bu, bv, lung.cu, lung.cv, lung.a, lung.b)
                                    - _F32(0.05), 6 * edge) for lung in p.lungs))
        width = np.abs(bu)
        # posterior ribs: arcs from the spine running laterally and downwards
        phase = (bv - _F32(0.30) * width * width - _F32(0.06) * width) * _F32(1 / 0.125)
        x = (phase - np.floor(phase)) * _F32(1 / 0.36)
        bones = np.maximum(x * (1.0 - x), 0.0) * _F32(4 * 0.085)
        # anterior ribs, fainter, curving the other way
        phase = (bv + _F32(0.22) * width * width) * _F32(1 / 0.17)
        x = (phase - np.floor(phase)) * _F32(1 / 0.22)
        bones += np.maximum(x * (1.0 - x), 0.0) * _F32(4 * 0.03)
        bones *= thorax
        bones *= _ramp(_F32(0.07) - width, 2 * edge)
        density[sl] += bones
        sl, bu, bv = self._block(-0.1, 0.1, -1.5, 1.5)
        spine = _ramp(np.abs(bu) - _F32(0.068), edge)
        spine *= _F32(0.85) + _F32(0.15) * np.cos(bv * _F32(2 * np.pi / 0.11))
        density[sl] += _F32(0.26) * spine * self.body[sl]
        for side in (-1, 1):
            p0, p1 = (side * 0.06, -0.70), (side * 0.58, -0.84)
            sl, bu, bv = self._block(min(p0[0], p1[0]) - 0.04, max(p0[0], p1[0]) + 0.04,
                                     -0.9, -0.64)
            density[sl] += _F32(0.14) * _ramp(_segment_dist(bu, bv, p0, p1) - _F32(0.026), edge)

    def markings_layer(self, density: np.ndarray) -> None:
        """Add vessel-like lung markings, strongest near the hila, removed where gain is 0."""
        sl = self.thorax_block
        bu, bv = self.u[sl], self.v[sl]
        shape = bu.shape
        if not bu.size:
            return
        coarse = self.rng.standard_normal((22, 22), dtype=_F32)
        noise = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
        ridges = np.clip(1.0 - np.abs(noise) * _F32(2.2), 0.0, 1.0)
        ridges = ridges * ridges * ridges
        if self.marking_blur > 0:
            ridges = cv2.GaussianBlur(ridges, (0, 0), self.marking_blur * self.size / 64.0)
        hilum = cv2.exp(-((np.abs(bu) - _F32(0.2)) ** 2 + (bv + _F32(0.02)) ** 2) * _F32(5.0))
        ridges *= _F32(0.075 * 0.45) + _F32(0.075 * 0.55) * hilum
        ridges *= self.lung_field[sl]
        ridges *= self.marking_gain[sl]
        density[sl] += ridges

    # ------------------------------------------------------------------ helpers
    def _lung_of(self, side: int) -> _Lung:
        return self.p.lungs[0] if side == -1 else self.p.lungs[1]

    def _point_in_lung(self, side: int, lateral: tuple[float, float],
                       vertical: tuple[float, float]) -> tuple[float, float]:
        """A random point in the lung field of ``side`` (fractions of the lung's axes)."""
        lung = self._lung_of(side)
        hu, hv, ha, hb, hang = self.p.heart
        for _ in range(50):
            pu = lung.cu + side * lung.a * self.rng.uniform(*lateral)
            pv = lung.cv + lung.b * self.rng.uniform(*vertical)
            point_u, point_v = np.array([pu], _F32), np.array([pv], _F32)
            in_heart = _ellipse_dist(point_u, point_v, hu, hv, ha + 0.04, hb + 0.04, hang)[0] < 0
            in_lung = _ellipse_dist(point_u, point_v, lung.cu, lung.cv, lung.a, lung.b)[0] < -0.04
            if in_lung and not in_heart and pv < float(lung.dome_v(point_u)[0]) - 0.08:
                return pu, pv
        return lung.cu, lung.cv - 0.3 * lung.b

    def _mask(self, sl: Block, soft: np.ndarray) -> np.ndarray:
        """Full-size mask of ``soft > 0.5`` in block ``sl``; never empty (strongest pixel)."""
        mask = np.zeros((self.size, self.size), bool)
        block = soft > 0.5
        if not block.any() and soft.size:
            block.flat[int(np.argmax(soft))] = True
        mask[sl] = block
        return mask

    # ------------------------------------------------------------------ findings
    def cardiomegaly(self, density: np.ndarray) -> np.ndarray:
        """Heart already drawn wide in :func:`_sample_params`; its mask is the finding."""
        return self._mask((slice(None), slice(None)), self.heart)

    def effusion(self, density: np.ndarray) -> np.ndarray:
        sev = self.p.severity["effusion"]
        bilateral = self.rng.random() < 0.35
        mask = np.zeros((self.size, self.size), bool)
        for s in (-1, 1) if bilateral else (self.p.sides["effusion"],):
            lung, sl = self._lung_of(s), self.lung_blocks[s]
            bu, bv = self.u[sl], self.v[sl]
            height = (0.20 + 0.22 * sev) * lung.b * 1.2
            lateral = lung.lateral(bu)
            surface = _F32(lung.dome + 0.05 - height) - _F32(0.16) * lateral * lateral
            fluid = _ramp(surface - bv, 0.05 + 2 * self.edge) * self.lung_sides[s][sl]
            density[sl] += _F32(0.27 + 0.06 * sev) * fluid
            self.marking_gain[sl] *= 1.0 - fluid
            mask |= self._mask(sl, fluid)
        return mask

    def pneumothorax(self, density: np.ndarray) -> np.ndarray:
        sev = self.p.severity["pneumothorax"]
        lung = self._lung_of(self.p.sides["pneumothorax"])
        sl = self.lung_blocks[lung.side]
        bu, bv = self.u[sl], self.v[sl]
        factor = 0.84 - 0.22 * sev
        anchor_u, anchor_v = lung.cu - lung.side * 0.5 * lung.a, lung.cv + 0.35 * lung.b
        back_u = _F32(anchor_u) + (bu - _F32(anchor_u)) * _F32(1.0 / factor)
        back_v = _F32(anchor_v) + (bv - _F32(anchor_v)) * _F32(1.0 / factor)
        collapsed_dist = _ellipse_dist(back_u, back_v, lung.cu, lung.cv, lung.a, lung.b)
        collapsed_dist *= _F32(factor)
        collapsed = _ramp(collapsed_dist, self.edge)
        field_side = self.lung_sides[lung.side][sl]
        rim = field_side * (1.0 - collapsed)
        density[sl] -= _F32(0.07 + 0.03 * sev) * rim
        density[sl] += _F32(0.03) * collapsed * field_side
        line = cv2.exp(-np.square(collapsed_dist * _F32(1.0 / (1.2 * self.edge))))
        density[sl] += _F32(0.12) * line * field_side
        self.marking_gain[sl] *= 1.0 - rim
        return self._mask(sl, rim)

    def consolidation(self, density: np.ndarray) -> np.ndarray:
        sev = self.p.severity["consolidation"]
        side = self.p.sides["consolidation"]
        sl = self.lung_blocks[side]
        bu, bv = self.u[sl], self.v[sl]
        pu, pv = self._point_in_lung(side, (-0.1, 0.45), (-0.55, 0.15))
        ra = self.rng.uniform(0.15, 0.21) * (0.85 + 0.3 * sev)
        rb = self.rng.uniform(0.13, 0.2) * (0.85 + 0.3 * sev)
        dist = _ellipse_dist(bu, bv, pu, pv, ra, rb, self.rng.uniform(-0.6, 0.6))
        patchy = dist * _F32(1.0 / min(ra, rb)) - _F32(0.3) * _smooth_noise(self.rng, bu.shape, 6)
        opacity = np.clip(_F32(0.5) - patchy * _F32(3.0), 0.0, 1.0) * self.lung_sides[side][sl]
        density[sl] += _F32(0.32 + 0.10 * sev) * opacity
        if self.rng.random() < 0.5:
            noise = _smooth_noise(self.rng, bu.shape, 8)
            bronchi = np.square(np.clip(1.0 - np.abs(noise) * _F32(3.0), 0.0, 1.0))
            density[sl] -= _F32(0.10) * bronchi * np.clip(opacity * 2.0 - 1.0, 0.0, 1.0)
        self.marking_gain[sl] *= 1.0 - opacity
        return self._mask(sl, opacity)

    def edema(self, density: np.ndarray) -> np.ndarray:
        sev = self.p.severity["edema"]
        sl = self.thorax_block
        bu, bv = self.u[sl], self.v[sl]
        hv = _F32(self.p.lungs[0].cv + 0.08)
        haze = np.zeros_like(bu)
        for side in (-1, 1):
            hu = _F32(side * 0.2 + self.p.mediastinal_shift)
            np.maximum(haze, cv2.exp(-(np.square((bu - hu) * _F32(1 / 0.34))
                                       + np.square((bv - hv) * _F32(1 / 0.46)))), out=haze)
        haze *= self.lung_field[sl]
        density[sl] += _F32(0.16 + 0.12 * sev) * haze
        self.marking_blur = 1.0
        self.marking_gain[sl] *= _F32(1.4)
        return self._mask(sl, haze + _F32(0.05))

    def atelectasis(self, density: np.ndarray) -> np.ndarray:
        sev = self.p.severity["atelectasis"]
        side = self.p.sides["atelectasis"]
        lung, sl = self._lung_of(side), self.lung_blocks[side]
        bu, bv = self.u[sl], self.v[sl]
        if self.rng.random() < 0.6:     # plate-like band in the lower zone
            pu = lung.cu + side * lung.a * self.rng.uniform(-0.1, 0.3)
            pv = lung.dome - self.rng.uniform(0.14, 0.26)
            angle = np.deg2rad(self.rng.uniform(-22.0, 12.0)) * side
            across = (bu - _F32(pu)) * _F32(-np.sin(angle)) + (bv - _F32(pv)) * _F32(np.cos(angle))
            opacity = _ramp(np.abs(across) - _F32(0.034 + 0.024 * sev), self.edge)
        else:                            # collapsed lower lobe: medial basal wedge
            apex_v = lung.cv + 0.05 * lung.b
            depth = np.clip((bv - _F32(apex_v)) * _F32(1.0 / max(lung.dome - apex_v, 0.1)), 0, 1)
            opacity = _ramp((lung.lateral(bu) - _F32(0.5 + 0.15 * sev) * depth) * _F32(0.4),
                            self.edge)
            opacity *= _ramp(_F32(apex_v) - bv, self.edge)
        opacity *= self.lung_sides[side][sl]
        density[sl] += _F32(0.28 + 0.10 * sev) * opacity
        self.marking_gain[sl] *= 1.0 - 0.7 * opacity
        return self._mask(sl, opacity)

    def nodule(self, density: np.ndarray) -> np.ndarray:
        sev = self.p.severity["nodule"]
        mask = np.zeros((self.size, self.size), bool)
        side = int(self.rng.choice((-1, 1)))
        for side in (side,) if self.rng.random() < 0.7 else (side, -side):   # one per lung
            pu, pv = self._point_in_lung(side, (-0.2, 0.6), (-0.55, 0.3))
            radius = self.rng.uniform(0.05, 0.065) + 0.025 * sev
            r = radius + 0.02
            sl, bu, bv = self._block(pu - r, pu + r, pv - r, pv + r)
            dist = np.sqrt(np.square(bu - _F32(pu)) + np.square(bv - _F32(pv)))
            soft = _ramp(dist - _F32(radius), self.edge)
            density[sl] += _F32(0.24 + 0.1 * sev) * soft
            mask |= self._mask(sl, soft)
        return mask

    def infiltrates(self, density: np.ndarray) -> np.ndarray:
        sev = self.p.severity["infiltrates"]
        coverage = 0.22 + 0.18 * sev
        mask = np.zeros((self.size, self.size), bool)
        for side in (-1, 1):
            lung, sl = self._lung_of(side), self.lung_blocks[side]
            bu, bv = self.u[sl], self.v[sl]
            noise = _smooth_noise(self.rng, bu.shape, 5)
            noise += _F32(0.5) * _smooth_noise(self.rng, bu.shape, 9)
            score = noise + _F32(0.9) * lung.lateral(bu) + _F32(0.6) * (bv - _F32(lung.cv))
            inside = self.lung_sides[side][sl]
            values = score[inside > 0.5]
            if values.size == 0:
                continue
            threshold = _F32(np.quantile(values, 1.0 - coverage))
            opacity = np.clip((score - threshold) * _F32(2.5), 0.0, 1.0) * inside
            density[sl] += _F32(0.15 + 0.08 * sev) * opacity
            self.marking_gain[sl] *= 1.0 - 0.6 * opacity
            mask |= self._mask(sl, opacity)
        return mask
