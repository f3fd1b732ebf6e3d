"""WebDataset shards: allowlist (T13), truncated shards (T15), shard checks (T16), img2dataset
stats (T17), rank/worker splitting, resampled epochs."""

import gc
import importlib.util
import json
import logging
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datafixtures import (
    build_img2dataset,
    build_shards,
    encode,
    noise_image,
    pickle_payload,
    shard_members,
    write_tar,
)
from tessera.config import DataConfig
from tessera.data import ImageTextDataset, ImageTransform, collate, open_source
from tessera.data.sources.webdataset import (
    WebDatasetSource,
    allowed_member,
    expand_shards,
)
from tessera.errors import DataError


def all_keys(counts):
    return sorted(f"{s:05d}/{s:05d}{i:04d}" for s, c in enumerate(counts) for i in range(c))


def test_streams_all_samples_in_order(tmp_path):
    counts = [3, 2, 4]
    build_shards(tmp_path, counts)
    src = WebDatasetSource(str(tmp_path / "{00000..00002}.tar"), rank=0, world_size=1)
    exs = list(src)
    assert [e.key for e in exs] == all_keys(counts)
    assert exs[0].captions == ("caption 000000000",) and exs[0].image.size == (16, 16)
    assert src.report.seen == src.report.yielded == 9


def test_url_forms(tmp_path):
    build_shards(tmp_path, [1, 1, 1])
    as_list = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    assert expand_shards(str(tmp_path / "*.tar")) == as_list
    assert expand_shards(str(tmp_path / "{00000..00002}.tar")) == as_list
    assert expand_shards(str(tmp_path)) == as_list
    assert expand_shards(as_list) == as_list
    assert isinstance(open_source(str(tmp_path / "*.tar")), WebDatasetSource)
    assert isinstance(open_source(f"wds:{tmp_path}"), WebDatasetSource)
    assert isinstance(open_source(str(tmp_path)), WebDatasetSource)  # a folder of tars only


def test_missing_or_empty_shard_fails_before_streaming(tmp_path):
    build_shards(tmp_path, [2, 2])
    with pytest.raises(DataError, match=r"shard not found: .*00002.tar"):
        WebDatasetSource(str(tmp_path / "{00000..00002}.tar"))
    with pytest.raises(DataError, match="no shards match"):
        WebDatasetSource(str(tmp_path / "x*.tar"))
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        WebDatasetSource(str(tmp_path / "empty.tar"))
    with pytest.raises(DataError, match="2 shard"):
        WebDatasetSource(str(tmp_path / "0000*.tar"), rank=0, world_size=3)


def test_pickle_members_are_never_decoded(tmp_path):
    """T13: a .pyd/.pth/.pickle member whose unpickling would create a marker file."""
    marker = tmp_path / "PWNED"
    payload = pickle_payload(marker)
    good = encode(noise_image(16, 16), "JPEG")
    write_tar(
        tmp_path / "evil.tar",
        [
            ("a.jpg", good),
            ("a.txt", b"a caption"),
            ("a.pyd", payload),
            ("a.pth", payload),
            ("a.pickle", payload),
            ("b.pyd", payload),
            ("c.jpg.pyd", payload),
        ],
    )
    src = WebDatasetSource(str(tmp_path / "evil.tar"))
    exs = list(src)
    assert [e.key for e in exs] == ["evil/a"]
    assert not marker.exists()
    assert not allowed_member("x.pyd") and not allowed_member("x.jpg.pth")
    assert allowed_member("dir/x.JPG") and allowed_member("x.json")
    # the same shard under webdataset's default decoder would run the payload
    import webdataset as wds

    write_tar(tmp_path / "proof.tar", [("a.jpg", good), ("a.pyd", payload)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # webdataset leaves the file open
        ds = wds.WebDataset(str(tmp_path / "proof.tar"), shardshuffle=False).decode("pil")
        list(ds)
        del ds
        gc.collect()
    assert marker.exists()  # proves the fixture is a real threat


def test_truncated_shard_is_counted_and_others_stream(tmp_path, caplog):
    """T15: a shard cut in the middle of a member."""
    shards = build_shards(tmp_path, [3, 4, 3])
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2 + 100])
    src = WebDatasetSource([str(s) for s in shards])
    with caplog.at_level(logging.WARNING, logger="tessera.data"):
        keys = [e.key for e in src]
    assert set(all_keys([3, 0, 0])) <= set(keys)
    assert [k for k in keys if k.startswith("00002/")] == all_keys([3, 0, 3])[3:]
    assert dict(src.report.shard_errors) == {str(shards[1]): {"truncated_shard": 1}}
    assert "truncated_shard" in caplog.text
    assert src.report.to_dict()["shard_errors"][str(shards[1])] == {"truncated_shard": 1}


