"""Numbers that several layers share, defined once.

The expression interface: 53 numbers per video frame between audio and geometry (GGTalker, supplementary
section 2.2): 50 expression coefficients followed by the 3-number jaw pose (axis-angle), for every head
model.

MediaPipe face-mesh indices (the 478-point refined mesh: 468 face points + 10 iris points) of the lips.
The lip contours come from `mediapipe.python.solutions.face_mesh_connections.FACEMESH_LIPS` (a test checks
them against mediapipe so they cannot drift; written out so that importing this module does not import
mediapipe).
"""
from __future__ import annotations

NUM_EXPRESSION = 50          # expression coefficients per frame
JAW_POSE_DIM = 3             # jaw rotation, axis-angle
EXPR_DIM = NUM_EXPRESSION + JAW_POSE_DIM   # 53: [expression (50) | jaw pose (3)]

NUM_LANDMARKS = 478          # MediaPipe face mesh with irises (refine_landmarks=True)

# Lip contours, each from the right mouth corner (61 outer / 78 inner) to the left one (291 / 308).
LIPS_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
# Every lip point, sorted (the union of the four contours; == FACEMESH_LIPS' vertices).
MEDIAPIPE_LIPS: tuple[int, ...] = tuple(sorted(set(LIPS_OUTER_UPPER + LIPS_OUTER_LOWER + LIPS_INNER_UPPER
                                                   + LIPS_INNER_LOWER)))
# Inner-lip midpoints (upper, lower) and inner mouth corners: the mouth-opening measure's four points.
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
LEFT_INNER_CORNER, RIGHT_INNER_CORNER = 78, 308
