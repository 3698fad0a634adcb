"""Where a LoRA goes in a loaded model: each kohya module name's layer (charfw.lora.keys lists the
names from the family's architecture). The trainer puts its adapters there and sampling applies a
finished LoRA there, so both find the same layers the same way.
"""

from __future__ import annotations

from torch import nn

from charfw.errors import CharfwError
from charfw.lora.keys import lora_module_specs
from charfw.models.keymap import unet_module_to_ldm


def target_layers(sd, conv3x3: bool, text_encoders: bool = True) -> dict[str, nn.Module]:
    """kohya name -> the model's layer, for every name charfw.lora.keys lists for the model's family.

    SD1.5's U-Net modules are named by their diffusers paths, SDXL's by their LDM paths (as
    sd-scripts' own SDXL U-Net names them); text encoders are `lora_te_` (SD1.5) or
    `lora_te1_`/`lora_te2_` (SDXL). Without `text_encoders` only the U-Net gets adapters
    (sd-scripts' --network_train_unet_only).
    """
    family = sd.family
    specs = {n: s for n, s in lora_module_specs(family, conv3x3).items()
             if text_encoders or n.startswith("lora_unet_")}
    roots = [("lora_unet_", sd.unet)]
    if text_encoders:
        roots += list(zip((te.prefix for te in family.text_encoders), sd.text_encoders))
    found: dict[str, nn.Module] = {}
    for prefix, root in roots:
        layers = {p: m for p, m in root.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        if root is sd.unet and family.unet.ldm_names:
            ldm = unet_module_to_ldm(layers, sd.unet.config)
            layers = {ldm[p]: m for p, m in layers.items()}
        for path, module in layers.items():
            if prefix.startswith("lora_te") and not path.startswith(("text_model.", "text_projection")):
                path = "text_model." + path  # transformers >= 5.6 dropped CLIPTextModel's wrapper
            name = prefix + path.replace(".", "_")
            if name in specs:
                found[name] = module
    label = family.label
    missing = [n for n in specs if n not in found]
    if missing:
        raise CharfwError(f"the base model lacks {len(missing)} {label} layers a LoRA needs, e.g. {missing[0]}; "
                          f"is it an {label} model?", field="model")
    for name, spec in specs.items():
        layer = found[name]
        kernel = layer.kernel_size[0] if isinstance(layer, nn.Conv2d) else 1
        if spec.conv != isinstance(layer, nn.Conv2d) or spec.kernel != kernel:
            raise CharfwError(f"layer {name} is a {type(layer).__name__} (kernel {kernel}), "
                              f"{label} has a {'Conv2d' if spec.conv else 'Linear'} (kernel {spec.kernel})",
                              field="model")
    return {n: found[n] for n in specs}
