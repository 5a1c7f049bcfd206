"""A procedurally drawn aerial-scene data set for the demo and the tests (no download needed).

Each class is a small renderer that paints a scene as a function of continuous ground
coordinates ``(u, v)``; every image draws its own rotation, scale, offset, palette jitter,
global colour shift and sensor noise. Several classes share colours (sand: desert/beach;
water: lake/beach; asphalt: highway/parking/airport; greens: forest/farmland), so the layout
and texture have to be learnt, not just the mean colour.

Images depend only on ``(seed, class, index)``: the same seed gives byte-identical PNGs, and a
larger ``per_class`` only appends images.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from rsdml.errors import RsdmlError

Array = np.ndarray
Renderer = Callable[[np.random.Generator, Array, Array], Array]

_EXTENT = 64.0  # ground units across an image at scale 1 (independent of the pixel size)


# --------------------------------------------------------------------------- primitives
def _c(*rgb: float) -> Array:
    return np.array(rgb, dtype=np.float32)


def _jit(rng: np.random.Generator, colour: Array, amount: float = 0.06) -> Array:
    return np.clip(colour + rng.uniform(-amount, amount, 3).astype(np.float32), 0.0, 1.0)


def _pick(rng: np.random.Generator, palette: list[Array], amount: float = 0.05) -> Array:
    return _jit(rng, palette[int(rng.integers(len(palette)))], amount)


def _picks(rng: np.random.Generator, palette: list[Array], n: int, amount: float) -> Array:
    """``n`` jittered palette colours at once (a per-feature colour table)."""
    base = np.stack(palette)[rng.integers(len(palette), size=n)]
    return np.clip(base + rng.uniform(-amount, amount, (n, 3)), 0.0, 1.0).astype(np.float32)


def _lerp(a: Array, b: Array, t: Array) -> Array:
    """Blend colour ``a`` (or image) to ``b`` by weight map ``t`` (H, W)."""
    t = np.clip(t, 0.0, 1.0)[..., None]
    return a * (1.0 - t) + b * t


def _paint(img: Array, mask: Array, colour: Array) -> Array:
    img[mask] = colour if colour.ndim == 1 else colour[mask]
    return img


def _noise(rng: np.random.Generator, u: Array, v: Array, freq: float, octaves: int = 3) -> Array:
    """Fractal value noise in [0, 1] at ground coordinates (smoothstep-interpolated lattice)."""
    out = np.zeros_like(u)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        table = rng.random((64, 64), dtype=np.float32)
        x, y = u * freq, v * freq
        xi, yi = np.floor(x), np.floor(y)
        fx, fy = x - xi, y - yi
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        xi, yi = xi.astype(np.int64) % 64, yi.astype(np.int64) % 64
        x1, y1 = (xi + 1) % 64, (yi + 1) % 64
        top = table[yi, xi] * (1 - fx) + table[yi, x1] * fx
        bottom = table[y1, xi] * (1 - fx) + table[y1, x1] * fx
        out += amp * (top * (1 - fy) + bottom * fy)
        total += amp
        amp *= 0.5
        freq *= 2.0
    return out / total


def _cells(
    rng: np.random.Generator, u: Array, v: Array, cell: float, jitter: float = 0.8
) -> tuple[Array, Array, Array, Array]:
    """Worley noise on a jittered grid: distance to the nearest and second-nearest feature
    point, the nearest point's id (an int for per-feature random tables) and its offset."""
    size = 32
    pts = rng.uniform(0.5 - jitter / 2, 0.5 + jitter / 2, (size, size, 2)).astype(np.float32)
    gu, gv = u / cell, v / cell
    iu, iv = np.floor(gu).astype(np.int64), np.floor(gv).astype(np.int64)
    d1 = np.full(u.shape, np.inf, np.float32)
    d2 = np.full(u.shape, np.inf, np.float32)
    ident = np.zeros(u.shape, np.int64)
    du1 = np.zeros_like(u)
    dv1 = np.zeros_like(u)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            cu, cv = iu + di, iv + dj
            p = pts[cv % size, cu % size]
            du, dv = (cu + p[..., 0] - gu) * cell, (cv + p[..., 1] - gv) * cell
            d = np.hypot(du, dv)
            closer = d < d1
            d2 = np.where(closer, d1, np.minimum(d2, d))
            d1 = np.where(closer, d, d1)
            ident = np.where(closer, (cv % size) * size + (cu % size), ident)
            du1 = np.where(closer, du, du1)
            dv1 = np.where(closer, dv, dv1)
    return d1, d2, ident, np.stack([du1, dv1], -1)


