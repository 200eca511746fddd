"""MRNet's plane network, weights handling, and the histogram standardization against TorchIO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrlab.data.volume_transforms import augment_series, learn_landmarks, standardize, to_slices
from cxrlab.errors import InputError, MissingFileError, WeightsUnavailableError
from cxrlab.models.mrnet import create_plane_net


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_plane_net("alexnet").eval()


def test_alexnet_shapes_and_max_over_slices(net):
    x = torch.randn(5, 3, 64, 64)
    assert net.slice_features(x).shape == (5, 256)
    logit = net(x)
    assert logit.shape == (1,)
    with torch.no_grad():
        shuffled = net(x[torch.tensor([3, 0, 4, 1, 2])])
        repeated = net(torch.cat([x, x[2:3], x[2:3]]))
        fewer = net(x[:2])
    torch.testing.assert_close(shuffled, net(x).detach())
    torch.testing.assert_close(repeated, net(x).detach())
    assert not torch.allclose(fewer, net(x).detach())      # the max does depend on which slices
    assert net(x[None]).shape == (1,)
    with pytest.raises(InputError, match="one exam per forward pass"):
        net(torch.randn(2, 3, 3, 64, 64))


def test_top_slice_is_the_slice_that_makes_the_logit(net):
    x = torch.randn(4, 3, 64, 64)
    top = net.top_slice(x)
    with torch.no_grad():
        alone = net.slice_model()(x[top:top + 1])[0]
        others = [net.slice_model()(x[k:k + 1])[0] for k in range(4)]
    assert torch.isclose(alone, torch.stack(others)).any()
    assert 0 <= top < 4


def test_timm_body_option():
    model = create_plane_net("resnet18")
    assert model.num_features == 512 and model(torch.randn(3, 3, 64, 64)).shape == (1,)


def test_weights_offline_error_and_local_file(tmp_path, monkeypatch):
    from torchvision.models import AlexNet_Weights, alexnet

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(AlexNet_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(WeightsUnavailableError, match="pretrained=PATH"):
        create_plane_net("alexnet", pretrained="imagenet")
    reference = alexnet(weights=None)
    state = reference.state_dict()     # torchvision's key layout; the 57M classifier weights are left out for speed
    torch.save({k: v for k, v in state.items() if k.startswith("features.") or k == "classifier.6.bias"},
               tmp_path / "alexnet.pth")
    model = create_plane_net("alexnet", pretrained=tmp_path / "alexnet.pth")
    torch.testing.assert_close(model.body[0].weight, reference.features[0].weight)
    with pytest.raises(MissingFileError):
        create_plane_net("alexnet", pretrained=tmp_path / "none.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="do not fit AlexNet"):
        create_plane_net("alexnet", pretrained=tmp_path / "bad.pth")


def test_landmarks_match_torchio_training(tmp_path):
    import nibabel as nib
    import torchio as tio

    rng = np.random.default_rng(0)
    volumes = [rng.gamma(2.0 + k, 20.0, size=(6, 16, 16)).astype(np.float32) for k in range(4)]
    paths = []
    for k, volume in enumerate(volumes):
        paths.append(tmp_path / f"v{k}.nii.gz")
        nib.save(nib.Nifti1Image(volume, np.eye(4)), paths[-1])
    reference = tio.HistogramStandardization.train(paths, progress=False)
    np.testing.assert_allclose(learn_landmarks(volumes), reference, rtol=1e-5, atol=1e-4)
    out = standardize(volumes[0], reference)
    assert out.shape == volumes[0].shape
    assert np.percentile(out, 50) == pytest.approx(reference[6], abs=1.0)    # the median lands on its landmark


def test_slices_and_augmentation_are_seeded():
    x = to_slices(np.random.default_rng(0).uniform(0, 100, (3, 32, 32)), 64)
    assert x.shape == (3, 3, 64, 64)
    a = augment_series(x, torch.Generator().manual_seed(5))
    b = augment_series(x, torch.Generator().manual_seed(5))
    c = augment_series(x, torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
