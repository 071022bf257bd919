"""common/export/timm_trunk.py: timm reloads the exported vision trunk and computes the run's features."""
from __future__ import annotations

import timm
import torch

from common.export import export_timm
from tests.support.run_folders import IMAGE_SIZE, trained_like_run


def test_timm_reloads_exported_trunk(tmp_path):
    ours, cfg, run = trained_like_run(tmp_path, "softmax")
    info = export_timm(run, tmp_path / "trunk.safetensors")
    trunk = timm.create_model(info["model_name"], pretrained=False, checkpoint_path=info["file"],
                              img_size=info["image_size"], num_classes=0).eval()
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        assert torch.allclose(trunk.forward_features(x), ours.visual.trunk.forward_features(x), atol=1e-6)
