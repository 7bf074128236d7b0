"""What AWQ needs to know about one linear's input, gathered batch by batch over the calibration tokens
(so the activations of the whole calibration set are never held at once).

    mean_abs [in]          mean |x| per input channel over every token: AWQ's x_mean, the "salient
                           channels" signal that sets the per-channel scale
    gram     [in/g, g, g]  Σ_t x_g(t) x_g(t)ᵀ / n per quantization group g: with it the clip search gets
                           the exact mean squared output error of a group, E[(x_g·Δw_g)²] = Δw_g G_g Δw_gᵀ,
                           over every token, for the cost of a g×g product per weight group
    sample [≤ keep, in]    the first `keep` tokens as they are: the module inputs the scale search runs on

After a scale s is folded in (the linear now sees x / s), `scale_inputs(s)` rescales all three.
Array-module agnostic (NumPy or CuPy, whichever the activations are).
"""

from __future__ import annotations

from refengine.quant.primitives import array_module


class InputStats:
    def __init__(self, group_size: int, keep: int):
        self.group_size = group_size
        self.keep = keep
        self.count = 0
        self.abs_sum = None
        self.gram_sum = None
        self.parts: list = []        # kept rows, concatenated on first use of `sample`

    def add(self, x) -> None:
        """x [T, in]: one batch of this linear's inputs."""
        xp = array_module(x)
        x = x.astype(xp.float32, copy=False)
        n, width = x.shape
        g = self.group_size
        xg = x.reshape(n, width // g, g).transpose(1, 0, 2)                  # [in/g, T, g]
        gram = xg.transpose(0, 2, 1) @ xg                                    # [in/g, g, g]
        abs_sum = xp.abs(x).sum(axis=0, dtype=xp.float64)
        self.abs_sum = abs_sum if self.abs_sum is None else self.abs_sum + abs_sum
        self.gram_sum = gram if self.gram_sum is None else self.gram_sum + gram
        kept = sum(len(p) for p in self.parts)
        if kept < self.keep:
            self.parts.append(x[: self.keep - kept].copy())
        self.count += n

    @property
    def mean_abs(self):
        return (self.abs_sum / self.count).astype(array_module(self.abs_sum).float32)

    @property
    def gram(self):
        return self.gram_sum / self.count

    @property
    def sample(self):
        if len(self.parts) > 1:
            self.parts = [array_module(self.parts[0]).concatenate(self.parts)]
        return self.parts[0]

    def scale_inputs(self, s) -> None:
        """The linear's input became x / s (s [in] folded into the previous op)."""
        xp = array_module(s)
        g = self.group_size
        inv = (1.0 / s).astype(xp.float32)
        self.abs_sum = self.abs_sum * inv
        ig = inv.reshape(-1, g)                                              # [in/g, g]
        self.gram_sum = self.gram_sum * ig[:, :, None] * ig[:, None, :]
        self.parts = [self.sample * inv]
