"""Placement (device, dtype, threads) is resolved once, by explicit value, then $GRIT_*, then the hardware; bad values
are one-line errors naming the value and what is available. The auto choice is tested with faked CPU flags, so
these tests give the same answers on AVX2, AVX512-BF16 / AMX and GPU hosts."""

import pytest
import torch

from grit import GritModel, hardware
from grit.cli import main as cli_main

CPU = torch.device("cpu")
AVX2, AMX = frozenset({"avx2"}), frozenset({"avx2", "amx_bf16"})


@pytest.fixture(autouse=True)
def _keep_threads():
    """Tests here set torch's thread count through a placement; the next test gets the count back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_suite_runs_pinned_to_cpu_float32():
    assert hardware.resolve_placement().device == CPU and hardware.resolve_placement().dtype is torch.float32


@pytest.mark.parametrize(("flags", "expected"), [(AVX2, torch.float32), (AMX, torch.bfloat16),
                                                 (frozenset({"avx512_bf16"}), torch.bfloat16)])  # fmt: skip
def test_auto_dtype_is_the_fastest_native_one_of_the_cpu(auto_placement, monkeypatch, flags, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    assert hardware.resolve_dtype("auto", CPU) is expected
    assert hardware.resolve_placement("cpu", "auto").dtype is expected


def test_auto_device_is_a_gpu_only_where_there_is_one(auto_placement, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.resolve_device("auto") == CPU


def test_explicit_values_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("GRIT_DTYPE", "bfloat16")
    assert hardware.resolve_dtype("float32", CPU) is torch.float32
    assert hardware.resolve_dtype("auto", CPU) is torch.bfloat16
    assert hardware.resolve_dtype(None, CPU) is torch.bfloat16
    assert hardware.resolve_dtype(torch.float16, CPU) is torch.float16


def test_environment_fills_in_auto(auto_placement, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AMX)
    monkeypatch.setenv("GRIT_DTYPE", "float32")
    monkeypatch.setenv("GRIT_DEVICE", "cpu")
    monkeypatch.setenv("GRIT_THREADS", "1")
    placement = hardware.resolve_placement()
    assert (placement.device, placement.dtype, placement.threads) == (CPU, torch.float32, 1)


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("GRIT_DTYPE", "float8", r"GRIT_DTYPE='float8': expected auto or one of float32, bfloat16, float16"),
        ("GRIT_DEVICE", "gpu", r"GRIT_DEVICE='gpu' is not a device; expected auto, cpu, cuda or cuda:N \(here: cpu"),
        ("GRIT_DEVICE", "mps", r"GRIT_DEVICE='mps': grit runs on cpu or cuda; available here: cpu"),
        ("GRIT_THREADS", "two", r"GRIT_THREADS='two' is not a whole number of threads"),
    ],
)
def test_a_bad_environment_value_is_named(monkeypatch, env, value, message):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=message):
        hardware.resolve_placement()


def test_bad_explicit_values_are_named():
    with pytest.raises(ValueError, match=r"device 'meta': grit runs on cpu or cuda"):
        hardware.resolve_device(torch.device("meta"))
    with pytest.raises(ValueError, match=r"unknown dtype 'fp8': expected auto or one of float32, bfloat16"):
        hardware.resolve_dtype("fp8", CPU)
    with pytest.raises(ValueError, match=r"dtype torch.int8 is not one grit runs in"):
        hardware.resolve_dtype(torch.int8, CPU)
    with pytest.raises(ValueError, match=r"threads must be >= 1"):
        hardware.resolve_threads(-2)


def test_cuda_without_a_gpu_names_what_is_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"'cuda' asked for, but this machine has no CUDA GPU .*available: cpu"):
        hardware.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"'cuda:1' asked for, but this machine has 1 CUDA GPU\(s\); available: cpu"):
        hardware.resolve_device("cuda:1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cuda"], "grit: error: device 'cuda' asked for, but this machine has no CUDA GPU"),
        (["--dtype", "float8"], "grit: error: unknown dtype 'float8': expected auto or one of float32, bfloat16"),
    ],
)
def test_the_cli_refuses_a_placement_in_one_line(tiny_model_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert cli_main(["info", "--model", str(tiny_model_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_a_loaded_model_records_its_resolved_placement(tiny_model_path):
    model = GritModel.load(tiny_model_path, threads=1)
    recorded = model.placement.as_dict()
    assert (recorded["device"], recorded["dtype"], recorded["threads"]) == ("cpu", "float32", 1)
    assert recorded["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert torch.get_num_threads() == 1
    assert model.dtype is torch.float32 and model.device == CPU


def test_grit_info_shows_the_resolved_placement(tiny_model_path, capsys):
    assert cli_main(["info", "--model", str(tiny_model_path), "--threads", "1"]) == 0
    facts = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert facts["device"] == "cpu" and facts["dtype"] == "float32" and facts["threads"] == "1"
    assert facts["identity"].startswith(tiny_model_path.name + "-")


def test_decoding_steps_take_fewer_threads_and_the_count_comes_back():
    import torch

    from grit.hardware import decode_threads, torch_threads

    assert [decode_threads(n) for n in (1, 2, 4, 8, 16)] == [1, 1, 1, 4, 8]
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