def _ground(rng: np.random.Generator, u: Array, v: Array, a: Array, b: Array, freq=0.08) -> Array:
    """Mottled natural ground between colours ``a`` and ``b``."""
    return _lerp(a, b, _noise(rng, u, v, freq, 4) * 1.6 - 0.3)


# --------------------------------------------------------------------------- palettes
GREENS = [_c(0.16, 0.32, 0.12), _c(0.22, 0.38, 0.14), _c(0.12, 0.26, 0.10), _c(0.28, 0.40, 0.18)]
SAND = [_c(0.86, 0.74, 0.52), _c(0.80, 0.66, 0.44), _c(0.90, 0.80, 0.60), _c(0.76, 0.60, 0.40)]
WATER = [_c(0.08, 0.22, 0.40), _c(0.10, 0.30, 0.42), _c(0.06, 0.18, 0.30), _c(0.14, 0.34, 0.38)]
ASPHALT = [_c(0.30, 0.30, 0.31), _c(0.38, 0.37, 0.36), _c(0.24, 0.24, 0.26)]
ROOFS = [_c(0.62, 0.28, 0.20), _c(0.50, 0.50, 0.50), _c(0.40, 0.26, 0.20), _c(0.70, 0.68, 0.64),
         _c(0.30, 0.32, 0.36), _c(0.72, 0.42, 0.28)]
CARS = [_c(0.92, 0.92, 0.92), _c(0.08, 0.08, 0.09), _c(0.65, 0.66, 0.68), _c(0.70, 0.10, 0.10),
        _c(0.12, 0.22, 0.55), _c(0.45, 0.45, 0.48)]
CROPS = [_c(0.35, 0.50, 0.18), _c(0.62, 0.58, 0.26), _c(0.50, 0.38, 0.22), _c(0.24, 0.40, 0.14),
         _c(0.74, 0.66, 0.36), _c(0.42, 0.44, 0.20)]


# --------------------------------------------------------------------------- scenes
def _forest(rng, u, v):
    """Dense canopy: round crowns lit from one side, dark gaps, a few clearings."""
    cell = rng.uniform(3.0, 5.0)
    d1, _, ident, off = _cells(rng, u, v, cell)
    radius = cell * rng.uniform(0.55, 0.8)
    tone = rng.uniform(0.75, 1.2, 32 * 32).astype(np.float32)[ident]
    light = rng.uniform(0, 2 * np.pi)
    side = (off[..., 0] * np.cos(light) + off[..., 1] * np.sin(light)) / radius
    crown = np.clip(1.0 - (d1 / radius) ** 2, 0.0, 1.0)
    shade = (0.35 + 0.75 * crown * (0.8 + 0.4 * side)) * tone
    base = _pick(rng, GREENS)
    img = base[None, None, :] * shade[..., None]
    clearing = _noise(rng, u, v, 0.03, 2) > rng.uniform(0.68, 0.85)
    ground = _ground(rng, u, v, _c(0.45, 0.40, 0.26), _c(0.36, 0.44, 0.22), 0.2)
    return np.where(clearing[..., None], ground, img)


