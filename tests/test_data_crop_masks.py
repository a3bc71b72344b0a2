"""Crop windows, smoothing, landmark transform, masks (synthetic inputs, closed-form expectations)."""
import numpy as np
import pytest

from ggtalker_jax.data import crop, masks
from ggtalker_jax.data.landmarks import CHIN, FOREHEAD_TOP, NUM_LANDMARKS


def _face(cx, cy, half=50.0, seed=0):
    """Fake [478, 3] landmarks filling the box centre +- half, forehead top / chin on the vertical axis."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-half, half, size=(NUM_LANDMARKS, 3))
    pts[0, :2] = (-half, -half)
    pts[1, :2] = (half, half)
    pts[FOREHEAD_TOP, :2] = (0, -half)
    pts[CHIN, :2] = (0, half)
    return (pts + np.array([cx, cy, 0])).astype(np.float32)


def test_crop_boxes_centre_size_interpolation_and_smoothing():
    t = 40
    lms = np.stack([_face(300 + 2 * i, 400, seed=i) for i in range(t)])
    found = np.ones(t, bool)
    found[10:14] = False
    lms[10:14] = np.nan
    cfg = crop.CropConfig(crop_scale=2.0, up_shift=0.1, sigma_frames=2.0)
    boxes = crop.crop_boxes(lms, found, (1000, 1000), cfg)
    assert boxes.shape == (t, 3) and boxes.dtype == np.int64
    np.testing.assert_array_equal(boxes[:, 2], 200)  # 2 x face size 100
    cx = boxes[:, 0] + 100
    cy = boxes[:, 1] + 100
    # linear motion is preserved by interpolation + symmetric smoothing (away from the clip ends)
    np.testing.assert_allclose(cx[6:-6], 300 + 2 * np.arange(t)[6:-6], atol=1)
    np.testing.assert_allclose(cy, 400 - 0.1 * 200, atol=1)


def test_crop_boxes_stay_inside_and_pad_when_too_big():
    lms = _face(20, 20)[None]
    box = crop.crop_boxes(lms, np.array([True]), (480, 640), crop.CropConfig(up_shift=0))[0]
    assert tuple(box) == (0, 0, 200)
    frame = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
    out = crop.crop_and_resize(frame, (-10, -10, 80), 80)  # larger than the frame: edge padding
    assert out.shape == (80, 80, 3)
    np.testing.assert_array_equal(out[10:50, 10:70], frame)
    np.testing.assert_array_equal(out[0, 10:70], frame[0])
    with pytest.raises(ValueError, match="outside"):
        crop.crop_and_resize(frame, (100, 100, 10), 8)


def test_crop_and_resize_and_landmark_transform_agree():
    frame = np.zeros((300, 400, 3), np.uint8)
    frame[150, 250] = 255  # a single bright pixel
    box = np.array([[200, 100, 100]])
    out = crop.crop_and_resize(frame, box[0], 200, interpolation=0)  # nearest
    pt = crop.landmarks_to_crop(np.array([[[250.5, 150.5, 4.0]]]), box, 200)[0, 0]
    assert out[int(pt[1]), int(pt[0])].max() == 255
    np.testing.assert_allclose(pt, [101.0, 101.0, 8.0])


def test_gaussian_smooth_and_interpolate():
    x = np.linspace(0, 1, 30)[:, None]
    np.testing.assert_allclose(crop.gaussian_smooth(x, 2.0)[6:-6], x[6:-6], atol=1e-12)  # linear kept
    noisy = np.random.default_rng(0).normal(size=(200, 1))
    assert crop.gaussian_smooth(noisy, 3.0).std() < 0.5 * noisy.std()
    v = np.array([0.0, np.nan, np.nan, 3.0, np.nan])
    np.testing.assert_allclose(crop.interpolate_missing(v, np.isfinite(v)), [0, 1, 2, 3, 3])


def test_head_mask_covers_face_and_forehead_and_respects_person():
    lm = _face(100, 120, half=40)
    m = masks.head_mask(lm, (240, 200))
    assert m[120, 100] and m[85, 100]
    assert m[120 - 40 - 10, 100]  # above the forehead landmark (hair region)
    assert not m[120 + 60, 100] and not m[5, 5]
    person = np.zeros((240, 200), np.float32)
    person[:, :100] = 1.0
    m2 = masks.head_mask(lm, (240, 200), person)
    assert m2[120, 90] and not m2[120, 110]
    assert not masks.head_mask(np.full((478, 3), np.nan), (10, 10)).any()
    d = masks.dilate(np.pad(np.ones((1, 1), bool), 10), 3)
    assert d[10, 13] and not d[10, 14]
