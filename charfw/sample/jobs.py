"""The sample stage's two renders, as the build runs them here or a cluster node runs them there."""

from __future__ import annotations

from pathlib import Path

from charfw.families import Family


def samples(model: str, vae: str | None, family: Family, lora: str, prompts: list[str], settings, clip_skip: int,
            outs: list[str]) -> None:
    """One image per (prompt, seed) with the finished LoRA at strength 1."""
    from charfw.lora import load_lora
    from charfw.sample import render

    sd = render.load(model, vae, family)
    with render.applied(render.lora_layers(sd), load_lora(lora).modules.values(), 1.0):
        images = render.render(sd, prompts, settings.seeds, settings, clip_skip)
    for image, out in zip(images, outs):
        render.save_png(image, Path(out))


def grid(model: str, vae: str | None, family: Family, lora: str, prompts: list[str], settings, clip_skip: int,
         rows: dict[str, dict[str, float]], outs: list[str]) -> None:
    """Block weights (rows) x strength (columns) of the trained LoRA, the first prompt and seed."""
    from charfw.lora import load_lora
    from charfw.lora.merge import apply_block_weights
    from charfw.sample import render

    sd = render.load(model, vae, family)
    layers, modules = render.lora_layers(sd), list(load_lora(lora).modules.values())
    cells = []
    for r, weights in enumerate(rows.values()):
        scaled = list(apply_block_weights(modules, weights, family))
        row = []
        for c, strength in enumerate(settings.grid_strengths):
            with render.applied(layers, scaled, strength, quiet=bool(r or c)):
                row.append(render.render(sd, prompts[:1], settings.seeds[:1], settings, clip_skip)[0])
        cells.append(row)
    image = render.grid_image(cells, list(rows), [f"strength {s:g}" for s in settings.grid_strengths])
    render.save_png(image, Path(outs[0]))


RENDERS = {"samples": samples, "grid": grid}
