"""DeepSpeed checkpoints that resume without running code from the checkpoint files.

DeepSpeed loads its checkpoint files with `torch.load(weights_only=False)`: full pickle,
so a file planted in the checkpoint folder (or a shared `storage_path` bucket) would run
its code in a training worker. Resume loads them with `weights_only=True` instead, which
builds only tensors, plain containers and the few DeepSpeed types listed here; anything
else is refused before it is built, and the run stops.
"""
from __future__ import annotations

import functools
import pickle
from typing import Any, Optional


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds objects other than tensors and plain data."""


def use_safe_loading(engine: Any) -> None:
    """Make `engine.load_checkpoint` read every file with `weights_only=True`."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:
        raise TypeError(f"unexpected DeepSpeed checkpoint engine {type(current).__name__}")
    safe = _safe_engine_class().__new__(_safe_engine_class())
    safe.__dict__.update(current.__dict__)  # DeepSpeed's own settings (serialization, name)
    engine.checkpoint_engine = safe


def refusal(error: BaseException) -> Optional[UnsafeCheckpointError]:
    """The UnsafeCheckpointError behind a worker's failure (Ray wraps it), if any."""
    for candidate in (getattr(error, "cause", None), error):
        if isinstance(candidate, UnsafeCheckpointError):
            text = str(candidate)
            start = text.find("refusing to resume")
            return UnsafeCheckpointError(text[start:].splitlines()[0] if start >= 0 else text)
    return None


@functools.cache
def _safe_engine_class() -> type:
    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    # What DeepSpeed 0.19's ZeRO-2/3 states hold besides tensors: the loss scaler (plain
    # numbers), the ZeRO stage enum and fragment offsets (a dataclass of two ints).
    safe_globals = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]

    class SafeCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine, loading with `weights_only=True`."""

        def load(self, path: str, map_location: Any = None) -> Any:
            try:
                with torch.serialization.safe_globals(safe_globals):
                    return torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as e:
                lines = str(e).splitlines() or [type(e).__name__]
                # torch names the global it refused, e.g. "unsupported GLOBAL posix.system".
                reason = next((line.strip() for line in lines if "unsupported" in line.lower()),
                              lines[0].strip())
                raise UnsafeCheckpointError(
                    f"refusing to resume from {path}: it holds more than tensors and plain "
                    f"data ({reason}), so this run did not write it; delete the run's "
                    f"checkpoints to start over") from None

    return SafeCheckpointEngine
