"""Loss and learning-rate curves as PNG, from a run's own TensorBoard log (no TensorBoard UI needed)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from charfw.fsutil import atomic_path

SERIES = {"loss/current": (190, 190, 200), "loss/average": (30, 90, 200), "lr/unet": (200, 80, 40),
          "lr/textencoder": (60, 150, 60), "loss/validation/step_average": (220, 120, 0)}
LOSS_TAGS = ["loss/current", "loss/average", "loss/validation/step_average"]
LABELS = {"loss/validation/step_average": "validation (held out)"}


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over every event file of the run (a resumed run has several)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for event in acc.Scalars(tag):
                out.setdefault(tag, {})[event.step] = event.value   # a resumed step: the later value
    return {tag: sorted(points.items()) for tag, points in out.items()}


def render_curves(scalars: dict[str, list[tuple[int, float]]], tags: list[str], title: str, out: Path,
                  size: tuple[int, int] = (640, 240)) -> None:
    """One chart of `tags` (same y axis), steps on x; min/max of the axis written at its ends."""
    width, height = size
    left, right, top, bottom = 64, 12, 24, 28
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    series = {t: scalars[t] for t in tags if scalars.get(t)}
    draw.text((left, 6), title, fill=(0, 0, 0))
    if series:
        steps = [s for pts in series.values() for s, _ in pts]
        values = [v for pts in series.values() for _, v in pts]
        x0, x1 = min(steps), max(max(steps), min(steps) + 1)
        y0, y1 = min(values), max(values)
        if y1 == y0:
            y0, y1 = y0 - 1e-12 - abs(y0) * 0.05, y1 + 1e-12 + abs(y1) * 0.05
        plot_w, plot_h = width - left - right, height - top - bottom

        def xy(step: int, value: float) -> tuple[float, float]:
            return left + (step - x0) / (x1 - x0) * plot_w, top + (1 - (value - y0) / (y1 - y0)) * plot_h

        draw.rectangle((left, top, left + plot_w, top + plot_h), outline=(180, 180, 180))
        for tag, points in series.items():
            draw.line([xy(s, v) for s, v in points], fill=SERIES.get(tag, (0, 0, 0)), width=2)
        draw.text((4, top), f"{y1:.3g}", fill=(0, 0, 0))
        draw.text((4, top + plot_h - 10), f"{y0:.3g}", fill=(0, 0, 0))
        draw.text((left, height - 18), f"step {x0}", fill=(0, 0, 0))
        draw.text((left + plot_w - 60, height - 18), f"step {x1}", fill=(0, 0, 0))
        legend_x = left + 150
        for tag in series:
            label = LABELS.get(tag, tag)
            draw.line((legend_x, 12, legend_x + 16, 12), fill=SERIES.get(tag, (0, 0, 0)), width=3)
            draw.text((legend_x + 20, 6), label, fill=(0, 0, 0))
            legend_x += 30 + 7 * len(label)
    else:
        draw.text((left, height // 2), "no training log", fill=(150, 150, 150))
    with atomic_path(out) as tmp:
        image.save(tmp, format="PNG")
