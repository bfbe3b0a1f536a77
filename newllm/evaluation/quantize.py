"""Post-training int8 quantization of the nn.Linear layers, for CPU inference, with size, quality and speed measured.

The original (seed-spec 2.3, 7.2) applied ``quantize_dynamic`` *before* training, which leaves untrainable CPU-only
layers, and reported a "size" of parameters() x 1 byte, which no longer counts the packed weights; nothing was
measured. Here a trained fp32 model is copied and quantized, then compared with the fp32 model on the same data.

Backends (``quantize_int8(model, backend=...)``):

- ``"torchao"``: torchao's int8 weight-only ``quantize_`` (used by "auto" when torchao is installed; not installed
  in this project's test environment, so this path is untested here).
- ``"dynamic"``: ``torch.ao.quantization.quantize_dynamic`` (int8 weights, activations quantized on the fly, fast int8
  matmuls on CPU). Deprecated in favour of torchao but still present in torch 2.13; its deprecation warnings are
  silenced inside the call.
- ``"weight_only"``: :class:`Int8Linear`, written here: int8 weights with per-output-channel symmetric scales,
  dequantized on the fly (the matmul runs in fp32). Smaller, not faster.

Layers whose weight the code reads directly instead of calling the module (CVFP ``ContextLayer`` Linears and the gated
LM's ``first`` layer are applied with F.linear on *slices* of ``.weight``) cannot become packed modules whatever the
backend: they always get :class:`Int8Linear`, whose ``.weight`` is a dequantized tensor the slicing code can use.
Linears whose weight is shared with another module (a head tied to the embedding) stay fp32, like the embedding.

A quantized model is for inference only: its parameters do not require grad, and each quantized layer refuses to run
in training mode with a message saying to train the fp32 model and quantize afterwards.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import statistics
import tempfile
import time
import warnings
from typing import Callable, Union

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from newllm.evaluation.lm_metrics import LMEval

BACKENDS = ("auto", "torchao", "dynamic", "weight_only")
QUANTIZED_ATTR = "int8_backend"  # set on the root of a quantized model: the backend's name


class Int8Linear(nn.Linear):
    """A Linear layer stored as int8 weights with one fp32 scale per output channel (symmetric, no zero point).

    ``weight`` is the dequantized fp32 matrix (computed on each access), so code that reads or slices ``.weight`` and
    ``.bias`` keeps working; it subclasses nn.Linear so code that checks ``isinstance(m, nn.Linear)`` before reading
    the weight (the lean no-grad path of newllm.recurrence) still recognises it.
    """

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate an fp32 weight
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """Quantize: scale_o = max_i |W_oi| / 127, q = round(W / scale) in [-127, 127] (all-zero rows get scale 1)."""
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1) / 127.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        return cls(q, scale, bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def _refuse_training(module: nn.Module, args) -> None:
    """Forward pre-hook on every quantized layer."""
    if module.training:
        raise RuntimeError(
            "this model is int8-quantized for inference only and cannot be trained (quantized weights have no "
            "gradients). Call .eval() to run it; to train, train the fp32 model and quantize it afterwards with "
            "newllm.evaluation.quantize.quantize_int8."
        )


# ------------------------------------------------------------------------------------------ which layers

def sliced_linear_names(model: nn.Module) -> set[str]:
    """Names of the Linears whose ``.weight`` the code reads directly instead of calling the module: every Linear of
    a CVFP ContextLayer (sliced in model.py; read, residual included, by newllm.recurrence's no-grad path) and the
    gated LM's ``first`` layer (sliced)."""
    from newllm.models.cvfp import ContextLayer
    from newllm.models.gated import GatedContextLM

    names = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, ContextLayer):
            names.update(prefix + child for child, sub in module.named_children() if isinstance(sub, nn.Linear))
        elif isinstance(module, GatedContextLM):
            names.add(prefix + "first")
    return names


