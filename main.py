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
    parser.add_argument("--screenshot", metavar="PNG", help="render the main window to PNG and exit")
    parser.add_argument("--after", type=float, default=0.0, metavar="SECONDS",
                        help="with --screenshot: train the demo job this long first")
    parser.add_argument("--size", default="1280x800", help="with --screenshot: window size, e.g. 1920x1080")
    args = parser.parse_args(argv)
    if args.cpu_slots < 1:
        parser.error(f"--cpu-slots must be at least 1, got {args.cpu_slots}")

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from console.preview_window import PreviewWindow
    from engine import paths
    from engine.demo_job import demo_job_spec
    from engine.devices import DeviceMonitor

    home = paths.cutline_home(args.home)
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("Cutline")
    window = PreviewWindow(demo_job_spec(home), "Demo: surface defects · yolov8n", DeviceMonitor(cpu_slots=args.cpu_slots))
    if args.screenshot:
        width, height = (int(v) for v in args.size.lower().split("x"))
        window.resize(width, height)
        window.quiet_close = True
        window.show()
        if args.after > 0:
            window.start()

        def capture() -> None:
            window._poll()
            window.grab().save(args.screenshot)
            window.close()

        QTimer.singleShot(int(args.after * 1000) + 300, capture)
    else:
        window.show()
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(main())
