"""Start the console: the embedded engine, the main window, and the screenshot mode."""
from __future__ import annotations

import argparse
import sys

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from engine import paths
from engine.core import Engine, EngineBusy
from engine.demo_job import seed_demo_jobs

from . import theme


def run_console(args: argparse.Namespace) -> int:
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("Cutline")
    app.setOrganizationName("Cutline")
    if args.screenshot:  # a picture of the defaults, not of whatever layout this user saved
        settings = QSettings(str(paths.cutline_home(args.home) / "screenshot-layout.ini"), QSettings.IniFormat)
        settings.clear()
    else:
        settings = QSettings("Cutline", "Cutline console")
    dark = args.theme == "dark" if args.theme else settings.value("dark", False, type=bool)
    theme.apply_theme(app, dark)

    home = paths.cutline_home(args.home)
    engine = Engine(home, cpu_slots=args.cpu_slots, use_nvml=not args.no_nvml)
    try:
        engine.start()
    except EngineBusy as e:
        engine.shutdown()
        if not args.screenshot:
            QMessageBox.critical(None, "Cutline", f"{e}.\n\nStop it (SIGTERM) or open another --home.")
        print(f"cutline: {e}", file=sys.stderr)
        return 1
    if not args.no_demo:
        seed_demo_jobs(engine.ops, home)
        engine.wake()

    from .main_window import MainWindow

    window = MainWindow(engine, settings=settings)
    if args.screenshot:
        return _screenshot(app, window, engine, args)
    window.show()
    return app.exec()


TABS = ("plots", "details", "audit", "notifications", "schedules", "alerts")


def screenshot_targets(path: str, tab: str) -> list[tuple[str, str]]:
    """(tab, file) pairs to render: one tab into `path`, or every tab into `path`'s stem + "-<tab>"."""
    if tab != "all":
        return [(tab, path)]
    stem, dot, suffix = path.rpartition(".")
    if not dot:
        stem, suffix = path, "png"
    return [(name, f"{stem}-{name}.{suffix}") for name in TABS]


def _screenshot(app: QApplication, window, engine, args) -> int:
    """Render the window after `--after` seconds of the scenario to a PNG, then quit: the README
    picture and visual checks. Scenario `emergency` fires an emergency retrain halfway through."""
    width, height = (int(v) for v in args.size.lower().split("x"))
    window.close_choice = "pause"
    window.resize(width, height)
    window.show()
    queue = engine.ops.queue()
    if queue:
        window.select_job(queue[0].id)

    def emergency() -> None:
        running = [j for j in engine.ops.queue() if j.state.is_active]
        if running:
            # A drill: the demo job has only run for seconds, so lift the minimum-runtime protection.
            engine.ops.change_settings({"min_runtime_s": 0.0}, reason="screenshot drill")
            job = engine.ops.emergency(from_job=running[0].id, reason="screenshot drill: line 3 crack escapes",
                                       name="Line 3 crack retrain")
            engine.wake()
            window.refresh()
            window.select_job(job.id)

    def capture() -> None:
        window.refresh()
        for tab, path in screenshot_targets(args.screenshot, getattr(args, "tab", "plots")):
            window.show_tab(tab)
            app.processEvents()
            window.grab().save(path)
            print(f"saved {path}")
        window.close()
        app.quit()

    if args.scenario == "emergency":
        QTimer.singleShot(int(args.after * 500), emergency)
    QTimer.singleShot(int(args.after * 1000) + 300, capture)
    app.exec()
    return 0
