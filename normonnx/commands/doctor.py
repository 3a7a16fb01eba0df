"""Report what this installation can do: versions of torch/onnx/onnxruntime/onnxscript, onnxruntime's
execution providers, which native norm kernels each available provider has (probed, not assumed),
whether normonnx's compiled kernel library is built, the lowering capability table, and which
strategy (at which opset) normonnx would choose per norm kind for cpu and cuda. With --provider
cuda, also fails with exit code 3 when that provider is not usable here."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
from typing import Any

from . import final_line, write_json

HELP = "print versions, providers, norm kernels and what normonnx would choose here"

#: distributions whose versions are reported (import names differ for some)
DISTRIBUTIONS = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "onnx-ir", "numpy")
#: dtypes probed per native norm op
PROBE_DTYPES = ("float32", "float16", "float64")
#: onnxruntime providers normonnx knows how to target
TARGETS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--provider",
        choices=sorted(TARGETS),
        action="append",
        help="require this provider to be usable here (exit 3 if not); repeatable",
    )
    p.add_argument("--json", metavar="FILE", help="write the report as JSON ('-' for stdout)")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def example_specs() -> list[Any]:
    """One representative spec per kind (and the channels-first LayerNorm of ConvNeXt)."""
    from ..spec import NormSpec

    return [
        NormSpec("batch", channels=64, running_stats=True, rank=4),
        NormSpec("layer", normalized_shape=(768,), rank=3),
        NormSpec("layer", normalized_shape=(96,), channels=96, channels_first=True, rank=4),
        NormSpec("instance", channels=64, rank=4),
        NormSpec("group", channels=320, groups=32, rank=4),
        NormSpec("rms", normalized_shape=(4096,), has_bias=False, rank=3),
    ]


def choices(targets: tuple[str, ...] = ("cpu", "cuda")) -> list[dict[str, Any]]:
    """What normonnx's exporter would pick for a model holding just one norm of each example kind."""
    from ..errors import NormOnnxError
    from ..exporter import choose_opset
    from ..lowering import select
    from ..runtime.probe import ort_max_opset

    rows = []
    for target in targets:
        for spec in example_specs():
            label = spec.kind + (" (channels-first)" if spec.channels_first else "")
            try:
                opset, why = choose_opset([spec], target, max_opset=ort_max_opset() if target == "cpu" else None)
                sel = select(spec, opset, target)
                rows.append(
                    {
                        "target": target,
                        "kind": label,
                        "opset": opset,
                        "strategy": sel.strategy,
                        "rejected": [list(r) for r in sel.rejected],
                        "opset_reason": why,
                    }
                )
            except NormOnnxError as e:
                rows.append({"target": target, "kind": label, "opset": None, "strategy": None, "error": e.message})
    return rows


def kernel_matrix(providers: list[str], opset: int) -> list[dict[str, Any]]:
    """For each available target provider × native norm op × dtype: does onnxruntime run it natively?"""
    from ..norms import KINDS
    from ..runtime.probe import has_kernel

    rows = []
    for provider in providers:
        for kind in KINDS.values():
            if not kind.native_op:
                continue
            since = kind.native_since or 1
            row: dict[str, Any] = {"provider": provider, "op": kind.native_op, "since": since, "opset": opset}
            for dt in PROBE_DTYPES:
                row[dt] = bool(opset >= since and has_kernel(kind.native_op, opset, dt, provider))
            rows.append(row)
    return rows


def lower_cuda_info() -> dict[str, Any]:
    """Whether the contrib-op lowering for --target cuda (normonnx.optimize.lower_cuda) is importable."""
    try:
        import importlib

        mod = importlib.import_module("normonnx.optimize.lower_cuda")
    except Exception as e:
        return {"available": False, "reason": f"{type(e).__name__}: {e}"}
    doc = (mod.__doc__ or "").strip().splitlines()
    return {"available": True, "summary": doc[0] if doc else "", "rules": list(mod.RULES)}