def _lake(rng, u, v):
    """Open water with a wind ripple pattern; sometimes a vegetated shore."""
    water = _pick(rng, WATER)
    a = rng.uniform(0, np.pi)
    ripple = np.sin(2 * np.pi * (u * np.cos(a) + v * np.sin(a)) / rng.uniform(2.0, 4.0)
                    + 6.0 * _noise(rng, u, v, 0.05, 2))
    depth = _noise(rng, u, v, 0.03, 2)
    img = water[None, None, :] * (0.8 + 0.35 * depth[..., None]) + 0.025 * ripple[..., None]
    if rng.random() < 0.75:  # shore
        n = rng.uniform(-1, 1, 2)
        n /= np.linalg.norm(n)
        edge = (u * n[0] + v * n[1]) / (_EXTENT / 2) + 0.6 * _noise(rng, u, v, 0.04, 3)
        land = edge > rng.uniform(0.9, 1.2)
        shore = _ground(rng, u, v, _pick(rng, GREENS), _c(0.40, 0.38, 0.24), 0.15)
        img = np.where(land[..., None], shore, img)
    return img


def _residential(rng, u, v):
    """Dense housing: a street grid, each block split into lots with gabled roofs."""
    period = rng.uniform(13.0, 18.0)
    street = rng.uniform(1.8, 2.8)
    phase = rng.uniform(0, period, 2)
    bu, bv = (u + phase[0]) % period, (v + phase[1]) % period
    block_u = np.floor((u + phase[0]) / period).astype(np.int64)
    block_v = np.floor((v + phase[1]) / period).astype(np.int64)
    inner = period - street
    lots_u = int(rng.integers(2, 4))
    lot_w = inner / lots_u
    lu, lv = bu - street, bv - street
    in_block = (lu >= 0) & (lv >= 0)
    idx_u = np.clip(np.floor(lu / lot_w), 0, lots_u - 1).astype(np.int64)
    idx_v = (lv >= inner / 2).astype(np.int64)
    pu, pv = lu - idx_u * lot_w, lv - idx_v * inner / 2  # position inside the lot
    margin = rng.uniform(0.35, 0.8)
    roof = in_block & (pu > margin) & (pu < lot_w - margin) & (pv > margin) & (pv < inner / 2 - margin)
    lot_id = ((block_u % 97) * 131 + (block_v % 89) * 17 + idx_u * 3 + idx_v) % 512
    roof_colours = _picks(rng, ROOFS, 512, 0.06)
    ridge_half = (pv < inner / 4).astype(np.float32)
    roof_rgb = roof_colours[lot_id] * (0.82 + 0.25 * ridge_half)[..., None]
    yard = _ground(rng, u, v, _c(0.30, 0.40, 0.20), _c(0.48, 0.46, 0.36), 0.3)
    img = np.where(in_block[..., None], yard, _pick(rng, ASPHALT)[None, None, :])
    return np.where(roof[..., None], roof_rgb, img)


def _farmland(rng, u, v):
    """Patchwork of fields, each with its own crop colour and ploughing direction."""
    d1, d2, ident, _ = _cells(rng, u, v, rng.uniform(16.0, 26.0), jitter=0.9)
    colours = _picks(rng, CROPS, 32 * 32, 0.05)
    angles = rng.uniform(0, np.pi, 32 * 32).astype(np.float32)[ident]
    periods = rng.uniform(1.2, 2.6, 32 * 32).astype(np.float32)[ident]
    stripes = np.sin(2 * np.pi * (u * np.cos(angles) + v * np.sin(angles)) / periods)
    img = colours[ident] * (0.9 + 0.1 * stripes)[..., None]
    border = (d2 - d1) < rng.uniform(0.6, 1.2)
    return np.where(border[..., None], _c(0.30, 0.28, 0.20)[None, None, :], img)


