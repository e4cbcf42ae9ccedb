import re
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
        ("data.pad_multiple=200", "data.pad_multiple=200 is above model.max_seq_len=128"),
        ("train.precision=fp8", "train.precision must be one of"),
        ("train.compile_mode=fast", "train.compile_mode must be one of"),
        ("distributed.comm_hook=zip", "distributed.comm_hook must be one of"),
        ("distributed.grad_sync=later", "distributed.grad_sync must be one of"),
        ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
        ("train.resume=/nonexistent.pt", "train.resume: checkpoint file not found"),
        # sizes past int32 overflowed the tokenizer (a traceback); 10,000 threads crashed torch
        ("model.vocab_size=99999999999999999999", "model.vocab_size must be at most 2147483647"),
        ("train.num_threads=10000", "train.num_threads must be at most 1024"),
        # overflowed time.sleep in the first batch (a traceback after config.yaml was written)
        ("data.delay_per_batch_s=1e300", "data.delay_per_batch_s must be at most 86400 s"),
        ("output.run_name=" + "a" * 300, "output.run_name is 300 bytes long; at most 255"),
        ("output.run_name=a\nb", "no control characters"),
        ("name=", "name must not be empty"),
        # YAML 1.1 read these as sexagesimal 90 and hexadecimal 16
        ("train.epochs=1:30", "train.epochs must be an integer, got '1:30'"),
        ("train.lr=0x10", "train.lr must be a number, got '0x10'"),
    ],
)
def test_bad_values_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "clash",
    [
        "distributed.embedding_grad_sync=dense",
        "distributed.comm_hook=fp16",
        "distributed.comm_hook=powersgd",
        "distributed.find_unused_parameters=true",
    ],
)
def test_fused_grad_sync_refuses_what_it_cannot_fuse(clash: str) -> None:
    with pytest.raises(ConfigError, match=f"grad_sync=fused does not combine with {clash}"):
        load_config(None, ["distributed.grad_sync=fused", clash])


@pytest.mark.parametrize(
    ("overrides", "backend", "fused"),
    [
        ([], "gloo", True),  # CPU default: the embedding rows outside DDP, no hook
        ([], "nccl", False),  # GPUs keep DDP's overlapped buckets
        (["distributed.comm_hook=fp16"], "gloo", False),
        (["distributed.embedding_grad_sync=dense"], "gloo", False),
        (["distributed.find_unused_parameters=true"], "gloo", False),
        (["distributed.grad_sync=buckets"], "gloo", False),
        (["distributed.grad_sync=fused", "distributed.embedding_grad_sync=rows"], "nccl", True),
    ],
)
def test_grad_sync_auto_fuses_with_gloo_only_when_it_can(
    overrides: list[str], backend: str, fused: bool
) -> None:
    from scalelab.distributed import fuses_grad_sync

    cfg = load_config(None, overrides)
    assert fuses_grad_sync(cfg.distributed, backend) is fused


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

    seen, compiled = [], object()
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.append(mode) or compiled)
    model = torch.nn.Linear(2, 2)
    for mode in ("default", "reduce-overhead", "max-autotune"):
        cfg = load_config(None, ["train.compile=true", f"train.compile_mode={mode}"])
        assert compile_model(model, cfg) is compiled  # what torch.compile returned is used
    assert seen == [None, "reduce-overhead", "max-autotune"]  # None: torch's default mode


FLOAT_KEYS = [
    "model.dropout",
    "data.delay_per_batch_s",
    "train.lr",
    "train.weight_decay",
    "train.warmup_ratio",
    "train.max_grad_norm",
    "distributed.bucket_cap_mb",
]


