"""doit reruns exactly what changed, observed through doit's own output on a copy of the example."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from charfw.families import SD15

pytestmark = pytest.mark.slow  # builds the example through doit

from wsutil import copy_example, executed, run_doit

DATA_STAGES = ("images", "captions", "dataset")
QUICK_TRAINING = "  steps: 2\n  network: lora\n  dim: 2"


@pytest.fixture(scope="module")
def built_once(tmp_path_factory):
    ws = copy_example(tmp_path_factory.mktemp("built"))
    text = (ws / "charfw.yaml").read_text()  # every stage runs, training only a few steps
    assert "  steps: 100" in text
    (ws / "charfw.yaml").write_text(text.replace("  steps: 100", QUICK_TRAINING))
    proc = run_doit(ws, "-n", "2")  # parallel-safe from a clean start
    ran = executed(proc)
    assert {"images:krnk/face", "captions:tyank/ps", "dataset:krnksf_tyankps", "train:krnk", "train:krnksf",
            "merge:krnksf_tyankps", "compress:krnksf_tyankps", "compress:krnksf"} <= ran
    assert (ws / "dist/krnksf_tyankps.safetensors").exists()
    return ws


@pytest.fixture
def built(built_once, tmp_path):
    """A private copy of the built example; doit's relative paths keep it up to date."""
    ws = tmp_path / "ws"
    shutil.copytree(built_once, ws, symlinks=True)
    return ws


def test_second_run_executes_nothing(built):
    assert executed(run_doit(built)) == set()


def test_editing_a_character_tag_reruns_only_its_captions_and_datasets(built):
    manifest = built / "characters/krnk/character.yaml"
    manifest.write_text(manifest.read_text() + "tags: [choker]\n")
    data = {"captions:krnk/face", "dataset:krnk", "dataset:krnksf", "dataset:krnksf_tyankps"}
    assert executed(run_doit(built, *DATA_STAGES)) == data
    # the captions changed, so the LoRAs trained on them are retrained (the group's is declared)
    trained = {f"{stage}:{t}" for stage in ("train", "merge", "compress", "charts", "sample") for t in ("krnk", "krnksf")}
    assert executed(run_doit(built)) == trained | {"report:characters/krnk", "sample:grid-krnk",
                                                   "sample:grid-krnksf"}   # the page shows captions
    caption = next((built / "build/images/krnk/face").glob("*_f0128/f00.txt")).read_text()
    assert caption.startswith("krnk, choker, white background")


def test_plan_shows_the_whole_consequence_of_an_edit(built):
    """After a tag edit, `charfw plan` lists every task `doit` then runs, trainings included, with reasons."""
    from wsutil import run_charfw

    manifest = built / "characters/krnk/character.yaml"
    manifest.write_text(manifest.read_text() + "tags: [choker]\n")
    out = run_charfw(built, "plan").stdout
    planned = {line.split()[0] for line in out.split("\n\n")[0].splitlines()[1:]}
    assert "2 trainings, 4 steps in all:" in out     # QUICK_TRAINING: 2 steps each
    train = next(line for line in out.splitlines() if line.strip().startswith("train:krnk "))
    assert "inputs rebuilt by" in train and "captions:krnk/face" in train
    assert "caption text of each image" in next(line for line in out.splitlines() if "captions:krnk/face" in line)
    status = run_charfw(built, "status", "tyank").stdout
    assert all(line.endswith("up to date") for line in status.splitlines()) and "train:tyank" in status
    assert executed(run_doit(built)) == planned


def test_adding_an_image_reruns_only_its_set(built):
    src = built / "characters/tyank/ps"
    shutil.copy(sorted(src.glob("b00*.png"))[0], src / "b00-extra.png")
    assert executed(run_doit(built, *DATA_STAGES)) == {
        "images:tyank/ps", "captions:tyank/ps", "dataset:tyankps", "dataset:krnksf_tyankps"}
    assert list((built / "build/images/tyank/ps").glob("*_b0128/b00-extra.png"))


def test_removing_an_image_removes_its_outputs(built):
    (built / "characters/krnk/face/f01.png").unlink()
    run_doit(built, *DATA_STAGES)
    face = built / "build/images/krnk/face"
    assert not list(face.glob("*/f01.png")) and not list(face.glob("*/f01.txt"))
    assert list(face.glob("*/f00.png"))


