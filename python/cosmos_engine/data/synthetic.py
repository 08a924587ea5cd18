"""Procedural training clips: a teal robot moving over a textured, slowly panning background.

They let the tiny recipes, the tests and the README's first command run without downloading anything.
Everything is drawn with numpy from `np.random.default_rng([seed, index])`, so a (seed, index) pair always
gives the same pixels (and, encoded single-threaded, the same MP4 bytes). Each clip varies the background
(three sinusoidal gratings, tint, pan direction) and the robot (size, start, velocity, arm phase), so a
model has something to learn: a teal body that moves and bounces off the frame edges, with a waving arm.
"""

from __future__ import annotations

import numpy as np

DEFAULT_PROMPT = "A video of sks teal robot."
_TEAL = np.array([0.0, 150.0, 140.0], dtype=np.float32)


def render_clip(seed: int, index: int, frames: int, height: int, width: int) -> np.ndarray:
    """uint8 [frames, height, width, 3] RGB frames of clip `index` of the set drawn with `seed`."""
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    # Background: three gratings (cycles per pixel, direction, phase) mixed into a muted tint, panned.
    freqs = rng.uniform(0.015, 0.08, size=3) * 2 * np.pi
    angles = rng.uniform(0, np.pi, size=3)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    base = rng.uniform(70, 170, size=3).astype(np.float32)
    colors = rng.uniform(-40, 40, size=(3, 3)).astype(np.float32)
    pan = rng.uniform(-0.5, 0.5, size=2).astype(np.float32)  # pixels per frame

    # Robot: a rounded body of half-size (r, 0.7 r), bouncing; an arm swinging from its top.
    r = float(min(height, width) * rng.uniform(0.12, 0.2))
    pos = rng.uniform([r, r], [width - r, height - r]).astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    speed = min(height, width) * 0.03
    vel = np.array([np.cos(direction), np.sin(direction)], dtype=np.float32) * speed
    arm_phase = rng.uniform(0, 2 * np.pi)

    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        x0, y0 = xx + pan[0] * t, yy + pan[1] * t
        image = np.broadcast_to(base, (height, width, 3)).copy()
        for k in range(3):
            wave = np.sin(freqs[k] * (x0 * np.cos(angles[k]) + y0 * np.sin(angles[k])) + phases[k])
            image += wave[..., None] * colors[k]

        dx, dy = (xx - pos[0]) / r, (yy - pos[1]) / (0.7 * r)
        body = dx**4 + dy**4 <= 1.0
        shade = 1.0 - 0.25 * np.clip(dy, -1, 1)[..., None]  # lit from above
        image = np.where(body[..., None], _TEAL * shade, image)

        swing = np.sin(arm_phase + 0.4 * t)
        tip = pos + np.array([1.3 * r * swing, -1.4 * r], dtype=np.float32)
        root = pos + np.array([0.0, -0.6 * r], dtype=np.float32)
        arm = _segment_mask(xx, yy, root, tip, 0.15 * r)
        image = np.where(arm[..., None], _TEAL * 0.8, image)
        out[t] = np.clip(image, 0, 255).astype(np.uint8)

        pos += vel
        for axis, limit in ((0, width), (1, height)):
            if not r <= pos[axis] <= limit - r:
                vel[axis] = -vel[axis]
                pos[axis] = np.clip(pos[axis], r, limit - r)
    return out


def _segment_mask(xx: np.ndarray, yy: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within `radius` of the segment a-b."""
    ab = b - a
    t = np.clip(((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1]) / float(ab @ ab), 0.0, 1.0)
    return (xx - a[0] - t * ab[0]) ** 2 + (yy - a[1] - t * ab[1]) ** 2 <= radius**2
