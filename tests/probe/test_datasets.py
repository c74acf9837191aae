"""Each probe dataset reader on a tiny fixture written in its documented layout."""

import json

import cv2
import numpy as np
import pytest

from fit3d.errors import SceneError
from fit3d.probe.datasets import IGNORE, detect, load_probe_data
from probe_testkit import rgb, write_7scenes, write_png


def test_nyuv2_extracted_layout(tmp_path):
    for i in ("0001", "0002", "0003"):
        write_png(tmp_path / "image" / f"{i}.png", rgb(48, 64))
        write_png(tmp_path / "depth" / f"{i}.png", np.full((48, 64), 2500, np.uint16))
        lab = np.zeros((48, 64), np.uint8)
        lab[:, 32:] = 40
        write_png(tmp_path / "label40" / f"{i}.png", lab)
        write_png(tmp_path / "label13" / f"{i}.png", np.minimum(lab, 13))
    (tmp_path / "train.txt").write_text("0001\n0002\n")
    (tmp_path / "test.txt").write_text("0003\n")
    assert detect(tmp_path) == "nyuv2"
    d = load_probe_data(tmp_path, "train", (32, 24))
    assert len(d) == 2 and d.num_classes == 40 and d.crop == "eigen" and d.max_depth == 10.0
    v = d.view(0)
    assert v.image.shape == (24, 32, 3) and v.depth[0, 0] == pytest.approx(2.5)
    assert v.labels[0, 0] == IGNORE and v.labels[0, -1] == 39
    d13 = load_probe_data(tmp_path, "test", None, num_classes=13)
    assert d13.num_classes == 13 and d13.view(0).labels[0, -1] == 12


def test_nyuv2_mat_without_h5py_explains(tmp_path):
    (tmp_path / "nyu_depth_v2_labeled.mat").write_bytes(b"x")
    with pytest.raises(SceneError, match="h5py"):
        load_probe_data(tmp_path, "train", None, dataset="nyuv2")


