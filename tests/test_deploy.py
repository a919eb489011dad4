"""Deployable exports (nfnets_jax.deploy): SavedModel and jax.export, reloaded and compared.

The reference is the Haiku model itself through `pretrained.PretrainedModel`, whose
`preprocess` is the project's evaluation preprocessing of decoded images: the uint8
signature must equal `logits` of the same images, the float signatures `apply` of the
preprocessed ones. Tolerance: 1e-5 absolute and relative on logits of magnitude ~1
(float32; the artifacts run the same StableHLO through XLA:CPU, inside TensorFlow or
JAX, with the native grouped convolution where the reference splits groups; measured
differences are ~1e-7).

One export per format is shared by the library tests; the command-line test exports a
tiny run directory once more, for the CPU only.
"""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from experiments import export
from nfnets_jax import checkpoints, deploy, pretrained
from nfnets_jax.data.tf_setup import tf
from nfnets_jax.training import checkpoint
from tests.pretrained_helpers import synthetic_params, tiny_spec, write_released_layout
from tests.training.tiny import tiny_config

TOLERANCE = dict(atol=1e-5, rtol=1e-5)
SIZE = 16
NAMES = tuple(f"class_{k}" for k in range(10))
EMA_OFFSET = 0.5  # the run fixture's EMA parameters are the raw ones plus this


def uint8_images(batch, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), np.uint8)


@pytest.fixture(scope="module")
def reference():
    # resize_crop_32 on non-square images: resize to 48 x 48, centre crop 16 x 16.
    spec = dataclasses.replace(
        tiny_spec(10), image_size=SIZE, eval_preproc="resize_crop_32", class_names=NAMES
    )
    params = synthetic_params(10)
    return pretrained.PretrainedModel(spec=spec, params=params, model_state={}, description="")


