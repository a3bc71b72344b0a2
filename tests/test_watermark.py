"""Watermark: coding, signing, visible overlay, invisible embed/detect robustness, mp4 + CLI."""
import dataclasses
import datetime
import json
import os
import stat

import cv2
import numpy as np
import pytest

from ggtalker_jax.watermark import (Ed25519Signer, HmacSigner, Payload, SignedRecord, VisibleMarkConfig,
                                    coding, detect_frames, detect_video, draw_visible_mark,
                                    embed_frames, invisible, load_key, mark_video)
from ggtalker_jax.watermark import _video_io
from ggtalker_jax import cli as ggtalker_cli
from ggtalker_jax.watermark.visible import mark_box

KEY = HmacSigner(bytes(range(32)))
OTHER_KEY = HmacSigner(bytes(range(1, 33)))
WHEN = datetime.datetime(2025, 10, 1, 12, 0, tzinfo=datetime.timezone.utc)


def textured_frames(t=10, h=192, w=192, seed=0):
    """[t, h, w, 3] uint8: blurred colour noise plus fine grain, slowly panning (a moving scene)."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 4)
    base = (base - base.mean()) * 3 + 128 + rng.normal(0, 6, (h, w, 3))
    frames = [cv2.warpAffine(base, np.float32([[1, 0, 0.7 * i], [0, 1, 0.3 * i]]), (w, h),
                             borderMode=cv2.BORDER_REFLECT) for i in range(t)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def payload(visible=True, chain=()):
    return Payload.create("subject-7", None, visible_mark=visible, chain=chain, render_time=WHEN)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def marked():
    frames = textured_frames()
    return frames, embed_frames(frames, payload(visible=False), KEY, visible=False)


# --- coding and transforms -------------------------------------------------------------------------
def test_crc16_check_value_and_codeword_roundtrip():
    assert coding.crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE catalogue check value
    msg = bytes([0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3, 4])
    word = coding.encode_codeword(msg)
    assert word.shape == (coding.codeword_length(8),) == (16 + 2 * (64 + 16 + 6),)
    assert coding.decode_codeword(word, 8) == msg


def test_conv_code_known_output_and_corrects_errors():
    # K=7 (171, 133) code, newest input at the register LSB: a single 1 followed by the tail emits
    # the generator taps LSB first (the mirror image of the textbook code, same free distance 10)
    impulse = coding.conv_encode(np.array([1], np.uint8))
    g1 = [(0o171 >> i) & 1 for i in range(7)]
    g2 = [(0o133 >> i) & 1 for i in range(7)]
    np.testing.assert_array_equal(impulse, np.array([g1, g2]).T.reshape(-1))
    msg = bytes([0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3, 4])
    word = coding.encode_codeword(msg)
    bad = word.copy()
    bad[[20, 45, 70, 100, 130, 170]] ^= 1  # six scattered errors: corrected
    assert coding.decode_codeword(bad, 8) == msg
    soft = 2.0 * word - 1.0
    soft[16::6] *= -0.3  # every 6th value wrong but weak (17% hard errors): soft decoding fixes them
    assert coding.decode_codeword(soft, 8) == msg
    rng = np.random.default_rng(0)
    accepted = sum(coding.decode_codeword(rng.normal(size=word.size), 8) is not None for _ in range(200))
    assert accepted == 0  # noise is rejected by the CRC


def test_block_dct_is_orthonormal_and_matches_closed_form():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(32, 32)).astype(np.float32)
    coeffs = invisible.block_dct(img, 8)
    np.testing.assert_allclose(invisible.block_idct(coeffs), img, atol=1e-4)
    np.testing.assert_allclose(np.sum(coeffs ** 2), np.sum(img ** 2), rtol=1e-4)  # Parseval
    const = invisible.block_dct(np.full((8, 8), 3.0, np.float32), 8)[0, 0]
    assert const[0, 0] == pytest.approx(24.0, abs=1e-4)  # DC of orthonormal 8x8 DCT = 8 * mean
    assert np.abs(const).sum() - 24.0 == pytest.approx(0.0, abs=1e-3)
    cosine = np.cos(np.pi * (2 * np.arange(8) + 1) * 2 / 16)[None, :].repeat(8, 0).astype(np.float32)
    c = invisible.block_dct(cosine, 8)[0, 0]
    assert c[0, 2] == pytest.approx(np.sqrt(8 / 2) * np.sqrt(8), rel=1e-4) and abs(c).sum() == pytest.approx(c[0, 2], rel=1e-4)


# --- payload and keys --------------------------------------------------------------------------------
def test_payload_json_roundtrip_digest_and_validation():
    p = payload(chain=("a" * 64,))
    assert Payload.from_dict(json.loads(p.canonical_json())) == p
    assert p.record_id() == bytes.fromhex(p.digest())[:4]
    child = p.derived()
    assert child.chain == ("a" * 64, p.digest())
    with pytest.raises(ValueError, match="subject_hash"):
        Payload("xyz", "", "2025-01-01T00:00:00+00:00")
    record = KEY.sign(p)
    assert SignedRecord.from_metadata(record.to_metadata()) == record
    assert SignedRecord.from_metadata("some other comment") is None
    with pytest.raises(ValueError, match="corrupt"):
        SignedRecord.from_metadata("ggtalker-wm:v1:!!!!")


def test_hmac_sign_verify_and_tamper():
    record = KEY.sign(payload())
    assert KEY.verify(record) and not OTHER_KEY.verify(record)
    tampered = dataclasses.replace(record, payload=dataclasses.replace(record.payload, visible_mark=False))
    assert not KEY.verify(tampered)


def test_ed25519_sign_verify_with_public_key_only():
    signer = Ed25519Signer.from_private_bytes(bytes(range(32)))
    record = signer.sign(payload())
    verifier = Ed25519Signer.from_public_hex(record.public_key)
    assert verifier.verify(record)
    assert verifier.verify_frame_tag(record.payload.record_id(), signer.frame_tag(record), record)
    forged = dataclasses.replace(record, signature=("00" * 64))
    assert not verifier.verify(forged)
    with pytest.raises(ValueError, match="verify-only"):
        verifier.sign(payload())


def test_load_key_env_then_file_created_0600(tmp_path):
    env_key = load_key(environ={"GGTALKER_WATERMARK_KEY": "00" * 16})
    assert env_key.secret == bytes(16)
    path = tmp_path / "cfg" / "watermark.key"
    first = load_key(key_file=path, environ={})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(first.secret) == 32
    assert load_key(key_file=path, environ={}).secret == first.secret  # reused, not regenerated
    ed_path = tmp_path / "ed.key"
    ed = load_key("ed25519", key_file=ed_path, environ={})
    assert stat.S_IMODE(os.stat(ed_path).st_mode) == 0o600 and len(ed.public_key) == 32
    with pytest.raises(ValueError, match="key_type"):
        load_key("rsa")


# --- visible overlay ---------------------------------------------------------------------------------
def test_visible_mark_only_inside_its_box_in_requested_corner():
    frames = np.full((2, 240, 320, 3), 200, np.uint8)
    for position in ("top-left", "bottom-right"):
        cfg = VisibleMarkConfig(position=position, opacity=0.5)
        out = draw_visible_mark(frames, cfg)
        x0, y0, x1, y1, _, _ = mark_box(240, 320, cfg)
        changed = np.any(out != frames, axis=(0, 3))
        ys, xs = np.nonzero(changed)
        assert ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1
        assert (x0 < 160) == (position == "top-left") and (y0 < 120) == (position == "top-left")
        box = out[0, y0:y1, x0:x1, 0]
        assert np.sum(box == 100) > 0.3 * box.size  # 200 * (1 - 0.5): the semi-transparent box
        assert box.max() > 240  # white text
    with pytest.raises(ValueError, match="position"):
        VisibleMarkConfig(position="middle")


def test_visible_false_must_be_recorded_in_payload():
    frames = textured_frames(t=2, h=64, w=64)
    with pytest.raises(ValueError, match="visible_mark"):
        embed_frames(frames, payload(visible=True), KEY, visible=False)


# --- invisible mark on frames ------------------------------------------------------------------------
def test_roundtrip_valid_and_psnr_at_least_40db(marked):
    frames, out = marked
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert psnr(out, frames) >= 40.0
    result = detect_frames(out, KEY, KEY.sign(payload(visible=False)))
    assert result.present and result.valid and result.payload == payload(visible=False)
    assert result.bit_error_rate < 0.05
    frames_only = detect_frames(out, KEY)  # no metadata: HMAC frame tag still verifies
    assert frames_only.valid and frames_only.payload is None
    assert frames_only.record_id == payload(visible=False).record_id().hex()


def test_wrong_key_is_present_but_invalid(marked):
    _, out = marked
    result = detect_frames(out, OTHER_KEY)
    assert result.present and not result.valid and "tag" in result.reason


def test_clean_frames_not_present(marked):
    frames, _ = marked
    assert not detect_frames(frames, KEY).present
    assert not detect_frames(textured_frames(t=6, seed=5), KEY).present


def test_survives_half_rescale_and_ten_percent_crop(marked):
    _, out = marked
    half = np.stack([cv2.resize(f, (96, 96), interpolation=cv2.INTER_AREA) for f in out])
    assert detect_frames(half, KEY).valid
    crop = out[:, 12:12 + 173, 7:7 + 173]  # 10% off each axis, off-centre
    result = detect_frames(crop, KEY)
    assert result.valid


def test_visible_plus_invisible_detects(marked):
    frames, _ = marked
    out = embed_frames(frames, payload(visible=True), KEY, visible=True)
    assert detect_frames(out, KEY).valid


def test_bad_frames_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        detect_frames(np.zeros((64, 64, 3), np.uint8), KEY)
    with pytest.raises(ValueError, match="uint8"):
        detect_frames(np.zeros((2, 64, 64, 3), np.float32), KEY)


def test_real_frames_roundtrip_and_clean(shared_data):
    frames, _ = _video_io.read_video(shared_data / "retalking_face3_5s.mp4", max_frames=8)
    frames = np.stack([cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in frames])
    out = embed_frames(frames, payload(visible=False), KEY, visible=False)
    assert psnr(out, frames) >= 40.0
    assert detect_frames(out, KEY).valid
    assert not detect_frames(frames, KEY).present


# --- mp4 + CLI ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def marked_mp4(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wm")
    src = tmp / "src.mp4"
    _video_io.write_video(src, textured_frames(t=12, h=256, w=256), fps=25, crf=18)
    out = tmp / "marked.mp4"
    record = mark_video(src, out, payload(), KEY)
    return src, out, record


def test_mark_video_roundtrip_then_half_rescale(marked_mp4):
    _, out, record = marked_mp4
    frames, info = _video_io.read_video(out)  # mark_video wrote H.264 CRF 18 + metadata
    assert SignedRecord.from_metadata(info.comment) == record
    assert detect_video(out, KEY).payload == record.payload
    half = np.stack([cv2.resize(f, (128, 128), interpolation=cv2.INTER_AREA) for f in frames])
    result = detect_frames(half, KEY)  # no metadata: frames only
    assert result.present and result.valid and result.record_id == record.payload.record_id().hex()


def test_real_video_survives_crf28_then_half_rescale(shared_data, tmp_path):
    frames, _ = _video_io.read_video(shared_data / "german_anchor_20s.mp4", max_frames=12)
    frames = np.stack([cv2.resize(f, (384, 384), interpolation=cv2.INTER_AREA) for f in frames])
    out = embed_frames(frames, payload(), KEY)
    crf28 = tmp_path / "crf28.mp4"
    _video_io.write_video(crf28, out, fps=25, crf=28)
    result = detect_video(crf28, KEY)
    assert result.valid and result.bit_error_rate < 0.2
    back, _ = _video_io.read_video(crf28)
    half = np.stack([cv2.resize(f, (192, 192), interpolation=cv2.INTER_AREA) for f in back])
    assert detect_frames(half, KEY).valid


def test_cli_exit_codes_and_chain(marked_mp4, tmp_path, capsys, monkeypatch):
    src, out, record = marked_mp4
    monkeypatch.setenv("GGTALKER_WATERMARK_KEY", KEY.secret.hex())
    assert ggtalker_cli.main(["watermark", "detect", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["valid"] and printed["payload"]["subject_hash"] == record.payload.subject_hash
    assert ggtalker_cli.main(["watermark", "detect", str(src)]) == 3
    assert "no ggtalker watermark" in capsys.readouterr().err
    # re-mark the marked video (an edit + re-render): the new record chains the old digest
    remarked = tmp_path / "remarked.mp4"
    assert ggtalker_cli.main(["watermark", "embed", str(out), str(remarked), "--subject-id", "editor", "--no-visible-mark"]) == 0
    capsys.readouterr()
    assert ggtalker_cli.main(["watermark", "detect", str(remarked)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["payload"]["chain"] == [record.digest()] and printed["payload"]["visible_mark"] is False
    monkeypatch.setenv("GGTALKER_WATERMARK_KEY", OTHER_KEY.secret.hex())
    assert ggtalker_cli.main(["watermark", "detect", str(remarked)]) == 4
    assert ggtalker_cli.main(["watermark", "detect", str(tmp_path / "missing.mp4")]) == 1


def test_ed25519_frames_need_the_metadata_record(marked):
    frames, _ = marked
    signer = Ed25519Signer.from_private_bytes(bytes(range(32)))
    record = signer.sign(payload(visible=False))
    out = embed_frames(frames[:6], record, signer, visible=False)
    verifier = Ed25519Signer.from_public_hex(record.public_key)
    assert detect_frames(out, verifier, record).valid
    alone = detect_frames(out, verifier)  # a 32-bit tag cannot carry a public-key signature
    assert alone.present and not alone.valid and "metadata" in alone.reason
    other = Ed25519Signer.from_private_bytes(bytes(range(1, 33)))
    assert not detect_frames(out, other, record).valid
