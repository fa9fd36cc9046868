"""Metrics of cross-view image synthesis, as Regmi & Borji's evaluation scripts compute them.

Image quality (Evaluation/my_image_error_measures.lua of kregmi/cross-view-image-synthesis, after
Mathieu et al.'s video-prediction code): SSIM, PSNR and the sharpness difference between each
generated image and the real image of the same name, averaged over the images. Scene agreement
(compute_accuracies.py, KL_model_data.py): a scene classifier (the originals: AlexNet-Places365)
labels the real and the generated image; top-1 / top-5 agreement of the labels and a KL score.

Conventions of the originals, kept by default (`convention="regmi"`) so numbers compare with the
published tables; `convention="standard"` gives the textbook definitions (both are in the results):
  * PSNR: images read in [0, 1] but the squared error scaled by 128^2 (the code's comment assumes
    [-1, 1] images), so PSNR = standard PSNR + 20 log10(255 / 128) = standard + 5.99 dB.
    The error is floored at 1e-4 (identical images: 88.13 dB).
  * SSIM (Wang et al. 2004, Gaussian window 11, sigma 1.5, K = (0.01, 0.03), L = 255) on the luma
    Y = 0.299 R + 0.587 G + 0.114 B, with a FULL zero-padded convolution (the mean runs over an
    (H + 10) x (W + 10) map whose border windows see zeros); "standard" uses the valid region only
    (Wang et al.'s MATLAB ssim_index, scikit-image with gaussian_weights and sample covariance off).
  * Sharpness difference: with horizontal / vertical differences g = |x[i, j] - x[i, j-1]| and
    |x[i, j] - x[i-1, j]| over the interior pixels, D = sum | |g_real| - |g_generated| | over both
    directions, 10 log10(255^2 / (128^2 D / (C H W))) with images in [0, 1] and the same 1e-4 floor;
    "standard" is 10 log10(255^2 / mean) with the mean of the gradient differences in grey levels.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import math
import os
from typing import TYPE_CHECKING, Optional, Union

import cv2
import numpy as np

from cvm.errors import CvmError

if TYPE_CHECKING:  # the data module pulls in TensorFlow; only the annotation needs it here
    from cvm.data.synthesis import SynthesisSplit

CONVENTIONS = ("regmi", "standard")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_EPS = 1e-4  # the Lua scripts' floor of the error before the log
_EPS_STANDARD = 1e-10  # floor of the standard MSE: identical images give a finite 148.1 dB
_SSIM_K = (0.01, 0.03)
_SSIM_L = 255.0
# torchvision's ImageNet normalisation, as compute_accuracies.py feeds the Places365 AlexNet.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CLASSIFIER_PREPROCESSING = ("imagenet", "unit", "none")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise CvmError(f"unknown metric convention {convention!r}; valid: {', '.join(CONVENTIONS)}")


def _pair(a, b) -> tuple:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise CvmError(f"images to compare differ in shape: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    return a, b


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 2-D Gaussian window, as Torch's image.gaussian(11, 1.5/11) / its sum (centre at pixel 6 of 11)."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (offsets / sigma) ** 2)
    window = np.outer(g, g)
    return window / window.sum()


def luma(image_bgr: np.ndarray) -> np.ndarray:
    """Torch image.rgb2y of a BGR image: Y = 0.299 R + 0.587 G + 0.114 B (same scale as the input)."""
    x = np.asarray(image_bgr, np.float64)
    if x.ndim == 2 or x.shape[-1] == 1:
        return x.reshape(x.shape[:2])
    return 0.114 * x[..., 0] + 0.587 * x[..., 1] + 0.299 * x[..., 2]


def _filter(x: np.ndarray, window: np.ndarray, full: bool) -> np.ndarray:
    """Convolution with a symmetric separable window: "full" (zero padded, size + window - 1) or "valid"."""
    k = window.shape[0]
    g = np.sqrt(np.diag(window))  # the 1-D factor: window = outer(g, g)
    r = k // 2
    if full:
        x = cv2.copyMakeBorder(x, k - 1, k - 1, k - 1, k - 1, cv2.BORDER_CONSTANT, value=0)
        out = cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_CONSTANT)
        return out[r:x.shape[0] - r, r:x.shape[1] - r]
    out = cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_CONSTANT)
    return out[r:x.shape[0] - r, r:x.shape[1] - r]


def ssim_map(a, b, convention: str = "regmi") -> np.ndarray:
    """The SSIM index map of two images in [0, 255] (BGR, or grey); see the module docstring."""
    _check_convention(convention)
    a, b = _pair(a, b)
    y1, y2 = luma(a), luma(b)
    window = gaussian_window()
    full = convention == "regmi"
    if not full and min(y1.shape) < window.shape[0]:
        raise CvmError(f"standard SSIM needs images of at least 11x11 pixels, got {y1.shape}")
    c1, c2 = (_SSIM_K[0] * _SSIM_L) ** 2, (_SSIM_K[1] * _SSIM_L) ** 2
    mu1, mu2 = _filter(y1, window, full), _filter(y2, window, full)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter(y1 * y1, window, full) - mu1_sq
    s2 = _filter(y2 * y2, window, full) - mu2_sq
    s12 = _filter(y1 * y2, window, full) - mu12
    return ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))


def ssim(a, b, convention: str = "regmi") -> float:
    """Mean SSIM (Wang et al., IEEE TIP 2004, eq. 13) of two images in [0, 255], BGR or grey."""
    return float(np.mean(ssim_map(a, b, convention)))


def psnr(a, b, max_value: float = 255.0, convention: str = "regmi") -> float:
    """PSNR in dB of two images in [0, max_value]; "regmi" adds the originals' 128^2 scaling (module docstring)."""
    _check_convention(convention)
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    if convention == "standard":
        return 10.0 * math.log10(max_value ** 2 / max(mse, _EPS_STANDARD))
    err = 128.0 * 128.0 * mse / (max_value ** 2)  # squared error of [0, 1] images, scaled as the Lua code
    return 10.0 * math.log10(255.0 ** 2 / (err if err > _EPS else _EPS))


