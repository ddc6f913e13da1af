"""A fake GPT-SoVITS ``api_v2.py``: ``POST /tts`` with its parameter checks, streamed or whole wav/raw."""

from __future__ import annotations

from tests.fakes.base import FakeService, tone_pcm, wav_header
from tests.fakes.http import Exchange


class FakeGptSovits(FakeService):
    """api_v2's ``/tts``: the checks of its ``check_params``, a size-0 WAV header then raw pieces when streaming."""

    languages = ("auto", "en", "zh", "ja", "ko", "yue", "all_zh", "all_ja")

    def __init__(self, *, rate_hz: int = 32000) -> None:
        super().__init__()
        self.rate_hz = rate_hz

    async def http_error(self, ex: Exchange, status: int) -> None:
        await ex.respond_json(status, {"message": "tts failed", "Exception": f"fake failure {status}"})

    async def route(self, ex: Exchange, behavior: str) -> None:
        if ex.request.path != "/tts" or ex.request.method != "POST":
            await ex.respond_json(404, {"detail": "Not Found"})
            return
        req = ex.request.json()
        problem = None
        if not req.get("ref_audio_path"):
            problem = "ref_audio_path is required"
        elif not req.get("text"):
            problem = "text is required"
        elif str(req.get("text_lang", "")).lower() not in self.languages:
            problem = f"text_lang: {req.get('text_lang')} is not supported in version v2"
        elif str(req.get("prompt_lang", "")).lower() not in self.languages:
            problem = f"prompt_lang: {req.get('prompt_lang')} is not supported in version v2"
        elif req.get("media_type", "wav") not in ("wav", "raw", "ogg", "aac"):
            problem = f"media_type: {req.get('media_type')} is not supported"
        if problem:
            await ex.respond_json(400, {"message": problem})
            return
        media = req.get("media_type", "wav")
        streaming = req.get("streaming_mode", False) not in (False, 0)
        pcm = tone_pcm(len(req["text"].split()), self.rate_hz)
        if not streaming:
            body = pcm if media == "raw" else wav_header(self.rate_hz, len(pcm)) + pcm
            await ex.respond(200, body, f"audio/{media}")
            return
        step = int(self.rate_hz * 0.1) * 2  # one fragment per word
        pieces = [pcm[i : i + step] for i in range(0, len(pcm), step)]
        if media == "wav":
            pieces.insert(0, wav_header(self.rate_hz, 0))  # what wave_header_chunk() writes
        await ex.send_head(200, {"Content-Type": f"audio/{media}"})
        await self.stream_pieces(ex, pieces, behavior, bad_piece=b"", error_piece=b"")
