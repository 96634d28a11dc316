"""Colours, fonts and the light/dark palettes, in one place so every view speaks the same language:
a state or a priority has one colour everywhere (queue, plots, devices, notifications)."""
from __future__ import annotations

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

STATE_COLOURS = {
    "queued": "#64748b",
    "starting": "#2563eb",
    "running": "#16a34a",
    "preempting": "#d97706",
    "paused": "#d97706",
    "finished": "#0f766e",
    "failed": "#dc2626",
    "cancelled": "#94a3b8",
}
PRIORITY_COLOURS = {"urgent": "#dc2626", "high": "#ea580c", "normal": "#2563eb", "low": "#64748b"}
LOSS_COLOURS = {"box_loss": "#2563eb", "cls_loss": "#db2777", "dfl_loss": "#65a30d"}
METRIC_COLOURS = {"precision": "#7c3aed", "recall": "#0891b2", "mAP50": "#ea580c", "mAP50-95": "#16a34a"}
URGENT_RED = "#dc2626"
OK_GREEN = "#16a34a"
WARN_AMBER = "#d97706"

# Readable from two metres: the base size is larger than a desktop default.
BASE_POINT_SIZE = 11


def state_colour(state: str) -> QColor:
    return QColor(STATE_COLOURS.get(state, "#64748b"))


def priority_colour(priority: str) -> QColor:
    return QColor(PRIORITY_COLOURS.get(priority, "#64748b"))


def heading_font(scale: float = 1.25, bold: bool = True) -> QFont:
    font = QFont()
    font.setPointSizeF(BASE_POINT_SIZE * scale)
    font.setBold(bold)
    return font


def apply_theme(app: QApplication, dark: bool) -> None:
    """Fusion style with a light or dark palette (native-looking, same on every desktop)."""
    app.setStyle("Fusion")
    font = app.font()
    font.setPointSize(BASE_POINT_SIZE)
    app.setFont(font)
    palette = QPalette()
    if dark:
        colours = {
            QPalette.Window: "#1f2329", QPalette.WindowText: "#e5e7eb", QPalette.Base: "#15181d",
            QPalette.AlternateBase: "#1b1f25", QPalette.Text: "#e5e7eb", QPalette.Button: "#2a2f37",
            QPalette.ButtonText: "#e5e7eb", QPalette.Highlight: "#2563eb", QPalette.HighlightedText: "#ffffff",
            QPalette.ToolTipBase: "#2a2f37", QPalette.ToolTipText: "#e5e7eb", QPalette.PlaceholderText: "#9ca3af",
            QPalette.Link: "#60a5fa", QPalette.Mid: "#3b424d", QPalette.Dark: "#111418",
        }
    else:
        colours = {
            QPalette.Window: "#f3f4f6", QPalette.WindowText: "#111827", QPalette.Base: "#ffffff",
            QPalette.AlternateBase: "#f8fafc", QPalette.Text: "#111827", QPalette.Button: "#e5e7eb",
            QPalette.ButtonText: "#111827", QPalette.Highlight: "#2563eb", QPalette.HighlightedText: "#ffffff",
            QPalette.ToolTipBase: "#ffffff", QPalette.ToolTipText: "#111827", QPalette.PlaceholderText: "#6b7280",
            QPalette.Link: "#2563eb", QPalette.Mid: "#cbd5e1", QPalette.Dark: "#94a3b8",
        }
    for role, colour in colours.items():
        palette.setColor(role, QColor(colour))
    app.setPalette(palette)
    app.setProperty("cutline_dark", dark)


def is_dark(app: QApplication | None = None) -> bool:
    app = app or QApplication.instance()
    return bool(app and app.property("cutline_dark"))


def plot_colours(dark: bool) -> tuple[str, str]:
    """(background, foreground) for pyqtgraph plots."""
    return ("#15181d", "#d1d5db") if dark else ("#ffffff", "#374151")
