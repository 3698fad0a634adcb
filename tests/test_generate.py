"""The generate stage: ControlNet files as users download them, view prompts, candidates over the pose
templates, keying, picking into the set, and what a change rebuilds (examples/generate/)."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from wsutil import ROOT, executed, run_doit

from charfw.errors import CharfwError
from charfw.families import SD15, SDXL
from charfw.rules.captions import DEFAULT_TEMPLATE, caption
from charfw.rules.viewcode import parse_view_code

EXAMPLE = ROOT / "examples" / "generate"


@pytest.fixture
def gen_ws(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    shutil.copytree(EXAMPLE, ws, ignore=shutil.ignore_patterns("build", "dist"))
    monkeypatch.setenv("CHARFW_CACHE", str(tmp_path / "cache"))
    return ws


def test_the_view_prompt_carries_the_caption_templates_view_tags():
    from charfw.rules.captions import view_prompt

    for code in ("f00", "f12", "b24"):
        view = parse_view_code(code)
        text = view_prompt("1girl, silver hair", view, DEFAULT_TEMPLATE, (255, 255, 255))
        tags = text.split(", ")
        assert tags[:2] == ["1girl", "silver hair"] and "simple background" in tags and "white background" in tags
        assert "black background" not in tags
        view_tags = [t for t in caption([], view, DEFAULT_TEMPLATE).split(", ") if "background" not in t]
        assert all(t in tags for t in view_tags)


def test_keying_makes_the_plain_background_transparent_with_a_soft_edge():
    from charfw.generate.keying import key_out

    image = Image.new("RGB", (4, 1))
    image.putdata([(255, 255, 255), (240, 245, 250), (190, 200, 210), (20, 40, 60)])
    keyed = key_out(image, (255, 255, 255), 40)
    alpha = np.asarray(keyed.getchannel("A"))[0].tolist()
    assert alpha[:2] == [0, 0] and alpha[2] == round((65 - 40) / 40 * 255) and alpha[3] == 255   # soft in between
    assert keyed.convert("RGB").tobytes() == image.tobytes()


@pytest.mark.parametrize("arch", ["tiny-sd15", "tiny-sdxl"])
def test_controlnet_files_load_in_both_layouts_and_match_diffusers_converter(tmp_path, arch):
    import torch
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    from charfw.models.configs import arch_config
    from charfw.models.controlnet import controlnet_config, file_family, load_controlnet, write_random_controlnet

    family = SD15 if arch == "tiny-sd15" else SDXL
    ldm = write_random_controlnet(tmp_path / "ldm.safetensors", arch, layout="ldm")
    dif = write_random_controlnet(tmp_path / "dif.safetensors", arch, layout="diffusers")
    assert file_family(ldm)[:2] == file_family(dif)[:2] == (family, arch)
    a, b = load_controlnet(ldm, family).state_dict(), load_controlnet(dif, family).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # diffusers' own converter reads charfw's original-layout names the same way (it leaves SDXL's
    # add_embedding to another table)
    raw = {k.removeprefix("control_model."): v for k, v in load_file(str(ldm)).items()}
    converted = convert_controlnet_checkpoint(raw, controlnet_config(arch) | {"layers_per_block":
                                                                          arch_config(arch, "unet")["layers_per_block"]})
    assert converted and all(torch.equal(converted[k], a[k]) for k in converted)
    assert set(a) - set(converted) <= {k for k in a if k.startswith("add_embedding.")}


def test_a_controlnet_of_the_wrong_family_or_kind_is_one_clear_error(tmp_path):
    from charfw.models.controlnet import check_kind, load_controlnet, write_random_controlnet

    sdxl = write_random_controlnet(tmp_path / "controlnet-openpose-sdxl.safetensors", "tiny-sdxl")
    with pytest.raises(CharfwError) as exc:
        load_controlnet(sdxl, SD15)
    assert str(exc.value) == f"{sdxl}: an SDXL ControlNet, but the workspace's model is SD1.5"
    with pytest.raises(CharfwError, match="its name says a depth ControlNet, but `kind: openpose` is set"):
        check_kind(Path("control_v11f1p_sd15_depth.safetensors"), "openpose")
    check_kind(Path("control_v11p_sd15_openpose.safetensors"), "openpose")
    check_kind(Path("controlnet-union-sdxl-promax.safetensors"), "depth")
    import torch
    from safetensors.torch import save_file

    not_cn = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(1)}, str(not_cn))
    with pytest.raises(CharfwError, match="not a ControlNet"):
        load_controlnet(not_cn, SD15)


def test_a_union_controlnet_is_recognised_and_runs_alone(tmp_path):
    from charfw.config.models import ControlNetUse
    from charfw.models.controlnet import UNION_MODES, file_family, load_controlnet, union_uses, write_random_controlnet

    path = write_random_controlnet(tmp_path / "diffusion_pytorch_model_promax.safetensors", "tiny-sdxl", layout="union")
    family, arch, layout = file_family(path)
    assert (family, arch, layout) == (SDXL, "tiny-sdxl", "union")
    model = load_controlnet(path, SDXL)
    assert type(model).__name__ == "ControlNetUnionModel" and model.config.num_control_type == 6
    with pytest.raises(CharfwError, match="an SDXL ControlNet, but the workspace's model is SD1.5"):
        load_controlnet(path, SD15)
    assert UNION_MODES == {"openpose": 0, "depth": 1, "lineart": 3}      # xinsir's control types

    def use(kind, model="u.safetensors", weight=1.0):
        return ControlNetUse(model=model, kind=kind, weight=weight)

    assert union_uses([use("openpose"), use("depth")], ["union", "union"])
    assert not union_uses([use("openpose"), use("depth", "d.safetensors")], ["ldm", "diffusers"])
    for uses, layouts, message in (
            ([use("openpose"), use("depth", "d.safetensors")], ["union", "ldm"], "runs alone"),
            ([use("openpose"), use("depth", "v.safetensors")], ["union", "union"], "runs alone"),
            ([use("openpose"), use("depth", weight=0.5)], ["union", "union"], "share one weight"),
            ([use("depth"), use("depth")], ["union", "union"], "listed twice for depth")):
        with pytest.raises(CharfwError, match=message) as exc:
            union_uses(uses, layouts)
        assert exc.value.field == "generate.controlnets"


@pytest.mark.slow
def test_a_union_controlnet_renders_each_image_with_its_control_type(gen_ws, monkeypatch):
    from diffusers import ControlNetUnionModel

    from charfw.config.models import ControlNetUse
    from charfw.generate.render import render_view
    from charfw.workspace import load_project

    seen = []
    forward = ControlNetUnionModel.forward

    def spy(self, *args, **kwargs):
        seen.append((list(kwargs["control_type_idx"]), len(kwargs["controlnet_cond"])))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ControlNetUnionModel, "forward", spy)
    gen = load_project(gen_ws).generations["mira/face"]
    union = "builtin:tiny-sdxl-controlnet-union"
    settings = gen.settings.model_copy(update={"steps": 2, "hires": None, "controlnets": [
        ControlNetUse(model=union, kind="openpose"), ControlNetUse(model=union, kind="depth", start=0.0)]})
    controls = [Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (128, 128, 128))]
    images = render_view("builtin:tiny-sdxl", None, SDXL, settings, "1girl", controls, [3])
    assert len(images) == 1 and images[0].size == (64, 64)
    assert seen and all(idx == [0, 1] for idx, _ in seen)       # openpose and depth, in the listed order
    seen.clear()
    from charfw.config.models import HiresPass

    hires = settings.model_copy(update={"hires": HiresPass(scale=1.5, denoise=0.5, steps=2)})
    (big,) = render_view("builtin:tiny-sdxl", None, SDXL, hires, "1girl", controls, [3])
    assert big.size == (96, 96) and seen and all(idx == [0, 1] for idx, _ in seen)   # the second pass too


@pytest.mark.slow
def test_a_candidate_is_deterministic_for_its_seed(gen_ws):
    from charfw.generate import views
    from charfw.generate.render import render_view
    from charfw.workspace import load_project

    project = load_project(gen_ws)
    gen = project.generations["mira/face"]
    view = views.views(gen)[1]
    prompt = views.prompt(gen, view, project.config.captions.rules)
    controls = views.control_images(gen, view, project.family)
    first = render_view("builtin:tiny-sd15", None, SD15, gen.settings, prompt, controls, [5, 6])
    again = render_view("builtin:tiny-sd15", None, SD15, gen.settings, prompt, controls, [5])
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))


def charfw(ws, *args):
    return subprocess.run([sys.executable, "-m", "charfw.cli", *args, "-C", str(ws)], capture_output=True, text=True)


@pytest.mark.slow
def test_pick_then_build_and_what_an_edit_rebuilds(gen_ws):
    ran = executed(run_doit(gen_ws, "generate", "report"))
    assert {t for t in ran if t.startswith("generate:")} == {"generate:mira/face/f00", "generate:mira/face/f02",
                                                            "generate:mira/face/f10"}
    cands = gen_ws / "build/candidates/mira/face"
    assert Image.open(cands / "f02-1.png").mode == "RGBA"                 # alpha: true keys the white out
    assert "Seed: 2" in Image.open(cands / "f02-1.png").text["parameters"]
    # pick copies exactly that candidate; a different one needs --force
    proc = charfw(gen_ws, "pick", "mira/face", "f02", "1")
    assert proc.returncode == 0, proc.stderr
    assert (gen_ws / "characters/mira/face/f02.png").read_bytes() == (cands / "f02-1.png").read_bytes()
    proc = charfw(gen_ws, "pick", "mira/face", "f02", "0")
    assert proc.returncode == 2 and "already has an image of f02; use --force" in proc.stderr
    (gen_ws / "picks.yaml").write_text("mira/face: {f02: 0, f00: 1}\n")
    proc = charfw(gen_ws, "pick", "--from", str(gen_ws / "picks.yaml"), "--force")
    assert proc.returncode == 0, proc.stderr
    assert (gen_ws / "characters/mira/face/f02.png").read_bytes() == (cands / "f02-0.png").read_bytes()
    page = (gen_ws / "build/report/candidates/mira/face.html")
    run_doit(gen_ws, "report")
    assert page.read_text().count('class="picked"') == 2
    # the set now has images: the next build takes it from there (candidates untouched)
    ran = executed(run_doit(gen_ws, "images", "captions", "dataset"))
    assert "images:mira/face" in ran and not any(t.startswith("generate:") for t in ran)
    # a new description regenerates that character's candidates only, leaves the picks, retrains nothing
    picked = (gen_ws / "characters/mira/face/f02.png").read_bytes()
    manifest = gen_ws / "characters/mira/character.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["generate"]["prompt"] += ", smile"
    manifest.write_text(yaml.safe_dump(data))
    ran = executed(run_doit(gen_ws, "generate", "images", "captions", "dataset"))
    assert {t for t in ran if t.startswith("generate:")} == {"generate:mira/face/f00", "generate:mira/face/f02",
                                                            "generate:mira/face/f10"}
    assert not {t for t in ran if t.split(":")[0] in ("images", "captions", "dataset")}
    assert (gen_ws / "characters/mira/face/f02.png").read_bytes() == picked != (cands / "f02-0.png").read_bytes()


def test_charfw_check_names_a_controlnet_of_the_wrong_family(gen_ws):
    from charfw.models.controlnet import write_random_controlnet

    bad = write_random_controlnet(gen_ws / "characters/mira/controlnet-sdxl-openpose.safetensors", "tiny-sdxl")
    manifest = gen_ws / "characters/mira/character.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["generate"]["controlnets"][0]["model"] = bad.name
    manifest.write_text(yaml.safe_dump(data))
    proc = charfw(gen_ws, "check")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"charfw: error: {bad}: an SDXL ControlNet, but the workspace's model is SD1.5"


@pytest.mark.slow
def test_regularization_images_come_from_the_same_stage(gen_ws):
    """A regularization folder with a generate section gets candidates of generic figures for its face and body
    codes (its own prompt, no character's description); a pick lands in the folder and pairs by view."""
    path = gen_ws / "charfw.yaml"
    data = yaml.safe_load(path.read_text())
    data["regularization"] = {"girls": {"folder": "reg/girls", "class": "girl", "generate": {
        "prompt": "1girl", "controlnets": [{"model": "builtin:tiny-sd15-controlnet", "kind": "openpose"}],
        "candidates": 1, "steps": 2, "width": 64, "height": 64, "views": ["f00", "b00"]}}}
    path.write_text(yaml.safe_dump(data))
    ran = executed(run_doit(gen_ws, "generate"))
    assert {"generate:_reg/girls/f00", "generate:_reg/girls/b00"} <= ran
    params = Image.open(gen_ws / "build/candidates/_reg/girls/f00-0.png").text["parameters"]
    assert params.startswith("1girl, simple background") and "silver hair" not in params
    proc = charfw(gen_ws, "pick", "_reg/girls", "f00", "0")
    assert proc.returncode == 0, proc.stderr
    proc = charfw(gen_ws, "pick", "mira/face", "f00", "0")
    assert proc.returncode == 0, proc.stderr
    from charfw.workspace import load_project
    project = load_project(gen_ws)
    assert [s.set.id for s in project.targets["mira"].reg_subsets] == ["_reg/girls/f00"]
