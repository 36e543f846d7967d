import pytest
import torch

from labkit.device import DeviceList, describe, devices, pick_device, sync

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend torch sees ``count`` CUDA devices (only device bookkeeping, no kernels)."""

    def install(count):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return install


@pytest.mark.parametrize("spec", ["cpu", "CPU", " cpu ", "cpu:0", torch.device("cpu")])
def test_pick_device_cpu_specs(spec):
    assert pick_device(spec) == torch.device("cpu")


def test_pick_device_auto_follows_cuda_availability():
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert pick_device("auto") == expected
    assert pick_device() == expected


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "auto:1", "cpu:1", "cuda:-1", "", 3, None])
def test_pick_device_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        pick_device(spec)


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_pick_device_cuda_without_cuda_is_an_error(spec):
    with pytest.raises(RuntimeError, match="CUDA"):
        pick_device(spec)


def test_pick_device_with_fake_gpus(fake_gpus):
    fake_gpus(2)
    assert pick_device("auto") == torch.device("cuda", 0)
    assert pick_device("cuda") == torch.device("cuda", 0)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert pick_device("cpu") == torch.device("cpu")


def test_pick_device_index_beyond_fake_gpus(fake_gpus):
    fake_gpus(2)
    with pytest.raises(ValueError, match="2 CUDA device"):
        pick_device("cuda:2")


@pytest.mark.parametrize("n", [1, 3])
def test_devices_cpu_stand_ins(n, fake_gpus):
    fake_gpus(0)
    ds = devices(n)
    assert isinstance(ds, DeviceList)
    assert list(ds) == [torch.device("cpu")] * n
    assert ds.stand_in
    assert "stand-in" in ds.label
    assert ds.distinct == (n == 1)


def test_devices_kind_cpu_gives_stand_ins_even_with_gpus(fake_gpus):
    fake_gpus(2)
    ds = devices(2, kind="cpu")
    assert list(ds) == [torch.device("cpu")] * 2
    assert ds.stand_in and "stand-in" in ds.label


def test_devices_reuses_fewer_gpus_in_turn(fake_gpus):
    fake_gpus(2)
    ds = devices(4)
    assert list(ds) == [torch.device("cuda", i) for i in (0, 1, 0, 1)]
    assert ds.distinct is False
    assert not ds.stand_in
    assert "reused" in ds.label


@pytest.mark.parametrize("n", [1, 2])
def test_devices_distinct_when_enough_gpus(n, fake_gpus):
    fake_gpus(2)
    ds = devices(n)
    assert list(ds) == [torch.device("cuda", i) for i in range(n)]
    assert ds.distinct is True
    assert "distinct" in ds.label


def test_devices_kind_cuda_without_gpus_is_an_error(fake_gpus):
    fake_gpus(0)
    with pytest.raises(RuntimeError, match="CUDA"):
        devices(2, kind="cuda")


@pytest.mark.parametrize("n", [0, -1])
def test_devices_needs_at_least_one(n):
    with pytest.raises(ValueError):
        devices(n)


def test_devices_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        devices(2, kind="tpu")


def test_device_list_repr_includes_label():
    ds = devices(2, kind="cpu")
    assert ds.label in repr(ds)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_sync_on_cpu_is_a_no_op(device):
    assert sync(device) is None


def test_describe_cpu_mentions_threads():
    n = torch.get_num_threads()
    assert describe("cpu") == f"CPU ({n} thread{'s' if n != 1 else ''})"


def test_device_of_a_module_a_runner_and_a_plain_function():
    from labkit.device import device_of
    from labkit.graphs import GraphRunner
    from labkit.models import build_model

    model = build_model("mlp", "small").to("meta")
    assert device_of(model) == torch.device("meta")
    assert device_of(GraphRunner(model)) == torch.device("meta")  # a runner has no parameters, but a device

    class Remote:
        device = "cuda:1"

    assert device_of(Remote()) == torch.device("cuda:1")
    assert device_of(lambda x: x) == torch.device("cpu")
