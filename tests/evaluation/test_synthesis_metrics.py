"""Synthesis metrics against known values and independent references; classifier agreement; the CLI."""

import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from scipy import signal

from cvm.errors import CvmError
from cvm.evaluation.synthesis import (as_probabilities, classification_agreement, classifier_input, classify,
                                      evaluate_synthesis, gradient_difference, kl_score, psnr, sharpness_difference,
                                      ssim)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAP = 10 * math.log10(255.0 ** 2 / 1e-4)  # the Lua scripts' value for identical images: 88.13 dB
SHIFT = 20 * math.log10(255.0 / 128.0)  # their 128^2 scaling: +5.99 dB over the standard PSNR


def reference_ssim(a_bgr, b_bgr, mode):
    """Independent SSIM: scipy.signal.convolve2d with the window built from its definition."""
    def y(x):
        x = x.astype(np.float64)
        return 0.299 * x[..., 2] + 0.587 * x[..., 1] + 0.114 * x[..., 0]

    g = np.array([math.exp(-((i - 5) ** 2) / (2 * 1.5 ** 2)) for i in range(11)])
    w = np.outer(g, g) / np.outer(g, g).sum()
    y1, y2 = y(a_bgr), y(b_bgr)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    conv = lambda x: signal.convolve2d(x, w, mode=mode)  # noqa: E731
    m1, m2 = conv(y1), conv(y2)
    s1, s2, s12 = conv(y1 * y1) - m1 ** 2, conv(y2 * y2) - m2 ** 2, conv(y1 * y2) - m1 * m2
    return float(np.mean((2 * m1 * m2 + c1) * (2 * s12 + c2) / ((m1 ** 2 + m2 ** 2 + c1) * (s1 + s2 + c2))))


def images(seed=0, shape=(40, 48, 3)):
    rng = np.random.default_rng(seed)
    a = cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (5, 5), 1.5)
    noise = rng.normal(0, 12, shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    return a, b


def test_ssim_known_values_and_reference():
    a, b = images()
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12) and ssim(a, a, "standard") == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b, "regmi") == pytest.approx(reference_ssim(a, b, "full"), abs=1e-9)
    assert ssim(a, b, "standard") == pytest.approx(reference_ssim(a, b, "valid"), abs=1e-9)
    assert 0.2 < ssim(a, b, "standard") < 0.95
    # Constant images: sigma = 0, so the standard SSIM is the luminance term alone.
    c1 = (0.01 * 255) ** 2
    flat_a, flat_b = np.full((20, 20, 3), 100, np.uint8), np.full((20, 20, 3), 140, np.uint8)
    assert ssim(flat_a, flat_b, "standard") == pytest.approx((2 * 100 * 140 + c1) / (100 ** 2 + 140 ** 2 + c1), abs=1e-9)
    # Luma weights follow BGR order: only the red channel differs -> weight 0.299 on the difference.
    red = flat_a.copy()
    red[..., 2] = 200
    expected_y = 0.299 * 200 + 0.587 * 100 + 0.114 * 100
    assert ssim(flat_a, red, "standard") == pytest.approx((2 * 100 * expected_y + c1) / (100 ** 2 + expected_y ** 2 + c1))
    with pytest.raises(CvmError):
        ssim(a, b[:-1])
    with pytest.raises(CvmError):
        ssim(a, b, "matlab")


def test_psnr_of_a_known_noise_level():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a.copy()
    b[::2] += 10
    b[1::2] -= 10  # squared error exactly 100 everywhere
    expected = 10 * math.log10(255.0 ** 2 / 100.0)
    assert psnr(a, b, convention="standard") == pytest.approx(expected, abs=1e-9)
    assert psnr(a, b) == pytest.approx(expected + SHIFT, abs=1e-9)
    assert psnr(a, a) == pytest.approx(CAP) and psnr(a, a, convention="standard") == pytest.approx(148.1308036, abs=1e-6)
    # max_value: the same images in [0, 1].
    assert psnr(a / 255.0, b / 255.0, max_value=1.0, convention="standard") == pytest.approx(expected, abs=1e-9)


