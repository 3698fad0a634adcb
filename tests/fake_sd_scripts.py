"""A stand-in for a kohya sd-scripts checkout: records its argv and writes a small valid LoRA."""

from pathlib import Path

FAKE_TRAIN_NETWORK = '''
import json, os, sys, tomllib
from pathlib import Path

from library import train_util  # found only if the script's own folder is on sys.path


def opt(name):
    for a in sys.argv[1:]:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]


if os.environ.get("FAKE_SD_FAIL"):
    for i in range(30):
        print(f"step {i}/30 loss=0.1")
    print("RuntimeError: CUDA out of memory (fake)", file=sys.stderr)
    sys.exit(3)

out_dir = Path(opt("--output_dir"))
name = opt("--output_name")
config = tomllib.loads(Path(opt("--dataset_config")).read_text())
dirs = [sub["image_dir"] for ds in config["datasets"] for sub in ds["subsets"]]
missing = [d for d in dirs if not Path(d).is_dir()]  # sd-scripts resolves them against the cwd
if missing:
    print("image_dir not found:", missing)
    sys.exit(4)
(out_dir / "argv.json").write_text(json.dumps(
    {"argv": sys.argv[1:], "cwd": os.getcwd(), "marker": train_util.MARKER}))
if os.environ.get("FAKE_SD_NO_OUTPUT"):
    sys.exit(0)

import numpy as np
from safetensors.numpy import save_file

tensors = {}
value = int(opt("--max_train_steps")) / 1e5  # output depends on the settings, as a real run's does
for mod in ("lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            "lora_te_text_model_encoder_layers_0_mlp_fc1"):
    tensors[mod + ".lora_down.weight"] = np.full((4, 768), value, np.float16)
    tensors[mod + ".lora_up.weight"] = np.full((768 if "q_proj" in mod else 3072, 4), 0.02, np.float16)
    tensors[mod + ".alpha"] = np.array(2.0, np.float16)
save_file(tensors, str(out_dir / (name + ".safetensors")),
          metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4"})
print("fake training done")
'''


def make_sd_scripts(folder: Path, *, train_util: str = "MARKER = 'fake sd-scripts'\n",
                    fake_modules: tuple[str, ...] = ("xformers", "bitsandbytes")) -> Path:
    (folder / "library").mkdir(parents=True)
    (folder / "library" / "__init__.py").write_text("")
    (folder / "library" / "train_util.py").write_text(train_util)
    (folder / "networks").mkdir()
    (folder / "networks" / "__init__.py").write_text("")
    (folder / "networks" / "lora.py").write_text("")
    (folder / "lycoris").mkdir()  # shadows an installed LyCORIS: keeps the import check fast
    (folder / "lycoris" / "__init__.py").write_text("")
    (folder / "lycoris" / "kohya.py").write_text("")
    for name in fake_modules:
        (folder / f"{name}.py").write_text("")
    (folder / "train_network.py").write_text(FAKE_TRAIN_NETWORK)
    (folder / "sdxl_train_network.py").write_text(FAKE_TRAIN_NETWORK)
    return folder