@pytest.fixture(scope="module")
def artifacts(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    args = (reference.params, {}, reference.spec)
    saved = deploy.export_saved_model(*args, root / "savedmodel", source="synthetic")
    stablehlo = deploy.export_stablehlo(*args, root / "stablehlo", source="synthetic")
    return saved, stablehlo


def call(signature, images):
    outputs = signature(images=tf.constant(images))
    return {name: value.numpy() for name, value in outputs.items()}


@pytest.mark.slow
def test_uint8_signature_is_the_model_on_the_projects_preprocessing(reference, artifacts):
    serve = tf.saved_model.load(artifacts[0]).signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
    # Two batch sizes and two image sizes through one signature.
    for images in (uint8_images(3, 40, 28), uint8_images(1, 21, 37, seed=1)):
        outputs = call(serve, images)
        assert sorted(outputs) == ["logits", "probabilities"]
        expected = reference.logits(list(images))
        assert outputs["logits"].shape == (len(images), 10)
        np.testing.assert_allclose(outputs["logits"], expected, **TOLERANCE)
        np.testing.assert_allclose(
            outputs["probabilities"], jax.nn.softmax(expected, axis=-1), **TOLERANCE
        )
    # A real photo: the same numbers as the pretrained API's path for it.
    photo = np.asarray(pytest.importorskip("skimage.data").chelsea())  # 300 x 451
    np.testing.assert_allclose(
        call(serve, photo[None])["logits"], reference.logits(photo), **TOLERANCE
    )


@pytest.mark.slow
def test_preprocessed_signature_takes_normalised_floats_at_any_batch(reference, artifacts):
    serve = tf.saved_model.load(artifacts[0]).signatures["preprocessed"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, SIZE, SIZE, 3]
    batch = reference.preprocess(list(uint8_images(5, 30, 30, seed=2)))
    for size in (1, 5):
        logits = call(serve, batch[:size])["logits"]
        np.testing.assert_allclose(logits, reference.apply(batch[:size]), **TOLERANCE)
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        serve(images=tf.zeros([1, SIZE + 1, SIZE + 1, 3]))  # the contract is the test size


@pytest.mark.slow
def test_stablehlo_reloads_with_a_symbolic_batch(reference, artifacts):
    model = deploy.load_stablehlo(artifacts[1])
    images_aval = model.exported.in_avals[-1]
    assert str(images_aval.shape[0]) == "b" and images_aval.shape[1:] == (SIZE, SIZE, 3)
    assert model.exported.platforms == deploy.DEFAULT_PLATFORMS
    assert model.spec.to_json() == reference.spec.to_json()  # (JSON keeps lists, not tuples)
    batch = reference.preprocess(list(uint8_images(4, 24, 24, seed=3)))
    for size in (1, 4):
        outputs = model(batch[:size])
        np.testing.assert_allclose(outputs["logits"], reference.apply(batch[:size]), **TOLERANCE)
        np.testing.assert_allclose(
            np.asarray(outputs["probabilities"]).sum(-1), np.ones(size), atol=1e-6
        )
    # Plain JAX, as the docstring says: deserialize, then the weights straight from npz.
    with open(os.path.join(artifacts[1], "model.jax_export"), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    weights = dict(np.load(os.path.join(artifacts[1], "variables.npz")))
    assert set(weights) == {f"params/{k}" for k in checkpoints.flatten_params(reference.params)}
    np.testing.assert_array_equal(
        exported.call(weights, batch[:3])["logits"], model(batch[:3])["logits"]
    )
    with open(os.path.join(artifacts[1], "model.mlir"), encoding="utf-8") as f:
        assert "stablehlo.convolution" in f.read()


@pytest.mark.slow
def test_metadata_states_the_input_contract(reference, artifacts):
    for path, kind in zip(artifacts, ("savedmodel", "stablehlo"), strict=True):
        meta = deploy.read_metadata(path)
        assert meta["artifact"] == kind and meta["source"] == "synthetic"
        assert meta["spec"] == json.loads(json.dumps(reference.spec.to_json()))
        assert meta["class_names"] == list(NAMES)
        assert meta["platforms"] == list(deploy.DEFAULT_PLATFORMS)
        assert meta["normalization"]["mean_rgb"] == pytest.approx([123.675, 116.28, 103.53])
        float_input = meta["inputs"]["preprocessed" if kind == "savedmodel" else "images"]
        assert float_input["dtype"] == "float32" and float_input["shape"] == [None, 16, 16, 3]
    uint8_input = deploy.read_metadata(artifacts[0])["inputs"]["serving_default"]
    assert uint8_input["dtype"] == "uint8" and uint8_input["shape"] == [None, None, None, 3]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_the_preprocessed_signature_converts_to_tflite(reference, artifacts):
    converter = tf.lite.TFLiteConverter.from_saved_model(
        artifacts[0], signature_keys=["preprocessed"]
    )
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    runner = interpreter.get_signature_runner("preprocessed")
    batch = reference.preprocess(list(uint8_images(2, 16, 16, seed=4)))
    np.testing.assert_allclose(runner(images=batch)["logits"], reference.apply(batch), **TOLERANCE)


def test_bad_destinations_and_artifacts(reference, tmp_path):
    args = (reference.params, {}, reference.spec)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "old.txt").write_text("x")
    with pytest.raises(deploy.DeployError, match="already exists and is not an empty"):
        deploy.export_stablehlo(*args, tmp_path / "taken")
    (tmp_path / "file").write_text("x")
    with pytest.raises(deploy.DeployError, match="Cannot create the export directory"):
        deploy.export_stablehlo(*args, tmp_path / "file" / "out")
    (tmp_path / "saved").mkdir()
    meta = {"format": "nfnets_jax.deploy", "artifact": "savedmodel"}
    (tmp_path / "saved" / "nfnets_jax.json").write_text(json.dumps(meta))
    with pytest.raises(deploy.DeployError, match="is a savedmodel export, not a StableHLO"):
        deploy.load_stablehlo(tmp_path / "saved")
    with pytest.raises(deploy.DeployError, match="no nfnets_jax.json"):
        deploy.read_metadata(tmp_path)
    wrong = dataclasses.replace(reference.spec, num_classes=7, class_names=None)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="7"):
        deploy.export_stablehlo(reference.params, {}, wrong, tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()  # checked before anything is written
    with pytest.raises(deploy.DeployError, match="Unknown export format 'onnx'"):
        deploy.export_checkpoint(
            checkpoints.LoadedCheckpoint(reference.params, {}, reference.spec, "x", "x"),
            tmp_path / "onnx",
            format="onnx",
        )


# ------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run directory: config.json and one orbax step with raw and EMA parameters.

    The step holds the fields of a TrainState that `checkpoints.read_run` reads, written
    by the run's own Checkpointer; the EMA parameters are the raw ones shifted, so that
    an export of the wrong set is told apart.
    """
    workdir = tmp_path_factory.mktemp("run")
    params = synthetic_params(10)
    state = {
        "params": params,
        "model_state": {},
        "ema_params": jax.tree.map(lambda x: x + EMA_OFFSET, params),
        "ema_state": {},
        "step": np.int32(3),
    }
    saver = checkpoint.Checkpointer(str(workdir / "checkpoints"), async_save=False)
    saver.save(3, state, {"step": 3})
    saver.close()
    config = tiny_config()
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    return str(workdir)


@pytest.mark.slow
def test_export_command_writes_both_artifacts_of_a_run(run_dir, tmp_path, capsys):
    model = pretrained.load(run_dir)  # the run's EMA parameters and spec
    images = uint8_images(2, 8, 8, seed=5)  # digits-sized images, resized to 16 px
    expected = model.logits(list(images))
    for fmt in ("savedmodel", "stablehlo"):
        out = tmp_path / fmt
        argv = [f"--workdir={run_dir}", f"--out={out}", f"--format={fmt}", "--platforms=cpu"]
        assert export.main(argv) == 0
        printed = capsys.readouterr().out
        assert f"of {model.spec.describe()} (run {run_dir}, step 3, EMA parameters)" in printed
        meta = json.loads((out / "nfnets_jax.json").read_text())
        assert meta["platforms"] == ["cpu"] and meta["conv_impl"] == "dot"
        assert meta["class_names"] == list("0123456789")
        # An export is a new directory: the same --out again is refused.
        assert export.main(argv) == 2
        assert "already exists and is not an empty directory" in capsys.readouterr().err
    serve = tf.saved_model.load(str(tmp_path / "savedmodel")).signatures["serving_default"]
    np.testing.assert_allclose(call(serve, images)["logits"], expected, **TOLERANCE)
    reloaded = deploy.load_stablehlo(tmp_path / "stablehlo")
    np.testing.assert_allclose(
        reloaded(model.preprocess(list(images)))["logits"], expected, **TOLERANCE
    )


@pytest.mark.slow
def test_export_command_takes_a_released_checkpoint_file(tmp_path, capsys):
    params = synthetic_params(10, seed=1)
    path = write_released_layout(params, tmp_path / "tiny_haiku.npz")
    out = tmp_path / "released"
    argv = [f"--checkpoint={path}", f"--out={out}", "--format=stablehlo", "--platforms=cpu"]
    assert export.main(argv) == 0
    assert f"(parameter file {path})" in capsys.readouterr().out
    model = pretrained.load(path)  # the architecture inferred from the tree, 256 px
    reloaded = deploy.load_stablehlo(out)
    assert reloaded.spec.to_json() == model.spec.to_json() and model.spec.image_size == 256
    batch = model.preprocess(uint8_images(1, 64, 64, seed=6))
    np.testing.assert_allclose(reloaded(batch)["logits"], model.apply(batch), **TOLERANCE)


def test_export_command_errors(tmp_path, capsys):
    cases = [
        ([f"--workdir={tmp_path}", f"--out={tmp_path}/m", "--format=savedmodel"], "not a run"),
        (
            [f"--checkpoint={tmp_path}/none.npz", f"--out={tmp_path}/m", "--format=stablehlo"],
            "does not exist",
        ),
        (
            [f"--checkpoint={tmp_path}/a.npz", f"--out={tmp_path}/m.npz", "--format=npz"],
            "--checkpoint works with --format=savedmodel",
        ),
        (
            [
                f"--workdir={tmp_path}",
                f"--out={tmp_path}/m",
                "--format=stablehlo",
                "--platforms=gpu",
            ],
            "--platforms=gpu: expected a comma-separated subset",
        ),
        (
            [
                f"--checkpoint={tmp_path}/a.npz",
                f"--out={tmp_path}/m",
                "--format=stablehlo",
                "--step=3",
            ],
            "--step picks a checkpoint of a --workdir run",
        ),
        (
            [f"--workdir={tmp_path}", f"--out={tmp_path}/no/m", "--format=savedmodel"],
            f"the directory of --out ({tmp_path}/no) does not exist",
        ),
    ]
    for argv, message in cases:
        assert export.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    with pytest.raises(SystemExit):
        export.parse_args([f"--workdir={tmp_path}", "--out=m", "--format=onnx"])
    with pytest.raises(SystemExit):  # one source, not both
        export.parse_args(["--workdir=a", "--checkpoint=b", "--out=m"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_the_guides_python_examples_run(tmp_path, monkeypatch):
    """docs/deploy.md's Python blocks, in order, on a tiny stand-in for F0_haiku.npz."""
    from PIL import Image

    from tests.doc_blocks import REPO, code_blocks
    from tests.pretrained_helpers import sample_images
    from tests.test_doc_examples import run_block

    page = REPO / "docs" / "deploy.md"
    write_released_layout(synthetic_params(1000, seed=3), tmp_path / "F0_haiku.npz")
    Image.fromarray(sample_images()["chelsea"]).save(tmp_path / "cat.jpg", quality=90)
    monkeypatch.chdir(tmp_path)
    serving, tflite, stablehlo, python_api = code_blocks(page, "python")
    run_block(python_api, str(page))  # writes f0_savedmodel, f0_stablehlo, f0_cpu
    assert deploy.read_metadata("f0_cpu")["platforms"] == ["cpu"]
    namespace, _ = run_block(serving, str(page))
    model = pretrained.load("F0_haiku.npz")
    expected = model.logits("cat.jpg")
    np.testing.assert_allclose(namespace["outputs"]["logits"].numpy(), expected, **TOLERANCE)
    assert namespace["top5"].tolist() == np.argsort(-expected[0])[:5].tolist()
    namespace, _ = run_block(stablehlo, str(page))
    assert namespace["outputs"]["logits"].shape == (8, 1000)
    np.testing.assert_allclose(namespace["logits"], namespace["outputs"]["logits"], **TOLERANCE)
    run_block(tflite, str(page))
    assert (tmp_path / "f0.tflite").stat().st_size > 10_000
