"""Folder, COCO and CUB sources; open_source dispatch; rank split; bad-sample accounting."""

import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datafixtures import (
    BLUE,
    CUB_CLASSES,
    RED,
    build_bad_folder,
    build_coco,
    build_cub,
    build_special_files,
    encode,
    noise_image,
    ramp16,
    time_limit,
    write_pair,
)
from tessera.config import DataConfig
from tessera.data import (
    CocoSource,
    CubSource,
    DataReport,
    Example,
    FolderSource,
    open_source,
)
from tessera.data.report import ReportDelta
from tessera.data.sources import detect_kind
from tessera.data.sources.cub import default_test_classes
from tessera.errors import DataError, TooManyBadSamplesError

CFG = DataConfig(max_caption_chars=200)


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return root, build_bad_folder(root)


def test_bad_folder_exact_counts_by_reason(bad_folder, caplog):
    root, expected = bad_folder
    src = FolderSource(root, config=CFG)
    with caplog.at_level(logging.DEBUG, logger="tessera.data"):
        examples = list(src)
    assert sorted(e.key for e in examples) == expected["good"]
    r = src.report
    assert dict(r.skipped) == expected["skipped"]
    assert dict(r.filtered) == expected["filtered"]
    assert dict(r.repaired) == expected["repaired"]
    assert r.seen == len(expected["good"]) + sum(expected["skipped"].values()) + 2
    assert r.yielded == len(expected["good"])
    assert all(e.image.mode == "RGB" for e in examples)
    # every skip is logged at DEBUG with its reason, and a one-line summary at the end
    assert "skip corrupt.jpg [corrupt_image]" in caplog.text
    assert any(
        rec.levelno == logging.INFO and "yielded 16" in rec.message for rec in caplog.records
    )


def test_bad_folder_repaired_pixels(bad_folder):
    root, _ = bad_folder
    ex = {e.key: e for e in FolderSource(root, config=CFG)}
    px = {k: np.asarray(e.image).astype(int) for k, e in ex.items()}
    expected16 = np.rint(ramp16().astype(np.float64) * 255 / 65535)
    assert np.array_equal(px["deep16.png"][..., 1], expected16)
    assert tuple(px["rgba.png"][0, 0]) == (255, 255, 255) and tuple(px["rgba.png"][0, 15]) == BLUE
    assert tuple(px["palette_t.png"][0, 0]) == (255, 255, 255)
    assert tuple(px["palette_t.png"][0, 15]) == BLUE
    assert np.abs(px["la.png"][0, 0] - 127).max() <= 1
    assert np.abs(px["cmyk.jpg"][8, 8] - RED).max() <= 3
    assert ex["exif.jpg"].image.size == (20, 40) and np.abs(px["exif.jpg"][5, 10] - RED).max() < 20
    assert tuple(px["anim.gif"][0, 0]) == RED
    assert tuple(px["gray.png"][0, 0]) == (77, 77, 77)
    assert tuple(px["mono.png"][0, 0]) == (255, 255, 255)
    good = np.asarray(Image.open(root / "good_b.png").convert("RGB")).astype(int)
    assert np.array_equal(px["good_b.png"], good)


def test_bad_folder_captions(bad_folder):
    root, _ = bad_folder
    ex = {e.key: e for e in FolderSource(root, config=CFG)}
    assert ex["good_a.jpg"].captions == ("a noisy picture", "another caption")
    assert ex["long_and_short.png"].captions == ("ok caption",)
    assert ex["sub/deeper/nested.png"].captions == ("nested",)


def test_report_json_and_keys(bad_folder, tmp_path):
    root, expected = bad_folder
    src = FolderSource(root, config=CFG)
    list(src)
    path = src.report.write(tmp_path)
    assert path.name == "data_report.json"
    d = json.loads(path.read_text())
    assert d["skipped"] == expected["skipped"]
    assert d["filtered"] == expected["filtered"]
    assert d["example_keys"]["skipped"]["decompression_bomb"] == ["bomb.png", "bomb_warn.png"]
    assert d["example_keys"]["filtered"]["aspect_ratio"] == ["wide.png"]
    assert d["skipped_total"] == sum(expected["skipped"].values())
    assert d["bad_fraction"] == pytest.approx(d["skipped_total"] / d["seen"])
    assert src.report.write(tmp_path / "sub" / "r.json").name == "r.json"


def test_too_many_bad_samples(bad_folder):
    root, _ = bad_folder
    cfg = DataConfig(max_caption_chars=200, max_bad_fraction=0.2, bad_fraction_min_seen=5)
    with pytest.raises(TooManyBadSamplesError, match="max_bad_fraction"):
        list(FolderSource(root, config=cfg))
    # not before bad_fraction_min_seen examples
    cfg = DataConfig(max_caption_chars=200, max_bad_fraction=0.2, bad_fraction_min_seen=1000)
    assert len(list(FolderSource(root, config=cfg))) == 16