def collect() -> dict[str, Any]:
    """The whole report as data."""
    import onnx
    import onnxruntime as ort

    from .. import __version__
    from ..lowering import MAX_OPSET, MIN_OPSET, capability_table
    from ..runtime.cuda import cuda_status
    from ..runtime.probe import ort_max_opset

    versions: dict[str, Any] = {"normonnx": __version__, "python": platform.python_version()}
    versions.update({d: _version(d) for d in DISTRIBUTIONS})
    warnings = []
    if versions.get("onnxruntime") and versions.get("onnxruntime-gpu"):
        warnings.append(
            "both onnxruntime and onnxruntime-gpu are installed; they share the `onnxruntime` module and the one "
            "installed last wins. Uninstall both, then install only the one you want."
        )
    available = list(ort.get_available_providers())
    best = min(MAX_OPSET, ort_max_opset())
    probed = [TARGETS[t] for t in TARGETS if TARGETS[t] in available]
    cuda_ok, cuda_reason = cuda_status()
    try:
        from .. import kernels

        lib = {
            "built": kernels.library_path() is not None,
            "path": kernels.library_path(),
            "reason": kernels.unavailable_reason(),
            "info": kernels.info(),
        }
    except Exception as e:
        lib = {
            "built": False,
            "path": None,
            "reason": f"normonnx.kernels not importable ({type(e).__name__}: {e})",
            "info": {},
        }
    return {
        "versions": versions,
        "opsets": {
            "onnx_max": onnx.defs.onnx_opset_version(),
            "onnxruntime_max": ort_max_opset(),
            "normonnx": [MIN_OPSET, MAX_OPSET],
            "probed_at": best,
        },
        "providers": {
            "available": available,
            "cuda": {"available": cuda_ok, "reason": cuda_reason},
        },
        "kernels": kernel_matrix(probed, best),
        "native_kernel_library": lib,
        "lower_cuda": lower_cuda_info(),
        "capabilities": capability_table(("cpu", "cuda")),
        "choices": choices(),
        "warnings": warnings,
    }


def _yn(v: bool) -> str:
    return "yes" if v else "no"


def format_report(r: dict[str, Any]) -> str:
    from ..lowering import format_capability_table

    v, o, p = r["versions"], r["opsets"], r["providers"]
    lines = ["versions:"]
    lines += [f"  {k:16s} {val or 'not installed'}" for k, val in v.items()]
    lines += [
        "",
        f"opsets: onnx defines up to {o['onnx_max']}, onnxruntime loads up to {o['onnxruntime_max']}, "
        f"normonnx emits {o['normonnx'][0]}..{o['normonnx'][1]} (kernels probed at {o['probed_at']})",
        "",
        f"execution providers: {', '.join(p['available'])}",
        f"  CUDA: {'available' if p['cuda']['available'] else 'not available'} — {p['cuda']['reason']}",
        "",
        "native norm kernels (probed with onnxruntime's profiler; 'no' = no kernel: inlined function body or load failure):",
    ]
    if r["kernels"]:
        lines.append(f"  {'provider':22s} {'op':24s} {'since':5s} " + " ".join(f"{d:8s}" for d in PROBE_DTYPES))
        for k in r["kernels"]:
            lines.append(
                f"  {k['provider']:22s} {k['op']:24s} {k['since']:<5d} "
                + " ".join(f"{_yn(k[d]):8s}" for d in PROBE_DTYPES)
            )
    else:
        lines.append("  (no CPU or CUDA provider to probe)")
    lib = r["native_kernel_library"]
    lines += ["", f"normonnx native kernel library: {'built' if lib['built'] else 'not available'}"]
    lines.append(f"  {lib['path']}" if lib["built"] else f"  {lib['reason']}")
    if lib.get("info"):
        lines.append("  " + ", ".join(f"{k}={val}" for k, val in lib["info"].items()))
    lc = r["lower_cuda"]
    lines += [
        "",
        "--target cuda contrib-op lowering (normonnx.optimize.lower_cuda): "
        + (f"available — {lc['summary']}" if lc["available"] else f"not available ({lc['reason']})"),
    ]
    if lc.get("rules"):
        lines.append(f"  rules: {', '.join(lc['rules'])}")
    lines += [
        "",
        "capability table:",
        format_capability_table(("cpu", "cuda")),
        "",
        "what normonnx would choose (one-norm model, default opset choice):",
    ]
    for c in r["choices"]:
        if c.get("strategy"):
            why = "; ".join(f"{n}: {reason}" for n, reason in c["rejected"])
            lines.append(
                f"  {c['target']:4s} {c['kind']:26s} opset {c['opset']:<3d} {c['strategy']}"
                + (f"  (rejected: {why})" if why else "")
            )
        else:
            lines.append(f"  {c['target']:4s} {c['kind']:26s} none: {c.get('error')}")
    for w in r["warnings"]:
        lines += ["", f"WARNING: {w}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..errors import UnsupportedHere
    from ..runtime.cuda import require_cuda

    report = collect()
    if args.json:
        write_json(args.json, report)
    if args.json != "-":
        print(format_report(report))
    for target in args.provider or ():
        if target == "cuda":
            require_cuda()
        elif TARGETS[target] not in report["providers"]["available"]:  # pragma: no cover - CPU is always there
            raise UnsupportedHere(f"{TARGETS[target]} is not available in this onnxruntime")
    lib = "built" if report["native_kernel_library"]["built"] else "not built"
    final_line(
        True,
        f"doctor: onnxruntime {report['versions'].get('onnxruntime') or report['versions'].get('onnxruntime-gpu')}, "
        f"providers {', '.join(report['providers']['available'])}, native kernel library {lib}",
    )
    return 0
