"""Synthetic surface-defect dataset in Ultralytics YOLO detection format.

This is the dataset the console trains on at first launch and the one every training test uses, so
it must be small, fast to make, free of downloads and byte-identical for the same arguments. It
draws textured metal plates (brushed steel, aluminium, dark cast steel) carrying 0-3 defects of
three classes distinct enough for a nano YOLO trained from scratch at 64-96 px to learn them:

* 0 scratch: a thin, long, nearly straight line, usually bright where it catches the light;
* 1 dent: a round or oval depression, shaded dark on the side facing the light, bright opposite;
* 2 crack: a dark, jagged, branching line.

Only numpy, Pillow and PyYAML are used: the engine may not import torch or ultralytics.

    python -m engine.demo_dataset OUT [--train N] [--val N] [--imgsz PX] [--seed S]
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from PIL import Image, ImageDraw

CLASS_NAMES = ("scratch", "dent", "crack")
SCRATCH, DENT, CRACK = range(len(CLASS_NAMES))

SPLITS = ("train", "val")
MIN_IMGSZ = 32
FILE_PREFIX = "surface"          # only files with this prefix are ever replaced or removed

_SUPERSAMPLE = 4                 # lines are drawn at 4x and box-filtered down: anti-aliased strokes
_MAX_DEFECTS = 3
_DEFECT_COUNT_WEIGHTS = (0.10, 0.40, 0.32, 0.18)   # P(0..3 defects) for images past the first three
_PLACEMENT_TRIES = 25
_MIN_DEFECT_EXTENT = 0.12        # a defect mostly outside the frame is re-drawn, not labelled as a sliver
_FOOTPRINT_FRACTION = 0.2        # pixels above this share of a defect's peak effect belong to its box


@dataclass(frozen=True)
class Material:
    """How a kind of metal plate looks: base grey level, colour cast and how strongly it is brushed."""

    name: str
    tone: tuple[float, float]          # range of the mean grey level
    tint: tuple[float, float, float]   # RGB multipliers on the grey image
    brushing: float                    # amplitude of the horizontal streaks
    grain: float                       # amplitude of the per-pixel noise


MATERIALS = (
    Material("brushed steel", (0.48, 0.62), (0.96, 1.00, 1.05), 0.050, 0.012),
    Material("aluminium", (0.62, 0.74), (1.00, 1.00, 1.01), 0.040, 0.010),
    Material("cast steel", (0.30, 0.42), (1.04, 1.00, 0.95), 0.020, 0.030),
)


@dataclass(frozen=True)
class Defect:
    """One drawn defect: its class and its tight pixel box (x0, y0 inclusive; x1, y1 exclusive)."""

    class_id: int
    x0: int
    y0: int
    x1: int
    y1: int

    def yolo_line(self, size: int) -> str:
        """The label line: class, centre and size, normalised to the image and clipped to [0, 1]."""
        x0, x1 = (min(max(v / size, 0.0), 1.0) for v in (self.x0, self.x1))
        y0, y1 = (min(max(v / size, 0.0), 1.0) for v in (self.y0, self.y1))
        return (f"{self.class_id} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} "
                f"{x1 - x0:.6f} {y1 - y0:.6f}")

    def overlaps(self, other: "Defect", gap: int) -> bool:
        return not (self.x1 + gap <= other.x0 or other.x1 + gap <= self.x0
                    or self.y1 + gap <= other.y0 or other.y1 + gap <= self.y0)


@dataclass(frozen=True)
class Lighting:
    """Per-image light: dents must be shaded consistently, and which way varies between images."""

    direction: tuple[float, float]     # unit vector pointing towards the light, image coordinates
    tone: float                        # the plate's mean grey level, to scale dark and bright marks


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

def generate_dataset(out_dir: str | Path, *, train: int = 48, val: int = 16, imgsz: int = 96,
                     seed: int = 0) -> Path:
    """Write the dataset under `out_dir` and return the path of its data.yaml.

    Images are square PNGs (lossless, so the files are byte-identical for the same arguments). Each
    image depends only on (seed, split, index), so asking for more images adds images without
    changing the existing ones. Files this generator wrote earlier (named `surface_*`) and the label
    caches Ultralytics keeps next to them are replaced; nothing else in `out_dir` is touched.
    data.yaml is written last, so its presence means the dataset is complete.
    """
    _check_arguments(train=train, val=val, imgsz=imgsz, seed=seed)
    root = Path(out_dir).resolve()
    data_yaml = root / "data.yaml"
    data_yaml.unlink(missing_ok=True)          # an interrupted regeneration must not look complete
    for split, count in zip(SPLITS, (train, val)):
        image_dir, label_dir = root / "images" / split, root / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        _remove_previous_output(image_dir, label_dir)
        for index in range(count):
            pixels, defects = render_image(seed=seed, split=split, index=index, imgsz=imgsz)
            stem = f"{FILE_PREFIX}_{split}_{index:04d}"
            # Noisy textures barely compress; level 1 is ~3x faster than the default and no larger.
            Image.fromarray(pixels).save(image_dir / f"{stem}.png", compress_level=1)
            label_text = "".join(d.yolo_line(imgsz) + "\n" for d in defects)
            (label_dir / f"{stem}.txt").write_text(label_text, encoding="ascii")

    config = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(CLASS_NAMES)),
    }
    data_yaml.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return data_yaml


def render_image(*, seed: int, split: str, index: int, imgsz: int, with_defects: bool = True
                 ) -> tuple[np.ndarray, list[Defect]]:
    """One image (uint8 HxWx3) and its defects, a pure function of its arguments.

    The first three images of a split always carry at least one defect, and an image's first
    defect cycles through the classes, so every class appears even in a three-image split and the
    classes stay balanced. The plate and the defects come from separate generators, so
    `with_defects=False` gives exactly the same plate, bare (how the tests check box tightness).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    surface_seq, defect_seq = np.random.SeedSequence([seed, SPLITS.index(split), index]).spawn(2)
    surface_rng, defect_rng = np.random.default_rng(surface_seq), np.random.default_rng(defect_seq)

    material = MATERIALS[int(surface_rng.integers(len(MATERIALS)))]
    gray, lighting = _metal_surface(surface_rng, imgsz, material)

    if index < len(CLASS_NAMES):
        count = int(defect_rng.integers(1, _MAX_DEFECTS + 1))
    else:
        count = int(defect_rng.choice(_MAX_DEFECTS + 1, p=_DEFECT_COUNT_WEIGHTS))
    extra_classes = defect_rng.integers(len(CLASS_NAMES), size=max(0, count - 1))
    classes = [index % len(CLASS_NAMES), *(int(c) for c in extra_classes)][:count]

    defects: list[Defect] = []
    for class_id in classes if with_defects else ():
        placed = _place_defect(defect_rng, class_id, imgsz, lighting, defects)
        if placed is not None:
            effect, defect = placed
            gray += effect
            defects.append(defect)

    rgb = gray[..., None] * np.asarray(material.tint, dtype=np.float32)
    pixels = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return pixels, defects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.demo_dataset",
        description="Write the synthetic surface-defect demo dataset (YOLO format) and print the "
                    "path of its data.yaml.")
    parser.add_argument("out", type=Path, help="output folder (created if missing)")
    parser.add_argument("--train", type=int, default=48, help="training images (default 48)")
    parser.add_argument("--val", type=int, default=16, help="validation images (default 16)")
    parser.add_argument("--imgsz", type=int, default=96, help="image side in pixels (default 96)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    try:
        data_yaml = generate_dataset(args.out, train=args.train, val=args.val, imgsz=args.imgsz,
                                     seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))       # exits with status 2 and the usage line, like any bad option
    print(data_yaml)
    return 0


