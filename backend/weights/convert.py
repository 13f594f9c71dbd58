"""Backbone checkpoints from other code bases, converted to mmdet's ResNet key layout.

Layouts, recognised from the keys (after a DistributedDataParallel ``module.`` is removed):

- ``moco``: MoCo v1/v2 (``encoder_q.``) and MoCo v3 ResNet (``base_encoder.``) checkpoints;
  the key encoder, the queue and the projection head are dropped.
- ``openmmlab``: OpenSelfSup, mmselfsup, mmpretrain and mmdet checkpoints (``backbone.``);
  neck, heads and momentum encoders are dropped.
- ``detectron2``: ``stem.``/``resN.`` names (model-zoo ``.pkl`` files converted from
  torchvision or MoCo; ``backbone.bottom_up.`` in FPN detector checkpoints, ``backbone.`` in
  C4 ones).
- ``torchvision``: plain ResNet state dicts (``conv1.weight``, ``layer1.0.conv1.weight``, ...).

A C4 detector runs stage 4 in its RoI head: in its checkpoints that stage is taken from
``roi_head.shared_head.layer4.`` (mmdet) or ``roi_heads.res5.`` (detectron2), so the result is
the whole ResNet either way; a C4 fine-tune loads stages 1-3 into its backbone and stage 4
into the RoI head from that one file.

Nothing is unpickled in a way that could run code: ``torch.load`` runs with
``weights_only=True``, and ``.pkl`` files go through an unpickler that builds numpy arrays
and plain containers only.
"""

from __future__ import annotations

import importlib
import io
import pickle
import pickletools
import re
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from backend.registry import BACKBONES, importable_architectures

if TYPE_CHECKING:
    import torch

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ConvertedWeights",
    "SUFFIXES",
    "WeightsFileError",
    "load_backbone",
]

ARCHITECTURES: tuple[str, ...] = importable_architectures()
# the registry's names as a Literal for pydantic; to mypy a plain string
if TYPE_CHECKING:
    Architecture = str
else:
    Architecture = Literal[ARCHITECTURES]
SUFFIXES = (".pth", ".pth.tar", ".pt", ".pkl")
LAYOUTS = (
    "MoCo (module.encoder_q.*), OpenSelfSup/mmselfsup/mmpretrain (backbone.*), "
    "torchvision (conv1.weight, layer1.0.conv1.weight, ...), detectron2 (stem.*, res2.*)"
)
# (format, prefix of the backbone's keys): the first prefix that some key carries wins
_PREFIXES = (
    ("moco", "encoder_q."),
    ("moco", "base_encoder."),
    ("detectron2", "backbone.bottom_up."),
    ("openmmlab", "backbone."),
)
_RESNET_KEY = re.compile(r"^(conv1|bn1|layer\d+)\.")
# stage 4 in the RoI head of a C4 detector: mmdet's shared head, detectron2's res5
_ROI_HEAD_STAGE4 = re.compile(r"^(roi_head\.shared_head\.(?=layer4\.)|roi_heads\.(?=res5\.))")
_DETECTRON2_KEY = re.compile(r"^(stem|res[2-5])\.")
_CAFFE2_KEY = re.compile(r"^(conv1_w|res_conv1_bn_[sb]|res\d+_\d+_branch\w+)$")
_DETECTRON2_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"^stem\.conv1\.norm\."), lambda m: "bn1."),
    (re.compile(r"^stem\."), lambda m: ""),
    (
        re.compile(r"^res([2-5])\.(\d+)\.conv([1-3])\.norm\."),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.",
    ),
    (
        re.compile(r"^res([2-5])\.(\d+)\.shortcut\.norm\."),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.",
    ),
    (
        re.compile(r"^res([2-5])\.(\d+)\.shortcut\."),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.",
    ),
    (re.compile(r"^res([2-5])\.(\d+)\."), lambda m: f"layer{int(m[1]) - 1}.{m[2]}."),
)
MAX_LISTED = 5