def test_sharpness_difference():
    a, b = images(1)
    total, chw, interior = gradient_difference(a, a)
    assert total == 0.0 and chw == a.size
    assert sharpness_difference(a, a) == pytest.approx(CAP)
    # Independent loop reference of the Lua formula on a small image.
    small_a, small_b = a[:5, :6].astype(float) / 255, b[:5, :6].astype(float) / 255
    d = 0.0
    for i in range(1, 4):
        for j in range(1, 5):
            for c in range(3):
                d += abs(abs(small_a[i, j, c] - small_a[i, j - 1, c]) - abs(small_b[i, j, c] - small_b[i, j - 1, c]))
                d += abs(abs(small_a[i, j, c] - small_a[i - 1, j, c]) - abs(small_b[i, j, c] - small_b[i - 1, j, c]))
    assert gradient_difference(a[:5, :6], b[:5, :6])[0] == pytest.approx(d, abs=1e-12)
    expected = 10 * math.log10(255.0 ** 2 / (128 * 128 * d / (5 * 6 * 3)))
    assert sharpness_difference(a[:5, :6], b[:5, :6]) == pytest.approx(expected, abs=1e-9)
    standard = 10 * math.log10(255.0 ** 2 / (d * 255 / (3 * 4 * 3)))
    assert sharpness_difference(a[:5, :6], b[:5, :6], convention="standard") == pytest.approx(standard, abs=1e-9)
    # A blurred image is less sharp-similar than a slightly noisy one.
    blurred = cv2.GaussianBlur(a, (7, 7), 3)
    assert sharpness_difference(a, blurred) < CAP


def test_agreement_and_kl_on_known_probabilities():
    p_real = np.array([[0.7, 0.1, 0.1, 0.05, 0.05, 0.0], [0.3, 0.25, 0.2, 0.1, 0.1, 0.05],
                       [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]])
    p_gen = np.array([[0.6, 0.2, 0.1, 0.05, 0.05, 0.0],  # top-1 agrees
                      [0.04, 0.3, 0.25, 0.2, 0.15, 0.06],  # real class 0 is generated rank 6: neither
                      [0.3, 0.25, 0.2, 0.14, 0.1, 0.01]])  # real class 5 is rank 6 of 6: neither
    agreement = classification_agreement(p_real, p_gen)
    assert (agreement["top1"], agreement["top5"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert agreement["n_confident"] == 1 and agreement["top1_confident"] == 1.0
    p_gen[1] = [0.1, 0.3, 0.25, 0.2, 0.15, 0.0]  # real class 0 now generated rank 5: top-5 only
    assert classification_agreement(p_real, p_gen)["top5"] == pytest.approx(2 / 3)
    p, q = np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]])
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    result = kl_score(p, q)
    assert result["kl_mean"] == pytest.approx(kl) and result["kl_score"] == pytest.approx(math.exp(kl))
    assert kl_score(p_real, p_real)["kl_score"] == 1.0  # zero probabilities count as 0 log 0 = 0
    logits = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(as_probabilities(logits), np.exp(logits) / np.exp(logits).sum())
    np.testing.assert_array_equal(as_probabilities(p_real), p_real)


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(7, activation="softmax")(x)
    path = str(tmp_path_factory.mktemp("clf") / "random_classifier.keras")
    keras.Model(inputs, outputs).save(path)
    return path


def test_classifier_input_is_torchvision_scale_crop_normalise():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    x = classifier_input(image, (224, 224))
    rgb = image[16:240, 16:240, ::-1] / 255.0
    np.testing.assert_allclose(x, (rgb - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], atol=1e-5)
    assert classifier_input(rng.integers(0, 256, (64, 256, 3), dtype=np.uint8), (32, 32), "unit").shape == (32, 32, 3)


