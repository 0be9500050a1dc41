"""Device checks shared by the public entry points: an [`AttnkitError`][attnkit.errors.AttnkitError] before any work.

Without them a device problem surfaces deep inside torch as its own exception —
``AssertionError: Torch not compiled with CUDA enabled``, ``NotImplementedError: Cannot copy out
of meta tensor`` or ``RuntimeError: Tensor on device cpu is not on the expected device meta`` —
after some work was done. Every check here costs a few attribute reads (no device sync).

Example:
    >>> import torch
    >>> from attnkit._devices import check_device, check_on
    >>> check_device("cpu")
    device(type='cpu')
    >>> check_on(torch.device("cpu"), "x", mask=torch.ones(2, dtype=torch.bool))
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import AttnkitError

__all__ = ["check_device", "check_on", "check_data"]


def check_device(device: torch.device | str | int | None, name: str = "device") -> torch.device | None:
    """``device`` as a `torch.device` this machine can allocate on (``None`` stays ``None``)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise AttnkitError.build(f"{name} as a torch device such as 'cpu' or 'cuda:0'", repr(device),
                                 "check the spelling") from None
    if dev.type in ("cpu", "meta"):
        return dev
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else getattr(torch.backends, "mps", None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        kind = dev.type.upper() if dev.type in ("cuda", "mps", "xpu") else dev.type
        raise AttnkitError.build(f"{name} that this machine has", f"{device!r} (torch sees no {kind} device here)",
                                 f"use {name}='cpu', or a torch build and machine with {kind}")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise AttnkitError.build(f"{name} index below {count()} ({dev.type} devices here)", repr(device),
                                 f"use {name}='{dev.type}:0'")
    return dev


def check_on(device: torch.device, like: str, **tensors: Tensor | None) -> None:
    """Every given tensor (``None`` skipped) is on ``device``, the device of the argument ``like``."""
    for name, t in tensors.items():
        if isinstance(t, Tensor) and t.device != device:
            raise AttnkitError.build(f"{name} on {device} like {like}", f"{name} on {t.device}",
                                     f"move it with {name}.to('{device}')")


def check_data(name: str, t: object) -> None:
    """``t`` is not a meta tensor: its values are read (lengths, indices, targets)."""
    if isinstance(t, Tensor) and t.device.type == "meta":
        raise AttnkitError.build(f"{name} with values (a cpu or cuda tensor)", "a meta tensor (shape only)",
                                 f"create {name} on the data's device, e.g. torch.tensor([...], device=query.device)")
