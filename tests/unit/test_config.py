from pathlib import Path

import pytest

from scalelab.config import Config, ConfigError, load_config, parse_override, set_value

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_preset_loads_and_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem
    for world_size in (1, 2, 4):
        cfg.validate(world_size)


def test_study_presets_match_the_study() -> None:
    small = load_config(CONFIGS[0].parent / "ag_news_small.yaml")
    assert (
        small.model.d_model,
        small.model.num_layers,
        small.model.num_heads,
        small.model.d_ff,
    ) == (128, 2, 4, 256)
    assert (
        small.model.max_seq_len,
        small.train.batch_size,
        small.train.lr,
        small.model.vocab_size,
    ) == (128, 32, 5e-4, 20000)
    large = load_config(CONFIGS[0].parent / "ag_news_large.yaml")
    assert (
        large.model.d_model,
        large.model.num_layers,
        large.model.num_heads,
        large.model.d_ff,
    ) == (256, 4, 8, 1024)
    assert (large.model.max_seq_len, large.train.batch_size, large.train.lr) == (256, 128, 1e-3)
    for name in ("imdb_small", "imdb_large"):
        assert load_config(CONFIGS[0].parent / f"{name}.yaml").model.max_seq_len == 512


def test_overrides_are_typed() -> None:
    cfg = load_config(
        None, ["train.batch_size=128", "train.lr=1e-3", "data.pad_to_max_len=true", "output.dir=x"]
    )
    assert cfg.train.batch_size == 128 and cfg.train.lr == 1e-3
    assert cfg.data.pad_to_max_len is True and cfg.output.dir == "x"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        (
            "train.batchsize=3",
            "unknown config key 'train.batchsize' (did you mean 'train.batch_size'?)",
        ),
        ("nosection.x=1", "unknown config key 'nosection.x'"),
        ("train.batch_size=abc", "train.batch_size must be an integer"),
        ("train.lr=fast", "train.lr must be a number"),
        ("data.pad_to_max_len=maybe", "data.pad_to_max_len must be true or false"),
        ("model.num_heads=3", "model.num_heads=3 must divide model.d_model=128"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("data.pad_multiple=0", "data.pad_multiple must be >= 1"),
        ("train.precision=fp8", "train.precision must be one of"),
        ("train.compile_mode=fast", "train.compile_mode must be one of"),
        ("distributed.comm_hook=zip", "distributed.comm_hook must be one of"),
        ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
        ("train.resume=/nonexistent.pt", "train.resume: checkpoint file not found"),
    ],
)
def test_bad_values_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_global_batch_must_divide_world_size_times_accumulation() -> None:
    load_config(None, ["train.batch_size=3"]).validate(1)  # any batch divides one process
    cfg = Config()
    set_value(cfg, "train.batch_size", 32)
    set_value(cfg, "train.grad_accum_steps", 3)
    with pytest.raises(
        ConfigError,
        match=r"train.batch_size=32 is not divisible by world_size x train.grad_accum_steps = 2 x 3",
    ):
        cfg.validate(world_size=2)
    set_value(cfg, "train.grad_accum_steps", 4)
    cfg.validate(world_size=2)
    assert cfg.train.per_rank_batch(2) == 4


def test_files_source_needs_paths() -> None:
    with pytest.raises(ConfigError, match="data.source=files needs both"):
        load_config(None, ["data.source=files", "data.train_path=a.csv"])


def test_bad_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "sec.yaml").write_text("model: 3\n")
    with pytest.raises(ConfigError, match="section 'model' must be a mapping"):
        load_config(tmp_path / "sec.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_parse_override_requires_equals() -> None:
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_override("train.lr")


def test_compile_model_passes_the_configured_mode(monkeypatch) -> None:
    import torch

    from scalelab.train import compile_model

    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.append(mode) or model)
    model = torch.nn.Linear(2, 2)
    for mode in ("default", "reduce-overhead", "max-autotune"):
        cfg = load_config(None, ["train.compile=true", f"train.compile_mode={mode}"])
        assert compile_model(model, cfg) is model
    assert seen == [None, "reduce-overhead", "max-autotune"]  # None: torch's default mode
