"""Cutline: the console by default; subcommands for scripting.

    python main.py                       open the console (on the generated demo dataset at first)
    python main.py --screenshot out.png --after 20   render the window after 20 s and exit
    python main.py demo-dataset OUT      generate the synthetic surface-defect dataset
    python main.py worker SPEC           run one training job (what the engine launches)
    python main.py COMMAND ...           the queue from the command line (engine.cli): submit, list,
                                         show, move, jump, priority, pause, resume, cancel, retry,
                                         emergency, audit, devices, schedule, settings, headless
                                         (`python main.py COMMAND --help` for each)
"""
from __future__ import annotations

import argparse
import re
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo-dataset":
        from engine.demo_dataset import main as dataset_main

        return dataset_main(argv[1:])
    if argv and argv[0] == "worker":
        from engine.worker.signals import install

        signals = install()
        from engine.worker.main import main as worker_main

        return worker_main(argv[1:], signals=signals)
    if argv and not argv[0].startswith("-"):
        from engine.cli import main as cli_main

        return cli_main(argv)
    return console_main(argv)


def console_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cutline", description="Cutline operations console",
        epilog="commands (run without a window): submit, list, show, move, jump, priority, pause, resume, cancel, "
               "retry, emergency, audit, devices, schedule, settings, headless; `cutline COMMAND --help` for each",
    )
    parser.add_argument("--home", help="data folder (default: $CUTLINE_HOME or the user data dir)")
    parser.add_argument("--cpu-slots", type=int, default=1, help="CPU slots offered when no NVIDIA GPU is found")
    parser.add_argument("--no-nvml", action="store_true", help="ignore NVIDIA GPUs (use CPU slots)")
    parser.add_argument("--theme", choices=["light", "dark"], help="colour theme (default: as last used)")
    parser.add_argument("--no-demo", action="store_true", help="do not add the demo jobs to an empty queue")
    parser.add_argument("--screenshot", metavar="PNG", help="render the main window to PNG and exit")
    parser.add_argument("--after", type=float, default=0.0, metavar="SECONDS",
                        help="with --screenshot: run the scenario this long first")
    parser.add_argument("--scenario", choices=["demo", "emergency"], default="demo",
                        help="with --screenshot: demo = the demo jobs train; emergency = an emergency retrain "
                             "preempts the running job halfway through")
    parser.add_argument("--tab", default="plots",
                        choices=["plots", "details", "audit", "notifications", "schedules", "alerts", "all"],
                        help="with --screenshot: the tab shown below the queue; all = one PNG per tab "
                             "(out-plots.png, out-audit.png, ...)")
    parser.add_argument("--size", default="1600x1000", help="with --screenshot: window size, e.g. 1920x1080")
    args = parser.parse_args(argv)
    if args.cpu_slots < 1:
        parser.error(f"--cpu-slots must be at least 1, got {args.cpu_slots}")
    if args.screenshot and not re.fullmatch(r"\d+x\d+", args.size.lower()):
        parser.error(f"--size must look like 1600x1000, got {args.size!r}")

    from console.app import run_console

    return run_console(args)


if __name__ == "__main__":
    raise SystemExit(main())
