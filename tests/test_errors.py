"""Each bad input gives one clear error naming the file and field or image, and leaves no partial output."""

import shutil

import pytest

from charfw.check import check_project
from charfw.config.workspace import load_project
from charfw.errors import CharfwError
from wsutil import run_charfw, run_doit, use_spec_sizes


def error_of(ws) -> str:
    with pytest.raises(CharfwError) as exc:
        check_project(ws)
    return str(exc.value)


def append(path, text):
    path.write_text(path.read_text() + text)


def test_example_is_valid(workspace):
    project, warnings = check_project(workspace)
    assert set(project.targets) == {"krnk", "krnksf", "tyank", "tyankps", "krnksf_tyankps"}
    assert warnings == []


def test_file_not_matching_view_code(workspace):
    shutil.copy(workspace / "characters/krnk/face/f00.png", workspace / "characters/krnk/face/front.png")
    msg = error_of(workspace)
    assert "characters/krnk/face/front.png" in msg and "view code" in msg


def test_body_code_in_face_folder(workspace):
    shutil.copy(workspace / "characters/krnk/face/f00.png", workspace / "characters/krnk/face/b00.png")
    assert "face/b00.png" in error_of(workspace)


def test_duplicate_view_code(workspace):
    from PIL import Image
    Image.open(workspace / "characters/krnk/face/f00.png").convert("RGB").save(workspace / "characters/krnk/face/f00.jpg")
    msg = error_of(workspace)
    assert "duplicate view code 'f00'" in msg and "characters/krnk/face/f00" in msg


def test_missing_folder(workspace):
    shutil.rmtree(workspace / "characters/tyank/ps")
    msg = error_of(workspace)
    assert "characters/tyank/character.yaml" in msg and "outfits.ps.folder" in msg and "not found" in msg


def test_empty_folder(workspace):
    for p in (workspace / "characters/krnk/face").iterdir():
        p.unlink()
    msg = error_of(workspace)
    assert "characters/krnk/character.yaml" in msg and "face.folder" in msg and "empty" in msg


def test_corrupt_image(workspace):
    (workspace / "characters/krnk/face/f02.png").write_bytes(b"not an image at all")
    msg = error_of(workspace)
    assert "characters/krnk/face/f02.png" in msg and "cannot read image" in msg


def test_truncated_image_fails_its_task_and_leaves_no_partial_output(workspace):
    path = workspace / "characters/krnk/face/f02.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    assert "f02.png" in error_of(workspace)
    proc = run_doit(workspace, "images", check=False)
    assert proc.returncode != 0
    assert "characters/krnk/face/f02.png" in proc.stdout + proc.stderr
    out = workspace / "build/images/krnk/face"
    assert not list(out.rglob("f02.png"))
    assert not list((workspace / "build").rglob("*.tmp*"))


def test_mixed_size_classes_in_one_folder(workspace):
    from PIL import Image
    use_spec_sizes(workspace)  # at 512 and up a 768x300 image is MID_LOW, the others MID_MID
    Image.new("RGBA", (768, 300)).save(workspace / "characters/krnk/face/f03.png")
    msg = error_of(workspace)
    assert "characters/krnk/face/f03.png" in msg and "size class" in msg


def test_unknown_field_with_line(workspace):
    append(workspace / "characters/krnk/character.yaml", "colour: red\n")
    msg = error_of(workspace)
    lines = (workspace / "characters/krnk/character.yaml").read_text().splitlines()
    assert f"characters/krnk/character.yaml:{len(lines)}: colour: unknown field" in msg


def test_wrong_type_with_line(workspace):
    path = workspace / "characters/tyank/character.yaml"
    path.write_text(path.read_text().replace("symmetric: false", "symmetric: sometimes"))
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if l.startswith("symmetric"))
    msg = error_of(workspace)
    assert f"character.yaml:{line}: symmetric:" in msg and "sometimes" in msg


def test_nested_field_error_points_at_its_line(workspace):
    path = workspace / "characters/krnk/character.yaml"
    append(path, "train:\n  steps: many\n")
    line = len(path.read_text().splitlines())
    assert f"character.yaml:{line}: train.steps:" in error_of(workspace)


def test_unknown_group_member(workspace):
    path = workspace / "characters/groups.yaml"
    path.write_text(path.read_text().replace("tyankps]", "nobody]"))
    msg = error_of(workspace)
    assert "groups.yaml:" in msg and "unknown group member 'nobody'" in msg and "krnksf" in msg


def test_weight_list_of_wrong_length(workspace):
    path = workspace / "characters/krnk/character.yaml"
    append(path, "merge:\n  weights: [1, 0, 1]\n")
    msg = error_of(workspace)
    assert f"characters/krnk/character.yaml:{len(path.read_text().splitlines())}: merge.weights:" in msg
    assert "3" in msg


def test_unknown_preset(workspace):
    path = workspace / "characters/groups.yaml"
    append(path, "  merge:\n    weights: FACEE\n")
    msg = error_of(workspace)
    line = len(path.read_text().splitlines())
    assert f"groups.yaml:{line}: krnksf_tyankps.merge.weights:" in msg and "FACEE" in msg


def test_workspace_preset_is_accepted(workspace):
    append(workspace / "charfw.yaml", "presets:\n  MINE: [" + ", ".join(["1"] * 26) + "]\n")
    append(workspace / "characters/groups.yaml", "  merge:\n    weights: MINE\n")
    assert load_project(workspace).targets["krnksf_tyankps"].merge.weights == "MINE"


def test_doit_and_check_report_the_same_clear_error(workspace):
    append(workspace / "characters/krnk/character.yaml", "colour: red\n")
    proc = run_doit(workspace, "list", check=False)
    assert proc.returncode != 0 and "colour: unknown field" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_charfw(workspace, "check")
    assert proc.returncode == 2 and "colour: unknown field" in proc.stderr


def test_new_scaffolds_a_character(workspace):
    proc = run_charfw(workspace, "new", "mike", "--asymmetric", "--background", "white", "--outfit", "gym")
    assert proc.returncode == 0, proc.stderr
    folder = workspace / "characters/mike"
    assert (folder / "face/VIEW_CODES.md").exists() and (folder / "gym").is_dir()
    # empty folders are reported until images arrive; then the character validates
    assert "face.folder" in error_of(workspace)
    for y in range(8):
        shutil.copy(workspace / "characters/tyank/face/f00.png", folder / f"face/f0{y}.png")
    for y in range(8):
        shutil.copy(workspace / "characters/tyank/ps/b00.png", folder / f"gym/b0{y}.png")
    project, _ = check_project(workspace)
    assert project.targets["mikegym"].trigger_words == ["mikegym", "mike"]
    assert project.sets["mike/face"].symmetric is False


def test_the_model_must_be_chosen(workspace):
    path = workspace / "charfw.yaml"
    path.write_text("\n".join(l for l in path.read_text().splitlines() if not l.startswith("model:")) + "\n")
    msg = error_of(workspace)
    assert "charfw.yaml" in msg and "model: required field is missing" in msg and "model: models/" in msg
    path.unlink()
    assert "no charfw.yaml here" in error_of(workspace)
