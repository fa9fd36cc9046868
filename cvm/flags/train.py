"""The flags of a retrieval run, one per TrainConfig field (shared by `cvm train` and `cvm eval`)."""

from __future__ import annotations

import dataclasses

from absl import flags

from cvm.flags import table as flag_table
from cvm.data import registry
from cvm.training.config import TrainConfig, model_option_table

_DEFAULTS = TrainConfig()

# field -> (kind, help). kind: str, int, float, bool, size (H,W), or ("enum", choices). The model options'
# entries come from the models' constructors and docstrings (cvm.training.config.model_option_table).
RUN_FIELDS = {
    "method": ("str", "Retrieval method (cvm.models registry): cvm_net_i, cvm_net_ii, cvft, cvft_vgg_conv, cvft_vgg_gp, safa, regmi_two_stream, ...; "
                      "or a synthesis GAN: xfork, xseq, xpix2pix, xfork_pano2aerial, xfork_aerial2pano."),
    "dataset": (("enum", [n for n in registry.names() if n in registry.names("retrieval") + registry.names("synthesis")]),
                "Dataset (synthetic = the embedded world; dayton: synthesis methods only)."),
    "root": ("str", "Dataset root folder (not used by the synthetic world)."),
    "train_split": ("str", "Training split name."),
    "val_split": ("str", "Validation split used for model selection (CVUSA 'val' is the papers' test set, "
                         "as the originals did); empty: no validation."),
    "holdout_fraction": ("float", "If > 0, validate on this seeded fraction of the training split instead of "
                                  "--val_split (proper model selection)."),
    "preset": ("str", "Image size preset: cvm_net, regmi, cvft, safa, safa_polar, small; synthesis methods: "
                      "borji256, borji64, pano2aerial, pano2aerial_edges, pano2aerial_small, aerial2pano, "
                      "aerial2pano_small (cvm.data.synthesis.SYNTHESIS_PRESETS)."),
    "ground_size": ("size", "Ground input 'height,width' (overrides the preset)."),
    "aerial_size": ("size", "Aerial input 'height,width' (overrides the preset)."),
    "aerial_polar": ("bool", "Polar-transform the aerial image (SAFA)."),
    "polar_stretch": ("bool", "With --aerial_polar: min-max stretch each polar map to 0..255 as SAFA's published maps "
                              "(scipy.misc.imsave); --nopolar_stretch keeps the interpolated values."),
    "precomputed_polar": ("bool", "Read the polar maps `cvm data polar` wrote (ROOT/polarmap/) instead of transforming "
                                  "the aerial on the fly (cvusa, cvact); the aerial size is then the polar map's."),
    "augment": (("enum", ["none", "cvm_net", "joint", "sample4geo"]),
                "Training augmentation: cvm_net (zoom-crop + aerial rotation, CVM-Net/Regmi), joint (aerial "
                "rot90 + panorama roll and joint flip, Sample4Geo), sample4geo (joint + per-view JPEG, colour "
                "jitter, blur/sharpen and grid/coarse dropout, as Sample4Geo's training), none."),
    "double_zero": ("bool", "Keep CVM-Net's randint(0, 4) rotation draw in which 0 degrees comes twice as often."),
    "rotation_impl": (("enum", ["warp_affine", "exact"]), "CVM-Net rotation: warp_affine (as the original, 1-px "
                                                        "shift) or exact (np.rot90)."),
    "fov_deg": ("float", "Ground field of view in degrees (360 = full panorama; less = limited-FoV crops, in "
                         "training and in a seeded test set)."),
    "azimuth_shift": ("bool", "Random panorama azimuth (orientation unknown), in training and a seeded test set."),
    "fov_test_seed": ("int", "Correlation methods (dsm): seed of the fixed shifted / cropped test set, written beside "
                             "the results (the original: np.random.seed(2019))."),
    "orientation_wrap": ("bool", "Correlation methods (dsm): the orientation error wraps around 0/360 degrees; "
                                 "--noorientation_wrap gives the original's plain bin difference."),
    "synthetic_pairs": ("int", "Synthetic world: number of pairs (train + val)."),
    "synthetic_seed": ("int", "Synthetic world: seed of the world and its locations."),
    "vigor_area": (("enum", ["same", "cross"]), "VIGOR: same-area (train and test on all four cities) or cross-area "
                                               "(train New York + Seattle, test San Francisco + Chicago)."),
    "vigor_labels": (("enum", ["original", "corrected", "mercator"]),
                     "VIGOR: label version: original (as released), corrected (SliceMatch's splits__corrected/) or "
                     "mercator (offsets recomputed from the GPS, as HC-Net); recorded in every results JSON."),
    "vigor_splits_dir": ("str", "VIGOR: a folder holding <City>/<list> files of the chosen label version, instead of "
                                "ROOT/splits (or ROOT/splits__corrected)."),
    "cache": ("bool", "Keep decoded images in memory after their first read."),
    "sampler": (("enum", ["shuffle", "neighbours"]),
                "How training batches are formed (cvm.data.sampling): shuffle (a seeded permutation per epoch) or "
                "neighbours (Sample4Geo: each batch grown from anchors and their GPS, then similarity, neighbours; "
                "every aerial tile once per batch)."),
    "neighbour_pool": ("int", "--sampler=neighbours: neighbours kept per pair in the table (Sample4Geo's "
                              "neighbour_range, 128)."),
    "neighbour_select": ("int", "--sampler=neighbours: neighbours an anchor brings into its batch: the nearest half "
                                "plus a random half of the rest of its pool (Sample4Geo's neighbour_select, 64)."),
    "sampler_gps": ("bool", "--sampler=neighbours: grow batches from GPS neighbours (the split's coordinates: CVACT "
                            "UTM, VIGOR lat/lon, CVUSA's split_locations/all.csv, the synthetic world's metres) until "
                            "the first similarity table; --nosampler_gps: shuffled anchors until then."),
    "sampler_refresh_epochs": ("int", "--sampler=neighbours: recompute the similarity neighbours from a full "
                                      "embedding pass of the training split every N epochs (Sample4Geo: 4, after "
                                      "each evaluation); 0: never. Tables are kept in MODEL_DIR/sampler/."),
    "alpha": ("float", "Weight alpha of the soft-margin triplet loss (10 in the papers)."),
    "include_diagonal": ("bool", "Include the positive pairs in the loss sums, as the original (a constant "
                                 "log(2)/(B-1) offset)."),
    "infonce_smoothing": ("float", "InfoNCE methods (sample4geo): label smoothing eps of both cross-entropies (0.1 "
                                   "in Sample4Geo; the GANs' --label_smoothing is the BCE's real label instead)."),
    "mask_radius_m": ("float", "CVACT: exclude negatives closer than this many metres (25 in CVFT/SAFA); empty: "
                               "no mask."),
    "mask_mode": (("enum", ["inside", "outside"]), "Where the UTM mask applies: inside the softplus (original) or "
                                                   "outside."),
    "batch_size": ("int", "Global batch size (split across replicas)."),
    "lr": ("float", "Learning rate (with --lr_schedule / --warmup_epochs: the peak rate). It goes with the global "
                    "--batch_size (all replicas together): Sample4Geo's 1e-3 is for batch 128; for another global "
                    "batch B scale it linearly, 1e-3 * B / 128 (Goyal et al. 2017's linear scaling rule)."),
    "epochs": ("int", "Number of epochs."),
    "steps_per_epoch": ("int", "Cap on the steps of an epoch (default: the whole training split)."),
    "optimizer": (("enum", ["adam", "adamw"]),
                  "adam: Adam on TF's fused kernel with TF1's epsilon (the classic methods); adamw: torch's AdamW "
                  "(Loshchilov & Hutter 2019: decoupled weight decay, --weight_decay; Sample4Geo)."),
    "weight_decay": ("float", "--optimizer adamw: decoupled weight decay, each step w -= lr * weight_decay * w with "
                              "the step's scheduled lr, on every trainable weight (torch's default 0.01, as "
                              "Sample4Geo)."),
    "lr_schedule": (("enum", ["constant", "cosine"]),
                    "Learning rate per step after the warm-up: constant (--lr), or cosine decay from --lr to 0 at the "
                    "last step of --epochs (transformers' get_cosine_schedule_with_warmup, as Sample4Geo). A resume "
                    "with another --epochs stretches the cosine from there on."),
    "warmup_epochs": ("float", "Linear warm-up from 0 to --lr over this many epochs (fractions allowed; step t runs "
                               "at lr * t / warmup steps, the first step at 0 as Sample4Geo's), before either "
                               "--lr_schedule; 0: none. Sample4Geo: 1 with cosine."),
    "clip_grad_value": ("float", "Clip each gradient element to [-v, v] (torch's clip_grad_value_; Sample4Geo: 100), "
                                 "on the gradient summed over the replicas and unscaled (mixed_float16); empty: no "
                                 "clipping."),
    "precision": (("enum", ["float32", "mixed_float16", "mixed_bfloat16"]), "Keras dtype policy; the loss is "
                                                                            "always float32."),
    "jit_compile": ("bool", "--jit_compile: XLA-compile the training step; --nojit_compile: TF's kernels one by "
                            "one. Neither (the default): time both on one training batch before the first epoch "
                            "(a few steps each; the training state is restored) and use the faster on this machine, "
                            "recorded in MODEL_DIR/jit_choice.json, which a resumed run reuses (TF's kernels under "
                            "--strategy multi_worker with several workers)."),
    "strategy": (("enum", ["default", "mirrored", "multi_worker"]), "tf.distribute strategy."),
    "seed": ("int", "Seed of initialisation, data order, augmentation and dropout."),
    "model_dir": ("str", "Run folder: config, checkpoints, best model, TensorBoard logs, results."),
    "checkpoint_every_steps": ("int", "Also checkpoint every N steps (0: at the end of each epoch only)."),
    "log_every_steps": ("int", "Read the loss back from the device (progress bar, TensorBoard, NaN check) every N "
                               "steps; the steps in between run without any host round trip."),
    "keep_checkpoints": ("int", "How many recent checkpoints to keep."),
    "eval_every_epochs": ("int", "Validate every N epochs."),
    "eval_batch_size": ("int", "Batch size of validation and evaluation."),
    "best_metric": ("str", "Validation metric that selects the best model (r@1, r@5, r@10, r@1%_floor, "
                           "r@1%_floor_plus_1)."),
    "deterministic": ("bool", "tf.config.experimental.enable_op_determinism(): bit-identical reruns (slower)."),
    "kill_after_steps": ("int", "Testing aid: SIGKILL this process right after global step N (to test resumption)."),
}

