"""Experiment configs: one typed schema with defaults; YAML files state only what differs.

Each section is a dataclass; `Literal` types list the allowed values and `validate()` methods
check ranges. Loading walks the YAML against the schema, so an unknown key or a bad value fails
with its key path and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from braintumor.core.atomic import write_text
from braintumor.core.backbones import BACKBONES
from braintumor.core.errors import UserError, clip, describe, shown
from braintumor.core.logs import get_logger

log = get_logger(__name__)

SYNTHETIC_ROOT = "data/synthetic"  # the quickstart's folder, relative to the current folder
# old key paths still accepted, with a one-line notice: old -> new
RENAMED_KEYS = {"train.feature_cache": "train.prefix_cache"}
# keys whose YAML `null` means the string "none"; a null anywhere else (not an Optional key) is an error
NULL_MEANS_NONE = frozenset({"model.weights"})

# Bounds on what YAML may make us build, checked before any Python object exists: a config is a page of keys
# (the shipped ones are under 2 KB and 3 levels deep), so these only stop files that would exhaust memory or the stack.
MAX_CONFIG_BYTES = 64 * 1024  # file size, and length of a --set value
MAX_NESTING = 32  # collections inside collections; deeper YAML overflows PyYAML's recursive composer
MAX_VALUES = 100_000  # nodes counting each alias as a copy of its anchor: a 64 KB file without aliases holds < 33000

Mode = Literal["feature-extraction", "fine-tune", "full"]
Preprocess = Literal["brain_crop", "standardize", "equalize"]


@dataclass
class DataConfig:
    root: str = "data/brain-tumor-mri"
    train_dir: str = "Training"
    test_dir: str = "Testing"
    classes: list[str] | None = None  # None: the sorted subfolders of train_dir
    image_size: int = 224
    val_fraction: float = 0.1  # stratified, seeded; carved from train_dir only
    preprocess: list[Preprocess] = field(default_factory=list)  # applied in this order, before caching
    strict: bool = False  # True: an unreadable image fails the run instead of being skipped
    cache_dir: str = "~/.cache/braintumor"
    # quickstart only: write `braintumor data synth` data at root when it is absent, and only when root is
    # SYNTHETIC_ROOT, so a mistyped root is an error instead of a silently invented data set
    make_synthetic_if_missing: bool = False
    exclude_test_twins: bool = False  # drop Training images with an exact/near duplicate in Testing
    channels: Literal[1, 3] = 3  # 1: the model averages RGB into one intensity channel (from-scratch models)
    # how images are split (data/splits.py); every protocol carves validation group-aware from the training part.
    # official: the train_dir and test_dir folders; clean: a seeded, stratified, twin-group-aware re-split of all
    # images (test_fraction in test); kfold: StratifiedGroupKFold over all images, `fold` tests, the others train
    protocol: Literal["official", "clean", "kfold"] = "official"
    test_fraction: float = 0.2  # clean only
    folds: int = 5  # kfold only
    fold: int = 0  # kfold (or a split_file with fold numbers): the fold that tests
    split_file: str | None = None  # a CSV written by `braintumor data split` (or a run's split.csv); wins over protocol

    def validate(self, check: _Check) -> None:
        check(8 <= self.image_size <= 1024, "image_size", "an integer from 8 to 1024")
        check(0 < self.val_fraction < 0.5, "val_fraction", "a number above 0 and below 0.5")
        check(self.classes is None or len(set(self.classes)) == len(self.classes) >= 2,
              "classes", "null (discover) or a list of at least two distinct folder names")
        check(len(set(self.preprocess)) == len(self.preprocess), "preprocess", "each step at most once")
        check(not {"standardize", "equalize"} <= set(self.preprocess), "preprocess",
              "standardize or equalize, not both (each normalises the brain's intensities)")
        check(0 < self.test_fraction < 0.5, "test_fraction", "a number above 0 and below 0.5")
        check(2 <= self.folds <= 20, "folds", "an integer from 2 to 20")
        check(0 <= self.fold < self.folds, "fold", f"an integer from 0 to {self.folds - 1} (data.folds - 1)")
        check(not self.exclude_test_twins or (self.protocol == "official" and self.split_file is None),
              "exclude_test_twins", "false unless data.protocol is official without data.split_file (the other "
              "splits keep twins on one side already)")


@dataclass
class AugmentationConfig:
    """The study's Keras ImageDataGenerator parameters, applied in the input pipeline."""

    enabled: bool = False
    mode: Literal["offline", "online"] = "offline"  # offline: `copies` fixed copies, as the study
    copies: int = 1
    width_shift: float = 0.2  # fraction of the width, uniform in [-w, w]
    height_shift: float = 0.2
    shear: float = 0.2  # degrees, as ImageDataGenerator's shear_range (so 0.2 is tiny, as in the study)
    horizontal_flip: bool = True
    brightness: list[float] = field(default_factory=lambda: [0.8, 2.0])  # multiplicative factor
    fill_mode: Literal["nearest", "constant", "reflect", "wrap"] = "nearest"
    save_dir: str | None = None  # offline only: also write the copies as PNG files here
    # extras for MRI slices, not in the study; [1, 1] and 0 turn them off
    zoom: list[float] = field(default_factory=lambda: [1.0, 1.0])  # scale factor range; > 1 zooms in
    rotation: float = 0.0  # degrees, uniform in [-r, r]
    contrast: list[float] = field(default_factory=lambda: [1.0, 1.0])  # factor about each image's mean
    gamma: list[float] = field(default_factory=lambda: [1.0, 1.0])  # exponent on [0, 1] intensities
    blur: list[float] = field(default_factory=lambda: [0.0, 0.0])  # Gaussian sigma in pixels of the model input
    # control points of a random increasing intensity curve per image (MONAI's RandHistogramShift); 0: off
    histogram_shift: int = 0
    # largest |coefficient| of a random smooth log-intensity field per image (degree-3 Legendre polynomials,
    # MONAI's RandBiasField); at 0.2, 90 % of pixels are scaled by 0.73-1.37; 0: off
    bias_field: float = 0.0
    # Gaussian noise on [0, 255] intensities inside the brain, its standard deviation drawn per image from [0, noise]
    # (MONAI's RandGaussianNoise): sources differ in noise level; 0: off
    noise: float = 0.0
    # probability that an image's brain is shown in inverted contrast (255 - x on nonzero pixels): T2 and FLAIR
    # order the tissues otherwise than T1; in Training no_tumor has such slices and the glioma and pituitary classes
    # none, so the contrast alone would say no_tumor; 0: off
    invert: float = 0.0
    # share of images sent through a random shallow convolutional network (GIN, Ouyang et al. 2022): gray levels
    # and texture remapped, not always in order, as between MRI sequences; 0: off
    gin: float = 0.0
    # online only: each image and its target blended with another image of the batch, the weight drawn from
    # Beta(mixup, mixup) (Zhang et al. 2018); 0: off
    mixup: float = 0.0

    @property
    def online(self) -> bool:
        """Whether transforms are drawn anew for every batch in tf.data (not fixed copies, not off)."""
        return self.enabled and self.mode == "online"

    def validate(self, check: _Check) -> None:
        check(1 <= self.copies <= 20, "copies", "an integer from 1 to 20")
        for key in ("width_shift", "height_shift"):
            check(0 <= getattr(self, key) < 1, key, "a fraction from 0 to below 1")
        check(0 <= self.shear < 90, "shear", "degrees from 0 to below 90")
        low_high = self.brightness
        check(len(low_high) == 2 and 0 < low_high[0] <= low_high[1], "brightness",
              "[low, high] with 0 < low <= high, e.g. [0.8, 2.0]")
        check(self.save_dir is None or self.mode == "offline", "save_dir", "null unless mode is offline")
        for key, top in (("zoom", 4.0), ("contrast", 4.0), ("gamma", 4.0)):
            pair = getattr(self, key)
            check(len(pair) == 2 and 0 < pair[0] <= pair[1] <= top, key,
                  f"[low, high] with 0 < low <= high <= {top:g}, e.g. [0.9, 1.1]; [1, 1] turns it off")
        check(0 <= self.rotation <= 180, "rotation", "degrees from 0 to 180; 0 turns it off")
        check(len(self.blur) == 2 and 0 <= self.blur[0] <= self.blur[1] <= 5, "blur",
              "[low, high] sigma in pixels with 0 <= low <= high <= 5, e.g. [0, 1.5]; [0, 0] turns it off")
        check(self.histogram_shift == 0 or 3 <= self.histogram_shift <= 32, "histogram_shift",
              "a number of control points from 3 to 32, e.g. 10; 0 turns it off")
        check(0 <= self.bias_field <= 1, "bias_field",
              "the largest coefficient from 0 to 1, e.g. 0.2; 0 turns it off")
        check(0 <= self.noise <= 50, "noise", "the largest standard deviation from 0 to 50 gray levels, e.g. 8; "
              "0 turns it off")
        check(0 <= self.invert <= 1, "invert", "a probability from 0 to 1, e.g. 0.5; 0 turns it off")
        check(0 <= self.gin <= 1, "gin", "a share of images from 0 to 1, e.g. 0.5; 0 turns it off")
        check(0 <= self.mixup <= 1, "mixup", "a Beta concentration from 0 to 1, e.g. 0.2; 0 turns it off")
        check(self.mixup == 0 or self.online, "mixup",
              "0 unless augmentation is enabled with mode online (the images of each batch are blended as drawn)")


