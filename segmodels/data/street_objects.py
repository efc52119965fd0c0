"""Things that stand in a generated street: vehicles, two-wheelers with riders, people, poles with traffic lights
and signs, trees, clutter, and the ego-vehicle bonnet. Each is drawn on a :class:`segmodels.data.canvas.Canvas`
from a ground position (lateral x, depth z in metres), so its size and place follow the perspective. Each vehicle,
two-wheeler, person and rider is an object of its own (:meth:`~segmodels.data.canvas.Canvas.new_object`), which
gives it its instance id."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from segmodels.data.labels import LABELS

if TYPE_CHECKING:
    from segmodels.data.canvas import Canvas

__all__ = ["draw_objects"]

L = {label.name: label.id for label in LABELS}
_VEHICLE_SIZE = {"car": (1.8, 1.5), "truck": (2.5, 3.4), "bus": (2.55, 3.1), "train": (2.65, 3.6)}  # metres, w × h
_GLASS_BAND = {"truck": (0.85, 0.97), "bus": (0.5, 0.88), "train": (0.45, 0.85)}  # rear/front window rows
_PALETTE_OF = {"car": "vehicle", "truck": "vehicle", "bus": "bus", "train": "train"}
_LAMPS = ((1.0, 0.15, 0.1), (1.0, 0.8, 0.1), (0.2, 0.9, 0.3))  # red, amber, green
_RARE = {"truck": 0.25, "bus": 0.2, "train": 0.06, "motorcycle": 0.15, "bicycle": 0.25}  # chance per image


def _vehicle(c: Canvas, kind: str, x: float, z: float) -> None:
    rng = c.rng
    w_m, h_m = (d * rng.uniform(0.92, 1.08) for d in _VEHICLE_SIZE[kind])
    extra = 1.12 if kind == "train" else 1.0  # room for the pantograph
    got = c.sprite(x, z, w_m, h_m * extra)
    if got is None:
        return
    region, u, v = got
    v, au = v * extra, np.abs(u)
    if kind == "car":  # body, then a cabin narrowing towards the roof
        shape = ((v < 0.55) & (au < 1.0 - 0.25 * np.clip(v - 0.45, 0, 1))) | (
            (v >= 0.5) & (v < 1.0) & (au < 0.86 - 0.3 * (v - 0.5))
        )
        glass = (v > 0.6) & (v < 0.92) & (au < 0.72 - 0.3 * (v - 0.6))
    else:
        shape = (v < 1.0) & (au < 1.0 - 0.4 * np.clip(v - 0.93, 0, 1))
        lo, hi = _GLASS_BAND[kind]
        glass = (v > lo) & (v < hi) & (au < 0.9)
        if kind == "train":
            shape |= (v >= 1.0) & (v < 1.12) & ((np.abs(au - 0.3 * (v - 1.0) / 0.12) < 0.05) | (v > 1.1))
    mask = shape & ~((v < 0.12) & (au < 0.65))  # the road shows under the body
    c.paint(region, mask, L[kind], c.colour(_PALETTE_OF[kind]), 0.03, 0.06, obj=c.new_object(L[kind]))
    sub = c.rgb[region]
    sub[mask] *= np.broadcast_to(np.clip(1.1 - 0.35 * v, 0.5, 1.2), mask.shape)[mask][:, None]  # light from above
    dark = mask & (glass | ((v < 0.16) & (au > 0.6)))  # windows and tyres
    sub[dark] = sub[dark] * 0.25 + 0.05
    sub[mask & (v > 0.35) & (v < 0.45) & (au > 0.72) & (au < 0.95)] = (0.8, 0.1, 0.08)  # rear lights


def _human(c: Canvas, x: float, z: float, height_m: float, lid: int, lift: float = 0.0) -> None:
    got = c.sprite(x, z - 0.01, 0.55, height_m + lift)
    if got is None:
        return
    region, u, v = got
    v = v * (height_m + lift) / height_m - lift / height_m  # 0 at the feet (or the seat), 1 at the top
    au = np.abs(u)
    standing = (v >= 0) & (v < 0.47) & (np.abs(au - 0.35) < 0.22)
    seated = (v > 0.25) & (v < 0.47) & (au < 0.8)  # thighs forward on the saddle
    legs = standing if lift == 0 else seated
    torso = (v >= 0.45) & (v < 0.83) & (au < 0.85 - 0.2 * (v - 0.45))
    head = (u * 0.28) ** 2 + (v - 0.91) ** 2 < 0.075**2
    obj = c.new_object(lid)  # one person: legs, torso and head share an instance id
    c.paint(region, legs, lid, c.colour("clothes"), 0.04, 0.05, obj=obj)
    c.paint(region, torso, lid, c.colour("clothes"), 0.04, 0.05, obj=obj)
    c.paint(region, head, lid, np.array([0.8, 0.6, 0.5], np.float32) * c.rng.uniform(0.45, 1.1), 0.03, 0.03, obj=obj)


def _two_wheeler(c: Canvas, kind: str, x: float, z: float, ridden: bool) -> None:
    w_m, h_m = (0.8, 1.25) if kind == "motorcycle" else (0.6, 1.05)
    got = c.sprite(x, z, w_m, h_m)
    if got is None:
        return
    region, u, v = got
    au, wide = np.abs(u), kind == "motorcycle"
    tyre = (au < (0.22 if wide else 0.12)) & (v < 0.55)
    frame = (v > 0.3) & (v < 0.75) & (au < (0.6 if wide else 0.2))
    bar = (np.abs(v - 0.85) < 0.05) & (au < 1.0)
    c.paint(region, tyre | frame | bar, L[kind], c.colour("vehicle"), 0.03, 0.05, obj=c.new_object(L[kind]))
    if ridden:  # the rider is an instance of its own, as in Cityscapes
        _human(c, x, z, 1.75 * c.rng.uniform(0.95, 1.05), L["rider"], lift=h_m * 0.45)


def _pole(c: Canvas, x: float, z: float, with_light: bool, with_sign: bool) -> None:
    rng = c.rng
    h_m = rng.uniform(3.5, 7.5)
    got = c.sprite(x, z, max(rng.uniform(0.12, 0.25), 1.2 * z / c.f), h_m)  # at least about a pixel wide
    if got is not None:
        c.paint(got[0], c.full(got[0]), L["pole"], c.colour("pole"), 0.03, 0.05)
    if with_light:  # a signal head hanging beside the top of the pole
        cx, cy = c.project(x + rng.choice([-0.35, 0.35]), z, h_m - rng.uniform(0.0, 0.8))
        hw, hh = c.f * 0.2 / z, c.f * 0.95 / z
        found = c.box(cx - hw, cy, cx + hw, cy + hh)
        if found is not None and hw >= 0.5:
            region, xs, ys = found
            c.paint(region, c.full(region), L["traffic light"], np.full(3, rng.uniform(0.08, 0.3), np.float32))
            lamp = rng.integers(3)
            lit = (np.abs((ys - cy) / hh - (0.2 + 0.3 * lamp)) < 0.1) & (np.abs(xs - cx) < hw * 0.6)
            c.rgb[region][np.broadcast_to(lit, c.full(region).shape)] = _LAMPS[lamp]
    if with_sign:  # a round, rectangular or triangular plate
        cx, cy = c.project(x, z, rng.uniform(1.8, h_m - 0.3))
        r = c.f * rng.uniform(0.5, 0.9) / (2 * z)
        found = c.box(cx - r, cy - r, cx + r, cy + r)
        if found is not None and r >= 0.7:
            region, xs, ys = found
            du, dv = (xs - cx) / r, (ys - cy) / r
            shapes = (
                du**2 + dv**2 < 1,
                (np.abs(du) < 1) & (np.abs(dv) < 0.7),
                (dv < 0.8) & (np.abs(du) < (dv + 1) / 1.8),
            )
            mask = np.broadcast_to(shapes[rng.integers(3)], c.full(region).shape)
            c.paint(region, mask, L["traffic sign"], c.colour("sign"), 0.03, 0.03)


def _tree(c: Canvas, x: float, z: float) -> None:
    rng = c.rng
    h_m = rng.uniform(4, 10)
    trunk = c.sprite(x, z, rng.uniform(0.25, 0.5), h_m * 0.55)
    if trunk is not None:  # Cityscapes labels trunks as vegetation
        c.paint(trunk[0], c.full(trunk[0]), L["vegetation"], c.colour("pole") * 0.6, 0.1, 0.1)
    crown = c.sprite(x, z, h_m * rng.uniform(0.5, 0.9), h_m)
    if crown is not None:
        region, u, v = crown
        d = u**2 + ((v - 0.68) / 0.32) ** 2 + 0.5 * c.detail[region]  # a ragged ellipse
        c.paint(region, (d < 1.0) & (v > 0.3), L["vegetation"], c.colour("vegetation"), 0.3, 0.3)


def _clutter(c: Canvas, lid: int, x: float, z: float) -> None:
    got = c.sprite(x, z, c.rng.uniform(0.5, 1.2), c.rng.uniform(0.6, 1.3))
    if got is not None:
        c.paint(got[0], c.full(got[0]), lid, c.colour("pole"))


def _ego_and_border(c: Canvas) -> None:
    """The bonnet of the recording car (ego vehicle), rectified-image corners and the last row (void ids 1-3)."""
    rng, h, w = c.rng, c.h, c.w
    hood = h * rng.uniform(0.04, 0.09)
    ego = c.ys > h - hood * (1 - 0.5 * ((c.xs - w / 2) / (w / 2)) ** 2)
    everything = (slice(0, h), slice(0, w))
    c.paint(everything, ego, L["ego vehicle"], c.colour("vehicle") * 0.5, 0.03, 0.1)
    corner = max(int(w * 0.02), 1)
    border = (c.xs < corner - (c.ys - (h - corner))) | (c.xs > w - corner + (c.ys - (h - corner)))
    black = np.zeros(3, np.float32)
    c.paint(everything, border & (c.ys > h - corner), L["rectification border"], black, 0, 0)
    c.paint(everything, (c.ys > h - 1) & ~ego, L["out of roi"], black, 0, 0)


def draw_objects(c: Canvas, lay: dict[str, float], featured: str | None) -> None:
    """Place the street's objects at random and draw them far to near; ``featured`` is always present."""
    rng = c.rng
    z_min = c.f * c.camera_height / (c.h - c.hz) + 1.0  # nearest ground depth in view

    def road_x() -> float:
        return rng.uniform(lay["road_l"] + 1.2, lay["road_r"] - 1.2)

    def walk_x(side: str) -> float:
        lo, hi = sorted((lay[f"walk_{side}"], lay[f"road_{side}"]))
        return rng.uniform(lo + 0.3, hi - 0.3)

    def depth(near: float, spread: float) -> float:  # most objects near, a long tail far away
        return z_min + near + rng.exponential(spread / 3)

    objects: list[tuple[float, str, float, tuple]] = []  # (depth, kind, lateral position, extra)
    objects += [(depth(2, 50), "car", road_x(), ()) for _ in range(rng.poisson(4.0))]
    for _ in range(rng.poisson(2.0)):  # parked along the kerb
        side = rng.choice(["l", "r"])
        objects.append((depth(1, 40), "car", lay[f"road_{side}"] + (1.1 if side == "l" else -1.1), ()))
    for kind, p in _RARE.items():
        if rng.random() < p or featured == kind:
            x = road_x() if kind != "train" else (lay["road_l"] + lay["road_r"]) / 2 + rng.uniform(-1, 1)
            near = 12 if kind in ("train", "bus") else 4  # large and rare: mostly seen at a distance
            objects.append((depth(near, 60), kind, x, (rng.random() < (0.9 if kind == "motorcycle" else 0.6),)))
    for _ in range(rng.poisson(4.0)):  # pedestrians, a few of them crossing
        side = rng.choice(["l", "r"])
        objects.append((depth(0, 40), "person", road_x() if rng.random() < 0.1 else walk_x(side), ()))
    objects += [(depth(0, 30), "parked", walk_x(rng.choice(["l", "r"])), ()) for _ in range(rng.poisson(1.0))]
    for side in ("l", "r"):
        edge = lay[f"walk_{side}"] + (0.6 if side == "l" else -0.6)
        z = z_min + rng.uniform(0, 15)
        while z < 120:
            light = rng.random() < 0.3 or (featured == "traffic light" and z < 40)
            objects.append((z, "pole", edge, (light, rng.random() < 0.45)))
            z += rng.uniform(8, 35)
        objects += [(depth(2, 50), "tree", edge + rng.uniform(-0.3, 0.3), ()) for _ in range(rng.poisson(1.8))]
        if rng.random() < 0.4:
            objects.append((depth(0, 30), "static", walk_x(side), ()))
    if rng.random() < 0.1:
        objects.append((depth(0, 30), "dynamic", walk_x(rng.choice(["l", "r"])), ()))
    for z, kind, x, extra in sorted(objects, key=lambda o: -o[0]):
        if kind in _VEHICLE_SIZE:
            _vehicle(c, kind, x, z)
        elif kind in ("motorcycle", "bicycle"):
            _two_wheeler(c, kind, x, z, ridden=extra[0])
        elif kind == "parked":
            _two_wheeler(c, "bicycle", x, z, ridden=False)
        elif kind == "person":
            _human(c, x, z, rng.uniform(1.55, 1.95), L["person"])
        elif kind == "pole":
            _pole(c, x, z, *extra)
        elif kind == "tree":
            _tree(c, x, z)
        else:
            _clutter(c, L[kind], x, z)
    _ego_and_border(c)
