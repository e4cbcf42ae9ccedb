import pytest
import torch
import torch.nn.functional as F

from scalelab.config import load_config
from scalelab.models import build_model, count_parameters
from scalelab.models.transformer import (
    TransformerClassifier,
    attention_math,
    cpu_dropout_mask,
    dropout,
)


def expected_parameters(vocab: int, d: int, layers: int, d_ff: int, seq: int, classes: int) -> int:
    """The architecture's count by hand: token + position tables, per block two LayerNorms, the
    fused QKV and output projections and the two FFN layers (weights + biases), the final
    LayerNorm and the linear head."""
    block = 2 * (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * d_ff + d_ff) + (d_ff * d + d)
    return vocab * d + seq * d + layers * block + 2 * d + (d * classes + classes)


@pytest.mark.parametrize(
    ("preset", "classes", "count"),
    [
        ("ag_news_small", 4, 2_842_116),  # the README's preset table
        ("ag_news_large", 4, 8_346_116),
        ("imdb_small", 2, 2_891_010),
        ("imdb_large", 2, 8_411_138),
    ],
)
def test_preset_parameter_counts(preset: str, classes: int, count: int) -> None:
    # embeddings dominate: 20k x d_model (the study quotes ~2M for its small model)
    cfg = load_config(f"configs/{preset}.yaml").model
    model = build_model(cfg, 20000, classes)
    shape = (cfg.d_model, cfg.num_layers, cfg.d_ff, cfg.max_seq_len, classes)
    assert count_parameters(model) == expected_parameters(20000, *shape) == count


def test_padding_does_not_change_the_output() -> None:
    torch.manual_seed(0)
    model = TransformerClassifier(
        100, 3, d_model=16, num_layers=2, num_heads=2, d_ff=32, max_seq_len=20
    ).eval()
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    padded_ids = F.pad(ids, (0, 5))
    padded_mask = F.pad(mask, (0, 5))
    torch.testing.assert_close(
        model(ids, mask), model(padded_ids, padded_mask), atol=1e-5, rtol=1e-5
    )


def test_cpu_attention_maths_equals_sdpa_without_dropout() -> None:
    q, k, v = (torch.randn(3, 2, 6, 8) for _ in range(3))
    keep = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5], dtype=torch.bool)
    bias = torch.zeros(3, 6).masked_fill(~keep, float("-inf"))[:, None, None, :]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    torch.testing.assert_close(attention_math(q, k, v, bias, 0.0), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fast_dropout_keeps_the_right_fraction_and_scales(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = dropout(x, p, training=True)
    kept = (y != 0).float().mean().item()
    assert kept == pytest.approx(1 - p, abs=2e-3)
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p)))
    assert y.mean().item() == pytest.approx(1.0, abs=5e-3)  # unbiased in expectation
    assert torch.equal(dropout(x, p, training=False), x)
    # different draws each call, reproducible from the seed (needed for exact resume)
    torch.manual_seed(1)
    a = dropout(x, p, True)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, p, True))
    assert not torch.equal(a, dropout(x, p, True))


def test_fast_dropout_mask_is_exactly_zero_or_scale_for_any_shape() -> None:
    torch.manual_seed(0)
    mask = cpu_dropout_mask(torch.Size([3, 5, 7]), 0.25, torch.float32)  # 105: not a multiple of 4
    assert mask.shape == (3, 5, 7)
    assert set(mask.unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}
    big = cpu_dropout_mask(torch.Size([100_000]), 0.25, torch.float32)
    assert abs(float((big != 0).float().mean()) - 0.75) < 0.01  # keeps 3 in 4, not none
    assert cpu_dropout_mask(torch.Size([2, 3]), 0.5, torch.bfloat16).dtype == torch.bfloat16


def test_textbook_kernels_compute_the_same_function() -> None:
    # The benchmarks' study baseline switches scalelab's CPU kernels off: it must stay the same model.
    torch.manual_seed(0)
    model = TransformerClassifier(100, 3, d_model=16, num_layers=2, num_heads=2, d_ff=32).eval()
    ids = torch.randint(5, 100, (4, 9))
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 5:] = False
    fast = model(ids, mask)
    model.set_cpu_kernels(False)
    assert not any(b.cpu_kernels for b in model.blocks)
    torch.testing.assert_close(model(ids, mask), fast, atol=1e-5, rtol=1e-5)
    model.train()  # training: both drop activations (outputs change between calls)
    assert not torch.equal(model(ids, mask), model(ids, mask))


