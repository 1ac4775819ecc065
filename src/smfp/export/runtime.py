"""Write deployable actors to ONNX / TorchScript files, load them back, and check them.

Both formats hold the whole actor (weights, generator steps, output noise, action bounds and,
for best-of-N, the critic), so a deployment needs only ONNX Runtime or ``torch``, never ``smfp``.
Each file carries a JSON description (``SMFP_META_KEY``): ONNX in its ``metadata_props``,
TorchScript as the extra file ``smfp.json``.
"""

from __future__ import annotations

import io
import json
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from smfp.export.actor import ExportError
from smfp.storage.userfiles import reading

FORMATS = ("onnx", "torchscript")
_REEXPORT = "export it again with smfp export"
SMFP_META_KEY = "smfp"
TORCHSCRIPT_META_FILE = "smfp.json"


def _input_names(has_noise: bool) -> list[str]:
    return ["obs", "noise"] if has_noise else ["obs"]


def _example_inputs(obs_dim: int, noise_shape: Optional[tuple[int, ...]], batch: int = 2):
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(batch, obs_dim, generator=gen)
    if noise_shape is None:
        return (obs,)
    return obs, torch.randn(batch, *noise_shape, generator=gen)


def export_onnx(actor: nn.Module, path: str | Path, obs_dim: int, noise_shape: Optional[tuple[int, ...]],
                meta: dict, opset: int = 17) -> Path:
    """Trace ``actor`` to ONNX (batch and candidate count are dynamic) with ``meta`` in metadata_props."""
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the 'onnx' package: pip install 'smfp[export]'") from None
    path = Path(path)
    inputs = _example_inputs(obs_dim, noise_shape)
    names = _input_names(noise_shape is not None)
    dynamic = {"obs": {0: "batch"}, "action": {0: "batch"}}
    if noise_shape is not None:
        dynamic["noise"] = {0: "batch", 1: "candidates"} if len(noise_shape) == 2 else {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(actor, inputs, buf, input_names=names, output_names=["action"],
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = SMFP_META_KEY, json.dumps(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def script_actor(actor: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript (scripted, then frozen: weights and step constants inlined)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.script(actor).eval())


def export_torchscript(actor: nn.Module, path: str | Path, meta: dict) -> Path:
    path = Path(path)
    scripted = script_actor(actor)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(scripted, str(path), _extra_files={TORCHSCRIPT_META_FILE: json.dumps(meta)})
    return path


def onnx_session(path: str | Path, threads: int = 1):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("checking ONNX needs onnxruntime: pip install 'smfp[export]'") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def load_runner(path: str | Path, fmt: str, threads: int = 1) -> Callable[..., np.ndarray]:
    """A function ``(obs, [noise]) -> action`` on float32 numpy arrays, running the exported file."""
    if fmt == "onnx":
        with reading(path, "the exported actor", _REEXPORT, keep=(ExportError,)):
            sess = onnx_session(path, threads)
            names = [i.name for i in sess.get_inputs()]

        def run_onnx(*arrays: np.ndarray) -> np.ndarray:
            return sess.run(None, dict(zip(names, arrays)))[0]

        return run_onnx
    if fmt == "torchscript":
        with warnings.catch_warnings(), reading(path, "the exported actor", _REEXPORT, keep=(ExportError,)):
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path))

        def run_ts(*arrays: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(*(torch.from_numpy(a) for a in arrays)).numpy()

        return run_ts
    raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def read_meta(path: str | Path, fmt: str) -> dict:
    """The JSON description stored in an exported file."""
    with reading(path, "the exported actor", _REEXPORT, keep=(ExportError,)):
        if fmt == "onnx":
            raw = onnx_session(path).get_modelmeta().custom_metadata_map[SMFP_META_KEY]
        else:
            extra = {TORCHSCRIPT_META_FILE: ""}
            torch.jit.load(str(path), _extra_files=extra)
            raw = extra[TORCHSCRIPT_META_FILE]
        meta = json.loads(raw)
        if not isinstance(meta, dict):
            raise ValueError("its smfp description is not a JSON object")
        return meta


__all__ = ["FORMATS", "SMFP_META_KEY", "TORCHSCRIPT_META_FILE", "export_onnx", "export_torchscript",
           "load_runner", "onnx_session", "read_meta", "script_actor"]
