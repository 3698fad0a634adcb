"""Sample images of finished LoRAs: what the `sample` stage renders for the report.

    prompts.py  the default prompts: the caption template at a few view codes (pure)
    render.py   the diffusers pipeline, a LoRA's ΔW applied at a strength, images at fixed seeds
"""
