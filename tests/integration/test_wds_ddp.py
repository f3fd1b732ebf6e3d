"""T16 with two real processes (gloo): disjoint shards per rank, the same number of batches per
rank with resampling (so collectives never hang), and a missing shard fails up front."""

import datetime
import json
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datafixtures import build_shards

pytest.importorskip("webdataset")

WORLD = 2


def _worker(rank: int, shard_dir: str, out_dir: str) -> None:
    from tessera.data import ImageTextDataset, ImageTransform, collate
    from tessera.data.sources.webdataset import WebDatasetSource
    from tessera.errors import DataError

    dist.init_process_group(
        "gloo",
        init_method=f"file://{out_dir}/store",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=20),
    )
    pattern = f"{shard_dir}/*.tar"
    result: dict = {}
    try:
        # rank/world_size read from torch.distributed (webdataset.split_by_node)
        plain = WebDatasetSource(pattern)
        result["plain_keys"] = [e.key for e in plain]
        src = WebDatasetSource(
            pattern, resampled=True, epoch_length=10, rank=rank, world_size=WORLD
        )
        loader = torch.utils.data.DataLoader(
            ImageTextDataset(src, ImageTransform(16, train=True)), batch_size=3, collate_fn=collate
        )
        batches, shards = 0, set()
        for batch in loader:
            t = batch["images"].mean().reshape(1)
            dist.all_reduce(t)  # one collective per batch, like a DDP step: uneven counts hang
            batches += 1
            shards |= {k.split("/")[0] for k in batch["keys"]}
        result["batches"] = batches
        result["resampled_shards"] = sorted(shards)
        try:
            WebDatasetSource(f"{shard_dir}/{{00000..00009}}.tar", rank=rank, world_size=WORLD)
            result["missing"] = "no error"
        except DataError as e:
            result["missing"] = str(e)
        dist.barrier()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


def test_two_ranks_gloo(tmp_path):
    counts = [6, 1, 3, 2]  # uneven: rank 0 gets 9 examples, rank 1 gets 3 without resampling
    build_shards(tmp_path / "shards", counts)
    ctx = mp.start_processes(
        _worker,
        args=(str(tmp_path / "shards"), str(tmp_path)),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("distributed data test timed out (a rank hung)")
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    plain = [set(r["plain_keys"]) for r in res]
    assert not plain[0] & plain[1]
    expected = {f"{s:05d}/{s:05d}{i:04d}" for s, c in enumerate(counts) for i in range(c)}
    assert plain[0] | plain[1] == expected
    assert {k.split("/")[0] for k in plain[0]} == {"00000", "00002"}
    assert res[0]["batches"] == res[1]["batches"] == 4  # ceil(10 / 3) on both ranks
    assert not set(res[0]["resampled_shards"]) & set(res[1]["resampled_shards"])
    assert all(r["missing"].startswith("shard not found") for r in res)
