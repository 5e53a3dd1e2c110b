"""How the networks run, not what they compute: memory layout, optimizer kernels, torch.compile.

Mixed precision and cuDNN autotuning are Lightning's own Trainer switches
(``trainer.precision``, ``trainer.benchmark``): ``auto_precision`` chooses the precision by
hardware for ``trainer.precision=auto``; the ``Speed`` switches are the rest. Every switch
changes results by float rounding only: a run resumed with other settings goes on training.
"""

from __future__ import annotations

import functools
import inspect
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcgan.errors import UserInputError, choice, require

# torch.compile's modes. reduce-overhead replays CUDA graphs (on a GPU; a CPU ignores it).
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class Speed:
    """Performance switches of a training run (config section ``speed``).

    Args:
        channels_last: convolution weights, inputs and activations in NHWC layout.
        fused_optimizer: the optimizers' fused kernel (one kernel for all parameters instead
            of a loop over them): ``True``, ``False``, or ``"auto"`` = on a GPU.
        compile: ``torch.compile`` G and D in place (``nn.Module.compile``), so the state-dict
            keys, and so checkpoints, stay the same as without it.
        compile_mode: one of ``COMPILE_MODES``.

    (A plain class, not a dataclass: Hydra would turn a dataclass passed to ``instantiate``
    into a config node.)
    """

    def __init__(
        self,
        *,
        channels_last: bool,
        fused_optimizer: bool | str,
        compile: bool,
        compile_mode: str,
    ) -> None:
        self.channels_last, self.fused_optimizer = channels_last, fused_optimizer
        self.compile, self.compile_mode = compile, compile_mode
        for name in ("channels_last", "compile"):
            require(
                isinstance(getattr(self, name), bool), f"speed.{name}", getattr(self, name), "must be true or false"
            )
        auto_or_bool = isinstance(fused_optimizer, bool) or fused_optimizer == "auto"
        require(auto_or_bool, "speed.fused_optimizer", fused_optimizer, "must be true, false or auto")
        choice(compile_mode, "speed.compile_mode", COMPILE_MODES)

    def __repr__(self) -> str:
        return f"Speed({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def apply(self, *networks: nn.Module) -> None:
        """Convert ``networks`` to this layout and compile them (in place; idempotent)."""
        for net in networks:
            net.to(memory_format=self.memory_format)
            if self.compile and getattr(net, "_compiled_call_impl", None) is None:
                net.compile(mode=self.compile_mode)

    def fused_on(self, device: torch.device) -> bool:
        return self.fused_optimizer is True or (self.fused_optimizer == "auto" and device.type == "cuda")

    def optimizer_factory(self, factory: Any, device: torch.device) -> Any:
        """``factory`` (parameters -> optimizer), taking the fused kernel on ``device`` if this
        setting and the optimizer allow it."""
        if self.fused_on(device) and accepts_fused(factory):
            return functools.partial(factory, fused=True)
        return factory

    def check_optimizer(self, factory: Any, key: str) -> None:
        """Refuse ``fused_optimizer: true`` for an optimizer without a fused kernel."""
        if self.fused_optimizer is True and not accepts_fused(factory):
            name = getattr(getattr(factory, "func", factory), "__name__", repr(factory))
            raise UserInputError(
                f"speed.fused_optimizer=true, but optimizer.{key} ({name}) has no fused kernel; "
                "use Adam, AdamW or SGD, or set speed.fused_optimizer=auto"
            )


def accepts_fused(factory: Any) -> bool:
    """Whether ``factory(params, fused=True)`` is accepted (torch's Adam, AdamW, SGD, ...)."""
    try:
        return "fused" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def auto_precision(accelerator: str) -> tuple[str, str]:
    """``trainer.precision=auto``: ``(Lightning precision, why)`` for the ``trainer.accelerator``
    given. bfloat16 autocast (``bf16-mixed``) where the device computes in bfloat16 natively: a
    CUDA GPU that has it (Ampere and later), or a CPU with AVX512-BF16 or AMX instructions
    (1.45x float32's images/s at 28 px on a 2-core AMD EPYC with avx512_bf16, the same FID:
    docs/performance.md); float32 elsewhere, where bfloat16 would be emulated and slower. The
    choice depends on the machine only, so a seed gives the same numbers on the same machine."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        name = torch.cuda.get_device_name()
        if torch.cuda.get_device_capability() >= (8, 0):  # Ampere on: bfloat16 tensor cores
            return "bf16-mixed", f"the GPU ({name}) computes in bfloat16"
        return "32-true", f"the GPU ({name}) has no native bfloat16"
    if accelerator not in ("cpu", "auto"):
        return "32-true", f"bfloat16 is not chosen by itself on trainer.accelerator={accelerator}"
    found = cpu_bfloat16()
    if found:
        return "bf16-mixed", f"this CPU has {' and '.join(found)} instructions: bfloat16 runs natively"
    return "32-true", "this CPU has neither AVX512-BF16 nor AMX instructions: bfloat16 would be slower than float32"


def cpu_bfloat16() -> list[str]:
    """The instruction sets of this CPU that compute in bfloat16 (AVX512-BF16, AMX), as torch's
    own kernels see them."""
    sets = (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
    return [name for name, has in sets if getattr(torch.cpu, has, lambda: False)()]


def device_name(device: torch.device) -> str:
    """The hardware a figure was measured on: the GPU's name, or ``cpu: <model name>``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {cpu_name()}"


def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s), for figures that must name their hardware."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# How the networks run with no speed switch: float32 NCHW, torch's default optimizer kernels,
# not compiled (a model built without a config, and the benchmark's baseline).
PLAIN = Speed(channels_last=False, fused_optimizer=False, compile=False, compile_mode="default")