def test_editing_merge_weights_reruns_only_merge_and_compress_of_that_target(built):
    path = built / "characters/groups.yaml"
    path.write_text(path.read_text() + "  merge:\n    weights: FACE\n")
    before = (built / "dist/krnksf_tyankps.safetensors").read_bytes()
    # its page shows the weights, its samples use the finished file, its grid the target's weights: never retrains
    assert executed(run_doit(built)) == {"merge:krnksf_tyankps", "compress:krnksf_tyankps", "charts:krnksf_tyankps",
                                         "report:targets/krnksf_tyankps", "sample:krnksf_tyankps",
                                         "sample:grid-krnksf_tyankps"}
    assert (built / "dist/krnksf_tyankps.safetensors").read_bytes() != before
    # the same weights written as a list are the same weights: nothing to do
    from charfw.lora.blocks import builtin_presets
    face = ", ".join(f"{v:g}" for v in builtin_presets(SD15)["FACE"])
    path.write_text(path.read_text().replace("weights: FACE", f"weights: [{face}]"))
    assert executed(run_doit(built)) == set()


def test_a_failed_merge_removes_the_outdated_finished_files(built):
    manifest = built / "characters/krnk/character.yaml"
    manifest.write_text(manifest.read_text() + "face:\n  merge:\n    weights: NONE\n")  # drops every module
    assert (built / "dist/krnk.safetensors").exists()
    proc = run_doit(built, "merge:krnk", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "drop every module" in out and "removed the outdated" in out
    assert not (built / "dist/krnk.safetensors").exists() and not (built / "build/merged/krnk.safetensors").exists()


def test_editing_compress_settings_reruns_only_compress(built):
    path = built / "characters/groups.yaml"
    path.write_text(path.read_text() + "  compress:\n    value: 4\n")
    assert executed(run_doit(built)) == {"compress:krnksf_tyankps", "charts:krnksf_tyankps", "sample:krnksf_tyankps"}


def test_editing_a_value_no_stage_reads_reruns_nothing(built):
    manifest = built / "characters/krnk/character.yaml"  # sd-scripts options; krnk trains embedded
    manifest.write_text(manifest.read_text() + "train:\n  extra_args: [--sdpa]\n  attention: sdpa\n")
    assert executed(run_doit(built)) == set()


def test_settings_that_do_not_change_the_weights_retrain_nothing(built):
    path = built / "charfw.yaml"
    path.write_text(path.read_text().replace(QUICK_TRAINING, QUICK_TRAINING + (
        "\n  save_every_n_steps: 7\n  gradient_checkpointing: false\n  cache_latents: disk\n"
        "  save_every_minutes: 1\n  compile: off\n  gpus: [0]\n"
        "  mixed_precision: bf16")))  # trained on a CPU: fp32 whatever it says
    assert executed(run_doit(built)) == set()


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
    ran = executed(run_doit(built, *DATA_STAGES))  # (what the new captions retrain is another test's concern)
    assert {t for t in ran if t.startswith("captions:")} == {
        "captions:krnk/face", "captions:krnk/sf", "captions:tyank/face", "captions:tyank/ps"}
    assert not {t for t in ran if t.startswith("images:")}
    # a second template edit touching body captions only leaves face captions alone
    text = (built / "charfw.yaml").read_text().replace("tags: [full body]", "tags: [full body, standing]")
    (built / "charfw.yaml").write_text(text)
    ran = executed(run_doit(built, *DATA_STAGES))
    assert {t for t in ran if t.startswith("captions:")} == {"captions:krnk/sf", "captions:tyank/ps"}


def test_doit_list_and_info(built):
    workspace = built
    out = run_doit(workspace, "list").stdout
    for stage in ("images", "captions", "dataset", "merge", "compress"):
        assert any(line.startswith(stage + " ") and len(line.split()) > 2 for line in out.splitlines()), out
    out_all = run_doit(workspace, "list", "--all").stdout
    assert "captions:krnk/face" in out_all and "dataset:krnksf_tyankps" in out_all
    assert "up-to-date" in run_doit(workspace, "info", "dataset:krnk", check=False).stdout
    path = workspace / "characters/krnk/character.yaml"
    path.write_text(path.read_text() + "tags: [choker]\n")
    info = run_doit(workspace, "info", "captions:krnk/face", check=False).stdout
    assert "manifest values read by this task changed (caption text of each image)" in info


def test_clean_builds_are_byte_identical(tmp_path):
    """Same inputs, same bytes: sorted safetensors headers, SOURCE_DATE_EPOCH for the recorded times."""
    import hashlib
    import os

    digests = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        ws = copy_example(tmp_path / run)
        text = (ws / "charfw.yaml").read_text()
        (ws / "charfw.yaml").write_text(text.replace("  steps: 100", QUICK_TRAINING))
        os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
        try:
            run_doit(ws, "-n", "2")
        finally:
            del os.environ["SOURCE_DATE_EPOCH"]
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted((ws / "dist").glob("*.safetensors"))})
    assert len(digests[0]) == 5 and digests[0] == digests[1]


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


