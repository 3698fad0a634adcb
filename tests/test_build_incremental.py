"""doit reruns exactly what changed, observed through doit's own output on a copy of the example."""

import shutil

import pytest

from conftest import executed, run_doit

DATA_STAGES = ("images", "captions", "dataset")


@pytest.fixture
def built(workspace):
    proc = run_doit(workspace, "-n", "2", *DATA_STAGES)  # parallel-safe from a clean start
    ran = executed(proc)
    assert {"images:krnk/face", "captions:tyank/ps", "dataset:krnksf_tyankps"} <= ran
    return workspace


def test_second_run_executes_nothing(built):
    assert executed(run_doit(built, *DATA_STAGES)) == set()


def test_editing_a_character_tag_reruns_only_its_captions_and_datasets(built):
    manifest = built / "characters/krnk/character.yaml"
    manifest.write_text(manifest.read_text() + "tags: [choker]\n")
    assert executed(run_doit(built, *DATA_STAGES)) == {
        "captions:krnk/face", "dataset:krnk", "dataset:krnksf", "dataset:krnksf_tyankps"}
    caption = next((built / "build/images/krnk/face").glob("*_f0128/f00.txt")).read_text()
    assert caption.startswith("krnk, choker, white background")


def test_adding_an_image_reruns_only_its_set(built):
    src = built / "characters/tyank/ps"
    shutil.copy(sorted(src.glob("b00*.png"))[0], src / "b00-extra.png")
    assert executed(run_doit(built, *DATA_STAGES)) == {
        "images:tyank/ps", "captions:tyank/ps", "dataset:tyankps", "dataset:krnksf_tyankps"}
    assert list((built / "build/images/tyank/ps").glob("*_b0256/b00-extra.png"))


def test_removing_an_image_removes_its_outputs(built):
    (built / "characters/krnk/face/f01.png").unlink()
    run_doit(built, *DATA_STAGES)
    face = built / "build/images/krnk/face"
    assert not list(face.glob("*/f01.png")) and not list(face.glob("*/f01.txt"))
    assert list(face.glob("*/f00.png"))


def test_editing_a_value_no_stage_reads_reruns_nothing(built):
    manifest = built / "characters/krnk/character.yaml"
    manifest.write_text(manifest.read_text() + "train:\n  lr: 2.0e-4\n")
    assert executed(run_doit(built, *DATA_STAGES)) == set()


def test_template_change_reruns_only_captions_it_changes(built):
    (built / "charfw.yaml").write_text((built / "charfw.yaml").read_text() + """
captions:
  template:
    - tags: [simple background]
    - tags: [full body]
      set: [b]
    - tags: [upper body]
      set: [f]
""")
    ran = executed(run_doit(built, *DATA_STAGES))
    assert {t for t in ran if t.startswith("captions:")} == {
        "captions:krnk/face", "captions:krnk/sf", "captions:tyank/face", "captions:tyank/ps"}
    assert not {t for t in ran if t.startswith("images:")}
    # a second template edit touching body captions only leaves face captions alone
    text = (built / "charfw.yaml").read_text().replace("tags: [full body]", "tags: [full body, standing]")
    (built / "charfw.yaml").write_text(text)
    ran = executed(run_doit(built, *DATA_STAGES))
    assert {t for t in ran if t.startswith("captions:")} == {"captions:krnk/sf", "captions:tyank/ps"}


def test_doit_list_shows_stages(workspace):
    out = run_doit(workspace, "list").stdout
    for stage in DATA_STAGES:
        assert any(line.startswith(stage + " ") and len(line.split()) > 2 for line in out.splitlines()), out
    out_all = run_doit(workspace, "list", "--all").stdout
    assert "captions:krnk/face" in out_all and "dataset:krnksf_tyankps" in out_all
    info = run_doit(workspace, "info", "dataset:krnk", check=False).stdout
    assert "not up-to-date" in info and "file_dep" in info
