"""FaceLandmarker on real frames: pixel coordinates, small faces in a big frame, no-face frames."""
import numpy as np
import pytest

from ggtalker_jax.data import landmarks as L
from ggtalker_jax import media


@pytest.fixture
def anchor_frames(shared_data):
    return list(media.read_video(shared_data / "german_anchor_20s.mp4", max_seconds=0.12))


def test_landmarks_pixel_coords_and_no_face(anchor_frames):
    pts, found = L.detect_landmarks(anchor_frames[:2] + [np.full((256, 256, 3), 120, np.uint8)])
    assert pts.shape == (3, 478, 3) and found.tolist() == [True, True, False]
    assert np.isnan(pts[2]).all()
    p = pts[0]
    # eyes above nose above chin, iris centres between the eye corners, inside the 512x512 frame
    assert p[L.RIGHT_EYE_OUTER, 1] < p[L.NOSE_TIP, 1] < p[L.CHIN, 1]
    assert p[L.RIGHT_EYE_OUTER, 0] < p[L.RIGHT_IRIS_CENTER, 0] < p[L.LEFT_IRIS_CENTER, 0] < p[L.LEFT_EYE_OUTER, 0]
    assert p[:, :2].min() > 0 and p[:, :2].max() < 512


def test_small_face_in_tall_frame_found_by_tiles_then_tracked(anchor_frames):
    import cv2

    ref, _ = L.detect_landmarks(anchor_frames[:1])
    s, x0, y0 = 128, 700, 1200  # 512 crop shrunk 4x, pasted into a 1080x1920 canvas
    canvases = []
    for f in anchor_frames[:2]:
        c = np.full((1920, 1080, 3), 90, np.uint8)
        c[y0:y0 + s, x0:x0 + s] = cv2.resize(f, (s, s), interpolation=cv2.INTER_AREA)
        canvases.append(c)
    with L.FaceLandmarker(L.LandmarkerConfig(tile_fallback=False)) as lm:
        assert not lm(canvases[0])[1]  # the plain full-frame detector misses it
    pts, found = L.detect_landmarks(canvases)
    assert found.all()
    expected = ref[0, :, :2] / 4 + np.array([x0, y0])
    assert np.median(np.linalg.norm(pts[0, :, :2] - expected, axis=1)) < 3.0  # pixels in the big frame


def test_bad_frame_type():
    with L.FaceLandmarker() as lm, pytest.raises(ValueError, match="uint8 RGB"):
        lm(np.zeros((8, 8, 3), np.float32))
