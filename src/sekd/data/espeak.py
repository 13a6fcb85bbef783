"""Offline speech synthesis with eSpeak NG, driven through ctypes.

The ``espeakng-loader`` wheel ships ``libespeak-ng`` and its data folder, so no system package or
subprocess is needed. Two properties of the library shape this module:

* It is process-global C state (one voice, one callback), so calls are serialised with a lock and
  each process sets itself up lazily on first use: safe in process-pool workers.
* It is *not* repeatable across calls in one process: the wave generator keeps static state
  between utterances (pitch-flutter index, gain control, echo buffer) that no API call resets, and
  its breath noise draws from libc ``rand()``. So every call loads a private copy of the library
  afresh, seeds both random generators, synthesises, and unloads it again (``dlclose``), which
  restores the library's static data. Loading takes a few milliseconds; the gain is that the same
  text, voice and settings always give bit-identical samples, whatever ran before, in any process.
"""

from __future__ import annotations

import _ctypes
import ctypes
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from multiprocessing.util import Finalize
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE

log = logging.getLogger(__name__)

ESPEAK_RATE = 22050  # the library's native output rate
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_RAND_SEED = 1

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass(frozen=True)
class Voice:
    """An eSpeak voice with prosody settings: together they make one synthetic speaker."""

    name: str  # eSpeak voice and variant, e.g. "en-us+f2"
    pitch: int = 50  # base pitch, 0-99 (eSpeak's scale, 50 = the voice's default)
    rate: int = 175  # speaking rate in words per minute, 80-450
    pitch_range: int = 50  # intonation range, 0 (monotone) - 99


def _loader_paths() -> tuple[Path, Path]:
    try:
        import espeakng_loader
    except ImportError:
        raise SekdError(
            "espeakng-loader: package not installed (needed for the demo corpus)"
        ) from None
    return Path(espeakng_loader.get_library_path()), Path(espeakng_loader.get_data_path())


class _Engine:
    """One process's handle on a private copy of libespeak-ng (see the module docstring)."""

    def __init__(self) -> None:
        source, self.data_path = _loader_paths()
        self.folder = Path(tempfile.mkdtemp(prefix="sekd-espeak-"))
        # removed at exit, also in pool workers (forked ones skip plain atexit handlers)
        Finalize(
            self, shutil.rmtree, args=(self.folder,), kwargs={"ignore_errors": True}, exitpriority=0
        )
        self.source = source
        self.copies = 0
        self.library = self._new_copy()
        self.libc = ctypes.CDLL(None)
        self.chunks: list[np.ndarray] = []
        self.callback = _SynthCallback(self._collect)  # kept alive as long as the engine

    def _new_copy(self) -> Path:
        """A copy nobody else has loaded, so ``dlclose`` really unloads it."""
        self.copies += 1
        target = self.folder / f"libespeak-ng-sekd{self.copies}.so"
        shutil.copyfile(self.source, target)
        return target

    def _collect(self, wav, n_samples: int, _events) -> int:
        if n_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0  # 0: carry on synthesising

    def _open(self) -> ctypes.CDLL:
        try:
            lib = ctypes.CDLL(str(self.library), mode=os.RTLD_LOCAL | os.RTLD_NOW)
        except OSError as err:
            raise SekdError(f"{self.source}: cannot load libespeak-ng: {err}") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        return lib

    def _close(self, lib: ctypes.CDLL) -> None:
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)
        try:  # still mapped? then its static state would leak into the next call
            still = ctypes.CDLL(str(self.library), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            return
        _ctypes.dlclose(still._handle)
        log.warning("libespeak-ng was not unloaded; using a fresh copy for the next utterance")
        self.library = self._new_copy()

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        """int16 samples at ``ESPEAK_RATE`` for ``text`` spoken by ``voice``."""
        lib = self._open()
        try:
            rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), _INITIALIZE_DONT_EXIT
            )
            if rate != ESPEAK_RATE:
                raise SekdError(f"{self.data_path}: eSpeak NG failed to initialise (got {rate})")
            lib.espeak_SetSynthCallback(self.callback)
            if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise SekdError(f"eSpeak voice '{voice.name}' not found in {self.data_path}")
            for param, value in (
                (_PARAM_RATE, voice.rate),
                (_PARAM_PITCH, voice.pitch),
                (_PARAM_RANGE, voice.pitch_range),
            ):
                lib.espeak_SetParameter(param, int(value), 0)
            lib.espeak_ng_SetRandSeed(_RAND_SEED)
            self.libc.srand(_RAND_SEED)
            data = text.encode("utf-8") + b"\0"
            self.chunks = []
            status = lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            lib.espeak_Synchronize()
            if status != 0:
                raise SekdError(f"eSpeak failed (status {status}) on text {text[:40]!r}")
            chunks, self.chunks = self.chunks, []
        finally:
            self._close(lib)
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


_engine: _Engine | None = None
_engine_pid: int | None = None
_lock = threading.Lock()


def _get_engine() -> _Engine:
    """The engine of *this* process: a forked child builds its own, not sharing the parent's."""
    global _engine, _engine_pid
    if _engine is None or _engine_pid != os.getpid():
        _engine, _engine_pid = _Engine(), os.getpid()
    return _engine


def synthesize(text: str, voice: Voice, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speak ``text`` with ``voice``; float32 mono in [-1, 1) at ``sample_rate``, bit-repeatable."""
    if not text.strip():
        raise SekdError("eSpeak: empty text")
    with _lock:
        samples = _get_engine().synthesize(text, voice)
    audio = samples.astype(np.float32) / 32768.0
    if sample_rate != ESPEAK_RATE:
        g = np.gcd(sample_rate, ESPEAK_RATE)
        audio = resample_poly(audio, sample_rate // g, ESPEAK_RATE // g).astype(np.float32)
    return audio