RESUMABLE = "  steps: 40\n  network: lora\n  dim: 2\n  save_every_n_steps: 5"


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_killed_parallel_build_stops_its_workers_and_resumes_exactly(tmp_path, sig):
    """Killing `doit -n 2` mid-training leaves no process behind; the rerun resumes to the same LoRA."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    trainings = ["train:krnk", "train:tyank"]
    spaces = {}
    for run in ("whole", "killed"):
        (tmp_path / run).mkdir()
        ws = spaces[run] = copy_example(tmp_path / run)
        text = (ws / "charfw.yaml").read_text()
        (ws / "charfw.yaml").write_text(text.replace("  steps: 100", RESUMABLE))
        run_doit(ws, "-n", "2", "dataset")
    run_doit(spaces["whole"], "-n", "2", *trainings)

    ws = spaces["killed"]
    proc = subprocess.Popen([sys.executable, "-m", "doit", "-n", "2", *trainings], cwd=ws, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # as from a terminal, even when these tests run in a background job (SIGINT ignored)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    states = [ws / f"build/train/{name}.state/state.json" for name in ("krnk", "tyank")]
    deadline = time.time() + 120
    while not all(p.exists() for p in states):  # both are training
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    workers = _descendants(proc.pid)
    assert workers
    if sig == "SIGINT":   # Ctrl-C: the terminal signals the whole process group
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(getattr(signal, sig))
    try:
        output = proc.communicate(timeout=120)[0]   # each worker finishes its step and saves first
    except subprocess.TimeoutExpired:
        tree = subprocess.run(["ps", "-o", "pid,ppid,stat,wchan:20,cmd", "-g", str(proc.pid)],
                              capture_output=True, text=True).stdout
        masks = {pid: [ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Sig")]
                 for pid in [proc.pid, *workers] if Path(f"/proc/{pid}/status").exists()}
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"doit did not stop:\n{tree}\n{masks}\n{proc.communicate()[0][-3000:]}") from None
    if sig == "SIGINT":
        assert "Traceback" not in output and output.count("saved at step") == 2, output
    deadline = time.time() + 30
    while _alive(workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(workers), "workers outlived the killed doit"
    saved = [json.loads(p.read_text())["step"] for p in states]
    assert all(5 <= s < 40 for s in saved)       # both saved where they stopped

    rerun = run_doit(ws, "-n", "2", *trainings)  # same threads per training as the whole run
    out = rerun.stdout + rerun.stderr
    assert out.count("resuming") == 2, out
    for name in ("krnk", "tyank"):
        a = load_file(spaces["whole"] / f"build/train/{name}.safetensors")
        b = load_file(ws / f"build/train/{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_second_build_of_the_same_workspace_says_who_holds_it(tmp_path):
    import subprocess
    import sys
    import time

    (tmp_path / "w").mkdir()
    ws = copy_example(tmp_path / "w")
    text = (ws / "charfw.yaml").read_text()
    (ws / "charfw.yaml").write_text(text.replace("  steps: 100", RESUMABLE))
    run_doit(ws, "dataset")
    first = subprocess.Popen([sys.executable, "-m", "doit", "train:krnk"], cwd=ws,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while f'"pid": {first.pid},' not in (ws / "build/.lock").read_text():   # the first build holds it
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.1)
        second = run_doit(ws, "train:krnk", check=False)
        assert second.returncode == 2 and "train:krnk" not in second.stdout
        assert f"being built by PID {first.pid} (doit train:krnk) since" in second.stderr
        assert "dataset:krnk" in run_doit(ws, "list", "--all").stdout     # reading goes on meanwhile
    finally:
        first.wait()
    assert first.returncode == 0
    assert executed(run_doit(ws, "train:krnk")) == set()   # the lock went with its process


def test_charfw_train_outside_doit(built):
    from wsutil import run_charfw

    proc = run_charfw(built, "train", "krnk")
    assert proc.returncode == 0 and "is up to date" in proc.stdout
    before = (built / "build/train/krnk.safetensors.key").read_text()
    proc = run_charfw(built, "train", "krnk", "--force")
    assert proc.returncode == 0 and "wrote" in proc.stdout, proc.stderr
    assert (built / "build/train/krnk.safetensors.key").read_text() == before   # same run, same key
    ran = executed(run_doit(built))   # the rewritten file (new timestamps) feeds what is made from it
    assert "train:krnk" not in ran and "merge:krnk" in ran