# --------------------------------------------------------------------------------------------------
# Arguments and files
# --------------------------------------------------------------------------------------------------

def _check_arguments(*, train: int, val: int, imgsz: int, seed: int) -> None:
    for name, value in (("train", train), ("val", val), ("imgsz", imgsz), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if train < 1:
        raise ValueError(f"train must be at least 1 image, got {train}")
    if val < 1:
        raise ValueError(f"val must be at least 1 image, got {val}")
    if imgsz < MIN_IMGSZ:
        raise ValueError(f"imgsz must be at least {MIN_IMGSZ} pixels, got {imgsz}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")


def _remove_previous_output(image_dir: Path, label_dir: Path) -> None:
    """A smaller regeneration must not leave images of an earlier, larger one behind."""
    for stale in [*image_dir.glob(f"{FILE_PREFIX}_*.png"), *label_dir.glob(f"{FILE_PREFIX}_*.txt")]:
        stale.unlink()
    # Ultralytics caches parsed labels in labels/<split>.cache; a stale one would hide new labels.
    label_dir.with_suffix(".cache").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# The metal surface
# --------------------------------------------------------------------------------------------------

def _metal_surface(rng: np.random.Generator, size: int, material: Material
                   ) -> tuple[np.ndarray, Lighting]:
    """A grey float32 plate: brushed streaks, soft blotches, a light gradient, vignette and grain."""
    tone = float(rng.uniform(*material.tone))
    gray = np.full((size, size), tone, dtype=np.float32)

    # Brushing: white noise averaged along (almost) horizontal lines, at a fine and a long scale,
    # plus a few full-length lines left by the abrasive belt.
    slope = float(rng.uniform(-0.04, 0.04))
    gray += material.brushing * 0.6 * _streaks(rng, size, max(2, size // 16), slope)
    gray += material.brushing * 0.8 * _streaks(rng, size, max(4, size // 3), slope)
    belt_lines = rng.standard_normal(size).astype(np.float32) * (rng.random(size) < 0.08)
    gray += material.brushing * 0.8 * belt_lines[:, None]

    # Low-frequency blotches (handling marks, uneven finish).
    blotches = rng.standard_normal((4, 4)).astype(np.float32)
    gray += 0.025 * _upsample(blotches, size)

    # Light falls off across the plate and towards its corners.
    light_angle = float(rng.uniform(0, 2 * math.pi))
    direction = (math.cos(light_angle), math.sin(light_angle))
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    xs, ys = coords[None, :], coords[:, None]
    gray *= 1.0 + float(rng.uniform(0.08, 0.2)) * (xs * direction[0] + ys * direction[1])
    gray *= 1.0 - float(rng.uniform(0.1, 0.3)) * (xs ** 2 + ys ** 2)

    gray += material.grain * rng.standard_normal((size, size)).astype(np.float32)
    return gray, Lighting(direction=direction, tone=tone)


def _streaks(rng: np.random.Generator, size: int, length: int, slope: float) -> np.ndarray:
    """Unit-variance noise smeared along lines of the given slope over `length` pixels."""
    drift = int(math.ceil(abs(slope) * size))
    noise = rng.standard_normal((size, size + length + 2 * drift)).astype(np.float32)
    summed = np.cumsum(noise, axis=1)
    smeared = (summed[:, length:] - summed[:, :-length]) / math.sqrt(length)
    shift = np.round(slope * np.arange(size)).astype(int)[:, None] + drift
    return np.take_along_axis(smeared, np.arange(size)[None, :] + shift, axis=1)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC))


# --------------------------------------------------------------------------------------------------
# Defects. Each painter returns an additive effect on the grey image; the box is where it shows.
# --------------------------------------------------------------------------------------------------

Painter = Callable[[np.random.Generator, int, Lighting], np.ndarray]


def _place_defect(rng: np.random.Generator, class_id: int, size: int, lighting: Lighting,
                  existing: list[Defect]) -> tuple[np.ndarray, Defect] | None:
    """Draw a defect that is mostly in frame and does not touch the others; None if there's no room."""
    painter = _PAINTERS[class_id]
    for _ in range(_PLACEMENT_TRIES):
        effect = painter(rng, size, lighting)
        defect = _footprint_box(effect, class_id)
        if defect is None:
            continue
        if max(defect.x1 - defect.x0, defect.y1 - defect.y0) < _MIN_DEFECT_EXTENT * size:
            continue
        if any(defect.overlaps(other, gap=2) for other in existing):
            continue
        return effect, defect
    return None


def _footprint_box(effect: np.ndarray, class_id: int) -> Defect | None:
    magnitude = np.abs(effect)
    peak = float(magnitude.max())
    if peak <= 0.0:
        return None
    visible = magnitude >= _FOOTPRINT_FRACTION * peak       # the faint anti-aliased fringe is not
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    return Defect(class_id, int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _paint_scratch(rng: np.random.Generator, size: int, lighting: Lighting) -> np.ndarray:
    """A long thin line with a slight bow, fading at both ends; bright (catching light) or dark."""
    length = rng.uniform(0.3, 0.6) * size
    # Scratches running with the brushing vanish into the grain; keep them at least 12 degrees off it.
    angle = rng.uniform(0.2, math.pi - 0.2)
    cx, cy = rng.uniform(0.2, 0.8, size=2) * size
    bow = rng.uniform(-0.06, 0.06) * length
    t = np.linspace(-0.5, 0.5, 24)
    along = np.array([math.cos(angle), math.sin(angle)])
    across = np.array([-along[1], along[0]])
    points = (np.array([cx, cy])[None, :] + t[:, None] * length * along[None, :]
              + (bow * (1 - 4 * t ** 2))[:, None] * across[None, :])
    strength = np.sin(np.pi * (t + 0.5)) ** 0.35            # fades out at the ends
    width = rng.uniform(0.9, 1.5)
    coverage = _draw_polyline(size, points, strength, np.full(len(t), width))
    if rng.random() < 0.3:                                   # a faint companion scratch alongside
        offset = rng.choice([-1, 1]) * rng.uniform(2.0, 3.5)
        coverage += 0.5 * _draw_polyline(size, points[3:-3] + offset * across[None, :],
                                         strength[3:-3], np.full(len(t) - 6, width * 0.8))
    # Mostly bright; the rarer dark ones stay fainter than a crack so the two don't blur together.
    if rng.random() < 0.85:
        return coverage * (0.55 * (1.0 - lighting.tone) + 0.2)
    return coverage * -(0.4 * lighting.tone + 0.05)


def _paint_dent(rng: np.random.Generator, size: int, lighting: Lighting) -> np.ndarray:
    """An oval depression lit from the image's light direction, with a faint raised rim."""
    radius_x = rng.uniform(0.09, 0.2) * size
    radius_y = radius_x * rng.uniform(0.7, 1.0)
    rotation = rng.uniform(0, math.pi)
    cx, cy = rng.uniform(0.2, 0.8, size=2) * size
    depth = rng.uniform(0.9, 1.2)

    coords = np.arange(size, dtype=np.float32) + 0.5
    dx, dy = coords[None, :] - cx, coords[:, None] - cy
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)
    u = (dx * cos_r + dy * sin_r) / radius_x
    v = (-dx * sin_r + dy * cos_r) / radius_y
    r2 = u * u + v * v
    inside = r2 < 1.0
    # Height h = -depth * (1 - r^2)^2 inside the oval: smooth at the edge, deepest at the centre.
    # Its slope along the light direction decides the shading: walls facing the light are bright.
    falloff = np.where(inside, 1.0 - r2, 0.0)
    dh_du = depth * 4.0 * u * falloff / radius_x
    dh_dv = depth * 4.0 * v * falloff / radius_y
    dh_dx = dh_du * cos_r - dh_dv * sin_r
    dh_dy = dh_du * sin_r + dh_dv * cos_r
    lx, ly = lighting.direction
    # Scaled by the radius so small and large dents show the same contrast, as under one lamp.
    shading = -(dh_dx * lx + dh_dy * ly) * radius_x * 0.17
    shadow = -0.06 * falloff ** 2                            # the hollow is a little darker overall
    rim = 0.05 * np.exp(-((np.sqrt(r2) - 1.05) / 0.08) ** 2)
    return (shading + shadow + rim).astype(np.float32) * (0.4 + lighting.tone)


def _paint_crack(rng: np.random.Generator, size: int, lighting: Lighting) -> np.ndarray:
    """A dark jagged path with a few thinner branches, widest where it started."""
    extent = rng.uniform(0.3, 0.5) * size
    heading = rng.uniform(0, 2 * math.pi)
    start = rng.uniform(0.25, 0.75, size=2) * size - 0.5 * extent * np.array(
        [math.cos(heading), math.sin(heading)])
    trunk = _jagged_path(rng, start, heading, extent)
    coverage = _draw_polyline(size, trunk, np.ones(len(trunk)),
                              np.linspace(rng.uniform(1.6, 2.4), 0.8, len(trunk)))
    for _ in range(int(rng.integers(2, 4))):
        fork = trunk[int(rng.integers(1, len(trunk) - 1))]
        branch_heading = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        branch = _jagged_path(rng, fork, branch_heading, extent * rng.uniform(0.3, 0.55))
        coverage = np.maximum(coverage, _draw_polyline(
            size, branch, np.ones(len(branch)), np.linspace(1.2, 0.6, len(branch))))
    return coverage * -(rng.uniform(0.6, 0.8) * lighting.tone)


def _jagged_path(rng: np.random.Generator, start: np.ndarray, heading: float, length: float
                 ) -> np.ndarray:
    """Points of a random walk that keeps its general heading but turns sharply at every step."""
    steps = max(4, int(length / 4))
    step = length / steps
    angles = heading + rng.uniform(-0.9, 0.9, size=steps)
    moves = np.stack([np.cos(angles), np.sin(angles)], axis=1) * step
    return np.vstack([start, start + np.cumsum(moves, axis=0)])


def _draw_polyline(size: int, points: np.ndarray, strength: np.ndarray, width: np.ndarray
                   ) -> np.ndarray:
    """Anti-aliased coverage (0..1) of a polyline whose strength and width vary along it."""
    coverage = np.zeros((size, size), dtype=np.float32)
    # Rasterise only the window around the line: most tries are rejected, so drawing is the hot path.
    margin = float(width.max()) + 1.0
    x0, y0 = (max(0, int(math.floor(v - margin))) for v in points.min(axis=0))
    x1, y1 = (min(size, int(math.ceil(v + margin))) for v in points.max(axis=0))
    if x1 <= x0 or y1 <= y0:
        return coverage
    canvas = Image.new("L", ((x1 - x0) * _SUPERSAMPLE, (y1 - y0) * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    scaled = (points - np.array([x0, y0])) * _SUPERSAMPLE
    for i in range(len(points) - 1):
        value = int(round(255 * float(strength[i] + strength[i + 1]) / 2))
        line_width = max(1, int(round(float(width[i]) * _SUPERSAMPLE)))
        draw.line([tuple(scaled[i]), tuple(scaled[i + 1])], fill=value, width=line_width)
        radius = line_width / 2                                # round joints, no gaps at the bends
        x, y = scaled[i + 1]
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=value)
    coverage[y0:y1, x0:x1] = np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32) / 255.0
    return coverage


_PAINTERS: dict[int, Painter] = {SCRATCH: _paint_scratch, DENT: _paint_dent, CRACK: _paint_crack}


if __name__ == "__main__":
    raise SystemExit(main())