def _members(path):
    """(name, header offset, data offset, size) of every member of a tar."""
    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data, m.size) for m in tar.getmembers()]


# Where shard 00001 (3 samples of .jpg/.txt/.json; the .jpg is > 512 bytes) is cut, and how
# many of its samples stream before the cut.
CUTS = {
    "inside a header": (lambda m: m[4][1] + 100, 1),  # the 2nd sample's .txt header
    "at a block boundary before a header": (lambda m: m[4][1], 1),
    "inside member data": (lambda m: m[3][2] + 300, 1),  # the 2nd sample's .jpg data
    "at a block boundary inside member data": (lambda m: m[3][2] + 512, 1),
    "after the last member, no end marker": (lambda m: m[-1][2] + 512, 3),
    "inside the end-of-archive marker": (lambda m: m[-1][2] + 512 + 100, 3),
}


@pytest.mark.parametrize("where", list(CUTS))
def test_every_kind_of_cut_shard_is_counted_as_truncated(tmp_path, where):
    """T15: Python's tarfile ends quietly on a missing or partial header, as if the archive
    were complete; the shard must still be counted as truncated, the sample that was cut off
    must not count as caption_missing, and the next shard must stream."""
    shards = build_shards(tmp_path, [3, 3, 3])
    cut, survivors = CUTS[where]
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: cut(_members(shards[1]))])
    src = WebDatasetSource([str(s) for s in shards])
    keys = [e.key for e in src]
    expected = all_keys([3, 0, 0]) + all_keys([0, survivors]) + all_keys([0, 0, 3])
    assert keys == expected
    assert dict(src.report.shard_errors) == {str(shards[1]): {"truncated_shard": 1}}
    assert not src.report.skipped
    assert src.report.seen == src.report.yielded == len(expected)


def test_complete_shards_record_no_shard_error(tmp_path):
    shards = build_shards(tmp_path, [2, 1])
    src = WebDatasetSource([str(s) for s in shards])
    assert len(list(src)) == 3 and not src.report.shard_errors


def test_garbage_header_after_the_first_member_is_counted(tmp_path):
    shards = build_shards(tmp_path, [3, 2])
    data = bytearray(shards[0].read_bytes())
    offset = _members(shards[0])[3][1]  # the 2nd sample's first header
    data[offset : offset + 512] = b"\x7fgarbage!" * 51 + b"\x00\x00"
    shards[0].write_bytes(bytes(data))
    src = WebDatasetSource([str(s) for s in shards])
    assert [e.key for e in src] == ["00000/000000000", *all_keys([0, 2])]
    assert dict(src.report.shard_errors) == {str(shards[0]): {"corrupt_shard": 1}}


def test_oversized_members_are_not_read(tmp_path):
    members = shard_members(0, 2)
    members[1] = ("000000000.txt", b"x" * 100)  # over max_caption_bytes below
    write_tar(tmp_path / "s.tar", members)
    cfg = DataConfig(image_size=16, max_caption_bytes=64, max_image_bytes=900)
    src = WebDatasetSource(str(tmp_path / "s.tar"), config=cfg)
    assert [e.key for e in src] == ["s/000000001"]
    assert dict(src.report.skipped) == {"file_too_large": 1}
    src = WebDatasetSource(str(tmp_path / "s.tar"), config=cfg.replace(max_image_bytes=100))
    assert list(src) == [] and dict(src.report.skipped) == {"file_too_large": 2}