@dataclass
class ModelConfig:
    backbone: str = "vgg16"  # a key of core.backbones.BACKBONES
    weights: str = "imagenet"  # imagenet | none | path to a weights file of this backbone
    mode: Mode = "fine-tune"
    fine_tune_after: str | None = None  # last frozen layer in fine-tune mode; null: the backbone's default
    pooling: Literal["avg", "max"] = "avg"
    dropout: float = 0.3
    # simple_cnn only: `depth` blocks of `convs_per_block` conv-BN-ReLU layers, filters doubling from `width`
    width: int = 32
    depth: int = 3
    convs_per_block: int = 1
    bn_momentum: float = 0.9  # BatchNorm moving-statistics momentum (simple_cnn)
    # simple_cnn: batch (BatchNorm); group (GroupNorm, 8 groups: each image normalised by its own statistics, so no
    # statistics learnt on one site are applied to another); ibn (IBN-a: in the first conv of every block but the
    # last two, half the channels instance-normalised and half BatchNorm, the rest BatchNorm)
    norm: Literal["batch", "group", "ibn"] = "batch"
    # simple_cnn: in training, the share of images whose feature style (per-channel mean and std) is mixed with
    # another image's after every block but the last two (MixStyle); 0 turns it off. Not in the saved model.
    mixstyle: float = 0.0

    def validate(self, check: _Check) -> None:
        check(self.backbone in BACKBONES, "backbone", "one of: " + ", ".join(BACKBONES))
        check(0 <= self.dropout < 1, "dropout", "a number from 0 to below 1")
        check(not (self.backbone == "simple_cnn" and self.weights == "imagenet"), "weights",
              "none or a weights file for simple_cnn (it has no ImageNet weights)")
        check(self.fine_tune_after is None or self.mode == "fine-tune", "fine_tune_after",
              "null unless mode is fine-tune")
        check(4 <= self.width <= 512, "width", "an integer from 4 to 512")
        check(1 <= self.depth <= 8, "depth", "an integer from 1 to 8")
        check(1 <= self.convs_per_block <= 4, "convs_per_block", "an integer from 1 to 4")
        check(0 < self.bn_momentum < 1, "bn_momentum", "a number above 0 and below 1, e.g. 0.99")
        check(self.norm != "ibn" or self.depth >= 3, "norm",
              "batch or group when model.depth is under 3 (ibn keeps the last two blocks plain BatchNorm)")
        check(0 <= self.mixstyle <= 1, "mixstyle", "a probability from 0 to 1, e.g. 0.5; 0 turns it off")
        check(self.mixstyle == 0 or self.depth >= 3, "mixstyle",
              "0 when model.depth is under 3 (MixStyle follows every block but the last two)")
        simple_only = {"width": 32, "depth": 3, "convs_per_block": 1, "bn_momentum": 0.9, "norm": "batch",
                       "mixstyle": 0.0}
        for key, default in simple_only.items():
            check(self.backbone == "simple_cnn" or getattr(self, key) == default, key,
                  f"the default ({default}) unless backbone is simple_cnn; ImageNet backbones have a fixed shape")


