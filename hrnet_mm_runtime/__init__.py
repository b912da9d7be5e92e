"""hrnet_mm_runtime: run hrnet_mm's whole-model ONNX exports without PyTorch.

Needs NumPy, OpenCV and onnxruntime only; nothing here imports torch or the OpenMMLab libraries. An exported
file (``tools/deploy/export_onnx.py CONFIG CHECKPOINT --out model.onnx``) holds the graph up to the head's
raw tensors and a recipe of the test pipeline and post-processing; this package reproduces both.

Example::

    import cv2
    import hrnet_mm_runtime as rt
    detector, pose = rt.load('det.onnx'), rt.load('pose.onnx')
    people = rt.TopDownPose(detector, pose)(cv2.imread('people.jpg'))
    people['keypoints']   # (N, 17, 2) in image pixels
"""
from .models import (
    BottomupPoseEstimator,
    Classifier,
    Detector,
    Model,
    PoseEstimator,
    RuntimeModelError,
    Segmentor,
    TopDownPose,
    load,
)

__all__ = ['load', 'Model', 'Detector', 'Segmentor', 'Classifier', 'PoseEstimator', 'BottomupPoseEstimator',
           'TopDownPose',
           'RuntimeModelError']
