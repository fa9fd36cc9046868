"""SynthesisConfig: every setting of a cross-view synthesis GAN run, saved beside the checkpoints.

Defaults are the papers' (Regmi & Borji CVPR 2018, Regmi & Shah ICCV 2019); fields left None take the
method's value from its Torch script (`cvm.synthesis.methods.SYNTHESIS_METHODS[method].defaults`: batch
size, epochs, L1 weights, image preset, test-time mode). `resolved()` returns the config with every None
filled in; that is what a run saves (config.json, flags.cfg) and uses.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from cvm.data.synthesis import DATASETS, SPLIT_PLACEHOLDER
from cvm.errors import CvmError
from cvm.synthesis.methods import SYNTHESIS_METHODS, is_synthesis_method, synthesis_method
from cvm.training.run_config import PRECISIONS, ModelDirConfig

def _size(value):
    return None if value is None else tuple(int(v) for v in value)


@dataclasses.dataclass
class SynthesisConfig(ModelDirConfig):
    # Class attributes (no annotation), not fields: ModelDirConfig's config.json handling.
    _SIZE_FIELDS = ("input_size", "target_size", "load_size", "crop_size", "homography_size")
    _TRAIN_COMMAND = "cvm train --method xfork --model_dir ..."
    # Model.
    method: str = "xfork"
    ngf: int = 64
    ndf: int = 64
    d_layers: Optional[int] = None  # None: the method's (3 CVPR18, 4 ICCV19)
    dropout: float = 0.5
    edge_bias: bool = False
    fix_fork_relu: bool = False
    # Data.
    dataset: str = "synthetic"
    root: Optional[str] = None
    direction: Optional[str] = None  # a2g (aerial -> ground) or g2a; None: the method's
    train_split: str = "train"
    val_split: Optional[str] = None
    preset: Optional[str] = None
    input_size: Optional[tuple] = None
    target_size: Optional[tuple] = None
    load_size: Optional[tuple] = None
    crop_size: Optional[tuple] = None
    edge_map: bool = False
    homography: Optional[str] = None  # CVIU pre-warp: 16 numbers (cvm.data.synthesis.CVIU_HOMOGRAPHY_FLAG)
    homography_size: Optional[tuple] = None
    synthetic_pairs: int = 1000
    synthetic_seed: int = 0
    # CVUSA: the split list read (relative to root or absolute; "{split}" stands for train / val); None:
    # Regmi's splits/{split}_xfork_cvusa.txt for g2a with maps, else the official CSVs (cvm.data.synthesis).
    split_file: Optional[str] = None
    aerial_seg_dir: Optional[str] = None  # CVUSA g2a: maps at <dir>/<aerial stem>.png instead of column 3
    # Loss.
    lambda_l1: Optional[float] = None
    lambda_seg: Optional[float] = None
    lambda_grads: float = 0.1
    label_smoothing: float = 0.9  # the real label of the BCE (one-sided smoothing); 1.0 turns it off
    # Optimisation.
    batch_size: Optional[int] = None
    lr: float = 2e-4
    beta1: float = 0.5
    epochs: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    # Runtime.
    precision: str = "float32"
    jit_compile: bool = False
    strategy: str = "default"
    seed: int = 0
    model_dir: str = "runs/synthesis"
    checkpoint_every_steps: int = 0
    log_every_steps: int = 10
    image_every_steps: int = 100
    keep_checkpoints: int = 3
    eval_batch_size: int = 8
    # Generation (validation, best/, TensorBoard images, `cvm synthesize`): True: BN moving statistics and no
    # dropout (netG:evaluate()); False: the batch's statistics and dropout on; None: the method's original.
    inference_mode: Optional[bool] = None
    deterministic: bool = False
    kill_after_steps: Optional[int] = None

    def resolved(self) -> "SynthesisConfig":
        """A copy with the method's defaults filled in for every None field that has one."""
        defaults = synthesis_method(self.method).defaults
        changes = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.method == "xfork_pano2aerial" and self.edge_map and self.batch_size is None:
            changes["batch_size"] = 16  # train_xfork_pano2aerial_with_edgemap.lua
        return dataclasses.replace(self, **changes)

    def unused_fields(self) -> dict:
        """{field: why this run does not use it} for every field that has no effect on this run.

        A reason completes "--field has no effect: ...". The CLI refuses such a field given as a flag
        (cvm.flags.use) and a run's flags.cfg leaves these fields out.
        """
        from cvm.data.synthesis import SYNTHESIS_PRESETS

        c = self.resolved()
        method = SYNTHESIS_METHODS[c.method]
        unused = {}
        if c.dataset == "synthetic":
            unused["root"] = "--dataset synthetic is rendered in memory and reads no files"
        else:
            for name in ("synthetic_pairs", "synthetic_seed"):
                unused[name] = f"only --dataset synthetic uses it (this run: --dataset {c.dataset})"
        if not method.sequential:
            unused["lambda_grads"] = f"only X-Seq (--method xseq) feeds G2's input gradient back, not {c.method}"
        if not method.has_segmentation:
            unused["lambda_seg"] = f"--method {c.method} has no segmentation output"
        if method.family == "borji":
            unused["fix_fork_relu"] = (f"the CVPR 2018 generators ({c.method}) have that ReLU; only the ICCV19 "
                                       "forks (xfork_pano2aerial, xfork_aerial2pano) lack it")
        preset = SYNTHESIS_PRESETS.get(c.preset)
        if not c.edge_map and preset is not None and preset.edge_map:
            unused["edge_map"] = f"--preset={c.preset} appends the edge channel in any case"
        if not c.homography:
            unused["homography_size"] = "there is no --homography to place"
        if c.dataset != "cvusa":
            for name in ("split_file", "aerial_seg_dir"):
                unused[name] = f"only --dataset cvusa reads a split list (this run: --dataset {c.dataset})"
        elif c.direction != "g2a":
            unused["aerial_seg_dir"] = (f"--direction {c.direction} targets panoramas, whose maps are the split "
                                        "file's third column; --aerial_seg_dir places aerial maps (g2a)")
        elif not c.uses_segmaps():
            unused["aerial_seg_dir"] = f"--method {c.method} has no segmentation output and reads no maps"
        return unused

    def uses_segmaps(self) -> bool:
        """Whether training reads target segmentation maps (a fork's second head, X-Seq's G2)."""
        return SYNTHESIS_METHODS[self.resolved().method].has_segmentation

    def validate(self) -> None:
        c = self.resolved()
        if c.precision not in PRECISIONS:
            raise CvmError(f"--precision must be one of {', '.join(PRECISIONS)}, got {c.precision!r}")
        if c.dataset not in DATASETS:
            raise CvmError(f"--dataset {c.dataset!r} has no synthesis data; use one of {', '.join(DATASETS)}")
        if c.direction not in ("a2g", "g2a"):
            raise CvmError(f"--direction must be a2g (aerial -> ground) or g2a, got {c.direction!r}")
        if c.method == "xfork_pano2aerial" and c.direction != "g2a":
            raise CvmError("--method xfork_pano2aerial synthesizes aerials from panoramas: use --direction=g2a")
        if c.method == "xfork_aerial2pano" and c.direction != "a2g":
            raise CvmError("--method xfork_aerial2pano synthesizes panoramas from aerials: use --direction=a2g")
        for name in ("batch_size", "epochs", "ngf", "ndf"):
            if getattr(c, name) < 1:
                raise CvmError(f"--{name} must be at least 1, got {getattr(c, name)}")
        if c.lr <= 0:
            raise CvmError(f"--lr must be positive, got {c.lr}")
        if not 0.0 <= c.beta1 < 1.0:
            raise CvmError(f"--beta1 must be in [0, 1), got {c.beta1}")
        if not 0.0 < c.label_smoothing <= 1.0:
            raise CvmError(f"--label_smoothing (the real label) must be in (0, 1], got {c.label_smoothing}")
        if not 0.0 <= c.dropout < 1.0:
            raise CvmError(f"--dropout must be in [0, 1), got {c.dropout}")
        if c.strategy != "default":
            raise CvmError(f"--strategy {c.strategy} is not supported by the GAN trainer (one device); "
                           "use --strategy=default")
        if c.split_file is not None and SPLIT_PLACEHOLDER not in c.split_file and c.val_split:
            raise CvmError(f"--split_file {c.split_file} names one list but the run reads two splits (--train_split "
                           f"{c.train_split}, --val_split {c.val_split}): put {SPLIT_PLACEHOLDER} in its name (e.g. "
                           f"splits/{SPLIT_PLACEHOLDER}_xfork_cvusa.txt) or leave --val_split empty")
        spec = c.data_spec()
        if c.inference_mode and c.batch_size == 1 and _bottleneck_of(c.method, spec) == (1, 1):
            raise CvmError(
                f"--inference_mode with --batch_size 1: --method {c.method}'s 1x1 bottleneck BatchNorm would see one "
                "value per channel at every training step (batch variance 0), so its moving variance decays to 0 "
                "and inference mode divides by sqrt(epsilon) (x316). Drop --inference_mode (the original's batch "
                "statistics at test time) or train with --batch_size 2 or more")
        if (not c.inference_mode and c.val_split and c.eval_batch_size == 1
                and _bottleneck_of(c.method, spec) == (1, 1)):
            raise CvmError(
                f"--eval_batch_size 1 with batch statistics (the original test mode of --method {c.method}): its 1x1 "
                "bottleneck BatchNorm outputs its beta for a batch of one, so validation would score one image "
                "whatever the input; use --eval_batch_size 2 or more, or --inference_mode")
        if c.edge_map and spec.input_channels != 4:
            raise CvmError("--edge_map: the data spec did not add the edge channel")
        try:  # sizes must fit the architecture (powers of two, the bottleneck aspect)
            _check_sizes(c.method, spec.input_size, spec.target_size, c.d_layers)
        except ValueError as exc:
            raise CvmError(f"--input_size {spec.input_size} / --target_size {spec.target_size} do not fit "
                           f"--method {c.method}: {exc}") from None

    def data_spec(self):
        """The cvm.data.synthesis.SynthesisSpec: the preset, overridden by the explicit size flags."""
        from cvm.data.synthesis import SYNTHESIS_PRESETS, parse_homography

        c = self.resolved()
        if c.preset not in SYNTHESIS_PRESETS:
            raise CvmError(f"--preset {c.preset!r} is not a synthesis preset; valid: {', '.join(SYNTHESIS_PRESETS)}")
        spec = SYNTHESIS_PRESETS[c.preset]
        changes = {}
        for name in ("input_size", "target_size", "load_size", "crop_size", "homography_size"):
            if getattr(c, name) is not None:
                changes[name] = _size(getattr(c, name))
        if c.edge_map:
            changes["edge_map"] = True
        if c.homography:
            changes["homography"] = parse_homography(c.homography)
        if changes.get("input_size") and spec.crop_size and "crop_size" not in changes:
            raise CvmError(f"--input_size {changes['input_size']}: preset {c.preset} crops {spec.crop_size} from "
                           f"{spec.load_size}; give --load_size and --crop_size too (or a smaller --preset, "
                           "e.g. borji64)")
        return dataclasses.replace(spec, **changes)

    @classmethod
    def _check_loaded(cls, values: dict, model_dir: str) -> None:
        if not is_synthesis_method(values.get("method")):
            raise CvmError(f"{model_dir} holds a {values.get('method')!r} run, not a synthesis GAN")