def _desert(rng, u, v):
    """Sand sea: asymmetric dune ridges bent by low-frequency noise, fine grain."""
    sand = _pick(rng, SAND)
    a = rng.uniform(0, np.pi)
    along = u * np.cos(a) + v * np.sin(a)
    across = -u * np.sin(a) + v * np.cos(a)
    wave = rng.uniform(7.0, 14.0)
    phase = (along + 8.0 * _noise(rng, across * 0.3, along * 0.3, 0.04, 2)) / wave
    saw = phase - np.floor(phase)  # gentle windward slope, steep dark lee face
    shade = np.where(saw < 0.8, 0.92 + 0.12 * saw / 0.8, 0.78)
    grain = _noise(rng, u, v, 0.6, 2)
    return sand[None, None, :] * (shade + 0.08 * (grain - 0.5))[..., None]


def _highway(rng, u, v):
    """A divided highway with dashed lanes across rural ground; often a crossing road."""
    img = _ground(rng, u, v, _pick(rng, GREENS), _c(0.52, 0.48, 0.34), 0.06)
    asphalt = _pick(rng, ASPHALT)
    roads = [(rng.uniform(0, np.pi), rng.uniform(-8, 8), rng.uniform(3.0, 4.5))]
    if rng.random() < 0.6:
        roads.append((roads[0][0] + rng.uniform(0.6, 2.5), rng.uniform(-12, 12), rng.uniform(1.5, 3.0)))
    for k, (a, off, half) in enumerate(roads):
        across = -u * np.sin(a) + v * np.cos(a) - off
        along = u * np.cos(a) + v * np.sin(a)
        img = _paint(img, np.abs(across) < half, asphalt)
        if k == 0:
            img = _paint(img, np.abs(across) < 0.35, _c(0.35, 0.42, 0.25))  # median strip
            dash = ((along % 5.0) < 2.5) & (np.abs(np.abs(across) - half / 2 - 0.2) < 0.15)
            img = _paint(img, dash, _c(0.92, 0.92, 0.88))
    return img


def _parking(rng, u, v):
    """Parking lot: back-to-back rows of stalls, most occupied by variously coloured cars."""
    img = np.broadcast_to(_pick(rng, ASPHALT), u.shape + (3,)).copy()
    stall_w, stall_d, aisle = rng.uniform(2.3, 2.9), rng.uniform(4.5, 5.5), rng.uniform(5.0, 7.0)
    period = 2 * stall_d + aisle
    pu, pv = u + rng.uniform(0, 50), v + rng.uniform(0, 50)
    rv = pv % period
    row = np.floor(pv / period).astype(np.int64)
    stall = np.floor(pu / stall_w).astype(np.int64)
    su = pu % stall_w
    in_stall = rv < 2 * stall_d
    sv = rv % stall_d
    side = (rv >= stall_d).astype(np.int64)
    line = in_stall & (su < 0.18)
    sid = ((row % 61) * 977 + (stall % 211) * 2 + side) % 4096
    occupied = rng.random(4096) < rng.uniform(0.55, 0.95)
    colours = _picks(rng, CARS, 4096, 0.04)
    car = in_stall & occupied[sid] & (su > 0.45) & (su < stall_w - 0.45) & (sv > 0.5) & (sv < stall_d - 0.4)
    img = _paint(img, line, _c(0.85, 0.85, 0.82))
    windshield = car & (np.abs(sv - stall_d * 0.38) < 0.45)
    img = np.where(car[..., None], colours[sid], img)
    return _paint(img, windshield, _c(0.12, 0.14, 0.18))