def test_distilbert_pretrained_path_that_does_not_exist_is_a_config_error(tmp_path) -> None:
    pytest.importorskip("transformers")
    from scalelab.config import ConfigError, ModelConfig

    cfg = ModelConfig(arch="distilbert", max_seq_len=32, pretrained=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"^model\.pretrained: no such folder: .*nope"):
        build_model(cfg, 500, 4)
    (tmp_path / "weights.bin").write_bytes(b"x")  # a file, not the folder it belongs in
    cfg.pretrained = str(tmp_path / "weights.bin")
    with pytest.raises(ConfigError, match=r"^model\.pretrained: not a folder: .*weights\.bin"):
        build_model(cfg, 500, 4)
    # a folder without weights: transformers' OSError becomes one line naming the key
    (tmp_path / "empty").mkdir()
    cfg.pretrained = str(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"^model\.pretrained=.*empty: not loadable") as exc:
        build_model(cfg, 500, 4)
    assert "\n" not in str(exc.value)


def test_distilbert_without_transformers_is_a_config_error(monkeypatch) -> None:
    import sys

    from scalelab.config import ConfigError, ModelConfig

    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    with pytest.raises(ConfigError, match=r"model\.arch=distilbert needs the `transformers`"):
        build_model(ModelConfig(arch="distilbert", max_seq_len=32), 500, 4)


def test_training_forward_compiles_without_graph_breaks_on_cpu() -> None:
    """train.compile=true on CPU: scalelab's numpy dropout draw would break the graph (one
    break per dropout call), so under torch.compile the model takes F.dropout and SDPA."""
    torch.manual_seed(0)
    model = TransformerClassifier(
        100, 3, d_model=16, num_layers=2, num_heads=2, d_ff=32, max_seq_len=20
    ).train()
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(ids, mask)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    # outside compile the CPU kernels stay in use (their mask is drawn by numpy)
    x = torch.ones(1000)
    torch.manual_seed(1)
    a = dropout(x, 0.5, True)
    torch.manual_seed(1)
    assert torch.equal(a, x * cpu_dropout_mask(x.shape, 0.5, x.dtype))


def _save_tiny_distilbert(folder, **kw) -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    cfg = DistilBertConfig(
        vocab_size=kw.get("vocab_size", 500),
        max_position_embeddings=kw.get("positions", 64),
        n_layers=1,
        n_heads=2,
        dim=16,
        hidden_dim=32,
        num_labels=kw.get("labels", 2),
        dropout=kw.get("dropout", 0.3),
        attention_dropout=kw.get("dropout", 0.3),
    )
    DistilBertForSequenceClassification(cfg).save_pretrained(folder)


def test_distilbert_pretrained_folder_is_checked_against_the_config(tmp_path) -> None:
    pytest.importorskip("transformers")
    from scalelab.config import ConfigError, ModelConfig

    _save_tiny_distilbert(tmp_path / "bert", labels=4)
    cfg = ModelConfig(arch="distilbert", max_seq_len=32, pretrained=str(tmp_path / "bert"))
    cfg.dropout = 0.0
    # another number of labels: the body loads, the head is new; model.dropout wins
    model = build_model(cfg, 500, 2)
    assert model.net.config.num_labels == 2 and model.net.config.dropout == 0.0
    assert model.net.config.attention_dropout == 0.0
    ids = torch.randint(0, 500, (2, 32))
    assert model(ids, torch.ones(2, 32, dtype=torch.bool)).shape == (2, 2)
    # more positions or token ids than the weights have: one line now, not a traceback later
    cfg.max_seq_len = 65
    with pytest.raises(ConfigError, match=r"model\.max_seq_len=65 .* has 64 positions"):
        build_model(cfg, 500, 2)
    cfg.max_seq_len = 32
    with pytest.raises(ConfigError, match=r"1,000 ids .* has 500 embedding rows") as exc:
        build_model(cfg, 1000, 2)
    assert "\n" not in str(exc.value)


def test_distilbert_model_dropout_reaches_the_classifier_head(tmp_path) -> None:
    """model.dropout is DistilBERT's seq_classif_dropout too (its default 0.2 stayed active)."""
    pytest.importorskip("transformers")
    from scalelab.config import ModelConfig

    cfg = ModelConfig(arch="distilbert", max_seq_len=16, dropout=0.0)
    _save_tiny_distilbert(tmp_path / "db", dropout=0.3)
    for pretrained in ("", str(tmp_path / "db")):
        cfg.pretrained = pretrained
        torch.manual_seed(0)
        model = build_model(cfg, 500, 3).train()
        assert model.net.config.seq_classif_dropout == 0.0 and model.net.dropout.p == 0.0
        drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert drops and all(p == 0.0 for p in drops), drops
        ids = torch.randint(5, 500, (2, 16))
        mask = torch.ones(2, 16, dtype=torch.bool)
        assert torch.equal(model(ids, mask), model(ids, mask))  # nothing random in train mode
    cfg.dropout, cfg.pretrained = 0.25, ""
    assert build_model(cfg, 500, 3).net.dropout.p == 0.25


