"""Networks: parameter counts (spec models_and_augmentation.md §1.2, §2), shapes, seeding, norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ltdistill.models import ModelSpec, build_model, classifier_start, count_parameters
from ltdistill.models.fast_ops import InstanceNorm

# (arch, channels, image size, C, backbone = classifier_start, total)   spec §1.2 and §2
COUNTS = [
    ("convnet3", 3, 32, 10, 299_520, 320_010),
    ("convnet3", 3, 32, 100, 299_520, 504_420),
    ("convnet3", 1, 28, 10, 297_216, 317_706),
    ("convnet4", 3, 64, 200, 447_360, 857_160),
    ("convnet4", 3, 64, 1000, 447_360, 2_496_360),
    ("convnet5", 3, 128, 10, 595_200, 615_690),
    ("resnet18", 3, 32, 10, 11_168_832, 11_173_962),
    ("resnet18", 3, 32, 100, 11_168_832, 11_220_132),
    ("resnet18", 3, 32, 200, 11_168_832, 11_271_432),
    ("vgg11", 3, 32, 10, 9_225_984, 9_231_114),
    ("vgg11", 3, 32, 100, 9_225_984, 9_277_284),
    ("vgg11", 3, 32, 200, 9_225_984, 9_328_584),
    ("alexnet", 3, 32, 10, 1_841_472, 1_872_202),
    ("alexnet", 3, 32, 100, 1_841_472, 2_148_772),
    ("alexnet", 3, 32, 200, 1_841_472, 2_456_072),
]

INPUTS = [(1, 28), (3, 32), (3, 64)]  # Fashion-MNIST, CIFAR, Tiny-ImageNet
ARCHS = ["convnet3", "convnet4", "resnet18", "vgg11", "alexnet"]
EMBED_DIM = {("convnet3", 28): 2048, ("convnet3", 32): 2048, ("convnet3", 64): 8192,
             ("convnet4", 64): 2048, "resnet18": 512, "vgg11": 512, "alexnet": 3072}


@pytest.mark.parametrize("arch,ch,size,c,backbone,total", COUNTS)
def test_parameter_counts(arch, ch, size, c, backbone, total):
    m = build_model(ModelSpec(arch, ch, c, size), seed=0)
    assert count_parameters(m) == total
    assert classifier_start(m) == backbone
    names = [n for n, _ in m.named_parameters()]
    assert names[-2:] == ["classifier.weight", "classifier.bias"]
    assert isinstance(m.classifier, nn.Linear) and m.classifier.out_features == c


@pytest.mark.parametrize("arch", ["resnet18", "vgg11", "alexnet"])
def test_cross_arch_counts_at_64px_match_32px(arch):
    # stride-2 stem (ResNet, AlexNet) and adaptive pooling (VGG) keep the head unchanged
    a = build_model(ModelSpec(arch, 3, 200, 64), seed=0)
    b = build_model(ModelSpec(arch, 3, 200, 32), seed=0)
    assert count_parameters(a) == count_parameters(b)


@pytest.mark.parametrize("ch,size", INPUTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_and_embed_shapes(arch, ch, size):
    if arch == "convnet4" and size != 64:
        pytest.skip("ConvNet-4 is the 64 px network")
    m = build_model(ModelSpec(arch, ch, 7, size), seed=1).eval()
    x = torch.randn(2, ch, size, size)
    with torch.no_grad():
        y, e = m(x), m.embed(x)
    assert y.shape == (2, 7)
    dim = EMBED_DIM.get((arch, size), EMBED_DIM.get(arch))
    assert e.shape == (2, dim)
    assert m.classifier.in_features == dim
    assert torch.isfinite(y).all()


def test_default_and_override_norms():
    def norms(m):
        return {type(mod) for mod in m.modules()
                if isinstance(mod, (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm))}

    assert norms(build_model(ModelSpec("resnet18", 3, 10, 32), 0)) == {nn.BatchNorm2d}
    # instance norm is GroupNorm(C, C): ltdistill's subclass with the fast double backward
    assert norms(build_model(ModelSpec("resnet18", 3, 10, 32, norm="instance"), 0)) == {InstanceNorm}
    assert norms(build_model(ModelSpec("vgg11", 3, 10, 32), 0)) == {InstanceNorm}
    assert issubclass(InstanceNorm, nn.GroupNorm)
    assert norms(build_model(ModelSpec("vgg11", 3, 10, 32, norm="batch"), 0)) == {nn.BatchNorm2d}
    assert norms(build_model(ModelSpec("alexnet", 3, 10, 32), 0)) == set()
    gn = [m for m in build_model(ModelSpec("resnet18", 3, 10, 32, norm="instance"), 0).modules()
          if isinstance(m, nn.GroupNorm)]
    assert all(g.num_groups == g.num_channels for g in gn)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11", "alexnet"])
def test_layer_norm_option_builds_and_runs(arch):
    # the spatial sizes handed to LayerNorm must match the feature maps, at 28 (1 ch) and 64 px
    for ch, size in [(1, 28), (3, 64)]:
        m = build_model(ModelSpec(arch, ch, 3, size, norm="layer"), seed=0)
        with torch.no_grad():
            assert m(torch.randn(1, ch, size, size)).shape == (1, 3)


@pytest.mark.parametrize("arch", ["convnet3", "resnet18"])
def test_seeded_build_is_reproducible(arch):
    spec = ModelSpec(arch, 3, 10, 32)
    a, b, c = build_model(spec, seed=5), build_model(spec, seed=5), build_model(spec, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["classifier.weight"], sc["classifier.weight"])


def test_seeded_build_leaves_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for arch in ("convnet3", "alexnet"):
        build_model(ModelSpec(arch, 3, 10, 32), seed=9)
    assert torch.equal(torch.get_rng_state(), state)


def test_groupnorm_cc_equals_affine_instancenorm():
    torch.manual_seed(0)
    gn = nn.GroupNorm(128, 128, affine=True)
    inn = nn.InstanceNorm2d(128, affine=True)
    with torch.no_grad():
        w, b = torch.randn(128), torch.randn(128)
        gn.weight.copy_(w), gn.bias.copy_(b)
        inn.weight.copy_(w), inn.bias.copy_(b)
    x = torch.randn(2, 128, 4, 4) * 3 + 1
    torch.testing.assert_close(gn(x), inn(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,norm", [("convnet3", None), ("resnet18", None),
                                       ("resnet18", "instance"), ("vgg11", None),
                                       ("alexnet", None)])
def test_channels_last_matches_default_layout(arch, norm):
    m = build_model(ModelSpec(arch, 3, 10, 32, norm=norm), seed=2).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m(x)
        m_cl = m.to(memory_format=torch.channels_last)
        out = m_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
