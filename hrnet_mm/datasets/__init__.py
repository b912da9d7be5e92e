"""Synthetic datasets in the real on-disk formats (demo data and end-to-end tests)."""
from .landmarks import make_face_landmarks, make_hand_keypoints
from .synthetic import (
    CITYSCAPES_CLASSES,
    CLS_CLASSES,
    COCO_KEYPOINTS,
    COCO_SKELETON,
    DET_CLASSES,
    SEG_IGNORE,
    SEG_TRAIN_IDS,
    make_cityscapes_seg,
    make_coco_detection,
    make_coco_keypoints,
    make_imagenet_folder,
)

__all__ = ['CITYSCAPES_CLASSES', 'CLS_CLASSES', 'COCO_KEYPOINTS', 'COCO_SKELETON', 'DET_CLASSES', 'SEG_IGNORE',
           'SEG_TRAIN_IDS', 'make_cityscapes_seg', 'make_coco_detection', 'make_coco_keypoints',
           'make_imagenet_folder', 'make_face_landmarks', 'make_hand_keypoints']