@dataclass
class TrainConfig:
    optimizer: Literal["adam", "rmsprop", "sgd"] = "adam"
    learning_rate: float = 1e-3
    epochs: int = 20
    batch_size: int = 32
    early_stopping_patience: int = 5  # epochs without a better validation loss; 0 turns it off
    class_weight: Literal["none", "balanced"] = "none"
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = "auto"
    xla: Literal["auto", "on", "off"] = "auto"
    # fine-tune and feature-extraction without online augmentation: run the frozen prefix once, cache its outputs,
    # train only the layers after it (engine/prefix_cache.py)
    prefix_cache: bool = True
    # mirrored: tf.distribute.MirroredStrategy over all visible GPUs (or `devices`); batch_size is the global batch
    distribution: Literal["none", "mirrored"] = "none"
    devices: list[str] | None = None  # mirrored only: e.g. ["/gpu:0", "/gpu:1"]; null: every visible GPU
    tensorboard: bool = True  # write tensorboard/ in the run dir: scalars per epoch, the confusion matrix at the end
    schedule: Literal["constant", "cosine", "plateau"] = "constant"  # learning rate over the epochs
    warmup_epochs: int = 0  # linear ramp from near 0 to learning_rate over these first epochs
    plateau_patience: int = 3  # plateau: epochs without a lower val_loss before the rate drops
    plateau_factor: float = 0.5  # plateau: the rate is multiplied by this
    weight_decay: float = 0.0  # decoupled weight decay (AdamW for adam); 0: off
    label_smoothing: float = 0.0  # targets (1 - s) for the class, s / classes spread over all; 0: off
    # before each validation, BatchNorm statistics recomputed on un-augmented training images (mode full)
    precise_bn: bool = False

    def validate(self, check: _Check) -> None:
        check(0 < self.learning_rate <= 1, "learning_rate", "a number above 0 and at most 1")
        check(1 <= self.epochs <= 10_000, "epochs", "an integer from 1 to 10000")
        check(1 <= self.batch_size <= 4096, "batch_size", "an integer from 1 to 4096")
        check(self.early_stopping_patience >= 0, "early_stopping_patience", "an integer >= 0")
        check(self.devices is None or (self.distribution == "mirrored" and len(self.devices) >= 1), "devices",
              "null, or a non-empty list of devices with distribution: mirrored")
        check(0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "an integer from 0 to below train.epochs")
        check(self.plateau_patience >= 1, "plateau_patience", "an integer >= 1")
        check(0 < self.plateau_factor < 1, "plateau_factor", "a number above 0 and below 1")
        check(0 <= self.weight_decay < 1, "weight_decay", "a number from 0 to below 1, e.g. 1e-4")
        check(0 <= self.label_smoothing < 1, "label_smoothing", "a number from 0 to below 1, e.g. 0.1")
        check(not self.precise_bn or self.distribution == "none", "precise_bn",
              "false with distribution: mirrored (the statistics are recomputed on one device)")


