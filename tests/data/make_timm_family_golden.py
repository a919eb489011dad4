"""Writes tests/data/timm_keys/<timm_name>.json: timm's own facts about its NF family.

Run once, by hand, where timm is installed (no network, no weights):

    python tests/data/make_timm_family_golden.py

Origin of every value: timm 1.0.31 (``timm/models/nfnet.py``) with torch 2.x on CPU.
Each model is built by ``timm.create_model(name)`` on torch's ``meta`` device (shapes
only, no weights, nothing downloaded), and the file records

* ``state_dict``: every ``state_dict()`` key with its shape, in timm's order;
* ``num_params``: the sum of its parameters' sizes (1000 classes);
* ``macs``: multiply-accumulates of one forward pass at the eval resolution, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on the meta model (its FLOPs / 2: convs,
  the SE 1x1 convs and ECA's Conv1d, the classifier; weight standardization, pooling and
  activations count nothing), i.e. the fvcore-free counterpart of timm's published GMACs;
* ``pretrained_cfg``: the eval preprocessing fields of the model's default pretrained
  config (``input_size``, ``test_input_size``, ``crop_pct``, ``test_crop_pct``,
  ``interpolation``, ``mean``, ``std``, ``crop_mode``) and its tag.

The tests (tests/models/test_timm_nf.py, tests/checkpoints/test_timm_family.py) compare
the project's models and key maps with these files without importing torch.
"""

from __future__ import annotations

import json
import os

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

NAMES = (
    "nfnet_l0",
    "eca_nfnet_l0",
    "eca_nfnet_l1",
    "eca_nfnet_l2",
    "eca_nfnet_l3",
    "nf_resnet26",
    "nf_resnet50",
    "nf_resnet101",
    "nf_regnet_b0",
    "nf_regnet_b1",
    "nf_regnet_b2",
    "nf_regnet_b3",
    "nf_regnet_b4",
    "nf_regnet_b5",
)
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "timm_keys")
CFG_FIELDS = (
    "input_size",
    "test_input_size",
    "crop_pct",
    "test_crop_pct",
    "interpolation",
    "mean",
    "std",
    "crop_mode",
    "tag",
)


def _macs(model: torch.nn.Module, size: int) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops() // 2


def golden(name: str) -> dict:
    """timm's key list, parameter count, MACs and eval config of ``name``."""
    with torch.device("meta"):
        model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    eval_size = (cfg.get("test_input_size") or cfg["input_size"])[-1]
    return {
        "timm_name": name,
        "timm_version": timm.__version__,
        "num_params": sum(p.numel() for p in model.parameters()),
        "macs": {str(eval_size): _macs(model, eval_size)},
        "pretrained_cfg": {k: cfg.get(k) for k in CFG_FIELDS},
        "state_dict": [[k, list(v.shape)] for k, v in model.state_dict().items()],
    }


def main() -> None:
    os.makedirs(OUT_DIR, exist_ok=True)
    for name in NAMES:
        path = os.path.join(OUT_DIR, f"{name}.json")
        with open(path, "w") as f:
            json.dump(golden(name), f, separators=(",", ":"))
            f.write("\n")
        print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