def _shared_weight_linear_names(model: nn.Module) -> set[str]:
    """Linears whose weight tensor also belongs to another module (e.g. a head tied to the embedding)."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(name)
    shared = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and len(owners.get(id(module.weight), [])) > 1:
            shared.add(name)
    return shared


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# ------------------------------------------------------------------------------------------ backends

def torchao_available() -> bool:
    try:
        importlib.import_module("torchao")
    except ImportError:
        return False
    return True


def dynamic_available() -> bool:
    """torch.ao's quantize_dynamic exists and a quantized CPU engine is present."""
    try:
        from torch.ao.quantization import quantize_dynamic  # noqa: F401
    except ImportError:
        return False
    return any(engine != "none" for engine in torch.backends.quantized.supported_engines)


def resolve_backend(backend: str = "auto") -> str:
    """The backend "auto" means here (torchao, else dynamic, else weight_only); errors name what is missing."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not supported: use one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        if torchao_available():
            return "torchao"
        return "dynamic" if dynamic_available() else "weight_only"
    if backend == "torchao" and not torchao_available():
        raise RuntimeError(
            "backend='torchao' was requested but torchao is not installed: install a torchao build that matches your "
            "torch version, or use backend='dynamic' or 'weight_only'"
        )
    if backend == "dynamic" and not dynamic_available():
        raise RuntimeError(
            "backend='dynamic' needs torch.ao.quantization.quantize_dynamic and a quantized CPU engine, which this "
            "torch build lacks: use backend='weight_only' (or 'torchao' when installed)"
        )
    return backend


def _apply_dynamic(model: nn.Module, names: list[str]) -> list[nn.Module]:
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao; the call still works in torch 2.13
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        quantize_dynamic(model, set(names), dtype=torch.qint8, inplace=True)
    return [model.get_submodule(name) for name in names]


def _apply_torchao(model: nn.Module, names: list[str]) -> list[nn.Module]:
    from torchao.quantization import quantize_

    try:
        from torchao.quantization import Int8WeightOnlyConfig

        config = Int8WeightOnlyConfig()
    except ImportError:  # torchao releases before the *Config classes
        from torchao.quantization import int8_weight_only

        config = int8_weight_only()
    wanted = set(names)
    quantize_(model, config, filter_fn=lambda module, fqn: isinstance(module, nn.Linear) and fqn in wanted)
    return [model.get_submodule(name) for name in names]


def quantize_int8(model: nn.Module, backend: str = "auto") -> tuple[nn.Module, str]:
    """An int8 copy of ``model`` for CPU inference (the model itself is untouched); returns (qmodel, backend name).

    Every nn.Linear is quantized except tied ones; embeddings and LayerNorms stay fp32. Linears the model slices
    (see :func:`sliced_linear_names`) get :class:`Int8Linear` whatever the backend. The copy is on CPU, in eval mode.
    """
    name = resolve_backend(backend)
    if is_quantized(model):
        raise ValueError(f"the model is already int8-quantized (backend {getattr(model, QUANTIZED_ATTR)!r})")
    qmodel = copy.deepcopy(model).cpu().float().eval()
    skip = _shared_weight_linear_names(qmodel)
    sliced = sliced_linear_names(qmodel) - skip
    called = [n for n in _linear_names(qmodel) if n not in skip and n not in sliced]
    quantized: list[nn.Module] = []
    for layer_name in sorted(sliced):
        layer = Int8Linear.from_linear(qmodel.get_submodule(layer_name))
        _replace_module(qmodel, layer_name, layer)
        quantized.append(layer)
    if called:
        if name == "dynamic":
            quantized += _apply_dynamic(qmodel, called)
        elif name == "torchao":
            quantized += _apply_torchao(qmodel, called)
        else:
            for layer_name in called:
                layer = Int8Linear.from_linear(qmodel.get_submodule(layer_name))
                _replace_module(qmodel, layer_name, layer)
                quantized.append(layer)
    if not quantized:
        raise ValueError("the model has no nn.Linear layer that can be quantized (tied layers stay fp32)")
    # the root too: sliced layers are never called as modules, so their own hooks would not fire
    for module in [qmodel, *quantized]:
        module.register_forward_pre_hook(_refuse_training)
    for param in qmodel.parameters():
        param.requires_grad_(False)
    setattr(qmodel, QUANTIZED_ATTR, name)
    return qmodel.eval(), name


def is_quantized(model: nn.Module) -> bool:
    """True for a model returned by :func:`quantize_int8`."""
    return isinstance(getattr(model, QUANTIZED_ATTR, None), str)


# ------------------------------------------------------------------------------------------ measurements

def _plain_tensors(state: dict) -> bool:
    return all(type(v) is torch.Tensor and not v.is_quantized for v in state.values())


def serialized_size(model: nn.Module) -> tuple[int, str]:
    """Bytes of the model's saved state and the format used.

    safetensors when the state is plain tensors (fp32, weight_only int8; tied tensors stored once); torch.save when
    it holds packed quantized parameters or tensor subclasses (dynamic, torchao), which safetensors cannot store.
    The file is written to a temporary folder, measured and deleted; nothing is ever loaded back.
    """
    from safetensors.torch import save_model

    state = model.state_dict()
    with tempfile.TemporaryDirectory() as folder:
        if _plain_tensors(state):
            path, fmt = os.path.join(folder, "model.safetensors"), "safetensors"
            save_model(model, path)
        else:
            path, fmt = os.path.join(folder, "model.pt"), "torch.save"
            torch.save(state, path)
        return os.path.getsize(path), fmt


def tokens_per_second(model: nn.Module, ids: torch.Tensor, repeats: int = 3) -> float:
    """Forward throughput on CPU: ids.numel() / median seconds of ``repeats`` timed forwards (after one warm-up)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    times = []
    with torch.no_grad():
        model(ids)
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - start)
    return ids.numel() / statistics.median(times)