def test_ade20k_layout(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for sub in ("training", "validation"):
        (root / "images" / sub).mkdir(parents=True)
        cv2.imwrite(str(root / "images" / sub / f"ADE_{sub}_00000001.jpg"), rgb(40, 60))
        lab = np.zeros((40, 60), np.uint8)
        lab[10:, :] = 150
        lab[20:, :] = 1
        write_png(root / "annotations" / sub / f"ADE_{sub}_00000001.png", lab)
    assert detect(tmp_path) == "ade20k"
    d = load_probe_data(tmp_path, "test", (30, 20))
    assert d.num_classes == 150 and d.names == ["ADE_validation_00000001"]
    lab = d.view(0).labels
    assert lab[0, 0] == IGNORE and lab[7, 0] == 149 and lab[-1, 0] == 0


def test_voc_layout_palette_png(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for i in ("2007_000032", "2007_000033"):
        cv2.imwrite(str(root / "JPEGImages" / f"{i}.jpg"), rgb(30, 40))
        lab = np.zeros((30, 40), np.uint8)
        lab[5:25, 5:35] = 15
        lab[5, 5:35] = 255
        write_png(root / "SegmentationClass" / f"{i}.png", lab, palette=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    assert detect(tmp_path) == "voc"
    d = load_probe_data(tmp_path, "train", None)
    lab = d.view(0).labels
    assert d.num_classes == 21 and lab[0, 0] == 0 and lab[10, 10] == 15 and lab[5, 10] == IGNORE


def test_kitti_eigen_bts_lists(tmp_path):
    rel = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png"
    grel = "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png"
    write_png(tmp_path / "raw" / rel, rgb(30, 100))
    gt = np.zeros((30, 100), np.uint16)
    gt[20, 50] = int(12.5 * 256)
    write_png(tmp_path / "gt" / grel, gt)
    (tmp_path / "eigen_test_files_with_gt.txt").write_text(f"{rel} {grel} 721.5377\n{rel} None 721.5377\n")
    (tmp_path / "eigen_train_files_with_gt.txt").write_text(f"{rel} {grel} 721.5377\n")
    assert detect(tmp_path) == "kitti"
    d = load_probe_data(tmp_path, "test", None)
    assert len(d) == 1 and d.max_depth == 80.0 and d.crop == "garg"
    assert d.view(0).depth[20, 50] == pytest.approx(12.5)


def test_scannetpp_dslr_rendered(tmp_path):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "nvs_sem_train.txt").write_text("aaa\n")
    (tmp_path / "splits" / "nvs_sem_val.txt").write_text("bbb\n")
    for s in ("aaa", "bbb"):
        dslr = tmp_path / "data" / s / "dslr"
        (dslr / "resized_undistorted_images").mkdir(parents=True)
        cv2.imwrite(str(dslr / "resized_undistorted_images" / "DSC00001.JPG"), rgb(20, 30))
        write_png(dslr / "render_depth" / "DSC00001.png", np.full((20, 30), 15000, np.uint16))
        sem = np.full((20, 30), 7, np.uint16)
        sem[0] = 65535
        write_png(dslr / "render_semantic" / "DSC00001.png", sem)
    assert detect(tmp_path) == "scannetpp"
    d = load_probe_data(tmp_path, "test", None)
    v = d.view(0)
    assert d.names == ["bbb/DSC00001"] and d.max_depth == 20.0 and d.num_classes == 100
    assert v.depth[5, 5] == pytest.approx(15.0) and v.labels[5, 5] == 7 and v.labels[0, 0] == IGNORE


def test_7scenes_frame_split_default_and_explicit(tmp_path):
    root = write_7scenes(tmp_path / "kitchen", [0, 2, 398, 400, 402, 498, 500])
    assert detect(root) == "scene"
    tr = load_probe_data(root, "train", (32, 24))
    te = load_probe_data(root, "test", (32, 24))
    assert tr.names == ["frame-000000", "frame-000002", "frame-000398"]
    assert te.names == ["frame-000400", "frame-000402", "frame-000498"]
    assert te.posed and te.max_depth == 10.0 and te.view(0).depth.shape == (24, 32)
    ex = load_probe_data(root, "test", None, test_frames=(402, 500))
    assert ex.names == ["frame-000402", "frame-000498", "frame-000500"]
    with pytest.raises(SceneError, match="frame numbers"):
        load_probe_data(root, "test", None, test_frames=(900, 999))


def test_scannet_label_filt_mapped_to_nyu40(tmp_path):
    from fit3d.data.readers import scannet as sc

    scene = tmp_path / "scene0000_00"
    for d in ("color", "depth", "pose", "intrinsic", "label-filt"):
        (scene / d).mkdir(parents=True)
    K = np.eye(4)
    K[0, 0] = K[1, 1] = 30
    K[0, 2], K[1, 2] = 16, 12
    np.savetxt(scene / "intrinsic" / "intrinsic_color.txt", K)
    for n in (0, 400):
        cv2.imwrite(str(scene / "color" / f"{n}.jpg"), rgb(24, 32))
        cv2.imwrite(str(scene / "depth" / f"{n}.png"), np.full((24, 32), 1500, np.uint16))
        np.savetxt(scene / "pose" / f"{n}.txt", np.eye(4))
        lab = np.zeros((24, 32), np.uint16)
        lab[:, 16:] = 3  # raw id 3 -> nyu40 id 5 -> class 4
        cv2.imwrite(str(scene / "label-filt" / f"{n}.png"), lab)
    (scene / "scannetv2-labels.combined.tsv").write_text("id\traw_category\tnyu40id\n1\twall\t1\n3\tchair\t5\n")
    d = load_probe_data(scene, "test", None, dataset="scannet")
    v = d.view(0)
    assert d.names == ["400"] and d.num_classes == 40
    assert v.labels[0, 0] == IGNORE and v.labels[0, -1] == 4 and v.depth[0, 0] == pytest.approx(1.5)
    assert sc.NAME == "scannet"


def test_scene_labels_with_classes_json(tmp_path):
    root = write_7scenes(tmp_path / "s", [0, 400], labels=True)
    (root / "classes.json").write_text(json.dumps(["wall", "box", "near box"]))
    d = load_probe_data(root, "test", None)
    assert d.num_classes == 3 and d.class_names == ["wall", "box", "near box"]
    assert set(np.unique(d.view(0).labels)) <= {0, 1, 2}


def test_scannet_folder_of_generated_rooms(tmp_path):
    """A folder of ScanNet-layout rooms (as ``fit3d generate`` writes) with {"classes": [...]}: all frames."""
    for s in ("room0", "room1"):
        scene = tmp_path / s
        for d in ("color", "depth", "pose", "intrinsic", "label-filt"):
            (scene / d).mkdir(parents=True)
        np.savetxt(scene / "intrinsic" / "intrinsic_color.txt", np.array([[30, 0, 16, 0], [0, 30, 12, 0],
                                                                           [0, 0, 1, 0], [0, 0, 0, 1.0]]))
        for n in (0, 1):
            cv2.imwrite(str(scene / "color" / f"{n}.png"), rgb(24, 32))
            cv2.imwrite(str(scene / "depth" / f"{n}.png"), np.full((24, 32), 1500, np.uint16))
            np.savetxt(scene / "pose" / f"{n}.txt", np.eye(4))
            cv2.imwrite(str(scene / "label-filt" / f"{n}.png"), np.full((24, 32), 4, np.uint8))
        (scene / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c", "d", "e", "f"]}))
    d = load_probe_data(tmp_path, "test", None, dataset="scannet")
    assert d.names == ["room0/0", "room0/1", "room1/0", "room1/1"] and d.num_classes == 6
    assert d.view(3).labels[0, 0] == 4
