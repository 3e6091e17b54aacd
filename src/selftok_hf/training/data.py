"""Image data for tokenizer and renderer training: sources, the official augmentation, deterministic batching.

- :func:`load_image_dataset` opens any ``datasets`` dataset with an image column (a Hub-style name that is cached
  locally, a folder saved with ``save_to_disk``, an image folder through ``load_dataset("imagefolder")``), or one of
  the offline sources this machine has: ``offline:photos`` (the scikit-image / scikit-learn photographs) and
  ``offline:fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
- :func:`random_resize_crop` is the official training augmentation (``RandomResize`` + ``RandomCrop``).
- :class:`StepBatches` draws batch ``s`` from a generator seeded by ``(seed, s)`` only, so a run resumed at step
  ``s`` sees exactly the images and crops it would have seen without the interruption.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Sequence
from dataclasses import field
from pathlib import Path

import numpy as np
import PIL.Image
import torch

__all__ = [
    "FASHION_MNIST_DIR",
    "HELD_OUT_PHOTOS",
    "OFFLINE_PHOTOS",
    "OPENCV_DATA_DIR",
    "OPENCV_PHOTOS",
    "StepBatches",
    "cache_latents",
    "center_resize_crop",
    "image_source_field",
    "images_to_tensor",
    "load_image_dataset",
    "random_resize_crop",
    "step_seed",
]

#: Photographs bundled with scikit-image / scikit-learn, used by ``offline:photos`` (``module:name``).
OFFLINE_PHOTOS = (
    "skimage:rocket",
    "skimage:hubble_deep_field",
    "skimage:immunohistochemistry",
    "skimage:retina",
    "skimage:colorwheel",
    "skimage:camera",
    "skimage:brick",
    "skimage:grass",
    "skimage:gravel",
    "skimage:coins",
    "sklearn:china.jpg",
    "sklearn:flower.jpg",
)
#: Never used for training by ``offline:photos``: the README's sample photos (``selftok_hf/assets``).
HELD_OUT_PHOTOS = ("skimage:astronaut", "skimage:coffee", "skimage:chelsea")

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

#: Debian's ``opencv-doc`` sample images (``apt-get install opencv-doc``, or only its images:
#: ``apt-get download opencv-doc && dpkg-deb --fsys-tarfile opencv-doc_*.deb | tar x ./usr/share/doc/opencv-doc/examples/data``
#: and ``OPENCV_DATA_DIR`` pointing at that folder).
OPENCV_DATA_DIR = Path(os.environ.get("OPENCV_DATA_DIR", "/usr/share/doc/opencv-doc/examples/data"))
#: ``offline:opencv-photos``: the colour photographs and renders among them, split by scene. Near-duplicate pairs
#: (stereo views, before / after edits) stay inside one split; ``test`` is for reported numbers only and
#: ``validation`` for choosing between models.
OPENCV_PHOTOS = {
    "train": (
        "Blender_Suzanne1.jpg", "Blender_Suzanne2.jpg", "HappyFish.jpg", "LinuxLogo.jpg", "WindowsLogo.jpg", "aero1.jpg",
        "aero3.jpg", "aloeL.jpg", "aloeR.jpg", "apple.jpg", "blox.jpg", "board.jpg", "cards.png", "chicky_512.png",
        "ela_original.jpg", "ela_modified.jpg", "graf1.png", "graf3.png", "left.jpg", "right.jpg", "leuvenA.jpg",
        "leuvenB.jpg", "orange.jpg", "pca_test1.jpg", "pic1.png", "pic2.png", "pic3.png", "pic5.png", "rubberwhale1.png",
        "rubberwhale2.png", "starry_night.jpg", "sudoku.png", "text_defocus.jpg", "text_motion.jpg",
    ),
    "validation": ("licenseplate_motion.jpg", "pic4.png", "squirrel_cls.jpg", "stuff.jpg"),
    "test": ("baboon.jpg", "building.jpg", "butterfly.jpg", "fruits.jpg", "home.jpg", "messi5.jpg", "pic6.png", "smarties.png"),
}


def _offline_photo(spec: str) -> PIL.Image.Image:
    module, name = spec.split(":")
    try:
        if module == "skimage":
            import skimage.data

            array = getattr(skimage.data, name)()
        else:
            from sklearn.datasets import load_sample_image

            array = load_sample_image(name)
    except ImportError as error:
        raise ImportError(f"offline:photos needs scikit-image and scikit-learn: pip install 'selftok-hf[photos]' ({error})") from error
    return PIL.Image.fromarray(array).convert("RGB")


def _opencv_photos(split: str) -> dict[str, list]:
    if split not in OPENCV_PHOTOS:
        raise ValueError(f"offline:opencv-photos has the splits {sorted(OPENCV_PHOTOS)}, not {split!r}")
    missing = [name for name in OPENCV_PHOTOS[split] if not (OPENCV_DATA_DIR / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{OPENCV_DATA_DIR} lacks {missing[:3]}...: install Debian's `opencv-doc` package or set OPENCV_DATA_DIR "
            "(see selftok_hf.training.data.OPENCV_DATA_DIR)"
        )
    images = []
    for name in OPENCV_PHOTOS[split]:
        with PIL.Image.open(OPENCV_DATA_DIR / name) as image:
            images.append(image.convert("RGB"))
    return {"image": images, "name": list(OPENCV_PHOTOS[split])}


def _fashion_mnist(split: str, limit: int | None) -> list[PIL.Image.Image]:
    prefix = "train" if split == "train" else "t10k"
    path = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: install Debian's `dataset-fashion-mnist` package or set FASHION_MNIST_DIR"
        )
    with gzip.open(path) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    pixels = pixels[:limit] if limit else pixels
    return [PIL.Image.fromarray(p).convert("RGB") for p in pixels]


def load_image_dataset(
    source: str,
    split: str = "train",
    image_column: str = "image",
    data_dir: str | None = None,
    limit: int | None = None,
    max_side: int | None = None,
    ids_column: str | None = None,
):
    """Open an image dataset as a ``datasets.Dataset`` with a PIL ``image`` column.

    Args:
        source: ``offline:photos`` (scikit-image / scikit-learn photos; split ``train`` excludes
            :data:`HELD_OUT_PHOTOS`, split ``test`` is exactly them), ``offline:opencv-photos`` (Debian's
            ``opencv-doc`` photographs, splits ``train`` / ``validation`` / ``test`` of :data:`OPENCV_PHOTOS`),
            ``offline:fashion-mnist`` (split ``train`` / ``test``), ``imagefolder`` (with ``data_dir``), a directory written by ``Dataset.save_to_disk``, or any
            name ``datasets.load_dataset`` resolves offline.
        split: dataset split.
        image_column: the column holding images (renamed to ``image``).
        limit: keep only the first ``limit`` rows.
        max_side: downscale (once) images whose shortest edge is longer than this.
        ids_column: a dataset with this column (precomputed Selftok ids, e.g. ``image_token_ids`` from
            ``selftok tokenize-dataset``) may have no image column.
    """
    import datasets

    if source == "offline:photos":
        specs = OFFLINE_PHOTOS if split == "train" else HELD_OUT_PHOTOS
        ds = datasets.Dataset.from_dict({"image": [_offline_photo(s) for s in specs], "name": list(specs)})
    elif source == "offline:opencv-photos":
        ds = datasets.Dataset.from_dict(_opencv_photos(split))
    elif source == "offline:fashion-mnist":
        ds = datasets.Dataset.from_dict({"image": _fashion_mnist(split, limit)})
    elif source == "imagefolder":
        if data_dir is None:
            raise ValueError("source='imagefolder' needs data_dir")
        ds = datasets.load_dataset("imagefolder", data_dir=data_dir, split=split)
    elif Path(source).is_dir() and (Path(source) / "dataset_info.json").exists():
        ds = datasets.load_from_disk(source)
    else:
        ds = datasets.load_dataset(source, data_dir=data_dir, split=split)
    has_ids = ids_column is not None and ids_column in ds.column_names
    if image_column != "image":
        if image_column in ds.column_names:
            ds = ds.rename_column(image_column, "image")
        elif not has_ids:
            raise ValueError(f"no column {image_column!r} in the dataset (columns: {ds.column_names})")
    if "image" not in ds.column_names and not has_ids:
        raise ValueError(f"the dataset has no 'image' column (columns: {ds.column_names}); pass image_column=")
    if limit is not None and len(ds) > limit:
        ds = ds.select(range(limit))
    if max_side is not None and "image" in ds.column_names:
        # Random crops of a 1400-px photo at 32 px are texture close-ups; a bounded side keeps whole-scene views likely.
        ds = ds.map(lambda row: {"image": _resize_shortest(row["image"], max_side) if min(row["image"].size) > max_side else row["image"]})
    if len(ds) == 0:
        raise ValueError(f"the dataset {source!r} (split {split!r}) is empty")
    return ds


#: The image-source options of the tokenizer, renderer and VAE trainers: field name -> (default, ``--help`` text).
_IMAGE_SOURCE_OPTIONS = {
    "dataset": (
        "offline:photos",
        "The training images: a datasets name or save_to_disk folder, imagefolder (with --data-dir), offline:photos, "
        "offline:opencv-photos or offline:fashion-mnist (see training.data.load_image_dataset).",
    ),
    "split": ("train", "Split of the training images."),
    "image_column": ("image", "The dataset's image column."),
    "data_dir": (None, "The image folder of --dataset imagefolder."),
    "max_train_images": (None, "Train on the first this many images only."),
    "max_image_side": (None, "Downscale (once) images whose shortest edge is longer than this (load_image_dataset's max_side)."),
}


def image_source_field(name: str):
    """The dataclass field of image-source option ``name`` (``dataset``, ``split``, ``image_column``, ``data_dir``,
    ``max_train_images``, ``max_image_side``): one default and help text for every image trainer."""
    default, text = _IMAGE_SOURCE_OPTIONS[name]
    return field(default=default, metadata={"help": text})


def _resize_shortest(image: PIL.Image.Image, side: int) -> PIL.Image.Image:
    w, h = image.size
    if w <= h:
        return image.resize((side, max(side, round(h * side / w))), PIL.Image.BILINEAR)
    return image.resize((max(side, round(w * side / h)), side), PIL.Image.BILINEAR)


def random_resize_crop(image: PIL.Image.Image, size: int, rng: np.random.Generator, ratio: float = 0.5) -> PIL.Image.Image:
    """The official augmentation: with probability ``1 - ratio`` resize the shortest edge to ``size``, otherwise to
    a uniformly drawn side between ``size`` and the image's own shortest edge; then a uniform random ``size²`` crop."""
    image = image.convert("RGB")
    r = rng.random()
    if r > ratio:
        side = size
    else:
        mix = r / ratio
        side = max(int(mix * size + (1 - mix) * min(image.size)), size)
    image = _resize_shortest(image, side)
    w, h = image.size
    left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    return image.crop((left, top, left + size, top + size))


