"""Writes tests/data/timm_keys/<timm_name>.json: timm's own state-dict keys and shapes.

Run once, where torch and timm are installed (``pip install -r requirements-timm.txt``):

    python -m tests.data.make_timm_golden

Origin: timm 1.0.31's definitions, built on torch's meta device (no weights, no
download): ``timm.create_model('dm_nfnet_f0')`` .. ``('dm_nfnet_f6')``, and for
``dm_nfnet_f7``, which timm's registry lacks, ``NormFreeNet(_dm_nfnet_cfg(depths=(8,
16, 48, 24)))`` from ``timm/models/nfnet.py`` (what ``dm_nfnet_f6`` is with F7's
depths). Each file maps every key of ``model.state_dict()``, in timm's order, to its
shape; tests/checkpoints/test_timm.py compares the project's key map with them without
torch.
"""

import json
import os
import sys

import timm
import torch
from timm.models import nfnet

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "timm_keys")
F7_DEPTHS = (8, 16, 48, 24)  # arXiv:2102.06171 Table 1


def build(name: str) -> torch.nn.Module:
    if name == "dm_nfnet_f7":
        return nfnet.NormFreeNet(nfnet._dm_nfnet_cfg(depths=F7_DEPTHS))
    return timm.create_model(name)


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    for i in range(8):
        name = f"dm_nfnet_f{i}"
        with torch.device("meta"):
            state_dict = build(name).state_dict()
        keys = {k: list(v.shape) for k, v in state_dict.items()}
        path = os.path.join(OUT, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"timm_version": timm.__version__, "keys": keys}, f, separators=(",", ":"))
            f.write("\n")
        print(f"{path}: {len(keys)} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