def test_report_bounded_keys_and_merge():
    r = DataReport(DataConfig(), max_keys=2)
    for i in range(5):
        r.see()
        r.skip("corrupt_image", f"k{i}")
    assert r.keys["skipped"]["corrupt_image"] == ["k0", "k1"]
    other = DataReport(DataConfig())
    other.see(3)
    other.repair("exif_rotated", "z")
    r.merge(other)
    assert r.seen == 8 and r.repaired["exif_rotated"] == 1
    assert r.bad_fraction == pytest.approx(5 / 8)


def test_rank_split_is_disjoint_and_complete(bad_folder):
    root, expected = bad_folder
    parts = [
        [e.key for e in FolderSource(root, config=CFG, rank=r, world_size=3)] for r in range(3)
    ]
    flat = [k for p in parts for k in p]
    assert sorted(flat) == expected["good"] and len(set(flat)) == len(flat)
    with pytest.raises(DataError):
        FolderSource(root, rank=2, world_size=2)


def test_predicates_and_n(bad_folder):
    root, _ = bad_folder

    def is_png(ex: Example) -> bool:
        return ex.key.endswith(".png")

    src = FolderSource(root, config=CFG, predicates=[is_png, lambda ex: "gray" not in ex.key])
    keys = [e.key for e in src]
    assert keys and all(k.endswith(".png") and "gray" not in k for k in keys)
    assert src.report.filtered["is_png"] == 6
    assert src.report.filtered["predicate_1"] == 1
    assert len(list(FolderSource(root, config=CFG, n=3))) == 3


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        FolderSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        list(FolderSource(tmp_path / "empty"))


def test_coco(tmp_path):
    root = build_coco(tmp_path / "coco", n=4, missing=1)
    src = CocoSource(root, "val2017")
    exs = list(src)
    assert [e.key for e in exs] == ["1", "3", "4"]
    assert exs[0].captions == tuple(f"image 1 caption {j}" for j in range(5))
    assert dict(src.report.skipped) == {"caption_missing": 1, "image_missing": 1}
    assert len(src) == 5
    explicit = CocoSource(
        annotation_file=root / "annotations" / "captions_val2017.json", image_dir=root / "val2017"
    )
    assert [e.key for e in explicit] == ["1", "3", "4"]
    with pytest.raises(DataError, match="not found"):
        CocoSource(root, "train2017")
    (root / "annotations" / "captions_bad.json").write_text("{not json")
    (root / "bad").mkdir()
    with pytest.raises(DataError, match="cannot read COCO"):
        CocoSource(root, "bad")


@pytest.mark.parametrize("text_inside", [False, True])
def test_cub(tmp_path, text_inside):
    root = build_cub(tmp_path / "cub", text_inside=text_inside)
    a, b = CUB_CLASSES
    test = list(CubSource(root, "cub_test"))  # CUB's own image-level split
    assert [e.key for e in test] == [f"{a}/Bird_0001", f"{b}/Bird_0004"]
    assert len(test[0].captions) == 10 and test[0].captions[3] == "bird 1 description 3"
    assert len(list(CubSource(root, "cub_train"))) == 4
    assert len(list(CubSource(root / "CUB_200_2011", "all"))) == 6


def test_cub_class_disjoint_split(tmp_path, caplog):
    """train/test: the 150/50 class split of text-to-image work (StackGAN, AttnGAN, ...)."""
    root = build_cub(tmp_path / "cub")
    a, b = CUB_CLASSES
    test = [e.key for e in CubSource(root, "test")]
    train = [e.key for e in CubSource(root, "train")]
    assert test == [f"{a}/Bird_{i:04d}" for i in (1, 2, 3)]
    assert train == [f"{b}/Bird_{i:04d}" for i in (4, 5, 6)]
    assert [e.key for e in open_source(f"cub:{root}")] == test  # the default split
    # the bundled list: 50 classes, 2933 of CUB's 11788 images (8855 left for training)
    classes = default_test_classes()
    ids = {int(c.split(".", 1)[0]) for c in classes}
    assert len(classes) == len(ids) == 50 and a in classes and b not in classes
    assert ids == {
        1, 4, 6, 8, 9, 14, 23, 29, 31, 33, 34, 35, 36, 37, 38, 43, 49, 51, 53, 66, 72, 79, 83,
        84, 86, 91, 95, 96, 98, 101, 102, 103, 112, 114, 119, 121, 130, 135, 138, 147, 156,
        163, 165, 166, 180, 183, 185, 186, 187, 197,
    }  # fmt: skip
    # a class list of one's own
    mine = tmp_path / "classes.txt"
    mine.write_text(f"# my split\n{b}\n\n")
    assert [e.key for e in CubSource(root, "test", classes_file=mine)] == train
    other = open_source(f"cub:{root}", split="train", classes_file=mine)
    assert [e.key for e in other] == test
    mine.write_text(f"{a}\n999.Not_a_bird\n")
    with caplog.at_level(logging.WARNING, logger="tessera.data"):
        assert [e.key for e in CubSource(root, "test", classes_file=mine)] == test
    assert "1 of the 2 test classes" in caplog.text
    mine.write_text("999.Not_a_bird\n")
    with pytest.raises(DataError, match="none of the 1 test classes"):
        CubSource(root, "test", classes_file=mine)
    with pytest.raises(DataError, match="cannot read CUB class list"):
        CubSource(root, "test", classes_file=tmp_path / "missing.txt")


