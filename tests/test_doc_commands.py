"""Every command line in README.md and docs/*.md is read the way its program reads it.

A documented command that names a preset, a config key, a flag or a value its program
rejects fails here. Commands that would need the network, a dataset, a TPU pod or hours
of compute are not run to the end; each is taken as far as its program goes before it
touches any of those:

- `experiments.train`, and the trainer part of every launcher command: the preset or
  config file loads, every `--config.*` override exists and parses, and the other flags
  are the trainer's (absl; in a subprocess, as absl flags are global to a process);
- `experiments.signal_prop`: its flags and every model it names;
- `experiments.evaluate`, `predict`, `export`: their own argument parsers, and
  `evaluate`'s config overrides;
- `nfnets_jax.data.prepare`: its real `main()`, with the tfds build replaced;
- `launch.tpu_vm`, `launch.slurm`: their real `main()` with `--dry_run`;
- `pytest`: the command `.ci/run` runs; `wget`: a released checkpoint's URL; `pip`: the
  files it installs from.

What the commands then do is tested elsewhere (tests/test_cli.py, tests/test_launch.py,
tests/training/, tests/test_notebooks.py).
"""

import json
import subprocess
import sys
import types

import pytest

from experiments import configs, evaluate, export, predict
from experiments.configs import common
from launch import slurm, tpu_vm
from nfnets_jax.data import prepare
from nfnets_jax.training import config as config_lib
from tests.doc_blocks import REPO, documented_commands

COMMANDS = documented_commands()
CHECKED = {
    "experiments.train",
    "experiments.signal_prop",
    "experiments.evaluate",
    "experiments.predict",
    "experiments.export",
    "nfnets_jax.data.prepare",
    "launch.tpu_vm",
    "launch.slurm",
    "pytest",
}
LAUNCHERS = {"launch.tpu_vm": tpu_vm, "launch.slurm": slurm}

# Parses one absl program's commands in a fresh interpreter (absl flags are global to a
# process): [program, [argv...]] on stdin, a JSON list of [argv, error] on stdout.
_ABSL_CHECK = r"""
import importlib, json, sys

from absl import flags

from experiments import configs
from nfnets_jax.training import config as config_lib

program, commands = json.load(sys.stdin)
importlib.import_module(program)
failures = []
for argv in commands:
    try:
        if program == "experiments.train":
            _, rest = configs.config_from_argv([program, *argv])
        else:
            spec, rest = configs.pop_config_spec([program, *argv])
            if spec or any(arg.startswith("--config.") for arg in rest):
                raise ValueError(f"{program} takes no --config")
        positional = flags.FLAGS(rest)
        if positional[1:]:
            raise ValueError(f"unexpected arguments {positional[1:]}")
        if program == "experiments.signal_prop":
            for name in flags.FLAGS.models:
                configs.load_config(name)
    except Exception as error:
        failures.append([argv, f"{type(error).__name__}: {error}"])
    finally:
        flags.FLAGS.unparse_flags()
print(json.dumps(failures))
"""


def program_and_args(argv):
    if argv[:2] == ["python", "-m"]:
        return argv[2], argv[3:]
    return argv[0], argv[1:]


def commands_of(program):
    found = [args for _, argv in COMMANDS for p, args in [program_and_args(argv)] if p == program]
    assert found, f"no documented {program} command (did the docs or their extraction change?)"
    return found


def test_every_documented_command_is_one_this_file_checks():
    pages = {page for page, _ in COMMANDS}
    assert {"README.md", "docs/training.md", "docs/launching.md"} <= pages
    unchecked = [
        (page, argv) for page, argv in COMMANDS if program_and_args(argv)[0] not in CHECKED
    ]
    assert all(argv[0] in ("pip", "wget") for _, argv in unchecked), unchecked


def test_install_and_download_commands():
    for _, argv in COMMANDS:
        if argv[0] == "pip":
            assert argv == ["pip", "install", "-r", "requirements.txt", "-e", "."]
            assert (REPO / "requirements.txt").is_file() and (REPO / "setup.py").is_file()
        elif argv[0] == "wget":
            assert len(argv) == 2
            variant = argv[1].removeprefix("https://storage.googleapis.com/dm-nfnets/")
            assert variant in {f"F{i}_haiku.npz" for i in range(7)}, argv


