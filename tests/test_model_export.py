"""Model blocks, freezing, and the export parity check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from handler.preprocess import PreprocessSpec
from train.export import ExportError, export_model, load_export
from train.model import BLOCKS, WatermarkNet, block_index, set_trainable

SPEC = PreprocessSpec(image_size=75)


@pytest.fixture(scope="module")
def net() -> WatermarkNet:
    torch.manual_seed(0)
    return WatermarkNet(pool="avgmax").eval()


def test_forward_shapes_and_split_equivalence(net: WatermarkNet) -> None:
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        full = net(x)
        cut = block_index("Mixed_6a")
        split = net.forward_from(net.features(x, stop=cut), cut)[0]
    assert full.shape == (2, 1)
    assert torch.allclose(full, split, atol=1e-5)


def test_set_trainable_freezes_lower_blocks(net: WatermarkNet) -> None:
    names = set_trainable(net, "Mixed_6e")
    assert "AuxLogits" in names and "Mixed_7c" in names and "Mixed_6d" not in names
    assert not any(p.requires_grad for p in net.net.Mixed_6d.parameters())
    assert all(p.requires_grad for p in net.net.Mixed_6e.parameters())
    names = set_trainable(net, "head")
    assert names == ["fc"]
    assert not any(p.requires_grad for p in net.net.AuxLogits.parameters())
    with pytest.raises(ValueError, match="Mixed_9z"):
        block_index("Mixed_9z")
    assert len(BLOCKS) == 18


def test_export_writes_a_bundle_that_matches_eager(net: WatermarkNet, tmp_path: Path) -> None:
    out = tmp_path / "export"
    result = export_model(net, SPEC, {"threshold": 0.4, "rule": "max-f1"}, out, info={"weights": "none"})
    assert result["max_abs_diff"] <= 1e-4
    traced, spec, threshold = load_export(out)
    assert spec == SPEC and threshold["threshold"] == 0.4
    x = torch.randn(5, 3, 75, 75)
    with torch.no_grad():
        assert torch.allclose(traced(x), net(x), atol=1e-4)
    info = json.loads((out / "model_info.json").read_text())
    assert info["parity"]["max_abs_diff"] == result["max_abs_diff"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


class BranchyModel(nn.Module):
    """Data-dependent control flow: tracing freezes one branch, so parity fails."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        if float(pooled.sum()) > 0:
            return self.fc(pooled)
        return self.fc(pooled) - 10.0


def test_export_fails_on_parity_and_keeps_old_bundle(net: WatermarkNet, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_model(net, SPEC, {"threshold": 0.4}, out)
    before = (out / "model.pt").read_bytes()
    with pytest.raises(ExportError, match="tolerance"):
        export_model(BranchyModel(), SPEC, {"threshold": 0.5}, out)
    assert (out / "model.pt").read_bytes() == before
    with pytest.raises(ValueError, match="threshold=1.5"):
        export_model(net, SPEC, {"threshold": 1.5}, out)


def test_head_on_mixed_6e_drops_the_later_blocks_and_exports_its_finer_map(tmp_path: Path) -> None:
    """``last_block="Mixed_6e"``: no Mixed_7 weights, an fc of 2 x 768 inputs, the 17x17 stage's map
    (at 299 px), a state dict that rebuilds from the config alone, and an export that matches eager."""
    from train.export import load_checkpoint

    torch.manual_seed(0)
    full = WatermarkNet(pool="avgmax").eval()
    with torch.no_grad():
        full_6e = full.features(torch.ones(1, 3, 299, 299), stop=block_index("Mixed_6e") + 1)
    full.cut_after("Mixed_6e")  # as build_model does after loading backbone weights
    assert full.last_block == "Mixed_6e" and full.net.fc.in_features == 2 * 768
    assert not [k for k in full.state_dict() if k.startswith("net.Mixed_7")]
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        assert torch.equal(full.features(torch.ones(1, 3, 299, 299)), full_6e)  # identities after Mixed_6e
        logits, evidence = full.explain(x)
        assert logits.shape == (2, 1) and evidence.shape == (2, 17, 17)
        assert torch.allclose(logits, full(x), atol=1e-6)
    rebuilt = WatermarkNet(pool="avgmax", last_block="Mixed_6e").eval()
    rebuilt.load_state_dict(full.state_dict())  # strict: same keys and shapes
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": full.state_dict(), "spec": SPEC.to_dict(), "config": {"pool": "avgmax", "dropout": 0.5,
                "last_block": "Mixed_6e"}}, checkpoint)  # fmt: skip
    loaded, _, _ = load_checkpoint(checkpoint)
    y = torch.randn(3, 3, 75, 75)
    with torch.no_grad():
        assert torch.allclose(loaded(y), full(y), atol=1e-6)
    result = export_model(full, SPEC, {"threshold": 0.5, "rule": "manual"}, tmp_path / "export", info={"weights": "none"})
    assert result["max_abs_diff"] <= 1e-4
    with pytest.raises(ValueError, match="'Mixed_7a': the model already ends at Mixed_6e"):
        full.cut_after("Mixed_7a")
    with pytest.raises(ValueError, match="allowed are Mixed_6e, Mixed_7a, Mixed_7b, Mixed_7c"):
        WatermarkNet(last_block="Mixed_6d")
