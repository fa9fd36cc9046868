"""Synthesis metrics against known values and independent references; classifier agreement with a
hand-built classifier whose expected top-1 / top-5 fractions are known by construction; the CLI."""

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


def test_saved_classifier_loads_and_gives_distributions(classifier_path):
    from cvm.evaluation.synthesis import load_classifier

    model = load_classifier(classifier_path)
    a = [images(s, (40, 40, 3))[0] for s in range(6)]
    probs = classify(model, a, batch_size=4)
    assert probs.shape == (6, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(CvmError, match="classifier not found"):
        load_classifier(classifier_path + ".missing")


# --- agreement with a hand-built classifier: the expected fractions are known by construction ----------------
#
# The classifier sees the mean colour of the image and scores class k by -ALPHA (r - r_k)^2, r the ImageNet-
# normalised red value and r_k that of the red level 40 + 10 k (16 classes). Uniform images with red level
# 40 + 10 k + offset then rank the classes by distance to their level. A generated image of class g at offset 3
# ranks g, g+1, g-1, g+2, g-2, g+3, g-3, ... (distances 3, 7, 13, 17, 23, 27, 33), classes outside 0..15 left
# out. Red varies, green and blue are 100: an image read without the BGR -> RGB swap scores every class alike.
N_CLASSES, LEVEL0, STEP, GEN_OFFSET = 16, 40, 10, 3
UNIT = 1.0 / (255 * 0.229)  # one red level in the normalised units (torchvision's red std)
ALPHA = 0.01 / UNIT ** 2  # logit gap a * (d1^2 - d2^2), a = 0.01 per squared level: see CONFIDENT below
# (real class, real offset, generated class, position of the real class in the generated ranking).
AGREEMENT_CASES = [
    (7, 1, 7, 0), (7, 4, 7, 0), (15, 1, 15, 0),
    (5, 1, 4, 1),  # 4, 5
    (5, 4, 6, 2),  # 6, 7, 5
    (9, 1, 7, 3),  # 7, 8, 6, 9
    (9, 4, 11, 4),  # 11, 12, 10, 13, 9
    (0, 1, 2, 4),  # 2, 3, 1, 4, 0
    (8, 1, 5, 5),  # 5, 6, 4, 7, 3, 8: not in the top 5
    (8, 4, 11, 6),  # 11, 12, 10, 13, 9, 14, 8
    (0, 1, 3, 6),  # 3, 4, 2, 5, 1, 6, 0; yet 3 is in the real image's top 5 (0, 1, 2, 3, 4): the roles matter
    (10, 1, 4, 10),  # 4, 5, 3, 6, 2, 7, 1, 8, 0, 9, 10: far away
]
# Offset 1: p(top 1) = 1 / (1 + e^-0.8 + e^-1.2 + ...) = 0.56 inside the range (more at the ends) > 0.5;
# offset 4 (only used inside the range): 1 / (1 + e^-0.2 + e^-1.8 + e^-2.4 + ...) = 0.48 < 0.5.
CONFIDENT = [offset == 1 for _, offset, _, _ in AGREEMENT_CASES]


def uniform_bgr(level, shape=(40, 44)):
    image = np.full((*shape, 3), 100, np.uint8)
    image[..., 2] = level
    return image


def hand_classifier():
    """GlobalAveragePooling + Dense(softmax) scoring -ALPHA ((r - r_k)^2 - (r - c)^2), c the middle class (the
    subtracted term is the same for every class, so the softmax is that of -ALPHA (r - r_k)^2 with logits of
    moderate size), from (r - c): logits = 2 ALPHA (r_k - c) (r - c) - ALPHA (r_k - c)^2."""
    import keras

    centres = (LEVEL0 + STEP * np.arange(N_CLASSES)) / 255.0
    r_k = (centres - 0.485) / 0.229
    c = r_k.mean()
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(N_CLASSES, activation="softmax")
    model = keras.Model(inputs, dense(x))
    kernel = np.zeros((3, N_CLASSES), np.float32)
    kernel[0] = 2 * ALPHA * (r_k - c)  # the red channel of the RGB input
    dense.set_weights([kernel, (-2 * ALPHA * (r_k - c) * c - ALPHA * (r_k - c) ** 2).astype(np.float32)])
    return model


def reference_probabilities(levels):
    """Softmax over classes of -ALPHA (r - r_k)^2 from the red levels, in float64."""
    r = (np.asarray(levels, np.float64)[:, None] / 255.0 - 0.485) / 0.229
    r_k = ((LEVEL0 + STEP * np.arange(N_CLASSES)) / 255.0 - 0.485) / 0.229
    logits = -ALPHA * (r - r_k[None]) ** 2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def agreement_images():
    real = [uniform_bgr(LEVEL0 + STEP * j + offset) for j, offset, _, _ in AGREEMENT_CASES]
    generated = [uniform_bgr(LEVEL0 + STEP * g + GEN_OFFSET) for _, _, g, _ in AGREEMENT_CASES]
    return real, generated


def test_agreement_of_a_hand_built_classifier_is_the_constructed_fraction():
    model = hand_classifier()
    real, generated = agreement_images()
    p_real, p_gen = classify(model, real, batch_size=5), classify(model, generated, batch_size=5)
    # The Keras softmax in float32 of logits up to ~60: absolute errors ~1e-5 at most; the construction's
    # margins (confidence 0.48 / 0.56, logit gaps >= 0.4) are far larger.
    real_levels = [LEVEL0 + STEP * j + offset for j, offset, _, _ in AGREEMENT_CASES]
    np.testing.assert_allclose(p_real, reference_probabilities(real_levels), atol=1e-4)
    np.testing.assert_allclose(p_gen, reference_probabilities([LEVEL0 + STEP * g + GEN_OFFSET
                                                                for _, _, g, _ in AGREEMENT_CASES]), atol=1e-4)
    # The construction holds: each real image's top class, its position in the generated ranking, confidence.
    real_class = np.array([j for j, _, _, _ in AGREEMENT_CASES])
    positions = np.array([p for _, _, _, p in AGREEMENT_CASES])
    np.testing.assert_array_equal(np.argmax(p_real, axis=1), real_class)
    ranking = np.argsort(-p_gen, axis=1)
    np.testing.assert_array_equal(np.argmax(ranking == real_class[:, None], axis=1), positions)
    np.testing.assert_array_equal(p_real.max(axis=1) > 0.5, CONFIDENT)

    got = classification_agreement(p_real, p_gen)
    confident = np.array(CONFIDENT)
    expected = {"top1": 3 / 12, "top5": 8 / 12, "top1_count": 3, "top5_count": 8, "n": 12, "n_confident": 8,
                "top1_confident": 2 / 8, "top5_confident": 5 / 8}
    # ... and the same from the positions, the numpy reference of compute_accuracies.py's two counters.
    assert expected["top1"] == np.mean(positions == 0) and expected["top5"] == np.mean(positions < 5)
    assert expected["top1_confident"] == np.mean(positions[confident] == 0)
    assert expected["top5_confident"] == np.mean(positions[confident] < 5)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    # A stricter threshold keeps only the end classes (0.68 and 0.76): cases 3 (class 15) and 8, 11 (class 0).
    strict = classification_agreement(p_real, p_gen, confidence=0.6)
    assert (strict["n_confident"], strict["top1_confident"], strict["top5_confident"]) == (3, 1 / 3, 2 / 3)


def test_evaluate_synthesis_reports_the_constructed_agreement(tmp_path):
    real, generated = agreement_images()
    names = [f"{i:07d}.png" for i in range(1, len(real) + 1)]
    write_folder(str(tmp_path / "real"), real, names)
    write_folder(str(tmp_path / "generated"), generated, names)
    m = evaluate_synthesis(str(tmp_path / "generated"), str(tmp_path / "real"), hand_classifier(),
                           batch_size=4)["metrics"]
    assert (m["top1"], m["top5"]) == (pytest.approx(3 / 12), pytest.approx(8 / 12))
    assert (m["top1_confident"], m["top5_confident"]) == (pytest.approx(2 / 8), pytest.approx(5 / 8))


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