def _beach(rng, u, v):
    """Shoreline: dry and wet sand, a foam line and wave crests parallel to the shore."""
    a = rng.uniform(0, 2 * np.pi)
    across = -u * np.sin(a) + v * np.cos(a) - rng.uniform(-10, 10)
    along = u * np.cos(a) + v * np.sin(a)
    across = across + rng.uniform(1, 3) * np.sin(along / rng.uniform(6, 12)) + 4 * _noise(rng, u, v, 0.03, 2)
    sand, water = _pick(rng, SAND), _pick(rng, WATER)
    grain = _noise(rng, u, v, 0.5, 2)[..., None]
    land = sand[None, None, :] * (0.95 + 0.1 * grain)
    wet = _lerp(land, land * 0.75, 1.0 - np.clip(-across / 2.5, 0, 1))
    depth = np.clip(across / 20.0, 0, 1)
    sea = _lerp(_lerp(water, sand, 0.35)[None, None, :] * np.ones_like(land), water * 0.85, depth)
    crest = (np.sin(across * rng.uniform(0.8, 1.3) + 3 * _noise(rng, u, v, 0.08, 2)) > 0.92) & (across < 14)
    img = np.where((across < 0)[..., None], wet, sea)
    img = _paint(img, crest & (across > 0), _c(0.90, 0.92, 0.92))
    return _paint(img, np.abs(across - 0.4) < 0.5, _c(0.95, 0.95, 0.95))


def _airport(rng, u, v):
    """A long runway with centre-line dashes and threshold bars, a taxiway and an apron."""
    img = _ground(rng, u, v, _c(0.42, 0.48, 0.30), _c(0.55, 0.54, 0.42), 0.05)
    a = rng.uniform(0, np.pi)
    across = -u * np.sin(a) + v * np.cos(a) - rng.uniform(-6, 6)
    along = u * np.cos(a) + v * np.sin(a) + rng.uniform(-20, 20)
    half = rng.uniform(3.5, 5.0)
    img = _paint(img, np.abs(across) < half, _pick(rng, ASPHALT))
    img = _paint(img, (np.abs(across) < 0.25) & ((along % 6.0) < 3.0), _c(0.95, 0.95, 0.95))
    end = rng.uniform(10, 25)
    bars = (np.abs(along - end) < 2.0) & (np.abs(across) < half - 0.6) & ((across % 1.2) < 0.5)
    img = _paint(img, bars, _c(0.95, 0.95, 0.95))
    gap = rng.uniform(7, 10) * rng.choice([-1.0, 1.0])
    img = _paint(img, np.abs(across - gap) < 1.2, _pick(rng, ASPHALT))
    img = _paint(img, np.abs(across - gap) < 0.1, _c(0.85, 0.75, 0.20))  # yellow taxi line
    apron = np.sign(gap) * (across - gap) > 1.2 + rng.uniform(2, 6)
    return _paint(img, apron, _jit(rng, _c(0.62, 0.62, 0.60), 0.05))


def _storage_tanks(rng, u, v):
    """Tank farm: white/grey cylinders with a rim and a cast shadow on bare industrial ground."""
    img = _ground(rng, u, v, _c(0.55, 0.52, 0.46), _c(0.42, 0.40, 0.36), 0.1)
    cell = rng.uniform(9.0, 13.0)
    d1, _, ident, off = _cells(rng, u, v, cell, jitter=0.3)
    radius = cell * rng.uniform(0.25, 0.4) * rng.uniform(0.8, 1.2, 32 * 32).astype(np.float32)[ident]
    present = (rng.random(32 * 32) < 0.85)[ident]
    sun = rng.uniform(0, 2 * np.pi)
    sx, sy = np.cos(sun) * 1.2, np.sin(sun) * 1.2
    shadow = present & (np.hypot(off[..., 0] + sx, off[..., 1] + sy) < radius) & (d1 >= radius)
    img = np.where(shadow[..., None], img * 0.55, img)
    tank = present & (d1 < radius)
    top = _pick(rng, [_c(0.90, 0.90, 0.88), _c(0.75, 0.76, 0.74), _c(0.82, 0.80, 0.70)])
    ring = np.abs(d1 - radius * 0.85) < 0.25
    img = _paint(img, tank, top)
    return _paint(img, tank & ring, top * 0.7)


# Order matters: make_synthetic_scenes(n_classes=k) uses the first k.
SCENES: dict[str, Renderer] = {
    "forest": _forest,
    "lake": _lake,
    "dense_residential": _residential,
    "farmland": _farmland,
    "desert": _desert,
    "highway": _highway,
    "parking_lot": _parking,
    "beach": _beach,
    "airport": _airport,
    "storage_tanks": _storage_tanks,
}


