"""TrainConfig: every setting of a retrieval run, saved beside the checkpoints (config.json).

The defaults are the quickstart: a small CVM-Net-I on the synthetic world that learns in about
ten minutes on two CPU cores. Paper experiments override them with a flagfile (experiments/).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Optional

from cvm.data import augment as augment_lib
from cvm.data import images
from cvm.errors import CvmError
from cvm.synthesis.methods import is_synthesis_method
from cvm.training.run_config import PRECISIONS, ModelDirConfig

# Model options a run sets itself, never from a flag: the image sizes come from --preset / --ground_size /
# --aerial_size, the fusion stage's input_dim from its descriptor dumps.
RUN_SET_OPTIONS = ("ground_size", "aerial_size", "input_dim")
# The quickstart's model (`cvm train` with no flags): 1/8-width towers that learn from scratch on 2 CPU cores;
# the models' own defaults are the papers'. Every other option defaults to the model's own value.
QUICKSTART_MODEL_OPTIONS = {"keep_prob": 1.0, "output_dim": 256, "clusters": 16, "backbone_width": 0.125,
                            "freeze_blocks": 0, "init": "he"}
# Methods trained on descriptor dumps (Regmi's fusion stage), not on images: no image-data field applies.
DUMP_METHODS = ("regmi_fusion",)
SAMPLERS = ("shuffle", "neighbours")
VIGOR_FIELDS = ("vigor_area", "vigor_labels", "vigor_splits_dir")
IMAGE_DATA_FIELDS = VIGOR_FIELDS + ("root", "train_split", "val_split", "preset", "ground_size", "aerial_size", "aerial_polar",
                     "polar_stretch", "precomputed_polar", "augment", "double_zero", "rotation_impl", "fov_deg",
                     "azimuth_shift", "synthetic_pairs", "synthetic_seed", "cache", "mask_radius_m", "mask_mode")
OPTIMIZERS = ("adam", "adamw")  # cvm.training.optimizers: FusedAdam, FusedAdamW
LR_SCHEDULES = ("constant", "cosine")  # cvm.training.optimizers.WarmupSchedule's decay after the warm-up


@dataclasses.dataclass(frozen=True)
class ModelOption:
    """One model option as a run sees it: from the constructors of the registered models (cvm.models)."""

    name: str
    kind: object  # "str", "int", "float", "bool", "size" or ("enum", choices): cvm.flags.table's kinds
    default: object  # the run's default: the quickstart's, or the models' own when they agree, else None
    methods: tuple  # the methods whose model takes it
    help: str  # the models' docstring texts, per method where they differ


def _option_kind(annotation, default) -> object:
    """The flag kind of a constructor argument, from its annotation (or its default's type)."""
    if typing.get_origin(annotation) is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else str
    if typing.get_origin(annotation) is typing.Literal:
        return ("enum", [str(v) for v in typing.get_args(annotation)])
    if annotation is inspect.Parameter.empty:
        annotation = type(default) if default is not None else str
    for python_type, kind in ((bool, "bool"), (int, "int"), (float, "float"), (tuple, "size"), (list, "size")):
        if annotation is python_type:
            return kind
    return "str"


@functools.lru_cache(maxsize=None)
def model_option_table() -> dict:
    """{option: ModelOption} of every registered retrieval model, sorted by name (RUN_SET_OPTIONS left out).

    The one place an option is declared is its model's constructor (cvm.models.two_tower): this table, the
    TrainConfig fields and the `cvm train` flags are derived from it.
    """
    from cvm.models import available_methods, model_class

    found: dict = {}
    for method in available_methods():
        cls = model_class(method)
        helps = cls.option_help()
        for name, parameter in cls.option_parameters().items():
            if name in RUN_SET_OPTIONS:
                continue
            entry = found.setdefault(name, {"kinds": set(), "defaults": [], "methods": [], "helps": {}})
            kind = _option_kind(parameter.annotation, parameter.default)
            entry["kinds"].add(kind if isinstance(kind, str) else (kind[0], tuple(kind[1])))
            entry["defaults"].append(parameter.default)
            entry["methods"].append(method)
            entry["helps"].setdefault(helps.get(name, ""), []).append(method)
    table = {}
    for name in sorted(found):
        entry = found[name]
        if len(entry["kinds"]) != 1:
            raise TypeError(f"model option {name} has different kinds in {entry['methods']}: {entry['kinds']}")
        kind = next(iter(entry["kinds"]))
        kind = kind if isinstance(kind, str) else ("enum", list(kind[1]))
        defaults = entry["defaults"]
        if name in QUICKSTART_MODEL_OPTIONS:
            default = QUICKSTART_MODEL_OPTIONS[name]
        elif all(d == defaults[0] for d in defaults):
            default = defaults[0]
        else:
            default = None  # the model's own
        if isinstance(default, list):
            default = tuple(default)
        texts = [(text, methods) for text, methods in entry["helps"].items() if text]
        if len(texts) == 1:
            help_text = texts[0][0]
        else:
            help_text = "; ".join(f"{', '.join(methods)}: {text.rstrip('.')}" for text, methods in texts) + "."
        table[name] = ModelOption(name, kind, default, tuple(entry["methods"]), help_text)
    return table


@dataclasses.dataclass
class _TrainFields(ModelDirConfig):
    _SIZE_FIELDS = ("ground_size", "aerial_size")  # a class attribute (no annotation), not a field
    # Model: the method; its options are the fields added below from the models' constructors.
    method: str = "cvm_net_i"
    # Data.
    dataset: str = "synthetic"
    root: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    holdout_fraction: float = 0.0
    preset: Optional[str] = None
    ground_size: Optional[tuple] = (64, 256)
    aerial_size: Optional[tuple] = (128, 128)
    aerial_polar: bool = False
    polar_stretch: bool = True  # SAFA's published polar maps were min-max stretched per image
    precomputed_polar: bool = False  # read `cvm data polar` maps (polarmap/) instead of transforming on the fly
    augment: str = "none"
    double_zero: bool = True
    rotation_impl: str = "warp_affine"
    fov_deg: float = 360.0
    azimuth_shift: bool = False
    fov_test_seed: int = 2019  # correlation methods (DSM): seed of the fixed shifted / cropped test set
    orientation_wrap: bool = True  # correlation methods: orientation error wraps around 0/360 degrees
    synthetic_pairs: int = 1000
    synthetic_seed: int = 0
    vigor_area: str = "same"  # VIGOR: same-area or cross-area protocol
    vigor_labels: str = "original"  # VIGOR: label version (cvm.data.vigor.LABELS)
    vigor_splits_dir: Optional[str] = None  # VIGOR: a folder of label lists instead of ROOT/splits*
    cache: bool = True
    # Batches (cvm.data.sampling): a seeded shuffle, or Sample4Geo's neighbour batches.
    sampler: str = "shuffle"
    neighbour_pool: int = 128  # Sample4Geo's neighbour_range
    neighbour_select: int = 64  # Sample4Geo's neighbour_select
    sampler_gps: bool = True  # neighbour batches from GPS neighbours until the first similarity table
    sampler_refresh_epochs: int = 4  # similarity table every N epochs (0: never)
    # Loss.
    alpha: float = 10.0
    include_diagonal: bool = True
    infonce_smoothing: float = 0.1  # InfoNCE methods (sample4geo): label smoothing eps
    mask_radius_m: Optional[float] = None
    mask_mode: str = "inside"
    # Optimisation.
    batch_size: int = 16
    lr: float = 1e-4
    epochs: int = 20
    steps_per_epoch: Optional[int] = None
    optimizer: str = "adam"  # adam: the classic methods' FusedAdam; adamw: Sample4Geo's (torch's AdamW)
    weight_decay: float = 0.01  # adamw only (torch's default, which Sample4Geo keeps)
    lr_schedule: str = "constant"  # or cosine: per-step decay to 0 at the last step (Sample4Geo)
    warmup_epochs: float = 0.0  # linear warm-up from 0 over this many epochs, before either schedule
    clip_grad_value: Optional[float] = None  # clip each gradient element to [-v, v] (Sample4Geo: 100)
    # Runtime.
    precision: str = "float32"
    # XLA or TF's kernels; None: the faster on this machine, timed on one batch before the first epoch
    # (cvm.training.jit_choice; MODEL_DIR/jit_choice.json). XLA was 1.37x on one 2-core CPU, slower on another.
    jit_compile: Optional[bool] = None
    strategy: str = "default"
    seed: int = 0
    model_dir: str = "runs/quickstart"
    checkpoint_every_steps: int = 0
    log_every_steps: int = 10
    keep_checkpoints: int = 3
    eval_every_epochs: int = 1
    eval_batch_size: int = 32
    best_metric: str = "r@1"
    deterministic: bool = False
    kill_after_steps: Optional[int] = None

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise CvmError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.batch_size < 2:
            raise CvmError(f"--batch_size must be at least 2 (the loss compares pairs within a batch), "
                           f"got {self.batch_size}")
        if self.epochs < 1:
            raise CvmError(f"--epochs must be at least 1, got {self.epochs}")
        if self.lr <= 0:
            raise CvmError(f"--lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise CvmError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.weight_decay >= 0:
            raise CvmError(f"--weight_decay must be >= 0, got {self.weight_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise CvmError(f"--lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise CvmError(f"--warmup_epochs must be in [0, --epochs={self.epochs}), got {self.warmup_epochs}")
        if self.clip_grad_value is not None and not self.clip_grad_value > 0:
            raise CvmError(f"--clip_grad_value must be positive (empty: no clipping), got {self.clip_grad_value}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise CvmError(f"--holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.augment not in ("none", "cvm_net", "joint", "sample4geo"):
            raise CvmError(f"--augment must be none, cvm_net, joint or sample4geo, got {self.augment!r}")
        if self.sampler not in SAMPLERS:
            raise CvmError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.sampler == "neighbours":
            if self.neighbour_pool < 1:
                raise CvmError(f"--neighbour_pool must be at least 1, got {self.neighbour_pool}")
            if not 0 <= self.neighbour_select <= self.neighbour_pool:
                raise CvmError(f"--neighbour_select must be in [0, --neighbour_pool={self.neighbour_pool}], got "
                               f"{self.neighbour_select}")
            if self.sampler_refresh_epochs < 0:
                raise CvmError(f"--sampler_refresh_epochs must be >= 0, got {self.sampler_refresh_epochs}")
            if self.sampler_refresh_epochs and self.correlation_method():
                raise CvmError(f"--sampler_refresh_epochs={self.sampler_refresh_epochs}: the similarity table ranks "
                               f"plain descriptors, and --method {self.method} matches by correlation; use "
                               "--sampler_refresh_epochs=0 (GPS neighbours only)")
        if self.mask_mode not in ("inside", "outside"):
            raise CvmError(f"--mask_mode must be inside or outside, got {self.mask_mode!r}")
        if self.precomputed_polar and self.dataset not in ("cvusa", "cvact"):
            raise CvmError(f"--precomputed_polar reads the polarmap/ folder `cvm data polar` writes for cvusa or "
                           f"cvact; --dataset {self.dataset} has none (use --aerial_polar to transform on the fly)")
        for name in self.model_options():
            kind, value = model_option_table()[name].kind, getattr(self, name)
            if isinstance(kind, tuple) and value is not None and value not in kind[1]:
                raise CvmError(f"--{name} must be one of {', '.join(kind[1])}, got {value!r}")
        self.image_spec()
        self.augment_spec()

    def model_options(self) -> tuple:
        """The model option fields that the method's model takes (from its constructor)."""
        from cvm.models import builder_options

        accepted = builder_options(self.method)
        return tuple(name for name in model_option_table() if name in accepted)

    def model_kwargs(self) -> dict:
        """The options to build the method's model with: those it takes, None meaning its own default."""
        return {name: getattr(self, name) for name in self.model_options() if getattr(self, name) is not None}

    def unused_fields(self) -> dict:
        """{field: why this run does not use it} for every field that has no effect on this run.

        A reason completes "--field has no effect: ...". The CLI refuses such a field given as a flag
        (cvm.flags.use) and a run's flags.cfg leaves these fields out.
        """
        unused = {}
        takes = self.model_options()
        for name in model_option_table():
            if name not in takes:
                unused[name] = f"the model of --method {self.method} has no {name} option"
        if self.optimizer != "adamw":
            unused["weight_decay"] = ("only --optimizer adamw decays the weights (decoupled, Loshchilov & Hutter "
                                      f"2019); --optimizer {self.optimizer} has no weight decay")
        if self.method in DUMP_METHODS:
            for name in IMAGE_DATA_FIELDS:
                unused.setdefault(name, f"--method {self.method} trains on descriptor dumps, not on images")
            return unused
        if self.dataset == "synthetic":
            unused["root"] = "--dataset synthetic is rendered in memory and reads no files"
        else:
            for name in ("synthetic_pairs", "synthetic_seed"):
                unused[name] = f"only --dataset synthetic uses it (this run: --dataset {self.dataset})"
        if self.dataset != "vigor":
            for name in VIGOR_FIELDS:
                unused[name] = f"only --dataset vigor uses it (this run: --dataset {self.dataset})"
        if self.holdout_fraction > 0:
            unused["val_split"] = (f"--holdout_fraction={self.holdout_fraction} validates on that part of "
                                   "--train_split instead")
        elif not self.val_split:
            for name in ("best_metric", "eval_every_epochs"):
                unused[name] = "the run has no validation (--val_split is empty and --holdout_fraction 0)"
        if self.infonce_method():
            for name in ("alpha", "include_diagonal", "mask_mode"):
                unused[name] = f"--method {self.method} trains with the symmetric InfoNCE, not the triplet loss"
        else:
            unused["infonce_smoothing"] = f"only InfoNCE methods (sample4geo) use it; --method {self.method} does not"
        if not self.correlation_method():
            for name in ("fov_test_seed", "orientation_wrap"):
                unused[name] = (f"only correlation methods (dsm) estimate orientation on the fixed test set; "
                                f"--method {self.method} does not")
        sampler_fields = ("neighbour_pool", "neighbour_select", "sampler_gps", "sampler_refresh_epochs")
        if self.method in ("regmi_joint", "regmi_fusion"):
            for name in ("sampler",) + sampler_fields:
                unused.setdefault(name, f"the Regmi stage --method {self.method} forms its own batches (three views "
                                        "or descriptor dumps)")
        elif self.sampler != "neighbours":
            for name in sampler_fields:
                unused[name] = f"only --sampler=neighbours uses it (this run: --sampler={self.sampler})"
        elif not self.sampler_refresh_epochs and not self.sampler_gps:
            for name in ("neighbour_pool", "neighbour_select"):
                unused[name] = ("--sampler=neighbours with --nosampler_gps and --sampler_refresh_epochs=0 has no "
                                "neighbour table")
        if self.mask_radius_m is None:
            unused["mask_mode"] = "there is no UTM mask without --mask_radius_m"
        if self.augment != "cvm_net":
            for name in ("double_zero", "rotation_impl"):
                unused[name] = f"only the aerial rotation of --augment=cvm_net uses it (this run: --augment={self.augment})"
        base = images.PRESETS.get(self.preset) if self.preset else images.ImageSpec()
        preset_polar = bool(base is not None and base.aerial_polar)
        if self.precomputed_polar:
            unused["aerial_polar"] = "--precomputed_polar reads polar maps from polarmap/; nothing is transformed"
            unused["polar_stretch"] = ("--precomputed_polar reads the maps as `cvm data polar` wrote them (its "
                                       "--stretch / --nostretch)")
        elif not self.aerial_polar and preset_polar:
            unused["aerial_polar"] = f"--preset={self.preset} polar-transforms the aerial in any case"
        elif not (self.aerial_polar or preset_polar):
            unused["polar_stretch"] = "the aerial is not polar-transformed (--aerial_polar, --preset=safa_polar)"
        return unused

    def split_options(self) -> dict:
        """Adapter options of the config (cvm.data.load_split **options)."""
        if self.dataset == "vigor":
            return {"area": self.vigor_area, "labels": self.vigor_labels, "splits_dir": self.vigor_splits_dir}
        return {"aerial": "polar"} if self.precomputed_polar else {}

    @classmethod
    def _check_loaded(cls, values: dict, model_dir: str) -> None:
        if is_synthesis_method(values.get("method")):
            raise CvmError(f"{model_dir} holds a synthesis GAN run ({values.get('method')}), not a retrieval model: "
                           f"use `cvm synthesize --model_dir {model_dir} ... --metrics` or `cvm eval-synthesis`")

    def image_spec(self) -> images.ImageSpec:
        """The preset's sizes, overridden by explicit --ground_size / --aerial_size / --aerial_polar."""
        base = images.preset(self.preset) if self.preset else images.ImageSpec()
        changes = {}
        if self.ground_size:
            changes["ground_size"] = tuple(int(v) for v in self.ground_size)
        if self.aerial_size:
            changes["aerial_size"] = tuple(int(v) for v in self.aerial_size)
        if self.aerial_polar:
            changes["aerial_polar"] = True
        if self.precomputed_polar:
            # The files are polar maps already (stretched or not as `cvm data polar` wrote them).
            changes["aerial_polar"] = False
        changes["polar_stretch"] = self.polar_stretch
        return dataclasses.replace(base, **changes)

    def augment_spec(self) -> augment_lib.AugmentSpec:
        recipe = {"none": {}, "cvm_net": {"zoom_crop": True, "rotation": "cvm_net"},
                  "joint": {"rotation": "joint", "joint_flip": 0.5},
                  # joint + Sample4Geo's per-view JPEG, colour jitter, blur/sharpen and dropout.
                  "sample4geo": {"rotation": "joint", "joint_flip": 0.5,
                                 **augment_lib.SAMPLE4GEO_PHOTOMETRIC}}[self.augment]
        return augment_lib.AugmentSpec(double_zero=self.double_zero, rotation_impl=self.rotation_impl,
                                       fov_deg=self.fov_deg, azimuth_shift=self.azimuth_shift, **recipe)

    def correlation_method(self) -> bool:
        """Whether the method matches by circular correlation and estimates orientation (DSM)."""
        from cvm.models import model_class

        return bool(getattr(model_class(self.method), "correlation", False))

    def infonce_method(self) -> bool:
        """Whether the method trains with the symmetric InfoNCE on its own logit scale (Sample4Geo)."""
        from cvm.models import model_class

        return bool(getattr(model_class(self.method), "infonce", False))

    def orientation_protocol(self) -> Optional[dict]:
        """DSM's evaluation protocol (cvm.evaluation.orientation_run) for correlation methods, else None."""
        if not self.correlation_method():
            return None
        return {"fov_deg": self.fov_deg, "seed": self.fov_test_seed, "wrap": self.orientation_wrap}

    def eval_augment_spec(self) -> Optional[augment_lib.AugmentSpec]:
        """Limited-FoV / orientation-unknown test sets (fixed by the seed), else None (also for correlation
        methods: they crop the whole panoramas by their own persisted test set, orientation_protocol)."""
        if (self.fov_deg >= 360.0 and not self.azimuth_shift) or self.correlation_method():
            return None
        return augment_lib.AugmentSpec(fov_deg=self.fov_deg, azimuth_shift=self.azimuth_shift)


def _train_config_class():
    """TrainConfig: _TrainFields plus one field per model option (model_option_table)."""
    fields = [(option.name, Optional[object], dataclasses.field(default=option.default))
              for option in model_option_table().values()]
    return dataclasses.make_dataclass(
        "TrainConfig", fields, bases=(_TrainFields,),
        namespace={"__module__": __name__, "__doc__": "Every setting of a retrieval run (see the module docstring); "
                   "the model options are the fields of model_option_table()."})


TrainConfig = _train_config_class()
_TrainFields._SIZE_FIELDS = ("ground_size", "aerial_size") + tuple(
    o.name for o in model_option_table().values() if o.kind == "size")
