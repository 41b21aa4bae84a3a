"""Typed, validated configuration: params.yaml is loaded once into `Params`.

Every section is a pydantic model that forbids unknown keys, so a misspelt key is
an error naming the key (as a dotted params.yaml path) and the closest valid one.
Model-specific training options are validated by the model registry
(`models.registry`), which reuses `format_validation_error` from here.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.core.errors import ConfigError

PARAMS_FILE = Path("params.yaml")


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors; values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------- sources
class SourceConfig(Strict):
    """A tile service. `sample` is the bundled imagery over the project's loopback WMTS."""

    kind: Literal["sample", "wmts", "xyz"]
    # wmts: the capabilities URL (or the service's base URL); xyz: a template with
    # {z} {x} {y} and optionally {layer} / {ext}.
    url: str | None = None
    attribution: str = ""

    @model_validator(mode="after")
    def _url_required(self) -> SourceConfig:
        if self.kind != "sample" and not self.url:
            raise ValueError(f"a source of kind '{self.kind}' needs a url")
        return self


class AoiConfig(Strict):
    """An area of interest read from a shapefile (any CRS; reprojected)."""

    path: str
    buffer_m: float = 0.0
    # With name_field set, `feature` picks one feature by that field's value;
    # otherwise all features of the file are unioned into one AOI.
    name_field: str | None = None
    feature: str | None = None


class FetchConfig(Strict):
    """One (AOI, layer) pair: one fetch stage and one tile store."""

    source: str
    layer: str
    aoi: str
    zoom: int = Field(ge=0, le=30)
    matrix_set: str | None = None  # default: GoogleMapsCompatible when offered
    format: str | None = None  # default: the layer's only (or first) format


class HarvestConfig(Strict):
    """Harvester behaviour shared by every fetch stage (politeness first)."""

    concurrency: int = Field(default=4, ge=1, le=64)
    requests_per_second: float | None = Field(default=8.0, gt=0)  # None lifts the cap
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)  # each socket read
    # Each request as a whole (connect, headers, body, redirects): a server that sends a byte
    # now and then never trips read_timeout_s, so this bounds how long one request may take.
    request_deadline_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    max_tiles: int = Field(default=20000, ge=1)
    max_failed_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    empty_max_bytes: int = Field(default=1000, ge=0)  # tiles this small are empty (Sinica: ~936 B)
    cache_dir: str = ".tilecache"
    user_agent: str = "Luminescence/0.1 (historic aerial photo colourisation research)"


# --------------------------------------------------------------------------- sample
class FilmConfig(Strict):
    """Deterministic film emulation that makes the SYNTHETIC 'historic' sample layers
    (`<source>_film` for each source layer: the training area's and the held-out area's).

    Steps and their order are documented in pipeline/sample/film.py.
    """

    source_layers: tuple[str, ...] = Field(default=("erie_2011",), min_length=1)
    seed: int = 1974  # grain noise field
    # Panchromatic response over the source bands (R, G, B, NIR); normalised to sum 1.
    band_weights: tuple[float, float, float, float] = (0.30, 0.45, 0.20, 0.05)
    # Steepness of the S-shaped (tanh) characteristic curve: 0 = linear; midpoint slope c/tanh(c).
    contrast: float = Field(default=1.35, ge=0)
    gamma: float = Field(default=0.8, gt=0)  # applied after the curve: > 1 darkens, < 1 lightens mid-tones
    grain_sigma: float = Field(default=0.03, ge=0)  # std of grain, fraction of full scale
    grain_size_px: float = Field(default=1.0, ge=0)  # grain clump size (Gaussian sigma, px)
    blur_sigma_px: float = Field(default=1.0, ge=0)  # lens/scan softness (Gaussian sigma, px)
    vignette_strength: float = Field(default=0.25, ge=0, le=1)  # light lost at frame corners (cos^4 law)
    frame_size_m: float = Field(default=1500.0, gt=0)  # ground footprint of one photo frame


class SampleConfig(Strict):
    data_dir: str = "data/sample"
    derived_dir: str = "data/derived"
    film: FilmConfig = FilmConfig()