# --------------------------------------------------------------------------- rendering
HUE_RANGE = np.deg2rad(25.0)  # season / sensor colour cast: rotation around the grey axis
SATURATION = (0.5, 1.25)
GREYSCALE_P = 0.15


def _hue_rotation(angle: float) -> Array:
    """RGB matrix rotating colours by ``angle`` around the grey axis (keeps grey grey)."""
    k = np.full(3, 1 / np.sqrt(3))
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return (np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx).astype(np.float32)


def _acquire(rng: np.random.Generator, img: Array) -> Array:
    """Acquisition conditions: colour cast, saturation, contrast stretch, sensor gain/offset,
    haze and noise; strong enough that mean colour and brightness alone are weak cues."""
    img = img @ _hue_rotation(rng.uniform(-HUE_RANGE, HUE_RANGE)).T
    lum = img.mean(axis=2, keepdims=True)
    sat = 0.0 if rng.random() < GREYSCALE_P else rng.uniform(*SATURATION)
    # Luminance stretched towards a random target mean/contrast, as image products are
    # (gain bounded so flat scenes are not blown up); chroma only scaled by the saturation.
    gain = np.clip(rng.uniform(0.08, 0.18) / (lum.std() + 1e-3), 0.6, 2.0)
    new_lum = (lum - lum.mean()) * gain + rng.uniform(0.35, 0.6)
    img = new_lum + (img - lum) * sat
    img = img * rng.uniform(0.94, 1.06, 3) + rng.uniform(-0.04, 0.04, 3)
    haze = np.float32(rng.uniform(0.0, 0.3))
    img = img * (1 - haze) + _c(0.7, 0.72, 0.75) * haze
    return img + rng.normal(0.0, rng.uniform(0.01, 0.04), img.shape).astype(np.float32)


def render_scene(name: str, seed: int, index: int, size: int = 64) -> np.ndarray:
    """One image of class ``name`` as an ``size x size x 3`` uint8 array (deterministic)."""
    if name not in SCENES:
        raise RsdmlError(f"unknown synthetic scene {name!r}; choose one of {', '.join(SCENES)}")
    class_no = list(SCENES).index(name)
    rng = np.random.default_rng(np.random.SeedSequence([seed, class_no, index]))
    scale = rng.uniform(0.75, 1.35)
    theta = rng.uniform(0, 2 * np.pi)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    x, y = np.meshgrid(grid * _EXTENT / scale, grid * _EXTENT / scale)
    ox, oy = rng.uniform(-8, 8, 2)
    u = (np.cos(theta) * x - np.sin(theta) * y + ox).astype(np.float32)
    v = (np.sin(theta) * x + np.cos(theta) * y + oy).astype(np.float32)
    img = np.asarray(SCENES[name](rng, u, v), dtype=np.float32)
    img = _acquire(rng, img)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_synthetic_scenes(
    root: str | Path, *, n_classes: int = 8, per_class: int = 60, size: int = 64, seed: int = 0
) -> list[str]:
    """Write ``per_class`` PNGs for each of ``n_classes`` scene classes under ``root/<class>/``.

    Returns the class names sorted (the order a folder data set uses). Existing files of the
    same names are overwritten; nothing else in ``root`` is touched.
    """
    if not 2 <= n_classes <= len(SCENES):
        raise RsdmlError(f"n_classes={n_classes} must be between 2 and {len(SCENES)}")
    if per_class < 1:
        raise RsdmlError(f"per_class={per_class} must be at least 1")
    if size < 16:
        raise RsdmlError(f"size={size} is too small; use at least 16 pixels")
    root = Path(root)
    names = list(SCENES)[:n_classes]
    for name in names:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(render_scene(name, seed, i, size)).save(
                folder / f"{name}_{i:04d}.png", optimize=False
            )
    return sorted(names)