def _bottleneck_of(method: str, spec) -> tuple:
    """The (h, w) the method's encoder reduces the spec's input to."""
    from cvm.models.synthesis import _bottleneck

    try:
        return _bottleneck(SYNTHESIS_METHODS[method].family, tuple(spec.input_size), tuple(spec.target_size))[0]
    except ValueError:
        return None  # _check_sizes says what is wrong


def _check_sizes(method, input_size, target_size, d_layers=None) -> None:
    from cvm.models.synthesis import _bottleneck
    from cvm.models.synthesis.generators import _log2_ratio

    spec = SYNTHESIS_METHODS[method]
    bottleneck, reshape_to = _bottleneck(spec.family, tuple(input_size), tuple(target_size))
    for axis in (0, 1):
        _log2_ratio(input_size[axis], bottleneck[axis], "input / bottleneck")
        _log2_ratio(target_size[axis], (reshape_to or bottleneck)[axis], "target / bottleneck")
    if spec.conditional and tuple(input_size) != tuple(target_size):
        raise ValueError("the conditional discriminator needs equal input and target sizes")
    n_layers = spec.n_layers if d_layers is None else int(d_layers)
    if min(target_size) // 2 ** n_layers - 2 < 1:  # n_layers stride-2 convs, then two 4x4 convs that shrink by one
        raise ValueError(f"a {n_layers}-layer discriminator leaves no output on {tuple(target_size)} images; "
                         "lower --d_layers")

