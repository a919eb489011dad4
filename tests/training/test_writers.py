"""Metric writers: JSON lines locally and on stores that cannot append."""

import json

from etils import epath

from nfnets_jax.training import writers


def test_metrics_jsonl_appends_across_writers(tmp_path):
    for step in (1, 2):
        writer = writers.MetricWriter(str(tmp_path))
        writer.write_scalars(step, {"loss": 1.0 / step}, prefix="train/")
        writer.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert json.loads(lines[1])["train/loss"] == 0.5


def test_remote_jsonl_rewrites_whole_file(tmp_path):
    path = epath.Path(tmp_path) / "metrics.jsonl"
    path.write_text('{"step": 0}\n')  # a resumed run keeps what the file holds
    lines = writers._JsonLines(path, remote=True)
    lines.append('{"step": 1}')
    lines.append('{"step": 2}')
    assert path.read_text().splitlines() == ['{"step": 0}', '{"step": 1}', '{"step": 2}']


def test_format_train_line_and_durations():
    line = writers.format_train_line(
        50,
        1000,
        {"loss": 2.5, "top_1_acc": 0.25, "learning_rate": 0.1, "images_per_sec": 1234.0},
        eta=3725.0,
    )
    assert line == "step   50/1000 | loss 2.5000 | top1 25.00% | lr 0.1 | 1,234 img/s | ETA 1h 2m"
    assert writers.format_duration(93784) == "1d 2h 3m"
    assert writers.format_duration(75) == "1m 15s"
