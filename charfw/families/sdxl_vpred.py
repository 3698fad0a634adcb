"""SDXL trained for v-prediction with a zero-terminal-SNR schedule (NoobAI-XL V-Pred and its merges).

The same network and LoRA files as SDXL; what differs is the objective (the U-Net predicts the
velocity v = sqrt(a)·noise - sqrt(1-a)·x0), the noise schedule (rescaled so the last timestep is
pure noise), sd-scripts' flags and the metadata. Told apart by the `v_pred` tensor such
checkpoints carry (ComfyUI reads the same key).
"""

from dataclasses import replace

from charfw.families.sdxl import SDXL

SDXL_VPRED = replace(
    SDXL,
    name="sdxl-vpred",
    label="SDXL v-prediction",
    variant_of="sdxl",
    checkpoint_flag="v_pred",
    checkpoint_evidence="conditioner.embedders.* tensors and a v_pred tensor",
    builtin_model="tiny-sdxl-vpred",
    prediction_type="v",
    zero_terminal_snr=True,
    sd_scripts_flags=(*SDXL.sd_scripts_flags, "--v_parameterization", "--zero_terminal_snr"),
)