def test_cub_errors(tmp_path):
    root = build_cub(tmp_path / "cub")
    with pytest.raises(DataError, match="split"):
        CubSource(root, "val")
    (root / "text_c10").rename(root / "elsewhere")
    with pytest.raises(DataError, match="text_c10 not found"):
        CubSource(root)
    with pytest.raises(DataError, match="not a CUB"):
        CubSource(tmp_path)


def test_cub_missing_caption_file_is_counted(tmp_path):
    root = build_cub(tmp_path / "cub")
    (root / "text_c10" / CUB_CLASSES[0] / "Bird_0001.txt").unlink()
    src = CubSource(root, "test")
    assert len(list(src)) == 2 and src.report.skipped["caption_missing"] == 1


def test_open_source_dispatch(tmp_path, bad_folder):
    root, _ = bad_folder
    coco = build_coco(tmp_path / "coco")
    cub = build_cub(tmp_path / "cub")
    assert isinstance(open_source(str(coco)), CocoSource)
    assert isinstance(open_source(f"coco:{coco}", split="val2017"), CocoSource)
    assert isinstance(open_source(str(cub)), CubSource)
    assert isinstance(open_source(f"cub:{cub}"), CubSource)
    assert isinstance(open_source(str(root)), FolderSource)
    assert isinstance(open_source(f"folder:{root}"), FolderSource)
    assert detect_kind(coco) == "coco" and detect_kind(cub) == "cub"
    assert detect_kind(cub / "CUB_200_2011") == "cub" and detect_kind(root) == "folder"
    report = DataReport(CFG)
    src = open_source(f"folder:{root}", config=CFG, report=report, rank=1, world_size=2, n=2)
    assert src.report is report and len(list(src)) == 2
    with pytest.raises(DataError, match="not found"):
        open_source(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="not found"):
        open_source(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(DataError):
        open_source("shapes:test")


def test_open_source_shapes():
    from tessera.data.shapes import ShapesSource  # noqa: F401

    src = open_source("shapes", config=DataConfig(image_size=32), n=4)
    exs = list(src)
    assert len(exs) == 4 and all(e.image.size == (32, 32) and e.captions for e in exs)
    assert src.report.yielded == 4
    halves = [
        [e.key for e in open_source("shapes:eval", n=3, rank=r, world_size=2)] for r in range(2)
    ]
    assert len(halves[0]) == 3 and not set(halves[0]) & set(halves[1])
    whole = [e.key for e in open_source("shapes:eval", n=6)]
    assert sorted(halves[0] + halves[1]) == sorted(whole)


def test_non_utf8_and_bom_captions(tmp_path):
    write_pair(tmp_path, "a.png", encode(noise_image(16, 16), "PNG"), b"\xef\xbb\xbfwith bom\n")
    write_pair(tmp_path, "b.png", encode(noise_image(16, 16), "PNG"), b"\xff\xfe bad")
    src = FolderSource(tmp_path)
    assert [e.captions for e in src] == [("with bom",)]
    assert dict(src.report.skipped) == {"caption_not_utf8": 1}


def test_shapes_split_across_dataloader_workers():
    import torch

    from tessera.data import ImageTextDataset, ImageTransform, collate

    src = open_source("shapes:train", config=DataConfig(image_size=32), n=7)
    loader = torch.utils.data.DataLoader(
        ImageTextDataset(src, ImageTransform(32)), batch_size=3, num_workers=2, collate_fn=collate
    )
    keys = [k for b in loader for k in b["keys"]]
    assert len(keys) == 7 and sorted(keys) == sorted(e.key for e in open_source("shapes", n=7))


def test_fifo_and_device_files_are_skipped_not_read(tmp_path):
    """A FIFO named like an image or a caption used to block the run forever, and a link to
    /dev/zero to read forever. Run in a subprocess with a timeout and a memory cap, so that a
    regression fails instead of hanging or eating the machine's memory."""
    expected = build_special_files(tmp_path / "special")
    code = textwrap.dedent(
        f"""
        import json, resource
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        from tessera.data.sources.folder import FolderSource
        src = FolderSource({str(tmp_path / "special")!r})
        keys = [e.key for e in src.iter_partition(0, 1)]
        print(json.dumps([keys, src.report.to_dict()]))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    keys, report = json.loads(run.stdout)
    assert keys == expected["good"]
    assert report["skipped"] == expected["skipped"]
    assert sorted(report["example_keys"]["skipped"]["unreadable_path"]) == [
        "fifo_caption.png", "pipe.jpg", "zero.png", "zero_caption.png"
    ]  # fmt: skip


def test_fifo_caption_in_process(tmp_path):
    write_pair(tmp_path, "a.png", encode(noise_image(16, 16), "PNG"), None)
    os.mkfifo(tmp_path / "a.txt")
    write_pair(tmp_path, "b.png", encode(noise_image(16, 16), "PNG"), "x" * 40)
    src = FolderSource(tmp_path, config=DataConfig(max_caption_bytes=32))
    with time_limit(10):
        assert list(src) == []
    assert dict(src.report.skipped) == {"unreadable_path": 1, "file_too_large": 1}


def _deny_listing(monkeypatch, denied: Path) -> None:
    """os.walk lists directories with os.scandir; make it fail for ``denied`` like a
    directory without read permission does (root reads through chmod 000)."""
    real = os.scandir

    def scandir(path="."):
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def _tree(root: Path) -> None:
    png = encode(noise_image(16, 16), "PNG")
    for name in ("a.png", "locked/b.png", "locked/deeper/c.png", "z/d.png"):
        write_pair(root, name, png, f"caption of {name}")


def test_unlistable_directory_is_counted(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _tree(root)
    _deny_listing(monkeypatch, root / "locked")
    src = FolderSource(root)
    assert [e.key for e in src] == ["a.png", "z/d.png"]
    assert dict(src.report.skipped) == {"unreadable_path": 1}
    assert src.report.keys["skipped"]["unreadable_path"] == ["locked/"]
    # counted by exactly one rank
    total: Counter = Counter()
    for rank in range(2):
        part = FolderSource(root, rank=rank, world_size=2)
        list(part)
        total += part.report.skipped
    assert total == {"unreadable_path": 1}
    # the root itself: an error up front
    _deny_listing(monkeypatch, root)
    with pytest.raises(DataError, match="cannot list image folder"):
        list(FolderSource(root))


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists directories regardless of mode")
def test_unreadable_directory_for_real(tmp_path):
    root = tmp_path / "data"
    _tree(root)
    (root / "locked").chmod(0)
    try:
        src = FolderSource(root)
        assert [e.key for e in src] == ["a.png", "z/d.png"]
        assert dict(src.report.skipped) == {"unreadable_path": 1}
    finally:
        (root / "locked").chmod(0o755)


def test_report_delta_merges_once_into_its_report():
    report = DataReport(DataConfig(max_bad_fraction=0.5, bad_fraction_min_seen=4))
    worker = DataReport(report.config)
    worker.see(2)
    worker.skip("corrupt_image", "k1")
    delta = ReportDelta(report.uid, worker.take_state(), final=True, workers=1)
    assert worker.is_empty()
    assert pickle.loads(pickle.dumps(delta)).absorbed is False  # same process: no merge
    delta.origin_pid = -1  # as if sent by a DataLoader worker
    arrived = pickle.loads(pickle.dumps(delta))
    assert arrived.absorbed and report.seen == 2 and report.skipped["corrupt_image"] == 1
    pickle.loads(pickle.dumps(arrived))  # pickling it again never merges it again
    assert report.seen == 2
    # over the limit: raised in the main thread; in another (pin-memory) thread, the
    # DataLoader's next call there, pin_memory(), raises it
    over = DataReport(report.config)
    over.see(3)
    for k in ("k2", "k3", "k4"):
        over.skip("corrupt_image", k)  # 3 seen: below bad_fraction_min_seen on its own
    delta = ReportDelta(report.uid, over.take_state())
    delta.origin_pid = -1
    with pytest.raises(TooManyBadSamplesError, match="4 of 5"):
        pickle.loads(pickle.dumps(delta))
    got = []
    thread = threading.Thread(target=lambda: got.append(pickle.loads(pickle.dumps(delta))))
    thread.start()
    thread.join()
    with pytest.raises(TooManyBadSamplesError):
        got[0].pin_memory()
