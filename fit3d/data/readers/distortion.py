"""Lens undistortion with OpenCV, shared by the nerfstudio and COLMAP readers.

Both policies keep the image size and give a pinhole K whose undistorted image has (almost) no empty
pixels, principal point at the image centre:
- pinhole models with radial/tangential terms: ``cv2.getOptimalNewCameraMatrix(alpha=0,
  centerPrincipalPoint=True)``;
- fisheye (``OPENCV_FISHEYE``): ``cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(balance=0)``
  with the principal point then moved to the centre, as FiT3D does for ScanNet++ DSLR.

K follows fit3d's convention (pixel centres at +0.5, as COLMAP and nerfstudio); OpenCV's maps index
pixel centres at integers, so K is shifted by -0.5 going in and +0.5 coming out.
Pixels of the output that see no input pixel are reported in the returned mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def _to_cv(K: np.ndarray) -> np.ndarray:
    K = np.array(K, dtype=np.float64)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def _from_cv(K: np.ndarray) -> np.ndarray:
    K = np.array(K, dtype=np.float64)
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return K


@dataclass
class Undistorter:
    """Maps from a distorted camera (K, dist) of size ``width`` x ``height`` to an undistorted pinhole
    camera ``K_new`` of the same size.

    K     [3, 3] distorted intrinsics (centres at +0.5)
    dist  [n] OpenCV coefficients: (k1, k2, p1, p2[, k3[, k4, k5, k6]]) or fisheye (k1, k2, k3, k4)
    """

    K: np.ndarray
    dist: np.ndarray
    width: int
    height: int
    fisheye: bool = False

    def __post_init__(self) -> None:
        size = (self.width, self.height)
        K_cv = _to_cv(self.K)
        D = np.asarray(self.dist, dtype=np.float64).reshape(-1)
        if self.fisheye:
            new = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K_cv, D.reshape(4, 1), size,
                                                                        np.eye(3), balance=0.0)
            new = np.array(new, dtype=np.float64)
            new[0, 2], new[1, 2] = (self.width - 1) / 2, (self.height - 1) / 2  # centre, OpenCV indexing
            self.map_x, self.map_y = cv2.fisheye.initUndistortRectifyMap(
                K_cv, D.reshape(4, 1), np.eye(3), new, size, cv2.CV_32FC1)
        else:
            new, _ = cv2.getOptimalNewCameraMatrix(K_cv, D, size, 0.0, size, centerPrincipalPoint=True)
            self.map_x, self.map_y = cv2.initUndistortRectifyMap(K_cv, D, np.eye(3), new, size, cv2.CV_32FC1)
        self.K_new = _from_cv(new)  # [3, 3]
        # a source pixel centre lies in [-0.5, W - 0.5) in OpenCV indexing
        self.valid = ((self.map_x >= -0.5) & (self.map_x < self.width - 0.5)
                      & (self.map_y >= -0.5) & (self.map_y < self.height - 0.5))  # [H, W] bool

    def image(self, img: np.ndarray) -> np.ndarray:
        """[H, W, C] image resampled bilinearly (border replicated, see ``valid``)."""
        return cv2.remap(img, self.map_x, self.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def nearest(self, a: np.ndarray | None, fill=0) -> np.ndarray | None:
        """[H, W] depth / labels / mask resampled with nearest neighbour; ``fill`` outside the input.

        Hand-indexed (not cv2.remap) so every dtype works and depth is never blended across edges.
        """
        if a is None:
            return None
        cols = np.clip(np.rint(self.map_x).astype(np.int64), 0, self.width - 1)
        rows = np.clip(np.rint(self.map_y).astype(np.int64), 0, self.height - 1)
        out = a[rows, cols]
        out[~self.valid] = fill
        return out