MODEL_FIELDS = {name: (option.kind, option.help if len(option.methods) > 1 and ": " in option.help.split(";")[0]
                        else option.help[:1].upper() + option.help[1:])
                for name, option in model_option_table().items()}
FIELDS = {"method": RUN_FIELDS["method"], **MODEL_FIELDS, **{k: v for k, v in RUN_FIELDS.items() if k != "method"}}

assert set(FIELDS) == {f.name for f in dataclasses.fields(TrainConfig)}, "every TrainConfig field needs a flag"


# What a None default means, for the fields where it is not "none" (absl prints no default for a None bool).
_NONE_DEFAULT_TEXT = {"jit_compile": "measured (see above)"}


def _default_text(value, name: str = "") -> str:
    if value is None:
        return _NONE_DEFAULT_TEXT.get(name, "none")
    return flag_table.size_text(value) if isinstance(value, tuple) else str(value)


def help_texts() -> dict:
    """FIELDS' help, completed with what each method family gets.

    A flag shared with the synthesis GANs whose default differs there says both defaults (absl's
    "(default: ...)" is the retrieval one); a retrieval-only flag says so, and a model option names the
    methods whose builders take it (cvm.models.builder_options).
    """
    from cvm.synthesis.methods import SYNTHESIS_METHODS
    from cvm.training.synthesis_config import SynthesisConfig

    synthesis = {f.name: f.default for f in dataclasses.fields(SynthesisConfig)}
    texts = {}
    for name, (_, text) in FIELDS.items():
        if name == "method":
            texts[name] = text
        elif name in synthesis:
            retrieval, other = getattr(_DEFAULTS, name), synthesis[name]
            if other is None and any(name in m.defaults for m in SYNTHESIS_METHODS.values()):
                per_method = []
                for method in SYNTHESIS_METHODS:
                    value = getattr(SynthesisConfig(method=method).resolved(), name)
                    edges = getattr(SynthesisConfig(method=method, edge_map=True).resolved(), name)
                    extra = f" ({_default_text(edges)} with --edge_map)" if edges != value else ""
                    per_method.append(f"{method} {_default_text(value)}{extra}")
                other_text = "the method's: " + ", ".join(per_method)
            else:
                other_text = _default_text(other)
            if other_text != _default_text(retrieval):
                text = (f"{text} Default: {_default_text(retrieval, name)} for retrieval methods; synthesis "
                        f"methods: {other_text}.")
            texts[name] = text
        else:
            if name in MODEL_FIELDS:
                option = model_option_table()[name]
                text = f"{text} (methods: {', '.join(option.methods)})"
                if option.default is None and name != "weights":
                    text = f"{text} Default: the method's own."
            texts[name] = f"Retrieval: {text}"
    return texts


def define_flags(flag_values=flags.FLAGS) -> None:
    """Define one absl flag per TrainConfig field, defaulting to the quickstart."""
    texts = help_texts()
    fields = {name: (kind, texts[name]) for name, (kind, _) in FIELDS.items()}
    flag_table.define_fields(fields, _DEFAULTS, flag_values, __name__)


def config_from_flags(flag_values) -> TrainConfig:
    # "" means None only for the fields whose default is None (e.g. --weights= : random init).
    return TrainConfig(**{name: flag_table.parse_value(kind, getattr(flag_values, name),
                                                       empty_is_none=getattr(_DEFAULTS, name) is None)
                          for name, (kind, _) in FIELDS.items()})


def flagfile_text(config: TrainConfig) -> str:
    """The config as a flagfile (`cvm train --flagfile model_dir/flags.cfg` reruns it)."""
    # None str/size fields are written `--name=`; None ints/floats are the defaults (no cap, no
    # mask), so leaving them out keeps them. Fields the run does not use are left out: given as
    # flags they would be refused (cvm.flags.use), and their defaults are what the run holds.
    unused = config.unused_fields()
    return flag_table.flagfile_text((name, kind, getattr(config, name), True)
                                    for name, (kind, _) in FIELDS.items() if name not in unused)