def gradient_difference(a, b, max_value: float = 255.0) -> tuple:
    """(D, C H W, interior pixel count): D = sum of | |grad a| - |grad b| | over x and y, in [0, 1] units."""
    a, b = _pair(a, b)
    a, b = a / max_value, b / max_value
    h, w, c = a.shape
    if h < 3 or w < 3:
        raise CvmError(f"the sharpness difference needs images of at least 3x3 pixels, got {h}x{w}")

    def grads(x):
        # Differences with the left / upper neighbour, over rows 1..H-2 and columns 1..W-2 (Lua 2..s-1).
        gx = np.abs(x[1:-1, 1:-1] - x[1:-1, :-2])
        gy = np.abs(x[1:-1, 1:-1] - x[:-2, 1:-1])
        return gx, gy

    ax, ay = grads(a)
    bx, by = grads(b)
    total = float(np.sum(np.abs(ax - bx)) + np.sum(np.abs(ay - by)))
    return total, c * h * w, c * (h - 2) * (w - 2)


def sharpness_difference(a, b, max_value: float = 255.0, convention: str = "regmi") -> float:
    """Sharpness difference in dB (Mathieu et al., ICLR 2016, sec. 4; Regmi & Borji's Lua), higher = closer."""
    _check_convention(convention)
    total, chw, interior = gradient_difference(a, b, max_value)
    if convention == "standard":
        mean = total * max_value / interior  # mean gradient difference in grey levels
        return 10.0 * math.log10(max_value ** 2 / max(mean, _EPS_STANDARD))
    err = 128.0 * 128.0 * total / chw
    return 10.0 * math.log10(255.0 ** 2 / (err if err > _EPS else _EPS))


# ---------------------------------------------------------------------------------------------------
# Scene-classifier agreement


def load_classifier(classifier):
    """A Keras classifier from a .keras / .h5 path (keras.models.load_model), or the model itself."""
    if classifier is None or not isinstance(classifier, (str, os.PathLike)):
        return classifier
    import keras

    import cvm.models  # noqa: F401  (registers cvm's custom layers, should the classifier use any)

    path = os.fspath(classifier)
    if not os.path.exists(path):
        raise CvmError(f"classifier not found: {os.path.abspath(path)}. Pass --classifier a Keras image classifier "
                       "saved with model.save (.keras or .h5); the originals used AlexNet-Places365, which has to "
                       "be converted to Keras by the user (no weights are downloaded).")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # any Keras loading error is the user's file
        raise CvmError(f"cannot load the classifier {path}: {type(exc).__name__}: {exc}") from None


def _classifier_input_size(model) -> tuple:
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    h, w = shape[1], shape[2]
    return (int(h) if h else 224, int(w) if w else 224)


