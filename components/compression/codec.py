"""Compression transforms and their pickle-free storage (torch only: shipped inside every registered
compressed model and imported there under a content-derived name, like the architecture code).

A quantised module's ``state_dict`` holds quantised tensors, packed-weight tuples, dtypes and (for
an LSTM) TorchScript objects, none of which safetensors stores. :func:`to_tensors` splits them into
plain tensors (int8 values, scales, zero points) plus a JSON-ready ``layout`` saying how to put them
back; :func:`rebuild` builds the float network's quantised *structure* again with the same transform
(:func:`quantise` on a zero batch) and loads those tensors into it. Nothing is unpickled.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

METHODS = ("dynamic_int8", "static_int8", "prune")
SEP = "::"  # between a state key and the part of it a stored tensor holds (no state key contains it)


@contextlib.contextmanager
def quantization_api() -> Iterator[None]:
    """``torch.ao.quantization`` calls with its deprecation notices silenced, and only those: in this
    torch its eager int8 kernels are the ones that run faster than float on a CPU (measured in
    docs/compression.md; torchao's eager int8 ran slower), and the notices repeat on every model."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        # the x86 default qconfig's own observers, built with reduce_range, which torch plans to retire
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max to specify the range")
        yield


@contextlib.contextmanager
def int8_kernels_allowed() -> Iterator[None]:
    """Int8 CPU kernels with ``torch.use_deterministic_algorithms`` off for the duration: training
    turns it on process-wide (the flow trains in the same process), and torch then refuses the
    quantised ops' output resizing, which only flags uninitialised memory the kernel overwrites."""
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def quantised_engine() -> str:
    """x86 kernels (fbgemm + oneDNN) where the CPU has them, else ARM's qnnpack; process-wide in torch."""
    supported = torch.backends.quantized.supported_engines
    engine = "x86" if "x86" in supported else "qnnpack"
    torch.backends.quantized.engine = engine
    return engine


def quantise(network: nn.Module, method: str, calibration: Iterable[torch.Tensor] = ()) -> nn.Module:
    """``network`` (float, eval mode, CPU) transformed by ``method``; ``calibration``: input batches
    for ``static_int8``'s activation ranges. ``prune`` changes no structure (see prune.py)."""
    network.eval()
    if method == "prune":
        return network
    with quantization_api(), int8_kernels_allowed():
        from torch.ao import quantization as tq

        quantised_engine()
        if method == "dynamic_int8":
            model = tq.quantize_dynamic(network, {nn.Linear, nn.LSTM}, dtype=torch.qint8)
            _off_the_fused_path(model)
            return model
        if method != "static_int8":
            raise ValueError(f"unknown compression method {method!r} (known: {', '.join(METHODS)})")
        wrapped = Int8Wrapper(network).eval()  # quantise the input, dequantise the logits
        fused = _relu_pairs(network)
        if fused:
            tq.fuse_modules(network, fused, inplace=True)
        wrapped.qconfig = tq.get_default_qconfig(torch.backends.quantized.engine)
        tq.prepare(wrapped, inplace=True)
        with torch.inference_mode():
            for batch in calibration:
                wrapped(batch)
        return tq.convert(wrapped, inplace=True)


class Int8Wrapper(nn.Module):
    """``QuantWrapper``'s three modules (same state keys), its forward under :func:`int8_kernels_allowed`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        from torch.ao import quantization as tq

        self.quant = tq.QuantStub()
        self.dequant = tq.DeQuantStub()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with int8_kernels_allowed():
            return self.dequant(self.module(self.quant(x)))  # (B, ...) float -> int8 -> (B, K) float


def _relu_pairs(network: nn.Module) -> list[list[str]]:
    """Names of (Conv2d | Linear, ReLU) neighbours in every Sequential: fused into one int8 kernel."""
    pairs = []
    for name, module in network.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (first, layer), (second, after) in itertools.pairwise(children):
            if isinstance(layer, nn.Conv2d | nn.Linear) and isinstance(after, nn.ReLU):
                prefix = f"{name}." if name else ""
                pairs.append([f"{prefix}{first}", f"{prefix}{second}"])
    return pairs


def _off_the_fused_path(model: nn.Module) -> None:
    """Keep encoder layers with int8 linears off PyTorch's fused float kernel: its eligibility check
    reads ``linear1.weight`` as a tensor, which a quantised linear has as a method. A (no-op) forward
    pre-hook is the documented way a layer opts out of that path."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and isinstance(module.linear1, DynamicLinear):
            module.register_forward_pre_hook(_unchanged)


def _unchanged(module: nn.Module, args: tuple[Any, ...]) -> None:
    return None


def rebuild(
    network: nn.Module,
    method: str,
    layout: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    example: torch.Tensor,
) -> nn.Module:
    """The compressed model: float ``network`` (built from model.json) given ``method``'s structure
    (calibrated on ``example``, values replaced next) and the stored ``tensors`` loaded into it."""
    model = quantise(network, method, [example])
    loaded, lstm = from_tensors(tensors, layout)
    with quantization_api(), int8_kernels_allowed():
        for name, weights in lstm.items():
            model.get_submodule(name).set_weight_bias(weights)  # type: ignore[operator]
        current = model.state_dict()  # its LSTM cells packed just now from the stored tensors
        state = collections.OrderedDict(loaded)
        state.update((key, value) for key, value in current.items() if "._all_weight_values." in key)
        # quantised modules read their format version from the state's metadata: the same structure's
        state._metadata = current._metadata  # type: ignore[attr-defined]
        try:
            model.load_state_dict(state)
        except (RuntimeError, KeyError) as exc:
            raise ValueError(f"stored tensors do not fit the {method} model: {exc}") from None
    return model.eval()


def to_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``model``'s state as plain tensors and the JSON ``layout`` that :func:`from_tensors` reads."""
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {"state": {}, "lstm": {}}
    lstm_names = [name for name, module in model.named_modules() if hasattr(module, "_all_weight_values")]
    for name in lstm_names:
        weights = model.get_submodule(name)._weight_bias()  # type: ignore[operator]
        merged = {**weights["weight"], **weights["bias"]}
        layout["lstm"][name] = {
            key: _encode(f"{name}.{key}", value, tensors) for key, value in merged.items()
        }
    for key, value in model.state_dict().items():
        if not any(key.startswith(f"{name}._all_weight_values") for name in lstm_names):
            layout["state"][key] = _encode(key, value, tensors)
    return tensors, layout


def _encode(key: str, value: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Store ``value`` under ``key`` in ``tensors``; how to read it back."""
    if value is None:
        return {"kind": "none"}
    if isinstance(value, torch.dtype):
        return {"kind": "dtype", "dtype": str(value).removeprefix("torch.")}
    if isinstance(value, tuple | list):
        return {
            "kind": "tuple",
            "items": [_encode(f"{key}{SEP}{i}", item, tensors) for i, item in enumerate(value)],
        }
    tensor = value.detach().cpu()
    if tensor.is_quantized:
        tensors[f"{key}{SEP}int"] = tensor.int_repr().contiguous()
        if tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            tensors[f"{key}{SEP}scale"] = torch.tensor([tensor.q_scale()], dtype=torch.float64)
            tensors[f"{key}{SEP}zero_point"] = torch.tensor([tensor.q_zero_point()], dtype=torch.int64)
            return {"kind": "per_tensor"}
        tensors[f"{key}{SEP}scale"] = _narrowed(tensor.q_per_channel_scales(), torch.float32)
        tensors[f"{key}{SEP}zero_point"] = _narrowed(tensor.q_per_channel_zero_points(), torch.int32)
        return {"kind": "per_channel", "axis": int(tensor.q_per_channel_axis())}
    flat = tensor.contiguous().reshape(-1)
    nonzero = torch.nonzero(flat).reshape(-1)
    if tensor.is_floating_point() and flat.numel() > 256 and 2 * len(nonzero) < flat.numel():
        # mostly zeros (pruned): values and int32 positions take less room than the dense tensor
        tensors[f"{key}{SEP}values"] = flat[nonzero].contiguous()
        tensors[f"{key}{SEP}positions"] = nonzero.to(torch.int32)
        return {
            "kind": "sparse",
            "shape": list(tensor.shape),
            "dtype": str(tensor.dtype).removeprefix("torch."),
        }
    tensors[key] = tensor.contiguous()
    return {"kind": "tensor"}


def _narrowed(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values`` (per-channel float64 scales, int64 zero points) in ``dtype`` when that is exact
    (observers compute in float32): half the bytes; read back in the width torch wants."""
    narrow = values.to(dtype)
    return (narrow if torch.equal(narrow.to(values.dtype), values) else values).contiguous()


def from_tensors(
    tensors: dict[str, torch.Tensor], layout: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Inverse of :func:`to_tensors`: the state dict, and per LSTM module its weights and biases."""
    state = {key: _decode(key, entry, tensors) for key, entry in layout["state"].items()}
    lstm = {
        name: {key: _decode(f"{name}.{key}", entry, tensors) for key, entry in entries.items()}
        for name, entries in layout.get("lstm", {}).items()
    }
    return state, lstm


def _decode(key: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    kind = entry["kind"]
    if kind == "none":
        return None
    if kind == "dtype":
        return getattr(torch, entry["dtype"])
    if kind == "tuple":
        return tuple(_decode(f"{key}{SEP}{i}", item, tensors) for i, item in enumerate(entry["items"]))
    if kind == "per_tensor":
        scale, zero = tensors[f"{key}{SEP}scale"], tensors[f"{key}{SEP}zero_point"]
        return torch._make_per_tensor_quantized_tensor(tensors[f"{key}{SEP}int"], float(scale), int(zero))
    if kind == "per_channel":
        scales = tensors[f"{key}{SEP}scale"].double()
        zeros = tensors[f"{key}{SEP}zero_point"].long()
        return torch._make_per_channel_quantized_tensor(
            tensors[f"{key}{SEP}int"], scales, zeros, entry["axis"]
        )
    if kind == "sparse":
        dense = torch.zeros(torch.Size(entry["shape"]).numel(), dtype=getattr(torch, entry["dtype"]))
        dense[tensors[f"{key}{SEP}positions"].long()] = tensors[f"{key}{SEP}values"]
        return dense.reshape(entry["shape"])
    if kind == "tensor":
        return tensors[key]
    raise ValueError(f"{key}: unknown stored kind {kind!r}")
