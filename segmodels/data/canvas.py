"""The drawing surface of the generated street scenes: the image and label map, the pinhole camera 1.5 m above
the street, the sky, the street's bands and the facades, the shared noise fields and the final colour grading.

Objects of classes with instances (:attr:`~segmodels.data.labels.Label.has_instances`: person, rider, car, …) are
drawn under a number of their own (:meth:`Canvas.new_object`, then ``paint(..., obj=n)`` for each of their parts);
every paint overwrites the object number of the pixels it labels, so :meth:`Canvas.instance_ids` sees only what is
visible in the end, as Cityscapes' ``*_gtFine_instanceIds.png`` does."""

from __future__ import annotations

import numpy as np

from segmodels.data.labels import LABELS
from segmodels.data.sources.cityscapes import INSTANCE_OFFSET  # object k of a class: label id × 1000 + k

__all__ = ["CAMERA_HEIGHT", "Canvas", "L", "Region"]

L = {label.name: label.id for label in LABELS}
_WITH_INSTANCES = frozenset(label.id for label in LABELS if label.has_instances)
Region = tuple[slice, slice]  # rows, columns of the image
CAMERA_HEIGHT = 1.5  # metres, roughly the Cityscapes camera behind the windscreen

# fmt: off
_PALETTES = {  # base colours (0-1) per surface; ranges overlap across classes on purpose
    "road": [(0.36, 0.36, 0.38), (0.45, 0.43, 0.42), (0.3, 0.31, 0.33)],
    "sidewalk": [(0.6, 0.58, 0.55), (0.55, 0.45, 0.42), (0.7, 0.68, 0.64), (0.45, 0.45, 0.47)],
    "building": [(0.55, 0.55, 0.55), (0.75, 0.68, 0.55), (0.6, 0.35, 0.28), (0.82, 0.8, 0.76), (0.45, 0.47, 0.5),
                 (0.7, 0.6, 0.45)],
    "wall": [(0.6, 0.58, 0.55), (0.5, 0.5, 0.52), (0.72, 0.66, 0.55)],
    "fence": [(0.45, 0.45, 0.45), (0.5, 0.4, 0.3), (0.35, 0.42, 0.35)],
    "vegetation": [(0.3, 0.42, 0.15), (0.25, 0.35, 0.2), (0.45, 0.48, 0.2), (0.35, 0.4, 0.28)],
    "terrain": [(0.42, 0.5, 0.25), (0.5, 0.45, 0.3), (0.38, 0.45, 0.3)],
    "vehicle": [(0.1, 0.1, 0.11), (0.85, 0.85, 0.85), (0.55, 0.56, 0.58), (0.6, 0.1, 0.1), (0.15, 0.2, 0.45),
                (0.3, 0.32, 0.3), (0.75, 0.72, 0.65), (0.4, 0.45, 0.5)],
    "bus": [(0.85, 0.7, 0.1), (0.7, 0.12, 0.1), (0.2, 0.3, 0.6), (0.85, 0.85, 0.82)],
    "train": [(0.8, 0.15, 0.12), (0.9, 0.88, 0.85), (0.9, 0.75, 0.15)],
    "clothes": [(0.1, 0.1, 0.12), (0.25, 0.25, 0.3), (0.5, 0.1, 0.1), (0.2, 0.25, 0.45), (0.7, 0.7, 0.68),
                (0.45, 0.35, 0.25)],
    "pole": [(0.5, 0.5, 0.5), (0.35, 0.37, 0.35), (0.6, 0.6, 0.58)],
    "sign": [(0.8, 0.1, 0.1), (0.1, 0.3, 0.7), (0.9, 0.9, 0.9), (0.9, 0.8, 0.1)],
}
# fmt: on