def center_resize_crop(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """Evaluation view: shortest edge to ``size`` (bilinear), centre crop."""
    image = _resize_shortest(image.convert("RGB"), size)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def images_to_tensor(images: Sequence[PIL.Image.Image]) -> torch.Tensor:
    """PIL RGB images of one size -> ``(B, 3, H, W)`` float32 in [-1, 1]."""
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def step_seed(seed: int, step: int, process: int = 0) -> int:
    """The seed of every random draw made at optimisation step ``step`` on process ``process``."""
    return int(np.random.SeedSequence([seed, step, process]).generate_state(1)[0])


def cache_latents(dataset, vae, image_size: int, scaling_factor: float, shift_factor: float, batch_size: int = 16):
    """Pre-compute normalised latents of centre crops once with ``datasets.map`` (cached on disk by ``datasets``).

    Trades the random-crop augmentation for speed: training then reads the ``latents`` column. Returns the
    dataset with a ``latents`` column of shape ``(latent_channels, h, w)`` per row.
    """
    from ..vae import pixels_to_latents

    def encode(rows):
        pixels = images_to_tensor([center_resize_crop(im, image_size) for im in rows["image"]])
        latents = pixels_to_latents(vae, pixels, scaling_factor, shift_factor)
        return {"latents": latents.cpu().numpy()}

    return dataset.map(encode, batched=True, batch_size=batch_size, desc="caching latents")


class StepBatches:
    """Deterministic, resumable batches of augmented images.

    Batch ``s`` of process ``p`` is a function of ``(seed, s, p)`` only: the dataset is walked in epochs, each epoch
    a permutation seeded by ``(seed, epoch)``, split across processes; crops come from ``(seed, s, p)``.

    Args:
        dataset: a ``datasets.Dataset`` (or any sequence of dicts) with PIL images under ``"image"``.
        batch_size: images per process per micro-batch.
        image_size: side of the square crops.
        seed: base seed.
        num_processes / process_index: data-parallel layout.
        augment: official random resize + crop if True, else centre crop.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        image_size: int,
        seed: int = 0,
        num_processes: int = 1,
        process_index: int = 0,
        augment: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.image_size = dataset, batch_size, image_size
        self.seed, self.num_processes, self.process_index, self.augment = seed, num_processes, process_index, augment
        self._permutations: dict[int, np.ndarray] = {}

    def _indices(self, step: int) -> list[int]:
        n, global_batch = len(self.dataset), self.batch_size * self.num_processes
        start = step * global_batch + self.process_index * self.batch_size
        out = []
        for position in range(start, start + self.batch_size):
            epoch, offset = divmod(position, n)
            if epoch not in self._permutations:
                if len(self._permutations) > 1:  # a batch spans at most two epochs
                    self._permutations.pop(min(self._permutations))
                self._permutations[epoch] = np.random.default_rng([self.seed, epoch]).permutation(n)
            out.append(int(self._permutations[epoch][offset]))
        return out

    def batch(self, step: int) -> torch.Tensor:
        """The micro-batch of optimisation step ``step``: pixels ``(batch_size, 3, image_size, image_size)`` in
        [-1, 1], or, for a dataset with a ``latents`` column (see :func:`cache_latents`), those latents."""
        indices = self._indices(step)
        if "latents" in getattr(self.dataset, "column_names", ()):
            return torch.stack([torch.as_tensor(np.asarray(self.dataset[i]["latents"], dtype=np.float32)) for i in indices])
        rng = np.random.default_rng([self.seed, step, self.process_index])
        images = []
        for index in indices:
            image = self.dataset[index]["image"]
            if self.augment:
                images.append(random_resize_crop(image, self.image_size, rng))
            else:
                images.append(center_resize_crop(image, self.image_size))
        return images_to_tensor(images)

    def __iter__(self) -> Iterator[torch.Tensor]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1
