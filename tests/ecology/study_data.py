"""A synthetic cross-modal study: recordings whose sound and imagery share a known structure.

Each site has a latent "greenness" t in [0, 1] (a park at 1, a traffic street at 0). Its audio is
a 600 Hz tone ("birdsong") for the fraction t of every second and broadband noise ("traffic") for
the rest; its street and aerial images show a green scene over the fraction t of the view and a
grey built one over the rest (each view its own layout), with a little per-site pixel noise. So both similarity structures follow
|t_i − t_j| by construction: the design correlation of ``1 − |t_i − t_j|`` between the audio's and
the images' latents is 1. A control study pairs the same audio with images of permuted latents
(design correlation about 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.fixtures.study_models import write_wav


def site_audio(t: float, rng: np.random.Generator, seconds: float = 12.0, rate: int = 16_000) -> np.ndarray:
    """Birdsong (a 600 Hz tone) for the first fraction t of every second, traffic (noise) after."""
    time = np.arange(int(seconds * rate)) / rate
    bird = (time % 1.0) < t
    return np.where(bird, 0.4 * np.sin(2 * np.pi * 600 * time), 0.3 * rng.uniform(-1, 1, time.size))


def scene(green: bool, aerial: bool, size: int = 48) -> np.ndarray:
    """The two end-member scenes of each view (float RGB)."""
    img = np.empty((size, size, 3))
    if green:
        img[:] = (40, 150, 50) if not aerial else (20, 110, 30)
        img[:, ::8] = (90, 200, 80) if not aerial else (30, 60, 170)      # tree rows / a stream
    else:
        img[:] = (125, 125, 125) if not aerial else (200, 195, 185)
        img[size // 2 - 4:size // 2 + 4] = (40, 40, 40)                   # a road
    return img


def site_image(t: float, rng: np.random.Generator, aerial: bool, size: int = 48) -> np.ndarray:
    """The green scene over the left fraction t of the view, the built one over the rest."""
    green = np.arange(size)[None, :, None] < round(t * size)
    img = np.where(green, scene(True, aerial, size), scene(False, aerial, size))
    img = img + rng.normal(scale=3.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def design_correlation(audio_t: np.ndarray, image_t: np.ndarray) -> float:
    """Pearson r of ``1 − |t_i − t_j|`` of the audio and image latents (the structure put in)."""
    a = 1 - np.abs(audio_t[:, None] - audio_t[None, :])
    b = 1 - np.abs(image_t[:, None] - image_t[None, :])
    i, j = np.triu_indices(a.shape[0], k=1)
    return float(np.corrcoef(a[i, j], b[i, j])[0, 1])


def write_study(root: Path, *, n: int = 12, linked: bool = True, seed: int = 0, audio_seconds: float = 12.0,
                street: bool = True) -> tuple[Path, np.ndarray, np.ndarray]:
    """Manifest + files of the study; returns (manifest, audio latents, image latents)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    audio_t = rng.permutation(np.linspace(0.0, 1.0, n))
    image_t = audio_t.copy() if linked else rng.permutation(audio_t)
    header = "audio,lat,lon,image,city" + (",street_image" if street else "")
    rows = [header]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_wav(root / f"a{i}.wav", site_audio(float(audio_t[i]), rng, audio_seconds), 16_000)
        Image.fromarray(site_image(float(image_t[i]), rng, aerial=True)).save(root / f"g{i}.png")
        row = f"a{i}.wav,{51.0 + 0.01 * i:.4f},{-0.1 + 0.01 * i:.4f},g{i}.png,{'London' if i % 2 == 0 else 'Tokyo'}"
        if street:
            Image.fromarray(site_image(float(image_t[i]), rng, aerial=False)).save(root / f"s{i}.png")
            row += f",s{i}.png"
        rows.append(row)
    manifest = root / "recordings.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest, audio_t, image_t