def test_random_classifier_agreement(classifier_path):
    from cvm.evaluation.synthesis import load_classifier

    model = load_classifier(classifier_path)
    a = [images(s, (40, 40, 3))[0] for s in range(6)]
    probs = classify(model, a, batch_size=4)
    assert probs.shape == (6, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    same = classification_agreement(probs, classify(model, a))
    assert same["top1"] == same["top5"] == 1.0
    assert kl_score(probs, probs)["kl_score"] == 1.0
    with pytest.raises(CvmError, match="classifier not found"):
        load_classifier(classifier_path + ".missing")


def write_folder(folder, imgs, names):
    os.makedirs(folder, exist_ok=True)
    for img, name in zip(imgs, names):
        cv2.imwrite(os.path.join(folder, name), img)


def test_evaluate_synthesis_folders(tmp_path, classifier_path):
    pairs = [images(s, (36, 44, 3)) for s in range(4)]
    names = [f"{i:07d}.png" for i in range(1, 5)]
    write_folder(str(tmp_path / "real"), [a for a, _ in pairs], names)
    write_folder(str(tmp_path / "same"), [a for a, _ in pairs], names)
    write_folder(str(tmp_path / "noisy"), [b for _, b in pairs], names[:3] + ["orphan.png"])
    same = evaluate_synthesis(str(tmp_path / "same"), str(tmp_path / "real"), classifier_path,
                              out_path=str(tmp_path / "same.json"))
    m = same["metrics"]
    assert same["n_images"] == 4 and m["ssim"] == pytest.approx(1.0) and m["psnr"] == pytest.approx(CAP)
    assert m["sharpness_difference"] == pytest.approx(CAP) and m["top1"] == m["top5"] == 1.0 and m["kl_score"] == 1.0
    assert json.load(open(tmp_path / "same.json"))["metrics"]["ssim"] == pytest.approx(1.0)
    noisy = evaluate_synthesis(str(tmp_path / "noisy"), str(tmp_path / "real"))
    assert noisy["n_images"] == 3 and noisy["n_skipped"] == 1 and noisy["skipped"][0]["file"] == "orphan.png"
    expected = np.mean([psnr(a, b) for a, b in pairs[:3]])
    assert noisy["metrics"]["psnr"] == pytest.approx(expected)
    assert noisy["metrics"]["ssim_standard"] == pytest.approx(np.mean([ssim(a, b, "standard") for a, b in pairs[:3]]))
    assert noisy["classifier"] is None and "top1" not in noisy["metrics"]
    with pytest.raises(CvmError, match="could be compared"):
        evaluate_synthesis(str(tmp_path / "noisy"), str(tmp_path / "same"), limit=0)


def test_evaluate_synthesis_against_a_dayton_split(tmp_path):
    from cvm.data.dayton import split_panels
    from cvm.data.synthesis import load_synthesis_split

    root = str(tmp_path / "dayton")
    os.makedirs(os.path.join(root, "test"))
    NAMES = ["a.x1.y2.a3.jpg", "b.x4.y5.a-6.jpg", "c.x7.y8.a9.jpg"]
    with open(os.path.join(root, "test_split.txt"), "w") as f:
        f.write("\n".join(NAMES) + "\n")
    for s, name in enumerate(NAMES):
        panels = [cv2.GaussianBlur(np.random.default_rng([s, k]).integers(0, 256, (32, 32, 3), dtype=np.uint8),
                                   (5, 5), 2) for k in range(4)]
        cv2.imwrite(os.path.join(root, "test", name), np.concatenate(panels, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 98])
    split = load_synthesis_split("dayton", "test", root, "a2g")
    gen = str(tmp_path / "gen")
    targets = [split_panels(cv2.imread(os.path.join(root, "test", n)))[0] for n in NAMES]
    write_folder(gen, targets[:2], [os.path.splitext(n)[0] + ".png" for n in NAMES[:2]])  # wrong names: skipped
    write_folder(gen, targets, NAMES)  # out_name = the 4-panel file's name; JPEG re-coding changes pixels
    results = evaluate_synthesis(gen, split)
    assert results["n_images"] == 3 and results["n_skipped"] == 2 and results["not_generated"] == 0
    assert results["dataset"] == "dayton" and results["direction"] == "a2g"
    assert 0.9 < results["metrics"]["ssim_standard"] <= 1.0 and results["metrics"]["psnr_standard"] > 30


def test_eval_synthesis_cli(tmp_path, classifier_path):
    pairs = [images(s, (36, 44, 3)) for s in range(3)]
    names = [f"{i}.png" for i in range(3)]
    write_folder(str(tmp_path / "real"), [a for a, _ in pairs], names)
    write_folder(str(tmp_path / "run" / "images"), [b for _, b in pairs], names)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "cvm.cli.main", "eval-synthesis", f"--generated={tmp_path / 'run' / 'images'}",
           f"--real={tmp_path / 'real'}", f"--classifier={classifier_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    results = json.load(open(tmp_path / "run" / "synthesis_metrics.json"))
    assert results["n_images"] == 3 and results["classifier"]["classes"] == 7
    assert results["metrics"]["psnr"] == pytest.approx(np.mean([psnr(a, b) for a, b in pairs]))
    assert "SSIM" in out.stdout and "top-1" in out.stdout


def test_evaluate_synthesis_streams_the_classifier_in_chunks(tmp_path, classifier_path):
    from cvm.evaluation.synthesis import load_classifier

    imgs = [images(s, (24, 24, 3))[0] for s in range(19)]  # more than one chunk of 16
    names = [f"{i:03d}.png" for i in range(19)]
    write_folder(str(tmp_path / "real"), imgs, names)
    write_folder(str(tmp_path / "gen"), imgs[1:] + imgs[:1], names)  # every generated image is another's
    results = evaluate_synthesis(str(tmp_path / "gen"), str(tmp_path / "real"), classifier_path, batch_size=4)
    model = load_classifier(classifier_path)
    p_real, p_gen = classify(model, imgs), classify(model, imgs[1:] + imgs[:1])
    assert results["n_images"] == 19
    assert results["metrics"]["top1"] == pytest.approx(classification_agreement(p_real, p_gen)["top1"])
    assert results["metrics"]["kl_score"] == pytest.approx(kl_score(p_gen, p_real)["kl_score"])
    assert results["metrics"]["kl_score"] > 1.0