def classifier_input(image_bgr: np.ndarray, size: tuple, preprocessing: str = "imagenet") -> np.ndarray:
    """torchvision Scale(256) + CenterCrop(224) (scaled to the model's input size) + ToTensor + Normalize, NHWC RGB.

    The shorter side is resized (PIL bilinear) to round(crop * 256 / 224), then the centre crop is
    taken; "imagenet" normalises [0, 1] RGB with the ImageNet mean / std, "unit" leaves [0, 1],
    "none" gives 0..255 RGB floats.
    """
    from PIL import Image

    if preprocessing not in CLASSIFIER_PREPROCESSING:
        raise CvmError(f"unknown classifier preprocessing {preprocessing!r}; valid: {', '.join(CLASSIFIER_PREPROCESSING)}")
    th, tw = size
    short = int(round(min(th, tw) * 256 / 224))
    rgb = Image.fromarray(np.ascontiguousarray(image_bgr[..., ::-1]))
    w, h = rgb.size
    if w < h:
        ow, oh = short, int(short * h / w)
    else:
        oh, ow = short, int(short * w / h)
    if (ow, oh) != (w, h):
        rgb = rgb.resize((ow, oh), Image.BILINEAR)
    top, left = int(round((oh - th) / 2.0)), int(round((ow - tw) / 2.0))
    x = np.asarray(rgb, np.float32)[top:top + th, left:left + tw]
    if x.shape[:2] != (th, tw):
        raise CvmError(f"image of {h}x{w} is too small for the classifier's {th}x{tw} input")
    if preprocessing == "none":
        return x
    x = x / 255.0
    if preprocessing == "imagenet":
        x = (x - np.asarray(IMAGENET_MEAN_RGB, np.float32)) / np.asarray(IMAGENET_STD_RGB, np.float32)
    return x


def as_probabilities(outputs: np.ndarray, outputs_are: str = "auto") -> np.ndarray:
    """Softmax of logits; outputs_are="auto" keeps rows that already are distributions (a softmax head)."""
    x = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    if outputs_are not in ("auto", "logits", "probabilities"):
        raise CvmError(f"classifier outputs must be 'auto', 'logits' or 'probabilities', got {outputs_are!r}")
    is_distribution = bool(np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-3))
    if outputs_are == "probabilities" or (outputs_are == "auto" and is_distribution):
        return x
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classify(model, images_bgr, preprocessing: str = "imagenet", batch_size: int = 32,
             outputs_are: str = "auto") -> np.ndarray:
    """[N, K] class probabilities of uint8 BGR images (a list, any sizes) under a Keras classifier."""
    size = _classifier_input_size(model)
    probs = []
    for start in range(0, len(images_bgr), batch_size):
        batch = np.stack([classifier_input(im, size, preprocessing) for im in images_bgr[start:start + batch_size]])
        out = model.predict_on_batch(batch)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        if isinstance(out, (list, tuple)):
            out = out[0]
        probs.append(as_probabilities(np.asarray(out), outputs_are))
    return np.concatenate(probs) if probs else np.zeros((0, 0))


def classification_agreement(p_real: np.ndarray, p_generated: np.ndarray, confidence: float = 0.5) -> dict:
    """Top-1 / top-5 agreement as compute_accuracies.py: the real image's top-1 class is the generated
    image's top-1 / among its top 5; also over the images whose real top-1 probability > confidence."""
    p_real, p_generated = np.asarray(p_real, np.float64), np.asarray(p_generated, np.float64)
    if p_real.shape != p_generated.shape or p_real.ndim != 2:
        raise CvmError(f"class probabilities differ in shape: {p_real.shape} vs {p_generated.shape}")
    n, k = p_real.shape
    real_top1 = np.argmax(p_real, axis=1)
    order = np.argsort(-p_generated, axis=1, kind="stable")
    top1 = order[:, 0] == real_top1
    top5 = np.any(order[:, : min(5, k)] == real_top1[:, None], axis=1)
    confident = p_real.max(axis=1) > confidence
    n_conf = int(confident.sum())

    def frac(hits, count):
        return float(hits) / count if count else None

    return {"top1": frac(top1.sum(), n), "top5": frac(top5.sum(), n), "top1_count": int(top1.sum()),
            "top5_count": int(top5.sum()), "n": int(n), "n_confident": n_conf,
            "top1_confident": frac(top1[confident].sum(), n_conf), "top5_confident": frac(top5[confident].sum(), n_conf),
            "confidence_threshold": float(confidence)}


