"""Import timm for the PyTorch-parity tests even where torchvision's compiled ops do not load.

timm imports torchvision at import time (transforms, datasets, `ops.misc.FrozenBatchNorm2d`). A torchvision
wheel built for another torch (this venv: torchvision 0.28.0+cu130 beside torch 2.13.0+cpu) cannot load its C
extension, and its `torchvision._meta_registrations` then fails with "operator torchvision::nms does not
exist". In that case only, that one module (fake-tensor kernels for the compiled detection ops: nms,
roi_align, ...) is replaced by an empty one; the pure-Python rest of torchvision imports normally. timm's
ConvNeXt uses no torchvision op, so the parity tests still compare against timm's own, untouched code.
"""

import sys
import types


def import_timm_convnext():
    """timm.models.convnext, or pytest.skip when torch / timm are not installed."""
    import pytest

    pytest.importorskip("torch")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    except RuntimeError:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401,F811
    return pytest.importorskip("timm.models.convnext")


def randomised_timm_convnext(depths, dims, seed=0):
    """A timm ConvNeXt (convnext_base layout: Linear MLP) with every tensor drawn, in eval mode.

    timm's init leaves gamma = 1e-6 (every block ~identity) and small weights; here conv / linear weights are
    unit-gain, gamma in [0.5, 1], LayerNorm weights 1 +- 0.2, biases 0.1 N(0, 1), so that every layer shows
    in the output (a tanh GELU instead of the exact one moves unit descriptors by ~4e-5).
    """
    import math

    import torch

    timm_convnext = import_timm_convnext()
    torch.manual_seed(seed)
    model = timm_convnext.ConvNeXt(depths=depths, dims=dims, num_classes=0).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.5 * torch.rand_like(p))
            elif p.ndim >= 2:
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):  # every LayerNorm (stem.1, downsample.0, blocks' norm, head.norm)
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model
