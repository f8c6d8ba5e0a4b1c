"""Every generated image of the project, in one place: the demo set, the pipelines' smoke data (COCO
layout included), the value benchmark's smoke data and the tests draw their pixels from here.

The images are learnable on purpose (smooth gradients, textures that continue under a mask, solid
shapes with exact polygons, class-dependent patterns), so that a run on them exercises a real data path
and a loss that can fall, not just noise. Every function takes a numpy ``Generator``: same seed, same
pixels."""
import json
import math
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

Colour = Tuple[int, int, int]
Polygon = List[int]


def random_colour(rng: np.random.Generator) -> Colour:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def smooth_waves(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8: one slow sine wave per channel in a random direction."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    a, b, c = rng.uniform(-3, 3, size=(3, 3))
    pixels = np.stack([np.sin(a[i] * xs + b[i] * ys + c[i]) for i in range(3)], axis=-1)
    return ((pixels + 1) * 127.5).astype(np.uint8)


def noisy_colour(colour: Colour, size: int, rng: np.random.Generator, noise: float = 25.0) -> np.ndarray:
    """(size, size, 3) uint8: a solid colour with Gaussian pixel noise (one colour per class)."""
    pixels = np.asarray(colour)[None, None] + rng.normal(0, noise, (size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def linear_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8: a two-colour gradient in a random direction."""
    start, end = np.array(random_colour(rng), np.float32), np.array(random_colour(rng), np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (start[None, None] * (1 - t[..., None]) + end[None, None] * t[..., None]).astype(np.uint8)


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8: stripes or a checkerboard with random period, orientation and colours."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(6, 24)
    a, b = np.array(random_colour(rng), np.uint8), np.array(random_colour(rng), np.uint8)
    if rng.random() < 0.5:
        angle = rng.uniform(0, math.pi)
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) / period
        mask = (np.floor(phase) % 2).astype(bool)
    else:
        mask = ((np.floor(xs / period) + np.floor(ys / period)) % 2).astype(bool)
    return np.where(mask[..., None], a[None, None], b[None, None])


def scene(rng: np.random.Generator, size: int) -> Image.Image:
    """A gradient or texture background with 1-4 ellipses, rectangles or triangles on top (the demo set)."""
    canvas = texture(rng, size) if rng.random() < 0.35 else linear_gradient(rng, size)
    image = Image.fromarray(canvas, mode="RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        centre = rng.uniform(0.15, 0.85, size=2) * size
        radius = rng.uniform(0.1, 0.3) * size
        box = [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]
        kind = rng.integers(0, 3)
        fill = random_colour(rng)
        if kind == 0:
            draw.ellipse(box, fill=fill)
        elif kind == 1:
            draw.rectangle(box, fill=fill)
        else:
            angles = rng.uniform(0, 2 * math.pi) + np.array([0, 2 * math.pi / 3, 4 * math.pi / 3])
            points = [(centre[0] + radius * math.cos(t), centre[1] + radius * math.sin(t)) for t in angles]
            draw.polygon(points, fill=fill)
    return image


def box_and_triangle(rng: np.random.Generator, size: int) -> Tuple[Image.Image, List[Tuple[int, Polygon]]]:
    """A dark noisy image with a red box (category 1) at a random place and a green triangle (category 2),
    and their exact polygons (detection and instance segmentation)."""
    image = Image.fromarray(rng.integers(0, 60, (size, size, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(size // 16, size // 3, 2))
    w, h = size * 3 // 8, size * 5 // 16
    shapes = [(1, [x, y, x + w, y, x + w, y + h, x, y + h]),
              (2, [size * 9 // 16, size * 9 // 16, size * 15 // 16, size * 9 // 16, size * 3 // 4, size * 15 // 16])]
    for category, polygon in shapes:
        draw.polygon(polygon, fill=(200, 40, 40) if category == 1 else (40, 200, 40))
    return image, shapes


def class_stripes(label: int, num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) uint8 grey: the class sets the orientation and frequency of a stripe pattern; phase,
    contrast and noise are random, so a CNN can learn the classes but no single pixel gives them away."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = np.pi * label / num_classes
    frequency = 2 + label % 3
    wave = np.sin(2 * np.pi * frequency * (np.cos(angle) * xs + np.sin(angle) * ys) + rng.uniform(0, 2 * np.pi))
    pixels = 128 + rng.uniform(40, 100) * wave + rng.normal(0, 20, (size, size))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def polygon_area(polygon: Polygon) -> float:
    """The shoelace area of a flat [x0, y0, x1, y1, ...] polygon (COCO's ``area``)."""
    xs, ys = polygon[0::2], polygon[1::2]
    return 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))


def write_coco_split(image_dir: Path, json_file: Path, count: int, size: int, rng: np.random.Generator,
                     names: Sequence[str] = ("box", "triangle"), suffix: str = ".jpg") -> Tuple[Path, Path]:
    """``count`` :func:`box_and_triangle` images in ``image_dir`` and their COCO instances file (boxes,
    polygon masks and areas that pycocotools evaluates): the detection smoke data and tests use this."""
    image_dir.mkdir(parents=True, exist_ok=True)
    images: List[dict] = []
    annotations: List[dict] = []
    for image_id in range(1, count + 1):
        image, shapes = box_and_triangle(rng, size)
        for category, polygon in shapes:
            xs, ys = polygon[0::2], polygon[1::2]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "segmentation": [[float(v) for v in polygon]], "iscrowd": 0,
                                "area": polygon_area(polygon),
                                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})
        file_name = f"{image_id:012d}{suffix}"
        image.save(image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(names)]
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return json_file, image_dir