def test_the_readme_test_command_is_the_one_ci_runs():
    readme = [argv for page, argv in COMMANDS if page == "README.md" and "pytest" in argv]
    assert readme == [["python", "-m", "pytest", "-q", "-n", "2", "tests"]]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == " ".join(readme[0])
    assert len(commands_of("pytest")) == 1  # no other test command in the docs


def absl_failures(program, commands):
    """The commands `program` rejects, as [argv, error] pairs."""
    result = subprocess.run(
        [sys.executable, "-c", _ABSL_CHECK],
        input=json.dumps([program, commands]),
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def trainer_argv_of_launcher(module, args):
    """The experiments.train arguments a launcher command hands to every host, if any."""
    parsed, extra = module.parse_args(args)
    if not getattr(parsed, "config", None):
        return None
    return [f"--config={parsed.config}", f"--workdir={parsed.workdir}", *extra]


def test_launcher_commands_dry_run(capsys):
    for program, module in LAUNCHERS.items():
        for args in commands_of(program):
            assert module.main(["--dry_run", *args]) == 0, (program, args)
            printed = capsys.readouterr().out
            assert printed.startswith("# "), printed  # the plan, then the commands


@pytest.mark.slow
def test_train_and_signal_prop_commands_parse():
    train = commands_of("experiments.train")
    for program, module in LAUNCHERS.items():
        for args in commands_of(program):
            if (trainer := trainer_argv_of_launcher(module, args)) is not None:
                train.append(trainer)
    assert any("--config=nfnet_f0_finetune" in argv for argv in train)
    # Two deliberate mistakes show that the check reports what it should.
    typo_key = ["--config=nfnet_demo", "--workdir=/tmp/x", "--config.trian_steps=3"]
    typo_flag = ["--config=nfnet_demo", "--wrokdir=/tmp/x"]
    bad_model = ["--models=resnet50_bn,nf_resnet51", "--out=/tmp/spp"]
    failures = absl_failures("experiments.train", train + [typo_key, typo_flag])
    failures += absl_failures(
        "experiments.signal_prop", commands_of("experiments.signal_prop") + [bad_model]
    )
    assert [argv for argv, _ in failures] == [typo_key, typo_flag, bad_model], failures
    assert "Unknown config key 'trian_steps'" in failures[0][1]
    assert "wrokdir" in failures[1][1]
    assert "nf_resnet51" in failures[2][1]


def test_evaluate_predict_export_commands_parse():
    for args in commands_of("experiments.evaluate"):
        spec, rest = configs.pop_config_spec(["evaluate", *args])
        _, others = evaluate.parse_args(rest[1:])
        # Without --config, evaluate builds on the base config (or a preset of it).
        config = configs.load_config(spec) if spec else common.base_config()
        assert config_lib.parse_config_flags(config, ["evaluate", *others]) == ["evaluate"]
    for args in commands_of("experiments.predict"):
        assert predict.parse_args(args).images
    for args in commands_of("experiments.export"):
        parsed = export.parse_args(args)
        assert (parsed.workdir or parsed.checkpoint) and parsed.out
    with pytest.raises(SystemExit):  # the parsers do reject a mistake
        export.parse_args(["--workdir=/tmp/x", "--out=a.npz", "--format=zip"])


def test_prepare_commands_reach_the_tfds_build(monkeypatch, capsys):
    calls = []

    def fake_prepare(name, data_dir, manual_dir):
        calls.append((name, data_dir, manual_dir))
        return types.SimpleNamespace(name=name, data_dir=data_dir, splits={}, num_classes=0)

    monkeypatch.setattr(prepare, "prepare_dataset", fake_prepare)
    documented = commands_of("nfnets_jax.data.prepare")
    for args in documented:
        assert prepare.main(args) == 0, args
    assert capsys.readouterr().out.count("Built ") == len(documented)
    assert ("imagenet2012", "~/tensorflow_datasets", "/path/with/the/two/tars") in calls
    assert [name for name, _, _ in calls] == [args[0] for args in documented]
