"""The CPM: the released architecture exactly, its receptive fields, and every model config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from cpm_lightning.errors import ConfigError
from cpm_lightning.models import CPM, CPMConfig, count_parameters, forward_flops, receptive_fields

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
MODEL_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))


def model_config(name: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return dict(compose(config_name="train", overrides=[f"model={name}"]).model)


def test_paper_parameter_counts_match_the_release():
    paper = CPM(**model_config("cpm_paper"))
    assert count_parameters(paper) == 31_219_866
    assert count_parameters(paper.stage1) == 4_386_095
    assert sum(count_parameters(m) for m in paper.stage_modules(2)) == 7_515_311
    for stage in range(3, 7):
        assert sum(count_parameters(m) for m in paper.stage_modules(stage)) == 4_829_615
    assert count_parameters(CPM(**model_config("cpm_flic"))) == 21_323_816


def test_paper_architecture_details():
    paper = CPM(**model_config("cpm_paper"))
    convs = [m for m in paper.stage1.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [9, 9, 9, 5, 9, 1, 1]
    assert [c.out_channels for c in convs] == [128, 128, 128, 32, 512, 512, 15]
    pools = [m for m in paper.stage1.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert all(p.ceil_mode and p.kernel_size == 3 and p.stride == 2 for p in pools)
    refine = [m for m in paper.stages[0].refine if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size[0] for c in refine] == [11, 11, 11, 1, 1]
    assert refine[0].in_channels == 32 + 15 + 1  # own features, previous beliefs, centre map
    # No ReLU after the last conv of a stage: the stage ends in a Conv2d.
    assert isinstance(paper.stage1.head[-1], torch.nn.Conv2d)
    assert isinstance(paper.stages[0].refine[-1], torch.nn.Conv2d)
    # Dropout 0.5 after the two 512-channel layers.
    assert [m.p for m in paper.stage1.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    # One trunk shared by stages 2..6.
    assert len(paper.trunks) == 1
    # N(0, 0.01) init, zero bias.
    weights = torch.cat([c.weight.flatten() for c in convs[:3]])
    assert abs(weights.std().item() - 0.01) < 5e-4
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs)


def test_paper_output_is_46x46_at_368_with_ceil_mode_pooling():
    paper = CPM(**model_config("cpm_paper")).eval()
    with torch.no_grad():
        belief_maps = paper(torch.zeros(1, 3, 368, 368))
    assert belief_maps.shape == (1, 6, 15, 46, 46)
    # The centre map is average-pooled 9/8 (ceil) to the same 46x46 grid.
    pooled = paper.pooled_centre_map(torch.zeros(1, 3, 368, 368), None)
    assert pooled.shape == (1, 1, 46, 46)
    assert int(pooled[0, 0].argmax()) in {22 * 46 + 22, 22 * 46 + 23, 23 * 46 + 22, 23 * 46 + 23}
    assert forward_flops(paper.config, 368) == pytest.approx(350e9, rel=0.01)


def test_receptive_fields_match_the_release_and_the_paper():
    assert receptive_fields(CPMConfig()) == [167, 407, 647, 887, 1127, 1367]
    assert receptive_fields(CPMConfig(pool_kernel=2))[:2] == [160, 400]


def test_receptive_field_matches_the_gradient_support():
    """The analytic field equals the input region that can change one output cell."""
    config = dict(num_stages=2, num_pools=2, trunk_channels=4, trunk_kernel=3, feature_channels=4,
                  stage1_channels=4, stage1_kernel=3, stage_channels=4, stage_kernel=3, stage_layers=1,
                  centre_map=False, dropout=0.0, init="kaiming")  # fmt: skip
    model = CPM(**config).eval()
    for p in model.parameters():  # positive weights: no accidental cancellation, ReLUs stay on
        p.data.uniform_(0.01, 0.1)
    # A max-pool passes gradient to one input of each window; an average pool of the same
    # geometry to all of them, so the gradient's support is then the whole receptive field.
    for trunk in [model.stage1.trunk, *model.trunks]:
        for i, layer in enumerate(trunk):
            if isinstance(layer, torch.nn.MaxPool2d):
                trunk[i] = torch.nn.AvgPool2d(layer.kernel_size, layer.stride, ceil_mode=True)
    image = torch.ones(1, 3, 96, 96, requires_grad=True)
    belief_maps = model(image)
    for stage, field in enumerate(receptive_fields(CPMConfig(**config))):
        (grad,) = torch.autograd.grad(belief_maps[0, stage, 0, 12, 12], image, retain_graph=True)
        columns = torch.nonzero(grad[0].abs().sum(dim=(0, 1)))
        assert columns.max() - columns.min() + 1 == field


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_config_runs_forward_and_backward(name):
    config = model_config(name)
    model = CPM(**config)
    size = 16 * model.stride  # small input: every config is fully convolutional
    belief_maps = model(torch.randn(2, 3, size, size))
    assert belief_maps.shape == (2, config["num_stages"], config["num_parts"] + 1, 16, 16)
    belief_maps.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_model_scales_down_by_config():
    small = CPM(num_stages=2, trunk_channels=8, trunk_kernel=3, num_pools=2, feature_channels=4,
                stage1_channels=16, stage1_kernel=3, stage_channels=8, stage_kernel=5,
                centre_map=False, share_trunk=False)  # fmt: skip
    assert len(small.trunks) == 1 and small.stride == 4
    assert small(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 15, 8, 8)
    one_stage = CPM(num_stages=1, trunk_channels=8, stage1_channels=8)
    assert one_stage(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 15, 8, 8)


def test_dropout_only_in_training():
    model = CPM(num_stages=1, trunk_channels=8, stage1_channels=16)
    image = torch.randn(1, 3, 64, 64)
    model.eval()
    assert torch.equal(model(image), model(image))
    model.train()
    assert not torch.equal(model(image), model(image))


@pytest.mark.parametrize(
    ("key", "value"), [("num_stages", 0), ("trunk_kernel", 4), ("dropout", 1.5), ("init", "xavier")]
)
def test_bad_model_config_names_the_key(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        CPM(**{key: value})


def test_model_file_imports_with_torch_only():
    """Benchmarks import the model on bare GPU machines: no Hydra, albumentations or W&B."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, *args):\n"
        "        if name.split('.')[0] in {'hydra', 'omegaconf', 'albumentations', 'wandb', 'lightning'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from cpm_lightning.models.cpm import CPM\n"
        "from cpm_lightning.models.receptive_field import receptive_fields\n"
        "print(sum(p.numel() for p in CPM().parameters()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "31219866"


def test_model_yaml_files_are_plain_cpm_keys():
    """conf/model/*.yaml hold CPM keyword arguments only (no _target_), so CPM(**cfg) works."""
    fields = set(CPMConfig.__dataclass_fields__) | {"checkpoint_stages", "defaults"}
    for path in (CONFIG_DIR / "model").glob("*.yaml"):
        assert set(yaml.safe_load(path.read_text())) <= fields, path.name
