"""Benchmark: feature-extraction throughput and Fréchet distance (eigen route vs scipy sqrtm).

    .venv/bin/python -m bench.eval_speed [--images 32] [--batch-sizes 16 32]
        [--out docs/benchmarks/eval_speed.md]   (--out - prints the report instead)

Extraction: images/s on the CPU for each extractor and batch size (random 256x256 uint8
tiles, resize included). The FID Inception uses its real weights when they are found,
otherwise random weights (said so in the table): the speed of a network does not
depend on its weight values. Fréchet distance at d = 2048: time and accuracy of
eval.frechet (eigenvalue route) against scipy.linalg.sqrtm of S1 S2, in the same run,
on SYNTHETIC feature statistics (full-rank, rank-deficient N < d, and a commuting pair
whose exact answer is known).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from typing import Any

import numpy as np
import scipy
import torch
from scipy import linalg

from bench.timing import cpu_model, shown_command, timed, write_report
from eval.extractors import EfficientNetLite0Extractor, FeatureExtractor, InceptionV3Extractor
from eval.frechet import feature_statistics, frechet_distance
from eval.weights import find_inception_weights


def sqrtm_frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The common route: principal square root of the non-symmetric product, real part of its trace."""
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.all(np.isfinite(covmean)):  # singular product: nudge both diagonals, as usually done
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean).real)


# --------------------------------------------------------------------------- extraction
def extractors_to_time() -> list[tuple[FeatureExtractor, str]]:
    found = find_inception_weights(None)
    if found is not None:
        inception, note = InceptionV3Extractor.from_weights(found), "real weights"
    else:
        inception, note = InceptionV3Extractor.untrained(), "random weights (real file absent; same speed)"
    return [(EfficientNetLite0Extractor(), "packaged ImageNet weights"), (inception, note)]


def bench_extraction(n_images: int, batch_sizes: list[int], size: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    rows = []
    for ext, note in extractors_to_time():
        ext.extract(images[:2], 2, layout="NHWC", progress=False)  # warm-up (allocator, kernels)
        for bs in batch_sizes:
            for channels_last in (True, False):
                ext.set_channels_last(channels_last)
                seconds, _ = timed(lambda e=ext, b=bs: e.extract(images, b, layout="NHWC", progress=False), 1)
                memory = "channels_last" if channels_last else "contiguous"
                rows.append({"extractor": ext.name, "weights": note, "batch": bs, "memory": memory,
                             "images": n_images, "seconds": seconds, "ips": n_images / seconds})
                print(f"{ext.name:24s} batch {bs:3d} {memory:13s}: {n_images / seconds:7.2f} images/s",
                      flush=True)
        ext.set_channels_last(True)
    return rows


# --------------------------------------------------------------------------- Fréchet distance
def synthetic_features(rng: np.random.Generator, n: int, d: int, shift: float) -> np.ndarray:
    """Non-negative features with a decaying spectrum, loosely like pooled CNN activations."""
    k = min(d, 256)
    basis = rng.standard_normal((k, d)) * (1.0 / np.arange(1, k + 1))[:, None]
    z = rng.standard_normal((n, k))
    return np.abs(z @ basis + 0.05 * rng.standard_normal((n, d)) + shift)


def feature_space_reference(f1: np.ndarray, f2: np.ndarray, mu1: np.ndarray, s1: np.ndarray,
                            mu2: np.ndarray, s2: np.ndarray) -> float:
    """FD with tr sqrt(S1 S2) = nuclear norm of A1 A2^T (A: centred features / sqrt(N-1)).

    An N1 x N2 problem free of the d x d routes' noise eigenvalues; cheap only for small N.
    """
    a1 = (f1 - f1.mean(axis=0)) / np.sqrt(len(f1) - 1)
    a2 = (f2 - f2.mean(axis=0)) / np.sqrt(len(f2) - 1)
    nuclear = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * nuclear)


def fd_cases(d: int) -> list[tuple[str, tuple[np.ndarray, ...], float | None]]:
    """(label, (mu1, S1, mu2, S2), reference value or None)."""
    rng = np.random.default_rng(1)
    cases: list[tuple[str, tuple[np.ndarray, ...], float | None]] = []
    for label, n in ((f"full rank (N = {2 * d})", 2 * d), ("rank-deficient (N = 500)", 500)):
        f1, f2 = synthetic_features(rng, n, d, 0.0), synthetic_features(rng, n, d, 0.05)
        mu1, s1 = feature_statistics(f1)
        mu2, s2 = feature_statistics(f2)
        reference = feature_space_reference(f1, f2, mu1, s1, mu2, s2) if n < d else None
        cases.append((label, (mu1, s1, mu2, s2), reference))
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    l1 = rng.uniform(0, 2, d) ** 3
    l2 = rng.uniform(0, 2, d) ** 3
    mu = np.zeros(d)
    exact = float(l1.sum() + l2.sum() - 2 * np.sqrt(l1 * l2).sum())
    cases.append(("commuting pair (exact answer)", (mu, (q * l1) @ q.T, mu, (q * l2) @ q.T), exact))
    return cases


