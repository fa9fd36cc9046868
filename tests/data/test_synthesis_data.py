"""Synthesis data: Torch-style scaling, shared crop/flip of all panels, determinism, edge maps, homography,
CVUSA / synthetic-world samples and their segmentation maps, skipped corrupt files."""

import os

import cv2
import numpy as np
import pytest

from cvm.data.synthesis import (CVIU_HOMOGRAPHY, CVIU_HOMOGRAPHY_FLAG, SYNTHESIS_PRESETS, SynthesisPipeline,
                                SynthesisSpec, edge_map, homography_matrix, load_synthesis_split, parse_homography,
                                synthesis_preset, to_uint8_bgr, to_unit_range, torch_scale, warp_homography)
from cvm.errors import CvmError

SPEC = SynthesisSpec((32, 32), (32, 32), load_size=(36, 36), crop_size=(32, 32), flip=True)


def write_cvusa_like(root, n, size=(24, 28), seed=0):
    """A CVUSA-layout folder whose aerial, panorama and segmap files are related pixel-wise:
    panorama = 255 - aerial, segmap = aerial with its channels reversed. Returns the CSV name."""
    rng = np.random.default_rng(seed)
    for folder in ("bingmap/19", "streetview/panos", "segs"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    rows = []
    for i in range(n):
        aerial = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        name = f"{i + 1:07d}"
        cv2.imwrite(os.path.join(root, "bingmap/19", f"{name}.png"), aerial)
        cv2.imwrite(os.path.join(root, "streetview/panos", f"{name}.png"), 255 - aerial)
        cv2.imwrite(os.path.join(root, "segs", f"{name}.png"), aerial[..., ::-1])
        rows.append(f"bingmap/19/{name}.png,streetview/panos/{name}.png,segs/{name}.png")
    with open(os.path.join(root, "pairs.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return "pairs.csv"


def batches(ds):
    return [({k: v.numpy() for k, v in images.items()}, {k: v.numpy() for k, v in meta.items()}) for images, meta in ds]


def lua_rowcol(src: np.ndarray, dst_len: int, byte: bool) -> np.ndarray:
    """image_(Main_scaleLinear_rowcol) of torch/image generic/image.c, transliterated loop by loop in
    float32 (the C `float` locals), one destination index at a time; vectorised only over the other
    axes (every row / column the C loops over gets the same weights). src: float32 [src_len, ...]."""
    f32 = np.float32

    def from_intermediate(v):  # image_(FromIntermediate): byte tensors get x + 0.5, saturated, truncated
        return np.trunc(np.clip(v + f32(0.5), 0, 255)) if byte else v

    src_len = src.shape[0]
    dst = np.empty((dst_len,) + src.shape[1:], np.float32)
    if dst_len > src_len:
        scale = f32(src_len - 1) / f32(dst_len - 1)
        for di in range(dst_len - 1):
            if src_len == 1:
                dst[di] = src[0]
                continue
            si_f = f32(di) * scale
            si_i = int(si_f)
            si_f = si_f - f32(si_i)
            dst[di] = from_intermediate((f32(1) - si_f) * src[si_i] + si_f * src[si_i + 1])
        dst[dst_len - 1] = src[src_len - 1]
    elif dst_len < src_len:
        scale = f32(src_len) / f32(dst_len)
        si0_i, si0_f = 0, f32(0)
        for di in range(dst_len):
            si1_f = f32(di + 1) * scale
            si1_i = int(si1_f)
            si1_f = si1_f - f32(si1_i)
            acc = (f32(1) - si0_f) * src[si0_i]
            n = f32(1) - si0_f
            for si in range(si0_i + 1, si1_i):
                acc = acc + src[si]
                n = n + f32(1)
            if si1_i < src_len:
                acc = acc + si1_f * src[si1_i]
                n = n + si1_f
            dst[di] = from_intermediate(acc / n)
            si0_i, si0_f = si1_i, si1_f
    else:
        dst[:] = src
    return dst


def lua_image_scale(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image.scale(src, width, height)` (default mode "bilinear" -> image_(Main_scaleBilinear)) on an HxW[xC]
    array: rows first into a temporary of the source's type (a byte image is rounded there too), then
    columns. Note the Lua argument order, width before height: the loaders call
    `image.scale(ground_image, 1024, 256)` for a 256-high panorama (cvm: torch_scale(x, (256, 1024)))."""
    byte = image.dtype == np.uint8
    x = image.astype(np.float32)
    tmp = np.moveaxis(lua_rowcol(np.moveaxis(x, 1, 0), width, byte), 0, 1)
    out = lua_rowcol(tmp, height, byte)
    return out.astype(np.uint8) if byte else out


# (H, W) -> (H', W'): the originals' calls (CVPR18 loadSize 286, ICCV19 1232x224 panorama -> 1024x256, 750 aerial
# -> 512), a non-integer shrink (354 -> 286), mixed up/down, 1-pixel sides, ratios where cv2.INTER_AREA is off.
SCALE_CASES = [((256, 256), (286, 286)), ((224, 1232), (256, 1024)), ((750, 750), (512, 512)), ((354, 354), (286, 286)),
               ((3, 4), (5, 7)), ((40, 90), (16, 50)), ((22, 123), (25, 100)), ((64, 64), (13, 7)),
               ((30, 30), (30, 31)), ((1, 5), (4, 9)), ((17, 1), (3, 6)), ((2, 1001), (3, 1000)),
               ((5, 2000), (4, 1999))]


@pytest.mark.parametrize("channels", [None, 3])
def test_torch_scale_is_torch_image_scale(channels):
    rng = np.random.default_rng(0 if channels else 1)
    cases = SCALE_CASES + [(tuple(rng.integers(1, 60, 2)), tuple(rng.integers(1, 80, 2))) for _ in range(20)]
    for (h, w), (oh, ow) in cases:
        shape = (h, w) if channels is None else (h, w, channels)
        image = rng.uniform(-1, 1, shape).astype(np.float32)
        got = torch_scale(image, (oh, ow))
        assert got.dtype == np.float32 and got.shape == (oh, ow) + shape[2:]
        # The reference is the C float32 arithmetic; another exact evaluation order (float64, a cumulative
        # sum) differs by a few float32 ulps of values <= 1, i.e. < 1e-6. Wrong variants are far outside:
        # half-pixel centres or cv2.INTER_LINEAR (~1e-1), cv2.INTER_AREA for shrinking (9e-4 at 1001 -> 1000).
        np.testing.assert_allclose(got, lua_image_scale(image, ow, oh), rtol=0, atol=1e-6, err_msg=f"{shape}->{oh, ow}")
        # Byte images: each pass rounds (x + 0.5, truncated) into a byte tensor. The same float32 operations
        # give the same bytes, ties included (a float64 evaluation rounds ~0.2% of pixels the other way).
        grey = rng.integers(0, 256, shape, dtype=np.uint8)
        scaled = torch_scale(grey, (oh, ow))
        assert scaled.dtype == np.uint8
        np.testing.assert_array_equal(scaled, lua_image_scale(grey, ow, oh), err_msg=f"{shape}->{oh, ow}")
    # The reference itself on hand-checkable cases: 2 -> 3 linear with aligned ends; 4 -> 2 and 3 -> 2 box means.
    np.testing.assert_allclose(lua_image_scale(np.array([[0.0, 1.0]], np.float32), 3, 1), [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(lua_image_scale(np.array([[1.0, 3.0, 5.0, 7.0]], np.float32), 2, 1), [[2.0, 6.0]])
    np.testing.assert_allclose(lua_image_scale(np.array([[3.0, 6.0, 9.0]], np.float32), 2, 1), [[4.0, 8.0]], atol=1e-6)
    assert lua_image_scale(np.array([[10, 11]], np.uint8), 1, 1)[0, 0] == 11  # 10.5 rounds half up


def test_unit_range_round_trip_and_presets():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    x = to_unit_range(image)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(to_uint8_bgr(x), image)
    np.testing.assert_array_equal(to_uint8_bgr(np.concatenate([x, x[..., :1]], -1)[None]), image[None])
    assert synthesis_preset("pano2aerial").input_size == (256, 1024)
    assert synthesis_preset("pano2aerial").target_size == (512, 512)
    assert synthesis_preset("pano2aerial_edges").input_channels == 4
    assert synthesis_preset("aerial2pano").target_size == (256, 1024)
    borji = SYNTHESIS_PRESETS["borji256"]
    assert (borji.load_size, borji.crop_size, borji.flip, borji.input_channels) == ((286, 286), (256, 256), True, 3)
    with pytest.raises(CvmError, match="valid"):
        synthesis_preset("nope")
    with pytest.raises(CvmError):
        SynthesisSpec((32, 32), (32, 32), load_size=(36, 36))  # crop_size missing
    with pytest.raises(CvmError):
        SynthesisSpec((30, 30), (32, 32), load_size=(36, 36), crop_size=(32, 32))


def test_same_crop_and_flip_for_all_panels(tmp_path):
    root = str(tmp_path)
    csv = write_cvusa_like(root, 6)
    split = load_synthesis_split("cvusa", "train", root, "a2g", split_file=csv)
    assert [s.out_name for s in split.samples] == [f"{i:07d}.png" for i in range(1, 7)]
    pipeline = SynthesisPipeline(split, SPEC, seed=11)
    loader = pipeline.loader
    flips, offsets = set(), set()
    for epoch in range(3):
        for images, meta in batches(pipeline.train(2, start_epoch=epoch, epochs=epoch + 1)):
            assert images["input"].shape == (2, 32, 32, 3)
            # Pixel correspondences survive: target = 255 - input, segmap = input with channels reversed.
            np.testing.assert_allclose(images["target"], -images["input"], atol=1e-5)
            np.testing.assert_allclose(images["target_seg"], images["input"][..., ::-1], atol=1e-5)
            for k, index in enumerate(meta["index"]):
                top, left, flip = loader.draws(index, epoch)
                assert 1 <= top <= 4 and 1 <= left <= 4  # Torch: ceil(uniform(0.01, 36 - 32))
                flips.add(flip)
                offsets.add((top, left))
                aerial = cv2.imread(os.path.join(root, "bingmap/19", f"{index + 1:07d}.png"))
                expected = torch_scale(to_unit_range(aerial), (36, 36))[top:top + 32, left:left + 32]
                if flip:
                    expected = expected[:, ::-1]
                np.testing.assert_allclose(images["input"][k], expected, atol=1e-6)
                assert meta["out_name"][k].decode() == f"{index + 1:07d}.png"
    assert flips == {True, False} and len(offsets) > 3
    # Evaluation: every sample once, in order, scaled to the crop size directly, never flipped.
    (images, meta), = batches(pipeline.eval(6))
    assert list(meta["index"]) == list(range(6))
    aerial = cv2.imread(os.path.join(root, "bingmap/19", "0000001.png"))
    np.testing.assert_allclose(images["input"][0], torch_scale(to_unit_range(aerial), (32, 32)), atol=1e-6)


def test_training_order_and_draws_are_deterministic(tmp_path):
    root = str(tmp_path)
    csv = write_cvusa_like(root, 7, seed=1)
    split = load_synthesis_split("cvusa", "train", root, "a2g", split_file=csv)
    a = batches(SynthesisPipeline(split, SPEC, seed=3, num_parallel_calls=3).train(3, epochs=2))
    b = batches(SynthesisPipeline(split, SPEC, seed=3, num_parallel_calls=1).train(3, epochs=2))
    assert len(a) == 4 == 2 * SynthesisPipeline(split, SPEC).steps_per_epoch(3)  # full batches only
    for (ia, ma), (ib, mb) in zip(a, b):
        np.testing.assert_array_equal(ma["index"], mb["index"])
        np.testing.assert_array_equal(ia["input"], ib["input"])
    expected_order = np.random.default_rng([3, 1]).permutation(7)[:6]
    np.testing.assert_array_equal(np.concatenate([a[2][1]["index"], a[3][1]["index"]]), expected_order)
    # Resuming at epoch 1, batch 1 gives the same batch as the uninterrupted run.
    resumed = batches(SynthesisPipeline(split, SPEC, seed=3).train(3, start_epoch=1, epochs=2, skip_batches=1))
    np.testing.assert_array_equal(resumed[0][0]["input"], a[3][0]["input"])
    other = SynthesisPipeline(split, SPEC, seed=4).loader
    assert [other.draws(i, 0) for i in range(7)] != [SynthesisPipeline(split, SPEC, seed=3).loader.draws(i, 0)
                                                     for i in range(7)]


def test_edge_map_channel(tmp_path):
    root = str(tmp_path)
    csv = write_cvusa_like(root, 2, size=(20, 60))
    split = load_synthesis_split("cvusa", "train", root, "g2a", split_file=csv)
    spec = SynthesisSpec((16, 64), (24, 24), edge_map=True)
    (images, _), = batches(SynthesisPipeline(split, spec).eval(2))
    assert images["input"].shape == (2, 16, 64, 4) and spec.input_channels == 4
    edges = images["input"][..., 3]
    assert set(np.unique(edges)) == {0.0, 1.0}
    pano = cv2.imread(os.path.join(root, "streetview/panos", "0000002.png"))
    grey = torch_scale(cv2.cvtColor(pano, cv2.COLOR_BGR2GRAY), (16, 64))
    np.testing.assert_array_equal(edges[1], cv2.Canny(grey, 50, 100) / 255.0)
    np.testing.assert_array_equal(edge_map(grey), cv2.Canny(grey, 50, 100) > 0)
    np.testing.assert_allclose(images["input"][1, ..., :3], torch_scale(to_unit_range(pano), (16, 64)), atol=1e-6)


def test_homography_maps_source_points_onto_destination_points():
    src, dst = CVIU_HOMOGRAPHY
    assert parse_homography(CVIU_HOMOGRAPHY_FLAG) == parse_homography(CVIU_HOMOGRAPHY)
    assert parse_homography(CVIU_HOMOGRAPHY_FLAG.split(",")) == parse_homography(CVIU_HOMOGRAPHY)
    matrix = homography_matrix(CVIU_HOMOGRAPHY)
    mapped = cv2.perspectiveTransform(np.asarray(src, np.float64)[None], matrix)[0]
    np.testing.assert_allclose(mapped, np.asarray(dst, np.float64), atol=1e-6)
    # An image with a bright dot at each source point shows the dots at the destination points.
    points = (((10, 12), (50, 8), (55, 40), (6, 44)), ((14, 10), (48, 14), (52, 46), (12, 40)))
    image = np.zeros((60, 64, 3), np.uint8)
    for x, y in points[0]:
        image[y - 1:y + 2, x - 1:x + 2] = 255
    warped = warp_homography(image, points)
    assert warped.shape == image.shape
    for x, y in points[1]:
        assert warped[y, x].min() > 200, (x, y)
    assert warped[30, 30].max() == 0
    # frame: the points refer to a (120, 128) frame: the image is scaled to it first.
    assert warp_homography(image, points, frame=(120, 128)).shape == (120, 128, 3)
    with pytest.raises(CvmError, match="16"):
        parse_homography("1,2,3")
    with pytest.raises(CvmError, match="degenerate"):
        homography_matrix(((0, 0), (1, 1), (2, 2), (3, 3), (0, 0), (1, 0), (1, 1), (0, 1)))


def test_homography_prewarp_in_the_pipeline(tmp_path):
    root = str(tmp_path)
    csv = write_cvusa_like(root, 2, size=(40, 40))
    points = ((2, 3), (35, 4), (36, 37), (3, 35)), ((5, 5), (30, 6), (33, 33), (6, 30))
    spec = SynthesisSpec((40, 40), (40, 40), homography=points)
    split = load_synthesis_split("cvusa", "train", root, "a2g", split_file=csv)
    (images, _), = batches(SynthesisPipeline(split, spec).eval(2))
    aerial = cv2.imread(os.path.join(root, "bingmap/19", "0000001.png"))
    np.testing.assert_allclose(images["input"][0], to_unit_range(warp_homography(aerial, points)), atol=1e-6)
    np.testing.assert_allclose(images["target"][0], to_unit_range(255 - aerial), atol=1e-6)  # target not warped
    with pytest.raises(CvmError, match="a2g"):
        SynthesisPipeline(load_synthesis_split("cvusa", "train", root, "g2a", split_file=csv), spec)


def test_synthetic_samples_carry_segmentation_maps_of_the_rendered_classes():
    from cvm.data.synthetic import make_synthetic_split
    from cvm.data.synthetic.dataset import SEG_COLOURS_BGR
    from cvm.data.synthetic.render import render_aerial, render_panorama

    g2a = load_synthesis_split("synthetic", "val", direction="g2a", synthetic_pairs=6, synthetic_seed=2,
                               ground_size=(32, 128), aerial_size=48)
    a2g = load_synthesis_split("synthetic", "test", direction="a2g", synthetic_pairs=6, synthetic_seed=2,
                               ground_size=(32, 128), aerial_size=48)
    assert g2a.ids == a2g.ids == ["0000006"] and g2a.samples[0].out_name == "0000006.jpg"
    world_split = make_synthetic_split("val", pairs=6, seed=2, ground_size=(32, 128), aerial_size=48)
    xy = world_split.pairs[0].location
    pano, pano_classes = render_panorama(world_split.world, xy, height_px=32, width_px=128, with_classes=True)
    aerial, aerial_classes = render_aerial(world_split.world, xy, size_px=48, metres_per_pixel=172.5 / 48,
                                           with_classes=True)
    inp, target, seg = g2a.read(0)
    np.testing.assert_array_equal(inp, pano)
    np.testing.assert_array_equal(target, aerial)
    np.testing.assert_array_equal(seg, SEG_COLOURS_BGR[aerial_classes])
    inp, target, seg = a2g.read(0)
    np.testing.assert_array_equal(inp, aerial)
    np.testing.assert_array_equal(seg, SEG_COLOURS_BGR[pano_classes])
    # Through the pipeline, the segmap holds palette colours only (scaled with nearest-exact sizes).
    spec = SynthesisSpec((32, 128), (48, 48))
    (images, _), = batches(SynthesisPipeline(g2a, spec).eval(1))
    colours = {tuple(c) for c in to_uint8_bgr(images["target_seg"][0]).reshape(-1, 3)}
    assert colours <= {tuple(c) for c in SEG_COLOURS_BGR}
    # Without fixed sizes the world is rendered at the sizes the pipeline asks for: no rescaling.
    adaptive = load_synthesis_split("synthetic", "val", direction="g2a", synthetic_pairs=6, synthetic_seed=2)
    (images, _), = batches(SynthesisPipeline(adaptive, SynthesisSpec((16, 64), (24, 24))).eval(1))
    aerial24, classes24 = render_aerial(world_split.world, xy, size_px=24, metres_per_pixel=172.5 / 24,
                                        with_classes=True)
    np.testing.assert_array_equal(to_uint8_bgr(images["target"][0]), aerial24)
    np.testing.assert_array_equal(to_uint8_bgr(images["target_seg"][0]), SEG_COLOURS_BGR[classes24])
    np.testing.assert_array_equal(to_uint8_bgr(images["input"][0]),
                                  render_panorama(world_split.world, xy, height_px=16, width_px=64))


def test_cvusa_synthesis_split_reads_the_synth_folder(tmp_path):
    from cvm.data.synthetic import write_dataset

    out = str(tmp_path / "cvusa")
    write_dataset(out, "cvusa", 3, seed=1, progress=False, workers=1)
    g2a = load_synthesis_split("cvusa", "train", out, "g2a")
    a2g = load_synthesis_split("cvusa", "val", out, "a2g")
    assert len(g2a) == 2 and len(a2g) == 1
    sample = g2a.samples[0]
    assert sample.input_path.endswith("streetview/panos/0000001.jpg")
    assert sample.target_seg_path == os.path.join(out, "bingmap", "annotations", "0000001.png")
    assert a2g.samples[0].target_seg_path == os.path.join(out, "streetview", "annotations", "0000003.png")
    assert a2g.samples[0].out_name == "0000003.jpg"  # the aerial file's basename, both directions
    # ICCV19 sizes: panorama 1232x224 -> 1024x256 input, aerial and its segmap 750 -> 512.
    (images, meta), = batches(SynthesisPipeline(g2a, SYNTHESIS_PRESETS["pano2aerial_edges"]).eval(2))
    assert images["input"].shape == (2, 256, 1024, 4) and images["target_seg"].shape == (2, 512, 512, 3)
    seg = cv2.imread(sample.target_seg_path)
    np.testing.assert_allclose(images["target_seg"][0],
                               cv2.resize(to_unit_range(seg), (512, 512), interpolation=cv2.INTER_AREA), atol=1e-5)
    nomaps = load_synthesis_split("cvusa", "train", out, "g2a", segmaps=False)
    assert nomaps.samples[0].target_seg_path is None


def test_missing_and_corrupt_files_are_skipped_and_reported(tmp_path):
    root = str(tmp_path)
    csv = write_cvusa_like(root, 5)
    os.remove(os.path.join(root, "segs", "0000002.png"))
    with open(os.path.join(root, "streetview/panos", "0000004.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nnot really")
    split = load_synthesis_split("cvusa", "train", root, "a2g", split_file=csv)
    faults = str(tmp_path / "faults.txt")
    pipeline = SynthesisPipeline(split, SPEC, faults_path=faults)
    (images, meta), = batches(pipeline.eval(8))
    assert list(meta["index"]) == [0, 2, 4]
    text = open(faults).read()
    assert "0000002.png\tmissing" in text and "0000004.png\t" in text and len(pipeline.faults) == 2


def test_split_errors(tmp_path):
    with pytest.raises(CvmError, match="direction"):
        load_synthesis_split("synthetic", "train", direction="sideways")
    with pytest.raises(CvmError, match="valid"):
        load_synthesis_split("kitti", "train", str(tmp_path))
    with pytest.raises(CvmError, match="--root"):
        load_synthesis_split("dayton", "train")
    os.makedirs(tmp_path / "splits")
    with pytest.raises(CvmError, match="train-19zl.csv"):
        load_synthesis_split("cvusa", "train", str(tmp_path), "a2g")
    with open(tmp_path / "splits" / "val-19zl.csv", "w") as f:
        f.write("bingmap/19/1.jpg,streetview/panos/1.jpg\n")
    with pytest.raises(CvmError, match="segmentation map"):  # a2g needs the third column
        load_synthesis_split("cvusa", "val", str(tmp_path), "a2g")
    assert load_synthesis_split("cvusa", "val", str(tmp_path), "a2g", segmaps=False).samples[0].id == "1"


def test_ucfop_pairs_become_synthesis_samples_without_segmaps(tmp_path):
    import cv2

    root = tmp_path / "UCF-OP"
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "test_split.txt").write_text("a/28.6_-81.2_nadir.png,g/28.600001_-81.200002.png\n")
    rng = np.random.default_rng(0)
    for rel, shape in (("a/28.6_-81.2_nadir.png", (40, 40, 3)), ("g/28.600001_-81.200002.png", (20, 80, 3))):
        (root / rel).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(root / rel), rng.integers(0, 255, shape, dtype=np.uint8))
    split = load_synthesis_split("ucfop", "test", str(root), "g2a", segmaps=False)
    sample = split[0]
    assert sample.input_path.endswith("28.600001_-81.200002.png") and sample.target_path.endswith("_nadir.png")
    assert sample.target_seg_path is None and sample.out_name == "28.6_-81.2_nadir.png"
    ground, aerial, seg = split.read(0)
    assert ground.shape == (20, 80, 3) and aerial.shape == (40, 40, 3) and seg is None
    with pytest.raises(CvmError, match="no segmentation maps"):
        load_synthesis_split("ucfop", "test", str(root), "g2a", segmaps=True)


# --- CVUSA panorama -> aerial: the aerial segmentation target is column 3 of Regmi's X-Fork list ------------


def write_xfork_cvusa(root, n=3, seed=0):
    """A CVUSA-layout folder (PNG, so pixels are exact) with the official CSVs, a decoy
    bingmap/annotations/<stem>.png per aerial, and Regmi-style lists whose column 3 names other files
    (maps/<stem>_seg.png). Sizes: aerial and maps 16x16, panorama 8x32. Returns {stem: (col-3 map, decoy)}."""
    rng = np.random.default_rng(seed)
    for folder in ("bingmap/19", "bingmap/annotations", "streetview/panos", "streetview/annotations", "maps",
                   "splits"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    maps, official, lists = {}, [], []
    for i in range(n):
        stem = f"{i + 1:07d}"
        images = {f"bingmap/19/{stem}.png": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                  f"streetview/panos/{stem}.png": rng.integers(0, 256, (8, 32, 3), dtype=np.uint8),
                  f"streetview/annotations/{stem}.png": rng.integers(0, 256, (8, 32, 3), dtype=np.uint8),
                  f"maps/{stem}_seg.png": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                  f"bingmap/annotations/{stem}.png": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)}
        for rel, image in images.items():
            assert cv2.imwrite(os.path.join(root, rel), image)
        maps[stem] = (images[f"maps/{stem}_seg.png"], images[f"bingmap/annotations/{stem}.png"])
        official.append(f"bingmap/19/{stem}.png,streetview/panos/{stem}.png,streetview/annotations/{stem}.png")
        lists.append(f"bingmap/19/{stem}.png,streetview/panos/{stem}.png,maps/{stem}_seg.png")
    for name, rows in (("train-19zl.csv", official[:-1]), ("val-19zl.csv", official[-1:]),
                       ("train_xfork_cvusa.txt", lists[:-1]), ("val_xfork_cvusa.txt", lists[-1:])):
        with open(os.path.join(root, "splits", name), "w") as f:
            f.write("\n".join(rows) + "\n")
    return maps


P2A_EXACT = SynthesisSpec((8, 32), (16, 16))  # the files' own sizes: no scaling, pixels compare exactly


def test_cvusa_g2a_reads_the_target_map_from_column_3_of_the_xfork_list(tmp_path):
    from cvm.data.synthesis import SynthesisLoader

    root = str(tmp_path / "cvusa")
    maps = write_xfork_cvusa(root)
    split = load_synthesis_split("cvusa", "train", root, "g2a")
    assert [s.target_seg_path for s in split.samples] == [os.path.join(root, "maps", f"{i:07d}_seg.png")
                                                         for i in (1, 2)]
    assert split.samples[0].input_path == os.path.join(root, "streetview", "panos", "0000001.png")
    assert split.samples[0].target_path == os.path.join(root, "bingmap", "19", "0000001.png")
    loader = SynthesisLoader(split, P2A_EXACT)
    for index, stem in enumerate(("0000001", "0000002")):
        x, y, seg, ok = loader.load(index, epoch=0, train=False)
        assert ok
        column3, decoy = maps[stem]
        np.testing.assert_array_equal(to_uint8_bgr(seg), column3)  # the listed file's pixels ...
        assert not np.array_equal(to_uint8_bgr(seg), decoy)  # ... not bingmap/annotations/<stem>.png
    val = load_synthesis_split("cvusa", "val", root, "g2a")  # the twin list
    assert val.samples[0].target_seg_path == os.path.join(root, "maps", "0000003_seg.png")
    # A list the user names ({split} stands for train / val), absolute or relative to the root.
    os.rename(os.path.join(root, "splits", "train_xfork_cvusa.txt"), os.path.join(root, "mine_train.txt"))
    named = load_synthesis_split("cvusa", "train", root, "g2a", split_file="mine_{split}.txt")
    assert named.samples[1].target_seg_path == os.path.join(root, "maps", "0000002_seg.png")
    named = load_synthesis_split("cvusa", "train", root, "g2a", split_file=os.path.join(root, "mine_train.txt"))
    assert len(named) == 2
    # Generation reads no maps and the official CSV, as test_xfork_pano2aerial.lua.
    assert load_synthesis_split("cvusa", "train", root, "g2a", segmaps=False).samples[0].target_seg_path is None


def test_cvusa_g2a_without_the_xfork_list_is_an_error_naming_it(tmp_path):
    root = str(tmp_path / "cvusa")
    write_xfork_cvusa(root)
    for name in ("train_xfork_cvusa.txt", "val_xfork_cvusa.txt"):
        os.remove(os.path.join(root, "splits", name))
    with pytest.raises(CvmError) as err:
        load_synthesis_split("cvusa", "train", root, "g2a")
    message = str(err.value)
    assert os.path.join(root, "splits", "train_xfork_cvusa.txt") in message
    assert "train_xfork_pano2aerial.lua" in message and "kregmi/cross-view-image-matching" in message
    assert "column 3" in message and "--split_file" in message and "--aerial_seg_dir" in message
    with pytest.raises(CvmError, match=r"val_xfork_cvusa\.txt.*validation twin"):
        load_synthesis_split("cvusa", "val", root, "g2a")
    with pytest.raises(CvmError, match=r"mine\.txt.*--split_file names"):
        load_synthesis_split("cvusa", "train", root, "g2a", split_file="mine.txt")
    # a2g and generation do not need it: the official CSVs.
    assert load_synthesis_split("cvusa", "train", root, "a2g").samples[0].target_seg_path.endswith(
        os.path.join("streetview", "annotations", "0000001.png"))
    assert len(load_synthesis_split("cvusa", "train", root, "g2a", segmaps=False)) == 2


def test_cvusa_g2a_aerial_seg_dir_takes_maps_by_stem_beside_the_official_csvs(tmp_path):
    from cvm.data.synthesis import SynthesisLoader

    root = str(tmp_path / "cvusa")
    maps = write_xfork_cvusa(root)
    os.remove(os.path.join(root, "splits", "train_xfork_cvusa.txt"))
    split = load_synthesis_split("cvusa", "train", root, "g2a", aerial_seg_dir="bingmap/annotations")
    assert split.samples[0].target_seg_path == os.path.join(root, "bingmap", "annotations", "0000001.png")
    _, _, seg, ok = SynthesisLoader(split, P2A_EXACT).load(0, epoch=0, train=False)
    assert ok
    np.testing.assert_array_equal(to_uint8_bgr(seg), maps["0000001"][1])
    with pytest.raises(CvmError, match="no such folder"):
        load_synthesis_split("cvusa", "train", root, "g2a", aerial_seg_dir="nowhere")
    with pytest.raises(CvmError, match="applies to direction g2a"):
        load_synthesis_split("cvusa", "train", root, "a2g", aerial_seg_dir="bingmap/annotations")


def test_synth_folder_carries_the_xfork_lists_in_regmis_format(tmp_path):
    from cvm.data.synthetic import write_dataset

    out = str(tmp_path / "cvusa")
    write_dataset(out, "cvusa", 3, seed=1, progress=False, workers=1)
    with open(os.path.join(out, "splits", "train_xfork_cvusa.txt")) as f:
        assert f.read().splitlines() == [f"bingmap/19/{i:07d}.jpg,streetview/panos/{i:07d}.jpg,"
                                         f"bingmap/annotations/{i:07d}.png" for i in (1, 2)]
    with open(os.path.join(out, "splits", "val_xfork_cvusa.txt")) as f:
        assert f.read().splitlines() == ["bingmap/19/0000003.jpg,streetview/panos/0000003.jpg,"
                                         "bingmap/annotations/0000003.png"]
    write_dataset(str(tmp_path / "nomaps"), "cvusa", 3, seed=1, progress=False, workers=1, segmaps=False)
    assert not os.path.exists(tmp_path / "nomaps" / "splits" / "train_xfork_cvusa.txt")