def kl_score(p_generated: np.ndarray, p_real: np.ndarray) -> dict:
    """KL_model_data.py: per image KL(P_generated || P_real), score = exp(mean KL), and the KLs' std.

    Zero probabilities are raised to the smallest positive float so 0 log 0 counts as 0 (the original
    gives NaN there).
    """
    p, q = np.asarray(p_generated, np.float64), np.asarray(p_real, np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise CvmError(f"class probabilities differ in shape: {p.shape} vs {q.shape}")
    tiny = np.finfo(np.float64).tiny
    per_image = np.sum(p * (np.log(np.maximum(p, tiny)) - np.log(np.maximum(q, tiny))), axis=1)
    return {"kl_score": float(np.exp(np.mean(per_image))), "kl_mean": float(np.mean(per_image)),
            "kl_std": float(np.std(per_image))}


# ---------------------------------------------------------------------------------------------------
# Folder evaluation


def _image_files(folder: str) -> list:
    if not os.path.isdir(folder):
        raise CvmError(f"folder of generated images not found: {os.path.abspath(folder)} (pass --generated the folder "
                       "`cvm synthesize` wrote)")
    # NAME.tmp.EXT is a write `cvm synthesize` did not finish (cvm.atomic.temporary_name), not an image.
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not os.path.splitext(f)[0].endswith(".tmp")
                  and os.path.isfile(os.path.join(folder, f)))


def _real_reader(real):
    """(name -> real uint8 BGR image or None, description, split info) for a SynthesisSplit or a folder."""
    from cvm.data.records import read_bgr

    if isinstance(real, (str, os.PathLike)):
        folder = os.fspath(real)
        if not os.path.isdir(folder):
            raise CvmError(f"folder of real images not found: {os.path.abspath(folder)}")
        return (lambda name: read_bgr(os.path.join(folder, name)) if os.path.isfile(os.path.join(folder, name))
                else None), {"real": os.path.abspath(folder)}, None
    index = {}
    for i, sample in enumerate(real.samples):
        index.setdefault(sample.out_name, i)

    def read(name):
        i = index.get(name)
        if i is None:
            return None
        return real.read(i)[1]

    info = {"dataset": real.dataset, "split": real.name, "direction": real.direction, "root": real.root,
            "real": f"{real.dataset} {real.name} targets ({real.direction})"}
    return read, info, set(index)