# --------------------------------------------------------------------------- align
class SplitConfig(Strict):
    block_size: int = Field(default=4, ge=1)  # spatial block edge, in tiles
    train: float = Field(default=0.7, ge=0, le=1)
    val: float = Field(default=0.15, ge=0, le=1)
    test: float = Field(default=0.15, ge=0, le=1)
    seed: int = 0
    guard_band: int = Field(default=1, ge=0)  # tiles discarded between blocks of different splits

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1 (they sum to {total:g})")
        return self


class OffsetConfig(Strict):
    estimate: bool = True
    max_shift_px: float = Field(default=12.0, gt=0)  # search radius of the estimator
    apply_below_px: float = Field(default=8.0, ge=0)  # shift the input when |offset| is below this
    # Correlation peak height (0..1) below which an estimate is unreliable (featureless tiles:
    # fields, water, forest) and is recorded but never applied.
    min_peak: float = Field(default=0.1, ge=0, le=1)


class AlignConfig(Strict):
    max_nodata_fraction: float = Field(default=0.02, ge=0, le=1)
    # How the input is resampled onto the target's grid (other zoom, matrix set or CRS) and
    # shifted by its offset. `none`: the stores must share one grid; offsets are only recorded.
    resampling: Literal["none", "nearest", "bilinear", "cubic", "lanczos"] = "bilinear"
    luma: Literal["rec601", "rec709"] = "rec601"
    offset: OffsetConfig = OffsetConfig()
    splits: SplitConfig = SplitConfig()
    contact_sheet_pairs: int = Field(default=4, ge=0)  # pairs per split on the contact sheet
    export_layouts: bool = True  # pix2pix aligned A|B PNGs and unpaired trainA/trainB folders


class HeldoutConfig(Strict):
    """An area never used for training or model selection, scored like the test split.

    Its stores must not overlap the dataset's own (the align stage checks); every tile with
    data goes into the held-out split (no blocks, no guard band).
    """

    target: str  # fetch key of the area's colour tile store
    historic: str | None = None  # fetch key of its historic store (datasets whose input is historic)
    # What differs from the training area that the tile stores do not say (year, season, sensor):
    # copied into the report beside the zoom and pixel size the align stage measures.
    note: str = ""


class DatasetConfig(Strict):
    """A training dataset built by one align stage."""

    input: Literal["gray", "historic"]
    target: str  # fetch key of the modern colour tile store
    historic: str | None = None  # fetch key of the historic tile store (input: historic)
    heldout: HeldoutConfig | None = None

    @model_validator(mode="after")
    def _historic_store(self) -> DatasetConfig:
        if self.input == "historic" and not self.historic:
            raise ValueError("input 'historic' needs `historic`: the fetch key of the historic layer")
        if self.input == "gray" and self.historic:
            raise ValueError("input 'gray' is made from the target; remove `historic`")
        if self.heldout is not None and (self.input == "historic") != bool(self.heldout.historic):
            raise ValueError("`heldout.historic` is needed exactly when the input is historic "
                             "(the held-out area's historic layer)")
        return self


