"""Nuclei inference on images and whole-slide images: overlapping windows, stitched by centroid
ownership (the window plan and the stitching rules are :mod:`.stitch`'s).

Windows are read, predicted (batched, on the GPU when there is one; optionally with dihedral
test-time augmentation, :mod:`.tta`, and stain normalisation, :mod:`.stain_norm`) and
post-processed one batch at a time, and nuclei are yielded as they are found: memory does not
grow with the slide (only the output does). Slides are read at the model's mpp
(``tiling.slide.SlideAtMpp``: the level choice and resize of tiling) and polygons mapped back to
level-0 coordinates; images are resampled to it when their own mpp differs by more than 10 %
(:func:`predict_image_at_mpp`) and outputs mapped back to their pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage as ndi
from torch import nn

from pathssl.nuclei.config import NucleiConfig
from pathssl.nuclei.geojson import Nucleus, mask_ring
from pathssl.nuclei.model import HV_KEY, NP_KEY, TP_KEY
from pathssl.nuclei.postprocess import Instances, PostProcessConfig, postprocess
from pathssl.nuclei.stain_norm import Normalizer
from pathssl.nuclei.stitch import BorderDedup, Window, core_box, kept_ids, plan_windows
from pathssl.nuclei.tta import tta_forward

if TYPE_CHECKING:
    from tiling.slide import SlideAtMpp

ReadFn = Callable[[int, int, int], NDArray[np.uint8]]  # (x, y, size) -> (size, size, 3)


class WindowSegmenter(Protocol):
    """A model that gives instances itself (e.g. :class:`pathssl.nuclei.classical.
    ClassicalNuclei`): windows ``(B, S, S, 3)`` uint8 -> one :class:`Instances` each."""

    def segment_batch(self, images: NDArray[np.uint8]) -> list[Instances]: ...


class NucleiPredictor:
    """Runs a nuclei model over windows. ``model``: a module ``(B, 3, S, S)`` uint8 -> branch
    logits (:class:`pathssl.nuclei.model.NucleiModel`, or any module with that contract), moved
    to ``device``, on CUDA under bf16 autocast, its outputs post-processed on the CPU one window
    at a time; or a :class:`WindowSegmenter` (the classical model), called on the windows.

    ``tta``: merge the model's outputs over the 8 dihedral transforms of each window before
    post-processing (:func:`pathssl.nuclei.tta.tta_forward`; modules only). ``stain``: an image
    normaliser (:func:`pathssl.nuclei.stain_norm.normalizer`) applied to a whole image before
    its windows are cut (:meth:`predict_image`), or to each window that is not glass (slides)."""

    def __init__(
        self,
        model: nn.Module | WindowSegmenter,
        *,
        window: int = 256,
        overlap: int = 96,
        batch_size: int = 4,
        device: str | torch.device = "cpu",
        postprocess_cfg: PostProcessConfig | None = None,
        progress: bool = True,
        tta: bool = False,
        stain: Normalizer | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if isinstance(model, nn.Module) else model
        if tta and not isinstance(model, nn.Module):
            raise ValueError(
                f"test-time augmentation merges a network's outputs; {model!r} has none"
            )
        self.window, self.overlap, self.batch_size = window, overlap, batch_size
        self.pp = postprocess_cfg or PostProcessConfig()
        self.slack = min(4.0, overlap / 4)  # px a window keeps past its cut (see .stitch)
        self.progress = progress
        self.tta, self.stain = tta, stain
        self.windows_done = 0  # windows read
        self.windows_run = 0  # windows through the model (the rest: glass, skipped)

    @torch.inference_mode()
    def predict_batch(self, images: NDArray[np.uint8]) -> list[Instances]:
        """``(B, S, S, 3)`` uint8 -> one :class:`Instances` per window."""
        if not isinstance(self.model, nn.Module):
            return self.model.segment_batch(images)
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(self.device)
        cuda = self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cuda):
            raw = tta_forward(self.model, x) if self.tta else self.model(x)
            out = {k: v.float().cpu() for k, v in raw.items()}
        tp = out.get(TP_KEY)
        if tp is not None and tp.shape[1] <= 2:  # one type: the TP branch was never trained
            tp = None
        return [
            postprocess(out[NP_KEY][i], out[HV_KEY][i], None if tp is None else tp[i], self.pp)
            for i in range(len(images))
        ]

    def owned_part(self, img: NDArray[np.uint8], win: Window) -> NDArray[np.uint8]:
        """The pixels of a window whose nuclei it may keep (its part, ``slack`` px beyond)."""
        x0 = max(int(win.own_x[0] - win.x - self.slack), 0)
        y0 = max(int(win.own_y[0] - win.y - self.slack), 0)
        x1 = int(np.ceil(win.own_x[1] - win.x + self.slack))
        y1 = int(np.ceil(win.own_y[1] - win.y + self.slack))
        return img[y0:y1, x0:x1]

    def run(
        self,
        read: ReadFn,
        width: int,
        height: int,
        skip: Callable[[NDArray[np.uint8]], bool],
        normalise: bool = False,
    ) -> Iterator[tuple[Window, Instances, NDArray[np.int64]]]:
        """(window, its instances, kept ids) for every window, in batches; ``skip`` looks at the
        window's own part (:meth:`owned_part`): glass elsewhere in it is another window's.
        ``normalise``: apply ``stain`` to each window that is not skipped."""
        from tqdm import tqdm

        plan = plan_windows(width, height, self.window, self.overlap)
        dedup = BorderDedup()
        bar = tqdm(total=len(plan), unit="win", disable=not self.progress, dynamic_ncols=True)
        try:
            for b in range(0, len(plan), self.batch_size):
                wins = plan[b : b + self.batch_size]
                imgs = np.stack([read(w.x, w.y, self.window) for w in wins])
                todo = [i for i in range(len(wins)) if not skip(self.owned_part(imgs[i], wins[i]))]
                batch = imgs[todo]
                if normalise and self.stain is not None:
                    batch = np.stack([self.stain(im) for im in batch]) if todo else batch
                results = self.predict_batch(batch) if todo else []
                self.windows_run += len(todo)
                for i, res in zip(todo, results, strict=True):
                    win = wins[i]
                    keep = kept_ids(res, win, self.window, self.slack)
                    keep = dedup.filter(win.x, win.y, core_box(win, self.window), res, keep)
                    yield win, res, keep
                self.windows_done += len(wins)
                bar.update(len(wins))
        finally:
            bar.close()

    def predict_image(self, image: NDArray[np.uint8]) -> Instances:
        """A whole image ``(H, W, 3)`` uint8 at the model's mpp -> stitched :class:`Instances`
        (each nucleus with the type and probability from the window that owns it)."""
        h, w = image.shape[:2]
        s = self.window
        if self.stain is not None:  # one fit per image, not per window
            image = self.stain(image)
        pad = np.full((max(h, s), max(w, s), 3), 255, np.uint8)
        pad[:h, :w] = image
        inst = np.zeros((h, w), np.int32)
        typ, prob = [0], [0.0]  # indexed by stitched id

        def read(x: int, y: int, size: int) -> NDArray[np.uint8]:
            return pad[y : y + size, x : x + size]

        for win, res, keep in self.run(read, w, h, skip=lambda _: False):
            if not len(keep):
                continue
            lut = np.zeros(len(res) + 1, np.int32)
            lut[keep] = np.arange(len(typ), len(typ) + len(keep))
            local = lut[res.inst][: h - win.y, : w - win.x]
            target = inst[win.y : win.y + s, win.x : win.x + s]
            free = (local > 0) & (target == 0)
            target[free] = local[free]
            typ.extend(res.type[keep - 1].tolist())
            prob.extend(res.prob[keep - 1].tolist())
        present = np.unique(inst)
        present = present[present > 0]
        relabel = np.zeros(len(typ), np.int32)
        relabel[present] = np.arange(1, len(present) + 1)
        inst = relabel[inst]
        if not len(present):
            return Instances(inst, np.zeros_like(inst))
        idx = np.arange(1, len(present) + 1)
        cy, cx = np.asarray(ndi.center_of_mass(np.ones_like(inst), inst, idx)).T
        t = np.asarray(typ, np.int64)[present]
        type_lut = np.concatenate([[0], t]).astype(np.int32)
        return Instances(
            inst,
            type_lut[inst],
            np.stack([cx, cy], 1),
            t,
            np.asarray(prob)[present],
            np.bincount(inst.ravel())[1:].astype(np.int64),
        )

    def nuclei(
        self, read: ReadFn, width: int, height: int, to_level0: float, origin: tuple[float, float]
    ) -> Iterator[Nucleus]:
        """Stream :class:`Nucleus` records (level-0 coordinates: ``origin + p * to_level0``)."""
        for win, res, keep in self.run(read, width, height, skip=is_background, normalise=True):
            off = (origin[0] + win.x * to_level0, origin[1] + win.y * to_level0)
            yield from instances_to_nuclei(res, keep, to_level0, off)


def configured_predictor(
    model: nn.Module,
    cfg: NucleiConfig,
    device: str | torch.device = "cpu",
    stain_reference: dict[str, Any] | None = None,
) -> NucleiPredictor:
    """A quiet predictor with a config's ``predict`` (window, overlap, batch size, ``tta``) and
    ``postprocess`` settings; inputs normalised to ``stain_reference`` (a checkpoint's
    ``meta["stain_reference"]``) when there is one and ``predict.stain_norm`` is on."""
    from pathssl.nuclei.stain_norm import normalizer

    use_stain = stain_reference is not None and cfg.predict.stain_norm
    return NucleiPredictor(
        model,
        window=cfg.predict.window,
        overlap=cfg.predict.overlap,
        batch_size=cfg.predict.batch_size,
        device=device,
        postprocess_cfg=cfg.postprocess,
        progress=False,
        tta=cfg.predict.tta,
        stain=normalizer(stain_reference) if use_stain and stain_reference else None,
    )


def instances_to_nuclei(
    res: Instances,
    ids: NDArray[np.int64] | None = None,
    scale: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
) -> Iterator[Nucleus]:
    """:class:`Nucleus` records of ``ids`` (default all) at ``origin + p * scale``, ``p`` in the
    pixel-corner frame QuPath uses (pixel ``(i, j)`` covers ``[j, j + 1] x [i, i + 1]``); nuclei
    too small for a valid polygon are left out."""
    objs = ndi.find_objects(res.inst)
    for k in range(1, len(res) + 1) if ids is None else ids.tolist():
        sl = objs[k - 1] if k - 1 < len(objs) else None
        if sl is None:
            continue
        ring = mask_ring(res.inst[sl] == k)
        if ring is None:
            continue
        # pixel-centre frame (pixel j spans j - 0.5 .. j + 0.5) -> corner frame (QuPath, and the
        # level-0 origin: pixel j spans j .. j + 1), then model px -> level-0 px
        ring = (ring + [sl[1].start + 0.5, sl[0].start + 0.5]) * scale + origin
        c = (res.centroid[k - 1] + 0.5) * scale + origin
        yield Nucleus(
            ring,
            (float(c[0]), float(c[1])),
            int(res.type[k - 1]),
            float(res.prob[k - 1]),
            float(res.area[k - 1]) * scale**2,
        )


def is_background(rgb: NDArray[np.uint8], white: int = 220, fraction: float = 0.98) -> bool:
    """Nearly all pixels bright in every channel: glass, skip the model."""
    return bool((rgb.min(axis=2) > white).mean() > fraction)


def predict_image_at_mpp(
    predictor: NucleiPredictor,
    image: NDArray[np.uint8],
    model_mpp: float,
    image_mpp: float | None = None,
    *,
    name: str = "image",
    log: Callable[[str], None] | None = None,
) -> tuple[Instances, float]:
    """Nuclei of an image ``(H, W, 3)`` uint8 at ``image_mpp`` (the INPUT's resolution) ->
    (instances at the model's resolution, ``f`` = model px per image px).

    The image is resampled to ``model_mpp`` (:func:`tiling.slide.resize_rgb`) when the two differ
    by more than 10 % (``f`` = ``image_mpp / model_mpp``), else read as is (``f`` = 1); without
    ``image_mpp`` it is taken at the model's. ``log`` gets one line saying which.
    :func:`instances_at_image` maps the result back to the image's pixels, and
    :func:`instances_to_nuclei` with ``scale=1 / f`` gives polygons in them.
    """
    from tiling.slide import mpp_differs, resize_rgb

    h, w = image.shape[:2]
    f = 1.0
    if image_mpp is None:
        note = f"{name}: no mpp given; taken at the model's {model_mpp:g} um/px (set --mpp)"
    elif mpp_differs(image_mpp, model_mpp):
        f = image_mpp / model_mpp
        note = (
            f"note: {name} at {image_mpp:g} um/px differs from the model's {model_mpp:g} um/px "
            f"by more than 10 %; resampled to {model_mpp:g} um/px, outputs in the image's pixels"
        )
    else:
        note = f"{name}: read at {image_mpp:g} um/px (model {model_mpp:g} um/px)"
    if log is not None:
        log(note)
    small = image if f == 1.0 else resize_rgb(image, max(1, round(w * f)), max(1, round(h * f)))
    return predictor.predict_image(np.asarray(small, np.uint8)), f


def instances_at_image(
    res: Instances, shape: tuple[int, int]
) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    """Instance and type maps of ``res`` taken to an image of ``shape`` ``(H, W)`` (nearest
    neighbour, pixel centres aligned; :func:`pathssl.nuclei.data.resize_labels`)."""
    from pathssl.nuclei.data import resize_labels

    h, w = shape
    return resize_labels(res.inst, w, h), resize_labels(res.types, w, h)


@dataclass
class SlideResult:
    geojson: Path
    count: int
    windows: int
    slide_mpp: float
    overlay: Path | None


def predict_slide(
    predictor: NucleiPredictor,
    path: str | Path,
    out: str | Path,
    type_names: list[str],
    model_mpp: float,
    *,
    region: tuple[int, int, int, int] | None = None,
    overlay: str | Path | None = None,
    overlay_side: int = 2048,
    assume_mpp: float | None = None,
    log: Callable[[str], None] | None = None,
) -> SlideResult:
    """Nuclei of a slide (or a level-0 ``region`` ``(x, y, w, h)``) -> streamed GeoJSON, plus a
    PNG overlay on a thumbnail at most ``overlay_side`` px wide, built from the windows as they
    are read and outlined as nuclei are found (memory: the thumbnail, whatever the slide).

    The slide is read at ``model_mpp`` through :class:`tiling.slide.SlideAtMpp` (the level
    choice, resize and upsampling limit of ``pathssl tile``; ``assume_mpp`` for slides that
    record no resolution); ``log`` gets one line saying at which mpp and from which level."""
    from tiling.slide import SlideAtMpp

    with SlideAtMpp(path, model_mpp, assume_mpp=assume_mpp) as src:
        res = src.resolution
        if log is not None:
            log(
                f"{src.name}: read at the model's {model_mpp:g} um/px from level "
                f"{src.choice.level} (slide {res.mpp:g} um/px, {res.source})"
            )
        return _predict_slide(predictor, src, out, type_names, region, overlay, overlay_side)


def _predict_slide(
    predictor: NucleiPredictor,
    src: SlideAtMpp,
    out: str | Path,
    type_names: list[str],
    region: tuple[int, int, int, int] | None,
    overlay: str | Path | None,
    overlay_side: int,
) -> SlideResult:
    from pathssl.nuclei.geojson import GeoJSONWriter, draw_overlay, write_png

    width, height = src.size
    f, slide_mpp = src.to_level0, src.resolution.mpp

    def read(x: int, y: int, size: int) -> NDArray[np.uint8]:
        return src.read(x, y, size, size)

    x0 = y0 = 0
    if region is not None:
        x0, y0 = int(region[0] / f), int(region[1] / f)
        width = min(int(region[2] / f), width - x0)
        height = min(int(region[3] / f), height - y0)

    canvas, k = None, 1.0
    if overlay is not None:  # filled from the windows as they are read: no second slide pass
        k = min(1.0, overlay_side / max(width * f, height * f))
        shape = (max(int(height * f * k), 1), max(int(width * f * k), 1))
        canvas = np.full((*shape, 3), 255, np.uint8)
        filled = np.zeros(shape, bool)  # pixels pasted once only: outlines are never covered

    def read_region(x: int, y: int, size: int) -> NDArray[np.uint8]:
        img = read(x + x0, y + y0, size)
        if canvas is not None:
            n = max(int(round(size * f * k)), 1)
            cx, cy = int(round(x * f * k)), int(round(y * f * k))
            small = cv2.resize(img, (n, n), interpolation=cv2.INTER_AREA)
            sub, done = canvas[cy : cy + n, cx : cx + n], filled[cy : cy + n, cx : cx + n]
            h, w = sub.shape[:2]
            sub[~done] = small[:h, :w][~done]
            done[...] = True
        return img

    origin = (x0 * f, y0 * f)
    done0 = predictor.windows_done
    with GeoJSONWriter(out, type_names, slide_mpp) as gw:
        for nuc in predictor.nuclei(read_region, width, height, f, origin):
            gw.write(nuc)
            if canvas is not None:
                draw_overlay(canvas, [nuc], type_names, k, origin, inplace=True)
        count = gw.count
    png = write_png(overlay, canvas) if overlay is not None and canvas is not None else None
    return SlideResult(Path(out), count, predictor.windows_done - done0, slide_mpp, png)