@dataclass
class OutputConfig:
    dir: str = "outputs"


# config keys (dotted) in which the runs of one configuration may differ: the seeds, and the folds of one
# cross-validation. `compare` pools such runs; `sweep` keeps them out of the labels that tell configurations apart.
WITHIN_CONFIGURATION = ("seed", "name", "output", "data.fold")


@dataclass
class Config:
    name: str = "experiment"  # run folders are <output.dir>/<name>-<YYYYmmdd-HHMMSS>
    label: str | None = None  # short label for comparison tables, e.g. "VGG16-II"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self, check: _Check) -> None:
        check(bool(self.name) and "/" not in self.name, "name", "a non-empty name without '/'")
        if self.train.precise_bn and self.model.mode != "full":
            raise UserError(f"{check.source}: train.precise_bn = True needs model.mode full; in {self.model.mode} "
                            "mode BatchNorm keeps its ImageNet statistics, so there is nothing to recompute")
        if self.train.precise_bn and self.model.norm == "group":
            raise UserError(f"{check.source}: train.precise_bn = True needs BatchNorm; model.norm group has no "
                            "statistics to recompute, so use train.precise_bn: false with it")
        if self.data.channels == 1 and self.model.backbone != "simple_cnn":
            raise UserError(f"{check.source}: data.channels = 1 needs model.backbone simple_cnn; ImageNet "
                            "backbones take 3 channels, so use data.channels: 3 with them")
        minimum = BACKBONES[self.model.backbone].min_size
        if self.data.image_size < minimum:
            raise UserError(f"{check.source}: data.image_size = {self.data.image_size} is below "
                            f"{self.model.backbone}'s minimum input size; use {minimum} or more")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Check:
    """Collects the key path prefix so section validators can report `train.learning_rate`."""

    def __init__(self, source: str, prefix: str, section: Any):
        self.source, self.prefix, self.section = source, prefix, section

    def __call__(self, ok: bool, key: str, allowed: str) -> None:
        if not ok:
            value = getattr(self.section, key)
            raise UserError(f"{self.source}: {self.prefix}{key} = {shown(value)} is not allowed; use {allowed}")


