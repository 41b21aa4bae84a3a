"""Train one ablation: `luminescence train ABLATION` (the dvc.yaml `train` stage).

Writes runs/<ablation>/checkpoint.pt, dvclive/, samples/ and options.json. An existing
checkpoint of the same configuration is resumed; a finished one makes this a no-op; a
checkpoint of a different configuration is an error naming what differs (delete the run
folder or pass --no-resume). Multi-GPU: `torchrun --nproc_per_node N -m pipeline.stages.train ABLATION`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.cpu import CpuPolicy
from pipeline.core.errors import cli_entry

# torch is imported only after the arguments are parsed, so --help and usage errors are instant,
# and after CpuPolicy.start, which must run before OpenMP loads (pipeline/core/cpu.py).


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luminescence train",
        description="Train one ablation of params.yaml (a GAN colouriser) with checkpoints, "
                    "validation samples and DVCLive logs; resumes automatically.",
        epilog="Multi-GPU: torchrun --nproc_per_node 4 -m pipeline.stages.train ABLATION",
    )
    parser.add_argument("ablation", help="a key of `ablations` in params.yaml, e.g. p2p_unet_rgb_gray")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="total iterations instead of the preset's schedule (keeps its constant:decay "
                             "ratio; a different schedule from an existing checkpoint's)")
    parser.add_argument("--stop-at", type=int, default=None, metavar="N",
                        help="stop after N iterations, keeping a checkpoint; re-run to continue")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="run folder (default: runs/ABLATION)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=None,
                        help="override train.device (auto: cuda, then mps, then cpu)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from the run folder's checkpoint when it matches (default); "
                             "--no-resume trains from scratch and overwrites it")
    parser.add_argument("--resume-interrupted-only", action="store_true",
                        help="resume only an unfinished checkpoint of the same settings, else train "
                             "afresh (what dvc.yaml uses: DVC re-runs a stage only when something "
                             "changed)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), metavar="FILE",
                        help="parameters file (default: params.yaml)")
    parser.add_argument("--datasets", type=Path, default=None, metavar="DIR",
                        help="folder of datasets built by the align stage (default: data/datasets)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cpu = CpuPolicy.start()
    from pipeline.core.config import load_params
    from pipeline.core.outputs import FOLDER, Output, check_outputs
    from pipeline.core.paths import DATASETS_DIR
    from pipeline.training.devices import distributed_from_env
    from pipeline.training.loop import summary_line, train
    from pipeline.training.plan import plan_run

    params = load_params(args.params)
    plan = plan_run(args.ablation, params, out_dir=args.out, steps=args.steps,
                    datasets_dir=args.datasets or DATASETS_DIR)
    check_outputs([Output("--out", plan.out_dir, FOLDER)],
                  {"the dataset": [plan.dataset_dir], "--params": [args.params]})
    threads = cpu.apply()
    if distributed_from_env().is_main and threads.source != "kept":
        print(threads.describe(), file=sys.stderr)
    resume = args.resume
    if args.resume_interrupted_only:
        from pipeline.training.resume import resume_decision

        resume, why = resume_decision(plan)
        if why and distributed_from_env().is_main:
            print(why, file=sys.stderr)
    result = train(plan, resume=resume, stop_at=args.stop_at, device=args.device,
                   progress=not args.no_progress)
    if distributed_from_env().is_main:
        print(summary_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