def _eval_loss(result: Union[LMEval, float]) -> tuple[float, float]:
    if isinstance(result, LMEval):
        return result.loss, result.accuracy
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return float(result), float("nan")
    raise TypeError(f"eval_fn must return an LMEval or a float loss (nats per token), got {type(result).__name__}")


def compare_int8(
    model: nn.Module,
    eval_fn: Callable[[nn.Module], Union[LMEval, float]],
    sample_ids: torch.Tensor,
    repeats: int = 3,
    backend: str = "auto",
) -> pd.DataFrame:
    """fp32 against int8 on the same data and inputs: one row each ("fp32", "int8").

    ``eval_fn(model)`` returns an LMEval (or a mean loss in nats), e.g.
    ``lambda m: newllm.training.lm_baseline.evaluate_lm(m, val_ids, tokenizer="word")``; it runs on CPU models.
    ``sample_ids`` [B, T] are the timing inputs. Columns: backend, format, size_mb (serialized state, 1e6 bytes),
    val_loss, val_ppl, val_accuracy (NaN for a float loss), tokens_per_s (median of ``repeats``), threads.
    """
    if not torch.is_tensor(sample_ids) or sample_ids.dim() != 2:
        raise ValueError("sample_ids must be a [batch, tokens] tensor of token ids")
    fp32 = copy.deepcopy(model).cpu().float().eval()
    qmodel, name = quantize_int8(fp32, backend)
    rows = []
    for label, candidate, backend_name in (("fp32", fp32, "fp32"), ("int8", qmodel, name)):
        size, fmt = serialized_size(candidate)
        with torch.no_grad():
            loss, accuracy = _eval_loss(eval_fn(candidate))
        rows.append({
            "model": label,
            "backend": backend_name,
            "format": fmt,
            "size_mb": size / 1e6,
            "val_loss": loss,
            "val_ppl": math.exp(loss) if loss < 700 else float("inf"),
            "val_accuracy": accuracy,
            "tokens_per_s": tokens_per_second(candidate, sample_ids.cpu(), repeats),
            "threads": torch.get_num_threads(),
        })
    return pd.DataFrame(rows).set_index("model")
