"""`python -m cpm_lightning.predict ckpt=PATH input=IMAGE_OR_DIR [+experiment=NAME] [key=value ...]`.

For each image: the person box (centre and scale from `people`, `centre`/`scale`, else the
whole image) is warped to the network input exactly as in training, the configured test-time
procedures run (inference.py), and the joints are mapped back to the image's own pixels.
Writes predictions.json (keypoints and scores per image, and the files that failed with the
reason) and overlays/<name>.png (the skeleton drawn on the image).

Any image works: grayscale, palette, RGBA (composited on grey), CMYK, 16-bit (scaled to 8-bit),
EXIF-rotated, of any size. Images over `max_megapixels` are never decoded at full size: JPEGs are
decoded at 1/2, 1/4 or 1/8 scale by the decoder itself; other formats are refused with a message.
A file that is empty, not an image or truncated is reported and the rest are still processed;
the exit status is then 2.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageOps, UnidentifiedImageError

from cpm_lightning.config_schema import check_config
from cpm_lightning.data.augment import TARGET_DIST, apply_affine, crop_to_input_affine, invert_affine
from cpm_lightning.data.skeletons import Skeleton
from cpm_lightning.errors import ConfigError, UserFacingError, report_user_errors
from cpm_lightning.inference import (
    InferenceOptions,
    affine_scale,
    decode,
    fused_belief_maps,
    input_size_of,
    load_module,
    skeleton_of,
)
from cpm_lightning.train import CONFIG_DIR

OVERLAY_MAX_SIDE = 1024  # overlays are drawn on a copy no larger than this
BACKGROUND = (128, 128, 128)  # transparent pixels become the release's padding grey
MIN_ZOOM_WITHOUT_PRESHRINK = 0.5  # below this, shrink with INTER_AREA first (no aliasing)


class ImageReadError(UserFacingError):
    """One input file cannot be used; predict reports it and goes on with the others."""


@contextmanager
def _no_pillow_pixel_limit():
    # Pillow refuses > 179 MP at open(); we check the size ourselves against max_megapixels and,
    # for JPEG, decode reduced, so its limit must not fire before we have seen the header.
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_image(path: Path, max_megapixels: float) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(image (H, W, 3) uint8 RGB, decoded pixels per original pixel, original (width, height)).

    Raises ImageReadError naming the file, what is wrong and what to do.
    """
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes); re-copy or re-export it.")
    try:
        with _no_pillow_pixel_limit():
            image = Image.open(path)  # reads the header only
            width, height = image.size
            megapixels = width * height / 1e6
            if megapixels > max_megapixels:
                if image.format != "JPEG":
                    raise ImageReadError(
                        f"{path}: {width} x {height} pixels ({megapixels:.0f} MP) is more than "
                        f"max_megapixels={max_megapixels:g}, and {image.format} cannot be decoded reduced; "
                        "downscale the image first or raise max_megapixels (memory permitting)."
                    )
                # The JPEG decoder scales by 1/2, 1/4 or 1/8; draft() picks the smallest >= the request.
                reduction = next((k for k in (2, 4, 8) if megapixels / k**2 <= max_megapixels), 8)
                image.draft("RGB", (math.ceil(width / reduction), math.ceil(height / reduction)))
                if image.size[0] * image.size[1] / 1e6 > max_megapixels:
                    raise ImageReadError(
                        f"{path}: {width} x {height} pixels is more than max_megapixels={max_megapixels:g} even "
                        "decoded at 1/8 size; downscale the image first."
                    )
            image.load()
            image = ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image Pillow can read (JPEG, PNG, BMP, TIFF, WebP, ...).") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: the image cannot be decoded ({error}); it is probably truncated.") from None
    return to_rgb8(image), image.size[0] / width, (width, height)


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 255:  # 16-bit data: full range 0..65535 -> 0..255
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(canvas, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def person_box(name: str, size: tuple[int, int], cfg: DictConfig, people: dict) -> tuple[np.ndarray, float]:
    """(centre, scale) in original pixels: from `people`, else `centre`/`scale`, else the whole
    image (its longer side fills the input)."""
    if name in people:
        entry = people[name]
        return np.asarray(entry["centre"], np.float64), float(entry["scale"])
    if cfg.centre is not None and cfg.scale is not None:
        return np.asarray(cfg.centre, np.float64), float(cfg.scale)
    width, height = size
    return np.array([(width - 1) / 2.0, (height - 1) / 2.0]), TARGET_DIST * max(width, height) / 368.0


def load_people(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        people = json.loads(Path(path).read_text())
        for name, entry in people.items():
            if len(entry["centre"]) != 2 or float(entry["scale"]) <= 0:
                raise ValueError(f"entry {name!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(
            f"people={path} cannot be used ({error}): it must be a JSON object "
            '{"image.jpg": {"centre": [x, y], "scale": person_height / 200}, ...}.'
        ) from None
    return people


def input_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    raise ConfigError(f"input={path} does not exist: pass an image file or a directory of images.")


def prepare(image: np.ndarray, pixel_scale: float, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image, affine from it to the input): undo the decoder's reduction, and shrink with area
    averaging first when the warp would shrink more than 2x (bilinear warps alias there)."""
    decoded_affine = affine.copy()
    decoded_affine[:, :2] /= pixel_scale
    zoom = float(affine_scale(decoded_affine[None])[0])
    if zoom < MIN_ZOOM_WITHOUT_PRESHRINK:
        shrink = zoom / MIN_ZOOM_WITHOUT_PRESHRINK
        size = (max(1, round(image.shape[1] * shrink)), max(1, round(image.shape[0] * shrink)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        decoded_affine[:, :2] /= shrink
    return image, decoded_affine


def draw_overlay(path: Path, image: np.ndarray, joints: np.ndarray, pixel_scale: float, skeleton: Skeleton) -> None:
    """The skeleton on a copy of the image at most OVERLAY_MAX_SIDE pixels wide or high."""
    factor = min(1.0, OVERLAY_MAX_SIDE / max(image.shape[:2]))
    canvas = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA) if factor < 1 else image
    canvas = np.ascontiguousarray(canvas[..., ::-1])  # BGR for cv2
    points = joints * pixel_scale * factor
    thickness = max(1, round(max(canvas.shape[:2]) / 200))
    for a, b in skeleton.limbs:
        pa, pb = (tuple(int(round(v)) for v in points[k]) for k in (a, b))
        cv2.line(canvas, pa, pb, (0, 255, 0), thickness, cv2.LINE_AA)
    for x, y in points:
        cv2.circle(canvas, (int(round(x)), int(round(y))), thickness + 1, (0, 0, 255), -1, cv2.LINE_AA)
    cv2.imwrite(str(path), canvas)


def predict(cfg: DictConfig) -> dict:
    check_config(cfg, "predict")  # unknown keys and wrong types stop here, before any loading
    output_dir = Path(cfg.paths.output_dir)
    files = input_files(Path(cfg.input))
    people = load_people(cfg.people)
    test_time = InferenceOptions.from_options(OmegaConf.to_container(cfg.test_time, resolve=True))
    module = load_module(cfg.ckpt, cfg.device)
    skeleton = skeleton_of(module)
    input_size = input_size_of(module, cfg.data.input_size)
    if cfg.overlays:
        (output_dir / "overlays").mkdir(parents=True, exist_ok=True)
    results, failures = [], []
    for path in files:
        try:
            image, pixel_scale, size = read_image(path, cfg.max_megapixels)
        except ImageReadError as error:
            print(f"skipped: {error}", file=sys.stderr)
            failures.append({"file": str(path), "error": str(error)})
            continue
        centre, scale = person_box(path.name, size, cfg, people)
        affine = crop_to_input_affine(centre, scale, input_size)
        network_image, network_affine = prepare(image, pixel_scale, affine)
        maps = fused_belief_maps(
            module, [network_image], network_affine[None], input_size, test_time, skeleton.flip_permutation
        )
        joints, scores = decode(maps[:, -1], module.model.stride, test_time)
        joints = apply_affine(invert_affine(affine), joints[0].cpu().numpy())
        results.append(
            {
                "file": str(path),
                "width": size[0],
                "height": size[1],
                "centre": centre.tolist(),
                "scale": scale,
                "keypoints": [
                    {"name": name, "x": float(x), "y": float(y), "score": float(s)}
                    for name, (x, y), s in zip(skeleton.joint_names, joints, scores[0].tolist())
                ],
            }
        )
        if cfg.overlays:
            draw_overlay(output_dir / "overlays" / f"{path.stem}.png", image, joints, pixel_scale, skeleton)
    summary = {
        "checkpoint": str(cfg.ckpt),
        "input_size": input_size,
        "coordinates": "original image pixels, 0-based pixel centres",
        "test_time": OmegaConf.to_container(cfg.test_time, resolve=True),
        "images": results,
        "failed": failures,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "predictions.json").write_text(json.dumps(summary, indent=2))
    print(f"{len(results)} image(s) predicted, {len(failures)} failed: {output_dir / 'predictions.json'}")
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    summary = report_user_errors(lambda: predict(cfg))
    if summary["failed"]:
        sys.exit(2)


if __name__ == "__main__":
    main()