def test_distilbert_pretrained_folder_of_another_model_type_is_refused(tmp_path) -> None:
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertForSequenceClassification

    from scalelab.config import ConfigError, ModelConfig

    bert = BertConfig(
        vocab_size=500,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertForSequenceClassification(bert).save_pretrained(tmp_path / "bert")
    cfg = ModelConfig(arch="distilbert", max_seq_len=32, pretrained=str(tmp_path / "bert"))
    with pytest.raises(ConfigError) as exc:
        build_model(cfg, 500, 2)
    assert str(exc.value) == (
        f"model.pretrained={tmp_path / 'bert'}: config.json has model_type 'bert', not "
        "'distilbert' (give a folder saved from a DistilBERT model)"
    )
    # a DistilBERT folder still loads, also one without a classification head
    from transformers import DistilBertConfig, DistilBertModel

    _save_tiny_distilbert(tmp_path / "db")
    cfg.pretrained = str(tmp_path / "db")
    assert build_model(cfg, 500, 2).net.config.model_type == "distilbert"
    body = DistilBertConfig(
        vocab_size=500, max_position_embeddings=64, n_layers=1, n_heads=2, dim=16, hidden_dim=32
    )
    torch.manual_seed(0)
    base = DistilBertModel(body)
    base.save_pretrained(tmp_path / "base")
    cfg.pretrained = str(tmp_path / "base")
    model = build_model(cfg, 500, 2)
    torch.testing.assert_close(
        model.net.distilbert.embeddings.word_embeddings.weight,
        base.embeddings.word_embeddings.weight,
    )


def test_distilbert_weights_missing_body_tensors_are_refused(tmp_path) -> None:
    pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    from scalelab.config import ConfigError, ModelConfig

    folder = tmp_path / "db"
    _save_tiny_distilbert(folder)
    weights = load_file(folder / "model.safetensors")
    dropped = sorted(k for k in weights if ".layer.0.ffn." in k)
    assert dropped
    save_file(
        {k: v for k, v in weights.items() if k not in dropped},
        folder / "model.safetensors",
        metadata={"format": "pt"},
    )
    cfg = ModelConfig(arch="distilbert", max_seq_len=32, pretrained=str(folder))
    with pytest.raises(ConfigError) as exc:
        build_model(cfg, 500, 2)
    msg = str(exc.value)
    assert msg.startswith(f"model.pretrained={folder}: the weights lack {len(dropped)} DistilBERT")
    assert "ffn.lin1" in msg and "only the classification head" in msg and "\n" not in msg


def test_distilbert_truncated_safetensors_is_a_config_error(tmp_path) -> None:
    pytest.importorskip("transformers")
    from scalelab.config import ConfigError, ModelConfig

    folder = tmp_path / "db"
    _save_tiny_distilbert(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cfg = ModelConfig(arch="distilbert", max_seq_len=32, pretrained=str(folder))
    with pytest.raises(ConfigError) as exc:
        build_model(cfg, 500, 2)
    assert str(exc.value).startswith(
        f"model.pretrained={folder}: not loadable DistilBERT weights ("
    )
    assert "\n" not in str(exc.value)
    # a broken config.json: one line too
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r": not loadable DistilBERT weights \(") as exc:
        build_model(cfg, 500, 2)
    assert "\n" not in str(exc.value)


def test_distilbert_keeps_the_tokenizers_padding_row_out_of_training(tmp_path) -> None:
    pytest.importorskip("transformers")
    from scalelab.config import ModelConfig

    cfg = ModelConfig(arch="distilbert", max_seq_len=32, d_model=32)
    model = build_model(cfg, 500, 4, pad_id=3)
    emb = model.net.distilbert.embeddings.word_embeddings
    assert emb.padding_idx == 3 and torch.count_nonzero(emb.weight[3]) == 0
    _save_tiny_distilbert(tmp_path / "saved")  # the pretrained path takes it too
    cfg.pretrained = str(tmp_path / "saved")
    loaded = build_model(cfg, 500, 4, pad_id=3)
    assert loaded.net.distilbert.embeddings.word_embeddings.padding_idx == 3


def test_ddp_broadcasts_buffers_only_where_training_changes_them() -> None:
    """DistilBERT's only buffer is its position-id table: DDP would broadcast it before every
    forward (a collective per step). A floating-point buffer (BatchNorm's statistics) is
    still broadcast."""
    pytest.importorskip("transformers")
    import torch.distributed as dist
    from torch import nn

    from scalelab.config import DistributedConfig, ModelConfig
    from scalelab.distributed import DistEnv, wrap_ddp

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        env = DistEnv(world_size=2, local_world_size=2, backend="gloo")  # wrap as for 2 ranks
        cfg = DistributedConfig(embedding_grad_sync="dense", grad_sync="buckets")
        bert = build_model(ModelConfig(arch="distilbert", max_seq_len=32), 300, 3)
        assert [n for n, _ in bert.named_buffers()] == ["net.distilbert.embeddings.position_ids"]
        assert not wrap_ddp(bert, cfg, env).will_sync_module_buffers()
        norm = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        assert wrap_ddp(norm, cfg, env).will_sync_module_buffers()
    finally:
        dist.destroy_process_group()
