"""A PyTorch restatement of the Torch7 synthesis networks, written from the Lua layer lists (test helper).

Sources, read layer by layer: `models.lua` of kregmi/cross-view-image-synthesis (`defineG_encoder_decoder`:
X-Pix2pix and both X-Seq generators; `defineG_encoder_decoder_fork`: X-Fork; `defineD_n_layers` with
n_layers 3 via `defineD_basic`) and of kregmi/cross-view-image-matching/xview-synthesis
(`defineG_encoder_decoder_fork_cvusa`: pano -> aerial, `defineG_encoder_decoder_fork_a2p`: aerial -> pano,
`defineD_basic` = n_layers 4). Every node keeps the Lua name (e1 ... e8, d1 ... d8, d7_1 / d8_2 for the
fork) and the Lua layer order inside it, including the repeated ReLUs of the ICCV19 forks (idempotent, kept
as written). Layers map one to one:

  nn.SpatialConvolution(i, o, 4, 4, 2, 2, 1, 1)     -> torch.nn.Conv2d(i, o, 4, 2, 1)
  nn.SpatialFullConvolution(i, o, 4, 4, 2, 2, 1, 1) -> torch.nn.ConvTranspose2d(i, o, 4, 2, 1)
  nn.SpatialBatchNormalization(c)                    -> torch.nn.BatchNorm2d(c) (eps 1e-5, momentum 0.1)
  nn.LeakyReLU(0.2, true) / nn.ReLU / nn.Tanh / nn.Sigmoid -> the same
  nn.Dropout(0.5)                                    -> `MaskedDropout`: training mode multiplies by a mask
                                                        the test sets (values 0 or 1 / (1 - p), Torch's
                                                        scaling), evaluation mode is the identity
  nn.Reshape(C, h, w, true)                          -> x.reshape(B, C, h, w) of the NCHW tensor

Conv biases exist (as in Torch) and stay 0: the training scripts zero every conv bias before each
forward (`m.bias:zero()` in fDx / fGx). The networks are written for the Lua input sizes (256x256 for
the CVPR 2018 ones; 256x1024 panoramas and 512x512 aerials for ICCV 2019); only the widths (ngf, ndf)
are free, so a test can run them at the originals' sizes with small widths.
"""

from __future__ import annotations

import torch
from torch import nn


def conv(cin, cout):
    return nn.Conv2d(cin, cout, 4, 2, 1)


def deconv(cin, cout):
    return nn.ConvTranspose2d(cin, cout, 4, 2, 1)


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


def lrelu():
    return nn.LeakyReLU(0.2)


