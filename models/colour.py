"""Colour spaces: the one place that converts between sRGB, gray and CIE L*a*b*.

Conventions (used by every model, the trainer and the evaluator):
- RGB is sRGB in [0, 1], channels on axis -3 (e.g. (B, 3, H, W)).
- L*a*b* is CIE 1976 under illuminant D65 with the 2-degree observer, exactly as
  `skimage.color.rgb2lab` / `lab2rgb` compute it (same matrices, thresholds and
  clipping), so L is in [0, 100] and a, b roughly in [-110, 110].
- Networks see values in [-1, 1]. The normalisation is the reference colorization
  mode's: L/50 - 1 and ab/110 for Lab, 2x - 1 for RGB and gray.

Everything here is plain torch: batched, differentiable, on any device. Work is done
in float32 at least; results come back in the input's floating dtype.

`ColourSpace` maps the trainer's data (gray in [0, 1], RGB in [0, 1]) to the
tensors a model's networks work on and back, for `color_space: rgb | lab`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

ColourSpaceName = Literal["rgb", "lab"]
Luma = Literal["rec601", "rec709"]

# Luma weights Y = wR R + wG G + wB B on gamma-encoded values (ITU-R BT.601 / BT.709).
LUMA_WEIGHTS: dict[str, tuple[float, float, float]] = {
    "rec601": (0.299, 0.587, 0.114),
    "rec709": (0.2126, 0.7152, 0.0722),
}

# sRGB primaries -> CIE XYZ (the matrix skimage uses), and its inverse.
_XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_D65_WHITE = (0.95047, 1.0, 1.08883)  # 2-degree observer

# CIE L*a*b* companding constants (as in skimage).
_LAB_EPS = 0.008856
_LAB_KAPPA_SLOPE = 7.787
_LAB_OFFSET = 16.0 / 116.0
_LAB_INV_EPS = 0.2068966

# Network-side normalisation (reference colorization mode).
L_SCALE = 50.0
AB_SCALE = 110.0


def _work(x: torch.Tensor) -> torch.Tensor:
    """x as a floating tensor of at least float32 precision."""
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def _back(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return y.to(like.dtype) if like.is_floating_point() else y


def _mix(matrix: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 matrix on the channel axis (-3)."""
    m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,...jhw->...ihw", m, x)


def _check_channels(x: torch.Tensor, n: int, what: str) -> None:
    if x.dim() < 3 or x.shape[-3] != n:
        raise ValueError(
            f"{what} needs {n} channels on axis -3 (shape (..., {n}, H, W)); got {tuple(x.shape)}"
        )


# --------------------------------------------------------------------------- sRGB
def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    """Undo the sRGB transfer curve (values in [0, 1])."""
    c = _work(c)
    # clamp inside the power branch so its (unused) gradient stays finite
    high = ((c.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4
    return torch.where(c > 0.04045, high, c / 12.92)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    c = _work(c)
    high = 1.055 * c.clamp(min=0.0031308) ** (1 / 2.4) - 0.055
    return torch.where(c > 0.0031308, high, c * 12.92)


# --------------------------------------------------------------------------- Lab
def _lab_f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _LAB_EPS, t.clamp(min=_LAB_EPS) ** (1 / 3), _LAB_KAPPA_SLOPE * t + _LAB_OFFSET)


def _lab_f_inverse(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _LAB_INV_EPS, t**3, (t - _LAB_OFFSET) / _LAB_KAPPA_SLOPE)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], (..., 3, H, W) -> CIE L*a*b* (D65), L in [0, 100]."""
    _check_channels(rgb, 3, "rgb_to_lab")
    x = _work(rgb)
    xyz = _mix(_XYZ_FROM_RGB, srgb_to_linear(x))
    white = torch.tensor(_D65_WHITE, dtype=x.dtype, device=x.device).view(3, 1, 1)
    f = _lab_f(xyz / white)
    fx, fy, fz = f.unbind(-3)
    lab = torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)
    return _back(lab, rgb)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) -> sRGB in [0, 1] (out-of-gamut values clipped, as skimage does)."""
    _check_channels(lab, 3, "lab_to_rgb")
    x = _work(lab)
    light, a, b = x.unbind(-3)
    fy = (light + 16.0) / 116.0
    fx = a / 500.0 + fy
    fz = (fy - b / 200.0).clamp(min=0.0)  # skimage clips negative z to zero
    white = torch.tensor(_D65_WHITE, dtype=x.dtype, device=x.device).view(3, 1, 1)
    xyz = _lab_f_inverse(torch.stack([fx, fy, fz], dim=-3)) * white
    rgb = linear_to_srgb(_mix(_RGB_FROM_XYZ, xyz)).clamp(0.0, 1.0)
    return _back(rgb, lab)


def gray_to_lightness(gray: torch.Tensor) -> torch.Tensor:
    """Gray (gamma-encoded, [0, 1], (..., 1, H, W)) -> L* of the neutral colour (g, g, g).

    Equal to `rgb_to_lab(gray.expand(3))[..., :1, :, :]` (the rows of the XYZ matrix
    sum to Y = 1 for neutral colours) at a third of the cost.
    """
    _check_channels(gray, 1, "gray_to_lightness")
    x = _work(gray)
    return _back(116.0 * _lab_f(srgb_to_linear(x)) - 16.0, gray)