def bench_frechet(d: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for label, stats, exact in fd_cases(d):  # exact: the reference value, where there is one
        t_eig, v_eig = timed(lambda s=stats: frechet_distance(*s), repeat)
        t_sqrtm, v_sqrtm = timed(lambda s=stats: sqrtm_frechet(*s), repeat)
        row = {"case": label, "d": d, "t_eig": t_eig, "t_sqrtm": t_sqrtm, "fd": v_eig,
               "rel_diff": abs(v_eig - v_sqrtm) / abs(v_sqrtm),
               "err_eig": None if exact is None else abs(v_eig - exact) / exact,
               "err_sqrtm": None if exact is None else abs(v_sqrtm - exact) / exact}
        rows.append(row)
        print(f"FD d={d} {label}: eigen {t_eig:.2f} s, sqrtm {t_sqrtm:.2f} s "
              f"({t_sqrtm / t_eig:.1f}x), relative difference {row['rel_diff']:.1e}", flush=True)
    return rows


# --------------------------------------------------------------------------- report
def machine() -> str:
    cpu = cpu_model(default=platform.processor() or platform.machine())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"numpy {np.__version__}, scipy {scipy.__version__}, Python {platform.python_version()}; "
            f"1-min load average at start {load:.1f}")


def report(command: str, host: str, extraction: list[dict[str, Any]], frechet: list[dict[str, Any]]) -> str:
    lines = [
        "# Evaluation speed",
        "",
        f"- Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- Machine: {host}",
        f"- Command: `{command}`",
        "",
        "Machines are noisy (shared CPUs): compare numbers only within one run.",
        "",
        "## Feature extraction (CPU, 256x256 uint8 tiles, resize included)",
        "",
        "| extractor | weights | batch | memory layout | images | seconds | images/s |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    lines += [f"| {r['extractor']} | {r['weights']} | {r['batch']} | {r['memory']} | {r['images']} "
              f"| {r['seconds']:.1f} | {r['ips']:.2f} |" for r in extraction]
    lines += [
        "",
        "## Fréchet distance, eigenvalue route vs scipy.linalg.sqrtm (synthetic statistics)",
        "",
        "Relative difference = |eigen - sqrtm| / sqrtm. Error = |method - reference| / reference where a "
        "reference is available: exact for commuting covariances (tr sqrt(S1 S2) = sum sqrt(l1 l2)); for "
        "N < d the nuclear norm of the N x N matrix A1 A2^T (A = centred features / sqrt(N - 1)), which "
        "has no d x d noise eigenvalues.",
        "",
        "| case | d | eigen (s) | sqrtm (s) | speed-up | FD | relative difference | error eigen "
        "| error sqrtm |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def err(v: float | None) -> str:
        return "-" if v is None else f"{v:.1e}"

    lines += [f"| {r['case']} | {r['d']} | {r['t_eig']:.2f} | {r['t_sqrtm']:.2f} | "
              f"{r['t_sqrtm'] / r['t_eig']:.1f}x | {r['fd']:.4g} | {r['rel_diff']:.1e} | "
              f"{err(r['err_eig'])} | {err(r['err_sqrtm'])} |" for r in frechet]
    lines += ["", "## Summary", "", *summary(extraction, frechet)]
    return "\n".join(lines) + "\n"


def summary(extraction: list[dict[str, Any]], frechet: list[dict[str, Any]]) -> list[str]:
    """Ratios from this run, in words."""
    out = []
    for name in dict.fromkeys(r["extractor"] for r in extraction):
        rows = [r for r in extraction if r["extractor"] == name]
        best = max(rows, key=lambda r: r["ips"])
        gains = [a["ips"] / b["ips"] for a in rows for b in rows if a["batch"] == b["batch"]
                 and a["memory"] == "channels_last" and b["memory"] == "contiguous"]
        out.append(f"- {name}: best {best['ips']:.2f} images/s (batch {best['batch']}, {best['memory']}); "
                   f"channels_last vs contiguous: {', '.join(f'{g:.2f}x' for g in gains)}.")
    if frechet:
        speedups = [r["t_sqrtm"] / r["t_eig"] for r in frechet]
        worst_diff = max(r["rel_diff"] for r in frechet)
        errs = [(r["err_eig"], r["err_sqrtm"]) for r in frechet if r["err_eig"] is not None]
        out.append(f"- Fréchet distance at d = {frechet[0]['d']}: the eigen route is "
                   f"{min(speedups):.1f}x-{max(speedups):.1f}x faster than sqrtm (goal: at least 2x); "
                   f"the two agree to {worst_diff:.0e} relative or better.")
        if errs:
            out.append("- Against a reference value: eigen route error "
                       + ", ".join(f"{e:.0e}" for e, _ in errs) + "; sqrtm route error "
                       + ", ".join(f"{s:.0e}" for _, s in errs) + " (same cases, same order).")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images per extraction timing (default 32)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32], help="default: 16 32")
    parser.add_argument("--image-size", type=int, default=256, help="tile edge in pixels (default 256)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension for the FD timing (2048)")
    parser.add_argument("--repeat", type=int, default=1, help="FD timings: best of this many runs (1)")
    parser.add_argument("--skip-extraction", action="store_true", help="time only the Fréchet distance")
    parser.add_argument("--out", default="docs/benchmarks/eval_speed.md",
                        help="markdown report path (default docs/benchmarks/eval_speed.md; '-' prints it)")
    args = parser.parse_args(argv)
    command = shown_command("bench.eval_speed", sys.argv[1:] if argv is None else argv)
    host = machine()
    print(host, flush=True)
    extraction = ([] if args.skip_extraction
                  else bench_extraction(args.images, args.batch_sizes, args.image_size))
    frechet = bench_frechet(args.dim, args.repeat)
    text = report(command.strip(), host, extraction, frechet)
    write_report(text, args.out)


if __name__ == "__main__":
    main()
