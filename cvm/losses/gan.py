"""GAN losses of the cross-view synthesis models (pix2pix objective as the Torch X-Fork code computes it).

Isola et al. CVPR 2017 (https://arxiv.org/abs/1611.07004) Eq. 1-4; Regmi & Borji CVPR 2018
(https://arxiv.org/abs/1803.03396) Eq. 4-6; Regmi & Shah ICCV 2019 (https://arxiv.org/abs/1904.11045) Eq. 1.

The discriminators return logits; the original's Sigmoid + nn.BCECriterion is computed here from
the logits (the same values, without the overflow of log(sigmoid)). Every loss is float32 whatever
the compute dtype.

```python
d_loss = discriminator_loss(real_logits, generated_logits)        # BCE(real, 0.9) + BCE(fake, 0)
g_loss = generator_gan_loss(generated_logits) + 100.0 * l1_loss(generated, target)
```
"""

from __future__ import annotations

from keras import ops

REAL_LABEL = 0.9  # one-sided label smoothing of the originals (real_label = 0.9, generated_label = 0)
GENERATED_LABEL = 0.0


def binary_cross_entropy_with_logits(logits, label: float):
    """Mean over every patch and sample of -[t log s(x) + (1 - t) log(1 - s(x))] (nn.BCECriterion, sizeAverage)."""
    x = ops.cast(logits, "float32")
    # max(x, 0) - x t + log(1 + exp(-|x|)): the stable form of the binary cross entropy.
    return ops.mean(ops.relu(x) - x * label + ops.log1p(ops.exp(-ops.abs(x))))


def discriminator_loss(real_logits, generated_logits, real_label: float = REAL_LABEL, generated_label: float = GENERATED_LABEL):
    """D loss: BCE(D(real), real_label) + BCE(D(fake), generated_label), pix2pix Eq. 1.

    The sum is not halved: the Torch code prints (errD_real + errD_fake) / 2 but back-propagates both
    terms at full weight, so the gradient is that of the sum.
    """
    return (binary_cross_entropy_with_logits(real_logits, real_label)
            + binary_cross_entropy_with_logits(generated_logits, generated_label))


def generator_gan_loss(generated_logits, real_label: float = REAL_LABEL):
    """G adversarial term: BCE(D(G(x)), real_label) (the non-saturating loss, with the smoothed label)."""
    return binary_cross_entropy_with_logits(generated_logits, real_label)


def l1_loss(prediction, target):
    """Mean absolute error (nn.AbsCriterion, sizeAverage), pix2pix Eq. 3."""
    return ops.mean(ops.abs(ops.cast(prediction, "float32") - ops.cast(target, "float32")))