class Canvas:
    """The image and label map being drawn, the camera, and shared noise fields."""

    camera_height = CAMERA_HEIGHT

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng, self.h, self.w = rng, height, width
        self.lab = np.zeros((height, width), np.uint8)
        self.obj: np.ndarray | None = None  # per pixel: 0, or the number of the visible object (from the first one)
        self._object_ids: list[int] = [0]  # object number → its label id
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
        self.xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
        self.fine = rng.standard_normal((height, width), dtype=np.float32)  # grain
        self.smooth = _value_noise(rng, height, width, 6, 12)  # blotches, lighting
        self.detail = _value_noise(rng, height, width, max(height // 8, 2), max(width // 8, 2))  # foliage, clouds
        self.hz = height * rng.uniform(0.36, 0.48)  # horizon row
        self.vx = width * rng.uniform(0.38, 0.62)  # vanishing point column
        self.f = width * rng.uniform(0.85, 1.15)  # focal length in pixels

    # --- helpers -------------------------------------------------------------------------------------------
    def colour(self, kind: str, jitter: float = 0.08) -> np.ndarray:
        base = np.array(self.rng.choice(_PALETTES[kind]), np.float32)
        return np.clip(base * self.rng.uniform(0.8, 1.2) + self.rng.normal(0, jitter, 3), 0.02, 1.0)

    def new_object(self, lid: int) -> int:
        """The number of a new object of label id ``lid`` (a class with instances), for ``paint(..., obj=…)``."""
        if lid not in _WITH_INSTANCES:
            raise ValueError(f"label id {lid} is not a class with instances; paint it without an object number")
        if self.obj is None:  # before the first object, no paint needs to keep an object map
            self.obj = np.zeros((self.h, self.w), np.int32)
        self._object_ids.append(lid)
        return len(self._object_ids) - 1

    def paint(
        self, region: Region, mask: np.ndarray, lid: int, colour: np.ndarray, grain: float = 0.03, blotch: float = 0.08,
        *, obj: int = 0,
    ) -> None:  # fmt: skip
        """Label ``mask`` (within ``region``) as ``lid`` and colour it with texture of the given strength; ``obj``
        (from :meth:`new_object`, of the same label id) marks the pixels as that object's, 0 as no object's."""
        if not np.any(mask):
            return
        mod = 1.0 + grain * self.fine[region][mask] + blotch * self.smooth[region][mask]
        self.lab[region][mask] = lid
        if obj:
            if self._object_ids[obj] != lid:
                raise ValueError(f"object {obj} is of label id {self._object_ids[obj]}, painted as {lid}")
            self.obj[region][mask] = obj
        elif self.obj is not None:
            self.obj[region][mask] = 0
        colour = np.asarray(colour, np.float32)
        self.rgb[region][mask] = (colour if colour.ndim == 2 else colour[None]) * mod[:, None]

    def full(self, region: Region) -> np.ndarray:
        return np.ones(self.lab[region].shape, bool)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[Region, np.ndarray, np.ndarray] | None:
        """Integer region for a float box, with pixel-centre coordinates inside it; None when off-image or empty."""
        ix0, iy0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        ix1, iy1 = min(int(np.ceil(x1)), self.w), min(int(np.ceil(y1)), self.h)
        if ix1 <= ix0 or iy1 <= iy0:
            return None
        region = (slice(iy0, iy1), slice(ix0, ix1))
        return region, self.xs[:, ix0:ix1], self.ys[iy0:iy1]

    def project(self, x: float, z: float, y_world: float = 0.0) -> tuple[float, float]:
        """World point (lateral x, depth z, height y_world above ground) → image (column, row)."""
        return self.vx + self.f * x / z, self.hz + self.f * (CAMERA_HEIGHT - y_world) / z

    def sprite(
        self, x: float, z: float, width_m: float, height_m: float
    ) -> tuple[Region, np.ndarray, np.ndarray] | None:
        """Region and normalised coordinates (u in [-1, 1] across, v in [0, 1] up) of an upright object."""
        cx, yb = self.project(x, z)
        half, tall = self.f * width_m / (2 * z), self.f * height_m / z
        found = self.box(cx - half, yb - tall, cx + half, yb)
        if found is None or half < 0.5:
            return None
        region, xs, ys = found
        return region, (xs - cx) / half, (yb - ys) / tall

    # --- background ---------------------------------------------------------------------------------------
    def sky(self) -> None:
        if self.rng.random() < 0.4:  # overcast
            v = self.rng.uniform(0.6, 0.9)
            top, bottom = np.array([v, v, v + 0.03]), np.full(3, v + 0.08)
        else:
            top, bottom = np.array([0.3, 0.5, 0.8]), np.array([0.7, 0.8, 0.9])
        g = np.clip(self.ys / max(self.hz, 1), 0, 1)[..., None]
        rgb = top.astype(np.float32) * (1 - g) + bottom.astype(np.float32) * g
        clouds = np.clip(self.detail * 0.6 + self.smooth * 0.5 - 0.2, 0, 1)[..., None] * self.rng.uniform(0, 0.8)
        self.rgb[:] = rgb * (1 - clouds) + clouds * 0.9
        self.lab[:] = L["sky"]

    def street(self) -> dict[str, float]:
        rng = self.rng
        lay = {"road_l": -rng.uniform(2.5, 6.0), "road_r": rng.uniform(3.0, 8.0)}
        lay["walk_l"] = lay["road_l"] - rng.uniform(1.5, 4.5)
        lay["walk_r"] = lay["road_r"] + rng.uniform(1.5, 4.5)
        lay["face_l"] = lay["walk_l"] - (rng.uniform(1, 5) if rng.random() < 0.5 else 0.0)
        lay["face_r"] = lay["walk_r"] + (rng.uniform(1, 5) if rng.random() < 0.5 else 0.0)
        rows = self.ys[:, 0] > self.hz + 0.5
        region = (slice(int(np.argmax(rows)), self.h), slice(0, self.w))
        z = self.f * CAMERA_HEIGHT / (self.ys[region[0]] - self.hz)  # depth of each ground row
        x = (self.xs - self.vx) * z / self.f  # lateral position of each ground pixel
        bands = [
            ((x < lay["walk_l"]) | (x > lay["walk_r"]), "terrain", 0.15, 0.2),
            (
                ((x >= lay["walk_l"]) & (x < lay["road_l"])) | ((x > lay["road_r"]) & (x <= lay["walk_r"])),
                "sidewalk",
                0.06,
                0.1,
            ),
            ((x >= lay["road_l"]) & (x <= lay["road_r"]), "road", 0.05, 0.1),
        ]
        for mask, kind, grain, blotch in bands:
            self.paint(region, mask, L[kind], self.colour(kind), grain, blotch)
        tiles = (np.abs(np.sin(z * 2.0)) < 0.12) & (self.lab[region] == L["sidewalk"])
        self.rgb[region][tiles] *= 0.85
        if rng.random() < 0.8:  # dashed lane markings are road
            lane = rng.uniform(lay["road_l"] + 1.5, lay["road_r"] - 1.0)
            mark = (np.abs(x - lane) < 0.08) & (np.mod(z, 9.0) < 4.0)
            self.paint(region, mark, L["road"], np.full(3, rng.uniform(0.75, 0.95), np.float32), 0.05, 0.05)
        if rng.random() < 0.35:  # a parking strip along the kerb (ignored in evaluation)
            side = "road_l" if rng.random() < 0.5 else "road_r"
            edge, sign = lay[side], 1.0 if side == "road_l" else -1.0
            z0 = rng.uniform(6, 30)
            mask = (sign * (x - edge) >= 0) & (sign * (x - edge) < 2.2) & (z > z0) & (z < z0 + rng.uniform(8, 30))
            self.paint(region, mask, L["parking"], self.colour("road") * 1.1, 0.05, 0.1)
        if rng.random() < 0.3:  # bare ground patch in a terrain strip
            z0 = rng.uniform(8, 30)
            mask = (self.lab[region] == L["terrain"]) & (z > z0) & (z < z0 + 6)
            self.paint(region, mask, L["ground"], self.colour("terrain") * 0.8, 0.1, 0.2)
        return lay

    def facades(self, lay: dict[str, float]) -> None:
        rng = self.rng
        z_end = rng.uniform(80, 250)
        split = int(np.clip(round(self.vx), 1, self.w - 1))
        for x_face, cols in ((lay["face_l"], slice(0, split)), (lay["face_r"], slice(split, self.w))):
            region = (slice(0, self.h), cols)
            dx = self.xs[0, cols] - self.vx
            z = np.where(x_face * dx > 0, self.f * x_face / np.where(dx == 0, 1e-3, dx), 1e6)  # facade depth per column
            bounds = np.cumsum(rng.uniform(6, 28, size=40))
            seg = np.searchsorted(bounds, np.minimum(z, z_end))
            n = len(bounds) + 1
            kinds = rng.choice(3, size=n, p=[0.68, 0.27, 0.05])  # building, vegetation, gap
            heights = np.where(kinds == 1, rng.uniform(5, 12, n), rng.uniform(9, 32, n))
            top = self.hz + self.f * (CAMERA_HEIGHT - heights[seg]) / z
            bottom = self.hz + self.f * CAMERA_HEIGHT / z
            ys = self.ys
            wall = (ys >= top) & (ys <= bottom) & (z < z_end)[None, :]
            colours = np.stack([self.colour("building") for _ in range(n)])[seg]
            is_b = wall & (kinds[seg] == 0)[None, :]
            y_world = CAMERA_HEIGHT - (ys - self.hz) * z / self.f  # height above the ground on the facade
            spacing = rng.uniform(2.5, 4.5, n)[seg]
            windows = is_b & (np.mod(z / spacing, 1.0) > 0.35) & (np.mod(y_world / 3.2, 1.0) > 0.4) & (y_world > 3)
            self.paint(region, is_b, L["building"], np.broadcast_to(colours, is_b.shape + (3,))[is_b], 0.04, 0.12)
            sub = self.rgb[region]
            sub[windows] = sub[windows] * rng.uniform(0.3, 0.6) + rng.uniform(0.0, 0.25)
            is_v = wall & (kinds[seg] == 1)[None, :] & (self.detail[region] * 2.0 + y_world / heights[seg] < 1.6)
            self.paint(region, is_v, L["vegetation"], self.colour("vegetation"), 0.25, 0.3)
            for start in np.cumsum(rng.uniform(10, 60, size=4)):  # low walls and fences along the facade
                if rng.random() < 0.5:
                    continue
                kind = "wall" if rng.random() < 0.5 else "fence"
                top = self.hz + self.f * (CAMERA_HEIGHT - rng.uniform(0.8, 2.5)) / z
                mask = (ys >= top) & (ys <= bottom) & ((z > start) & (z < start + rng.uniform(5, 25)))[None]
                self.paint(region, mask, L[kind], self.colour(kind), 0.05, 0.1)
                if kind == "fence":
                    sub[mask & (np.mod(z * 4.0, 1.0) < 0.3)] *= 0.6  # bars
        # the far end of the street: a frontal row of buildings and trees
        cx0, cx1 = self.project(lay["face_l"], z_end)[0], self.project(lay["face_r"], z_end)[0]
        yb = self.project(0, z_end)[1]
        for k, x0 in enumerate(np.linspace(cx0, cx1, 4)[:-1]):
            h_m = rng.uniform(8, 30)
            found = self.box(x0, self.project(0, z_end, h_m)[1], x0 + (cx1 - cx0) / 3 + 1, yb)
            if found is not None:
                kind = "vegetation" if k == 1 and rng.random() < 0.4 else "building"
                region = found[0]
                self.paint(region, np.ones(self.lab[region].shape, bool), L[kind], self.colour(kind), 0.05, 0.15)

    def instance_ids(self) -> np.ndarray:
        """Cityscapes instance ids (H×W int32): ``label id × 1000 + k`` on the visible pixels of the k-th object of
        its class (counted from 0 in drawing order, over the objects left visible), the label id elsewhere."""
        ids = self.lab.astype(np.int32)
        if self.obj is None:
            return ids
        visible = np.flatnonzero(np.bincount(self.obj.ravel(), minlength=len(self._object_ids))[1:]) + 1
        table = np.zeros(len(self._object_ids), np.int32)
        seen: dict[int, int] = {}
        for n in visible.tolist():
            lid = self._object_ids[n]
            k = seen[lid] = seen.get(lid, -1) + 1
            if k >= INSTANCE_OFFSET:
                raise ValueError(f"more than {INSTANCE_OFFSET} objects of label id {lid} in one image")
            table[n] = lid * INSTANCE_OFFSET + k
        drawn = self.obj > 0
        ids[drawn] = table[self.obj[drawn]]
        return ids

    # --- global appearance --------------------------------------------------------------------------------
    def finish(self) -> np.ndarray:
        rng = self.rng
        rgb = self.rgb
        if rng.random() < 0.6:  # a cast shadow across the street
            a, b = rng.uniform(-1, 1), rng.uniform(0.2, 1.5)
            shadow = (self.xs - self.vx) * a + (self.ys - self.hz) * b > rng.uniform(-0.1, 0.4) * self.h
            rgb[shadow] *= np.array([0.55, 0.58, 0.68], np.float32) * rng.uniform(0.8, 1.2)
        rgb *= (1.0 + 0.25 * self.smooth)[..., None]  # uneven light
        # hue rotation and saturation in YIQ, then white balance, brightness, contrast and gamma
        theta, sat = rng.normal(0, 0.4), rng.uniform(0.5, 1.3)
        to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
        rot = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]], np.float32)
        m = np.linalg.inv(to_yiq) @ np.diag([1.0, sat, sat]).astype(np.float32) @ rot @ to_yiq
        m = m * rng.uniform(0.9, 1.1, size=(3, 1)).astype(np.float32)
        m = m.astype(np.float32)  # applied as three broadcasts: no BLAS threads inside worker processes
        rgb = rgb[..., 0:1] * m[:, 0] + rgb[..., 1:2] * m[:, 1] + rgb[..., 2:3] * m[:, 2]
        rgb = np.clip(rgb * rng.uniform(0.6, 1.25), 0, 1) ** rng.uniform(0.75, 1.3)
        rgb = (rgb - 0.5) * rng.uniform(0.75, 1.2) + 0.5
        rgb = rgb * 255.0 + self.fine[..., None] * rng.uniform(2, 9)  # sensor noise
        return np.clip(rgb, 0, 255).astype(np.uint8)


def _value_noise(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a random grid of ``cells`` upsampled with smoothstep interpolation."""
    grid = rng.uniform(-1, 1, size=(cells_y + 2, cells_x + 2)).astype(np.float32)
    fy = np.linspace(0, cells_y, h, dtype=np.float32)
    fx = np.linspace(0, cells_x, w, dtype=np.float32)
    iy, ix = fy.astype(np.int64), fx.astype(np.int64)
    ty, tx = (fy - iy)[:, None], (fx - ix)[None, :]
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)
    top = grid[iy][:, ix] * (1 - tx) + grid[iy][:, ix + 1] * tx
    bottom = grid[iy + 1][:, ix] * (1 - tx) + grid[iy + 1][:, ix + 1] * tx
    return top * (1 - ty) + bottom * ty
