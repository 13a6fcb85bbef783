"""Streaming inference equals offline processing for any chunk size; non-causal models are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from students import (
    LENGTH,
    NON_CAUSAL,
    STUDENTS,
    noisy_wave,
    offline,
    random_student,
    sample_by_sample,
    stream_in_random_chunks,
)

from sekd.errors import SekdError
from sekd.models import build_model
from sekd.stream import StreamingEnhancer

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=sorted(STUDENTS))
def student(request) -> torch.nn.Module:
    return random_student(*STUDENTS[request.param])


@pytest.mark.parametrize("chunk", [1, 100, "hop", 4000])
def test_streaming_equals_offline(student, chunk) -> None:
    wave = noisy_wave()
    size = student.hop if chunk == "hop" else chunk
    streamed = StreamingEnhancer(student).run(wave, size)
    assert streamed.shape == wave.shape
    assert np.abs(streamed - offline(student, wave)).max() <= TOLERANCE


def test_irregular_chunks_and_reuse_after_flush(student) -> None:
    """Chunks of random sizes (empty ones too); after ``flush`` a new signal starts cleanly."""
    enhancer = StreamingEnhancer(student)
    rng = np.random.default_rng(2)
    for length in (LENGTH, 5000):
        wave = noisy_wave(length, seed=length)
        streamed = stream_in_random_chunks(enhancer, wave, rng)
        assert np.abs(streamed - offline(student, wave)).max() <= TOLERANCE


def test_latency_is_one_window(student) -> None:
    """Fed sample by sample, each output leaves at most ``n_fft - 1`` samples after its input."""
    enhancer = StreamingEnhancer(student)
    assert enhancer.latency_samples == student.n_fft
    assert enhancer.latency_ms == pytest.approx(1000 * student.n_fft / 16000)
    wave = noisy_wave(4000)
    assert sample_by_sample(enhancer, wave) == (enhancer.latency_samples - 1, wave.size)


def test_short_and_empty_signals() -> None:
    enhancer = StreamingEnhancer(random_student(*STUDENTS["n512-hop128"]))
    assert enhancer.flush().size == 0
    enhancer.process(np.zeros(256, dtype=np.float32))
    with pytest.raises(SekdError, match="too short"):
        enhancer.flush()
    with pytest.raises(SekdError, match="1-D"):
        enhancer.process(np.zeros((2, 100), dtype=np.float32))


@pytest.mark.parametrize(("name", "conf"), NON_CAUSAL)
def test_non_causal_model_is_refused(name, conf) -> None:
    with pytest.raises(SekdError, match="streaming needs a causal model"):
        StreamingEnhancer(build_model(name, conf))