# --------------------------------------------------------------------------- train
class TrainPreset(Strict):
    """Budget knobs applied to every ablation (see README: the CPU and full presets)."""

    crop_size: int = Field(ge=16)
    load_size: int = Field(ge=16)
    width_scale: float = Field(gt=0)  # multiplies every ngf/ndf/nef (reference 64 -> 64*scale)
    # Schedule: constant learning rate, then linear decay to zero. Give it in
    # iterations (steps/decay_steps) or, like the reference, in epochs.
    steps: int | None = Field(default=None, ge=1)
    decay_steps: int | None = Field(default=None, ge=0)
    epochs: int | None = Field(default=None, ge=1)
    decay_epochs: int | None = Field(default=None, ge=0)
    batch_size: int = Field(default=1, ge=1)
    # The U-Net depth used where a model's reference default is unet_256
    # (unet_256 needs 256-pixel crops).
    unet: Literal["unet_128", "unet_256"] = "unet_256"
    # Validation budget: every `val_every` steps (default: train.val_every) and at the end,
    # on `val_tiles` whole val tiles spread evenly over the split (default: all of them).
    val_every: int | None = Field(default=None, ge=1)
    val_tiles: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _crop_fits(self) -> TrainPreset:
        if self.crop_size > self.load_size:
            raise ValueError("crop_size must not exceed load_size")
        by_steps = self.steps is not None or self.decay_steps is not None
        by_epochs = self.epochs is not None or self.decay_epochs is not None
        if by_steps == by_epochs:
            raise ValueError("give the schedule either as steps + decay_steps or as epochs + decay_epochs")
        return self

    def schedule(self, train_size: int) -> tuple[int, int]:
        """(constant, decay) iterations for a training split of `train_size` samples."""
        if self.steps is not None or self.decay_steps is not None:
            return self.steps or 0, self.decay_steps or 0
        per_epoch = max(1, -(-train_size // self.batch_size))
        return (self.epochs or 0) * per_epoch, (self.decay_epochs or 0) * per_epoch


class TrainConfig(Strict):
    preset: str = "cpu"
    presets: dict[str, TrainPreset]
    seed: int = 0
    deterministic: bool = True
    val_every: int = Field(default=100, ge=1)
    checkpoint_every: int = Field(default=100, ge=1)
    num_val_samples: int = Field(default=4, ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    log_every: int = Field(default=10, ge=1)  # DVCLive: mean training losses over this many steps
    bf16: bool = True  # CUDA only: bf16 autocast + channels_last (CPU and MPS always run float32)
    # Shared model options applied to every ablation (validated per model).
    defaults: dict[str, Any] = {}

    @model_validator(mode="after")
    def _preset_exists(self) -> TrainConfig:
        if self.preset not in self.presets:
            raise ValueError(_unknown_name("preset", self.preset, self.presets))
        return self

    @property
    def active_preset(self) -> TrainPreset:
        return self.presets[self.preset]


class AblationConfig(Strict):
    """One ablation: a model, a dataset and only the options that differ from defaults.

    Model-specific options are validated by the model registry.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    model: str
    dataset: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# --------------------------------------------------------------------------- evaluate
class AreaNormStats(Strict):
    """How a model's instance norms normalise when it colourises an area (the evaluate and
    colourise stages; models/networks/norm_stats.py)."""

    # "area" gathers them over up to `norm_stats_windows` of the area's own inputs (never its
    # colours) and uses them for every window, so windows match (no seams); "model": as the model
    # file has them (each window's own, unless the file carries fixed ones).
    norm_stats: Literal["area", "model"] = "area"
    norm_stats_windows: int = Field(default=64, ge=1)


class EvaluateConfig(AreaNormStats):
    batch_size: int = Field(default=16, ge=1)
    # Tile bootstrap (eval/bootstrap.py): replicates, two-sided confidence; seeded by `seed`.
    bootstrap_samples: int = Field(default=1000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    # Models that sample a latent code (BicycleGAN) are scored over this many seeded draws.
    z_draws: int = Field(default=3, ge=1)
    # pytorch-fid's pt_inception-2015-12-05-6726825d.pth; also looked up through the
    # LUMINESCENCE_INCEPTION_WEIGHTS environment variable and the torch hub cache.
    inception_weights: str | None = None
    allow_download: bool = False  # never download weights unless this is true
    is_splits: int = Field(default=10, ge=1)
    kid_subsets: int = Field(default=100, ge=1)
    kid_subset_size: int = Field(default=1000, ge=2)
    seed: int = 0


class BaselineConfig(Strict):
    """Score something that is not one of our models through the evaluation code.

    input: the gray input itself; layer: another harvested layer's tiles; lut: the mean a*b*
    of the train split's pixels per L* bin; transfer: the train split's Lab mean and std
    (pipeline/results/baselines.py). lut and transfer are fitted on the train split only.
    """

    kind: Literal["input", "layer", "lut", "transfer"]
    dataset: str
    layer: str | None = None  # fetch key of a tile store whose tiles are the predictions
    heldout_layer: str | None = None  # the same layer over the held-out area, if there is one

    @model_validator(mode="after")
    def _layer_for_layer(self) -> BaselineConfig:
        if self.kind == "layer" and not self.layer:
            raise ValueError("a baseline of kind 'layer' needs `layer`: a fetch key")
        if self.kind != "layer" and (self.layer or self.heldout_layer):
            raise ValueError(f"a baseline of kind '{self.kind}' takes no `layer`/`heldout_layer`")
        return self


def _model_file(v: str) -> str:
    path = Path(v)
    if path.is_absolute() or ".." in path.parts or path.suffix != ".pt":
        raise ValueError(f"must be a model file inside the project, like release/model.pt or "
                         f"runs/<ablation>/model.pt (got {v!r})")
    return path.as_posix()


class TrainedModelConfig(Strict):
    """A model trained outside the ablation table (the release model), scored by the same
    evaluate code as every ablation on `dataset`'s test split and held-out area."""

    file: Annotated[str, AfterValidator(_model_file)]
    dataset: str


class ColouriseConfig(AreaNormStats):
    """The `colourise` stage: a trained model colourises a harvested area."""

    # release/model.pt (the release model) or runs/<ablation>/model.pt
    model: Annotated[str, AfterValidator(_model_file)] = "release/model.pt"
    store: str  # fetch key of the tile store to colourise
    # context pixels, within which tiles are cross-faded; None: the smallest that fits G
    margin: int | None = Field(default=None, ge=1, le=128)


# --------------------------------------------------------------------------- release
Span = tuple[float, float]


class FilmAugmentConfig(Strict):
    """Film emulation as augmentation (pipeline/datasets/augment.py): each training sample
    whose input is film-emulated draws every parameter uniformly from its [low, high]
    range; each range must contain the `sample.film` value it varies."""

    probability: float = Field(default=0.5, ge=0, le=1)  # share of samples with a film input
    contrast: Span = (0.7, 2.0)
    gamma: Span = (0.6, 1.1)
    grain_sigma: Span = (0.0, 0.06)
    grain_size_px: Span = (0.5, 1.5)
    blur_sigma_px: Span = (0.0, 1.8)
    vignette_strength: Span = (0.0, 0.45)
    frame_size_m: Span = (800.0, 2500.0)
    band_weight_jitter: float = Field(default=0.3, ge=0, lt=1)  # each band weight x U(1 - j, 1 + j)

    @field_validator("contrast", "gamma", "grain_sigma", "grain_size_px", "blur_sigma_px",
                     "vignette_strength", "frame_size_m")
    @classmethod
    def _ordered(cls, v: Span) -> Span:
        if v[0] > v[1] or v[0] < 0:
            raise ValueError(f"must be [low, high] with 0 <= low <= high, got {list(v)}")
        return v


class ReleaseDataConfig(Strict):
    """The release model's training data: native-resolution crops of sample layers outside
    the held-out area, with geometric and film augmentation."""

    layers: list[str] = ["erie_2021", "erie_2011"]  # sample layers (folders of sample.data_dir) trained on
    held_out: list[str] = ["columbia_2010"]  # layers whose whole footprints are never trained on
    val_aoi: str = "erie_village"  # key of `aois`: the validation area, also kept out of training
    guard_m: float = Field(default=60.0, ge=0)  # gap kept between training crops and those areas
    crop_size: int = Field(default=256, ge=32)
    val_crop_size: int = Field(default=256, ge=32)
    max_val_crops: int = Field(default=48, ge=1)
    rotate90: bool = True  # random multiples of 90 degrees (aerial views have no up)
    flip: bool = True
    film: FilmAugmentConfig = FilmAugmentConfig()

    @model_validator(mode="after")
    def _held_out_is_not_trained_on(self) -> ReleaseDataConfig:
        both = sorted(set(self.layers) & set(self.held_out))
        if both:
            raise ValueError(f"layer(s) {', '.join(both)} are held out; remove them from `layers`")
        if not self.layers:
            raise ValueError("`layers` must name at least one sample layer")
        return self


class ReleaseConfig(Strict):
    """The `release` stage (frozen: `make release` runs it): one model trained on
    `data`, its weights, curves, metrics and model card committed under release/."""

    model: str = "pix2pix"
    # The model's options (validated by its typed options, like an ablation's keys).
    options: dict[str, Any] = {}
    data: ReleaseDataConfig = ReleaseDataConfig()
    steps: int = Field(default=6000, ge=1)  # constant-LR iterations, then
    decay_steps: int = Field(default=2000, ge=0)  # linear decay to 0
    batch_size: int = Field(default=4, ge=1)
    val_every: int = Field(default=250, ge=1)
    select: Literal["best_val", "last"] = "best_val"  # weights kept: best validation ΔE2000 or the last
    held_out_crops: int = Field(default=64, ge=1)  # crops per held-out layer scored at the end
    seed: int = 0
    threads: int | None = Field(default=None, ge=1)  # torch CPU threads (None: torch's default)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    max_weights_mb: float = Field(default=50.0, gt=0)  # model.pt must stay small enough for git
    # Instance norms after training: "window" keeps each input's own statistics; "training_data"
    # fixes them, gathered over `norm_stats_samples` training inputs (film augmentation included),
    # so every window is normalised alike (no seams), at a cost on unseen areas (docs/model-defaults.md).
    norm_stats: Literal["window", "training_data"] = "window"
    norm_stats_samples: int = Field(default=256, ge=1)


# --------------------------------------------------------------------------- app
class AppLayerConfig(Strict):
    """One map layer of a view: a layer of a configured source (never a URL a client names)."""

    source: str  # a key of `sources`
    layer: str  # the layer id at that source (or the XYZ template's {layer})
    gray: bool = False  # show (and colourise) its luma: a gray version of a colour layer
    title: str | None = None  # default: "<layer>" (+ " in gray" when gray)


class AppViewConfig(Strict):
    """One map view: an area, the historic and modern layers, and the model colourising it."""

    title: str
    aoi: str  # a key of `aois`: the area the view shows, colourises and exports
    zoom: int = Field(ge=1, le=22)  # the zoom the model colourises at (its training tiles' zoom)
    historic: AppLayerConfig
    modern: AppLayerConfig
    model: str | None = None  # path to a model.pt; default: app.model


class AppUploadConfig(Strict):
    """Limits on uploaded photos (untrusted files)."""

    max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=16_000_000, ge=65536)  # decompression bombs are refused


class AppConfig(Strict):
    """The web app (`luminescence app`): views, model, limits and where it keeps its data."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    model: str  # the default model of every view (the release model)
    data_dir: str = "data/app"  # the only folder the app writes to (tile stores, exports, uploads)
    zoom_out: int = Field(default=2, ge=0, le=4)  # zoom levels below a view's zoom (colour overviews)
    batch_size: int = Field(default=8, ge=1, le=64)  # windows per forward pass across requests
    batch_wait_ms: float = Field(default=5.0, ge=0, le=1000)  # gather a batch this long at most
    # the model's passes: auto (bfloat16 where this CPU runs it >= 1.2x faster, timed at start), fp32, bf16
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    export_max_tiles: int = Field(default=400, ge=1)  # "download this view" at the view's zoom
    upload: AppUploadConfig = AppUploadConfig()
    views: dict[str, AppViewConfig]

    @field_validator("views")
    @classmethod
    def _view_names(cls, value: dict[str, AppViewConfig]) -> dict[str, AppViewConfig]:
        if not value:
            raise ValueError("define at least one view")
        for name in value:  # view names are URL path segments
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
                raise ValueError(f"view name '{name}' must be letters, digits, '-' and '_' (at most 64)")
        return value


# --------------------------------------------------------------------------- all
class Params(Strict):
    sources: dict[str, SourceConfig]
    aois: dict[str, AoiConfig]
    harvest: HarvestConfig = HarvestConfig()
    fetch: dict[str, FetchConfig]
    sample: SampleConfig = SampleConfig()
    align: AlignConfig = AlignConfig()
    datasets: dict[str, DatasetConfig] = {}
    train: TrainConfig | None = None
    ablations: dict[str, AblationConfig] = {}
    evaluate: EvaluateConfig = EvaluateConfig()
    baselines: dict[str, BaselineConfig] = {}
    trained_models: dict[str, TrainedModelConfig] = {}
    colourise: ColouriseConfig | None = None
    release: ReleaseConfig | None = None
    app: AppConfig | None = None

    @field_validator("fetch", "datasets", "ablations", "baselines", "trained_models", "aois", "sources")
    @classmethod
    def _names_are_safe(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not name or any(c in name for c in "/\\ :") or name.startswith("."):
                raise ValueError(f"name '{name}' must be a plain word (letters, digits, - and _)")
        return value

    @model_validator(mode="after")
    def _references_resolve(self) -> Params:
        for key, fetch in self.fetch.items():
            _check_ref(f"fetch.{key}.source", fetch.source, self.sources)
            _check_ref(f"fetch.{key}.aoi", fetch.aoi, self.aois)
        for key, ds in self.datasets.items():
            _check_ref(f"datasets.{key}.target", ds.target, self.fetch)
            if ds.historic:
                _check_ref(f"datasets.{key}.historic", ds.historic, self.fetch)
            if ds.heldout is not None:
                _check_ref(f"datasets.{key}.heldout.target", ds.heldout.target, self.fetch)
                if ds.heldout.historic:
                    _check_ref(f"datasets.{key}.heldout.historic", ds.heldout.historic, self.fetch)
                used = {ds.target, ds.historic} - {None}
                if {ds.heldout.target, ds.heldout.historic} & used:
                    raise ConfigError(f"params.yaml: `datasets.{key}.heldout` reuses a tile store of the "
                                      "training area; a held-out area needs stores of its own")
        for key, ab in self.ablations.items():
            _check_ref(f"ablations.{key}.dataset", ab.dataset, self.datasets)
        for key, tm in self.trained_models.items():
            _check_ref(f"trained_models.{key}.dataset", tm.dataset, self.datasets)
        for key, bl in self.baselines.items():
            _check_ref(f"baselines.{key}.dataset", bl.dataset, self.datasets)
            if bl.layer:
                _check_ref(f"baselines.{key}.layer", bl.layer, self.fetch)
            if bl.heldout_layer:
                _check_ref(f"baselines.{key}.heldout_layer", bl.heldout_layer, self.fetch)
        if self.colourise:
            _check_ref("colourise.store", self.colourise.store, self.fetch)
        if self.release:
            _check_ref("release.data.val_aoi", self.release.data.val_aoi, self.aois)
            _check_film_ranges(self.release.data.film, self.sample.film)
        if self.app:
            for key, view in self.app.views.items():
                _check_ref(f"app.views.{key}.aoi", view.aoi, self.aois)
                for role in ("historic", "modern"):
                    _check_ref(f"app.views.{key}.{role}.source", getattr(view, role).source, self.sources)
        if self.ablations and self.train is None:
            raise ConfigError("params.yaml: `ablations` need a `train` section (presets and defaults)")
        return self


def _check_film_ranges(ranges: FilmAugmentConfig, base: FilmConfig) -> None:
    """Film augmentation varies the sample's film around its values: each range holds its value."""
    for key in ("contrast", "gamma", "grain_sigma", "grain_size_px", "blur_sigma_px", "vignette_strength",
                "frame_size_m"):
        low, high = getattr(ranges, key)
        value = getattr(base, key)
        if not low <= value <= high:
            raise ConfigError(f"params.yaml: `release.data.film.{key}`: [{low:g}, {high:g}] must contain "
                              f"`sample.film.{key}` ({value:g}), the film it varies around")


def _closest(name: str, candidates: Any) -> str | None:
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return match[0] if match else None


def _unknown_name(what: str, name: str, candidates: Any) -> str:
    hint = _closest(name, candidates)
    known = ", ".join(sorted(str(c) for c in candidates)) or "none"
    if hint:
        return f"unknown {what} '{name}'; did you mean '{hint}'? (known: {known})"
    return f"unknown {what} '{name}' (known: {known})"


def _check_ref(key: str, name: str, table: dict[str, Any]) -> None:
    if name not in table:
        raise ConfigError(f"params.yaml: `{key}`: {_unknown_name('name', name, table)}")


# --------------------------------------------------------------------------- errors
_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "str": "a string",
    "dict": "a mapping (key: value)",
    "list": "a list",
    "tuple": "a list",
    "literal": "one of",
}


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys at the level where `loc` ends (for did-you-mean suggestions)."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return []
        if isinstance(part, str) and part in fields:
            annotation = fields[part].annotation
            current = _model_in(annotation)
            if current is None:
                return []
        # dict keys (free names) keep the dict's value model
        elif current is not None and isinstance(part, str):
            continue
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _model_in(annotation: Any) -> Any:
    """Find the BaseModel class inside an annotation like `dict[str, X] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: str = "",
                            source: str = "params.yaml", names: Mapping[str, str] | None = None) -> str:
    """Turn pydantic's report into one line naming the params.yaml key.

    `names` renames top-level keys (e.g. to the command-line flag that gave the value).
    """
    messages = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc) or "(top level)"
        if names and loc and str(loc[0]) in names:
            key = ".".join([names[str(loc[0])], *(str(p) for p in loc[1:])])
        kind = err["type"]
        if kind == "extra_forbidden":
            hint = _closest(str(loc[-1]), _field_names(model, loc))
            msg = f"`{key}` is not a valid key"
            if hint:
                msg += f"; did you mean `{'.'.join([*key.split('.')[:-1], hint])}`?"
            else:
                msg += "; remove it"
        elif kind == "missing":
            msg = f"`{key}` is required but missing"
        elif kind in ("value_error", "assertion_error"):
            text = str(err.get("ctx", {}).get("error", err["msg"]))
            msg = f"`{key}`: {text}" if loc else text
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            msg = f"`{key}` must be one of {expected} (got {err.get('input')!r})"
        else:
            base = kind.split("_")[0]
            expected = _TYPE_WORDS.get(base)
            if expected and kind.endswith(("_type", "_parsing")):
                msg = f"`{key}` must be {expected} (got {err.get('input')!r})"
            else:
                msg = f"`{key}`: {err['msg']} (got {err.get('input')!r})"
        messages.append(msg)
    extra = f" (and {len(messages) - 1} more problem(s))" if len(messages) > 1 else ""
    return f"{source}: {messages[0]}{extra}"


def parse_params(data: Any, source: str = "params.yaml") -> Params:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, Params, source=source)) from None


S = TypeVar("S", bound=Strict)


def with_overrides(section: S, overrides: Mapping[str, tuple[str, Any]]) -> S:
    """`section` with command-line values applied, validated exactly like params.yaml.

    `overrides` maps a field to (the flag that gave it, its value); an invalid value is a
    ConfigError naming the flag, as an invalid params.yaml value names its key.
    """
    values = {field: value for field, (_, value) in overrides.items()}
    try:
        return type(section).model_validate({**section.model_dump(), **values})
    except ValidationError as exc:
        flags = {field: flag for field, (flag, _) in overrides.items()}
        raise ConfigError(format_validation_error(exc, type(section), source="command line",
                                                  names=flags)) from None


def load_params(path: str | os.PathLike[str] = PARAMS_FILE) -> Params:
    """Read and validate params.yaml once."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run from the repository root (where params.yaml is)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_params(data, source=str(path))


def lookup(table: dict[str, Any], name: str, what: str, key: str) -> Any:
    """table[name], or a ConfigError naming the params.yaml key and close matches."""
    if name not in table:
        raise ConfigError(f"params.yaml: `{key}`: {_unknown_name(what, name, table)}")
    return table[name]