class MaskedDropout(nn.Module):
    """nn.Dropout(p) with the noise given: `mask` (NCHW, values 0 or 1 / (1 - p)) in training, identity else."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = p
        self.mask = None

    def forward(self, x):
        if not self.training:
            return x
        if self.mask is None:
            raise RuntimeError("MaskedDropout in training mode needs a mask")
        return x * self.mask


class Reshape(nn.Module):
    """nn.Reshape(C, h, w, true): the batch kept, each sample's NCHW memory read as C x h x w."""

    def __init__(self, *shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


class Graph(nn.Module):
    """An nngraph gModule: named nodes, each an nn.Sequential, wired by `edges` (node -> its input node)."""

    def __init__(self, nodes: dict, edges: dict, outputs: tuple):
        super().__init__()
        self.nodes = nn.ModuleDict({name: nn.Sequential(*layers) for name, layers in nodes.items()})
        self.edges = edges
        self.outputs = outputs

    def forward(self, x):
        values = {None: x}
        for name in self.nodes:  # insertion order is a topological order here
            values[name] = self.nodes[name](values[self.edges[name]])
        out = tuple(values[name] for name in self.outputs)
        return out if len(out) > 1 else out[0]

    def dropouts(self):
        return {name: m for name, node in self.nodes.items() for m in node if isinstance(m, MaskedDropout)}


def _chain(names):
    return {name: (names[i - 1] if i else None) for i, name in enumerate(names)}


def _cvpr18_encoder(input_nc, ngf):
    """e1 ... e8 of defineG_encoder_decoder / _fork: 256 -> 1."""
    widths = [ngf, ngf * 2, ngf * 4, ngf * 8, ngf * 8, ngf * 8, ngf * 8, ngf * 8]
    nodes = {"e1": [conv(input_nc, ngf)]}
    for i in range(1, 8):
        nodes[f"e{i + 1}"] = [lrelu(), conv(widths[i - 1], widths[i]), bn(widths[i])]
    return nodes


def define_g_encoder_decoder(input_nc, output_nc, ngf):
    """defineG_encoder_decoder (CVPR18 cross-view-image-synthesis/models.lua), 256x256 -> 256x256."""
    nodes = _cvpr18_encoder(input_nc, ngf)
    nodes["d1"] = [nn.ReLU(), deconv(ngf * 8, ngf * 8), bn(ngf * 8), MaskedDropout(0.5)]
    nodes["d2"] = [nn.ReLU(), deconv(ngf * 8, ngf * 8), bn(ngf * 8), MaskedDropout(0.5)]
    nodes["d3"] = [nn.ReLU(), deconv(ngf * 8, ngf * 8), bn(ngf * 8), MaskedDropout(0.5)]
    nodes["d4"] = [nn.ReLU(), deconv(ngf * 8, ngf * 8), bn(ngf * 8)]
    nodes["d5"] = [nn.ReLU(), deconv(ngf * 8, ngf * 4), bn(ngf * 4)]
    nodes["d6"] = [nn.ReLU(), deconv(ngf * 4, ngf * 2), bn(ngf * 2)]
    nodes["d7"] = [nn.ReLU(), deconv(ngf * 2, ngf), bn(ngf)]
    nodes["d8"] = [nn.ReLU(), deconv(ngf, output_nc)]
    nodes["o1"] = [nn.Tanh()]
    return Graph(nodes, _chain(list(nodes)), ("o1",))


def define_g_encoder_decoder_fork(input_nc, output_nc_seg, output_nc, ngf):
    """defineG_encoder_decoder_fork (X-Fork): d6 ends with a ReLU; d7_1/d8_1 -> o1 (image), d7_2/d8_2 -> o2 (seg)."""
    nodes = _cvpr18_encoder(input_nc, ngf)
    nodes["d1"] = [nn.ReLU(), deconv(ngf * 8, ngf * 8), bn(ngf * 8), MaskedDropout(0.5)]
    nodes["d2"] = [nn.ReLU(), deconv(ngf * 8, ngf * 8), bn(ngf * 8), MaskedDropout(0.5)]
    nodes["d3"] = [nn.ReLU(), deconv(ngf * 8, ngf * 8), bn(ngf * 8), MaskedDropout(0.5)]
    nodes["d4"] = [nn.ReLU(), deconv(ngf * 8, ngf * 8), bn(ngf * 8)]
    nodes["d5"] = [nn.ReLU(), deconv(ngf * 8, ngf * 4), bn(ngf * 4)]
    nodes["d6"] = [nn.ReLU(), deconv(ngf * 4, ngf * 2), bn(ngf * 2), nn.ReLU()]
    edges = _chain(list(nodes))
    nodes.update(d7_1=[deconv(ngf * 2, ngf), bn(ngf)], d7_2=[deconv(ngf * 2, ngf), bn(ngf)],
                 d8_1=[nn.ReLU(), deconv(ngf, output_nc)], d8_2=[nn.ReLU(), deconv(ngf, output_nc_seg)],
                 o1=[nn.Tanh()], o2=[nn.Tanh()])
    edges.update(d7_1="d6", d7_2="d6", d8_1="d7_1", d8_2="d7_2", o1="d8_1", o2="d8_2")
    return Graph(nodes, edges, ("o1", "o2"))


def _iccv19_fork(input_nc, output_nc_seg, output_nc, ngf, reshape):
    """defineG_encoder_decoder_fork_cvusa (reshape (4, 4)) / _fork_a2p (reshape (2, 8)): 7 down, the ReLU and
    per-channel reshape as e8, 5 shared up (d3 ends with a ReLU, d4 starts with another), then d7_x with no
    ReLU before them, d8_x."""
    widths = [ngf, ngf * 2, ngf * 4, ngf * 8, ngf * 8, ngf * 8, ngf * 8]
    nodes = {"e1": [conv(input_nc, ngf)]}
    for i in range(1, 7):
        nodes[f"e{i + 1}"] = [lrelu(), conv(widths[i - 1], widths[i]), bn(widths[i])]
    nodes["e8"] = [nn.ReLU(), Reshape(ngf * 8, *reshape)]
    nodes["d1"] = [deconv(ngf * 8, ngf * 8), bn(ngf * 8), MaskedDropout(0.5)]
    nodes["d2"] = [nn.ReLU(), deconv(ngf * 8, ngf * 8), bn(ngf * 8), MaskedDropout(0.5)]
    nodes["d3"] = [nn.ReLU(), deconv(ngf * 8, ngf * 8), bn(ngf * 8), MaskedDropout(0.5), nn.ReLU()]
    nodes["d4"] = [nn.ReLU(), deconv(ngf * 8, ngf * 4), bn(ngf * 4)]
    nodes["d5"] = [nn.ReLU(), deconv(ngf * 4, ngf * 2), bn(ngf * 2)]
    edges = _chain(list(nodes))
    nodes.update(d7_1=[deconv(ngf * 2, ngf), bn(ngf)], d7_2=[deconv(ngf * 2, ngf), bn(ngf)],
                 d8_1=[nn.ReLU(), deconv(ngf, output_nc)], d8_2=[nn.ReLU(), deconv(ngf, output_nc_seg)],
                 o1=[nn.Tanh()], o2=[nn.Tanh()])
    edges.update(d7_1="d5", d7_2="d5", d8_1="d7_1", d8_2="d7_2", o1="d8_1", o2="d8_2")
    return Graph(nodes, edges, ("o1", "o2"))


def define_g_encoder_decoder_fork_cvusa(input_nc, output_nc_seg, output_nc, ngf):
    """forkG_cvusa: 256x1024 panorama -> 2x8 bottleneck, reshaped to 4x4 -> 512x512 aerial and segmentation."""
    return _iccv19_fork(input_nc, output_nc_seg, output_nc, ngf, (4, 4))


def define_g_encoder_decoder_fork_a2p(input_nc, output_nc_seg, output_nc, ngf):
    """forkG of train_xfork_aerial2pano.lua: 512x512 aerial -> 4x4, reshaped to 2x8 -> 256x1024 panorama."""
    return _iccv19_fork(input_nc, output_nc_seg, output_nc, ngf, (2, 8))


class Sequential(nn.Sequential):
    """nn.Sequential whose `logits` is the output before the final Sigmoid (cvm's D returns logits)."""

    def logits(self, x):
        for layer in list(self)[:-1]:
            x = layer(x)
        return x


def define_d_n_layers(input_nc, output_nc, ndf, n_layers):
    """defineD_n_layers (n_layers >= 1): the conditional D gets input_nc + output_nc channels."""
    layers = [nn.Conv2d(input_nc + output_nc, ndf, 4, 2, 1), lrelu()]
    mult = 1
    for n in range(1, n_layers):
        prev, mult = mult, min(2 ** n, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1), bn(ndf * mult), lrelu()]
    prev, mult = mult, min(2 ** n_layers, 8)
    layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), bn(ndf * mult), lrelu()]
    layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1), nn.Sigmoid()]
    return Sequential(*layers)


def zero_biases(model: nn.Module) -> None:
    """What fDx / fGx do before each forward: every (full) convolution's bias to 0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
                m.bias.zero_()
