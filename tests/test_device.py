"""`device=` of llmos.load (backends/device.py): the accepted forms, the refusals that say why,
and the onnxruntime execution providers each device asks for. Runs without a GPU: the ONNX
provider choice is checked against a stubbed list of available providers."""

from __future__ import annotations

import warnings

import pytest

from llmos import _core
from llmos.backends.device import Device, parse_device
from llmos.errors import DeviceUnavailableError, InvalidInputError, NotAvailableError


@pytest.mark.parametrize("text,want", [
    ("auto", Device("auto")), ("cpu", Device("cpu")), ("cuda", Device("cuda", 0)), ("cuda:0", Device("cuda", 0)),
    ("cuda:3", Device("cuda", 3)), (None, Device("auto")),
])
def test_accepted_devices(text, want):
    assert parse_device(text) == want


@pytest.mark.parametrize("bad", ["gpu", "cpu:0", "auto:1", "cuda:", "cuda:-1", "cuda:x", "CUDA", " cuda", "",
                                 "cuda:99999", 0, 1.5, True, ["cuda"]])
def test_refused_devices_name_the_field_and_the_forms(bad):
    with pytest.raises(InvalidInputError) as e:
        parse_device(bad)
    assert e.value.field == "device"
    assert '"cuda:N"' in str(e.value)


def test_checkpoints_run_on_the_cpu_for_cpu_and_for_auto_without_a_gpu(checkpoint, llmos):
    model = llmos.load(str(checkpoint("llama")), threads=1, device="cpu")
    assert model.device == "cpu" and model.backend.device == "cpu"
    auto = llmos.load(str(checkpoint("llama")), threads=1, device="auto")
    # "auto" is the GPU exactly when the core can use one (tests/test_cuda_model.py checks it there)
    assert auto.device == ("cpu" if _core.cuda_unavailable_reason(0) else "cuda:0")


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_checkpoints_refuse_an_unusable_gpu_saying_why(checkpoint, llmos, device):
    reason = _core.cuda_unavailable_reason(int(device.partition(":")[2] or 0))
    if not reason:
        pytest.skip(f"{device} is usable here: tests/test_cuda_model.py runs checkpoints on it")
    with pytest.raises(DeviceUnavailableError) as e:
        llmos.load(str(checkpoint("llama")), threads=1, device=device)
    assert e.value.field == "device" and isinstance(e.value, NotAvailableError)
    assert reason in str(e.value)


def test_bad_device_is_refused_before_loading(llmos, tmp_path):
    with pytest.raises(InvalidInputError, match="device"):
        llmos.load(str(tmp_path / "does-not-exist"), device="tpu")


# ---- ONNX: execution providers per device -------------------------------------------------

@pytest.fixture
def providers(monkeypatch):
    """Sets the providers onnxruntime reports as installed; returns the backend module."""
    import onnxruntime as ort

    from llmos.backends.onnx import backend

    def set_available(names):
        if names is None:
            def refuse():
                raise AssertionError("device='cpu' must not ask onnxruntime for its providers")
            monkeypatch.setattr(ort, "get_available_providers", refuse)
        else:
            monkeypatch.setattr(ort, "get_available_providers", lambda: list(names))
        return backend

    return set_available


GPU_ORT = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CPU_ORT = ["CPUExecutionProvider"]


def test_onnx_cpu_never_asks_for_cuda(providers):
    assert providers(None).providers_for(Device("cpu")) == ["CPUExecutionProvider"]


@pytest.mark.parametrize("index", [0, 2])
def test_onnx_cuda_n_uses_gpu_n(providers, index):
    got = providers(GPU_ORT).providers_for(Device("cuda", index))
    assert got == [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def test_onnx_cuda_without_the_cuda_provider_says_what_to_install(providers):
    with pytest.raises(DeviceUnavailableError) as e:
        providers(CPU_ORT).providers_for(Device("cuda", 0))
    assert e.value.field == "device"
    assert "llmos[gpu]" in str(e.value) and "onnxruntime-gpu" in str(e.value)


def test_onnx_auto_prefers_the_gpu_when_installed(providers):
    assert providers(GPU_ORT).providers_for(Device("auto")) == [("CUDAExecutionProvider", {"device_id": 0}),
                                                               "CPUExecutionProvider"]
    assert providers(CPU_ORT).providers_for(Device("auto")) == ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def onnx_export(checkpoint, tmp_path_factory, llmos):
    out = tmp_path_factory.mktemp("onnx_device") / "llama"
    llmos.export_onnx(str(checkpoint("llama")), str(out))
    return out


def test_onnx_model_on_the_cpu(onnx_export, llmos):
    model = llmos.load(str(onnx_export), threads=1, device="cpu")
    assert model.device == "cpu" and model.isa == "onnxruntime:cpu"
    model.generate([5, 6], max_new_tokens=2)  # runs there


def test_onnx_cuda_that_falls_back_to_the_cpu_is_refused(onnx_export, llmos, providers):
    """onnxruntime runs on the CPU when its CUDA provider cannot start (here: it has none, though
    the stub says it has); device="cuda" asked for the GPU, so that is an error, not a quiet CPU run."""
    providers(GPU_ORT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime's own warning about the missing provider
        with pytest.raises(DeviceUnavailableError, match="fell back to the CPU") as e:
            llmos.load(str(onnx_export), threads=1, device="cuda:1")
    assert e.value.field == "device"


def test_onnx_model_on_cuda_refused_without_the_provider(onnx_export, llmos):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here: the refusal without its CUDA provider is not reachable")
    with pytest.raises(DeviceUnavailableError, match=r"llmos\[gpu\]"):
        llmos.load(str(onnx_export), threads=1, device="cuda")
