"""The flags of a synthesis GAN run (`cvm train --method xfork|xseq|xpix2pix|xfork_pano2aerial|xfork_aerial2pano`).

absl defines every flag up-front, so `cvm train` carries both sets: the shared ones of
`cvm.flags.train` (method, dataset, root, model_dir, batch_size, lr, epochs, precision, seed, ...)
keep their meaning, and the synthesis-only ones are defined here. The shared flags' defaults are the
retrieval quickstart's, so a synthesis run takes a shared flag's value only when it was given
(`FLAGS[name].present`, which flagfiles set too) and SynthesisConfig's default otherwise.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from cvm.flags import table as flag_table, train as train_flags
from cvm.training.synthesis_config import SynthesisConfig

_DEFAULTS = SynthesisConfig()

# Synthesis-only fields -> (kind, help). kind: str, int, float, bool, size, ("enum", choices).
FIELDS = {
    "ngf": ("int", "Synthesis: width of the generator's first layer (64 in the papers)."),
    "ndf": ("int", "Synthesis: width of the discriminator's first layer (64)."),
    "d_layers": ("int", "Synthesis: PatchGAN depth (default: the method's; 3 = 70x70 patches for xfork/xseq/"
                        "xpix2pix, 4 = 142x142 for the ICCV19 forks). Small images need fewer."),
    "dropout": ("float", "Synthesis: dropout rate of the first three decoder layers (0.5)."),
    "edge_bias": ("bool", "Synthesis: biases on the convs not followed by BN (first conv, output convs). The "
                          "Torch originals zeroed every conv bias before each forward (default: none)."),
    "fix_fork_relu": ("bool", "Synthesis: add the ReLU that the ICCV19 forkG_cvusa lacks before its two heads "
                              "(default: keep the original)."),
    "direction": (("enum", ["a2g", "g2a"]), "Synthesis: a2g (aerial -> ground) or g2a (ground -> aerial); default: "
                                            "the method's (g2a for xfork_pano2aerial, else a2g)."),
    "input_size": ("size", "Synthesis: generator input 'height,width' (overrides the preset)."),
    "target_size": ("size", "Synthesis: generated image 'height,width' (overrides the preset)."),
    "load_size": ("size", "Synthesis: pix2pix scale-then-crop: scale every panel to 'height,width' first."),
    "crop_size": ("size", "Synthesis: ... then crop this 'height,width' (must equal --input_size/--target_size)."),
    "edge_map": ("bool", "Synthesis: append the Canny(50, 100) edge map of the input as a 4th channel (ICCV19)."),
    "homography": ("str", "Synthesis: pre-warp the aerial input with the homography of 4 point pairs (CVIU): 16 "
                          "numbers x1,y1,...,x4,y4 (source) then the destination's."),
    "homography_size": ("size", "Synthesis: 'height,width' of the frame the homography points refer to."),
    "lambda_l1": ("float", "Synthesis: weight of the image L1 loss (default: the method's, 100)."),
    "lambda_seg": ("float", "Synthesis: weight of the segmentation L1 loss (default: the method's: xfork 100, "
                            "xfork_pano2aerial 1, xfork_aerial2pano 10; X-Seq: G2's L1)."),
    "lambda_grads": ("float", "Synthesis: X-Seq weight of G2's input gradient fed back into G1 (0.1)."),
    "label_smoothing": ("float", "Synthesis: the BCE target of real samples (0.9: one-sided label smoothing, as the "
                                 "originals; 1.0: none)."),
    "beta1": ("float", "Synthesis: Adam beta1 (0.5)."),
    "split_file": ("str", "Synthesis, --dataset cvusa: the split list to read, relative to --root or absolute; "
                          "'{split}' in it stands for train / val. Default: for g2a with segmentation maps Regmi's "
                          "splits/{split}_xfork_cvusa.txt (aerial, panorama, aerial map: the target is column 3, "
                          "as train_xfork_pano2aerial.lua), else splits/train-19zl.csv / val-19zl.csv."),
    "aerial_seg_dir": ("str", "Synthesis, --dataset cvusa --direction g2a: read each aerial's segmentation map "
                              "from DIR/<aerial stem>.png (DIR relative to --root or absolute) instead of column 3 "
                              "of an X-Fork list; rows then come from the official CSVs (or --split_file)."),
    "inference_mode": ("bool", "Synthesis: generate (validation, best/, TensorBoard images, and `cvm synthesize`'s "
                               "default) with BatchNorm moving statistics and no dropout, as netG:evaluate(). "
                               "Default: the method's original: off for xfork / xseq / xpix2pix, whose test "
                               "scripts never call evaluate() (batch statistics, dropout on), on for the ICCV19 "
                               "forks."),
    "image_every_steps": ("int", "Synthesis: write input / generated / target / segmentation images to TensorBoard "
                                 "every N steps (0: never)."),
}

SHARED = tuple(f.name for f in dataclasses.fields(SynthesisConfig) if f.name not in FIELDS)
assert set(SHARED) <= set(train_flags.FIELDS), set(SHARED) - set(train_flags.FIELDS)
assert not set(FIELDS) & set(train_flags.FIELDS), "synthesis-only flags must not shadow shared ones"


def define_flags(flag_values=flags.FLAGS) -> None:
    """Define the synthesis-only flags (the shared ones come from train_flags.define_flags)."""
    flag_table.define_fields(FIELDS, _DEFAULTS, flag_values, __name__)


def _kind(name):
    return FIELDS[name][0] if name in FIELDS else train_flags.FIELDS[name][0]


def config_from_flags(flag_values) -> SynthesisConfig:
    """SynthesisConfig from parsed flags: synthesis flags always, shared flags only when given."""
    values = {}
    for field in dataclasses.fields(SynthesisConfig):
        name = field.name
        if name in SHARED and not flag_values[name].present:
            continue  # the synthesis default, not the retrieval quickstart's
        # An empty string is None for every field here (unlike train_flags, which keeps "" where the
        # retrieval default is a string).
        values[name] = flag_table.parse_value(_kind(name), getattr(flag_values, name), empty_is_none=True)
    return SynthesisConfig(**values)


def flagfile_text(config: SynthesisConfig) -> str:
    """The config as a flagfile (`cvm train --flagfile MODEL_DIR/flags.cfg` reruns it)."""
    # A None str/size field is written `--name=` only when it is shared: there it overrides the
    # retrieval default. None synthesis fields and None shared ints are the defaults: leaving them
    # out keeps them. Fields the run does not use are left out (given as flags they would be refused).
    unused = config.unused_fields()
    return flag_table.flagfile_text((field.name, _kind(field.name), getattr(config, field.name), field.name in SHARED)
                                    for field in dataclasses.fields(SynthesisConfig) if field.name not in unused)