def test_the_float_key_list_is_every_float_field() -> None:
    from scalelab.config import _field_type, all_keys

    assert sorted(k for k in all_keys() if _field_type(k) is float) == sorted(FLOAT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-inf", ".inf", "1e999"])
def test_float_fields_must_be_finite(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={value}"])
    assert str(err.value).startswith(f"{key} must be a finite number, got ")
    assert "\n" not in str(err.value)


def test_float_fields_must_be_finite_in_a_file_too(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match=r"^train\.lr must be a finite number, got nan$"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distributed.bucket_cap_mb=-5", "distributed.bucket_cap_mb must be > 0, got -5.0"),
        ("distributed.bucket_cap_mb=0", "distributed.bucket_cap_mb must be > 0, got 0.0"),
        ("train.seed=-1", "train.seed must be in [0, 2**32 - 1], got -1"),
        ("train.seed=4294967296", "train.seed must be in [0, 2**32 - 1], got 4294967296"),
    ],
)
def test_bucket_cap_and_seed_ranges(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == message


def test_bucket_cap_and_seed_limits_are_accepted() -> None:
    cfg = load_config(None, ["distributed.bucket_cap_mb=0.5", "train.seed=4294967295"])
    assert cfg.distributed.bucket_cap_mb == 0.5 and cfg.train.seed == 2**32 - 1
    assert load_config(None, ["train.seed=0"]).train.seed == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("010", "010"),  # YAML 1.1: octal 8
        ("12:30", "12:30"),  # sexagesimal 750
        ("0x10", "0x10"),  # hex 16
        ("2024-12-01", "2024-12-01"),  # a datetime.date
        ("yes", "yes"),  # True
        ("1e3", "1e3"),
        ("a: b", "a: b"),  # a mapping
        ("[1, 2]", "[1, 2]"),
        ("run # 3", "run # 3"),  # not a comment
        ("  spaced  ", "spaced"),
        ("'010'", "010"),  # quoted: unquoted
        ('"a b"', "a b"),
        ("null", ""),  # no value, as in a file
        ("~", ""),
        ("", ""),
    ],
)
def test_string_overrides_keep_their_text(text: str, expected: str) -> None:
    cfg = load_config(None, [f"output.run_name={text}", f"data.vocab_path={text}"])
    assert cfg.output.run_name == expected and cfg.data.vocab_path == expected
    if expected:
        assert load_config(None, [f"name={text}"]).name == expected
    else:  # run folders are named <name>-ws<n>-<time>: "-ws1-..." was made
        with pytest.raises(ConfigError, match="name must not be empty"):
            load_config(None, [f"name={text}"])
    # typed fields read numbers as decimals (YAML 1.1's hex, octal and base 60 are text)
    assert parse_override("train.batch_size=0x10") == ("train.batch_size", "0x10")
    assert parse_override("train.batch_size=016") == ("train.batch_size", "016")


def test_string_fields_in_a_file_keep_their_text(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "name: 2024-12-01\n"
        "output:\n  run_name: 010\n  dir: 12:30\n"
        "data:\n  source: files\n  vocab_path: ~\n  cache_dir: '0x10'\n  train_path: yes\n"
        "  test_path: 'no'\n"
        "train:\n  batch_size: 016\n"
    )
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.name, cfg.output.run_name, cfg.output.dir) == ("2024-12-01", "010", "12:30")
    assert (cfg.data.vocab_path, cfg.data.cache_dir, cfg.data.train_path) == ("", "0x10", "yes")
    assert cfg.train.batch_size == 16  # decimal, not YAML 1.1's octal 14


@pytest.mark.parametrize(("text", "kind"), [("0\n", "int"), ("[]\n", "list"), ("false\n", "bool")])
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, kind: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=f"top level must be a mapping of sections, got {kind}$"):
        load_config(tmp_path / "c.yaml")


def test_an_empty_file_is_the_default_config(tmp_path: Path) -> None:
    for text in ("", "# nothing yet\n"):
        (tmp_path / "empty.yaml").write_text(text)
        cfg = load_config(tmp_path / "empty.yaml")
        assert cfg.name == "empty" and cfg.train == Config().train