def _build(cls: type, raw: Any, path: str, source: str) -> Any:
    """Turn a YAML mapping into the dataclass `cls`, checking every key and value."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: {path.rstrip('.') or 'the file'} must be a mapping of keys, got {shown(raw)}")
    raw = _renamed(raw, path, source)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{path}{close[0]}'?" if close else f"allowed keys: {', '.join(names)}"
            raise UserError(f"{source}: unknown key '{path}{clip(str(key))}'; {hint}")
    values = {key: _coerce(value, hints[key], f"{path}{key}", source) for key, value in raw.items()}
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate(_Check(source, path, obj))
    return obj


def _renamed(raw: dict, path: str, source: str) -> dict:
    """`raw` with the old names of renamed keys (RENAMED_KEYS) replaced by the new ones, each with a notice."""
    for key in list(raw):
        new = RENAMED_KEYS.get(f"{path}{key}")
        if new is None:
            continue
        new_key = new.rpartition(".")[2]
        if new_key in raw:
            raise UserError(f"{source}: {path}{key} and {new} are both set; {path}{key} is the old name of {new}, "
                            f"so keep {new} only")
        log.warning(f"{source}: {path}{key} is now {new}; the old name still works, but rename it")
        raw = {new_key if each == key else each: value for each, value in raw.items()}
    return raw


def _coerce(value: Any, hint: Any, path: str, source: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path + ".", source)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, path, source)
    if origin is Literal:
        if value not in args or (isinstance(value, bool) and bool not in map(type, args)):
            raise UserError(f"{source}: {path} = {shown(value)} is not allowed; use one of: "
                            + ", ".join(map(str, args)))
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{source}: {path} must be a list, got {shown(value)}")
        return [_coerce(item, args[0], f"{path}[{i}]", source) for i, item in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if value is None:
        if path in NULL_MEANS_NONE:  # `weights: none` written as YAML null
            return "none"
        raise UserError(f"{source}: {path} is null, which is not allowed here; give a {hint.__name__} value "
                        "or remove the key to use the default")
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserError(f"{source}: {path} = {shown(value)} must be of type {hint.__name__}")
    return value


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    source = f"--set {shown(override)}"
    if not sep or not all(parts):
        raise UserError(f"{source} must look like KEY=VALUE, e.g. --set train.epochs=2")
    *parents, leaf = parts
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"{source}: {clip(part)} is not a section")
    _check_size(len(text), source, "its value", "characters")
    try:
        node[leaf] = _parse_yaml(text, source) if text.strip() else ""
    except yaml.YAMLError as err:  # unclosed brackets, `!!python/...` tags (safe_load refuses them)
        raise UserError(f"{source}: the value is not plain YAML ({_problem(err)}); "
                        "quote it or write e.g. [1, 2], true, 0.001, text") from err


def parse_config(raw: Any, source: str, overrides: typing.Iterable[str] = ()) -> Config:
    """Validate a raw mapping (plus KEY=VALUE overrides) into a Config."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: the file must be a mapping of keys (section: ...), got a "
                        f"{type(raw).__name__}; see configs/quickstart.yaml for the layout")
    for override in overrides:
        _apply_override(raw, override)
    return _build(Config, raw, "", source)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing while it composes (before any Python object is built) YAML nested
    deeper than MAX_NESTING or holding more than MAX_VALUES values once aliases are expanded ("billion laughs")."""

    def __init__(self, stream: str, source: str):
        super().__init__(stream)
        self.source, self.nesting = source, 0
        self.sizes: dict[int, int] = {}  # id(node) -> its value count with aliases expanded, once composed

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # the anchor's node, not a copy
            if id(node) not in self.sizes:
                raise UserError(f"{self.source}: YAML alias inside its own anchor at line {line}; "
                                "write the values out")
        else:
            self.nesting += 1
            if self.nesting > MAX_NESTING:
                raise UserError(f"{self.source}: YAML nested deeper than {MAX_NESTING} levels at line {line}; "
                                "a config needs three (section, key, list)")
            node = super().compose_node(parent, index)
            self.nesting -= 1
            children = node.value if isinstance(node, yaml.SequenceNode) else \
                [item for pair in node.value for item in pair] if isinstance(node, yaml.MappingNode) else []
            self.sizes[id(node)] = 1 + sum(self.sizes[id(child)] for child in children)
        if self.sizes[id(node)] > MAX_VALUES:
            raise UserError(f"{self.source}: YAML aliases at line {line} expand to more than {MAX_VALUES} "
                            "values; write the values out instead of repeating aliases")
        return node


def _parse_yaml(text: str, source: str) -> Any:
    """Safe-load one YAML document within MAX_NESTING and MAX_VALUES."""
    loader = _BoundedLoader(text, source)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _check_size(size: int, source: str, what: str, unit: str = "bytes") -> None:
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"{source}: {what} has {size} {unit}, over the {MAX_CONFIG_BYTES} a config may hold; "
                        "state only the keys that differ from the defaults, as configs/quickstart.yaml does")


def _problem(err: yaml.YAMLError) -> str:
    return clip(getattr(err, "problem", None) or describe(err))


def read_yaml(path: Path) -> Any:
    """A YAML file's content (an empty file reads as {}); its size is checked before it is read."""
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass a YAML file such as configs/quickstart.yaml")
    try:
        _check_size(path.stat().st_size, str(path), "the file")
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)  # bounded even if the file grew since stat
        _check_size(len(data), str(path), "the file")
        text = data.decode()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read config file {path} as UTF-8 text ({describe(err)}); "
                        "check its permissions and encoding") from err
    try:
        return _parse_yaml(text, str(path)) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{where} ({_problem(err)}); fix the syntax") from err


