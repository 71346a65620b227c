"""Stages other than split_and_batch keep to their own folders:
training and the synthetic world refuse a non-empty folder they did not make, a second
training run on one folder is refused naming the holder, a study's --force deletes only
a folder training made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from shards_factory import write_tiny_shards

from extract_GPS_images.synthetic import generate_world
from utils.folder_lock import FolderLockedError
from utils.ownership import ForeignFolderError, OutputFolder, guard_output
from utils.train import TRAIN_STAGE, TrainConfig, fit


def _config(tmp_path: Path, shards: Path) -> TrainConfig:
    return TrainConfig(
        run_dir=str(tmp_path / "run"),
        shards_dir=str(shards),
        model="tiny_cnn",
        crop=10,
        epochs=1,
        batch_size=8,
        progress=False,
        tensorboard=False,
    )


def test_training_refuses_a_foreign_folder_and_a_second_run(tmp_path: Path) -> None:
    shards = write_tiny_shards(tmp_path / "shards", size=12, seed=0)
    cfg = _config(tmp_path, shards)
    before = sorted(p.name for p in shards.iterdir())
    with pytest.raises(ForeignFolderError, match=f"{shards}.*not made by training"):
        fit(cfg, out_dir=shards)  # the shards folder is not a run folder
    assert sorted(p.name for p in shards.iterdir()) == before
    out = tmp_path / "run" / "train" / "x"
    with guard_output(out, TRAIN_STAGE), pytest.raises(FolderLockedError, match=f"{os.getpid()}"):
        fit(cfg, out_dir=out)
    result = fit(cfg, out_dir=out)  # the lock went with its holder
    assert result.best_checkpoint.is_file()


def test_synthetic_world_refuses_a_foreign_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(ForeignFolderError, match="thesis.tex"):
        generate_world(home, n=10, size=8, progress=False)
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]


def test_remove_recorded_deletes_only_what_the_stage_wrote(tmp_path: Path) -> None:
    owner = OutputFolder.claim(tmp_path / "out", "stage")
    owner.record(["a.txt", "sub/b.txt"], ["cache"])
    for name in ("a.txt", "sub/b.txt", "cache/c.bin", "sub/user.txt", "user.txt"):
        (owner.path / name).parent.mkdir(parents=True, exist_ok=True)
        (owner.path / name).write_text(name)
    removed = OutputFolder.claim(owner.path, "stage").remove_recorded()
    assert removed == ["a.txt", "sub/b.txt", "cache/"]
    left = sorted(p.relative_to(owner.path).as_posix() for p in owner.path.rglob("*"))
    assert left == [".owner.json", "sub", "sub/user.txt", "user.txt"]
    with pytest.raises(ForeignFolderError, match="made by 'stage'"):
        OutputFolder.claim(owner.path, "other stage")


def test_a_folder_an_earlier_version_made_is_adopted(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "world.json").write_text("{}")
    (old / "a_2019.tfrecord.gz").write_bytes(b"")
    assert OutputFolder.claim(old, "synthetic", ("world.json",)).stage == "synthetic"
    assert (old / ".owner.json").is_file()


def test_explanations_refuse_a_foreign_folder(tmp_path: Path) -> None:
    from visualization.explain import ExplainConfig, load_session  # noqa: PLC0415

    cfg = ExplainConfig(run_dir=str(tmp_path / "run"))
    cfg.paths.explain.mkdir(parents=True)
    (cfg.paths.explain / "paper.pdf").write_bytes(b"%PDF")
    with pytest.raises(ForeignFolderError, match="not made by explanations.*paper.pdf"):
        load_session(cfg)