def evaluate_synthesis(generated_dir: str, real: Union["SynthesisSplit", str], classifier=None,
                       out_path: Optional[str] = None, *, classifier_preprocessing: str = "imagenet",
                       classifier_outputs: str = "auto", batch_size: int = 32, limit: Optional[int] = None,
                       progress: bool = False) -> dict:
    """SSIM, PSNR, sharpness difference (both conventions) and, with a classifier, top-1/top-5 agreement
    and the KL score of the generated images in `generated_dir` against the real images of the same name.

    Args:
      generated_dir: folder of generated images (every image file in it is evaluated, as the Lua
        script loops over the generated folder).
      real: a SynthesisSplit (real image = the target of the sample whose out_name is the file name)
        or a folder of real images with the same file names.
      classifier: None, a Keras model, or a path for keras.models.load_model.
      out_path: where to write the results JSON (report.write_results), or None.
      classifier_preprocessing: "imagenet" (the originals' torchvision normalisation), "unit", "none".
      classifier_outputs: "auto", "logits" or "probabilities".
      limit: evaluate only the first N generated files (sorted by name).

    A real image of another size than the generated one is scaled to it as the training pipeline
    scales targets (Torch image.scale), then rounded to uint8. Generated files without a real
    counterpart, or unreadable, are counted and listed, never a crash; none evaluable is an error.
    """
    import cvm
    from cvm.data.records import read_bgr
    from cvm.data.synthesis import torch_scale
    from cvm.evaluation.report import write_results

    files = _image_files(generated_dir)
    if limit is not None:
        files = files[: int(limit)]
    read_real, info, real_names = _real_reader(real)
    model = load_classifier(classifier)
    sums = {f"{m}{s}": 0.0 for m in ("ssim", "psnr", "sharpness_difference") for s in ("", "_standard")}
    names, skipped, p_real_parts, p_gen_parts = [], [], [], []

    def measure(name):
        """(values, generated, real) of one file, or a skip reason (runs in a thread: cv2 releases the GIL)."""
        gen = read_bgr(os.path.join(generated_dir, name))
        if gen is None:
            return "generated image unreadable"
        ref = read_real(name)
        if ref is None:
            return "no readable real image of this name"
        if ref.shape[:2] != gen.shape[:2]:
            ref = np.clip(np.floor(torch_scale(ref.astype(np.float32), gen.shape[:2]) + 0.5), 0, 255).astype(np.uint8)
        values = {}
        for convention, suffix in (("regmi", ""), ("standard", "_standard")):
            values[f"ssim{suffix}"] = ssim(ref, gen, convention)
            values[f"psnr{suffix}"] = psnr(ref, gen, convention=convention)
            values[f"sharpness_difference{suffix}"] = sharpness_difference(ref, gen, convention=convention)
        return values, gen, ref

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="synthesis metrics", unit="img")
    # Chunks keep memory bounded: images live only until their chunk is classified.
    chunk = max(int(batch_size), 16)
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        for start in range(0, len(files), chunk):
            kept_gen, kept_real = [], []
            for name, result in zip(files[start:start + chunk], pool.map(measure, files[start:start + chunk])):
                if isinstance(result, str):
                    skipped.append((name, result))
                    continue
                values, gen, ref = result
                for key, value in values.items():
                    sums[key] += value
                names.append(name)
                if model is not None:
                    kept_gen.append(gen)
                    kept_real.append(ref)
            if kept_gen:
                p_real_parts.append(classify(model, kept_real, classifier_preprocessing, batch_size, classifier_outputs))
                p_gen_parts.append(classify(model, kept_gen, classifier_preprocessing, batch_size, classifier_outputs))
            if bar is not None:
                bar.update(len(files[start:start + chunk]))
    if bar is not None:
        bar.close()
    n = len(names)
    if n == 0:
        reasons = "; ".join(f"{f}: {r}" for f, r in skipped[:3]) or "the folder holds no image files"
        raise CvmError(f"no generated image in {os.path.abspath(generated_dir)} could be compared with a real one "
                       f"({reasons}). Generated files must be named like the real ones (the sample's out_name).")
    metrics = {k: v / n for k, v in sums.items()}
    classifier_info = None
    if model is not None:
        p_real, p_gen = np.concatenate(p_real_parts), np.concatenate(p_gen_parts)
        agreement = classification_agreement(p_real, p_gen)
        metrics.update({k: agreement[k] for k in ("top1", "top5", "top1_confident", "top5_confident")})
        metrics.update(kl_score(p_gen, p_real))
        classifier_info = {"path": os.path.abspath(os.fspath(classifier)) if isinstance(classifier, (str, os.PathLike))
                           else getattr(model, "name", "keras model"),
                           "classes": int(p_real.shape[1]), "preprocessing": classifier_preprocessing,
                           "n_confident": agreement["n_confident"],
                           "confidence_threshold": agreement["confidence_threshold"]}
    results = {
        "task": "synthesis",
        **info,
        "generated_dir": os.path.abspath(generated_dir),
        "n_images": n,
        "n_generated_files": len(files),
        "not_generated": None if real_names is None else len(real_names - set(files)),
        "metrics": metrics,
        "conventions": {
            "ssim": "Gaussian 11 / sigma 1.5 on luma, [0, 255]; regmi: full zero-padded convolution (Lua), "
                    "standard: valid region (Wang et al.)",
            "psnr": "regmi: [0, 1] squared error x 128^2, 10 log10(255^2 / e) (= standard + 5.99 dB); standard: "
                    "10 log10(255^2 / MSE)",
            "sharpness_difference": "regmi: 10 log10(255^2 / (128^2 sum|d grad| / CHW)) on [0, 1] images; standard: "
                                    "10 log10(255^2 / mean |d grad| in grey levels)",
            "top1/top5": "real image's top-1 class is the generated image's top-1 / in its top-5 "
                         "(compute_accuracies.py); *_confident: images whose real top-1 probability > 0.5",
            "kl_score": "exp(mean over images of KL(p_generated || p_real)) (KL_model_data.py)",
        },
        "classifier": classifier_info,
        "skipped": [{"file": f, "reason": r} for f, r in skipped[:100]],
        "n_skipped": len(skipped),
        "cvm_version": cvm.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if out_path:
        results["results_json"] = os.path.abspath(write_results(out_path, results))
    return results
