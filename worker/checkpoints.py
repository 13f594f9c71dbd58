"""Loading checkpoints safely on torch >= 2.6, where torch.load defaults to weights_only=True."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["own_checkpoint_globals", "check_user_checkpoint", "allow_own_checkpoints"]


def own_checkpoint_globals() -> list[Any]:
    """Types that mmengine writes into the checkpoints our own runs save (never user files)."""
    import numpy as np
    from mmengine.logging import HistoryBuffer

    found: list[Any] = [HistoryBuffer, np.dtype, np.ndarray]
    # numpy 1.x pickles arrays through numpy.core.multiarray._reconstruct and scalars via
    # numpy.core.multiarray.scalar; dtypes appear as their own classes (np.dtypes.Float64DType)
    from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[attr-defined]

    found += [_reconstruct, scalar]
    found += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    # numpy pickles dtype classes as getattr(numpy.dtypes, name); acceptable only because
    # these files are written by our own runs under the artifact root, never uploaded
    found.append(getattr)
    return found


@contextlib.contextmanager
def allow_own_checkpoints() -> Iterator[None]:
    """Within this block torch.load accepts what our own mmengine checkpoints contain."""
    import torch

    with torch.serialization.safe_globals(own_checkpoint_globals()):
        yield


def check_user_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a user-supplied checkpoint with weights_only=True; a readable error if it fails."""
    import pickle

    import torch

    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ValueError(
            f"checkpoint {path} cannot be loaded as plain weights "
            f"(torch.load weights_only=True): {_refusal(exc)}"
        ) from None
    if not isinstance(loaded, dict):
        raise ValueError(
            f"checkpoint {path} holds a {type(loaded).__name__}; expected a dict "
            "of tensors or a dict with a 'state_dict'"
        )
    return loaded


def _refusal(exc: BaseException) -> str:
    """Why torch refused a file, in a line: the type it would not unpickle, when that is it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch bolds a warning with ANSI
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused is None:
        return text.splitlines()[0] if text else type(exc).__name__
    name = refused.group(1)
    reason = f"it holds a {name}, which is not a tensor or plain data"
    if name.startswith("mmengine."):
        reason += (
            " (mmengine's training state); keep only its weights and meta where you trust the "
            "file: torch.save({'state_dict': c['state_dict'], 'meta': c['meta']}, path)"
        )
    return reason
