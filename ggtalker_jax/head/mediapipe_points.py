"""MediaPipe face-mesh point indices by facial role (from mediapipe's face_mesh_connections, Apache-2.0).

"Left" and "right" are the subject's: the subject's right eye (x < 0 in head space) appears on the image's
left. Eye contours run outer corner -> inner corner; irises list the centre, then the ring at +x, +y
(up), -x, -y (as MediaPipe orders them; checked on real clips).
"""
from __future__ import annotations

from ggtalker_jax.constants import LIPS_INNER_LOWER, LIPS_INNER_UPPER, LIPS_OUTER_LOWER, LIPS_OUTER_UPPER  # noqa: F401
from ggtalker_jax.constants import NUM_LANDMARKS as NUM_POINTS  # noqa: F401

RIGHT_EYE_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
RIGHT_EYE_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
LEFT_EYE_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)
LEFT_EYE_LOWER = (263, 249, 390, 373, 374, 380, 381, 382, 362)
RIGHT_BROW_LOWER = (46, 53, 52, 65, 55)                           # outer -> inner
RIGHT_BROW_UPPER = (70, 63, 105, 66, 107)
LEFT_BROW_LOWER = (276, 283, 282, 295, 285)
LEFT_BROW_UPPER = (300, 293, 334, 296, 336)
FACE_OVAL = (10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
             377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356, 389, 251, 284, 332, 297, 338)
NOSE_LINE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2)
RIGHT_IRIS = (468, 469, 470, 471, 472)   # centre, then ring
LEFT_IRIS = (473, 474, 475, 476, 477)

LIP_POINTS = frozenset(LIPS_OUTER_UPPER + LIPS_OUTER_LOWER + LIPS_INNER_UPPER + LIPS_INNER_LOWER)
# Upper / lower eyelid point pairs (one above the other), without the corners: (upper, lower).
LEFT_LID_PAIRS = tuple(zip(LEFT_EYE_UPPER[1:-1], LEFT_EYE_LOWER[1:-1]))
RIGHT_LID_PAIRS = tuple(zip(RIGHT_EYE_UPPER[1:-1], RIGHT_EYE_LOWER[1:-1]))
EYE_POINTS = frozenset(LEFT_EYE_UPPER + LEFT_EYE_LOWER + RIGHT_EYE_UPPER + RIGHT_EYE_LOWER)
IRIS_POINTS = frozenset(LEFT_IRIS + RIGHT_IRIS)
