"""Data pipeline: raw sources -> WordPiece tokenizer -> cached int32 arrays -> batches.

Typical use (in every DDP rank)::

    data = prepare_data(cfg, is_main=rank == 0, barrier=dist.barrier)
    train = data.train.to(device)
    sampler = TrainBatchSampler(train.lengths, cfg.train.batch_size, world_size, rank,
                                cfg.train.grad_accum_steps, cfg.train.seed,
                                cfg.data.bucket_multiplier)
    for micro_batches in sampler:
        for idx in micro_batches:
            input_ids, mask, labels = make_batch(train, idx)
"""

from scalelab.data.batching import TrainBatchSampler, eval_shards, make_batch, to_device
from scalelab.data.cache import (
    CACHE_VERSION,
    CacheEntry,
    EncodedData,
    EncodedSplit,
    cache_key,
    clear_cache,
    default_cache_dir,
    encode_texts,
    list_cache,
    prepare_data,
)
from scalelab.data.sources import (
    NUM_CLASSES,
    DataError,
    RawData,
    bundled_dir,
    clean_ag_news,
    clean_imdb,
    load_raw,
    resolve_path,
)
from scalelab.data.tokenizer import SPECIAL_TOKENS, build_tokenizer, pad_id

__all__ = [
    "CACHE_VERSION",
    "CacheEntry",
    "NUM_CLASSES",
    "SPECIAL_TOKENS",
    "DataError",
    "EncodedData",
    "EncodedSplit",
    "RawData",
    "TrainBatchSampler",
    "build_tokenizer",
    "bundled_dir",
    "cache_key",
    "clear_cache",
    "clean_ag_news",
    "clean_imdb",
    "default_cache_dir",
    "encode_texts",
    "eval_shards",
    "list_cache",
    "load_raw",
    "make_batch",
    "pad_id",
    "prepare_data",
    "resolve_path",
    "to_device",
]
