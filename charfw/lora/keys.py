"""Kohya LoRA module names and shapes, derived from the architecture description.

The names are computed from what the network *is* (levels, channels, resnets per level,
transformer depth per level, where the down/upsamplers sit, where channel counts change)
rather than copied from a library's module paths, so a library renaming its internals
cannot silently change what charfw writes. A test cross-checks the result against
diffusers' models.

Kohya's selection rule, applied here: inside every transformer (Transformer2DModel) each
Linear and 1x1 conv gets a module; with 3x3 convs enabled ("C3Lier") also every conv,
conv_shortcut and time_emb_proj of the resnets and the down/upsampler convs. Text
encoders: q/k/v/out projections and both MLP layers of every layer.

SD1.5 uses diffusers-style U-Net names (`lora_unet_down_blocks_0_attentions_0_proj_in`),
SDXL the LDM-style names sd-scripts' SDXL U-Net has (`lora_unet_input_blocks_4_1_proj_in`).
"""

from __future__ import annotations

from dataclasses import dataclass

from charfw.families.family import Family, TextEncoderArch, UNetArch


@dataclass(frozen=True)
class ModuleSpec:
    """One LoRA target: kohya name, weight shape (out, in, k) and whether it is a Conv2d."""

    name: str
    out_dim: int
    in_dim: int
    kernel: int = 1
    conv: bool = False

    @property
    def conv3x3(self) -> bool:
        return self.kernel > 1

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.conv:
            return (self.out_dim, self.in_dim, self.kernel, self.kernel)
        return (self.out_dim, self.in_dim)


def _resnet(prefix: str, cin: int, cout: int, temb: int, ldm: bool) -> list[ModuleSpec]:
    conv1, emb, conv2, skip = (("in_layers_2", "emb_layers_1", "out_layers_3", "skip_connection") if ldm
                               else ("conv1", "time_emb_proj", "conv2", "conv_shortcut"))
    specs = [ModuleSpec(f"{prefix}_{conv1}", cout, cin, 3, True),
             ModuleSpec(f"{prefix}_{emb}", cout, temb),
             ModuleSpec(f"{prefix}_{conv2}", cout, cout, 3, True)]
    if cin != cout:
        specs.append(ModuleSpec(f"{prefix}_{skip}", cout, cin, 1, True))
    return specs


def _transformer(prefix: str, ch: int, depth: int, arch: UNetArch) -> list[ModuleSpec]:
    proj = dict(kernel=1, conv=not arch.linear_proj)
    specs = [ModuleSpec(f"{prefix}_proj_in", ch, ch, **proj)]
    inner = arch.ff_mult * ch
    for t in range(depth):
        tb = f"{prefix}_transformer_blocks_{t}"
        for attn, kv_in in (("attn1", ch), ("attn2", arch.context_dim)):
            specs += [ModuleSpec(f"{tb}_{attn}_to_q", ch, ch),
                      ModuleSpec(f"{tb}_{attn}_to_k", ch, kv_in),
                      ModuleSpec(f"{tb}_{attn}_to_v", ch, kv_in),
                      ModuleSpec(f"{tb}_{attn}_to_out_0", ch, ch)]
        specs += [ModuleSpec(f"{tb}_ff_net_0_proj", 2 * inner, ch),
                  ModuleSpec(f"{tb}_ff_net_2", ch, inner)]
    specs.append(ModuleSpec(f"{prefix}_proj_out", ch, ch, **proj))
    return specs


def unet_module_specs(arch: UNetArch, conv3x3: bool) -> list[ModuleSpec]:
    """All U-Net LoRA modules, walking the U-Net as its skip connections dictate.

    Every down-path output (conv_in, each resnet/attention layer, each downsampler) is
    pushed on a stack; every up-path resnet concatenates one popped entry to its input.
    That is what decides the resnets' input widths and so which need a conv_shortcut.
    """
    p, ldm, temb = "lora_unet", arch.ldm_names, arch.temb_dim
    levels = len(arch.channels)
    specs: list[ModuleSpec] = []

    def add(convs: list[ModuleSpec]) -> None:
        # resnets and samplers are kohya targets only when 3x3 convs are trained
        if conv3x3:
            specs.extend(convs)

    ch = arch.channels[0]
    skips = [ch]                                     # conv_in output
    for i, (cout, depth) in enumerate(zip(arch.channels, arch.depth)):
        for j in range(arch.layers_per_block):
            n = 1 + 3 * i + j
            res, att = ((f"{p}_input_blocks_{n}_0", f"{p}_input_blocks_{n}_1") if ldm else
                        (f"{p}_down_blocks_{i}_resnets_{j}", f"{p}_down_blocks_{i}_attentions_{j}"))
            add(_resnet(res, ch, cout, temb, ldm))
            ch = cout
            if depth:
                specs.extend(_transformer(att, ch, depth, arch))
            skips.append(ch)
        if i < levels - 1:
            name = f"{p}_input_blocks_{3 + 3 * i}_0_op" if ldm else f"{p}_down_blocks_{i}_downsamplers_0_conv"
            add([ModuleSpec(name, ch, ch, 3, True)])
            skips.append(ch)

    mid = ((f"{p}_middle_block_0", f"{p}_middle_block_1", f"{p}_middle_block_2") if ldm else
           (f"{p}_mid_block_resnets_0", f"{p}_mid_block_attentions_0", f"{p}_mid_block_resnets_1"))
    add(_resnet(mid[0], ch, ch, temb, ldm))
    specs.extend(_transformer(mid[1], ch, arch.mid_depth, arch))
    add(_resnet(mid[2], ch, ch, temb, ldm))

    for i, level in enumerate(reversed(range(levels))):
        cout, depth = arch.channels[level], arch.depth[level]
        for j in range(arch.layers_per_block + 1):
            n = 3 * i + j
            res, att = ((f"{p}_output_blocks_{n}_0", f"{p}_output_blocks_{n}_1") if ldm else
                        (f"{p}_up_blocks_{i}_resnets_{j}", f"{p}_up_blocks_{i}_attentions_{j}"))
            add(_resnet(res, ch + skips.pop(), cout, temb, ldm))
            ch = cout
            if depth:
                specs.extend(_transformer(att, ch, depth, arch))
        if level > 0:
            n = 3 * i + 2
            name = (f"{p}_output_blocks_{n}_{2 if depth else 1}_conv" if ldm
                    else f"{p}_up_blocks_{i}_upsamplers_0_conv")
            add([ModuleSpec(name, ch, ch, 3, True)])
    assert not skips, "skip stack must be consumed exactly"
    return specs


def text_encoder_module_specs(te: TextEncoderArch) -> list[ModuleSpec]:
    specs = []
    for n in range(te.layers):
        layer = f"{te.prefix}text_model_encoder_layers_{n}"
        specs += [ModuleSpec(f"{layer}_self_attn_{x}_proj", te.width, te.width) for x in "qkv"]
        specs += [ModuleSpec(f"{layer}_self_attn_out_proj", te.width, te.width),
                  ModuleSpec(f"{layer}_mlp_fc1", te.mlp, te.width),
                  ModuleSpec(f"{layer}_mlp_fc2", te.width, te.mlp)]
    return specs


def lora_module_specs(family: Family, conv3x3: bool = True) -> dict[str, ModuleSpec]:
    """name -> spec for every module a kohya LoRA for `family` can hold (SD1.5: 264 names for plain
    LoRA, U-Net 192 + text encoder 72; 350 with 3x3 convs)."""
    specs = [s for te in family.text_encoders for s in text_encoder_module_specs(te)]
    return {s.name: s for s in specs + unet_module_specs(family.unet, conv3x3)}