def test_txt_member_is_one_caption_per_line_and_json_captions_list(tmp_path):
    img = encode(noise_image(16, 16), "JPEG")
    write_tar(
        tmp_path / "s.tar",
        [
            ("a.jpg", img),
            ("a.txt", b"first caption\n\n  second caption  \nthird\n"),
            ("b.jpg", img),
            ("b.txt", b"a single img2dataset caption"),
            ("c.jpg", img),
            ("c.json", json.dumps({"captions": [" one ", "", "two"], "caption": "x"}).encode()),
        ],
    )
    got = {e.key: e.captions for e in WebDatasetSource(str(tmp_path / "s.tar"))}
    assert got == {
        "s/a": ("first caption", "second caption", "third"),
        "s/b": ("a single img2dataset caption",),
        "s/c": ("one", "two"),
    }


def test_shapes_webdataset_export_reads_back_every_caption(tmp_path):
    """``tessera data shapes --format webdataset`` writes 5 captions per .txt, one per line:
    reading the shards back gives exactly the captions of the shapes source."""
    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import ShapesSource, export_shapes

    cfg = ShapesConfig(size=32)
    export_shapes(tmp_path, n=7, split="train", format="webdataset", shard_size=3, config=cfg)
    src = open_source(f"wds:{tmp_path}/*.tar", config=DataConfig(image_size=32))
    got = {e.key.split("/", 1)[1]: e.captions for e in src}
    shapes = ShapesSource(cfg, split="train", n=7)
    assert got == {f"{shapes.index(i):06d}": shapes.captions(i) for i in range(7)}
    assert all(len(c) == cfg.n_captions == 5 for c in got.values())
    assert src.report.yielded == 7 and not src.report.shard_errors


def test_not_a_tar_is_counted(tmp_path):
    shards = build_shards(tmp_path, [2, 2])
    shards[0].write_bytes(b"definitely not a tar file" * 40)
    src = WebDatasetSource([str(s) for s in shards])
    assert [e.key for e in src] == all_keys([0, 2])
    assert set(src.report.shard_errors) == {str(shards[0])}