class WeightsFileError(ValueError):
    """A file cannot be turned into backbone weights; the message says why and what is accepted."""

    def __init__(self, message: str, *, problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


@dataclass
class ConvertedWeights:
    """A backbone state dict in mmdet's ResNet layout, and what was left out of the source."""

    state_dict: dict[str, torch.Tensor]
    architecture: str
    source_format: str
    dropped: dict[str, int] = field(default_factory=dict)


def load_backbone(path: str | Path, *, architecture: str) -> ConvertedWeights:
    """Read a checkpoint safely and return its backbone in mmdet's layout for architecture."""
    path = Path(path)
    if architecture not in ARCHITECTURES:
        raise WeightsFileError(
            f"architecture {architecture!r} is not accepted; use one of {', '.join(ARCHITECTURES)}"
        )
    if not path.name.endswith(SUFFIXES):
        raise WeightsFileError(
            f"{path.name}: unknown checkpoint type; accepted: {', '.join(SUFFIXES)} "
            "(.pkl for detectron2 files, the others for files written by torch.save)"
        )
    loaded = _read_pickle(path) if path.suffix == ".pkl" else _read_torch(path)
    source_format, state, dropped = _to_mmdet_layout(path, _arrays(path, loaded))
    _check_architecture(path, source_format, state, architecture)
    return ConvertedWeights(
        state_dict=state,
        architecture=architecture,
        source_format=source_format,
        dropped=dict(sorted(dropped.items())),
    )


# reading ------------------------------------------------------------------------------------


def _numpy_function(module: str, name: str) -> Any:
    """numpy 2 moved numpy.core to numpy._core; take the function from whichever exists."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module}.{name}")


@lru_cache(maxsize=1)
def _numpy_globals() -> dict[str, Any]:
    """What a pickle of numpy arrays names; building these runs no code from the file."""
    import numpy as np

    found: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for module, name in (
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),  # arrays pickled with protocol 5
    ):
        function = _numpy_function(module, name)
        for package in ("numpy.core", "numpy._core"):  # pickles name the writer's package
            found[f"{package}.{module}.{name}"] = function
    for name in dir(np.dtypes):
        value = getattr(np.dtypes, name)
        if isinstance(value, type) and issubclass(value, np.dtype):
            found[f"numpy.dtypes.{name}"] = value
    return found


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Pickle protocol 2 writes bytes as _codecs.encode(text, 'latin1'); nothing else."""
    if encoding not in ("latin1", "latin-1"):
        raise _ForbiddenGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_CONTAINERS: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "_codecs.encode": _latin1_encode,
    **{
        f"{module}.{kind.__name__}": kind
        for module in ("builtins", "__builtin__")  # __builtin__: Python 2 pickles
        for kind in (set, frozenset, bytearray)
    },
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle names something other than numpy arrays and plain containers."""


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers; any other global is refused by name."""

    def find_class(self, module: str, name: str) -> Any:
        found = {**_numpy_globals(), **_CONTAINERS}.get(f"{module}.{name}")
        if found is None:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return found


def _refused(path: Path, names: list[str]) -> WeightsFileError:
    return WeightsFileError(
        f"{path.name} is refused: it is a pickle that names {', '.join(names[:MAX_LISTED])}, "
        "which is not built when loading weights because unpickling it could run code; "
        "accepted: files that hold only tensors, numpy arrays and plain containers (save "
        "them with torch.save({'state_dict': model.state_dict()}, path))"
    )


def _unreadable(path: Path, why: str) -> WeightsFileError:
    kind = "detectron2 pickle" if path.suffix == ".pkl" else "PyTorch checkpoint"
    return WeightsFileError(
        f"{path.name} is not a readable {kind} ({why or 'the file ends early'}); accepted: a "
        "file written by torch.save (.pth, .pth.tar, .pt) holding a state dict, or a "
        "detectron2 .pkl holding {'model': {name: numpy array}}"
    )


def _read_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            # latin1: the MSRA files in detectron2's model zoo were pickled by Python 2
            return _ArrayUnpickler(handle, encoding="latin1").load()
    except _ForbiddenGlobal as exc:
        raise _refused(path, [str(exc)]) from None
    except Exception as exc:  # noqa: BLE001 - garbage can fail anywhere inside the unpickler
        raise _unreadable(path, f"{type(exc).__name__}: {exc}"[:300]) from None


def _read_torch(path: Path) -> Any:
    import torch

    try:
        # numpy arrays and scalars are common in checkpoint metadata and are harmless
        with torch.serialization.safe_globals(list(_numpy_globals().values())):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - garbage can fail anywhere inside the unpickler
        message = str(exc)
        names = re.findall(r"GLOBAL ([\w.]+)", message) or _unsafe_globals(path)
        if names:
            raise _refused(path, list(dict.fromkeys(names))) from None
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        # torch's first lines explain weights_only in general; the cause follows them
        why = next((line for line in lines if "weights_only" not in line), "")
        why = why.removeprefix("WeightsUnpickler error: ").split(". ")[0]
        raise _unreadable(path, why[:300]) from None


def _unsafe_globals(path: Path) -> list[str]:
    """Globals named by a file torch.load refused, found by pickletools (which runs nothing)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                pickled = [name for name in archive.namelist() if name.endswith("/data.pkl")]
                data = archive.read(pickled[0]) if pickled else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    safe = {*_numpy_globals(), *_CONTAINERS}
    return [n for n in _pickled_globals(data) if n not in safe and not n.startswith("torch.")]


def _pickled_globals(data: bytes) -> list[str]:
    """module.name of each GLOBAL and STACK_GLOBAL in the pickles at the start of data."""
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):  # a legacy torch file starts with several pickles
        strings: list[str] = []
        memo: dict[int, str | None] = {}
        top_is_string = False
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                pushed_string = False
                if opcode.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif "UNICODE" in opcode.name and isinstance(arg, str):
                    strings.append(arg)
                    pushed_string = True
                elif opcode.name == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if top_is_string else None
                    pushed_string = top_is_string
                elif opcode.name.endswith("GET") and isinstance(arg, int) and memo.get(arg):
                    strings.append(memo[arg] or "")
                    pushed_string = True
                top_is_string = pushed_string
        except (ValueError, EOFError):
            break
    return list(dict.fromkeys(found))


def _arrays(path: Path, loaded: Any) -> dict[str, Any]:
    """The name -> tensor (or numpy array) mapping inside a checkpoint's wrapper dicts."""
    import numpy as np
    import torch

    if not isinstance(loaded, Mapping):
        raise WeightsFileError(
            f"{path.name} holds a {type(loaded).__name__}; expected a dict of tensors or a "
            "dict with 'state_dict' (PyTorch) or 'model' (detectron2)"
        )

    def is_array(value: Any) -> bool:
        return isinstance(value, torch.Tensor | np.ndarray)

    for wrapper in ("state_dict", "model", "blobs"):
        inner = loaded.get(wrapper)
        if isinstance(inner, Mapping) and any(is_array(v) for v in inner.values()):
            loaded = inner
            break
    arrays = {k: v for k, v in loaded.items() if isinstance(k, str) and is_array(v)}
    if not arrays:
        listed = ", ".join(map(str, list(loaded)[:MAX_LISTED])) or "none"
        raise WeightsFileError(
            f"{path.name} holds no tensors (top-level keys: {listed}); expected a state dict "
            "or a dict with 'state_dict' or 'model'"
        )
    return arrays


# converting ---------------------------------------------------------------------------------


def _detect(path: Path, keys: list[str]) -> tuple[str, str]:
    """The source format and the prefix of its backbone keys."""
    caffe2 = [key for key in keys if _CAFFE2_KEY.match(key)]
    if caffe2:
        raise WeightsFileError(
            f"{path.name} uses Caffe2 names ({', '.join(caffe2[:3])}): these MSRA caffe-style "
            "ResNets expect BGR input and stride in the 1x1 convolution, while DetLab trains "
            "pytorch-style ResNets on RGB; accepted: detectron2 files with stem.*/res2.* names "
            "(converted from torchvision or MoCo) or a torchvision/MoCo/OpenSelfSup checkpoint"
        )
    for source_format, prefix in _PREFIXES:
        inner = [key.removeprefix(prefix) for key in keys if key.startswith(prefix)]
        if inner:  # detectron2's C4 detectors keep stem.*/resN.* names under backbone.
            named = "detectron2" if any(_DETECTRON2_KEY.match(key) for key in inner) else None
            return named or source_format, prefix
    if any(_DETECTRON2_KEY.match(key) for key in keys):
        return "detectron2", ""
    if any(_RESNET_KEY.match(key) for key in keys):
        return "torchvision", ""
    raise WeightsFileError(
        f"{path.name} holds no ResNet backbone keys (found {', '.join(keys[:MAX_LISTED])}, "
        f"...); accepted layouts: {LAYOUTS}"
    )


def _detectron2_name(key: str) -> str:
    for pattern, replace in _DETECTRON2_RULES:
        match = pattern.match(key)
        if match:
            return replace(match) + key[match.end() :]
    return key


def _tensor(path: Path, key: str, value: Any) -> torch.Tensor:
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    try:
        return torch.from_numpy(np.array(value, order="C", copy=True))
    except TypeError:
        raise WeightsFileError(
            f"{path.name}: {key} is a numpy array of {value.dtype}; expected numbers"
        ) from None


def _group(key: str, prefix: str) -> str:
    """How a dropped key is reported: its first name, two when it shares the prefix's first."""
    parts = key.split(".")
    return ".".join(parts[:2]) if prefix and parts[0] == prefix.split(".")[0] else parts[0]


def _to_mmdet_layout(
    path: Path, arrays: dict[str, Any]
) -> tuple[str, dict[str, torch.Tensor], Counter[str]]:
    keys = [key.removeprefix("module.") for key in arrays]
    source_format, prefix = _detect(path, keys)
    state: dict[str, torch.Tensor] = {}
    dropped: Counter[str] = Counter()
    for original, key in zip(arrays, keys, strict=True):
        stage4 = _ROI_HEAD_STAGE4.match(key)
        if stage4:
            name = key[stage4.end() :]
        elif key.startswith(prefix):
            name = key.removeprefix(prefix)
        else:  # key encoder, queue, neck, heads, ...
            dropped[_group(key, prefix)] += 1
            continue
        if source_format == "detectron2":
            name = _detectron2_name(name)
        if _RESNET_KEY.match(name):
            state[name] = _tensor(path, original, arrays[original])
        else:  # a classifier or projection head on top of the backbone
            dropped[name.split(".")[0]] += 1
    return source_format, state, dropped


# checking -----------------------------------------------------------------------------------


@lru_cache(maxsize=len(ARCHITECTURES))
def _expected_shapes(architecture: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of mmdet's own backbone, built on the meta device (no memory, no init)."""
    import torch
    from mmdet.models import backbones

    entry = BACKBONES[architecture]
    with torch.device("meta"):
        model = getattr(backbones, entry.mmdet_type)(**entry.arch)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _differences(state: dict[str, torch.Tensor], architecture: str) -> dict[str, list[str]]:
    """Keys that differ from architecture's backbone, by kind; mismatches give both shapes."""
    expected = _expected_shapes(architecture)
    found = {key: tuple(value.shape) for key, value in state.items()}
    return {
        "shape mismatches": [
            f"{key}: expected {list(shape)}, found {list(found[key])}"
            for key, shape in expected.items()
            if key in found and found[key] != shape
        ],
        # torchvision and detectron2 files have no num_batches_tracked; mmdet starts it at 0
        "missing keys": [
            key for key in expected if key not in found and not key.endswith("num_batches_tracked")
        ],
        "unexpected keys": [key for key in found if key not in expected],
    }


def _check_architecture(
    path: Path, source_format: str, state: dict[str, torch.Tensor], architecture: str
) -> None:
    differences = _differences(state, architecture)
    if not any(differences.values()):
        return
    parts = []
    for kind, items in differences.items():
        if items:
            more = ", ..." if len(items) > MAX_LISTED else ""
            parts.append(f"{len(items)} {kind} ({'; '.join(items[:MAX_LISTED])}{more})")
    fits = [
        other
        for other in ARCHITECTURES
        if other != architecture and not any(_differences(state, other).values())
    ]
    hint = (
        f"the weights fit {fits[0]}: import them with architecture {fits[0]!r}"
        if fits
        else f"accepted: the weights of a {architecture} backbone, or the architecture the "
        f"file was trained with (one of {', '.join(ARCHITECTURES)})"
    )
    absent = {"missing keys": "missing", "unexpected keys": f"not in a {architecture} backbone"}
    problems = [
        {"key": item.split(":")[0], "problem": item.partition(": ")[2] or absent[kind]}
        for kind, items in differences.items()
        for item in items[:20]
    ]
    raise WeightsFileError(
        f"{path.name} ({source_format} layout) does not match the requested architecture "
        f"{architecture}: backbone keys or shapes differ: {', '.join(parts)}; {hint}",
        problems=problems,
    )