# --------------------------------------------------------------------------- normalisation
def normalise_lab(lab: torch.Tensor) -> torch.Tensor:
    """L*a*b* -> network range: L/50 - 1 and ab/110."""
    return torch.cat([lab[..., :1, :, :] / L_SCALE - 1.0, lab[..., 1:, :, :] / AB_SCALE], dim=-3)


def denormalise_lab(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalise_lab`."""
    return torch.cat([(x[..., :1, :, :] + 1.0) * L_SCALE, x[..., 1:, :, :] * AB_SCALE], dim=-3)


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (RGB and gray network range)."""
    return x * 2.0 - 1.0


def from_signed(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clipped."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- gray
def rgb_to_gray(rgb: Any, luma: Luma = "rec601") -> Any:
    """Luma of gamma-encoded RGB: Y = 0.299 R + 0.587 G + 0.114 B (rec601) or rec709.

    Works on torch tensors and numpy arrays with channels on axis -3 (e.g. (B, 3, H, W)
    or rasterio's (3, H, W)); keeps the channel axis: (..., 1, H, W). The align stage
    makes the 'gray' dataset input with this function.
    """
    if luma not in LUMA_WEIGHTS:
        raise ValueError(f"unknown luma '{luma}' (known: {', '.join(LUMA_WEIGHTS)})")
    wr, wg, wb = LUMA_WEIGHTS[luma]
    if rgb.shape[-3] != 3:
        raise ValueError(f"rgb_to_gray needs 3 channels on axis -3; got shape {tuple(rgb.shape)}")
    r, g, b = rgb[..., 0:1, :, :], rgb[..., 1:2, :, :], rgb[..., 2:3, :, :]
    if isinstance(rgb, np.ndarray) and not np.issubdtype(rgb.dtype, np.floating):
        r, g, b = (c.astype(np.float32) for c in (r, g, b))
    elif isinstance(rgb, torch.Tensor):
        r, g, b = (_work(c) for c in (r, g, b))
    return wr * r + wg * g + wb * b


# --------------------------------------------------------------------------- model domains
class ColourSpace:
    """How a model represents its two domains for `color_space: rgb | lab`.

    Domain A (the input) is one channel: gray*2-1 (rgb) or L/50-1 (lab).
    Domain B (the target) is three channels: RGB*2-1 (rgb) or (L/50-1, a/110, b/110) (lab).
    A colour-predicting generator outputs `out_channels` channels: all of RGB, or only
    a*b*; `assemble` turns that into a B-domain image, keeping the input's L exactly in
    Lab mode.
    """

    def __init__(self, name: ColourSpaceName) -> None:
        if name not in ("rgb", "lab"):
            raise ValueError(f"unknown color_space '{name}' (known: rgb, lab)")
        self.name = name
        self.is_lab = name == "lab"

    @property
    def out_channels(self) -> int:
        """Channels a colour-predicting generator outputs (3 RGB, or 2 for a*b*)."""
        return 2 if self.is_lab else 3

    def encode_gray(self, gray: torch.Tensor) -> torch.Tensor:
        """Gray in [0, 1], (B, 1, H, W) -> domain A."""
        if self.is_lab:
            return gray_to_lightness(gray) / L_SCALE - 1.0
        return to_signed(gray)

    def encode_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], (B, 3, H, W) -> domain B."""
        if self.is_lab:
            return normalise_lab(rgb_to_lab(rgb))
        return to_signed(rgb)

    def decode(self, b: torch.Tensor) -> torch.Tensor:
        """Domain B -> RGB in [0, 1]."""
        if self.is_lab:
            return lab_to_rgb(denormalise_lab(b))
        return from_signed(b)

    def decode_gray(self, a: torch.Tensor) -> torch.Tensor:
        """Domain A -> gray-looking RGB in [0, 1], (B, 3, H, W) (for pictures of A)."""
        if self.is_lab:
            return self.decode(self.gray_as_colour(a))
        return from_signed(a).expand(-1, 3, -1, -1)

    def assemble(self, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Generator output -> domain B image. Lab: cat(L of the input, predicted a*b*)."""
        return torch.cat([a, out], dim=1) if self.is_lab else out

    def chroma(self, b: torch.Tensor) -> torch.Tensor:
        """The channels a colour generator predicts: all of RGB, or a*b*."""
        return b[:, 1:] if self.is_lab else b

    def gray_as_colour(self, a: torch.Tensor) -> torch.Tensor:
        """Domain A shown in domain B with zero chroma: (L, 0, 0) or gray in R=G=B."""
        if self.is_lab:
            return torch.cat([a, a.new_zeros(a.shape[0], 2, *a.shape[2:])], dim=1)
        return a.expand(-1, 3, -1, -1)

    def colour_as_gray(self, b: torch.Tensor) -> torch.Tensor:
        """Domain B projected to domain A: its L, or its rec601 luma (linear, so it
        commutes with the [-1, 1] scaling)."""
        if self.is_lab:
            return b[:, :1]
        return rgb_to_gray(b)