def test_yaml_syntax_errors_name_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("model:\n  d_model: 128\n\tnum_layers: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "bad.yaml")
    assert "bad.yaml: not valid YAML at line 3, column 1: found character" in str(err.value)
    assert "\n" not in str(err.value)
    (tmp_path / "two.yaml").write_text("name: a\n---\nname: b\n")
    with pytest.raises(ConfigError, match=r"at line 2, column 1: expected a single document"):
        load_config(tmp_path / "two.yaml")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not valid YAML: not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")


def test_unreadable_config_file_is_one_line(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"is a folder, not a YAML config file$"):
        load_config(tmp_path)
    (tmp_path / "c.yaml").write_text("name: x\n")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    assert str(err.value) == f"{tmp_path / 'c.yaml'}: cannot read config file: Permission denied"


def test_save_config_is_atomic_and_round_trips(tmp_path: Path, monkeypatch) -> None:
    import os

    from scalelab.config import save_config

    path = tmp_path / "config.yaml"
    cfg = load_config(None, ["name=study", "output.run_name=010", "train.lr=1e-3"])
    save_config(cfg, path)
    assert load_config(path).to_dict() == cfg.to_dict()
    before = path.read_text()

    def crash(src, dst):
        raise OSError("disk gone")

    from scalelab.checkpoint import CheckpointError

    monkeypatch.setattr(os, "replace", crash)  # a crash before the rename: the old file stays
    with pytest.raises(CheckpointError, match=r"config\.yaml: cannot write it \(disk gone\)"):
        save_config(load_config(None, ["train.lr=2e-3"]), path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temp file left


@pytest.mark.parametrize(
    "override",
    [
        "output.run_name=a/b/../../..",
        "output.run_name=/tmp/elsewhere",
        "output.run_name=..",
        "name=../../escaped",
        "output.run_name=a\\\\b",
    ],  # fmt: skip
)
def test_run_folder_names_cannot_leave_output_dir(override):
    with pytest.raises(ConfigError, match=r"must be a plain folder name \(no '/'"):
        load_config(None, [override])


def test_plain_run_names_are_fine():
    cfg = load_config(None, ["output.run_name=ws2-010.b", "name=my_study"])
    assert (cfg.output.run_name, cfg.name) == ("ws2-010.b", "my_study")


@pytest.mark.parametrize(
    ("text", "key", "line", "first"),
    [
        ("train:\n  lr: 0.1\nmodel:\n  d_model: 64\ntrain:\n  epochs: 3\n", "train", 5, 1),
        ("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "lr", 4, 2),
        ("name: a\nname: b\n", "name", 2, 1),
    ],
    ids=["section twice", "key twice in a section", "name twice"],
)
def test_a_key_given_twice_in_a_config_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, key: str, line: int, first: int
) -> None:
    # PyYAML keeps the last value silently: `lr: 0.2` would win over `lr: 0.1` unnoticed
    from scalelab.cli import main

    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}: not valid YAML at line {line}, column {3 if key == 'lr' else 1}: duplicate key "
        f"'{key}' (first given at line {first}); each key may appear once"
    )
    assert main(["config", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"scalelab: error: {err.value}"] and not captured.out


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    # `<<: *anchor` then an explicit key is YAML's own override, not a duplicate
    path = tmp_path / "merge.yaml"
    path.write_text("train:\n  <<: {lr: 0.1, epochs: 2}\n  lr: 0.2\n")
    cfg = load_config(path)
    assert (cfg.train.lr, cfg.train.epochs) == (0.2, 2)
    import yaml

    from scalelab.config import _UniqueKeyLoader

    text = "a: &d {x: 1, y: 2}\nb:\n  <<: *d\n  x: 3\n"
    assert yaml.load(text, Loader=_UniqueKeyLoader) == {
        "a": {"x": 1, "y": 2},
        "b": {"x": 3, "y": 2},
    }


def test_numbers_read_as_decimals_in_files_and_overrides(tmp_path) -> None:
    # YAML 1.1 (PyYAML) read 017 as octal 15, in a config file and in an override
    assert load_config(None, ["train.epochs=017"]).train.epochs == 17
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 017\n  lr: 1e-3\n  warmup_ratio: .25\n  seed: +3\n")
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.warmup_ratio, cfg.train.seed) == (
        17,
        0.001,
        0.25,
        3,
    )


def test_a_config_path_that_is_a_folder_says_so(tmp_path, capsys, monkeypatch) -> None:
    from scalelab.cli import main

    (tmp_path / "mine.yaml").mkdir()  # was "config not found: ..." of a path that exists
    assert main(["config", "--config", str(tmp_path / "mine.yaml")]) == 2
    assert capsys.readouterr().err == (
        f"scalelab: error: {tmp_path / 'mine.yaml'}: is a folder, not a YAML config file\n"
    )
    # a folder named like a preset does not hide the preset
    (tmp_path / "ag_news_small").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["config", "--config", "ag_news_small"]) == 0
    assert capsys.readouterr().out.startswith("name: ag_news_small\n")
    for command in ("config", "train", "data"):  # `--config "$UNSET"`: was the defaults
        assert main([command, "--config", ""]) == 2
        assert capsys.readouterr().err == (
            "scalelab: error: --config is empty: give a preset name or a YAML path\n"
        )


def test_config_output_that_cannot_be_written_is_one_line(monkeypatch, capsys) -> None:
    # `scalelab config > my.yaml` on a full disk was an OSError traceback
    import errno

    from scalelab.cli import main

    class FullDisk:
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            pass

    monkeypatch.setattr("sys.stdout", FullDisk())
    assert main(["config", "--config", "ag_news_small"]) == 2
    assert capsys.readouterr().err == (
        "scalelab: error: cannot write the config to standard output (No space left on device)\n"
    )


