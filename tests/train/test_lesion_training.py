"""Training side (needs torch + MONAI): nets, ONNX export agreement, augmentation, data cropping."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from ctriage.models.registry import ModelHandle  # noqa: E402
from ctriage.train.data import lung_bounding_box, validation_names  # noqa: E402
from ctriage.train.export import export_onnx, image_example  # noqa: E402
from ctriage.train.loop import augment, binary_loss, lesion_logit  # noqa: E402
from ctriage.train.nets import NET_NAMES, build_net, load_weights  # noqa: E402


@pytest.mark.parametrize("name", NET_NAMES)
def test_nets_map_image_to_three_class_logits(name):
    net = build_net(name, features=(4, 8, 8, 8, 8, 4)).eval()
    assert net(torch.zeros(2, 1, 64, 64)).shape == (2, 3, 64, 64)


def test_onnx_and_torch_agree(tmp_path):
    torch.manual_seed(0)
    net = build_net("unet", features=(4, 8, 16, 16, 32, 4))
    with torch.no_grad():  # non-trivial batch-norm statistics so that folding them is exercised
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    onnx_path = export_onnx(net, tmp_path / "lesions.onnx", image_example(64))
    handle = ModelHandle.from_files(onnx_path, {"name": "lesions", "version": "t", "input": {"size_px": 64}})
    batch = np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32)  # dynamic batch size
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(handle.run(batch), expected, atol=1e-4)


def test_instance_norm_net_exports_and_starts_from_batch_norm_weights(tmp_path):
    """An instance-norm net loads a batch-norm checkpoint's convolutions (running statistics skipped), and its
    ONNX export normalises each slice on its own: a slice's logits do not depend on the rest of the batch."""
    torch.manual_seed(0)
    batch_norm = build_net("multitask", features=(4, 8, 16, 16, 32, 4))
    instance = build_net("multitask", features=(4, 8, 16, 16, 32, 4), norm="instance")
    load_weights(instance, batch_norm.state_dict())
    conv = "body.conv_0.conv_0.conv.weight"
    torch.testing.assert_close(instance.state_dict()[conv], batch_norm.state_dict()[conv])
    assert not any("running_mean" in key for key in instance.state_dict())
    onnx_path = export_onnx(instance, tmp_path / "lesions.onnx", image_example(64))
    handle = ModelHandle.from_files(onnx_path, {"name": "lesions", "version": "t", "input": {"size_px": 64}})
    batch = np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32)
    with torch.no_grad():
        expected = instance.eval()(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(handle.run(batch), expected, atol=1e-4)
    np.testing.assert_allclose(handle.run(batch[1:2]), expected[1:2], atol=1e-4)
    with pytest.raises(ValueError, match="normalisation"):
        build_net("unet", norm="group")


def test_augment_keeps_labels_and_range():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 32, 32)
    labels = torch.randint(0, 3, (4, 32, 32))
    out_images, out_labels = augment(images, labels, generator)
    assert out_images.shape == images.shape and out_labels.shape == labels.shape
    assert float(out_images.min()) >= 0 and float(out_images.max()) <= 1
    assert set(out_labels.unique().tolist()) <= {0, 1, 2}
    # geometry moves image and labels together: a bright square and its label stay on top of each other
    square = torch.zeros(4, 1, 32, 32)
    square[:, :, 10:22, 8:20] = 1.0
    moved_images, moved_labels = augment(square, square[:, 0].long(), generator)
    assert not torch.equal(moved_labels, square[:, 0].long())  # something moved
    for image, label in zip(moved_images[:, 0] > 0.5, moved_labels > 0, strict=True):
        assert (image & label).sum() / (image | label).sum() > 0.6


def test_lesion_logit_is_probability_of_ggo_plus_consolidation():
    logits = torch.randn(2, 3, 4, 4)
    probabilities = torch.softmax(logits, 1)
    torch.testing.assert_close(torch.sigmoid(lesion_logit(logits)), probabilities[:, 1] + probabilities[:, 2])
    assert float(binary_loss(logits, torch.zeros(2, 4, 4, dtype=torch.long))) > 0
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[:, 1:3, 1:3] = 1
    sure = torch.full((2, 3, 4, 4), -8.0)
    sure[:, 0] = 8.0  # background everywhere ...
    sure[:, 1][target.bool()], sure[:, 0][target.bool()] = 8.0, -8.0  # ... GGO on the lesion
    assert float(binary_loss(sure, target)) < 0.05 < float(binary_loss(sure, 1 - target))


def test_validation_split_is_fixed():
    names = [str(i) for i in range(50)]
    assert validation_names(names, 10, 0) == validation_names(list(reversed(names)), 10, 0)
    assert len(set(validation_names(names, 10, 0))) == 10


def test_lung_bounding_box_of_uncropped_slice():
    image = np.zeros((200, 200), np.uint8)
    image[20:180, 10:190] = 120  # body
    image[50:150, 30:90] = 10  # lungs
    image[50:150, 110:170] = 10
    rows, cols = lung_bounding_box(image, margin_fraction=0.0)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (50, 150, 30, 170)