def read_listing(path: Path) -> list[Path] | None:
    """The configs a sweep listing names (a YAML file whose only key is `configs`), or None for an experiment config.

    Listed paths are relative to the listing's folder, so `configs/study.yaml` names `vgg16_full.yaml` etc.
    """
    raw = read_yaml(path)
    if not (isinstance(raw, dict) and "configs" in raw):
        return None
    listed = raw["configs"]
    if set(raw) != {"configs"} or not isinstance(listed, list) or not listed \
            or not all(isinstance(item, str) for item in listed):
        raise UserError(f"{path}: a sweep listing holds one key, `configs`, a list of config files; "
                        "e.g. configs: [vgg16_full.yaml, vgg16_adam.yaml]")
    return [path.parent / item for item in listed]


def load_config(path: Path, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML config; the run name defaults to the file's stem."""
    raw = read_yaml(path)
    if isinstance(raw, dict) and "configs" in raw:
        raise UserError(f"{path} is a sweep listing, not an experiment config; run it with "
                        f"braintumor sweep {path}, or pass the configs it names")
    if isinstance(raw, dict):
        raw.setdefault("name", path.stem)
    return parse_config(raw, str(path), overrides)


def save_config(cfg: Config, path: Path) -> None:
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def shipped_configs() -> dict[str, Path]:
    """The configs that come with braintumor (the repository's configs/, package data `braintumor.configs`), by name."""
    try:
        folder = importlib.resources.files("braintumor.configs")
    except ModuleNotFoundError as err:  # a source tree on PYTHONPATH whose install predates the package data
        raise UserError("the shipped configs are not installed; reinstall braintumor (pip install -e .)") from err
    return {Path(item.name).stem: Path(str(item)) for item in folder.iterdir() if item.name.endswith(".yaml")}


def resolve_config(name: str) -> Path:
    """The config file a user named on the command line: a path that exists wins; a bare name such as
    `quickstart` (or `quickstart.yaml`) is one of the shipped configs."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    shipped = shipped_configs()
    stem = path.name.removesuffix(".yaml")
    if len(path.parts) == 1 and stem in shipped:
        return shipped[stem]
    raise UserError(f"config {name} not found; pass a YAML file or the name of a shipped config: "
                    f"{', '.join(sorted(shipped))}")