def test_fused_grad_sync_without_embedding_rows_is_one_line() -> None:
    # with nccl, embedding_grad_sync=auto is dense: nothing outside DDP to fuse the buckets with
    from torch import nn

    from scalelab.distributed import DistEnv, LaunchError, wrap_ddp

    cfg = load_config(None, ["distributed.grad_sync=fused"])
    env = DistEnv(world_size=2, local_world_size=2, backend="nccl")
    with pytest.raises(LaunchError, match="grad_sync=fused needs the token-embedding rows"):
        wrap_ddp(nn.Linear(2, 2), cfg.distributed, env, rows=None)


def test_cuda_graphs_with_unbounded_batch_widths_get_a_note() -> None:
    import torch

    from scalelab.train import cuda_graph_note

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    graphs = ["train.compile=true", "train.compile_mode=reduce-overhead", "model.max_seq_len=128"]
    note = cuda_graph_note(load_config(None, graphs), cuda)
    assert note is not None and "up to 128 widths" in note and "bounds them to 8" in note
    for overrides, device in (
        (graphs, cpu),  # no CUDA graphs on a CPU
        ([*graphs, "data.pad_multiple=16"], cuda),
        ([*graphs, "data.pad_to_max_len=true"], cuda),
        (["train.compile=true"], cuda),  # the default mode records no graphs
        (graphs[1:], cuda),  # compile off
    ):
        assert cuda_graph_note(load_config(None, overrides), device) is None, overrides


def test_a_home_relative_checkpoint_is_found(tmp_path, monkeypatch) -> None:
    """~ in train.resume means the home folder, as in the data paths (was: not found)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ck.pt").write_bytes(b"x")
    assert load_config(None, ["train.resume=~/ck.pt"]).train.resume == "~/ck.pt"


def test_config_reference_gives_each_key_its_default_and_one_line_meaning() -> None:
    # a docstring wrapped over lines in config.py must not break the reference's layout
    from scalelab.config import all_keys, describe

    lines = describe().splitlines()
    keyed = {}
    for i, line in enumerate(lines):
        if line.startswith("[") and line.endswith("]"):
            continue
        if line.startswith("  ") and not line.startswith("   ") and " = " in line:
            meaning = lines[i + 1]
            assert meaning.startswith("      ") and meaning.strip(), (line, meaning)
            keyed[line.split(" = ")[0].strip()] = meaning
        else:
            assert line.startswith("      ") and lines[i - 1].startswith("  "), line
    assert sorted(keyed) == sorted(k for k in all_keys() if k != "name")
    assert "stop together" in keyed["train.log_every_steps"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a: " + "[" * 1000 + "]" * 1000, "not valid YAML for a config: nested too deeply"),
        (
            "train:\n  epochs: " + "9" * 5000,
            "not valid YAML for a config: a number it cannot read (Exceeds the",
        ),
    ],
)
def test_a_config_file_python_cannot_read_is_one_line(tmp_path: Path, text: str, says: str) -> None:
    # were a RecursionError of ~3,000 lines and a ValueError traceback
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {says}")) as info:
        load_config(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize("value", ["9" * 5000, "[" * 1000])
def test_an_override_python_cannot_read_is_one_short_line(value: str) -> None:
    with pytest.raises(
        ConfigError, match=r"^override train\.epochs=.{37}\.\.\.: not a usable value"
    ):
        load_config(None, [f"train.epochs={value}"])


def test_a_resume_given_a_run_folder_says_what_to_give_instead(tmp_path: Path) -> None:
    # said "checkpoint file not found" of a folder that exists
    with pytest.raises(
        ConfigError, match=re.escape(f"train.resume: {tmp_path} is a folder; give its")
    ):
        load_config(None, [f"train.resume={tmp_path}"])


def test_a_date_in_a_config_file_is_text(tmp_path: Path) -> None:
    # PyYAML read 2024-02-03 as a date and 2024-02-30 raised a ValueError: no key takes a date
    path = tmp_path / "c.yaml"
    path.write_text("output:\n  run_name: 2024-02-30\n")
    assert load_config(path).output.run_name == "2024-02-30"
    path.write_text("train:\n  epochs: 2024-02-03\n")
    with pytest.raises(ConfigError, match=r"train\.epochs must be an integer, got '2024-02-03'"):
        load_config(path)