def test_bad_samples_in_a_shard_are_skipped_by_reason(tmp_path):
    """T10 / T14 inside a shard."""
    good = encode(noise_image(32, 32, 1), "JPEG")
    write_tar(
        tmp_path / "mixed.tar",
        [
            ("good.jpg", good),
            ("good.txt", b"fine"),
            ("trunc.jpg", good[: len(good) // 2]),
            ("trunc.txt", b"truncated"),
            ("garbage.jpg", b"not an image" * 10),
            ("garbage.txt", b"garbage"),
            ("nocap.jpg", good),
            ("blank.jpg", good),
            ("blank.txt", b"  \n "),
            ("latin.jpg", good),
            ("latin.txt", "é".encode("latin-1")),
            ("noimg.txt", b"caption only"),
            ("viajson.png", encode(noise_image(16, 16), "PNG")),
            ("viajson.json", b'{"caption": "from json"}'),
        ],
    )
    src = WebDatasetSource(str(tmp_path / "mixed.tar"))
    exs = {e.key: e for e in src}
    assert sorted(exs) == ["mixed/good", "mixed/viajson"]
    assert exs["mixed/viajson"].captions == ("from json",)
    assert dict(src.report.skipped) == {
        "truncated_image": 1,
        "corrupt_image": 1,
        "caption_missing": 1,
        "caption_empty": 1,
        "caption_not_utf8": 1,
        "image_missing": 1,
    }


def test_img2dataset_stats_are_reported(tmp_path):
    """T17: tars + _stats.json (+ parquet when pyarrow is installed)."""
    counts = [3, 2]
    build_img2dataset(tmp_path, counts, failed=[(2, 1), (1, 0)])
    src = open_source(str(tmp_path / "*.tar"))
    assert [e.key for e in src] == all_keys(counts)
    up = src.report.to_dict()["upstream"]
    assert up == {
        "shards": 2,
        "count": 9,
        "successes": 5,
        "failed_to_download": 3,
        "failed_to_resize": 1,
    }
    assert "failed_to_download=3" in src.report.summary()


def test_img2dataset_parquet_without_stats(tmp_path):
    if importlib.util.find_spec("pyarrow") is None:
        pytest.skip("pyarrow not installed")
    build_img2dataset(tmp_path, [2], failed=[(4, 1)])
    (tmp_path / "00000_stats.json").unlink()
    src = open_source(str(tmp_path / "00000.tar"))
    assert src.report.to_dict()["upstream"]["failed_to_download"] == 4


def test_two_ranks_disjoint_and_complete(tmp_path):
    counts = [3, 1, 4, 2, 5]
    build_shards(tmp_path, counts)
    parts = [
        [e.key for e in open_source(f"wds:{tmp_path}", rank=r, world_size=2)] for r in range(2)
    ]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == all_keys(counts)
    assert {k.split("/")[0] for k in parts[0]} == {"00000", "00002", "00004"}


def test_resampled_epochs_have_equal_length_per_rank(tmp_path):
    build_shards(tmp_path, [5, 1, 2])  # uneven on purpose
    lengths, shards_seen = [], []
    for r in range(2):
        src = WebDatasetSource(
            str(tmp_path / "*.tar"), rank=r, world_size=2, resampled=True, epoch_length=7
        )
        keys = [e.key for e in src]
        lengths.append(len(keys))
        shards_seen.append({k.split("/")[0] for k in keys})
        assert [e.key for e in src] == keys  # deterministic for a fixed epoch
        src.set_epoch(1)
        assert len(list(src)) == 7
    assert lengths == [7, 7]
    assert not shards_seen[0] & shards_seen[1]
    with pytest.raises(DataError, match="epoch_length"):
        WebDatasetSource(str(tmp_path / "*.tar"), resampled=True)


def test_dataloader_workers_split_shards_without_duplicates(tmp_path):
    counts = [2, 3, 1, 2]
    build_shards(tmp_path, counts)
    src = WebDatasetSource(str(tmp_path / "*.tar"), rank=0, world_size=1)
    ds = ImageTextDataset(src, ImageTransform(16))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)
    keys = [k for b in loader for k in b["keys"]]
    assert sorted(keys) == all_keys(counts)
    # resampled with workers: the per-rank epoch is split across workers exactly
    src = WebDatasetSource(
        str(tmp_path / "*.tar"), rank=0, world_size=1, resampled=True, epoch_length=9
    )
    loader = torch.utils.data.DataLoader(
        ImageTextDataset(src), batch_size=None, num_workers=2, collate_fn=lambda x: x
    )
    assert len(list(loader)) == 9


def test_n_limits_examples(tmp_path):
    build_shards(tmp_path, [3, 3])
    assert len(list(open_source(str(tmp_path / "*.tar"), n=4))) == 4


def test_shuffle_shards_keeps_ranks_disjoint(tmp_path):
    build_shards(tmp_path, [1, 1, 1, 1])
    parts = []
    for r in range(2):
        src = WebDatasetSource(
            str(tmp_path / "*.tar"), rank=r, world_size=2, shuffle_shards=True, seed=3
        )
        src.set_epoch(5)
        parts.append({e.key for e in src})
    assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 4


def test_default_config_and_unused_members(tmp_path):
    members = [*shard_members(0, 1), ("extra.cls", b"3"), ("__meta__", b"x")]
    write_tar(tmp_path / "s.tar", members)
    src = WebDatasetSource(str(tmp_path / "s.tar"), config=DataConfig(image_size=16))
    assert len(list(src)) == 1 and not src.report.skipped
