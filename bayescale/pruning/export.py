"""Deploy: export a (pruned, compacted) network to TorchScript and ONNX.

    export_torchscript(model, x, "model.pt")             # posterior-mean network, TorchScript
    export_onnx(model, x, "model.onnx")                  # the same in ONNX (dynamic batch size)
    export_onnx(model, x, "model_mc.onnx", mc=True)      # one weight sample per call: MC-capable
    check_onnx("model.onnx", model, x)                   # onnxruntime vs PyTorch, max |diff|

What is exportable:

* ``mc=False`` (default): the posterior-mean network
  (:func:`bayescale.pruning.compact.posterior_mean_model`, W = mu * mask): plain Linear/Conv layers,
  exports like any torch model; deterministic.
* ``mc=True``: every Bayesian layer becomes a small sampling layer that draws one weight
  W = m * (mu + sigma * eps), eps ~ N(0, I), per call, shared by the batch (ONNX
  ``RandomNormalLike``). Calling the exported model T times and averaging the softmax gives the
  MC predictive exactly as :func:`bayescale.mc_predict` does (one weight draw per sample).
* Not exported: the training estimators. Flipout's per-example sign vectors and local
  reparameterization are variance-reduction devices for training; prediction never needs them.
  The KL, priors and sampling-mode switches (``mean_weights``/``fixed_sample``) are not part of
  an exported graph; ONNX random ops take no seed from PyTorch, so MC draws differ between
  runtimes (the distribution is the same).

onnx and onnxruntime are the optional ``deploy`` extra (``pip install 'bayescale[deploy]'``),
imported only when needed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.conv import _BayesConvNd
from ..nn.layers import BayesianLayer
from ..nn.linear import BayesLinear
from .compact import posterior_mean_model

__all__ = ["SampledLayer", "sampling_model", "export_torchscript", "export_onnx", "check_onnx"]


class SampledLayer(nn.Module):
    """Export form of a Bayesian layer: one weight draw W = mu + sigma * eps per forward.

    mu and sigma are constants here (buffers, with pruned entries set to 0 in both), so the
    traced graph is a ``randn_like``, a fused multiply-add and the op.
    """

    def __init__(self, layer: BayesianLayer) -> None:
        super().__init__()
        if layer.bayesian_bias:
            raise ValueError("MC export supports deterministic biases only (the default); "
                             "export the posterior mean (mc=False) instead")
        with torch.no_grad():
            mask = layer.weight_mask if layer._masked else None
            mu, sigma = layer.weight_mu.detach(), layer.weight_sigma.detach()
            self.register_buffer("mu", (mu * mask if mask is not None else mu).clone())
            self.register_buffer("sigma", (sigma * mask if mask is not None else sigma).clone())
            self.register_buffer("bias", None if layer.bias is None else layer.bias.detach()
                                 .clone())
        self.conv = isinstance(layer, _BayesConvNd)
        if not (self.conv or isinstance(layer, BayesLinear)):
            raise ValueError(f"no export form for {type(layer).__name__}")
        if self.conv:  # the convolution's own arguments; non-zero padding modes pad first
            self.nd, self.stride, self.dilation = layer._nd, layer.stride, layer.dilation
            self.groups, self.pad, self.padding_mode = layer.groups, layer._pad, layer.padding_mode
            self.padding = 0 if layer._pad is not None else layer.padding

    def forward(self, x: Tensor) -> Tensor:
        weight = self.mu + self.sigma * torch.randn_like(self.sigma)
        if not self.conv:
            return F.linear(x, weight, self.bias)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.nd - 1]
        if self.pad is not None:
            x = F.pad(x, self.pad, mode=self.padding_mode)
        return conv(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def sampling_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Bayesian layers are :class:`SampledLayer` (for MC export)."""
    import copy

    new = copy.deepcopy(model)
    if isinstance(new, BayesianLayer):
        return SampledLayer(new)
    for name, m in list(new.named_modules()):
        if isinstance(m, BayesianLayer):
            new.set_submodule(name, SampledLayer(m))
    return new


def _export_form(model: nn.Module, mc: bool) -> nn.Module:
    return (sampling_model(model) if mc else posterior_mean_model(model)).eval()


def export_torchscript(model: nn.Module, example_input: Tensor, path: str | Path, *,
                       mc: bool = False) -> Path:
    """Trace the posterior-mean (or, with ``mc``, the sampling) network and save TorchScript.

    Load with ``torch.jit.load(path)``; the batch size is free.
    """
    net = _export_form(model, mc)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about randn_like are expected with mc
        traced = torch.jit.trace(net, example_input, check_trace=not mc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError as err:
        raise ImportError(f"ONNX export/checks need {module}: pip install 'bayescale[deploy]' "
                          "(onnx, onnxruntime)") from err


def export_onnx(model: nn.Module, example_input: Tensor, path: str | Path, *, mc: bool = False,
                opset: int = 17) -> Path:
    """Export to ONNX with a dynamic batch dimension (input ``x``, output ``logits``).

    Uses PyTorch's TorchScript-based exporter (``dynamo=False``), which handles the random op of
    the MC form.
    """
    _require("onnx")
    net = _export_form(model, mc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example_input,), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return path


def check_onnx(path: str | Path, model: nn.Module, x: Tensor, *, mc: bool = False,
               num_samples: int = 1) -> float:
    """Run ``path`` in onnxruntime on ``x``; max |ONNX - PyTorch| of the outputs.

    Deterministic exports are compared with the posterior-mean forward. With ``mc`` the
    runtime's ``num_samples`` calls are averaged (softmax) and compared with the same average
    of the PyTorch sampling model: use many samples and a statistical tolerance.
    """
    _require("onnxruntime")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}
    net = _export_form(model, mc)
    with torch.no_grad():
        if not mc:
            ref = net(x)
            got = torch.from_numpy(session.run(None, feed)[0])
        else:
            ref = torch.stack([net(x).softmax(-1) for _ in range(num_samples)]).mean(0)
            got = torch.stack([torch.from_numpy(session.run(None, feed)[0]).softmax(-1)
                               for _ in range(num_samples)]).mean(0)
    return float((got.to(ref.dtype) - ref).abs().max())
